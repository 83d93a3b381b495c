"""A claim's answer waits for its turn at the ledger without its body and reads it back
from the store then (threat-model 'Memory bound', attack round 22's queued bodies): the
store's answer is posted only if it is the very one held.

BOB serves ALICE's claimed request through the claim (DELIVERED, an echo of 4 KiB). His
store hands back, for the first `TAMPERED` reads of that answer, a frame with the same
signed fields and signature but another body: BOB must never post it (the ledger would
refuse it, MALFORMED, and the claim would wait), but drop his answer, make it again
and post the stored answer once it reads true. Every response BOB posts carries the
body he served. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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

from p2pay.core.messages import Response, decode_held_frame
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, open_node
from p2pay.store.base import StoredResponse
from p2pay.store.memory import MemoryStore

WINDOW_MS = 8_000
TAMPERED = 2
BODY = bytes(range(256)) * 16


class Tampering(MemoryStore):
    """A store whose first `TAMPERED` reads of a stored answer to `target` return it
    with another body (its signed fields and signature unchanged)."""

    target = b""
    tampered = 0

    async def response(self, request_hash: bytes) -> StoredResponse | None:
        stored = await super().response(request_hash)
        if stored is None or request_hash != self.target or self.tampered >= TAMPERED:
            return stored
        self.tampered += 1
        real = decode_held_frame(stored.frame)
        assert isinstance(real, Response)
        other = Response.from_signed(real.signing_bytes, real.signature, b"another body")
        return dataclasses.replace(stored, frame=other.to_frame())


class Recording(MemoryLedger):
    """An endpoint that records the responses it is sent."""

    posted: list[Response]

    async def answer_claim(
        self, key: Any, claim_id: bytes, response: Response | None = None, **kwargs: Any
    ) -> None:
        if response is not None:
            self.posted.append(response)
        await super().answer_claim(key, claim_id, response, **kwargs)


async def echo(call: Call) -> bytes:
    return call.body


async def test_an_answer_read_back_other_than_held_is_made_again_never_posted() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Recording(params)
    ledger.posted = []
    store = Tampering()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    async with open_node(
        key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=FAST
    ) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
        request = claimed_request(channel, 1, deadline=await ledger.now() - 1, body=BODY)
        store.target = request.hash
        claim_id = await ledger.file_claim(ALICE, request)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        window_ends = claim.window_ends

        async def decided_or_past() -> bool:
            found = await ledger.claim(claim_id)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

        await wait_until(decided_or_past, timeout=60)
        watcher = bob.watcher
        assert watcher is not None
        assert watcher.answers == {"delivered": 1}  # counted once
    claim = await ended_claim(ledger, ALICE, claim_id)
    assert claim.state is ClaimState.DELIVERED, claim.state
    assert store.tampered == TAMPERED  # the tampered reads came, and were not posted
    assert ledger.posted, "BOB posted no response"
    assert all(r.body == BODY and r.body_matches() for r in ledger.posted), ledger.posted
