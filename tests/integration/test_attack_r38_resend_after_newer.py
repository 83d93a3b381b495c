"""Attack round 38: a call whose stream ended re-sends its request on the new stream after
a newer request of the same channel went there (`Client._resend_lost`): the payee, which
never read it, answers it REPLAY (its number is at or below the channel's ``last_n`` now,
protocol.md 13.2 check 5), the call re-sends it once more (REPLAY again) and ends
RequestInDoubt, though nothing is wrong on either side. That is the limit written in
protocol.md 13.1 step 4; this test holds what it costs: nothing but a claim. The request
stays abandoned, the payer's watcher claims it after its deadline, the payee serves it
through the claim as a gap (claims.md C-6): DELIVERED, the bond back, each request charged
once, nobody slashed.

A call is on its way to an honest payee when the connection drops (the payee never reads
it). Before its task gets to re-send (a scheduling race on any node: here the test holds
`_resend_lost` until then), a call made meanwhile goes on the new stream and is served.
(Re-sending the requests a dropped stream left before anything new goes on the next one
would have both served on the stream; not done.)

No timing assertion: the re-send is held on an event until the other call is answered,
the frames' latency only keeps the first request on the wire while the connection drops,
and every wait is bounded.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from node_support import call_outcome, drop_under_a_call, funded_ledger, wait_until

from p2pay.core.identity import Keypair
from p2pay.core.settlement import ClaimState
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([83]) * 32)
PAYEE = Keypair.from_seed(bytes([84]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, claim_grace_ms=50, redeem_threshold=10**30
)
STAKE, PENALTY = 10**20, 10**19
TIMEOUT = 8.0  # the calls' timeout: the lost request's deadline, then its claim


async def test_a_request_lost_behind_a_newer_one_ends_in_doubt_and_its_claim_delivers() -> None:
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
        assert outcomes[b"meanwhile"] == "ok", outcomes
        assert outcomes[b"lost"].startswith("RequestInDoubt"), outcomes

        async def claim_ended() -> bool:
            claims = await ledger.claims_of(PAYER.account)
            return len(claims) == 1 and claims[0].state is not ClaimState.OPEN

        await wait_until(claim_ended, timeout=120)
        [claim] = await ledger.claims_of(PAYER.account)
        assert claim.state is ClaimState.DELIVERED, claim.state
        assert claim.slashed == 0 and claim.refund == 0
        assert payee.payee_channels[ch.channel].spent == 2 * PRICE  # each charged once
        stake = await ledger.stake_of(PAYEE.account)
        assert stake is not None and stake.amount == STAKE
    assert (await ledger.totals()).bonds == 0
    assert (await ledger.totals()).conserved
