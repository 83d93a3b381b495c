"""The outbox: frames in decision order, each sent once its state is durable."""

from __future__ import annotations

import collections

import trio

from p2pay.net.base import Stream, send_frames
from p2pay.persist import Persister

_OUTBOX_WRITE_BYTES = 48 * 1024
"""Most bytes of queued frames one outbox write carries (a frame alone may be larger):
under one yamux frame (64 KiB) and one Noise frame (65,519 bytes of plaintext)."""


class _Outbox:
    """Answers in decision order; each is sent once its generation is durable."""

    def __init__(self) -> None:
        self.items: collections.deque[tuple[int, bytes]] = collections.deque()
        self.changed = trio.Event()
        self.closed = False
        self.last_sent = trio.current_time()  # when a frame last left (idle_timeout)
        #: frames sent so far: the frame put when ``sent + len(items)`` was N leaves when
        #: ``sent`` reaches N (frames leave in order)
        self.sent = 0

    def put(self, generation: int, frame: bytes) -> None:
        if not self.closed:
            self.items.append((generation, frame))
            self.changed.set()

    async def wait_below(self, limit: int) -> None:
        while len(self.items) >= limit and not self.closed:
            self.changed = trio.Event()
            await self.changed.wait()

    async def wait_sent(self, count: int) -> None:
        """Wait until `count` frames have been sent in all, or the outbox closed."""
        while self.sent < count and not self.closed:
            self.changed = trio.Event()
            await self.changed.wait()

    async def pump(self, persister: Persister, stream: Stream) -> None:
        durable = 0  # every generation up to this one is known durable
        try:
            while True:
                while not self.items:
                    self.changed = trio.Event()
                    await self.changed.wait()
                generation = self.items[0][0]
                if generation > durable:
                    await persister.durable(generation)
                    durable = generation
                # Everything queued behind it whose generation is durable too goes in the
                # same write (in order, stopping at the first that is not): one yamux
                # frame and one Noise frame for a burst of answers or requests.
                batch: list[bytes] = []
                size = 0
                for gen, frame in self.items:
                    if gen > durable or (batch and size + len(frame) > _OUTBOX_WRITE_BYTES):
                        break
                    batch.append(frame)
                    size += len(frame)
                await send_frames(stream, batch)
                self.last_sent = trio.current_time()
                for _ in batch:
                    self.items.popleft()
                self.sent += len(batch)
                self.changed.set()
        finally:
            self.closed = True
            self.changed.set()
