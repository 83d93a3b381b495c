"""Attack round 52 (on 295274a): since attack round 51 a provider let a claim against it go
as soon as its reading at ``head - k`` showed the claim ended, whatever the latest block
showed, and read the claim there before its first answer. So one lying reading at
``head - k`` (the claim DELIVERED while it is OPEN on chain), or one that fails (a block
the endpoint says it lacks), kept every answer back: UPHELD, an honest provider slashed,
where before the latest block's OPEN was answered. Now that reading lets a claim go only
once the provider has answered it (the stale latest block of round 51), a claim is OPEN if
either reading says so until then, and a failed reading at ``head - k`` falls back on a
latest block that shows it OPEN. Both FAILED on 295274a (UPHELD). k = 3, a block every
0.3 s, a 20 s window; every wait bounded.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    FAST,
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
from p2pay.ledger.evm import EvmLedger, RpcErrorReply, Web3Chain
from p2pay.node import open_node

pytestmark = pytest.mark.trio

K = 3


class _ConfirmedClaimLie(Web3Chain):
    """Every `claims(id)` read at a block number is answered with the claim DELIVERED
    (`mode` "delivered"), or refused as a block the endpoint lacks ("unreadable"); every
    other reply, the latest block's reads included, is true."""

    selector = ""
    mode = "delivered"

    def _rpc(self, method: str, params: list[Any]) -> Any:
        aimed = (
            method == "eth_call"
            and params[1] != "latest"
            and params[0].get("data", "")[2:10] == self.selector
        )
        if aimed and self.mode == "unreadable":
            raise RpcErrorReply({"code": -32000, "message": "BlockOutOfRange"})
        out = super()._rpc(method, params)
        if aimed and isinstance(out, str) and len(out) >= 2 + 2 * 352:
            raw = bytearray(bytes.fromhex(out[2:]))
            raw[320:352] = (2).to_bytes(32, "big")  # state: DELIVERED
            out = "0x" + raw.hex()
        return out


@pytest.mark.parametrize("mode", ["delivered", "unreadable"])
async def test_one_lying_confirmed_reading_does_not_keep_an_answer_back(
    chain: Web3Chain, anvil_url: str, mode: str
) -> None:
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    lying = _ConfirmedClaimLie(anvil_url, timed=True, timeout_s=30)
    lying.mode = mode
    bob_ledger: EvmLedger = await attached(anvil_url, ledger, K, lying)
    lying.selector = bob_ledger._abi.functions["claims"][0].hex()
    try:
        async with (
            miner(anvil_url, 0.3),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
        ):
            bob.serve("echo", echo, price=PRICE)
            claim_id = await ledger.file_claim(A, await never_sent(ledger, channel))
            claim = await outcome(ledger, claim_id)
            print(f"{mode}: outcome {claim.state.name}, answers {bob.counters.claims_answered}")
            assert claim.state is ClaimState.DELIVERED and claim.slashed == 0, claim.state
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()
