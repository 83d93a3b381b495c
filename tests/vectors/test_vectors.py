"""specs/vectors: p2pay builds every valid vector byte for byte and refuses every invalid one.

The checks (specs/vectors/README.md):

* every valid request, response and hello is rebuilt from its fields through p2pay's
  message classes, and its signing bytes, signature, hash and frame compared byte for byte;
  decoding the frame gives the same message, on the expected ledger, signed by the
  expected key;
* every invalid vector is decoded and checked through p2pay and refused with its code (and,
  for a hello, the refusal's details);
* every refusal frame decodes to its fields and re-encodes to its bytes;
* every framing input goes through the frame reader and the frame decoder with the
  receiver's max_frame, whatever the chunking, and gets its verdict;
* every resync case is applied to a payer channel in the state it gives and ends in the
  outcome and numbers it gives;
* every offer is rebuilt through `Offer.create` byte for byte, or refused by `decode_offer`
  and `check_offer` with its code;
* every receipt sequence is played on a payer channel, each response accepted, rejected
  (state unchanged) or ignored as it says;
* every vector is checked again with plain pynacl, cbor2 and hashlib (no p2pay) where that
  is possible;
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

from p2pay.core import evmsig
from p2pay.core.channel import PayerChannel, Pending, Replay
from p2pay.core.errors import DecodeError, ErrorCode, FrameTooLarge, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    KIND_REQUEST,
    KIND_RESPONSE,
    Hello,
    Refusal,
    Request,
    Response,
    ServiceTerms,
    StakeTerms,
    check_signed_by,
    decode_frame,
)
from p2pay.core.offers import MAX_OFFER_SIZE, Offer, check_offer, decode_offer
from p2pay.net.framing import FrameReader

VECTORS = Path(__file__).resolve().parents[2] / "specs" / "vectors"
SEEDS = [bytes([i]) * 32 for i in (1, 2, 3, 4)]  # ALICE, BOB, CAROL, MALLORY
KEYS = {Keypair.from_seed(seed).public: Keypair.from_seed(seed) for seed in SEEDS}


def load(name: str) -> list[dict[str, Any]]:
    data = json.loads((VECTORS / name).read_text("utf-8"))
    assert isinstance(data, list)
    return data


REQUESTS = load("requests.json")
RESPONSES = load("responses.json")
HELLOS = load("hellos.json")
REFUSALS = load("refusals.json")
FRAMING = load("framing.json")
RESYNC = load("resync.json")
RECEIPTS = load("receipts.json")
OFFERS = load("offers.json")
FILES = {
    "requests.json": REQUESTS,
    "responses.json": RESPONSES,
    "hellos.json": HELLOS,
    "refusals.json": REFUSALS,
    "framing.json": FRAMING,
    "resync.json": RESYNC,
    "receipts.json": RECEIPTS,
    "offers.json": OFFERS,
}
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
    if not decoded.ok:  # a signed refusal: its body is the refusal body
        message, details = decoded.refusal_info()
        assert message == v["message"]
        assert as_json(details) == v["details"]
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
    built = generator.build()
    assert set(built) == set(FILES)
    for name, entries in built.items():
        assert generator.render(entries) == (VECTORS / name).read_text("utf-8"), name


def test_every_vector_names_its_section() -> None:
    for name, entries in FILES.items():
        for v in entries:
            assert v["section"].startswith(
                ("protocol.md §", "settlement.md §", "discovery.md §")
            ), (name, v)


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


# ----------------------------------------------------------------------------- hellos


def _terms(fields: dict[str, Any]) -> dict[str, Any]:
    services = tuple(
        ServiceTerms(name=t["name"], price=int(t["price"]), max_body=int(t["max_body"]))
        for t in fields["services"]
    )
    stake = fields["stake"]
    return {
        "services": services,
        "stake": None
        if stake is None
        else StakeTerms(
            amount=int(stake["amount"]),
            penalty=int(stake["penalty"]),
            claim_window_ms=int(stake["window"]),
        ),
        "max_in_flight": int(fields["max_in_flight"]),
        "max_frame": int(fields["max_frame"]),
        "deadline_horizon": int(fields["deadline_horizon"]),
    }


@pytest.mark.parametrize("v", valid(HELLOS), ids=describe(valid(HELLOS)))
def test_valid_hello_rebuilt_byte_for_byte(v: dict[str, Any]) -> None:
    f = v["fields"]
    key = KEYS[x(v["public_key_hex"])]
    assert key.peer_id == v["peer_id"]
    hello = Hello.create(key, ledger=x(f["ledger"]), **_terms(f))
    assert hello.signing_bytes.hex() == v["signing_bytes_hex"]
    assert hello.signature.hex() == v["signature_hex"]
    assert hello.to_frame().hex() == v["frame_hex"]
    assert hello.account.hex() == f["account"] and hello.account_proof.hex() == f["account_proof"]
    decoded = decode_frame(x(v["frame_hex"]))
    assert decoded == hello
    assert isinstance(decoded, Hello)
    check_signed_by(decoded, key.public, x(v["expected_ledger_hex"]))
    if evmsig.is_evm_ledger(decoded.ledger):
        assert evmsig.address_of_account(decoded.account) == x(v["evm_address_hex"])
        digest = evmsig.binding_digest(decoded.ledger, key.public)
        assert digest.hex() == v["binding_digest_hex"]
        assert evmsig.recover(digest, decoded.account_proof) == x(v["evm_address_hex"])
    else:
        assert decoded.account == key.public and decoded.account_proof == b""


@pytest.mark.parametrize("v", invalid(HELLOS), ids=describe(invalid(HELLOS)))
def test_invalid_hello_refused_with_its_code_and_details(v: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        message = decode_frame(x(v["frame_hex"]))
        assert isinstance(message, Hello)  # a frame that decodes is a hello
        check_signed_by(message, x(v["public_key_hex"]), x(v["expected_ledger_hex"]))
    assert info.value.code is ErrorCode(v["error"]), info.value.message
    # the refusal the receiver sends (channel empty, n 0) carries the code's details
    refusal = Refusal.of_error(info.value)
    assert (refusal.channel, refusal.n, refusal.code.value) == (b"", 0, v["error"])
    assert as_json(refusal.details) == v["refusal_details"]
    assert decode_frame(refusal.to_frame()) == refusal


@pytest.mark.parametrize("v", HELLOS, ids=describe(HELLOS))
def test_hello_checks_out_with_plain_pynacl_and_cbor2(v: dict[str, Any]) -> None:
    signed, signature = x(v["signing_bytes_hex"]), x(v["signature_hex"])
    assert as_json(cbor2.loads(signed)) == v["fields"]
    if v["valid"]:
        assert cbor2.loads(x(v["frame_hex"])) == [0, signed, signature]
        assert ed25519_ok(x(v["public_key_hex"]), signed, signature)
        fields = cbor2.loads(signed)
        assert len(fields) == 10 and fields["domain"] == "p2pay/v1/hello"
        assert fields["ledger"].hex() == v["expected_ledger_hex"]
        assert len(fields["account_proof"]) in (0, 65)
        assert cbor2.dumps(fields, canonical=True) == signed
    elif v["error"] == "INVALID_SIGNATURE":
        assert not ed25519_ok(x(v["public_key_hex"]), signed, signature)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("v", valid(REFUSALS), ids=describe(valid(REFUSALS)))
def test_refusal_frame_decodes_to_its_fields_and_back(v: dict[str, Any]) -> None:
    frame = x(v["frame_hex"])
    refusal = decode_frame(frame)
    assert isinstance(refusal, Refusal)
    assert refusal.channel.hex() == v["channel_hex"]
    assert refusal.n == int(v["n"])
    assert refusal.code.value == v["code"]
    assert refusal.message == v["message"]
    assert as_json(dict(refusal.details)) == v["details"]
    assert refusal.to_frame() == frame  # canonical: the only encoding of these fields
    # independently
    assert cbor2.loads(frame)[:5] == [3, x(v["channel_hex"]), int(v["n"]), v["code"], v["message"]]
    assert cbor2.dumps(cbor2.loads(frame), canonical=True) == frame


@pytest.mark.parametrize("v", invalid(REFUSALS), ids=describe(invalid(REFUSALS)))
def test_invalid_refusal_frame_is_malformed(v: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as info:
        decode_frame(x(v["frame_hex"]))
    assert info.value.code is ErrorCode(v["error"]) is ErrorCode.MALFORMED


def test_refusal_details_are_those_the_spec_gives_each_code() -> None:
    """protocol.md §18: the keys each unsigned refusal MUST carry."""
    required = {
        "FRAME_TOO_LARGE": {"max_frame"},
        "VERSION_MISMATCH": {"version"},
        "CHALLENGE_TOO_SHORT": {"min_challenge_ms"},
        "INSUFFICIENT_DEPOSIT": {"deposit", "paid_max", "spent"},
        "REPLAY": {"last_n", "spent", "paid_max"},
        "PAYMENT_REQUIRED": {"price", "last_n", "spent", "paid_max"},
    }
    seen = set()
    for v in valid(REFUSALS):
        keys = set(v["details"])
        assert required.get(v["code"], set()) <= keys, v["description"]
        if "voucher" in keys or v["code"] in ("REPLAY", "PAYMENT_REQUIRED"):
            assert ("voucher" in keys) == (v["details"]["paid_max"] != "0"), v["description"]
        seen.add(v["code"])
    # one unsigned refusal at least per code the spec sends unsigned (§12, §18)
    assert {
        "MALFORMED",
        "FRAME_TOO_LARGE",
        "WRONG_DOMAIN",
        "VERSION_MISMATCH",
        "WRONG_LEDGER",
        "INVALID_SIGNATURE",
        "UNAUTHORIZED",
        "OVERLOADED",
        "UNKNOWN_CHANNEL",
        "CHALLENGE_TOO_SHORT",
        "REPLAY",
        "PAYMENT_REQUIRED",
        "INSUFFICIENT_DEPOSIT",
        "DEADLINE_EXCEEDED",
    } <= seen
    signed = {v["fields"]["status"] for v in valid(RESPONSES)} - {"OK"}
    assert {
        "CHANNEL_CLOSED",
        "DEADLINE_EXCEEDED",
        "UNKNOWN_SERVICE",
        "BODY_TOO_LARGE",
        "MALFORMED",
        "PAYMENT_REQUIRED",
        "HANDLER_ERROR",
        "OVERLOADED",
        "INTERNAL",
        "INVALID_SIGNATURE",
    } <= signed
    # codes a payee never signs are not among the signed refusals
    assert not signed & {"REPLAY", "INSUFFICIENT_DEPOSIT", "UNKNOWN_CHANNEL", "UNAUTHORIZED"}


# ----------------------------------------------------------------------------- framing


class _Chunks:
    """A byte stream delivering `data` in reads of at most `size` bytes."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.pos = data, size, 0

    async def read_some(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + min(n, self.size)]
        self.pos += len(chunk)
        return chunk


