"""Attack round 18 on 03d21c7, holds: an honest library payer that closes a channel
while its own calls are in flight accounts for the CHANNEL_CLOSED answers they get
(protocol.md 13.3 'closing', 640ff94) without a false alarm, a claim or a lost yocto.

ALICE (a `Node`) pays one echo (PRICE = 1000 yocto) and starts three calls of a slow
service (3 * 1000 more signed: paid 4000). She closes the channel while BOB serves them;
BOB's watcher reads the close, then the three finish: each is answered CHANNEL_CLOSED,
``price = 0``, and each of ALICE's calls fails with CHANNEL_CLOSED. ALICE's watcher
finalizes the close. Checked: ALICE paid exactly 1000 (BOB redeemed 1000, what he
charged), no claim was filed and nothing refunded or clawed (her requests are 'refused',
she counts no protocol violation), and ALICE's and BOB's ``spent`` agree.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import trio
from node_support import funded_ledger, wait_until
from raw_payer import BOB, CONFIG, PRICE, echo

from p2pay.core.channel import ChannelStatus
from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.identity import Keypair
from p2pay.core.settlement import ChannelState
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node

ALICE = Keypair.from_seed(bytes([1]) * 32)


async def test_an_honest_payer_closing_with_calls_in_flight_pays_what_was_charged() -> None:
    ledger = await funded_ledger(b"r18-payer-closes", ALICE, BOB)
    release = trio.Event()

    async def held(call: Call) -> bytes:
        with trio.fail_after(20):
            await release.wait()
        return call.body

    net = MemoryNetwork()
    before = await ledger.balance(ALICE.account)
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice,
    ):
        bob.serve("held", held, price=PRICE)
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(10**20, penalty=10**19, claim_window_ms=30_000)
        opened = await alice.open_channel(bob.addrs[0], deposit=10**6, challenge_ms=1_000)
        channel = opened.channel
        await alice.call(bob.addrs[0], "echo", b"x", max_price=PRICE)
        errors: list[P2payError] = []

        async def slow() -> None:
            try:
                await alice.call(bob.addrs[0], "held", b"slow", max_price=PRICE, timeout=20)
            except P2payError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(slow)
            await wait_until(
                lambda: (
                    channel in bob.payee_channels and len(bob.payee_channels[channel].pending) == 3
                ),
                timeout=10,
            )
            await alice.close_channel(channel)
            payee = bob.payee_channels[channel]
            await wait_until(lambda: payee.status is not ChannelStatus.OPEN, timeout=10)
            release.set()
        assert [e.code for e in errors] == [ErrorCode.CHANNEL_CLOSED] * 3, errors

        async def closed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.state is ChannelState.CLOSED

        await wait_until(closed, timeout=20)  # ALICE's watcher finalized it
        await alice.persister.flush()
        states = sorted((r.n, r.state) for r in await alice.store.requests())
        assert states == [(1, "answered"), (2, "refused"), (3, "refused"), (4, "refused")]
        info = await ledger.channel(channel)
        assert info is not None
        assert (info.paid_seen, info.redeemed, info.refunded, info.clawed) == (
            4 * PRICE,
            PRICE,
            0,
            0,
        ), info
        assert alice.payer_channels[channel].spent == payee.spent == PRICE
        assert await ledger.claims_of(ALICE.account) == []
        assert alice.counters.protocol_violations == 0
        assert before - await ledger.balance(ALICE.account) == PRICE
