"""libp2p transport: TCP, Noise, yamux, one p2pay stream protocol (py-libp2p 0.8.1).

Theory of operation
-------------------
The host key *is* the p2pay key (design.md, "Identity"), so the PeerID that Noise
authenticates is the payer's or payee's Ed25519 public key. Every py-libp2p import of
p2pay lives in this module; see /work/shared/notes/py-libp2p.md for the measurements
behind each choice:

* Security is pinned to Noise only. A default host also accepts ``/plaintext/2.0.0``,
  where a peer can claim any PeerID; with Noise the PeerID is proven by a signature.
* Muxer: yamux only (mplex deadlocks a reader against a writer on one stream and stalls
  the connection behind an idle reader). ``max_connections_per_peer=1`` avoids the
  250 ms happy-eyeballs wait on every connect.
* The remote identity is ``stream.muxed_conn.peer_id`` (under Noise, the secured
  connection's "remote public key" is the X25519 Noise key, not the identity). A stream
  from a peer whose PeerID does not embed an Ed25519 key is refused.
* Framing is ours (`p2pay.net.framing.FrameReader` over ``read(65536)``): py-libp2p's
  ``read_exactly`` gives up after 101 short reads.
* Sends are serialized by a `trio.Lock`, so frames never interleave; `send_many` writes
  several frames as one yamux write. Any failure resets the stream; so does cancelling a
  read or a write (a cancelled yamux read can drop buffered bytes).
* `receive` returns a frame already buffered (several frames often arrive in one read)
  at once, without a lock or a checkpoint; it reads only when no whole frame is buffered.
* Reads made here return yamux window credit in bulk, not after every read (see
  ``_BULK_WINDOW_UPDATES`` below): fewer WINDOW_UPDATE frames, same flow control.
* A handler exception would take the whole py-libp2p host down, so inbound streams are
  handed to a task in this transport's own nursery that catches and logs everything
  (`p2pay.net.base.run_handler`); py-libp2p's own handler task just waits for it.
* After a failed dial py-libp2p refuses the peer for 60 s (negative cache); `connect`
  lifts that block first, so the node's own retry policy decides. It also refuses to dial
  a peer while its only connection is closing (until the close is done), and a connection
  the peer closed may still be held: a stream open that fails on such a connection lets
  it go (waiting at most `CLOSING_WAIT`) and dials afresh, once. `add_address` and
  `connect(multiaddr)` *replace* the peer's known addresses: py-libp2p dials only one
  TCP address per peer, so a stale first address would hide a new one (an address
  that is already the one known is left as it is, and a good address is decoded once
  and remembered, bounded: `Node.call` by multiaddr gives it on every call). The
  AutoConnector (which dials every peer in the peerstore to keep 50-100 connections)
  is switched off, connection pruning starts only at `MAX_CONNECTIONS`, and a dial
  is retried once, not three times.

* A bare yamux RST discards what the peer has not read yet, so `aclose()` sends FIN
  and then RST (py-libp2p keeps data that came before a FIN readable).
* Listening is exclusive: py-libp2p 0.8.1 binds its TCP listeners with SO_REUSEPORT
  (for hole punching), so a second node told to listen on a port another one holds
  would share it, each getting part of the connections. p2pay's listeners are bound
  without it (see ``_install_exclusive_listeners``): the kernel refuses the bind, and
  `open_libp2p_transport` raises `AddressInUse` (any other failure: `ListenError`)
  instead of running with a listener missing.
* py-libp2p 0.8.1 does not enforce yamux flow control on what it receives; p2pay's
  guard does (``_GuardedYamux``): a peer that sends beyond its receive window loses its
  connection, and a stream's window is capped at `RECEIVE_WINDOW` (256 KiB), so the
  muxer holds at most `MAX_STREAM_BUFFER` per stream (specs/threat-model.md row 29b).

Known py-libp2p behaviour the node must live with, which the memory transport does
not imitate: a yamux write that waits more than 5 s for the peer's window (the peer
does not read) fails; the stream is then reset and `send()` raises `StreamClosed`. A
frame larger than the window (256 KiB) goes out only as the peer reads it. Keep a
reader task on every stream.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.keys import KeyType
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer import muxer_multistream as _muxer_multistream_module
from libp2p.stream_muxer.yamux import yamux as _yamux_module
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp import tcp as _tcp_module
from multiaddr import Multiaddr

from p2pay.core.errors import DecodeError, LocalProtocolError
from p2pay.core.identity import Keypair, peer_id_from_public, public_from_peer_id
from p2pay.net.base import (
    CLOSE_TIMEOUT,
    DEFAULT_MAX_FRAME,
    PROTOCOL_ID,
    RESET_TIMEOUT,
    AddressInUse,
    ConnectError,
    ListenError,
    NetError,
    NoAddress,
    PeerNotReached,
    Stream,
    StreamClosed,
    StreamHandler,
    Transport,
    WrongIdentity,
    check_max_frame,
    run_handler,
)
from p2pay.net.framing import FrameReader, frame, frames

__all__ = [
    "MAX_STREAM_BUFFER",
    "RECEIVE_WINDOW",
    "Libp2pStream",
    "Libp2pTransport",
    "open_libp2p_transport",
]

logger = logging.getLogger("p2pay.net")

CONNECT_TIMEOUT = 15.0
"""Upper bound on `connect` (dial, Noise, yamux, protocol negotiation)."""
CLOSING_WAIT = 2.0
"""Longest `connect` waits for a dead or closing connection to the peer to leave
py-libp2p's swarm before it dials afresh (within `CONNECT_TIMEOUT`)."""
MAX_CONNECTIONS = 1000
"""Connections the host accepts (py-libp2p's resource manager allows 1000 by default)."""
DIAL_RETRIES = 1
"""Extra attempts per address when a dial fails (py-libp2p's default is 3)."""
SHUTDOWN_TIMEOUT = 3.0
"""Upper bound on closing the host when the transport's context exits."""
RECEIVE_WINDOW = 256 * 1024
"""Largest yamux receive window of a stream: what the peer may send that we have not
read yet. It is yamux's initial window; py-libp2p's auto-tuning would grow it to
16 MiB per stream, and the node's reader pauses when a session's outbox is full."""
MAX_STREAM_BUFFER = 2 * RECEIVE_WINDOW
"""Most bytes the muxer holds for one stream (received, not yet read by the
`FrameReader`). A peer that respects the window stays below it (py-libp2p's credit
rules keep granted + buffered under 1.5 x the window plus one 64 KiB read); one that
does not loses its connection (see ``_GuardedYamux``)."""

