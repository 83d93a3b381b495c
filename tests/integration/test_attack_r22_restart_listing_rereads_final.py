"""Attack round 22 on be21dd5: after a restart the first listing reads again every claim
ever filed against the provider, under the list's lock, and a new claim's answer waits
for all of it.

be21dd5 keeps the claims no answer can change any more (`Watcher._final`: past their
windows, or answered by the node itself) in memory only. A restarted node's first
listing (`_defend_open_claims`, the first step's rescan) reads every claim ever filed
against it, one endpoint read each, holding `_listing`; every answer that looks for
evidence (`_claimed_requests`) waits for that lock. Claims cost a stranger nothing to
leave behind (a service the provider does not offer: REFUSED, bonds back), and they stay
on the ledger for good: N of them make every restart of the provider N reads long before
any claim filed then can be answered. With N * latency over a claim window, a claim
filed at the restart runs out of its window: UPHELD, the honest provider slashed.

Here (scaled down): MALLORY (ALICE's key) left N = 60 REFUSED claims against BOB, long
past their windows; the endpoint takes 0.1 s for each read of them (a remote endpoint,
the round-20 setting: 6 s in all). BOB restarts; ALICE files a claim on a request she
never sent (3 s window). BOB must answer it in its window: DELIVERED. On be21dd5 it is
UPHELD (the listing had read 29 of the 60 when the window ended), 10^19 yocto slashed.
Until the twelfth session this stayed a known limit (the test was taken out of the
tree); now a restart lists the claims against it from their ClaimFiled events in one
ledger read (`Ledger.claim_filings_of`: each claim's slice and window end, no body), and
reads none of the old claims: their windows ended (asserted: 0 reads of them). Every
wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

import trio
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

from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node
from p2pay.store.sqlite import SqliteStore

N = 60
DELAY = 0.1
WINDOW_MS = 3_000


class Remote(MemoryLedger):
    """An endpoint with a latency on every read of the old claims, counting them."""

    old: frozenset[bytes] = frozenset()
    delay = 0.0
    reads = 0

    async def claim(self, claim_id: bytes) -> Claim | None:
        if claim_id in Remote.old and Remote.delay:
            await trio.sleep(Remote.delay)
            Remote.reads += 1
        return await super().claim(claim_id)


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_claim_filed_at_a_restart_is_answered_despite_old_claims(
    tmp_path: Path,
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Remote(params)
    Remote.old, Remote.delay, Remote.reads = frozenset(), 0.0, 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    try:
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=FAST
        ) as bob:
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
            channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
            deadline = await ledger.now() - 1
            old = [
                await ledger.file_claim(
                    ALICE, claimed_request(channel, n, deadline=deadline, service="nosuch")
                )
                for n in range(1, N + 1)
            ]

            async def all_refused() -> bool:
                for claim_id in old:
                    claim = await ledger.claim(claim_id)
                    if claim is None or claim.state is not ClaimState.REFUSED:
                        return False
                return True

            await wait_until(all_refused, timeout=60)
            await watcher_steps(bob, 3)
            last = await ledger.claim(old[-1])
            assert last is not None

            async def all_past() -> bool:
                return await ledger.now() > last.window_ends

            await wait_until(all_past, timeout=30)
        Remote.old, Remote.delay = frozenset(old), DELAY
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=FAST
        ) as again:
            again.serve("echo", echo, price=PRICE)
            victim = await ledger.file_claim(
                ALICE, claimed_request(channel, N + 1, deadline=await ledger.now() - 1)
            )
            claim = await ledger.claim(victim)
            assert claim is not None
            window_ends = claim.window_ends

            async def decided_or_past() -> bool:
                found = await ledger.claim(victim)
                assert found is not None
                return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

            await wait_until(decided_or_past, timeout=60)
        Remote.delay = 0.0
        claim = await ended_claim(ledger, ALICE, victim)
        print(f"a claim at a restart after {N} old claims: {claim.state}, {Remote.reads} reads")
        assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
        assert claim.state is ClaimState.DELIVERED, claim.state
        assert Remote.reads == 0, Remote.reads  # past their windows: never read again
    finally:
        await store.aclose()
