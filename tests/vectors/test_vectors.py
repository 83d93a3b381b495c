"""specs/vectors: p2pay builds every valid vector byte for byte and refuses every invalid one.

Four checks (specs/vectors/README.md):

* every valid vector is rebuilt from its fields through p2pay's message classes, and its
  signing bytes, signature, hash and frame compared byte for byte; decoding the frame
  gives the same message, on the expected ledger, signed by the expected key;
* every invalid vector is decoded and checked through p2pay and refused with its code;
* every vector is checked again with plain pynacl, cbor2 and hashlib (no p2pay);
* regenerating the vectors in memory gives the committed files exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import nacl.exceptions
import nacl.signing
import pytest

from p2pay.core.errors import ErrorCode, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    KIND_REQUEST,
    KIND_RESPONSE,
    Request,
    Response,
    check_signed_by,
    decode_frame,
)

VECTORS = Path(__file__).resolve().parents[2] / "specs" / "vectors"
SEEDS = [bytes([i]) * 32 for i in (1, 2, 3, 4)]  # ALICE, BOB, CAROL, MALLORY
KEYS = {Keypair.from_seed(seed).public: Keypair.from_seed(seed) for seed in SEEDS}


def load(name: str) -> list[dict[str, Any]]:
    data = json.loads((VECTORS / name).read_text("utf-8"))
    assert isinstance(data, list)
    return data


REQUESTS = load("requests.json")
RESPONSES = load("responses.json")
ALL = [("requests.json", KIND_REQUEST, v) for v in REQUESTS] + [
    ("responses.json", KIND_RESPONSE, v) for v in RESPONSES
]


def ids(entries: list[Any]) -> list[str]:
    return [f"{e[0] if isinstance(e, tuple) else ''}:{i}" for i, e in enumerate(entries)]


def x(text: str) -> bytes:
    return bytes.fromhex(text)


def valid(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in entries if v["valid"]]


def invalid(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in entries if not v["valid"]]


def describe(entries: list[dict[str, Any]]) -> list[str]:
    return [v["description"][:60] for v in entries]


# ----------------------------------------------------------------------------- via p2pay


@pytest.mark.parametrize("v", valid(REQUESTS), ids=describe(valid(REQUESTS)))
def test_valid_request_rebuilt_byte_for_byte(v: dict[str, Any]) -> None:
    f = v["fields"]
    key = KEYS[x(v["public_key_hex"])]
    request = Request.create(
        key,
        ledger=x(f["ledger"]),
        channel=x(f["channel"]),
        n=int(f["n"]),
        paid=int(f["paid"]),
        price=int(f["price"]),
        service=f["service"],
        body=x(v["body_hex"]),
        deadline=int(f["deadline"]),
    )
    assert request.signing_bytes.hex() == v["signing_bytes_hex"]
    assert request.signature.hex() == v["signature_hex"]
    assert request.hash.hex() == v["hash_hex"]
    assert request.body_hash.hex() == f["body_hash"]
    assert request.to_frame().hex() == v["frame_hex"]

    decoded = decode_frame(x(v["frame_hex"]))
    assert isinstance(decoded, Request)
    assert decoded == request
    assert decoded.body == request.body
    assert decoded.body_matches()
    check_signed_by(decoded, x(v["public_key_hex"]), x(v["expected_ledger_hex"]))


@pytest.mark.parametrize("v", valid(RESPONSES), ids=describe(valid(RESPONSES)))
def test_valid_response_rebuilt_byte_for_byte(v: dict[str, Any]) -> None:
    f = v["fields"]
    answered = REQUESTS[v["request_index"]]
    request = decode_frame(x(answered["frame_hex"]))
    assert isinstance(request, Request)
    assert request.hash.hex() == f["request"]

    response = Response.create(
        KEYS[x(v["public_key_hex"])],
        request=request,
        status=f["status"],
        price=int(f["price"]),
        spent=int(f["spent"]),
        body=x(v["body_hex"]),
    )
    assert response.signing_bytes.hex() == v["signing_bytes_hex"]
    assert response.signature.hex() == v["signature_hex"]
    assert response.hash.hex() == v["hash_hex"]
    assert response.to_frame().hex() == v["frame_hex"]

    decoded = decode_frame(x(v["frame_hex"]))
    assert isinstance(decoded, Response)
    assert decoded == response
    assert decoded.body == response.body
    assert decoded.body_matches()
    check_signed_by(decoded, x(v["public_key_hex"]), x(v["expected_ledger_hex"]))
    if not decoded.ok:
        message, details = decoded.refusal_info()
        assert message
        if decoded.status == ErrorCode.PAYMENT_REQUIRED:
            assert isinstance(details["price"], int)


@pytest.mark.parametrize(
    ("file", "kind", "v"),
    [e for e in ALL if not e[2]["valid"]],
    ids=[f"{e[0]}:{e[2]['description'][:60]}" for e in ALL if not e[2]["valid"]],
)
def test_invalid_vector_refused_with_its_code(file: str, kind: int, v: dict[str, Any]) -> None:
    expected = ErrorCode(v["error"])
    with pytest.raises(RemoteProtocolError) as info:
        message = decode_frame(x(v["frame_hex"]))
        # a frame that decodes is of the file's kind; the ledger and signature decide
        assert isinstance(message, Request if kind == KIND_REQUEST else Response)
        check_signed_by(message, x(v["public_key_hex"]), x(v["expected_ledger_hex"]))
    assert info.value.code is expected, info.value.message


@pytest.mark.parametrize(
    ("file", "kind", "v"),
    [e for e in ALL if not e[2]["valid"] and e[2]["error"] == "MALFORMED"],
    ids=[
        f"{e[0]}:{e[2]['description'][:60]}"
        for e in ALL
        if not e[2]["valid"] and e[2]["error"] == "MALFORMED"
    ],
)
def test_malformed_signed_bytes_refused_by_from_signed(
    file: str, kind: int, v: dict[str, Any]
) -> None:
    """The check lives in the signed-bytes parser too, not only in the frame parser."""
    signed, signature, body = x(v["signing_bytes_hex"]), x(v["signature_hex"]), x(v["body_hex"])
    frame_only = v["frame_hex"] != cbor2.dumps([kind, signed, signature, body]).hex()
    cls = Request if kind == KIND_REQUEST else Response
    if frame_only:  # the defect is in the frame around canonical signed bytes
        cls.from_signed(signed, signature, body)
        return
    with pytest.raises(RemoteProtocolError) as info:
        cls.from_signed(signed, signature, body)
    assert info.value.code is ErrorCode.MALFORMED


# ----------------------------------------------------------------------------- independent


def as_json(value: Any) -> Any:
    """cbor2's decoded value in the vectors' JSON conventions."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    return value


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def ed25519_ok(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


@pytest.mark.parametrize(("file", "kind", "v"), ALL, ids=ids(ALL))
def test_vector_checks_out_with_plain_pynacl_and_cbor2(
    file: str, kind: int, v: dict[str, Any]
) -> None:
    """No p2pay here: what another implementation would do with the files alone."""
    public = bytes.fromhex(v["public_key_hex"])
    signed = bytes.fromhex(v["signing_bytes_hex"])
    signature = bytes.fromhex(v["signature_hex"])
    body = bytes.fromhex(v["body_hex"])
    assert len(public) == 32
    assert 1 <= len(bytes.fromhex(v["expected_ledger_hex"])) <= 64
    assert blake(signed) == v["hash_hex"]
    assert as_json(cbor2.loads(signed)) == v["fields"]
    assert cbor2.loads(bytes.fromhex(v["frame_hex"])) == [kind, signed, signature, body]

    if v["valid"]:
        assert "error" not in v
        assert len(signature) == 64
        assert ed25519_ok(public, signed, signature)
        fields = cbor2.loads(signed)
        assert fields["domain"] == ("p2pay/v1/request" if kind == 1 else "p2pay/v1/response")
        assert fields["ledger"].hex() == v["expected_ledger_hex"]
        assert blake(body) == v["fields"]["body_hash"]
        # canonical: re-encoding gives the same bytes (text keys are short, so cbor2's
        # length-first key order equals RFC 8949's bytewise order)
        assert cbor2.dumps(fields, canonical=True) == signed
        assert cbor2.dumps([kind, signed, signature, body], canonical=True).hex() == v["frame_hex"]
    else:
        # exactly one defect: the signature is bad only in the INVALID_SIGNATURE vectors
        # (and in the one whose signature has the wrong length)
        expect_ok = v["error"] != "INVALID_SIGNATURE" and len(signature) == 64
        assert ed25519_ok(public, signed, signature) is expect_ok
        if v["error"] == "WRONG_LEDGER":
            assert v["fields"]["ledger"] != v["expected_ledger_hex"]


@pytest.mark.parametrize("v", valid(RESPONSES), ids=describe(valid(RESPONSES)))
def test_valid_response_answers_its_request_independently(v: dict[str, Any]) -> None:
    request = REQUESTS[v["request_index"]]
    f, rf = v["fields"], request["fields"]
    assert f["request"] == blake(bytes.fromhex(request["signing_bytes_hex"]))
    assert (f["ledger"], f["channel"], f["n"]) == (rf["ledger"], rf["channel"], rf["n"])
    assert int(f["price"]) <= int(f["spent"])
    assert f["status"] == "OK" or int(f["price"]) == 0
    if f["status"] != "OK":
        refusal = cbor2.loads(bytes.fromhex(v["body_hex"]))
        assert set(refusal) == {"message", "details"}


# ----------------------------------------------------------------------------- coverage


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("p2pay_vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_vectors_equal_a_fresh_rebuild() -> None:
    generator = _generator()
    requests, responses = generator.build()
    assert generator.render(requests) == (VECTORS / "requests.json").read_text("utf-8")
    assert generator.render(responses) == (VECTORS / "responses.json").read_text("utf-8")


def test_vectors_cover_what_the_spec_promises() -> None:
    ok = [cbor2.loads(x(v["signing_bytes_hex"])) for v in valid(REQUESTS)]
    assert any(r["n"] == 1 for r in ok)
    assert any(r["n"] == 2**64 - 1 for r in ok)
    assert any(r["paid"] > 2**64 for r in ok)
    assert any(r["paid"] == 2**128 - 1 for r in ok)
    assert any(r["price"] == 0 for r in ok)
    assert any(r["price"] == 2**128 - 1 for r in ok)
    assert any(len(r["service"].encode()) == 64 and not r["service"].isascii() for r in ok)
    assert any(len(r["service"]) == 64 for r in ok)
    receipts = [cbor2.loads(x(v["signing_bytes_hex"])) for v in valid(RESPONSES)]
    assert any(r["spent"] > 2**64 for r in receipts)
    assert any(r["spent"] == 2**128 - 1 for r in receipts)
    assert {"OK", "PAYMENT_REQUIRED", "HANDLER_ERROR"} <= {r["status"] for r in receipts}
    for entries in (REQUESTS, RESPONSES):
        errors = {v["error"] for v in invalid(entries)}
        assert {"INVALID_SIGNATURE", "WRONG_LEDGER", "WRONG_DOMAIN", "MALFORMED"} <= errors
        descriptions = " ".join(v["description"] for v in invalid(entries))
        for topic in ("non-canonical", "missing field", "extra field", "out of order"):
            assert topic in descriptions
    assert all(ErrorCode(v["error"]) for v in invalid(REQUESTS + RESPONSES))
