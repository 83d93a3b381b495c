"""Attack on 3aad104 (sim20): the watcher re-reads a request's record before it claims,
but then awaits the ledger twice (the provider's stake, the ledger's clock) before it files
the claim, and files it, or marks the record expired or unclaimable from the stale copy it
read first, without looking again. A late answer that comes in those awaits (an EVM ledger's
two RPCs: tens of ms, more under load) is still claimed: the very race the commit closed,
one await later. Against a provider that stays silent on claims (sim20's) the claim is
UPHELD: the provider is slashed and refunded the price of a request it answered and charged.

The ledger's `stake_of` is wrapped to let the late answer in at that moment: deterministic,
every wait bounded.
"""

from __future__ import annotations

import pytest
import trio
from node_support import funded_ledger, held_service_pair, wait_until

from p2pay.core.identity import Keypair
from p2pay.node import Call, CallTimeout, NodeConfig

ALICE = Keypair.from_seed(bytes([51]) * 32)  # client
BOB = Keypair.from_seed(bytes([52]) * 32)  # provider
PRICE = 1_000

CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
    redeliver_timeout=0.3,
)


async def test_an_answer_arriving_while_the_watcher_reads_the_stake_is_not_claimed() -> None:
    ledger = await funded_ledger(b"sim20race", ALICE, BOB)  # 10 tokens each
    started, release = trio.Event(), trio.Event()

    async def held(call: Call) -> bytes:
        started.set()
        with trio.fail_after(30):
            await release.wait()
        return call.body

    # ALICE files no claims of its own: the test plays the watcher's part, at the racy moment
    async with held_service_pair(ledger, ALICE, BOB, held, price=PRICE, config=CONFIG) as (
        alice,
        bob,
    ):
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "held", b"late", max_price=PRICE, timeout=0.2)
        assert started.is_set()
        (stale,) = await alice.store.requests(state="awaiting")

        async def answered() -> bool:
            record = await alice.store.request(stale.request_hash)
            return record is not None and record.state in ("answered", "refused")

        # the claim task's second stake read (after the re-send and the re-read): the late
        # answer comes while it waits on the ledger
        me = trio.lowlevel.current_task()
        real = alice.ledger.stake_of
        reads = 0

        async def stake_of(account: bytes):  # type: ignore[no-untyped-def]
            nonlocal reads
            if trio.lowlevel.current_task() is me and account == BOB.account:
                reads += 1
                if reads == 2:
                    release.set()
                    await wait_until(answered)
            return await real(account)

        alice.ledger.stake_of = stake_of  # type: ignore[method-assign]
        with trio.fail_after(30):
            await trio.sleep(0.25)  # past the deadline: a claim would be heard
            await alice.watcher._claim(stale)  # type: ignore[union-attr]
        assert reads >= 2, "the late answer was never let in"
        assert await answered()
        assert alice.counters.claims_filed == 0
        assert await ledger.claims_of(ALICE.account) == []
