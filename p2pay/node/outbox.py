"""The outbox: frames in decision order, each sent once its state is durable.

A pump task sends what is queued. A frame put while nothing is queued whose generation
is durable already (always, on a write-through store) is sent at once by `put` itself
when the stream can send without waiting (``stream.send_nowait``, the in-memory
transport's), instead of waking the pump: the same frame, in the same order, at the same
time. Other streams (libp2p) always go through the pump.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import NoReturn

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
        #: set when a frame leaves or the outbox closes (`wait_below`, `wait_sent`)
        self.changed = trio.Event()
        #: the pump while it waits for a frame to be queued (`_park`; `put` wakes it)
        self._parked: trio.lowlevel.Task | None = None
        self.closed = False
        self.last_sent = trio.current_time()  # when a frame last left (idle_timeout)
        #: frames sent so far: the frame put when ``sent + len(items)`` was N leaves when
        #: ``sent`` reaches N (frames leave in order)
        self.sent = 0
        #: while the pump runs on a stream with ``send_nowait``: (its persister, that method)
        self._direct: tuple[Persister, Callable[[bytes], bool]] | None = None

    def put(self, generation: int, frame: bytes) -> None:
        if self.closed:
            return
        direct = self._direct
        if (
            direct is not None
            and not self.items
            and direct[0].is_durable(generation)
            and direct[1](frame)
        ):
            self.sent += 1
            self.last_sent = trio.current_time()
            self.changed.set()
            return
        self.items.append((generation, frame))
        task, self._parked = self._parked, None
        if task is not None:
            trio.lowlevel.reschedule(task)

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
        send_nowait: Callable[[bytes], bool] | None = getattr(stream, "send_nowait", None)
        if send_nowait is not None:
            self._direct = (persister, send_nowait)
        try:
            while True:
                while not self.items:
                    await self._park()
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
            self._direct = None
            self._parked = None
            self.closed = True
            self.changed.set()

    async def _park(self) -> None:
        """Wait until `put` queues a frame. A cancellation stops the direct path the
        moment it reaches the pump (its abort), not when the pump next runs: a pump never
        sends after its cancellation, and neither does `put` for it."""
        task = trio.lowlevel.current_task()

        def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
            self._parked = None
            self._direct = None
            return trio.lowlevel.Abort.SUCCEEDED

        self._parked = task
        await trio.lowlevel.wait_task_rescheduled(abort)
