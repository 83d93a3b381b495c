"""Unit tests for p2pay.core.channel: payee admission and payer receipt accounting."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from p2pay.core.channel import (
    Admit,
    ChannelStatus,
    PayeeChannel,
    PayerChannel,
    Refuse,
    Replay,
    parse_resync,
)
from p2pay.core.errors import (
    ErrorCode,
    InsufficientDeposit,
    LocalProtocolError,
    RemoteProtocolError,
)
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    STATUS_OK,
    Request,
    Response,
    blake2b256,
    decode_frame,
    refusal_body,
)

ALICE = Keypair.from_seed(bytes([1]) * 32)  # payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # payee
CAROL = Keypair.from_seed(bytes([3]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)

LEDGER = b"p2pay-test-ledger"
CHANNEL = blake2b256(b"channel alice->bob")
OTHER_CHANNEL = blake2b256(b"channel carol->bob")
NOW = 1_700_000_000_000
LATER = NOW + 60_000
PRICE = 10
DEPOSIT = 100
MAX_BODY = 1024


def payee(deposit: int = DEPOSIT, *, limit: int = 0) -> PayeeChannel:
    """A payee channel; `limit` is its unverified_credit_limit (0: check every voucher, the
    order of specs/protocol.md 13.2 these tests pin; deferred checks are tested below)."""
    return PayeeChannel(
        ledger=LEDGER,
        channel=CHANNEL,
        payer=ALICE.public,
        payee=BOB.public,
        deposit=deposit,
        unverified_credit_limit=limit,
    )


def payer(deposit: int = DEPOSIT) -> PayerChannel:
    return PayerChannel(
        ledger=LEDGER, channel=CHANNEL, payer=ALICE.public, payee=BOB.public, deposit=deposit
    )


def request(
    n: int = 1,
    paid: int = PRICE,
    *,
    price: int = PRICE,
    key: Keypair = ALICE,
    ledger: bytes = LEDGER,
    channel: bytes = CHANNEL,
    service: str = "echo",
    body: bytes = b"hello",
    deadline: int = LATER,
) -> Request:
    return Request.create(
        key,
        ledger=ledger,
        channel=channel,
        n=n,
        paid=paid,
        price=price,
        service=service,
        body=body,
        deadline=deadline,
    )


def admit(
    channel: PayeeChannel,
    req: Request,
    *,
    peer: bytes = ALICE.public,
    price: int | None = PRICE,
    max_body: int = MAX_BODY,
    now: int = NOW,
    signature_ok: bool | None = None,
) -> Admit | Refuse:
    return channel.admit(
        req, peer=peer, price=price, max_body=max_body, now=now, signature_ok=signature_ok
    )


def snapshot(channel: PayeeChannel | PayerChannel) -> dict[str, Any]:
    state = {f.name: getattr(channel, f.name) for f in dataclasses.fields(channel)}
    for key, value in state.items():
        if isinstance(value, dict):
            state[key] = dict(value)
    return state


def receipt(
    req: Request,
    *,
    price: int,
    spent: int,
    status: str = STATUS_OK,
    key: Keypair = BOB,
    body: bytes = b"answer",
) -> Response:
    return Response.create(key, request=req, status=status, price=price, spent=spent, body=body)


def refusal_receipt(req: Request, code: ErrorCode, spent: int) -> Response:
    return Response.create(
        BOB, request=req, status=code.value, price=0, spent=spent, body=refusal_body("no")
    )


# ============================================================================ payee


def test_admit_reserves_then_complete_charges() -> None:
    ch = payee()
    decision = admit(ch, request(1, PRICE))
    assert decision == Admit(n=1, price=PRICE, voucher_improved=True)
    assert (ch.last_n, ch.paid_max, ch.spent, ch.reserved) == (1, PRICE, 0, PRICE)
    assert ch.pending == {1: PRICE}
    assert ch.credit == 0
    assert ch.best == request(1, PRICE)
    assert tuple(ch.complete(1, ok=True)) == (PRICE, PRICE)
    assert (ch.spent, ch.reserved, ch.pending, ch.credit) == (PRICE, 0, {}, 0)
    assert ch.unredeemed == PRICE


def test_complete_failure_refunds_the_reservation() -> None:
    ch = payee()
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    assert tuple(ch.complete(1, ok=False)) == (0, 0)
    assert (ch.spent, ch.reserved, ch.credit) == (0, 0, PRICE)
    # v2: the refunded slice is never reused (it goes back to the payer at close) ...
    reused = admit(ch, request(2, PRICE))
    assert isinstance(reused, Refuse) and reused.code is ErrorCode.PAYMENT_REQUIRED
    # unsigned (N1: a signed refusal of a slice is refundable on the ledger), n not consumed
    assert not reused.authenticated and reused.details["paid_max"] == PRICE
    assert ch.last_n == 1
    # ... the next request takes the next slice
    decision = admit(ch, request(3, 2 * PRICE))
    assert decision == Admit(n=3, price=PRICE, voucher_improved=True)


def test_complete_after_the_deadline_charges_nothing() -> None:
    """C-4, issue 13 item 3: a handler that finishes after the deadline is not charged,
    whatever it returned; the reservation is released and the node sends a signed
    DEADLINE_EXCEEDED. Before v2, `complete` charged it (the deadline was only checked at
    admission)."""
    ch = payee()
    assert isinstance(admit(ch, request(1, PRICE, deadline=LATER)), Admit)
    assert isinstance(admit(ch, request(2, 2 * PRICE, deadline=LATER)), Admit)
    assert ch.deadlines == {1: LATER, 2: LATER}
    late = ch.complete(1, ok=True, now=LATER + 1)
    assert (late.charged, late.spent, late.refusal) == (0, 0, ErrorCode.DEADLINE_EXCEEDED)
    assert (ch.spent, ch.reserved, ch.pending, ch.deadlines) == (0, PRICE, {2: PRICE}, {2: LATER})
    on_time = ch.complete(2, ok=True, now=LATER)  # deadline == now: still in time
    assert (on_time.charged, on_time.spent, on_time.refusal) == (PRICE, PRICE, None)
    assert (ch.spent, ch.reserved, ch.deadlines) == (PRICE, 0, {})
    # a failed handler after the deadline is late too (the refusal says why)
    assert isinstance(admit(ch, request(3, 3 * PRICE, deadline=LATER)), Admit)
    assert ch.complete(3, ok=False, now=LATER + 5).refusal is ErrorCode.DEADLINE_EXCEEDED
    assert ch.spent == PRICE


def test_complete_after_a_close_began_charges_nothing() -> None:
    """Attack round 17 (protocol.md 13.3 "closing"): a request admitted while the channel
    was open whose handler finishes once the payer started a close is not charged: its
    charge could come after the payee's closing redeems, and the close's end would give
    the price back to the payer with the answer. A failure is a failure as before."""
    ch = payee()
    for n in (1, 2, 3):
        assert isinstance(admit(ch, request(n, n * PRICE)), Admit)
    assert tuple(ch.complete(1, ok=True)) == (PRICE, PRICE)
    ch.status = ChannelStatus.CLOSING
    closed = ch.complete(2, ok=True, now=LATER)
    assert (closed.charged, closed.spent, closed.refusal) == (0, PRICE, ErrorCode.CHANNEL_CLOSED)
    failed = ch.complete(3, ok=False, now=LATER)
    assert (failed.charged, failed.refusal) == (0, None)
    assert (ch.spent, ch.reserved, ch.pending) == (PRICE, 0, {})


def test_complete_refuses_unknown_or_repeated_n() -> None:
    ch = payee()
    with pytest.raises(LocalProtocolError):
        ch.complete(1, ok=True)
    admit(ch, request(1, PRICE))
    ch.complete(1, ok=True)
    with pytest.raises(LocalProtocolError):
        ch.complete(1, ok=True)
    assert (ch.spent, ch.reserved) == (PRICE, 0)


def test_answers_to_a_watched_number_are_remembered_while_its_lookup_runs() -> None:
    """claims.md C-6: a claim's lookup watches its request's number, so a request of that
    number answered while it reads the store (completed, or consumed at admission,
    admitted or refused) is not taken for a gap. Only watched numbers are kept, each until
    its last lookup ends."""
    ch = payee()
    for n in (1, 2, 3):
        assert isinstance(admit(ch, request(n, n * PRICE)), Admit)
    two = request(2, 2 * PRICE, body=b"claimed")  # a claim on number 2
    first = ch.watch_completions(two)
    ch.complete(1, ok=True)  # not watched: not kept
    assert not ch.completed_since(1, first) and ch.completed_watched == {}
    ch.complete(2, ok=False)  # refused or late: answered all the same
    assert ch.completed_since(2, first)
    second = ch.watch_completions(two)  # a second lookup of 2, begun after it was answered
    assert not ch.completed_since(2, second)
    ch.unwatch_completions(two)
    assert ch.completed_since(2, first)  # the first lookup still runs
    ch.unwatch_completions(two)
    assert (ch.watched, ch.completed_watched, ch.looked_up) == ({}, {}, {})
    # a stream request consumed at admission while watched: admitted, or refused (signed)
    four = request(4, 4 * PRICE, body=b"claimed")
    start = ch.watch_completions(four)
    late = admit(ch, request(4, 4 * PRICE, deadline=NOW - 1))
    assert isinstance(late, Refuse) and late.authenticated and ch.last_n == 4
    assert ch.completed_since(4, start)
    ch.unwatch_completions(four)
    five = request(5, 5 * PRICE, body=b"claimed")
    start = ch.watch_completions(five)
    assert isinstance(admit(ch, request(5, 5 * PRICE)), Admit)
    assert ch.completed_since(5, start)
    ch.unwatch_completions(five)
    ch.complete(3, ok=True)
    assert (ch.watched, ch.completed_watched, ch.looked_up, ch.overlaps) == ({}, {}, {}, {})
    assert (ch.spent, ch.reserved) == (2 * PRICE, PRICE)


def test_a_request_consumed_during_a_lookup_in_conflict_with_the_claim_is_kept() -> None:
    """Attack round 15: while a claim on n=2 (slice (PRICE, 2 PRICE]) is looked up, the
    payer sends n=3 with that same slice. It is another number, so no answer to 2; but it
    is in tiling conflict with the claimed request (claims.md 2): kept as evidence. One
    that is not in conflict is not kept."""
    ch = payee()
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    claimed = request(2, 2 * PRICE)
    ch.watch_completions(claimed)
    clean = request(3, 3 * PRICE)  # slice (2 PRICE, 3 PRICE]: after the claimed one
    assert isinstance(admit(ch, clean), Admit)
    assert ch.overlap_seen(claimed) is None
    ch.unwatch_completions(claimed)
    claimed = request(4, 4 * PRICE)  # slice (3 PRICE, 4 PRICE]
    ch.watch_completions(claimed)
    twin = request(5, 4 * PRICE, price=PRICE)  # slice (3 PRICE, 4 PRICE] again, n=5
    assert isinstance(admit(ch, twin), Admit)
    assert ch.overlap_seen(claimed) == twin
    ch.unwatch_completions(claimed)
    assert ch.overlap_seen(claimed) is None and ch.looked_up == {}


def test_reservations_count_against_credit() -> None:
    ch = payee()
    assert isinstance(admit(ch, request(1, 10)), Admit)
    assert isinstance(admit(ch, request(2, 20)), Admit)
    assert (ch.reserved, ch.credit) == (20, 0)
    # a slice overlapping the reserved ones: refused, nothing reserved
    third = admit(ch, request(3, 20))
    assert isinstance(third, Refuse) and third.code is ErrorCode.PAYMENT_REQUIRED
    assert not third.authenticated and third.details == {
        "price": PRICE,
        "paid_max": 20,
        "spent": 0,
        "last_n": 2,
        "voucher": request(2, 20).voucher_frame(),  # without its body (protocol.md 15)
    }
    assert (ch.reserved, ch.last_n) == (20, 2)
    # out-of-order completion: 2 succeeds, 1 fails
    assert tuple(ch.complete(2, ok=True)) == (PRICE, PRICE)
    assert tuple(ch.complete(1, ok=False)) == (0, PRICE)
    assert (ch.spent, ch.reserved, ch.credit) == (PRICE, 0, 10)
    # the credit 1 left is not reused: only a fresh slice above 20 is served
    assert isinstance(admit(ch, request(4, 20)), Refuse)
    assert isinstance(admit(ch, request(5, 30)), Admit)


def test_price_charged_is_the_service_price_not_the_request_cap() -> None:
    ch = payee()
    decision = admit(ch, request(1, 50, price=50), price=7)
    assert decision == Admit(n=1, price=7, voucher_improved=True)
    assert tuple(ch.complete(1, ok=True)) == (7, 7)
    assert ch.credit == 43


def test_older_voucher_never_lowers_paid_max() -> None:
    ch = payee()
    admit(ch, request(1, 40))
    ch.complete(1, ok=True)
    decision = admit(ch, request(2, 30))  # lower cumulative paid: refused, adds nothing
    assert isinstance(decision, Refuse) and decision.code is ErrorCode.PAYMENT_REQUIRED
    assert decision.voucher_improved is False
    assert ch.paid_max == 40
    assert ch.best == request(1, 40)


@pytest.mark.parametrize(
    ("paid", "price", "admitted"),
    [
        (40, PRICE, False),  # slice (30, 40]: overlaps the first (0, 40] entirely
        (45, PRICE, False),  # (35, 45] straddles paid_max 40
        (49, PRICE, False),  # (39, 49]: one yocto of overlap is enough
        (50, PRICE, True),  # (40, 50]: starts exactly at paid_max
        (90, PRICE, True),  # a gap below the slice is fine (the payer's to claim back)
        (45, 5, True),  # (40, 45] with a request price of 5 (the service costs 10: below)
    ],
)
def test_payee_refuses_overlapping_slices(paid: int, price: int, admitted: bool) -> None:
    """Protocol v2, claims.md 2: a fresh request is admitted only if its slice
    (paid - price, paid] starts at or above paid_max; else PAYMENT_REQUIRED, unsigned (attack
    N1: a signed refusal lets the payer have the slice refunded on the ledger, and this slice
    overlaps one the payee charged), n not consumed, with the resync details (a payer that
    lost state re-signs above paid_max)."""
    ch = payee()
    admit(ch, request(1, 40, price=40), price=40)
    ch.complete(1, ok=True)
    decision = admit(ch, request(2, paid, price=price), price=min(price, PRICE))
    assert isinstance(decision, Admit) is admitted, decision
    if not admitted:
        assert isinstance(decision, Refuse)
        assert decision.code is ErrorCode.PAYMENT_REQUIRED and not decision.authenticated
        assert decision.details == {
            "price": min(price, PRICE),
            "paid_max": 40,
            "spent": 40,
            "last_n": 1,
            "voucher": request(1, 40, price=40).voucher_frame(),
        }
        assert (ch.last_n, ch.reserved) == (1, 0)  # n not consumed, nothing reserved
        assert ch.paid_max == 40  # the voucher is not kept: the refusal changes nothing


# ---------------------------------------------------------------------------- refusals


def assert_refused(decision: Admit | Refuse, code: ErrorCode, *, authenticated: bool) -> Refuse:
    assert isinstance(decision, Refuse), decision
    assert decision.code is code, decision
    assert decision.authenticated is authenticated
    assert decision.message
    return decision


UNAUTHENTICATED = [
    ("wrong ledger", ErrorCode.WRONG_LEDGER, {"req": {"ledger": b"another-ledger"}}),
    ("other channel", ErrorCode.UNKNOWN_CHANNEL, {"req": {"channel": OTHER_CHANNEL}}),
    ("wrong peer", ErrorCode.UNAUTHORIZED, {"admit": {"peer": MALLORY.public}}),
    ("bad signature", ErrorCode.INVALID_SIGNATURE, {"req": {"key": MALLORY}}),
    ("caller says bad signature", ErrorCode.INVALID_SIGNATURE, {"admit": {"signature_ok": False}}),
]


@pytest.mark.parametrize(
    ("case", "code", "change"), UNAUTHENTICATED, ids=[c[0] for c in UNAUTHENTICATED]
)
def test_unauthenticated_refusals_change_nothing(
    case: str, code: ErrorCode, change: dict[str, dict[str, Any]]
) -> None:
    ch = payee()
    before = snapshot(ch)
    decision = admit(ch, request(1, PRICE, **change.get("req", {})), **change.get("admit", {}))
    refused = assert_refused(decision, code, authenticated=False)
    assert refused.voucher_improved is False
    assert snapshot(ch) == before
    # n was not consumed: the genuine request with the same n is served
    assert isinstance(admit(ch, request(1, PRICE)), Admit)


def test_wrong_peer_replaying_the_payers_frame_is_unauthorized() -> None:
    ch = payee()
    genuine = request(1, PRICE)
    assert isinstance(admit(ch, genuine), Admit)
    before = snapshot(ch)
    copy = decode_frame(genuine.to_frame())
    assert isinstance(copy, Request)
    assert_refused(
        admit(ch, copy, peer=MALLORY.public), ErrorCode.UNAUTHORIZED, authenticated=False
    )
    assert snapshot(ch) == before


def test_tampered_signature_is_refused() -> None:
    ch = payee()
    good = request(1, PRICE)
    sig = bytearray(good.signature)
    sig[0] ^= 1
    bad = good.with_signature(bytes(sig))
    assert_refused(admit(ch, bad), ErrorCode.INVALID_SIGNATURE, authenticated=False)
    # a payer-signed voucher with a higher paid but a signature from someone else
    forged = request(1, DEPOSIT, key=MALLORY)
    assert_refused(admit(ch, forged), ErrorCode.INVALID_SIGNATURE, authenticated=False)
    assert (ch.last_n, ch.paid_max) == (0, 0)


def test_replay_is_refused_with_resync_details() -> None:
    ch = payee()
    first = request(1, 30)
    admit(ch, first)
    ch.complete(1, ok=True)
    assert isinstance(admit(ch, request(2, 40)), Admit)  # reserved, not complete
    before = snapshot(ch)
    for stale in (first, request(1, 30), request(2, 90), request(1, 99)):
        refused = assert_refused(admit(ch, stale), ErrorCode.REPLAY, authenticated=False)
        assert refused.details["last_n"] == 2
        assert refused.details["spent"] == PRICE
        assert refused.details["paid_max"] == 40
        voucher = decode_frame(refused.details["voucher"])
        assert voucher == request(2, 40) and voucher.verify(ALICE.public)
        assert snapshot(ch) == before  # a replayed higher voucher is not taken either


def test_replay_before_any_voucher_has_no_voucher_detail() -> None:
    ch = payee()
    assert isinstance(admit(ch, request(1, 0, price=0), price=0), Admit)
    refused = assert_refused(admit(ch, request(1, 0)), ErrorCode.REPLAY, authenticated=False)
    assert refused.details == {"last_n": 1, "spent": 0, "paid_max": 0}


def test_paid_beyond_deposit_is_refused_and_not_kept() -> None:
    """Unsigned, n not consumed (N1): paid_max cannot consume a slice above the deposit, so
    a signed refusal of it would be refundable after a top-up while a later request takes
    the same slice."""
    ch = payee()
    refused = assert_refused(
        admit(ch, request(1, DEPOSIT + 1)), ErrorCode.INSUFFICIENT_DEPOSIT, authenticated=False
    )
    assert refused.details == {"deposit": DEPOSIT, "paid_max": 0, "spent": 0}
    assert refused.voucher_improved is False
    assert (ch.last_n, ch.paid_max, ch.best, ch.reserved) == (0, 0, None, 0)
    # exactly the deposit is fine
    assert isinstance(admit(ch, request(2, DEPOSIT)), Admit)
    assert ch.paid_max == DEPOSIT


def test_top_up_raises_the_ceiling() -> None:
    ch = payee()
    assert_refused(admit(ch, request(1, 150)), ErrorCode.INSUFFICIENT_DEPOSIT, authenticated=False)
    ch.deposit = 200
    assert isinstance(admit(ch, request(2, 150)), Admit)
    assert ch.paid_max == 150


@pytest.mark.parametrize("status", [ChannelStatus.CLOSING, ChannelStatus.CLOSED])
def test_closed_channel_refuses_but_keeps_the_voucher(status: ChannelStatus) -> None:
    ch = payee()
    ch.status = status
    refused = assert_refused(
        admit(ch, request(1, 30)), ErrorCode.CHANNEL_CLOSED, authenticated=True
    )
    assert refused.voucher_improved is True
    assert (ch.last_n, ch.paid_max, ch.reserved) == (1, 30, 0)


def test_deadline() -> None:
    ch = payee()
    assert isinstance(admit(ch, request(1, PRICE, deadline=NOW)), Admit)  # deadline == now: ok
    refused = assert_refused(
        admit(ch, request(2, 2 * PRICE, deadline=NOW - 1)),
        ErrorCode.DEADLINE_EXCEEDED,
        authenticated=True,
    )
    assert refused.voucher_improved is True
    assert (ch.last_n, ch.paid_max, ch.reserved) == (2, 2 * PRICE, PRICE)


def test_unknown_service() -> None:
    ch = payee()
    assert_refused(admit(ch, request(1), price=None), ErrorCode.UNKNOWN_SERVICE, authenticated=True)
    assert (ch.last_n, ch.reserved) == (1, 0)


def test_body_too_large() -> None:
    ch = payee()
    body = b"x" * 11
    assert isinstance(admit(ch, request(1, body=body), max_body=11), Admit)
    refused = assert_refused(
        admit(ch, request(2, 2 * PRICE, body=body), max_body=10),
        ErrorCode.BODY_TOO_LARGE,
        authenticated=True,
    )
    assert refused.details == {"max_body": 10}
    assert ch.last_n == 2


def test_body_hash_mismatch() -> None:
    ch = payee()
    good = request(1)
    swapped = Request.from_signed(good.signing_bytes, good.signature, b"another body")
    assert swapped.verify(ALICE.public)  # the voucher is genuine, only the body is not
    assert_refused(admit(ch, swapped), ErrorCode.MALFORMED, authenticated=True)
    assert (ch.last_n, ch.paid_max, ch.reserved) == (1, PRICE, 0)


def test_price_above_the_requests_price() -> None:
    ch = payee()
    refused = assert_refused(
        admit(ch, request(1, 50, price=5), price=PRICE),
        ErrorCode.PAYMENT_REQUIRED,
        authenticated=True,
    )
    assert refused.details["price"] == PRICE
    assert (ch.last_n, ch.paid_max, ch.reserved) == (1, 50, 0)


def test_credit_too_low() -> None:
    ch = payee()
    refused = assert_refused(
        admit(ch, request(1, PRICE - 1)), ErrorCode.PAYMENT_REQUIRED, authenticated=False
    )
    # paid - price < 0 = paid_max: the slice rule refuses it first, unsigned, n not consumed
    assert refused.details == {"price": PRICE, "paid_max": 0, "spent": 0, "last_n": 0}
    assert refused.voucher_improved is False
    assert (ch.last_n, ch.paid_max, ch.reserved, ch.spent) == (0, 0, 0, 0)


def test_authenticated_refusal_consumes_n() -> None:
    ch = payee()
    admit(ch, request(1, PRICE), price=None)  # UNKNOWN_SERVICE, authenticated
    assert_refused(admit(ch, request(1, PRICE)), ErrorCode.REPLAY, authenticated=False)
    assert isinstance(admit(ch, request(2, 2 * PRICE)), Admit)  # the next slice


def test_request_numbers_may_skip() -> None:
    ch = payee()
    assert isinstance(admit(ch, request(5, PRICE)), Admit)
    assert_refused(admit(ch, request(3, 2 * PRICE)), ErrorCode.REPLAY, authenticated=False)
    assert isinstance(admit(ch, request(9, 2 * PRICE)), Admit)


@pytest.mark.parametrize(
    ("price", "max_body"), [(-1, MAX_BODY), (True, MAX_BODY), (1.5, MAX_BODY), (PRICE, -1)]
)
def test_admit_refuses_caller_misuse(price: Any, max_body: Any) -> None:
    ch = payee()
    before = snapshot(ch)
    with pytest.raises(LocalProtocolError):
        admit(ch, request(1, PRICE), price=price, max_body=max_body)
    assert snapshot(ch) == before


def test_deadline_too_far_ahead() -> None:
    ch = payee()
    decision = ch.admit(
        request(1, PRICE, deadline=LATER),
        peer=ALICE.public,
        price=PRICE,
        max_body=MAX_BODY,
        now=NOW,
        max_deadline=LATER - 1,
    )
    refused = assert_refused(decision, ErrorCode.DEADLINE_EXCEEDED, authenticated=True)
    assert refused.details == {"max_deadline": LATER - 1}
    assert (ch.last_n, ch.paid_max, ch.reserved) == (1, PRICE, 0)
    decision = ch.admit(
        request(2, 2 * PRICE, deadline=LATER),
        peer=ALICE.public,
        price=PRICE,
        max_body=MAX_BODY,
        now=NOW,
        max_deadline=LATER,
    )
    assert isinstance(decision, Admit)


# ---------------------------------------------------------------- deferred checks (13.4)


def test_deferred_bad_signatures_get_at_most_the_limit() -> None:
    """A payer sending bad signatures on its own stream is served at most the limit's
    worth, then refused INVALID_SIGNATURE; only its checked voucher is ever redeemable."""
    limit = 3 * PRICE
    ch = payee(DEPOSIT, limit=limit)
    assert isinstance(admit(ch, request(1, PRICE)), Admit)  # the first one is checked
    assert ch.verified is ch.best
    ch.complete(1, ok=True)
    served = 0
    answers = []
    for n in range(2, 10):
        decision = admit(ch, request(n, n * PRICE, key=MALLORY))
        answers.append(decision)
        if isinstance(decision, Admit):
            served += 1
            ch.complete(n, ok=True)
        assert ch.spent + ch.reserved <= ch.verified_paid + limit  # INV-21
    assert 0 < served * PRICE <= limit
    refused = [d for d in answers if isinstance(d, Refuse)]
    assert refused and {d.code for d in refused} == {ErrorCode.INVALID_SIGNATURE}
    assert ch.deferral_revoked
    voucher = ch.verified_voucher()
    assert voucher == request(1, PRICE) and voucher.verify(ALICE.public)
    assert ch.best is voucher  # the bad one is dropped, never redeemed
    assert ch.spent - voucher.paid == served * PRICE <= limit  # the payee's loss
    # no more unchecked credit; a voucher of ALICE's covering everything is served
    bad = admit(ch, request(20, 95, key=MALLORY))
    assert_refused(bad, ErrorCode.INVALID_SIGNATURE, authenticated=False)
    good = request(21, ch.spent + PRICE)
    assert isinstance(admit(ch, good), Admit)
    assert ch.verified is good and ch.best is good


def test_stored_requests_above_the_checked_voucher_are_checked_after_a_restart() -> None:
    """13.4 rule e: a restarted payee checks the stored requests numbered above its
    stored checked voucher (rule d's list, rebuilt); those at or below it, of another
    channel, are not its business. A bad one revokes deferral."""
    ch = payee(DEPOSIT, limit=DEPOSIT)
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    ch.complete(1, ok=True)
    good = [request(n, n * PRICE) for n in (2, 3)]
    assert ch.check_stored(good) and not ch.deferral_revoked
    # a bad one at or below the checked voucher, or of another channel: not looked at
    below = request(1, PRICE, key=MALLORY)
    other = dataclasses.replace(request(4, 4 * PRICE, key=MALLORY), channel=b"\x09" * 32)
    assert ch.check_stored([below, other]) and not ch.deferral_revoked
    assert not ch.check_stored([*good, request(4, 4 * PRICE, key=MALLORY)])
    assert ch.deferral_revoked and ch._allowance() == 0  # no more unchecked credit


def test_deferred_honest_vouchers_are_checked_before_use() -> None:
    ch = payee(DEPOSIT, limit=DEPOSIT)
    for n in range(1, 5):
        assert isinstance(admit(ch, request(n, n * PRICE)), Admit)
        ch.complete(n, ok=True)
    assert ch.verified == request(1, PRICE) and ch.best == request(4, 4 * PRICE)
    assert ch.unverified_credit == 3 * PRICE
    voucher = ch.verified_voucher()  # what redeem and close use
    assert voucher is ch.best and ch.verified is voucher and not ch.deferral_revoked
    assert ch.unverified_credit == 0


def test_deferred_check_when_the_limit_would_be_passed() -> None:
    ch = payee(DEPOSIT, limit=2 * PRICE)
    for n in range(1, 8):
        assert isinstance(admit(ch, request(n, n * PRICE)), Admit)
        assert ch.spent + ch.reserved <= ch.verified_paid + 2 * PRICE
    # 1 checked, 2-3 deferred, 4 checked (it would pass the limit), 5-6 deferred, 7 checked
    assert ch.verified == request(7, 7 * PRICE)


def test_deferred_requests_that_would_be_refused_are_checked_first() -> None:
    ch = payee(DEPOSIT, limit=DEPOSIT)
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    before = snapshot(ch)
    late = request(2, 2 * PRICE, key=MALLORY, deadline=NOW - 1)
    assert_refused(admit(ch, late), ErrorCode.INVALID_SIGNATURE, authenticated=False)
    assert snapshot(ch) == {**before, "deferral_revoked": True}  # INV-7's one exception


def test_an_earlier_bad_voucher_is_caught_by_a_later_check() -> None:
    """A bad voucher admitted unchecked, then an honest one below it: v2 refuses the lower
    slice before any credit is extended (PAYMENT_REQUIRED, unsigned); the bad voucher is
    caught when checked before any use: `best` falls back to the checked voucher. An
    honest voucher above it covers everything."""
    ch = payee(DEPOSIT, limit=PRICE)
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    assert isinstance(admit(ch, request(2, 5 * PRICE, key=MALLORY)), Admit)  # unchecked
    decision = admit(ch, request(3, PRICE))  # below paid_max: no credit on it
    assert_refused(decision, ErrorCode.PAYMENT_REQUIRED, authenticated=False)
    assert ch.last_n == 2 and ch.reserved == 2 * PRICE and ch.paid_max == 5 * PRICE
    checked = dataclasses.replace(ch)
    assert checked.verified_voucher() == request(1, PRICE) == checked.best
    assert checked.deferral_revoked
    above = request(4, 6 * PRICE)
    assert isinstance(admit(ch, above), Admit)  # checked: it is newer than the bad one
    assert ch.verified is above and ch.best is above


def test_resync_details_show_only_a_checked_voucher() -> None:
    ch = payee(DEPOSIT, limit=DEPOSIT)
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    assert isinstance(admit(ch, request(2, 2 * PRICE, key=MALLORY)), Admit)  # unchecked
    before = snapshot(ch)
    refused = admit(ch, request(1, PRICE))
    assert_refused(refused, ErrorCode.REPLAY, authenticated=False)
    assert isinstance(refused, Refuse)
    assert decode_frame(refused.details["voucher"]) == request(1, PRICE)
    assert refused.details["paid_max"] == PRICE
    assert snapshot(ch) == before  # INV-7: a REPLAY changes nothing
    assert isinstance(admit(ch, request(3, 3 * PRICE)), Admit)
    replay = admit(ch, request(3, 3 * PRICE))
    assert isinstance(replay, Refuse)
    assert decode_frame(replay.details["voucher"]) == request(3, 3 * PRICE)


def test_deferred_checks_under_eip712() -> None:
    """On an EVM ledger the same rule holds with EIP-712 signatures (signing.verify_message):
    the payer is the account of its settlement key; MALLORY's key signs the bad vouchers."""
    from p2pay.core.evmsig import EvmKey, evm_ledger_id

    ledger = evm_ledger_id(31337, bytes(range(20)))
    alice, mallory = EvmKey.derive(ALICE), EvmKey.derive(MALLORY)
    ch = PayeeChannel(
        ledger=ledger,
        channel=CHANNEL,
        payer=alice.account,
        payee=EvmKey.derive(BOB).account,
        deposit=DEPOSIT,
        unverified_credit_limit=2 * PRICE,
    )

    def evm_request(n: int, key: EvmKey) -> Request:
        return Request.create(
            key,
            ledger=ledger,
            channel=CHANNEL,
            n=n,
            paid=n * PRICE,
            price=PRICE,
            service="echo",
            body=b"x",
            deadline=NOW + 60_000,
        )

    decisions = []
    for n, key in ((1, alice), (2, mallory), (3, mallory), (4, mallory), (5, mallory)):
        decision = ch.admit(
            evm_request(n, key), peer=alice.account, price=PRICE, max_body=MAX_BODY, now=NOW
        )
        decisions.append(decision)
        if isinstance(decision, Admit):
            ch.complete(n, ok=True)
    assert [isinstance(d, Admit) for d in decisions] == [True, True, True, False, False]
    assert ch.deferral_revoked and ch.spent == 3 * PRICE
    voucher = ch.verified_voucher()
    assert voucher is not None and voucher.n == 1 and voucher.verify(alice.account)
    assert ch.spent - voucher.paid == 2 * PRICE  # the limit


def test_limit_zero_checks_every_voucher() -> None:
    ch = payee(DEPOSIT, limit=0)
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    bad = admit(ch, request(2, 2 * PRICE, key=MALLORY))
    assert_refused(bad, ErrorCode.INVALID_SIGNATURE, authenticated=False)
    assert not ch.deferral_revoked and ch.verified is ch.best


def test_signature_ok_true_skips_verification() -> None:
    # A batch verifier that already checked the signature passes the result in.
    ch = payee()
    unsigned = request(1).with_signature(bytes(64))
    assert isinstance(admit(ch, unsigned, signature_ok=True), Admit)


# The refusal order of specs/protocol.md: each case fails its own check and every later
# one, so the code returned must be the first failing check.
ORDER = [
    ErrorCode.WRONG_LEDGER,
    ErrorCode.UNKNOWN_CHANNEL,
    ErrorCode.UNAUTHORIZED,
    ErrorCode.INVALID_SIGNATURE,
    ErrorCode.REPLAY,
    ErrorCode.PAYMENT_REQUIRED,  # the slice rule (unsigned, N1)
    ErrorCode.INSUFFICIENT_DEPOSIT,
    ErrorCode.CHANNEL_CLOSED,
    ErrorCode.DEADLINE_EXCEEDED,
    ErrorCode.UNKNOWN_SERVICE,
    ErrorCode.BODY_TOO_LARGE,
    ErrorCode.MALFORMED,
    ErrorCode.PAYMENT_REQUIRED,  # price above the request's price
]


def _failing_from(index: int) -> tuple[PayeeChannel, Request, dict[str, Any]]:
    """A channel and request that fail check `index` and every check after it."""
    ch = payee()
    fails = set(range(index, len(ORDER)))
    # last_n = 5; paid_max = the deposit when the slice rule must fail (every slice overlaps)
    assert isinstance(admit(ch, request(5, DEPOSIT if 5 in fails else 0, price=0), price=0), Admit)
    ch.complete(5, ok=True)
    # checks 5..12 run on an authenticated request: n above last_n (5, 5'' unsigned)
    n = 3 if 4 in fails else 6
    # INSUFFICIENT_DEPOSIT wins over the rest only if paid > deposit
    paid = DEPOSIT + 1 if 6 in fails else 50
    req = request(
        n,
        paid,
        ledger=b"other" if 0 in fails else LEDGER,
        channel=OTHER_CHANNEL if 1 in fails else CHANNEL,
        key=MALLORY if 3 in fails else ALICE,
        deadline=NOW - 1 if 8 in fails else LATER,
        body=b"x" * 20,
        price=PRICE - 1 if 12 in fails else PRICE,
    )
    if 11 in fails:
        req = Request.from_signed(req.signing_bytes, req.signature, b"y" * 20)
    if 7 in fails:
        ch.status = ChannelStatus.CLOSING
    kwargs: dict[str, Any] = {
        "peer": MALLORY.public if 2 in fails else ALICE.public,
        "price": None if 9 in fails else PRICE,
        "max_body": 10 if 10 in fails else MAX_BODY,
    }
    return ch, req, kwargs


@pytest.mark.parametrize("index", range(len(ORDER)), ids=[f"{i}-{c}" for i, c in enumerate(ORDER)])
def test_refusal_order(index: int) -> None:
    ch, req, kwargs = _failing_from(index)
    decision = admit(ch, req, **kwargs)
    assert isinstance(decision, Refuse)
    assert decision.code is ORDER[index]
    assert decision.authenticated is (index >= 7)
    if index == 12:
        assert "request allows" in decision.message
    if index == 5:
        assert "slice" in decision.message
        assert decision.details["paid_max"] == DEPOSIT  # resync details: re-sign above
        assert decision.details["voucher"] == request(5, DEPOSIT, price=0).voucher_frame()
        assert ch.last_n == 5  # not consumed


def test_failing_from_the_end_passes_everything() -> None:
    ch, req, kwargs = _failing_from(len(ORDER))
    assert isinstance(admit(ch, req, **kwargs), Admit)


# ============================================================================ payer


def test_next_request_signs_the_paid_formula() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"a", price=10, deadline=LATER)
    assert (r1.n, r1.paid, r1.price) == (1, 10, 10)
    assert r1.verify(ALICE.public)
    r2 = ch.next_request(ALICE, service="echo", body=b"b", price=20, deadline=LATER)
    assert (r2.n, r2.paid) == (2, 30)  # slice (10, 30]
    assert ch.outstanding == 30
    assert ch.available == DEPOSIT - 30
    # 1 is refused with a signed refusal (nothing charged): v2 never reuses its slice
    ch.on_response(refusal_receipt(r1, ErrorCode.DEADLINE_EXCEEDED, spent=0))
    r3 = ch.next_request(ALICE, service="echo", body=b"c", price=10, deadline=LATER)
    assert (r3.n, r3.paid) == (3, 40)  # slice (30, 40], not (20, 30]
    ch.on_response(receipt(r2, price=20, spent=20))
    ch.on_response(receipt(r3, price=10, spent=30))
    r4 = ch.next_request(ALICE, service="echo", body=b"d", price=5, deadline=LATER)
    assert (r4.n, r4.paid) == (4, 45)
    assert (ch.paid, ch.spent, ch.last_n) == (45, 30, 4)
    assert ch.available == DEPOSIT - 45


