"""Attack N1: a payee must not redeem the slices of requests it refused (specs/claims.md 3,
4.1 and 6; settlement.md 5, refund with the payee's refusal).

Under protocol v2 a refused request's slice is never reused, so the best voucher's `paid`
covers refused slices too. A payee that refuses (a signed HANDLER_ERROR, or PAYMENT_REQUIRED
after raising its price) and then redeems the full best voucher takes money it never earned.
The payer keeps every signed refusal; its watcher sees the Redeemed event, finds the payee
holding more than the receipts justify and posts the refusals: the refused slices are clawed
back from the payee's stake. An honest payee (redeems `spent`) never sees such a claim.

Two nodes (and a third client) on the in-memory transport and a dev MemoryLedger. Every
wait is bounded (`wait_until`, `trio.fail_after`); nothing asserts on timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from node_support import wait_until

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.identity import Keypair
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, Node, NodeConfig, open_node
from p2pay.store.base import MAX_TIME, Store
from p2pay.store.sqlite import SqliteStore

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
PRICE = 1_000
TOKEN = 10**24
STAKE, PENALTY = 10**20, 10**19


def make_ledger() -> MemoryLedger:
    return MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:refused-slices",
            dev=True,
            claim_bond=10**18,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )


async def echo(call: Call) -> bytes:
    return call.body


CAROL = Keypair.from_seed(bytes([3]) * 32)  # another client, keeps BOB busy
DEPOSIT = 10**6
WINDOW = 30_000

NODE = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,  # BOB's watcher never redeems on its own: the test does
    default_timeout=30.0,
    min_challenge_ms=50,
    max_in_flight_total=1,  # one request at a time over all of BOB's streams
)


async def fail(call: Call) -> bytes:
    raise RuntimeError("no")


@asynccontextmanager
async def nodes(
    ledger: MemoryLedger, alice_store: Store | None = None
) -> AsyncIterator[tuple[Node, Node, Node]]:
    for key in (ALICE, BOB, CAROL):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE, store=alice_store) as alice,
        open_node(key=CAROL, ledger=ledger, network=net, config=NODE) as carol,
    ):
        bob.serve("echo", echo, price=PRICE)
        # served from the start: opening a channel connects, and the hello read then is
        # what the payer's calls are checked against
        bob.serve("fail", fail, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW)
        yield alice, bob, carol


async def refused_with_handler_error(alice: Node, bob: Node) -> None:
    """ALICE's call reaches BOB's failing handler: a signed HANDLER_ERROR, nothing charged.

    (Before issue 15 this was a signed OVERLOADED; OVERLOADED before admission is now an
    unsigned refusal, D6, so it leaves no signed refusal to post.)"""

    with pytest.raises(P2payError) as info:
        await alice.call(bob.addrs[0], "fail", b"a1", max_price=PRICE, timeout=20)
    assert info.value.code is ErrorCode.HANDLER_ERROR


async def refused_with_price_flips(alice: Node, bob: Node, flips: int) -> None:
    """BOB raises his price before each call: each call's first request is refused with a
    signed PAYMENT_REQUIRED, the node retries with a fresh slice at the new price."""
    for k in range(2, 2 + flips):
        bob.serve("echo", echo, price=k * PRICE)
        result = await alice.call(bob.addrs[0], "echo", b"p%d" % k, max_price=10 * PRICE)
        assert result.price == k * PRICE


async def steal_and_wait_for_the_refund(
    ledger: MemoryLedger, alice: Node, bob: Node, channel: bytes, refused: int
) -> None:
    """BOB redeems the full best voucher (the theft); ALICE's watcher claws it back."""
    ch = bob.payee_channels[channel]
    spent = ch.spent
    voucher = ch.verified_voucher()
    assert voucher is not None and voucher.paid == spent + refused  # refused slices included
    assert await ledger.redeem(BOB, voucher) == spent + refused  # the old code stops here

    async def refunded() -> bool:
        info = await ledger.channel(channel)
        return info is not None and info.redeemed - info.clawed == spent

    await wait_until(refunded)
    info = await ledger.channel(channel)
    assert info is not None and (info.clawed, info.refunded) == (refused, refused)
    claims = [c for c in await ledger.claims_of(ALICE.account) if c.channel == channel]
    assert claims and all(c.state is ClaimState.REFUSED and c.bond == 0 for c in claims)
    assert sum(c.clawed for c in claims) == refused
    stake = await ledger.stake_of(BOB.account)
    assert stake is not None and stake.amount == STAKE - refused
    assert (await ledger.totals()).conserved


