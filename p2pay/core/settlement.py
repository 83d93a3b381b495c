"""Settlement contract rules as a pure state machine (specs/settlement.md).

Theory of operation
-------------------
The settlement contract is one deterministic function, `apply(state, op, now)`. A ledger
backend (memory, SQLite, EVM mirror) authenticates `op.sender`, supplies the time `now` in
Unix milliseconds, hands over a `State` holding at least the entities the op touches, and
stores what comes back: the mutated entities and a list of `Event`s. If a precondition
fails, `apply` raises `SettlementError` with a stable `ErrorCode` and the state is exactly as
it was: every handler checks everything first and mutates only after the last check
(invariant S-4). Money is integers only, every amount lies in ``[0, 2**128)`` and no credit
may push a balance, deposit or stake beyond ``2**128 - 1``.

The life cycles of a channel and of a claim are tables (`CHANNEL_TABLE`, `CLAIM_TABLE`):
each maps a (state, operation) pair to the next state or to the refusal code, so the legal
transitions sit in one place and a test walks every pair. A stake's status (NONE, BONDED,
UNBONDING) is derived from its fields by `stake_status`.

A claim (specs/claims.md) ends DELIVERED, REFUSED or FRIVOLOUS when the respondent answers
it (with its response, or with a payer-signed request in `tiling_conflict` with the claimed
one), or UPHELD when it does not. REFUSED and UPHELD refund the claimed price: the channel's
`refunded` grows, Redeem caps the payee at ``paid_seen - refunded``, and whatever the payee
already redeemed beyond that is clawed back from its stake to the claimant.

`touches(op)` names what an op reads or writes so a backend can load just that; parties
that are only known once a channel or claim is loaded (a channel's payer and payee, a
claim's claimant and respondent) are added by `touches_loaded(op, state)`
(specs/settlement.md section 8).

The section numbers in comments refer to specs/settlement.md.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from p2pay.core import codec
from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.errors import ErrorCode, LocalProtocolError, SettlementError
from p2pay.core.messages import KIND_REQUEST, MAX_LEDGER_ID_SIZE, STATUS_OK, Request, Response

__all__ = [
    "BPS",
    "CHANNEL_DOMAIN",
    "CHANNEL_TABLE",
    "CLAIM_TABLE",
    "MAX_AMOUNT",
    "MAX_CLAIMS_PER_WINDOW",
    "MAX_CLAIM_BODY_LIMIT",
    "AnswerClaim",
    "Channel",
    "ChannelOpKind",
    "ChannelState",
    "Claim",
    "ClaimOpKind",
    "ClaimState",
    "ConflictIndex",
    "Event",
    "EventKind",
    "FileClaim",
    "FinalizeClose",
    "Mint",
    "Op",
    "OpenChannel",
    "Params",
    "PayeeClose",
    "Redeem",
    "RequestUnstake",
    "ResolveClaim",
    "Slice",
    "Stake",
    "StakeOp",
    "StakeStatus",
    "StartClose",
    "State",
    "TopUp",
    "Touches",
    "Transfer",
    "Withdraw",
    "WithdrawStake",
    "apply",
    "channel_id",
    "channel_transition",
    "claim_filed_event",
    "claim_slot_ms",
    "claim_starts_ms",
    "claim_transition",
    "claim_window_end",
    "invariant_violations",
    "resend_budget_s",
    "stake_status",
    "tiling_conflict",
    "touches",
    "touches_loaded",
    "unbonding_period",
]

MAX_AMOUNT = MAX_YOCTO  # 2**128 - 1
BPS = 10_000
CHANNEL_DOMAIN = b"p2pay/v1/channel"
ACCOUNT_SIZE = 32
ID_SIZE = 32
_MAX_NONCE = (1 << 64) - 1
MAX_CLAIM_BODY_LIMIT = 1 << 32  # upper bound of Params.max_claim_body
MAX_CLAIMS_PER_WINDOW = 1_000_000  # upper bound of Params.claims_per_window

# ---------------------------------------------------------------------------
# parameters and state


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    """Fixed when a ledger is created (specs/settlement.md 1.2). Validated on construction.

    Raises:
        LocalProtocolError: a field is outside its documented range.
    """

    ledger_id: bytes
    dev: bool = False
    claim_bond: int = 10**18
    slash_to_claimant_bps: int = 5_000  # share of a slash paid to the claimant, rest burnt
    min_challenge_ms: int = 1_000
    max_challenge_ms: int = 30 * 24 * 3_600_000
    min_claim_window_ms: int = 1_000
    max_claim_window_ms: int = 30 * 24 * 3_600_000
    max_deadline_horizon_ms: int = 3_600_000  # see specs/settlement.md "Unbonding"
    max_claim_body: int = 1 << 20  # largest body of a claimed request (bytes)
    # at most this many claim windows against one stake end within one claim window (C-1)
    claims_per_window: int = 100

    def __post_init__(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise LocalProtocolError(f"Params: {message}")

        need(
            isinstance(self.ledger_id, bytes) and 1 <= len(self.ledger_id) <= MAX_LEDGER_ID_SIZE,
            f"ledger_id must be 1..{MAX_LEDGER_ID_SIZE} bytes",
        )
        need(isinstance(self.dev, bool), "dev must be a bool")
        need(
            _is_int(self.claim_bond) and 0 <= self.claim_bond <= MAX_AMOUNT,
            "claim_bond must be in [0, 2**128)",
        )
        need(
            _is_int(self.slash_to_claimant_bps) and 0 <= self.slash_to_claimant_bps <= BPS,
            "slash_to_claimant_bps must be in [0, 10000]",
        )
        for low, high, name in (
            (self.min_challenge_ms, self.max_challenge_ms, "challenge"),
            (self.min_claim_window_ms, self.max_claim_window_ms, "claim_window"),
        ):
            need(
                _is_int(low) and _is_int(high) and 1 <= low <= high, f"need 1 <= min <= max {name}"
            )
        need(
            _is_int(self.max_deadline_horizon_ms) and self.max_deadline_horizon_ms >= 0,
            "max_deadline_horizon_ms must be an int >= 0",
        )
        need(
            _is_int(self.max_claim_body) and 1 <= self.max_claim_body <= MAX_CLAIM_BODY_LIMIT,
            "max_claim_body must be an int in [1, 2**32]",
        )
        need(
            _is_int(self.claims_per_window)
            and 1 <= self.claims_per_window <= MAX_CLAIMS_PER_WINDOW,
            f"claims_per_window must be an int in [1, {MAX_CLAIMS_PER_WINDOW}]",
        )


class ChannelState(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True, kw_only=True)
class Channel:
    id: bytes
    payer: bytes
    payee: bytes
    deposit: int  # total ever escrowed (open + top ups)
    redeemed: int  # total paid out to the payee
    challenge_ms: int
    state: ChannelState = ChannelState.OPEN
    closes_at: int = 0  # when a payer's close may be finalized
    paid_seen: int = 0  # highest `paid` of a payer-signed request seen (redeemed or claimed)
    refunded: int = 0  # sum of claim refunds (REFUSED and UPHELD claims' prices)
    clawed: int = 0  # taken back from the payee's stake for refunds it had redeemed

    @property
    def entitled(self) -> int:
        """The most the payee may hold from this channel: ``max(0, paid_seen - refunded)``."""
        return max(0, self.paid_seen - self.refunded)

    @property
    def escrow(self) -> int:
        return self.deposit - self.redeemed if self.state is not ChannelState.CLOSED else 0


@dataclass(slots=True, kw_only=True)
class Stake:
    account: bytes
    amount: int
    penalty: int
    claim_window_ms: int
    unbonding_at: int = 0  # 0 = bonded; else when withdraw_stake becomes possible
    open_claims: int = 0
    unstake_requested_at: int = 0  # when RequestUnstake ran (0 = not unbonding)


class StakeStatus(enum.StrEnum):
    """Derived from a `Stake`'s fields (specs/settlement.md 1.1)."""

    NONE = "none"
    BONDED = "bonded"
    UNBONDING = "unbonding"


def stake_status(stake: Stake | None) -> StakeStatus:
    """The status of a stake record (None = no record).

    Args:
        stake: the record, or None.

    Returns:
        UNBONDING if ``unbonding_at > 0``, else BONDED if ``amount > 0``, else NONE.
    """
    if stake is None:
        return StakeStatus.NONE
    if stake.unbonding_at > 0:
        return StakeStatus.UNBONDING
    return StakeStatus.BONDED if stake.amount > 0 else StakeStatus.NONE


