"""The node's explicit limits against floods and stalls (issue 7, deliverable 5).

Each limit is a `NodeConfig` field (specs/threat-model.md "Limits"): unpaid/refused
requests per stream (token bucket, then reset), inbound sessions per node and per peer
(OVERLOADED, then close), in-flight requests per node, hello timeout, and the idle /
slow-loris timeout. Every test shows the limit acting and honest peers still served.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hardening_support import (
    ALICE,
    BOB,
    MALLORY,
    PRICE,
    World,
    capture_errors,
    make_ledger,
    provider_world,
    raw_peer,
)

from p2pay.core.errors import ErrorCode, LocalProtocolError, Overloaded
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Refusal, Request, Response, decode_frame
from p2pay.ledger.memory import wall_clock_ms
from p2pay.net.base import StreamClosed
from p2pay.net.memory import open_memory_transport
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import Call, NodeConfig, open_node

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DAVE = Keypair.from_seed(bytes([5]) * 32)


class ManualClock:
    def __init__(self) -> None:
        self.ms = wall_clock_ms()

    def __call__(self) -> int:
        return self.ms


def unknown_channel_request(world: World, n: int) -> bytes:
    return Request.create(
        MALLORY,
        ledger=world.ledger.ledger_id,
        channel=n.to_bytes(32, "big"),
        n=n,
        paid=PRICE,
        price=PRICE,
        service="echo",
        body=b"",
        deadline=wall_clock_ms() + 30_000,
    ).to_frame()


# ---------------------------------------------------------------------------
# unpaid / refused request flood: token bucket per stream


async def test_refused_request_flood_resets_the_stream() -> None:
    clock = ManualClock()
    config = NodeConfig(watcher=False, refusal_burst=20, max_refusals_per_s=5)
    async with (
        provider_world(config, clock=clock) as world,
        capture_errors() as errors,
        raw_peer(world) as mallory,
    ):
        # paid requests cost no token: 5 of them come between the 20 refusals
        refused = 0
        for i in range(1, 200):
            if i % 5 == 0:
                answer = await mallory.exchange(world.mallory_request(i // 5).to_frame())
                assert isinstance(answer, Response) and answer.ok
                continue
            answer = await mallory.exchange(unknown_channel_request(world, 1000 + i))
            if answer is None:
                break
            assert isinstance(answer, Refusal) and answer.code is ErrorCode.UNKNOWN_CHANNEL
            refused += 1
        assert refused == 20  # the burst, exactly: the clock did not move
        assert world.bob.counters.rate_limited == 1
        # signed refusals count too, and the bucket refills with time: 5 per second
        await mallory.connect()
        late = world.mallory_request(100, deadline=clock.ms - 1)  # DEADLINE_EXCEEDED, signed
        for i in range(20):
            answer = await mallory.exchange(unknown_channel_request(world, 5000 + i))
            assert isinstance(answer, Refusal)
        clock.ms += 1000
        for i in range(5):
            answer = await mallory.exchange(
                world.mallory_request(101 + i, deadline=clock.ms - 1).to_frame()
            )
            assert isinstance(answer, Response) and answer.status == "DEADLINE_EXCEEDED"
        assert await mallory.exchange(late.to_frame()) is None
        assert world.bob.counters.rate_limited == 2
        # ALICE never noticed; MALLORY's channel holds exactly its paid calls
        await world.alice.call(world.bob_addr, "echo", b"x", max_price=PRICE)
        assert world.bob.payee_channels[world.channels["mallory"]].spent == 5 * PRICE
        assert not errors.records


async def test_node_wide_overload_does_not_cut_honest_streams() -> None:
    """max_in_flight_total: requests over the node's total are refused OVERLOADED (signed,
    not charged); that refusal is the node's fault, so it costs the peer no token."""
    gate = trio.Event()

    async def hold(call: Call) -> bytes:
        with trio.fail_after(10):
            await gate.wait()
        return b"done"

    config = NodeConfig(watcher=False, max_in_flight_total=2, refusal_burst=1)
    async with provider_world(config, services={"hold": hold}) as world:
        outcomes: list[Any] = []

        async def one() -> None:
            try:
                outcomes.append(
                    await world.alice.call(world.bob_addr, "hold", b"", max_price=PRICE)
                )
            except Exception as exc:
                outcomes.append(exc)

        before = world.bob.payee_channels[world.channels["alice"]].spent
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
            with trio.fail_after(10):
                while world.bob.counters.refused[ErrorCode.OVERLOADED.value] < 3:
                    await trio.sleep(0.01)
            gate.set()
        assert sorted(type(o).__name__ for o in outcomes) == ["CallResult"] * 2 + ["Overloaded"] * 3
        assert world.bob.counters.rate_limited == 0
        assert world.bob.payee_channels[world.channels["alice"]].spent == before + 2 * PRICE
        assert world.bob._in_flight_total == 0


