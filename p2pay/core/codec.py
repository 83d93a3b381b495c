"""Canonical CBOR: RFC 8949 section 4.2.1 "core deterministic encoding", strictly.

Theory of operation
-------------------
Every p2pay message is one CBOR item, and signatures are computed over its bytes, so one
value must have exactly one encoding and a decoder must refuse every other encoding of it.
This module is that single encoding, both ways, over a deliberately small data model:

* integers in ``[-(2**128), 2**128)``: major types 0/1 when the magnitude fits in 64 bits,
  otherwise tag 2 (positive) / tag 3 (negative) bignums with a minimal-length byte string;
* byte strings (``bytes``; ``bytearray``/``memoryview`` are accepted by `encode`);
* text strings (``str``, valid UTF-8);
* arrays (``list``; ``tuple`` is accepted by `encode`);
* maps (``dict``) whose keys are integers or text strings;
* ``True``, ``False`` and ``None``.

Nothing else exists: no floats, no ``undefined``, no other simple values, no tags other
than 2 and 3, no indefinite lengths.

`encode` walks the value once, refusing anything outside the model with
`LocalProtocolError`, and writes every argument in its shortest form. Map entries are
sorted by the bytewise-lexicographic order of their encoded keys (RFC 8949 4.2.1). The
``cbor2`` library is not used for encoding: its ``canonical=True`` sorts map keys
length-first (the RFC 7049 rule, e.g. it puts ``-1`` (0x20) before ``100`` (0x1864)) and
it encodes a ``memoryview`` as an array of integers, so it is not RFC 8949 deterministic.

`decode` is a strict, single-pass, non-recursive parser over the input bytes. Containers
being filled live on an explicit stack whose height is bounded by ``max_depth``, so
hostile nesting cannot exhaust the Python stack. Each item's head is checked for
shortest form before it is used; a declared length is compared with the bytes that
remain before anything is sliced or allocated; map keys are compared, as encoded bytes,
with the previous key of the same map. Anything the parser accepts therefore re-encodes
to exactly the input bytes, and any other input raises `DecodeError` (or its subclass
`FrameTooLarge` for oversized input, checked before parsing starts).

Why hand-written and not ``cbor2`` (issue 18, measured 2026-12-05 by
``python -m benchmarks --only codec_cbor2``, figures in ``benchmarks/RESULTS.md`` section
11): a strict codec on cbor2 needs, after ``cbor2.loads``, a walk refusing what this model
lacks and a re-encode-and-compare for canonical form. On a 323-byte request frame and its
signed map, decode + encode, that costs 1.74x this module's time with cbor2 5.9.0 (its C
extension) and 1.06x with 6.2.1 (0.99x on a receipt): the parse is fast, the checks after it
are not, while this decoder checks shortest form, key order and depth in its one pass. Both
accept and refuse the same on every vector and 120,000 mutated inputs; cbor2 stays what the
tests check this module against.

The module is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from typing import TypeAlias

from p2pay.core.errors import DecodeError, FrameTooLarge, LocalProtocolError

__all__ = [
    "MAX_DEPTH",
    "MAX_FRAME_SIZE",
    "UINT128_MAX",
    "CborKey",
    "CborValue",
    "MapLayout",
    "decode",
    "encode",
]

MAX_FRAME_SIZE: int = 1 << 20
"""Default maximum number of bytes `decode` accepts."""

MAX_DEPTH: int = 16
"""Default maximum nesting of arrays, maps and tags."""

UINT128_MAX = (1 << 128) - 1
"""Largest integer in the data model; the smallest is ``-(2**128)``."""

_UINT64_MAX = (1 << 64) - 1

CborKey: TypeAlias = int | str
"""A map key: an integer or a text string."""

CborValue: TypeAlias = (
    int | bytes | str | bool | list["CborValue"] | dict[CborKey, "CborValue"] | None
)
"""Any value of the data model, as `decode` returns it."""

# Major types, pre-shifted into the high three bits of the initial byte.
_MT_UINT = 0x00
_MT_NINT = 0x20
_MT_BYTES = 0x40
_MT_TEXT = 0x60
_MT_ARRAY = 0x80
_MT_MAP = 0xA0

_TAG_POSITIVE_BIGNUM = 2
_TAG_NEGATIVE_BIGNUM = 3

_SINGLE_BYTES = tuple(bytes((i,)) for i in range(256))

# Smallest argument that needs the 1-, 2-, 4- and 8-byte forms (additional info 24..27).
_SHORTEST_MIN = (24, 0x100, 0x1_0000, 0x1_0000_0000)


# --------------------------------------------------------------------------- encoding


def _head(major: int, arg: int) -> bytes:
    """Initial byte plus argument, in shortest form (``0 <= arg < 2**64``)."""
    if arg < 24:
        return _SINGLE_BYTES[major | arg]
    if arg <= 0xFF:
        return bytes((major | 24, arg))
    if arg <= 0xFFFF:
        return _SINGLE_BYTES[major | 25] + arg.to_bytes(2, "big")
    if arg <= 0xFFFF_FFFF:
        return _SINGLE_BYTES[major | 26] + arg.to_bytes(4, "big")
    return _SINGLE_BYTES[major | 27] + arg.to_bytes(8, "big")


def _encode_int(value: int, depth: int, max_depth: int) -> bytes:
    if value >= 0:
        major, tag, magnitude = _MT_UINT, 0xC2, value
    else:
        major, tag, magnitude = _MT_NINT, 0xC3, -1 - value
    if magnitude < 24:
        return _SINGLE_BYTES[major | magnitude]
    if magnitude <= _UINT64_MAX:
        return _head(major, magnitude)
    if magnitude > UINT128_MAX:
        raise LocalProtocolError(
            "integer outside [-(2**128), 2**128) cannot be encoded",
            details={"bits": value.bit_length()},
        )
    if depth >= max_depth:
        raise LocalProtocolError(f"bignum tag would nest deeper than {max_depth} levels")
    raw = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
    return _SINGLE_BYTES[tag] + _SINGLE_BYTES[_MT_BYTES | len(raw)] + raw


def _encode_text(value: str) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            "text string is not encodable as UTF-8 (lone surrogate?)"
        ) from None
    size = len(raw)
    if size < 24:
        return _SINGLE_BYTES[_MT_TEXT | size] + raw
    return _head(_MT_TEXT, size) + raw


def _encode_key(key: object, depth: int, max_depth: int) -> bytes:
    if isinstance(key, str):
        return _encode_text(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return _encode_int(key, depth, max_depth)
    raise LocalProtocolError(
        f"map key of type {type(key).__name__} is not allowed (only int or str)"
    )


_BYTES_TYPES = (bytes, bytearray, memoryview)
_ARRAY_TYPES = (list, tuple)


def _encode(value: object, depth: int, max_depth: int) -> bytes:
    """Encode ``value`` found inside ``depth`` enclosing containers."""
    # Exact bytes and int first, by type (what signing bytes and frames are made of): the
    # same encoding as the general branches below, without their isinstance chain (a
    # request's signing bytes encode in 4.3 us rather than 5.0, its frame in 1.6 rather
    # than 2.1).
    if type(value) is bytes:
        size = len(value)
        if size < 24:
            return _SINGLE_BYTES[_MT_BYTES | size] + value
        return _head(_MT_BYTES, size) + value
    if type(value) is int:
        return _encode_int(value, depth, max_depth)
    if isinstance(value, str):
        return _encode_text(value)
    # bool before int: True and False are ints in Python.
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return _encode_int(value, depth, max_depth)
    if isinstance(value, _BYTES_TYPES):
        raw = bytes(value)
        return _head(_MT_BYTES, len(raw)) + raw
    if isinstance(value, _ARRAY_TYPES):
        if depth >= max_depth:
            raise LocalProtocolError(f"array nests deeper than {max_depth} levels")
        inner = depth + 1
        return _head(_MT_ARRAY, len(value)) + b"".join(
            [_encode(item, inner, max_depth) for item in value]
        )
    if isinstance(value, dict):
        if depth >= max_depth:
            raise LocalProtocolError(f"map nests deeper than {max_depth} levels")
        inner = depth + 1
        entries = [
            (_encode_key(key, inner, max_depth), _encode(item, inner, max_depth))
            for key, item in value.items()
        ]
        # RFC 8949 4.2.1: bytewise order of the encoded keys. Distinct int/str keys have
        # distinct encodings, so the tuples never fall back to comparing the values.
        entries.sort()
        parts = [_head(_MT_MAP, len(entries))]
        for encoded_key, encoded_item in entries:
            parts.append(encoded_key)
            parts.append(encoded_item)
        return b"".join(parts)
    if isinstance(value, float):
        raise LocalProtocolError("floats are not part of the p2pay data model")
    raise LocalProtocolError(f"cannot encode a value of type {type(value).__name__}")


def encode(value: object, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Encode a value of the data model as RFC 8949 core deterministic CBOR.

    Args:
        value: an int in ``[-(2**128), 2**128)``, ``bytes``/``bytearray``/``memoryview``,
            ``str``, ``bool``, ``None``, a ``list``/``tuple`` of values, or a ``dict``
            from int/str keys to values. Subclasses (e.g. ``StrEnum`` members) encode as
            their base type.
        max_depth: maximum nesting of arrays, maps and bignum tags, as in `decode`; the
            default matches `decode`'s, so ``encode`` never produces what ``decode``
            refuses by default. It also turns a self-referencing container into an error.

    Returns:
        The unique canonical encoding of ``value``.

    Raises:
        LocalProtocolError: ``value`` contains a float or another unsupported type, an
            integer out of range, a map key that is not an int or str (bools included),
            a string with a lone surrogate, or nesting deeper than ``max_depth`` (or
            deeper than the Python stack allows, if ``max_depth`` was raised that far).
    """
    try:
        return _encode(value, 0, max_depth)
    except RecursionError:
        raise LocalProtocolError("value nests too deeply to encode") from None


