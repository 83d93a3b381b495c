"""A transaction of a node that a reorganisation drops for good (the chain does not put it
back in its pool: anvil's `evm_revert`) leaves the node's cached next nonce past a gap no
transaction fills: every later transaction waited behind it and timed out, for good (the
closing notes' "nonce cache ahead after a reorg"; attack round 48's reorganisation test
cleared the cache by hand). Now a transaction not mined after `reprice_after_s` looks for
such a gap once and fills it with empty transfers (settlement.md 10, "A chain that
misbehaves"). Every wait bounded.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import TOKEN, A, B, attached, deployed

from p2pay.ledger.evm import EvmLedger, RpcErrorReply, TransactionTimeout, Web3Chain
from p2pay.ledger.memory import wall_clock_ms

pytestmark = pytest.mark.trio


class _MinimumTip(Web3Chain):
    """Refuses a transaction whose tip is under 0.1 gwei, "transaction underpriced" (a
    chain with a price floor, as Polygon's 25 gwei)."""

    def _rpc(self, method: str, params: list[Any]) -> Any:
        if method == "eth_sendRawTransaction":
            import rlp  # web3's

            raw = bytes.fromhex(params[0][2:])
            if raw[0] == 2 and int.from_bytes(rlp.decode(raw[1:])[2], "big") < 10**8:
                raise RpcErrorReply({"code": -32000, "message": "transaction underpriced"})
        return super()._rpc(method, params)


@pytest.mark.parametrize("kind", [Web3Chain, _MinimumTip], ids=["any_tip", "minimum_tip"])
async def test_a_transaction_a_reorganisation_dropped_does_not_stall_the_next(
    chain: Web3Chain, anvil_url: str, kind: type[Web3Chain]
) -> None:
    """On a chain with a minimum tip too (attack round 54: a filler at a tip of 1 wei was
    refused, and every later transaction waited behind the gap: an honest provider
    slashed); a filler is priced as the transaction waiting behind it."""
    ledger = await deployed(chain)
    bob_chain = kind(anvil_url, timed=True, timeout_s=20, reprice_after_s=1.0)
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


class _PendingCountLags(Web3Chain):
    """Once `lagging`, the pending transaction count is true `true_reads` more times, then
    the latest block's: a backend that has not seen the sender's pending transaction (or
    lies)."""

    lagging = False
    true_reads = 1

    def _rpc(self, method: str, params: list[Any]) -> Any:
        if self.lagging and method == "eth_getTransactionCount" and params[1] == "pending":
            if self.true_reads > 0:
                self.true_reads -= 1
            else:
                params = [params[0], "latest"]
        return super()._rpc(method, params)


async def test_a_filler_does_not_replace_our_own_pending_transaction(
    fresh: Web3Chain, anvil_url: str
) -> None:
    """Attack round 53: T1 (1 token) waits in the pool, unmined; T2 (2 tokens) takes the
    next nonce; the count T2 looks at for a gap lags, so T1's nonce looks free. Priced as
    T2 (a tip risen to 5 gwei), the filler replaced T1, which never landed (A moved 2, not
    3: FAILED on cfb04cb); priced at the least that is mined, it is refused, underpriced."""
    ledger = await deployed(fresh)
    lagging = _PendingCountLags(anvil_url, timed=False, timeout_s=3, reprice_after_s=100)
    alice = await attached(anvil_url, ledger, 0, lagging)
    try:
        before = await ledger.balance(A.account)
        fresh._rpc("evm_setAutomine", [False])
        with pytest.raises(TransactionTimeout):
            await alice.transfer(A, B.account, TOKEN)  # T1: in the pool, not mined
        lagging.timeout_s, lagging.reprice_after_s = 30, 1.0
        tip = lagging._rpc("eth_maxPriorityFeePerGas", [])
        lagging.max_tip_wei = max(lagging.max_tip_wei, 5 * int(tip, 16))

        async def mine_twice() -> None:
            await trio.sleep(3)  # T2 looked for a gap after 1 s
            fresh._rpc("anvil_mine", ["0x1"])
            await trio.sleep(0.5)
            fresh._rpc("anvil_mine", ["0x1"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mine_twice)
            original = lagging._fees

            def risen() -> tuple[int, int]:  # the tip rose fivefold since T1
                max_fee, tip = original()
                return max_fee + 4 * tip, 5 * tip

            lagging._fees = risen  # type: ignore[method-assign]
            lagging.lagging = True  # T2's nonce read is true, its look for a gap lags
            await alice.transfer(A, B.account, 2 * TOKEN)  # T2
        fresh._rpc("evm_setAutomine", [True])
        moved = before - await ledger.balance(A.account)
        assert moved == 3 * TOKEN, f"A moved {moved / TOKEN} tokens of 3"
    finally:
        await alice.aclose()
        await ledger.aclose()