# ---------------------------------------------------------------------------
# connection floods: sessions per node and per peer


async def test_sessions_per_node_are_limited() -> None:
    """max_sessions: a newcomer evicts the session without a channel idle longest; when
    every session has a channel, it is refused OVERLOADED (the client sees Overloaded)."""
    config = NodeConfig(watcher=False, max_sessions=3)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        assert world.bob._sessions == 2  # ALICE, CAROL
        first = await mallory.connect()  # the third, no request yet: no channel
        extra = await mallory.transport.connect(world.bob_addr)
        with trio.fail_after(5):
            await extra.send(mallory.hello)
            assert isinstance(decode_frame(await extra.receive()), Hello)
            with pytest.raises(StreamClosed):
                await first.receive()  # evicted to make room
        assert world.bob.counters.sessions_evicted == 1
        assert world.bob._sessions == 3
        mallory.stream = extra  # now a paying session: a request on its channel
        answer = await mallory.exchange(world.mallory_request(1).to_frame())
        assert isinstance(answer, Response) and answer.ok
        # every session has a channel: a newcomer is refused, nobody is evicted
        probe = await mallory.transport.connect(world.bob_addr)
        with trio.fail_after(5):
            answer = decode_frame(await probe.receive())
            assert isinstance(answer, Refusal) and answer.code is ErrorCode.OVERLOADED
            with pytest.raises(StreamClosed):
                await probe.receive()
        assert world.bob.counters.sessions_refused == 1
        assert world.bob.counters.sessions_evicted == 1
        # the library's client sees a typed Overloaded, not a broken hello
        async with open_node(
            key=DAVE, ledger=world.ledger, network=world.network, config=NodeConfig(watcher=False)
        ) as dave:
            with pytest.raises(Overloaded):
                await dave.connect(world.bob_addr)
            await mallory.stream.reset()  # a slot frees up
            with trio.fail_after(5):
                while world.bob._sessions > 2:
                    await trio.sleep(0.01)
            hello = await dave.connect(world.bob_addr)
            assert hello.service("echo") is not None
        await world.alice.call(world.bob_addr, "echo", b"x", max_price=PRICE)


async def test_sessions_per_peer_are_limited() -> None:
    """max_sessions_per_peer: a peer's new stream replaces its own longest idle session;
    while all of them have work in flight, the new one is refused."""
    gate = trio.Event()

    async def hold(call: Call) -> bytes:
        with trio.fail_after(10):
            await gate.wait()
        return b"held"

    config = NodeConfig(watcher=False, max_sessions_per_peer=2)
    async with (
        provider_world(config, services={"hold": hold}) as world,
        raw_peer(world) as mallory,
    ):
        streams = []
        for _ in range(7):
            stream = await mallory.transport.connect(world.bob_addr)
            with trio.fail_after(5):
                await stream.send(mallory.hello)
                assert isinstance(decode_frame(await stream.receive()), Hello)
            streams.append(stream)
        for old in streams[:5]:  # each newcomer evicted the oldest
            with trio.fail_after(5), pytest.raises(StreamClosed):
                await old.receive()
        assert world.bob.counters.sessions_evicted == 5
        assert world.bob.counters.sessions_refused == 0
        assert world.bob._sessions == 4 and world.bob._sessions_of[MALLORY.public] == 2
        # both remaining sessions busy (a request in flight on each): the next is refused
        for n, stream in enumerate(streams[5:], start=1):
            await stream.send(world.mallory_request(n, service="hold").to_frame())
        with trio.fail_after(5):
            while world.bob._in_flight_total < 2:
                await trio.sleep(0.01)
        refused = await mallory.transport.connect(world.bob_addr)
        with trio.fail_after(5):
            answer = decode_frame(await refused.receive())
        assert isinstance(answer, Refusal) and answer.code is ErrorCode.OVERLOADED
        assert world.bob.counters.sessions_refused == 1
        await world.alice.call(world.bob_addr, "echo", b"x", max_price=PRICE)
        gate.set()
        for stream in streams[5:]:
            with trio.fail_after(5):
                answer = decode_frame(await stream.receive())
            assert isinstance(answer, Response) and answer.body == b"held"
            await stream.reset()
        with trio.fail_after(5):
            while MALLORY.public in world.bob._sessions_of:
                await trio.sleep(0.01)


