"""Node integration on loopback with real libp2p hosts (issue 4, section 6).

Every wait is bounded (`wait_until`, `trio.fail_after`); time-dependent flows use short
claim windows and challenge periods on a dev MemoryLedger, never long sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from node_support import wait_until

from p2pay.core.errors import (
    DeadlineExceeded,
    ErrorCode,
    InsufficientDeposit,
    PaymentRequired,
    UnknownService,
)
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Refusal, Request, Response, decode_frame
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import Behaviour, Call, CallTimeout, Node, NodeConfig, open_node
from p2pay.store.memory import MemoryStore
from p2pay.store.sqlite import SqliteStore

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
CAROL = Keypair.from_seed(bytes([3]) * 32)  # a third party
PRICE = 1_000
TOKEN = 10**24
BOND = 10**18

FAST = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,  # redeem only when a duty forces it
    min_challenge_ms=50,  # the tests' channels close in well under a second
    default_timeout=5.0,
)


def make_ledger() -> MemoryLedger:
    return MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:node",
            dev=True,
            claim_bond=BOND,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )


async def fund(ledger: MemoryLedger, *keys: Keypair) -> None:
    for key in keys:
        await ledger.mint(key, key.account, 10 * TOKEN)


async def echo(call: Call) -> bytes:
    return call.body


@asynccontextmanager
async def provider(
    ledger: MemoryLedger, *, behaviour: Behaviour | None = None, store: Any = None
) -> AsyncIterator[Node]:
    async with open_node(
        key=BOB, ledger=ledger, store=store, config=FAST, behaviour=behaviour
    ) as node:
        node.serve("echo", echo, price=PRICE)
        yield node


@asynccontextmanager
async def client(
    ledger: MemoryLedger, *, store: Any = None, clock: Callable[[], int] | None = None
) -> AsyncIterator[Node]:
    async with open_node(key=ALICE, ledger=ledger, store=store, config=FAST, clock=clock) as node:
        yield node


async def test_paid_call_and_receipt() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob, client(ledger) as alice:
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        result = await alice.call(bob.addrs[0], "echo", b"hi", max_price=PRICE, timeout=5)
        assert result.body == b"hi"
        assert result.price == PRICE
        assert result.spent == PRICE
        assert result.receipt.verify(BOB.public)
        assert result.receipt.request_hash and result.n == 1
        again = await alice.call(bob.peer_id, "echo", b"again", max_price=PRICE)
        assert (again.n, again.spent) == (2, 2 * PRICE)
        payee = bob.payee_channels[ch.channel]
        assert (payee.spent, payee.paid_max, payee.last_n) == (2 * PRICE, 2 * PRICE, 2)
        assert bob.counters.calls_served == 2 and bob.counters.charged == 2 * PRICE
        assert alice.counters.paid == 2 * PRICE


async def test_refusals_are_not_charged() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob, client(ledger) as alice:
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        await alice.call(bob.addrs[0], "echo", b"x", max_price=PRICE)
        # refused locally: the hello says what it costs, nothing is signed
        with pytest.raises(PaymentRequired) as info:
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE - 1)
        assert info.value.price == PRICE
        with pytest.raises(UnknownService):
            await alice.call(bob.peer_id, "nope", b"x", max_price=PRICE)
        # price raised after the hello, still within max_price: refused once, then paid
        bob.serve("echo", echo, price=5 * PRICE)
        raised = await alice.call(bob.peer_id, "echo", b"x", max_price=10 * PRICE)
        assert raised.price == 5 * PRICE
        # raised beyond max_price: refused by the provider, then locally
        bob.serve("echo", echo, price=20 * PRICE)
        with pytest.raises(PaymentRequired) as info:
            await alice.call(bob.peer_id, "echo", b"x", max_price=10 * PRICE)
        assert info.value.price == 20 * PRICE
        with pytest.raises(PaymentRequired):
            await alice.call(bob.peer_id, "echo", b"x", max_price=10 * PRICE)
        # refused by the provider: service withdrawn after the hello
        del bob.services["echo"]
        with pytest.raises(UnknownService):
            await alice.call(bob.peer_id, "echo", b"x", max_price=100 * PRICE)
        payee = bob.payee_channels[ch.channel]
        assert payee.spent == 6 * PRICE
        assert alice.payer_channels[ch.channel].spent == 6 * PRICE
        assert bob.counters.refused[ErrorCode.PAYMENT_REQUIRED.value] == 2
        assert bob.counters.refused[ErrorCode.UNKNOWN_SERVICE.value] == 1


async def test_deadline_passed_is_refused_and_not_charged() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    late = lambda: wall_clock_ms() - 60_000  # noqa: E731 - alice's clock is a minute slow
    async with provider(ledger) as bob, client(ledger, clock=late) as alice:
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        with pytest.raises(DeadlineExceeded):
            await alice.call(bob.addrs[0], "echo", b"x", max_price=PRICE, timeout=5)
        assert bob.payee_channels[ch.channel].spent == 0
        assert alice.payer_channels[ch.channel].spent == 0


async def test_deposit_exhausted_then_top_up() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob, client(ledger) as alice:
        ch = await alice.open_channel(bob.addrs[0], deposit=3 * PRICE)
        for _ in range(3):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        with pytest.raises(InsufficientDeposit):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        await alice.top_up(ch.channel, 2 * PRICE)
        for _ in range(2):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        payee = bob.payee_channels[ch.channel]
        assert payee.spent == 5 * PRICE
        assert payee.paid_max <= payee.deposit == 5 * PRICE


async def test_deferred_checks_bound_what_bad_vouchers_get() -> None:
    """Deferred voucher checks on real libp2p nodes (protocol.md 13.4, INV-21).

    ALICE's own authenticated stream carries vouchers signed by CAROL's key for ALICE's
    channel. BOB, with a limit of 3 prices of unchecked credit, serves at most the limit's
    worth of them, then refuses INVALID_SIGNATURE and stops deferring on the channel; his
    close shows the ledger only the voucher that verifies, so it pays the checked credit.
    """
    limit = 3 * PRICE
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    config = NodeConfig(
        watcher=False, default_timeout=5.0, redeem_threshold=10**30, unverified_credit_limit=limit
    )

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with open_node(key=BOB, ledger=ledger, config=config) as bob:
        bob.serve("echo", echo, price=PRICE)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**6, 60_000)
        deadline = wall_clock_ms() + 30_000

        def voucher(n: int, key: Keypair) -> bytes:
            return Request.create(
                key,
                ledger=ledger.ledger_id,
                channel=channel,
                n=n,
                paid=n * PRICE,
                price=PRICE,
                service="echo",
                body=b"x",
                deadline=deadline,
            ).to_frame()

        answers: list[object] = []
        async with open_libp2p_transport(ALICE, ignore) as alice:
            stream = await alice.connect(bob.addrs[0])
            with trio.fail_after(10):
                await stream.send(Hello.create(ALICE, ledger=ledger.ledger_id).to_frame())
                assert isinstance(decode_frame(await stream.receive()), Hello)
                await stream.send(voucher(1, ALICE))  # the first voucher is always checked
                first = decode_frame(await stream.receive())
                assert isinstance(first, Response) and first.ok
                for n in range(2, 10):  # then ALICE cheats
                    await stream.send(voucher(n, CAROL))
                    answers.append(decode_frame(await stream.receive()))
            await stream.reset()
        served = [a for a in answers if isinstance(a, Response) and a.ok]
        refused = [a for a in answers if isinstance(a, Refusal)]
        assert 0 < len(served) * PRICE <= limit
        assert len(served) + len(refused) == len(answers)
        assert {r.code for r in refused} == {ErrorCode.INVALID_SIGNATURE}
        payee = bob.payee_channels[channel]
        assert payee.deferral_revoked and bob.counters.protocol_violations >= 1
        checked = payee.verified_voucher()
        assert checked is not None and checked.verify(ALICE.public) and checked.paid == PRICE
        assert payee.spent - checked.paid == len(served) * PRICE <= limit  # the loss
        before = await ledger.balance(BOB.account)
        await bob.close_channel(channel)
        assert await ledger.balance(BOB.account) == before + PRICE  # only checked credit
        assert payee.redeemed == PRICE


async def test_deferred_checks_honest_payer_is_paid_in_full_after_a_restart(
    tmp_path: Any,
) -> None:
    """An honest payer under deferred checks, with a payee restart in between: the payee's
    store keeps the newest voucher (checked at start-up), so nothing is lost (13.4)."""
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    config = NodeConfig(watcher=False, default_timeout=5.0, unverified_credit_limit=10**6)
    path = tmp_path / "bob.sqlite"
    async with client(ledger) as alice:
        store = await SqliteStore.open(path)
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            bob.serve("echo", echo, price=PRICE)
            ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
            for _ in range(5):
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
            payee = bob.payee_channels[ch.channel]
            assert payee.best is not None and payee.best is not payee.verified  # deferred
            assert payee.verified is not None and payee.verified.paid == PRICE
        await store.aclose()
        before = await ledger.balance(BOB.account)
        store = await SqliteStore.open(path)
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            payee = bob.payee_channels[ch.channel]
            assert payee.verified is payee.best and payee.verified.paid == 5 * PRICE
            await bob.close_channel(ch.channel)
        await store.aclose()
        assert await ledger.balance(BOB.account) == before + 5 * PRICE


async def test_deferred_checks_a_restart_on_a_bad_voucher_loses_at_most_the_limit(
    tmp_path: Any,
) -> None:
    """The payee stops while its newest voucher is an unchecked bad one (INV-21, 13.4): its
    store also keeps the last checked voucher, so after the restart it falls back to it and
    redeems everything but the unchecked credit, which the limit bounds."""
    limit = 3 * PRICE
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    config = NodeConfig(
        watcher=False, default_timeout=5.0, redeem_threshold=10**30, unverified_credit_limit=limit
    )
    path = tmp_path / "bob.sqlite"

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    channel = await ledger.open_channel(ALICE, BOB.public, 10**6, 60_000)
    deadline = wall_clock_ms() + 30_000

    def voucher(n: int, key: Keypair) -> bytes:
        return Request.create(
            key,
            ledger=ledger.ledger_id,
            channel=channel,
            n=n,
            paid=n * PRICE,
            price=PRICE,
            service="echo",
            body=b"x",
            deadline=deadline,
        ).to_frame()

    store = await SqliteStore.open(path)
    async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
        bob.serve("echo", echo, price=PRICE)
        async with open_libp2p_transport(ALICE, ignore) as alice:
            stream = await alice.connect(bob.addrs[0])
            with trio.fail_after(10):
                await stream.send(Hello.create(ALICE, ledger=ledger.ledger_id).to_frame())
                assert isinstance(decode_frame(await stream.receive()), Hello)
                # honest vouchers 1..5: the limit is passed at 5, which is then checked
                for n in range(1, 6):
                    await stream.send(voucher(n, ALICE))
                    answer = decode_frame(await stream.receive())
                    assert isinstance(answer, Response) and answer.ok
                # then two bad ones within the limit: served unchecked
                for n in (6, 7):
                    await stream.send(voucher(n, CAROL))
                    answer = decode_frame(await stream.receive())
                    assert isinstance(answer, Response) and answer.ok
            await stream.reset()
        payee = bob.payee_channels[channel]
        assert payee.verified is not None and payee.verified.paid == 5 * PRICE
        assert payee.best is not None and payee.best.paid == 7 * PRICE  # unchecked, bad
        assert payee.spent == 7 * PRICE
    await store.aclose()
    before = await ledger.balance(BOB.account)
    store = await SqliteStore.open(path)
    async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
        payee = bob.payee_channels[channel]
        assert payee.best is payee.verified and payee.verified is not None
        assert payee.verified.paid == 5 * PRICE and payee.deferral_revoked
        await bob.close_channel(channel)
    await store.aclose()
    redeemed = await ledger.balance(BOB.account) - before
    assert redeemed == 5 * PRICE and 7 * PRICE - redeemed <= limit


async def test_third_party_cannot_forge_or_replay() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob, client(ledger) as alice:
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        result = await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        captured = (await alice.store.request(result.receipt.request_hash)).frame
        before = bob.payee_channels[ch.channel]
        snapshot = (before.spent, before.paid_max, before.last_n)

        async def ignore(stream: Any) -> None:
            await stream.aclose()

        forged = Request.create(
            CAROL,
            ledger=ledger.ledger_id,
            channel=ch.channel,
            n=100,
            paid=10**6,
            price=PRICE,
            service="echo",
            body=b"free lunch",
            deadline=wall_clock_ms() + 10_000,
        )
        replayed = decode_frame(captured)
        assert isinstance(replayed, Request)
        # a replay with a fresh-looking n would need Alice's signature: re-signing fails
        async with open_libp2p_transport(CAROL, ignore) as carol:
            stream = await carol.connect(bob.addrs[0])
            with trio.fail_after(30):
                await stream.send(Hello.create(CAROL, ledger=ledger.ledger_id).to_frame())
                assert isinstance(decode_frame(await stream.receive()), Hello)
                for frame in (forged.to_frame(), captured):
                    await stream.send(frame)
                    answer = decode_frame(await stream.receive())
                    assert isinstance(answer, Refusal)
                    assert answer.code is ErrorCode.UNAUTHORIZED
            await stream.reset()
        after = bob.payee_channels[ch.channel]
        assert (after.spent, after.paid_max, after.last_n) == snapshot
        # Alice herself replaying an old request number is refused too (and resyncs)
        assert replayed.n == 1
        assert bob.counters.refused[ErrorCode.UNAUTHORIZED.value] == 2


async def test_twenty_calls_pipelined_on_one_stream() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    gate = trio.Event()
    entered = 0

    async def slow_echo(call: Call) -> bytes:
        nonlocal entered
        entered += 1
        if entered == 20:
            gate.set()
        with trio.fail_after(30):
            await gate.wait()  # all 20 are in flight at once before any answers
        return call.body

    async with provider(ledger) as bob, client(ledger) as alice:
        bob.serve("slow", slow_echo, price=PRICE)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        results: list[Any] = []

        async def one(i: int) -> None:
            results.append(await alice.call(bob.peer_id, "slow", b"%d" % i, max_price=PRICE))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert sorted(r.body for r in results) == sorted(b"%d" % i for i in range(20))
        assert sorted(r.spent for r in results) == [PRICE * (i + 1) for i in range(20)]
        assert alice.counters.connections == 1
        assert bob.payee_channels[ch.channel].spent == 20 * PRICE
        assert alice.payer_channels[ch.channel].spent == 20 * PRICE


class Dropper(Behaviour):
    answers_claims = False

    def drop(self, call: Call) -> bool:
        return True


async def test_dropping_provider_is_slashed_end_to_end() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    stake, penalty = 10**20, 10**19
    async with provider(ledger, behaviour=Dropper()) as bob, client(ledger) as alice:
        await bob.stake(stake, penalty=penalty, claim_window_ms=300)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        alice_before = await ledger.balance(ALICE.account)
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.3)

        async def upheld() -> bool:
            claims = await ledger.claims_of(ALICE.account)
            return bool(claims) and claims[0].state is ClaimState.UPHELD

        await wait_until(upheld, timeout=60)
        assert alice.counters.claims_filed == 1
        assert (await ledger.stake_of(BOB.account)).amount == stake - penalty
        # the claimant gets her bond back and half the penalty (default split)
        await wait_until(lambda: alice.counters.claims_won == 1)
        assert await ledger.balance(ALICE.account) == alice_before + penalty // 2
        assert (await ledger.totals()).conserved


async def test_answered_provider_defends_a_false_claim() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob, client(ledger) as alice:
        await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        result = await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=1.0)
        record = await alice.store.request(result.receipt.request_hash)
        request = decode_frame(record.frame)
        assert isinstance(request, Request)
        await wait_until(lambda: wall_clock_ms() > request.deadline)  # past the deadline
        bob_before = await ledger.balance(BOB.account)
        alice_before = await ledger.balance(ALICE.account)
        claim_id = await ledger.file_claim(ALICE, request)  # a false claim: it was answered

        async def answered() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is ClaimState.DELIVERED

        await wait_until(answered)
        # DELIVERED: the answer is on the ledger, the bond goes back, nobody gains (claims.md 3)
        assert await ledger.balance(BOB.account) == bob_before
        assert await ledger.balance(ALICE.account) == alice_before
        assert (await ledger.stake_of(BOB.account)).amount == 10**20
        claim = await ledger.claim(claim_id)
        answer = decode_frame(claim.response_frame)
        assert answer.body == b"x" and answer.verify(BOB.public)


async def test_start_close_is_defended_by_the_payee_watcher() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob, client(ledger) as alice:
        deposit = 10**6
        ch = await alice.open_channel(bob.addrs[0], deposit=deposit, challenge_ms=500)
        for _ in range(5):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        bob_before = await ledger.balance(BOB.account)
        alice_before = await ledger.balance(ALICE.account)
        await alice.close_channel(ch.channel)

        async def closed() -> bool:
            info = await ledger.channel(ch.channel)
            return info is not None and info.state.value == "closed"

        await wait_until(closed)
        assert await ledger.balance(BOB.account) == bob_before + 5 * PRICE
        assert await ledger.balance(ALICE.account) == alice_before + deposit - 5 * PRICE
        assert (await ledger.totals()).conserved


async def test_payee_restarted_on_its_store_redeems_everything(tmp_path: Any) -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    path = tmp_path / "bob.sqlite"
    async with client(ledger) as alice:
        store = await SqliteStore.open(path)
        async with provider(ledger, store=store) as bob:
            ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
            for _ in range(5):
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        await store.aclose()
        bob_before = await ledger.balance(BOB.account)
        store = await SqliteStore.open(path)
        async with provider(ledger, store=store) as bob:
            assert bob.payee_channels[ch.channel].spent == 5 * PRICE
            await bob.close_channel(ch.channel)
        await store.aclose()
        assert await ledger.balance(BOB.account) == bob_before + 5 * PRICE


async def test_client_with_an_empty_store_resyncs_from_the_payee() -> None:
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob:
        async with client(ledger) as alice:
            ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
            for _ in range(3):
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
        async with client(ledger, store=MemoryStore()) as alice:  # lost everything
            assert alice.payer_channels[ch.channel].last_n == 0
            result = await alice.call(bob.addrs[0], "echo", b"y", max_price=PRICE)
            assert result.body == b"y"
            assert (result.n, result.spent) == (4, 4 * PRICE)
            payee = bob.payee_channels[ch.channel]
            assert payee.spent == 4 * PRICE and payee.paid_max == 4 * PRICE


async def test_an_error_in_the_node_block_reaches_the_caller() -> None:
    # regression: a Cancelled raised during transport cleanup once swallowed it
    with pytest.raises(KeyError):
        async with client(make_ledger()):
            raise KeyError("mine")


async def test_overload_before_admission_is_an_unsigned_refusal_and_not_charged() -> None:
    """D6 (protocol.md 13.2 check 0'): a request beyond the stream's max_in_flight is
    refused unsigned before any other check: `n` not consumed, no voucher kept (a signed
    refusal would be refundable money)."""
    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    gate = trio.Event()

    async def hold(call: Call) -> bytes:
        with trio.fail_after(30):
            await gate.wait()
        return b"done"

    config = NodeConfig(max_in_flight=2, watcher=False)
    async with open_node(key=BOB, ledger=ledger, config=config) as bob, client(ledger) as alice:
        bob.serve("hold", hold, price=PRICE)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        # the client respects the provider's advertised limit, so go around it: raise it
        conn = await alice._connection(bob.peer_id)
        conn.slots = trio.Semaphore(10)
        outcomes: list[Any] = []

        async def one() -> None:
            try:
                outcomes.append(await alice.call(bob.peer_id, "hold", b"", max_price=PRICE))
            except Exception as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
            await wait_until(lambda: bob.counters.refused[ErrorCode.OVERLOADED.value] == 2)
            gate.set()
        codes = sorted(
            getattr(o, "code", ErrorCode.INTERNAL).value
            for o in outcomes
            if isinstance(o, Exception)
        )
        assert codes == [ErrorCode.OVERLOADED.value] * 2
        assert sum(1 for o in outcomes if not isinstance(o, Exception)) == 2
        assert bob.payee_channels[ch.channel].spent == 2 * PRICE
        assert alice.payer_channels[ch.channel].spent == 2 * PRICE
        payee = bob.payee_channels[ch.channel]
        assert (payee.last_n, payee.paid_max) == (2, 2 * PRICE)  # refused: nothing kept


async def test_client_restarted_with_a_request_in_flight_keeps_using_its_channel(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2pay.core.session import ClientSession

    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    path = tmp_path / "alice.sqlite"
    async with provider(ledger) as bob:
        store = await SqliteStore.open(path)
        async with client(ledger, store=store) as alice:
            ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
            # the client "crashes" between the provider's charge and reading the receipt
            monkeypatch.setattr(ClientSession, "_on_response", lambda self, r: [])
            with pytest.raises(CallTimeout):
                await alice.call(bob.peer_id, "echo", b"lost", max_price=PRICE, timeout=0.5)
            monkeypatch.undo()

            async def redelivered() -> bool:  # the watcher re-sent it: bob's stored receipt
                return [r.state for r in await alice.store.requests()] == ["answered"]

            await wait_until(redelivered)
        await store.aclose()
        assert bob.payee_channels[ch.channel].spent == PRICE
        store = await SqliteStore.open(path)
        async with client(ledger, store=store) as alice:
            assert alice.payer_channels[ch.channel].spent == PRICE
            assert list(alice.payer_channels[ch.channel].abandoned) == []
            result = await alice.call(bob.addrs[0], "echo", b"after", max_price=PRICE)
            assert result.body == b"after"
            assert result.spent == 2 * PRICE  # the lost receipt's charge is accounted for
        await store.aclose()


async def test_an_unreachable_peer_is_a_typed_error() -> None:
    from p2pay.node import PeerUnreachable

    ledger = make_ledger()
    await fund(ledger, ALICE, BOB)
    async with provider(ledger) as bob:
        addr = bob.addrs[0]
    async with client(ledger) as alice:
        await alice.open_channel(addr, deposit=10**6, offline=True)
        with trio.fail_after(10), pytest.raises(PeerUnreachable) as info:
            await alice.call(addr, "echo", b"x", max_price=PRICE)
        assert info.value.code is ErrorCode.UNREACHABLE
        assert "Connection refused" in info.value.message
        assert alice.counters.call_errors[ErrorCode.UNREACHABLE.value] == 1
