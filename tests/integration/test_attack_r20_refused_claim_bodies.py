"""Attack round 20 on 746a80e: a burst of free claims refused at once held every body.

The threat model's memory bound says at most ``max_claim_answers`` claim bodies are held
at once (attack round 18: a claim served through the claim waits for a handler slot with
its signed fields only). A claim whose admission refuses it at once (a service the
provider does not offer) takes no slot, by design: it must not wait behind slow
handlers. But it then reads its claim whole from the ledger and decodes it
(`Watcher._answer_claim`: ``full``, then `_prepare_answer`'s request) and holds both
across every await of its answer (the store's flush and reads, the claim listing's lock,
the signed refusal staged and made durable). Every claim of a burst does so at once.

MALLORY files K = 48 claims of 512 KiB for a service BOB does not offer while BOB's node
is down (the same happens when they land between two watcher steps). Each is REFUSED:
bond back, her own 1-yocto slice refunded, free. When BOB comes back, its watcher sees
the K ClaimFiled events at once and answers them all concurrently. On 746a80e (and on
97f59d1 before it) the traced peak was about two bodies per claim (the claim's frame and
the decoded request): 52 MB here, 65 MiB for 64 claims, 130 MiB for 128, linear in K (a
thousand claims of 1 MiB, some 2 GB, for nothing). With the full reads of claims without
a handler slot bounded by a limiter of ``max_claim_answers`` (a sketch of a fix), 5.9 MB.
Measured with tracemalloc in this process; every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from node_support import all_decided, file_free_claims, wait_until

from p2pay.core.identity import Keypair
from p2pay.core.settlement import ClaimState
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

MALLORY = Keypair.from_seed(bytes([7]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
K = 48
BODY = 1 << 19
SLOTS = 2
# a few claims read whole at a time (a frame and a request each), the node's own start;
# on 746a80e 52 MB (about 2 * K * BODY)
BOUND = 16 * BODY


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_burst_of_claims_refused_at_once_holds_a_bounded_number_of_bodies(
    tmp_path: Path,
) -> None:
    ledger = await SqliteLedger.create(
        tmp_path / "ledger.sqlite", dev=True, min_claim_window_ms=50, min_challenge_ms=50
    )
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(watch_interval=0.05, min_challenge_ms=50, max_claim_answers=SLOTS)
    try:
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=config
        ) as bob:
            bob.serve("echo", echo, price=1000)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)
            watcher = bob.watcher
            assert watcher is not None
            await wait_until(lambda: watcher.steps >= 2, timeout=20)
        # BOB is down: MALLORY files her claims
        _, ids = await file_free_claims(ledger, MALLORY, BOB.public, K, BODY)

        async def answered() -> bool:
            return await all_decided(ledger, ids)  # one at a time: the test holds no bodies

        tracemalloc.start()
        try:
            gc.collect()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            async with open_node(
                key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=config
            ) as again:
                again.serve("echo", echo, price=1000)
                await wait_until(answered, timeout=120)
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        states = {(await ledger.claim(claim_id)).state for claim_id in ids}  # type: ignore[union-attr]
        print(f"{K} claims of {BODY} bytes refused at once: peak {peak} bytes above the start")
        assert states == {ClaimState.REFUSED}
        assert peak < BOUND, peak
    finally:
        await store.aclose()
        await ledger.aclose()
