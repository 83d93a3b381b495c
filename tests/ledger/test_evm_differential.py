"""The contract and the pure rules side by side: same ops, same results, same state.

contracts/Settlement.vy must implement p2pay/core/settlement.py exactly (specs/settlement.md
section 10): the same checks in the same order (so the same refusal code), the same effects
and the same events. These tests run one seeded random sequence of operations (channels,
vouchers, claims with every outcome: delivered, refused, frivolous, upheld, with refunds and
clawbacks) on an `EvmLedger` (titanoboa) and on a `MemoryLedger` with the same ledger id (so
the same EIP-712 signatures verify on both), and compare after every op: the result or the
error code, every channel, stake and claim, every balance, and finally the event streams.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

pytest.importorskip("boa", reason="titanoboa not installed: pip install -e '.[dev]'")
pytest.importorskip("eth_abi", reason="web3/eth-abi not installed: pip install -e '.[dev]'")

from p2pay import testing
from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.evmsig import EvmKey
from p2pay.core.messages import Request, Response
from p2pay.core.settlement import Params
from p2pay.ledger import MemoryLedger
from p2pay.ledger.evm import MAX_BODY, BoaChain, EvmLedger
from p2pay.testing import ManualClock

pytestmark = pytest.mark.trio

DEPLOYER, KEYS = testing.evm_test_keys()
A, B, C = KEYS["ALICE"], KEYS["BOB"], KEYS["CAROL"]
TOKEN = 10**24
PARAMS = {
    "claim_bond": 10**18,
    "min_claim_window_ms": 10,
    "min_challenge_ms": 10,
    "max_deadline_horizon_ms": 2_000,
}
REFUSALS = ("OVERLOADED", "UNKNOWN_SERVICE", "DEADLINE_EXCEEDED", "HANDLER_ERROR")


class Pair:
    """One EVM ledger and one memory ledger with the same ledger id and parameters."""

    def __init__(self, evm: EvmLedger, mem: MemoryLedger, clock: ManualClock) -> None:
        self.evm, self.mem, self.clock = evm, mem, clock
        self.ops = 0

    async def both(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run the op on both; the outcomes (result or error code) must agree."""
        outcomes = []
        for ledger in (self.evm, self.mem):
            try:
                outcomes.append(("ok", await getattr(ledger, name)(*args, **kwargs)))
            except SettlementError as exc:
                outcomes.append(("refused", exc.code))
        assert outcomes[0] == outcomes[1], (
            f"op {self.ops} {name}: evm {outcomes[0]} != {outcomes[1]}"
        )
        self.ops += 1
        return outcomes[0]

    async def answer(
        self,
        key: EvmKey,
        claim_id: bytes,
        response: Response | None = None,
        evidence: Request | None = None,
    ) -> Any:
        """AnswerClaim with a response or with evidence, on both."""
        return await self.both("answer_claim", key, claim_id, response, evidence=evidence)

    async def refund(
        self, key: EvmKey, r: Request, refusal: Any, expect: ErrorCode | None = None
    ) -> Any:
        """FileClaim with the payee's refusal (a refund settled at once), on both; `expect`:
        the refusal code both must give."""
        self.evm.register_key(key)
        outcome = await self.both("file_claim", key, r, refusal)
        if expect is not None:
            assert outcome == ("refused", expect)
        return outcome

    async def same_state(self, channels: list[bytes], claims: list[bytes]) -> None:
        for account in (A.account, B.account, C.account):
            assert await self.evm.balance(account) == await self.mem.balance(account)
            assert await self.evm.stake_of(account) == await self.mem.stake_of(account)
        for cid in channels:
            assert await self.evm.channel(cid) == await self.mem.channel(cid), "channel"
        for claim_id in claims:
            assert await self.evm.claim(claim_id) == await self.mem.claim(claim_id), "claim"
        totals = await self.evm.totals()
        assert totals.conserved and totals == await self.mem.totals()


