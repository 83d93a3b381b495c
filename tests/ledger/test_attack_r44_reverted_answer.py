"""Attack round 44: a claim answer that reverted on chain, reported as a success, does not
get an honest provider slashed.

The provider (`p2pay node run`, staked, serving ``echo``) reads and writes anvil through
`LyingRpc`. When a claim is filed against it, the endpoint answers its first `LIES`
`eth_estimateGas` calls with 1 (the gas limit is then ``1 * 13 // 10 + 50_000``: the answer
runs out of gas on chain and reverts, nonce used) and every receipt it is asked for with
status 1 whatever the chain says (the reverted answer's logs are empty, as a revert's are).
The node must not take the answer as made: the claim is still OPEN on chain. Skipped
without anvil.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from lying_rpc import (
    TOKEN,
    LyingRpc,
    anvil,
    claim_outcome,
    client_ledger,
    file_withheld_claim,
    skip_without_anvil,
    staked_provider,
    start_provider,
)

from p2pay.core.settlement import ClaimState

pytestmark = pytest.mark.trio

LIES = 3

skip_without_anvil()


async def test_a_reverted_answer_reported_as_success_is_answered_again(
    tmp_path: Path,
) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        contract, provider = staked_provider(d, rpc_url, proxy)
        node = start_provider(d)
        try:
            async with client_ledger(rpc_url, contract, provider) as (ledger, cid):
                proxy.lies["once"] = {"eth_estimateGas": ["0x1"] * LIES}
                reverted: list[str] = []  # receipts whose true status was 0, answered 1

                def succeeded(r: dict[str, str] | None) -> dict[str, str] | None:
                    if r and r["status"] != "0x1":
                        reverted.append(r["transactionHash"])
                    return r and {**r, "status": "0x1"}

                proxy.lies["rewrite"] = {"eth_getTransactionReceipt": succeeded}
                claim = await claim_outcome(ledger, await file_withheld_claim(ledger, cid))
                lied = proxy.garbled.get("eth_estimateGas", 0)
                stake = await ledger.stake_of(provider)
                totals = await ledger.totals()
        finally:
            log = node.stop()
        assert totals.conserved
        assert lied == LIES, lied  # the provider did try to answer under the lie
        assert reverted, "no answer reverted: the lie was never told"
        assert "answered again" in log, log[-3000:]
        assert claim.state is ClaimState.DELIVERED, (claim.state, claim.slashed, log[-3000:])
        assert stake is not None and stake.amount == TOKEN // 2
