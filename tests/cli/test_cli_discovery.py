"""Find and pay on the command line (issue 17, "Done when"): three homes on one machine
sharing one SQLite ledger, a bootstrap `node run` with no services, a provider
`node run --service echo=...` with a stake and `--bootstrap`, and a client that knows only
the bootstrap address. `p2pay find echo --json` lists the provider's offer and
`p2pay call any echo hello --max-price 1000` returns the answer, paid. With two providers
and one stopped, `call any` still succeeds through the other.

Real processes on 127.0.0.1 (libp2p: gossipsub, the Kademlia DHT, the offers fetch
protocol), each bounded by a timeout; nodes stopped in a ``finally`` (the `nodes` fixture).
"""

from __future__ import annotations

import json
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
from p2pay.cli.render import short
from p2pay.node import DiscoveryConfig

TIMEOUT = 90  # seconds for one discovery command (libp2p start, DHT lookup, fetch)


def find_both(d: Path, bootstrap: str, peers: set[str]) -> list[dict[str, Any]]:
    """`find echo` until it lists the offers of `peers` (their DHT records are put once
    each provider has joined: a moment after it prints its address), at most 5 times."""
    for _ in range(5):
        doc = js("--home", "c", "find", "echo", "--bootstrap", bootstrap, cwd=d, timeout=TIMEOUT)
        if {o["peer"] for o in doc["offers"]} == peers:
            break
    assert {o["peer"] for o in doc["offers"]} == peers, doc
    offers: list[dict[str, Any]] = doc["offers"]
    return offers


def stake(c: InProcess, home: str) -> None:
    c.ok("--home", home, "stake", "1 token", "--penalty", "100 milli", "--claim-window", "2s")


def two_providers(
    w: dict[str, Any], running: list[Node], *cheaper_args: str
) -> tuple[str, str, Node, Node]:
    """A bootstrap node (home b) and two staked providers of echo joined through it: p at
    PRICE and q (a new home, minted 2 token) at half of it, started with `cheaper_args`.
    Returns p's and q's PeerIDs, the bootstrap node and q's node (all in `running`)."""
    d: Path = w["dir"]
    c: InProcess = w["cli"]
    provider = w["p"]["peer_id"]
    other = c.js("--home", "q", "init", "--ledger", "sqlite:ledger.sqlite")["peer_id"]
    c.ok("--home", "q", "ledger", "mint", other, "2 token")
    c.js("--home", "b", "init", "--ledger", "sqlite:ledger.sqlite")
    stake(c, "p")
    stake(c, "q")
    bootstrap = Node(d, "b")
    running.append(bootstrap)
    running.append(Node(d, "p", "--service", f"echo={PRICE}", "--bootstrap", bootstrap.addr))
    cheaper = Node(d, "q", "--service", f"echo={PRICE // 2}", *cheaper_args,
                   "--bootstrap", bootstrap.addr)  # fmt: skip
    running.append(cheaper)
    return provider, other, bootstrap, cheaper


def test_init_writes_the_discovery_defaults(world: dict[str, Any]) -> None:  # noqa: F811
    d: Path = world["dir"]
    found = read_config(d / "c" / "config.toml").discovery
    assert found.bootstrap == [] and found.announce_interval_ms == 60_000
    assert (found.deposit_calls, found.max_deposit, found.max_attempts) == (1000, 10**22, 3)
    # the command line's defaults are the library's (p2pay.cli.home keeps its own copy)
    lib = DiscoveryConfig()
    for name in ("announce_interval_ms", "deposit_calls", "max_deposit", "max_attempts"):
        assert getattr(found, name) == getattr(lib, name), name
    text = (d / "c" / "config.toml").read_text()
    assert "[discovery]" in text and 'max_deposit = "0.01 token"' in text


