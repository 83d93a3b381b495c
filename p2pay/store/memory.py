"""In-memory store: dictionaries, for tests and simulations (nothing survives the process).

Theory of operation
-------------------
`MemoryStore.write` validates the whole batch first (so an invalid batch changes
nothing), passes one trio checkpoint (a cancellation there withdraws the batch), then
applies it synchronously: no other task can observe half a batch, and nothing can fail
half-way. Every non-empty write counts as one commit; there is no group commit because
there is no fsync to share. Records are frozen, so the store keeps them as given.

A store made with ``write_through=True`` also offers `write_now`, the same write without
the checkpoint (it cannot be cancelled half-way either: it does not wait at all); the
node's persister then writes each staged change through at once instead of grouping
changes in a flusher task (p2pay/persist.py). The simulator's nodes use it.
"""

from __future__ import annotations

import trio

from p2pay.store.base import (
    Batch,
    ClaimRecord,
    FloorVoucher,
    OutgoingRequest,
    PayeeRecord,
    PayerRecord,
    StoreClosed,
    StoredResponse,
    check_batch,
    check_meta_key,
    check_request_state,
    check_time,
    check_vouchers_args,
    floor_after_prune,
)


class MemoryStore:
    """A `Store` held in dictionaries."""

    def __init__(self, *, write_through: bool = False) -> None:
        #: The persister writes through this store with `write_now` (module docstring).
        self.write_through = write_through
        self._payee: dict[bytes, PayeeRecord] = {}
        self._payer: dict[bytes, PayerRecord] = {}
        self._requests: dict[bytes, OutgoingRequest] = {}
        self._responses: dict[bytes, StoredResponse] = {}
        self._claims: dict[bytes, ClaimRecord] = {}
        self._floors: dict[bytes, FloorVoucher] = {}
        self._meta: dict[str, bytes] = {}
        self._commits = 0
        self._closed = False

    @property
    def commits(self) -> int:
        return self._commits

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    async def write(self, batch: Batch) -> None:
        check_batch(batch)
        self._check_open()
        await trio.lowlevel.checkpoint()
        self._apply(batch)

    def write_now(self, batch: Batch) -> None:
        """`write` without waiting: validate the batch, then apply it, synchronously.

        Raises:
            LocalProtocolError: the batch is invalid; nothing of it was applied.
            StoreClosed: the store is closed.
        """
        check_batch(batch)
        self._apply(batch)

    def _apply(self, batch: Batch) -> None:
        self._check_open()
        if batch.is_empty():
            return
        # From here on nothing can raise: the batch was validated as a whole.
        for payee in batch.payee:
            self._payee[payee.channel] = payee
        for payer in batch.payer:
            self._payer[payer.channel] = payer
        for request in batch.requests:
            self._requests[request.request_hash] = request
        for response in batch.responses:
            self._responses[response.request_hash] = response
        for claim in batch.claims:
            self._claims[claim.claim_id] = claim
        for key, value in batch.meta.items():
            self._meta[str.__str__(key)] = value
        for update in batch.request_updates:
            stored = self._requests.get(update.request_hash)
            if stored is not None:
                self._requests[update.request_hash] = update.apply(stored)
        for request_hash in batch.delete_requests:
            self._requests.pop(request_hash, None)
        self._commits += 1

    async def _read(self) -> None:
        self._check_open()
        await trio.lowlevel.checkpoint()
        self._check_open()

    async def payee_channel(self, channel: bytes) -> PayeeRecord | None:
        await self._read()
        return self._payee.get(channel)

    async def payee_channels(self) -> list[PayeeRecord]:
        await self._read()
        return [self._payee[k] for k in sorted(self._payee)]

    async def payer_channel(self, channel: bytes) -> PayerRecord | None:
        await self._read()
        return self._payer.get(channel)

    async def payer_channels(self) -> list[PayerRecord]:
        await self._read()
        return [self._payer[k] for k in sorted(self._payer)]

    async def request(self, request_hash: bytes) -> OutgoingRequest | None:
        await self._read()
        return self._requests.get(request_hash)

    async def requests(self, state: str | None = None) -> list[OutgoingRequest]:
        wanted = check_request_state(state)
        await self._read()
        found = [r for r in self._requests.values() if wanted is None or r.state == wanted]
        found.sort(key=lambda r: (r.channel, r.n, r.request_hash))
        return found

    async def response(self, request_hash: bytes) -> StoredResponse | None:
        await self._read()
        return self._responses.get(request_hash)

    async def vouchers(self, channel: bytes) -> list[StoredResponse]:
        check_vouchers_args(channel)
        await self._read()
        found = [r for r in self._responses.values() if r.channel == channel and r.request_frame]
        found.sort(key=lambda r: (r.n, r.request_hash))
        return found

    async def vouchers_near(self, channel: bytes, n: int, limit: int = 4) -> list[StoredResponse]:
        check_vouchers_args(channel, n, limit)
        every = await self.vouchers(channel)
        below = [r for r in every if r.n < n]
        above = [r for r in every if r.n > n]
        same = [r for r in every if r.n == n]
        return (below[-limit:] if limit else []) + same + above[:limit]

    async def floor_voucher(self, channel: bytes) -> FloorVoucher | None:
        check_vouchers_args(channel)
        await self._read()
        return self._floors.get(channel)

    async def claims(self) -> list[ClaimRecord]:
        await self._read()
        return [self._claims[k] for k in sorted(self._claims)]

    async def get_meta(self, key: str) -> bytes | None:
        check_meta_key(key)
        await self._read()
        return self._meta.get(key)

    async def prune_responses(self, now: int) -> int:
        limit = check_time("now", now)
        await self._read()
        expired = [h for h, r in self._responses.items() if r.expires_at < limit]
        by_channel: dict[bytes, list[StoredResponse]] = {}
        for request_hash in expired:
            response = self._responses.pop(request_hash)
            by_channel.setdefault(response.channel, []).append(response)
        for channel, pruned in by_channel.items():
            floor = floor_after_prune(self._floors.get(channel), pruned)
            if floor is not None:
                self._floors[channel] = floor
        if expired:
            self._commits += 1
        return len(expired)

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()


__all__ = ["MemoryStore"]
