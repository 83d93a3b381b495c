"""The node's duties towards the ledger (specs/protocol.md 16-17, specs/claims.md).

Theory of operation
-------------------
The watcher runs inside the node's nursery. Each step it

1. reads ledger events after its persisted cursor. A payer's `ChannelClosing` on a
   channel we are paid on comes first: we redeem at once, before any other event or duty
   of the step (C-8). Then the others, in order: top-ups, redeems and closes update the
   node's view; a `ClaimFiled` against us starts an answer task; `ClaimAnswered` and
   `ClaimUpheld` of our own claims record their outcome and the checked answer;
2. does its periodic duties: redeem what we charged when the policy says so
   (`redeem_reason`, specs/protocol.md 17.1: closing, a share of the escrow, an
   optional absolute threshold, or age; at most once per channel per
   `min_redeem_interval_ms` unless closing); finalize our payer closes whose challenge
   period ended; for every paid request we sent that is still unanswered past its
   deadline plus a grace period, start a claimant task; resolve our claims whose answer
   window has passed; re-read the open claims against us now and then; prune old
   stored responses.

As payer, on every `Redeemed` or `ChannelClosed` of a channel we pay on, it compares what
the payee holds from the channel (``redeemed - clawed``) with what our receipts justify
(``spent`` plus the prices of requests in flight or abandoned). If the payee took more, it
posts the payee's own signed refusals we kept (`Ledger.file_claim` with ``refusal``: the
refund with the payee's refusal, specs/claims.md 3 and 6, attack N1) until the excess is
covered, and logs a warning naming the payee. An honest payee redeems its ``spent`` and
never triggers it. Once the channel is closed and settled the refusals are let go.

Claim work never runs in the loop itself (C-7): each claim against us gets one task in
the watcher's nursery. It answers with the signed response we stored (OK or refusal), or
with a payer-signed request in tiling conflict with the claimed one (evidence), or else
admits the claimed request by the rules of a stream (`PayeeChannel.admit_claimed`),
serves it with the handler until the claim's window end minus a margin, charges durably
and answers with the signed result (or a signed refusal). At most `max_claim_answers`
handlers serve claims at once, the claims waiting for one let in earliest window end
first; answers go to the ledger earliest window end first too, at
most `ANSWERS_AT_ONCE` at a time (`EarliestFirst`: the ledger gives a claim one slot
more than a whole window for each claim open against the stake, specs/claims.md C-1, and
that bound holds for a provider that answers in window order); a submission that fails
for a transient reason is retried with backoff until the window ends. Each claimant task
first re-sends the same signed request to the provider (`Node.redeliver`) and files the
claim only if that brings no answer, the provider has a stake and the window is open.

Every handler is idempotent, because after a crash events after the last persisted
cursor are seen again. Failures of one duty are logged and retried next step; they never
stop the node.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import json
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import trio

from p2pay.core.channel import ChannelStatus, PayeeChannel, PayerChannel, Refuse
from p2pay.core.errors import ErrorCode, P2payError, RemoteProtocolError, SettlementError
from p2pay.core.messages import (
    STATUS_OK,
    Request,
    Response,
    decode_frame,
    decode_held_frame,
    refusal_body,
)
from p2pay.core.settlement import (
    Channel,
    ChannelState,
    Claim,
    ClaimState,
    ConflictIndex,
    Event,
    Slice,
    claim_starts_ms,
    resend_budget_s,
    tiling_conflict,
)
from p2pay.node.book import (
    ChannelBook,
    _payee_record,
    _payer_snapshot,
    ids_from_bytes,
    ids_to_bytes,
)
from p2pay.node.invoke import _Service, claim_answer_limit, run_service
from p2pay.node.types import Behaviour, Call, ClaimInfo, Counters, NodeConfig
from p2pay.store.base import (
    MAX_TIME,
    ClaimRecord,
    OutgoingRequest,
    RequestUpdate,
    StoredResponse,
    meta_json,
)
from p2pay.wakes import current_wakes

if TYPE_CHECKING:
    from p2pay.core.identity import Keypair
    from p2pay.core.messages import StakeTerms
    from p2pay.core.signing import Signer
    from p2pay.ledger.base import Ledger
    from p2pay.node.outbox import _Outbox
    from p2pay.persist import Persister
    from p2pay.store.base import Store

log = logging.getLogger("p2pay.watcher")


class WatcherHost(Protocol):
    """What the watcher uses of its node (the `Node` is one): its keys and ledger, its
    store, its channels, its services (to serve a request that reaches it only through a
    claim) and the server's record of requests being served."""

    key: Keypair
    signer: Signer
    ledger: Ledger
    store: Store
    persister: Persister
    config: NodeConfig
    counters: Counters
    behaviour: Behaviour
    services: dict[str, _Service]
    payee_channels: dict[bytes, PayeeChannel]
    payer_channels: dict[bytes, PayerChannel]
    #: admitted requests not answered yet -> the outboxes of their re-sends (C-4)
    _unanswered: dict[bytes, list[_Outbox]]
    #: requests whose claim the watcher refused late -> that signed answer's frame
    _late_refused: dict[bytes, bytes]
    #: channel id -> the lock of its adoption while one is under way (`ChannelBook`)
    _channel_locks: dict[bytes, trio.Lock]
    #: the node's channels (`ChannelBook.note_closing`: closes of channels not ours yet)
    book: ChannelBook

    @property
    def account(self) -> bytes: ...

    def now(self) -> int: ...

    def peer_of(self, account: bytes) -> str: ...

    def prune_before(self) -> int: ...

    def response_expiry(self, deadline: int) -> int: ...

    def _ledger_param(self, name: str) -> int | None: ...

    async def _payee_channel_for(self, request: Request, peer: bytes) -> PayeeChannel | None: ...

    async def refresh_channel(self, channel: bytes) -> None: ...

    async def refresh_stake(self) -> StakeTerms | None: ...

    async def redeliver(self, record: OutgoingRequest, *, timeout: float) -> Response | None: ...


CURSOR_KEY = "ledger_cursor"
#: store meta key of the payee channels a ChannelClosing named and whose state we have not
#: read since (`Watcher._closing`): the ids, 32 bytes each, stored with the cursor that
#: passed their event
CLOSING_KEY = "p2pay.closing_due"


def redeem_reason(
    *,
    unredeemed: int,
    escrow: int,
    closing: bool,
    now: int,
    unredeemed_since: int,
    last_redeem: int | None,
    config: NodeConfig,
) -> str | None:
    """Why a payee channel must be redeemed now, or None (specs/protocol.md 17.1).

    Args:
        unredeemed: what the payee charged and has not redeemed (yocto).
        escrow: the channel's ``deposit - redeemed`` (yocto).
        closing: the ledger shows the channel CLOSING (the payer started a close).
        now: the node's clock (ms).
        unredeemed_since: when the oldest unredeemed charge was first seen (ms).
        last_redeem: when this node last redeemed the channel (ms), None if never.
        config: the node's redeem settings.

    Returns:
        ``"closing"``, ``"fraction"``, ``"threshold"``, ``"age"``, or None.
    """
    if unredeemed <= 0:
        return None
    if closing:
        return "closing"  # the challenge-period defence: never rate limited
    if last_redeem is not None and not now - last_redeem >= config.min_redeem_interval_ms:
        return None
    bps = config.redeem_fraction_bps
    if bps and unredeemed * 10_000 >= bps * escrow:
        return "fraction"
    if unredeemed >= config.redeem_threshold:
        return "threshold"
    if now - unredeemed_since >= config.redeem_max_age_ms:
        return "age"
    return None


#: Ledger refusals after which answering a claim again cannot succeed.
_FINAL = frozenset(
    {ErrorCode.CLAIM_CLOSED, ErrorCode.UNKNOWN_CLAIM, ErrorCode.WINDOW_CLOSED, ErrorCode.NOT_PARTY}
)
#: Ledger refusals of the answer itself: sending the same answer again is pointless.
_BAD_ANSWER = frozenset(
    {
        ErrorCode.RESPONSE_MISMATCH,
        ErrorCode.INVALID_SIGNATURE,
        ErrorCode.MALFORMED,
        ErrorCode.INVALID_ARGUMENT,
    }
)
#: FileClaim refusals that will not change by trying again (the request is unclaimable).
_UNCLAIMABLE = frozenset(
    {
        ErrorCode.NOT_STAKED,
        ErrorCode.UNBONDING,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.VOUCHER_EXCEEDS_DEPOSIT,
        ErrorCode.INVALID_SIGNATURE,
        ErrorCode.MALFORMED,
        ErrorCode.NOT_PARTY,
        ErrorCode.CHANNEL_CLOSED,
        ErrorCode.UNKNOWN_CHANNEL,
        ErrorCode.WRONG_LEDGER,
    }
)
#: Retry delays of a failed ledger submission (seconds; doubled up to the maximum).
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
#: Answers to claims against us in the ledger's hands at once; the others wait, earliest
#: window end first (`EarliestFirst`, specs/claims.md C-1).
ANSWERS_AT_ONCE = 4
#: Every this many steps the watcher re-reads the open claims against it from the ledger
#: (after a restart, or an event whose answer task ended early).
RESCAN_STEPS = 20

#: Request state after a claim's outcome (store.base.REQUEST_STATES).
_REQUEST_STATE = {
    "delivered": "answered",
    "refused": "refused",
    "frivolous": "rejected",
    "upheld": "compensated",
}


#: States of our requests that may still end with a refund (REFUSED, UPHELD): no answer
#: yet, or a claim open on it.
_REFUNDABLE = ("awaiting", "claimed")


def outcome_key(claim_id: bytes) -> str:
    """The meta key under which a claimant node keeps a claim's outcome (`Node.claims`)."""
    return "claim/" + claim_id.hex()


async def claim_infos(store: Store) -> list[ClaimInfo]:
    """The claims a node filed or answered, with their outcomes (`Node.claims`): for its
    own claims, what the watcher recorded under `outcome_key` once they were decided (an
    outcome that does not read, a damaged store, is logged and shown as the record's
    state)."""
    out = []
    for record in await store.claims():
        raw = await store.get_meta(outcome_key(record.claim_id))
        info = _decided(record, raw) if record.role == "claimant" and raw is not None else None
        if info is None:
            info = ClaimInfo(
                claim_id=record.claim_id,
                role=record.role,
                outcome=record.state,
                request_hash=record.request_hash,
            )
        out.append(info)
    return out


def _decided(record: ClaimRecord, raw: bytes) -> ClaimInfo | None:
    """Our claim's outcome as the watcher stored it (`claim_infos`), None if unreadable."""
    try:
        doc = meta_json(raw)
        response: Response | None = None
        if doc.get("response"):
            frame = decode_held_frame(bytes.fromhex(doc["response"]))  # a claim's answer
            response = frame if isinstance(frame, Response) else None
        return ClaimInfo(
            claim_id=record.claim_id,
            role=record.role,
            outcome=str(doc["outcome"]),
            request_hash=record.request_hash,
            status=str(doc["status"]),
            bond=int(doc["bond"]),
            bond_returned=bool(doc["bond_returned"]),
            refund=int(doc["refund"]),
            clawed=int(doc["clawed"]),
            slashed=int(doc["slashed"]),
            response=response,
        )
    except (ValueError, TypeError, KeyError, AttributeError, P2payError) as exc:
        log.error("unreadable outcome of claim %s: %r", record.claim_id.hex(), exc)
        return None


def claim_outcome(claim: Claim) -> str:
    """A claim's outcome: its state (open, delivered, refused, frivolous, upheld)."""
    state = str(claim.state)
    if state == "answered":  # a ledger of the first claim game: tell by the answer
        try:
            response = decode_held_frame(claim.response_frame)
        except P2payError:
            return "refused"
        ok = isinstance(response, Response) and response.status == STATUS_OK
        return "delivered" if ok else "refused"
    return state


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    """What we post for a claim against us: a signed response, or conflicting evidence.

    Held without bodies while it waits for its turn at the ledger (`_defend`): a response
    we stored by its signed fields (`stored`, `_stored`), its body read back from the
    store at its turn (`Watcher._with_body`); evidence by its signed fields (`_bodiless`:
    the ledger neither checks nor keeps its body). A burst of paid claims served while
    the ledger was slower than the handlers held one body per claim, each up to the
    ledger's max_claim_body (attack round 22: 45.9 MB for 192 claims of 256 KiB at
    0.3 s an answer). The one answer held whole is our refusal of a channel we never
    adopted (`_answer_unserved`): not stored, a refusal body of a few hundred bytes.
    """

    response: Response | None = None
    evidence: Request | None = None
    stored: bool = False  # `response` is ours as stored, held without its body

    @property
    def outcome(self) -> str:
        if self.evidence is not None:
            return "frivolous"
        assert self.response is not None
        return "delivered" if self.response.status == STATUS_OK else "refused"


