"""Many paying clients against one provider on loopback libp2p (issue 7, deliverable 4).

The provider is a ``p2pay node run`` process (home and ledger made with the CLI) offering
a service that takes 20 ms, with a small node-wide in-flight limit
(``max_in_flight_total``) and a per-stream limit of 2 (``max_in_flight``). N clients, each
its own key and channel, run in this process and each makes a fixed number of paid calls
(two at a time, as its hello permits), retrying a call refused OVERLOADED (after a growing,
jittered back-off) or lost to a transient network error. Retries are bounded in time, not in
count: a loaded machine (other processes on 2 cores) makes every step slower, and a count
of attempts ran out there (issue 16: "only 173 clients were ever served"). Checked, and
only what must hold however loaded the machine is (no throughput or timing assertion):

* every client is eventually served all its calls (each within CALL_BOUND_S, a hang guard
  far above what a loaded machine needs, not a target);
* the provider's resident memory stays under an explicit bound while it serves them;
* nothing is lost or created: per channel, the provider's stored `spent` is the sum of
  the prices on the receipts that client holds, plus at most the prices of calls that
  timed out on the client (charged, answer lost);
* the provider still serves after the load stops.

The quick test runs 30 clients; the slow one 200.
"""

from __future__ import annotations

import hashlib
import random
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hardening_support import PRICE, TOKEN, ProviderProcess, make_provider_home

from p2pay.core.errors import Overloaded, P2payError
from p2pay.core.identity import Keypair, public_from_peer_id
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.base import NetError
from p2pay.node import CallTimeout, ConnectionLost, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SERVICE_MODULE = """
import trio


async def slow(call):
    await trio.sleep(0.02)
    return bytes(call.body)
"""

MIB = 1 << 20


def client_key(i: int) -> Keypair:
    return Keypair.from_seed(hashlib.sha256(b"p2pay hardening client %d" % i).digest())


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


#: paid calls each of a client's two workers must get served
CALLS = 3
#: how long one call may take to be served, retries included, and one connect to succeed:
#: a bound on a hang, generous for a loaded 2-core machine (not a target)
CALL_BOUND_S = 300.0
#: the longest back-off between two attempts
MAX_BACKOFF_S = 1.0


def backoff(rng: random.Random, attempt: int) -> float:
    """Exponential back-off with jitter, as a client should back off from OVERLOADED."""
    return rng.uniform(0.5, 1.0) * min(MAX_BACKOFF_S, 0.05 * 2 ** min(attempt, 10))


async def _connect(node: Any, addr: str) -> None:
    """Connect, retrying transient failures (a loaded machine times handshakes out)."""
    rng = random.Random(node.account)
    with trio.fail_after(CALL_BOUND_S):
        for attempt in range(1 << 30):  # bounded by the deadline
            try:
                await node.connect(addr)
                return
            except (P2payError, NetError):
                await trio.sleep(backoff(rng, attempt))


async def _open_channel(node: Any, addr: str) -> bytes:
    """Open a channel to the provider, retrying what a loaded machine may answer before
    anything moved on the ledger (the provider's hello timed out, OVERLOADED)."""
    rng = random.Random(node.account)
    attempt = 0
    with trio.fail_after(CALL_BOUND_S):  # a bound on a hang, not a target
        while True:
            try:
                return (await node.open_channel(addr, deposit=10**12)).channel
            except (Overloaded, ConnectionLost):
                await trio.sleep(backoff(rng, attempt))
                attempt += 1


