"""Holes found by the adversarial review of the claim game (specs/claims.md; /work/attack
N8, N9, N11, N12, N13). Nodes on the in-memory transport and a dev MemoryLedger; no test
asserts on timing, every wait is bounded (`wait_until`, `trio.fail_after`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from node_support import wait_until

from p2pay.core.errors import ErrorCode, LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, CallTimeout, Node, NodeConfig, open_node

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
PRICE = 1_000
TOKEN = 10**24
BOND = 10**18
STAKE, PENALTY = 10**20, 10**19
LEDGER_ID = b"p2pay:test:holes"

FAST = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,  # redeem only when a duty forces it
    default_timeout=30.0,
    min_challenge_ms=50,
    claim_answer_margin_ms=300,
)


def make_ledger(**params: Any) -> MemoryLedger:
    values: dict[str, Any] = {
        "ledger_id": LEDGER_ID,
        "dev": True,
        "claim_bond": BOND,
        "min_claim_window_ms": 50,
        "min_challenge_ms": 50,
        "max_deadline_horizon_ms": 60_000,
    }
    values.update(params)
    return MemoryLedger(Params(**values))


async def echo(call: Call) -> bytes:
    return call.body


@asynccontextmanager
async def pair(
    ledger: MemoryLedger, *, bob_config: NodeConfig = FAST, alice_config: NodeConfig = FAST
) -> AsyncIterator[tuple[Node, Node]]:
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=bob_config) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=alice_config) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        yield alice, bob


async def test_n9_a_hung_handler_past_its_deadline_is_refused_not_slashed() -> None:
    """N9 (C-1, C-4): a handler that outlives its request's deadline cannot be charged any
    more; the claim on it is answered at once with a signed DEADLINE_EXCEEDED (the old
    watcher waited for the handler until the window closed: UPHELD). When the handler
    finally ends, nothing is charged and the stored answer is not replaced."""
    ledger = make_ledger()
    release = trio.Event()
    started = trio.Event()

    async def hung(call: Call) -> bytes:
        started.set()
        with trio.CancelScope(shield=True), trio.fail_after(30):
            await release.wait()
        return b"finally"

    async with pair(ledger) as (alice, bob):
        bob.serve("hung", hung, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=8_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        try:
            with pytest.raises(CallTimeout):
                await alice.call(bob.peer_id, "hung", b"x", max_price=PRICE, timeout=0.3)

            async def decided() -> bool:
                claims = await ledger.claims_of(BOB.account)
                return bool(claims) and all(c.state is not ClaimState.OPEN for c in claims)

            await wait_until(decided, timeout=60)
            [claim] = await ledger.claims_of(BOB.account)
            assert claim.state is ClaimState.REFUSED
            response = decode_frame(claim.response_frame)
            assert isinstance(response, Response) and response.verify(BOB.account)
            assert response.status == ErrorCode.DEADLINE_EXCEEDED.value
            assert response.price == 0
            assert claim.slashed == 0
        finally:
            release.set()
        payee = bob.payee_channels[ch.channel]

        async def completed() -> bool:
            return not payee.pending and not bob._unanswered

        await wait_until(completed)
        assert (payee.spent, payee.reserved) == (0, 0)  # released, never charged
        await bob.persister.flush()
        stored = await bob.store.response(response.request_hash)
        assert stored is not None and stored.frame == claim.response_frame
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE


# ---------------------------------------------------------------------------
# N12: a paid request the ledger would not hear as a claim is never sent


async def test_n12_a_paid_body_over_the_ledgers_claim_limit_is_refused_before_signing() -> None:
    ledger = make_ledger(max_claim_body=4096)
    async with pair(ledger) as (alice, bob):
        bob.serve("big", echo, price=PRICE, max_body=1 << 16)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=8_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        with pytest.raises(LocalProtocolError) as info:
            await alice.call(bob.peer_id, "big", b"x" * 10_240, max_price=PRICE, timeout=5)
        assert info.value.code is ErrorCode.BODY_TOO_LARGE
        assert "max_claim_body" in str(info.value) and "4096" in str(info.value)
        assert await alice.store.requests() == []  # nothing signed, nothing sent
        assert alice.payer_channels[ch.channel].last_n == 0
        result = await alice.call(bob.peer_id, "big", b"y" * 4096, max_price=PRICE, timeout=5)
        assert result.body == b"y" * 4096 and result.price == PRICE


# ---------------------------------------------------------------------------
# N11: no paid request to an unbonding provider that could not be claimed (C-9)


async def test_n11_no_paid_request_past_an_unbonding_providers_last_claimable_deadline() -> None:
    horizon = 30_000
    ledger = make_ledger(max_deadline_horizon_ms=horizon)
    async with pair(ledger) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=8_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        await alice.call(bob.peer_id, "echo", b"before", max_price=PRICE, timeout=5)
        await ledger.request_unstake(BOB)
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.unstake_requested_at > 0
        last = stake.unstake_requested_at + horizon

        # a short call is still claimable: its deadline is before `last`
        ok = await alice.call(bob.peer_id, "echo", b"short", max_price=PRICE, timeout=5)
        assert ok.body == b"short"
        sent = len(await alice.store.requests())
        await wait_until(lambda: alice.now() > stake.unstake_requested_at)  # a ms later
        # a call whose deadline (capped at now + horizon) is after `last` is not sent
        with pytest.raises(LocalProtocolError) as info:
            await alice.call(bob.peer_id, "echo", b"long", max_price=PRICE, timeout=horizon)
        assert info.value.code is ErrorCode.UNBONDING
        assert "unstak" in str(info.value)
        assert len(await alice.store.requests()) == sent  # nothing signed
        assert alice.payer_channels[ch.channel].last_n == 2
        assert alice.now() + horizon > last


# ---------------------------------------------------------------------------
# N13: stored answers are kept for the window in force, not the one at answer time


async def test_n13_raising_the_claim_window_keeps_earlier_answers_until_their_claims_end() -> None:
    """Bob answers with a small window, then raises it: a claim (which uses the current
    window) on an earlier answered request must still find the stored answer after the
    pruning the old window allowed (the old node pruned it: REFUSED, refund clawed)."""
    horizon, window, retention = 1_000, 200, 300
    ledger = make_ledger(max_deadline_horizon_ms=horizon)
    config = dataclasses.replace(FAST, response_retention_ms=retention)
    async with pair(ledger, bob_config=config) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=window)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        first = await alice.call(bob.peer_id, "echo", b"one", max_price=PRICE, timeout=5)
        await alice.call(bob.peer_id, "echo", b"two", max_price=PRICE, timeout=5)
        await bob.stake(1, penalty=PENALTY, claim_window_ms=60_000)
        [record] = [r for r in await alice.store.requests() if r.n == first.n]
        request = decode_frame(record.frame)
        assert isinstance(request, Request)
        old_expiry = request.deadline + max(retention, horizon + 2 * window)
        await wait_until(lambda: bob.now() > old_expiry + 1)  # the old expiry has passed
        await bob.persister.flush()
        prune_before = getattr(bob, "prune_before", bob.now)  # what the watcher prunes with
        await bob.store.prune_responses(prune_before())
        assert await bob.store.response(request.hash) is not None  # kept for the new window

        claim_id = await ledger.file_claim(ALICE, request)

        async def decided() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(decided)
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.DELIVERED
        assert (claim.refund, claim.clawed) == (0, 0)


# ---------------------------------------------------------------------------
# the claim answer margin covers the ledger's block time


class SlowBlocks(MemoryLedger):
    block_time_ms = 2_000  # a ledger that states its block interval


async def test_the_claim_answer_margin_is_at_least_three_block_intervals() -> None:
    ledger = SlowBlocks(make_ledger().params)
    deadlines: list[int] = []

    async def record(call: Call) -> bytes:
        deadlines.append(call.deadline)
        return b"served"

    async with pair(ledger) as (alice, bob):  # bob's margin: 300 ms
        bob.serve("record", record, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=60_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        now = await ledger.now()
        request = Request.create(  # reaches bob only through the claim
            ALICE,
            ledger=LEDGER_ID,
            channel=ch.channel,
            n=1,
            paid=PRICE,
            price=PRICE,
            service="record",
            body=b"c",
            deadline=now - 1,
        )
        claim_id = await ledger.file_claim(ALICE, request)

        async def decided() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(decided)
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.DELIVERED
        assert deadlines == [claim.window_ends - 3 * SlowBlocks.block_time_ms]
