"""Attack (money): calls in flight at once refused CHALLENGE_TOO_SHORT on one channel must
mark *that* channel refused, never the payer's good channel (protocol.md 17 rule 2).

Before the fix, the payer re-picked "its best channel to the payee" after each refusal:
once the first refusal had marked the short channel, the next refusal of a request signed
on it marked the good channel instead, durably, and every later call to the payee failed
with a CHALLENGE_TOO_SHORT naming a channel at the payee's minimum. Bounded waits only.
"""

from __future__ import annotations

import trio
from node_support import funded_ledger

from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.node.book import MINIMUMS_KEY, minimums_from_bytes

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
PRICE = 1_000


async def echo(call: Call) -> bytes:
    return call.body


async def test_concurrent_refusals_mark_the_refused_channel_not_the_good_one() -> None:
    ledger = await funded_ledger(b"atk-money", ALICE, BOB)
    net = MemoryNetwork()
    with trio.fail_after(60):
        async with (
            open_node(
                key=BOB, ledger=ledger, network=net, config=NodeConfig(min_challenge_ms=60_000)
            ) as bob,
            open_node(key=ALICE, ledger=ledger, network=net, config=NodeConfig()) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            # the short channel has the most credit: every call in flight picks it first
            short = await alice.open_channel(bob.addrs[0], deposit=10**8, challenge_ms=1_000)
            good = await alice.open_channel(bob.addrs[0], deposit=10**6, challenge_ms=60_000)
            answers: list[bytes] = []

            async def one(i: int) -> None:
                result = await alice.call(bob.peer_id, "echo", b"%d" % i, max_price=PRICE)
                assert result.channel == good.channel
                answers.append(result.body)

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
            assert sorted(answers) == sorted(b"%d" % i for i in range(8))
            assert alice.book.refused_channels == {short.channel}
            _, refused = minimums_from_bytes(await alice.store.get_meta(MINIMUMS_KEY))
            assert refused == {short.channel}  # what a restart would load
            later = await alice.call(bob.peer_id, "echo", b"later", max_price=PRICE)
            assert later.channel == good.channel and later.body == b"later"
            assert bob.payee_channels[good.channel].spent == 9 * PRICE
            assert short.channel not in bob.payee_channels
