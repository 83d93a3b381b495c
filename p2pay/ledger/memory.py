"""In-memory ledger: the whole contract `State` in a Python object.

Theory of operation
-------------------
`MemoryLedger` keeps one full `p2pay.core.settlement.State` and a list of events. An
operation is one synchronous call to `apply` between two trio checkpoints, so under trio
it is atomic with respect to every other task: nothing can observe a half-applied op,
and a refused op (`SettlementError`) leaves the state untouched (apply's contract).

Reads return copies, so a caller that mutates a returned `Channel` cannot corrupt the
ledger. Event fields are passed through the canonical CBOR codec once when stored, so
they have exactly the representation the SQLite backend gives back (and an event that
could not be stored durably fails here too).

The clock defaults to the wall clock; simulations inject
``lambda: int(trio.current_time() * 1000)`` to run on trio's (mock) clock. The time an
operation sees is ``max(clock(), time of the last operation)``.

Every operation is a signed transaction checked exactly as the SQLite ledger checks it
(specs/settlement.md section 11): signature of the sender, then its next nonce
(``_nonces``, the last applied nonce per sender), inside the same synchronous section that
applies the op.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from p2pay.core import codec
from p2pay.core.errors import LocalProtocolError
from p2pay.core.settlement import (
    Channel,
    Claim,
    Event,
    Params,
    Stake,
    State,
    apply,
    claim_filed_event,
)
from p2pay.core.tx import Transaction, check_transaction
from p2pay.ledger.base import (
    CLAIM_ROLES,
    ClaimRole,
    LocalLedger,
    Receipt,
    Totals,
    check_claim_role,
    copy_entity,
    totals_of,
)

__all__ = ["MemoryLedger", "wall_clock_ms"]


def wall_clock_ms() -> int:
    """Unix time in whole milliseconds."""
    return time.time_ns() // 1_000_000


def normalize_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Event fields as they come back from canonical CBOR storage."""
    data = codec.encode(fields)
    value = codec.decode(data, max_size=max(len(data), 1), max_depth=codec.MAX_DEPTH)
    assert isinstance(value, dict)
    return {str(k): v for k, v in value.items()}


