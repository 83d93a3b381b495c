"""Attack round 47 (a helper's, on 8b6ca87): a payee whose EVM ledger has `confirmations`
and a payer's close (settlement.md 10, "Confirmations"); a block every 0.3 s.

* A payer's close: the payee's watcher sent a redeem at every step until its redeemed
  total was K blocks deep, each one after the first paying 0 and costing gas (8 for one
  close); now a redeem the latest block shows done is not sent again.
* One lagging backend whose latest block is stale: every read at ``head - K`` was stale,
  round 37's read of each owed channel included, and a close hidden from it lost the
  charges; now that read is of the latest block.
* An endpoint that cannot read past blocks (not an archive node): the forced redeem on a
  close came after a re-read of the channel that failed at every step, so none was sent;
  now it is sent all the same.

Each FAILED on 8b6ca87. (The round's other findings are in test_evm_confirmations.py.)
Every wait bounded; the challenge periods are long, and a test waits for the redeem, not
for the close's end, so a loaded machine only makes them slower.
"""

from __future__ import annotations

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    FAST,
    PRICE,
    attached,
    closed_after_three_calls,
    deployed,
    echo,
    mine,
    miner,
    served,
)

from p2pay import testing
from p2pay.core.settlement import ChannelState
from p2pay.ledger.evm import EvmLedger, RpcErrorReply, Web3Chain
from p2pay.node import open_node

pytestmark = pytest.mark.trio

K = 10
BLOCK_S = 0.3


async def test_a_payers_close_costs_the_payee_one_redeem_not_one_a_step(
    chain: Web3Chain, anvil_url: str
) -> None:
    alice_ledger = await deployed(chain)
    mine(chain, K + 1)
    bob_ledger = await attached(anvil_url, alice_ledger, K)
    try:
        async with (
            miner(anvil_url, BLOCK_S),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
            open_node(key=testing.ALICE, ledger=alice_ledger, config=FAST) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            info = await alice.open_channel(bob.addrs[0], deposit=100 * PRICE, challenge_ms=20_000)
            await served(alice, bob)
            await alice.close_channel(info.channel)
            with trio.fail_after(90):
                while True:
                    ch = await alice_ledger.channel(info.channel)
                    if ch is not None and ch.state is ChannelState.CLOSED:
                        break
                    await trio.sleep(0.5)
            await trio.sleep(K * BLOCK_S + 2)
            assert ch.redeemed == 3 * PRICE
            sent = bob_ledger.gas_used.get("redeem", [])
            assert len(sent) <= 2, f"{len(sent)} redeem transactions (gas {sent}) for one close"
    finally:
        await bob_ledger.aclose()
        await alice_ledger.aclose()


class _LaggingLatest(Web3Chain):
    """`eth_getBlockByNumber("latest")` reports block `frozen`'s number once set (one
    lagging backend); every other reply is true."""

    frozen: int | None = None

    def _rpc(self, method: str, params: list[object]) -> object:  # type: ignore[override]
        out = super()._rpc(method, params)  # type: ignore[arg-type]
        if method == "eth_getBlockByNumber" and params[0] == "latest" and self.frozen is not None:
            assert isinstance(out, dict)
            out = dict(out, number=hex(self.frozen))
        return out


async def test_a_lagging_latest_block_hides_a_close_from_the_owed_channel_read(
    chain: Web3Chain, anvil_url: str
) -> None:
    """With K = 0 the same endpoint costs nothing: round 37's read of each owed channel
    (at the latest block) sees the close ("is closing: no event said so") and redeems.
    With K = 3 that read was at the lagging head - 3 too: nothing redeemed, 3 calls lost."""
    k = 3
    lagging = _LaggingLatest(anvil_url, timed=True, timeout_s=30)

    def freeze(_: EvmLedger) -> None:
        mine(chain, k + 1)
        lagging.frozen = int(chain._rpc("eth_blockNumber", []), 16)

    ch = await closed_after_three_calls(chain, anvil_url, k, lagging, freeze, BLOCK_S)
    assert ch.redeemed == 3 * PRICE, f"served 3 calls, redeemed {ch.redeemed}"


class _NoPastState(Web3Chain):
    """Refuses `eth_call` at a block number once `refuse` is set ("missing trie node": an
    endpoint that is not an archive node); `latest`, logs and transactions still work."""

    refuse = False

    def _rpc(self, method: str, params: list[object]) -> object:  # type: ignore[override]
        if self.refuse and method == "eth_call" and params[1] != "latest":
            raise RpcErrorReply({"code": -32000, "message": "missing trie node"})
        return super()._rpc(method, params)  # type: ignore[arg-type]


async def test_a_close_is_redeemed_even_when_the_channel_cannot_be_read_again(
    chain: Web3Chain, anvil_url: str
) -> None:
    """The payee sees the ChannelClosing (logs) but its re-read of the channel at head - K
    fails ChainUnavailable at every step; `Watcher._defend_closes` then skipped the forced
    redeem (which, a transaction at the latest block, succeeds): nothing redeemed."""
    no_past = _NoPastState(anvil_url, timed=True, timeout_s=30)

    def refuse(_: EvmLedger) -> None:
        no_past.refuse = True

    ch = await closed_after_three_calls(chain, anvil_url, 3, no_past, refuse, BLOCK_S)
    assert ch.redeemed == 3 * PRICE, f"served 3 calls, redeemed {ch.redeemed}"
