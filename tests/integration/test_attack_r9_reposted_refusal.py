"""Attack round 9 on 4c9cfca: a refusal the payer already posted, tried again, is left as
``claimed`` in its store; a restart counts it as abandoned (an outstanding price), and the
payee keeps one more refused slice per such refusal.

Who gains what: BOB (provider) redeems with ALICE's best voucher the slices of requests
he refused with a signature (attack N1). ALICE's watcher posts his refusals (refund with
refusal) and the ledger claws them back: so far so good. But `_check_payee_take` walks
every request in state ``refused`` of the channel, including the ones it already posted
(their claim ended REFUSED and `_record_outcome` put them back to ``refused``). At the
next check with an excess it posts the first again: the ledger says CLAIM_EXISTS and the
watcher stages that request as ``claimed`` (no claim record, nothing ever heals it).
``claimed`` is not one of `book._ACCOUNTED_FOR`, so after a restart the request is
restored as **abandoned**: its price counts as what BOB may hold. The next refused slice
BOB redeems is then within ALICE's ``spent + outstanding``: nothing is posted, BOB keeps
the price (and each round adds one more such phantom).

Sequence (PRICE = 1000 yocto): n=1 refused (signed), n=2 served; BOB redeems 2 prices;
ALICE posts n=1's refusal (clawed 1000). n=3 refused, n=4 served; BOB redeems again;
ALICE posts n=1 again (CLAIM_EXISTS: n=1 is now ``claimed``) and n=3 (clawed 2000).
ALICE restarts (SQLite). n=5 refused, n=6 served; BOB redeems again: he should end
holding 3 prices (n=2, n=4, n=6 served); he holds 4 (n=5's refused slice), clawed 2000.

An honest BOB never redeems a refused slice, so is never touched. Every wait bounded;
nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

import trio
from node_support import wait_until
from test_refund_absorbed import (
    ALICE,
    BOB,
    DEPOSIT,
    NODE,
    PRICE,
    STAKE,
    TOKEN,
    echo,
    fail,
    make_ledger,
    refused_signed,
)

from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Node, open_node
from p2pay.store.sqlite import SqliteStore


async def held(ledger: MemoryLedger, channel: bytes) -> int:
    info = await ledger.channel(channel)
    assert info is not None
    return info.redeemed - info.clawed


async def round_of(alice: Node, bob: Node, ledger: MemoryLedger, channel: bytes) -> None:
    """One refused (signed) request, one served; BOB redeems all his voucher allows."""
    await refused_signed(alice, bob)
    await alice.call(bob.addrs[0], "echo", b"served", max_price=PRICE)
    voucher = bob.payee_channels[channel].verified_voucher()
    assert voucher is not None
    await ledger.redeem(BOB, voucher)


async def test_a_reposted_refusal_is_not_restored_as_abandoned(tmp_path: Path) -> None:
    ledger = make_ledger()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    path = tmp_path / "alice.sqlite"
    async with open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob:
        bob.serve("echo", echo, price=PRICE)
        bob.serve("fail", fail, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=30_000)

        store = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store
            ) as alice:
                ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
                channel = ch.channel
                # round 1: n=1 refused, n=2 served; BOB takes both slices
                await round_of(alice, bob, ledger, channel)

                async def clawed(amount: int) -> bool:
                    info = await ledger.channel(channel)
                    return info is not None and info.clawed == amount

                await wait_until(lambda: clawed(PRICE))
                # round 2: n=3 refused, n=4 served; BOB takes both slices again
                await round_of(alice, bob, ledger, channel)
                await wait_until(lambda: clawed(2 * PRICE))
                assert await held(ledger, channel) == 2 * PRICE  # n=2 and n=4, served
                steps = alice.watcher.steps
                await wait_until(lambda: alice.watcher.steps >= steps + 3)
                await alice.persister.flush()
                states = {r.n: r.state for r in await alice.store.requests()}
                print("request states before the restart:", states)
        finally:
            await store.aclose()

        store = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store
            ) as alice:
                payer = alice.payer_channels[channel]
                print("after restart: spent", payer.spent, "abandoned", sorted(payer.abandoned))
                # round 3: n=5 refused, n=6 served; BOB takes both slices again
                await round_of(alice, bob, ledger, channel)

                with trio.move_on_after(10):  # bounded: the bug is that it never comes
                    await wait_until(lambda: clawed(3 * PRICE), timeout=60)
                info = await ledger.channel(channel)
                assert info is not None
                claims = {c.n: c.state for c in await ledger.claims_of(ALICE.account)}
                print("claims", claims, "redeemed", info.redeemed, "clawed", info.clawed)
                assert claims.get(1) is ClaimState.REFUSED
                # BOB served n=2, n=4 and n=6: he must hold 3 prices, no more
                assert info.redeemed - info.clawed == 3 * PRICE, (info.redeemed, info.clawed)
                assert (await ledger.totals()).conserved
        finally:
            await store.aclose()
