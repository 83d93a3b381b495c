"""Attack round 38: a call whose stream ended re-sends its request on the new stream
without taking a place among the payee's ``max_in_flight`` (protocol.md 9 rule 5: a payer
keeps at most ``max_in_flight`` requests unanswered on a stream).

A call is on its way to an honest payee that takes one request at a time
(``max_in_flight`` 1) when the connection drops: the payee never read it. The call re-sends
it on the new stream (`Client._resend_lost`, c21fd25) while a call made meanwhile holds
the new stream's only place: two requests unanswered where the payee takes one, and the
payee refuses one OVERLOADED (check 0'). A call of an honest payer to an honest payee fails
for nothing either did; when the refused one is the re-sent request, it stays abandoned
and is claimed after its deadline (a bond locked, gas on both sides). On 6845e6b one of the
two calls fails OVERLOADED; a re-send that waits for a place as every call does has both
served.

No timing assertion: the handler holds until one request was refused or the other waits
for the place, the frames' latency only keeps the first request on the wire while the
connection drops, and every wait is bounded.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio
from node_support import call_outcome, drop_under_a_call, funded_ledger, wait_until

from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([81]) * 32)
PAYEE = Keypair.from_seed(bytes([82]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, auto_claim=False, redeem_threshold=10**30
)


async def test_a_resend_after_a_lost_stream_keeps_within_max_in_flight() -> None:
    ledger = await funded_ledger(
        b"r38-resend-in-flight", PAYER, PAYEE, claim_bond=10**18, max_deadline_horizon_ms=120_000
    )
    net = MemoryNetwork()
    release = trio.Event()
    started: list[bytes] = []

    async def held(call: Call) -> bytes:
        started.append(call.body)
        await release.wait()
        return call.body

    payee_config = NodeConfig(
        watch_interval=0.05, min_challenge_ms=50, max_in_flight=1, redeem_threshold=10**30
    )
    async with (
        open_node(key=PAYEE, ledger=ledger, network=net, config=payee_config) as payee,
        open_node(key=PAYER, ledger=ledger, network=net, config=CONFIG) as payer,
    ):
        payee.serve("held", held, price=PRICE)
        await payer.open_channel(payee.addrs[0], deposit=10**9)
        peer = payee.peer_id
        outcomes: dict[bytes, str] = {}

        def call(body: bytes) -> Callable[[], Awaitable[None]]:
            return functools.partial(
                call_outcome, outcomes, payer, peer, "held", body, price=PRICE, timeout=60
            )

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await drop_under_a_call(net, payer, peer, lambda: nursery.start_soon(call(b"lost")))
                nursery.start_soon(call(b"meanwhile"))  # a call made meanwhile: new stream
                await wait_until(lambda: peer in payer._connections)
                new = payer._connections[peer]

                def decided() -> bool:
                    # one refused (over the payee's limit), or one served and the other
                    # waiting for the stream's only place
                    waiting = new.slots.statistics().tasks_waiting
                    return bool(outcomes) or (len(started) == 1 and waiting >= 1)

                await wait_until(decided)
                release.set()
        assert outcomes == {b"lost": "ok", b"meanwhile": "ok"}, outcomes
