"""`p2pay call` prints the payee's receipt as its signature: one its node left out of the
receipt sample (protocol.md 14.4) is checked before it is printed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from p2pay.cli.main import checked_receipt
from p2pay.core.errors import ErrorCode, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response
from p2pay.node import CallResult

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)
CHANNEL = bytes(32)


def result(signer: Keypair, *, checked: bool) -> CallResult:
    request = Request.create(
        ALICE,
        ledger=b"test-ledger",
        channel=CHANNEL,
        n=1,
        paid=10,
        price=10,
        service="echo",
        body=b"hi",
        deadline=1,
    )
    receipt = Response.create(signer, request=request, status="OK", price=10, spent=10, body=b"hi")
    return CallResult(
        body=b"hi",
        price=10,
        n=1,
        channel=CHANNEL,
        spent=10,
        receipt=receipt,
        receipt_checked=checked,
    )


def node() -> Any:
    return SimpleNamespace(payer_channels={CHANNEL: SimpleNamespace(payee=BOB.public)})


def test_an_unchecked_good_receipt_is_checked_before_it_is_printed() -> None:
    assert checked_receipt(node(), result(BOB, checked=False)).receipt_checked is True


def test_an_unchecked_forged_receipt_is_an_invalid_signature_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        checked_receipt(node(), result(MALLORY, checked=False))
    assert info.value.code is ErrorCode.INVALID_SIGNATURE
    assert "charged 10 yocto" in info.value.message


def test_a_checked_receipt_is_not_checked_again() -> None:
    done = result(MALLORY, checked=True)  # as the node says: not looked at again
    assert checked_receipt(node(), done) is done
