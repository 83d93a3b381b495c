"""The redeem policy on running nodes (specs/protocol.md 17.1): a long busy run makes a
handful of redeems, not one per watcher step, and a close still pays the payee exactly
what it charged, with the ledger conserved."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.conformance import ALICE, BOB

PRICE = 1_000
CALLS = 2_000
TOKEN = 10**24


async def echo(call: Call) -> bytes:
    return call.body


def ledger() -> MemoryLedger:
    return MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:redeem", dev=True, min_challenge_ms=50, min_claim_window_ms=50
        )
    )


async def lifetime(config: NodeConfig, *, payer_closes: bool) -> dict[str, Any]:
    """CALLS paid calls (16 concurrent) on one channel, then a close; what the ledger saw."""
    led = ledger()
    for key in (ALICE, BOB):
        await led.mint(key, key.account, TOKEN)
    deposit = PRICE * (CALLS + 100)
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=led, network=net, config=config) as bob,
        open_node(key=ALICE, ledger=led, network=net, config=config) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        info = await alice.open_channel(bob.addrs[0], deposit=deposit, challenge_ms=200)
        events0 = len(await led.events(0, 10**9))
        tx0 = led.tx_count
        left = CALLS

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=10)

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(worker)
        during = led.tx_count - tx0
        charged = bob.counters.charged
        if payer_closes:
            await alice.close_channel(info.channel)
            with trio.fail_after(60):
                while (c := await led.channel(info.channel)) is None or c.state.value != "closed":
                    await trio.sleep(0.02)
        else:
            await bob.close_channel(info.channel)
    # read once the nodes are closed: the watcher has stopped, so its count of redeems and
    # the ledger's transactions below describe the same finished run (no race with a step)
    reasons = dict(bob.watcher.redeems)
    kinds = [e.kind for e in (await led.events(0, 10**9))[events0:]]
    return {
        "during": during,
        "tx": led.tx_count - tx0,
        "redeemed_events": kinds.count("Redeemed"),
        "reasons": reasons,
        "charged": charged,
        "bob": await led.balance(BOB.account),
        "alice": await led.balance(ALICE.account),
        "deposit": deposit,
        "conserved": (await led.totals()).conserved,
    }


@pytest.mark.parametrize("payer_closes", [False, True], ids=["payee_closes", "payer_closes"])
async def test_a_long_run_makes_few_redeems_and_the_close_redeems_the_rest(
    payer_closes: bool,
) -> None:
    # watcher steps every 20 ms: the old per-threshold policy redeemed at nearly each one
    config = NodeConfig(watch_interval=0.02, min_challenge_ms=200)
    out = await lifetime(config, payer_closes=payer_closes)
    assert out["charged"] == CALLS * PRICE
    # one redeem when half the escrow was charged, none more within the minimum interval
    assert out["during"] == 1
    assert out["reasons"].get("fraction") == 1
    if payer_closes:
        # StartClose, the watcher's closing redeem, FinalizeClose
        assert out["reasons"].get("closing") == 1
        assert out["tx"] == 1 + 3
    else:
        assert out["tx"] == 1 + 1  # PayeeClose redeems the rest with the close
    assert out["redeemed_events"] == 2
    # every yocto charged reached the payee; the rest of the deposit went back
    assert out["bob"] == TOKEN + CALLS * PRICE
    assert out["alice"] == TOKEN - CALLS * PRICE
    assert out["conserved"]


async def test_an_absolute_threshold_without_interval_redeems_at_every_step() -> None:
    """The old behaviour, still configurable: the count follows the run's length."""
    config = NodeConfig(
        watch_interval=0.02,
        redeem_fraction_bps=0,
        redeem_threshold=10 * PRICE,
        min_redeem_interval_ms=0,
        min_challenge_ms=200,
    )
    out = await lifetime(config, payer_closes=False)
    # every watcher redeem was for the threshold, and there were many (about one per step)
    assert set(out["reasons"]) == {"threshold"}, out["reasons"]
    assert out["reasons"]["threshold"] >= 5
    # the ledger saw exactly those redeems and the PayeeClose: both counted after the close,
    # so a watcher step between the last call and the close is counted on both sides
    assert out["tx"] == out["reasons"]["threshold"] + 1
    assert out["redeemed_events"] - out["reasons"]["threshold"] in (0, 1)  # + the close's
    assert out["bob"] == TOKEN + CALLS * PRICE
    assert out["conserved"]
