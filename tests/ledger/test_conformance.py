"""Ledger conformance (p2pay.testing) on every backend, plus SQLite-specific behaviour."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

import p2pay.ledger.sqlite as sqlite_backend
from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.settlement import Params, touches
from p2pay.ledger import LedgerFileError, MemoryLedger, SqliteLedger
from p2pay.ledger.memory import wall_clock_ms
from p2pay.ledger.sqlite import LedgerVersionError
from p2pay.testing import ALICE, BOB, CAROL, TOKEN, ManualClock, ledger_conformance_cases

pytestmark = pytest.mark.trio

CASES = ledger_conformance_cases()


@pytest.mark.parametrize(("name", "case"), CASES, ids=[name for name, _ in CASES])
async def test_ledger_conformance(ledger_factory: Any, name: str, case: Any) -> None:
    await case(ledger_factory)
    assert ledger_factory.made, "the case made no ledger"
    for ledger in ledger_factory.made:
        # SQLite loads what touches()/touches_loaded() name; apply needed nothing else
        assert getattr(ledger, "lazy_loads", 0) == 0, f"{name}: apply read unannounced entities"


async def test_run_ledger_conformance_reports_the_failing_case() -> None:
    """The suite fails a backend that breaks a rule, and names the case."""
    from p2pay.testing import LedgerConformanceError, run_ledger_conformance

    class Leaky(MemoryLedger):
        async def withdraw(self, key: Any, amount: int) -> None:  # forgets to lower supply
            self.state.balances[key.account] = self.state.balances.get(key.account, 0) - amount
            self.state.supply += 0

    async def factory(clock: Any, *, dev: bool = True) -> MemoryLedger:
        return Leaky(clock=clock, dev=dev)

    with pytest.raises(LedgerConformanceError, match="'withdraw' failed"):
        await run_ledger_conformance(factory)


async def test_memory_ledger_defaults() -> None:
    ledger = MemoryLedger()
    assert ledger.ledger_id.startswith(b"p2pay:memory:") and len(ledger.ledger_id) == 29
    assert MemoryLedger().ledger_id != ledger.ledger_id
    assert ledger.params.dev is True
    assert abs(await ledger.now() - wall_clock_ms()) < 60_000  # default clock: wall time
    with pytest.raises(Exception, match="differs"):
        MemoryLedger(Params(ledger_id=b"a"), ledger_id=b"b")
    await ledger.aclose()
    with pytest.raises(Exception, match="closed"):
        await ledger.mint(ALICE, ALICE.account, 1)


# ---------------------------------------------------------------------------
# SQLite: files, persistence, concurrency, atomicity


async def test_sqlite_create_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    clock = ManualClock()
    ledger = await SqliteLedger.create(path, dev=True, clock=clock, claim_bond=7)
    lid = ledger.ledger_id
    assert lid.startswith(b"p2pay:sqlite:") and len(lid) == 29
    assert ledger.params == Params(ledger_id=lid, dev=True, claim_bond=7)
    await ledger.mint(ALICE, ALICE.account, 2**128 - 1)
    await ledger.mint(ALICE, BOB.account, 2**128 - 1)  # supply now above 2**128
    cid = await ledger.open_channel(ALICE, CAROL.account, 5, 1_000)
    await ledger.stake(BOB, 10, 3, 1_000)
    events = await ledger.events()
    totals = await ledger.totals()
    await ledger.aclose()
    with pytest.raises(Exception, match="closed"):
        await ledger.balance(ALICE.account)

    again = await SqliteLedger.open(path, clock=clock)
    assert again.ledger_id == lid and again.params == ledger.params
    assert await again.events() == events
    assert await again.totals() == totals and totals.supply == 2 * (2**128 - 1)
    assert await again.balance(ALICE.account) == 2**128 - 1 - 5
    assert (await again.channel(cid)) is not None
    stake = await again.stake_of(BOB.account)
    assert stake is not None and (stake.amount, stake.penalty) == (10, 3)
    # amounts are 16-byte big-endian blobs
    raw = sqlite3.connect(path).execute("SELECT amount FROM balances").fetchall()
    assert all(isinstance(r[0], bytes) and len(r[0]) == 16 for r in raw)
    # the clock is injected: events carry it
    clock.advance(5)
    await again.transfer(ALICE, BOB.account, 1)
    assert (await again.events())[-1].at == clock.ms
    await again.aclose()


async def test_sqlite_file_settings(tmp_path: Path) -> None:
    ledger = await SqliteLedger.create(tmp_path / "l.db", dev=True)
    conn = ledger._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    await ledger.aclose()
    other = sqlite3.connect(tmp_path / "l.db")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent


async def test_sqlite_refuses_files_that_are_not_ledgers(tmp_path: Path) -> None:
    existing = tmp_path / "exists.db"
    existing.write_bytes(b"")
    with pytest.raises(FileExistsError):
        await SqliteLedger.create(existing)
    assert existing.read_bytes() == b""  # untouched
    with pytest.raises(FileNotFoundError):
        await SqliteLedger.open(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, this is not a database" * 100)
    with pytest.raises(LedgerFileError, match="not a p2pay ledger"):
        await SqliteLedger.open(junk)
    with pytest.raises(LedgerFileError, match="not a p2pay ledger"):
        await SqliteLedger.open(existing)  # empty file
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT, value BLOB)")
    conn.execute("INSERT INTO meta VALUES ('format', x'00')")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerFileError, match="not a p2pay ledger"):
        await SqliteLedger.open(other)
    future = tmp_path / "future.db"
    await (await SqliteLedger.create(future)).aclose()
    conn = sqlite3.connect(future)
    conn.execute("UPDATE meta SET value = x'04' WHERE key = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerVersionError, match="unknown version") as info:
        await SqliteLedger.open(future)
    assert info.value.version == 4
    with pytest.raises(Exception, match="claim_bond"):
        await SqliteLedger.create(tmp_path / "bad.db", claim_bond=-1)
    with pytest.raises(Exception, match="bad ledger parameters"):
        await SqliteLedger.create(tmp_path / "bad2.db", no_such_param=1)
    assert not (tmp_path / "bad.db").exists() and not (tmp_path / "bad2.db").exists()


@pytest.mark.parametrize("version", [1, 2])
async def test_sqlite_refuses_a_version_1_ledger_and_says_what_to_do(
    tmp_path: Path, version: int
) -> None:
    """Version 1 files (claim rules before issue 13) and version 2 files (unsigned
    operations, no nonces, before issue 14) are refused with a typed error that tells the
    user to create a new dev ledger; the file is left exactly as it was."""
    assert sqlite_backend.VERSION == 3
    old = tmp_path / f"v{version}.db"
    ledger = await SqliteLedger.create(old, dev=True)
    await ledger.mint(ALICE, ALICE.account, 5)
    await ledger.aclose()
    conn = sqlite3.connect(old)
    conn.execute(f"UPDATE meta SET value = x'0{version}' WHERE key = 'version'")
    conn.commit()
    conn.close()
    before = old.read_bytes()
    with pytest.raises(
        LedgerVersionError, match=rf"version {version} .*create a new dev ledger"
    ) as info:
        await SqliteLedger.open(old)
    assert info.value.version == version and isinstance(info.value, LedgerFileError)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert old.read_bytes() == before


async def test_sqlite_reads_a_ledger_made_before_claims_per_window(tmp_path: Path) -> None:
    """A ledger file made before the queued claim windows has no `claims_per_window` in its
    params: it opens with the default and the file is not rewritten (a node of the release
    before, which refuses params it does not know, can still open it)."""
    from p2pay.core import codec

    path = tmp_path / "old.db"
    await (await SqliteLedger.create(path, dev=True)).aclose()
    conn = sqlite3.connect(path)
    params = codec.decode(conn.execute("SELECT value FROM meta WHERE key='params'").fetchone()[0])
    del params["claims_per_window"]
    conn.execute("UPDATE meta SET value = ? WHERE key = 'params'", (codec.encode(params),))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    ledger = await SqliteLedger.open(path)
    try:
        assert ledger.params.claims_per_window == 100
    finally:
        await ledger.aclose()
    conn = sqlite3.connect(path)
    stored = codec.decode(conn.execute("SELECT value FROM meta WHERE key='params'").fetchone()[0])
    conn.close()
    assert "claims_per_window" not in stored
    assert len(path.read_bytes()) == len(before)


async def test_sqlite_failed_operation_rolls_back(tmp_path: Path, monkeypatch: Any) -> None:
    """An exception after apply (e.g. a crash mid-write) leaves no trace in the file."""
    ledger = await SqliteLedger.create(tmp_path / "l.db", dev=True)
    await ledger.mint(ALICE, ALICE.account, 100)
    before = (await ledger.events(), await ledger.totals(), await ledger.balance(BOB.account))
    real_write = sqlite_backend._write_entities

    def broken(conn: Any, lazy: Any, table: str, *args: Any) -> None:
        real_write(conn, lazy, table, *args)
        if table == "claims":
            raise OSError("disk on fire")

    monkeypatch.setattr(sqlite_backend, "_write_entities", broken)
    with pytest.raises(OSError, match="disk on fire"):
        await ledger.transfer(ALICE, BOB.account, 40)
    monkeypatch.undo()
    after = (await ledger.events(), await ledger.totals(), await ledger.balance(BOB.account))
    assert after == before
    assert ledger.tx_count == 1
    await ledger.transfer(ALICE, BOB.account, 40)  # and the ledger still works
    assert [e.seq for e in await ledger.events()] == [1, 2]
    await ledger.aclose()


async def test_sqlite_lazy_loading_backs_up_touches(tmp_path: Path, monkeypatch: Any) -> None:
    """If touches_loaded() forgot an entity, apply still sees the stored value."""
    ledger = await SqliteLedger.create(tmp_path / "l.db", dev=True)
    await ledger.mint(ALICE, ALICE.account, 100)
    await ledger.mint(BOB, BOB.account, 100)
    cid = await ledger.open_channel(ALICE, BOB.account, 50, 1_000)
    monkeypatch.setattr(sqlite_backend, "touches_loaded", lambda op, state: touches(op))
    await ledger.start_close(ALICE, cid)  # touches names the channel only
    assert ledger.lazy_loads == 0
    await ledger.payee_close(BOB, cid)  # refund to ALICE: her balance was not prefetched
    assert ledger.lazy_loads > 0
    assert await ledger.balance(ALICE.account) == 100
    assert (await ledger.totals()).conserved
    await ledger.aclose()


async def test_sqlite_two_objects_and_many_tasks(tmp_path: Path) -> None:
    """Two ledger objects on one file, each used by many trio tasks at once."""
    path = tmp_path / "l.db"
    first = await SqliteLedger.create(path, dev=True)
    second = await SqliteLedger.open(path)
    await first.mint(ALICE, ALICE.account, 1_000)
    await second.mint(BOB, BOB.account, 1_000)
    assert await first.balance(BOB.account) == 1_000  # sees the other object's write
    refused = 0

    async def pay(ledger: SqliteLedger, key: Any, to: bytes, rounds: int) -> None:
        nonlocal refused
        for _ in range(rounds):
            try:
                await ledger.transfer(key, to, 7)
            except SettlementError as exc:
                assert exc.code is ErrorCode.INSUFFICIENT_FUNDS
                refused += 1

    async with trio.open_nursery() as nursery:
        for i in range(6):
            ledger = first if i % 2 else second
            nursery.start_soon(pay, ledger, ALICE, BOB.account, 20)
            nursery.start_soon(pay, ledger, BOB, CAROL.account, 20)
    events = await first.events(limit=10_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(events) == 2 + 240 - refused == 2 + first.tx_count + second.tx_count - 2
    totals = await second.totals()
    assert totals.conserved and totals.supply == 2_000
    balances = [await first.balance(k.account) for k in (ALICE, BOB, CAROL)]
    assert sum(balances) == 2_000
    await first.aclose()
    await second.aclose()


async def test_sqlite_cancellation_never_half_applies(tmp_path: Path) -> None:
    ledger = await SqliteLedger.create(tmp_path / "l.db", dev=True)
    await ledger.mint(ALICE, ALICE.account, 10 * TOKEN)
    done = 0

    async def pay() -> None:
        nonlocal done
        while True:
            await ledger.transfer(ALICE, BOB.account, 1)
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(pay)
        # cancel mid-flight once some transfers committed (a count, not a time: issue 16)
        with trio.fail_after(120):
            while done < 20:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # every transfer that committed is an event; each either fully happened or not at all
    events = await ledger.events(limit=100_000)
    transfers = ledger.tx_count - 1  # the mint
    assert len(events) == ledger.tx_count  # an op whose commit happened is counted as done
    assert transfers >= done > 0
    assert await ledger.balance(BOB.account) == transfers
    assert (await ledger.totals()).conserved
    await ledger.aclose()


async def test_sqlite_ledger_busy_file_is_a_typed_refusal_and_moves_nothing(
    tmp_path: Any,
) -> None:
    path = tmp_path / "busy.sqlite"
    ledger = await SqliteLedger.create(path, dev=True)
    await ledger.mint(ALICE, ALICE.account, 1_000)
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    ledger._conn.execute("PRAGMA busy_timeout=50")
    try:
        with pytest.raises(SettlementError) as info:
            await ledger.transfer(ALICE, BOB.account, 10)
        assert info.value.code is ErrorCode.OVERLOADED
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await ledger.balance(ALICE.account) == 1_000
    await ledger.transfer(ALICE, BOB.account, 10)  # and the retry goes through
    assert await ledger.balance(BOB.account) == 10
    await ledger.aclose()


async def test_events_for_an_account_match_filtering_all_events(ledger_factory: Any) -> None:
    """What a watcher reads (events naming its account) is exactly the filtered log, and
    paging with the returned cursor loses and repeats nothing."""
    from p2pay.ledger.base import names_account

    clock = ManualClock()
    ledger = await ledger_factory(clock)
    for key in (ALICE, BOB, CAROL):
        await ledger.mint(key, key.account, 10 * TOKEN)
    for _ in range(7):
        await ledger.open_channel(ALICE, BOB.account, TOKEN // 100, 10_000)
        await ledger.transfer(CAROL, ALICE.account, 5)
        await ledger.open_channel(CAROL, ALICE.account, TOKEN // 100, 10_000)
    everything = await ledger.events(after=0, limit=10_000)
    for key in (ALICE, BOB, CAROL):
        expected = [e.seq for e in everything if names_account(e, key.account)]
        got: list[int] = []
        cursor = 0
        for _ in range(100):  # bounded paging, 3 at a time
            page, cursor = await ledger.events_for(key.account, cursor, 3)
            got.extend(e.seq for e in page)
            if len(page) < 3:
                break
        assert got == expected
        assert cursor == everything[-1].seq
    assert (await ledger.events_for(BOB.account, everything[-1].seq, 10))[0] == []


async def test_sqlite_another_process_cannot_act_for_the_victim(tmp_path: Path) -> None:
    """Issue 14 item 6 (regression): two homes share one ledger file (the README set-up);
    the attacker's own ledger object on that file can neither move the victim's balance
    nor start its unstaking: not with an impostor key object naming the victim's account
    (the old ledger trusted ``key.account``), nor with a transaction it signed itself, nor
    by replaying the victim's own signed transaction."""
    from p2pay.core.settlement import RequestUnstake, Transfer
    from p2pay.core.tx import sign_transaction
    from p2pay.testing import MALLORY

    class Impostor:
        account = ALICE.account
        public = ALICE.public
        sign = staticmethod(MALLORY.sign)

    path = tmp_path / "shared.db"
    victim = await SqliteLedger.create(path, dev=True)
    await victim.mint(ALICE, ALICE.account, 10 * TOKEN)
    await victim.stake(ALICE, 4 * TOKEN, TOKEN, 10_000)
    paid = sign_transaction(
        ALICE,
        victim.ledger_id,
        await victim.next_nonce(ALICE.account),
        Transfer(sender=ALICE.account, to=BOB.account, amount=TOKEN),
    )
    await victim.submit(paid)
    attacker = await SqliteLedger.open(path)
    before = (await attacker.totals(), await attacker.events(limit=1 << 20))
    nonce = await attacker.next_nonce(ALICE.account)
    attempts = [
        lambda: attacker.transfer(Impostor(), MALLORY.account, 5 * TOKEN),
        lambda: attacker.request_unstake(Impostor()),
        lambda: attacker.submit(
            sign_transaction(
                MALLORY,
                attacker.ledger_id,
                nonce,
                Transfer(sender=ALICE.account, to=MALLORY.account, amount=5 * TOKEN),
            )
        ),
        lambda: attacker.submit(
            sign_transaction(
                MALLORY, attacker.ledger_id, nonce, RequestUnstake(sender=ALICE.account)
            )
        ),
        lambda: attacker.submit(paid),  # the victim's own transaction, again
    ]
    codes = []
    for attempt in attempts:
        with pytest.raises(SettlementError) as info:
            await attempt()
        codes.append(info.value.code)
    assert codes == [ErrorCode.INVALID_SIGNATURE] * 4 + [ErrorCode.BAD_NONCE]
    assert await victim.balance(ALICE.account) == 5 * TOKEN
    assert await victim.balance(MALLORY.account) == 0
    stake = await victim.stake_of(ALICE.account)
    assert stake is not None and (stake.amount, stake.unbonding_at) == (4 * TOKEN, 0)
    assert (await victim.totals(), await victim.events(limit=1 << 20)) == before
    assert await victim.next_nonce(ALICE.account) == nonce
    await victim.aclose()
    await attacker.aclose()