class MapLayout:
    """A map with a fixed set of text keys, encoded without sorting them each time.

    The keys are encoded and put in canonical order once; `encode` then writes each value
    after its key. ``layout.encode(values) == encode(dict(values))`` for every mapping with
    exactly these keys (the signing bytes of every message kind have fixed keys).

    Raises:
        LocalProtocolError: (construction) duplicate keys.
    """

    __slots__ = ("_encoded", "_head", "keys")

    def __init__(self, keys: tuple[str, ...]) -> None:
        pairs = sorted((_encode_text(key), key) for key in keys)
        if len({encoded for encoded, _ in pairs}) != len(pairs):
            raise LocalProtocolError("a map layout's keys must be distinct")
        self.keys: tuple[str, ...] = tuple(key for _, key in pairs)
        self._encoded = tuple(encoded for encoded, _ in pairs)
        self._head = _head(_MT_MAP, len(pairs))

    def encode(self, values: dict[str, object], *, max_depth: int = MAX_DEPTH) -> bytes:
        """Encode `values`, whose keys must be exactly the layout's.

        Raises:
            LocalProtocolError: other keys, or a value `encode` refuses.
        """
        if len(values) != len(self.keys):
            raise LocalProtocolError(f"map has keys {sorted(values)}, expected {sorted(self.keys)}")
        if max_depth < 1:
            raise LocalProtocolError(f"map nests deeper than {max_depth} levels")
        parts = [self._head]
        try:
            for key, encoded in zip(self.keys, self._encoded, strict=True):
                parts.append(encoded)
                parts.append(_encode(values[key], 1, max_depth))
        except KeyError:
            raise LocalProtocolError(
                f"map has keys {sorted(values)}, expected {sorted(self.keys)}"
            ) from None
        except RecursionError:
            raise LocalProtocolError("value nests too deeply to encode") from None
        return b"".join(parts)


