"""The watcher in the claim game (specs/claims.md C-1, C-5..C-8; issue 13 items 1, 4, 5, 8).

Nodes on the in-memory transport and a dev MemoryLedger. No test asserts on timing: slow
handlers wait on events (a barrier, or a stall that is only ever ended by cancellation),
windows are generous, and every wait is bounded (`wait_until`, `trio.fail_after`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from node_support import wait_until

from p2pay.core.errors import ErrorCode, RemoteProtocolError, SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Behaviour, Call, CallTimeout, Node, NodeConfig, open_node
from p2pay.node.watcher import claim_outcome

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
PRICE = 1_000
TOKEN = 10**24
BOND = 10**18
STAKE, PENALTY = 10**20, 10**19
LEDGER_ID = b"p2pay:test:watcher"

FAST = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,  # redeem only when a duty forces it
    default_timeout=30.0,
    min_challenge_ms=50,
)


def make_ledger(cls: type[MemoryLedger] = MemoryLedger) -> MemoryLedger:
    return cls(
        Params(
            ledger_id=LEDGER_ID,
            dev=True,
            claim_bond=BOND,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )


async def echo(call: Call) -> bytes:
    return call.body


@asynccontextmanager
async def pair(
    ledger: MemoryLedger,
    *,
    behaviour: Behaviour | None = None,
    bob_config: NodeConfig = FAST,
) -> AsyncIterator[tuple[Node, Node]]:
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    async with (
        open_node(
            key=BOB, ledger=ledger, network=net, config=bob_config, behaviour=behaviour
        ) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=FAST) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        yield alice, bob


def claimed_request(channel: bytes, n: int, *, deadline: int, **fields: Any) -> Request:
    """A request ALICE signs but never sends: it reaches BOB only through a claim."""
    values: dict[str, Any] = {
        "paid": n * PRICE,
        "price": PRICE,
        "service": "echo",
        "body": b"%d" % n,
    }
    values.update(fields)
    return Request.create(
        ALICE, ledger=LEDGER_ID, channel=channel, n=n, deadline=deadline, **values
    )


async def decided(ledger: MemoryLedger, claim_ids: list[bytes]) -> bool:
    for claim_id in claim_ids:
        claim = await ledger.claim(claim_id)
        if claim is None or claim.state is ClaimState.OPEN:
            return False
    return True


def answer_of(claim: Claim) -> Response:
    response = decode_frame(claim.response_frame)
    assert isinstance(response, Response) and response.verify(BOB.account)
    return response


# ---------------------------------------------------------------------------
# item 5 / C-7: claims are answered concurrently and retried


FLOOD = 8


async def test_a_claim_flood_against_a_slow_service_is_all_delivered_none_upheld() -> None:
    """Eight claims whose handlers only finish once all eight run: an answerer that runs
    handlers one at a time (the old watcher, inline) never gets there."""
    ledger = make_ledger()
    started = 0
    all_in = trio.Event()

    async def slow(call: Call) -> bytes:
        nonlocal started
        started += 1
        if started == FLOOD:
            all_in.set()
        with trio.fail_after(30):
            await all_in.wait()
        return b"done:" + call.body

    async with pair(ledger) as (alice, bob):
        bob.serve("slow", slow, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        now = await ledger.now()
        ids = []
        for n in range(1, FLOOD + 1):
            request = claimed_request(ch.channel, n, deadline=now - 1, service="slow")
            ids.append(await ledger.file_claim(ALICE, request))
        await wait_until(lambda: decided(ledger, ids), timeout=60)
        for n, claim_id in enumerate(ids, 1):
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim_outcome(claim) == "delivered"
            answer = answer_of(claim)
            assert (answer.status, answer.body, answer.price) == ("OK", b"done:%d" % n, PRICE)
        # served through the claims and charged once each (C-6); nobody slashed (C-1)
        assert bob.payee_channels[ch.channel].spent == FLOOD * PRICE
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE and stake.open_claims == 0
        assert bob.watcher.answers["delivered"] == FLOOD
        assert (await ledger.totals()).conserved


async def test_claim_answers_are_bounded_by_max_claim_answers() -> None:
    ledger = make_ledger()
    running = peak = 0

    async def busy(call: Call) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(20):  # let the other answer tasks run meanwhile
            await trio.sleep(0)
        running -= 1
        return call.body

    bounded = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50, max_claim_answers=2
    )
    async with pair(ledger, bob_config=bounded) as (alice, bob):
        bob.serve("busy", busy, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        now = await ledger.now()
        ids = [
            await ledger.file_claim(
                ALICE, claimed_request(ch.channel, n, deadline=now - 1, service="busy")
            )
            for n in range(1, 7)
        ]
        await wait_until(lambda: decided(ledger, ids))
        for claim_id in ids:
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.DELIVERED
        assert 1 <= peak <= 2


class FlakyLedger(MemoryLedger):
    """Refuses the first answers of every claim as a chain under load would (INTERNAL)."""

    failures = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts = 0

    async def answer_claim(self, *args: Any, **kwargs: Any) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise SettlementError("node busy, try again", code=ErrorCode.INTERNAL)
        await super().answer_claim(*args, **kwargs)


async def test_an_answer_that_fails_for_a_transient_reason_is_retried() -> None:
    ledger = make_ledger(FlakyLedger)
    assert isinstance(ledger, FlakyLedger)
    async with pair(ledger) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        request = claimed_request(ch.channel, 1, deadline=await ledger.now() - 1)
        claim_id = await ledger.file_claim(ALICE, request)
        await wait_until(lambda: decided(ledger, [claim_id]))
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim_outcome(claim) == "delivered"
        assert answer_of(claim).body == b"1"
        assert ledger.attempts == FlakyLedger.failures + 1


# ---------------------------------------------------------------------------
# item 4 / C-6: a claim is admitted by the rules of a stream


async def test_claims_for_requests_never_sent_are_refused_by_the_stream_rules_not_served() -> None:
    ledger = make_ledger()
    served: list[Call] = []

    async def small(call: Call) -> bytes:
        served.append(call)
        return b"served"

    async with pair(ledger) as (alice, bob):
        bob.serve("small", small, price=PRICE, max_body=16)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        now = await ledger.now()
        cases = [
            # price 0: the ledger may refuse it (FileClaim); else the provider refuses it
            (claimed_request(ch.channel, 1, deadline=now - 1, service="small", price=0),
             ErrorCode.PAYMENT_REQUIRED),
            (claimed_request(ch.channel, 2, deadline=now - 1, service="small", body=b"y" * 100),
             ErrorCode.BODY_TOO_LARGE),
            (claimed_request(ch.channel, 3, deadline=now - 1, service="nope"),
             ErrorCode.UNKNOWN_SERVICE),
            (claimed_request(ch.channel, 4, deadline=now - 1, service="small", price=PRICE - 1),
             ErrorCode.PAYMENT_REQUIRED),
        ]  # fmt: skip
        filed: list[tuple[bytes, ErrorCode]] = []
        for request, code in cases:
            try:
                filed.append((await ledger.file_claim(ALICE, request), code))
            except SettlementError as exc:
                assert exc.code is ErrorCode.INVALID_ARGUMENT and request.price == 0
        assert len(filed) >= 3
        await wait_until(lambda: decided(ledger, [c for c, _ in filed]))
        for claim_id, code in filed:
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim_outcome(claim) == "refused"
            answer = answer_of(claim)
            assert (answer.status, answer.price) == (code.value, 0)
        assert served == []  # no handler ran
        assert bob.payee_channels[ch.channel].spent == 0
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE


# ---------------------------------------------------------------------------
# item 8 / C-8: closes come first, and too short challenge periods are refused


async def test_a_stalled_claim_does_not_keep_the_payee_from_redeeming_a_fast_close() -> None:
    ledger = make_ledger()
    entered = trio.Event()

    async def stuck(call: Call) -> bytes:
        entered.set()
        await trio.sleep_forever()  # ended only by the node stopping (cancellation)
        raise AssertionError("unreachable")

    async with pair(ledger) as (alice, bob):
        bob.serve("stuck", stuck, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=60_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6, challenge_ms=1_000)
        for _ in range(5):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        request = claimed_request(ch.channel, 6, deadline=await ledger.now() - 1, service="stuck")
        await ledger.file_claim(ALICE, request)
        with trio.fail_after(10):
            await entered.wait()  # the claim's handler now hangs
        bob_before = await ledger.balance(BOB.account)
        await alice.close_channel(ch.channel)

        async def closed() -> bool:
            info = await ledger.channel(ch.channel)
            return info is not None and info.state.value == "closed"

        await wait_until(closed)
        assert await ledger.balance(BOB.account) == bob_before + 5 * PRICE
        assert (await ledger.totals()).conserved


async def test_a_channel_with_a_too_short_challenge_period_is_refused_at_admission() -> None:
    ledger = make_ledger()
    strict = NodeConfig(watch_interval=0.05, default_timeout=5.0)  # min_challenge_ms: 60 s
    assert strict.min_challenge_ms == 60_000
    async with pair(ledger, bob_config=strict) as (alice, bob):
        short = await alice.open_channel(bob.addrs[0], deposit=10**6, challenge_ms=1_000)
        with pytest.raises(RemoteProtocolError) as refused:
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        assert refused.value.code is ErrorCode.CHALLENGE_TOO_SHORT
        assert refused.value.details["min_challenge_ms"] == 60_000
        assert short.channel not in bob.payee_channels  # never adopted, nothing kept
        await alice.close_channel(short.channel)
        await alice.open_channel(bob.addrs[0], deposit=10**6, challenge_ms=60_000)
        result = await alice.call(bob.peer_id, "echo", b"y", max_price=PRICE)
        assert result.body == b"y" and result.price == PRICE


async def test_a_refused_channel_is_the_one_the_request_named() -> None:
    """The payee refuses the channel with the most credit as CHALLENGE_TOO_SHORT; after
    that request its credit is below another channel's, which the payee accepts. The
    channel remembered as refused is the one the request named (not the one with the most
    credit left after it), and the call goes on the accepted one."""
    ledger = make_ledger()
    strict = NodeConfig(watch_interval=0.05, default_timeout=5.0)  # min_challenge_ms: 60 s
    async with pair(ledger, bob_config=strict) as (alice, bob):
        good = await alice.open_channel(
            bob.addrs[0], deposit=10**6 - PRICE // 2, challenge_ms=60_000
        )
        short = await alice.open_channel(bob.addrs[0], deposit=10**6, challenge_ms=1_000)
        result = await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        assert result.body == b"x" and result.channel == good.channel
        assert alice.book.refused_channels == {short.channel}
        assert alice.book.payee_minimums == {bob.account: 60_000}


# ---------------------------------------------------------------------------
# item 1 / deliverable 3: the claimant re-delivers first and reads the outcome


class DropsRequests(Behaviour):
    """Takes every paid request and never answers it on the stream."""

    def drop(self, call: Call) -> bool:
        return True


class Silent(DropsRequests):
    answers_claims = False


async def test_the_client_re_delivers_before_claiming_and_gets_the_answer_from_the_claim() -> None:
    ledger = make_ledger()
    async with pair(ledger, behaviour=DropsRequests()) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        redelivered: list[int] = []
        redeliver = alice.redeliver

        async def counting(record: Any, *, timeout: float) -> Response | None:
            redelivered.append(alice.counters.claims_filed)
            return await redeliver(record, timeout=timeout)

        alice.redeliver = counting  # type: ignore[method-assign]
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "echo", b"lost", max_price=PRICE, timeout=0.3)

        async def outcome() -> bool:
            return any(c.outcome != "open" for c in await alice.claims())

        await wait_until(outcome)
        assert redelivered == [0]  # one re-delivery, before any claim was filed
        assert alice.counters.claims_filed == 1
        [info] = await alice.claims()
        assert (info.role, info.outcome, info.status) == ("claimant", "delivered", "OK")
        assert info.body == b"lost"  # the answer, read from the ledger and checked (C-5)
        assert info.response is not None and info.response.verify(BOB.account)
        assert info.bond == BOND and info.bond_returned is True
        assert (info.refund, info.clawed, info.slashed) == (0, 0, 0)
        [record] = await alice.store.requests()
        assert record.state == "answered"


async def test_the_client_records_an_upheld_claim_with_its_slash_and_bond() -> None:
    ledger = make_ledger()
    async with pair(ledger, behaviour=Silent()) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=300)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.3)

        async def outcome() -> bool:
            return any(c.outcome == "upheld" for c in await alice.claims())

        await wait_until(outcome)
        [info] = await alice.claims()
        assert info.bond_returned is True and info.slashed == PENALTY
        assert (info.refund, info.clawed) == (PRICE, 0)  # never redeemed: from escrow
        assert info.status == "" and info.response is None
        [record] = await alice.store.requests()
        assert record.state == "compensated"


async def test_a_re_delivered_request_gets_the_stored_answer_and_no_claim() -> None:
    """The answer is lost with the connection; the client's watcher re-sends the request,
    the provider answers it again from its store, charging nothing more: no claim, no bond
    locked (issue 13 item 1). Its caller gave the call up first (a call whose stream ends
    while it waits re-sends by itself: the next test)."""
    ledger = make_ledger()
    release = trio.Event()
    started = trio.Event()

    async def held(call: Call) -> bytes:
        started.set()
        # finishes even though its stream is gone: the answer is charged, stored, then lost
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await release.wait()
        return b"kept:" + call.body

    async with pair(ledger) as (alice, bob):
        bob.serve("held", held, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: alice.call(bob.peer_id, "held", b"x", max_price=PRICE, timeout=3.0)
            )
            with trio.fail_after(10):
                await started.wait()
            nursery.cancel_scope.cancel()  # the caller gives up
        await alice._connections[bob.peer_id].close()  # the answer has nowhere to go
        release.set()

        async def settled() -> bool:
            return [r.state for r in await alice.store.requests()] == ["answered"]

        await wait_until(settled)
        assert alice.counters.claims_filed == 0 and await ledger.claims_of(ALICE.account) == []
        assert bob.payee_channels[ch.channel].spent == PRICE  # charged once
        assert bob.counters.answers_resent == 1


async def test_a_call_whose_stream_ends_re_sends_its_request_on_a_new_one() -> None:
    """The call's stream ends while it waits (as when the provider's idle reset races a
    request that has just left): the call re-sends the same signed request once on a new
    stream (protocol.md 13.1 step 4) and gets its answer, charged once. Before, the call
    failed ConnectionLost and its answer waited for the watcher's re-delivery after the
    deadline (or for good, with the watcher off)."""
    ledger = make_ledger()
    release = trio.Event()
    started = trio.Event()

    async def held(call: Call) -> bytes:
        started.set()
        with trio.CancelScope(shield=True), trio.fail_after(20):
            await release.wait()
        return b"kept:" + call.body

    async with pair(ledger) as (alice, bob):
        bob.serve("held", held, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        results = []

        async def call() -> None:
            results.append(
                await alice.call(bob.peer_id, "held", b"x", max_price=PRICE, timeout=20.0)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(10):
                await started.wait()
            first = alice._connections[bob.peer_id]
            await first.close()  # the answer cannot come on this stream
            # a new stream ...
            await wait_until(lambda: alice._connections.get(bob.peer_id) not in (None, first))
            release.set()  # ... and the answer comes on it
        [result] = results
        assert result.body == b"kept:x" and result.price == PRICE
        assert bob.payee_channels[ch.channel].spent == PRICE  # charged once
        assert alice.payer_channels[ch.channel].spent == PRICE
        assert alice.counters.timeouts == 0 and alice.counters.claims_filed == 0
        [record] = await alice.store.requests()
        assert record.state == "answered"


@pytest.mark.parametrize("conflict", ["same_n", "overlapping_slice"])
async def test_a_claim_in_conflict_with_a_served_request_is_frivolous(conflict: str) -> None:
    """A made-up request reusing a served number, or a slice already paid for, is answered
    with the served request as evidence: the bond goes to the provider (claims.md 2-3)."""
    ledger = make_ledger()
    async with pair(ledger) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        served = await alice.call(bob.peer_id, "echo", b"real", max_price=PRICE)
        assert served.n == 1
        now = await ledger.now()
        if conflict == "same_n":
            made_up = claimed_request(ch.channel, 1, deadline=now - 1, body=b"other")
        else:  # n=2 taking the slice (0, PRICE] that n=1 paid
            made_up = claimed_request(ch.channel, 2, deadline=now - 1, paid=PRICE)
        bob_before = await ledger.balance(BOB.account)
        claim_id = await ledger.file_claim(ALICE, made_up)
        await wait_until(lambda: decided(ledger, [claim_id]))
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.FRIVOLOUS
        evidence = decode_frame(claim.evidence_frame)
        assert isinstance(evidence, Request)
        assert evidence.hash == served.receipt.request_hash  # the request it served
        assert await ledger.balance(BOB.account) == bob_before + BOND
        assert bob.payee_channels[ch.channel].spent == PRICE  # nothing served for it
        assert bob.watcher.answers["frivolous"] == 1

        async def recorded() -> bool:
            return any(c.outcome == "frivolous" for c in await alice.claims())

        await wait_until(recorded)
        [info] = await alice.claims()
        assert info.bond_returned is False and info.refund == 0


async def test_claims_sharing_one_slice_refute_each_other_never_refunding_twice() -> None:
    """Attack N3: made-up claims on ONE fresh slice, filed at once, for a service the provider
    does not offer. Answered concurrently from the provider's own store alone, each would be
    refused and refunded, so the slice would be refunded several times, out of what the
    provider earned. Another claim's request is payer-signed evidence too (claims.md 2): at
    most one is refused (its slice was never earned), every other one is frivolous."""
    ledger = make_ledger()
    async with pair(ledger) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        served = await alice.call(bob.peer_id, "echo", b"real", max_price=PRICE)
        assert served.n == 1
        now = await ledger.now()
        made_up = [
            claimed_request(
                ch.channel, n, deadline=now - 1, paid=2 * PRICE, service="nosuch", body=b"x"
            )
            for n in range(2, 8)
        ]
        claim_ids = [await ledger.file_claim(ALICE, request) for request in made_up]
        await wait_until(lambda: decided(ledger, claim_ids))
        outcomes = []
        for claim_id in claim_ids:
            claim = await ledger.claim(claim_id)
            assert claim is not None
            outcomes.append(claim.state)
        assert ClaimState.UPHELD not in outcomes
        assert outcomes.count(ClaimState.REFUSED) <= 1, outcomes
        channel = await ledger.channel(ch.channel)
        assert channel is not None
        spent = bob.payee_channels[ch.channel].spent
        assert spent == PRICE
        assert channel.paid_seen - channel.refunded >= spent  # C-2
        assert channel.clawed == 0
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE


async def test_an_answer_needing_no_handler_is_never_held_back_by_busy_handlers() -> None:
    """Attack item 5 again (100 claims on 1 s handlers, SQLite, 3 s window: 10-12 upheld):
    the watcher looked up stored answers and evidence inside the handler limiter, so cheap
    answers queued behind slow handlers and missed their windows. Here the only handler
    slot is taken by a handler that overruns (shielded from cancellation), and a claim that
    needs no handler (evidence) must still be answered."""
    ledger = make_ledger()
    release = trio.Event()
    hanging = trio.Event()

    async def hang(call: Call) -> bytes:
        hanging.set()
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            await release.wait()
        return call.body

    one_slot = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50, max_claim_answers=1
    )
    async with pair(ledger, bob_config=one_slot) as (alice, bob):
        bob.serve("hang", hang, price=PRICE)
        try:
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
            ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
            served = await alice.call(bob.peer_id, "echo", b"real", max_price=PRICE)
            assert served.n == 1
            now = await ledger.now()
            slow = claimed_request(ch.channel, 2, deadline=now - 1, service="hang")
            await ledger.file_claim(ALICE, slow)
            with trio.fail_after(20):
                await hanging.wait()  # the only handler slot is taken
            conflicting = claimed_request(ch.channel, 1, deadline=now - 1, body=b"other")
            claim_id = await ledger.file_claim(ALICE, conflicting)
            await wait_until(lambda: decided(ledger, [claim_id]), timeout=60)
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.FRIVOLOUS
        finally:
            release.set()
