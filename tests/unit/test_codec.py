"""Unit tests for p2pay.core.codec: canonical CBOR (RFC 8949 4.2.1), both directions."""

from __future__ import annotations

import array
import enum

import cbor2
import pytest

from p2pay.core.codec import MAX_DEPTH, MAX_FRAME_SIZE, UINT128_MAX, decode, encode
from p2pay.core.errors import DecodeError, ErrorCode, FrameTooLarge, LocalProtocolError


def h(text: str) -> bytes:
    """Hex (spaces allowed) to bytes."""
    return bytes.fromhex(text)


def refused(data: bytes, match: str, **limits: int) -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        decode(data, **limits)
    assert info.value.code is ErrorCode.MALFORMED
    return info.value


# ----------------------------------------------------------------------------- accepted


EDGE_INTEGERS = [
    (0, "00"),
    (23, "17"),
    (24, "1818"),
    (255, "18ff"),
    (256, "190100"),
    (65535, "19ffff"),
    (65536, "1a00010000"),
    (2**32 - 1, "1affffffff"),
    (2**32, "1b0000000100000000"),
    (2**64 - 1, "1bffffffffffffffff"),
    (2**64, "c249010000000000000000"),
    (2**128 - 1, "c250" + "ff" * 16),
    (-1, "20"),
    (-24, "37"),
    (-25, "3818"),
    (-(2**64), "3bffffffffffffffff"),
    (-(2**64) - 1, "c349010000000000000000"),
    (-(2**128), "c350" + "ff" * 16),
]


@pytest.mark.parametrize(("value", "hex_"), EDGE_INTEGERS)
def test_integer_edges_round_trip(value: int, hex_: str) -> None:
    assert encode(value) == h(hex_)
    decoded = decode(h(hex_))
    assert decoded == value
    assert type(decoded) is int


def test_uint128_max_constant() -> None:
    assert UINT128_MAX == 2**128 - 1
    assert decode(encode(UINT128_MAX)) == UINT128_MAX


# RFC 8949 Appendix A examples that lie inside the p2pay data model.
APPENDIX_A = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (18446744073709551616, "c249010000000000000000"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-18446744073709551617, "c349010000000000000000"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (h("01020304"), "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
        "a56161614161626142616361436164614461656145",
    ),
]


@pytest.mark.parametrize(("value", "hex_"), APPENDIX_A)
def test_rfc8949_appendix_a(value: object, hex_: str) -> None:
    assert encode(value) == h(hex_)
    assert decode(h(hex_)) == value
    assert encode(decode(h(hex_))) == h(hex_)


def test_decoded_types() -> None:
    value = decode(h("a3 00 43010203 01 82 f5 f6 6161 c249010000000000000000"))
    assert value == {0: b"\x01\x02\x03", 1: [True, None], "a": 2**64}
    assert isinstance(value, dict)
    assert type(value[0]) is bytes
    assert type(value[1]) is list
    assert value[1][0] is True


@pytest.mark.parametrize(
    "data",
    [
        h("8301820203820405"),
        bytearray(h("8301820203820405")),
        memoryview(h("8301820203820405")),
        memoryview(h("ff8301820203820405ff"))[1:-1],
    ],
)
def test_decode_accepts_bytes_like(data: bytes | bytearray | memoryview) -> None:
    assert decode(data) == [1, [2, 3], [4, 5]]


def test_decode_memoryview_of_wider_items_reads_raw_bytes() -> None:
    view = memoryview(array.array("H", [0x4141]))  # bytes 41 41 on any host: h'41'
    assert len(view) == 1
    assert view.nbytes == 2
    assert decode(view) == b"A"


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        decode("00")  # type: ignore[arg-type]


