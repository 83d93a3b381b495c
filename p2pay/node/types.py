"""Public types of the node: errors, configuration, what handlers get and calls return."""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.channel import (
    DEFAULT_UNVERIFIED_CREDIT_LIMIT,
)
from p2pay.core.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    P2payError,
)
from p2pay.core.identity import public_from_peer_id
from p2pay.core.messages import (
    MAX_U64,
    MIN_FRAME_LIMIT,
    Response,
)
from p2pay.net.framing import MAX_UVARINT

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


class Unclaimable(LocalProtocolError):
    """A paid request the ledger would refuse to hear as a claim (its body is over the
    ledger's ``max_claim_body``, or its service name outside the protocol's limits): a
    provider could charge it, withhold the answer and keep the price (attack N12). Refused
    locally, before anything is signed; nothing is charged."""

    code = ErrorCode.BODY_TOO_LARGE


class ProviderUnbonding(LocalProtocolError):
    """The provider asked to unstake: the ledger refuses claims on requests whose deadline
    is after ``unstake_requested_at + max_deadline_horizon_ms`` (claims.md C-9), so such a
    paid request could be withheld without recourse (attack N11). Refused locally, before
    anything is signed; nothing is charged."""

    code = ErrorCode.UNBONDING


class ConnectionLost(P2payError, ConnectionError):
    """The peer could not be reached, or its stream closed while the call was waiting and
    the same request, re-sent once on a new stream, could not be (UNREACHABLE: OVERLOADED
    is only what a peer says).

    Nothing was charged for a call that never left; for one in flight, see `CallTimeout`.
    """

    code = ErrorCode.UNREACHABLE


class PeerUnreachable(ConnectionLost):
    """No stream to the peer could be opened, or it did not complete the hello.

    Nothing was signed or sent for the call."""


class WrongPeer(PeerUnreachable):
    """Another identity answered at the peer's address: the Noise handshake authenticated
    a PeerID other than the one the address names (a stale or wrong address)."""

    code = ErrorCode.WRONG_PEER


class NoKnownAddress(PeerUnreachable):
    """A bare PeerID whose address this node does not know (not in its address book):
    give its full multiaddr once."""

    code = ErrorCode.NO_ADDRESS


class NotJoined(ConnectionLost):
    """No bootstrap peer could be reached: the node has not joined the discovery network,
    so `Node.find` and `Node.call_any` cannot tell "nobody offers the service" from "we
    asked nobody". ``details["bootstrap"]`` maps each address tried to why it failed."""


class NoProvider(P2payError):
    """`Node.call_any` found no provider that served the call: no live offer for the
    service within the caller's terms, or every offer tried failed (unreachable, refused,
    timed out, or caught lying). ``details["attempts"]`` names each attempt: its peer, what
    happened and the error code; ``attempts`` holds them as `Attempt` values."""

    code = ErrorCode.NO_PROVIDER

    def __init__(
        self,
        message: str,
        *,
        attempts: tuple[Attempt, ...] = (),
        details: dict[str, object] | None = None,
    ) -> None:
        merged: dict[str, object] = {
            "attempts": [
                {"peer": a.peer, "outcome": a.outcome, "code": a.code, "message": a.message}
                for a in attempts
            ]
        }
        merged.update(details or {})
        super().__init__(message, details=merged)
        self.attempts = attempts


