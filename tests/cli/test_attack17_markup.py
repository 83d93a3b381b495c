"""Attack 17-7: an offer's address drove `p2pay find`'s table (rich markup).

An address is any visible ASCII ending in /p2p/<PeerID> (discovery.md 2), so `[`, `]` and
`=` pass the offer checks, and the table rendered cells as rich markup: a stranger's offer
(a 1-yocto stake) with ``[link=https://evil.example/pay][blink]PAY-SUPPORT[/blink][/link]``
in an address showed a blinking OSC 8 hyperlink in the user's terminal, and in a pipe the
tags vanished: the address shown was not the offer's (/work/attack17/a8_markup.py, real
processes). discovery.md 4 now says a peer's text is shown as text; the CLI's tables
escape markup in every cell they did not format themselves.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console
from test_cli import InProcess, cli, world  # noqa: F401 - fixtures

from p2pay.cli import render
from p2pay.node.facade import Node
from p2pay.node.types import OfferInfo

PEER = "12D3KooWAoGwHXvmGDcyK1SdiS2FrdSeidJ8gWsrMxnJnXyrsYQm"
ADDR = f"/ip4/127.0.0.1/tcp/1/[link=https://evil.example/pay][blink]PAY[/blink][/link]/p2p/{PEER}"


def test_a_table_cell_is_text_not_markup() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=400, color_system="truecolor")
    console.print(render.table("offers of echo", ("peer", "addresses"), [[PEER, ADDR]]))
    text = out.getvalue()
    assert "\x1b]8;" not in text and "\x1b[5" not in text  # no hyperlink, no blink
    assert ADDR in text


def test_find_shows_the_offers_address_as_it_is(
    world: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offer = OfferInfo(peer=PEER, account=b"\x01" * 32, service="echo", price=1, max_body=1024,
                      stake=1, penalty=1, claim_window_ms=1000, addrs=(ADDR,), seq=1,
                      expires=2**40, age_ms=5)  # fmt: skip

    async def find(self: Node, service: str, **kw: Any) -> list[OfferInfo]:
        return [offer]

    monkeypatch.setattr(Node, "find", find)
    boot = f"/ip4/127.0.0.1/tcp/9/p2p/{world['p']['peer_id']}"  # nothing listens: no harm
    c: InProcess = world["cli"]
    out = c.ok("--home", "c", "find", "echo", "--bootstrap", boot)
    # the addresses column (the last) may fold over lines: put it back together
    column = "".join(line.split("│")[-2].strip() for line in out.splitlines() if "│" in line)
    assert ADDR in column
