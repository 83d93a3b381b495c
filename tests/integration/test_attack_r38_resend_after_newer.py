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

PAYER = Keypair.from_seed(bytes([83]) * 32)
PAYEE = Keypair.from_seed(bytes([84]) * 32)
PRICE = 1_000
#: the watcher files claims (none is due here: every request is served)
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, claim_grace_ms=50, redeem_threshold=10**30
)
TIMEOUT = 8.0  # the calls' timeout


async def test_a_request_lost_with_its_stream_goes_before_a_newer_one() -> None:
    ledger = await funded_ledger(
        b"r38-resend-after-newer", PAYER, PAYEE, claim_bond=10**18, max_deadline_horizon_ms=120_000
    )
    async with paying_pair(ledger, PAYER, PAYEE, config=CONFIG, price=PRICE, staked=True) as pair:
        payer, payee, peer = pair.payer, pair.payee, pair.payee.peer_id
        outcomes: dict[bytes, str] = {}
        gate = trio.Event()
        hold_resends(payer, gate)

        def call(body: bytes) -> Callable[[], Awaitable[None]]:
            return functools.partial(
                call_outcome, outcomes, payer, peer, "echo", body, price=PRICE, timeout=TIMEOUT
            )

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                start = functools.partial(nursery.start_soon, call(b"lost"))
                await drop_under_a_call(pair.net, payer, peer, start)
                nursery.start_soon(call(b"meanwhile"))  # a call made meanwhile: new stream
                await wait_until(lambda: b"meanwhile" in outcomes)
                gate.set()
        assert outcomes == {b"lost": "ok", b"meanwhile": "ok"}, outcomes
        mine = payer.payer_channels[pair.channel]
        assert not mine.in_flight and not mine.abandoned  # nothing left to claim
        assert payee.payee_channels[pair.channel].spent == 2 * PRICE  # each charged once
        assert mine.paid == 2 * PRICE
        assert await ledger.claims_of(PAYER.account) == []
