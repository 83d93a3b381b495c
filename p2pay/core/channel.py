"""Channel accounting for both sides (specs/protocol.md "Paid call", "Credit rule").

Theory of operation
-------------------
A channel is escrowed on the ledger by the payer for one payee. Off-chain, each side
keeps a small state and the core decides; the node only runs the decisions.

Payee (`PayeeChannel`), per channel:

* ``last_n``: the highest request number it has authenticated; a request must carry a
  larger one (else REPLAY).
* ``paid_max`` and ``best``: the highest cumulative ``paid`` it holds a valid voucher for,
  never above the deposit, and that voucher with its signature (what it redeems).
* ``spent``: the sum of the prices it has charged. ``reserved``: prices of admitted
  requests whose handler has not finished.
* ``verified``: the newest voucher whose signature the payee has checked. Under deferred
  verification (specs/protocol.md 13.4) ``best`` may be a voucher admitted unchecked (the
  node stores it: it backs the receipts' charges, and checks it at start-up);
  ``verified`` is the only voucher the payee redeems, closes with or shows
  (`verified_voucher` checks ``best`` first). The credit extended beyond ``verified.paid``
  (prices charged or reserved on unchecked vouchers) never exceeds
  ``unverified_credit_limit`` (INV-21): the most a payer sending bad signatures can take
  per channel. Limit 0 checks every voucher on arrival.

`PayeeChannel.admit` applies the checks of specs/protocol.md in a fixed order and returns
`Admit` or `Refuse` (values, never exceptions, for anything a peer caused). From protocol
version 2 the credit rule is the **slice rule** (specs/claims.md section 2): every fresh
request takes a fresh slice ``(paid - price, paid]`` of the paid line, so it is admitted
only if ``request.paid - request.price >= paid_max`` (``paid_max`` before this request),
else it is refused **unsigned** (``n`` not consumed): a signed refusal lets the payer have
the refused slice refunded on the ledger (claims.md 3), so the payee signs refusals only of
slices above every voucher seen (and then raises ``paid_max`` past them). The service's
price is then reserved inside that slice. When the handler finishes,
`PayeeChannel.complete` turns the reservation into a charge (success, in time) or releases
it (failure, or the request's deadline passed meanwhile: a late answer is never charged,
C-4), and returns the ``spent`` the receipt must carry. The node makes that state durable
before the receipt leaves, and sends receipts in the order `complete`/`refused` produced
them, so ``spent`` only grows along the stream.

Payer (`PayerChannel`), per channel: ``last_n``, ``paid`` (the end of the highest slice it
signed, or the payee's checked ``paid_max`` it learnt from a resync), ``spent`` (from
receipts), requests in flight and requests abandoned (timed out). The next request signs
``paid = paid + price``: credit of refused or abandoned requests is **never** reused, so
the slices of one channel are disjoint and ordered by ``n`` and a refusal or a claim can be
checked against them. `PayerChannel.on_response` checks each receipt: signed by the
payee, for the request it answers, charging at most that request's ``price``, and
``spent`` moving by exactly the charged price (more only by prices of abandoned
requests, which the payee may have charged before their receipts were lost; a receipt
the payee serves again from its store, with the ``spent`` of its time, moves nothing).

Each abandoned price can explain such a jump once: the payer counts the yocto of jumps
it accepted in ``absorbed``, subtracts them from what abandoned requests still hold back,
and refuses a jump beyond the abandoned prices not yet absorbed. ``absorbed`` is kept at
most the prices of all requests without an answer (in flight too) and ``forgotten``: a
jump taken for an abandoned request's charge may have been one of a request still in
flight (whose receipt was lost), and stays inside ``spent`` when the abandoned request's
own receipt comes after all. Without that, one abandoned request would let a payee
raise ``spent`` by its price on every later receipt, up to the deposit. ``forgotten`` is
the part of a checked resync voucher's ``paid`` this payer cannot account for after it
lost its state (slices it signed in a life it forgot): the payee may have charged them.

An unsigned REPLAY proves nothing (`PayerChannel.on_replay`): the request stays on record
(in flight, then abandoned: claimable) unless the payer's *own signature* on the payee's
resync voucher proves the request was superseded by one it signed and forgot.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.errors import (
    ErrorCode,
    InsufficientDeposit,
    LocalProtocolError,
    PayeeFaulty,
    RemoteProtocolError,
)
from p2pay.core.messages import MAX_U64, Request, Response, decode_frame
from p2pay.core.settlement import tiling_conflict
from p2pay.core.signing import Signer, account_for


class ChannelStatus(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"  # payer started a close: the payee may still redeem, not serve more
    CLOSED = "closed"


# ---------------------------------------------------------------------------
# payee side


@dataclass(frozen=True, slots=True)
class Admit:
    """Serve the request: `price` is reserved against the channel's credit."""

    n: int
    price: int
    voucher_improved: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not serve. If `authenticated`, answer with a signed response carrying `code`."""

    code: ErrorCode
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    authenticated: bool = False
    voucher_improved: bool = False


Decision = Admit | Refuse


@dataclass(frozen=True, slots=True)
class Completion:
    """What `PayeeChannel.complete` decided: ``charged`` (0 if nothing was), the ``spent``
    the answer carries, and ``refusal``: DEADLINE_EXCEEDED when the handler finished after
    the request's deadline, CHANNEL_CLOSED when it finished after the payer started a close
    (the node then sends that signed refusal, not the answer), else None. Unpacks as
    ``(charged, spent)``."""

    charged: int
    spent: int
    refusal: ErrorCode | None = None

    def __iter__(self) -> Iterator[int]:
        return iter((self.charged, self.spent))


#: Default `PayeeChannel.unverified_credit_limit` (and `NodeConfig.unverified_credit_limit`):
#: 10**20 yocto = 0.0001 token of service a payer may get on vouchers whose signatures the
#: payee has not checked yet (specs/protocol.md 13.4). At a price of 10**18 yocto per request
#: that is one signature check per 100 requests; it is also the most a payer sending bad
#: signatures can take from a payee per channel (INV-21).
DEFAULT_UNVERIFIED_CREDIT_LIMIT = 10**20
#: most requests a channel admits unchecked before it checks them all (13.4 rule d)
MAX_UNCHECKED = 256


@dataclass(slots=True, kw_only=True)
class PayeeChannel:
    """The payee's view of one channel. Mutated only through its methods."""

    ledger: bytes
    channel: bytes
    payer: bytes
    payee: bytes
    deposit: int
    status: ChannelStatus = ChannelStatus.OPEN
    last_n: int = 0
    paid_max: int = 0
    best: Request | None = None
    spent: int = 0
    reserved: int = 0
    redeemed: int = 0
    pending: dict[int, int] = field(default_factory=dict)  # n -> reserved price
    #: n -> deadline of each pending request (checked again at completion, C-4)
    deadlines: dict[int, int] = field(default_factory=dict)
    #: n -> each pending request itself: payer-signed, so evidence against a claim numbered
    #: alike while it is served (it is stored only once answered; claims.md 2)
    serving: dict[int, Request] = field(default_factory=dict)
    #: the newest voucher whose signature was checked (``best`` once it is checked)
    verified: Request | None = None
    #: most yocto charged or reserved beyond ``verified.paid`` (0: check every voucher)
    unverified_credit_limit: int = DEFAULT_UNVERIFIED_CREDIT_LIMIT
    #: a voucher of this channel failed its check: no more credit on unchecked vouchers
    deferral_revoked: bool = False
    #: the payee is closing the channel itself (a PayeeClose on its way to the ledger,
    #: `Node.close_channel`): nothing more is charged, as once it is closed (`is_open`)
    stopping: bool = field(default=False, compare=False)
    #: n -> requests admitted without their signature checked, since the last check; each
    #: is checked when a voucher covering it is (13.4 rule d: a bad one covered by a good
    #: voucher is a violation too, N8), at most MAX_UNCHECKED at a time
    unchecked: dict[int, Request] = field(default_factory=dict)
    #: numbers a lookup of this channel's answers watches (`watch_completions`: how many
    #: lookups each), how many answers there have been, and the latest answer of each
    #: watched number given while it was watched (claims.md C-6: a gap must still be one
    #: at admission). Only watched numbers are kept: as many as claims being looked up.
    watched: dict[int, int] = field(default_factory=dict, compare=False)
    completions: int = field(default=0, compare=False)
    completed_watched: dict[int, int] = field(default_factory=dict, compare=False)
    #: the claimed requests being looked up (hash -> request, lookups), and for each the
    #: first request consumed meanwhile in tiling conflict with it by number and slice
    #: (claims.md 2): evidence against the claim
    looked_up: dict[bytes, tuple[Request, int]] = field(default_factory=dict, compare=False)
    overlaps: dict[bytes, Request] = field(default_factory=dict, compare=False)

    def watch_completions(self, claimed: Request) -> int:
        """Begin a lookup of the answer to `claimed` (a claim's, claims.md C-6). Until the
        matching `unwatch_completions`, an answer to a request numbered alike (one
        `complete` finishes, or one `admit` consumes, admitted or refused) is remembered,
        so that `completed_since` tells whether one was given while the lookup read the
        store (staged then, not yet readable); and the first request consumed meanwhile
        in tiling conflict with `claimed` by number and slice is kept as evidence
        (`overlap_seen`).

        Returns:
            The lookup's start, for `completed_since`.
        """
        n = claimed.n
        self.watched[n] = self.watched.get(n, 0) + 1
        _, count = self.looked_up.get(claimed.hash, (claimed, 0))
        self.looked_up[claimed.hash] = (claimed, count + 1)
        return self.completions

    def unwatch_completions(self, claimed: Request) -> None:
        """End a lookup of `claimed` begun by `watch_completions` (the last one of a number,
        or of a request, forgets what was kept for it)."""
        n = claimed.n
        left = self.watched.get(n, 0) - 1
        if left > 0:
            self.watched[n] = left
        else:
            self.watched.pop(n, None)
            self.completed_watched.pop(n, None)
        _, count = self.looked_up.get(claimed.hash, (claimed, 0))
        if count > 1:
            self.looked_up[claimed.hash] = (claimed, count - 1)
        else:
            self.looked_up.pop(claimed.hash, None)
            self.overlaps.pop(claimed.hash, None)

    def completed_since(self, n: int, start: int) -> bool:
        """Whether a request numbered `n` was answered after the lookup of `n` that began
        at `start`."""
        return self.completed_watched.get(n, -1) >= start

    def overlap_seen(self, claimed: Request) -> Request | None:
        """A request consumed during the lookup of `claimed` in tiling conflict with it
        by number and slice, or None."""
        return self.overlaps.get(claimed.hash)

    def _answered(self, n: int) -> None:
        """A request numbered `n` is answered or consumed now (watched lookups see it)."""
        if n in self.watched:
            self.completed_watched[n] = self.completions
        self.completions += 1

    def _consumed(self, request: Request) -> None:
        """`request`'s number (and slice) is consumed now: the lookups under way see it."""
        self._answered(request.n)
        if self.looked_up:
            for key, (claimed, _) in self.looked_up.items():
                # numbers and slices only (no deadline is 2**64 - 1 ms after another): a
                # refund takes a slice, and these are what make one overlap a charge
                if key not in self.overlaps and tiling_conflict(claimed, request, MAX_U64):
                    self.overlaps[key] = request

    @property
    def credit(self) -> int:
        """Yocto the payer has authorised and the payee has neither charged nor reserved."""
        return self.paid_max - self.spent - self.reserved

    @property
    def verified_paid(self) -> int:
        """The ``paid`` of the newest voucher whose signature was checked (0 if none)."""
        return self.verified.paid if self.verified is not None else 0

    @property
    def unverified_credit(self) -> int:
        """Yocto charged or reserved beyond the newest checked voucher (INV-21)."""
        return max(0, self.spent + self.reserved - self.verified_paid)

    def _allowance(self) -> int:
        """Credit this channel may still extend on unchecked vouchers (protocol.md 13.4)."""
        return 0 if self.deferral_revoked else self.unverified_credit_limit

    def verified_voucher(self) -> Request | None:
        """The newest voucher known to carry the payer's signature, checking ``best`` first.

        This is the only voucher the payee may redeem, close with or show (specs/
        protocol.md 13.4 rule b): vouchers are cumulative, so a checked ``best`` covers every
        earlier credit. If ``best`` fails its check, the payer cheated: ``best`` falls back
        to the last checked voucher and the channel extends no more unchecked credit.

        Returns:
            The checked voucher (``best`` if its signature verifies), or None if none.
        """
        self._check_best()
        return self.verified

    def _check_best(self) -> bool:
        """Check ``best`` if it is unchecked, and every request admitted unchecked before
        it; False if one failed (the channel then extends no more unchecked credit; a bad
        ``best`` falls back to ``verified``)."""
        best = self.best
        if best is None or best is self.verified:
            return self._check_unchecked()
        if best.verify(self.payer):
            self.verified = best
            return self._check_unchecked()
        self.deferral_revoked = True
        self.best = self.verified
        self._check_unchecked()
        return False

    def check_stored(self, requests: Iterable[Request]) -> bool:
        """After a restart, check the stored requests of this channel numbered above the
        newest checked voucher: those admitted since the last check, maybe unchecked
        (13.4 rule e: rule d's list rebuilt from the store). A bad one was served and
        charged unchecked, so the payer cheated: no more unchecked credit (rule c). False
        if one failed. Call it before the channel admits anything."""
        floor = self.verified.n if self.verified is not None else 0
        ok = all(
            r.verify(self.payer) for r in requests if r.channel == self.channel and r.n > floor
        )
        if not ok:
            self.deferral_revoked = True
        return ok

    def _check_unchecked(self) -> bool:
        """Check the signature of every request admitted unchecked (13.4 rule d). A bad
        one was served and charged; a later good voucher covering its slice does not make
        it evidence (claims.md 2), so the payer cheated: no more unchecked credit, and the
        loss stays within the limit (INV-21, attack N8)."""
        pending, self.unchecked = self.unchecked, {}
        ok = all(r is self.verified or r.verify(self.payer) for r in pending.values())
        if not ok:
            self.deferral_revoked = True
        return ok

    def _deferrable(
        self,
        request: Request,
        price: int | None,
        max_body: int,
        now: int,
        max_deadline: int | None,
    ) -> bool:
        """True if `request` would be admitted and its price fits within the credit this
        channel may extend on unchecked vouchers (protocol.md 13.4 rule a)."""
        allowance = self._allowance()
        if not allowance or price is None or self.verified is None or request.n <= self.last_n:
            return False  # limit 0: every voucher is checked (13.2 check 4)
        if len(self.unchecked) >= MAX_UNCHECKED:
            return False  # checked now, with the ones waiting (memory stays bounded)
        if request.paid > self.deposit or request.paid - request.price < self.paid_max:
            return False  # the slice rule is checked (unsigned refusal) on the checked path
        if self.spent + self.reserved + price > self.verified_paid + allowance:
            return False
        paid_max = max(self.paid_max, request.paid)
        refusal = self._service_refusal(request, price, max_body, now, max_deadline, paid_max)
        return refusal is None

    def _service_refusal(
        self,
        request: Request,
        price: int | None,
        max_body: int,
        now: int,
        max_deadline: int | None,
        paid_max: int,
    ) -> tuple[ErrorCode, str, dict[str, Any]] | None:
        """Checks 7-12 of protocol.md 13.2 (pure): the refusal, or None to admit.

        `paid_max` is the payee's after this request (raised to its ``paid``); the slice
        rule (check 5') was checked before: it is refused unsigned.
        """
        if not self.is_open:
            return (ErrorCode.CHANNEL_CLOSED, f"channel is {self.state_name}", {})
        if now > request.deadline:
            return (ErrorCode.DEADLINE_EXCEEDED, "request deadline has passed", {})
        if max_deadline is not None and request.deadline > max_deadline:
            return (
                ErrorCode.DEADLINE_EXCEEDED,
                "request deadline is too far ahead",
                {"max_deadline": max_deadline},
            )
        if price is None:
            return (ErrorCode.UNKNOWN_SERVICE, f"no service {request.service!r}", {})
        if len(request.body) > max_body:
            return (ErrorCode.BODY_TOO_LARGE, f"body over {max_body} bytes", {"max_body": max_body})
        if not request.body_matches():
            return (ErrorCode.MALFORMED, "body does not match its hash", {})
        if request.price < price:
            return (
                ErrorCode.PAYMENT_REQUIRED,
                f"service costs {price}, request allows {request.price}",
                {"price": price},
            )
        credit = paid_max - self.spent - self.reserved
        if credit < price:  # implied by the slice rule while INV-1 holds; kept as a guard
            return (
                ErrorCode.PAYMENT_REQUIRED,
                f"credit {credit} is below the price {price}",
                {"price": price, "credit": credit, "spent": self.spent},
            )
        return None

    @property
    def is_open(self) -> bool:
        """Whether requests may still be admitted and charged: OPEN in our view of the
        ledger, and not being closed by us (``stopping``)."""
        return self.status is ChannelStatus.OPEN and not self.stopping

    @property
    def state_name(self) -> str:
        """The channel's state as its CHANNEL_CLOSED refusals name it."""
        return (
            "closing" if self.stopping and self.status is ChannelStatus.OPEN else self.status.value
        )

    @property
    def unredeemed(self) -> int:
        """What the payee has charged and not yet redeemed on the ledger."""
        return max(0, self.spent - self.redeemed)

    def admit(
        self,
        request: Request,
        *,
        peer: bytes,
        price: int | None,
        max_body: int,
        now: int,
        signature_ok: bool | None = None,
        max_deadline: int | None = None,
    ) -> Decision:
        """Decide whether to serve `request` (checks in the order of specs/protocol.md).

        Args:
            request: as decoded from the wire.
            peer: public key of the authenticated remote end of the stream.
            price: the service's current price, or None if the service is unknown.
            max_body: the service's largest accepted body.
            now: Unix time in milliseconds.
            signature_ok: the result of checking the signature if the caller already did
                (e.g. in a batch); None makes `admit` check it, or defer the check while
                the request would be admitted within ``unverified_credit_limit``
                (specs/protocol.md 13.4: the stream is the payer's, check 3).
            max_deadline: the latest deadline the node accepts (now + its horizon); a
                request whose deadline is later is refused (DEADLINE_EXCEEDED), since
                claims for it could outlive the provider's unbonding period.

        Returns:
            `Admit` (price reserved) or `Refuse`. An authenticated refusal consumes `n`.

        Raises:
            LocalProtocolError: `price` is neither None nor an amount, or `max_body` is
                not a non-negative integer (a negative price would create yocto).
        """
        if price is not None and not _is_uint(price, MAX_YOCTO):
            raise LocalProtocolError(f"a service price must be an amount, not {price!r}")
        if not _is_uint(max_body, MAX_U64):
            raise LocalProtocolError(f"max_body must be a non-negative integer, not {max_body!r}")
        if request.ledger != self.ledger:
            return Refuse(ErrorCode.WRONG_LEDGER, "request is for another ledger")
        if request.channel != self.channel:
            return Refuse(ErrorCode.UNKNOWN_CHANNEL, "request is for another channel")
        if peer != self.payer:
            return Refuse(ErrorCode.UNAUTHORIZED, "only the channel's payer may use it")
        if signature_ok is None and self._deferrable(request, price, max_body, now, max_deadline):
            # protocol.md 13.4: the stream is the payer's (check 3); the signature is checked
            # when the unchecked credit would pass the limit, or before any ledger use.
            assert price is not None
            self.last_n = request.n
            self._consumed(request)
            improved = request.paid > self.paid_max
            if improved:
                self.paid_max = request.paid
                self.best = request
            self._reserve(request, price)
            self.unchecked[request.n] = request
            return Admit(request.n, price, improved)
        if signature_ok is None:
            signature_ok = request.verify(self.payer)
        if not signature_ok:
            if self.unverified_credit_limit:
                self.deferral_revoked = True  # 13.4 rule c: no more unchecked credit
            return Refuse(ErrorCode.INVALID_SIGNATURE, "voucher signature does not verify")
        if request.n <= self.last_n:
            return Refuse(
                ErrorCode.REPLAY,
                f"request number {request.n} is not above {self.last_n}",
                self.resync_details(),
            )
        if request.paid - request.price < self.paid_max:
            # The slice rule (protocol.md 13.2 check 5', claims.md 2-3): the slice overlaps
            # vouchers already seen. Refused unsigned, `n` not consumed: a signed refusal is
            # money (the payer may post it for a refund of the slice), and this slice may
            # cover yocto already charged. The checked voucher lets a payer that lost state
            # re-sign above it (protocol.md 15).
            details = self.resync_details()
            details["price"] = price if price is not None else request.price
            return Refuse(
                ErrorCode.PAYMENT_REQUIRED,
                f"request's slice starts at {request.paid - request.price}, below the "
                f"paid_max {self.paid_max} already authorised: sign paid >= "
                f"{self.paid_max + request.price}",
                details,
            )
        if request.paid > self.deposit:
            # Unsigned too (check 5''): paid_max cannot rise above the deposit to consume
            # this slice, so after a top-up a later request could take the same slice and a
            # signed refusal of this one would refund it (N1).
            return Refuse(
                ErrorCode.INSUFFICIENT_DEPOSIT,
                f"voucher pays {request.paid} but the deposit is {self.deposit}",
                {"deposit": self.deposit, "paid_max": self.paid_max, "spent": self.spent},
            )
        # Authenticated and fresh: from here on `n` is consumed and the refusal is signed.
        self.last_n = request.n
        self._consumed(request)
        improved = False
        if request.paid > self.paid_max:
            self.paid_max = request.paid
            self.best = request
            improved = True
        covers = request.paid > self.verified_paid
        if covers:  # checked: it covers every earlier credit
            self.verified = request
            improved = True
            if self.best is None or request.paid >= self.best.paid:
                self.best = request

        def refuse(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> Refuse:
            return Refuse(
                code, message, details or {}, authenticated=True, voucher_improved=improved
            )

        if covers and self.unchecked:
            # 13.4 rule d (N8): the requests it covers are checked too; a bad one revokes
            # deferral (this request itself verified and is answered as usual)
            self._check_unchecked()

        refusal = self._service_refusal(request, price, max_body, now, max_deadline, self.paid_max)
        if refusal is not None:
            return refuse(*refusal)
        assert price is not None
        if self.spent + self.reserved + price > self.verified_paid + self._allowance():
            # Only under deferred verification: check the newest voucher (13.4 rule c).
            before = self.verified
            ok = self._check_best()
            improved = improved or self.verified is not before or not ok
            if not ok:
                return refuse(
                    ErrorCode.INVALID_SIGNATURE,
                    "a voucher admitted earlier on this channel does not verify",
                )
            checked = self.verified_paid + self._allowance() - self.spent - self.reserved
            if checked < price:
                return refuse(
                    ErrorCode.PAYMENT_REQUIRED,
                    f"credit on checked vouchers {checked} is below the price {price}",
                    {"price": price, "credit": checked, "spent": self.spent},
                )
        self._reserve(request, price)
        return Admit(request.n, price, improved)

    def _reserve(self, request: Request, price: int) -> None:
        self.reserved += price
        self.pending[request.n] = price
        self.deadlines[request.n] = request.deadline
        self.serving[request.n] = request

    def complete(self, n: int, *, ok: bool, now: int | None = None) -> Completion:
        """The handler for admitted request `n` finished.

        Args:
            n: the request number `admit` returned in `Admit`.
            ok: True if the handler succeeded (charge the reserved price), False if it
                failed (release the reservation: nothing is charged).
            now: Unix ms when it finished. If it is past the request's deadline, nothing
                is charged whatever `ok` says (C-4: a late answer is not charged): the
                result's ``refusal`` is DEADLINE_EXCEEDED and the node sends that signed
                refusal instead of the answer. None skips the check (callers that
                release a reservation without answering).

        A request that finishes once the channel is no longer OPEN (the payer started a
        close, or it is closed) is not charged either: the result's ``refusal`` is
        CHANNEL_CLOSED. Its charge could come after the payee's closing redeems, and the
        close's end would return it to the payer with the answer given (protocol.md 17:
        a slow request sent just before a close was served for nothing).

        Returns:
            A `Completion`: the price charged (0 unless served in time), the cumulative
            spent the receipt carries, and the refusal code when the answer was late.
            It unpacks as ``(charged, spent)``.

        Raises:
            LocalProtocolError: if `n` was not admitted or is already complete.
        """
        price = self.pending.pop(n, None)
        if price is None:
            raise LocalProtocolError(f"request {n} is not awaiting completion")
        self._answered(n)
        deadline = self.deadlines.pop(n, None)
        self.serving.pop(n, None)
        self.reserved -= price
        if now is not None and deadline is not None and now > deadline:
            return Completion(0, self.spent, ErrorCode.DEADLINE_EXCEEDED)
        if not ok:
            return Completion(0, self.spent)
        if not self.is_open:
            return Completion(0, self.spent, ErrorCode.CHANNEL_CLOSED)
        self.spent += price
        return Completion(price, self.spent)

    def resync_details(self) -> dict[str, Any]:
        """What a payer that lost its state needs (sent with REPLAY refusals)."""
        # Never show an unchecked voucher (13.4 rule b). Pure: a REPLAY changes no state.
        voucher = self.verified
        if self.best is not None and self.best is not voucher and self.best.verify(self.payer):
            voucher = self.best
        details: dict[str, Any] = {
            "last_n": self.last_n,
            "spent": self.spent,
            # = paid_max, unless a deferred check failed (13.4 rule c)
            "paid_max": voucher.paid if voucher is not None else 0,
        }
        if voucher is not None:
            details["voucher"] = voucher.voucher_frame()  # without its body (protocol.md 15)
        return details

    def admit_claimed(
        self,
        request: Request,
        *,
        price: int | None,
        max_body: int,
        seen: bool,
        deadline: int,
    ) -> Decision:
        """Decide whether to serve a request that reached us through a claim (claims.md C-6).

        The same checks as `admit` except those that a claim makes moot: the request's
        own deadline has passed (the claim's answer window bounds the handler instead),
        and the stream is the ledger's (the ledger checked the payer's signature; it is
        checked again here). A request numbered above ``last_n`` must take a fresh slice
        (``paid - price >= paid_max``) and consumes ``n`` and, if fresh, its slice
        (``paid_max`` rises to its ``paid`` whether it is admitted or refused: a signed
        refusal refunds the slice, which no later request may then be charged in); one
        numbered at or below
        ``last_n`` is admitted only in a gap: the caller found neither an answer to it
        nor another request numbered ``n`` (``seen`` False) and no tiling conflict with a
        request it holds. Either way the charge stays within the credit the vouchers
        cover (``max(paid_max, paid) - spent - reserved >= price``).

        Args:
            request: the claimed request (decoded from the claim).
            price: the service's current price, or None if the service is unknown.
            max_body: the service's largest accepted body.
            seen: the caller already answered this request or holds another request
                numbered ``request.n`` on this channel.
            deadline: Unix ms by which the handler must finish to be charged (the
                claim's window end minus the answer margin; `complete` checks it).

        Returns:
            `Admit` (price reserved: finish with `complete`) or a `Refuse` the caller
            answers with a signed refusal (``price = 0``; every claimed refusal is signed).

        Raises:
            LocalProtocolError: `price` or `max_body` is not a valid value.
        """
        if price is not None and not _is_uint(price, MAX_YOCTO):
            raise LocalProtocolError(f"a service price must be an amount, not {price!r}")
        if not _is_uint(max_body, MAX_U64):
            raise LocalProtocolError(f"max_body must be a non-negative integer, not {max_body!r}")

        def refuse(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> Refuse:
            return Refuse(code, message, details or {}, authenticated=True)

        if request.ledger != self.ledger or request.channel != self.channel:
            return refuse(ErrorCode.UNKNOWN_CHANNEL, "request is for another channel")
        if not request.verify(self.payer):
            return refuse(ErrorCode.INVALID_SIGNATURE, "request is not signed by the payer")
        fresh = request.n > self.last_n
        if not fresh and (seen or request.n in self.pending):
            return refuse(ErrorCode.REPLAY, f"request number {request.n} was already used")
        improved = False
        above = request.paid - request.price >= self.paid_max
        if fresh:
            self.last_n = request.n  # consumed, as by any authenticated answer
            self._consumed(request)
            if above:
                # A fresh slice above every voucher seen is consumed too, whatever the
                # answer, as on a stream (protocol.md 13.2): every answer to a claim is
                # signed, and a refusal refunds the slice (claims.md 3), so no later
                # request may be charged inside it.
                self.paid_max = request.paid
                self.best = request
                improved = True
        if not self.is_open:
            return refuse(ErrorCode.CHANNEL_CLOSED, f"channel is {self.state_name}")
        if request.paid > self.deposit:
            return refuse(
                ErrorCode.INSUFFICIENT_DEPOSIT,
                f"voucher pays {request.paid} but the deposit is {self.deposit}",
                {"deposit": self.deposit},
            )
        if price is None:
            return refuse(ErrorCode.UNKNOWN_SERVICE, f"no service {request.service!r}")
        if len(request.body) > max_body:
            return refuse(
                ErrorCode.BODY_TOO_LARGE, f"body over {max_body} bytes", {"max_body": max_body}
            )
        if not request.body_matches():
            return refuse(ErrorCode.MALFORMED, "body does not match its hash")
        if request.price < price:
            return refuse(
                ErrorCode.PAYMENT_REQUIRED,
                f"service costs {price}, request allows {request.price}",
                {"price": price},
            )
        if fresh and not above:
            return refuse(
                ErrorCode.PAYMENT_REQUIRED,
                f"the request's slice starts below paid_max {self.paid_max}",
                {"price": price, "paid_max": self.paid_max},
            )
        credit = max(self.paid_max, request.paid) - self.spent - self.reserved
        if credit < price:
            return refuse(
                ErrorCode.PAYMENT_REQUIRED,
                f"credit {credit} is below the price {price}",
                {"price": price, "credit": credit, "spent": self.spent},
            )
        if request.paid > self.paid_max:
            self.paid_max = request.paid
            self.best = request
            improved = True
        if request.paid > self.verified_paid:  # checked above: it covers earlier credit
            self.verified = request
            improved = True
            if self.unchecked:
                # 13.4 rule d (N8), as at check 4 on a stream: the requests it covers are
                # checked now, and a bad one revokes deferral. Raising `verified` unchecked
                # reset the unverified credit: a payer alternating bad requests on its
                # stream with claims on fresh numbers took the limit again and again (up to
                # MAX_UNCHECKED bad requests), each refunded by a claim on a good twin
                # (attack round 17)
                self._check_unchecked()
        self.reserved += price
        self.pending[request.n] = price
        self.deadlines[request.n] = deadline
        self.serving[request.n] = request
        return Admit(request.n, price, improved)


# ---------------------------------------------------------------------------
# payer side


@dataclass(frozen=True, slots=True)
class Pending:
    request: Request
    price: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt the payer accepted: what it paid for `n` and the signed response."""

    n: int
    charged: int
    spent: int
    response: Response
    #: whether the response's signature was checked (False: skipped by sample, 14.4)
    checked: bool = True


class Replay(enum.StrEnum):
    """What an unsigned REPLAY refusal means for the request it names (`on_replay`)."""

    #: The payee may have served (and charged) it: it stays on record, in flight. Re-send
    #: the same signed request once; an honest payee answers with its stored response.
    IN_DOUBT = "in_doubt"
    #: Our own signature proves we lost state: the payee holds a request of ours with a
    #: number we no longer remember, the same number, or a slice above this one's start.
    #: This request can never be charged honestly, and a claim on it would be frivolous:
    #: it is dropped, and the call goes on with a fresh request.
    SUPERSEDED = "superseded"
    #: Not a request in flight or abandoned on this channel: nothing to do.
    UNKNOWN = "unknown"


@dataclass(slots=True, kw_only=True)
class PayerChannel:
    """The payer's view of one channel. Mutated only through its methods."""

    ledger: bytes
    channel: bytes
    payer: bytes
    payee: bytes
    deposit: int
    status: ChannelStatus = ChannelStatus.OPEN
    last_n: int = 0
    paid: int = 0
    spent: int = 0
    in_flight: dict[int, Pending] = field(default_factory=dict)
    abandoned: dict[int, Pending] = field(default_factory=dict)
    #: yocto of ``spent`` jumps accepted as charges of abandoned (or forgotten) requests
    #: whose receipts were lost; never above the prices of the requests in flight and
    #: abandoned plus ``forgotten`` (`outstanding` is that sum less ``absorbed``).
    absorbed: int = 0
    #: yocto of a checked resync voucher's ``paid`` this payer could not account for
    #: after losing its state: the payee may have charged it on requests we forgot.
    forgotten: int = 0
    #: yocto of the slices of requests answered by a signed response (receipts and signed
    #: refusals) that were not charged: each such request's price minus the response's.
    #: Such a slice passed the payee's slice rule, so no forgotten request was charged in
    #: it (protocol.md 15 step 4).
    released: int = 0
    #: why this channel's payee is faulty (a receipt it sent failed the check of
    #: protocol.md 14.3), or None: once set, `next_request` signs nothing more here
    faulty: str | None = None

    def found_faulty(self, n: int, error: RemoteProtocolError) -> None:
        """The receipt for request `n` failed the check (`on_response` raised `error`): the
        payee is faulty on this channel and nothing more is signed on it (protocol.md 14.3,
        "A faulty payee"). The first reason is kept."""
        if self.faulty is None:
            self.faulty = f"its receipt for request {n} failed the check: {error.message}"[:512]

    def faulty_error(self) -> PayeeFaulty:
        """What a call on this channel gets once its payee is faulty (`faulty` is set)."""
        return PayeeFaulty(
            f"the payee of channel {self.channel.hex()} is faulty ({self.faulty}): nothing "
            "more is paid on it; close it (p2pay close) to get its deposit back, and open a "
            "channel to another provider",
            details={"channel": self.channel.hex()},
        )

    def expects(self, n: int) -> bool:
        """Whether `n` is outstanding (in flight or abandoned): only then is a response or
        a refusal naming it read at all; one naming anything else is ignored (protocol.md
        5.4, 14.3)."""
        return n in self.in_flight or n in self.abandoned

    def _pool(self) -> int:
        """What a jump may take (protocol.md 14.3 rule 7): abandoned prices and forgotten."""
        return sum(p.price for p in self.abandoned.values()) + self.forgotten

    def _headroom(self, n: int, price: int) -> int:
        """How far a receipt for request `n` (of `price`) may move ``spent`` beyond its own
        charge (protocol.md 14.3 rule 7): the abandoned prices of *other* requests and
        forgotten, less what earlier jumps took."""
        others = self._pool() - (price if n in self.abandoned else 0)
        return max(0, others - self.absorbed)

    def _unanswered(self) -> int:
        """What the payee may have charged without our having its receipt: the prices of
        the requests in flight and abandoned, and forgotten."""
        return sum(p.price for p in self.in_flight.values()) + self._pool()

    @property
    def outstanding(self) -> int:
        """Prices of requests sent and not yet answered (in flight or abandoned), plus
        forgotten, less the jumps already absorbed (protocol.md 14.2): what the payee may
        still charge beyond ``spent``."""
        return max(0, self._unanswered() - self.absorbed)

    def settle_refunded(self, n: int) -> Pending | None:
        """The ledger refunded request `n`'s price (its claim ended REFUSED or UPHELD,
        specs/claims.md 3): the payee is not entitled to it, whatever it answered or
        charged. The request leaves the outstanding ones as not charged (its slice is
        released), and a jump taken for its charge is no charge of any request: ``spent``
        is lowered by it (`_settle_abandoned`).

        Returns:
            The request, or None if `n` was neither in flight nor abandoned.
        """
        pending = self.in_flight.pop(n, None) or self.abandoned.pop(n, None)
        if pending is not None:
            self.released += pending.price
            self._settle_abandoned()
        return pending

    def on_claim_end(self, request: Request, answer: Response | None, *, refunded: bool) -> bool:
        """Account for how our claim on `request` ended (protocol.md 16.2), so that
        ``spent``, what is outstanding and the request's stored state agree, before a
        restart and after it.

        The payee's answer (`answer`, checked against the claim: DELIVERED, its receipt;
        REFUSED, its signed refusal) is taken like a receipt it serves again
        (`on_response`, its signature already checked). A refund (`refunded`: REFUSED or
        UPHELD) settles the request as not charged whatever the answer's numbers say
        (`settle_refunded`). A request still in flight (a ledger clock ahead of ours let
        the claim end while a call waits) is settled by a refund; an answer to it is left
        to the call.

        Returns:
            Whether the channel now holds the outcome: False for an unrefunded request
            still in flight (it stays claimed); True otherwise, also when the request was
            answered already or is not this channel's.

        Raises:
            RemoteProtocolError: (not `refunded`) the receipt rules refuse the answer (a
                jump they cannot explain): nothing is changed, the request stays abandoned
                and claimed, its price outstanding.
        """
        flying = self.in_flight.get(request.n)
        if flying is not None and flying.request.hash == request.hash:
            if refunded:
                self.settle_refunded(request.n)
            return refunded
        pending = self.abandoned.get(request.n)
        if pending is None or pending.request.hash != request.hash:
            return True  # answered already (its receipt is in spent), or not ours
        if answer is not None:
            try:
                self.on_response(answer, signature_ok=True)
                return True
            except RemoteProtocolError:
                if not refunded:
                    raise
        if refunded:
            self.settle_refunded(request.n)
        return True

    def _settle_abandoned(self, *, cut_spent: bool = True) -> None:
        """Keep ``absorbed`` within what lost receipts may have charged, once a request
        has left: the prices of those still without an answer, in flight ones included.

        Not within abandoned prices and forgotten alone: a jump accepted as an abandoned
        request's charge may have been the charge of a request in flight whose receipt was
        lost (the payer cannot tell which). When the abandoned request's own receipt then
        comes, that charge is still inside ``spent``: dropping it from ``absorbed`` would
        count its request's price again in `outstanding` (so ``spent + outstanding`` would
        exceed ``paid``), refuse that request's stored receipt (rule 8) and let a later jump
        take the same yocto again.
        """
        if self.absorbed:  # (0 is within any sum of prices: no need to add them up)
            cut = self.absorbed - self._unanswered()
            if cut > 0:
                self.absorbed -= cut
                if cut_spent:
                    # A jump no request without an answer can explain any more: the
                    # request it was taken for was refused (signed), refunded or
                    # superseded, so the payee did not charge it there. No charge of any
                    # request: out of ``spent`` too (protocol.md 14.3), so that what the
                    # payee may hold (``spent`` + `outstanding`) never grows by an answer.
                    # An honest payee never jumps by a charge it did not make: for it the
                    # cut is 0.
                    self.spent -= cut

    def restore_abandoned(self, requests: Iterable[Pending]) -> None:
        """After a restart: the requests on record without an answer (in flight when the
        node stopped, or abandoned before) are abandoned (protocol.md 14.2).

        Call it once, on a channel built from its stored numbers (``last_n``, ``paid``,
        ``spent``, ``absorbed``, ``forgotten``, ``released``), with every request of the
        channel the store holds unanswered. ``absorbed`` is then kept within what they
        and ``forgotten`` may explain, as it is at run time.

        Raises:
            LocalProtocolError: a request is not on this channel or is numbered above
                ``last_n`` (nothing is changed then).
        """
        pending = list(requests)
        for p in pending:
            if p.request.channel != self.channel or not 0 < p.request.n <= self.last_n:
                raise LocalProtocolError(
                    f"request n={p.request.n} is not one this channel sent (last_n {self.last_n})"
                )
        for p in pending:
            self.abandoned[p.request.n] = p
        # A store written by this code holds `absorbed` within what these requests explain
        # (each cut was taken at run time, out of the stored ``spent``); one written before
        # the cut rule may not (a claim's DELIVERED answer left its request counted as
        # answered while its charge stayed absorbed): keep ``spent`` as stored then, as
        # that code did, rather than cut an honest payee's charge out of it.
        self._settle_abandoned(cut_spent=False)

    @property
    def available(self) -> int:
        """The most the next request may cost before the deposit is exhausted."""
        return max(0, self.deposit - max(self.paid, self.spent + self.outstanding))

    def next_request(
        self, key: Signer, *, service: str, body: bytes, price: int, deadline: int
    ) -> Request:
        """Sign the next request on this channel (it is then in flight).

        Args:
            key: the payer's key: a `Keypair`, or on an EVM ledger its `EvmKey` (faster:
                a `Keypair` derives it per request).
            service: the service name.
            body: the request body (its BLAKE2b-256 is signed).
            price: the most this request may be charged (the service's advertised price).
            deadline: Unix time in milliseconds after which the payee must not serve it
                (the node caps it at ``now + max_deadline_horizon_ms``, claims.md 2).

        Returns:
            The signed request, numbered ``last_n + 1``, with ``paid = paid + price``:
            a fresh slice ``(paid, paid + price]`` above every slice signed or learnt
            from a resync (protocol.md 14.2; credit is never reused).

        Raises:
            LocalProtocolError: the channel is not open, or `key` is not the payer, or
                `price` is not an amount.
            InsufficientDeposit: the deposit cannot cover this request; top up first.
            PayeeFaulty: the payee sent a receipt that failed the check on this channel.
        """
        if self.status is not ChannelStatus.OPEN:
            raise LocalProtocolError(
                f"channel is {self.status.value}", code=ErrorCode.CHANNEL_CLOSED
            )
        if self.faulty is not None:
            raise self.faulty_error()
        if account_for(key, self.ledger) != self.payer:
            raise LocalProtocolError("only the payer signs requests on a channel")
        if not _is_uint(price, MAX_YOCTO):
            raise LocalProtocolError(f"a price must be an amount, not {price!r}")
        paid = self.paid + price
        if paid > self.deposit:
            raise InsufficientDeposit(
                f"request needs paid={paid} but the deposit is {self.deposit}",
                details={"deposit": self.deposit, "needed": paid},
            )
        request = Request.create(
            key,
            ledger=self.ledger,
            channel=self.channel,
            n=self.last_n + 1,
            paid=paid,
            price=price,
            service=service,
            body=body,
            deadline=deadline,
        )
        self.last_n = request.n
        self.paid = paid
        self.in_flight[request.n] = Pending(request, price)
        return request

    def abandon(self, n: int) -> Pending | None:
        """Give up waiting for `n` (timeout or lost stream). It may still have been charged.

        Args:
            n: a request number.

        Returns:
            The abandoned request, or None if `n` was not in flight.
        """
        pending = self.in_flight.pop(n, None)
        if pending is not None:
            self.abandoned[n] = pending
        return pending

    def on_response(
        self,
        response: Response,
        *,
        signature_ok: bool | None = None,
        check_signature: bool = True,
    ) -> Receipt:
        """Check a receipt and account for it (specs/protocol.md 14.3).

        A receipt moves ``spent`` by the price it charges (plus a jump explained by lost
        receipts of abandoned requests). A receipt the payee serves again from its store
        (a re-sent request, C-4) carries the ``spent`` of its time: if that is at or below
        ours, its charge is already inside ``spent`` (a jump absorbed it), so it moves
        nothing and takes its price back out of ``absorbed``.

        Args:
            response: a decoded response frame.
            signature_ok: the result of checking its signature if the caller already did;
                None makes `on_response` check it against the payee's key.
            check_signature: False lets an OK receipt with no jump (``spent`` moved by
                exactly its ``price``) be accepted without checking its signature
                (specs/protocol.md 14.4: the caller drew it out of the sample); every
                other response is checked anyway. The receipt's ``checked`` says which.

        Returns:
            The accepted `Receipt`; the request is no longer in flight or abandoned.

        Raises:
            RemoteProtocolError: (code MALFORMED / INVALID_SIGNATURE) the receipt is not
                for a request we sent, is not the payee's, or charges more than allowed.
                The channel state is unchanged then.
        """
        pending = self.in_flight.get(response.n) or self.abandoned.get(response.n)
        if response.ledger != self.ledger or response.channel != self.channel or pending is None:
            raise RemoteProtocolError(
                "receipt is not for a request in flight", code=ErrorCode.MALFORMED
            )
        if response.request_hash != pending.request.hash:
            raise RemoteProtocolError("receipt answers another request", code=ErrorCode.MALFORMED)
        checked = True
        if signature_ok is None:
            if check_signature or not response.ok or response.spent != self.spent + response.price:
                signature_ok = response.verify(self.payee)
            else:  # 14.4: an OK receipt with no jump, not drawn for a check
                signature_ok, checked = True, False
        if not signature_ok:
            raise RemoteProtocolError(
                "receipt signature does not verify", code=ErrorCode.INVALID_SIGNATURE
            )
        if not response.body_matches():
            raise RemoteProtocolError(
                "response body does not match its hash", code=ErrorCode.MALFORMED
            )
        if response.price > pending.price:
            raise RemoteProtocolError(
                f"receipt charges {response.price}, the request allowed {pending.price}",
                code=ErrorCode.MALFORMED,
            )
        if response.spent > self.paid:
            raise RemoteProtocolError(
                f"receipt says spent {response.spent}, above the {self.paid} we signed",
                code=ErrorCode.MALFORMED,
            )
        expected = self.spent + response.price
        if response.spent < expected:
            # A stored receipt served again (protocol.md 14.3 rule 8): its charge lies
            # inside our spent already, which only a jump we absorbed can explain.
            if response.spent > self.spent or response.price > self.absorbed:
                raise RemoteProtocolError(
                    f"receipt spent {response.spent}, expected {expected} (or a stored "
                    f"receipt with spent <= {self.spent} charging <= {self.absorbed})",
                    code=ErrorCode.MALFORMED,
                )
            self.in_flight.pop(response.n, None)
            self.abandoned.pop(response.n, None)
            self.absorbed -= response.price
            self.released += pending.price - response.price
            self._settle_abandoned()
            return Receipt(response.n, response.price, response.spent, response)
        # A jump above `expected` can only be charges of *other* abandoned requests whose
        # receipts were lost (specs/protocol.md 14.3 rule 7), and each abandoned price
        # explains at most one jump: `absorbed` counts the yocto already explained.
        jump = response.spent - expected
        # (no jump, the usual case: no need to add up the abandoned prices)
        if jump and jump > (headroom := self._headroom(response.n, pending.price)):
            raise RemoteProtocolError(
                f"receipt spent {response.spent}, expected {expected}"
                + (f" (+ at most {headroom} for abandoned requests)" if headroom else ""),
                code=ErrorCode.MALFORMED,
            )
        self.in_flight.pop(response.n, None)
        self.abandoned.pop(response.n, None)
        self.absorbed += jump
        self.released += pending.price - response.price
        self.spent = response.spent
        self._settle_abandoned()  # (after `spent` moved: a cut comes out of the new one)
        return Receipt(response.n, response.price, response.spent, response, checked)

    def on_refusal(self, n: int) -> Pending | None:
        """An unsigned refusal for `n` other than REPLAY: nothing was charged and the
        voucher was not kept.

        That holds for refusals before authentication (WRONG_LEDGER, UNKNOWN_CHANNEL,
        UNAUTHORIZED, INVALID_SIGNATURE, OVERLOADED before admission). A REPLAY refusal
        does not prove it: call `on_replay`. The request's slice is not reused (the next
        request still starts above it).

        Args:
            n: the refused request number.

        Returns:
            The request, or None if `n` was neither in flight nor abandoned.
        """
        pending = self.in_flight.pop(n, None) or self.abandoned.pop(n, None)
        self._settle_abandoned()
        return pending

    def on_replay(
        self,
        n: int,
        *,
        last_n: int,
        voucher: Request | None,
        paid_max: int | None = None,
        spent: int | None = None,
    ) -> Replay:
        """An unsigned REPLAY refusal of our request `n`, with the payee's resync details
        (specs/protocol.md 15).

        The refusal is unsigned, so it never proves that `n` was not charged: the request
        stays in flight (the caller re-sends it once, then abandons it: claimable), and
        ``spent`` is never taken from the details. The payer adopts ``last_n`` (numbers
        only grow; a lying payee can only exhaust them) and, from the voucher only if it
        carries **our own** signature, its ``paid`` (so that it never signs a slice below
        the payee's ``paid_max``). The voucher also tells whether we lost state: if we
        signed it with a number above our ``last_n``, with `n` and another hash, or with a
        ``paid`` above the start of `n`'s slice, then `n` was signed in ignorance of it:
        it is dropped (`Replay.SUPERSEDED`). In those cases, and when the voucher's
        ``paid`` is above ours, ``forgotten`` is raised to the part of the voucher's
        ``paid`` we cannot account for (the payee may have charged it on requests we
        forgot): all of it but what our receipts charged (``spent``), the uncharged rest
        of slices answered by a signed response (``released``: they passed the payee's
        slice rule, so no other charge lies in them) and the abandoned prices a jump may
        still take. A refusal naming a request that is not outstanding is not read
        (protocol.md 5.4): nothing is adopted from it.

        Args:
            n: the number of the refused request.
            last_n: the payee's ``last_n`` (untrusted).
            voucher: the payee's newest checked voucher, decoded from details["voucher"],
                or None.
            paid_max: the payee's ``paid_max`` if the details carry it; it must then equal
                the voucher's ``paid`` (0 without a voucher).
            spent: the payee's ``spent`` if the details carry it: informative only. It
                must be an amount, and is neither adopted nor compared with anything: it
                may exceed ``paid_max`` (after a failed deferred check, protocol.md 13.4 c,
                the payee charged more than its checked voucher pays).

        Returns:
            `Replay.IN_DOUBT`, `Replay.SUPERSEDED` or `Replay.UNKNOWN` (`n` is neither in
            flight nor abandoned: nothing is checked or adopted).

        Raises:
            RemoteProtocolError: the voucher is not ours or the numbers are inconsistent;
                nothing was adopted and the request stays as it was.
        """
        pending = self.in_flight.get(n) or self.abandoned.get(n)
        if pending is None:
            return Replay.UNKNOWN  # not outstanding: the refusal is not read (5.4)
        if not _is_uint(last_n, MAX_U64):
            raise RemoteProtocolError(
                "resync last_n must be a request number", code=ErrorCode.MALFORMED
            )
        if spent is not None and not _is_uint(spent, MAX_YOCTO):
            raise RemoteProtocolError("resync spent must be an amount", code=ErrorCode.MALFORMED)
        if voucher is not None:
            if (
                not isinstance(voucher, Request)
                or voucher.ledger != self.ledger
                or voucher.channel != self.channel
                or not voucher.verify(self.payer)
            ):
                raise RemoteProtocolError(
                    "resync voucher is not ours", code=ErrorCode.INVALID_SIGNATURE
                )
            if voucher.n > last_n:
                raise RemoteProtocolError(
                    f"resync voucher n={voucher.n} is above last_n={last_n}",
                    code=ErrorCode.MALFORMED,
                )
        shown = voucher.paid if voucher is not None else 0
        if paid_max is not None and (not _is_uint(paid_max, MAX_YOCTO) or paid_max != shown):
            raise RemoteProtocolError(
                "resync paid_max is not the voucher's paid", code=ErrorCode.MALFORMED
            )
        outcome = Replay.IN_DOUBT
        if voucher is not None:
            mine = pending.request
            superseded = (
                voucher.n > self.last_n
                or (voucher.n == mine.n and voucher.hash != mine.hash)
                or (voucher.n < mine.n and voucher.paid > mine.paid - mine.price)
            )
            if superseded:
                outcome = Replay.SUPERSEDED
                self.in_flight.pop(n, None)
                self.abandoned.pop(n, None)
                self._settle_abandoned()
            if superseded or voucher.paid > self.paid:
                # Slices we signed and forgot: the payee may have charged them. We account
                # for our receipts' charges, the uncharged rest of slices with a signed
                # answer, and the abandoned prices a jump may still take (protocol.md 15
                # step 4); never for in-flight or superseded slices, nor unsigned refusals.
                abandoned = sum(p.price for p in self.abandoned.values())
                accounted = self.spent - self.absorbed + self.released + abandoned
                self.forgotten = max(self.forgotten, voucher.paid - accounted)
                self._settle_abandoned()
            self.paid = max(self.paid, voucher.paid)
        self.last_n = max(self.last_n, last_n)
        return outcome

    def on_resync(self, n: int, details: Mapping[str, Any]) -> Replay:
        """An unsigned refusal of our request `n` carrying resync details: a REPLAY, or a
        PAYMENT_REQUIRED of the slice rule (protocol.md 13.2 check 5'), read as §15 says.

        `details` is the refusal's details map as received. `parse_resync` checks its
        shape; `on_replay` then checks the voucher against our own key and adopts what it
        may (``spent`` never).

        Returns:
            As `on_replay`.

        Raises:
            RemoteProtocolError: the details are unusable (MALFORMED) or the voucher is not
                ours (INVALID_SIGNATURE); nothing was adopted and the request stays as it
                was (the caller treats the refusal as a REPLAY without details: in doubt).
        """
        resync = parse_resync(details)
        return self.on_replay(
            n,
            last_n=resync.last_n,
            voucher=resync.voucher,
            paid_max=resync.paid_max,
            spent=resync.spent,
        )


@dataclass(frozen=True, slots=True)
class Resync:
    """Resync details (protocol.md 15) as a payer reads them, checked in shape only.

    ``spent`` is informative: no rule adopts it or compares it with ``paid_max``.
    """

    last_n: int
    spent: int
    paid_max: int
    voucher: Request | None


def parse_resync(details: Mapping[str, Any]) -> Resync:
    """Read the resync details of a REPLAY or slice-rule PAYMENT_REQUIRED (protocol.md 15).

    ``last_n`` (a request number or 0), ``spent`` and ``paid_max`` (amounts) must be
    present; ``voucher``, when present, must be the bytes of a request frame: sent with an
    empty body, but one with a body is read the same (only its signed fields and signature
    count; the body is ignored). Other keys (e.g. PAYMENT_REQUIRED's ``price``) are ignored
    here. Whether the voucher is ours and
    agrees with ``paid_max`` is `PayerChannel.on_replay`'s check.

    Raises:
        RemoteProtocolError: code MALFORMED, a key missing or of the wrong type, or a
            voucher that is not a valid request frame.
    """
    last_n, spent, paid_max = details.get("last_n"), details.get("spent"), details.get("paid_max")
    if not _is_uint(last_n, MAX_U64):
        raise RemoteProtocolError(
            "resync last_n must be a request number", code=ErrorCode.MALFORMED
        )
    if not _is_uint(spent, MAX_YOCTO):
        raise RemoteProtocolError("resync spent must be an amount", code=ErrorCode.MALFORMED)
    if not _is_uint(paid_max, MAX_YOCTO):
        raise RemoteProtocolError("resync paid_max must be an amount", code=ErrorCode.MALFORMED)
    raw = details.get("voucher")
    voucher: Request | None = None
    if raw is not None or "voucher" in details:
        if not isinstance(raw, bytes):
            raise RemoteProtocolError(
                "resync voucher must be a request frame", code=ErrorCode.MALFORMED
            )
        try:
            decoded = decode_frame(raw)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(
                f"resync voucher is not a valid frame: {exc.message}", code=ErrorCode.MALFORMED
            ) from None
        if not isinstance(decoded, Request):
            raise RemoteProtocolError(
                "resync voucher must be a request frame", code=ErrorCode.MALFORMED
            )
        voucher = decoded
    assert isinstance(last_n, int) and isinstance(spent, int) and isinstance(paid_max, int)
    return Resync(last_n=last_n, spent=spent, paid_max=paid_max, voucher=voucher)


def _is_uint(value: object, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