def test_payer_slices_never_overlap() -> None:
    """Whatever happens to its requests (answered, refused, abandoned, refused unsigned,
    REPLAYed), every request a payer signs starts its slice at or above the end of every
    earlier one: no two of them are in tiling conflict (claims.md 2)."""
    ch = payer(10**6)
    signed: list[Request] = []

    def send(price: int) -> Request:
        r = ch.next_request(ALICE, service="echo", body=b"", price=price, deadline=LATER)
        signed.append(r)
        return r

    r = send(10)
    ch.on_response(receipt(r, price=10, spent=10))
    r = send(7)
    ch.on_response(refusal_receipt(r, ErrorCode.UNKNOWN_SERVICE, spent=10))
    r = send(10)
    ch.abandon(r.n)
    r = send(3)
    ch.on_refusal(r.n)  # e.g. an unsigned OVERLOADED
    r = send(10)
    ch.on_replay(r.n, last_n=r.n, voucher=r, paid_max=r.paid)
    send(0)
    send(25)
    for a, b in itertools.pairwise(signed):
        assert b.n == a.n + 1
        assert b.paid - b.price >= a.paid, (a, b)
    assert ch.paid == signed[-1].paid == sum(x.price for x in signed)


def test_paid_never_decreases() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=50, deadline=LATER)
    ch.on_response(refusal_receipt(r1, ErrorCode.UNKNOWN_SERVICE, spent=0))
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=1, deadline=LATER)
    assert r2.paid == 51