async def test_memory_ledger_refuses_an_impostor_key() -> None:
    """The memory ledger checks the same signature (no trusted shortcut)."""
    from p2pay.testing import MALLORY

    class Impostor:
        account = ALICE.account
        public = ALICE.public
        sign = staticmethod(MALLORY.sign)

    ledger = MemoryLedger(dev=True)
    await ledger.mint(ALICE, ALICE.account, 10)
    with pytest.raises(SettlementError) as info:
        await ledger.transfer(Impostor(), MALLORY.account, 10)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE
    assert await ledger.balance(ALICE.account) == 10
    assert await ledger.next_nonce(ALICE.account) == 2  # the mint was her only transaction
    await ledger.aclose()


_ATTACKER = """
import sys, trio
from p2pay.core.errors import SettlementError
from p2pay.ledger import SqliteLedger
from p2pay.testing import ALICE, MALLORY

class Impostor:  # names the victim's account, holds only the attacker's secret
    account = ALICE.account
    public = ALICE.public
    sign = staticmethod(MALLORY.sign)

async def main():
    ledger = await SqliteLedger.open(sys.argv[1])
    for attempt in (
        lambda: ledger.transfer(Impostor(), MALLORY.account, 1),
        lambda: ledger.request_unstake(Impostor()),
    ):
        try:
            await attempt()
            print("APPLIED")
        except SettlementError as exc:
            print(exc.code.value)
    await ledger.aclose()

trio.run(main)
"""


