"""Attack round 16 on 05e627d, fixed: a request still being served on its stream, of
another number than the claimed one, is evidence against the claim too
(`Watcher._known_requests` takes every request in `PayeeChannel.serving`).

MALLORY (a raw payer) pays call 1 (slice (0, 1000]); signs R (n=2, slice (1000, 2000]),
never sends it, and waits for its deadline; then sends S (n=3, the same slice) to a service
that takes a while, and T (n=4, slice (2000, 3000]), which becomes BOB's best and checked
voucher; and claims R while S is still served. The lookup looked at the stored requests
near n=2 (S is stored only once answered), the floor voucher, the best vouchers (T) and a
request served under n=2 only: no evidence, and n=2 was taken for a gap. `admit_claimed`
found the credit taken (S reserved it) and answered with a signed PAYMENT_REQUIRED: the
claim ended REFUSED and R's slice was refunded, the slice S was then charged in (k slow
requests over a k-price R: k calls for nothing; with S ending late instead, R was served
and S's signed refusal then refunded the same slice, clawed from the stake). The right
answer: S as evidence (R.n < S.n and R.paid > S.paid - S.price), FRIVOLOUS.

No race: the payer orders its own messages; S's handler waits for the test's event (every
wait bounded; nothing asserts on timing).
"""

from __future__ import annotations

import pytest
import trio
from node_support import wait_until
from raw_payer import MALLORY, PRICE, STAKE, raw_payer_and_provider

from p2pay.core.messages import Response
from p2pay.core.settlement import ClaimState
from p2pay.node import Call


@pytest.mark.parametrize("k", [1, 3])
async def test_a_conflicting_request_still_served_refutes_the_claim(k: int) -> None:
    release = trio.Event()

    async def held(call: Call) -> bytes:  # an honest service that takes a while
        with trio.fail_after(30):
            await release.wait()
        return call.body

    async with raw_payer_and_provider(b"r16-inflight") as (payer, bob):
        ledger, channel = payer.ledger, payer.channel
        bob.serve("held", held, price=PRICE)
        first = await payer.call(1, PRICE)
        assert isinstance(first, Response) and first.status == "OK"
        deadline = await ledger.now() + 200
        # R: n=2, slice (1000, 1000 + k*1000], never sent; S_i: n=2+i tiling it, held
        claimed = payer.signed(2, (k + 1) * PRICE, deadline, price=k * PRICE, body=b"claimed")
        await payer.wait_past(deadline)
        later = await ledger.now() + 30_000
        with trio.fail_after(10):
            for i in range(1, k + 1):
                held_request = payer.signed(2 + i, (i + 1) * PRICE, later, service="held")
                await payer.stream.send(held_request.to_frame())
        # T: the next slice, answered at once; it becomes BOB's best (checked) voucher
        best = await payer.call(k + 3, (k + 2) * PRICE)
        assert isinstance(best, Response) and best.status == "OK"
        payee = bob.payee_channels[channel]
        assert len(payee.serving) == k and payee.best is not None and payee.best.n == k + 3
        claim = await payer.decided(await ledger.file_claim(MALLORY, claimed))
        assert len(payee.serving) == k  # still served when the claim was answered
        release.set()
        with trio.fail_after(10):
            for _ in range(k):
                await payer.stream.receive()
        # a request being served is the evidence: FRIVOLOUS, no refund
        assert claim.state is ClaimState.FRIVOLOUS and claim.refund == 0
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed == payee.spent

        await wait_until(redeemed, timeout=20)
        info = await ledger.channel(channel)
        assert info is not None
        # everything the payee charged (k + 2 calls), it may keep
        assert info.paid_seen - info.refunded == payee.spent == (k + 2) * PRICE
        assert info.clawed == 0 and await payer.stake_of_bob() == STAKE
