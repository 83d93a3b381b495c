"""Attack round 22 on be21dd5, through the real CLI provider: one free claim with a body of
the ledger's ``max_claim_body`` keeps the provider from ever starting again.

A claimed request on a fresh number whose slice lies above every voucher seen is consumed
whatever the answer (`PayeeChannel.admit_claimed`, claims.md C-6): it becomes the
channel's best voucher, with its body, even when it is refused. The channel's record
stores that voucher's frame (`_payee_record`: ``best_voucher``), made durable with the
claim's answer. A body of ``max_claim_body`` (1 MiB on the SQLite dev ledger; what
be21dd5 now reads, `decode_held_frame`) makes a frame over the wire's 1 MiB, and the
node's start reads the stored vouchers with the wire's limit (`ChannelBook.load`:
`decode_frame`): FRAME_TOO_LARGE, `p2pay node run` exits at every start. From then on
nothing answers the claims against its stake (every one UPHELD: its whole stake slashed,
a penalty at a time) and nothing redeems its channels (a payer's close takes every
unredeemed charge).

MALLORY files one claim on a number she never sent, service ``echo``, with a body of
exactly 1 MiB: REFUSED (a body over the service's limit), her bond and slice back, free.
The provider is restarted (an upgrade, a reboot). It must start, and answer her next
claim. Every wait bounded; nothing asserts on timing.
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


def test_a_refused_claim_of_max_claim_body_does_not_keep_the_provider_from_starting(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="5s")
    node = start(d)
    nodes.append(node)

    async def first_claim() -> ClaimState:
        async with raw_payer(d, node.addr) as payer:
            ledger = payer.ledger
            body_limit = ledger.params.max_claim_body
            assert body_limit == 1 << 20  # the SQLite dev ledger's
            answered = await payer.call(1, PRICE)  # the channel is the provider's
            assert isinstance(answered, Response) and answered.status == "OK"
            deadline = await ledger.now() + 100
            await payer.wait_past(deadline)
            request = Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=payer.channel, n=2,
                paid=2 * PRICE, price=PRICE, service="echo", body=b"x" * body_limit,
                deadline=deadline,
            )  # fmt: skip
            claim = await payer.decided(await ledger.file_claim(MALLORY, request))
            return claim.state

    state = trio.run(first_claim)
    assert state is ClaimState.REFUSED  # free: bond and slice back
    assert node.stop() == 0
    try:
        again = start(d)
    except AssertionError as exc:  # `Node`: the node did not print its address
        raise AssertionError(f"the provider does not start again: {exc}") from None
    nodes.append(again)

    async def second_claim() -> ClaimState:
        ledger = await SqliteLedger.open(d / "ledger.sqlite")
        try:
            [channel] = [c.id for c in await ledger.channels_of(MALLORY.account)]
            deadline = await ledger.now() - 1
            request = Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=channel, n=3, paid=3 * PRICE,
                price=PRICE, service="echo", body=b"again", deadline=deadline,
            )  # fmt: skip
            claim_id = await ledger.file_claim(MALLORY, request)
            with trio.fail_after(60):
                while True:
                    claim = await ledger.claim(claim_id)
                    assert claim is not None
                    if claim.state is not ClaimState.OPEN:
                        return claim.state
                    await trio.sleep(0.1)
        finally:
            await ledger.aclose()

    assert trio.run(second_claim) is ClaimState.DELIVERED
    assert again.stop() == 0
