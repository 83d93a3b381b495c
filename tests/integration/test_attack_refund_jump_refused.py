"""Attack on the absorbed-refund fix (12305b4): a charge taken as a jump, then the request
refused to its claim (specs/claims.md 6, protocol.md 14.3 rule 8 and 16.2).

A cheating payee drops request n=2 on the stream but charges it anyway: its next receipt
(n=3) carries ``spent`` one price higher (a jump, which the payer absorbs as the lost
receipt of the abandoned n=2). When n=2 is claimed, the payee answers with a *signed
refusal* (REFUSED: no slash, the bond back, the price refunded). The ledger lowers its
entitlement by the price, but the payer holds an unposted refusal (n=1) whose slice is
still inside the entitlement: the refund is absorbed unless the payer posts n=1's refusal.

On 12305b4 the payer's `_take_answer` fed the refusal to the channel *before* the check:
rule 8 accepted it as a receipt served again, the request left the abandoned ones, the jump
it explained stayed in ``spent`` (``absorbed`` cut to 0) and nothing was backed out. The
payee kept the price of a request it refused, and was not even slashed. Now a jump that
no request without an answer can explain leaves ``spent`` (protocol.md 14.3).

Two nodes on the in-memory transport and a dev MemoryLedger. Every wait is bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from node_support import claim_game_params, wait_until

from p2pay.core.errors import ErrorCode, P2payError
from p2pay.core.identity import Keypair
from p2pay.core.settlement import ClaimState
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Behaviour, Call, CallTimeout, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client (honest)
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider (cheats)
PRICE = 1_000
TOKEN = 10**24
STAKE, PENALTY = 10**20, 10**19
DEPOSIT = 10**6

NODE = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,  # BOB's watcher never redeems on its own: the test does
    default_timeout=30.0,
    min_challenge_ms=50,
)


def make_ledger() -> MemoryLedger:
    return MemoryLedger(claim_game_params(b"p2pay:test:atk-refund-jump", claim_bond=10**18))


async def echo(call: Call) -> bytes:
    return call.body


async def fail(call: Call) -> bytes:
    raise RuntimeError("no")


class DropsOnStream(Behaviour):
    """Drops (keeps the voucher of) the request with body ``charged`` on the stream; its
    claim is answered as any claim (the service fails: a signed HANDLER_ERROR)."""

    def drop(self, call: Call) -> bool:
        return call.body == b"charged"


@pytest.mark.parametrize("redeem", ["before the claim ends", "after the claim ends"])
async def test_a_jump_charge_refused_to_its_claim_is_clawed_back(redeem: str) -> None:
    ledger = make_ledger()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    net = MemoryNetwork()
    async with (
        open_node(
            key=BOB, ledger=ledger, network=net, config=NODE, behaviour=DropsOnStream()
        ) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=NODE) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        bob.serve("fail", fail, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=300)
        ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
        # n=1: a signed HANDLER_ERROR, kept by ALICE, unposted
        with pytest.raises(P2payError) as info:
            await alice.call(bob.addrs[0], "fail", b"r", max_price=PRICE, timeout=20)
        assert info.value.code is ErrorCode.HANDLER_ERROR
        # n=2: dropped on the stream, but BOB charges it all the same
        with pytest.raises(CallTimeout):
            await alice.call(bob.addrs[0], "fail", b"charged", max_price=PRICE, timeout=0.3)
        bob.payee_channels[ch.channel].spent += PRICE  # the cheat: n=2's price, no receipt
        # n=3: served; its receipt jumps by n=2's price (absorbed as n=2's lost receipt)
        result = await alice.call(bob.addrs[0], "echo", b"served", max_price=PRICE)
        assert (result.n, result.price) == (3, PRICE)
        payer = alice.payer_channels[ch.channel]
        assert (payer.spent, payer.absorbed, sorted(payer.abandoned)) == (2 * PRICE, PRICE, [2])
        voucher = bob.payee_channels[ch.channel].verified_voucher()
        assert voucher is not None and voucher.paid == 3 * PRICE

        async def refused() -> bool:
            return any(
                c.n == 2 and c.state is ClaimState.REFUSED
                for c in await ledger.claims_of(ALICE.account)
            )

        if redeem == "before the claim ends":
            assert await ledger.redeem(BOB, voucher, 2 * PRICE) == 2 * PRICE
            await wait_until(refused)
        else:
            await wait_until(refused)
            assert await ledger.redeem(BOB, voucher, 2 * PRICE) == 2 * PRICE

        # BOB served one request (n=3): he may hold 1 price. He holds 2 and n=2 (which he
        # refused, signed) was refunded: ALICE must post n=1's refusal, the ledger claws 1.
        async def settled() -> bool:
            events, _ = await ledger.events_for(ALICE.account)
            last = max(e.seq for e in events)
            if alice.watcher.cursor < last:
                return False
            outcome = [c for c in await alice.claims() if c.outcome == "refused"]
            return bool(outcome)

        await wait_until(settled)
        await wait_until(lambda: alice.watcher.steps > 0)
        steps = alice.watcher.steps
        await wait_until(lambda: alice.watcher.steps >= steps + 3)  # a few quiet steps more
        info = await ledger.channel(ch.channel)
        assert info is not None
        print("redeemed", info.redeemed, "refunded", info.refunded, "clawed", info.clawed)
        assert (await ledger.totals()).conserved
        assert info.redeemed - info.clawed == PRICE, (
            f"BOB holds {info.redeemed - info.clawed} for 1 request served "
            f"(redeemed {info.redeemed}, refunded {info.refunded}, clawed {info.clawed})"
        )
        stake = await ledger.stake_of(BOB.account)
        assert stake is not None and stake.amount == STAKE - PRICE


async def test_a_refusal_with_a_spent_the_receipt_rules_refuse_survives_a_restart(
    tmp_path: Path,
) -> None:
    """The same cheat, but BOB's signed refusal to n=2's claim carries a ``spent`` above
    anything ALICE signed (no rule of `check_claim_answer` reads it). The old payer left
    n=2 abandoned (the receipt rules refuse such a spent) with its state ``refused``, which
    a restart does not restore as abandoned: ``absorbed`` was then cut and the jump taken
    as a charge. BOB redeems after ALICE's restart and keeps n=2's price. A refund settles
    the request whatever its answer's ``spent`` says: the jump is no charge, before and
    after a restart."""
    ledger = make_ledger()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10 * TOKEN)
    path = tmp_path / "alice.sqlite"
    store = await SqliteStore.open(path)
    try:
        net = MemoryNetwork()
        async with (
            open_node(
                key=BOB, ledger=ledger, network=net, config=NODE, behaviour=DropsOnStream()
            ) as bob,
            open_node(key=ALICE, ledger=ledger, network=net, config=NODE, store=store) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            bob.serve("fail", fail, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=300)
            honest_store_answer = bob.watcher._store_answer

            async def odd_spent(*args: Any) -> Any:
                ch, request, claim, status, price, body = args[:6]
                # a refusal whose spent is far above anything ALICE signed
                return await honest_store_answer(ch, request, claim, status, price, body, 10**12)

            bob.watcher._store_answer = odd_spent  # type: ignore[method-assign]
            ch = await alice.open_channel(bob.addrs[0], deposit=DEPOSIT)
            with pytest.raises(P2payError):
                await alice.call(bob.addrs[0], "fail", b"r", max_price=PRICE, timeout=20)
            with pytest.raises(CallTimeout):
                await alice.call(bob.addrs[0], "fail", b"charged", max_price=PRICE, timeout=0.3)
            bob.payee_channels[ch.channel].spent += PRICE  # the cheat
            await alice.call(bob.addrs[0], "echo", b"served", max_price=PRICE)
            payer = alice.payer_channels[ch.channel]
            assert (payer.spent, payer.absorbed, sorted(payer.abandoned)) == (
                2 * PRICE,
                PRICE,
                [2],
            )
            voucher = bob.payee_channels[ch.channel].verified_voucher()
            assert voucher is not None and voucher.paid == 3 * PRICE

            async def refused() -> bool:
                return any(c.outcome == "refused" for c in await alice.claims())

            await wait_until(refused)
            await alice.persister.flush()
    finally:
        await store.aclose()
    claims = await ledger.claims_of(ALICE.account)
    assert [(c.n, c.state) for c in claims] == [(2, ClaimState.REFUSED)]

    store = await SqliteStore.open(path)
    try:
        net = MemoryNetwork()
        async with open_node(key=ALICE, ledger=ledger, network=net, config=NODE, store=store) as a2:
            assert await ledger.redeem(BOB, voucher, 2 * PRICE) == 2 * PRICE
            events, _ = await ledger.events_for(ALICE.account)
            redeemed = max(e.seq for e in events if e.kind == "Redeemed")
            await wait_until(lambda: a2.watcher.cursor >= redeemed)
            steps = a2.watcher.steps
            await wait_until(lambda: a2.watcher.steps >= steps + 3)
            info = await ledger.channel(ch.channel)
            assert info is not None and (await ledger.totals()).conserved
            print("redeemed", info.redeemed, "refunded", info.refunded, "clawed", info.clawed)
            assert info.redeemed - info.clawed == PRICE, (
                f"BOB holds {info.redeemed - info.clawed} for 1 request served "
                f"(redeemed {info.redeemed}, refunded {info.refunded}, clawed {info.clawed})"
            )
    finally:
        await store.aclose()