async def test_n1_failed_handler_refused_slice_redeemed_is_clawed_back() -> None:
    ledger = make_ledger()
    async with nodes(ledger) as (alice, bob, _):
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        await refused_with_handler_error(alice, bob)
        result = await alice.call(bob.addrs[0], "echo", b"a2", max_price=PRICE)
        assert (result.n, result.price) == (2, PRICE)
        balance = await ledger.balance(ALICE.account)
        await steal_and_wait_for_the_refund(ledger, alice, bob, ch.channel, refused=PRICE)
        assert await ledger.balance(ALICE.account) == balance + PRICE


async def test_n1_price_flip_refused_slices_redeemed_are_clawed_back() -> None:
    """The unbounded variant: every price flip leaves a refused slice in the best voucher."""
    ledger = make_ledger()
    async with nodes(ledger) as (alice, bob, _):
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        await alice.call(bob.addrs[0], "echo", b"first", max_price=PRICE)  # hello: P
        await refused_with_price_flips(alice, bob, flips=2)
        # served (0, P]; refused (P, 2P] at P, served (2P, 4P] at 2P; refused (4P, 6P] at
        # 2P, served (6P, 9P] at 3P
        await steal_and_wait_for_the_refund(ledger, alice, bob, ch.channel, refused=3 * PRICE)


async def test_an_honest_payee_never_sees_a_refund_claim() -> None:
    """Same refusals; BOB redeems what he charged (`spent`), as his watcher does: ALICE's
    watcher checks the Redeemed event and posts nothing."""
    ledger = make_ledger()
    async with nodes(ledger) as (alice, bob, _):
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        await refused_with_handler_error(alice, bob)
        await refused_with_price_flips(alice, bob, flips=1)
        payee = bob.payee_channels[ch.channel]
        voucher = payee.verified_voucher()
        assert voucher is not None and voucher.paid > payee.spent  # refused slices in it
        assert await ledger.redeem(BOB, voucher, payee.spent) == payee.spent
        events, _ = await ledger.events_for(ALICE.account)
        redeemed = max(e.seq for e in events if e.kind == "Redeemed")
        await wait_until(lambda: alice.watcher.cursor >= redeemed)
        assert await ledger.claims_of(ALICE.account) == []
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE
        info = await ledger.channel(ch.channel)
        assert info is not None and (info.clawed, info.refunded) == (0, 0)


async def test_n1_refused_slice_taken_at_a_payee_close_is_clawed_back(tmp_path: Path) -> None:
    """The payee closes with the full best voucher (Redeemed, ChannelClosed); ALICE (SQLite
    store) kept the signed refusal with its request, posts it, then lets it go."""
    ledger = make_ledger()
    store = await SqliteStore.open(tmp_path / "alice.sqlite")
    try:
        async with nodes(ledger, store) as (alice, bob, _):
            ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
            await refused_with_handler_error(alice, bob)
            await alice.call(bob.addrs[0], "echo", b"a2", max_price=PRICE)
            await alice.persister.flush()
            (record,) = await store.requests(state="refused")
            kept = await store.response(record.request_hash)
            assert kept is not None and kept.expires_at == MAX_TIME  # the signed refusal
            payee = bob.payee_channels[ch.channel]
            voucher = payee.verified_voucher()
            assert voucher is not None and voucher.paid == 2 * PRICE
            assert await ledger.payee_close(BOB, ch.channel, voucher) == 2 * PRICE

            async def refunded() -> bool:
                info = await ledger.channel(ch.channel)
                return info is not None and info.clawed == PRICE

            await wait_until(refunded)
            claim = await ledger.claim(record.request_hash)
            assert claim is not None and claim.state is ClaimState.REFUSED
            # the channel is closed and settled: the refusal is let go (pruned later)

            async def let_go() -> bool:
                await alice.persister.flush()
                stored = await store.response(record.request_hash)
                return stored is not None and stored.expires_at < MAX_TIME

            await wait_until(let_go)
            assert await ledger.claims_of(ALICE.account) == [claim]  # posted once
    finally:
        await store.aclose()
