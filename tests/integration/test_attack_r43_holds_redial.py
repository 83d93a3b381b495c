"""Attack round 43, properties that held (no defect shown by these tests): the re-dial
of `Libp2pTransport.connect` (net/p2p.py; specs/threat-model.md row 46: a stream open
refused on a held connection that is dead or closing lets it go and dials afresh, once)
cannot be turned against a healthy connection, and concurrent connects over a dead one
share one fresh connection. Real libp2p on 127.0.0.1; bounded waits; no timing
assertion.
"""

from __future__ import annotations

import trio
from libp2p.peer.id import ID
from node_support import tcp_of
from test_transports import echo

from p2pay.core.identity import Keypair
from p2pay.net import PeerNotReached, StreamClosed
from p2pay.net.p2p import _PROTOCOL, Libp2pTransport, open_libp2p_transport

ALICE = Keypair.from_seed(bytes([143]) * 32)
BOB = Keypair.from_seed(bytes([144]) * 32)
CALLS = 8


async def _round_trip(transport: Libp2pTransport, addr: str, body: bytes) -> None:
    stream = await transport.connect(addr)
    await stream.send(body)
    assert await stream.receive() == body
    await stream.aclose()


async def test_a_peer_refusing_the_protocol_keeps_its_healthy_connection() -> None:
    """A peer that refuses the p2pay protocol on a connection that is fine: each connect
    fails PeerNotReached, nothing is dropped or dialled again, and a stream already open
    on that connection still carries frames."""
    async with (
        open_libp2p_transport(ALICE, echo) as alice,
        open_libp2p_transport(BOB, echo) as bob,
    ):
        addr = bob.addrs[0]
        swarm = alice.host.get_network()
        pid = ID.from_base58(bob.peer_id)
        with trio.fail_after(20):
            open_stream = await alice.connect(addr)
            await open_stream.send(b"before")
            assert await open_stream.receive() == b"before"
            (conn,) = swarm.get_connections(pid)
            bob.host.remove_stream_handler(_PROTOCOL)
            for _ in range(CALLS):
                try:
                    await alice.connect(addr)
                except PeerNotReached:
                    pass
                else:
                    raise AssertionError("a refused protocol gave a stream")
                assert swarm.get_connections(pid) == [conn]
                assert not conn.is_closed
            await open_stream.send(b"after")
            assert await open_stream.receive() == b"after"


async def test_concurrent_connects_over_a_dead_connection_share_one_fresh_one() -> None:
    """The peer restarted on its address and key while our reader was held (it has not
    seen the old connection's end): concurrent connects all reach the new process, over
    one new connection."""
    async with open_libp2p_transport(ALICE, echo) as alice:
        async with open_libp2p_transport(BOB, echo) as bob:
            addr = bob.addrs[0]
            port = int(addr.split("/")[4])
            with trio.fail_after(10):
                first = await alice.connect(addr)
                await first.send(b"old")
                assert await first.receive() == b"old"
            raw = tcp_of(first)
            await raw.read_lock.acquire()  # our reader reads no more
        listen = [f"/ip4/127.0.0.1/tcp/{port}"]
        async with open_libp2p_transport(BOB, echo, listen=listen):
            swarm = alice.host.get_network()
            pid = ID.from_base58(BOB.peer_id)
            (old,) = swarm.get_connections(pid)
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for i in range(CALLS):
                        nursery.start_soon(_round_trip, alice, addr, b"new %d" % i)
                    await trio.sleep(0.3)
                    raw.read_lock.release()
            (new,) = swarm.get_connections(pid)
            assert new is not old


async def test_a_peer_at_its_inbound_stream_limit_keeps_the_connection() -> None:
    """A peer at its inbound stream limit resets each further stream: each fails typed
    (at the connect or at the first read), the connection stays, and the stream it
    serves still carries frames."""
    async with (
        open_libp2p_transport(ALICE, echo) as alice,
        open_libp2p_transport(BOB, echo, max_inbound_streams=1) as bob,
    ):
        addr = bob.addrs[0]
        swarm = alice.host.get_network()
        pid = ID.from_base58(bob.peer_id)
        with trio.fail_after(20):
            served = await alice.connect(addr)
            await served.send(b"before")
            assert await served.receive() == b"before"
            (conn,) = swarm.get_connections(pid)
            for i in range(CALLS):
                try:
                    extra = await alice.connect(addr)
                    await extra.send(b"extra %d" % i)
                    await extra.receive()
                except (PeerNotReached, StreamClosed):
                    pass
                else:
                    raise AssertionError("a stream past the limit was served")
                assert swarm.get_connections(pid) == [conn]
                assert not conn.is_closed
            await served.send(b"after")
            assert await served.receive() == b"after"
