"""The node's explicit limits against floods and stalls (issue 7, deliverable 5).

Each limit is a `NodeConfig` field (specs/threat-model.md "Limits"): unpaid/refused
requests per stream (token bucket, then reset), inbound sessions per node and per peer
(OVERLOADED, then close), in-flight requests per node, hello timeout, and the idle /
slow-loris timeout. Every test shows the limit acting and honest peers still served.
"""

from __future__ import annotations

import logging
import math
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
    config = NodeConfig(watcher=False, max_sessions=3)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        assert world.bob._sessions == 2  # ALICE, CAROL
        await mallory.connect()  # the third
        extra = await mallory.transport.connect(world.bob_addr)
        with trio.fail_after(5):
            await extra.send(mallory.hello)
            answer = decode_frame(await extra.receive())
            assert isinstance(answer, Refusal) and answer.code is ErrorCode.OVERLOADED
            with pytest.raises(StreamClosed):
                await extra.receive()
        assert world.bob.counters.sessions_refused == 1
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
    config = NodeConfig(watcher=False, max_sessions_per_peer=2)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        streams = []
        for _ in range(2):
            stream = await mallory.transport.connect(world.bob_addr)
            await stream.send(mallory.hello)
            assert isinstance(decode_frame(await stream.receive()), Hello)
            streams.append(stream)
        for _ in range(5):
            stream = await mallory.transport.connect(world.bob_addr)
            with trio.fail_after(5):
                await stream.send(mallory.hello)
                answer = decode_frame(await stream.receive())
            assert isinstance(answer, Refusal) and answer.code is ErrorCode.OVERLOADED
        assert world.bob.counters.sessions_refused == 5
        assert world.bob._sessions == 4 and world.bob._sessions_of[MALLORY.public] == 2
        await world.alice.call(world.bob_addr, "echo", b"x", max_price=PRICE)
        for stream in streams:
            await stream.reset()
        with trio.fail_after(5):
            while MALLORY.public in world.bob._sessions_of:
                await trio.sleep(0.01)


# ---------------------------------------------------------------------------
# hello timeout, idle streams, slow-loris, peers that do not read


async def test_hello_timeout() -> None:
    config = NodeConfig(watcher=False, hello_timeout=0.2)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        stream = await mallory.transport.connect(world.bob_addr)
        started = trio.current_time()
        with trio.fail_after(5), pytest.raises(StreamClosed):
            await stream.receive()  # we never said hello: reset after hello_timeout
        assert 0.15 < trio.current_time() - started < 2.0
        with trio.fail_after(5):
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
        # a call longer than the idle timeout is not cut (the stream is busy) ...
        result = await world.alice.call(world.bob_addr, "slow", b"", max_price=PRICE)
        assert result.body == b"slow but paid"
        # ... and after idle resets the client reconnects by itself
        await trio.sleep(0.5)
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
        started = trio.current_time()
        with trio.fail_after(5):
            try:
                await stream._net.write(b"\x7f")  # announces 127 bytes
                for _ in range(40):
                    await stream._net.write(b"x")
                    await trio.sleep(0.1)
            except Exception:
                pass  # the reset reached our writes
            with pytest.raises(StreamClosed):
                await stream.receive()
        assert trio.current_time() - started < 2.0
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