async def run_load(tmp_path: Path, clients: int) -> dict[str, Any]:
    raise_fd_limit(20 * clients + 1024)
    (tmp_path / "hardening_services.py").write_text(SERVICE_MODULE, encoding="utf-8")
    setup = make_provider_home(
        tmp_path, {"max_in_flight": 2, "max_in_flight_total": 16, "watcher": False}
    )
    provider = ProviderProcess(
        tmp_path,
        "provider",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--service",
        f"slow={PRICE}:hardening_services:slow",
        extra_path=str(tmp_path),
    )
    public = public_from_peer_id(setup["peer_id"])
    receipts: dict[bytes, int] = {}
    outcomes = {"ok": 0, "overloaded": 0, "timeouts": 0, "other": 0, "abandoned": 0}
    served: dict[bytes, int] = {}
    other: dict[str, int] = {}
    rss: list[int] = []
    latency: dict[str, list[float]] = {"ok": [], "overloaded": []}
    try:
        addr = await provider.start()
        await trio.sleep(0.5)
        baseline = provider.rss_bytes()
        ledger = await SqliteLedger.open(setup["ledger"])
        try:
            config = NodeConfig(watcher=False, default_timeout=30.0)
            done = trio.Event()
            nodes: list[Any] = []

            async def client(i: int) -> None:
                key = client_key(i)
                await ledger.mint(key, key.account, TOKEN)
                async with open_node(key=key, ledger=ledger, config=config) as node:
                    nodes.append(node)
                    await done.wait()

            async with trio.open_nursery() as clients_nursery:
                opened_at = time.monotonic()
                for i in range(clients):
                    clients_nursery.start_soon(client, i)
                with trio.fail_after(600):  # a bound on a hang, not a target
                    while len(nodes) < clients:
                        await trio.sleep(0.05)
                open_seconds = time.monotonic() - opened_at
                channels = {}
                for node in nodes:
                    channels[node.account] = await _open_channel(node, addr)
                    receipts[channels[node.account]] = 0
                    served[channels[node.account]] = 0

                async def paid_call(node: Any, body: bytes, rng: random.Random) -> None:
                    """One call served, retried until then within CALL_BOUND_S."""
                    calling = False
                    with trio.move_on_after(CALL_BOUND_S) as bound:
                        for attempt in range(1 << 30):  # bounded by the deadline
                            began = trio.current_time()
                            calling = True
                            try:
                                result = await node.call(addr, "slow", body, max_price=PRICE)
                            except Overloaded:
                                outcomes["overloaded"] += 1
                                latency["overloaded"].append(trio.current_time() - began)
                            except CallTimeout:
                                outcomes["timeouts"] += 1
                            except (P2payError, NetError) as exc:
                                outcomes["other"] += 1
                                other[type(exc).__name__] = other.get(type(exc).__name__, 0) + 1
                            else:
                                calling = False
                                assert result.receipt.verify(public) and result.price == PRICE
                                receipts[result.channel] += result.price
                                served[result.channel] += 1
                                outcomes["ok"] += 1
                                latency["ok"].append(trio.current_time() - began)
                                return
                            calling = False
                            await trio.sleep(backoff(rng, attempt))
                    if bound.cancelled_caught and calling:
                        outcomes["abandoned"] += 1  # given up mid-call: maybe charged

                async def worker(node: Any, index: int) -> None:
                    rng = random.Random(node.account + bytes([index]))
                    for _call in range(CALLS):
                        await paid_call(node, b"load", rng)

                async def sample() -> None:
                    while True:
                        rss.append(provider.rss_bytes())
                        await trio.sleep(0.2)

                connected_at = time.monotonic()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample)
                    # connect everyone first (Noise handshakes), then load
                    async with trio.open_nursery() as connecting:
                        for node in nodes:
                            connecting.start_soon(_connect, node, addr)
                    connect_seconds = time.monotonic() - connected_at
                    load_started = trio.current_time()
                    cpu_before = provider.cpu_seconds()
                    own_cpu_before = time.process_time()
                    async with trio.open_nursery() as load:  # each call bounded in time
                        for node in nodes:
                            for index in range(2):
                                load.start_soon(worker, node, index)
                    load_seconds = trio.current_time() - load_started
                    cpu = (provider.cpu_seconds() - cpu_before) / load_seconds
                    own_cpu = (time.process_time() - own_cpu_before) / load_seconds
                    # after the load: still serving
                    ok = outcomes["ok"]
                    await paid_call(nodes[0], b"after", random.Random(0))
                    assert outcomes["ok"] == ok + 1, "not served after the load"
                    outcomes["ok"] -= 1  # counted apart: `served` counts the load's calls
                    served[channels[nodes[0].account]] -= 1
                    nursery.cancel_scope.cancel()
                done.set()  # the clients close concurrently
                closed_at = time.monotonic()
            close_seconds = time.monotonic() - closed_at
        finally:
            await ledger.aclose()
        assert await provider.stop() == 0  # a clean stop: everything flushed
        store = await SqliteStore.open(setup["home"] / "store.sqlite")
        try:
            stored = {ch: (await store.payee_channel(ch)) for ch in receipts}
        finally:
            await store.aclose()
    finally:
        provider.kill()
    stderr = provider.stderr_text()
    assert "Traceback" not in stderr
    return {
        "clients": clients,
        "outcomes": outcomes,
        "other": other,
        "receipts": receipts,
        "served": served,
        "stored": stored,
        "baseline_rss": baseline,
        "peak_rss": max(rss),
        "samples": len(rss),
        "connect_seconds": connect_seconds,
        "open_seconds": open_seconds,
        "close_seconds": close_seconds,
        "latency": {k: _percentiles(v) for k, v in latency.items()},
        "provider_cpu": cpu,
        "client_cpu": own_cpu,
        "load_seconds": load_seconds,
        "rate": outcomes["ok"] / load_seconds,
        "rate_limited": stderr.count("too many refused requests"),
    }


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 for q in (0.5, 0.99)]
    return f"p50 {pick[0]:.0f} ms, p99 {pick[1]:.0f} ms"


