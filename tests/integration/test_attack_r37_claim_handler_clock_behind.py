"""Attack round 37 (the chain's endpoint lies): one reading of a clock far behind lets a
claimed request's handler run past the claim's window: an honest provider is slashed.

A request that reaches the provider only through a claim is served with a handler
deadline: the claim's window end minus the answer margin (claims.md C-1,
`Watcher._handler_deadline`). `Watcher._serve_claimed` turns it into a timeout with one
reading of the ledger's clock: ``trio.move_on_after((deadline - await ledger.now()) /
1000)``. A slow handler is cut at that deadline, the claim refused DEADLINE_EXCEEDED
(REFUSED: the claimant's slice refunded, nobody slashed). An endpoint whose clock reads an
hour behind for that one read makes the cut an hour late: the handler runs past the
window, the answer comes too late, the claim is UPHELD and honest BOB loses his penalty.
The ledger's own state and clock stay truthful; only the reply BOB's node reads lies, and
BOB's own clock is right all along.

Setting: BOB serves "slow", whose handler never ends by itself before the claim's window
has ended by the ledger's real clock (it waits on an event the test sets then; bounded).
ALICE files a claim on a request she never sent. BOB must answer it in its window
(REFUSED DEADLINE_EXCEEDED is fine; UPHELD is not). Every wait bounded; nothing asserts on
timing.
"""

from __future__ import annotations

import trio
from node_support import called_from, ended_claim, wait_until
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

from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

BEHIND_MS = 3_600_000
WINDOW_MS = 18_000  # the answer margin is then a third of it, 6 s (room on a loaded machine)

CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
)


class Behind(MemoryLedger):
    """An endpoint whose clock reads `BEHIND_MS` behind for one read, the one a claimed
    request's handler timeout is computed from (`Watcher._serve_claimed`), once `armed`.
    The ledger's own operations go by its real time."""

    armed = False
    lies = 0

    async def now(self) -> int:
        real = await super().now()
        if Behind.armed and called_from("_serve_claimed"):
            Behind.armed = False
            Behind.lies += 1
            return real - BEHIND_MS
        return real


async def test_one_clock_reading_behind_does_not_let_a_claimed_handler_run_past_its_window() -> (
    None
):
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Behind(params)
    Behind.armed, Behind.lies = False, 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    window_over = trio.Event()
    handler_started = trio.Event()

    async def slow(call: Call) -> bytes:
        handler_started.set()
        with trio.move_on_after(120):  # bounded: only ever ended by the window's end
            await window_over.wait()
        return call.body

    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=CONFIG) as bob:
        bob.serve("slow", slow, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        stake_before = (await ledger.stake_of(BOB.account)).amount
        Behind.armed = True
        request = claimed_request(channel, 1, deadline=await ledger.now() - 1, service="slow")
        claim_id = await ledger.file_claim(ALICE, request)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        window_ends = claim.window_ends

        async def decided_or_past() -> bool:
            found = await MemoryLedger.claim(ledger, claim_id)
            assert found is not None
            if found.state is not ClaimState.OPEN:
                return True
            return await MemoryLedger.now(ledger) > window_ends

        await wait_until(decided_or_past, timeout=90)
        window_over.set()  # the handler, if it still runs, ends now
        started = handler_started.is_set()
    claim = await ended_claim(ledger, ALICE, claim_id)
    stake_after = (await MemoryLedger.stake_of(ledger, BOB.account)).amount
    print(
        f"claim on a slow service after one clock reading behind: {claim.state}, "
        f"lies {Behind.lies}, handler started {started}, slashed {claim.slashed}"
    )
    assert Behind.lies == 1  # the lie hit the handler's timeout
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert stake_after == stake_before
    assert claim.state is ClaimState.REFUSED, claim.state
