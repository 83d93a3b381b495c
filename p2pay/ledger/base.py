"""The `Ledger` interface every settlement backend implements (specs/settlement.md).

Theory of operation
-------------------
The contract's rules live in one place, `p2pay.core.settlement.apply`, a pure function
``(state, op, now) -> (result, events)``. A ledger backend is an adapter around it: it
holds the state somewhere (a dict, a SQLite file, a chain), and for each operation it

1. reads its clock (``now``, milliseconds; never earlier than the time of the last
   operation it applied, so ledger time does not run backwards),
2. loads the entities the op touches (`p2pay.core.settlement.touches`),
3. calls `apply`, which either refuses with `SettlementError` (nothing changes) or
   mutates the state and returns the op's result and events,
4. stores the new state and the events, numbered ``seq = 1, 2, 3 ...`` without gaps,
   atomically: an operation is applied entirely or not at all.

A backend never re-implements a rule; `OpLedger` builds the op dataclasses from the
public methods' arguments so that a backend only writes `_submit` and the reads. The
memory and SQLite backends (`LocalLedger`) write `_submit_signed` instead: in the same
atomic section as steps 2 to 4 they read the sender's next nonce, have the transaction
signed for it and check it (`p2pay.core.tx.check_transaction`, specs/settlement.md 11).

`Ledger` is the async protocol (trio-native) the node, the watcher, the CLI and the
simulator use. The `key` argument of an operation is the sender's key: the op's sender is
``key.account``, and the backend signs the transaction with `key` (specs/settlement.md
section 11 on the memory and SQLite ledgers, which check the signature and the sender's
nonce before applying; a chain backend signs the chain transaction with it). Nobody can
act for an account without its key: there is no unsigned way to apply an op.

`Totals` is the audit of invariant INV-conservation: every yocto minted and not
withdrawn is in exactly one place, ``supply == balances + escrow + stakes + bonds +
burnt``. `totals_of` computes it from a full `State`; every backend uses it.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, TypeVar, runtime_checkable

import trio

from p2pay.core.errors import ErrorCode, LocalProtocolError, SettlementError
from p2pay.core.evmsig import EvmKey
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response
from p2pay.core.settlement import (
    AnswerClaim,
    Channel,
    Claim,
    ClaimState,
    Event,
    FileClaim,
    FinalizeClose,
    Mint,
    Op,
    OpenChannel,
    Params,
    PayeeClose,
    Redeem,
    RequestUnstake,
    ResolveClaim,
    Stake,
    StakeOp,
    StartClose,
    State,
    TopUp,
    Transfer,
    Withdraw,
    WithdrawStake,
)
from p2pay.core.signing import Signer
from p2pay.core.tx import FIRST_NONCE, Transaction, check_transaction, sign_transaction

__all__ = [
    "Ledger",
    "LedgerFileError",
    "LedgerKey",
    "LocalLedger",
    "OpLedger",
    "Receipt",
    "Totals",
    "totals_of",
]


LedgerKey = Keypair | EvmKey
"""The key an operation of an `OpLedger` is authorised by: a `Keypair` (Ed25519), or an
`EvmKey` (an EVM ledger also takes the `Keypair` its EVM key derives from)."""


class LedgerFileError(LocalProtocolError):
    """A file given as a ledger is not one (or is of an unknown format version)."""

    code = ErrorCode.INVALID_ARGUMENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """Where every yocto is. `conserved` is the conservation invariant."""

    supply: int  # minted minus withdrawn
    balances: int  # sum of account balances
    escrow: int  # sum of channel escrow (deposit - redeemed of channels not closed)
    stakes: int  # sum of stake amounts (bonded or unbonding)
    bonds: int  # sum of claim bonds of open claims
    burnt: int  # slashed and not paid to claimants

    @property
    def held(self) -> int:
        """Everything held somewhere: balances + escrow + stakes + bonds + burnt."""
        return self.balances + self.escrow + self.stakes + self.bonds + self.burnt

    @property
    def conserved(self) -> bool:
        return self.supply == self.held


def totals_of(state: State) -> Totals:
    """Audit a full `State`.

    Args:
        state: every entity of the ledger (not a partial state).

    Returns:
        The `Totals`; a closed channel holds no escrow, an answered or upheld claim no bond.
    """
    return Totals(
        supply=state.supply,
        balances=sum(state.balances.values()),
        escrow=sum(ch.escrow for ch in state.channels.values()),
        stakes=sum(st.amount for st in state.stakes.values()),
        bonds=sum(c.bond for c in state.claims.values() if c.state is ClaimState.OPEN),
        burnt=state.burnt,
    )


@dataclass(frozen=True, slots=True)
class Receipt:
    """What one applied operation gave: its result and its stored events (with `seq`)."""

    result: Any
    events: tuple[Event, ...]


#: an account's part in a claim (`Ledger.claim_ids_of`)
ClaimRole = Literal["claimant", "respondent"]
CLAIM_ROLES: tuple[ClaimRole, ...] = ("claimant", "respondent")


def check_claim_role(role: object) -> ClaimRole | None:
    """`role` if it is one of `CLAIM_ROLES` or None (either); else LocalProtocolError."""
    if role is None or role == "claimant" or role == "respondent":
        return role
    raise LocalProtocolError(f"a claim role is one of {CLAIM_ROLES} or None, not {role!r}")


async def claims_one_by_one(
    ledger: Ledger, account: bytes, role: ClaimRole | None = None
) -> AsyncIterator[Claim]:
    """The claims where `account` is the `role` (either if None), in filing order, read one
    at a time: at most one claim's body is held here at once (`Ledger.claims_of` holds
    them all)."""
    for claim_id in await ledger.claim_ids_of(account, role):
        claim = await ledger.claim(claim_id)
        if claim is not None:
            yield claim


@runtime_checkable
class Ledger(Protocol):
    """A settlement instance, seen asynchronously. All amounts are yocto ints, times ms.

    Every operation raises `p2pay.core.errors.SettlementError` (with its code) when the
    contract refuses it; then nothing changed.
    """

    @property
    def ledger_id(self) -> bytes:
        """Which settlement instance; goes inside every signed message."""
        ...

    @property
    def params(self) -> Params: ...

    @property
    def tx_count(self) -> int:
        """Operations this object applied successfully (for benchmarks)."""
        ...

    async def now(self) -> int:
        """The ledger's clock, in ms."""
        ...

    # --- reads
    async def balance(self, account: bytes) -> int: ...
    async def channel(self, channel_id: bytes) -> Channel | None: ...
    async def stake_of(self, account: bytes) -> Stake | None: ...
    async def claim(self, claim_id: bytes) -> Claim | None: ...
    async def channels_of(self, account: bytes) -> list[Channel]:
        """Channels where `account` is payer or payee, in the order they were opened."""
        ...

    async def claims_of(self, account: bytes) -> list[Claim]:
        """Claims where `account` is claimant or respondent, in the order they were filed.

        Each with its request's body (up to the ledger's ``max_claim_body``, 1 MiB on the
        SQLite dev ledger), all at once: anyone can file claims against a provider, so a
        node goes through its claims by id instead (`claim_ids_of`, `claims_one_by_one`)."""
        ...

    async def claim_ids_of(self, account: bytes, role: ClaimRole | None = None) -> list[bytes]:
        """Ids of the claims where `account` is the `role` ("claimant" or "respondent"; None:
        either), in the order they were filed.

        Raises:
            LocalProtocolError: `role` is neither.
        """
        ...

    async def claim_filings_of(self, account: bytes, role: ClaimRole | None = None) -> list[Event]:
        """The ClaimFiled events of the claims where `account` is the `role` (None:
        either), in filing order: each claim's request fields (``n``, ``paid``,
        ``price``, ``deadline``; its id is the request's hash), channel, parties, bond and
        ``window_ends`` as filed, without its request's body, in one read. ``seq`` may be
        0 (a backend that keeps claims, not their events).

        Raises:
            LocalProtocolError: `role` is neither.
        """
        ...

    async def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        """Events with ``seq > after``, ascending, at most `limit`; seq starts at 1, no gaps."""
        ...

    async def events_for(
        self, account: bytes, after: int = 0, limit: int = 1000
    ) -> tuple[list[Event], int]:
        """Events after `after` that name `account` in a field, and the cursor to resume
        from (the last seq examined): what one watcher needs, without every event."""
        ...

    async def totals(self) -> Totals: ...

    # --- operations
    async def mint(self, key: Keypair, account: bytes, amount: int) -> None: ...
    async def transfer(self, key: Keypair, to: bytes, amount: int) -> None: ...
    async def withdraw(self, key: Keypair, amount: int) -> None: ...
    async def open_channel(
        self, key: Keypair, payee: bytes, deposit: int, challenge_ms: int
    ) -> bytes: ...
    async def top_up(self, key: Keypair, channel_id: bytes, amount: int) -> None: ...
    async def redeem(self, key: Keypair, voucher: Request, amount: int | None = None) -> int: ...
    async def payee_close(
        self,
        key: Keypair,
        channel_id: bytes,
        voucher: Request | None = None,
        amount: int | None = None,
    ) -> int:
        """Payee closes at once, redeeming `voucher` first if given; returns its payout."""
        ...

    async def start_close(self, key: Keypair, channel_id: bytes) -> None: ...
    async def finalize_close(self, key: Keypair, channel_id: bytes) -> None: ...
    async def stake(
        self, key: Keypair, amount: int, penalty: int, claim_window_ms: int
    ) -> None: ...
    async def request_unstake(self, key: Keypair) -> None: ...
    async def withdraw_stake(self, key: Keypair) -> None: ...
    async def file_claim(
        self, key: Keypair, request: Request, refusal: Response | None = None
    ) -> bytes: ...
    async def answer_claim(
        self,
        key: Keypair,
        claim_id: bytes,
        response: Response | None = None,
        *,
        evidence: Request | None = None,
    ) -> None:
        """Answer a claim with a signed response, or with `evidence` (a payer-signed request
        in tiling conflict with the claimed one): exactly one (specs/settlement.md 5)."""

    async def resolve_claim(self, key: Keypair, claim_id: bytes) -> None: ...
    async def aclose(self) -> None: ...


