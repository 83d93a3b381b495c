"""Attack round 14 on 32a62ca (finding 1b): finding 1 turned into money. Fixed with it: the
lookup sees S consumed, looks again and finds S as evidence (FRIVOLOUS); nothing is
charged, and the refusal post claws nothing. What 32a62ca did: The payer signs TWO requests numbered
alike, S and C (same n, same slice: a tiling conflict of its own), claims C (never sent)
and sends S on its stream while the payee's watcher prepares C's answer. S arrives late:
the payee signs a DEADLINE_EXCEEDED refusal of S at admission (n consumed). The watcher,
which read its store and its known requests before S arrived, finds no evidence, and n
neither pending nor completed since its lookup began (an admission refusal is no
completion), takes n for a gap and serves C through its claim, charging it. The payer
then posts the payee's signed refusal of S (FileClaim with refusal, claims.md 3): S has no
claim, so the ledger refunds S's slice, the one C was charged in, and claws the charge
back from the payee's stake (the payee redeemed it). The payer got C served for nothing;
the honest payee served it and lost its price from its stake.

The moment is chosen by wrapping the watcher's lookup of the other claims against it
(`before_claim_lookup`; then a ledger read of each claim filed since, under one lock for
all claims: on a chain an RPC each); the attacker's flood got there without any hook.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

from node_support import wait_until
from raw_payer import MALLORY, PRICE, STAKE, before_claim_lookup, raw_payer_and_provider

from p2pay.core.errors import ErrorCode
from p2pay.core.messages import Response
from p2pay.core.settlement import ClaimState


async def test_twins_do_not_get_a_claimed_request_served_for_free() -> None:
    async with raw_payer_and_provider(b"r14-twins") as (payer, bob):
        ledger, channel = payer.ledger, payer.channel
        first = await payer.call(1, PRICE)
        assert isinstance(first, Response) and first.status == "OK"
        deadline = await ledger.now() + 200
        # twins: n=2, the same slice, other bodies; C is claimed, S is sent late
        c2 = payer.signed(2, 2 * PRICE, deadline, body=b"claimed twin")
        s2 = payer.signed(2, 2 * PRICE, deadline, body=b"sent twin")
        await payer.wait_past(deadline)
        stream_answers: list[Any] = []

        async def send_twin() -> None:
            # the watcher looks for evidence among the claims against it, after its store
            # and its known requests: now S arrives on the payer's stream
            stream_answers.append(await payer.exchange(s2))

        before_claim_lookup(bob, c2, send_twin)
        claim = await payer.decided(await ledger.file_claim(MALLORY, c2))
        [refusal] = stream_answers
        assert isinstance(refusal, Response)
        payee = bob.payee_channels[channel]
        # S, refused on the stream while C's answer was prepared, is the evidence that
        # refutes C (same number, another request): C is not served, nothing is charged
        assert refusal.status == ErrorCode.DEADLINE_EXCEEDED.value and refusal.price == 0
        assert claim.state is ClaimState.FRIVOLOUS
        assert payee.spent == PRICE  # n=1 only

        # the payee redeems what it charged (here: the payer starts a close, C-8)
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed == payee.spent

        await wait_until(redeemed, timeout=20)
        # the payer posts the payee's signed refusal of S: refunded, and nothing to claw
        await ledger.file_claim(MALLORY, s2, refusal=refusal)
        info = await ledger.channel(channel)
        assert info is not None
        assert info.clawed == 0 and await payer.stake_of_bob() == STAKE
