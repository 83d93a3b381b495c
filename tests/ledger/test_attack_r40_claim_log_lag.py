"""Attack round 40: an EVM endpoint whose log backend lags one block got an honest
provider slashed (a real `p2pay node run` on anvil, behind a lying JSON-RPC proxy).

The provider (`p2pay node run`, its own process, staked, serving ``echo``) reads the chain
through `LyingRpc` with ``logs_lag``: `eth_getLogs` leaves out the logs of the newest block
it is asked for, everything else is true (a load-balanced endpoint whose log backend is one
block behind its head backend; anvil mines a block a second, as a live chain does). The
client, on anvil directly, opens a channel and files a claim for a paid request it signed;
an honest provider serves it through the claim and answers (DELIVERED, claims.md C-1).
`EvmLedger._sync` moved its block cursor to ``eth_blockNumber`` whatever `eth_getLogs`
returned, so the ClaimFiled log it was not shown was never asked for again: the watcher
never learnt of the claim (its list of claims against it and the claim's request frame both
come from the logs), the window ended and the claim was UPHELD (slashed 0.1 token) on
b424d15. A sync now reads the last `RESCAN_BLOCKS` blocks again (settlement.md 10): the
claim is answered, DELIVERED. Skipped without anvil.
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

ALICE = testing.ALICE  # the client (its derived EVM key settles)
PRICE = 1000
TOKEN = 10**24
PENALTY = TOKEN // 10

if testing.anvil_binary() is None:
    pytest.skip(
        "anvil not found: npm install @foundry-rs/anvil (.ci/run does) or set P2PAY_ANVIL",
        allow_module_level=True,
    )


async def test_a_lagging_log_backend_does_not_get_an_honest_provider_slashed(
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
            proxy.lies["logs_lag"] = True  # from here on the provider's logs lag a block
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
            claim_id = await ledger.file_claim(ALICE, request)
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.OPEN
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
            stake = await ledger.stake_of(provider)
            totals = await ledger.totals()
        finally:
            log = node.stop()
            if ledger is not None:
                await ledger.aclose()
        assert totals.conserved
        # an honest provider answers every claim: delivered, never slashed (claims.md C-1)
        assert claim.state is ClaimState.DELIVERED, (claim.state, claim.slashed, log[-3000:])
        assert stake is not None and stake.amount == TOKEN // 2
