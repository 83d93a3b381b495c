"""Attack round 39: a request a call waited for when its stream ended is handed to
``Client._lost`` (by PeerID) to be re-sent first on the next stream to that peer
(`Client._resend_lost_first`), and only that next stream takes it out. When no new stream
to the peer comes (it has gone: its call ended ConnectionLost, and the payer never calls
it again), the slot stays there for the node's life, with its signed request and its
body: a payer that pays many short-lived providers keeps, for each one that went away
under a call, up to ``max_in_flight`` request bodies it will never send. On 2756bc9 the
slot is still in ``_lost`` after its call has ended.

The connection drops under a call; the payee is then unreachable (its transport refuses),
so the call's re-send finds no new stream and the call ends ConnectionLost. No timing
assertion: every wait is bounded.
"""

from __future__ import annotations

import functools
from typing import Any

import trio
from node_support import call_outcome, funded_ledger, paying_pair, wait_until

from p2pay.core.identity import Keypair
from p2pay.net.base import PeerNotReached
from p2pay.node import NodeConfig

PAYER = Keypair.from_seed(bytes([93]) * 32)
PAYEE = Keypair.from_seed(bytes([94]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, auto_claim=False, redeem_threshold=10**30
)


async def test_a_lost_request_is_not_kept_once_its_call_has_ended() -> None:
    ledger = await funded_ledger(b"r39-lost-kept", PAYER, PAYEE, max_deadline_horizon_ms=120_000)
    async with paying_pair(ledger, PAYER, PAYEE, config=CONFIG, price=PRICE) as pair:
        payer, peer, net = pair.payer, pair.payee.peer_id, pair.net
        outcomes: dict[bytes, str] = {}

        async def gone(peer_id: str) -> Any:
            raise PeerNotReached(f"{peer_id} is gone")

        def start() -> None:
            nursery.start_soon(
                functools.partial(
                    call_outcome, outcomes, payer, peer, "echo", b"lost", price=PRICE, timeout=8.0
                )
            )

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                # the request stays on the wire (the payee never reads it) until the drop,
                # and from the drop on the payee cannot be reached again
                net.set_latency(lambda src, dst: 30.0 if src == payer.peer_id else 0.0)
                old = await payer._connection(peer)
                start()
                await wait_until(lambda: len(old.pending) == 1)
                net.set_latency(None)
                payer.transport.connect = gone  # type: ignore[method-assign]
                net.disconnect(payer.peer_id)
                await wait_until(lambda: b"lost" in outcomes)
        assert outcomes[b"lost"].startswith("ConnectionLost"), outcomes
        kept = payer.client._lost.get(peer, [])
        assert kept == [], f"{len(kept)} request(s) kept for a call that has ended"
