"""Attack round 22 on be21dd5: a claim answer of ``max_claim_body`` the provider stored
itself is unreadable to it after a restart, and the provider is slashed.

A request that reaches the provider only through a claim is served with the ledger's
limit, not the wire's: `claim_answer_limit` is the ledger's ``max_claim_body`` (1 MiB on
the SQLite and memory dev ledgers), so an honest handler's answer of 1 MiB is DELIVERED
through the claim, and its frame (1 MiB and the signed fields) is over the wire's
``codec.MAX_FRAME_SIZE``. `_stage_answer` makes that frame durable before the answer is
posted, as it must (a crash must not lose a signed, charged answer). be21dd5 reads the
claim's own frames with their own length as the limit (`decode_held_frame`), but the
stored answer is read back with `decode_frame`'s wire limit (`_stored_answer`):
FRAME_TOO_LARGE. After a restart between the answer's staging and its landing on the
ledger, every try of the claim's answer task fails there ("answer to claim ... failed,
retrying"), the channel has consumed the number (it cannot be served again), and the
window runs out: UPHELD, the honest provider slashed its penalty.

Here the endpoint hangs BOB's first answer (a slow or lost submission); BOB's node stops
(a crash or an upgrade) and starts again on the same store, the endpoint now well. BOB
must answer the claim with the answer it stored: DELIVERED. Every wait bounded; nothing
asserts on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from node_support import ended_claim, wait_until
from test_watcher_claims import (
    ALICE,
    BOB,
    BOND,
    FAST,
    LEDGER_ID,
    PENALTY,
    PRICE,
    STAKE,
    claimed_request,
)

from p2pay.core import codec
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node
from p2pay.store.sqlite import SqliteStore

WINDOW_MS = 6_000


class Hangs(MemoryLedger):
    """An endpoint that never returns from answers while `hang` is set (a submission
    lost or stuck), and says when one reached it."""

    hang = True
    reached: trio.Event | None = None

    async def answer_claim(self, *args: Any, **kwargs: Any) -> None:
        if Hangs.hang:
            assert Hangs.reached is not None
            Hangs.reached.set()
            await trio.sleep_forever()
        await super().answer_claim(*args, **kwargs)


async def test_a_stored_claim_answer_of_max_claim_body_is_posted_after_a_restart(
    tmp_path: Path,
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Hangs(params)
    Hangs.hang, Hangs.reached = True, trio.Event()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    size = params.max_claim_body  # what `claim_answer_limit` lets a handler answer

    async def blob(call: Call) -> bytes:
        return b"z" * size  # an honest service with a large answer

    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    try:
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=FAST
        ) as bob:
            bob.serve("blob", blob, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
            channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
            request = claimed_request(
                channel, 1, deadline=await ledger.now() - 1, service="blob", body=b"q"
            )
            claim_id = await ledger.file_claim(ALICE, request)
            with trio.fail_after(30):
                await Hangs.reached.wait()  # served, charged, stored: being posted
        stored = await store.response(request.hash)
        assert stored is not None and len(stored.frame) > codec.MAX_FRAME_SIZE
        Hangs.hang = False
        claim = await ledger.claim(claim_id)
        assert claim is not None and claim.state is ClaimState.OPEN
        window_ends = claim.window_ends
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=FAST
        ) as again:
            again.serve("blob", blob, price=PRICE)

            async def decided_or_past() -> bool:
                found = await ledger.claim(claim_id)
                assert found is not None
                return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

            await wait_until(decided_or_past, timeout=60)
        claim = await ended_claim(ledger, ALICE, claim_id)
        assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
        assert claim.state is ClaimState.DELIVERED, claim.state
    finally:
        await store.aclose()


async def test_the_claimant_node_lists_a_claim_answered_with_max_claim_body() -> None:
    """The claimant's side of the same limit: the payer's watcher keeps the answer of its
    claim (`_record_outcome`, the frame read from the ledger) and `Node.claims` reads it
    back (`claim_infos`) with the wire's limit. BOB answers ALICE's claim DELIVERED with a
    body of ``max_claim_body`` (what the ledger takes and `check_claim_answer` accepts):
    on be21dd5 every `alice.claims()` raises FRAME_TOO_LARGE from then on."""
    from test_watcher_claims import Silent, make_ledger, pair

    from p2pay.core.messages import Request, Response, decode_held_frame
    from p2pay.node import CallTimeout

    ledger = make_ledger()
    async with pair(ledger, behaviour=Silent()) as (alice, bob):
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=30_000)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        with trio.fail_after(30):
            try:
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.3)
            except CallTimeout:
                pass

        async def filed() -> bool:
            return bool(await ledger.claim_ids_of(ALICE.account, "claimant"))

        await wait_until(filed, timeout=30)
        [claim_id] = await ledger.claim_ids_of(ALICE.account, "claimant")
        claim = await ledger.claim(claim_id)
        assert claim is not None
        request = decode_held_frame(claim.request_frame)
        assert isinstance(request, Request)
        body = b"y" * ledger.params.max_claim_body
        answer = Response.create(
            BOB, request=request, status="OK", price=PRICE, spent=PRICE, body=body
        )
        assert len(answer.to_frame()) > codec.MAX_FRAME_SIZE
        await ledger.answer_claim(BOB, claim_id, answer)

        async def delivered() -> bool:
            return any(c.outcome == "delivered" for c in await alice.claims())

        await wait_until(delivered, timeout=30)
        [info] = await alice.claims()
        assert info.status == "OK" and info.body == body
