"""A payee forging receipt signatures against the receipt sample (protocol.md 14.4), on the
paths besides a call's own answer: the watcher's re-delivery before it claims (claims.md 6,
`Node.redeliver`) and a late answer after the call gave up.

BOB is a fake provider speaking raw frames on the memory transport. It stays silent when a
request first comes (ALICE's call times out: the request is on record, claimable), then
answers it, late or when it is sent again, with an OK receipt whose money rules all hold
but which carries another key's signature. ALICE samples receipts with a huge
``receipt_check_every``, so an answer left to the draw is (all but) never checked: what is
checked here is checked whatever the draw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hardening_support import ALICE, BOB, MALLORY, PRICE, TOKEN, answer_hello_as_bob, make_ledger

from p2pay.core.messages import Request, Response, decode_frame
from p2pay.net.base import StreamClosed
from p2pay.net.memory import MemoryNetwork, memory_addr, open_memory_transport
from p2pay.node import CallTimeout, Node, NodeConfig, open_node

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NEVER_DRAWN = 10**9


@asynccontextmanager
async def forger(*, late: bool) -> AsyncIterator[tuple[Node, bytes, trio.Event]]:
    """BOB: silent at a request's first delivery; then its forged receipt, on the same
    stream once the event yielded is set (`late`), or when the same request comes again."""
    network = MemoryNetwork()
    ledger = make_ledger()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    seen: set[bytes] = set()
    release = trio.Event()

    def forged(request: Request) -> bytes:
        good = Response.create(
            BOB, request=request, status="OK", price=PRICE, spent=PRICE, body=request.body
        )
        return good.with_signature(MALLORY.sign(good.signing_bytes)).to_frame()

    async def serve(stream: Any) -> None:
        await answer_hello_as_bob(stream, ledger.ledger_id)
        while True:
            try:
                request = decode_frame(await stream.receive())
            except StreamClosed:
                return
            assert isinstance(request, Request)
            if request.hash in seen:
                await stream.send(forged(request))  # "stored", served again
            elif late:
                seen.add(request.hash)
                await release.wait()  # after ALICE's call gave up
                await stream.send(forged(request))
            else:
                seen.add(request.hash)  # silent

    config = NodeConfig(watcher=False, default_timeout=0.2, receipt_check_every=NEVER_DRAWN)
    async with (
        open_memory_transport(network, BOB, serve),
        open_node(key=ALICE, ledger=ledger, network=network, config=config) as alice,
    ):
        info = await alice.open_channel(memory_addr(str(BOB.peer_id)), deposit=10**6)
        yield alice, info.channel, release


async def test_a_forged_receipt_served_at_re_delivery_is_refused_the_request_claimable() -> None:
    async with forger(late=False) as (alice, channel, _):
        with trio.fail_after(10):
            with pytest.raises(CallTimeout):
                await alice.call(memory_addr(str(BOB.peer_id)), "echo", b"hi", max_price=PRICE)
            (record,) = await alice.store.requests(state="awaiting")
            # the watcher's step before a claim (claims.md 6): the same signed request again
            answer = await alice.redeliver(record, timeout=2.0)
        # a forged receipt is no signed answer: the claim is still to be filed
        assert answer is None
        assert [r.request_hash for r in await alice.store.requests(state="awaiting")] == [
            record.request_hash
        ]
        ch = alice.payer_channels[channel]
        assert ch.spent == 0 and list(ch.abandoned) == [record.n]
        assert alice.counters.protocol_violations == 1


async def test_a_forged_receipt_answering_late_is_refused() -> None:
    async with forger(late=True) as (alice, channel, release):
        ch = alice.payer_channels[channel]
        with trio.fail_after(10):
            with pytest.raises(CallTimeout):
                await alice.call(memory_addr(str(BOB.peer_id)), "echo", b"hi", max_price=PRICE)
            assert list(ch.abandoned) == [1]
            release.set()
            while ch.abandoned and not alice.counters.protocol_violations:  # the late answer
                await trio.sleep(0.05)
        await alice.persister.flush()
        assert ch.spent == 0 and list(ch.abandoned) == [1]
        (record,) = await alice.store.requests(state="awaiting")
        assert record.n == 1
