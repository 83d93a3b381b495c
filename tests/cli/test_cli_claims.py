"""The command line around claims (specs/claims.md section 6; issue 13 items 1 and 8):
`claims list` shows outcomes, `call` says what a claim risks, ledgers give payees time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    Node,
    cli,
    fails,
    js,
    nodes,
    p2pay,
    table_rows,
    world,
)

from p2pay.cli import render
from p2pay.cli.home import Home
from p2pay.cli.main import timeout_advice
from p2pay.core.amounts import format_tokens
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, refusal_body
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

PRICE = 1000


def test_ledger_create_defaults_give_payees_time_to_react(cli: InProcess) -> None:  # noqa: F811
    doc = cli.js("ledger", "create", "l.sqlite", "--dev")
    assert doc["min_challenge_ms"] >= 60_000
    assert doc["min_claim_window_ms"] >= 60_000
    short = cli.js("ledger", "create", "s.sqlite", "--dev", "--min-challenge", "1s")
    assert short["min_challenge_ms"] == 1_000


def test_claims_list_shows_outcome_status_bond_refund_and_slash(
    world: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every outcome (specs/claims.md 3), in --json and in the table, with the same values:
    delivered / refused / upheld give the bond back, frivolous loses it to the provider,
    an open claim holds it; upheld slashes the penalty and refunds the price."""
    c: InProcess = world["cli"]
    d: Path = world["dir"]
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "60s")
    cid = bytes.fromhex(
        c.js(
            "--home",
            "c",
            "channel",
            "open",
            world["p"]["peer_id"],
            "--deposit",
            "10 milli",
            "--offline",
        )["channel"]
    )
    client, provider = Home(d / "c").key(), Home(d / "p").key()

    async def play() -> tuple[list[bytes], int, list[int]]:
        led = await SqliteLedger.open(d / "ledger.sqlite")
        try:
            now = await led.now()

            def request(n: int, body: bytes) -> Request:
                return Request.create(
                    client, ledger=led.ledger_id, channel=cid, n=n, paid=n * PRICE, price=PRICE,
                    service="echo", body=body, deadline=now - 1,
                )  # fmt: skip

            requests = [request(n, b"%d" % n) for n in (1, 2, 3, 4, 5)]
            ids = [await led.file_claim(client, r) for r in requests]
            answer = Response.create(
                provider, request=requests[0], status="OK", price=PRICE, spent=PRICE, body=b"1"
            )
            await led.answer_claim(provider, ids[0], answer)
            refusal = Response.create(
                provider,
                request=requests[1],
                status="HANDLER_ERROR",
                price=0,
                spent=PRICE,
                body=refusal_body("handler failed"),
            )
            await led.answer_claim(provider, ids[1], refusal)
            # the same n signed twice by the client: a conflict, the claim is frivolous
            await led.answer_claim(provider, ids[2], evidence=request(3, b"other"))
            ends = [(await led.claim(i)).window_ends for i in ids]  # type: ignore[union-attr]
        finally:
            await led.aclose()
        # no answer to n=4 in its window: upheld (ledger time moved past the window)
        later = await SqliteLedger.open(d / "ledger.sqlite", clock=lambda: ends[3] + 1)
        try:
            await later.resolve_claim(client, ids[3])
            return ids, later.params.claim_bond, ends
        finally:
            await later.aclose()

    ids, bond, ends = trio.run(play)
    doc = c.js("--home", "c", "claims", "list")
    rows = {r["claim"]: r for r in doc["claims"]}
    delivered, refused, frivolous, upheld, pending = (rows[i.hex()] for i in ids)
    keys = ("role", "outcome", "status", "bond_outcome", "bond_to", "bond_returned")
    assert [
        tuple(r[k] for k in keys) for r in (delivered, refused, frivolous, upheld, pending)
    ] == [
        ("claimant", "delivered", "OK", "returned", "claimant", True),
        ("claimant", "refused", "HANDLER_ERROR", "returned", "claimant", True),
        ("claimant", "frivolous", "", "lost to the respondent", "respondent", False),
        ("claimant", "upheld", "", "returned", "claimant", True),
        ("claimant", "open", "", "locked", "", None),
    ]
    # amounts are strings of yocto in JSON, as everywhere; times are Unix ms
    money = ("bond", "refund", "clawed", "slashed", "price")
    penalty = str(10**23)
    assert [
        tuple(r[k] for k in money) for r in (delivered, refused, frivolous, upheld, pending)
    ] == [
        (str(bond), "0", "0", "0", str(PRICE)),
        (str(bond), str(PRICE), "0", "0", str(PRICE)),
        (str(bond), "0", "0", "0", str(PRICE)),
        (str(bond), str(PRICE), "0", penalty, str(PRICE)),
        (str(bond), "0", "0", "0", str(PRICE)),
    ]
    assert [r["window_ends"] for r in (delivered, refused, frivolous, upheld, pending)] == ends
    # the table says the same, amounts as yocto and tokens, times as ISO 8601 UTC
    monkeypatch.setattr(render.stdout, "width", 400)  # one line per cell, to read it back
    text = c.ok("--home", "c", "claims", "list")
    header = next(line for line in text.splitlines() if line.startswith("┃"))
    assert [h.strip() for h in header.strip("┃").split("┃")] == [
        "claim", "role", "outcome", "status", "n", "bond", "bond_outcome", "refund", "slashed",
        "window_ends",
    ]  # fmt: skip
    table = {r[0]: r for r in table_rows(text)}
    bond_cell = f"{bond} {format_tokens(bond)} token"
    price_cell = f"{PRICE} {format_tokens(PRICE)} token"
    expect = [
        ("delivered", "OK", "1", "returned", "0 0 token", "0 0 token"),
        ("refused", "HANDLER_ERROR", "2", "returned", price_cell, "0 0 token"),
        ("frivolous", "", "3", "lost to the respondent", "0 0 token", "0 0 token"),
        ("upheld", "", "4", "returned", price_cell, f"{penalty} 0.1 token"),
        ("open", "", "5", "locked", "0 0 token", "0 0 token"),
    ]
    for claim_id, (outcome, status, n, bond_outcome, refund, slashed), end in zip(
        ids, expect, ends, strict=True
    ):
        assert table[render.short(claim_id)] == [
            render.short(claim_id), "claimant", outcome, status, n, bond_cell, bond_outcome,
            refund, slashed, render.iso_time(end),
        ]  # fmt: skip
    assert render.iso_time(ends[0]).endswith("Z") and "T" in render.iso_time(ends[0])
    theirs = c.js("--home", "p", "claims", "list")["claims"]
    assert {r["role"] for r in theirs} == {"respondent"}


