"""11. A strict codec on ``cbor2`` / p2pay's hand-written codec (issue 18, item 3; <= 1.0).

Issue 18 asks for frames decoded and encoded by the compiled ``cbor2`` library, made as
strict as `specs/protocol.md` section 6 by two checks, and for that codec to replace the
hand-written one (`p2pay.core.codec`) only if it is faster. This benchmark measures that
strict cbor2 codec (`strict_decode`, `strict_encode`, below) against the hand-written one on
the frames a paid call carries, doing what `p2pay.core.messages.decode_frame` and
``to_frame`` do with CBOR:

* decode: the frame (``[kind, signed, signature, body]``, depth limit 8), then the signed
  map inside it (its own item, depth limit 4);
* encode: the signed map, then the frame around it.

`strict_decode` is ``cbor2.loads`` followed by

1. a walk of the value that refuses what the data model does not have: anything but
   ``int``/``bytes``/``str``/``list``/``dict``/``True``/``False``/``None`` (so floats,
   ``undefined``, other simple values and every tag cbor2 turns into another type), an
   integer outside ``[-(2**128), 2**128)``, a map key that is not text, and nesting deeper
   than the limit, counting a bignum (an integer beyond 64 bits) as a level as section 6
   does; it also checks that each map's text keys increase in canonical order (for text
   keys, bytewise order of the encodings is length first, then bytewise);
2. a re-encode-and-compare: ``cbor2.dumps`` of the value must be the input, byte for byte.
   That refuses every other encoding of an accepted value: non-shortest heads, indefinite
   lengths, duplicate keys (the decoded map has fewer entries), bignums that fit in 64 bits
   or have a leading zero, the tags cbor2 decodes transparently (self-describe 55799,
   string references, shared values), trailing bytes (cbor2 ignores them).

Maps with integer keys (the model allows them; no p2pay message has them) and non-ASCII
keys are handed to the hand-written decoder (cbor2's ``canonical=True`` sorts integer keys
length-first, which is not RFC 8949's order), as is a depth limit above cbor2's own (400).
Before timing, both codecs decode every hex item of `specs/vectors/` and seeded random
mutations of them (each byte flipped, truncations, extensions), and the benchmark reports
how many inputs they disagree on (accepted by one only, or to different values): the
figure is meaningless if that is not 0.

Each timing is the fastest of many short runs, the two codecs timed in turn (so both see
the same machine; the fastest run is the least disturbed by other processes). The ratio is
the median over rounds of (strict cbor2 decode + encode) / (hand-written decode + encode)
of a request frame; the receipt's, and decode and encode apart, beside it.
"""

from __future__ import annotations

import json
import random
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import Result, load_average, median, spread
from p2pay.core import codec
from p2pay.core.errors import DecodeError, FrameTooLarge, LocalProtocolError

NAME = "codec_cbor2"
TITLE = "strict cbor2 codec / hand-written codec, decode + encode of a request frame"
TARGET = 1.0

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "specs" / "vectors"

SIZE: dict[str, dict[str, int]] = {
    "smoke": {"rounds": 1, "number": 200, "repeat": 2, "mutations": 2},
    "quick": {"rounds": 3, "number": 2_000, "repeat": 9, "mutations": 20},
    "full": {"rounds": 7, "number": 2_000, "repeat": 25, "mutations": 100},
}

_U64 = (1 << 64) - 1
_LOW = -(1 << 128)
_CBOR2_DEPTH = 300  # below cbor2's own nesting limit (400)


def cbor2_kind() -> str:
    """cbor2's version and whether its compiled extension is what runs."""
    import importlib.metadata

    import cbor2

    version = importlib.metadata.version("cbor2")
    compiled = (
        getattr(cbor2.loads, "__module__", "") in ("_cbor2", "cbor2._cbor2")
        or type(cbor2.loads).__name__ == "builtin_function_or_method"
    )
    return f"cbor2 {version} ({'compiled extension' if compiled else 'pure Python'})"


class _Fallback(Exception):
    """The value has a map the cbor2 path does not handle (integer or non-ASCII keys)."""


