"""One end of the two-process benchmark (`benchmarks.two_process`), run as its own OS process:
``python -m benchmarks._two_process_peer ROLE [options]``.

Roles: ``provider`` and ``client`` (a p2pay node each: libp2p over TCP with Noise + yamux,
a `SqliteStore`, the shared `SqliteLedger` file), ``echo-server`` and ``echo-client`` (bare
py-libp2p hosts, Noise + yamux, fixed-size records on one yamux stream, one write per
record: no p2pay code).

The process talks to the orchestrator with one JSON object per line on stdout and reads one
command per line on stdin:

* every role first prints ``{"event": "ready", ...}`` (a server with its ``addr``);
* ``mark`` (servers): prints ``{"event": "mark", ...}`` with this process's CPU so far
  (`time.process_time`: every thread, SQLite's workers included; and `resource.getrusage`'s
  user and system split), so the orchestrator takes the CPU a server spent between two marks;
* ``run N C`` (clients): makes N calls with C closed-loop callers on one stream, then prints
  ``{"event": "done", ...}`` with the calls, the wall seconds and the CPU it spent on them;
  ``run-by-addr N C`` (the p2pay client): the same, naming the provider by its multiaddr in
  every `Node.call` instead of its PeerID;
* ``profile`` (servers): starts cProfile (this process's trio thread, on its CPU clock);
  ``profile-save PATH CALLS TITLE...`` stops it and writes the text profile to PATH, per call;
  ``run N C PATH`` (clients) profiles those N calls the same way;
* ``quit``, or stdin closing: the process ends.

Every wait is bounded: the whole process by ``--max-seconds``, each run by the orchestrator's
own timeout (it kills the process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ECHO_PROTOCOL = "/p2pay-bench/two-process-echo/1"


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def cpu_now() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu": time.process_time(),
        "utime": usage.ru_utime,
        "stime": usage.ru_stime,
        "thread_cpu": time.thread_time(),
    }


async def next_command() -> list[str]:
    """The next command line from stdin, split; ``["quit"]`` when stdin closes."""
    line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    words = line.split()
    return words or (["quit"] if not line else [""])


def save_profile(prof: Any, path: str, calls: int, title: str) -> None:
    from benchmarks._common import profile_text, write_profile

    text, _rows = profile_text(prof, title, per=max(calls, 1))
    write_profile(Path(path).parent, Path(path).name, text)


async def serve_marks() -> None:
    """A server's command loop: answer ``mark`` (and the profile commands) until ``quit``."""
    from benchmarks._common import new_profiler

    prof: Any = None
    while True:
        words = await next_command()
        if words[0] == "quit":
            return
        if words[0] == "mark":
            say(event="mark", **cpu_now())
        elif words[0] == "profile":
            prof = new_profiler()
            prof.enable()
            say(event="profiling")
        elif words[0] == "profile-save" and prof is not None and len(words) >= 4:
            prof.disable()
            save_profile(prof, words[1], int(words[2]), " ".join(words[3:]))
            prof = None
            say(event="saved", path=words[1])
        else:
            say(event="error", error=f"unknown command {words!r}")


async def closed_loop(fn: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> None:
    """`calls` calls of `fn` by `concurrency` closed-loop callers (each starts its next call
    as soon as its last one is answered)."""
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await fn()

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, calls)):
            nursery.start_soon(caller)


async def serve_runs(
    fn: Callable[[], Awaitable[Any]], by_addr: Callable[[], Awaitable[Any]] | None = None
) -> None:
    """A client's command loop: ``run[-by-addr] N C [PROFILE_PATH TITLE...]`` until
    ``quit``."""
    from benchmarks._common import new_profiler

    while True:
        words = await next_command()
        if words[0] == "quit":
            return
        run = {"run": fn, "run-by-addr": by_addr}.get(words[0])
        if run is None or len(words) == 4 or len(words) < 3:
            say(event="error", error=f"unknown command {words!r}")
            continue
        calls, concurrency = int(words[1]), int(words[2])
        prof = new_profiler() if len(words) > 3 else None
        before = cpu_now()
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        await closed_loop(run, calls, concurrency)
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - t0
        after = cpu_now()
        if prof is not None:
            save_profile(prof, words[3], calls, " ".join(words[4:]))
        say(
            event="done",
            calls=calls,
            concurrency=concurrency,
            wall=wall,
            **{k: after[k] - before[k] for k in after},
        )


