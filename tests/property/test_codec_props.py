"""Property tests for p2pay.core.codec: round trips, canonicality, and total decoding."""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pay.core.codec import MapLayout, decode, encode
from p2pay.core.errors import DecodeError, LocalProtocolError

# Generous limits so that nesting produced by hypothesis never trips them; the limits
# themselves are covered by the unit tests.
DEPTH = 64

INT_EDGES = [
    0,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**64 - 1,
    2**64,
    2**128 - 1,
    -1,
    -24,
    -25,
    -256,
    -257,
    -(2**64),
    -(2**64) - 1,
    -(2**128),
]

integers = st.integers(min_value=-(2**128), max_value=2**128 - 1) | st.sampled_from(INT_EDGES)
texts = st.text(max_size=30)
binaries = st.binary(max_size=40)
keys = integers | texts
scalars: st.SearchStrategy[Any] = (
    integers
    | texts
    | binaries
    | binaries.map(bytearray)
    | binaries.map(lambda raw: memoryview(raw))
    | st.booleans()
    | st.none()
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.lists(children, max_size=6).map(tuple)
        | st.dictionaries(keys, children, max_size=6)
    ),
    max_leaves=12,
)


def normalise(value: Any) -> Any:
    """What decode gives back for a value encode accepts."""
    if isinstance(value, list | tuple):
        return [normalise(item) for item in value]
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items()}
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def check_total(data: bytes) -> None:
    """decode(data) is a value that re-encodes to data exactly, or a DecodeError."""
    try:
        value = decode(data, max_depth=DEPTH)
    except DecodeError:
        return
    assert encode(value, max_depth=DEPTH) == data
    assert cbor2.loads(data) == value  # an independent decoder agrees on accepted input


@settings(max_examples=400, deadline=None)
@given(values)
def test_decode_inverts_encode(value: Any) -> None:
    data = encode(value, max_depth=DEPTH)
    decoded = decode(data, max_depth=DEPTH)
    assert decoded == normalise(value)
    assert encode(decoded, max_depth=DEPTH) == data
    assert cbor2.loads(data) == normalise(value)


@settings(max_examples=300, deadline=None)
@given(values)
def test_decoded_types_are_exact(value: Any) -> None:
    decoded = decode(encode(value, max_depth=DEPTH), max_depth=DEPTH)

    def walk(original: Any, result: Any) -> None:
        if original is True or original is False or original is None:
            assert result is original
        elif isinstance(original, int):
            assert type(result) is int
        elif isinstance(original, str):
            assert type(result) is str
        elif isinstance(original, bytes | bytearray | memoryview):
            assert type(result) is bytes
        elif isinstance(original, list | tuple):
            assert type(result) is list
            for a, b in zip(original, result, strict=True):
                walk(a, b)
        else:
            assert type(result) is dict
            for key, item in original.items():
                walk(item, result[key])

    walk(value, decoded)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(keys, integers | texts | binaries | st.booleans(), max_size=12))
def test_map_order_is_bytewise_order_of_encoded_keys(value: dict[int | str, Any]) -> None:
    # Independent construction from cbor2's encoding of each scalar on its own.
    entries = sorted((cbor2.dumps(key), cbor2.dumps(item)) for key, item in value.items())
    head = bytearray(cbor2.dumps(len(entries)))
    head[0] |= 0xA0
    assert encode(value) == bytes(head) + b"".join(k + v for k, v in entries)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(texts, values, min_size=1, max_size=12), st.data())
def test_map_layout_encodes_like_encode(value: dict[str, Any], data: st.DataObject) -> None:
    """The fixed-key encoder of signing bytes is `encode`, without sorting per call."""
    keys = tuple(data.draw(st.permutations(sorted(value)), label="declared order"))
    layout = MapLayout(keys)
    assert sorted(layout.keys) == sorted(value)
    assert layout.encode(value) == encode(value)
    missing = dict(value)
    missing.pop(keys[0])
    for wrong in (missing, {**missing, keys[0] + "x": 1} if keys[0] + "x" not in value else {}):
        try:
            layout.encode(wrong)
        except LocalProtocolError:
            continue
        raise AssertionError(f"a map without key {keys[0]!r} was encoded")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
@example(b"")
@example(bytes.fromhex("9b8000000000000000"))
@example(bytes.fromhex("a2616101616101"))
def test_any_bytes_decode_to_canonical_value_or_decode_error(data: bytes) -> None:
    check_total(data)


# Random bytes rarely form a valid item; splicing valid heads gives the parser more
# accepted paths to walk.
heads = st.sampled_from(
    [bytes.fromhex(x) for x in ["80", "81", "82", "a0", "a1", "a2", "c2", "c3", "f4", "f5", "f6"]]
)
pieces = st.lists(heads | scalars.map(encode) | st.binary(min_size=1, max_size=3), max_size=8)


@settings(max_examples=600, deadline=None)
@given(pieces)
def test_spliced_fragments_decode_canonically_or_fail(parts: list[bytes]) -> None:
    check_total(b"".join(parts))


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "replace"]),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
)


@settings(max_examples=500, deadline=None)
@given(values, st.lists(mutation, min_size=1, max_size=3))
def test_mutated_encodings_decode_canonically_or_fail(
    value: Any, mutations: list[tuple[str, int, int]]
) -> None:
    data = bytearray(encode(value, max_depth=DEPTH))
    for op, where, byte in mutations:
        if op == "insert":
            data.insert(where % (len(data) + 1), byte)
        elif data:
            index = where % len(data)
            if op == "flip":
                data[index] ^= 1 << (byte % 8)
            elif op == "replace":
                data[index] = byte
            else:
                del data[index]
    check_total(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=48), st.integers(min_value=0, max_value=20))
def test_small_depth_limits_never_raise_anything_else(data: bytes, max_depth: int) -> None:
    try:
        value = decode(data, max_depth=max_depth)
    except DecodeError:
        return
    assert encode(value, max_depth=max_depth) == data
