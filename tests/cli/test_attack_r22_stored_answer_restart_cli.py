"""Attack round 22 on be21dd5, through the real CLI provider: a claim answered with a body
of the ledger's ``max_claim_body`` is never posted after a restart, and the provider is
slashed.

The provider (`p2pay node run`) offers ``blob``, an honest service whose answer is 1 MiB
(what `claim_answer_limit`, the SQLite dev ledger's ``max_claim_body``, lets a handler
answer through a claim). MALLORY files a claim on a ``blob`` request she never sent. The
provider serves it through the claim and makes the signed answer durable in its store
before posting it (as it must). Its submission meets a busy ledger file (MALLORY holds
the dev ledger's write lock for a few seconds, the "database is locked" any concurrent
writer can cause; on EVM a slow transaction) and the node crashes then (SIGKILL: a crash,
an OOM kill, a restart by its operator). Restarted, the watcher reads the answer back
from its store with the wire's limit (`_stored_answer`: `decode_frame`, 1 MiB for the
whole frame): FRAME_TOO_LARGE at every try until the window ends. UPHELD: the whole
penalty (100 milli-token) slashed, 50 milli-token to MALLORY. An honest provider must post
the answer it stored: DELIVERED.

Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import trio
from cli_raw_payer import MALLORY, PRICE, provider, raw_payer, until
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    nodes,
    world,
)

from p2pay.core.messages import Request, Response
from p2pay.core.settlement import ClaimState

BLOB = '''
from pathlib import Path

import trio


async def blob(call):
    """Honest: answers 1 MiB (the ledger's max_claim_body) once the test releases it."""
    Path("blob-started").touch()
    with trio.fail_after(60):
        while not Path("blob-release").exists():
            await trio.sleep(0.05)
    return b"z" * (1 << 20)
'''


def start(d: Path) -> Node:
    return Node(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}",
                "--service", f"blob={PRICE}:blobsvc:blob")  # fmt: skip


def test_a_stored_claim_answer_of_max_claim_body_is_posted_after_a_crash(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="20s")
    (d / "blobsvc.py").write_text(BLOB)
    node = start(d)
    nodes.append(node)
    lock = sqlite3.connect(d / "ledger.sqlite", timeout=30, isolation_level=None)

    async def attack() -> tuple[ClaimState, int, int]:
        nonlocal node
        async with raw_payer(d, node.addr) as payer:
            ledger = payer.ledger
            first = await payer.call(1, PRICE)  # the channel is the provider's
            assert isinstance(first, Response) and first.status == "OK"
            deadline = await ledger.now() + 100
            await payer.wait_past(deadline)
            request = Request.create(
                MALLORY, ledger=ledger.ledger_id, channel=payer.channel, n=2,
                paid=2 * PRICE, price=PRICE, service="blob", body=b"q", deadline=deadline,
            )  # fmt: skip
            wallet = await ledger.balance(MALLORY.account)
            claim_id = await ledger.file_claim(MALLORY, request)
            claim = await ledger.claim(claim_id)
            assert claim is not None
            window_ends = claim.window_ends

            async def started() -> bool:
                return (d / "blob-started").exists()

            await until(started, 30)  # served through the claim
            lock.execute("BEGIN IMMEDIATE")  # the ledger file busy for a while
            try:
                (d / "blob-release").touch()

                def log() -> str:
                    return node.log.read_text(encoding="utf-8", errors="replace")

                async def submitting() -> bool:  # staged, durable, its post refused
                    return "failed, retrying" in log() or "answered claim" in log()

                await until(submitting, 60)
                node.stop(signal.SIGKILL)  # a crash with the answer stored, not posted
            finally:
                lock.execute("ROLLBACK")
            node = start(d)
            nodes.append(node)

            async def decided_or_past() -> bool:
                found = await ledger.claim(claim_id)
                assert found is not None
                return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

            with trio.fail_after(90):
                while not await decided_or_past():
                    await trio.sleep(0.1)
            claim = await ledger.claim(claim_id)
            assert claim is not None
            if claim.state is ClaimState.OPEN:  # unanswered in its window: anyone resolves it
                await ledger.resolve_claim(MALLORY, claim_id)
                claim = await ledger.claim(claim_id)
                assert claim is not None
            gained = await ledger.balance(MALLORY.account) - wallet
            return claim.state, claim.slashed, gained

    try:
        state, slashed, gained = trio.run(attack)
    finally:
        lock.close()
    print(f"a stored 1 MiB answer after a crash: {state}, slashed {slashed}, MALLORY {gained:+d}")
    assert node.stop() == 0
    assert state is not ClaimState.UPHELD and slashed == 0, (state, slashed, node.stderr[-2000:])
    assert state is ClaimState.DELIVERED
    assert "FRAME_TOO_LARGE" not in node.stderr
