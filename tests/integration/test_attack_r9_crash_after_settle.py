"""Attack round 9 on 4c9cfca: a payer crash between the claim's settlement in the channel
and the request's new state leaves the refunded request abandoned for good.

`Watcher._record_outcome` staged the settled channel first (`_take_answer`: the payer
snapshot, the request out of ``abandoned``, its slice released), staged the claim's
outcome, and only then *awaited* a store read (`_request_state`: ``store.request``) before
it staged the request's new state (``refused``). The persister's flusher commits what is
staged as soon as it runs, so a crash right after that commit (a kill, a power cut) left a
store whose channel says "n=2 settled as not charged", whose claim record says REFUSED (so
`_resolve_claims` never visits it again) and whose request record still says
``claimed``. (Fixed: the request's state is staged as a narrow update in the same
synchronous step, so the commit that holds the outcome holds it too.) If the outcome
came through `_resolve_claims` (the ClaimAnswered event's
handling failed on one transient ledger error, and the cursor moved past it: the
watcher's documented behaviour), nothing replays it after the restart: n=2 is restored as
**abandoned** for good, its price counts again as what the payee may hold, and the refund
its refusals would absorb is never clawed. That is the C-3 hole the refund rules closed
(claims.md 6), reopened by one transient error and a crash at one await. (Without the
transient error the restart replays the event and heals it: the test checks that path is
the one taken.)

Who gains what: BOB (provider, no slash) takes n=2's voucher and never answers it on the
stream; he redeems 2 prices with ALICE's best voucher (n=3's, served, and n=2's, as if
charged) and answers n=2's claim with a signed refusal (REFUSED: ALICE's bond back, no
slash). ALICE crashes at that await while her watcher records the REFUSED outcome, and
restarts. Correct: ALICE posts n=1's refusal, the ledger claws 1000 yocto back, BOB holds
1 price (n=3). Found: nothing is posted, BOB holds 2 prices (clawed 0): he keeps the
price of a request he refused.

The transient error is the ledger failing the first read of the ended claim by
`_record_outcome` (an OSError, as an EVM endpoint down for a moment); the crash is
modelled by a store that commits the batch holding the claim's outcome and then never
returns (nothing staged after it is written); the node is then stopped (cancelled) and
reopened on the same SQLite file. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from node_support import claim_game_params, wait_until
from test_refund_absorbed import (
    ALICE,
    BOB,
    DEPOSIT,
    NODE,
    PRICE,
    STAKE,
    TOKEN,
    DropsOnStream,
    echo,
    fail,
    refused_signed,
)

from p2pay.core.settlement import Claim, ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import CallTimeout, open_node
from p2pay.store.base import Batch
from p2pay.store.sqlite import SqliteStore


class Flaky(MemoryLedger):
    """The first read of an ended claim's outcome by the claimant's watcher fails as an
    endpoint down for a moment would (an `OSError`): the event that carried it is logged
    and passed, and `_resolve_claims` picks the outcome up in the same step."""

    failed = 0

    async def claim(self, claim_id: bytes) -> Claim | None:
        claim = await super().claim(claim_id)
        caller = sys._getframe(1).f_code.co_name
        if (
            claim is not None
            and claim.state is not ClaimState.OPEN
            and caller == "_record_outcome"
            and not self.failed
        ):
            self.failed += 1
            raise OSError("ledger endpoint unreachable (transient)")
        return claim


class CrashesAfterTheOutcome(SqliteStore):
    """Commits the batch that records the ended claim on `target`, then hangs (the
    process's last moment): nothing staged after that commit reaches the file."""

    target: bytes | None = None
    reached: trio.Event

    async def write(self, batch: Batch) -> None:
        if self.reached.is_set():
            await trio.sleep_forever()
        await super().write(batch)
        if any(c.request_hash == self.target and c.state != "open" for c in batch.claims):
            self.reached.set()
            await trio.sleep_forever()


async def test_a_crash_while_recording_a_refund_does_not_restore_the_request(
    tmp_path: Path,
) -> None:
    ledger = Flaky(claim_game_params(b"p2pay:test:refund-absorbed", claim_bond=10**18))
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    path = tmp_path / "alice.sqlite"
    async with open_node(
        key=BOB, ledger=ledger, network=net, config=NODE, behaviour=DropsOnStream()
    ) as bob:
        bob.serve("echo", echo, price=PRICE)
        bob.serve("fail", fail, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=30_000)

        store = await CrashesAfterTheOutcome.open(path)
        assert isinstance(store, CrashesAfterTheOutcome)
        store.reached = trio.Event()
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store
            ) as alice:
                ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
                channel = ch.channel
                await refused_signed(alice, bob)  # n=1: BOB's signed refusal, kept
                payer = alice.payer_channels[channel]
                with pytest.raises(CallTimeout):  # n=2: taken, never answered
                    await alice.call(bob.addrs[0], "fail", b"charged", max_price=PRICE, timeout=0.3)
                (n2,) = payer.abandoned.values()
                store.target = n2.request.hash
                result = await alice.call(bob.addrs[0], "echo", b"served", max_price=PRICE)
                assert (result.n, result.price) == (3, PRICE)
                voucher = bob.payee_channels[channel].verified_voucher()
                assert voucher is not None and voucher.paid == 3 * PRICE
                # BOB takes n=3's price and n=2's, as if charged: within ALICE's spent (1)
                # plus the outstanding n=2 (1), so nothing is posted yet
                assert await ledger.redeem(BOB, voucher, 2 * PRICE) == 2 * PRICE
                with trio.fail_after(60):
                    await store.reached.wait()  # the claim ended REFUSED; ALICE recorded it
                assert ledger.failed == 1  # the event's handling failed, the step went on
        finally:
            await store.aclose()
        claims = {c.n: c.state for c in await ledger.claims_of(ALICE.account)}
        assert claims == {2: ClaimState.REFUSED}

        store2 = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=NODE, store=store2
            ) as alice:
                payer = alice.payer_channels[channel]
                print("restored: spent", payer.spent, "abandoned", sorted(payer.abandoned))

                async def clawed() -> bool:
                    info = await ledger.channel(channel)
                    return info is not None and info.clawed == PRICE

                with trio.move_on_after(10):  # bounded: the bug is that it never comes
                    await wait_until(clawed, timeout=60)
                info = await ledger.channel(channel)
                assert info is not None
                print(
                    "redeemed",
                    info.redeemed,
                    "clawed",
                    info.clawed,
                    [
                        (c.n, c.state, c.refund, c.clawed)
                        for c in await ledger.claims_of(ALICE.account)
                    ],
                    [(r.n, r.state) for r in await alice.store.requests()],
                )
                # BOB served n=3 only: he must hold its price and no more
                assert info.redeemed - info.clawed == PRICE, (info.redeemed, info.clawed)
                assert (await ledger.totals()).conserved
        finally:
            await store2.aclose()
