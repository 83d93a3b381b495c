"""Several OS processes hammer ONE SqliteLedger file at the same time.

Each worker process (this file run as a script) opens the ledger and performs a
deterministic, interleaved mix of operations: transfers among the workers' accounts (the
same rows written by every process), channel opens and top ups (payer P_i to payee W_i),
redeems of vouchers signed by the payer (a few signed by the wrong key), stakes and mints.
Workers start together (a "go" file) and meet halfway (each, once it has done half its
operations, waits until all have: bounded), so that their commits interleave however the
machine schedules them; they log every operation and its outcome, and exit.

Afterwards the test checks that every operation succeeded or was refused with an expected
code (never "database is locked" or any other exception); that the events table, read in
`seq` order, is exactly what a sequential replay of the successful operations gives on a
MemoryLedger (each worker's operations in its own order, interleaved as the events say),
event for event, every commit made before the halfway meeting ordered before every commit
made after it; and that the final state is the replay's state and conserves money.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, decode_frame
from p2pay.core.settlement import invariant_violations
from p2pay.ledger import MemoryLedger, SqliteLedger
from p2pay.testing import ManualClock

WORKERS = 4
OPS_PER_WORKER = 200
SETUP_FUNDS = 1_000_000
EXPECTED_REFUSALS = {ErrorCode.INSUFFICIENT_FUNDS.value, ErrorCode.INVALID_SIGNATURE.value}
TIMEOUT_S = 300.0  # a bound on a hang, generous for a loaded machine
HALF = OPS_PER_WORKER // 2  # the workers meet after this many operations each


def worker_key(i: int) -> Keypair:
    return Keypair.from_seed(bytes([0x10 + i]) * 32)


def payer_key(i: int) -> Keypair:
    return Keypair.from_seed(bytes([0x20 + i]) * 32)


# ---------------------------------------------------------------------------
# the worker (runs in a child process)


async def _worker(path: Path, i: int, log_path: Path, go: Path) -> None:
    ledger = await SqliteLedger.open(path)
    me, payer = worker_key(i), payer_key(i)
    others = [worker_key(j).account for j in range(WORKERS)]
    rng = random.Random(1_000 + i)
    channels: list[bytes] = []
    paid: dict[bytes, int] = {}
    log: list[dict[str, Any]] = []
    (log_path.parent / f"ready{i}").touch()
    for _ in range(3_000):  # wait for the go file, at most 30 s
        if go.exists():
            break
        await trio.sleep(0.01)
    for n in range(OPS_PER_WORKER):
        if n == HALF:  # meet the others halfway (a worker late to start cannot run alone)
            (log_path.parent / f"half{i}").touch()
            with trio.fail_after(TIMEOUT_S / 2):
                while not all((log_path.parent / f"half{j}").exists() for j in range(WORKERS)):
                    await trio.sleep(0.01)
        r = rng.random()
        entry: dict[str, Any]
        if r < 0.35:
            amount = rng.randint(1, 5_000) if rng.random() > 0.05 else 10**12
            entry = {"op": "transfer", "to": rng.choice(others).hex(), "amount": amount}
            call = ledger.transfer(me, bytes.fromhex(entry["to"]), amount)
        elif r < 0.45 or not channels:
            deposit = rng.randint(100, 2_000)
            entry = {"op": "open_channel", "deposit": deposit}
            call = ledger.open_channel(payer, me.account, deposit, 1_000)
        elif r < 0.55:
            cid = rng.choice(channels)
            entry = {"op": "top_up", "channel": cid.hex(), "amount": rng.randint(1, 500)}
            call = ledger.top_up(payer, cid, entry["amount"])
        elif r < 0.75:
            cid = rng.choice(channels)
            paid[cid] += rng.randint(1, 300)
            signer = payer if rng.random() > 0.1 else me  # a few are signed by the wrong key
            voucher = Request.create(
                signer,
                ledger=ledger.ledger_id,
                channel=cid,
                n=n + 1,
                paid=paid[cid],
                price=1,
                service="hammer",
                body=b"",
                deadline=0,
            )
            entry = {"op": "redeem", "voucher": voucher.to_frame().hex()}
            call = ledger.redeem(me, voucher)
        elif r < 0.85:
            entry = {"op": "stake", "amount": rng.randint(1, 1_000)}
            call = ledger.stake(me, entry["amount"], 1, 1_000)
        else:
            entry = {"op": "mint", "amount": rng.randint(1, 10_000)}
            call = ledger.mint(me, me.account, entry["amount"])
        try:
            result = await call
        except SettlementError as exc:
            entry["outcome"] = exc.code.value
        except Exception as exc:  # logged: the test fails on it
            entry["outcome"] = f"EXCEPTION {type(exc).__name__}: {exc}"
        else:
            entry["outcome"] = "ok"
            if entry["op"] == "open_channel":
                channels.append(result)
                paid[result] = 0
                entry["channel"] = result.hex()
            if entry["op"] == "redeem":
                entry["paid_now"] = result
        entry["half"] = int(n >= HALF)
        log.append(entry)
    await ledger.aclose()
    log_path.write_text(json.dumps(log))


def worker_main(argv: list[str]) -> None:
    path, i, log_path, go = Path(argv[0]), int(argv[1]), Path(argv[2]), Path(argv[3])
    trio.run(_worker, path, i, log_path, go)


# ---------------------------------------------------------------------------
# the test


async def _setup(path: Path) -> bytes:
    ledger = await SqliteLedger.create(path, dev=True)
    for i in range(WORKERS):
        for key in (worker_key(i), payer_key(i)):
            await ledger.mint(key, key.account, SETUP_FUNDS)
    ledger_id = ledger.ledger_id
    await ledger.aclose()
    return ledger_id


#: for each event kind of the workers' ops, the field naming the worker that did it
ACTOR_FIELD = {
    "Minted": "account",
    "Transferred": "from",
    "ChannelOpened": "payer",
    "ToppedUp": "payer",
    "Redeemed": "payee",
    "Staked": "account",
}


async def _replay(path: Path, logs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    sql = await SqliteLedger.open(path)
    stored = await sql.events(after=0, limit=1 << 30)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1)), "seq has gaps"
    clock = ManualClock(0)
    mem = MemoryLedger(sql.params, clock=clock)
    owner = {}
    for i in range(WORKERS):
        owner[worker_key(i).account] = i
        owner[payer_key(i).account] = i
    # successful ops that change something, per worker, in the worker's order
    pending = [
        [e for e in log if e["outcome"] == "ok" and e.get("paid_now", 1) != 0] for log in logs
    ]
    cursor = [0] * WORKERS
    setup = 2 * WORKERS
    order: list[int] = []  # the worker of each of their events, in seq order
    halves: list[int] = []  # and the half of its operations it was made in
    for event in stored:
        clock.ms = event.at
        if event.seq <= setup:  # the parent's mints
            key = next(
                k
                for i in range(WORKERS)
                for k in (worker_key(i), payer_key(i))
                if k.account == event.fields["account"]
            )
            await mem.mint(key, key.account, event.fields["amount"])
        else:
            i = owner[event.fields[ACTOR_FIELD[event.kind]]]
            order.append(i)
            assert cursor[i] < len(pending[i]), f"event {event.seq} has no op in worker {i}'s log"
            entry = pending[i][cursor[i]]
            cursor[i] += 1
            halves.append(entry["half"])
            me, payer = worker_key(i), payer_key(i)
            op = entry["op"]
            if op == "transfer":
                await mem.transfer(me, bytes.fromhex(entry["to"]), entry["amount"])
            elif op == "open_channel":
                cid = await mem.open_channel(payer, me.account, entry["deposit"], 1_000)
                assert cid.hex() == entry["channel"], "channel ids differ"
            elif op == "top_up":
                await mem.top_up(payer, bytes.fromhex(entry["channel"]), entry["amount"])
            elif op == "redeem":
                voucher = decode_frame(bytes.fromhex(entry["voucher"]))
                assert isinstance(voucher, Request)
                assert await mem.redeem(me, voucher) == entry["paid_now"]
            elif op == "stake":
                await mem.stake(me, entry["amount"], 1, 1_000)
            elif op == "mint":
                await mem.mint(me, me.account, entry["amount"])
        replayed = (await mem.events(after=event.seq - 1, limit=1))[0]
        assert replayed == event, f"event {event.seq}: stored {event} != replayed {replayed}"
    assert cursor == [len(p) for p in pending], "some successful ops left no event"
    sql_state = await sql.load_state()
    assert invariant_violations(sql_state) == []
    assert sql_state.balances == mem.state.balances
    assert sql_state.channels == mem.state.channels
    assert sql_state.stakes == mem.state.stakes
    assert (sql_state.supply, sql_state.burnt, sql_state.nonce) == (
        mem.state.supply,
        mem.state.burnt,
        mem.state.nonce,
    )
    totals = await sql.totals()
    assert totals.conserved and totals == await mem.totals()
    await sql.aclose()
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    return {"events": len(stored), "switches": switches, "halves": halves}


def test_processes_share_one_ledger(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    trio.run(_setup, path)
    go = tmp_path / "go"
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(path), str(i), str(tmp_path / f"log{i}.json"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(WORKERS)
    ]
    started = time.monotonic()
    try:
        while not all((tmp_path / f"ready{i}").exists() for i in range(WORKERS)):
            assert all(p.poll() is None for p in procs), "a worker died before starting"
            assert time.monotonic() - started < 120, "workers did not start"
            time.sleep(0.01)
        t0 = time.monotonic()
        go.touch()
        for p in procs:
            p.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - started)))
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    for i, p in enumerate(procs):
        output = p.stdout.read().decode(errors="replace") if p.stdout else ""
        assert p.returncode == 0, f"worker {i} failed:\n{output}"
    logs = [json.loads((tmp_path / f"log{i}.json").read_text()) for i in range(WORKERS)]
    outcomes: dict[str, int] = {}
    for log in logs:
        assert len(log) == OPS_PER_WORKER
        for entry in log:
            key = f"{entry['op']}:{entry['outcome']}"
            outcomes[key] = outcomes.get(key, 0) + 1
            assert entry["outcome"] == "ok" or entry["outcome"] in EXPECTED_REFUSALS, entry
    for op in ("transfer", "open_channel", "top_up", "redeem", "stake", "mint"):
        assert outcomes.get(f"{op}:ok", 0) > 0, f"no successful {op}: {outcomes}"
    assert outcomes.get("redeem:INVALID_SIGNATURE", 0) > 0
    result = trio.run(_replay, path, logs)
    # The processes' commits interleave (the halfway meeting sees to it whatever the load;
    # SQLite's lock is not fair, so no finer alternation is asked), and the ledger's event
    # order follows the order of the commits across processes: every event committed
    # before the meeting comes before every event committed after it.
    assert result["switches"] >= WORKERS, f"commits did not interleave: {result['switches']}"
    halves = result["halves"]
    assert halves == sorted(halves), "an event made after the meeting came before one made before"
    assert 0 < halves.count(1) < len(halves)
    ops = WORKERS * OPS_PER_WORKER
    print(
        f"\n{WORKERS} processes x {OPS_PER_WORKER} ops on one SQLite ledger: "
        f"{elapsed:.2f} s ({ops / elapsed:.0f} ops/s), {result['events']} events, "
        f"{result['switches']} switches between processes"
    )


if __name__ == "__main__":
    worker_main(sys.argv[1:])


class _LockedFile:
    """A connection to a ledger file that another process holds locked: every statement
    fails as SQLite's does once its busy timeout ran out."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, *args: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_busy_ledger_file_is_a_typed_error_for_reads_and_writes(tmp_path: Path) -> None:
    """A read of a ledger file another process keeps locked raised sqlite3's own error:
    not a P2payError, so it ended the loops of a node that go on after one (its watcher's
    step, attack round 17). Reads and writes now raise SettlementError OVERLOADED, nothing
    applied, and work again once the file is free."""

    async def main() -> None:
        ledger = await SqliteLedger.create(tmp_path / "busy.db", dev=True)
        key = worker_key(0)
        await ledger.mint(key, key.account, 10)
        conn = ledger._conn
        ledger._conn = _LockedFile(conn)  # type: ignore[assignment]
        calls = [
            lambda: ledger.balance(key.account),
            lambda: ledger.channel(b"\x01" * 32),
            lambda: ledger.claim(b"\x02" * 32),
            lambda: ledger.channels_of(key.account),
            lambda: ledger.claims_of(key.account),
            lambda: ledger.events(),
            lambda: ledger.totals(),
            lambda: ledger.next_nonce(key.account),
            lambda: ledger.mint(key, key.account, 5),
        ]
        for call in calls:
            try:
                await call()
            except SettlementError as exc:
                assert exc.code is ErrorCode.OVERLOADED and "locked" in str(exc), exc
            else:
                raise AssertionError("a locked file was read")
        ledger._conn = conn
        assert await ledger.balance(key.account) == 10  # nothing applied, readable again
        await ledger.mint(key, key.account, 5)
        assert await ledger.balance(key.account) == 15
        await ledger.aclose()

    trio.run(main)