@dataclasses.dataclass(frozen=True, slots=True)
class _Gap:
    """A claimed request whose number we never answered: served through the claim (C-6).
    `same_n`: we hold another request numbered alike (the admission refuses it then)."""

    same_n: bool


class _Serve:
    """`_prepare_answer` without a handler slot: the claimed request is to be served
    through the claim; take a slot and read its body from the ledger (`_answer_claim`)."""


_SERVE = _Serve()


class EarliestFirst:
    """At most `capacity` holders at once; a waiter with a smaller key enters first.

    The claim answers' gate (specs/claims.md C-1): the ledger gives a claim one slot more
    than a whole window for each claim open against the stake, which is enough time for a
    provider that answers them in the order of their window ends; a plain lock or the ledger's own
    queue would let a flood's later claims go first and an early window run out.
    Waiters with equal keys enter in arrival order. A waiter cancelled while it waits
    leaves the queue (a place handed to it as it is cancelled passes on to the next).

    `hold` is the usual way in; `try_take`, `take` and `release` serve a holder whose place
    outlives one block (the handler slots, `Watcher._answer_claim`): every `take` or
    `try_take` that succeeded is given back by exactly one `release`.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._free = capacity
        self._waiting: list[list[Any]] = []  # heap of [key, arrival, event or None]
        self._arrivals = 0
        self.waiting = 0  # waiters still in the queue

    @property
    def held(self) -> int:
        """Places taken (a place handed to a waiter that has not yet resumed included)."""
        return self.capacity - self._free

    def try_take(self) -> bool:
        """Take a place if one is free and nobody waits, without a checkpoint; True if
        taken. Never ahead of a waiter: a place is free only while nobody waits."""
        if self._free > 0 and self.waiting == 0:
            self._free -= 1
            return True
        return False

    async def take(self, key: int) -> None:
        """Wait for a place, smallest `key` first (equal keys in arrival order).

        A checkpoint like trio's `CapacityLimiter.acquire`: in a cancelled scope it raises
        at once and takes nothing (a handler whose deadline has passed never starts), and
        a free place is taken with a shielded checkpoint. On any exception the caller holds
        no place: cancelled while it waits, it leaves the queue; cancelled as the place is
        handed to it, the place passes on to the next waiter (or back to the free ones).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.try_take():
            try:
                await trio.lowlevel.cancel_shielded_checkpoint()
            except BaseException:  # e.g. KeyboardInterrupt delivered here: give it back
                self.release()
                raise
            return
        event = trio.Event()
        self._arrivals += 1
        entry: list[Any] = [key, self._arrivals, event]
        heapq.heappush(self._waiting, entry)
        self.waiting += 1
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # handed over as we were cancelled: pass it on
            else:
                entry[2] = None  # left the queue (dropped when it reaches the top)
                self.waiting -= 1
            raise

    def release(self) -> None:
        """Give back a place taken by `take` or `try_take`: straight to the earliest
        waiter, or free if nobody waits."""
        while self._waiting:
            _key, _arrival, event = heapq.heappop(self._waiting)
            if event is not None:
                self.waiting -= 1
                event.set()  # the place goes straight to the earliest waiter
                return
        if self._free >= self.capacity:
            raise RuntimeError("EarliestFirst.release without a place taken")
        self._free += 1

    @asynccontextmanager
    async def hold(self, key: int) -> AsyncIterator[None]:
        """A place for the block (`take`, then `release` however the block ends)."""
        await self.take(key)
        try:
            yield
        finally:
            self.release()


