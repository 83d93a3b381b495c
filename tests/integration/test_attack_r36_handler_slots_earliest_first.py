"""Attack round 36: the handler slots let claims in by arrival, not by window end, and a
claim whose window ends first is refused at its handler deadline behind later windows.

Every other gate of the watcher goes earliest window end first (`EarliestFirst`: the
reads, the whole reads, the answers to the ledger), as claims.md C-1 and C-7 say; the
handler slots (``max_claim_answers`` of them: claims served through the claim, C-6) were a
trio `CapacityLimiter`, first come first served. A claim filed later can have the earlier
window: the ledger gives each claim a whole window plus one slot for each claim open
against the stake at its filing (settlement.md FileClaim), and claims answered meanwhile
no longer count. So a stranger files a burst of free claims (a service the provider does
not offer: REFUSED, bonds back) that are still open when it files two slow claims, whose
windows are pushed far out; once the burst is answered, an honest claim gets a short
window, and waits behind the two for a handler slot until its handler deadline: refused
DEADLINE_EXCEEDED, its price refunded, although a provider serving in window-end order
serves it at once (and still has the two far windows to serve the others).

Here (scaled down, event-driven): BOB has one handler slot and a service ``slow`` whose
calls wait on events the test sets. A claim A takes the slot (its call waits for
``a_go``); F = 60 free claims are open (their answers held at the ledger until the test
lets them through) when L1 and L2 are filed, so their windows end about F claim slots
later than a bare window; they wait for the slot. The free claims are then answered, and
E is filed: its window ends well before L1's and L2's, and it waits for the slot too.
The test then lets A finish. With the slot going earliest window end first, E is served
next and DELIVERED. Before round 36 the slot went to L1 (whose call never ends here), and
E was refused DEADLINE_EXCEEDED at its handler deadline (REFUSED).

Nothing asserts on timing: E's window (a 20 s claim window plus 3 slots of 1 s) is far
longer than the few steps it needs once A is let go, and the precondition that E's
window ends first has about a minute of slack.
"""

from __future__ import annotations

import trio
from node_support import all_decided, ended_claim, wait_until
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

from p2pay.core.messages import Response
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.node.watcher import Watcher

WINDOW_MS = 20_000
CLAIMS_PER_WINDOW = 20  # a claim slot of 1 s
FILLERS = 60
MARGIN_MS = 2_000
BOUND = 120  # seconds: every wait of the test, generous for a loaded machine


class HeldAnswers(MemoryLedger):
    """A ledger that holds the provider's answers to some claims until the test lets
    them through: those claims stay open (and count against the stake's queue) for as
    long as the test needs."""

    held: set[bytes]
    let_through: trio.Event

    async def answer_claim(
        self,
        key: object,
        claim_id: bytes,
        response: Response | None = None,
        *,
        evidence: object = None,
    ) -> None:
        if claim_id in self.held:
            with trio.fail_after(BOUND):
                await self.let_through.wait()
        await super().answer_claim(key, claim_id, response, evidence=evidence)  # type: ignore[arg-type]


def slot_waiters(watcher: Watcher) -> int:
    """Claims waiting for a handler slot. (A `CapacityLimiter` before round 36: read
    through its statistics, so that this test runs against that code too.)"""
    slots: object = watcher._limiter
    if isinstance(slots, trio.CapacityLimiter):
        return int(slots.statistics().tasks_waiting)
    return int(slots.waiting)  # type: ignore[attr-defined]


async def test_a_claim_with_the_earliest_window_gets_the_next_handler_slot() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
        claims_per_window=CLAIMS_PER_WINDOW,
    )  # fmt: skip
    ledger = HeldAnswers(params)
    ledger.held, ledger.let_through = set(), trio.Event()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50, max_claim_answers=1,
        claim_answer_margin_ms=MARGIN_MS,
    )  # fmt: skip
    a_go, never = trio.Event(), trio.Event()
    started: list[bytes] = []  # the channels whose call started, in order

    async def slow(call: Call) -> bytes:
        started.append(call.channel)
        if call.channel == e_channel:
            return b"served E"
        with trio.fail_after(BOUND):
            await (a_go if call.channel == a_channel else never).wait()
        return b"served"

    async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=config) as bob:
        bob.serve("slow", slow, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        watcher = bob.watcher
        assert watcher is not None
        free = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        a_channel, l1_channel, l2_channel, e_channel = [
            await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000) for _ in range(4)
        ]
        deadline = await ledger.now() - 1

        def slow_claim(channel: bytes) -> object:
            return claimed_request(channel, 1, deadline=deadline, service="slow")

        # the free claims, open while L1 and L2 are filed (BOB answers them; the ledger
        # holds the answers until the test lets them through)
        fillers = []
        for n in range(1, FILLERS + 1):
            request = claimed_request(free, n, deadline=deadline, service="nosuch")
            ledger.held.add(request.hash)  # the claim's id
            fillers.append(await ledger.file_claim(ALICE, request))
        a = await ledger.file_claim(ALICE, slow_claim(a_channel))  # type: ignore[arg-type]
        await wait_until(lambda: started == [a_channel], timeout=BOUND)  # A has the slot
        l1 = await ledger.file_claim(ALICE, slow_claim(l1_channel))  # type: ignore[arg-type]
        l2 = await ledger.file_claim(ALICE, slow_claim(l2_channel))  # type: ignore[arg-type]
        await wait_until(lambda: slot_waiters(watcher) == 2, timeout=BOUND)
        ledger.let_through.set()

        async def fillers_answered() -> bool:
            return await all_decided(ledger, fillers)

        await wait_until(fillers_answered, timeout=BOUND)
        e = await ledger.file_claim(ALICE, slow_claim(e_channel))  # type: ignore[arg-type]
        claims = {}
        for name, claim_id in (("A", a), ("L1", l1), ("L2", l2), ("E", e)):
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.OPEN, name
            claims[name] = claim
        # the precondition: E, filed last, has the earliest window (by about a minute)
        assert claims["E"].window_ends < min(
            claims[name].window_ends for name in ("A", "L1", "L2")
        ), {name: claim.window_ends for name, claim in claims.items()}
        await wait_until(lambda: slot_waiters(watcher) == 3, timeout=BOUND)
        assert started == [a_channel]
        a_go.set()  # A's call ends: its slot goes to the claim that waits with the earliest window

        async def e_decided_or_past() -> bool:
            found = await ledger.claim(e)
            assert found is not None
            return (
                found.state is not ClaimState.OPEN or await ledger.now() > claims["E"].window_ends
            )

        await wait_until(e_decided_or_past, timeout=BOUND)
        a_claim = await ledger.claim(a)
        assert a_claim is not None
        print(f"A {a_claim.state}, calls started on {len(started)} channels")
    claim = await ended_claim(ledger, ALICE, e)
    print(f"E: {claim.state}")
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.DELIVERED, (
        f"E, the earliest window, was {claim.state}: served behind later windows"
    )
    assert started[:2] == [a_channel, e_channel]
