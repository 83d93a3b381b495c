"""The simulation engine: real p2pay nodes, one shared ledger, simulated time.

Theory of operation
-------------------
`Simulation` builds everything a `Scenario` describes and runs it inside one trio run:

* one `MemoryLedger` (a dev ledger with the scenario's bond, split and horizon, and
  periods allowed down to 1 ms) whose clock is trio's clock;
* one real `p2pay.node.Node` per peer (`open_node` with its own `MemoryStore` and its
  `PeerBehaviour`), on a `MemoryNetwork` (latency per peer pair) or, with
  ``transport = "libp2p"``, on real libp2p hosts on 127.0.0.1;
* per peer, a lifecycle task that keeps its node up, takes it off the network or stops
  it during the behaviour's down periods, and reopens it on the same store;
* per client, a workload task: Poisson arrivals at the client's rate, each drawing a
  provider it has a channel to, a service from its mix and a body size, from the
  client's own seeded RNG; each request runs as a task of the client's current node;
* a sampler (time series for the report and plots, the progress bar) and a checker
  (periodic invariants, `p2pay.sim.invariants`).

With discovery clients (``discovery = true``, `p2pay.sim.discovery`), every node opens
with the in-memory discovery net of the `MemoryNetwork` (a fake-offer provider's net is
its behaviour's, not its node's); discovery clients open no channel at setup and each of
their arrivals is a `Node.call_any` by service name, whose attempts are recorded.

Phases: mint (sequential), start every node (sequential), setup (stakes, then channels,
sequential and in peer order, so channel ids are the same in every run), workload
``[0, duration)``, drain (no new requests; claims are filed, answered and resolved,
closes finalized; every peer is back up), settle (each provider closes its channels
through its behaviour's `settle`), stop; then the final invariants and the report.

On the memory transport the run uses ``trio.testing.MockClock(autojump_threshold=0)``,
as wrapped by `p2pay.sim.clock.SimClock` (which also wakes the simulator's own sleepers
without a cancel scope each): whenever every task waits, the clock jumps to the next
deadline, so simulated hours take seconds. A run is a function of its seed: keys,
arrivals, choices and every coin come from seeded RNGs or hashes of the seed, and trio's
own scheduling RNG is seeded too. Figures in the report are totals, which do not depend
on the order in which tasks ready at the same instant run; samples are taken at instants
offset from whole milliseconds so that they do not coincide with protocol events.

With libp2p the wall clock is used and every simulated duration (workload, periods,
timeouts, windows, intervals) is multiplied by ``time_scale`` (wall seconds per
simulated second), so the same scenario runs in about ``libp2p.max_wall`` seconds.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from p2pay.core.errors import InsufficientDeposit, P2payError
from p2pay.core.identity import Keypair
from p2pay.core.offers import Drop
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.base import NetError, Transport
from p2pay.net.memory import MemoryNetwork, memory_addr
from p2pay.net.memory_discovery import open_memory_discovery
from p2pay.node import (
    Attempt,
    Call,
    CallTimeout,
    ConnectionLost,
    DiscoveryConfig,
    Node,
    NodeConfig,
    NoProvider,
    PeerUnreachable,
    open_node,
)
from p2pay.persist import StoreFailed
from p2pay.sim.behaviours import DownPeriod, PeerBehaviour
from p2pay.sim.clock import current_wakes
from p2pay.sim.discovery import DiscoveryRecord
from p2pay.sim.params import ScenarioError, parse_duration
from p2pay.sim.registry import make_behaviour
from p2pay.sim.scenario import PeerGroup, Scenario, ServiceSpec
from p2pay.store.memory import MemoryStore

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # (see p2pay.persist)

log = logging.getLogger("p2pay.sim")

__all__ = ["EPOCH_MS", "SimPeer", "Simulation"]

#: Ledger time of simulated second 0 (a plausible Unix time, in ms).
EPOCH_MS = 1_700_000_000_000
#: Samples are taken this far after whole sample instants (see the module docstring).
SAMPLE_OFFSET_S = 0.000_371
#: The settings this version of the node has (newer ones are passed only when present).
_NODE_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(NodeConfig))


def seeded(seed: int, *parts: object) -> bytes:
    """32 bytes derived from the scenario seed and `parts` (keys, RNG seeds)."""
    h = hashlib.blake2b(digest_size=32, person=b"p2pay-sim")
    h.update(seed.to_bytes(8, "big"))
    for part in parts:
        h.update(repr(part).encode())
    return h.digest()


async def sleep_until(deadline: float) -> None:
    """`trio.sleep_until`, cheaper: when the deadline passes the task is rescheduled
    instead of a `Cancelled` being raised and caught (every arrival and every handler's
    work is one such sleep). A cancellation from outside is raised as usual. Under the
    simulator's `SimClock` the clock wakes the task itself, without a cancel scope."""
    wakes = current_wakes()
    if wakes is not None:
        await wakes.sleep_until(deadline)
        return
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()

    def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
        if trio.current_time() >= deadline:  # our deadline, not an outer cancel
            trio.lowlevel.reschedule(task)
            return trio.lowlevel.Abort.FAILED
        return trio.lowlevel.Abort.SUCCEEDED

    with trio.CancelScope(deadline=deadline):
        await trio.lowlevel.wait_task_rescheduled(abort)


