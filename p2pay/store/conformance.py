"""Store conformance suite: the behaviour every `Store` backend must have.

Theory of operation
-------------------
Each case is an async function taking a `StoreBackend`, which tells it how to get a
new, empty store (`StoreBackend.create`), optionally how to open a closed store's
storage again (`StoreBackend.reopen`), and whether the backend group-commits
(`StoreBackend.group_commit`: then 100 concurrent writers must share far fewer than 100
commits). Cases close every store they open, and fail with `AssertionError`.

Run it from your own tests, for instance with pytest-trio::

    from p2pay.store.conformance import StoreBackend, store_conformance_cases

    CASES = store_conformance_cases()

    @pytest.mark.parametrize("case", [c for _, c in CASES], ids=[n for n, _ in CASES])
    async def test_my_store(case, tmp_path):
        await case(StoreBackend(name="mine", create=lambda: MyStore.open(tmp_path / ...)))

or run everything at once with `check_store_conformance`. The cases use
`trio.testing.wait_all_tasks_blocked`, so run them on a real clock (or an autojumping
`MockClock`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.store.base import (
    MAX_N,
    MAX_TIME,
    REQUEST_STATES,
    Batch,
    ClaimRecord,
    OutgoingRequest,
    PayeeRecord,
    PayerRecord,
    RequestUpdate,
    Store,
    StoreClosed,
    StoredResponse,
)

ALICE = Keypair.from_seed(bytes([1]) * 32)  # payer in the fixtures
BOB = Keypair.from_seed(bytes([2]) * 32)  # payee in the fixtures
LEDGER = b"p2pay-conformance-ledger"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreBackend:
    """How the suite gets stores of one backend.

    Attributes:
        name: shown in failures.
        create: returns a new, empty, open store each time it is called.
        reopen: given a store of this backend that the case has closed, opens the same
            storage again (None if the backend cannot: memory).
        group_commit: True if concurrent writes share transactions (then `commits`
            must grow far slower than the number of writes).
    """

    name: str
    create: Callable[[], Awaitable[Store]]
    reopen: Callable[[Store], Awaitable[Store]] | None = None
    group_commit: bool = False


Case = Callable[[StoreBackend], Awaitable[None]]


# ---------------------------------------------------------------------------
# fixtures


def _id(*parts: object) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=32).digest()


def channel_id(i: int) -> bytes:
    """A deterministic 32-byte channel id."""
    return _id("channel", i)


def voucher(n: int = 1, paid: int = 1_000, *, body: bytes = b"hello") -> Request:
    """A real signed request (ALICE pays BOB) to use as a stored voucher or request frame."""
    return Request.create(
        ALICE,
        ledger=LEDGER,
        channel=channel_id(0),
        n=n,
        paid=paid,
        price=min(paid, 10),
        service="echo",
        body=body,
        deadline=1_700_000_000_000,
    )


def payee_record(i: int, **changes: Any) -> PayeeRecord:
    """A payee record for channel `i` (fields overridable)."""
    fields: dict[str, Any] = {  # (changes may be deliberately invalid)
        "channel": channel_id(i),
        "ledger": LEDGER,
        "payer": ALICE.public,
        "payee": BOB.public,
        "deposit": 10**21 + i,
        "status": "open",
        "last_n": i,
        "paid_max": 0,
        "best_voucher": b"",
        "spent": 0,
        "redeemed": 0,
    }
    fields.update(changes)
    return PayeeRecord(**fields)


def payer_record(i: int, **changes: Any) -> PayerRecord:
    """A payer record for channel `i` (fields overridable)."""
    fields: dict[str, Any] = {  # (changes may be deliberately invalid)
        "channel": channel_id(i),
        "ledger": LEDGER,
        "payer": ALICE.public,
        "payee": BOB.public,
        "deposit": 10**21 + i,
        "status": "open",
        "last_n": i,
        "paid": 0,
        "spent": 0,
    }
    fields.update(changes)
    return PayerRecord(**fields)


def outgoing(i: int, **changes: Any) -> OutgoingRequest:
    """An outgoing request with hash `_id("request", i)` (fields overridable)."""
    fields: dict[str, Any] = {  # (changes may be deliberately invalid)
        "request_hash": _id("request", i),
        "channel": channel_id(i % 3),
        "n": i + 1,
        "payee": BOB.public,
        "price": 10 + i,
        "deadline": 1_700_000_000_000 + i,
        "frame": b"frame-%d" % i,
        "state": "awaiting",
    }
    fields.update(changes)
    return OutgoingRequest(**fields)


def stored_response(i: int, **changes: Any) -> StoredResponse:
    """A stored response with hash `_id("request", i)` (fields overridable)."""
    fields: dict[str, Any] = {  # (changes may be deliberately invalid)
        "request_hash": _id("request", i),
        "channel": channel_id(i % 3),
        "n": i + 1,
        "frame": b"response-%d" % i,
        "expires_at": 1_700_000_000_000 + i,
    }
    fields.update(changes)
    return StoredResponse(**fields)


def claim_record(i: int, **changes: Any) -> ClaimRecord:
    """A claim record with id `_id("claim", i)` (fields overridable)."""
    fields: dict[str, Any] = {  # (changes may be deliberately invalid)
        "claim_id": _id("claim", i),
        "role": "claimant" if i % 2 == 0 else "respondent",
        "state": "open",
        "request_hash": _id("request", i),
        "updated_at": 1_700_000_000_000 + i,
    }
    fields.update(changes)
    return ClaimRecord(**fields)


def _corrupt(record: object, name: str, value: object) -> object:
    """Bypass validation, as a bug or a careless caller could (frozen is not a lock)."""
    object.__setattr__(record, name, value)
    return record


async def _snapshot(store: Store) -> dict[str, object]:
    """Everything the store holds that the suite can list."""
    return {
        "payee": await store.payee_channels(),
        "payer": await store.payer_channels(),
        "requests": await store.requests(),
        "claims": await store.claims(),
    }


class _Open:
    """``async with _Open(backend) as store``: a new store, closed on exit."""

    def __init__(self, backend: StoreBackend) -> None:
        self.backend = backend
        self.store: Store | None = None

    async def __aenter__(self) -> Store:
        self.store = await self.backend.create()
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        assert self.store is not None
        await self.store.aclose()


def _fail(backend: StoreBackend, message: str) -> AssertionError:
    return AssertionError(f"[{backend.name}] {message}")


# ---------------------------------------------------------------------------
# cases


async def case_empty_store(backend: StoreBackend) -> None:
    """A new store holds nothing, and reading it commits nothing."""
    async with _Open(backend) as store:
        commits = store.commits
        assert await store.payee_channel(channel_id(1)) is None
        assert await store.payer_channel(channel_id(1)) is None
        assert await store.request(_id("request", 1)) is None
        assert await store.response(_id("request", 1)) is None
        assert await store.get_meta("cursor") is None
        assert await _snapshot(store) == {"payee": [], "payer": [], "requests": [], "claims": []}
        for state in sorted(REQUEST_STATES):
            assert await store.requests(state=state) == []
        assert store.commits == commits
        await store.write(Batch())  # an empty batch is allowed
        assert store.commits == commits


async def case_payee_round_trip(backend: StoreBackend) -> None:
    """Payee records come back field for field, amounts at 2**128 - 1 included."""
    best = voucher(n=7, paid=MAX_YOCTO)
    top = payee_record(
        1,
        deposit=MAX_YOCTO,
        status="closing",
        last_n=MAX_N,
        paid_max=MAX_YOCTO,
        best_voucher=best.to_frame(),
        spent=MAX_YOCTO,
        redeemed=MAX_YOCTO,
    )
    zero = payee_record(2, deposit=0, last_n=0, status="closed")
    mid = payee_record(
        3,
        paid_max=5,
        best_voucher=voucher(paid=5).to_frame(),
        spent=3,
        redeemed=2,
        verified_voucher=voucher(paid=4).to_frame(),  # best not checked yet (13.4)
    )
    async with _Open(backend) as store:
        commits = store.commits
        await store.write(Batch(payee=[top, zero, mid]))
        assert store.commits == commits + 1, "one write, one commit"
        got = await store.payee_channel(top.channel)
        assert got == top, f"{got} != {top}"
        assert got is not None and got.best_voucher == best.to_frame()
        assert await store.payee_channel(zero.channel) == zero
        got_mid = await store.payee_channel(mid.channel)
        assert got_mid == mid and got_mid.verified_voucher == mid.verified_voucher
        listed = await store.payee_channels()
        assert listed == sorted([top, zero, mid], key=lambda r: r.channel)
        assert await store.payer_channel(top.channel) is None, "payee and payer are apart"


async def case_payer_round_trip(backend: StoreBackend) -> None:
    """Payer records come back field for field, amounts at 2**128 - 1 included: the
    receipt check's ``absorbed``, ``forgotten`` and ``released`` too (protocol.md 14.2),
    each distinct from the others so that a swapped column shows."""
    top = payer_record(
        1,
        deposit=MAX_YOCTO,
        last_n=MAX_N,
        paid=MAX_YOCTO,
        spent=MAX_YOCTO,
        status="closing",
        absorbed=MAX_YOCTO,
        forgotten=MAX_YOCTO,
        released=MAX_YOCTO,
    )
    low = payer_record(2, deposit=0, last_n=0, paid=0, spent=0)
    mid = payer_record(3, paid=2**72, spent=2**64 + 5, absorbed=3, forgotten=2**70, released=7)
    async with _Open(backend) as store:
        await store.write(Batch(payer=[low, top, mid]))
        assert await store.payer_channel(top.channel) == top
        assert await store.payer_channel(low.channel) == low
        got = await store.payer_channel(mid.channel)
        assert got == mid, f"{got} != {mid}"
        assert (got.absorbed, got.forgotten, got.released) == (3, 2**70, 7)
        listed = await store.payer_channels()
        assert listed == sorted([top, low, mid], key=lambda r: r.channel)
        assert await store.payee_channel(top.channel) is None
        moved = dataclasses.replace(mid, spent=2**64 + 6, absorbed=0, released=8)
        await store.write(Batch(payer=[moved]))  # a receipt: the whole record again
        assert await store.payer_channel(mid.channel) == moved


async def case_requests_round_trip(backend: StoreBackend) -> None:
    """Outgoing requests: every state, extreme values, a 1 MiB frame, filters, order."""
    big = voucher(n=3, body=b"\xa5" * (1 << 20)).to_frame()
    records = [outgoing(i, state=state) for i, state in enumerate(sorted(REQUEST_STATES))]
    records[0] = dataclasses.replace(
        records[0],
        n=MAX_N,
        price=MAX_YOCTO,
        deadline=MAX_TIME,
        updated_at=MAX_TIME,
        claim_id=_id("claim", 0),
        frame=big,
    )
    records[1] = dataclasses.replace(records[1], n=0, price=0, deadline=0, frame=b"")
    async with _Open(backend) as store:
        await store.write(Batch(requests=records))
        for record in records:
            assert await store.request(record.request_hash) == record
        expected = sorted(records, key=lambda r: (r.channel, r.n, r.request_hash))
        assert await store.requests() == expected, "requests() is ordered by (channel, n, hash)"
        for record in records:
            assert await store.requests(state=record.state) == [record]
        assert await store.request(_id("request", 999)) is None
        try:
            await store.requests(state="lost")
        except LocalProtocolError:
            pass
        else:
            raise _fail(backend, "requests(state='lost') did not raise LocalProtocolError")


async def case_responses_and_prune(backend: StoreBackend) -> None:
    """Stored responses round-trip; prune_responses deletes exactly those with expires_at < now."""
    times = [0, 5, 10, 11, MAX_TIME - 1, MAX_TIME]
    records = [stored_response(i, expires_at=t) for i, t in enumerate(times)]
    async with _Open(backend) as store:
        await store.write(Batch(responses=records))
        for record in records:
            assert await store.response(record.request_hash) == record
        assert await store.prune_responses(10) == 2, "expires_at 0 and 5 are < 10"
        assert await store.response(records[0].request_hash) is None
        assert await store.response(records[1].request_hash) is None
        assert await store.response(records[2].request_hash) == records[2], "10 is not < 10"
        assert await store.prune_responses(10) == 0
        assert await store.prune_responses(MAX_TIME) == 3
        assert await store.response(records[5].request_hash) == records[5]
        assert await store.prune_responses(0) == 0
        bad_times: tuple[Any, ...] = (-1, MAX_TIME + 1, 1.5, "10")  # (ill-typed on purpose)
        for bad in bad_times:
            try:
                await store.prune_responses(bad)
            except LocalProtocolError:
                pass
            else:
                raise _fail(backend, f"prune_responses({bad!r}) did not raise")
        assert await store.response(records[5].request_hash) == records[5]


async def case_vouchers_and_floor(backend: StoreBackend) -> None:
    """Responses keep their request frames; `vouchers` / `vouchers_near` list them by n;
    `prune_responses` keeps the highest-n pruned frame per channel as the floor voucher."""
    ch, other = channel_id(0), channel_id(1)
    frames = {n: voucher(n=n, paid=10 * n).to_frame() for n in range(1, 9)}
    on_ch = [
        stored_response(100 + n, channel=ch, n=n, request_frame=frames[n], expires_at=10 * n)
        for n in range(1, 9)
    ]
    same_n = stored_response(
        201, channel=ch, n=4, request_frame=voucher(n=4, paid=7).to_frame(), expires_at=1000
    )
    bare = stored_response(200, channel=ch, n=5, expires_at=1)  # no request frame kept
    elsewhere = stored_response(202, channel=other, n=3, request_frame=frames[3], expires_at=5)

    def key(r: StoredResponse) -> tuple[int, bytes]:
        return (r.n, r.request_hash)

    async with _Open(backend) as store:
        await store.write(Batch(responses=[*on_ch, same_n, bare, elsewhere]))
        assert await store.response(same_n.request_hash) == same_n
        assert await store.response(bare.request_hash) == bare
        every = sorted([*on_ch, same_n], key=key)
        assert await store.vouchers(ch) == every, "vouchers(): frames kept, by (n, hash)"
        assert await store.vouchers(other) == [elsewhere]
        assert await store.vouchers(channel_id(7)) == []
        fours = sorted([on_ch[3], same_n], key=key)
        near = await store.vouchers_near(ch, 4, 2)
        assert near == [on_ch[1], on_ch[2], *fours, on_ch[4], on_ch[5]], near
        assert await store.vouchers_near(ch, 4, 0) == fours
        assert await store.vouchers_near(ch, 100, 2) == [on_ch[6], on_ch[7]]
        assert await store.vouchers_near(ch, 0, 3) == on_ch[:3]
        for bad in (
            lambda: store.vouchers(b"short"),
            lambda: store.vouchers_near(ch, -1),
            lambda: store.vouchers_near(ch, 1, 1 << 17),
            lambda: store.floor_voucher(b""),
        ):
            try:
                await bad()
            except LocalProtocolError:
                pass
            else:
                raise _fail(backend, "a bad vouchers argument did not raise")
        assert await store.floor_voucher(ch) is None
        assert await store.prune_responses(35) == 5, "n 1-3 of ch, the bare one, elsewhere"
        floor = await store.floor_voucher(ch)
        assert floor is not None and (floor.n, floor.request_frame) == (3, frames[3]), floor
        assert floor.request_hash == on_ch[2].request_hash and floor.channel == ch
        got = await store.floor_voucher(other)
        assert got is not None and (got.n, got.request_frame) == (3, frames[3])
        assert await store.vouchers(ch) == every[3:]
        assert await store.prune_responses(36) == 0
        assert await store.floor_voucher(ch) == floor
        assert await store.prune_responses(MAX_TIME) == 6
        floor = await store.floor_voucher(ch)
        assert floor is not None and (floor.n, floor.request_frame) == (8, frames[8])
        assert await store.vouchers(ch) == []
        # a later prune of lower numbers never lowers the floor
        await store.write(Batch(responses=[on_ch[0]]))
        assert await store.prune_responses(MAX_TIME) == 1
        assert await store.floor_voucher(ch) == floor


async def case_claims_round_trip(backend: StoreBackend) -> None:
    """Claims round-trip, are listed by claim id, and upsert by claim id."""
    records = [claim_record(i) for i in range(5)]
    records.append(claim_record(9, claim_id=b"\x01", state="x" * 255, updated_at=MAX_TIME))
    async with _Open(backend) as store:
        await store.write(Batch(claims=records))
        assert await store.claims() == sorted(records, key=lambda c: c.claim_id)
        answered = dataclasses.replace(records[2], state="answered", updated_at=5)
        await store.write(Batch(claims=[answered]))
        listed = await store.claims()
        assert len(listed) == len(records)
        assert answered in listed and records[2] not in listed


async def case_meta(backend: StoreBackend) -> None:
    """Meta keys: missing is None, b"" is a value, overwrite, unicode keys, bad keys refused."""
    async with _Open(backend) as store:
        await store.write(Batch(meta={"cursor": b"\x00" * 8, "empty": b"", "clé": b"\xff"}))
        assert await store.get_meta("cursor") == b"\x00" * 8
        assert await store.get_meta("empty") == b""
        assert await store.get_meta("clé") == b"\xff"
        assert await store.get_meta("missing") is None
        await store.write(Batch(meta={"cursor": b"\x01"}))
        assert await store.get_meta("cursor") == b"\x01"
        assert await store.get_meta("empty") == b"", "other keys untouched"
        bad_keys: tuple[Any, ...] = ("", 7, b"cursor", "k" * 256)  # (ill-typed on purpose)
        for bad in bad_keys:
            try:
                await store.get_meta(bad)
            except LocalProtocolError:
                pass
            else:
                raise _fail(backend, f"get_meta({bad!r}) did not raise")


async def case_upsert(backend: StoreBackend) -> None:
    """A record replaces the one with the same key: within a batch and across batches."""
    async with _Open(backend) as store:
        first = payee_record(1, last_n=1)
        second = payee_record(1, last_n=2)
        other = payee_record(2)
        await store.write(Batch(payee=[first, other, second]))
        assert await store.payee_channel(first.channel) == second, "later in the list wins"
        third = payee_record(1, last_n=3, status="closed")
        await store.write(Batch(payee=[third]))
        assert await store.payee_channels() == sorted([third, other], key=lambda r: r.channel)
        # every kind upserts by its own key
        await store.write(
            Batch(
                payer=[payer_record(1, last_n=1)],
                requests=[outgoing(1)],
                responses=[stored_response(1)],
                claims=[claim_record(1)],
            )
        )
        await store.write(
            Batch(
                payer=[payer_record(1, last_n=9)],
                requests=[outgoing(1, state="answered", frame=b"")],
                responses=[stored_response(1, frame=b"new")],
                claims=[claim_record(1, state="upheld")],
            )
        )
        assert await store.payer_channel(channel_id(1)) == payer_record(1, last_n=9)
        assert await store.requests() == [outgoing(1, state="answered", frame=b"")]
        assert await store.response(_id("request", 1)) == stored_response(1, frame=b"new")
        assert await store.claims() == [claim_record(1, state="upheld")]


async def case_delete_requests(backend: StoreBackend) -> None:
    """delete_requests removes requests (after the batch's upserts); unknown hashes are fine."""
    async with _Open(backend) as store:
        await store.write(Batch(requests=[outgoing(i) for i in range(4)]))
        await store.write(Batch(delete_requests=[_id("request", 1), _id("request", 77)]))
        assert await store.request(_id("request", 1)) is None
        assert {r.request_hash for r in await store.requests()} == {
            _id("request", i) for i in (0, 2, 3)
        }
        # upsert and delete of the same hash in one batch: deleted
        await store.write(
            Batch(requests=[outgoing(2, state="answered")], delete_requests=[_id("request", 2)])
        )
        assert await store.request(_id("request", 2)) is None
        # a later batch may bring it back
        await store.write(Batch(requests=[outgoing(2, state="refused")]))
        assert await store.request(_id("request", 2)) == outgoing(2, state="refused")
        # deleting a request leaves its stored response alone
        await store.write(Batch(responses=[stored_response(3)]))
        await store.write(Batch(delete_requests=[_id("request", 3)]))
        assert await store.response(_id("request", 3)) == stored_response(3)


async def case_request_updates(backend: StoreBackend) -> None:
    """A RequestUpdate changes a stored request's state and time, and nothing else."""

    def update(i: int, state: str = "answered", at: int = 5) -> RequestUpdate:
        return RequestUpdate(request_hash=_id("request", i), state=state, updated_at=at)

    async with _Open(backend) as store:
        stored = [outgoing(i) for i in range(3)] + [outgoing(3, state="claimed", claim_id=b"c")]
        await store.write(Batch(requests=stored))
        commits = store.commits
        await store.write(Batch(request_updates=[update(0), update(3, "rejected", 9)]))
        assert store.commits == commits + 1
        assert await store.request(_id("request", 0)) == outgoing(0, state="answered", updated_at=5)
        assert await store.request(_id("request", 3)) == outgoing(
            3, state="rejected", claim_id=b"c", updated_at=9
        ), "the frame, deadline and claim id are kept"
        # a hash the store does not hold: nothing happens, and it is not an error
        before = await _snapshot(store)
        await store.write(Batch(request_updates=[update(77)]))
        assert await _snapshot(store) == before
        # within one batch: upserts, then updates (in order), then deletes
        await store.write(
            Batch(
                requests=[outgoing(1, frame=b"new"), outgoing(8)],
                request_updates=[update(1, "refused", 6), update(1, "answered", 7), update(8)],
                delete_requests=[_id("request", 8)],
            )
        )
        assert await store.request(_id("request", 1)) == outgoing(
            1, frame=b"new", state="answered", updated_at=7
        )
        assert await store.request(_id("request", 8)) is None
        # concurrent writers, started one after another: applied in that order, whatever
        # the grouping into transactions
        batches = [
            Batch(requests=[outgoing(5)]),
            Batch(request_updates=[update(5, at=11)]),
            Batch(delete_requests=[_id("request", 2)]),
            Batch(request_updates=[update(2)]),
            Batch(request_updates=[update(0, "claimed", 12)]),
            Batch(requests=[outgoing(0, state="expired")]),
            Batch(request_updates=[update(6)]),
            Batch(requests=[outgoing(6)]),
        ]
        async with trio.open_nursery() as nursery:
            for batch in batches:
                nursery.start_soon(store.write, batch)
                await trio.testing.wait_all_tasks_blocked()
        assert await store.request(_id("request", 5)) == outgoing(
            5, state="answered", updated_at=11
        )
        assert await store.request(_id("request", 2)) is None, "an update does not revive"
        assert await store.request(_id("request", 0)) == outgoing(0, state="expired")
        assert await store.request(_id("request", 6)) == outgoing(6)
        answered = {r.request_hash for r in await store.requests(state="answered")}
        assert answered == {_id("request", 1), _id("request", 5)}, "the state index follows"
        expected = await _snapshot(store)
        if backend.reopen is None:
            return
        await store.aclose()
        again = await backend.reopen(store)
        try:
            assert await _snapshot(again) == expected, "updates are durable"
        finally:
            await again.aclose()


def _invalid_batches() -> list[tuple[str, Callable[[], Batch]]]:
    good = payee_record(1)

    def ok() -> dict[str, Any]:
        return {"payee": [good], "meta": {"ok": b"1"}, "requests": [outgoing(1)]}

    def with_(**extra: Any) -> Callable[[], Batch]:
        def build() -> Batch:
            fields = ok()
            for key, value in extra.items():
                current = fields.get(key)
                if isinstance(current, list) and isinstance(value, list):
                    fields[key] = current + value
                elif isinstance(current, dict) and isinstance(value, dict):
                    fields[key] = {**current, **value}
                else:
                    fields[key] = value
            return Batch(**fields)

        return build

    return [
        ("negative amount", with_(payee=[_corrupt(payee_record(2), "spent", -1)])),
        ("amount above 2**128-1", with_(payer=[_corrupt(payer_record(2), "paid", MAX_YOCTO + 1)])),
        ("float amount", with_(requests=[_corrupt(outgoing(2), "price", 1.0)])),
        ("bool amount", with_(payer=[_corrupt(payer_record(2), "deposit", True)])),
        ("31-byte channel", with_(payee=[_corrupt(payee_record(2), "channel", b"\x01" * 31)])),
        (
            "bytearray hash",
            with_(responses=[_corrupt(stored_response(2), "request_hash", bytearray(32))]),
        ),
        ("unknown status", with_(payee=[_corrupt(payee_record(2), "status", "gone")])),
        ("unknown state", with_(requests=[_corrupt(outgoing(2), "state", "lost")])),
        ("unknown role", with_(claims=[_corrupt(claim_record(2), "role", "judge")])),
        (
            "spent above paid_max",
            with_(payee=[_corrupt(payee_record(2, paid_max=5, best_voucher=b"v"), "spent", 6)]),
        ),
        ("paid_max without voucher", with_(payee=[_corrupt(payee_record(2), "paid_max", 1)])),
        ("spent above paid", with_(payer=[_corrupt(payer_record(2), "spent", 1)])),
        (
            "absorbed above 2**128-1",
            with_(payer=[_corrupt(payer_record(2), "absorbed", MAX_YOCTO + 1)]),
        ),
        ("negative forgotten", with_(payer=[_corrupt(payer_record(2), "forgotten", -1)])),
        ("float released", with_(payer=[_corrupt(payer_record(2), "released", 1.0)])),
        (
            "absorbed above spent",
            with_(payer=[_corrupt(payer_record(2, paid=5, spent=3), "absorbed", 4)]),
        ),
        (
            "forgotten above paid",
            with_(payer=[_corrupt(payer_record(2, paid=5), "forgotten", 6)]),
        ),
        (
            "released above paid",
            with_(payer=[_corrupt(payer_record(2, paid=5), "released", 6)]),
        ),
        ("n above 2**64-1", with_(responses=[_corrupt(stored_response(2), "n", MAX_N + 1)])),
        ("record of the wrong kind", with_(payer=[payee_record(2)])),
        ("meta value not bytes", with_(meta={"bad": "text"})),
        ("empty meta key", with_(meta={"": b"x"})),
        ("short delete hash", with_(delete_requests=[b"\x00" * 31])),
        (
            "update to an unknown state",
            with_(
                request_updates=[
                    _corrupt(
                        RequestUpdate(request_hash=_id("request", 1), state="answered"),
                        "state",
                        "lost",
                    )
                ]
            ),
        ),
        ("update of the wrong kind", with_(request_updates=[outgoing(1)])),
        ("records not in a list", with_(claims=(claim_record(2),))),
    ]


async def case_atomic_invalid_batch(backend: StoreBackend) -> None:
    """A batch with one invalid record raises LocalProtocolError and applies nothing."""
    async with _Open(backend) as store:
        await store.write(Batch(meta={"before": b"1"}))
        before = await _snapshot(store)
        commits = store.commits
        for label, build in _invalid_batches():
            try:
                await store.write(build())
            except LocalProtocolError:
                pass
            else:
                raise _fail(backend, f"a batch with {label} was accepted")
            assert await _snapshot(store) == before, f"part of a batch with {label} was applied"
            assert await store.get_meta("ok") is None, f"meta of a batch with {label} applied"
        not_a_batch: Any = "not a batch"
        try:
            await store.write(not_a_batch)
        except LocalProtocolError:
            pass
        else:
            raise _fail(backend, "write accepted something that is not a Batch")
        assert store.commits == commits, "refused batches must not commit"
        await store.write(Batch(meta={"after": b"2"}))
        assert await store.get_meta("after") == b"2", "the store works after refusals"


async def case_batch_is_snapshot(backend: StoreBackend) -> None:
    """What is written is the batch as it was when write() was called."""
    async with _Open(backend) as store:
        batch = Batch(payee=[payee_record(1)], meta={"k": b"original"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.write, batch)
            await trio.testing.wait_all_tasks_blocked()
            batch.payee[0] = payee_record(1, last_n=99)
            batch.meta["k"] = b"changed"
            batch.requests.append(outgoing(1))
        assert await store.payee_channel(channel_id(1)) == payee_record(1)
        assert await store.get_meta("k") == b"original"
        assert await store.requests() == []


async def case_group_commit(backend: StoreBackend) -> None:
    """100 concurrent writers: all durable; a group-committing backend shares commits."""
    writers = 100
    async with _Open(backend) as store:
        commits = store.commits
        done: list[int] = []

        async def writer(i: int) -> None:
            await store.write(
                Batch(
                    payee=[payee_record(i, last_n=i + 1)],
                    requests=[outgoing(i)],
                    meta={f"w{i}": i.to_bytes(2, "big")},
                )
            )
            done.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(writer, i)
        assert sorted(done) == list(range(writers))
        used = store.commits - commits
        assert 1 <= used <= writers, f"{used} commits for {writers} writes"
        if backend.group_commit:
            assert used <= 10, f"{writers} concurrent writes took {used} commits (no group commit?)"
        payees = await store.payee_channels()
        assert payees == sorted(
            (payee_record(i, last_n=i + 1) for i in range(writers)), key=lambda r: r.channel
        )
        assert len(await store.requests()) == writers
        for i in range(writers):
            assert await store.get_meta(f"w{i}") == i.to_bytes(2, "big")


async def case_later_batch_wins(backend: StoreBackend) -> None:
    """Writers started one after another on the same keys: the last started wins."""
    writers = 20
    async with _Open(backend) as store:
        acknowledged: list[int] = []

        async def writer(i: int) -> None:
            await store.write(
                Batch(payer=[payer_record(1, last_n=i)], meta={"last": i.to_bytes(1, "big")})
            )
            acknowledged.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(writer, i)
                # Let writer i call write() (and block in it) before writer i + 1 starts.
                await trio.testing.wait_all_tasks_blocked()
        assert sorted(acknowledged) == list(range(writers))
        assert await store.payer_channel(channel_id(1)) == payer_record(1, last_n=writers - 1)
        assert await store.get_meta("last") == (writers - 1).to_bytes(1, "big")
        # And an acknowledged batch is never overwritten by one acknowledged before it.
        for i in range(5):
            await store.write(Batch(payer=[payer_record(1, last_n=100 + i)]))
            assert await store.payer_channel(channel_id(1)) == payer_record(1, last_n=100 + i)


async def case_cancelled_write(backend: StoreBackend) -> None:
    """A write cancelled before it could start applies nothing and leaves the store usable."""
    async with _Open(backend) as store:
        commits = store.commits
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.write(Batch(payee=[payee_record(1)], meta={"x": b"1"}))
        assert scope.cancelled_caught, "write() must be a checkpoint"
        assert await store.payee_channel(channel_id(1)) is None
        assert await store.get_meta("x") is None
        assert store.commits == commits
        await store.write(Batch(meta={"x": b"2"}))
        assert await store.get_meta("x") == b"2"


async def case_closed_store(backend: StoreBackend) -> None:
    """After aclose, writes and reads raise StoreClosed; aclose is idempotent."""
    store = await backend.create()
    await store.write(Batch(meta={"k": b"v"}))
    await store.aclose()
    await store.aclose()
    try:
        await store.write(Batch(meta={"k": b"w"}))
    except StoreClosed:
        pass
    else:
        raise _fail(backend, "write on a closed store did not raise StoreClosed")
    try:
        await store.get_meta("k")
    except StoreClosed:
        pass
    else:
        raise _fail(backend, "read on a closed store did not raise StoreClosed")


async def case_reopen(backend: StoreBackend) -> None:
    """Everything acknowledged is there after closing and reopening the storage."""
    if backend.reopen is None:
        return
    best = voucher(n=4, paid=MAX_YOCTO)
    payees = [
        payee_record(0, paid_max=MAX_YOCTO, best_voucher=best.to_frame(), spent=MAX_YOCTO - 1),
        payee_record(1, status="closed"),
    ]
    payers = [
        payer_record(0, paid=MAX_YOCTO, spent=7, last_n=MAX_N, absorbed=6, forgotten=5, released=4)
    ]
    requests = [outgoing(i, state=s) for i, s in enumerate(sorted(REQUEST_STATES))]
    responses = [stored_response(i, expires_at=MAX_TIME - i) for i in range(3)]
    responses.append(
        stored_response(
            7, channel=channel_id(2), n=9, request_frame=voucher(n=9).to_frame(), expires_at=3
        )
    )
    claims = [claim_record(i) for i in range(3)]
    store = await backend.create()
    try:
        await store.write(Batch(payee=payees, payer=payers, requests=requests))
        await store.write(Batch(responses=responses, claims=claims, meta={"cursor": b"\x07" * 16}))
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(store.write, Batch(meta={f"g{i}": bytes([i])}))
        await store.write(Batch(delete_requests=[requests[0].request_hash]))
        kept = responses.pop()
        assert await store.prune_responses(4) == 1
        floor = await store.floor_voucher(kept.channel)
        assert floor is not None and floor.request_frame == kept.request_frame
        expected = await _snapshot(store)
    finally:
        await store.aclose()
    again = await backend.reopen(store)
    try:
        assert await _snapshot(again) == expected, "state differs after reopening"
        assert expected["payee"] == sorted(payees, key=lambda r: r.channel)
        assert expected["payer"] == payers, "absorbed, forgotten, released survive"
        assert await again.request(requests[0].request_hash) is None
        for response in responses:
            assert await again.response(response.request_hash) == response
        assert await again.floor_voucher(kept.channel) == floor, "the floor voucher is kept"
        assert await again.get_meta("cursor") == b"\x07" * 16
        for i in range(50):
            assert await again.get_meta(f"g{i}") == bytes([i])
        await again.write(Batch(payer=[payer_record(0, paid=MAX_YOCTO, spent=8, last_n=MAX_N)]))
        assert (await again.payer_channel(channel_id(0))) == payer_record(
            0, paid=MAX_YOCTO, spent=8, last_n=MAX_N
        )
    finally:
        await again.aclose()
    third = await backend.reopen(again)
    try:
        got = await third.payer_channel(channel_id(0))
        assert got is not None and got.spent == 8, "a write after reopening is durable too"
    finally:
        await third.aclose()


def store_conformance_cases() -> list[tuple[str, Case]]:
    """The suite: ``(name, case)`` pairs; each case takes a `StoreBackend`."""
    cases: list[Case] = [
        case_empty_store,
        case_payee_round_trip,
        case_payer_round_trip,
        case_requests_round_trip,
        case_responses_and_prune,
        case_vouchers_and_floor,
        case_claims_round_trip,
        case_meta,
        case_upsert,
        case_delete_requests,
        case_request_updates,
        case_atomic_invalid_batch,
        case_batch_is_snapshot,
        case_group_commit,
        case_later_batch_wins,
        case_cancelled_write,
        case_closed_store,
        case_reopen,
    ]
    return [(case.__name__.removeprefix("case_"), case) for case in cases]


async def check_store_conformance(backend: StoreBackend) -> None:
    """Run every case against `backend`.

    Raises:
        AssertionError: the first case that fails, with the backend's name.
    """
    for _name, case in store_conformance_cases():
        await case(backend)


__all__ = [
    "ALICE",
    "BOB",
    "LEDGER",
    "Case",
    "StoreBackend",
    "channel_id",
    "check_store_conformance",
    "claim_record",
    "outgoing",
    "payee_record",
    "payer_record",
    "store_conformance_cases",
    "stored_response",
    "voucher",
]
