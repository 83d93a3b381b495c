"""`Node.hello` signs its hello once while what it says is the same (p2pay/node/facade.py):
the hello it returns is always the one `Hello.create` would build now, byte for byte."""

from __future__ import annotations

from p2pay.core.identity import Keypair
from p2pay.core.messages import StakeTerms
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from tests.integration.node_support import fresh_hello

KEY = Keypair.from_seed(bytes([7]) * 32)


async def echo(call: Call) -> bytes:
    return b""


async def test_the_hello_is_signed_again_only_when_what_it_says_changes() -> None:
    ledger = MemoryLedger()
    config = NodeConfig(watcher=False)
    async with open_node(key=KEY, ledger=ledger, network=MemoryNetwork(), config=config) as node:
        first = node.hello()
        assert first.to_frame() == fresh_hello(node)
        assert node.hello() is first  # nothing changed: the same signed hello
        node.serve("echo", echo, price=5)
        served = node.hello()
        assert served is not first and [t.name for t in served.services] == ["echo"]
        assert served.to_frame() == fresh_hello(node)
        node.services["echo"].price = 6  # a price change is announced
        priced = node.hello()
        assert priced.services[0].price == 6 and priced.to_frame() == fresh_hello(node)
        node._stake = StakeTerms(amount=10, penalty=5, claim_window_ms=60_000)
        staked = node.hello()
        assert staked.stake == node._stake and staked.to_frame() == fresh_hello(node)
        node._stake = None
        assert node.hello().stake is None and node.hello().to_frame() == fresh_hello(node)
