"""Attack round 14 on 32a62ca (finding 1): a request refused at ADMISSION on a stream while
the payee's watcher prepares the answer to its claim was still taken for a gap and served
again (C-6, C-4). Fixed: a lookup watches its number's answers at admission too.

32a62ca watched `PayeeChannel.complete` only. A request that arrives on a stream after
its deadline is refused at admission (protocol.md 13.2 check 8: signed DEADLINE_EXCEEDED,
`n` consumed, `last_n := n`) and never reaches `complete`: nothing is remembered, the
stored answer is staged but the watcher has read the store already. It then finds the
number at or below `last_n`, neither pending nor "completed since", and admits it through
the claim as a gap (`admit_claimed`), runs the handler and CHARGES it.

Result: two different signed answers of the honest payee to one request: the stream's
DEADLINE_EXCEEDED (price 0, spent S) and the claim's OK (price p, spent S + p). The payer
who took the stream's refusal rejects every later receipt (spent one price ahead).

The attacker is the payer (a raw peer, MALLORY): it signs request n (never sends it),
waits for its deadline, files the claim, and sends the request on its stream when the
payee's watcher has read the store (here: the moment is chosen by wrapping the payee's
store read, as test_claim_answer_race.py chooses its moment by wrapping the channel
look-up; a stranger gets there by timing: the window spans the watcher's ledger reads).
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import trio
from node_support import wait_until

from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, Response, decode_frame
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, NodeConfig, open_node

MALLORY = Keypair.from_seed(bytes([7]) * 32)  # payer (attacker)
BOB = Keypair.from_seed(bytes([2]) * 32)  # honest provider
PRICE = 1_000
LEDGER_ID = b"p2pay:test:atk14-admission"
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


def signed(channel: bytes, n: int, deadline: int) -> Request:
    return Request.create(
        MALLORY,
        ledger=LEDGER_ID,
        channel=channel,
        n=n,
        paid=n * PRICE,
        price=PRICE,
        service="echo",
        body=b"req %d" % n,
        deadline=deadline,
    )


async def test_a_request_refused_at_admission_during_the_claim_lookup_is_answered_once() -> None:
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
        channel = await ledger.open_channel(MALLORY, BOB.public, 10**6, 60_000)
        stream = await mallory_net.connect(bob.addrs[0])
        with trio.fail_after(10):
            await stream.send(Hello.create(MALLORY, ledger=LEDGER_ID).to_frame())
            assert isinstance(decode_frame(await stream.receive()), Hello)
            # n=1: an ordinary paid call (the payee adopts the channel)
            await stream.send(signed(channel, 1, await ledger.now() + 30_000).to_frame())
            first = decode_frame(await stream.receive())
        assert isinstance(first, Response) and first.status == "OK" and first.spent == PRICE

        # n=2: signed, never sent; its deadline passes
        r2 = signed(channel, 2, await ledger.now() + 200)
        with trio.fail_after(10):
            while await ledger.now() <= r2.deadline:
                await trio.sleep(0.05)

        stream_answers: list[Response] = []
        read = bob.store.response

        async def response(request_hash: bytes) -> Any:
            found = await read(request_hash)
            task = trio.lowlevel.current_task().name
            if (
                request_hash == r2.hash
                and found is None
                and task.endswith("._defend")
                and not stream_answers
            ):
                # the watcher has read the store: now the payer's request arrives on its
                # stream (late: refused at admission, signed, n consumed)
                with trio.fail_after(10):
                    await stream.send(r2.to_frame())
                    answer = decode_frame(await stream.receive())
                assert isinstance(answer, Response)
                stream_answers.append(answer)
            return found

        bob.store.response = response  # type: ignore[method-assign]
        claim_id = await ledger.file_claim(MALLORY, r2)

        async def decided() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(decided, timeout=20)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        by_claim = decode_frame(claim.response_frame)
        assert isinstance(by_claim, Response)
        [by_stream] = stream_answers
        payee = bob.payee_channels[channel]
        print()
        print(
            "stream answer to n=2:",
            by_stream.status,
            "price",
            by_stream.price,
            "spent",
            by_stream.spent,
            "signed by Bob:",
            by_stream.verify(BOB.account),
        )
        print(
            "claim  answer to n=2:",
            by_claim.status,
            "price",
            by_claim.price,
            "spent",
            by_claim.spent,
            "signed by Bob:",
            by_claim.verify(BOB.account),
            "claim state",
            claim.state.value,
        )
        spent_after_claim = payee.spent
        print("payee spent", payee.spent, "last_n", payee.last_n)
        # n=3 on the stream: the receipt a payer that took the stream's answer checks
        with trio.fail_after(10):
            await stream.send(signed(channel, 3, await ledger.now() + 30_000).to_frame())
            third = decode_frame(await stream.receive())
        assert isinstance(third, Response)
        print(
            "receipt n=3: price",
            third.price,
            "spent",
            third.spent,
            "(a payer that took the stream's refusal of n=2 expects",
            2 * PRICE,
            ")",
        )
        await stream.reset()

        # one answer to request n=2, the stream's: the claim gets that very refusal (REFUSED,
        # nothing charged), and the next receipt's spent is the payer's plus its price
        assert by_stream.request_hash == by_claim.request_hash == r2.hash
        assert by_stream.status == ErrorCode.DEADLINE_EXCEEDED.value and by_stream.price == 0
        assert by_claim.to_frame() == by_stream.to_frame()
        assert claim.state is ClaimState.REFUSED and claim.slashed == 0
        assert spent_after_claim == PRICE  # n=1 only
        assert third.spent == 2 * PRICE
