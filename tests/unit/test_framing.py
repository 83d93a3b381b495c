"""Framing: uvarint length prefixes and the buffered FrameReader (p2pay.net.framing)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pay.core.errors import DecodeError, FrameTooLarge, LocalProtocolError
from p2pay.net.base import StreamClosed
from p2pay.net.framing import (
    MAX_UVARINT,
    READ_SIZE,
    FrameReader,
    decode_uvarint,
    encode_uvarint,
    frame,
    frames,
)

# --- uvarint ---------------------------------------------------------------------

KNOWN = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    ((1 << 20), b"\x80\x80\x40"),
    (MAX_UVARINT, b"\xff" * 8 + b"\x7f"),
]


@pytest.mark.parametrize(("value", "encoded"), KNOWN)
def test_uvarint_known_encodings(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded) == (value, len(encoded))


def test_uvarint_max_is_nine_bytes() -> None:
    assert MAX_UVARINT == 2**63 - 1
    assert len(encode_uvarint(MAX_UVARINT)) == 9


@pytest.mark.parametrize("bad", [-1, 2**63, 2**64, True, 1.0, "1", None])
def test_encode_uvarint_refuses_out_of_range_or_non_int(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_uvarint(bad)  # type: ignore[arg-type]


def test_decode_uvarint_incomplete_returns_none() -> None:
    assert decode_uvarint(b"") is None
    assert decode_uvarint(b"\x80") is None
    assert decode_uvarint(b"\xff" * 8) is None
    assert decode_uvarint(b"\x00\x80", offset=1) is None


def test_decode_uvarint_with_offset_and_trailing_bytes() -> None:
    buf = b"junk" + encode_uvarint(300) + b"rest"
    assert decode_uvarint(buf, 4) == (300, 6)
    assert decode_uvarint(bytearray(buf), 4) == (300, 6)
    assert decode_uvarint(memoryview(buf), 4) == (300, 6)


@pytest.mark.parametrize(
    "bad",
    [
        b"\x80\x00",  # 0 in two bytes
        b"\x81\x00",  # 1 in two bytes
        b"\xff\x80\x00",  # non-minimal with a longer prefix
        b"\x80" * 8 + b"\x00",  # nine bytes, last is zero
    ],
)
def test_decode_uvarint_refuses_non_minimal(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_uvarint(bad)


def test_decode_uvarint_refuses_more_than_nine_bytes() -> None:
    # Refused as soon as the 9th byte still has its continuation bit: no need to wait.
    with pytest.raises(DecodeError):
        decode_uvarint(b"\xff" * 9)
    with pytest.raises(DecodeError):
        decode_uvarint(b"\x80" * 9 + b"\x01")


@given(st.integers(min_value=0, max_value=MAX_UVARINT))
def test_uvarint_round_trip(value: int) -> None:
    encoded = encode_uvarint(value)
    assert decode_uvarint(encoded) == (value, len(encoded))
    # Every strict prefix is incomplete, never an error or a wrong value.
    for cut in range(len(encoded)):
        assert decode_uvarint(encoded[:cut]) is None


def test_frame_is_prefix_plus_payload() -> None:
    assert frame(b"") == b"\x00"
    assert frame(b"abc") == b"\x03abc"
    assert frame(bytearray(b"x" * 200)) == b"\xc8\x01" + b"x" * 200
    assert frame(memoryview(b"hi")) == b"\x02hi"


def test_frames_is_the_frames_back_to_back() -> None:
    payloads = [b"", b"abc", b"x" * 200, bytearray(b"yz"), memoryview(b"hi")]
    assert frames(payloads) == b"".join(frame(p) for p in payloads)
    assert frames([]) == b""
    assert frames(iter([b"a", b"b"])) == b"\x01a\x01b"


# --- FrameReader ------------------------------------------------------------------


class ChunkSource:
    """A read_some() that hands out predetermined chunks, then EOF (b"")."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = list(chunks)
        self.calls = 0
        self.asked: list[int] = []

    async def read_some(self, n: int) -> bytes:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        self.asked.append(n)
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        assert 0 < len(chunk) <= n, "the test source must respect n"
        return chunk


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


