"""SQLite ledger: one durable file, shared safely by several processes on one machine.

Theory of operation
-------------------
Every operation is ONE ``BEGIN IMMEDIATE`` transaction (the write lock is taken first, so
two writers never interleave, across threads or processes):

1. read the globals (``supply``, ``burnt``, ``nonce``, last event ``seq``, last op time);
   the op's time is ``max(clock, last op time)`` so ledger time never runs backwards
   (specs/settlement.md section 1);
2. load the entities `touches(op)` names, then the parties derived from them
   (`touches_loaded`, specs/settlement.md section 8) into a partial `State`;
3. call `p2pay.core.settlement.apply` (the only place the rules live);
4. write back every entity that changed or appeared, the globals and the events
   (``seq`` = last seq + 1, ... : no gaps, since a failed transaction writes nothing);
5. COMMIT. A refusal (`SettlementError`) or any other exception rolls back.

The partial state's dicts are "lazy": should `apply` look at an entity the loading step
did not fetch, it is read from the database inside the same transaction, so correctness
never depends on `touches` being complete (`lazy_loads` counts such misses; the tests
expect 0).

The file is opened in WAL mode with ``synchronous=FULL``: a committed operation has
reached the disk before it is acknowledged. ``busy_timeout`` (10 s) lets concurrent
writers queue instead of failing. Readers never block writers (WAL snapshots); `totals`
reads every table inside one read transaction, so it sees one consistent state.

Storage (format ``p2pay-ledger``, version 3; version 2 added the claim game of issue 13:
``Channel.paid_seen/refunded/clawed``, ``Stake.unstake_requested_at``, the claim outcomes and
``Claim.price/paid/deadline/refund/clawed/evidence_frame``; version 3 the per-account
transaction nonces of issue 14, table ``nonces``). The queued claim windows added one
parameter and no stored field: a file whose params lack ``claims_per_window`` (made before
it) is read with the default and is not rewritten, so a node of the release before can
still use it (it files claims under the old windows, one whole window each). A version 1
or 2 file is refused with
`LedgerVersionError`: version 1 claims were settled under the old rules (any answer won the
bond) and cannot be restated under the new ones, and a version 2 file has no nonces (its
operations were not signed), so a development ledger is simply created again
(``p2pay ledger create``).

Signed transactions (specs/settlement.md section 11): the first thing an operation's write
transaction does is read the sender's next nonce (table ``nonces``), have the transaction
signed for it (a named operation signs with the caller's key right there, so concurrent
writers never race for a nonce) and check it with `p2pay.core.tx.check_transaction`
(ledger id, signature of the sender, nonce); the new nonce is written with the op's effects.

* ``meta(key, value)``: format marker, version, params (canonical CBOR map), ledger id,
  and the globals, every value canonical CBOR.
* ``balances(account, amount)``: amounts as 16-byte big-endian BLOBs (amounts go up to
  2**128 - 1, beyond SQLite's 64-bit INTEGER; fixed-width big-endian blobs compare and
  sort like the numbers).
* ``channels``, ``stakes``, ``claims``: key columns (indexed for `channels_of` and
  `claims_of`) plus ``data``, the entity's fields as a canonical CBOR map (CBOR holds
  integers up to 2**128 - 1 exactly, and the claim's request/response frames).
* ``events(seq INTEGER PRIMARY KEY, kind, at, fields)``: fields as canonical CBOR.
* ``nonces(account, last)``: the nonce of each account's last applied transaction.

Threads: the connection is used from trio worker threads (`trio.to_thread.run_sync`, so
the trio loop never blocks on disk), one thread at a time under a `threading.Lock`. The
worker is never abandoned on cancellation: an operation that started completes (or
rolls back) before the caller sees the cancellation.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sqlite3
import threading
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

import trio

from p2pay.core import codec
from p2pay.core.errors import DecodeError, ErrorCode, LocalProtocolError, SettlementError
from p2pay.core.settlement import (
    Channel,
    Claim,
    Event,
    OpenChannel,
    Params,
    Stake,
    State,
    apply,
    channel_id,
    claim_filed_event,
    touches,
    touches_loaded,
)
from p2pay.core.tx import Transaction, check_transaction
from p2pay.ledger.base import (
    ClaimRole,
    LedgerFileError,
    LocalLedger,
    Receipt,
    Totals,
    check_claim_role,
    copy_entity,
    totals_of,
)
from p2pay.ledger.memory import wall_clock_ms

__all__ = ["LedgerVersionError", "SqliteLedger"]

FORMAT = b"p2pay-ledger"
VERSION = 3


class LedgerVersionError(LedgerFileError):
    """A p2pay ledger file of another format version (e.g. version 1, before issue 13)."""

    def __init__(self, message: str, *, version: object) -> None:
        super().__init__(message)
        self.version = version


AMOUNT_BYTES = 16
BUSY_TIMEOUT_MS = 10_000
_MAX_STORED = 1 << 30  # a sanity cap on a stored CBOR value's size when decoding

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE balances (account BLOB PRIMARY KEY, amount BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE channels (
    id BLOB PRIMARY KEY, payer BLOB NOT NULL, payee BLOB NOT NULL, data BLOB NOT NULL
);
CREATE INDEX channels_payer ON channels (payer);
CREATE INDEX channels_payee ON channels (payee);
CREATE TABLE stakes (account BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE claims (
    id BLOB PRIMARY KEY, claimant BLOB NOT NULL, respondent BLOB NOT NULL, data BLOB NOT NULL
);
CREATE INDEX claims_claimant ON claims (claimant);
CREATE INDEX claims_respondent ON claims (respondent);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, at INTEGER NOT NULL, fields BLOB NOT NULL
);
CREATE TABLE nonces (account BLOB PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
"""
_GLOBALS = ("supply", "burnt", "nonce", "seq", "last_at")
_FILINGS_PAGE = 256  # claims decoded per hold of the file's lock (`claim_filings_of`)

