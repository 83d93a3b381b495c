"""Attack round 20 on 746a80e, through the real CLI provider: a burst of free claims refused
at once makes `p2pay node run` hold every claim's body at the same time.

MALLORY (a raw payer, cli_raw_payer.py) files K claims of 1 MB for a service the provider
does not offer, on numbers she never sent, while the provider's node is down (or all
between two watcher steps). Each is REFUSED at once: bond back, her own 1-yocto slice
refunded, free. When the node comes back its watcher sees the K ClaimFiled events at
once; a claim its admission refuses at once takes no handler slot (attack round 18, by
design: it must not wait behind slow handlers), so every one of them reads its claim
whole and decodes its request, and holds both while its refusal is looked up, signed and
stored: about 2 MB per claim at once. The node's peak resident size (VmHWM) grew by 2 MB
per claim over the first run's: 150 claims, 300 MB; a few thousand exhaust a provider,
which then answers no claim and is slashed. The threat model's memory bound says at most
``max_claim_answers`` claim bodies at once (4 here).

Linux only (peak resident memory from /proc). Every wait bounded; nothing asserts on
timing.
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
K = 150
BODY = 1_000_000
SLOTS = 4


def peak_resident(node: Node) -> int:
    """The node process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_burst_of_free_claims_does_not_hold_every_body_at_once(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="60s", node=f"max_claim_answers = {SLOTS}\n")
    node = start(d)
    nodes.append(node)

    async def burst() -> tuple[int, int, set[ClaimState]]:
        async with raw_payer(d, node.addr) as payer:
            ledger = payer.ledger
            first = await payer.call(1, PRICE)
            assert isinstance(first, Response) and first.status == "OK"
            deadline = await ledger.now() + 100
            await payer.wait_past(deadline)

            def claim(i: int) -> Request:
                return Request.create(
                    MALLORY, ledger=ledger.ledger_id, channel=payer.channel, n=2 + i,
                    paid=PRICE + 1 + i, price=1, service="nosuch",
                    body=bytes([i % 256]) * BODY, deadline=deadline,
                )  # fmt: skip

            # one claim of the kind while the node runs: the claim path is warm, and the
            # first run's peak is the baseline
            warm = await ledger.file_claim(MALLORY, claim(0))
            states = {(await payer.decided(warm)).state}
            await trio.sleep(1)
            baseline = peak_resident(node)
            assert node.stop() == 0
            ids = [await ledger.file_claim(MALLORY, claim(i)) for i in range(1, K + 1)]
            again = start(d)
            nodes.append(again)
            for claim_id in ids:
                states.add((await payer.decided(claim_id)).state)
            return baseline, peak_resident(again), states

    baseline, peak, states = trio.run(burst)
    print(
        f"{K} claims of {BODY} bytes refused at once after a restart: peak "
        f"{peak / MIB:.1f} MiB against {baseline / MIB:.1f} MiB for the first run"
    )
    assert states == {ClaimState.REFUSED}
    # on 746a80e about 2 * BODY per claim (300 MB); the bound is many times below that and
    # several times above what SLOTS claims read whole at once take
    assert peak - baseline < 64 * MIB, (peak - baseline) / MIB
