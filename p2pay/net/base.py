"""The transport interface: authenticated, ordered, framed, bidirectional streams.

Theory of operation
-------------------
A `Transport` gives a node streams to other peers; a `Stream` carries whole frames
(byte strings) in order, in both directions, between two authenticated peers. The
transport knows nothing about payments: the node moves frames between a stream and the
pure core. One long-lived stream per peer pair carries many requests (design.md, "Wire").

Two implementations share this interface and its semantics (the same integration suite
runs against both): `p2pay.net.p2p` (libp2p: TCP, Noise, yamux) and `p2pay.net.memory`
(in-process, for simulations and fast tests).

Semantics common to both:

* `send()` writes one frame; concurrent callers are serialized, frames never interleave.
* ``send_many(payloads)`` writes the same frames as one `send()` each would, in order, but
  at once (libp2p: one yamux write; in memory: one arrival time for the burst).
* `receive()` returns the next frame; `StreamClosed` at end of stream, on reset or when the
  connection is lost; `FrameTooLarge` (a `DecodeError`) when the peer announces a frame
  larger than this side's ``max_frame``: the caller may still send (an error frame) and
  must then `reset()` the stream; further `receive()` calls raise again.
* **Cancelling** a `receive()`, or a `send()` that has started writing, resets the stream:
  a cancelled libp2p read can lose buffered bytes and a cancelled write can leave half a
  frame on the wire, so the stream cannot be trusted afterwards (py-libp2p notes, section
  4). Read from one long-lived reader task; call `aclose()` before cancelling it if the
  close should be graceful. A task cancelled while *waiting* for the send lock does not
  reset anything.
* `aclose()` is a graceful close: frames already sent are delivered, then the peer reads
  `StreamClosed` (and its `send()` fails). Afterwards local `send()` / `receive()` raise
  `StreamClosed`; frames arriving for us are dropped.
* `reset()` aborts both directions at once: frames not yet read, on either side, are
  dropped (py-libp2p's yamux discards what the reader has not consumed when an RST
  arrives without a FIN), and both ends read `StreamClosed`.
* Inbound streams run ``handler(stream)`` in a task of the transport's own nursery; any
  exception from the handler is logged (logger ``p2pay.net``). When the handler
  returns, the stream is closed gracefully; when it raises, it is reset. A handler
  never takes the transport down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import trio

from p2pay.core.errors import ErrorCode, LocalProtocolError, P2payError
from p2pay.core.offers import FETCH_PROTOCOL_ID, FETCH_TIMEOUT_MS, MAX_FETCH_OFFERS, MAX_OFFER_SIZE

PROTOCOL_ID = "/p2pay/2.0.0"
DEFAULT_MAX_FRAME = 1 << 20

logger = logging.getLogger("p2pay.net")

# Bounds on clean-up work, so shutting down never hangs on a wedged peer.
RESET_TIMEOUT = 1.0
CLOSE_TIMEOUT = 2.0


class NetError(P2payError):
    """Base of the transport's exceptions, a `P2payError` like every error p2pay raises.

    A local condition (a stream ended, a peer could not be reached), not a refusal a peer
    put on the wire: `code` is `ErrorCode.INTERNAL` or, for the connect errors that say what
    happened, a local code (UNREACHABLE, WRONG_PEER, NO_ADDRESS); ``str()`` is the message.
    """

    def __str__(self) -> str:
        return self.message


class StreamClosed(NetError):
    """The stream ended: EOF, reset by either side, or the connection was lost."""


class ConnectError(NetError):
    """A stream to the peer could not be opened (unreachable, refused, wrong identity...).

    Its subclasses say which: `PeerNotReached` (UNREACHABLE), `WrongIdentity`
    (WRONG_PEER), `NoAddress` (NO_ADDRESS); a bare `ConnectError` is a local condition (the
    transport is closed, a malformed address, dialling ourselves).
    """


class PeerNotReached(ConnectError):
    """Nothing answered at the address: connection refused, no route, or a timeout."""

    code = ErrorCode.UNREACHABLE


class WrongIdentity(ConnectError):
    """A connection was made, but the handshake authenticated another PeerID.

    Attributes:
        expected: the PeerID dialled.
        actual: the PeerID that answered, when the transport could tell ("" otherwise).
    """

    code = ErrorCode.WRONG_PEER

    def __init__(self, message: str, *, expected: str, actual: str = "") -> None:
        super().__init__(message, details={"expected": expected, "actual": actual})
        self.expected = expected
        self.actual = actual


class NoAddress(ConnectError):
    """A bare PeerID whose address the transport does not know."""

    code = ErrorCode.NO_ADDRESS


class ListenError(NetError):
    """The transport cannot listen on one of its listen addresses.

    Attributes:
        addr: the listen address (multiaddr text) that failed.
    """

    def __init__(self, message: str, *, addr: str) -> None:
        super().__init__(message)
        self.message = message
        self.addr = addr


class AddressInUse(ListenError):
    """The listen address's TCP port is held by another socket (another process, or
    another node in this process). p2pay never shares a listening port."""


@runtime_checkable
class Stream(Protocol):
    """One authenticated, ordered, framed, bidirectional stream to a peer."""

    @property
    def remote_public(self) -> bytes:
        """The 32-byte Ed25519 public key of the authenticated remote peer."""
        ...

    @property
    def remote_peer_id(self) -> str:
        """The remote peer's PeerID text ("12D3KooW...")."""
        ...

    async def send(self, payload: bytes) -> None:
        """Write one frame.

        Raises:
            StreamClosed: the stream is closed, reset or its connection is lost.
            LocalProtocolError: `payload` is not bytes.
        """
        ...

    async def send_many(self, payloads: Sequence[bytes]) -> None:
        """Write several frames, in order, as one `send()` each would, but at once.

        Raises:
            StreamClosed: as `send`; frames before the failure may have been delivered.
            LocalProtocolError: a payload is not bytes (checked before anything is sent).
        """
        ...

    async def receive(self) -> bytes:
        """Return the next frame's payload.

        Raises:
            StreamClosed: end of stream, reset, or connection lost.
            FrameTooLarge: the peer announced a frame larger than ``max_frame``.
        """
        ...

    async def reset(self) -> None:
        """Abort the stream in both directions. Idempotent; never raises."""
        ...

    async def aclose(self) -> None:
        """Close gracefully (the peer reads what was sent, then EOF). Idempotent; never raises."""
        ...