def test_find_and_call_any_need_a_bootstrap_peer(world: dict[str, Any]) -> None:  # noqa: F811
    c: InProcess = world["cli"]
    line = c.fails("--home", "c", "find", "echo")
    assert line.startswith("p2pay: error: no bootstrap peer to find providers through")
    line = c.fails("--home", "c", "call", "any", "echo", "x", "--max-price", "1000")
    assert line.startswith("p2pay: error: no bootstrap peer")
    line = c.fails("--home", "c", "find", "echo", "--bootstrap", "/ip4/127.0.0.1/tcp/1")
    assert "--bootstrap '/ip4/127.0.0.1/tcp/1' is not a peer's multiaddr" in line
    peer = world["p"]["peer_id"]
    line = c.fails("--home", "c", "call", peer, "echo", "x", "--max-price", "1",
                   "--bootstrap", f"/ip4/127.0.0.1/tcp/1/p2p/{peer}")  # fmt: skip
    assert "--bootstrap is for `call any`" in line
    # a bad [discovery] in config.toml: one line naming the setting
    path = world["dir"] / "c" / "config.toml"
    path.write_text(path.read_text().replace("max_attempts = 3", "max_attempts = 0"))
    line = c.fails("--home", "c", "find", "echo")
    assert "[discovery] max_attempts must be an integer in [1, 64]" in line


def test_find_and_call_any_fail_when_no_bootstrap_peer_is_reached(
    world: dict[str, Any],  # noqa: F811
) -> None:
    """Nobody listens at the bootstrap address: not "no live offer" and exit 0, but
    UNREACHABLE naming the address tried, in one line (one JSON object with --json)."""
    d: Path = world["dir"]
    dead = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{world['p']['peer_id']}"
    line = fails("--home", "c", "find", "echo", "--bootstrap", dead, "--wait", "5", cwd=d)
    assert line.startswith(
        f"p2pay: error: UNREACHABLE: cannot join the network: no bootstrap peer reached: {dead} ("
    ), line
    assert "cannot reach" not in line and "('127.0.0.1'" not in line
    proc = p2pay("--home", "c", "call", "any", "echo", "x", "--max-price", "1000",
                 "--bootstrap", dead, "--json", cwd=d)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1
    error = json.loads(proc.stderr)["error"]
    assert error["code"] == "UNREACHABLE" and list(error["details"]["bootstrap"]) == [dead]


