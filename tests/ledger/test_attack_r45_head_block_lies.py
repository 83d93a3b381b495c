"""Attack round 45: lies in the block `eth_getBlockByNumber("latest")` answers, the second
reading of `Web3Chain.head` since attack round 44, at a running provider.

The provider (`p2pay node run`, staked, serving ``echo``) reads anvil through `LyingRpc`;
once it has synced, the endpoint lies in its ``latest`` block, everything else true:

* ``latest_ahead``: for 3 s, every reply's ``number`` is 200 blocks past the chain
  (`eth_blockNumber` true): the head is the lower reading, the truth;
* ``latest_null``: ten replies ``null`` (a block the backend does not have): each sync
  fails typed (`ChainUnavailable`), the node keeps running and syncs once the truth is back;

In each, a claim the client files afterwards is answered (DELIVERED), no stake slashed.
Skipped without anvil.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

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


def _ahead(block: dict[str, Any]) -> dict[str, Any]:
    return {**block, "number": hex(int(block["number"], 16) + 200)}


LIES: dict[str, list[Any]] = {
    "latest_ahead": [],  # a rewrite of every reply for 3 s, below
    "latest_null": [None] * 10,
}


@pytest.mark.parametrize("lie", sorted(LIES))
async def test_a_lying_latest_block_gets_no_honest_provider_slashed(
    tmp_path: Path, lie: str
) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        contract, provider = staked_provider(d, rpc_url, proxy)
        node = start_provider(d)
        try:
            async with client_ledger(rpc_url, contract, provider) as (ledger, cid):
                if lie == "latest_ahead":
                    proxy.lies["rewrite"] = {"eth_getBlockByNumber": _ahead}
                    await trio.sleep(3)  # about fifteen of the provider's syncs
                    proxy.lies["rewrite"] = {}
                proxy.lies["once"] = {"eth_getBlockByNumber": list(LIES[lie])}
                deadline = time.monotonic() + 60  # a bound, never a measure
                while proxy.lies["once"]["eth_getBlockByNumber"]:
                    assert time.monotonic() < deadline, "the provider never read the block"
                    await trio.sleep(0.1)
                await trio.sleep(1)  # a few of the provider's syncs (every 0.2 s) after it
                alive = node.proc.poll() is None
                claim = await claim_outcome(ledger, await file_withheld_claim(ledger, cid))
                stake = await ledger.stake_of(provider)
        finally:
            log = node.stop()
        print(f"{lie}: {proxy.garbled}; node alive {alive}; claim {claim.state.name}")
        assert alive, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert claim.state is ClaimState.DELIVERED, (claim.state, claim.slashed, log[-3000:])
        assert stake is not None and stake.amount == TOKEN // 2
