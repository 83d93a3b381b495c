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

The slow service is a handler module written into the world directory; it says when it
starts and waits for its release file. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    nodes,
    world,
)

from p2pay.core.identity import Keypair, public_from_peer_id
from p2pay.core.messages import STATUS_OK, Hello, Request, Response, decode_frame
from p2pay.core.settlement import ChannelState, ClaimState
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.p2p import open_libp2p_transport

PRICE = 1000
CHALLENGE_MS = 1500
MALLORY = Keypair.from_seed(bytes([77]) * 32)

HELD = '''
from pathlib import Path

import trio


async def held(call):
    """Honest and slow: answers the body once the test releases it."""
    tag = bytes(call.body).decode()
    Path("started-" + tag).touch()
    with trio.fail_after(60):
        while not Path("release-" + tag).exists():
            await trio.sleep(0.05)
    return bytes(call.body)
'''


async def _until(predicate: Any, seconds: float = 20) -> None:
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.05)


async def _attack(d: Path, addr: str, path: str) -> tuple[int, int, Any, Any]:
    """MALLORY's run; returns (OK answers it got, what BOB holds from the channel, the
    channel, the answer to request 2 (a Response, or the claim))."""
    bob = public_from_peer_id(addr.rsplit("/p2p/", 1)[1])
    ledger = await SqliteLedger.open(str(d / "ledger.sqlite"))

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    try:
        channel = await ledger.open_channel(MALLORY, bob, 10**6, CHALLENGE_MS)

        def signed(n: int, paid: int, deadline: int, service: str, body: bytes) -> Request:
            return Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=channel, n=n, paid=paid,
                price=PRICE, service=service, body=body, deadline=deadline,
            )  # fmt: skip

        async with open_libp2p_transport(MALLORY, ignore) as transport:
            with trio.fail_after(20):
                stream = await transport.connect(addr)
                await stream.send(Hello.create(MALLORY, ledger=ledger.ledger_id).to_frame())
                assert isinstance(decode_frame(await stream.receive()), Hello)
                await stream.send(
                    signed(1, PRICE, await ledger.now() + 30_000, "echo", b"one").to_frame()
                )
                first = decode_frame(await stream.receive())
            assert isinstance(first, Response) and first.status == STATUS_OK
            answers = 1
            claim_id = b""
            if path == "stream":
                slow = signed(2, 2 * PRICE, await ledger.now() + 60_000, "held", b"slow")
                with trio.fail_after(10):
                    await stream.send(slow.to_frame())
            else:  # a number never sent, claimed: BOB serves it through the claim (C-6)
                slow = signed(2, 2 * PRICE, await ledger.now() + 100, "held", b"slow")

                async def past() -> bool:
                    return await ledger.now() > slow.deadline

                await _until(past)
                claim_id = await ledger.file_claim(MALLORY, slow)

            async def started() -> bool:
                return (d / "started-slow").exists()

            await _until(started)  # request 2 is being served
            await ledger.start_close(MALLORY, channel)

            async def redeemed() -> bool:  # BOB's watcher defends the close (17.1 rule 1)
                info = await ledger.channel(channel)
                return info is not None and info.redeemed >= PRICE

            await _until(redeemed)
            info = await ledger.channel(channel)
            assert info is not None

            async def challenge_over() -> bool:
                return await ledger.now() >= info.closes_at

            await _until(challenge_over)
            await ledger.finalize_close(MALLORY, channel)
            (d / "release-slow").touch()
            answer: Any
            if path == "stream":
                with trio.fail_after(20):
                    answer = decode_frame(await stream.receive())
                assert isinstance(answer, Response) and answer.request_hash == slow.hash
                answers += answer.status == STATUS_OK
            else:

                async def decided() -> bool:
                    claim = await ledger.claim(claim_id)
                    return claim is not None and claim.state is not ClaimState.OPEN

                await _until(decided)
                answer = await ledger.claim(claim_id)
                answers += answer.state is ClaimState.DELIVERED
            await stream.reset()
        info = await ledger.channel(channel)
        assert info is not None and info.state is ChannelState.CLOSED
        return answers, info.redeemed - info.clawed, info, answer
    finally:
        await ledger.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["stream", "claim"])
def test_a_slow_request_finished_after_the_close_is_not_served_free(
    path: str,
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    c.ok("--home", "p", "ledger", "mint", MALLORY.account.hex(), "1 token")
    config = d / "p" / "config.toml"
    settings = "\n[node]\nwatch_interval = 0.2\nmin_challenge_ms = 1000\n"
    config.write_text(config.read_text() + settings)
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "20s")
    stake = c.js("--home", "p", "balance")["staked"]
    (d / "heldsvc.py").write_text(HELD)
    node = Node(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}",
                "--service", f"held={PRICE}:heldsvc:held")  # fmt: skip
    nodes.append(node)
    answers, paid, info, answer = trio.run(_attack, d, node.addr, path)
    print(path, "answers", answers, "BOB holds", paid, info, answer)
    # every answer MALLORY got was paid for, and BOB lost nothing (no claw, no slash)
    assert answers * PRICE == paid == PRICE, (answers, paid)
    assert info.clawed == 0 and c.js("--home", "p", "balance")["staked"] == stake
    if path == "stream":
        assert (answer.status, answer.price) == ("CHANNEL_CLOSED", 0)
    else:
        assert answer.state is ClaimState.REFUSED and answer.refund == PRICE
    assert node.stop() == 0
    assert "Traceback" not in node.stderr