class Watcher:
    def __init__(self, node: WatcherHost) -> None:
        self.node = node
        self.cursor = 0
        self.steps = 0
        self._wake = trio.Event()
        self._resting: trio.CancelScope | None = None  # the wait between steps (`_rest`)
        self.redeems: collections.Counter[str] = collections.Counter()  # by reason
        self.answers: collections.Counter[str] = collections.Counter()  # claims, by outcome
        self._unredeemed_since: dict[bytes, int] = {}  # channel -> ms (node clock)
        # channel -> the most we asked a redeem for (`_redeemed_at_latest`)
        self._redeem_sent: dict[bytes, int] = {}
        self._last_redeem: dict[bytes, int] = {}  # channel -> ms (node clock)
        self._tasks: trio.Nursery | None = None  # claim answers and filings (C-7)
        #: handler slots (claims served through the claim, C-6), earliest window end first
        #: like every other gate here: in arrival order (trio's CapacityLimiter), a claim
        #: whose window ends first waited behind claims with later windows that came first,
        #: and was refused DEADLINE_EXCEEDED at its handler deadline (attack round 36).
        #: Order: a slot may be taken while `_whole_reads` is held (`_serve_claimed`
        #: without one); a slot's holder never takes `_whole_reads`
        self._limiter = EarliestFirst(node.config.max_claim_answers)
        #: claims read whole outside a handler slot, at most as many as the slots each:
        #: `_defend`'s reads, and the answers that need no handler (a burst of free
        #: claims refused at once held every body at once: attack round 20, 48 claims of
        #: 512 KiB, 52 MB). Two limiters: a read never waits for an answer being made
        #: Both earliest window end first, as the answers are: in arrival order, a flood's
        #: later claims were read first and an early window ran out (200 free claims, 0.3 s
        #: a read, 16 at once, a 2 s window: 20 UPHELD)
        self._reads = EarliestFirst(node.config.max_claim_answers)
        self._whole_reads = EarliestFirst(node.config.max_claim_answers)
        self._answering = EarliestFirst(ANSWERS_AT_ONCE)  # claim answers to the ledger
        #: stored answers read and kept for a claim (`_read_kept`), as many at once as the
        #: slots, earliest window end first: each holds our stored frame (an answer's body)
        #: until the write that keeps it is durable (attack round 34: 64 claims on answered
        #: requests of 256 KiB held every frame at once, 34.5 MB traced; 11.7 MB now)
        self._kept_reads = EarliestFirst(node.config.max_claim_answers)
        self._defending: set[bytes] = set()  # claims against us with an answer task
        #: claims against us whose answer the ledger acknowledged (this run): on a ledger
        #: with confirmations, their reading at head - k may let them go (`_read_defended`)
        self._answered: set[bytes] = set()
        self._claiming: set[bytes] = set()  # our requests with a claimant task
        self._foreign_noted: set[bytes] = set()  # adopted channels redeemed on, logged once
        #: payee channels a ChannelClosing named whose state we have not read since
        #: (`_defend_closes`, C-8); stored (`CLOSING_KEY`), loaded by `run`
        self._closing: set[bytes] = set()
        self._owed_read_at: int | None = None  # `_read_owed_channels` (node clock, ms)
        #: payer channels whose payee's take is to be checked (`_check_takes`): after a
        #: Redeemed / ChannelClosed event or a refund, and each one when `run` starts (a
        #: check a crash cut short); one leaves the set only once its check ran to the end
        self._takes_due: set[bytes] = set()
        #: payer channels -> the excess beyond our receipts that the last check could not
        #: cover (warned about once; the same excess found again is logged at INFO)
        self._excess_warned: dict[bytes, int] = {}
        #: the requests of the claims against us, by channel, decoded once (a claim's
        #: request never changes; its id is the request's hash); the ledger's list is read
        #: once, then each claim filed after it once (`_claimed_requests`, C-7)
        self._claimed: dict[bytes, ConflictIndex] = {}
        self._claims_listed = False  # the ledger's list of claims against us was read
        self._unlisted: set[bytes] = set()  # claims filed against us since, not yet read
        #: their channels, as their ClaimFiled events name them (none: any channel's)
        self._unlisted_on: dict[bytes, bytes] = {}
        #: one task per channel reads its unlisted claims (`_claimed_requests`)
        self._listing_on: collections.defaultdict[bytes, trio.Lock] = collections.defaultdict(
            trio.Lock
        )
        self._listed: set[bytes] = set()  # the claims against us in `_claimed` (or unusable)
        #: those of them read past their windows and no longer OPEN: final, never read
        #: again (not those we answered, on the ledger's acknowledgement alone: an answer
        #: that never landed was never sent again, attack round 22)
        self._final: set[bytes] = set()
        #: their window ends, as filed: a rescan does not read a claim past its window
        self._window_of: dict[bytes, int] = {}
        self._rescanning = False  # a rescan task runs (`_rescan_soon`)
        self._listing = trio.Lock()  # one task at a time reads them
        #: `_resolve_claims` reads every claim record of the store at each step, for ours
        #: still open. This watcher is the only writer of claim records (`_stage_claim`):
        #: once a read found none of ours open, with every claim record we staged before
        #: it durable, the step skips the read until we stage one again (a read and a
        #: scheduler pass fewer per idle step of each of a simulation's nodes).
        self._claims_staged = 0  # the generation of the last claim record we staged
        self._none_open_read = False  # a read since found none of ours open

    def check_take(self, channel: bytes) -> None:
        """Check at the next step what the payee of our `channel` holds against our
        receipts (`_check_payee_take`): an answer lowered what it may hold (a refusal,
        signed or not, a charge below the request's price, an answer to an abandoned
        request), and a payee that redeemed that slice before refusing it now holds more
        than our receipts justify, with no ledger event to say so (claims.md 6)."""
        self._takes_due.add(channel)

    def poke(self) -> None:
        """Run the next step now instead of after the interval."""
        self._wake.set()
        if self._resting is not None:
            self._resting.cancel()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raw = await self.node.store.get_meta(CURSOR_KEY)
        self.cursor = int.from_bytes(raw, "big") if raw else 0
        self._closing.update(ids_from_bytes(await self.node.store.get_meta(CLOSING_KEY)))
        self._takes_due.update(self.node.payer_channels)
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            task_status.started()
            while True:
                try:
                    await self.step()
                except (P2payError, OSError) as exc:
                    log.warning("watcher step failed: %s", exc)
                await self._rest()
                if self._wake.is_set():  # poked: a new event for the next poke
                    self._wake = trio.Event()

    async def _rest(self) -> None:
        """Wait `watch_interval`, or until `poke`.

        Under the simulator's clock (`p2pay.sim.clock`, found as the clock's ``sim_wakes``)
        the clock reschedules the task itself at the same instant, without a deadline that
        expires by raising and catching `trio.Cancelled`: 1,000 watchers wait every 30
        simulated seconds, and such a wait costs a third (7 against 20 us, measured). On
        any other clock (every real node), trio's timeout.
        """
        interval = self.node.config.watch_interval
        wakes = current_wakes()
        if wakes is None or self._wake.is_set():
            with trio.move_on_after(interval):
                await self._wake.wait()
            return
        with trio.CancelScope() as self._resting:  # `poke` cancels it
            await wakes.sleep_until(trio.current_time() + interval)
        self._resting = None

    async def step(self) -> None:
        """One pass: follow events (closes first), then do the periodic duties."""
        node = self.node
        while True:
            events, cursor = await node.ledger.events_for(node.account, self.cursor, 500)
            # C-8: a payer closing a channel we are paid on is answered before anything else
            due = len(self._closing)
            noted = False
            for event in events:
                channel = event.fields.get("channel")
                if event.kind == "ChannelClosing" and isinstance(channel, bytes):
                    # or being adopted: its read may predate the close (`_defend_closes`)
                    if channel in node.payee_channels or channel in node._channel_locks:
                        self._closing.add(channel)
                    elif event.fields.get("payee") == node.account:
                        node.book.note_closing(channel)  # adopted CLOSING if ever ours
                        noted = True
            if noted:
                # staged before the cursor that passes their events: a restart after it
                # still adopts them CLOSING (attack round 19: they were in memory only)
                node.book.stage_closing_seen()
            if len(self._closing) != due:
                # staged before the cursor that passes their events: a restart before they
                # are read finds them due (a crash lost them, and with them the close)
                self._stage_closing()
            await self._defend_closes()
            for event in events:
                try:
                    await self._on_event(event)
                except (P2payError, OSError) as exc:
                    log.warning("event %s #%d: %s", event.kind, event.seq, exc)
                self.cursor = event.seq
            if cursor > self.cursor:
                self.cursor = cursor
                node.persister.stage(meta={CURSOR_KEY: self.cursor.to_bytes(8, "big")})
            elif events:
                node.persister.stage(meta={CURSOR_KEY: self.cursor.to_bytes(8, "big")})
            if len(events) < 500:
                break
        await self._read_owed_channels()
        await self._claims_seen_early()
        if self.steps % RESCAN_STEPS == 0:
            await self._rescan_soon()
        await self._redeem_due()
        await self._finalize_closes()
        await self._file_claims()
        await self._resolve_claims()
        await self._check_takes()
        self.steps += 1
        if self.steps % 100 == 1:
            await node.store.prune_responses(node.prune_before())  # N13

    async def _defend_closes(self) -> None:
        """Read each payee channel a ChannelClosing named from the ledger and redeem it at
        once (C-8). One whose read failed stays due and is tried again at every step: its
        event is not read again (the cursor moved on), and until the read succeeds the
        channel is OPEN in our view, redeemed by the ordinary policy only (often not before
        the close ends: a transient ledger error lost every unredeemed charge; attack
        round 17), and its requests still being served would be charged (protocol.md
        13.3). Once CLOSING, `_redeem_due` redeems it at every step while it owes."""
        node = self.node
        due = len(self._closing)
        for channel in list(self._closing):
            ch = node.payee_channels.get(channel)
            if ch is None:
                # A channel whose adoption (its first request, `ChannelBook.
                # payee_channel_for`) is under way stays due: the adoption's read may have
                # gone out before the StartClose and come back after this event (a slow or
                # lagging endpoint), and the channel would be adopted OPEN and never read
                # again (attack round 18). Else nothing was charged on it: not ours.
                if channel not in node._channel_locks:
                    self._closing.discard(channel)
                continue
            try:
                await node.refresh_channel(channel)
                if ch.status is not ChannelStatus.OPEN:  # read from the ledger
                    self._closing.discard(channel)
            except (P2payError, OSError) as exc:
                # redeemed all the same (the ledger refuses what is not owed): an endpoint
                # that cannot read the channel at `head - confirmations` (a state it
                # pruned) kept every forced redeem back, and the close gave the charges
                # back (attack round 47)
                log.warning("read of closing channel %s: %s", channel.hex(), exc)
            try:
                await self._redeem(ch, force=True)
            except (P2payError, OSError) as exc:
                log.warning("redeem on close of %s: %s", channel.hex(), exc)
        if len(self._closing) != due:
            self._stage_closing()

    async def _read_owed_channels(self) -> None:
        """Read from the ledger, every quarter of our `min_challenge_ms` (the shortest
        challenge period we accept), each payee channel that holds a charge to redeem and
        is OPEN in our view; one the ledger shows closing is due as at its ChannelClosing
        event (C-8). That event was the only thing that told us: an endpoint that left it
        out of `events_for` kept the channel OPEN to us until the payer's close ended, and
        every charge not yet redeemed was lost (attack round 37)."""
        node = self.node
        now = node.now()
        every = max(1, node.config.min_challenge_ms // 4)
        if self._owed_read_at is not None and 0 <= now - self._owed_read_at < every:
            return
        self._owed_read_at = now
        due = len(self._closing)
        for channel, ch in list(node.payee_channels.items()):
            if channel in self._closing or ch.status is not ChannelStatus.OPEN:
                continue
            if not self._owed(ch):
                continue
            try:
                info = await self._read_latest(channel)
            except Exception as exc:  # read again next time (a backend's surprise included)
                log.warning("cannot read payee channel %s: %r", channel.hex(), exc)
                continue
            if info is not None and info.state is not ChannelState.OPEN:
                log.warning("payee channel %s is %s: no event said so", channel.hex(), info.state)
                self._closing.add(channel)
        if len(self._closing) != due:
            self._stage_closing()
            await self._defend_closes()

    async def _claims_seen_early(self) -> None:
        """On a ledger that shows events only once confirmations bury them (an EVM
        ledger's ``confirmations``, settlement.md 10), the claims filed against us in the
        blocks not confirmed yet (`EvmLedger.claims_filed_against`): answered as soon as
        they are seen, as their ClaimFiled event would have them answered. Read only from
        the event k blocks later, a claim whose window was shorter than k block times
        ended unanswered and an honest provider was slashed (attack round 47). Its event
        comes later all the same, and finds it held and its answer under way or done."""
        node = self.node
        ledger = node.ledger
        if not self._lagging() or not node.behaviour.answers_claims:
            return
        try:
            filed: list[Event] = await ledger.claims_filed_against(node.account)  # type: ignore[attr-defined]
        except (P2payError, OSError) as exc:
            log.warning("claims in blocks not confirmed yet: %s", exc)
            return
        for event in filed:
            window_ends = self._note_filed(event.fields, event.at)
            if window_ends is not None:
                self._defend_soon(event.fields["claim"], window_ends)

    async def _read_claim(self, claim_id: bytes) -> Claim | None:
        """A claim against us, on a ledger with confirmations (settlement.md 10): OPEN if
        the latest block or the block ``head - confirmations`` shows it OPEN, else as the
        latest block shows it. The latest block first: a claim younger than k blocks shows
        only there (`_claims_seen_early`). The confirmed one too: an endpoint that shows a
        claim gone or answered at the latest block only (a lie, or our answer in a block a
        reorganisation then drops) ended the answer task, and an honest provider was
        slashed (attack round 48). So a claim is let go only once its end is k blocks deep
        (once we answered it, whatever the latest block shows: `_read_defended`)."""
        if not self._lagging():
            return await self.node.ledger.claim(claim_id)
        return _open_first(*await self._read_claim_both(claim_id))

    async def _read_claim_both(
        self, claim_id: bytes, answered: bool = False
    ) -> tuple[Claim | None, Claim | None]:
        """A claim as of the latest block, and (unless that shows it OPEN and we have not
        `answered` it) as of block ``head - confirmations`` (None then, or if that read
        fails while the latest block shows it OPEN). A ledger with confirmations only."""
        ledger = self.node.ledger
        latest: Claim | None = await ledger.claim(claim_id, latest=True)  # type: ignore[call-arg]
        is_open = latest is not None and latest.state is ClaimState.OPEN
        if is_open and not answered:
            return latest, None
        try:
            return latest, await ledger.claim(claim_id)
        except (P2payError, OSError):
            if is_open:
                return latest, None  # answered again: it costs gas, never the stake
            raise

    async def _read_defended(
        self, claim_id: bytes, answered: bool
    ) -> tuple[Claim | None, _Body | None, bool]:
        """`_read_claim` for `_defend`, stripped of its body at once (`_light`: the task
        holds no body while it waits, attack round 18), and whether it reads OPEN k blocks
        back only (our answer in, not yet deep). Once we `answered` it (in this task or an
        earlier one: `_answered`), a reading at ``head - confirmations`` that shows it
        ended lets it go (`_open_first`); a rescan that starts its task again (a stale
        latest block shows it OPEN) reads it again and lets it go again, never answering.
        It is not made final: one lying reading there, with a reorganisation that dropped
        our answer, then kept it from ever being answered again (attack round 53)."""
        if not self._lagging():
            return *_light(await self.node.ledger.claim(claim_id)), False
        latest, confirmed = await self._read_claim_both(claim_id, answered)
        read = _open_first(latest, confirmed, answered)
        deep_only = read is not None and read is confirmed
        del latest, confirmed
        return *_light(read), deep_only

    def _lagging(self) -> bool:
        """Whether the ledger shows states only once confirmations bury them (an EVM
        ledger's ``confirmations``)."""
        return bool(getattr(self.node.ledger, "confirmations", 0))

    async def _redeemed_at_latest(self, channel: bytes) -> int:
        """On a ledger with confirmations, what the latest block shows `channel` redeemed
        (0 elsewhere, or if unreadable): a redeem that total covers is not sent again.
        Our reading of it (`PayeeChannel.redeemed`) is k blocks old, so a payer's close
        had us send a redeem at every watcher step, each after the first paying 0 and
        costing gas, until our own redeem was k blocks deep (attack round 47: 8 for one
        close). Only a send is saved: one a reorganisation drops shows at the latest block
        no more, and is sent again."""
        sent = self._redeem_sent.get(channel, 0)
        if not sent or not self._lagging():
            return 0
        try:
            info = await self._read_latest(channel)
        except (P2payError, OSError) as exc:
            log.info("latest reading of channel %s: %s", channel.hex(), exc)
            return 0
        # believed up to what we asked for ourselves: an endpoint that shows a redeemed
        # total at the latest block only (a lie) stopped every redeem, and the close gave
        # the charges back (attack round 48)
        return 0 if info is None else min(info.redeemed, sent)

    async def _read_latest(self, channel: bytes) -> Channel | None:
        """`channel` as of the latest block, on a ledger that shows states only once
        confirmations bury them (an EVM ledger's ``confirmations``, settlement.md 10): a
        payer's close is a threat to answer at once, not a state to trust, and read k
        blocks late it ended before we redeemed when k block times exceeded its challenge
        period (attack round 47). Any other ledger shows the latest state anyway."""
        ledger = self.node.ledger
        if self._lagging():
            info: Channel | None = await ledger.channel(channel, latest=True)  # type: ignore[call-arg]
            return info
        return await ledger.channel(channel)

    def _stage_closing(self) -> None:
        """Stage the payee channels still due (`_closing`, at most one per payee channel)."""
        self.node.persister.stage(meta={CLOSING_KEY: ids_to_bytes(sorted(self._closing))})

    # -- events

    async def _on_event(self, event: Event) -> None:
        node = self.node
        f = event.fields
        me = node.account
        kind = event.kind
        if kind in ("ToppedUp", "Redeemed", "ChannelClosing", "ChannelClosed"):
            channel = f.get("channel")
            if isinstance(channel, bytes) and (
                channel in node.payee_channels or channel in node.payer_channels
            ):
                await node.refresh_channel(channel)
            if kind in ("Redeemed", "ChannelClosed") and channel in node.payer_channels:
                assert isinstance(channel, bytes)
                self._takes_due.add(channel)
        elif kind == "ClaimFiled" and f.get("respondent") == me:
            window_ends = self._note_filed(f, event.at)
            if window_ends is not None:
                # (None: settled as it was filed, nothing to answer; its answer task's read
                # came before every claim still open, its key being its filing time, and a
                # stranger filing such claims without pause starved an open claim's read,
                # attack round 25)
                self._defend_soon(f["claim"], window_ends)
        elif kind == "ClaimFiled" and f.get("claimant") == me:
            self._claim_state(f["claim"], "claimant", "open")
        elif kind == "ClaimAnswered" and f.get("claimant") == me:
            await self._settle_claim(f["claim"])
        elif kind == "ClaimAnswered" and f.get("respondent") == me:
            outcome = f.get("outcome")
            self._claim_state(f["claim"], "respondent", str(outcome or "answered"))
        elif kind == "ClaimUpheld" and f.get("claimant") == me:
            node.counters.claims_won += 1
            await self._settle_claim(f["claim"])
        elif kind == "ClaimUpheld" and f.get("respondent") == me:
            self._claim_state(f["claim"], "respondent", "upheld")
            log.warning("slashed for claim %s", f["claim"].hex())
            await node.refresh_stake()
        elif kind in ("Staked", "UnstakeRequested", "StakeWithdrawn") and f.get("account") == me:
            await node.refresh_stake()

    def _claim_state(
        self, claim_id: bytes, role: str, state: str, request_hash: bytes | None = None
    ) -> None:
        self._stage_claim(
            ClaimRecord(
                claim_id=claim_id,
                role=role,
                state=state,
                request_hash=claim_id if request_hash is None else request_hash,
                updated_at=self.node.now(),
            )
        )

    def _stage_claim(self, claim: ClaimRecord, **also: Any) -> None:
        """Stage a claim record (with `also`, other changes of the same `stage` call): the
        only way this watcher writes one, so `_resolve_claims` reads the records again."""
        self._claims_staged = self.node.persister.stage(claim=claim, **also)
        self._none_open_read = False

    def _request_state(self, request_hash: bytes, state: str) -> None:
        """Stage our request's new `state` as a narrow update (`RequestUpdate`), applied to
        the record as it is when committed: never a copy read before an await, which a
        change staged meanwhile (not yet durable when read) would be overwritten by, and
        staged in the same synchronous step as the channel change it goes with, so one
        commit holds both (claims.md 6: a restart counts as abandoned exactly what the
        channel counted as outstanding)."""
        self.node.persister.stage(
            request_update=RequestUpdate(
                request_hash=request_hash, state=state, updated_at=self.node.now()
            )
        )

    def _still_outstanding(self, record: OutgoingRequest) -> bool:
        """Whether our channel still counts `record`'s request as outstanding (in flight or
        abandoned): no answer settled it since `record` was read. Synchronous: an answer is
        taken, and its request's state staged, in one step (`_on_receipt`), so a state
        staged from `record` right after this returns True overwrites nothing newer."""
        ch = self.node.payer_channels.get(record.channel)
        return ch is None or ch.expects(record.n)

    # -- claims against us (respondent): answered concurrently, retried (C-6, C-7)

    def _defend_soon(self, claim_id: bytes, window_ends: int) -> None:
        """Start the answer task of a claim against us, unless one runs already; its
        reads wait for the ledger earliest `window_ends` first (0: unknown, first)."""
        if not self.node.behaviour.answers_claims or self._tasks is None:
            return
        if claim_id in self._defending:
            return
        self._defending.add(claim_id)
        self._tasks.start_soon(self._defend, claim_id, window_ends)

    async def _rescan_soon(self) -> None:
        """Start `_defend_open_claims` as a task of its own, unless one runs: it reads the
        ledger once per claim it looks at, and in the step it held up every other duty
        (events, redeems on a close, C-8) for as many reads as a stranger had filed claims
        (attack round 20). Inline when the watcher's tasks do not run (a bare `step`)."""
        if self._rescanning or not self.node.behaviour.answers_claims:
            return
        if self._tasks is None:
            await self._defend_open_claims()
            return
        self._rescanning = True
        self._tasks.start_soon(self._rescan)

    async def _rescan(self) -> None:
        delay = BACKOFF_MIN
        try:
            while True:
                try:
                    await self._defend_open_claims()
                    return
                except Exception as exc:  # a backend's surprise: never the node's end (r. 24)
                    log.warning("rescan of the claims against us failed, retrying: %r", exc)
                # again soon, not RESCAN_STEPS later: a claim whose event passed before a
                # restart is found no other way, and one failed read of the first listing
                # left it unanswered past its window (attack round 28: UPHELD)
                await trio.sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX)
        finally:
            self._rescanning = False

    async def _defend_open_claims(self) -> None:
        """Start the answer of every claim against us still OPEN that no task answers (at
        the first step: those a restart found; later: a safety net under the ClaimFiled
        events, every `RESCAN_STEPS` steps). The claims are first listed from their filings
        (`_list_filings`, under `_listing`); the reads that look for open ones do not hold
        it: the answers that need the list wait for one ledger read, not for theirs."""
        if not self.node.behaviour.answers_claims:
            return
        await self._listed_once()
        await self._read_claims_against()

    async def _listed_once(self) -> None:
        """List the claims against us once (`_list_filings`); the other callers wait."""
        if not self._claims_listed:
            async with self._listing:
                if not self._claims_listed:
                    await self._list_filings()

    async def _list_filings(self) -> None:
        """Hold every claim against us by its ClaimFiled event's slice, with its window
        end, from the ledger's filings (`Ledger.claim_filings_of`): one read, no claim's
        body, whatever the number of claims (claims.md C-7). A restart used to read every
        claim ever filed against us, one ledger read each, before answering any claim
        that needed them as evidence (attack round 22: N old claims held the first
        answers for N reads)."""
        filings = await self.node.ledger.claim_filings_of(self.node.account, "respondent")
        for event in filings:
            if event.fields.get("respondent") == self.node.account:
                self._note_filed(event.fields, event.at)
        self._claims_listed = True

    async def _read_claims_against(self) -> None:
        """Read from the ledger the claims against us that may be OPEN in their windows and
        that no task answers, and start their answers; list any claim not listed yet (its
        event missed). By id, one at a time, each stripped of its body as soon as it is
        read (`_light`): reading every claim whole at once held every body at once (up to
        the ledger's ``max_claim_body`` each, and free REFUSED claims cost a payer nothing:
        33.7 MB per rescan for 32 claims of 512 KiB, threat model, memory bound). Those
        not listed first (their windows unknown), then earliest window end first. Not
        read: a claim past its window as both the ledger's clock and the node's read now
        (its filing says when it ends; not final: looked at again next time), one settled
        as it was filed, and one read past its window and no longer OPEN (`_final`:
        nothing changes it any more). Both clocks: on the ledger's alone, one reading
        ahead at a restart's first rescan skipped an open claim whose ClaimFiled event
        the node had passed before it stopped, until the next rescan, past its window
        (attack round 27: UPHELD). Not final on one reading alone: a claim
        read answered within its window (a lying or lagging endpoint, an answer of ours
        acknowledged that never landed), or read OPEN past its window, is read again
        (attack round 22: either dropped for good got an honest provider slashed)."""
        ledger, me = self.node.ledger, self.node.account
        ids = await ledger.claim_ids_of(me, "respondent")
        now = await ledger.now()
        early = min(now, self.node.now())  # a window has ended only if both clocks say so
        due: list[tuple[int, bytes]] = []
        for claim_id in ids:
            if claim_id in self._final or claim_id in self._defending:
                continue
            window_ends = self._window_of.get(claim_id)
            if window_ends is None or early <= window_ends:
                due.append((0 if window_ends is None else window_ends, claim_id))
        due.sort()
        for _, claim_id in due:
            if claim_id in self._defending:
                continue  # its ClaimFiled event came meanwhile
            try:
                claim, _ = _light(await self._read_claim(claim_id))
            except Exception as exc:  # read again next time; the others go on (a reply an
                # EVM endpoint garbles raises ValueError or a decoding error: one ended
                # the node and got an honest provider slashed, attack round 24)
                log.warning("cannot read claim %s: %r", claim_id.hex(), exc)
                continue
            if claim is None or claim.respondent != me:
                continue
            self._list_claim(claim)
            if claim.state is not ClaimState.OPEN:
                if now > claim.window_ends:
                    self._final.add(claim_id)
                continue
            if early <= claim.window_ends:  # its task reads the ledger's clock again
                self._defend_soon(claim_id, claim.window_ends)

    async def _defend(self, claim_id: bytes, window_ends: int) -> None:
        """Answer one claim against us, retrying with backoff until its window ends, and
        until the ledger reads it no longer OPEN: an answer acknowledged that never landed
        is sent again (attack round 23: only the rescan sent it again, and a flood of free
        claims still in their windows made the rescan slower than the claim's window)."""
        node = self.node
        answer: _Answer | None = None
        sent = False  # the ledger acknowledged our answer (counted once)
        use_evidence = True
        delay = BACKOFF_MIN
        try:
            while True:
                try:
                    async with self._reads.hold(window_ends):
                        claim, body, deep_only = await self._read_defended(
                            claim_id, claim_id in self._answered
                        )
                    if claim is None or claim.state is not ClaimState.OPEN:
                        return
                    if sent and deep_only:
                        # Ours is in at the latest block, not yet k blocks deep: wait,
                        # reading, and answer again if a reorganisation drops it (attack
                        # round 48: the task ended at the latest reading, and an answer a
                        # 1-block reorganisation dropped was never sent again: UPHELD)
                        delay = BACKOFF_MIN
                        await trio.sleep(node.config.watch_interval)
                        continue
                    window_ends = claim.window_ends
                    ended = await node.ledger.now() > claim.window_ends
                    if ended and node.now() > claim.window_ends:
                        log.error("claim %s: its window ended unanswered", claim_id.hex())
                        return
                    if ended:
                        # by the ledger's clock alone: one reading ahead ended this task
                        # while the claim could be answered, and nothing started another
                        # before the next rescan (attack round 28: UPHELD). Answered all
                        # the same: a clock that reads ahead for the whole window (an EVM
                        # endpoint's one reply ahead is kept, `EvmLedger.now`) kept every
                        # answer back, and honest answers were UPHELD (attack round 37); the
                        # ledger refuses one past the window (WINDOW_CLOSED, final)
                        log.warning(
                            "claim %s: past its window by the ledger's clock only", claim_id.hex()
                        )
                    if answer is None:
                        # handlers through claims run at most max_claim_answers at once
                        # (`_answer_claim`); looking up stored answers and evidence does
                        # not wait for them, so a flood never keeps a cheap answer back
                        answer = await self._answer_claim(claim, body, use_evidence)
                    if answer is not None:
                        async with self._answering.hold(claim.window_ends):
                            posted = await self._post(claim_id, answer)
                        if not posted:
                            # never a wrong or an empty body: made again next time
                            log.warning(
                                "claim %s: our stored answer is gone or another: made again",
                                claim_id.hex(),
                            )
                            answer = None
                        elif not sent:
                            sent = True
                            self._answered.add(claim_id)
                            node.counters.claims_answered += 1
                            self.answers[answer.outcome] += 1
                            self._claim_state(claim_id, "respondent", answer.outcome)
                            log.info("answered claim %s: %s", claim_id.hex(), answer.outcome)
                        else:
                            log.warning("claim %s still open: answered again", claim_id.hex())
                        # read again after the wait: done once it is no longer OPEN
                except SettlementError as exc:
                    if exc.code in _FINAL and not (self._lagging() and sent):
                        log.warning("answer to claim %s refused: %s", claim_id.hex(), exc)
                        return
                    if exc.code in _BAD_ANSWER:
                        if answer is not None and answer.evidence is not None:
                            answer, use_evidence = None, False  # answer with a response
                            continue
                        log.error("answer to claim %s refused: %s", claim_id.hex(), exc)
                        return
                    log.warning("answer to claim %s failed, retrying: %s", claim_id.hex(), exc)
                except (P2payError, OSError) as exc:
                    log.warning("answer to claim %s failed, retrying: %s", claim_id.hex(), exc)
                except Exception as exc:  # a bug or a backend's surprise: never the node's end
                    log.error("answer to claim %s failed: %r", claim_id.hex(), exc)
                    if answer is not None and answer.evidence is not None:
                        answer, use_evidence = None, False  # answer with a response instead
                await trio.sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX)
        finally:
            self._defending.discard(claim_id)

    async def _post(self, claim_id: bytes, answer: _Answer) -> bool:
        """Submit `answer` at its turn at the ledger, a stored response with its body read
        back from the store (`_with_body`); False if that is gone or another."""
        node = self.node
        if answer.evidence is not None:
            await node.ledger.answer_claim(node.key, claim_id, evidence=answer.evidence)
            return True
        response = await self._with_body(answer)
        if response is None:
            return False
        await node.ledger.answer_claim(node.key, claim_id, response)
        return True

    async def _with_body(self, answer: _Answer) -> Response | None:
        """`answer`'s response with its body: as held if held whole, else read back from
        the store, if the store holds that very response (same signed fields and
        signature, body matching its hash); None if it is gone or another."""
        held = answer.response
        assert held is not None
        if not answer.stored:
            return held
        stored = await self.node.store.response(held.request_hash)
        if stored is None:
            return None
        try:
            frame = decode_held_frame(stored.frame)
        except P2payError:
            return None
        if (
            not isinstance(frame, Response)
            or frame.signing_bytes != held.signing_bytes
            or frame.signature != held.signature
            or not frame.body_matches()
        ):
            return None
        return frame

    async def _answer_claim(
        self, claim: Claim, body: _Body | None, use_evidence: bool
    ) -> _Answer | None:
        """The answer to a claim against us (held without its request's body, `_light`),
        or None to try again later.

        With a handler slot free (at most max_claim_answers at once), the claim is read
        whole and answered in one pass, served through the claim if need be. Without one,
        the stored answers and evidence are looked up with the signed fields only; a
        request to serve waits for a slot with nothing more, and its body is read from
        the ledger once it has one (everything looked up again then): each claim waiting
        held its body, twice (the frame and the decoded request), so a flood of claims on
        a slow service held up to the ledger's max_claim_body each until served (attack
        round 18: 48 claims of 512 KiB, 48 MiB). One whose admission refuses it at once
        (an unknown service, a price below the service's, a body it does not take, a
        channel not open) does not wait. Waiting counts against the handler's deadline
        (`_serve_claimed`: past it, the request is refused DEADLINE_EXCEEDED, C-1)."""
        slot = False
        try:
            slot = self._limiter.try_take()
            if not slot:
                found = await self._prepare_answer(claim, use_evidence, slot=None)
                if not isinstance(found, _Serve):
                    return found
                if not self._refused_at_once(claim, body):
                    wait = max(0, self._handler_deadline(claim) - await self._serving_now(claim))
                    with trio.move_on_after(wait / 1000):
                        # earliest window end first (C-1): in arrival order a claim with
                        # an early window waited behind later ones and was refused at its
                        # handler deadline (attack round 36)
                        await self._limiter.take(claim.window_ends)
                        slot = True
            # whole, everything looked up again: with a slot, or without one when the
            # admission refuses it or the deadline passed (refused DEADLINE_EXCEEDED),
            # then as many at once as there are slots (`_whole_reads`)
            async with (
                contextlib.nullcontext() if slot else self._whole_reads.hold(claim.window_ends)
            ):
                full = await self._read_claim(claim.id)
                if full is None or full.state is not ClaimState.OPEN:
                    return None
                answer = await self._prepare_answer(full, use_evidence, slot=slot)
            assert not isinstance(answer, _Serve)
            return answer
        finally:
            if slot:
                self._limiter.release()

    def _refused_at_once(self, claim: Claim, body: _Body | None) -> bool:
        """Whether the admission of `claim`'s request (`admit_claimed`) would refuse it
        without a handler: the checks that need no other state, its body's as it was
        read (`body`; None: unreadable, `_prepare_answer` deals with it)."""
        node = self.node
        try:
            request = decode_held_frame(claim.request_frame)
        except P2payError:
            return True
        if body is None or not isinstance(request, Request):
            return True
        ch = node.payee_channels.get(request.channel)
        service = node.services.get(request.service)
        return (
            ch is None
            or not ch.is_open
            or request.paid > ch.deposit
            or service is None
            or request.price < service.price
            or body.length > service.max_body
            or not body.matches
        )

    async def _serving_now(self, claim: Claim) -> int:
        """The time (ms) a handler deadline through `claim` is measured against: the later
        of the ledger's clock and ours, so that neither reading behind (a lying or lagging
        endpoint) lets a handler run past the claim's window (attack round 37: UPHELD); one
        ahead only refuses the request sooner (DEADLINE_EXCEEDED, nothing charged). But a
        ledger clock past the window while ours is not is not taken (an answer could land
        only if it lies, and then ours is right: round 22's glitch was served, DELIVERED)."""
        ledger_now, mine = await self.node.ledger.now(), self.node.now()
        if ledger_now > claim.window_ends:
            return mine
        return max(ledger_now, mine)

    def _handler_deadline(self, claim: Claim) -> int:
        """Ledger ms by which a handler serving `claim`'s request must finish: its window
        end minus the answer margin (at least 3 block intervals when the ledger states its
        block time, `block_time_ms`; EvmLedger does not yet), at most a third of the
        window."""
        block_ms = getattr(self.node.ledger, "block_time_ms", None)
        wanted = self.node.config.claim_answer_margin_ms
        if type(block_ms) is int and block_ms > 0:
            wanted = max(wanted, 3 * block_ms)
        margin = min(wanted, (claim.window_ends - claim.filed_at) // 3)
        return claim.window_ends - margin

    async def _prepare_answer(
        self, claim: Claim, use_evidence: bool, *, slot: bool | None
    ) -> _Answer | _Serve | None:
        """The answer to a claim against us, or None to try again later.

        In order: the signed answer we stored for the request (OK or refusal); a request
        the payer signed that conflicts with the claimed one (evidence); else the request
        never reached us: admit it by the rules of a stream (`PayeeChannel.admit_claimed`)
        and serve it, or refuse it, with a signed response.

        The channel's completions are watched from before the store is read until the
        admission (claims.md C-6): a request answered on a stream meanwhile (its answer
        staged, not yet readable) is not taken for a gap and served a second time; the
        next try finds its stored answer.
        """
        node = self.node
        try:
            request = decode_held_frame(claim.request_frame)
        except P2payError as exc:
            log.error("claim %s carries no usable request: %s", claim.id.hex(), exc)
            return None
        if not isinstance(request, Request):
            log.error("claim %s carries no request", claim.id.hex())
            return None
        refused: RemoteProtocolError | None = None
        ch: PayeeChannel | None = None
        try:
            ch = await node._payee_channel_for(request, claim.claimant)
        except RemoteProtocolError as exc:  # e.g. CHALLENGE_TOO_SHORT: never adopted
            refused = exc
        if ch is None:
            return await self._answer_unserved(claim, request, refused)
        start = ch.watch_completions(request)
        try:
            found = await self._answer_watched(ch, claim, request, use_evidence, start)
        finally:
            ch.unwatch_completions(request)  # (not while a handler serves it, below)
        if not isinstance(found, _Gap):
            return found
        if slot is None:
            return _SERVE  # `_answer_claim` takes a handler slot and reads the body
        # synchronous from `_answer_watched`'s last check to the admission in `_serve_claimed`
        served = await self._serve_claimed(ch, request, claim, found.same_n, slot=slot)
        return None if served is None else _stored(served)

    async def _stored_answer(self, claim: Claim, request: Request) -> _Answer | None:
        """The signed answer we stored for the claimed request (everything staged before
        this read, and a commit being written, included), kept until the claim ends."""
        await self.node.persister.flush()
        response = await self._read_kept(request.hash, claim)
        return None if response is None else _stored(response)

    async def _read_kept(self, request_hash: bytes, claim: Claim) -> Response | None:
        """The response we stored for `request_hash`, kept until `claim`'s window has ended
        (`_keep_for`; durable on return), or None if we stored none. Read at most
        `max_claim_answers` at a time, earliest window end first (`_kept_reads`): a stored
        frame holds our answer's body, up to the ledger's max_claim_body when it answered
        a claim (`claim_answer_limit`: over the wire's limit, attack round 22), and the
        keeping write stages it again; every claim of a burst held one at once (round 34).
        """
        async with self._kept_reads.hold(claim.window_ends):
            stored = await self.node.store.response(request_hash)
            if stored is None:
                return None
            frame = decode_held_frame(stored.frame)
            if not isinstance(frame, Response):
                return None
            await self._keep_for(stored, claim)
            return frame

    async def _answer_unserved(
        self, claim: Claim, request: Request, refused: RemoteProtocolError | None
    ) -> _Answer | None:
        """`_prepare_answer` for a request on no channel we are paid on: its stored answer
        if any, else our signed refusal if the channel was refused (`refused`)."""
        node = self.node
        stored = await self._stored_answer(claim, request)
        if stored is not None:
            return stored
        if refused is not None:
            response = Response.create(
                node.signer,
                request=request,
                status=refused.code.value,
                price=0,
                spent=0,
                body=refusal_body(refused.message, refused.details),
            )
            return _Answer(response=response)
        log.error("claim %s is on a channel we are not paid on", claim.id.hex())
        return None

    async def _answer_watched(
        self, ch: PayeeChannel, claim: Claim, request: Request, use_evidence: bool, start: int
    ) -> _Answer | _Gap | None:
        """`_prepare_answer` on our channel `ch`, answers to ``request.n`` watched since
        `start`: the answer, None to try again, or `_Gap` (no answer to the number: serve
        the request through the claim, with no await before its admission)."""
        node = self.node
        stored = await self._stored_answer(claim, request)
        if stored is not None:
            return stored
        if request.paid > ch.deposit:
            # FileClaim checked the slice against the ledger's deposit: ours is stale (a
            # top-up whose event we were not sent), not a reason to refuse it (C-6)
            await node.refresh_channel(ch.channel)
        pending = request.n in ch.pending
        if pending:
            late = await self._refuse_late(ch, request, claim)
            if late is not None:
                return _stored(late)
        seen: list[Request] = []
        for other in await self._known_requests(ch, request):
            if other.hash != request.hash and other.channel == request.channel:
                seen.append(other)
        # Requests of the other claims on this channel are payer-signed too: two claims
        # whose slices overlap, or that share a number, refute each other (claims.md 2),
        # even when neither reached us on a stream.
        seen.extend(await self._claimed_requests(claim, request))
        if use_evidence:
            evidence = self._evidence(ch, request, seen)
            if evidence is not None:
                await self._read_kept(evidence.hash, claim)  # its answer kept too
                return _Answer(evidence=_bodiless(evidence))
            # a request consumed on a stream while we read, in conflict with the claimed
            # one (another number, overlapping slices; attack round 15), is evidence too
            overlap = ch.overlap_seen(request)
            if overlap is not None and self._evidence(ch, request, [overlap]) is not None:
                return _Answer(evidence=_bodiless(overlap))
        if pending or ch.completed_since(request.n, start) or ch.overlap_seen(request):
            # Its number is being served (on a stream, or through another claim): its
            # stored answer, or that request as evidence, comes when it ends. Evidence
            # first: the queued windows let the claim being served have a later window
            # (and handler deadline) than this one, so waiting for it could outlast this
            # window while a payer-signed request numbered alike already refutes it (C-1).
            # Or it was answered while we read: not a gap (C-6), its answer is stored next.
            return None
        return _Gap(same_n=any(other.n == request.n for other in seen))

    async def _keep_for(self, stored: StoredResponse, claim: Claim) -> None:
        """Keep a stored answer (or evidence) at least until the claim's window has ended.

        A stored response expires two claim windows after its request's deadline, but a
        claim's window can end later (a slot more for each claim open against the stake,
        settlement.md FileClaim): a restart during a long flood must still find
        what answers it. Durable before the answer is submitted."""
        node = self.node
        until = min(MAX_TIME, claim.window_ends + node.config.response_retention_ms)
        if stored.expires_at >= until:
            return
        generation = node.persister.stage(response=dataclasses.replace(stored, expires_at=until))
        await node.persister.durable(generation)

    async def _refuse_late(
        self, ch: PayeeChannel, request: Request, claim: Claim
    ) -> Response | None:
        """The claimed request itself is still being served on a stream and its own
        deadline has passed: it can no longer be charged (C-4), so its answer is a signed
        DEADLINE_EXCEEDED, stored now; the handler's late completion releases the
        reservation uncharged and sends this very answer (N9: a hung handler must not get
        an honest provider slashed, C-1). None otherwise (in time, or another request,
        e.g. one admitted through another claim, holds the number)."""
        node = self.node
        deadline = ch.deadlines.get(request.n)
        if (
            request.hash not in node._unanswered
            or deadline != request.deadline
            or node.now() <= deadline
        ):
            return None
        late = "not answered before the request's deadline; nothing charged"
        response = Response.create(
            node.signer,
            request=request,
            status=ErrorCode.DEADLINE_EXCEEDED.value,
            price=0,
            spent=ch.spent,
            body=refusal_body(late, {"deadline": request.deadline}),
        )
        # Registered before anything awaits: the completion can no longer answer otherwise.
        node._late_refused[request.hash] = response.to_frame()
        node.counters.refused[ErrorCode.DEADLINE_EXCEEDED.value] += 1
        await self._stage_answer(ch, request, claim, response)
        return response

    def _note_filed(self, fields: dict[str, Any], at: int) -> int | None:
        """Hold a claim filed against us (its ClaimFiled event's `fields`, filed at `at`)
        by what the event says of its request (`Slice.of_filed`: number, slice, deadline,
        hash), read from the ledger only if an answer finds it in conflict
        (`_claimed_requests`); one whose event names no channel or slice is read by the
        next answer on its channel (`_unlisted`). Returns its window end, or None if it
        was settled as it was filed (FileClaim with our own signed refusal, claims.md 3:
        nothing to answer) or the event does not say (0 then, unknown)."""
        claim_id, channel = fields["claim"], fields.get("channel")
        window_ends = fields.get("window_ends")
        if type(window_ends) is not int:
            window_ends = 0
        elif window_ends <= at:
            self._final.add(claim_id)
            window_ends = None
        else:
            self._window_of[claim_id] = window_ends
        if claim_id in self._listed:
            return window_ends
        piece = Slice.of_filed(fields)
        if isinstance(channel, bytes) and piece is not None:
            self._claimed.setdefault(channel, ConflictIndex()).add(piece)
            self._listed.add(claim_id)
            return window_ends
        self._unlisted.add(claim_id)
        if isinstance(channel, bytes):
            self._unlisted_on[claim_id] = channel
        return window_ends

    def _list_claim(self, claim: Claim) -> None:
        """Keep a claim against us (its request decoded) for `_claimed_requests`, in the
        place of its event's slice if it was held by that."""
        self._unlisted.discard(claim.id)
        self._unlisted_on.pop(claim.id, None)
        self._listed.add(claim.id)
        self._window_of[claim.id] = claim.window_ends
        on_channel = self._claimed.setdefault(claim.channel, ConflictIndex())
        if isinstance(on_channel.get(claim.id), Request):
            return
        try:
            request = decode_held_frame(claim.request_frame)
        except P2payError:
            request = None
        if (
            isinstance(request, Request)
            and request.channel == claim.channel
            and request.hash == claim.id
        ):
            # without its body: a conflict is in the signed fields, evidence is posted
            # without it (settlement.md AnswerClaim), and every claim against us is held
            # for as long as we run (a body is up to the ledger's max_claim_body)
            on_channel.add(_bodiless(request))
        else:
            on_channel.discard(claim.id)  # its event's slice: nothing the payer signed

    async def _claimed_requests(self, claim: Claim, claimed: Request) -> list[Request]:
        """The requests of the other claims against us on `claimed`'s channel that may be
        in conflict with it: one with its number, if any, and those among which one is in
        tiling conflict with it if any is (`ConflictIndex`).

        From the claims this watcher holds: the ledger's claims against us are read once
        (or by the rescan), by id, one at a time and without their bodies; a claim filed
        since is held by its ClaimFiled event's slice and read only when it conflicts
        with a claimed request (its signed bytes are the evidence). Reading and decoding
        the whole list for every claim answered made a flood of k claims cost k list
        reads: the answers slowed as the flood grew until windows ran out and an honest
        provider was slashed (C-1, C-7); reading every claim filed since on the channel
        before an answer, `max_claim_answers` at a time, still held each answer on a
        flooded channel for k / `max_claim_answers` reads."""
        ledger, me = self.node.ledger, self.node.account
        channel = claimed.channel
        await self._listed_once()  # one task reads; the others then find it all held

        # Under the channel's lock, side by side `max_claim_answers` at a time (`_reads`):
        # under the list's lock, every stranger's claim held up an answer with little
        # time left (attack round 22: 80 free claims at 50 ms a read, UPHELD).
        async def read(claim_id: bytes) -> None:
            try:
                async with self._reads.hold(claim.window_ends):  # for `claim`'s answer
                    filed, _ = _light(await self._read_claim(claim_id))
            except Exception as exc:  # read again next time; the others go on (round 24)
                log.warning("cannot read claim %s: %r", claim_id.hex(), exc)
                return
            self._unlisted.discard(claim_id)
            self._unlisted_on.pop(claim_id, None)
            if filed is not None and filed.respondent == me:
                self._list_claim(filed)
            index = self._claimed.get(channel)
            if index is not None and isinstance(index.get(claim_id), Slice):
                index.discard(claim_id)  # not a claim against us on this channel

        async def read_all(claim_ids: list[bytes]) -> None:
            async with trio.open_nursery() as reads:
                for claim_id in claim_ids:
                    reads.start_soon(read, claim_id)

        # the claims filed since whose events said no slice (on this channel, or on none),
        # one task per channel at a time: the others then find them held
        unlisted = [c for c in self._unlisted if self._unlisted_on.get(c, channel) == channel]
        if unlisted:
            async with self._listing_on[channel]:
                await read_all([c for c in unlisted if c in self._unlisted])
        self._list_claim(claim)
        index = self._claimed.get(channel)
        if index is None:
            return []
        # Not each of them: those among which one conflicts with `claimed` if any does
        # (every one carries the payer's signature: FileClaim checked it); a slice among
        # them is read only if it conflicts with `claimed` (its signed bytes are the
        # evidence), and each read puts a request in a slice's place: bounded rounds.
        horizon = ledger.params.max_deadline_horizon_ms
        for _ in range(len(index) + 1):
            found = index.candidates(claimed)
            unread = [
                c.hash
                for c in found
                if isinstance(c, Slice) and tiling_conflict(claimed, c, horizon)
            ]
            if not unread:
                return [c for c in found if isinstance(c, Request)]
            # side by side, under no lock: under the channel's, every answer that had to
            # read a conflicting claim waited for the others' reads (attack round 26:
            # refusal claims as twins of bonded claims, 25 to 29 of 40 UPHELD)
            await read_all(unread)
            if any(isinstance(index.get(c), Slice) for c in unread):
                break  # unreadable for now: compare with every request held instead
        return index.requests()

    async def _known_requests(self, ch: PayeeChannel, claimed: Request) -> list[Request]:
        """Payer-signed requests of `ch` this node holds that may conflict with `claimed`:
        the stored ones numbered near it, the channel's floor voucher (the highest pruned),
        its best vouchers and every request still being served (candidates for evidence,
        claims.md 2)."""
        node = self.node
        # Without their bodies, each read's as soon as it is read (`_held`): a request
        # answered on a stream is stored with its whole frame, and every claim waiting
        # for no handler slot looks here side by side (attack round 32: 128 claims near
        # 8 stored requests of 256 KiB, 53.9 MB traced). The signature is the evidence.
        held = _held(s.request_frame for s in await node.store.vouchers_near(ch.channel, claimed.n))
        floor = await node.store.floor_voucher(ch.channel)
        if floor is not None:
            held.extend(_held([floor.request_frame]))
        # A request still being served (`PayeeChannel.serving`, at most the channel's
        # requests in flight) is stored only once answered, whatever its number: one
        # numbered above the claimed one may already have a slice inside it (attack round
        # 16: a slow request sent before the claim, then a later one that became best).
        found = [r for r in (ch.verified, ch.best) if r is not None]
        found.extend(ch.serving.values())
        found.extend(held)
        return found

    def _evidence(self, ch: PayeeChannel, request: Request, seen: list[Request]) -> Request | None:
        """A request the payer signed in tiling conflict with `request` (claims.md 2)."""
        horizon = self.node.ledger.params.max_deadline_horizon_ms
        for other in seen:
            if tiling_conflict(request, other, horizon) and other.verify(ch.payer):
                return other
        return None

    async def _serve_claimed(
        self, ch: PayeeChannel, request: Request, claim: Claim, seen: bool, *, slot: bool
    ) -> Response | None:
        """Serve (or refuse) a request that reached us only through a claim (C-6).

        None when its number is taken by a request still in flight (or one whose answer is
        being stored): a refusal would refund a slice we may have earned (C-2), so the
        caller tries again, and then finds that request as evidence.

        The same admission as on a stream; the handler's deadline is the claim's window
        end minus the answer margin; the charge is durable before the answer is signed.
        """
        node = self.node
        service = node.services.get(request.service)
        # An answer must be mined before the window ends (`_handler_deadline`).
        deadline = self._handler_deadline(claim)
        decision = ch.admit_claimed(
            request,
            price=service.price if service is not None else None,
            max_body=service.max_body if service is not None else 0,
            seen=seen,
            deadline=deadline,
        )
        if ch.best is request or ch.verified is request:
            # the channel keeps the voucher's signed fields only (what a redeem checks and a
            # resync shows, protocol.md 15): a claim's body, up to the ledger's
            # max_claim_body, stayed in memory and in the store for as long as the channel
            # was the payee's, even when refused (attack round 22: 17.4 MB for 16 channels
            # of one free 512 KiB claim each; one of 1 MiB kept the node from starting)
            bodiless = _bodiless(request)
            if ch.best is request:
                ch.best = bodiless
            if ch.verified is request:
                ch.verified = bodiless
        if (
            isinstance(decision, Refuse)
            and decision.code is ErrorCode.REPLAY
            and request.n in ch.pending
        ):
            return None  # the number is being served: wait for its voucher (evidence)
        if isinstance(decision, Refuse):
            node.counters.refused[decision.code.value] += 1
            log.info("claim %s refused: %s", claim.id.hex(), decision.code.value)
            body = refusal_body(decision.message, decision.details)
            return await self._store_answer(ch, request, claim, decision.code.value, 0, body)
        assert service is not None
        call = Call(
            service=request.service,
            body=request.body,
            peer_id=node.peer_of(ch.payer),
            channel=request.channel,
            n=request.n,
            price=decision.price,
            deadline=deadline,
        )
        ok, body, error = False, b"", ""
        details: dict[str, Any] = {}
        try:
            # the later of both clocks (`_serving_now`): one reading far behind from a lying
            # endpoint let a slow handler run past the claim's window (attack round 37: UPHELD)
            now = await self._serving_now(claim)
            with trio.move_on_after(max(0, deadline - now) / 1000) as scope:
                # waiting for a handler slot counts against the claim's deadline: a claim
                # that cannot be served in time is refused (DEADLINE_EXCEEDED, nothing
                # charged, its slice never earned) instead of left unanswered (C-1)
                # at most max_claim_answers handlers at once: `slot` is one the caller
                # holds (`_answer_claim`); without one (it expected a refusal, or the
                # deadline passed) one is taken here
                async with (
                    contextlib.nullcontext() if slot else self._limiter.hold(claim.window_ends)
                ):
                    ok, body, error, details = await run_service(
                        service,
                        call,
                        behaviour=node.behaviour,
                        limit=claim_answer_limit(
                            node._ledger_param("max_claim_body"), node.config.max_frame
                        ),
                    )
            done = ch.complete(request.n, ok=ok, now=await self._serving_now(claim))  # C-4
        except BaseException:
            if request.n in ch.pending:
                ch.complete(request.n, ok=False)  # release the reservation: nothing charged
            raise
        if ok and done.refusal is None:
            node.counters.calls_served += 1
            node.counters.charged += done.charged
            return await self._store_answer(
                ch, request, claim, STATUS_OK, done.charged, body, done.spent
            )
        code: ErrorCode
        if done.refusal is ErrorCode.CHANNEL_CLOSED:
            code, error = done.refusal, f"channel is {ch.state_name}; nothing charged"
        elif done.refusal is not None or scope.cancelled_caught:
            code, error = ErrorCode.DEADLINE_EXCEEDED, "not answered before the claim's deadline"
        else:
            code = ErrorCode.HANDLER_ERROR
        node.counters.refused[code.value] += 1
        body = refusal_body(error, details)
        return await self._store_answer(ch, request, claim, code.value, 0, body, done.spent)

    async def _store_answer(
        self,
        ch: PayeeChannel,
        request: Request,
        claim: Claim,
        status: str,
        price: int,
        body: bytes,
        spent: int | None = None,
    ) -> Response:
        """Sign an answer and make it (and the charge) durable before it is posted."""
        node = self.node
        response = Response.create(
            node.signer,
            request=request,
            status=status,
            price=price,
            spent=ch.spent if spent is None else spent,
            body=body,
        )
        await self._stage_answer(ch, request, claim, response)
        return response

    async def _stage_answer(
        self, ch: PayeeChannel, request: Request, claim: Claim, response: Response
    ) -> None:
        """Make a signed answer (and the channel's state) durable before it is posted."""
        node = self.node
        generation = node.persister.stage(
            payee=_payee_record(ch),
            response=StoredResponse(
                request_hash=request.hash,
                channel=request.channel,
                n=request.n,
                frame=response.to_frame(),
                expires_at=max(
                    node.response_expiry(request.deadline),
                    claim.window_ends + node.config.response_retention_ms,
                ),
                # evidence (claims.md 2): the signed fields, not the body (up to the
                # ledger's max_claim_body; a claim's request reached us through the
                # ledger, where it stays): a claim flood would fill the store with bodies
                request_frame=_without_body(request),
            ),
        )
        await node.persister.durable(generation)

    # -- periodic duties

    async def _redeem(self, ch: PayeeChannel, *, force: bool = False) -> None:
        if not self._owed(ch):
            return
        now = self.node.now()
        reason = self._redeem_reason(ch, now, force=force)
        if reason is not None:
            await self._redeem_now(ch, reason, now)

    def _owed(self, ch: PayeeChannel) -> bool:
        """Whether `ch` holds a charge to redeem (else its unredeemed age is forgotten)."""
        if ch.best is None or ch.spent - ch.redeemed <= 0 or ch.status is ChannelStatus.CLOSED:
            self._unredeemed_since.pop(ch.channel, None)
            return False
        return True

    def _redeem_reason(self, ch: PayeeChannel, now: int, *, force: bool) -> str | None:
        """Why `ch` (which holds a charge, `_owed`) must be redeemed at `now`, or None;
        its charge's age starts at the first `now` that saw it."""
        since = self._unredeemed_since.setdefault(ch.channel, now)
        if force:
            return "closing"
        return redeem_reason(
            unredeemed=ch.spent - ch.redeemed,
            escrow=ch.deposit - ch.redeemed,
            closing=ch.status is ChannelStatus.CLOSING,
            now=now,
            unredeemed_since=since,
            last_redeem=self._last_redeem.get(ch.channel),
            config=self.node.config,
        )

    async def _redeem_now(self, ch: PayeeChannel, reason: str, now: int) -> None:
        node = self.node
        # Charges made while we wait below are not durable yet: redeem what was charged now.
        amount = ch.spent
        await node.persister.flush()  # never redeem a charge that is not durable
        voucher = ch.verified_voucher()  # checked first (protocol.md 13.4 rule b)
        if voucher is None:
            return
        amount = min(amount, voucher.paid)  # never more than a checked voucher covers
        if amount <= ch.redeemed or amount <= await self._redeemed_at_latest(ch.channel):
            return
        try:
            paid = await node.ledger.redeem(node.key, voucher, amount)
            self._redeem_sent[ch.channel] = max(self._redeem_sent.get(ch.channel, 0), amount)
        except SettlementError as exc:
            log.warning("redeem on %s refused: %s", ch.channel.hex(), exc)
            if exc.code is ErrorCode.CHANNEL_CLOSED:
                await node.refresh_channel(ch.channel)
            return
        node.counters.redeemed += paid
        self.redeems[reason] += 1
        self._last_redeem[ch.channel] = now
        self._unredeemed_since.pop(ch.channel, None)
        # what is redeemed is the ledger's reading, never what we asked for: a redeem the
        # endpoint acknowledged that never landed (dropped, a receipt it made up, a reorg)
        # set it here, the channel owed nothing in our view and was never redeemed again;
        # the close gave the charges back (attack round 40). A reading that lags redeems
        # once more: the ledger pays nothing twice
        await node.refresh_channel(ch.channel)
        log.info("redeemed channel=%s amount=%d", ch.channel.hex(), paid)

    async def _redeem_due(self) -> None:
        """`_redeem` each payee channel, the clock read once until a redeem awaits (the
        time cannot have moved in between): a step is run by each of a simulation's
        nodes every `watch_interval`, and most of their channels owe nothing."""
        node = self.node
        now: int | None = None
        for ch in list(node.payee_channels.values()):
            if not self._owed(ch):
                continue
            if now is None:
                now = node.now()
            reason = self._redeem_reason(ch, now, force=ch.status is ChannelStatus.CLOSING)
            if reason is not None:
                try:
                    await self._redeem_now(ch, reason, now)
                except (P2payError, OSError) as exc:
                    # one channel's failure (the endpoint, gas funds) is tried again at the
                    # next step, and holds neither the other channels' redeems back nor the
                    # step's later duties (closes to finalize, claims to file): it ended the
                    # step at every step (attack round 51)
                    log.warning("redeem on %s failed: %s", ch.channel.hex(), exc)
                now = None  # it waited: read the clock again

    async def _finalize_closes(self) -> None:
        node = self.node
        closing = [c for c in node.payer_channels.values() if c.status is ChannelStatus.CLOSING]
        if not closing:
            return
        now = await node.ledger.now()
        for ch in closing:
            info = await node.ledger.channel(ch.channel)
            if info is None:
                continue
            if info.state is ChannelState.CLOSING and now >= info.closes_at:
                try:
                    await node.ledger.finalize_close(node.key, ch.channel)
                except SettlementError as exc:
                    log.warning("finalize %s refused: %s", ch.channel.hex(), exc)
                    continue
            await node.refresh_channel(ch.channel)

    # -- our claims (claimant): re-deliver first, then claim; read outcomes (claims.md 6)

    async def _file_claims(self) -> None:
        node = self.node
        if not node.config.auto_claim or self._tasks is None:
            return
        await node.persister.flush()
        awaiting = await node.store.requests(state="awaiting")
        if not awaiting:
            return
        now = await node.ledger.now()
        windows: dict[bytes, int | None] = {}  # payee -> its claim window (this step)
        for record in awaiting:
            if now <= record.deadline or record.request_hash in self._claiming:
                continue
            grace = node.config.claim_grace_ms
            if now <= record.deadline + grace:  # (past it, no window makes it later)
                if record.payee not in windows:
                    stake = await node.ledger.stake_of(record.payee)
                    windows[record.payee] = stake.claim_window_ms if stake is not None else None
                if now <= claim_starts_ms(record.deadline, grace, windows[record.payee]):
                    continue
            self._claiming.add(record.request_hash)
            self._tasks.start_soon(self._claim, record)

    async def _claim(self, record: OutgoingRequest) -> None:
        """Re-send an unanswered paid request; claim it if that fails (one task each)."""
        node = self.node
        try:
            log.info("re-sending n=%d (deadline passed, unanswered) before a claim", record.n)
            budget = node.config.redeliver_timeout
            stake = await node.ledger.stake_of(record.payee)
            if stake is not None and stake.amount:
                now = await node.ledger.now()
                budget = resend_budget_s(budget, record.deadline, stake.claim_window_ms, now)
            answer = await node.redeliver(record, timeout=budget)
            if answer is not None:  # its record is now answered or refused: no claim
                log.info("re-delivered n=%d: %s, no claim", record.n, answer.status)
                return
            log.info("re-sending n=%d brought no signed answer: claiming", record.n)
            stake = await node.ledger.stake_of(record.payee)
            # ended only if both clocks say so: one reading ahead from a lying endpoint
            # stored the request expired for good while its window was open, and the
            # withholder kept its price, never slashed (attack round 37); if only ours is
            # wrong, the ledger refuses the claim WINDOW_CLOSED, which expires it too
            expired = bool(
                stake is not None
                and stake.amount
                and await node.ledger.now() > record.deadline + stake.claim_window_ms
                and node.now() > record.deadline + stake.claim_window_ms
            )
            # The record read last, after every await but the claim itself: an answer that
            # came on a stream while the ledger was read (a late receipt) settles it, and
            # nothing is staged from a stale copy of it (claims.md 6).
            current = await self._still_awaiting(record)
            if current is None:
                log.info("n=%d was answered meanwhile: no claim", record.n)
                return
            # a stake read as none (or 0) is not taken at its word: the claim is filed and
            # the ledger refuses it NOT_STAKED if so (unclaimable, below); one read that
            # lied stored the request unclaimable for good, and the withholder kept its
            # price, never slashed (attack round 37)
            if expired:
                assert stake is not None
                log.warning(
                    "n=%d to %s not claimed: its claim window ended %d ms after the deadline",
                    record.n,
                    record.payee.hex(),
                    stake.claim_window_ms,
                )
                node.persister.stage(request=_with_state(current, "expired", node.now()))
                return
            request = decode_frame(record.frame)
            if not isinstance(request, Request):
                return
            claim_id = await node.ledger.file_claim(node.key, request)
        except SettlementError as exc:
            # `record` was read before the ledger was: its state is staged only if no
            # answer settled the request meanwhile (`_still_outstanding`)
            if exc.code is ErrorCode.CLAIM_EXISTS:
                # ours (a claim's id is its request's hash), filed by an earlier attempt
                # whose end we did not see (a crash, a transaction mined late): follow it
                self._stage_filed(record, record.request_hash)
            elif exc.code is ErrorCode.WINDOW_CLOSED:
                if self._still_outstanding(record):
                    node.persister.stage(request=_with_state(record, "expired", node.now()))
            elif exc.code in _UNCLAIMABLE:
                log.warning("claim for n=%d refused: %s", record.n, exc)
                if self._still_outstanding(record):
                    node.persister.stage(request=_with_state(record, "unclaimable", node.now()))
            else:
                log.warning("claim for n=%d failed, retrying: %s", record.n, exc)
            return
        except (P2payError, OSError) as exc:
            log.warning("claim for n=%d failed, retrying: %s", record.n, exc)
            return
        except Exception as exc:  # a bug or a backend's surprise: never the node's end
            log.error("claim for n=%d failed: %r", record.n, exc)
            return
        finally:
            self._claiming.discard(record.request_hash)
        node.counters.claims_filed += 1
        log.info("filed claim %s for n=%d", claim_id.hex(), record.n)
        self._stage_filed(record, claim_id)

    async def _still_awaiting(self, record: OutgoingRequest) -> OutgoingRequest | None:
        """`record` as stored now if it still awaits an answer, else None.

        The store is read after a flush; a receipt that comes during that read is staged
        with its channel's change in one synchronous step, so the channel tells it: then
        the record is read once more (no answer naming `n` is read from then on, 14.3).
        From the return to the caller's next await, nothing can answer it."""
        node = self.node
        await node.persister.flush()
        current = await node.store.request(record.request_hash)
        ch = node.payer_channels.get(record.channel)
        if current is not None and ch is not None and not ch.expects(record.n):
            await node.persister.flush()
            current = await node.store.request(record.request_hash)
        if current is None or current.state != "awaiting":
            return None
        return current

    def _stage_filed(self, record: OutgoingRequest, claim_id: bytes) -> None:
        """Stage a claim we filed on `record`: the claim open, and the request marked
        claimed unless an answer settled it while the claim was filed (its receipt or
        refusal came on a stream during the ledger's await: its state stays as that answer
        made it, and the claim's end is taken like a receipt served again). Staging the
        copy read before the filing would have overwritten that answer with "claimed",
        and a restart would have counted the request as abandoned again: a price the
        payee may hold, without a claim left to settle it (attack round 9)."""
        node = self.node
        claim = ClaimRecord(
            claim_id=claim_id,
            role="claimant",
            state="open",
            request_hash=record.request_hash,
            updated_at=node.now(),
        )
        if record.state == "refused" or not self._still_outstanding(record):
            # (a refusal posted for its refund: settled before the claim, stays refused)
            self._stage_claim(claim)
            return
        self._stage_claim(
            claim, request=_with_state(record, "claimed", node.now(), claim_id=claim_id)
        )

    # -- refunds with the payee's refusal (payer; claims.md 3 and 6, attack N1)

    async def _check_takes(self) -> None:
        """Run the due checks of what payees took (`_check_payee_take`). A check that
        fails (a ledger or store error: an EVM endpoint down for a moment) stays due and
        runs again next step: a refund the payee's refusals would absorb is clawed back
        once the ledger answers, not lost with the event that asked for it.

        A channel leaves the due set *before* its check runs: an answer that comes while
        the check awaits (the client runs beside the watcher) queues the channel again
        (`check_take`), so the check it asks for runs next step; the running one may have
        computed the excess, or read the refusals, before that answer (attack round 10)."""
        for channel in list(self._takes_due):
            self._takes_due.discard(channel)
            try:
                await self._check_payee_take(channel)
            except (P2payError, OSError) as exc:
                log.warning("checking what the payee took on %s: %s", channel.hex(), exc)
                self._takes_due.add(channel)

    async def _check_payee_take(self, channel: bytes) -> None:
        """If the payee of `channel` holds more than our receipts justify, post its own
        signed refusals (refund with refusal) until the excess is covered.

        What the payee holds is ``redeemed - clawed`` on the ledger; what it may hold is our
        ``spent`` (from receipts) plus the prices of requests in flight or abandoned (they
        may have been charged; a request whose claim the ledger refunded is neither,
        `_take_answer`). An honest payee redeems its ``spent`` and never triggers it.
        """
        node = self.node
        ch = node.payer_channels.get(channel)
        info = await node.ledger.channel(channel)
        if ch is None or info is None or info.payer != node.account:
            return
        excess = (info.redeemed - info.clawed) - (ch.spent + ch.outstanding)
        if excess <= 0:
            if info.redeemed - info.clawed <= ch.spent:
                # covered by receipts alone: a later excess is news. (Covered only by the
                # prices of requests in flight, it stands as it was: a check that ran while
                # a call waited warned again at the next, attack round 11's test under load)
                self._excess_warned.pop(channel, None)
            if info.state is ChannelState.CLOSED:
                await self._forget_refusals(channel)  # closed and settled: no more redeems
            return
        await node.persister.flush()
        mine = [r for r in await node.store.requests() if r.channel == channel]
        if not mine:
            # This store holds no request of its own on the channel (adopted from the
            # ledger, nothing signed since: its records are deleted only for requests
            # never charged): what the payee redeemed was signed elsewhere with our key
            # (`p2pay conformance`, or a store since lost), maybe beyond what the ledger
            # had seen at the adoption (a payee redeeming in batches; attack round 13). No
            # receipts to compare, no refusals to post: not an alarm (claims.md 6).
            if channel not in self._foreign_noted:
                self._foreign_noted.add(channel)
                log.info(
                    "payee %s redeemed %d yocto on channel %s with vouchers this home has no "
                    "record of (signed elsewhere, e.g. by `p2pay conformance`): not checked",
                    info.payee.hex(),
                    info.redeemed - info.clawed,
                    channel.hex(),
                )
            return
        # A refusal whose request has a claim of ours was posted already, or answered our
        # claim: its refund is on the ledger, and posting it again only fails (CLAIM_EXISTS)
        claimed = {c.request_hash for c in await node.store.claims() if c.role == "claimant"}
        refused = [r for r in mine if r.state == "refused" and r.request_hash not in claimed]
        # An excess no refusal covers stands: each later check finds it again (warned once,
        # then at INFO until it changes)
        level = logging.INFO if self._excess_warned.get(channel) == excess else logging.WARNING
        log.log(
            level,
            "payee %s took %d yocto more than our receipts justify on channel %s: "
            "posting its signed refusals",
            info.payee.hex(),
            excess,
            channel.hex(),
        )
        for record in refused:
            if excess <= 0:
                break
            stored = await node.store.response(record.request_hash)
            if stored is None:
                continue
            try:
                request = decode_frame(record.frame)
                refusal = decode_frame(stored.frame)
            except P2payError:
                continue
            if not isinstance(request, Request) or not isinstance(refusal, Response):
                continue
            start = request.paid - request.price
            if start >= info.paid_seen and info.redeemed - info.clawed <= start - info.refunded:
                # Its slice lies above every voucher the ledger has seen, and the payee holds
                # no more than its entitlement would be after the refund: the refund would
                # raise paid_seen by at least the price it refunds, so the entitlement would
                # not go down and nothing would be clawed, now or after another post. Not
                # posted (each post is a transaction the payer pays for; a payee refusing such
                # slices while an excess the payer cannot claw stands made every refusal a
                # post: attack round 11). It stays kept for a later check. (With the payee
                # holding more than that, e.g. after a slash took its stake before a claw,
                # the post claws: attack round 12.)
                continue
            try:
                claim_id = await node.ledger.file_claim(node.key, request, refusal=refusal)
            except SettlementError as exc:
                if exc.code is not ErrorCode.CLAIM_EXISTS:
                    log.warning("refund with refusal n=%d refused: %s", record.n, exc)
                    continue
                # posted by an earlier check whose end we did not record (a crash, a
                # transaction mined late): record its claim and outcome now
                claim_id = request.hash
            else:
                node.counters.claims_filed += 1
                log.warning(
                    "refund claim %s for n=%d refused by %s",
                    claim_id.hex(),
                    record.n,
                    info.payee.hex(),
                )
            self._stage_filed(record, claim_id)
            await self._record_outcome(claim_id)
            # What the ledger clawed back, not the refusal's price: a refund claws only what
            # the payee holds above its lowered entitlement, so the refusal of the very
            # slice it took may be needed, whichever is posted first.
            now_info = await node.ledger.channel(channel)
            if now_info is not None:
                info = now_info
            excess = (info.redeemed - info.clawed) - (ch.spent + ch.outstanding)
        if excess > 0:
            log.log(
                logging.INFO if self._excess_warned.get(channel) == excess else logging.WARNING,
                "payee %s: %d yocto taken beyond our receipts are not covered by its refusals",
                info.payee.hex(),
                excess,
            )
            self._excess_warned[channel] = excess
        else:
            self._excess_warned.pop(channel, None)

    async def _forget_refusals(self, channel: bytes) -> None:
        """The payee's refusals on a closed, settled channel are no longer needed: let the
        next `prune_responses` drop them (they were kept with no expiry)."""
        node = self.node
        await node.persister.flush()
        now = node.now()
        records = [r for r in await node.store.requests() if r.channel == channel]
        open_claims = {
            c.request_hash
            for c in await node.store.claims()
            if c.role == "claimant" and c.state == "open"
        }
        if any(r.state in _REFUNDABLE or r.request_hash in open_claims for r in records):
            # A request of the channel may still end with a refund (awaiting its answer or
            # its claim's end, also one answered on the stream while its claim was filed;
            # the ledger takes claims on a closed channel): its refund is
            # clawed back only if these refusals can still be posted (claims.md 6). Let go
            # once the last such claim has ended (`_settle_claim` checks again).
            return
        kept = []
        for record in records:  # refused, or claimed with its refusal
            if record.state not in ("refused", "claimed"):
                continue
            stored = await node.store.response(record.request_hash)
            if stored is not None and stored.expires_at > now:
                kept.append(stored)
        if channel in self._takes_due:
            # an answer came during these reads and asked for a check (`check_take`): the
            # excess this one decided on is out of date; keep everything for that check
            return
        for stored in kept:  # (synchronous from the test above: nothing came between)
            node.persister.stage(response=dataclasses.replace(stored, expires_at=now))

    async def _settle_claim(self, claim_id: bytes) -> None:
        """Our claim ended: keep its outcome; if the ledger refunded the request's price,
        check again what the payee of its channel holds (claims.md 6): the refund lowered
        what it may hold, and only posting its refusals claws back a refund they absorb."""
        claim = await self._record_outcome(claim_id)
        if claim is not None and claim.refund and claim.channel in self.node.payer_channels:
            self._takes_due.add(claim.channel)

    async def _record_outcome(self, claim_id: bytes) -> Claim | None:
        """Keep our claim's outcome and its checked answer (C-5): `Node.claims` reads it.
        The answer is the payee's signed response to the request: the channel accounts for
        it as for a receipt served again (`_take_answer`). Returns the ended claim, or None
        if it is still open or unknown."""
        node = self.node
        claim = await node.ledger.claim(claim_id)
        if claim is None or claim.state is ClaimState.OPEN:
            return None
        outcome = claim_outcome(claim)
        request = decode_held_frame(claim.request_frame)
        if not isinstance(request, Request):
            return None
        status, response = "", b""
        checked: Response | None = None
        if claim.response_frame:
            checked = check_claim_answer(claim, request)
            status = checked.status if checked is not None else "INVALID"
            response = claim.response_frame if checked is not None else b""
        ch = node.payer_channels.get(request.channel)
        # answered already (its receipt inside ``spent``): its record says so, and keeps it
        settled = ch is not None and not ch.expects(request.n)
        taken = self._take_answer(request, checked, refunded=claim.refund > 0)
        doc = {
            "outcome": outcome,
            "status": status,
            "bond": str(claim.bond),
            "bond_returned": outcome != "frivolous",
            "refund": str(claim.refund),
            "clawed": str(claim.clawed),
            "slashed": str(claim.slashed),
            "response": response.hex(),
        }
        self._stage_claim(
            ClaimRecord(
                claim_id=claim_id,
                role="claimant",
                state=outcome,
                request_hash=request.hash,
                updated_at=node.now(),
            ),
            meta={outcome_key(claim_id): json.dumps(doc, sort_keys=True).encode()},
        )
        if not (settled and outcome == "frivolous"):
            # (FRIVOLOUS, "rejected", is the one outcome a restart counts as abandoned: not
            # over a request the channel no longer counts as outstanding, claims.md 6)
            state = _REQUEST_STATE.get(outcome, "claimed") if taken else "claimed"
            self._request_state(request.hash, state)  # with the channel's change: one commit
        return claim

    def _take_answer(self, request: Request, response: Response | None, *, refunded: bool) -> bool:
        """Account in our channel for how our claim ended (`PayerChannel.on_claim_end`):
        whether the channel now holds the outcome (False: the request stays claimed, so
        that a restart counts it as abandoned too). A refund's settlement leaves a jump
        taken for the request's charge out of ``spent``, so the check that follows
        (`_check_payee_take`) counts it as taken beyond our receipts."""
        ch = self.node.payer_channels.get(request.channel)
        if ch is None:
            return True  # not a channel we pay on
        try:
            taken = ch.on_claim_end(request, response, refunded=refunded)
        except RemoteProtocolError as exc:
            log.warning("the answer to our claim on n=%d: %s", request.n, exc)
            return False
        self.node.persister.stage(payer_snapshot=_payer_snapshot(ch))
        return taken

    async def _resolve_claims(self) -> None:
        node = self.node
        if self._none_open_read:  # and no claim record staged since (`_stage_claim`)
            return
        staged = self._claims_staged
        visible = node.persister.is_durable(staged)  # the read below sees it
        mine = [c for c in await node.store.claims() if c.role == "claimant" and c.state == "open"]
        # none of ours open, and the read saw every claim record we staged before it
        self._none_open_read = not mine and visible and self._claims_staged == staged
        if not mine:
            return
        now = await node.ledger.now()
        for record in mine:
            claim = await node.ledger.claim(record.claim_id)
            if claim is None:
                continue
            if claim.state is not ClaimState.OPEN:  # an outcome event we missed
                await self._settle_claim(record.claim_id)
            elif now > claim.window_ends:
                try:
                    await node.ledger.resolve_claim(node.key, record.claim_id)
                except SettlementError as exc:
                    log.warning("resolve %s refused: %s", record.claim_id.hex(), exc)


@dataclasses.dataclass(frozen=True, slots=True)
class _Body:
    """What the admission of a claimed request checks of its body (`_refused_at_once`)."""

    length: int
    matches: bool


def _open_first(
    latest: Claim | None, confirmed: Claim | None, answered: bool = False
) -> Claim | None:
    """Of two readings of a claim against us (`Watcher._read_claim_both`), once we
    `answered` it, the confirmed one if it shows the claim ended (k blocks deep: final);
    else one that shows it OPEN, the latest first; else the latest one, or the confirmed
    one if the latest block has none. A latest block that stayed stale showed a claim OPEN
    after its answer was k deep, and it was answered again every few seconds until its
    window ended, each answer refused on chain (attack round 51: 13 in a 40 s window). Not
    before we answered: one lying reading at ``head - k`` (the claim DELIVERED) then let an
    unanswered claim go, UPHELD (attack round 52)."""
    if answered and confirmed is not None and confirmed.state is not ClaimState.OPEN:
        return confirmed
    if latest is not None and latest.state is ClaimState.OPEN:
        return latest
    if confirmed is not None and confirmed.state is ClaimState.OPEN:
        return confirmed
    return latest if latest is not None else confirmed


def _light(claim: Claim | None) -> tuple[Claim | None, _Body | None]:
    """`claim` with its request frame stripped of the body (`_without_body`): what a claim
    against us is held by while its answer is looked up or waits (`_answer_claim`), and
    what the admission checks of the body (None if the request does not decode)."""
    if claim is None or not claim.request_frame:
        return claim, None
    try:
        request = decode_held_frame(claim.request_frame)
    except P2payError:
        return claim, None  # `_prepare_answer` logs it
    if not isinstance(request, Request):
        return claim, None
    body = _Body(len(request.body), request.body_matches())
    return dataclasses.replace(claim, request_frame=_without_body(request)), body


def _stored(response: Response) -> _Answer:
    """The answer `response`, ours as stored (`StoredResponse`): held by its signed fields,
    its body read back from the store at its turn at the ledger (`_Answer`)."""
    bodiless = Response.from_signed(response.signing_bytes, response.signature, b"")
    return _Answer(response=bodiless, stored=True)


def _held(frames: Iterable[bytes]) -> list[Request]:
    """The requests among stored request `frames`, each without its body (`_bodiless`)."""
    found: list[Request] = []
    for frame in frames:
        try:
            request = decode_frame(frame)
        except P2payError:
            continue
        if isinstance(request, Request):
            found.append(_bodiless(request))
    return found


def _bodiless(request: Request) -> Request:
    """`request` without its body (same signed fields, same hash and signature): what
    proves a conflict (claims.md 2; the ledger keeps evidence so too, settlement.md
    AnswerClaim)."""
    return Request.from_signed(request.signing_bytes, request.signature, b"")


def _without_body(request: Request) -> bytes:
    """`request`'s frame without its body (`_bodiless`)."""
    return _bodiless(request).to_frame()


def check_claim_answer(claim: Claim, request: Request) -> Response | None:
    """The response a claim was answered with, checked like a receipt (C-5), or None.

    Signed by the respondent, for the claimed request, body matching its hash, charging
    at most the request's price (and nothing unless OK).
    """
    try:
        response = decode_held_frame(claim.response_frame)
    except P2payError:
        return None
    if not isinstance(response, Response):
        return None
    if (
        response.request_hash != request.hash
        or response.channel != request.channel
        or response.n != request.n
        or response.ledger != request.ledger
        or not response.body_matches()
        or response.price > request.price
        or (response.status != STATUS_OK and response.price != 0)
        or not response.verify(claim.respondent)
    ):
        return None
    return response


def _with_state(
    record: OutgoingRequest, state: str, now: int, *, claim_id: bytes | None = None
) -> OutgoingRequest:
    claim = record.claim_id if claim_id is None else claim_id
    return dataclasses.replace(record, state=state, updated_at=now, claim_id=claim)


__all__ = ["Watcher"]
