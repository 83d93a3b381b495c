"""Attack round 14 on 32a62ca (finding 4, stale deposit), fixed: the watcher refreshes the
deposit before it decides a claim whose slice is above the deposit it knows (FileClaim
checked it against the ledger's), and a signed refusal of a fresh slice consumes it. What
32a62ca did: a claim answered with a SIGNED INSUFFICIENT_DEPOSIT refusal from the
payee's stale view of the deposit refunds a slice the payee then charges again on its
stream: the payer gets served for free, the honest payee cannot redeem what it charged.

The stream never signs INSUFFICIENT_DEPOSIT (protocol.md 13.2 check 5'': unsigned, `n`
not consumed, because `paid_max` cannot rise past the deposit to consume the slice, and a
signed refusal of it would be refundable while a later request takes the same slice; and
it refreshes the deposit from the ledger before refusing: a top-up it has not seen).
`PayeeChannel.admit_claimed` (claims.md C-6, "the same checks as off-chain") signs it,
from `ch.deposit` as last read, without raising `paid_max`. The payee's view of the
deposit is stale after any top-up: the ToppedUp event names the channel and the payer,
not the payee, so `events_for(payee)` never brings it (MemoryLedger; the watcher's
refresh on ToppedUp is dead code for a payee there); only a stream request paying above
the known deposit refreshes it.

The payer (raw peer MALLORY): deposit 100,000, ten calls (spent = paid_max = 10,000: too
little for the payee's redeem policy to redeem, so nothing refreshes its view); tops up
1,000; claims request n=11, never sent, price 91,000, slice (10,000, 101,000] (above
every voucher: no conflict with anything the payee holds); the payee refuses it signed
INSUFFICIENT_DEPOSIT (deposit 100,000 as it knows it): REFUSED, 91,000 refunded. Then
EXTRA more calls on the stream, slices from 10,000 up again (paid_max never moved):
admitted and charged. The payer closes; the payee redeems only 10,000 of what it charged.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import trio
from node_support import wait_until

from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Refusal, Request, Response, decode_frame
from p2pay.core.settlement import ChannelState, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, NodeConfig, open_node

MALLORY = Keypair.from_seed(bytes([7]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
PRICE = 1_000
LEDGER_ID = b"p2pay:test:atk14-deposit"
CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
    claim_answer_margin_ms=300,
)


async def echo(call: Call) -> bytes:
    return call.body


def signed(channel: bytes, n: int, paid: int, price: int, deadline: int) -> Request:
    return Request.create(
        MALLORY,
        ledger=LEDGER_ID,
        channel=channel,
        n=n,
        paid=paid,
        price=price,
        service="echo",
        body=b"%d" % n,
        deadline=deadline,
    )


async def test_a_claim_on_a_slice_above_a_stale_deposit_is_served_after_a_refresh() -> None:
    ledger = MemoryLedger(
        Params(
            ledger_id=LEDGER_ID,
            dev=True,
            claim_bond=10**18,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob,
        open_memory_transport(net, MALLORY, ignore) as mallory_net,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(10**20, penalty=10**19, claim_window_ms=8_000)
        stake_before = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        mallory_before = await ledger.balance(MALLORY.account)
        bob_before = await ledger.balance(BOB.account)
        channel = await ledger.open_channel(MALLORY, BOB.public, 100 * PRICE, 1_000)
        stream = await mallory_net.connect(bob.addrs[0])

        async def call(n: int, paid: int) -> Response | Refusal:
            with trio.fail_after(10):
                await stream.send(
                    signed(channel, n, paid, PRICE, await ledger.now() + 30_000).to_frame()
                )
                answer = decode_frame(await stream.receive())
            assert isinstance(answer, Response | Refusal), answer
            return answer

        with trio.fail_after(10):
            await stream.send(Hello.create(MALLORY, ledger=LEDGER_ID).to_frame())
            assert isinstance(decode_frame(await stream.receive()), Hello)
        for n in range(1, 11):
            assert (await call(n, n * PRICE)).status == "OK"
        payee = bob.payee_channels[channel]
        assert payee.spent == payee.paid_max == 10 * PRICE

        await ledger.top_up(MALLORY, channel, PRICE)  # deposit 101,000 on the ledger
        # slice (10,000, 101,000]: above every voucher, and above the deposit the payee knows
        claimed = signed(channel, 11, 101 * PRICE, 91 * PRICE, await ledger.now() - 1)
        claim_id = await ledger.file_claim(MALLORY, claimed)

        async def decided() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(decided, timeout=20)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        answer = decode_frame(claim.response_frame)
        assert isinstance(answer, Response) and answer.verify(BOB.account)
        print()
        print(
            "claim on n=11 (slice 10,000..101,000):",
            claim.state.value,
            answer.status,
            "refund",
            claim.refund,
            "payee deposit view",
            payee.deposit,
            "paid_max",
            payee.paid_max,
        )

        # the same slice again, on the stream: refused unsigned (it was consumed)
        again = await call(12, 11 * PRICE)
        assert isinstance(again, Refusal), again
        assert again.code is ErrorCode.PAYMENT_REQUIRED

        # the payer closes; the payee's watcher redeems what it charged (C-8)
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed > 0

        await wait_until(redeemed, timeout=20)
        await trio.sleep(0.5)  # (a second redeem try, if the watcher makes one)
        with trio.fail_after(20):
            while True:
                try:
                    await ledger.finalize_close(MALLORY, channel)
                    break
                except Exception:
                    await trio.sleep(0.2)
        info = await ledger.channel(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        await stream.reset()
        stake_after = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        bob_gain = await ledger.balance(BOB.account) - bob_before + (stake_after - stake_before)
        mallory_cost = mallory_before - await ledger.balance(MALLORY.account)
        print(
            "ledger: redeemed",
            info.redeemed,
            "paid_seen",
            info.paid_seen,
            "refunded",
            info.refunded,
            "clawed",
            info.clawed,
        )
        print(
            "payee charged",
            payee.spent,
            "; payee's gain on the ledger",
            bob_gain,
            "; payer's cost",
            mallory_cost,
        )
        # the watcher refreshed the deposit the FileClaim had checked, and served the claim
        assert claim.state is ClaimState.DELIVERED and claim.refund == 0
        assert answer.status == "OK" and answer.price == PRICE  # the service's price
        assert bob_gain == mallory_cost == payee.spent == 11 * PRICE
        assert info.clawed == 0
