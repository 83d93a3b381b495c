"""Attack round 39: a request re-sent first on a new stream (`Client._resend_lost_first`)
whose copy is lost in turn, with that stream, before its call took it, is re-sent no more
before anything new: it goes after a newer request of its channel, the payee answers it
REPLAY (protocol.md 13.2 check 5) and the call ends RequestInDoubt, though nothing was
wrong on either side (round 38's limit, back behind a second drop).

A call is on its way to an honest payee when the connection drops (the payee never reads
it). Before its task gets to re-send (a scheduling race: the test holds `_resend_lost` of
that call until then), a call made meanwhile opens a new stream, on which the lost request
is re-sent first, then the newer one: that stream drops too before the payee reads either.
The copy carried no mark of its call still waiting (`_Slot.waiting`), so the stream's end
hands on only the newer request: the third stream re-sends it first, serves it, and the
lost call's request comes after it. On 2756bc9 the lost call ends RequestInDoubt; the
payer should re-send it first on the third stream as on the second and have both served.

No timing assertion: the lost call's task is held on an event until the other call is
answered, the frames' latency only keeps the requests on the wire while a connection
drops, and every wait is bounded.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from node_support import (
    call_outcome,
    drop_under_a_call,
    funded_ledger,
    hold_resends,
    paying_pair,
    wait_until,
)

from p2pay.core.identity import Keypair
from p2pay.node import NodeConfig

PAYER = Keypair.from_seed(bytes([91]) * 32)
PAYEE = Keypair.from_seed(bytes([92]) * 32)
PRICE = 1_000
#: the watcher files claims (none is due here: every request is served)
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, claim_grace_ms=50, redeem_threshold=10**30
)
TIMEOUT = 8.0  # the calls' timeout


async def test_a_copy_lost_with_its_stream_goes_first_again() -> None:
    ledger = await funded_ledger(
        b"r39-copy-lost-again", PAYER, PAYEE, claim_bond=10**18, max_deadline_horizon_ms=120_000
    )
    async with paying_pair(ledger, PAYER, PAYEE, config=CONFIG, price=PRICE, staked=True) as pair:
        payer, payee, peer, net = pair.payer, pair.payee, pair.payee.peer_id, pair.net
        client = payer.client
        outcomes: dict[bytes, str] = {}
        gate = trio.Event()
        hold_resends(payer, gate, body=b"lost")  # after the other call
        first = client._resend_lost_first
        streams: list[Any] = []

        def on_new_stream(conn: Any) -> None:
            streams.append(conn)
            if len(streams) == 1:
                # the second stream: what goes on it stays on the wire until it drops
                net.set_latency(lambda src, dst: 30.0 if src == payer.peer_id else 0.0)
            first(conn)

        client._resend_lost_first = on_new_stream  # type: ignore[method-assign]

        def call(body: bytes) -> Callable[[], Awaitable[None]]:
            return functools.partial(
                call_outcome, outcomes, payer, peer, "echo", body, price=PRICE, timeout=TIMEOUT
            )

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                start = functools.partial(nursery.start_soon, call(b"lost"))
                await drop_under_a_call(net, payer, peer, start)
                nursery.start_soon(call(b"meanwhile"))  # a call made meanwhile: new stream
                await wait_until(lambda: len(streams) == 1 and len(streams[0].pending) == 2)
                second = streams[0]
                net.set_latency(None)
                net.disconnect(payer.peer_id)  # the second stream drops: neither was read
                await wait_until(lambda: second.closed)
                await wait_until(lambda: b"meanwhile" in outcomes)
                gate.set()
        assert outcomes == {b"lost": "ok", b"meanwhile": "ok"}, outcomes
        mine = payer.payer_channels[pair.channel]
        assert not mine.in_flight and not mine.abandoned  # nothing left to claim
        assert payee.payee_channels[pair.channel].spent == 2 * PRICE  # each charged once
        assert mine.paid == 2 * PRICE
        assert await ledger.claims_of(PAYER.account) == []
