"""Find and pay from Python: three nodes in one process on libp2p (127.0.0.1). A bootstrap
node, a provider that stakes and serves "echo", and a client that knows only the
bootstrap node's address: it finds the provider's signed offer and calls "echo" on the
best provider, paid (a channel is opened under the deposit policy).

Run it with:  python examples/find-and-pay.py
(The README's find-and-pay library example is this file; tests/cli/test_readme.py runs it.)
"""

from contextlib import AbstractAsyncContextManager

import trio

import p2pay
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.discovery import open_libp2p_discovery
from p2pay.node import DiscoveryConfig

TOKEN = 10**24  # 1 token = 10**24 yocto


async def echo(call: p2pay.Call) -> bytes:
    return call.body


async def main() -> None:
    ledger = MemoryLedger(dev=True)  # an in-memory settlement ledger that can mint
    boot_key, provider_key, client_key = (
        p2pay.Keypair.from_seed(bytes([i]) * 32) for i in (1, 2, 3)
    )
    for key in (provider_key, client_key):
        await ledger.mint(key, key.account, TOKEN)

    def node(
        key: p2pay.Keypair, config: DiscoveryConfig | None = None
    ) -> AbstractAsyncContextManager[p2pay.Node]:
        # discovery on the node's libp2p host: gossipsub, the Kademlia DHT, offer fetches
        return p2pay.open_node(
            key=key, ledger=ledger, discovery=open_libp2p_discovery, discovery_config=config
        )

    # a bootstrap node: no services (a DHT server and a gossip peer for the others)
    async with node(boot_key) as boot:
        joined = DiscoveryConfig(bootstrap=(boot.addrs[0],))  # ".../p2p/12D3KooW..."
        async with node(provider_key, joined) as provider:
            # no offer without a stake: stake first, then serve (announced at once)
            await provider.stake(TOKEN // 2, penalty=TOKEN // 10, claim_window_ms=60_000)
            provider.serve("echo", echo, price=1_000)  # 1,000 yocto per call
            async with node(client_key, joined) as client:
                for offer in await client.find("echo", max_price=1_000):
                    print("offer of", offer.peer, offer.price, "yocto, stake", offer.stake)
                result = await client.call_any("echo", b"hi", max_price=1_000)
                print(result.body, "from", result.peer, "cost", result.price, "yocto")


if __name__ == "__main__":
    trio.run(main)