FRAME_WRITE_TIMEOUT = 5.0
"""Longest a yamux frame's write to the secured connection may take once it has begun
(see "whole frames" below); past it the connection is closed. A writer under a deadline
(a reset, a close, shutdown), or already cancelled, waits at most until that deadline or
`FRAME_WRITE_GRACE` after it got the connection, whichever is later (and never past this
bound)."""
FRAME_WRITE_GRACE = 0.5
"""Least time a frame write that got the connection has before its caller's deadline may
cut it short (and close the connection): an honest frame is written in microseconds."""
RESET_LINGER = 60.0
"""Longest a stream reset's RST may wait for its connection after `reset` returned (it
returns within `RESET_TIMEOUT`): past it the connection is closed, which the peer reads
as a reset of every stream on it. See `Libp2pTransport._reset_net`."""

_PROTOCOL = TProtocol(PROTOCOL_ID)
#: addresses (and PeerIDs) whose decoding a transport remembers (``Libp2pTransport._parse``)
_PARSED_MAX = 1024


def _remember(memory: dict[str, Any], key: str, value: Any) -> None:
    """Add to a bounded memory, dropping its oldest entry when full."""
    if len(memory) >= _PARSED_MAX:
        del memory[next(iter(memory))]
    memory[key] = value


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause):
        text = f"{text} ({type(cause).__name__}: {cause})"
    return text[:500]


