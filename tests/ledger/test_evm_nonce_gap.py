"""A transaction of a node that a reorganisation drops for good (the chain does not put it
back in its pool: anvil's `evm_revert`) leaves the node's cached next nonce past a gap no
transaction fills: every later transaction waited behind it and timed out, for good (the
closing notes' "nonce cache ahead after a reorg"; attack round 48's reorganisation test
cleared the cache by hand). Now a transaction not mined after `reprice_after_s` looks for
such a gap once and fills it with empty transfers (settlement.md 10, "A chain that
misbehaves"). Every wait bounded.
"""

from __future__ import annotations

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import TOKEN, B, deployed

from p2pay.ledger.evm import EvmLedger, Web3Chain
from p2pay.ledger.memory import wall_clock_ms

pytestmark = pytest.mark.trio


async def test_a_transaction_a_reorganisation_dropped_does_not_stall_the_next(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await deployed(chain)
    bob_chain = Web3Chain(anvil_url, timed=True, timeout_s=20, reprice_after_s=1.0)
    bob_ledger = await EvmLedger.connect(bob_chain, ledger.address, clock=wall_clock_ms)
    try:
        before = chain._rpc("evm_snapshot", [])
        await bob_ledger.stake(B, TOKEN, TOKEN // 10, 60_000)
        chain._rpc("evm_revert", [before])  # the block holding the stake, dropped for good
        assert await ledger.stake_of(B.account) is None
        await bob_ledger.stake(B, 2 * TOKEN, TOKEN // 10, 60_000)
        stake = await ledger.stake_of(B.account)
        assert stake is not None and stake.amount == 2 * TOKEN, stake
        assert bob_chain.stats["gap_fillers"] == 1, bob_chain.stats
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()
