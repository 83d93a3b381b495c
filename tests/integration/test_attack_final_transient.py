"""Attack round on 9e00f5b: one transient ledger failure while the payer posts the payee's
refusals loses the claw for good.

The refund-with-refusal check (`_check_payee_take`) runs inside the handling of the
ClaimUpheld event (`_settle_claim`). If posting the refusal fails with an I/O error (an
EVM endpoint down for a moment: `ChainUnavailable` is an `OSError`), the step's per-event
handler logs it and the cursor moves past the event; the claim is already recorded as
UPHELD, so `_resolve_claims` never visits it again, and nothing else triggers the check
until another Redeemed/ChannelClosed event (there need be none: the payee has redeemed).
BOB keeps the price of the request he withheld.

Same scenario as test_refund_absorbed (n=1 refused, n=2 withheld and UPHELD, n=3 served,
BOB redeems 2 prices before the claim ends); the ledger refuses the first refund with
refusal with an OSError. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from node_support import claim_game_params, wait_until
from test_refund_absorbed import (
    ALICE,
    BOB,
    DEPOSIT,
    PENALTY,
    PRICE,
    STAKE,
    WINDOW_MS,
    Withholds,
    nodes,
    refused_signed,
)

from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.node import CallTimeout


class Flaky(MemoryLedger):
    """Fails the first refund with refusal as an unreachable endpoint would."""

    failed = 0

    async def file_claim(self, key: Any, request: Any, refusal: Any = None) -> bytes:
        if refusal is not None and not self.failed:
            self.failed += 1
            raise OSError("ledger endpoint unreachable (transient)")
        return await super().file_claim(key, request, refusal)


async def test_a_transient_failure_posting_a_refusal_is_tried_again() -> None:
    ledger = Flaky(claim_game_params(b"p2pay:test:refund-absorbed", claim_bond=10**18))
    async with nodes(ledger, Withholds(), window_ms=WINDOW_MS) as (alice, bob):
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        await refused_signed(alice, bob)
        with pytest.raises(CallTimeout):
            await alice.call(bob.addrs[0], "echo", b"withhold", max_price=PRICE, timeout=0.3)
        result = await alice.call(bob.addrs[0], "echo", b"served", max_price=PRICE)
        assert (result.n, result.price) == (3, PRICE)
        voucher = bob.payee_channels[ch.channel].verified_voucher()
        assert voucher is not None and voucher.paid == 3 * PRICE
        assert await ledger.redeem(BOB, voucher, 2 * PRICE) == 2 * PRICE

        async def upheld() -> bool:
            return any(c.outcome == "upheld" for c in await alice.claims())

        await wait_until(upheld)
        await wait_until(lambda: ledger.failed == 1)

        async def clawed() -> bool:
            info = await ledger.channel(ch.channel)
            return info is not None and info.clawed == PRICE

        with trio.move_on_after(10):  # bounded: the bug is that it never comes
            await wait_until(clawed, timeout=60)
        info = await ledger.channel(ch.channel)
        assert info is not None
        claims = {c.n: c for c in await ledger.claims_of(ALICE.account)}
        assert claims[2].state is ClaimState.UPHELD and claims[2].refund == PRICE
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None
        print("redeemed", info.redeemed, "clawed", info.clawed, "stake", stake.amount)
        assert (await ledger.totals()).conserved
        assert info.redeemed - info.clawed == PRICE, (info.redeemed, info.clawed)
        assert stake.amount == STAKE - PENALTY - PRICE
