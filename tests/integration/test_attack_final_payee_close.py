"""Attack round on 9e00f5b: a payee close settles the channel while a claim on it is
still open, and the payer lets go of the payee's refusals it will need.

BOB (withholds n=2, never answers its claim) closes the channel himself (`payee_close`)
with ALICE's best voucher (3 prices paid), taking 2 prices: n=3's, and n=2's as if charged.
The ChannelClosed event makes ALICE's watcher check what BOB holds: 2 prices, within her
``spent`` (1) plus the outstanding n=2 (1), and the channel is CLOSED, so the watcher
"forgets" BOB's refusals (`_forget_refusals`: they expire now and the next prune drops
them). n=2's claim then ends UPHELD: the refund lowers BOB's entitlement to 2 prices,
exactly what he holds, so the ledger claws nothing; ALICE's check now sees 1 price too
many, but the refusal of n=1 it would post is gone. BOB keeps the price of a request he
withheld (claims.md 6: the refund must be clawed back through the refusals).

Two nodes on the in-memory transport and a dev MemoryLedger. Every wait is bounded; nothing
asserts on timing.
"""

from __future__ import annotations

import pytest
import trio
from node_support import wait_until
from test_refund_absorbed import (
    ALICE,
    BOB,
    DEPOSIT,
    PENALTY,
    PRICE,
    STAKE,
    Withholds,
    make_ledger,
    nodes,
    refused_signed,
)

from p2pay.core.settlement import ChannelState, ClaimState
from p2pay.node import CallTimeout


@pytest.mark.parametrize("close", ["payee", "payer"])
async def test_a_close_during_an_open_claim_does_not_drop_the_refusals(close: str) -> None:
    """``payee``: BOB closes at once with the voucher. ``payer``: ALICE closes (as the CLI's
    ``channel close`` does) and BOB, having counted the withheld n=2 as charged, redeems 2
    prices on ChannelClosing (C-8); ALICE's watcher finalizes the close: ChannelClosed."""
    ledger = make_ledger()
    async with nodes(ledger, Withholds(), window_ms=2_000) as (alice, bob):
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
        await refused_signed(alice, bob)  # n=1: BOB's signed refusal, kept by ALICE
        with pytest.raises(CallTimeout):
            await alice.call(bob.addrs[0], "echo", b"withhold", max_price=PRICE, timeout=0.3)
        result = await alice.call(bob.addrs[0], "echo", b"served", max_price=PRICE)
        assert (result.n, result.price) == (3, PRICE)
        voucher = bob.payee_channels[ch.channel].verified_voucher()
        assert voucher is not None and voucher.paid == 3 * PRICE

        async def claim_filed() -> bool:
            return any(c.n == 2 for c in await ledger.claims_of(ALICE.account))

        await wait_until(claim_filed)
        await alice.persister.flush()
        (refused,) = [r for r in await alice.store.requests(state="refused")]
        assert refused.n == 1 and await alice.store.response(refused.request_hash) is not None
        if close == "payee":
            # BOB closes at once, taking 2 prices (n=3's and the withheld n=2's)
            assert await ledger.payee_close(BOB, ch.channel, voucher, 2 * PRICE) == 2 * PRICE
        else:
            bob.payee_channels[ch.channel].spent += PRICE  # the withheld n=2, as charged
            await alice.close_channel(ch.channel)

        async def closed_and_read() -> bool:
            info = await ledger.channel(ch.channel)
            if info is None or info.state is not ChannelState.CLOSED:
                return False
            events, _ = await ledger.events_for(ALICE.account)
            seen = max(e.seq for e in events if e.kind == "ChannelClosed")
            return alice.watcher.cursor >= seen

        # ALICE's watcher reads ChannelClosed: BOB holds 2 prices, within spent (1) plus
        # the outstanding n=2 (1). On the old code it let BOB's refusals go then, as the
        # channel was closed, though n=2's claim was still open
        await wait_until(closed_and_read, timeout=20)
        steps = alice.watcher.steps
        await wait_until(lambda: alice.watcher.steps >= steps + 2)  # its check ran
        if [c.outcome for c in await alice.claims()] == ["open"]:  # n=2's claim still open
            await alice.persister.flush()
            stored = await alice.store.response(refused.request_hash)
            assert stored is not None and stored.expires_at > alice.now(), "refusal let go"
        # the node prunes expired responses every 100 watcher steps; this is one of them
        await alice.store.prune_responses(alice.prune_before())

        async def upheld() -> bool:
            return any(c.outcome == "upheld" for c in await alice.claims())

        await wait_until(upheld)

        async def clawed() -> bool:
            info = await ledger.channel(ch.channel)
            return info is not None and info.clawed == PRICE

        with trio.move_on_after(15):  # bounded: the bug is that it never comes
            await wait_until(clawed, timeout=60)
        info = await ledger.channel(ch.channel)
        claims = {c.n: c for c in await ledger.claims_of(ALICE.account)}
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None
        assert claims[2].state is ClaimState.UPHELD and claims[2].refund == PRICE
        # BOB served one request (n=3): he must hold its price and no more
        assert info.redeemed - info.clawed == PRICE, (info.redeemed, info.clawed)
        assert stake.amount == STAKE - PENALTY - PRICE
        assert (await ledger.totals()).conserved
