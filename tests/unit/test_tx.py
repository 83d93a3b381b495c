"""Signed ledger transactions, the pure part (p2pay/core/tx.py, specs/settlement.md 11)."""

from __future__ import annotations

import dataclasses

import pytest

from p2pay.core import codec
from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.evmsig import EvmKey, evm_ledger_id
from p2pay.core.messages import Request
from p2pay.core.settlement import Params, Redeem, Transfer, Withdraw
from p2pay.core.tx import (
    FIRST_NONCE,
    MAX_NONCE,
    TX_DOMAIN,
    Transaction,
    check_transaction,
    op_map,
    sign_transaction,
    signing_bytes,
)
from p2pay.testing import ALICE, BOB, MALLORY

LEDGER = b"p2pay:test:tx"
PARAMS = Params(ledger_id=LEDGER, dev=True)
OP = Transfer(sender=ALICE.account, to=BOB.account, amount=5)


def refused(code: ErrorCode, tx: object, next_nonce: int = FIRST_NONCE) -> None:
    with pytest.raises(SettlementError) as info:
        check_transaction(tx, PARAMS, next_nonce)
    assert info.value.code is code


def test_signing_bytes_are_the_canonical_map_of_section_11() -> None:
    data = signing_bytes(LEDGER, 7, OP)
    assert codec.decode(data) == {
        "domain": TX_DOMAIN,
        "ledger": LEDGER,
        "sender": ALICE.account,
        "nonce": 7,
        "op": {"kind": "Transfer", "to": BOB.account, "amount": 5},
    }
    assert data == codec.encode(codec.decode(data))  # canonical
    assert TX_DOMAIN == "p2pay/v1/tx"
    # every signed part changes the bytes
    assert signing_bytes(LEDGER, 8, OP) != data
    assert signing_bytes(b"p2pay:test:other", 7, OP) != data
    assert signing_bytes(LEDGER, 7, dataclasses.replace(OP, amount=6)) != data
    assert signing_bytes(LEDGER, 7, Withdraw(sender=ALICE.account, amount=5)) != data


def test_a_message_field_is_its_frame_and_none_is_null() -> None:
    voucher = Request.create(
        ALICE,
        ledger=LEDGER,
        channel=b"\1" * 32,
        n=1,
        paid=10,
        price=10,
        service="echo",
        body=b"hi",
        deadline=1_000,
    )
    fields = op_map(Redeem(sender=BOB.account, voucher=voucher))
    assert fields == {"kind": "Redeem", "voucher": codec.decode(voucher.to_frame()), "amount": None}


def test_a_valid_transaction_passes_and_returns_its_op() -> None:
    tx = sign_transaction(ALICE, LEDGER, FIRST_NONCE, OP)
    assert tx.sender == ALICE.account and len(tx.signature) == 64
    assert check_transaction(tx, PARAMS, FIRST_NONCE) is OP


def test_checks_in_order_ledger_signature_nonce() -> None:
    good = sign_transaction(ALICE, LEDGER, 3, OP)
    refused(ErrorCode.BAD_NONCE, good, 2)  # replayed or reordered
    refused(ErrorCode.BAD_NONCE, good, 4)
    forged = sign_transaction(MALLORY, LEDGER, 3, OP)  # another key for ALICE's account
    refused(ErrorCode.INVALID_SIGNATURE, forged, 3)
    refused(ErrorCode.INVALID_SIGNATURE, forged, 4)  # signature before nonce
    tampered = dataclasses.replace(good, op=dataclasses.replace(OP, amount=500))
    refused(ErrorCode.INVALID_SIGNATURE, tampered, 3)
    refused(ErrorCode.INVALID_SIGNATURE, dataclasses.replace(good, nonce=4), 4)
    elsewhere = sign_transaction(ALICE, b"p2pay:test:other", 3, OP)
    refused(ErrorCode.WRONG_LEDGER, elsewhere, 3)
    refused(ErrorCode.WRONG_LEDGER, dataclasses.replace(forged, ledger=b"x"), 2)  # ledger first


@pytest.mark.parametrize(
    "tx",
    [
        OP,  # a bare op is not a transaction
        None,
        Transaction(ledger=LEDGER, nonce=0, op=OP, signature=b""),
        Transaction(ledger=LEDGER, nonce=MAX_NONCE + 1, op=OP, signature=b""),
        Transaction(ledger=LEDGER, nonce=True, op=OP, signature=b""),
        Transaction(ledger=LEDGER, nonce=1, op="Transfer", signature=b""),  # type: ignore[arg-type]
        Transaction(
            ledger=LEDGER, nonce=1, op=dataclasses.replace(OP, sender=b"\1" * 31), signature=b""
        ),
    ],
)
def test_malformed_transactions_are_invalid_argument(tx: object) -> None:
    refused(ErrorCode.INVALID_ARGUMENT, tx)


def test_an_unencodable_op_gets_the_argument_code_apply_gives() -> None:
    with pytest.raises(SettlementError) as info:
        sign_transaction(ALICE, LEDGER, 1, dataclasses.replace(OP, amount=1.5), PARAMS)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_AMOUNT
    with pytest.raises(SettlementError) as info:
        sign_transaction(ALICE, LEDGER, 1, dataclasses.replace(OP, to=object()), PARAMS)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_on_an_evm_ledger_id_the_signature_is_secp256k1() -> None:
    ledger = evm_ledger_id(31337, b"\x42" * 20)
    params = Params(ledger_id=ledger, dev=True)
    alice, mallory = EvmKey.derive(ALICE), EvmKey.derive(MALLORY)
    op = Transfer(sender=alice.account, to=mallory.account, amount=1)
    tx = sign_transaction(alice, ledger, 1, op)
    assert len(tx.signature) == 65
    assert check_transaction(tx, params, 1) is op
    with pytest.raises(SettlementError) as info:
        check_transaction(sign_transaction(mallory, ledger, 1, op), params, 1)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE
