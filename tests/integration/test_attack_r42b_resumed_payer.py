"""Attack round 42b: an honest payer that stopped reading TCP for a while (a paused
process) while an honest payee (library nodes, real libp2p on 127.0.0.1) had large
answers to send it. The payee's frame write is cut short after FRAME_WRITE_TIMEOUT and
it closes the connection (net/p2p.py "Whole frames"). Once the payer reads again, its
next calls reach the payee (a new connection; before, each failed ConnectionLost /
PeerUnreachable on the connection py-libp2p still held), no request is served twice, and after
its awaiting requests are delivered again both sides agree on the channel's spent.
Bounded waits; no timing assertion.
"""

from __future__ import annotations

import collections
import socket

import pytest
import trio
from node_support import funded_ledger, redeliver_awaiting, socket_of, tcp_of

from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair
from p2pay.net import p2p
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([149]) * 32)
PAYEE = Keypair.from_seed(bytes([150]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05,
    min_challenge_ms=50,
    auto_claim=False,
    redeem_threshold=10**30,
)


# gap: how long after it reads again the payer calls (0: its reader has not seen the
# connection's end: "Broken pipe"; 30 ms: py-libp2p is closing the connection and refuses
# the peer, "No valid connections available")
@pytest.mark.parametrize("gap", [0.0, 0.03])
async def test_a_resumed_payer_reaches_its_payee_again(
    monkeypatch: pytest.MonkeyPatch, gap: float
) -> None:
    monkeypatch.setattr(p2p, "FRAME_WRITE_TIMEOUT", 1.0)
    ledger = await funded_ledger(b"r42b-resumed", PAYER, PAYEE)
    served: collections.Counter[tuple[bytes, int]] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    async with (
        open_node(key=PAYEE, ledger=ledger, config=CONFIG) as payee,
        open_node(key=PAYER, ledger=ledger, config=CONFIG) as payer,
    ):

        async def handler(call: Call) -> bytes:
            served[(call.channel, call.n)] += 1
            if call.body.startswith(b"w"):
                return call.body
            return call.body * (262144 // len(call.body))

        payee.serve("svc", handler, price=PRICE)
        peer = payee.addrs[0]
        with trio.fail_after(20):
            ch = await payer.open_channel(peer, deposit=10**9)
            await payer.call(peer, "svc", b"warm", max_price=PRICE, timeout=10)
        (conn,) = payer.client._connections.values()
        raw = tcp_of(conn.stream)
        with socket_of(conn.stream) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

        async def call(body: bytes, timeout: float) -> None:
            try:
                await payer.call(peer, "svc", body, max_price=PRICE, timeout=timeout)
            except P2payError as exc:
                kinds[type(exc).__name__] += 1
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                kinds["ok"] += 1

        with trio.fail_after(60):
            await raw.read_lock.acquire()  # paused: reads no more TCP
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(call, b"s%03d" % i, 3)
                await trio.sleep(4)  # past the payee's frame bound: it closed the connection
                raw.read_lock.release()  # resumed
            await trio.sleep(gap)
            before = dict(kinds)
            kinds.clear()
            errors.clear()
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(call, b"r%03d" % i, 10)
        print("stalled", before, "resumed", dict(kinds), errors)
        assert kinds["ok"] == 8, errors
        assert max(served.values()) == 1
        with trio.fail_after(60):
            await redeliver_awaiting(payer, each=20)
        assert payee.payee_channels[ch.channel].spent == payer.payer_channels[ch.channel].spent
        with trio.fail_after(30):
            await payer.close_channel(ch.channel)
    assert (await ledger.totals()).conserved
