"""Attack round 17 on 6ffbbb3, fixed, through the real CLI provider (`p2pay node run`, its
own OS process, libp2p on 127.0.0.1, a SQLite dev ledger): a request that finishes after
the payer started a close is not charged (protocol.md 13.3 "closing"); it was answered
and charged after the payee's closing redeems, and the close's end gave its price back
to the payer with the answer.

MALLORY (a raw payer: its own libp2p host, requests signed by hand, the ledger driven
directly) pays call 1 (``echo``, slice (0, 1000]), then gets request 2 (slice (1000,
2000]) admitted by a service that takes a while (``held``, which waits for the test's
file): on its stream (``stream``), or through a claim on a number it never sent
(``claim``, served by BOB's watcher, C-6). While it is served MALLORY starts a close;
BOB's watcher redeems what it charged (1000) at once, as it must (protocol.md 17.1 rule
1); MALLORY finalizes the close when the challenge period (1.5 s) ends: the escrow goes
back to it. Then request 2 finishes. Before the fix BOB charged it and answered OK
(the body on the stream, or on the ledger as the DELIVERED claim's answer): two answers,
2000 charged in BOB's receipts, 1000 paid. k slow requests in flight at the close: k
prices of service for nothing (a service slower than the challenge period, 60 s by
default, is free to any payer that closes). Now the answer is a signed CHANNEL_CLOSED,
nothing charged (through the claim: REFUSED, its unearned slice refunded, nothing
clawed): MALLORY got one answer and paid one price.

The slow service and the raw payer: cli_raw_payer.py. Every wait bounded; nothing asserts
on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from cli_raw_payer import MALLORY, PRICE, provider, raw_payer, start, until
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    nodes,
    world,
)

from p2pay.core.messages import STATUS_OK, Response
from p2pay.core.settlement import Channel, ChannelState, Claim, ClaimState

CHALLENGE_MS = 1500


async def _attack(d: Path, addr: str, path: str) -> tuple[int, Channel, Response | Claim]:
    """MALLORY's run; returns the OK answers it got, the channel at the end and the
    answer to request 2 (its Response, or its claim)."""
    async with raw_payer(d, addr, challenge_ms=CHALLENGE_MS) as payer:
        ledger, channel = payer.ledger, payer.channel
        first = await payer.call(1, PRICE, body=b"one")
        assert isinstance(first, Response) and first.status == STATUS_OK
        answers = 1
        claim_id = b""
        if path == "stream":
            slow = payer.signed(2, 2 * PRICE, await ledger.now() + 60_000, service="held",
                                body=b"slow")  # fmt: skip
            await payer.send(slow)
        else:  # a number never sent, claimed: the provider serves it through the claim (C-6)
            slow = payer.signed(2, 2 * PRICE, await ledger.now() + 100, service="held",
                                body=b"slow")  # fmt: skip
            await payer.wait_past(slow.deadline)
            claim_id = await ledger.file_claim(MALLORY, slow)

        async def started() -> bool:
            return (d / "started-slow").exists()

        await until(started)  # request 2 is being served
        await ledger.start_close(MALLORY, channel)

        async def redeemed() -> bool:  # the provider's watcher defends the close (17.1)
            info = await ledger.channel(channel)
            return info is not None and info.redeemed >= PRICE

        await until(redeemed)
        info = await ledger.channel(channel)
        assert info is not None
        await payer.wait_past(info.closes_at)
        await ledger.finalize_close(MALLORY, channel)
        (d / "release-slow").touch()
        answer: Response | Claim
        if path == "stream":
            frame = await payer.receive()
            assert isinstance(frame, Response) and frame.request_hash == slow.hash
            answer = frame
            answers += answer.status == STATUS_OK
        else:
            answer = await payer.decided(claim_id)
            answers += answer.state is ClaimState.DELIVERED
        info = await ledger.channel(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        return answers, info, answer


@pytest.mark.slow
@pytest.mark.parametrize("path", ["stream", "claim"])
def test_a_slow_request_finished_after_the_close_is_not_served_free(
    path: str,
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="20s")
    stake = c.js("--home", "p", "balance")["staked"]
    node = start(d)
    nodes.append(node)
    answers, info, answer = trio.run(_attack, d, node.addr, path)
    print(path, "answers", answers, info, answer)
    # every answer MALLORY got was paid for, and the provider lost nothing (no claw, no
    # slash)
    assert answers * PRICE == info.redeemed - info.clawed == PRICE, (answers, info)
    assert info.clawed == 0 and c.js("--home", "p", "balance")["staked"] == stake
    if isinstance(answer, Response):
        assert (answer.status, answer.price) == ("CHANNEL_CLOSED", 0)
    else:
        assert answer.state is ClaimState.REFUSED and answer.refund == PRICE
    assert node.stop() == 0
    assert "Traceback" not in node.stderr
