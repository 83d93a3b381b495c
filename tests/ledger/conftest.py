"""Fixtures of the EVM ledger tests: anvil (a real JSON-RPC node) on 127.0.0.1.

anvil comes from the npm package ``@foundry-rs/anvil`` (.ci/run installs it and puts it on
PATH; set P2PAY_ANVIL to its path otherwise). `anvil_url` starts one anvil per module on a
free port and stops it by its PID; `chain` snapshots the chain before a test and reverts to
it afterwards. Without anvil the tests using them skip and say so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from p2pay import testing

web3 = pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from p2pay.ledger.evm import Web3Chain  # noqa: E402

DEPLOYER, EVM_KEYS = testing.evm_test_keys()


def _anvil_binary() -> str | None:
    return os.environ.get("P2PAY_ANVIL") or shutil.which("anvil")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    binary = _anvil_binary()
    if binary is None:
        pytest.skip(
            "anvil not found: npm install @foundry-rs/anvil (.ci/run does) or set P2PAY_ANVIL"
        )
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent", "--chain-id", "31337"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        chain = Web3Chain(url, timed=True, timeout_s=5)
        while True:  # bounded by the deadline
            try:
                chain.chain_id()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"anvil did not start on {url}")
                time.sleep(0.1)
        for key in (DEPLOYER, *EVM_KEYS.values()):
            chain.fund(key.address)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def chain(anvil_url: str) -> Iterator[Web3Chain]:
    chain = Web3Chain(anvil_url, timed=True, timeout_s=30)
    snapshot = chain._rpc("evm_snapshot", [])
    try:
        yield chain
    finally:
        chain._rpc("evm_revert", [snapshot])
