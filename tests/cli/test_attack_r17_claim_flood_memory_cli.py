"""Attack round 17 on 6ffbbb3, fixed, through the real CLI provider: a flood of free claims
with large bodies no longer grows `p2pay node run` for good.

MALLORY (a raw payer, cli_raw_payer.py) files K claims on numbers it never sent, each
with a body of `BODY` bytes (the SQLite dev ledger's ``max_claim_body`` is 1 MiB) for a
service the provider does not offer: each is answered with a signed UNKNOWN_SERVICE
refusal, REFUSED, the bond back and MALLORY's own unearned 1-yocto slice refunded: free.
Before the fix the node's resident memory grew by about 4 MiB per claim and never
shrank (100 -> 660 MiB for 100 claims): the watcher kept each claimed request with its
body and its frame (`test_attack_r17_claim_bodies_held.py`), and glibc kept the MiB
blocks the ledger and store threads had freed (its mmap threshold rises to the largest
block freed; `node run` now fixes it, `release_large_blocks`). A few thousand such claims
exhaust a provider, which then answers no claim and is slashed. Now the node stays
within a few MiB of where it started.

Linux only (resident memory from /proc). Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
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

MIB = 1 << 20
K = 100
WARM = 20  # claims of a first flood, before the measure
SETTLED = 16 * MIB  # growth below which the node is taken to be settled
BODY = 1_000_000


def resident(node: Node) -> int:
    """The node process's resident memory, in bytes."""
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_flood_of_free_claims_with_large_bodies_does_not_grow_the_node(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="30s")
    node = start(d)
    nodes.append(node)

    async def settled(before: int) -> int:
        # The lowest resident size over a few seconds (bounded): a flood's claims are
        # decided on the ledger before the node is done with them (stored answers,
        # events, its threads' buffers), and what is still in use then is no leak.
        # Kept for good is what stays after: the defect.
        lowest = resident(node)
        for _ in range(60 if before else 8):  # the first: 2 s
            if before and lowest - before < SETTLED:
                break
            await trio.sleep(0.25)
            lowest = min(lowest, resident(node))
        return lowest

    async def flood() -> tuple[int, set[ClaimState]]:
        async with raw_payer(d, node.addr) as payer:
            ledger = payer.ledger
            first = await payer.call(1, PRICE)
            assert isinstance(first, Response) and first.status == "OK"
            deadline = await ledger.now() + 100
            await payer.wait_past(deadline)

            async def claims(first: int, k: int) -> set[ClaimState]:
                ids = []
                for i in range(first, first + k):
                    request = Request.create(
                        MALLORY, ledger=ledger.ledger_id, channel=payer.channel, n=2 + i,
                        paid=PRICE + 1 + i, price=1, service="nosuch",
                        body=bytes([i % 256]) * BODY, deadline=deadline,
                    )  # fmt: skip
                    ids.append(await ledger.file_claim(MALLORY, request))
                return {(await payer.decided(claim_id)).state for claim_id in ids}

            # a first flood: what the node takes once (the claim path's imports, caches,
            # its threads' arenas) is not what a flood keeps
            states = await claims(0, WARM)
            before = await settled(0)
            states |= await claims(WARM, K)
            return await settled(before) - before, states

    grown, states = trio.run(flood)
    print(f"{K} claims of {BODY} bytes: the node grew by {grown / MIB:.1f} MiB")
    assert states == {ClaimState.REFUSED}
    # before the fix the node kept about 4 MiB per claim for good (K claims: 400 MiB and
    # more); the bound is many times below that
    assert grown < K * BODY // 2, grown / MIB
    assert node.stop() == 0
    assert "Traceback" not in node.stderr
