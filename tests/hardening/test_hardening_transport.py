"""The libp2p transport under a hostile or unlucky environment (issue 14, items 5 and 7).

* A listen address whose port another node holds is an error: `node run` exits non-zero
  with one line on stderr (py-libp2p 0.8.1 bound with SO_REUSEPORT, so a second node
  printed `listening` and took part of the first one's connections).
* A peer that ignores yamux flow control (py-libp2p 0.8.1 logs "peer exceeded receive
  window" and keeps buffering) loses its connection, and the bytes the node buffers for
  the stream stay within `p2pay.net.p2p.MAX_STREAM_BUFFER`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hardening_support import ProviderProcess, cli, cli_env, make_provider_home

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_node_run_on_a_port_another_node_holds_exits_with_one_line(tmp_path: Path) -> None:
    make_provider_home(tmp_path)
    cli("--home", "second", "init", "--ledger", "sqlite:ledger.sqlite", cwd=tmp_path)
    first = ProviderProcess(tmp_path, "provider", "--listen", "/ip4/127.0.0.1/tcp/0")
    try:
        addr = await first.start()
        port = addr.split("/")[4]
        listen = f"/ip4/127.0.0.1/tcp/{port}"
        second = subprocess.run(
            [
                *(sys.executable, "-m", "p2pay", "--home", "second", "node", "run"),
                "--listen",
                listen,
            ],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "listening" not in second.stdout
        lines = second.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("p2pay: error:")]
        assert errors == [
            f"p2pay: error: cannot listen on /ip4/127.0.0.1/tcp/{port}: address already in "
            "use (another process or node holds this port)"
        ], second.stderr
        assert not any("Traceback" in line for line in lines)
        assert first.proc is not None and first.proc.poll() is None  # still serving
        assert await first.stop() == 0
    finally:
        first.kill()
