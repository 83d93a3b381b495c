"""Attacks by a dishonest payee on an honest payer node's client side (issue 15: the
client as a pump of `ClientSession`), over libp2p on 127.0.0.1. Every wait is bounded."""

from __future__ import annotations

import os

import pytest
import trio

from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, ServiceTerms
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import Stream, StreamClosed
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import NodeConfig, open_node

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EVIL = Keypair.from_seed(bytes([171]) * 32)  # the payee
HONEST = Keypair.from_seed(bytes([172]) * 32)  # the payer
LEDGER_ID = b"p2pay:test:attack15-client"
FLOOD = 5_000


async def test_a_payee_flooding_requests_cannot_grow_the_payers_outbox_unbounded() -> None:
    """protocol.md §5.4: a caller answers a request frame with an unsigned MALFORMED
    naming it and keeps the stream; threat-model.md "Memory bound": what a peer can make
    a node hold is bounded (answers queued per stream at most ``max_outbox``, at which
    reading pauses). The client's read loop queues one refusal per request the payee
    sends and never waits for its outbox: a payee that sends requests and never reads
    makes the payer hold every refusal (measured: 17,200 queued of 20,000 sent)."""
    ledger = MemoryLedger(Params(ledger_id=LEDGER_ID, dev=True))
    await ledger.mint(HONEST, HONEST.public, 10**24)
    frame = Request.create(
        EVIL,
        ledger=LEDGER_ID,
        channel=os.urandom(32),
        n=1,
        paid=1,
        price=1,
        service="svc",
        body=b"",
        deadline=2**40,
    ).to_frame()
    flooded = trio.Event()

    async def evil(stream: Stream) -> None:
        try:
            await stream.receive()  # the payer's hello
            hello = Hello.create(
                EVIL,
                ledger=LEDGER_ID,
                services=(ServiceTerms(name="svc", price=1000, max_body=1024),),
                stake=None,
                max_in_flight=8,
                max_frame=1 << 20,
                deadline_horizon=3_600_000,
                settlement_key=EVIL,
            )
            await stream.send(hello.to_frame())
            with trio.move_on_after(20):
                for _ in range(FLOOD // 100):
                    await stream.send_many([frame] * 100)
        except StreamClosed:
            pass
        flooded.set()
        await trio.sleep(30)  # never reads

    config = NodeConfig(watcher=False)
    outboxes: list[int] = []
    async with open_libp2p_transport(EVIL, evil) as transport:
        addr = transport.addrs[0]
        async with open_node(key=HONEST, ledger=ledger, config=config) as node:
            await node.open_channel(addr, deposit=10**9, challenge_ms=120_000)
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    try:
                        await node.call(addr, "svc", b"hi", max_price=1000, timeout=30)
                    except Exception:  # the payee never answers: a timeout or lost stream
                        pass

                nursery.start_soon(call)
                with trio.fail_after(40):
                    await flooded.wait()
                await trio.sleep(0.5)
                outboxes = [len(c.outbox.items) for c in node.client._connections.values()]
                nursery.cancel_scope.cancel()
    assert outboxes, "the payer's connection to the payee was open"
    assert max(outboxes) <= config.max_outbox, (
        f"the payer queued {max(outboxes)} refusals for the payee (max_outbox {config.max_outbox})"
    )
