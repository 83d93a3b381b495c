"""The client side: one connection per peer, and the call policy."""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn, Protocol

import trio

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.channel import (
    ChannelStatus,
    PayerChannel,
    Receipt,
    Replay,
)
from p2pay.core.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    P2payError,
    PaymentRequired,
    RemoteProtocolError,
    UnknownService,
    remote_error,
)
from p2pay.core.messages import (
    MAX_SERVICE_NAME,
    STATUS_OK,
    Hello,
    Request,
    Response,
    decode_frame,
)
from p2pay.core.session import (
    REQUEST_TO_CALLER,
    ClientSession,
    End,
    Event,
    FrameIgnored,
    HelloReceived,
    PriceChanged,
    ProtocolViolation,
    Purpose,
    ReceiptAccepted,
    ReceiptRejected,
    RefusalReceived,
    ResyncNeeded,
    StreamRefused,
)
from p2pay.core.settlement import Stake, StakeStatus, stake_status
from p2pay.net.base import (
    NetError,
    NoAddress,
    PeerNotReached,
    Stream,
    StreamClosed,
    WrongIdentity,
)
from p2pay.node.book import _payer_snapshot
from p2pay.node.outbox import _Outbox
from p2pay.node.types import (
    CallResult,
    CallTimeout,
    ConnectionLost,
    Counters,
    NodeConfig,
    NoKnownAddress,
    PeerUnreachable,
    ProviderUnbonding,
    RequestInDoubt,
    Unclaimable,
    WrongPeer,
    split_peer,
)
from p2pay.store.base import (
    MAX_TIME,
    OutgoingRequest,
    RequestUpdate,
    StoredResponse,
)
from p2pay.wakes import current_wakes

if TYPE_CHECKING:
    from p2pay.core.signing import Signer
    from p2pay.ledger.base import Ledger
    from p2pay.net.base import Transport
    from p2pay.node.book import ChannelBook
    from p2pay.persist import Persister

log = logging.getLogger("p2pay.node")


class ClientHost(Protocol):
    """What the client side uses of its node (the `Node` is one)."""

    config: NodeConfig
    counters: Counters
    ledger: Ledger
    persister: Persister
    signer: Signer
    book: ChannelBook
    payer_channels: dict[bytes, PayerChannel]
    #: the node's connections by PeerID (the `Client`'s own dict)
    _connections: dict[str, _Connection]
    #: where connections run (the node's nursery, set by open_node)
    _nursery: trio.Nursery | None

    @property
    def transport(self) -> Transport: ...

    def now(self) -> int: ...

    def hello(self) -> Hello: ...

    def peer_of(self, account: bytes) -> str: ...

    def _bound(self, hello: Hello, peer_id: str) -> bytes: ...

    def _ledger_param(self, name: str) -> int | None: ...

    def take_may_exceed(self, channel: bytes) -> None: ...


class _Done:
    """Set once a slot's answer (or its loss) is known: a `trio.Event` for one waiter at a
    time, whose wait has a deadline of its own (`wait_until`).

    Under the simulator's clock (`p2pay.sim.clock.SimClock`) the deadline is a wake of
    that clock instead of a `trio.move_on_at` cancel scope: every call waits this way,
    and entering and leaving the scope was 3.2 % of the CPU of scale-1000 (cProfile at
    4e2d09a). Same outcome at the same instant: an answer that arrives at the deadline
    itself still counts, as it does under the cancel scope (see `wait_until`).
    """

    __slots__ = ("_flag", "_task")

    def __init__(self) -> None:
        self._flag = False
        self._task: trio.lowlevel.Task | None = None  # the waiter, while it waits

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """`trio.Event.wait`: a checkpoint if set, else wait until set (cancellable)."""
        if self._flag:
            await trio.lowlevel.checkpoint()
            return
        if self._task is not None:
            raise RuntimeError("a slot has one waiter at a time")
        self._task = trio.lowlevel.current_task()

        def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def wait_until(self, deadline: float) -> None:
        """``with trio.move_on_at(deadline): await self.wait()``: returns when set or at
        `deadline`, whichever comes first (`is_set` tells which); an outer cancellation
        is raised as usual."""
        wakes = current_wakes()
        if wakes is None or self._flag:
            with trio.move_on_at(deadline):
                await self.wait()
            return
        task = trio.lowlevel.current_task()

        def expire() -> None:  # called by the clock at `deadline`, between passes
            if self._task is task:
                self._task = None
                trio.lowlevel.reschedule(task)

        wake = wakes.wake_at(deadline, expire)
        try:
            await self.wait()
        finally:
            wakes.cancel(wake)
        if not self._flag:
            # At the deadline: one more pass before the caller looks, as a cancel scope's
            # expiry takes (trio expires it in the pass after the clock's jump), so an
            # answer whose arrival the clock wakes at this same instant still counts.
            await trio.lowlevel.cancel_shielded_checkpoint()


@dataclass(eq=False)  # compared by identity (a call's own slot)
class _Slot:
    channel: bytes
    n: int
    request: Request
    done: _Done = field(default_factory=_Done)
    receipt: Receipt | None = None
    error: P2payError | None = None
    replay: Replay | None = None  # what an unsigned REPLAY of it meant (on_replay)
    resent: bool = False  # the same request sent again after a REPLAY
    generation: int = 0
    redelivery: bool = False  # a re-delivery by the watcher (`Node.redeliver`)
    #: a place among its stream's ``max_in_flight`` it holds while in ``pending`` (given
    #: back as it leaves: answered, forgotten, or its stream ended); None: its call holds one
    place: trio.Semaphore | None = None
    #: a call waits for its answer: if its stream ends, the request is re-sent first on
    #: the next one (`Client._resend_lost_first`)
    waiting: bool = False
    #: that copy, on the next stream, until its call takes it (`Client._resend_lost`)
    successor: tuple[_Connection, _Slot] | None = None
    #: of such a copy: the slot it was re-sent for (if the copy's stream ends too before
    #: its call took it, that request is handed on again, to go first on the next one)
    origin: _Slot | None = None