def test_deposit_exhaustion_raises_before_signing() -> None:
    ch = payer()
    ch.next_request(ALICE, service="echo", body=b"", price=60, deadline=LATER)
    before = snapshot(ch)

    class RecordingKey:
        public = ALICE.public
        account = ALICE.account
        signed: list[bytes] = []

        def sign(self, message: bytes) -> bytes:
            self.signed.append(message)
            return ALICE.sign(message)

    key = RecordingKey()
    with pytest.raises(InsufficientDeposit) as info:
        ch.next_request(key, service="echo", body=b"", price=41, deadline=LATER)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INSUFFICIENT_DEPOSIT
    assert info.value.details == {"deposit": DEPOSIT, "needed": 101}
    assert key.signed == []
    assert snapshot(ch) == before
    # exactly the deposit is allowed
    r = ch.next_request(key, service="echo", body=b"", price=40, deadline=LATER)  # type: ignore[arg-type]
    assert r.paid == DEPOSIT and len(key.signed) == 1
    assert ch.available == 0


def test_top_up_lets_the_payer_continue() -> None:
    ch = payer()
    with pytest.raises(InsufficientDeposit):
        ch.next_request(ALICE, service="echo", body=b"", price=150, deadline=LATER)
    ch.deposit = 200
    assert ch.next_request(ALICE, service="echo", body=b"", price=150, deadline=LATER).paid == 150


