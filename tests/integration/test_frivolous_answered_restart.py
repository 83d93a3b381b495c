"""A FRIVOLOUS claim on a request the payer already had a receipt for leaves that request
counted as answered, across a restart (claims.md 6: a restart counts as abandoned exactly
what the channel counted as outstanding).

ALICE calls BOB (answered: the receipt is inside her ``spent``), then claims that very
request on the ledger herself, and BOB answers the claim with her own conflicting request
as evidence: FRIVOLOUS, her bond goes to him. Her watcher recorded the request's state as
``rejected`` over ``answered``, and a restart counted ``rejected`` requests as abandoned:
the answered request's price came back as outstanding and as headroom for a jump (protocol.md
14.3 rule 7), so after the restart a receipt charging one price more than served would
have been accepted. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path

import trio
from node_support import funded_ledger, wait_until

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, decode_frame
from p2pay.core.settlement import ClaimState
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Behaviour, Call, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50, redeem_threshold=10**30
)


class Silent(Behaviour):
    answers_claims = False  # the test answers the claim itself, with evidence


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_frivolous_claim_on_an_answered_request_keeps_it_answered_after_a_restart(
    tmp_path: Path,
) -> None:
    ledger = await funded_ledger(b"frivolous-answered", ALICE, BOB)
    net = MemoryNetwork()
    async with open_node(
        key=BOB, ledger=ledger, network=net, config=CONFIG, behaviour=Silent()
    ) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(10**20, penalty=10**19, claim_window_ms=5_000)
        store = await SqliteStore.open(tmp_path / "alice.sqlite")
        try:
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=CONFIG, store=store
            ) as alice:
                ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
                with trio.fail_after(10):
                    result = await alice.call(
                        bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.3
                    )
                answered = decode_frame((await store.requests())[0].frame)
                assert isinstance(answered, Request) and answered.n == result.n
                # her own request under the same number: a tiling conflict (evidence)
                evidence = Request.create(
                    ALICE,
                    ledger=answered.ledger,
                    channel=answered.channel,
                    n=answered.n,
                    paid=answered.paid,
                    price=answered.price,
                    service="echo",
                    body=b"another",
                    deadline=answered.deadline,
                )

                async def deadline_passed() -> bool:
                    return await ledger.now() > answered.deadline

                await wait_until(deadline_passed)
                claim_id = await ledger.file_claim(ALICE, answered)
                await ledger.answer_claim(BOB, claim_id, evidence=evidence)
                claim = await ledger.claim(claim_id)
                assert claim is not None and claim.state is ClaimState.FRIVOLOUS

                async def recorded() -> bool:
                    return any(c.state == "frivolous" for c in await store.claims())

                await wait_until(recorded)
                await alice.persister.flush()
                payer = alice.payer_channels[ch.channel]
                assert (payer.spent, payer.outstanding, payer.abandoned) == (PRICE, 0, {})
        finally:
            await store.aclose()
        store = await SqliteStore.open(tmp_path / "alice.sqlite")
        try:
            [record] = await store.requests()
            assert record.state == "answered"
            async with open_node(
                key=ALICE, ledger=ledger, network=net, config=CONFIG, store=store
            ) as alice:
                payer = alice.payer_channels[ch.channel]
                # as before the restart: nothing outstanding, no headroom for a jump
                assert (payer.spent, payer.outstanding, payer.abandoned) == (PRICE, 0, {})
        finally:
            await store.aclose()
