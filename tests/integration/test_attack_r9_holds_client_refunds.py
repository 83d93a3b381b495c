"""Attack round 9 on 4c9cfca, a rule that held: a dishonest client cannot get an honest
provider clawed or slashed with the refund rules (claims.md C-1, C-2).

ALICE (client) is dishonest; BOB (provider) runs the honest node and redeems what he
charged. ALICE: n=1 and n=3 served, n=2 refused (BOB's signed HANDLER_ERROR, kept).
BOB redeems his ``spent`` (2 prices). Then ALICE, straight on the ledger:

* claims n=1 and n=3, both answered on the stream (BOB answers DELIVERED again);
* posts BOB's refusal of n=2 (refund with refusal, settled at once: REFUSED);
* signs a fresh request n=4 she never sends and claims it (BOB serves it through the
  claim: DELIVERED, charged).

Nothing is clawed from BOB, nothing slashed, every claim ends DELIVERED or REFUSED with
clawed 0, and BOB then redeems everything he charged (3 prices). What stops the attack:
a refusal's slice is never one BOB charged (he refuses with a signature only slices above
``paid_max``), so its refund lowers his entitlement to no less than ``spent`` (C-2); an
answered request's claim is answered from his store (C-5); a fresh one is served (C-6).
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import pytest
from node_support import wait_until
from test_refund_absorbed import (
    ALICE,
    BOB,
    DEPOSIT,
    PRICE,
    STAKE,
    make_ledger,
    nodes,
)

from p2pay.core.errors import P2payError
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.settlement import ClaimState
from p2pay.node import Behaviour


async def test_a_client_cannot_claw_or_slash_an_honest_provider() -> None:
    ledger = make_ledger()
    async with nodes(ledger, Behaviour(), window_ms=5_000) as (alice, bob):
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        channel = ch.channel
        await alice.call(bob.addrs[0], "echo", b"one", max_price=PRICE, timeout=1)
        with pytest.raises(P2payError):
            await alice.call(bob.addrs[0], "fail", b"two", max_price=PRICE, timeout=1)
        await alice.call(bob.addrs[0], "echo", b"three", max_price=PRICE, timeout=1)
        payee = bob.payee_channels[channel]
        voucher = payee.verified_voucher()
        assert voucher is not None and payee.spent == 2 * PRICE
        assert await ledger.redeem(BOB, voucher, payee.spent) == 2 * PRICE

        await alice.persister.flush()
        records = {r.n: r for r in await alice.store.requests() if r.channel == channel}
        requests = {n: decode_frame(r.frame) for n, r in records.items()}
        assert all(isinstance(r, Request) for r in requests.values())
        stored = await alice.store.response(records[2].request_hash)
        assert stored is not None
        refusal = decode_frame(stored.frame)
        assert isinstance(refusal, Response)

        # n=4: a fresh request ALICE signs and never sends, claimed at once after its deadline
        payer = alice.payer_channels[channel]
        n4 = payer.next_request(
            ALICE, service="echo", body=b"four", price=PRICE, deadline=alice.now() + 300
        )

        async def past(request: Request) -> bool:
            return await ledger.now() > request.deadline

        for n in (1, 3):
            r = requests[n]
            assert isinstance(r, Request)
            await wait_until(lambda r=r: past(r))
            await ledger.file_claim(ALICE, r)
        r2 = requests[2]
        assert isinstance(r2, Request)
        await ledger.file_claim(ALICE, r2, refusal=refusal)
        await wait_until(lambda: past(n4))
        await ledger.file_claim(ALICE, n4)

        async def ended() -> bool:
            claims = await ledger.claims_of(ALICE.account)
            return len(claims) == 4 and all(c.state is not ClaimState.OPEN for c in claims)

        await wait_until(ended)
        claims = {c.n: c for c in await ledger.claims_of(ALICE.account)}
        states = {n: c.state for n, c in claims.items()}
        assert states == {
            1: ClaimState.DELIVERED,
            2: ClaimState.REFUSED,
            3: ClaimState.DELIVERED,
            4: ClaimState.DELIVERED,
        }
        assert all(c.clawed == 0 and c.slashed == 0 for c in claims.values())
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE
        # BOB charged n=4 through its claim: he redeems everything he charged
        voucher = payee.verified_voucher()
        assert voucher is not None and payee.spent == 3 * PRICE
        assert await ledger.redeem(BOB, voucher, payee.spent) == PRICE
        info = await ledger.channel(channel)
        assert info is not None and (info.redeemed, info.clawed) == (3 * PRICE, 0)
        assert (await ledger.totals()).conserved
