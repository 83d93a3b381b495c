"""EVM binding details: artifacts vs source, EIP-712 signatures, high-s and zero-address
refusals (off chain and on chain), the on-chain request hash, identity bindings."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from p2pay.core.errors import ErrorCode, LocalProtocolError, SettlementError
from p2pay.core.evmsig import (
    EvmKey,
    account_of_address,
    address_of_account,
    binding_proof,
    check_binding,
    evm_ledger_id,
    parse_evm_ledger_id,
    recover,
)
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.signing import Scheme, account_for, scheme_for
from p2pay.testing import ALICE, BOB, TOKEN, ManualClock

ROOT = Path(__file__).resolve().parents[2]
LEDGER = evm_ledger_id(31337, bytes.fromhex("7a6950405f6c2a4b7655015f930ed045ef13b272"))
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
A, B = EvmKey.derive(ALICE), EvmKey.derive(BOB)


def _request(key: Any = A, ledger: bytes = LEDGER, paid: int = 10**30) -> Request:
    return Request.create(
        key,
        ledger=ledger,
        channel=b"\1" * 32,
        n=3,
        paid=paid,
        price=5,
        service="echo",
        body=b"ping",
        deadline=12_345,
    )


def _high_s(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sig[64]])  # 27 <-> 28


# --- artifacts ------------------------------------------------------------------------


def test_committed_artifacts_match_the_source() -> None:
    vyper = pytest.importorskip("vyper", reason="vyper not installed: pip install -e '.[dev]'")
    spec = importlib.util.spec_from_file_location(
        "p2pay_contracts_build", ROOT / "contracts/build.py"
    )
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    if vyper.__version__.split("+")[0] != build.VYPER_VERSION:
        pytest.skip(
            f"vyper {build.VYPER_VERSION} needed for the drift check, {vyper.__version__} installed"
        )
    for name in build.CONTRACTS:
        committed = (ROOT / "p2pay/ledger/contracts" / f"{name}.json").read_text(encoding="utf-8")
        assert committed == build.render(build.compile_contract(name)), (
            f"p2pay/ledger/contracts/{name}.json is stale: run python contracts/build.py"
        )


# --- the scheme, off chain --------------------------------------------------------------


def test_scheme_follows_the_ledger() -> None:
    assert scheme_for(LEDGER) is Scheme.EIP712
    assert scheme_for(b"p2pay:memory:" + bytes(16)) is Scheme.ED25519
    assert scheme_for(LEDGER[:-1]) is Scheme.ED25519  # not a well-formed EVM id
    assert parse_evm_ledger_id(LEDGER) == (31337, LEDGER[-20:])
    assert account_for(ALICE, LEDGER) == A.account
    assert account_for(ALICE, b"p2pay:memory:x") == ALICE.account
    with pytest.raises(LocalProtocolError):
        evm_ledger_id(2**64, bytes(20))


def test_eip712_digests_match_eth_account() -> None:
    pytest.importorskip("eth_account", reason="eth-account not installed")
    from eth_account.messages import _hash_eip191_message, encode_typed_data

    req = _request()
    domain = {
        "name": "p2pay",
        "version": "1",
        "chainId": 31337,
        "verifyingContract": "0x" + LEDGER[-20:].hex(),
    }
    dom_t = [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ]
    req_t = [
        {"name": n, "type": t}
        for n, t in (
            ("ledger", "bytes"),
            ("channel", "bytes32"),
            ("n", "uint64"),
            ("paid", "uint256"),
            ("price", "uint256"),
            ("service", "string"),
            ("bodyHash", "bytes32"),
            ("deadline", "uint64"),
        )
    ]
    msg = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": dom_t, "Request": req_t},
            "primaryType": "Request",
            "domain": domain,
            "message": {
                "ledger": req.ledger,
                "channel": req.channel,
                "n": req.n,
                "paid": req.paid,
                "price": req.price,
                "service": req.service,
                "bodyHash": req.body_hash,
                "deadline": req.deadline,
            },
        }
    )
    assert _hash_eip191_message(msg) == req.eip712_digest()
    resp = Response.create(B, request=req, status="OK", price=5, spent=5, body=b"pong")
    resp_t = [
        {"name": n, "type": t}
        for n, t in (
            ("ledger", "bytes"),
            ("channel", "bytes32"),
            ("n", "uint64"),
            ("requestHash", "bytes32"),
            ("status", "string"),
            ("price", "uint256"),
            ("spent", "uint256"),
            ("bodyHash", "bytes32"),
        )
    ]
    msg = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": dom_t, "Response": resp_t},
            "primaryType": "Response",
            "domain": domain,
            "message": {
                "ledger": resp.ledger,
                "channel": resp.channel,
                "n": resp.n,
                "requestHash": resp.request_hash,
                "status": resp.status,
                "price": resp.price,
                "spent": resp.spent,
                "bodyHash": resp.body_hash,
            },
        }
    )
    assert _hash_eip191_message(msg) == resp.eip712_digest()
    # and eth-account's own signature of the digest is the one we make (RFC 6979 both)
    from eth_account import Account

    signed = Account.unsafe_sign_hash(req.eip712_digest(), A.secret)
    assert signed.signature == req.signature
    recovered = Account._recover_hash(req.eip712_digest(), signature=req.signature)
    assert recovered.lower() == "0x" + A.address.hex()


def test_sign_and_verify_on_an_evm_ledger() -> None:
    req = _request()
    assert len(req.signature) == 65 and req.signature[64] in (27, 28)
    assert req.verify(A.account) and req.verify(A.address)
    assert not req.verify(B.account) and not req.verify(ALICE.public)
    assert _request(ALICE).signature == req.signature  # a Keypair signs with its derived key
    # the frame keeps the 65-byte signature; the hash is still BLAKE2b of the CBOR bytes
    back = decode_frame(req.to_frame())
    assert isinstance(back, Request) and back == req and back.hash == req.hash
    # high s (the malleable twin of a valid signature) and bad v are refused
    twin = _high_s(req.signature)
    assert recover(req.eip712_digest() or b"", twin) is None
    assert not req.with_signature(twin).verify(A.account)
    assert not req.with_signature(req.signature[:64] + b"\x01").verify(A.account)
    assert not req.with_signature(bytes(65)).verify(A.account)
    # the zero address is no account
    assert address_of_account(bytes(32)) is None
    assert not req.verify(bytes(32))
    with pytest.raises(LocalProtocolError):
        account_of_address(bytes(20))
    # sizes: 64 or 65 on an EVM ledger, exactly 64 elsewhere (unchanged)
    with pytest.raises(LocalProtocolError):
        req.with_signature(bytes(66))
    ed = Request.create(
        ALICE,
        ledger=b"p2pay:memory:x",
        channel=b"\1" * 32,
        n=1,
        paid=1,
        price=1,
        service="echo",
        body=b"",
        deadline=1,
    )
    assert len(ed.signature) == 64 and ed.verify(ALICE.public)
    with pytest.raises(LocalProtocolError):
        ed.with_signature(bytes(65))


def test_binding_proof() -> None:
    """The settlement key's consent to being bound to a PeerID key (hello `account_proof`)."""
    proof = binding_proof(A, LEDGER, ALICE.public)
    assert len(proof) == 65 and check_binding(A.account, LEDGER, ALICE.public, proof)
    assert check_binding(A.address, LEDGER, ALICE.public, proof)  # a bare address works too
    assert not check_binding(A.account, LEDGER, BOB.public, proof)  # another PeerID
    assert not check_binding(B.account, LEDGER, ALICE.public, proof)  # another account
    other = evm_ledger_id(1, LEDGER[-20:])
    assert not check_binding(A.account, other, ALICE.public, proof)  # another ledger
    assert not check_binding(A.account, LEDGER, ALICE.public, proof[:64])
    assert not check_binding(bytes(32), LEDGER, ALICE.public, proof)
    assert not check_binding(A.account, b"p2pay:memory:x", ALICE.public, proof)
    assert not check_binding(A.account, LEDGER, ALICE.public[:31], proof)
    high_s = proof[:32] + (N - int.from_bytes(proof[32:64], "big")).to_bytes(32, "big")
    assert not check_binding(A.account, LEDGER, ALICE.public, high_s + bytes([proof[64] ^ 1]))
    with pytest.raises(LocalProtocolError):
        binding_proof(A, b"p2pay:memory:x", ALICE.public)
    with pytest.raises(LocalProtocolError):
        binding_proof(A, LEDGER, b"short")


