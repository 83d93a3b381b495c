"""Attack round 17 on 6ffbbb3, holds, through the real CLI provider: a provider killed
(SIGKILL) while it serves a request, claimed while it is down, answers the claim after
its restart once, and is paid exactly what it served.

MALLORY (a raw payer, cli_raw_payer.py) pays call 1, sends S (n=2, slice (1000, 2000]) to
the slow ``held`` service and pays call 3 (n=3, which becomes the provider's best
voucher); the provider is killed while S is served (S admitted, never answered, never
charged). MALLORY then claims, while it is down:

* ``request``: S itself. After the restart n=2 has no answer and nothing else numbered
  2 is known: a gap (claims.md C-6), served through the claim and charged once
  (DELIVERED).
* ``twin``: R, numbered 2 with S's slice and another body (S is lost with the killed
  process: no evidence against R): served through the claim and charged (DELIVERED).
  Then S: R is now the evidence against it (the same number, claims.md 2): FRIVOLOUS,
  the bond to the provider; one price for the one slice, not two.

In both, after MALLORY closes: the provider holds PRICE per answer MALLORY got (on the
stream or through a claim), nothing clawed, its stake whole. Every wait bounded; nothing
asserts on timing.
"""

from __future__ import annotations

import signal
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
from p2pay.core.settlement import Channel, ClaimState


@pytest.mark.slow
@pytest.mark.parametrize("claimed", ["request", "twin"])
def test_a_claim_filed_while_the_provider_is_down_is_answered_once(
    claimed: str,
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="10s")
    stake = c.js("--home", "p", "balance")["staked"]
    nodes.append(start(d))

    async def attack() -> tuple[int, list[ClaimState], Channel]:
        async with raw_payer(d, nodes[-1].addr) as payer:
            ledger = payer.ledger
            for n in (1, 3):
                if n == 3:
                    slow = payer.signed(2, 2 * PRICE, await ledger.now() + 1_500,
                                        service="held", body=b"s2")  # fmt: skip
                    await payer.send(slow)
                answer = await payer.call(n, n * PRICE)
                assert isinstance(answer, Response) and answer.status == STATUS_OK

            async def started() -> bool:
                return (d / "started-s2").exists()

            await until(started)
            assert nodes[-1].stop(signal.SIGKILL) != 0  # S admitted, never answered
            await payer.wait_past(slow.deadline)
            if claimed == "request":
                claims = [slow]
            else:
                twin = payer.signed(2, 2 * PRICE, slow.deadline, body=b"twin")
                claims = [twin, slow]
            (d / "release-all").touch()
            nodes.append(start(d))
            states = []
            for request in claims:  # one after the other: the twin's answer comes first
                claim_id = await ledger.file_claim(MALLORY, request)
                states.append((await payer.decided(claim_id)).state)
            await ledger.start_close(MALLORY, payer.channel)
            answers = 2 + states.count(ClaimState.DELIVERED)

            async def paid() -> bool:
                info = await ledger.channel(payer.channel)
                return info is not None and info.redeemed >= answers * PRICE

            with trio.move_on_after(20):  # bounded: the assertion below says what came
                await until(paid, 30)
            info = await ledger.channel(payer.channel)
            assert info is not None
            return answers, states, info

    answers, states, info = trio.run(attack)
    print(claimed, states, info)
    if claimed == "request":
        assert states == [ClaimState.DELIVERED]
    else:
        assert states == [ClaimState.DELIVERED, ClaimState.FRIVOLOUS]
    assert answers == 3 and info.redeemed == answers * PRICE and info.clawed == 0
    assert info.refunded == 0 and c.js("--home", "p", "balance")["staked"] == stake
    assert nodes[-1].stop() == 0
    assert "Traceback" not in nodes[-1].stderr
