"""Attack round 12 on 46e481e, holds: an honest payer whose store is lost (a new store
adopts the channel with ``paid`` and ``forgotten`` at ``paid_seen``) keeps using the
channel with an honest payee: the first call resyncs, every later call is served, the
payee's receipts (a jump of its old ``spent``) are accepted, and its redeem of what it
charged raises no alarm: no claim, no post, nothing clawed, and the payer's numbers add up
to the ledger's."""

from __future__ import annotations

import logging

import pytest
from node_support import claim_game_params, wait_until
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN, echo

from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import open_node
from p2pay.store.memory import MemoryStore


async def test_an_honest_payer_with_a_lost_store_keeps_using_its_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:r12-holds", claim_bond=10**18))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    async with open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=30_000)
        async with open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice:
            ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
            channel = ch.channel
            for i in range(3):
                await alice.call(bob.addrs[0], "echo", b"%d" % i, max_price=PRICE)
            # BOB redeems only the first two (one charged price unredeemed)
            payee = bob.payee_channels[channel]
            assert await ledger.redeem(BOB, payee.verified_voucher(), 2 * PRICE) == 2 * PRICE
        caplog.set_level(logging.INFO)
        async with open_node(
            key=ALICE, ledger=ledger, network=net, config=NODE, store=MemoryStore()
        ) as alice2:
            for i in range(3):
                result = await alice2.call(bob.addrs[0], "echo", b"b%d" % i, max_price=PRICE)
                assert result.price == PRICE
            payer = alice2.payer_channels[channel]
            assert payee.spent == 6 * PRICE
            assert payer.spent + payer.outstanding >= payee.spent
            assert await ledger.redeem(BOB, payee.verified_voucher(), payee.spent) == 4 * PRICE
            events, _ = await ledger.events_for(ALICE.account)
            last = max(e.seq for e in events if e.kind == "Redeemed")
            await wait_until(
                lambda: alice2.watcher.cursor >= last and not alice2.watcher._takes_due
            )
            steps = alice2.watcher.steps
            await wait_until(lambda: alice2.watcher.steps >= steps + 3)
            assert alice2.counters.claims_filed == 0
            assert await ledger.claims_of(ALICE.account) == []
            info = await ledger.channel(channel)
            assert info is not None and info.clawed == 0 and info.redeemed == 6 * PRICE
            assert "more than our receipts justify" not in caplog.text
            assert (await ledger.totals()).conserved
