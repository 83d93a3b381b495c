"""A payer node's channel state across a plain restart (its store intact): what §14.2 says
the payer keeps per channel must survive it, or the payer's receipt check (§14.3) gives
another verdict after the restart than before. Over libp2p on 127.0.0.1, a scripted
honest payee; every wait bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, Response, ServiceTerms, decode_frame
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import Stream, StreamClosed
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import CallTimeout, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PAYEE = Keypair.from_seed(bytes([181]) * 32)
PAYER = Keypair.from_seed(bytes([182]) * 32)
LEDGER_ID = b"p2pay:test:attack15-restart"
PRICE = 1000


async def test_payer_restart_keeps_absorbed_so_an_honest_stored_receipt_is_accepted(
    tmp_path: Path,
) -> None:
    """protocol.md §14.2: per channel the payer keeps ``last_n``, ``paid``, ``spent``, the
    requests in flight and abandoned, ``released``, ``forgotten`` and the jumps already
    absorbed; §14.3 rule 8: a stored receipt the payee serves again (spent at or below
    ours, price within ``absorbed``) is accepted. The node persists only ``last_n``,
    ``paid`` and ``spent`` (and the unanswered requests): after a restart ``absorbed``,
    ``released`` and ``forgotten`` are 0. Here r1 was served and charged but its receipt
    lost (abandoned), r2's receipt jumped ``spent`` by r1's price (absorbed), and r1's
    stored receipt, re-delivered before a claim (claims.md 6), is accepted without a
    restart but rejected after one: an honest payee is judged faulty, r1 stays claimable,
    and ``outstanding`` counts r1's price twice (in ``spent`` and as abandoned)."""
    ledger = MemoryLedger(Params(ledger_id=LEDGER_ID, dev=True))
    await ledger.mint(PAYER, PAYER.public, 10**24)
    stored: dict[int, bytes] = {}
    charged = 0

    async def honest_payee(stream: Stream) -> None:
        nonlocal charged
        try:
            await stream.receive()
            hello = Hello.create(
                PAYEE,
                ledger=LEDGER_ID,
                services=(ServiceTerms(name="svc", price=PRICE, max_body=1024),),
                stake=None,
                max_in_flight=8,
                max_frame=1 << 20,
                deadline_horizon=3_600_000,
                settlement_key=PAYEE,
            )
            await stream.send(hello.to_frame())
            while True:
                frame = decode_frame(await stream.receive())
                if not isinstance(frame, Request):
                    continue
                if frame.n in stored:  # re-sent: the stored answer, byte for byte (13.5)
                    await stream.send(stored[frame.n])
                    continue
                charged += frame.price
                answer = Response.create(
                    PAYEE, request=frame, status="OK", price=frame.price, spent=charged, body=b"ok"
                ).to_frame()
                stored[frame.n] = answer
                if frame.n != 1:  # r1's receipt is lost in the network
                    await stream.send(answer)
        except StreamClosed:
            return

    path = tmp_path / "payer.sqlite"
    config = NodeConfig(watcher=False)
    async with open_libp2p_transport(PAYEE, honest_payee) as transport:
        addr = transport.addrs[0]
        with trio.fail_after(60):
            store = await SqliteStore.open(path)
            async with open_node(key=PAYER, ledger=ledger, store=store, config=config) as node:
                await node.open_channel(addr, deposit=10**9, challenge_ms=120_000)
                with pytest.raises(CallTimeout):
                    await node.call(addr, "svc", b"r1", max_price=PRICE, timeout=1)
                result = await node.call(addr, "svc", b"r2", max_price=PRICE, timeout=5)
                assert result.spent == 2 * PRICE  # r1's charge explained as a jump
                (ch,) = node.payer_channels.values()
                assert ch.absorbed == PRICE and list(ch.abandoned) == [1]
                before = ch.outstanding
            await store.aclose()
            store = await SqliteStore.open(path)
            try:
                async with open_node(key=PAYER, ledger=ledger, store=store, config=config) as node:
                    (ch,) = node.payer_channels.values()
                    after = ch.outstanding
                    r1 = ch.abandoned[1].request
                    # a restarted node knows no peer addresses: give it the payee's, as an
                    # operator (or peer routing) would; else the re-send cannot leave at all
                    await node.connect(addr)
                    receipt = await node.resend_request(r1, timeout=5)
            finally:
                await store.aclose()
    assert after == before, f"outstanding {before} before the restart, {after} after"
    assert receipt is not None, "the honest payee's stored receipt for r1 was rejected"