# --------------------------------------------------------------------------- decoding


# What `decode` keeps about a container while it fills a nested one: kind, array items,
# map items, entries still expected, pending map key, encoding of the previous map key,
# and whether a map key (rather than a value) comes next.
_Frame: TypeAlias = tuple[int, list[CborValue], dict[CborKey, CborValue], int, CborKey, bytes, bool]
_TOP, _ARRAY, _MAP = 0, 1, 2
_UNUSED_LIST: list[CborValue] = []  # placeholders; never mutated (guarded by the kind)
_UNUSED_DICT: dict[CborKey, CborValue] = {}
_READ_TYPES = (bytes, bytearray)


def _long_argument(buf: bytes, pos: int, n: int, ai: int, start: int) -> tuple[int, int]:
    """Read the 1/2/4/8-byte argument of additional info ``ai`` (24..27) at ``pos``."""
    width = 1 << (ai - 24)
    end = pos + width
    if end > n:
        raise DecodeError(f"truncated input: item at offset {start} needs a {width}-byte argument")
    arg = buf[pos] if width == 1 else int.from_bytes(buf[pos:end], "big")
    if arg < _SHORTEST_MIN[ai - 24]:
        raise DecodeError(
            f"non-shortest encoding at offset {start}: argument {arg} written in {width + 1} bytes"
        )
    return arg, end