class TermsRefused(LocalProtocolError):
    """`Node.open_channel` contacted the payee and its hello's terms are not what the
    caller accepts (no stake when one is required, a price above ``max_price``). Nothing
    moved on the ledger. ``details`` holds the terms seen."""

    code = ErrorCode.TERMS_REFUSED


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
    # (at least 3 blocks if the ledger has `block_time_ms`; at most a third of the
    # window); refuse channels whose challenge period is shorter than `min_challenge_ms`
    # (the payee's time to redeem when the payer closes, C-8).
    redeliver_timeout: float = 5.0
    max_claim_answers: int = 16
    claim_answer_margin_ms: int = 10_000
    min_challenge_ms: int = 60_000
    # Deferred voucher checks (specs/protocol.md 13.4): yocto of service per channel on
    # vouchers whose signature is not yet checked; the most a cheating payer can take from
    # this payee per channel (INV-21). 0: check every voucher's signature on arrival.
    unverified_credit_limit: int = DEFAULT_UNVERIFIED_CREDIT_LIMIT
    # Receipt signatures checked by sample (specs/protocol.md 14.4): an OK receipt whose
    # `spent` moved by exactly its price has its signature checked with probability
    # 1/receipt_check_every (every other response always is); 1 checks every receipt.
    receipt_check_every: int = 16

    def __post_init__(self) -> None:
        for name in (
            "max_in_flight",
            "max_outbox",
            "max_in_flight_total",
            "max_sessions",
            "max_sessions_per_peer",
            "max_refusals_per_s",
            "refusal_burst",
            "receipt_check_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalProtocolError(f"NodeConfig.{name} must be an int >= 1, not {value!r}")
        for name in ("hello_timeout", "idle_timeout", "redeliver_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise LocalProtocolError(f"NodeConfig.{name} must be a number > 0, not {value!r}")
        # a call's timeout and the watcher's step become deadlines and clock wakes: finite
        for name in ("default_timeout", "watch_interval"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (value > 0 and math.isfinite(value))
            ):
                raise LocalProtocolError(
                    f"NodeConfig.{name} must be a finite number > 0, not {value!r}"
                )
        for name in ("watcher", "auto_claim"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise LocalProtocolError(f"NodeConfig.{name} must be true or false, not {value!r}")
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
            # announced in the hello (protocol.md 9: max_frame >= 4096, at most what a
            # frame's length prefix holds; deadline_horizon >= 1)
            ("max_frame", MIN_FRAME_LIMIT, MAX_UVARINT),
            ("max_deadline_horizon_ms", 1, MAX_U64),
            ("challenge_ms", 1, MAX_U64),  # the ledger has its own range (settlement.md)
            # the least time a signed answer is kept (retention.py adds what claims need)
            ("response_retention_ms", 0, MAX_YOCTO),
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
class Attempt:
    """One provider `Node.call_any` tried: its PeerID, the ``outcome`` ("ok";
    "unreachable", "refused" or "timed_out": the provider's failures, counted against it;
    "lied": its hello or a PAYMENT_REQUIRED contradicted its offer; "skipped": its price
    is above what the deposit policy escrows), the error ``code`` ("" when ok) and the
    error's message."""

    peer: str
    outcome: str
    code: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResult:
    """A successful paid call: the response body, what it cost, and the signed receipt.

    From `Node.call_any` also the provider that answered (``peer``) and every provider
    tried, in order, the last one being the one that answered (``attempts``)."""

    body: bytes
    price: int
    n: int
    channel: bytes
    spent: int
    receipt: Response
    #: whether ``receipt``'s signature was checked: False for an OK receipt left out of
    #: the sample (protocol.md 14.4); check it (``receipt.verify(payee account)``) before
    #: showing it to anyone as the payee's signature
    receipt_checked: bool = True
    peer: str = ""
    attempts: tuple[Attempt, ...] = ()
    #: (`Node.call_any`) whether it opened ``channel`` for this call (else it reused it)
    opened: bool = False
    #: (`Node.call_any`) the deposit of ``channel`` (yocto): what it escrowed if it opened it
    deposit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferInfo:
    """A live, verified offer as `Node.find` returns it: who sells ``service``, where
    (``addrs``), at what ``price`` (yocto a call, bodies up to ``max_body`` bytes), with
    which stake behind it (checked on the ledger when the offer arrived), and for how long
    the offer holds (``expires`` in Unix ms; ``expires_in_ms`` from now). An offer carries
    no time it was made: ``seen_ms_ago`` is the time since this node received it (the
    provider re-publishes it every announce interval, and a stopped provider's offer
    stays listed until it expires, at most three intervals after it was made)."""

    peer: str
    account: bytes
    service: str
    price: int
    max_body: int
    stake: int
    penalty: int
    claim_window_ms: int
    addrs: tuple[str, ...]
    seq: int
    expires: int
    expires_in_ms: int
    seen_ms_ago: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unmatched:
    """The live verified offers of a service left out by a caller's terms: how many ask
    more than its ``max_price`` (and the lowest price among them), how many have less
    stake than its ``min_stake`` (and the highest stake among them). An offer may be
    both. ``total`` is every live verified offer of the service, within the terms or not.
    """

    total: int = 0
    above_price: int = 0
    lowest_price: int | None = None
    below_stake: int = 0
    highest_stake: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryConfig:
    """How a node takes part in discovery (config.toml ``[discovery]``, specs/discovery.md).

    ``bootstrap``: multiaddrs of peers to join the gossip topic and the DHT through.
    ``announce_interval_ms``: how often our offers are published again (each with a new
    seq; an offer expires three intervals after it is made); with many services, no more
    often than receivers' rate limits allow (specs/discovery.md 5.1: for 64 services,
    every 60 s). ``deposit_calls`` and
    ``max_deposit``: the deposit `Node.call_any` escrows when it opens a channel,
    ``deposit_calls`` x the price, at most ``max_deposit`` yocto. ``max_attempts``: how
    many offers `Node.call_any` tries before it fails. ``find_wait``: seconds `Node.find`
    waits for offers at most (a DHT lookup, then gossip).
    """

    bootstrap: tuple[str, ...] = ()
    announce_interval_ms: int = 60_000
    deposit_calls: int = 1000
    max_deposit: int = 10**22  # 0.01 token
    max_attempts: int = 3
    find_wait: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.bootstrap, tuple) or not all(
            isinstance(a, str) for a in self.bootstrap
        ):
            raise LocalProtocolError("DiscoveryConfig.bootstrap must be a tuple of multiaddrs")
        for name, low, high in (
            ("announce_interval_ms", 1_000, 8 * 3_600_000),  # 3 x interval <= 24 h
            ("deposit_calls", 1, 1 << 32),
            ("max_deposit", 1, MAX_YOCTO),
            ("max_attempts", 1, 64),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise LocalProtocolError(
                    f"DiscoveryConfig.{name} must be an int in [{low}, {high}], not {value!r}"
                )
        wait = self.find_wait
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait <= 3600:
            raise LocalProtocolError(
                f"DiscoveryConfig.find_wait must be in (0, 3600] s, not {wait!r}"
            )


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
    #: request frames a payee sent on a stream we opened: refused MALFORMED (protocol.md 5.4)
    requests_from_payees: int = 0


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


def split_peer(peer: str) -> tuple[str, str | None]:
    """``"/ip4/.../p2p/<id>"`` -> (id, addr); a bare PeerID -> (id, None).

    Raises:
        LocalProtocolError: if no Ed25519 PeerID can be found.
    """
    if not isinstance(peer, str):
        raise LocalProtocolError(f"not a peer address or PeerID: {peer!r} (not text)")
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
