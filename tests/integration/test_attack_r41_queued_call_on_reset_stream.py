"""Attack round 41: a call queued for a place on a stream that the provider resets fails
with ConnectionLost ("connection ... is closed") although nothing of it was ever sent and
the provider is reachable: the calls in flight on that stream are re-sent on a new one
(`Client._resend_lost_first`), but a call still waiting for a place among the old
stream's ``max_in_flight`` took that place once a lost call gave it back, found the
stream closed and ended, never trying the new stream.

Real py-libp2p nodes on 127.0.0.1. The payee takes one request in flight per stream
(``max_in_flight=1``); call A is in flight and held by its handler, call B waits for the
place; the payee resets its inbound stream (as an idle reset racing a request, or a
hostile provider, does). Reproduced with a tiny idle_timeout and bursts of calls over
max_in_flight by /work/r41wt/attack/idle_race.py (1-4 % of the calls failed so). B must
be served on a new stream, charged once; A ends with a typed error or its answer.

The second test holds A's re-send (`hold_resends`) until B has ended: B went on only
once A's call gave back its place on the stream that ended, which it did only after its
re-send was answered (a re-send its provider holds: B waited for it, past B's timeout).
Every wait bounded; no timing assertion.
"""

from __future__ import annotations

import trio
from node_support import funded_ledger, hold_resends, wait_until

from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([141]) * 32)
PAYEE = Keypair.from_seed(bytes([142]) * 32)
PRICE = 1_000
BASE = {
    "watch_interval": 0.05,
    "min_challenge_ms": 50,
    "auto_claim": False,
    "redeem_threshold": 10**30,
}


async def queued_call_on_reset_stream(name: bytes, *, hold: bool) -> None:
    """A in flight, B waiting for its place, the payee resets the stream: B is served on a
    new stream (and ends before A's re-send is let go, if `hold`)."""
    ledger = await funded_ledger(name, PAYER, PAYEE)
    started = trio.Event()
    served: list[bytes] = []

    async def handler(call: Call) -> bytes:
        served.append(call.body)
        if call.body == b"A" and not started.is_set():
            started.set()
            await trio.sleep_forever()  # cancelled when its stream is reset
        return call.body

    outcomes: dict[bytes, str] = {}
    async with (
        open_node(key=PAYEE, ledger=ledger, config=NodeConfig(max_in_flight=1, **BASE)) as payee,
        open_node(key=PAYER, ledger=ledger, config=NodeConfig(**BASE)) as payer,
    ):
        payee.serve("svc", handler, price=PRICE)
        gate = trio.Event()
        if hold:
            hold_resends(payer, gate, body=b"A")
        ch = await payer.open_channel(payee.addrs[0], deposit=10**9)
        peer = payee.addrs[0]

        async def call(body: bytes) -> None:
            try:
                result = await payer.call(peer, "svc", body, max_price=PRICE, timeout=20)
            except P2payError as exc:
                outcomes[body] = f"{type(exc).__name__}: {exc}"
            else:
                outcomes[body] = "ok" if result.body == body else "wrong body"

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, b"A")
                await started.wait()
                nursery.start_soon(call, b"B")
                old = payer.client._connections[payee.peer_id]
                await wait_until(lambda: old.slots.statistics().tasks_waiting == 1)
                for session in list(payee._live):  # the provider resets the stream
                    await session.stream.reset()
                await wait_until(lambda: b"B" in outcomes, timeout=40)
                gate.set()
        print(outcomes, served)
        assert outcomes[b"B"] == "ok", outcomes
        assert served.count(b"B") == 1
        assert not payer.client._lost
        charged = PRICE * list(outcomes.values()).count("ok")
        assert payer.counters.paid == charged
        assert payee.payee_channels[ch.channel].spent == charged
        assert payer.payer_channels[ch.channel].spent == charged
        await payer.close_channel(ch.channel)
    assert (await ledger.totals()).conserved


async def test_a_call_queued_for_a_place_goes_on_the_new_stream() -> None:
    await queued_call_on_reset_stream(b"r41-queued", hold=False)


async def test_a_queued_call_does_not_wait_for_a_lost_call_to_be_answered_again() -> None:
    await queued_call_on_reset_stream(b"r41-queued-held", hold=True)
