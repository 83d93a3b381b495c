"""What a failed command says (issue 16, "Claims and money on screen" and item 2's CLI side):
one line on stderr (one JSON object with --json), amounts with units, the options the user
typed, ISO 8601 UTC times, CLI commands rather than library methods; bare groups show
their help."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_cli import InProcess, cli, fails, free_port, p2pay, world  # noqa: F401 - fixtures

from p2pay.cli import render
from p2pay.cli.errors import LARGEST_AMOUNT, explain, wants_json
from p2pay.core.amounts import MAX_YOCTO, format_tokens
from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

TOKEN = 10**24


def amount(yocto: int) -> str:
    return f"{format_tokens(yocto)} token ({yocto} yocto)"


def test_amounts_and_times_read_for_a_person() -> None:
    assert render.amount_text(3 * 10**21) == "0.003 token (3000000000000000000000 yocto)"
    assert render.amount_text(0) == "0 token (0 yocto)"
    assert render.amount_text(MAX_YOCTO) == (
        f"340282366920938.463463374607431768211455 token ({MAX_YOCTO} yocto)"
    )
    assert render.iso_time(1796440656641) == "2026-12-05T03:17:36.641Z"
    assert render.iso_time(1796440656000) == "2026-12-05T03:17:36Z"
    assert render.iso_time(10**18).startswith(f"{10**18} ms after 1970")
    assert render.field_text("amount", 5) == "0.000000000000000000000005 token (5 yocto)"
    assert render.field_text("closes_at", 1796440656641) == "2026-12-05T03:17:36.641Z"
    assert render.field_text("n", 5) == "5"
    assert wants_json(["call", "x", "--json"]) and not wants_json(["call", "--", "--json"])


def test_money_errors_say_amounts_with_units(world: dict[str, Any]) -> None:  # noqa: F811
    c: InProcess = world["cli"]
    line = c.fails("--home", "p", "stake", "100 token", "--penalty", "1", "--claim-window", "60s")
    assert line == (
        f"p2pay: error: INSUFFICIENT_FUNDS: the free balance, {amount(2 * TOKEN)}, is below "
        f"the {amount(100 * TOKEN)} this needs (p2pay balance shows it)"
    )
    line = c.fails(
        "--home", "c", "channel", "open", world["p"]["peer_id"], "--deposit", "3 token", "--offline"
    )  # fmt: skip
    assert f"the {amount(3 * TOKEN)} this needs" in line


def test_errors_name_the_options_typed(world: dict[str, Any]) -> None:  # noqa: F811
    c: InProcess = world["cli"]
    peer = world["p"]["peer_id"]
    open_ = ("--home", "c", "channel", "open", peer, "--offline")
    line = c.fails(*open_, "--deposit", "1", "--challenge", "31d")
    assert line == "p2pay: error: INVALID_ARGUMENT: --challenge must be between 1s and 30d"
    line = c.fails("--home", "p", "stake", "1", "--penalty", "1", "--claim-window", "500ms")
    assert line == "p2pay: error: INVALID_ARGUMENT: --claim-window must be between 1s and 30d"
    line = c.fails(*open_, "--deposit", "0")
    assert line == (
        f"p2pay: error: INVALID_AMOUNT: --deposit must be more than 0 (and at most "
        f"{LARGEST_AMOUNT})"
    )
    for text in (line, LARGEST_AMOUNT):
        assert "_ms" not in text and "window must" not in text


def test_with_json_an_error_is_one_json_object_on_stderr(world: dict[str, Any]) -> None:  # noqa: F811
    c: InProcess = world["cli"]
    code, out, err = c.run(
        "--home", "p", "stake", "100 token", "--penalty", "1", "--claim-window", "60s", "--json"
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err.endswith("\n") and err.count("\n") == 1
    assert json.loads(err) == {
        "error": {
            "code": "INSUFFICIENT_FUNDS",
            "message": (
                f"the free balance, {amount(2 * TOKEN)}, is below the {amount(100 * TOKEN)} "
                "this needs (p2pay balance shows it)"
            ),
            # amounts as strings of yocto, as in every JSON document
            "details": {"balance": str(2 * TOKEN), "needed": str(100 * TOKEN)},
        }
    }
    code, out, err = c.run("--home", "c", "channel", "open", "x", "--deposit", "-5", "--json")
    assert (code, out) == (2, "")
    doc = json.loads(err)
    assert doc["error"]["code"] == "USAGE"
    assert doc["error"]["details"] == {"command": "p2pay channel open", "parameter": "deposit"}
    assert "'-5' is negative" in doc["error"]["message"]
    code, out, err = c.run("--home", "nowhere", "balance", "--json")
    assert (code, out) == (1, "")
    assert json.loads(err)["error"]["code"] == "INVALID_ARGUMENT"
    assert "no p2pay home" in json.loads(err)["error"]["message"]


def test_long_and_negative_amounts(cli: InProcess) -> None:  # noqa: F811
    cli.ok("--home", "h", "init")
    cli.ok("ledger", "create", "l.sqlite", "--dev")
    mint = ("--home", "h", "ledger", "mint", "--ledger", "sqlite:l.sqlite", "ab" * 32)
    eighty = "1" * 80
    code, _out, err = cli.run(*mint, eighty)
    assert code == 2
    assert err == (
        "p2pay: error: Invalid value for 'AMOUNT': the 80-digit number is above the largest "
        f"amount, {LARGEST_AMOUNT} (see: p2pay ledger mint --help)\n"
    )
    assert "1" * 41 not in err  # never quoted as another (cut) number
    forty = "9" * 40
    assert f"'{forty}' is above the largest amount" in cli.fails(*mint, forty)
    assert "'400000000000000 token' is above the largest amount" in cli.fails(
        *mint, "400000000000000 token"
    )
    assert "the 70-character value is not an amount" in cli.fails(*mint, "1 " + "x" * 68)
    code, _out, err = cli.run(*mint, "-5")
    assert code == 2
    assert err == (
        "p2pay: error: Invalid value for 'AMOUNT': '-5' is negative: an amount is 0 or more "
        "(see: p2pay ledger mint --help)\n"
    )
    assert "'-1.5 token' is negative" in cli.fails(*mint, "-1.5 token")
    assert "'-5' is negative" in cli.fails(*mint, "--", "-5")
    assert "'-1s' is negative" in cli.fails(
        "--home", "h", "stake", "1", "--penalty", "1", "--claim-window", "-1s"
    )
    # a service's price and a duration: the same, never quoted cut short
    line = cli.fails("--home", "h", "node", "run", "--service", f"echo={eighty}")
    assert line == (
        "p2pay: error: service 'echo': price: the 80-digit number is above the largest "
        f"amount, {LARGEST_AMOUNT}"
    )
    line = cli.fails("--home", "h", "stake", "1", "--penalty", "1", "--claim-window", eighty)
    assert "duration the 80-digit number: use ms" in line and "1" * 41 not in line
    # an unknown option is still one, also where an amount may be typed
    line = cli.fails(*mint, "--frobnicate", "1")
    assert line == "p2pay: error: No such option '--frobnicate'. (see: p2pay ledger mint --help)"
    line = cli.fails("--home", "h", "call", "peer", "echo", "-5")
    assert line == (
        "p2pay: error: No such option '-5': an argument that starts with '-' goes after '--' "
        "(p2pay call ... -- -5) (see: p2pay call --help)"
    )


@pytest.mark.parametrize("group", [(), ("channel",), ("ledger",), ("claims",), ("node",)])
def test_bare_groups_show_their_help(cli: InProcess, group: tuple[str, ...]) -> None:  # noqa: F811
    """Click's convention (8.2+): a group run without a command prints its help on stderr
    and exits 2 (a usage error); --help prints it on stdout and exits 0."""
    code, out, err = cli.run(*group)
    assert (code, out) == (2, "")
    helped = cli.ok(*group, "--help")
    assert err == helped
    lines = err.splitlines()
    assert lines[0] == f"Usage: {' '.join(('p2pay', *group))} [OPTIONS] COMMAND [ARGS]..."
    assert "Commands:" in lines and "error" not in lines[0]


def test_bare_p2pay_in_a_real_process(tmp_path: Any) -> None:
    proc = p2pay(cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("Usage: p2pay [OPTIONS] COMMAND [ARGS]...\n")
    assert "\nCommands:\n" in proc.stderr


def test_times_are_iso_dates(world: dict[str, Any]) -> None:  # noqa: F811
    c: InProcess = world["cli"]
    cid = c.js(
        "--home", "c", "channel", "open", world["p"]["peer_id"], "--deposit", "1 milli",
        "--challenge", "1h", "--offline",
    )["channel"]  # fmt: skip
    closes_at = c.js("--home", "c", "channel", "close", cid)["closes_at"]
    out = c.ok("--home", "c", "channel", "close", cid)  # still in its challenge period
    assert out.splitlines() == [
        f"channel {cid} closing",
        f"finalize after {render.iso_time(closes_at)}: run this again, or use --wait",
    ]
    c.ok("--home", "p", "stake", "1 token", "--penalty", "1", "--claim-window", "60s")
    doc = c.js("--home", "p", "unstake")
    line = c.fails("--home", "p", "unstake", "--withdraw")
    assert line.startswith("p2pay: error: STAKE_LOCKED: ")
    assert "Unix" not in line and str(doc["unbonding_at"]) not in line
    events = c.js("--home", "p", "ledger", "events")["events"]
    table = c.ok("--home", "p", "ledger", "events")
    assert render.iso_time(events[-1]["at"]) in table and str(events[-1]["at"]) not in table


# ---------------------------------------------------------------------------
# the library's messages, rewritten: each from the real library, so that a change of a
# message there shows here


async def _settlement_message(op: Any) -> P2payError:
    try:
        await op
    except P2payError as exc:
        return exc
    raise AssertionError("the operation did not fail")


async def test_ledger_messages_in_the_users_terms() -> None:
    ledger = MemoryLedger(Params(ledger_id=b"p2pay:test:errors", dev=True, min_claim_window_ms=1))
    alice, bob = Keypair.from_seed(b"\x01" * 32), Keypair.from_seed(b"\x02" * 32)
    await ledger.mint(alice, alice.account, 5000)
    exc = await _settlement_message(ledger.stake(alice, 6000, 1, 1000))
    assert explain(exc.message, exc.details) == (
        f"the free balance, {amount(5000)}, is below the {amount(6000)} this needs "
        "(p2pay balance shows it)",
        {"balance": 5000, "needed": 6000},
    )
    exc = await _settlement_message(ledger.open_channel(alice, bob.account, 10, challenge_ms=1))
    message, details = explain(exc.message, exc.details)
    assert message.startswith("--challenge must be between ") and details["option"] == "--challenge"
    cid = await ledger.open_channel(alice, bob.account, 10, challenge_ms=60_000)
    await ledger.start_close(alice, cid)
    closes_at = (await ledger.channel(cid)).closes_at  # type: ignore[union-attr]
    exc = await _settlement_message(ledger.finalize_close(alice, cid))
    assert explain(exc.message, exc.details) == (
        f"the challenge period runs until {render.iso_time(closes_at)}: run this again after "
        "it, or use --wait",
        {"closes_at": closes_at},
    )
    exc = await _settlement_message(ledger.open_channel(alice, alice.account, 10, 60_000))
    assert explain(exc.message)[0] == (
        "PEER is this home's own identity: a channel needs another peer"
    )
    await ledger.stake(alice, 100, 2, 2000)
    exc = await _settlement_message(ledger.stake(alice, 1, 1, 2000))
    assert explain(exc.message)[0] == (
        "a bonded stake's --penalty and --claim-window can only grow (p2pay unstake, then "
        "stake again, to lower them)"
    )
    await ledger.request_unstake(alice)
    exc = await _settlement_message(ledger.withdraw_stake(alice))
    message, details = explain(exc.message, exc.details)
    assert message == (
        f"the stake unbonds at {render.iso_time(details['unbonding_at'])}: "
        "p2pay unstake --withdraw after it"
    )


async def test_node_messages_in_the_users_terms() -> None:
    ledger = MemoryLedger(Params(ledger_id=b"p2pay:test:errors", dev=True, min_claim_window_ms=1))
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
        provider.serve("echo", echo, price=1000)
        peer = provider.addrs[0]
        with pytest.raises(P2payError) as info:
            await client.call(peer, "echo", b"x", max_price=1000, timeout=5)
        message, _ = explain(info.value.message, info.value.details)
        assert message == (
            f"no open channel to {provider.peer_id}: run `p2pay channel open "
            f"{provider.peer_id} --deposit AMOUNT` first"
        )
        assert "open_channel" not in message
        with pytest.raises(P2payError) as info:
            await client.call(peer, "echo", b"x", max_price=999, timeout=5)
        message, details = explain(info.value.message, info.value.details)
        assert message == f"'echo' costs {amount(1000)}, above --max-price {amount(999)}"
        assert details == {"price": 1000, "max_price": 999}


def test_a_locked_stake_names_the_options() -> None:
    message = explain("penalty and window cannot change while claims are open")[0]
    assert message == (
        "--penalty and --claim-window cannot change while claims against the stake are open"
    )


def test_unknown_messages_stay_as_they_are() -> None:
    assert explain("something else", {"x": 1}) == ("something else", {"x": 1})
    # a field no option names is left alone
    assert explain("nonce must be an integer in [0, 5]")[0] == "nonce must be an integer in [0, 5]"


def test_real_process_json_error(tmp_path: Any) -> None:
    proc = p2pay("--home", "missing", "balance", "--json", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    doc = json.loads(proc.stderr)
    assert set(doc["error"]) == {"code", "message", "details"}
    assert "no p2pay home" in fails("--home", "missing", "balance", cwd=tmp_path)


def test_an_unreachable_peer_is_one_line_without_library_noise(
    world: dict[str, Any],  # noqa: F811
) -> None:
    """py-libp2p logs connection failures on loggers with no handler (Python's last resort
    printed them, unformatted); the command's own line is all a user sees (-v shows them
    as key=value lines)."""
    d = world["dir"]
    port = free_port()  # nothing listens there
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{world['p']['peer_id']}"
    call = ("--home", "c", "call", addr, "echo", "hi", "--max-price", "1000", "--timeout", "5")
    line = fails(*call, cwd=d)  # exactly one line on stderr
    assert world["p"]["peer_id"] in line
    proc = p2pay(*call, "--json", cwd=d)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert set(json.loads(proc.stderr)["error"]) == {"code", "message", "details"}
    loud = p2pay("-v", *call, cwd=d)
    assert loud.returncode == 1
    *logs, last = loud.stderr.splitlines()
    assert last.startswith("p2pay: error: ")
    assert all(x.startswith("t=") and " logger=" in x for x in logs), logs  # key=value lines
    # -v is p2pay's info lines: the network library's own lines only with -vv
    assert not [x for x in logs if " logger=libp2p" in x], logs
    louder = p2pay("-vv", *call, cwd=d)
    assert louder.returncode == 1
    *logs, last = louder.stderr.splitlines()
    assert last.startswith("p2pay: error: ")
    assert all(x.startswith("t=") and " logger=" in x for x in logs), logs


def test_help_says_where_json_errors_and_library_lines_go(tmp_path: Any) -> None:
    """--json's help names stderr for errors; -v's help says what the default shows."""
    text = " ".join(p2pay("channel", "list", "--help", cwd=tmp_path).stdout.split())
    assert "Print one JSON document on stdout." in text
    assert 'error goes to stderr as one JSON line {"error": {"code", "message", "details"}}' in text
    top = " ".join(p2pay("--help", cwd=tmp_path).stdout.split())
    assert "-v info, -vv debug and the network library's own lines" in top
    assert "Without it only warnings and errors" in top


def test_a_channel_prefix_that_matches_several_channels_is_refused() -> None:
    """`channel close`/`top-up` take a unique prefix: two matches name both, none is
    UNKNOWN_CHANNEL; a full id is taken as is."""
    import trio

    from p2pay.cli.common import resolve_channel
    from p2pay.cli.home import CliError

    class Channels:
        def __init__(self, ids: list[bytes]) -> None:
            self.ids = ids

        async def channels_of(self, account: bytes) -> list[Any]:
            return [type("C", (), {"id": i})() for i in self.ids]

    a = bytes.fromhex("9ccaaf66" + "11" * 28)
    b = bytes.fromhex("9ccaaf66" + "22" * 28)
    led: Any = Channels([a, b])
    with pytest.raises(CliError) as exc:
        trio.run(resolve_channel, led, b"me", "9ccaaf66")
    assert exc.value.code.value == "INVALID_ARGUMENT"
    assert "2 channels of this identity start with 9ccaaf66" in exc.value.message
    assert exc.value.details["matches"] == [a.hex(), b.hex()]
    assert trio.run(resolve_channel, led, b"me", "0x9CCAAF6611") == a
    with pytest.raises(CliError) as exc:
        trio.run(resolve_channel, led, b"me", "deadbeef")
    assert exc.value.code.value == "UNKNOWN_CHANNEL"
    assert trio.run(resolve_channel, led, b"me", "ab" * 32) == bytes.fromhex("ab" * 32)
