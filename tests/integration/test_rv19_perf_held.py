"""Review of issue 18's simulator changes (rv19), end to end on real nodes (libp2p on
loopback, a dev MemoryLedger): what they rely on still holds.

- `Node.hello` keeps its signed hello while its terms are the same (6883195): after the
  provider is slashed, every new stream gets the hello with the reduced stake, the same
  bytes `Hello.create` builds now.
- `_resolve_claims` skips reading claim records while none of ours is open (09eb3c1): a
  client whose watcher has taken many idle steps (the skip armed) still records the
  outcome of the claim it files, and a client restarted on its store with a claim still
  open records it too (the first step of a new watcher reads).

Every wait is bounded (`wait_until`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from node_support import fresh_hello, wait_until
from test_node import ALICE, BOB, PRICE, Dropper, client, fund, make_ledger, provider

from p2pay.core.settlement import ClaimState
from p2pay.node import CallTimeout
from p2pay.store.sqlite import SqliteStore


async def test_a_slashed_provider_announces_its_reduced_stake_and_the_claimant_its_outcome() -> (
    None
):
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    stake, penalty = 10**20, 10**19
    async with provider(ledger, behaviour=Dropper()) as bob, client(ledger) as alice:
        await bob.stake(stake, penalty=penalty, claim_window_ms=300)
        before = bob.hello()
        assert before.stake is not None and before.stake.amount == stake
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        assert alice.watcher is not None
        steps = alice.watcher.steps
        await wait_until(lambda: alice.watcher.steps >= steps + 5)  # idle steps: skip armed
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.3)

        async def upheld() -> bool:
            claims = await ledger.claims_of(ALICE.account)
            return bool(claims) and claims[0].state is ClaimState.UPHELD

        await wait_until(upheld, timeout=60)
        await wait_until(lambda: bob._stake is not None and bob._stake.amount == stake - penalty)
        after = bob.hello()
        assert after is not before and after.stake is not None
        assert after.stake.amount == stake - penalty
        assert after.to_frame() == fresh_hello(bob)

        async def recorded() -> bool:
            return [c.outcome for c in await alice.claims() if c.role == "claimant"] == ["upheld"]

        await wait_until(recorded, timeout=30)
        assert (await ledger.totals()).conserved


async def test_a_client_restarted_with_a_claim_open_records_its_outcome(tmp_path: Path) -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    path = tmp_path / "alice.sqlite"
    async with provider(ledger, behaviour=Dropper()) as bob:
        await bob.stake(10**20, penalty=10**19, claim_window_ms=2_000)
        store = await SqliteStore.open(path)
        async with client(ledger, store=store) as alice:
            await alice.open_channel(bob.addrs[0], deposit=10**6)
            with pytest.raises(CallTimeout):
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.3)
            await wait_until(lambda: alice.counters.claims_filed == 1, timeout=30)
            claims = await ledger.claims_of(ALICE.account)
            assert claims and claims[0].state is ClaimState.OPEN  # closed with it open
        await store.aclose()
        claim_id = claims[0].id

        async def window_over() -> bool:
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.OPEN  # nobody resolves it
            return await ledger.now() > claim.window_ends

        await wait_until(window_over, timeout=30)
        store = await SqliteStore.open(path)
        async with client(ledger, store=store) as alice:  # its watcher resolves it

            async def recorded() -> bool:
                return [c.outcome for c in await alice.claims() if c.role == "claimant"] == [
                    "upheld"
                ]

            await wait_until(recorded, timeout=30)
        await store.aclose()