# --- the contract ------------------------------------------------------------------------


@pytest.mark.trio
async def test_contract_refuses_high_s_zero_address_and_hashes_bignums() -> None:
    pytest.importorskip("boa", reason="titanoboa not installed: pip install -e '.[dev]'")
    from p2pay.ledger.evm import BoaChain, EvmLedger

    clock = ManualClock()
    L = await EvmLedger.deploy(
        BoaChain(), EvmKey.from_secret(bytes([9]) * 32), dev=True, time_unit_us=1, clock=clock
    )

    async def code_of(coro: Any) -> ErrorCode:
        with pytest.raises(SettlementError) as info:
            await coro
        return info.value.code

    assert await code_of(L.mint(A, bytes(32), 1)) is ErrorCode.INVALID_ARGUMENT  # zero address
    assert await code_of(L.mint(A, ALICE.public, 1)) is ErrorCode.INVALID_ARGUMENT  # not an address
    await L.mint(A, A.account, 10 * TOKEN)
    await L.mint(B, B.account, 10 * TOKEN)
    await L.stake(B, 5 * TOKEN, TOKEN, 10_000)
    cid = await L.open_channel(A, B.account, TOKEN, 5_000)
    v = Request.create(
        A,
        ledger=L.ledger_id,
        channel=cid,
        n=1,
        paid=100,
        price=1,
        service="echo",
        body=b"x",
        deadline=clock.ms + 5,
    )
    assert (
        await code_of(L.redeem(B, v.with_signature(_high_s(v.signature))))
        is ErrorCode.INVALID_SIGNATURE
    )
    assert await L.redeem(B, v) == 100
    # the claim id is Request.hash, computed on chain from CBOR (bignums, a long service)
    big = Request.create(
        A,
        ledger=L.ledger_id,
        channel=cid,
        n=2**40,
        paid=TOKEN,  # above 2**64: a CBOR bignum, and within the deposit (FileClaim)
        price=2**70,
        service="s" * 64,
        body=b"b" * 300,
        deadline=clock.ms + 5,
    )
    clock.advance(10)
    assert await L.file_claim(A, big) == big.hash
    c = await L.claim(big.hash)
    assert c is not None and decode_frame(c.request_frame) == big
    await L.aclose()
