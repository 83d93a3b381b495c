"""The store: conformance suite on both backends, record validation, SQLite specifics."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.channel import ChannelStatus
from p2pay.core.errors import AmountError, LocalProtocolError
from p2pay.store import (
    Batch,
    ClaimRecord,
    MemoryStore,
    OutgoingRequest,
    PayeeRecord,
    PayerRecord,
    RequestUpdate,
    SqliteStore,
    Store,
    StoreClosed,
    StoredResponse,
    StoreError,
)
from p2pay.store.base import ID_SIZE, MAX_N, MAX_TIME
from p2pay.store.conformance import (
    Case,
    StoreBackend,
    _corrupt,
    channel_id,
    claim_record,
    outgoing,
    payee_record,
    payer_record,
    store_conformance_cases,
    stored_response,
    voucher,
)
from p2pay.store.sqlite import APPLICATION_ID, INT_SIZE, _Pending

CASES = store_conformance_cases()


def memory_backend(tmp_path: Path) -> StoreBackend:
    async def create() -> Store:
        return MemoryStore()

    return StoreBackend(name="memory", create=create)


def sqlite_backend(tmp_path: Path) -> StoreBackend:
    counter = itertools.count()

    async def create() -> Store:
        return await SqliteStore.open(tmp_path / f"store-{next(counter)}.sqlite")

    async def reopen(store: Store) -> Store:
        assert isinstance(store, SqliteStore)
        return await SqliteStore.open(store.path)

    return StoreBackend(name="sqlite", create=create, reopen=reopen, group_commit=True)


BACKENDS = {"memory": memory_backend, "sqlite": sqlite_backend}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("case", [case for _, case in CASES], ids=[name for name, _ in CASES])
async def test_conformance(case: Case, backend: str, tmp_path: Path) -> None:
    with trio.fail_after(30):
        await case(BACKENDS[backend](tmp_path))


def test_suite_has_the_cases_the_brief_asks_for() -> None:
    names = {name for name, _ in CASES}
    for wanted in ("atomic_invalid_batch", "group_commit", "later_batch_wins", "reopen", "meta"):
        assert wanted in names


# ---------------------------------------------------------------------------
# record validation (construction)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: payee_record(1, spent=-1), AmountError),
        (lambda: payee_record(1, deposit=MAX_YOCTO + 1), AmountError),
        (lambda: payee_record(1, redeemed=1.0), AmountError),
        (lambda: payee_record(1, channel=b"\x00" * 31), LocalProtocolError),
        (lambda: payee_record(1, ledger=b""), LocalProtocolError),
        (lambda: payee_record(1, ledger=b"x" * 65), LocalProtocolError),
        (lambda: payee_record(1, payer="alice"), LocalProtocolError),
        (lambda: payee_record(1, status="gone"), LocalProtocolError),
        (lambda: payee_record(1, last_n=MAX_N + 1), LocalProtocolError),
        (lambda: payee_record(1, last_n=True), LocalProtocolError),
        (lambda: payee_record(1, best_voucher=None), LocalProtocolError),
        (lambda: payee_record(1, paid_max=5, best_voucher=b"v", spent=6), LocalProtocolError),
        (lambda: payee_record(1, paid_max=5), LocalProtocolError),  # no voucher for it
        (lambda: payer_record(1, paid=5, spent=6), LocalProtocolError),
        (lambda: payer_record(1, payee=b"\x00" * 33), LocalProtocolError),
        (lambda: payer_record(1, paid=5, spent=5, absorbed=MAX_YOCTO + 1), AmountError),
        (lambda: payer_record(1, paid=5, forgotten=-1), AmountError),
        (lambda: payer_record(1, paid=5, released=True), AmountError),
        (lambda: payer_record(1, paid=5, spent=3, absorbed=4), LocalProtocolError),
        (lambda: payer_record(1, paid=5, forgotten=6), LocalProtocolError),
        (lambda: payer_record(1, paid=5, released=6), LocalProtocolError),
        (lambda: outgoing(1, state="lost"), LocalProtocolError),
        (lambda: outgoing(1, request_hash=b"\x00"), LocalProtocolError),
        (lambda: outgoing(1, price=-5), AmountError),
        (lambda: outgoing(1, deadline=MAX_TIME + 1), LocalProtocolError),
        (lambda: outgoing(1, claim_id=b"c" * 65), LocalProtocolError),
        (lambda: outgoing(1, frame=bytearray(b"x")), LocalProtocolError),
        (lambda: stored_response(1, frame=b""), LocalProtocolError),
        (lambda: stored_response(1, expires_at=-1), LocalProtocolError),
        (lambda: stored_response(1, request_frame="frame"), LocalProtocolError),
        (lambda: claim_record(1, role="judge"), LocalProtocolError),
        (lambda: claim_record(1, claim_id=b""), LocalProtocolError),
        (lambda: claim_record(1, state=""), LocalProtocolError),
        (lambda: claim_record(1, state="s" * 256), LocalProtocolError),
    ],
)
def test_invalid_records_are_refused(build: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


def test_records_are_frozen_and_normalise_enum_text() -> None:
    record = payee_record(1, status=ChannelStatus.CLOSING)
    assert record.status == "closing" and type(record.status) is str
    with pytest.raises(AttributeError):
        record.spent = 5  # type: ignore[misc]
    assert type(payer_record(1, status=ChannelStatus.OPEN).status) is str
    assert outgoing(1).claim_id == b"" and outgoing(1).updated_at == 0


def test_deferral_revoked_is_a_bool() -> None:
    assert payee_record(1).deferral_revoked is False
    assert payee_record(1, deferral_revoked=True).deferral_revoked is True
    for bad in (1, 0, "yes", None):
        with pytest.raises(LocalProtocolError, match="deferral_revoked"):
            payee_record(1, deferral_revoked=bad)


def test_record_types_are_exported() -> None:
    for cls in (PayeeRecord, PayerRecord, OutgoingRequest, StoredResponse, ClaimRecord):
        assert getattr(cls, "__dataclass_params__").frozen  # noqa: B009
    assert isinstance(MemoryStore(), Store)


# ---------------------------------------------------------------------------
# SQLite specifics


async def test_sqlite_pragmas_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await SqliteStore.open(path)
    try:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        record = payee_record(
            1, paid_max=MAX_YOCTO, best_voucher=voucher().to_frame(), spent=2**64 + 1
        )
        await store.write(Batch(payee=[record]))
    finally:
        await store.aclose()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 5
        info = dict(raw.execute("SELECT key, value FROM store_info"))
        assert info == {"format": "p2pay-store", "schema_version": "5"}
        spent, paid_max = raw.execute("SELECT spent, paid_max FROM payee_channels").fetchone()
        # Amounts are 16-byte big-endian unsigned BLOBs (SQLite INTEGER is only 64-bit).
        assert spent == (2**64 + 1).to_bytes(INT_SIZE, "big")
        assert paid_max == b"\xff" * 16
    finally:
        raw.close()


async def test_sqlite_refuses_files_that_are_not_stores(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database at all, " * 200)
    with pytest.raises(StoreError, match="not a p2pay store"):
        await SqliteStore.open(garbage)
    assert garbage.read_bytes() == b"not a database at all, " * 200

    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(StoreError, match="not a p2pay store"):
        await SqliteStore.open(foreign)
    assert foreign.read_bytes() == before, "a foreign database must be left untouched"
    assert not (tmp_path / "foreign.sqlite-wal").exists()

    with pytest.raises(StoreError, match="cannot open"):
        await SqliteStore.open(tmp_path / "no" / "such" / "dir.sqlite")
    with pytest.raises(StoreError, match="cannot open"):
        await SqliteStore.open(tmp_path)  # a directory


async def test_sqlite_refuses_an_unknown_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    await (await SqliteStore.open(path)).aclose()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE store_info SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await SqliteStore.open(path)


def _downgrade(path: Path, version: int) -> None:
    """Make a fresh store file what `version` wrote (its rows kept)."""
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE payee_channels DROP COLUMN deferral_revoked")  # 4 -> 5
    if version < 4:
        for name in ("absorbed", "forgotten", "released"):  # 3 -> 4
            conn.execute(f"ALTER TABLE payer_channels DROP COLUMN {name}")
    if version < 3:
        conn.execute("DROP TABLE floor_vouchers")  # 2 -> 3
        conn.execute("DROP INDEX responses_by_channel")
        conn.execute("ALTER TABLE responses DROP COLUMN request_frame")
    if version < 2:
        conn.execute("ALTER TABLE payee_channels DROP COLUMN verified_voucher")
    conn.execute(f"UPDATE store_info SET value = '{version}' WHERE key = 'schema_version'")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def _assert_version(path: Path, version: int) -> None:
    raw = sqlite3.connect(path)
    try:
        info = dict(raw.execute("SELECT key, value FROM store_info"))
        assert info["schema_version"] == str(version)
        assert raw.execute("PRAGMA user_version").fetchone()[0] == version
    finally:
        raw.close()


def _columns(path: Path, table: str) -> list[tuple[object, ...]]:
    raw = sqlite3.connect(path)
    try:
        return list(raw.execute(f"PRAGMA table_info({table})"))
    finally:
        raw.close()


@pytest.mark.parametrize("old", [1, 2, 3, 4])
async def test_sqlite_upgrades_an_old_store_in_place(tmp_path: Path, old: int) -> None:
    """Version 1 had no payee_channels.verified_voucher, version 2 no request frames beside
    stored responses nor floor vouchers, version 3 no payer absorbed, forgotten and
    released, version 4 no payee deferral_revoked: open adds them, keeping every row (the
    payer's three numbers are 0 in an old row, and deferral not revoked: what the old node
    restarted with)."""
    path = tmp_path / "s.sqlite"
    record = payee_record(1, paid_max=5, best_voucher=voucher(paid=5).to_frame(), spent=3)
    payer = payer_record(2, paid=2**64 + 9, spent=2**64 + 5, absorbed=3, forgotten=4, released=5)
    response = stored_response(3, expires_at=10)
    store = await SqliteStore.open(path)
    await store.write(Batch(payee=[record], payer=[payer], responses=[response], meta={"k": b"1"}))
    await store.aclose()
    fresh = _columns(path, "payer_channels")
    fresh_payee = _columns(path, "payee_channels")
    _downgrade(path, old)
    last = "spent" if old < 4 else "released"
    assert [c[1] for c in _columns(path, "payer_channels")][-1] == last
    assert "deferral_revoked" not in [c[1] for c in _columns(path, "payee_channels")]
    store = await SqliteStore.open(path)
    try:
        assert await store.payee_channel(record.channel) == record
        old_payer = (
            dataclasses.replace(payer, absorbed=0, forgotten=0, released=0) if old < 4 else payer
        )
        assert await store.payer_channel(payer.channel) == old_payer
        assert await store.payer_channels() == [old_payer]
        await store.write(Batch(payer=[payer]))
        assert await store.payer_channel(payer.channel) == payer
        assert await store.response(response.request_hash) == response
        assert await store.get_meta("k") == b"1"
        checked = voucher(paid=4).to_frame()
        upgraded = dataclasses.replace(record, verified_voucher=checked, deferral_revoked=True)
        framed = stored_response(4, request_frame=voucher(n=2).to_frame(), expires_at=10)
        await store.write(Batch(payee=[upgraded], responses=[framed]))
        assert await store.payee_channel(record.channel) == upgraded
        assert await store.vouchers(framed.channel) == [framed]
        assert await store.prune_responses(11) == 2
        floor = await store.floor_voucher(framed.channel)
        assert floor is not None and floor.request_frame == framed.request_frame
    finally:
        await store.aclose()
    _assert_version(path, 5)
    assert _columns(path, "payer_channels") == fresh, "upgraded as a new store is made"
    assert _columns(path, "payee_channels") == fresh_payee, "upgraded as a new store is made"
    raw = sqlite3.connect(path)
    try:  # the upgrade added the columns' checks too
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute("UPDATE payee_channels SET deferral_revoked = 2")
        for column, value in (("absorbed", 2**64 + 6), ("forgotten", 2**64 + 10)):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(
                    f"UPDATE payer_channels SET {column} = ?", (value.to_bytes(INT_SIZE, "big"),)
                )
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute("UPDATE payer_channels SET released = x'01'")
    finally:
        raw.close()


async def test_sqlite_one_opener_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = await SqliteStore.open(path)
    try:
        await first.write(Batch(meta={"k": b"1"}))
        with pytest.raises(StoreError, match="in use"):
            await SqliteStore.open(path)
    finally:
        await first.aclose()
    second = await SqliteStore.open(path)
    try:
        assert await second.get_meta("k") == b"1"
        with pytest.raises(StoreError, match="in use"):
            await SqliteStore.open(path)
    finally:
        await second.aclose()


async def test_sqlite_corrupt_rows_raise_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await SqliteStore.open(path)
    await store.write(Batch(claims=[claim_record(1)], meta={"k": b"v"}))
    await store.aclose()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE claims SET state = ''")
    conn.execute("UPDATE meta SET value = 'text'")
    conn.commit()
    conn.close()
    store = await SqliteStore.open(path)
    try:
        with pytest.raises(StoreError, match="corrupt"):
            await store.claims()
        with pytest.raises(StoreError, match="corrupt"):
            await store.get_meta("k")
    finally:
        await store.aclose()


async def test_sqlite_pending_batches_share_one_transaction(tmp_path: Path) -> None:
    """Batches pending while a commit runs go in one transaction, applied in call order."""
    store = await SqliteStore.open(tmp_path / "s.sqlite")
    try:
        commits = store.commits
        async with trio.open_nursery() as nursery:
            async with store._lock:  # as if a long commit were running
                for i in range(30):
                    nursery.start_soon(
                        store.write,
                        Batch(
                            payer=[payer_record(1, last_n=i)],
                            requests=[outgoing(i)],
                            delete_requests=[outgoing(i - 1).request_hash] if i else [],
                        ),
                    )
                    await trio.testing.wait_all_tasks_blocked()
        assert store.commits == commits + 1
        assert await store.payer_channel(channel_id(1)) == payer_record(1, last_n=29)
        assert await store.requests() == [outgoing(29)], "deletes and upserts kept their order"
    finally:
        await store.aclose()


class Gate:
    """Hold the worker thread of the k-th commit until the test opens gate k."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.original = store._commit_sync
        self.groups: list[int] = []
        self.gates = [threading.Event() for _ in range(4)]
        self.before: dict[int, object] = {}
        store._commit_sync = self._commit  # type: ignore[method-assign]

    def _commit(self, groups: Sequence[_Pending]) -> bool:
        k = len(self.groups)
        self.groups.append(len(groups))
        if not self.gates[k].wait(10):
            raise RuntimeError("test gate never opened")
        action = self.before.get(k)
        if callable(action):
            action()
        return self.original(groups)


