"""SIGKILL a process that is writing to a SqliteStore: nothing it acknowledged is lost.

A child process opens the store and runs `WRITERS` tasks; task i increments the `spent`
of its own payee channel by 1 per write and, after each acknowledged write, prints
``"<i> <spent>"`` (flushed) to a file. The test kills the child with SIGKILL at a random
moment, reopens the store and checks, for every channel, ``acked <= stored <= acked + 1``
(nothing acknowledged was lost; at most the one write in flight was committed without
its acknowledgement being printed), then lets the next child carry on from there.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from p2pay.store import SqliteStore
from p2pay.store.conformance import channel_id

REPO = Path(__file__).resolve().parents[2]
WRITERS = 4
DEPOSIT = 10**30

CHILD = textwrap.dedent(
    f"""
    import dataclasses, sys, trio
    from p2pay.store import Batch, SqliteStore
    from p2pay.store.conformance import payee_record

    async def main(path):
        store = await SqliteStore.open(path)
        out = sys.stdout

        async def writer(i):
            record = await store.payee_channel(payee_record(i).channel)
            if record is None:
                record = payee_record(i, deposit={DEPOSIT}, paid_max={DEPOSIT}, best_voucher=b"v")
            while True:
                record = dataclasses.replace(record, spent=record.spent + 1)
                await store.write(Batch(payee=[record]))
                out.write(f"{{i}} {{record.spent}}\\n")
                out.flush()

        out.write("ready\\n")
        out.flush()
        async with trio.open_nursery() as nursery:
            for i in range({WRITERS}):
                nursery.start_soon(writer, i)

    trio.run(main, sys.argv[1])
    """
)


def _acknowledged(text: str) -> dict[int, int]:
    acked: dict[int, int] = {}
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n") or line.startswith("ready"):
            continue  # a line cut by the kill was never acknowledged to anyone
        i, spent = map(int, line.split())
        assert spent > acked.get(i, -1), "each writer acknowledges increasing values"
        acked[i] = spent
    return acked


async def _run_and_kill(path: Path, out: Path, rng: random.Random) -> dict[int, int]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    with out.open("wb") as stdout:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
        )
    assert child.stderr is not None
    try:
        with trio.fail_after(30):
            while not out.read_bytes().startswith(b"ready\n"):
                if child.poll() is not None:
                    raise AssertionError(f"child died: {child.stderr.read().decode()[-2000:]}")
                await trio.sleep(0.01)
        if rng.random() < 0.2:
            # Sometimes kill early: around the first writes after the store was opened.
            await trio.sleep(rng.uniform(0, 0.02))
        else:
            # Usually once it is acknowledging, at a random moment of its write loop.
            with trio.fail_after(30):
                while len(out.read_bytes()) <= len(b"ready\n"):
                    await trio.sleep(0.005)
            await trio.sleep(rng.uniform(0, 0.3))
        assert child.poll() is None, f"child stopped on its own: {child.stderr.read().decode()}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return _acknowledged(out.read_text())


async def _crash_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "node.sqlite"
    previous: dict[int, int] = {}
    acked_rounds = 0
    for round_ in range(rounds):
        acked = await _run_and_kill(path, tmp_path / f"out-{round_}.txt", rng)
        where = f"seed={seed} round={round_}"
        acked_rounds += bool(acked)
        store = await SqliteStore.open(path)  # opens cleanly after a SIGKILL
        try:
            for i in range(WRITERS):
                record = await store.payee_channel(channel_id(i))
                stored = record.spent if record is not None else 0
                floor = acked.get(i, previous.get(i, 0))
                assert floor <= stored <= floor + 1, (
                    f"{where}: channel {i} holds spent={stored}, last acknowledged {floor}"
                )
                previous[i] = stored
        finally:
            await store.aclose()
        check = sqlite3.connect(path)
        try:
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            check.close()
    assert acked_rounds >= rounds // 2, f"seed={seed}: too few rounds acknowledged anything"


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")


async def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = time.time_ns() % 1_000_000
    await _crash_rounds(tmp_path, rounds=5, seed=seed)


@pytest.mark.slow
async def test_sigkill_loses_nothing_acknowledged_many_times(tmp_path: Path) -> None:
    seed = time.time_ns() % 1_000_000
    await _crash_rounds(tmp_path, rounds=50, seed=seed)
