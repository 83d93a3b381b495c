"""Test helpers and conformance suites that users' own tests can reuse.

Each suite is a set of named async check functions over a factory, so that it runs
against every backend (ours and yours) and a failure names the case:

* Ledger conformance (specs/settlement.md): `ledger_conformance_cases`,
  `run_ledger_conformance`.

Fixed test keys: `ALICE`, `BOB`, `CAROL`, `MALLORY` (seeds ``bytes([i]) * 32``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from p2pay.core.errors import ErrorCode, LocalProtocolError, P2payError, SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    Request,
    Response,
    blake2b256,
    decode_held_frame,
    request_signing_bytes,
    response_signing_bytes,
)
from p2pay.core.settlement import (
    MAX_AMOUNT,
    Channel,
    ChannelState,
    Claim,
    ClaimState,
    Event,
    EventKind,
    Stake,
    channel_id,
    claim_slot_ms,
    unbonding_period,
)
from p2pay.core.signing import Signer, sign_message
from p2pay.core.tx import Transaction
from p2pay.ledger.base import CLAIM_ROLES, Ledger, Receipt, Totals, claims_one_by_one

if TYPE_CHECKING:
    from p2pay.core.evmsig import EvmKey

# ---------------------------------------------------------------------------
# fixed test keys

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
CAROL = Keypair.from_seed(bytes([3]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)


def unchecked_request(
    key: Signer,
    *,
    ledger: bytes,
    channel: bytes,
    n: int,
    paid: int,
    price: int,
    service: str,
    body: bytes,
    deadline: int,
) -> Request:
    """A signed `Request` built without its own range checks (``n = 0``, an empty service):
    the tests use it to check that a ledger refuses such requests itself (a peer or a
    contract caller is not bound by our constructor). `key` signs as in `Request.create`."""
    request = Request.__new__(Request)
    values: dict[str, Any] = {
        "ledger": ledger,
        "channel": channel,
        "n": n,
        "paid": paid,
        "price": price,
        "service": service,
        "body_hash": blake2b256(body),
        "deadline": deadline,
    }
    for name, value in values.items():
        object.__setattr__(request, name, value)
    signed = request_signing_bytes(**values)
    object.__setattr__(request, "signing_bytes", signed)
    object.__setattr__(request, "hash", blake2b256(signed))
    object.__setattr__(request, "body", body)
    object.__setattr__(request, "_frame", b"")
    object.__setattr__(request, "signature", b"")
    object.__setattr__(request, "signature", sign_message(key, request))
    return request


def unchecked_response(
    key: Signer, *, request: Request, status: str, price: int, spent: int, body: bytes
) -> Response:
    """A signed `Response` to `request` built without its own checks (a refusal that charges
    a price): for checking that a ledger refuses it itself."""
    response = Response.__new__(Response)
    values: dict[str, Any] = {
        "ledger": request.ledger,
        "channel": request.channel,
        "n": request.n,
        "request_hash": request.hash,
        "status": status,
        "price": price,
        "spent": spent,
        "body_hash": blake2b256(body),
    }
    for name, value in values.items():
        object.__setattr__(response, name, value)
    object.__setattr__(response, "signing_bytes", response_signing_bytes(**values))
    object.__setattr__(response, "body", body)
    object.__setattr__(response, "signature", b"")
    object.__setattr__(response, "signature", sign_message(key, response))
    return response


def evm_test_keys() -> tuple[EvmKey, dict[str, EvmKey]]:
    """The EVM ledger tests' keys: a deployer (secret ``09 * 32``) and the settlement keys
    derived from ALICE, BOB, CAROL and MALLORY (`EvmKey.derive`). Needs the evm extra."""
    from p2pay.core.evmsig import EvmKey

    derived = {
        name: EvmKey.derive(globals()[name]) for name in ("ALICE", "BOB", "CAROL", "MALLORY")
    }
    return EvmKey.from_secret(bytes([9]) * 32), derived


# ===========================================================================
# Ledger conformance suite (specs/settlement.md)
# ===========================================================================
#
# Usage, with pytest-trio:
#
#     from p2pay.testing import ledger_conformance_cases
#
#     async def my_factory(clock, *, dev=True):
#         return await MyLedger.create(clock=clock, dev=dev)
#
#     @pytest.mark.parametrize("name,case", ledger_conformance_cases(),
#                              ids=[n for n, _ in ledger_conformance_cases()])
#     async def test_my_ledger(name, case):
#         await case(my_factory)
#
# or, without pytest: ``await run_ledger_conformance(my_factory)``.
#
# Every operation a case performs goes through `CheckedLedger`, which checks after each
# one: conservation (S-1, via `totals().conserved`); a refused op changed nothing that
# can be read (S-4); a successful op stored >= 1 event, with consecutive `seq` and
# ``at`` equal to the ledger time; every event has exactly the fields of section 7.

TOKEN = 10**24
T0 = 1_700_000_000_000  # the conformance clock starts here (ms)

#: specs/settlement.md section 7: the fields of every event kind.
EVENT_FIELDS: dict[str, frozenset[str]] = {
    EventKind.MINTED: frozenset({"account", "amount"}),
    EventKind.TRANSFERRED: frozenset({"from", "to", "amount"}),
    EventKind.WITHDRAWN: frozenset({"account", "amount"}),
    EventKind.CHANNEL_OPENED: frozenset({"channel", "payer", "payee", "deposit", "challenge_ms"}),
    EventKind.TOPPED_UP: frozenset({"channel", "payer", "amount", "deposit"}),
    EventKind.REDEEMED: frozenset({"channel", "payer", "payee", "amount", "redeemed", "n", "paid"}),
    EventKind.CHANNEL_CLOSING: frozenset({"channel", "payer", "payee", "closes_at"}),
    EventKind.CHANNEL_CLOSED: frozenset(
        {"channel", "payer", "payee", "by", "redeemed", "refunded"}
    ),
    EventKind.STAKED: frozenset({"account", "amount", "total", "penalty", "claim_window_ms"}),
    EventKind.UNSTAKE_REQUESTED: frozenset({"account", "amount", "unbonding_at"}),
    EventKind.STAKE_WITHDRAWN: frozenset({"account", "amount"}),
    EventKind.CLAIM_FILED: frozenset(
        {
            "claim",
            "claimant",
            "respondent",
            "channel",
            "n",
            "price",
            "paid",
            "deadline",
            "bond",
            "window_ends",
        }
    ),
    EventKind.CLAIM_ANSWERED: frozenset(
        {
            "claim",
            "claimant",
            "respondent",
            "outcome",
            "status",
            "bond",
            "bond_to",
            "refund",
            "clawed",
        }
    ),
    EventKind.CLAIM_UPHELD: frozenset(
        {
            "claim",
            "claimant",
            "respondent",
            "slashed",
            "to_claimant",
            "burnt",
            "bond",
            "refund",
            "clawed",
        }
    ),
    EventKind.SLASHED: frozenset({"account", "amount", "claim"}),
}


class LedgerConformanceError(P2payError, AssertionError):
    """A ledger backend does not behave as specs/settlement.md says (an AssertionError, so
    test runners report it as a failure). ``str()`` is the message alone."""

    def __str__(self) -> str:
        return self.message


class LedgerFactory(Protocol):
    """Makes a fresh, empty ledger whose time is ``clock()`` (ms).

    `dev` is True (mint allowed) unless a case asks for a production ledger. Every other
    parameter keeps its default (`p2pay.core.settlement.Params`).
    """

    def __call__(self, clock: Callable[[], int], *, dev: bool = True) -> Awaitable[Ledger]: ...


class ManualClock:
    """A clock the test moves by hand: ``clock()`` returns `ms`."""

    def __init__(self, start: int = T0) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> int:
        self.ms += ms
        return self.ms


def _fail(message: str) -> LedgerConformanceError:
    return LedgerConformanceError(message)


def expect(cond: object, message: str) -> None:
    """Raise `LedgerConformanceError` with `message` unless `cond` holds."""
    if not cond:
        raise _fail(message)


def expect_eq(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise _fail(f"{what}: got {actual!r}, expected {expected!r}")


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    totals: Totals
    last_seq: int
    balances: tuple[int, ...]
    stakes: tuple[Stake | None, ...]
    channels: tuple[tuple[Channel, ...], ...]
    claims: tuple[tuple[Claim, ...], ...]


_OPS = (
    "mint",
    "transfer",
    "withdraw",
    "open_channel",
    "top_up",
    "redeem",
    "payee_close",
    "start_close",
    "finalize_close",
    "stake",
    "request_unstake",
    "withdraw_stake",
    "file_claim",
    "answer_claim",
    "resolve_claim",
)


class CheckedLedger:
    """Wraps a ledger; checks the invariants around every operation (see module section).

    Reads pass through. `last_events` holds the events the last successful op stored.
    """

    def __init__(self, inner: Ledger, clock: ManualClock, accounts: Sequence[bytes]) -> None:
        self.inner = inner
        self.clock = clock
        self.accounts = list(accounts)
        self.last_events: list[Event] = []
        self.kinds_seen: set[str] = set()
        self.ops_ok = 0
        self.last_at = 0

    def __getattr__(self, name: str) -> Any:
        if name in _OPS:

            async def op(*args: Any, **kwargs: Any) -> Any:
                return await self._op(name, *args, **kwargs)

            return op
        return getattr(self.inner, name)

    async def snapshot(self) -> _Snapshot:
        ledger = self.inner
        events = await ledger.events(after=0, limit=1 << 30)
        return _Snapshot(
            totals=await ledger.totals(),
            last_seq=events[-1].seq if events else 0,
            balances=tuple([await ledger.balance(a) for a in self.accounts]),
            stakes=tuple([await ledger.stake_of(a) for a in self.accounts]),
            channels=tuple([tuple(await ledger.channels_of(a)) for a in self.accounts]),
            claims=tuple([tuple(await ledger.claims_of(a)) for a in self.accounts]),
        )

    async def _op(self, name: str, *args: Any, **kwargs: Any) -> Any:
        before = await self.snapshot()
        tx_before = self.inner.tx_count
        try:
            result = await getattr(self.inner, name)(*args, **kwargs)
        except SettlementError:
            after = await self.snapshot()
            if after != before:
                raise _fail(f"S-4: refused {name} changed the ledger") from None
            expect_eq(self.inner.tx_count, tx_before, f"tx_count after a refused {name}")
            raise
        expect_eq(self.inner.tx_count, tx_before + 1, f"tx_count after {name}")
        after = await self.snapshot()
        expect(after.totals.conserved, f"S-1: not conserved after {name}: {after.totals}")
        self._check_state(after, name)
        new = await self.inner.events(after=before.last_seq, limit=1 << 30)
        if name == "redeem" and result == 0:
            # section 7: a Redeem that pays nothing changes nothing and stores no event
            expect_eq(new, [], "events of a redeem that paid 0")
            expect_eq(after, before, "a redeem that paid 0 changed the ledger")
            self.last_events = []
            self.ops_ok += 1
            return result
        expect(new, f"S-4: successful {name} stored no event")
        expect_eq(
            [e.seq for e in new],
            list(range(before.last_seq + 1, before.last_seq + 1 + len(new))),
            f"event seqs after {name}",
        )
        expect(len({e.at for e in new}) == 1, f"events of one {name} have different times")
        expect(new[0].at >= self.clock.ms, f"{name}: event time {new[0].at} before the clock")
        expect(new[0].at >= self.last_at, f"{name}: ledger time went backwards")
        self.last_at = new[0].at
        for event in new:
            fields = EVENT_FIELDS.get(event.kind)
            expect(fields is not None, f"unknown event kind {event.kind!r}")
            expect_eq(frozenset(event.fields), fields, f"fields of {event.kind}")
            self.kinds_seen.add(event.kind)
        self._check_result(name, result, new)
        self.last_events = new
        self.ops_ok += 1
        return result

    def _check_state(self, snap: _Snapshot, name: str) -> None:
        """S-2 (bounds) and S-3 (open claim counts), as far as reads of known accounts go."""
        for balance in snap.balances:
            expect(0 <= balance <= MAX_AMOUNT, f"S-2: balance {balance} after {name}")
        for channels in snap.channels:
            for ch in channels:
                expect(
                    0 <= ch.redeemed <= ch.deposit <= MAX_AMOUNT,
                    f"S-2: channel deposit/redeemed {ch.deposit}/{ch.redeemed} after {name}",
                )
                expect(
                    0 <= ch.clawed <= ch.redeemed
                    and 0 <= ch.paid_seen <= MAX_AMOUNT
                    and 0 <= ch.refunded <= MAX_AMOUNT,
                    f"S-2: channel paid_seen/refunded/clawed out of range after {name}",
                )
        for account, stake, claims in zip(self.accounts, snap.stakes, snap.claims, strict=True):
            open_against = sum(
                1 for c in claims if c.respondent == account and c.state is ClaimState.OPEN
            )
            counted = stake.open_claims if stake is not None else 0
            expect_eq(counted, open_against, f"S-3: open_claims of a stake after {name}")
            if stake is not None:
                expect(0 <= stake.amount <= MAX_AMOUNT, f"S-2: stake amount after {name}")

    def _check_result(self, name: str, result: Any, events: list[Event]) -> None:
        """An op's return value agrees with the events it stored."""
        first = events[0]
        if name == "open_channel":
            expect(isinstance(result, bytes) and len(result) == 32, "open_channel returns an id")
            expect_eq(result, first.fields["channel"], "open_channel result vs ChannelOpened")
        elif name == "file_claim":
            expect_eq(result, first.fields["claim"], "file_claim result vs ClaimFiled")
        elif name in ("redeem", "payee_close"):
            paid = first.fields["amount"] if first.kind == EventKind.REDEEMED else 0
            expect_eq(result, paid, f"{name} result vs Redeemed.amount")
        else:
            expect_eq(result, None, f"{name} result")