async def test_sqlite_an_invalid_batch_in_a_group_fails_alone(tmp_path: Path) -> None:
    """Records are checked in the worker thread, per batch: a batch corrupted after its
    records were built is refused (LocalProtocolError) and left out of the transaction
    it was grouped in; the other batches of that group commit."""
    store = await SqliteStore.open(tmp_path / "s.sqlite")
    try:
        commits = store.commits
        gate = Gate(store)
        outcomes: dict[int, str] = {}

        async def writer(i: int) -> None:
            record = payee_record(i)
            if i == 2:
                object.__setattr__(record, "spent", -1)  # a bug bypassing validation
            try:
                await store.write(Batch(payee=[record], meta={f"w{i}": b"x"}))
                outcomes[i] = "ok"
            except LocalProtocolError:
                outcomes[i] = "refused"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, 0)
            await trio.testing.wait_all_tasks_blocked()  # writer 0 is in commit 0
            for i in range(1, 4):
                nursery.start_soon(writer, i)
            await trio.testing.wait_all_tasks_blocked()  # 1..3 pending behind it
            gate.gates[0].set()
            gate.gates[1].set()
        assert gate.groups == [1, 3], "writers 1..3 shared one transaction"
        assert outcomes == {0: "ok", 1: "ok", 2: "refused", 3: "ok"}
        assert store.commits == commits + 2
        assert {r.channel for r in await store.payee_channels()} == {
            channel_id(i) for i in (0, 1, 3)
        }
        assert await store.get_meta("w2") is None
        # a group of invalid batches only: no transaction at all
        gate.gates[2].set()
        bad = payee_record(9)
        object.__setattr__(bad, "deposit", MAX_YOCTO + 1)
        with pytest.raises(LocalProtocolError):
            await store.write(Batch(payee=[bad]))
        assert store.commits == commits + 2
    finally:
        await store.aclose()


