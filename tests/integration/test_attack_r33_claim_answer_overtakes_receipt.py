"""Attack round 33 on cf76e25: an honest payee's DELIVERED answer to a claim, read from
the ledger before a receipt still on its way on the stream, makes the payee faulty.

cf76e25 makes a payee whose answer to one of the payer's claims fails the receipt rules
faulty on the channel (protocol.md 14.3 "A faulty payee": nothing more is signed on it).
But claims.md 7 ("A DELIVERED answer the receipt rules refuse") says an HONEST payee's
stored receipt, given as its answer to a claim, carries the ``spent`` of its time, and
when charges of requests still in flight at the payer lie below it, rule 7 refuses its
jump (in-flight prices do not explain jumps). Before cf76e25 that only left the request
claimed; now the honest payee is cut off.

The attack (all nodes honest, only the environment is slow): the path BOB -> ALICE has a
one-way delay of a few seconds (a congested link), ALICE -> BOB none, the ledger is fast.
ALICE calls ``echo`` twice on one channel: n=1 with a long timeout, then n=2 with a short
one. BOB charges n=1 (spent = PRICE), then n=2 (spent = 2 * PRICE); both receipts are on
the wire. n=2's call times out (abandoned); the watcher re-delivers it (its stored answer
is on the slow wire too), then claims it; BOB answers the claim DELIVERED with n=2's
stored receipt, spent = 2 * PRICE. ALICE's watcher reads it while n=1 is still in flight
(its receipt not yet arrived): expected spent PRICE, a jump of PRICE that no abandoned
request explains: refused, and BOB is marked faulty. Then n=1's receipt arrives and is
accepted; ALICE's own next call fails with PAYEE_FAULTY.

Measured on cf76e25: ALICE's channel is faulty ("its receipt for request 2 failed
the check: receipt spent 2000, expected 1000"), though BOB charged exactly 2 * PRICE for
two requests ALICE signed. cf76e25 is reverted: an answer read from the ledger that the
receipt rules refuse leaves its request claimed and marks nothing (protocol.md 14.3 "A
faulty payee"). Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import trio
from node_support import claim_game_params, wait_until

from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, CallResult, CallTimeout, NodeConfig, open_node

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
PRICE = 1_000
DEPOSIT = 10**7
SLOW = 4.0  # seconds, BOB -> ALICE

NODE = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
    redeliver_timeout=0.3,
)


async def echo(call: Call) -> bytes:
    return call.body


async def test_an_honest_claim_answer_read_before_an_in_flight_receipt_is_not_faulty() -> None:
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:r33-overtake", claim_bond=10**18))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        payer = alice.payer_channels[ch.channel]
        net.set_latency(lambda src, dst: SLOW if src == bob.peer_id else 0.0)
        first: list[object] = []

        async def long_call() -> None:
            try:
                first.append(
                    await alice.call(bob.addrs[0], "echo", b"one", max_price=PRICE, timeout=20)
                )
            except P2payError as exc:
                first.append(exc)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_call)
                await wait_until(lambda: payer.last_n == 1)
                try:
                    await alice.call(bob.addrs[0], "echo", b"two", max_price=PRICE, timeout=0.3)
                except CallTimeout:
                    pass

                async def claim_ended() -> bool:
                    if 2 not in payer.abandoned:
                        return True
                    return any(c.outcome != "open" for c in await alice.claims())

                await wait_until(claim_ended, timeout=30)
                # the nursery then waits for n=1's call (its receipt is on the slow wire)
        assert bob.payee_channels[ch.channel].spent == 2 * PRICE  # BOB charged both, once
        assert payer.faulty is None, f"an honest payee was marked faulty: {payer.faulty}"
        assert alice.counters.protocol_violations == 0
        assert isinstance(first[0], CallResult) and first[0].spent == PRICE
        result = await alice.call(bob.addrs[0], "echo", b"three", max_price=PRICE)
        assert (result.n, result.spent) == (3, 3 * PRICE)  # the channel is in use