def test_next_request_refuses_misuse() -> None:
    ch = payer()
    with pytest.raises(LocalProtocolError, match="payer"):
        ch.next_request(BOB, service="echo", body=b"", price=1, deadline=LATER)
    ch.status = ChannelStatus.CLOSING
    with pytest.raises(LocalProtocolError) as info:
        ch.next_request(ALICE, service="echo", body=b"", price=1, deadline=LATER)
    assert info.value.code is ErrorCode.CHANNEL_CLOSED
    ch.status = ChannelStatus.OPEN
    for bad_price in (-1, True):
        with pytest.raises(LocalProtocolError):
            ch.next_request(ALICE, service="echo", body=b"", price=bad_price, deadline=LATER)
    assert (ch.last_n, ch.paid, ch.in_flight) == (0, 0, {})


def test_on_response_accepts_a_correct_receipt() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    response = receipt(r1, price=7, spent=7)
    accepted = ch.on_response(decode_frame(response.to_frame()))  # type: ignore[arg-type]
    assert (accepted.n, accepted.charged, accepted.spent) == (1, 7, 7)
    assert accepted.response == response
    assert (ch.spent, ch.in_flight, ch.abandoned) == (7, {}, {})


def _receipt_refused(ch: PayerChannel, response: Response, code: ErrorCode) -> None:
    before = snapshot(ch)
    with pytest.raises(RemoteProtocolError) as info:
        ch.on_response(response)
    assert info.value.code is code
    assert snapshot(ch) == before


