"""Attack (issue 17 money attack 2, target 2): a claim flood slashes an honest provider.

Working program: a lying client files claims on requests it signed and never sent (each a
fresh slice: the provider serves it through the claim and charges it, claims.md C-6)
against a real `p2pay node run` provider on a SQLite ledger. 300 claims in 1 s with a 10 s
claim window were all DELIVERED; 1000 claims in 3.8 s were not: 62 DELIVERED, 940 UPHELD,
the honest provider's whole stake slashed (half of it paid to the attacker, its bonds
back). Its watcher read the ledger's whole claim list and decoded every claim's request
again for each claim it answered (the other claims of the channel are evidence, claims.md
2): answering k claims cost k ledger reads of the whole list (0.04 s + 0.03 s each at 1000
claims), so the answer rate collapsed as the flood grew and the windows ran out.

The rule (claims.md C-7): a claim's answer reads the other claims against us from what
the watcher already holds; the ledger's claim list is read once, then each new claim once
(its ClaimFiled event), so a flood of k claims costs k claim reads, not k list reads.
This test counts the list reads (no timing)."""

from __future__ import annotations

import pytest
from node_support import wait_until
from test_watcher_claims import (
    ALICE,
    BOB,
    PENALTY,
    STAKE,
    claimed_request,
    decided,
    make_ledger,
    pair,
)

from p2pay.core.messages import Request
from p2pay.core.settlement import Claim, ClaimState
from p2pay.ledger.base import ClaimRole
from p2pay.ledger.memory import MemoryLedger
from p2pay.node import watcher as watcher_module

FLOOD = 200


class CountingLedger(MemoryLedger):
    """Counts reads of a whole claim list (the claims, or their ids: each id is then read
    alone, and the list read per claim made k claims cost k^2 claim reads)."""

    list_reads = 0

    async def claims_of(self, account: bytes) -> list[Claim]:
        CountingLedger.list_reads += 1
        return await super().claims_of(account)

    async def claim_ids_of(self, account: bytes, role: ClaimRole | None = None) -> list[bytes]:
        CountingLedger.list_reads += 1
        return await super().claim_ids_of(account, role)


async def test_a_claim_flood_is_answered_without_reading_every_claim_per_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the periodic rescan of open claims reads the list too: out of the way here
    monkeypatch.setattr(watcher_module, "RESCAN_STEPS", 10**9)
    ledger = make_ledger(CountingLedger)
    async with pair(ledger) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        now = await ledger.now()
        requests = [claimed_request(ch.channel, n, deadline=now - 1) for n in range(1, FLOOD + 1)]
        CountingLedger.list_reads = 0
        ids = [await ledger.file_claim(ALICE, request) for request in requests]
        await wait_until(lambda: decided(ledger, ids), timeout=60)
        for claim_id in ids:
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.DELIVERED
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE  # C-1: nobody slashed
        # one read of the list at most (the first claim), not one per claim
        assert CountingLedger.list_reads <= 1, CountingLedger.list_reads
        assert (await ledger.totals()).conserved


async def test_a_claim_flood_on_one_channel_is_not_compared_pairwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same flood, past the list reads: each claim's answer compared its request with
    every other claim of the channel (evidence, claims.md 2), k^2 comparisons (3000
    claims in 5.6 s against a 10 s window: 1682 UPHELD). A claim is compared with at most
    five of them now (`ConflictIndex`), and a conflict is still found (the test of the
    N3 attack in test_watcher_claims.py)."""
    compared = 0
    real = watcher_module.tiling_conflict

    def counting(claimed: Request, other: Request, horizon_ms: int) -> bool:
        nonlocal compared
        compared += 1
        return real(claimed, other, horizon_ms)

    monkeypatch.setattr(watcher_module, "tiling_conflict", counting)
    ledger = make_ledger()
    async with pair(ledger) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        now = await ledger.now()
        requests = [claimed_request(ch.channel, n, deadline=now - 1) for n in range(1, FLOOD + 1)]
        ids = [await ledger.file_claim(ALICE, request) for request in requests]
        await wait_until(lambda: decided(ledger, ids), timeout=60)
        for claim_id in ids:
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.DELIVERED
        # per lookup: a few stored requests (vouchers near n, the best), the requests the
        # channel's handlers serve (at most max_claim_answers, 16), and five claims at
        # most, whose slices are compared before any is read (twelfth session): 16 to 18
        # a claim measured at 30 and 200 claims; a claim that waited for a handler slot is
        # looked up before and after its wait (`Watcher._answer_claim`, attack round 18).
        # Pairwise would be about FLOOD**2 (40,000)
        assert compared <= 32 * FLOOD, compared


class OneUnreadableClaim(MemoryLedger):
    """Fails every read of one claim (a backend's trouble with it)."""

    poisoned: bytes = b""

    async def claim(self, claim_id: bytes) -> Claim | None:
        if claim_id == OneUnreadableClaim.poisoned:
            raise ConnectionError("cannot read this claim")
        return await super().claim(claim_id)


async def test_a_claim_the_ledger_cannot_read_keeps_no_other_claim_from_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claims filed since the list was read are read one by one: one whose read fails
    is read again later, the others are held and answered (a failure of one must not fail
    the evidence search of every other claim, C-1)."""
    monkeypatch.setattr(watcher_module, "RESCAN_STEPS", 10**9)
    ledger = make_ledger(OneUnreadableClaim)
    async with pair(ledger) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        now = await ledger.now()
        requests = [claimed_request(ch.channel, n, deadline=now - 1) for n in range(1, 7)]
        OneUnreadableClaim.poisoned = requests[0].hash  # a claim's id is its request's hash
        ids = [await ledger.file_claim(ALICE, request) for request in requests]
        await wait_until(lambda: decided(ledger, ids[1:]), timeout=60)
        for claim_id in ids[1:]:
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.DELIVERED