def test_encode_accepts_python_variants() -> None:
    assert encode((1, (2, 3))) == encode([1, [2, 3]])
    assert encode(bytearray(b"ab")) == h("426162")
    assert encode(memoryview(b"ab")) == h("426162")  # cbor2 would write an array here

    class Colour(enum.StrEnum):
        RED = "red"

    class Small(enum.IntEnum):
        ONE = 1

    assert encode({Colour.RED: Small.ONE}) == encode({"red": 1})


# ------------------------------------------------------------------------- map key order

MIXED_KEYS: list[int | str] = [
    0,
    1,
    10,
    23,
    24,
    100,
    255,
    256,
    1000000,
    2**32,
    2**64 - 1,
    2**64,  # bignum key (tag 2)
    2**100,
    -1,
    -24,
    -25,
    -1000,
    -(2**64),
    -(2**64) - 1,  # bignum key (tag 3)
    "",
    "a",
    "b",
    "aa",
    "ab",
    "z",
    "zz",
    "\u00fc",
    "a" * 23,
    "a" * 24,
    "b" * 24,
    "a" * 300,
]


def test_map_keys_in_rfc8949_bytewise_order() -> None:
    value = {key: index for index, key in enumerate(MIXED_KEYS)}
    # Independent construction: cbor2 encodes each scalar key and value correctly on its
    # own; sort the entries by the encoded key bytes; prepend the map head.
    entries = sorted((cbor2.dumps(k), cbor2.dumps(v)) for k, v in value.items())
    length_head = bytearray(cbor2.dumps(len(entries)))
    length_head[0] |= 0xA0
    expected = bytes(length_head) + b"".join(k + v for k, v in entries)
    encoded = encode(value)
    assert encoded == expected
    assert decode(encoded) == value
    assert cbor2.loads(encoded) == value


def test_map_keys_in_rfc8949_order_for_any_insertion_order() -> None:
    forward = {key: 0 for key in MIXED_KEYS}
    backward = {key: 0 for key in reversed(MIXED_KEYS)}
    assert encode(forward) == encode(backward)


def test_length_first_order_is_not_rfc8949_order() -> None:
    # RFC 8949 compares encoded keys bytewise: 100 (0x1864) < -1 (0x20) and
    # "b" (0x6162) < "aa" (0x626161). RFC 7049 "length-first" order, which is what
    # cbor2's canonical=True produces, puts -1 before 100: it is refused on decode.
    assert encode({-1: 0, 100: 0, "aa": 0, "b": 0}) == h("a4 1864 00 20 00 6162 00 626161 00")
    refused(h("a4 20 00 1864 00 6162 00 626161 00"), "canonical order")
    refused(h("a4 1864 00 20 00 626161 00 6162 00"), "canonical order")


def test_nested_maps_have_their_own_order() -> None:
    assert decode(h("a2 01 a1 02 00 02 a1 01 00")) == {1: {2: 0}, 2: {1: 0}}


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "hex_",
    [
        "1805",  # 5 in 2 bytes
        "1817",  # 23 in 2 bytes
        "190017",
        "1900ff",
        "1a0000ffff",
        "1b00000000ffffffff",
        "3817",  # -24 in 2 bytes
        "3900ff",
        "580161",  # byte string length 1 in 2 bytes
        "78016161",  # text string length 1 in 2 bytes
        "790001 61",
        "980100",  # array length 1 in 2 bytes
        "b8010000",  # map length 1 in 2 bytes
        "d802 49010000000000000000",  # tag 2 in 2 bytes
        "c2 5809 010000000000000000",  # bignum length in 2 bytes
        "81 1805",  # nested
        "a1 1801 00",  # as a key
    ],
)
def test_refuses_non_shortest_arguments(hex_: str) -> None:
    refused(h(hex_), "non-shortest")


@pytest.mark.parametrize(
    "hex_", ["1c", "1d", "1e", "3c", "5c", "7d", "9e", "bc", "dc", "c25c", "82 01 1e"]
)
def test_refuses_reserved_additional_info(hex_: str) -> None:
    refused(h(hex_), "reserved additional information")


