"""`p2pay call` against a provider forging its receipt signatures (protocol.md 14.4).

The provider is a real `p2pay node run` whose OK receipts carry another key's signature
(its `Response.create` patched in its own process). The client's node must refuse such a
receipt *before* it accepts it, whatever the home's ``receipt_check_every``: the command
checks every receipt it shows anyway, and one accepted first is paid for (``spent`` moves),
marks the request answered (nothing left to re-send or claim), and for ``call any`` counts
as the provider's success with no failover to the next one. A refused receipt makes the
provider faulty on the channel: the next `p2pay call` (another process, the same store)
signs nothing on it and fails PAYEE_FAULTY. The home here sets a huge
``receipt_check_every`` so that a node sampling receipts would (all but) never draw it.

A real process on 127.0.0.1 (libp2p), bounded by timeouts; stopped in a ``finally``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from test_cli import (  # noqa: F401 - fixtures
    PRICE,
    InProcess,
    Node,
    _env,
    cli,
    js,
    nodes,
    p2pay,
    world,
)

FORGER = """\
import sys

from p2pay.core.identity import Keypair
from p2pay.core.messages import Response

OTHER = Keypair.from_seed(bytes([9]) * 32)
_create = Response.create.__func__


def create(cls, key, **kw):
    response = _create(cls, key, **kw)
    if response.ok:  # the OK receipts carry another key's signature
        return response.with_signature(OTHER.sign(response.signing_bytes))
    return response


Response.create = classmethod(create)

from p2pay.cli.main import main  # noqa: E402

main(sys.argv[1:])
"""


class ForgingNode(Node):
    """`p2pay node run` with the OK receipts it sends signed by another key."""

    def __init__(self, cwd: Path, home: str, *extra: str) -> None:
        script = cwd / "forging_node.py"
        script.write_text(FORGER, encoding="utf-8")
        self.log = cwd / f"node-{home}-{time.monotonic_ns()}.log"
        self.stderr = ""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), "--home", home, "node", "run", *extra],
                cwd=cwd,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=log,
            )
        line = self._first_line(timeout=30)
        if not line.startswith("listening "):
            self.stop(signal.SIGKILL)
            raise AssertionError(f"node did not start: {line!r} {self.stderr}")
        self.doc: dict[str, Any] = {}
        self.addr = line.split()[1]


def test_call_refuses_a_forged_receipt_before_paying_for_it(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    config = d / "c" / "config.toml"
    config.write_text(config.read_text() + "\n[node]\nreceipt_check_every = 1000000000\n")
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "2s")
    node = ForgingNode(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}")
    nodes.append(node)
    cid = js("--home", "c", "channel", "open", node.addr, "--deposit", "10 milli", cwd=d)["channel"]

    # the second run of `p2pay call` finds the provider faulty on the channel (the mark is
    # in the client's store: protocol.md 14.3, "A faulty payee") and signs nothing
    for code in ("INVALID_SIGNATURE", "PAYEE_FAULTY"):
        proc = p2pay("--home", "c", "call", node.addr, "echo", "hello", "--max-price", "1000",
                     "--json", cwd=d)  # fmt: skip
        assert proc.returncode != 0 and proc.stdout == "", proc.stdout
        error = json.loads(proc.stderr.strip().splitlines()[-1])["error"]
        assert error["code"] == code, error
        (channel,) = c.js("--home", "c", "channel", "list")["channels"]
        assert channel["channel"] == cid and channel["last_n"] == 1
        # refused, not accepted: nothing paid for it (the request stays on record,
        # in doubt: `node run` re-sends it and, failing that, claims it)
        assert channel["spent"] == "0", channel
    assert error["details"] == {"channel": cid}, error
    assert channel["faulty"].startswith("its receipt for request 1 failed the check"), channel