async def make_pair(**extra: int) -> Pair:
    """`extra`: Params fields beyond PARAMS (e.g. ``claims_per_window``)."""
    clock = ManualClock()
    evm = await EvmLedger.deploy(
        BoaChain(), DEPLOYER, dev=True, time_unit_us=1, clock=clock, **PARAMS, **extra
    )
    params = Params(ledger_id=evm.ledger_id, dev=True, max_claim_body=MAX_BODY, **PARAMS, **extra)
    assert evm.params == params
    mem = MemoryLedger(params, clock=clock)
    return Pair(evm, mem, clock)


def request(
    key: EvmKey,
    ledger: bytes,
    cid: bytes,
    n: int,
    paid: int,
    price: int,
    deadline: int,
    body: bytes = b"ping",
    service: str = "echo",
) -> Request:
    return Request.create(
        key,
        ledger=ledger,
        channel=cid,
        n=n,
        paid=paid,
        price=price,
        service=service,
        body=body,
        deadline=deadline,
    )


async def test_claim_outcomes_match_the_pure_rules() -> None:
    """Each outcome once, by hand: the codes and states agree on both ledgers."""
    p = await make_pair()
    lid, clock = p.evm.ledger_id, p.clock
    for key in (A, B, C):
        await p.both("mint", key, key.account, 10 * TOKEN)
    await p.both("stake", B, 5 * TOKEN, TOKEN, 1_000)
    _, cid = await p.both("open_channel", A, B.account, 1_000, 50)
    price = 100
    r1 = request(A, lid, cid, 1, 100, price, clock.ms + 100)
    r2 = request(A, lid, cid, 2, 200, price, clock.ms + 100)
    r3 = request(A, lid, cid, 3, 300, price, clock.ms + 100, body=b"x" * MAX_BODY)
    r4 = request(A, lid, cid, 4, 400, price, clock.ms + 100)
    dup = request(A, lid, cid, 4, 450, 50, clock.ms + 100)  # same n: a conflict
    await p.both("redeem", B, r2, 200)  # B redeemed slices 1 and 2
    clock.advance(101)
    # FileClaim argument checks, then the deposit and the body limit of this binding
    await p.both("file_claim", A, request(A, lid, cid, 5, 2_000, price, clock.ms - 1))
    big = request(A, lid, cid, 5, 500, price, clock.ms - 1, body=b"x" * (MAX_BODY + 1))
    await p.both("file_claim", A, big)
    ids = []
    for r in (r1, r2):
        ids.append((await p.both("file_claim", A, r))[1])
    await p.same_state([cid], ids)
    # DELIVERED: an OK answer; REFUSED: a refusal. B had redeemed slice 2, which it now
    # says it never charged: the refund is clawed back from its stake
    ok = Response.create(B, request=r1, status="OK", price=price, spent=price, body=b"pong")
    await p.answer(B, ids[0], ok)
    over = Response.create(B, request=r2, status="OK", price=price + 1, spent=price + 1, body=b"")
    await p.answer(B, ids[1], over)  # charges more than the price
    no = Response.create(B, request=r2, status="OVERLOADED", price=0, spent=price, body=b"")
    await p.answer(B, ids[1], no)
    for r in (r3, r4):
        ids.append((await p.both("file_claim", A, r))[1])
    # the 32 KiB body reached the ledger, and the answer to it may be as big
    big_ok = Response.create(
        B, request=r3, status="OK", price=price, spent=2 * price, body=b"y" * MAX_BODY
    )
    await p.answer(B, ids[2], big_ok)
    # FRIVOLOUS: evidence in tiling conflict; a non-conflicting one is refused first
    await p.answer(B, ids[3], evidence=r1)
    await p.answer(B, ids[3], evidence=r4)
    await p.answer(B, ids[3], evidence=dup)
    await p.same_state([cid], ids)
    evm_claims = [await p.evm.claim(i) for i in ids]
    assert [c.state.value for c in evm_claims if c] == [
        "delivered",
        "refused",
        "delivered",
        "frivolous",
    ]
    assert evm_claims[1] is not None and evm_claims[1].clawed == price
    assert evm_claims[3] is not None and evm_claims[3].evidence_frame
    # UPHELD with a refund
    r6 = request(A, lid, cid, 6, 600, price, clock.ms + 10)
    clock.advance(11)
    c6 = (await p.both("file_claim", A, r6))[1]
    clock.advance(1_001)
    await p.both("resolve_claim", C, c6)
    await p.same_state([cid], [*ids, c6])
    assert await p.evm.events() == await p.mem.events()


