"""SIGKILL a provider under paid load, again and again: nothing is lost or made up
(issue 7, deliverable 3; specs/protocol.md 13.3, 14.2; INV-1, INV-9, INV-10, INV-11).

The provider is a real OS process, ``python -m p2pay --home H node run --service
echo=1000``, on a home and a dev SQLite ledger made with the CLI. The client is a node in
this process on the same ledger file, with a few workers calling with short timeouts and
counting receipts. At random moments the provider is killed with SIGKILL and restarted
on the same home (a new port: the client reconnects by itself on its next call).

At the end, from the provider's own store and from the ledger after a payee close:

* what the provider can redeem (its store's `spent`, and what the close paid it) is at
  least the sum of the prices on every receipt the client got;
* the client was charged for nothing it got no receipt for, beyond the requests that
  were in flight at a kill or timed out: ``spent - receipts <= price * (in flight at
  the kills + timeouts)``;
* no charge is fixed twice (every receipt's `spent` is its own), and `spent` only grows
  with `n`, across every restart, between requests never in flight together (handlers of
  requests admitted together may finish in any order); every receipt is the provider's
  signature; the ledger's totals are conserved.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hardening_support import ALICE, PRICE, TOKEN, ProviderProcess, cli, make_provider_home

from p2pay.core.errors import P2payError
from p2pay.core.identity import public_from_peer_id
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.base import NetError
from p2pay.node import CallTimeout, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

WORKERS = 4
CALL_TIMEOUT = 2.0


class Load:
    """The client's workers and what they saw."""

    def __init__(self, alice: Any, peer_id: str) -> None:
        self.alice = alice
        self.peer_id = peer_id
        self.addr = ""
        self.in_flight = 0
        self.receipts: list[tuple[int, int, int]] = []  # (n, price, spent)
        self.timeouts = 0
        self.failures: dict[str, int] = {}
        self.in_flight_at_kills: list[int] = []
        self.running = True
        self.public = public_from_peer_id(peer_id)

    async def worker(self, index: int) -> None:
        body = b"w%d" % index
        while self.running:
            if not self.addr:
                await trio.sleep(0.02)
                continue
            self.in_flight += 1
            try:
                result = await self.alice.call(
                    self.addr, "echo", body, max_price=PRICE, timeout=CALL_TIMEOUT
                )
            except CallTimeout:
                self.timeouts += 1
            except (P2payError, NetError) as exc:  # ConnectionLost, ConnectError, ...
                name = type(exc).__name__
                self.failures[name] = self.failures.get(name, 0) + 1
                await trio.sleep(0.05)
            else:
                assert result.body == body and result.price == PRICE
                assert result.receipt.verify(self.public)
                self.receipts.append((result.n, result.price, result.spent))
            finally:
                self.in_flight -= 1