async def _receive(data: bytes, max_frame: int, size: int) -> tuple[list[bytes], Exception | None]:
    """What a receiver makes of `data`: the frames it takes, and the error that stops it
    (None if the stream ended cleanly)."""
    reader = FrameReader(_Chunks(data, size).read_some, max_frame)
    frames: list[bytes] = []
    while True:
        try:
            payload = await reader.next()
        except RemoteProtocolError as exc:  # the length prefix (5.2 rules 1-2)
            return frames, exc
        except Exception:  # end of stream
            assert reader.clean_eof
            return frames, None
        try:
            decode_frame(payload, max_size=max_frame)
        except RemoteProtocolError as exc:  # the frame (5.2 rule 4)
            exc.add_note("frame")
            return frames, exc
        frames.append(payload)


@pytest.mark.parametrize("v", FRAMING, ids=describe(FRAMING))
async def test_framing_vector_gets_its_verdict_whatever_the_chunking(v: dict[str, Any]) -> None:
    data, max_frame = x(v["input_hex"]), int(v["max_frame"])
    for size in {len(data) or 1, 1, 3}:
        frames, error = await _receive(data, max_frame, size)
        assert [f.hex() for f in frames] == v["frames_hex"]
        if v["result"] == "accept":
            assert error is None
            continue
        assert error is not None and isinstance(error, RemoteProtocolError)
        assert error.code.value == v["result"]
        at = "frame" if "frame" in getattr(error, "__notes__", []) else "prefix"
        assert at == v["refused_at"]
        refusal = Refusal.of_error(error)  # what the receiver sends (channel empty, n 0)
        assert as_json(refusal.details) == v["details"]
        if v["result"] == "FRAME_TOO_LARGE":
            assert isinstance(error, FrameTooLarge)