def test_on_response_refusals_leave_the_state_unchanged() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    other = request(1, 10, channel=OTHER_CHANNEL)
    bad = ErrorCode.MALFORMED
    # wrong channel, wrong ledger
    _receipt_refused(ch, receipt(other, price=10, spent=10), bad)
    _receipt_refused(ch, receipt(request(1, 10, ledger=b"other"), price=10, spent=10), bad)
    # unknown n
    _receipt_refused(ch, receipt(request(3, 10), price=10, spent=10), bad)
    # right n, another request's hash
    _receipt_refused(ch, receipt(request(1, 11), price=10, spent=10), bad)
    # signed by someone else, or a corrupted signature
    _receipt_refused(ch, receipt(r1, price=10, spent=10, key=MALLORY), ErrorCode.INVALID_SIGNATURE)
    good = receipt(r1, price=10, spent=10)
    _receipt_refused(ch, good.with_signature(bytes(64)), ErrorCode.INVALID_SIGNATURE)
    # body swapped
    swapped = Response.from_signed(good.signing_bytes, good.signature, b"other body")
    _receipt_refused(ch, swapped, bad)
    # overcharge: above the request's price
    _receipt_refused(ch, receipt(r1, price=11, spent=11), bad)
    # spent above what the payer signed (r2.paid == 20)
    _receipt_refused(ch, receipt(r1, price=10, spent=21), bad)
    # spent jump with nothing abandoned
    _receipt_refused(ch, receipt(r1, price=10, spent=20), bad)
    # a refusal that does not move spent is fine, but one that moves it is a jump
    _receipt_refused(ch, refusal_receipt(r1, ErrorCode.OVERLOADED, spent=10), bad)
    assert ch.on_response(good).spent == 10
    # the same receipt twice: the request is no longer in flight
    _receipt_refused(ch, good, bad)
    # spent moves by less than the charged price
    _receipt_refused(ch, receipt(r2, price=10, spent=15), bad)
    assert ch.on_response(receipt(r2, price=10, spent=20)).spent == 20


def test_signature_ok_false_refuses_a_receipt() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    before = snapshot(ch)
    with pytest.raises(RemoteProtocolError) as info:
        ch.on_response(receipt(r1, price=10, spent=10), signature_ok=False)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE
    assert snapshot(ch) == before


def test_an_ok_receipt_with_no_jump_may_skip_its_signature_check() -> None:
    """protocol.md 14.4: out of the sample, an OK receipt whose spent moved by exactly its
    price is accepted without its signature checked (``checked`` False); every money rule
    still holds, and with ``check_signature`` (the default) the same forgery is refused."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    forged = receipt(r1, price=7, spent=7, key=MALLORY)
    _receipt_refused(ch, forged, ErrorCode.INVALID_SIGNATURE)
    accepted = ch.on_response(forged, check_signature=False)
    assert (accepted.charged, accepted.spent, accepted.checked) == (7, 7, False)
    assert (ch.spent, ch.released, ch.in_flight) == (7, 3, {})
    r2 = ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    assert ch.on_response(receipt(r2, price=10, spent=17), check_signature=False).checked is False
    r3 = ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    assert ch.on_response(receipt(r3, price=10, spent=27)).checked is True


def test_out_of_the_sample_every_money_rule_still_holds() -> None:
    """Skipping the signature skips rule 3 only: a forged receipt that also breaks a money
    rule (overcharge, spent above paid, a body that does not match, another request) is
    refused as always, the state unchanged."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    ch.next_request(ALICE, service="echo", body=b"q", price=10, deadline=LATER)
    for bad in (
        receipt(r1, price=11, spent=11, key=MALLORY),  # over the request's price
        receipt(request(1, 11), price=10, spent=10, key=MALLORY),  # another request's hash
        Response.from_signed(
            receipt(r1, price=10, spent=10, key=MALLORY).signing_bytes, bytes(64), b"swapped"
        ),
    ):
        before = snapshot(ch)
        with pytest.raises(RemoteProtocolError) as info:
            ch.on_response(bad, check_signature=False)
        assert info.value.code is ErrorCode.MALFORMED
        assert snapshot(ch) == before


def test_out_of_the_sample_refusals_and_jumps_are_still_checked() -> None:
    """Every response but an OK receipt with no jump is checked, drawn or not: a signed
    refusal is evidence (claims.md 3), a jump (rule 7) or a stored receipt served again
    (rule 8) moves the accounting on the payee's word."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    forged_refusal = Response.create(
        MALLORY, request=r2, status="HANDLER_ERROR", price=0, spent=0, body=refusal_body("no")
    )
    before = snapshot(ch)
    with pytest.raises(RemoteProtocolError) as info:
        ch.on_response(forged_refusal, check_signature=False)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE and snapshot(ch) == before
    ch.abandon(r1.n)  # its charge may come as a jump in r2's receipt
    before = snapshot(ch)
    jump = receipt(r2, price=10, spent=20, key=MALLORY)
    with pytest.raises(RemoteProtocolError) as info:
        ch.on_response(jump, check_signature=False)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE and snapshot(ch) == before
    assert ch.on_response(receipt(r2, price=10, spent=20), check_signature=False).checked
    stored_again = receipt(r1, price=10, spent=10, key=MALLORY)  # rule 8, forged
    with pytest.raises(RemoteProtocolError) as info:
        ch.on_response(stored_again, check_signature=False)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE
    assert ch.on_response(receipt(r1, price=10, spent=10), check_signature=False).checked


def test_abandon_then_a_late_receipt() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert ch.abandon(1) is not None
    assert ch.abandon(1) is None  # already abandoned
    assert ch.abandon(99) is None
    assert (ch.in_flight, set(ch.abandoned)) == ({}, {1})
    assert ch.outstanding == 10  # it may still be charged
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert r2.paid == 20
    late = ch.on_response(receipt(r1, price=10, spent=10))
    assert late.charged == 10 and ch.abandoned == {}
    ch.on_response(receipt(r2, price=10, spent=20))
    assert (ch.spent, ch.outstanding) == (20, 0)


def test_spent_jump_explained_by_an_abandoned_request_once() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)  # its receipt was lost after the payee charged it
    _receipt_refused(ch, receipt(r2, price=10, spent=21), ErrorCode.MALFORMED)  # above 20
    ch.on_response(receipt(r2, price=10, spent=20))
    assert (ch.spent, ch.absorbed, ch.outstanding) == (20, 10, 0)
    # r1's price explained one jump: it cannot explain another one
    r3 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert r3.paid == 30  # spent 20 + 10; the absorbed abandoned price is not reserved twice
    _receipt_refused(ch, receipt(r3, price=10, spent=40), ErrorCode.MALFORMED)
    ch.on_response(receipt(r3, price=10, spent=30))


def test_a_refunded_request_leaves_as_not_charged() -> None:
    """claims.md 3 and 6, INV-24: the ledger refunded the request's price (its claim ended
    REFUSED or UPHELD), so the payee is not entitled to it: it is no longer outstanding."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r3 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)
    ch.abandon(r2.n)
    ch.on_response(receipt(r3, price=10, spent=10))
    assert (ch.spent, ch.outstanding, ch.released) == (10, 20, 0)
    assert ch.settle_refunded(r1.n) is not None
    assert (ch.spent, ch.outstanding, ch.released, sorted(ch.abandoned)) == (10, 10, 10, [2])
    assert ch.settle_refunded(r1.n) is None  # once
    assert ch.settle_refunded(r3.n) is None  # answered: its receipt is in spent
    assert ch.settle_refunded(99) is None
    assert (ch.spent, ch.outstanding) == (10, 10)


