"""Attack round 17 on 6ffbbb3, fixed: the provider's watcher held the body of every claim
filed against it for as long as it ran (`Watcher._claimed`, the other claims' requests
kept as evidence candidates, claims.md 2), twice over (the decoded body and the frame it
came in). It now keeps each claimed request without its body: a tiling conflict is in the
signed fields, and evidence is posted without its body (settlement.md AnswerClaim).

MALLORY files K claims on numbers it never sent, each with a body of `BODY` bytes (the
SQLite dev ledger's ``max_claim_body`` is 1 MiB) for a service BOB does not offer: BOB
answers each with a signed UNKNOWN_SERVICE refusal, REFUSED, the bond back to MALLORY and
its own (never earned) 1-yocto slice refunded, so the claims cost it nothing but ledger
transactions. Before the fix BOB's memory grew by about 2 * BODY per claim and never
shrank (measured against the real `p2pay node run`: 250 claims of 1 MB, 100 MiB -> 600
MiB resident, glibc's arena effects aside; a few thousand such claims exhaust a
provider, which then answers no claim at all and is slashed). Now: nothing per body.

Nor are the bodies stored beside the claims' answers (they were, for the retention period:
1 MiB of disk per free claim). Memory measured with tracemalloc in this process (the
SQLite ledger and store keep nothing in Python objects once a claim is answered).
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from node_support import wait_until

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.core.settlement import ClaimState
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

MALLORY = Keypair.from_seed(bytes([7]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
K = 32
BODY = 1 << 19


async def echo(call: Call) -> bytes:
    return call.body


async def test_claim_bodies_are_not_held_by_the_provider(tmp_path: Path) -> None:
    ledger = await SqliteLedger.create(
        tmp_path / "ledger.sqlite", dev=True, min_claim_window_ms=50, min_challenge_ms=50
    )
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(watch_interval=0.05, min_challenge_ms=50)
    try:
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=config
        ) as bob:
            bob.serve("echo", echo, price=1000)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)
            channel = await ledger.open_channel(MALLORY, BOB.public, 10**6, 60_000)
            deadline = await ledger.now() + 100

            async def past() -> bool:
                return await ledger.now() > deadline

            await wait_until(past, timeout=10)
            tracemalloc.start()
            try:
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                ids = []
                for i in range(K):
                    request = Request.create(
                        MALLORY, ledger=ledger.ledger_id, channel=channel, n=1 + i,
                        paid=1 + i, price=1, service="nosuch", body=bytes([i]) * BODY,
                        deadline=deadline,
                    )  # fmt: skip
                    ids.append(await ledger.file_claim(MALLORY, request))
                del request

                async def answered() -> bool:
                    claims = [await ledger.claim(claim_id) for claim_id in ids]
                    return all(c is not None and c.state is not ClaimState.OPEN for c in claims)

                await wait_until(answered, timeout=60)
                states = {(await ledger.claim(claim_id)).state for claim_id in ids}  # type: ignore[union-attr]
                # what BOB keeps, not what his tasks still hold: every answer task ended
                # (measured as soon as the ledger had the answers, those still reading a
                # claim counted too: 18 MB, seen under load), and the events they made read
                watcher = bob.watcher
                assert watcher is not None
                await wait_until(lambda: not watcher._defending, timeout=20)
                steps = watcher.steps
                await wait_until(lambda: watcher.steps >= steps + 2, timeout=20)
                await bob.persister.flush()
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert states == {ClaimState.REFUSED}
            print(f"{K} claims of {BODY} bytes: {held} bytes held")
            # before the fix about 2 * BODY per claim (32 MiB here); now a claim's own
            # record, a few hundred bytes, and the last few bodies read (not per claim)
            assert held < 8 * BODY, held
            # nor kept in its store beside its answers (evidence needs the signed fields
            # only): each claim's answer kept for the retention period (3 days by
            # default) took its body on disk
            stored = await store.vouchers_near(channel, K // 2, limit=K)
            assert len(stored) == K
            assert all(len(s.request_frame) < 1024 for s in stored), max(
                len(s.request_frame) for s in stored
            )
    finally:
        await store.aclose()
        await ledger.aclose()
