"""Attack round 46: the stream resets whose RST is written in the background (net/p2p.py
`Libp2pTransport._reset_net`, `_reset_task`, since 22e026c). Held:

* the background tasks are one per reset waiting for its connection, never more, and all
  of them end once the connection takes their RSTs (every peer stream then reads its end,
  the connection stays up and carries new streams);
* a transport left while resets still wait for a busy connection exits (bounded), and the
  peer's streams all read their end;
* aclose() (FIN, then RST) held up by a busy connection past CLOSE_TIMEOUT: the peer still
  reads the end of its stream;
* a failure inside a reset task (the muxer's reset raising, the connection's close raising
  on the RESET_LINGER path) stays in it: the transport goes on serving.

Real py-libp2p transports on 127.0.0.1; "a busy connection" is its yamux write lock held
by a helper task (what a frame being written, or a starved scheduler, does). Every wait
bounded generously; no timing assertion.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from node_support import wait_until
from test_transports import Acceptor

import p2pay.net.p2p as p2p
from p2pay.core.identity import Keypair
from p2pay.net import ConnectError, StreamClosed
from p2pay.net.p2p import Libp2pStream, Libp2pTransport, open_libp2p_transport

ALICE = Keypair.from_seed(bytes([201]) * 32)
BOB = Keypair.from_seed(bytes([202]) * 32)
CAROL = Keypair.from_seed(bytes([203]) * 32)
T = 60.0  # generous bound on any single step


async def _pairs(
    dialer: Libp2pTransport, listener: Libp2pTransport, acceptor: Acceptor, n: int
) -> list[tuple[Libp2pStream, Libp2pStream]]:
    out = []
    with trio.fail_after(T):
        for i in range(n):
            client = await dialer.connect(listener.addrs[0])
            await client.send(b"hello %d" % i)
            server = await acceptor.streams.receive()
            assert await server.receive() == b"hello %d" % i
            assert isinstance(client, Libp2pStream) and isinstance(server, Libp2pStream)
            out.append((client, server))
    return out


def _reset_tasks(transport: Libp2pTransport) -> int:
    nursery = transport._nursery
    assert nursery is not None
    return sum(1 for task in nursery.child_tasks if "_reset_task" in task.name)


class _Holder:
    """Holds a connection's yamux write lock from a task of its own until `release`."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.held = trio.Event()
        self.go = trio.Event()

    async def run(self) -> None:
        async with self.conn._write_lock:
            self.held.set()
            await self.go.wait()

    def release(self) -> None:
        self.go.set()


async def _ends(client: Libp2pStream) -> None:
    with trio.fail_after(T), pytest.raises(StreamClosed):
        while True:
            await client.receive()


async def test_attack_r46_holds_background_resets_are_one_per_reset_and_drain() -> None:
    acceptor = Acceptor()
    async with (
        open_libp2p_transport(BOB, acceptor.handler) as bob,
        open_libp2p_transport(ALICE, Acceptor().handler) as alice,
    ):
        assert isinstance(bob, Libp2pTransport) and isinstance(alice, Libp2pTransport)
        pairs = await _pairs(alice, bob, acceptor, 40)
        conn = pairs[0][1]._net.muxed_conn
        holder = _Holder(conn)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder.run)
            with trio.fail_after(T):
                await holder.held.wait()
                async with trio.open_nursery() as resets:  # a reset storm, all at once
                    for _, server in pairs:
                        resets.start_soon(server.reset)
                # every reset returned; their RSTs wait, one task each, no more
                pending = _reset_tasks(bob)
                assert 0 < pending <= len(pairs)
                # the same streams reset again add nothing
                for _, server in pairs:
                    await server.reset()
                assert _reset_tasks(bob) <= pending
                holder.release()
        with trio.fail_after(T):
            await wait_until(lambda: _reset_tasks(bob) == 0, timeout=T)
        for client, _ in pairs:
            await _ends(client)
        assert not conn.p2pay_write_broken and not conn.event_closed.is_set()
        ((again, _),) = await _pairs(alice, bob, acceptor, 1)
        assert again._net.muxed_conn is pairs[0][0]._net.muxed_conn


async def test_attack_r46_holds_exit_while_resets_wait_for_the_connection() -> None:
    acceptor = Acceptor()
    async with open_libp2p_transport(ALICE, Acceptor().handler) as alice:
        assert isinstance(alice, Libp2pTransport)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(3 * T):
                async with open_libp2p_transport(BOB, acceptor.handler) as bob:
                    assert isinstance(bob, Libp2pTransport)
                    pairs = await _pairs(alice, bob, acceptor, 10)
                    holder = _Holder(pairs[0][1]._net.muxed_conn)
                    nursery.start_soon(holder.run)
                    await holder.held.wait()
                    for _, server in pairs[:5]:
                        await server.reset()
                    assert _reset_tasks(bob) > 0

                    async def release_later() -> None:
                        await trio.sleep(2)  # while the transport is closing
                        holder.release()

                    nursery.start_soon(release_later)
                # the transport's exit ended every reset task (its nursery is closed)
        for client, _ in pairs:
            await _ends(client)


