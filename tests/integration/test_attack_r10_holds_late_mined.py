"""Attack round 10 on 69a99c8, holds: a claim and a refusal post whose transactions time
out at the payer but are mined all the same (an EVM endpoint that gives up waiting for the
receipt) leave no refund absorbed and no request restored as outstanding.

The ledger applies the payer's first plain claim (n=2's, withheld by BOB) and its first
refund with refusal (n=1's), then raises `OSError` to the payer each time. The claim task
logs and retries (CLAIM_EXISTS now follows the claim it filed), the take check stays due
and runs again, and the ClaimFiled / ClaimAnswered events record both claims. BOB (who
took n=2's voucher, never answered it, and redeemed 2 prices) ends holding 1 price (n=3,
served): n=2's claim UPHELD, n=1's refusal posted, 1000 yocto clawed back, whether BOB
redeemed before n=2's claim ended or after it.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

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

from p2pay.core.messages import Request, Response
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.node import CallTimeout


class MinedLate(MemoryLedger):
    """The first plain claim and the first refund with refusal are applied, then the
    payer is told the transaction timed out."""

    def __init__(self) -> None:
        super().__init__(claim_game_params(b"p2pay:test:r10-mined-late", claim_bond=10**18))
        self.timed_out: set[bool] = set()

    async def file_claim(
        self, key: object, request: Request, refusal: Response | None = None
    ) -> bytes:
        claim_id = await super().file_claim(key, request, refusal)  # type: ignore[arg-type]
        if (refusal is not None) not in self.timed_out:
            self.timed_out.add(refusal is not None)
            raise OSError("transaction receipt not received in time (mined later)")
        return claim_id


@pytest.mark.parametrize("redeem", ["before the claim ends", "after the claim ends"])
async def test_claims_mined_after_a_timeout_leave_the_payee_one_price(redeem: str) -> None:
    ledger = MinedLate()
    async with nodes(ledger, Withholds(), window_ms=WINDOW_MS) as (alice, bob):
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        await refused_signed(alice, bob)
        with pytest.raises(CallTimeout):
            await alice.call(bob.addrs[0], "echo", b"withhold", max_price=PRICE, timeout=0.3)
        result = await alice.call(bob.addrs[0], "echo", b"served", max_price=PRICE)
        assert (result.n, result.price) == (3, PRICE)
        voucher = bob.payee_channels[ch.channel].verified_voucher()
        assert voucher is not None and voucher.paid == 3 * PRICE

        async def upheld() -> bool:
            return any(c.state is ClaimState.UPHELD for c in await ledger.claims_of(ALICE.account))

        if redeem == "before the claim ends":
            assert await ledger.redeem(BOB, voucher, 2 * PRICE) == 2 * PRICE
            await wait_until(upheld)
        else:
            await wait_until(upheld)
            assert await ledger.redeem(BOB, voucher, 2 * PRICE) == 2 * PRICE

        async def clawed() -> bool:
            info = await ledger.channel(ch.channel)
            return info is not None and info.clawed == PRICE

        await wait_until(clawed)
        steps = alice.watcher.steps
        with trio.fail_after(60):
            while alice.watcher.steps < steps + 10:
                await trio.sleep(0.05)
        assert ledger.timed_out == {False, True}
        info = await ledger.channel(ch.channel)
        assert info is not None and info.redeemed - info.clawed == PRICE
        claims = {c.n: c.state for c in await ledger.claims_of(ALICE.account)}
        assert claims == {1: ClaimState.REFUSED, 2: ClaimState.UPHELD}
        states = {r.n: r.state for r in await alice.store.requests()}
        assert states == {1: "refused", 2: "compensated", 3: "answered"}
        payer = alice.payer_channels[ch.channel]
        assert (payer.spent, payer.outstanding) == (PRICE, 0)
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE - PENALTY - PRICE
        assert (await ledger.totals()).conserved
