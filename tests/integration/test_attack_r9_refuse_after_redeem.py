"""Attack round 9 on 4c9cfca: the payee redeems a request's slice while the request is in
flight (so it counts as outstanding), then refuses it with a signature. Nothing makes the
payer check its take again: the stake leaves before any check, and the refused price is
kept.

The payer checks what its payee took (`_check_payee_take`) only when the payee redeems,
the channel closes, one of its claims ends with a refund, or the node starts (claims.md 6,
`_takes_due`). A signed refusal that reaches it on the stream for a request whose price
counted as outstanding lowers what the payee may hold (``spent + outstanding``) by that
price, but queues no check. So a payee that redeems *before* it refuses is compared once,
while the request is in flight (no excess), and never again while it keeps its stake.

Who gains what (PRICE = 1000 yocto): ALICE calls ``slow`` (n=1), whose handler BOB keeps
running. Meanwhile BOB redeems n=1's slice with ALICE's voucher (1000 yocto: within
ALICE's ``spent`` 0 plus the in-flight n=1, no alarm). Then n=1's handler fails: BOB's
signed refusal reaches ALICE (n=1 not charged, the refusal kept to be posted). ALICE's
watcher runs on for many steps and posts nothing. BOB asks to unstake, waits out the
unbonding period (a jump of the ledger's clock here) and withdraws his whole stake. When
ALICE finally closes the channel her watcher posts the refusal: the ledger refunds n=1's
slice but has no stake to claw it from. BOB served nothing and holds 1000 yocto of
ALICE's deposit.

Had the refusal's arrival queued a check, ALICE would have posted it at once (as she does
when BOB redeems after refusing: test_refund_absorbed), clawing the 1000 yocto from the
stake while it was bonded. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import pytest
import trio
from node_support import (
    ShiftedClock,
    claim_game_params,
    close_and_await_refund,
    wait_until,
    withdraw_whole_stake,
)
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node

WINDOW_MS = 2_000


async def test_a_refusal_after_the_redeem_is_posted_while_the_stake_is_bonded() -> None:
    clock = ShiftedClock()
    ledger = MemoryLedger(
        claim_game_params(b"p2pay:test:refuse-after-redeem", claim_bond=10**18),
        clock=clock,
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    release = trio.Event()

    async def slow_fail(call: Call) -> bytes:
        await release.wait()
        raise RuntimeError("no")

    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice,
    ):
        bob.serve("slow", slow_fail, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=WINDOW_MS)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
        channel = ch.channel
        payer = alice.payer_channels[channel]
        outcome: list[P2payError] = []

        async def call() -> None:
            with pytest.raises(P2payError) as info:
                await alice.call(bob.addrs[0], "slow", b"n1", max_price=PRICE, timeout=20)
            outcome.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await wait_until(lambda: bool(payer.in_flight))
            await wait_until(lambda: bob.payee_channels.get(channel) is not None)
            await wait_until(lambda: bob.payee_channels[channel].verified_voucher() is not None)
            voucher = bob.payee_channels[channel].verified_voucher()
            assert voucher is not None and voucher.paid == PRICE
            # BOB takes n=1's slice while n=1 is in flight: within spent 0 + outstanding 1
            assert await ledger.redeem(BOB, voucher) == PRICE
            events, _ = await ledger.events_for(ALICE.account)
            redeemed = max(e.seq for e in events if e.kind == "Redeemed")
            await wait_until(lambda: alice.watcher.cursor >= redeemed)
            steps = alice.watcher.steps
            await wait_until(lambda: alice.watcher.steps >= steps + 2)  # the check ran
            release.set()  # n=1's handler fails: BOB's signed refusal goes out
        (error,) = outcome
        assert error.code is ErrorCode.HANDLER_ERROR
        assert (payer.spent, payer.outstanding) == (0, 0)  # n=1 was not charged
        # ALICE's watcher runs on (the refusal read): its check would post n=1's refusal
        steps = alice.watcher.steps
        await wait_until(lambda: alice.watcher.steps >= steps + 20)
        info = await ledger.channel(channel)
        assert info is not None
        print("after the refusal: redeemed", info.redeemed, "clawed", info.clawed)

        # BOB leaves with his stake (no claim is open against it)
        await withdraw_whole_stake(ledger, BOB, WINDOW_MS, clock)

        # ALICE closes: her watcher checks BOB's take again and posts the refusal
        info, claims = await close_and_await_refund(alice, ledger, channel, 1)
        assert (await ledger.totals()).conserved
        assert claims and claims[0][1] is ClaimState.REFUSED
        # BOB served nothing: he must hold nothing of ALICE's deposit
        assert info.redeemed - info.clawed == 0, (info.redeemed, info.clawed)
