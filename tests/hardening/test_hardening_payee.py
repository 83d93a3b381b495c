"""A hostile provider, and claims as a weapon (issue 7; INV-11, INV-12, INV-13).

BOB here is a fake provider speaking raw frames on the memory transport: it overcharges,
jumps `spent`, signs with the wrong key, answers another request, lies in resync details.
ALICE's node must refuse every such receipt with a typed error, leave its accounting
unchanged, and BOB can never redeem more than the prices of the requests ALICE sent.
Then ALICE turns against an honest, staked BOB with a burst of false claims: each is
answered by BOB's watcher and costs ALICE its bond.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hardening_support import (
    ALICE,
    BOB,
    MALLORY,
    PRICE,
    TOKEN,
    answer_hello_as_bob,
    echo,
    make_ledger,
)

from p2pay.core import codec
from p2pay.core.errors import ErrorCode, PayeeFaulty, RemoteProtocolError, SettlementError
from p2pay.core.messages import (
    Refusal,
    Request,
    Response,
    decode_frame,
    refusal_body,
)
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.base import StreamClosed
from p2pay.net.memory import MemoryNetwork, memory_addr, open_memory_transport
from p2pay.node import Node, NodeConfig, RequestInDoubt, open_node

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Answer = Callable[[Request, int], Awaitable[bytes]]  # (request, honest spent) -> frame


@asynccontextmanager
async def cheating_provider(
    answer: Answer, **config: Any
) -> AsyncIterator[tuple[Node, MemoryLedger, bytes]]:
    """A fake BOB that answers each request with `answer(request, spent_so_far)`; ALICE's
    node has `NodeConfig(**config)` besides its defaults."""
    network = MemoryNetwork()
    ledger = make_ledger()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    spent = 0

    async def serve(stream: Any) -> None:
        nonlocal spent
        await answer_hello_as_bob(stream, ledger.ledger_id)
        while True:
            try:
                request = decode_frame(await stream.receive())
            except StreamClosed:
                return  # ALICE dropped the connection
            assert isinstance(request, Request)
            await stream.send(await answer(request, spent))
            spent += PRICE

    config = NodeConfig(**{"watcher": False, "default_timeout": 2.0, **config})
    async with (
        open_memory_transport(network, BOB, serve),
        open_node(key=ALICE, ledger=ledger, network=network, config=config) as alice,
    ):
        info = await alice.open_channel(memory_addr(str(BOB.peer_id)), deposit=10**6)
        yield alice, ledger, info.channel


def receipt(request: Request, *, price: int, spent: int, key: Any = BOB, **kw: Any) -> bytes:
    return Response.create(
        key,
        request=request,
        status=kw.get("status", "OK"),
        price=price,
        spent=spent,
        body=kw.get("body", request.body),
    ).to_frame()


async def overcharge(request: Request, spent: int) -> bytes:
    return receipt(request, price=2 * PRICE, spent=spent + 2 * PRICE)


async def jump_spent(request: Request, spent: int) -> bytes:
    return receipt(request, price=PRICE, spent=spent + 5 * PRICE)


async def wrong_signer(request: Request, spent: int) -> bytes:
    return receipt(request, price=PRICE, spent=spent + PRICE, key=MALLORY)


async def other_request(request: Request, spent: int) -> bytes:
    other = Request.create(
        ALICE,
        ledger=request.ledger,
        channel=request.channel,
        n=request.n,
        paid=request.paid,
        price=request.price,
        service="echo",
        body=b"not what was asked",
        deadline=request.deadline,
    )
    return receipt(other, price=PRICE, spent=spent + PRICE)


async def body_swapped(request: Request, spent: int) -> bytes:
    good = Response.create(
        BOB, request=request, status="OK", price=PRICE, spent=spent + PRICE, body=b"paid"
    )
    return codec.encode([2, good.signing_bytes, good.signature, b"swapped"])


async def refusal_that_charges(request: Request, spent: int) -> bytes:
    """Not constructible with the API: a non-OK status with a price, signed by BOB."""
    good = Response.create(
        BOB, request=request, status="OK", price=PRICE, spent=spent + PRICE, body=b""
    )
    signed = good.signing_bytes.replace(b"fstatusbOK", b"fstatusnHANDLER_ERROR")
    return codec.encode([2, signed, BOB.sign(signed), b""])


@pytest.mark.parametrize(
    ("cheat", "code"),
    [
        (overcharge, ErrorCode.MALFORMED),
        (jump_spent, ErrorCode.MALFORMED),
        (wrong_signer, ErrorCode.INVALID_SIGNATURE),
        (other_request, ErrorCode.MALFORMED),
        (body_swapped, ErrorCode.MALFORMED),
        (refusal_that_charges, None),  # undecodable: the connection is dropped
    ],
)
async def test_cheating_receipts_are_refused_and_bounded(cheat: Answer, code: Any) -> None:
    """Every cheating receipt is refused (INV-12) and leaves the payer's `spent` alone; all
    the payee can redeem is what ALICE signed: the prices of the requests she sent (INV-11).
    A refused receipt makes BOB faulty on the channel (protocol.md 14.3, "A faulty payee"):
    ALICE's later calls on it fail PAYEE_FAULTY before anything is signed, so BOB gets the
    price of one request at most (before, each later call signed a fresh slice for BOB to
    cheat again). An undecodable answer names no channel: the connection is dropped and
    the next call pays again, each at most its price. ALICE checks every receipt's
    signature here (receipt_check_every=1; the sampled check of protocol.md 14.4 has its
    own test below)."""
    async with cheating_provider(cheat, receipt_check_every=1) as (alice, ledger, channel):
        calls = 4
        for i in range(calls):
            await trio.sleep(0.01)  # ALICE drops a connection that gave a bad receipt
            with pytest.raises(Exception) as info:
                await alice.call(memory_addr(str(BOB.peer_id)), "echo", b"hi", max_price=PRICE)
            if code is None:
                assert getattr(info.value, "code", None) in (
                    ErrorCode.UNREACHABLE,  # ConnectionLost
                    ErrorCode.DEADLINE_EXCEEDED,  # CallTimeout
                )
            elif i == 0:
                assert isinstance(info.value, RemoteProtocolError)
                assert info.value.code is code
            else:
                assert isinstance(info.value, PayeeFaulty), info.value
                assert info.value.details == {"channel": channel.hex()}
        ch = alice.payer_channels[channel]
        assert ch.spent == 0 and alice.counters.paid == 0
        if code is None:
            assert ch.faulty is None and ch.paid <= calls * PRICE
            assert alice.counters.protocol_violations >= calls
        else:
            assert ch.faulty is not None and ch.paid == PRICE and ch.last_n == 1
            assert alice.counters.protocol_violations == 1
        # the most BOB can take with the best voucher it was sent
        best = max(
            (decode_frame(r.frame) for r in await alice.store.requests()),
            key=lambda r: r.paid,
        )
        before = await ledger.balance(BOB.account)
        await ledger.redeem(BOB, best)
        assert await ledger.balance(BOB.account) - before == best.paid <= calls * PRICE


async def test_a_payee_forging_receipt_signatures_is_caught_by_the_sample() -> None:
    """protocol.md 14.4 with the default sample (1 receipt in 16): a payee signing its OK
    receipts with another key gets them accepted until one is drawn, then the call fails
    INVALID_SIGNATURE. Each receipt accepted unchecked moved ALICE's `spent` by exactly its
    price and answered her request (money rules are checked on every receipt), and all BOB
    can redeem is what ALICE signed. Not caught within 400 receipts: (15/16)^400 ~ 6e-12."""
    async with cheating_provider(wrong_signer) as (alice, ledger, channel):
        assert alice.config.receipt_check_every == 16
        accepted = 0
        for _ in range(400):
            try:
                result = await alice.call(
                    memory_addr(str(BOB.peer_id)), "echo", b"hi", max_price=PRICE
                )
            except RemoteProtocolError as exc:
                assert exc.code is ErrorCode.INVALID_SIGNATURE
                break
            assert (result.body, result.price, result.receipt_checked) == (b"hi", PRICE, False)
            accepted += 1
        else:
            pytest.fail("400 forged receipts and none drawn for a check")
        ch = alice.payer_channels[channel]
        assert ch.spent == accepted * PRICE
        assert ch.paid == (accepted + 1) * PRICE  # the caught one's slice is outstanding
        assert ch.spent + ch.outstanding == ch.paid
        best = max(
            (decode_frame(r.frame) for r in await alice.store.requests()),
            key=lambda r: r.paid,
        )
        before = await ledger.balance(BOB.account)
        await ledger.redeem(BOB, best)
        assert await ledger.balance(BOB.account) - before == best.paid == ch.paid


async def test_a_request_whose_receipt_was_refused_is_abandoned_with_its_stream() -> None:
    """protocol.md 13.1 step 4: a request whose stream ends unanswered is abandoned (it may
    have been charged). One whose receipt was refused ends its stream too: it was left in
    flight for the node's lifetime, so the payee's next receipt, whose `spent` counts that
    request's charge (a jump, rule 7), was refused as well, and so was every later one on
    the channel. BOB here signs one receipt with the wrong key, then would answer honestly
    (the jump of a later receipt that request 1's charge explains is accepted:
    `unit/test_channel.py`), but a payee that sent a bad receipt gets no further request
    on the channel (protocol.md 14.3, "A faulty payee")."""
    forged = 0

    async def once_forged(request: Request, spent: int) -> bytes:
        nonlocal forged
        forged += 1
        key = MALLORY if forged == 1 else BOB
        return receipt(request, price=PRICE, spent=spent + PRICE, key=key)

    async with cheating_provider(once_forged, receipt_check_every=1) as (alice, _, channel):
        peer = memory_addr(str(BOB.peer_id))
        with pytest.raises(RemoteProtocolError) as info:
            await alice.call(peer, "echo", b"hi", max_price=PRICE)
        assert info.value.code is ErrorCode.INVALID_SIGNATURE
        ch = alice.payer_channels[channel]
        assert list(ch.abandoned) == [1] and not ch.in_flight
        assert ch.outstanding == PRICE  # BOB may have charged it: claimable, re-sendable
        # and BOB is faulty on the channel: nothing more is signed on it (protocol.md 14.3)
        with pytest.raises(PayeeFaulty):
            await alice.call(peer, "echo", b"again", max_price=PRICE)
        assert (ch.last_n, ch.paid, ch.spent) == (1, PRICE, 0)


async def lying_replay(details: dict[str, Any]) -> Answer:
    async def answer(request: Request, spent: int) -> bytes:
        fields = {k: (v(request) if callable(v) else v) for k, v in details.items()}
        return Refusal(
            channel=request.channel, n=request.n, code=ErrorCode.REPLAY, details=fields
        ).to_frame()

    return answer


def foreign_voucher(request: Request) -> bytes:
    return Request.create(
        MALLORY,
        ledger=request.ledger,
        channel=request.channel,
        n=1,
        paid=10**6,
        price=PRICE,
        service="echo",
        body=b"",
        deadline=0,
    ).to_frame()


@pytest.mark.parametrize(
    ("details", "last_n"),
    [
        # spent above the voucher the payer signed: spent is never adopted anyway
        (
            {
                "last_n": 1,
                "spent": 10 * PRICE,
                "paid_max": PRICE,
                "voucher": lambda r: r.to_frame(),
            },
            1,
        ),
        # a voucher the payer never signed: nothing adopted
        ({"last_n": 7, "spent": 10**6, "paid_max": 10**6, "voucher": foreign_voucher}, 1),
        # spent without any voucher: the number (only) is adopted
        ({"last_n": 5, "spent": PRICE, "paid_max": 0}, 5),
        # paid_max missing: the details are MALFORMED (protocol.md 15 step 1), nothing adopted
        ({"last_n": 5, "spent": PRICE}, 1),
        # voucher n above the claimed last_n: nothing adopted
        ({"last_n": 0, "spent": 0, "paid_max": PRICE, "voucher": lambda r: r.to_frame()}, 1),
        # not numbers at all
        ({"last_n": "many", "spent": -1, "paid_max": 0}, 1),
    ],
)
async def test_lying_resync_details_move_nothing(details: dict[str, Any], last_n: int) -> None:
    """A payee lying in REPLAY details (spec 15) moves nothing but request numbers: the
    payer never adopts `spent`, believes only its own signature for `paid`, and keeps the
    request: re-sent once, then `RequestInDoubt`, claimable (INV-13, issue 13 item 2)."""
    async with cheating_provider(await lying_replay(details)) as (alice, _ledger, channel):
        with pytest.raises(RequestInDoubt) as info:
            await alice.call(memory_addr(str(BOB.peer_id)), "echo", b"hi", max_price=PRICE)
        assert info.value.code is ErrorCode.REPLAY
        ch = alice.payer_channels[channel]
        assert (ch.spent, ch.paid, ch.last_n, set(ch.abandoned)) == (0, PRICE, last_n, {1})
        [record] = await alice.store.requests()
        assert (record.n, record.state) == (1, "awaiting")


async def test_resync_adopts_only_what_the_payer_signed() -> None:
    """A REPLAY carrying the payer's own voucher (this very request) and a large last_n:
    the payer adopts the number and its own `paid`, never `spent`, and re-sends the same
    request; the receipt that answers the re-send is accepted: one charge for one call."""
    state = {"replayed": False}

    async def answer(request: Request, spent: int) -> bytes:
        if not state["replayed"]:
            state["replayed"] = True
            return Refusal(
                channel=request.channel,
                n=request.n,
                code=ErrorCode.REPLAY,
                details={
                    "last_n": 40,
                    "spent": 7 * PRICE,
                    "paid_max": request.paid,  # required (protocol.md 15 step 1)
                    "voucher": request.to_frame(),
                },
            ).to_frame()
        return receipt(request, price=PRICE, spent=PRICE if request.n == 1 else 2 * PRICE)

    async with cheating_provider(answer) as (alice, _ledger, channel):
        result = await alice.call(memory_addr(str(BOB.peer_id)), "echo", b"hi", max_price=PRICE)
        assert (result.n, result.spent, result.price) == (1, PRICE, PRICE)
        ch = alice.payer_channels[channel]
        assert (ch.spent, ch.paid, ch.last_n) == (PRICE, PRICE, 40)
        again = await alice.call(memory_addr(str(BOB.peer_id)), "echo", b"hi", max_price=PRICE)
        assert (again.n, again.spent) == (41, 2 * PRICE)
        assert ch.paid == 2 * PRICE


# ---------------------------------------------------------------------------
# false claims and claim spam against an honest, staked provider


async def test_claim_spam_costs_the_claimant_its_bonds() -> None:
    """ALICE files claims for answered requests and for signed requests BOB never saw whose
    slices overlap what she paid. BOB's watcher answers every one: the answered ones with the
    stored receipt (DELIVERED: the bond goes back, nobody gains), the made-up ones with the
    request they conflict with (FRIVOLOUS: the bond goes to BOB); its stake is untouched,
    nothing more is charged; refiling or filing early is refused (specs/claims.md 3)."""
    ledger = make_ledger()
    network = MemoryNetwork()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    bond = ledger.params.claim_bond
    stake, penalty = 10**20, 10**19
    fast = NodeConfig(watch_interval=0.05, claim_grace_ms=50, redeem_threshold=10**30)
    async with (
        open_node(key=BOB, ledger=ledger, network=network, config=fast) as bob,
        open_node(key=ALICE, ledger=ledger, network=network, config=fast) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(stake, penalty=penalty, claim_window_ms=30_000)
        info = await alice.open_channel(bob.addrs[0], deposit=10**6)
        answered = []
        for _ in range(3):
            result = await alice.call(bob.addrs[0], "echo", b"x", max_price=PRICE, timeout=1.0)
            answered.append(
                decode_frame((await alice.store.request(result.receipt.request_hash)).frame)
            )
        never_sent = [
            Request.create(
                ALICE,
                ledger=ledger.ledger_id,
                channel=info.channel,
                n=100 + i,
                paid=PRICE,
                price=PRICE,
                service=service,
                body=b"never sent",
                deadline=wall_clock_ms() + 2_000,  # not passed at the early claim below
            )
            for i, service in enumerate(("echo", "nope"))
        ]
        with pytest.raises(SettlementError) as early:
            await ledger.file_claim(ALICE, never_sent[0])
        assert early.value.code is ErrorCode.DEADLINE_NOT_PASSED
        last = max(request.deadline for request in [*answered, *never_sent])
        with trio.fail_after(30):  # until every deadline has passed (a condition, not a nap)
            while wall_clock_ms() <= last:
                await trio.sleep(0.05)
        alice_before = await ledger.balance(ALICE.account)
        bob_before = await ledger.balance(BOB.account)
        claims = [await ledger.file_claim(ALICE, r) for r in [*answered, *never_sent]]
        with pytest.raises(SettlementError) as again:
            await ledger.file_claim(ALICE, answered[0])
        assert again.value.code is ErrorCode.CLAIM_EXISTS
        with trio.fail_after(60):
            while True:
                states = [(await ledger.claim(c)).state for c in claims]
                if all(s is not ClaimState.OPEN for s in states):
                    break
                await trio.sleep(0.05)
        assert states == [ClaimState.DELIVERED] * 3 + [ClaimState.FRIVOLOUS] * 2
        assert await ledger.balance(ALICE.account) == alice_before - len(never_sent) * bond
        assert await ledger.balance(BOB.account) == bob_before + len(never_sent) * bond
        assert (await ledger.stake_of(BOB.account)).amount == stake
        for claim_id, request in zip(claims, answered, strict=False):
            answer = decode_frame((await ledger.claim(claim_id)).response_frame)
            assert isinstance(answer, Response) and answer.verify(BOB.public)
            assert answer.request_hash == request.hash
        # the never-sent requests were answered with evidence, not served
        assert bob.payee_channels[info.channel].spent == 3 * PRICE
        assert (await ledger.totals()).conserved
        assert refusal_body("x")  # (the refusal body helper stays importable)
