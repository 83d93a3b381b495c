"""Attack round 49 (a helper's, on 2302a5d, with real `p2pay node run` homes): an endpoint
that answers every `eth_call` at `latest` from an older block (a backend whose state is
stale, or a lie), in front of a node whose ledger has confirmations (k = 3). Its readings at
``head - k`` are true; only the simulations of its transactions, made at `latest`, see the
old state. The contract never removes a channel or a claim, so a refusal UNKNOWN_CHANNEL or
UNKNOWN_CLAIM of one the ``head - k`` reading shows is untrue (settlement.md 10,
"Confirmations"). Believed, they cost:

* an honest provider its penalty: its answer was refused UNKNOWN_CLAIM, a final refusal, and
  the claim was UPHELD (0.5 token staked, 0.4 after);
* a payee its charges: every redeem on a payer's close was refused UNKNOWN_CHANNEL, 0 of 3
  calls redeemed.

Both FAILED on d551d13. Now such a refusal is not believed: the transaction is sent without
its simulation and the chain decides; a revert is then the chain's refusal, its code read at
the receipt's block (third test). Every wait bounded.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    FAST,
    PRICE,
    TOKEN,
    A,
    B,
    StaleLatest,
    attached,
    closed_after_three_calls,
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
from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.settlement import ClaimState
from p2pay.ledger.evm import EvmLedger, Web3Chain
from p2pay.node import open_node

pytestmark = pytest.mark.trio

K = 3


async def test_a_stale_simulation_does_not_get_an_honest_provider_slashed(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)
    stale.frozen = chain.head()  # the channel and the stake, no claim yet
    bob_ledger = await attached(anvil_url, ledger, K, stale)
    try:
        async with (
            miner(anvil_url, 0.3),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
        ):
            bob.serve("echo", echo, price=PRICE)
            claim_id = await ledger.file_claim(A, await never_sent(ledger, channel))
            claim = await outcome(ledger, claim_id)
            print(
                f"outcome {claim.state.name}, slashed {claim.slashed}; "
                f"answers {bob.counters.claims_answered}"
            )
            assert claim.state is ClaimState.DELIVERED and claim.slashed == 0, claim.state
            assert bob_ledger.unbelieved_refusals >= 1
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()


async def test_a_stale_simulation_keeps_no_redeem_back_on_a_close(
    chain: Web3Chain, anvil_url: str
) -> None:
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)

    def freeze(alice_ledger: EvmLedger) -> None:
        stale.frozen = first_block_of(chain, alice_ledger)

    ch = await closed_after_three_calls(chain, anvil_url, K, stale, freeze)
    assert ch.redeemed == 3 * PRICE, f"served 3 calls, redeemed {ch.redeemed}"


async def test_a_transaction_sent_without_its_simulation_reverts_with_the_chains_reason(
    chain: Web3Chain, anvil_url: str
) -> None:
    """A redeem of a voucher someone other than the payer signed, on a channel the stale
    simulation does not know: sent all the same (UNKNOWN_CHANNEL is untrue), the chain
    refuses it for its own reason."""
    ledger = await deployed(chain)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)
    stale.frozen = first_block_of(chain, ledger)
    bob_ledger = await attached(anvil_url, ledger, K, stale)
    try:
        forged = await voucher(ledger, channel, PRICE, signer=testing.CAROL)
        with pytest.raises(SettlementError) as refused:
            await bob_ledger.redeem(B, forged)
        assert refused.value.code is ErrorCode.INVALID_SIGNATURE, refused.value
        assert bob_ledger.unbelieved_refusals == 1
        # a refusal the confirmed reading does not contradict is believed, nothing sent
        with pytest.raises(SettlementError) as unknown:
            await bob_ledger.redeem(B, await voucher(ledger, b"\x07" * 32, PRICE))
        assert unknown.value.code is ErrorCode.UNKNOWN_CHANNEL, unknown.value
        assert bob_ledger.unbelieved_refusals == 1
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()


async def test_a_stale_simulation_does_not_keep_a_clients_claim_back(
    chain: Web3Chain, anvil_url: str
) -> None:
    """A client's claim against a staked provider that withheld its answer, filed through
    the stale endpoint: refused UNKNOWN_CHANNEL, it was unclaimable (`_UNCLAIMABLE`), and a
    withholder kept the price, never slashed."""
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)
    stale.frozen = first_block_of(chain, ledger)
    alice_ledger = await attached(anvil_url, ledger, K, stale)
    try:
        claim_id = await alice_ledger.file_claim(A, await never_sent(ledger, channel))
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.OPEN, claim
        assert alice_ledger.unbelieved_refusals == 1
    finally:
        await alice_ledger.aclose()
        await ledger.aclose()


@pytest.mark.parametrize("stale_before", ["stake", "top_up"])
async def test_a_stale_simulation_of_a_stake_or_a_deposit_does_not_keep_a_claim_back(
    chain: Web3Chain, anvil_url: str, stale_before: str
) -> None:
    """Attack round 50: the stale state predates the provider's stake (the claim refused
    NOT_STAKED) or a top-up that covers the claimed request (VOUCHER_EXCEEDS_DEPOSIT); both
    codes are unclaimable to the watcher, so a withholder kept the price. The reading at
    head - k shows the stake, and the deposit: the claim is sent and filed."""
    ledger = await deployed(chain)
    stale = StaleLatest(anvil_url, timed=True, timeout_s=30)
    if stale_before == "stake":
        channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
        stale.frozen = chain.head()
        await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
        paid = PRICE
    else:
        await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
        channel = await ledger.open_channel(A, B.account, PRICE, 60_000)
        stale.frozen = chain.head()
        await ledger.top_up(A, channel, 9 * PRICE)
        paid = 5 * PRICE
    mine(chain, K + 1)
    alice_ledger = await attached(anvil_url, ledger, K, stale)
    try:
        request = await voucher(ledger, channel, paid, deadline_in_ms=-1)
        claim_id = await alice_ledger.file_claim(A, request)
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.OPEN, claim
        assert alice_ledger.unbelieved_refusals == 1
    finally:
        await alice_ledger.aclose()
        await ledger.aclose()


class _LowEstimate(StaleLatest):
    """`StaleLatest` at every block for the answer's `eth_call`s (the reason of a revert
    too), and an `eth_estimateGas` of 21,000 for every transaction, once `frozen` is set."""

    answers: frozenset[str] = frozenset()

    def _rpc(self, method: str, params: list[Any]) -> Any:
        if self.frozen is not None:
            if method == "eth_estimateGas":
                return hex(21_000)
            if method == "eth_call" and params[0].get("data", "")[2:10] in self.answers:
                params = [params[0], hex(self.frozen), *params[2:]]
        return super()._rpc(method, params)


async def test_a_forced_answer_is_not_run_out_of_gas_by_a_low_estimate(
    chain: Web3Chain, anvil_url: str
) -> None:
    """Attack round 50: the forced answer took the endpoint's estimate (21,000) as its gas,
    ran out of it on chain, and the endpoint's simulation "explained" the revert as
    UNKNOWN_CLAIM, a final refusal: 9 reverted answers in the window, then UPHELD. Now a
    send without its simulation has at least the bound its calldata fits in, and an
    out-of-gas revert is never taken for the contract's refusal."""
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    liar = _LowEstimate(anvil_url, timed=True, timeout_s=30)
    bob_ledger = await attached(anvil_url, ledger, K, liar)
    liar.answers = frozenset(
        bob_ledger._abi.functions[name][0].hex()
        for name in ("answer_claim", "answer_claim_evidence")
    )
    liar.frozen = chain.head()
    try:
        async with (
            miner(anvil_url, 0.3),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
        ):
            bob.serve("echo", echo, price=PRICE)
            claim_id = await ledger.file_claim(A, await never_sent(ledger, channel))
            claim = await outcome(ledger, claim_id)
            print(f"outcome {claim.state.name}; answer gas {bob_ledger.gas_used}")
            assert claim.state is ClaimState.DELIVERED and claim.slashed == 0, claim.state
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()
