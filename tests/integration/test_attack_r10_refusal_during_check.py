"""Attack round 10 on 69a99c8: a refusal that arrives while the payer's watcher is checking
what the payee took is dropped with that check, and on a closed channel the check then
forgets the very refusal that proves the theft.

69a99c8 made every answer that lowers what the payee may hold queue a check
(`Node.take_may_exceed` -> `Watcher.check_take`: ``_takes_due.add(channel)``). But
`Watcher._check_takes` runs a due check and then *discards* its channel from
``_takes_due``: a `check_take` made while the check was awaiting (the client task takes
answers concurrently with the watcher) is discarded with it, though the check computed
what the payee may hold before that answer came (`_check_payee_take` reads
``ch.spent + ch.outstanding`` once, right after the ledger read). On a closed channel whose
excess was then 0, the check goes on into `_forget_refusals`, which flushes the store and
reads the channel's requests: a refusal that arrived during that flush is read as
``refused``, nothing looks refundable any more, and the refusal's expiry is set to *now*;
the next `prune_responses` deletes it. No ledger event follows on a closed channel, and
even a restart finds no refusal left to post.

Who gains what (PRICE = 1000 yocto): ALICE calls ``slow`` (n=1), whose handler BOB keeps
running. BOB closes the channel himself (PayeeClose) with n=1's voucher, taking its slice
(1000 yocto): within ALICE's ``spent`` 0 plus the in-flight n=1, so her check finds no
excess and, the channel being closed, lets its refusals go (`_forget_refusals`). BOB's
signed refusal of n=1 (HANDLER_ERROR) reaches ALICE during that step's store flush. The
check queued by its arrival is discarded with the running one; `_forget_refusals` reads
n=1 as refused and expires its refusal; the prune deletes it. ALICE restarts: her check
sees BOB holding 1000 yocto beyond her receipts and has nothing to post. BOB served
nothing and keeps 1000 yocto of ALICE's deposit, his stake untouched.

Had the arrival's check survived, ALICE would have posted the refusal at the next step
(as when it arrives after the check: tests/integration/test_attack_r9_refuse_after_redeem
.py) and the ledger would have clawed the 1000 yocto from BOB's stake.

The arrival is placed in the window deterministically: ALICE's store releases BOB's
handler when `_forget_refusals` reads the requests, waits (bounded) until ALICE's client
took the refusal, and flushes it, as the flush just before would have had the refusal come
a moment earlier. A real payee hits the window by chance (the flush and the reads of every
check that reaches `_forget_refusals` or finds an excess). Every wait bounded; nothing
asserts on timing.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from node_support import claim_game_params, wait_until
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.settlement import ChannelState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node
from p2pay.store.base import OutgoingRequest
from p2pay.store.sqlite import SqliteStore

WINDOW_MS = 2_000


class ArrivesDuringTheCheck(SqliteStore):
    """ALICE's store: the first read of her requests by `_forget_refusals` first lets the
    refusal arrive (`arrive`), as if it came during the flush just before the read."""

    arrive: Callable[[], Awaitable[None]] | None = None

    async def requests(self, state: str | None = None) -> list[OutgoingRequest]:
        if self.arrive is not None and sys._getframe(1).f_code.co_name == "_forget_refusals":
            arrive, self.arrive = self.arrive, None
            await arrive()
        return await super().requests(state)


async def held(ledger: MemoryLedger, channel: bytes) -> int:
    info = await ledger.channel(channel)
    assert info is not None
    return info.redeemed - info.clawed


async def test_a_refusal_arriving_during_the_check_is_still_posted(tmp_path: Path) -> None:
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:r10-during-check", claim_bond=10**18))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    release = trio.Event()

    async def slow_fail(call: Call) -> bytes:
        await release.wait()
        raise RuntimeError("no")

    net = MemoryNetwork()
    path = tmp_path / "alice.sqlite"
    async with open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob:
        bob.serve("slow", slow_fail, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=WINDOW_MS)
        store = await ArrivesDuringTheCheck.open(path)
        assert isinstance(store, ArrivesDuringTheCheck)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store
            ) as alice:
                ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
                channel = ch.channel
                payer = alice.payer_channels[channel]

                async def arrive() -> None:
                    release.set()  # n=1's handler fails: BOB's signed refusal goes out
                    await wait_until(lambda: not payer.in_flight, timeout=30)
                    await alice.persister.flush()

                outcome: list[P2payError] = []

                async def call() -> None:
                    with pytest.raises(P2payError) as info:
                        await alice.call(bob.addrs[0], "slow", b"n1", max_price=PRICE, timeout=30)
                    outcome.append(info.value)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call)
                    await wait_until(lambda: bool(payer.in_flight))
                    await wait_until(lambda: bob.payee_channels.get(channel) is not None)
                    payee = bob.payee_channels[channel]
                    await wait_until(lambda: payee.verified_voucher() is not None)
                    voucher = payee.verified_voucher()
                    assert voucher is not None and voucher.paid == PRICE
                    store.arrive = arrive
                    # BOB closes with n=1's slice while n=1 is in flight (no excess for ALICE)
                    await ledger.payee_close(BOB, channel, voucher, PRICE)
                    with trio.fail_after(60):
                        while store.arrive is not None:
                            await trio.sleep(0.02)
                (error,) = outcome
                assert error.code is ErrorCode.HANDLER_ERROR  # signed: ALICE keeps it
                info = await ledger.channel(channel)
                assert info is not None and info.state is ChannelState.CLOSED
                # ALICE's watcher runs on, through a prune (every 100 steps)
                steps = alice.watcher.steps
                await wait_until(lambda: alice.watcher.steps >= steps + 120)
                print("after the close: held", await held(ledger, channel))
        finally:
            await store.aclose()

        # ALICE restarts: her check runs once for every channel
        store2 = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store2
            ) as alice:

                async def clawed() -> bool:
                    return await held(ledger, channel) == 0

                with trio.move_on_after(10):  # bounded: the bug is that it never comes
                    await wait_until(clawed, timeout=60)
                kept = await alice.store.response(payer_request_hash(await alice.store.requests()))
                info = await ledger.channel(channel)
                assert info is not None
                print(
                    "redeemed", info.redeemed, "clawed", info.clawed,
                    "refusal kept", kept is not None,
                    [(c.n, c.state) for c in await ledger.claims_of(ALICE.account)],
                )  # fmt: skip
                assert (await ledger.totals()).conserved
                # BOB served nothing: he must hold nothing of ALICE's deposit
                assert info.redeemed - info.clawed == 0, (info.redeemed, info.clawed)
        finally:
            await store2.aclose()


def payer_request_hash(records: list[OutgoingRequest]) -> bytes:
    (record,) = records
    return record.request_hash