async def read_all(reader: FrameReader) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(await reader.next())
        except StreamClosed:
            return out


async def test_reader_payload_split_at_every_byte_boundary() -> None:
    payloads = [b"", b"a", b"hello world", bytes(range(256)) * 2]
    wire = b"".join(frame(p) for p in payloads)
    for cut in range(1, len(wire)):
        source = ChunkSource(split_at(wire, [cut]))
        assert await read_all(FrameReader(source.read_some, 4096)) == payloads
    # And one byte at a time.
    source = ChunkSource([wire[i : i + 1] for i in range(len(wire))])
    reader = FrameReader(source.read_some, 4096)
    assert await read_all(reader) == payloads
    assert reader.clean_eof


async def test_reader_many_frames_in_one_read() -> None:
    payloads = [bytes([i]) * i for i in range(200)]
    wire = b"".join(frame(p) for p in payloads)
    assert len(wire) <= READ_SIZE
    source = ChunkSource([wire])
    reader = FrameReader(source.read_some, 1000)
    for expected in payloads:
        assert await reader.next() == expected
    assert source.calls == 1  # all 200 frames came out of one read
    with pytest.raises(StreamClosed):
        await reader.next()


async def test_reader_always_asks_for_read_size() -> None:
    source = ChunkSource([frame(b"x" * 100_000)[i : i + 1000] for i in range(0, 100_003, 1000)])
    assert await FrameReader(source.read_some, 1 << 20).next() == b"x" * 100_000
    assert set(source.asked) == {READ_SIZE}


async def test_reader_max_frame_exact_is_accepted() -> None:
    source = ChunkSource([frame(b"m" * 1000)])
    assert await FrameReader(source.read_some, 1000).next() == b"m" * 1000


async def test_reader_over_max_frame_refused_before_body_is_read() -> None:
    # Only the prefix is available: the refusal must not wait for (or buffer) the body.
    source = ChunkSource([encode_uvarint(1001)])
    reader = FrameReader(source.read_some, 1000)
    with pytest.raises(FrameTooLarge) as info:
        await reader.next()
    assert info.value.details == {"max_frame": 1000}
    assert source.calls == 1
    # Sticky: the byte stream is out of sync for good.
    with pytest.raises(FrameTooLarge):
        await reader.next()
    assert source.calls == 1


async def test_reader_huge_announced_length_refused() -> None:
    source = ChunkSource([encode_uvarint(MAX_UVARINT)])
    with pytest.raises(FrameTooLarge):
        await FrameReader(source.read_some, 1 << 20).next()


async def test_reader_bad_prefix_is_decode_error_and_sticky() -> None:
    source = ChunkSource([frame(b"ok") + b"\x80\x00junk"])
    reader = FrameReader(source.read_some, 100)
    assert await reader.next() == b"ok"
    with pytest.raises(DecodeError) as info:
        await reader.next()
    assert not isinstance(info.value, FrameTooLarge)
    with pytest.raises(DecodeError):
        await reader.next()


@pytest.mark.parametrize("cut", [1, 2, 3, 50])
async def test_reader_eof_mid_frame_is_stream_closed(cut: int) -> None:
    wire = frame(b"z" * 100)
    source = ChunkSource([frame(b"first"), wire[:cut]])
    reader = FrameReader(source.read_some, 1000)
    assert await reader.next() == b"first"
    with pytest.raises(StreamClosed, match="middle of a frame"):
        await reader.next()
    assert not reader.clean_eof
    with pytest.raises(StreamClosed):
        await reader.next()


async def test_reader_clean_eof() -> None:
    reader = FrameReader(ChunkSource([]).read_some, 10)
    with pytest.raises(StreamClosed, match="end of stream"):
        await reader.next()
    assert reader.clean_eof


async def test_reader_propagates_read_errors() -> None:
    async def broken(n: int) -> bytes:
        raise StreamClosed("reset by peer")

    reader = FrameReader(broken, 10)
    with pytest.raises(StreamClosed, match="reset by peer"):
        await reader.next()
    assert not reader.clean_eof


