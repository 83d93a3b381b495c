"""Attack round 41, a property that held (no defect shown by this test): an honest
`p2pay node run` provider (its own OS process, libp2p on 127.0.0.1, a SQLite dev ledger)
with a 50 ms idle_timeout, and a library payer making bursts of concurrent calls whose
gaps straddle that timeout, so that the provider's idle resets race requests that have
just left (protocol.md 13.1 step 4: the payer re-sends them first on a new stream,
13.5: answered from the payee's store, never charged twice).

Every call ends ok or with a typed error, each served body is served at most once, the
payer's channel spent is what its ok calls were charged (nothing charged it was not
told of), the provider process is still running, and after it stops its own record of
the channel (``p2pay channels``) has the same spent. Bounded waits; no timing assertion.
"""

from __future__ import annotations

import collections
import random
from pathlib import Path
from typing import Any

import trio
from cli_raw_payer import MALLORY, PAYER_CONFIG, PRICE, fund_payer
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    nodes,
    world,
)

from p2pay.core.errors import P2payError
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.node import open_node

ROUNDS = 12


async def _calls(d: Path, addr: str) -> tuple[collections.Counter[str], int, int, bytes]:
    """The payer's bursts: (outcome kinds, sum of ok prices, channel spent, channel)."""
    rnd = random.Random(41)
    ledger = await SqliteLedger.open(str(d / "ledger.sqlite"))
    kinds: collections.Counter[str] = collections.Counter()
    charged = 0
    try:
        async with open_node(key=MALLORY, ledger=ledger, config=PAYER_CONFIG) as payer:
            ch = await payer.open_channel(addr, deposit=10**9, challenge_ms=1000)

            async def call(body: bytes) -> None:
                nonlocal charged
                try:
                    result = await payer.call(addr, "echo", body, max_price=PRICE, timeout=20)
                except P2payError as exc:
                    kinds[type(exc).__name__] += 1
                else:
                    kinds["ok" if result.body == body else "wrong body"] += 1
                    charged += result.price

            with trio.fail_after(120):
                i = 0
                for _ in range(ROUNDS):
                    async with trio.open_nursery() as nursery:
                        for _ in range(rnd.randint(1, 12)):
                            nursery.start_soon(call, b"body-%d" % i)
                            i += 1
                    await trio.sleep(0.05 * (0.7 + 0.6 * rnd.random()))
            assert not payer.client._lost
            print("streams opened", payer.counters.connections)
            assert payer.counters.connections > 1  # the provider's idle resets came
            spent = payer.payer_channels[ch.channel].spent
            return kinds, charged, spent, ch.channel
    finally:
        await ledger.aclose()


def test_idle_resets_racing_calls_charge_nothing_twice(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    fund_payer(d, c, node="idle_timeout = 0.05\nmin_challenge_ms = 1000\n")
    node = Node(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}")
    nodes.append(node)
    kinds, charged, spent, channel = trio.run(_calls, d, node.addr)
    print(dict(kinds), charged, spent)
    assert set(kinds) <= {"ok", "ConnectionLost", "PeerUnreachable", "CallTimeout"}, kinds
    assert kinds["ok"] > 0
    assert spent == charged
    assert node.proc.poll() is None  # still running
    assert node.stop() == 0
    rows = c.js("--home", "p", "channel", "list")["channels"]
    (row,) = [r for r in rows if r["channel"] == channel.hex()]
    assert row["spent"] == str(spent)