@pytest.mark.parametrize(
    "hex_",
    [
        "5f 4101 ff",  # indefinite byte string
        "7f 6161 ff",  # indefinite text string
        "9f ff",  # indefinite array
        "9f 01 02 ff",
        "bf ff",  # indefinite map
        "bf 6161 01 ff",
        "1f",
        "3f",
        "df",
        "c2 5f 4101 ff",
        "82 01 9f ff",
    ],
)
def test_refuses_indefinite_lengths(hex_: str) -> None:
    refused(h(hex_), "indefinite")


@pytest.mark.parametrize("hex_", ["ff", "81 ff", "a1 01 ff"])
def test_refuses_break_codes(hex_: str) -> None:
    refused(h(hex_), "break")


@pytest.mark.parametrize(
    ("hex_", "match"),
    [
        ("f90000", "floating-point"),  # 0.0 half
        ("f93c00", "floating-point"),  # 1.0 half
        ("f97e00", "floating-point"),  # NaN
        ("fa47c35000", "floating-point"),  # 100000.0 single
        ("fb3ff199999999999a", "floating-point"),  # 1.1 double
        ("f7", "undefined"),
        ("e0", "simple values"),
        ("f0", "simple values"),  # simple(16)
        ("f3", "simple values"),
        ("f818", "simple values"),
        ("f8ff", "simple values"),  # simple(255)
        ("fc", "reserved"),
        ("fd", "reserved"),
        ("fe", "reserved"),
        ("81 f97c00", "floating-point"),
    ],
)
def test_refuses_floats_and_other_simple_values(hex_: str, match: str) -> None:
    refused(h(hex_), match)


@pytest.mark.parametrize(
    "hex_",
    [
        "c0 74323031332d30332d32315432303a30343a30305a",  # tag 0 (date string)
        "c1 1a514b67b0",  # tag 1 (epoch)
        "c4 82 21 196ab3",  # decimal fraction
        "c5 82 20 03",  # bigfloat
        "d7 44 01020304",  # tag 23
        "d818 45 6449455446",  # tag 24
        "d820 76 687474703a2f2f7777772e6578616d706c652e636f6d",  # tag 32 (URI)
        "d9d9f7 00",  # self-described CBOR
        "db 0000000100000000 00",
    ],
)
def test_refuses_tags_other_than_bignums(hex_: str) -> None:
    refused(h(hex_), "tag")


@pytest.mark.parametrize(
    ("hex_", "match"),
    [
        ("c2 40", "fits in 64 bits"),  # zero-length bignum
        ("c2 4101", "fits in 64 bits"),
        ("c2 48 ffffffffffffffff", "fits in 64 bits"),
        ("c3 48 ffffffffffffffff", "fits in 64 bits"),
        ("c2 49 000000000000000001", "leading zero"),
        ("c2 49 00ffffffffffffffff", "leading zero"),
        ("c3 4a 00010000000000000000", "leading zero"),
        ("c2 51 01" + "00" * 16, "exceeds 128 bits"),  # 2**128
        ("c3 51 01" + "00" * 16, "exceeds 128 bits"),  # -(2**128) - 1
        ("c2 58ff" + "01" * 255, "exceeds 128 bits"),
        ("c2 01", "must enclose a byte string"),
        ("c2 6161", "must enclose a byte string"),
        ("c2 c2 49010000000000000000", "must enclose a byte string"),
        ("c3 80", "must enclose a byte string"),
    ],
)
def test_refuses_bad_bignums(hex_: str, match: str) -> None:
    refused(h(hex_), match)


@pytest.mark.parametrize(
    "hex_",
    [
        "61 ff",
        "61 80",  # lone continuation byte
        "62 c328",  # bad continuation
        "62 c080",  # overlong NUL
        "63 e08080",  # overlong
        "63 eda080",  # UTF-16 surrogate D800
        "62 e6b0",  # truncated multi-byte sequence
        "64 f4908080",  # beyond U+10FFFF
        "a1 61ff 00",  # as a map key
    ],
)
def test_refuses_invalid_utf8(hex_: str) -> None:
    refused(h(hex_), "UTF-8")


