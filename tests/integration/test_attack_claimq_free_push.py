"""Attack (claim queue): a claim window pushed far beyond the stake's window, for free
(specs/claims.md C-1, settlement.md FileClaim and section 6).

`window_ends = max(now + W, stake.last_window_ends + slot)` remembers every claim ever filed
against the stake, answered or not: `last_window_ends` only grows. A payer with a tiny
channel to the provider files a claim on a made-up request, the provider answers it at once
with a signed refusal (REFUSED: bond back, its own 1-yocto slice refunded), and files the
next: each round trip costs nothing and pushes every later claim a slot further. A cheating
provider does this with its own sybil channel, then withholds: the honest claimant's answer,
refund and bond wait `W + k * slot` instead of the `W` the stake announced (and the
30-day cap on `claim_window_ms` no longer bounds it). Measured on a real `p2pay node run`
over SQLite (attacks/claimq/free_push.py, PYTHONPATH at 301a488): 3,984 free claims in
20 s pushed the next claim's 30 s window to 1,203 s (with the fix: 30 s).

The rule the test holds: a claim filed when no claim against the stake is open gets the
stake's window, `W`, whatever was filed (and answered) before. Deterministic: a manual clock.
"""

from __future__ import annotations

from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Response
from p2pay.core.settlement import ClaimState, Params, claim_slot_ms
from p2pay.ledger.memory import MemoryLedger
from p2pay.testing import ManualClock, unchecked_request

SYBIL = Keypair.from_seed(bytes([11]) * 32)  # the provider's own payer (or any griefer)
CAROL = Keypair.from_seed(bytes([12]) * 32)  # an honest client
BOB = Keypair.from_seed(bytes([13]) * 32)  # the provider
TOKEN = 10**24
DAY = 24 * 3_600_000
PUSH = 200  # free claims, each answered before the next is filed


async def test_answered_claims_do_not_push_a_later_claims_window() -> None:
    time = ManualClock(1_700_000_000_000)
    params = Params(ledger_id=b"p2pay:test:claimq-push", dev=True, claim_bond=10**18)
    window = params.max_claim_window_ms  # 30 days: the longest a stake may announce
    slot = claim_slot_ms(params, window)
    ledger = MemoryLedger(params, clock=time)
    for key in (SYBIL, CAROL, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    await ledger.stake(BOB, TOKEN, TOKEN // 10, window)
    sybil_ch = await ledger.open_channel(SYBIL, BOB.account, 10**6, 60_000)
    carol_ch = await ledger.open_channel(CAROL, BOB.account, 10**6, 60_000)
    before = await ledger.balance(SYBIL.account)
    for n in range(1, PUSH + 1):
        made_up = unchecked_request(
            SYBIL,
            ledger=params.ledger_id,
            channel=sybil_ch,
            n=n,
            paid=n,
            price=1,
            service="nope",
            body=b"x",
            deadline=time.ms - 1,
        )
        claim_id = await ledger.file_claim(SYBIL, made_up)
        refusal = Response.create(
            BOB,
            request=made_up,
            status=ErrorCode.UNKNOWN_SERVICE.value,
            price=0,
            spent=0,
            body=b"",
        )
        await ledger.answer_claim(BOB, claim_id, refusal)
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.REFUSED
    stake = await ledger.stake_of(BOB.account)
    assert stake is not None and stake.open_claims == 0
    assert await ledger.balance(SYBIL.account) == before  # every bond came back: it was free
    # now the provider withholds an honest client's request; the client claims it
    withheld = unchecked_request(
        CAROL,
        ledger=params.ledger_id,
        channel=carol_ch,
        n=1,
        paid=1_000,
        price=1_000,
        service="echo",
        body=b"hi",
        deadline=time.ms - 1,
    )
    carol_claim = await ledger.claim(await ledger.file_claim(CAROL, withheld))
    assert carol_claim is not None
    got = carol_claim.window_ends - carol_claim.filed_at
    assert got == window, (
        f"no claim open, yet the window is {got / DAY:.0f} days, not {window / DAY:.0f} "
        f"({PUSH} free answered claims pushed it {PUSH} slots of {slot / 3_600_000:.1f} h)"
    )
    assert (await ledger.totals()).conserved