def test_framing_prefixes_read_independently() -> None:
    """The length prefixes of framing.json, read with a few lines of plain Python."""

    def uvarint(data: bytes) -> tuple[int, int] | str:
        value = 0
        for i, byte in enumerate(data[:9]):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return "MALFORMED" if byte == 0 and i > 0 else (value, i + 1)
        return "MALFORMED" if len(data) >= 9 else "short"

    for v in FRAMING:
        data, max_frame = x(v["input_hex"]), int(v["max_frame"])
        for frame_hex in v["frames_hex"]:  # the accepted frames, in order
            got = uvarint(data)
            assert isinstance(got, tuple)
            length, used = got
            assert data[used : used + length].hex() == frame_hex
            data = data[used + length :]
        if v["result"] == "accept":
            assert data == b""
        elif v.get("refused_at") == "prefix":
            got = uvarint(data)
            if v["result"] == "MALFORMED":
                assert got == "MALFORMED"
            else:
                assert isinstance(got, tuple) and got[0] > max_frame


def test_framing_vectors_cover_the_spec() -> None:
    results = {(v["result"], v.get("refused_at")) for v in FRAMING}
    assert {
        ("accept", None),
        ("MALFORMED", "prefix"),
        ("MALFORMED", "frame"),
        ("FRAME_TOO_LARGE", "prefix"),
    } <= results
    text = " ".join(v["description"] for v in FRAMING)
    for topic in (
        "non-minimal",
        "10 bytes",
        "zero length",
        "exactly max_frame",
        "max_frame + 1",
        "frame nesting 8",
        "frame nesting 9",
        "signed-map nesting 4",
        "signed-map nesting 5",
    ):
        assert topic in text, topic


