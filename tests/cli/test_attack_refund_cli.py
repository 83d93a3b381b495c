"""Attack round on 12305b4 through the real CLI node (specs/claims.md 6, protocol.md 16.2):
an honest provider whose answer is lost (it is killed while its handler runs, and is down
when the client re-sends) answers the client's claim with its signed DEADLINE_EXCEEDED
(REFUSED: the price refunded). The refund now triggers the client's check of what the
provider holds (`spent` + outstanding); the client's node takes the answer as a receipt
(the request settled as not charged), is restarted,
and the provider then redeems what it charged when the client closes: no alarm, no refusal
posted (the client holds one), nothing clawed.

Real processes (`p2pay node run`, `p2pay call`, `p2pay claims list`, `p2pay channel close`)
on a SQLite dev ledger; every wait is bounded by a deadline."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    js,
    nodes,
    p2pay,
    restart_port,
    world,
)

PRICE = 1000


def wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


@pytest.mark.slow
def test_a_claim_refused_by_a_restarted_provider_raises_no_alarm_after_a_restart(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    (d / "mods.py").write_text(
        "import trio\n\n"
        "async def hang(call):\n    await trio.sleep(3)\n    return b'done'\n\n"
        "async def fail(call):\n    raise RuntimeError('no')\n",
        encoding="utf-8",
    )
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "30s")
    port = restart_port()  # the provider comes back on it
    listen = f"/ip4/127.0.0.1/tcp/{port}"
    args = ("--listen", listen, "--service", f"echo={PRICE}", "--service",
            f"fail={PRICE}:mods:fail", "--service", f"hang={PRICE}:mods:hang",
            "--min-challenge", "1s")  # fmt: skip
    provider = Node(d, "p", *args)
    nodes.append(provider)
    js("--home", "c", "channel", "open", provider.addr, "--deposit", "1 milli",
       "--challenge", "2s", cwd=d)  # fmt: skip
    # n=1: a signed HANDLER_ERROR the client keeps; n=2: served
    proc = p2pay("--home", "c", "call", provider.addr, "fail", "x", "--max-price", str(PRICE),
                 "--json", cwd=d)  # fmt: skip
    assert proc.returncode != 0 and "HANDLER_ERROR" in proc.stderr, proc.stderr
    proc = p2pay("--home", "c", "call", provider.addr, "echo", "y", "--max-price", str(PRICE),
                 "--json", cwd=d)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # n=3: the provider is killed while its handler runs: no answer, nothing charged
    proc = p2pay("--home", "c", "call", provider.addr, "hang", "z", "--max-price", str(PRICE),
                 "--timeout", "1", "--json", cwd=d)  # fmt: skip
    assert proc.returncode != 0
    assert provider.stop(signal.SIGKILL) != 0
    client = Node(d, "c", "--listen", "/ip4/127.0.0.1/tcp/0")
    nodes.append(client)
    # the re-send finds no provider: the client claims; the provider comes back (same
    # address) and answers the claim: its handler never finished, so a signed
    # DEADLINE_EXCEEDED (REFUSED)
    assert wait_for(lambda: "filed claim" in client.log.read_text(), 90), client.log.read_text()
    provider = Node(d, "p", *args)
    nodes.append(provider)

    def delivered() -> bool:
        claims = c.js("--home", "c", "claims", "list")["claims"]
        return any(r["outcome"] == "refused" for r in claims)

    assert wait_for(delivered, 60), (
        provider.log.read_text()
        + client.log.read_text()
        + str(c.js("--home", "c", "claims", "list"))
    )
    time.sleep(2)  # the client's node staged the answer (it is durable on a clean stop)
    assert client.stop() == 0
    assert "more than our receipts justify" not in client.stderr, client.stderr
    (ch,) = c.js("--home", "c", "channel", "list")["channels"]
    assert ch["spent"] == str(PRICE), ch  # n=2 only
    # the client closes; the provider redeems what it charged (1 price) on the close
    c.ok("--home", "c", "channel", "close", ch["channel"])
    client = Node(d, "c", "--listen", "/ip4/127.0.0.1/tcp/0")  # restarted
    nodes.append(client)

    def redeemed() -> bool:
        (now,) = c.js("--home", "c", "channel", "list")["channels"]
        return bool(int(now["redeemed"]) == PRICE)

    assert wait_for(redeemed, 60), c.js("--home", "c", "channel", "list")
    time.sleep(5)  # the restarted node's watcher reads the Redeemed event and checks it
    assert client.stop() == 0
    assert "more than our receipts justify" not in client.stderr, client.stderr
    claims = c.js("--home", "c", "claims", "list")["claims"]
    assert [(r["outcome"], r["n"]) for r in claims] == [("refused", 3)], claims
    (ch,) = json.loads(p2pay("--home", "c", "channel", "list", "--json", cwd=d).stdout)["channels"]
    print(ch)
    assert (ch["spent"], ch["redeemed"]) == (str(PRICE), str(PRICE)), ch
