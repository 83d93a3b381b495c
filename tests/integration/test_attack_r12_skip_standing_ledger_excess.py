"""Attack round 12 on 46e481e: the futile-post skip (`_check_payee_take`: a refusal whose
slice starts at or above ``paid_seen`` is not posted) assumes that such a refund "would
claw nothing, now or after another post". That holds only while the payee holds no more
than its entitlement. When an earlier refund could not be clawed (the stake was gone: an
UPHELD claim's slash took it all first, settlement.md 5.3 "claw from what is left of the
stake after the slash"), the ledger's excess ``held - entitled`` stands; a refund then claws
``min(excess, price, stake)`` whatever it does to the entitlement, so once the payee has
staked again, posting *any* refusal of its claws the kept price back. The skip never
posts it.

Who gains/loses what (PRICE = 1000 yocto): BOB stakes 10**19 with penalty 10**19. ALICE's
n=1 is taken and withheld; BOB redeems its 1000. ALICE's claim is UPHELD: the slash takes
BOB's whole stake, the refund claws 0, and BOB holds 1000 against an entitlement of 0.
BOB stakes again (10**20) to keep selling, and refuses ALICE's next call (n=2, slice
(1000, 2000], starting at ``paid_seen``) with his signature. ALICE's check sees the 1000
excess; before 46e481e it posted n=2's refusal and the ledger clawed the 1000 from BOB's
new stake. Now the refusal is skipped as futile: BOB keeps n=1's price, refunded to ALICE
on paper and never paid back (and every later refusal of his above ``paid_seen`` is
skipped alike). Fails on 46e481e.
"""

from __future__ import annotations

import pytest
import trio
from node_support import claim_game_params, wait_until
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, TOKEN, Withholds, echo, fail

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import CallTimeout, open_node


async def test_a_refusal_above_paid_seen_still_claws_a_standing_ledger_excess() -> None:
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:r12-standing", claim_bond=10**18))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=NODE, behaviour=Withholds()) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        bob.serve("fail", fail, price=PRICE)
        await bob.stake(10**19, penalty=10**19, claim_window_ms=300)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
        channel = ch.channel
        with pytest.raises(CallTimeout):
            await alice.call(bob.addrs[0], "echo", b"withhold", max_price=PRICE, timeout=0.3)
        voucher = bob.payee_channels[channel].best
        assert voucher is not None and voucher.paid == PRICE
        assert await ledger.redeem(BOB, voucher) == PRICE

        async def upheld() -> bool:
            return any(c.state is ClaimState.UPHELD for c in await ledger.claims_of(ALICE.account))

        await wait_until(upheld)
        info = await ledger.channel(channel)
        assert info is not None
        assert (info.paid_seen, info.refunded, info.redeemed - info.clawed) == (PRICE, PRICE, PRICE)
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == 0  # the slash took it all: nothing clawed

        await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)  # BOB is back
        with pytest.raises(P2payError) as refused:
            await alice.call(bob.addrs[0], "fail", b"n2", max_price=PRICE, timeout=20)
        assert refused.value.code is ErrorCode.HANDLER_ERROR
        steps = alice.watcher.steps

        async def checked() -> bool:
            return alice.watcher.steps >= steps + 10 and not alice.watcher._takes_due

        await wait_until(checked)

        async def clawed() -> bool:
            now = await ledger.channel(channel)
            return now is not None and now.redeemed - now.clawed == 0

        with trio.move_on_after(5):
            await wait_until(clawed, timeout=10)
        info = await ledger.channel(channel)
        assert info is not None
        claims = [(c.n, c.state, c.clawed) for c in await ledger.claims_of(ALICE.account)]
        print(
            "held", info.redeemed - info.clawed, "entitled", info.paid_seen - info.refunded, claims
        )
        assert (await ledger.totals()).conserved
        assert info.redeemed - info.clawed == 0, (
            "BOB keeps n=1's price: ALICE's claim was UPHELD, and his refusal that would "
            "claw it from his new stake is never posted"
        )