# ----------------------------------------------------------------------------- resync


def _payer(state: dict[str, Any]) -> PayerChannel:
    channel = PayerChannel(
        ledger=b"p2pay:vectors:ledger-1",
        channel=hashlib.blake2b(b"p2pay vectors channel 1", digest_size=32).digest(),
        payer=Keypair.from_seed(SEEDS[0]).public,
        payee=Keypair.from_seed(SEEDS[1]).public,
        deposit=int(state["deposit"]),
        last_n=int(state["last_n"]),
        paid=int(state["paid"]),
        spent=int(state["spent"]),
        forgotten=int(state.get("forgotten", "0")),
        released=int(state.get("released", "0")),
        absorbed=int(state.get("absorbed", "0")),
    )
    for key, book in (("in_flight_hex", channel.in_flight), ("abandoned_hex", channel.abandoned)):
        for frame in state.get(key, []):
            request = decode_frame(x(frame))
            assert isinstance(request, Request)
            book[request.n] = Pending(request, request.price)
    return channel


def _numbers(ch: PayerChannel) -> dict[str, Any]:
    return {
        "last_n": str(ch.last_n),
        "paid": str(ch.paid),
        "spent": str(ch.spent),
        "forgotten": str(ch.forgotten),
        "released": str(ch.released),
        "absorbed": str(ch.absorbed),
        "in_flight": [str(n) for n in sorted(ch.in_flight)],
        "abandoned": [str(n) for n in sorted(ch.abandoned)],
    }


@pytest.mark.parametrize("v", RESYNC, ids=describe(RESYNC))
def test_resync_vector_gives_its_outcome(v: dict[str, Any]) -> None:
    ch = _payer(v["payer"])
    refusal = decode_frame(x(v["refusal_hex"]))
    assert isinstance(refusal, Refusal)
    assert refusal.code in (ErrorCode.REPLAY, ErrorCode.PAYMENT_REQUIRED)
    assert as_json(dict(refusal.details)) == v["details"]
    expected = v["expected"]
    before = _numbers(ch)
    if expected["outcome"] == "ignored":
        with pytest.raises(RemoteProtocolError) as info:
            ch.on_resync(refusal.n, refusal.details)
        assert info.value.code is ErrorCode(expected["error"])
        assert _numbers(ch) == before  # nothing adopted
    else:
        assert ch.on_resync(refusal.n, refusal.details) is Replay(expected["outcome"])
    assert _numbers(ch) == {k: expected[k] for k in _numbers(ch)}


