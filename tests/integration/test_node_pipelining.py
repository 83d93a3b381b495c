"""Pipelined calls on one stream: coalesced writes, each charge fixed once and the receipts'
``spent`` chained, handlers run concurrently, durability before every receipt
(p2pay.node `_Outbox.pump`, `_ServerSession._start_handler`).

Both transports; every wait bounded.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from p2pay.core.identity import Keypair
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.net.p2p import Libp2pStream
from p2pay.node import Behaviour, Call, CallResult, Node, NodeConfig, open_node
from p2pay.store.base import Batch
from p2pay.store.memory import MemoryStore

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
PRICE = 1_000
TOKEN = 10**24
T = 20.0  # bound on any one step

CONFIG = NodeConfig(watcher=False, default_timeout=T)


@pytest.fixture(params=["memory", "libp2p"])
def network(request: pytest.FixtureRequest) -> MemoryNetwork | None:
    return MemoryNetwork() if request.param == "memory" else None


@asynccontextmanager
async def nodes(
    network: MemoryNetwork | None,
    handler: Any,
    *,
    store: Any = None,
    behaviour: Behaviour | None = None,
) -> AsyncIterator[tuple[Node, Node]]:
    ledger = MemoryLedger(Params(ledger_id=b"p2pay:test:pipelining", dev=True))
    await ledger.mint(ALICE, ALICE.account, 10 * TOKEN)
    async with (
        open_node(
            key=BOB, ledger=ledger, network=network, store=store, config=CONFIG,
            behaviour=behaviour,
        ) as bob,
        open_node(key=ALICE, ledger=ledger, network=network, config=CONFIG) as alice,
    ):  # fmt: skip
        bob.serve("svc", handler, price=PRICE)
        await alice.open_channel(bob.addrs[0], deposit=10**9)
        yield bob, alice


async def calls(alice: Node, bob: Node, bodies: list[bytes]) -> list[CallResult]:
    """One concurrent call per body; results in the order of `bodies`."""
    results: list[CallResult | None] = [None] * len(bodies)

    async def one(i: int) -> None:
        results[i] = await alice.call(bob.peer_id, "svc", bodies[i], max_price=PRICE)

    with trio.fail_after(T):
        async with trio.open_nursery() as nursery:
            for i in range(len(bodies)):
                nursery.start_soon(one, i)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def charged_once_each(results: list[CallResult]) -> bool:
    """Every call charged once: the receipts' ``spent`` are distinct and each is the one
    before it (in the order the charges were fixed) plus the price (protocol.md 13.3)."""
    spent = sorted(r.spent for r in results)
    return all(r.price == PRICE for r in results) and all(
        b - a == PRICE for a, b in itertools.pairwise(spent)
    )


async def echo(call: Call) -> bytes:
    return call.body


async def test_pipelined_calls_are_coalesced_and_each_charged_once(
    network: MemoryNetwork | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []  # frames per write, both directions (libp2p)
    send_many = Libp2pStream.send_many

    async def counted(self: Libp2pStream, payloads: Any) -> None:
        writes.append(len(payloads))
        await send_many(self, payloads)

    monkeypatch.setattr(Libp2pStream, "send_many", counted)
    async with nodes(network, echo) as (bob, alice):
        await alice.call(bob.addrs[0], "svc", b"warm-up", max_price=PRICE)
        for _ in range(3):
            bodies = [b"%d" % i for i in range(48)]
            results = await calls(alice, bob, bodies)
            assert [r.body for r in results] == bodies
            assert charged_once_each(results)
        assert bob.counters.calls_served == 1 + 3 * 48
        assert bob._in_flight_total == 0
    if network is None:
        assert writes and max(writes) > 1  # several frames went out in one write
        assert sum(writes) > 2 * len(writes)


class GatedStore(MemoryStore):
    """A MemoryStore whose commits wait for `gate` (a closed gate holds every commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.gate.set()

    async def write(self, batch: Batch) -> None:
        await self.gate.wait()
        await super().write(batch)


async def test_no_receipt_leaves_before_its_charge_is_durable(
    network: MemoryNetwork | None,
) -> None:
    store = GatedStore()
    async with nodes(network, echo, store=store) as (bob, alice):
        await alice.call(bob.addrs[0], "svc", b"warm-up", max_price=PRICE)
        store.gate = trio.Event()  # hold the provider's next commit
        done: list[CallResult] = []

        async def one(i: int) -> None:
            done.append(await alice.call(bob.peer_id, "svc", b"%d" % i, max_price=PRICE))

        try:
            with trio.fail_after(T):
                async with trio.open_nursery() as nursery:
                    for i in range(20):
                        nursery.start_soon(one, i)
                    while bob.counters.calls_served < 20:  # all charged, none committed
                        await trio.sleep(0.01)
                    await trio.sleep(0.2)
                    assert done == []  # the receipts wait for the commit
                    record = await store.payee_channel(next(iter(bob.payee_channels)))
                    assert record is not None and record.spent == PRICE  # the warm-up only
                    store.gate.set()
        finally:
            store.gate.set()  # else closing the node waits for its last commit
        assert len(done) == 20
        assert charged_once_each(done)
        record = await store.payee_channel(next(iter(bob.payee_channels)))
        assert record is not None and record.spent == 21 * PRICE
        assert max(r.spent for r in done) == record.spent


async def test_suspending_handlers_run_concurrently(
    network: MemoryNetwork | None,
) -> None:
    started: list[int] = []
    slow_started = 0
    all_slow_started = trio.Event()
    SLOW = 6

    async def handler(call: Call) -> bytes:
        nonlocal slow_started
        started.append(int(call.body[1:]))
        if call.body.startswith(b"s"):
            slow_started += 1
            if slow_started == SLOW:
                all_slow_started.set()
            # Each slow handler waits for all the others: serialised handlers would
            # deadlock here (and fail_after would say so).
            await all_slow_started.wait()
        return call.body

    async with nodes(network, handler) as (bob, alice):
        await alice.call(bob.addrs[0], "svc", b"f0", max_price=PRICE)
        started.clear()
        bodies = [(b"s" if i % 4 == 1 else b"f") + b"%d" % i for i in range(4 * SLOW)]
        results = await calls(alice, bob, bodies)
        assert [r.body for r in results] == bodies
        assert bob.counters.calls_served == 1 + 4 * SLOW
        assert bob._in_flight_total == 0
        assert charged_once_each(results)
    assert sorted(started) == list(range(4 * SLOW))  # every handler ran once


class SlowStart(Behaviour):
    """A provider that waits before every handler (Behaviour.before_handler suspends)."""

    def __init__(self) -> None:
        self.entered = 0

    async def before_handler(self, call: Call) -> None:
        self.entered += 1
        await trio.sleep(0.01)


async def test_a_suspending_before_handler_hook_still_serves_every_call(
    network: MemoryNetwork | None,
) -> None:
    slow = SlowStart()
    async with nodes(network, echo, behaviour=slow) as (bob, alice):
        bodies = [b"%d" % i for i in range(32)]
        with trio.fail_after(T):
            results = await calls(alice, bob, bodies)
        assert [r.body for r in results] == bodies
        assert slow.entered == 32
        assert bob._in_flight_total == 0


VAR: contextvars.ContextVar[int] = contextvars.ContextVar("test_handler_var", default=-1)


async def test_each_handler_runs_in_a_context_of_its_own(network: MemoryNetwork | None) -> None:
    seen: list[int] = []

    async def handler(call: Call) -> bytes:
        seen.append(VAR.get())
        VAR.set(call.n)  # must not leak into the next handler's context
        return call.body

    async with nodes(network, handler) as (bob, alice):
        await calls(alice, bob, [b"%d" % i for i in range(24)])
    assert seen == [-1] * 24


async def test_failing_handlers_are_answered_and_not_charged(network: MemoryNetwork | None) -> None:
    async def handler(call: Call) -> bytes:
        if int(call.body) % 3 == 0:
            raise RuntimeError("boom")
        if int(call.body) % 3 == 1:
            return "not bytes"  # type: ignore[return-value]
        return call.body

    from p2pay.core.errors import RemoteProtocolError

    async with nodes(network, handler) as (bob, alice):
        outcomes: dict[int, str] = {}

        async def one(i: int) -> None:
            try:
                await alice.call(bob.peer_id, "svc", b"%d" % i, max_price=PRICE)
                outcomes[i] = "ok"
            except RemoteProtocolError as exc:
                outcomes[i] = exc.code.value

        await alice.call(bob.addrs[0], "svc", b"2", max_price=PRICE)
        with trio.fail_after(T):
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(one, i)
        assert outcomes == {i: "ok" if i % 3 == 2 else "HANDLER_ERROR" for i in range(30)}
        assert bob.counters.calls_served == 1 + 10
        assert bob.counters.charged == 11 * PRICE
        assert bob._in_flight_total == 0
