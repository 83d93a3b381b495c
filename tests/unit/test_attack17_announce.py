"""Attack 17-8: a slow DHT kept a provider's other services off the gossip topic.

`announce` published each service's offer and put its DHT record in turn, and a round is
cut after `ANNOUNCE_TIMEOUT` (30 s). A DHT record costs a Kademlia walk, and a stranger
who opens a DHT stream to the provider enters its routing table; peers that then never
answer make `provide` wait out its own 30 s bound. The first service's `provide` used up
the whole round: the provider's other services were never gossiped (only fetched).
discovery.md 5.1 now says offers are published before any DHT work. Here the DHT of the
in-memory twin never answers a `provide`.
"""

from __future__ import annotations

import pytest
import trio

from p2pay.net.memory import MemoryNetwork
from p2pay.net.memory_discovery import MemoryDiscovery
from tests.unit.test_node_discovery import CLIENT, P1, PRICE, echo, funded, node


async def test_a_provide_that_never_ends_does_not_hold_back_the_other_offers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def stuck(self: MemoryDiscovery, ledger: bytes, service: str) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(MemoryDiscovery, "provide", stuck)
    ledger = await funded()
    network = MemoryNetwork()
    async with node(CLIENT, ledger, network) as client:
        await trio.sleep(0.1)  # subscribed before the provider announces
        async with node(P1, ledger, network, serve=PRICE) as provider:  # staked, echo
            provider.serve("upper", echo, price=PRICE)
            assert client.discovery is not None
            with trio.fail_after(10):
                while not (client.discovery.live("echo") and client.discovery.live("upper")):
                    await trio.sleep(0.05)