def test_resync_vectors_cover_every_outcome() -> None:
    outcomes = {v["expected"]["outcome"] for v in RESYNC}
    assert outcomes == {"in_doubt", "superseded", "unknown", "ignored"}
    assert {v["expected"].get("error") for v in RESYNC} >= {"MALFORMED", "INVALID_SIGNATURE"}
    # D5 (issue 15): details whose spent exceeds paid_max are accepted, spent never adopted
    assert any(
        int(v["details"]["spent"]) > int(v["details"]["paid_max"])
        and v["expected"]["outcome"] != "ignored"
        for v in RESYNC
        if "spent" in v["details"]
        and "paid_max" in v["details"]
        and v["details"]["spent"].lstrip("-").isdigit()
    )


def test_resync_vectors_name_outstanding_requests() -> None:
    """protocol.md 15 applies to a refusal of an outstanding request; the one `unknown`
    case shows that anything else is not read (5.4)."""
    for v in RESYNC:
        refusal = decode_frame(x(v["refusal_hex"]))
        assert isinstance(refusal, Refusal)
        ch = _payer(v["payer"])
        assert ch.expects(refusal.n) is (v["expected"]["outcome"] != "unknown")


# ----------------------------------------------------------------------------- receipts


@pytest.mark.parametrize("v", RECEIPTS, ids=describe(RECEIPTS))
def test_receipt_sequence_gives_each_verdict(v: dict[str, Any]) -> None:
    ch = _payer(v["payer"])
    for step in v["steps"]:
        if step["action"] == "abandon":
            assert ch.abandon(int(step["n"])) is not None
            continue
        assert step["action"] == "response"
        response = decode_frame(x(step["response_hex"]))
        assert isinstance(response, Response)
        before = _numbers(ch)
        if response.channel == ch.channel and not ch.expects(response.n):
            verdict = "ignore"  # 5.4 / 14.3: not read at all
        else:
            try:
                receipt = ch.on_response(response)
            except RemoteProtocolError as exc:
                verdict = "reject"
                assert exc.code is ErrorCode(step["error"])
                assert _numbers(ch) == before  # a rejected receipt changes nothing
            else:
                verdict = "accept"
                assert receipt.charged == response.price
        assert verdict == step["verdict"], step
        after = _numbers(ch)
        assert after["spent"] == step["spent"]
        assert after["in_flight"] == step["in_flight"]
        assert after["abandoned"] == step["abandoned"]


def test_receipt_vectors_cover_every_verdict_and_rule() -> None:
    steps = [s for v in RECEIPTS for s in v["steps"] if s["action"] == "response"]
    assert {s["verdict"] for s in steps} == {"accept", "reject", "ignore"}
    assert {s.get("error") for s in steps} >= {None, "MALFORMED", "INVALID_SIGNATURE"}
    assert any(s["action"] == "abandon" for v in RECEIPTS for s in v["steps"])


def test_receipt_vectors_verify_without_p2pay() -> None:
    """Each response frame is a CBOR array [2, signed, signature, body] whose signature by
    BOB (or MALLORY, for the one rejected for it) verifies with plain pynacl."""
    bob = nacl.signing.SigningKey(SEEDS[1]).verify_key
    forged = 0
    for v in RECEIPTS:
        for step in v["steps"]:
            if step["action"] != "response":
                continue
            kind, signed, signature, _body = cbor2.loads(x(step["response_hex"]))
            assert kind == 2
            try:
                bob.verify(signed, signature)
            except nacl.exceptions.BadSignatureError:
                forged += 1
                assert step["error"] == "INVALID_SIGNATURE"
    assert forged == 1


# ----------------------------------------------------------------------------- offers


def _stake(fields: dict[str, Any]) -> StakeTerms:
    s = fields["stake"]
    return StakeTerms(
        amount=int(s["amount"]), penalty=int(s["penalty"]), claim_window_ms=int(s["window"])
    )


