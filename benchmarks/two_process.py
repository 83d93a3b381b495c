"""10. Paid calls between two OS processes / a bare py-libp2p echo between two (issue 18).

Issue 18's setting: two separate OS processes on this machine, over libp2p (TCP, Noise,
yamux), both p2pay nodes durable (`SqliteStore` each) and sharing one `SqliteLedger` file;
the client makes N paid `Node.call`s (provider serving "echo" at 1 micro-token, default
`NodeConfig`) with 64 closed-loop callers on one channel. In the same run, between two more
OS processes, a bare py-libp2p echo (Noise + yamux, no p2pay code): 100-byte records on one
yamux stream, each answered by one write, 64 in flight. Each process measures its own CPU
(`time.process_time`, every thread, plus `resource.getrusage`'s user/system split) and
reports it on stdout (`benchmarks._two_process_peer`); the client times its N calls.

Each paid round is measured twice, the client naming the provider in every `Node.call` by
its PeerID (the result) and by its multiaddr (``by_addr_*`` figures: the multiaddr is parsed
again on every call). Rounds alternate (paid, by_addr, echo, echo, by_addr, paid, ...); all
four processes live for the whole run, so only one pair works at a time. Two results:

* ``two_process``: median over rounds of (paid calls/s) / (echo calls/s), target >= 2.0;
* ``two_process_cpu``: median over paid rounds of (payer CPU per call) / (payee CPU per
  call), target <= 1.25.

With a profile folder, one more round of each pair runs under cProfile in both of its
processes (each process's trio thread, on its CPU clock: where, not how much), written as
``two_process.{paid,paid_by_addr,echo}.{client,server}.txt``.

Every child process is killed (and reaped) on the way out, whatever happened; every wait on
a child is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import trio

from benchmarks._common import TOKEN, Result, load_average, median, spread

NAME = "two_process"
TITLE = "paid calls/s, two OS processes, durable / bare py-libp2p echo, two processes"
CPU_NAME = "two_process_cpu"
CPU_TITLE = "payer CPU per paid call / payee CPU per paid call, two OS processes, durable"
TARGET = 2.0
CPU_TARGET = 1.25

ROOT = Path(__file__).resolve().parent.parent
RECORD = 100  # bytes of each echo record, both ways (issue 18)

SIZE: dict[str, dict[str, int]] = {
    "smoke": {"calls": 200, "rounds": 1, "concurrency": 64, "warmup": 64},
    "quick": {"calls": 1_000, "rounds": 1, "concurrency": 64, "warmup": 200},
    "full": {"calls": 5_000, "rounds": 3, "concurrency": 64, "warmup": 1_000},
}

START_TIMEOUT = 120.0  # seconds for a child to say "ready" (a loaded machine is slow)
MARK_TIMEOUT = 30.0


class ChildFailed(RuntimeError):
    pass


class Child:
    """One child process and a thread that turns its stdout into JSON events."""

    def __init__(self, role: str, args: list[str], folder: Path, env: dict[str, str]) -> None:
        self.role = role
        self._stderr_path = folder / f"{role}.stderr"
        self._stderr: IO[bytes] = self._stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._two_process_peer", role, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                self._events.put({"event": "error", "error": f"bad line {line[:200]!r}"})
        self._events.put(None)  # EOF

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise self._failed(f"cannot write to it ({exc})") from None

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be `event`, within `timeout` seconds."""
        try:
            got = self._events.get(timeout=timeout)
        except queue.Empty:
            raise self._failed(f"no {event!r} within {timeout:.0f} s") from None
        if got is None:
            raise self._failed(f"exited before {event!r}")
        if got.get("event") != event:
            raise self._failed(f"said {got} instead of {event!r}")
        return got

    def _failed(self, why: str) -> ChildFailed:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=0.5)
        self._stderr.flush()
        tail = self._stderr_path.read_text(errors="replace")[-600:]
        return ChildFailed(f"{self.role} (pid {self.proc.pid}): {why}; stderr: {tail}")

    def kill(self) -> None:
        """End the process (a polite quit first, then SIGKILL) and reap it; bounded."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()
        self._stderr.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put started children in; every one is killed and reaped on exit."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.kill()


async def _make_ledger(path: Path, payer_funds: int) -> None:
    from benchmarks._harness import ALICE
    from p2pay.ledger.sqlite import SqliteLedger

    ledger = await SqliteLedger.create(path, dev=True)
    try:
        await ledger.mint(ALICE, ALICE.account, payer_funds)
    finally:
        await ledger.aclose()


def _round(
    server: Child, client: Child, calls: int, concurrency: int, command: str = "run"
) -> dict[str, Any]:
    """One measured phase: mark the server, N calls by the client, mark the server."""
    load0 = load_average()[0]
    server.send("mark")
    first = server.expect("mark", MARK_TIMEOUT)
    client.send(f"{command} {calls} {concurrency}")
    done = client.expect("done", 60.0 + calls / 20.0)  # 20 calls/s would be a broken run
    server.send("mark")
    last = server.expect("mark", MARK_TIMEOUT)
    n = done["calls"]
    return {
        "calls": n,
        "wall_s": done["wall"],
        "calls_per_s": n / done["wall"],
        "client_cpu_us": done["cpu"] / n * 1e6,
        "client_user_sys_us": [done["utime"] / n * 1e6, done["stime"] / n * 1e6],
        "client_trio_thread_cpu_us": done["thread_cpu"] / n * 1e6,
        "server_cpu_us": (last["cpu"] - first["cpu"]) / n * 1e6,
        "server_user_sys_us": [
            (last["utime"] - first["utime"]) / n * 1e6,
            (last["stime"] - first["stime"]) / n * 1e6,
        ],
        "server_trio_thread_cpu_us": (last["thread_cpu"] - first["thread_cpu"]) / n * 1e6,
        "loadavg": [load0, load_average()[0]],
    }


def _profile(
    server: Child,
    client: Child,
    label: str,
    calls: int,
    concurrency: int,
    folder: Path,
    command: str = "run",
) -> dict[str, str]:
    """One more round with cProfile on in both processes; returns the written files."""
    paths = {
        "client": str(folder / f"{NAME}.{label}.client.txt"),
        "server": str(folder / f"{NAME}.{label}.server.txt"),
    }
    what = f"{NAME}: {label}, {calls:,} calls, {concurrency} callers, two processes"
    server.send("profile")
    server.expect("profiling", MARK_TIMEOUT)
    client.send(f"{command} {calls} {concurrency} {paths['client']} {what}: the client")
    client.expect("done", 60.0 + calls / 5.0)
    server.send(f"profile-save {paths['server']} {calls} {what}: the server")
    server.expect("saved", MARK_TIMEOUT)
    return paths


def measure(size: str, profile_dir: Path | None = None) -> dict[str, Any]:
    """Start the four processes, run the alternating rounds, and return the raw rounds."""
    p = SIZE[size]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH", "")) if x)
    calls_needed = p["warmup"] + p["calls"] * (2 * p["rounds"] + 2)
    from benchmarks._common import MICRO

    deposit = max(TOKEN, 2 * calls_needed * MICRO)
    paid: list[dict[str, Any]] = []
    by_addr: list[dict[str, Any]] = []
    echo: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="p2pay-two-process-") as tmp, children() as kids:
        folder = Path(tmp)
        ledger = folder / "ledger.sqlite"
        trio.run(_make_ledger, ledger, 2 * deposit)
        bound = ["--max-seconds", str(START_TIMEOUT + 3 * p["rounds"] * (60 + p["calls"] / 20))]
        provider = Child(
            "provider",
            ["--ledger", str(ledger), "--store", str(folder / "provider.sqlite"), *bound],
            folder,
            env,
        )
        kids.append(provider)
        echo_server = Child("echo-server", ["--record", str(RECORD), *bound], folder, env)
        kids.append(echo_server)
        provider_addr = provider.expect("ready", START_TIMEOUT)["addr"]
        echo_addr = echo_server.expect("ready", START_TIMEOUT)["addr"]
        common = ["--warmup", str(p["warmup"]), "--concurrency", str(p["concurrency"]), *bound]
        client = Child(
            "client",
            [
                "--ledger",
                str(ledger),
                "--store",
                str(folder / "client.sqlite"),
                "--peer",
                provider_addr,
                "--deposit",
                str(deposit),
                *common,
            ],
            folder,
            env,
        )
        kids.append(client)
        echo_client = Child(
            "echo-client", ["--peer", echo_addr, "--record", str(RECORD), *common], folder, env
        )
        kids.append(echo_client)
        client.expect("ready", START_TIMEOUT + p["warmup"] / 20)
        echo_client.expect("ready", START_TIMEOUT + p["warmup"] / 20)
        pids = [k.proc.pid for k in kids]
        for i in range(p["rounds"]):
            order = ("paid", "by_addr", "echo")
            for which in order if i % 2 == 0 else reversed(order):
                if which == "paid":
                    paid.append(_round(provider, client, p["calls"], p["concurrency"]))
                elif which == "by_addr":
                    by_addr.append(
                        _round(provider, client, p["calls"], p["concurrency"], "run-by-addr")
                    )
                else:
                    echo.append(_round(echo_server, echo_client, p["calls"], p["concurrency"]))
        profiles: dict[str, str] = {}
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            for label, server, client_, command in (
                ("paid", provider, client, "run"),
                ("paid_by_addr", provider, client, "run-by-addr"),
                ("echo", echo_server, echo_client, "run"),
            ):
                for end, path in _profile(
                    server, client_, label, p["calls"], p["concurrency"], profile_dir, command
                ).items():
                    profiles[f"profile_{label}_{end}"] = path
    return {
        "paid": paid,
        "by_addr": by_addr,
        "echo": echo,
        "pids": pids,
        "params": p,
        "profiles": profiles,
    }


def _r(x: float) -> float:
    return round(x, 3 if abs(x) < 10 else 1)


def results(raw: dict[str, Any]) -> list[Result]:
    paid, by_addr, echo, p = raw["paid"], raw["by_addr"], raw["echo"], raw["params"]
    rate_ratios = [a["calls_per_s"] / b["calls_per_s"] for a, b in zip(paid, echo, strict=True)]
    cpu_ratios = [r["client_cpu_us"] / r["server_cpu_us"] for r in paid]
    echo_cpu_ratios = [r["client_cpu_us"] / r["server_cpu_us"] for r in echo]

    def col(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [_r(r[key]) for r in rows]

    figures: dict[str, Any] = {
        "paid_calls_per_s": spread(col(paid, "calls_per_s")),
        "echo_calls_per_s": spread(col(echo, "calls_per_s")),
        "payer_cpu_us_per_call": spread(col(paid, "client_cpu_us")),
        "payee_cpu_us_per_call": spread(col(paid, "server_cpu_us")),
        "echo_client_cpu_us_per_call": spread(col(echo, "client_cpu_us")),
        "echo_server_cpu_us_per_call": spread(col(echo, "server_cpu_us")),
        "by_addr_calls_per_s": spread(col(by_addr, "calls_per_s")),
        "by_addr_payer_cpu_us_per_call": spread(col(by_addr, "client_cpu_us")),
        "by_addr_payee_cpu_us_per_call": spread(col(by_addr, "server_cpu_us")),
        "rate_ratio_per_round": [round(x, 3) for x in rate_ratios],
        "by_addr_rate_ratio_per_round": [
            round(a["calls_per_s"] / b["calls_per_s"], 3)
            for a, b in zip(by_addr, echo, strict=True)
        ],
        "by_addr_payer_payee_cpu_ratio_per_round": [
            round(r["client_cpu_us"] / r["server_cpu_us"], 3) for r in by_addr
        ],
        "payer_payee_cpu_ratio_per_round": [round(x, 3) for x in cpu_ratios],
        "echo_client_server_cpu_ratio_per_round": [round(x, 3) for x in echo_cpu_ratios],
        "calls_per_round": p["calls"],
        "rounds": p["rounds"],
        "concurrency": p["concurrency"],
        "warmup_calls": p["warmup"],
        "echo_record_bytes": RECORD,
        "paid_rounds": [{k: _rounded(v) for k, v in r.items()} for r in paid],
        "echo_rounds": [{k: _rounded(v) for k, v in r.items()} for r in echo],
        "by_addr_rounds": [{k: _rounded(v) for k, v in r.items()} for r in by_addr],
        "child_pids": raw["pids"],
        **raw.get("profiles", {}),
    }
    notes = [
        "four OS processes (provider, client, echo server, echo client); each reports its own "
        "CPU (process_time: every thread, SQLite's workers included); pairs alternate, one "
        "working at a time",
        f"paid {median([r['calls_per_s'] for r in paid]):,.0f} calls/s, payer "
        f"{median([r['client_cpu_us'] for r in paid]):,.0f} us and payee "
        f"{median([r['server_cpu_us'] for r in paid]):,.0f} us CPU per call; echo "
        f"{median([r['calls_per_s'] for r in echo]):,.0f} calls/s, client "
        f"{median([r['client_cpu_us'] for r in echo]):,.0f} us and server "
        f"{median([r['server_cpu_us'] for r in echo]):,.0f} us (medians over rounds)",
        f"calls naming the provider by multiaddr: {median(x['calls_per_s'] for x in by_addr):,.0f}"
        f" calls/s, payer {median(x['client_cpu_us'] for x in by_addr):,.0f} us and payee "
        f"{median(x['server_cpu_us'] for x in by_addr):,.0f} us CPU per call (ratios "
        f"{median(figures['by_addr_rate_ratio_per_round']):.3f}"
        f" and {median(x['client_cpu_us'] / x['server_cpu_us'] for x in by_addr):.3f})",
    ]
    return [
        Result(
            name=NAME,
            title=TITLE,
            target_op=">=",
            target=TARGET,
            ratio=median(rate_ratios),
            ratio_desc="median over rounds of (paid calls/s) / (echo calls/s), same run",
            figures=figures,
            notes=notes,
        ),
        Result(
            name=CPU_NAME,
            title=CPU_TITLE,
            target_op="<=",
            target=CPU_TARGET,
            ratio=median(cpu_ratios),
            ratio_desc="median over paid rounds of (client CPU per call) / (provider CPU per "
            "call), each measured in its own process",
            figures={
                "payer_cpu_us_per_call": figures["payer_cpu_us_per_call"],
                "payee_cpu_us_per_call": figures["payee_cpu_us_per_call"],
                "payer_payee_cpu_ratio_per_round": figures["payer_payee_cpu_ratio_per_round"],
                "echo_client_server_cpu_ratio_per_round": figures[
                    "echo_client_server_cpu_ratio_per_round"
                ],
                "payer_trio_thread_cpu_us_per_call": spread(col(paid, "client_trio_thread_cpu_us")),
                "payee_trio_thread_cpu_us_per_call": spread(col(paid, "server_trio_thread_cpu_us")),
            },
            notes=notes[1:],
        ),
    ]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return _r(value)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def run(size: str, profile_dir: Path | None) -> list[Result]:
    return results(measure(size, profile_dir))
