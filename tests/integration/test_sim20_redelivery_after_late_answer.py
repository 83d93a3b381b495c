"""A watcher's re-delivery that races the late answer it was meant to fetch (sim20).

Seen in `tests/sim/test_determinism_and_cli.py::test_twenty_peers_on_libp2p` under load:
a call gives up, the watcher reads its request as still awaiting and re-sends it, but the
late answer arrives in between. The copy's answer (the payee's stored one, protocol.md
13.5) then named a request no longer outstanding, and the payer took it for a bad receipt
("MALFORMED: receipt is not for a request in flight") and ended the stream, with every
other request in flight on it: their answers were lost, the watcher claimed them, and a
provider that stays silent on claims was UPHELD on requests it had charged (the payer paid
for answers it never got). protocol.md 14.3: a response naming a request that is not
outstanding is ignored, "it does not make the payee faulty". And the watcher claimed the
very request that had just been answered.

Nodes on the in-memory transport and a dev MemoryLedger; handlers wait on events, every
wait is bounded: no assertion depends on timing.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from node_support import funded_ledger, held_service_pair, wait_until

from p2pay.core.identity import Keypair
from p2pay.node import Call, CallTimeout, ConnectionLost, NodeConfig

ALICE = Keypair.from_seed(bytes([41]) * 32)  # client
BOB = Keypair.from_seed(bytes([42]) * 32)  # provider
PRICE = 1_000

CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
)


async def test_a_re_delivery_answered_after_the_late_answer_ends_nothing_and_claims_nothing() -> (
    None
):
    ledger = await funded_ledger(b"sim20", ALICE, BOB)  # 10 tokens each
    started = {b"first": trio.Event(), b"second": trio.Event()}
    release = {b"first": trio.Event(), b"second": trio.Event()}

    async def held(call: Call) -> bytes:
        started[call.body].set()
        with trio.fail_after(30):
            await release[call.body].wait()
        return call.body

    # ALICE files no claims of its own: the test plays the watcher's part, at the racy moment
    async with held_service_pair(ledger, ALICE, BOB, held, price=PRICE, config=CONFIG) as (
        alice,
        bob,
    ):
        # 1. the call gives up; its request is abandoned while the handler still runs
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "held", b"first", max_price=PRICE, timeout=0.2)
        assert started[b"first"].is_set()
        (stale,) = await alice.store.requests(state="awaiting")  # what the watcher reads

        # 2. the late answer comes on the stream (OK, or DEADLINE_EXCEEDED if late)
        release[b"first"].set()

        async def settled() -> bool:
            record = await alice.store.request(stale.request_hash)
            return record is not None and record.state in ("answered", "refused")

        await wait_until(settled)
        conn = alice._connections[bob.peer_id]

        # 3. another call in flight on the same stream, and the watcher's re-send of the
        # record it read before the answer came
        results: list[Any] = []

        async def second() -> None:
            try:
                result = await alice.call(
                    bob.peer_id, "held", b"second", max_price=PRICE, timeout=30
                )
            except ConnectionLost as exc:  # the stream ended under it (before the fix)
                results.append(exc)
            else:
                results.append(result.body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            with trio.fail_after(30):
                await started[b"second"].wait()
            await alice.client.redeliver(stale, timeout=5)
            await trio.testing.wait_all_tasks_blocked()
            release[b"second"].set()

        # the stream was not ended: the call in flight on it got its answer
        assert results == [b"second"]
        assert alice._connections.get(bob.peer_id) is conn and not conn.closed
        assert alice.counters.protocol_violations == 0

        # 4. the watcher's claim task on the stale record files no claim: it was answered
        await alice.watcher._claim(stale)  # type: ignore[union-attr]
        assert alice.counters.claims_filed == 0
        assert await ledger.claims_of(ALICE.account) == []
        record = await alice.store.request(stale.request_hash)
        assert record is not None and record.state in ("answered", "refused")
