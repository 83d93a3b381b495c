"""Attack round 10 on 69a99c8, the open-channel form of test_attack_r10_refusal_during_check:
a payee that already holds an excess the payer cannot claw back makes every check of its
take read the payer's store, and a refusal that arrives during that read is dropped with
the check; the stake leaves before anything checks again.

`Watcher._check_takes` discards a channel from ``_takes_due`` once its check returned, so
a `check_take` made while the check awaited (the refusal's arrival, `_on_receipt`) is
lost. A check only awaits after it computed the excess when the excess is positive: it
then flushes and reads the claim records and the refused requests, and posts those it
read. A refusal read after that read is not among them, and nothing is posted, so no
ClaimAnswered event brings the check back either.

Who gains what (PRICE = 1000 yocto): BOB cuts ``echo``'s price to 500 just before ALICE's
second call, which she signs at 1000 (the price she knew): n=2 is charged 500, and BOB
redeems its whole slice. That is the written residual "served slices charged below their
price" (claims.md 7): 500 yocto ALICE's refusals cannot claw back, so from then on each
check of hers finds an excess and reads her store. ALICE calls ``slow`` (n=3), whose
handler BOB keeps running; BOB redeems n=3's slice too (3000 yocto held: 500 over ALICE's
``spent`` 1500 plus the in-flight 1000; nothing to post). n=3's signed refusal
(HANDLER_ERROR) reaches ALICE while that check reads her refused requests. The check it
queues is discarded with the running one: ALICE's watcher runs on and posts nothing. BOB
asks to unstake, waits out the unbonding period (a jump of the ledger's clock here) and
withdraws his stake. ALICE closes: her check posts n=3's refusal, the ledger refunds it
but has no stake to claw it from. BOB served 1500 yocto worth (n=1 and n=2's cut price),
may keep n=2's whole slice (2000 yocto) by the residual, and holds 3000: n=3's refused
price on top.

Had the arrival's check survived, ALICE would have posted n=3's refusal at the next step
and the ledger would have clawed 1000 yocto from BOB's bonded stake (what happens when the
refusal arrives outside the check: tests/integration/test_attack_r9_refuse_after_redeem
.py). The arrival is placed in the window deterministically (ALICE's store lets BOB's
handler fail right after the check read the refused requests, and waits, bounded, until
ALICE's client took the refusal); every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import pytest
import trio
from node_support import (
    ShiftedClock,
    claim_game_params,
    close_and_await_refund,
    wait_until,
    withdraw_whole_stake,
)
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN, echo

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node
from p2pay.store.base import OutgoingRequest
from p2pay.store.memory import MemoryStore

WINDOW_MS = 2_000


class ArrivesAfterTheRead(MemoryStore):
    """ALICE's store: right after the check of what BOB took read her refused requests,
    the refusal arrives (`arrive`), once."""

    arrive: Callable[[], Awaitable[None]] | None = None

    async def requests(self, state: str | None = None) -> list[OutgoingRequest]:
        found = await super().requests(state)
        if self.arrive is not None and sys._getframe(1).f_code.co_name == "_check_payee_take":
            arrive, self.arrive = self.arrive, None
            await arrive()
        return found


async def held(ledger: MemoryLedger, channel: bytes) -> int:
    info = await ledger.channel(channel)
    assert info is not None
    return info.redeemed - info.clawed


async def test_a_refusal_arriving_during_the_check_is_posted_while_the_stake_is_bonded() -> None:
    clock = ShiftedClock()
    ledger = MemoryLedger(
        claim_game_params(b"p2pay:test:r10-during-check-open", claim_bond=10**18),
        clock=clock,
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    release = trio.Event()

    async def slow_fail(call: Call) -> bytes:
        await release.wait()
        raise RuntimeError("no")

    net = MemoryNetwork()
    store = ArrivesAfterTheRead()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE, store=store) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        bob.serve("slow", slow_fail, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=WINDOW_MS)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
        channel = ch.channel
        payer = alice.payer_channels[channel]
        payee = lambda: bob.payee_channels[channel]  # noqa: E731

        assert (await alice.call(bob.addrs[0], "echo", b"n1", max_price=PRICE)).price == PRICE
        bob.serve("echo", echo, price=PRICE // 2)  # ALICE signs n=2 at the price she knew
        result = await alice.call(bob.addrs[0], "echo", b"n2", max_price=PRICE)
        assert (result.n, result.price) == (2, PRICE // 2)
        voucher = payee().verified_voucher()
        assert voucher is not None and voucher.paid == 2 * PRICE
        # BOB takes n=2's whole slice (the residual): 500 beyond ALICE's receipts, for good
        assert await ledger.redeem(BOB, voucher) == 2 * PRICE
        await wait_until(lambda: alice.watcher.steps > 0 and not alice.watcher._takes_due)

        async def arrive() -> None:
            release.set()  # n=3's handler fails: BOB's signed refusal goes out
            await wait_until(lambda: not payer.in_flight, timeout=30)

        outcome: list[P2payError] = []

        async def call() -> None:
            with pytest.raises(P2payError) as info:
                await alice.call(bob.addrs[0], "slow", b"n3", max_price=PRICE, timeout=30)
            outcome.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await wait_until(lambda: bool(payer.in_flight))
            await wait_until(lambda: (v := payee().verified_voucher()) is not None and v.n == 3)
            voucher = payee().verified_voucher()
            assert voucher is not None and voucher.paid == 3 * PRICE
            store.arrive = arrive
            # BOB takes n=3's slice while n=3 is in flight
            assert await ledger.redeem(BOB, voucher) == PRICE
        (error,) = outcome
        assert error.code is ErrorCode.HANDLER_ERROR  # signed: ALICE keeps it
        assert store.arrive is None  # it came during the check
        assert (payer.spent, payer.outstanding) == (PRICE + PRICE // 2, 0)
        # ALICE's watcher runs on: a check of BOB's take would post n=3's refusal
        steps = alice.watcher.steps
        await wait_until(lambda: alice.watcher.steps >= steps + 20)
        print("after the refusal: held", await held(ledger, channel))

        # BOB leaves with his stake (no claim is open against it)
        await withdraw_whole_stake(ledger, BOB, WINDOW_MS, clock)

        # ALICE closes: her watcher checks BOB's take again and posts the refusal
        info, claims = await close_and_await_refund(alice, ledger, channel, 3)
        assert (await ledger.totals()).conserved
        assert claims and claims[0][:2] == (3, ClaimState.REFUSED)
        # BOB may keep n=1's price and n=2's whole slice; n=3 he refused
        assert info.redeemed - info.clawed <= 2 * PRICE, (info.redeemed, info.clawed)
