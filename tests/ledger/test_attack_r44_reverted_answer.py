"""Attack round 44: a claim answer that reverted on chain, reported as a success, did not
get an honest provider slashed.

The provider (`p2pay node run`, staked, serving ``echo``) reads and writes anvil through
`LyingRpc`. When a claim is filed against it, the endpoint answers its first `LIES`
`eth_estimateGas` calls with 1 and every receipt it is asked for with status 1 whatever the
chain says (a reverted answer's logs are empty, as a revert's are). In round 44 the gas
limit was then ``1 * 13 // 10 + 50_000``: the answer ran out of gas on chain, was reported
made, and the node answered again once it read the claim still OPEN. Since attack round 51
no gas limit is below `_gas_floor` (100,000 plus 64 a calldata byte, settlement.md 10):
the same lies no longer run the answer out of gas at all, and it lands the first time.
(That the answer task reads a claim again until it is no longer OPEN, whatever a receipt
said, is `integration/test_attack_r23_*`'s.) Skipped without anvil.
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


async def test_an_estimate_of_one_gas_and_receipts_lied_successful_slash_no_one(
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
        assert lied >= 1, lied  # the provider did answer under the lie
        assert not reverted, f"{len(reverted)} answers ran out of gas under the floor"
        assert claim.state is ClaimState.DELIVERED, (claim.state, claim.slashed, log[-3000:])
        assert stake is not None and stake.amount == TOKEN // 2
