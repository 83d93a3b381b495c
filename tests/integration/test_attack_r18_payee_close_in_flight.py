"""Attack round 18 on 03d21c7: a request that finished while its payee's own close
(`Node.close_channel` as payee: a PayeeClose redeeming what it charged) was on its way to
the ledger was charged and answered OK, and never paid.

640ff94 stopped charging a request that finishes once the channel is no longer open
(protocol.md 13.3 'closing'). `Node.close_channel` read ``spent`` for the PayeeClose,
awaited the ledger, and only then set the channel CLOSED: a request finishing during that
await (a transaction mined in seconds on a chain) found the channel OPEN, was charged
and answered OK, after the close had paid out the ``spent`` read before it and given the
rest of the escrow back to the payer.

MALLORY pays one echo (PRICE = 1000 yocto, charged) and sends a slow request (n=2, price
1000). BOB closes the channel while it is served; the request finishes while the
PayeeClose is in the ledger's hands. On 03d21c7 BOB charged 2000, the close paid 1000, and
MALLORY got the answer and her 1000 back (the escrow less 1000). Now the channel stops
being open before ``spent`` is read for the close: the slow request is answered
CHANNEL_CLOSED, ``price = 0``, and BOB is paid every yocto he charged.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import trio
from node_support import wait_until
from raw_payer import PRICE, raw_payer_and_provider

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.settlement import ChannelState
from p2pay.node import Call


async def test_a_request_finishing_during_the_payees_close_is_not_charged() -> None:
    release = trio.Event()

    async def held(call: Call) -> bytes:
        with trio.fail_after(20):
            await release.wait()
        return b"held: " + call.body

    async with raw_payer_and_provider(b"r18-payee-close") as (payer, bob):
        ledger, channel = payer.ledger, payer.channel
        bob.serve("held", held, price=PRICE)
        first = await payer.call(1, PRICE)
        assert isinstance(first, Response) and first.status == "OK"
        payee = bob.payee_channels[channel]
        slow = payer.signed(2, 2 * PRICE, await ledger.now() + 30_000, service="held")
        with trio.fail_after(10):
            await payer.stream.send(slow.to_frame())
        await wait_until(lambda: 2 in payee.pending, timeout=10)
        close = ledger.payee_close

        async def mined_later(
            key: Keypair,
            channel_id: bytes,
            voucher: Request | None = None,
            amount: int | None = None,
        ) -> int:
            release.set()  # the slow request finishes while the close is on its way
            await wait_until(lambda: 2 not in payee.pending, timeout=10)
            return await close(key, channel_id, voucher, amount)

        ledger.payee_close = mined_later  # type: ignore[method-assign]
        await bob.close_channel(channel)
        with trio.fail_after(10):
            answer = decode_frame(await payer.stream.receive())
        assert isinstance(answer, Response) and answer.n == 2
        info = await ledger.channel(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        # BOB is paid every yocto he charged: the slow request was not charged
        assert (answer.status, answer.price) == ("CHANNEL_CLOSED", 0), answer
        assert info.redeemed == payee.spent == PRICE, (info.redeemed, payee.spent)
