"""Attack round 42b, a property that held (no defect shown by this test): a real
`p2pay node run` provider (its own OS process, libp2p on 127.0.0.1, the world's SQLite
dev ledger) shutting down (SIGTERM) beside a library payer that stopped reading TCP
while the provider had many large answers to send it (the payer's raw read lock is
held and its socket's receive buffer shrunk, so the provider's socket towards it fills).

The provider exits by itself (measured 2.7 s, before 0f89781 4.3 s; four such payers
at once: 2.7 s), and its store agrees with the payer: after a restart on the same
address, the payer delivers its awaiting requests again (answered from the provider's
store), and its channel spent then equals the provider's (``p2pay channel list``).
Bounded waits; no timing assertion.
"""

from __future__ import annotations

import collections
import signal
import socket
import time
from pathlib import Path
from typing import Any

import trio
from cli_raw_payer import MALLORY, PAYER_CONFIG, PRICE, fund_payer, restartable
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    nodes,
    world,
)

from p2pay.core.errors import P2payError
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.node import open_node
from tests.integration.node_support import socket_of, tcp_of

BIG = '''
async def big(call):
    """Honest: answers 256 KiB (a body starting with "w": itself)."""
    if bytes(call.body).startswith(b"w"):
        return bytes(call.body)
    return bytes(call.body) * (262144 // max(1, len(call.body)))
'''
CALLS = 24


def test_sigterm_beside_a_stalled_peer_exits_and_keeps_the_store(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    fund_payer(d, c, node="min_challenge_ms = 1000\n")
    (d / "bigsvc.py").write_text(BIG)
    start = restartable(d, nodes, f"big={PRICE}:bigsvc:big")

    node = start()
    figures: dict[str, Any] = {}  # (printed, for the record: not asserted on)

    async def run() -> tuple[int, bytes]:
        nonlocal node
        ledger = await SqliteLedger.open(str(d / "ledger.sqlite"))
        kinds: collections.Counter[str] = collections.Counter()
        try:
            async with open_node(key=MALLORY, ledger=ledger, config=PAYER_CONFIG) as payer:
                addr = node.addr
                with trio.fail_after(30):
                    ch = await payer.open_channel(addr, deposit=10**9, challenge_ms=1000)
                    await payer.call(addr, "big", b"warm", max_price=PRICE, timeout=10)
                (conn,) = payer.client._connections.values()
                raw = tcp_of(conn.stream)
                # the payer reads no more TCP, and its kernel takes little more: the
                # provider's answers fill its socket towards the payer (not only the yamux
                # window of the stream)
                with socket_of(conn.stream) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                lock = raw.read_lock
                await lock.acquire()

                async def call(i: int) -> None:
                    try:
                        await payer.call(addr, "big", b"%04d" % i, max_price=PRICE, timeout=8)
                    except P2payError as exc:
                        kinds[type(exc).__name__] += 1
                    else:
                        kinds["ok"] += 1

                async with trio.open_nursery() as nursery:
                    for i in range(CALLS):
                        nursery.start_soon(call, i)
                    await trio.sleep(3)  # the provider's answers fill the socket
                    began = time.monotonic()
                    code = await trio.to_thread.run_sync(node.stop, signal.SIGTERM)
                    figures["shutdown_s"] = time.monotonic() - began
                    figures["code"] = code
                lock.release()
                figures["kinds"] = dict(kinds)
                # the provider again on the same address: the payer's awaiting requests
                # are delivered again and answered from its store
                node = await trio.to_thread.run_sync(start)
                await payer.persister.flush()
                with trio.fail_after(60):
                    for record in await payer.store.requests(state="awaiting"):
                        with trio.move_on_after(10):
                            while await payer.redeliver(record, timeout=10) is None:
                                await trio.sleep(0.2)
                return payer.payer_channels[ch.channel].spent, ch.channel
        finally:
            await ledger.aclose()

    spent, channel = trio.run(run)
    print(figures, "payer spent", spent)
    # exited by itself on SIGTERM (Node.stop kills after 20 s: then no code of its own)
    assert figures["code"] in (0, -signal.SIGTERM, 128 + signal.SIGTERM), figures
    assert node.stop() == 0
    rows = c.js("--home", "p", "channel", "list")["channels"]
    (row,) = [r for r in rows if r["channel"] == channel.hex()]
    assert row["spent"] == str(spent), (row, spent, figures)
