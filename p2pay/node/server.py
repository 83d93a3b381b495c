"""The server side: one session per inbound stream, session limits and eviction."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from p2pay.core.channel import PayeeChannel
from p2pay.core.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    P2payError,
    RemoteProtocolError,
)
from p2pay.core.identity import peer_id_from_public
from p2pay.core.messages import (
    STATUS_OK,
    Refusal,
    Request,
    Response,
    answer_limit,
    refusal_body,
)
from p2pay.core.session import (
    End,
    Event,
    HelloReceived,
    ProtocolViolation,
    RequestAdmitted,
    RequestReceived,
    RequestRefused,
    ServerSession,
)
from p2pay.net.base import Stream, StreamClosed
from p2pay.node.book import _payee_snapshot
from p2pay.node.invoke import _Service, run_service
from p2pay.node.outbox import _Outbox
from p2pay.node.types import Behaviour, Call, Counters, NodeConfig
from p2pay.store.base import (
    StoredResponse,
)
from p2pay.wakes import sleep_until

if TYPE_CHECKING:
    from p2pay.core.messages import Hello
    from p2pay.core.signing import Signer
    from p2pay.ledger.base import Ledger
    from p2pay.persist import Persister
    from p2pay.store.base import Store

log = logging.getLogger("p2pay.node")


class ServerHost(Protocol):
    """What the server side uses of its node (the `Node` is one)."""

    config: NodeConfig
    counters: Counters
    behaviour: Behaviour
    services: dict[str, _Service]
    ledger: Ledger
    store: Store
    persister: Persister
    signer: Signer
    #: admitted, unfinished requests over all sessions (``max_in_flight_total``)
    _in_flight_total: int
    #: admitted requests not answered yet -> the outboxes of their re-sends (C-4)
    _unanswered: dict[bytes, list[_Outbox]]
    #: requests whose claim the watcher refused late -> that signed answer's frame
    _late_refused: dict[bytes, bytes]

    def now(self) -> int: ...

    def hello(self) -> Hello: ...

    def _bound(self, hello: Hello, peer_id: str) -> bytes: ...

    def _ledger_param(self, name: str) -> int | None: ...

    def response_expiry(self, deadline: int) -> int: ...

    async def _payee_channel_for(self, request: Request, peer: bytes) -> PayeeChannel | None: ...

    async def refresh_channel(self, channel: bytes) -> None: ...


class Server:
    """The inbound streams a node serves: one `_ServerSession` each, within the session
    limits (`max_sessions`, `max_sessions_per_peer`), evicting idle ones to make room."""

    def __init__(self, node: ServerHost) -> None:
        self.node = node
        self._sessions = 0  # inbound streams being served
        self._sessions_of: collections.Counter[bytes] = collections.Counter()  # per peer
        self._live: dict[_ServerSession, None] = {}  # sessions counted above, oldest first

    async def handle_stream(self, stream: Stream) -> None:
        """Serve one inbound stream (the transport's stream handler)."""
        peer: bytes = stream.remote_public
        cfg = self.node.config
        session = _ServerSession(self.node, stream)
        victim: _ServerSession | None = None
        if self._sessions_of[peer] >= cfg.max_sessions_per_peer:
            # A peer holds at most max_sessions_per_peer: a new stream replaces its own
            # longest idle session (a reconnect after a silent network failure), unless
            # every one of them has work in flight or queued.
            victim = self._idle_session(lambda s: s.peer == peer and s.quiet)
            admitted = victim is not None
        elif self._sessions >= cfg.max_sessions:
            # Full (session hoarding, specs/threat-model.md): the session without a
            # channel idle longest makes room; paying sessions are never evicted for this.
            victim = self._idle_session(lambda s: not s.has_channel and s.quiet)
            admitted = victim is not None
        else:
            admitted = True
        if not admitted:
            # Connection flood (specs/threat-model.md): refuse before reading anything.
            self.node.counters.sessions_refused += 1
            log.info("refused a session peer=%s sessions=%d", stream.remote_peer_id, self._sessions)
            with trio.move_on_after(1), contextlib.suppress(StreamClosed):
                await stream.send(
                    Refusal(
                        channel=b"",
                        n=0,
                        code=ErrorCode.OVERLOADED,
                        message="too many sessions; retry later",
                    ).to_frame()
                )
            return  # the transport closes the stream gracefully: the refusal is delivered
        if victim is not None:
            self._release(victim)  # counted out now: the newcomer takes its place
            self.node.counters.sessions_evicted += 1
            log.info("evicted an idle session peer=%s for peer=%s", victim.peer_id, session.peer_id)
            await victim.stream.reset()  # its run() ends on StreamClosed
        self._sessions += 1
        self._sessions_of[peer] += 1
        self._live[session] = None
        try:
            await session.run()
        finally:
            self._release(session)

    def _idle_session(self, eligible: Callable[[_ServerSession], bool]) -> _ServerSession | None:
        """The eligible session to evict, or None: the one whose last useful activity
        (hello, admitted or completed request) is oldest, taking first those idle for at
        least `hello_timeout` (a newcomer gets that long, after its hello, to send its
        first request before older idle sessions stop going first)."""
        fresh_after = trio.current_time() - self.node.config.hello_timeout
        best: tuple[bool, float] | None = None
        victim: _ServerSession | None = None
        for session in self._live:
            if eligible(session):
                key = (session.last_useful > fresh_after, session.last_useful)
                if best is None or key < best:
                    best, victim = key, session
        return victim

    def _release(self, session: _ServerSession) -> None:
        """Count a session out (once: at its eviction or at its end)."""
        if session not in self._live:
            return
        del self._live[session]
        self._sessions -= 1
        self._sessions_of[session.peer] -= 1
        if self._sessions_of[session.peer] <= 0:
            del self._sessions_of[session.peer]


class _ServerSession:
    def __init__(self, node: ServerHost, stream: Stream) -> None:
        self.node = node
        self.stream = stream
        self.peer: bytes = stream.remote_public
        self.peer_id = peer_id_from_public(self.peer)
        # the peer's account on our ledger, bound by its hello (set once the hello checks)
        self.account = b""
        self.outbox = _Outbox()
        cfg = node.config
        # The stream's protocol (hello, frames allowed, check 0', refusal budget, the
        # mapping of admission decisions to answers): p2pay.core.session.
        self.protocol = ServerSession(
            ledger=node.ledger.ledger_id,
            remote=self.peer,
            max_frame=cfg.max_frame,
            max_in_flight=cfg.max_in_flight,
            deadline_horizon=cfg.max_deadline_horizon_ms,
            max_refusals_per_s=cfg.max_refusals_per_s,
            refusal_burst=cfg.refusal_burst,
            now=node.now(),
        )
        # When this session last did something useful: its hello, an admitted request,
        # a completed one. Only that keeps it from idle_timeout, and eviction takes the
        # oldest first; refused or malformed frames and answers leaving do not count.
        self.last_useful = trio.current_time()
        self.has_channel = False  # it sent a request on a channel its peer pays

    @property
    def in_flight(self) -> int:
        """Admitted requests of this stream not answered yet."""
        return self.protocol.in_flight

    async def run(self) -> None:
        node = self.node
        protocol = self.protocol
        events: list[Event]
        try:
            with trio.fail_after(node.config.hello_timeout):
                first = await self.stream.receive()
        except StreamClosed:
            return  # the peer left (or reset) before its hello: nothing to answer
        except DecodeError as exc:  # FrameTooLarge, or a bad length prefix (5.2)
            events = [protocol.frame_error(exc)]
        except trio.TooSlowError:
            events = [protocol.timed_out()]
        else:
            events = protocol.receive(first, node.now())
        (event,) = events
        if not isinstance(event, HelloReceived):
            assert isinstance(event, ProtocolViolation)
            node.counters.refused[event.code.value] += 1
            if event.send is not None:
                with trio.move_on_after(1), contextlib.suppress(StreamClosed):
                    await self.stream.send(event.send)
            return
        self.account = node._bound(event.hello, self.peer_id)
        try:
            await self.stream.send(protocol.hello_frame(node.hello()))
        except StreamClosed:
            return
        log.debug("peer connected peer=%s", self.peer_id)
        self.last_useful = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_then_cancel, nursery.cancel_scope)
            nursery.start_soon(self._watch_idle, nursery.cancel_scope)
            async with trio.open_nursery() as handlers:
                await self._read_loop(handlers)
                handlers.cancel_scope.cancel()
            # let queued answers go out (bounded), then stop the pump
            with trio.move_on_after(2):
                await self.outbox.wait_below(1)
            nursery.cancel_scope.cancel()

    async def _pump_then_cancel(self, scope: trio.CancelScope) -> None:
        try:
            await self.outbox.pump(self.node.persister, self.stream)
        except (StreamClosed, P2payError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    @property
    def quiet(self) -> bool:
        """Nothing in flight and no answer waiting to leave: resetting loses nothing."""
        return self.in_flight == 0 and not self.outbox.items

    async def _watch_idle(self, scope: trio.CancelScope) -> None:
        """Reset the stream once nothing useful happened for `idle_timeout` while nothing
        was in flight.

        Useful is the hello, an admitted request or a completed one (`last_useful`);
        refused or malformed frames, and answers leaving, are not: one refused frame
        now and then does not keep a session. An idle peer, a slow-loris (bytes of a
        frame that never completes), a peer sending only refused requests and a peer
        that stops reading its answers all end here, so no stream holds a session, its
        read buffer or its queued answers for longer than `idle_timeout` after its last
        request was answered.
        """
        timeout = self.node.config.idle_timeout
        while True:
            now = trio.current_time()
            if self.in_flight > 0:  # busy: its answers will count as activity when sent
                await sleep_until(now + timeout)
                continue
            deadline = self.last_useful + timeout
            if now < deadline:
                await sleep_until(deadline)
                continue
            self.node.counters.idle_resets += 1
            log.debug("idle stream reset peer=%s", self.peer_id)
            await self.stream.reset()
            scope.cancel()
            return

    def _send_refusal(self, event: ProtocolViolation | RequestRefused, generation: int = 0) -> None:
        """Queue an unsigned refusal the session produced: at once (it changes nothing), or
        once commit `generation` is durable (one that revoked a channel's deferral)."""
        if event.send is not None:
            self.node.counters.refused[event.code.value] += 1
            channel_n = (
                (event.request.channel, event.request.n)
                if isinstance(event, RequestRefused)
                else (b"", 0)
            )
            log.info("refused peer=%s code=%s n=%d", self.peer_id, event.code.value, channel_n[1])
            self.outbox.put(generation, event.send)

    async def _read_loop(self, handlers: trio.Nursery) -> None:
        node = self.node
        cfg = node.config
        while True:
            await self.outbox.wait_below(cfg.max_outbox)
            if self.outbox.closed:
                return
            events: list[Event]
            try:
                payload = await self.stream.receive()
            except StreamClosed:
                return
            except DecodeError as exc:  # FrameTooLarge, or a bad length prefix (5.2)
                events = [self.protocol.frame_error(exc)]
            else:
                busy = node._in_flight_total >= cfg.max_in_flight_total
                events = self.protocol.receive(payload, node.now(), node_busy=busy)
            for event in events:
                end = event.end
                if isinstance(event, RequestReceived):
                    end = await self._on_request(event.request, handlers)
                elif isinstance(event, ProtocolViolation):
                    node.counters.protocol_violations += 1
                    log.info("protocol violation peer=%s: %s", self.peer_id, event.message)
                    self._send_refusal(event)
                elif isinstance(event, RequestRefused):  # OVERLOADED, check 0'
                    self._send_refusal(event)
                if end is End.RESET:
                    # Unpaid request flood (specs/threat-model.md): the peer's refused
                    # requests outran `max_refusals_per_s` / `refusal_burst`. Reset: nothing
                    # it sent after this is read, its admitted requests are cancelled unpaid.
                    node.counters.rate_limited += 1
                    log.warning("stream reset: too many refused requests peer=%s", self.peer_id)
                    await self.stream.reset()
                    return
                if end is End.CLOSE:
                    return  # the refusal leaves, then the stream is closed

    async def _on_request(self, request: Request, handlers: trio.Nursery) -> End:
        node = self.node
        found: PayeeChannel | RemoteProtocolError | None
        try:
            found = await node._payee_channel_for(request, self.account)
        except RemoteProtocolError as exc:  # CHALLENGE_TOO_SHORT: not adopted, nothing kept
            found = exc
        ch = found if isinstance(found, PayeeChannel) else None
        if ch is not None and ch.payer == self.account:
            self.has_channel = True  # eviction spares it (Node._handle_stream)
            if request.paid > ch.deposit:
                await node.refresh_channel(ch.channel)  # a top-up the watcher has not seen
        service = node.services.get(request.service)
        revoked = ch is None or ch.deferral_revoked  # before this request (13.4 e, below)
        event = self.protocol.admit(
            request,
            found,
            price=service.price if service is not None else None,
            max_body=service.max_body if service is not None else 0,
            now=node.now(),
        )
        if isinstance(event, RequestRefused):
            generation = 0
            if event.violation:
                node.counters.protocol_violations += 1  # the payer's own stream (13.4 c)
                if not revoked and ch is not None and ch.deferral_revoked:
                    # this refusal revoked deferral: stored before it goes (13.4 e). Only
                    # then: a payer's every bad signature made a commit (attack round 21)
                    generation = node.persister.stage(payee_snapshot=_payee_snapshot(ch))
            if event.code is ErrorCode.REPLAY and await self._answer_again(request):
                return event.end
            if not event.signed:
                self._send_refusal(event, generation)
                return event.end
            assert ch is not None
            node.counters.refused[event.code.value] += 1
            self._answer(
                ch,
                request,
                event.code.value,
                0,
                ch.spent,
                refusal_body(event.message, event.details),
            )
            return event.end
        assert isinstance(event, RequestAdmitted) and service is not None and ch is not None
        if event.voucher_improved:
            node.persister.stage(payee_snapshot=_payee_snapshot(ch))
        call = Call(
            service=request.service,
            body=request.body,
            peer_id=self.peer_id,
            channel=request.channel,
            n=request.n,
            price=event.price,
            deadline=request.deadline,
        )
        if node.behaviour.drop(call):
            ch.complete(request.n, ok=False)  # keeps the voucher, charges nothing, never answers
            self.protocol.finished()
            node.counters.refused["DROPPED"] += 1
            return End.KEEP
        self.last_useful = trio.current_time()
        node._in_flight_total += 1
        node._unanswered[request.hash] = []
        self._start_handler(handlers, ch, request, service, call)
        return End.KEEP

    def _start_handler(
        self,
        handlers: trio.Nursery,
        ch: PayeeChannel,
        request: Request,
        service: _Service,
        call: Call,
    ) -> None:
        """Start an admitted request's handler in a task of its own (its own context, too).

        A plain ``await`` of the handler there: the hand-written runner that ran handlers
        which never suspend inside one task per burst, in admission order, saved 4-9 % of
        the CPU of an echo call but cost 5-15 % for handlers that suspend, so it went
        (issue 15; benchmarks/handler_runner.py, RESULTS.md). Handlers start in the
        order trio schedules their tasks, not necessarily admission order; answers still
        leave in the order their charge was fixed (protocol.md 13.3).
        """
        handlers.start_soon(self._run_handler, ch, request, service, call)

    async def _answer_again(self, request: Request) -> bool:
        """A request re-sent by its payer (authenticated, ``n`` not fresh): if we admitted
        it, it gets what we answered, or will answer, not REPLAY and never a second
        charge (C-4, protocol.md 13.5). False if we never answered this very request.
        """
        node = self.node
        for _ in range(2):
            waiters = node._unanswered.get(request.hash)
            if waiters is not None:  # its handler is still running
                waiters.append(self.outbox)
                node.counters.answers_resent += 1
                return True
            await node.persister.flush()  # the answer may be staged, not stored yet
            stored = await node.store.response(request.hash)
            if stored is not None and (stored.channel, stored.n) == (request.channel, request.n):
                self.outbox.put(0, stored.frame)  # durable: it was stored
                node.counters.answers_resent += 1
                log.info("answered a re-sent request again peer=%s n=%d", self.peer_id, request.n)
                return True
        return False

    def _answer(
        self, ch: PayeeChannel, request: Request, status: str, price: int, spent: int, body: bytes
    ) -> None:
        """Sign, stage and queue the answer to an authenticated request (synchronous)."""
        node = self.node
        response = Response.create(
            node.signer, request=request, status=status, price=price, spent=spent, body=body
        )
        frame = response.to_frame()
        generation = node.persister.stage(
            payee_snapshot=_payee_snapshot(ch),
            response=StoredResponse(
                request_hash=request.hash,
                channel=request.channel,
                n=request.n,
                frame=frame,
                expires_at=node.response_expiry(request.deadline),
                # the payer-signed request beside its answer: re-sends and claim evidence
                request_frame=request.to_frame(),
            ),
        )
        self.outbox.put(generation, frame)
        for outbox in node._unanswered.pop(request.hash, ()):
            outbox.put(generation, frame)  # once more for each re-send, where it came

    def _answer_stored(self, ch: PayeeChannel, request: Request, frame: bytes) -> None:
        """Queue an answer already signed and staged (the watcher's), stage the channel."""
        node = self.node
        generation = node.persister.stage(payee_snapshot=_payee_snapshot(ch))
        self.outbox.put(generation, frame)
        for outbox in node._unanswered.pop(request.hash, ()):
            outbox.put(generation, frame)

    def _answer_limit(self, request: Request) -> int:
        """``L`` (protocol.md 13.3): what the payer's announced ``max_frame`` and, for a
        paid request, the ledger's ``max_claim_body`` let us charge for."""
        hello = self.protocol.peer_hello
        if hello is None:  # requests are admitted only after the payer's hello
            raise LocalProtocolError("no answer limit before the payer's hello")
        return answer_limit(
            hello.max_frame,
            max_claim_body=self.node._ledger_param("max_claim_body"),
            paid=request.price > 0,
        )

    async def _run_handler(
        self, ch: PayeeChannel, request: Request, service: _Service, call: Call
    ) -> None:
        node = self.node
        ok = False
        body = b""
        error = "handler failed"
        details: dict[str, Any] = {}
        try:
            ok, body, error, details = await run_service(
                service,
                call,
                behaviour=node.behaviour,
                limit=self._answer_limit(request),
            )
        except trio.Cancelled:
            error = "stream closed before the handler finished"
            raise
        finally:
            self.protocol.finished()
            self.last_useful = trio.current_time()
            node._in_flight_total -= 1
            late_frame = node._late_refused.pop(request.hash, None)
            if late_frame is not None:
                # Its claim was answered with a signed DEADLINE_EXCEEDED (claims.md C-1):
                # release the reservation uncharged and send that very answer (stored).
                ch.complete(request.n, ok=False)
                node.counters.late_answers += 1
                self._answer_stored(ch, request, late_frame)
            else:
                self._complete(ch, request, ok, body, error, details)

    def _complete(
        self,
        ch: PayeeChannel,
        request: Request,
        ok: bool,
        body: bytes,
        error: str,
        details: dict[str, Any],
    ) -> None:
        """Charge (or not) a finished request and answer it (C-4: late is not charged)."""
        node = self.node
        done = ch.complete(request.n, ok=ok, now=node.now())
        if done.refusal is ErrorCode.CHANNEL_CLOSED:
            # finished after the payer started a close: not charged (protocol.md 13.3), a
            # signed refusal instead (a charge now could come after our closing redeems)
            node.counters.refused[done.refusal.value] += 1
            closed = f"channel is {ch.state_name}; nothing charged"
            self._answer(ch, request, done.refusal.value, 0, done.spent, refusal_body(closed, {}))
        elif done.refusal is not None:
            # C-4: finished after the deadline: not charged, a signed refusal instead
            node.counters.late_answers += 1
            node.counters.refused[done.refusal.value] += 1
            late = "the answer was ready after the request's deadline; nothing charged"
            self._answer(
                ch,
                request,
                done.refusal.value,
                0,
                done.spent,
                refusal_body(late, {"deadline": request.deadline}),
            )
        elif ok:
            node.counters.calls_served += 1
            node.counters.charged += done.charged
            self._answer(ch, request, STATUS_OK, done.charged, done.spent, body)
        else:
            node.counters.refused[ErrorCode.HANDLER_ERROR.value] += 1
            self._answer(
                ch,
                request,
                ErrorCode.HANDLER_ERROR.value,
                0,
                done.spent,
                refusal_body(error, details),
            )
