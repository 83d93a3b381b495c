"""Attack round 51 (a helper's, on 381a551): what sending a transaction without its
simulation cost, on an EVM ledger with confirmations (k = 3) behind an endpoint whose
latest state is stale (settlement.md 10, "Confirmations"). Each test FAILED on 381a551:

* the gas floor of a forced send was 4,000,000 plus 16 a calldata byte: a node holding a
  modest gas balance was refused InsufficientGasFunds before sending (an honest provider
  UPHELD, a payee's 3 charges back to the payer); the floor is now 100,000 plus 64 a byte,
  for every send, and a send that runs out of gas is sent again at twice the limit;
* an estimate the endpoint made up too low ran every ordinary (simulated) redeem out of gas
  at the same limit until the close ended (63 reverted redeems, redeemed 0); now such a
  send of an operation a second landing cannot apply twice (a redeem, a claim) is sent
  again at twice the limit;
* one failed reading at ``head - k`` made a forced send's refusal believed, a final one;
  now it is `ChainUnavailable`, tried again;
* a stale latest block showed an answered claim OPEN, and it was answered again every few
  seconds until its window ended, each answer reverted on chain (13 in 40 s); a claim the
  ``head - k`` reading shows ended is now let go.

Every wait bounded.
"""

from __future__ import annotations

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    FAST,
    PRICE,
    TOKEN,
    A,
    B,
    StaleLatest,
    attached,
    deployed,
    echo,
    first_block_of,
    mine,
    miner,
    never_sent,
    outcome,
    voucher,
)

from p2pay import testing
from p2pay.core.settlement import ClaimState
from p2pay.ledger.evm import ChainUnavailable, Web3Chain
from p2pay.node import open_node

pytestmark = pytest.mark.trio

K = 3


async def test_a_forced_redeem_needs_no_more_gas_money_than_an_ordinary_one(
    chain: Web3Chain, anvil_url: str
) -> None:
    """BOB holds gas money for 1,000,000 gas at today's fee: an ordinary redeem's worth
    and more, a fifth of what the old floor asked of a forced one."""
    ledger = await deployed(chain)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)
    stale.frozen = first_block_of(chain, ledger)
    bob_ledger = await attached(anvil_url, ledger, K, stale)
    try:
        max_fee, _ = stale._fees()
        chain.fund(B.address, 1_000_000 * max_fee)
        paid = await bob_ledger.redeem(B, await voucher(ledger, channel, 3 * PRICE))
        assert paid == 3 * PRICE
        assert bob_ledger.unbelieved_refusals == 1
    finally:
        chain.fund(B.address)
        await bob_ledger.aclose()
        await ledger.aclose()


async def test_an_estimate_made_up_too_low_does_not_run_sends_out_of_gas(
    chain: Web3Chain, anvil_url: str
) -> None:
    """An endpoint that estimates 1 gas for everything (no confirmations needed): a redeem
    (under the floor) and a claim's filing (above it: out of gas, sent again at twice the
    limit; a second landing of a claim is refused CLAIM_EXISTS) both go through."""
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 60_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    low = StaleLatest(anvil_url, timed=True, timeout_s=30)
    low.estimate = 1
    lying = await attached(anvil_url, ledger, 0, low)
    try:
        paid = await lying.redeem(B, await voucher(ledger, channel, 2 * PRICE))
        assert paid == 2 * PRICE
        claim_id = await lying.file_claim(A, await never_sent(ledger, channel))
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.OPEN
        assert low.stats["out_of_gas"] >= 1, low.stats
    finally:
        await lying.aclose()
        await ledger.aclose()


async def test_a_refusal_that_cannot_be_checked_is_tried_again_not_believed(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await deployed(chain)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)
    stale.frozen = first_block_of(chain, ledger)
    bob_ledger = await attached(anvil_url, ledger, K, stale)
    try:
        paid_one = await voucher(ledger, channel, PRICE)
        stale.fail_next_read = True  # the reading at head - k that would check UNKNOWN_CHANNEL
        with pytest.raises(ChainUnavailable):
            await bob_ledger.redeem(B, paid_one)
        assert await bob_ledger.redeem(B, paid_one) == PRICE  # the next try checks it
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()


async def test_a_claim_the_confirmed_reading_shows_answered_is_not_answered_again(
    chain: Web3Chain, anvil_url: str
) -> None:
    """The latest state frozen right after the claim's filing shows it OPEN for good."""
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 60_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)
    bob_ledger = await attached(anvil_url, ledger, K, stale)
    try:
        async with (
            miner(anvil_url, 0.3),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
        ):
            bob.serve("echo", echo, price=PRICE)
            claim_id = await ledger.file_claim(A, await never_sent(ledger, channel))
            stale.frozen = chain.head()
            claim = await outcome(ledger, claim_id)
            assert claim.state is ClaimState.DELIVERED
            with trio.fail_after(60):  # his own reading at head - k shows it answered
                while (seen := await bob_ledger.claim(claim_id)) is None or (
                    seen.state is ClaimState.OPEN
                ):
                    await trio.sleep(0.1)
            # answers sent again before that (the latest block stale, ours not k deep yet)
            # are as the spec says; from here on, at most one already under way
            before = stale.sends
            await trio.sleep(11)  # the answer task's backoff is at most 5 s
            print(f"answers sent {before}, then {stale.sends - before}")
            assert stale.sends - before <= 1, f"{stale.sends - before} more answers sent"
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()