@pytest.mark.parametrize("v", valid(OFFERS), ids=describe(valid(OFFERS)))
def test_valid_offer_rebuilt_byte_for_byte(v: dict[str, Any]) -> None:
    f = v["fields"]
    key = KEYS[x(v["public_key_hex"])]
    assert key.peer_id == v["peer_id"]
    offer = Offer.create(
        key,
        ledger=x(f["ledger"]),
        service=f["service"]["name"],
        price=int(f["service"]["price"]),
        max_body=int(f["service"]["max_body"]),
        stake=_stake(f),
        addrs=f["addrs"],
        seq=int(f["seq"]),
        expires=int(f["expires"]),
    )
    assert offer.signing_bytes.hex() == v["signing_bytes_hex"]
    assert offer.signature.hex() == v["signature_hex"]
    assert offer.encode().hex() == v["offer_hex"]
    assert offer.account.hex() == f["account"] and offer.account_proof.hex() == f["account_proof"]
    decoded = decode_offer(x(v["offer_hex"]))
    assert decoded == offer and decoded.peer_id == v["peer_id"]
    check_offer(decoded, ledger=x(v["expected_ledger_hex"]), now_ms=int(v["now_ms"]))
    if evmsig.is_evm_ledger(decoded.ledger):
        digest = evmsig.binding_digest(decoded.ledger, key.public)
        assert digest.hex() == v["binding_digest_hex"]
        assert evmsig.recover(digest, decoded.account_proof) == x(v["evm_address_hex"])
    else:
        assert decoded.account == key.public and decoded.account_proof == b""


@pytest.mark.parametrize("v", invalid(OFFERS), ids=describe(invalid(OFFERS)))
def test_invalid_offer_refused_with_its_code(v: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        offer = decode_offer(x(v["offer_hex"]))
        assert offer.peer.hex() == v["public_key_hex"]  # the key the receiver reads
        check_offer(offer, ledger=x(v["expected_ledger_hex"]), now_ms=int(v["now_ms"]))
    assert info.value.code is ErrorCode(v["error"]), info.value.message


@pytest.mark.parametrize("v", OFFERS, ids=describe(OFFERS))
def test_offer_checks_out_with_plain_pynacl_and_cbor2(v: dict[str, Any]) -> None:
    signed, signature = x(v["signing_bytes_hex"]), x(v["signature_hex"])
    assert as_json(cbor2.loads(signed)) == v["fields"]
    if v["valid"]:
        assert cbor2.loads(x(v["offer_hex"])) == [4, signed, signature]
        assert len(x(v["offer_hex"])) <= MAX_OFFER_SIZE
        assert ed25519_ok(x(v["public_key_hex"]), signed, signature)
        fields = cbor2.loads(signed)
        assert len(fields) == 11 and fields["domain"] == "p2pay/v1/offer"
        assert fields["peer"].hex() == v["public_key_hex"]
        assert fields["ledger"].hex() == v["expected_ledger_hex"]
        assert all(a.endswith("/p2p/" + v["peer_id"]) for a in fields["addrs"])
        assert int(v["now_ms"]) < fields["expires"] <= int(v["now_ms"]) + 86_400_000
        assert cbor2.dumps(fields, canonical=True) == signed
    elif v["error"] == "INVALID_SIGNATURE":
        assert not ed25519_ok(x(v["public_key_hex"]), signed, x(v["offer_hex"])[-64:])
    elif v["error"] == "FRAME_TOO_LARGE":
        assert len(x(v["offer_hex"])) == MAX_OFFER_SIZE + 1


def test_offer_vectors_cover_every_check() -> None:
    errors = {v["error"] for v in invalid(OFFERS)}
    assert errors == {
        "FRAME_TOO_LARGE",
        "MALFORMED",
        "WRONG_DOMAIN",
        "VERSION_MISMATCH",
        "WRONG_LEDGER",
        "INVALID_SIGNATURE",
        "UNAUTHORIZED",
        "DEADLINE_EXCEEDED",
    }
    ledgers = {evmsig.is_evm_ledger(x(v["expected_ledger_hex"])) for v in valid(OFFERS)}
    assert ledgers == {True, False}
    descriptions = " ".join(v["description"] for v in invalid(OFFERS))
    for topic in ("non-canonical", "missing", "extra key", "is checked first", "stake null"):
        assert topic in descriptions