@dataclass(eq=False)
class SimPeer:
    """One simulated peer: its identity, store, behaviour and running node."""

    index: int
    name: str
    group: PeerGroup
    key: Keypair
    store: MemoryStore
    behaviour: PeerBehaviour
    addr: str = ""
    node: Node | None = None
    up: bool = False  # its node is running
    online: bool = True  # reachable on the network
    nursery: trio.Nursery | None = None  # tasks of the current incarnation
    periods: list[DownPeriod] = field(default_factory=list)
    channels: list[tuple[SimPeer, bytes]] = field(default_factory=list)  # (payee, channel)
    prices: dict[str, int] = field(default_factory=dict)  # providers: current prices
    pending: int = 0  # requests in flight (clients)
    incarnations: int = 0
    totals: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    paid_ok: int = 0  # prices of calls answered OK (client side)
    # requests whose call returned OK (on time): request hash -> (payee account, price)
    delivered: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    top_up_lock: trio.Lock = field(default_factory=trio.Lock)
    discovery: Any = None  # its discovery net (scenarios with discovery clients)
    # discovery clients: offers seen and the offer book's counts, of past incarnations
    offer_totals: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def role(self) -> str:
        return self.group.role

    @property
    def account(self) -> bytes:
        return self.key.public

    @property
    def is_up(self) -> bool:
        """Its node runs and is reachable."""
        return self.up and self.online


