"""Attack round 34 on 5bfc126: claims on requests answered on a stream each hold their
stored answer's body while the answer's retention is extended; and a restart holds the
stored requests it checks again with their answers, 33 rows at a time.

A claim on a request the node answered on a stream is answered with the response it
stored (`Watcher._stored_answer`): it reads the stored frame (the answer's body, up to
the service's answer limit), decodes it, and then waits for the durable write that keeps
it until the claim's window has ended (`_keep_for`, which stages the whole record again)
before it lets the frame go. Claims that wait for no handler slot run this side by side,
none bounded: every claim of a burst held its answer's body twice, and the persister a
third copy, for as long as one group commit took.

MALLORY pays for K = 64 echo calls of 256 KiB on a stream (64 * 1,000 yocto; she gets
the echoes), BOB goes down, she files a claim on each of those requests (each DELIVERED
by the stored answer: her bonds come back). BOB comes back with 2 handler slots. BOB's
restart first checks the requests stored above his newest checked voucher (protocol.md
13.4 e, `ChannelBook._check_stored`), reading them through `Store.vouchers_near` 16 below
and 16 above a number at a time, each row with the request's frame and the answer's.

Traced peak (tracemalloc, this process) on 5bfc126: 40,015,061 bytes (the restart's
pages); with pages of 4 alone, 34,496,147 (the claims' stored answers, every one at
once); with pages of 4 and the stored answers read and kept at most `max_claim_answers`
at a time, earliest window end first (`Watcher._read_kept`), 11,655,232. The bound is the
r22 test's, 64 bodies of 256 KiB (16,777,216 bytes). Every wait bounded; nothing
asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

from node_support import peak_answering_again, slow_answers_world, wait_until
from raw_payer import MALLORY, connected, ignore_streams

from p2pay.core.identity import Keypair
from p2pay.core.messages import Response
from p2pay.core.settlement import ClaimState
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, Node, NodeConfig, open_node

BOB = Keypair.from_seed(bytes([2]) * 32)
K = 64  # MALLORY's paid stream calls, then a claim on each
BODY = 1 << 18  # the echo service's max_body
SLOTS = 2
PRICE = 1000
BOUND = 64 * BODY  # as test_attack_r22_queued_answer_bodies


async def echo(call: Call) -> bytes:
    return call.body


def serve_echo(node: Node) -> None:
    node.serve("echo", echo, price=PRICE, max_body=BODY)


async def test_claims_on_answered_requests_hold_a_bounded_number_of_answers(
    tmp_path: Path,
) -> None:
    config = NodeConfig(
        watch_interval=0.05, min_challenge_ms=50, max_claim_answers=SLOTS,
        redeem_threshold=10**30, default_timeout=30.0,
    )  # fmt: skip
    net = MemoryNetwork()
    async with slow_answers_world(tmp_path, MALLORY, BOB) as (ledger, store):
        ids = []
        async with (
            open_node(key=BOB, ledger=ledger, network=net, store=store, config=config) as bob,
            open_memory_transport(net, MALLORY, ignore_streams) as transport,
        ):
            serve_echo(bob)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=60_000)
            channel = await ledger.open_channel(MALLORY, BOB.public, 10**9, 60_000)
            async with connected(transport, bob, ledger, channel) as payer:  # type: ignore[arg-type]
                for n in range(1, K + 1):
                    # each its own deadline, far enough for a loaded machine to serve it
                    # (one for all, 1.5 s ahead, passed before the last calls under load)
                    deadline = await ledger.now() + 10_000
                    request = payer.signed(n, n * PRICE, deadline, body=bytes([n]) * BODY)
                    answer = await payer.exchange(request)
                    assert isinstance(answer, Response) and answer.status == "OK", answer
                    ids.append((request, n))
            del answer

        async def past() -> bool:  # claims are heard once the requests' deadlines passed
            return await ledger.now() > deadline

        await wait_until(past, timeout=60)
        # BOB is down: MALLORY claims every request he answered
        claims = []
        for request, _ in ids:
            claims.append(await ledger.file_claim(MALLORY, request))
        del ids, request

        peak, states = await peak_answering_again(ledger, store, BOB, config, serve_echo, claims)
        print(f"{K} claims on answered requests of {BODY} bytes: peak {peak} bytes")
        assert states == {ClaimState.DELIVERED}, states
        assert peak < BOUND, peak
