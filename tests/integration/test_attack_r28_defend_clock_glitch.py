"""Attack round 28 on b7704c4: one reading of a clock ahead in a claim's answer task drops
the claim until the next rescan, past its window.

b7704c4 made the rescan (`_read_claims_against`) count a claim's window as ended only if
the ledger's clock and the node's both say so (round 27: one ledger reading ahead at a
restart's first rescan skipped an open claim until the next rescan: UPHELD). The answer
task itself (`Watcher._defend`) still ends on the ledger's word alone: "if await
node.ledger.now() > claim.window_ends: its window ended unanswered; return". Its
ClaimFiled event is behind the cursor; the only thing that starts a new answer task is
the next rescan, `RESCAN_STEPS` (20) steps later: 20 * `watch_interval`.

Round 27's setting: the endpoint's clock reads one hour ahead for exactly one read (here:
the answer task's, right after its first read of the claim), BOB's watch interval 0.5 s
(rescans 10 s apart), a 6 s claim window. No restart needed: ALICE files a claim on a
request she never sent (BOB serves it through the claim, DELIVERED) just after one of
BOB's rescans. BOB must answer it in its window. Every wait bounded; nothing asserts on
timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from node_support import ended_claim, wait_until
from test_watcher_claims import (
    ALICE,
    BOB,
    BOND,
    LEDGER_ID,
    PENALTY,
    PRICE,
    STAKE,
    claimed_request,
)

import p2pay.node.watcher as watcher_module
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

AHEAD_MS = 3_600_000
WINDOW_MS = 6_000

CONFIG = NodeConfig(
    watch_interval=0.5,  # rescans every 10 s (RESCAN_STEPS = 20, the default)
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
)


class Glitch(MemoryLedger):
    """An endpoint whose clock reads `AHEAD_MS` ahead for one read, the answer task's
    (`Watcher._defend`), once `armed`. The ledger's own operations go by its real time."""

    armed = False
    glitches = 0

    async def now(self) -> int:
        real = await super().now()
        if Glitch.armed and sys._getframe(1).f_code.co_name == "_defend":
            Glitch.armed = False
            Glitch.glitches += 1
            return real + AHEAD_MS
        return real


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_claim_survives_one_clock_reading_ahead_in_its_answer_task(
    tmp_path: Path,
) -> None:
    assert watcher_module.RESCAN_STEPS == 20  # the default, untouched
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Glitch(params)
    Glitch.armed, Glitch.glitches = False, 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=CONFIG) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        watcher = bob.watcher
        assert watcher is not None
        # just after a rescan (steps % 20 == 0 rescans): the next one is ~10 s away
        await wait_until(lambda: watcher.steps % watcher_module.RESCAN_STEPS == 1, timeout=30)
        Glitch.armed = True
        claim_id = await ledger.file_claim(
            ALICE, claimed_request(channel, 1, deadline=await ledger.now() - 1)
        )
        claim = await ledger.claim(claim_id)
        assert claim is not None
        window_ends = claim.window_ends

        async def decided_or_past() -> bool:
            found = await ledger.claim(claim_id)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

        await wait_until(decided_or_past, timeout=60)
        steps_at_end = watcher.steps
    claim = await ended_claim(ledger, ALICE, claim_id)
    print(
        f"after one clock reading ahead in the answer task: {claim.state}, "
        f"glitches {Glitch.glitches}, watcher steps at the window's end {steps_at_end}"
    )
    assert Glitch.glitches == 1  # the glitch hit the claim's answer task
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.DELIVERED, claim.state
