"""Attack round 38: a call whose stream ended re-sent its request on the new stream after
a newer request of the same channel went there (`Client._resend_lost`): the payee, which
never read it, answered it REPLAY (its number at or below the channel's ``last_n`` by then,
protocol.md 13.2 check 5), the call re-sent it once more (REPLAY again) and ended
RequestInDoubt, though nothing was wrong on either side; only a claim, at a bond locked
until it ended, settled it. On 1bf27fe the lost call ends RequestInDoubt.

Now the new stream re-sends the requests its peer's last stream left unanswered while
their calls waited before anything else goes on it (`Client._resend_lost_first`,
protocol.md 13.1 step 4): both calls are served on it, each request charged once, nothing
left to claim.

A call is on its way to an honest payee when the connection drops (the payee never reads
it). Before its task gets to re-send (a scheduling race on any node: here the test holds
`_resend_lost` until then), a call made meanwhile goes on the new stream.

No timing assertion: the lost call's task is held on an event until the other call is
answered, the frames' latency only keeps the first request on the wire while the
connection drops, and every wait is bounded.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from node_support import call_outcome, drop_under_a_call, funded_ledger, wait_until

from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([83]) * 32)
PAYEE = Keypair.from_seed(bytes([84]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, claim_grace_ms=50, redeem_threshold=10**30
)
STAKE, PENALTY = 10**20, 10**19
TIMEOUT = 8.0  # the calls' timeout


async def test_a_request_lost_with_its_stream_goes_before_a_newer_one() -> None:
    ledger = await funded_ledger(
        b"r38-resend-after-newer", PAYER, PAYEE, claim_bond=10**18, max_deadline_horizon_ms=120_000
    )
    net = MemoryNetwork()

    async def echo(call: Call) -> bytes:
        return call.body

    async with (
        open_node(key=PAYEE, ledger=ledger, network=net, config=CONFIG) as payee,
        open_node(key=PAYER, ledger=ledger, network=net, config=CONFIG) as payer,
    ):
        payee.serve("echo", echo, price=PRICE)
        await payee.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await payer.open_channel(payee.addrs[0], deposit=10**9)
        peer = payee.peer_id
        outcomes: dict[bytes, str] = {}
        gate = trio.Event()
        resend_lost = payer.client._resend_lost

        async def late_resend(*args: Any) -> Any:
            await gate.wait()  # the lost call's task is scheduled after the other call
            return await resend_lost(*args)

        payer.client._resend_lost = late_resend  # type: ignore[method-assign]

        def call(body: bytes) -> Callable[[], Awaitable[None]]:
            return functools.partial(
                call_outcome, outcomes, payer, peer, "echo", body, price=PRICE, timeout=TIMEOUT
            )

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await drop_under_a_call(net, payer, peer, lambda: nursery.start_soon(call(b"lost")))
                nursery.start_soon(call(b"meanwhile"))  # a call made meanwhile: new stream
                await wait_until(lambda: b"meanwhile" in outcomes)
                gate.set()
        assert outcomes == {b"lost": "ok", b"meanwhile": "ok"}, outcomes
        mine = payer.payer_channels[ch.channel]
        assert not mine.in_flight and not mine.abandoned  # nothing left to claim
        assert payee.payee_channels[ch.channel].spent == 2 * PRICE  # each charged once
        assert mine.paid == 2 * PRICE
        assert await ledger.claims_of(PAYER.account) == []
    assert (await ledger.totals()).conserved
