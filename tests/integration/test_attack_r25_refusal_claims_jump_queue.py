"""Attack round 25 on ec4f456: refusal claims jump the earliest-first read queue.

ec4f456 makes the watcher's claim reads (`_reads`) go earliest window end first
(`EarliestFirst`), keyed, for a claim's first read, by its ClaimFiled event's
``window_ends``. A claim filed WITH the payee's signed refusal (FileClaim with
``refusal``, claims.md 3, "refund with the payee's refusal") is settled at once: the ledger
gives it ``window_ends = now`` (its filing time), no bond, no window. Its ClaimFiled event
still starts an answer task (`_defend_soon`), whose one read waits in `_reads` with key
``now``: earlier than the window end of EVERY claim still open (each ends at its filing
time plus a whole window at least). A stranger who keeps filing refusal claims (free on
a dev ledger, no bond; each needs one of BOB's signed refusals, which BOB signs for any
fresh slice to a service he does not offer, at 1 yocto of her own paid line each) keeps
`_reads` full of reads that all go before any open claim's read: the open claim's first
read never gets a place, and its window runs out. FIFO (eb92449) put the open claim's read
ahead of the refusal claims filed after it.

Here: the endpoint takes 0.3 s for each claim read (round 23's slower endpoint), BOB
reads 16 at once (the default), his claim window is 2 s. MALLORY gets 400 signed refusals
over her stream (service ``nosuch``, price 1), files 24 of them as refusal claims, then
ALICE (honest, another channel) claims an ``echo`` request she never sent (BOB serves it
through the claim: DELIVERED, or REFUSED DEADLINE_EXCEEDED if the handler's deadline
passed), and MALLORY goes on filing refusal claims, 6 every 0.1 s (60 a second, a little
over the 53 reads a second BOB's endpoint allows), for a little more than ALICE's window.
ALICE's claim must not be UPHELD. On ec4f456 the claim's first read never starts: UPHELD,
the penalty to ALICE (3 runs of 3). On eb92449 (FIFO reads) the same flood leaves it
answered in its window (REFUSED DEADLINE_EXCEEDED, 3 of 3). (At 80 a second, eb92449
falls behind too: its FIFO queue grows and ALICE's three reads wait behind it.) Every
wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import trio
from node_support import ended_claim, wait_until
from raw_payer import MALLORY, connected, ignore_streams
from test_watcher_claims import ALICE, BOB, BOND, LEDGER_ID, PENALTY, PRICE, STAKE

from p2pay.core.messages import Request, Response
from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, NodeConfig, open_node

DELAY = 0.3  # s, each claim read BOB's watcher makes
WINDOW_MS = 2_000
REFUSALS = 400
PRE, RATE = 24, 6  # refusal claims filed before the victim, then every 0.1 s


class SlowClaims(MemoryLedger):
    """An endpoint with a latency on every claim read (the test reads through
    `MemoryLedger.claim` directly)."""

    async def claim(self, claim_id: bytes) -> Claim | None:
        await trio.sleep(DELAY)
        return await super().claim(claim_id)


async def echo(call: Call) -> bytes:
    return call.body


async def test_refusal_claims_starve_an_open_claim() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000, claims_per_window=20,
    )  # fmt: skip
    ledger = SlowClaims(params)
    for key in (ALICE, BOB, MALLORY):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50,
        redeem_threshold=10**30, default_timeout=30.0,
    )  # fmt: skip
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=config) as bob,
        open_memory_transport(net, MALLORY, ignore_streams) as transport,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        mallory_ch = await ledger.open_channel(MALLORY, BOB.public, 10**9, 60_000)
        alice_ch = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)

        # MALLORY collects BOB's signed refusals: 1 yocto of her paid line each
        refusals: list[tuple[Request, Response]] = []
        # (a stream of her own for each 100: BOB resets one past its refusal burst)
        deadline = await ledger.now() + 30_000
        for first in range(1, REFUSALS + 1, 100):
            async with connected(transport, bob, ledger, mallory_ch) as payer:
                for n in range(first, first + 100):
                    request = payer.signed(n, n, deadline, price=1, service="nosuch")
                    answer = await payer.exchange(request)
                    assert isinstance(answer, Response) and answer.verify(BOB.account)
                    assert answer.status != "OK" and answer.price == 0
                    refusals.append((request, answer))
        flood = iter(refusals)

        async def file_refusals(count: int) -> None:
            for _ in range(count):
                request, refusal = next(flood)
                await ledger.file_claim(MALLORY, request, refusal=refusal)

        await file_refusals(PRE)
        await trio.sleep(0.1)  # BOB's watcher takes their events: `_reads` is full
        claimed = Request.create(
            ALICE, ledger=LEDGER_ID, channel=alice_ch, n=1, paid=PRICE, price=PRICE,
            service="echo", body=b"hello", deadline=await ledger.now() - 1,
        )  # fmt: skip
        victim = await ledger.file_claim(ALICE, claimed)
        filed = await MemoryLedger.claim(ledger, victim)
        assert filed is not None
        while await ledger.now() <= filed.window_ends + 200:
            await file_refusals(RATE)
            await trio.sleep(0.1)

        async def decided_or_past() -> bool:
            found = await MemoryLedger.claim(ledger, victim)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > filed.window_ends

        await wait_until(decided_or_past, timeout=30)
    claim = await ended_claim(ledger, ALICE, victim)
    print(f"ALICE's claim: {claim.state.name}, {claim.slashed} slashed")
    # DELIVERED, or REFUSED DEADLINE_EXCEEDED if the handler's deadline passed while the
    # reads waited (ALICE's own slice back: C-1 and C-2 hold); never UPHELD
    assert claim.state is not ClaimState.UPHELD, f"honest BOB slashed {claim.slashed}"