E = TypeVar("E", Channel, Stake, Claim)
_R = TypeVar("_R")
_Args = TypeVarTuple("_Args")


# ---------------------------------------------------------------------------
# value encodings


def _amount_blob(value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LocalProtocolError(f"cannot store {value!r} as an amount")
    try:
        return value.to_bytes(AMOUNT_BYTES, "big")
    except OverflowError:
        raise LocalProtocolError("amount does not fit in 128 bits") from None


def _blob_amount(blob: bytes) -> int:
    if not isinstance(blob, bytes) or len(blob) != AMOUNT_BYTES:
        raise LedgerFileError("corrupt ledger: a stored amount is not 16 bytes")
    return int.from_bytes(blob, "big")


def _uint_blob(value: int) -> bytes:
    """A global counter (supply, burnt, nonce, seq, last_at) as minimal big-endian bytes.

    `supply` is a sum over accounts and may exceed 2**128 - 1, which CBOR (and the 16-byte
    amount blobs) cannot hold, so the globals have a variable-length encoding.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LocalProtocolError(f"cannot store {value!r} as a counter")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _cbor(value: object) -> bytes:
    return codec.encode(value)


def _uncbor(data: object) -> Any:
    if not isinstance(data, bytes):
        raise LedgerFileError("corrupt ledger: a stored value is not a CBOR blob")
    try:
        return codec.decode(data, max_size=_MAX_STORED)
    except DecodeError as exc:
        raise LedgerFileError(f"corrupt ledger: {exc.message}") from None


_ENUM_FIELDS: dict[type, dict[str, type[enum.Enum]]] = {}


def _enum_fields(cls: type) -> dict[str, type[enum.Enum]]:
    found = _ENUM_FIELDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = {
            name: hint
            for name, hint in hints.items()
            if isinstance(hint, type) and issubclass(hint, enum.Enum)
        }
        _ENUM_FIELDS[cls] = found
    return found


def _entity_blob(entity: Channel | Stake | Claim) -> bytes:
    return _cbor({f.name: getattr(entity, f.name) for f in dataclasses.fields(entity)})


def _blob_entity(cls: type[E], data: object) -> E:
    value = _uncbor(data)
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(value, dict) or set(value) != names:
        raise LedgerFileError(f"corrupt ledger: a stored {cls.__name__} has the wrong fields")
    for name, enum_cls in _enum_fields(cls).items():
        value[name] = enum_cls(value[name])
    return cls(**value)


def _stored_event(row: tuple[Any, ...]) -> Event:
    seq, kind, at, fields = row
    value = _uncbor(fields)
    if not isinstance(value, dict):
        raise LedgerFileError("corrupt ledger: stored event fields are not a map")
    return Event(kind=kind, fields={str(k): v for k, v in value.items()}, at=at, seq=seq)


# ---------------------------------------------------------------------------
# the partial state handed to `apply`


class _Lazy(dict[Any, Any]):
    """A dict of the entities loaded so far; any other key is read from the database.

    `originals` keeps a copy of every entity as loaded (None: absent), so that only
    what changed is written back.
    """

    def __init__(self, loader: Callable[[Any], Any]) -> None:
        super().__init__()
        self._loader = loader
        self.originals: dict[Any, Any] = {}
        self.misses = 0
        self.prefetching = True

    def _fetch(self, key: Any) -> bool:
        if dict.__contains__(self, key):
            return True
        if not isinstance(key, bytes) or key in self.originals:  # known absent
            return False
        if not self.prefetching:
            self.misses += 1
        value = self._loader(key)
        if value is None:
            self.originals[key] = None
            return False
        self.originals[key] = value if isinstance(value, int) else copy_entity(value)
        dict.__setitem__(self, key, value)
        return True

    def load(self, keys: Iterable[Any]) -> None:
        for key in keys:
            self._fetch(key)

    def __contains__(self, key: object) -> bool:
        return self._fetch(key)

    def __missing__(self, key: Any) -> Any:
        if self._fetch(key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if self._fetch(key):
            return dict.__getitem__(self, key)
        return default

    def pop(self, key: Any, *default: Any) -> Any:
        self._fetch(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if self._fetch(key):
            return dict.__getitem__(self, key)
        dict.__setitem__(self, key, default)
        return default

    def changes(self) -> tuple[list[tuple[Any, Any]], list[Any]]:
        """(upserts, deletions) relative to what was loaded."""
        upserts = [
            (key, value)
            for key, value in dict.items(self)
            if self.originals.get(key) is None or self.originals[key] != value
        ]
        deletions = [
            key
            for key, value in self.originals.items()
            if value is not None and not dict.__contains__(self, key)
        ]
        return upserts, deletions


# ---------------------------------------------------------------------------
# the backend


class SqliteLedger(LocalLedger):
    """A ledger in one SQLite file. Make one with `create`, reopen it with `open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        params: Params,
        clock: Callable[[], int] | None,
    ) -> None:
        """Internal: use `SqliteLedger.create` or `SqliteLedger.open`."""
        super().__init__(params, clock if clock is not None else wall_clock_ms)
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._lock = threading.Lock()
        self.lazy_loads = 0
        """Entities `apply` needed that `touches`/`touches_loaded` did not name."""

    # --- construction

    @classmethod
    async def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dev: bool = False,
        clock: Callable[[], int] | None = None,
        ledger_id: bytes | None = None,
        **overrides: Any,
    ) -> SqliteLedger:
        """Create a new ledger file.

        Args:
            path: the file to create; it must not exist.
            dev: a development ledger (`mint` allowed).
            clock: ledger time in ms; default the wall clock.
            ledger_id: default ``b"p2pay:sqlite:" + 16 random bytes``.
            **overrides: other `Params` fields (claim_bond, min_challenge_ms, ...).

        Returns:
            The open ledger.

        Raises:
            FileExistsError: `path` exists.
            LocalProtocolError: bad params.
        """
        if "params" in overrides:
            raise LocalProtocolError("give Params fields as keyword arguments")
        if ledger_id is None:
            ledger_id = b"p2pay:sqlite:" + os.urandom(16)
        try:
            params = Params(ledger_id=ledger_id, dev=dev, **overrides)
        except TypeError as exc:
            raise LocalProtocolError(f"bad ledger parameters: {exc}") from None
        return await trio.to_thread.run_sync(cls._create_sync, Path(path), params, clock)

    @classmethod
    def _create_sync(
        cls, path: Path, params: Params, clock: Callable[[], int] | None
    ) -> SqliteLedger:
        # O_EXCL: refuse an existing file, atomically (two creators cannot both win).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            conn = _connect(path)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                meta: dict[str, bytes] = {
                    "format": _cbor(FORMAT),
                    "version": _cbor(VERSION),
                    "params": _cbor(
                        {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
                    ),
                }
                meta.update((k, _uint_blob(0)) for k in _GLOBALS)
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return cls(conn, path, params, clock)

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, clock: Callable[[], int] | None = None
    ) -> SqliteLedger:
        """Open an existing ledger file (from any number of processes at once).

        Raises:
            FileNotFoundError: no such file.
            LedgerFileError: the file is not a p2pay ledger (or of an unknown version).
        """
        return await trio.to_thread.run_sync(cls._open_sync, Path(path), clock)

    @classmethod
    def _open_sync(cls, path: Path, clock: Callable[[], int] | None) -> SqliteLedger:
        if not path.is_file():
            raise FileNotFoundError(f"no ledger file at {path}")
        conn = _connect(path, must_exist=True)
        try:
            try:
                rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.DatabaseError:
                raise LedgerFileError(f"{path} is not a p2pay ledger") from None
            if rows.get("format") is None or _uncbor(rows["format"]) != FORMAT:
                raise LedgerFileError(f"{path} is not a p2pay ledger")
            version = _uncbor(rows.get("version"))
            if version in (1, 2):
                why = (
                    "claim rules before issue 13"
                    if version == 1
                    else "unsigned operations before issue 14"
                )
                raise LedgerVersionError(
                    f"{path} is a version {version} p2pay ledger ({why}); this "
                    f"p2pay reads version {VERSION} only: create a new dev ledger "
                    "(p2pay ledger create) and fund it again",
                    version=version,
                )
            if version != VERSION:
                raise LedgerVersionError(
                    f"{path} is a p2pay ledger of unknown version {version!r}", version=version
                )
            stored = _uncbor(rows.get("params"))
            try:
                params = Params(**stored)
            except (TypeError, LocalProtocolError) as exc:
                raise LedgerFileError(f"{path} has invalid params: {exc}") from None
            conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, params, clock)

    # --- properties

    @property
    def path(self) -> Path:
        return self._path

    # --- plumbing

    async def _run(self, fn: Callable[[sqlite3.Connection, *_Args], _R], *args: *_Args) -> _R:
        try:
            return await trio.to_thread.run_sync(self._locked, fn, *args)
        except sqlite3.OperationalError as exc:
            # e.g. "database is locked" after busy_timeout (another process holds the
            # file): a write's transaction was rolled back, nothing moved, and the same
            # read or operation may simply be retried. Typed, for reads too: a node's
            # loops go on after a P2payError, and a raw sqlite3 error ended the node.
            raise SettlementError(
                f"ledger file busy, nothing read or applied: {exc}", code=ErrorCode.OVERLOADED
            ) from exc
        except sqlite3.DatabaseError as exc:
            # a damaged file ("database disk image is malformed": truncated, a disk error,
            # another process writing over its pages): typed too, the node's loops go on
            # and try again. Raw, it ended the node (attack round 19, on 662bb93 which
            # typed OperationalError only).
            raise SettlementError(
                f"ledger file unreadable, nothing read or applied: {exc}",
                code=ErrorCode.INTERNAL,
            ) from exc

    def _locked(self, fn: Callable[[sqlite3.Connection, *_Args], _R], *args: *_Args) -> _R:
        with self._lock:
            if self._conn is None:
                raise LocalProtocolError("ledger is closed")
            return fn(self._conn, *args)

    @contextmanager
    def _read_txn(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")

    # --- operations

    async def next_nonce(self, account: bytes) -> int:
        result: int = await self._run(_next_nonce, account)
        return result

    async def _submit_signed(self, sender: bytes, make: Callable[[int], Transaction]) -> Receipt:
        clock_now = self._time()  # read the clock in the trio thread (it may be trio's)
        receipt: Receipt = await self._run(self._submit_sync, sender, make, clock_now)
        if receipt.events:
            self._last_at = max(self._last_at, receipt.events[-1].at)
        return receipt

    def _submit_sync(
        self,
        conn: sqlite3.Connection,
        sender: bytes,
        make: Callable[[int], Transaction],
        clock_now: int,
    ) -> Receipt:
        conn.execute("BEGIN IMMEDIATE")
        try:
            receipt = self._apply_in_txn(conn, sender, make, clock_now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return receipt

    def _apply_in_txn(
        self,
        conn: sqlite3.Connection,
        sender: bytes,
        make: Callable[[int], Transaction],
        clock_now: int,
    ) -> Receipt:
        # specs/settlement.md 11: the sender's next nonce, read under the write lock; the
        # transaction is signed (named operations) and checked before anything is loaded.
        nonce = _next_nonce(conn, sender)
        op = check_transaction(make(nonce), self._params, nonce)
        g = _read_globals(conn)
        now = max(clock_now, g["last_at"])

        balances = _Lazy(lambda a: _load_balance(conn, a))
        channels = _Lazy(lambda i: _load_one(conn, Channel, "channels", "id", i))
        stakes = _Lazy(lambda a: _load_one(conn, Stake, "stakes", "account", a))
        claims = _Lazy(lambda i: _load_one(conn, Claim, "claims", "id", i))
        state = State(
            params=self._params,
            balances=balances,
            channels=channels,
            stakes=stakes,
            claims=claims,
            supply=g["supply"],
            burnt=g["burnt"],
            nonce=g["nonce"],
        )
        # specs/settlement.md section 8: what the op names, then the derived parties.
        # A malformed op may make them fail: apply refuses it with its code below, and the
        # lazy dicts load whatever it looks at meanwhile.
        try:
            named = touches(op)
        except (AttributeError, TypeError, ValueError):
            named = None
        if named is not None:
            channels.load(named.channels)
            claims.load(named.claims)
            if named.new_channel and isinstance(op, OpenChannel):
                channels.load([_new_channel_id(self._params.ledger_id, op, state.nonce)])
            full = touches_loaded(op, state)
            balances.load(full.accounts)
            channels.load(full.channels)
            stakes.load(full.stakes)
            claims.load(full.claims)
        for lazy in (balances, channels, stakes, claims):
            lazy.prefetching = False

        result, events = apply(state, op, now)

        self.lazy_loads += balances.misses + channels.misses + stakes.misses + claims.misses
        upserts, deletions = balances.changes()
        conn.executemany(
            "INSERT INTO balances (account, amount) VALUES (?, ?) "
            "ON CONFLICT (account) DO UPDATE SET amount = excluded.amount",
            [(k, _amount_blob(v)) for k, v in upserts],
        )
        conn.executemany("DELETE FROM balances WHERE account = ?", [(k,) for k in deletions])
        _write_entities(conn, channels, "channels", "id", ("payer", "payee"))
        _write_entities(conn, stakes, "stakes", "account", ())
        _write_entities(conn, claims, "claims", "id", ("claimant", "respondent"))

        stored: list[Event] = []
        seq = g["seq"]
        rows = []
        for event in events:
            seq += 1
            fields = _cbor(event.fields)
            rows.append((seq, event.kind, event.at, fields))
            stored.append(_stored_event((seq, event.kind, event.at, fields)))
        conn.executemany("INSERT INTO events (seq, kind, at, fields) VALUES (?, ?, ?, ?)", rows)
        new_globals = {
            "supply": state.supply,
            "burnt": state.burnt,
            "nonce": state.nonce,
            "seq": seq,
            "last_at": now,
        }
        conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(_uint_blob(v), k) for k, v in new_globals.items() if v != g[k]],
        )
        conn.execute(
            "INSERT INTO nonces (account, last) VALUES (?, ?) "
            "ON CONFLICT (account) DO UPDATE SET last = excluded.last",
            (sender, nonce),
        )
        return Receipt(result, tuple(stored))

    # --- reads

    async def balance(self, account: bytes) -> int:
        result: int | None = await self._run(_load_balance, account)
        return 0 if result is None else result

    async def channel(self, channel_id: bytes) -> Channel | None:
        result: Channel | None = await self._run(_load_one, Channel, "channels", "id", channel_id)
        return result

    async def stake_of(self, account: bytes) -> Stake | None:
        result: Stake | None = await self._run(_load_one, Stake, "stakes", "account", account)
        return result

    async def claim(self, claim_id: bytes) -> Claim | None:
        result: Claim | None = await self._run(_load_one, Claim, "claims", "id", claim_id)
        return result

    async def channels_of(self, account: bytes) -> list[Channel]:
        def read(conn: sqlite3.Connection) -> list[Channel]:
            rows = conn.execute(
                "SELECT data FROM channels WHERE payer = ? OR payee = ? ORDER BY rowid",
                (account, account),
            ).fetchall()
            return [_blob_entity(Channel, r[0]) for r in rows]

        result: list[Channel] = await self._run(read)
        return result

    async def claims_of(self, account: bytes) -> list[Claim]:
        def read(conn: sqlite3.Connection) -> list[Claim]:
            rows = conn.execute(
                "SELECT data FROM claims WHERE claimant = ? OR respondent = ? ORDER BY rowid",
                (account, account),
            ).fetchall()
            return [_blob_entity(Claim, r[0]) for r in rows]

        result: list[Claim] = await self._run(read)
        return result

    async def claim_ids_of(self, account: bytes, role: ClaimRole | None = None) -> list[bytes]:
        column = check_claim_role(role)  # a column name of `claims`, indexed (or None)
        where = "claimant = ? OR respondent = ?" if column is None else f"{column} = ?"
        args = (account, account) if column is None else (account,)

        def read(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                f"SELECT id FROM claims WHERE {where} ORDER BY rowid", args
            ).fetchall()
            return [bytes(r[0]) for r in rows]

        result: list[bytes] = await self._run(read)
        return result

    async def claim_filings_of(self, account: bytes, role: ClaimRole | None = None) -> list[Event]:
        # From the account's claims (their ids through the claimant / respondent index),
        # each row decoded alone and dropped, a page of them per turn of the file's lock:
        # scanning the events (they have no account column) decoded every ClaimFiled of
        # the ledger under the lock, and 150,000 strangers' free claims held a restarted
        # provider's every ledger call past a claim's window (attack round 27)
        ids = await self.claim_ids_of(account, role)
        out: list[Event] = []
        for start in range(0, len(ids), _FILINGS_PAGE):
            page = ids[start : start + _FILINGS_PAGE]

            def read(conn: sqlite3.Connection, page: list[bytes] = page) -> list[Event]:
                found = []
                for claim_id in page:
                    row = conn.execute("SELECT data FROM claims WHERE id = ?", (claim_id,))
                    data = row.fetchone()
                    if data is not None:
                        found.append(claim_filed_event(_blob_entity(Claim, data[0])))
                return found

            out += await self._run(read)
        return out

    async def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        if after < 0 or limit < 0:
            raise LocalProtocolError("after and limit must be >= 0")

        def read(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT seq, kind, at, fields FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            return [_stored_event(r) for r in rows]

        result: list[Event] = await self._run(read)
        return result

    async def totals(self) -> Totals:
        def read(conn: sqlite3.Connection) -> Totals:
            with self._read_txn(conn):
                return totals_of(_load_state(conn, self._params))

        result: Totals = await self._run(read)
        return result

    async def load_state(self) -> State:
        """A snapshot of the whole contract state (for audits and tests)."""

        def read(conn: sqlite3.Connection) -> State:
            with self._read_txn(conn):
                return _load_state(conn, self._params)

        result: State = await self._run(read)
        return result

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await trio.to_thread.run_sync(close)


# ---------------------------------------------------------------------------
# SQL helpers (all run in a worker thread holding the connection)


def _connect(path: Path, *, must_exist: bool = False) -> sqlite3.Connection:
    uri = f"{path.resolve().as_uri()}?mode={'rw' if must_exist else 'rwc'}"
    try:
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # used by one worker thread at a time, under a lock
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    except sqlite3.Error as exc:
        raise LedgerFileError(f"cannot open {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerFileError(f"{path} is not a p2pay ledger: {exc}") from None
    return conn


def _read_globals(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute(
        f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(_GLOBALS))})",
        _GLOBALS,
    ).fetchall()
    values = {k: int.from_bytes(v, "big") for k, v in rows if isinstance(v, bytes) and v}
    if set(values) != set(_GLOBALS):
        raise LedgerFileError("corrupt ledger: globals missing")
    return values


def _next_nonce(conn: sqlite3.Connection, account: bytes) -> int:
    """The nonce `account`'s next transaction must carry (specs/settlement.md 11.2)."""
    row = conn.execute("SELECT last FROM nonces WHERE account = ?", (account,)).fetchone()
    last = 0 if row is None else row[0]
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise LedgerFileError("corrupt ledger: a stored nonce is not an int >= 0")
    return last + 1


def _load_balance(conn: sqlite3.Connection, account: bytes) -> int | None:
    row = conn.execute("SELECT amount FROM balances WHERE account = ?", (account,)).fetchone()
    return None if row is None else _blob_amount(row[0])


def _load_one(
    conn: sqlite3.Connection, cls: type[E], table: str, key_column: str, key: bytes
) -> E | None:
    row = conn.execute(f"SELECT data FROM {table} WHERE {key_column} = ?", (key,)).fetchone()
    return None if row is None else _blob_entity(cls, row[0])


def _write_entities(
    conn: sqlite3.Connection,
    lazy: _Lazy,
    table: str,
    key_column: str,
    extra_columns: tuple[str, ...],
) -> None:
    upserts, deletions = lazy.changes()
    columns = (key_column, *extra_columns, "data")
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({key_column}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in columns[1:]),
        [
            (key, *(getattr(entity, c) for c in extra_columns), _entity_blob(entity))
            for key, entity in upserts
        ],
    )
    conn.executemany(f"DELETE FROM {table} WHERE {key_column} = ?", [(k,) for k in deletions])


def _load_state(conn: sqlite3.Connection, params: Params) -> State:
    g = _read_globals(conn)
    return State(
        params=params,
        balances={
            a: _blob_amount(v) for a, v in conn.execute("SELECT account, amount FROM balances")
        },
        channels={
            k: _blob_entity(Channel, d)
            for k, d in conn.execute("SELECT id, data FROM channels ORDER BY rowid")
        },
        stakes={
            k: _blob_entity(Stake, d) for k, d in conn.execute("SELECT account, data FROM stakes")
        },
        claims={
            k: _blob_entity(Claim, d)
            for k, d in conn.execute("SELECT id, data FROM claims ORDER BY rowid")
        },
        supply=g["supply"],
        burnt=g["burnt"],
        nonce=g["nonce"],
    )


def _new_channel_id(ledger_id: bytes, op: OpenChannel, nonce: int) -> bytes:
    """The id OpenChannel will use (specs/settlement.md 4.1), to load it up front."""
    try:
        return channel_id(ledger_id, op.sender, op.payee, nonce)
    except LocalProtocolError:  # malformed op: apply refuses it; nothing to prefetch
        return b""
