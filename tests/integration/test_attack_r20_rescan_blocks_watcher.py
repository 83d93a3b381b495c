"""Attack round 20 on 746a80e: the rescan re-reads every answered claim still in its window,
whole, one ledger read each, inside the watcher's step and under the claim listing's lock.

746a80e reads a claim seen answered again at each rescan (every `RESCAN_STEPS` steps)
until its window ends (a lying endpoint's 'answered' is not taken for good). The rescan
runs in `Watcher.step` itself, and `_defend_open_claims` holds `_listing` across all of
its reads. Windows are long (the stake's claim window, at least 60 s on the CLI's SQLite
ledger and 6 min on EVM, plus one slot per claim open at filing), and answered claims are
free to make: a claim for a service the provider does not offer is REFUSED, the bond
back. So a stranger chooses how many reads each rescan makes, and each costs the
ledger's latency (on EVM `EvmLedger.claim` is an ``eth_call`` and a sync). While they
run the watcher follows no event: a ClaimFiled against the provider gets no answer task,
a ChannelClosing is not redeemed on (C-8), and every answer task that needs the other
claims (`_claimed_requests`) waits for the lock. 7cbca57 never re-read a claim seen
answered; 97f59d1 read every claim ever (`claims_of`, the same in the step).

MALLORY-as-ALICE files K claims for a service BOB does not offer, all REFUSED. The ledger
endpoint takes `DELAY` per claim read (a remote endpoint's latency; K * DELAY = 4 s here,
a few thousand claims at 100 ms each outlast an EVM claim window). Then, as a rescan
starts, she files a claim BOB has to serve. On 746a80e its answer comes only after the
rescan read every one of the K claims again. Nothing here asserts on timing: the test
counts the flood's re-reads between the claim's filing and its answer.
"""

from __future__ import annotations

import trio
from node_support import wait_until
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
from p2pay.node.watcher import RESCAN_STEPS

K = 80
DELAY = 0.05


class Remote(MemoryLedger):
    """An endpoint with a latency on every read of the flood's claims (alone or in a
    list), counting those reads."""

    flood: frozenset[bytes] = frozenset()
    delay = 0.0
    reads = 0

    async def claim(self, claim_id: bytes) -> Claim | None:
        if claim_id in Remote.flood and Remote.delay:
            await trio.sleep(Remote.delay)
            Remote.reads += 1
        return await super().claim(claim_id)

    async def claims_of(self, account: bytes) -> list[Claim]:
        found = await super().claims_of(account)
        for claim in found:
            if claim.id in Remote.flood and Remote.delay:
                await trio.sleep(Remote.delay)
                Remote.reads += 1
        return found


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_rescan_of_answered_claims_does_not_hold_up_a_new_claims_answer() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Remote(params)
    Remote.flood, Remote.delay, Remote.reads = frozenset(), 0.0, 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=FAST) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=60_000)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        deadline = await ledger.now() - 1
        flood = [
            await ledger.file_claim(
                ALICE, claimed_request(channel, n, deadline=deadline, service="nosuch")
            )
            for n in range(1, K + 1)
        ]

        async def decided(claim_id: bytes) -> bool:
            claim = await MemoryLedger.claim(ledger, claim_id)  # no latency, not counted
            return claim is not None and claim.state is not ClaimState.OPEN

        async def all_decided() -> bool:
            return all([await decided(claim_id) for claim_id in flood])

        await wait_until(all_decided, timeout=60)
        watcher = bob.watcher
        assert watcher is not None
        await wait_until(lambda: not watcher._defending, timeout=20)
        for claim_id in flood:
            claim = await MemoryLedger.claim(ledger, claim_id)
            assert claim is not None and claim.state is ClaimState.REFUSED  # free
            assert claim.window_ends > await ledger.now() + 30_000  # in its window
        # a whole rescan since they were all answered (it may read each once more)
        await watcher_steps(bob, 2 * RESCAN_STEPS + 1)
        # the endpoint is remote from now on; wait for a rescan to start reading (on a
        # watcher that does not read answered claims again, none does: 3 rescans)
        Remote.flood, Remote.delay = frozenset(flood), DELAY
        with trio.move_on_after(20):
            await wait_until(lambda: Remote.reads >= 1, timeout=20)
        if Remote.reads == 0:
            await watcher_steps(bob, 3 * RESCAN_STEPS)
        filed_at = Remote.reads
        victim = await ledger.file_claim(ALICE, claimed_request(channel, K + 1, deadline=deadline))

        async def victim_decided() -> bool:
            return await decided(victim)

        await wait_until(victim_decided, timeout=60)
        between = Remote.reads - filed_at
        claim = await MemoryLedger.claim(ledger, victim)
        assert claim is not None
        print(
            f"{K} answered claims in their windows: {between} of them read again between "
            f"the new claim's filing and its answer ({claim.state})"
        )
        Remote.delay = 0.0
        assert claim.state is ClaimState.DELIVERED
        # on 746a80e: K - 1 or more (the whole rescan first); the answer waits for none
        assert between < K // 2, between