# ---------------------------------------------------------------------------
# session hoarding: free identities holding idle sessions (issue 14, item 4)

HOARDERS = [Keypair.from_seed(bytes([100 + i]) * 32) for i in range(64)]


class Hoarders:
    """Identities with no channel, each opening idle sessions (hello, then silence)."""

    def __init__(self, world: World, transports: list[Any]) -> None:
        self.world = world
        self.transports = transports
        self.held: list[Any] = []
        self.refused = 0

    async def grab(self, per_identity: int) -> None:
        """Each identity tries to open `per_identity` sessions and keeps every one it gets."""
        for transport in self.transports:
            hello = Hello.create(transport._key, ledger=self.world.ledger.ledger_id).to_frame()
            for _ in range(per_identity):
                stream = await transport.connect(self.world.bob_addr)
                with trio.fail_after(5):
                    await stream.send(hello)
                    try:
                        answer = decode_frame(await stream.receive())
                    except StreamClosed:
                        answer = None
                if isinstance(answer, Hello):
                    self.held.append(stream)
                else:
                    assert isinstance(answer, Refusal) and answer.code is ErrorCode.OVERLOADED
                    self.refused += 1
                    await stream.reset()

    def holding(self) -> list[bytes]:
        """The hoarders' keys among the node's live sessions, oldest session first."""
        ours = {key.public for key in HOARDERS}
        return [s.peer for s in self.world.bob._live if s.peer in ours]


@contextlib.asynccontextmanager
async def hoarders(world: World) -> AsyncIterator[Hoarders]:
    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with contextlib.AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(open_memory_transport(world.network, key, ignore))
            for key in HOARDERS
        ]
        yield Hoarders(world, transports)


async def paying_newcomer(world: World) -> bytes:
    """DAVE, new to the provider: opens a channel and makes a paid call; its answer body."""
    async with open_node(
        key=DAVE, ledger=world.ledger, network=world.network, config=NodeConfig(watcher=False)
    ) as dave:
        await world.ledger.mint(DAVE, DAVE.account, 10**24)
        await dave.open_channel(world.bob_addr, deposit=10**9)
        result = await dave.call(world.bob_addr, "echo", b"dave pays", max_price=PRICE)
        return result.body


async def test_session_hoarders_with_free_identities_do_not_lock_out_payers() -> None:
    """64 identities with no channel each try to hold 8 idle sessions (the old per-peer
    limit; 64 x 8 filled the node's 512): each holds at most max_sessions_per_peer, and a
    new paying client is served. On the old code DAVE got OVERLOADED."""
    async with provider_world() as world, hoarders(world) as mob:
        await mob.grab(per_identity=8)
        limit = world.bob.config.max_sessions_per_peer
        assert limit == 2
        assert len(mob.held) == 64 * 8  # each newcomer replaced that identity's oldest ...
        assert len(mob.holding()) == 64 * limit  # ... so each holds `limit`
        assert all(world.bob._sessions_of[key.public] == limit for key in HOARDERS)
        assert world.bob.counters.sessions_evicted == 64 * (8 - limit)
        assert world.bob._sessions == 2 + 64 * limit
        assert await paying_newcomer(world) == b"dave pays"
        assert world.bob.payee_channels[world.channels["alice"]].spent == 2 * PRICE


async def test_a_full_node_evicts_idle_sessions_without_a_channel() -> None:
    """A node full of idle channel-less sessions admits a newcomer by evicting the one
    idle longest; sessions of paying peers are never evicted for it."""
    config = NodeConfig(watcher=False, max_sessions=32)
    async with provider_world(config) as world, hoarders(world) as mob:
        alice_stream = world.alice._connections[world.bob.peer_id].stream
        await mob.grab(per_identity=1)  # 64 identities for 30 free slots
        assert world.bob._sessions == 32
        assert mob.refused == 0  # every newcomer took an idle hoarder's place ...
        assert world.bob.counters.sessions_evicted == 64 - 30
        # ... the one idle longest first: the last 30 identities remain
        assert mob.holding() == [key.public for key in HOARDERS[-30:]]
        with trio.fail_after(5), pytest.raises(StreamClosed):
            await mob.held[0].receive()  # an evicted hoarder reads the reset
        assert await paying_newcomer(world) == b"dave pays"
        assert len(mob.holding()) == 29  # DAVE took the place of the oldest hoarder
        assert HOARDERS[-30].public not in mob.holding()
        # ALICE and CAROL (channels) kept their sessions all along
        assert world.alice._connections[world.bob.peer_id].stream is alice_stream
        await world.alice.call(world.bob_addr, "echo", b"still here", max_price=PRICE)
        assert world.bob.counters.sessions_refused == 0


