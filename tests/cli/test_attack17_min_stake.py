"""Attack 17-3 (the command line's part): `call any` reaches strangers, and a stake is what
a stranger puts at risk; the library's `call_any` takes a `min_stake` but `p2pay call any`
had no way to ask for one, so a command-line client took any offer with a 1-yocto stake
(tests/unit/test_attack17_sybil.py). `call any --min-stake AMOUNT` passes it on; with a
PEER it is refused (a call to PEER uses the channel opened to it).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_cli import InProcess, cli, world  # noqa: F401 - fixtures

from p2pay.node import NoProvider
from p2pay.node.facade import Node


def test_call_any_takes_a_minimum_stake(
    world: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c: InProcess = world["cli"]
    seen: dict[str, Any] = {}

    async def call_any(self: Node, service: str, body: bytes, **kw: Any) -> None:
        seen.update(kw)
        raise NoProvider("none here", details={"service": service})

    monkeypatch.setattr(Node, "call_any", call_any)
    peer = world["p"]["peer_id"]
    boot = f"/ip4/127.0.0.1/tcp/9/p2p/{peer}"  # nothing listens there: not joined, no harm
    line = c.fails("--home", "c", "call", "any", "echo", "hi", "--max-price", "1000",
                   "--min-stake", "0.5 token", "--bootstrap", boot)  # fmt: skip
    assert "NO_PROVIDER" in line and seen["min_stake"] == 5 * 10**23
    c.fails("--home", "c", "call", "any", "echo", "hi", "--max-price", "1000", "--bootstrap", boot)
    assert seen["min_stake"] == 0
    line = c.fails("--home", "c", "call", peer, "echo", "hi", "--max-price", "1",
                   "--min-stake", "1")  # fmt: skip
    assert "--min-stake is for `call any`" in line
