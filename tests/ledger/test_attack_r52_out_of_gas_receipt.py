"""Attack round 52 (on 295274a): a transaction that ran out of gas was sent again at twice
the limit, whatever the operation. An endpoint whose receipt lies "out of gas" (status 0,
all the gas used) about a transaction that went in then had it applied twice: a stake, a
top-up, a channel's opening, a transfer. Only an operation a second landing cannot apply
twice is sent again now (settlement.md 10, "Gas"); any other fails, out of gas (INTERNAL),
and was applied once. FAILED on 295274a (staked twice). Every wait bounded.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import TOKEN, B, attached, deployed

from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.ledger.evm import Web3Chain

pytestmark = pytest.mark.trio


class _OutOfGasReceipt(Web3Chain):
    """Once `armed`, the next receipt of a mined transaction says it reverted out of gas
    (status 0, its whole gas limit used)."""

    armed = False

    def _rpc(self, method: str, params: list[Any]) -> Any:
        out = super()._rpc(method, params)
        if method == "eth_getTransactionReceipt" and out and self.armed:
            self.armed = False
            sent = super()._rpc("eth_getTransactionByHash", [params[0]])
            out = {**out, "status": "0x0", "gasUsed": sent["gas"], "logs": []}
        return out


async def test_a_receipt_lying_out_of_gas_does_not_get_a_stake_applied_twice(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await deployed(chain)
    lying_chain = _OutOfGasReceipt(anvil_url, timed=True, timeout_s=30)
    lying = await attached(anvil_url, ledger, 0, lying_chain)
    try:
        lying_chain.armed = True
        with pytest.raises(SettlementError) as failed:
            await lying.stake(B, TOKEN, TOKEN // 10, 60_000)
        assert failed.value.code is ErrorCode.INTERNAL and "out of gas" in str(failed.value)
        stake = await ledger.stake_of(B.account)
        assert stake is not None and stake.amount == TOKEN, f"staked {stake and stake.amount}"
    finally:
        await lying.aclose()
        await ledger.aclose()
