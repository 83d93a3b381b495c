"""libp2p discovery: gossipsub, the Kademlia DHT and ``/p2pay/offers/2.0.0`` (py-libp2p 0.8.1).

Theory of operation
-------------------
`open_libp2p_discovery` adds three protocols to the host of a `Libp2pTransport` (one
host, one identity, one connection per peer, Noise and yamux as pinned there), and
implements `p2pay.net.base.DiscoveryNet` with them (specs/discovery.md):

* **gossipsub** (py-libp2p's ``Pubsub`` + ``GossipSub``, meshsub 1.2/1.1/1.0, signed
  messages only): one topic per ledger, ``offer_topic(ledger)``; a message's data is one
  encoded offer. We never receive our own messages. A node relays a topic only while
  subscribed to it, so a bootstrap node subscribes to its ledger's topic.
* **Kademlia DHT** (py-libp2p's ``KadDHT``, ``/ipfs/kad/1.0.0``): provider records
  under ``offer_key(ledger, service)``, the 34-byte sha2-256 multihash, handed to
  py-libp2p's provider store *as bytes* (``KadDHT.provide(str)`` would first try to
  read a string as a CID, then as hex, then as UTF-8: not the bytes we mean), so the
  key on the wire is exactly the multihash, as js-libp2p's
  ``contentRouting.provide(CID.createV1(0x55, multihash))`` puts it there. A node is a
  DHT server unless opened with ``server=False``.
* **``/p2pay/offers/2.0.0``**: one request frame (p2pay framing: uvarint length,
  protocol.md 5.2) holding canonical CBOR ``{"ledger": bytes, "service": text}``; one
  answer frame holding a CBOR array of at most `MAX_OFFERS_PER_REPLY` encoded offers;
  frames at most `MAX_FETCH_FRAME` bytes; `FETCH_TIMEOUT` on the whole exchange, on
  both sides.

Everything a peer says here is a hint: a gossip message, a provider record (anyone may
claim to provide anything) and a fetched offer are verified by the core before use.

Guards (py-libp2p 0.8.1 as measured; why each exists)
-----------------------------------------------------
* **Handler exceptions.** An exception escaping a py-libp2p stream handler takes the
  whole host down, and py-libp2p's own handlers let some out: five bytes of garbage
  sent as a gossipsub RPC raise protobuf's ``DecodeError`` out of
  ``Pubsub.stream_handler`` (it catches only stream and varint errors), which killed
  the host (measured). The handlers py-libp2p registers for gossipsub and Kademlia
  are re-registered behind `_guarded`, which logs, resets the stream and returns;
  ours (offers) catches everything itself.
* **Gossip size and shape.** py-libp2p accepts any message up to its 1 MiB RPC limit and
  any number of topics per message. Before a message from another peer is looked at
  (`_GuardedPubsub.push_msg`, ahead of py-libp2p's seen-cache, signature check,
  validators, scoring and forwarding), it is dropped, and counted in `dropped`, unless
  it names exactly one topic, one we are subscribed to, and carries at most
  `MAX_OFFER_BYTES`. (py-libp2p's scorer and spam counters keep an entry per topic
  *named in a message*: a message naming 10,000 junk topics beside ours made 10,000
  entries.) Such a message is neither delivered nor forwarded.
* **Flooding.** py-libp2p spawns one task per received message and keeps every message
  id it accepted for 2 minutes, with no size bound (``LastSeenCache``); a peer that
  signs many distinct messages makes both grow with its rate. Each message from
  another peer must pass two token buckets first: one per forwarding connection
  (`FORWARDER_RATE`, burst `FORWARDER_BURST`) and, once its signature is checked, one
  per originating PeerID (`ORIGIN_RATE`, burst `ORIGIN_BURST`: twice what the core's
  per-peer limit lets through, so the core's limit is the one honest peers meet).
  Bucket tables hold at most `MAX_BUCKETS` peers (least recently used dropped). The
  seen cache is capped at `MAX_SEEN` ids (oldest dropped). py-libp2p's own spam check
  (10 messages per second per forwarding peer and topic, applied to our *own*
  publications too, which would stop a provider announcing more than 10 services at
  once) is switched off in favour of these.
* **Control messages.** py-libp2p's router keeps state per topic a control entry names
  (a back-off per (topic, peer) for a PRUNE, which nothing sweeps; an IHAVE rate list per
  (peer, topic)) and answers a GRAFT for an unknown topic with a PRUNE, and nothing limits
  control entries: 12 RPCs of 1 MiB, each ~20,000 PRUNEs for junk topics, grew a
  bootstrap node by ~270 MB for good (measured, issue 17 attack). `_GuardedGossipSub`
  keeps only the entries naming a topic we are in, at most `MAX_CONTROL_ENTRIES` of
  each kind per RPC, and caps a PRUNE's back-off at `MAX_PRUNE_BACKOFF`.
* **Subscriptions.** py-libp2p's subscription queue holds 32 messages and drops the
  rest; a task moves them at once into our channels (`SUBSCRIPTION_QUEUE` each), which
  drop (and count) when the reader falls behind.
* **#1120** ("Unhandled StreamReset in Pubsub.write_msg crashes service"): fixed in
  0.8.1 (``write_msg`` catches StreamClosed/StreamReset; the per-peer sending loop
  catches everything); a test resets gossip streams under load to keep it so.
* **Provider records.** py-libp2p keeps every record it is sent (per key at most 20,
  refusing newcomers once full, so 20 identities could squat a key for 48 h), with
  any number of addresses each, and caches every record a lookup returns. Here: at
  most `MAX_PROVIDER_RECORDS` records in all (oldest dropped), per key the oldest
  record gives way to a new one, at most `MAX_PROVIDER_ADDRS` addresses of at most
  `MAX_ADDR_BYTES` each are kept, and lookups do not cache what they find.
* **Stale lookups.** py-libp2p's ``find_providers`` answers from its local store alone
  whenever that holds a record for the key (so a client that has looked once never
  sees a new provider for 48 h). `find_providers` here merges the local store with a
  network lookup every time, bounded by `FIND_TIMEOUT`.
* **Kademlia server.** py-libp2p serves at most 12 inbound Kademlia streams at once
  (resetting the rest) and waits on each without a deadline: 12 idle streams from one
  peer shut the DHT server for everyone. Each inbound stream gets `KAD_STREAM_TIMEOUT`
  and a peer at most `KAD_STREAMS_PER_PEER` at once; when the 12 are taken, a new
  stream displaces the one held longest (6 free identities holding 2 idle streams each
  shut the server for everyone: measured, issue 17 attack). py-libp2p also accepts only 10
  ADD_PROVIDER per peer per 10 s, fewer than one provider's services; raised to
  `PROVIDER_RATE_MAX`. (Its "Failed to read DHT message" warning on a peer's clean
  close of a stream is logged at debug level instead.)
* **Fetch server.** At most `MAX_FETCHES_PER_PEER` streams of one peer at once (further
  ones are reset) and `MAX_INBOUND_FETCHES` waiting for their request in all: a new stream
  displaces the one that waited longest (one peer holding 64 idle streams locked
  everyone out: measured, issue 17 attack); a request must arrive whole within
  `FETCH_TIMEOUT`.
* **Connections made before discovery.** py-libp2p's pubsub learns of peers from
  connection events only: a peer connected before `open_libp2p_discovery` would never
  be gossiped with. Each connected peer is handed to pubsub when discovery opens.
* **Seen-cache thread.** py-libp2p starts a sweeping thread per ``Pubsub`` and never
  stops it; it is stopped when discovery closes.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.common import ALPHA
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_11
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12 as MESHSUB_12
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import signature_validator
from libp2p.tools.anyio_service import background_trio_service
from libp2p.tools.timed_cache.last_seen_cache import LastSeenCache
from multiaddr import Multiaddr

from p2pay.core.errors import DecodeError, LocalProtocolError, P2payError
from p2pay.core.offers import (
    MAX_ADDR_SIZE,
    MAX_FETCH_FRAME,
    MAX_OFFER_ADDRS,
    MAX_SERVICES_PER_PEER,
    OFFER_BURST,
    OFFERS_PER_MINUTE,
    decode_fetch_reply,
    decode_fetch_request,
    encode_fetch_reply,
    encode_fetch_request,
    offer_key,
    offer_topic,
)
from p2pay.net.base import (
    FETCH_TIMEOUT,
    MAX_OFFER_BYTES,
    OFFERS_PROTOCOL_ID,
    SUBSCRIPTION_QUEUE,
    ConnectError,
    DiscoveryNet,
    FetchFailed,
    OfferSource,
    StreamClosed,
    Transport,
    check_fetch_target,
    check_find_limit,
    check_offer_data,
    hand_out,
    servable_offers,
    split_p2p,
)
from p2pay.net.framing import FrameReader, frame
from p2pay.net.p2p import Libp2pTransport

__all__ = [
    "FIND_TIMEOUT",
    "MAX_PROVIDER_RECORDS",
    "SUBSCRIPTION_QUEUE",
    "Libp2pDiscovery",
    "open_libp2p_discovery",
]

logger = logging.getLogger("p2pay.net")

FORWARDER_RATE = 100.0
"""Gossip messages per second accepted from one forwarding connection (sustained)."""
FORWARDER_BURST = 400.0
ORIGIN_RATE = 2 * OFFERS_PER_MINUTE / 60
"""Gossip messages per second accepted from one originating PeerID (sustained): twice
the core's per-peer limit (`OFFERS_PER_MINUTE`), so that the core's is the one honest
peers meet."""
ORIGIN_BURST = 2.0 * OFFER_BURST
MAX_BUCKETS = 10_000
"""Peers whose token buckets are remembered (per kind); the least recently used go."""
MAX_CONTROL_ENTRIES = 64
"""Gossipsub control entries of one kind (IHAVE, GRAFT, PRUNE, ...) taken from one RPC."""
MAX_PRUNE_BACKOFF = 3600
"""Longest back-off, in seconds, a peer's PRUNE may ask for."""
MAX_SEEN = 50_000
"""Gossip message ids remembered to drop duplicates (py-libp2p keeps them 2 minutes)."""
MAX_PROVIDER_RECORDS = 20_000
"""Provider records this node keeps in all (as a DHT server)."""
MAX_PROVIDER_ADDRS = MAX_OFFER_ADDRS
"""Addresses kept of one provider record (as many as an offer carries)."""
MAX_ADDR_BYTES = MAX_ADDR_SIZE
"""Longest provider record address kept, in bytes (as an offer's)."""
MAX_INBOUND_FETCHES = 64
"""Fetch streams waiting for their request at once; a new one displaces the oldest."""
MAX_FETCHES_PER_PEER = 4
"""Fetch streams of one peer served at once; further ones are reset (specs/discovery.md 6)."""
FIND_TIMEOUT = 20.0
"""Upper bound on one `find_providers` (DHT lookup)."""
PROVIDE_TIMEOUT = 30.0
"""Upper bound on one `provide` (lookup of the closest peers, then ADD_PROVIDER)."""
KAD_STREAM_TIMEOUT = 10.0
"""Upper bound on one inbound Kademlia stream (py-libp2p opens one per request)."""
KAD_STREAMS_PER_PEER = 2
"""Inbound Kademlia streams served at once per peer; further ones are reset."""
PROVIDER_RATE_MAX = 2 * MAX_SERVICES_PER_PEER
"""ADD_PROVIDER messages accepted per peer per 10 s (py-libp2p: 10; a provider
announces up to `MAX_SERVICES_PER_PEER` services at once)."""
BOOTSTRAP_TIMEOUT = 10.0
"""Upper bound on connecting to one bootstrap peer, and on the table refresh."""
HEARTBEAT_INTERVAL = 1
"""Seconds between gossipsub heartbeats (mesh upkeep, gossip), as in go and js."""
_CLOSE_TIMEOUT = 3.0

