"""Attack round 53 (on 78b0b0f): once a provider had answered a claim, one reading at
``head - k`` that showed it ended made the claim final (`_final`: no rescan read it again).
An endpoint that lied so once, right after the answer, and a reorganisation shallower than
k that then dropped the answer left the claim OPEN on chain and never answered again:
UPHELD, an honest provider slashed (on 295274a the rescan read it OPEN again and answered
it a second time). Now such a reading lets the answer task go and no more: a rescan starts
it again, and it answers again if both readings show the claim OPEN. FAILED on 78b0b0f.
k = 6, a 30 s window, a watcher step every 0.5 s (a rescan every 10 s); every wait bounded.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    PRICE,
    TOKEN,
    A,
    B,
    attached,
    deployed,
    echo,
    mine,
    miner,
    never_sent,
    outcome,
)

from p2pay import testing
from p2pay.core.settlement import ClaimState
from p2pay.ledger.evm import Web3Chain
from p2pay.node import NodeConfig, open_node

pytestmark = pytest.mark.trio

K = 6
CONFIG = NodeConfig(watch_interval=0.5, min_challenge_ms=50, default_timeout=5.0)


class _OneLieAfterTheAnswer(Web3Chain):
    """Once an answer is sent, the next `claims(id)` read at a block number that shows the
    claim OPEN is answered with it DELIVERED; every other reply is true."""

    claims = ""
    answer = ""
    armed = False
    lies = 0

    def _rpc(self, method: str, params: list[Any]) -> Any:
        if method == "eth_sendRawTransaction" and self.answer in params[0]:
            self.armed = True
        aimed = (
            method == "eth_call"
            and params[1] != "latest"
            and params[0].get("data", "")[2:10] == self.claims
        )
        out = super()._rpc(method, params)
        if aimed and self.armed and self.lies == 0 and isinstance(out, str):
            raw = bytearray(bytes.fromhex(out[2:]))
            if len(raw) >= 352 and raw[320:352] == (1).to_bytes(32, "big"):  # OPEN
                raw[320:352] = (2).to_bytes(32, "big")  # DELIVERED
                self.lies += 1
                out = "0x" + raw.hex()
        return out


async def test_one_lie_that_an_answered_claim_ended_and_a_reorg_get_no_one_slashed(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 30_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    claim_id = await ledger.file_claim(A, await never_sent(ledger, channel))
    mine(chain, K + 1)  # the claim is confirmed before BOB's node starts
    before = chain._rpc("evm_snapshot", [])
    bob_chain = _OneLieAfterTheAnswer(anvil_url, timed=True, timeout_s=30)
    bob_ledger = await attached(anvil_url, ledger, K, bob_chain)
    bob_chain.claims = bob_ledger._abi.functions["claims"][0].hex()
    bob_chain.answer = bob_ledger._abi.functions["answer_claim"][0].hex()
    try:
        async with open_node(key=testing.BOB, ledger=bob_ledger, config=CONFIG) as bob:
            bob.serve("echo", echo, price=PRICE)
            with trio.fail_after(30):  # BOB answers (automine: one block)
                while (seen := await ledger.claim(claim_id)) is None or (
                    seen.state is ClaimState.OPEN
                ):
                    await trio.sleep(0.05)
            await trio.sleep(2)  # his answer task reads the lie and lets the claim go
            assert bob_chain.lies == 1
            chain._rpc("evm_revert", [before])  # fewer than K blocks: his answer dropped
            # anvil's revert drops the answer for good: his cached nonce is past a gap
            # (test_evm_nonce_gap.py), which is not what this test is about
            bob_chain._nonces.clear()
            again = await ledger.claim(claim_id)
            assert again is not None and again.state is ClaimState.OPEN
            async with miner(anvil_url, 0.5):
                claim = await outcome(ledger, claim_id, timeout=70)
            print(f"outcome {claim.state.name}; answers {bob.counters.claims_answered}")
            assert claim.state is ClaimState.DELIVERED and claim.slashed == 0, claim.state
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()
