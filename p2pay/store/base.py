"""The node's durable store: record types, the write unit (`Batch`) and the `Store` protocol.

Theory of operation
-------------------
A node keeps its live channel state in memory (`p2pay.core.channel`) and writes
*snapshots* of what changed to a store. A snapshot is one of five frozen record kinds,
each with a primary key:

================  ===============  =====================================================
record            key              what the node must not forget
================  ===============  =====================================================
`PayeeRecord`     ``channel``      highest voucher (``paid_max`` + the signed frame),
                                   ``spent`` (what it charged), ``last_n``, ``redeemed``
`PayerRecord`     ``channel``      ``last_n``, ``paid`` (highest it signed), ``spent``,
                                   ``absorbed``, ``forgotten``, ``released``
`OutgoingRequest` ``request_hash`` a request it sent and its fate (for claims)
`StoredResponse`  ``request_hash`` a signed response (OK or refusal) and the payer-signed
                                   request it answers, kept until ``expires_at`` (ms)
`ClaimRecord`     ``claim_id``     a claim it filed or must answer, and its state
`FloorVoucher`    ``channel``      the highest-``n`` request frame among pruned responses
================  ===============  =====================================================

plus a small ``meta`` map (e.g. the watcher's ledger-event cursor), and one narrow
change, `RequestUpdate`: a stored request's state and time, without rewriting it (a
receipt arrived; the request and its frame were written when it was sent).

One `Store.write` takes a `Batch` and returns only once the whole batch is durable
(all or nothing). Records are *upserted*: a record replaces the stored one with the same
key. Within one batch, and between batches, the later one wins; ``delete_requests``
are applied after the batch's upserts. A backend may commit several concurrent batches
in one transaction (group commit), applying them in the order `write` was called.

*Vouchers kept as evidence (specs/claims.md 2-3).* A payee stores, beside each signed
response, the frame of the payer-signed request it answers (`StoredResponse.request_frame`).
Those requests are the payee's evidence against a claim in *tiling conflict* with them (a
FRIVOLOUS answer): `Store.vouchers` and `Store.vouchers_near` list them per channel by
``n``. The node keeps each until ``deadline + max(retention, max_deadline_horizon + 2 *
claim_window)``. When `Store.prune_responses` deletes responses, it keeps, per channel, the
request frame with the highest ``n`` among those it pruned (if above the one it already
kept) as the channel's **floor voucher** (`Store.floor_voucher`): any claimed request
numbered below it that post-dates it by more than the horizon, or whose slice overlaps it,
is still in conflict with it, so old claims stay answerable after pruning. The floor
voucher is not written through a `Batch`; only pruning sets it.

Records validate themselves on construction (`LocalProtocolError`, code
INVALID_ARGUMENT or INVALID_AMOUNT), and a store validates every record of a batch again
before it accepts the batch, so a record corrupted after construction cannot reach the
disk either. Checks are the cheap ones: types, sizes, ranges (amounts in
[0, 2**128 - 1], request numbers in [0, 2**64 - 1]), known states, and two invariants
whose breach would lose money (a payee never records ``spent`` above the ``paid_max``
it holds a voucher for, nor a ``paid_max`` without that voucher; a payer never records
``spent`` above what it signed, ``absorbed`` above ``spent``, nor ``forgotten`` or
``released`` above ``paid``).

Times (``deadline``, ``expires_at``, ``updated_at``) are Unix milliseconds; they accept
any integer in [0, 2**128 - 1] so that ``deadline + retention`` computed from a peer's
(u64) deadline can never overflow the store.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.errors import AmountError, ErrorCode, LocalProtocolError, P2payError

#: Size of channel ids, request hashes and public keys (accounts).
ID_SIZE = 32
#: Largest ledger id (as in `p2pay.core.messages`).
MAX_LEDGER_ID_SIZE = 64
#: Largest claim id (a chain may use its own id format; the dev ledgers use a hash).
MAX_CLAIM_ID_SIZE = 64
#: Largest request number (u64 on the wire).
MAX_N = (1 << 64) - 1
#: Largest time in ms (see the module docstring).
MAX_TIME = (1 << 128) - 1
#: Largest meta key, in UTF-8 bytes; and largest claim state name.
MAX_KEY_SIZE = 255

CHANNEL_STATUSES = frozenset({"open", "closing", "closed"})
#: awaiting: sent, no answer yet; answered/refused: a signed receipt came back;
#: claimed -> compensated (claim upheld) or rejected (the provider answered the claim);
#: unclaimable: unanswered but the provider has no stake; expired: claim window missed.
REQUEST_STATES = frozenset(
    {
        "awaiting",
        "answered",
        "refused",
        "claimed",
        "compensated",
        "rejected",
        "unclaimable",
        "expired",
    }
)
CLAIM_ROLES = frozenset({"claimant", "respondent"})


class StoreError(P2payError):
    """The store cannot do what was asked: I/O failure, not a p2pay store, in use, closed.

    A failed `Store.write` raises it in every writer whose batch was in the failed
    transaction; none of those batches was applied. The underlying error, if any, is
    the exception's ``__cause__``.
    """

    code = ErrorCode.INTERNAL


class StoreClosed(StoreError):
    """The store was closed (`Store.aclose`) before the operation could run."""


# ---------------------------------------------------------------------------
# cheap field checks (LocalProtocolError: whoever built the record misused the API)


def _fail(kind: str, message: str) -> LocalProtocolError:
    return LocalProtocolError(f"{kind}: {message}")


def _bytes(
    kind: str, name: str, value: object, *, size: int | None = None, max_size: int = 0
) -> None:
    if not isinstance(value, bytes):
        raise _fail(kind, f"{name} must be bytes, not {type(value).__name__}")
    if size is not None:
        if len(value) != size:
            raise _fail(kind, f"{name} must be {size} bytes, not {len(value)}")
    elif max_size and not 1 <= len(value) <= max_size:
        raise _fail(kind, f"{name} must be 1..{max_size} bytes, not {len(value)}")


def _uint(kind: str, name: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        text = repr(value) if isinstance(value, int) else type(value).__name__
        message = f"{name} must be an integer in [0, {maximum}], not {text}"
        raise AmountError(f"{kind}: {message}") if maximum == MAX_YOCTO else _fail(kind, message)


def _amount(kind: str, name: str, value: object) -> None:
    _uint(kind, name, value, MAX_YOCTO)


def _choice(kind: str, name: str, value: object, allowed: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _fail(kind, f"{name} must be one of {sorted(allowed)}, not {value!r}")
    return str.__str__(value)  # a plain str even if given a StrEnum member


def _text(kind: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value.encode("utf-8", "replace")) <= MAX_KEY_SIZE:
        raise _fail(kind, f"{name} must be 1..{MAX_KEY_SIZE} bytes of text, not {value!r}")
    return str.__str__(value)


# ---------------------------------------------------------------------------
# records


@dataclass(frozen=True, slots=True, kw_only=True)
class PayeeRecord:
    """What a payee keeps per channel (see `p2pay.core.channel.PayeeChannel`).

    `best_voucher` is the frame (`Request.to_frame()`) of the newest voucher the payee
    holds: its ``paid`` is `paid_max` (lower only after a failed deferred check, which
    falls back to the last checked voucher), or ``b""`` while `paid_max` is 0. Under
    deferred verification (specs/protocol.md 13.4) it may not be checked yet; then
    `verified_voucher` is the frame of the newest voucher whose signature the payee
    checked (``b""`` when `best_voucher` is itself checked, or none is), so that a restart
    on a `best_voucher` that fails its check falls back to it and loses at most the
    unchecked credit (INV-21). `deferral_revoked`: a voucher of the channel failed its
    check, so it extends no more unchecked credit, restarts included (13.4 rules c, e).

    Raises:
        LocalProtocolError: on construction, if a field is out of range or
            ``spent > paid_max``, or ``paid_max > 0`` without `best_voucher`.
    """

    channel: bytes
    ledger: bytes
    payer: bytes
    payee: bytes
    deposit: int
    status: str
    last_n: int
    paid_max: int
    best_voucher: bytes
    spent: int
    redeemed: int
    verified_voucher: bytes = b""
    deferral_revoked: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (a store calls it before accepting the record)."""
        if (  # fast path: every field plainly in range; else the checks below name what is not
            _channel_fields_plain(self)
            and type(self.paid_max) is int
            and 0 <= self.paid_max <= MAX_YOCTO
            and type(self.best_voucher) is bytes
            and (self.best_voucher or self.paid_max == 0)
            and type(self.spent) is int
            and 0 <= self.spent <= self.paid_max
            and type(self.redeemed) is int
            and 0 <= self.redeemed <= MAX_YOCTO
            and type(self.verified_voucher) is bytes
            and type(self.deferral_revoked) is bool
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        """`validate`'s checks one at a time, raising on the first that fails."""
        k = "PayeeRecord"
        _bytes(k, "channel", self.channel, size=ID_SIZE)
        _bytes(k, "ledger", self.ledger, max_size=MAX_LEDGER_ID_SIZE)
        _bytes(k, "payer", self.payer, size=ID_SIZE)
        _bytes(k, "payee", self.payee, size=ID_SIZE)
        _amount(k, "deposit", self.deposit)
        object.__setattr__(self, "status", _choice(k, "status", self.status, CHANNEL_STATUSES))
        _uint(k, "last_n", self.last_n, MAX_N)
        _amount(k, "paid_max", self.paid_max)
        _bytes(k, "best_voucher", self.best_voucher)
        _amount(k, "spent", self.spent)
        _amount(k, "redeemed", self.redeemed)
        _bytes(k, "verified_voucher", self.verified_voucher)
        if type(self.deferral_revoked) is not bool:
            raise _fail(k, f"deferral_revoked is not a bool: {self.deferral_revoked!r}")
        if self.spent > self.paid_max:
            raise _fail(k, f"spent {self.spent} is above paid_max {self.paid_max}")
        if self.paid_max > 0 and not self.best_voucher:
            raise _fail(k, "paid_max > 0 needs the voucher that proves it (best_voucher)")


@dataclass(frozen=True, slots=True, kw_only=True)
class PayerRecord:
    """What a payer keeps per channel (see `p2pay.core.channel.PayerChannel`).

    Besides ``last_n``, ``paid`` and ``spent``, the three numbers the payer's receipt check
    and resync use that its requests cannot rebuild (specs/protocol.md 14.2, 14.3, 15):
    `absorbed` (the ``spent`` jumps accepted as charges of abandoned or forgotten requests
    and not yet taken back by a stored receipt), `forgotten` (the part of a checked resync
    voucher's ``paid`` the payer cannot account for) and `released` (the uncharged rest of
    the slices answered by a signed response). The requests in flight and abandoned are
    not here: they are the stored `OutgoingRequest` rows without an answer.

    Consistency (each holds for every `PayerChannel` at all times, so a record that breaks
    one is corrupt): ``spent <= paid`` (a receipt's ``spent`` is at most the payer's
    ``paid``); ``absorbed <= spent`` (a jump is added to both, and ``spent`` never
    decreases while ``absorbed`` may); ``forgotten <= paid`` (it is at most a resync
    voucher's ``paid``, which the payer adopts); ``released <= paid`` (it is a part of
    the disjoint slices of distinct requests, all below ``paid``). ``spent + released``
    may exceed ``paid`` when a dishonest payee charged an abandoned request twice (a jump,
    then its own receipt), so that is not checked.

    Raises:
        LocalProtocolError: on construction, if a field is out of range or a consistency
            rule above is broken (amounts out of range raise `AmountError`, a subclass).
    """

    channel: bytes
    ledger: bytes
    payer: bytes
    payee: bytes
    deposit: int
    status: str
    last_n: int
    paid: int
    spent: int
    absorbed: int = 0
    forgotten: int = 0
    released: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (a store calls it before accepting the record)."""
        if (  # fast path: every field plainly in range; else the checks below name what is not
            _channel_fields_plain(self)
            and type(self.paid) is int
            and 0 <= self.paid <= MAX_YOCTO
            and type(self.spent) is int
            and 0 <= self.spent <= self.paid
            and type(self.absorbed) is int
            and 0 <= self.absorbed <= self.spent
            and type(self.forgotten) is int
            and 0 <= self.forgotten <= self.paid
            and type(self.released) is int
            and 0 <= self.released <= self.paid
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        """`validate`'s checks one at a time, raising on the first that fails."""
        k = "PayerRecord"
        _bytes(k, "channel", self.channel, size=ID_SIZE)
        _bytes(k, "ledger", self.ledger, max_size=MAX_LEDGER_ID_SIZE)
        _bytes(k, "payer", self.payer, size=ID_SIZE)
        _bytes(k, "payee", self.payee, size=ID_SIZE)
        _amount(k, "deposit", self.deposit)
        object.__setattr__(self, "status", _choice(k, "status", self.status, CHANNEL_STATUSES))
        _uint(k, "last_n", self.last_n, MAX_N)
        _amount(k, "paid", self.paid)
        _amount(k, "spent", self.spent)
        _amount(k, "absorbed", self.absorbed)
        _amount(k, "forgotten", self.forgotten)
        _amount(k, "released", self.released)
        if self.spent > self.paid:
            raise _fail(k, f"spent {self.spent} is above paid {self.paid}")
        if self.absorbed > self.spent:
            raise _fail(k, f"absorbed {self.absorbed} is above spent {self.spent}")
        if self.forgotten > self.paid:
            raise _fail(k, f"forgotten {self.forgotten} is above paid {self.paid}")
        if self.released > self.paid:
            raise _fail(k, f"released {self.released} is above paid {self.paid}")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingRequest:
    """A request this node sent as payer, kept until its fate is settled (for claims).

    `frame` is `Request.to_frame()` (body included), or ``b""`` once it is no longer
    needed. `state` is one of `REQUEST_STATES`; `claim_id` is ``b""`` until a claim is
    filed.

    Raises:
        LocalProtocolError: on construction, if a field is out of range.
    """

    request_hash: bytes
    channel: bytes
    n: int
    payee: bytes
    price: int
    deadline: int
    frame: bytes
    state: str
    claim_id: bytes = b""
    updated_at: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (a store calls it before accepting the record)."""
        if (  # fast path: every field plainly in range; else the checks below name what is not
            type(self.request_hash) is bytes
            and len(self.request_hash) == ID_SIZE
            and type(self.channel) is bytes
            and len(self.channel) == ID_SIZE
            and type(self.n) is int
            and 0 <= self.n <= MAX_N
            and type(self.payee) is bytes
            and len(self.payee) == ID_SIZE
            and type(self.price) is int
            and 0 <= self.price <= MAX_YOCTO
            and type(self.deadline) is int
            and 0 <= self.deadline <= MAX_TIME
            and type(self.frame) is bytes
            and type(self.state) is str
            and self.state in REQUEST_STATES
            and type(self.claim_id) is bytes
            and len(self.claim_id) <= MAX_CLAIM_ID_SIZE
            and type(self.updated_at) is int
            and 0 <= self.updated_at <= MAX_TIME
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        """`validate`'s checks one at a time, raising on the first that fails."""
        k = "OutgoingRequest"
        _bytes(k, "request_hash", self.request_hash, size=ID_SIZE)
        _bytes(k, "channel", self.channel, size=ID_SIZE)
        _uint(k, "n", self.n, MAX_N)
        _bytes(k, "payee", self.payee, size=ID_SIZE)
        _amount(k, "price", self.price)
        _uint(k, "deadline", self.deadline, MAX_TIME)
        _bytes(k, "frame", self.frame)
        object.__setattr__(self, "state", _choice(k, "state", self.state, REQUEST_STATES))
        _bytes(k, "claim_id", self.claim_id)
        if len(self.claim_id) > MAX_CLAIM_ID_SIZE:
            raise _fail(k, f"claim_id must be at most {MAX_CLAIM_ID_SIZE} bytes")
        _uint(k, "updated_at", self.updated_at, MAX_TIME)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestUpdate:
    """A narrow change to a stored `OutgoingRequest`: its `state` and `updated_at` only.

    The payer records a receipt's arrival with it instead of writing the whole request
    (frame included) again. It applies to the stored request with the same
    `request_hash`, keeping every other field; if there is none, it does nothing.

    Raises:
        LocalProtocolError: on construction, if a field is out of range.
    """

    request_hash: bytes
    state: str
    updated_at: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (a store calls it before accepting the record)."""
        if (  # fast path: every field plainly in range; else the checks below name what is not
            type(self.request_hash) is bytes
            and len(self.request_hash) == ID_SIZE
            and type(self.state) is str
            and self.state in REQUEST_STATES
            and type(self.updated_at) is int
            and 0 <= self.updated_at <= MAX_TIME
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        """`validate`'s checks one at a time, raising on the first that fails."""
        k = "RequestUpdate"
        _bytes(k, "request_hash", self.request_hash, size=ID_SIZE)
        object.__setattr__(self, "state", _choice(k, "state", self.state, REQUEST_STATES))
        _uint(k, "updated_at", self.updated_at, MAX_TIME)

    def apply(self, record: OutgoingRequest) -> OutgoingRequest:
        """`record` with this update's state and time (validated again)."""
        return dataclasses.replace(record, state=self.state, updated_at=self.updated_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResponse:
    """A signed response (`Response.to_frame()`), kept to defend claims until `expires_at`.

    A payer keeps here too the signed refusals it received for its own requests (no
    request frame; the request is its `OutgoingRequest`, state ``refused``): it may post them
    for a refund if the payee redeems their slices (specs/claims.md 6).

    `request_frame` is the frame (`Request.to_frame()`) of the payer-signed request the
    response answers, or ``b""`` if it was not kept; with it the node serves a re-sent
    request its stored answer again (C-4) and answers claims in conflict with it (the
    module docstring).

    Raises:
        LocalProtocolError: on construction, if a field is out of range or `frame` is empty.
    """

    request_hash: bytes
    channel: bytes
    n: int
    frame: bytes
    expires_at: int
    request_frame: bytes = b""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (a store calls it before accepting the record)."""
        if (  # fast path: every field plainly in range; else the checks below name what is not
            type(self.request_hash) is bytes
            and len(self.request_hash) == ID_SIZE
            and type(self.channel) is bytes
            and len(self.channel) == ID_SIZE
            and type(self.n) is int
            and 0 <= self.n <= MAX_N
            and type(self.frame) is bytes
            and self.frame
            and type(self.expires_at) is int
            and 0 <= self.expires_at <= MAX_TIME
            and type(self.request_frame) is bytes
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        """`validate`'s checks one at a time, raising on the first that fails."""
        k = "StoredResponse"
        _bytes(k, "request_hash", self.request_hash, size=ID_SIZE)
        _bytes(k, "channel", self.channel, size=ID_SIZE)
        _uint(k, "n", self.n, MAX_N)
        _bytes(k, "frame", self.frame)
        if not self.frame:
            raise _fail(k, "frame must not be empty")
        _uint(k, "expires_at", self.expires_at, MAX_TIME)
        _bytes(k, "request_frame", self.request_frame)


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorVoucher:
    """Per channel, the request frame with the highest ``n`` among pruned responses.

    Set only by `Store.prune_responses` (module docstring).

    Raises:
        LocalProtocolError: on construction, if a field is out of range or the frame is
            empty.
    """

    channel: bytes
    n: int
    request_hash: bytes
    request_frame: bytes

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again."""
        k = "FloorVoucher"
        _bytes(k, "channel", self.channel, size=ID_SIZE)
        _uint(k, "n", self.n, MAX_N)
        _bytes(k, "request_hash", self.request_hash, size=ID_SIZE)
        _bytes(k, "request_frame", self.request_frame)
        if not self.request_frame:
            raise _fail(k, "request_frame must not be empty")


def floor_after_prune(
    current: FloorVoucher | None, pruned: Iterable[StoredResponse]
) -> FloorVoucher | None:
    """The floor voucher of one channel once `pruned` (its responses being deleted) are
    gone: the one with the highest ``(n, request_hash)`` among `current` and the pruned
    responses that carry a request frame.

    Returns:
        The new floor voucher (`current` if none of `pruned` is above it), or None.
    """
    best = current
    for response in pruned:
        if not response.request_frame:
            continue
        if best is None or (response.n, response.request_hash) > (best.n, best.request_hash):
            best = FloorVoucher(
                channel=response.channel,
                n=response.n,
                request_hash=response.request_hash,
                request_frame=response.request_frame,
            )
    return best


def check_vouchers_args(channel: object, n: object = 0, limit: object = 1) -> None:
    """Validate the arguments of `Store.vouchers` / `vouchers_near` / `floor_voucher`.

    Raises:
        LocalProtocolError: if one is out of range.
    """
    _bytes("store", "channel", channel, size=ID_SIZE)
    _uint("store", "n", n, MAX_N)
    _uint("store", "limit", limit, 1 << 16)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRecord:
    """A claim this node filed (``role="claimant"``) or must answer (``"respondent"``).

    `state` is the node's own name for the claim's state (text, 1..255 bytes).

    Raises:
        LocalProtocolError: on construction, if a field is out of range.
    """

    claim_id: bytes
    role: str
    state: str
    request_hash: bytes
    updated_at: int

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (a store calls it before accepting the record)."""
        k = "ClaimRecord"
        _bytes(k, "claim_id", self.claim_id, max_size=MAX_CLAIM_ID_SIZE)
        object.__setattr__(self, "role", _choice(k, "role", self.role, CLAIM_ROLES))
        object.__setattr__(self, "state", _text(k, "state", self.state))
        _bytes(k, "request_hash", self.request_hash, size=ID_SIZE)
        _uint(k, "updated_at", self.updated_at, MAX_TIME)


@dataclass(slots=True, kw_only=True)
class Batch:
    """Everything one durable write contains. Mutable: build it, then hand it to `write`.

    A store copies what it needs when `write` is called; changing the batch afterwards
    does not change what is written. Upserts are by primary key (module docstring);
    `request_updates` are applied after this batch's upserts (in list order; one for a
    hash the store does not hold does nothing), then `delete_requests` (request
    hashes; deleting an unknown hash is not an error).
    """

    payee: list[PayeeRecord] = field(default_factory=list)
    payer: list[PayerRecord] = field(default_factory=list)
    requests: list[OutgoingRequest] = field(default_factory=list)
    responses: list[StoredResponse] = field(default_factory=list)
    claims: list[ClaimRecord] = field(default_factory=list)
    meta: dict[str, bytes] = field(default_factory=dict)
    delete_requests: list[bytes] = field(default_factory=list)
    request_updates: list[RequestUpdate] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.payee
            or self.payer
            or self.requests
            or self.responses
            or self.claims
            or self.meta
            or self.delete_requests
            or self.request_updates
        )


class _Record(Protocol):
    def validate(self) -> None: ...


def _check_records(name: str, items: object, cls: type[_Record]) -> None:
    """Validate a batch's list `name`: a list holding only exactly `cls` (all checked
    first), each record then validated."""
    if not isinstance(items, list):
        raise _fail("Batch", f"{name} must be a list, not {type(items).__name__}")
    for item in items:
        if type(item) is not cls:  # exactly `cls`
            raise _fail("Batch", f"{name} holds a {type(item).__name__}, not a {cls.__name__}")
    for item in items:
        item.validate()


def check_meta_key(key: object) -> str:
    """Validate a meta key: text of 1..255 UTF-8 bytes.

    Returns:
        The key as a plain str.

    Raises:
        LocalProtocolError: if it is not.
    """
    return _text("meta", "key", key)


#: How deep the JSON of a meta value may nest (`meta_json`): what nodes write nests at most
#: three levels.
MAX_META_JSON_DEPTH = 16
_JSON_TOKENS = re.compile(rb'[\[\]{}"\\]')


def meta_json(raw: bytes) -> Any:
    """The JSON document a node stored as a meta value (its own format: an address book,
    provider stats, marks...).

    Raises:
        ValueError: it is not JSON (UnicodeDecodeError and JSONDecodeError are
            ValueErrors), or it nests deeper than `MAX_META_JSON_DEPTH`: checked first, in
            one pass, since ``json.loads`` recurses once per level and a value nested
            100,000 deep (a damaged store) raised RecursionError out of a node's start,
            or crashed the interpreter (attack round 31).
    """
    depth = 0
    in_string = False
    escaped_at = -1  # the position of the character a backslash escapes
    for token in _JSON_TOKENS.finditer(raw):
        at, char = token.start(), raw[token.start()]
        if in_string:
            if at == escaped_at:
                continue
            if char == 0x5C:  # backslash: the next character is escaped
                escaped_at = at + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > MAX_META_JSON_DEPTH:
                raise ValueError(f"a meta value nested deeper than {MAX_META_JSON_DEPTH}")
        elif char in b"]}":
            depth -= 1
    return json.loads(raw)


_BATCH_RECORDS: tuple[tuple[str, type[_Record]], ...] = (
    ("payee", PayeeRecord),
    ("payer", PayerRecord),
    ("requests", OutgoingRequest),
    ("responses", StoredResponse),
    ("claims", ClaimRecord),
    ("request_updates", RequestUpdate),
)
#: the batch's record lists, in `_BATCH_RECORDS` order, read in one call
_batch_lists = operator.attrgetter(*(name for name, _ in _BATCH_RECORDS))


def check_batch(batch: Batch) -> None:
    """Validate a whole batch before anything of it is applied.

    Args:
        batch: the batch a caller handed to `Store.write`.

    Raises:
        LocalProtocolError: if the batch or any record in it is invalid (including a
            record corrupted after construction, or of the wrong kind for its list).
    """
    if not isinstance(batch, Batch):
        raise _fail("Batch", f"write takes a Batch, not {type(batch).__name__}")
    # Most lists of a batch are empty (a write-through store gets one per `stage` call,
    # 4.3 per request in the simulator): those are passed over without a call.
    for (name, cls), items in zip(_BATCH_RECORDS, _batch_lists(batch), strict=True):
        if type(items) is not list or items:
            _check_records(name, items, cls)
    meta = batch.meta
    if type(meta) is not dict or meta:
        if not isinstance(meta, dict):
            raise _fail("Batch", "meta must be a dict")
        for key, value in meta.items():
            check_meta_key(key)
            _bytes("meta", f"value of {key!r}", value)
    delete_requests = batch.delete_requests
    if type(delete_requests) is not list or delete_requests:
        if not isinstance(delete_requests, list):
            raise _fail("Batch", "delete_requests must be a list")
        for request_hash in delete_requests:
            _bytes("Batch", "delete_requests item", request_hash, size=ID_SIZE)


def check_request_state(state: object) -> str | None:
    """Validate the `state` filter of `Store.requests` (None means all states)."""
    if state is None:
        return None
    return _choice("requests", "state", state, REQUEST_STATES)


def check_time(name: str, value: object) -> int:
    """Validate a time argument (ms) such as `prune_responses`'s `now`."""
    _uint("store", name, value, MAX_TIME)
    assert isinstance(value, int)
    return int(value)


# ---------------------------------------------------------------------------
# the protocol


@runtime_checkable
class Store(Protocol):
    """A node's durable store. Two backends: `MemoryStore` and `SqliteStore`.

    Read methods return snapshots; lists are sorted by primary key (requests by
    ``(channel, n, request_hash)``), the same on every backend.
    """

    async def write(self, batch: Batch) -> None:
        """Make `batch` durable; return only once it is.

        Concurrent writers may share one transaction (group commit); batches are applied
        in the order `write` was called, so the later one wins for the same key.

        Raises:
            LocalProtocolError: the batch is invalid; nothing of it was applied.
            StoreError: the commit failed (nothing of the batch was applied), or the
                store is closed.
            trio.Cancelled: the write was cancelled. It was not acknowledged; it is
                applied only if a commit had already taken it (then the cancel is
                delivered once that commit finished).
        """
        ...

    async def payee_channel(self, channel: bytes) -> PayeeRecord | None: ...

    async def payee_channels(self) -> list[PayeeRecord]: ...

    async def payer_channel(self, channel: bytes) -> PayerRecord | None: ...

    async def payer_channels(self) -> list[PayerRecord]: ...

    async def request(self, request_hash: bytes) -> OutgoingRequest | None: ...

    async def requests(self, state: str | None = None) -> list[OutgoingRequest]: ...

    async def response(self, request_hash: bytes) -> StoredResponse | None:
        """The stored signed response to the request with this hash (OK or refusal),
        with the request's frame beside it, or None."""
        ...

    async def vouchers(self, channel: bytes) -> list[StoredResponse]:
        """Every stored response of `channel` that keeps its request frame, ordered by
        ``(n, request_hash)``: the payer-signed requests the payee still holds."""
        ...

    async def vouchers_near(self, channel: bytes, n: int, limit: int = 4) -> list[StoredResponse]:
        """The stored responses of `channel` that keep their request frame, with number
        `n`, plus the `limit` nearest below `n` and the `limit` nearest above it, ordered
        by ``(n, request_hash)``: the candidates for a tiling conflict with a claimed
        request numbered `n` (specs/claims.md 2).

        Raises:
            LocalProtocolError: `channel`, `n` or `limit` (0..65536) out of range.
        """
        ...

    async def floor_voucher(self, channel: bytes) -> FloorVoucher | None:
        """The channel's floor voucher (module docstring), or None."""
        ...

    async def claims(self) -> list[ClaimRecord]: ...

    async def get_meta(self, key: str) -> bytes | None: ...

    async def prune_responses(self, now: int) -> int:
        """Delete responses with ``expires_at < now``; return how many were deleted.

        In the same transaction, raise each channel's floor voucher to the highest-``n``
        request frame among the deleted responses (`floor_after_prune`)."""
        ...

    @property
    def commits(self) -> int:
        """Transactions committed so far by this store object."""
        ...

    async def aclose(self) -> None:
        """Finish pending writes and release the store; idempotent."""
        ...


__all__ = [
    "CHANNEL_STATUSES",
    "CLAIM_ROLES",
    "ID_SIZE",
    "MAX_CLAIM_ID_SIZE",
    "MAX_N",
    "MAX_TIME",
    "REQUEST_STATES",
    "Batch",
    "ClaimRecord",
    "FloorVoucher",
    "OutgoingRequest",
    "PayeeRecord",
    "PayerRecord",
    "RequestUpdate",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoredResponse",
    "check_batch",
    "check_meta_key",
    "check_request_state",
    "check_time",
    "check_vouchers_args",
    "floor_after_prune",
]


def _channel_fields_plain(record: PayeeRecord | PayerRecord) -> bool:
    """The fields a payee and a payer record share, each plainly of its type and in range
    (the records' `validate` fast path; the field-by-field checks name what is not)."""
    return (
        type(record.channel) is bytes
        and len(record.channel) == ID_SIZE
        and type(record.ledger) is bytes
        and 1 <= len(record.ledger) <= MAX_LEDGER_ID_SIZE
        and type(record.payer) is bytes
        and len(record.payer) == ID_SIZE
        and type(record.payee) is bytes
        and len(record.payee) == ID_SIZE
        and type(record.deposit) is int
        and 0 <= record.deposit <= MAX_YOCTO
        and type(record.status) is str
        and record.status in CHANNEL_STATUSES
        and type(record.last_n) is int
        and 0 <= record.last_n <= MAX_N
    )
