"""Attack round 21 on 1019fb9 (protocol.md 13.4 e), through the real CLI provider killed
with SIGKILL: a payer that signs badly gets at most the unchecked credit limit per channel
however often its payee is killed and restarted.

MALLORY (a raw payer, cli_raw_payer.py) signs some of its requests with another key
(`bad`), on its own authenticated stream; the provider's ``[node] unverified_credit_limit``
is 5 prices. Three lives of the provider, each ended by SIGKILL:

* ``unchecked``: in each life MALLORY sends a bad request then a good one, both under the
  limit (admitted unchecked, served, never checked before the kill). After the restart the
  provider checks its stored requests above its stored checked voucher, finds the bad one
  and extends no more unchecked credit: every later bad request is refused
  INVALID_SIGNATURE at once.
* ``refusal``: MALLORY re-sends its request 1 signed badly (not deferrable: its number is
  used), gets the unsigned INVALID_SIGNATURE refusal that revoked deferral, and the provider
  is killed as soon as it arrives. The refusal leaves only once the revocation is stored:
  after the restart a bad request is refused at once.

Measured: the yocto of bad requests MALLORY got served (answered OK) over the three lives;
at most the limit. Held on 1019fb9; both cases fail on 97f59d1, before rule e (unchecked:
one bad request served per life, 3000 yocto; refusal: the fresh bad request after the
restart admitted unchecked and served).
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_raw_payer import MALLORY, PRICE, RawPayer, provider, raw_payer, start
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    nodes,
    world,
)

from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import STATUS_OK, Refusal, Request, Response
from p2pay.net.base import Stream
from p2pay.net.p2p import open_libp2p_transport

LIMIT = 5 * PRICE
FORGER = Keypair.from_seed(bytes([78]) * 32)  # signs MALLORY's bad requests


async def ignore(stream: Stream) -> None:
    await stream.aclose()


def bad(payer: RawPayer, n: int, paid: int, deadline: int) -> Request:
    """MALLORY's request `n` signed by FORGER: its signature is not MALLORY's."""
    return Request.create(
        FORGER, ledger=payer.ledger.ledger_id, channel=payer.channel, n=n, paid=paid,
        price=PRICE, service="echo", body=b"bad %d" % n, deadline=deadline,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unchecked", "refusal"])
def test_kills_give_a_bad_signer_no_more_than_the_limit(
    case: str,
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider(d, c, window="10s", node=f"unverified_credit_limit = {LIMIT}\n")
    nodes.append(start(d))

    async def attack() -> tuple[int, list[str]]:
        served_bad = 0  # yocto of bad requests answered OK
        log: list[str] = []
        async with raw_payer(d, nodes[-1].addr) as payer:
            ledger = payer.ledger
            n = 0

            async def send(request: Request) -> object:
                nonlocal served_bad
                await payer.send(request)
                answer = await payer.receive()
                signed_ok = request.verify(MALLORY.public)
                if isinstance(answer, Response) and answer.status == STATUS_OK:
                    if not signed_ok:
                        served_bad += PRICE
                    log.append(f"{request.n}{'' if signed_ok else '(bad)'}:OK")
                else:
                    code = answer.code if isinstance(answer, Refusal) else answer
                    log.append(f"{request.n}{'' if signed_ok else '(bad)'}:{code}")
                return answer

            async def one_life(life: int) -> None:
                nonlocal n
                deadline = await ledger.now() + 30_000
                if life == 0:
                    n += 1  # the first voucher of a channel is always checked
                    answer = await send(payer.signed(n, n * PRICE, deadline))
                    assert isinstance(answer, Response) and answer.ok, answer
                if case == "unchecked":
                    n += 1
                    answer = await send(bad(payer, n, n * PRICE, deadline))
                    if isinstance(answer, Response):  # admitted unchecked: a good one after
                        n += 1
                        await send(payer.signed(n, n * PRICE, deadline))
                    else:  # refused at once: no more unchecked credit
                        assert isinstance(answer, Refusal), answer
                        assert answer.code == ErrorCode.INVALID_SIGNATURE.value, answer
                else:
                    if life:  # a fresh bad one first: checked on arrival, refused
                        answer = await send(bad(payer, n + 1, (n + 1) * PRICE, deadline))
                        assert isinstance(answer, Refusal), answer
                        assert answer.code == ErrorCode.INVALID_SIGNATURE.value, answer
                    # a used number, signed badly: checked at once, deferral revoked
                    answer = await send(bad(payer, 1, PRICE, deadline))
                    assert isinstance(answer, Refusal), answer
                    assert answer.code == ErrorCode.INVALID_SIGNATURE.value, answer
                assert nodes[-1].stop(signal.SIGKILL) != 0

            for life in range(3):
                if life:
                    nodes.append(start(d))
                    # a transport of its own: the first one's connection died with the node
                    async with open_libp2p_transport(MALLORY, ignore) as transport:
                        payer.transport = transport
                        await payer.connect(nodes[-1].addr)
                        await one_life(life)
                else:
                    await one_life(life)
            return served_bad, log

    served_bad, log = trio.run(attack)
    print(case, "bad served (yocto):", served_bad, log)
    assert served_bad <= LIMIT, log
    # the first life served one bad request (unchecked), the later lives none
    assert served_bad == (PRICE if case == "unchecked" else 0), log
