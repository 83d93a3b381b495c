"""Attack round 15 on 8cd8a0a, fixed: a request consumed on the stream while a claim is
looked up, in tiling conflict with the claimed one, is kept as evidence
(`PayeeChannel.overlap_seen`): the claim ends FRIVOLOUS. What 8cd8a0a (and every version
before) did: a claimed gap request refused for CREDIT, its slice overlapping a
request numbered ABOVE it that the payee admitted and charged on the stream while the
claim's lookup ran (after the lookup read its known requests, ch.best included).

The lookup (8cd8a0a) watches only the claimed number n. A stream request S numbered m > n
(fresh) whose slice overlaps the claimed request R's is consumed at admission without any
watched event; the lookup then finds no evidence (it read `ch.best` before S came), no
stored answer, nothing pending or completed under n, and returns a gap. `admit_claimed`
(n <= last_n: not fresh, not seen) finds credit = paid_max - spent - reserved below the
price (S took that credit) and answers with a SIGNED PAYMENT_REQUIRED refusal, where the
right answer is S as evidence (tiling conflict: R.n < S.n and R.paid > S.paid - S.price).
The claim ends REFUSED and the ledger refunds R's slice, the very slice S was charged in:
S is served for nothing, and the payee's redeemed price is clawed from its stake.

MALLORY (payer, raw peer) pays call 1 (slice [0,1000]); signs R (n=2, slice [1000,2000]),
never sent, waits for its deadline and claims it; while the payee's watcher reads the
claims against it (the moment chosen by wrapping the ledger's claim read, as in the
round-14 tests; a stranger gets it by timing: the window spans the watcher's ledger
reads), sends S (n=3, slice [1000,2000]) on its stream: served OK, charged.
k=10: S_1..S_10 (n=3..12) tile R's slice [1000, 11000]: ten calls for nothing.

Second test (variant): S is refused at admission with a SIGNED refusal (unknown service;
`n` consumed, no handler); the lookup then admits R in the gap and serves it (credit is
there: S was refused); the payer posts S's refusal (FileClaim with refusal): S's slice,
which is R's, is refunded and R's redeemed price clawed from the stake.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import trio
from node_support import wait_until

from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, Response, decode_frame
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, NodeConfig, open_node

MALLORY = Keypair.from_seed(bytes([7]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
PRICE = 1_000
LEDGER_ID = b"p2pay:test:atk15-overlap"
CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
    claim_answer_margin_ms=300,
)


async def echo(call: Call) -> bytes:
    return call.body


def signed(
    channel: bytes,
    n: int,
    paid: int,
    deadline: int,
    body: bytes,
    price: int = PRICE,
    service: str = "echo",
) -> Request:
    return Request.create(
        MALLORY,
        ledger=LEDGER_ID,
        channel=channel,
        n=n,
        paid=paid,
        price=price,
        service=service,
        body=body,
        deadline=deadline,
    )


def _frames() -> Any:
    frame = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back


@pytest.mark.parametrize("k", [1, 10])
async def test_a_later_numbered_overlap_admitted_during_the_lookup_refutes_the_claim(
    k: int,
) -> None:
    ledger = MemoryLedger(
        Params(
            ledger_id=LEDGER_ID,
            dev=True,
            claim_bond=10**18,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob,
        open_memory_transport(net, MALLORY, ignore) as mallory_net,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(10**20, penalty=10**19, claim_window_ms=8_000)
        stake_before = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        channel = await ledger.open_channel(MALLORY, BOB.public, 10**6, 60_000)
        stream = await mallory_net.connect(bob.addrs[0])
        with trio.fail_after(10):
            await stream.send(Hello.create(MALLORY, ledger=LEDGER_ID).to_frame())
            assert isinstance(decode_frame(await stream.receive()), Hello)
            await stream.send(
                signed(channel, 1, PRICE, await ledger.now() + 30_000, b"one").to_frame()
            )
            first = decode_frame(await stream.receive())
        assert isinstance(first, Response) and first.status == "OK"

        deadline = await ledger.now() + 200
        # R: n=2, slice [1000, 1000 + k*1000] (never sent); S_i: n=2+i, slices tiling it
        r2 = signed(channel, 2, (k + 1) * PRICE, deadline, b"claimed", price=k * PRICE)
        later = await ledger.now() + 30_000
        s_reqs = [
            signed(channel, 2 + i, (i + 1) * PRICE, later, b"s%d" % i) for i in range(1, k + 1)
        ]
        with trio.fail_after(10):
            while await ledger.now() <= deadline:
                await trio.sleep(0.05)

        stream_answers: list[Response] = []
        read_claim = ledger.claim

        async def claim_read(claim_id: bytes) -> Any:
            found = await read_claim(claim_id)
            callers = {f.f_code.co_name for f in _frames()}
            if (
                claim_id == r2.hash
                and "_claimed_requests" in callers
                and trio.lowlevel.current_task().name.endswith("._defend")
                and not stream_answers
            ):
                with trio.fail_after(10):
                    for s in s_reqs:
                        await stream.send(s.to_frame())
                    for _ in s_reqs:
                        answer = decode_frame(await stream.receive())
                        assert isinstance(answer, Response)
                        stream_answers.append(answer)
            return found

        ledger.claim = claim_read  # type: ignore[method-assign]
        claim_id = await ledger.file_claim(MALLORY, r2)

        async def decided() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(decided, timeout=20)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        by_claim = decode_frame(claim.response_frame) if claim.response_frame else None
        s_answer = stream_answers[-1]
        payee = bob.payee_channels[channel]
        print()
        print(
            f"claim on R (n=2, slice [1000,{(k + 1) * PRICE}]):",
            claim.state.value,
            getattr(by_claim, "status", None),
            f"| stream S (n=3..{k + 2}):",
            [a.status for a in stream_answers],
            "last spent",
            s_answer.spent,
            "| payee spent",
            payee.spent,
            "paid_max",
            payee.paid_max,
        )
        # the payee redeems what it charged (the payer starts a close, C-8)
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed >= PRICE

        await wait_until(redeemed, timeout=20)
        await trio.sleep(0.5)
        info = await ledger.channel(channel)
        stake_after = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        assert info is not None
        print(
            "ledger: paid_seen",
            info.paid_seen,
            "refunded",
            info.refunded,
            "redeemed",
            info.redeemed,
            "clawed",
            info.clawed,
            "| stake lost",
            stake_before - stake_after,
        )
        await stream.reset()
        assert all(a.status == "OK" and a.price == PRICE for a in stream_answers)
        # S, consumed while the claim was looked up, is the evidence: FRIVOLOUS, no refund
        assert claim.state is ClaimState.FRIVOLOUS and claim.refund == 0
        # everything the payee charged, it may keep
        assert info.paid_seen - info.refunded == payee.spent == (k + 1) * PRICE
        assert info.clawed == 0 and stake_after == stake_before


async def test_a_later_numbered_overlap_refused_during_the_lookup_refutes_the_claim() -> None:
    k = 1
    ledger = MemoryLedger(
        Params(
            ledger_id=LEDGER_ID,
            dev=True,
            claim_bond=10**18,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob,
        open_memory_transport(net, MALLORY, ignore) as mallory_net,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(10**20, penalty=10**19, claim_window_ms=8_000)
        stake_before = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        channel = await ledger.open_channel(MALLORY, BOB.public, 10**6, 60_000)
        stream = await mallory_net.connect(bob.addrs[0])
        with trio.fail_after(10):
            await stream.send(Hello.create(MALLORY, ledger=LEDGER_ID).to_frame())
            assert isinstance(decode_frame(await stream.receive()), Hello)
            await stream.send(
                signed(channel, 1, PRICE, await ledger.now() + 30_000, b"one").to_frame()
            )
            first = decode_frame(await stream.receive())
        assert isinstance(first, Response) and first.status == "OK"

        deadline = await ledger.now() + 200
        # R: n=2, slice [1000, 1000 + k*1000] (never sent); S_i: n=2+i, slices tiling it
        r2 = signed(channel, 2, (k + 1) * PRICE, deadline, b"claimed", price=k * PRICE)
        later = await ledger.now() + 30_000
        s_reqs = [
            signed(channel, 2 + i, (i + 1) * PRICE, later, b"s%d" % i, service="unknown")
            for i in range(1, k + 1)
        ]
        with trio.fail_after(10):
            while await ledger.now() <= deadline:
                await trio.sleep(0.05)

        stream_answers: list[Response] = []
        read_claim = ledger.claim

        async def claim_read(claim_id: bytes) -> Any:
            found = await read_claim(claim_id)
            callers = {f.f_code.co_name for f in _frames()}
            if (
                claim_id == r2.hash
                and "_claimed_requests" in callers
                and trio.lowlevel.current_task().name.endswith("._defend")
                and not stream_answers
            ):
                with trio.fail_after(10):
                    for s in s_reqs:
                        await stream.send(s.to_frame())
                    for _ in s_reqs:
                        answer = decode_frame(await stream.receive())
                        assert isinstance(answer, Response)
                        stream_answers.append(answer)
            return found

        ledger.claim = claim_read  # type: ignore[method-assign]
        claim_id = await ledger.file_claim(MALLORY, r2)

        async def decided() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(decided, timeout=20)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        by_claim = decode_frame(claim.response_frame) if claim.response_frame else None
        s_answer = stream_answers[-1]
        payee = bob.payee_channels[channel]
        print()
        print(
            f"claim on R (n=2, slice [1000,{(k + 1) * PRICE}]):",
            claim.state.value,
            getattr(by_claim, "status", None),
            f"| stream S (n=3..{k + 2}):",
            [a.status for a in stream_answers],
            "last spent",
            s_answer.spent,
            "| payee spent",
            payee.spent,
            "paid_max",
            payee.paid_max,
        )
        # the payee redeems what it charged (the payer starts a close, C-8)
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed >= PRICE

        await wait_until(redeemed, timeout=20)
        await trio.sleep(0.5)
        info = await ledger.channel(channel)
        stake_after = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        assert info is not None
        print(
            "ledger: paid_seen",
            info.paid_seen,
            "refunded",
            info.refunded,
            "redeemed",
            info.redeemed,
            "clawed",
            info.clawed,
            "| stake lost",
            stake_before - stake_after,
        )
        await stream.reset()
        [refusal] = stream_answers
        assert refusal.status == "UNKNOWN_SERVICE" and refusal.price == 0
        # S, refused at admission while the claim was looked up, is the evidence: R is not
        # served, and S's refusal refunds a slice nothing was charged in
        assert claim.state is ClaimState.FRIVOLOUS and payee.spent == PRICE
        await ledger.file_claim(MALLORY, s_reqs[0], refusal=refusal)
        info = await ledger.channel(channel)
        assert info is not None
        stake_after = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        assert info.clawed == 0 and stake_after == stake_before
        assert info.paid_seen - info.refunded >= payee.spent == PRICE
