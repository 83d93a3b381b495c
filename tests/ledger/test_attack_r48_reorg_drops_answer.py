"""Attack round 48: a reorganisation shallower than `confirmations` drops a provider's
answer to a claim whose ClaimFiled is already confirmed (k deep).

Since a1757b4 the provider reads a claim against it at the LATEST block
(`Watcher._read_claim`): its answer task (`_defend`) ends as soon as the latest block shows
the claim answered. A reorganisation (here `evm_revert`) less than k blocks deep then drops
the answer block; the claim is OPEN again, but its ClaimFiled is confirmed (no longer in
`claims_filed_against`'s blocks) and its event was handled already: nothing looks at it
again before the rescan (every RESCAN_STEPS = 20 watcher steps, 20 s at the default
`watch_interval`). A window shorter than that ends unanswered: UPHELD, an honest provider
slashed. Read at head - k (0e3597b), the task kept reading the claim OPEN until its answer
was k blocks deep, and answered again after the reorganisation.

The answer lands more than k blocks after the filing here because the provider starts
after it (a restart); a handler through the claim slower than k block times does the same.
"""

from __future__ import annotations

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    PRICE,
    TOKEN,
    A,
    B,
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
from p2pay.node import NodeConfig, open_node

pytestmark = pytest.mark.trio

K = 6
WINDOW_MS = 12_000
# the default watch_interval (1 s): the rescan comes every 20 s
CONFIG = NodeConfig(watch_interval=1.0, min_challenge_ms=50, default_timeout=5.0)


async def test_a_reorganisation_that_drops_an_answer_is_answered_again(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, WINDOW_MS)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    request = await never_sent(ledger, channel)
    claim_id = await ledger.file_claim(A, request)
    mine(chain, K + 1)  # the claim is confirmed before BOB's node starts
    before = chain._rpc("evm_snapshot", [])
    bob_chain = Web3Chain(anvil_url, timed=True, timeout_s=30)
    bob_ledger = await attached(anvil_url, ledger, K, bob_chain)
    reverted = False
    try:
        async with open_node(key=testing.BOB, ledger=bob_ledger, config=CONFIG) as bob:
            bob.serve("echo", echo, price=PRICE)
            with trio.fail_after(30):  # BOB answers (one block: automine)
                while True:
                    claim = await ledger.claim(claim_id)
                    assert claim is not None
                    if claim.state is not ClaimState.OPEN:
                        break
                    await trio.sleep(0.05)
            assert claim.state is ClaimState.DELIVERED
            answered_at = int(chain._rpc("eth_blockNumber", []), 16)
            await trio.sleep(1.5)  # his answer task reads it answered and ends
            # the reorganisation: fewer than K blocks dropped, his answer with them
            head = int(chain._rpc("eth_blockNumber", []), 16)
            chain._rpc("evm_revert", [before])
            reverted = True
            # anvil's revert drops BOB's answer for good, where a chain puts a transaction
            # of a dropped block back in its mempool; his cached next nonce then points
            # past a gap, which his next transaction fills only after `reprice_after_s`
            # (15 s, longer than this window: test_evm_nonce_gap.py), and that is not
            # what this test is about
            bob_chain._nonces.clear()
            after = int(chain._rpc("eth_blockNumber", []), 16)
            assert head - after < K, (head, after)
            print(f"answer in block {answered_at}; reorg dropped {head - after} blocks")
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.OPEN
            async with miner(anvil_url, 0.5):
                claim = await outcome(ledger, claim_id)
            print(
                f"outcome {claim.state.name} slashed={claim.slashed} "
                f"answers sent={bob.counters.claims_answered} steps={bob.watcher.steps}"
            )
            assert claim.state is ClaimState.DELIVERED, (
                f"answer dropped by a {head - after}-block reorganisation (k = {K}): "
                f"{claim.state.name}, slashed {claim.slashed}"
            )
    finally:
        if not reverted:
            chain._rpc("evm_revert", [before])
        await bob_ledger.aclose()
        await ledger.aclose()