class _Connection:
    """The pump of one outbound stream: moves frames between the stream and its
    `ClientSession` (the protocol) and applies the session's events (persists what the
    channels decided, wakes the calls waiting in slots)."""

    def __init__(
        self,
        node: ClientHost,
        stream: Stream,
        protocol: ClientSession,
        peer_id: str,
        lost: dict[str, list[_Slot]] | None = None,
    ) -> None:
        assert protocol.peer_hello is not None
        self.node = node
        #: where the requests a call still waits for go when this stream ends (by PeerID):
        #: the next stream to the peer re-sends them before anything new (`Client`)
        self._lost = lost
        self.stream = stream
        self.protocol = protocol
        self.hello = protocol.peer_hello
        self.peer_id = peer_id
        self.account = node._bound(self.hello, peer_id)  # the payee's account on our ledger
        self.closed = False
        self.slots = trio.Semaphore(max(1, min(self.hello.max_in_flight, 1024)))
        self.pending: dict[tuple[bytes, int], _Slot] = {}
        self.outbox = _Outbox()
        #: where each answer the read loop queued stands in the outbox (its frame has left
        #: once ``outbox.sent`` reaches it): at most ``max_outbox`` are unsent (§19.1)
        self._answers: collections.deque[int] = collections.deque()
        #: the kinds of events logged on this stream already (later ones log at DEBUG)
        self._logged: set[str] = set()

    def send_request(
        self, ch: PayerChannel, service: str, body: bytes, price: int, timeout: float
    ) -> _Slot:
        """Sign the next request, stage it, queue it (synchronous: keeps n order on the wire)."""
        node = self.node
        if self.closed:
            raise ConnectionLost(f"connection to {self.peer_id} is closed")
        now = node.now()
        deadline = self.protocol.deadline(
            now,
            int(timeout * 1000),
            ledger_horizon=node._ledger_param("max_deadline_horizon_ms"),
        )
        request = ch.next_request(
            node.signer, service=service, body=body, price=price, deadline=deadline
        )
        frame = self.protocol.send_request(request)
        generation = node.persister.stage(
            payer_snapshot=_payer_snapshot(ch),
            request=OutgoingRequest(
                request_hash=request.hash,
                channel=request.channel,
                n=request.n,
                payee=ch.payee,
                price=price,
                deadline=deadline,
                frame=frame,
                state="awaiting",
                updated_at=now,  # the same synchronous step: the same instant
            ),
        )
        slot = _Slot(channel=ch.channel, n=request.n, request=request)
        self.pending[(ch.channel, request.n)] = slot
        self.outbox.put(generation, frame)
        return slot

    def resend(self, ch: PayerChannel, request: Request) -> _Slot:
        """Send `request` (still in flight on `ch`) once more, unchanged (C-4)."""
        if self.closed:
            raise ConnectionLost(f"connection to {self.peer_id} is closed")
        frame = self.protocol.send_request(request, purpose=Purpose.RESEND)
        slot = _Slot(channel=ch.channel, n=request.n, request=request, resent=True)
        self.pending[(ch.channel, request.n)] = slot
        self.outbox.put(0, frame)  # durable since it was first sent
        return slot

    async def redeliver(self, request: Request) -> Response | None:
        """Send `request` (already signed and on record) again and wait for its answer.

        Returns:
            The checked signed response, or None if the payee refused it unsigned.
        """
        key = (request.channel, request.n)
        ch = self.node.payer_channels.get(request.channel)
        if key in self.pending or self.closed or ch is None or not ch.expects(request.n):
            # in flight already, no stream, or answered since the watcher read its record
            # (the late answer came on a stream: a copy sent now would only be answered again)
            return None
        try:
            frame = self.protocol.send_request(request, purpose=Purpose.REDELIVERY)
        except LocalProtocolError:
            return None  # not a channel we pay this peer on
        slot = _Slot(channel=request.channel, n=request.n, request=request, redelivery=True)
        self.pending[key] = slot
        try:
            self.outbox.put(0, frame)
            await slot.done.wait()
        finally:
            self.forget(slot)
        if slot.generation:
            await self.node.persister.durable(slot.generation)
        return slot.receipt.response if slot.receipt is not None else None

    def forget(self, slot: _Slot) -> None:
        """Stop waiting for `slot`'s answer on this stream."""
        key = (slot.channel, slot.n)
        if self.pending.get(key) is slot:
            self._pop(key)
            self.protocol.forget(slot.channel, slot.n)

    def _pop(self, key: tuple[bytes, int]) -> _Slot | None:
        """Take a slot out of ``pending``, giving back the place it holds, if any."""
        slot = self.pending.pop(key, None)
        if slot is not None and slot.place is not None:
            slot.place.release()
            slot.place = None
        return slot

    def lose_pending(self) -> None:
        """The stream has ended (or is ending): every request still in flight on it is
        abandoned (protocol.md 13.1 step 4), its call woken with ConnectionLost; those a
        call still waits for are handed on to be re-sent first on the next stream.
        Idempotent."""
        self.closed = True
        self.outbox.closed = True
        lost: list[_Slot] = []
        for key in list(self.pending):
            slot = self._pop(key)
            assert slot is not None
            ch = self.node.payer_channels.get(slot.channel)
            if ch is not None:
                ch.abandon(slot.n)
            if slot.waiting:
                lost.append(slot)
            elif (origin := slot.origin) is not None and origin.waiting:
                if origin.successor is not None and origin.successor[1] is slot:
                    # a copy re-sent first, lost before its call took it: its request
                    # goes first on the next stream as well (attack round 39)
                    origin.successor = None
                    lost.append(origin)
            slot.error = ConnectionLost(f"connection to {self.peer_id} lost")
            slot.done.set()
        self.protocol.outstanding.clear()
        if lost and self._lost is not None:
            self._lost.setdefault(self.peer_id, []).extend(lost)

    def abandon(self, ch: PayerChannel, slot: _Slot) -> None:
        self.forget(slot)
        ch.abandon(slot.n)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, nursery.cancel_scope)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # never let one peer's failure take the node down
            log.warning("connection to %s failed: %r", self.peer_id, exc)
        finally:
            if self.node._connections.get(self.peer_id) is self:
                del self.node._connections[self.peer_id]
            self.lose_pending()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.reset()

    async def _pump(self, scope: trio.CancelScope) -> None:
        try:
            await self.outbox.pump(self.node.persister, self.stream)
        except (StreamClosed, P2payError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def close(self) -> None:
        self.closed = True
        await self.stream.reset()

    async def _read_loop(self) -> None:
        node = self.node
        while True:
            events: list[Event]
            try:
                payload = await self.stream.receive()
            except StreamClosed:
                return
            except DecodeError as exc:  # FrameTooLarge, or a bad length prefix
                events = [self.protocol.frame_error(exc)]
            else:
                events = self.protocol.receive(payload, node.now())
            for event in events:
                self._apply(event)
                if event.end is not End.KEEP:
                    # The session has ended: no call may pick this connection from now on
                    # (a call right after a refused receipt dials anew, it does not find a
                    # session that takes no more frames).
                    self.closed = True
                    if event.send is not None:  # the refusal first, bounded (then reset)
                        with trio.move_on_after(1), contextlib.suppress(StreamClosed):
                            await self.stream.send(event.send)
                    return
                if event.send is not None:
                    self.outbox.put(0, event.send)
                    self._answers.append(self.outbox.sent + len(self.outbox.items))
            # Backpressure (protocol.md 19.1): the refusals this loop queued (answers to
            # request frames, 5.4) leave before it reads on past `max_outbox` of them, so a
            # payee that sends requests and never reads cannot grow our memory.
            await self._answers_below(node.config.max_outbox)
            if self.outbox.closed:
                return

    async def _answers_below(self, limit: int) -> None:
        """Wait until fewer than `limit` of the read loop's answers are unsent."""
        answers, outbox = self._answers, self.outbox
        while answers and answers[0] <= outbox.sent:
            answers.popleft()
        if len(answers) >= limit:
            await outbox.wait_sent(answers[-limit])
            while answers and answers[0] <= outbox.sent:
                answers.popleft()

    def _log(self, kind: str, level: int, message: str, *args: object) -> None:
        """Log the first event of `kind` on this stream at `level`, later ones at DEBUG: a
        peer repeating a frame gets no log line per frame (the counters count them)."""
        if kind in self._logged:
            level = logging.DEBUG
        else:
            self._logged.add(kind)
            message += " (the next ones on this stream are counted, logged at DEBUG)"
        log.log(level, message, *args)

    def _apply(self, event: Event) -> None:
        """Apply one event of the session: persist, wake the waiting call."""
        node = self.node
        if isinstance(event, ReceiptAccepted):
            self._on_receipt(event)
        elif isinstance(event, RefusalReceived):
            self._on_refusal(event)
        elif isinstance(event, ResyncNeeded):
            self._on_replay(event)
        elif isinstance(event, ReceiptRejected):
            log.warning("bad receipt from %s: %s", self.peer_id, event.error())
            node.counters.protocol_violations += 1
            slot = self._pop((event.response.channel, event.response.n))
            if slot is not None:
                # The stream ends on a refused receipt (End.CLOSE) with this request
                # unanswered: abandoned, as every request in flight on it (13.1 step 4).
                # Its charge may come as a jump in a later receipt (14.3 rule 7).
                ch = node.payer_channels.get(slot.channel)
                if ch is not None:
                    ch.abandon(slot.n)
                slot.error = event.error()
                slot.done.set()
            ch = node.payer_channels.get(event.response.channel)
            if ch is not None:  # the session marked it: nothing more is signed on it (14.3)
                node.book.note_faulty(ch)
        elif isinstance(event, ProtocolViolation):
            node.counters.protocol_violations += 1
            if event.message == REQUEST_TO_CALLER:
                node.counters.requests_from_payees += 1
            self._log(
                f"violation {event.message}",
                logging.WARNING,
                "protocol violation by %s: %s",
                self.peer_id,
                event.message,
            )
        elif isinstance(event, PriceChanged):
            log.info("%s changed the price of %r to %d", self.peer_id, event.service, event.price)
        elif isinstance(event, StreamRefused | FrameIgnored):
            self._log("ignored", logging.INFO, "ignored a frame from %s: %r", self.peer_id, event)

    def _on_receipt(self, event: ReceiptAccepted) -> None:
        node = self.node
        response = event.receipt.response
        ch = node.payer_channels[response.channel]
        kept: StoredResponse | None = None
        if event.signed_refusal:
            # The payee's signed refusal: kept (never pruned) to be posted on the ledger if
            # the payee ever takes the refused slice (claims.md 3 and 6, attack N1).
            kept = StoredResponse(
                request_hash=response.request_hash,
                channel=response.channel,
                n=response.n,
                frame=response.to_frame(),
                expires_at=MAX_TIME,
            )
        generation = node.persister.stage(
            payer_snapshot=_payer_snapshot(ch),
            # the request row (frame included) was written when it was sent: mark it only
            request_update=RequestUpdate(
                request_hash=response.request_hash,
                state="answered" if response.ok else "refused",
                updated_at=node.now(),
            ),
            response=kept,
        )
        if event.request is None or response.price < event.request.price:
            # a refusal, a charge below the price or an answer to an abandoned request:
            # what the payee may hold went down; had it redeemed that slice already, it
            # now holds more than our receipts justify (claims.md 6)
            node.take_may_exceed(response.channel)
        slot = self._pop((response.channel, response.n))
        if slot is not None:
            slot.receipt = event.receipt
            slot.generation = generation
            slot.done.set()

    def _on_refusal(self, event: RefusalReceived) -> None:
        node = self.node
        refusal = event.refusal
        slot = self._pop((refusal.channel, refusal.n))
        if slot is None:
            return
        if event.dropped:
            # Refused before authentication: nothing charged, the voucher not kept.
            ch = node.payer_channels[refusal.channel]
            slot.generation = node.persister.stage(
                delete_request=event.request.hash, payer_snapshot=_payer_snapshot(ch)
            )
            node.take_may_exceed(refusal.channel)  # its price is no longer outstanding
        slot.error = event.error()
        slot.done.set()

    def _on_replay(self, event: ResyncNeeded) -> None:
        """An unsigned REPLAY: never forget the request on its word (claims.md 6)."""
        node = self.node
        refusal = event.refusal
        ch = node.payer_channels[refusal.channel]
        if event.violation is not None:  # not our voucher, or inconsistent numbers
            log.warning("bad resync details from %s: %s", self.peer_id, event.violation)
            node.counters.protocol_violations += 1
        generation: int
        if event.outcome is Replay.SUPERSEDED:
            # our own signature proves it was never chargeable: a claim would be frivolous
            generation = node.persister.stage(
                delete_request=event.request.hash, payer_snapshot=_payer_snapshot(ch)
            )
            node.take_may_exceed(refusal.channel)  # its price is no longer outstanding
        else:
            generation = node.persister.stage(payer_snapshot=_payer_snapshot(ch))
        slot = self._pop((refusal.channel, refusal.n))
        if slot is None:
            return
        slot.generation = generation
        if event.outcome is Replay.UNKNOWN:
            slot.error = event.error()
        slot.replay = event.outcome
        slot.done.set()


class Client:
    """The calls a node makes: one `_Connection` per peer (opened on first use, hello
    both ways), and the call policy (price and body checks, claimability, one re-send
    after an unsigned REPLAY and one on a new stream after the stream ended, a price change
    retried once, a resync once, a channel the payee refused as CHALLENGE_TOO_SHORT not
    used again: the call goes on another)."""

    def __init__(self, node: ClientHost) -> None:
        self.node = node
        self._connections: dict[str, _Connection] = {}
        self._connect_locks: dict[str, trio.Lock] = collections.defaultdict(trio.Lock)
        # The stakes of the providers we pay: account -> (when read, Stake or None), read
        # from the ledger before a paid call whose deadline the last read does not cover.
        self._peer_stakes: dict[bytes, tuple[int, Stake | None]] = {}
        # Requests a call still waited for when their stream to a peer ended, by PeerID:
        # re-sent first on the next stream to it (`_resend_lost_first`).
        self._lost: dict[str, list[_Slot]] = {}

    async def refresh_peer_stake(self, account: bytes) -> Stake | None:
        """Read a provider's stake from the ledger (claims.md C-9: its status decides which
        paid requests are still claimable) and cache it."""
        read_at = self.node.now()  # before the read: the stake was at least this fresh
        stake = await self.node.ledger.stake_of(account)
        self._peer_stakes[account] = (read_at, stake)
        return stake

    async def check_claimable(
        self, payee: bytes, service: str, body: bytes, price: int, timeout: float
    ) -> None:
        """Refuse, before signing, a paid request the ledger would not hear as a claim
        (protocol.md 14.4): a body over ``max_claim_body``, a service name outside the
        protocol's limits (N12), or a deadline after the unbonding provider's last claimable
        one, ``unstake_requested_at + max_deadline_horizon_ms`` (C-9, N11)."""
        if price <= 0:
            return  # nothing paid, nothing to claim
        limit = self.node._ledger_param("max_claim_body")
        if limit is not None and len(body) > limit:
            raise Unclaimable(
                f"a paid body of {len(body)} bytes is over the ledger's max_claim_body of "
                f"{limit} bytes: it could not be claimed if the provider withheld the answer",
                details={"max_claim_body": limit},
            )
        if not 1 <= len(service.encode()) <= MAX_SERVICE_NAME:
            raise Unclaimable(
                f"service name must be 1..{MAX_SERVICE_NAME} bytes to be claimable",
                code=ErrorCode.INVALID_ARGUMENT,
            )
        horizon = self.node._ledger_param("max_deadline_horizon_ms")
        if horizon is None:
            return
        now = self.node.now()
        deadline = min(now + max(1, int(timeout * 1000)), now + horizon)  # as send_request
        read_at, stake = self._peer_stakes.get(payee, (None, None))
        # A stake read bonded at `read_at` cannot have started unbonding before it, so a
        # deadline up to read_at + horizon is claimable whatever happened since; past
        # that, read it again (once per horizon minus the timeout: rare on real ledgers).
        if read_at is None or (
            stake_status(stake) is not StakeStatus.UNBONDING and deadline > read_at + horizon
        ):
            stake = await self.refresh_peer_stake(payee)
        if stake is None or stake_status(stake) is not StakeStatus.UNBONDING:
            return
        last = stake.unstake_requested_at + horizon
        if deadline > last:
            raise ProviderUnbonding(
                f"the provider is unstaking (requested at {stake.unstake_requested_at}): "
                f"a paid request with deadline {deadline} after {last} could not be claimed "
                "(claims.md C-9); use a shorter timeout or another provider",
                details={"unstake_requested_at": stake.unstake_requested_at, "last": last},
            )

    async def redeliver(self, record: OutgoingRequest, *, timeout: float) -> Response | None:
        """Re-send a paid request left unanswered, the same signed frame, and wait at most
        `timeout` s for the payee's stored answer (specs/claims.md section 6).

        Returns:
            The checked signed response (its record is then marked answered or refused),
            or None if the payee could not be reached, refused it unsigned, or did not
            answer in time: the request stays on record (claimable).
        """
        try:
            request = decode_frame(record.frame)
        except DecodeError:
            return None
        if not isinstance(request, Request) or request.channel not in self.node.payer_channels:
            return None
        with trio.move_on_after(timeout):
            try:
                conn = await self.connection(self.node.peer_of(record.payee))
            except (P2payError, NetError, ValueError):
                return None
            if conn.account != record.payee:
                return None
            return await conn.redeliver(request)
        return None

    async def connection(self, peer_id: str) -> _Connection:
        conn = self._connections.get(peer_id)
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_locks[peer_id]:
            conn = self._connections.get(peer_id)
            if conn is not None and not conn.closed:
                return conn
            if conn is not None:
                # ending, its pump not yet done: what it still had in flight is lost now,
                # so that the new stream re-sends it before anything new
                conn.lose_pending()
            try:
                stream = await self.node.transport.connect(peer_id)
            except NoAddress:
                raise NoKnownAddress(
                    f"no known address for {peer_id}: give its full multiaddr once "
                    f"(/ip4/HOST/tcp/PORT/p2p/{peer_id})",
                    details={"peer": peer_id},
                ) from None
            except WrongIdentity as exc:
                raise WrongPeer(exc.message, details=exc.details) from None
            except NetError as exc:
                raise PeerUnreachable(
                    exc.message
                    if isinstance(exc, PeerNotReached)
                    else f"cannot reach {peer_id}: {exc}"
                ) from exc
            node = self.node
            protocol = ClientSession(
                hello=node.hello(),
                remote=stream.remote_public,
                channels=node.payer_channels,
                max_refusals_per_s=node.config.max_refusals_per_s,
                refusal_burst=node.config.refusal_burst,
                receipt_check_every=node.config.receipt_check_every,
                # §14.4's draw: unpredictable to the payee, one generator per stream
                rng=random.Random(secrets.randbits(128)),
            )
            try:
                with trio.fail_after(node.config.hello_timeout):
                    await stream.send(protocol.start())
                    events: list[Event]
                    try:
                        first = await stream.receive()
                    except DecodeError as exc:  # FrameTooLarge, or a bad length prefix
                        events = [protocol.frame_error(exc)]
                    else:
                        events = protocol.receive(first, node.now())
                    (event,) = events
                    if not isinstance(event, HelloReceived):
                        # a refusal (e.g. OVERLOADED: too many sessions), or a bad hello
                        assert isinstance(event, ProtocolViolation | StreamRefused)
                        if event.send is not None:
                            with trio.move_on_after(1):
                                await stream.send(event.send)
                        raise event.error()
            except NetError as exc:
                await stream.reset()
                raise PeerUnreachable(f"{peer_id} closed the stream during the hello") from exc
            except trio.TooSlowError as exc:
                await stream.reset()
                raise PeerUnreachable(f"no hello from {peer_id} in time") from exc
            except BaseException:
                await stream.reset()
                raise
            conn = _Connection(self.node, stream, protocol, peer_id, self._lost)
            assert self.node._nursery is not None
            self.node._nursery.start_soon(conn.run)
            self._connections[peer_id] = conn
            self.node.counters.connections += 1
            self._resend_lost_first(conn)
            return conn

    def _resend_lost_first(self, conn: _Connection) -> None:
        """Queue on a new stream, before anything else can go on it, the requests its
        peer's last stream left unanswered while their calls waited (protocol.md 13.1 step
        4): in (channel, n) order, each taking a place among the stream's
        ``max_in_flight``, until none is left. Sent after a newer request of its channel,
        a request the payee never read would be answered REPLAY (13.2 check 5) and its
        call end in doubt (attack round 38, test_attack_r38_resend_after_newer.py). Each
        copy waits for its call to take it (`_resend_lost`); one whose call has gone is
        forgotten by it (`_disown`). Synchronous: nothing is sent between."""
        lost = self._lost.pop(conn.peer_id, None)
        for old in sorted(lost or (), key=lambda slot: (slot.channel, slot.n)):
            ch = self.node.payer_channels.get(old.channel)
            if (
                not old.waiting
                or old.successor is not None
                or ch is None
                or ch.payee != conn.account
                or not ch.expects(old.n)
                or (old.channel, old.n) in conn.pending
            ):
                continue
            if not conn.slots.value:
                break  # their calls re-send them when a place comes (`_resend_lost`)
            try:
                again = conn.resend(ch, old.request)
            except LocalProtocolError:  # its frame does not fit this payee's max_frame
                continue
            conn.slots.acquire_nowait()
            again.place = conn.slots
            again.origin = old
            old.successor = (conn, again)

    def _disown(self, peer_id: str, slot: _Slot) -> None:
        """The call that sent `slot` no longer waits for it: it is not re-sent on the
        next stream to `peer_id` (nor kept for it), and a copy re-sent for it already and
        not taken is forgotten there (its place given back; the request stays abandoned,
        claimable)."""
        slot.waiting = False
        lost = self._lost.get(peer_id)
        if lost is not None and slot in lost:
            lost.remove(slot)
            if not lost:
                del self._lost[peer_id]
        if slot.successor is not None:
            conn, again = slot.successor
            slot.successor = None
            conn.forget(again)

    async def call(
        self,
        peer: str,
        service: str,
        body: bytes,
        *,
        max_price: int,
        timeout: float | None = None,
    ) -> CallResult:
        """`Node.call` (its docstring has the arguments, result and errors)."""
        if not isinstance(body, bytes | bytearray | memoryview):
            raise LocalProtocolError("body must be bytes")
        body = bytes(body)
        peer_id, addr = split_peer(peer)
        if addr is not None:
            self.node.transport.add_address(peer_id, addr)
        timeout = self.node.config.default_timeout if timeout is None else timeout
        if not (timeout > 0 and math.isfinite(timeout)):
            raise LocalProtocolError("timeout must be a positive number of seconds")
        self.node.counters.calls_made += 1
        try:
            result = await self._call(peer_id, service, body, max_price, timeout)
        except P2payError as exc:
            self.node.counters.call_errors[exc.code.value] += 1
            raise
        self.node.counters.calls_ok += 1
        self.node.counters.paid += result.price
        return result

    async def _call(
        self, peer_id: str, service: str, body: bytes, max_price: int, timeout: float
    ) -> CallResult:
        conn = await self.connection(peer_id)
        payee = conn.account
        terms = conn.hello.service(service)
        price = conn.protocol.price(service)  # the hello's, or the latest we saw
        if terms is None or price is None:
            raise UnknownService(f"{peer_id} offers no service {service!r}")
        if price > max_price:
            raise PaymentRequired(
                f"{service!r} costs {price}, above max_price {max_price}",
                details={"price": price},
            )
        # the service's max_body, and a frame that fits the payee's max_frame (13.1 step 1'')
        max_body = conn.protocol.max_body(service)
        assert max_body is not None  # the service exists (terms)
        if len(body) > max_body:
            raise LocalProtocolError(
                f"body of {len(body)} bytes is over {max_body}, the most {service!r} takes "
                f"(max_body {terms.max_body}) in a request frame the payee accepts "
                f"(max_frame {conn.hello.max_frame})",
                code=ErrorCode.BODY_TOO_LARGE,
                details={"max_body": max_body},
            )
        give_up_at = trio.current_time() + timeout
        price_retried = resynced = lost_resent = False
        while True:
            ch = self.node.book.payer_channel_to(payee)
            if ch is None:
                await self._only_refused_left(payee)
                raise LocalProtocolError(
                    f"no open channel to {peer_id}: open_channel first",
                    code=ErrorCode.UNKNOWN_CHANNEL,
                )
            slots: trio.Semaphore | None = conn.slots
            assert slots is not None
            await _take(slots)
            if conn.closed and trio.current_time() < give_up_at:
                # Its stream ended while the call waited for a place on it: nothing of the
                # call was sent there, so it goes on a new stream (where the requests lost
                # with the old one go first), not ConnectionLost for a peer it could reach
                # (attack round 41, test_attack_r41_queued_call_on_reset_stream.py).
                slots.release()
                conn = await self.connection(peer_id)
                if conn.account != payee:
                    raise ConnectionLost(f"connection to {peer_id} lost")
                continue
            sent: _Slot | None = None
            try:
                try:
                    await self.check_claimable(payee, service, body, price, timeout)
                    slot = sent = conn.send_request(ch, service, body, price, timeout)
                    slot.waiting = not lost_resent  # re-sent if its stream ends (once)
                except Exception:
                    # Refused before it waits (a spent deposit, a closed channel or stream,
                    # an unclaimable request): the scheduling point `_take` left out, so a
                    # caller that retries until another task tops up never holds the node.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    raise
                if not await self._wait(slot, timeout + 0.05):
                    conn.abandon(ch, slot)
                    self.node.counters.timeouts += 1
                    raise CallTimeout(f"no answer from {peer_id} within {timeout} s")
                if isinstance(slot.error, ConnectionLost) and not lost_resent:
                    # the stream ended while we waited (an idle reset can race a request
                    # that has just left): the same signed request, once, on a new one
                    lost_resent = True
                    # our place on the stream that ended goes back now: a call waiting for
                    # it goes on the new stream (above), not after this re-send's answer
                    # (its copy holds a place of its own there, `_resend_lost`)
                    slots.release()
                    slots = None
                    again = await self._resend_lost(peer_id, ch, slot, give_up_at, timeout)
                    if again is not None:
                        conn, slot = again
                if slot.replay is Replay.IN_DOUBT:
                    # Unsigned: it may have been served. Ask once more with the same signed
                    # request; an honest payee answers with what it stored (C-4).
                    slot = await self._resend_once(
                        conn, ch, slot, give_up_at, timeout, placed=slots is not None
                    )
            finally:
                if slots is not None:
                    slots.release()
                if sent is not None:
                    self._disown(peer_id, sent)
            if slot.replay is Replay.SUPERSEDED:
                # Our own signature shows we lost state: numbers and slices are adopted
                # (on_replay); a fresh request follows, once.
                if resynced:
                    raise RemoteProtocolError("resync did not converge", code=ErrorCode.REPLAY)
                resynced = True
                continue
            error = slot.error
            if error is not None:
                if (
                    isinstance(error, RemoteProtocolError)
                    and error.code is ErrorCode.CHALLENGE_TOO_SHORT
                ):
                    # not used again: the call goes on another open channel to the payee
                    await self._challenge_refused(peer_id, ch, error)
                    continue
                if ch.faulty is not None:
                    # the payee sent a bad receipt: its mark is kept before the call ends
                    await self.node.book.faulty_durable()
                raise error
            receipt = slot.receipt
            if receipt is None:  # every path sets one of the three; never assert on a peer
                raise RemoteProtocolError(
                    f"no receipt for request {slot.n}", code=ErrorCode.INTERNAL
                )
            response = receipt.response
            if response.status != STATUS_OK:
                message, details = response.refusal_info()
                asked = details.get("price")
                if response.status == ErrorCode.PAYMENT_REQUIRED and type(asked) is int:
                    # the provider changed its price (the session learnt it: PriceChanged)
                    if asked != price and 0 <= asked <= MAX_YOCTO:
                        if asked <= max_price and not price_retried:
                            price_retried = True
                            price = asked
                            continue
                raise remote_error(response.status, message, details)
            return CallResult(
                body=response.body,
                price=receipt.charged,
                n=receipt.n,
                channel=response.channel,
                spent=receipt.spent,
                receipt=response,
                receipt_checked=receipt.checked,
            )

    async def _challenge_refused(
        self, peer_id: str, ch: PayerChannel, exc: RemoteProtocolError
    ) -> None:
        """The payee refused `ch` as CHALLENGE_TOO_SHORT (protocol.md 17): remember its
        minimum and `ch` (durably, `ChannelBook.challenge_refused`), and return if another
        open channel to it is left; else raise CHALLENGE_TOO_SHORT naming `ch` and what to
        do."""
        least = exc.details.get("min_challenge_ms")
        if type(least) is not int or least < 0:
            raise exc
        asked = await self.node.book.challenge_refused(ch, least)
        if asked is None:
            # a refusal that contradicts itself teaches nothing and marks nothing (17 rule
            # 2): else each `call any` would open a new channel to this payee
            log.warning(
                "%s refused channel %s as CHALLENGE_TOO_SHORT, but its challenge period is "
                "not below the minimum it states, %d ms: refusal ignored",
                peer_id,
                ch.channel.hex(),
                least,
            )
            raise exc
        if self.node.book.payer_channel_to(ch.payee) is None:
            raise _refused(ch.channel, asked, least) from None
        log.warning(
            "%s refused channel %s: its challenge period, %d ms, is below its minimum "
            "%d ms; calling on another channel to it (close this one to get its deposit "
            "back)",
            peer_id,
            ch.channel.hex(),
            asked,
            least,
        )

    async def _only_refused_left(self, payee: bytes) -> None:
        """No channel to `payee` to call on: if we hold open ones on which it is faulty
        (protocol.md 14.3) or that it refused as CHALLENGE_TOO_SHORT, raise that, naming
        one and what to do."""
        book = self.node.book
        for cid in sorted(book.faulty_channels):
            ch = self.node.payer_channels.get(cid)
            if ch is not None and ch.payee == payee and ch.status is ChannelStatus.OPEN:
                raise ch.faulty_error()
        for cid in sorted(book.refused_channels):
            ch = self.node.payer_channels.get(cid)
            if ch is None or ch.payee != payee or ch.status is not ChannelStatus.OPEN:
                continue
            info = await self.node.ledger.channel(cid)
            asked = info.challenge_ms if info is not None else 0
            raise _refused(cid, asked, book.payee_minimums.get(payee, 0))

    async def resend_request(self, request: Request, *, timeout: float = 5.0) -> Receipt | None:
        """Deliver a request this node sent once more, unchanged (claims.md 6: a payer
        retries delivery before it claims; the payee answers a re-sent request with what it
        stored, never a second charge, protocol.md 13.5).

        Args:
            request: the signed request as sent (e.g. decoded from its stored frame). It
                must still be in flight or abandoned on its channel.
            timeout: seconds to wait for the answer.

        Returns:
            The accepted receipt (the request is then settled and its record marked
            answered or refused), or None: not ours or already settled, the payee is
            unreachable, it answered REPLAY or nothing. The request then stays as it was
            (claimable).
        """
        ch = self.node.payer_channels.get(request.channel)
        if ch is None:
            return None
        pending = ch.in_flight.get(request.n) or ch.abandoned.get(request.n)
        if pending is None or pending.request.hash != request.hash:
            return None
        try:
            conn = await self.connection(self.node.peer_of(ch.payee))
        except P2payError as exc:
            log.info("cannot re-send request %d: %s", request.n, exc)
            return None
        key = (ch.channel, request.n)
        if key in conn.pending or conn.account != ch.payee:
            return None  # a call is waiting for it already, or not the channel's payee
        try:
            slot = conn.resend(ch, pending.request)
        except LocalProtocolError as exc:  # its frame does not fit this payee's max_frame
            log.info("cannot re-send request %d: %s", request.n, exc)
            return None
        try:
            if not await self._wait(slot, timeout):
                return None
        finally:
            conn.forget(slot)
        return slot.receipt

    async def _wait(self, slot: _Slot, seconds: float) -> bool:
        """Wait for `slot`'s answer (and its state to be durable); False on timeout."""
        await slot.done.wait_until(trio.current_time() + seconds)
        if not slot.done.is_set():
            return False
        if slot.generation:
            await self.node.persister.durable(slot.generation)
        return True

    async def _resend_lost(
        self, peer_id: str, ch: PayerChannel, slot: _Slot, give_up_at: float, timeout: float
    ) -> tuple[_Connection, _Slot] | None:
        """Re-send the very request `slot` carried, on a new stream to `peer_id`, after its
        stream ended while the call waited (protocol.md 13.1 step 4: it is abandoned and may
        have been charged; a payee answers the same request again with what it stored, or
        serves it if it never read it, 13.5: never a second charge).

        The new stream has usually re-sent it already, first, before any newer request
        (`_resend_lost_first`): that copy is the one waited for. Otherwise (no place was
        left on it then) it is sent now, once a place among the new stream's
        ``max_in_flight`` comes, as a call takes one (protocol.md 9 rule 5): sent beside
        the calls made meanwhile without one, it made a stream of an honest payee hold
        more than it takes, and the payee refused one of them OVERLOADED (attack round 38,
        test_attack_r38_resend_over_max_in_flight.py).

        Returns:
            The new connection and slot, answered (the slot's place on the new stream,
            its own, given back with its answer); None when no new stream could be had, no
            place on it came within the call's timeout, the request is no longer
            outstanding, or it cannot go on the new stream (the call then ends with the
            lost connection's error; the request stays abandoned and claimable).

        Raises:
            CallTimeout: the re-sent request got no answer within the call's timeout (at
                least a second, as for `_resend_once`).
        """
        try:
            conn = await self.connection(peer_id)
        except P2payError as exc:
            log.info("cannot re-send request %d after a lost stream: %s", slot.n, exc)
            return None
        if conn.account != ch.payee:
            return None
        again: _Slot | None = None
        if slot.successor is not None:
            on, copy = slot.successor
            slot.successor = None
            if on is conn:
                again = copy  # re-sent as the stream began
            else:
                on.forget(copy)  # lost with a stream that ended since: sent anew below
        if again is None:
            if not await self._place(conn, give_up_at, timeout):
                return None
            if (ch.channel, slot.n) in conn.pending or not ch.expects(slot.n):
                conn.slots.release()
                return None  # answered or refused since (a resync, a claim's end)
            try:
                again = conn.resend(ch, slot.request)
            except (ConnectionLost, LocalProtocolError):
                conn.slots.release()
                return None
            again.place = conn.slots
        wait = max(give_up_at - trio.current_time(), min(timeout, 1.0))
        if not await self._wait_own(conn, again, wait):
            conn.forget(again)  # abandoned since its stream ended: it stays so
            self.node.counters.timeouts += 1
            raise CallTimeout(
                f"no answer from {peer_id} within {timeout} s (its stream ended while "
                "the call waited, and the request re-sent on a new one got no answer)"
            )
        return conn, again

    async def _wait_own(self, conn: _Connection, slot: _Slot, seconds: float) -> bool:
        """`_wait` for a re-sent copy: if the call is cancelled meanwhile, the copy is
        forgotten (its place, if its own, given back; the request stays abandoned)."""
        try:
            return await self._wait(slot, seconds)
        except BaseException:
            conn.forget(slot)
            raise

    @staticmethod
    async def _place(conn: _Connection, give_up_at: float, timeout: float) -> bool:
        """Take a place among `conn`'s ``max_in_flight`` within the call's timeout (at
        least a second, as the answer's wait): whether one came."""
        with trio.move_on_at(max(give_up_at, trio.current_time() + min(timeout, 1.0))):
            await _take(conn.slots)
            return True
        return False

    async def _resend_once(
        self,
        conn: _Connection,
        ch: PayerChannel,
        slot: _Slot,
        give_up_at: float,
        timeout: float,
        *,
        placed: bool = True,
    ) -> _Slot:
        """Re-send the very request `slot` carried, after an unsigned REPLAY of it.

        Args:
            placed: whether the call holds a place among `conn`'s ``max_in_flight``; if
                not, the re-sent request takes one of its own first.

        Returns:
            The new slot, answered by a receipt, or SUPERSEDED (lost state proven).

        Raises:
            RequestInDoubt: REPLAY again, no answer, or any unsigned refusal: the request
                is abandoned (it stays on record, claimable).
        """
        again: _Slot | None = None
        if placed or await self._place(conn, give_up_at, timeout):
            try:
                again = conn.resend(ch, slot.request)
            except ConnectionLost:
                if not placed:
                    conn.slots.release()
            else:
                if not placed:
                    again.place = conn.slots
        if again is None:
            again = _Slot(channel=ch.channel, n=slot.n, request=slot.request, resent=True)
            again.error = ConnectionLost(f"connection to {conn.peer_id} lost")
            again.done.set()
        wait = max(give_up_at - trio.current_time(), min(timeout, 1.0))
        answered = await self._wait_own(conn, again, wait)
        if answered and (again.receipt is not None or again.replay is Replay.SUPERSEDED):
            return again
        conn.abandon(ch, again)
        self.node.counters.in_doubt += 1
        why = "no answer"
        if answered:
            why = again.error.code.value if again.error is not None else "REPLAY"
        raise RequestInDoubt(
            f"{conn.peer_id} answered request {slot.n} only with an unsigned REPLAY, then "
            f"{why} to the same request re-sent: it may have served and charged it. The "
            "request stays on record and is claimable: if the provider has a stake, the "
            "watcher claims it after its deadline (the claim bond is locked until the "
            "claim ends, and returned unless the provider proves the claim frivolous; the "
            "provider must then deliver the answer through the ledger or refund the price)"
        )


async def _take(slots: trio.Semaphore) -> None:
    """``await slots.acquire()`` without its scheduling point when a slot is free.

    `trio.Semaphore.acquire` yields to the scheduler even when it takes a free slot at
    once. A call checkpoints anyway while it waits for its answer (`_wait`), and one
    refused before it waits takes the scheduling point on its way out (`Client._call`),
    so a free slot is taken here after a cancellation check only (a pending cancellation is raised
    as ``acquire`` raises it); only a full semaphore waits. Each call saves a task
    reschedule and, in the simulator, a scheduler pass: 1,000 peers, 5 simulated
    minutes, measured in the commit that made it. The request leaves at the same
    instant, in the same order (n order: `send_request` is synchronous).
    """
    if slots.value:
        await trio.lowlevel.checkpoint_if_cancelled()
        slots.acquire_nowait()
    else:
        await slots.acquire()


def _refused(channel: bytes, asked: int, least: int) -> RemoteProtocolError:
    """CHALLENGE_TOO_SHORT for a channel of ours its payee refused, and what to do."""
    return RemoteProtocolError(
        f"channel {channel.hex()} has a challenge period of {asked} ms, below this "
        f"payee's minimum {least} ms: close it and open one of {least} ms or more",
        code=ErrorCode.CHALLENGE_TOO_SHORT,
        details={"channel": channel.hex(), "challenge_ms": asked, "min_challenge_ms": least},
    )
