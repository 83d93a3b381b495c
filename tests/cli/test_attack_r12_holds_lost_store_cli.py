"""Attack round 12 on 46e481e, holds, through the real CLI: a client home whose store file
is removed (a new store: the channel is adopted from the ledger with ``paid`` and
``forgotten`` at ``paid_seen``) keeps calling an honest `p2pay node run` provider on the
same channel: each call is served and charged its price, and the new slices lie above
what the ledger has seen. Every wait is bounded; nothing asserts on timing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    js,
    nodes,
    world,
)

PRICE = 1000


@pytest.mark.slow
def test_a_cli_client_with_a_lost_store_keeps_calling(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "2s")
    node = Node(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}")
    nodes.append(node)
    cid = js("--home", "c", "channel", "open", node.addr, "--deposit", "10 milli", cwd=d)["channel"]
    for i in range(3):
        res = js("--home", "c", "call", node.addr, "echo", f"a{i}", "--max-price", "1000", cwd=d)
        assert (res["n"], res["channel"]) == (i + 1, cid)
    store = d / "c" / "store.sqlite"
    assert store.exists(), sorted(p.name for p in (d / "c").iterdir())
    for extra in d.joinpath("c").glob("store.sqlite*"):
        extra.unlink()
    seen = []
    for i in range(3):
        res = js("--home", "c", "call", node.addr, "echo", f"b{i}", "--max-price", "1000", cwd=d)
        assert res["channel"] == cid and res["price"] == "1000" and res["body"] == f"b{i}"
        seen.append((res["n"], res["receipt"]["spent"]))
    print(seen)
    assert [n for n, _ in seen] == sorted({n for n, _ in seen}) and seen[0][0] > 3
    assert seen[-1][1] == str(6 * PRICE)
