"""Attack 17-5: DHT provider records made every `p2pay find` dial the hosts they name, again
at every round.

While nothing is found, `find` looks the service up again every second (within its wait),
and it fetched from every provider the lookup returned each time: 20 records from free
identities, each naming a victim's address, made ONE `p2pay find echo` open 200 TCP
connections to the victim (/work/attack17/a7_dht_reflect.py, real processes). A record is
only its maker's word: discovery.md 8.1 now says a search fetches from each provider at
most once. Here: one bogus record (its maker gone) and one search of several rounds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import trio

from p2pay.net.memory import MemoryNetwork
from tests.unit.test_node_discovery import CLIENT, LIAR, funded, node


async def test_a_search_fetches_from_each_provider_once() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with node(LIAR, ledger, network) as liar:  # no stake: announces nothing itself
        assert liar.discovery is not None
        await liar.discovery.net.provide(ledger.ledger_id, "echo")  # a bogus record
        bogus = str(LIAR.peer_id)
    async with node(CLIENT, ledger, network) as client:
        assert client.discovery is not None
        net = client.discovery.net
        dials: Counter[str] = Counter()
        fetch = net.fetch_offers

        async def counting(
            peer_id: str, addrs: Sequence[str], ledger_id: bytes, service: str
        ) -> list[bytes]:
            dials[peer_id] += 1
            return await fetch(peer_id, addrs, ledger_id, service)

        net.fetch_offers = counting  # type: ignore[method-assign]
        with trio.fail_after(30):
            assert await client.find("echo", wait=3.5) == []  # several rounds: nothing
        assert dials[bogus] == 1