def _dial_error(exc: BaseException, peer_id: str, where: str) -> ConnectError:
    """What a failed py-libp2p dial means: `WrongIdentity` if a handshake authenticated
    another PeerID (py-libp2p's Noise raises ``PeerIDMismatchesPubkey``), else
    `PeerNotReached` with the deepest cause's text (e.g. "Connection refused")."""
    causes = list(_causes(exc))
    for cause in causes:
        if type(cause).__name__ == "PeerIDMismatchesPubkey":
            actual = str(cause).rpartition("remote_peer_id_from_pubkey=")[2].strip()
            return WrongIdentity(
                f"another peer answered at {where}: dialled {peer_id}, the handshake "
                f"authenticated {actual or 'another identity'}",
                expected=peer_id,
                actual=actual if actual.isalnum() else "",
            )
    reason = ""
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror
            break
    if not reason:
        reason = _describe(causes[-1]) if causes else "connection failed"
    return PeerNotReached(f"cannot reach {peer_id} at {where}: {reason[:200]}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything below it: causes, contexts, and members of exception groups
    and of py-libp2p's MultiError (bounded: a cycle or a huge tree stops the walk)."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo and len(seen) < 64:
        item = todo.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        members = getattr(item, "exceptions", None) or getattr(item, "errors", None) or ()
        if isinstance(members, list | tuple):
            todo.extend(m for m in members if isinstance(m, BaseException))
        for link in (item.__cause__, item.__context__):
            if link is not None:
                todo.append(link)


def _ed25519_public(peer_id: ID) -> bytes:
    """The 32-byte Ed25519 key embedded in a py-libp2p PeerID.

    Raises:
        DecodeError: the PeerID does not embed an Ed25519 key.
    """
    key = peer_id.extract_public_key()
    if key is None or key.get_type() != KeyType.Ed25519:
        raise DecodeError(f"peer {peer_id} does not have an Ed25519 identity")
    raw = key.to_bytes()
    if not isinstance(raw, bytes) or len(raw) != 32 or peer_id_from_public(raw) != str(peer_id):
        raise DecodeError(f"peer {peer_id}: malformed Ed25519 identity")
    return raw


class Libp2pStream:
    """A p2pay stream over a py-libp2p (yamux) stream. See `p2pay.net.base.Stream`."""

    def __init__(
        self,
        net_stream: INetStream,
        *,
        remote_public: bytes,
        max_frame: int,
        transport: Libp2pTransport,
    ) -> None:
        self._net = net_stream
        self._remote_public = remote_public
        self._remote_peer_id = peer_id_from_public(remote_public)
        self._transport = transport
        self._reader = FrameReader(self._read_some, max_frame)
        self._send_lock = trio.Lock()
        self._recv_lock = trio.Lock()
        self._dead = False  # closed or reset locally: send/receive refuse
        self._reset_done = False
        self._read_scope: trio.CancelScope | None = None
        self._write_scope: trio.CancelScope | None = None

    @property
    def remote_public(self) -> bytes:
        return self._remote_public

    @property
    def remote_peer_id(self) -> str:
        return self._remote_peer_id

    def __repr__(self) -> str:
        return f"<Libp2pStream to {self._remote_peer_id}>"

    async def _read_some(self, n: int) -> bytes:
        # A local yamux reset does not wake a pending read: reset() cancels this scope.
        with trio.CancelScope() as scope:
            self._read_scope = scope
            bulk = _BULK_WINDOW_UPDATES.set(True)  # see _yamux_release_on_read below
            try:
                data: bytes = await self._net.read(n)
            except StreamEOF:
                return b""
            except Exception as exc:  # StreamReset, connection lost, muxer errors...
                raise StreamClosed(f"stream failed: {_describe(exc)}") from None
            finally:
                _BULK_WINDOW_UPDATES.reset(bulk)
                self._read_scope = None
            return data
        raise StreamClosed("stream reset")

    async def send(self, payload: bytes) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise LocalProtocolError("a frame payload is bytes")
        await self._write(frame(payload))

    async def send_many(self, payloads: Sequence[bytes]) -> None:
        """Write several frames, in order, as ONE yamux write (one yamux frame and one
        Noise frame while they fit in 64 KiB): the peer's `receive` returns them one by
        one. Same semantics as `send` for each of them."""
        for payload in payloads:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise LocalProtocolError("a frame payload is bytes")
        if payloads:
            await self._write(frames(payloads))

    async def _write(self, data: bytes) -> None:
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # uncontended: no scheduler round trip for the lock
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._dead:
                raise StreamClosed("stream is closed")
            # A write blocked on the peer's yamux window is not woken by a local
            # reset either: reset() cancels this scope.
            with trio.CancelScope() as scope:
                self._write_scope = scope
                try:
                    await self._net.write(data)
                except Exception as exc:
                    await self.reset()
                    raise StreamClosed(f"write failed: {_describe(exc)}") from None
                except BaseException:
                    # Cancelled mid-write: part of a frame may be on the wire.
                    await self.reset()
                    raise
                finally:
                    self._write_scope = None
                return
            raise StreamClosed("stream reset")
        finally:
            lock.release()

    async def receive(self) -> bytes:
        if not self._dead and not self._recv_lock.locked():
            # Frames already buffered (several arrive in one read when the peer writes
            # them together) come out without a read, a lock or a scheduler round trip;
            # a cancelled caller still stops here, as at any trio checkpoint.
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                await self.reset()  # as for any cancelled receive (see base.py)
                raise
            payload = self._reader.next_nowait()  # FrameTooLarge / bad prefix: as below
            if payload is not None:
                return payload
        async with self._recv_lock:
            if self._dead:
                raise StreamClosed("stream is closed")
            try:
                return await self._reader.next()
            except StreamClosed:
                if not self._reader.clean_eof:
                    # Reset by the peer, connection lost, or EOF mid-frame: nothing
                    # more can come out of this stream.
                    await self.reset()
                raise
            except DecodeError:
                raise  # FrameTooLarge / bad prefix: the caller answers, then resets
            except BaseException:
                # Cancelled: yamux may have dropped bytes it had handed to us.
                await self.reset()
                raise

    async def reset(self) -> None:
        self._dead = True
        if self._reset_done:
            return
        self._reset_done = True
        self._transport._forget(self)
        for scope in (self._read_scope, self._write_scope):
            if scope is not None:
                scope.cancel()
        await self._transport._reset_net(self._net)

    async def aclose(self) -> None:
        if self._dead:
            return
        self._dead = True
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                async with self._send_lock:  # let a frame being written finish
                    await self._net.close()  # yamux FIN: the peer reads the rest, then EOF
        except Exception as exc:
            logger.debug("close of %r failed: %s", self, _describe(exc))
        finally:
            # Then RST: frees the yamux stream at once and wakes any local reader.
            # py-libp2p's yamux still hands out the data that arrived before a FIN
            # after an RST (not so without the FIN), so nothing sent is lost.
            await self.reset()


class Libp2pTransport:
    """A py-libp2p host speaking `PROTOCOL_ID`. See `p2pay.net.base.Transport`.

    Use `open_libp2p_transport` to make one.
    """

    def __init__(
        self,
        host: IHost,
        key: Keypair,
        handler: StreamHandler,
        *,
        max_frame: int,
        max_inbound_streams: int,
    ) -> None:
        self._host = host
        self._key = key
        self._peer_id = str(key.peer_id)
        self._handler = handler
        self._max_frame = max_frame
        self._max_inbound = max_inbound_streams
        self._inbound = 0
        self._streams: set[Libp2pStream] = set()
        self._nursery: trio.Nursery | None = None
        self._running = False
        #: address text -> (the PeerID it names or None, its transport part), and PeerID
        #: text -> py-libp2p ID: what `_parse` decoded once, for the addresses given again
        #: and again (`Node.call` by multiaddr gives one on every call). Each at most
        #: `_PARSED_MAX` entries, oldest dropped first; only what decoded enters (a bad
        #: address is refused every time it is given).
        self._split: dict[str, tuple[str | None, Multiaddr, bool]] = {}
        self._peer_ids: dict[str, ID] = {}

    @property
    def public(self) -> bytes:
        return self._key.public

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def addrs(self) -> list[str]:
        return [str(addr) for addr in self._host.get_addrs()]

    @property
    def host(self) -> IHost:
        """The underlying py-libp2p host. Only `p2pay.net.discovery` registers protocols
        on it (gossipsub, Kademlia, ``/p2pay/offers/2.0.0``), each behind a handler that
        never raises; everything else uses it for diagnostics."""
        return self._host

    def is_connected(self, peer_id: str) -> bool:
        """Whether a connection to `peer_id` is open."""
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            return False
        return bool(self._host.get_network().get_connections(pid))

    async def dial(self, peer_id: str, addrs: Sequence[str], *, timeout: float) -> None:
        """Make sure a connection to `peer_id` is open, without opening a stream.

        With a connection already open, nothing is dialled. Otherwise each of `addrs`
        (multiaddrs naming `peer_id`, or bare transport addresses) is tried in turn,
        each replacing the addresses known before (see `add_address`), until one
        connects; with no `addrs`, the address already known is dialled.

        Raises:
            LocalProtocolError: a malformed address, or one naming another peer.
            PeerNotReached: no address connected within `timeout` seconds.
            WrongIdentity: a handshake authenticated another PeerID.
            NoAddress: no `addrs` and no known address.
            ConnectError: the transport is closed, or `peer_id` is ours.
        """
        if not self._running:
            raise ConnectError("transport is closed")
        parsed: list[tuple[ID, Multiaddr]] = []
        for addr in addrs:
            if isinstance(addr, str) and "/p2p/" not in addr:
                addr = f"{addr}/p2p/{peer_id}"
            parsed.append(self._parse(addr, expect=peer_id))
        if peer_id == self._peer_id:
            raise ConnectError("cannot connect to ourselves")
        if self.is_connected(peer_id):
            return
        if not parsed:
            try:
                pid = ID.from_base58(peer_id)
            except Exception:
                raise LocalProtocolError(f"not a PeerID: {peer_id[:80]!r}") from None
            known = self._address_of(pid)
            if known is None:
                raise NoAddress(f"no known address for peer {peer_id}")
            parsed.append((pid, known))
        last: ConnectError | None = None
        with trio.move_on_after(timeout):
            for pid, maddr in parsed:
                self._set_address(pid, maddr)  # also lifts the negative dial cache
                try:
                    await self._host.connect(PeerInfo(pid, [maddr]))
                    return
                except Exception as exc:
                    last = _dial_error(exc, peer_id, str(maddr))
        if isinstance(last, WrongIdentity):
            raise last
        reason = f": {last.message}" if last is not None else f" within {timeout} s"
        raise PeerNotReached(f"cannot reach {peer_id}{reason}")

    @property
    def open_streams(self) -> int:
        """Streams of ours not yet closed or reset."""
        return len(self._streams)

    def __repr__(self) -> str:
        return f"<Libp2pTransport {self._peer_id}>"

    def add_address(self, peer_id: str, addr: str) -> None:
        """Remember `addr` for `peer_id`, replacing the addresses known before.

        py-libp2p dials only one TCP address per peer (the first it knows), so a peer
        that moved would stay unreachable behind its stale address if we appended.
        """
        pid, maddr = self._parse(addr, expect=peer_id)
        self._use_address(pid, maddr)

    def _use_address(self, pid: ID, maddr: Multiaddr) -> None:
        """`_set_address`, skipping the peerstore's work when `maddr` is already the one
        address it knows for `pid` (a caller naming a peer by multiaddr on every call)."""
        if self._holds_only(pid, maddr):
            _swarm(self._host).unblock_peer(pid)  # as `_set_address` does
        else:
            self._set_address(pid, maddr)

    def _holds_only(self, pid: ID, maddr: Multiaddr) -> bool:
        """Whether the peerstore knows exactly `maddr` for `pid` (and nothing else)."""
        try:
            known = self._host.get_peerstore().addrs(pid)
        except Exception:  # py-libp2p's PeerStoreError: a peer it never heard of
            return False
        return len(known) == 1 and known[0] == maddr

    def _set_address(self, pid: ID, maddr: Multiaddr) -> None:
        peerstore = self._host.get_peerstore()
        peerstore.clear_addrs(pid)
        peerstore.add_addrs(pid, [maddr], PERMANENT_ADDR_TTL)
        _swarm(self._host).unblock_peer(pid)

    def _address_of(self, pid: ID) -> Multiaddr | None:
        """The address we would dial `pid` at, None if we know none."""
        try:
            addrs = self._host.get_peerstore().addrs(pid)
        except Exception:  # py-libp2p's PeerStoreError: a peer it never heard of
            return None
        return addrs[0] if addrs else None

    def _parse(self, addr: str, *, expect: str | None) -> tuple[ID, Multiaddr]:
        """Split a multiaddr into (PeerID, transport part); LocalProtocolError if bad.

        The multiaddr decoding of a good address is done once and remembered (bounded, see
        ``_split``): it costs hundreds of microseconds in py-libp2p, and a caller naming a
        peer by multiaddr gives the address on every call. The checks against `expect`
        run every time.
        """
        if not isinstance(addr, str) or not (expect is None or isinstance(expect, str)):
            raise LocalProtocolError("an address is a string")
        addr = str(addr)
        split = self._split.get(addr)
        if split is None:
            split = self._split_new(addr)
            _remember(self._split, addr, split)
        named, maddr, has_transport = split
        if expect is None:
            if named is None:
                raise LocalProtocolError(f"address {addr[:200]!r} has no /p2p/<peer id>")
            expect = named
        elif named is not None and named != expect:
            raise LocalProtocolError(f"address {addr[:200]!r} names another peer than {expect}")
        pid = self._peer_ids.get(expect)
        if pid is None:
            try:
                public_from_peer_id(expect)
                pid = ID.from_base58(expect)
            except (DecodeError, ValueError) as exc:
                raise LocalProtocolError(f"not an Ed25519 PeerID: {expect[:80]!r}") from exc
            _remember(self._peer_ids, str(expect), pid)
        if not has_transport:
            raise LocalProtocolError(f"address {addr[:200]!r} has no transport part")
        return pid, maddr

    @staticmethod
    def _split_new(addr: str) -> tuple[str | None, Multiaddr, bool]:
        """(the PeerID `addr` names or None, its transport part, whether that part is not
        empty); LocalProtocolError if it is not a multiaddr."""
        try:
            maddr = Multiaddr(addr)
            named = maddr.get_peer_id()
            if named is not None:
                maddr = maddr.decapsulate(Multiaddr(f"/p2p/{named}"))
            has_transport = bool(str(maddr))
        except Exception as exc:
            raise LocalProtocolError(f"invalid multiaddr {addr[:200]!r}: {exc}") from None
        return named, maddr, has_transport

    async def connect(self, peer: str) -> Libp2pStream:
        if not self._running:
            raise ConnectError("transport is closed")
        if not isinstance(peer, str):
            raise ConnectError("a peer is a multiaddr or a PeerID string")
        try:
            if peer.startswith("/"):
                pid, maddr = self._parse(peer, expect=None)
                self._use_address(pid, maddr)
            else:
                public_from_peer_id(peer)
                pid = ID.from_base58(peer)
        except (LocalProtocolError, DecodeError, ValueError) as exc:
            raise ConnectError(f"cannot dial {peer[:200]!r}: {exc}") from None
        if str(pid) == self._peer_id:
            raise ConnectError("cannot connect to ourselves")
        known = self._address_of(pid)
        if known is None:
            raise NoAddress(f"no known address for peer {pid}")
        swarm = _swarm(self._host)
        swarm.unblock_peer(pid)  # lift the 60 s negative cache of a failure
        net_stream = None
        with trio.move_on_after(CONNECT_TIMEOUT):
            held = swarm.get_connections(pid)
            try:
                net_stream = await self._host.new_stream(pid, [_PROTOCOL])
            except Exception as exc:
                dead = [c for c in held if c in swarm.get_connections(pid)]
                if not dead or not (_connection_died(exc) or all(c.is_closed for c in dead)):
                    raise _dial_error(exc, str(pid), str(known)) from None
                # The connection py-libp2p still held is dead (its socket refused our write:
                # the peer closed it, e.g. after its own frame write towards us was cut
                # short while we read nothing, see "Whole frames"; our reader has not seen
                # its end yet) or closing (the peer closed it or restarted: py-libp2p
                # refuses to dial until its close is done, "No valid connections
                # available"): close it, let it go, and dial afresh, once.
                logger.info("stream to %s failed on a dead connection: %s", pid, _describe(exc))
                await _drop_connections(swarm, pid, dead)
                try:
                    net_stream = await self._host.new_stream(pid, [_PROTOCOL])
                except Exception as exc2:
                    raise _dial_error(exc2, str(pid), str(known)) from None
        if net_stream is None:
            raise PeerNotReached(
                f"cannot reach {pid} at {known}: no connection within {CONNECT_TIMEOUT} s"
            )
        try:
            remote_public = _ed25519_public(net_stream.muxed_conn.peer_id)
            if peer_id_from_public(remote_public) != str(pid):
                raise DecodeError(f"dialled {pid}, reached {net_stream.muxed_conn.peer_id}")
        except BaseException as exc:
            await self._reset_net(net_stream)
            if isinstance(exc, DecodeError):
                raise WrongIdentity(
                    f"another peer answered at {known}: {exc}",
                    expected=str(pid),
                    actual=str(net_stream.muxed_conn.peer_id),
                ) from None
            raise
        stream = Libp2pStream(
            net_stream, remote_public=remote_public, max_frame=self._max_frame, transport=self
        )
        self._streams.add(stream)
        if not self._running:  # closed while we were dialling
            await stream.reset()
            raise ConnectError("transport is closed")
        return stream

    # --- inbound -----------------------------------------------------------------

    async def _on_stream(self, net_stream: INetStream) -> None:
        """py-libp2p's handler for `PROTOCOL_ID`; runs in py-libp2p's task, never raises."""
        try:
            if not self._running or self._nursery is None:
                raise _Refused("transport is closing")
            if self._inbound >= self._max_inbound:
                raise _Refused(f"{self._inbound} inbound streams open, limit reached")
            remote_public = _ed25519_public(net_stream.muxed_conn.peer_id)
        except Exception as exc:
            logger.info("refused a stream: %s", _describe(exc))
            await self._reset_net(net_stream)
            return
        stream = Libp2pStream(
            net_stream, remote_public=remote_public, max_frame=self._max_frame, transport=self
        )
        self._streams.add(stream)
        self._inbound += 1
        done = trio.Event()
        try:
            self._nursery.start_soon(self._serve, stream, done)
        except RuntimeError:  # our nursery is closing
            self._inbound -= 1
            await stream.reset()
            return
        try:
            await done.wait()
        finally:
            if not done.is_set():
                # py-libp2p cancelled its task (connection closing): stop ours too.
                await stream.reset()

    async def _serve(self, stream: Libp2pStream, done: trio.Event) -> None:
        try:
            await run_handler(self._handler, stream)
        finally:
            self._inbound -= 1
            done.set()

    def _forget(self, stream: Libp2pStream) -> None:
        self._streams.discard(stream)

    async def _reset_net(self, net_stream: INetStream) -> None:
        """Reset a py-libp2p stream: return within `RESET_TIMEOUT`, but never give its RST
        up for that.

        The RST waits for the connection (another frame being written to it, or a task
        scheduled seconds late on a loaded machine). Given up at the caller's bound, it
        was never written and the peer never learnt: its stream stayed open, what it sent
        next was dropped by our muxer (py-libp2p, like go-yamux, discards data for a
        stream it no longer has) and its call waited for an answer until its own timeout
        (the hostile-load test beside CPU hogs: 300 s). So the reset runs in the
        transport's nursery: the caller waits for it at most `RESET_TIMEOUT`, and the RST
        leaves when the connection takes it, written under the same bound as a caller's
        (`_RESET_FRAME`), within `RESET_LINGER`; past that the connection is closed.
        """
        done = trio.Event()
        started = False
        if self._nursery is not None:
            try:
                self._nursery.start_soon(self._reset_task, net_stream, done)
                started = True
            except RuntimeError:  # the transport has closed: no task outlives it
                pass
        with trio.CancelScope(shield=True, deadline=trio.current_time() + RESET_TIMEOUT):
            if started:
                await done.wait()
            else:
                try:
                    await net_stream.reset()
                except Exception as exc:
                    logger.debug("reset of a stream failed: %s", _describe(exc))

    async def _reset_task(self, net_stream: INetStream, done: trio.Event) -> None:
        token = _RESET_FRAME.set(True)
        try:
            with trio.move_on_after(RESET_LINGER) as waited:
                try:
                    await net_stream.reset()
                except Exception as exc:
                    logger.debug("reset of a stream failed: %s", _describe(exc))
            if waited.cancelled_caught:
                # The RST may never have left: what the peer reads instead is the end of
                # the connection.
                conn = net_stream.muxed_conn
                logger.warning(
                    "a stream reset to %s waited %.0f s for the connection: connection closed",
                    conn.peer_id,
                    RESET_LINGER,
                )
                if isinstance(conn, _GuardedYamux):  # (every connection of ours)
                    await conn.close_broken()
                else:
                    bound = trio.current_time() + RESET_TIMEOUT
                    with trio.CancelScope(shield=True, deadline=bound):
                        try:
                            await conn.close()
                        except Exception as exc:
                            logger.debug("close of the connection to %s: %s", conn.peer_id, exc)
        finally:
            _RESET_FRAME.reset(token)
            done.set()

    async def _reset_all(self) -> None:
        for stream in list(self._streams):
            await stream.reset()


class _Refused(NetError):
    """An inbound stream this transport will not serve (closing, or at its limit)."""


# --- yamux window updates ---------------------------------------------------------
#
# py-libp2p 0.8.1's yamux returns receive-window credit after EVERY read by default
# (``PY_YAMUX_RELEASE_ON_READ``, read from the environment at each read): one
# WINDOW_UPDATE frame, i.e. one more Noise frame written here and read there, per read.
# p2pay's streams read small frames often, so for reads made by `Libp2pStream` only we
# switch that off: credit then goes back by py-libp2p's hysteresis rules alone (once
# half the window is consumed, or a small top-up while the window is below its target).
# Flow control is the same (the writer still stops at a full window and py-libp2p's
# 5 s write timeout is unchanged); only the number of updates drops (by about a third
# on one-frame-per-read traffic: tests/integration/test_transports.py).
# The policy is chosen per read through a context variable, so other users of
# py-libp2p in the same process keep their setting, and a process that sets
# ``PY_YAMUX_RELEASE_ON_READ`` itself keeps its choice for p2pay's streams too.

_BULK_WINDOW_UPDATES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "p2pay_bulk_window_updates", default=False
)


