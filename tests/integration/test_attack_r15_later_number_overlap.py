"""Attack round 15 on 8cd8a0a, fixed: a request consumed on the stream while a claim is
looked up, in tiling conflict with the claimed one, is kept as evidence
(`PayeeChannel.overlap_seen`): the claim ends FRIVOLOUS.

What 8cd8a0a (and every version before) did: a claimed gap request was refused for CREDIT
(or served), its slice overlapping a request numbered ABOVE it that the payee consumed on
the stream while the claim's lookup ran (after the lookup read its known requests,
``ch.best`` included). The lookup watched only the claimed number; it found no evidence,
no stored answer, nothing pending or completed under that number, and took it for a gap.

* Admitted: `admit_claimed` found the credit taken (by S) and answered with a SIGNED
  PAYMENT_REQUIRED. The claim ended REFUSED and the ledger refunded R's slice, the very
  slice S was charged in: S served for nothing (k calls S_1..S_k tiling R's slice: k calls).
* Refused at admission (unknown service: free to send, `n` consumed): R was served through
  the claim (DELIVERED), and the payer posted S's signed refusal (FileClaim with refusal):
  S's slice, which is R's, refunded and R's price clawed from the stake.

MALLORY pays call 1 (slice [0, 1000]); signs R (n=2, never sent), waits for its deadline and
claims it; while BOB's watcher looks up the claim's evidence (the moment chosen by
wrapping that lookup, `before_claim_lookup`; a stranger gets it by timing: the window
spans the watcher's store and ledger reads, an RPC each on a chain), it sends S. Every
wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import pytest
from node_support import wait_until
from raw_payer import (
    MALLORY,
    PRICE,
    STAKE,
    RawPayer,
    before_claim_lookup,
    raw_payer_and_provider,
)

from p2pay.core.messages import Request, Response
from p2pay.core.settlement import ClaimState
from p2pay.node import Node


async def claim_while_sending(
    payer: RawPayer, bob: Node, claimed: Request, sent: list[Request]
) -> Any:
    """Claim `claimed` and send `sent` on the stream while BOB's watcher looks that
    claim's evidence up (`before_claim_lookup`). Returns the ended claim and the stream's
    answers."""
    answers: list[Any] = []

    async def send() -> None:
        answers.extend([await payer.exchange(s) for s in sent])

    before_claim_lookup(bob, claimed, send)
    claim_id = await payer.ledger.file_claim(MALLORY, claimed)
    return await payer.decided(claim_id), answers


@pytest.mark.parametrize("k", [1, 10])
async def test_a_later_numbered_overlap_admitted_during_the_lookup_refutes_the_claim(
    k: int,
) -> None:
    async with raw_payer_and_provider(b"r15-overlap") as (payer, bob):
        ledger, channel = payer.ledger, payer.channel
        first = await payer.call(1, PRICE, body=b"one")
        assert isinstance(first, Response) and first.status == "OK"
        deadline = await ledger.now() + 200
        # R: n=2, slice [1000, 1000 + k*1000] (never sent); S_i: n=2+i, slices tiling it
        r2 = payer.signed(2, (k + 1) * PRICE, deadline, body=b"claimed", price=k * PRICE)
        later = await ledger.now() + 30_000
        s_reqs = [payer.signed(2 + i, (i + 1) * PRICE, later) for i in range(1, k + 1)]
        await payer.wait_past(deadline)
        claim, answers = await claim_while_sending(payer, bob, r2, s_reqs)
        payee = bob.payee_channels[channel]
        print("claim on R:", claim.state.value, "| S:", [a.status for a in answers])
        # the payee redeems what it charged (the payer starts a close, C-8)
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed == payee.spent

        await wait_until(redeemed, timeout=20)
        info = await ledger.channel(channel)
        assert info is not None
        assert all(isinstance(a, Response) and a.status == "OK" for a in answers)
        # S, consumed while the claim was looked up, is the evidence: FRIVOLOUS, no refund
        assert claim.state is ClaimState.FRIVOLOUS and claim.refund == 0
        # everything the payee charged, it may keep
        assert info.paid_seen - info.refunded == payee.spent == (k + 1) * PRICE
        assert info.clawed == 0 and await payer.stake_of_bob() == STAKE


async def test_a_later_numbered_overlap_refused_during_the_lookup_refutes_the_claim() -> None:
    async with raw_payer_and_provider(b"r15-overlap-refused") as (payer, bob):
        ledger, channel = payer.ledger, payer.channel
        first = await payer.call(1, PRICE, body=b"one")
        assert isinstance(first, Response) and first.status == "OK"
        deadline = await ledger.now() + 200
        r2 = payer.signed(2, 2 * PRICE, deadline, body=b"claimed")
        # S: n=3, R's slice, a service BOB does not offer (refused at admission, signed)
        s3 = payer.signed(3, 2 * PRICE, await ledger.now() + 30_000, service="nope")
        await payer.wait_past(deadline)
        claim, answers = await claim_while_sending(payer, bob, r2, [s3])
        [refusal] = answers
        assert isinstance(refusal, Response)
        assert refusal.status == "UNKNOWN_SERVICE" and refusal.price == 0
        payee = bob.payee_channels[channel]
        # S is the evidence: R is not served, and S's refusal refunds a slice nothing was
        # charged in
        assert claim.state is ClaimState.FRIVOLOUS and payee.spent == PRICE
        await ledger.file_claim(MALLORY, s3, refusal=refusal)
        info = await ledger.channel(channel)
        assert info is not None
        assert info.clawed == 0 and await payer.stake_of_bob() == STAKE
        assert info.paid_seen - info.refunded >= payee.spent == PRICE
