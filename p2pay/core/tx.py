"""Signed transactions of the memory and SQLite ledgers (specs/settlement.md section 11).

Theory of operation
-------------------
A `Transaction` wraps one settlement operation with the ledger it is for, its sender's
sequence number (`nonce`) and the sender's signature over the canonical CBOR of all of it
(`signing_bytes`). A ledger applies it only if `check_transaction` passes (right ledger,
valid signature of ``op.sender``, nonce exactly one above the sender's last) and then
stores the nonce in the same atomic write as the op's effects: so nobody acts for an
account without its key, and a transaction applies once, in its sender's order.

Everything here is computation: the backends hold the nonces and call these functions
inside their write transaction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from p2pay.core import codec, evmsig
from p2pay.core.errors import ErrorCode, LocalProtocolError, SettlementError
from p2pay.core.identity import verify
from p2pay.core.messages import KIND_REQUEST, KIND_RESPONSE, Request, Response
from p2pay.core.settlement import (
    AnswerClaim,
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
    StakeOp,
    StartClose,
    State,
    TopUp,
    Transfer,
    Withdraw,
    WithdrawStake,
    apply,
)
from p2pay.core.signing import Scheme, Signer, scheme_for

__all__ = [
    "FIRST_NONCE",
    "MAX_NONCE",
    "TX_DOMAIN",
    "Transaction",
    "check_transaction",
    "op_map",
    "sign_transaction",
    "signing_bytes",
]

TX_DOMAIN = "p2pay/v1/tx"
FIRST_NONCE = 1  # an account's first transaction; the ledger stores 0 before it
MAX_NONCE = (1 << 63) - 1  # fits a SQLite INTEGER

_OP_TYPES: tuple[type, ...] = (
    Mint,
    Transfer,
    Withdraw,
    OpenChannel,
    TopUp,
    Redeem,
    PayeeClose,
    StartClose,
    FinalizeClose,
    StakeOp,
    RequestUnstake,
    WithdrawStake,
    FileClaim,
    AnswerClaim,
    ResolveClaim,
)


def _fail(code: ErrorCode, message: str) -> SettlementError:
    return SettlementError(message, code=code)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transaction:
    """One operation signed by its sender for one ledger, with the sender's nonce."""

    ledger: bytes
    nonce: int
    op: Op
    signature: bytes

    @property
    def sender(self) -> bytes:
        return self.op.sender


def _value(value: object) -> object:
    if isinstance(value, Request):
        return [KIND_REQUEST, value.signing_bytes, value.signature, value.body]
    if isinstance(value, Response):
        return [KIND_RESPONSE, value.signing_bytes, value.signature, value.body]
    return value


def op_map(op: Op) -> dict[str, object]:
    """The ``op`` entry of the signed map: ``kind`` and every field but ``sender``.

    Raises:
        LocalProtocolError: `op` is not an operation.
    """
    if type(op) not in _OP_TYPES:
        raise LocalProtocolError(f"not a settlement operation: {type(op).__name__}")
    fields: dict[str, object] = {"kind": type(op).__name__}
    for f in dataclasses.fields(op):
        if f.name != "sender":
            fields[f.name] = _value(getattr(op, f.name))
    return fields


def _check_shape(ledger: object, nonce: object, op: object) -> None:
    if type(op) not in _OP_TYPES:
        raise _fail(ErrorCode.INVALID_ARGUMENT, f"not a settlement operation: {type(op).__name__}")
    sender = getattr(op, "sender", None)
    if not isinstance(sender, bytes) or len(sender) != 32:
        raise _fail(ErrorCode.INVALID_ARGUMENT, "sender must be 32 bytes")
    if not isinstance(ledger, bytes) or not ledger:
        raise _fail(ErrorCode.INVALID_ARGUMENT, "transaction ledger must be bytes")
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 1 <= nonce <= MAX_NONCE:
        raise _fail(ErrorCode.INVALID_ARGUMENT, f"nonce must be an int in [1, {MAX_NONCE}]")