def _install_window_update_policy() -> None:
    original = getattr(_yamux_module, "_yamux_release_on_read", None)
    if original is None or getattr(original, "p2pay_policy", False):
        return  # another py-libp2p version (then its default applies), or installed

    def release_on_read() -> bool:
        if _BULK_WINDOW_UPDATES.get() and _RELEASE_ON_READ_ENV not in os.environ:
            return False
        return bool(original())

    release_on_read.__dict__["p2pay_policy"] = True  # (the marker checked above)
    _yamux_module._yamux_release_on_read = release_on_read


_RELEASE_ON_READ_ENV = "PY_YAMUX_RELEASE_ON_READ"
_install_window_update_policy()


# --- exclusive listeners ------------------------------------------------------------
#
# py-libp2p 0.8.1 (libp2p/transport/tcp/tcp.py, `_open_reuseport_listeners`, called by
# `TCPListener.listen`) sets SO_REUSEADDR *and* SO_REUSEPORT on every listening socket,
# so that hole-punching dials can leave from the listen port. On Linux, SO_REUSEPORT
# lets any later socket of the same user that also sets it bind the same address and
# port: a second node "listens" on a port the first holds, and the kernel spreads the
# incoming connections over both. It also ignores bind failures (`Swarm.listen` logs
# them at debug level and carries on), so a node could run without its listener.
#
# For listeners opened by `open_libp2p_transport` (chosen per task through a context
# variable, as the yamux window policy is), the sockets are bound by
# `trio.open_tcp_listeners` instead: SO_REUSEADDR only (restart while old connections
# sit in TIME_WAIT), IPV6_V6ONLY on IPv6, no SO_REUSEPORT. The bind itself is then
# exclusive, enforced by the kernel at bind time; there is no check-then-bind race.
# Another socket holding the port with or without SO_REUSEPORT makes our bind fail
# with EADDRINUSE, which is recorded here and raised as `AddressInUse` once
# py-libp2p's listen has returned. p2pay never dials from its listen port (no hole
# punching), so it loses nothing.

