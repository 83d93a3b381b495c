"""Attack round 44: one `eth_blockNumber` reply far ahead of the chain hides every claim
filed in the blocks after it from a running provider, which is then slashed.

The provider (`p2pay node run`, its own process, staked, serving ``echo``) reads anvil
through `LyingRpc`. Once, after it has synced, the endpoint answers `eth_blockNumber` with
the true head + `AHEAD` blocks (a load-balanced endpoint one of whose backends is ahead,
or wrong, once); everything else is true, and from then on the truth again. `EvmLedger._sync`
reads the logs up to that head (none: those blocks do not exist yet; anvil, as geth, answers
an empty list for blocks past its head) and moves its cursor there. Later syncs read again
only the `RESCAN_BLOCKS` (64) blocks before the cursor, so the logs of the blocks between
the true head and cursor - 64 are never read: a claim the client files there is never seen
(the claim list and the request frame come from the logs), the window ends and the claim is
UPHELD, an honest provider slashed. Skipped without anvil.
"""

from __future__ import annotations

import time
from pathlib import Path

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

AHEAD = 200  # blocks: more than RESCAN_BLOCKS past the claim's block

skip_without_anvil()


def _flipping() -> object:
    """Every other reply 30 blocks behind: a load-balanced endpoint flipping between a
    backend at the head and one far behind (the head goes backwards, then forwards)."""
    flips = [0]

    def head(h: str) -> str:
        flips[0] += 1
        return hex(max(int(h, 16) - 30 * (flips[0] % 2), 0))

    return head


@pytest.mark.parametrize("lie", ["ahead_once", "flipping_backwards"])
async def test_one_head_reply_far_ahead_does_not_get_an_honest_provider_slashed(
    tmp_path: Path, lie: str
) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        contract, provider = staked_provider(d, rpc_url, proxy)
        node = start_provider(d)
        try:
            async with client_ledger(rpc_url, contract, provider) as (ledger, cid):
                # one head reply AHEAD blocks past the truth, read by the provider's watcher
                if lie == "flipping_backwards":
                    proxy.lies["rewrite"] = {"eth_blockNumber": _flipping()}
                else:
                    proxy.lies["once"] = {"eth_blockNumber": [lambda h: hex(int(h, 16) + AHEAD)]}
                deadline = time.monotonic() + 60  # a bound, never a measure
                while not proxy.garbled.get("eth_blockNumber"):
                    assert time.monotonic() < deadline, "the provider never read the head"
                    await trio.sleep(0.1)
                await trio.sleep(1)  # a few of the provider's syncs (every 0.2 s) after it
                claim = await claim_outcome(ledger, await file_withheld_claim(ledger, cid))
                stake = await ledger.stake_of(provider)
                totals = await ledger.totals()
        finally:
            log = node.stop()
        assert totals.conserved
        assert claim.state is ClaimState.DELIVERED, (claim.state, claim.slashed, log[-3000:])
        assert stake is not None and stake.amount == TOKEN // 2
