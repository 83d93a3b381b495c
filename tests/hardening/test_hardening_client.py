"""What a payee can make an honest payer's client hold (protocol.md §5.4, §19.1): request
frames sent on a stream the payer opened. In memory; every wait is bounded."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import pytest
import trio

from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, ServiceTerms, blake2b256
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import Stream, StreamClosed
from p2pay.net.memory import PIPE_CAPACITY, MemoryNetwork, open_memory_transport
from p2pay.node import NodeConfig, open_node

EVIL = Keypair.from_seed(bytes([181]) * 32)  # the payee
HONEST = Keypair.from_seed(bytes([182]) * 32)  # the payer


def _evil_payee(
    ledger_id: bytes, frames: int, sent: list[int]
) -> Callable[[Stream], Awaitable[None]]:
    """A payee that answers the hello, then sends `frames` request frames and never reads."""
    frame = Request.create(
        EVIL,
        ledger=ledger_id,
        channel=blake2b256(b"evil"),
        n=1,
        paid=1,
        price=1,
        service="svc",
        body=b"",
        deadline=2**40,
    ).to_frame()

    async def handler(stream: Stream) -> None:
        try:
            await stream.receive()  # the payer's hello
            hello = Hello.create(
                EVIL,
                ledger=ledger_id,
                services=(ServiceTerms(name="svc", price=1, max_body=1024),),
                max_in_flight=8,
                max_frame=1 << 20,
                deadline_horizon=3_600_000,
            )
            await stream.send(hello.to_frame())
            for _ in range(frames):  # blocks once the payer stops reading
                await stream.send(frame)
                sent[0] += 1
            await trio.sleep(30)  # never reads
        except StreamClosed:
            pass

    return handler


async def _flooded(
    config: NodeConfig, frames: int, *, read_all: bool = False
) -> tuple[int, int, int, bool, float]:
    """Let the evil payee flood a payer of `config`: (answers queued in the payer's
    outbox, request frames the payer read, frames the payee got out, connection open,
    seconds the flood lasted). With `read_all`, wait (bounded) until the payer has read
    every frame, instead of until the payee's sends stop moving (issue 16: on a loaded
    machine a pause of 0.5 s is no proof that they are held back)."""
    network = MemoryNetwork()
    ledger = MemoryLedger(dev=True)
    sent = [0]
    handler = _evil_payee(ledger.ledger_id, frames, sent)
    async with (
        open_memory_transport(network, EVIL, handler) as transport,
        open_node(key=HONEST, ledger=ledger, network=network, config=config) as node,
    ):
        began = trio.current_time()
        with trio.fail_after(60):
            await node.connect(transport.addrs[0])
        if read_all:
            with trio.fail_after(120):  # a bound on a hang, generous for a loaded machine
                while node.counters.requests_from_payees < frames:
                    await trio.sleep(0.05)
        else:
            # until the payee sent everything, or its sends are held back (no progress in
            # 0.5 s); what is checked then (caps) holds whenever it stops
            with trio.move_on_after(8):
                last = -1
                while sent[0] < frames and sent[0] != last:
                    last = sent[0]
                    await trio.sleep(0.5)
            await trio.sleep(0.2)  # let the payer take what it can
        conns = list(node.client._connections.values())
        queued = max((len(c.outbox.items) for c in conns), default=0)
        read = node.counters.requests_from_payees
        return queued, read, sent[0], bool(conns), trio.current_time() - began


async def test_the_payer_answers_request_frames_within_its_refusal_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§19.1: the caller answers request frames with MALFORMED while its refusal budget
    (refusal_burst, refilled at max_refusals_per_s) lasts, then ignores them, unanswered;
    it reads them all, keeps the stream, and logs one warning for the stream."""
    config = NodeConfig(watcher=False, refusal_burst=20, max_refusals_per_s=1)
    frames = 500
    with caplog.at_level(logging.DEBUG, logger="p2pay.node"):
        queued, read, sent, open_, seconds = await _flooded(config, frames, read_all=True)
    assert (sent, read, open_) == (frames, frames, True)
    # the burst, and what the refill (1 a second) added meanwhile, however long that was
    assert queued <= 20 + math.ceil(seconds * config.max_refusals_per_s) + 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "requests go on a stream" in warnings[0].getMessage()


async def test_the_payer_stops_reading_while_max_outbox_answers_are_unsent() -> None:
    """§19.1: with a refusal budget above max_outbox, a payee that never reads finds the
    payer's reading paused once max_outbox answers wait to leave: the payer holds at
    most that many, and reads at most what the stream could carry besides."""
    max_outbox = 8
    config = NodeConfig(
        watcher=False, max_outbox=max_outbox, refusal_burst=10_000, max_refusals_per_s=1
    )
    frames = 10 * PIPE_CAPACITY
    queued, read, sent, open_, _seconds = await _flooded(config, frames)
    assert open_ and queued <= max_outbox
    # answers sent fill the payee's unread pipe; then max_outbox wait, and reading pauses
    assert read <= PIPE_CAPACITY + max_outbox + 1
    assert sent < frames  # the payee's own sends were held back
