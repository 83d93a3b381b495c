"""Attack round 14 on 32a62ca (finding 4), fixed: a signed claim refusal of a fresh slice
consumes the slice (``paid_max`` rises to its ``paid``), as on a stream; and the watcher
refreshes the deposit before it decides a claim above the deposit it knows (FileClaim
checked it against the ledger's).

What 32a62ca (and every version before) did: a claim on a request never sent, numbered
above ``last_n``, refused through the claim for a service reason (unknown service, price
below the service's; every claimed refusal is signed) consumed ``n`` but NOT its slice:
`PayeeChannel.admit_claimed` raised ``paid_max`` only when it admitted. The claim ended
REFUSED and the ledger refunded the whole slice; the payer's next stream requests took the
same slice again and were admitted and charged, and the payee could never redeem them (its
entitlement, ``paid_seen - refunded``, was cut by the refund). The same with a signed
INSUFFICIENT_DEPOSIT from the payee's stale view of the deposit after a top-up (the
ToppedUp event names the payer, not the payee). No race: deterministic.

The payer (raw peer MALLORY): deposit 100,000, ten calls (spent = paid_max = 10,000);
claims request n=11 (never sent), slice (10,000, 100,000] (or, after a top-up of 1,000,
(10,000, 101,000]); then sends n=12 with a slice starting at 10,000 again; closes. Every
wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import pytest
import trio
from node_support import wait_until
from raw_payer import BOB, MALLORY, PRICE, STAKE, echo, raw_payer_and_provider

from p2pay.core.errors import ErrorCode
from p2pay.core.messages import Refusal, Response, decode_frame
from p2pay.core.settlement import ChannelState, ClaimState

CASES = {
    # how: (claimed service, its price at BOB, top-up first, claim outcome, BOB's charges)
    "unknown": ("nope", None, False, ClaimState.REFUSED, 10 * PRICE),
    "cheap": ("dear", 100 * PRICE, False, ClaimState.REFUSED, 10 * PRICE),
    "stale_deposit": ("echo", None, True, ClaimState.DELIVERED, 11 * PRICE),
}


@pytest.mark.parametrize("how", list(CASES))
async def test_a_fresh_slice_answered_through_a_claim_is_consumed(how: str) -> None:
    service, price, top_up, outcome, charged = CASES[how]
    async with raw_payer_and_provider(
        b"r14-slice-" + how.encode(), deposit=100 * PRICE, challenge_ms=1_000
    ) as (payer, bob):
        ledger, channel = payer.ledger, payer.channel
        if price is not None:
            bob.serve(service, echo, price=price)
        for n in range(1, 11):
            answer = await payer.call(n, n * PRICE)
            assert isinstance(answer, Response) and answer.status == "OK"
        payee = bob.payee_channels[channel]
        assert payee.spent == payee.paid_max == 10 * PRICE
        end = 100 * PRICE
        if top_up:
            await ledger.top_up(MALLORY, channel, PRICE)  # BOB is not told
            end += PRICE
        # slice (10,000, end]: above every voucher; never sent, claimed
        claimed = payer.signed(
            11, end, await ledger.now() - 1, price=end - 10 * PRICE, service=service
        )
        claim = await payer.decided(await ledger.file_claim(MALLORY, claimed))
        answer = decode_frame(claim.response_frame)
        assert isinstance(answer, Response) and answer.verify(BOB.account)
        assert claim.state is outcome and payee.paid_max == end
        # the same slice again, on the stream: refused unsigned (it was consumed)
        again = await payer.call(12, 11 * PRICE)
        assert isinstance(again, Refusal) and again.code is ErrorCode.PAYMENT_REQUIRED
        assert again.details["paid_max"] == end

        # the payer closes; the payee's watcher redeems what it charged (C-8)
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed == payee.spent

        await wait_until(redeemed, timeout=20)
        with trio.fail_after(20):
            while True:
                try:
                    await ledger.finalize_close(MALLORY, channel)
                    break
                except Exception:
                    await trio.sleep(0.2)
        info = await ledger.channel(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        # everything the payee charged, it redeemed: the refund took nothing it served
        assert info.redeemed == payee.spent == charged
        assert info.clawed == 0 and await payer.stake_of_bob() == STAKE
        assert (await ledger.totals()).conserved