async def test_sqlite_failed_commit_fails_every_writer_and_applies_nothing(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.sqlite")
    try:
        await store.write(Batch(meta={"before": b"1"}))
        commits = store.commits
        gate = Gate(store)
        conn = store._conn

        def disk_full() -> None:  # runs in the worker thread, inside commit 1
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")

        gate.before[1] = disk_full
        outcomes: dict[int, str] = {}

        async def writer(i: int) -> None:
            try:
                await store.write(
                    Batch(
                        payee=[payee_record(i)],
                        requests=[outgoing(i, frame=b"\x5a" * 20_000)],
                        meta={f"w{i}": b"x"},
                    )
                )
                outcomes[i] = "ok"
            except StoreError as exc:
                assert isinstance(exc.__cause__, sqlite3.Error)
                outcomes[i] = "failed"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, 0)
            await trio.testing.wait_all_tasks_blocked()  # writer 0 is in commit 0
            for i in range(1, 6):
                nursery.start_soon(writer, i)
            await trio.testing.wait_all_tasks_blocked()  # 1..5 pending behind it
            gate.gates[0].set()
            gate.gates[1].set()
        assert gate.groups == [1, 5], "writers 1..5 shared one (failing) transaction"
        assert outcomes == {
            0: "ok",
            1: "failed",
            2: "failed",
            3: "failed",
            4: "failed",
            5: "failed",
        }
        assert store.commits == commits + 1
        assert [r.channel for r in await store.payee_channels()] == [channel_id(0)]
        assert [r.request_hash for r in await store.requests()] == [outgoing(0).request_hash]
        for i in range(1, 6):
            assert await store.get_meta(f"w{i}") is None
        # The disk has room again: the store carries on.
        conn.execute("PRAGMA max_page_count = 1073741823")
        store._commit_sync = gate.original  # type: ignore[method-assign]
        await store.write(Batch(payee=[payee_record(1)]))
        assert len(await store.payee_channels()) == 2
    finally:
        await store.aclose()