StreamHandler = Callable[[Stream], Awaitable[None]]


@runtime_checkable
class Transport(Protocol):
    """Opens streams to peers and hands inbound streams to the handler."""

    @property
    def public(self) -> bytes:
        """Our 32-byte Ed25519 public key."""
        ...

    @property
    def peer_id(self) -> str:
        """Our PeerID text."""
        ...

    @property
    def addrs(self) -> list[str]:
        """Our full multiaddrs, each ending in ``/p2p/<peer id>``."""
        ...

    def add_address(self, peer_id: str, addr: str) -> None:
        """Remember an address of a peer, so `connect(peer_id)` can dial it.

        Raises:
            LocalProtocolError: the address is malformed or names another peer.
        """
        ...

    async def connect(self, peer: str) -> Stream:
        """Open a NEW stream under `PROTOCOL_ID` to a peer.

        Args:
            peer: a multiaddr ending in ``/p2p/<peer id>``, or a bare PeerID whose
                address is known (`add_address`).

        Raises:
            ConnectError: the peer cannot be reached, refused the stream, or the address
                is invalid.
        """
        ...


# --- discovery (specs/discovery.md) ----------------------------------------------------

OFFERS_PROTOCOL_ID = FETCH_PROTOCOL_ID
"""The libp2p protocol a client uses to fetch a provider's offers directly (the core's
`FETCH_PROTOCOL_ID`)."""
MAX_OFFER_BYTES = MAX_OFFER_SIZE
"""Largest encoded offer. Larger gossip messages are dropped before they reach the
application; a provider never publishes or serves one."""
MAX_OFFERS_PER_REPLY = MAX_FETCH_OFFERS
"""Most offers in one answer of the fetch protocol."""
FETCH_TIMEOUT = FETCH_TIMEOUT_MS / 1000
"""Deadline, in seconds, of one fetch, on both sides (the whole exchange): the core's
`FETCH_TIMEOUT_MS`."""

SUBSCRIPTION_QUEUE = 256
"""Messages a `DiscoveryNet.subscribe` channel holds before further ones are dropped."""

OfferSource = Callable[[bytes, str], Sequence[bytes]]
"""``offers(ledger, service)``: the encoded offers this node serves for `service` on
`ledger` (possibly none). Called for every fetch request; must not block."""


