"""Attack round 17 on 6ffbbb3, fixed: a transient ledger error when the payee's watcher
reads a channel the payer started to close no longer loses the closing defence (C-8,
protocol.md 17.1 rule 1; `Watcher._defend_closes`).

MALLORY (a raw payer) pays three calls (3 * PRICE charged by BOB, unredeemed: far below
the redeem policy's thresholds) and starts a close with a challenge period of 1.5 s. The
ledger's channel reads fail twice as BOB's watcher handles the ChannelClosing event (an
EVM endpoint down for a moment: `ChainUnavailable` is an `OSError`): the redeem at the
event and the event's own refresh. The cursor moved past the event, and the channel
stayed OPEN in BOB's view: no closing redeem, the ordinary policy none either (a day's
age, half the escrow), and the FinalizeClose gave MALLORY's whole deposit back, the three
prices BOB earned included. Now the channel stays due until it is read: BOB redeems at
its next step, before the close ends.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from node_support import wait_until
from raw_payer import MALLORY, PRICE, raw_payer_and_provider

from p2pay.core.messages import Response
from p2pay.core.settlement import Channel, ChannelState

CHALLENGE_MS = 1_500


async def test_a_failed_read_at_the_close_is_tried_again() -> None:
    async with raw_payer_and_provider(b"r17-close-read", challenge_ms=CHALLENGE_MS) as (
        payer,
        bob,
    ):
        ledger, channel = payer.ledger, payer.channel
        for n in (1, 2, 3):
            answer = await payer.call(n, n * PRICE)
            assert isinstance(answer, Response) and answer.status == "OK"
        payee = bob.payee_channels[channel]
        assert (payee.spent, payee.redeemed) == (3 * PRICE, 0)
        read = ledger.channel
        failures = 2

        async def flaky(channel_id: bytes) -> Channel | None:
            nonlocal failures
            if failures:
                failures -= 1
                raise OSError("ledger endpoint unreachable (transient)")
            return await read(channel_id)

        ledger.channel = flaky  # type: ignore[method-assign]
        await ledger.start_close(MALLORY, channel)
        await wait_until(lambda: failures == 0, timeout=20)
        info = await read(channel)
        assert info is not None and info.state is ChannelState.CLOSING
        await payer.wait_past(info.closes_at)
        await ledger.finalize_close(MALLORY, channel)
        info = await read(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        # BOB was paid what it charged before the close ended
        assert info.redeemed == payee.spent == 3 * PRICE, info
