"""A raw payer against the real CLI provider (`p2pay node run`, its own OS process, libp2p
on 127.0.0.1, the world's SQLite dev ledger): the setting of the round-17 CLI attack tests.

MALLORY speaks the protocol by hand on one libp2p stream (it signs what it likes, sends
it when it likes) and drives the ledger directly (opens, claims, closes). The provider
serves ``echo`` and ``held``: an honest slow service, a handler module written into the
world directory, that touches ``started-BODY`` when it starts and answers once the file
``release-BODY`` (or ``release-all``) exists. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from test_cli import InProcess, Node, restart_port

from p2pay.core.identity import Keypair, public_from_peer_id
from p2pay.core.messages import Frame, Hello, Request, decode_frame
from p2pay.core.settlement import Claim, ClaimState
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.base import Stream
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import NodeConfig

PRICE = 1000
MALLORY = Keypair.from_seed(bytes([77]) * 32)
#: MALLORY as an honest library payer (`open_node`): it claims nothing and redeems nothing
#: by itself, its watcher reads the ledger every 0.2 s
PAYER_CONFIG = NodeConfig(watch_interval=0.2, auto_claim=False, redeem_threshold=10**30)

HELD = '''
from pathlib import Path

import trio


async def held(call):
    """Honest and slow: answers the body once the test releases it."""
    tag = bytes(call.body).decode()
    Path("started-" + tag).touch()
    with trio.fail_after(60):
        while not Path("release-" + tag).exists() and not Path("release-all").exists():
            await trio.sleep(0.05)
    return bytes(call.body)
'''


def fund_payer(d: Path, c: InProcess, *, node: str) -> None:
    """MALLORY funded (1 token), and the provider home ``p`` given the ``[node]`` settings
    `node` (TOML lines)."""
    c.ok("--home", "p", "ledger", "mint", MALLORY.account.hex(), "1 token")
    config = d / "p" / "config.toml"
    config.write_text(config.read_text() + f"\n[node]\n{node}")


def provider(d: Path, c: InProcess, *, window: str, node: str = "") -> None:
    """The provider home ``p`` staked with claim window `window`, ``[node]`` settings
    (`node` added to a 0.2 s watch interval and a 1 s minimum challenge period), the
    ``held`` module written, and MALLORY funded."""
    fund_payer(d, c, node=f"watch_interval = 0.2\nmin_challenge_ms = 1000\n{node}")
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", window)
    (d / "heldsvc.py").write_text(HELD)


def start(d: Path) -> Node:
    """`p2pay node run` for home ``p``, serving ``echo`` and ``held`` at `PRICE`."""
    return Node(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}",
                "--service", f"held={PRICE}:heldsvc:held")  # fmt: skip


def restartable(d: Path, nodes: list[Node], service: str) -> Callable[[], Node]:
    """A function that starts `p2pay node run` for home ``p`` serving `service` (a
    ``--service`` value), each time on the same address (`restart_port`), and adds it to
    `nodes` (stopped at the test's end)."""
    listen = f"/ip4/127.0.0.1/tcp/{restart_port()}"

    def start() -> Node:
        node = Node(d, "p", "--listen", listen, "--service", service)
        nodes.append(node)
        return node

    return start


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.05)


@dataclass
class RawPayer:
    """MALLORY's side: the ledger, its channel and its stream to the provider at `addr`."""

    ledger: SqliteLedger
    channel: bytes
    transport: Any
    addr: str
    stream: Stream | None = None

    async def connect(self, addr: str | None = None) -> None:
        """A stream to the provider (at `addr`, after a restart), hellos exchanged."""
        self.addr = addr or self.addr
        with trio.fail_after(20):
            self.stream = await self.transport.connect(self.addr)
            await self.stream.send(Hello.create(MALLORY, ledger=self.ledger.ledger_id).to_frame())
            assert isinstance(decode_frame(await self.stream.receive()), Hello)

    def signed(
        self, n: int, paid: int, deadline: int, *, service: str = "echo", body: bytes = b""
    ) -> Request:
        return Request.create(
            MALLORY, ledger=self.ledger.ledger_id, channel=self.channel, n=n, paid=paid,
            price=PRICE, service=service, body=body or b"req %d" % n, deadline=deadline,
        )  # fmt: skip

    async def send(self, request: Request) -> None:
        assert self.stream is not None
        with trio.fail_after(10):
            await self.stream.send(request.to_frame())

    async def receive(self) -> Frame:
        assert self.stream is not None
        with trio.fail_after(20):
            return decode_frame(await self.stream.receive())

    async def call(self, n: int, paid: int, **fields: Any) -> Frame:
        """Send request `n` (slice ending at `paid`, deadline 30 s ahead), read its answer."""
        await self.send(self.signed(n, paid, await self.ledger.now() + 30_000, **fields))
        return await self.receive()

    async def wait_past(self, deadline: int) -> None:
        """Until the ledger's clock is past `deadline` (a claim may be filed)."""

        async def past() -> bool:
            return await self.ledger.now() > deadline

        await until(past)

    async def decided(self, claim_id: bytes) -> Claim:
        """Wait until the claim has ended; return it."""

        async def ended() -> bool:
            claim = await self.ledger.claim(claim_id)
            return claim is not None and claim.state is not ClaimState.OPEN

        await until(ended, 30)
        claim = await self.ledger.claim(claim_id)
        assert claim is not None
        return claim


@asynccontextmanager
async def raw_payer(
    d: Path, addr: str, *, challenge_ms: int = 60_000, deposit: int = 10**6
) -> AsyncIterator[RawPayer]:
    """MALLORY's channel to the provider at `addr` (opened on the world's ledger) and a
    stream to it."""
    ledger = await SqliteLedger.open(str(d / "ledger.sqlite"))

    async def ignore(stream: Stream) -> None:
        await stream.aclose()

    try:
        payee = public_from_peer_id(addr.rsplit("/p2p/", 1)[1])
        channel = await ledger.open_channel(MALLORY, payee, deposit, challenge_ms)
        async with open_libp2p_transport(MALLORY, ignore) as transport:
            payer = RawPayer(ledger, channel, transport, addr)
            await payer.connect()
            try:
                yield payer
            finally:
                if payer.stream is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await payer.stream.reset()
    finally:
        await ledger.aclose()
