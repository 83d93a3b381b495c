"""Fuzzing the parsers a peer's bytes reach first (issue 7, deliverable 2; INV-17, INV-18).

* `FrameReader` (p2pay/net/framing.py) over random chunkings of random, valid and mutated
  byte streams, compared with an independent reference framer (specs/protocol.md 5.2).
* `codec.decode` (p2pay/core/codec.py): a value that re-encodes to the input, or DecodeError.
* `decode_frame` and `Request/Response/Hello.from_signed` (p2pay/core/messages.py): a
  message that re-encodes to the input, or a typed `RemoteProtocolError` with a wire code.

The quick tests run in the normal suite (hypothesis, plus a seeded loop of 20,000
inputs). `test_slow_million_inputs` feeds well over 1,000,000 mutated inputs through a
direct seeded loop (no shrinking machinery) and asserts how many it fed.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import random
import re
import time
import tracemalloc
from typing import Any

import pytest
from hardening_support import (
    ALICE,
    BOB,
    LEDGER_ID,
    Mutator,
    check_decode,
    check_frame,
    check_from_signed,
    chunked,
    drive_reader,
    reference_frames,
    seed_corpus,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pay.core import codec
from p2pay.core.errors import DecodeError, FrameTooLarge
from p2pay.core.messages import Hello, Request, Response, decode_frame
from p2pay.net.framing import frame

CORPUS = seed_corpus()
SIGNED_PARTS = [
    (type(m), m.signing_bytes, m.signature, getattr(m, "body", b""))
    for m in (decode_frame(f) for f in CORPUS)
    if isinstance(m, Hello | Request | Response)
]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# FrameReader


def _stream(payloads: list[bytes]) -> bytes:
    return b"".join(frame(p) for p in payloads)


@st.composite
def byte_streams(draw: Any) -> bytes:
    """A valid stream of frames, a mutated one, or noise."""
    kind = draw(st.sampled_from(("valid", "mutated", "noise", "prefix-games")))
    if kind == "noise":
        return bytes(draw(st.binary(max_size=600)))
    if kind == "prefix-games":
        # non-minimal, over-long, huge and empty prefixes between good frames
        parts = draw(
            st.lists(
                st.sampled_from(
                    [
                        frame(b"ok"),
                        frame(b""),
                        b"\x80\x00",
                        b"\xff" * 9 + b"\x01",
                        b"\xff" * 8 + b"\x7f",
                        b"\x81\x80\x80\x80\x00",
                        b"\x80",
                        frame(bytes(300)),
                    ]
                ),
                max_size=6,
            )
        )
        return b"".join(parts)
    payloads = draw(st.lists(st.sampled_from(CORPUS) | st.binary(max_size=300), max_size=6))
    data = bytearray(_stream(payloads))
    if kind == "mutated" and data:
        mutator = Mutator(draw(st.randoms(use_true_random=False)), [bytes(data)])
        data = bytearray(mutator.mutate())
    return bytes(data)


@FAST
@given(
    data=byte_streams(),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=50),
    max_frame=st.sampled_from([1, 16, 299, 300, 4096, 1 << 20]),
)
def test_frame_reader_matches_the_reference_on_every_chunking(
    data: bytes, sizes: list[int], max_frame: int
) -> None:
    """Any chunking of any byte stream gives the reference's frames, then the reference's
    ending (clean EOF, EOF mid-frame, bad prefix, or FRAME_TOO_LARGE before the body)."""
    cycle = iter(sizes * (len(data) + 1))
    got = drive_reader(chunked(data, cycle), max_frame)
    assert got == reference_frames(data, max_frame)
    # one byte at a time gives the same answer
    assert drive_reader([data[i : i + 1] for i in range(len(data))], max_frame) == got


def test_frame_reader_never_buffers_an_announced_giant() -> None:
    """Slowloris-style: a prefix announcing 2**63-1 bytes is refused at once, whatever
    follows, and a frame just over the limit is refused before its body is read."""
    frames, end = drive_reader([b"\xff" * 8 + b"\x7f", b"x" * 1000], 1 << 20)
    assert (frames, end) == ([], "too-large")
    body = bytes(4097)
    frames, end = drive_reader(chunked(frame(body), iter([1] * 10_000)), 4096)
    assert (frames, end) == ([], "too-large")


# ---------------------------------------------------------------------------
# CBOR and message parsers (hypothesis)


@FAST
@given(st.binary(max_size=400))
def test_decode_noise_is_a_value_or_decode_error(data: bytes) -> None:
    check_decode(data)
    check_decode(data, max_depth=4, max_size=64)
    check_frame(data)


@settings(FAST, max_examples=100)
@given(st.randoms(use_true_random=False))
def test_mutated_frames_decode_canonically_or_fail_typed(rng: random.Random) -> None:
    mutator = Mutator(rng, CORPUS)
    for _ in range(20):
        data = mutator.mutate()
        check_decode(data)
        check_frame(data)
        check_frame(data, max_size=128)


@FAST
@given(st.randoms(use_true_random=False), st.binary(max_size=70), st.binary(max_size=20))
def test_from_signed_is_total(rng: random.Random, signature: bytes, body: bytes) -> None:
    """Mutated signing bytes, any signature length and body: a message or a typed error."""
    kind, signed, good_signature, good_body = rng.choice(SIGNED_PARTS)
    mutated = Mutator(rng, [signed]).mutate()
    for sig in (good_signature, signature):
        for b in (good_body, body):
            check_from_signed(kind, mutated, sig, b)
            check_from_signed(kind, signed, sig, b)
    # another kind's signing bytes: WRONG_DOMAIN, never a message of this kind
    for other, other_signed, other_sig, other_body in SIGNED_PARTS:
        if other is not kind:
            assert check_from_signed(kind, other_signed, other_sig, other_body) is None


@pytest.mark.parametrize(
    "head", [b"\x81", b"\x9f", b"\xa1\x00", b"\xc2", b"\xd8\x02", b"\x5f", b"\x7f"]
)
def test_deep_nesting_is_a_decode_error_not_a_recursion_error(head: bytes) -> None:
    bomb = head * 200_000 + b"\x00"
    with pytest.raises(DecodeError) as whole:
        codec.decode(bomb, max_size=len(bomb))
    with pytest.raises(DecodeError) as framed:
        decode_frame(b"\x84\x01" + bomb, max_size=len(bomb) + 2)
    # refused within the first bytes of the 200 kB bomb: the decoder stops at the depth
    # limit (or the first bad item) instead of walking the rest (an offset, not a stopwatch)
    for error in (whole.value, framed.value):
        offset = re.search(r"at offset (\d+)", str(error))
        assert offset is not None and int(offset[1]) < 64, error


@pytest.mark.parametrize(
    "data",
    [
        b"\x5b" + b"\xff" * 8,  # byte string of 2**64-1 bytes
        b"\x7b" + b"\x7f" + b"\xff" * 7,  # text string of 2**63-1 bytes
        b"\x9b" + b"\xff" * 8,  # array of 2**64-1 items
        b"\xbb" + b"\xff" * 8,  # map of 2**64-1 pairs
        b"\x9a\xff\xff\xff\xff" + b"\x00" * 64,  # 4 billion items, 64 present
        b"\xc2\x5b" + b"\xff" * 8,  # bignum with a giant length
    ],
)
def test_length_lies_allocate_nothing(data: bytes) -> None:
    """A head announcing more than the bytes present is refused before any allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            codec.decode(data)
        with pytest.raises(DecodeError):
            decode_frame(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_oversized_input_is_frame_too_large_before_parsing() -> None:
    big = b"\x5a\x00\x10\x00\x01" + bytes(1 << 20)
    with pytest.raises(FrameTooLarge):
        decode_frame(big)
    with pytest.raises(FrameTooLarge):
        codec.decode(big)


def test_corpus_is_valid() -> None:
    """The seed corpus itself decodes (so mutations start from real frames)."""
    assert all(check_frame(data) is not None for data in CORPUS)
    assert {type(decode_frame(d)).__name__ for d in CORPUS} == {
        "Hello",
        "Request",
        "Response",
        "Refusal",
    }
    assert check_frame(
        Request.create(
            ALICE,
            ledger=LEDGER_ID,
            channel=bytes(32),
            n=1,
            paid=0,
            price=0,
            service="x",
            body=b"",
            deadline=0,
        ).to_frame()
    )
    assert isinstance(decode_frame(Hello.create(BOB, ledger=LEDGER_ID).to_frame()), Hello)


# ---------------------------------------------------------------------------
# the seeded loop: quick (20k) in the normal suite, over a million when slow


def fuzz_parsers(seed: int, inputs: int) -> dict[str, int]:
    """Feed `inputs` mutated byte strings, each to one parser in turn: decode_frame (half
    of them; it runs codec.decode first), codec.decode with random limits, a
    from_signed, or (one in ten) FrameReader over a chunked, mutated stream of frames
    checked against the reference framer. Every 32nd accepted frame also has its
    signature checked against two keys and ledgers.

    Returns counts per parser; any untyped exception or wrong answer fails the test.
    """
    rng = random.Random(seed)
    mutator = Mutator(rng, CORPUS)
    signed_mutators = [(k, Mutator(rng, [s]), sig, b) for k, s, sig, b in SIGNED_PARTS]
    counts = dict.fromkeys(
        ("inputs", "decode_frame", "frames_ok", "decode", "from_signed", "reader_streams"), 0
    )
    counts["reader_frames"] = 0
    for i in range(inputs):
        slot = i % 10
        if slot < 5:
            if check_frame(mutator.mutate(), verify=i % 32 == 0) is not None:
                counts["frames_ok"] += 1
            counts["decode_frame"] += 1
        elif slot < 7:
            check_decode(
                mutator.mutate(),
                max_depth=rng.choice((1, 4, 8, 16)),
                max_size=rng.choice((64, 1 << 20)),
            )
            counts["decode"] += 1
        elif slot < 9:
            kind, signed_mutator, sig, body = rng.choice(signed_mutators)
            check_from_signed(kind, signed_mutator.mutate(), sig, body)
            counts["from_signed"] += 1
        else:
            stream = b"".join(frame(rng.choice(CORPUS)) for _ in range(rng.randrange(1, 4)))
            if rng.random() < 0.8:
                stream = Mutator(rng, [stream]).mutate()
            max_frame = rng.choice((16, 300, 4096, 1 << 20))
            size = rng.choice((1, 3, 7, 64, 1000, 65536)) if rng.random() < 0.1 else 65536
            got = drive_reader(chunked(stream, itertools.repeat(size)), max_frame)
            assert got == reference_frames(stream, max_frame), (seed, i)
            counts["reader_streams"] += 1
            counts["reader_frames"] += len(got[0])
        counts["inputs"] += 1
    return counts


def fuzz_in_workers(seed: int, inputs: int, workers: int) -> dict[str, int]:
    """`fuzz_parsers` split over processes (one per core), seeds seed..seed+workers-1."""
    share = -(-inputs // workers)
    if workers == 1:
        return fuzz_parsers(seed, share)
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        parts = list(pool.map(fuzz_parsers, range(seed, seed + workers), [share] * workers))
    return {key: sum(part[key] for part in parts) for key in parts[0]}


def test_quick_seeded_fuzz_of_every_parser() -> None:
    counts = fuzz_parsers(seed=7, inputs=20_000)
    assert counts["inputs"] == 20_000
    # the mutations reach both outcomes: not all rejected, not all accepted
    assert 500 < counts["frames_ok"] < counts["decode_frame"] - 500
    assert counts["reader_frames"] > 0


@pytest.mark.slow
def test_slow_million_inputs() -> None:
    """At least 1,000,000 mutated inputs through every parser; none ends untyped."""
    started = time.perf_counter()
    workers = max(1, min(2, os.cpu_count() or 1))
    counts = fuzz_in_workers(seed=20240607, inputs=1_000_000, workers=workers)
    elapsed = time.perf_counter() - started
    print(f"\nparser fuzz: {counts} in {elapsed:.1f} s ({counts['inputs'] / elapsed:.0f}/s)")
    assert counts["inputs"] >= 1_000_000
    assert counts["decode_frame"] >= 500_000 and counts["decode"] >= 200_000
    assert counts["from_signed"] >= 200_000 and counts["reader_streams"] >= 100_000
    assert 0 < counts["frames_ok"] < counts["decode_frame"]
