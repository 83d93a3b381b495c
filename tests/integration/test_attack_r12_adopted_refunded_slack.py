"""Attack round 12 on 46e481e: a channel adopted from the ledger counts the ledger's
*refunded* slices as ``forgotten`` (maybe charged), so a payee whose refund was clawed
back takes that price again after the payer loses its store, and the payer's take check
never sees it.

`adopted_payer_channel` sets ``forgotten = paid_seen`` ("all of that is forgotten:
signed, and maybe charged"). The ledger, though, also proves that ``refunded`` of it was
*not* the payee's (a REFUSED or UPHELD claim; settlement.md 5.3: entitlement is
``paid_seen - refunded``; claims.md 3, C-2: an honest payee's ``spent`` is at most
``paid_seen - refunded``). ``forgotten`` is both the rule-7 jump allowance and part of
`outstanding`, which `_check_payee_take` adds to ``spent`` as what the payee may hold. A
refunded price counted there is a yocto the payee may take again unseen.

Who gains/loses what (PRICE = 1000 yocto): ALICE signs n=1 (served) and n=2 (BOB takes
it, redeems both prices, never answers; ALICE's claim is UPHELD, the price refunded and
clawed from BOB's stake): ``paid_seen`` 2000, ``refunded`` 1000, BOB holds 1000. ALICE's
store is lost; the channel is adopted with ``forgotten`` 2000. BOB admits her new n=1
(slice (2000, 3000]) and serves it with a truthful receipt (``spent`` 2000: a jump of his
old 1000, within ``forgotten``), refuses the next request (slice (3000, 4000]) with his
signature, and redeems up to its voucher: he holds 3000. He served two requests (2000):
he took the refused slice, 1000 yocto, the price the ledger clawed from him. ALICE's
check: ``spent`` 2000 + outstanding 1000 (``forgotten`` 2000 less the 1000 absorbed: the
refunded price, counted as maybe charged) = 3000 = held: no excess, the refusal is never
posted, ALICE loses 1000 yocto. With ``forgotten = paid_seen - refunded`` (1000) the
check sees 1000 too many, posts the refusal, and the ledger claws the 1000 back.

Library level (the payer's channel as `adopted_payer_channel` builds it, the check's
formula as `Watcher._check_payee_take` computes it, the ledger the nodes use). Fails on
46e481e.
"""

from __future__ import annotations

from node_support import claim_game_params, first_life
from test_refund_absorbed import ALICE, BOB, DEPOSIT, PRICE, STAKE, TOKEN

from p2pay.core.messages import Response
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.node.book import adopted_payer_channel

WINDOW = 2_000


async def test_an_adopted_channel_does_not_let_a_clawed_refund_be_taken_again() -> None:
    offset = [0]
    ledger = MemoryLedger(
        claim_game_params(b"p2pay:test:r12-refunded-slack", claim_bond=10**18),
        clock=lambda: wall_clock_ms() + offset[0],
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    await ledger.stake(BOB, STAKE, 10**19, WINDOW)
    channel = await ledger.open_channel(ALICE, BOB.account, DEPOSIT, 100)
    _, r2 = await first_life(
        ledger, ALICE, BOB.account, channel, DEPOSIT, count=2, price=PRICE, deadline_in_ms=1_000
    )
    # n=1 served; n=2 taken and withheld; BOB redeems both
    assert await ledger.redeem(BOB, r2) == 2 * PRICE
    offset[0] += 1_500
    claim_id = await ledger.file_claim(ALICE, r2)
    offset[0] += WINDOW * 3
    await ledger.resolve_claim(ALICE, claim_id)
    claim = await ledger.claim(claim_id)
    assert claim is not None and claim.state is ClaimState.UPHELD and claim.clawed == PRICE
    info = await ledger.channel(channel)
    assert info is not None
    assert (info.paid_seen, info.refunded, info.redeemed - info.clawed) == (2 * PRICE, PRICE, PRICE)

    # ALICE's store is lost
    payer = adopted_payer_channel(info, ledger.ledger_id)
    now = await ledger.now()
    # BOB admits her new n=1 (slice (2000, 3000], above paid_seen) and serves it with a
    # truthful receipt: his spent was 1000 (old n=1), now 2000 (a jump of 1000)
    r3 = payer.next_request(ALICE, service="echo", body=b"3", price=PRICE, deadline=now + 20_000)
    receipt = Response.create(BOB, request=r3, status="OK", price=PRICE, spent=2 * PRICE, body=b"3")
    payer.on_response(receipt)
    r4 = payer.next_request(ALICE, service="echo", body=b"4", price=PRICE, deadline=now + 20_000)
    refusal = Response.create(
        BOB, request=r4, status="HANDLER_ERROR", price=0, spent=payer.spent, body=b""
    )
    payer.on_response(refusal)  # a signed refusal: ALICE keeps it
    print("slices", (r3.paid - PRICE, r3.paid), (r4.paid - PRICE, r4.paid))
    assert await ledger.redeem(BOB, r4) == 2 * PRICE  # n=3 and n=4's refused slice
    info = await ledger.channel(channel)
    assert info is not None
    held = info.redeemed - info.clawed
    # `Watcher._check_payee_take`: posts refusals only if this is positive
    excess = held - (payer.spent + payer.outstanding)
    print(
        "spent",
        payer.spent,
        "outstanding",
        payer.outstanding,
        "held",
        held,
        "excess",
        excess,
    )
    if excess > 0:
        await ledger.file_claim(ALICE, r4, refusal=refusal)
    info = await ledger.channel(channel)
    assert info is not None
    assert (await ledger.totals()).conserved
    # BOB served n=1 and n=3
    assert info.redeemed - info.clawed == 2 * PRICE, (
        f"BOB holds {info.redeemed - info.clawed}: n=4's refused price, the refund the "
        "ledger clawed from him, taken again unseen"
    )
