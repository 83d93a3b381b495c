"""In-memory transport: the libp2p stream semantics without sockets, for simulations.

Theory of operation
-------------------
A `MemoryNetwork` is a registry of in-process transports, one per simulation or test.
A stream is two one-way pipes; a pipe is a bounded trio memory channel of whole frames
(`PIPE_CAPACITY` frames), so a slow reader pushes back on its writer exactly as yamux
flow control would. Nothing is serialized: a frame is handed over as the immutable
``bytes`` object the sender passed.

* Authentication is by construction: `remote_public` is the key the remote transport
  was opened with.
* ``max_frame`` is enforced by the receiver, as on libp2p: a frame longer than the
  receiving transport's limit raises `FrameTooLarge` from its `receive()`.
* Latency: `MemoryNetwork.set_latency` takes ``fn(src_peer_id, dst_peer_id) -> seconds``.
  Each frame is stamped with ``max(now + fn(...), stamp of the previous frame)`` when it
  is sent, and the receiver waits until that time, so frames keep their order whatever
  ``fn`` returns. `MemoryStream.send_many` stamps a burst once (its frames leave at the
  same instant), so the receiver wakes once for the burst; a `receive()` finding a frame
  that has already arrived returns it without a scheduler round trip. Connecting costs
  one round trip. Only trio's clock is used, so it runs unchanged (and instantly) under
  ``trio.testing.MockClock``.
* Failures: `MemoryNetwork.disconnect` resets every stream of a peer, as a crash would;
  `MemoryNetwork.set_online` makes a peer refuse (and fail to make) new connections,
  without touching its open streams (call both to simulate a peer vanishing).
* Addresses are ``/memory/<peer id>/p2p/<peer id>``. As with libp2p, `connect` to a bare
  PeerID works only after `add_address` (or an earlier connect by multiaddr), so code
  that forgets to learn addresses fails here as it would on a real network.

There is no randomness and no wall clock in this module.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from p2pay.core.errors import DecodeError, FrameTooLarge, LocalProtocolError
from p2pay.core.identity import Keypair, public_from_peer_id
from p2pay.net.base import (
    DEFAULT_MAX_FRAME,
    ConnectError,
    NoAddress,
    PeerNotReached,
    Stream,
    StreamClosed,
    StreamHandler,
    Transport,
    check_max_frame,
    run_handler,
    split_p2p,
)
from p2pay.net.framing import renew_error
from p2pay.wakes import current_wakes

__all__ = ["PIPE_CAPACITY", "MemoryNetwork", "MemoryStream", "open_memory_transport"]


PIPE_CAPACITY = 256
"""Frames in flight per direction before `send()` blocks (backpressure)."""

LatencyFn = Callable[[str, str], float]
SendFilter = Callable[[bytes], bytes | None]
#: a parked reader (`_Pipe.waiter`): its task, then its cancel scope, or None and the
#: clock's wakes with its pending wake (`p2pay.sim.clock.SimClock`)
_Waiter = tuple[trio.lowlevel.Task, trio.CancelScope | None, Any, Any]
"""``keep(frame)``: the frame to send instead (None: nothing is sent). See
`MemoryNetwork.set_send_filter`."""


class MemoryNetwork:
    """A registry of in-memory transports that can reach each other."""

    def __init__(self) -> None:
        self._transports: dict[str, _MemoryTransport] = {}
        self._offline: set[str] = set()
        self._latency: LatencyFn | None = None
        self._send_filters: dict[str, SendFilter] = {}

    def set_latency(self, fn: LatencyFn | None) -> None:
        """Set the one-way delay ``fn(src_peer_id, dst_peer_id)`` in seconds (None: none).

        Applies to frames sent from now on, and to the round trip of new connections.
        """
        self._latency = fn

    def set_online(self, peer_id: str, online: bool) -> None:
        """Mark a peer offline (refuses and cannot make new connections) or online again.

        Open streams are not touched; use `disconnect` for that.
        """
        if online:
            self._offline.discard(peer_id)
        else:
            self._offline.add(peer_id)

    def set_send_filter(self, peer_id: str, keep: SendFilter | None) -> None:
        """Pass every frame `peer_id` sends on the streams it accepts from now on through
        ``keep(frame)``: the frame it returns is sent instead, nothing when it returns None
        (None: no filter). Simulations use it to make a node misbehave on the wire.

        Streams already open keep the filter they had.
        """
        if keep is None:
            self._send_filters.pop(peer_id, None)
        else:
            self._send_filters[peer_id] = keep

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self._transports and peer_id not in self._offline

    def disconnect(self, peer_id: str) -> None:
        """Reset every open stream of `peer_id` (both ends see `StreamClosed`)."""
        transport = self._transports.get(peer_id)
        if transport is not None:
            transport._reset_all()

    def delay(self, src: str, dst: str) -> float:
        """The current one-way delay from `src` to `dst`, in seconds."""
        if self._latency is None:
            return 0.0
        value = float(self._latency(src, dst))
        if not value >= 0.0 or math.isinf(value):  # also refuses NaN
            raise LocalProtocolError(f"latency must be a finite number >= 0, got {value!r}")
        return value

    async def round_trip(self, a: str, b: str) -> None:
        """Wait one round trip between `a` and `b` (``delay(a, b) + delay(b, a)``; only a
        checkpoint when that is 0)."""
        await trio.sleep(self.delay(a, b) + self.delay(b, a))

    @property
    def peers(self) -> list[str]:
        """PeerIDs of the transports currently open on this network."""
        return list(self._transports)

    def _register(self, transport: _MemoryTransport) -> None:
        if transport.peer_id in self._transports:
            raise LocalProtocolError(f"peer {transport.peer_id} is already on this network")
        self._transports[transport.peer_id] = transport

    def _unregister(self, transport: _MemoryTransport) -> None:
        if self._transports.get(transport.peer_id) is transport:
            del self._transports[transport.peer_id]


def memory_addr(peer_id: str) -> str:
    """The address of a peer on a `MemoryNetwork`."""
    return f"/memory/{peer_id}/p2p/{peer_id}"


class _Pipe:
    """One direction of a stream: a bounded channel of (arrival time, payload).

    A reader finding it empty parks (`MemoryStream._park`) instead of blocking on the
    channel: the writer sets the parked reader's deadline to the frame's arrival time,
    so the reader wakes once per frame (not once on the send, then again at arrival).
    The deadline is its cancel scope's, or, when the run's clock wakes sleepers itself
    (the simulator's, `p2pay.sim.clock`: ``clock.sim_wakes``), a wake of that clock.
    """

    __slots__ = ("eof_at", "last_arrival", "recv", "send", "waiter")

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[tuple[float, bytes]](PIPE_CAPACITY)
        self.last_arrival = -math.inf
        self.eof_at = -math.inf
        #: the parked reader: (task, its cancel scope) or (task, None, wakes, wake or None)
        self.waiter: _Waiter | None = None

    def notify(self, arrival: float) -> None:
        """A frame was put in: a parked reader wakes at its arrival time."""
        waiter = self.waiter
        if waiter is None:
            return
        task, scope, wakes, wake = waiter
        if arrival <= trio.current_time():
            self.waiter = None
            if wake is not None:
                wakes.cancel(wake)
            trio.lowlevel.reschedule(task)
        elif scope is not None:
            if arrival < scope.deadline:
                scope.deadline = arrival
        elif wake is None or arrival < wake[0]:
            if wake is not None:
                wakes.cancel(wake)
            self.waiter = (task, None, wakes, wakes.wake_at(arrival, self._arrived))

    def _arrived(self) -> None:
        """The clock reached the arrival time of the parked reader's frame."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter[0])

    def wake(self) -> None:
        """Wake a parked reader now (an end is closing)."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            if waiter[3] is not None:
                waiter[2].cancel(waiter[3])
            trio.lowlevel.reschedule(waiter[0])


class MemoryStream:
    """One end of an in-memory stream (see `p2pay.net.base.Stream`).

    When this end is closed or reset (or its peer is disconnected) it stops at once:
    frames sent to it are dropped and the other end's `send()` fails. After `aclose()`
    the frames it had sent stay readable by the other end, which then reads
    `StreamClosed`; after a reset they are dropped too. That is what py-libp2p's yamux
    does with FIN (then RST) and with a bare RST.
    """

    def __init__(
        self,
        *,
        transport: _MemoryTransport,
        outgoing: _Pipe,
        incoming: _Pipe,
        remote_public: bytes,
        remote_peer_id: str,
        keep: SendFilter | None = None,
    ) -> None:
        self._transport = transport
        self._keep = keep
        self._network = transport._network
        self._out = outgoing
        self._in = incoming
        self._remote_public = remote_public
        self._remote_peer_id = remote_peer_id
        self._send_lock = trio.Lock()
        self._recv_lock = trio.Lock()
        self._dead = False
        self._dead_event = trio.Event()
        self._sleeper: trio.lowlevel.Task | None = None  # a receive() waiting for arrival
        self._held: tuple[float, bytes] | None = None  # taken by receive()'s fast path
        self._error: Exception | None = None

    @property
    def remote_public(self) -> bytes:
        return self._remote_public

    @property
    def remote_peer_id(self) -> str:
        return self._remote_peer_id

    def __repr__(self) -> str:
        return f"<MemoryStream {self._transport.peer_id[-8:]}->{self._remote_peer_id[-8:]}>"

    # Every frame of a simulation goes through send() and receive(), so both take the
    # cheap path when they can: the lock without a checkpoint when it is free, the pipe
    # without blocking when it has room or a frame, and one checkpoint per call (as
    # trio's own channels do); waiting for a frame's arrival time is a bare deadline
    # (`_sleep_until`), not a cancellation caught.

    async def send(self, payload: bytes) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise LocalProtocolError("a frame payload is bytes")
        data = bytes(payload)
        if self._keep is not None:
            kept = self._keep(data)
            if kept is None:
                await trio.lowlevel.checkpoint()
                return
            data = bytes(kept)
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            if self._dead:
                raise StreamClosed("stream is closed")
            delay = self._network.delay(self._transport.peer_id, self._remote_peer_id)
            arrival = max(trio.current_time() + delay, self._out.last_arrival)
            try:
                try:
                    self._out.send.send_nowait((arrival, data))
                    blocked = False
                except trio.WouldBlock:
                    blocked = True
                    await self._out.send.send((arrival, data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise StreamClosed("stream closed by the peer") from None
            except BaseException:
                # Cancelled while blocked on backpressure: same rule as libp2p, reset.
                self._kill()
                raise
            self._out.last_arrival = arrival
            self._out.notify(arrival)
        finally:
            lock.release()
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, payload: bytes) -> bool:
        """Send one frame at once if that needs no waiting, as `send()` would send it (same
        arrival time); False, with nothing sent, if it would have to wait (the send lock
        is held, the pipe is full), if this end's frames pass a send filter, or if the
        stream is closed (`send()` then says why). Not part of `Stream`: the node's
        outbox uses it when a stream has it (p2pay/node/outbox.py), saving its pump
        task a wake and a checkpoint per frame; it is not a checkpoint."""
        if self._keep is not None or self._dead or self._send_lock.locked():
            return False
        if type(payload) is not bytes:
            return False
        out = self._out
        delay = self._network.delay(self._transport.peer_id, self._remote_peer_id)
        arrival = max(trio.current_time() + delay, out.last_arrival)
        try:
            out.send.send_nowait((arrival, payload))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        out.last_arrival = arrival
        out.notify(arrival)
        return True

    async def send_many(self, payloads: Sequence[bytes]) -> None:
        """Send several frames in order, as one `send()` each would, but in one go: one
        lock, one latency look-up and one arrival time for the burst (its frames leave
        at the same instant), one checkpoint. Blocked by backpressure part-way, the
        rest is stamped when it leaves, as separate sends would be."""
        data = []
        for payload in payloads:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise LocalProtocolError("a frame payload is bytes")
            data.append(bytes(payload))
        if self._keep is not None:
            data = [bytes(f) for f in map(self._keep, data) if f is not None]
            if not data:
                await trio.lowlevel.checkpoint()
                return
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        blocked = False
        try:
            if self._dead:
                raise StreamClosed("stream is closed")
            out, src, dst = self._out, self._transport.peer_id, self._remote_peer_id
            arrival = max(trio.current_time() + self._network.delay(src, dst), out.last_arrival)
            try:
                for item in data:
                    if blocked:  # time may have passed: stamp as a later send() would
                        now = trio.current_time() + self._network.delay(src, dst)
                        arrival = max(now, out.last_arrival)
                    try:
                        out.send.send_nowait((arrival, item))
                    except trio.WouldBlock:
                        blocked = True
                        await out.send.send((arrival, item))
                    out.last_arrival = arrival
                    out.notify(arrival)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise StreamClosed("stream closed by the peer") from None
            except BaseException:
                self._kill()  # cancelled while blocked on backpressure: reset, as send()
                raise
        finally:
            lock.release()
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        if (
            self._held is None
            and self._error is None
            and not self._dead
            and not self._recv_lock.locked()
        ):
            # Fast path: a frame that has already arrived (the rest of a burst) comes
            # out without the lock or a scheduler round trip; the cancellation check
            # above is the checkpoint (as in p2p.py). Anything else is held for the
            # slow path below, which waits for its arrival or raises as usual.
            try:
                item = self._in.recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the slow path raises StreamClosed
            else:
                if item[0] <= trio.current_time() and len(item[1]) <= self._transport.max_frame:
                    return item[1]
                self._held = item
        lock = self._recv_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            if self._error is not None:
                raise renew_error(self._error)
            if self._dead:
                raise StreamClosed("stream is closed")
            try:
                return await self._receive()
            except (StreamClosed, DecodeError) as exc:
                self._error = exc
                raise
            except BaseException:
                self._kill()
                raise
        finally:
            lock.release()

    async def _receive(self) -> bytes:
        try:
            try:
                if self._held is not None:
                    (arrival, payload), self._held = self._held, None
                else:
                    arrival, payload = self._in.recv.receive_nowait()
                waited = False
            except trio.WouldBlock:
                waited = True
                await self._park()
                try:
                    arrival, payload = self._in.recv.receive_nowait()
                except trio.WouldBlock:  # not expected (see _park): wait as usual
                    arrival, payload = await self._in.recv.receive()
        except trio.EndOfChannel:
            # The peer closed; its close travels as fast as its frames.
            if self._in.eof_at > trio.current_time():
                with trio.move_on_at(self._in.eof_at):
                    await self._dead_event.wait()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            raise StreamClosed("stream closed by the peer") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StreamClosed("stream is closed") from None
        if arrival > trio.current_time():
            await self._sleep_until(arrival)
        elif not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if self._dead:
            raise StreamClosed("stream is closed")
        max_frame = self._transport.max_frame
        if len(payload) > max_frame:
            raise FrameTooLarge(
                f"peer sent a {len(payload)}-byte frame, the limit is {max_frame}",
                details={"max_frame": max_frame},  # the refusal's details (protocol.md 5.2)
            )
        return payload

    async def _park(self) -> None:
        """With our pipe empty, wait until a frame sent to us has arrived (the writer
        sets our deadline to its arrival time, `_Pipe.notify`) or an end is closing
        (`_Pipe.wake`). Reaching that deadline reschedules without raising; a
        cancellation from outside is raised as usual."""
        pipe = self._in
        task = trio.lowlevel.current_task()
        wakes = current_wakes()
        if wakes is not None:  # the clock wakes us (`_Pipe.notify`): no cancel scope

            def abort_wake(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
                waiter, pipe.waiter = pipe.waiter, None
                if waiter is not None and waiter[3] is not None:
                    wakes.cancel(waiter[3])
                return trio.lowlevel.Abort.SUCCEEDED

            pipe.waiter = (task, None, wakes, None)
            await trio.lowlevel.wait_task_rescheduled(abort_wake)
            return
        with trio.CancelScope() as scope:

            def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
                pipe.waiter = None
                if trio.current_time() >= scope.deadline:  # a frame's arrival
                    trio.lowlevel.reschedule(task)
                    return trio.lowlevel.Abort.FAILED
                return trio.lowlevel.Abort.SUCCEEDED

            pipe.waiter = (task, scope, None, None)
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until `deadline` or until this end is killed, whichever comes first.

        Our own deadline passing reschedules the task without raising (no `Cancelled` is
        created and caught per frame); a cancellation from outside is raised as usual.
        """
        task = trio.lowlevel.current_task()

        def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
            self._sleeper = None
            if trio.current_time() >= deadline:  # our deadline, not an outer cancel
                trio.lowlevel.reschedule(task)
                return trio.lowlevel.Abort.FAILED
            return trio.lowlevel.Abort.SUCCEEDED

        with trio.CancelScope(deadline=deadline):
            self._sleeper = task
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def reset(self) -> None:
        self._kill(graceful=False)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        self._kill(graceful=True)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _kill(self, *, graceful: bool = False) -> None:
        """Stop this end (see the class docstring). Idempotent."""
        if self._dead:
            return
        self._dead = True
        self._dead_event.set()
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            trio.lowlevel.reschedule(sleeper)
        self._in.wake()  # our parked reader, if any: it reads StreamClosed
        self._out.wake()  # the peer's: it reads what is left, then StreamClosed
        if graceful:
            delay = self._network.delay(self._transport.peer_id, self._remote_peer_id)
            self._out.eof_at = max(trio.current_time() + delay, self._out.last_arrival)
        else:
            self._out.recv.close()  # drop what the peer has not read yet
        self._out.send.close()
        self._in.recv.close()
        self._transport._forget(self)


class _MemoryTransport:
    def __init__(
        self,
        network: MemoryNetwork,
        key: Keypair,
        handler: StreamHandler,
        max_frame: int,
        nursery: trio.Nursery,
    ) -> None:
        self._network = network
        self._key = key
        self._peer_id = str(key.peer_id)
        self._handler = handler
        self.max_frame = max_frame
        self._nursery = nursery
        self._streams: set[MemoryStream] = set()
        self._known: set[str] = set()
        self._running = True

    @property
    def public(self) -> bytes:
        return self._key.public

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def addrs(self) -> list[str]:
        return [memory_addr(self._peer_id)]

    def __repr__(self) -> str:
        return f"<MemoryTransport {self._peer_id}>"

    def add_address(self, peer_id: str, addr: str) -> None:
        if peer_id in self._known and addr == memory_addr(peer_id):
            return  # checked already (nodes add the address on every call)
        head, named = split_p2p(addr)
        if named != peer_id:
            raise LocalProtocolError(f"address {addr!r} names another peer than {peer_id}")
        if head != f"/memory/{peer_id}":
            raise LocalProtocolError(f"not a memory address: {addr!r}")
        try:
            public_from_peer_id(peer_id)
        except DecodeError as exc:
            raise LocalProtocolError(f"not an Ed25519 PeerID: {peer_id!r}") from exc
        self._known.add(peer_id)

    async def connect(self, peer: str) -> Stream:
        if not isinstance(peer, str):
            raise ConnectError("a peer is a multiaddr or a PeerID string")
        if peer.startswith("/"):
            try:
                _, peer_id = split_p2p(peer)
                self.add_address(peer_id, peer)
            except LocalProtocolError as exc:
                raise ConnectError(f"cannot dial {peer!r}: {exc.message}") from None
        else:
            peer_id = peer
            if peer_id not in self._known:
                raise NoAddress(f"no known address for peer {peer_id}")
        if not self._running:
            raise ConnectError("transport is closed")
        if peer_id == self._peer_id:
            raise ConnectError("cannot connect to ourselves")
        if not self._network.is_online(self._peer_id):
            raise PeerNotReached(f"cannot dial {peer_id}: we are offline")
        await self._network.round_trip(self._peer_id, peer_id)
        remote = self._network._transports.get(peer_id)
        if remote is None or not remote._running or not self._network.is_online(peer_id):
            raise PeerNotReached(f"peer {peer_id} is unreachable")
        if not self._running:
            raise ConnectError("transport is closed")
        forward, backward = _Pipe(), _Pipe()
        local_end = MemoryStream(
            transport=self,
            outgoing=forward,
            incoming=backward,
            remote_public=remote.public,
            remote_peer_id=remote.peer_id,
        )
        remote_end = MemoryStream(
            transport=remote,
            outgoing=backward,
            incoming=forward,
            remote_public=self.public,
            remote_peer_id=self._peer_id,
            keep=self._network._send_filters.get(peer_id),
        )
        self._streams.add(local_end)
        remote._streams.add(remote_end)
        try:
            remote._nursery.start_soon(run_handler, remote._handler, remote_end)
        except RuntimeError:  # the remote's nursery is closing
            remote_end._kill()
            local_end._kill()
            raise PeerNotReached(f"peer {peer_id} is shutting down") from None
        return local_end

    def _forget(self, stream: MemoryStream) -> None:
        self._streams.discard(stream)

    def _reset_all(self) -> None:
        for stream in list(self._streams):
            stream._kill()


@asynccontextmanager
async def open_memory_transport(
    network: MemoryNetwork,
    key: Keypair,
    handler: StreamHandler,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> AsyncIterator[Transport]:
    """Join `network` as the peer of `key`; inbound streams go to `handler`.

    Args:
        network: the simulation's registry.
        key: this peer's identity.
        handler: run as ``handler(stream)`` for each inbound stream, in a task of the
            transport's nursery; its exceptions are logged and the stream is reset.
        max_frame: largest frame payload this side accepts.

    Yields:
        The transport (see `p2pay.net.base.Transport`).

    Raises:
        LocalProtocolError: the peer is already on the network, or `max_frame` is bad.
    """
    check_max_frame(max_frame)
    if str(key.peer_id) in network._transports:  # raise before the nursery wraps it
        raise LocalProtocolError(f"peer {key.peer_id} is already on this network")
    # An exception from the caller's block is re-raised outside the nursery, so it
    # comes out as itself rather than inside an ExceptionGroup.
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        transport = _MemoryTransport(network, key, handler, max_frame, nursery)
        network._register(transport)
        try:
            yield transport
        except Exception as exc:
            body_error = exc
        finally:
            transport._running = False
            network._unregister(transport)
            transport._reset_all()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


if TYPE_CHECKING:  # `mypy --strict p2pay` checks both classes against the interface
    _STREAM: type[Stream] = MemoryStream
    _TRANSPORT: type[Transport] = _MemoryTransport