def _bad_additional_info(ai: int, start: int) -> DecodeError:
    if ai == 31:
        return DecodeError(f"indefinite length or break code at offset {start} is not allowed")
    return DecodeError(f"reserved additional information {ai} at offset {start}")


def _bad_simple(ib: int, start: int) -> DecodeError:
    if 0xF9 <= ib <= 0xFB:
        what = "floating-point numbers are not allowed"
    elif ib == 0xF7:
        what = "undefined is not allowed"
    elif ib == 0xFF:
        what = "break code outside an indefinite-length item"
    elif ib >= 0xFC:
        what = f"reserved additional information {ib & 0x1F}"
    else:
        what = "simple values other than false/true/null are not allowed"
    return DecodeError(f"{what} (initial byte 0x{ib:02x} at offset {start})")


def _truncated(start: int, declared: int, what: str) -> DecodeError:
    return DecodeError(
        f"truncated input: {what} at offset {start} declares {declared} but the input ends first"
    )


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = MAX_FRAME_SIZE,
    max_depth: int = MAX_DEPTH,
) -> CborValue:
    """Decode one canonical CBOR item, refusing every non-canonical or foreign encoding.

    Args:
        data: the complete encoding of exactly one item (a ``memoryview`` is read as its
            raw bytes).
        max_size: maximum accepted length of ``data`` in bytes.
        max_depth: maximum nesting of arrays, maps and bignum tags (a scalar at the top
            level has depth 0, ``[]`` has depth 1, ``[[]]`` depth 2).

    Returns:
        The value: ``int``, ``bytes``, ``str``, ``bool``, ``None``, ``list`` or ``dict``
        (keys ``int`` or ``str``). ``encode`` of it gives back ``data`` exactly.

    Raises:
        FrameTooLarge: ``data`` is longer than ``max_size`` (checked before parsing).
        DecodeError: ``data`` is not exactly one item of the data model in core
            deterministic encoding: non-shortest arguments, indefinite lengths, reserved
            additional information, unsorted or duplicate map keys, map keys other than
            int or text, tags other than 2/3, non-canonical or over-128-bit bignums,
            floats or simple values other than false/true/null, invalid UTF-8, truncated
            input, trailing bytes, or nesting deeper than ``max_depth``.
        LocalProtocolError: ``data`` is not bytes-like, or a limit is negative.
    """
    if isinstance(data, _READ_TYPES):
        size = len(data)
    elif isinstance(data, memoryview):
        size = data.nbytes
    else:
        raise LocalProtocolError(f"cannot decode a {type(data).__name__}; bytes expected")
    if max_size < 0 or max_depth < 0:
        raise LocalProtocolError("max_size and max_depth must be non-negative")
    if size > max_size:
        raise FrameTooLarge(
            f"frame of {size} bytes exceeds the limit of {max_size} bytes",
            details={"size": size, "max_size": max_size},
        )
    buf = data if isinstance(data, bytes) else bytes(data)
    n = size
    pos = 0
    # The container being filled lives in local variables (the hot path); its ancestors
    # are saved on `stack`, so len(stack) is the current nesting depth.
    stack: list[_Frame] = []
    kind = _TOP
    arr = _UNUSED_LIST
    mp = _UNUSED_DICT
    remaining = 0
    key: CborKey = 0
    previous = b""  # every key encodes to at least one byte, so any key sorts after this
    want_key = False
    value: CborValue

    while True:
        # ---- read one item starting at pos; a non-empty container is opened, not finished
        if pos >= n:
            if n == 0:
                raise DecodeError("empty input")
            raise DecodeError(f"truncated input: an item is missing at offset {pos}")
        start = pos
        ib = buf[pos]
        pos += 1
        if ib >= 0xE0:  # major type 7
            if ib == 0xF5:
                value = True
            elif ib == 0xF4:
                value = False
            elif ib == 0xF6:
                value = None
            else:
                raise _bad_simple(ib, start)
        else:
            major = ib & 0xE0
            ai = ib & 0x1F
            if ai < 24:
                arg = ai
            elif ai == 24 and pos < n and buf[pos] >= 24:
                # a one-byte argument in shortest form, read inline (every 32-byte id and
                # hash has one); anything else, errors included, is `_long_argument`'s
                arg = buf[pos]
                pos += 1
            elif ai < 28:
                arg, pos = _long_argument(buf, pos, n, ai, start)
            else:
                raise _bad_additional_info(ai, start)

            if major == _MT_TEXT:
                end = pos + arg
                if end > n:
                    raise _truncated(start, arg, "text string length")
                try:
                    value = buf[pos:end].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DecodeError(
                        f"invalid UTF-8 in text string at offset {start}: {exc.reason}"
                    ) from None
                pos = end
            elif major == _MT_UINT:
                value = arg
            elif major == _MT_BYTES:
                end = pos + arg
                if end > n:
                    raise _truncated(start, arg, "byte string length")
                value = buf[pos:end]
                pos = end
            elif major == _MT_MAP:
                if arg > (n - pos) >> 1:  # every entry needs at least two bytes
                    raise _truncated(start, arg, "map size")
                if len(stack) >= max_depth:
                    raise DecodeError(f"map at offset {start} nests deeper than {max_depth}")
                if arg:
                    stack.append((kind, arr, mp, remaining, key, previous, want_key))
                    kind, mp, remaining, previous, want_key = _MAP, {}, arg, b"", True
                    continue
                value = {}
            elif major == _MT_ARRAY:
                if arg > n - pos:  # every element needs at least one byte
                    raise _truncated(start, arg, "array size")
                if len(stack) >= max_depth:
                    raise DecodeError(f"array at offset {start} nests deeper than {max_depth}")
                if arg:
                    stack.append((kind, arr, mp, remaining, key, previous, want_key))
                    kind, arr, remaining = _ARRAY, [], arg
                    continue
                value = []
            elif major == _MT_NINT:
                value = -1 - arg
            else:  # major type 6: only bignums, parsed inline
                if arg != _TAG_POSITIVE_BIGNUM and arg != _TAG_NEGATIVE_BIGNUM:
                    raise DecodeError(f"tag {arg} at offset {start} is not allowed")
                if len(stack) >= max_depth:
                    raise DecodeError(f"bignum tag at offset {start} nests deeper than {max_depth}")
                if pos >= n:
                    raise DecodeError(f"truncated input: bignum tag at offset {start} is empty")
                content = buf[pos]
                if content & 0xE0 != _MT_BYTES:
                    raise DecodeError(f"bignum tag at offset {start} must enclose a byte string")
                content_start = pos
                pos += 1
                ai = content & 0x1F
                if ai < 24:
                    length = ai
                elif ai < 28:
                    length, pos = _long_argument(buf, pos, n, ai, content_start)
                else:
                    raise _bad_additional_info(ai, content_start)
                if length > 16:
                    raise DecodeError(f"bignum at offset {start} exceeds 128 bits")
                end = pos + length
                if end > n:
                    raise _truncated(content_start, length, "bignum length")
                if length <= 8:
                    raise DecodeError(
                        f"bignum at offset {start} fits in 64 bits; major type 0/1 must be used"
                    )
                if buf[pos] == 0:
                    raise DecodeError(f"bignum at offset {start} has a leading zero byte")
                magnitude = int.from_bytes(buf[pos:end], "big")
                pos = end
                value = magnitude if arg == _TAG_POSITIVE_BIGNUM else -1 - magnitude

        # ---- hand the finished item to its container, closing containers that fill up
        while True:
            if kind == _MAP:
                if want_key:
                    if type(value) is str or type(value) is int:
                        encoded_key = buf[start:pos]
                        if encoded_key <= previous:
                            if encoded_key == previous:
                                raise DecodeError(f"duplicate map key at offset {start}")
                            raise DecodeError(
                                f"map key at offset {start} is not in canonical order "
                                "(keys must increase bytewise by encoding)"
                            )
                        previous = encoded_key
                        key = value
                        want_key = False
                        break
                    raise DecodeError(
                        f"map key of type {type(value).__name__} ending at offset {pos} "
                        "is not allowed (only int or text)"
                    )
                mp[key] = value
                remaining -= 1
                if remaining:
                    want_key = True
                    break
                value = mp
            elif kind == _ARRAY:
                arr.append(value)
                remaining -= 1
                if remaining:
                    break
                value = arr
            else:
                if pos != n:
                    raise DecodeError(
                        f"{n - pos} trailing byte(s) after the top-level item (offset {pos})"
                    )
                return value
            kind, arr, mp, remaining, key, previous, want_key = stack.pop()