def _argument_refusal(op: Op, params: Params) -> SettlementError:
    """The refusal of an op CBOR cannot hold: the argument code `apply` gives, on a
    throwaway empty state, else INVALID_ARGUMENT (specs/settlement.md 11.1)."""
    try:
        apply(State(params=params), op, 0)
    except SettlementError as exc:
        if exc.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.INVALID_AMOUNT):
            return exc
    return _fail(ErrorCode.INVALID_ARGUMENT, "operation has a value that cannot be signed")


def signing_bytes(ledger: bytes, nonce: int, op: Op, params: Params | None = None) -> bytes:
    """The bytes a transaction's signature covers (specs/settlement.md 11.1).

    Args:
        ledger: the ledger id.
        nonce: the sender's nonce for this transaction.
        op: the operation (its ``sender`` is the signer).
        params: the ledger's params, to give an unencodable op its argument code.

    Raises:
        SettlementError: INVALID_ARGUMENT (or INVALID_AMOUNT) for a malformed op, ledger or
            nonce.
    """
    _check_shape(ledger, nonce, op)
    try:
        return codec.encode(
            {
                "domain": TX_DOMAIN,
                "ledger": ledger,
                "sender": op.sender,
                "nonce": nonce,
                "op": op_map(op),
            }
        )
    except LocalProtocolError:
        raise _argument_refusal(op, params or Params(ledger_id=ledger)) from None


def _evm_digest(data: bytes) -> bytes:
    return evmsig.keccak256(data)


def sign_transaction(
    key: Signer, ledger: bytes, nonce: int, op: Op, params: Params | None = None
) -> Transaction:
    """Sign `op` as transaction number `nonce` of its sender on `ledger`.

    Args:
        key: the sender's key (``key.account`` should be ``op.sender``; the ledger checks).
        ledger: the ledger id.
        nonce: the sender's next nonce (`FIRST_NONCE` for its first transaction).
        op: the operation.
        params: the ledger's params (only to give a malformed op its refusal code).

    Raises:
        SettlementError: a malformed op (see `signing_bytes`).
        LocalProtocolError: `key` cannot sign for an EVM ledger id.
    """
    data = signing_bytes(ledger, nonce, op, params)
    if scheme_for(ledger) is Scheme.EIP712:
        sign_digest = getattr(key, "sign_digest", None)
        if sign_digest is None:
            raise LocalProtocolError("a transaction on an EVM ledger id needs an EvmKey")
        signature: bytes = sign_digest(_evm_digest(data))
    else:
        signature = key.sign(data)
    return Transaction(ledger=ledger, nonce=nonce, op=op, signature=signature)


def check_transaction(tx: object, params: Params, next_nonce: int) -> Op:
    """Check a transaction before its op is applied (specs/settlement.md 11.3).

    Args:
        tx: what was submitted.
        params: the ledger's params (its id is ``params.ledger_id``).
        next_nonce: ``nonces[sender] + 1`` as stored by the ledger.

    Returns:
        The op to apply.

    Raises:
        SettlementError: INVALID_ARGUMENT (or the op's argument code), WRONG_LEDGER,
            INVALID_SIGNATURE or BAD_NONCE; the ledger then changes nothing.
    """
    if not isinstance(tx, Transaction):
        raise _fail(ErrorCode.INVALID_ARGUMENT, "not a signed Transaction")
    data = signing_bytes(tx.ledger, tx.nonce, tx.op, params)
    if tx.ledger != params.ledger_id:
        raise _fail(ErrorCode.WRONG_LEDGER, "transaction is for another ledger")
    if not _signed_by(tx.op.sender, data, tx.signature, params.ledger_id):
        raise _fail(ErrorCode.INVALID_SIGNATURE, "transaction not signed by its sender")
    if tx.nonce != next_nonce:
        raise _fail(
            ErrorCode.BAD_NONCE,
            f"nonce {tx.nonce} is not the sender's next nonce {next_nonce} "
            "(replayed, reordered or skipped transaction)",
        )
    return tx.op


def _signed_by(sender: bytes, data: bytes, signature: Any, ledger: bytes) -> bool:
    if not isinstance(signature, bytes):
        return False
    if scheme_for(ledger) is Scheme.EIP712:
        address = evmsig.address_of_account(sender)
        return address is not None and evmsig.recover(_evm_digest(data), signature) == address
    return verify(sender, data, signature)
