"""The payer's hot path (issue 18 item 2): a call naming its provider by multiaddr costs
what a call by PeerID costs. The address is decoded once, however many calls give it, and
the address book still learns it only once the connection's hello was checked
(specs/protocol.md 19.2). Every wait is bounded."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import p2pay.net.p2p as p2p_module
from p2pay.core.identity import Keypair
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.node import Call, NodeConfig, open_node

ALICE = Keypair.from_seed(bytes([41]) * 32)  # client
BOB = Keypair.from_seed(bytes([42]) * 32)  # provider
PRICE = 1_000
TOKEN = 10**24


async def echo(call: Call) -> bytes:
    return call.body


async def test_calls_by_multiaddr_decode_the_address_once(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = MemoryLedger(Params(ledger_id=b"p2pay:test:hot-path", dev=True))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    parses: list[str] = []
    real = p2p_module.Multiaddr

    def counting(addr: Any) -> Any:
        parses.append(str(addr))
        return real(addr)

    config = NodeConfig(default_timeout=5.0)
    with trio.fail_after(30):
        async with (
            open_node(key=BOB, ledger=ledger, config=config) as bob,
            open_node(key=ALICE, ledger=ledger, config=config) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            addr = bob.addrs[0]
            assert addr.endswith(f"/p2p/{BOB.peer_id}")
            monkeypatch.setattr(p2p_module, "Multiaddr", counting)
            await alice.open_channel(addr, deposit=10**6)
            for i in range(20):
                result = await alice.call(addr, "echo", b"%d" % i, max_price=PRICE)
                assert result.body == b"%d" % i and result.price == PRICE
            assert parses.count(addr) == 1  # 21 uses, one decoding
            assert alice.addresses.addrs(BOB.peer_id) == [addr]  # learnt after the hello
            # the same text naming another peer is still refused, every time
            other = addr.replace(BOB.peer_id, ALICE.peer_id)
            assert other != addr
            for _ in range(2):
                with pytest.raises(ValueError):
                    alice.transport.add_address(BOB.peer_id, other)