def test_duplicate_keys_have_their_own_message() -> None:
    refused(h("a2 6161 01 6161 02"), "duplicate map key")
    refused(h("a2 01 00 01 00"), "duplicate map key")
    refused(h("a2 c249010000000000000000 00 c249010000000000000000 00"), "duplicate")


def test_refuses_unsorted_keys() -> None:
    refused(h("a2 02 00 01 00"), "canonical order")
    refused(h("a2 6162 00 6161 00"), "canonical order")
    refused(h("a2 6161 00 01 00"), "canonical order")  # ints (0x01) sort before text (0x61)
    refused(h("a2 20 00 1864 00"), "canonical order")


@pytest.mark.parametrize(
    ("hex_", "kind"),
    [
        ("a1 4161 00", "bytes"),
        ("a1 f4 00", "bool"),
        ("a1 f5 00", "bool"),
        ("a1 f6 00", "NoneType"),
        ("a1 80 00", "list"),
        ("a1 8101 00", "list"),
        ("a1 a0 00", "dict"),
        ("a1 a10101 00", "dict"),
        ("a2 01 00 4161 00", "bytes"),
    ],
)
def test_refuses_map_keys_other_than_int_or_text(hex_: str, kind: str) -> None:
    refused(h(hex_), f"map key of type {kind}")


def test_bignum_map_keys_are_integers() -> None:
    data = h("a2 1bffffffffffffffff 00 c249010000000000000000 01")
    assert decode(data) == {2**64 - 1: 0, 2**64: 1}
    assert encode({2**64: 1, 2**64 - 1: 0}) == data


@pytest.mark.parametrize(
    "hex_",
    [
        "18",
        "19 01",
        "1a 000001",
        "1b 00000001000000",
        "41",
        "45 01020304",
        "62 61",
        "7818",
        "82 01",
        "a1 6161",
        "a2 01 02 03",
        "c2",
        "c2 49 0100000000000000",
        "d8",
        "83 01 02",
    ],
)
def test_refuses_truncated_input(hex_: str) -> None:
    refused(h(hex_), "truncated")


def test_refuses_empty_input() -> None:
    refused(b"", "empty")


@pytest.mark.parametrize("hex_", ["00 00", "80 00", "a0 ff", "6161 61", "f6 f6"])
def test_refuses_trailing_bytes(hex_: str) -> None:
    refused(h(hex_), "trailing")


@pytest.mark.parametrize(
    "hex_",
    [
        "9b 8000000000000000",  # array of 2**63 items
        "9b ffffffffffffffff",
        "bb ffffffffffffffff",
        "5b ffffffffffffffff",
        "7b ffffffffffffffff",
        "9a ffffffff 00",
        "ba 80000000 00 00",
        "82 9b ffffffffffffffff",
        "c2 5b ffffffffffffffff",
    ],
)
def test_huge_declared_lengths_fail_fast(hex_: str) -> None:
    # fast by construction, not by a stopwatch (issue 16): the declared length is weighed
    # against the input left at the header, before any item is read or space is reserved
    error = refused(h(hex_), "truncated|exceeds 128 bits")
    assert ("declares" in str(error) and "the input ends first" in str(error)) or (
        "exceeds 128 bits" in str(error)
    )


def test_map_length_counts_two_items_per_entry() -> None:
    refused(h("a2 01 02 03"), "truncated")  # 3 bytes left, 2 entries need at least 4
    assert decode(h("a2 01 02 03 04")) == {1: 2, 3: 4}


# ------------------------------------------------------------------------------ limits


