"""A raw payer against an honest, staked provider node: the setting of the claim-race
attack tests (rounds 14 and 15, `test_attack_r14_*`, `test_attack_r15_*`).

MALLORY speaks the protocol by hand on one stream (it signs what it likes, sends it when
it likes, and claims on the ledger what it never sent); BOB is a p2pay node serving
``echo`` at `PRICE`, staked, answering claims. Every wait is bounded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import trio
from node_support import wait_until

from p2pay.core.identity import Keypair
from p2pay.core.messages import Frame, Hello, Request, decode_frame
from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import Stream
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, Node, NodeConfig, open_node

MALLORY = Keypair.from_seed(bytes([7]) * 32)  # the payer, attacker
BOB = Keypair.from_seed(bytes([2]) * 32)  # the honest provider
PRICE = 1_000
STAKE = 10**20
CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
    claim_answer_margin_ms=300,
)


async def echo(call: Call) -> bytes:
    return call.body


def ledger_params(name: bytes) -> Params:
    """A dev ledger's parameters for these tests: short windows, a real claim bond."""
    return Params(
        ledger_id=b"p2pay:test:" + name,
        dev=True,
        claim_bond=10**18,
        min_claim_window_ms=50,
        min_challenge_ms=50,
        max_deadline_horizon_ms=60_000,
    )


class OffsetClock:
    """A ledger clock: real time plus what the test moved it by (``offset``, ms)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset


async def watcher_steps(node: Node, count: int) -> None:
    """Wait until `node`'s watcher has made `count` more steps."""
    watcher = node.watcher
    assert watcher is not None
    start = watcher.steps
    await wait_until(lambda: watcher.steps >= start + count, timeout=20)


async def ignore_streams(stream: Any) -> None:
    """MALLORY's stream handler: she takes no streams."""
    await stream.aclose()


@dataclass
class RawPayer:
    """MALLORY's side: the ledger, its channel to BOB and its stream to BOB's node."""

    ledger: MemoryLedger
    channel: bytes
    stream: Stream

    def signed(
        self,
        n: int,
        paid: int,
        deadline: int,
        *,
        price: int = PRICE,
        service: str = "echo",
        body: bytes = b"",
    ) -> Request:
        return Request.create(
            MALLORY,
            ledger=self.ledger.ledger_id,
            channel=self.channel,
            n=n,
            paid=paid,
            price=price,
            service=service,
            body=body or b"req %d" % n,
            deadline=deadline,
        )

    async def exchange(self, request: Request) -> Frame:
        """Send `request`, return the frame that answers it."""
        with trio.fail_after(10):
            await self.stream.send(request.to_frame())
            return decode_frame(await self.stream.receive())

    async def call(self, n: int, paid: int, **fields: Any) -> Frame:
        """Send request `n` (slice ending at `paid`, deadline 30 s ahead) and read its answer."""
        return await self.exchange(self.signed(n, paid, await self.ledger.now() + 30_000, **fields))

    async def wait_past(self, deadline: int) -> None:
        """Wait until the ledger's clock is past `deadline` (a claim may be filed)."""
        with trio.fail_after(10):
            while await self.ledger.now() <= deadline:
                await trio.sleep(0.05)

    async def decided(self, claim_id: bytes) -> Claim:
        """Wait until the claim has ended; return it."""

        async def ended() -> bool:
            claim = await self.ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await wait_until(ended, timeout=20)
        claim = await self.ledger.claim(claim_id)
        assert claim is not None
        return claim

    async def stake_of_bob(self) -> int:
        stake = await self.ledger.stake_of(BOB.account)
        assert stake is not None
        return stake.amount


@asynccontextmanager
async def raw_payer_and_provider(
    name: bytes, *, deposit: int = 10**6, challenge_ms: int = 60_000, config: NodeConfig = CONFIG
) -> AsyncIterator[tuple[RawPayer, Node]]:
    """A dev ledger, BOB's node (staked, serving ``echo``; `config`) and MALLORY's channel
    to it (`deposit`, `challenge_ms`) with a stream on which the hellos are exchanged."""
    ledger = MemoryLedger(ledger_params(name))
    for key in (MALLORY, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=config) as bob,
        open_memory_transport(net, MALLORY, ignore_streams) as transport,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=10**19, claim_window_ms=8_000)
        channel = await ledger.open_channel(MALLORY, BOB.public, deposit, challenge_ms)
        async with connected(transport, bob, ledger, channel) as payer:
            yield payer, bob


@asynccontextmanager
async def connected(
    transport: Any, bob: Node, ledger: MemoryLedger, channel: bytes
) -> AsyncIterator[RawPayer]:
    """MALLORY's stream to `bob` on `transport`, hellos exchanged, reset at the end."""
    stream = await transport.connect(bob.addrs[0])
    try:
        with trio.fail_after(10):
            await stream.send(Hello.create(MALLORY, ledger=ledger.ledger_id).to_frame())
            assert isinstance(decode_frame(await stream.receive()), Hello)
        yield RawPayer(ledger, channel, stream)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.reset()


def _frames() -> Iterator[FrameType]:
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back


def in_claim_answer(*, within: str | None = None) -> bool:
    """Whether the running code is BOB's watcher answering a claim (its ``_defend`` task),
    and, with `within`, inside a call of that function name, or in a task that function
    started (`Watcher._claimed_requests` reads a channel's new claims in tasks of its
    own, ``..._claimed_requests.<locals>.read``)."""
    name = trio.lowlevel.current_task().name
    if within is not None and f".{within}.<locals>." in name:
        return True
    if not name.endswith("._defend"):
        return False
    return within is None or any(f.f_code.co_name == within for f in _frames())


def before_claim_lookup(node: Node, claimed: Request, act: Callable[[], Awaitable[None]]) -> None:
    """Run `act` once, the first time `node`'s watcher looks for `claimed`'s evidence among
    the other claims against it (`Watcher._claimed_requests`): after it read its store and
    its known requests, before it decides. The moment a stranger gets by timing (the
    lookup's store reads; on a chain, its RPCs); the earlier tests chose it by wrapping a
    ledger read of the claim that the lookup no longer makes (a claim filed since is held
    by its ClaimFiled event's slice)."""
    watcher = node.watcher
    assert watcher is not None
    lookup = watcher._claimed_requests
    done: list[bool] = []

    async def hooked(claim: Claim, request: Request) -> list[Request]:
        if request.hash == claimed.hash and not done:
            done.append(True)
            await act()
        return await lookup(claim, request)

    watcher._claimed_requests = hooked  # type: ignore[method-assign]