def check(result: dict[str, Any], rss_bound: int) -> None:
    outcomes = result["outcomes"]
    # every client was served every call it made (after retries)
    starved = {ch.hex()[:8]: n for ch, n in result["served"].items() if n < 2 * CALLS}
    assert not starved, f"clients not served all their calls: {starved} ({outcomes})"
    # nothing lost or created, channel by channel: the provider's durable `spent` is what
    # the client's receipts say, plus at most the calls whose answer the client gave up on
    for channel, paid in result["receipts"].items():
        record = result["stored"][channel]
        assert record is not None, channel.hex()
        given_up = outcomes["timeouts"] + outcomes["abandoned"]
        assert paid <= record.spent <= paid + given_up * PRICE, channel.hex()
    assert sum(result["receipts"].values()) == (outcomes["ok"] + 1) * PRICE
    # memory stays bounded
    assert result["peak_rss"] - result["baseline_rss"] < rss_bound, result["peak_rss"]


def report(result: dict[str, Any]) -> str:
    served = sum(1 for n in result["served"].values() if n >= 2 * CALLS)
    return (
        f"{result['clients']} clients ({served} served): {result['outcomes']}, "
        f"{result['rate']:.0f} paid req/s over {result['load_seconds']:.1f} s, "
        f"open {result['open_seconds']:.1f} s, connect {result['connect_seconds']:.1f} s, "
        f"close {result['close_seconds']:.1f} s, CPU provider {result['provider_cpu']:.0%} "
        f"clients {result['client_cpu']:.0%}, latency {result['latency']}, provider RSS "
        f"{result['baseline_rss'] / MIB:.0f} -> peak {result['peak_rss'] / MIB:.0f} MiB"
    )


async def test_thirty_clients_overload_memory_and_payment(tmp_path: Path) -> None:
    result = await run_load(tmp_path, clients=30)
    print("\nload:", report(result))
    check(result, rss_bound=64 * MIB)


@pytest.mark.slow
async def test_two_hundred_clients(tmp_path: Path) -> None:
    result = await run_load(tmp_path, clients=200)
    print("\nload (slow):", report(result))
    check(result, rss_bound=160 * MIB)