def _walk(value: Any, depth: int, max_depth: int) -> None:
    t = type(value)
    if t is bytes or t is str or value is None or value is True or value is False:
        return
    if t is int:
        if -_U64 - 1 <= value <= _U64:
            return
        if not _LOW <= value <= codec.UINT128_MAX:
            raise DecodeError("integer outside [-(2**128), 2**128)")
        if depth >= max_depth:
            raise DecodeError(f"bignum nests deeper than {max_depth}")
        return
    if depth >= max_depth:
        raise DecodeError(f"container nests deeper than {max_depth}")
    if t is list:
        inner = depth + 1
        for item in value:
            _walk(item, inner, max_depth)
        return
    if t is dict:
        previous: tuple[int, str] | None = None
        for key in value:
            if type(key) is not str or not key.isascii():
                if type(key) is int or type(key) is str:
                    raise _Fallback
                raise DecodeError(f"map key of type {type(key).__name__} is not allowed")
            here = (len(key), key)
            if previous is not None and here <= previous:
                raise DecodeError("map keys not in canonical order, or duplicated")
            previous = here
        inner = depth + 1
        for item in value.values():
            _walk(item, inner, max_depth)
        return
    raise DecodeError(f"{t.__name__} is not in the data model")


def strict_decode(
    data: bytes, *, max_size: int = codec.MAX_FRAME_SIZE, max_depth: int = codec.MAX_DEPTH
) -> codec.CborValue:
    """`p2pay.core.codec.decode`'s contract, on cbor2 plus the two checks above."""
    import cbor2

    if type(data) is not bytes:
        return codec.decode(data, max_size=max_size, max_depth=max_depth)
    if len(data) > max_size:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds the limit of {max_size} bytes")
    if max_depth > _CBOR2_DEPTH:
        return codec.decode(data, max_size=max_size, max_depth=max_depth)
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, RecursionError, MemoryError) as exc:
        raise DecodeError(f"not CBOR: {exc}") from None
    try:
        _walk(value, 0, max_depth)
    except _Fallback:
        return codec.decode(data, max_size=max_size, max_depth=max_depth)
    except RecursionError:
        raise DecodeError("nests too deeply") from None
    try:
        again = cbor2.dumps(value)
    except (cbor2.CBOREncodeError, RecursionError, ValueError) as exc:
        raise DecodeError(f"does not re-encode: {exc}") from None
    if again != data:
        raise DecodeError("not the canonical encoding of its value")
    return value  # type: ignore[no-any-return]


def strict_encode(value: Any, *, max_depth: int = codec.MAX_DEPTH) -> bytes:
    """`p2pay.core.codec.encode`'s contract for values of exact model types, on cbor2
    (``canonical=True`` sorts text keys in RFC 8949 order); the walk refuses the rest."""
    import cbor2

    try:
        _walk_encode(value, 0, max_depth)
    except _Fallback:
        return codec.encode(value, max_depth=max_depth)
    except DecodeError as exc:
        raise LocalProtocolError(str(exc)) from None
    return cbor2.dumps(value, canonical=True)  # type: ignore[no-any-return]


def _walk_encode(value: Any, depth: int, max_depth: int) -> None:
    t = type(value)
    if t is dict:
        if depth >= max_depth:
            raise DecodeError(f"map nests deeper than {max_depth}")
        for key in value:
            if type(key) is not str or not key.isascii():
                raise _Fallback
        inner = depth + 1
        for item in value.values():
            _walk_encode(item, inner, max_depth)
        return
    if t is list or t is tuple or t is bytearray or t is memoryview:
        if t is not list:
            raise _Fallback  # cbor2 writes a memoryview as an array: leave these to codec
        if depth >= max_depth:
            raise DecodeError(f"array nests deeper than {max_depth}")
        for item in value:
            _walk_encode(item, depth + 1, max_depth)
        return
    _walk(value, depth, max_depth)


# ---------------------------------------------------------------------------
# agreement


