"""Attack round 14 on 32a62ca (finding 4), fixed: a signed claim refusal of a fresh slice
now consumes the slice (paid_max rises to its paid), as on a stream. What 32a62ca did: a
claim on a request never sent, numbered above `last_n`, refused
through the claim for any service reason (unknown service, price below the service's,
body too large, bad body hash: every claimed refusal is signed) consumes `n` but NOT its
slice: `PayeeChannel.admit_claimed` raises `paid_max` only when it admits. The claim ends
REFUSED and the ledger refunds the whole slice; the payee's `paid_max` stays below it, so
the payer's next stream requests take the same slice again and are admitted and charged,
and the payee can never redeem them (its entitlement, `paid_seen - refunded`, was cut by
the refund). No top-up, no race: deterministic.

The stream path raises `paid_max` to the request's `paid` as soon as it is authenticated,
before checks 7-12 (protocol.md 13.2: "its slice is consumed"; claims.md 3: the payee
"signs a refusal only for a request whose slice starts at or above paid_max and then
raises paid_max to the request's paid").

The payer (raw peer MALLORY): deposit 100,000, ten calls (spent = paid_max = 10,000);
claims request n=11 (never sent) for a service the payee does not offer (HOW="unknown"),
or at a price below the service's (HOW="cheap"), price 90,000, slice (10,000, 100,000];
REFUSED, 90,000 refunded; then EXTRA calls on the stream from 10,000 up again: admitted and
charged; the payer closes; the payee redeems 10,000.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import pytest
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
LEDGER_ID = b"p2pay:test:atk14-slice"
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


def signed(
    channel: bytes, n: int, paid: int, price: int, deadline: int, service: str = "echo"
) -> Request:
    return Request.create(
        MALLORY,
        ledger=LEDGER_ID,
        channel=channel,
        n=n,
        paid=paid,
        price=price,
        service=service,
        body=b"%d" % n,
        deadline=deadline,
    )


@pytest.mark.parametrize("how", ["unknown", "cheap"])
async def test_a_claim_refused_for_a_service_reason_consumes_its_slice(
    how: str,
) -> None:
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

        # slice (10,000, 100,000]: above every voucher; refused for a service reason
        if how == "unknown":
            claimed = signed(channel, 11, 100 * PRICE, 90 * PRICE, await ledger.now() - 1, "nope")
        else:
            bob.serve("dear", echo, price=100 * PRICE)
            claimed = signed(channel, 11, 100 * PRICE, 90 * PRICE, await ledger.now() - 1, "dear")
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
            "claim on n=11 (slice 10,000..100,000):",
            claim.state.value,
            answer.status,
            "refund",
            claim.refund,
            "payee deposit view",
            payee.deposit,
            "paid_max",
            payee.paid_max,
        )

        # the same slice again, on the stream: refused unsigned (it was consumed), with
        # the payee's paid_max for a payer that would sign above it
        again = await call(12, 11 * PRICE)
        assert isinstance(again, Refusal), again
        assert again.code is ErrorCode.PAYMENT_REQUIRED
        assert again.details["paid_max"] == 100 * PRICE == payee.paid_max
        assert payee.spent == 10 * PRICE

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
        assert claim.state is ClaimState.REFUSED and claim.refund == 90 * PRICE
        assert answer.status in (ErrorCode.UNKNOWN_SERVICE.value, ErrorCode.PAYMENT_REQUIRED.value)
        # everything the payee charged, it redeemed: the refund took nothing it served
        assert bob_gain == mallory_cost == payee.spent == 10 * PRICE
        assert info.clawed == 0
