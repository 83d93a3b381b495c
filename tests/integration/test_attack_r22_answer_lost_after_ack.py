"""Attack round 22 on be21dd5: a claim answer the endpoint acknowledged but that never
landed is never sent again, and the honest provider is slashed.

be21dd5 marks a claim final (`Watcher._final`: never read again, not even by the
periodic rescan) as soon as `ledger.answer_claim` returns for it. That is the endpoint's
word too: on an EVM ledger a receipt with status 1 is in a block that a reorganisation can
drop (the node reads at ``head`` with ``confirmations = 0`` by default), and an endpoint
behind a load balancer can acknowledge a transaction that never propagates. The
claim is then OPEN on the chain, its answer task has ended, its ClaimFiled event is
behind the cursor, and the rescan, the safety net for exactly such a claim (C-7: "retries
every unanswered claim until its window ends"), skips it: UPHELD, the penalty slashed.
746a80e read it again at the next rescan, found it OPEN with no task, and answered it;
746a80e's own rule for an endpoint saying "answered" (read again, a lying or lagging
endpoint's word is not taken for good) is what the provider's own answer lost here.

Here the endpoint acknowledges BOB's first answer to ALICE's claim and drops it (one
lost transaction). BOB must still answer the claim before its window ends: DELIVERED,
nothing slashed. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

from node_support import ended_claim, wait_until
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

from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node

WINDOW_MS = 8_000


class LosesOne(MemoryLedger):
    """An endpoint that acknowledges the first answer to each claim in `lose` and drops
    it (a transaction mined in a block later reorganised away, or never propagated)."""

    lose: frozenset[bytes] = frozenset()
    lost: list[bytes] = []

    async def answer_claim(self, key: Any, claim_id: bytes, *args: Any, **kwargs: Any) -> None:
        if claim_id in LosesOne.lose and claim_id not in LosesOne.lost:
            LosesOne.lost.append(claim_id)
            return  # "accepted"
        await super().answer_claim(key, claim_id, *args, **kwargs)


async def echo(call: Call) -> bytes:
    return call.body


async def test_an_answer_acknowledged_and_lost_is_sent_again_within_the_window() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = LosesOne(params)
    LosesOne.lose, LosesOne.lost = frozenset(), []
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=FAST) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        request = claimed_request(channel, 1, deadline=await ledger.now() - 1)
        LosesOne.lose = frozenset({request.hash})  # the claim's id
        claim_id = await ledger.file_claim(ALICE, request)
        assert claim_id == request.hash
        claim = await ledger.claim(claim_id)
        assert claim is not None
        window_ends = claim.window_ends

        async def decided_or_past() -> bool:
            found = await ledger.claim(claim_id)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

        await wait_until(decided_or_past, timeout=60)
        assert LosesOne.lost == [claim_id]  # BOB's first answer was lost
    claim = await ended_claim(ledger, ALICE, claim_id)
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.DELIVERED, claim.state
