"""Attack round 40: one garbled JSON-RPC reply ends a real `p2pay node run` on an EVM ledger.

The provider (`p2pay node run`, its own process, staked) reads anvil through `LyingRpc`,
which answers one method with a well-formed JSON-RPC reply whose ``result`` is not what the
method returns (``null``, or ``0x`` for an `eth_call`). `Web3Chain` took ``result`` as it
came: ``int(None, 16)`` raised TypeError in `head()`, iterating ``None`` in `logs()`, ABI
decoding ``0x`` raised eth_abi's decoding error in `EvmLedger._view`; none is the typed
`ChainUnavailable` the adapter promises (settlement.md: "no web3 or requests exception
reaches the node"), and the watcher's loop, which goes on after `P2payError` and `OSError`,
let it end the node: a staked provider that is down answers no claim (slashed by each).
The one-shot commands said "unexpected TypeError" instead of a chain error.

Each case garbles one method until the provider has read three such replies, then checks
the node still runs, and that ``p2pay balance`` fails with a typed error (exit 1, no
"unexpected"). On the code before the fix the node exits for ``eth_blockNumber`` and
``eth_getLogs`` at the first such reply it reads. Skipped without anvil.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from lying_rpc import LyingRpc, anvil, run, skip_without_anvil, staked_provider, start_provider

skip_without_anvil()

# what a running provider reads by itself (its watcher), and what a one-shot command reads
NODE_GARBLES = [("eth_blockNumber", None), ("eth_getLogs", None), ("eth_getBlockByNumber", None)]
CLI_GARBLES = [("eth_blockNumber", None), ("eth_call", None), ("eth_call", "0x")]


def test_garbled_replies_never_end_the_node(tmp_path: Path) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        staked_provider(d, rpc_url, proxy)
        node = start_provider(d)
        ended: list[str] = []
        try:
            for method, result in NODE_GARBLES:
                proxy.garbled.clear()
                proxy.lies["garble"] = {method: result}
                deadline = time.monotonic() + 60  # a bound, never a measure
                while proxy.garbled.get(method, 0) < 3 and node.proc.poll() is None:
                    assert time.monotonic() < deadline, f"the node never read {method}"
                    time.sleep(0.1)
                proxy.lies["garble"] = {}
                if node.proc.poll() is not None:
                    ended.append(f"{method}={result!r}")
                    node.stop()
                    node = start_provider(d)
        finally:
            log = node.stop()
        assert not ended, (ended, log[-2000:])


def test_garbled_replies_give_a_typed_error_in_one_shot_commands(tmp_path: Path) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        staked_provider(d, rpc_url, proxy)
        untyped: list[str] = []
        for method, result in CLI_GARBLES:
            proxy.lies["garble"] = {method: result}
            balance = run(d, "--home", "p", "balance")
            if balance.returncode == 0 or "unexpected" in balance.stderr:
                untyped.append(f"{method}={result!r}: {balance.stderr.strip()[-200:]}")
        proxy.lies["garble"] = {}
        assert not untyped, untyped
