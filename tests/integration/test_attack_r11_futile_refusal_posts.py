"""Attack round 11 on 797d36f: a payee with a standing excess the payer cannot claw back
(the written residual "served slices charged below their price", claims.md 7) makes the
payer post *every* later signed refusal on the ledger, each a FileClaim transaction the
payer pays for that claws nothing.

Since 69a99c8 every refusal queues a take check (`Node.take_may_exceed`). With the
residual excess standing, `_check_payee_take` finds ``excess > 0`` at each check and posts
stored refusals "until the excess is covered"; the residual can never be covered, so each
new refusal is posted as soon as it arrives. The ledger's entitlement is
``max(paid_seen, voucher.paid) - refunded`` (settlement.py): a refusal of a slice above
what the payee redeemed raises ``paid_seen`` by the very price it refunds, so the post
claws 0. The payer can tell beforehand (it knows ``redeemed - clawed`` and its own
``paid``), but posts anyway.

Who gains/loses what (PRICE = 1000 yocto): ALICE calls ``echo`` twice; BOB cuts n=2's price
to 500 and redeems its whole slice (500 yocto over ALICE's receipts, the written
residual). BOB then refuses K=5 calls to ``fail`` with signed HANDLER_ERROR refusals
(price 0: free for BOB, no redeem). ALICE's watcher files K refund-with-refusal claims,
each clawing 0 (BOB already holds only his entitlement). On an EVM ledger each is a
transaction ALICE pays gas for (the reference's FileClaim carries the request body and
the refusal): a payee makes its payer burn K transactions' gas with K free refusals,
for as long as it refuses, after a one-time 500 yocto cut. An honest payer loses gas;
BOB loses nothing. The test fails while ALICE files claims that claw nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from node_support import claim_game_params, wait_until
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN, echo

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node

WINDOW_MS = 2_000
K = 5


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def watcher_warnings() -> Iterator[Warnings]:
    """The warnings the watchers log meanwhile."""
    warnings = Warnings()
    logging.getLogger("p2pay.watcher").addHandler(warnings)
    try:
        yield warnings
    finally:
        logging.getLogger("p2pay.watcher").removeHandler(warnings)


async def funded_ledger(name: bytes) -> MemoryLedger:
    """A claim-game ledger where ALICE and BOB hold 10 tokens each."""
    ledger = MemoryLedger(claim_game_params(name, claim_bond=10**18))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    return ledger


async def test_a_standing_residual_excess_does_not_make_every_refusal_a_futile_post() -> None:
    with watcher_warnings() as warnings:
        await _standing_residual(warnings)


async def _standing_residual(warnings: Warnings) -> None:
    ledger = await funded_ledger(b"p2pay:test:r11-futile")

    async def fail(call: Call) -> bytes:
        raise RuntimeError("no")

    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        bob.serve("fail", fail, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=WINDOW_MS)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
        channel = ch.channel
        payee = lambda: bob.payee_channels[channel]  # noqa: E731

        assert (await alice.call(bob.addrs[0], "echo", b"n1", max_price=PRICE)).price == PRICE
        bob.serve("echo", echo, price=PRICE // 2)  # ALICE signs n=2 at the price she knew
        result = await alice.call(bob.addrs[0], "echo", b"n2", max_price=PRICE)
        assert (result.n, result.price) == (2, PRICE // 2)
        voucher = payee().verified_voucher()
        assert voucher is not None and voucher.paid == 2 * PRICE
        assert await ledger.redeem(BOB, voucher) == 2 * PRICE  # the written residual: 500
        await wait_until(lambda: alice.watcher.steps > 0 and not alice.watcher._takes_due)
        filed_before = alice.counters.claims_filed

        for i in range(K):  # free for BOB: signed refusals at price 0, never redeemed
            try:
                await alice.call(bob.addrs[0], "fail", b"x%d" % i, max_price=PRICE, timeout=30)
            except P2payError as exc:
                assert exc.code is ErrorCode.HANDLER_ERROR
            else:
                raise AssertionError("fail served")
        steps = alice.watcher.steps
        await wait_until(lambda: alice.watcher.steps >= steps + 10 and not alice.watcher._takes_due)

        info = await ledger.channel(channel)
        assert info is not None
        claims = [(c.n, c.state, c.clawed) for c in await ledger.claims_of(ALICE.account)]
        filed = alice.counters.claims_filed - filed_before
        print("held", info.redeemed - info.clawed, "claims", claims, "filed", filed)
        assert (await ledger.totals()).conserved
        # BOB refused nothing he redeemed: no post can claw anything back
        assert info.redeemed - info.clawed == 2 * PRICE
        futile = [c for c in claims if c[2] == 0]
        assert not futile, f"ALICE paid for {len(futile)} refund posts that clawed nothing"
        # and the standing excess is warned about once, not again at each of the K checks
        # that find it unchanged (they log it at INFO)
        took = [line for line in warnings.lines if "more than our receipts justify" in line]
        uncovered = [line for line in warnings.lines if "not covered by its refusals" in line]
        assert len(took) == len(uncovered) == 1, warnings.lines


async def test_a_check_while_a_call_waits_does_not_warn_of_the_standing_excess_again() -> None:
    """The same standing excess (500 yocto), checked while a call waits (its price in
    flight covers it for that check) and again after: warned once. Before, the check in
    between dropped the mark and the next warned again (the test above failed so under
    load, when a take check ran while one of its K calls waited)."""
    with watcher_warnings() as warnings:
        await _checked_while_waiting(warnings)


async def _checked_while_waiting(warnings: Warnings) -> None:
    ledger = await funded_ledger(b"p2pay:test:r11-in-flight")
    release = trio.Event()

    async def held(call: Call) -> bytes:  # refused (signed, price 0) once released
        await release.wait()
        raise RuntimeError("no")

    async def refused() -> None:
        try:
            await alice.call(bob.addrs[0], "held", b"n3", max_price=PRICE, timeout=30)
        except P2payError as exc:
            assert exc.code is ErrorCode.HANDLER_ERROR
        else:
            raise AssertionError("held served")

    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        bob.serve("held", held, price=PRICE)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
        await alice.call(bob.addrs[0], "echo", b"n1", max_price=PRICE)
        bob.serve("echo", echo, price=PRICE // 2)
        await alice.call(bob.addrs[0], "echo", b"n2", max_price=PRICE)
        voucher = bob.payee_channels[ch.channel].verified_voucher()
        assert voucher is not None
        assert await ledger.redeem(BOB, voucher) == 2 * PRICE  # 500 over the receipts
        check = alice.watcher._check_payee_take
        await check(ch.channel)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(refused)
                await wait_until(lambda: alice.payer_channels[ch.channel].outstanding > 0)
                await check(ch.channel)  # while n3 waits: covered by its price
                release.set()
        await check(ch.channel)
        took = [line for line in warnings.lines if "more than our receipts justify" in line]
        assert len(took) == 1, warnings.lines
        assert (await ledger.totals()).conserved
