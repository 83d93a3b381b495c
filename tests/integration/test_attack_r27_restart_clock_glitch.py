"""Attack round 27 on e58409c: one reading of a clock ahead at a restart leaves the
claims still open in their windows undefended until the next rescan.

A claim whose ClaimFiled event the provider took before a crash (its cursor stored past
the event) and whose answer never landed is found again, after the restart, only by the
first step's rescan (`_defend_open_claims`): its event is not read again. e58409c's
rescan (`_read_claims_against`) takes one `ledger.now()` and does not even read a claim
whose filed window ends before it (`_window_of`: "not final: a clock ahead once is looked
at again next time"); a claim it does read OPEN past its window is not defended either.
"Next time" is the next rescan, `RESCAN_STEPS` (20) steps later: 20 * `watch_interval`.
e6819f7 read every claim at the first listing, and one read OPEN past its window (by that
one reading) was still defended once (`_lapsed`): `_defend` then read the clock again,
right, and answered.

Round 22 took an endpoint's clock that reads ahead once as in the threat model
(test_attack_r22_clock_glitch_final.py: "a node of a load-balanced endpoint with a wrong
clock, a test chain's clock jump, a lie"). Here the endpoint's clock reads one hour ahead
for exactly one read: the restarted watcher's first rescan. BOB's node took ALICE's claim
(a request she never sent: BOB serves it through the claim, DELIVERED) and crashed while
making its answer; BOB restarts with a 0.5 s watch interval (rescans 10 s apart), the
claim has about 5 s of its window left. BOB must answer it in its window. Every wait
bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from node_support import ended_claim, wait_until
from raw_payer import watcher_steps
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

from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.node.watcher import CURSOR_KEY
from p2pay.store.sqlite import SqliteStore

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
    """An endpoint whose clock reads `AHEAD_MS` ahead for one read: the next rescan's
    (the watcher's `_read_claims_against`, on either version) once `armed`. The ledger's
    own operations go by its real time."""

    armed = False
    glitches = 0

    async def now(self) -> int:
        real = await super().now()
        if Glitch.armed and sys._getframe(1).f_code.co_name == "_read_claims_against":
            Glitch.armed = False
            Glitch.glitches += 1
            return real + AHEAD_MS
        return real


async def echo(call: Call) -> bytes:
    return call.body


async def claim_open_at_a_restart(
    tmp_path: Path, ledger: MemoryLedger, arm: Callable[[], None]
) -> Claim:
    """BOB takes ALICE's claim, stores his event cursor past its ClaimFiled event and stops
    while making the answer; then `arm()` and BOB starts again, on the same store: only
    the restart's rescan can find the claim. Returns the claim as it ended."""
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    try:
        taken = trio.Event()
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=CONFIG
        ) as bob:
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
            channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
            watcher = bob.watcher
            assert watcher is not None

            async def crash_point(*args: Any, **kwargs: Any) -> None:
                taken.set()  # the node dies while making its answer
                await trio.sleep_forever()

            watcher._answer_claim = crash_point  # type: ignore[method-assign]
            claim_id = await ledger.file_claim(
                ALICE, claimed_request(channel, 1, deadline=await ledger.now() - 1)
            )
            with trio.fail_after(20):
                await taken.wait()
            filed_seq = max(
                e.seq for e in await ledger.events() if e.fields.get("claim") == claim_id
            )

            async def cursor_past() -> bool:
                return watcher.cursor >= filed_seq

            await wait_until(cursor_past, timeout=20)
            await watcher_steps(bob, 2)  # its cursor staged and stored
        raw = await store.get_meta(CURSOR_KEY)
        assert raw is not None and int.from_bytes(raw, "big") >= filed_seq  # not read again
        # the restart: the event is behind the stored cursor, only the rescan finds it
        arm()
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=CONFIG
        ) as again:
            again.serve("echo", echo, price=PRICE)
            assert again.watcher is not None
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.OPEN
            window_ends = claim.window_ends
            print(f"restarted with {window_ends - await ledger.now()} ms of the window left")

            async def decided_or_past() -> bool:
                found = await ledger.claim(claim_id)
                assert found is not None
                return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

            await wait_until(decided_or_past, timeout=60)
        return await ended_claim(ledger, ALICE, claim_id)
    finally:
        await store.aclose()


async def test_a_claim_open_at_a_restart_survives_one_clock_reading_ahead(
    tmp_path: Path,
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    Glitch.armed, Glitch.glitches = False, 0
    claim = await claim_open_at_a_restart(
        tmp_path, Glitch(params), lambda: setattr(Glitch, "armed", True)
    )
    print(f"after one clock reading ahead at the restart: {claim.state}, {Glitch.glitches}")
    assert Glitch.glitches == 1  # the glitch hit the restart's first rescan
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.DELIVERED, claim.state
