"""Attack round 22 on be21dd5: a free claim's body stays in the provider's memory for as
long as it runs, one per channel.

The threat model's memory bound: claims are held by their signed fields only. But a
claimed request on a fresh number above every voucher seen becomes its channel's best
voucher whatever the answer (`PayeeChannel.admit_claimed`, claims.md C-6), with its
body: `ch.best` keeps it (and every `_payee_record` of the channel writes it to the
store again). A stranger opens K channels to the provider (a small deposit each, hers
again at the close) and files one claim on each, a service the provider does not offer,
a body of 512 KiB: each REFUSED, her bond and slice back, free. The provider then holds
K bodies for good: on be21dd5 17.4 MB still held for K = 16 once every claim is answered,
two copies a claim (tracemalloc, this process; the ledger and the store on disk). With
the channel's voucher kept without its body once admitted (`_bodiless`; the redeem checks
the signature, which covers the body's hash, not the body; a sketch, not committed),
0.68 MB. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

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
K = 16
BODY = 1 << 19
BOUND = 4 * BODY  # what stays after the answers: no body of a claim (17.4 MB on be21dd5)


async def echo(call: Call) -> bytes:
    return call.body


async def test_free_claims_leave_no_body_held_on_their_channels(tmp_path: Path) -> None:
    ledger = await SqliteLedger.create(
        tmp_path / "ledger.sqlite", dev=True, min_claim_window_ms=50, min_challenge_ms=50
    )
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(watch_interval=0.05, min_challenge_ms=50)
    try:
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=config
        ) as bob:
            bob.serve("echo", echo, price=1000)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)
            channels = [
                await ledger.open_channel(MALLORY, BOB.public, 10**6, 60_000) for _ in range(K)
            ]
            deadline = await ledger.now() + 100

            async def past() -> bool:
                return await ledger.now() > deadline

            await wait_until(past, timeout=10)

            async def answered(ids: list[bytes]) -> bool:
                for claim_id in ids:  # one at a time: the test holds no bodies
                    claim = await ledger.claim(claim_id)
                    if claim is None or claim.state is ClaimState.OPEN:
                        return False
                return True

            tracemalloc.start()
            try:
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                ids = []
                for i, channel in enumerate(channels):
                    request = Request.create(
                        MALLORY, ledger=ledger.ledger_id, channel=channel, n=1, paid=1,
                        price=1, service="nosuch", body=bytes([i]) * BODY, deadline=deadline,
                    )  # fmt: skip
                    ids.append(await ledger.file_claim(MALLORY, request))
                del request
                await wait_until(lambda: answered(ids), timeout=120)
                watcher = bob.watcher
                assert watcher is not None
                await wait_until(lambda: not watcher._defending, timeout=20)
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            states = {(await ledger.claim(claim_id)).state for claim_id in ids}  # type: ignore[union-attr]
            best = sum(
                len(ch.best.body) for ch in bob.payee_channels.values() if ch.best is not None
            )
        print(f"{K} free claims of {BODY} bytes answered: {held} bytes held, best bodies {best}")
        assert states == {ClaimState.REFUSED}
        assert held < BOUND, (held, best)
    finally:
        await store.aclose()
        await ledger.aclose()