class MemoryLedger(LocalLedger):
    """A ledger held in memory: for tests and simulations.

    Args:
        params: the contract parameters; default ``Params(ledger_id=..., dev=dev)``.
        clock: returns the ledger time in ms; default the wall clock.
        dev: whether `mint` is allowed (ignored when `params` is given).
        ledger_id: default ``b"p2pay:memory:" + 16 random bytes`` (ignored when `params`
            is given, unless it disagrees with ``params.ledger_id``: then an error).

    Raises:
        LocalProtocolError: `ledger_id` contradicts `params`.
    """

    def __init__(
        self,
        params: Params | None = None,
        *,
        clock: Callable[[], int] | None = None,
        dev: bool = True,
        ledger_id: bytes | None = None,
    ) -> None:
        if params is None:
            if ledger_id is None:
                ledger_id = b"p2pay:memory:" + os.urandom(16)
            params = Params(ledger_id=ledger_id, dev=dev)
        elif ledger_id is not None and ledger_id != params.ledger_id:
            raise LocalProtocolError("ledger_id differs from params.ledger_id")
        super().__init__(params, clock if clock is not None else wall_clock_ms)
        self._state = State(params=params)
        self._events: list[Event] = []
        self._by_account: dict[bytes, list[Event]] = {}  # events naming an account
        self._nonces: dict[bytes, int] = {}  # last applied transaction's nonce per sender
        self._closed = False

    @property
    def state(self) -> State:
        """The live state (read it, never mutate it: use operations)."""
        return self._state

    async def next_nonce(self, account: bytes) -> int:
        await trio.lowlevel.checkpoint()
        return self._nonces.get(account, 0) + 1

    async def _submit_signed(self, sender: bytes, make: Callable[[int], Transaction]) -> Receipt:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise LocalProtocolError("ledger is closed")
        # from here to the end no checkpoint: atomic with respect to every other task
        nonce = self._nonces.get(sender, 0) + 1
        op = check_transaction(make(nonce), self._params, nonce)
        result, events = apply(self._state, op, self._time())
        self._nonces[sender] = nonce
        stored: list[Event] = []
        for event in events:
            event = Event(
                kind=event.kind,
                fields=normalize_fields(event.fields),
                at=event.at,
                seq=len(self._events) + 1,
            )
            self._events.append(event)
            for value in {v for v in event.fields.values() if isinstance(v, bytes)}:
                self._by_account.setdefault(value, []).append(event)
            stored.append(event)
        return Receipt(result, tuple(stored))

    # --- reads
    async def balance(self, account: bytes) -> int:
        await trio.lowlevel.checkpoint()
        return self._state.balances.get(account, 0)

    async def channel(self, channel_id: bytes) -> Channel | None:
        await trio.lowlevel.checkpoint()
        found = self._state.channels.get(channel_id)
        return None if found is None else copy_entity(found)

    async def stake_of(self, account: bytes) -> Stake | None:
        await trio.lowlevel.checkpoint()
        found = self._state.stakes.get(account)
        return None if found is None else copy_entity(found)

    async def claim(self, claim_id: bytes) -> Claim | None:
        await trio.lowlevel.checkpoint()
        found = self._state.claims.get(claim_id)
        return None if found is None else copy_entity(found)

    async def channels_of(self, account: bytes) -> list[Channel]:
        await trio.lowlevel.checkpoint()
        return [
            copy_entity(ch)
            for ch in self._state.channels.values()
            if account in (ch.payer, ch.payee)
        ]

    async def claims_of(self, account: bytes) -> list[Claim]:
        await trio.lowlevel.checkpoint()
        return [
            copy_entity(c)
            for c in self._state.claims.values()
            if account in (c.claimant, c.respondent)
        ]

    async def claim_ids_of(self, account: bytes, role: ClaimRole | None = None) -> list[bytes]:
        check_claim_role(role)
        await trio.lowlevel.checkpoint()
        roles = CLAIM_ROLES if role is None else (role,)
        return [
            c.id
            for c in self._state.claims.values()
            if any(getattr(c, r) == account for r in roles)
        ]

    async def claim_filings_of(self, account: bytes, role: ClaimRole | None = None) -> list[Event]:
        check_claim_role(role)
        await trio.lowlevel.checkpoint()
        roles = CLAIM_ROLES if role is None else (role,)
        return [
            claim_filed_event(c)
            for c in self._state.claims.values()
            if any(getattr(c, r) == account for r in roles)
        ]

    async def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        await trio.lowlevel.checkpoint()
        if after < 0 or limit < 0:
            raise LocalProtocolError("after and limit must be >= 0")
        # seq == index + 1, so the events after `after` start at index `after`.
        return [
            dataclasses.replace(e, fields=dict(e.fields))
            for e in self._events[after : after + limit]
        ]

    async def events_for(
        self, account: bytes, after: int = 0, limit: int = 1000
    ) -> tuple[list[Event], int]:
        """Indexed: O(matching events), not O(all events), per call."""
        await trio.lowlevel.checkpoint()
        if after < 0 or limit < 0:
            raise LocalProtocolError("after and limit must be >= 0")
        mine = self._by_account.get(account, [])
        if limit and (not mine or mine[-1].seq <= after):  # nothing new: most watcher steps
            return [], max(after, len(self._events))
        start = bisect.bisect_right(mine, after, key=lambda e: e.seq)
        page = [
            Event(kind=e.kind, fields=dict(e.fields), at=e.at, seq=e.seq)  # copies, as `events`
            for e in mine[start : start + limit]
        ]
        cursor = page[-1].seq if len(page) == limit else max(after, len(self._events))
        return page, cursor

    async def totals(self) -> Totals:
        await trio.lowlevel.checkpoint()
        return totals_of(self._state)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._closed = True