class Simulation:
    """One run of a scenario. Use `p2pay.sim.run.run_scenario` unless embedding it.

    Args:
        scenario: what to build and run.
        transport: "memory" or "libp2p" (default: the scenario's).
        on_progress: called with (simulated seconds, total simulated seconds).
        shard, shards: build only member i of each group with i % shards == shard (one
            independent sub-market; see `p2pay.sim.run`); peers keep their unsharded
            index, name, key and RNGs.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        transport: str | None = None,
        on_progress: Callable[[float, float], None] | None = None,
        shard: int = 0,
        shards: int = 1,
    ) -> None:
        if not 0 <= shard < shards:
            raise ScenarioError(f"shard {shard} of {shards}")
        self.scenario = scenario
        self.shard = shard
        self.transport = transport or scenario.transport
        if self.transport not in ("memory", "libp2p"):
            raise ScenarioError("transport: memory or libp2p")
        self.on_progress = on_progress
        self.drain_s = scenario.drain_s if scenario.drain_s is not None else self._auto_drain()
        self.end_s = scenario.duration_s + self.drain_s
        if self.transport == "libp2p":
            if scenario.peer_count > scenario.libp2p.max_peers:
                raise ScenarioError(
                    f"libp2p runs take at most libp2p.max_peers={scenario.libp2p.max_peers} "
                    f"peers; this scenario has {scenario.peer_count}"
                )
            self.scale = scenario.libp2p.time_scale or min(
                1.0, scenario.libp2p.max_wall_s / max(self.end_s, 1e-9)
            )
        else:
            self.scale = 1.0
        self.t0 = 0.0
        p = scenario.ledger
        self.ledger = MemoryLedger(
            Params(
                ledger_id=b"p2pay:sim:%d" % scenario.seed,
                dev=True,
                claim_bond=p.claim_bond,
                slash_to_claimant_bps=p.slash_to_claimant_bps,
                min_challenge_ms=1,
                min_claim_window_ms=1,
                max_deadline_horizon_ms=p.max_deadline_horizon_ms,
            ),
            clock=self.ledger_now_ms,
        )
        self.network = MemoryNetwork() if self.transport == "memory" else None
        self.peers: list[SimPeer] = []
        index = -1
        for group in scenario.groups:
            for i in range(group.count):
                # A peer's index, name, key and RNGs are those of the unsharded run.
                index += 1
                if i % shards != shard:
                    continue
                behaviour = make_behaviour(group.behaviour, dict(group.behaviour_params))
                peer = SimPeer(
                    index=index,
                    name=f"{group.group}-{i}",
                    group=group,
                    key=Keypair.from_seed(seeded(scenario.seed, "key", index)),
                    store=MemoryStore(write_through=True),
                    behaviour=behaviour,
                )
                if group.provider is not None:
                    peer.prices = {
                        s: group.provider.prices.get(s, scenario.services[s].price)
                        for s in group.provider.services
                    }
                self.peers.append(peer)
        self.providers = [p for p in self.peers if p.role == "provider"]
        self.clients = [p for p in self.peers if p.role == "client"]
        self._by_account = {p.account: p for p in self.peers}
        self._by_peer_id = {str(p.key.peer_id): p for p in self.peers}
        for peer in self.peers:
            peer.behaviour.bind(peer, self)
            if self.network is not None:
                peer.addr = memory_addr(str(peer.key.peer_id))
            peer.periods = peer.behaviour.down_periods(scenario.duration_s)
        self.stop = trio.Event()
        self.go = trio.Event()  # set when the workload starts (t0 is known)
        self.workload_over = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.paid_ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.start_holdings: dict[bytes, int] = {}
        self.setup_tx = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.sim_end_s = 0.0
        self.event_count = 0
        from p2pay.sim.invariants import Invariants
        from p2pay.sim.report import Series

        self.series = Series()
        self.invariants = Invariants(self)
        self.disc = DiscoveryRecord()
        self._latency: dict[tuple[str, str], float] = {}
        #: while `run` runs under a `SimClock`: its `current_time` (`ledger_now_ms`)
        self._sim_time: Callable[[], float] | None = None

    # -- time

    def now(self) -> float:
        """Simulated seconds since the start of the workload."""
        return (trio.current_time() - self.t0) / self.scale

    def wall(self, seconds: float) -> float:
        """Trio seconds for `seconds` of simulated time."""
        return seconds * self.scale

    def ledger_now_ms(self) -> int:
        sim_time = self._sim_time
        if sim_time is not None:
            # the value trio.current_time() returns under the SimClock, read without
            # trio's two layers of calls: every node reads its clock here (about 9 times
            # per request, 1 M calls in scale-1000), measured in the commit
            return EPOCH_MS + int(sim_time() * 1000)
        if self.transport == "libp2p":
            return wall_clock_ms()
        return EPOCH_MS + int(trio.current_time() * 1000)

    async def sleep(self, seconds: float) -> None:
        await sleep_until(trio.current_time() + max(0.0, seconds) * self.scale)

    async def sleep_until(self, t: float) -> None:
        await sleep_until(self.t0 + t * self.scale)

    def rng(self, peer: SimPeer, purpose: str) -> random.Random:
        """A `random.Random` for one peer and purpose, seeded from the scenario seed."""
        return random.Random(int.from_bytes(seeded(self.scenario.seed, "rng", peer.index, purpose)))

    def _auto_drain(self) -> float:
        """Long enough for every claim and close started in the workload to finish."""
        s = self.scenario
        window = max((g.provider.claim_window_ms for g in s.groups if g.provider), default=0)
        timeout = max((g.client.timeout_s for g in s.groups if g.client), default=0.0)
        slow = max(
            (_param_seconds(g.behaviour_params.get("delay", 0)) for g in s.groups),
            default=0.0,
        )
        return (
            timeout
            + slow
            + s.node.claim_grace_ms / 1000
            + 2 * window / 1000
            + s.node.challenge_ms / 1000
            + 4 * s.node.watch_interval_s
            + 1.0
        )

    # -- lookups behaviours use

    def peer_by_account(self, account: bytes) -> SimPeer | None:
        return self._by_account.get(account)

    def any_service(self, provider: SimPeer) -> tuple[str, int]:
        """A service the provider offers and its current price."""
        name = sorted(provider.prices)[0]
        return name, provider.prices[name]

    # -- building nodes

    def node_config(self, peer: SimPeer) -> NodeConfig:
        n = self.scenario.node
        timeouts = [g.client.timeout_s for g in self.scenario.groups if g.client is not None]
        timeout = peer.group.client.timeout_s if peer.group.client else max(timeouts, default=5.0)
        extra: dict[str, Any] = {}
        if "min_challenge_ms" in _NODE_CONFIG_FIELDS:  # claims.md C-8 (scaled like the rest)
            extra["min_challenge_ms"] = max(1, int(n.min_challenge_ms * self.scale))
        return NodeConfig(
            **extra,
            max_in_flight=n.max_in_flight,
            default_timeout=self.wall(timeout),
            max_deadline_horizon_ms=n.max_deadline_horizon_ms,
            challenge_ms=max(1, int(n.challenge_ms * self.scale)),
            watch_interval=self.wall(n.watch_interval_s),
            redeem_threshold=n.redeem_threshold,
            claim_grace_ms=max(1, int(n.claim_grace_ms * self.scale)),
            redeliver_timeout=max(self.wall(5.0), 0.001),  # before a claim (claims.md 6)
            hello_timeout=max(self.wall(10.0), 5.0) if self.transport == "libp2p" else 10.0,
        )

    @asynccontextmanager
    async def _open(self, peer: SimPeer) -> AsyncIterator[Node]:
        config = self.node_config(peer)
        if self.network is not None:
            clock = self.ledger_now_ms
            extra: dict[str, Any] = {}
            # with discovery, every node announces and finds through the in-memory net,
            # except a peer whose behaviour publishes its own offers (fake offers)
            own_net = self.scenario.uses_discovery and peer.behaviour.announces_offers
            if own_net:
                extra["discovery"] = functools.partial(self._discovery_net, peer)
                extra["discovery_config"] = self.discovery_config(peer)
            async with open_node(
                key=peer.key,
                ledger=self.ledger,
                store=peer.store,
                network=self.network,
                config=config,
                clock=clock,
                behaviour=peer.behaviour,
                **extra,
            ) as node:
                if self.scenario.uses_discovery and not own_net:
                    transport = node._transport  # (no public accessor, as in RawSession)
                    assert transport is not None
                    async with self._discovery_net(peer, transport):
                        yield node
                else:
                    yield node
        else:
            async with open_node(
                key=peer.key,
                ledger=self.ledger,
                store=peer.store,
                listen=("/ip4/127.0.0.1/tcp/0",),
                config=config,
                behaviour=peer.behaviour,
            ) as node:
                yield node

    def discovery_config(self, peer: SimPeer) -> DiscoveryConfig:
        """The node's discovery settings: the scenario's ``[discovery]`` and, for a
        discovery client, its group's ``max_attempts``."""
        d = self.scenario.discovery
        client = peer.group.client
        return DiscoveryConfig(
            announce_interval_ms=round(d.announce_interval_s * 1000),
            deposit_calls=d.deposit_calls,
            max_deposit=d.max_deposit,
            max_attempts=client.max_attempts if client is not None else 3,
        )

    @asynccontextmanager
    async def _discovery_net(self, peer: SimPeer, transport: Transport) -> AsyncIterator[Any]:
        """The peer's in-memory discovery net, kept in ``peer.discovery`` while it is open
        (a discovery client's gossip the net dropped, its node's queue full, is counted
        when it closes)."""
        assert self.network is not None
        async with open_memory_discovery(self.network, transport) as net:
            peer.discovery = net
            try:
                yield net
            finally:
                if peer.group.client is not None and peer.group.client.discovery:
                    peer.offer_totals["ignored:queue_full"] += net.dropped
                peer.discovery = None

    def offer_counts(self) -> collections.Counter[str]:
        """What the discovery clients' nodes did with the offers they received, so far:
        ``seen`` (given to its offer book), ``accepted`` (kept by its offer book),
        ``ignored:<reason>`` (dropped by the book, or by the net when the node's queue was
        full), ``lies`` (offers or hellos caught lying; the peer dropped), ``evicted``."""
        raw: collections.Counter[str] = collections.Counter()
        for peer in self.clients:
            if peer.group.client is None or not peer.group.client.discovery:
                continue
            raw.update(peer.offer_totals)
            net, node = peer.discovery, peer.node
            if net is not None:
                raw["ignored:queue_full"] += net.dropped
            if node is not None and node.discovery is not None:
                raw["seen"] += node.discovery.received
                for reason, n in node.discovery.book.counts.items():
                    raw[f"book:{reason.value}"] += n
        out: collections.Counter[str] = collections.Counter()
        out["seen"] = raw["seen"]
        if raw["ignored:queue_full"]:
            out["ignored:queue_full"] = raw["ignored:queue_full"]
        not_verdicts = {d.value for d in (Drop.EVICTED, Drop.DROPPED_BY_LIE, Drop.LIES)}
        for key, n in raw.items():
            if key.startswith("book:") and n:
                why = key[len("book:") :]
                out[why if why in not_verdicts else f"ignored:{why}"] += n
        ignored_by_book = sum(
            n for k, n in out.items() if k.startswith("ignored:") and k != "ignored:queue_full"
        )
        out["accepted"] = out["seen"] - ignored_by_book
        return out

    def _handler(self, spec: ServiceSpec) -> Callable[[Call], Awaitable[bytes]]:
        body = bytes(spec.response_bytes)
        work = self.wall(spec.work_s)

        async def handler(call: Call) -> bytes:
            if work > 0:
                await sleep_until(trio.current_time() + work)
            return body

        return handler

    def _serve(self, peer: SimPeer, node: Node) -> None:
        for name in sorted(peer.prices):
            node.serve(name, self._handler(self.scenario.services[name]), price=peer.prices[name])

    def _latency_fn(self, src: str, dst: str) -> float:
        key = (src, dst)
        value = self._latency.get(key)
        if value is None:
            net = self.scenario.network
            coin = int.from_bytes(seeded(self.scenario.seed, "latency", src, dst)[:8]) / 2**64
            value = net.latency_s + net.jitter_s * coin
            self._latency[key] = value
        return value

    # -- the run

    async def run(self) -> None:
        """Run the whole scenario (call inside trio.run; see `p2pay.sim.run`)."""
        wall_start = time.perf_counter()
        cpu_start = time.process_time()
        wakes = current_wakes()
        self._sim_time = wakes.current_time if wakes is not None else None
        try:
            await self._run(wall_start, cpu_start)
        finally:
            self._sim_time = None

    async def _run(self, wall_start: float, cpu_start: float) -> None:
        s = self.scenario
        if self.network is not None and (s.network.latency_s or s.network.jitter_s):
            self.network.set_latency(self._latency_fn)
        for peer in self.peers:
            await self.ledger.mint(peer.key, peer.account, peer.group.balance)
        self.start_holdings = self.invariants.holdings_now()
        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                await nursery.start(self._lifecycle, peer)
            await self._setup()
            self.setup_tx = self.ledger.tx_count
            self.t0 = trio.current_time()
            self.go.set()
            nursery.start_soon(self._sampler)
            nursery.start_soon(self._checker)
            for peer in self.providers:
                for change in peer.group.provider.price_changes if peer.group.provider else ():
                    nursery.start_soon(
                        self._price_change, peer, change.at_s, change.service, change.price
                    )
            async with trio.open_nursery() as workload:
                for peer in self.clients:
                    workload.start_soon(self._client_workload, peer)
            await self.sleep_until(s.duration_s)
            self.workload_over = True
            await self.sleep_until(self.end_s)
            if s.settle:
                for peer in self.providers:
                    if peer.node is not None:
                        await self._guarded(peer, peer.behaviour.settle)
                # let the watchers see the closes (payers finalize nothing: payee closes
                # are final), then one last look
                await self.sleep(2 * s.node.watch_interval_s + 0.001)
            self.sim_end_s = self.now()
            self.series.sample(self, self.sim_end_s)
            self.stop.set()
            nursery.cancel_scope.cancel()
        self.wall_s = time.perf_counter() - wall_start
        self.cpu_s = time.process_time() - cpu_start
        self.event_count = len(await self.ledger.events(after=0, limit=10**9))
        await self.invariants.check_final()

    async def _setup(self) -> None:
        s = self.scenario
        for peer in self.providers:
            spec = peer.group.provider
            assert spec is not None and peer.node is not None
            if spec.stake:
                await peer.node.stake(
                    spec.stake,
                    penalty=spec.penalty,
                    claim_window_ms=max(1, int(spec.claim_window_ms * self.scale)),
                )
        groups = {g.group for g in s.groups if g.role == "provider"}
        for peer in self.clients:
            cspec = peer.group.client
            assert cspec is not None and peer.node is not None
            if cspec.discovery:
                continue  # it finds its providers by name during the workload
            allowed = set(cspec.targets) or groups
            eligible = [
                p
                for p in self.providers
                if p.group.group in allowed and any(x in p.prices for x in cspec.mix)
            ]
            if not eligible:
                raise ScenarioError(f"{peer.name}: no provider offers a service of its mix")
            rng = self.rng(peer, "channels")
            challenge_ms = peer.behaviour.channel_challenge_ms(
                max(1, int(s.node.challenge_ms * self.scale))
            )
            for target in sorted(
                rng.sample(eligible, min(cspec.channels, len(eligible))), key=lambda p: p.index
            ):
                # offline: a ledger operation only (the provider may be down at the start;
                # connecting here would also move the simulated clock)
                info = await peer.node.open_channel(
                    target.addr, deposit=cspec.deposit, challenge_ms=challenge_ms, offline=True
                )
                peer.channels.append((target, info.channel))

    async def _lifecycle(
        self, peer: SimPeer, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        periods = list(peer.periods)
        started = False
        for _ in range(len(periods) + 2):  # one incarnation per down period, plus the first
            going_down: DownPeriod | None = None
            async with self._open(peer) as node:
                peer.node = node
                peer.up = True
                if peer.behaviour.filters_answers:
                    self._filter_answers(peer, node)
                peer.incarnations += 1
                if self.transport == "libp2p":
                    peer.addr = node.addrs[0]
                self._serve(peer, node)
                async with trio.open_nursery() as incarnation:
                    peer.nursery = incarnation
                    if not started:
                        started = True
                        task_status.started()
                    await self.go.wait()
                    incarnation.start_soon(self._guarded, peer, peer.behaviour.run)
                    while periods:
                        period = periods.pop(0)
                        await self.sleep_until(period.start_s)
                        if period.mode == "network" and self.network is not None:
                            peer_id = str(peer.key.peer_id)
                            peer.online = False
                            self.network.set_online(peer_id, False)
                            self.network.disconnect(peer_id)
                            await self.sleep_until(period.end_s)
                            self.network.set_online(peer_id, True)
                            peer.online = True
                            continue
                        going_down = period
                        break
                    if going_down is None:
                        await self.stop.wait()
                    elif going_down.mode == "crash" and self.network is not None:
                        self.network.disconnect(str(peer.key.peer_id))
                    peer.up = False
                    incarnation.cancel_scope.cancel()
                peer.nursery = None
                self._accumulate(peer, node)
                peer.node = None
            if going_down is None:
                return
            await self.sleep_until(going_down.end_s)

    def _filter_answers(self, peer: SimPeer, node: Node) -> None:
        """Pass every frame the node sends on its inbound streams through the behaviour's
        `answer_filter` (memory transport only: the network's send filter)."""
        if self.network is None:  # libp2p: not supported, the behaviour stays honest
            peer.behaviour.stats["answer_filter_unsupported"] += 1
            return
        self.network.set_send_filter(str(peer.key.peer_id), peer.behaviour.answer_filter)

    def _accumulate(self, peer: SimPeer, node: Node) -> None:
        c = node.counters
        t = peer.totals
        for name in (
            "calls_served",
            "charged",
            "calls_made",
            "calls_ok",
            "paid",
            "timeouts",
            "claims_filed",
            "claims_answered",
            "claims_won",
            "redeemed",
            "connections",
            "protocol_violations",
        ):
            t[name] += int(getattr(c, name, 0))
        peer.refused.update(c.refused)
        if node.discovery is not None and peer.group.client and peer.group.client.discovery:
            peer.offer_totals["seen"] += node.discovery.received
            for reason, n in node.discovery.book.counts.items():
                peer.offer_totals[f"book:{reason.value}"] += n

    async def _guarded(self, peer: SimPeer, fn: Callable[[], Awaitable[None]]) -> None:
        """Run a behaviour hook; a bug in it is counted and reported, not fatal."""
        try:
            await fn()
        except Exception as exc:
            self.errors[f"{peer.behaviour.kind}:{type(exc).__name__}"] += 1
            log.exception("%s: behaviour %s failed", peer.name, peer.behaviour.kind)

    async def _price_change(self, peer: SimPeer, at_s: float, service: str, price: int) -> None:
        await self.sleep_until(at_s)
        peer.prices[service] = price
        if peer.node is not None:
            self._serve(peer, peer.node)
        self.counts["price_changes"] += 1

    async def _client_workload(self, peer: SimPeer) -> None:
        spec = peer.group.client
        assert spec is not None
        duration = self.scenario.duration_s
        if spec.rate <= 0:
            return
        rng = self.rng(peer, "workload")
        services = sorted(spec.mix)
        # the cumulative weights `choices` would build on every call from the weights:
        # the same draw, built once (108 k arrivals in scale-1000)
        cum_weights = list(itertools.accumulate(spec.mix[s] for s in services))
        low, high = spec.body_bytes
        t = 0.0
        limit = int(spec.rate * duration * 4) + 1000  # Poisson: far above the mean
        for _ in range(limit):
            t += rng.expovariate(spec.rate)
            if t >= duration:
                return
            service = rng.choices(services, cum_weights=cum_weights)[0]
            pick = rng.random()
            body = rng.randbytes(rng.randint(low, high))
            await self.sleep_until(t)
            self.counts["arrivals"] += 1
            if not peer.is_up or peer.nursery is None:
                self.counts["missed_offline"] += 1
                peer.outcomes["MISSED_OFFLINE"] += 1
                continue
            if peer.pending >= spec.max_pending:
                self.counts["missed_backlog"] += 1
                peer.outcomes["MISSED_BACKLOG"] += 1
                continue
            node = peer.node
            assert node is not None
            if spec.discovery:  # by service name: no target
                peer.pending += 1
                peer.nursery.start_soon(self._one_call, peer, None, service, body)
                continue
            paying = node.payer_channels  # `_open`, inlined: once per channel per arrival
            targets = [
                target
                for target, channel in peer.channels
                if service in target.prices
                and (ch := paying.get(channel)) is not None
                and ch.status.value == "open"
            ]
            if not targets:
                self.counts["missed_no_channel"] += 1
                peer.outcomes["MISSED_NO_CHANNEL"] += 1
                continue
            target = targets[min(len(targets) - 1, int(pick * len(targets)))]
            peer.pending += 1
            peer.nursery.start_soon(self._one_call, peer, target, service, body)

    async def _one_call(
        self, peer: SimPeer, target: SimPeer | None, service: str, body: bytes
    ) -> None:
        """One request of the client's workload: to `target`, or by service name (a
        discovery client's, `target` None)."""
        hook = "call" if target is not None else "call_any"
        self.counts["sent"] += 1
        start = self.now()
        try:
            if target is None:
                outcome = await peer.behaviour.call_any(service, body)
            else:
                outcome = await peer.behaviour.call(target, service, body)
        except Exception as exc:
            outcome = f"EXCEPTION:{type(exc).__name__}"
            self.errors[f"{hook}:{type(exc).__name__}"] += 1
            log.exception("%s: %s failed", peer.name, hook)
        finally:
            peer.pending -= 1
        peer.outcomes[outcome] += 1
        self.counts["ok" if outcome == "OK" else "failed"] += 1
        # (a call by name counts its providers' outages itself: `honest_call_any`)
        if outcome != "OK" and target is not None and _down_during(target, start, self.now()):
            # the client saw UNREACHABLE, TIMEOUT, ...: the cause is the scenario's outage
            self.counts["failed_provider_offline"] += 1

    async def honest_call(self, peer: SimPeer, target: SimPeer, service: str, body: bytes) -> str:
        """An honest paid call (tops up the channel once when the deposit runs out).

        Returns:
            "OK", an error code, or TIMEOUT / UNREACHABLE / CONNECTION_LOST / OFFLINE.
        """
        node = peer.node
        spec = peer.group.client
        assert spec is not None
        if node is None:
            return "OFFLINE"
        max_price = spec.max_price or 2 * self.scenario.services[service].price
        for attempt in range(2):
            try:
                result = await node.call(
                    target.addr,
                    service,
                    body,
                    max_price=max_price,
                    timeout=self.wall(spec.timeout_s),
                )
            except InsufficientDeposit:
                if attempt == 0 and spec.top_up and await self._top_up(peer, target):
                    continue
                return "INSUFFICIENT_DEPOSIT"
            except CallTimeout:
                return "TIMEOUT"
            except PeerUnreachable:
                return "UNREACHABLE"
            except ConnectionLost:
                return "CONNECTION_LOST"
            except (NetError, trio.TooSlowError, trio.BrokenResourceError):
                return "UNREACHABLE"
            except StoreFailed:
                raise  # the node's store failed: a crash of the run, not a call's outcome
            except P2payError as exc:
                return exc.code.value
            peer.paid_ok += result.price
            peer.delivered[result.receipt.request_hash] = (target.account, result.price)
            self.paid_ok += result.price
            return "OK"
        return "INSUFFICIENT_DEPOSIT"

    async def honest_call_any(self, peer: SimPeer, service: str, body: bytes) -> str:
        """An honest paid call by service name (`Node.call_any`: the node finds, chooses,
        fails over and opens channels); recorded in `disc`.

        Returns:
            "OK", or an error code (NO_PROVIDER when no offer answered).
        """
        node = peer.node
        spec = peer.group.client
        assert spec is not None
        if node is None:
            return "OFFLINE"
        max_price = spec.max_price or 2 * self.scenario.services[service].price
        start = self.now()
        attempts: tuple[Attempt, ...] = ()
        try:
            result = await node.call_any(
                service,
                body,
                max_price=max_price,
                timeout=self.wall(spec.timeout_s),
                min_stake=spec.min_stake,
            )
        except NoProvider as exc:
            outcome, attempts = exc.code.value, exc.attempts
        except StoreFailed:
            raise  # the node's store failed: a crash of the run, not a call's outcome
        except P2payError as exc:  # e.g. the ledger refused to open a channel
            outcome = exc.code.value
        else:
            outcome, attempts = "OK", result.attempts
            payee = self._by_peer_id[result.peer]
            peer.paid_ok += result.price
            peer.delivered[result.receipt.request_hash] = (payee.account, result.price)
            self.paid_ok += result.price
        tries = [
            (
                self._by_peer_id.get(a.peer),
                "OK" if a.outcome == "ok" else a.outcome.upper(),
                a.code,
            )
            for a in attempts
        ]
        self.disc.record(peer, tries, outcome=outcome, start=start)
        if outcome != "OK" and any(
            p is not None and how != "OK" and _down_during(p, start, self.now())
            for p, how, _ in tries
        ):
            self.counts["failed_provider_offline"] += 1
        return outcome

    async def _top_up(self, peer: SimPeer, target: SimPeer) -> bool:
        spec = peer.group.client
        assert spec is not None
        async with peer.top_up_lock:
            node = peer.node
            if node is None:
                return False
            for payee, channel in peer.channels:
                if payee is not target:
                    continue
                ch = node.payer_channels.get(channel)
                if ch is None or not _open(node, channel):
                    return False
                if ch.available >= 2 * max(target.prices.values()):
                    return True  # someone else topped it up meanwhile
                if self.ledger.state.balances.get(peer.account, 0) < spec.deposit:
                    self.counts["top_up_no_funds"] += 1
                    return False
                await node.top_up(channel, spec.deposit)
                self.counts["top_ups"] += 1
                return True
        return False

    # -- observers

    async def _sampler(self) -> None:
        every = self.scenario.sample_every_s
        for k in range(1, int(self.end_s / every) + 2):
            t = k * every + SAMPLE_OFFSET_S
            if t > self.end_s:
                return
            await self.sleep_until(t)
            self.series.sample(self, t)
            if self.on_progress is not None:
                self.on_progress(min(t, self.end_s), self.end_s)

    async def _checker(self) -> None:
        every = self.scenario.check_every_s
        for k in range(1, int(self.end_s / every) + 2):
            t = k * every + 2 * SAMPLE_OFFSET_S
            if t > self.end_s:
                return
            await self.sleep_until(t)
            await self.invariants.check_periodic(t)


def _down_during(target: SimPeer, start: float, end: float) -> bool:
    """Whether `target` was down (by the scenario) at some instant of [start, end]."""
    if not target.is_up:
        return True
    return any(p.start_s <= end and start < p.end_s for p in target.periods)


def _open(node: Node, channel: bytes) -> bool:
    ch = node.payer_channels.get(channel)
    return ch is not None and ch.status.value == "open"


def _param_seconds(value: object) -> float:
    try:
        return parse_duration(value)
    except ScenarioError:
        return 0.0
