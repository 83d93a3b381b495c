"""Attack round 11 on 797d36f, holds: a withholder's signed refusal that reaches the payer
while the payer's plain claim of that very request is being filed, on a channel the payee
closed with the request's slice, is still posted, and the payee keeps nothing.

The attempt: `_forget_refusals` lets a closed channel's refusals go once no request of it
is ``awaiting`` or ``claimed`` and no claim of ours is open *in the store*; during the
filing's await the claim is on its way to the ledger but not yet recorded, and the refusal
that arrives turns the request ``refused``. Had the check then found no excess, it would
have expired every refusal of the channel while a refund was still coming. It does not:
the refusal lowers what the payee may hold below what it took (its close took n=2's
slice), so the check finds an excess and posts the refusals first (n=1's claws nothing,
n=2's claws the price); the plain claim then meets CLAIM_EXISTS and follows that claim.

Sequence (PRICE = 1000 yocto; the ledger's clock 21 s ahead of the nodes', so the watcher
claims n=2 while the call still waits, as in test_attack_r9_receipt_during_claim): n=1
refused (signed, kept); n=2 to ``slow`` (the handler held); BOB closes with n=2's voucher
taking 1000 (ALICE's view: spent 0 + n=2 in flight: no excess); ALICE's watcher files the
claim on n=2; while it is pending the handler fails and the signed HANDLER_ERROR refusal
arrives. Expected and found: BOB holds 0, n=2's refusal REFUSED with 1000 clawed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from node_support import claim_game_params, wait_until
from test_refund_absorbed import (
    ALICE,
    BOB,
    DEPOSIT,
    NODE,
    PRICE,
    STAKE,
    TOKEN,
    fail,
    refused_signed,
)

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.settlement import ChannelState
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node

CONFIG = dataclasses.replace(NODE, redeliver_timeout=0.5)


class Hooked(MemoryLedger):
    """Runs `before_claim` inside a plain FileClaim, before the ledger takes it."""

    before_claim: Callable[[], Awaitable[None]] | None = None

    async def file_claim(self, key: Any, request: Any, refusal: Any = None) -> bytes:
        if refusal is None and self.before_claim is not None:
            hook, self.before_claim = self.before_claim, None
            await hook()
        return await super().file_claim(key, request, refusal)


async def test_a_refusal_during_the_claims_filing_on_a_closed_channel_is_posted() -> None:
    ledger = Hooked(
        claim_game_params(b"p2pay:test:r11-closed-filing", claim_bond=10**18),
        clock=lambda: wall_clock_ms() + 21_000,
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    release = trio.Event()

    async def slow_fail(call: Call) -> bytes:
        await release.wait()
        raise RuntimeError("no")

    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice,
    ):
        bob.serve("fail", fail, price=PRICE)
        bob.serve("slow", slow_fail, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=30_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
        channel = ch.channel
        payer = alice.payer_channels[channel]
        await refused_signed(alice, bob)  # n=1: kept by ALICE

        async def refusal_arrives() -> None:
            release.set()
            await wait_until(lambda: not payer.expects(2), timeout=30)
            steps = alice.watcher.steps
            await wait_until(lambda: alice.watcher.steps >= steps + 5, timeout=60)

        outcome: list[P2payError] = []

        async def call() -> None:
            with pytest.raises(P2payError) as info:
                await alice.call(bob.addrs[0], "slow", b"n2", max_price=PRICE, timeout=20)
            outcome.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await wait_until(lambda: payer.expects(2))
            payee = lambda: bob.payee_channels[channel]  # noqa: E731
            await wait_until(lambda: (v := payee().verified_voucher()) is not None and v.n == 2)
            voucher = payee().verified_voucher()
            assert voucher is not None and voucher.paid == 2 * PRICE
            await ledger.payee_close(BOB, channel, voucher, PRICE)
            ledger.before_claim = refusal_arrives
            with trio.fail_after(60):
                while ledger.before_claim is not None:
                    await trio.sleep(0.02)
        (error,) = outcome
        assert error.code is ErrorCode.HANDLER_ERROR

        async def settled() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed - info.clawed == 0

        with trio.move_on_after(10):
            await wait_until(settled, timeout=60)
        info = await ledger.channel(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        claims = [(c.n, c.state, c.clawed) for c in await ledger.claims_of(ALICE.account)]
        print("redeemed", info.redeemed, "clawed", info.clawed, "claims", claims)
        assert (await ledger.totals()).conserved
        assert info.redeemed - info.clawed == 0, (info.redeemed, info.clawed)
