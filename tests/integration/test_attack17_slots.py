"""Attack 17-2: a stranger holds every inbound slot of a node's discovery servers with idle
streams, so that nobody else can fetch its offers or ask its DHT (a bootstrap node: every
`p2pay find` through it comes back empty).

- ``/p2pay/offers/2.0.0``: a node answered at most 64 fetches at once and reset the rest;
  ONE peer opening 64 streams and sending nothing held all of them (5 s each, then again).
- Kademlia: py-libp2p serves at most 12 inbound DHT streams at once; p2pay's guard allowed
  2 per peer, so 6 free identities with 2 idle streams each held all of them (10 s each).

specs/discovery.md 5.3 and 6 now say: at most 4 fetches at once per peer; when the node's
slots are full, a new stream displaces the one that has waited longest (an idle stream),
for both protocols. Reproduced against real `node run` processes by
/work/attack17/a2_discovery_dos.py. Real py-libp2p hosts on 127.0.0.1; every wait bounded.
"""

from __future__ import annotations

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2pay.net import discovery as disc
from tests.integration.test_discovery_net import LEDGER, _bare, _cluster, _peer

FETCH = TProtocol("/p2pay/offers/2.0.0")
KAD = TProtocol("/ipfs/kad/1.0.0")


async def test_one_peer_with_idle_fetch_streams_does_not_lock_others_out() -> None:
    async with _cluster() as (stack, nursery):
        server = await _peer(stack, nursery, subscribe=False)
        server.net.serve_offers(lambda ledger, service: [b"offer:" + service.encode()])
        client = await _peer(stack, nursery, subscribe=False)
        attacker = await _bare(stack)
        await attacker.dial(server.peer_id, [server.addr], timeout=15)
        pid = ID.from_base58(server.peer_id)
        held = []
        with trio.fail_after(30):
            for _ in range(disc.MAX_INBOUND_FETCHES):
                try:
                    held.append(await attacker.host.new_stream(pid, [FETCH]))
                except Exception:  # refused at once: the server limits a peer's streams
                    pass
        # the honest client is answered (within the fetch's own 5 s deadline)
        offers = await client.net.fetch_offers(server.peer_id, [server.addr], LEDGER, "echo")
        assert offers == [b"offer:echo"]


async def test_a_few_identities_with_idle_dht_streams_do_not_shut_the_dht_server() -> None:
    async with _cluster() as (stack, nursery):
        boot = await _peer(stack, nursery, subscribe=False)
        provider = await _peer(stack, nursery, subscribe=False)
        await provider.net.bootstrap([boot.addr])
        await provider.net.provide(LEDGER, "echo")
        pid = ID.from_base58(boot.peer_id)
        attackers = [await _bare(stack) for _ in range(6)]  # identities are free
        with trio.fail_after(60):
            for attacker in attackers:
                await attacker.dial(boot.peer_id, [boot.addr], timeout=15)
                for _ in range(disc.KAD_STREAMS_PER_PEER):
                    await attacker.host.new_stream(pid, [KAD])
            await trio.sleep(0.2)  # the server's handlers have taken their slots
        client = await _peer(stack, nursery, subscribe=False)
        await client.net.bootstrap([boot.addr])
        found = await client.net.find_providers(LEDGER, "echo")  # bounded: FIND_TIMEOUT
        assert [p for p, _ in found] == [provider.peer_id]