def test_how_a_claim_ended_is_accounted_for_in_the_channel() -> None:
    """protocol.md 16.2 (`on_claim_end`): DELIVERED, the answer taken as a receipt served
    again; REFUSED/UPHELD, the request settled as not charged, even with an answer the
    receipt rules refuse; a DELIVERED answer they refuse changes nothing; an in-flight
    request is settled by a refund only; another request's claim changes nothing."""
    ch = payer()
    r1, r2, r3, r4, r5 = (
        ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER) for _ in range(5)
    )
    for r in (r1, r2, r3, r4):
        ch.abandon(r.n)
    assert ch.on_claim_end(r1, receipt(r1, price=10, spent=10), refunded=False) is True
    assert (ch.spent, sorted(ch.abandoned)) == (10, [2, 3, 4])  # DELIVERED: charged
    with pytest.raises(RemoteProtocolError):  # spent far above anything signed
        ch.on_claim_end(r2, receipt(r2, price=10, spent=999), refunded=False)
    assert (ch.spent, sorted(ch.abandoned)) == (10, [2, 3, 4])
    odd = refusal_receipt(r2, ErrorCode.HANDLER_ERROR, spent=999)
    assert ch.on_claim_end(r2, odd, refunded=True) is True  # REFUSED: settled anyway
    assert ch.on_claim_end(r3, None, refunded=True) is True  # UPHELD
    assert (ch.spent, sorted(ch.abandoned), ch.released) == (10, [4], 20)
    assert ch.on_claim_end(r3, None, refunded=True) is True  # once: nothing more
    assert ch.on_claim_end(r5, None, refunded=False) is False  # in flight, no refund
    assert ch.on_claim_end(r5, None, refunded=True) is True
    assert (ch.in_flight, sorted(ch.abandoned), ch.outstanding) == ({}, [4], 10)


def test_a_jump_taken_for_a_refunded_request_leaves_spent() -> None:
    """The payee jumped ``spent`` by r1's price (r1 abandoned, its receipt "lost"), then
    let r1's claim end with a refund: the jump was no charge, and ``spent`` drops by it, so
    what the payee may hold (``spent`` + outstanding) is what it served."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)
    ch.on_response(receipt(r2, price=10, spent=20))
    assert (ch.spent, ch.absorbed, ch.outstanding) == (20, 10, 0)
    ch.settle_refunded(r1.n)
    assert (ch.spent, ch.absorbed, ch.outstanding) == (10, 0, 0)


def test_a_jump_taken_for_a_request_then_refused_signed_leaves_spent() -> None:
    """INV-24. The same jump, then the payee's signed refusal of r1 (late on the stream, or
    its answer to r1's claim): r1 was not charged, so the jump is no charge of any request and
    leaves ``spent`` (before, it stayed there: the payee kept r1's price with r1's refusal
    in the payer's hands and nothing to post it for). The payee's own later receipts, which
    still count it, are then refused as a jump no request explains."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)
    ch.on_response(receipt(r2, price=10, spent=20))
    late = ch.on_response(refusal_receipt(r1, ErrorCode.HANDLER_ERROR, spent=20))
    assert late.charged == 0
    assert (ch.spent, ch.absorbed, ch.outstanding, ch.released) == (10, 0, 0, 10)
    r3 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    _receipt_refused(ch, receipt(r3, price=10, spent=30), ErrorCode.MALFORMED)
    ch.on_response(receipt(r3, price=10, spent=20))


def test_a_refusal_never_lowers_spent_below_what_an_honest_payee_charged() -> None:
    """r1 charged (its receipt lost) and taken as a jump; r2 refused, its signed refusal
    read late: r2's refusal takes nothing out of ``spent`` (the jump may be r1's, still
    without an answer); r1's own receipt then comes, served again, and moves nothing."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r3 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)
    ch.abandon(r2.n)
    ch.on_response(receipt(r3, price=10, spent=20))  # charged: r1 (the jump) and r3
    ch.on_response(refusal_receipt(r2, ErrorCode.HANDLER_ERROR, spent=10))
    assert (ch.spent, ch.absorbed, ch.outstanding) == (20, 10, 0)
    ch.on_response(receipt(r1, price=10, spent=10))  # served again: inside spent
    assert (ch.spent, ch.absorbed, ch.outstanding, ch.abandoned) == (20, 0, 0, {})


def test_an_absorbed_abandoned_price_cannot_be_charged_again_and_again() -> None:
    # The lead's version accepted a jump of the abandoned prices on *every* receipt.
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)
    ch.on_response(receipt(r2, price=10, spent=20))  # the jump: r1 charged, receipt lost
    assert (ch.absorbed, ch.outstanding) == (10, 0)
    spent = 20
    for _ in range(5):
        nxt = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
        assert nxt.paid == spent + 10  # never more than what is in flight
        _receipt_refused(ch, receipt(nxt, price=10, spent=spent + 20), ErrorCode.MALFORMED)
        spent += 10
        ch.on_response(receipt(nxt, price=10, spent=spent))
    assert (ch.spent, ch.paid, ch.absorbed) == (70, 70, 10)


def test_late_receipt_of_an_absorbed_request_is_accepted_once() -> None:
    # Which abandoned request a jump charged is unknown (receipts of several streams may
    # interleave), so r1's late receipt is accepted; then nothing is left to explain jumps.
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)
    ch.on_response(receipt(r2, price=10, spent=20))
    r3 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert r3.paid == 30
    ch.on_response(receipt(r1, price=10, spent=30))
    # The jump's 10 stays inside spent (30 = paid): it is counted against r3, the one
    # request without an answer, so spent + outstanding never exceeds what we signed.
    assert (ch.abandoned, ch.absorbed, ch.outstanding, ch.spent) == ({}, 10, 0, 30)
    _receipt_refused(ch, receipt(r3, price=10, spent=40), ErrorCode.MALFORMED)  # > paid
    r4 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert r4.paid == 40
    _receipt_refused(ch, receipt(r3, price=10, spent=50), ErrorCode.MALFORMED)  # > paid
    ch.on_response(receipt(r3, price=10, spent=40))


def test_a_jump_that_was_an_in_flight_charge_stays_absorbed() -> None:
    """A jump taken for an abandoned request's charge may have been the charge of a request
    still in flight: when the abandoned one's own receipt comes, that charge is still
    inside spent (protocol.md 14.2 outstanding, 14.3 rules 7 and 8).

    Requests 1..5; the payee charges r2 (receipt lost), r4 and r5; the payer abandoned r5
    (REPLAY of a duplicate). r4's receipt jumps by 10, taken for r5's charge; r5's own
    receipt then shows the 10 was r2's, which is in flight."""
    ch = payer()
    reqs = [
        ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER) for _ in range(5)
    ]
    ch.abandon(5)
    ch.on_response(receipt(reqs[3], price=10, spent=20))  # jump 10: r2's charge
    ch.on_response(receipt(reqs[4], price=10, spent=30))  # r5 charged after all
    assert (sorted(ch.in_flight), ch.abandoned, ch.spent) == ([1, 2, 3], {}, 30)
    # r2's charge is counted once: in spent, not again in outstanding (1, 3: 20 left)
    assert (ch.absorbed, ch.outstanding) == (10, 20)
    assert ch.spent + ch.outstanding == ch.paid == 50
    # nor can it explain a second jump once r2 is abandoned too
    ch.abandon(2)
    r6 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    _receipt_refused(ch, receipt(r6, price=10, spent=50), ErrorCode.MALFORMED)
    # r2 re-sent: the payee's stored receipt, with the spent of its time, moves nothing
    again = ch.on_response(receipt(reqs[1], price=10, spent=10))
    assert again.charged == 10
    assert (ch.spent, ch.absorbed, ch.outstanding, sorted(ch.in_flight)) == (30, 0, 30, [1, 3, 6])
    ch.on_response(receipt(r6, price=10, spent=40))
    assert ch.spent + ch.outstanding == ch.paid == 60


def test_a_late_abandoned_receipt_is_accepted_when_another_explains_the_jump() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r3 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(1)
    ch.abandon(2)
    ch.on_response(receipt(r3, price=10, spent=20))  # r2 was charged, its receipt lost
    assert ch.absorbed == 10
    ch.on_response(receipt(r1, price=10, spent=30))  # r1 completes late
    assert (set(ch.abandoned), ch.absorbed, ch.outstanding, ch.spent) == ({2}, 10, 0, 30)


def test_unsigned_refusal_of_an_abandoned_request_keeps_absorbed_bounded() -> None:
    ch = payer()
    ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(1)
    ch.on_response(receipt(r2, price=10, spent=20))
    assert ch.on_refusal(1) is not None
    assert (ch.abandoned, ch.absorbed, ch.outstanding) == ({}, 0, 0)


def test_jump_bounded_by_abandoned_prices_not_yet_absorbed() -> None:
    ch = payer()
    reqs = [
        ch.next_request(ALICE, service="echo", body=b"", price=p, deadline=LATER)
        for p in (10, 20, 5)
    ]
    ch.abandon(1)
    ch.abandon(2)
    assert ch.outstanding == 35
    ch.on_response(receipt(reqs[2], price=5, spent=15))  # jump 10: r1 (or part of r2)
    assert (ch.absorbed, ch.outstanding) == (10, 20)
    r4 = ch.next_request(ALICE, service="echo", body=b"", price=5, deadline=LATER)
    _receipt_refused(ch, receipt(r4, price=5, spent=41), ErrorCode.MALFORMED)  # 20 left
    ch.on_response(receipt(r4, price=5, spent=40))
    assert (ch.spent, ch.absorbed, ch.outstanding) == (40, 30, 0)


def test_on_refusal() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r2.n)
    assert ch.on_refusal(1) is not None and ch.on_refusal(2) is not None
    assert ch.on_refusal(1) is None
    assert (ch.in_flight, ch.abandoned, ch.outstanding) == ({}, {}, 0)
    assert r1.paid == 10 and ch.paid == 20
    # v2: the refused requests' slices are not reused
    assert ch.next_request(ALICE, service="echo", body=b"", price=20, deadline=LATER).paid == 40


# ---------------------------------------------------------------------------- stored receipts