def claim_slot_ms(params: Params, claim_window_ms: int) -> int:
    """What each claim open against a stake adds to the window of a claim filed against it.

    ``ceil(claim_window_ms / params.claims_per_window)``: a provider that answers the
    claims against it at one per slot answers every one in its window (specs/settlement.md
    FileClaim, claims.md C-1).
    """
    return -(-claim_window_ms // params.claims_per_window)


def claim_window_end(params: Params, stake: Stake, now: int) -> int:
    """When the window of a claim filed now against `stake` ends (specs/settlement.md FileClaim).

    ``now + claim_window_ms + stake.open_claims * slot``: a whole window, plus one slot for
    each claim against the stake still open. A provider that answers the claims against it
    at one per slot, earliest window end first, answers every one in its window (claims.md
    C-1). Claims already answered take no slot (a queue that remembered them let a payer
    push every later window for free with claims it got answered).
    """
    window = stake.claim_window_ms
    return now + window + stake.open_claims * claim_slot_ms(params, window)


def unbonding_period(params: Params, claim_window_ms: int) -> int:
    """How long an unstaked amount stays claimable (specs/settlement.md section 6).

    Args:
        params: the ledger's parameters.
        claim_window_ms: the stake's claim window.

    Returns:
        ``params.max_deadline_horizon_ms + 2 * claim_window_ms``.
    """
    return params.max_deadline_horizon_ms + 2 * claim_window_ms


class ClaimState(enum.StrEnum):
    """A claim's outcome (specs/claims.md section 3). All but OPEN are final."""

    OPEN = "open"
    DELIVERED = "delivered"  # answered with an OK response: bond back to the claimant
    REFUSED = "refused"  # answered with a refusal: bond back, price refunded
    FRIVOLOUS = "frivolous"  # answered with conflicting payer-signed evidence: bond to respondent
    UPHELD = "upheld"  # nothing answered in the window: slash, price refunded, bond back


@dataclass(slots=True, kw_only=True)
class Claim:
    id: bytes  # the request hash
    claimant: bytes
    respondent: bytes
    channel: bytes
    n: int
    price: int  # the claimed request's price, paid and deadline (copied at filing)
    paid: int
    deadline: int
    bond: int
    filed_at: int
    window_ends: int
    state: ClaimState = ClaimState.OPEN
    request_frame: bytes = b""
    response_frame: bytes = b""  # the answer (DELIVERED / REFUSED), readable by the claimant
    slashed: int = 0
    refund: int = 0  # price refunded to the claimant (REFUSED / UPHELD)
    clawed: int = 0  # part of the refund taken from the respondent's stake
    evidence_frame: bytes = b""  # FRIVOLOUS: the conflicting payer-signed request (frame)


@dataclass(slots=True, kw_only=True)
class State:
    """Everything the contract holds. Backends may load only the entities an op touches."""

    params: Params
    balances: dict[bytes, int] = field(default_factory=dict)
    channels: dict[bytes, Channel] = field(default_factory=dict)
    stakes: dict[bytes, Stake] = field(default_factory=dict)
    claims: dict[bytes, Claim] = field(default_factory=dict)
    supply: int = 0  # minted - withdrawn
    burnt: int = 0
    nonce: int = 0  # channels opened so far (feeds channel ids)


class EventKind(enum.StrEnum):
    """Event kinds (specs/settlement.md section 7). `Event.kind` holds the plain str value."""

    MINTED = "Minted"
    TRANSFERRED = "Transferred"
    WITHDRAWN = "Withdrawn"
    CHANNEL_OPENED = "ChannelOpened"
    TOPPED_UP = "ToppedUp"
    REDEEMED = "Redeemed"
    CHANNEL_CLOSING = "ChannelClosing"
    CHANNEL_CLOSED = "ChannelClosed"
    STAKED = "Staked"
    UNSTAKE_REQUESTED = "UnstakeRequested"
    STAKE_WITHDRAWN = "StakeWithdrawn"
    CLAIM_FILED = "ClaimFiled"
    CLAIM_ANSWERED = "ClaimAnswered"
    CLAIM_UPHELD = "ClaimUpheld"
    SLASHED = "Slashed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What an operation did. `seq` is assigned by the backend when stored."""

    kind: str
    fields: dict[str, Any]
    at: int
    seq: int = 0


# ---------------------------------------------------------------------------
# operations: `sender` is the account (32-byte public key) that authorised the op


@dataclass(frozen=True, slots=True, kw_only=True)
class Mint:
    sender: bytes
    account: bytes
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    sender: bytes
    to: bytes
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Withdraw:
    sender: bytes
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenChannel:
    sender: bytes  # the payer
    payee: bytes
    deposit: int
    challenge_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TopUp:
    sender: bytes
    channel: bytes
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Redeem:
    sender: bytes  # the payee
    voucher: Request
    amount: int | None = None  # cumulative cap (the payee's `spent`); also capped by paid


@dataclass(frozen=True, slots=True, kw_only=True)
class PayeeClose:
    sender: bytes
    channel: bytes
    voucher: Request | None = None
    amount: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartClose:
    sender: bytes  # the payer
    channel: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalizeClose:
    sender: bytes
    channel: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StakeOp:
    sender: bytes
    amount: int
    penalty: int
    claim_window_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestUnstake:
    sender: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawStake:
    sender: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FileClaim:
    """File a claim on `request`; with `refusal` (the payee's own signed refusal of it), a
    refund settled at once as REFUSED (specs/settlement.md 5, FileClaim; attack N1)."""

    sender: bytes
    request: Request  # with signature and body
    refusal: Response | None = None  # signed by the payee: status != OK, price 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerClaim:
    """Answer a claim with exactly one of `response` or `evidence` (specs/settlement.md 5)."""

    sender: bytes
    claim: bytes
    response: Response | None = None  # signed by the respondent, with its body
    evidence: Request | None = None  # payer-signed request in tiling conflict with the claim


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveClaim:
    sender: bytes
    claim: bytes


Op = (
    Mint
    | Transfer
    | Withdraw
    | OpenChannel
    | TopUp
    | Redeem
    | PayeeClose
    | StartClose
    | FinalizeClose
    | StakeOp
    | RequestUnstake
    | WithdrawStake
    | FileClaim
    | AnswerClaim
    | ResolveClaim
)


# ---------------------------------------------------------------------------
# state machines (specs/settlement.md 4.2 and 5.1)


class ChannelOpKind(enum.StrEnum):
    TOP_UP = "top_up"
    REDEEM = "redeem"
    PAYEE_CLOSE = "payee_close"
    START_CLOSE = "start_close"
    FINALIZE_CLOSE = "finalize_close"
    FILE_CLAIM = "file_claim"


_O, _C, _X = ChannelState.OPEN, ChannelState.CLOSING, ChannelState.CLOSED
_K = ChannelOpKind

#: (channel state, op) -> next state, or the code of the refusal. FinalizeClose from
#: CLOSING also needs ``now >= closes_at`` (CHALLENGE_PENDING), checked by its handler.
CHANNEL_TABLE: dict[tuple[ChannelState, ChannelOpKind], ChannelState | ErrorCode] = {
    (_O, _K.TOP_UP): _O,
    (_O, _K.REDEEM): _O,
    (_O, _K.PAYEE_CLOSE): _X,
    (_O, _K.START_CLOSE): _C,
    (_O, _K.FINALIZE_CLOSE): ErrorCode.CHANNEL_NOT_CLOSING,
    (_O, _K.FILE_CLAIM): _O,
    (_C, _K.TOP_UP): ErrorCode.CHANNEL_CLOSED,
    (_C, _K.REDEEM): _C,
    (_C, _K.PAYEE_CLOSE): _X,
    (_C, _K.START_CLOSE): ErrorCode.CHALLENGE_PENDING,
    (_C, _K.FINALIZE_CLOSE): _X,
    (_C, _K.FILE_CLAIM): _C,
    (_X, _K.TOP_UP): ErrorCode.CHANNEL_CLOSED,
    (_X, _K.REDEEM): ErrorCode.CHANNEL_CLOSED,
    (_X, _K.PAYEE_CLOSE): ErrorCode.CHANNEL_CLOSED,
    (_X, _K.START_CLOSE): ErrorCode.CHANNEL_CLOSED,
    (_X, _K.FINALIZE_CLOSE): ErrorCode.CHANNEL_CLOSED,
    (_X, _K.FILE_CLAIM): _X,
}


class ClaimOpKind(enum.StrEnum):
    ANSWER = "answer"
    RESOLVE = "resolve"


#: (claim state, op) -> next state, or the code of the refusal. FileClaim creates OPEN.
#: ANSWER from OPEN leads to DELIVERED, REFUSED or FRIVOLOUS: the answer decides which
#: (`ANSWER_OUTCOMES`); the table holds the set of allowed outcomes.
CLAIM_TABLE: dict[tuple[ClaimState, ClaimOpKind], frozenset[ClaimState] | ErrorCode] = {
    (ClaimState.OPEN, ClaimOpKind.ANSWER): frozenset(
        {ClaimState.DELIVERED, ClaimState.REFUSED, ClaimState.FRIVOLOUS}
    ),
    (ClaimState.OPEN, ClaimOpKind.RESOLVE): frozenset({ClaimState.UPHELD}),
    **{
        (final, op): ErrorCode.CLAIM_CLOSED
        for final in ClaimState
        if final is not ClaimState.OPEN
        for op in ClaimOpKind
    },
}


def channel_transition(state: ChannelState, op: ChannelOpKind) -> ChannelState:
    """The state a channel moves to under `op`.

    Args:
        state: the channel's current state.
        op: the operation kind.

    Returns:
        The next state (possibly the same).

    Raises:
        SettlementError: the transition is illegal; its code comes from `CHANNEL_TABLE`.
    """
    outcome = CHANNEL_TABLE[(state, op)]
    if isinstance(outcome, ErrorCode):
        raise SettlementError(f"{op.value} not allowed on a {state.value} channel", code=outcome)
    return outcome


def claim_transition(state: ClaimState, op: ClaimOpKind) -> frozenset[ClaimState]:
    """The states a claim may move to under `op` (the answer itself picks one).

    Args:
        state: the claim's current state.
        op: the operation kind.

    Returns:
        The allowed next states: DELIVERED, REFUSED, FRIVOLOUS for ANSWER on an OPEN claim,
        UPHELD for RESOLVE on an OPEN claim.

    Raises:
        SettlementError: the transition is illegal; its code comes from `CLAIM_TABLE`.
    """
    outcome = CLAIM_TABLE[(state, op)]
    if isinstance(outcome, ErrorCode):
        raise SettlementError(f"{op.value} not allowed on a {state.value} claim", code=outcome)
    return outcome


def claim_starts_ms(deadline: int, grace_ms: int, window_ms: int | None) -> int:
    """When a payer's watcher takes up an unanswered paid request (re-send, then claim):
    `grace_ms` after its deadline, or a quarter of the provider's claim window after it if
    that is sooner, so that a short window still leaves time to claim (claims.md 6).
    `window_ms` None: the provider has no stake (nothing to claim), the grace applies."""
    return deadline + (grace_ms if window_ms is None else min(grace_ms, window_ms // 4))


def resend_budget_s(timeout_s: float, deadline: int, window_ms: int, now: int) -> float:
    """How long the re-send before a claim (the dial included) may wait: at most
    `timeout_s`, and at most a third of what is left of the claim window at `now`, so
    that two thirds are left for the claim (claims.md 6); at least 10 ms."""
    return min(timeout_s, max((deadline + window_ms - now) / 3000, 0.01))


def tiling_conflict(claimed: Request | Slice, other: Request | Slice, horizon_ms: int) -> bool:
    """True if two payer-signed requests of one channel are in tiling conflict.

    specs/claims.md section 2: with ``(a, b)`` the pair ordered by ``n``, a conflict is the
    same ``n`` with different hashes, or ``a.n < b.n`` and either ``a.paid > b.paid -
    b.price`` (the slices overlap or are out of order) or ``a.deadline > b.deadline +
    horizon_ms`` (``a`` is post-dated). An honest payer never signs a conflict. Pure: the
    caller checks that both are signed by the channel's payer and name the same channel.

    Args:
        claimed: one request (the claimed one, in AnswerClaim).
        other: the other request (the evidence).
        horizon_ms: the ledger's ``max_deadline_horizon_ms``.

    Returns:
        Whether the two requests conflict.
    """
    return _slices_conflict(claimed, other, horizon_ms)


class ConflictIndex:
    """Payer-signed requests of one channel, searched for one in tiling conflict with a
    given request without comparing it with each of them (claims.md 2).

    With ``C`` the given request, a request conflicts with it if it has ``C.n`` and
    another hash; or a lower ``n`` and a ``paid`` above ``C.paid - C.price`` or a
    ``deadline`` above ``C.deadline + horizon``; or a higher ``n`` and a slice start
    (``paid - price``) below ``C.paid`` or a ``deadline`` below ``C.deadline - horizon``.
    So among the requests numbered below ``C`` only the one with the highest ``paid`` and
    the one with the highest ``deadline`` need comparing, among those above it the lowest
    slice start and the lowest ``deadline``, and one with ``C.n``: if none of these
    conflicts with ``C``, none of the others does. A claim flood of ``k`` requests then
    costs its answerer about ``k`` comparisons per index change, not ``k`` per claim.

    A request may be held by its `Slice` alone (a claim known from its ClaimFiled event
    and not read yet): the candidates are found the same way, and a request of the same
    hash, added later, takes the slice's place.
    """

    def __init__(self) -> None:
        self._requests: dict[bytes, Request | Slice] = {}  # hash -> request (or its slice)
        self._built: _Extremes | None = None

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request_hash: object) -> bool:
        return request_hash in self._requests

    def get(self, request_hash: bytes) -> Request | Slice | None:
        """The request held with `request_hash` (or its slice), if any."""
        return self._requests.get(request_hash)

    def requests(self) -> list[Request]:
        """Every request held whole (not those held by their slice alone)."""
        return [r for r in self._requests.values() if isinstance(r, Request)]

    def add(self, request: Request | Slice) -> None:
        """Hold `request`. A request replaces the slice held with its hash; nothing else
        is replaced (a second copy, or a slice of a request held, changes nothing)."""
        held = self._requests.get(request.hash)
        if held is None or (isinstance(held, Slice) and isinstance(request, Request)):
            self._requests[request.hash] = request
            self._built = None

    def discard(self, request_hash: bytes) -> None:
        """Hold nothing with `request_hash` any more (e.g. a slice whose claim turned out
        to carry no usable request)."""
        if self._requests.pop(request_hash, None) is not None:
            self._built = None

    def candidates(self, request: Request | Slice) -> list[Request | Slice]:
        """At most five requests held (or slices), other than `request`, among which one
        is in tiling conflict with it if any request held is (`tiling_conflict`
        decides): one numbered ``request.n`` with another hash (if any), and the
        extremes described above."""
        built = self._built
        if built is None:
            built = self._built = _Extremes.of(self._requests.values())
        return built.candidates(request)


@dataclass(frozen=True, slots=True)
class _Extremes:
    """`ConflictIndex`'s requests sorted by ``n``, with the position of the extreme of each
    compared value in every prefix (highest ``paid``, highest ``deadline``) and every
    suffix (lowest slice start, lowest ``deadline``)."""

    requests: list[Request | Slice]
    ns: list[int]
    top_paid: list[int]
    top_deadline: list[int]
    low_start: list[int]
    low_deadline: list[int]

    @classmethod
    def of(cls, held: Iterable[Request | Slice]) -> _Extremes:
        requests = sorted(held, key=lambda r: r.n)
        count = len(requests)
        top_paid: list[int] = []
        top_deadline: list[int] = []
        for i, r in enumerate(requests):
            if not top_paid:
                top_paid.append(i)
                top_deadline.append(i)
                continue
            best_paid, best_deadline = top_paid[-1], top_deadline[-1]
            top_paid.append(i if r.paid > requests[best_paid].paid else best_paid)
            late = r.deadline > requests[best_deadline].deadline
            top_deadline.append(i if late else best_deadline)
        low_start = [0] * count
        low_deadline = [0] * count
        for i in range(count - 1, -1, -1):
            r = requests[i]
            if i == count - 1:
                low_start[i] = low_deadline[i] = i
                continue
            best_start, best_deadline = low_start[i + 1], low_deadline[i + 1]
            start = requests[best_start]
            low_start[i] = i if r.paid - r.price < start.paid - start.price else best_start
            early = r.deadline < requests[best_deadline].deadline
            low_deadline[i] = i if early else best_deadline
        return cls(
            requests, [r.n for r in requests], top_paid, top_deadline, low_start, low_deadline
        )

    def candidates(self, request: Request | Slice) -> list[Request | Slice]:
        requests = self.requests
        lo = bisect.bisect_left(self.ns, request.n)
        hi = bisect.bisect_right(self.ns, request.n)
        picked: list[int] = []
        for i in range(lo, hi):  # the same number: one with another hash is enough
            if requests[i].hash != request.hash:
                picked.append(i)
                break
        if lo > 0:
            picked += [self.top_paid[lo - 1], self.top_deadline[lo - 1]]
        if hi < len(requests):
            picked += [self.low_start[hi], self.low_deadline[hi]]
        return [requests[i] for i in dict.fromkeys(picked)]


class Slice(NamedTuple):
    """What a tiling conflict compares of a request (claims.md 2): its number, slice of
    the paid line, deadline and hash. A claim's stored copy has them, and so does its
    ClaimFiled event (`of_filed`), without the request's signed bytes."""

    n: int
    paid: int
    price: int
    deadline: int
    hash: bytes

    @classmethod
    def of_filed(cls, fields: Mapping[str, object]) -> Slice | None:
        """The slice of the request a ClaimFiled event's `fields` describe (the claim's
        id is its request's hash), or None if one of them is missing or of the wrong
        type."""
        values = [fields.get(name) for name in ("n", "paid", "price", "deadline")]
        claim = fields.get("claim")
        if not (isinstance(claim, bytes) and all(type(v) is int and v >= 0 for v in values)):
            return None
        n, paid, price, deadline = cast("list[int]", values)
        return cls(n, paid, price, deadline, claim)


def _slices_conflict(x: Request | Slice, y: Request | Slice, horizon_ms: int) -> bool:
    if x.n == y.n:
        return x.hash != y.hash
    a, b = (x, y) if x.n < y.n else (y, x)
    return a.paid > b.paid - b.price or a.deadline > b.deadline + horizon_ms


# ---------------------------------------------------------------------------
# touches


@dataclass(frozen=True, slots=True, kw_only=True)
class Touches:
    """The entities an op reads or writes, so a backend can load just those."""

    accounts: frozenset[bytes] = frozenset()
    channels: frozenset[bytes] = frozenset()
    stakes: frozenset[bytes] = frozenset()
    claims: frozenset[bytes] = frozenset()
    new_channel: bool = False


def _keys(*values: object) -> frozenset[bytes]:
    # malformed (non-bytes) values are left out: `apply` refuses the op anyway
    return frozenset(v for v in values if isinstance(v, bytes))


def touches(op: Op) -> Touches:
    """Which balances, channels, stakes and claims `op` names directly.

    A backend that loads partial state must also load the parties of every touched channel
    and claim: call `touches_loaded` once those are loaded (specs/settlement.md section 8).
    `State.supply`, `burnt`, `nonce` and `params` are always needed.

    Args:
        op: the operation.

    Returns:
        The directly named entities; ``new_channel`` for OpenChannel (inserts a channel and
        increments ``nonce``).

    Raises:
        SettlementError: INVALID_ARGUMENT if `op` is not an operation type.
    """
    if isinstance(op, Mint):
        return Touches(accounts=_keys(op.account))
    if isinstance(op, Transfer):
        return Touches(accounts=_keys(op.sender, op.to))
    if isinstance(op, Withdraw):
        return Touches(accounts=_keys(op.sender))
    if isinstance(op, OpenChannel):
        return Touches(accounts=_keys(op.sender), new_channel=True)
    if isinstance(op, TopUp):
        return Touches(accounts=_keys(op.sender), channels=_keys(op.channel))
    if isinstance(op, Redeem):
        voucher = op.voucher.channel if isinstance(op.voucher, Request) else None
        return Touches(accounts=_keys(op.sender), channels=_keys(voucher))
    if isinstance(op, PayeeClose):
        return Touches(accounts=_keys(op.sender), channels=_keys(op.channel))
    if isinstance(op, StartClose | FinalizeClose):
        return Touches(channels=_keys(op.channel))
    if isinstance(op, StakeOp | WithdrawStake):
        return Touches(accounts=_keys(op.sender), stakes=_keys(op.sender))
    if isinstance(op, RequestUnstake):
        return Touches(stakes=_keys(op.sender))
    if isinstance(op, FileClaim):
        if not isinstance(op.request, Request):
            return Touches(accounts=_keys(op.sender))
        return Touches(
            accounts=_keys(op.sender),
            channels=_keys(op.request.channel),
            claims=_keys(op.request.hash),
        )
    if isinstance(op, AnswerClaim):
        return Touches(accounts=_keys(op.sender), stakes=_keys(op.sender), claims=_keys(op.claim))
    if isinstance(op, ResolveClaim):
        return Touches(claims=_keys(op.claim))
    raise SettlementError(f"not a settlement operation: {type(op).__name__}")


def touches_loaded(op: Op, state: State) -> Touches:
    """`touches(op)` plus the parties of the touched channels and claims loaded in `state`.

    A backend loads ``touches(op)``, then the extra accounts and stakes this returns, then
    calls `apply`. Channels or claims not in `state` add nothing (apply will refuse them).

    Args:
        op: the operation.
        state: a state holding at least the channels and claims of ``touches(op)``.

    Returns:
        The complete set of entities `apply` may read or write for `op`.

    Raises:
        SettlementError: INVALID_ARGUMENT if `op` is not an operation type.
    """
    direct = touches(op)
    accounts = set(direct.accounts)
    channels = set(direct.channels)
    for cid in direct.channels:
        channel = state.channels.get(cid)
        if channel is not None:
            accounts.update((channel.payer, channel.payee))
    for claim_id in direct.claims:
        claim = state.claims.get(claim_id)
        if claim is not None:
            # a claim's channel has the claimant as payer and the respondent as payee
            # (FileClaim), so loading it adds no further parties
            accounts.update((claim.claimant, claim.respondent))
            channels.add(claim.channel)
    return Touches(
        accounts=frozenset(accounts),
        channels=frozenset(channels),
        stakes=direct.stakes | accounts,
        claims=direct.claims,
        new_channel=direct.new_channel,
    )


# ---------------------------------------------------------------------------
# helpers


def channel_id(ledger_id: bytes, payer: bytes, payee: bytes, nonce: int) -> bytes:
    """The id of the `nonce`-th channel opened on a ledger (specs/settlement.md 4.1).

    Args:
        ledger_id: the ledger's id.
        payer: the payer's 32-byte account.
        payee: the payee's 32-byte account.
        nonce: ``state.nonce`` when the channel was opened, in ``[0, 2**64)``.

    Returns:
        ``BLAKE2b-256(b"p2pay/v1/channel" + ledger_id + payer + payee + u64be(nonce))``.

    Raises:
        LocalProtocolError: an argument has the wrong type or size.
    """
    if not isinstance(ledger_id, bytes) or not 1 <= len(ledger_id) <= MAX_LEDGER_ID_SIZE:
        raise LocalProtocolError(f"ledger_id must be 1..{MAX_LEDGER_ID_SIZE} bytes")
    for name, account in (("payer", payer), ("payee", payee)):
        if not isinstance(account, bytes) or len(account) != ACCOUNT_SIZE:
            raise LocalProtocolError(f"{name} must be a 32-byte account")
    if not _is_int(nonce) or not 0 <= nonce <= _MAX_NONCE:
        raise LocalProtocolError("nonce must be an integer in [0, 2**64)")
    data = CHANNEL_DOMAIN + ledger_id + payer + payee + nonce.to_bytes(8, "big")
    return hashlib.blake2b(data, digest_size=32).digest()


def _fail(code: ErrorCode, message: str) -> SettlementError:
    return SettlementError(message, code=code)


def _need(cond: bool, code: ErrorCode, message: str) -> None:
    if not cond:
        raise _fail(code, message)


def _check_amount(value: object, name: str, *, zero_ok: bool = False) -> int:
    low = 0 if zero_ok else 1
    if not _is_int(value) or not low <= value <= MAX_AMOUNT:  # type: ignore[operator]
        raise _fail(ErrorCode.INVALID_AMOUNT, f"{name} must be an integer in [{low}, 2**128)")
    assert isinstance(value, int)
    return value


def _check_account(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != ACCOUNT_SIZE:
        raise _fail(ErrorCode.INVALID_ARGUMENT, f"{name} must be a 32-byte account")
    return value


def _check_id(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != ID_SIZE:
        raise _fail(ErrorCode.INVALID_ARGUMENT, f"{name} must be a 32-byte id")
    return value


def _check_range(value: object, low: int, high: int, name: str) -> int:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise _fail(ErrorCode.INVALID_ARGUMENT, f"{name} must be an integer in [{low}, {high}]")
    assert isinstance(value, int)
    return value


class _Balances:
    """Pending balance changes: checked as they are planned, written by `commit` only."""

    __slots__ = ("_new", "_state")

    def __init__(self, state: State) -> None:
        self._state = state
        self._new: dict[bytes, int] = {}

    def get(self, account: bytes) -> int:
        if account in self._new:
            return self._new[account]
        return self._state.balances.get(account, 0)

    def debit(self, account: bytes, amount: int) -> None:
        balance = self.get(account)
        _need(
            balance >= amount,
            ErrorCode.INSUFFICIENT_FUNDS,
            f"balance {balance} is below {amount}",
        )
        self._new[account] = balance - amount

    def credit(self, account: bytes, amount: int) -> None:
        balance = self.get(account)
        _need(
            balance + amount <= MAX_AMOUNT,
            ErrorCode.INVALID_AMOUNT,
            "credit would push a balance above 2**128 - 1",
        )
        self._new[account] = balance + amount

    def commit(self) -> None:
        for account, balance in self._new.items():
            if balance != self._state.balances.get(account, 0) or account in self._state.balances:
                self._state.balances[account] = balance


def _channel(state: State, cid: object) -> Channel:
    cid = _check_id(cid, "channel")
    channel = state.channels.get(cid)
    if channel is None:
        raise _fail(ErrorCode.UNKNOWN_CHANNEL, "no such channel")
    return channel


def _claim(state: State, claim_id: object) -> Claim:
    claim_id = _check_id(claim_id, "claim")
    claim = state.claims.get(claim_id)
    if claim is None:
        raise _fail(ErrorCode.UNKNOWN_CLAIM, "no such claim")
    return claim


def _voucher_pay(channel: Channel, voucher: Request, amount: int | None) -> int:
    """What redeeming `voucher` (capped by `amount`) pays now (specs 4, Redeem step 7).

    The payee may hold at most its entitlement ``max(paid_seen, voucher.paid) - refunded``
    (refunded slices are not its money), never more than the deposit, and what it holds is
    ``redeemed - clawed`` (clawbacks went back to claimants).
    """
    entitled = max(0, max(channel.paid_seen, voucher.paid) - channel.refunded)
    target = min(entitled, channel.deposit)
    if amount is not None:
        target = min(target, amount)
    held = channel.redeemed - channel.clawed
    return max(0, min(target - held, channel.deposit - channel.redeemed))


def _event(kind: EventKind, now: int, **fields: Any) -> Event:
    return Event(kind=kind.value, fields=fields, at=now)


# ---------------------------------------------------------------------------
# handlers: each checks everything, then commits (no raise after the first mutation)

_Result = tuple[Any, list[Event]]


def _mint(state: State, op: Mint, now: int) -> _Result:
    amount = _check_amount(op.amount, "amount")
    account = _check_account(op.account, "account")
    _need(state.params.dev, ErrorCode.NOT_DEV_LEDGER, "minting is only for dev ledgers")
    balances = _Balances(state)
    balances.credit(account, amount)
    balances.commit()
    state.supply += amount
    return None, [_event(EventKind.MINTED, now, account=account, amount=amount)]


def _transfer(state: State, op: Transfer, now: int) -> _Result:
    amount = _check_amount(op.amount, "amount")
    to = _check_account(op.to, "to")
    balances = _Balances(state)
    balances.debit(op.sender, amount)
    balances.credit(to, amount)
    balances.commit()
    event = _event(EventKind.TRANSFERRED, now, to=to, amount=amount, **{"from": op.sender})
    return None, [event]


def _withdraw(state: State, op: Withdraw, now: int) -> _Result:
    amount = _check_amount(op.amount, "amount")
    balances = _Balances(state)
    balances.debit(op.sender, amount)
    balances.commit()
    state.supply -= amount
    return None, [_event(EventKind.WITHDRAWN, now, account=op.sender, amount=amount)]


def _open_channel(state: State, op: OpenChannel, now: int) -> _Result:
    params = state.params
    deposit = _check_amount(op.deposit, "deposit")
    payee = _check_account(op.payee, "payee")
    _need(payee != op.sender, ErrorCode.INVALID_ARGUMENT, "payee must differ from payer")
    challenge = _check_range(
        op.challenge_ms, params.min_challenge_ms, params.max_challenge_ms, "challenge_ms"
    )
    balances = _Balances(state)
    balances.debit(op.sender, deposit)
    _need(state.nonce <= _MAX_NONCE, ErrorCode.INTERNAL, "channel nonce exhausted")
    cid = channel_id(params.ledger_id, op.sender, payee, state.nonce)
    _need(cid not in state.channels, ErrorCode.CHANNEL_EXISTS, "channel id already taken")
    balances.commit()
    state.channels[cid] = Channel(
        id=cid, payer=op.sender, payee=payee, deposit=deposit, redeemed=0, challenge_ms=challenge
    )
    state.nonce += 1
    event = _event(
        EventKind.CHANNEL_OPENED,
        now,
        channel=cid,
        payer=op.sender,
        payee=payee,
        deposit=deposit,
        challenge_ms=challenge,
    )
    return cid, [event]


def _top_up(state: State, op: TopUp, now: int) -> _Result:
    amount = _check_amount(op.amount, "amount")
    channel = _channel(state, op.channel)
    _need(op.sender == channel.payer, ErrorCode.NOT_PARTY, "only the payer tops up")
    channel_transition(channel.state, ChannelOpKind.TOP_UP)
    balances = _Balances(state)
    balances.debit(op.sender, amount)
    _need(
        channel.deposit + amount <= MAX_AMOUNT,
        ErrorCode.INVALID_AMOUNT,
        "deposit would exceed 2**128 - 1",
    )
    balances.commit()
    channel.deposit += amount
    event = _event(
        EventKind.TOPPED_UP,
        now,
        channel=channel.id,
        payer=channel.payer,
        amount=amount,
        deposit=channel.deposit,
    )
    return None, [event]


def _redeemed_event(channel: Channel, voucher: Request, pay: int, now: int) -> Event:
    return _event(
        EventKind.REDEEMED,
        now,
        channel=channel.id,
        payer=channel.payer,
        payee=channel.payee,
        amount=pay,
        redeemed=channel.redeemed,
        n=voucher.n,
        paid=voucher.paid,
    )


def _check_voucher_ledger(state: State, voucher: object) -> Request:
    if not isinstance(voucher, Request):
        raise _fail(ErrorCode.INVALID_ARGUMENT, "a voucher is a signed Request")
    _need(
        voucher.ledger == state.params.ledger_id,
        ErrorCode.WRONG_LEDGER,
        "voucher is for another ledger",
    )
    return voucher


def _redeem(state: State, op: Redeem, now: int) -> _Result:
    if not isinstance(op.voucher, Request):
        raise _fail(ErrorCode.INVALID_ARGUMENT, "a voucher is a signed Request")
    cap = None if op.amount is None else _check_amount(op.amount, "amount", zero_ok=True)
    voucher = _check_voucher_ledger(state, op.voucher)
    channel = _channel(state, voucher.channel)
    _need(op.sender == channel.payee, ErrorCode.NOT_PARTY, "only the payee redeems")
    channel_transition(channel.state, ChannelOpKind.REDEEM)
    _need(
        voucher.verify(channel.payer),
        ErrorCode.INVALID_SIGNATURE,
        "voucher is not signed by the channel's payer",
    )
    pay = _voucher_pay(channel, voucher, cap)
    balances = _Balances(state)
    balances.credit(channel.payee, pay)
    balances.commit()
    if pay == 0:
        return 0, []
    channel.redeemed += pay
    channel.paid_seen = max(channel.paid_seen, voucher.paid)
    return pay, [_redeemed_event(channel, voucher, pay, now)]


def _payee_close(state: State, op: PayeeClose, now: int) -> _Result:
    cap = None if op.amount is None else _check_amount(op.amount, "amount", zero_ok=True)
    cid = _check_id(op.channel, "channel")
    voucher: Request | None = None
    if op.voucher is not None:
        voucher = op.voucher
        if not isinstance(voucher, Request) or voucher.channel != cid:
            raise _fail(ErrorCode.INVALID_ARGUMENT, "voucher must be a Request for this channel")
        voucher = _check_voucher_ledger(state, voucher)
    elif cap is not None:
        raise _fail(ErrorCode.INVALID_ARGUMENT, "amount given without a voucher")
    channel = _channel(state, cid)
    _need(op.sender == channel.payee, ErrorCode.NOT_PARTY, "only the payee closes this way")
    new_state = channel_transition(channel.state, ChannelOpKind.PAYEE_CLOSE)
    pay = 0
    if voucher is not None:
        _need(
            voucher.verify(channel.payer),
            ErrorCode.INVALID_SIGNATURE,
            "voucher is not signed by the channel's payer",
        )
        pay = _voucher_pay(channel, voucher, cap)
    refund = channel.deposit - channel.redeemed - pay
    balances = _Balances(state)
    balances.credit(channel.payee, pay)
    balances.credit(channel.payer, refund)
    balances.commit()
    events: list[Event] = []
    if pay > 0:
        assert voucher is not None
        channel.redeemed += pay
        channel.paid_seen = max(channel.paid_seen, voucher.paid)
        events.append(_redeemed_event(channel, voucher, pay, now))
    channel.state = new_state
    events.append(_closed_event(channel, "payee", refund, now))
    return pay, events


def _closed_event(channel: Channel, by: str, refund: int, now: int) -> Event:
    return _event(
        EventKind.CHANNEL_CLOSED,
        now,
        channel=channel.id,
        payer=channel.payer,
        payee=channel.payee,
        by=by,
        redeemed=channel.redeemed,
        refunded=refund,
    )


def _start_close(state: State, op: StartClose, now: int) -> _Result:
    channel = _channel(state, op.channel)
    _need(op.sender == channel.payer, ErrorCode.NOT_PARTY, "only the payer starts a close")
    new_state = channel_transition(channel.state, ChannelOpKind.START_CLOSE)
    channel.state = new_state
    channel.closes_at = now + channel.challenge_ms
    event = _event(
        EventKind.CHANNEL_CLOSING,
        now,
        channel=channel.id,
        payer=channel.payer,
        payee=channel.payee,
        closes_at=channel.closes_at,
    )
    return None, [event]


def _finalize_close(state: State, op: FinalizeClose, now: int) -> _Result:
    channel = _channel(state, op.channel)
    new_state = channel_transition(channel.state, ChannelOpKind.FINALIZE_CLOSE)
    _need(
        now >= channel.closes_at,
        ErrorCode.CHALLENGE_PENDING,
        f"challenge period runs until {channel.closes_at}",
    )
    refund = channel.deposit - channel.redeemed
    balances = _Balances(state)
    balances.credit(channel.payer, refund)
    balances.commit()
    channel.state = new_state
    return None, [_closed_event(channel, "payer", refund, now)]


def _stake(state: State, op: StakeOp, now: int) -> _Result:
    params = state.params
    amount = _check_amount(op.amount, "amount")
    penalty = _check_amount(op.penalty, "penalty")
    window = _check_range(
        op.claim_window_ms, params.min_claim_window_ms, params.max_claim_window_ms, "window"
    )
    stake = state.stakes.get(op.sender)
    _need(
        stake_status(stake) is not StakeStatus.UNBONDING,
        ErrorCode.UNBONDING,
        "stake is unbonding",
    )
    held = stake.amount if stake is not None else 0
    _need(penalty <= held + amount, ErrorCode.INVALID_ARGUMENT, "penalty exceeds the stake")
    if stake is not None and stake.open_claims > 0:
        _need(
            penalty == stake.penalty and window == stake.claim_window_ms,
            ErrorCode.STAKE_LOCKED,
            "penalty and window cannot change while claims are open",
        )
    if stake_status(stake) is StakeStatus.BONDED:
        assert stake is not None
        _need(
            penalty >= stake.penalty and window >= stake.claim_window_ms,
            ErrorCode.STAKE_LOCKED,
            "a bonded stake's penalty and window can only grow (unstake to lower them)",
        )
    balances = _Balances(state)
    balances.debit(op.sender, amount)
    _need(held + amount <= MAX_AMOUNT, ErrorCode.INVALID_AMOUNT, "stake would exceed 2**128 - 1")
    balances.commit()
    if stake is None:
        stake = Stake(account=op.sender, amount=0, penalty=penalty, claim_window_ms=window)
        state.stakes[op.sender] = stake
    stake.amount += amount
    stake.penalty = penalty
    stake.claim_window_ms = window
    event = _event(
        EventKind.STAKED,
        now,
        account=op.sender,
        amount=amount,
        total=stake.amount,
        penalty=penalty,
        claim_window_ms=window,
    )
    return None, [event]


def _request_unstake(state: State, op: RequestUnstake, now: int) -> _Result:
    stake = state.stakes.get(op.sender)
    status = stake_status(stake)
    _need(status is not StakeStatus.NONE, ErrorCode.NOT_STAKED, "no stake")
    _need(status is StakeStatus.BONDED, ErrorCode.UNBONDING, "already unbonding")
    assert stake is not None
    stake.unbonding_at = now + unbonding_period(state.params, stake.claim_window_ms)
    stake.unstake_requested_at = now
    event = _event(
        EventKind.UNSTAKE_REQUESTED,
        now,
        account=op.sender,
        amount=stake.amount,
        unbonding_at=stake.unbonding_at,
    )
    return None, [event]


def _withdraw_stake(state: State, op: WithdrawStake, now: int) -> _Result:
    stake = state.stakes.get(op.sender)
    _need(
        stake_status(stake) is StakeStatus.UNBONDING,
        ErrorCode.NOT_STAKED,
        "no unbonding stake (request unstake first)",
    )
    assert stake is not None
    _need(
        now >= stake.unbonding_at,
        ErrorCode.STAKE_LOCKED,
        f"stake unbonds at {stake.unbonding_at}",
    )
    _need(stake.open_claims == 0, ErrorCode.STAKE_LOCKED, "claims against the stake are open")
    amount = stake.amount
    balances = _Balances(state)
    balances.credit(op.sender, amount)
    balances.commit()
    stake.amount = 0
    stake.unbonding_at = 0
    stake.unstake_requested_at = 0
    return None, [_event(EventKind.STAKE_WITHDRAWN, now, account=op.sender, amount=amount)]


def _check_claimed_request(state: State, request: object) -> Request:
    """FileClaim's argument checks (specs/settlement.md 5, FileClaim steps 1-2)."""
    if not isinstance(request, Request):
        raise _fail(ErrorCode.INVALID_ARGUMENT, "a claim carries a signed Request")
    _need(_is_int(request.n) and request.n >= 1, ErrorCode.INVALID_ARGUMENT, "n starts at 1")
    _need(
        _is_int(request.price) and request.price >= 1,
        ErrorCode.INVALID_ARGUMENT,
        "a claimed request has a price (a free request cannot be claimed)",
    )
    _need(
        _is_int(request.paid) and request.paid >= request.price,
        ErrorCode.INVALID_ARGUMENT,
        "paid must cover the request's price",
    )
    _need(
        isinstance(request.service, str) and request.service != "",
        ErrorCode.INVALID_ARGUMENT,
        "a claimed request names a service",
    )
    _need(
        isinstance(request.body, bytes) and len(request.body) <= state.params.max_claim_body,
        ErrorCode.INVALID_ARGUMENT,
        f"a claimed request's body is at most {state.params.max_claim_body} bytes",
    )
    return request


def claim_filed_event(claim: Claim) -> Event:
    """`claim`'s ClaimFiled event as FileClaim made it (section 7; no `seq`): what a
    backend that keeps claims, not their events, answers `claim_filings_of` with."""
    return _claim_filed_event(claim, claim.filed_at)


def _claim_filed_event(claim: Claim, now: int) -> Event:
    """The ClaimFiled event of a claim just filed (section 7)."""
    return _event(
        EventKind.CLAIM_FILED,
        now,
        claim=claim.id,
        claimant=claim.claimant,
        respondent=claim.respondent,
        channel=claim.channel,
        n=claim.n,
        price=claim.price,
        paid=claim.paid,
        deadline=claim.deadline,
        bond=claim.bond,
        window_ends=claim.window_ends,
    )


def _claimed_channel(state: State, op: FileClaim, request: Request) -> Channel:
    """FileClaim's checks of the request against its channel (section 5, in order):
    ledger, channel, party, channel table, the payer's signature."""
    _need(
        request.ledger == state.params.ledger_id,
        ErrorCode.WRONG_LEDGER,
        "request is for another ledger",
    )
    channel = _channel(state, request.channel)
    _need(op.sender == channel.payer, ErrorCode.NOT_PARTY, "only the channel's payer claims")
    channel_transition(channel.state, ChannelOpKind.FILE_CLAIM)
    _need(
        request.verify(channel.payer),
        ErrorCode.INVALID_SIGNATURE,
        "request is not signed by the channel's payer",
    )
    return channel


def _file_claim(state: State, op: FileClaim, now: int) -> _Result:
    params = state.params
    request = _check_claimed_request(state, op.request)
    if op.refusal is not None:
        return _file_refusal(state, op, request, now)
    channel = _claimed_channel(state, op, request)
    _need(request.body_matches(), ErrorCode.MALFORMED, "body does not match body_hash")
    _need(
        request.paid <= channel.deposit,
        ErrorCode.VOUCHER_EXCEEDS_DEPOSIT,
        "the request's paid exceeds the channel's deposit",
    )
    stake = state.stakes.get(channel.payee)
    _need(
        stake is not None and stake.amount > 0,
        ErrorCode.NOT_STAKED,
        "the payee has no stake to claim against",
    )
    assert stake is not None
    if stake_status(stake) is StakeStatus.UNBONDING:
        _need(
            request.deadline <= stake.unstake_requested_at + params.max_deadline_horizon_ms,
            ErrorCode.UNBONDING,
            "the request was made after the stake began unbonding (claims.md C-9)",
        )
    _need(now > request.deadline, ErrorCode.DEADLINE_NOT_PASSED, "deadline has not passed")
    _need(
        now <= request.deadline + stake.claim_window_ms,
        ErrorCode.WINDOW_CLOSED,
        "claims must be filed within one claim window after the deadline",
    )
    claim_id = request.hash
    _need(claim_id not in state.claims, ErrorCode.CLAIM_EXISTS, "request already claimed")
    bond = params.claim_bond
    balances = _Balances(state)
    balances.debit(op.sender, bond)
    balances.commit()
    claim = Claim(
        id=claim_id,
        claimant=op.sender,
        respondent=channel.payee,
        channel=channel.id,
        n=request.n,
        price=request.price,
        paid=request.paid,
        deadline=request.deadline,
        bond=bond,
        filed_at=now,
        window_ends=claim_window_end(params, stake, now),
        request_frame=request.to_frame(),
    )
    state.claims[claim_id] = claim
    stake.open_claims += 1
    channel.paid_seen = max(channel.paid_seen, request.paid)
    event = _claim_filed_event(claim, now)
    return claim_id, [event]


def _file_refusal(state: State, op: FileClaim, request: Request, now: int) -> _Result:
    """FileClaim with the payee's signed refusal: refund the refused slice at once."""
    params = state.params
    refusal = op.refusal
    if not isinstance(refusal, Response):
        raise _fail(ErrorCode.INVALID_ARGUMENT, "a refusal is a signed Response")
    channel = _claimed_channel(state, op, request)
    _need(
        refusal.verify(channel.payee),
        ErrorCode.INVALID_SIGNATURE,
        "refusal is not signed by the channel's payee",
    )
    claim_id = request.hash
    _need(
        refusal.request_hash == claim_id
        and refusal.channel == request.channel
        and refusal.n == request.n
        and refusal.ledger == params.ledger_id,
        ErrorCode.RESPONSE_MISMATCH,
        "the refusal is not for this request",
    )
    _need(
        refusal.status != STATUS_OK and refusal.price == 0,
        ErrorCode.RESPONSE_MISMATCH,
        "not a refusal: an OK response, or one that charges",
    )
    _need(
        request.paid <= channel.deposit,
        ErrorCode.VOUCHER_EXCEEDS_DEPOSIT,
        "the request's paid exceeds the channel's deposit",
    )
    _need(claim_id not in state.claims, ErrorCode.CLAIM_EXISTS, "request already claimed")
    stake = state.stakes.get(channel.payee)
    claim = Claim(
        id=claim_id,
        claimant=op.sender,
        respondent=channel.payee,
        channel=channel.id,
        n=request.n,
        price=request.price,
        paid=request.paid,
        deadline=request.deadline,
        bond=0,
        filed_at=now,
        window_ends=now,
        request_frame=request.to_frame(),
    )
    paid_seen = max(channel.paid_seen, request.paid)
    refund = _plan_refund(
        channel, claim, stake.amount if stake is not None else 0, paid_seen=paid_seen
    )
    balances = _Balances(state)
    balances.credit(op.sender, refund.claw)
    balances.commit()
    channel.paid_seen = paid_seen
    channel.refunded = refund.refunded
    channel.clawed += refund.claw
    if stake is not None:
        stake.amount -= refund.claw
    claim.refund = claim.price
    claim.clawed = refund.claw
    claim.response_frame = refusal.to_frame()
    claim.state = ClaimState.REFUSED
    state.claims[claim_id] = claim
    filed = _claim_filed_event(claim, now)
    answered = _event(
        EventKind.CLAIM_ANSWERED,
        now,
        claim=claim_id,
        claimant=claim.claimant,
        respondent=claim.respondent,
        outcome=ClaimState.REFUSED.value,
        status=refusal.status,
        bond=0,
        bond_to=claim.claimant,
        refund=claim.refund,
        clawed=claim.clawed,
    )
    return claim_id, [filed, answered]


def _respondent_stake(state: State, claim: Claim) -> Stake:
    stake = state.stakes.get(claim.respondent)
    _need(stake is not None, ErrorCode.INTERNAL, "respondent stake not loaded")
    assert stake is not None
    return stake


def _claim_channel(state: State, claim: Claim) -> Channel:
    channel = state.channels.get(claim.channel)
    _need(channel is not None, ErrorCode.INTERNAL, "the claim's channel is not loaded")
    assert channel is not None
    return channel


def _conflicts(claim: Claim, evidence: Request, horizon_ms: int) -> bool:
    """`tiling_conflict` between the claimed request (its stored fields) and `evidence`."""
    claimed = Slice(claim.n, claim.paid, claim.price, claim.deadline, claim.id)
    return _slices_conflict(claimed, evidence, horizon_ms)


@dataclass(slots=True)
class _Refund:
    """A planned refund of a claim's price (specs/settlement.md 5.2): checked, not applied."""

    refunded: int  # the channel's new `refunded`
    claw: int  # taken from the respondent's stake, paid to the claimant


def _plan_refund(
    channel: Channel, claim: Claim, stake_left: int, *, paid_seen: int | None = None
) -> _Refund:
    # `refunded` saturates at MAX: the entitlement is already 0 beyond paid_seen <= MAX, so a
    # saturated sum changes nothing and a refund can never fail (and lock the claim) on it.
    refunded = min(MAX_AMOUNT, channel.refunded + claim.price)
    seen = channel.paid_seen if paid_seen is None else paid_seen
    entitled = max(0, seen - refunded)
    excess = max(0, channel.redeemed - channel.clawed - entitled)
    return _Refund(refunded=refunded, claw=min(excess, claim.price, stake_left))


def _apply_refund(channel: Channel, claim: Claim, stake: Stake, refund: _Refund) -> None:
    channel.refunded = refund.refunded
    channel.clawed += refund.claw
    stake.amount -= refund.claw
    claim.refund = claim.price
    claim.clawed = refund.claw


def _check_answer(op: AnswerClaim) -> Response | Request:
    response, evidence = op.response, op.evidence
    _need(
        (response is None) != (evidence is None),
        ErrorCode.INVALID_ARGUMENT,
        "an answer carries exactly one of a response or evidence",
    )
    if response is not None:
        if not isinstance(response, Response):
            raise _fail(ErrorCode.INVALID_ARGUMENT, "a response is a signed Response")
        return response
    if not isinstance(evidence, Request):
        raise _fail(ErrorCode.INVALID_ARGUMENT, "evidence is a payer-signed Request")
    return evidence


def _answer_claim(state: State, op: AnswerClaim, now: int) -> _Result:
    answer = _check_answer(op)
    claim = _claim(state, op.claim)
    _need(op.sender == claim.respondent, ErrorCode.NOT_PARTY, "only the respondent answers")
    allowed = claim_transition(claim.state, ClaimOpKind.ANSWER)
    _need(now <= claim.window_ends, ErrorCode.WINDOW_CLOSED, "answer window has ended")
    params = state.params
    channel = _claim_channel(state, claim)
    status = ""
    if isinstance(answer, Response):
        _need(
            answer.verify(claim.respondent),
            ErrorCode.INVALID_SIGNATURE,
            "response is not signed by the respondent",
        )
        _need(
            answer.request_hash == claim.id
            and answer.channel == claim.channel
            and answer.n == claim.n
            and answer.ledger == params.ledger_id,
            ErrorCode.RESPONSE_MISMATCH,
            "response is not for the claimed request",
        )
        _need(answer.body_matches(), ErrorCode.MALFORMED, "body does not match body_hash")
        status = answer.status
        if status == STATUS_OK:
            _need(
                answer.price <= claim.price,
                ErrorCode.RESPONSE_MISMATCH,
                "the response charges more than the request's price",
            )
            outcome = ClaimState.DELIVERED
        else:
            _need(answer.price == 0, ErrorCode.RESPONSE_MISMATCH, "a refusal charges nothing")
            outcome = ClaimState.REFUSED
    else:
        _need(
            answer.ledger == params.ledger_id,
            ErrorCode.WRONG_LEDGER,
            "evidence is for another ledger",
        )
        _need(
            answer.channel == claim.channel,
            ErrorCode.RESPONSE_MISMATCH,
            "evidence is for another channel",
        )
        _need(
            answer.verify(channel.payer),
            ErrorCode.INVALID_SIGNATURE,
            "evidence is not signed by the channel's payer",
        )
        _need(
            answer.hash != claim.id and _conflicts(claim, answer, params.max_deadline_horizon_ms),
            ErrorCode.RESPONSE_MISMATCH,
            "evidence is not in tiling conflict with the claimed request",
        )
        outcome = ClaimState.FRIVOLOUS
    assert outcome in allowed
    stake = _respondent_stake(state, claim)
    refund = _plan_refund(channel, claim, stake.amount) if outcome is ClaimState.REFUSED else None
    bond_to = claim.respondent if outcome is ClaimState.FRIVOLOUS else claim.claimant
    balances = _Balances(state)
    balances.credit(bond_to, claim.bond)
    if refund is not None:
        balances.credit(claim.claimant, refund.claw)
    balances.commit()
    if refund is not None:
        _apply_refund(channel, claim, stake, refund)
    if isinstance(answer, Response):
        claim.response_frame = answer.to_frame()
    else:
        claim.evidence_frame = _evidence_frame(answer)
    claim.state = outcome
    stake.open_claims -= 1
    event = _event(
        EventKind.CLAIM_ANSWERED,
        now,
        claim=claim.id,
        claimant=claim.claimant,
        respondent=claim.respondent,
        outcome=outcome.value,
        status=status,
        bond=claim.bond,
        bond_to=bond_to,
        refund=claim.refund,
        clawed=claim.clawed,
    )
    return None, [event]


def _evidence_frame(evidence: Request) -> bytes:
    """The evidence's frame without its body: the signature is the evidence, the body is
    neither checked nor stored (so a FRIVOLOUS answer costs no more than its signed fields)."""
    return codec.encode([KIND_REQUEST, evidence.signing_bytes, evidence.signature, b""])


def _resolve_claim(state: State, op: ResolveClaim, now: int) -> _Result:
    claim = _claim(state, op.claim)
    allowed = claim_transition(claim.state, ClaimOpKind.RESOLVE)
    _need(now > claim.window_ends, ErrorCode.WINDOW_OPEN, "the respondent may still answer")
    (new_state,) = allowed
    stake = _respondent_stake(state, claim)
    channel = _claim_channel(state, claim)
    slash = min(stake.penalty, stake.amount)
    to_claimant = slash * state.params.slash_to_claimant_bps // BPS
    burn = slash - to_claimant
    refund = _plan_refund(channel, claim, stake.amount - slash)
    balances = _Balances(state)
    balances.credit(claim.claimant, to_claimant + claim.bond)
    balances.credit(claim.claimant, refund.claw)
    balances.commit()
    stake.amount -= slash
    stake.open_claims -= 1
    state.burnt += burn
    _apply_refund(channel, claim, stake, refund)
    claim.state = new_state
    claim.slashed = slash
    events = [
        _event(
            EventKind.CLAIM_UPHELD,
            now,
            claim=claim.id,
            claimant=claim.claimant,
            respondent=claim.respondent,
            slashed=slash,
            to_claimant=to_claimant,
            burnt=burn,
            bond=claim.bond,
            refund=claim.refund,
            clawed=claim.clawed,
        )
    ]
    if slash > 0:
        events.append(
            _event(EventKind.SLASHED, now, account=claim.respondent, amount=slash, claim=claim.id)
        )
    return None, events


_HANDLERS: dict[type, Callable[[State, Any, int], _Result]] = {
    Mint: _mint,
    Transfer: _transfer,
    Withdraw: _withdraw,
    OpenChannel: _open_channel,
    TopUp: _top_up,
    Redeem: _redeem,
    PayeeClose: _payee_close,
    StartClose: _start_close,
    FinalizeClose: _finalize_close,
    StakeOp: _stake,
    RequestUnstake: _request_unstake,
    WithdrawStake: _withdraw_stake,
    FileClaim: _file_claim,
    AnswerClaim: _answer_claim,
    ResolveClaim: _resolve_claim,
}


def apply(state: State, op: Op, now: int) -> tuple[Any, list[Event]]:
    """Apply `op` at time `now` (ms). Mutates `state` only on success.

    `state` may hold more entities than the op touches (memory backend) or just those of
    `touches_loaded` (SQLite backend); a missing balance counts as 0, a missing stake as
    none, a missing channel or claim as unknown.

    Args:
        state: the contract state; mutated in place on success.
        op: the operation, authorised by ``op.sender``.
        now: Unix time in milliseconds, from the backend.

    Returns:
        ``(result, events)``: result is the new channel id for OpenChannel, the claim id for
        FileClaim, the amount paid for Redeem and PayeeClose, else None.

    Raises:
        SettlementError: a precondition failed; `state` is unchanged.
    """
    handler = _HANDLERS.get(type(op))
    if handler is None:
        raise _fail(ErrorCode.INVALID_ARGUMENT, f"not a settlement operation: {type(op).__name__}")
    if not _is_int(now) or now < 0:
        raise _fail(ErrorCode.INVALID_ARGUMENT, "now must be an integer >= 0 (Unix ms)")
    _check_account(op.sender, "sender")
    return handler(state, op, now)


# ---------------------------------------------------------------------------
# invariants (specs/settlement.md section 9)


def invariant_violations(state: State) -> list[str]:
    """Check the state-only invariants S-1 (conservation), S-2 (bounds) and S-3 (claims).

    Only meaningful on a complete state (all entities loaded). Tests and the ledger
    conformance suite call it after every operation.

    Args:
        state: a complete contract state.

    Returns:
        One message per violation, each starting with the invariant's name; empty if none.
    """
    out: list[str] = []
    escrow = sum(c.escrow for c in state.channels.values())
    staked = sum(s.amount for s in state.stakes.values())
    bonds = sum(c.bond for c in state.claims.values() if c.state is ClaimState.OPEN)
    held = sum(state.balances.values()) + escrow + staked + bonds + state.burnt
    if held != state.supply:
        out.append(f"S-1 supply {state.supply} != held {held}")

    def bounded(value: int) -> bool:
        return _is_int(value) and 0 <= value <= MAX_AMOUNT

    for account, balance in state.balances.items():
        if not bounded(balance):
            out.append(f"S-2 balance of {account.hex()} is {balance}")
    for channel in state.channels.values():
        amounts = (channel.deposit, channel.redeemed, channel.paid_seen, channel.refunded)
        if not (all(bounded(v) for v in amounts) and bounded(channel.clawed)):
            out.append(f"S-2 channel {channel.id.hex()} amounts out of range")
        elif channel.redeemed > channel.deposit:
            out.append(f"S-2 channel {channel.id.hex()} redeemed more than its deposit")
        elif channel.clawed > channel.redeemed:
            out.append(f"S-2 channel {channel.id.hex()} clawed more than was redeemed")
    for stake in state.stakes.values():
        if not bounded(stake.amount) or stake.penalty <= 0:
            out.append(f"S-2 stake of {stake.account.hex()} out of range")
    if state.burnt < 0 or state.supply < 0:
        out.append("S-2 burnt or supply negative")
    open_by: dict[bytes, int] = {}
    for claim in state.claims.values():
        if claim.state is ClaimState.OPEN:
            open_by[claim.respondent] = open_by.get(claim.respondent, 0) + 1
    for account in set(open_by) | set(state.stakes):
        record = state.stakes.get(account)
        counted = record.open_claims if record is not None else 0
        if counted != open_by.get(account, 0):
            out.append(f"S-3 stake of {account.hex()} counts {counted} open claims")
    return out
