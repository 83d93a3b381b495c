"""Attack: a claim numbered like a request still being served on a stream waits for that
request to end, and a slow honest handler outlives the claim's window
(specs/claims.md C-1; node/watcher.py `_prepare_answer`).

The lying payer sends S1 (n=1, a slow service; an honest handler that takes longer than a
claim window, its request deadline well after) and S2..S4 (n=2..4, served at once; the
channel's best vouchers). It then signs B: n=1 again, another body, a deadline already past, and
files a claim on it. B conflicts with S1 (same number, both payer-signed), but S1 is not
stored until it is answered and is not the best voucher: the provider's answer task finds
`B.n in ch.pending` and returns None, retrying until B's window ends: UPHELD, an honest
provider slashed. Deterministic: a manual ledger clock; the handler waits for an event the
test sets at the end; every wait is bounded.
"""

from __future__ import annotations

import dataclasses

import trio
from node_support import claim_game_params, wait_until

from p2pay.core.identity import Keypair
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.testing import ManualClock, unchecked_request

ALICE = Keypair.from_seed(bytes([1]) * 32)  # the lying payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # the honest provider
LEDGER_ID = b"p2pay:test:claimq2-stream"
PRICE = 1_000
TOKEN = 10**24
STAKE, PENALTY = 10**20, 10**17
WINDOW = 1_000  # ms of the manual clock


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_claim_numbered_like_a_slow_stream_request_is_refuted() -> None:
    time = ManualClock(1_700_000_000_000)
    params = claim_game_params(LEDGER_ID)
    ledger = MemoryLedger(params, clock=time)
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    release = trio.Event()
    started = trio.Event()

    async def slow(call: Call) -> bytes:  # an honest handler that takes its time
        started.set()
        await release.wait()
        return b"done:" + call.body

    config = NodeConfig(
        watch_interval=0.05, min_challenge_ms=50, redeem_threshold=10**30, default_timeout=30.0
    )
    # every voucher checked on arrival: S4 is both the verified and the best voucher
    bob_config = dataclasses.replace(config, unverified_credit_limit=0)
    net = MemoryNetwork()
    with trio.fail_after(120):
        async with (
            open_node(key=BOB, ledger=ledger, network=net, config=bob_config, clock=time) as bob,
            open_node(key=ALICE, ledger=ledger, network=net, config=config, clock=time) as alice,
            trio.open_nursery() as nursery,
        ):
            bob.serve("slow", slow, price=PRICE)
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW)
            ch = await alice.open_channel(bob.addrs[0], deposit=10 * PRICE)

            async def s1() -> None:
                await alice.call(bob.peer_id, "slow", b"S1", max_price=PRICE)

            nursery.start_soon(s1)
            with trio.fail_after(60):
                await started.wait()  # S1 (n=1) admitted on the stream, its handler running
            for body in (b"S2", b"S3", b"S4"):  # n=2..4, answered: S1 is not the best voucher
                await alice.call(bob.peer_id, "echo", body, max_price=PRICE)
            b = unchecked_request(
                ALICE,
                ledger=LEDGER_ID,
                channel=ch.channel,
                n=1,
                paid=PRICE,
                price=PRICE,
                service="slow",
                body=b"B",
                deadline=time.ms - 1,
            )
            b_id = await ledger.file_claim(ALICE, b)
            claim_b = await ledger.claim(b_id)
            assert claim_b is not None

            async def b_answered() -> bool:
                c = await ledger.claim(b_id)
                return c is not None and c.state is not ClaimState.OPEN

            # S1, payer-signed and numbered alike, refutes B from the start
            with trio.move_on_after(10):
                await wait_until(b_answered, timeout=10)
            time.ms = claim_b.window_ends + 1
            if (await ledger.claim(b_id)).state is ClaimState.OPEN:  # type: ignore[union-attr]
                await ledger.resolve_claim(ALICE, b_id)
            release.set()
            state_b = (await ledger.claim(b_id)).state  # type: ignore[union-attr]
            stake = await ledger.stake_of(BOB.account)
            assert stake is not None
            assert state_b is ClaimState.FRIVOLOUS, f"B {state_b.value}: honest provider slashed"
            assert stake.amount == STAKE  # C-1
            assert (await ledger.totals()).conserved