_LISTEN_FAILURES: contextvars.ContextVar[list[tuple[int, OSError]] | None] = contextvars.ContextVar(
    "p2pay_listen_failures", default=None
)


def _install_exclusive_listeners() -> None:
    original = getattr(_tcp_module, "_open_reuseport_listeners", None)
    if original is None or getattr(original, "p2pay_policy", False):
        return  # another py-libp2p version (see the check in open_libp2p_transport)

    async def open_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
        failures = _LISTEN_FAILURES.get()
        if failures is None:  # not one of ours: py-libp2p's own behaviour
            listeners: list[trio.SocketListener] = await original(host, port)
            return listeners
        try:
            return list(await trio.open_tcp_listeners(port, host=host, backlog=128))
        except OSError as exc:
            failures.append((port, exc))
            raise OpenConnectionError(f"Failed to listen on {host}:{port}: {exc}") from exc

    open_listeners.__dict__["p2pay_policy"] = True  # (the marker checked above)
    _tcp_module._open_reuseport_listeners = open_listeners
    # py-libp2p also logs the failure at ERROR; ours is reported once, as the exception.
    logging.getLogger(_tcp_module.__name__).addFilter(_drop_our_listen_failures)


def _drop_our_listen_failures(record: logging.LogRecord) -> bool:
    return not (
        _LISTEN_FAILURES.get() is not None
        and record.getMessage().startswith("Failed to start TCP listener")
    )


