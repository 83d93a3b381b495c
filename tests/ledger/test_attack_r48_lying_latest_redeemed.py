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

from confirmations_support import PRICE, LatestViewLie, closed_after_three_calls

from p2pay.ledger.evm import EvmLedger, Web3Chain

pytestmark = pytest.mark.trio

K = 3


def _redeemed_is_deposit(raw: bytearray) -> None:
    raw[96:128] = raw[64:96]  # `channels(id)`: redeemed shown equal to the deposit


async def test_a_latest_reading_that_lies_does_not_keep_a_close_redeem_back(
    chain: Web3Chain, anvil_url: str
) -> None:
    lying = LatestViewLie(anvil_url, timed=True, timeout_s=30)

    def lie(ledger: EvmLedger) -> None:
        lying.aim(ledger, "channels")
        lying.lie = _redeemed_is_deposit

    ch = await closed_after_three_calls(chain, anvil_url, K, lying, lie)
    assert ch.redeemed == 3 * PRICE, f"served 3 calls, redeemed {ch.redeemed}"
