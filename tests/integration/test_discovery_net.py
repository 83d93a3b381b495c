"""Discovery over libp2p (p2pay.net.discovery): gossipsub, Kademlia provider records and
the /p2pay/offers/2.0.0 fetch between real py-libp2p hosts on 127.0.0.1, and the guards
around py-libp2p's weak spots (floods, bad frames, handler exceptions, idle streams).

Every wait is bounded; nothing asserts on timing, throughput or memory use: the bounds
are checked as counts of what py-libp2p's structures hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from multiaddr import Multiaddr

from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.offers import offer_key, offer_topic
from p2pay.net import discovery as disc
from p2pay.net.base import (
    MAX_OFFER_BYTES,
    DiscoveryNet,
    Stream,
)
from p2pay.net.discovery import (
    Libp2pDiscovery,
    open_libp2p_discovery,
)
from p2pay.net.framing import encode_uvarint
from p2pay.net.p2p import Libp2pTransport, open_libp2p_transport
from tests.integration.node_support import wait_until

LEDGER = b"p2pay:memory:" + bytes(range(16))
TOPIC = offer_topic(LEDGER)
_seed = iter(range(1, 250))


def _key() -> Keypair:
    return Keypair.from_seed(bytes([next(_seed)]) * 32)


async def _refuse(stream: Stream) -> None:
    await stream.reset()


@dataclass
class Peer:
    transport: Libp2pTransport
    net: Libp2pDiscovery
    received: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.transport.peer_id

    @property
    def addr(self) -> str:
        return self.transport.addrs[0]


@asynccontextmanager
async def _cluster() -> AsyncIterator[tuple[AsyncExitStack, trio.Nursery]]:
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)  # readers stop before the hosts close
        yield stack, nursery


async def _peer(
    stack: AsyncExitStack, nursery: trio.Nursery, *, subscribe: bool = True, server: bool = True
) -> Peer:
    transport = await stack.enter_async_context(open_libp2p_transport(_key(), _refuse))
    assert isinstance(transport, Libp2pTransport)
    net = await stack.enter_async_context(open_libp2p_discovery(transport, server=server))
    peer = Peer(transport, net)
    if subscribe:
        channel = net.subscribe(LEDGER)

        async def read() -> None:
            async for item in channel:
                peer.received.append(item)

        nursery.start_soon(read)
    return peer


async def _bare(stack: AsyncExitStack) -> Libp2pTransport:
    """A host without discovery: an attacker writing raw protocol bytes."""
    transport = await stack.enter_async_context(open_libp2p_transport(_key(), _refuse))
    assert isinstance(transport, Libp2pTransport)
    return transport


async def _raw_stream(attacker: Libp2pTransport, victim: Peer, protocol: str) -> object:
    await attacker.dial(victim.peer_id, [victim.addr], timeout=15)
    return await attacker.host.new_stream(ID.from_base58(victim.peer_id), [TProtocol(protocol)])


async def _publish_until(publisher: Peer, receivers: Sequence[Peer], tag: bytes) -> None:
    """Publish fresh messages until every receiver has one (the mesh forms within a few
    heartbeats; gossip before that may be lost, as on any gossipsub network)."""

    def done() -> bool:
        return all(
            any(s == publisher.peer_id and d.startswith(tag) for s, d in r.received)
            for r in receivers
        )

    with trio.fail_after(60):
        n = 0
        while not done():
            n += 1
            await publisher.net.publish(LEDGER, tag + b"-%d" % n)
            with trio.move_on_after(0.5):
                while not done():
                    await trio.sleep(0.02)


async def _alive(provider: Peer, client: Peer) -> None:
    """The provider's host still serves: a fetch is answered."""
    provider.net.serve_offers(lambda ledger, service: [b"alive:" + service.encode()])
    offers = await client.net.fetch_offers(provider.peer_id, [provider.addr], LEDGER, "echo")
    assert offers == [b"alive:echo"]


# --- the whole path -------------------------------------------------------------------


