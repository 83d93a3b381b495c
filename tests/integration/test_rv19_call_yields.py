"""Review of issue 18 (rv19), 82b91ef: a call takes a free ``max_in_flight`` slot without
`trio.Semaphore.acquire`'s scheduling point. A call that is answered still yields while it
waits; a call that fails after taking its slot without waiting (its channel's deposit
spent: `InsufficientDeposit` from signing, synchronously) must still let other tasks run,
as it did through the semaphore: else a caller that retries until another task tops the
channel up, or any loop of such calls, holds the whole node (its connections, watcher,
persister) and never sees the top-up. Bounded: at most `TRIES` calls, `trio.fail_after`.
"""

from __future__ import annotations

import trio
from node_support import funded_ledger

from p2pay.core.errors import InsufficientDeposit
from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
PRICE = 1_000
TRIES = 200


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_call_refused_for_its_spent_deposit_lets_other_tasks_run() -> None:
    ledger = await funded_ledger(b"rv19-yield", ALICE, BOB)
    net = MemoryNetwork()
    with trio.fail_after(60):
        async with (
            open_node(key=BOB, ledger=ledger, network=net, config=NodeConfig()) as bob,
            open_node(key=ALICE, ledger=ledger, network=net, config=NodeConfig()) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=60_000)
            await alice.open_channel(bob.addrs[0], deposit=PRICE)  # one call's worth
            await alice.call(bob.peer_id, "echo", b"paid", max_price=PRICE)
            ran = 0

            async def other() -> None:
                nonlocal ran
                while True:
                    ran += 1
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                refused = 0
                for _ in range(TRIES):
                    try:
                        await alice.call(bob.peer_id, "echo", b"more", max_price=PRICE)
                    except InsufficientDeposit:
                        refused += 1
                    if ran:
                        break
                seen = ran  # before the nursery's end lets `other` run
                nursery.cancel_scope.cancel()
            assert refused >= 1
            assert seen, f"{refused} refused calls in a row never let another task run"
