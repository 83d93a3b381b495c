"""Attack round 48: fix 4 of round 47 (`Watcher._redeemed_at_latest`) takes a redeemed
total from the LATEST block to skip a redeem. An endpoint (or one backend on an abandoned
fork) whose `eth_call ... latest` shows a channel's `redeemed` at its deposit keeps every
redeem back: a payer's close gives the payee's 3 charges back (redeemed 0). On 0e3597b,
with the same endpoint and k = 3, the payee redeemed all 3 (its redeemed total came from
readings at head - k only; row 45's rule). With k = 0 every read is the liar's, as before.
"""

from __future__ import annotations

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    FAST,
    PRICE,
    attached,
    deployed,
    echo,
    mine,
    miner,
    redeemed_or_closed,
    served,
)

from p2pay import testing
from p2pay.ledger.evm import Web3Chain
from p2pay.node import open_node

pytestmark = pytest.mark.trio

K = 3


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


async def test_a_latest_reading_that_lies_does_not_keep_a_close_redeem_back(
    chain: Web3Chain, anvil_url: str
) -> None:
    alice_ledger = await deployed(chain)
    mine(chain, K + 1)
    lying = _LyingLatest(anvil_url, timed=True, timeout_s=30)
    lying.selector = alice_ledger._abi.calldata("channels", [b"\0" * 32])[:4]
    bob_ledger = await attached(anvil_url, alice_ledger, K, lying)
    try:
        async with (
            miner(anvil_url, 0.3),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
            open_node(key=testing.ALICE, ledger=alice_ledger, config=FAST) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            info = await alice.open_channel(bob.addrs[0], deposit=100 * PRICE, challenge_ms=60_000)
            await served(alice, bob)
            lying.lie = True
            await alice.close_channel(info.channel)
            ch = await redeemed_or_closed(alice_ledger, info.channel, 3 * PRICE)
            assert ch.redeemed == 3 * PRICE, f"served 3 calls, redeemed {ch.redeemed}"
    finally:
        await bob_ledger.aclose()
        await alice_ledger.aclose()
