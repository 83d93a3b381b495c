"""Unit tests for p2pay.core.messages: construction, frames, refusals, hello, signatures."""

from __future__ import annotations

from typing import Any

import pytest

from p2pay.core import codec
from p2pay.core.errors import (
    DecodeError,
    ErrorCode,
    FrameTooLarge,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
    WrongDomain,
    WrongLedger,
)
from p2pay.core.evmsig import EvmKey, binding_proof, evm_ledger_id
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    DEFAULT_DEADLINE_HORIZON_MS,
    DOMAIN_HELLO,
    DOMAIN_REQUEST,
    DOMAIN_RESPONSE,
    FRAME_MAX_DEPTH,
    MIN_FRAME_LIMIT,
    PROTOCOL_VERSION,
    Hello,
    Refusal,
    Request,
    Response,
    ServiceTerms,
    StakeTerms,
    answer_limit,
    blake2b256,
    check_signed_by,
    decode_frame,
    hello_signing_bytes,
    refusal_body,
    request_signing_bytes,
    response_signing_bytes,
)

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)
LEDGER = b"test-ledger"
CHANNEL = blake2b256(b"channel")
MAX_U64 = 2**64 - 1
MAX_YOCTO = 2**128 - 1
DEADLINE = 1_700_000_000_000


def request_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "ledger": LEDGER,
        "channel": CHANNEL,
        "n": 1,
        "paid": 100,
        "price": 10,
        "service": "echo",
        "body_hash": blake2b256(b"hi"),
        "deadline": DEADLINE,
    }
    kwargs.update(overrides)
    return kwargs


def make_request(**overrides: Any) -> Request:
    body = overrides.pop("body", b"hi")
    kwargs = request_kwargs(**overrides)
    del kwargs["body_hash"]
    return Request.create(ALICE, body=body, **kwargs)


def make_response(request: Request | None = None, **overrides: Any) -> Response:
    kwargs: dict[str, Any] = {"status": "OK", "price": 10, "spent": 10, "body": b"ho"}
    kwargs.update(overrides)
    return Response.create(BOB, request=request or make_request(), **kwargs)


def response_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "ledger": LEDGER,
        "channel": CHANNEL,
        "n": 1,
        "request_hash": bytes(32),
        "status": "OK",
        "price": 10,
        "spent": 10,
        "body_hash": blake2b256(b"ho"),
    }
    kwargs.update(overrides)
    return kwargs


def make_hello(**overrides: Any) -> Hello:
    kwargs: dict[str, Any] = {
        "ledger": LEDGER,
        "services": (
            ServiceTerms(name="echo", price=10, max_body=1024),
            ServiceTerms(name="big", price=MAX_YOCTO, max_body=MAX_U64),
        ),
        "stake": StakeTerms(amount=2**100, penalty=10**24, claim_window_ms=60_000),
    }
    kwargs.update(overrides)
    return Hello.create(ALICE, **kwargs)


def enc(value: Any) -> bytes:
    return codec.encode(value)


def refused(data: bytes, code: ErrorCode, **kwargs: Any) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(data, **kwargs)
    assert info.value.code is code, info.value.message
    return info.value


# ----------------------------------------------------------------------------- construction


BAD_REQUEST_FIELDS = [
    ("ledger", b""),
    ("ledger", bytes(65)),
    ("ledger", bytearray(b"x")),
    ("ledger", "ledger"),
    ("channel", bytes(31)),
    ("channel", bytes(33)),
    ("channel", None),
    ("n", 0),
    ("n", -1),
    ("n", 2**64),
    ("n", True),
    ("n", 1.0),
    ("paid", -1),
    ("paid", 2**128),
    ("paid", 1.5),
    ("paid", False),
    ("paid", "100"),
    ("price", -1),
    ("price", 2**128),
    ("service", ""),
    ("service", "s" * 65),
    ("service", "\u00e9" * 33),  # 66 bytes of UTF-8
    ("service", "\ud800"),  # lone surrogate: not encodable
    ("service", b"echo"),
    ("body_hash", bytes(31)),
    ("body_hash", None),
    ("deadline", -1),
    ("deadline", 2**64),
    ("deadline", 1.7e12),
    ("signature", "sig"),
    ("body", "text"),
]


@pytest.mark.parametrize(("name", "value"), BAD_REQUEST_FIELDS)
def test_request_bad_field_is_local_error(name: str, value: Any) -> None:
    with pytest.raises(LocalProtocolError) as info:
        Request(**request_kwargs(**{name: value}))
    assert not isinstance(info.value, RemoteProtocolError)


def test_request_field_limits_are_inclusive() -> None:
    request = Request(
        **request_kwargs(
            ledger=bytes(64),
            n=MAX_U64,
            paid=MAX_YOCTO,
            price=MAX_YOCTO,
            service="\u00e9" * 32,
            deadline=MAX_U64,
        )
    )
    assert request.n == MAX_U64
    Request(**request_kwargs(ledger=b"x", n=1, paid=0, price=0, service="s", deadline=0))


BAD_RESPONSE_FIELDS = [
    ("ledger", b""),
    ("channel", bytes(31)),
    ("n", 0),
    ("n", 2**64),
    ("request_hash", bytes(33)),
    ("status", "ok"),
    ("status", "NOPE"),
    ("status", ""),
    ("status", ["OK"]),  # unhashable: must not be a TypeError
    ("status", None),
    ("price", -1),
    ("spent", 2**128),
    ("spent", 9),  # below price 10
    ("body_hash", b""),
    ("signature", 1),
]


