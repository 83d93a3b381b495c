"""Attack round 12 on 46e481e: after a lost (or new) store, the payer's first requests
still reuse request *numbers* it signed before, so a claim on any of them ends FRIVOLOUS
with the payer's own older request as evidence, and the claim bond goes to the payee.

46e481e floors an adopted channel's ``paid`` at the ledger's ``paid_seen``
(`adopted_payer_channel`), so the next *slice* lies above every voucher the ledger has
seen. But the adopted channel starts at ``last_n = 0``: its first request is numbered 1
whatever the payer signed before, and ``last_n`` is only ever learnt from the payee's
REPLAY (protocol.md 15 step 5). A tiling conflict (settlement.md 5.2) is not only an
overlap of slices: two requests under one number, or a lower-numbered request whose slice
lies above a higher-numbered one's, conflict too. The new n=1 (slice (3000, 4000]) is in
conflict with the old n=1 (same number, another hash) and with the old n=2, n=3 (numbered
above it, with slices below it). Every payee knows at least its newest voucher, so the
payer's first request after adoption is always refutable.

Who gains/loses what (PRICE = 1000 yocto, claim bond 10**18 yocto): ALICE signs n=1..3,
BOB serves them and redeems everything (``paid_seen`` 3000: the written bound of
claims.md 7, "only until the payee redeems", says the payer is safe from here). ALICE's
store is lost. Her first request is n=1 with slice (3000, 4000].

* `test_..._dishonest_payee_takes_the_bond` (library): BOB simply does not answer REPLAY:
  he admits n=1 and withholds it. ALICE claims n=1 after its deadline (claims.md 6); BOB
  answers with ALICE's own old n=1 as evidence: FRIVOLOUS, ALICE's bond (10**18) goes to
  BOB, and the price is not refunded (he may redeem the new voucher too).
* `test_..._honest_payee_takes_the_bond` (two real nodes): BOB is honest; his REPLAY to
  n=1 and his answer to ALICE's re-send are lost on the way back to her (a one-way link
  failure: `MemoryNetwork.set_send_filter`). ALICE's watcher re-sends, gets nothing, and
  claims n=1 as claims.md 6 says; BOB's honest watcher answers the claim with the
  conflicting old request it holds as evidence: FRIVOLOUS, ALICE's bond goes to an honest
  BOB through nobody's fault but the reused number.

Both fail on 46e481e.
"""

from __future__ import annotations

import pytest
from node_support import claim_answered_with_evidence, claim_game_params, first_life, wait_until
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN, echo

from p2pay.core.messages import Hello, decode_frame
from p2pay.core.settlement import ClaimState, tiling_conflict
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.memory import MemoryNetwork
from p2pay.node import CallTimeout, open_node
from p2pay.node.book import adopted_payer_channel, ledger_numbers
from p2pay.store.memory import MemoryStore

BOND = 10**18


async def test_an_adopted_channels_first_request_dishonest_payee_takes_the_bond() -> None:
    offset = [0]
    ledger = MemoryLedger(
        claim_game_params(b"p2pay:test:r12-adopted-n", claim_bond=BOND),
        clock=lambda: wall_clock_ms() + offset[0],
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    await ledger.stake(BOB, STAKE, 10**19, 30_000)
    channel = await ledger.open_channel(ALICE, BOB.account, DEPOSIT, 100)
    now = await ledger.now()
    signed = await first_life(ledger, ALICE, BOB.account, channel, DEPOSIT, count=3, price=PRICE)
    # BOB served all three and redeemed everything: paid_seen is his newest voucher
    assert await ledger.redeem(BOB, signed[2]) == 3 * PRICE
    info = await ledger.channel(channel)
    assert info is not None and info.paid_seen == 3 * PRICE

    # ALICE's store is lost: the channel is adopted from the ledger as her node does
    numbers = await ledger_numbers(ledger, ALICE.account, {channel})
    after = adopted_payer_channel(info, ledger.ledger_id, last_n=numbers[channel])
    victim = after.next_request(
        ALICE, service="echo", body=b"new", price=PRICE, deadline=now + 5_000
    )
    print("n", victim.n, "slice", (victim.paid - victim.price, victim.paid))
    assert victim.paid - victim.price >= info.paid_seen  # the 46e481e floor holds
    # BOB admits it (no REPLAY) and never answers; ALICE claims it after its deadline
    offset[0] += 6_000
    conflicting = [r.n for r in signed if tiling_conflict(victim, r, 60_000)]
    print("old requests in conflict with the new request:", conflicting)
    claim = await claim_answered_with_evidence(ledger, ALICE, BOB, victim, signed[0])
    assert (await ledger.totals()).conserved
    assert claim.state is not ClaimState.FRIVOLOUS, "ALICE's 10**18 bond went to BOB"


async def test_an_adopted_channels_first_request_honest_payee_takes_the_bond() -> None:
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:r12-adopted-n-nodes", claim_bond=BOND))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    async with open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=3_000)
        # ALICE's first life: three calls served, BOB redeems all of them
        async with open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice:
            ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
            channel = ch.channel
            for i in range(3):
                await alice.call(bob.addrs[0], "echo", b"%d" % i, max_price=PRICE)
            voucher = bob.payee_channels[channel].verified_voucher()
            assert voucher is not None and voucher.n == 3
            assert await ledger.redeem(BOB, voucher, 3 * PRICE) == 3 * PRICE
        # her store is lost: a new one adopts the channel from the ledger
        async with open_node(
            key=ALICE, ledger=ledger, network=net, config=NODE, store=MemoryStore()
        ) as alice2:
            payer = alice2.payer_channels[channel]
            # (on 46e481e: last_n 0, so the next request was numbered 1 again)
            assert (payer.last_n, payer.paid, payer.forgotten) == (3, 3 * PRICE, 3 * PRICE)

            def keep(frame: bytes) -> bytes | None:  # BOB's replies lost (hello gets through)
                try:
                    return frame if isinstance(decode_frame(frame), Hello) else None
                except Exception:
                    return None

            net.set_send_filter(str(BOB.peer_id), keep)
            with pytest.raises(CallTimeout):
                await alice2.call(bob.addrs[0], "echo", b"after", max_price=PRICE, timeout=0.5)

            async def claim_ended() -> bool:
                claims = await ledger.claims_of(ALICE.account)
                return any(c.state is not ClaimState.OPEN for c in claims)

            balance = await ledger.balance(ALICE.account)
            await wait_until(claim_ended, timeout=60)
            claims = await ledger.claims_of(ALICE.account)
            print([(c.n, c.paid, c.state, c.bond) for c in claims])
            print("ALICE's balance moved by", await ledger.balance(ALICE.account) - balance)
            assert (await ledger.totals()).conserved
            frivolous = [c for c in claims if c.state is ClaimState.FRIVOLOUS]
            assert not frivolous, "ALICE's 10**18 bond went to BOB (her n=1 reuses a number)"
