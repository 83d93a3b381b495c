"""The EVM adapter under faults, on anvil (issue 14 item 3): it never dies of an RPC error.

Every fault ends in a typed `P2payError` subclass (never a bare web3 or requests exception),
or is survived: a drained gas balance (`anvil_setBalance` 0) is `InsufficientGasFunds` and
nothing is sent; paused mining (`evm_setAutomine false`) makes the adapter re-price the
transaction with the same nonce until it is mined, or end with `TransactionTimeout`; an
RPC endpoint that drops, refuses or stalls requests (a small proxy on 127.0.0.1 in front
of anvil) is retried with backoff, and a lost reply to a transaction that did go in is not
sent twice. Every wait is bounded. Without anvil these tests skip and say so.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from p2pay import testing
from p2pay.core.errors import LocalProtocolError, P2payError
from p2pay.ledger.evm import (
    MAX_TIP_WEI,
    ChainUnavailable,
    EvmLedger,
    InsufficientGasFunds,
    TransactionTimeout,
    Web3Chain,
)
from p2pay.testing import ManualClock

pytestmark = pytest.mark.trio

DEPLOYER, KEYS = testing.evm_test_keys()
A, B = KEYS["ALICE"], KEYS["BOB"]
TOKEN = 10**24


async def deploy(chain: Web3Chain) -> EvmLedger:
    ledger = await EvmLedger.deploy(chain, DEPLOYER, dev=True, time_unit_us=1, clock=ManualClock())
    await ledger.mint(A, A.account, TOKEN)
    return ledger


async def test_drained_gas_is_a_typed_error_and_nothing_is_sent(
    fresh: Web3Chain, anvil_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    chain = Web3Chain(anvil_url, timed=True, timeout_s=10)
    L = await deploy(chain)
    chain.fund(A.address, 0)
    nonce = chain._rpc("eth_getTransactionCount", ["0x" + A.address.hex(), "latest"])
    with pytest.raises(InsufficientGasFunds) as drained:
        await L.transfer(A, B.account, 5)
    assert isinstance(drained.value, P2payError) and drained.value.details["balance"] == 0
    assert chain._rpc("eth_getTransactionCount", ["0x" + A.address.hex(), "latest"]) == nonce
    assert await L.balance(B.account) == 0
    # a little gas: a warning before it runs out, and the operation goes through
    chain.fund(A.address, 10**15)
    with caplog.at_level(logging.WARNING, logger="p2pay.ledger.evm"):
        await L.transfer(A, B.account, 5)
    assert await L.balance(B.account) == 5
    assert chain.stats["low_gas_warnings"] >= 1
    assert any("gas balance" in r.getMessage() for r in caplog.records)
    chain.fund(A.address)
    await L.aclose()


async def test_paused_mining_reprices_with_the_same_nonce(fresh: Web3Chain, anvil_url: str) -> None:
    chain = Web3Chain(anvil_url, timed=True, timeout_s=20, reprice_after_s=0.3, poll_s=0.02)
    L = await deploy(chain)
    chain._rpc("evm_setAutomine", [False])
    done: list[None] = []

    async def send() -> None:
        await L.transfer(A, B.account, 7)
        done.append(None)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while chain.stats["repriced"] < 2:  # bounded by fail_after
                await trio.sleep(0.05)
            chain._rpc("evm_setAutomine", [True])
            chain._rpc("evm_mine", [])
    assert done and await L.balance(B.account) == 7  # applied once
    head = chain.head()
    mined = [
        t
        for number in range(head - 2, head + 1)  # automine on mines it, evm_mine may add one
        for t in chain._rpc("eth_getBlockByNumber", [hex(number), True])["transactions"]
        if t["from"].lower() == "0x" + A.address.hex()
    ][-1]
    assert int(mined["maxFeePerGas"], 16) > int(mined["maxPriorityFeePerGas"], 16) > 0
    await L.transfer(A, B.account, 1)  # the nonce bookkeeping is right afterwards
    assert await L.balance(B.account) == 8
    await L.aclose()


async def test_a_transaction_never_mined_is_a_typed_timeout(
    fresh: Web3Chain, anvil_url: str
) -> None:
    chain = Web3Chain(anvil_url, timed=True, timeout_s=0.8, reprice_after_s=0.3, poll_s=0.02)
    L = await deploy(chain)
    chain._rpc("evm_setAutomine", [False])
    with trio.fail_after(20), pytest.raises(TransactionTimeout) as timed_out:
        await L.transfer(A, B.account, 3)
    assert isinstance(timed_out.value, P2payError) and timed_out.value.details["hashes"]
    # mining resumes: the pending transaction goes in once, and the sender carries on
    chain._rpc("evm_setAutomine", [True])
    chain._rpc("evm_mine", [])
    await L.transfer(A, B.account, 1)
    assert await L.balance(B.account) == 4
    await L.aclose()


class FlakyProxy:
    """An HTTP JSON-RPC proxy on 127.0.0.1 in front of anvil whose `plan(method)` says what
    to do with each request: "pass", "drop" (close without a reply), "502", "stall" (reply
    after the client's timeout) or "lose" (forward, then close without a reply)."""

    def __init__(self, target: str, plan: Callable[[str], str]) -> None:
        self.target, self.plan = target, plan
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                method = str(json.loads(body).get("method"))
                action = proxy.plan(method)
                proxy.seen.append((method, action))
                if action == "drop":
                    self.close_connection = True
                    return
                if action == "502":
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if action == "stall":
                    time.sleep(0.6)
                request = urllib.request.Request(
                    proxy.target, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=10) as reply:
                    data = reply.read()
                if action == "lose":
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a client that timed out first: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


async def test_a_flaky_rpc_endpoint_is_retried_and_a_lost_reply_not_resent(
    fresh: Web3Chain, anvil_url: str
) -> None:
    faults = {"count": 0}
    script = ["drop", "502", "stall", "drop"]
    mode = {"send": "pass", "all": ""}

    def plan(method: str) -> str:
        if mode["all"]:
            return mode["all"]
        if method == "eth_sendRawTransaction" and mode["send"] != "pass":
            action, mode["send"] = mode["send"], "pass"
            return action
        if faults["count"] < len(script) and method in ("eth_call", "eth_getBalance"):
            faults["count"] += 1
            return script[faults["count"] - 1]
        return "pass"

    with FlakyProxy(anvil_url, plan) as proxy:
        chain = Web3Chain(proxy.url, timed=True, timeout_s=10, rpc_timeout_s=0.3, rpc_retries=4)
        with trio.fail_after(60):
            L = await deploy(chain)
            assert faults["count"] == len(script) and chain.stats["rpc_retries"] >= len(script)
            # the reply to the transaction itself is lost after anvil took it
            mode["send"] = "lose"
            await L.transfer(A, B.account, 9)
            assert ("eth_sendRawTransaction", "lose") in proxy.seen
            assert await L.balance(B.account) == 9  # applied once, not twice
            # an endpoint that never answers: a typed error, then recovery
            mode["all"] = "drop"
            with pytest.raises(ChainUnavailable):
                await L.transfer(A, B.account, 1)
            mode["all"] = ""
            await L.transfer(A, B.account, 1)
            assert await L.balance(B.account) == 10
        await L.aclose()


async def test_nonce_races_and_dropped_transactions(fresh: Web3Chain, anvil_url: str) -> None:
    """Another process sending with the same key, and a timed-out transaction the node then
    drops: the next operation still finds a usable nonce."""
    from eth_account import Account
    from eth_utils import to_checksum_address

    chain = Web3Chain(anvil_url, timed=True, timeout_s=0.6, reprice_after_s=0.3, poll_s=0.02)
    L = await deploy(chain)
    await L.transfer(A, B.account, 1)  # the chain caches A's next nonce
    # another process with A's key sends a plain transaction (a nonce the cache lacks)
    nonce = int(chain._rpc("eth_getTransactionCount", ["0x" + A.address.hex(), "pending"]), 16)
    tx = {
        "chainId": chain.chain_id(),
        "nonce": nonce,
        "gas": 21_000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 1,
        "to": to_checksum_address("0x" + B.address.hex()),
        "value": 1,
        "data": b"",
    }
    raw = bytes(Account.sign_transaction(tx, A.secret).raw_transaction)
    chain._rpc("eth_sendRawTransaction", ["0x" + raw.hex()])
    await L.transfer(A, B.account, 1)
    assert await L.balance(B.account) == 2
    # a transaction that times out and is then dropped by the node: its nonce is reused
    chain._rpc("evm_setAutomine", [False])
    with trio.fail_after(20), pytest.raises(TransactionTimeout):
        await L.transfer(A, B.account, 100)
    chain._rpc("anvil_dropAllTransactions", [])
    chain._rpc("evm_setAutomine", [True])
    with trio.fail_after(20):
        await L.transfer(A, B.account, 1)
    assert await L.balance(B.account) == 3  # the dropped one never happened
    await L.aclose()


async def test_a_tip_bound_below_one_wei_is_refused() -> None:
    """`max_tip_wei` bounds the tip an endpoint suggests (settlement.md, "A chain that
    misbehaves"); a bound under 1 wei would leave no tip to pay."""
    for bad in (0, -1):
        with pytest.raises(LocalProtocolError, match="max_tip_wei"):
            Web3Chain("http://127.0.0.1:9", max_tip_wei=bad)
    assert Web3Chain("http://127.0.0.1:9").max_tip_wei == MAX_TIP_WEI