async def test_sqlite_attacker_in_another_process_cannot_act_for_the_victim(
    tmp_path: Path,
) -> None:
    """Issue 14 item 6, as found: a second process on the shared ledger file."""
    import os
    import sys

    path = tmp_path / "shared.db"
    ledger = await SqliteLedger.create(path, dev=True)
    await ledger.mint(ALICE, ALICE.account, 10)
    await ledger.stake(ALICE, 4, 1, 10_000)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-c", _ATTACKER, str(path)], env=env, capture_stdout=True
        )
    assert done.stdout.decode().split() == ["INVALID_SIGNATURE", "INVALID_SIGNATURE"]
    assert await ledger.balance(ALICE.account) == 6
    stake = await ledger.stake_of(ALICE.account)
    assert stake is not None and (stake.amount, stake.unbonding_at) == (4, 0)
    assert len(await ledger.events()) == 2
    await ledger.aclose()


async def test_memory_events_for_matches_the_paging_default_when_nothing_is_new() -> None:
    """The memory ledger's index answers an account with nothing new (never named, or
    named only at or before the cursor; most watcher steps) without a search: the same
    page and cursor as the default that pages through every event (`OpLedger.events_for`),
    also after other accounts' events and with a cursor past the end; and what is new
    after that is read."""
    from p2pay.ledger.base import OpLedger

    clock = ManualClock()
    ledger = MemoryLedger(clock=clock)

    async def both(account: bytes, after: int, limit: int = 500) -> tuple[list[Any], int]:
        got = await ledger.events_for(account, after, limit)
        assert got == await OpLedger.events_for(ledger, account, after, limit)
        return got

    assert await both(ALICE.account, 0) == ([], 0)  # an empty log
    await ledger.mint(ALICE, ALICE.account, 10 * TOKEN)
    page, cursor = await both(ALICE.account, 0)
    assert len(page) == 1 and cursor == page[0].seq
    assert await both(ALICE.account, cursor) == ([], cursor)
    assert await both(BOB.account, 0) == ([], cursor)  # never named
    await ledger.mint(CAROL, CAROL.account, TOKEN)  # another's event moves the end
    end = (await ledger.events(after=0, limit=100))[-1].seq
    assert end > cursor
    assert await both(ALICE.account, cursor) == ([], end)
    assert await both(ALICE.account, end + 7) == ([], end + 7)  # past the end: kept
    await ledger.transfer(CAROL, ALICE.account, 5)  # named again: read
    page, cursor = await both(ALICE.account, end)
    assert [e.kind for e in page] == ["Transferred"] and cursor == page[0].seq
    page, _ = await both(ALICE.account, 0, 1)
    assert len(page) == 1