_install_exclusive_listeners()


def _listen_error(
    host: IHost, requested: Sequence[Multiaddr], failures: list[tuple[int, OSError]]
) -> ListenError | None:
    """The error for the first requested address py-libp2p is not listening on, if any."""
    listening = host.get_network().listeners
    for maddr in requested:
        if str(maddr) in listening:
            continue
        try:
            port = int(maddr.value_for_protocol("tcp"))
        except Exception:
            port = -1
        cause = next((exc for p, exc in failures if p == port), None)
        if cause is not None and cause.errno == errno.EADDRINUSE:
            return AddressInUse(
                f"cannot listen on {maddr}: address already in use "
                "(another process or node holds this port)",
                addr=str(maddr),
            )
        reason = (cause.strerror or str(cause)) if cause is not None else "not a TCP address?"
        return ListenError(f"cannot listen on {maddr}: {reason}", addr=str(maddr))
    return None


# --- yamux flow control -------------------------------------------------------------
#
# py-libp2p 0.8.1 does not enforce yamux flow control on what it receives:
# `Yamux.handle_incoming` (libp2p/stream_muxer/yamux/yamux.py) appends every DATA
# frame's body to the stream's buffer (`Yamux.stream_buffers[stream_id]`, a bytearray),
# then subtracts it from `YamuxStream.recv_window`, and when that goes negative it logs
# "peer exceeded receive window by N bytes", sets the window to 0 and carries on. A peer
# that ignores WINDOW_UPDATEs can therefore make us buffer without limit in a stream
# whose reader is paused (450 MiB in 2 s, measured; the node pauses reading a session
# whose outbox is full). It also reads a whole DATA frame body, up to 16 MiB, before
# looking at it.
#
# The guard (`_GuardedYamux`, used for every yamux connection of this process: it only
# enforces the protocol, as go-yamux does):
#
# * Each stream's buffer is a `_StreamBuffer`, whose ``extend`` (the only way
#   `handle_incoming` adds data) refuses a DATA body longer than the stream's remaining
#   credit (`recv_window`, which py-libp2p raises *before* sending the matching
#   WINDOW_UPDATE, so an honest peer never exceeds it), or one that would take a p2pay
#   stream's buffer past `MAX_STREAM_BUFFER`. The data is dropped, never buffered.
# * A DATA frame announcing more than any credit the connection has granted is refused
#   before its body is read.
# * Either way the connection is closed as go-yamux does (ErrRecvWindowExceeded): a
#   GO_AWAY with "protocol error", then the secured connection is closed, so every
#   stream of that peer reads a reset. The refusal is raised as `_WindowExceeded`, a
#   `trio.TooSlowError`: the one exception `handle_incoming` answers by closing the
#   connection from every DATA path (new stream, ACK, data).
# * Every stream's window is capped at `RECEIVE_WINDOW` from its creation (py-libp2p's
#   auto-tuning doubles it on every quick read, to 4 MiB during protocol negotiation
#   alone, up to 16 MiB), so a paused session holds at most `MAX_STREAM_BUFFER` in the
#   muxer besides its `FrameReader` buffer.
#
# Whole frames (`_GuardedYamux._write_frame`, every frame the connection writes). py-libp2p
# 0.8.1's Noise session encrypts a frame, using up the next nonce, and then awaits the raw
# connection's write lock (libp2p/io/trio.py `TrioTCPStream.write`), a checkpoint. A writer
# cancelled there (e.g. a stream reset the moment yamux handed it the connection's write
# lock) sent nothing under a nonce the peer then waits for: every later frame fails
# authentication there ("Failed authentication of message") and the peer drops the whole
# connection, every stream and protocol on it; for a moment after, py-libp2p still holds
# the dead connection and refuses dials to that peer ("No valid connections available").
# Attack round 41's reset storms did this dozens of times a run. So once a frame has the
# connection's write lock, its write is shielded from cancellation: it is written whole,
# then a cancelled writer stops at the next checkpoint. A write stuck longer than
# `FRAME_WRITE_TIMEOUT` (a peer that stopped reading TCP) may have left part of a frame
# on the wire: the connection then writes nothing more and is closed. A writer with a
# deadline of its own keeps it (give or take `FRAME_WRITE_GRACE`): otherwise a peer that
# stopped reading TCP held every reset towards it for 5 s instead of RESET_TIMEOUT, and
# shutdown for 5 s per such peer (attack round 42).
#
# Like the two policies above, this applies to every yamux connection of the process
# (py-libp2p builds them from a module global); it changes only how much a peer may
# send ahead, never what an honest peer can send.


#: set in the task that writes a stream reset's RST after its caller went on
#: (`Libp2pTransport._reset_net`): the frame's write is bounded as a caller's reset would be
_RESET_FRAME: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "p2pay_reset_frame", default=False
)


class _FrameCutShort(NetError, RawConnError):
    """A frame write to the connection did not finish within its bound: part of it may be
    on the wire, so the connection writes nothing more and is closed (see above). A
    `RawConnError` too: what py-libp2p's muxer expects from a failed write."""


class _WindowExceeded(NetError, trio.TooSlowError):
    """A peer sent more than the yamux receive window it was given."""


class _StreamBuffer(bytearray):
    """One yamux stream's receive buffer that refuses data beyond the peer's credit."""

    def __init__(self, conn: _GuardedYamux, stream_id: int) -> None:
        super().__init__()
        self.conn = conn
        self.stream_id = stream_id
        self.high = 0  # most bytes held at once

    def extend(self, data: Any) -> None:
        size = len(data)
        stream = self.conn.streams.get(self.stream_id)
        credit = stream.recv_window if stream is not None else 0
        bound = getattr(stream, "p2pay_buffer_bound", None)
        if size > credit or (bound is not None and len(self) + size > bound):
            self.conn.window_exceeded(self.stream_id, size, credit, len(self))
        super().extend(data)
        if len(self) > self.high:
            self.high = len(self)
            self.conn.max_buffered = max(self.conn.max_buffered, self.high)


class _StreamBuffers(dict[int, bytearray]):
    """`Yamux.stream_buffers`, making each new stream's buffer a `_StreamBuffer`."""

    def __init__(self, conn: _GuardedYamux) -> None:
        super().__init__()
        self.conn = conn

    def __setitem__(self, stream_id: int, buffer: bytearray) -> None:
        if type(buffer) is bytearray and not buffer:  # a new stream (py-libp2p made it first)
            buffer = _StreamBuffer(self.conn, stream_id)
            _limit_receive_window(self.conn.streams.get(stream_id))
        super().__setitem__(stream_id, buffer)


