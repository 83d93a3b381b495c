"""In-memory discovery: the `DiscoveryNet` semantics without libp2p, for simulations.

Theory of operation
-------------------
The twin of `p2pay.net.discovery` (gossipsub + Kademlia DHT + the offers fetch
protocol) over a `MemoryNetwork`. All the discovery nodes of one network share a hub
(made on first use, kept beside the network):

* **Topic**: `publish` hands the message to every other node subscribed to the
  ledger's topic, to arrive after the network's one-way delay from the publisher to
  that node (`MemoryNetwork.delay`). A node that is offline (`MemoryNetwork.set_online`)
  neither sends nor receives. Gossipsub floods a small topic to every subscriber; this
  is that, without the mesh.
* **Provider registry**: `provide` records ``(PeerID, addresses, time)`` under the
  ledger/service key; a record lives `PROVIDER_TTL` seconds unless renewed, and stays
  after the provider goes offline or closes (as a DHT record does), so clients meet
  dead providers and must fail over. A key keeps at most `MAX_PROVIDERS_PER_KEY`
  records (the oldest go first). `find_providers` costs one round trip to the first
  provider it returns.
* **Fetch**: `fetch_offers` costs one round trip, then calls the provider's offer
  source (`serve_offers`), with the libp2p side's rules: an unreachable provider
  raises `FetchFailed` ("unreachable"), a source that raises gives "refused", the
  answer is cut to `MAX_OFFERS_PER_REPLY` offers and offers that are empty or over
  `MAX_OFFER_BYTES` are left out by the server.

Bounds, as on libp2p (a flooding peer cannot make a node hold more): each node holds
at most `MAX_PENDING` messages in flight to it, and each subscription channel
`SUBSCRIPTION_QUEUE` messages not yet read; past either, messages are dropped and
counted (`dropped`). Only trio's clock is used (runs under ``trio.testing.MockClock``);
there is no randomness.
"""

from __future__ import annotations

import heapq
import logging
import math
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from p2pay.core.errors import LocalProtocolError
from p2pay.core.offers import offer_key, offer_topic
from p2pay.net.base import (
    SUBSCRIPTION_QUEUE,
    DiscoveryNet,
    FetchFailed,
    OfferSource,
    Transport,
    check_fetch_target,
    check_find_limit,
    check_offer_data,
    hand_out,
    servable_offers,
    split_p2p,
)
from p2pay.net.memory import MemoryNetwork

__all__ = [
    "MAX_PENDING",
    "MAX_PROVIDERS_PER_KEY",
    "PROVIDER_TTL",
    "SUBSCRIPTION_QUEUE",
    "MemoryDiscovery",
    "open_memory_discovery",
]

logger = logging.getLogger("p2pay.net")

MAX_PENDING = 4096
"""Messages in flight to one node (sent, not yet arrived) before further ones are dropped."""
PROVIDER_TTL = 24 * 3600.0
"""Seconds a provider record lives unless renewed (the Kademlia default)."""
MAX_PROVIDERS_PER_KEY = 256
"""Provider records kept per key; the oldest are dropped first."""