def test_max_size_default() -> None:
    assert MAX_FRAME_SIZE == 1 << 20
    just_fits = encode(b"\x00" * (MAX_FRAME_SIZE - 5))  # 5-byte head
    assert len(just_fits) == MAX_FRAME_SIZE
    assert decode(just_fits) == b"\x00" * (MAX_FRAME_SIZE - 5)
    too_big = encode(b"\x00" * (MAX_FRAME_SIZE - 4))
    with pytest.raises(FrameTooLarge) as info:
        decode(too_big)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert isinstance(info.value, DecodeError)


def test_max_size_checked_before_parsing() -> None:
    garbage = h("ff") * 11
    with pytest.raises(FrameTooLarge):
        decode(garbage, max_size=10)
    refused(garbage[:10], "break", max_size=10)
    with pytest.raises(FrameTooLarge):
        decode(memoryview(array.array("I", [0] * 3)), max_size=11)  # 12 bytes


def test_max_size_custom_limit_is_inclusive() -> None:
    assert decode(h("6461626364"), max_size=5) == "abcd"
    with pytest.raises(FrameTooLarge):
        decode(h("6461626364"), max_size=4)
    with pytest.raises(FrameTooLarge):
        decode(b"\x00", max_size=0)


def test_negative_limits_are_caller_errors() -> None:
    with pytest.raises(LocalProtocolError):
        decode(b"\x00", max_size=-1)
    with pytest.raises(LocalProtocolError):
        decode(b"\x00", max_depth=-1)


def nested_arrays(depth: int) -> bytes:
    return b"\x81" * depth + b"\x00"


def nested_maps(depth: int) -> bytes:
    return b"\xa1\x00" * depth + b"\x00"


def test_max_depth_at_the_limit_and_one_past() -> None:
    assert MAX_DEPTH == 16
    value = decode(nested_arrays(MAX_DEPTH))
    for _ in range(MAX_DEPTH):
        assert isinstance(value, list)
        value = value[0]
    assert value == 0
    refused(nested_arrays(MAX_DEPTH + 1), "nests deeper than 16")

    assert decode(nested_maps(MAX_DEPTH)) is not None
    refused(nested_maps(MAX_DEPTH + 1), "nests deeper than 16")

    # Empty containers and bignum tags count as a level too.
    assert decode(b"\x81" * (MAX_DEPTH - 1) + b"\x80") is not None
    refused(b"\x81" * MAX_DEPTH + b"\x80", "nests deeper")
    refused(b"\x81" * MAX_DEPTH + b"\xa0", "nests deeper")
    bignum = h("c249010000000000000000")
    assert decode(b"\x81" * (MAX_DEPTH - 1) + bignum) is not None
    refused(b"\x81" * MAX_DEPTH + bignum, "bignum tag at offset 16 nests deeper")


def test_max_depth_custom() -> None:
    assert decode(b"\x05", max_depth=0) == 5
    refused(b"\x80", "nests deeper than 0", max_depth=0)
    refused(h("c249010000000000000000"), "nests deeper than 0", max_depth=0)
    assert decode(nested_arrays(3), max_depth=3) == [[[0]]]
    refused(nested_arrays(4), "nests deeper than 3", max_depth=3)


def test_extreme_nesting_without_recursion() -> None:
    refused(nested_arrays(200_000), "nests deeper")
    refused(b"\x9f" * 200_000, "indefinite")
    deep = decode(nested_arrays(50_000), max_depth=50_000)  # iterative: no RecursionError
    assert isinstance(deep, list)


# ----------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.0,
        float("nan"),
        float("inf"),
        [1, 2.5],
        {"a": 1.5},
        {"a": [{"b": 0.1}]},
    ],
)
def test_encode_refuses_floats(value: object) -> None:
    with pytest.raises(LocalProtocolError, match="float"):
        encode(value)


@pytest.mark.parametrize(
    "value",
    [1j, {1, 2}, frozenset(), object(), type, range(3), [b"ok", {"x": Ellipsis}]],
)
def test_encode_refuses_other_types(value: object) -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode(value)


