"""Attack round 40: an EVM endpoint whose log backend lags one block got an honest
provider slashed (a real `p2pay node run` on anvil, behind a lying JSON-RPC proxy).

The provider (`p2pay node run`, its own process, staked, serving ``echo``) reads the chain
through `LyingRpc` with ``logs_lag``: `eth_getLogs` leaves out the logs of the newest block
it is asked for, everything else is true (a load-balanced endpoint whose log backend is one
block behind its head backend; anvil mines a block a second, as a live chain does). The
client, on anvil directly, opens a channel and files a claim for a paid request it signed;
an honest provider serves it through the claim and answers (DELIVERED, claims.md C-1).
`EvmLedger._sync` moved its block cursor to ``eth_blockNumber`` whatever `eth_getLogs`
returned, so the ClaimFiled log it was not shown was never asked for again: the watcher
never learnt of the claim (its list of claims against it and the claim's request frame both
come from the logs), the window ended and the claim was UPHELD (slashed 0.1 token) on
b424d15. A sync now reads the last `RESCAN_BLOCKS` blocks again (settlement.md 10): the
claim is answered, DELIVERED. Skipped without anvil.
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

skip_without_anvil()


async def test_a_lagging_log_backend_does_not_get_an_honest_provider_slashed(
    tmp_path: Path,
) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        contract, provider = staked_provider(d, rpc_url, proxy)
        node = start_provider(d)
        try:
            async with client_ledger(rpc_url, contract, provider) as (ledger, cid):
                proxy.lies["logs_lag"] = True  # from here on the provider's logs lag a block
                claim_id = await file_withheld_claim(ledger, cid)
                claim = await ledger.claim(claim_id)
                assert claim is not None and claim.state is ClaimState.OPEN
                claim = await claim_outcome(ledger, claim_id)
                stake = await ledger.stake_of(provider)
                totals = await ledger.totals()
        finally:
            log = node.stop()
        assert totals.conserved
        # an honest provider answers every claim: delivered, never slashed (claims.md C-1)
        assert claim.state is ClaimState.DELIVERED, (claim.state, claim.slashed, log[-3000:])
        assert stake is not None and stake.amount == TOKEN // 2