async def test_a_call_timeout_says_what_a_claim_risks() -> None:
    bond = 7 * 10**18
    ledger = MemoryLedger(
        Params(ledger_id=b"p2pay:test:advice", dev=True, claim_bond=bond, min_claim_window_ms=1)
    )
    alice, bob = Keypair.from_seed(b"\x01" * 32), Keypair.from_seed(b"\x02" * 32)
    for key in (alice, bob):
        await ledger.mint(key, key.account, 10**24)

    async def echo(call: Call) -> bytes:
        return call.body

    net = MemoryNetwork()
    config = NodeConfig(watcher=False)
    async with (
        open_node(key=bob, ledger=ledger, network=net, config=config) as provider,
        open_node(key=alice, ledger=ledger, network=net, config=config) as client,
    ):
        provider.serve("echo", echo, price=PRICE)
        advice = await timeout_advice(client, provider.addrs[0], "no answer within 1 s")
        assert advice.startswith("no answer within 1 s; ")
        assert "cannot be claimed" in advice and "bond of" not in advice
        await provider.stake(10**20, penalty=10**19, claim_window_ms=120_000)
        advice = await timeout_advice(client, provider.addrs[0], "no answer within 1 s")
        assert "re-sends it" in advice and "only if that brings no answer" in advice
        assert f"bond of 0.000007 token ({bond} yocto)" in advice
        assert "until the provider answers" in advice
        assert "comes back unless the claim is frivolous" in advice


