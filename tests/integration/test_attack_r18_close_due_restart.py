"""Attack round 18 on 03d21c7: a payee channel left due by a failed read at its
ChannelClosing event (`Watcher._defend_closes`, d565168) was due in memory only: a
restart before the ledger answered again lost the closing defence (C-8, protocol.md 17.1
rule 1), as the whole event did before d565168.

MALLORY (a raw payer) pays three calls: BOB charges 3 * PRICE = 3000 yocto, unredeemed
(far below the redeem policy's thresholds). MALLORY starts a close (a challenge period of
60 s by the ledger's clock). BOB's ledger endpoint is down while his watcher handles the
ChannelClosing event (every channel read fails, an `OSError` as `ChainUnavailable` is):
the channel stays due, the cursor moves past the event, and is stored. BOB restarts (an
upgrade, a crash, a supervisor's restart: the endpoint is still down, `node run` exits
on nothing of the sort) on the same store, with the endpoint back. On 03d21c7 the due set
was gone with the process and the event was behind the stored cursor: the channel stayed
OPEN in BOB's view, nothing redeemed it (a day's age, half the escrow), and the
FinalizeClose gave MALLORY her whole deposit back, BOB's 3000 included (redeemed 0). Now
the channels due are stored with the cursor that passed their event and are due again
after a restart: BOB redeems his 3000 before the close ends.

The ledger's clock is the test's (the challenge period passes when the test says so);
every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

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

from p2pay.core.messages import Response
from p2pay.core.settlement import Channel, ChannelState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import open_node
from p2pay.store.sqlite import SqliteStore

CHALLENGE_MS = 60_000


class Endpoint(MemoryLedger):
    """A ledger whose channel reads fail while ``down`` (an endpoint unreachable)."""

    down = False
    failed = 0

    async def channel(self, channel_id: bytes) -> Channel | None:
        if self.down:
            self.failed += 1
            raise OSError("ledger endpoint unreachable")
        return await super().channel(channel_id)


async def test_a_close_due_at_a_restart_is_still_defended(tmp_path: Path) -> None:
    clock = OffsetClock()
    ledger = Endpoint(ledger_params(b"r18-close-due-restart"), clock=clock)
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    path = tmp_path / "bob.sqlite"
    store = await SqliteStore.open(path)
    try:
        async with (
            open_node(key=BOB, ledger=ledger, store=store, network=net, config=CONFIG) as bob,
            open_memory_transport(net, MALLORY, ignore_streams) as transport,
        ):
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=10**19, claim_window_ms=8_000)
            channel = await ledger.open_channel(MALLORY, BOB.public, 10**6, CHALLENGE_MS)
            async with connected(transport, bob, ledger, channel) as payer:
                for n in (1, 2, 3):
                    answer = await payer.call(n, n * PRICE)
                    assert isinstance(answer, Response) and answer.status == "OK", answer
            payee = bob.payee_channels[channel]
            assert (payee.spent, payee.redeemed) == (3 * PRICE, 0)
            await watcher_steps(bob, 2)  # the events so far are behind the cursor
            ledger.down = True
            await ledger.start_close(MALLORY, channel)
            await watcher_steps(bob, 3)  # the ChannelClosing event handled, its reads failed
            assert ledger.failed >= 2
            await bob.persister.flush()  # the cursor past the event is stored
    finally:
        await store.aclose()
    # BOB restarts on the same store; the endpoint is back
    ledger.down = False
    store = await SqliteStore.open(path)
    try:
        async with open_node(
            key=BOB, ledger=ledger, store=store, network=net, config=CONFIG
        ) as bob:
            bob.serve("echo", echo, price=PRICE)
            await watcher_steps(bob, 5)
            info = await ledger.channel(channel)
            assert info is not None and info.state is ChannelState.CLOSING
            clock.offset += CHALLENGE_MS + 1_000  # the challenge period ends
            await ledger.finalize_close(MALLORY, channel)
            info = await ledger.channel(channel)
            assert info is not None and info.state is ChannelState.CLOSED
            # BOB was paid what he charged before the close ended
            assert info.redeemed == 3 * PRICE, info
    finally:
        await store.aclose()