_OFFERS = TProtocol(OFFERS_PROTOCOL_ID)
_GOSSIP_PROTOCOLS = [MESHSUB_12, MESHSUB_11, MESHSUB_10]


# --- guards ---------------------------------------------------------------------------


class _Buckets:
    """Token buckets per key (rate per second, burst), at most `MAX_BUCKETS` keys."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._state: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def take(self, key: bytes, now: float) -> bool:
        tokens, last = self._state.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._state[key] = (tokens, now)
        while len(self._state) > MAX_BUCKETS:
            self._state.popitem(last=False)
        return allowed


class _BoundedSeenCache(LastSeenCache):
    """py-libp2p's seen-message cache with at most `MAX_SEEN` entries (oldest dropped)."""

    def add(self, key: bytes) -> bool:
        with self.lock:
            is_new = key not in self.cache
            if is_new:
                while len(self.cache) >= MAX_SEEN:
                    del self.cache[next(iter(self.cache))]
            self.cache[key] = int(time.time()) + self.ttl
            return is_new


class _GuardedPubsub(Pubsub):
    """py-libp2p's Pubsub that drops oversized, multi-topic and flooding messages from
    other peers before doing anything else with them (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen_messages.stop()  # py-libp2p's, replaced (its sweeping thread stopped)
        self.seen_messages = _BoundedSeenCache(
            self.seen_messages.ttl, self.seen_messages.sweep_interval
        )
        self.forwarders = _Buckets(FORWARDER_RATE, FORWARDER_BURST)
        self.origins = _Buckets(ORIGIN_RATE, ORIGIN_BURST)
        self.dropped = 0

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg_forwarder != self.my_id:
            if not self._acceptable(msg_forwarder, msg):
                self.dropped += 1
                return
        await super().push_msg(msg_forwarder, msg)

    def _acceptable(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if len(msg.topicIDs) != 1 or msg.topicIDs[0] not in self.subscribed_topics_send:
            return False
        if len(msg.data) > MAX_OFFER_BYTES:
            return False
        if self._is_msg_seen(msg):
            return True  # a duplicate: py-libp2p drops it at once, nothing to count
        now = trio.current_time()
        if not self.forwarders.take(forwarder.to_bytes(), now):
            return False
        # The origin's bucket is charged only for a message it really signed: a forged
        # `from` must not spend an honest peer's allowance.
        try:
            if not signature_validator(msg):
                return False
        except Exception:
            return False
        return self.origins.take(bytes(msg.from_id), now)


class _GuardedGossipSub(GossipSub):
    """py-libp2p's GossipSub that takes from a peer's RPC only the control entries naming
    a topic we are in, at most `MAX_CONTROL_ENTRIES` of each kind, with a PRUNE's back-off
    at most `MAX_PRUNE_BACKOFF` (see the module docstring)."""

    dropped_control = 0

    async def handle_rpc(self, rpc: rpc_pb2.RPC, sender_peer_id: ID) -> None:
        if rpc.HasField("control"):
            ours = set(self.pubsub.topic_ids) if self.pubsub is not None else set()
            control = rpc.control
            for kind in ("ihave", "graft", "prune", "observe", "unobserve"):
                entries = getattr(control, kind, None)
                if entries is None or not len(entries):
                    continue
                keep: list[Any] = []
                for entry in entries:
                    if entry.topicID in ours and len(keep) < MAX_CONTROL_ENTRIES:
                        copy = type(entry)()
                        copy.CopyFrom(entry)
                        keep.append(copy)
                if len(keep) != len(entries):
                    self.dropped_control += len(entries) - len(keep)
                    del entries[:]
                    entries.extend(keep)
            for prune in control.prune:
                prune.backoff = min(prune.backoff, MAX_PRUNE_BACKOFF)
        await super().handle_rpc(rpc, sender_peer_id)


def _guarded(
    handler: Callable[[INetStream], Awaitable[None]], name: str
) -> Callable[[INetStream], Awaitable[None]]:
    """`handler` such that no exception escapes it (one would take the host down)."""

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception as exc:
            logger.info("%s handler failed (peer %s): %s", name, _remote(stream), exc)
            await _reset(stream)
        except BaseExceptionGroup as group:
            cancelled, rest = group.split(trio.Cancelled)
            if rest is not None:
                logger.info("%s handler failed (peer %s): %s", name, _remote(stream), rest)
                await _reset(stream)
            if cancelled is not None:
                raise cancelled from None

    return guarded


class _Slots:
    """Inbound streams being served, for the guards that bound them (Kademlia, offers):
    how many of each peer's at once (at most `per_peer`), and the cancel scopes of those
    that may still be displaced, oldest first."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self._of: dict[object, int] = {}
        self._displaceable: OrderedDict[object, trio.CancelScope] = OrderedDict()

    def __len__(self) -> int:
        """Streams that may still be displaced."""
        return len(self._displaceable)

    def full_for(self, peer: object) -> bool:
        """Whether `peer` has `per_peer` streams served already."""
        return self._of.get(peer, 0) >= self.per_peer

    def displace_oldest(self) -> None:
        """Cancel the displaceable stream held longest (its task resets its stream)."""
        _, oldest = self._displaceable.popitem(last=False)
        oldest.cancel()

    @contextmanager
    def hold(self, peer: object, scope: trio.CancelScope) -> Iterator[object]:
        """Count a stream of `peer`, displaceable through `scope`, while in the block;
        yields its token (for `settle`)."""
        token = object()
        self._of[peer] = self._of.get(peer, 0) + 1
        self._displaceable[token] = scope
        try:
            yield token
        finally:
            self._displaceable.pop(token, None)
            left = self._of.pop(peer, 1) - 1
            if left > 0:
                self._of[peer] = left

    def settle(self, token: object) -> None:
        """The stream of `token` may no longer be displaced (it is still counted)."""
        self._displaceable.pop(token, None)