def names_account(event: Event, account: bytes) -> bool:
    """True if any field of `event` is `account` (payer, payee, claimant, to, ...)."""
    return any(value == account for value in event.fields.values())


class OpLedger(abc.ABC):
    """Shared plumbing: public operations build an op and hand it to `_submit`.

    A backend implements `_submit` (apply one op atomically, return its `Receipt`), the
    reads, `now`, `ledger_id`, `params` and `aclose`.
    """

    def __init__(self) -> None:
        self._tx_count = 0

    @property
    def tx_count(self) -> int:
        """Operations this object applied successfully (refusals are not counted)."""
        return self._tx_count

    @property
    @abc.abstractmethod
    def ledger_id(self) -> bytes: ...

    @property
    @abc.abstractmethod
    def params(self) -> Params: ...

    @abc.abstractmethod
    async def now(self) -> int: ...

    @abc.abstractmethod
    async def _submit(self, op: Op, key: Signer) -> Receipt:
        """Apply `op`, authorised by `key` (the sender's key, ``key.account == op.sender``),
        atomically; raise `SettlementError` unchanged when refused."""

    # --- reads every backend provides
    @abc.abstractmethod
    async def balance(self, account: bytes) -> int: ...
    @abc.abstractmethod
    async def channel(self, channel_id: bytes) -> Channel | None: ...
    @abc.abstractmethod
    async def stake_of(self, account: bytes) -> Stake | None: ...
    @abc.abstractmethod
    async def claim(self, claim_id: bytes) -> Claim | None: ...
    @abc.abstractmethod
    async def channels_of(self, account: bytes) -> list[Channel]: ...
    @abc.abstractmethod
    async def claims_of(self, account: bytes) -> list[Claim]: ...
    @abc.abstractmethod
    async def claim_ids_of(self, account: bytes, role: ClaimRole | None = None) -> list[bytes]: ...
    @abc.abstractmethod
    async def claim_filings_of(
        self, account: bytes, role: ClaimRole | None = None
    ) -> list[Event]: ...
    @abc.abstractmethod
    async def events(self, after: int = 0, limit: int = 1000) -> list[Event]: ...

    async def events_for(
        self, account: bytes, after: int = 0, limit: int = 1000
    ) -> tuple[list[Event], int]:
        """Events after `after` naming `account`, and the last seq examined.

        This default pages through `events`; a backend may answer from an index.
        """
        found: list[Event] = []
        cursor = after
        while len(found) < limit:
            page = await self.events(after=cursor, limit=1000)
            if not page:
                break
            for event in page:
                cursor = event.seq
                if names_account(event, account):
                    found.append(event)
                    if len(found) >= limit:
                        break
        return found, cursor

    @abc.abstractmethod
    async def totals(self) -> Totals: ...
    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- operations
    async def _do(self, key: Signer, op: Op) -> Any:
        receipt = await self._submit(op, key)
        self._tx_count += 1
        return receipt.result

    async def mint(self, key: LedgerKey, account: bytes, amount: int) -> None:
        """Create `amount` yocto on `account` (dev ledgers only)."""
        await self._do(key, Mint(sender=key.account, account=account, amount=amount))

    async def transfer(self, key: LedgerKey, to: bytes, amount: int) -> None:
        await self._do(key, Transfer(sender=key.account, to=to, amount=amount))

    async def withdraw(self, key: LedgerKey, amount: int) -> None:
        """Take `amount` out of the ledger (supply decreases)."""
        await self._do(key, Withdraw(sender=key.account, amount=amount))

    async def open_channel(
        self, key: LedgerKey, payee: bytes, deposit: int, challenge_ms: int
    ) -> bytes:
        """Open a channel from ``key.account`` to `payee`; returns the channel id."""
        result: bytes = await self._do(
            key,
            OpenChannel(
                sender=key.account, payee=payee, deposit=deposit, challenge_ms=challenge_ms
            ),
        )
        return result

    async def top_up(self, key: LedgerKey, channel_id: bytes, amount: int) -> None:
        await self._do(key, TopUp(sender=key.account, channel=channel_id, amount=amount))

    async def redeem(self, key: LedgerKey, voucher: Request, amount: int | None = None) -> int:
        """Payee collects up to ``voucher.paid`` (or `amount`); returns what was paid now."""
        result: int = await self._do(
            key, Redeem(sender=key.account, voucher=voucher, amount=amount)
        )
        return result

    async def payee_close(
        self,
        key: LedgerKey,
        channel_id: bytes,
        voucher: Request | None = None,
        amount: int | None = None,
    ) -> int:
        """Payee closes at once, redeeming `voucher` first if given; returns its payout."""
        result: int = await self._do(
            key, PayeeClose(sender=key.account, channel=channel_id, voucher=voucher, amount=amount)
        )
        return result

    async def start_close(self, key: LedgerKey, channel_id: bytes) -> None:
        await self._do(key, StartClose(sender=key.account, channel=channel_id))

    async def finalize_close(self, key: LedgerKey, channel_id: bytes) -> None:
        await self._do(key, FinalizeClose(sender=key.account, channel=channel_id))

    async def stake(self, key: LedgerKey, amount: int, penalty: int, claim_window_ms: int) -> None:
        await self._do(
            key,
            StakeOp(
                sender=key.account,
                amount=amount,
                penalty=penalty,
                claim_window_ms=claim_window_ms,
            ),
        )

    async def request_unstake(self, key: LedgerKey) -> None:
        await self._do(key, RequestUnstake(sender=key.account))

    async def withdraw_stake(self, key: LedgerKey) -> None:
        await self._do(key, WithdrawStake(sender=key.account))

    async def file_claim(
        self, key: LedgerKey, request: Request, refusal: Response | None = None
    ) -> bytes:
        """File a claim with a signed request (and its body); returns the claim id.

        With `refusal` (the payee's signed refusal of `request`), a refund settled at once
        as REFUSED (specs/settlement.md 5, refund with the payee's refusal).
        """
        op = FileClaim(sender=key.account, request=request, refusal=refusal)
        result: bytes = await self._do(key, op)
        return result

    async def answer_claim(
        self,
        key: LedgerKey,
        claim_id: bytes,
        response: Response | None = None,
        *,
        evidence: Request | None = None,
    ) -> None:
        await self._do(
            key,
            AnswerClaim(sender=key.account, claim=claim_id, response=response, evidence=evidence),
        )

    async def resolve_claim(self, key: LedgerKey, claim_id: bytes) -> None:
        await self._do(key, ResolveClaim(sender=key.account, claim=claim_id))


