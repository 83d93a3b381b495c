"""Frames on a byte stream: an unsigned-varint length prefix, then the payload.

Theory of operation
-------------------
A libp2p stream is a byte stream: ``read(n)`` returns whatever is buffered, up to ``n``
bytes, so message boundaries must be written into the stream. p2pay uses the libp2p
convention (design.md, "Wire"): every frame is ``uvarint(len(payload)) || payload``,
where uvarint is the multiformats unsigned varint (little-endian base-128, high bit set
on every byte but the last, at most 9 bytes, minimal encoding only).

`FrameReader` turns "read some bytes" into "read one frame". It checks the announced
length against ``max_frame`` as soon as the prefix is complete, *before* buffering the
body, so a peer cannot make us hold more than ``max_frame`` plus one read's worth of
bytes. It keeps one bytearray and a read offset, compacting only when the consumed
prefix is at least half the buffer, so reading is linear in the bytes received whatever
the chunking. It does not use py-libp2p's ``read_exactly`` / msgio, which give up after
101 short reads on a healthy stream (py-libp2p notes, section 3).

Errors are sticky: after `StreamClosed`, `FrameTooLarge` or `DecodeError`, every later
`next()` raises the same kind of error again (the byte stream is no longer in sync).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from p2pay.core.errors import DecodeError, FrameTooLarge, LocalProtocolError, P2payError
from p2pay.net.base import StreamClosed, check_max_frame

MAX_UVARINT_BYTES = 9
MAX_UVARINT = (1 << (7 * MAX_UVARINT_BYTES)) - 1  # 2**63 - 1
READ_SIZE = 65536
_COMPACT_MIN = 4096


def encode_uvarint(n: int) -> bytes:
    """Encode a non-negative int as a minimal multiformats unsigned varint.

    Args:
        n: the value, 0 <= n < 2**63.

    Returns:
        1 to 9 bytes.

    Raises:
        LocalProtocolError: `n` is not an int in range.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_UVARINT:
        raise LocalProtocolError("a uvarint is an int in [0, 2**63)")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode an unsigned varint starting at ``buf[offset]``.

    Args:
        buf: the bytes received so far.
        offset: where the varint starts.

    Returns:
        ``(value, offset just after the varint)``, or None if `buf` ends before the
        varint does (more bytes are needed).

    Raises:
        DecodeError: the varint is longer than 9 bytes or not minimally encoded.
    """
    value = 0
    shift = 0
    end = len(buf)
    i = offset
    while i < end:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i - offset > 1:
                raise DecodeError("non-minimal uvarint length prefix")
            return value, i
        shift += 7
        if i - offset >= MAX_UVARINT_BYTES:
            raise DecodeError("uvarint length prefix longer than 9 bytes")
    return None


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Return ``uvarint(len(payload)) || payload``: one frame ready to write."""
    return encode_uvarint(len(payload)) + bytes(payload)


def frames(payloads: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Return the frames of several payloads, back to back: one write for all of them."""
    parts: list[bytes | bytearray | memoryview] = []
    for payload in payloads:
        parts.append(encode_uvarint(len(payload)))
        parts.append(payload)
    return b"".join(parts)


ReadSome = Callable[[int], Awaitable[bytes]]


class FrameReader:
    """Buffered reader of frames from a byte stream.

    Args:
        read_some: ``await read_some(n)`` returns between 1 and n bytes, or ``b""`` at
            end of stream. Errors it raises propagate unchanged (wrap the stream's
            own errors into `StreamClosed` there).
        max_frame: the largest payload accepted, in bytes.
    """

    __slots__ = ("_buf", "_error", "_max_frame", "_pos", "_read_some", "clean_eof")

    def __init__(self, read_some: ReadSome, max_frame: int) -> None:
        self._read_some = read_some
        self._max_frame = check_max_frame(max_frame)
        self._buf = bytearray()
        self._pos = 0
        self._error: BaseException | None = None
        self.clean_eof = False
        """True once the stream ended cleanly between two frames."""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    async def next(self) -> bytes:
        """Read and return the next frame's payload.

        Raises:
            StreamClosed: end of stream (cleanly between frames, or in the middle of one).
            FrameTooLarge: the prefix announces more than ``max_frame`` bytes.
            DecodeError: the prefix is not a valid uvarint.
        """
        if self._error is not None:
            raise renew_error(self._error)
        try:
            return await self._next()
        except (StreamClosed, DecodeError) as exc:
            self._error = exc
            raise

    def next_nowait(self) -> bytes | None:
        """Return the next frame's payload if it is already buffered, else None.

        Never reads: a peer that sent several frames in one write (or one read brought
        several) gets them all out of one read, without a wait per frame.

        Raises:
            FrameTooLarge, DecodeError: as `next` (and sticky as there); also the sticky
                error of an earlier `next`.
        """
        if self._error is not None:
            raise renew_error(self._error)
        try:
            return self._take()
        except DecodeError as exc:
            self._error = exc
            raise

    def _take(self) -> bytes | None:
        buf = self._buf
        header = decode_uvarint(buf, self._pos)
        if header is None:
            return None
        length, body = header
        if length > self._max_frame:
            raise FrameTooLarge(
                f"peer announced a {length}-byte frame, the limit is {self._max_frame}",
                details={"max_frame": self._max_frame},  # the refusal's details (5.2)
            )
        end = body + length
        if len(buf) < end:
            return None
        payload = bytes(buf[body:end])
        self._consume(end)
        return payload

    async def _next(self) -> bytes:
        while True:
            payload = self._take()
            if payload is not None:
                return payload
            chunk = await self._read_some(READ_SIZE)
            if not chunk:
                if self.buffered:
                    raise StreamClosed(
                        f"end of stream in the middle of a frame ({self.buffered} bytes pending)"
                    )
                self.clean_eof = True
                raise StreamClosed("end of stream")
            self._buf += chunk

    def _consume(self, end: int) -> None:
        buf = self._buf
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end >= _COMPACT_MIN and end * 2 >= len(buf):
            # Moving the unread tail costs at most what was consumed: linear overall.
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end


def renew_error(error: BaseException) -> Exception:
    """A fresh exception of the same kind as a sticky `error` (one object is raised once)."""
    if isinstance(error, FrameTooLarge):
        return FrameTooLarge(error.message, details=error.details)
    if isinstance(error, DecodeError):
        return DecodeError(error.message)
    return StreamClosed(error.message if isinstance(error, P2payError) else str(error))