async def test_attack_r46_holds_aclose_held_past_its_bound_still_ends_the_peer_stream() -> None:
    acceptor = Acceptor()
    async with (
        open_libp2p_transport(BOB, acceptor.handler) as bob,
        open_libp2p_transport(ALICE, Acceptor().handler) as alice,
    ):
        assert isinstance(bob, Libp2pTransport) and isinstance(alice, Libp2pTransport)
        ((client, server),) = await _pairs(alice, bob, acceptor, 1)
        await server.send(b"last words")
        conn = server._net.muxed_conn
        holder = _Holder(conn)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder.run)
            with trio.fail_after(T):
                await holder.held.wait()
                await server.aclose()  # FIN gives up at CLOSE_TIMEOUT; the RST waits
                holder.release()
        with trio.fail_after(T):
            assert await client.receive() == b"last words"
        await _ends(client)
        assert not conn.event_closed.is_set()


async def test_attack_r46_holds_a_failing_muxer_reset_stays_in_its_task() -> None:
    acceptor = Acceptor()
    async with (
        open_libp2p_transport(BOB, acceptor.handler) as bob,
        open_libp2p_transport(ALICE, Acceptor().handler) as alice,
    ):
        assert isinstance(bob, Libp2pTransport) and isinstance(alice, Libp2pTransport)
        ((_, server),) = await _pairs(alice, bob, acceptor, 1)

        async def broken_reset() -> None:
            raise RuntimeError("odd muxer")

        vars(server._net)["reset"] = broken_reset  # (this NetStream only)
        with trio.fail_after(T):
            await server.reset()
            await wait_until(lambda: _reset_tasks(bob) == 0, timeout=T)
        await _pairs(alice, bob, acceptor, 1)  # bob still serves


async def test_attack_r46_holds_a_failing_close_on_the_linger_path_stays_in_its_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(p2p, "RESET_LINGER", 1.0)
    acceptor = Acceptor()
    async with (
        open_libp2p_transport(BOB, acceptor.handler) as bob,
        open_libp2p_transport(ALICE, Acceptor().handler) as alice,
        open_libp2p_transport(CAROL, Acceptor().handler) as carol,
    ):
        assert isinstance(bob, Libp2pTransport)
        assert isinstance(alice, Libp2pTransport) and isinstance(carol, Libp2pTransport)
        ((_, server),) = await _pairs(alice, bob, acceptor, 1)
        conn = server._net.muxed_conn
        secured = conn.secured_conn

        async def broken_close() -> None:
            raise OSError("odd close")

        vars(secured)["close"] = broken_close
        holder = _Holder(conn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder.run)
                with trio.fail_after(T):
                    await holder.held.wait()
                    await server.reset()
                    await wait_until(lambda: _reset_tasks(bob) == 0, timeout=T)
                    assert conn.p2pay_write_broken
                    holder.release()
            await _pairs(carol, bob, acceptor, 1)  # bob still serves
        finally:
            holder.release()
            del vars(secured)["close"]


async def test_attack_r46_holds_a_refusal_storm_leaves_no_reset_task_behind() -> None:
    """A peer opening streams as fast as it can past the inbound limit: each refusal is a
    reset (in the background); they all end, every refused stream reads its end, and the
    connection stays up. (Measured by hand with 50 openers for 20 s, the connection also
    slowed to 0-0.5 s per frame: at most 33 reset tasks at once, none left.)"""
    acceptor = Acceptor()
    async with (
        open_libp2p_transport(BOB, acceptor.handler, max_inbound_streams=1) as bob,
        open_libp2p_transport(ALICE, Acceptor().handler) as alice,
    ):
        assert isinstance(bob, Libp2pTransport) and isinstance(alice, Libp2pTransport)
        ((first, _),) = await _pairs(alice, bob, acceptor, 1)  # the one place, taken
        refused: list[Libp2pStream] = []

        async def open_one() -> None:
            try:
                stream = await alice.connect(bob.addrs[0])
            except ConnectError:  # the refusal read during the protocol's negotiation
                return
            assert isinstance(stream, Libp2pStream)
            refused.append(stream)

        with trio.fail_after(T):
            async with trio.open_nursery() as nursery:
                for _ in range(60):
                    nursery.start_soon(open_one)
            await wait_until(lambda: _reset_tasks(bob) == 0, timeout=T)
        print(len(refused), "of 60 refused after they were opened")
        for stream in refused:
            await _ends(stream)
        conn = first._net.muxed_conn
        assert not conn.p2pay_write_broken and not conn.event_closed.is_set()
        assert bob._inbound == 1