class FetchFailed(NetError):
    """Fetching a provider's offers failed.

    Attributes:
        kind: ``"unreachable"`` (no connection), ``"timeout"`` (no whole answer within
            `FETCH_TIMEOUT`), ``"refused"`` (the peer reset the stream or does not speak
            the protocol) or ``"malformed"`` (the answer breaks the protocol's rules).
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        if kind in ("unreachable", "timeout"):
            self.code = ErrorCode.UNREACHABLE
        elif kind == "malformed":
            self.code = ErrorCode.MALFORMED


@runtime_checkable
class DiscoveryNet(Protocol):
    """Where offers travel (specs/discovery.md): a gossip topic per ledger, provider
    records per (ledger, service), and a direct fetch of a provider's offers.

    Offers are opaque bytes here; verifying them is the core's job. Everything a peer
    says through this interface (a gossip message, a provider record, a fetched offer)
    is a hint until the core has verified it. Implementations: `p2pay.net.discovery`
    (libp2p: gossipsub, Kademlia DHT, ``/p2pay/offers/2.0.0``) and
    `p2pay.net.memory_discovery` (in-process twin over a `MemoryNetwork`).
    """

    @property
    def peer_id(self) -> str:
        """Our PeerID text."""
        ...

    async def publish(self, ledger: bytes, data: bytes) -> None:
        """Publish one encoded offer on `ledger`'s topic (at most `MAX_OFFER_BYTES`).

        Subscribers on other peers receive it; we do not receive our own messages.

        Raises:
            LocalProtocolError: `data` is not bytes or is larger than `MAX_OFFER_BYTES`,
                or `ledger` is not a valid ledger id.
        """
        ...

    def subscribe(self, ledger: bytes) -> trio.MemoryReceiveChannel[tuple[str, bytes]]:
        """Receive `ledger`'s topic: ``(sender PeerID, data)`` for each message from
        another peer. The channel is bounded: when the reader falls behind, messages are
        dropped (counted in `dropped`), never queued without limit. Close the channel to
        stop receiving. Messages larger than `MAX_OFFER_BYTES` never come out.
        """
        ...

    async def provide(self, ledger: bytes, service: str) -> None:
        """Announce that we provide `service` on `ledger` (a provider record under
        ``offer_key(ledger, service)``). Repeat it to keep the record alive."""
        ...

    async def find_providers(
        self, ledger: bytes, service: str, *, limit: int = 20
    ) -> list[tuple[str, list[str]]]:
        """At most `limit` providers of `service` on `ledger` other than us, as
        ``(PeerID, [multiaddr, ...])``. Hints only: fetch and verify their offers.
        Never raises for network trouble: what could not be reached is left out."""
        ...

    async def fetch_offers(
        self, peer_id: str, addrs: Sequence[str], ledger: bytes, service: str
    ) -> list[bytes]:
        """Ask `peer_id` (reachable at `addrs`, may be empty if already known) for its
        offers of `service` on `ledger`; at most `MAX_OFFERS_PER_REPLY`, each at most
        `MAX_OFFER_BYTES` (not verified).

        Raises:
            FetchFailed: as its `kind` says.
            LocalProtocolError: a bad argument.
        """
        ...

    def serve_offers(self, source: OfferSource | None) -> None:
        """Answer fetch requests with ``source(ledger, service)`` (None: answer none).
        An exception from `source` is logged and the request is answered by a reset."""
        ...

    async def bootstrap(self, addrs: Sequence[str]) -> dict[str, str]:
        """Join the network through these peers (multiaddrs ending in ``/p2p/<id>``):
        connect, add them to the routing table, and refresh it. Peers that cannot be
        reached are skipped (the caller reports them); an address of our own is ignored.

        Returns:
            The peers not reached: each address and why, in a few words (empty when
            every peer was reached). A caller that reached none has not joined.

        Raises:
            LocalProtocolError: an address is malformed.
        """
        ...

    @property
    def dropped(self) -> int:
        """Messages dropped below the application (too large, queue full, rate)."""
        ...


def split_p2p(addr: str) -> tuple[str, str]:
    """Split ``<transport part>/p2p/<peer id>`` into its two parts.

    Raises:
        LocalProtocolError: `addr` does not end in ``/p2p/<peer id>``.
    """
    if not isinstance(addr, str):
        raise LocalProtocolError("an address is a string")
    head, sep, peer_id = addr.rpartition("/p2p/")
    if not sep or not peer_id or "/" in peer_id:
        raise LocalProtocolError(f"address {addr[:200]!r} does not end in /p2p/<peer id>")
    return head, peer_id


def check_offer_data(data: bytes) -> bytes:
    """Validate an offer to publish (`DiscoveryNet.publish`): bytes of at most
    `MAX_OFFER_BYTES`; returned as `bytes`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LocalProtocolError("an offer is bytes")
    data = bytes(data)
    if len(data) > MAX_OFFER_BYTES:
        raise LocalProtocolError(f"an offer is at most {MAX_OFFER_BYTES} bytes, got {len(data)}")
    return data