class LedgerHarness:
    """What a case gets: a checked dev ledger ``h.ledger`` on a `ManualClock` ``h.clock``."""

    def __init__(self, factory: LedgerFactory) -> None:
        self.factory = factory
        self.clock = ManualClock()
        self.accounts = [ALICE.account, BOB.account, CAROL.account, MALLORY.account]
        self._opened: list[Ledger] = []
        self._ledger: CheckedLedger | None = None

    @property
    def ledger(self) -> CheckedLedger:
        """The case's ledger (made by `start`)."""
        if self._ledger is None:
            raise RuntimeError("LedgerHarness.start() was not called")
        return self._ledger

    async def start(self) -> None:
        self._ledger = await self.new_ledger()

    async def new_ledger(
        self, *, dev: bool = True, clock: ManualClock | None = None
    ) -> CheckedLedger:
        """Another fresh ledger (checked), on this harness's clock unless one is given."""
        clock = clock or self.clock
        raw = await self.factory(clock, dev=dev)
        self._opened.append(raw)
        expect(isinstance(raw, Ledger), "the factory must return a Ledger")
        expect_eq(raw.params.dev, dev, "params.dev of the factory's ledger")
        expect_eq(raw.ledger_id, raw.params.ledger_id, "ledger_id vs params.ledger_id")
        expect_eq(await raw.events(), [], "events of a fresh ledger")
        expect_eq(
            await raw.totals(),
            Totals(supply=0, balances=0, escrow=0, stakes=0, bonds=0, burnt=0),
            "totals of a fresh ledger",
        )
        return CheckedLedger(raw, clock, self.accounts)

    async def close(self) -> None:
        for ledger in self._opened:
            await ledger.aclose()

    async def refused(
        self, code: ErrorCode, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> None:
        """Run ``fn(*args, **kwargs)`` and check that it raises SettlementError(code)."""
        try:
            result = await fn(*args, **kwargs)
        except SettlementError as exc:
            if exc.code != code:
                raise _fail(f"expected {code}, got {exc.code}: {exc.message}") from None
            return
        raise _fail(f"expected refusal {code}, but it succeeded with {result!r}")

    async def funded(self, *pairs: tuple[Keypair, int]) -> None:
        for key, amount in pairs:
            await self.ledger.mint(key, key.account, amount)

    def voucher(
        self,
        key: Keypair,
        channel: bytes,
        *,
        n: int,
        paid: int,
        ledger: bytes | None = None,
        deadline: int | None = None,
        body: bytes = b"hello",
        price: int | None = None,
        service: str = "echo",
    ) -> Request:
        """A request signed by `key` (the voucher): deadline defaults to now + 1 s, price to
        ``min(paid, 1)``. Fields `Request` itself refuses (``n = 0``, an empty service) are
        signed as given (`unchecked_request`), so a case can check the ledger refuses them."""
        return unchecked_request(
            key,
            ledger=ledger if ledger is not None else self.ledger.ledger_id,
            channel=channel,
            n=n,
            paid=paid,
            price=min(paid, 1) if price is None else price,
            service=service,
            body=body,
            deadline=deadline if deadline is not None else self.clock.ms + 1_000,
        )

    def event(self, index: int = -1) -> Event:
        return self.ledger.last_events[index]

    def event_is(self, kind: str, index: int = -1, **fields: Any) -> Event:
        """Check the kind and some fields of an event of the last successful op."""
        event = self.event(index)
        expect_eq(event.kind, kind, "event kind")
        for name, value in fields.items():
            expect_eq(event.fields.get(name), value, f"{kind}.{name}")
        expect_eq(event.at, self.clock.ms, f"{kind}.at")
        return event

    async def balances(self, *keys: Keypair) -> list[int]:
        return [await self.ledger.balance(k.account) for k in keys]


CaseFn = Callable[[LedgerHarness], Awaitable[None]]
_CASES: list[tuple[str, CaseFn]] = []


def _case(fn: CaseFn) -> CaseFn:
    name = fn.__name__.removeprefix("_case_")
    _CASES.append((name, fn))
    return fn


# --- accounts ---------------------------------------------------------------


@_case
async def _case_mint(h: LedgerHarness) -> None:
    L = h.ledger
    await L.mint(MALLORY, ALICE.account, 5 * TOKEN)  # any sender may mint on a dev ledger
    h.event_is("Minted", account=ALICE.account, amount=5 * TOKEN)
    await L.mint(ALICE, ALICE.account, 1)
    expect_eq(await L.balance(ALICE.account), 5 * TOKEN + 1, "balance after mints")
    expect_eq((await L.totals()).supply, 5 * TOKEN + 1, "supply after mints")
    for bad in (0, -1, MAX_AMOUNT + 1, True, 1.0, "1", None):
        await h.refused(ErrorCode.INVALID_AMOUNT, L.mint, ALICE, ALICE.account, bad)
    for account in (b"", ALICE.account[:31], ALICE.account + b"\0", "x" * 32, None):
        await h.refused(ErrorCode.INVALID_ARGUMENT, L.mint, ALICE, account, 1)
    # a credit may not push a balance above MAX
    await L.mint(ALICE, BOB.account, MAX_AMOUNT)
    await h.refused(ErrorCode.INVALID_AMOUNT, L.mint, ALICE, BOB.account, 1)
    expect_eq(await L.balance(BOB.account), MAX_AMOUNT, "balance at MAX")
    # supply is a sum over accounts: it may exceed MAX and must be stored exactly
    await L.mint(ALICE, CAROL.account, MAX_AMOUNT)
    expect_eq((await L.totals()).supply, 2 * MAX_AMOUNT + 5 * TOKEN + 1, "supply above MAX")
    expect_eq(L.inner.tx_count, 4, "tx_count counts successful operations only")


@_case
async def _case_mint_refused_on_production_ledger(h: LedgerHarness) -> None:
    prod = await h.new_ledger(dev=False)
    expect_eq(prod.params.dev, False, "params.dev")
    await h.refused(ErrorCode.NOT_DEV_LEDGER, prod.mint, ALICE, ALICE.account, 1)
    # argument checks come before the dev check
    await h.refused(ErrorCode.INVALID_AMOUNT, prod.mint, ALICE, ALICE.account, 0)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, prod.transfer, ALICE, BOB.account, 1)
    expect_eq(await prod.events(), [], "events of a ledger where everything was refused")


@_case
async def _case_transfer(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    await L.transfer(ALICE, BOB.account, 3 * TOKEN)
    e = h.event_is("Transferred", to=BOB.account, amount=3 * TOKEN)
    expect_eq(e.fields["from"], ALICE.account, "Transferred.from")
    expect_eq(await h.balances(ALICE, BOB), [7 * TOKEN, 3 * TOKEN], "balances after transfer")
    await L.transfer(ALICE, ALICE.account, 7 * TOKEN)  # to oneself: a valid no-op
    expect_eq(await L.balance(ALICE.account), 7 * TOKEN, "balance after self transfer")
    await L.transfer(BOB, CAROL.account, 3 * TOKEN)  # the whole balance
    expect_eq(await h.balances(BOB, CAROL), [0, 3 * TOKEN], "balances after full transfer")
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.transfer, BOB, ALICE.account, 1)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.transfer, MALLORY, ALICE.account, 1)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.transfer, ALICE, BOB.account, 7 * TOKEN + 1)
    for bad in (0, -5, MAX_AMOUNT + 1, False):
        await h.refused(ErrorCode.INVALID_AMOUNT, L.transfer, ALICE, BOB.account, bad)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.transfer, ALICE, b"\1" * 31, 1)
    # amount is checked before funds, funds before the receiver's overflow
    await h.refused(ErrorCode.INVALID_AMOUNT, L.transfer, MALLORY, BOB.account, 0)
    await L.mint(ALICE, MALLORY.account, MAX_AMOUNT)
    await h.refused(ErrorCode.INVALID_AMOUNT, L.transfer, ALICE, MALLORY.account, 1)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.transfer, BOB, MALLORY.account, 1)


@_case
async def _case_withdraw(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    await L.withdraw(ALICE, 4 * TOKEN)
    h.event_is("Withdrawn", account=ALICE.account, amount=4 * TOKEN)
    expect_eq(await L.balance(ALICE.account), 6 * TOKEN, "balance after withdraw")
    expect_eq((await L.totals()).supply, 6 * TOKEN, "supply after withdraw")
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.withdraw, ALICE, 6 * TOKEN + 1)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.withdraw, BOB, 1)
    for bad in (0, -1, MAX_AMOUNT + 1):
        await h.refused(ErrorCode.INVALID_AMOUNT, L.withdraw, ALICE, bad)
    await L.withdraw(ALICE, 6 * TOKEN)
    expect_eq((await L.totals()).supply, 0, "supply after withdrawing everything")


# --- channels ---------------------------------------------------------------


@_case
async def _case_open_channel(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    cid = await L.open_channel(ALICE, BOB.account, 4 * TOKEN, 5_000)
    expect_eq(cid, channel_id(L.ledger_id, ALICE.account, BOB.account, 0), "first channel id")
    h.event_is(
        "ChannelOpened",
        channel=cid,
        payer=ALICE.account,
        payee=BOB.account,
        deposit=4 * TOKEN,
        challenge_ms=5_000,
    )
    ch = await L.channel(cid)
    expect(ch is not None, "channel readable after open")
    assert ch is not None
    expect_eq(
        (
            ch.id,
            ch.payer,
            ch.payee,
            ch.deposit,
            ch.redeemed,
            ch.challenge_ms,
            ch.state,
            ch.closes_at,
        ),
        (cid, ALICE.account, BOB.account, 4 * TOKEN, 0, 5_000, ChannelState.OPEN, 0),
        "new channel",
    )
    expect_eq(ch.escrow, 4 * TOKEN, "escrow")
    expect_eq(await L.balance(ALICE.account), 6 * TOKEN, "payer balance after open")
    expect_eq((await L.totals()).escrow, 4 * TOKEN, "totals.escrow")
    # a second channel between the same parties gets the next nonce
    cid2 = await L.open_channel(ALICE, BOB.account, 1, L.params.min_challenge_ms)
    expect_eq(cid2, channel_id(L.ledger_id, ALICE.account, BOB.account, 1), "second channel id")
    cid3 = await L.open_channel(ALICE, CAROL.account, 1, L.params.max_challenge_ms)
    expect_eq(cid3, channel_id(L.ledger_id, ALICE.account, CAROL.account, 2), "third channel id")
    expect_eq(len({cid, cid2, cid3}), 3, "distinct channel ids")
    expect_eq(await L.channel(b"\0" * 32), None, "unknown channel reads as None")
    # refusals, in the spec's order
    await h.refused(ErrorCode.INVALID_AMOUNT, L.open_channel, ALICE, BOB.account, 0, 5_000)
    await h.refused(ErrorCode.INVALID_AMOUNT, L.open_channel, ALICE, BOB.account, -1, 5_000)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.open_channel, ALICE, ALICE.account, 1, 5_000)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.open_channel, ALICE, b"\2" * 31, 1, 5_000)
    p = L.params
    for bad_period in (p.min_challenge_ms - 1, p.max_challenge_ms + 1, 0, -1, "5000", None):
        await h.refused(
            ErrorCode.INVALID_ARGUMENT, L.open_channel, ALICE, BOB.account, 1, bad_period
        )
    await h.refused(
        ErrorCode.INSUFFICIENT_FUNDS, L.open_channel, ALICE, BOB.account, 6 * TOKEN, 5_000
    )
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.open_channel, MALLORY, BOB.account, 1, 5_000)


@_case
async def _case_top_up(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    cid = await L.open_channel(ALICE, BOB.account, 2 * TOKEN, 5_000)
    await L.top_up(ALICE, cid, 3 * TOKEN)
    h.event_is("ToppedUp", channel=cid, payer=ALICE.account, amount=3 * TOKEN, deposit=5 * TOKEN)
    ch = await L.channel(cid)
    assert ch is not None
    expect_eq(ch.deposit, 5 * TOKEN, "deposit after top up")
    expect_eq(await L.balance(ALICE.account), 5 * TOKEN, "payer balance after top up")
    await h.refused(ErrorCode.INVALID_AMOUNT, L.top_up, ALICE, cid, 0)
    await h.refused(ErrorCode.UNKNOWN_CHANNEL, L.top_up, ALICE, b"\7" * 32, 1)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.top_up, ALICE, b"\7" * 31, 1)
    await h.refused(ErrorCode.NOT_PARTY, L.top_up, BOB, cid, 1)
    await h.refused(ErrorCode.NOT_PARTY, L.top_up, MALLORY, cid, 1)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.top_up, ALICE, cid, 5 * TOKEN + 1)
    # no new money into a channel being closed, nor into a closed one
    await L.start_close(ALICE, cid)
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.top_up, ALICE, cid, 1)
    h.clock.advance(5_000)
    await L.finalize_close(ALICE, cid)
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.top_up, ALICE, cid, 1)
    # a deposit may not exceed MAX
    await L.mint(ALICE, CAROL.account, MAX_AMOUNT)
    big = await L.open_channel(CAROL, BOB.account, MAX_AMOUNT, 5_000)
    await L.mint(ALICE, CAROL.account, 1)
    await h.refused(ErrorCode.INVALID_AMOUNT, L.top_up, CAROL, big, 1)


