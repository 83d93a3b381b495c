"""Attack round 32 on 2d94f57 (672bf44's read-back): claims waiting for their answer
hold the bodies of the channel's stored stream requests, every claim at once.

672bf44 holds a waiting answer without its body (threat-model 'Memory bound': "the
answers waiting add no body"). But before an answer is made, each claim's task looks
for evidence among the payer-signed requests the node holds (`Watcher._known_requests`):
the stored requests numbered near the claimed one (`Store.vouchers_near`, up to 4 below
and 4 above, plus the floor voucher), read and decoded whole. A request answered on a
stream is stored with its whole request frame (`server._answer`: "the payer-signed
request beside its answer"), body included (up to the service's ``max_body``). Claims
that wait for no handler slot do this side by side, none bounded
(`_answer_claim` -> `_prepare_answer(slot=None)`), and hold what they read across the
awaits that follow (the floor voucher's read, `_claimed_requests`).

MALLORY pays for S = 8 echo calls of 256 KiB on a stream (8 * 1,000 yocto; she gets the
echoes), BOB goes down, she files K = 128 claims on requests numbered above them (fresh
slices, each at BOB's price: every claim DELIVERED, the bonds back). BOB comes back with
2 handler slots and a ledger taking 0.3 s an answer (as test_attack_r22). Every claim is
DELIVERED; traced peak (tracemalloc, this process) on 2d94f57: 53,876,500 bytes for
K = 128 (21,933,175 for 32, 12,920,667 for 16: it grows with the claims); with S = 1
stored request instead of 8, 17,919,456 for 128: the difference is the stored request
bodies. The bound is the r22 test's, 64 bodies of 256 KiB (16,777,216 bytes), which
the node's own limits (4 answers at the ledger, 3 * `max_claim_answers` claims read
whole) stay under. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

from node_support import peak_answering_again, slow_answers_world, wait_until
from raw_payer import MALLORY, connected, ignore_streams

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response
from p2pay.core.settlement import ClaimState
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, Node, NodeConfig, open_node

BOB = Keypair.from_seed(bytes([2]) * 32)
S = 8  # MALLORY's paid stream calls, their request frames stored whole
K = 128  # her claims
BODY = 1 << 18  # the echo service's max_body
SLOTS = 2
PRICE = 1000
BOUND = 64 * BODY  # as test_attack_r22_queued_answer_bodies


async def echo(call: Call) -> bytes:
    return call.body


def serve_echo(node: Node) -> None:
    node.serve("echo", echo, price=PRICE, max_body=BODY)


async def test_claims_hold_a_bounded_number_of_stored_request_bodies(tmp_path: Path) -> None:
    config = NodeConfig(
        watch_interval=0.05, min_challenge_ms=50, max_claim_answers=SLOTS,
        redeem_threshold=10**30, default_timeout=30.0,
    )  # fmt: skip
    net = MemoryNetwork()
    async with slow_answers_world(tmp_path, MALLORY, BOB) as (ledger, store):
        async with (
            open_node(key=BOB, ledger=ledger, network=net, store=store, config=config) as bob,
            open_memory_transport(net, MALLORY, ignore_streams) as transport,
        ):
            serve_echo(bob)
            await bob.stake(10**20, penalty=10**19, claim_window_ms=60_000)
            channel = await ledger.open_channel(MALLORY, BOB.public, 10**9, 60_000)
            # far enough for a loaded machine to serve the S calls before it passes
            deadline = await ledger.now() + 10_000
            async with connected(transport, bob, ledger, channel) as payer:  # type: ignore[arg-type]
                for n in range(1, S + 1):
                    answer = await payer.exchange(
                        payer.signed(n, n * PRICE, deadline, body=bytes([n]) * BODY)
                    )
                    assert isinstance(answer, Response) and answer.status == "OK", answer
            del answer
        # BOB is down: MALLORY files her claims on requests she never sent

        async def past() -> bool:
            return await ledger.now() > deadline

        await wait_until(past, timeout=60)
        ids = []
        for i in range(K):
            n = S + 1 + i
            request = Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=channel, n=n, paid=n * PRICE,
                price=PRICE, service="echo", body=bytes([n]) * 16, deadline=deadline,
            )  # fmt: skip
            ids.append(await ledger.file_claim(MALLORY, request))
        del request

        peak, states = await peak_answering_again(ledger, store, BOB, config, serve_echo, ids)
        print(f"{K} claims near {S} stored requests of {BODY} bytes: peak {peak} bytes")
        assert states == {ClaimState.DELIVERED}, states
        assert peak < BOUND, peak