class _GuardedYamux(Yamux):
    """py-libp2p's yamux with the receive window enforced (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_buffers = _StreamBuffers(self)
        self.window_violations = 0
        self.max_buffered = 0  # most bytes any one stream held at once
        self.p2pay_write_broken = False  # a frame write timed out: nothing more is written

    def window_exceeded(self, stream_id: int, size: int, credit: int, buffered: int) -> None:
        self.window_violations += 1
        logger.warning(
            "peer %s exceeded its yamux receive window on stream %d (%d bytes sent, "
            "%d allowed, %d buffered): connection closed",
            self.peer_id,
            stream_id,
            size,
            max(credit, 0),
            buffered,
        )
        raise _WindowExceeded(f"peer exceeded its receive window on stream {stream_id}")

    async def _read_data_body(self, length: int) -> bytes:
        if length > _yamux_module.DEFAULT_WINDOW_SIZE:
            granted = max((s.recv_window for s in self.streams.values()), default=0)
            if length > granted:  # more than any stream may receive: do not read it
                self.window_exceeded(-1, length, granted, 0)
        body: bytes = await super()._read_data_body(length)
        return body

    async def _cleanup_on_error(self) -> None:
        if self.window_violations and not self.event_closed.is_set():
            goaway = struct.pack(
                _yamux_module.YAMUX_HEADER_FORMAT,
                0,
                _yamux_module.TYPE_GO_AWAY,
                0,
                0,
                _yamux_module.GO_AWAY_PROTOCOL_ERROR,
            )
            with trio.move_on_after(RESET_TIMEOUT):
                try:
                    await self._write_frame(goaway)
                except Exception as exc:
                    logger.debug("GO_AWAY to %s failed: %s", self.peer_id, _describe(exc))
        await super()._cleanup_on_error()

    async def close_broken(self) -> None:
        """Write nothing more to this connection and close it (bounded): what the peer
        reads is the end of every stream on it."""
        self.p2pay_write_broken = True
        with trio.CancelScope(shield=True, deadline=trio.current_time() + RESET_TIMEOUT):
            try:
                await self.secured_conn.close()
            except Exception as exc:
                logger.debug("close of the connection to %s: %s", self.peer_id, exc)

    async def _write_frame(self, data: bytes) -> None:
        # Every frame of the connection goes through here (see "whole frames" above).
        async with self._write_lock:  # waiting for the connection: cancellable, nothing sent
            if self.p2pay_write_broken:
                raise _FrameCutShort("a frame write to this connection was cut short: it is closed")
            # A writer under a deadline (a reset's RESET_TIMEOUT, a close's, the host's
            # SHUTDOWN_TIMEOUT) keeps it, give or take FRAME_WRITE_GRACE: a frame still not
            # written then is as stuck as one past FRAME_WRITE_TIMEOUT (attack round 42).
            now = trio.current_time()
            if _RESET_FRAME.get():
                # A reset's RST written after its caller went on (`_reset_net`): waiting
                # for the connection was not bounded by RESET_TIMEOUT, the write still is.
                bound = now + max(RESET_TIMEOUT, FRAME_WRITE_GRACE)
            else:
                bound = min(
                    now + FRAME_WRITE_TIMEOUT,
                    max(trio.current_effective_deadline(), now + FRAME_WRITE_GRACE),
                )
            with trio.CancelScope(shield=True, deadline=bound) as scope:
                await self.secured_conn.write(data)
            self.p2pay_write_broken = scope.cancelled_caught
        if scope.cancelled_caught:
            logger.warning(
                "a frame to %s was not written within %.1f s: connection closed",
                self.peer_id,
                bound - now,
            )
            await self.close_broken()
            raise _FrameCutShort(f"a frame write was cut short after {bound - now:.1f} s")
        await trio.lowlevel.checkpoint()  # a cancelled writer stops here, its frame whole


def _install_yamux_guard() -> None:
    # py-libp2p's muxer negotiation builds yamux connections from its module's `Yamux`
    # whatever class the host was given (muxer_multistream.MuxerMultistream.new_conn).
    # (through the module's namespace: the module imports `Yamux` without re-exporting it)
    namespace = vars(_muxer_multistream_module)
    if namespace.get("Yamux") is Yamux:
        namespace["Yamux"] = _GuardedYamux


_install_yamux_guard()


def _limit_receive_window(muxed: object) -> None:
    """Cap a new yamux stream's receive window at `RECEIVE_WINDOW` and bound what the
    muxer may buffer for it at `MAX_STREAM_BUFFER`. Done when the stream is made: its
    first reads (protocol negotiation) already let py-libp2p grow the window to MiBs."""
    if not isinstance(muxed, YamuxStream) or getattr(muxed, "p2pay_buffer_bound", None):
        return
    # (new instance attributes of py-libp2p's stream: set through its namespace)
    attrs = vars(muxed)
    attrs["p2pay_buffer_bound"] = MAX_STREAM_BUFFER
    muxed.target_recv_window = min(muxed.target_recv_window, RECEIVE_WINDOW)
    grow = muxed._apply_autotune_epoch

    def capped_autotune(buffered: int) -> int:
        # py-libp2p doubles the target (up to 16 MiB) and grants the difference at once;
        # keep the target at RECEIVE_WINDOW and take back what it granted beyond it.
        extra: int = grow(buffered)
        excess = muxed.target_recv_window - RECEIVE_WINDOW
        if excess > 0:
            muxed.target_recv_window = RECEIVE_WINDOW
            take = min(excess, extra)
            muxed.recv_window -= take
            extra -= take
        return extra

    attrs["_apply_autotune_epoch"] = capped_autotune  # shadows the method, this stream only


def _new_host(key: Keypair, listen: Sequence[Multiaddr]) -> IHost:
    """A py-libp2p host with the p2pay key, Noise only, yamux only, one connection per peer."""
    key_pair = ed25519_key_pair(key.seed)
    if key_pair.public_key.to_bytes() != key.public:  # pragma: no cover - library drift
        raise RuntimeError("py-libp2p derived another public key from the seed")
    noise = NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)
    config = ConnectionConfig(
        max_connections_per_peer=1,
        # No pruning below MAX_CONNECTIONS, and no background dialling (see below).
        max_connections=MAX_CONNECTIONS,
        high_watermark=MAX_CONNECTIONS,
        low_watermark=0,
        min_connections=0,
        # py-libp2p bounds each step of a connect by 10 s of its own (the Noise and yamux
        # upgrade, each stream's protocol negotiation), both ways; a peer stalled for
        # 10 s (a loaded machine, a paused process) would fail a connect before
        # `CONNECT_TIMEOUT`, which is the one bound the node is written against.
        outbound_upgrade_timeout=CONNECT_TIMEOUT,
        inbound_upgrade_timeout=CONNECT_TIMEOUT,
        outbound_stream_protocol_negotiation_timeout=CONNECT_TIMEOUT,
        inbound_stream_protocol_negotiation_timeout=CONNECT_TIMEOUT,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): _GuardedYamux},
        connection_config=config,
        listen_addrs=list(listen),
    )
    # py-libp2p's AutoConnector keeps dialling every peer in the peerstore to reach a
    # connection target; the node decides whom it talks to. It only runs once started.
    # (Its `start` is replaced on this instance, through the instance's namespace.)
    network = _swarm(host)
    vars(network.auto_connector)["start"] = _do_nothing
    # One retry instead of three (with backoff, 0.7 s to give up on a closed port):
    # the node has its own retry policy and wants a prompt ConnectError.
    network.retry_config = RetryConfig(max_retries=DIAL_RETRIES)
    mux = host.get_mux()
    mux.handlers = _Handlers(mux.handlers)
    return host


class _Handlers(dict[TProtocol | None, Any]):
    """py-libp2p's table of stream handlers by protocol, where a protocol removed while a
    stream is being negotiated for it reads as having no handler.

    py-libp2p's multiselect checks that the protocol a peer asks for has a handler, writes
    its acceptance (a scheduling point), then indexes the table: a handler removed in
    between (p2pay removes its discovery handlers when discovery closes while the host
    runs on) raised KeyError there, which escaped the host's stream task and killed the
    host. With no handler the host resets that one stream instead.
    """

    def __missing__(self, protocol: TProtocol | None) -> None:
        return None


async def _drop_connections(swarm: Swarm, pid: ID, dead: list[INetConn]) -> None:
    """Close the dead connections `dead` to `pid` and wait (at most `CLOSING_WAIT`) for
    them to leave the swarm; any still there then leaves its records (its close goes on)."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + RESET_TIMEOUT):
        for conn in dead:
            try:
                await conn.close()  # (at once if it is closing already)
            except Exception as exc:
                logger.debug("close of a dead connection to %s: %s", pid, _describe(exc))
    with trio.move_on_after(CLOSING_WAIT):
        while any(c in swarm.get_connections(pid) for c in dead):
            await trio.sleep(0.01)
    for conn in dead:
        if isinstance(conn, SwarmConn) and conn in swarm.get_connections(pid):
            swarm.remove_conn(conn)


