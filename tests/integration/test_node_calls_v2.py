"""The node's paid call path under protocol v2 (specs/claims.md C-4, issue 13 items 2, 3, 7).

* a provider that charges a request and then answers an unsigned REPLAY (with genuine
  resync data) gets paid once, and the request stays claimable (`RequestInDoubt`);
* a handler that finishes after the request's deadline is not charged;
* a re-sent request gets the stored answer (OK or refusal), never a second charge,
  also while its handler still runs;
* an answer larger than the ledger's claim body limit is refused, not charged;
* deadlines a payer signs are capped at the ledger's horizon.

Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from node_support import wait_until

from p2pay.core.errors import ErrorCode, HandlerError
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    RESPONSE_OVERHEAD,
    STATUS_OK,
    Hello,
    Refusal,
    Request,
    Response,
    decode_frame,
)
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import (
    Call,
    CallTimeout,
    Node,
    NodeConfig,
    RequestInDoubt,
    _Outbox,
    _ServerSession,
    open_node,
)

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
PRICE = 1_000
TOKEN = 10**24
BOND = 10**18
HORIZON = 60_000

FAST = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=5.0,
)


def make_ledger() -> MemoryLedger:
    return MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:calls-v2",
            dev=True,
            claim_bond=BOND,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=HORIZON,
        )
    )


async def echo(call: Call) -> bytes:
    return call.body


@asynccontextmanager
async def pair(ledger: MemoryLedger, handler: Any = echo) -> AsyncIterator[tuple[Node, Node]]:
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    async with (
        open_node(key=BOB, ledger=ledger, config=FAST) as bob,
        open_node(key=ALICE, ledger=ledger, config=FAST) as alice,
    ):
        bob.serve("echo", handler, price=PRICE)
        yield bob, alice


# ---------------------------------------------------------------------------- item 2


def fake_replay_on_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every provider cheat on request n=1: serve and charge it (its answer stored, as
    an honest provider does), then send an unsigned REPLAY with genuine resync details
    instead of the answer, and REPLAY again when it is re-sent."""
    real_answer = _ServerSession._answer
    real_again = _ServerSession._answer_again

    def answer(self: _ServerSession, ch: Any, request: Request, *args: Any) -> None:
        if request.n != 1:
            real_answer(self, ch, request, *args)
            return
        kept, self.outbox = self.outbox, _Outbox()  # the real answer goes nowhere
        try:
            real_answer(self, ch, request, *args)
        finally:
            self.outbox = kept
        self.outbox.put(
            0,
            Refusal(
                channel=request.channel,
                n=request.n,
                code=ErrorCode.REPLAY,
                message="seen it",
                details=ch.resync_details(),
            ).to_frame(),
        )

    async def again(self: _ServerSession, request: Request) -> bool:
        return request.n != 1 and await real_again(self, request)

    monkeypatch.setattr(_ServerSession, "_answer", answer)
    monkeypatch.setattr(_ServerSession, "_answer_again", again)