@pytest.mark.parametrize(("name", "value"), BAD_RESPONSE_FIELDS)
def test_response_bad_field_is_local_error(name: str, value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        Response(**response_kwargs(**{name: value}))


def test_response_refusal_must_not_charge() -> None:
    with pytest.raises(LocalProtocolError, match="charges nothing"):
        Response(**response_kwargs(status="PAYMENT_REQUIRED", price=1))
    refusal = Response(**response_kwargs(status="PAYMENT_REQUIRED", price=0, spent=0))
    assert not refusal.ok
    assert Response(**response_kwargs()).ok


def test_response_accepts_every_error_code_as_status() -> None:
    for code in ErrorCode:
        assert Response(**response_kwargs(status=code.value, price=0)).status == code.value
    assert Response(**response_kwargs(status=ErrorCode.REPLAY, price=0)).status == "REPLAY"


BAD_TERMS = [
    (ServiceTerms, {"name": "", "price": 1, "max_body": 1}),
    (ServiceTerms, {"name": "x" * 65, "price": 1, "max_body": 1}),
    (ServiceTerms, {"name": "x", "price": -1, "max_body": 1}),
    (ServiceTerms, {"name": "x", "price": 2**128, "max_body": 1}),
    (ServiceTerms, {"name": "x", "price": 1, "max_body": 2**64}),
    (StakeTerms, {"amount": -1, "penalty": 0, "claim_window_ms": 0}),
    (StakeTerms, {"amount": 0, "penalty": 2**128, "claim_window_ms": 0}),
    (StakeTerms, {"amount": 0, "penalty": 0, "claim_window_ms": -5}),
]


@pytest.mark.parametrize(("cls", "kwargs"), BAD_TERMS)
def test_terms_bad_field_is_local_error(cls: type, kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        cls(**kwargs)


def hello_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "ledger": LEDGER,
        "services": (),
        "stake": None,
        "max_in_flight": 1,
        "max_frame": MIN_FRAME_LIMIT,
        "account": ALICE.public,
        "account_proof": b"",
        "deadline_horizon": 1,
    }
    kwargs.update(overrides)
    return kwargs


ECHO = ServiceTerms(name="echo", price=1, max_body=1)
BAD_HELLO_FIELDS = [
    ("version", -1),
    ("version", 2**64),
    ("ledger", b""),
    ("ledger", bytes(65)),
    ("services", [ECHO]),  # a list, not a tuple
    ("services", ("echo",)),
    ("services", (ECHO, ECHO)),
    ("services", tuple(ServiceTerms(name=f"s{i}", price=1, max_body=1) for i in range(257))),
    ("stake", {"amount": 1}),
    ("max_in_flight", 0),
    ("max_in_flight", 2**64),
    ("max_frame", MIN_FRAME_LIMIT - 1),
    ("max_frame", 2**64),
    ("account", ALICE.public[:31]),
    ("account", ALICE.public + b"\x00"),
    ("account", None),
    ("account_proof", bytes(65)),  # a proof only on an EVM ledger
    ("account_proof", None),
    ("deadline_horizon", 0),
    ("deadline_horizon", -1),
    ("deadline_horizon", 2**64),
    ("deadline_horizon", None),
    ("signature", None),
]


@pytest.mark.parametrize(("name", "value"), BAD_HELLO_FIELDS)
def test_hello_bad_field_is_local_error(name: str, value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        Hello(**hello_kwargs(**{name: value}))


def test_hello_limits_are_inclusive() -> None:
    services = tuple(ServiceTerms(name=f"s{i}", price=i, max_body=i) for i in range(256))
    hello = Hello(
        **hello_kwargs(
            services=services, max_in_flight=MAX_U64, max_frame=MAX_U64, deadline_horizon=MAX_U64
        )
    )
    assert len(hello.services) == 256


def test_hello_create_announces_the_deadline_horizon() -> None:
    assert make_hello().deadline_horizon == DEFAULT_DEADLINE_HORIZON_MS
    hello = make_hello(deadline_horizon=60_000)
    decoded = decode_frame(hello.to_frame())
    assert isinstance(decoded, Hello) and decoded.deadline_horizon == 60_000
    assert decoded == hello


BAD_REFUSALS = [
    {"code": "REPLAY"},  # text, not an ErrorCode
    {"channel": bytes(5)},
    {"channel": None},
    {"n": -1},
    {"n": 2**64},
    {"channel": b"", "n": 3},  # an empty channel goes with n = 0
    {"n": 0},  # a channel goes with a request number, >= 1 (protocol.md 7, wire.cddl)
    {"message": "x" * 2049},
    {"message": 5},
    {"details": {1: "int key"}},
    {"details": {"x": 1.5}},  # floats cannot be encoded
    {"details": [("a", 1)]},
]


@pytest.mark.parametrize("overrides", BAD_REFUSALS)
def test_refusal_bad_field_is_local_error(overrides: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"channel": CHANNEL, "n": 1, "code": ErrorCode.MALFORMED}
    kwargs.update(overrides)
    with pytest.raises(LocalProtocolError):
        Refusal(**kwargs)


def test_refusal_details_nesting_limit_matches_the_decoder() -> None:
    def nested(depth: int) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        return value

    # the frame array is level 1 and the details map level 2: six more levels fit
    deepest = Refusal(channel=b"", n=0, code=ErrorCode.MALFORMED, details={"x": nested(6)})
    assert decode_frame(deepest.to_frame()) == deepest
    with pytest.raises(LocalProtocolError):
        Refusal(channel=b"", n=0, code=ErrorCode.MALFORMED, details={"x": nested(7)})
    # and the decoder refuses what the constructor refuses
    frame = enc([3, b"", 0, "MALFORMED", "", {"x": nested(7)}])
    refused(frame, ErrorCode.MALFORMED)
    assert FRAME_MAX_DEPTH == 8


def test_refusal_of_error_carries_the_codes_details() -> None:
    """protocol.md 18: VERSION_MISMATCH details {"version": 2}, FRAME_TOO_LARGE details
    {"max_frame": limit}: the refusal answering the error carries them."""
    unsigned = Hello(**hello_kwargs(version=PROTOCOL_VERSION + 1))
    hello = unsigned.with_signature(ALICE.sign(unsigned.signing_bytes))
    with pytest.raises(RemoteProtocolError) as version:
        check_signed_by(hello, ALICE.public, LEDGER)
    refusal = Refusal.of_error(version.value)
    assert (refusal.channel, refusal.n, refusal.code) == (b"", 0, ErrorCode.VERSION_MISMATCH)
    assert decode_frame(refusal.to_frame()) == refusal
    assert refusal.details == {"version": 2}
    frame = make_request(body=bytes(5000)).to_frame()
    with pytest.raises(FrameTooLarge) as big:
        decode_frame(frame, max_size=4096)
    too_large = Refusal.of_error(big.value)
    assert too_large.code is ErrorCode.FRAME_TOO_LARGE
    assert too_large.details == {"max_frame": 4096}
    # a long or odd message is cut to what a refusal frame carries
    odd = Refusal.of_error(RemoteProtocolError("\ud800" + "\u00e9" * 3000), channel=CHANNEL, n=7)
    assert len(odd.message.encode()) <= 2048 and (odd.channel, odd.n) == (CHANNEL, 7)


def test_unsigned_messages_cannot_become_frames() -> None:
    with pytest.raises(LocalProtocolError):
        Request(**request_kwargs()).to_frame()
    with pytest.raises(LocalProtocolError):
        Response(**response_kwargs()).to_frame()
    with pytest.raises(LocalProtocolError):
        Hello(**hello_kwargs()).to_frame()


def test_a_request_frame_is_computed_once_and_follows_its_signature() -> None:
    """`to_frame` keeps its result (a payee stores a request's frame several times); a
    copy with another signature, or a request decoded from a frame, has its own."""
    request = make_request()
    fresh = codec.encode([1, request.signing_bytes, request.signature, request.body])
    assert request.to_frame() == fresh
    assert request.to_frame() is request.to_frame()
    other = request.with_signature(MALLORY.sign(request.signing_bytes))
    assert other.to_frame() == codec.encode([1, other.signing_bytes, other.signature, other.body])
    assert other.to_frame() != fresh and request.to_frame() == fresh
    decoded = decode_frame(fresh)
    assert isinstance(decoded, Request) and decoded.to_frame() == fresh
    assert decoded == request


@pytest.mark.parametrize("signature", [b"", bytes(63), bytes(65), "x" * 64])
def test_with_signature_needs_64_bytes(signature: Any) -> None:
    with pytest.raises(LocalProtocolError):
        Request(**request_kwargs()).with_signature(signature)
    with pytest.raises(LocalProtocolError):
        Response(**response_kwargs()).with_signature(signature)
    with pytest.raises(LocalProtocolError):
        Hello(**hello_kwargs()).with_signature(signature)


def test_create_refuses_a_non_bytes_body() -> None:
    with pytest.raises(LocalProtocolError):
        make_request(body="hi")
    with pytest.raises(LocalProtocolError):
        make_response(body=bytearray(b"x"))


# ----------------------------------------------------------------------------- signing bytes


def test_request_signing_bytes_are_the_canonical_voucher_map() -> None:
    request = make_request()
    expected = enc(
        {
            "domain": DOMAIN_REQUEST,
            "ledger": LEDGER,
            "channel": CHANNEL,
            "n": 1,
            "paid": 100,
            "price": 10,
            "service": "echo",
            "body_hash": blake2b256(b"hi"),
            "deadline": DEADLINE,
        }
    )
    assert request.signing_bytes == expected
    assert request_signing_bytes(**request_kwargs()) == expected
    assert request.hash == blake2b256(expected)
    # keys in RFC 8949 order: shorter encodings first
    assert expected.startswith(bytes.fromhex("a9616e01"))


def test_response_signing_bytes_bind_the_request_hash() -> None:
    request = make_request()
    response = make_response(request)
    assert response.request_hash == request.hash
    assert response.signing_bytes == response_signing_bytes(
        ledger=LEDGER,
        channel=CHANNEL,
        n=1,
        request_hash=request.hash,
        status="OK",
        price=10,
        spent=10,
        body_hash=blake2b256(b"ho"),
    )
    assert codec.decode(response.signing_bytes)["request"] == request.hash  # type: ignore[index]
    assert response.hash == blake2b256(response.signing_bytes)


def test_hello_signing_bytes() -> None:
    hello = make_hello()
    assert hello.signing_bytes == hello_signing_bytes(
        version=PROTOCOL_VERSION,
        ledger=LEDGER,
        services=hello.services,
        stake=hello.stake,
        max_in_flight=64,
        max_frame=codec.MAX_FRAME_SIZE,
        account=ALICE.public,
        account_proof=b"",
        deadline_horizon=3_600_000,
    )
    decoded = codec.decode(hello.signing_bytes)
    assert isinstance(decoded, dict)
    assert decoded["domain"] == DOMAIN_HELLO
    # protocol.md 9: every key always present; account_proof empty on an Ed25519 ledger
    assert set(decoded) == {
        "domain",
        "version",
        "ledger",
        "services",
        "stake",
        "max_in_flight",
        "max_frame",
        "account",
        "account_proof",
        "deadline_horizon",
    }
    assert decoded["account_proof"] == b""
    assert decoded["deadline_horizon"] == DEFAULT_DEADLINE_HORIZON_MS == 3_600_000
    assert decoded["stake"] == {"amount": 2**100, "penalty": 10**24, "window": 60_000}


def test_domain_tags_make_kinds_distinct() -> None:
    request = make_request()
    response = make_response(request)
    hello = make_hello()
    assert len({request.signing_bytes, response.signing_bytes, hello.signing_bytes}) == 3
    for domain, signed in (
        (DOMAIN_REQUEST, request.signing_bytes),
        (DOMAIN_RESPONSE, response.signing_bytes),
        (DOMAIN_HELLO, hello.signing_bytes),
    ):
        decoded = codec.decode(signed)
        assert isinstance(decoded, dict) and decoded["domain"] == domain


def test_body_is_outside_equality_but_bound_by_its_hash() -> None:
    request = make_request(body=b"hi")
    swapped = request.with_signature(request.signature)
    object.__setattr__(swapped, "body", b"other")
    assert swapped == request  # equality is over the signed content and signature
    assert not swapped.body_matches()
    assert request.body_matches()


# ----------------------------------------------------------------------------- round trips


def test_request_round_trip() -> None:
    request = make_request(paid=MAX_YOCTO, price=2**64, n=MAX_U64, body=b"x" * 1000)
    decoded = decode_frame(request.to_frame())
    assert decoded == request
    assert isinstance(decoded, Request)
    assert decoded.body == request.body
    assert decoded.hash == request.hash
    assert decoded.verify(ALICE.public)


def test_response_round_trip_and_refusal_body() -> None:
    body = refusal_body("service costs 20", {"price": 20, "big": 2**100})
    response = make_response(status="PAYMENT_REQUIRED", price=0, spent=0, body=body)
    decoded = decode_frame(response.to_frame())
    assert decoded == response
    assert isinstance(decoded, Response)
    assert decoded.body == body
    assert decoded.refusal_info() == ("service costs 20", {"price": 20, "big": 2**100})


def test_refusal_body_truncates_the_message() -> None:
    body = refusal_body("\u00e9" * 1000)
    value = codec.decode(body)
    assert value == {"message": "\u00e9" * 512, "details": {}}


@pytest.mark.parametrize("body", [b"", b"\xff", enc([1]), enc({"message": 5, "details": []})])
def test_refusal_info_never_raises(body: bytes) -> None:
    response = make_response(status="HANDLER_ERROR", price=0, body=body)
    assert response.refusal_info() == ("", {})


def test_a_kept_hello_verification_answers_as_ed25519_does() -> None:
    """`Hello.verify` keeps hellos that verified (a peer reconnecting brings the same
    bytes): the same hello verifies again, and one bit changed anywhere, another key, or
    a hello that failed before, fails as Ed25519 says; a hello over the kept size is
    verified every time."""
    from p2pay.core import messages

    hello = make_hello()
    for _ in range(2):
        assert hello.verify(ALICE.public)
        assert decode_frame(hello.to_frame()).verify(ALICE.public)
        assert not hello.verify(BOB.public)
    bad = hello.with_signature(bytes([hello.signature[0] ^ 1]) + hello.signature[1:])
    for _ in range(2):
        assert not bad.verify(ALICE.public)
    other = make_hello(max_frame=MIN_FRAME_LIMIT)
    assert other.signing_bytes != hello.signing_bytes
    forged = other.with_signature(hello.signature)  # a kept signature on other bytes
    assert not forged.verify(ALICE.public)
    many = tuple(ServiceTerms(name=f"s{i:03}", price=1, max_body=1) for i in range(60))
    large = make_hello(services=many)
    assert len(large.signing_bytes) > messages._KEPT_HELLO_SIZE
    for _ in range(2):
        assert large.verify(ALICE.public)
        assert not large.with_signature(bad.signature).verify(ALICE.public)


def test_hello_round_trip() -> None:
    for hello in (make_hello(), make_hello(services=(), stake=None, max_frame=MIN_FRAME_LIMIT)):
        decoded = decode_frame(hello.to_frame())
        assert decoded == hello
        assert isinstance(decoded, Hello)
        assert decoded.verify(ALICE.public)
        check_signed_by(decoded, ALICE.public, LEDGER)
    hello = make_hello()
    assert hello.version == PROTOCOL_VERSION == 2
    assert hello.service("big") == ServiceTerms(name="big", price=MAX_YOCTO, max_body=MAX_U64)
    assert hello.service("nope") is None


def test_refusal_round_trip() -> None:
    voucher = make_request().to_frame()
    refusal = Refusal(
        channel=CHANNEL,
        n=7,
        code=ErrorCode.REPLAY,
        message="request number 7 is not above 9",
        details={"last_n": 9, "spent": 2**70, "paid_max": MAX_YOCTO, "voucher": voucher},
    )
    decoded = decode_frame(refusal.to_frame())
    assert decoded == refusal
    assert isinstance(decoded, Refusal)
    assert decode_frame(decoded.details["voucher"]) == make_request()
    anonymous = Refusal(channel=b"", n=0, code=ErrorCode.FRAME_TOO_LARGE)
    assert decode_frame(anonymous.to_frame()) == anonymous


def test_decode_frame_accepts_bytearray_and_memoryview() -> None:
    frame = make_request().to_frame()
    assert decode_frame(bytearray(frame)) == decode_frame(memoryview(frame)) == make_request()


# ----------------------------------------------------------------------------- decode refusals


def request_frame(**overrides: Any) -> bytes:
    """A request frame whose signed map is `overrides` applied to a valid one (re-signed)."""
    fields = codec.decode(make_request().signing_bytes)
    assert isinstance(fields, dict)
    for key, value in overrides.items():
        if value is ...:
            del fields[key]
        else:
            fields[key] = value
    signed = enc(fields)
    return enc([1, signed, ALICE.sign(signed), b"hi"])


SIGNED = make_request().signing_bytes
SIG = ALICE.sign(SIGNED)

BAD_FRAMES = [
    ("not an array", enc({"kind": 1}), ErrorCode.MALFORMED),
    ("empty array", enc([]), ErrorCode.MALFORMED),
    ("kind is text", enc(["1", SIGNED, SIG, b""]), ErrorCode.MALFORMED),
    ("kind is a bool", enc([True, SIGNED, SIG, b""]), ErrorCode.MALFORMED),
    ("unknown kind 4", enc([4, SIGNED, SIG, b""]), ErrorCode.MALFORMED),
    ("negative kind", enc([-1, SIGNED, SIG, b""]), ErrorCode.MALFORMED),
    ("request of 3 items", enc([1, SIGNED, SIG]), ErrorCode.MALFORMED),
    ("request of 5 items", enc([1, SIGNED, SIG, b"", b""]), ErrorCode.MALFORMED),
    ("signed part as a map", enc([1, {"n": 1}, SIG, b""]), ErrorCode.MALFORMED),
    ("body as text", enc([1, SIGNED, SIG, "hi"]), ErrorCode.MALFORMED),
    ("signature of 63 bytes", enc([1, SIGNED, SIG[:63], b"hi"]), ErrorCode.MALFORMED),
    ("signed bytes not CBOR", enc([1, b"\xff", SIG, b""]), ErrorCode.MALFORMED),
    ("signed bytes empty", enc([1, b"", SIG, b""]), ErrorCode.MALFORMED),
    ("response frame with a request", enc([2, SIGNED, SIG, b"hi"]), ErrorCode.WRONG_DOMAIN),
    ("hello frame with a request", enc([0, SIGNED, SIG]), ErrorCode.WRONG_DOMAIN),
    ("hello of 4 items", enc([0, SIGNED, SIG, b""]), ErrorCode.MALFORMED),
    ("hello signature as text", enc([0, SIGNED, "sig"]), ErrorCode.MALFORMED),
    ("no domain tag", request_frame(domain=...), ErrorCode.MALFORMED),
    ("domain tag not text", request_frame(domain=b"p2pay/v1/request"), ErrorCode.MALFORMED),
    ("foreign domain tag", request_frame(domain="other/v1/request"), ErrorCode.WRONG_DOMAIN),
    ("missing field", request_frame(service=...), ErrorCode.MALFORMED),
    ("extra field", request_frame(extra=1), ErrorCode.MALFORMED),
    ("extra integer key", request_frame(**{"1": 1}), ErrorCode.MALFORMED),
    ("n = 0", request_frame(n=0), ErrorCode.MALFORMED),
    ("paid negative", request_frame(paid=-5), ErrorCode.MALFORMED),
    ("price above 2**128 - 1", request_frame(price=-(2**128)), ErrorCode.MALFORMED),
    ("service empty", request_frame(service=""), ErrorCode.MALFORMED),
    ("service null", request_frame(service=None), ErrorCode.MALFORMED),
    ("deadline true", request_frame(deadline=True), ErrorCode.MALFORMED),
    ("ledger too long", request_frame(ledger=bytes(65)), ErrorCode.MALFORMED),
    ("trailing byte", make_request().to_frame() + b"\x00", ErrorCode.MALFORMED),
    ("truncated", make_request().to_frame()[:-1], ErrorCode.MALFORMED),
    ("empty input", b"", ErrorCode.MALFORMED),
    ("float", b"\xfb" + bytes(8), ErrorCode.MALFORMED),
    ("refusal of 5 items", enc([3, CHANNEL, 1, "REPLAY", ""]), ErrorCode.MALFORMED),
    ("refusal unknown code", enc([3, CHANNEL, 1, "NOPE", "", {}]), ErrorCode.MALFORMED),
    ("refusal code as int", enc([3, CHANNEL, 1, 7, "", {}]), ErrorCode.MALFORMED),
    ("refusal message bytes", enc([3, CHANNEL, 1, "REPLAY", b"", {}]), ErrorCode.MALFORMED),
    ("refusal details array", enc([3, CHANNEL, 1, "REPLAY", "", []]), ErrorCode.MALFORMED),
    ("refusal details int key", enc([3, CHANNEL, 1, "REPLAY", "", {1: 2}]), ErrorCode.MALFORMED),
    ("refusal channel 5 bytes", enc([3, bytes(5), 1, "REPLAY", "", {}]), ErrorCode.MALFORMED),
    ("refusal channel with n 0", enc([3, CHANNEL, 0, "REPLAY", "", {}]), ErrorCode.MALFORMED),
    ("refusal channel text", enc([3, "c", 1, "REPLAY", "", {}]), ErrorCode.MALFORMED),
    ("refusal n negative", enc([3, CHANNEL, -1, "REPLAY", "", {}]), ErrorCode.MALFORMED),
    ("refusal n bool", enc([3, CHANNEL, False, "REPLAY", "", {}]), ErrorCode.MALFORMED),
    ("refusal n 2**64", enc([3, CHANNEL, 2**64, "REPLAY", "", {}]), ErrorCode.MALFORMED),
    ("refusal empty channel n 1", enc([3, b"", 1, "REPLAY", "", {}]), ErrorCode.MALFORMED),
    ("refusal long message", enc([3, b"", 0, "MALFORMED", "x" * 2049, {}]), ErrorCode.MALFORMED),
]


@pytest.mark.parametrize(
    ("data", "code"), [f[1:] for f in BAD_FRAMES], ids=[f[0] for f in BAD_FRAMES]
)
def test_decode_frame_refusals(data: bytes, code: ErrorCode) -> None:
    refused(data, code)


def test_decode_frame_error_classes() -> None:
    with pytest.raises(DecodeError):
        decode_frame(enc([1, SIGNED, SIG]))
    with pytest.raises(WrongDomain):
        decode_frame(enc([2, SIGNED, SIG, b"hi"]))
    frame = make_request(body=bytes(5000)).to_frame()
    with pytest.raises(FrameTooLarge) as info:
        decode_frame(frame, max_size=len(frame) - 1)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert info.value.details == {"max_frame": len(frame) - 1}  # the refusal's details (5.2)
    assert decode_frame(frame, max_size=len(frame)) == make_request(body=bytes(5000))


def response_frame(**overrides: Any) -> bytes:
    fields = codec.decode(make_response().signing_bytes)
    assert isinstance(fields, dict)
    fields.update(overrides)
    signed = enc(fields)
    return enc([2, signed, BOB.sign(signed), b"ho"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"status": ["OK"]},
        {"status": {"OK": 1}},
        {"status": 200},
        {"status": "PAYMENT_REQUIRED"},  # with price 10: a refusal that charges
        {"spent": 9},
        {"request": bytes(31)},
        {"request": None},
    ],
)
def test_decode_response_refusals(overrides: dict[str, Any]) -> None:
    refused(response_frame(**overrides), ErrorCode.MALFORMED)


def hello_frame(**overrides: Any) -> bytes:
    fields = codec.decode(make_hello().signing_bytes)
    assert isinstance(fields, dict)
    fields.update(overrides)
    signed = enc(fields)
    return enc([0, signed, ALICE.sign(signed)])


@pytest.mark.parametrize(
    "overrides",
    [
        {"services": {"echo": 1}},
        {"services": [{"name": "a", "price": 1}]},
        {"services": [{"name": "a", "price": 1, "max_body": 1, "x": 0}]},
        {"services": [{"name": "a", "price": -1, "max_body": 1}]},
        {"services": [{"name": "a", "price": 1, "max_body": 1}] * 2},
        {"services": [{"name": f"s{i}", "price": 1, "max_body": 1} for i in range(257)]},
        {"services": ["echo"]},
        {"stake": {"amount": 1, "penalty": 1}},
        {"stake": {"amount": 1, "penalty": 1, "claim_window_ms": 1}},
        {"stake": [1, 1, 1]},
        {"stake": {"amount": -1, "penalty": 1, "window": 1}},
        {"max_frame": MIN_FRAME_LIMIT - 1},
        {"max_in_flight": 0},
        {"version": -1},
        {"ledger": b""},
        {"deadline_horizon": 0},
        {"deadline_horizon": 2**64},
        {"deadline_horizon": "3600000"},
        {"account_proof": None},
        {"account_proof": bytes(65)},  # a proof only on an EVM ledger
    ],
)
def test_decode_hello_refusals(overrides: dict[str, Any]) -> None:
    refused(hello_frame(**overrides), ErrorCode.MALFORMED)


@pytest.mark.parametrize("missing", ["account_proof", "deadline_horizon"])
def test_decode_hello_without_a_key_is_malformed(missing: str) -> None:
    fields = codec.decode(make_hello().signing_bytes)
    assert isinstance(fields, dict)
    del fields[missing]
    signed = enc(fields)
    refused(enc([0, signed, ALICE.sign(signed)]), ErrorCode.MALFORMED)


def test_decode_hello_with_bignum_price_at_the_depth_limit() -> None:
    frame = hello_frame(services=[{"name": "a", "price": MAX_YOCTO, "max_body": 1}])
    hello = decode_frame(frame)
    assert isinstance(hello, Hello)
    assert hello.services[0].price == MAX_YOCTO


# ----------------------------------------------------------------------------- signatures


def test_request_signature_checks() -> None:
    request = make_request()
    assert request.verify(ALICE.public)
    assert not request.verify(BOB.public)
    assert not request.verify(b"short")
    forged = request.with_signature(MALLORY.sign(request.signing_bytes))
    assert not forged.verify(ALICE.public)
    flipped = bytearray(request.signature)
    flipped[10] ^= 4
    assert not request.with_signature(bytes(flipped)).verify(ALICE.public)
    # the signature is over the signed bytes only: another body does not change it
    assert make_request(body=b"x").signature != request.signature  # body_hash differs


def test_response_signature_checks() -> None:
    response = make_response()
    assert response.verify(BOB.public)
    assert not response.verify(ALICE.public)


def test_check_signed_by() -> None:
    request = make_request()
    check_signed_by(request, ALICE.public, LEDGER)
    with pytest.raises(WrongLedger) as info:
        check_signed_by(request, ALICE.public, b"other-ledger")
    assert info.value.code is ErrorCode.WRONG_LEDGER
    with pytest.raises(InvalidSignature) as bad:
        check_signed_by(request, BOB.public, LEDGER)
    assert bad.value.code is ErrorCode.INVALID_SIGNATURE
    # the ledger is checked before the signature
    with pytest.raises(WrongLedger):
        check_signed_by(request, BOB.public, b"other-ledger")

    response = make_response(request)
    check_signed_by(response, BOB.public, LEDGER)
    with pytest.raises(InvalidSignature):
        check_signed_by(response, ALICE.public, LEDGER)

    hello = make_hello()
    check_signed_by(hello, ALICE.public, LEDGER)
    with pytest.raises(WrongLedger):
        check_signed_by(hello, ALICE.public, b"elsewhere")
    with pytest.raises(InvalidSignature):
        check_signed_by(hello, MALLORY.public, LEDGER)


def test_check_signed_by_refuses_another_hello_version() -> None:
    unsigned = Hello(**hello_kwargs(version=PROTOCOL_VERSION + 1))
    hello = unsigned.with_signature(ALICE.sign(unsigned.signing_bytes))
    decoded = decode_frame(hello.to_frame())  # decodes: the version is a value
    assert isinstance(decoded, Hello)
    with pytest.raises(RemoteProtocolError) as info:
        check_signed_by(decoded, ALICE.public, b"elsewhere")  # version before ledger
    assert info.value.code is ErrorCode.VERSION_MISMATCH
    assert info.value.details == {"version": PROTOCOL_VERSION}


def test_hello_binds_the_sender_to_its_account() -> None:
    # Ed25519 ledger: the account is the signer's own key, anything else is UNAUTHORIZED
    hello = make_hello()
    assert hello.account == ALICE.public and hello.account_proof == b""
    check_signed_by(decode_frame(hello.to_frame()), ALICE.public, LEDGER)  # type: ignore[arg-type]
    claims_bob = Hello(**hello_kwargs(account=BOB.public))
    claims_bob = claims_bob.with_signature(ALICE.sign(claims_bob.signing_bytes))
    with pytest.raises(RemoteProtocolError) as info:
        check_signed_by(claims_bob, ALICE.public, LEDGER)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    # EVM ledger: the account is an EVM account, bound both ways: the hello is signed by the
    # PeerID key and carries the account key's proof for that PeerID key
    evm_ledger = evm_ledger_id(31337, bytes(range(1, 21)))
    alice_evm = EvmKey.derive(ALICE)
    evm_hello = make_hello(ledger=evm_ledger)
    assert evm_hello.account == alice_evm.account and len(evm_hello.account_proof) == 65
    decoded = decode_frame(evm_hello.to_frame())
    check_signed_by(decoded, ALICE.public, evm_ledger)  # type: ignore[arg-type]
    assert isinstance(decoded, Hello) and decoded.account == evm_hello.account
    proof = evm_hello.account_proof
    for not_evm in (ALICE.public, bytes(32), bytes(11) + b"\x01" + bytes(20)):
        with pytest.raises(LocalProtocolError):
            Hello(**hello_kwargs(ledger=evm_ledger, account=not_evm, account_proof=proof))
    with pytest.raises(LocalProtocolError):  # an EVM hello needs a 65-byte proof
        Hello(**hello_kwargs(ledger=evm_ledger, account=alice_evm.account))

    def signed_by(key: Keypair, **overrides: Any) -> Hello:
        unsigned = Hello(**hello_kwargs(ledger=evm_ledger, **overrides))
        return unsigned.with_signature(key.sign(unsigned.signing_bytes))

    # BOB names ALICE's account: it has ALICE's proof, but that proof binds ALICE's PeerID
    stolen = signed_by(BOB, account=alice_evm.account, account_proof=proof)
    check_signed_by(evm_hello, ALICE.public, evm_ledger)
    with pytest.raises(RemoteProtocolError) as info:
        check_signed_by(stolen, BOB.public, evm_ledger)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    # a proof for another ledger, or by another key, binds nothing here
    other_ledger = evm_ledger_id(1, bytes(range(1, 21)))
    for bad_proof in (
        binding_proof(alice_evm, other_ledger, ALICE.public),
        binding_proof(EvmKey.derive(BOB), evm_ledger, ALICE.public),
        bytes(65),
    ):
        with pytest.raises(RemoteProtocolError) as info:
            check_signed_by(
                signed_by(ALICE, account=alice_evm.account, account_proof=bad_proof),
                ALICE.public,
                evm_ledger,
            )
        assert info.value.code is ErrorCode.UNAUTHORIZED
    # ... and a hello signed by another PeerID key is INVALID_SIGNATURE, as on any ledger
    with pytest.raises(RemoteProtocolError) as info:
        check_signed_by(
            signed_by(BOB, account=alice_evm.account, account_proof=proof), ALICE.public, evm_ledger
        )
    assert info.value.code is ErrorCode.INVALID_SIGNATURE


def test_signatures_do_not_cross_ledgers() -> None:
    request = make_request()
    elsewhere = Request(**request_kwargs(ledger=b"other-ledger")).with_signature(request.signature)
    assert not elsewhere.verify(ALICE.public)


def test_signatures_do_not_cross_kinds() -> None:
    """A response signed by BOB cannot be read as a request from BOB, nor the reverse."""
    response = make_response()
    with pytest.raises(WrongDomain):
        Request.from_signed(response.signing_bytes, response.signature, response.body)
    request = make_request()
    with pytest.raises(WrongDomain):
        Response.from_signed(request.signing_bytes, request.signature, request.body)
    with pytest.raises(WrongDomain):
        Hello.from_signed(request.signing_bytes, request.signature)


def test_answer_limit_is_the_smaller_of_the_frame_and_the_claim_limits() -> None:
    """protocol.md 13.3: L = payer's max_frame - 1024, and for a paid request at most the
    ledger's max_claim_body."""
    assert answer_limit(1 << 20, max_claim_body=32768, paid=True) == 32768
    assert answer_limit(1 << 20, max_claim_body=32768, paid=False) == (1 << 20) - 1024
    assert answer_limit(8192, max_claim_body=32768, paid=True) == 8192 - 1024
    assert answer_limit(8192, max_claim_body=None, paid=True) == 8192 - 1024
    for bad in ({"max_frame": 4095}, {"max_frame": True}, {"max_claim_body": 0}):
        kwargs: dict[str, Any] = {"max_frame": 8192, "max_claim_body": 100, "paid": True}
        kwargs.update(bad)
        with pytest.raises(LocalProtocolError):
            answer_limit(**kwargs)


@pytest.mark.parametrize("ledger", [b"x" * 64, evm_ledger_id(31337, bytes(range(20)))])
def test_an_answer_of_the_limit_always_fits_the_payers_max_frame(ledger: bytes) -> None:
    """The 1024 bytes of 13.3 cover the largest OK response frame around its body: the
    longest ledger id, the largest numbers, an EVM signature."""
    key = EvmKey.derive(ALICE) if len(ledger) == 38 else ALICE
    payee = EvmKey.derive(BOB) if len(ledger) == 38 else BOB
    biggest = Request.create(
        key,
        ledger=ledger,
        channel=CHANNEL,
        n=MAX_U64,
        paid=MAX_YOCTO,
        price=MAX_YOCTO,
        service="s" * 64,
        body=b"",
        deadline=MAX_U64,
    )
    for max_frame in (MIN_FRAME_LIMIT, 65536):
        body = b"a" * answer_limit(max_frame, max_claim_body=None, paid=True)
        response = Response.create(
            payee, request=biggest, status="OK", price=MAX_YOCTO, spent=MAX_YOCTO, body=body
        )
        frame = response.to_frame()
        assert len(frame) <= max_frame
        assert len(frame) - len(body) <= 512  # well within the margin


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_a_decoded_request_keeps_its_frame_as_to_frame_would_encode_it(wrap: Any) -> None:
    """`decode_frame` keeps a request's received frame as its `to_frame` (perf19): the
    strict decoder accepts only the one encoding, so it is what encoding gives again."""
    for body in (b"", b"body", bytes(range(256)) * 40):
        frame = make_request(body=body).to_frame()
        decoded = decode_frame(wrap(frame))
        assert isinstance(decoded, Request)
        kept = decoded.to_frame()
        assert type(kept) is bytes and kept == frame
        assert kept == codec.encode([1, decoded.signing_bytes, decoded.signature, decoded.body])
        # a copy with another signature encodes its own frame
        other = decoded.with_signature(bytes(64))
        assert other.to_frame() == codec.encode([1, decoded.signing_bytes, bytes(64), decoded.body])


def _hello_from_signed_4e2d09a(signed: bytes, signature: bytes) -> Hello:
    """`Hello.from_signed` as it was at 4e2d09a (construct, then encode again)."""
    from p2pay.core.messages import _HELLO_KEYS, MAX_SERVICES, _check_signature, _signed_map

    fields = _signed_map(signed, DOMAIN_HELLO, _HELLO_KEYS)
    _check_signature(signature, remote=True)
    services_raw = fields["services"]
    if not isinstance(services_raw, list):
        raise DecodeError("services must be an array")
    if len(services_raw) > MAX_SERVICES:
        raise DecodeError(f"more than {MAX_SERVICES} services")
    services = tuple(ServiceTerms.from_cbor(item) for item in services_raw)
    stake_raw = fields["stake"]
    stake = None if stake_raw is None else StakeTerms.from_cbor(stake_raw)
    try:
        hello = Hello(
            version=fields["version"],
            ledger=fields["ledger"],
            services=services,
            stake=stake,
            max_in_flight=fields["max_in_flight"],
            max_frame=fields["max_frame"],
            account=fields["account"],
            account_proof=fields["account_proof"],
            deadline_horizon=fields["deadline_horizon"],
            signature=signature,
        )
    except LocalProtocolError as exc:
        raise DecodeError(exc.message) from None
    assert hello.signing_bytes == signed
    return hello


def test_hello_from_signed_decides_as_before() -> None:
    """A received hello keeps its signing bytes instead of encoding them again (perf19):
    every field is checked as before, with the same errors, and the hello is the same."""
    evm_ledger = evm_ledger_id(31337, bytes(range(1, 21)))
    bases = [make_hello(), make_hello(ledger=evm_ledger), make_hello(services=(), stake=None)]
    service = {"name": "echo", "price": 10, "max_body": 1024}
    changes: list[dict[str, Any]] = [
        {},
        {"version": 2},
        {"version": -1},
        {"version": "1"},
        {"ledger": b""},
        {"ledger": b"x" * 65},
        {"ledger": "memory"},
        {"ledger": evm_ledger},
        {"account": bytes(31)},
        {"account": "alice"},
        {"account_proof": b"\x01" * 65},
        {"account_proof": 5},
        {"services": [service, service]},
        {"services": [service] * 65},
        {"services": [{"name": "", "price": 1, "max_body": 1}]},
        {"services": [{"name": "x", "price": -1, "max_body": 1}]},
        {"services": [{"name": "x", "price": 1}]},
        {"services": {"name": "x"}},
        {"stake": None},
        {"stake": {"amount": -1, "penalty": 0, "window": 1}},
        {"stake": [1, 2, 3]},
        {"max_in_flight": 0},
        {"max_in_flight": 2**64},
        {"max_frame": 4095},
        {"max_frame": b"big"},
        {"deadline_horizon": 0},
        {"deadline_horizon": True},
    ]
    for base in bases:
        fields = codec.decode(base.signing_bytes)
        assert isinstance(fields, dict)
        for change in changes:
            signed = codec.encode({**fields, **change})
            for signature in (base.signature, bytes(64), bytes(63)):
                outcomes: list[Any] = []
                for parse in (Hello.from_signed, _hello_from_signed_4e2d09a):
                    try:
                        hello = parse(signed, signature)
                        outcomes.append(
                            (hello, hello.signing_bytes, hello.signature, type(hello.version))
                        )
                    except Exception as exc:
                        outcomes.append((type(exc), str(exc)))
                assert outcomes[0] == outcomes[1], change