class _KadGuard:
    """Bounds on inbound Kademlia streams (see the module docstring): `KAD_STREAM_TIMEOUT`
    each, `KAD_STREAMS_PER_PEER` per peer, and when py-libp2p's inbound slots (`limiter`)
    are all taken, a new stream displaces the one held longest."""

    def __init__(
        self,
        handler: Callable[[INetStream], Awaitable[None]],
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.handler = handler
        self.limiter = limiter
        self.slots = _Slots(KAD_STREAMS_PER_PEER)
        self.refused = 0
        self.displaced = 0

    def _full(self) -> bool:
        limiter = self.limiter
        return limiter is not None and limiter.borrowed_tokens >= limiter.total_tokens

    async def __call__(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if self.slots.full_for(peer):
            self.refused += 1
            await _reset(stream)
            return
        if self._full() and self.slots:
            # Idle streams must not shut the server: the one held longest gives way (an
            # honest request takes milliseconds). Its handler leaves py-libp2p's limiter
            # at its next checkpoint.
            self.slots.displace_oldest()
            self.displaced += 1
            with trio.move_on_after(1.0):
                while self._full():
                    await trio.sleep(0.005)
        scope = trio.CancelScope(deadline=trio.current_time() + KAD_STREAM_TIMEOUT)
        with self.slots.hold(peer, scope):
            with scope:
                await self.handler(stream)
            if scope.cancelled_caught:
                await _reset(stream)


def _remote(stream: INetStream) -> str:
    try:
        return str(stream.muxed_conn.peer_id)
    except Exception:
        return "?"


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0):
        try:
            await stream.reset()
        except Exception:
            pass


def _bound_provider_store(dht: KadDHT) -> None:
    """Cap what py-libp2p's provider store keeps (see the module docstring)."""
    store = dht.provider_store
    original = store.add_provider

    def add_provider(key: bytes, provider: PeerInfo) -> None:
        addrs = [a for a in provider.addrs if len(a.to_bytes()) <= MAX_ADDR_BYTES]
        provider = PeerInfo(provider.peer_id, addrs[:MAX_PROVIDER_ADDRS])
        records = store.providers.get(key)
        if records is not None and str(provider.peer_id) not in records:
            while len(records) >= 20:  # py-libp2p's per-key limit: the oldest gives way
                del records[min(records, key=lambda p: records[p].timestamp)]
        if store.size() >= MAX_PROVIDER_RECORDS:
            oldest = min(
                ((k, p, r.timestamp) for k, rs in store.providers.items() for p, r in rs.items()),
                key=lambda item: item[2],
                default=None,
            )
            if oldest is not None:
                del store.providers[oldest[0]][oldest[1]]
                if not store.providers[oldest[0]]:
                    del store.providers[oldest[0]]
        original(key, provider)

    vars(store)["add_provider"] = add_provider  # this instance only


def _quiet_clean_close(record: logging.LogRecord) -> bool:
    """py-libp2p's Kademlia server logs a peer's clean close of a stream (a StreamEOF,
    whose text is empty) as "Failed to read DHT message from stream: " at WARNING."""
    if record.levelno == logging.WARNING and record.getMessage() == (
        "Failed to read DHT message from stream: "
    ):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True


logging.getLogger("libp2p.kad_dht.kad_dht").addFilter(_quiet_clean_close)


# --- the implementation ---------------------------------------------------------------


class Libp2pDiscovery:
    """Discovery on a libp2p host. See `p2pay.net.base.DiscoveryNet`.

    Use `open_libp2p_discovery` to make one.
    """

    def __init__(
        self,
        transport: Libp2pTransport,
        pubsub: _GuardedPubsub,
        gossipsub: GossipSub,
        dht: KadDHT,
        nursery: trio.Nursery,
    ) -> None:
        self._transport = transport
        self._host = transport.host
        self._pubsub = pubsub
        self._gossipsub = gossipsub
        self._dht = dht
        self._nursery = nursery
        self._source: OfferSource | None = None
        self._subs: dict[str, list[trio.MemorySendChannel[tuple[str, bytes]]]] = {}
        #: fetch streams being served (displaceable while waiting for their request)
        self._fetches = _Slots(MAX_FETCHES_PER_PEER)
        self._kad_guard: _KadGuard | None = None
        self._dropped = 0
        self._running = True

    @property
    def peer_id(self) -> str:
        return self._transport.peer_id

    @property
    def dropped(self) -> int:
        refused = self._kad_guard.refused if self._kad_guard is not None else 0
        control = getattr(self._gossipsub, "dropped_control", 0)
        return self._dropped + self._pubsub.dropped + refused + control

    @property
    def pubsub(self) -> Pubsub:
        """py-libp2p's Pubsub (for diagnostics and tests)."""
        return self._pubsub

    @property
    def dht(self) -> KadDHT:
        """py-libp2p's KadDHT (for diagnostics and tests)."""
        return self._dht

    def __repr__(self) -> str:
        return f"<Libp2pDiscovery {self.peer_id}>"

    # --- topic --------------------------------------------------------------------

    async def publish(self, ledger: bytes, data: bytes) -> None:
        topic = offer_topic(ledger)
        data = check_offer_data(data)
        if not self._running:
            raise LocalProtocolError("discovery is closed")
        try:
            await self._pubsub.publish(topic, data)
        except Exception as exc:  # py-libp2p trouble: gossip is best effort
            logger.info("publishing on %s failed: %s", topic, exc)

    def subscribe(self, ledger: bytes) -> trio.MemoryReceiveChannel[tuple[str, bytes]]:
        topic = offer_topic(ledger)
        if not self._running:
            raise LocalProtocolError("discovery is closed")
        send, receive = trio.open_memory_channel[tuple[str, bytes]](SUBSCRIPTION_QUEUE)
        first = topic not in self._subs
        self._subs.setdefault(topic, []).append(send)
        if first:
            self._nursery.start_soon(self._pump, topic)
        return receive

    async def _pump(self, topic: str) -> None:
        """Join `topic` in py-libp2p and move its messages into our channels."""
        try:
            subscription = await self._pubsub.subscribe(topic)
        except Exception as exc:
            logger.warning("subscribing to %s failed: %s", topic, exc)
            return
        me = self._host.get_id().to_bytes()
        while True:
            try:
                msg = await subscription.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            if msg.from_id == me:
                continue
            try:
                sender = str(ID(msg.from_id))
            except Exception:
                continue
            # (with every channel closed, we stay in the topic: we keep relaying it)
            self._dropped += hand_out(self._subs.get(topic, []), (sender, bytes(msg.data)))

    # --- provider records ---------------------------------------------------------

    async def provide(self, ledger: bytes, service: str) -> None:
        key = offer_key(ledger, service)
        if not self._running:
            raise LocalProtocolError("discovery is closed")
        ok = False
        with trio.move_on_after(PROVIDE_TIMEOUT):
            try:
                ok = await self._dht.provider_store.provide(key)
            except Exception as exc:
                logger.info("providing %s failed: %s", service, exc)
        if not ok:
            # Recorded locally at least (we answer lookups that reach us); the DHT
            # republishes it, and the node provides again at its next announcement. A
            # node that knows no DHT peer (no bootstrap peer, nobody joined through it)
            # has nobody to give it to: nothing to report then.
            alone = self._dht.get_routing_table_size() == 0
            logger.log(
                logging.DEBUG if alone else logging.INFO,
                "no DHT peer took our provider record for %r yet",
                service,
            )

    async def find_providers(
        self, ledger: bytes, service: str, *, limit: int = 20
    ) -> list[tuple[str, list[str]]]:
        key = offer_key(ledger, service)
        check_find_limit(limit)
        me = self._host.get_id()
        found: dict[ID, list[Multiaddr]] = {}

        def take(infos: Sequence[PeerInfo]) -> None:
            for info in infos:
                if info.peer_id != me and info.peer_id not in found and len(found) < limit:
                    found[info.peer_id] = list(info.addrs)

        take(self._dht.provider_store.get_providers(key))  # records we hold as a server
        with trio.move_on_after(FIND_TIMEOUT):
            try:
                await self._lookup(key, take, lambda: len(found) >= limit)
            except Exception as exc:
                logger.info("provider lookup for %r failed: %s", service, exc)
        return [(str(pid), _addr_texts(pid, addrs)) for pid, addrs in found.items()]

    async def _lookup(
        self,
        key: bytes,
        take: Callable[[Sequence[PeerInfo]], None],
        enough: Callable[[], bool],
    ) -> None:
        """Ask the peers closest to `key` for its providers, walking closer, until
        `enough()` or no closer peer is left (Kademlia GET_PROVIDERS, through
        py-libp2p's RPC; nothing found is cached)."""
        store = self._dht.provider_store
        me = self._host.get_id()
        candidates = list(await self._dht.peer_routing.find_closest_peers_network(key))
        queried: set[ID] = {me}

        async def ask(peer: ID, closer: list[ID]) -> None:
            with trio.move_on_after(FIND_TIMEOUT / 2):
                providers, more = await store._get_providers_from_peer_with_closers(peer, key)
                take(providers)
                closer.extend(more)

        while candidates:
            batch = [p for p in candidates[:ALPHA] if p not in queried]
            candidates = candidates[ALPHA:]
            queried.update(batch)
            closer: list[ID] = []
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(ask, peer, closer)
            for peer in closer:
                if peer not in queried and peer not in candidates:
                    candidates.append(peer)
            if len(candidates) > 4 * ALPHA:
                candidates = candidates[: 4 * ALPHA]
            if enough():
                return

    # --- fetch --------------------------------------------------------------------

    async def fetch_offers(
        self, peer_id: str, addrs: Sequence[str], ledger: bytes, service: str
    ) -> list[bytes]:
        request = encode_fetch_request(ledger, service)
        check_fetch_target(peer_id, addrs)
        if not self._running:
            raise LocalProtocolError("discovery is closed")
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise LocalProtocolError(f"not a PeerID: {peer_id[:80]!r}") from None
        result: list[bytes] | None = None
        with trio.move_on_after(FETCH_TIMEOUT):
            result = await self._fetch(pid, peer_id, addrs, request)
        if result is None:
            raise FetchFailed(f"no answer from {peer_id} within {FETCH_TIMEOUT} s", kind="timeout")
        return result

    async def _fetch(
        self, pid: ID, peer_id: str, addrs: Sequence[str], request: bytes
    ) -> list[bytes]:
        try:
            await self._transport.dial(
                peer_id, list(addrs)[:MAX_PROVIDER_ADDRS], timeout=FETCH_TIMEOUT
            )
        except (ConnectError, LocalProtocolError) as exc:
            raise FetchFailed(
                f"cannot fetch offers from {peer_id}: {exc}", kind="unreachable"
            ) from None
        try:
            stream = await self._host.new_stream(pid, [_OFFERS])
        except Exception as exc:
            raise FetchFailed(
                f"{peer_id} does not serve offers: {str(exc)[:200]}", kind="refused"
            ) from None
        try:
            try:
                await stream.write(frame(request))
                reader = FrameReader(_reader_of(stream), MAX_FETCH_FRAME)
                payload = await reader.next()
            except StreamClosed as exc:
                raise FetchFailed(f"{peer_id} closed the fetch: {exc}", kind="refused") from None
            except DecodeError as exc:
                raise FetchFailed(f"bad answer from {peer_id}: {exc}", kind="malformed") from None
            except Exception as exc:  # py-libp2p stream errors (reset, closed)
                raise FetchFailed(
                    f"{peer_id} reset the fetch: {str(exc)[:200]}", kind="refused"
                ) from None
            try:
                return decode_fetch_reply(payload)
            except P2payError as exc:
                raise FetchFailed(f"bad answer from {peer_id}: {exc}", kind="malformed") from None
        finally:
            await _reset(stream)

    def serve_offers(self, source: OfferSource | None) -> None:
        self._source = source

    async def _on_fetch(self, stream: INetStream) -> None:
        """py-libp2p's handler for ``/p2pay/offers/2.0.0``; never raises. At most
        `MAX_FETCHES_PER_PEER` streams of one peer at once; when `MAX_INBOUND_FETCHES`
        wait for their request, a new stream displaces the one that waited longest
        (specs/discovery.md 6: idle streams cannot lock the offers away)."""
        peer = _remote(stream)
        if not self._running or self._fetches.full_for(peer):
            self._dropped += 1
            await _reset(stream)
            return
        if len(self._fetches) >= MAX_INBOUND_FETCHES:
            self._fetches.displace_oldest()
            self._dropped += 1
        scope = trio.CancelScope(deadline=trio.current_time() + FETCH_TIMEOUT)
        try:
            with self._fetches.hold(peer, scope) as token:
                answered = False
                with scope:
                    reader = FrameReader(_reader_of(stream), MAX_FETCH_FRAME)
                    asked = decode_fetch_request(await reader.next())
                    self._fetches.settle(token)  # its request came: not displaced
                    ledger, service = asked.ledger, asked.service
                    source = self._source
                    offers = servable_offers(source(ledger, service)) if source is not None else []
                    await stream.write(frame(encode_fetch_reply(offers)))
                    answered = True
                if answered:
                    with trio.move_on_after(1.0):
                        await stream.close()
        except Exception as exc:  # nothing may escape to py-libp2p
            logger.info("offer fetch from %s failed: %s", peer, exc)
        finally:
            await _reset(stream)

    # --- bootstrap ----------------------------------------------------------------

    async def bootstrap(self, addrs: Sequence[str]) -> dict[str, str]:
        peers: list[tuple[str, str]] = []
        for addr in addrs:
            _, peer_id = split_p2p(addr)
            peers.append((peer_id, addr))
        joined = 0
        failed: dict[str, str] = {}
        for peer_id, addr in peers:
            if peer_id == self.peer_id:
                continue
            try:
                await self._transport.dial(peer_id, [addr], timeout=BOOTSTRAP_TIMEOUT)
            except (ConnectError, LocalProtocolError) as exc:
                failed[addr] = dial_reason(exc.message or str(exc), peer_id)
                logger.debug("bootstrap peer %s not reached: %s", addr, failed[addr])
                continue
            pid = ID.from_base58(peer_id)
            try:
                added = await self._dht.routing_table.add_peer(
                    PeerInfo(pid, [Multiaddr(split_p2p(addr)[0])]),
                    skip_server_mode_check=True,
                )
            except Exception as exc:  # reached (gossip and fetch work), not in the DHT
                logger.warning("bootstrap peer %s not added to the DHT: %s", addr, exc)
                continue
            joined += bool(added)
        if joined:
            with trio.move_on_after(BOOTSTRAP_TIMEOUT):
                try:
                    await self._dht.refresh_routing_table()
                except Exception as exc:
                    logger.info("DHT refresh failed: %s", exc)
        return failed


#: what a dial error repeats that its reader already knows: "cannot reach <PeerID>" and
#: its address (given once by whoever reports it), and py-libp2p's "Error connecting to
#: ('127.0.0.1', 1): " (the address again, as a Python tuple)
_DIAL_NOISE = re.compile(
    r"cannot reach \S+(?: at \S+)?(?:: |(?= within ))|Error connecting to \([^)]*\): "
)


def dial_reason(message: str, peer_id: str) -> str:
    """Why a dial failed, in a few words: `message` (the transport's error) without the
    PeerID and address it repeats (``"Connection refused"``, ``"no connection within 10.0
    s"``)."""
    text = _DIAL_NOISE.sub("", message).strip()
    if text.startswith("within "):
        text = "no connection " + text
    return text or message


def _reader_of(stream: INetStream) -> Callable[[int], Awaitable[bytes]]:
    async def read_some(n: int) -> bytes:
        try:
            data: bytes = await stream.read(n)
        except Exception as exc:
            if type(exc).__name__ == "StreamEOF":
                return b""
            raise StreamClosed(f"stream failed: {str(exc)[:200]}") from None
        return data

    return read_some


def _addr_texts(pid: ID, addrs: Sequence[Multiaddr]) -> list[str]:
    out: list[str] = []
    for addr in addrs[:MAX_PROVIDER_ADDRS]:
        text = str(addr)
        if "/p2p/" not in text:
            text = f"{text}/p2p/{pid}"
        if len(text) <= MAX_ADDR_BYTES and text.endswith(f"/p2p/{pid}"):
            out.append(text)
    return out


@asynccontextmanager
async def open_libp2p_discovery(
    transport: Transport, *, server: bool = True
) -> AsyncIterator[Libp2pDiscovery]:
    """Run gossipsub, the Kademlia DHT and the offers protocol on `transport`'s host.

    Typed as taking any `Transport`, so that it is itself a discovery factory for
    `open_node(..., discovery=open_libp2p_discovery)`.

    Args:
        transport: an open `Libp2pTransport` (from `open_libp2p_transport`); the
            context must be left before the transport's.
        server: be a DHT server (answer and store records for others), else a client.

    Yields:
        The `Libp2pDiscovery`. Leaving the context removes the protocols and stops the
        services.

    Raises:
        LocalProtocolError: `transport` is not a `Libp2pTransport`.
    """
    if not isinstance(transport, Libp2pTransport):
        raise LocalProtocolError("libp2p discovery needs a Libp2pTransport")
    host = transport.host
    gossipsub = _GuardedGossipSub(
        protocols=_GOSSIP_PROTOCOLS,
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        spam_protection_enabled=False,  # replaced by _GuardedPubsub's buckets
    )
    pubsub = _GuardedPubsub(host, gossipsub, strict_signing=True)
    dht = KadDHT(host, DHTMode.SERVER if server else DHTMode.CLIENT)
    _bound_provider_store(dht)
    for protocol in gossipsub.get_protocols():
        host.set_stream_handler(protocol, _guarded(pubsub.stream_handler, "gossipsub"))
    dht._provider_rate_max = PROVIDER_RATE_MAX
    kad_guard = _KadGuard(dht.handle_stream, getattr(dht, "_inbound_limiter", None))
    if server:
        host.set_stream_handler(KAD_PROTOCOL_ID, _guarded(kad_guard, "kademlia"))
    body_error: Exception | None = None
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(gossipsub))
            await stack.enter_async_context(background_trio_service(dht))
            nursery = await stack.enter_async_context(trio.open_nursery())
            discovery = Libp2pDiscovery(transport, pubsub, gossipsub, dht, nursery)
            discovery._kad_guard = kad_guard
            host.set_stream_handler(_OFFERS, _guarded(discovery._on_fetch, "offers"))
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await pubsub.wait_until_ready()
            for pid in list(host.get_network().connections):  # peers connected before us
                pubsub.manager.run_task(pubsub._handle_new_peer_with_retry, pid)
            try:
                yield discovery
            except Exception as exc:
                body_error = exc
            finally:
                discovery._running = False
                for channels in discovery._subs.values():
                    for channel in channels:
                        channel.close()
                nursery.cancel_scope.cancel()
    finally:
        for protocol in [_OFFERS, KAD_PROTOCOL_ID, *gossipsub.get_protocols()]:
            try:
                host.remove_stream_handler(protocol)
            except Exception:
                pass
        pubsub.seen_messages.stop()
    if body_error is not None:
        raise body_error


if TYPE_CHECKING:  # `mypy --strict p2pay` checks the class against the interface
    _DISCOVERY: type[DiscoveryNet] = Libp2pDiscovery