async def run_crashes(tmp_path: Path, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    setup = make_provider_home(tmp_path)
    provider = ProviderProcess(
        tmp_path, "provider", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}"
    )
    deposit = 10**9
    started = time.monotonic()
    try:
        ledger = await SqliteLedger.open(setup["ledger"])
        try:
            await ledger.mint(ALICE, ALICE.account, 10 * TOKEN)
            config = NodeConfig(watcher=False, default_timeout=CALL_TIMEOUT)
            async with open_node(key=ALICE, ledger=ledger, config=config) as alice:
                load = Load(alice, setup["peer_id"])
                load.addr = await provider.start()
                info = await alice.open_channel(load.addr, deposit=deposit)
                async with trio.open_nursery() as nursery:
                    for i in range(WORKERS):
                        nursery.start_soon(load.worker, i)
                    for _ in range(kills):
                        seen = len(load.receipts)
                        with trio.fail_after(60):  # the load flows again after a restart
                            while len(load.receipts) < seen + 1:
                                await trio.sleep(0.01)
                        await trio.sleep(rng.uniform(0.0, 0.4))
                        load.in_flight_at_kills.append(load.in_flight)
                        provider.kill()
                        load.addr = await provider.start()  # same home, a new port
                    seen = len(load.receipts)
                    with trio.fail_after(60):
                        while len(load.receipts) < seen + 5:
                            await trio.sleep(0.01)
                    load.in_flight_at_kills.append(load.in_flight)
                    provider.kill()  # the last kill: no clean shutdown at all
                    load.running = False
                    load.addr = ""
                payer = alice.payer_channels[info.channel]
                payer_spent, payer_paid = payer.spent, payer.paid
        finally:
            await ledger.aclose()

        # what the provider kept, read from its store after the last SIGKILL
        store = await SqliteStore.open(setup["home"] / "store.sqlite")
        try:
            record = await store.payee_channel(info.channel)
        finally:
            await store.aclose()
        assert record is not None
        # a payee close from the same home redeems it on the ledger
        ledger = await SqliteLedger.open(setup["ledger"])
        try:
            before = await ledger.balance(setup["account"])
            redeemed_before = (await ledger.channel(info.channel)).redeemed
            cli("--home", "provider", "channel", "close", info.channel.hex(), cwd=tmp_path)
            closed = await ledger.channel(info.channel)
            paid_out = await ledger.balance(setup["account"]) - before
            conserved = (await ledger.totals()).conserved
        finally:
            await ledger.aclose()
    finally:
        provider.kill()
    assert "Traceback" not in provider.stderr_text()
    return {
        "kills": len(load.in_flight_at_kills),
        "receipts": load.receipts,
        "timeouts": load.timeouts,
        "failures": load.failures,
        "in_flight_at_kills": load.in_flight_at_kills,
        "store_spent": record.spent,
        "store_paid_max": record.paid_max,
        "payer_spent": payer_spent,
        "payer_paid": payer_paid,
        "deposit": deposit,
        "closed_state": str(closed.state),
        "closed_redeemed": closed.redeemed,
        "redeemed_before": redeemed_before,
        "paid_out": paid_out,
        "conserved": conserved,
        "seconds": time.monotonic() - started,
        "start_seconds": provider.start_seconds,
    }


def check(result: dict[str, Any]) -> None:
    receipts = result["receipts"]
    receipted = sum(price for _, price, _ in receipts)
    spent = result["store_spent"]
    # the provider can redeem every receipt the client holds ...
    assert spent >= receipted > 0
    assert result["closed_redeemed"] == spent  # ... and the close paid exactly that
    assert result["paid_out"] == spent - result["redeemed_before"]
    assert result["closed_state"] == "closed"
    # ... and charged nothing beyond the requests a kill or a timeout left unanswered
    unanswered = sum(result["in_flight_at_kills"]) + result["timeouts"]
    assert spent - receipted <= PRICE * unanswered, result
    assert result["payer_spent"] >= receipted  # late receipts of abandoned calls count too
    assert spent >= result["payer_spent"]  # every receipt's spent was durable first
    # INV-1 and INV-11: never beyond what the client signed, never beyond the deposit
    assert spent <= result["store_paid_max"] <= result["payer_paid"] <= result["deposit"]
    # INV-9 across restarts: no charge fixed twice, and spent only grows with n between
    # requests never in flight together (at most WORKERS calls are, so n WORKERS apart)
    spents = [spent for _, _, spent in receipts]
    assert len(set(spents)) == len(spents)
    ordered = sorted(receipts)
    assert len({n for n, _, _ in ordered}) == len(ordered)
    assert all(a[2] < b[2] for a, b in itertools.combinations(ordered, 2) if b[0] - a[0] >= WORKERS)
    assert result["conserved"]


def report(result: dict[str, Any]) -> str:
    starts = result["start_seconds"]
    unreceipted = result["store_spent"] - sum(p for _, p, _ in result["receipts"])
    return (
        f"kills={result['kills']} receipts={len(result['receipts'])} "
        f"timeouts={result['timeouts']} failures={result['failures']} "
        f"in-flight at kills={sum(result['in_flight_at_kills'])} "
        f"charged without receipt={unreceipted // PRICE} "
        f"restart {min(starts):.2f}-{max(starts):.2f} s, total {result['seconds']:.1f} s"
    )


async def test_sigkill_provider_under_load_five_times(tmp_path: Path) -> None:
    result = await run_crashes(tmp_path, kills=5, seed=5)
    print("\ncrash:", report(result))
    assert result["kills"] == 6  # five during the load, and the final one
    check(result)


@pytest.mark.slow
async def test_sigkill_provider_under_load_fifty_times(tmp_path: Path) -> None:
    result = await run_crashes(tmp_path, kills=50, seed=50)
    print("\ncrash (slow):", report(result))
    assert result["kills"] == 51
    check(result)
