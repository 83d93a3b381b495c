"""Attack round 11 on 797d36f: after a lost store, the payer re-signs below what the
ledger proves it signed, on the word of a payee that shows an old voucher of its own in
the resync; the payee withholds the new request and answers the payer's claim FRIVOLOUS
with the payer's own older request as evidence, taking the claim bond.

A payer that lost its store adopted its channels from the ledger with ``paid = 0``
(`ChannelBook.adopt_ledger_channels`; now `adopted_payer_channel`, which this test uses)
and learned the floor of its next slice only from the
payee's resync voucher (`PayerChannel.on_replay`: "numbers only grow and never beyond what
it signed"). Any voucher the payer really signed passes that check, the newest or not, and
``paid_max`` must only equal that voucher's ``paid``. The ledger, though, already holds
proof of a higher ``paid``: the payee redeemed its newest voucher (``paid_seen``). The
payer ignores it, so it signs a slice inside slices it signed before: a tiling conflict
(claims.md 2) the payee can show as evidence against the payer's claim.

Who gains what (PRICE = 1000 yocto, claim bond 10**18 yocto): ALICE signs n=1..3 (slices
up to 3000) and BOB serves them and redeems 3000 (``paid_seen`` 3000 on the ledger).
ALICE loses her store. Her first request (n=1) is answered REPLAY with BOB's *old* voucher
n=1 (paid 1000, ``last_n`` 3): genuine, hers, so adopted; her next request is n=4 with
slice (1000, 2000], inside n=2's. BOB admits it (its voucher is worth nothing new to him)
and never answers; ALICE claims n=4 as claims.md 6 says; BOB answers with n=2 as
evidence: FRIVOLOUS, and ALICE's 10**18 yocto bond goes to BOB (a thousand billion times
the price). Had ALICE floored her ``paid`` at the ledger's ``paid_seen`` (3000), n=4's
slice would be (3000, 4000], in conflict with nothing: the claim would be UPHELD or
answered. The written bound for a lost store ("cannot claim requests it no longer
remembers; after a resync never signs below the payee's paid_max") does not cover a
paid_max the ledger shows to be stale.

Library level (the payer's channel as `adopt_ledger_channels` builds it, the ledger as the
nodes use it); no timing.
"""

from __future__ import annotations

from node_support import claim_answered_with_evidence, claim_game_params
from test_refund_absorbed import ALICE, BOB, DEPOSIT, PRICE, STAKE, TOKEN

from p2pay.core.channel import PayerChannel, Replay
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.node.book import adopted_payer_channel

BOND = 10**18


async def test_a_stale_resync_voucher_does_not_make_the_payers_claim_frivolous() -> None:
    offset = [0]
    ledger = MemoryLedger(
        claim_game_params(b"p2pay:test:r11-stale-resync", claim_bond=BOND),
        clock=lambda: wall_clock_ms() + offset[0],
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    await ledger.stake(BOB, STAKE, 10**19, 30_000)
    channel = await ledger.open_channel(ALICE, BOB.account, DEPOSIT, 100)

    def fresh() -> PayerChannel:  # ALICE's channel as she opened it
        return PayerChannel(
            ledger=ledger.ledger_id,
            channel=channel,
            payer=ALICE.account,
            payee=BOB.account,
            deposit=DEPOSIT,
        )

    now = await ledger.now()
    before = fresh()  # ALICE's store, before it is lost
    signed = [
        before.next_request(
            ALICE, service="echo", body=b"%d" % i, price=PRICE, deadline=now + 20_000
        )
        for i in (1, 2, 3)
    ]
    assert [r.paid for r in signed] == [PRICE, 2 * PRICE, 3 * PRICE]
    # BOB served them (ALICE had their receipts) and redeems all 3 prices
    assert await ledger.redeem(BOB, signed[2]) == 3 * PRICE
    info = await ledger.channel(channel)
    assert info is not None and info.paid_seen == 3 * PRICE

    # ALICE's store is lost: the channel is adopted from the ledger
    after = adopted_payer_channel(info, ledger.ledger_id)
    first = after.next_request(ALICE, service="echo", body=b"a", price=PRICE, deadline=now + 20_000)
    assert first.n == 1
    # BOB's REPLAY shows his *old* voucher n=1 (hers: it verifies), last_n 3
    outcome = after.on_replay(1, last_n=3, voucher=signed[0], paid_max=signed[0].paid)
    assert outcome is Replay.SUPERSEDED
    victim = after.next_request(ALICE, service="echo", body=b"b", price=PRICE, deadline=now + 5_000)
    print("n", victim.n, "slice", (victim.paid - victim.price, victim.paid), "paid_seen", 3 * PRICE)

    # BOB takes it and never answers; ALICE claims it after its deadline
    offset[0] += 6_000
    # BOB answers with ALICE's own n=2 (slice (1000, 2000]) as evidence
    claim = await claim_answered_with_evidence(ledger, ALICE, BOB, victim, signed[1])
    assert (await ledger.totals()).conserved
    assert claim.state is not ClaimState.FRIVOLOUS, "ALICE's bond went to BOB"
    # the slice she signs after the resync lies above what the ledger proves she signed
    assert victim.paid - victim.price >= info.paid_seen
