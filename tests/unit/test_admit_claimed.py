"""`PayeeChannel.admit_claimed`: a request that reached the payee only through a claim is
admitted by the rules of a stream (specs/claims.md C-6; issue 13 item 4)."""

from __future__ import annotations

from typing import Any

import pytest

from p2pay.core.channel import Admit, ChannelStatus, PayeeChannel, Refuse
from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request

ALICE = Keypair.from_seed(bytes([1]) * 32)  # payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # payee
MALLORY = Keypair.from_seed(bytes([3]) * 32)
LEDGER = b"p2pay:test:claimed"
CHANNEL = bytes(range(32))
PRICE = 100
DEADLINE = 1_700_000_000_000  # long past: claims are filed after the deadline


def channel(**fields: Any) -> PayeeChannel:
    values: dict[str, Any] = {"deposit": 10_000}
    values.update(fields)
    return PayeeChannel(
        ledger=LEDGER, channel=CHANNEL, payer=ALICE.account, payee=BOB.account, **values
    )


def request(n: int, paid: int, *, key: Keypair = ALICE, **fields: Any) -> Request:
    values: dict[str, Any] = {"price": PRICE, "service": "echo", "body": b"x"}
    values.update(fields)
    return Request.create(
        key, ledger=LEDGER, channel=CHANNEL, n=n, paid=paid, deadline=DEADLINE, **values
    )


def admit(ch: PayeeChannel, req: Request, *, seen: bool = False, **kw: Any) -> Any:
    args: dict[str, Any] = {"price": PRICE, "max_body": 16, "deadline": 5_000}
    args.update(kw)
    return ch.admit_claimed(req, seen=seen, **args)


def test_a_fresh_request_above_paid_max_is_admitted_and_charged_by_its_deadline() -> None:
    ch = channel(last_n=2, paid_max=2 * PRICE, spent=2 * PRICE)
    req = request(3, 3 * PRICE)
    assert admit(ch, req) == Admit(3, PRICE, True)
    assert (ch.last_n, ch.paid_max, ch.best, ch.verified) == (3, 3 * PRICE, req, req)
    assert ch.reserved == PRICE
    # the claim's deadline (not the request's, long past) decides the charge
    done = ch.complete(3, ok=True, now=5_000)
    assert (done.charged, done.spent, done.refusal) == (PRICE, 3 * PRICE, None)


def test_an_answer_after_the_claims_deadline_is_not_charged() -> None:
    ch = channel()
    assert isinstance(admit(ch, request(1, PRICE), deadline=5_000), Admit)
    done = ch.complete(1, ok=True, now=5_001)
    assert (done.charged, done.spent, done.refusal) == (0, 0, ErrorCode.DEADLINE_EXCEEDED)


def test_a_fresh_request_reusing_credit_is_refused_and_consumes_its_number() -> None:
    ch = channel(last_n=2, paid_max=2 * PRICE, spent=2 * PRICE)
    decision = admit(ch, request(3, 2 * PRICE))  # slice (100, 200]: already paid for
    assert isinstance(decision, Refuse) and decision.code is ErrorCode.PAYMENT_REQUIRED
    assert decision.authenticated and ch.last_n == 3 and ch.reserved == 0


def test_a_request_in_a_gap_is_admitted_within_the_credit() -> None:
    ch = channel(last_n=5, paid_max=5 * PRICE, spent=3 * PRICE)
    decision = admit(ch, request(2, 2 * PRICE))
    assert isinstance(decision, Admit) and (decision.n, decision.price) == (2, PRICE)
    assert ch.last_n == 5 and ch.paid_max == 5 * PRICE and ch.reserved == PRICE
    full = channel(last_n=5, paid_max=5 * PRICE, spent=5 * PRICE)
    decision = admit(full, request(2, 2 * PRICE))
    assert isinstance(decision, Refuse) and decision.code is ErrorCode.PAYMENT_REQUIRED


