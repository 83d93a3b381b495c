"""Attack round 45: an endpoint that hides the receipt of a mined transaction gets the
operation applied twice.

One ``p2pay stake 1 milli`` through `LyingRpc`: its first send is forwarded and mined, but
the endpoint answers ``null`` to every `eth_getTransactionReceipt` of that hash (a receipt
backend lagging its head backend, as load-balanced endpoints' do, or a lie). After
`reprice_after_s` (15 s) `Web3Chain.transact` re-sends it with the same nonce; the chain
answers "nonce too low"; no receipt of any of its hashes is served, so the adapter took the
nonce as taken by another process with the same key and sent the same operation again under
the next nonce: mined, its receipt served, the command exits 0, and the address staked
2 milli (two transactions mined) for a command that staked 1. A send of this very operation
that the endpoint had accepted may be the one that took the nonce: it must not be sent
again under another. Skipped without anvil.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from lying_rpc import LyingRpc, anvil, cli_json, rpc, run, skip_without_anvil, staked_provider

skip_without_anvil()

MILLI = 10**21


class HidingRpc(LyingRpc):
    """`LyingRpc` that, with ``lies["hide_first"]``, forwards the next send and answers
    ``null`` to every receipt asked for that transaction's hash."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.hidden: set[str] = set()

    def handle(self, doc: dict[str, Any]) -> dict[str, Any]:
        method = doc.get("method")
        if method == "eth_sendRawTransaction" and self.lies.get("hide_first"):
            from eth_utils.crypto import keccak

            self.lies["hide_first"] = False
            self.hidden.add("0x" + keccak(bytes.fromhex(doc["params"][0][2:])).hex())
        if method == "eth_getTransactionReceipt" and doc["params"][0] in self.hidden:
            self.garbled[method] = self.garbled.get(method, 0) + 1
            return {"jsonrpc": "2.0", "id": doc.get("id"), "result": None}
        return super().handle(doc)


def test_a_hidden_receipt_does_not_get_the_operation_applied_twice(tmp_path: Path) -> None:
    d = tmp_path
    with anvil() as rpc_url, HidingRpc(rpc_url) as proxy:
        staked_provider(d, rpc_url, proxy)
        address = cli_json(d, "--home", "p", "id")["account"]
        address = "0x" + address.removeprefix("0x")[-40:]

        def sent() -> int:
            return int(rpc(rpc_url, "eth_getTransactionCount", [address, "latest"]), 16)

        staked = int(cli_json(d, "--home", "p", "balance")["staked"])
        before = sent()
        proxy.lies["hide_first"] = True
        done = run(d, "--home", "p", "stake", "1 milli", timeout=180)
        proxy.lies = {}
        mined = sent() - before
        added = int(cli_json(d, "--home", "p", "balance")["staked"]) - staked
        print(f"exit {done.returncode}; {mined} transactions mined; staked +{added} "
              f"({proxy.garbled} receipts hidden)\n{done.stderr[-400:]}")  # fmt: skip
        assert mined == 1 and added == MILLI, (mined, added)
        # told what it does not know as a typed error (or success), never a traceback
        assert done.returncode in (0, 1), done.stderr[-500:]
        assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
