"""Attack round 22 on be21dd5: a claim that reaches its handler deadline waits for the
claim list's lock while another answer reads a stranger's fresh claims one by one, and
its window runs out.

be21dd5 takes `_listing` in the rescan for the first listing only, but every answer that
looks for evidence (`_claimed_requests`) still takes it and, under it, reads every claim
filed against the provider since the last look (`_unlisted`, from the ClaimFiled
events), one endpoint read each, whatever their channel. A claim whose request is served
through the claim and that could not get a handler slot in time is refused at its
handler deadline, ``claim_answer_margin_ms`` before its window ends (at most a third of
the window; 10 s by default, the time left to post): its refusal is made after
`_claimed_requests` too. A stranger who files M free claims (a service the provider does
not offer: REFUSED, bonds back) just before that deadline holds the lock for M endpoint
reads; with M * latency over the margin the refusal is posted after the window: UPHELD,
the honest provider slashed.

Here (scaled down): BOB has one handler slot and a honest slow service ``held`` (it
waits on something that never comes; its handler deadline ends it). ALICE files F, which
takes the slot, then X, which waits for it. 0.5 s before F's handler deadline, MALLORY
(ALICE's key on another channel) files M = 80 claims for ``nosuch``; the endpoint takes
50 ms for each read of them (a remote endpoint; the round-20 setting), 4 s in all, the
margin 1.5 s. X must still be answered in its window (refused DEADLINE_EXCEEDED: nothing
charged, nothing slashed). On be21dd5 (and on 746a80e) X is UPHELD, BOB's penalty
(10^19 yocto) slashed; with the unlisted claims read outside the lock, only those of the
claimed request's channel (the ClaimFiled event names it; a sketch, not committed), X is
REFUSED in time. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

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

M = 80
DELAY = 0.05
MARGIN_MS = 1_500
WINDOW_MS = 6_000


class Remote(MemoryLedger):
    """An endpoint with a latency on every read of the flood's claims."""

    flood: set[bytes] = set()
    reads = 0

    async def claim(self, claim_id: bytes) -> Claim | None:
        if claim_id in Remote.flood:
            await trio.sleep(DELAY)
            Remote.reads += 1
        return await super().claim(claim_id)


async def held(call: Call) -> bytes:
    await trio.sleep_forever()  # honest, slow: a dependency that never answers
    raise AssertionError


async def test_a_claim_refused_at_its_handler_deadline_is_answered_despite_fresh_claims() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Remote(params)
    Remote.flood, Remote.reads = set(), 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50, max_claim_answers=1,
        claim_answer_margin_ms=MARGIN_MS,
    )  # fmt: skip
    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=config) as bob:
        bob.serve("held", held, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        other = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        deadline = await ledger.now() - 1
        first = await ledger.file_claim(
            ALICE, claimed_request(channel, 1, deadline=deadline, service="held")
        )
        watcher = bob.watcher
        assert watcher is not None
        await wait_until(lambda: watcher._limiter.held == 1, timeout=20)
        victim = await ledger.file_claim(
            ALICE, claimed_request(channel, 2, deadline=deadline, service="held")
        )
        f = await ledger.claim(first)
        x = await ledger.claim(victim)
        assert f is not None and x is not None
        f_deadline = watcher._handler_deadline(f)
        assert watcher._handler_deadline(x) >= f_deadline

        async def near() -> bool:
            return await ledger.now() >= f_deadline - 500

        await wait_until(near, timeout=30)
        for n in range(1, M + 1):
            request = claimed_request(other, n, deadline=deadline, service="nosuch")
            Remote.flood.add(request.hash)  # the claim's id
            await ledger.file_claim(ALICE, request)

        async def decided_or_past() -> bool:
            found = await MemoryLedger.claim(ledger, victim)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > x.window_ends

        await wait_until(decided_or_past, timeout=60)
    claim = await ended_claim(ledger, ALICE, victim)
    print(f"X after {M} fresh claims read at {DELAY} s each: {claim.state}, {Remote.reads} reads")
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.REFUSED, claim.state