def test_a_stored_receipt_served_again_moves_nothing() -> None:
    """C-4: a re-sent request gets the payee's stored receipt, with the spent of its time.
    Its charge is already inside spent (a jump absorbed it): accepted, spent unchanged."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)  # charged at spent 10, the receipt lost
    ch.on_response(receipt(r2, price=10, spent=20))  # the jump: r1's 10 absorbed
    assert (ch.spent, ch.absorbed) == (20, 10)
    again = ch.on_response(receipt(r1, price=10, spent=10))  # r1 re-sent, stored receipt
    assert (again.charged, again.spent) == (10, 10)
    assert (ch.spent, ch.absorbed, ch.abandoned, ch.outstanding) == (20, 0, {}, 0)


def test_a_stored_refusal_served_again_is_accepted() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.abandon(r1.n)
    ch.on_response(receipt(r2, price=10, spent=10))
    ch.on_response(refusal_receipt(r1, ErrorCode.HANDLER_ERROR, spent=0))  # stored, old spent
    assert (ch.spent, ch.absorbed, ch.abandoned) == (10, 0, {})


def test_a_stale_receipt_must_be_explained_by_an_absorbed_jump() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.on_response(receipt(r2, price=10, spent=10))  # no jump: nothing absorbed
    # r1 "charged" inside a spent the payer already accepted: nothing explains it
    _receipt_refused(ch, receipt(r1, price=10, spent=10), ErrorCode.MALFORMED)
    _receipt_refused(ch, receipt(r1, price=10, spent=15), ErrorCode.MALFORMED)  # in between
    ch.on_response(receipt(r1, price=10, spent=20))


# ---------------------------------------------------------------------------- resync


def _replay_details(payee_ch: PayeeChannel, stale: Request) -> dict[str, Any]:
    refused = admit(payee_ch, stale)
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.REPLAY
    return refused.details


def _replay_args(details: dict[str, Any]) -> dict[str, Any]:
    raw = details.get("voucher")
    voucher = decode_frame(raw) if isinstance(raw, bytes) else None
    assert voucher is None or isinstance(voucher, Request)
    return {"last_n": details["last_n"], "voucher": voucher, "paid_max": details["paid_max"]}


def test_lost_state_resync_from_a_replay_refusal() -> None:
    bob = payee()
    old = payer()
    for _ in range(3):
        req = old.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
        assert isinstance(admit(bob, req), Admit)
        charged, spent = bob.complete(req.n, ok=True)
        old.on_response(receipt(req, price=charged, spent=spent))
    # the payer loses its state and starts again
    fresh = payer()
    first = fresh.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    details = _replay_details(bob, first)
    outcome = fresh.on_replay(first.n, **_replay_args(details))
    # our own signature on voucher n=3 (above our last_n 1) proves we lost state: the
    # first request was never chargeable, it is dropped
    assert outcome is Replay.SUPERSEDED
    assert (fresh.last_n, fresh.paid, fresh.spent, fresh.in_flight) == (3, 30, 0, {})
    assert fresh.forgotten == 30  # slices we signed and forgot: the payee may have charged
    nxt = fresh.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert (nxt.n, nxt.paid) == (4, 40)
    assert isinstance(admit(bob, nxt), Admit)
    charged, spent = bob.complete(nxt.n, ok=True)
    assert fresh.on_response(receipt(nxt, price=charged, spent=spent)).spent == 40
    assert (fresh.spent, fresh.absorbed) == (40, 30)
    # the forgotten credit explained one jump; it explains no other
    r5 = fresh.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    _receipt_refused(fresh, receipt(r5, price=10, spent=50 + 1), ErrorCode.MALFORMED)


def _serve(bob: PayeeChannel, payer_ch: PayerChannel, price: int, *, served: bool = True) -> None:
    """The payer signs a request of `price`; the payee admits it at that price and answers
    (served and charged, or refused with a signed UNKNOWN_SERVICE, nothing charged)."""
    req = payer_ch.next_request(ALICE, service="echo", body=b"", price=price, deadline=LATER)
    if served:
        assert isinstance(admit(bob, req, price=price), Admit)
        charged, spent = bob.complete(req.n, ok=True)
        payer_ch.on_response(receipt(req, price=charged, spent=spent))
    else:
        refused = admit(bob, req, price=None)
        assert isinstance(refused, Refuse) and refused.code is ErrorCode.UNKNOWN_SERVICE
        payer_ch.on_response(refusal_receipt(req, ErrorCode.UNKNOWN_SERVICE, spent=bob.spent))


def test_forgotten_never_includes_a_slice_the_payee_refused_with_its_signature() -> None:
    """protocol.md 15 step 4: a signed refusal proves its slice was never charged, by that
    request or any other (it passed the slice rule), so after a lost-state REPLAY that
    slice is not counted as forgotten. (The old rule, voucher.paid - spent - outstanding,
    counted it: 999 yocto a payee could then take with one spent jump.)"""
    bob = payee(10_000)
    ch = payer(10_000)
    _serve(bob, ch, 999, served=False)  # n=1, slice (0, 999]: refused, signed, uncharged
    _serve(bob, ch, 10)  # n=2, slice (999, 1009]: charged 10
    assert (ch.paid, ch.spent) == (1009, 10)
    backup = dataclasses.replace(ch, in_flight={}, abandoned={})  # the state saved here
    for _ in range(3):  # n=3..5, slices up to 1039, served and charged: then forgotten
        _serve(bob, ch, 10)
    again = backup.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert (again.n, again.paid) == (3, 1019)  # signed in ignorance of n=3..5
    details = _replay_details(bob, again)
    assert backup.on_replay(again.n, **_replay_args(details)) is Replay.SUPERSEDED
    # unaccounted: (1009, 1039], the forgotten slices (the superseded one lies inside)
    assert (backup.forgotten, backup.paid, backup.last_n) == (30, 1039, 5)
    assert backup.released == 999  # the refused slice, accounted for
    # the honest payee's next receipt jumps by the forgotten charges: accepted
    nxt = backup.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert isinstance(admit(bob, nxt, price=10), Admit)
    charged, spent = bob.complete(nxt.n, ok=True)
    assert backup.on_response(receipt(nxt, price=charged, spent=spent)).spent == 50
    # a payee that also took the refused slice would show 999 more: refused
    r7 = backup.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    _receipt_refused(backup, receipt(r7, price=10, spent=60 + 999), ErrorCode.MALFORMED)


def test_forgotten_counts_the_superseded_slice_and_unsigned_refusals() -> None:
    """protocol.md 15 step 4: not voucher.paid - paid. The payer's own paid covers slices
    it signed in ignorance (the superseded request, one refused unsigned before
    authentication): forgotten requests may overlap them, so they count as forgotten."""
    bob = payee()
    ch = payer()
    _serve(bob, ch, 10)  # n=1, charged
    backup = dataclasses.replace(ch, in_flight={}, abandoned={})
    for _ in range(3):  # n=2..4 up to paid 40, charged, then forgotten
        _serve(bob, ch, 10)
    # restored: n=2 is refused OVERLOADED before admission (unsigned), n=3 gets a REPLAY
    lost = backup.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    backup.on_refusal(lost.n)
    again = backup.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert again.paid == 30
    details = _replay_details(bob, again)
    assert backup.on_replay(again.n, **_replay_args(details)) is Replay.SUPERSEDED
    assert backup.forgotten == 30  # (10, 40]: n=2..4 may all have been charged
    nxt = backup.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert isinstance(admit(bob, nxt, price=10), Admit)
    charged, spent = bob.complete(nxt.n, ok=True)
    assert backup.on_response(receipt(nxt, price=charged, spent=spent)).spent == 50


def test_a_voucher_above_our_paid_proves_lost_state() -> None:
    """protocol.md 15 step 4 case (d): our own voucher with a paid above ours, numbered
    above the request but within our last_n (which an earlier resync raised): the part of
    the paid line we cannot account for is forgotten (the request in flight included: it
    may be uncharged), though that request is not superseded."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert ch.on_replay(r1.n, last_n=9, voucher=None, paid_max=0) is Replay.IN_DOUBT
    mine = request(5, 50, price=10)  # signed by us in a life we forgot
    assert ch.on_replay(r1.n, last_n=9, voucher=mine, paid_max=50) is Replay.IN_DOUBT
    assert (ch.forgotten, ch.paid, ch.last_n, set(ch.in_flight)) == (50, 50, 9, {1})
    # the same details again: the bound does not grow
    assert ch.on_replay(r1.n, last_n=9, voucher=mine, paid_max=50) is Replay.IN_DOUBT
    assert ch.forgotten == 50


def test_restored_backup_same_n_is_superseded() -> None:
    ch = payer()
    old = ch.next_request(ALICE, service="echo", body=b"old", price=10, deadline=LATER)
    ch.on_response(receipt(old, price=10, spent=10))
    backup = payer()  # restored from before `old` was sent
    again = backup.next_request(ALICE, service="echo", body=b"new", price=10, deadline=LATER)
    assert again.n == old.n and again.hash != old.hash
    assert backup.on_replay(again.n, last_n=1, voucher=old) is Replay.SUPERSEDED
    assert backup.in_flight == {} and backup.paid == 10


def test_fake_replay_keeps_the_request_in_doubt() -> None:
    """Issue 13 item 2: the payee served and charged n, then sent an unsigned REPLAY with
    genuine resync data. The payer keeps n in flight, adopts no spent, never signs a slice
    below the voucher, and still accepts n's receipt when it comes (re-send)."""
    bob = payee()
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert isinstance(admit(bob, r1), Admit)
    charged, spent = bob.complete(r1.n, ok=True)
    details = _replay_details(bob, r1)  # what the cheat sends instead of the receipt
    assert details["spent"] == 10
    assert ch.on_replay(r1.n, **_replay_args(details)) is Replay.IN_DOUBT
    assert (ch.last_n, ch.paid, ch.spent, set(ch.in_flight)) == (1, 10, 0, {1})
    # the same request re-sent: its receipt is accepted, charged once
    accepted = ch.on_response(receipt(r1, price=charged, spent=spent))
    assert (accepted.charged, ch.spent, ch.paid) == (10, 10, 10)
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert (r2.n, r2.paid) == (2, 20)


