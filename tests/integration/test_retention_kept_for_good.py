"""A provider that keeps its signed answers for good (`response_retention_ms` as large as
a time can be) still serves and charges: an answer's expiry is at most the store's
`MAX_TIME`. Before, ``deadline + response_retention_ms`` went past it, the store refused
the answer's record, and the commit that makes the charge durable failed with it: every
paid call ended in an error, the slice stayed in flight, and a claim on it (the provider
kept no answer) would have been UPHELD."""

from __future__ import annotations

import trio
from node_support import funded_ledger

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.base import MAX_TIME
from p2pay.store.memory import MemoryStore

PAYER = Keypair.from_seed(bytes([71]) * 32)
PAYEE = Keypair.from_seed(bytes([72]) * 32)
PRICE = 1_000


async def echo(call: Call) -> bytes:
    return call.body


async def test_answers_kept_for_good_are_stored_and_charged() -> None:
    ledger = await funded_ledger(b"retention-for-good", PAYER, PAYEE)
    net = MemoryNetwork()
    store = MemoryStore()
    forever = NodeConfig(watch_interval=0.05, min_challenge_ms=50, response_retention_ms=MAX_YOCTO)
    with trio.fail_after(60):
        async with (
            open_node(key=PAYEE, ledger=ledger, network=net, config=forever, store=store) as payee,
            open_node(key=PAYER, ledger=ledger, network=net, config=NodeConfig()) as payer,
        ):
            payee.serve("echo", echo, price=PRICE)
            await payee.stake(10**20, penalty=10**19, claim_window_ms=30_000)
            await payer.open_channel(payee.addrs[0], deposit=10**6)
            for i in range(3):
                result = await payer.call(payee.addrs[0], "echo", b"%d" % i, max_price=PRICE)
                assert result.body == b"%d" % i
            assert payee.counters.calls_served == 3
            assert payee.counters.charged == 3 * PRICE
            [channel] = payee.payee_channels.values()
            kept = await store.vouchers(channel.channel)
            assert [r.n for r in kept] == [1, 2, 3]
            assert all(r.expires_at == MAX_TIME for r in kept), kept
