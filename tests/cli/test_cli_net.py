"""Addresses and the network on the command line (issue 16 items 1-3): the address book
(a bare PeerID after one full multiaddr), the stable listen port from config.toml, the
errors that say what happened (UNREACHABLE, WRONG_PEER, NO_ADDRESS: one line, no library
noise, JSON with --json) and `channel open` contacting the peer before any escrow moves.

Real processes on 127.0.0.1, each bounded by a timeout; nodes stopped in a ``finally``
(the `nodes` fixture)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from test_cli import (  # noqa: F401 - fixtures
    PRICE,
    InProcess,
    Node,
    cli,
    fails,
    free_port,
    js,
    nodes,
    ok,
    p2pay,
    world,
)

from p2pay.cli.home import read_config


def money(w: dict[str, Any], home: str) -> tuple[str, str]:
    doc = w["cli"].js("--home", home, "balance")
    return doc["balance"], doc["escrow_out"]


def dead_addr(peer_id: str) -> str:
    """A 127.0.0.1 address where nothing listens (a port free a moment ago)."""
    return f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{peer_id}"


def test_init_writes_a_stable_listen_port(world: dict[str, Any]) -> None:  # noqa: F811
    d: Path = world["dir"]
    listen = read_config(d / "p" / "config.toml").listen
    assert len(listen) == 1 and listen[0].startswith("/ip4/127.0.0.1/tcp/")
    port = int(listen[0].rsplit("/", 1)[1])
    assert port > 0  # a port, not "any free port"
    # below the ephemeral range: no outgoing connection of the machine takes it by chance
    # while the node is down (one drawn from that range was, on a loaded machine)
    ports = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ports.exists():
        assert 1024 <= port < int(ports.read_text().split()[0])
    assert world["p"]["listen"] == listen
    # --listen at init is kept as given
    c: InProcess = world["cli"]
    assert c.js("--home", "q", "init", "--listen", "/ip4/127.0.0.1/tcp/0")["listen"] == [
        "/ip4/127.0.0.1/tcp/0"
    ]


def test_unreachable_peer_one_line_and_no_escrow(world: dict[str, Any]) -> None:  # noqa: F811
    d: Path = world["dir"]
    before = money(world, "c")
    addr = dead_addr(world["p"]["peer_id"])
    line = fails("--home", "c", "channel", "open", addr, "--deposit", "1 milli", cwd=d)
    assert line.startswith(f"p2pay: error: UNREACHABLE: cannot reach {world['p']['peer_id']} at ")
    assert "Connection refused" in line
    proc = p2pay("--home", "c", "channel", "open", addr, "--deposit", "1 milli", "--json", cwd=d)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1  # one JSON object, no library lines
    assert json.loads(proc.stderr)["error"]["code"] == "UNREACHABLE"
    # call: the same code (not OVERLOADED)
    line = fails("--home", "c", "call", addr, "echo", "x", "--max-price", "1", cwd=d)
    assert line.startswith("p2pay: error: UNREACHABLE: ")
    assert money(world, "c") == before  # nothing was escrowed
    assert world["cli"].js("--home", "c", "channel", "list")["channels"] == []


def test_bare_peer_id_without_an_address_says_what_to_do(world: dict[str, Any]) -> None:  # noqa: F811
    d: Path = world["dir"]
    peer = world["p"]["peer_id"]
    before = money(world, "c")
    line = fails("--home", "c", "channel", "open", peer, "--deposit", "1 milli", cwd=d)
    assert line == (
        f"p2pay: error: NO_ADDRESS: no known address for {peer}: give its full multiaddr once "
        f"(/ip4/HOST/tcp/PORT/p2p/{peer})"
    )
    line = fails("--home", "c", "call", peer, "echo", "x", "--max-price", "1", cwd=d)
    assert line.startswith(f"p2pay: error: NO_ADDRESS: no known address for {peer}")
    assert money(world, "c") == before


@pytest.mark.slow
def test_a_running_peer_the_address_book_and_wrong_peer(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    peer = world["p"]["peer_id"]
    # no stake yet: channel open refuses, shows what it saw, and moves nothing
    node = Node(d, "p", "--service", f"echo={PRICE}")
    nodes.append(node)
    port = read_config(d / "p" / "config.toml").listen[0]
    assert node.addr == f"{port}/p2p/{peer}"  # the port init chose, no --listen needed
    before = money(world, "c")
    line = fails("--home", "c", "channel", "open", node.addr, "--deposit", "10 milli", cwd=d)
    assert line == (
        f"p2pay: error: TERMS_REFUSED: {peer} has no stake: nothing would answer for a paid "
        "request it leaves unanswered (--no-stake-ok accepts it, knowing that)"
    )
    assert money(world, "c") == before
    assert node.stop() == 0
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "2s")
    node = Node(d, "p", "--service", f"echo={PRICE}")
    nodes.append(node)
    # a price above --max-price: refused, nothing moves
    line = fails(
        "--home", "c", "channel", "open", node.addr, "--deposit", "10 milli",
        "--max-price", "999", cwd=d,
    )  # fmt: skip
    assert line == (
        f"p2pay: error: TERMS_REFUSED: {peer} charges at least 0.000000000000000000001 token "
        "(1000 yocto) a call, above --max-price 0.000000000000000000000999 token (999 yocto)"
    )
    assert money(world, "c") == before
    # a different identity at the address: WRONG_PEER, before any escrow
    other = c.js("--home", "x", "init")["peer_id"]
    wrong = node.addr.replace(peer, other)
    line = fails("--home", "c", "channel", "open", wrong, "--deposit", "10 milli", cwd=d)
    assert line.startswith("p2pay: error: WRONG_PEER: another peer answered at ")
    assert f"dialled {other}, the handshake authenticated {peer}" in line
    proc = p2pay("--home", "c", "call", wrong, "echo", "x", "--max-price", "1", "--json", cwd=d)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert json.loads(proc.stderr)["error"]["code"] == "WRONG_PEER"
    assert money(world, "c") == before
    # the full address once: the open shows the terms, and the peer's address is kept
    opened = js("--home", "c", "channel", "open", node.addr, "--deposit", "10 milli", cwd=d)
    assert opened["terms"] == {
        "stake": str(10**24),
        "penalty": str(10**23),
        "claim_window_ms": 2000,
        "prices": {"echo": str(PRICE)},
    }
    # the human output prints the terms
    text = ok("--home", "c", "channel", "open", node.addr, "--deposit", "1 milli", cwd=d)
    assert text.splitlines()[2] == (
        "terms stake 1 token (1000000000000000000000000 yocto), penalty 0.1 token "
        "(100000000000000000000000 yocto), claim window 2s; prices echo 0.000000000000000000001 "
        "token (1000 yocto)"
    )
    text = ok("--home", "c", "call", node.addr, "echo", "hi", "--max-price", "1000", cwd=d)
    assert text == "hi\n"
    # then a bare PeerID works, for call and for channel open
    assert ok("--home", "c", "call", peer, "echo", "again", "--max-price", "1000", cwd=d) == (
        "again\n"
    )
    second = js("--home", "c", "channel", "open", peer, "--deposit", "1 milli", cwd=d)
    assert second["peer"] == peer and second["channel"] != opened["channel"]
    assert len(c.js("--home", "c", "channel", "list")["channels"]) == 3
    # a restart comes back at the same address: the bare PeerID still works
    assert node.stop() == 0
    node = Node(d, "p", "--service", f"echo={PRICE}")
    nodes.append(node)
    assert ok("--home", "c", "call", peer, "echo", "back", "--max-price", "1000", cwd=d) == (
        "back\n"
    )
    # the peer is down: UNREACHABLE for a bare PeerID too
    assert node.stop() == 0
    line = fails("--home", "c", "call", peer, "echo", "x", "--max-price", "1000", cwd=d)
    assert line.startswith(f"p2pay: error: UNREACHABLE: cannot reach {peer} at ")


def test_node_run_on_a_taken_config_port_says_what_to_do(world: dict[str, Any]) -> None:  # noqa: F811
    d: Path = world["dir"]
    listen = read_config(d / "p" / "config.toml").listen[0]
    port = int(listen.rsplit("/", 1)[1])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        line = fails("--home", "p", "node", "run", "--service", f"echo={PRICE}", cwd=d)
    assert line == (
        f"p2pay: error: cannot listen on {listen}: address already in use (another process or "
        "node holds this port): pass --listen (e.g. /ip4/127.0.0.1/tcp/0), or edit listen in "
        "the home's config.toml"
    )


@pytest.mark.slow
def test_a_channel_with_too_short_a_challenge_does_not_break_calls(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    """protocol.md 17: the payee's minimum challenge period is not in its hello; it states
    it when it refuses a channel (CHALLENGE_TOO_SHORT). The payer then calls on another
    open channel to it, remembers the minimum (a shorter `channel open` is refused before
    any escrow moves) and, with no accepted channel left, names the refused one and what
    to do. No message names an option `call` does not have."""
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    peer = world["p"]["peer_id"]
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "2s")
    node = Node(d, "p", "--service", f"echo={PRICE}", "--min-challenge", "1m")
    nodes.append(node)
    good = js("--home", "c", "channel", "open", node.addr, "--deposit", "1 milli",
              "--challenge", "2m", cwd=d)["channel"]  # fmt: skip
    short = js("--home", "c", "channel", "open", peer, "--deposit", "2 milli",
               "--challenge", "1s", cwd=d)["channel"]  # fmt: skip
    # the new channel has more credit: it is tried first, refused, and the call goes on
    proc = p2pay("--home", "c", "call", peer, "echo", "hi", "--max-price", "1000", cwd=d)
    assert proc.returncode == 0 and proc.stdout == "hi\n", proc.stderr
    assert f"refused channel {short}" in proc.stderr and "--challenge" not in proc.stderr
    doc = js("--home", "c", "call", peer, "echo", "again", "--max-price", "1000", cwd=d)
    assert doc["channel"] == good
    # the minimum is known now: a shorter channel is refused before any escrow moves
    before = money(world, "c")
    line = fails("--home", "c", "channel", "open", peer, "--deposit", "1 milli",
                 "--challenge", "30s", cwd=d)  # fmt: skip
    assert line == (
        "p2pay: error: CHALLENGE_TOO_SHORT: --challenge 30s is below this payee's minimum of "
        "1m (it refused a shorter channel before); nothing was locked: run `channel open` "
        "again with --challenge 1m or more"
    )
    assert money(world, "c") == before
    # no accepted channel left: the error names the refused one and `channel close`
    c.ok("--home", "c", "channel", "close", good[:8])
    line = fails("--home", "c", "call", peer, "echo", "x", "--max-price", "1000", cwd=d)
    assert line.startswith(
        f"p2pay: error: CHALLENGE_TOO_SHORT: this payee refuses channel {short[:8]}…"
    ), line
    assert f"`channel close {short[:16]}`" in line and "--challenge 1m" in line
    assert "`channel open PEER --challenge 1m`" in line
