"""Attack round 22 on be21dd5: answers waiting for their turn at the ledger hold their
bodies, all of them.

be21dd5 bounds the claim bodies the watcher reads whole (`_reads`, `_whole_reads`, the
handler slots: about 3 * ``max_claim_answers``). But a claim's answer, once made, waits
for one of the `ANSWERS_AT_ONCE` (4) places at the ledger (`EarliestFirst`) in its
`_defend` task, holding the signed response with its body: the handler's output (up to
the ledger's ``max_claim_body`` through a claim) or the stored answer of a request
answered on a stream (up to ``max_frame``). Handlers free their slots as soon as an
answer is made, so with a ledger slower to take answers than the handlers are to make
them (an EVM transaction takes seconds; here 0.3 s), every claim of a burst ends up
holding its answer's body at once: linear in the number of claims, whatever
``max_claim_answers`` says.

MALLORY files K = 192 claims on requests she never sent, echo bodies of 256 KiB (the
service's ``max_body``), at the provider's price each (1,000 yocto: K * 1,000 yocto in
all, bonds back, every claim DELIVERED), while BOB's node is down; BOB comes back and
serves them through the claims with 2 handler slots. Traced peak (tracemalloc, this
process; the SQLite ledger and store keep their frames on disk): on be21dd5 43.7 MB
(25.8 MB for 96 claims, 14.2 MB for 48: about one body per claim); with the queued
answers held without their bodies and read back from the store at their turn (a sketch,
not committed) 8.6 MB for 192. Every wait bounded; nothing asserts on timing; the bound,
64 bodies, is twice the sketch's peak and under half of be21dd5's.

Back in the tree unchanged after 6208c0a, where it still failed: 45,919,111 bytes. Now
an answer waits for the ledger with its signed fields only (`watcher._Answer`) and reads
its body back from the store at its turn: 8,917,146 bytes.
"""

from __future__ import annotations

from pathlib import Path

from node_support import peak_answering_again, slow_answers_world, wait_until

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.core.settlement import ClaimState
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, Node, NodeConfig, open_node

MALLORY = Keypair.from_seed(bytes([7]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
K = 192
BODY = 1 << 18  # the echo service takes bodies of 256 KiB (its max_body)
SLOTS = 2
PRICE = 1000
BOUND = 64 * BODY  # the node's own: 4 answers at the ledger, 3 * SLOTS claims read whole


async def echo(call: Call) -> bytes:
    return call.body


def serve_echo(node: Node) -> None:
    node.serve("echo", echo, price=PRICE, max_body=BODY)


async def test_answers_waiting_for_the_ledger_hold_a_bounded_number_of_bodies(
    tmp_path: Path,
) -> None:
    config = NodeConfig(watch_interval=0.05, min_challenge_ms=50, max_claim_answers=SLOTS)
    async with slow_answers_world(tmp_path, MALLORY, BOB) as (ledger, store):
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=config
        ) as bob:
            serve_echo(bob)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=60_000)
            watcher = bob.watcher
            assert watcher is not None
            await wait_until(lambda: watcher.steps >= 2, timeout=20)
        # BOB is down: MALLORY files her claims
        channel = await ledger.open_channel(MALLORY, BOB.public, 10**9, 60_000)
        deadline = await ledger.now() + 100

        async def past() -> bool:
            return await ledger.now() > deadline

        await wait_until(past, timeout=10)
        ids = []
        for i in range(K):
            request = Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=channel, n=1 + i,
                paid=(1 + i) * PRICE, price=PRICE, service="echo",
                body=bytes([i]) * BODY, deadline=deadline,
            )  # fmt: skip
            ids.append(await ledger.file_claim(MALLORY, request))
        del request

        peak, states = await peak_answering_again(
            ledger, store, BOB, config, serve_echo, ids, timeout=120
        )
        print(f"{K} claims of {BODY} bytes served, answers slow: peak {peak} bytes above start")
        assert states == {ClaimState.DELIVERED}, states
        assert peak < BOUND, peak
