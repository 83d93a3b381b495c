"""The command line around claims (specs/claims.md section 6; issue 13 items 1 and 8):
`claims list` shows outcomes, `call` says what a claim risks, ledgers give payees time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from test_cli import InProcess, cli, world  # noqa: F401 - fixtures

from p2pay.cli.home import Home
from p2pay.cli.main import timeout_advice
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
) -> None:
    c: InProcess = world["cli"]
    d: Path = world["dir"]
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "60s")
    cid = bytes.fromhex(
        c.js("--home", "c", "channel", "open", world["p"]["peer_id"], "--deposit", "10 milli")[
            "channel"
        ]
    )
    client, provider = Home(d / "c").key(), Home(d / "p").key()

    async def play() -> tuple[list[bytes], int]:
        led = await SqliteLedger.open(d / "ledger.sqlite")
        try:
            now = await led.now()
            requests = [
                Request.create(
                    client, ledger=led.ledger_id, channel=cid, n=n, paid=n * PRICE, price=PRICE,
                    service="echo", body=b"%d" % n, deadline=now - 1,
                )
                for n in (1, 2, 3)
            ]  # fmt: skip
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
            return ids, led.params.claim_bond
        finally:
            await led.aclose()

    ids, bond = trio.run(play)
    rows = {r["claim"]: r for r in c.js("--home", "c", "claims", "list")["claims"]}
    delivered, refused, pending = (rows[i.hex()] for i in ids)
    assert delivered["role"] == "claimant"
    assert (delivered["outcome"], delivered["status"], delivered["bond_to"]) == (
        "delivered",
        "OK",
        "claimant",
    )
    assert delivered["bond_returned"] is True
    # amounts are strings in JSON, as everywhere
    assert (delivered["bond"], delivered["refund"], delivered["slashed"]) == (str(bond), "0", "0")
    assert (refused["outcome"], refused["status"], refused["bond_returned"]) == (
        "refused",
        "HANDLER_ERROR",
        True,
    )
    # a refusal refunds the request's price (from escrow: nothing was redeemed, none clawed)
    assert (refused["refund"], refused["clawed"]) == (str(PRICE), "0")
    assert (pending["outcome"], pending["status"], pending["bond_to"]) == ("open", "", "")
    assert pending["bond_returned"] is None
    text = c.ok("--home", "c", "claims", "list")
    assert "delivered" in text and "HANDLER_ERROR" in text and "bond_to" in text
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
        assert f"bond of {bond}" in advice and "until the provider answers" in advice
        assert "comes back unless the claim is frivolous" in advice
