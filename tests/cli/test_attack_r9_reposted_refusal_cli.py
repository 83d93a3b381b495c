"""Attack round 9 on 4c9cfca through the real CLI client (`p2pay call`, `p2pay node run`)
against a provider that redeems the slices it refused (a library node in its own process,
tests/cli/atk_final_provider.py; the test redeems with its best voucher) on a SQLite dev
ledger: the CLI form of tests/integration/test_attack_r9_reposted_refusal.py.

Each round the client calls ``fail`` (a signed HANDLER_ERROR it keeps) and ``echo``
(served), and the provider redeems all its voucher allows, the refused slice included.
The client's node, started after each round, posts the provider's refusal and the ledger
claws the refused price back. From the second round on its check walks the refusals it
already posted too: the first gets CLAIM_EXISTS and is left ``claimed`` in the store; the
node started after the third round restores it as abandoned, its price counted as what the
provider may hold, and the third refused slice is not posted: the provider served 3
requests and holds 4 prices (clawed 2000, not 3000).

Every wait is bounded by a deadline; nothing asserts on timing."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_attack_final_cli import BOB, HERE, PRICE, SEED, on_ledger, wait_for
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    _env,
    cli,
    free_port,
    js,
    nodes,
    p2pay,
    world,
)

from p2pay.core.messages import Request, decode_frame


@pytest.mark.slow
def test_a_provider_redeeming_refused_slices_keeps_none_against_a_cli_client(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    c.ok("--home", "p", "ledger", "mint", BOB.account.hex(), "2 token")
    status = d / "bob"
    status.mkdir()
    provider = subprocess.Popen(
        [sys.executable, str(HERE / "atk_final_provider.py"), str(d / "ledger.sqlite"), SEED,
         f"/ip4/127.0.0.1/tcp/{free_port()}", str(status), "25000"],
        cwd=d, env=_env(), stdout=subprocess.DEVNULL, stderr=open(d / "bob.log", "wb"),
    )  # fmt: skip
    try:
        assert wait_for(lambda: (status / "ready").exists(), 60), (d / "bob.log").read_text()
        addr = (status / "ready").read_text()
        js("--home", "c", "channel", "open", addr, "--deposit", "1 milli", "--challenge", "2s",
           cwd=d)  # fmt: skip
        channel: bytes | None = None
        for round_ in (1, 2, 3):
            proc = p2pay("--home", "c", "call", addr, "fail", "x", "--max-price", str(PRICE),
                         "--json", cwd=d)  # fmt: skip
            assert proc.returncode != 0 and "HANDLER_ERROR" in proc.stderr, proc.stderr
            proc = p2pay("--home", "c", "call", addr, "echo", "served", "--max-price",
                         str(PRICE), "--json", cwd=d)  # fmt: skip
            assert proc.returncode == 0, proc.stderr

            def voucher(paid: int = 2 * round_ * PRICE) -> Request | None:
                if not (status / "voucher").exists():
                    return None
                v = decode_frame(bytes.fromhex((status / "voucher").read_text()))
                assert isinstance(v, Request)
                return v if v.paid == paid else None

            assert wait_for(lambda: voucher() is not None, 30)
            v = voucher()
            assert v is not None
            channel = v.channel
            on_ledger(d, lambda lg, v=v: lg.redeem(BOB, v))  # the refused slice included
            client = Node(d, "c", "--listen", "/ip4/127.0.0.1/tcp/0")  # (re)started
            nodes.append(client)

            def clawed(amount: int = round_ * PRICE, channel: bytes = v.channel) -> bool:
                info = on_ledger(d, lambda lg: lg.channel(channel))
                return bool(info.clawed == amount)

            ok = wait_for(clawed, 30 if round_ < 3 else 15)  # bounded: round 3 is the bug
            assert client.stop() == 0
            if round_ < 3:
                assert ok, client.log.read_text()
        info = on_ledger(d, lambda lg: lg.channel(channel))
        totals = on_ledger(d, lambda lg: lg.totals())
        print("redeemed", info.redeemed, "clawed", info.clawed, "refunded", info.refunded)
        assert totals.conserved
        # the provider served 3 requests (the echo calls): it holds 3 prices and no more
        assert info.redeemed - info.clawed == 3 * PRICE, (info.redeemed, info.clawed)
    finally:
        provider.send_signal(signal.SIGKILL)
        provider.wait(timeout=20)
