"""Attack N8 (specs/protocol.md 13.4 rule d): a request with a bad signature admitted
unchecked and then covered by a later good voucher must still be checked, or a made-up
claim on its number and slice cannot be refuted (its stored frame is no evidence) and the
payee loses its price again and again, beyond the limit (INV-21)."""

from __future__ import annotations

from p2pay.core.channel import Admit, PayeeChannel, Refuse
from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, blake2b256

ALICE = Keypair.from_seed(bytes([1]) * 32)  # payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # payee
MALLORY = Keypair.from_seed(bytes([4]) * 32)  # "signs" the corrupted requests
LEDGER = b"p2pay-test-ledger"
CHANNEL = blake2b256(b"channel alice->bob")
NOW = 1_700_000_000_000
PRICE = 10
DEPOSIT = 10_000


def request(n: int, *, key: Keypair = ALICE) -> Request:
    return Request.create(
        key,
        ledger=LEDGER,
        channel=CHANNEL,
        n=n,
        paid=n * PRICE,
        price=PRICE,
        service="echo",
        body=b"%d" % n,
        deadline=NOW + 60_000,
    )


def serve(ch: PayeeChannel, req: Request) -> Admit | Refuse:
    decision = ch.admit(req, peer=ALICE.public, price=PRICE, max_body=1024, now=NOW)
    if isinstance(decision, Admit):
        ch.complete(req.n, ok=True)
    return decision


def test_a_bad_signature_covered_by_a_good_voucher_is_caught_and_bounded() -> None:
    limit = 2 * PRICE
    ch = PayeeChannel(
        ledger=LEDGER,
        channel=CHANNEL,
        payer=ALICE.public,
        payee=BOB.public,
        deposit=DEPOSIT,
        unverified_credit_limit=limit,
    )
    bad_served = 0
    # Every third request carries a bad signature; the others are ALICE's (n3 "repeat").
    for n in range(1, 31):
        bad = n % 3 == 2
        decision = serve(ch, request(n, key=MALLORY if bad else ALICE))
        if bad and isinstance(decision, Admit):
            bad_served += 1
        assert ch.spent + ch.reserved <= ch.verified_paid + limit  # INV-21
    ch.verified_voucher()  # what a redeem checks (the newest voucher, a good one)
    # the first bad one is caught when a voucher covering it is checked: no more deferral
    assert ch.deferral_revoked
    assert 0 < bad_served * PRICE <= limit  # the payee's loss is within the limit
    # later bad requests are refused at admission, unsigned
    late_bad = serve(ch, request(31, key=MALLORY))
    assert isinstance(late_bad, Refuse) and late_bad.code is ErrorCode.INVALID_SIGNATURE