async def test_next_nowait_returns_buffered_frames_and_never_reads() -> None:
    payloads = [b"one", b"", b"three" * 10]
    wire = frames(payloads) + frame(b"partial")[:4]
    source = ChunkSource([wire, frame(b"partial")[4:]])
    reader = FrameReader(source.read_some, 1000)
    assert reader.next_nowait() is None  # nothing buffered yet: None, and no read
    assert source.calls == 0
    assert await reader.next() == b"one"  # one read brings everything above
    assert reader.next_nowait() == b""
    assert reader.next_nowait() == b"three" * 10
    assert reader.next_nowait() is None  # "partial" is incomplete: it waits for a read
    assert source.calls == 1
    assert await reader.next() == b"partial"
    assert reader.next_nowait() is None
    assert reader.buffered == 0


async def test_next_nowait_errors_are_sticky_and_shared_with_next() -> None:
    source = ChunkSource([frame(b"ok") + encode_uvarint(1001)])
    reader = FrameReader(source.read_some, 1000)
    assert await reader.next() == b"ok"
    with pytest.raises(FrameTooLarge) as info:
        reader.next_nowait()  # the oversized prefix is refused from the buffer
    assert info.value.details == {"max_frame": 1000}
    with pytest.raises(FrameTooLarge):
        await reader.next()
    with pytest.raises(FrameTooLarge):
        reader.next_nowait()
    bad = FrameReader(ChunkSource([b"\x80\x00"]).read_some, 1000)
    with pytest.raises(DecodeError):
        await bad.next()  # non-minimal prefix
    with pytest.raises(DecodeError):
        bad.next_nowait()
    closed = FrameReader(ChunkSource([]).read_some, 1000)
    with pytest.raises(StreamClosed):
        await closed.next()
    with pytest.raises(StreamClosed):
        closed.next_nowait()  # end of stream is sticky too


def test_reader_refuses_bad_max_frame() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(LocalProtocolError):
            FrameReader(ChunkSource([]).read_some, bad)  # type: ignore[arg-type]


async def test_reader_buffer_stays_bounded_over_many_frames() -> None:
    """Linear, compacting buffer: 20,000 small frames in 64 KiB reads."""
    payloads = [i.to_bytes(4, "big") * (1 + i % 7) for i in range(20_000)]
    wire = b"".join(frame(p) for p in payloads)
    source = ChunkSource([wire[i : i + READ_SIZE] for i in range(0, len(wire), READ_SIZE)])
    reader = FrameReader(source.read_some, 100)
    for expected in payloads:
        assert await reader.next() == expected
        assert len(reader._buf) <= 2 * READ_SIZE + 100
    assert reader.buffered == 0


frame_lists = st.lists(st.binary(max_size=300), max_size=30)


@settings(max_examples=200, deadline=None)
@given(payloads=frame_lists, data=st.data())
def test_reader_round_trip_random_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(frame(p) for p in payloads)
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=max(1, len(wire))), max_size=40))
    chunks = split_at(wire, cuts)

    async def run() -> list[bytes]:
        return await read_all(FrameReader(ChunkSource(chunks).read_some, 300))

    assert trio.run(run) == payloads


@settings(max_examples=100, deadline=None)
@given(payloads=st.lists(st.binary(max_size=50), min_size=1, max_size=10), data=st.data())
def test_reader_oversized_frame_in_sequence(payloads: list[bytes], data: st.DataObject) -> None:
    """Frames up to the limit come out; the first oversized one raises FrameTooLarge."""
    limit = data.draw(st.integers(min_value=1, max_value=50))
    wire = b"".join(frame(p) for p in payloads)
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=max(1, len(wire))), max_size=20))

    async def run() -> tuple[list[bytes], bool]:
        reader = FrameReader(ChunkSource(split_at(wire, cuts)).read_some, limit)
        got: list[bytes] = []
        while True:
            try:
                got.append(await reader.next())
            except StreamClosed:
                return got, False
            except FrameTooLarge:
                return got, True

    got, too_large = trio.run(run)
    ok_prefix = []
    for p in payloads:
        if len(p) > limit:
            break
        ok_prefix.append(p)
    assert got == ok_prefix
    assert too_large == (len(ok_prefix) < len(payloads))