class _Hub:
    """What every discovery node of one `MemoryNetwork` shares."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.nodes: dict[str, MemoryDiscovery] = {}
        self.topics: dict[str, set[MemoryDiscovery]] = {}
        # key -> {peer id: (addrs, time recorded)}; dict order = oldest first
        self.providers: dict[bytes, dict[str, tuple[list[str], float]]] = {}


_HUBS: weakref.WeakKeyDictionary[MemoryNetwork, _Hub] = weakref.WeakKeyDictionary()


def _hub(network: MemoryNetwork) -> _Hub:
    hub = _HUBS.get(network)
    if hub is None:
        hub = _HUBS[network] = _Hub(network)
    return hub


class MemoryDiscovery:
    """One node's discovery on a `MemoryNetwork`. See `p2pay.net.base.DiscoveryNet`.

    Use `open_memory_discovery` to make one.
    """

    def __init__(self, hub: _Hub, transport: Transport, nursery: trio.Nursery) -> None:
        self._hub = hub
        self._network = hub.network
        self._peer_id = transport.peer_id
        self._addrs = list(transport.addrs)
        self._nursery = nursery
        self._source: OfferSource | None = None
        self._subs: dict[str, list[trio.MemorySendChannel[tuple[str, bytes]]]] = {}
        # (arrival, order, topic, sender, data): messages in flight to us
        self._pending: list[tuple[float, int, str, str, bytes]] = []
        self._order = 0
        self._wake: trio.CancelScope | None = None
        self._running = True
        self._dropped = 0

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def pending(self) -> int:
        """Messages in flight to this node."""
        return len(self._pending)

    def __repr__(self) -> str:
        return f"<MemoryDiscovery {self._peer_id}>"

    # --- topic --------------------------------------------------------------------

    async def publish(self, ledger: bytes, data: bytes) -> None:
        topic = offer_topic(ledger)
        data = check_offer_data(data)
        await trio.lowlevel.checkpoint()
        if not self._running or not self._network.is_online(self._peer_id):
            return  # an offline node's gossip goes nowhere (as with a cut link)
        for node in list(self._hub.topics.get(topic, ())):
            if node is not self and self._network.is_online(node.peer_id):
                arrival = trio.current_time() + self._network.delay(self._peer_id, node.peer_id)
                node._deliver_at(arrival, topic, self._peer_id, data)

    def subscribe(self, ledger: bytes) -> trio.MemoryReceiveChannel[tuple[str, bytes]]:
        topic = offer_topic(ledger)
        if not self._running:
            raise LocalProtocolError("discovery is closed")
        send, receive = trio.open_memory_channel[tuple[str, bytes]](SUBSCRIPTION_QUEUE)
        self._subs.setdefault(topic, []).append(send)
        self._hub.topics.setdefault(topic, set()).add(self)
        return receive

    def _deliver_at(self, arrival: float, topic: str, sender: str, data: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        self._order += 1
        heapq.heappush(self._pending, (arrival, self._order, topic, sender, data))
        wake = self._wake
        if wake is not None and arrival < wake.deadline:
            wake.deadline = arrival

    async def _pump(self) -> None:
        """Hand each message in flight to our subscriptions when it arrives."""
        while True:
            now = trio.current_time()
            while self._pending and self._pending[0][0] <= now:
                _, _, topic, sender, data = heapq.heappop(self._pending)
                self._hand_out(topic, sender, data)
            with trio.CancelScope(
                deadline=self._pending[0][0] if self._pending else math.inf
            ) as scope:
                self._wake = scope
                await trio.sleep_forever()
            self._wake = None

    def _hand_out(self, topic: str, sender: str, data: bytes) -> None:
        if not self._network.is_online(self._peer_id):
            return
        channels = self._subs.get(topic)
        if not channels:
            return
        self._dropped += hand_out(channels, (sender, data))
        if not channels:
            del self._subs[topic]
            self._hub.topics.get(topic, set()).discard(self)

    # --- provider records ---------------------------------------------------------

    async def provide(self, ledger: bytes, service: str) -> None:
        key = offer_key(ledger, service)
        await trio.lowlevel.checkpoint()
        if not self._running or not self._network.is_online(self._peer_id):
            return
        records = self._hub.providers.setdefault(key, {})
        records.pop(self._peer_id, None)  # re-inserted last: the newest
        records[self._peer_id] = (list(self._addrs), trio.current_time())
        while len(records) > MAX_PROVIDERS_PER_KEY:
            del records[next(iter(records))]

    async def find_providers(
        self, ledger: bytes, service: str, *, limit: int = 20
    ) -> list[tuple[str, list[str]]]:
        key = offer_key(ledger, service)
        check_find_limit(limit)
        records = self._hub.providers.get(key, {})
        now = trio.current_time()
        for peer, (_, when) in list(records.items()):
            if now - when >= PROVIDER_TTL:
                del records[peer]
        found = [
            (peer, list(addrs))
            for peer, (addrs, _) in reversed(records.items())  # newest first
            if peer != self._peer_id
        ][:limit]
        if found and self._network.is_online(self._peer_id):
            await self._network.round_trip(self._peer_id, found[0][0])
        else:
            await trio.lowlevel.checkpoint()
        if not self._network.is_online(self._peer_id):
            return []
        return found

    # --- fetch --------------------------------------------------------------------

    async def fetch_offers(
        self, peer_id: str, addrs: Sequence[str], ledger: bytes, service: str
    ) -> list[bytes]:
        offer_key(ledger, service)  # checks both
        check_fetch_target(peer_id, addrs)
        if not self._running:
            raise LocalProtocolError("discovery is closed")
        if not self._network.is_online(self._peer_id):
            raise FetchFailed(
                f"cannot fetch offers from {peer_id}: we are offline", kind="unreachable"
            )
        await self._network.round_trip(self._peer_id, peer_id)
        remote = self._hub.nodes.get(peer_id)
        if (
            remote is None
            or not remote._running
            or remote is self
            or not self._network.is_online(peer_id)
        ):
            raise FetchFailed(
                f"cannot fetch offers from {peer_id}: unreachable", kind="unreachable"
            )
        return remote._answer(ledger, service)

    def _answer(self, ledger: bytes, service: str) -> list[bytes]:
        """What this node's offer source answers, cut to the protocol's limits."""
        source = self._source
        if source is None:
            return []
        try:
            return servable_offers(source(ledger, service))
        except Exception:
            logger.exception("offer source failed (memory discovery of %s)", self._peer_id)
            raise FetchFailed(f"{self._peer_id} refused the fetch", kind="refused") from None

    def serve_offers(self, source: OfferSource | None) -> None:
        self._source = source

    async def bootstrap(self, addrs: Sequence[str]) -> dict[str, str]:
        """Nothing to join in memory (every node of the network is reachable); the
        addresses are checked as on libp2p, and a peer that has no discovery open on the
        network, or is offline, or while we are, is not reached."""
        named = [(addr, split_p2p(addr)[1]) for addr in addrs]
        await trio.lowlevel.checkpoint()
        failed: dict[str, str] = {}
        for addr, peer_id in named:
            if peer_id == self._peer_id:
                continue
            remote = self._hub.nodes.get(peer_id)
            if remote is None or not remote._running:
                failed[addr] = "no such peer on the memory network"
            elif not (self._network.is_online(self._peer_id) and self._network.is_online(peer_id)):
                failed[addr] = "offline"
        return failed

    # --- lifecycle ----------------------------------------------------------------

    def _close(self) -> None:
        self._running = False
        if self._hub.nodes.get(self._peer_id) is self:
            del self._hub.nodes[self._peer_id]
        for topic in self._subs:
            self._hub.topics.get(topic, set()).discard(self)
        for channels in self._subs.values():
            for channel in channels:
                channel.close()
        self._subs.clear()
        self._pending.clear()


@asynccontextmanager
async def open_memory_discovery(
    network: MemoryNetwork, transport: Transport
) -> AsyncIterator[MemoryDiscovery]:
    """Discovery for the peer of `transport` (a transport open on `network`).

    Yields:
        The node's `MemoryDiscovery`. Leaving the context unsubscribes everything and
        stops serving offers; its provider records stay until they expire.

    Raises:
        LocalProtocolError: this peer already has discovery open on `network`.
    """
    hub = _hub(network)
    if transport.peer_id in hub.nodes:
        raise LocalProtocolError(f"peer {transport.peer_id} already has discovery open")
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        node = MemoryDiscovery(hub, transport, nursery)
        hub.nodes[node.peer_id] = node
        nursery.start_soon(node._pump)
        try:
            yield node
        except Exception as exc:
            body_error = exc
        finally:
            node._close()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


if TYPE_CHECKING:  # `mypy --strict p2pay` checks the class against the interface
    _DISCOVERY: type[DiscoveryNet] = MemoryDiscovery