def _connection_died(exc: BaseException) -> bool:
    """Whether a failed stream open shows the connection under it dead: its socket
    refused a write (the peer closed or reset it), or a frame write was cut short."""
    for cause in _causes(exc):
        if isinstance(cause, _FrameCutShort):
            return True
        if isinstance(cause, OSError) and cause.errno in (errno.EPIPE, errno.ECONNRESET):
            return True
    return False


def _swarm(host: IHost) -> Swarm:
    """The host's network, py-libp2p's `Swarm` (whose retry policy, auto-connector and
    negative dial cache p2pay configures)."""
    network = host.get_network()
    if not isinstance(network, Swarm):  # pragma: no cover - library drift
        raise RuntimeError(f"py-libp2p's host network is a {type(network).__name__}, not a Swarm")
    return network


async def _do_nothing() -> None:
    return None


@asynccontextmanager
async def open_libp2p_transport(
    key: Keypair,
    handler: StreamHandler,
    *,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    max_frame: int = DEFAULT_MAX_FRAME,
    max_inbound_streams: int = 1024,
) -> AsyncIterator[Transport]:
    """Start a libp2p host for `key` and serve `PROTOCOL_ID` with `handler`.

    Args:
        key: this peer's identity; also the libp2p host key.
        handler: run as ``handler(stream)`` for each inbound stream, in a task of the
            transport's nursery; its exceptions are logged and the stream is reset.
        listen: multiaddrs to listen on (port 0 picks a free port; see `addrs`).
        max_frame: largest frame payload this side accepts.
        max_inbound_streams: inbound streams served at once; further ones are reset.

    Yields:
        The transport. Leaving the context resets every stream and closes the host
        (bounded by `SHUTDOWN_TIMEOUT`).

    Raises:
        LocalProtocolError: a bad argument (address, limits).
        AddressInUse: a listen address's port is held by another socket (this process
            or another); p2pay never shares a listening port.
        ListenError: any other address it cannot listen on.
    """
    check_max_frame(max_frame)
    if isinstance(max_inbound_streams, bool) or not isinstance(max_inbound_streams, int):
        raise LocalProtocolError("max_inbound_streams must be an int")
    if max_inbound_streams < 1:
        raise LocalProtocolError("max_inbound_streams must be >= 1")
    try:
        listen_addrs = [Multiaddr(addr) for addr in listen]
    except Exception as exc:
        raise LocalProtocolError(f"invalid listen address: {exc}") from None
    if not listen_addrs:
        raise LocalProtocolError("at least one listen address is needed")
    host = _new_host(key, listen_addrs)
    transport = Libp2pTransport(
        host, key, handler, max_frame=max_frame, max_inbound_streams=max_inbound_streams
    )
    # An exception from the caller's block is held here and re-raised once outside
    # every nursery, so it comes out as itself rather than inside ExceptionGroups.
    body_error: Exception | None = None
    listen_error: ListenError | None = None
    failures: list[tuple[int, OSError]] = []
    token: contextvars.Token[list[tuple[int, OSError]] | None] | None
    token = _LISTEN_FAILURES.set(failures)  # exclusive binds
    try:
        async with host.run(listen_addrs=listen_addrs):
            _LISTEN_FAILURES.reset(token)  # our listeners are bound: back to py-libp2p's
            token = None
            listen_error = _listen_error(host, listen_addrs, failures)
            try:
                if listen_error is None:
                    async with trio.open_nursery() as nursery:
                        transport._nursery = nursery
                        transport._running = True
                        host.set_stream_handler(_PROTOCOL, transport._on_stream)
                        try:
                            yield transport
                        except Exception as exc:
                            body_error = exc
                        finally:
                            transport._running = False
                            host.remove_stream_handler(_PROTOCOL)
                            with trio.CancelScope(shield=True):
                                await transport._reset_all()
                            nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_TIMEOUT):
                    try:
                        await host.close()
                    except Exception as exc:
                        logger.debug("closing the libp2p host failed: %s", _describe(exc))
    finally:
        if token is not None:
            _LISTEN_FAILURES.reset(token)
    if listen_error is not None:
        raise listen_error
    if body_error is not None:
        raise body_error


if TYPE_CHECKING:  # `mypy --strict p2pay` checks both classes against the interface
    _STREAM: type[Stream] = Libp2pStream
    _TRANSPORT: type[Transport] = Libp2pTransport
