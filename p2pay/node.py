"""The p2pay node: the imperative shell around the core (specs/protocol.md).

Theory of operation
-------------------
A node is one identity (an Ed25519 `Keypair`) on one ledger. It serves paid services to
peers and calls other peers' services, over a `Transport` (libp2p for real use, in-memory
for simulations and fast tests). The money decisions are all taken by the pure core
(`p2pay.core.channel`); the node moves frames, runs handlers, and makes state durable
through a `Persister` (ordered group commit) before anything that depends on it leaves.

Server side, per inbound stream (`_ServerSession`): hello both ways, then a loop that
reads one frame at a time and asks `PayeeChannel.admit`; admitted requests start their
handler in admission order, in one runner task (a handler that does not suspend runs to
its end there; one that suspends keeps that task, and a new runner takes the rest);
every answer (signed receipt, signed refusal, unsigned refusal) is
appended *synchronously* to the session's outbox right after the decision that produced
it, and one sender task sends the outbox in order, each item only once its state is
durable, every durable item queued at that moment in one write. So receipts leave in
charge order and never before the charge is on disk.

Client side, per peer (`_Connection`): one long-lived stream, hello both ways, requests
pipelined on it. `call` signs the next voucher (`PayerChannel.next_request`), stages the
outgoing request (kept for claims), and appends it to the connection's outbox, which
sends in request-number order once durable (several per write). One reader task checks
every receipt in arrival order (`PayerChannel.on_response`) and wakes the waiting call.

The watcher (`p2pay.watcher`) runs in the node's nursery and does the node's duties
towards the ledger.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import json
import logging
import math
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pay.core import codec
from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.channel import (
    DEFAULT_UNVERIFIED_CREDIT_LIMIT,
    Admit,
    ChannelStatus,
    PayeeChannel,
    PayerChannel,
    Pending,
    Receipt,
    Refuse,
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
from p2pay.core.identity import Keypair, PeerId, peer_id_from_public, public_from_peer_id
from p2pay.core.messages import (
    STATUS_OK,
    Hello,
    Refusal,
    Request,
    Response,
    ServiceTerms,
    StakeTerms,
    check_signed_by,
    decode_frame,
    refusal_body,
)
from p2pay.core.settlement import ChannelState
from p2pay.core.signing import Scheme, scheme_for, signer_for
from p2pay.ledger.base import Ledger
from p2pay.net.base import NetError, StreamClosed, send_frames
from p2pay.persist import Persister
from p2pay.store.base import (
    MAX_TIME,
    OutgoingRequest,
    PayeeRecord,
    PayerRecord,
    RequestUpdate,
    Store,
    StoredResponse,
)
from p2pay.store.memory import MemoryStore

log = logging.getLogger("p2pay.node")

Handler = Callable[["Call"], Awaitable[bytes]]


class CallTimeout(P2payError, TimeoutError):
    """No answer within the call's timeout. The request stays on record: after its deadline
    the watcher re-sends it (the provider answers again from its store) and, only if that
    brings no answer and the provider has a stake, claims it, locking the ledger's claim
    bond until the provider answers or the window ends (specs/claims.md 6)."""

    code = ErrorCode.DEADLINE_EXCEEDED


class RequestInDoubt(CallTimeout):
    """The provider answered the request only with an unsigned REPLAY (twice: it was
    re-sent once), or not at all after a REPLAY: it may have served and charged it.

    A REPLAY is unsigned, so it proves nothing (issue 13 item 2): the request is not
    forgotten. It stays on record as unanswered, hence claimable: if the provider has a
    stake, the watcher files a claim after the request's deadline. That claim locks the
    ledger's claim bond until it is answered or resolved, and costs a ledger transaction;
    the bond comes back unless the provider proves the claim frivolous (which it cannot for
    a request this node signed in order). Its price may have been charged: the provider
    must then deliver the answer through the claim, or refund it (and be slashed if it
    stays silent)."""

    code = ErrorCode.REPLAY


class ConnectionLost(P2payError, ConnectionError):
    """The peer could not be reached, or its stream closed while the call was waiting.

    Nothing was charged for a call that never left; for one in flight, see `CallTimeout`.
    """

    code = ErrorCode.OVERLOADED


class PeerUnreachable(ConnectionLost):
    """No stream to the peer could be opened, or it did not complete the hello.

    Nothing was signed or sent for the call."""


# ---------------------------------------------------------------------------
# public value types


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Limits and policies of a node. Every limit is explicit (specs/protocol.md "Limits")."""

    max_in_flight: int = 64  # admitted, unfinished requests per inbound stream
    max_outbox: int = 256  # answers queued for sending per stream before reading pauses
    max_frame: int = 1 << 20
    hello_timeout: float = 10.0
    # Hardening limits (specs/threat-model.md "Limits"):
    max_in_flight_total: int = 1024  # admitted, unfinished requests over all inbound streams
    # Inbound streams served at once; when full, a new one evicts the session without a
    # channel that has been idle longest, else it is refused (OVERLOADED, then close).
    max_sessions: int = 512
    # Inbound streams of one remote peer at once; a new one evicts that peer's longest
    # idle session with nothing in flight or queued, else it is refused.
    max_sessions_per_peer: int = 2
    max_refusals_per_s: int = 50  # refused requests per stream per second (token bucket)...
    refusal_burst: int = 200  # ...with this burst; beyond, the stream is reset
    idle_timeout: float = 120.0  # reset a stream with no frame in or out and none in flight
    default_timeout: float = 30.0
    max_deadline_horizon_ms: int = 3_600_000  # refuse requests whose deadline is further out
    response_retention_ms: int = 3 * 24 * 3_600_000  # keep signed responses (claims)
    challenge_ms: int = 60_000  # default challenge period for channels we open
    watcher: bool = True
    watch_interval: float = 1.0
    # Redeem policy (specs/protocol.md 17.1): redeem a payee channel when what it charged
    # and has not redeemed reaches this share of its escrow (basis points; 0: off), or
    # `redeem_threshold` yocto (default 2**128 - 1: off), or has waited
    # `redeem_max_age_ms`; but not again within `min_redeem_interval_ms` of the
    # channel's last redeem, unless it is closing.
    redeem_fraction_bps: int = 5_000
    redeem_threshold: int = MAX_YOCTO
    redeem_max_age_ms: int = 24 * 3_600_000
    min_redeem_interval_ms: int = 300_000
    auto_claim: bool = True  # file claims for paid requests left unanswered
    claim_grace_ms: int = 5_000  # wait this long after a deadline before claiming
    # Claims (specs/claims.md): before claiming, re-send the same signed request and wait
    # this long (s) for the stored answer; answer claims against us with at most
    # `max_claim_answers` handlers/ledger submissions at once, a handler serving a request
    # through a claim having until the claim's window end minus `claim_answer_margin_ms`
    # (at most a third of the window); refuse channels whose challenge period is shorter
    # than `min_challenge_ms` (the payee's time to redeem when the payer closes, C-8).
    redeliver_timeout: float = 5.0
    max_claim_answers: int = 16
    claim_answer_margin_ms: int = 10_000
    min_challenge_ms: int = 60_000
    # Deferred voucher checks (specs/protocol.md 13.4): yocto of service per channel on
    # vouchers whose signature is not yet checked; the most a cheating payer can take from
    # this payee per channel (INV-21). 0: check every voucher's signature on arrival.
    unverified_credit_limit: int = DEFAULT_UNVERIFIED_CREDIT_LIMIT

    def __post_init__(self) -> None:
        for name in (
            "max_in_flight",
            "max_outbox",
            "max_in_flight_total",
            "max_sessions",
            "max_sessions_per_peer",
            "max_refusals_per_s",
            "refusal_burst",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalProtocolError(f"NodeConfig.{name} must be an int >= 1, not {value!r}")
        for name in ("hello_timeout", "idle_timeout", "redeliver_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise LocalProtocolError(f"NodeConfig.{name} must be a number > 0, not {value!r}")
        limit = self.unverified_credit_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_YOCTO:
            raise LocalProtocolError(
                f"NodeConfig.unverified_credit_limit must be an amount, not {limit!r}"
            )
        for name, low, high in (
            ("redeem_fraction_bps", 0, 10_000),
            ("redeem_threshold", 0, MAX_YOCTO),
            ("redeem_max_age_ms", 1, MAX_YOCTO),
            ("min_redeem_interval_ms", 0, MAX_YOCTO),
            ("max_claim_answers", 1, 1 << 16),
            ("claim_answer_margin_ms", 0, MAX_YOCTO),
            ("min_challenge_ms", 0, MAX_YOCTO),
            ("claim_grace_ms", 0, MAX_YOCTO),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise LocalProtocolError(
                    f"NodeConfig.{name} must be an int in [{low}, {high}], not {value!r}"
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """What a service handler receives."""

    service: str
    body: bytes
    peer_id: str
    channel: bytes
    n: int
    price: int
    deadline: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResult:
    """A successful paid call: the response body, what it cost, and the signed receipt."""

    body: bytes
    price: int
    n: int
    channel: bytes
    spent: int
    receipt: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelInfo:
    channel: bytes
    role: str  # "payer" | "payee"
    peer: str  # the counterparty's PeerID
    deposit: int
    status: str
    paid: int  # payer: highest signed; payee: highest voucher held
    spent: int
    redeemed: int
    last_n: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimInfo:
    """A claim this node filed or answered, and its outcome (`Node.claims`).

    ``outcome`` is open, delivered, refused, frivolous or upheld (specs/claims.md 3).
    For our own claims (role claimant) once decided: the answer's ``status`` ("" if
    none), whether our ``bond`` came back, the ``refund`` of the request's price, the part
    of it ``clawed`` from the provider's stake, the provider's ``slashed`` amount, and the
    signed ``response`` it answered with, checked like a receipt (its ``body`` is the
    answer), None if there is none or it failed the check.
    """

    claim_id: bytes
    role: str
    outcome: str
    request_hash: bytes
    status: str = ""
    bond: int = 0
    bond_returned: bool | None = None
    refund: int = 0
    clawed: int = 0
    slashed: int = 0
    response: Response | None = None

    @property
    def body(self) -> bytes | None:
        return self.response.body if self.response is not None else None


@dataclass
class Counters:
    """Numbers a user can read (`node.counters`)."""

    calls_served: int = 0
    charged: int = 0  # yocto charged for served calls
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    calls_made: int = 0
    calls_ok: int = 0
    paid: int = 0  # yocto paid for calls made
    call_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    timeouts: int = 0
    claims_filed: int = 0
    claims_answered: int = 0
    claims_won: int = 0
    redeemed: int = 0
    connections: int = 0
    protocol_violations: int = 0
    sessions_refused: int = 0  # inbound streams refused (max_sessions, max_sessions_per_peer)
    rate_limited: int = 0  # inbound streams reset: refused requests above the allowed rate
    idle_resets: int = 0  # inbound streams reset by idle_timeout (idle or slow-loris peers)
    answers_resent: int = 0  # re-sent requests answered with the stored answer (C-4)
    late_answers: int = 0  # handlers that finished after the deadline: not charged (C-4)
    in_doubt: int = 0  # calls ended with RequestInDoubt (the request stays claimable)
    sessions_evicted: int = 0  # inbound sessions reset to make room for a new one


class Behaviour:
    """Hooks that make a node misbehave, for simulations and the demo. Honest by default.

    Subclass and pass ``behaviour=`` to `open_node`.
    """

    #: whether the watcher defends claims filed against this node
    answers_claims: bool = True

    def drop(self, call: Call) -> bool:
        """True: take this paid request (its voucher is kept) and never answer it."""
        return False

    async def before_handler(self, call: Call) -> None:
        """Runs before the handler of an admitted request (e.g. sleep: a slow provider)."""


@dataclass
class _Service:
    name: str
    handler: Handler
    price: int
    max_body: int


def _payee_record(ch: PayeeChannel) -> PayeeRecord:
    return PayeeRecord(
        channel=ch.channel,
        ledger=ch.ledger,
        payer=ch.payer,
        payee=ch.payee,
        deposit=ch.deposit,
        status=ch.status.value,
        last_n=ch.last_n,
        paid_max=ch.paid_max,
        best_voucher=ch.best.to_frame() if ch.best is not None else b"",
        spent=ch.spent,
        redeemed=ch.redeemed,
        # the last checked voucher, when best is not checked yet (protocol.md 13.4)
        verified_voucher=(
            ch.verified.to_frame()
            if ch.verified is not None and ch.verified is not ch.best
            else b""
        ),
    )


def _payer_record(ch: PayerChannel) -> PayerRecord:
    return PayerRecord(
        channel=ch.channel,
        ledger=ch.ledger,
        payer=ch.payer,
        payee=ch.payee,
        deposit=ch.deposit,
        status=ch.status.value,
        last_n=ch.last_n,
        paid=ch.paid,
        spent=ch.spent,
    )


def _status_of(state: ChannelState | str) -> ChannelStatus:
    return ChannelStatus(str(state))


def split_peer(peer: str) -> tuple[str, str | None]:
    """``"/ip4/.../p2p/<id>"`` -> (id, addr); a bare PeerID -> (id, None).

    Raises:
        LocalProtocolError: if no Ed25519 PeerID can be found.
    """
    if "/p2p/" in peer:
        peer_id = peer.rsplit("/p2p/", 1)[1].strip("/")
        addr: str | None = peer
    else:
        peer_id, addr = peer, None
    try:
        public_from_peer_id(peer_id)
    except DecodeError as exc:
        raise LocalProtocolError(
            f"not a peer address or PeerID: {peer!r} ({exc.message})"
        ) from None
    return peer_id, addr


# ---------------------------------------------------------------------------
# the node


#: how many account -> PeerID bindings (EVM ledgers) a node remembers, newest kept
_MAX_BOUND_PEERS = 4096


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
        self.payee_channels: dict[bytes, PayeeChannel] = {}
        self.payer_channels: dict[bytes, PayerChannel] = {}
        self._connections: dict[str, _Connection] = {}
        self._connect_locks: dict[str, trio.Lock] = collections.defaultdict(trio.Lock)
        self._channel_locks: dict[bytes, trio.Lock] = collections.defaultdict(trio.Lock)
        self._sessions = 0  # inbound streams being served
        self._sessions_of: collections.Counter[bytes] = collections.Counter()  # per peer
        self._live: dict[_ServerSession, None] = {}  # sessions counted above, oldest first
        self._in_flight_total = 0  # admitted, unfinished requests over all sessions
        # Admitted requests not answered yet, by request hash: the outboxes of the
        # sessions where the payer re-sent one (each gets the answer too, C-4).
        self._unanswered: dict[bytes, list[_Outbox]] = {}
        self._transport: Any = None
        self._nursery: trio.Nursery | None = None
        self._stake: StakeTerms | None = None
        self.watcher: Any = None
        self.behaviour: Behaviour = Behaviour()

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
            PeerUnreachable: an EVM ledger and the peer cannot be reached.
        """
        peer_id, addr = split_peer(peer)
        if addr is not None and self._transport is not None:
            self._transport.add_address(peer_id, addr)
        if scheme_for(self.ledger.ledger_id) is Scheme.ED25519:
            return public_from_peer_id(peer_id)
        conn = await self._connection(peer_id)
        return conn.account

    @property
    def addrs(self) -> list[str]:
        return list(self._transport.addrs) if self._transport is not None else []

    def now(self) -> int:
        """The node's clock, Unix ms (injected in simulations)."""
        return self._clock()

    def _ledger_param(self, name: str) -> int | None:
        """A ledger parameter if this ledger has it (e.g. ``max_claim_body``), else None."""
        value = getattr(self.ledger.params, name, None)
        return value if type(value) is int and value >= 0 else None

    def response_expiry(self, deadline: int) -> int:
        """When a signed response (and the request beside it) to a request with this
        `deadline` may be pruned: a claim can be filed on it until its deadline plus the
        claim window, and it serves as evidence against claimed requests dated up to
        ``max_deadline_horizon_ms`` later (claims.md 2), whose claims run a window more.
        So ``deadline + max(response_retention_ms, horizon + 2 * claim_window)``."""
        horizon = self._ledger_param("max_deadline_horizon_ms") or 0
        window = self._stake.claim_window_ms if self._stake is not None else 0
        return deadline + max(self.config.response_retention_ms, horizon + 2 * window)

    # -- startup

    async def _load(self) -> None:
        for rec in await self.store.payee_channels():
            ch = PayeeChannel(
                ledger=rec.ledger,
                channel=rec.channel,
                payer=rec.payer,
                payee=rec.payee,
                deposit=rec.deposit,
                status=ChannelStatus(rec.status),
                last_n=rec.last_n,
                paid_max=rec.paid_max,
                spent=rec.spent,
                redeemed=rec.redeemed,
                unverified_credit_limit=self.config.unverified_credit_limit,
            )
            if rec.verified_voucher:  # the last checked voucher, best being unchecked
                verified = decode_frame(rec.verified_voucher)
                if isinstance(verified, Request) and verified.verify(ch.payer):
                    ch.verified = ch.best = verified
            if rec.best_voucher:
                best = decode_frame(rec.best_voucher)
                if isinstance(best, Request):
                    ch.best = best  # maybe admitted unchecked (protocol.md 13.4): check it
                    if ch.verified_voucher() is not best:
                        log.error(
                            "stored voucher of channel %s does not verify: %d yocto charged "
                            "on unchecked vouchers are lost (at most the unverified credit "
                            "limit)",
                            ch.channel.hex(),
                            ch.spent - ch.verified_paid,
                        )
            self.payee_channels[rec.channel] = ch
        for prec in await self.store.payer_channels():
            self.payer_channels[prec.channel] = PayerChannel(
                ledger=prec.ledger,
                channel=prec.channel,
                payer=prec.payer,
                payee=prec.payee,
                deposit=prec.deposit,
                status=ChannelStatus(prec.status),
                last_n=prec.last_n,
                paid=prec.paid,
                spent=prec.spent,
            )
        # Requests that never got a receipt (in flight when we stopped, or since marked
        # unclaimable, expired or claimed by the watcher): the payee may have charged
        # them, so count them as abandoned (a later receipt may then show spent above
        # ours by at most their prices).
        for record in await self.store.requests():
            if record.state in ("answered", "refused"):
                continue  # a receipt came back: accounted for
            payer_ch = self.payer_channels.get(record.channel)
            if payer_ch is None or not record.frame:
                continue
            sent = decode_frame(record.frame)
            if isinstance(sent, Request) and sent.n <= payer_ch.last_n:
                payer_ch.abandoned[sent.n] = Pending(sent, record.price)
        await self._adopt_ledger_channels()
        await self.refresh_stake()

    async def _adopt_ledger_channels(self) -> None:
        """Channels we pay on that the ledger knows and our store does not (a lost or new
        store): adopt them with empty state; the first call resyncs from the payee."""
        for info in await self.ledger.channels_of(self.account):
            if info.payer != self.account or info.id in self.payer_channels:
                continue
            if info.state is ChannelState.CLOSED:
                continue
            ch = PayerChannel(
                ledger=self.ledger.ledger_id,
                channel=info.id,
                payer=self.account,
                payee=info.payee,
                deposit=info.deposit,
                status=_status_of(info.state),
            )
            self.payer_channels[info.id] = ch
            self.persister.stage(payer=_payer_record(ch))

    async def refresh_stake(self) -> StakeTerms | None:
        stake = await self.ledger.stake_of(self.account)
        if stake is None or stake.amount == 0 or stake.unbonding_at:
            self._stake = None
        else:
            self._stake = StakeTerms(
                amount=stake.amount, penalty=stake.penalty, claim_window_ms=stake.claim_window_ms
            )
        return self._stake

    def hello(self) -> Hello:
        return Hello.create(
            self.key,
            ledger=self.ledger.ledger_id,
            services=tuple(
                ServiceTerms(name=s.name, price=s.price, max_body=s.max_body)
                for s in sorted(self.services.values(), key=lambda s: s.name)
            ),
            stake=self._stake,
            max_in_flight=self.config.max_in_flight,
            max_frame=self.config.max_frame,
            settlement_key=self.signer,
        )

    # -- serving

    def serve(self, name: str, handler: Handler, *, price: int, max_body: int = 1 << 16) -> None:
        """Offer a paid service. `handler(call)` returns the response body (bytes).

        A handler that raises is not charged: the caller gets HANDLER_ERROR.
        """
        ServiceTerms(name=name, price=price, max_body=max_body)  # validates
        if max_body > self.config.max_frame:
            raise LocalProtocolError("max_body cannot exceed the node's max_frame")
        self.services[name] = _Service(name, handler, price, max_body)

    async def _handle_stream(self, stream: Any) -> None:
        peer: bytes = stream.remote_public
        cfg = self.config
        session = _ServerSession(self, stream)
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
            self.counters.sessions_refused += 1
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
            self.counters.sessions_evicted += 1
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
        fresh_after = trio.current_time() - self.config.hello_timeout
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

    async def _payee_channel_for(self, request: Request, peer: bytes) -> PayeeChannel | None:
        ch = self.payee_channels.get(request.channel)
        if ch is not None:
            return ch
        if peer == self.account:
            return None
        lock = self._channel_locks[request.channel]
        try:
            async with lock:
                ch = self.payee_channels.get(request.channel)
                if ch is not None:
                    return ch
                info = await self.ledger.channel(request.channel)
                if info is None or info.payee != self.account:
                    return None
                if info.challenge_ms < self.config.min_challenge_ms:
                    # C-8: a payer could close it faster than we can redeem
                    raise RemoteProtocolError(
                        f"challenge period {info.challenge_ms} ms is below this payee's "
                        f"minimum {self.config.min_challenge_ms} ms",
                        code=ErrorCode.CHALLENGE_TOO_SHORT,
                        details={"min_challenge_ms": self.config.min_challenge_ms},
                    )
                ch = PayeeChannel(
                    ledger=self.ledger.ledger_id,
                    channel=info.id,
                    payer=info.payer,
                    payee=self.account,
                    deposit=info.deposit,
                    status=_status_of(info.state),
                    redeemed=info.redeemed,
                    unverified_credit_limit=self.config.unverified_credit_limit,
                )
                self.payee_channels[ch.channel] = ch
                self.persister.stage(payee=_payee_record(ch))
                return ch
        finally:
            # One lock per channel id a peer names would grow without bound under a flood
            # of made-up ids: drop it once nobody holds or waits for it (a task waiting on
            # it keeps using this object, so two lookups of one id never run at once).
            if (
                not lock.locked()
                and lock.statistics().tasks_waiting == 0
                and self._channel_locks.get(request.channel) is lock
            ):
                del self._channel_locks[request.channel]

    async def refresh_channel(self, channel: bytes) -> None:
        """Re-read a channel's deposit, state and redeemed total from the ledger."""
        info = await self.ledger.channel(channel)
        if info is None:
            return
        for ch in (self.payee_channels.get(channel), self.payer_channels.get(channel)):
            if ch is None:
                continue
            ch.deposit = max(ch.deposit, info.deposit)
            status = _status_of(info.state)
            if status is not ChannelStatus.OPEN or ch.status is ChannelStatus.OPEN:
                ch.status = status
            if isinstance(ch, PayeeChannel):
                ch.redeemed = max(ch.redeemed, info.redeemed)
                self.persister.stage(payee=_payee_record(ch))
            else:
                self.persister.stage(payer=_payer_record(ch))

    # -- calling

    def _payer_channel_to(self, payee: bytes) -> PayerChannel | None:
        best: PayerChannel | None = None
        for ch in self.payer_channels.values():
            if ch.payee == payee and ch.status is ChannelStatus.OPEN:
                if best is None or ch.available > best.available:
                    best = ch
        return best

    async def open_channel(
        self, peer: str, *, deposit: int, challenge_ms: int | None = None
    ) -> ChannelInfo:
        """Escrow `deposit` yocto on the ledger for calls to `peer` (a multiaddr or PeerID)."""
        payee = await self.account_of(peer)
        channel = await self.ledger.open_channel(
            self.key, payee, deposit, challenge_ms or self.config.challenge_ms
        )
        ch = PayerChannel(
            ledger=self.ledger.ledger_id,
            channel=channel,
            payer=self.account,
            payee=payee,
            deposit=deposit,
        )
        self.payer_channels[channel] = ch
        await self.persister.durable(self.persister.stage(payer=_payer_record(ch)))
        return self._info_payer(ch)

    async def top_up(self, channel: bytes, amount: int) -> ChannelInfo:
        ch = self.payer_channels.get(channel)
        if ch is None:
            raise LocalProtocolError("not a channel we pay on", code=ErrorCode.UNKNOWN_CHANNEL)
        await self.ledger.top_up(self.key, channel, amount)
        ch.deposit += amount
        await self.persister.durable(self.persister.stage(payer=_payer_record(ch)))
        return self._info_payer(ch)

    async def close_channel(self, channel: bytes) -> ChannelInfo:
        """Close a channel: as payee at once (redeeming what was charged); as payer, start
        the challenge period (the watcher finalizes it when it ends)."""
        pch = self.payee_channels.get(channel)
        if pch is not None:
            # only a checked voucher goes to the ledger (protocol.md 13.4 rule b)
            voucher = pch.verified_voucher() if pch.spent > pch.redeemed else None
            await self.ledger.payee_close(
                self.key, channel, voucher, pch.spent if voucher else None
            )
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
        if not isinstance(request, Request) or request.channel not in self.payer_channels:
            return None
        with trio.move_on_after(timeout):
            try:
                conn = await self._connection(self.peer_of(record.payee))
            except (P2payError, NetError, ValueError):
                return None
            if conn.account != record.payee:
                return None
            return await conn.redeliver(request)
        return None

    async def claims(self) -> list[ClaimInfo]:
        """Claims this node filed or answered, with their outcomes (specs/claims.md 6)."""
        from p2pay.watcher import outcome_key

        await self.persister.flush()
        out = []
        for record in await self.store.claims():
            raw = await self.store.get_meta(outcome_key(record.claim_id))
            if record.role != "claimant" or raw is None:
                out.append(
                    ClaimInfo(
                        claim_id=record.claim_id,
                        role=record.role,
                        outcome=record.state,
                        request_hash=record.request_hash,
                    )
                )
                continue
            doc = json.loads(raw)
            response: Response | None = None
            if doc.get("response"):
                frame = decode_frame(bytes.fromhex(doc["response"]))
                response = frame if isinstance(frame, Response) else None
            out.append(
                ClaimInfo(
                    claim_id=record.claim_id,
                    role=record.role,
                    outcome=doc["outcome"],
                    request_hash=record.request_hash,
                    status=doc["status"],
                    bond=int(doc["bond"]),
                    bond_returned=bool(doc["bond_returned"]),
                    refund=int(doc["refund"]),
                    clawed=int(doc["clawed"]),
                    slashed=int(doc["slashed"]),
                    response=response,
                )
            )
        return out

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
        """Connect (if not yet) and return the peer's hello: its services, prices, stake."""
        peer_id, addr = split_peer(peer)
        if addr is not None:
            self._transport.add_address(peer_id, addr)
        conn = await self._connection(peer_id)
        return conn.hello

    async def _connection(self, peer_id: str) -> _Connection:
        conn = self._connections.get(peer_id)
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_locks[peer_id]:
            conn = self._connections.get(peer_id)
            if conn is not None and not conn.closed:
                return conn
            try:
                stream = await self._transport.connect(peer_id)
            except NetError as exc:
                raise PeerUnreachable(f"cannot reach {peer_id}: {exc}") from exc
            try:
                with trio.fail_after(self.config.hello_timeout):
                    await stream.send(self.hello().to_frame())
                    first = decode_frame(await stream.receive(), max_size=self.config.max_frame)
                    if isinstance(first, Refusal):  # e.g. OVERLOADED: too many sessions
                        raise remote_error(first.code, first.message, first.details)
                    hello = _check_hello(first, stream.remote_public, self.ledger.ledger_id)
            except NetError as exc:
                await stream.reset()
                raise PeerUnreachable(f"{peer_id} closed the stream during the hello") from exc
            except trio.TooSlowError as exc:
                await stream.reset()
                raise PeerUnreachable(f"no hello from {peer_id} in time") from exc
            except BaseException:
                await stream.reset()
                raise
            conn = _Connection(self, stream, hello, peer_id)
            assert self._nursery is not None
            self._nursery.start_soon(conn.run)
            self._connections[peer_id] = conn
            self.counters.connections += 1
            return conn

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
            PaymentRequired, UnknownService, InsufficientDeposit, CallTimeout,
            ConnectionLost, or the RemoteProtocolError for the code the provider answered.
        """
        if not isinstance(body, bytes | bytearray | memoryview):
            raise LocalProtocolError("body must be bytes")
        body = bytes(body)
        peer_id, addr = split_peer(peer)
        if addr is not None:
            self._transport.add_address(peer_id, addr)
        timeout = self.config.default_timeout if timeout is None else timeout
        if not (timeout > 0 and math.isfinite(timeout)):
            raise LocalProtocolError("timeout must be a positive number of seconds")
        self.counters.calls_made += 1
        try:
            result = await self._call(peer_id, service, body, max_price, timeout)
        except P2payError as exc:
            self.counters.call_errors[exc.code.value] += 1
            raise
        self.counters.calls_ok += 1
        self.counters.paid += result.price
        return result

    async def _call(
        self, peer_id: str, service: str, body: bytes, max_price: int, timeout: float
    ) -> CallResult:
        conn = await self._connection(peer_id)
        payee = conn.account
        terms = conn.hello.service(service)
        if terms is None:
            raise UnknownService(f"{peer_id} offers no service {service!r}")
        price = conn.prices.get(service, terms.price)  # the hello's, or the latest we saw
        if price > max_price:
            raise PaymentRequired(
                f"{service!r} costs {price}, above max_price {max_price}",
                details={"price": price},
            )
        if len(body) > terms.max_body:
            raise LocalProtocolError(
                f"body of {len(body)} bytes is over the service's {terms.max_body}",
                code=ErrorCode.BODY_TOO_LARGE,
            )
        give_up_at = trio.current_time() + timeout
        price_retried = resynced = False
        while True:
            ch = self._payer_channel_to(payee)
            if ch is None:
                raise LocalProtocolError(
                    f"no open channel to {peer_id}: open_channel first",
                    code=ErrorCode.UNKNOWN_CHANNEL,
                )
            async with conn.slots:
                slot = conn.send_request(ch, service, body, price, timeout)
                if not await self._wait(slot, timeout + 0.05):
                    conn.abandon(ch, slot)
                    self.counters.timeouts += 1
                    raise CallTimeout(f"no answer from {peer_id} within {timeout} s")
                if slot.replay is Replay.IN_DOUBT:
                    # Unsigned: it may have been served. Ask once more with the same signed
                    # request; an honest payee answers with what it stored (C-4).
                    slot = await self._resend_once(conn, ch, slot, give_up_at, timeout)
            if slot.replay is Replay.SUPERSEDED:
                # Our own signature shows we lost state: numbers and slices are adopted
                # (on_replay); a fresh request follows, once.
                if resynced:
                    raise RemoteProtocolError("resync did not converge", code=ErrorCode.REPLAY)
                resynced = True
                continue
            if slot.error is not None:
                raise slot.error
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
                    if asked != price and 0 <= asked <= MAX_YOCTO:
                        conn.prices[service] = asked  # the provider changed its price
                        if asked <= max_price and not price_retried:
                            price_retried = True
                            price = asked
                            continue
                raise remote_error(response.status, message, details)
            conn.prices[service] = receipt.charged
            return CallResult(
                body=response.body,
                price=receipt.charged,
                n=receipt.n,
                channel=response.channel,
                spent=receipt.spent,
                receipt=response,
            )

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
        ch = self.payer_channels.get(request.channel)
        if ch is None:
            return None
        pending = ch.in_flight.get(request.n) or ch.abandoned.get(request.n)
        if pending is None or pending.request.hash != request.hash:
            return None
        try:
            conn = await self._connection(self.peer_of(ch.payee))
        except P2payError as exc:
            log.info("cannot re-send request %d: %s", request.n, exc)
            return None
        key = (ch.channel, request.n)
        if key in conn.pending or conn.account != ch.payee:
            return None  # a call is waiting for it already, or not the channel's payee
        slot = conn.resend(ch, pending.request)
        try:
            if not await self._wait(slot, timeout):
                return None
        finally:
            if conn.pending.get(key) is slot:
                del conn.pending[key]
        return slot.receipt

    async def _wait(self, slot: _Slot, seconds: float) -> bool:
        """Wait for `slot`'s answer (and its state to be durable); False on timeout."""
        with trio.move_on_after(seconds):
            await slot.done.wait()
        if not slot.done.is_set():
            return False
        if slot.generation:
            await self.persister.durable(slot.generation)
        return True

    async def _resend_once(
        self, conn: _Connection, ch: PayerChannel, slot: _Slot, give_up_at: float, timeout: float
    ) -> _Slot:
        """Re-send the very request `slot` carried, after an unsigned REPLAY of it.

        Returns:
            The new slot, answered by a receipt, or SUPERSEDED (lost state proven).

        Raises:
            RequestInDoubt: REPLAY again, no answer, or any unsigned refusal: the request
                is abandoned (it stays on record, claimable).
        """
        try:
            again = conn.resend(ch, slot.request)
        except ConnectionLost:
            again = _Slot(channel=ch.channel, n=slot.n, request=slot.request, resent=True)
            again.error = ConnectionLost(f"connection to {conn.peer_id} lost")
            again.done.set()
        wait = max(give_up_at - trio.current_time(), min(timeout, 1.0))
        answered = await self._wait(again, wait)
        if answered and (again.receipt is not None or again.replay is Replay.SUPERSEDED):
            return again
        conn.abandon(ch, again)
        self.counters.in_doubt += 1
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


def _check_hello(frame: object, remote: bytes, ledger: bytes) -> Hello:
    """The first frame must be a hello on our ledger, signed by the stream's peer."""
    if not isinstance(frame, Hello):
        raise DecodeError("expected a hello first")
    check_signed_by(frame, remote, ledger)
    return frame


# ---------------------------------------------------------------------------
# server side


_OUTBOX_WRITE_BYTES = 48 * 1024
"""Most bytes of queued frames one outbox write carries (a frame alone may be larger):
under one yamux frame (64 KiB) and one Noise frame (65,519 bytes of plaintext)."""


class _Outbox:
    """Answers in decision order; each is sent once its generation is durable."""

    def __init__(self) -> None:
        self.items: collections.deque[tuple[int, bytes]] = collections.deque()
        self.changed = trio.Event()
        self.closed = False
        self.last_sent = trio.current_time()  # when a frame last left (idle_timeout)

    def put(self, generation: int, frame: bytes) -> None:
        if not self.closed:
            self.items.append((generation, frame))
            self.changed.set()

    async def wait_below(self, limit: int) -> None:
        while len(self.items) >= limit and not self.closed:
            self.changed = trio.Event()
            await self.changed.wait()

    async def pump(self, node: Node, stream: Any) -> None:
        durable = 0  # every generation up to this one is known durable
        try:
            while True:
                while not self.items:
                    self.changed = trio.Event()
                    await self.changed.wait()
                generation = self.items[0][0]
                if generation > durable:
                    await node.persister.durable(generation)
                    durable = generation
                # Everything queued behind it whose generation is durable too goes in the
                # same write (in order, stopping at the first that is not): one yamux
                # frame and one Noise frame for a burst of answers or requests.
                batch: list[bytes] = []
                size = 0
                for gen, frame in self.items:
                    if gen > durable or (batch and size + len(frame) > _OUTBOX_WRITE_BYTES):
                        break
                    batch.append(frame)
                    size += len(frame)
                await send_frames(stream, batch)
                self.last_sent = trio.current_time()
                for _ in batch:
                    self.items.popleft()
                self.changed.set()
        finally:
            self.closed = True
            self.changed.set()


class _ServerSession:
    def __init__(self, node: Node, stream: Any) -> None:
        self.node = node
        self.stream = stream
        self.peer: bytes = stream.remote_public
        self.peer_id = peer_id_from_public(self.peer)
        # the peer's account on our ledger, bound by its hello (set once the hello checks)
        self.account = b""
        self.outbox = _Outbox()
        self.in_flight = 0
        # When this session last did something useful: its hello, an admitted request,
        # a completed one. Only that keeps it from idle_timeout, and eviction takes the
        # oldest first; refused or malformed frames and answers leaving do not count.
        self.last_useful = trio.current_time()
        self.has_channel = False  # it sent a request on a channel its peer pays
        # Token bucket of refused requests (specs/threat-model.md "Limits"), in thousandths
        # of a token so that refilling at `max_refusals_per_s` per 1000 ms stays integral.
        self._tokens = node.config.refusal_burst * 1000
        self._tokens_at = node.now()
        self.flooded = False
        # Admitted requests whose handler has not started yet, and whether a task runs them.
        self._ready: collections.deque[tuple[PayeeChannel, Request, _Service, Call]] = (
            collections.deque()
        )
        self._runner = False

    async def run(self) -> None:
        node = self.node
        try:
            with trio.fail_after(node.config.hello_timeout):
                first = await self.stream.receive()
            hello = _check_hello(
                decode_frame(first, max_size=node.config.max_frame),
                self.peer,
                node.ledger.ledger_id,
            )
        except StreamClosed:
            return  # the peer left (or reset) before its hello: nothing to answer
        except (RemoteProtocolError, trio.TooSlowError) as exc:
            code = exc.code if isinstance(exc, RemoteProtocolError) else ErrorCode.DEADLINE_EXCEEDED
            node.counters.refused[code.value] += 1
            with trio.move_on_after(1), contextlib.suppress(StreamClosed):
                await self.stream.send(
                    Refusal(channel=b"", n=0, code=code, message=str(exc)[:200]).to_frame()
                )
            return
        self.account = node._bound(hello, self.peer_id)
        try:
            await self.stream.send(node.hello().to_frame())
        except StreamClosed:
            return
        log.info("peer connected peer=%s", self.peer_id)
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
            await self.outbox.pump(self.node, self.stream)
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
                await trio.sleep_until(now + timeout)
                continue
            deadline = self.last_useful + timeout
            if now < deadline:
                await trio.sleep_until(deadline)
                continue
            self.node.counters.idle_resets += 1
            log.info("idle stream reset peer=%s", self.peer_id)
            await self.stream.reset()
            scope.cancel()
            return

    def _take_refusal_token(self) -> bool:
        """Count one refused request against the peer's budget; False once it is spent."""
        cfg = self.node.config
        now = self.node.now()
        elapsed = max(0, now - self._tokens_at)  # a clock that steps back refills nothing
        self._tokens_at = max(self._tokens_at, now)
        refill = elapsed * cfg.max_refusals_per_s  # thousandths: rate per s = per 1000 ms
        self._tokens = min(cfg.refusal_burst * 1000, self._tokens + refill)
        if self._tokens < 1000:
            self.flooded = True
            return False
        self._tokens -= 1000
        return True

    def _refuse_unauthenticated(
        self,
        channel: bytes,
        n: int,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.node.counters.refused[code.value] += 1
        log.info("refused peer=%s code=%s n=%d", self.peer_id, code.value, n)
        self.outbox.put(
            0,
            Refusal(
                channel=channel, n=n, code=code, message=message[:500], details=details or {}
            ).to_frame(),
        )

    async def _read_loop(self, handlers: trio.Nursery) -> None:
        node = self.node
        while True:
            await self.outbox.wait_below(node.config.max_outbox)
            if self.outbox.closed:
                return
            try:
                payload = await self.stream.receive()
            except StreamClosed:
                return
            except DecodeError as exc:  # FrameTooLarge, or a bad length prefix (5.2)
                node.counters.protocol_violations += 1
                self._refuse_unauthenticated(b"", 0, exc.code, exc.message)
                return
            try:
                message = decode_frame(payload, max_size=node.config.max_frame)
            except RemoteProtocolError as exc:  # DecodeError, FrameTooLarge, WrongDomain
                node.counters.protocol_violations += 1
                self._refuse_unauthenticated(b"", 0, exc.code, exc.message)
                return
            if not isinstance(message, Request):
                node.counters.protocol_violations += 1
                self._refuse_unauthenticated(b"", 0, ErrorCode.MALFORMED, "expected a request")
                return
            await self._on_request(message, handlers)
            if self.flooded:
                # Unpaid request flood (specs/threat-model.md): the peer's refused requests
                # outran `max_refusals_per_s` / `refusal_burst`. Reset: nothing it sent
                # after this is read, and its admitted requests are cancelled unpaid.
                node.counters.rate_limited += 1
                log.warning("stream reset: too many refused requests peer=%s", self.peer_id)
                await self.stream.reset()
                return

    async def _on_request(self, request: Request, handlers: trio.Nursery) -> None:
        node = self.node
        try:
            ch = await node._payee_channel_for(request, self.account)
        except RemoteProtocolError as exc:  # CHALLENGE_TOO_SHORT: not adopted, nothing kept
            self._take_refusal_token()
            self._refuse_unauthenticated(
                request.channel, request.n, exc.code, exc.message, exc.details
            )
            return
        if ch is not None and ch.payer == self.account:
            self.has_channel = True  # eviction spares it (Node._handle_stream)
        if ch is None:
            self._take_refusal_token()
            self._refuse_unauthenticated(
                request.channel,
                request.n,
                ErrorCode.UNKNOWN_CHANNEL,
                "no such channel to this payee",
            )
            return
        if request.paid > ch.deposit and self.account == ch.payer:
            await node.refresh_channel(ch.channel)  # a top-up the watcher has not seen yet
        service = node.services.get(request.service)
        now = node.now()
        node_busy = node._in_flight_total >= node.config.max_in_flight_total
        decision = ch.admit(
            request,
            peer=self.account,
            price=service.price if service is not None else None,
            max_body=service.max_body if service is not None else 0,
            now=now,
            overloaded=self.in_flight >= node.config.max_in_flight or node_busy,
            max_deadline=now + node.config.max_deadline_horizon_ms,
        )
        if isinstance(decision, Refuse):
            # Every refusal costs the peer a token, except OVERLOADED when the whole node
            # (not this peer) is at its limit: an honest client is not cut off for that.
            if not (
                decision.code is ErrorCode.OVERLOADED
                and node_busy
                and self.in_flight < node.config.max_in_flight
            ):
                self._take_refusal_token()
            if decision.code is ErrorCode.INVALID_SIGNATURE:
                node.counters.protocol_violations += 1  # the payer's own stream (13.4 c)
            if decision.code is ErrorCode.REPLAY and await self._answer_again(request):
                return
            if not decision.authenticated:
                self._refuse_unauthenticated(
                    request.channel, request.n, decision.code, decision.message, decision.details
                )
                return
            node.counters.refused[decision.code.value] += 1
            self._answer(
                ch,
                request,
                decision.code.value,
                0,
                ch.spent,
                refusal_body(decision.message, decision.details),
            )
            return
        assert isinstance(decision, Admit) and service is not None
        if decision.voucher_improved:
            node.persister.stage(payee=_payee_record(ch))
        call = Call(
            service=request.service,
            body=request.body,
            peer_id=self.peer_id,
            channel=request.channel,
            n=request.n,
            price=decision.price,
            deadline=request.deadline,
        )
        if node.behaviour.drop(call):
            ch.complete(request.n, ok=False)  # keeps the voucher, charges nothing, never answers
            node.counters.refused["DROPPED"] += 1
            return
        self.in_flight += 1
        self.last_useful = trio.current_time()
        node._in_flight_total += 1
        node._unanswered[request.hash] = []
        self._ready.append((ch, request, service, call))
        if not self._runner:
            self._runner = True
            handlers.start_soon(self._run_ready, handlers)

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

    async def _run_ready(self, handlers: trio.Nursery) -> None:
        """Start the admitted requests' handlers, in admission order, in this one task.

        A handler that finishes without suspending (echo-like: no await that blocks)
        runs to its end right here, so a burst of requests costs one task, not one
        each, and such handlers are charged in the order they were admitted. The first
        handler that does suspend keeps this task (it is resumed here, as an ``await``
        would), and a new runner takes over the requests still waiting.
        """
        ready = self._ready
        runner = True  # this task runs the queue (until a handler suspends in it)
        try:
            while ready:
                coro = self._run_handler(*ready.popleft())
                context = contextvars.copy_context()  # as a task of its own would have
                try:
                    trap = context.run(coro.send, None)
                except StopIteration:
                    continue
                runner = False
                if ready:
                    handlers.start_soon(self._run_ready, handlers)  # the next runner
                else:
                    self._runner = False
                await _resume(coro, context, trap)
                return
        finally:
            if runner:
                self._runner = False

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
            payee=_payee_record(ch),
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

    async def _run_handler(
        self, ch: PayeeChannel, request: Request, service: _Service, call: Call
    ) -> None:
        node = self.node
        ok = False
        body = b""
        error = "handler failed"
        details: dict[str, Any] = {}
        try:
            ok, body, error, details = await run_service(node, service, call)
        except trio.Cancelled:
            error = "stream closed before the handler finished"
            raise
        finally:
            self.in_flight -= 1
            self.last_useful = trio.current_time()
            node._in_flight_total -= 1
            done = ch.complete(request.n, ok=ok, now=node.now())
            if done.refusal is not None:
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


async def run_service(
    node: Node, service: _Service, call: Call
) -> tuple[bool, bytes, str, dict[str, Any]]:
    """Run `service`'s handler for an admitted `call`: a request on a stream, or one served
    through a claim by the watcher (specs/claims.md C-6). One function, so both check the
    handler's result alike.

    Returns:
        ``(ok, body, error, details)``: ``ok`` with the body the response carries, or
        False with why (the handler raised, returned something else than bytes, too much
        for a frame, or more than the ledger accepts in a claim answer) and the refusal's
        details. A cancellation (stream closed, deadline) propagates.
    """
    try:
        await node.behaviour.before_handler(call)
        result = await service.handler(call)
    except trio.Cancelled:
        raise
    except Exception as exc:  # a handler's failure is the caller's HANDLER_ERROR, never ours
        log.warning("handler %s failed: %r", call.service, exc)
        return False, b"", f"handler failed: {type(exc).__name__}", {}
    claim_limit = node._ledger_param("max_claim_body")
    if not isinstance(result, bytes | bytearray | memoryview):
        return False, b"", f"handler returned {type(result).__name__}, not bytes", {}
    if len(result) > node.config.max_frame - 4096:
        return False, b"", "handler response too large", {}
    if claim_limit is not None and len(result) > claim_limit:
        # Never charge an answer we could not post to the ledger if it is claimed
        # (issue 13 item 7): refuse it, signed and uncharged.
        error = (
            f"answer of {len(result)} bytes is over the ledger's claim body limit "
            f"of {claim_limit} bytes"
        )
        return False, b"", error, {"max_body": claim_limit}
    return True, bytes(result), "", {}


@types.coroutine
def _resume(coro: Any, context: contextvars.Context, trap: Any) -> Any:
    """Drive `coro`, which suspended at `trap` in the current task, to its end: what
    ``await coro`` does (trio's traps pass up through here unchanged, their results and
    exceptions, cancellation included, go back down), each step in `context`."""
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            step = functools.partial(coro.throw, exc)
        else:
            step = functools.partial(coro.send, value)
        try:
            trap = context.run(step)
        except StopIteration:
            return


# ---------------------------------------------------------------------------
# client side


@dataclass
class _Slot:
    channel: bytes
    n: int
    request: Request
    done: trio.Event = field(default_factory=trio.Event)
    receipt: Receipt | None = None
    error: P2payError | None = None
    replay: Replay | None = None  # what an unsigned REPLAY of it meant (on_replay)
    resent: bool = False  # the same request sent again after a REPLAY
    generation: int = 0
    redelivery: bool = False  # a re-delivery by the watcher (`Node.redeliver`)


class _Connection:
    def __init__(self, node: Node, stream: Any, hello: Hello, peer_id: str) -> None:
        self.node = node
        self.stream = stream
        self.hello = hello
        self.peer_id = peer_id
        self.account = node._bound(hello, peer_id)  # the payee's account on our ledger
        self.closed = False
        self.slots = trio.Semaphore(max(1, min(hello.max_in_flight, 1024)))
        self.pending: dict[tuple[bytes, int], _Slot] = {}
        self.outbox = _Outbox()
        self.prices: dict[str, int] = {}  # prices learnt since the hello

    def send_request(
        self, ch: PayerChannel, service: str, body: bytes, price: int, timeout: float
    ) -> _Slot:
        """Sign the next request, stage it, queue it (synchronous: keeps n order on the wire)."""
        node = self.node
        if self.closed:
            raise ConnectionLost(f"connection to {self.peer_id} is closed")
        now = node.now()
        deadline = now + max(1, int(timeout * 1000))
        horizon = node._ledger_param("max_deadline_horizon_ms")
        if horizon is not None:  # never post-dated beyond the horizon (claims.md 2)
            deadline = min(deadline, now + horizon)
        request = ch.next_request(
            node.signer, service=service, body=body, price=price, deadline=deadline
        )
        frame = request.to_frame()
        generation = node.persister.stage(
            payer=_payer_record(ch),
            request=OutgoingRequest(
                request_hash=request.hash,
                channel=request.channel,
                n=request.n,
                payee=ch.payee,
                price=price,
                deadline=deadline,
                frame=frame,
                state="awaiting",
                updated_at=node.now(),
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
        slot = _Slot(channel=ch.channel, n=request.n, request=request, resent=True)
        self.pending[(ch.channel, request.n)] = slot
        self.outbox.put(0, request.to_frame())  # durable since it was first sent
        return slot

    async def redeliver(self, request: Request) -> Response | None:
        """Send `request` (already signed and on record) again and wait for its answer.

        Returns:
            The checked signed response, or None if the payee refused it unsigned.
        """
        key = (request.channel, request.n)
        if key in self.pending or self.closed:
            return None  # in flight already, or no stream
        slot = _Slot(channel=request.channel, n=request.n, request=request, redelivery=True)
        self.pending[key] = slot
        try:
            self.outbox.put(0, request.to_frame())
            await slot.done.wait()
        finally:
            if self.pending.get(key) is slot:
                del self.pending[key]
        if slot.generation:
            await self.node.persister.durable(slot.generation)
        return slot.receipt.response if slot.receipt is not None else None

    def abandon(self, ch: PayerChannel, slot: _Slot) -> None:
        self.pending.pop((slot.channel, slot.n), None)
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
            self.closed = True
            self.outbox.closed = True
            if self.node._connections.get(self.peer_id) is self:
                del self.node._connections[self.peer_id]
            for key, slot in list(self.pending.items()):
                ch = self.node.payer_channels.get(slot.channel)
                if ch is not None:
                    ch.abandon(slot.n)
                slot.error = ConnectionLost(f"connection to {self.peer_id} lost")
                slot.done.set()
                del self.pending[key]
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.reset()

    async def _pump(self, scope: trio.CancelScope) -> None:
        try:
            await self.outbox.pump(self.node, self.stream)
        except (StreamClosed, P2payError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def close(self) -> None:
        self.closed = True
        await self.stream.reset()

    async def _read_loop(self) -> None:
        node = self.node
        while True:
            try:
                payload = await self.stream.receive()
            except (StreamClosed, DecodeError):  # FrameTooLarge, or a bad length prefix
                return
            try:
                message = decode_frame(payload, max_size=node.config.max_frame)
            except RemoteProtocolError as exc:  # DecodeError, FrameTooLarge, WrongDomain
                log.warning("bad frame from %s: %s", self.peer_id, exc)
                node.counters.protocol_violations += 1
                return
            if isinstance(message, Response):
                if not self._on_response(message):
                    return
            elif isinstance(message, Refusal):
                self._on_refusal(message)
            else:
                node.counters.protocol_violations += 1
                return

    def _on_response(self, response: Response) -> bool:
        node = self.node
        ch = node.payer_channels.get(response.channel)
        slot = self.pending.pop((response.channel, response.n), None)
        if ch is None or ch.payee != self.account:
            node.counters.protocol_violations += 1
            return False
        if slot is None and response.n not in ch.in_flight and response.n not in ch.abandoned:
            # A second answer to a request re-sent while its handler ran (C-4), or to one
            # already settled: it changes nothing.
            log.info("ignored an answer to a settled request from %s", self.peer_id)
            return True
        try:
            receipt = ch.on_response(response)
        except RemoteProtocolError as exc:
            log.warning("bad receipt from %s: %s", self.peer_id, exc)
            node.counters.protocol_violations += 1
            if slot is not None:
                slot.error = exc
                slot.done.set()
            return False
        kept: StoredResponse | None = None
        if not response.ok and response.price == 0:
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
            payer=_payer_record(ch),
            # the request row (frame included) was written when it was sent: mark it only
            request_update=RequestUpdate(
                request_hash=response.request_hash,
                state="answered" if response.ok else "refused",
                updated_at=node.now(),
            ),
            response=kept,
        )
        if slot is not None:
            slot.receipt = receipt
            slot.generation = generation
            slot.done.set()
        return True

    def _on_refusal(self, refusal: Refusal) -> None:
        node = self.node
        slot = self.pending.pop((refusal.channel, refusal.n), None)
        ch = node.payer_channels.get(refusal.channel)
        if slot is None or ch is None:
            return  # a refusal of something we did not send: nothing to account
        if slot.redelivery:  # the payee refused our re-delivery: it stays on record, claimable
            slot.error = remote_error(refusal.code, refusal.message, refusal.details)
            slot.done.set()
            return
        if refusal.code is ErrorCode.REPLAY or (
            refusal.code is ErrorCode.PAYMENT_REQUIRED and "last_n" in refusal.details
        ):
            # An unsigned slice-rule refusal (protocol.md 13.2 check 5') carries the resync
            # details like a REPLAY: adopt them; our own voucher proves we lost state.
            self._on_replay(ch, slot, refusal)
        elif slot.resent or (
            refusal.code is ErrorCode.INSUFFICIENT_DEPOSIT and slot.request.paid <= ch.deposit
        ):
            # An unsigned word about a request in doubt proves nothing either, nor an
            # INSUFFICIENT_DEPOSIT for a slice within the deposit as we know it: keep it.
            slot.error = remote_error(refusal.code, refusal.message, refusal.details)
        else:
            # Refused before authentication: nothing charged, the voucher not kept.
            ch.on_refusal(refusal.n)
            slot.generation = node.persister.stage(
                delete_request=slot.request.hash, payer=_payer_record(ch)
            )
            slot.error = remote_error(refusal.code, refusal.message, refusal.details)
        slot.done.set()

    def _on_replay(self, ch: PayerChannel, slot: _Slot, refusal: Refusal) -> None:
        """An unsigned REPLAY: never forget the request on its word (claims.md 6)."""
        node = self.node
        args = _resync_args(refusal.details)
        outcome = Replay.IN_DOUBT if slot.n in ch.in_flight else Replay.UNKNOWN
        if args is not None:
            try:
                outcome = ch.on_replay(refusal.n, **args)
            except RemoteProtocolError as exc:  # not our voucher, or inconsistent numbers
                log.warning("bad resync details from %s: %s", self.peer_id, exc)
                node.counters.protocol_violations += 1
        if outcome is Replay.SUPERSEDED:
            # our own signature proves it was never chargeable: a claim would be frivolous
            slot.generation = node.persister.stage(
                delete_request=slot.request.hash, payer=_payer_record(ch)
            )
        else:
            slot.generation = node.persister.stage(payer=_payer_record(ch))
        if outcome is Replay.UNKNOWN:
            slot.error = remote_error(refusal.code, refusal.message, refusal.details)
        slot.replay = outcome


def _resync_args(details: Mapping[str, Any]) -> dict[str, Any] | None:
    """on_replay's arguments from a REPLAY's details (the unsigned ``spent`` is never
    taken, claims.md 6), or None if they are unusable."""
    last_n, voucher = details.get("last_n"), details.get("voucher")
    if type(last_n) is not int:
        return None
    parsed: Request | None = None
    if isinstance(voucher, bytes):
        try:
            frame = decode_frame(voucher)
        except DecodeError:
            return None
        if not isinstance(frame, Request):
            return None
        parsed = frame
    args: dict[str, Any] = {"last_n": last_n, "voucher": parsed}
    paid_max = details.get("paid_max")
    if type(paid_max) is int:
        args["paid_max"] = paid_max  # checked against the voucher (protocol.md 15)
    return args


# ---------------------------------------------------------------------------
# opening a node


@asynccontextmanager
async def open_node(
    *,
    key: Keypair,
    ledger: Ledger,
    store: Store | None = None,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    network: Any = None,
    config: NodeConfig | None = None,
    clock: Callable[[], int] | None = None,
    behaviour: Behaviour | None = None,
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
    """
    from p2pay.watcher import Watcher

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

        transport_cm: Any = open_memory_transport(
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
                    async with trio.open_nursery() as nursery:
                        node._nursery = nursery
                        if node.config.watcher:
                            node.watcher = Watcher(node)
                            await nursery.start(node.watcher.run)
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


def _only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """True if every leaf of `group` is `error` or a trio.Cancelled."""
    for leaf in group.exceptions:
        if isinstance(leaf, BaseExceptionGroup):
            if not _only(leaf, error):
                return False
        elif leaf is not error and not isinstance(leaf, trio.Cancelled):
            return False
    return True


__all__ = [
    "Behaviour",
    "Call",
    "CallResult",
    "CallTimeout",
    "ChannelInfo",
    "ClaimInfo",
    "ConnectionLost",
    "Counters",
    "Node",
    "NodeConfig",
    "PeerUnreachable",
    "RequestInDoubt",
    "codec",
    "open_node",
]
