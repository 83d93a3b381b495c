"""Honest paying clients beside hostile peers, on loopback libp2p (issue 14, item 6).

One provider (BOB, in this process, so its buffers can be inspected) serves ``echo`` over
libp2p with a small ``max_sessions``. Beside the honest clients run:

* `HOARDERS` identities with no channel, each keeping ``max_sessions_per_peer`` idle
  sessions open (hello, then silence) and reopening every one the provider resets;
* one window flooder (MALLORY, with a channel): it sends paid requests without reading
  the answers until the provider's outbox for it is full and its reader pauses, then
  writes yamux DATA frames straight to the connection, ignoring the receive window;
  when the provider cuts it off it reconnects and does it again.

Each honest client (its own key, channel and node) makes `calls` paid calls; a call
refused OVERLOADED, or lost with its connection before it was admitted, is retried after
a back-off (at most `MAX_ATTEMPTS` attempts); a call waits `PATIENCE` for its answer, and
one that times out counts as failed. The run is ordered by events, not clocks: the honest
clients start once the hoarders fill the provider's sessions and the flooder floods, and
the hostile peers go on after them until the flooder was cut off and a session evicted
(every wait bounded), so a starved machine runs the same scenario, only slower.
Reported: the share of honest calls answered within their deadline (`DEADLINE` seconds
from the first attempt) and their latency, how often the provider evicted / refused / cut
off, and the most bytes any one stream held in the provider's muxer and frame reader.

``python -m benchmarks.hostile_load [--honest N] [--calls C] [--baseline]`` prints one
JSON line per run (``--baseline`` adds a run without the hostile peers, to compare).
The slow test ``tests/hardening/test_hardening_hostile_load.py`` runs it with 200 honest
clients and checks what must hold on any machine: every honest call served, buffers
within their bounds, every receipt paid exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import resource
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from p2pay.core.errors import Overloaded, P2payError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, decode_frame
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.base import StreamClosed
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import Call, ConnectionLost, Node, NodeConfig, open_node

PRICE = 1_000
TOKEN = 10**24
LEDGER_ID = b"p2pay:bench:hostile"
BOB = Keypair.from_seed(bytes([2]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)
HOARDERS = 64
MAX_ATTEMPTS = 60
DEADLINE = 120.0  # seconds from a call's first attempt to its answer
BACKOFF = 0.25
HOARDER_RETRY = 1.0  # a hoarder reopens a session this long after losing one
# Waits that only order the scenario, never measure it: generous bounds, so that a starved
# machine (the suite beside a CPU hog) runs the same scenario, only slower.
PATIENCE = 300.0  # seconds: the most a peer waits for a hello, an honest client a call
HOSTILE_READY = 300.0  # the most the honest clients wait for the hostile peers' attack
HOSTILE_AFTER = 300.0  # the most the hostile peers go on once the honest clients are done


def _key(label: bytes, i: int) -> Keypair:
    return Keypair.from_seed(hashlib.sha256(b"p2pay hostile load %s %d" % (label, i)).digest())


async def _echo(call: Call) -> bytes:
    return call.body


async def _ignore(stream: Any) -> None:
    await stream.aclose()


class Run:
    """What one run saw."""

    def __init__(self) -> None:
        self.latencies: list[float] = []  # per honest call, first attempt to answer
        self.attempts: list[int] = []
        self.failed: list[str] = []  # honest calls never served (with the last error)
        self.retry_causes: dict[str, int] = {}
        self.receipts: dict[bytes, int] = {}  # honest channel -> prices on its receipts
        # honest channel -> (spent, outstanding) in that client's own channel accounting
        # (late receipts included), read when the client is done
        self.client_channels: dict[bytes, tuple[int, int]] = {}
        # honest channel -> calls retried after their connection was lost: a request that
        # had left then stays outstanding in the client's accounting (in doubt, protocol.md
        # 14.2) until a re-send or the watcher settles it (the clients run no watcher)
        self.lost_calls: dict[bytes, int] = {}
        self.hoarder_sessions = 0  # sessions the hoarders got (hello answered)
        self.hoarder_refusals = 0
        self.floods = 0  # flooder connections cut off by the provider
        self.flooding = trio.Event()  # the flooder's first flood began
        self.hostile_ready = False  # the attack was on when the honest clients started
        self.flood_bytes = 0
        self.max_muxer_buffer = 0  # most bytes one stream held in the provider's muxer
        self.max_reader_buffer = 0  # most bytes one session's FrameReader held
        self.muxers: set[Any] = set()


def _watch_buffers(bob: Node, run: Run) -> None:
    for session in list(bob._live):
        net = getattr(session.stream, "_net", None)
        if net is None:
            continue
        run.muxers.add(net.muxed_conn)
        run.max_reader_buffer = max(run.max_reader_buffer, session.stream._reader.buffered)
    for conn in run.muxers:
        run.max_muxer_buffer = max(run.max_muxer_buffer, getattr(conn, "max_buffered", 0))
        for buffer in list(conn.stream_buffers.values()):
            run.max_muxer_buffer = max(run.max_muxer_buffer, len(buffer))


async def _sampler(bob: Node, run: Run) -> None:
    while True:
        _watch_buffers(bob, run)
        await trio.sleep(0.05)


async def _hoarder(key: Keypair, addr: str, per_peer: int, run: Run) -> None:
    hello = Hello.create(key, ledger=LEDGER_ID).to_frame()
    async with open_libp2p_transport(key, _ignore) as transport:

        async def hold() -> None:
            while True:
                try:
                    stream = await transport.connect(addr)
                    with trio.fail_after(PATIENCE):
                        await stream.send(hello)
                        first = decode_frame(await stream.receive())
                    if isinstance(first, Hello):
                        run.hoarder_sessions += 1
                        with contextlib.suppress(StreamClosed):
                            await stream.receive()  # silence until the provider resets
                    else:
                        run.hoarder_refusals += 1
                    await stream.reset()
                except Exception:  # NetError, TooSlowError, a refused dial...
                    pass
                await trio.sleep(HOARDER_RETRY)

        async with trio.open_nursery() as nursery:
            for _ in range(per_peer):
                nursery.start_soon(hold)


async def _flooder(ledger: MemoryLedger, bob: Node, addr: str, run: Run) -> None:
    channel = await ledger.open_channel(MALLORY, BOB.public, 10**15, 60_000)
    n = 0
    async with open_libp2p_transport(MALLORY, _ignore) as transport:
        while True:
            try:
                stream: Any = await transport.connect(addr)
                with trio.fail_after(PATIENCE):
                    await stream.send(Hello.create(MALLORY, ledger=LEDGER_ID).to_frame())
                    if not isinstance(decode_frame(await stream.receive()), Hello):
                        await stream.reset()
                        await trio.sleep(0.5)
                        continue
                session = next(
                    (s for s in bob._live if s.stream.remote_public == MALLORY.public), None
                )
                if session is None:
                    await stream.reset()
                    continue
                conn = session.stream._net.muxed_conn

                async def requests(stream: Any) -> None:
                    nonlocal n
                    with contextlib.suppress(StreamClosed):
                        for _ in range(40):
                            n += 1
                            request = Request.create(
                                MALLORY,
                                ledger=LEDGER_ID,
                                channel=channel,
                                n=n,
                                paid=n * PRICE,
                                price=PRICE,
                                service="echo",
                                body=b"m" * 60_000,
                                deadline=wall_clock_ms() + 60_000,
                            )
                            await stream.send(request.to_frame())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(requests, stream)
                    # the provider's outbox for us fills (its answers wait for our window)
                    with trio.move_on_after(PATIENCE):
                        while len(session.outbox.items) < bob.config.max_outbox:
                            await trio.sleep(0.01)
                    raw = stream._net.muxed_conn
                    header = struct.pack(
                        "!BBHII", 0, 0, 0, stream._net.muxed_stream.stream_id, 65000
                    )
                    chunk = header + b"\x00" * 65000
                    run.flooding.set()
                    # until the provider cuts the connection off (bounded), or ends our
                    # session some other way (idle reset, eviction): a flood on a stream
                    # the provider has closed is discarded by its muxer, never a window
                    # violation, so it would only burn the bound (seen beside CPU hogs:
                    # 71 GB in 611 s); the next connection floods again
                    with trio.move_on_after(PATIENCE), contextlib.suppress(Exception):
                        while not raw.event_shutting_down.is_set() and session in bob._live:
                            await raw._write_frame(chunk)
                            run.flood_bytes += 65000
                            await trio.sleep(0)
                    nursery.cancel_scope.cancel()
                # the provider may still be reading what we sent: let it (bounded)
                with trio.move_on_after(PATIENCE):
                    while not getattr(conn, "window_violations", 0) and not (
                        conn.event_shutting_down.is_set()
                    ):
                        await trio.sleep(0.05)
                if getattr(conn, "window_violations", 0):
                    run.floods += 1
                _watch_buffers(bob, run)
                await stream.reset()
            except Exception:  # NetError, TooSlowError, a refused dial...
                pass
            await trio.sleep(0.5)


async def _honest(i: int, ledger: MemoryLedger, addr: str, calls: int, run: Run) -> None:
    key = _key(b"honest", i)
    await ledger.mint(key, key.account, TOKEN)
    # A call is never cut short by a clock: only OVERLOADED or a connection lost before
    # the call was admitted is an answer that is retried; a timeout (which a starved
    # machine must not cause: PATIENCE) is a failure, never retried.
    config = NodeConfig(watcher=False, default_timeout=PATIENCE, hello_timeout=PATIENCE)
    async with open_node(key=key, ledger=ledger, config=config) as node:
        channel = b""
        last = ""
        for attempt in range(MAX_ATTEMPTS):
            try:
                channel = (await node.open_channel(addr, deposit=10**12)).channel
                break
            except (Overloaded, ConnectionLost) as exc:
                last = type(exc).__name__
                run.retry_causes[last] = run.retry_causes.get(last, 0) + 1
                await trio.sleep(BACKOFF * min(8, attempt + 1))
            except P2payError as exc:
                last = f"{type(exc).__name__}: {exc}"
                break
        if not channel:
            run.failed.append(f"client {i}: no channel ({last})")
            return
        run.receipts.setdefault(channel, 0)
        try:
            for c in range(calls):
                began = trio.current_time()
                last = ""
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    try:
                        result = await node.call(addr, "echo", b"%d:%d" % (i, c), max_price=PRICE)
                    except (Overloaded, ConnectionLost) as exc:
                        last = type(exc).__name__
                        run.retry_causes[last] = run.retry_causes.get(last, 0) + 1
                        if isinstance(exc, ConnectionLost):
                            run.lost_calls[channel] = run.lost_calls.get(channel, 0) + 1
                        await trio.sleep(BACKOFF * min(8, attempt))
                        continue
                    except P2payError as exc:  # a CallTimeout among them: not retried
                        run.failed.append(f"client {i} call {c}: {type(exc).__name__}: {exc}")
                        return
                    assert result.body == b"%d:%d" % (i, c) and result.price == PRICE
                    assert result.receipt.verify(BOB.public)
                    run.receipts[channel] += result.price
                    run.latencies.append(trio.current_time() - began)
                    run.attempts.append(attempt)
                    break
                else:
                    run.failed.append(f"client {i} call {c}: {last}")
        finally:
            ch = node.payer_channels[channel]
            run.client_channels[channel] = (ch.spent, ch.outstanding)


@contextlib.asynccontextmanager
async def provider(config: NodeConfig) -> AsyncIterator[tuple[MemoryLedger, Node]]:
    ledger = MemoryLedger(
        Params(ledger_id=LEDGER_ID, dev=True, claim_bond=10**18, max_deadline_horizon_ms=600_000)
    )
    for key in (BOB, MALLORY):
        await ledger.mint(key, key.account, 10 * TOKEN)
    async with open_node(key=BOB, ledger=ledger, config=config) as bob:
        bob.serve("echo", _echo, price=PRICE)
        yield ledger, bob


async def run_hostile_load(
    *,
    honest: int,
    calls: int = 3,
    hoarders: int = HOARDERS,
    max_sessions: int = 96,
    flooder: bool = True,
    concurrency: int = 50,
    idle_timeout: float = 5.0,
) -> dict[str, Any]:
    """Run the scenario; honest clients start `concurrency` at a time. Returns the
    figures (see `Run`) and the provider's channels for the checks."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 20 * (honest + hoarders) + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    config = NodeConfig(
        watcher=False, max_sessions=max_sessions, max_outbox=8, idle_timeout=idle_timeout
    )
    run = Run()
    started = time.monotonic()
    async with provider(config) as (ledger, bob):
        addr = bob.addrs[0]
        async with trio.open_nursery() as hostile:
            hostile.start_soon(_sampler, bob, run)
            for i in range(hoarders):
                hostile.start_soon(
                    _hoarder, _key(b"hoarder", i), addr, config.max_sessions_per_peer, run
                )
            if flooder:
                hostile.start_soon(_flooder, ledger, bob, addr, run)
            # The honest clients come once the attack is on: the hoarders fill the
            # provider's sessions and the flooder has begun (bounded, never timed).
            with trio.move_on_after(HOSTILE_READY):
                while hoarders and len(bob._live) < max_sessions:
                    await trio.sleep(0.05)
                if flooder:
                    await run.flooding.wait()
                run.hostile_ready = True
            limiter = trio.CapacityLimiter(concurrency)

            async def one(i: int) -> None:
                async with limiter:
                    await _honest(i, ledger, addr, calls, run)

            async with trio.open_nursery() as clients:
                for i in range(honest):
                    clients.start_soon(one, i)
            # The hostile peers go on until they were dealt with (bounded): the flooder cut
            # off, hoarders evicted; a starved machine may not have got there yet.
            with trio.move_on_after(HOSTILE_AFTER):
                while (flooder and not run.floods) or (
                    hoarders and not (run.hoarder_sessions and bob.counters.sessions_evicted)
                ):
                    await trio.sleep(0.05)
            _watch_buffers(bob, run)
            hostile.cancel_scope.cancel()
        # a channel none of whose requests reached the provider is unknown to it: (0, 0)
        stored = {
            ch: (payee.spent, payee.reserved) if (payee := bob.payee_channels.get(ch)) else (0, 0)
            for ch in run.receipts
        }
        counters = bob.counters
        summary: dict[str, Any] = {
            "honest_clients": honest,
            "honest_calls": honest * calls,
            "served": len(run.latencies),
            "within_deadline": sum(1 for t in run.latencies if t <= DEADLINE),
            "failed": run.failed[:10],
            "latency_ms": _percentiles(run.latencies),
            "attempts_max": max(run.attempts, default=0),
            "retry_causes": run.retry_causes,
            "hostile_ready": run.hostile_ready,
            "hoarder_sessions": run.hoarder_sessions,
            "hoarder_refusals": run.hoarder_refusals,
            "floods_cut_off": run.floods,
            "flood_mib": round(run.flood_bytes / (1 << 20), 1),
            "max_muxer_buffer": run.max_muxer_buffer,
            "max_reader_buffer": run.max_reader_buffer,
            "sessions_evicted": counters.sessions_evicted,
            "sessions_refused": counters.sessions_refused,
            "idle_resets": counters.idle_resets,
            "seconds": round(time.monotonic() - started, 1),
        }
        within = sum(1 for t in run.latencies if t <= DEADLINE)
        summary["deadline_share"] = within / max(1, honest * calls)
        return {
            "summary": summary,
            "receipts": dict(run.receipts),
            "clients": dict(run.client_channels),
            "lost_calls": dict(run.lost_calls),
            "stored": stored,
        }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = {q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.9, 0.99)}
    return {f"p{int(q * 100)}": round(v * 1000, 1) for q, v in pick.items()} | {
        "max": round(ordered[-1] * 1000, 1)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--honest", type=int, default=50)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--max-sessions", type=int, default=96)
    parser.add_argument(
        "--baseline", action="store_true", help="also run without the hostile peers"
    )
    args = parser.parse_args()
    runs = [("hostile", HOARDERS, True)] + ([("baseline", 0, False)] if args.baseline else [])
    for label, hoarders, flooder in runs:
        result = trio.run(
            lambda h=hoarders, f=flooder: run_hostile_load(
                honest=args.honest,
                calls=args.calls,
                max_sessions=args.max_sessions,
                hoarders=h,
                flooder=f,
            )
        )
        print(json.dumps({"run": label} | result["summary"], sort_keys=True))


if __name__ == "__main__":
    main()