async def test_sqlite_cancelling_a_pending_writer_withdraws_its_batch(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.sqlite")
    try:
        gate = Gate(store)
        scopes: dict[int, trio.CancelScope] = {}
        outcomes: dict[int, str] = {}

        async def writer(i: int) -> None:
            with trio.CancelScope() as scope:
                scopes[i] = scope
                await store.write(Batch(meta={f"w{i}": b"x"}))
                outcomes[i] = "ok"
            if scope.cancelled_caught:
                outcomes[i] = "cancelled"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, 0)
            await trio.testing.wait_all_tasks_blocked()  # 0 is committing
            nursery.start_soon(writer, 1)
            nursery.start_soon(writer, 2)
            await trio.testing.wait_all_tasks_blocked()  # 1, 2 pending
            scopes[1].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == {1: "cancelled"}, "a pending writer leaves at once"
            gate.gates[0].set()
            gate.gates[1].set()
        assert gate.groups == [1, 1], "writer 1's batch was withdrawn"
        assert outcomes == {0: "ok", 1: "cancelled", 2: "ok"}
        assert await store.get_meta("w1") is None
        assert await store.get_meta("w0") == await store.get_meta("w2") == b"x"
    finally:
        await store.aclose()


async def test_sqlite_cancel_after_the_batch_was_taken_waits_for_the_commit(
    tmp_path: Path,
) -> None:
    store = await SqliteStore.open(tmp_path / "s.sqlite")
    try:
        gate = Gate(store)
        scopes: dict[int, trio.CancelScope] = {}
        outcomes: dict[int, str] = {}

        async def writer(i: int) -> None:
            with trio.CancelScope() as scope:
                scopes[i] = scope
                await store.write(Batch(meta={f"w{i}": b"x"}))
                outcomes[i] = "ok"
            if scope.cancelled_caught:
                outcomes[i] = "cancelled"

        async with trio.open_nursery() as nursery:
            for i in range(3):  # one after the other: 0 commits, then 1 before 2 waits
                nursery.start_soon(writer, i)
                await trio.testing.wait_all_tasks_blocked()
            gate.gates[0].set()  # commit 0 ends; writer 1 takes the lock, and batches 1 and 2
            with trio.fail_after(10):
                while len(gate.groups) < 2:
                    await trio.sleep(0.001)
            assert gate.groups == [1, 2]
            scopes[0].cancel()  # already acknowledged: nothing to cancel
            for i in (1, 2):
                scopes[i].cancel()  # both batches are in the running commit
            await trio.testing.wait_all_tasks_blocked()
            assert set(outcomes) == {0}, "a writer whose batch is taken waits for the commit"
            gate.gates[1].set()
        assert gate.groups == [1, 2]
        # The commit completed, then the cancel was delivered: writer 1 ran the commit and
        # returned from write() (its cancel lands at its next checkpoint); writer 2 waited
        # for writer 1's commit, shielded, and then raised Cancelled.
        assert outcomes == {0: "ok", 1: "ok", 2: "cancelled"}
        for i in (0, 1, 2):
            assert await store.get_meta(f"w{i}") == b"x"
        assert store.commits == 2
    finally:
        await store.aclose()


