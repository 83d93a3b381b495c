"""Attack round 48: since a1757b4 a provider reads every claim against it at the LATEST
block only (`Watcher._read_claim`: the answer task, the rescan, `_claimed_requests`). An
endpoint that lies about `latest` alone (`claims(id)` at latest shows no claim) keeps every
answer back, though its readings at head - k show the claim OPEN for the whole window: an
honest provider is slashed (UPHELD). On 0e3597b (claims read at head - k) the same endpoint
cost nothing once the ClaimFiled event was k deep. k = 3, a block every 0.3 s, a 20 s window.
"""

from __future__ import annotations

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    FAST,
    PRICE,
    TOKEN,
    A,
    B,
    LatestViewLie,
    attached,
    deployed,
    echo,
    mine,
    miner,
    never_sent,
    outcome,
)

from p2pay import testing
from p2pay.core.settlement import ClaimState
from p2pay.ledger.evm import Web3Chain
from p2pay.node import open_node

pytestmark = pytest.mark.trio

K = 3


def _no_claim(raw: bytearray) -> None:
    raw[320:352] = bytes(32)  # `claims(id)`: state 0, no such claim


async def test_a_latest_reading_that_hides_a_claim_does_not_get_it_upheld(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    lying = LatestViewLie(anvil_url, timed=True, timeout_s=30)
    lying.aim(ledger, "claims")
    lying.lie = _no_claim
    bob_ledger = await attached(anvil_url, ledger, K, lying)
    try:
        async with (
            miner(anvil_url, 0.3),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
        ):
            bob.serve("echo", echo, price=PRICE)
            request = await never_sent(ledger, channel)
            claim_id = await ledger.file_claim(A, request)
            claim = await outcome(ledger, claim_id)
            seen = await bob_ledger.claim(claim_id)  # at head - k: the truth
            print(
                f"outcome {claim.state.name}, slashed {claim.slashed}; bob's head-k read: "
                f"{seen and seen.state.name}; answers {bob.counters.claims_answered}"
            )
            assert claim.state is ClaimState.DELIVERED and claim.slashed == 0, claim.state
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()