async def test_refused_frames_do_not_keep_an_idle_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only useful frames (an admitted request, the hello) hold off idle_timeout: a peer
    sending one refused request now and then is reset; one making paid calls is not. On
    the old code the refused frames kept the session for ever."""
    config = NodeConfig(watcher=False, idle_timeout=10.0)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        await mallory.connect()
        resets = world.bob.counters.idle_resets
        refused = 0
        with trio.fail_after(60):
            while True:
                await trio.sleep(4)
                answer = await mallory.exchange(unknown_channel_request(world, 1 + refused))
                if answer is None:
                    break
                assert isinstance(answer, Refusal) and answer.code is ErrorCode.UNKNOWN_CHANNEL
                refused += 1
        # refused at 4 s and 8 s (at 4 s at least, on a loaded machine); at 12 s the session
        # was gone (reset at 10 s): refusals never kept it, or the loop would go on to 60 s
        assert refused in (1, 2)
        assert world.bob.counters.idle_resets == resets + 3  # MALLORY's, ALICE's, CAROL's
        # paid calls every 4 s for 60 s keep the session
        await mallory.connect()
        for n in range(1, 16):
            await trio.sleep(4)
            answer = await mallory.exchange(world.mallory_request(n).to_frame())
            assert isinstance(answer, Response) and answer.ok
        assert world.bob.counters.idle_resets == resets + 3
        assert mallory.connects == 2


# ---------------------------------------------------------------------------
# hello timeout, idle streams, slow-loris, peers that do not read


async def test_hello_timeout() -> None:
    config = NodeConfig(watcher=False, hello_timeout=0.2)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        started = trio.current_time()  # before the stream exists: before BOB's timer starts
        stream = await mallory.transport.connect(world.bob_addr)
        with trio.fail_after(30), pytest.raises(StreamClosed):
            await stream.receive()  # we never said hello: reset after hello_timeout
        # not before hello_timeout: a lower bound holds however loaded the machine is (no
        # upper bound on the time, issue 16); the reason is counted below
        assert trio.current_time() - started >= config.hello_timeout
        with trio.fail_after(30):
            while world.bob._sessions > 2:
                await trio.sleep(0.01)
        assert world.bob.counters.refused[ErrorCode.DEADLINE_EXCEEDED.value] == 1


async def test_idle_streams_are_reset_but_not_while_a_request_is_in_flight() -> None:
    async def slow(call: Call) -> bytes:
        await trio.sleep(0.8)
        return b"slow but paid"

    config = NodeConfig(watcher=False, idle_timeout=0.3)
    async with provider_world(config, services={"slow": slow}) as world, raw_peer(world) as mallory:
        await mallory.connect()
        with trio.fail_after(5), pytest.raises(StreamClosed):
            await mallory.stream.receive()  # we stay silent: reset after ~0.3 s
        assert world.bob.counters.idle_resets >= 1
        with trio.fail_after(5):  # ALICE's and CAROL's idle sessions went too, and they saw it
            while world.bob._sessions or world.alice._connections:
                await trio.sleep(0.01)
        # a call longer than the idle timeout is not cut (the stream is busy) ...
        result = await world.alice.call(world.bob_addr, "slow", b"", max_price=PRICE)
        assert result.body == b"slow but paid"
        # ... and after idle resets the client reconnects by itself (once the reset is seen:
        # a fixed sleep raced the reset on a loaded machine, and the call went out on the
        # stream being reset, ConnectionLost)
        with trio.fail_after(30):
            while world.bob._sessions or world.alice._connections:
                await trio.sleep(0.01)
        result = await world.alice.call(world.bob_addr, "echo", b"again", max_price=PRICE)
        assert result.body == b"again"


async def test_peer_that_stops_reading_is_reset_and_memory_stays_bounded() -> None:
    """MALLORY sends 1000 paid requests and never reads an answer: BOB's answers fill the
    pipe, its outbox reaches max_outbox, it stops reading (backpressure), and the idle
    timeout resets the stream. Nothing is charged that was not admitted and answered."""
    config = NodeConfig(watcher=False, idle_timeout=0.5, max_outbox=64)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        await mallory.connect()
        sent = 0

        async def flood() -> None:
            nonlocal sent
            try:
                for n in range(1, 1001):
                    await mallory.stream.send(world.mallory_request(n).to_frame())
                    sent += 1
            except StreamClosed:
                pass

        with trio.fail_after(20):
            await flood()
        assert sent < 1000  # backpressure stopped us before the end
        assert world.bob.counters.idle_resets >= 1
        ch = world.bob.payee_channels[world.channels["mallory"]]
        assert ch.spent == world.bob.counters.calls_served * PRICE - 4 * PRICE  # ALICE, CAROL
        assert ch.spent <= sent * PRICE and ch.reserved == 0
        # bounded: BOB read at most what fits in its outbox, the pipes and in flight
        assert ch.last_n <= 64 + 2 * 256 + config.max_in_flight
        await world.alice.call(world.bob_addr, "echo", b"x", max_price=PRICE)


async def test_slow_loris_over_libp2p_is_reset() -> None:
    """Bytes of a frame that never completes, one every 0.1 s, on a real libp2p stream:
    reset after idle_timeout; during the hello, hello_timeout answers DEADLINE_EXCEEDED."""
    ledger = make_ledger()
    config = NodeConfig(watcher=False, idle_timeout=0.5, hello_timeout=0.5)

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with (
        capture_errors() as errors,
        open_node(key=BOB, ledger=ledger, config=config) as bob,
        open_libp2p_transport(MALLORY, ignore) as transport,
    ):
        # during the hello: hello_timeout (a timed-out read resets the stream)
        stream = await transport.connect(bob.addrs[0])
        with trio.fail_after(5), pytest.raises(StreamClosed):
            await stream._net.write(b"\x40")  # a 64-byte frame, never finished
            await stream.receive()
        assert bob.counters.refused[ErrorCode.DEADLINE_EXCEEDED.value] == 1
        await stream.reset()
        # after the hello
        stream = await transport.connect(bob.addrs[0])
        await stream.send(Hello.create(MALLORY, ledger=ledger.ledger_id).to_frame())
        assert isinstance(decode_frame(await stream.receive()), Hello)
        trickled = 0
        with trio.fail_after(30):
            try:
                await stream._net.write(b"\x7f")  # announces 127 bytes
                for _ in range(40):
                    if bob.counters.idle_resets:
                        break
                    await stream._net.write(b"x")
                    trickled += 1
                    await trio.sleep(0.1)
            except Exception:
                pass  # the reset reached our writes
            with pytest.raises(StreamClosed):
                await stream.receive()
        # reset while a byte still came every 0.1 s: a frame gets idle_timeout to complete,
        # however slowly it trickles (counted in bytes sent, not seconds: issue 16)
        assert trickled < 40
        assert bob.counters.idle_resets == 1
        await stream.reset()
    assert not errors.records, errors.text()


# ---------------------------------------------------------------------------
# resources a flood of made-up identifiers could pin


async def test_unknown_channel_flood_pins_no_memory() -> None:
    """Every made-up channel id costs one ledger look-up and leaves nothing behind (the
    per-channel look-up lock is dropped: before the fix, one lock stayed per id)."""
    config = NodeConfig(watcher=False, refusal_burst=10_000)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        for n in range(1, 501):
            answer = await mallory.exchange(unknown_channel_request(world, n))
            assert isinstance(answer, Refusal) and answer.code is ErrorCode.UNKNOWN_CHANNEL
        assert len(world.bob._channel_locks) == 0
        assert len(world.bob.payee_channels) == 2


def test_limits_are_validated() -> None:
    for name in (
        "max_in_flight_total",
        "max_sessions",
        "max_sessions_per_peer",
        "max_refusals_per_s",
        "refusal_burst",
        "max_in_flight",
    ):
        for bad in (0, -1, 1.5, True, None):
            with pytest.raises(LocalProtocolError):
                NodeConfig(**{name: bad})
    for name in ("idle_timeout", "hello_timeout"):
        for bad in (0, -1.0, math.nan, "1"):
            with pytest.raises(LocalProtocolError):
                NodeConfig(**{name: bad})
    assert NodeConfig(idle_timeout=math.inf).idle_timeout == math.inf
    # the rest of the fields: each a type and a range (a node accepted these and failed
    # later, or never: max_frame 100 in its hello, an endless default timeout)
    for name, bads in (
        ("default_timeout", (0, -1.0, math.nan, math.inf, "1", True)),
        ("watch_interval", (0, -0.5, math.nan, math.inf, None)),
        ("max_frame", (4095, 0, 2**63, 4096.0, True)),
        ("max_deadline_horizon_ms", (0, -1, 2**64, 1.0)),
        ("challenge_ms", (0, -5, 2**64, "60000")),
        ("response_retention_ms", (-1, 2**128, 1.5, None)),
        ("watcher", (1, "no", None)),
        ("auto_claim", (0, "yes")),
    ):
        for bad in bads:
            with pytest.raises(LocalProtocolError, match=name):
                NodeConfig(**{name: bad})
    edges = NodeConfig(
        max_frame=4096,
        max_deadline_horizon_ms=1,
        challenge_ms=1,
        response_retention_ms=0,
        default_timeout=0.001,
        watch_interval=1e-3,
        watcher=False,
        auto_claim=False,
    )
    assert edges.max_frame == 4096 and edges.response_retention_ms == 0


# ---------------------------------------------------------------------------
# key material


async def test_key_material_never_reaches_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    """With DEBUG logging on, through calls, refusals, hostile frames and errors, no log
    line holds a secret key seed (the key file's 0600 mode: tests/unit/test_keys.py)."""
    caplog.set_level(logging.DEBUG)
    # the CLI's in-process tests set the "p2pay" logger's own level; override it here
    caplog.set_level(logging.DEBUG, logger="p2pay")
    async with provider_world() as world, raw_peer(world) as mallory:
        await mallory.exchange(b"\x00garbage")
        await mallory.exchange(unknown_channel_request(world, 7))
        await world.alice.call(world.bob_addr, "echo", b"x", max_price=PRICE)
        text = "\n".join(r.getMessage() for r in caplog.records)
        text += repr(world.bob.key) + repr(world.bob.config) + repr(world.bob.counters)
    assert caplog.records
    for key in (ALICE, BOB, MALLORY):
        assert key.seed.hex() not in text and key.seed.hex().upper() not in text
        assert repr(key.seed) not in text


# ---------------------------------------------------------------------------
# the idle timer under the simulator's clock: the same instants as under trio's


@pytest.fixture
def sim_clock() -> trio.abc.Clock:
    """The simulator's clock (autojumping `MockClock` that wakes sleepers itself): the
    server's idle timer sleeps on its wakes instead of trio's deadlines."""
    from p2pay.sim.clock import SimClock

    return SimClock().trio_clock


async def idle_reset_instants() -> list[float]:
    """When BOB resets idle sessions, from the hello: one silent; one whose only call
    (admitted at once, served for 15 s) is in flight when the timer first fires; one with
    a call answered at 4 s."""

    async def slow(call: Call) -> bytes:
        await trio.sleep(15)
        return call.body

    config = NodeConfig(watcher=False, idle_timeout=10.0)
    found: list[float] = []
    async with provider_world(config, services={"slow": slow}) as world:
        for case in ("silent", "busy", "answered"):
            async with raw_peer(world) as mallory:
                stream = await mallory.connect()
                start = trio.current_time()
                resets = world.bob.counters.idle_resets
                n = 1 + len(found)
                if case == "busy":
                    request = world.mallory_request(n, service="slow")
                    await stream.send(request.to_frame())
                if case == "answered":
                    await trio.sleep(4)
                    answer = await mallory.exchange(world.mallory_request(n).to_frame())
                    assert isinstance(answer, Response) and answer.ok
                with trio.fail_after(100), pytest.raises(StreamClosed):
                    while True:  # the slow call's answer, then the reset
                        await stream.receive()
                found.append(trio.current_time() - start)
                assert world.bob.counters.idle_resets > resets  # (with others idle as long)
    return found


# a silent session at 10 s; a busy one at 10 s finds a call in flight and looks again 10 s
# later (20 s), when its last useful moment was the answer at 15 s: reset at 25 s; the one
# answered at 4 s at 14 s
IDLE_RESETS = [10.0, 25.0, 14.0]


async def test_idle_resets_under_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    assert await idle_reset_instants() == IDLE_RESETS


async def test_idle_resets_under_the_simulators_clock(sim_clock: trio.abc.Clock) -> None:
    assert await idle_reset_instants() == IDLE_RESETS
