"""Attack round 18, its residual (closed 2026-12-06): a channel adopted from a stale read
long after its close began was served and charged as OPEN, and nothing read it again.

MALLORY opens a channel to BOB and starts a close before her first request; BOB's
watcher sees the ChannelClosing, but the channel is not his yet (no request on it, not
being adopted: `Watcher.step` passes the event over). Then MALLORY sends request 1 and
BOB's adoption read (`ChannelBook.payee_channel_for`) is served from before the
StartClose (a lagging ledger endpoint, one node of a load-balanced pool behind the
others): the channel was adopted OPEN, request 1 served and charged (PRICE = 1000
yocto), never redeemed (the ordinary policy waits for half the escrow), and the
FinalizeClose gave MALLORY her whole deposit back: 1000 served for nothing, and as much
again for every request she sent before the close ended. Now the book remembers the
channels a ChannelClosing named before they were ours (`ChannelBook.note_closing`,
bounded), and adopts such a channel CLOSING whatever the read says (a status never goes
back to OPEN): request 1 is refused CHANNEL_CLOSED, nothing charged, nothing lost.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys

from node_support import wait_until
from raw_payer import MALLORY, PRICE, raw_payer_and_provider

from p2pay.core.channel import ChannelStatus
from p2pay.core.messages import Response
from p2pay.core.settlement import Channel, ChannelState

CHALLENGE_MS = 1_500


async def test_a_stale_adoption_read_after_the_close_event_serves_nothing() -> None:
    async with raw_payer_and_provider(b"r18-stale-adoption", challenge_ms=CHALLENGE_MS) as (
        payer,
        bob,
    ):
        ledger, channel = payer.ledger, payer.channel
        watcher = bob.watcher
        assert watcher is not None
        read = ledger.channel
        before = await read(channel)
        assert before is not None and before.state is ChannelState.OPEN

        async def lagging(channel_id: bytes) -> Channel | None:
            if channel_id == channel and sys._getframe(1).f_code.co_name == "payee_channel_for":
                return before  # served from a block before the StartClose
            return await read(channel_id)

        await ledger.start_close(MALLORY, channel)
        steps = watcher.steps
        await wait_until(lambda: watcher.steps >= steps + 2, timeout=10)  # event handled
        assert channel not in bob.payee_channels
        ledger.channel = lagging  # type: ignore[method-assign]
        answer = await payer.call(1, PRICE)
        assert isinstance(answer, Response) and answer.status == "CHANNEL_CLOSED", answer
        payee = bob.payee_channels.get(channel)
        assert payee is not None and payee.status is not ChannelStatus.OPEN
        assert payee.spent == 0, payee.spent
        ledger.channel = read  # type: ignore[method-assign]
        info = await read(channel)
        assert info is not None and info.state is ChannelState.CLOSING
        await payer.wait_past(info.closes_at)
        await ledger.finalize_close(MALLORY, channel)
        info = await read(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        # nothing served, nothing owed: BOB charged exactly what he was paid
        assert info.redeemed == payee.spent == 0, info
