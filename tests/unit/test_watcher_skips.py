"""What the watcher's step skips when its input has not changed, and that it does not
skip once it has (p2pay/node/watcher.py).

`_resolve_claims` reads every claim record of the store for ours still open; after a
read that found none (with every claim record staged before it durable) the step skips
the read until the watcher stages a claim record again. The fakes below have only what
that duty uses: a store of claim records, a persister that commits when told to (as the
flusher does), and a ledger of claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from p2pay.core.settlement import ClaimState
from p2pay.node import NodeConfig
from p2pay.node.watcher import Watcher
from p2pay.sim.clock import SimClock
from p2pay.store.base import ClaimRecord, OutgoingRequest

NOW = 1_700_000_000_000


class FakeStore:
    def __init__(self) -> None:
        self.records: dict[bytes, ClaimRecord] = {}
        self.reads = 0
        self.during_read: Any = None

    async def claims(self) -> list[ClaimRecord]:
        self.reads += 1
        listed = [self.records[k] for k in sorted(self.records)]
        if self.during_read is not None:  # another task runs before the read returns
            self.during_read()
        return listed


class FakePersister:
    """Stages claim records; commits them when `commit` is called (or at once)."""

    def __init__(self, store: FakeStore, *, through: bool = True) -> None:
        self.store = store
        self.through = through
        self.generation = 0
        self.durable = 0
        self.staged: list[ClaimRecord] = []

    def stage(self, *, claim: ClaimRecord | None = None, **_: Any) -> int:
        self.generation += 1
        if claim is not None:
            self.staged.append(claim)
        if self.through:
            self.commit()
        return self.generation

    def commit(self) -> None:
        for claim in self.staged:
            self.store.records[claim.claim_id] = claim
        self.staged.clear()
        self.durable = self.generation

    def is_durable(self, generation: int) -> bool:
        return generation <= self.durable


@dataclass
class FakeClaim:
    state: ClaimState
    window_ends: int


class FakeLedger:
    def __init__(self) -> None:
        self.claims: dict[bytes, FakeClaim] = {}
        self.resolved: list[bytes] = []

    async def now(self) -> int:
        return NOW

    async def claim(self, claim_id: bytes) -> FakeClaim | None:
        return self.claims.get(claim_id)

    async def resolve_claim(self, key: Any, claim_id: bytes) -> None:
        self.resolved.append(claim_id)
        self.claims[claim_id].state = ClaimState.UPHELD


@dataclass
class FakeNode:
    through: bool = True
    config: NodeConfig = field(default_factory=NodeConfig)
    store: FakeStore = field(default_factory=FakeStore)
    ledger: FakeLedger = field(default_factory=FakeLedger)
    key: Any = None
    payer_channels: dict[bytes, Any] = field(default_factory=dict)  # none: no takes to check
    persister: FakePersister = field(init=False)

    def __post_init__(self) -> None:
        self.persister = FakePersister(self.store, through=self.through)

    def now(self) -> int:
        return NOW


def record(i: int) -> OutgoingRequest:
    return OutgoingRequest(
        request_hash=bytes([i]) * 32,
        channel=b"\x01" * 32,
        n=i,
        payee=b"\x02" * 32,
        price=1,
        deadline=NOW - 10_000,
        frame=b"frame",
        state="awaiting",
        updated_at=NOW - 20_000,
    )


def file_claim(node: FakeNode, watcher: Watcher, i: int, *, window_ends: int = NOW - 1) -> bytes:
    """A claim of ours filed on the ledger and staged as the watcher does."""
    claim_id = bytes([i]) * 32
    node.ledger.claims[claim_id] = FakeClaim(state=ClaimState.OPEN, window_ends=window_ends)
    watcher._stage_filed(record(i), claim_id)
    return claim_id


async def test_no_claim_of_ours_open_skips_the_read_until_one_is_staged() -> None:
    node = FakeNode()
    watcher = Watcher(node)  # type: ignore[arg-type]
    await watcher._resolve_claims()
    assert node.store.reads == 1  # the first step reads (e.g. claims of a previous run)
    await watcher._resolve_claims()
    await watcher._resolve_claims()
    assert node.store.reads == 1  # nothing staged since a read found none open
    claim_id = file_claim(node, watcher, 1)
    await watcher._resolve_claims()
    assert node.store.reads == 2
    assert node.ledger.resolved == [claim_id]  # its window ended: resolved at this step


async def test_an_open_claim_is_read_at_every_step_until_it_is_decided() -> None:
    node = FakeNode()
    watcher = Watcher(node)  # type: ignore[arg-type]
    claim_id = file_claim(node, watcher, 1, window_ends=NOW + 60_000)  # window still open
    for reads in (1, 2, 3):
        await watcher._resolve_claims()
        assert node.store.reads == reads
    assert node.ledger.resolved == []
    node.ledger.claims[claim_id].window_ends = NOW - 1
    await watcher._resolve_claims()
    assert node.ledger.resolved == [claim_id]
    # decided: the watcher records its outcome (a claim record staged), read once more
    watcher._claim_state(claim_id, "claimant", "upheld")
    await watcher._resolve_claims()
    await watcher._resolve_claims()
    assert node.store.reads == 5


async def test_a_claim_record_not_yet_durable_is_read_once_committed() -> None:
    """With a flusher (not written through) a staged record reaches the store later: a
    read before its commit does not count as one that found none open."""
    node = FakeNode(through=False)
    watcher = Watcher(node)  # type: ignore[arg-type]
    claim_id = file_claim(node, watcher, 1)
    await watcher._resolve_claims()
    assert node.store.reads == 1 and node.ledger.resolved == []  # not in the store yet
    await watcher._resolve_claims()
    assert node.store.reads == 2  # read again: it was not durable at the last read
    node.persister.commit()
    await watcher._resolve_claims()
    assert node.ledger.resolved == [claim_id]


async def test_a_claim_record_staged_during_the_read_is_read_next_step() -> None:
    node = FakeNode()
    watcher = Watcher(node)  # type: ignore[arg-type]
    late: list[bytes] = []
    node.store.during_read = lambda: late.append(file_claim(node, watcher, 2))
    await watcher._resolve_claims()  # the records were listed before the claim was staged
    node.store.during_read = None
    assert node.ledger.resolved == []
    await watcher._resolve_claims()
    assert node.store.reads == 2
    assert node.ledger.resolved == late


# ---------------------------------------------------------------------------
# the wait between steps: every `watch_interval`, or at once when poked, on either clock


class StepTimes(Watcher):
    """A watcher whose step only notes when it ran."""

    times: list[float]

    async def step(self) -> None:
        self.times.append(trio.current_time())


class MetaStore:
    async def get_meta(self, key: str) -> bytes | None:
        return None


async def step_instants() -> list[float]:
    node = FakeNode(config=NodeConfig(watch_interval=30.0))
    node.store = MetaStore()  # type: ignore[assignment]
    watcher = StepTimes(node)  # type: ignore[arg-type]
    watcher.times = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await trio.sleep(70)  # steps at 0, 30, 60
        watcher.poke()  # at 70: a step now, the next 30 s later
        await trio.sleep(5)
        watcher.poke()
        watcher.poke()  # two pokes before the step: one step
        await trio.sleep(40)  # at 75, then 105
        nursery.cancel_scope.cancel()
    return [t - start for t in watcher.times]


STEPS = [0.0, 30.0, 60.0, 70.0, 75.0, 105.0]


async def test_steps_under_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    assert await step_instants() == STEPS


@pytest.fixture
def sim_clock() -> trio.abc.Clock:
    return SimClock().trio_clock


async def test_steps_under_the_simulators_clock(sim_clock: trio.abc.Clock) -> None:
    """The same instants when the simulator's clock wakes the watcher (`Watcher._rest`)."""
    assert await step_instants() == STEPS