@_case
async def _case_redeem(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    cid = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    v1 = h.voucher(ALICE, cid, n=1, paid=300)
    expect_eq(await L.redeem(BOB, v1), 300, "first redeem pays paid")
    h.event_is(
        "Redeemed",
        channel=cid,
        payer=ALICE.account,
        payee=BOB.account,
        amount=300,
        redeemed=300,
        n=1,
        paid=300,
    )
    # idempotent: the same voucher, or an older one, pays 0 and is not an error
    before = await L.events()
    expect_eq(await L.redeem(BOB, v1), 0, "same voucher again")
    expect_eq(await L.events(), before, "a redeem paying 0 stores no event")
    v2 = h.voucher(ALICE, cid, n=5, paid=700)
    # the payee caps the payout at what it charged (amount)
    expect_eq(await L.redeem(BOB, v2, 500), 200, "redeem capped by amount")
    h.event_is("Redeemed", amount=200, redeemed=500, n=5, paid=700)
    expect_eq(await L.redeem(BOB, v2, 400), 0, "amount below redeemed pays 0")
    expect_eq(await L.redeem(BOB, v2, 0), 0, "amount 0 pays 0")
    expect_eq(await L.redeem(BOB, v1, 500), 0, "older voucher, same cap, pays 0")
    # the ledger has seen the payer sign paid = 700 (paid_seen): an older voucher is
    # evidence enough for what is left of it (the payee could present v2 just as well)
    expect_eq(await L.redeem(BOB, v1), 200, "older voucher pays up to paid_seen")
    h.event_is("Redeemed", amount=200, redeemed=700, n=1, paid=300)
    expect_eq(await L.redeem(BOB, v2), 0, "nothing left of the voucher")
    # a voucher above the deposit pays up to the deposit, never more
    v3 = h.voucher(ALICE, cid, n=9, paid=5_000)
    expect_eq(await L.redeem(BOB, v3), 300, "voucher above deposit pays up to deposit")
    h.event_is("Redeemed", amount=300, redeemed=1_000, paid=5_000)
    expect_eq(await L.redeem(BOB, v3), 0, "nothing left")
    ch = await L.channel(cid)
    assert ch is not None
    expect_eq(
        (ch.redeemed, ch.deposit, ch.escrow, ch.state),
        (1_000, 1_000, 0, ChannelState.OPEN),
        "channel",
    )
    expect_eq(await L.balance(BOB.account), 1_000, "payee balance")
    # after a top up, the same voucher pays the newly covered part
    await L.top_up(ALICE, cid, 10_000)
    expect_eq(await L.redeem(BOB, v3), 4_000, "voucher covered by the top up")
    expect_eq(await L.balance(BOB.account), 5_000, "payee balance after top up redeem")


@_case
async def _case_redeem_refusals(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    cid = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    good = h.voucher(ALICE, cid, n=1, paid=100)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.redeem, BOB, b"not a voucher")
    for bad in (-1, MAX_AMOUNT + 1, 1.5, True):
        await h.refused(ErrorCode.INVALID_AMOUNT, L.redeem, BOB, good, bad)
    await h.refused(
        ErrorCode.WRONG_LEDGER, L.redeem, BOB, h.voucher(ALICE, cid, n=1, paid=100, ledger=b"other")
    )
    await h.refused(
        ErrorCode.UNKNOWN_CHANNEL, L.redeem, BOB, h.voucher(ALICE, b"\x09" * 32, n=1, paid=1)
    )
    await h.refused(ErrorCode.NOT_PARTY, L.redeem, ALICE, good)  # the payer
    await h.refused(ErrorCode.NOT_PARTY, L.redeem, MALLORY, good)
    await h.refused(
        ErrorCode.INVALID_SIGNATURE, L.redeem, BOB, h.voucher(MALLORY, cid, n=1, paid=100)
    )
    await h.refused(ErrorCode.INVALID_SIGNATURE, L.redeem, BOB, h.voucher(BOB, cid, n=1, paid=100))
    await h.refused(ErrorCode.INVALID_SIGNATURE, L.redeem, BOB, good.with_signature(b"\0" * 64))
    # a forged `paid` keeps the old signature: refused
    forged = dataclasses.replace(good, paid=1_000)
    await h.refused(ErrorCode.INVALID_SIGNATURE, L.redeem, BOB, forged)
    # the payee's balance at MAX: a payout would overflow it
    await L.mint(ALICE, BOB.account, MAX_AMOUNT)
    await h.refused(ErrorCode.INVALID_AMOUNT, L.redeem, BOB, good)
    expect_eq(await L.redeem(BOB, good, 0), 0, "a cap of 0 pays nothing, even at MAX")
    await L.withdraw(BOB, MAX_AMOUNT)
    expect_eq(await L.redeem(BOB, good), 100, "redeem once the balance has room")
    await L.payee_close(BOB, cid)
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.redeem, BOB, h.voucher(ALICE, cid, n=2, paid=200))


@_case
async def _case_voucher_replay_across_channels(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN), (CAROL, 10 * TOKEN))
    ab1 = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    ab2 = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    cb = await L.open_channel(CAROL, BOB.account, 1_000, 5_000)
    v = h.voucher(ALICE, ab1, n=1, paid=600)
    expect_eq(await L.redeem(BOB, v), 600, "redeem on its own channel")
    # the channel id is inside the signed bytes: moving it to another channel breaks it
    for other in (ab2, cb):
        moved = dataclasses.replace(v, channel=other)
        await h.refused(ErrorCode.INVALID_SIGNATURE, L.redeem, BOB, moved)
        await h.refused(ErrorCode.INVALID_SIGNATURE, L.payee_close, BOB, other, moved)
    # a channel where the attacker is payee: the voucher names ab1, not its channel
    await L.mint(MALLORY, MALLORY.account, 10 * TOKEN)
    am = await L.open_channel(ALICE, MALLORY.account, 1_000, 5_000)
    await h.refused(ErrorCode.NOT_PARTY, L.redeem, MALLORY, v)
    await h.refused(
        ErrorCode.INVALID_SIGNATURE, L.redeem, MALLORY, dataclasses.replace(v, channel=am)
    )
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.payee_close, MALLORY, am, v)
    for cid in (ab2, cb, am):
        ch = await L.channel(cid)
        assert ch is not None
        expect_eq(ch.redeemed, 0, "no payout from a replayed voucher")


@_case
async def _case_voucher_replay_across_ledgers(h: LedgerHarness) -> None:
    L1 = h.ledger
    L2 = await h.new_ledger()
    expect(L1.ledger_id != L2.ledger_id, "two fresh ledgers must have distinct ids")
    for L in (L1, L2):
        await L.mint(ALICE, ALICE.account, 10 * TOKEN)
    c1 = await L1.open_channel(ALICE, BOB.account, 1_000, 5_000)
    c2 = await L2.open_channel(ALICE, BOB.account, 1_000, 5_000)
    expect(c1 != c2, "the ledger id is part of the channel id")
    v1 = h.voucher(ALICE, c1, n=1, paid=500, ledger=L1.ledger_id)
    await h.refused(ErrorCode.WRONG_LEDGER, L2.redeem, BOB, v1)
    await h.refused(ErrorCode.WRONG_LEDGER, L2.payee_close, BOB, c1, v1)
    # relabel the ledger (and channel): the signature no longer matches
    relabelled = dataclasses.replace(v1, ledger=L2.ledger_id, channel=c2)
    await h.refused(ErrorCode.INVALID_SIGNATURE, L2.redeem, BOB, relabelled)
    relabelled = dataclasses.replace(v1, ledger=L2.ledger_id)
    await h.refused(ErrorCode.UNKNOWN_CHANNEL, L2.redeem, BOB, relabelled)
    expect_eq(await L1.redeem(BOB, v1), 500, "the voucher works on its own ledger")
    # claims cannot be replayed across ledgers either
    await L2.mint(BOB, BOB.account, 10 * TOKEN)
    await L2.stake(BOB, 5 * TOKEN, TOKEN, 10_000)
    req = h.voucher(ALICE, c1, n=2, paid=600, ledger=L1.ledger_id)
    h.clock.advance(2_000)
    await h.refused(ErrorCode.WRONG_LEDGER, L2.file_claim, ALICE, req)
    expect_eq(await L2.balance(BOB.account), 5 * TOKEN, "nothing moved on the other ledger")


@_case
async def _case_payee_close(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    cid = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    v = h.voucher(ALICE, cid, n=3, paid=800)
    # refusals first
    await h.refused(ErrorCode.INVALID_AMOUNT, L.payee_close, BOB, cid, v, -1)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.payee_close, BOB, cid, None, 10)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.payee_close, BOB, cid, b"junk")
    other = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.payee_close, BOB, other, v)
    await h.refused(
        ErrorCode.WRONG_LEDGER,
        L.payee_close,
        BOB,
        cid,
        h.voucher(ALICE, cid, n=3, paid=800, ledger=b"elsewhere"),
    )
    await h.refused(ErrorCode.UNKNOWN_CHANNEL, L.payee_close, BOB, b"\5" * 32)
    await h.refused(ErrorCode.NOT_PARTY, L.payee_close, ALICE, cid, v)
    await h.refused(ErrorCode.NOT_PARTY, L.payee_close, MALLORY, cid)
    await h.refused(
        ErrorCode.INVALID_SIGNATURE, L.payee_close, BOB, cid, h.voucher(BOB, cid, n=3, paid=800)
    )
    # close with a voucher capped at what was charged: Redeemed then ChannelClosed
    paid = await L.payee_close(BOB, cid, v, 650)
    expect_eq(paid, 650, "payee_close returns the payout")
    expect_eq(len(h.ledger.last_events), 2, "Redeemed + ChannelClosed")
    h.event_is("Redeemed", 0, channel=cid, amount=650, redeemed=650, n=3, paid=800)
    h.event_is(
        "ChannelClosed",
        1,
        channel=cid,
        payer=ALICE.account,
        payee=BOB.account,
        by="payee",
        redeemed=650,
        refunded=350,
    )
    ch = await L.channel(cid)
    assert ch is not None
    expect_eq((ch.state, ch.redeemed, ch.escrow), (ChannelState.CLOSED, 650, 0), "closed channel")
    expect_eq(await h.balances(ALICE, BOB), [10 * TOKEN - 2_000 + 350, 650], "balances")
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.payee_close, BOB, cid)
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.payee_close, BOB, cid, v)
    # close without a voucher: everything back to the payer, a single event
    expect_eq(await L.payee_close(BOB, other), 0, "close without voucher pays 0")
    expect_eq(len(h.ledger.last_events), 1, "only ChannelClosed")
    h.event_is("ChannelClosed", channel=other, by="payee", redeemed=0, refunded=1_000)
    # a voucher at or below redeemed: no Redeemed event
    third = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    v3 = h.voucher(ALICE, third, n=1, paid=100)
    await L.redeem(BOB, v3)
    await L.start_close(ALICE, third)  # payee_close also works while CLOSING
    expect_eq(await L.payee_close(BOB, third, v3), 0, "old voucher pays 0 at close")
    h.event_is("ChannelClosed", by="payee", redeemed=100, refunded=900)
    expect_eq(len(h.ledger.last_events), 1, "no Redeemed event when nothing is paid")


@_case
async def _case_start_and_finalize_close(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    cid = await L.open_channel(ALICE, BOB.account, 1_000, 5_000)
    await h.refused(ErrorCode.UNKNOWN_CHANNEL, L.start_close, ALICE, b"\3" * 32)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.start_close, ALICE, b"\3" * 3)
    await h.refused(ErrorCode.NOT_PARTY, L.start_close, BOB, cid)
    await h.refused(ErrorCode.NOT_PARTY, L.start_close, MALLORY, cid)
    await h.refused(ErrorCode.CHANNEL_NOT_CLOSING, L.finalize_close, ALICE, cid)
    await h.refused(ErrorCode.UNKNOWN_CHANNEL, L.finalize_close, ALICE, b"\3" * 32)
    start = h.clock.advance(10)
    await L.start_close(ALICE, cid)
    h.event_is(
        "ChannelClosing",
        channel=cid,
        payer=ALICE.account,
        payee=BOB.account,
        closes_at=start + 5_000,
    )
    ch = await L.channel(cid)
    assert ch is not None
    expect_eq((ch.state, ch.closes_at), (ChannelState.CLOSING, start + 5_000), "closing channel")
    expect_eq(ch.escrow, 1_000, "a closing channel still holds its escrow")
    await h.refused(ErrorCode.CHALLENGE_PENDING, L.start_close, ALICE, cid)
    await h.refused(ErrorCode.CHALLENGE_PENDING, L.finalize_close, ALICE, cid)
    h.clock.advance(4_999)
    await h.refused(ErrorCode.CHALLENGE_PENDING, L.finalize_close, MALLORY, cid)
    h.clock.advance(1)  # now == closes_at: allowed
    await L.finalize_close(MALLORY, cid)  # anyone may finalise; the money goes to the payer
    h.event_is(
        "ChannelClosed",
        channel=cid,
        payer=ALICE.account,
        payee=BOB.account,
        by="payer",
        redeemed=0,
        refunded=1_000,
    )
    expect_eq(await h.balances(ALICE, MALLORY), [10 * TOKEN, 0], "refund to the payer only")
    for op in (L.start_close, L.finalize_close):
        await h.refused(ErrorCode.CHANNEL_CLOSED, op, ALICE, cid)
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.redeem, BOB, h.voucher(ALICE, cid, n=1, paid=1))
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.payee_close, BOB, cid)
    ch = await L.channel(cid)
    assert ch is not None
    expect_eq((ch.state, ch.escrow), (ChannelState.CLOSED, 0), "closed")


