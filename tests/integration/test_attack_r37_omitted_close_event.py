"""Attack round 37 (the chain's endpoint lies): an endpoint that leaves the ChannelClosing
event out of what a payee's watcher reads makes the payee lose every charge it had not
redeemed when the payer's close ends.

A payee redeems a channel's charges by its policy (protocol.md 17.1: half the escrow, a
threshold, a day old), and at once when the payer starts a close: its watcher answers the
ChannelClosing event (C-8, `Watcher._defend_closes`). That event is the only thing that
tells it: nothing reads a payee channel's state again while no event names it. An endpoint
that omits that one event from `events_for` (an EVM endpoint's logs are not proven to the
reader) keeps the channel OPEN in the payee's view; the payer finalizes when the challenge
period ends, the escrow goes back to the payer, and what the payee served is lost. With
the defaults (`redeem_max_age_ms` one day, `min_challenge_ms` one minute) any charge below
half the escrow goes.

Here BOB's node reads the ledger through an endpoint whose `events_for` drops every
ChannelClosing; every other read, and the ledger itself, is truthful. ALICE makes paid
calls, then closes with a short challenge period (her own watcher finalizes). BOB must be
paid what he charged. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

from node_support import wait_until
from test_watcher_claims import ALICE, BOB, BOND, LEDGER_ID, PRICE

from p2pay.core.settlement import ChannelState, Event, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

CALLS = 3
CHALLENGE_MS = 8_000  # room for the redeem on a loaded machine

CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,  # redeem only when a duty forces it (a close)
    default_timeout=30.0,
    min_challenge_ms=1_000,
)


class NoCloseEvents:
    """BOB's view of the ledger: everything the real ledger says, but `events_for` leaves
    out every ChannelClosing."""

    def __init__(self, real: MemoryLedger) -> None:
        self._real = real
        self.omitted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def events_for(
        self, account: bytes, after: int = 0, limit: int = 1000
    ) -> tuple[list[Event], int]:
        events, cursor = await self._real.events_for(account, after, limit)
        kept = [e for e in events if e.kind != "ChannelClosing"]
        self.omitted += len(events) - len(kept)
        return kept, cursor


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_close_event_left_out_by_the_endpoint_does_not_lose_the_payees_charges() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = MemoryLedger(params)
    view = NoCloseEvents(ledger)
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    endpoint: Any = view
    async with (
        open_node(key=BOB, ledger=endpoint, network=net, config=CONFIG) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**9, challenge_ms=CHALLENGE_MS)
        for _ in range(CALLS):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=10.0)
        bob_before = await ledger.balance(BOB.account)
        await alice.close_channel(ch.channel)

        async def closed() -> bool:
            info = await ledger.channel(ch.channel)
            return info is not None and info.state is ChannelState.CLOSED

        await wait_until(closed, timeout=120)
        charged = bob.counters.charged
    info = await ledger.channel(ch.channel)
    assert info is not None
    got = await ledger.balance(BOB.account) - bob_before
    print(
        f"close with its event left out: BOB charged {charged}, redeemed {info.redeemed}, "
        f"got {got}; events omitted {view.omitted}"
    )
    assert view.omitted >= 1  # the endpoint did leave the close out
    assert charged == CALLS * PRICE
    assert info.redeemed == CALLS * PRICE, f"BOB lost {CALLS * PRICE - info.redeemed}"
    assert got == CALLS * PRICE
    assert (await ledger.totals()).conserved
