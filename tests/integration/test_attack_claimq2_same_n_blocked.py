"""Attack: a claim whose number is held by another claim still being served waits for it,
and the queued windows let that other claim's handler outlive the first one's window
(specs/claims.md C-1; settlement.md FileClaim; node/watcher.py `_prepare_answer`).

A lying payer signs two requests numbered alike, A and B (same `n`, different bodies),
for a real priced service whose handler is slow, and sends neither. It files a few
claims that the provider answers at once (an unknown service: REFUSED, bonds back), and
A while they are open: A's window is a whole window plus one slot per open claim. When
those are answered it files B: one slot after a whole window, so B's window ends *before*
A's handler deadline (A's window end minus the margin). The provider admits A (its number
is now pending) and runs the slow handler. B's answer task finds `B.n in ch.pending` and
returns None ("being served on a stream") before it looks for evidence, although A, a
payer-signed request numbered alike, refutes B at once (claims.md 2). It retries with
backoff until B's window ends: B is UPHELD, an honest provider slashed, half to the liar.

Under the old rule (every window a whole window from its filing) A, filed first, always
had the earlier deadline. Deterministic: a manual ledger clock; the handler waits for an
event the test sets only at the end; every wait is bounded.
"""

from __future__ import annotations

import trio
from node_support import claim_game_params, wait_until

from p2pay.core.identity import Keypair
from p2pay.core.settlement import ClaimState, claim_slot_ms
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.testing import ManualClock, unchecked_request

ALICE = Keypair.from_seed(bytes([1]) * 32)  # the lying payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # the honest provider
LEDGER_ID = b"p2pay:test:claimq2-same-n"
PRICE = 1_000
TOKEN = 10**24
STAKE, PENALTY = 10**20, 10**17
WINDOW = 1_000_000  # ms (the real-time handler timeout derived from it never fires here)
FILLERS = 10


async def test_a_same_number_claim_is_refuted_while_the_other_is_served() -> None:
    time = ManualClock(1_700_000_000_000)
    params = claim_game_params(LEDGER_ID)
    ledger = MemoryLedger(params, clock=time)
    slot = claim_slot_ms(params, WINDOW)
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
    net = MemoryNetwork()
    with trio.fail_after(120):
        async with open_node(key=BOB, ledger=ledger, network=net, config=config, clock=time) as bob:
            bob.serve("slow", slow, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW)
            ch = await ledger.open_channel(ALICE, BOB.account, 10 * PRICE, 60_000)
            side = await ledger.open_channel(ALICE, BOB.account, FILLERS, 60_000)
            deadline = time.ms - 1

            def req(channel: bytes, n: int, paid: int, price: int, service: str, body: bytes):
                return unchecked_request(
                    ALICE,
                    ledger=LEDGER_ID,
                    channel=channel,
                    n=n,
                    paid=paid,
                    price=price,
                    service=service,
                    body=body,
                    deadline=deadline,
                )

            fillers = [
                await ledger.file_claim(ALICE, req(side, n, n, 1, "nope", b"%d" % n))
                for n in range(1, FILLERS + 1)
            ]
            a = req(ch, 1, PRICE, PRICE, "slow", b"A")
            b = req(ch, 1, PRICE, PRICE, "slow", b"B")  # same number, another body
            a_id = await ledger.file_claim(ALICE, a)
            claim_a = await ledger.claim(a_id)
            assert claim_a is not None
            assert claim_a.window_ends == time.ms + WINDOW + FILLERS * slot

            async def fillers_answered() -> bool:
                states = [(await ledger.claim(i)).state for i in fillers]  # type: ignore[union-attr]
                return all(s is ClaimState.REFUSED for s in states)

            await wait_until(fillers_answered, timeout=60)
            with trio.fail_after(60):
                await started.wait()  # A admitted: its number pending, its handler running
            b_id = await ledger.file_claim(ALICE, b)
            claim_b = await ledger.claim(b_id)
            assert claim_b is not None
            assert claim_b.window_ends == time.ms + WINDOW + slot  # one claim (A) open
            # B's window ends before A's handler deadline (A's end minus the margin)
            margin = min(
                config.claim_answer_margin_ms, (claim_a.window_ends - claim_a.filed_at) // 3
            )
            assert claim_b.window_ends < claim_a.window_ends - margin

            async def b_answered() -> bool:
                c = await ledger.claim(b_id)
                return c is not None and c.state is not ClaimState.OPEN

            # the evidence (A, payer-signed, numbered alike) is at hand from the start
            with trio.move_on_after(10):
                await wait_until(b_answered, timeout=10)
            time.ms = claim_b.window_ends + 1
            if (await ledger.claim(b_id)).state is ClaimState.OPEN:  # type: ignore[union-attr]
                await ledger.resolve_claim(ALICE, b_id)
            release.set()

            async def a_answered() -> bool:
                c = await ledger.claim(a_id)
                return c is not None and c.state is not ClaimState.OPEN

            await wait_until(a_answered, timeout=60)
            state_a = (await ledger.claim(a_id)).state  # type: ignore[union-attr]
            state_b = (await ledger.claim(b_id)).state  # type: ignore[union-attr]
            stake = await ledger.stake_of(BOB.account)
            assert stake is not None
            assert state_b is ClaimState.FRIVOLOUS, f"B {state_b.value}: honest provider slashed"
            assert stake.amount == STAKE  # C-1
            assert state_a is ClaimState.DELIVERED  # A served and charged through its claim
            assert (await ledger.totals()).conserved
