"""Attack round 42: a peer that stops reading TCP must not stretch a stream reset past
RESET_TIMEOUT through the whole-frame guard (net/p2p.py `_GuardedYamux._write_frame`).

The guard shields a frame's write for up to FRAME_WRITE_TIMEOUT (5 s) once it holds the
connection. A reset's RST frame written to a socket the peer no longer drains then held
`Libp2pStream.reset()` for 5 s instead of RESET_TIMEOUT (1 s), and every clean-up bounded
by a deadline with it: `open_node`'s close of each outbound connection (one after the
other), the transport's reset of every stream at exit, a server's eviction of an idle
session (which the newcomer, another peer, waits for). Measured over real sockets: one
reset 5.01 s (1.00 s before the guard); with three such peers the transport's exit after
it 5.2 s more. The test stretches FRAME_WRITE_TIMEOUT to 600 s and gives the reset 60 s:
no timing is measured, only which bound ended it.
"""

from __future__ import annotations

import socket

import pytest
import trio
from node_support import socket_of, tcp_of

import p2pay.net.p2p as p2p
from p2pay.core.identity import Keypair
from p2pay.net import Stream
from p2pay.net.base import RESET_TIMEOUT
from p2pay.net.p2p import Libp2pStream, open_libp2p_transport

HONEST = Keypair.from_seed(bytes([42]) * 32)
STALLER = Keypair.from_seed(bytes([43]) * 32)


def _fill(stream: Libp2pStream) -> int:
    """Write garbage straight into the socket under `stream` until the kernel takes no
    more (the peer reads nothing, so it corrupts nothing that is read)."""
    sent = 0
    with socket_of(stream) as sock:
        sock.setblocking(False)
        try:
            while True:
                sent += sock.send(b"\0" * 1024)
        except BlockingIOError:
            pass
    return sent


async def test_attack_r42_a_reset_towards_a_peer_that_stopped_reading_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(p2p, "FRAME_WRITE_TIMEOUT", 600.0)
    streams: trio.MemorySendChannel[Stream]
    streams, accepted = trio.open_memory_channel[Stream](10)

    async def handler(stream: Stream) -> None:
        await streams.send(stream)
        await trio.sleep_forever()

    async with (
        open_libp2p_transport(STALLER, handler) as staller,
        open_libp2p_transport(HONEST, handler) as honest,
    ):
        with trio.fail_after(10):
            client = await staller.connect(honest.addrs[0])
            await client.send(b"hello")
            server = await accepted.receive()
            assert await server.receive() == b"hello"
            assert isinstance(client, Libp2pStream) and isinstance(server, Libp2pStream)
            # the staller reads no more (its reader is parked behind this lock)
            await tcp_of(client).read_lock.acquire()
            await trio.sleep(1)  # past yamux's first RTT ping (the next is 30 s later)
            # fill the honest side's socket towards it (what a peer that stopped reading
            # after being sent enough leaves)
            filled = 0
            while (sent := _fill(server)) > 0 or filled == 0:
                filled += sent
                await trio.sleep(0.05)
            _fill(server)
        # (reset() shields its own clean-up, so a deadline around it cannot cut it short:
        # it runs in a task of its own, given 60 x RESET_TIMEOUT, while the frame bound is
        # stretched to 600 s so that a reset held by it is told apart by any machine)
        ended = trio.Event()

        async def reset() -> None:
            await server.reset()
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reset)
            with trio.move_on_after(60 * RESET_TIMEOUT):
                await ended.wait()
            kept_its_bound = ended.is_set()
            if not kept_its_bound:  # unblock the stuck write: shut the socket down
                with socket_of(server) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
        assert kept_its_bound, "a reset towards a peer that stopped reading outlived its bound"