# ---------------------------------------------------------------------------
# p2pay nodes


async def paid_node(args: argparse.Namespace) -> None:
    from benchmarks._common import MICRO
    from benchmarks._harness import ALICE, BOB, BODY, SERVICE, echo
    from p2pay.ledger.sqlite import SqliteLedger
    from p2pay.node import open_node
    from p2pay.store.sqlite import SqliteStore

    ledger = await SqliteLedger.open(args.ledger)
    store = await SqliteStore.open(args.store)
    try:
        key = BOB if args.role == "provider" else ALICE
        async with open_node(
            key=key, ledger=ledger, store=store, listen=("/ip4/127.0.0.1/tcp/0",)
        ) as node:
            if args.role == "provider":
                node.serve(SERVICE, echo, price=MICRO)
                say(event="ready", addr=node.addrs[0])
                await serve_marks()
                return
            await node.open_channel(args.peer, deposit=args.deposit)
            # calls name the provider by its PeerID, as an application holding a known peer
            # does (a multiaddr would be parsed again on every call)
            peer_id = args.peer.rsplit("/p2p/", 1)[1]

            async def call() -> None:
                await node.call(peer_id, SERVICE, BODY, max_price=MICRO, timeout=60)

            async def call_by_addr() -> None:
                await node.call(args.peer, SERVICE, BODY, max_price=MICRO, timeout=60)

            await closed_loop(call, args.warmup, args.concurrency)
            say(event="ready", warmup=args.warmup)
            await serve_runs(call, call_by_addr)
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
            await ledger.aclose()


# ---------------------------------------------------------------------------
# bare py-libp2p echo


async def echo_server(args: argparse.Namespace) -> None:
    from libp2p.custom_types import TProtocol
    from multiaddr import Multiaddr

    from benchmarks._harness import CAROL, _raw_host, echo_records

    size = args.record

    async def handler(net_stream: Any) -> None:
        with contextlib.suppress(Exception):
            await echo_records(net_stream, size, b"r" * size)  # one write per record

    host = _raw_host(CAROL)
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        host.set_stream_handler(TProtocol(ECHO_PROTOCOL), handler)
        say(event="ready", addr=str(host.get_addrs()[0]))
        await serve_marks()
        with trio.move_on_after(3):
            await host.close()


async def echo_client(args: argparse.Namespace) -> None:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    from benchmarks._harness import MALLORY, FifoClient, _count_replies, _raw_host

    size = args.record
    host = _raw_host(MALLORY)
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(Multiaddr(args.peer))
        await host.connect(info)
        net_stream = await host.new_stream(info.peer_id, [TProtocol(ECHO_PROTOCOL)])
        lock = trio.Lock()

        async def send(data: bytes) -> None:
            async with lock:  # one write per record, records never interleave
                await net_stream.write(data)

        client = FifoClient(send, b"q" * size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_count_replies, net_stream, size, client)
            await closed_loop(client.call, args.warmup, args.concurrency)
            say(event="ready", warmup=args.warmup)
            await serve_runs(client.call)
            nursery.cancel_scope.cancel()
        with trio.move_on_after(3):
            await net_stream.reset()
            await host.close()


ROLES: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "provider": paid_node,
    "client": paid_node,
    "echo-server": echo_server,
    "echo-client": echo_client,
}


async def main_async(args: argparse.Namespace) -> None:
    with trio.move_on_after(args.max_seconds) as scope:
        await ROLES[args.role](args)
    if scope.cancelled_caught:
        say(event="error", error=f"gave up after --max-seconds {args.max_seconds}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._two_process_peer")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--ledger", type=Path, help="p2pay roles: the shared SqliteLedger file")
    parser.add_argument("--store", type=Path, help="p2pay roles: this node's SqliteStore file")
    parser.add_argument("--peer", help="clients: the server's multiaddr")
    parser.add_argument("--deposit", type=int, default=10**24, help="client: channel deposit")
    parser.add_argument("--warmup", type=int, default=500, help="clients: calls before ready")
    parser.add_argument("--concurrency", type=int, default=64, help="clients: warm-up callers")
    parser.add_argument("--record", type=int, default=100, help="echo: record size in bytes")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    try:
        trio.run(main_async, args)
    except Exception as exc:  # tell the orchestrator why, then fail
        say(event="error", error=f"{type(exc).__name__}: {exc}"[-500:])
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
