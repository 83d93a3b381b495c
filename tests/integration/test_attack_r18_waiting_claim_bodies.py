"""Attack round 18 on 03d21c7: the claims waiting for a handler slot held their bodies.

29e7ee8 and 1df26f5 stopped the provider keeping a claim's body once the claim is
answered (threat-model 'Memory bound': claims are held by their signed fields). A claim
served through the claim (C-6: a request that never reached the provider) still held its
body twice, the ledger's frame and the decoded request, from its ClaimFiled event until
a handler slot (at most ``max_claim_answers`` at once) freed up and its handler ended:
every claim of a flood on a slow service held up to the ledger's ``max_claim_body`` (1
MiB on the SQLite dev ledger) for as long as it waited.

MALLORY files K = 48 claims on numbers she never sent, each a fresh slice of PRICE =
1000 yocto with a body of 512 KiB, for BOB's slow service (``held``, two handler slots).
Each is admissible and served through the claim, DELIVERED and paid (48 * 1000 yocto and
the claims' transactions: 48 MiB of BOB's memory cost MALLORY 48,000 yocto, a few thousand
such claims exhaust a provider, which then answers no claim and is slashed). On 03d21c7,
with 2 handlers running and 46 claims waiting, BOB held 48 MiB (2 * 512 KiB per claim);
now the waiting claims hold their signed fields only and a claim reads its body from the
ledger once it has a slot: about 2 MiB (the two being served). A claim its admission
refuses at once (an unknown service) still waits for no slot. Memory measured with
tracemalloc in this process.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import trio
from node_support import wait_until

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.core.settlement import ClaimState
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

MALLORY = Keypair.from_seed(bytes([7]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
K = 48
BODY = 1 << 19
PRICE = 1_000
SLOTS = 2


async def test_claims_waiting_for_a_handler_hold_no_body(tmp_path: Path) -> None:
    ledger = await SqliteLedger.create(
        tmp_path / "ledger.sqlite", dev=True, min_claim_window_ms=50, min_challenge_ms=50
    )
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(watch_interval=0.05, min_challenge_ms=50, max_claim_answers=SLOTS)
    release = trio.Event()
    running = 0

    async def held(call: Call) -> bytes:
        nonlocal running
        running += 1
        with trio.fail_after(30):
            await release.wait()
        return b"served %d bytes" % len(call.body)

    try:
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=config
        ) as bob:
            bob.serve("held", held, price=PRICE, max_body=BODY)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)
            channel = await ledger.open_channel(MALLORY, BOB.public, 10**9, 60_000)
            deadline = await ledger.now() + 100

            async def past() -> bool:
                return await ledger.now() > deadline

            await wait_until(past, timeout=10)
            watcher = bob.watcher
            assert watcher is not None
            tracemalloc.start()
            try:
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                ids = []
                for i in range(K):
                    request = Request.create(
                        MALLORY, ledger=ledger.ledger_id, channel=channel, n=1 + i,
                        paid=PRICE * (1 + i), price=PRICE, service="held",
                        body=bytes([i]) * BODY, deadline=deadline,
                    )  # fmt: skip
                    ids.append(await ledger.file_claim(MALLORY, request))
                del request
                # every claim's answer task runs; SLOTS of them serve, and the others wait
                # for a handler slot (measured before they all got there, the claims still
                # being read counted too: up to 34 MB, seen under load)
                limiter = watcher._limiter
                await wait_until(
                    lambda: (
                        len(watcher._defending) == K
                        and running == SLOTS
                        and limiter.waiting == K - SLOTS
                    ),
                    timeout=60,
                )
                gc.collect()
                held_bytes = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            # a claim its admission refuses at once (a service BOB does not offer) waits
            # for no handler slot: REFUSED while the others still wait
            free = Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=channel, n=K + 1,
                paid=PRICE * (K + 1), price=PRICE, service="nosuch", body=b"free",
                deadline=deadline,
            )  # fmt: skip
            refused = await ledger.file_claim(MALLORY, free)

            async def decided() -> bool:
                claim = await ledger.claim(refused)
                return claim is not None and claim.state is not ClaimState.OPEN

            await wait_until(decided, timeout=20)
            assert (await ledger.claim(refused)).state is ClaimState.REFUSED  # type: ignore[union-attr]
            assert running == SLOTS and not release.is_set()
            release.set()

            async def answered() -> bool:
                claims = [await ledger.claim(claim_id) for claim_id in ids]
                return all(c is not None and c.state is not ClaimState.OPEN for c in claims)

            await wait_until(answered, timeout=60)
            states = {(await ledger.claim(claim_id)).state for claim_id in ids}  # type: ignore[union-attr]
            print(f"{K} claims of {BODY} bytes, {SLOTS} served at once: {held_bytes} held")
            assert states == {ClaimState.DELIVERED}
            assert running == K
            assert bob.payee_channels[channel].spent == K * PRICE
            # on 03d21c7 about 2 * BODY per claim (48 MiB); now the ones being served
            assert held_bytes < (2 * SLOTS + 4) * BODY, held_bytes
    finally:
        await store.aclose()
        await ledger.aclose()
