"""Attack: a claim flood longer than the claim window slashes an honest provider
(specs/claims.md C-1, threat-model row 19b's residual; settlement.md FileClaim).

A lying client files claims faster than the provider can answer them, for longer than the
provider's claim window. Before, every claim's window ended one window after its filing,
whatever else was filed: a provider answering at a steady rate ran out of time for the
claims at the back of the flood, and they were UPHELD (slashed, half the penalty to the
attacker, its bonds back). The rule now: the windows of the claims against one stake end
at least `ceil(claim_window_ms / claims_per_window)` apart, and the watcher answers them
earliest window first (`EarliestFirst`): a provider that answers one claim per slot
answers every one.

Deterministic: the ledger's clock (shared by the provider's node) moves only when the
provider answers: each answer costs it `ANSWER_MS` of ledger time, half a slot, and the
answers start once the whole flood is filed (under the old rule: 200 of the 300 in the
window, 100 UPHELD). Nothing
here depends on the machine's speed; every wait is bounded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio
from node_support import claim_game_params, wait_until

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.settlement import ClaimState, claim_slot_ms
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.node.watcher import EarliestFirst
from p2pay.testing import ManualClock

ALICE = Keypair.from_seed(bytes([1]) * 32)  # the lying client
BOB = Keypair.from_seed(bytes([2]) * 32)  # the honest provider
LEDGER_ID = b"p2pay:test:claim-queue"
PRICE = 1_000
TOKEN = 10**24
STAKE, PENALTY = 10**20, 10**17
WINDOW = 1_000  # ms; slot = 10 ms with the default 100 claims per window
ANSWER_MS = 5  # ledger time one answer costs the provider: two answers per slot
FLOOD = 300  # claims filed at one instant: 1,500 ms of answers against a 1,000 ms window


class SlowAnswers(MemoryLedger):
    """Each answer from the respondent costs `ANSWER_MS` of ledger time."""

    time: ManualClock
    filed: trio.Event  # answers wait until the whole flood is filed (determinism)

    async def answer_claim(
        self,
        key: Any,
        claim_id: bytes,
        response: Response | None = None,
        *,
        evidence: Request | None = None,
    ) -> None:
        await self.filed.wait()
        self.time.ms += ANSWER_MS
        await trio.lowlevel.checkpoint()  # a submission takes a scheduler pass
        await super().answer_claim(key, claim_id, response, evidence=evidence)


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_claim_flood_longer_than_the_window_slashes_no_honest_provider() -> None:
    time = ManualClock(1_700_000_000_000)
    params = claim_game_params(LEDGER_ID)
    ledger = SlowAnswers(params, clock=time)
    ledger.time = time
    ledger.filed = trio.Event()
    slot = claim_slot_ms(params, WINDOW)
    assert slot == 2 * ANSWER_MS
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    config = NodeConfig(
        watch_interval=0.05, min_challenge_ms=50, redeem_threshold=10**30, default_timeout=30.0
    )
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=config, clock=time) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=config, clock=time) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW)
        ch = await alice.open_channel(bob.addrs[0], deposit=FLOOD * PRICE)
        for n in range(FLOOD):  # every request paid and answered
            await alice.call(bob.peer_id, "echo", b"%d" % n, max_price=PRICE)
        stored = await bob.store.vouchers(ch.channel)
        requests = [decode_frame(v.request_frame) for v in stored]
        assert len(requests) == FLOOD and all(isinstance(r, Request) for r in requests)
        time.ms = max(r.deadline for r in requests) + 1
        # the flood: a claim on every one of them, at one instant (the provider answers
        # each with its stored receipt: DELIVERED, or the claim runs out of window; the
        # ledger holds its answers back until all are filed)
        filed_at = time.ms
        ids = [await ledger.file_claim(ALICE, request) for request in requests]
        claims = [await ledger.claim(i) for i in ids]
        ends = [c.window_ends for c in claims if c is not None]
        assert ends == [filed_at + WINDOW + k * slot for k in range(FLOOD)]
        ledger.filed.set()  # the provider's answers start now, 2 per slot

        async def settled() -> bool:
            for claim_id in ids:
                claim = await ledger.claim(claim_id)
                assert claim is not None
                if claim.state is ClaimState.OPEN and time.ms <= claim.window_ends:
                    return False
            return True

        await wait_until(settled, timeout=120)
        # what is still open has run out of window: anyone may resolve it (UPHELD)
        time.ms = max(time.ms, ends[-1]) + 1
        for claim_id in ids:
            claim = await ledger.claim(claim_id)
            assert claim is not None
            if claim.state is ClaimState.OPEN:
                await ledger.resolve_claim(ALICE, claim_id)
        states = [(await ledger.claim(i)).state for i in ids]  # type: ignore[union-attr]
        upheld = states.count(ClaimState.UPHELD)
        assert upheld == 0, f"{upheld} of {FLOOD} claims UPHELD against an honest provider"
        assert states.count(ClaimState.DELIVERED) == FLOOD
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE  # C-1: never slashed
        assert (await ledger.totals()).conserved
        # a queued window can end after a stored answer would expire: the watcher keeps the
        # answer (durably) until the claim's window end plus the retention
        first = requests[0]
        kept = await bob.store.response(first.hash)
        assert kept is not None
        late = dataclasses.replace(claims[0], window_ends=kept.expires_at + 10**9)  # type: ignore[type-var]
        assert bob.watcher is not None
        await bob.watcher._keep_for(kept, late)
        again = await bob.store.response(first.hash)
        assert again is not None and again.frame == kept.frame
        assert again.expires_at == late.window_ends + config.response_retention_ms


async def test_earliest_first_lets_the_smallest_key_in_first() -> None:
    gate = EarliestFirst(1)
    order: list[int] = []
    release = trio.Event()

    async def first() -> None:
        async with gate.hold(100):
            await release.wait()
            order.append(100)

    async def later(key: int) -> None:
        async with gate.hold(key):
            order.append(key)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            for key in (50, 7, 30, 7, 90):
                nursery.start_soon(later, key)
                await trio.testing.wait_all_tasks_blocked()
            assert gate.waiting == 5
            release.set()
    assert order == [100, 7, 7, 30, 50, 90]
    assert gate.waiting == 0


async def test_earliest_first_a_cancelled_waiter_leaves_and_its_place_passes_on() -> None:
    gate = EarliestFirst(1)
    order: list[int] = []
    release = trio.Event()

    async def holder() -> None:
        async with gate.hold(0):
            await release.wait()

    async def waiter(key: int, scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            async with gate.hold(key):
                order.append(key)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            scopes: list[trio.CancelScope] = []
            for key in (1, 2, 3):
                nursery.start_soon(waiter, key, scopes)
                await trio.testing.wait_all_tasks_blocked()
            scopes[0].cancel()  # key 1 leaves the queue while it waits
            await trio.testing.wait_all_tasks_blocked()
            assert gate.waiting == 2
            release.set()
    assert order == [2, 3]
    # the gate is whole again: one free place
    async with gate.hold(5):
        assert gate.waiting == 0


def test_earliest_first_needs_a_place() -> None:
    with pytest.raises(ValueError):
        EarliestFirst(0)
