"""Property tests for p2pay.core.messages (specs/invariants.md INV-9, INV-11, INV-18).

* every message kind survives build -> to_frame -> decode_frame unchanged, and its
  signature still verifies;
* a single changed byte anywhere in a valid frame either makes decoding fail with a
  `RemoteProtocolError` (DecodeError, WrongDomain, ...) or yields a message that differs
  from the original or whose signature no longer verifies: never an unhandled exception,
  never the same signed message with a different meaning;
* arbitrary bytes, and every prefix of a valid frame, decode or fail the same typed way.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pay.core.errors import ErrorCode, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    MAX_SERVICE_NAME,
    MIN_FRAME_LIMIT,
    PROTOCOL_VERSION,
    Hello,
    Refusal,
    Request,
    Response,
    ServiceTerms,
    StakeTerms,
    decode_frame,
)

KEYS = [Keypair.from_seed(bytes([i]) * 32) for i in (1, 2, 3, 4)]
MAX_U64 = 2**64 - 1
MAX_YOCTO = 2**128 - 1

keys = st.sampled_from(KEYS)
ledgers = st.binary(min_size=1, max_size=64)
channels = st.binary(min_size=32, max_size=32)
numbers = st.integers(1, MAX_U64)
u64 = st.integers(0, MAX_U64)
amounts = st.one_of(
    st.integers(0, MAX_YOCTO),
    st.sampled_from([0, 1, 23, 24, 2**64 - 1, 2**64, MAX_YOCTO]),
)
service_names = st.text(min_size=1, max_size=MAX_SERVICE_NAME).filter(
    lambda s: len(s.encode("utf-8")) <= MAX_SERVICE_NAME
)
bodies = st.binary(max_size=300)
statuses = st.sampled_from(["OK", *(code.value for code in ErrorCode)])


@st.composite
def requests(draw: st.DrawFn) -> tuple[Request, Keypair]:
    key = draw(keys)
    request = Request.create(
        key,
        ledger=draw(ledgers),
        channel=draw(channels),
        n=draw(numbers),
        paid=draw(amounts),
        price=draw(amounts),
        service=draw(service_names),
        body=draw(bodies),
        deadline=draw(u64),
    )
    return request, key


@st.composite
def responses(draw: st.DrawFn) -> tuple[Response, Keypair]:
    request, _ = draw(requests())
    key = draw(keys)
    status = draw(statuses)
    price = draw(amounts) if status == "OK" else 0
    spent = draw(st.integers(price, MAX_YOCTO))
    response = Response.create(
        key, request=request, status=status, price=price, spent=spent, body=draw(bodies)
    )
    return response, key


service_terms = st.builds(ServiceTerms, name=service_names, price=amounts, max_body=u64)
stake_terms = st.builds(StakeTerms, amount=amounts, penalty=amounts, claim_window_ms=u64)


@st.composite
def hellos(draw: st.DrawFn) -> tuple[Hello, Keypair]:
    key = draw(keys)
    unsigned = Hello(
        version=draw(st.one_of(st.just(PROTOCOL_VERSION), u64)),
        ledger=draw(ledgers),
        services=tuple(draw(st.lists(service_terms, max_size=4, unique_by=lambda s: s.name))),
        stake=draw(st.none() | stake_terms),
        max_in_flight=draw(st.integers(1, MAX_U64)),
        max_frame=draw(st.integers(MIN_FRAME_LIMIT, MAX_U64)),
        account=key.public,
        account_proof=b"",
        deadline_horizon=draw(st.integers(1, MAX_U64)),
    )
    return unsigned.with_signature(key.sign(unsigned.signing_bytes)), key


# the p2pay data model, shallow enough to fit in a refusal's details
scalars = st.one_of(
    st.integers(-(2**128), MAX_YOCTO),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-5, 5)), inner, max_size=3),
    ),
    max_leaves=8,
)


def shallow(value: Any, depth: int = 0) -> bool:
    """At most 4 levels of arrays/maps/bignums below the details map (7 allowed)."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return depth < 4 or -(2**64) <= value < 2**64
    if isinstance(value, list):
        return depth < 4 and all(shallow(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth < 4 and all(shallow(v, depth + 1) for v in value.values())
    return True


@st.composite
def refusals(draw: st.DrawFn) -> Refusal:
    anonymous = draw(st.booleans())
    details = draw(st.dictionaries(st.text(max_size=10), values, max_size=4).filter(shallow))
    return Refusal(
        channel=b"" if anonymous else draw(channels),
        n=0 if anonymous else draw(u64),
        code=draw(st.sampled_from(list(ErrorCode))),
        message=draw(st.text(max_size=100)),
        details=details,
    )


@st.composite
def signed_frames(draw: st.DrawFn) -> tuple[Request | Response | Hello, Keypair]:
    return draw(st.one_of(requests(), responses(), hellos()))


# ----------------------------------------------------------------------------- round trips


@given(requests())
def test_request_round_trip(pair: tuple[Request, Keypair]) -> None:
    request, key = pair
    decoded = decode_frame(request.to_frame())
    assert isinstance(decoded, Request)
    assert decoded == request
    assert decoded.body == request.body
    assert decoded.signing_bytes == request.signing_bytes
    assert decoded.hash == request.hash
    assert decoded.body_matches()
    assert decoded.verify(key.public)
    assert decoded.to_frame() == request.to_frame()


@given(responses())
def test_response_round_trip(pair: tuple[Response, Keypair]) -> None:
    response, key = pair
    decoded = decode_frame(response.to_frame())
    assert isinstance(decoded, Response)
    assert decoded == response
    assert decoded.body == response.body
    assert decoded.hash == response.hash
    assert decoded.body_matches()
    assert decoded.verify(key.public)
    assert decoded.price <= decoded.spent


@given(hellos())
def test_hello_round_trip(pair: tuple[Hello, Keypair]) -> None:
    hello, key = pair
    decoded = decode_frame(hello.to_frame())
    assert isinstance(decoded, Hello)
    assert decoded == hello
    assert decoded.verify(key.public)
    assert decoded.to_frame() == hello.to_frame()


@given(refusals())
def test_refusal_round_trip(refusal: Refusal) -> None:
    decoded = decode_frame(refusal.to_frame())
    assert isinstance(decoded, Refusal)
    assert decoded == refusal
    assert decoded.to_frame() == refusal.to_frame()


# ----------------------------------------------------------------------------- mutations


@settings(max_examples=300)
@given(st.one_of(signed_frames(), refusals()), st.data())
def test_single_byte_mutation_is_caught(
    original: tuple[Request | Response | Hello, Keypair] | Refusal, data: st.DataObject
) -> None:
    message, key = original if isinstance(original, tuple) else (original, None)
    frame = message.to_frame()
    index = data.draw(st.integers(0, len(frame) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != frame[index]), label="byte")
    mutated = frame[:index] + bytes([byte]) + frame[index + 1 :]
    try:
        decoded = decode_frame(mutated)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return
    # it decoded: the encoding is canonical, so the message is exactly what the mutated
    # bytes say, which is not the original (Python's == would call False and 0 equal) ...
    assert decoded.to_frame() == mutated
    # ... and a signed one that carries the same signature no longer verifies, unless
    # what changed is outside the signed bytes (the body, which its hash still binds)
    if key is not None and isinstance(decoded, Request | Response | Hello):
        if decoded.verify(key.public):
            assert decoded.signing_bytes == message.signing_bytes
            assert isinstance(decoded, Request | Response)
            assert not decoded.body_matches()


@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_fail_typed(data: bytes) -> None:
    try:
        decode_frame(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)


@settings(max_examples=50)
@given(signed_frames())
def test_every_proper_prefix_is_refused(pair: tuple[Request | Response | Hello, Keypair]) -> None:
    frame = pair[0].to_frame()
    for end in range(len(frame)):
        try:
            decode_frame(frame[:end])
        except RemoteProtocolError:
            continue
        raise AssertionError(f"prefix of {end} bytes decoded")
