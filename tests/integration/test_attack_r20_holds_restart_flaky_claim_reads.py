"""Attack round 20 on 746a80e, held: claims filed while the provider is down, whose first
reads fail, are all answered after a restart.

7cbca57 reads the claims against the provider by id, then each alone; one whose read fails
is put aside (`_unlisted`) and read again later, by the next answer that needs the other
claims and by the next rescan. Here BOB's node stops after its ledger cursor passed a
first claim's events (so a restart finds the later claims through the listing, not their
ClaimFiled events alone), ALICE files K claims on requests she never sent while it is
down, and the endpoint fails the first `FAILS` reads of each of them (a flaky remote
endpoint). BOB restarts and must serve and answer every one: DELIVERED, none UPHELD.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

from node_support import wait_until
from raw_payer import watcher_steps
from test_watcher_claims import (
    ALICE,
    BOB,
    BOND,
    FAST,
    LEDGER_ID,
    PENALTY,
    PRICE,
    STAKE,
    claimed_request,
)

from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node
from p2pay.store.sqlite import SqliteStore

K = 6
FAILS = 2


class Flaky(MemoryLedger):
    """An endpoint that fails the first `FAILS` reads of each claim in `flaky`."""

    flaky: frozenset[bytes] = frozenset()
    failed: dict[bytes, int] = {}

    async def claim(self, claim_id: bytes) -> Claim | None:
        if claim_id in Flaky.flaky and Flaky.failed.get(claim_id, 0) < FAILS:
            Flaky.failed[claim_id] = Flaky.failed.get(claim_id, 0) + 1
            raise OSError("endpoint unavailable")
        return await super().claim(claim_id)


async def echo(call: Call) -> bytes:
    return call.body


async def test_claims_filed_while_down_with_failing_reads_are_all_answered(
    tmp_path: Path,
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Flaky(params)
    Flaky.flaky, Flaky.failed = frozenset(), {}
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    try:
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=FAST
        ) as bob:
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
            channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
            first = await ledger.file_claim(
                ALICE, claimed_request(channel, 1, deadline=await ledger.now() - 1)
            )

            async def first_answered() -> bool:
                claim = await ledger.claim(first)
                return claim is not None and claim.state is not ClaimState.OPEN

            await wait_until(first_answered, timeout=30)
            await watcher_steps(bob, 3)
        deadline = await ledger.now() - 1
        ids = [
            await ledger.file_claim(ALICE, claimed_request(channel, n, deadline=deadline))
            for n in range(2, K + 2)
        ]
        Flaky.flaky = frozenset(ids)
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=FAST
        ) as again:
            again.serve("echo", echo, price=PRICE)

            async def all_answered() -> bool:
                for claim_id in ids:
                    claim = await MemoryLedger.claim(ledger, claim_id)
                    if claim is None or claim.state is ClaimState.OPEN:
                        return False
                return True

            await wait_until(all_answered, timeout=60)
        states = [(await MemoryLedger.claim(ledger, i)).state for i in ids]  # type: ignore[union-attr]
        assert states == [ClaimState.DELIVERED] * K, states
        assert all(Flaky.failed[i] == FAILS for i in ids)  # every one failed first
    finally:
        await store.aclose()