async def test_sqlite_aclose_finishes_pending_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = await SqliteStore.open(path)
    done: list[int] = []

    async def writer(i: int) -> None:
        await store.write(Batch(meta={f"w{i}": b"x"}))
        done.append(i)

    async with trio.open_nursery() as nursery:
        async with store._lock:
            for i in range(5):
                nursery.start_soon(writer, i)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(store.aclose)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(StoreClosed):
                await store.write(Batch(meta={"late": b"x"}))
    assert sorted(done) == list(range(5))
    store = await SqliteStore.open(path)
    try:
        for i in range(5):
            assert await store.get_meta(f"w{i}") == b"x"
        assert await store.get_meta("late") is None
    finally:
        await store.aclose()


# -- the records' fast validation path agrees with their field-by-field checks


def _record_samples() -> list[Any]:
    return [
        payee_record(1, paid_max=5, spent=5, best_voucher=b"v"),
        payer_record(1, paid=9, spent=7, absorbed=7, forgotten=9, released=9),
        outgoing(1),
        stored_response(1),
        RequestUpdate(request_hash=b"\x07" * 32, state="answered", updated_at=3),
    ]


class _Int(int):
    pass


class _Bytes(bytes):
    pass


class _Str(str):
    pass


def _variants(value: object) -> list[object]:
    """Values for one field: in range, out of range, or of a near-miss type."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [
            0,
            1,
            value,
            value + 1,
            -1,
            MAX_N,
            MAX_N + 1,
            MAX_YOCTO,
            MAX_YOCTO + 1,
            MAX_TIME,
            MAX_TIME + 1,
            True,
            1.0,
            _Int(value),
            None,
        ]
    if isinstance(value, bytes):
        return [
            b"",
            b"x",
            value,
            value + b"x",
            value[:-1],
            bytearray(value),
            _Bytes(value),
            b"x" * 64,
            b"x" * 65,
            None,
        ]
    if isinstance(value, str):
        return [value, _Str(value), "open", "closing", "answered", "gone", "", None]
    return []


def _outcome(check: Callable[[], None]) -> tuple[str, str]:
    try:
        check()
    except Exception as exc:  # the same error, type and message, either way
        return type(exc).__name__, str(exc)
    return "ok", ""


@pytest.mark.parametrize("index", range(5))
def test_validate_fast_path_decides_as_the_field_checks(index: int) -> None:
    """Every record's `validate` takes a fast path when each field is plainly in range:
    with one field changed at a time to edge and near-miss values, it accepts exactly
    what its field-by-field checks (`_check_fields`) accept, and raises their error
    otherwise."""
    base = _record_samples()[index]
    for f in dataclasses.fields(base):
        for value in _variants(getattr(base, f.name)):
            fast, slow = copy.copy(base), copy.copy(base)
            _corrupt(fast, f.name, value)
            _corrupt(slow, f.name, value)
            assert _outcome(fast.validate) == _outcome(slow._check_fields), (f.name, value)


# Several fields at once (the fast path's cross-field rules: spent <= paid_max, a voucher
# for paid_max > 0, absorbed <= spent <= paid, forgotten/released <= paid), each field
# kept, moved near the invariants' edges, or replaced by an edge or near-miss value.

_EDGE_INTS = [0, 1, 2, 5, 9, 10, -1, MAX_N, MAX_N + 1, MAX_YOCTO, MAX_YOCTO + 1, MAX_TIME + 1]


def _near_miss(kind: type) -> SearchStrategy[object]:
    if kind is int:
        return st.sampled_from([*_EDGE_INTS, True, False, 1.0, _Int(1), None, "1"])
    if kind is bytes:
        return (
            st.sampled_from(
                [b"", b"v", b"x" * 31, b"x" * 32, b"x" * 33, b"x" * 64, b"x" * 65, None, "x" * 32]
            )
            | st.builds(bytearray, st.sampled_from([b"", b"x" * 32]))
            | st.builds(_Bytes, st.sampled_from([b"", b"x" * 32]))
        )
    return st.sampled_from(
        ["open", "closing", "closed", "answered", "expired", "gone", "", None, _Str("open")]
    )


@pytest.mark.parametrize("index", range(5))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validate_fast_path_decides_as_the_field_checks_for_field_mixes(
    index: int, data: st.DataObject
) -> None:
    base = _record_samples()[index]
    fields = dataclasses.fields(base)
    fast, slow = copy.copy(base), copy.copy(base)
    for f in fields:
        value = getattr(base, f.name)
        kind = type(value)
        if data.draw(st.integers(0, 2 * len(fields))) == 0:  # about one field in two draws
            value = data.draw(_near_miss(kind))
        elif kind is int:
            value = data.draw(st.sampled_from([value, 0, 1, 5, 7, 9, 10]))
        elif kind is bytes and f.name not in {"channel", "payer", "payee", "request_hash"}:
            value = data.draw(st.sampled_from([value, b"", b"v"]))
        _corrupt(fast, f.name, value)
        _corrupt(slow, f.name, value)
    assert _outcome(fast.validate) == _outcome(slow._check_fields)
    assert [getattr(fast, f.name) for f in fields] == [getattr(slow, f.name) for f in fields]
    assert [type(getattr(fast, f.name)) for f in fields] == [
        type(getattr(slow, f.name)) for f in fields
    ]


def _check_batch_4e2d09a(batch: object) -> None:
    """`check_batch` as it was at 4e2d09a (the reference of the test below)."""
    from p2pay.store import base

    if not isinstance(batch, Batch):
        raise base._fail("Batch", f"write takes a Batch, not {type(batch).__name__}")
    for name, cls in base._BATCH_RECORDS:
        items = getattr(batch, name)
        if type(items) is list and not items:
            continue
        if not isinstance(items, list):
            raise base._fail("Batch", f"{name} must be a list, not {type(items).__name__}")
        checked = []
        for item in items:
            if type(item) is not cls or not isinstance(item, cls):
                raise base._fail(
                    "Batch", f"{name} holds a {type(item).__name__}, not a {cls.__name__}"
                )
            checked.append(item)
        for record in checked:
            record.validate()
    if not isinstance(batch.meta, dict):
        raise base._fail("Batch", "meta must be a dict")
    for key, value in batch.meta.items():
        base.check_meta_key(key)
        base._bytes("meta", f"value of {key!r}", value)
    if not isinstance(batch.delete_requests, list):
        raise base._fail("Batch", "delete_requests must be a list")
    for request_hash in batch.delete_requests:
        base._bytes("Batch", "delete_requests item", request_hash, size=ID_SIZE)


class _SubList(list):  # type: ignore[type-arg]
    pass


class _SubRecord(PayeeRecord):  # not exactly a PayeeRecord: refused
    pass


def test_check_batch_decides_as_before() -> None:
    """`check_batch` (it skips the empty lists without a call since perf19) accepts and
    refuses every batch below as the 4e2d09a one did, with the same error."""
    from p2pay.store.base import check_batch

    def corrupt(record: Any, name: str, value: object) -> Any:
        return _corrupt(copy.copy(record), name, value)

    update = RequestUpdate(request_hash=outgoing(1).request_hash, state="answered")
    good: dict[str, list[Any]] = {
        "payee": [payee_record(1), payee_record(2)],
        "payer": [payer_record(1)],
        "requests": [outgoing(1)],
        "responses": [stored_response(1)],
        "claims": [claim_record(1)],
        "request_updates": [update],
    }
    bad: dict[str, list[Any]] = {
        "payee": [corrupt(payee_record(1), "spent", -1), _SubRecord(**_fields(payee_record(1)))],
        "payer": [corrupt(payer_record(1), "ledger", b""), payee_record(1)],
        "requests": [corrupt(outgoing(1), "state", "lost"), update],
        "responses": [corrupt(stored_response(1), "frame", b"")],
        "claims": [corrupt(claim_record(1), "role", "judge")],
        "request_updates": [corrupt(update, "updated_at", -1), outgoing(1)],
    }
    batches: list[object] = [None, "batch", Batch()]
    for name in good:
        batches.append(Batch(**{name: good[name]}))
        batches.append(Batch(**{name: _SubList(good[name])}))
        batches.append(Batch(**{name: tuple(good[name])}))
        for item in bad[name]:
            batches.append(Batch(**{name: [*good[name], item]}))
            batches.append(Batch(**{name: [item, *good[name]]}))
            batches.append(Batch(**{"payee": [bad["payee"][0]], name: [item]}))
    batches.append(Batch(**good))
    for meta in ({"k": b"v"}, {"": b"v"}, {"k": "v"}, {1: b"v"}, [("k", b"v")]):
        batches.append(Batch(meta=meta))  # type: ignore[arg-type]
    for deletes in ([b"\x01" * 32], [b"\x01"], [bytearray(32)], (b"\x01" * 32,), b"x" * 32):
        batches.append(Batch(delete_requests=deletes))  # type: ignore[arg-type]
    for batch in batches:
        outcomes = []
        for check in (check_batch, _check_batch_4e2d09a):
            try:
                check(batch)  # type: ignore[arg-type]
                outcomes.append(None)
            except Exception as exc:
                outcomes.append((type(exc), str(exc)))
        assert outcomes[0] == outcomes[1], batch


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
