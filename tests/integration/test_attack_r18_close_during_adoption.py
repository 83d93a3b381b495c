"""Attack round 18 on 03d21c7: a close started while the payee was adopting the channel
(reading it from the ledger at its first request) was never defended (C-8).

`Watcher.step` marks due (`_defend_closes`, d565168) only the channels a ChannelClosing
names that are in ``payee_channels`` already. MALLORY sends her first request on a new
channel and starts a close at once; BOB's read of the channel for its adoption
(`ChannelBook.payee_channel_for`) went out before the StartClose and comes back after
his watcher handled the ChannelClosing event (a slow or lagging ledger endpoint, a read
served from a block before the close): the event was passed over (not yet BOB's
channel), and the channel was adopted OPEN from the stale read. Nothing read it again:
BOB served and charged the request (PRICE = 1000 yocto), the ordinary redeem policy did
not redeem it (far below half the escrow), and the FinalizeClose gave MALLORY her whole
deposit back (redeemed 0 of 1000); every request she sent during the challenge period
was charged in BOB's view and paid by nobody. Now a ChannelClosing of a channel being
adopted keeps it due: BOB reads it once adopted and redeems before the close ends.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys

import trio
from node_support import wait_until
from raw_payer import MALLORY, PRICE, raw_payer_and_provider

from p2pay.core.messages import Response
from p2pay.core.settlement import Channel, ChannelState

CHALLENGE_MS = 1_500


async def test_a_close_started_during_the_adoption_is_defended() -> None:
    async with raw_payer_and_provider(b"r18-close-adoption", challenge_ms=CHALLENGE_MS) as (
        payer,
        bob,
    ):
        ledger, channel = payer.ledger, payer.channel
        watcher = bob.watcher
        assert watcher is not None
        read = ledger.channel
        adoption_read = trio.Event()
        close_seen = trio.Event()

        async def lagging(channel_id: bytes) -> Channel | None:
            info = await read(channel_id)
            if channel_id == channel and sys._getframe(1).f_code.co_name == "payee_channel_for":
                adoption_read.set()  # read before the StartClose...
                with trio.fail_after(10):
                    await close_seen.wait()  # ...answered after the watcher saw the close
            return info

        ledger.channel = lagging  # type: ignore[method-assign]
        answers: list[object] = []

        async def first_call() -> None:
            answers.append(await payer.call(1, PRICE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_call)
            with trio.fail_after(10):
                await adoption_read.wait()
            await ledger.start_close(MALLORY, channel)
            steps = watcher.steps
            await wait_until(lambda: watcher.steps >= steps + 2, timeout=10)
            close_seen.set()
        (answer,) = answers
        assert isinstance(answer, Response) and answer.status == "OK", answer
        payee = bob.payee_channels[channel]
        assert payee.spent == PRICE
        info = await read(channel)
        assert info is not None and info.state is ChannelState.CLOSING
        await payer.wait_past(info.closes_at)
        await ledger.finalize_close(MALLORY, channel)
        info = await read(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        # BOB was paid what he charged before the close ended
        assert info.redeemed == payee.spent == PRICE, info