@pytest.mark.parametrize("value", [2**128, -(2**128) - 1, 2**200, -(2**1000), [2**128]])
def test_encode_refuses_out_of_range_integers(value: object) -> None:
    with pytest.raises(LocalProtocolError, match="outside"):
        encode(value)


@pytest.mark.parametrize("key", [True, False, None, b"k", (1,), 1.5, 2**128])
def test_encode_refuses_bad_map_keys(key: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode({key: 0})


def test_encode_bools_are_not_ints() -> None:
    assert encode(True) == h("f5")
    assert encode(False) == h("f4")
    assert encode([True, 1, False, 0]) == h("84 f5 01 f4 00")
    assert encode({1: True}) == h("a1 01 f5")


def test_encode_refuses_lone_surrogates() -> None:
    with pytest.raises(LocalProtocolError, match="UTF-8"):
        encode("\ud800")
    with pytest.raises(LocalProtocolError, match="UTF-8"):
        encode({"\udfff": 1})


def test_encode_depth_matches_decode_depth() -> None:
    value: object = 0
    for _ in range(MAX_DEPTH):
        value = [value]
    assert decode(encode(value)) == value
    with pytest.raises(LocalProtocolError, match="deeper"):
        encode([value])
    assert decode(encode([value], max_depth=MAX_DEPTH + 1), max_depth=MAX_DEPTH + 1) == [value]
    with pytest.raises(LocalProtocolError, match="deeper"):
        encode({0: 2**64}, max_depth=1)  # the bignum tag is a second level
    assert encode({0: 2**64}, max_depth=2) == h("a1 00 c249010000000000000000")


def test_encode_refuses_cycles() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(LocalProtocolError):
        encode(cycle)
    with pytest.raises(LocalProtocolError):
        encode(cycle, max_depth=10**9)


def test_every_decode_error_is_malformed_or_frame_too_large() -> None:
    assert issubclass(FrameTooLarge, DecodeError)
    assert DecodeError("x").code is ErrorCode.MALFORMED


@pytest.mark.parametrize("major", range(6))
def test_every_one_byte_argument_is_read_as_before(major: int) -> None:
    """The decoder reads a one-byte argument inline (perf19): for every major type and
    every argument byte, the item decodes to what cbor2 reads, re-encodes to itself, and
    an argument below 24 is refused as non-shortest, as `_long_argument` does; a missing
    argument byte is truncated input."""
    for arg in range(256):
        head = bytes((major << 5 | 24, arg))
        if major in (2, 3):
            data = head + b"a" * arg
        elif major == 4:
            data = head + b"\x00" * arg
        elif major == 5:
            data = head + b"".join(encode(i) + b"\x00" for i in range(arg))
        else:
            data = head
        if arg < 24:
            refused(data, f"non-shortest encoding at offset 0: argument {arg} written in 2 bytes")
            continue
        value = decode(data)
        assert value == cbor2.loads(data)
        assert encode(value) == data
        assert decode(b"\x81" + data) == [value]  # at another offset too
    refused(bytes((major << 5 | 24,)), "truncated input: item at offset 0 needs a 1-byte")


def test_exact_bytes_and_ints_encode_as_their_variants() -> None:
    """The encoder's fast path for exact `bytes` and `int` (perf19) writes what the general
    branches write for a bytearray, a memoryview and an int subclass."""

    class Number(enum.IntEnum):
        N = 0

    for size in (0, 1, 23, 24, 255, 256, 65535, 65536):
        raw = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        assert encode(raw) == encode(bytearray(raw)) == encode(memoryview(raw))
        assert encode([raw]) == b"\x81" + encode(bytearray(raw))
    for value in (0, 1, 23, 24, 255, 256, 2**32, 2**64 - 1, 2**64, 2**128 - 1, -1, -(2**128)):
        assert encode(value) == cbor2.dumps(value)
        assert encode(Number.N) == encode(0)
    with pytest.raises(LocalProtocolError, match="outside"):
        encode(2**128)