async def test_fake_replay_after_charging_costs_one_price_and_stays_claimable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13 item 2. Old payers deleted the request on the REPLAY, adopted the payee's
    spent and sent a new request: two prices for one call, nothing left to claim."""
    fake_replay_on_first_request(monkeypatch)
    ledger = make_ledger()
    async with pair(ledger) as (bob, alice):
        await bob.stake(10**20, penalty=10**19, claim_window_ms=3_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        with pytest.raises(RequestInDoubt) as info:
            await alice.call(bob.peer_id, "echo", b"first", max_price=PRICE, timeout=0.5)
        assert isinstance(info.value, CallTimeout) and info.value.code is ErrorCode.REPLAY
        assert "claimable" in info.value.message
        payer = alice.payer_channels[ch.channel]
        payee = bob.payee_channels[ch.channel]
        assert payee.spent == PRICE and bob.counters.calls_served == 1  # charged once
        assert (payer.spent, payer.paid, set(payer.abandoned)) == (0, PRICE, {1})
        assert alice.counters.in_doubt == 1
        [record] = await alice.store.requests()
        assert (record.n, record.state, record.price) == (1, "awaiting", PRICE)
        first = decode_frame(record.frame)
        assert isinstance(first, Request) and first.body == b"first"

        # the next call pays its own price only; the lost charge explains the jump
        result = await alice.call(bob.peer_id, "echo", b"second", max_price=PRICE, timeout=5)
        assert (result.n, result.price, result.spent) == (2, PRICE, 2 * PRICE)
        assert payee.spent == 2 * PRICE and payer.paid == 2 * PRICE  # one price per call

        # after its deadline the request in doubt is claimed; the provider must deliver
        async def delivered() -> bool:
            claim = await ledger.claim(first.hash)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(lambda: alice.counters.claims_filed == 1)
        await wait_until(delivered)
        claim = await ledger.claim(first.hash)
        answer = decode_frame(claim.response_frame)
        assert isinstance(answer, Response) and answer.verify(BOB.public)
        assert (answer.status, answer.body) == (STATUS_OK, b"first")
        assert (await ledger.stake_of(BOB.account)).amount == 10**20


# ---------------------------------------------------------------------------- item 3


async def test_a_late_answer_is_not_charged() -> None:
    """Issue 13 item 3, C-4: the handler finishes after the deadline: the provider sends a
    signed DEADLINE_EXCEEDED and charges nothing (old nodes charged it)."""
    ledger = make_ledger()

    async def slow(call: Call) -> bytes:
        await trio.sleep(0.6)
        return b"too late"

    async with pair(ledger, slow) as (bob, alice):
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.3)
        await wait_until(lambda: bob.counters.late_answers == 1)
        payee = bob.payee_channels[ch.channel]
        assert (payee.spent, payee.reserved, bob.counters.calls_served) == (0, 0, 0)
        [record] = await alice.store.requests()
        await bob.persister.flush()
        stored = await bob.store.response(record.request_hash)
        assert stored is not None and stored.request_frame == record.frame
        answer = decode_frame(stored.frame)
        assert isinstance(answer, Response)
        assert (answer.status, answer.price) == (ErrorCode.DEADLINE_EXCEEDED.value, 0)
        # the payer reads the late refusal: nothing charged
        await wait_until(lambda: alice.payer_channels[ch.channel].abandoned == {})
        assert alice.payer_channels[ch.channel].spent == 0


# ---------------------------------------------------------------------------- C-4 re-sends


async def test_a_resent_request_gets_the_stored_answer_not_a_second_charge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from p2pay.core.session import ClientSession

    ledger = make_ledger()
    async with pair(ledger) as (bob, alice):
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        real = ClientSession._on_response
        monkeypatch.setattr(ClientSession, "_on_response", lambda self, r: [])
        with pytest.raises(CallTimeout):  # the receipt is lost on the way
            await alice.call(bob.peer_id, "echo", b"once", max_price=PRICE, timeout=0.3)
        monkeypatch.setattr(ClientSession, "_on_response", real)
        payer = alice.payer_channels[ch.channel]
        assert set(payer.abandoned) == {1} and bob.payee_channels[ch.channel].spent == PRICE
        # retry delivery of the very same signed request (what a payer does before claiming)
        [record] = await alice.store.requests()
        sent = decode_frame(record.frame)
        assert isinstance(sent, Request)
        with trio.fail_after(10):
            got = await alice.resend_request(sent, timeout=5)
        assert got is not None and got.response.body == b"once"
        assert (payer.spent, payer.abandoned) == (PRICE, {})
        await alice.persister.flush()
        assert (await alice.store.request(sent.hash)).state == "answered"
        with trio.fail_after(10):
            assert await alice.resend_request(sent) is None  # settled: nothing to do
        assert bob.payee_channels[ch.channel].spent == PRICE  # not charged twice
        assert (bob.counters.calls_served, bob.counters.answers_resent) == (1, 1)


async def test_resent_requests_on_a_raw_stream() -> None:
    """Server side of C-4 on the wire: a duplicate while the handler runs gets the answer
    too, a later duplicate the stored answer (byte for byte), a different request under a
    used number REPLAY, an overlapping slice an unsigned PAYMENT_REQUIRED (attack N1: a
    signed refusal is refundable on the ledger) with the resync details; one charge."""
    ledger = make_ledger()
    gate = trio.Event()
    started = trio.Event()

    async def gated(call: Call) -> bytes:
        started.set()
        with trio.fail_after(10):
            await gate.wait()
        return b"answer:" + call.body

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    await ledger.mint(ALICE, ALICE.account, 10 * TOKEN)
    async with open_node(key=BOB, ledger=ledger, config=FAST) as bob:
        bob.serve("echo", gated, price=PRICE)
        channel = await ledger.open_channel(ALICE, BOB.account, 10**6, 60_000)

        def req(n: int, paid: int, body: bytes) -> Request:
            return Request.create(
                ALICE,
                ledger=ledger.ledger_id,
                channel=channel,
                n=n,
                paid=paid,
                price=PRICE,
                service="echo",
                body=body,
                deadline=wall_clock_ms() + 10_000,
            )

        r1 = req(1, PRICE, b"one")
        async with open_libp2p_transport(ALICE, ignore) as raw:
            stream = await raw.connect(bob.addrs[0])
            with trio.fail_after(10):
                await stream.send(Hello.create(ALICE, ledger=ledger.ledger_id).to_frame())
                assert isinstance(decode_frame(await stream.receive()), Hello)
                await stream.send(r1.to_frame())
                await started.wait()
                await stream.send(r1.to_frame())  # re-sent while its handler runs
                await wait_until(lambda: bob.counters.answers_resent == 1)
                gate.set()
                first, second = await stream.receive(), await stream.receive()
                assert first == second
                answer = decode_frame(first)
                assert isinstance(answer, Response) and answer.ok
                assert (answer.body, answer.price, answer.spent) == (b"answer:one", PRICE, PRICE)
                await stream.send(r1.to_frame())  # and once more, from the store
                assert await stream.receive() == first
                other = req(1, PRICE, b"another body")  # n=1 again, another request
                await stream.send(other.to_frame())
                replay = decode_frame(await stream.receive())
                assert isinstance(replay, Refusal) and replay.code is ErrorCode.REPLAY
                assert replay.details["last_n"] == 1 and replay.details["paid_max"] == PRICE
                overlap = req(2, PRICE + PRICE // 2, b"overlap")  # slice (500, 1500]
                await stream.send(overlap.to_frame())
                refused = decode_frame(await stream.receive())
                assert isinstance(refused, Refusal) and refused.n == 2
                assert refused.code is ErrorCode.PAYMENT_REQUIRED
                assert refused.details["paid_max"] == PRICE
                assert refused.details["voucher"] == r1.voucher_frame()  # no body (15)
            await stream.reset()
        payee = bob.payee_channels[channel]
        assert (payee.spent, bob.counters.calls_served, bob.counters.answers_resent) == (
            PRICE,
            1,
            2,
        )
        # nothing signed, nothing stored, n=2 not consumed
        await bob.persister.flush()
        assert await bob.store.response(overlap.hash) is None
        assert [v.n for v in await bob.store.vouchers(channel)] == [1]
        assert payee.last_n == 1


# ---------------------------------------------------------------------------- item 7


async def test_an_answer_over_the_claim_body_limit_is_refused_not_charged() -> None:
    ledger = make_ledger()

    async def sized(call: Call) -> bytes:
        return b"x" * int(call.body)

    async with pair(ledger, sized) as (bob, alice):
        real = bob._ledger_param
        # what Params.max_claim_body says on a ledger that limits claim bodies (EVM: 32768)
        bob._ledger_param = lambda name: 64 if name == "max_claim_body" else real(name)  # type: ignore[method-assign]
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        with pytest.raises(HandlerError) as info:
            await alice.call(bob.peer_id, "echo", b"65", max_price=PRICE)
        assert info.value.details == {"max_body": 64}
        assert bob.payee_channels[ch.channel].spent == 0
        ok = await alice.call(bob.peer_id, "echo", b"64", max_price=PRICE)
        assert len(ok.body) == 64 and ok.spent == PRICE


async def test_an_answer_over_the_payers_max_frame_is_refused_not_charged() -> None:
    """5.3, 13.3: a payee never sends a frame above the payer's announced max_frame; an
    answer longer than L = max_frame - RESPONSE_OVERHEAD is a signed HANDLER_ERROR with
    details {max_body: L}, nothing charged. (Found by an implementation written from the
    spec: the node checked its own limit and sent a 4.3 kB frame to a 4096-byte payer.)"""
    ledger = make_ledger()

    async def sized(call: Call) -> bytes:
        return b"x" * int(call.body)

    small = dataclasses.replace(FAST, max_frame=8192)
    limit = 8192 - RESPONSE_OVERHEAD
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    async with (
        open_node(key=BOB, ledger=ledger, config=FAST) as bob,
        open_node(key=ALICE, ledger=ledger, config=small) as alice,
    ):
        bob.serve("echo", sized, price=PRICE)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        with pytest.raises(HandlerError) as info:
            await alice.call(bob.peer_id, "echo", str(limit + 1).encode(), max_price=PRICE)
        assert info.value.details == {"max_body": limit}
        assert bob.payee_channels[ch.channel].spent == 0
        ok = await alice.call(bob.peer_id, "echo", str(limit).encode(), max_price=PRICE)
        assert len(ok.body) == limit and ok.spent == PRICE


# ---------------------------------------------------------------------------- horizon


async def test_deadlines_are_capped_at_the_ledger_horizon() -> None:
    ledger = make_ledger()
    async with pair(ledger) as (bob, alice):
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        before = alice.now()
        await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=600)
        [record] = await alice.store.requests()
        assert before < record.deadline <= alice.now() + HORIZON
