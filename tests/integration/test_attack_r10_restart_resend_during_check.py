"""Attack round 10 on 69a99c8: after a payer restart, the watcher's own re-send of a
request left in flight is answered with the payee's signed refusal *during the watcher's
own start-up check*, and the check that refusal queues is dropped with the running one.
No test hook is needed for the collision: both happen in the watcher's first step.

At start the watcher queues a check of every payer channel (``_takes_due``) and, in the
same first step, starts a claimant task for every request left unanswered past its
deadline (`_file_claims`, before `_check_takes`); that task first re-sends the request
(`Node.redeliver`). The payee serves the answer it stored at once. 69a99c8 queues a check
when that answer is a refusal (`take_may_exceed`), but `_check_takes` discards the channel
from ``_takes_due`` when the running start-up check returns, and on a closed channel the
start-up check is still awaiting in `_forget_refusals` (a flush and store reads) when the
re-send's answer comes back. The check is lost; a closed channel has no more ledger
events; the refusal stays unposted until the payer's next restart.

Who gains what (PRICE = 1000 yocto): ALICE calls ``slow`` (n=1, deadline 1 s), whose
handler BOB keeps running. BOB closes the channel himself (PayeeClose) with n=1's voucher,
taking its slice while n=1 is in flight (within ALICE's receipts: no excess). ALICE's node
stops (a routine restart, or a crash); her stream closes, n=1's handler is cancelled and
BOB stores a signed HANDLER_ERROR for it (uncharged, as the protocol wants). ALICE starts
again after n=1's deadline: her watcher re-sends n=1, BOB serves the stored refusal, and
her start-up check (excess 0 with n=1 abandoned, then `_forget_refusals`) drops the check
the refusal queued. ALICE's watcher runs on and posts nothing; BOB unstakes, waits out the
unbonding period (a jump of the ledger's clock here) and withdraws. When ALICE next
restarts, her check posts the refusal: refunded, nothing left to claw. BOB served nothing
and holds 1000 yocto of ALICE's deposit.

Without the nudge below the collision happened in every run here; the nudge makes it
certain on a loaded machine: ALICE's store, when `_forget_refusals` first reads her
requests, waits (bounded) until her client took the re-send's answer. Had the check
survived, ALICE would have posted the refusal at the next step while BOB's stake was
bonded, and the ledger would have clawed the 1000 yocto. Every wait bounded; nothing
asserts on timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from node_support import (
    ShiftedClock,
    claim_game_params,
    wait_until,
    withdraw_whole_stake,
)
from test_refund_absorbed import ALICE, BOB, DEPOSIT, NODE, PRICE, STAKE, TOKEN

from p2pay.core.errors import P2payError
from p2pay.core.settlement import ChannelState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node
from p2pay.store.base import OutgoingRequest
from p2pay.store.sqlite import SqliteStore

WINDOW_MS = 30_000


class Nudged(SqliteStore):
    """The restarted ALICE's store: the first read of her requests by `_forget_refusals`
    waits (bounded) until her client took the answer to the watcher's re-send."""

    channel = b""
    nudged = False

    async def requests(self, state: str | None = None) -> list[OutgoingRequest]:
        caller = sys._getframe(1)
        if not self.nudged and caller.f_code.co_name == "_forget_refusals":
            self.nudged = True
            payer = caller.f_locals["self"].node.payer_channels[self.channel]
            with trio.move_on_after(30):
                while payer.abandoned:
                    await trio.sleep(0.01)
        return await super().requests(state)


async def held(ledger: MemoryLedger, channel: bytes) -> int:
    info = await ledger.channel(channel)
    assert info is not None
    return info.redeemed - info.clawed


async def test_a_resent_requests_refusal_during_the_startup_check_is_posted(
    tmp_path: Path,
) -> None:
    clock = ShiftedClock()
    ledger = MemoryLedger(
        claim_game_params(b"p2pay:test:r10-restart-resend", claim_bond=10**18),
        clock=clock,
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)

    async def slow(call: Call) -> bytes:
        await trio.sleep_forever()
        return b""

    net = MemoryNetwork()
    path = tmp_path / "alice.sqlite"
    async with open_node(key=BOB, ledger=ledger, network=net, config=NODE) as bob:
        bob.serve("slow", slow, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=WINDOW_MS)

        store = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store
            ) as alice:
                ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT, challenge_ms=100)
                channel = ch.channel
                payer = alice.payer_channels[channel]

                async def call() -> None:
                    with pytest.raises(P2payError):
                        await alice.call(bob.addrs[0], "slow", b"n1", max_price=PRICE, timeout=1)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call)
                    await wait_until(lambda: bool(payer.in_flight))
                    await wait_until(lambda: bob.payee_channels.get(channel) is not None)
                    payee = bob.payee_channels[channel]
                    await wait_until(lambda: payee.verified_voucher() is not None)
                    voucher = payee.verified_voucher()
                    assert voucher is not None and voucher.paid == PRICE
                    # BOB closes with n=1's slice while n=1 is in flight (no excess)
                    await ledger.payee_close(BOB, channel, voucher, PRICE)
                    events, _ = await ledger.events_for(ALICE.account)
                    last = max(e.seq for e in events)
                    await wait_until(lambda: alice.watcher.cursor >= last)
                    nursery.cancel_scope.cancel()  # ALICE stops with n=1 in flight
        finally:
            await store.aclose()
        assert (await ledger.channel(channel)).state is ChannelState.CLOSED  # type: ignore[union-attr]
        await trio.sleep(1.2)  # past n=1's deadline

        store2 = await Nudged.open(path)
        assert isinstance(store2, Nudged)
        store2.channel = channel
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store2
            ) as alice:
                payer = alice.payer_channels[channel]
                await wait_until(lambda: not payer.abandoned)  # the re-send's answer came
                records = await alice.store.requests()
                assert [(r.n, r.state) for r in records] == [(1, "refused")]
                # ALICE's watcher runs on: a check of BOB's take would post n=1's refusal
                steps = alice.watcher.steps
                await wait_until(lambda: alice.watcher.steps >= steps + 20)
                print("after the re-send: held", await held(ledger, channel))
        finally:
            await store2.aclose()

        # BOB leaves with his stake (no claim is open against it)
        await withdraw_whole_stake(ledger, BOB, WINDOW_MS, clock)

        # ALICE's next start: her check finds the refusal (if it is still kept) and posts it
        store3 = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store3
            ) as alice:
                steps = alice.watcher.steps
                await wait_until(lambda: alice.watcher.steps >= steps + 20)
                info = await ledger.channel(channel)
                assert info is not None
                claims = [(c.n, c.state, c.clawed) for c in await ledger.claims_of(ALICE.account)]
                print("redeemed", info.redeemed, "clawed", info.clawed, "claims", claims)
                assert (await ledger.totals()).conserved
                # BOB served nothing: he must hold nothing of ALICE's deposit
                assert info.redeemed - info.clawed == 0, (info.redeemed, info.clawed)
        finally:
            await store3.aclose()
