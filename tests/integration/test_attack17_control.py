"""Attack 17-4: gossipsub control messages naming topics the node never joined grew its
memory without bound.

A PRUNE names any topic, and py-libp2p 0.8.1 keeps a back-off entry per (topic, peer) that
nothing sweeps; an IHAVE keeps a rate-limit list per (peer, topic); a GRAFT for an unknown
topic is answered with a PRUNE. One 1 MiB RPC carries ~20,000 PRUNEs and nothing limited
control messages (the guards looked at published messages only): 12 MiB sent grew a real
bootstrap `node run` by ~270 MB, for good (/work/attack17/a4_prune_flood.py).
specs/discovery.md 5.3 now says control entries for topics the node is not in are dropped
before the router sees them, and a PRUNE's back-off is capped.

Counted as entries of py-libp2p's structures (no memory measurement); every wait bounded.
"""

from __future__ import annotations

import time

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from p2pay.net.framing import encode_uvarint
from tests.integration.test_discovery_net import TOPIC, _alive, _bare, _cluster, _peer


async def test_control_messages_for_foreign_topics_leave_no_state() -> None:
    async with _cluster() as (stack, nursery):
        victim = await _peer(stack, nursery)
        client = await _peer(stack, nursery, subscribe=False)
        attacker = await _bare(stack)
        await attacker.dial(victim.peer_id, [victim.addr], timeout=15)
        stream = await attacker.host.new_stream(
            ID.from_base58(victim.peer_id), [TProtocol("/meshsub/1.1.0")]
        )
        rpc = rpc_pb2.RPC()
        for i in range(2000):
            prune = rpc.control.prune.add()
            prune.topicID, prune.backoff = f"junk-{i}", 1 << 40
            rpc.control.ihave.add(topicID=f"junk-{i}", messageIDs=[b"x" * 20])
            rpc.control.graft.add(topicID=f"junk-{i}")
        mine = rpc.control.prune.add()  # one for our topic: it shows the RPC was handled
        mine.topicID, mine.backoff = TOPIC, 1 << 40
        data = rpc.SerializeToString()
        await stream.write(encode_uvarint(len(data)) + data)
        router = victim.net.pubsub.router
        attacker_id = ID.from_base58(attacker.peer_id)
        with trio.fail_after(30):
            while attacker_id not in router.back_off.get(TOPIC, {}):
                await trio.sleep(0.05)
        assert set(router.back_off) == {TOPIC}
        assert set(router.ihave_message_limits.get(attacker_id, {})) <= {TOPIC}
        # a PRUNE's back-off is capped (not 2**40 s: an entry nothing sweeps)
        assert router.back_off[TOPIC][attacker_id] <= time.time() + 2 * 3600
        await _alive(victim, client)