@pytest.mark.slow
def test_find_and_pay_from_three_homes(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider = world["p"]["peer_id"]
    c.js("--home", "b", "init", "--ledger", "sqlite:ledger.sqlite")
    stake(c, "p")
    bootstrap = Node(d, "b")  # no services: a bootstrap node
    nodes.append(bootstrap)
    nodes.append(Node(d, "p", "--service", f"echo={PRICE}", "--bootstrap", bootstrap.addr))
    # the client knows only the bootstrap address
    doc = js("--home", "c", "find", "echo", "--bootstrap", bootstrap.addr, cwd=d, timeout=TIMEOUT)
    assert doc["service"] == "echo"
    (offer,) = doc["offers"]
    assert offer["peer"] == provider and offer["price"] == str(PRICE)
    assert offer["stake"] == str(10**24) and offer["penalty"] == str(10**23)
    assert offer["claim_window_ms"] == 2000 and offer["seen_ms_ago"] >= 0
    # an offer carries no time it was made: when it expires, not an "age"
    assert 0 < offer["expires_in_ms"] <= 3 * 60_000 and "age_ms" not in offer
    assert offer["addrs"] and all(a.endswith(f"/p2p/{provider}") for a in offer["addrs"])
    proc = p2pay("--home", "c", "call", "any", "echo", "hello", "--max-price", "1000",
                 "--bootstrap", bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "hello\n", proc.stderr
    # what it did, on stderr: which provider, the price, the channel it opened
    (ch,) = c.js("--home", "c", "channel", "list")["channels"]
    assert proc.stderr == (
        f"via {short(provider, 4)} (price 1000 yocto; opened channel {short(ch['channel'], 4)}, "
        "deposit 0.000000000000000001 token)\n"
    )
    # paid: one channel to the provider, 1000 yocto spent, under the deposit policy
    assert ch["peer"] == provider and ch["spent"] == str(PRICE)
    assert ch["deposit"] == str(1000 * PRICE)  # deposit_calls x price, below max_deposit
    # the human listing
    text = ok("--home", "c", "find", "echo", "--bootstrap", bootstrap.addr, cwd=d,
              timeout=TIMEOUT)  # fmt: skip
    assert provider in text and "offers of echo" in text and "expires in" in text
    # offers outside the terms: said, with the nearest terms (not "no live offer")
    text = ok("--home", "c", "find", "echo", "--max-price", "999", "--bootstrap",
              bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert text == "no offer of 'echo' at or below 999 yocto; 1 offer above (lowest 1000 yocto)\n"
    doc = js("--home", "c", "find", "echo", "--min-stake", "2 token", "--bootstrap",
             bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert doc["offers"] == [] and doc["left_out"] == {
        "above_max_price": 0,
        "lowest_price": None,
        "below_min_stake": 1,
        "highest_stake": str(10**24),
    }
    # the same call with --json: which provider answered, every attempt
    doc = js("--home", "c", "call", "any", "echo", "again", "--max-price", "1000",
             "--bootstrap", bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert doc["body"] == "again" and doc["peer"] == provider
    assert [(a["peer"], a["outcome"]) for a in doc["attempts"]] == [(provider, "ok")]
    assert doc["opened"] is False and doc["deposit"] == str(1000 * PRICE)
    (ch,) = c.js("--home", "c", "channel", "list")["channels"]  # the channel was reused
    assert ch["spent"] == str(2 * PRICE)
    # nothing within --max-price: NO_PROVIDER, one line, JSON with --json
    proc = p2pay("--home", "c", "call", "any", "echo", "x", "--max-price", "999",
                 "--bootstrap", bootstrap.addr, "--json", cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert json.loads(proc.stderr)["error"]["code"] == "NO_PROVIDER"
    line = fails("--home", "c", "call", "any", "echo", "x", "--max-price", "999",
                 "--bootstrap", bootstrap.addr, cwd=d)  # fmt: skip
    assert line.startswith("p2pay: error: NO_PROVIDER: no offer of 'echo' at or below --max-price")
    assert line.endswith("; 1 offer above (lowest 1000 yocto) (p2pay find lists the offers)")
    # nobody offers it at all: said so, not a price problem
    line = fails("--home", "c", "call", "any", "nosuch", "x", "--max-price", "999",
                 "--bootstrap", bootstrap.addr, cwd=d)  # fmt: skip
    assert (
        line == "p2pay: error: NO_PROVIDER: nobody offers 'nosuch': no live offer of it was found"
    )


@pytest.mark.slow
def test_call_any_succeeds_with_one_of_two_providers_stopped(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider, other, bootstrap, cheaper = two_providers(world, nodes)
    offers = find_both(d, bootstrap.addr, {provider, other})
    assert offers[0]["peer"] == other  # the cheaper first
    assert cheaper.stop() == 0
    # its offer lives on (the bootstrap node holds what it received on the topic) until it
    # expires: a stopped provider stays listed until then
    find_both(d, bootstrap.addr, {provider, other})
    doc = js("--home", "c", "call", "any", "echo", "hello", "--max-price", "1000",
             "--bootstrap", bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert doc["body"] == "hello" and doc["peer"] == provider
    assert doc["attempts"][-1] == {"peer": provider, "outcome": "ok", "code": "", "message": ""}
    # the stopped provider's offer is still known: it was tried first, found unreachable
    assert [(a["peer"], a["outcome"]) for a in doc["attempts"]] == [
        (other, "unreachable"),
        (provider, "ok"),
    ]
    (ch,) = c.js("--home", "c", "channel", "list")["channels"]
    assert ch["peer"] == provider and ch["spent"] == str(PRICE)
    # the next process remembers the failure (this home's store): the stopped provider,
    # still the cheapest offer, is no longer tried first
    proc = p2pay("--home", "c", "call", "any", "echo", "again", "--max-price", "1000",
                 "--bootstrap", bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "again\n", proc.stderr
    assert (
        proc.stderr
        == f"via {short(provider, 4)} (price 1000 yocto; channel {short(ch['channel'], 4)})\n"
    )


@pytest.mark.slow
def test_call_any_fails_over_when_the_best_provider_refuses(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    # the cheaper provider refuses every channel with a challenge period under an hour:
    # `call any` opens one with the default (60 s), its first request is refused
    provider, other, bootstrap, _ = two_providers(world, nodes, "--min-challenge", "1h")
    find_both(d, bootstrap.addr, {provider, other})
    doc = js("--home", "c", "call", "any", "echo", "hello", "--max-price", "1000",
             "--bootstrap", bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert doc["body"] == "hello" and doc["peer"] == provider
    assert [(a["peer"], a["outcome"], a["code"]) for a in doc["attempts"]] == [
        (other, "refused", "CHALLENGE_TOO_SHORT"),
        (provider, "ok", ""),
    ]
    spent = {ch["peer"]: ch["spent"] for ch in c.js("--home", "c", "channel", "list")["channels"]}
    assert spent == {other: "0", provider: str(PRICE)}  # the refusal charged nothing


@pytest.mark.slow
def test_call_any_explains_a_timed_out_paid_request(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    """The only provider takes the paid request and never answers: `call any` says what
    `call PEER` says of it (on record, re-sent then claimed by `node run`, the bond)."""
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider = world["p"]["peer_id"]
    c.js("--home", "b", "init", "--ledger", "sqlite:ledger.sqlite")
    stake(c, "p")
    bootstrap = Node(d, "b")
    nodes.append(bootstrap)
    nodes.append(Node(d, "p", "--service", f"echo={PRICE}", "--drop-rate", "1",
                      "--bootstrap", bootstrap.addr))  # fmt: skip
    find_both(d, bootstrap.addr, {provider})
    line = fails("--home", "c", "call", "any", "echo", "x", "--max-price", "1000",
                 "--timeout", "2", "--bootstrap", bootstrap.addr, cwd=d)  # fmt: skip
    assert line.startswith(
        f"p2pay: error: NO_PROVIDER: no provider of 'echo' served the call: {provider} timed "
        "out (DEADLINE_EXCEEDED: "
    ), line
    assert "the paid request is on record: `p2pay node run` on this home re-sends it" in line
    assert "A claim locks a bond of" in line and "timed_out" not in line


@pytest.mark.slow
def test_an_address_learned_by_call_any_serves_a_bare_peer_id(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    """protocol.md 19.2: a bare PeerID is dialled at the address it was reached at most
    recently. The provider restarts on a new port; `call any` reaches it there; a bare
    PeerID then uses that address, not the first one ever given."""
    d: Path = world["dir"]
    c: InProcess = world["cli"]
    provider = world["p"]["peer_id"]
    c.js("--home", "b", "init", "--ledger", "sqlite:ledger.sqlite")
    stake(c, "p")
    bootstrap = Node(d, "b")
    nodes.append(bootstrap)
    first = Node(d, "p", "--service", f"echo={PRICE}", "--listen", "/ip4/127.0.0.1/tcp/0")
    nodes.append(first)
    js("--home", "c", "channel", "open", first.addr, "--deposit", "1 milli", cwd=d)
    assert ok("--home", "c", "call", first.addr, "echo", "one", "--max-price", "1000",
              cwd=d) == "one\n"  # fmt: skip
    assert first.stop() == 0
    again = Node(d, "p", "--service", f"echo={PRICE}", "--listen", "/ip4/127.0.0.1/tcp/0",
                 "--bootstrap", bootstrap.addr)  # fmt: skip
    nodes.append(again)
    assert again.addr != first.addr
    find_both(d, bootstrap.addr, {provider})
    out = ok("--home", "c", "call", "any", "echo", "two", "--max-price", "1000",
             "--bootstrap", bootstrap.addr, cwd=d, timeout=TIMEOUT)  # fmt: skip
    assert out == "two\n"
    assert ok("--home", "c", "call", provider, "echo", "three", "--max-price", "1000",
              cwd=d) == "three\n"  # fmt: skip
    # the peer is down: UNREACHABLE names the address tried and says to give the full one
    assert again.stop() == 0
    line = fails("--home", "c", "call", provider, "echo", "x", "--max-price", "1000", cwd=d)
    assert line.startswith(f"p2pay: error: UNREACHABLE: cannot reach {provider} at ")
    assert "give its full multiaddr once" in line and again.addr.split("/p2p/")[0] in line
