"""Attack round 48: fix 4 of round 47 (`Watcher._redeemed_at_latest`) takes a redeemed
total from the LATEST block to skip a redeem. An endpoint (or one backend on an abandoned
fork) whose `eth_call ... latest` shows a channel's `redeemed` at its deposit keeps every
redeem back: a payer's close gives the payee's 3 charges back (redeemed 0). On 0e3597b,
with the same endpoint and k = 3, the payee redeemed all 3 (its redeemed total came from
readings at head - k only; row 45's rule). With k = 0 every read is the liar's, as before.
"""

from __future__ import annotations

import threading

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from p2pay import testing
from p2pay.core.errors import P2payError
from p2pay.core.evmsig import EvmKey
from p2pay.core.settlement import ChannelState
from p2pay.ledger.evm import EvmLedger, Web3Chain
from p2pay.ledger.memory import wall_clock_ms
from p2pay.node import Call, NodeConfig, open_node

pytestmark = pytest.mark.trio

DEPLOYER, _ = testing.evm_test_keys()
TOKEN, PRICE, K = 10**24, 10**18, 3
FAST = NodeConfig(watch_interval=0.1, min_challenge_ms=50, default_timeout=5.0)
PARAMS = {
    "claim_bond": 10**18,
    "min_claim_window_ms": 50,
    "min_challenge_ms": 50,
    "max_deadline_horizon_ms": 60_000,
}
A, B = EvmKey.derive(testing.ALICE), EvmKey.derive(testing.BOB)


class _LyingLatest(Web3Chain):
    """Once `lie` is set, `channels(id)` read at `latest` shows redeemed = deposit."""

    lie = False
    selector = b""

    def _rpc(self, method: str, params: list[object]) -> object:  # type: ignore[override]
        out = super()._rpc(method, params)  # type: ignore[arg-type]
        if (
            self.lie
            and method == "eth_call"
            and params[1] == "latest"
            and params[0]["data"][2:10] == self.selector.hex()  # type: ignore[index]
            and isinstance(out, str)
        ):
            raw = bytearray(bytes.fromhex(out[2:]))
            raw[96:128] = raw[64:96]
            return "0x" + raw.hex()
        return out


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_latest_reading_that_lies_does_not_keep_a_close_redeem_back(
    chain: Web3Chain, anvil_url: str
) -> None:
    alice_ledger = await EvmLedger.deploy(
        chain, DEPLOYER, dev=True, time_unit_us=1, clock=wall_clock_ms, **PARAMS
    )
    for key in (A, B):
        chain.fund(key.address)
        await alice_ledger.mint(key, key.account, 10 * TOKEN)
    chain._rpc("anvil_mine", [hex(K + 1)])
    lying = _LyingLatest(anvil_url, timed=True, timeout_s=30)
    lying.selector = alice_ledger._abi.calldata("channels", [b"\0" * 32])[:4]
    bob_ledger = await EvmLedger.connect(
        lying, alice_ledger.address, clock=wall_clock_ms, confirmations=K
    )
    stop = threading.Event()

    def mine() -> None:
        while not stop.wait(0.3):
            chain._rpc("anvil_mine", ["0x1"])

    miner = threading.Thread(target=mine, daemon=True)
    miner.start()
    try:
        async with (
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
            open_node(key=testing.ALICE, ledger=alice_ledger, config=FAST) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            info = await alice.open_channel(bob.addrs[0], deposit=10 * PRICE, challenge_ms=60_000)
            served = 0
            with trio.fail_after(60):
                while served < 3:
                    try:
                        await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
                        served += 1
                    except P2payError:
                        await trio.sleep(0.3)
            lying.lie = True
            await alice.close_channel(info.channel)
            with trio.fail_after(90):
                while True:
                    ch = await alice_ledger.channel(info.channel)
                    assert ch is not None
                    if ch.redeemed == 3 * PRICE or ch.state is ChannelState.CLOSED:
                        break
                    await trio.sleep(0.3)
            assert ch.redeemed == 3 * PRICE, f"served 3 calls, redeemed {ch.redeemed}"
    finally:
        stop.set()
        await trio.to_thread.run_sync(miner.join, 10.0)
        await bob_ledger.aclose()
        await alice_ledger.aclose()