def test_in_doubt_request_abandoned_stays_claimable_and_explains_a_jump() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert ch.on_replay(r1.n, last_n=1, voucher=r1, paid_max=10) is Replay.IN_DOUBT
    assert ch.on_replay(r1.n, last_n=1, voucher=r1) is Replay.IN_DOUBT  # again: in doubt
    ch.abandon(r1.n)  # RequestInDoubt: kept as abandoned
    assert set(ch.abandoned) == {1} and ch.forgotten == 0
    r2 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.on_response(receipt(r2, price=10, spent=20))  # the payee did charge r1: a jump
    assert (ch.spent, ch.absorbed) == (20, 10)


def test_replay_with_a_later_voucher_adopts_its_paid() -> None:
    """A payee's voucher above what we remember (we lost a tail of our state): the next
    slice starts above it, never below the payee's paid_max."""
    ch = payer()
    signed = [
        ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER) for _ in range(3)
    ]
    backup = payer()
    backup.last_n, backup.paid = 1, 10
    r2 = backup.next_request(ALICE, service="echo", body=b"x", price=10, deadline=LATER)
    assert backup.on_replay(r2.n, last_n=3, voucher=signed[2]) is Replay.SUPERSEDED
    nxt = backup.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert (nxt.n, nxt.paid - nxt.price) == (4, 30)


def test_replay_of_a_request_not_outstanding_is_not_read() -> None:
    """protocol.md 5.4 / 15: a refusal naming no outstanding request adopts nothing, even
    numbers, and is not checked (garbage details raise nothing)."""
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    assert ch.on_replay(7, last_n=9, voucher=None, paid_max=0) is Replay.UNKNOWN
    assert ch.on_replay(7, last_n=-1, voucher=None, paid_max=5) is Replay.UNKNOWN
    assert (ch.last_n, ch.paid, ch.spent, ch.forgotten) == (1, 10, 0, 0)
    assert set(ch.in_flight) == {r1.n}
    assert ch.expects(r1.n) and not ch.expects(7)


def test_on_replay_refuses_a_voucher_signed_by_someone_else() -> None:
    ch = payer()
    r1 = ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    before = snapshot(ch)
    forged = request(3, 90, key=MALLORY)
    with pytest.raises(RemoteProtocolError) as info:
        ch.on_replay(r1.n, last_n=3, voucher=forged)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE
    # ours, but for another channel or ledger
    for voucher in (request(3, 90, channel=OTHER_CHANNEL), request(3, 90, ledger=b"x")):
        with pytest.raises(RemoteProtocolError):
            ch.on_replay(r1.n, last_n=3, voucher=voucher)
    assert snapshot(ch) == before


@pytest.mark.parametrize(
    ("last_n", "voucher"),
    [
        (2, request(3, 90)),  # voucher newer than last_n
        (-1, None),
        ("3", request(3, 90)),
        (True, None),
        (None, None),
        (2**64, None),
        (3, request(3, 90).to_frame()),  # undecoded bytes are not a voucher
    ],
)
def test_on_replay_refuses_inconsistent_details(last_n: Any, voucher: Any) -> None:
    ch = payer()
    ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    before = snapshot(ch)
    with pytest.raises(RemoteProtocolError):
        ch.on_replay(1, last_n=last_n, voucher=voucher)
    assert snapshot(ch) == before


@pytest.mark.parametrize("paid_max", [89, 91, 0, -1, True, "90"])
def test_on_replay_checks_paid_max_against_the_voucher(paid_max: Any) -> None:
    ch = payer()
    ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    with pytest.raises(RemoteProtocolError) as info:
        ch.on_replay(1, last_n=3, voucher=request(3, 90), paid_max=paid_max)
    assert info.value.code is ErrorCode.MALFORMED
    assert (ch.last_n, ch.paid, ch.spent) == (1, 10, 0)
    ch.on_replay(1, last_n=3, voucher=request(3, 90), paid_max=90)
    assert (ch.last_n, ch.paid, ch.spent) == (3, 90, 0)  # spent is never adopted


def test_on_replay_without_voucher_means_paid_max_zero() -> None:
    ch = payer()
    ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.on_replay(1, last_n=4, voucher=None, paid_max=0)
    assert ch.last_n == 4
    with pytest.raises(RemoteProtocolError):
        ch.on_replay(1, last_n=4, voucher=None, paid_max=5)


def test_on_replay_never_lowers_anything() -> None:
    ch = payer()
    for _ in range(2):
        ch.next_request(ALICE, service="echo", body=b"", price=10, deadline=LATER)
    ch.on_replay(2, last_n=1, voucher=request(1, 10))
    assert (ch.last_n, ch.paid, ch.spent) == (2, 20, 0)
    ch.on_replay(2, last_n=0, voucher=None)
    assert (ch.last_n, ch.paid, ch.spent) == (2, 20, 0)


def test_resync_after_a_failed_deferred_check_has_spent_above_paid_max() -> None:
    """Protocol.md 15 (D5 of issue 15): after a failed deferred check (13.4 c) the payee's
    ``spent`` exceeds the paid of the checked voucher its resync details show. Such details
    are genuine: the payer accepts them, adopts last_n and the voucher's paid, and never
    takes ``spent`` (which is informative only, not MALFORMED)."""
    limit = 3 * PRICE
    bob = payee(DEPOSIT, limit=limit)
    assert isinstance(admit(bob, request(1, PRICE)), Admit)
    bob.complete(1, ok=True)
    for n in range(2, 10):  # bad signatures admitted unchecked, until the check fails
        decision = admit(bob, request(n, n * PRICE, key=MALLORY))
        if isinstance(decision, Admit):
            bob.complete(n, ok=True)
    assert bob.deferral_revoked
    refused = admit(bob, request(1, PRICE))
    assert isinstance(refused, Refuse) and refused.code is ErrorCode.REPLAY
    details = refused.details
    assert details["spent"] > details["paid_max"] == PRICE  # what the spec now allows

    fresh = payer()  # lost its state
    r1 = fresh.next_request(ALICE, service="echo", body=b"x", price=PRICE, deadline=LATER)
    outcome = fresh.on_resync(r1.n, details)
    assert outcome is Replay.SUPERSEDED  # voucher n=1 with another hash: our own signature
    assert (fresh.last_n, fresh.paid, fresh.spent) == (details["last_n"], PRICE, 0)
    # the same through on_replay's keyword: spent above paid_max is accepted, not adopted
    other = payer()
    r = other.next_request(ALICE, service="echo", body=b"y", price=PRICE, deadline=LATER)
    other.on_replay(r.n, last_n=9, voucher=request(1, PRICE), paid_max=PRICE, spent=10**6)
    assert (other.last_n, other.paid, other.spent) == (9, PRICE, 0)


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"last_n": 3, "paid_max": 0},  # spent missing
        {"last_n": 3, "spent": 0},  # paid_max missing
        {"spent": 0, "paid_max": 0},  # last_n missing
        {"last_n": -1, "spent": 0, "paid_max": 0},
        {"last_n": 2**64, "spent": 0, "paid_max": 0},
        {"last_n": 3, "spent": -1, "paid_max": 0},
        {"last_n": 3, "spent": 2**128, "paid_max": 0},
        {"last_n": 3, "spent": "0", "paid_max": 0},
        {"last_n": 3, "spent": 0, "paid_max": True},
        {"last_n": 3, "spent": 0, "paid_max": 0, "voucher": None},
        {"last_n": 3, "spent": 0, "paid_max": 90, "voucher": b"\x00"},
        {"last_n": 3, "spent": 0, "paid_max": 90, "voucher": request(3, 90).signing_bytes},
    ],
)
def test_parse_resync_refuses_unusable_details(details: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_resync(details)
    assert info.value.code is ErrorCode.MALFORMED
    ch = payer()
    ch.next_request(ALICE, service="echo", body=b"", price=PRICE, deadline=LATER)
    before = snapshot(ch)
    with pytest.raises(RemoteProtocolError):
        ch.on_resync(1, details)
    assert snapshot(ch) == before


def test_parse_resync_reads_a_payees_details() -> None:
    bob = payee()
    assert isinstance(admit(bob, request(1, PRICE)), Admit)
    refused = admit(bob, request(1, PRICE))
    assert isinstance(refused, Refuse)
    resync = parse_resync({**refused.details, "price": PRICE})  # extra keys are ignored
    assert (resync.last_n, resync.spent, resync.paid_max) == (1, 0, PRICE)
    assert resync.voucher == request(1, PRICE)
    assert parse_resync({"last_n": 0, "spent": 0, "paid_max": 0}).voucher is None


def test_a_signed_refusal_is_only_of_a_fresh_slice_and_consumes_it() -> None:
    """Attack N1: a signed refusal lets the payer have its slice refunded on the ledger, so
    the payee signs refusals only of slices above paid_max, and the refused slice is then
    consumed (paid_max raised): no later slice the payee charges can overlap it."""
    ch = payee()
    assert isinstance(admit(ch, request(1, PRICE)), Admit)
    ch.complete(1, ok=True)
    # (capacity is refused before admission, unsigned: protocol.md 13.2 check 0')
    busy = ch.admit(
        request(2, 2 * PRICE), peer=ALICE.public, price=None, max_body=MAX_BODY, now=NOW
    )
    assert_refused(busy, ErrorCode.UNKNOWN_SERVICE, authenticated=True)
    assert (ch.last_n, ch.paid_max, ch.spent) == (2, 2 * PRICE, PRICE)
    # the payer re-signs the refused slice (PRICE, 2 * PRICE]: it overlaps, refused unsigned
    again = admit(ch, request(3, 2 * PRICE))
    assert_refused(again, ErrorCode.PAYMENT_REQUIRED, authenticated=False)
    # a low price then a price flip: each signed refusal consumed its own slice
    cheap = admit(ch, request(3, 3 * PRICE, price=PRICE), price=PRICE + 1)
    assert_refused(cheap, ErrorCode.PAYMENT_REQUIRED, authenticated=True)
    assert ch.paid_max == 3 * PRICE
    assert isinstance(
        admit(ch, request(4, 3 * PRICE + PRICE + 1, price=PRICE + 1), price=PRICE + 1), Admit
    )
