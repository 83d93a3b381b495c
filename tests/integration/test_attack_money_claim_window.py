"""Attack (money): a withholding provider with a short claim window escapes every claim.

The client's watcher waited ``claim_grace_ms`` (5 s by default) after a request's deadline
before it even looked, then re-sent the request (dialling first, up to ``redeliver_timeout``
each) and only then claimed: a provider staking with a claim window shorter than that
(any ledger whose minimum claim window allows it, e.g. a dev ledger made with
``--min-claim-window 1s`` as in the README's walkthrough) kept the price of every request
it withheld, and the client's record turned "expired" without a word. claims.md 6: the
claimant's schedule now fits inside the window. Bounded waits, no timing asserts.
"""

from __future__ import annotations

import pytest
import trio
from node_support import funded_ledger, wait_until

from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Behaviour, Call, CallTimeout, NodeConfig, open_node

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
PRICE = 1_000
STAKE, PENALTY = 10**20, 10**19


class Withholds(Behaviour):
    """Takes every paid request, never answers it, never defends a claim."""

    answers_claims = False

    def drop(self, call: Call) -> bool:
        return True


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_short_claim_window_does_not_let_a_withholder_escape_the_claim() -> None:
    ledger = await funded_ledger(b"atk-money", ALICE, BOB, claim_bond=10**18)
    net = MemoryNetwork()
    # the client keeps the defaults that matter here (claim_grace_ms 5 s, redeliver 5 s)
    client = NodeConfig(watch_interval=0.05, min_challenge_ms=50, challenge_ms=60_000)
    assert client.claim_grace_ms == 5_000 and client.redeliver_timeout == 5.0
    with trio.fail_after(120):
        async with (
            open_node(
                key=BOB,
                ledger=ledger,
                network=net,
                config=NodeConfig(watch_interval=0.05, min_challenge_ms=50),
                behaviour=Withholds(),
            ) as bob,
            open_node(key=ALICE, ledger=ledger, network=net, config=client) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=2_000)
            await alice.open_channel(bob.addrs[0], deposit=10**6)
            with pytest.raises(CallTimeout):
                await alice.call(bob.peer_id, "echo", b"withheld", max_price=PRICE, timeout=0.3)

            async def settled() -> bool:
                return all(r.state != "awaiting" for r in await alice.store.requests())

            await wait_until(settled)
            [record] = await alice.store.requests()
            assert record.state != "expired", "the claim window ended before the claim"

            async def resolved() -> bool:
                return any(c.outcome == "upheld" for c in await alice.claims())

            await wait_until(resolved)
            [info] = await alice.claims()
            assert info.slashed == PENALTY and info.refund == PRICE and info.bond_returned
