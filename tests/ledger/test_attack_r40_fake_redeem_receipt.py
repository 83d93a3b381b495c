"""Attack round 40: a redeem the endpoint acknowledged and that never landed is never
redeemed again: an honest provider loses what it charged on a channel the client closes.

The provider (`p2pay node run`, its own process) reads and writes anvil through
`LyingRpc`; the client (``p2pay`` one-shot commands, anvil directly) opens a channel, makes
two paid calls and closes it with a 30 s challenge period. The provider's watcher redeems
at the close (claims.md C-8). The proxy lies about that one transaction only: it answers
`eth_sendRawTransaction` with the hash, never forwards it, and answers its receipt with
status 1 (a transaction dropped after being accepted, or mined in a block a reorg took
away). From then on it is truthful. `Watcher._redeem_now` then sets the channel's
``redeemed`` to what it meant to redeem, without the ledger's word, and
`ChannelBook.refresh_channel` keeps the larger of that and the ledger's reading, so the
channel owes nothing in the provider's view: it never redeems again, reads of the ledger
(``redeemed = 0``) notwithstanding, and the close ends with the charges given back to the
client.

On the code before the fix the channel closes with 0 redeemed of the 2000 yocto the
provider charged (the same run with nothing dropped redeems both; not kept as a test of
its own: a minute and a half of two nodes on anvil, and the other anvil node tests hold
it). Skipped without anvil.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from lying_rpc import (
    LyingRpc,
    anvil,
    cli,
    cli_json,
    skip_without_anvil,
    staked_provider,
    start_provider,
)

from p2pay.core.settlement import Channel, ChannelState
from p2pay.ledger.base import Totals
from p2pay.ledger.evm import EvmLedger, Web3Chain

skip_without_anvil()

PRICE = 1000


def test_an_acknowledged_redeem_that_never_landed_is_redeemed_again(tmp_path: Path) -> None:
    d = tmp_path
    with anvil() as rpc_url, LyingRpc(rpc_url) as proxy:
        contract, _ = staked_provider(d, rpc_url, proxy)
        cli(d, "--home", "c", "init", "--ledger", f"evm:{rpc_url}:{contract}")
        account = cli_json(d, "--home", "c", "id")["account"]
        cli(d, "--home", "c", "ledger", "mint", account, "1 token", "--fund-dev-gas")
        node = start_provider(d)
        try:
            peer = node.addr
            opened = cli_json(d, "--home", "c", "channel", "open", peer,
                              "--deposit", "1 milli", "--challenge", "30s")  # fmt: skip
            channel = opened["channel"]
            for i in range(2):
                cli(d, "--home", "c", "call", peer, "echo", f"hi {i}", "--max-price", str(PRICE))
            proxy.lies["fake_receipts"] = True
            proxy.lies["drop_sends"] = 1  # the provider's next transaction: its redeem
            cli(d, "--home", "c", "channel", "close", channel, "--wait")
            assert proxy.lies["drop_sends"] == 0, "the provider sent nothing during the close"
        finally:
            log = node.stop()
        # the ledger's own record of the channel, read from anvil directly
        info, totals = trio.run(read_chain, rpc_url, contract, channel)
    assert totals.conserved
    assert info is not None and info.state is ChannelState.CLOSED
    assert info.redeemed == 2 * PRICE, (info, log[-3000:])


async def read_chain(url: str, contract: str, channel: str) -> tuple[Channel | None, Totals]:
    ledger = await EvmLedger.connect(Web3Chain(url), bytes.fromhex(contract[2:]))
    try:
        return await ledger.channel(bytes.fromhex(channel)), await ledger.totals()
    finally:
        await ledger.aclose()
