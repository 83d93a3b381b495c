"""The libp2p transport under a hostile or unlucky environment (issue 14, items 5 and 7).

* A listen address whose port another node holds is an error: `node run` exits non-zero
  with one line on stderr (py-libp2p 0.8.1 bound with SO_REUSEPORT, so a second node
  printed `listening` and took part of the first one's connections).
* A peer that ignores yamux flow control (py-libp2p 0.8.1 logs "peer exceeded receive
  window" and keeps buffering) loses its connection, and the bytes the node buffers for
  the stream stay within `p2pay.net.p2p.MAX_STREAM_BUFFER`.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hardening_support import (
    ALICE,
    BOB,
    MALLORY,
    PRICE,
    TOKEN,
    ProviderProcess,
    capture_errors,
    cli,
    cli_env,
    echo,
    make_ledger,
    make_provider_home,
)

from p2pay.core.messages import Hello, Request, decode_frame
from p2pay.ledger.memory import wall_clock_ms
from p2pay.net.base import StreamClosed
from p2pay.net.p2p import MAX_STREAM_BUFFER, open_libp2p_transport
from p2pay.node import NodeConfig, open_node

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
            "use (another process or node holds this port): pass --listen (e.g. "
            "/ip4/127.0.0.1/tcp/0), or edit listen in the home's config.toml"
        ], second.stderr
        assert not any("Traceback" in line for line in lines)
        assert first.proc is not None and first.proc.poll() is None  # still serving
        assert await first.stop() == 0
    finally:
        first.kill()


async def test_a_window_flooding_payer_is_cut_off_and_the_node_keeps_serving() -> None:
    """MALLORY, with a channel, sends paid requests with 60 KiB bodies and never reads the
    answers, so BOB's outbox fills and BOB stops reading its session; then MALLORY writes
    yamux DATA frames straight to the connection, ignoring the window. BOB closes the
    connection at the first byte beyond the window, buffers at most MAX_STREAM_BUFFER for
    the stream, charges only what it admitted, and goes on serving ALICE."""
    config = NodeConfig(watcher=False, max_outbox=4, default_timeout=10.0)
    ledger = make_ledger()
    for key in (ALICE, BOB, MALLORY):
        await ledger.mint(key, key.account, 10 * TOKEN)

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with (
        capture_errors() as errors,
        open_node(key=BOB, ledger=ledger, config=config) as bob,
        open_node(key=ALICE, ledger=ledger, config=NodeConfig(watcher=False)) as alice,
        open_libp2p_transport(MALLORY, ignore) as transport,
    ):
        bob.serve("echo", echo, price=PRICE)
        await alice.open_channel(bob.addrs[0], deposit=10**9)
        channel = await ledger.open_channel(MALLORY, BOB.public, 10**12, 60_000)
        stream = await transport.connect(bob.addrs[0])
        with trio.fail_after(10):
            await stream.send(Hello.create(MALLORY, ledger=ledger.ledger_id).to_frame())
            assert isinstance(decode_frame(await stream.receive()), Hello)
        session = next(s for s in bob._live if s.peer == MALLORY.public)
        conn = session.stream._net.muxed_conn
        sent = 0

        async def paid_requests() -> None:
            nonlocal sent
            with contextlib.suppress(StreamClosed):
                for n in range(1, 41):
                    request = Request.create(
                        MALLORY,
                        ledger=ledger.ledger_id,
                        channel=channel,
                        n=n,
                        paid=n * PRICE,
                        price=PRICE,
                        service="echo",
                        body=bytes([n]) * 60_000,
                        deadline=wall_clock_ms() + 60_000,
                    )
                    await stream.send(request.to_frame())
                    sent = n

        async with trio.open_nursery() as nursery:
            nursery.start_soon(paid_requests)
            with trio.fail_after(30):  # BOB's answers pile up: it stops reading MALLORY
                while len(session.outbox.items) < config.max_outbox:
                    await trio.sleep(0.01)
            raw, raw_id = stream._net.muxed_conn, stream._net.muxed_stream.stream_id
            chunk = b"\x00" * 65000
            header = struct.pack("!BBHII", 0, 0, 0, raw_id, len(chunk))  # yamux DATA
            flooded = 0
            with trio.fail_after(60):
                try:
                    while flooded < 256 << 20 and not raw.event_shutting_down.is_set():
                        await raw._write_frame(header + chunk)
                        flooded += len(chunk)
                        await trio.sleep(0)
                except Exception:
                    pass  # BOB closed the connection
                while not conn.event_closed.is_set():
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert flooded < 256 << 20  # stopped by BOB's GO_AWAY, or by the closed socket
        assert conn.window_violations == 1
        assert 0 < conn.max_buffered <= MAX_STREAM_BUFFER
        with trio.fail_after(10):
            while session in bob._live:
                await trio.sleep(0.01)
        # nothing charged beyond what BOB admitted and answered; BOB still serves
        ch = bob.payee_channels[channel]
        assert ch.reserved == 0
        assert ch.spent == ch.last_n * PRICE <= sent * PRICE
        result = await alice.call(bob.addrs[0], "echo", b"still served", max_price=PRICE)
        assert result.body == b"still served"
    assert not errors.records, errors.text()
