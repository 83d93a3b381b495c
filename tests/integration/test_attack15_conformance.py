"""Attacks on the conformance tester by a malicious target (issue 15 item 4), over libp2p
on 127.0.0.1. The tester drives an implementation nobody vouches for: whatever the target
does, the tester must not lose money beyond what its requests could honestly cost, and
must not let the target fill its memory.

Every wait is bounded (`trio.fail_after` around each run, the tester's own timeouts).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from p2pay.conformance import run_conformance
from p2pay.conformance.probe import open_probe
from p2pay.core.errors import ErrorCode, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Refusal, Request, ServiceTerms, decode_frame
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import Stream, StreamClosed
from p2pay.net.p2p import Libp2pStream, open_libp2p_transport

TARGET = Keypair.from_seed(bytes([151]) * 32)
PAYER = Keypair.from_seed(bytes([152]) * 32)
LEDGER_ID = b"p2pay:test:attack15"
TOKEN = 10**24
RUN_BOUND = 90.0


def target_hello(price: int) -> bytes:
    return Hello.create(
        TARGET,
        ledger=LEDGER_ID,
        services=(ServiceTerms(name="svc", price=price, max_body=1024),),
        stake=None,
        max_in_flight=4,
        max_frame=1 << 20,
        deadline_horizon=3_600_000,
        settlement_key=TARGET,
    ).to_frame()


@asynccontextmanager
async def target(handler: Callable[[Stream], Awaitable[None]]) -> AsyncIterator[str]:
    async with open_libp2p_transport(TARGET, handler) as transport:
        yield transport.addrs[0]


async def test_conformance_over_deposit_case_does_not_hand_the_target_the_whole_deposit() -> None:
    """protocol.md §14.2 / §13.1 step 2: a payer MUST NOT send a request whose `paid`
    exceeds the deposit; settlement.md Redeem pays `min(paid, deposit)` for a payer-signed
    voucher. The case ``paid.over-deposit`` signs and sends a valid voucher with
    ``paid = deposit + 1``: a target that keeps it redeems the tester's entire deposit
    (576 prices, the price being the target's own). An unsigned refusal of one request
    may cost the payer that request's price (the accepted residual risk), never more."""
    ledger = MemoryLedger(Params(ledger_id=LEDGER_ID, dev=True))
    await ledger.mint(PAYER, PAYER.account, 1000 * TOKEN)
    price = 10**18
    kept: list[Request] = []

    async def keep_everything(stream: Stream) -> None:
        try:
            await stream.receive()
            await stream.send(target_hello(price))
            while True:
                frame = decode_frame(await stream.receive())
                if isinstance(frame, Request):
                    kept.append(frame)
                    await stream.send(
                        Refusal(
                            channel=frame.channel,
                            n=frame.n,
                            code=ErrorCode.INSUFFICIENT_DEPOSIT,
                            message="",
                            details={"deposit": 0, "paid_max": 0, "spent": 0},
                        ).to_frame()
                    )
        except StreamClosed:
            return

    async with target(keep_everything) as addr:
        with trio.fail_after(RUN_BOUND):
            await run_conformance(
                addr,
                payer=PAYER,
                ledger=ledger,
                patterns=["paid.over-deposit"],
                timeout=2.0,
                close_channel=False,
            )
    signed = [r for r in kept if r.verify(PAYER.account)]
    assert signed, "the case sent the payer's request"
    best = max(signed, key=lambda r: r.paid)
    channel = await ledger.channel(best.channel)
    assert channel is not None
    taken = await ledger.redeem(TARGET, best)
    assert taken <= price, (
        f"the target redeemed {taken} yocto of the tester's deposit {channel.deposit} "
        f"for one refused request priced {price}"
    )


async def test_conformance_probe_does_not_queue_unbounded_frames_from_the_target() -> None:
    """threat-model.md, Limits: every buffer a peer can fill is bounded. The tester's
    `Probe` reads the target's frames into an unbounded queue while a case waits (e.g. on
    a send the target does not read): a target streaming frames fills the tester's memory
    until the case's bound (``timeout * 8 + 10`` s; ``--timeout`` up to 120 s). A bounded
    reader stops reading (backpressure) once a few frames are waiting."""
    junk = Refusal(
        channel=os.urandom(32), n=1, code=ErrorCode.MALFORMED, message="x" * 2000
    ).to_frame()
    pushed = 0

    async def flood(stream: Stream) -> None:
        nonlocal pushed
        try:
            with trio.move_on_after(10):
                while pushed < 2000:
                    await stream.send_many([junk] * 50)
                    pushed += 50
        except StreamClosed:
            return

    tester = Keypair.from_seed(os.urandom(32))

    async def refuse(stream: Stream) -> None:
        await stream.reset()

    async with target(flood) as addr, open_libp2p_transport(tester, refuse) as transport:
        with trio.fail_after(RUN_BOUND):
            raw = await transport.connect(addr)
            assert isinstance(raw, Libp2pStream)
            async with open_probe(raw, 5.0) as probe:
                # the case is busy elsewhere (e.g. a blocked send): nobody calls next()
                with trio.move_on_after(5):
                    while pushed < 2000:
                        await trio.sleep(0.1)
                await trio.sleep(0.5)
                queued = probe._queue.statistics().current_buffer_used
    assert queued <= 64, (
        f"the probe holds {queued} unread frames ({queued * len(junk)} bytes) that the "
        f"target pushed (of {pushed})"
    )


async def test_conformance_does_not_fail_a_target_announcing_the_largest_max_frame() -> None:
    """protocol.md §19: ``max_frame`` is any integer in [4096, 2**64 - 1]; §5.2: a length
    prefix has at most 9 bytes (a length below 2**63). For a target announcing
    ``max_frame >= 2**63`` no frame is too large for it, so ``frame.too-large`` cannot be
    run and must SKIP; the tester instead crashes in its own encoder and reports the
    target as FAIL ("a uvarint is an int in [0, 2**63)")."""

    async def huge_limits(stream: Stream) -> None:
        try:
            await stream.receive()
            hello = Hello.create(
                TARGET,
                ledger=LEDGER_ID,
                services=(),
                stake=None,
                max_in_flight=1,
                max_frame=2**64 - 1,
                deadline_horizon=3_600_000,
                settlement_key=TARGET,
            )
            await stream.send(hello.to_frame())
            await stream.receive()
        except (StreamClosed, RemoteProtocolError):
            return

    async with target(huge_limits) as addr:
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(
                addr, ledger_id=LEDGER_ID, patterns=["frame.too-large"], timeout=2.0
            )
    (result,) = report.results
    assert result.status != "FAIL", result.reason
