"""Attack round 13 on 7197854: an adopted channel now starts at ``last_n`` = the ledger's
highest request number, so it is no longer "not checked" (watcher `_check_payee_take`
skipped channels with ``last_n == 0``). But ``forgotten`` counts only what the ledger has
seen (``paid_seen - refunded``), not the vouchers the payee holds unredeemed. An honest
payee that later redeems a voucher it was paid before the payer's store was lost (served,
charged, simply not yet redeemed) then holds more than ``spent + outstanding`` and the
honest payer raises the alarm against it: "payee ... took ... more than our receipts
justify ... posting its signed refusals" (claims.md 6), and "not covered by its refusals".

Who gains/loses what: nobody gains money; ALICE (honest payer, store lost) accuses BOB
(honest payee) of taking PRICE yocto he was owed, the alarm claims.md 6 says is raised
only against a payee that takes more than it charged (threat model: a false alarm). With
a payer that had stored refusals of that payee (none here: the store is new) the check
would also post them, each a transaction the payer pays for. Before 7197854 an adopted
channel had ``last_n`` 0 and was "not checked" (by reading watcher.py); on 7197854 the
alarm is raised. A call after the adoption would resync ``forgotten`` from BOB's REPLAY;
here ALICE has not called yet when BOB redeems (a payee redeeming in batches, later).
No money moves: a false alarm, not a money defect.
"""

from __future__ import annotations

import logging

import pytest
from node_support import claim_game_params, first_life, wait_until
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN

from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import open_node
from p2pay.store.memory import MemoryStore


async def test_an_honest_payees_redeem_of_an_unredeemed_voucher_raises_the_alarm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:r13-false-alarm", claim_bond=10**18))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    await ledger.stake(BOB, STAKE, 10**19, 30_000)
    channel = await ledger.open_channel(ALICE, BOB.account, DEPOSIT, 100)
    # ALICE's first life: three requests, BOB served and charged them all (his spent 3000)
    signed = await first_life(ledger, ALICE, BOB.account, channel, DEPOSIT, count=3, price=PRICE)
    # BOB redeems n=2 now; n=3 he keeps for later (nothing obliges him to redeem at once)
    assert await ledger.redeem(BOB, signed[1]) == 2 * PRICE
    caplog.set_level(logging.INFO)
    net = MemoryNetwork()
    async with open_node(
        key=ALICE, ledger=ledger, network=net, config=NODE, store=MemoryStore()
    ) as alice2:
        payer = alice2.payer_channels[channel]
        print("adopted", payer.last_n, payer.paid, payer.forgotten)
        # BOB (honest) redeems what he charged: 3 * PRICE in all
        assert await ledger.redeem(BOB, signed[2]) == PRICE
        events, _ = await ledger.events_for(ALICE.account)
        last = max(e.seq for e in events if e.kind == "Redeemed")
        await wait_until(
            lambda: alice2.watcher.cursor >= last and not alice2.watcher._takes_due,
            timeout=60,
        )
        steps = alice2.watcher.steps
        await wait_until(lambda: alice2.watcher.steps >= steps + 3, timeout=60)
        info = await ledger.channel(channel)
        assert info is not None and info.redeemed == 3 * PRICE
        assert (await ledger.totals()).conserved
        assert "more than our receipts justify" not in caplog.text, (
            "ALICE accused an honest BOB of taking more than he charged"
        )