_Entity = TypeVar("_Entity", Channel, Stake, Claim)


def copy_entity(entity: _Entity) -> _Entity:
    """A shallow copy of a Channel/Stake/Claim (all their fields are immutable values)."""
    return dataclasses.replace(entity)


class LocalLedger(OpLedger):
    """An OpLedger that keeps its own `Params` and clock (the memory and SQLite backends).

    Ledger time is ``max(clock(), time of the last operation)``: it never goes back.
    """

    def __init__(self, params: Params, clock: Callable[[], int]) -> None:
        super().__init__()
        self._params = params
        self._clock = clock
        self._last_at = 0

    @property
    def ledger_id(self) -> bytes:
        return self._params.ledger_id

    @property
    def params(self) -> Params:
        return self._params

    def _time(self) -> int:
        self._last_at = max(self._last_at, int(self._clock()))
        return self._last_at

    async def now(self) -> int:
        """The clock in ms (never earlier than the last operation this object applied)."""
        await trio.lowlevel.checkpoint()
        return self._time()

    # --- signed transactions (specs/settlement.md section 11)

    @abc.abstractmethod
    async def next_nonce(self, account: bytes) -> int:
        """The nonce `account`'s next transaction must carry (1 for its first)."""

    @abc.abstractmethod
    async def _submit_signed(self, sender: bytes, make: Callable[[int], Transaction]) -> Receipt:
        """Inside one atomic section: read `sender`'s next nonce, ``tx = make(nonce)``,
        `check_transaction`, apply its op, store the nonce; or refuse and change nothing."""

    async def submit(self, tx: Transaction) -> Receipt:
        """Apply a transaction signed elsewhere (`p2pay.core.tx.sign_transaction`) and
        return its result and stored events.

        Raises:
            SettlementError: INVALID_ARGUMENT, WRONG_LEDGER, INVALID_SIGNATURE, BAD_NONCE
                (specs/settlement.md 11.3) or the op's own refusal; nothing changed.
        """
        sender = getattr(getattr(tx, "op", None), "sender", None)
        if not isinstance(tx, Transaction) or not _is_account(sender):
            check_transaction(tx, self._params, FIRST_NONCE)  # raises INVALID_ARGUMENT
            raise SettlementError("not a signed Transaction", code=ErrorCode.INVALID_ARGUMENT)
        assert isinstance(sender, bytes)
        receipt = await self._submit_signed(sender, lambda _nonce: tx)
        self._tx_count += 1
        return receipt

    async def _submit(self, op: Op, key: Signer) -> Receipt:
        """A named operation: the backend signs `op` with `key` at the sender's next nonce
        inside its atomic section, then checks it like any transaction."""
        if not _is_account(op.sender):
            raise SettlementError("sender must be 32 bytes", code=ErrorCode.INVALID_ARGUMENT)
        ledger_id, params = self._params.ledger_id, self._params

        def make(nonce: int) -> Transaction:
            return sign_transaction(key, ledger_id, nonce, op, params)

        return await self._submit_signed(op.sender, make)


def _is_account(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 32
