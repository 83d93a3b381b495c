"""Attack round 22 on be21dd5: one wrong reading of the endpoint's clock drops a claim
for good.

Since 7cbca57 the watcher never reads again a claim it saw past its window (be21dd5:
`_final`), and the rescan decides "past its window" with one `ledger.now()` read before
its listing. 746a80e stopped taking an endpoint's word that a claim is answered for good
(a lying or lagging endpoint), but its word on the time is still taken for good: an
endpoint whose clock reads ahead once (a node of a load-balanced endpoint with a wrong
clock, a test chain's clock jump, a lie) ends the claim's answer task (`_defend`: "its
window ended unanswered") and puts every claim in its window into `_final` at that
rescan. When the clock reads right again, no task answers them and no rescan reads
them: the window runs out, UPHELD, the honest provider slashed. The ledger itself went
by its own time all along (the claim was open and answerable).

Here the endpoint reads one hour ahead to BOB for a few watcher steps (two rescans)
right after ALICE files a claim on a request she never sent, then reads right. BOB must
still answer it in its window: DELIVERED. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import pytest
from node_support import ended_claim, wait_until
from raw_payer import watcher_steps
from test_watcher_claims import (
    ALICE,
    BOB,
    BOND,
    FAST,
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
from p2pay.node import Call, open_node

AHEAD_MS = 3_600_000


class Glitch(MemoryLedger):
    """An endpoint whose clock reads `AHEAD_MS` ahead while `ahead` is set (the ledger's
    own operations go by its real time)."""

    ahead = False

    async def now(self) -> int:
        real = await super().now()
        return real + AHEAD_MS if Glitch.ahead else real


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_claim_is_answered_after_the_endpoint_clock_read_ahead_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watcher_module, "RESCAN_STEPS", 2)
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Glitch(params)
    Glitch.ahead = False
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=FAST) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=8_000)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        request = claimed_request(channel, 1, deadline=await ledger.now() - 1)
        Glitch.ahead = True
        claim_id = await ledger.file_claim(ALICE, request)
        try:
            await watcher_steps(bob, 5)  # two rescans at least
        finally:
            Glitch.ahead = False
        claim = await ledger.claim(claim_id)
        assert claim is not None
        window_ends = claim.window_ends

        async def decided_or_past() -> bool:
            found = await ledger.claim(claim_id)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

        await wait_until(decided_or_past, timeout=60)
    claim = await ended_claim(ledger, ALICE, claim_id)
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.DELIVERED, claim.state
