"""Attack round 19 on 06b9ced: the channels a ChannelClosing named before they were the
payee's (`ChannelBook.note_closing`, the fix of the round-18 residual) were remembered in
memory only, while the cursor that passed their events was stored: a restart in between
forgot them, and a stale adoption read then adopted such a channel OPEN again.

MALLORY opens a channel to BOB (deposit 10**6 yocto) and starts a close before her first
request. BOB's watcher passes the ChannelClosing over (the channel is not his yet), notes
it, and stores the cursor past the event. BOB restarts (an upgrade, a crash, a
supervisor's restart) on the same store. MALLORY sends request 1 and BOB's adoption read
is served from before the StartClose (a lagging endpoint of a load-balanced pool). On
06b9ced the note was gone with the process and the event is behind the stored cursor:
the channel was adopted OPEN, request 1 served and charged (PRICE = 1000 yocto), never
redeemed (the ordinary policy waits for half the escrow, 500,000), and the FinalizeClose
gave MALLORY her whole deposit back: 1000 yocto of service for nothing, and as much again
for each of the up to 499 requests she sends before the close ends (499,000 yocto at
most per channel, the escrow's half minus one request). Now the noted channels are
stored with the cursor that passes their events (`CLOSING_SEEN_KEY`) and loaded with the
book: request 1 is refused CHANNEL_CLOSED, nothing charged, nothing lost.

The ledger's clock is the test's (the challenge period passes when the test says so);
every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from raw_payer import (
    BOB,
    CONFIG,
    MALLORY,
    PRICE,
    STAKE,
    OffsetClock,
    connected,
    echo,
    ignore_streams,
    ledger_params,
    watcher_steps,
)

from p2pay.core.channel import ChannelStatus
from p2pay.core.messages import Response
from p2pay.core.settlement import Channel, ChannelState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import open_node
from p2pay.store.sqlite import SqliteStore

CHALLENGE_MS = 60_000


class Lagging(MemoryLedger):
    """A ledger whose adoption reads of ``stale`` are served from ``before`` (a lagging
    endpoint, one node of a pool behind the others)."""

    stale: bytes = b""
    before: Channel | None = None

    async def channel(self, channel_id: bytes) -> Channel | None:
        if (
            channel_id == self.stale
            and self.before is not None
            and sys._getframe(1).f_code.co_name == "payee_channel_for"
        ):
            return self.before
        return await super().channel(channel_id)


async def test_a_close_noted_before_a_restart_still_adopts_closing(tmp_path: Path) -> None:
    clock = OffsetClock()
    ledger = Lagging(ledger_params(b"r19-closing-seen-restart"), clock=clock)
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    path = tmp_path / "bob.sqlite"
    store = await SqliteStore.open(path)
    try:
        async with open_node(
            key=BOB, ledger=ledger, store=store, network=net, config=CONFIG
        ) as bob:
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=10**19, claim_window_ms=8_000)
            channel = await ledger.open_channel(MALLORY, BOB.public, 10**6, CHALLENGE_MS)
            ledger.stale, ledger.before = channel, await ledger.channel(channel)
            assert ledger.before is not None and ledger.before.state is ChannelState.OPEN
            await watcher_steps(bob, 2)
            await ledger.start_close(MALLORY, channel)
            await watcher_steps(bob, 3)  # the ChannelClosing passed over, noted
            assert channel not in bob.payee_channels
            assert channel in bob.book.closing_seen
            await bob.persister.flush()  # the cursor past the event is stored
    finally:
        await store.aclose()
    store = await SqliteStore.open(path)
    try:
        async with (
            open_node(key=BOB, ledger=ledger, store=store, network=net, config=CONFIG) as bob,
            open_memory_transport(net, MALLORY, ignore_streams) as transport,
        ):
            bob.serve("echo", echo, price=PRICE)
            await watcher_steps(bob, 2)  # the event is behind the stored cursor: not seen again
            async with connected(transport, bob, ledger, channel) as payer:
                answer = await payer.call(1, PRICE)
            payee = bob.payee_channels.get(channel)
            assert payee is not None
            spent = payee.spent
            status = payee.status
            ledger.before = None
            clock.offset += CHALLENGE_MS + 1_000  # the challenge period ends
            await ledger.finalize_close(MALLORY, channel)
            info = await ledger.channel(channel)
            assert info is not None and info.state is ChannelState.CLOSED
            # nothing served, nothing owed: BOB charged exactly what he was paid
            assert isinstance(answer, Response) and answer.status == "CHANNEL_CLOSED", answer
            assert status is not ChannelStatus.OPEN
            assert info.redeemed == spent == 0, (info, spent)
    finally:
        await store.aclose()