@_case
async def _case_challenge_period_defence(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN))
    cid = await L.open_channel(ALICE, BOB.account, 1_000, 60_000)
    best = h.voucher(ALICE, cid, n=7, paid=600)
    await L.redeem(BOB, h.voucher(ALICE, cid, n=2, paid=100))
    # the payer tries to leave with the escrow; the payee redeems its best voucher in time
    await L.start_close(ALICE, cid)
    closes_at = h.clock.ms + 60_000
    h.clock.advance(59_000)
    expect_eq(await L.redeem(BOB, best, 550), 450, "redeem during the challenge period")
    expect_eq(await L.redeem(BOB, best), 50, "and the rest of the voucher")
    await h.refused(ErrorCode.CHANNEL_CLOSED, L.top_up, ALICE, cid, 1)
    await h.refused(ErrorCode.CHALLENGE_PENDING, L.finalize_close, ALICE, cid)
    h.clock.ms = closes_at
    await L.finalize_close(ALICE, cid)
    h.event_is("ChannelClosed", by="payer", redeemed=600, refunded=400)
    expect_eq(await h.balances(ALICE, BOB), [10 * TOKEN - 600, 600], "final balances")


# --- stakes -----------------------------------------------------------------


@_case
async def _case_stake(h: LedgerHarness) -> None:
    L = h.ledger
    p = L.params
    await h.funded((BOB, 10 * TOKEN))
    await L.stake(BOB, 4 * TOKEN, TOKEN, 10_000)
    h.event_is(
        "Staked",
        account=BOB.account,
        amount=4 * TOKEN,
        total=4 * TOKEN,
        penalty=TOKEN,
        claim_window_ms=10_000,
    )
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(
        (st.account, st.amount, st.penalty, st.claim_window_ms, st.unbonding_at, st.open_claims),
        (BOB.account, 4 * TOKEN, TOKEN, 10_000, 0, 0),
        "stake record",
    )
    expect_eq((await L.totals()).stakes, 4 * TOKEN, "totals.stakes")
    expect_eq(await L.balance(BOB.account), 6 * TOKEN, "balance after stake")
    # add collateral and change terms (no claims open)
    await L.stake(BOB, TOKEN, 5 * TOKEN, p.max_claim_window_ms)
    h.event_is(
        "Staked",
        amount=TOKEN,
        total=5 * TOKEN,
        penalty=5 * TOKEN,
        claim_window_ms=p.max_claim_window_ms,
    )
    expect_eq(await L.stake_of(CAROL.account), None, "no stake reads as None")
    for bad in (0, -1, MAX_AMOUNT + 1):
        await h.refused(ErrorCode.INVALID_AMOUNT, L.stake, BOB, bad, 1, 10_000)
        await h.refused(ErrorCode.INVALID_AMOUNT, L.stake, BOB, 1, bad, 10_000)
    for window in (p.min_claim_window_ms - 1, p.max_claim_window_ms + 1, None):
        await h.refused(ErrorCode.INVALID_ARGUMENT, L.stake, BOB, 1, 1, window)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.stake, CAROL, 1, 2, 10_000)  # penalty > stake
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.stake, BOB, 1, 5 * TOKEN + 2, 10_000)
    top = p.max_claim_window_ms
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.stake, BOB, 5 * TOKEN + 1, 5 * TOKEN, top)
    # a bonded stake's terms may only grow (section 6, StakeOp step 5)
    await h.refused(ErrorCode.STAKE_LOCKED, L.stake, BOB, 1, 5 * TOKEN - 1, top)
    await h.refused(ErrorCode.STAKE_LOCKED, L.stake, BOB, 1, 5 * TOKEN, top - 1)
    await L.stake(BOB, 1, 5 * TOKEN + 1, top)
    h.event_is("Staked", amount=1, total=5 * TOKEN + 1, penalty=5 * TOKEN + 1)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.stake, CAROL, 1, 1, 10_000)
    await L.request_unstake(BOB)
    await h.refused(ErrorCode.UNBONDING, L.stake, BOB, 1, 1, 10_000)
    # a stake may not exceed MAX
    await L.mint(CAROL, CAROL.account, MAX_AMOUNT)
    await L.stake(CAROL, MAX_AMOUNT, 1, 10_000)
    await L.mint(CAROL, CAROL.account, 1)
    await h.refused(ErrorCode.INVALID_AMOUNT, L.stake, CAROL, 1, 1, 10_000)


