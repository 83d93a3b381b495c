"""SQLite store: one file per node, WAL, synchronous=FULL, group commit.

Theory of operation
-------------------
*Durability.* The file is in WAL mode with ``synchronous=FULL``: a transaction is on
disk (the WAL fsynced) when COMMIT returns. `SqliteStore.write` returns only after the
transaction holding its batch committed, so a node that waits for `write` before it
sends a receipt never sends a receipt for a charge it could forget.

*Group commit, without a background task.* Each `write` copies its batch's lists,
appends it to ``_pending`` and takes ``_lock`` (a fair `trio.Lock`). Whoever holds the
lock takes *all* pending batches, marks them taken, and in a worker thread (off trio's)
validates and encodes each one, leaving an invalid one out (its writer gets the
`LocalProtocolError`), and commits the rest in one transaction (one fsync); it then
marks each one done (a `trio.Event` per batch) and releases the lock. A writer that gets
the lock and finds its batch already done returns at once. While one commit runs, new
batches pile up, and the next lock holder commits all of them: under load, the number of
fsyncs per second stays about constant while the batches per commit grow. Batches are
applied in the order `write` was called (the pending list is FIFO), so the later one
wins for the same key.

*Failure and cancellation.* The transaction either commits or is rolled back; on
failure every writer whose batch was in it raises `StoreError` (the cause chained), and
none of those batches is applied. The commit runs in ``trio.to_thread.run_sync`` inside
a shielded cancel scope, so it is never abandoned half-way. A writer cancelled while
its batch is still pending withdraws it (it was never acknowledged); a writer
cancelled after a commit took its batch waits (shielded) for that commit to finish,
then raises `trio.Cancelled`: the batch is then durable although `write` did not
return.

*One connection.* All SQL runs on one connection, opened with
``check_same_thread=False`` and used by one worker thread at a time: reads take the same
lock as commits. The connection holds the file with ``locking_mode=EXCLUSIVE``, so a
second process (or connection) cannot open the same store while this one is open:
two nodes writing one store would be a double-spending accident.

*Encoding.* SQLite integers are signed 64-bit and amounts reach 2**128 - 1, so every
integer column (amounts, request numbers, times) is a 16-byte big-endian unsigned BLOB.
Equal-length BLOBs compare with memcmp, which for big-endian is numeric order, so
``expires_at < ?`` and ``ORDER BY n`` work in SQL. CHECK constraints repeat the sizes.

*Identity.* A store file has ``PRAGMA application_id`` = `APPLICATION_ID` and a
``store_info`` table with ``format = 'p2pay-store'`` and ``schema_version``; `open`
refuses any other file (a foreign SQLite database, or not a database at all) without
modifying it, and refuses a schema version it does not know.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from p2pay.core.errors import LocalProtocolError
from p2pay.store.base import (
    Batch,
    ClaimRecord,
    FloorVoucher,
    OutgoingRequest,
    PayeeRecord,
    PayerRecord,
    StoreClosed,
    StoredResponse,
    StoreError,
    check_batch,
    check_meta_key,
    check_request_state,
    check_time,
    check_vouchers_args,
    floor_after_prune,
)

#: ``PRAGMA application_id`` of a p2pay store: the ASCII bytes "p2ps".
APPLICATION_ID = int.from_bytes(b"p2ps", "big")
STORE_FORMAT = "p2pay-store"
SCHEMA_VERSION = 5
_TO_V2 = ["ALTER TABLE payee_channels ADD COLUMN verified_voucher BLOB NOT NULL DEFAULT x''"]
_TO_V3 = [
    "ALTER TABLE responses ADD COLUMN request_frame BLOB NOT NULL DEFAULT x''",
    "CREATE INDEX responses_by_channel ON responses (channel, n)",
    """CREATE TABLE floor_vouchers (
    channel BLOB PRIMARY KEY NOT NULL CHECK (length(channel) = 32),
    n BLOB NOT NULL CHECK (length(n) = 16),
    request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),
    request_frame BLOB NOT NULL
)""",
]
#: Width of every integer column (bytes, big-endian, unsigned).
INT_SIZE = 16
_ZERO = "x'" + "00" * INT_SIZE + "'"
# The payer's absorbed, forgotten and released (protocol.md 14.2). A store of version 3 or
# older never kept them: its node restarted with all three at 0, so opening it with 0
# behaves exactly as that node did after every restart (no worse), and not better: the
# true values are lost. Which way each 0 errs: `absorbed` 0 refuses the stored receipts
# of requests whose charge a jump already explained (the payee is judged faulty, the
# request stays claimable), allows jumps that double count them, and counts them in
# `outstanding` again; `forgotten` 0 refuses jumps on forgotten requests and counts less
# outstanding; `released` 0 makes a later resync count more as forgotten. Nothing in the
# file can rebuild them (protocol.md 14.2), and 0 keeps every record consistent
# (absorbed <= spent, forgotten <= paid, released <= paid).
_TO_V4 = [
    f"ALTER TABLE payer_channels ADD COLUMN {name} BLOB NOT NULL DEFAULT {_ZERO} "
    f"CHECK (length({name}) = {INT_SIZE} AND {name} <= {bound})"
    for name, bound in (("absorbed", "spent"), ("forgotten", "paid"), ("released", "paid"))
]
# Whether a payee channel's deferral is revoked (protocol.md 13.4 e). A store of version 4
# or older never kept it: 0, what its node restarted with; the node then checks the stored
# requests above the last checked voucher, which finds again a bad one it had served.
_TO_V5 = [
    "ALTER TABLE payee_channels ADD COLUMN deferral_revoked INTEGER NOT NULL DEFAULT 0 "
    "CHECK (deferral_revoked IN (0, 1))"
]
#: schema versions `open` upgrades in place, each in one transaction (1 -> 2 adds
#: payee_channels.verified_voucher; 2 -> 3 adds responses.request_frame, the index of
#: responses by (channel, n) and the floor_vouchers table; 3 -> 4 adds the payer's
#: absorbed, forgotten and released, 0 in every existing row; 4 -> 5 adds
#: payee_channels.deferral_revoked, 0 in every existing row)
_UPGRADES = {
    "1": _TO_V2 + _TO_V3 + _TO_V4 + _TO_V5,
    "2": _TO_V3 + _TO_V4 + _TO_V5,
    "3": _TO_V4 + _TO_V5,
    "4": _TO_V5,
}

_T = TypeVar("_T")

_SCHEMA = f"""
CREATE TABLE store_info (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE payee_channels (
    channel BLOB PRIMARY KEY NOT NULL CHECK (length(channel) = 32),
    ledger BLOB NOT NULL,
    payer BLOB NOT NULL CHECK (length(payer) = 32),
    payee BLOB NOT NULL CHECK (length(payee) = 32),
    deposit BLOB NOT NULL CHECK (length(deposit) = {INT_SIZE}),
    status TEXT NOT NULL CHECK (status IN ('open', 'closing', 'closed')),
    last_n BLOB NOT NULL CHECK (length(last_n) = {INT_SIZE}),
    paid_max BLOB NOT NULL CHECK (length(paid_max) = {INT_SIZE}),
    best_voucher BLOB NOT NULL,
    spent BLOB NOT NULL CHECK (length(spent) = {INT_SIZE} AND spent <= paid_max),
    redeemed BLOB NOT NULL CHECK (length(redeemed) = {INT_SIZE}),
    verified_voucher BLOB NOT NULL DEFAULT x'',
    deferral_revoked INTEGER NOT NULL DEFAULT 0 CHECK (deferral_revoked IN (0, 1))
);
CREATE TABLE payer_channels (
    channel BLOB PRIMARY KEY NOT NULL CHECK (length(channel) = 32),
    ledger BLOB NOT NULL,
    payer BLOB NOT NULL CHECK (length(payer) = 32),
    payee BLOB NOT NULL CHECK (length(payee) = 32),
    deposit BLOB NOT NULL CHECK (length(deposit) = {INT_SIZE}),
    status TEXT NOT NULL CHECK (status IN ('open', 'closing', 'closed')),
    last_n BLOB NOT NULL CHECK (length(last_n) = {INT_SIZE}),
    paid BLOB NOT NULL CHECK (length(paid) = {INT_SIZE}),
    spent BLOB NOT NULL CHECK (length(spent) = {INT_SIZE} AND spent <= paid),
    absorbed BLOB NOT NULL DEFAULT {_ZERO}
        CHECK (length(absorbed) = {INT_SIZE} AND absorbed <= spent),
    forgotten BLOB NOT NULL DEFAULT {_ZERO}
        CHECK (length(forgotten) = {INT_SIZE} AND forgotten <= paid),
    released BLOB NOT NULL DEFAULT {_ZERO}
        CHECK (length(released) = {INT_SIZE} AND released <= paid)
);
CREATE TABLE requests (
    request_hash BLOB PRIMARY KEY NOT NULL CHECK (length(request_hash) = 32),
    channel BLOB NOT NULL CHECK (length(channel) = 32),
    n BLOB NOT NULL CHECK (length(n) = {INT_SIZE}),
    payee BLOB NOT NULL CHECK (length(payee) = 32),
    price BLOB NOT NULL CHECK (length(price) = {INT_SIZE}),
    deadline BLOB NOT NULL CHECK (length(deadline) = {INT_SIZE}),
    frame BLOB NOT NULL,
    state TEXT NOT NULL,
    claim_id BLOB NOT NULL,
    updated_at BLOB NOT NULL CHECK (length(updated_at) = {INT_SIZE})
);
CREATE INDEX requests_by_state ON requests (state, channel, n);
CREATE TABLE responses (
    request_hash BLOB PRIMARY KEY NOT NULL CHECK (length(request_hash) = 32),
    channel BLOB NOT NULL CHECK (length(channel) = 32),
    n BLOB NOT NULL CHECK (length(n) = {INT_SIZE}),
    frame BLOB NOT NULL,
    expires_at BLOB NOT NULL CHECK (length(expires_at) = {INT_SIZE}),
    request_frame BLOB NOT NULL DEFAULT x''
);
CREATE INDEX responses_by_expiry ON responses (expires_at);
CREATE INDEX responses_by_channel ON responses (channel, n);
CREATE TABLE floor_vouchers (
    channel BLOB PRIMARY KEY NOT NULL CHECK (length(channel) = 32),
    n BLOB NOT NULL CHECK (length(n) = {INT_SIZE}),
    request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),
    request_frame BLOB NOT NULL
);
CREATE TABLE claims (
    claim_id BLOB PRIMARY KEY NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('claimant', 'respondent')),
    state TEXT NOT NULL,
    request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),
    updated_at BLOB NOT NULL CHECK (length(updated_at) = {INT_SIZE})
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
"""
_TABLES = frozenset(
    {"store_info", "payee_channels", "payer_channels", "requests", "responses", "claims", "meta"}
)
#: tables a store of this schema version has (an upgraded one gains them on open)
_TABLES_NOW = _TABLES | {"floor_vouchers"}

_PAYEE_COLS = (
    "channel, ledger, payer, payee, deposit, status, last_n, paid_max, best_voucher, spent, "
    "redeemed, verified_voucher, deferral_revoked"
)
_PAYER_COLS = (
    "channel, ledger, payer, payee, deposit, status, last_n, paid, spent, absorbed, "
    "forgotten, released"
)
_REQUEST_COLS = (
    "request_hash, channel, n, payee, price, deadline, frame, state, claim_id, updated_at"
)
_RESPONSE_COLS = "request_hash, channel, n, frame, expires_at, request_frame"
_FLOOR_COLS = "channel, n, request_hash, request_frame"
_CLAIM_COLS = "claim_id, role, state, request_hash, updated_at"


def _insert(table: str, cols: str) -> str:
    marks = ", ".join("?" * (cols.count(",") + 1))
    return f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})"


_INSERT_PAYEE = _insert("payee_channels", _PAYEE_COLS)
_INSERT_PAYER = _insert("payer_channels", _PAYER_COLS)
_INSERT_REQUEST = _insert("requests", _REQUEST_COLS)
_INSERT_RESPONSE = _insert("responses", _RESPONSE_COLS)
_INSERT_CLAIM = _insert("claims", _CLAIM_COLS)
_INSERT_FLOOR = _insert("floor_vouchers", _FLOOR_COLS)
_INSERT_META = _insert("meta", "key, value")
_UPDATE_REQUEST = "UPDATE requests SET state = ?, updated_at = ? WHERE request_hash = ?"


def _u(value: int) -> bytes:
    return value.to_bytes(INT_SIZE, "big")


def _int(value: object, column: str) -> int:
    if not isinstance(value, bytes) or len(value) != INT_SIZE:
        raise StoreError(f"corrupt store: column {column} is not a {INT_SIZE}-byte integer")
    return int.from_bytes(value, "big")


Row = tuple[Any, ...]


@dataclass(slots=True)
class _Rows:
    """One batch, encoded (a snapshot taken when `write` was called)."""

    payee: list[Row]
    payer: list[Row]
    requests: list[Row]
    responses: list[Row]
    claims: list[Row]
    meta: list[Row]
    delete_requests: list[bytes]
    request_updates: list[Row]  # (request_hash, state, updated_at)


def _encode(batch: Batch) -> _Rows:
    return _Rows(
        payee=[
            (
                r.channel,
                r.ledger,
                r.payer,
                r.payee,
                _u(r.deposit),
                r.status,
                _u(r.last_n),
                _u(r.paid_max),
                r.best_voucher,
                _u(r.spent),
                _u(r.redeemed),
                r.verified_voucher,
                int(r.deferral_revoked),
            )
            for r in batch.payee
        ],
        payer=[
            (
                r.channel,
                r.ledger,
                r.payer,
                r.payee,
                _u(r.deposit),
                r.status,
                _u(r.last_n),
                _u(r.paid),
                _u(r.spent),
                _u(r.absorbed),
                _u(r.forgotten),
                _u(r.released),
            )
            for r in batch.payer
        ],
        requests=[
            (
                r.request_hash,
                r.channel,
                _u(r.n),
                r.payee,
                _u(r.price),
                _u(r.deadline),
                r.frame,
                r.state,
                r.claim_id,
                _u(r.updated_at),
            )
            for r in batch.requests
        ],
        responses=[
            (r.request_hash, r.channel, _u(r.n), r.frame, _u(r.expires_at), r.request_frame)
            for r in batch.responses
        ],
        claims=[
            (r.claim_id, r.role, r.state, r.request_hash, _u(r.updated_at)) for r in batch.claims
        ],
        meta=[(str.__str__(k), v) for k, v in batch.meta.items()],
        delete_requests=list(batch.delete_requests),
        request_updates=[
            (u.request_hash, u.state, _u(u.updated_at)) for u in batch.request_updates
        ],
    )


def _decode(build: Callable[..., _T], row: Row, names: Sequence[str], ints: frozenset[str]) -> _T:
    values = {
        name: _int(value, name) if name in ints else value
        for name, value in zip(names, row, strict=True)
    }
    if "deferral_revoked" in values:  # SQLite has no bool: 0 or 1 (the column's CHECK)
        values["deferral_revoked"] = values["deferral_revoked"] == 1
    try:
        return build(**values)
    except (ValueError, TypeError) as exc:  # LocalProtocolError is a ValueError
        raise StoreError(f"corrupt store: {exc}") from exc


def _names(cols: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in cols.split(","))


_PAYEE_NAMES = _names(_PAYEE_COLS)
_PAYER_NAMES = _names(_PAYER_COLS)
_REQUEST_NAMES = _names(_REQUEST_COLS)
_RESPONSE_NAMES = _names(_RESPONSE_COLS)
_CLAIM_NAMES = _names(_CLAIM_COLS)
_FLOOR_NAMES = _names(_FLOOR_COLS)
_PAYEE_INTS = frozenset({"deposit", "last_n", "paid_max", "spent", "redeemed"})
_PAYER_INTS = frozenset({"deposit", "last_n", "paid", "spent", "absorbed", "forgotten", "released"})
_REQUEST_INTS = frozenset({"n", "price", "deadline", "updated_at"})
_RESPONSE_INTS = frozenset({"n", "expires_at"})
_CLAIM_INTS = frozenset({"updated_at"})
_FLOOR_INTS = frozenset({"n"})


@dataclass(eq=False, slots=True)
class _Pending:
    batch: Batch  # a shallow copy taken when `write` was called; validated and encoded
    taken: bool = False  # in the worker thread by the commit that takes it
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    invalid: LocalProtocolError | None = None


def _copy(batch: Batch) -> Batch:
    """The batch's lists and map copied (records are frozen), so that the caller changing
    its batch after `write` was called does not change what is written.

    Raises:
        LocalProtocolError: `batch` is not a Batch, or a field is not a list (a dict for
            meta). The records themselves are checked in the worker (`check_batch`).
    """
    if not isinstance(batch, Batch):
        raise LocalProtocolError(f"Batch: write takes a Batch, not {type(batch).__name__}")
    copied = Batch()
    for name in _BATCH_LISTS:
        items = getattr(batch, name)
        if not isinstance(items, list):
            raise LocalProtocolError(f"Batch: {name} must be a list, not {type(items).__name__}")
        setattr(copied, name, list(items))
    if not isinstance(batch.meta, dict):
        raise LocalProtocolError("Batch: meta must be a dict")
    copied.meta = dict(batch.meta)
    return copied


_BATCH_LISTS = (
    "payee",
    "payer",
    "requests",
    "responses",
    "claims",
    "delete_requests",
    "request_updates",
)


def _not_a_store(path: str, why: str) -> StoreError:
    return StoreError(f"{path} is not a p2pay store ({why}); refusing to open it")


def _open_sync(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    try:
        _prepare(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        # Read-only inspection first: a foreign file must be left exactly as it was.
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(f"store {path} is in use by another process or connection") from exc
        if "unable to open" in str(exc):
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        raise _not_a_store(path, str(exc)) from exc
    fresh = app_id == 0 and not tables
    version: str | None = None
    if not fresh:
        if app_id != APPLICATION_ID or "store_info" not in tables:
            raise _not_a_store(path, "it is another SQLite database")
        info = dict(conn.execute("SELECT key, value FROM store_info").fetchall())
        if info.get("format") != STORE_FORMAT:
            raise _not_a_store(path, f"format is {info.get('format')!r}")
        version = info.get("schema_version")
        if version != str(SCHEMA_VERSION) and version not in _UPGRADES:
            raise StoreError(
                f"store {path} has schema version {version}; this p2pay reads version "
                f"{SCHEMA_VERSION} (and upgrades {', '.join(sorted(_UPGRADES))})"
            )
        required = _TABLES if version in ("1", "2") else _TABLES_NOW
        if not required <= tables:
            raise StoreError(f"store {path} is damaged: tables {sorted(required - tables)} missing")
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"store {path}: the file system does not support WAL ({mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA fullfsync = ON")  # macOS: flush the drive cache too
        if conn.execute("PRAGMA synchronous").fetchone()[0] != 2:
            raise StoreError(f"store {path}: cannot set synchronous=FULL")
        if fresh:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO store_info (key, value) VALUES (?, ?)",
                [("format", STORE_FORMAT), ("schema_version", str(SCHEMA_VERSION))],
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        else:
            # Take the write lock now (EXCLUSIVE mode keeps it), so that a second opener
            # fails at open time rather than at its first write.
            conn.execute("BEGIN IMMEDIATE")
            if version in _UPGRADES:  # one transaction: upgraded whole, or not at all
                for statement in _UPGRADES[version]:
                    conn.execute(statement)
                conn.execute(
                    "UPDATE store_info SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(f"store {path} is in use by another process or connection") from exc
        raise StoreError(f"cannot open store {path}: {exc}") from exc


def _merge(groups: Sequence[_Rows]) -> dict[str, list[Row]]:
    """Fold batches (in order) into one set of statements: the later batch wins per key."""
    payee: dict[bytes, Row] = {}
    payer: dict[bytes, Row] = {}
    requests: dict[bytes, Row | None] = {}  # None: delete
    updates: dict[bytes, Row] = {}  # narrow updates of requests not upserted in the group
    responses: dict[bytes, Row] = {}
    claims: dict[bytes, Row] = {}
    meta: dict[str, Row] = {}
    for rows in groups:
        for row in rows.payee:
            payee[row[0]] = row
        for row in rows.payer:
            payer[row[0]] = row
        for row in rows.requests:
            requests[row[0]] = row
            updates.pop(row[0], None)
        for update in rows.request_updates:
            request_hash = update[0]
            if request_hash not in requests:
                updates[request_hash] = update
            elif (upsert := requests[request_hash]) is not None:  # fold into the upsert
                requests[request_hash] = (*upsert[:7], update[1], upsert[8], update[2])
        for request_hash in rows.delete_requests:
            requests[request_hash] = None
            updates.pop(request_hash, None)
        for row in rows.responses:
            responses[row[0]] = row
        for row in rows.claims:
            claims[row[0]] = row
        for row in rows.meta:
            meta[row[0]] = row
    return {
        _INSERT_PAYEE: list(payee.values()),
        _INSERT_PAYER: list(payer.values()),
        "DELETE FROM requests WHERE request_hash = ?": [
            (h,) for h, row in requests.items() if row is None
        ],
        _INSERT_REQUEST: [row for row in requests.values() if row is not None],
        _UPDATE_REQUEST: [(state, at, h) for h, state, at in updates.values()],
        _INSERT_RESPONSE: list(responses.values()),
        _INSERT_CLAIM: list(claims.values()),
        _INSERT_META: list(meta.values()),
    }


class SqliteStore:
    """A `Store` in one SQLite file. Open it with `await SqliteStore.open(path)`."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        """Use `SqliteStore.open`; this wraps an already prepared connection."""
        self._conn = conn
        self._path = path
        self._lock = trio.Lock()
        self._pending: list[_Pending] = []
        self._commits = 0
        self._closing = False
        self._closed = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SqliteStore:
        """Open the store at `path`, creating it (and its schema) if the file is new.

        Args:
            path: the store file. The directory must exist.

        Returns:
            The open store. Close it with `aclose`.

        Raises:
            StoreError: the file is not a p2pay store, has an unknown schema version, is
                open elsewhere, or cannot be opened with WAL and synchronous=FULL.
        """
        text = os.fspath(path)
        conn = await trio.to_thread.run_sync(_open_sync, text)
        return cls(conn, text)

    @property
    def path(self) -> str:
        return self._path

    @property
    def commits(self) -> int:
        return self._commits

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise StoreClosed(f"store {self._path} is closed")

    # -- writes

    async def write(self, batch: Batch) -> None:
        # Only the copy is made here; checking and encoding the records happen in the
        # worker thread, off trio's (an invalid batch is left out of the transaction).
        copied = _copy(batch)
        self._check_open()
        if copied.is_empty():
            check_batch(copied)
            await trio.lowlevel.checkpoint()
            return
        entry = _Pending(copied)
        self._pending.append(entry)
        try:
            await self._lock.acquire()
        except BaseException:
            if entry.taken:
                # A commit has our batch: it will finish; report the cancel after it.
                with trio.CancelScope(shield=True):
                    await entry.done.wait()
            else:
                self._pending.remove(entry)
            raise
        try:
            if not entry.taken:
                await self._commit_pending()
        finally:
            self._lock.release()
        if entry.invalid is not None:
            raise entry.invalid
        if entry.error is not None:
            raise StoreError(f"store {self._path}: commit failed: {entry.error}") from entry.error

    async def _commit_pending(self) -> None:
        """Commit every pending batch in one transaction. Call with the lock held."""
        group, self._pending = self._pending, []
        if not group:
            return
        for entry in group:
            entry.taken = True
        error: BaseException | None = None
        committed = False
        try:
            with trio.CancelScope(shield=True):
                committed = await trio.to_thread.run_sync(self._commit_sync, group)
        except Exception as exc:
            error = exc
        except BaseException as exc:  # pragma: no cover - KeyboardInterrupt and the like
            error = exc
            raise
        finally:
            for entry in group:
                entry.error = error
                entry.done.set()
        if committed:
            self._commits += 1

    def _commit_sync(self, group: Sequence[_Pending]) -> bool:
        """In the worker thread: check and encode each batch, then apply the valid ones
        in one transaction, or none. Returns whether a transaction committed."""
        valid: list[_Rows] = []
        for entry in group:
            try:
                check_batch(entry.batch)
                valid.append(_encode(entry.batch))
            except LocalProtocolError as exc:
                entry.invalid = exc
        if not valid:
            return False
        self._transaction(lambda conn: self._apply(conn, _merge(valid)))
        return True

    @staticmethod
    def _apply(conn: sqlite3.Connection, statements: dict[str, list[Row]]) -> None:
        for sql, rows in statements.items():
            if rows:
                conn.executemany(sql, rows)

    def _transaction(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def prune_responses(self, now: int) -> int:
        limit = _u(check_time("now", now))

        def prune(conn: sqlite3.Connection) -> int:
            # Per channel, the highest (n, hash) among the pruned ones that keep their
            # request frame may become the channel's floor voucher (store.base).
            rows = conn.execute(
                f"SELECT {_RESPONSE_COLS} FROM responses WHERE expires_at < ? "
                "AND length(request_frame) > 0 ORDER BY channel, n DESC, request_hash DESC",
                (limit,),
            ).fetchall()
            tops: dict[bytes, StoredResponse] = {}
            for row in rows:
                if row[1] not in tops:
                    tops[row[1]] = _decode(StoredResponse, row, _RESPONSE_NAMES, _RESPONSE_INTS)
            for channel, top in tops.items():
                current = conn.execute(
                    f"SELECT {_FLOOR_COLS} FROM floor_vouchers WHERE channel = ?", (channel,)
                ).fetchall()
                floor = (
                    _decode(FloorVoucher, current[0], _FLOOR_NAMES, _FLOOR_INTS)
                    if current
                    else None
                )
                new = floor_after_prune(floor, [top])
                if new is not None and new is not floor:
                    conn.execute(
                        _INSERT_FLOOR,
                        (new.channel, _u(new.n), new.request_hash, new.request_frame),
                    )
            cursor = conn.execute("DELETE FROM responses WHERE expires_at < ?", (limit,))
            return cursor.rowcount

        count = await self._locked(lambda: self._transaction(prune))
        self._commits += 1
        return count

    # -- reads

    async def _locked(self, fn: Callable[[], _T]) -> _T:
        self._check_open()
        async with self._lock:
            self._check_open()
            try:
                return await trio.to_thread.run_sync(fn)
            except sqlite3.Error as exc:
                raise StoreError(f"store {self._path}: {exc}") from exc

    async def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        return await self._locked(lambda: self._conn.execute(sql, args).fetchall())

    async def payee_channel(self, channel: bytes) -> PayeeRecord | None:
        rows = await self._fetch(
            f"SELECT {_PAYEE_COLS} FROM payee_channels WHERE channel = ?", (channel,)
        )
        return _decode(PayeeRecord, rows[0], _PAYEE_NAMES, _PAYEE_INTS) if rows else None

    async def payee_channels(self) -> list[PayeeRecord]:
        rows = await self._fetch(f"SELECT {_PAYEE_COLS} FROM payee_channels ORDER BY channel")
        return [_decode(PayeeRecord, row, _PAYEE_NAMES, _PAYEE_INTS) for row in rows]

    async def payer_channel(self, channel: bytes) -> PayerRecord | None:
        rows = await self._fetch(
            f"SELECT {_PAYER_COLS} FROM payer_channels WHERE channel = ?", (channel,)
        )
        return _decode(PayerRecord, rows[0], _PAYER_NAMES, _PAYER_INTS) if rows else None

    async def payer_channels(self) -> list[PayerRecord]:
        rows = await self._fetch(f"SELECT {_PAYER_COLS} FROM payer_channels ORDER BY channel")
        return [_decode(PayerRecord, row, _PAYER_NAMES, _PAYER_INTS) for row in rows]

    async def request(self, request_hash: bytes) -> OutgoingRequest | None:
        rows = await self._fetch(
            f"SELECT {_REQUEST_COLS} FROM requests WHERE request_hash = ?", (request_hash,)
        )
        return _decode(OutgoingRequest, rows[0], _REQUEST_NAMES, _REQUEST_INTS) if rows else None

    async def requests(self, state: str | None = None) -> list[OutgoingRequest]:
        wanted = check_request_state(state)
        order = "ORDER BY channel, n, request_hash"
        if wanted is None:
            rows = await self._fetch(f"SELECT {_REQUEST_COLS} FROM requests {order}")
        else:
            rows = await self._fetch(
                f"SELECT {_REQUEST_COLS} FROM requests WHERE state = ? {order}", (wanted,)
            )
        return [_decode(OutgoingRequest, row, _REQUEST_NAMES, _REQUEST_INTS) for row in rows]

    async def response(self, request_hash: bytes) -> StoredResponse | None:
        rows = await self._fetch(
            f"SELECT {_RESPONSE_COLS} FROM responses WHERE request_hash = ?", (request_hash,)
        )
        return _decode(StoredResponse, rows[0], _RESPONSE_NAMES, _RESPONSE_INTS) if rows else None

    async def vouchers(self, channel: bytes) -> list[StoredResponse]:
        check_vouchers_args(channel)
        rows = await self._fetch(
            f"SELECT {_RESPONSE_COLS} FROM responses WHERE channel = ? "
            "AND length(request_frame) > 0 ORDER BY n, request_hash",
            (channel,),
        )
        return [_decode(StoredResponse, row, _RESPONSE_NAMES, _RESPONSE_INTS) for row in rows]

    async def vouchers_near(self, channel: bytes, n: int, limit: int = 4) -> list[StoredResponse]:
        check_vouchers_args(channel, n, limit)
        where = f"SELECT {_RESPONSE_COLS} FROM responses WHERE channel = ? " + (
            "AND length(request_frame) > 0 AND n "
        )

        def read() -> list[Row]:
            key = _u(n)
            below = self._conn.execute(
                where + "< ? ORDER BY n DESC, request_hash DESC LIMIT ?", (channel, key, limit)
            ).fetchall()
            same = self._conn.execute(
                where + "= ? ORDER BY request_hash", (channel, key)
            ).fetchall()
            above = self._conn.execute(
                where + "> ? ORDER BY n, request_hash LIMIT ?", (channel, key, limit)
            ).fetchall()
            return below[::-1] + same + above

        rows = await self._locked(read)
        return [_decode(StoredResponse, row, _RESPONSE_NAMES, _RESPONSE_INTS) for row in rows]

    async def floor_voucher(self, channel: bytes) -> FloorVoucher | None:
        check_vouchers_args(channel)
        rows = await self._fetch(
            f"SELECT {_FLOOR_COLS} FROM floor_vouchers WHERE channel = ?", (channel,)
        )
        return _decode(FloorVoucher, rows[0], _FLOOR_NAMES, _FLOOR_INTS) if rows else None

    async def claims(self) -> list[ClaimRecord]:
        rows = await self._fetch(f"SELECT {_CLAIM_COLS} FROM claims ORDER BY claim_id")
        return [_decode(ClaimRecord, row, _CLAIM_NAMES, _CLAIM_INTS) for row in rows]

    async def get_meta(self, key: str) -> bytes | None:
        check_meta_key(key)
        rows = await self._fetch("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        value = rows[0][0]
        if not isinstance(value, bytes):
            raise StoreError(f"corrupt store: meta {key!r} is not a BLOB")
        return value

    # -- closing

    async def aclose(self) -> None:
        """Commit batches already pending, then close the file. Idempotent, shielded."""
        if self._closing:
            return
        self._closing = True
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._commit_pending()
                self._closed = True
                await trio.to_thread.run_sync(self._conn.close)


__all__ = ["APPLICATION_ID", "INT_SIZE", "SCHEMA_VERSION", "STORE_FORMAT", "SqliteStore"]
