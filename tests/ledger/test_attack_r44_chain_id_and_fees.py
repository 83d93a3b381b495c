"""Attack round 44: an EVM endpoint that lies about the chain id, and about fees.

* ``eth_chainId`` answered with another chain's id (mainnet's, 1) before a command or a
  node starts: the ledger id the node would sign vouchers for is not the contract's
  (`EvmLedger.connect` compares it with the contract's ``ledger_id()``, built from
  ``chain.id`` on chain), so nothing is signed and the command fails typed, exit 1.
  Changed while a node runs: the node read it once at its start and signs with that; it
  keeps running (held).
* ``eth_maxPriorityFeePerGas`` answered absurdly high (0.0001 ETH a gas, 100 000 gwei,
  fifty thousand times what anvil says): `Web3Chain._fees` took the tip as told, with no
  bound, and a one-shot ``p2pay stake`` paid it to the block's producer (anvil's coinbase):
  5.74 ETH against 0.00006 ETH. The tip is now at most `MAX_TIP_WEI` (settlement.md, "A
  chain that misbehaves").
Skipped without anvil.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from lying_rpc import (
    LyingRpc,
    anvil,
    cli_json,
    rpc,
    run,
    skip_without_anvil,
    staked_provider,
    start_provider,
)

from p2pay.ledger.evm import MAX_TIP_WEI

skip_without_anvil()


def test_a_wrong_chain_id_is_refused_typed_and_a_running_node_keeps_its_own(
    tmp_path: Path,
) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        staked_provider(d, rpc_url, proxy)
        proxy.lies["garble"] = {"eth_chainId": "0x1"}
        balance = run(d, "--home", "p", "balance")
        stake = run(d, "--home", "p", "stake", "1 milli")
        started = run(d, "--home", "p", "node", "run", "--listen", "/ip4/127.0.0.1/tcp/0",
                      "--service", "echo=1000", timeout=60)  # fmt: skip
        sends = proxy.counts.get("eth_sendRawTransaction", 0)
        proxy.lies["garble"] = {}
        for done in (balance, stake, started):
            assert done.returncode == 1, (done.returncode, done.stderr[-500:])
            assert "another ledger id" in done.stderr, done.stderr[-500:]
            assert "unexpected" not in done.stderr and "Traceback" not in done.stderr
        assert proxy.counts.get("eth_sendRawTransaction", 0) == sends
        node = start_provider(d)
        try:
            proxy.lies["garble"] = {"eth_chainId": "0x1"}
            time.sleep(3)  # the watcher reads the chain every 0.2 s meanwhile
            alive = node.proc.poll() is None
        finally:
            proxy.lies["garble"] = {}
            log = node.stop()
        assert alive, log[-2000:]


def test_an_absurd_priority_fee_is_not_paid(tmp_path: Path) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        staked_provider(d, rpc_url, proxy)
        address = cli_json(d, "--home", "p", "id")["account"]
        address = "0x" + address.removeprefix("0x")[-40:]
        told = int(rpc(rpc_url, "eth_maxPriorityFeePerGas", []), 16)
        before = int(rpc(rpc_url, "eth_getBalance", [address, "latest"]), 16)
        run(d, "--home", "p", "stake", "1 milli")  # a truthful transaction: what it costs
        honest = before - int(rpc(rpc_url, "eth_getBalance", [address, "latest"]), 16)
        proxy.lies["garble"] = {"eth_maxPriorityFeePerGas": hex(10**14)}
        before = int(rpc(rpc_url, "eth_getBalance", [address, "latest"]), 16)
        lied = run(d, "--home", "p", "stake", "1 milli")
        proxy.lies["garble"] = {}
        paid = before - int(rpc(rpc_url, "eth_getBalance", [address, "latest"]), 16)
        print(f"anvil's tip {told} wei/gas; honest stake cost {honest} wei; "
              f"with the lie: exit {lied.returncode}, cost {paid} wei")  # fmt: skip
        assert lied.returncode == 0, lied.stderr[-500:]
        nonce = int(rpc(rpc_url, "eth_getTransactionCount", [address, "latest"]), 16) - 1
        tips = [
            int(tx["maxPriorityFeePerGas"], 16)
            for number in range(int(rpc(rpc_url, "eth_blockNumber", []), 16), -1, -1)
            for tx in rpc(rpc_url, "eth_getBlockByNumber", [hex(number), True])["transactions"]
            if tx["from"].lower() == address.lower() and int(tx["nonce"], 16) == nonce
        ][:1]
        print(f"the lied stake's tip: {tips} wei/gas")
        # the endpoint's suggestion is taken up to MAX_TIP_WEI, never as told
        assert tips and tips[0] <= MAX_TIP_WEI, tips
        assert paid <= 100 * honest, (honest, paid)
