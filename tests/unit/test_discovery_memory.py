"""The in-memory discovery twin (p2pay.net.memory_discovery): topic, provider records,
fetch, bounds. Runs under trio's autojump clock: latencies cost no real time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.net import memory_discovery
from p2pay.net.base import (
    MAX_OFFER_BYTES,
    MAX_OFFERS_PER_REPLY,
    DiscoveryNet,
    FetchFailed,
    Stream,
)
from p2pay.net.memory import MemoryNetwork, memory_addr, open_memory_transport
from p2pay.net.memory_discovery import MemoryDiscovery, open_memory_discovery

LEDGER = b"p2pay:memory:" + bytes(range(16))
OTHER_LEDGER = b"p2pay:memory:" + bytes(16)
KEYS = [Keypair.from_seed(bytes([i]) * 32) for i in range(1, 7)]


async def _refuse(stream: Stream) -> None:
    await stream.reset()


@asynccontextmanager
async def _nodes(network: MemoryNetwork, count: int) -> AsyncIterator[list[MemoryDiscovery]]:
    async with AsyncExitStack() as stack:
        out = []
        for key in KEYS[:count]:
            transport = await stack.enter_async_context(
                open_memory_transport(network, key, _refuse)
            )
            out.append(await stack.enter_async_context(open_memory_discovery(network, transport)))
        yield out


async def _receive(channel: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> tuple[str, bytes]:
    with trio.fail_after(60):
        return await channel.receive()


async def test_the_twin_implements_the_interface(autojump_clock: object) -> None:
    async with _nodes(MemoryNetwork(), 1) as (a,):
        assert isinstance(a, DiscoveryNet)
        assert a.peer_id == str(KEYS[0].peer_id)


async def test_gossip_reaches_every_other_subscriber_after_the_latency(
    autojump_clock: object,
) -> None:
    network = MemoryNetwork()
    network.set_latency(lambda src, dst: 0.5 if dst == str(KEYS[2].peer_id) else 0.1)
    async with _nodes(network, 4) as (a, b, c, d):
        subs = [n.subscribe(LEDGER) for n in (a, b, c)]
        other = d.subscribe(OTHER_LEDGER)
        start = trio.current_time()
        await a.publish(LEDGER, b"offer-1")
        assert await _receive(subs[1]) == (a.peer_id, b"offer-1")
        assert trio.current_time() - start == pytest.approx(0.1)
        assert await _receive(subs[2]) == (a.peer_id, b"offer-1")
        assert trio.current_time() - start == pytest.approx(0.5)
        await trio.sleep(1)
        # the publisher does not hear itself; another ledger's topic hears nothing
        with pytest.raises(trio.WouldBlock):
            subs[0].receive_nowait()
        with pytest.raises(trio.WouldBlock):
            other.receive_nowait()


async def test_messages_keep_their_arrival_order_across_senders(autojump_clock: object) -> None:
    network = MemoryNetwork()
    slow, fast = str(KEYS[0].peer_id), str(KEYS[1].peer_id)
    network.set_latency(lambda src, dst: 1.0 if src == slow else 0.2)
    async with _nodes(network, 3) as (a, b, c):
        sub = c.subscribe(LEDGER)
        await a.publish(LEDGER, b"from-a")  # arrives at 1.0
        await b.publish(LEDGER, b"from-b")  # arrives at 0.2
        assert await _receive(sub) == (fast, b"from-b")
        assert await _receive(sub) == (slow, b"from-a")


async def test_offline_peers_neither_send_nor_receive(autojump_clock: object) -> None:
    network = MemoryNetwork()
    async with _nodes(network, 3) as (a, b, c):
        sub_b, sub_c = b.subscribe(LEDGER), c.subscribe(LEDGER)
        network.set_online(c.peer_id, False)
        await a.publish(LEDGER, b"1")
        assert await _receive(sub_b) == (a.peer_id, b"1")
        await trio.sleep(1)
        with pytest.raises(trio.WouldBlock):
            sub_c.receive_nowait()
        await c.publish(LEDGER, b"2")
        await trio.sleep(1)
        with pytest.raises(trio.WouldBlock):
            sub_b.receive_nowait()


async def test_oversized_and_non_bytes_publications_are_refused(autojump_clock: object) -> None:
    network = MemoryNetwork()
    async with _nodes(network, 1) as (a,):
        await a.publish(LEDGER, b"x" * MAX_OFFER_BYTES)  # the limit itself is fine
        with pytest.raises(LocalProtocolError):
            await a.publish(LEDGER, b"x" * (MAX_OFFER_BYTES + 1))
        with pytest.raises(LocalProtocolError):
            await a.publish(LEDGER, "text")  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            await a.publish(b"", b"x")


async def test_a_flood_is_bounded_and_counted(autojump_clock: object) -> None:
    network = MemoryNetwork()
    network.set_latency(lambda src, dst: 1.0)
    async with _nodes(network, 2) as (flooder, victim):
        sub = victim.subscribe(LEDGER)
        total = memory_discovery.MAX_PENDING + memory_discovery.SUBSCRIPTION_QUEUE + 100
        for i in range(total):
            await flooder.publish(LEDGER, i.to_bytes(4, "big"))
        # nothing has arrived yet: in flight, bounded
        assert victim.pending == memory_discovery.MAX_PENDING
        assert victim.dropped == total - memory_discovery.MAX_PENDING
        await trio.sleep(2)  # everything in flight arrives; nobody reads the channel
        assert victim.pending == 0
        assert victim.dropped == total - memory_discovery.SUBSCRIPTION_QUEUE
        got = [sub.receive_nowait() for _ in range(memory_discovery.SUBSCRIPTION_QUEUE)]
        assert got[0] == (flooder.peer_id, (0).to_bytes(4, "big"))
        with pytest.raises(trio.WouldBlock):
            sub.receive_nowait()
        # the node still works
        await flooder.publish(LEDGER, b"after")
        assert await _receive(sub) == (flooder.peer_id, b"after")


async def test_a_closed_subscription_stops_receiving(autojump_clock: object) -> None:
    network = MemoryNetwork()
    async with _nodes(network, 2) as (a, b):
        first, second = b.subscribe(LEDGER), b.subscribe(LEDGER)
        await first.aclose()
        await a.publish(LEDGER, b"1")
        assert await _receive(second) == (a.peer_id, b"1")
        assert b.dropped == 0


async def test_a_late_joiner_finds_providers_and_fetches_their_offers(
    autojump_clock: object,
) -> None:
    network = MemoryNetwork()
    network.set_latency(lambda src, dst: 0.05)
    async with _nodes(network, 3) as (provider, other, client):
        provider.serve_offers(lambda ledger, service: [b"offer:" + service.encode()])
        other.serve_offers(lambda ledger, service: [])
        await provider.provide(LEDGER, "echo")
        await other.provide(LEDGER, "echo")
        await other.provide(LEDGER, "reverse")
        await provider.provide(LEDGER, "echo")  # renewed: newest first
        found = await client.find_providers(LEDGER, "echo")
        assert found == [
            (provider.peer_id, [memory_addr(provider.peer_id)]),
            (other.peer_id, [memory_addr(other.peer_id)]),
        ]
        assert await client.find_providers(LEDGER, "echo", limit=1) == found[:1]
        assert await client.find_providers(OTHER_LEDGER, "echo") == []
        # we are never our own provider
        assert [p for p, _ in await provider.find_providers(LEDGER, "echo")] == [other.peer_id]
        start = trio.current_time()
        offers = await client.fetch_offers(provider.peer_id, found[0][1], LEDGER, "echo")
        assert offers == [b"offer:echo"]
        assert trio.current_time() - start == pytest.approx(0.1)  # one round trip
        assert await client.fetch_offers(other.peer_id, [], LEDGER, "echo") == []


async def test_provider_records_expire_unless_renewed(autojump_clock: object) -> None:
    network = MemoryNetwork()
    async with _nodes(network, 3) as (a, b, client):
        await a.provide(LEDGER, "echo")
        await b.provide(LEDGER, "echo")
        await trio.sleep(memory_discovery.PROVIDER_TTL / 2)
        await b.provide(LEDGER, "echo")
        await trio.sleep(memory_discovery.PROVIDER_TTL / 2 + 1)
        assert [p for p, _ in await client.find_providers(LEDGER, "echo")] == [b.peer_id]


async def test_records_of_a_dead_provider_stay_and_its_fetch_fails(autojump_clock: object) -> None:
    network = MemoryNetwork()
    async with AsyncExitStack() as stack:
        client_t = await stack.enter_async_context(open_memory_transport(network, KEYS[0], _refuse))
        client = await stack.enter_async_context(open_memory_discovery(network, client_t))
        async with open_memory_transport(network, KEYS[1], _refuse) as t:
            async with open_memory_discovery(network, t) as provider:
                provider.serve_offers(lambda ledger, service: [b"o"])
                await provider.provide(LEDGER, "echo")
                network.set_online(provider.peer_id, False)
                with pytest.raises(FetchFailed) as offline:
                    await client.fetch_offers(provider.peer_id, [], LEDGER, "echo")
                assert offline.value.kind == "unreachable"
                network.set_online(provider.peer_id, True)
                assert await client.fetch_offers(provider.peer_id, [], LEDGER, "echo") == [b"o"]
        found = await client.find_providers(LEDGER, "echo")
        assert [p for p, _ in found] == [str(KEYS[1].peer_id)]
        with pytest.raises(FetchFailed) as gone:
            await client.fetch_offers(found[0][0], found[0][1], LEDGER, "echo")
        assert gone.value.kind == "unreachable"


async def test_the_served_answer_is_cut_to_the_protocol_limits(autojump_clock: object) -> None:
    network = MemoryNetwork()
    async with _nodes(network, 2) as (provider, client):
        many = [bytes([i]) for i in range(MAX_OFFERS_PER_REPLY + 5)]
        provider.serve_offers(lambda ledger, service: [b"x" * (MAX_OFFER_BYTES + 1), b"", *many])
        got = await client.fetch_offers(provider.peer_id, [], LEDGER, "echo")
        assert got == many[:MAX_OFFERS_PER_REPLY]
        provider.serve_offers(None)
        assert await client.fetch_offers(provider.peer_id, [], LEDGER, "echo") == []


async def test_a_failing_source_refuses_the_fetch_and_the_node_lives(
    autojump_clock: object,
) -> None:
    network = MemoryNetwork()

    def broken(ledger: bytes, service: str) -> Sequence[bytes]:
        raise RuntimeError("boom")

    async with _nodes(network, 2) as (provider, client):
        provider.serve_offers(broken)
        with pytest.raises(FetchFailed) as refused:
            await client.fetch_offers(provider.peer_id, [], LEDGER, "echo")
        assert refused.value.kind == "refused"
        provider.serve_offers(lambda ledger, service: [b"ok"])
        assert await client.fetch_offers(provider.peer_id, [], LEDGER, "echo") == [b"ok"]


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.fetch_offers(
            str(KEYS[1].peer_id), [memory_addr(str(KEYS[2].peer_id))], LEDGER, "echo"
        ),
        lambda d: d.fetch_offers(str(KEYS[1].peer_id), [], LEDGER, ""),
        lambda d: d.find_providers(LEDGER, "echo", limit=0),
        lambda d: d.provide(b"", "echo"),
        lambda d: d.bootstrap(["/memory/x"]),
    ],
)
async def test_bad_arguments_are_refused(
    autojump_clock: object, call: Callable[[MemoryDiscovery], Awaitable[object]]
) -> None:
    network = MemoryNetwork()
    async with _nodes(network, 1) as (a,):
        with pytest.raises(LocalProtocolError):
            await call(a)


async def test_one_discovery_per_peer_and_closing_unsubscribes(autojump_clock: object) -> None:
    network = MemoryNetwork()
    async with open_memory_transport(network, KEYS[0], _refuse) as t:
        async with open_memory_discovery(network, t) as d:
            sub = d.subscribe(LEDGER)
            with pytest.raises(LocalProtocolError):
                async with open_memory_discovery(network, t):
                    pass
        with pytest.raises(trio.EndOfChannel):
            sub.receive_nowait()
        async with open_memory_discovery(network, t) as again:  # reopened after close
            await again.bootstrap([memory_addr(str(KEYS[1].peer_id))])
