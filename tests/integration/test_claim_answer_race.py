"""A claim answered while the claimed request's handler ends (claims.md C-6, C-4).

Seen under load in `test_attack_r10_holds_honest_under_load`: the payer abandons a slow
request, its deadline passes and it files a claim. The payee's watcher looks for a stored
answer (none: the handler still runs), and while it reads on, the handler ends: the
request is answered on the stream (late, so a signed DEADLINE_EXCEEDED, nothing charged),
the answer staged but not yet readable. The watcher then found the number neither pending
nor answered, took it for a gap, served the request through the claim and charged it: one
request answered twice, charged once where the payer was told it was not. The payer
rejected every later receipt (their `spent` counted a charge it was never shown), and its
watcher posted the payee's signed refusal against it.

The test makes the handler end exactly there: it ends when the payee's watcher first
asks for the claimed request's channel. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import trio
from node_support import wait_until
from raw_payer import BOB, CONFIG, PRICE, echo

from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, CallTimeout, open_node

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client


async def test_a_request_answered_while_its_claim_is_prepared_is_not_served_again() -> None:
    ledger = MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:claim-race",
            dev=True,
            claim_bond=10**18,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    started, release, ended = trio.Event(), trio.Event(), trio.Event()

    async def slow(call: Call) -> bytes:
        started.set()
        try:
            with trio.CancelScope(shield=True), trio.fail_after(30):
                await release.wait()
            return b"late"
        finally:
            ended.set()

    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        bob.serve("slow", slow, price=PRICE)
        await bob.stake(10**20, penalty=10**19, claim_window_ms=8_000)
        ch = await alice.open_channel(bob.addrs[0], deposit=10**6)
        payee_lookup = bob._payee_channel_for
        asked: list[int] = []

        async def lookup(request: Request, peer: bytes) -> Any:
            # The watcher's lookup, preparing its answer to the claim (not the stream's, for
            # the payer's re-delivery before it claims): the handler ends now, late, and
            # its answer is staged before the watcher reads on.
            task = trio.lowlevel.current_task().name
            if task.endswith("._defend") and request.service == "slow" and not release.is_set():
                asked.append(request.n)
                release.set()
                with trio.fail_after(10):
                    await ended.wait()
                    while request.n in bob.payee_channels[request.channel].pending:
                        await trio.sleep(0)
            return await payee_lookup(request, peer)

        bob._payee_channel_for = lookup  # type: ignore[method-assign]
        try:
            with trio.fail_after(10):
                try:
                    await alice.call(bob.peer_id, "slow", b"x", max_price=PRICE, timeout=0.3)
                except CallTimeout:
                    pass

            async def decided() -> bool:
                claims = await ledger.claims_of(BOB.account)
                return bool(claims) and all(c.state is not ClaimState.OPEN for c in claims)

            await wait_until(decided, timeout=15)
        finally:
            release.set()
        assert asked == [1]  # the handler ended while the watcher prepared its answer
        payee = bob.payee_channels[ch.channel]
        assert (payee.spent, payee.reserved) == (0, 0)  # charged neither time
        [claim] = await ledger.claims_of(BOB.account)
        # the claim is answered with the answer the stream got: the signed late refusal
        assert claim.state is ClaimState.REFUSED and claim.slashed == 0
        response = decode_frame(claim.response_frame)
        assert isinstance(response, Response) and response.verify(BOB.account)
        assert response.status == ErrorCode.DEADLINE_EXCEEDED.value and response.price == 0
        await bob.persister.flush()
        stored = await bob.store.response(response.request_hash)
        assert stored is not None and stored.frame == claim.response_frame
        # and the channel goes on: the next receipt's spent is the payer's spent plus its
        # price (it was refused as "receipt spent 2000, expected 1000")
        with trio.fail_after(10):
            result = await alice.call(bob.peer_id, "echo", b"y", max_price=PRICE)
        assert result.spent == PRICE == alice.payer_channels[ch.channel].spent
        assert bob.counters.protocol_violations == alice.counters.protocol_violations == 0
