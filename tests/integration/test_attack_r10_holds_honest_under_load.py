"""Attack round 10 on 69a99c8, holds: the take checks that every refusal, unsigned refusal
and answer below the price now queues (`Node.take_may_exceed`) never turn on an honest
provider under load.

BOB (honest) serves ``echo``, ``fail`` (a signed HANDLER_ERROR) and ``slow`` (a random
delay up to 0.5 s; late answers are signed DEADLINE_EXCEEDED, uncharged, C-4), with a
node-wide limit of 4 admitted requests (so ALICE's calls meet unsigned OVERLOADED
refusals while CAROL keeps BOB busy), redeeming what he charged at every step. ALICE
(SQLite) makes 40 concurrent calls per round with timeouts of 0.1, 0.3 or 2 s (abandoned
requests, re-sends, claims), restarts between rounds, and in the second round BOB halves
``slow``'s price while calls are in flight (charges below the request's price). After
three rounds: nothing was clawed or slashed from BOB, no claim of ALICE's was UPHELD, no
refusal was posted, and ALICE's watcher never warned that BOB took more than her
receipts justify (C-2).

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio
from node_support import claim_game_params

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.identity import Keypair
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
CAROL = Keypair.from_seed(bytes([3]) * 32)
PRICE = 1_000
PAYER = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    default_timeout=30.0,
    min_challenge_ms=50,
    redeliver_timeout=0.5,
)
PROVIDER = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    default_timeout=30.0,
    min_challenge_ms=50,
    max_in_flight=3,
    max_in_flight_total=4,
    redeem_threshold=1,
    min_redeem_interval_ms=0,
    redeem_fraction_bps=0,
)


class Alarms(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.rejected: list[str] = []  # honest receipts the payer's receipt rules refused

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if "than our receipts" in line or "refund claim" in line or "not covered" in line:
            self.lines.append(line)
        elif line.startswith("bad receipt from"):
            self.rejected.append(line)


@pytest.mark.parametrize("seed", [0, 1])
async def test_an_honest_provider_under_load_is_never_clawed_or_warned_about(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    alarms = Alarms()
    watcher_log = logging.getLogger("p2pay.watcher")
    watcher_log.addHandler(alarms)
    node_log = logging.getLogger("p2pay.node")
    node_log.addHandler(alarms)
    try:
        ledger = MemoryLedger(claim_game_params(b"p2pay:test:r10-honest", claim_bond=10**18))
        for key in (ALICE, BOB, CAROL):
            await ledger.mint(key, key.account, 10**25)
        net = MemoryNetwork()

        async def slow(call: Call) -> bytes:
            await trio.sleep(rng.random() * 0.5)
            return b"s"

        async def echo(call: Call) -> bytes:
            return call.body

        async def fail(call: Call) -> bytes:
            raise RuntimeError("no")

        channel = b""
        async with (
            open_node(key=BOB, ledger=ledger, network=net, config=PROVIDER) as bob,
            open_node(key=CAROL, ledger=ledger, network=net, config=PAYER) as carol,
        ):
            bob.serve("echo", echo, price=PRICE)
            bob.serve("fail", fail, price=PRICE)
            bob.serve("slow", slow, price=PRICE)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=3_000)
            await carol.open_channel(bob.addrs[0], deposit=10**8)
            for round_ in range(3):
                store = await SqliteStore.open(tmp_path / "alice.sqlite")
                try:
                    async with open_node(
                        key=ALICE, ledger=ledger, network=net, config=PAYER, store=store
                    ) as alice:
                        if not channel:
                            ch = await alice.open_channel(bob.addrs[0], deposit=10**8)
                            channel = ch.channel

                        async def one(node: object, i: int) -> None:
                            service = rng.choice(["echo", "fail", "slow", "slow"])
                            timeout = rng.choice([0.1, 0.3, 2.0])
                            try:
                                await node.call(  # type: ignore[attr-defined]
                                    bob.addrs[0], service, b"x%d" % i, max_price=PRICE,
                                    timeout=timeout,
                                )  # fmt: skip
                            except P2payError:
                                pass

                        async with trio.open_nursery() as nursery:
                            for i in range(40):
                                nursery.start_soon(one, alice, i)
                                nursery.start_soon(one, carol, i)
                                await trio.sleep(rng.random() * 0.03)
                            if round_ == 1:
                                bob.serve("slow", slow, price=PRICE // 2)  # in flight: below
                        payer = alice.payer_channels[channel]
                        with trio.move_on_after(15):  # claims settle the abandoned ones
                            while payer.abandoned or payer.in_flight:
                                await trio.sleep(0.2)
                        steps = alice.watcher.steps
                        with trio.fail_after(60):
                            while alice.watcher.steps < steps + 10:
                                await trio.sleep(0.05)
                finally:
                    await store.aclose()
            overloaded = bob.counters.refused[ErrorCode.OVERLOADED.value]
            info = await ledger.channel(channel)
            assert info is not None
            claims = await ledger.claims_of(ALICE.account)
            stake = await ledger.stake_of(BOB.account)
            print(
                "seed", seed, "redeemed", info.redeemed, "clawed", info.clawed,
                "claims", sorted({c.state.value for c in claims}), len(claims),
                "overloaded", overloaded, "alarms", alarms.lines[:3],
            )  # fmt: skip
            assert info.redeemed > 0 and overloaded > 0
            assert info.clawed == 0
            assert stake is not None and stake.amount == 10**20
            assert not any(c.state is ClaimState.UPHELD for c in claims)
            assert (await ledger.totals()).conserved
            # No honest receipt refused. One was, under load (a claim's answer served the
            # request again while its handler ended: test_claim_answer_race.py), and the
            # payer then posted refusals that clawed nothing.
            assert alarms.rejected == []
            assert not any(c.bond == 0 for c in claims)  # no refusal was posted
            assert alarms.lines == []
    finally:
        watcher_log.removeHandler(alarms)
        node_log.removeHandler(alarms)
