"""Attack round 20 on 746a80e, through the real CLI provider: a claim whose request body is
the ledger's ``max_claim_body`` cannot be read by the provider, which never answers it and
is slashed.

The SQLite dev ledger takes claimed requests with bodies up to ``max_claim_body`` = 1 MiB
(settlement.md 1.2, FileClaim checks ``len(body) <= max_claim_body``). The provider's
watcher decodes the claim's request frame with `decode_frame`'s default limit,
``codec.MAX_FRAME_SIZE`` = 1 MiB, frame and all: a body of 1 MiB makes a frame of
1,048,851 bytes, FRAME_TOO_LARGE. `_prepare_answer` logs "carries no usable request" and
tries again until the window ends: no answer, no evidence, no refusal. Anyone can then
resolve the claim UPHELD.

MALLORY (a raw payer, cli_raw_payer.py) files one claim on a number she never sent, with a
body of exactly 1 MiB. On 746a80e the provider never answers: UPHELD, the provider slashed
its whole penalty (100 milli-token here), half of it to MALLORY with her bond and her
own slice back. She can do it again for every penalty left in the stake. An honest
provider must answer it (a signed refusal: the body is over what its service takes).

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from cli_raw_payer import MALLORY, PRICE, provider, raw_payer, start
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    nodes,
    world,
)

from p2pay.core.messages import Request, Response
from p2pay.core.settlement import ClaimState
from p2pay.ledger.sqlite import SqliteLedger


def test_a_claim_with_a_body_of_max_claim_body_is_answered(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="5s")
    node = start(d)
    nodes.append(node)

    async def attack() -> tuple[ClaimState, int, int, int, int]:
        async with raw_payer(d, node.addr) as payer:
            ledger = payer.ledger
            body_limit = ledger.params.max_claim_body
            assert body_limit == 1 << 20  # the SQLite dev ledger's
            first = await payer.call(1, PRICE)  # the channel is the provider's
            assert isinstance(first, Response) and first.status == "OK"
            deadline = await ledger.now() + 100
            await payer.wait_past(deadline)
            request = Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=payer.channel, n=2,
                paid=2 * PRICE, price=PRICE, service="echo", body=b"x" * body_limit,
                deadline=deadline,
            )  # fmt: skip
            wallet = await ledger.balance(MALLORY.account)
            claim_id = await ledger.file_claim(MALLORY, request)
            claim = await ledger.claim(claim_id)
            assert claim is not None
            window_ends = claim.window_ends
            respondent = claim.respondent

            async def decided_or_past() -> bool:
                found = await ledger.claim(claim_id)
                assert found is not None
                return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

            with trio.fail_after(60):
                while not await decided_or_past():
                    await trio.sleep(0.1)
            stake = await ledger.stake_of(respondent)
            assert stake is not None
            before = stake.amount
            claim = await ledger.claim(claim_id)
            assert claim is not None
            if claim.state is ClaimState.OPEN:  # unanswered in its window: anyone resolves it
                later = await SqliteLedger.open(d / "ledger.sqlite")
                try:
                    await later.resolve_claim(MALLORY, claim_id)
                finally:
                    await later.aclose()
                claim = await ledger.claim(claim_id)
                assert claim is not None
            stake = await ledger.stake_of(respondent)
            assert stake is not None
            gained = await ledger.balance(MALLORY.account) - wallet
            return claim.state, claim.slashed, before, stake.amount, gained

    state, slashed, before, after, gained = trio.run(attack)
    print(
        f"a claim with a body of 1 MiB: {state}, slashed {slashed}, stake {before} -> {after}, "
        f"MALLORY's balance {gained:+d} yocto"
    )
    assert node.stop() == 0
    assert state is not ClaimState.UPHELD and slashed == 0, (state, slashed)
    assert state is ClaimState.REFUSED  # a signed refusal: a body over the service's limit
    assert "carries no usable request" not in node.stderr