def check_find_limit(limit: int) -> int:
    """Validate `DiscoveryNet.find_providers`'s ``limit`` (an int >= 1)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise LocalProtocolError("limit must be a positive int")
    return limit


def check_fetch_target(peer_id: str, addrs: Sequence[str]) -> None:
    """Validate `DiscoveryNet.fetch_offers`'s peer: a PeerID string, and each of `addrs`
    a multiaddr naming it."""
    if not isinstance(peer_id, str):
        raise LocalProtocolError("a peer id is a string")
    for addr in addrs:
        _, named = split_p2p(addr)
        if named != peer_id:
            raise LocalProtocolError(f"address {addr[:200]!r} names another peer")


def servable_offers(offers: Sequence[bytes]) -> list[bytes]:
    """What a fetch server sends of its `OfferSource`'s answer: the offers of 1 to
    `MAX_OFFER_BYTES` bytes, in order, at most `MAX_OFFERS_PER_REPLY` of them (others are
    left out).

    Raises:
        TypeError: `offers` is not a sequence (or is bytes or text).
    """
    if not isinstance(offers, Sequence) or isinstance(offers, bytes | str):
        raise TypeError("an offer source returns a sequence of bytes")
    out: list[bytes] = []
    for offer in offers:
        if isinstance(offer, bytes) and 1 <= len(offer) <= MAX_OFFER_BYTES:
            out.append(offer)
            if len(out) == MAX_OFFERS_PER_REPLY:
                break
    return out


def hand_out(
    channels: list[trio.MemorySendChannel[tuple[str, bytes]]], message: tuple[str, bytes]
) -> int:
    """Give a topic's ``(sender, data)`` `message` to each of its subscription `channels`
    without waiting; a channel whose reader closed it is removed from `channels`.

    Returns:
        How many channels were full (the message is dropped for them).
    """
    dropped = 0
    for channel in list(channels):
        try:
            channel.send_nowait(message)
        except trio.WouldBlock:
            dropped += 1
        except trio.BrokenResourceError:  # the reader closed it: unsubscribed
            channels.remove(channel)
    return dropped


def check_max_frame(max_frame: int) -> int:
    """Validate a ``max_frame`` argument (an int >= 1)."""
    if isinstance(max_frame, bool) or not isinstance(max_frame, int) or max_frame < 1:
        raise LocalProtocolError("max_frame must be a positive int")
    return max_frame


async def send_frames(stream: Stream, payloads: Sequence[bytes]) -> None:
    """Send `payloads` in order: one `send()` for a single frame, one ``send_many`` for
    several (nothing for none).

    Raises:
        StreamClosed: as `Stream.send`.
    """
    if len(payloads) == 1:
        await stream.send(payloads[0])
    elif payloads:
        await stream.send_many(payloads)


async def run_handler(handler: StreamHandler, stream: Stream) -> None:
    """Run an inbound-stream handler so that nothing it does can escape.

    Every exception is logged. Afterwards the stream is always finished: closed
    gracefully if the handler returned (so the frames it sent are delivered: on
    py-libp2p a bare reset discards what the peer has not read yet), reset if it raised
    or was cancelled. Both are no-ops on a stream the handler already closed.
    Cancellation propagates.
    """
    returned = False
    try:
        await handler(stream)
        returned = True
    except Exception:
        logger.exception("stream handler failed (peer %s)", _peer_of(stream))
    except BaseExceptionGroup as group:
        # A group mixing trio.Cancelled with real errors: log the errors, let the
        # cancellation propagate (an outer scope is being cancelled).
        cancelled, rest = group.split(trio.Cancelled)
        if rest is not None:
            logger.error("stream handler failed (peer %s)", _peer_of(stream), exc_info=rest)
        if cancelled is not None:
            raise cancelled from None
    finally:
        if returned:
            await stream.aclose()
        await stream.reset()


def _peer_of(stream: Stream) -> str:
    try:
        return stream.remote_peer_id
    except Exception:  # pragma: no cover - a broken Stream implementation
        return "?"