def _vector_items() -> Iterator[bytes]:
    def hexes(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, item in node.items():
                if key.endswith("_hex") and isinstance(item, str):
                    yield item
                elif key.endswith("_hex") and isinstance(item, list):
                    yield from (x for x in item if isinstance(x, str))
                else:
                    yield from hexes(item)
        elif isinstance(node, list):
            for item in node:
                yield from hexes(item)

    for path in sorted(VECTORS.glob("*.json")):
        for text in hexes(json.loads(path.read_text())):
            try:
                yield bytes.fromhex(text)
            except ValueError:
                continue


HOSTILE = [
    b"",
    b"\x01\x02",  # trailing byte
    b"\x81" * 20 + b"\x00",  # too deep
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # huge declared array
    b"\x5b\x00\xff\xff\xff\xff\xff\xff\xff",  # huge declared byte string
    b"\x9f\x01\xff",  # indefinite array
    b"\xd8\x1c\x81\xd8\x1d\x00",  # shared value referring to itself
    b"\xd9\xd9\xf7\x01",  # self-describe tag
    b"\xd9\x01\x00\x82\x64aaaa\xd8\x19\x00",  # string references
    b"\xf7",  # undefined
    b"\xf0",  # simple value
    b"\xf9\x3c\x00",  # half float
    b"\x61\xff",  # bad UTF-8
    b"\xc2\x41\x01",  # bignum that fits in 64 bits
    b"\xc2\x49\x00" + b"\x01" * 8,  # bignum with a leading zero
    b"\xc2\x51" + b"\x01" * 17,  # bignum over 128 bits
    b"\xa2\x61a\x01\x61a\x02",  # duplicate key
    b"\xa2\x61b\x01\x61a\x02",  # unsorted keys
    b"\xa1\x81\x01\x01",  # array as a key
    b"\xa1\x41a\x01",  # bytes as a key
    b"\xa1\xf5\x01",  # bool as a key
    b"\xa2\x18\x64\x00\x20\x00",  # integer keys, canonical ({100: 0, -1: 0})
    b"\xa2\x20\x00\x18\x64\x00",  # integer keys, cbor2's length-first order
    b"\xa1\x62\xc3\xa9\x01",  # non-ASCII key
    b"\x18\x01",  # non-shortest
    b"\xc1\x01",  # epoch date tag
    b"\xd8\x1e\x82\x01\x02",  # fraction tag
]


def _outcome(fn: Callable[..., Any], data: bytes, depth: int) -> tuple[str, Any]:
    try:
        return ("accept", fn(data, max_depth=depth))
    except (DecodeError, FrameTooLarge):
        return ("refuse", None)


def agreement(mutations: int, seed: int = 18) -> dict[str, Any]:
    """Decode every vector item and `mutations` seeded mutations of each with both codecs
    (depth limits 8 and 4); count the inputs on which they differ."""
    rng = random.Random(seed)
    inputs = list(dict.fromkeys([*_vector_items(), *HOSTILE]))
    cases: list[bytes] = list(inputs)
    for item in inputs:
        for _ in range(mutations):
            choice = rng.randrange(4)
            if choice == 0 and item:
                i = rng.randrange(len(item))
                cases.append(item[:i] + bytes([rng.randrange(256)]) + item[i + 1 :])
            elif choice == 1 and item:
                cases.append(item[: rng.randrange(len(item))])
            elif choice == 2:
                cases.append(item + bytes([rng.randrange(256)]))
            elif item:
                i = rng.randrange(len(item))
                cases.append(item[:i] + bytes([rng.randrange(256)]) + item[i:])
    differ: list[str] = []
    accepted = 0
    for data in cases:
        for depth in (8, 4):
            a = _outcome(codec.decode, data, depth)
            b = _outcome(strict_decode, data, depth)
            if a != b:
                differ.append(f"{data[:40].hex()} depth {depth}: hand {a[0]}, cbor2 {b[0]}")
            accepted += a[0] == "accept"
    return {"inputs": len(cases) * 2, "accepted": accepted, "disagree": differ}


# ---------------------------------------------------------------------------
# timing


def _frames() -> dict[str, bytes]:
    from benchmarks._harness import sample_frames

    request, receipt = sample_frames(ledger=b"p2pay:sqlite:" + bytes(16))
    return {"request": request, "receipt": receipt}


def _workloads(frame: bytes) -> dict[str, dict[str, Callable[[], Any]]]:
    outer = codec.decode(frame, max_depth=8)
    assert isinstance(outer, list) and isinstance(outer[1], bytes)
    signed = outer[1]
    inner = codec.decode(signed, max_depth=4)

    def dec(fn: Callable[..., Any]) -> Callable[[], Any]:
        def run() -> Any:
            value = fn(frame, max_depth=8)
            return fn(value[1], max_depth=4)

        return run

    def enc(fn: Callable[..., Any]) -> Callable[[], Any]:
        def run() -> Any:
            fn(inner, max_depth=4)
            return fn(outer, max_depth=8)

        return run

    assert dec(strict_decode)() == dec(codec.decode)()
    assert strict_encode(inner, max_depth=4) == codec.encode(inner, max_depth=4) == signed
    assert strict_encode(outer, max_depth=8) == frame
    import cbor2

    return {
        "decode": {"hand": dec(codec.decode), "cbor2": dec(strict_decode)},
        "encode": {"hand": enc(codec.encode), "cbor2": enc(strict_encode)},
        "loads": {"bare": lambda: cbor2.loads(cbor2.loads(frame)[1])},
    }


def _pair(
    a: Callable[[], Any], b: Callable[[], Any], number: int, repeat: int, flip: bool
) -> tuple[float, float]:
    """Microseconds per call of `a` and of `b`: each the fastest of `repeat` timings of
    `number` calls, the two timed in turn (ABBA...) so that both see the same machine."""
    best_a = best_b = float("inf")
    timer_a = timeit.Timer(a)
    timer_b = timeit.Timer(b)
    for i in range(repeat):
        order = (timer_a, timer_b) if (i % 2 == 0) != flip else (timer_b, timer_a)
        for timer in order:
            took = timer.timeit(number)
            if timer is timer_a:
                best_a = min(best_a, took)
            else:
                best_b = min(best_b, took)
    return best_a / number * 1e6, best_b / number * 1e6


def run(size: str, profile_dir: Path | None) -> list[Result]:
    del profile_dir  # nothing to profile: two small CPU loops, timed directly
    p = SIZE[size]
    agree = agreement(p["mutations"])
    frames = _frames()
    work = {name: _workloads(frame) for name, frame in frames.items()}
    us: dict[str, list[float]] = {}
    loads: list[float] = []
    for rnd in range(p["rounds"]):
        loads.append(round(load_average()[0], 2))
        for frame_name in frames:
            for op in ("decode", "encode"):
                fns = work[frame_name][op]
                hand, strict = _pair(
                    fns["hand"], fns["cbor2"], p["number"], p["repeat"], rnd % 2 == 1
                )
                us.setdefault(f"{frame_name}_{op}_hand", []).append(hand)
                us.setdefault(f"{frame_name}_{op}_cbor2", []).append(strict)
            bare = min(
                timeit.repeat(
                    work[frame_name]["loads"]["bare"], number=p["number"], repeat=p["repeat"]
                )
            )
            us.setdefault(f"{frame_name}_bare_cbor2_loads_no_checks", []).append(
                bare / p["number"] * 1e6
            )
    ratios: dict[str, list[float]] = {}
    for frame_name in frames:
        for op in ("decode", "encode"):
            ratios[f"{frame_name}_{op}"] = [
                c / h
                for c, h in zip(
                    us[f"{frame_name}_{op}_cbor2"], us[f"{frame_name}_{op}_hand"], strict=True
                )
            ]
        ratios[f"{frame_name}_decode_encode"] = [
            (dc + ec) / (dh + eh)
            for dc, ec, dh, eh in zip(
                us[f"{frame_name}_decode_cbor2"],
                us[f"{frame_name}_encode_cbor2"],
                us[f"{frame_name}_decode_hand"],
                us[f"{frame_name}_encode_hand"],
                strict=True,
            )
        ]
    req = "request"

    def m(key: str) -> float:
        return median(us[key])

    figures: dict[str, Any] = {
        "cbor2": cbor2_kind(),
        "frame_bytes": {name: len(frame) for name, frame in frames.items()},
        **{f"{k}_us": spread([round(x, 2) for x in v]) for k, v in us.items()},
        **{f"ratio_{k}": round(median(v), 3) for k, v in ratios.items()},
        "ratio_per_round": [round(x, 3) for x in ratios[f"{req}_decode_encode"]],
        "agreement_inputs": agree["inputs"],
        "agreement_accepted_by_both": agree["accepted"],
        "agreement_disagreements": len(agree["disagree"]),
        "rounds": p["rounds"],
        "per_timing": f"fastest of {p['repeat']} x {p['number']:,} calls, hand and cbor2 in turn",
        "loadavg_per_round": loads,
    }
    notes = [
        f"{figures['cbor2']}: request frame ({len(frames[req])} bytes, signed map inside) "
        f"decode {m('request_decode_cbor2'):.2f} us strict cbor2 vs "
        f"{m('request_decode_hand'):.2f} us hand-written, encode "
        f"{m('request_encode_cbor2'):.2f} vs {m('request_encode_hand'):.2f} us (bare "
        f"cbor2.loads of both items, no checks: {m('request_bare_cbor2_loads_no_checks'):.2f} us)",
        f"agreement: {agree['inputs']:,} decodes (vectors, hostile inputs and seeded "
        f"mutations, depth limits 8 and 4), {len(agree['disagree'])} disagreements"
        + (f": {agree['disagree'][:3]}" if agree["disagree"] else ""),
    ]
    return [
        Result(
            name=NAME,
            title=TITLE,
            target_op="<=",
            target=TARGET,
            ratio=median(ratios[f"{req}_decode_encode"]),
            ratio_desc="median over rounds of (strict cbor2 decode + encode us) / (hand-written "
            "decode + encode us), a request frame and its signed map",
            figures=figures,
            notes=notes,
        )
    ]
