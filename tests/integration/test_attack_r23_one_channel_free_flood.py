"""Attack round 23 on ab55f62: free claims filed together on ONE channel wait, every one,
for one task reading all of them one by one, and the first ones' windows run out: the
claimant, a stranger, is paid the honest provider's penalty for each.

ab55f62 reads the claims filed since the first listing (`_unlisted`) for the claimed
request's channel only, one task per channel (`_listing_on[channel]`), one endpoint read
each: a stranger's claims on other channels no longer hold up an answer. But every
answer computes its evidence candidates first (`_answer_watched` calls
`_claimed_requests`), even a refusal that needs no handler, and the claims of a flood
on one channel are all "filed since" on that channel: the first answer task reads them
all, one at a time, under that channel's lock, and every other answer on the channel
waits for it. No claim of the flood is answered before M endpoint reads (halved at best
by the rescan listing them beside it); the ledger gives the first of them a window of
one claim window (the later ones a slot more each, ``claim_window_ms /
claims_per_window``), so with M * latency over it the first ones are UPHELD.

Here (the round-20/22 setting): MALLORY (ALICE's key on a channel of her own) files
M = 300 claims for ``nosuch`` (a service BOB does not offer: REFUSED, the bond back: the
flood costs her nothing), at once; the endpoint takes 50 ms for each read of them; BOB's
window is 6 s (100 claims per window, the default, so a slot of 60 ms), and BOB answers
up to 16 claims at once (the default `max_claim_answers`): far within the C-1 capacity,
100 claims per window. Every one must be REFUSED, nothing slashed. On ab55f62 no answer
left `_claimed_requests` before 8.9 s and 51 to 58 of the 300 were UPHELD (58 * 10^19
yocto to MALLORY); on f6d0759 (the list's lock) 76 of 200.

The second case (twelfth session) is the residual round 23 left, scaled down: 160 claims
at 0.5 s a read against a 4 s window, 20 claims per window (a slot of 200 ms), still
within BOB's capacity (16 reads at once, 32 a second, three per claim). On eb92449 an
answer still read every claim filed since on its channel (16 at a time: 5 s), and the
first ones were UPHELD (43 of 160; at 200 claims, 0.3 s and 2 s: 4 to 20); with that
fixed alone (a claim filed since held by its ClaimFiled event's slice, read only when in
conflict), the answer tasks still took the endpoint in arrival order, which trio does not
keep: the earliest windows were read last (20 UPHELD at 200 claims, 0.3 s and 2 s). Now
the reads go earliest window end first (`EarliestFirst`). Every wait bounded; nothing
asserts on timing.
"""

from __future__ import annotations

import collections

import pytest
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


class Remote(MemoryLedger):
    """An endpoint with a latency on every read of the flood's claims."""

    flood: set[bytes] = set()
    delay = 0.05
    reads = 0

    async def claim(self, claim_id: bytes) -> Claim | None:
        if claim_id in Remote.flood:
            await trio.sleep(Remote.delay)
            Remote.reads += 1
        return await super().claim(claim_id)


async def echo(call: Call) -> bytes:
    return call.body


@pytest.mark.parametrize(
    ("m", "delay", "window_ms", "per_window"),
    [(300, 0.05, 6_000, 100), (160, 0.5, 4_000, 20)],
    ids=["round-23", "slower-endpoint"],
)
async def test_a_free_flood_on_one_channel_is_refused_in_time(
    m: int, delay: float, window_ms: int, per_window: int
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000, claims_per_window=per_window,
    )  # fmt: skip
    ledger = Remote(params)
    Remote.flood, Remote.delay, Remote.reads = set(), delay, 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50,
        redeem_threshold=10**30, default_timeout=30.0,
    )  # fmt: skip
    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=config) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=window_ms)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        flood = []
        for n in range(1, m + 1):
            # each deadline just passed: filing 300 claims took more than a claim window
            # on a loaded machine (beside two other suites), and the last were refused
            # WINDOW_CLOSED before the test began
            deadline = await ledger.now() - 1
            request = claimed_request(channel, n, deadline=deadline, service="nosuch")
            Remote.flood.add(request.hash)  # the claim's id
            flood.append(await ledger.file_claim(ALICE, request))
        last = await MemoryLedger.claim(ledger, flood[-1])
        assert last is not None

        async def decided_or_past() -> bool:
            for claim_id in flood:
                found = await MemoryLedger.claim(ledger, claim_id)
                assert found is not None
                if found.state is ClaimState.OPEN:
                    return await ledger.now() > last.window_ends
            return True

        await wait_until(decided_or_past, timeout=120)
    states: collections.Counter[str] = collections.Counter()
    slashed = 0
    for claim_id in flood:
        claim = await ended_claim(ledger, ALICE, claim_id)
        states[claim.state.name] += 1
        slashed += claim.slashed
    print(f"{m} free claims on one channel: {dict(states)}, {slashed} slashed")
    assert slashed == 0, f"honest BOB slashed {slashed}: {dict(states)}"
    assert states == {"REFUSED": m}, dict(states)