async def test_a_late_joiner_finds_the_provider_through_the_dht_and_fetches() -> None:
    async with _cluster() as (stack, nursery):
        boot = await _peer(stack, nursery)
        provider = await _peer(stack, nursery)
        other = await _peer(stack, nursery)
        await provider.net.bootstrap([boot.addr])
        await other.net.bootstrap([boot.addr])
        provider.net.serve_offers(lambda ledger, service: [b"offer:" + service.encode()])
        other.net.serve_offers(lambda ledger, service: [])
        await provider.net.provide(LEDGER, "echo")
        await other.net.provide(LEDGER, "reverse")
        key = offer_key(LEDGER, "echo")
        # the record is stored under exactly the 34-byte multihash (what js-libp2p uses)
        assert key in boot.net.dht.provider_store.providers
        assert len(key) == 34 and key[:2] == b"\x12\x20"

        client = await _peer(stack, nursery)  # knows only the bootstrap address
        await client.net.bootstrap([boot.addr])
        found = await client.net.find_providers(LEDGER, "echo")
        assert [p for p, _ in found] == [provider.peer_id]
        addrs = found[0][1]
        assert addrs and all(a.endswith("/p2p/" + provider.peer_id) for a in addrs)
        assert await client.net.fetch_offers(provider.peer_id, addrs, LEDGER, "echo") == [
            b"offer:echo"
        ]
        assert [p for p, _ in await client.net.find_providers(LEDGER, "reverse")] == [other.peer_id]
        assert await client.net.find_providers(LEDGER, "nobody-sells-this") == []
        # a provider is never its own provider
        assert await provider.net.find_providers(LEDGER, "echo") == []
        assert isinstance(client.net, DiscoveryNet)


async def test_a_second_lookup_sees_a_provider_that_came_later() -> None:
    # py-libp2p's own find_providers answers from its local cache once it holds a
    # record for the key; ours asks the network every time.
    async with _cluster() as (stack, nursery):
        boot = await _peer(stack, nursery, subscribe=False)
        first = await _peer(stack, nursery, subscribe=False)
        client = await _peer(stack, nursery, subscribe=False)
        for peer in (first, client):
            await peer.net.bootstrap([boot.addr])
        await first.net.provide(LEDGER, "echo")
        assert [p for p, _ in await client.net.find_providers(LEDGER, "echo")] == [first.peer_id]
        second = await _peer(stack, nursery, subscribe=False)
        await second.net.bootstrap([boot.addr])
        await second.net.provide(LEDGER, "echo")
        found = {p for p, _ in await client.net.find_providers(LEDGER, "echo")}
        assert found == {first.peer_id, second.peer_id}
        assert len(await client.net.find_providers(LEDGER, "echo", limit=1)) == 1


async def test_gossip_reaches_every_subscriber_but_not_the_publisher() -> None:
    async with _cluster() as (stack, nursery):
        boot = await _peer(stack, nursery)
        peers = [await _peer(stack, nursery) for _ in range(3)]
        for peer in peers:
            await peer.net.bootstrap([boot.addr])
        publisher, receivers = peers[0], [boot, *peers[1:]]
        await _publish_until(publisher, receivers, b"offer")
        assert all(sender != publisher.peer_id for sender, _ in publisher.received)
        with pytest.raises(LocalProtocolError):
            await publisher.net.publish(LEDGER, b"x" * (MAX_OFFER_BYTES + 1))


async def test_bootstrap_skips_unreachable_peers_and_refuses_malformed_addresses() -> None:
    async with _cluster() as (stack, nursery):
        boot = await _peer(stack, nursery, subscribe=False)
        client = await _peer(stack, nursery, subscribe=False)
        dead = f"/ip4/127.0.0.1/tcp/1/p2p/{_key().peer_id}"
        failed = await client.net.bootstrap([dead, boot.addr, client.addr])  # ours: ignored
        assert client.net.dht.get_routing_table_size() >= 1
        # the one peer not reached, and why in a few words (not the PeerID, the address
        # or a Python tuple again)
        assert list(failed) == [dead]
        assert "cannot reach" not in failed[dead] and "(" not in failed[dead], failed
        with pytest.raises(LocalProtocolError):
            await client.net.bootstrap(["/ip4/127.0.0.1/tcp/1"])


