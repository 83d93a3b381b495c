"""Attack round 45: an endpoint that answers "replacement transaction underpriced" to a send
inflates the tip a node pays, past `max_tip_wei`, with no wait and no bound but the loop's.

`Web3Chain.transact` raises both fees by `fee_bump` (1.25) at every "underpriced" reply and
sends again at once, up to 64 rounds: the tip cap of attack round 44 (`MAX_TIP_WEI`) bounds
only the first tip. The endpoint here answers the first `LIES` sends of one ``p2pay stake``
with that error (never forwarding them), then relays the next one: the tip is then
``tip x 1.25^LIES`` a gas, paid to the block's producer. With the tip suggested at 100,000
gwei (taken as 50 gwei) and 50 such replies, one stake paid 201 ETH of the 1000 its address
held, against 0.00006 ETH told the truth. settlement.md ("A chain that
misbehaves") bounds what a lying endpoint takes in tips at ``max_tip_wei x fee_bump^k``, `k`
the re-pricings within `timeout_s` (15 s apart, 60 s: 4). Measured on anvil directly (not
through the proxy), against an honest ``p2pay stake`` of the same amount. Skipped without
anvil.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from lying_rpc import LyingRpc, anvil, cli_json, rpc, run, skip_without_anvil, staked_provider

from p2pay.ledger.evm import MAX_TIP_WEI

skip_without_anvil()

LIES = 50  # 1.25^50 ~ 70,000: the tip of a capped 50 gwei becomes ~3.5 million gwei


class UnderpricedRpc(LyingRpc):
    """`LyingRpc` that also answers the next ``lies["underpriced"]`` sends with the error
    reply a node gives a replacement too cheap (counted down, never forwarded)."""

    def handle(self, doc: dict[str, Any]) -> dict[str, Any]:
        if doc.get("method") == "eth_sendRawTransaction" and self.lies.get("underpriced", 0) > 0:
            self.lies["underpriced"] -= 1
            self.counts["underpriced"] = self.counts.get("underpriced", 0) + 1
            error = {"code": -32000, "message": "replacement transaction underpriced"}
            return {"jsonrpc": "2.0", "id": doc.get("id"), "error": error}
        return super().handle(doc)


def _last_tip(rpc_url: str, address: str) -> int | None:
    nonce = int(rpc(rpc_url, "eth_getTransactionCount", [address, "latest"]), 16) - 1
    for number in range(int(rpc(rpc_url, "eth_blockNumber", []), 16), -1, -1):
        for tx in rpc(rpc_url, "eth_getBlockByNumber", [hex(number), True])["transactions"]:
            if tx["from"].lower() == address.lower() and int(tx["nonce"], 16) == nonce:
                return int(tx["maxPriorityFeePerGas"], 16)
    return None


def test_underpriced_replies_do_not_raise_the_tip_past_its_bound(tmp_path: Path) -> None:
    d = tmp_path
    with anvil() as rpc_url, UnderpricedRpc(rpc_url) as proxy:
        staked_provider(d, rpc_url, proxy)
        address = cli_json(d, "--home", "p", "id")["account"]
        address = "0x" + address.removeprefix("0x")[-40:]

        def balance() -> int:
            return int(rpc(rpc_url, "eth_getBalance", [address, "latest"]), 16)

        before = balance()
        run(d, "--home", "p", "stake", "1 milli")  # a truthful transaction: what it costs
        honest = before - balance()
        honest_tip = _last_tip(rpc_url, address)
        # the tip suggested absurdly high too (taken up to MAX_TIP_WEI), then LIES refusals
        proxy.lies["garble"] = {"eth_maxPriorityFeePerGas": hex(10**14)}
        proxy.lies["underpriced"] = LIES
        before = balance()
        lied = run(d, "--home", "p", "stake", "1 milli")
        paid = before - balance()
        proxy.lies["garble"] = {}
        tip = _last_tip(rpc_url, address)
        print(f"honest stake: {honest} wei (tip {honest_tip}/gas); after "
              f"{proxy.counts.get('underpriced', 0)} 'underpriced' replies: exit "
              f"{lied.returncode}, {paid} wei (tip {tip}/gas)")  # fmt: skip
        # the bound settlement.md states: max_tip_wei x fee_bump^k, k <= 60 s / 15 s
        bound = MAX_TIP_WEI * 1.25**5
        assert tip is None or tip <= bound, (tip, bound)
        assert paid <= 1000 * honest, (honest, paid)
        # refused at last, typed: exit 1, no traceback
        assert lied.returncode in (0, 1), lied.stderr[-500:]
        assert "Traceback" not in lied.stderr and "unexpected" not in lied.stderr, lied.stderr
        print(lied.stderr[-300:])
