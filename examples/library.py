"""Two p2pay nodes in one process: a provider serving a paid "echo" and a client calling it.

Run it with:  python examples/library.py
(The README's library example is this file; tests/integration/test_examples.py runs it.)
"""

import trio

import p2pay
from p2pay.ledger.memory import MemoryLedger

TOKEN = 10**24  # 1 token = 10**24 yocto


async def echo(call: p2pay.Call) -> bytes:
    return call.body


async def main() -> None:
    ledger = MemoryLedger(dev=True)  # an in-memory settlement ledger that can mint
    provider_key = p2pay.Keypair.from_seed(bytes(range(32)))
    client_key = p2pay.Keypair.from_seed(bytes(range(1, 33)))
    await ledger.mint(client_key, client_key.account, TOKEN)

    async with p2pay.open_node(key=provider_key, ledger=ledger) as provider:
        provider.serve("echo", echo, price=1_000)  # 1,000 yocto per call
        async with p2pay.open_node(key=client_key, ledger=ledger) as client:
            peer = provider.addrs[0]  # "/ip4/127.0.0.1/tcp/.../p2p/12D3KooW..."
            channel = await client.open_channel(peer, deposit=10**21)
            result = await client.call(peer, "echo", b"hi", max_price=1_000, timeout=5)
            print(result.body, "cost", result.price, "yocto; spent so far", result.spent)
            await client.close_channel(channel.channel)


if __name__ == "__main__":
    trio.run(main)
