"""Ordered group commit of the node's state to its store (specs/protocol.md "Durability").

Theory of operation
-------------------
The node decides synchronously (core state machines, no await between a decision and
recording it) and *stages* the records that changed here. One flusher task writes
everything staged since its last write as one `Batch` (one transaction, one fsync),
then marks that generation durable. Whoever must not act before a change is durable (a
receipt must not leave before its charge is on disk) waits with `await durable(gen)`.

Because a single task writes, generations commit in order, and within a generation the
latest snapshot of a record wins: a later state can never be overwritten by an older
one. Concurrent requests share commits, so durability costs one fsync per batch, not
per request. A channel whose record changes with nearly every request (the payer's, on
every request sent and every receipt) may be staged as a *snapshot*: a function that
builds its record, called when the generation is committed (in the same synchronous step
that closes the generation, so the record is the channel's state at the end of that
generation, exactly what staging a record at its last change would have written), so a
channel is turned into a record once per commit rather than once per change.

Before it takes a batch the flusher lets the tasks that are ready to run
stage what they will (a few scheduler passes, ending as soon as none is runnable), so
that a busy node makes fewer, larger commits; an idle one waits one pass.

A store that writes synchronously with nothing to share (an in-memory store made with
``write_through=True``, as the simulator's are) is written *through*: `stage` applies
its records at once as one batch, so the generation it returns is already durable and
`durable` returns without waiting. The rule is the same (nothing acts before its change
is stored), the group commit's batching and the flusher's scheduler passes are skipped.
A write-through failure is recorded like a flusher's: `durable` raises `StoreFailed`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from p2pay.store.base import (
    Batch,
    ClaimRecord,
    OutgoingRequest,
    PayeeRecord,
    PayerRecord,
    RequestUpdate,
    Store,
    StoredResponse,
    StoreError,
)

if TYPE_CHECKING:
    # (not `trio.TaskStatus`: py-libp2p installs trio-typing, whose stubs shadow trio's own
    # types for mypy and do not re-export it)
    from trio_typing import TaskStatus

log = logging.getLogger("p2pay.persist")

#: Scheduler passes a commit waits at most for ready tasks to stage more (`_gather`).
GATHER_TICKS = 8


class _Staged:
    """What was staged for one generation, by primary key (`Persister.stage` fills it).

    A plain slotted class rather than a dataclass with ``default_factory`` fields: written
    through, one is made per `stage` call (4.3 per request in the simulator), and the
    dataclass's ``__init__`` (ten factory calls) cost more than filling it.
    """

    __slots__ = (
        "claims",
        "delete_requests",
        "meta",
        "payee",
        "payee_snapshots",
        "payer",
        "payer_snapshots",
        "request_updates",
        "requests",
        "responses",
    )

    def __init__(self) -> None:
        self.payee: dict[bytes, PayeeRecord] = {}
        #: channel id -> builds its record at commit (`Persister.stage` ``payee_snapshot``)
        self.payee_snapshots: dict[bytes, Callable[[], PayeeRecord]] = {}
        self.payer: dict[bytes, PayerRecord] = {}
        #: channel id -> builds its record at commit (`Persister.stage` ``payer_snapshot``)
        self.payer_snapshots: dict[bytes, Callable[[], PayerRecord]] = {}
        self.requests: dict[bytes, OutgoingRequest] = {}
        self.responses: dict[bytes, StoredResponse] = {}
        self.claims: dict[bytes, ClaimRecord] = {}
        self.meta: dict[str, bytes] = {}
        self.delete_requests: set[bytes] = set()
        self.request_updates: dict[bytes, RequestUpdate] = {}

    def empty(self) -> bool:
        return not (
            self.payee
            or self.payee_snapshots
            or self.payer
            or self.payer_snapshots
            or self.requests
            or self.responses
            or self.claims
            or self.meta
            or self.delete_requests
            or self.request_updates
        )

    def batch(self) -> Batch:
        """The batch to write, the snapshots built now (records first, then snapshots)."""
        payee = list(self.payee.values())
        if self.payee_snapshots:
            payee += [build() for build in self.payee_snapshots.values()]
        payer = list(self.payer.values())
        if self.payer_snapshots:
            payer += [build() for build in self.payer_snapshots.values()]
        return Batch(
            payee=payee,
            payer=payer,
            requests=list(self.requests.values()),
            responses=list(self.responses.values()),
            claims=list(self.claims.values()),
            meta=dict(self.meta),
            delete_requests=list(self.delete_requests),
            request_updates=list(self.request_updates.values()),
        )


class StoreFailed(StoreError):
    """The store could not commit: the node stops acknowledging anything.

    ``str()`` is the message alone: the failure's own text.
    """

    def __str__(self) -> str:
        return self.message


class Persister:
    """Stage records synchronously; one task commits them in order, many per fsync."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._staged = _Staged()
        self._generation = 1  # the generation now being staged
        self._durable = 0  # highest generation known durable
        self._writing = 0  # the generation the flusher is writing now (0: none)
        self._changed = trio.Event()
        self._failed: BaseException | None = None
        self._waiters: dict[int, trio.Event] = {}
        self._stages = 0  # stage() calls so far (`_gather` watches it)
        self.commits = 0
        # A store offering a synchronous `write_now` is written through (module docstring).
        self._write_now = (
            getattr(store, "write_now", None) if getattr(store, "write_through", False) else None
        )

    # -- staging (synchronous: call right after the decision, with no await between)

    def stage(
        self,
        *,
        payee: PayeeRecord | None = None,
        payee_snapshot: tuple[bytes, Callable[[], PayeeRecord]] | None = None,
        payer: PayerRecord | None = None,
        payer_snapshot: tuple[bytes, Callable[[], PayerRecord]] | None = None,
        request: OutgoingRequest | None = None,
        response: StoredResponse | None = None,
        claim: ClaimRecord | None = None,
        meta: dict[str, bytes] | None = None,
        delete_request: bytes | None = None,
        request_update: RequestUpdate | None = None,
    ) -> int:
        """Record changes; returns the generation to wait for with `durable`.

        ``payer_snapshot`` (``payee_snapshot``) is (channel id, a function building that
        channel's record): the function is called when this generation is committed, so
        it must build the channel's state as it is then (e.g. read a live channel object
        whose every change is staged). For one channel the later of a record and a
        snapshot staged wins.

        A `request_update` changes the request as staged or stored when it is applied:
        it folds into a request staged in this generation, is dropped if the request is
        to be deleted, and otherwise goes to the store as a narrow update.
        """
        # written through, each call is a generation of its own, committed here
        s = self._staged if self._write_now is None else _Staged()
        self._stages += 1
        if payee is not None:
            s.payee[payee.channel] = payee
            s.payee_snapshots.pop(payee.channel, None)
        if payee_snapshot is not None:
            channel, build_payee = payee_snapshot
            s.payee_snapshots[channel] = build_payee
            s.payee.pop(channel, None)
        if payer is not None:
            s.payer[payer.channel] = payer
            s.payer_snapshots.pop(payer.channel, None)
        if payer_snapshot is not None:
            channel, build = payer_snapshot
            s.payer_snapshots[channel] = build
            s.payer.pop(channel, None)
        if request is not None:
            s.requests[request.request_hash] = request
            s.delete_requests.discard(request.request_hash)
            s.request_updates.pop(request.request_hash, None)
        if request_update is not None:
            key = request_update.request_hash
            if key in s.requests:
                s.requests[key] = request_update.apply(s.requests[key])
            elif key not in s.delete_requests:
                s.request_updates[key] = request_update
        if response is not None:
            s.responses[response.request_hash] = response
        if claim is not None:
            s.claims[claim.claim_id] = claim
        if meta:
            s.meta.update(meta)
        if delete_request is not None:
            s.requests.pop(delete_request, None)
            s.request_updates.pop(delete_request, None)
            s.delete_requests.add(delete_request)
        if s is not self._staged:
            return self._write_through(s)
        self._changed.set()
        return self._generation

    def _write_through(self, staged: _Staged) -> int:
        """Write one `stage` call's changes now (a write-through store), its snapshots
        built now: the generation returned is durable."""
        generation = self._generation
        self._generation += 1
        if self._failed is not None:
            return generation  # never durable: `durable` raises StoreFailed
        assert self._write_now is not None
        try:
            self._write_now(staged.batch())
        except Exception as exc:
            self._fail(exc)
            return generation
        self.commits += 1
        self._durable = generation
        return generation

    def _fail(self, exc: BaseException) -> None:
        """The store failed: nothing staged after the last good commit is durable (`durable`
        raises `StoreFailed`)."""
        self._failed = exc
        log.error("store write failed: %s", exc)
        for event in self._waiters.values():
            event.set()

    def is_durable(self, generation: int) -> bool:
        """Whether everything staged up to `generation` is committed (`durable` would
        return at once)."""
        return generation <= self._durable

    async def durable(self, generation: int) -> None:
        """Wait until everything staged up to `generation` is committed.

        Raises:
            StoreFailed: the store failed; nothing staged after the last good commit is
                durable.
        """
        while self._durable < generation:
            if self._failed is not None:
                raise StoreFailed(str(self._failed)) from self._failed
            event = self._waiters.get(generation)
            if event is None:
                event = self._waiters[generation] = trio.Event()
            await event.wait()
        if self._failed is not None and self._durable < generation:
            raise StoreFailed(str(self._failed))

    async def flush(self) -> None:
        """Make everything staged so far durable: what is staged now, and a commit being
        written (its generation closed; a read that did not wait for it could miss it)."""
        if not self._staged.empty():
            await self.durable(self._generation)
        elif self._writing > self._durable:
            await self.durable(self._writing)

    # -- the one writer

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._changed.wait()
                await self._gather()
                await self._commit_staged()
        finally:
            # On cancellation (node closing) write what is staged, shielded, so a clean
            # stop leaves everything acknowledged-or-not on disk.
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                if self._failed is None and not self._staged.empty():
                    await self._commit_staged()

    async def _gather(self) -> None:
        """Let the tasks that are ready to run stage what they will before we commit.

        Larger groups, fewer commits (fsyncs) per record when the node is busy; when it
        is idle this costs one scheduler pass. Bounded: at most `GATHER_TICKS` passes,
        ending after two quiet ones: no other task runnable, or nothing staged (other
        tasks may be runnable without staging here: in a simulation, the other nodes').
        """
        quiet = 0
        seen = self._stages
        for _ in range(GATHER_TICKS):
            await trio.lowlevel.checkpoint()  # the rest of this pass runs (and stages)
            # Tasks of the current pass not yet run are not counted: two quiet passes.
            if self._stages == seen or trio.lowlevel.current_statistics().tasks_runnable == 0:
                quiet += 1
            else:
                quiet = 0
            seen = self._stages
            if quiet == 2:
                return

    async def _commit_staged(self) -> None:
        self._changed = trio.Event()
        if self._staged.empty():
            return
        staged, self._staged = self._staged, _Staged()
        generation = self._generation
        self._generation += 1
        try:
            # snapshots are built here, with no await since the generation closed above
            batch = staged.batch()
            self._writing = generation
            await self.store.write(batch)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._writing = 0
        self.commits += 1
        self._durable = generation
        for gen in [g for g in self._waiters if g <= generation]:
            self._waiters.pop(gen).set()
