"""Attack round 19 on 662bb93: a read of a damaged SQLite ledger file (a truncated copy,
a disk error, another local process sharing the file and writing over its pages) raised
sqlite3.DatabaseError ("database disk image is malformed"), raw. 662bb93 typed
sqlite3.OperationalError only (a busy file, OVERLOADED); DatabaseError is its parent, not
a P2payError, so the watcher's step (which goes on after a P2payError or OSError) let it
through and it ended BOB's node: every stream and claim answer with it, nothing served,
nothing redeemed, and the claims filed against him meanwhile went unanswered (a slash
of his whole penalty, 10**19 yocto here, for each one whose window ran out) even once the
file was restored. Now `SqliteLedger._run` raises SettlementError for any sqlite3
DatabaseError (INTERNAL for a damaged file; OVERLOADED for a busy one, as before):
nothing read or applied, the step is logged as failed and tried again, the node lives
(what it leaves: a file restored under the running node is not read again, its
connection keeps the damaged pages it cached, until the node restarts).

Nobody gains money directly; who gains is whoever wants BOB off the network (a local
process with write access to the shared dev ledger file, or plain disk damage): a crash
of the node for the price of 64 bytes written per page.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest
from node_support import wait_until
from raw_payer import BOB, CONFIG, MALLORY, PRICE, STAKE, echo

from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import open_node


def _scribble(path: Path) -> None:
    """Another local process: checkpoints the WAL into the file, then writes 64 random
    bytes into each page after the first."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    size = path.stat().st_size
    with path.open("r+b") as f:
        for offset in range(4096, size, 4096):
            f.seek(offset + 8)
            f.write(os.urandom(64))


async def test_a_damaged_ledger_file_does_not_end_the_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pay.watcher")
    path = tmp_path / "ledger.sqlite"
    ledger = await SqliteLedger.create(
        path, dev=True, min_challenge_ms=50, min_claim_window_ms=50, claim_bond=10**18
    )
    try:
        for key in (MALLORY, BOB):
            await ledger.mint(key, key.account, 10**25)
        channels = [
            await ledger.open_channel(MALLORY, BOB.public, 10**6, 60_000) for _ in range(100)
        ]
        async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=CONFIG) as bob:
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=10**19, claim_window_ms=8_000)
            watcher = bob.watcher
            assert watcher is not None
            await wait_until(lambda: watcher.steps >= 2, timeout=20)
            _scribble(path)
            watcher.poke()

            def failed() -> int:
                return sum("watcher step failed" in r.getMessage() for r in caplog.records)

            # the node goes on: its watcher keeps stepping, each step fails and is logged
            await wait_until(lambda: failed() >= 3, timeout=20)
            with pytest.raises(SettlementError) as raised:  # typed, nothing read
                await ledger.channel(channels[50])
            assert raised.value.code is ErrorCode.INTERNAL, raised.value
    finally:
        await ledger.aclose()
