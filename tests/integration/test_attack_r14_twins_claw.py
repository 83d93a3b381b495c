"""Attack round 14 on 32a62ca (finding 1b): finding 1 turned into money. Fixed with it: the
lookup sees S consumed, looks again and finds S as evidence (FRIVOLOUS); nothing is
charged, and the refusal post claws nothing. What 32a62ca did: The payer signs TWO requests numbered
alike, S and C (same n, same slice: a tiling conflict of its own), claims C (never sent)
and sends S on its stream while the payee's watcher prepares C's answer. S arrives late:
the payee signs a DEADLINE_EXCEEDED refusal of S at admission (n consumed). The watcher,
which read its store and its known requests before S arrived, finds no evidence, and n
neither pending nor completed since its lookup began (an admission refusal is no
completion), takes n for a gap and serves C through its claim, charging it. The payer
then posts the payee's signed refusal of S (FileClaim with refusal, claims.md 3): S has no
claim, so the ledger refunds S's slice, the one C was charged in, and claws the charge
back from the payee's stake (the payee redeemed it). The payer got C served for nothing;
the honest payee served it and lost its price from its stake.

The moment is chosen by wrapping the ledger read the payee's watcher makes in
`_claimed_requests` (it reads each claim filed since its last read, under one lock for
all claims: on a chain an RPC each); the attacker's flood got there without any hook.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
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
LEDGER_ID = b"p2pay:test:atk14-twins"
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


def signed(channel: bytes, n: int, deadline: int, body: bytes = b"") -> Request:
    return Request.create(
        MALLORY,
        ledger=LEDGER_ID,
        channel=channel,
        n=n,
        paid=n * PRICE,
        price=PRICE,
        service="echo",
        body=body or b"req %d" % n,
        deadline=deadline,
    )


def _frames() -> Any:
    frame = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back


async def test_twins_do_not_get_a_claimed_request_served_for_free() -> None:
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
        channel = await ledger.open_channel(MALLORY, BOB.public, 10**6, 60_000)
        stream = await mallory_net.connect(bob.addrs[0])
        with trio.fail_after(10):
            await stream.send(Hello.create(MALLORY, ledger=LEDGER_ID).to_frame())
            assert isinstance(decode_frame(await stream.receive()), Hello)
            await stream.send(signed(channel, 1, await ledger.now() + 30_000).to_frame())
            first = decode_frame(await stream.receive())
        assert isinstance(first, Response) and first.status == "OK"

        deadline = await ledger.now() + 200
        c2 = signed(channel, 2, deadline, b"claimed")  # claimed, never sent
        s2 = signed(channel, 2, deadline, b"sent late")  # same n, same slice, sent late
        with trio.fail_after(10):
            while await ledger.now() <= deadline:
                await trio.sleep(0.05)

        stream_answers: list[Response] = []
        read_claim = ledger.claim

        async def claim_read(claim_id: bytes) -> Any:
            found = await read_claim(claim_id)
            callers = {f.f_code.co_name for f in _frames()}
            if (
                claim_id == c2.hash
                and "_claimed_requests" in callers
                and trio.lowlevel.current_task().name.endswith("._defend")
                and not stream_answers
            ):
                # the watcher reads the claims against it (for evidence), after its store
                # and its known requests: now S arrives on the payer's stream
                with trio.fail_after(10):
                    await stream.send(s2.to_frame())
                    answer = decode_frame(await stream.receive())
                assert isinstance(answer, Response)
                stream_answers.append(answer)
            return found

        ledger.claim = claim_read  # type: ignore[method-assign]
        claim_id = await ledger.file_claim(MALLORY, c2)

        async def decided() -> bool:
            claim = await ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(decided, timeout=20)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        [refusal] = stream_answers
        payee = bob.payee_channels[channel]
        print()
        print(
            "claim on C (n=2):",
            claim.state.value,
            "| stream answer to S (n=2):",
            refusal.status,
            "price",
            refusal.price,
            "| payee spent",
            payee.spent,
        )
        # S, refused on the stream while C's answer was prepared, is the evidence that
        # refutes C (same number, another request): C is not served, nothing is charged
        assert refusal.status == ErrorCode.DEADLINE_EXCEEDED.value and refusal.price == 0
        assert claim.state is ClaimState.FRIVOLOUS
        assert payee.spent == PRICE  # n=1 only

        # the payee redeems what it charged (here: the payer starts a close, C-8)
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:
            info = await ledger.channel(channel)
            return info is not None and info.redeemed == payee.spent

        await wait_until(redeemed, timeout=20)
        # the payer posts the payee's signed refusal of S: refunded, and nothing to claw
        await ledger.file_claim(MALLORY, s2, refusal=refusal)
        stake_after = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        info = await ledger.channel(channel)
        assert info is not None
        await stream.reset()
        assert info.clawed == 0 and stake_after == stake_before
