"""Attack round 20 on 746a80e: a claim's answer with a body of the ledger's
``max_claim_body`` is unreadable to the claimant (the same limit as
test_attack_r20_max_claim_body_cli.py, on the payer's side; C-5).

The provider answers a claim through the ledger with a body up to ``max_claim_body`` (1
MiB on the SQLite and memory dev ledgers: `invoke.claim_answer_limit`), and the ledger
takes it: DELIVERED, the price charged. The claimant's node checks the answer
(`check_claim_answer`) after `decode_frame` with its default limit, ``MAX_FRAME_SIZE`` =
1 MiB for the whole frame: a 1 MiB body makes a 1,048,856-byte frame, so the check
returns None, the node records the answer as INVALID and never takes it: the payer paid
for an answer its node drops.
"""

from __future__ import annotations

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.node.watcher import check_claim_answer

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)


async def test_a_delivered_answer_of_max_claim_body_is_readable_by_the_claimant() -> None:
    params = Params(
        ledger_id=b"p2pay:test:r20", dev=True, min_claim_window_ms=50, min_challenge_ms=50
    )
    ledger = MemoryLedger(params)
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    await ledger.stake(BOB, 10**20, penalty=10**19, claim_window_ms=30_000)
    channel = await ledger.open_channel(ALICE, BOB.public, 10**6, 60_000)
    request = Request.create(
        ALICE, ledger=ledger.ledger_id, channel=channel, n=1, paid=1000, price=1000,
        service="echo", body=b"q", deadline=await ledger.now() - 1,
    )  # fmt: skip
    claim_id = await ledger.file_claim(ALICE, request)
    body = b"y" * params.max_claim_body  # what claim_answer_limit lets a handler answer
    answer = Response.create(BOB, request=request, status="OK", price=1000, spent=1000, body=body)
    await ledger.answer_claim(BOB, claim_id, answer)
    claim = await ledger.claim(claim_id)
    assert claim is not None and claim.state is ClaimState.DELIVERED  # charged
    checked = check_claim_answer(claim, request)
    assert checked is not None and checked.body == body