@pytest.mark.slow
def test_the_client_watcher_re_sends_before_it_claims(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    """README and claims.md 6: after the deadline the client's watcher re-sends the same
    signed request; the provider answers it from its store (here its signed refusal
    DEADLINE_EXCEEDED: the handler finished late, nothing charged), so no claim is filed
    and no bond is locked. The watcher runs in a new process: it dials the provider at the
    address the home's address book holds."""
    import time

    d: Path = world["dir"]
    c: InProcess = world["cli"]
    (d / "slowmod.py").write_text(
        "import trio\n\nasync def slow(call):\n    await trio.sleep(4)\n    return b'late'\n",
        encoding="utf-8",
    )
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "30s")
    provider = Node(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0",
                    "--service", f"slow={PRICE}:slowmod:slow")  # fmt: skip
    nodes.append(provider)
    js("--home", "c", "channel", "open", provider.addr, "--deposit", "1 milli", cwd=d)
    proc = p2pay("--home", "c", "call", provider.addr, "slow", "again", "--max-price",
                 str(PRICE), "--timeout", "2", "--json", cwd=d)  # fmt: skip
    assert proc.returncode != 0 and proc.stdout == "", proc.stdout
    error = json.loads(proc.stderr)["error"]
    # the library's code, not the CLI's INVALID_ARGUMENT (as `call any` reports it)
    assert error["code"] == "DEADLINE_EXCEEDED", error
    assert "no answer from" in error["message"] and "re-sends it" in error["message"], error
    time.sleep(3)  # the handler has finished (late): the provider stored its refusal
    watcher = Node(d, "c", "--listen", "/ip4/127.0.0.1/tcp/0")
    nodes.append(watcher)
    # the watcher waits claim_grace (5 s) after the deadline, then re-sends
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1)
        if "re-delivered" in watcher.log.read_text(errors="replace"):
            break
    assert watcher.stop() == 0
    assert "re-delivered n=1: DEADLINE_EXCEEDED, no claim" in watcher.stderr, watcher.stderr
    assert "filed claim" not in watcher.stderr
    assert c.js("--home", "c", "claims", "list")["claims"] == []
    (ch,) = c.js("--home", "c", "channel", "list")["channels"]
    assert ch["spent"] == "0"  # nothing charged for the late answer
    assert p2pay("--home", "c", "claims", "list", cwd=d).stdout == "no claims\n"


@pytest.mark.slow
def test_conformance_from_a_client_home_raises_no_alarm_in_its_watcher(
    world: dict[str, Any],  # noqa: F811
    nodes: list[Node],  # noqa: F811
) -> None:
    """claims.md 6: `p2pay conformance` pays with the home's key on a channel of its own,
    outside the home's store; the honest provider redeems those vouchers. The home's
    node then adopts the channel from the ledger (what the ledger saw of those vouchers
    counted as forgotten, protocol.md 15) and its watcher must not take that redeem for a
    payee taking more than its receipts justify (no warning, no refund claim)."""
    import time

    d: Path = world["dir"]
    c: InProcess = world["cli"]
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "30s")
    provider = Node(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}",
                    "--min-challenge", "1s")  # fmt: skip
    nodes.append(provider)
    proc = p2pay("--home", "c", "conformance", provider.addr, "--case", "paid.", "--timeout",
                 "10", cwd=d)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  paid." in proc.stdout and " 0 failed" in proc.stdout
    # the run started its channels' close: the provider's watcher redeems what it charged
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chans = c.js("--home", "c", "channel", "list")["channels"]
        if any(int(ch["redeemed"]) > 0 for ch in chans):
            break
        time.sleep(0.5)
    assert any(int(ch["redeemed"]) > 0 for ch in chans), chans
    watcher = Node(d, "c", "--listen", "/ip4/127.0.0.1/tcp/0")
    nodes.append(watcher)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "adopted channel" not in watcher.log.read_text():
        time.sleep(0.5)
    time.sleep(2)  # a few watcher steps: the start-up check of what the payee took runs
    assert watcher.stop() == 0
    assert "more than our receipts justify" not in watcher.stderr, watcher.stderr
    assert "level=warning" not in watcher.stderr, watcher.stderr
    assert "adopted channel" in watcher.stderr  # said once, as information
    assert c.js("--home", "c", "claims", "list")["claims"] == []
