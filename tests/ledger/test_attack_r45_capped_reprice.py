"""Attack round 45, held: a tip at its cap still re-prices and replaces a pending
transaction on anvil, and a node that refuses a replacement as underpriced is answered
with a few raises of the fees, then a typed error, never an unbounded tip.

* mining paused, a transaction whose first tip is the cap (`max_tip_wei` = anvil's own
  suggestion, 1 gwei) is re-priced with the same nonce, tip above the cap (re-pricing
  raises it by `fee_bump` a time, up to ``max_tip_wei x fee_bump^bumps``), and mined once
  mining resumes, with no "replacement underpriced" left unanswered;
* a transaction of the same sender and nonce already pending at a tip far above the cap
  (sent by hand, 100 gwei): the adapter's replacements are refused by anvil as underpriced;
  it raises its fees at most ``ceil(timeout_s / reprice_after_s)`` times, then fails with
  `ChainUnavailable`, and the tip it offered never passed its ceiling.
Skipped without anvil.
"""

from __future__ import annotations

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from test_evm_faults import deploy

from p2pay import testing
from p2pay.ledger.evm import ChainUnavailable, Web3Chain

pytestmark = pytest.mark.trio

_, KEYS = testing.evm_test_keys()
A, B = KEYS["ALICE"], KEYS["BOB"]
GWEI = 10**9


def _mined_of(chain: Web3Chain, sender: bytes) -> dict:
    head = chain.head()
    return [
        t
        for number in range(max(head - 3, 0), head + 1)
        for t in chain._rpc("eth_getBlockByNumber", [hex(number), True])["transactions"]
        if t["from"].lower() == "0x" + sender.hex()
    ][-1]


async def test_a_capped_tip_reprices_past_the_cap_and_is_mined(
    fresh: Web3Chain, anvil_url: str
) -> None:
    chain = Web3Chain(
        anvil_url, timed=True, timeout_s=20, reprice_after_s=0.3, poll_s=0.02, max_tip_wei=GWEI
    )
    L = await deploy(chain)
    chain._rpc("evm_setAutomine", [False])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(L.transfer, A, B.account, 7)
            while chain.stats["repriced"] < 3:  # bounded by fail_after
                await trio.sleep(0.05)
            chain._rpc("evm_setAutomine", [True])
            chain._rpc("evm_mine", [])
    assert await L.balance(B.account) == 7
    tip = int(_mined_of(chain, A.address)["maxPriorityFeePerGas"], 16)
    print(f"re-priced {chain.stats['repriced']} times; mined at tip {tip} wei/gas")
    assert GWEI < tip <= GWEI * 1.25 ** (chain.stats["repriced"] + 1)
    await L.aclose()


async def test_a_refused_replacement_raises_fees_a_few_times_then_fails_typed(
    fresh: Web3Chain, anvil_url: str
) -> None:
    chain = Web3Chain(anvil_url, timed=True, timeout_s=2, reprice_after_s=0.5, poll_s=0.02)
    L = await deploy(chain)
    chain._rpc("evm_setAutomine", [False])
    from eth_account import Account
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    nonce = int(chain._rpc("eth_getTransactionCount", ["0x" + A.address.hex(), "pending"]), 16)
    tx = {"chainId": chain.chain_id(), "nonce": nonce, "to": "0x" + "11" * 20, "value": 1,
          "gas": 21000, "maxFeePerGas": 200 * GWEI, "maxPriorityFeePerGas": 100 * GWEI}  # fmt: skip
    signed = Account.sign_transaction(tx, A.secret)
    chain._rpc("eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])
    chain._nonces[A.address] = nonce  # as if this process had lost track of its own send
    real_rpc = chain._rpc
    offered: list[int] = []

    def spy(method: str, params: list) -> object:
        if method == "eth_sendRawTransaction":
            raw = bytes.fromhex(params[0][2:])
            offered.append(
                TypedTransaction.from_bytes(HexBytes(raw)).as_dict()["maxPriorityFeePerGas"]
            )
        return real_rpc(method, params)

    chain._rpc = spy  # type: ignore[method-assign]
    chain._next_nonce = lambda address, refresh=False: nonce  # type: ignore[method-assign]
    with trio.fail_after(20), pytest.raises(ChainUnavailable) as refused:
        await L.transfer(A, B.account, 3)
    chain._rpc = real_rpc  # type: ignore[method-assign]
    print(f"{len(offered)} sends, tips offered {offered}: {refused.value}")
    assert "underpriced" in str(refused.value)
    assert len(offered) <= 5 and max(offered) <= 50 * GWEI * 1.25**4
    await L.aclose()
