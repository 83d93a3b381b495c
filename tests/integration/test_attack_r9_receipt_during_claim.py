"""Attack round 9 on 4c9cfca: a receipt that arrives while the payer's claim is being
filed is overwritten by the filing (``claimed``); after a restart the answered request is
abandoned again, its DELIVERED answer is refused by the receipt rules (its charge is in
``spent`` already), and it stays a phantom outstanding price for good.

`Watcher._claim` reads the request's record last (`_still_awaiting`) and then awaits
``ledger.file_claim`` (on a chain: until the transaction is mined). A receipt that comes
on the stream during that await is accounted for (``spent`` up, the request out of the
channel, its record ``answered``); then `_stage_filed` stages the record it read before
the await, as ``claimed``. Running on, that heals when the claim ends (`on_claim_end`:
"answered already"). But a payer whose node stops before the claim ends (a CLI user's
`p2pay node run` is not always running) restores the request as **abandoned** (claimed is
not accounted for), and the payee's DELIVERED answer (its stored receipt, with the
``spent`` of its time) cannot be taken: it is the receipt of a charge already in
``spent`` with nothing absorbed. The request stays abandoned and ``claimed`` forever: its
price counts as what the payee may hold though the payee holds it already in ``spent``.

Who gains what (PRICE = 1000 yocto): BOB serves n=1 (charged) and his receipt reaches
ALICE while her watcher files n=1's claim (a ledger clock ahead of the nodes' lets the
claim come while the call still waits, as in test_refund_absorbed; on a chain, BOB sends
the stored receipt while the claim's transaction is pending). ALICE stops; BOB answers
the claim with that receipt (DELIVERED); ALICE restarts. n=2 refused (signed), n=3 served;
BOB redeems all his voucher allows (3 prices: n=1, n=3 and n=2's refused slice). ALICE
sees no excess (spent 2 + phantom 1): nothing is posted. Correct: BOB holds 2 prices
(n=1, n=3); found: 3, clawed 0.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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
    echo,
    fail,
    refused_signed,
)

from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Behaviour, Call, open_node
from p2pay.store.sqlite import SqliteStore

CONFIG = dataclasses.replace(NODE, redeliver_timeout=0.5)


class Hooked(MemoryLedger):
    """Runs `before_claim` inside a (plain) FileClaim, before the ledger takes it: what
    happens on the network while the claim's transaction is pending."""

    before_claim: Callable[[], Awaitable[None]] | None = None

    async def file_claim(self, key: Any, request: Any, refusal: Any = None) -> bytes:
        hook, self.before_claim = self.before_claim, None
        if refusal is None and hook is not None:
            await hook()
        return await super().file_claim(key, request, refusal)


class LateDefender(Behaviour):
    """Honest, save that it answers claims only once told to (`answers_claims`)."""

    def __init__(self) -> None:
        self.answers_claims = False


async def test_a_receipt_during_the_claims_filing_leaves_no_phantom(tmp_path: Path) -> None:
    ledger = Hooked(
        claim_game_params(b"p2pay:test:receipt-during-claim", claim_bond=10**18),
        clock=lambda: wall_clock_ms() + 21_000,  # 21 s ahead of the nodes
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    release = trio.Event()

    async def slow(call: Call) -> bytes:
        await release.wait()
        return call.body

    net = MemoryNetwork()
    path = tmp_path / "alice.sqlite"
    behaviour = LateDefender()
    async with open_node(
        key=BOB, ledger=ledger, network=net, config=CONFIG, behaviour=behaviour
    ) as bob:
        bob.serve("echo", echo, price=PRICE)
        bob.serve("fail", fail, price=PRICE)
        bob.serve("slow", slow, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=30_000)

        store = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=CONFIG, store=store
            ) as alice:
                ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
                channel = ch.channel
                payer = alice.payer_channels[channel]

                async def receipt_arrives() -> None:
                    release.set()  # BOB's handler ends in time: the receipt goes out
                    await wait_until(lambda: not payer.expects(1))

                ledger.before_claim = receipt_arrives
                # deadline 20 s ahead of ALICE's clock: past on the ledger's at once
                result = await alice.call(bob.addrs[0], "slow", b"n1", max_price=PRICE, timeout=20)
                assert (result.n, result.price) == (1, PRICE)

                async def claim_filed() -> bool:
                    return any(c.n == 1 for c in await ledger.claims_of(ALICE.account))

                await wait_until(claim_filed)
                assert (payer.spent, payer.outstanding) == (PRICE, 0)
                await alice.persister.flush()
                (claim,) = [c for c in await ledger.claims_of(ALICE.account) if c.n == 1]
                record = await alice.store.request(claim.id)  # (a claim's id: its request's hash)
                print("n=1 after the filing:", record.state if record else None)
        finally:
            await store.aclose()

        # ALICE is down; BOB answers the claim with his stored receipt
        behaviour.answers_claims = True

        async def delivered() -> bool:
            return any(
                c.n == 1 and c.state is ClaimState.DELIVERED
                for c in await ledger.claims_of(ALICE.account)
            )

        await wait_until(delivered)

        store = await SqliteStore.open(path)
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=CONFIG, store=store
            ) as alice:

                async def outcome_read() -> bool:
                    return any(c.outcome == "delivered" for c in await alice.claims())

                await wait_until(outcome_read)
                payer = alice.payer_channels[channel]
                print("after the restart: spent", payer.spent, "abandoned", sorted(payer.abandoned))
                await refused_signed(alice, bob)  # n=2: a signed refusal ALICE keeps
                result = await alice.call(bob.addrs[0], "echo", b"n3", max_price=PRICE, timeout=30)
                assert (result.n, result.price) == (3, PRICE)
                voucher = bob.payee_channels[channel].verified_voucher()
                assert voucher is not None and voucher.paid == 3 * PRICE
                assert await ledger.redeem(BOB, voucher) == 3 * PRICE  # n=2's slice too

                async def clawed() -> bool:
                    info = await ledger.channel(channel)
                    return info is not None and info.clawed == PRICE

                with trio.move_on_after(10):  # bounded: the bug is that it never comes
                    await wait_until(clawed, timeout=60)
                info = await ledger.channel(channel)
                assert info is not None
                print("redeemed", info.redeemed, "clawed", info.clawed)
                assert (await ledger.totals()).conserved
                # BOB served n=1 and n=3: he must hold 2 prices and no more
                assert info.redeemed - info.clawed == 2 * PRICE, (info.redeemed, info.clawed)
        finally:
            await store.aclose()