@pytest.mark.parametrize("claims_per_window", [100, 7])
async def test_random_operations_match_the_pure_rules(claims_per_window: int) -> None:
    """Seeded random rounds over every claim and channel op, compared op by op: each round
    signs a request (mostly a fresh slice, sometimes a conflicting or bad one), may redeem
    it, files a claim when its deadline has passed, and answers it (OK, refusal, evidence,
    a wrong answer) or lets it be resolved; refunds with a refusal (valid or not), closes,
    top ups, unbonding are mixed in. With 7 claims per window (a 143 ms slot on the 1,000 ms
    window, rounded up) the queue of claim windows (claims.md C-1) sets most window ends."""
    rng = random.Random(13)
    side = random.Random(29)
    p = await make_pair(claims_per_window=claims_per_window)
    lid, clock = p.evm.ledger_id, p.clock
    for key in (A, B, C):
        await p.both("mint", key, key.account, 10 * TOKEN)
    await p.both("stake", B, 20_000, 300, 1_000)
    channels = [(await p.both("open_channel", A, B.account, 30_000, 50))[1]]
    claims: list[bytes] = []
    open_claims: list[tuple[bytes, Request]] = []
    signed: dict[bytes, list[Request]] = {channels[0]: []}
    top: dict[bytes, tuple[int, int]] = {channels[0]: (0, 0)}  # last n, last paid
    for step in range(90):  # bounded
        cid = rng.choice(channels)
        n, paid = top[cid]
        price = rng.choice([1, 50, 100, 400])
        kind = rng.random()
        if kind < 0.7:  # an honest fresh slice
            r = request(
                A, lid, cid, n + 1, paid + price + rng.choice([0, 0, 7]), price, clock.ms + 20
            )
            top[cid] = (r.n, r.paid)
        elif kind < 0.85 and signed[cid]:  # a conflict: same n, or overlapping / post-dated
            old = rng.choice(signed[cid])
            r = request(
                A,
                lid,
                cid,
                rng.choice([old.n, n + 1]),
                old.paid,
                price,
                clock.ms + rng.choice([20, 5_000]),
            )
        else:  # bad: another signer, zero price edge, above the deposit
            r = request(
                rng.choice([A, C]),
                lid,
                cid,
                n + 1,
                rng.choice([price - 1 if price > 1 else 1, 40_000]),
                price,
                clock.ms + 20,
            )
        signed[cid].append(r)
        if rng.random() < 0.4:
            amount = rng.choice([None, 0, r.price, r.paid, rng.randint(0, 30_000)])
            await p.both("redeem", B, rng.choice(signed[cid]), amount)
        clock.advance(21)
        outcome = await p.both("file_claim", rng.choice([A, A, A, A, C]), r)
        if outcome[0] == "ok":
            claims.append(outcome[1])
            open_claims.append((outcome[1], r))
        if open_claims and rng.random() < 0.8:
            claim_id, claimed = open_claims.pop(rng.randrange(len(open_claims)))
            move = rng.random()
            if move < 0.3:
                await p.answer(B, claim_id, evidence=rng.choice(signed[claimed.channel]))
            elif move < 0.85:
                status = "OK" if rng.random() < 0.5 else rng.choice(REFUSALS)
                charged = rng.choice([claimed.price, claimed.price, claimed.price + 1])
                charged = charged if status == "OK" else 0
                response = Response.create(
                    rng.choice([B, B, B, C]),
                    request=claimed,
                    status=status,
                    price=charged,
                    spent=charged,
                    body=b"pong",
                )
                await p.answer(B, claim_id, response)
            # else: left open, resolved later
        if side.random() < 0.15:  # refund with a refusal (own RNG: the walk is unchanged)
            refused = side.choice(signed[cid])
            status = side.choice(["OK", *REFUSALS, *REFUSALS])
            refusal = Response.create(
                side.choice([B, B, B, A]),
                request=side.choice([refused, refused, refused, r]),
                status=status,
                price=refused.price if status == "OK" else 0,
                spent=refused.price,
                body=b"no",
            )
            outcome = await p.refund(side.choice([A, A, A, C]), refused, refusal)
            if outcome[0] == "ok":
                claims.append(outcome[1])
        extra = rng.random()
        if extra < 0.08:
            await p.both("start_close", A, cid)
        elif extra < 0.12:
            await p.both("finalize_close", C, cid)
        elif extra < 0.15:
            await p.both("payee_close", B, cid, rng.choice(signed[cid]), rng.choice([None, 100]))
        elif extra < 0.22:
            await p.both("top_up", A, cid, rng.randint(1, 500))
        elif extra < 0.27:
            cid = (await p.both("open_channel", A, B.account, 30_000, 50))[1]
            channels.append(cid)
            signed[cid], top[cid] = [], (0, 0)
        elif extra < 0.45:
            clock.advance(rng.choice([60, 500, 1_100]))
            for claim_id in claims[-6:]:
                await p.both("resolve_claim", C, claim_id)
        elif extra < 0.48 and step > 70:  # unbonding (C-9) late in the walk
            await p.both("request_unstake" if extra < 0.47 else "withdraw_stake", B)
        await p.same_state(channels, claims)
    assert await p.evm.events() == await p.mem.events()
    # the walk reached every outcome (else the seed or the weights need a look)
    states = {c.state.value for c in [await p.mem.claim(i) for i in claims] if c}
    assert {"delivered", "refused", "frivolous", "upheld"} <= states, states
    clawed = [c.clawed for c in [await p.mem.claim(i) for i in claims] if c]
    assert any(clawed), "no clawback happened"
    refunds = [c for c in [await p.mem.claim(i) for i in claims] if c and c.bond == 0]
    assert refunds and any(c.clawed for c in refunds), "no refund with a refusal clawed back"
    filed = [c for c in [await p.mem.claim(i) for i in claims] if c and c.bond > 0]
    queued = [c for c in filed if c.window_ends > c.filed_at + 1_000]
    if claims_per_window < 100:
        assert queued, "no claim window was queued behind another (C-1)"


