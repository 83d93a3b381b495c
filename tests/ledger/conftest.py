"""Fixtures of the EVM ledger tests: anvil (a real JSON-RPC node) on 127.0.0.1.

anvil comes from the npm package ``@foundry-rs/anvil`` (.ci/run installs it and puts it on
PATH; set P2PAY_ANVIL to its path otherwise). `anvil_url` starts one anvil per module on a
free port and stops it by its PID; `chain` snapshots the chain before a test and reverts to
it afterwards; `fresh` also turns automine back on. Without anvil the tests using them
skip and say so.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from p2pay import testing

web3 = pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from p2pay.ledger.evm import Web3Chain  # noqa: E402

DEPLOYER, EVM_KEYS = testing.evm_test_keys()


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    binary = testing.anvil_binary()
    if binary is None:
        pytest.skip(
            "anvil not found: npm install @foundry-rs/anvil (.ci/run does) or set P2PAY_ANVIL"
        )
    try:
        with testing.running_anvil(binary) as url:
            chain = Web3Chain(url, timed=True, timeout_s=5)
            for key in (DEPLOYER, *EVM_KEYS.values()):
                chain.fund(key.address)
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def chain(anvil_url: str) -> Iterator[Web3Chain]:
    chain = Web3Chain(anvil_url, timed=True, timeout_s=30)
    snapshot = chain._rpc("evm_snapshot", [])
    try:
        yield chain
    finally:
        chain._rpc("evm_revert", [snapshot])


@pytest.fixture
def fresh(chain: Web3Chain) -> Iterator[Web3Chain]:
    """`chain`, with mining restored after the test (tests that turn automine off)."""
    try:
        yield chain
    finally:
        chain._rpc("evm_setAutomine", [True])
