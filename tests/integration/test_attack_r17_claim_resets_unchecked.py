"""Attack round 17 on 6ffbbb3, fixed: a request served through a claim that raises the
payee's checked voucher checks the requests admitted unchecked that it covers (protocol.md
13.4 rule d, as a request checked at check 4 on a stream does; `PayeeChannel.admit_claimed`).

BOB defers signature checks with a limit `L` of 2 prices (13.4; the reference's default is
10**20 yocto: the same attack at a price of 10**18 yocto). MALLORY (a raw payer) pays call
1, then in each of `CYCLES` cycles sends two requests whose signatures are bad (signed by
another key on MALLORY's own stream: admitted unchecked, served, charged) and claims a
fresh number it never sent with a good signature (R, served through the claim, C-6). R
raised BOB's checked voucher without checking the bad requests below it: the unchecked
credit was back to 0 and the next cycle took the limit again. At the end MALLORY claims a
twin of each bad request (its number and slice, another body, a good signature): BOB holds
only the bad one under that number, which is no evidence (claims.md 2), so the twin is
refused (REPLAY) and its price refunded out of what BOB charged for the bad one. Before
the fix: 2 * CYCLES prices of service for nothing (here 4000 yocto, twice L; up to 256
bad requests, `MAX_UNCHECKED`, against a limit of L). Now R's check finds the bad
requests and revokes deferral (13.4 c): the next bad ones are checked at admission and
refused, and BOB loses at most L.

PRICE arithmetic: call 1 and each R are paid (1 + CYCLES prices); BOB's loss is what it
charged less what it holds from the channel after the close.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import dataclasses

from node_support import wait_until
from raw_payer import CONFIG, MALLORY, PRICE, raw_payer_and_provider

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response

FORGER = Keypair.from_seed(bytes([9]) * 32)  # not the payer: its signatures are bad
LIMIT = 2 * PRICE
CYCLES = 2


async def test_a_claim_does_not_reset_the_unchecked_credit() -> None:
    config = dataclasses.replace(CONFIG, unverified_credit_limit=LIMIT)
    async with raw_payer_and_provider(b"r17-unchecked", config=config) as (payer, bob):
        ledger, channel = payer.ledger, payer.channel
        first = await payer.call(1, PRICE)  # the first voucher is always checked
        assert isinstance(first, Response) and first.status == "OK"
        n, served = 1, []
        for _ in range(CYCLES):
            for _ in range(LIMIT // PRICE):
                n += 1
                bad = Request.create(
                    FORGER, ledger=ledger.ledger_id, channel=channel, n=n, paid=n * PRICE,
                    price=PRICE, service="echo", body=b"bad %d" % n,
                    deadline=await ledger.now() + 300,
                )  # fmt: skip
                answer = await payer.exchange(bad)
                if isinstance(answer, Response) and answer.status == "OK":
                    served.append(bad)
            n += 1
            fresh = payer.signed(n, n * PRICE, await ledger.now() + 100, body=b"fresh %d" % n)
            await payer.wait_past(fresh.deadline)
            claim = await payer.decided(await ledger.file_claim(MALLORY, fresh))
            assert claim.refund == 0  # served through the claim and paid
        payee = bob.payee_channels[channel]
        print("bad requests served:", len(served), "deferral revoked:", payee.deferral_revoked)
        for bad in served:  # a good twin of each: the bad one is no evidence against it
            twin = payer.signed(bad.n, bad.paid, bad.deadline, body=b"twin " + bad.body)
            await payer.wait_past(twin.deadline)
            await payer.decided(await ledger.file_claim(MALLORY, twin))
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed >= min(
                payee.spent, info.paid_seen - info.refunded
            )

        await wait_until(redeemed, timeout=20)
        info = await ledger.channel(channel)
        assert info is not None
        loss = payee.spent - (info.redeemed - info.clawed)
        print("charged", payee.spent, "holds", info.redeemed - info.clawed, "loss", loss)
        assert len(served) * PRICE <= LIMIT, served
        assert loss <= LIMIT, loss