async def test_refund_with_refusal_matches_the_pure_rules() -> None:
    """FileClaim with the payee's signed refusal (file_claim_refused on chain): every check
    in order gives the same code on both ledgers, and a valid one refunds at once (REFUSED,
    no bond), clawing back from the stake a slice the payee had already redeemed."""
    p = await make_pair()
    lid, clock = p.evm.ledger_id, p.clock
    for key in (A, B, C):
        await p.both("mint", key, key.account, 10 * TOKEN)
    await p.both("stake", B, 5 * TOKEN, TOKEN, 1_000)
    _, cid = await p.both("open_channel", A, B.account, 1_000, 50)
    _, other = await p.both("open_channel", A, C.account, 1_000, 50)  # C has no stake
    price = 100

    def refuse(key: EvmKey, r: Request, status: str = "OVERLOADED") -> Response:
        return Response.create(key, request=r, status=status, price=0, spent=0, body=b"busy")

    r1 = request(A, lid, cid, 1, 100, price, clock.ms + 100)
    r2 = request(A, lid, cid, 2, 200, price, clock.ms + 100)
    r3 = request(A, lid, cid, 3, 300, price, clock.ms + 100)
    await p.both("redeem", B, r2, 200)  # B took slices 1 and 2
    # each refusal case, in the order of the checks (no deadline needs to have passed)
    bad_args = request(A, lid, cid, 1, 50, price, clock.ms)  # paid below the price
    await p.refund(A, bad_args, refuse(B, bad_args), expect=ErrorCode.INVALID_ARGUMENT)
    # a refusal is a Response
    await p.refund(A, r1, r1, expect=ErrorCode.INVALID_ARGUMENT)
    stray = request(A, lid, bytes(32), 1, 100, price, clock.ms)  # no such channel
    await p.refund(A, stray, refuse(B, stray), expect=ErrorCode.UNKNOWN_CHANNEL)
    # only the payer
    await p.refund(C, r1, refuse(B, r1), expect=ErrorCode.NOT_PARTY)
    forged = request(C, lid, cid, 1, 100, price, clock.ms)  # not signed by the payer
    await p.refund(A, forged, refuse(B, forged), expect=ErrorCode.INVALID_SIGNATURE)
    # a refusal signed by the payer, or by a stranger, not by the payee
    await p.refund(A, r1, refuse(A, r1), expect=ErrorCode.INVALID_SIGNATURE)
    await p.refund(A, r1, refuse(C, r1), expect=ErrorCode.INVALID_SIGNATURE)
    # the refusal of another request
    await p.refund(A, r1, refuse(B, r2), expect=ErrorCode.RESPONSE_MISMATCH)
    # not a refusal: OK, even for free
    ok = Response.create(B, request=r1, status="OK", price=price, spent=price, body=b"pong")
    await p.refund(A, r1, ok, expect=ErrorCode.RESPONSE_MISMATCH)
    free_ok = Response.create(B, request=r1, status="OK", price=0, spent=0, body=b"pong")
    await p.refund(A, r1, free_ok, expect=ErrorCode.RESPONSE_MISMATCH)
    big = request(A, lid, cid, 9, 2_000, price, clock.ms)  # above the deposit
    await p.refund(A, big, refuse(B, big), expect=ErrorCode.VOUCHER_EXCEEDS_DEPOSIT)
    # valid: slice 3 never redeemed (it stays in escrow); slice 2 redeemed (clawed back).
    # Neither body is checked: nothing is served, the two signatures are the proof
    no3 = refuse(B, r3, "UNKNOWN_SERVICE")
    no2 = dataclasses.replace(refuse(B, r2, "UNKNOWN_SERVICE"), body=b"not the hashed body")
    ids = []
    for r, no in ((dataclasses.replace(r3, body=b"not the hashed body"), no3), (r2, no2)):
        outcome = await p.refund(A, r, no)
        assert outcome[0] == "ok"
        ids.append(outcome[1])
    await p.same_state([cid, other], ids)
    # a second refund, a regular claim, on the same request: CLAIM_EXISTS
    await p.refund(A, r2, refuse(B, r2, "HANDLER_ERROR"), expect=ErrorCode.CLAIM_EXISTS)
    clock.advance(101)
    assert (await p.both("file_claim", A, r2))[1] == ErrorCode.CLAIM_EXISTS
    # a regular claim first, then the refund: CLAIM_EXISTS
    ids.append((await p.both("file_claim", A, r1))[1])
    await p.refund(A, r1, refuse(B, r1), expect=ErrorCode.CLAIM_EXISTS)
    # a payee without stake, a closed channel: still refunded (nothing to claw)
    r4 = request(A, lid, other, 1, 100, price, clock.ms + 5_000)
    await p.both("redeem", C, r4, None)
    await p.both("payee_close", C, other, None, None)
    no4 = refuse(C, r4, "DEADLINE_EXCEEDED")
    ids.append((await p.refund(A, r4, no4))[1])
    await p.same_state([cid, other], ids)
    claims = [await p.evm.claim(i) for i in ids]
    assert [c.state.value if c else None for c in claims] == [
        "refused",
        "refused",
        "open",
        "refused",
    ]
    c3, c2, _, c4 = claims
    assert c3 is not None and (c3.bond, c3.refund, c3.clawed) == (0, price, 0)
    assert c2 is not None and (c2.bond, c2.refund, c2.clawed) == (0, price, price)
    assert c4 is not None and (c4.bond, c4.refund, c4.clawed) == (0, price, 0)
    # the refusal is the claim's response evidence (C-5), rebuilt from the log
    assert c3.response_frame == no3.to_frame()
    assert c2.response_frame == no2.to_frame()
    # EvmLedger.file_claim(key, request, refusal) is the same op
    r5 = request(A, lid, cid, 5, 500, price, clock.ms + 100)
    no5 = refuse(B, r5)
    assert await p.evm.file_claim(A, r5, no5) == r5.hash
    assert await p.mem.file_claim(A, r5, no5) == r5.hash
    await p.same_state([cid, other], [*ids, r5.hash])
    assert await p.evm.events() == await p.mem.events()