async def test_a_node_alone_does_not_report_that_no_dht_peer_took_its_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider with no bootstrap peer and no DHT peer (the two-node walkthrough) has
    nobody to give its provider record to: said at debug, not info."""
    async with _cluster() as (stack, nursery):
        alone = await _peer(stack, nursery, subscribe=False)
        with caplog.at_level("DEBUG", logger="p2pay.net"):
            await alone.net.provide(LEDGER, "echo")
        said = [r for r in caplog.records if "took our provider record" in r.getMessage()]
        assert said and all(r.levelname == "DEBUG" for r in said)


# --- fetch ----------------------------------------------------------------------------


def _signed(
    host_key: object, from_id: bytes, data: bytes, seq: int, topics: Sequence[str]
) -> rpc_pb2.Message:
    msg = rpc_pb2.Message(
        data=data, topicIDs=list(topics), from_id=from_id, seqno=seq.to_bytes(8, "big")
    )
    if host_key is None:
        msg.signature = bytes(64)  # forged
    else:
        payload = PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString()
        msg.signature = host_key.sign(payload)  # type: ignore[attr-defined]
    return msg


async def test_a_flooding_peer_is_bounded_and_does_not_kill_the_host() -> None:
    async with _cluster() as (stack, nursery):
        victim = await _peer(stack, nursery)
        honest = await _peer(stack, nursery)
        await honest.net.bootstrap([victim.addr])
        await _publish_until(honest, [victim], b"before")

        flooder = await _bare(stack)
        stream = await _raw_stream(flooder, victim, MESHSUB_11)
        key = flooder.host.get_private_key()
        me = flooder.host.get_id().to_bytes()
        hello = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=TOPIC)])
        messages: list[rpc_pb2.Message] = []
        valid = 2000
        messages += [_signed(key, me, b"flood-%d" % i, i + 1, [TOPIC]) for i in range(valid)]
        messages += [
            _signed(key, me, b"x" * (MAX_OFFER_BYTES + 1), 10_000 + i, [TOPIC]) for i in range(20)
        ]
        junk = [f"/junk/{i}" for i in range(200)]
        messages += [_signed(key, me, b"multi", 20_000 + i, [TOPIC, *junk]) for i in range(20)]
        honest_id = ID.from_base58(honest.peer_id).to_bytes()
        messages += [_signed(None, honest_id, b"forged", 30_000 + i, [TOPIC]) for i in range(200)]
        rpcs = [hello] + [
            rpc_pb2.RPC(publish=messages[i : i + 50]) for i in range(0, len(messages), 50)
        ]
        for rpc in rpcs:
            body = rpc.SerializeToString()
            await stream.write(encode_uvarint(len(body)) + body)  # type: ignore[attr-defined]

        await wait_until(lambda: victim.net.dropped >= len(messages) // 2)
        # the honest peer's allowance was not spent by the forgeries, and the host lives
        await _publish_until(honest, [victim], b"after")
        await _alive(victim, honest)

        flood = [d for s, d in victim.received if s == flooder.peer_id]
        assert flood and all(d.startswith(b"flood-") for d in flood)  # nothing else passed
        assert len(flood) < valid // 2
        assert not any(d == b"forged" for _, d in victim.received)
        # no trace of the junk topics in py-libp2p's per-topic bookkeeping
        router = victim.net.pubsub.router
        scorer = router.scorer  # type: ignore[attr-defined]
        for table in (scorer.invalid_messages, scorer.first_message_deliveries):
            assert all(set(topics) <= {TOPIC} for topics in table.values())
        assert not router.message_rate_limits  # type: ignore[attr-defined]
        assert len(victim.net.pubsub.seen_messages.cache) < valid // 2


def test_the_seen_cache_and_the_bucket_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disc, "MAX_SEEN", 10)
    monkeypatch.setattr(disc, "MAX_BUCKETS", 5)
    seen = disc._BoundedSeenCache(120, 60)
    try:
        for i in range(100):
            assert seen.add(b"%d" % i)
        assert len(seen.cache) == 10 and seen.has(b"99") and not seen.has(b"0")
        assert not seen.add(b"99")
    finally:
        seen.stop()
    buckets = disc._Buckets(rate=1.0, burst=3.0)
    assert [buckets.take(b"a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take(b"a", 1.0)  # one token back after a second
    assert not buckets.take(b"a", 1.0)
    for i in range(50):
        buckets.take(b"%d" % i, 2.0)
    assert len(buckets) == 5


async def test_provider_records_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster() as (stack, nursery):
        server = await _peer(stack, nursery, subscribe=False)
        store = server.net.dht.provider_store
        addrs = [Multiaddr(f"/ip4/127.0.0.1/tcp/{4000 + i}") for i in range(20)]
        keys = [offer_key(LEDGER, f"s{i}") for i in range(2)]
        providers = [ID.from_base58(str(_key().peer_id)) for _ in range(25)]
        for pid in providers:
            store.add_provider(keys[0], PeerInfo(pid, addrs))
        records = store.providers[keys[0]]
        # the newest 20 providers hold the key (py-libp2p would keep the first 20)
        assert set(records) == {str(p) for p in providers[5:]}
        assert all(len(r.addresses) == disc.MAX_PROVIDER_ADDRS for r in records.values())
        # a full store drops its oldest records first, whatever their key
        monkeypatch.setattr(disc, "MAX_PROVIDER_RECORDS", 30)
        for pid in providers[:20]:
            store.add_provider(keys[1], PeerInfo(pid, addrs[:1]))
        assert store.size() == 30
        assert len(store.providers[keys[1]]) == 20
        assert set(store.providers[keys[0]]) == {str(p) for p in providers[15:]}


async def test_gossip_streams_reset_under_load_do_not_crash_the_publisher() -> None:
    # py-libp2p #1120: a StreamReset in Pubsub.write_msg used to escape and crash the
    # service. Subscribers vanish while the publisher is writing to them.
    async with _cluster() as (stack, nursery):
        publisher = await _peer(stack, nursery)
        keeper = await _peer(stack, nursery)
        await keeper.net.bootstrap([publisher.addr])
        async with AsyncExitStack() as doomed_stack:
            doomed = [await _peer(doomed_stack, nursery) for _ in range(3)]
            for peer in doomed:
                await peer.net.bootstrap([publisher.addr])
            await _publish_until(publisher, [keeper, *doomed], b"warm")

            async def flood() -> None:
                for i in range(300):
                    await publisher.net.publish(LEDGER, b"load-%d" % i)
                    await trio.sleep(0)

            async with trio.open_nursery() as inner:
                inner.start_soon(flood)
                for peer in doomed:
                    for conn in list(peer.transport.host.get_network().connections.values()):
                        for c in conn if isinstance(conn, list) else [conn]:
                            await c.close()
                    await trio.sleep(0.01)
        await _publish_until(publisher, [keeper], b"still")
        await _alive(publisher, keeper)


async def test_peers_connected_before_discovery_opened_still_gossip() -> None:
    async with _cluster() as (stack, nursery):
        first = await stack.enter_async_context(open_libp2p_transport(_key(), _refuse))
        second = await stack.enter_async_context(open_libp2p_transport(_key(), _refuse))
        assert isinstance(first, Libp2pTransport) and isinstance(second, Libp2pTransport)
        await second.dial(first.peer_id, [first.addrs[0]], timeout=15)
        assert second.is_connected(first.peer_id) and first.is_connected(second.peer_id)
        peers = []
        for transport in (first, second):
            net = await stack.enter_async_context(open_libp2p_discovery(transport))
            peer = Peer(transport, net)
            channel = net.subscribe(LEDGER)

            async def read(peer: Peer = peer, channel: object = channel) -> None:
                async for item in channel:  # type: ignore[attr-defined]
                    peer.received.append(item)

            nursery.start_soon(read)
            peers.append(peer)
        await _publish_until(peers[0], [peers[1]], b"no-bootstrap")


async def test_libp2p_discovery_on_another_transport_is_a_typed_error() -> None:
    # typed as a discovery factory for any transport (open_node(..., discovery=...)): one
    # that is not libp2p is refused with a clear error, before anything starts
    from p2pay.net.memory import MemoryNetwork, open_memory_transport

    async def ignore(stream: object) -> None:  # pragma: no cover - no stream comes
        return None

    key = Keypair.from_seed(bytes([9]) * 32)
    async with open_memory_transport(MemoryNetwork(), key, ignore) as transport:
        with pytest.raises(LocalProtocolError, match="needs a Libp2pTransport"):
            async with disc.open_libp2p_discovery(transport):
                pass  # pragma: no cover - refused on entry


async def test_a_handler_removed_during_negotiation_resets_the_stream_not_the_host() -> None:
    """py-libp2p's multiselect checks that the asked-for protocol has a handler, writes its
    acceptance (a scheduling point), then indexes its table. Closing discovery while the
    host runs removes handlers: one removed in that gap raised KeyError, which escaped the
    host's stream task and killed the host (seen once in
    `test_peers_connected_before_discovery_opened_still_gossip` under load). The p2pay host's
    table reads a removed protocol as no handler, and the host resets that one stream."""
    from libp2p.protocol_muxer.multiselect import Multiselect
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    from p2pay.net.p2p import _new_host

    proto = TProtocol("/p2pay-test/removed/1")
    host = _new_host(_key(), [Multiaddr("/ip4/127.0.0.1/tcp/0")])
    mux = host.get_mux()
    assert isinstance(mux, Multiselect)

    async def handler(stream: object) -> None:  # pragma: no cover - never chosen
        return None

    host.set_stream_handler(proto, handler)  # type: ignore[arg-type]

    class Peer(MultiselectCommunicator):
        """The dialling side: the multiselect handshake, then `proto`. The host's write of
        its acceptance is where discovery's close removes the handler."""

        def __init__(self) -> None:
            self.reads = ["/multistream/1.0.0", str(proto)]

        async def read(self) -> str:
            return self.reads.pop(0)

        async def write(self, msg_str: str) -> None:
            if msg_str == proto:
                host.remove_stream_handler(proto)
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        assert await mux.negotiate(Peer()) == (proto, None)  # no handler: reset, no KeyError
