"""Attack round 23 on ab55f62: a stranger's free claims, answered and still in their
windows, are read again at every rescan, and the rescan, the only thing that sends again
an answer the endpoint acknowledged and lost, reaches the lost one after its window.

ab55f62 no longer marks a claim final when the ledger acknowledges our answer (attack
round 22: an answer acknowledged that never landed was never sent again): `_defend`
still ends at the acknowledgement, and the claim is answered again only if the periodic
rescan (`_read_claims_against`) reads it OPEN with no task. But the rescan now reads,
one endpoint read each and in the ledger's order, every claim against the provider
still in its window, answered or not: a claim read answered within its window is read
again (a lying or lagging endpoint's word). A stranger's free claims (a service the
provider does not offer: REFUSED, bonds back) stay in their windows for a whole claim
window each, longer when filed together (a slot per claim open against the stake), and
each rescan reads them all before a claim filed after them. With M of them and an
endpoint read of d seconds, a lost answer is sent again M * d seconds late at best.

Here (scaled down, the round-20/22 setting): MALLORY (ALICE's key on channels of her
own) files M = 200 claims for ``nosuch`` on K = 8 channels (so that BOB refuses them all
in time: see test_attack_r23_one_channel_free_flood.py), each read at 50 ms (10 s a
rescan), BOB's window 6 s. Once BOB has REFUSED them all, ALICE files a claim for
``echo``; the endpoint acknowledges BOB's first answer to it and drops it. BOB must
still answer it in its window: DELIVERED, nothing slashed. On ab55f62 it is UPHELD (BOB's
penalty, 10^19 yocto, slashed; the rescans read ~107 flood claims in its window and
never reached it). With `_defend` reading the claim again after the acknowledgement
(answering again while it reads OPEN) it is DELIVERED (a sketch, not committed). Every
wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import trio
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

from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

M = 200
K = 8  # channels: a channel's answers read its fresh claims one by one (see r23 one_channel)
DELAY = 0.05
WINDOW_MS = 6_000


class Remote(MemoryLedger):
    """An endpoint with a latency on every read of the flood's claims, that acknowledges
    the first answer to each claim in `lose` and drops it (a transaction mined in a block
    later reorganised away, or never propagated)."""

    flood: set[bytes] = set()
    reads = 0
    lose: frozenset[bytes] = frozenset()
    lost: list[bytes] = []

    async def claim(self, claim_id: bytes) -> Claim | None:
        if claim_id in Remote.flood:
            await trio.sleep(DELAY)
            Remote.reads += 1
        return await super().claim(claim_id)

    async def answer_claim(self, key: Any, claim_id: bytes, *args: Any, **kwargs: Any) -> None:
        if claim_id in Remote.lose and claim_id not in Remote.lost:
            Remote.lost.append(claim_id)
            return  # "accepted"
        await super().answer_claim(key, claim_id, *args, **kwargs)


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_lost_answer_is_sent_again_in_its_window_despite_answered_free_claims() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Remote(params)
    Remote.flood, Remote.reads, Remote.lose, Remote.lost = set(), 0, frozenset(), []
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50,
        redeem_threshold=10**30, default_timeout=30.0,
    )  # fmt: skip
    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=config) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        others = [await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000) for _ in range(K)]
        deadline = await ledger.now() - 1
        flood = []
        for n in range(1, M // K + 1):
            for other in others:
                request = claimed_request(other, n, deadline=deadline, service="nosuch")
                Remote.flood.add(request.hash)  # the claim's id
                flood.append(await ledger.file_claim(ALICE, request))

        async def flood_decided() -> bool:
            for claim_id in flood:
                found = await MemoryLedger.claim(ledger, claim_id)
                if found is None or found.state is ClaimState.OPEN:
                    return False
            return True

        await wait_until(flood_decided, timeout=120)
        request = claimed_request(channel, 1, deadline=deadline)
        Remote.lose = frozenset({request.hash})  # the claim's id
        victim = await ledger.file_claim(ALICE, request)
        filed = await MemoryLedger.claim(ledger, victim)
        assert filed is not None
        reads_before = Remote.reads

        async def decided_or_past() -> bool:
            found = await MemoryLedger.claim(ledger, victim)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > filed.window_ends

        await wait_until(decided_or_past, timeout=60)
        assert Remote.lost == [victim]  # BOB's first answer was lost
        flood_reads = Remote.reads - reads_before
    claim = await ended_claim(ledger, ALICE, victim)
    print(f"lost answer after {M} answered free claims: {claim.state}, {flood_reads} reads")
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.DELIVERED, claim.state