@pytest.mark.parametrize("case", ["seen", "pending"])
def test_a_number_already_used_is_replay(case: str) -> None:
    ch = channel(last_n=5, paid_max=5 * PRICE, spent=2 * PRICE)
    if case == "pending":
        ch.pending[2], ch.reserved = PRICE, PRICE
    decision = admit(ch, request(2, 2 * PRICE), seen=case == "seen")
    assert isinstance(decision, Refuse) and decision.code is ErrorCode.REPLAY


@pytest.mark.parametrize(
    ("fields", "kw", "code"),
    [
        ({"price": 0}, {}, ErrorCode.PAYMENT_REQUIRED),
        ({"price": PRICE - 1}, {}, ErrorCode.PAYMENT_REQUIRED),
        ({"body": b"y" * 17}, {}, ErrorCode.BODY_TOO_LARGE),
        ({}, {"price": None}, ErrorCode.UNKNOWN_SERVICE),
        ({"key": MALLORY}, {}, ErrorCode.INVALID_SIGNATURE),
    ],
    ids=["price_0", "price_low", "body", "service", "signature"],
)
def test_stream_refusals_apply_to_claimed_requests(
    fields: dict[str, Any], kw: dict[str, Any], code: ErrorCode
) -> None:
    ch = channel()
    decision = admit(ch, request(1, PRICE, **fields), **kw)
    assert isinstance(decision, Refuse) and decision.code is code
    assert ch.reserved == 0 and ch.spent == 0 and not ch.pending


def test_a_closing_channel_or_a_slice_above_the_deposit_is_refused() -> None:
    closing = channel(status=ChannelStatus.CLOSING)
    decision = admit(closing, request(1, PRICE))
    assert isinstance(decision, Refuse) and decision.code is ErrorCode.CHANNEL_CLOSED
    small = channel(deposit=PRICE)
    decision = admit(small, request(1, 2 * PRICE))
    assert isinstance(decision, Refuse) and decision.code is ErrorCode.INSUFFICIENT_DEPOSIT


@pytest.mark.parametrize(
    ("fields", "kw", "code"),
    [
        ({"service": "nope"}, {"price": None}, ErrorCode.UNKNOWN_SERVICE),
        ({}, {"price": 2 * PRICE}, ErrorCode.PAYMENT_REQUIRED),
        ({"body": b"x" * 17}, {}, ErrorCode.BODY_TOO_LARGE),
    ],
    ids=["service", "price_low", "body"],
)
def test_a_refused_fresh_slice_is_consumed_like_an_admitted_one(
    fields: dict[str, Any], kw: dict[str, Any], code: ErrorCode
) -> None:
    """Every answer to a claim is signed, and a refusal refunds the slice (claims.md 3): a
    fresh slice refused through a claim raises paid_max as on a stream, so no later request
    is charged inside it (attack round 14: a payer claimed a made-up request of 9 prices
    for an unknown service, got them refunded, and was then served 8 more prices in that
    very slice on its stream, which the payee could never redeem)."""
    ch = channel(last_n=1, paid_max=PRICE, spent=PRICE)
    claimed = request(11, 10 * PRICE, **fields)
    decision = admit(ch, claimed, **kw)
    assert isinstance(decision, Refuse) and decision.code is code and decision.authenticated
    assert (ch.last_n, ch.paid_max, ch.best) == (11, 10 * PRICE, claimed)
    later = ch.admit(
        request(12, 2 * PRICE), peer=ALICE.account, price=PRICE, max_body=16, now=DEADLINE - 1
    )
    assert isinstance(later, Refuse) and later.code is ErrorCode.PAYMENT_REQUIRED
    assert not later.authenticated and ch.spent == PRICE


def test_a_fresh_claimed_number_is_an_answer_a_watching_lookup_sees() -> None:
    ch = channel()
    claimed = request(1, PRICE)
    start = ch.watch_completions(request(1, PRICE, body=b"twin"))
    assert isinstance(admit(ch, claimed, price=None), Refuse)
    assert ch.completed_since(1, start)
