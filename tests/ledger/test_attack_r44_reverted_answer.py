"""Attack round 44: a claim answer that reverted on chain, reported as a success, does not
get an honest provider slashed.

The provider (`p2pay node run`, staked, serving ``echo``) reads and writes anvil through
`LyingRpc`. When a claim is filed against it, the endpoint answers its first `LIES`
`eth_estimateGas` calls with 1 (the gas limit is then ``1 * 13 // 10 + 50_000``: the answer
runs out of gas on chain and reverts, nonce used) and every receipt it is asked for with
status 1 whatever the chain says (the reverted answer's logs are empty, as a revert's are).
The node must not take the answer as made: the claim is still OPEN on chain. Skipped
without anvil.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from lying_rpc import LyingRpc, anvil, staked_provider, start_provider

from p2pay import testing
from p2pay.core.evmsig import EvmKey
from p2pay.core.messages import Request
from p2pay.core.settlement import ClaimState
from p2pay.ledger.evm import EvmLedger, Web3Chain

pytestmark = pytest.mark.trio

ALICE = testing.ALICE
PRICE = 1000
TOKEN = 10**24
LIES = 3

if testing.anvil_binary() is None:
    pytest.skip(
        "anvil not found: npm install @foundry-rs/anvil (.ci/run does) or set P2PAY_ANVIL",
        allow_module_level=True,
    )


async def test_a_reverted_answer_reported_as_success_is_answered_again(
    tmp_path: Path,
) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        contract, provider = staked_provider(d, rpc_url, proxy)
        node = start_provider(d)
        ledger: EvmLedger | None = None
        try:
            ledger = await EvmLedger.connect(Web3Chain(rpc_url), bytes.fromhex(contract[2:]))
            alice = EvmKey.derive(ALICE)
            ledger.chain.fund(alice.address)  # type: ignore[attr-defined]
            await ledger.mint(ALICE, alice.account, TOKEN)
            cid = await ledger.open_channel(ALICE, provider, 10**21, 60_000)
            now = await ledger.now()
            request = Request.create(
                ALICE,
                ledger=ledger.ledger_id,
                channel=cid,
                n=1,
                paid=PRICE,
                price=PRICE,
                service="echo",
                body=b"claimed",
                deadline=now - 1,
            )
            proxy.lies["once"] = {"eth_estimateGas": ["0x1"] * LIES}
            reverted: list[str] = []  # receipts whose true status was 0, answered 1

            def succeeded(r: dict[str, str] | None) -> dict[str, str] | None:
                if r and r["status"] != "0x1":
                    reverted.append(r["transactionHash"])
                return r and {**r, "status": "0x1"}

            proxy.lies["rewrite"] = {"eth_getTransactionReceipt": succeeded}
            claim_id = await ledger.file_claim(ALICE, request)
            with trio.fail_after(90):  # the 20 s window and then some
                while True:
                    claim = await ledger.claim(claim_id)
                    assert claim is not None
                    if claim.state is not ClaimState.OPEN:
                        break
                    if await ledger.now() > claim.window_ends + 2000:
                        await ledger.resolve_claim(ALICE, claim_id)
                    else:
                        await trio.sleep(0.5)
            lied = proxy.garbled.get("eth_estimateGas", 0)
            stake = await ledger.stake_of(provider)
            totals = await ledger.totals()
        finally:
            log = node.stop()
            if ledger is not None:
                await ledger.aclose()
        assert totals.conserved
        assert lied == LIES, lied  # the provider did try to answer under the lie
        assert reverted, "no answer reverted: the lie was never told"
        assert "answered again" in log, log[-3000:]
        assert claim.state is ClaimState.DELIVERED, (claim.state, claim.slashed, log[-3000:])
        assert stake is not None and stake.amount == TOKEN // 2
