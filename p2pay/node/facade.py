"""The `Node` facade and `open_node`."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING

import trio

from p2pay.core.channel import (
    ChannelStatus,
    PayeeChannel,
    PayerChannel,
    Receipt,
)
from p2pay.core.errors import (
    AmountError,
    ErrorCode,
    LocalProtocolError,
    P2payError,
)
from p2pay.core.identity import Keypair, PeerId, peer_id_from_public, public_from_peer_id
from p2pay.core.messages import (
    REQUEST_OVERHEAD,
    Hello,
    Request,
    Response,
    ServiceTerms,
    StakeTerms,
)
from p2pay.core.settlement import Stake, StakeStatus, stake_status
from p2pay.core.signing import Scheme, scheme_for, signer_for
from p2pay.ledger.base import Ledger
from p2pay.net.base import Stream, Transport
from p2pay.node.addrbook import META_KEY as ADDRBOOK_KEY
from p2pay.node.addrbook import AddressBook
from p2pay.node.book import ChannelBook, _payee_record, _payer_record
from p2pay.node.client import Client, _Connection
from p2pay.node.discovery import Discovery
from p2pay.node.invoke import _Service
from p2pay.node.outbox import _Outbox
from p2pay.node.retention import AnswerRetention
from p2pay.node.server import Server, _ServerSession
from p2pay.node.types import (
    Behaviour,
    CallResult,
    ChannelInfo,
    ClaimInfo,
    Counters,
    DiscoveryConfig,
    Handler,
    NodeConfig,
    OfferInfo,
    PeerUnreachable,
    TermsRefused,
    WrongPeer,
    split_peer,
)
from p2pay.node.watcher import Watcher, claim_infos
from p2pay.persist import Persister
from p2pay.store.base import (
    OutgoingRequest,
    Store,
)
from p2pay.store.memory import MemoryStore

if TYPE_CHECKING:
    from p2pay.net.base import DiscoveryNet
    from p2pay.net.memory import MemoryNetwork

#: makes the discovery network of a node from its transport, e.g.
#: ``lambda t: open_memory_discovery(network, t)`` (`open_node`'s ``discovery``)
DiscoveryFactory = Callable[[Transport], AbstractAsyncContextManager["DiscoveryNet"]]

log = logging.getLogger("p2pay.node")

#: how many account -> PeerID bindings (EVM ledgers) a node remembers, newest kept
_MAX_BOUND_PEERS = 4096
#: Longest `open_channel` and `top_up` wait for a ledger that shows a state only once
#: confirmations bury it (an EVM ledger's ``confirmations``) to show their deposit (s).
CONFIRM_WAIT = 600.0
#: How often they read the channel again meanwhile (s).
CONFIRM_POLL = 1.0


class Node:
    """A running p2pay node. Make one with `open_node`."""

    def __init__(
        self,
        *,
        key: Keypair,
        ledger: Ledger,
        store: Store,
        config: NodeConfig,
        clock: Callable[[], int] | None,
    ) -> None:
        self.key = key
        self.ledger = ledger
        # What signs vouchers and receipts, and the account channels name: the key itself
        # on an Ed25519 ledger, its derived EVM key on an EVM ledger (signing.signer_for).
        self.signer = signer_for(key, ledger.ledger_id)
        self._account = self.signer.account
        # PeerIDs of the accounts peers bound in their hellos (an EVM account is not a key)
        self._peer_of_account: dict[bytes, PeerId] = {}
        self.store = store
        self.config = config
        self._clock = clock or (lambda: int(time.time() * 1000))
        self.persister = Persister(store)
        self.counters = Counters()
        self.services: dict[str, _Service] = {}
        # The parts, each with what it uses: the channel book, the server (inbound
        # streams), the client (connections and calls). The watcher starts in open_node.
        self.book = ChannelBook(
            ledger=ledger,
            store=store,
            persister=self.persister,
            account=self._account,
            config=config,
        )
        self.payee_channels = self.book.payee_channels
        # where peers were reached (durable, store meta; specs/protocol.md 19.2)
        self.addresses = AddressBook()
        self.payer_channels = self.book.payer_channels
        self._channel_locks = self.book._channel_locks
        self.server = Server(self)
        self.client = Client(self)
        self._connections = self.client._connections
        self._in_flight_total = 0  # admitted, unfinished requests over all sessions
        # Admitted requests not answered yet, by request hash: the outboxes of the
        # sessions where the payer re-sent one (each gets the answer too, C-4).
        self._unanswered: dict[bytes, list[_Outbox]] = {}
        # Requests still being served whose deadline passed and whose claim the watcher
        # answered with a signed DEADLINE_EXCEEDED, by request hash -> that response's
        # frame: the handler's late completion sends it, charges nothing, stores no other.
        self._late_refused: dict[bytes, bytes] = {}
        # how long stored answers are kept (N13); its state is loaded by refresh_stake
        self.retention = AnswerRetention(
            store=store,
            persister=self.persister,
            retention_ms=config.response_retention_ms,
            now=self.now,
            horizon=lambda: self._ledger_param("max_deadline_horizon_ms"),
        )
        self._transport: Transport | None = None
        self._nursery: trio.Nursery | None = None
        self._stake: StakeTerms | None = None
        self._hello: tuple[tuple[object, ...], Hello] | None = None  # `hello`: inputs, it
        self.watcher: Watcher | None = None
        self.behaviour: Behaviour = Behaviour()
        #: the node's part in discovery, when open_node was given a discovery network
        self.discovery: Discovery | None = None

    # -- the parts (thin delegates: these names are the node's API and what its tests use)

    @property
    def _sessions(self) -> int:
        return self.server._sessions

    @property
    def _sessions_of(self) -> collections.Counter[bytes]:
        return self.server._sessions_of

    @property
    def _live(self) -> dict[_ServerSession, None]:
        return self.server._live

    async def _load(self) -> None:
        await self.book.load()
        self.addresses = AddressBook.from_bytes(await self.store.get_meta(ADDRBOOK_KEY))
        await self.refresh_stake()

    async def _handle_stream(self, stream: Stream) -> None:
        await self.server.handle_stream(stream)

    async def _payee_channel_for(self, request: Request, peer: bytes) -> PayeeChannel | None:
        return await self.book.payee_channel_for(request, peer)

    async def refresh_channel(self, channel: bytes) -> None:
        """Re-read a channel's deposit, state and redeemed total from the ledger."""
        await self.book.refresh_channel(channel)

    def _payer_channel_to(self, payee: bytes) -> PayerChannel | None:
        return self.book.payer_channel_to(payee)

    async def _connection(self, peer_id: str) -> _Connection:
        return await self.client.connection(peer_id)

    def _connected(self, peer_id: str) -> bool:
        conn = self._connections.get(peer_id)
        return conn is not None and not conn.closed

    def _learn(self, peer_id: str, addr: str) -> None:
        """Record that `peer_id` was reached, authenticated, at `addr` (19.2 rule 1: call
        only once a connection to `addr` completed its hello)."""
        try:
            changed = self.addresses.learn(peer_id, addr)
        except LocalProtocolError:  # e.g. longer than the book keeps: not recorded
            return
        if changed:
            self.persister.stage(meta={ADDRBOOK_KEY: self.addresses.to_bytes()})

    async def _reach(self, peer: str) -> _Connection:
        """The connection to `peer` (a multiaddr or a bare PeerID), made if there is none.

        A bare PeerID is dialled at its addresses in the address book, most recent first;
        an address that led to a checked hello is recorded in the book.

        Raises:
            NoKnownAddress: a bare PeerID with no known address.
            WrongPeer, PeerUnreachable: for a multiaddr, why it failed; for a bare PeerID,
                every known address tried and why, and to give the full multiaddr once.
            RemoteProtocolError: the peer refused the hello (e.g. WrongLedger, Overloaded).
        """
        peer_id, addr = split_peer(peer)
        if addr is None and self._connected(peer_id):
            return await self._connection(peer_id)
        candidates = [addr] if addr is not None else self.addresses.addrs(peer_id)
        if not candidates:
            return await self._connection(peer_id)  # NoKnownAddress unless the transport knows
        errors: list[PeerUnreachable] = []
        for candidate in candidates:
            fresh = not self._connected(peer_id)
            self.transport.add_address(peer_id, candidate)
            try:
                conn = await self._connection(peer_id)
            except PeerUnreachable as exc:  # WrongPeer too: try the next address
                errors.append(exc)
                continue
            if fresh:
                self._learn(peer_id, candidate)
            return conn
        if addr is not None:
            raise errors[-1]
        raise _unreachable_bare(peer_id, errors)

    async def refresh_peer_stake(self, account: bytes) -> Stake | None:
        """Read a provider's stake from the ledger (claims.md C-9) and cache it."""
        return await self.client.refresh_peer_stake(account)

    async def call(
        self,
        peer: str,
        service: str,
        body: bytes,
        *,
        max_price: int,
        timeout: float | None = None,
    ) -> CallResult:
        """Call `service` on `peer`, paying its price from our channel to it.

        Args:
            peer: a multiaddr ending in /p2p/<id>, or a PeerID already known.
            service: the service name.
            body: request bytes.
            max_price: the most this call may cost (yocto); a higher price is refused
                locally with PaymentRequired before anything is signed.
            timeout: seconds to wait for the answer; it is also the request's deadline.

        Returns:
            CallResult with the body, the price charged and the signed receipt.

        Raises:
            LocalProtocolError: a bad argument (AmountError for `max_price`), before
                anything is signed.
            PaymentRequired, UnknownService, InsufficientDeposit, CallTimeout,
            ConnectionLost, or the RemoteProtocolError for the code the provider answered.
        """
        if not isinstance(service, str):
            raise LocalProtocolError(f"service must be a name (text), not {service!r}")
        if isinstance(max_price, bool) or not isinstance(max_price, int) or max_price < 0:
            raise AmountError(
                f"max_price must be an amount in yocto (an int >= 0), not {max_price!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise LocalProtocolError(f"timeout must be a number of seconds, not {timeout!r}")
        peer_id, addr = split_peer(peer)
        fresh = not self._connected(peer_id)
        if addr is None and fresh and self.addresses.addrs(peer_id):
            await self._reach(peer_id)  # a bare PeerID: dial the address book's addresses
            fresh = False
        try:
            return await self.client.call(peer, service, body, max_price=max_price, timeout=timeout)
        finally:
            if fresh and addr is not None and self._connected(peer_id):
                self._learn(peer_id, addr)

    async def resend_request(self, request: Request, *, timeout: float = 5.0) -> Receipt | None:
        """Deliver a request this node sent once more, unchanged (see `Client.resend_request`)."""
        return await self.client.resend_request(request, timeout=timeout)

    async def redeliver(self, record: OutgoingRequest, *, timeout: float) -> Response | None:
        """Re-send a paid request left unanswered and wait for the stored answer (see
        `Client.redeliver`).

        With no connection to the payee, it is dialled first at its addresses in the
        address book (19.2 rule 4), so that a watcher started on a home after the call
        (a new process: the transport knows no address yet) re-sends before it claims.
        `timeout` bounds the dial and the wait together (claims.md 6: the claim window).
        """
        peer_id = self.peer_of(record.payee)
        give_up_at = trio.current_time() + timeout
        if not self._connected(peer_id) and self.addresses.addrs(peer_id):
            with trio.move_on_at(give_up_at):
                try:
                    await self._reach(peer_id)
                except (P2payError, OSError) as exc:  # claimable: the watcher decides
                    log.info("cannot re-send n=%d to %s: %s", record.n, peer_id, exc)
        left = give_up_at - trio.current_time()
        if left <= 0:
            return None
        return await self.client.redeliver(record, timeout=left)

    # -- identity

    @property
    def peer_id(self) -> PeerId:
        return self.key.peer_id

    @property
    def account(self) -> bytes:
        """This node's account on its ledger (what channels name as payer or payee)."""
        return self._account

    def peer_of(self, account: bytes) -> str:
        """The PeerID of a ledger account: its key's on an Ed25519 ledger; on an EVM ledger
        the PeerID whose hello bound it (``0x`` and the address while none has)."""
        if scheme_for(self.ledger.ledger_id) is Scheme.ED25519:
            return peer_id_from_public(account)
        known = self._peer_of_account.get(account)
        return known if known is not None else "0x" + account[12:].hex()

    def _bound(self, hello: Hello, peer_id: str) -> bytes:
        """Remember the account a checked hello binds to `peer_id`, and return it."""
        if scheme_for(self.ledger.ledger_id) is Scheme.EIP712:
            known = self._peer_of_account
            known.pop(hello.account, None)
            known[hello.account] = PeerId(peer_id)
            if len(known) > _MAX_BOUND_PEERS:  # made-up identities cannot grow it forever
                del known[next(iter(known))]
        return hello.account

    async def account_of(self, peer: str) -> bytes:
        """The ledger account of `peer` (a multiaddr or PeerID): the key of its PeerID on an
        Ed25519 ledger; on an EVM ledger the account its hello binds (this connects).

        Raises:
            PeerUnreachable: an EVM ledger and the peer cannot be reached (NoKnownAddress,
                WrongPeer: see `connect`).
        """
        peer_id, addr = split_peer(peer)
        if scheme_for(self.ledger.ledger_id) is Scheme.ED25519:
            if addr is not None and self._transport is not None:
                self._transport.add_address(peer_id, addr)
            return public_from_peer_id(peer_id)
        conn = await self._reach(peer)  # a bare PeerID: at its address-book addresses
        return conn.account

    @property
    def transport(self) -> Transport:
        """The node's transport.

        Raises:
            LocalProtocolError: the node is not running (it runs inside `open_node`).
        """
        if self._transport is None:
            raise LocalProtocolError("the node is not running: use it inside open_node")
        return self._transport

    @property
    def addrs(self) -> list[str]:
        return list(self._transport.addrs) if self._transport is not None else []

    def now(self) -> int:
        """The node's clock, Unix ms (injected in simulations)."""
        return self._clock()

    def take_may_exceed(self, channel: bytes) -> None:
        """An answer on our payer `channel` lowered what its payee may hold: the watcher
        checks what it took (`Watcher.check_take`; without a watcher, nobody does)."""
        if self.watcher is not None:
            self.watcher.check_take(channel)

    def _ledger_param(self, name: str) -> int | None:
        """A ledger parameter if this ledger has it (e.g. ``max_claim_body``), else None."""
        value = getattr(self.ledger.params, name, None)
        return value if type(value) is int and value >= 0 else None

    def response_expiry(self, deadline: int) -> int:
        """When a signed response to a request with this `deadline` may be pruned
        (`AnswerRetention.expiry`, with our stake's claim window)."""
        window = self._stake.claim_window_ms if self._stake is not None else 0
        return self.retention.expiry(deadline, window)

    # -- our stake (read at start-up and by the watcher) and what it needs kept

    async def refresh_stake(self) -> StakeTerms | None:
        """Read our stake from the ledger (what our hello announces) and keep stored answers
        for the claim window now in force (`AnswerRetention.follow`)."""
        stake = await self.ledger.stake_of(self.account)
        if stake is None or stake.amount == 0 or stake.unbonding_at:
            self._stake = None
        else:
            self._stake = StakeTerms(
                amount=stake.amount, penalty=stake.penalty, claim_window_ms=stake.claim_window_ms
            )
        await self.retention.follow(stake)
        if self.discovery is not None:
            self.discovery.changed()  # re-announced if the stake changed
        return self._stake

    def prune_before(self) -> int:
        """The time before which stored responses may be pruned (`AnswerRetention`)."""
        return self.retention.prune_before()

    def hello(self) -> Hello:
        """Our signed hello, for each stream's start.

        The same one while what it says is the same: a hello has no time or nonce, and
        both its signatures are deterministic (Ed25519; the EVM binding proof is RFC 6979
        ECDSA), so signing it again would give the same bytes. A simulation's nodes start
        a stream for about one request in twelve (1.7 of 186 s profiled at 1,000 peers).
        """
        terms = tuple(
            (s.name, s.price, s.max_body)
            for s in sorted(self.services.values(), key=lambda s: s.name)
        )
        config = self.config
        inputs = (
            self.key,
            self.ledger.ledger_id,
            self.signer,
            terms,
            self._stake,
            config.max_in_flight,
            config.max_frame,
            config.max_deadline_horizon_ms,
        )
        if self._hello is not None and self._hello[0] == inputs:
            return self._hello[1]
        hello = Hello.create(
            self.key,
            ledger=self.ledger.ledger_id,
            services=tuple(
                ServiceTerms(name=name, price=price, max_body=max_body)
                for name, price, max_body in terms
            ),
            stake=self._stake,
            max_in_flight=config.max_in_flight,
            max_frame=config.max_frame,
            deadline_horizon=config.max_deadline_horizon_ms,
            settlement_key=self.signer,
        )
        self._hello = (inputs, hello)
        return hello

    # -- serving

    def serve(self, name: str, handler: Handler, *, price: int, max_body: int = 1 << 16) -> None:
        """Offer a paid service. `handler(call)` returns the response body (bytes).

        A handler that raises is not charged: the caller gets HANDLER_ERROR. `max_body` is
        at most the node's ``max_frame`` minus `REQUEST_OVERHEAD`: a longer body's request
        frame could exceed ``max_frame`` (protocol.md 5.3).
        """
        ServiceTerms(name=name, price=price, max_body=max_body)  # validates
        limit = self.config.max_frame - REQUEST_OVERHEAD
        if max_body > limit:
            raise LocalProtocolError(
                f"max_body {max_body} is above {limit}, the node's max_frame "
                f"({self.config.max_frame}) minus the {REQUEST_OVERHEAD} bytes a request "
                "frame takes besides its body",
                details={"max_body": limit},
            )
        self.services[name] = _Service(name, handler, price, max_body)
        if self.discovery is not None:
            self.discovery.changed()  # announced (again, if the price changed)

    async def open_channel(
        self,
        peer: str,
        *,
        deposit: int,
        challenge_ms: int | None = None,
        offline: bool = False,
        require_stake: bool = False,
        max_price: int | None = None,
    ) -> ChannelInfo:
        """Escrow `deposit` yocto on the ledger for calls to `peer` (a multiaddr or PeerID).

        Contacts the peer first (specs/protocol.md 17, "Opening contacts the payee
        first"): connects, checks its hello (same ledger) and its terms, and only then
        locks the deposit. Nothing moves on the ledger if any of that fails.

        Args:
            peer: a multiaddr ending in /p2p/<id>, or a PeerID in the address book.
            deposit: yocto to escrow.
            challenge_ms: the channel's challenge period (default: the node's config).
            offline: open without contacting the peer (on an Ed25519 ledger only: on an
                EVM ledger the payee's account is what its hello binds). The deposit stays
                locked until a close's challenge period ends if the peer never shows up.
            require_stake: refuse a peer whose stake is not BONDED on the ledger (the
                hello's announced stake is only checked first).
            max_price: refuse a peer that offers no service at or below this price (yocto).

        Raises:
            NoKnownAddress, WrongPeer, PeerUnreachable: the peer could not be contacted.
            WrongLedger: the peer settles on another ledger.
            TermsRefused: its terms are not the ones accepted (`require_stake`,
                `max_price`); ``details`` has what it announced.
        """
        if max_price is not None and (
            isinstance(max_price, bool) or not isinstance(max_price, int) or max_price < 0
        ):
            raise AmountError(
                f"max_price must be an amount in yocto (an int >= 0), not {max_price!r}"
            )
        if offline:
            if scheme_for(self.ledger.ledger_id) is not Scheme.ED25519:
                raise LocalProtocolError(
                    "on an EVM ledger a channel open must contact the payee (its hello binds "
                    "its account): open without offline"
                )
            payee = await self.account_of(peer)
        else:
            # On success the connection stays: the first call uses it (its hello is the
            # one checked). Terms are checked on a current hello: a connection that was
            # open already is replaced once if its hello fails them (the peer may have
            # staked or changed prices since), and one that fails them is not kept.
            for attempt in (1, 2):
                fresh = not self._connected(split_peer(peer)[0])
                conn = await self._reach(peer)
                try:
                    self._check_terms(conn.peer_id, conn.hello, require_stake, max_price)
                except TermsRefused:
                    await conn.close()
                    if fresh or attempt == 2:
                        raise
                    continue
                break
            payee = conn.account
            if require_stake:
                await self._check_ledger_stake(conn.peer_id, conn.hello, payee)
        asked = challenge_ms or self.config.challenge_ms
        least = self.book.payee_minimums.get(payee)
        if least is not None and asked < least:
            # protocol.md 17: the hello does not state the minimum; the payee stated it in
            # an earlier refusal, and would refuse this channel at its first request
            raise TermsRefused(
                f"challenge period {asked} ms is below this payee's minimum {least} ms "
                "(it refused a shorter channel before): open with a longer challenge period",
                code=ErrorCode.CHALLENGE_TOO_SHORT,
                details={"challenge_ms": asked, "min_challenge_ms": least},
            )
        channel = await self.ledger.open_channel(self.key, payee, deposit, asked)
        ch = PayerChannel(
            ledger=self.ledger.ledger_id,
            channel=channel,
            payer=self.account,
            payee=payee,
            deposit=deposit,
        )
        self.payer_channels[channel] = ch
        await self.persister.durable(self.persister.stage(payer=_payer_record(ch)))
        await self._await_shown(channel, deposit)
        return self._info_payer(ch)

    async def _await_shown(self, channel: bytes, deposit: int) -> None:
        """On a ledger that shows a state only once confirmations bury it (an EVM ledger's
        ``confirmations``, settlement.md 10 "Confirmations"), wait until it shows
        `channel` with at least `deposit`: the payee reads the channel from such a ledger
        before it gives credit on it, and until then refuses our requests on it
        (UNKNOWN_CHANNEL, or INSUFFICIENT_DEPOSIT beyond the deposit it sees). Bounded by
        `CONFIRM_WAIT`; past it the channel is ours all the same (recorded), and its calls
        are refused until the payee's ledger shows it. A ledger that shows every state at
        once (confirmations 0, SQLite, memory) is not read."""
        if not getattr(self.ledger, "confirmations", 0):
            return
        with trio.move_on_after(CONFIRM_WAIT):
            while True:
                try:
                    info = await self.ledger.channel(channel)
                except (P2payError, OSError) as exc:  # the endpoint, for now: read again
                    log.info("channel 0x%s not readable yet: %s", channel.hex(), exc)
                    info = None
                if info is not None and info.deposit >= deposit:
                    return
                await trio.sleep(CONFIRM_POLL)
        log.warning(
            "channel 0x%s: the ledger does not show a deposit of %d yocto after %.0f s; "
            "its payee refuses calls beyond what the ledger shows it",
            channel.hex(),
            deposit,
            CONFIRM_WAIT,
        )

    @staticmethod
    def _check_terms(
        peer_id: str, hello: Hello, require_stake: bool, max_price: int | None
    ) -> None:
        """Raise TermsRefused if `hello`'s terms are not the ones the caller accepts."""
        terms = {
            "peer": peer_id,
            "stake": hello.stake.amount if hello.stake is not None else 0,
            "prices": {s.name: s.price for s in hello.services},
        }
        if require_stake and hello.stake is None:
            raise TermsRefused(
                f"{peer_id} has no stake: nothing would answer for a paid request it leaves "
                "unanswered",
                details=terms,
            )
        if max_price is not None and not any(s.price <= max_price for s in hello.services):
            cheapest = min((s.price for s in hello.services), default=None)
            what = (
                "offers no service"
                if cheapest is None
                else f"charges at least {cheapest} yocto a call, above max_price {max_price}"
            )
            raise TermsRefused(f"{peer_id} {what}", details=terms)

    async def _check_ledger_stake(self, peer_id: str, hello: Hello, payee: bytes) -> None:
        """Raise TermsRefused unless the ledger shows `payee`'s stake BONDED: a hello's
        stake is the peer's word (protocol.md 9 rule 6), and a hello read earlier on a kept
        connection may predate an unstake."""
        stake = await self.refresh_peer_stake(payee)
        if stake_status(stake) is StakeStatus.BONDED:
            return
        announced = hello.stake.amount if hello.stake is not None else 0
        raise TermsRefused(
            f"{peer_id} has no bonded stake on the ledger "
            f"({'unbonding' if stake is not None and stake.amount else 'none'}; its hello "
            f"announced {announced} yocto): nothing would answer for a paid request it "
            "leaves unanswered",
            details={
                "peer": peer_id,
                "stake": stake.amount if stake is not None else 0,
                "announced_stake": announced,
                "prices": {s.name: s.price for s in hello.services},
            },
        )

    async def top_up(self, channel: bytes, amount: int) -> ChannelInfo:
        ch = self.payer_channels.get(channel)
        if ch is None:
            raise LocalProtocolError("not a channel we pay on", code=ErrorCode.UNKNOWN_CHANNEL)
        await self.ledger.top_up(self.key, channel, amount)
        ch.deposit += amount
        await self.persister.durable(self.persister.stage(payer=_payer_record(ch)))
        await self._await_shown(channel, ch.deposit)
        return self._info_payer(ch)

    async def close_channel(self, channel: bytes) -> ChannelInfo:
        """Close a channel: as payee at once (redeeming what was charged); as payer, start
        the challenge period (the watcher finalizes it when it ends)."""
        pch = self.payee_channels.get(channel)
        if pch is not None:
            # Nothing charged from before `spent` is read: a request that finishes while
            # the close is on its way is answered CHANNEL_CLOSED (protocol.md 13.3
            # 'closing'), since the close pays out only the `spent` read here (attack
            # round 18: it was charged and answered OK, and its price went back to the
            # payer with the escrow). In memory only: the ledger's state stays ours.
            pch.stopping = True
            try:
                await self.persister.flush()  # never redeem a charge that is not durable
                # only a checked voucher goes to the ledger (protocol.md 13.4 rule b)
                voucher = pch.verified_voucher() if pch.spent > pch.redeemed else None
                await self.ledger.payee_close(
                    self.key, channel, voucher, pch.spent if voucher else None
                )
            finally:
                pch.stopping = False  # closed below; or not closed: open again
            if voucher is not None:
                redeemed = max(pch.redeemed, min(pch.spent, voucher.paid))
                self.counters.redeemed += redeemed - pch.redeemed
                pch.redeemed = redeemed
            pch.status = ChannelStatus.CLOSED
            await self.persister.durable(self.persister.stage(payee=_payee_record(pch)))
            return self._info_payee(pch)
        ch = self.payer_channels.get(channel)
        if ch is None:
            raise LocalProtocolError("unknown channel", code=ErrorCode.UNKNOWN_CHANNEL)
        await self.ledger.start_close(self.key, channel)
        ch.status = ChannelStatus.CLOSING
        await self.persister.durable(self.persister.stage(payer=_payer_record(ch)))
        return self._info_payer(ch)

    async def stake(self, amount: int, *, penalty: int, claim_window_ms: int) -> StakeTerms | None:
        """Stake collateral that answers for this node's paid requests."""
        await self.ledger.stake(self.key, amount, penalty, claim_window_ms)
        return await self.refresh_stake()

    async def claims(self) -> list[ClaimInfo]:
        """Claims this node filed or answered, with their outcomes (specs/claims.md 6)."""
        await self.persister.flush()
        return await claim_infos(self.store)

    def channels(self) -> list[ChannelInfo]:
        return [self._info_payer(c) for c in self.payer_channels.values()] + [
            self._info_payee(c) for c in self.payee_channels.values()
        ]

    def _info_payer(self, ch: PayerChannel) -> ChannelInfo:
        return ChannelInfo(
            channel=ch.channel,
            role="payer",
            peer=self.peer_of(ch.payee),
            deposit=ch.deposit,
            status=ch.status.value,
            paid=ch.paid,
            spent=ch.spent,
            redeemed=0,
            last_n=ch.last_n,
        )

    def _info_payee(self, ch: PayeeChannel) -> ChannelInfo:
        return ChannelInfo(
            channel=ch.channel,
            role="payee",
            peer=self.peer_of(ch.payer),
            deposit=ch.deposit,
            status=ch.status.value,
            paid=ch.paid_max,
            spent=ch.spent,
            redeemed=ch.redeemed,
            last_n=ch.last_n,
        )

    async def connect(self, peer: str) -> Hello:
        """Connect (if not yet) and return the peer's hello: its services, prices, stake.

        Args:
            peer: a multiaddr ending in /p2p/<id>, or a PeerID in the address book (an
                address that led to a checked hello is recorded there).

        Raises:
            NoKnownAddress, WrongPeer, PeerUnreachable, or the peer's refusal of the hello.
        """
        conn = await self._reach(peer)
        return conn.hello

    # -- discovery (specs/discovery.md)

    def _discovery(self) -> Discovery:
        if self.discovery is None:
            raise LocalProtocolError(
                "this node has no discovery network: open it with discovery=... "
                "(open_node), e.g. the libp2p one or the in-memory twin"
            )
        return self.discovery

    async def announce_offers(self) -> int:
        """Publish our offers now (one per service, with a new seq) and renew their DHT
        records; the node also does it every announce interval and when its terms change,
        never sooner than receivers' rate limits allow (discovery.md 5.1). This call is not
        paced: receivers drop what a provider publishes faster than that (7.3).

        Returns:
            The number of offers published (0 without services or a bonded stake).

        Raises:
            LocalProtocolError: the node has no discovery network.
        """
        return await self._discovery().announce()

    async def find(
        self,
        service: str,
        *,
        max_price: int | None = None,
        min_stake: int = 0,
        wait: float | None = None,
    ) -> list[OfferInfo]:
        """The live offers of `service`: the verified offers seen on the gossip topic so
        far, plus those of the providers a DHT lookup names (fetched from each).

        Every offer returned was checked (signature, ledger, expiry, addresses) and its
        stake read on the ledger when it arrived.

        Args:
            service: the service name.
            max_price: leave out offers priced above it (yocto a call).
            min_stake: leave out offers whose stake is below it (yocto).
            wait: seconds to wait at most (default: the discovery config's
                ``find_wait``): for the lookup, then, while nothing was found, for gossip.

        Returns:
            The offers, best first (price, then stake). When none is within the terms,
            ``node.discovery.unmatched(service, ...)`` says how many they left out.

        Raises:
            NotJoined: no bootstrap peer could be reached (UNREACHABLE): nobody was
                asked, so an empty list would mean nothing.
            LocalProtocolError: a bad argument, or the node has no discovery network.
        """
        return await self._discovery().find(
            service, max_price=max_price, min_stake=min_stake, wait=wait
        )

    async def call_any(
        self,
        service: str,
        body: bytes,
        *,
        max_price: int,
        timeout: float | None = None,
        deposit: int | None = None,
        min_stake: int = 0,
    ) -> CallResult:
        """Call `service` on the best provider that offers it, paying at most `max_price`.

        Offers are ranked by failures seen, price, stake and latency; each is tried in
        turn (at most ``max_attempts`` of the discovery config): the provider is reached
        at the offer's addresses, its hello must not announce worse terms than its offer
        (a higher price, less stake: a lie, its offers are dropped), a channel to it
        with room is reused or one is opened (the deposit: `deposit`, else
        ``deposit_calls`` x the price, at most ``max_deposit``; the provider's stake
        must be bonded on the ledger), then the call is made. An unreachable provider, a
        refusal or a timeout moves on to the next offer.

        What was seen of each provider (failures, latency) is kept in the node's store,
        so that the next run ranks a provider that just failed after the others.

        Returns:
            The `CallResult`, with ``peer`` (the provider that answered), ``attempts``
            (every provider tried, in order), ``opened`` (whether its ``channel`` was
            opened for this call) and ``deposit`` (that channel's deposit).

        Raises:
            NoProvider: nobody offers the service, no live offer within the terms (the
                message says how many the terms left out), or every attempt failed (its
                ``attempts`` and ``details["attempts"]`` name each one).
            NotJoined: no bootstrap peer could be reached (UNREACHABLE).
            LocalProtocolError: a bad argument, or the node has no discovery network.
            Errors of the ledger when a channel is opened (e.g. InsufficientFunds).
        """
        return await self._discovery().call_any(
            service,
            body,
            max_price=max_price,
            timeout=timeout,
            deposit=deposit,
            min_stake=min_stake,
        )


@asynccontextmanager
async def open_node(
    *,
    key: Keypair,
    ledger: Ledger,
    store: Store | None = None,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    network: MemoryNetwork | None = None,
    config: NodeConfig | None = None,
    clock: Callable[[], int] | None = None,
    behaviour: Behaviour | None = None,
    discovery: DiscoveryFactory | None = None,
    discovery_config: DiscoveryConfig | None = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the ``async with`` block.

    Args:
        key: the node's identity (libp2p host key, voucher key, ledger account).
        ledger: the settlement ledger (`MemoryLedger`, `SqliteLedger`, ...).
        store: where the node keeps what it must not forget (default: in memory).
        listen: libp2p multiaddrs to listen on.
        network: a `p2pay.net.memory.MemoryNetwork` to use the in-memory transport instead
            of libp2p (simulations, fast tests).
        config: limits and policies.
        clock: Unix-ms clock (simulations inject trio's).
        behaviour: misbehaviour hooks (simulations, demo); honest by default.
        discovery: makes the node's discovery network from its transport (e.g.
            ``lambda t: open_memory_discovery(network, t)``); with one the node announces
            its offers, keeps the offers it receives, and `Node.find` and
            `Node.call_any` work.
        discovery_config: bootstrap peers, announce interval, `call_any`'s policy.
    """
    node = Node(
        key=key,
        ledger=ledger,
        store=store or MemoryStore(),
        config=config or NodeConfig(),
        clock=clock,
    )
    if behaviour is not None:
        node.behaviour = behaviour
    await node._load()
    if network is not None:
        from p2pay.net.memory import open_memory_transport

        transport_cm: AbstractAsyncContextManager[Transport] = open_memory_transport(
            network, key, node._handle_stream, max_frame=node.config.max_frame
        )
    else:
        from p2pay.net.p2p import open_libp2p_transport

        transport_cm = open_libp2p_transport(
            key, node._handle_stream, listen=listen, max_frame=node.config.max_frame
        )
    body_error: BaseException | None = None
    try:
        # Order matters: no scope that encloses the transport is cancelled while an
        # exception from the body is on its way out (a Cancelled raised during the
        # transport's cleanup would replace it and be swallowed by that scope).
        async with trio.open_nursery() as outer:
            await outer.start(node.persister.run)
            try:
                async with transport_cm as transport:
                    node._transport = transport
                    net_cm: AbstractAsyncContextManager[DiscoveryNet | None] = (
                        nullcontext(None) if discovery is None else discovery(transport)
                    )
                    async with net_cm as net, trio.open_nursery() as nursery:
                        node._nursery = nursery
                        if node.config.watcher:
                            node.watcher = Watcher(node)
                            await nursery.start(node.watcher.run)
                        if net is not None:
                            node.discovery = Discovery(
                                node, net, discovery_config or DiscoveryConfig()
                            )
                            await nursery.start(node.discovery.run)
                        try:
                            yield node
                        except BaseException as exc:
                            body_error = exc
                            raise
                        finally:
                            for conn in list(node._connections.values()):
                                with trio.CancelScope(shield=True), trio.move_on_after(1):
                                    await conn.close()
                            nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    await node.persister.flush()
                outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Give the caller back the exception its own code raised, not a group of it.
        if body_error is not None and _only(group, body_error):
            raise body_error from None
        raise


def _unreachable_bare(peer_id: str, errors: list[PeerUnreachable]) -> PeerUnreachable:
    """The error for a bare PeerID none of whose known addresses answered: every address
    tried and why (most recent first), and what to do (19.2 rule 4: give its full multiaddr
    once, e.g. after it moved). WrongPeer if another identity answered at each of them."""
    prefix = f"cannot reach {peer_id} "
    tried = "; ".join(e.message.removeprefix(prefix) for e in errors)
    cls = WrongPeer if all(isinstance(e, WrongPeer) for e in errors) else PeerUnreachable
    lead = "" if cls is WrongPeer else prefix
    return cls(
        f"{lead}{tried}: if it moved, give its full multiaddr once "
        f"(/ip4/HOST/tcp/PORT/p2p/{peer_id})",
        details={**errors[-1].details, "peer": peer_id},
    )


def _only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """True if every leaf of `group` is `error` or a trio.Cancelled."""
    for leaf in group.exceptions:
        if isinstance(leaf, BaseExceptionGroup):
            if not _only(leaf, error):
                return False
        elif leaf is not error and not isinstance(leaf, trio.Cancelled):
            return False
    return True