@_case
async def _case_unstake_and_withdraw(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((BOB, 10 * TOKEN))
    await h.refused(ErrorCode.NOT_STAKED, L.request_unstake, BOB)
    await h.refused(ErrorCode.NOT_STAKED, L.withdraw_stake, BOB)
    await L.stake(BOB, 4 * TOKEN, TOKEN, 10_000)
    await h.refused(ErrorCode.NOT_STAKED, L.withdraw_stake, BOB)  # bonded: unstake first
    await L.request_unstake(BOB)
    unbonding_at = h.clock.ms + unbonding_period(L.params, 10_000)
    expect_eq(
        unbonding_at, h.clock.ms + L.params.max_deadline_horizon_ms + 20_000, "unbonding period"
    )
    h.event_is("UnstakeRequested", account=BOB.account, amount=4 * TOKEN, unbonding_at=unbonding_at)
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(st.unbonding_at, unbonding_at, "stake.unbonding_at")
    await h.refused(ErrorCode.UNBONDING, L.request_unstake, BOB)
    h.clock.ms = unbonding_at - 1
    await h.refused(ErrorCode.STAKE_LOCKED, L.withdraw_stake, BOB)
    h.clock.ms = unbonding_at
    await L.withdraw_stake(BOB)
    h.event_is("StakeWithdrawn", account=BOB.account, amount=4 * TOKEN)
    expect_eq(await L.balance(BOB.account), 10 * TOKEN, "stake returned")
    st = await L.stake_of(BOB.account)
    expect(st is not None, "a withdrawn stake record stays (amount 0)")
    assert st is not None
    expect_eq((st.amount, st.unbonding_at), (0, 0), "withdrawn stake")
    expect_eq((await L.totals()).stakes, 0, "totals.stakes")
    await h.refused(ErrorCode.NOT_STAKED, L.request_unstake, BOB)
    await h.refused(ErrorCode.NOT_STAKED, L.withdraw_stake, BOB)
    # staking again after a withdrawal is allowed, with any terms (status NONE)
    await L.stake(BOB, TOKEN, TOKEN // 2, 1_000)
    h.event_is("Staked", total=TOKEN, penalty=TOKEN // 2, claim_window_ms=1_000)
    await h.refused(ErrorCode.NOT_STAKED, L.request_unstake, MALLORY)


# --- claims -----------------------------------------------------------------


class _ClaimSetup:
    """ALICE pays BOB on a channel; BOB is staked; `request` is a paid request to BOB."""

    stake = 10 * TOKEN
    penalty = 3 * TOKEN
    window = 10_000

    def __init__(self, h: LedgerHarness) -> None:
        self.h = h
        self.cid = b""
        self._request: Request | None = None

    @property
    def request(self) -> Request:
        """The paid request to BOB (made by `setup`)."""
        if self._request is None:
            raise RuntimeError("_ClaimSetup.setup() was not called")
        return self._request

    async def setup(self) -> _ClaimSetup:
        h = self.h
        await h.funded((ALICE, 10 * TOKEN), (BOB, 20 * TOKEN))
        await h.ledger.stake(BOB, self.stake, self.penalty, self.window)
        self.cid = await h.ledger.open_channel(ALICE, BOB.account, TOKEN, 5_000)
        self._request = h.voucher(ALICE, self.cid, n=1, paid=100, price=100, body=b"ping")
        return self

    def response(
        self, key: Keypair = BOB, request: Request | None = None, status: str = "OK"
    ) -> Response:
        request = request or self.request
        return Response.create(
            key,
            request=request,
            status=status,
            price=100 if status == "OK" else 0,
            spent=100 if status == "OK" else 0,
            body=b"pong",
        )

    async def file(self, request: Request | None = None) -> bytes:
        h = self.h
        request = request or self.request
        h.clock.ms = max(h.clock.ms, request.deadline + 1)
        claim_id: bytes = await h.ledger.file_claim(ALICE, request)
        return claim_id


@_case
async def _case_file_claim(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    req = s.request
    bond = L.params.claim_bond
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.file_claim, ALICE, b"junk")
    await h.refused(
        ErrorCode.WRONG_LEDGER,
        L.file_claim,
        ALICE,
        h.voucher(ALICE, s.cid, n=1, paid=1, ledger=b"x"),
    )
    await h.refused(
        ErrorCode.UNKNOWN_CHANNEL, L.file_claim, ALICE, h.voucher(ALICE, b"\4" * 32, n=1, paid=1)
    )
    await h.refused(ErrorCode.NOT_PARTY, L.file_claim, MALLORY, req)
    await h.refused(ErrorCode.NOT_PARTY, L.file_claim, BOB, req)
    await h.refused(
        ErrorCode.INVALID_SIGNATURE, L.file_claim, ALICE, h.voucher(MALLORY, s.cid, n=1, paid=1)
    )
    await h.refused(
        ErrorCode.MALFORMED, L.file_claim, ALICE, dataclasses.replace(req, body=b"other")
    )
    # the respondent must have a stake
    await L.mint(CAROL, CAROL.account, TOKEN)
    unstaked = await L.open_channel(ALICE, CAROL.account, TOKEN, 5_000)
    await h.refused(
        ErrorCode.NOT_STAKED, L.file_claim, ALICE, h.voucher(ALICE, unstaked, n=1, paid=1)
    )
    # only after the deadline, and within one claim window after it
    h.clock.ms = req.deadline
    await h.refused(ErrorCode.DEADLINE_NOT_PASSED, L.file_claim, ALICE, req)
    h.clock.ms = req.deadline + s.window  # the last moment
    expired = h.voucher(ALICE, s.cid, n=3, paid=100, deadline=req.deadline - 1)
    await h.refused(ErrorCode.WINDOW_CLOSED, L.file_claim, ALICE, expired)
    broke = h.voucher(ALICE, s.cid, n=2, paid=100, deadline=req.deadline)
    # the claimant needs the bond
    await L.transfer(ALICE, CAROL.account, await L.balance(ALICE.account) - bond + 1)
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.file_claim, ALICE, broke)
    await L.mint(ALICE, ALICE.account, 1)
    claim_id = await L.file_claim(ALICE, req)
    expect_eq(claim_id, req.hash, "a claim's id is the request hash")
    now = h.clock.ms
    h.event_is(
        "ClaimFiled",
        claim=claim_id,
        claimant=ALICE.account,
        respondent=BOB.account,
        channel=s.cid,
        n=1,
        price=100,
        paid=100,
        deadline=req.deadline,
        bond=bond,
        window_ends=now + s.window,
    )
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq(
        (
            c.id,
            c.claimant,
            c.respondent,
            c.channel,
            c.n,
            c.price,
            c.paid,
            c.deadline,
            c.bond,
            c.filed_at,
            c.window_ends,
            c.state,
            c.slashed,
            c.refund,
            c.clawed,
            c.evidence_frame,
        ),
        (
            claim_id,
            ALICE.account,
            BOB.account,
            s.cid,
            1,
            100,
            100,
            req.deadline,
            bond,
            now,
            now + s.window,
            ClaimState.OPEN,
            0,
            0,
            0,
            b"",
        ),
        "claim record",
    )
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq(ch.paid_seen, 100, "a claimed request counts as a voucher seen (paid_seen)")
    frame = decode_held_frame(c.request_frame)
    expect(isinstance(frame, Request) and frame == req and frame.body == b"ping", "request frame")
    expect_eq(c.response_frame, b"", "no response yet")
    expect_eq(await L.balance(ALICE.account), 0, "bond taken")
    expect_eq((await L.totals()).bonds, bond, "totals.bonds")
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(st.open_claims, 1, "open_claims")
    await h.refused(ErrorCode.CLAIM_EXISTS, L.file_claim, ALICE, req)
    expect_eq(await L.claim(b"\0" * 32), None, "unknown claim reads as None")
    # claims are allowed on closing and closed channels too
    await L.mint(ALICE, ALICE.account, 2 * bond)
    await L.payee_close(BOB, s.cid)
    late = h.voucher(ALICE, s.cid, n=3, paid=100, deadline=h.clock.ms - 1)
    await L.file_claim(ALICE, late)
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(st.open_claims, 2, "open_claims after a second claim")


@_case
async def _case_delivering_answer_returns_the_bond(h: LedgerHarness) -> None:
    """An OK answer (the response with its body) ends the claim DELIVERED: no slash, no
    refund, and the bond goes back to the claimant (issue 13: no bond harvesting)."""
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    bond = L.params.claim_bond
    alice0, bob0 = await h.balances(ALICE, BOB)
    h.clock.advance(s.window)  # the last moment of the window
    response = s.response()
    await L.answer_claim(BOB, claim_id, response)
    h.event_is(
        "ClaimAnswered",
        claim=claim_id,
        claimant=ALICE.account,
        respondent=BOB.account,
        outcome="delivered",
        status="OK",
        bond=bond,
        bond_to=ALICE.account,
        refund=0,
        clawed=0,
    )
    expect_eq(await h.balances(ALICE, BOB), [alice0 + bond, bob0], "the bond goes back")
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq((c.state, c.slashed, c.refund), (ClaimState.DELIVERED, 0, 0), "delivered claim")
    answer = decode_held_frame(c.response_frame)
    expect(isinstance(answer, Response) and answer == response, "claimant reads the response")
    assert isinstance(answer, Response)
    expect(answer.verify(BOB.public) and answer.body == b"pong", "stored response verifies")
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq((st.amount, st.open_claims), (s.stake, 0), "stake untouched")
    expect_eq((await L.totals()).bonds, 0, "no bond held")
    await h.refused(ErrorCode.CLAIM_CLOSED, L.answer_claim, BOB, claim_id, response)
    h.clock.advance(1)
    await h.refused(ErrorCode.CLAIM_CLOSED, L.resolve_claim, ALICE, claim_id)


@_case
async def _case_claim_unanswered_is_upheld(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    bond = L.params.claim_bond
    c = await L.claim(claim_id)
    assert c is not None
    await h.refused(ErrorCode.UNKNOWN_CLAIM, L.resolve_claim, MALLORY, b"\6" * 32)
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.resolve_claim, MALLORY, b"\6")
    h.clock.ms = c.window_ends
    await h.refused(ErrorCode.WINDOW_OPEN, L.resolve_claim, MALLORY, claim_id)
    h.clock.ms = c.window_ends + 1
    alice0, bob0, mallory0 = await h.balances(ALICE, BOB, MALLORY)
    await L.resolve_claim(MALLORY, claim_id)  # anyone may resolve
    slash = min(s.penalty, s.stake)
    to_claimant = slash * L.params.slash_to_claimant_bps // 10_000
    expect_eq(len(h.ledger.last_events), 2, "ClaimUpheld + Slashed")
    h.event_is(
        "ClaimUpheld",
        0,
        claim=claim_id,
        claimant=ALICE.account,
        respondent=BOB.account,
        slashed=slash,
        to_claimant=to_claimant,
        burnt=slash - to_claimant,
        bond=bond,
        refund=100,
        clawed=0,
    )
    h.event_is("Slashed", 1, account=BOB.account, amount=slash, claim=claim_id)
    expect_eq(
        await h.balances(ALICE, BOB, MALLORY),
        [alice0 + to_claimant + bond, bob0, mallory0],
        "claimant gets its share and the bond back; the resolver gets nothing",
    )
    totals = await L.totals()
    expect_eq((totals.burnt, totals.bonds), (slash - to_claimant, 0), "burnt and bonds")
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq((st.amount, st.open_claims), (s.stake - slash, 0), "slashed stake")
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq((c.state, c.slashed, c.refund), (ClaimState.UPHELD, slash, 100), "upheld claim")
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq((ch.refunded, ch.clawed), (100, 0), "the unredeemed slice stays in escrow")
    await h.refused(ErrorCode.CLAIM_CLOSED, L.resolve_claim, ALICE, claim_id)
    await h.refused(ErrorCode.CLAIM_CLOSED, L.answer_claim, BOB, claim_id, s.response())


@_case
async def _case_late_answer_refused(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    c = await L.claim(claim_id)
    assert c is not None
    h.clock.ms = c.window_ends + 1
    await h.refused(ErrorCode.WINDOW_CLOSED, L.answer_claim, BOB, claim_id, s.response())
    await L.resolve_claim(ALICE, claim_id)
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq(c.state, ClaimState.UPHELD, "a late answer does not save the stake")


@_case
async def _case_answer_refusals(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    good = s.response()
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.answer_claim, BOB, claim_id, b"junk")
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.answer_claim, BOB, claim_id, s.request)
    await h.refused(ErrorCode.UNKNOWN_CLAIM, L.answer_claim, BOB, b"\1" * 32, good)
    await h.refused(ErrorCode.NOT_PARTY, L.answer_claim, MALLORY, claim_id, good)
    await h.refused(ErrorCode.NOT_PARTY, L.answer_claim, ALICE, claim_id, good)
    await h.refused(
        ErrorCode.INVALID_SIGNATURE, L.answer_claim, BOB, claim_id, s.response(key=MALLORY)
    )
    await h.refused(
        ErrorCode.INVALID_SIGNATURE, L.answer_claim, BOB, claim_id, good.with_signature(b"\1" * 64)
    )
    other = h.voucher(ALICE, s.cid, n=2, paid=200, body=b"other")
    await h.refused(
        ErrorCode.RESPONSE_MISMATCH, L.answer_claim, BOB, claim_id, s.response(request=other)
    )
    await h.refused(
        ErrorCode.MALFORMED, L.answer_claim, BOB, claim_id, dataclasses.replace(good, body=b"x")
    )
    await L.answer_claim(BOB, claim_id, good)


@_case
async def _case_bond_harvesting_refusal_refunds_the_price(h: LedgerHarness) -> None:
    """Issue 13 bond harvesting: the provider withholds, then answers the claim with a signed
    refusal. Now: REFUSED, the bond goes back to the claimant and the price is refunded;
    the slice was never redeemed, so it stays in escrow (no clawback) and goes back to the
    payer at close: the provider cannot redeem it any more."""
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    bond = L.params.claim_bond
    alice0, bob0 = await h.balances(ALICE, BOB)
    refusal = s.response(status=ErrorCode.HANDLER_ERROR.value)
    await L.answer_claim(BOB, claim_id, refusal)
    h.event_is(
        "ClaimAnswered",
        claim=claim_id,
        outcome="refused",
        status="HANDLER_ERROR",
        bond=bond,
        bond_to=ALICE.account,
        refund=100,
        clawed=0,
    )
    expect_eq(await h.balances(ALICE, BOB), [alice0 + bond, bob0], "the bond goes back")
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq((c.state, c.refund, c.clawed), (ClaimState.REFUSED, 100, 0), "refused claim")
    answer = decode_held_frame(c.response_frame)
    expect(isinstance(answer, Response) and answer == refusal, "the refusal is stored")
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq((ch.paid_seen, ch.refunded, ch.clawed), (100, 100, 0), "channel refund")
    expect_eq(await L.redeem(BOB, s.request), 0, "a refunded slice cannot be redeemed")
    await L.payee_close(BOB, s.cid)
    expect_eq(await L.balance(ALICE.account), alice0 + bond + TOKEN, "escrow back to the payer")


@_case
async def _case_bond_harvesting_after_redeem_is_clawed_back(h: LedgerHarness) -> None:
    """The withholder redeemed the price, then refuses in the claim: the slice it now says it
    never charged is taken from its stake and paid to the claimant at once."""
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    expect_eq(await L.redeem(BOB, s.request), 100, "the withholder redeems the price")
    claim_id = await s.file()
    bond = L.params.claim_bond
    alice0, bob0 = await h.balances(ALICE, BOB)
    await L.answer_claim(BOB, claim_id, s.response(status=ErrorCode.OVERLOADED.value))
    h.event_is("ClaimAnswered", outcome="refused", bond_to=ALICE.account, refund=100, clawed=100)
    expect_eq(await h.balances(ALICE, BOB), [alice0 + bond + 100, bob0], "refund from the stake")
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq((st.amount, st.open_claims), (s.stake - 100, 0), "stake after the clawback")
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq((ch.redeemed, ch.refunded, ch.clawed), (100, 100, 100), "channel after clawback")
    expect_eq(await L.redeem(BOB, s.request), 0, "the slice cannot be redeemed again")


@_case
async def _case_refusal_with_a_price_refused(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    greedy = unchecked_response(
        BOB, request=s.request, status=ErrorCode.OVERLOADED.value, price=1, spent=1, body=b""
    )
    await h.refused(ErrorCode.RESPONSE_MISMATCH, L.answer_claim, BOB, claim_id, greedy)
    dear = Response.create(BOB, request=s.request, status="OK", price=101, spent=101, body=b"")
    await h.refused(ErrorCode.RESPONSE_MISMATCH, L.answer_claim, BOB, claim_id, dear)
    await L.answer_claim(BOB, claim_id, s.response())


async def _frivolous(h: LedgerHarness, evidence_of: Callable[[_ClaimSetup], Request]) -> None:
    """File the setup's request, answer with `evidence_of(setup)`: FRIVOLOUS."""
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    bond = L.params.claim_bond
    alice0, bob0 = await h.balances(ALICE, BOB)
    evidence = evidence_of(s)
    await L.answer_claim(BOB, claim_id, evidence=evidence)
    h.event_is(
        "ClaimAnswered",
        claim=claim_id,
        claimant=ALICE.account,
        respondent=BOB.account,
        outcome="frivolous",
        status="",
        bond=bond,
        bond_to=BOB.account,
        refund=0,
        clawed=0,
    )
    expect_eq(await h.balances(ALICE, BOB), [alice0, bob0 + bond], "the bond goes to BOB")
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq((c.state, c.refund, c.response_frame), (ClaimState.FRIVOLOUS, 0, b""), "claim")
    stored = decode_held_frame(c.evidence_frame)
    expect(
        isinstance(stored, Request) and stored == evidence and stored.verify(ALICE.account),
        "the evidence (its signed fields) is stored",
    )
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq((st.amount, st.open_claims), (s.stake, 0), "stake untouched")
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq(ch.refunded, 0, "nothing refunded")


@_case
async def _case_frivolous_claim_overlapping_evidence(h: LedgerHarness) -> None:
    """The claimed slice (0, 100] overlaps a later request's (50, 150]."""
    await _frivolous(
        h,
        lambda s: h.voucher(
            ALICE, s.cid, n=2, paid=150, price=100, deadline=s.request.deadline, body=b"b"
        ),
    )


@_case
async def _case_frivolous_claim_same_n_evidence(h: LedgerHarness) -> None:
    """Another request under the claimed number n = 1."""
    await _frivolous(
        h,
        lambda s: h.voucher(
            ALICE, s.cid, n=1, paid=100, price=100, deadline=s.request.deadline, body=b"twin"
        ),
    )


@_case
async def _case_frivolous_claim_post_dated_evidence(h: LedgerHarness) -> None:
    """The claimed request (n = 1) is dated beyond a later request's deadline + horizon."""
    horizon = h.ledger.params.max_deadline_horizon_ms
    await _frivolous(
        h,
        lambda s: h.voucher(
            ALICE,
            s.cid,
            n=2,
            paid=200,
            price=100,
            deadline=s.request.deadline - horizon - 1,
            body=b"b",
        ),
    )


@_case
async def _case_evidence_without_conflict_refused(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    deadline = s.request.deadline
    horizon = L.params.max_deadline_horizon_ms
    conflicting = h.voucher(ALICE, s.cid, n=1, paid=100, price=100, deadline=deadline, body=b"x")
    for fine in (
        h.voucher(ALICE, s.cid, n=2, paid=200, price=100, deadline=deadline),  # adjacent slice
        h.voucher(ALICE, s.cid, n=2, paid=200, price=100, deadline=deadline - horizon),
        s.request,  # the claimed request itself
    ):
        await h.refused(ErrorCode.RESPONSE_MISMATCH, L.answer_claim, BOB, claim_id, evidence=fine)
    other = h.voucher(ALICE, s.cid, n=1, paid=100, price=100, deadline=deadline, ledger=b"x")
    await h.refused(ErrorCode.WRONG_LEDGER, L.answer_claim, BOB, claim_id, evidence=other)
    await L.mint(CAROL, ALICE.account, TOKEN)
    second = await L.open_channel(ALICE, BOB.account, TOKEN, 5_000)
    elsewhere = h.voucher(ALICE, second, n=1, paid=100, price=100, deadline=deadline, body=b"x")
    await h.refused(ErrorCode.RESPONSE_MISMATCH, L.answer_claim, BOB, claim_id, evidence=elsewhere)
    for signer in (BOB, MALLORY):
        forged = h.voucher(signer, s.cid, n=1, paid=100, price=100, deadline=deadline, body=b"x")
        await h.refused(ErrorCode.INVALID_SIGNATURE, L.answer_claim, BOB, claim_id, evidence=forged)
    await h.refused(
        ErrorCode.INVALID_ARGUMENT,
        L.answer_claim,
        BOB,
        claim_id,
        s.response(),
        evidence=conflicting,
    )
    await h.refused(ErrorCode.INVALID_ARGUMENT, L.answer_claim, BOB, claim_id)
    await h.refused(ErrorCode.NOT_PARTY, L.answer_claim, MALLORY, claim_id, evidence=conflicting)
    await L.answer_claim(BOB, claim_id, evidence=conflicting)
    await h.refused(ErrorCode.CLAIM_CLOSED, L.answer_claim, BOB, claim_id, evidence=conflicting)


@_case
async def _case_file_claim_argument_refusals(h: LedgerHarness) -> None:
    """Requests no honest payer signs cannot be claimed: n = 0, price = 0, paid < price, an
    empty service, a body over max_claim_body (INVALID_ARGUMENT), paid above the deposit
    (VOUCHER_EXCEEDS_DEPOSIT)."""
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    deadline = s.request.deadline
    limit = L.params.max_claim_body

    def req(**fields: Any) -> Request:
        values: dict[str, Any] = {"n": 5, "paid": 100, "price": 100, "deadline": deadline}
        values.update(fields)
        return h.voucher(ALICE, s.cid, **values)

    h.clock.ms = deadline + 1
    for bad in (
        req(n=0),
        req(price=0),
        req(paid=0, price=0),
        req(paid=99),
        req(service=""),
        req(body=b"\0" * (limit + 1)),
    ):
        await h.refused(ErrorCode.INVALID_ARGUMENT, L.file_claim, ALICE, bad)
    await h.refused(ErrorCode.VOUCHER_EXCEEDS_DEPOSIT, L.file_claim, ALICE, req(paid=TOKEN + 1))
    await L.file_claim(ALICE, req(n=6, paid=TOKEN, price=TOKEN))  # at the deposit: fine
    await L.file_claim(ALICE, req(n=7, price=1, paid=1))  # the smallest claimable request


@_case
async def _case_unbonding_hostage_refused(h: LedgerHarness) -> None:
    """C-9: against an UNBONDING stake, only requests dated at most unstake_requested_at +
    max_deadline_horizon_ms can be claimed."""
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    await L.request_unstake(BOB)
    st = await L.stake_of(BOB.account)
    assert st is not None
    asked = st.unstake_requested_at
    expect_eq(asked, h.ledger.last_events[0].at, "unstake_requested_at is the op's time")
    last = asked + L.params.max_deadline_horizon_ms
    served = h.voucher(ALICE, s.cid, n=2, paid=100, price=100, deadline=last)
    hostage = h.voucher(ALICE, s.cid, n=3, paid=200, price=100, deadline=last + 1)
    h.clock.ms = last + 2
    await h.refused(ErrorCode.UNBONDING, L.file_claim, ALICE, hostage)
    claim_id = await L.file_claim(ALICE, served)
    expect_eq(claim_id, served.hash, "a request from before unbonding is claimable")


@_case
async def _case_redeem_capped_at_paid_seen_minus_refunded(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    await L.answer_claim(BOB, claim_id, s.response(status=ErrorCode.OVERLOADED.value))
    later = h.voucher(ALICE, s.cid, n=2, paid=300, price=100)
    expect_eq(await L.redeem(BOB, later), 200, "paid 300 seen, 100 refunded")
    h.event_is("Redeemed", amount=200, redeemed=200, n=2, paid=300)
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq((ch.paid_seen, ch.refunded, ch.redeemed), (300, 100, 200), "channel")
    expect_eq(await L.redeem(BOB, later), 0, "nothing more")
    closing = h.voucher(ALICE, s.cid, n=3, paid=500, price=100)
    expect_eq(await L.payee_close(BOB, s.cid, closing), 200, "payee_close has the same cap")


async def _n1_setup(h: LedgerHarness) -> tuple[_ClaimSetup, Request, Request, Response]:
    """Attack N1: ALICE signs r1 (n=1, paid 100) and r2 (n=2, paid 200), price 100 each; BOB
    refuses r1 with a signed OVERLOADED (not charged) and serves r2: he earned 100."""
    s = await _ClaimSetup(h).setup()
    r1 = s.request
    r2 = h.voucher(ALICE, s.cid, n=2, paid=200, price=100, body=b"ping")
    return s, r1, r2, s.response(request=r1, status=ErrorCode.OVERLOADED.value)


@_case
async def _case_refund_with_refusal_caps_the_redeem(h: LedgerHarness) -> None:
    """N1: the refused slice posted with BOB's own refusal is settled at once as REFUSED
    (no bond, no deadline); BOB's redeem of the best voucher then pays only what he earned."""
    L = h.ledger
    s, r1, r2, refusal = await _n1_setup(h)
    alice0 = await L.balance(ALICE.account)
    claim_id = await L.file_claim(ALICE, r1, refusal=refusal)  # before r1's deadline
    expect_eq(claim_id, r1.hash, "the claim id is the request's hash")
    expect_eq([e.kind for e in h.ledger.last_events], ["ClaimFiled", "ClaimAnswered"], "events")
    h.event_is("ClaimFiled", 0, claim=claim_id, bond=0, price=100, paid=100)
    h.event_is(
        "ClaimAnswered",
        claim=claim_id,
        claimant=ALICE.account,
        respondent=BOB.account,
        outcome="refused",
        status=ErrorCode.OVERLOADED.value,
        bond=0,
        bond_to=ALICE.account,
        refund=100,
        clawed=0,
    )
    expect_eq(await L.balance(ALICE.account), alice0, "no bond taken")
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq((c.state, c.bond, c.refund, c.clawed), (ClaimState.REFUSED, 0, 100, 0), "claim")
    expect(decode_held_frame(c.response_frame) == refusal, "the refusal is the claim's response")
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq((st.amount, st.open_claims), (s.stake, 0), "stake untouched, no open claim")
    expect_eq(await L.redeem(BOB, r2), 100, "BOB's redeem is capped at what he earned")
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq((ch.paid_seen, ch.refunded, ch.redeemed), (200, 100, 100), "channel")


@_case
async def _case_refund_with_refusal_claws_back(h: LedgerHarness) -> None:
    """N1: BOB redeemed the full best voucher first; the refusal posted after it claws the
    refused slice back from his stake, to ALICE, at once."""
    L = h.ledger
    s, r1, r2, refusal = await _n1_setup(h)
    expect_eq(await L.redeem(BOB, r2), 200, "the theft: BOB redeems the refused slice too")
    alice0 = await L.balance(ALICE.account)
    await L.file_claim(ALICE, r1, refusal=refusal)
    h.event_is("ClaimAnswered", outcome="refused", bond=0, refund=100, clawed=100)
    expect_eq(await L.balance(ALICE.account), alice0 + 100, "clawed back to ALICE")
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(st.amount, s.stake - 100, "taken from BOB's stake")
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq((ch.redeemed, ch.refunded, ch.clawed), (200, 100, 100), "channel")
    expect_eq(await L.redeem(BOB, r2), 0, "the slice cannot be redeemed again")


@_case
async def _case_refund_with_refusal_refusals(h: LedgerHarness) -> None:
    L = h.ledger
    s, r1, r2, refusal = await _n1_setup(h)
    by_carol = s.response(key=CAROL, request=r1, status=ErrorCode.OVERLOADED.value)
    await h.refused(ErrorCode.INVALID_SIGNATURE, L.file_claim, ALICE, r1, refusal=by_carol)
    for_r2 = s.response(request=r2, status=ErrorCode.OVERLOADED.value)
    await h.refused(ErrorCode.RESPONSE_MISMATCH, L.file_claim, ALICE, r1, refusal=for_r2)
    ok = s.response(request=r1)
    await h.refused(ErrorCode.RESPONSE_MISMATCH, L.file_claim, ALICE, r1, refusal=ok)
    priced = unchecked_response(
        BOB, request=r1, status=ErrorCode.OVERLOADED.value, price=1, spent=1, body=b""
    )
    await h.refused(ErrorCode.RESPONSE_MISMATCH, L.file_claim, ALICE, r1, refusal=priced)
    await h.refused(ErrorCode.NOT_PARTY, L.file_claim, BOB, r1, refusal=refusal)
    above = h.voucher(ALICE, s.cid, n=3, paid=TOKEN + 1, price=100, body=b"ping")
    refused_above = s.response(request=above, status=ErrorCode.OVERLOADED.value)
    await h.refused(
        ErrorCode.VOUCHER_EXCEEDS_DEPOSIT, L.file_claim, ALICE, above, refusal=refused_above
    )
    await L.file_claim(ALICE, r1, refusal=refusal)
    await h.refused(ErrorCode.CLAIM_EXISTS, L.file_claim, ALICE, r1, refusal=refusal)
    await h.refused(ErrorCode.CLAIM_EXISTS, s.file, r1)  # a regular claim after it
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq(ch.refunded, 100, "refunded once")


@_case
async def _case_clawback_capped_by_stake(h: LedgerHarness) -> None:
    """A clawback takes at most what is left of the stake after the slash."""
    L = h.ledger
    s = _ClaimSetup(h)
    s.stake, s.penalty = 3 * TOKEN + TOKEN // 2, 3 * TOKEN
    await s.setup()
    big = h.voucher(ALICE, s.cid, n=1, paid=TOKEN, price=TOKEN, body=b"big")
    expect_eq(await L.redeem(BOB, big), TOKEN, "the payee redeems the whole deposit")
    claim_id = await s.file(big)
    h.clock.advance(s.window + 1)
    alice0 = await L.balance(ALICE.account)
    await L.resolve_claim(MALLORY, claim_id)
    to_claimant = 3 * TOKEN * L.params.slash_to_claimant_bps // 10_000
    h.event_is(
        "ClaimUpheld",
        0,
        slashed=3 * TOKEN,
        to_claimant=to_claimant,
        refund=TOKEN,
        clawed=TOKEN // 2,
    )
    expect_eq(
        await L.balance(ALICE.account),
        alice0 + to_claimant + L.params.claim_bond + TOKEN // 2,
        "claimant: share of the slash, bond, and the clawback the stake could pay",
    )
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(st.amount, 0, "stake exhausted")
    ch = await L.channel(s.cid)
    assert ch is not None
    expect_eq((ch.redeemed, ch.refunded, ch.clawed), (TOKEN, TOKEN, TOKEN // 2), "channel")
    c = await L.claim(claim_id)
    assert c is not None
    expect_eq((c.refund, c.clawed), (TOKEN, TOKEN // 2), "claim refund and clawback")


@_case
async def _case_slash_is_capped_by_the_stake(h: LedgerHarness) -> None:
    L = h.ledger
    s = _ClaimSetup(h)
    s.stake, s.penalty = 4 * TOKEN, 3 * TOKEN
    await s.setup()
    r1 = s.request
    r2 = h.voucher(ALICE, s.cid, n=2, paid=200, deadline=r1.deadline)
    r3 = h.voucher(ALICE, s.cid, n=3, paid=300, deadline=r1.deadline)
    c1 = await s.file(r1)
    c2 = await s.file(r2)
    # the second claim's window ends one slot after the first's (FileClaim)
    h.clock.advance(s.window + claim_slot_ms(L.params, s.window) + 1)
    await L.resolve_claim(ALICE, c1)
    h.event_is("ClaimUpheld", 0, slashed=3 * TOKEN)
    await L.resolve_claim(ALICE, c2)
    h.event_is("ClaimUpheld", 0, slashed=TOKEN)  # only what is left
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(st.amount, 0, "stake exhausted")
    # nothing left to claim against
    await h.refused(ErrorCode.NOT_STAKED, L.file_claim, ALICE, r3)


@_case
async def _case_claim_windows_queue_per_stake(h: LedgerHarness) -> None:
    """FileClaim: a claim's window is a whole window plus one slot
    (``ceil(claim_window_ms / claims_per_window)``) per claim still open against the stake;
    answered and resolved claims, and a refund with the payee's refusal, take no slot
    (specs/settlement.md FileClaim, claims.md C-1)."""
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    slot = claim_slot_ms(L.params, s.window)
    expect_eq(slot, -(-s.window // L.params.claims_per_window), "slot")
    deadline = s.request.deadline
    rs = [s.request] + [
        h.voucher(ALICE, s.cid, n=n, paid=100 * n, price=100, deadline=deadline, body=bytes([n]))
        for n in (2, 3, 4)
    ]
    ids = []
    for i, r in enumerate(rs[:3]):
        ids.append(await s.file(r))
        filed = h.clock.ms
        h.event_is("ClaimFiled", 0, window_ends=filed + s.window + i * slot)
    claims = [await L.claim(c) for c in ids]
    ends = [c.window_ends for c in claims if c is not None]
    expect_eq(ends, [filed + s.window + i * slot for i in range(3)], "queued window ends")
    # a refund with the payee's refusal is settled at once and takes no slot
    refusal = s.response(request=rs[3], status="OVERLOADED")
    await L.file_claim(ALICE, rs[3], refusal)
    st = await L.stake_of(BOB.account)
    assert st is not None
    expect_eq(st.open_claims, 3, "a refusal's claim is not open")
    # the first window closes on time; the second is still open then
    h.clock.ms = ends[0] + 1
    await L.resolve_claim(ALICE, ids[0])
    h.event_is("ClaimUpheld", 0)
    await h.refused(ErrorCode.WINDOW_OPEN, L.resolve_claim, ALICE, ids[1])
    # the respondent may still answer the third, after the first window
    await L.answer_claim(BOB, ids[2], s.response(request=rs[2]))
    h.event_is("ClaimAnswered", 0, outcome="delivered")
    # one claim is open (the second): the next claim's window is a window and one slot
    r5 = h.voucher(ALICE, s.cid, n=5, paid=500, price=100, deadline=h.clock.ms - 1, body=b"5")
    c5 = await L.file_claim(ALICE, r5)
    claim5 = await L.claim(c5)
    assert claim5 is not None
    expect_eq(claim5.window_ends, h.clock.ms + s.window + slot, "answered claims take no slot")
    # none open: a whole window from its filing, however many were filed before
    await L.answer_claim(BOB, c5, s.response(request=r5))
    h.clock.ms = ends[1] + 1
    await L.resolve_claim(ALICE, ids[1])
    r6 = h.voucher(ALICE, s.cid, n=6, paid=600, price=100, deadline=h.clock.ms - 1, body=b"6")
    c6 = await L.file_claim(ALICE, r6)
    claim6 = await L.claim(c6)
    assert claim6 is not None
    expect_eq(claim6.window_ends, h.clock.ms + s.window, "no claim open")


@_case
async def _case_zero_slash_emits_no_slashed_event(h: LedgerHarness) -> None:
    L = h.ledger
    s = _ClaimSetup(h)
    s.stake, s.penalty = 3 * TOKEN, 3 * TOKEN
    await s.setup()
    r2 = h.voucher(ALICE, s.cid, n=2, paid=200, deadline=s.request.deadline)
    c1 = await s.file()
    c2 = await s.file(r2)
    h.clock.advance(s.window + claim_slot_ms(L.params, s.window) + 1)
    await L.resolve_claim(ALICE, c1)
    await L.resolve_claim(ALICE, c2)
    expect_eq(len(h.ledger.last_events), 1, "only ClaimUpheld when nothing is slashed")
    h.event_is("ClaimUpheld", slashed=0, to_claimant=0, burnt=0, bond=L.params.claim_bond)


@_case
async def _case_unbonding_vs_claims(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    # BOB took a request, then asks to unstake before its deadline passes
    await L.request_unstake(BOB)
    st = await L.stake_of(BOB.account)
    assert st is not None
    unbonding_at = st.unbonding_at
    claim_id = await s.file()  # claims against an UNBONDING stake are allowed
    await h.refused(ErrorCode.UNBONDING, L.stake, BOB, TOKEN, s.penalty, s.window)
    await h.refused(ErrorCode.STAKE_LOCKED, L.withdraw_stake, BOB)  # before unbonding_at
    h.clock.ms = unbonding_at
    await h.refused(ErrorCode.STAKE_LOCKED, L.withdraw_stake, BOB)  # a claim is open
    await L.resolve_claim(ALICE, claim_id)
    await L.withdraw_stake(BOB)
    h.event_is("StakeWithdrawn", amount=s.stake - s.penalty)
    expect_eq(await L.balance(BOB.account), 20 * TOKEN - s.penalty, "stake minus the slash")


@_case
async def _case_stake_terms_locked_while_claims_open(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    await h.refused(ErrorCode.STAKE_LOCKED, L.stake, BOB, TOKEN, s.penalty + 1, s.window)
    await h.refused(ErrorCode.STAKE_LOCKED, L.stake, BOB, TOKEN, s.penalty, s.window + 1)
    await L.stake(BOB, TOKEN, s.penalty, s.window)  # adding collateral is fine
    h.event_is("Staked", amount=TOKEN, total=s.stake + TOKEN)
    await L.answer_claim(BOB, claim_id, s.response())
    await L.stake(BOB, TOKEN, s.penalty + 1, s.window + 1)  # no claims open: terms may change


# --- events, time, reads ----------------------------------------------------


@_case
async def _case_events_paging(h: LedgerHarness) -> None:
    L = h.ledger
    times = []
    for i in range(1, 12):
        times.append(h.clock.advance(i))
        await L.mint(ALICE, ALICE.account, i)
    all_events = await L.events()
    expect_eq([e.seq for e in all_events], list(range(1, 12)), "seq starts at 1, no gaps")
    expect_eq([e.at for e in all_events], times, "event times")
    expect_eq([e.fields["amount"] for e in all_events], list(range(1, 12)), "event order")
    cursor, pages = 0, []
    for _ in range(20):  # bounded
        page = await L.events(after=cursor, limit=3)
        if not page:
            break
        expect(len(page) <= 3, "limit respected")
        pages.append([e.seq for e in page])
        cursor = page[-1].seq
    expect_eq(pages, [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]], "pages")
    expect_eq(await L.events(after=11), [], "nothing after the last event")
    expect_eq(await L.events(after=100), [], "nothing after a future cursor")
    expect_eq(await L.events(after=0, limit=0), [], "limit 0")
    expect_eq([e.seq for e in await L.events(after=5, limit=2)], [6, 7], "middle page")
    # refused ops leave no trace in the events
    await h.refused(ErrorCode.INSUFFICIENT_FUNDS, L.transfer, BOB, ALICE.account, 1)
    expect_eq(len(await L.events()), 11, "no event for a refused op")


@_case
async def _case_every_event_kind(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    await L.transfer(ALICE, CAROL.account, 1)
    await L.withdraw(CAROL, 1)
    await L.top_up(ALICE, s.cid, 10)
    await L.redeem(BOB, h.voucher(ALICE, s.cid, n=5, paid=10))
    c1 = await s.file()
    await L.answer_claim(BOB, c1, s.response())
    r2 = h.voucher(ALICE, s.cid, n=6, paid=10, deadline=h.clock.ms + 10)
    c2 = await s.file(r2)
    h.clock.advance(s.window + claim_slot_ms(L.params, s.window) + 1)  # queued after c1's
    await L.resolve_claim(ALICE, c2)
    await L.start_close(ALICE, s.cid)
    h.clock.advance(5_000)
    await L.finalize_close(ALICE, s.cid)
    await L.request_unstake(BOB)
    st = await L.stake_of(BOB.account)
    assert st is not None
    h.clock.ms = st.unbonding_at
    await L.withdraw_stake(BOB)
    expect_eq(h.ledger.kinds_seen, set(EVENT_FIELDS), "every event kind was emitted")
    # and each stored event has exactly the spec's fields, with plain values
    for event in await L.events(limit=1000):
        for name, value in event.fields.items():
            expect(
                type(value) in (bytes, int, str),
                f"{event.kind}.{name} is a {type(value).__name__}, not bytes/int/str",
            )


@_case
async def _case_ledger_time_never_goes_backwards(h: LedgerHarness) -> None:
    L = h.ledger
    h.clock.ms = T0 + 10_000
    await L.mint(ALICE, ALICE.account, 1)
    expect_eq((await L.events())[-1].at, T0 + 10_000, "event time is the clock")
    h.clock.ms = T0  # the clock jumps back
    await L.mint(ALICE, ALICE.account, 1)
    last = (await L.events())[-1]
    expect(last.at >= T0 + 10_000, f"ledger time went backwards: {last.at}")
    expect((await L.inner.now()) >= T0 + 10_000, "now() went backwards")
    h.clock.ms = T0 + 20_000
    expect_eq(await L.inner.now(), T0 + 20_000, "now() follows the clock forwards")


@_case
async def _case_reads_are_copies(h: LedgerHarness) -> None:
    L = h.ledger
    s = await _ClaimSetup(h).setup()
    claim_id = await s.file()
    ch = await L.channel(s.cid)
    st = await L.stake_of(BOB.account)
    cl = await L.claim(claim_id)
    assert ch is not None and st is not None and cl is not None
    ch.deposit, ch.redeemed, ch.state = 0, 0, ChannelState.CLOSED
    st.amount, st.open_claims = 0, 0
    cl.state, cl.bond = ClaimState.DELIVERED, 0
    (await L.channels_of(ALICE.account))[0].deposit = 1
    events = await L.events()
    events[0].fields["amount"] = 0
    ch2 = await L.channel(s.cid)
    st2 = await L.stake_of(BOB.account)
    cl2 = await L.claim(claim_id)
    assert ch2 is not None and st2 is not None and cl2 is not None
    expect_eq((ch2.deposit, ch2.state), (TOKEN, ChannelState.OPEN), "channel unchanged by caller")
    expect_eq((st2.amount, st2.open_claims), (s.stake, 1), "stake unchanged by caller")
    expect_eq((cl2.state, cl2.bond), (ClaimState.OPEN, L.params.claim_bond), "claim unchanged")
    expect_eq((await L.events())[0].fields["amount"], 10 * TOKEN, "events unchanged by caller")
    expect((await L.totals()).conserved, "still conserved")


@_case
async def _case_channels_and_claims_of(h: LedgerHarness) -> None:
    L = h.ledger
    await h.funded((ALICE, 10 * TOKEN), (BOB, 10 * TOKEN), (CAROL, 10 * TOKEN))
    ab = await L.open_channel(ALICE, BOB.account, 10, 5_000)
    ca = await L.open_channel(CAROL, ALICE.account, 10, 5_000)
    bc = await L.open_channel(BOB, CAROL.account, 10, 5_000)
    ab2 = await L.open_channel(ALICE, BOB.account, 10, 5_000)
    await L.payee_close(BOB, ab)  # closed channels are still listed
    ids = {
        k.account: [c.id for c in await L.channels_of(k.account)]
        for k in (ALICE, BOB, CAROL, MALLORY)
    }
    expect_eq(ids[ALICE.account], [ab, ca, ab2], "channels of ALICE, in opening order")
    expect_eq(ids[BOB.account], [ab, bc, ab2], "channels of BOB")
    expect_eq(ids[CAROL.account], [ca, bc], "channels of CAROL")
    expect_eq(ids[MALLORY.account], [], "channels of MALLORY")
    await L.stake(BOB, TOKEN, TOKEN, 10_000)
    await L.stake(ALICE, TOKEN, TOKEN, 10_000)
    deadline = h.clock.ms + 10
    r1 = h.voucher(ALICE, ab2, n=1, paid=1, deadline=deadline)
    r2 = h.voucher(CAROL, ca, n=1, paid=1, deadline=deadline)
    h.clock.ms = deadline + 1
    k1 = await L.file_claim(ALICE, r1)
    k2 = await L.file_claim(CAROL, r2)
    expect_eq([c.id for c in await L.claims_of(ALICE.account)], [k1, k2], "claims of ALICE")
    expect_eq([c.id for c in await L.claims_of(BOB.account)], [k1], "claims of BOB")
    expect_eq([c.id for c in await L.claims_of(CAROL.account)], [k2], "claims of CAROL")
    expect_eq(await L.claims_of(MALLORY.account), [], "claims of MALLORY")
    # by role, ids only (what a node reads, then each claim alone: `claims_one_by_one`)
    k3 = await L.file_claim(ALICE, h.voucher(ALICE, ab2, n=2, paid=2, deadline=deadline))
    roles = {
        (k.account, role): await L.claim_ids_of(k.account, role)
        for k in (ALICE, BOB, CAROL, MALLORY)
        for role in CLAIM_ROLES
    }
    expect_eq(roles[ALICE.account, "claimant"], [k1, k3], "ALICE's claims, in filing order")
    expect_eq(roles[ALICE.account, "respondent"], [k2], "claims against ALICE")
    expect_eq(roles[BOB.account, "claimant"], [], "BOB's claims")
    expect_eq(roles[BOB.account, "respondent"], [k1, k3], "claims against BOB")
    expect_eq(roles[CAROL.account, "claimant"], [k2], "CAROL's claims")
    expect_eq(roles[CAROL.account, "respondent"], [], "claims against CAROL")
    expect_eq(roles[MALLORY.account, "claimant"], [], "MALLORY's claims")
    expect_eq(roles[MALLORY.account, "respondent"], [], "claims against MALLORY")
    # either role, in filing order (one list: a merge by time cannot order ties)
    expect_eq(await L.claim_ids_of(ALICE.account), [k1, k2, k3], "ALICE's claims, either role")
    expect_eq(await L.claim_ids_of(MALLORY.account), [], "MALLORY's claims, either role")
    read = [c.id async for c in claims_one_by_one(L, BOB.account, "respondent")]
    expect_eq(read, [k1, k3], "claims against BOB, read one at a time")
    # their ClaimFiled events, in one read (what a watcher lists at a start)
    filed = {e.fields["claim"]: e for e in await L.events() if e.kind == "ClaimFiled"}
    for k in (ALICE, BOB, CAROL, MALLORY):
        for role in (*CLAIM_ROLES, None):
            got = await L.claim_filings_of(k.account, role)
            want = roles[k.account, role] if role else await L.claim_ids_of(k.account)
            expect_eq([e.fields["claim"] for e in got], want, f"filings, {role} of {k}")
            for e in got:
                expect_eq(e.kind, "ClaimFiled", "a filing's kind")
                expect_eq(e.fields, filed[e.fields["claim"]].fields, "a filing's fields")
                expect_eq(e.at, filed[e.fields["claim"]].at, "a filing's time")
    refused = False
    try:
        await L.claim_filings_of(BOB.account, "payee")
    except LocalProtocolError:
        refused = True
    expect(refused, "claim_filings_of accepted the role 'payee'")
    refused = False
    try:
        await L.claim_ids_of(BOB.account, "payee")
    except LocalProtocolError:
        refused = True
    expect(refused, "claim_ids_of accepted the role 'payee'")


# --- signed transactions (memory and SQLite; specs/settlement.md section 11) -------
#
# An EVM ledger authenticates `msg.sender` on chain and orders transactions with the
# chain's own nonces: run these cases only on backends that take signed transactions
# (`submit(tx)`, `next_nonce`); an EVM suite skips the names in `SIGNED_TX_CASES`.

SIGNED_TX_CASES: set[str] = set()


def _tx_case(fn: CaseFn) -> CaseFn:
    SIGNED_TX_CASES.add(fn.__name__.removeprefix("_case_"))
    return _case(fn)


class _Impostor:
    """A key object that names `victim`'s account but signs with `signer`'s secret."""

    def __init__(self, victim: Keypair, signer: Keypair) -> None:
        self.account = victim.account
        self.public = victim.public
        self.sign = signer.sign


@runtime_checkable
class _SignedTxLedger(Protocol):
    """A backend that takes signed transactions (specs/settlement.md section 11)."""

    @property
    def tx_count(self) -> int: ...

    async def next_nonce(self, account: bytes) -> int: ...

    async def submit(self, tx: Transaction) -> Receipt: ...


def _tx_ledger(h: LedgerHarness) -> _SignedTxLedger:
    return _signed_tx(h.ledger.inner)


def _signed_tx(inner: Ledger) -> _SignedTxLedger:
    if not (
        isinstance(inner, _SignedTxLedger)
        and callable(getattr(inner, "submit", None))
        and callable(getattr(inner, "next_nonce", None))
    ):
        raise _fail(
            "this backend takes no signed transactions (submit/next_nonce): skip SIGNED_TX_CASES"
        )
    return inner


async def _refused_tx(h: LedgerHarness, code: ErrorCode, tx: Transaction, what: str) -> None:
    """`submit(tx)` is refused with `code` and nothing readable changed (S-4)."""
    inner = _tx_ledger(h)
    before = await h.ledger.snapshot()
    nonces = [await inner.next_nonce(a) for a in h.accounts]
    tx_count = inner.tx_count
    await h.refused(code, inner.submit, tx)
    expect_eq(await h.ledger.snapshot(), before, f"S-4: refused {what} changed the ledger")
    expect_eq([await inner.next_nonce(a) for a in h.accounts], nonces, f"nonces after {what}")
    expect_eq(inner.tx_count, tx_count, f"tx_count after a refused {what}")


@_tx_case
async def _case_tx_forged_sender_refused(h: LedgerHarness) -> None:
    """Issue 14: nobody moves the victim's money or starts its unstaking without its key."""
    from p2pay.core.settlement import RequestUnstake, Transfer
    from p2pay.core.tx import sign_transaction

    L = h.ledger
    inner = _tx_ledger(h)
    await h.funded((ALICE, 10 * TOKEN))
    await L.stake(ALICE, 4 * TOKEN, TOKEN, 10_000)
    nonce = await inner.next_nonce(ALICE.account)
    steal = Transfer(sender=ALICE.account, to=MALLORY.account, amount=6 * TOKEN)
    unstake = RequestUnstake(sender=ALICE.account)
    for op in (steal, unstake):
        forged = sign_transaction(MALLORY, L.ledger_id, nonce, op)
        await _refused_tx(h, ErrorCode.INVALID_SIGNATURE, forged, "forged transaction")
        unsigned = dataclasses.replace(forged, signature=b"")
        await _refused_tx(h, ErrorCode.INVALID_SIGNATURE, unsigned, "unsigned transaction")
    # the named operations sign with the key they are given: an impostor key fails
    impostor = _Impostor(ALICE, MALLORY)
    await h.refused(ErrorCode.INVALID_SIGNATURE, L.transfer, impostor, MALLORY.account, 1)
    await h.refused(ErrorCode.INVALID_SIGNATURE, L.request_unstake, impostor)
    await h.refused(ErrorCode.INVALID_SIGNATURE, L.withdraw, impostor, 1)
    expect_eq(await h.balances(ALICE, MALLORY), [6 * TOKEN, 0], "balances after forgeries")
    stake = await L.stake_of(ALICE.account)
    assert stake is not None
    expect_eq((stake.amount, stake.unbonding_at), (4 * TOKEN, 0), "victim's stake untouched")
    expect_eq(await inner.next_nonce(ALICE.account), nonce, "victim's nonce untouched")
    # and the victim's own transaction with that nonce goes through
    await inner.submit(sign_transaction(ALICE, L.ledger_id, nonce, steal))
    expect_eq(await h.balances(ALICE, MALLORY), [0, 6 * TOKEN], "the owner's own transfer")


@_tx_case
async def _case_tx_replay_refused(h: LedgerHarness) -> None:
    from p2pay.core.settlement import Transfer
    from p2pay.core.tx import sign_transaction

    L = h.ledger
    inner = _tx_ledger(h)
    await h.funded((ALICE, 10 * TOKEN))
    nonce = await inner.next_nonce(ALICE.account)
    tx = sign_transaction(
        ALICE, L.ledger_id, nonce, Transfer(sender=ALICE.account, to=BOB.account, amount=TOKEN)
    )
    receipt = await inner.submit(tx)
    expect_eq([e.kind for e in receipt.events], ["Transferred"], "events of the transaction")
    expect_eq(await inner.next_nonce(ALICE.account), nonce + 1, "nonce after a transaction")
    await _refused_tx(h, ErrorCode.BAD_NONCE, tx, "replayed transaction")
    await L.transfer(ALICE, BOB.account, TOKEN)  # a named op takes the next nonce
    await _refused_tx(h, ErrorCode.BAD_NONCE, tx, "replayed transaction")
    expect_eq(await h.balances(ALICE, BOB), [8 * TOKEN, 2 * TOKEN], "each transfer once")


@_tx_case
async def _case_tx_reordered_refused_then_valid_sequence(h: LedgerHarness) -> None:
    from p2pay.core.settlement import Op, Transfer, Withdraw
    from p2pay.core.tx import sign_transaction

    L = h.ledger
    inner = _tx_ledger(h)
    await h.funded((ALICE, 10 * TOKEN))
    n = await inner.next_nonce(ALICE.account)
    ops: list[Op] = [
        Transfer(sender=ALICE.account, to=BOB.account, amount=TOKEN),
        Withdraw(sender=ALICE.account, amount=2 * TOKEN),
        Transfer(sender=ALICE.account, to=CAROL.account, amount=3 * TOKEN),
    ]
    txs = [sign_transaction(ALICE, L.ledger_id, n + i, op) for i, op in enumerate(ops)]
    await _refused_tx(h, ErrorCode.BAD_NONCE, txs[1], "transaction 2 before 1")
    await _refused_tx(h, ErrorCode.BAD_NONCE, txs[2], "transaction 3 before 1")
    for i, tx in enumerate(txs):
        await inner.submit(tx)
        expect_eq(await inner.next_nonce(ALICE.account), n + i + 1, "nonce in a valid sequence")
    expect_eq(await h.balances(ALICE, BOB, CAROL), [4 * TOKEN, TOKEN, 3 * TOKEN], "balances")
    expect_eq((await L.totals()).supply, 8 * TOKEN, "supply after the withdraw")
    # a refused transaction consumes no nonce: the next one reuses it
    n = await inner.next_nonce(ALICE.account)
    too_much = Transfer(sender=ALICE.account, to=BOB.account, amount=5 * TOKEN)
    await _refused_tx(
        h,
        ErrorCode.INSUFFICIENT_FUNDS,
        sign_transaction(ALICE, L.ledger_id, n, too_much),
        "transaction the rules refuse",
    )
    await L.transfer(ALICE, BOB.account, TOKEN)
    expect_eq(await inner.next_nonce(ALICE.account), n + 1, "nonce after a refusal and an op")
    await _refused_tx(
        h,
        ErrorCode.BAD_NONCE,
        sign_transaction(ALICE, L.ledger_id, n, too_much),
        "stale refused transaction",
    )
    # nonces are per sender: CAROL's first transaction is number 1
    expect_eq(await inner.next_nonce(CAROL.account), 1, "a new sender's first nonce")


@_tx_case
async def _case_tx_for_another_ledger_refused(h: LedgerHarness) -> None:
    from p2pay.core.settlement import Transfer
    from p2pay.core.tx import Transaction, sign_transaction

    L = h.ledger
    inner = _tx_ledger(h)
    await h.funded((ALICE, 10 * TOKEN))
    other = await h.new_ledger()  # another ledger where ALICE has the same nonce
    n = await inner.next_nonce(ALICE.account)
    expect_eq(await _signed_tx(other.inner).next_nonce(ALICE.account), 1, "nonce on a fresh ledger")
    op = Transfer(sender=ALICE.account, to=BOB.account, amount=TOKEN)
    elsewhere = sign_transaction(ALICE, other.ledger_id, n, op)
    await _refused_tx(h, ErrorCode.WRONG_LEDGER, elsewhere, "transaction for another ledger")
    # relabelled for this ledger, its signature no longer holds
    relabelled = dataclasses.replace(elsewhere, ledger=L.ledger_id)
    await _refused_tx(h, ErrorCode.INVALID_SIGNATURE, relabelled, "relabelled transaction")
    malformed: tuple[Any, ...] = (  # (not transactions, on purpose)
        op,
        b"not a transaction",
        Transaction(ledger=L.ledger_id, nonce=0, op=op, signature=b""),
    )
    for bad in malformed:
        await _refused_tx(h, ErrorCode.INVALID_ARGUMENT, bad, "malformed transaction")
    await inner.submit(sign_transaction(ALICE, L.ledger_id, n, op))
    expect_eq(await h.balances(ALICE, BOB), [9 * TOKEN, TOKEN], "the right transaction applies")


# --- running ----------------------------------------------------------------


def _wrap(fn: CaseFn) -> Callable[[LedgerFactory], Awaitable[None]]:
    async def run(factory: LedgerFactory) -> None:
        h = LedgerHarness(factory)
        await h.start()
        try:
            await fn(h)
        finally:
            await h.close()

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def ledger_conformance_cases() -> list[tuple[str, Callable[[LedgerFactory], Awaitable[None]]]]:
    """The ledger conformance cases as ``(name, case)``; ``await case(factory)`` runs one.

    Each case makes its own ledgers with `factory` and closes them afterwards; it raises
    `LedgerConformanceError` (an AssertionError) or an unexpected exception on failure.
    """
    return [(name, _wrap(fn)) for name, fn in _CASES]


async def run_ledger_conformance(factory: LedgerFactory) -> None:
    """Run every ledger conformance case against `factory`; raise on the first failure.

    Raises:
        LedgerConformanceError: naming the failing case.
    """
    for name, case in ledger_conformance_cases():
        try:
            await case(factory)
        except Exception as exc:
            raise LedgerConformanceError(f"ledger conformance case {name!r} failed: {exc}") from exc


# --- anvil (a real JSON-RPC node for the EVM ledger's tests and gas figures) ------------


def anvil_binary() -> str | None:
    """anvil's path: ``P2PAY_ANVIL``, else PATH (npm package ``@foundry-rs/anvil``)."""
    return os.environ.get("P2PAY_ANVIL") or shutil.which("anvil")


@contextmanager
def running_anvil(
    binary: str,
    *,
    start_timeout_s: float = 20.0,
    rpc_timeout_s: float = 5.0,
    block_time_s: int | None = None,
) -> Iterator[str]:
    """Start anvil on a free 127.0.0.1 port (chain id 31337) and yield its URL once it
    answers; stop it by its PID afterwards (terminate, then kill, each wait bounded).
    `block_time_s`: mine a block every so many seconds, as a live chain does (None: a block
    per transaction only).

    Raises:
        RuntimeError: anvil exited or did not answer within `start_timeout_s`.
    """
    from p2pay.ledger.evm import Web3Chain  # web3 is a dev extra

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = [binary, "--host", "127.0.0.1", "--port", str(port), "--silent", "--chain-id", "31337"]
    if block_time_s is not None:
        args += ["--block-time", str(block_time_s)]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        chain = Web3Chain(url, timed=True, timeout_s=rpc_timeout_s)
        while True:  # bounded by the deadline
            try:
                chain.chain_id()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"anvil did not start on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


__all__ = [
    "ALICE",
    "BOB",
    "CAROL",
    "EVENT_FIELDS",
    "MALLORY",
    "SIGNED_TX_CASES",
    "T0",
    "TOKEN",
    "CheckedLedger",
    "LedgerConformanceError",
    "LedgerFactory",
    "LedgerHarness",
    "ManualClock",
    "anvil_binary",
    "evm_test_keys",
    "expect",
    "expect_eq",
    "ledger_conformance_cases",
    "run_ledger_conformance",
    "running_anvil",
    "unchecked_request",
    "unchecked_response",
]
