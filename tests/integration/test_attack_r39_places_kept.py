"""Attack round 39 (a property that holds, kept as a regression test): the places a new
stream's re-sent copies take among ``max_in_flight`` (`Client._resend_lost_first`) all come
back, whichever way the lost call leaves: cancelled before it took its copy, timed out
waiting for it, or served by it; and never more than ``max_in_flight`` come back (no
over-release: `trio.Semaphore` has no ``max_value`` here, so one would let the payer send
more than the payee takes).

A call is on its way to an honest payee (``max_in_flight`` 2) when the connection drops
(the payee never reads it); a call made meanwhile opens the new stream, on which the lost
request is re-sent first. No timing assertion: the lost call's task is held on an event,
the handler on another, and every wait is bounded.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import pytest
import trio
from node_support import (
    call_outcome,
    drop_under_a_call,
    funded_ledger,
    hold_resends,
    wait_until,
)

from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([95]) * 32)
PAYEE = Keypair.from_seed(bytes([96]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, auto_claim=False, redeem_threshold=10**30
)
PLACES = 2


@pytest.mark.parametrize("how", ["cancelled", "served", "timed out"])
async def test_the_places_of_re_sent_copies_come_back(how: str) -> None:
    ledger = await funded_ledger(
        b"r39-places-" + how.encode(), PAYER, PAYEE, max_deadline_horizon_ms=120_000
    )
    net = MemoryNetwork()
    release = trio.Event()

    async def held(call: Call) -> bytes:
        if call.body == b"lost" and how == "timed out":
            await trio.sleep_forever()  # bounded by the call's timeout and the test's
        await release.wait()
        return call.body

    payee_config = NodeConfig(
        watch_interval=0.05, min_challenge_ms=50, max_in_flight=PLACES, redeem_threshold=10**30
    )
    async with (
        open_node(key=PAYEE, ledger=ledger, network=net, config=payee_config) as payee,
        open_node(key=PAYER, ledger=ledger, network=net, config=CONFIG) as payer,
    ):
        payee.serve("held", held, price=PRICE)
        await payer.open_channel(payee.addrs[0], deposit=10**9)
        peer = payee.peer_id
        client = payer.client
        outcomes: dict[bytes, str] = {}
        gate = trio.Event()
        hold_resends(payer, gate, body=b"lost")

        def call(body: bytes, timeout: float) -> Callable[[], Awaitable[None]]:
            return functools.partial(
                call_outcome, outcomes, payer, peer, "held", body, price=PRICE, timeout=timeout
            )

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                lost_scope = trio.CancelScope()

                async def lost_call() -> None:
                    with lost_scope:
                        await call(b"lost", 3.0 if how == "timed out" else 60.0)()

                await drop_under_a_call(net, payer, peer, lambda: nursery.start_soon(lost_call))
                nursery.start_soon(call(b"meanwhile", 60.0))
                await wait_until(lambda: peer in payer._connections)
                new = payer._connections[peer]
                await wait_until(lambda: len(new.pending) == 2)  # the copy, then the newer
                assert new.slots.value == 0
                if how == "cancelled":
                    lost_scope.cancel()
                    await wait_until(lambda: len(new.pending) == 1)
                gate.set()
                release.set()
        assert outcomes.get(b"meanwhile") == "ok", outcomes
        if how == "served":
            assert outcomes.get(b"lost") == "ok", outcomes
        elif how == "timed out":
            assert outcomes.get(b"lost", "").startswith("CallTimeout"), outcomes
        assert payer._connections[peer] is new and not new.pending
        assert new.slots.value == PLACES
        assert client._lost == {}
