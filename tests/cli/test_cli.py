"""The `p2pay` command line, driven as a user would: real processes, real files, 127.0.0.1.

Every subprocess has a timeout; every node started in the background is stopped in a
``finally``. The fast in-process tests at the top cover the parsing helpers.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pay.cli import render
from p2pay.cli.home import (
    CliError,
    Config,
    Discovery,
    parse_account,
    parse_duration_ms,
    parse_ledger_spec,
    read_config,
    render_config,
    stable_listen,
    write_config,
)
from p2pay.cli.main import main
from p2pay.cli.node_run import parse_behaviour, parse_hostport
from p2pay.cli.render import jsonable
from p2pay.cli.services import parse_service
from p2pay.core.identity import Keypair

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60  # seconds, for any one command
PRICE = 1000  # yocto per call in these tests


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("P2PAY_HOME", "P2PAY_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def p2pay(
    *args: str, cwd: Path, timeout: float = TIMEOUT, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m p2pay ARGS`` and return its result (never raises on exit codes)."""
    proc = subprocess.run(
        [sys.executable, "-m", "p2pay", *args],
        cwd=cwd,
        env=_env(),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def ok(*args: str, cwd: Path, timeout: float = TIMEOUT) -> str:
    proc = p2pay(*args, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"p2pay {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def js(*args: str, cwd: Path, timeout: float = TIMEOUT) -> Any:
    """Run a command with --json: stdout must be exactly one JSON document."""
    return json.loads(ok(*args, "--json", cwd=cwd, timeout=timeout))


def fails(*args: str, cwd: Path) -> str:
    """The command must fail with exactly one line on stderr; return that line."""
    proc = p2pay(*args, cwd=cwd)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("p2pay: error: ")
    return lines[0]


class InProcess:
    """The same checks as `ok`/`js`/`fails`, calling `main` in this process (fast)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], cwd: Path) -> None:
        self.capsys = capsys
        self.cwd = cwd

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        old = os.getcwd()
        os.chdir(self.cwd)
        try:
            with pytest.raises(SystemExit) as exit_info:
                main(list(args))
        finally:
            os.chdir(old)
        out, err = self.capsys.readouterr()
        assert "Traceback" not in out + err
        code = exit_info.value.code
        return (code if isinstance(code, int) else 1), out, err

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"p2pay {' '.join(args)} failed: {err}"
        return out

    def js(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code != 0, out
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("p2pay: error: ")
        return lines[0]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table printed by the CLI: a row's continuation lines (an
    amount's token line) are joined to its cells with a space."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0] or not rows:
            rows.append(cells)
        else:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
    return rows


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> InProcess:
    monkeypatch.delenv("P2PAY_HOME", raising=False)
    monkeypatch.delenv("P2PAY_DEBUG", raising=False)
    return InProcess(capsys, tmp_path)


@pytest.fixture
def world(cli: InProcess, tmp_path: Path) -> dict[str, Any]:
    """A dev ledger and two homes on it (provider `p`, client `c`), with money."""
    # test-sized periods: the default shortest challenge period and claim window are 60 s
    cli.ok("ledger", "create", "ledger.sqlite", "--dev", "--min-challenge", "1s",
           "--min-claim-window", "1s")  # fmt: skip
    homes = {}
    for name in ("p", "c"):
        doc = cli.js("--home", name, "init", "--ledger", "sqlite:ledger.sqlite")
        homes[name] = doc
        cli.ok("--home", name, "ledger", "mint", doc["peer_id"], "2 token")
    return {"dir": tmp_path, "cli": cli, **homes}


class Node:
    """A `p2pay node run` in the background; `addr` from its `listening` line."""

    def __init__(self, cwd: Path, home: str, *extra: str) -> None:
        self.log = cwd / f"node-{home}-{time.monotonic_ns()}.log"
        self.stderr = ""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p2pay", "--home", home, "node", "run", *extra],
                cwd=cwd,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=log,
            )
        line = self._first_line(timeout=30)
        self.doc: dict[str, Any] = {}
        if line.startswith("{"):  # --json: one JSON document on one line
            self.doc = json.loads(line)
            self.addr = self.doc["listening"][0]
        elif line.startswith("listening "):
            self.addr = line.split()[1]
        else:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"node did not start: {line!r} {self.stderr}")

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        return data.decode("utf-8", "replace").split("\n")[0]

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr = self.log.read_text(encoding="utf-8", errors="replace")
        return self.proc.returncode


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.stop(signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def restart_port() -> int:
    """A free port below the kernel's ephemeral range, for a node restarted on the same
    address: the one `init` writes (`stable_listen`; a `free_port` was taken by another
    process of a loaded machine while the node was down: "address already in use" at the
    restart, seen in CI)."""
    return int(stable_listen()[0].rsplit("/", 1)[1])


# ---------------------------------------------------------------------------
# helpers, in process


def test_durations_are_exact_milliseconds() -> None:
    assert parse_duration_ms("1500") == 1500
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("2s") == 2000
    assert parse_duration_ms("1.5s") == 1500
    assert parse_duration_ms("5m") == 300_000
    assert parse_duration_ms("1h") == 3_600_000
    for bad in ("", "1.5", "0.0001s", "-1s", "1e3", "10 parsecs", "1" * 70):
        with pytest.raises(CliError):
            parse_duration_ms(bad)


def test_service_specs() -> None:
    spec = parse_service("echo=3 milli")
    assert (spec.name, spec.price, spec.handler_ref) == ("echo", 3 * 10**21, None)
    assert parse_service("rev=7:my.mod:handler").handler_ref == "my.mod:handler"
    for bad in ("echo", "echo=1.5", "nope=1", "x=1:mod", "x=1:mod:not-ident", "=1"):
        with pytest.raises(CliError):
            parse_service(bad)


def test_accounts_ledger_specs_and_json(tmp_path: Path) -> None:
    key = Keypair.from_seed(bytes([1]) * 32)
    assert parse_account(key.account.hex()) == key.account
    assert parse_account(key.peer_id) == key.account
    assert parse_account(f"/ip4/127.0.0.1/tcp/1/p2p/{key.peer_id}") == key.account
    with pytest.raises(CliError):
        parse_account("12D3KooWnotapeerid")
    assert parse_ledger_spec("sqlite:x.db", base=tmp_path).target == str(tmp_path / "x.db")
    for bad in ("x.db", "evm:0xabc", "sqlite:", "ftp:x"):
        with pytest.raises(CliError):
            parse_ledger_spec(bad)
    # an EVM ledger's confirmations (settlement.md 10): kept, and written back the same way
    contract = "0x" + "Ab" * 20
    plain = parse_ledger_spec(f"evm:http://127.0.0.1:8545:{contract}")
    assert (plain.target, plain.confirmations) == (f"http://127.0.0.1:8545:{contract.lower()}", 0)
    deep = parse_ledger_spec(f"evm:http://127.0.0.1:8545:{contract}:confirmations=12")
    assert (deep.target, deep.confirmations) == (plain.target, 12)
    assert parse_ledger_spec(str(deep)) == deep and str(plain) == f"evm:{plain.target}"
    for bad in ("-1", "x", "129", "1.5", "", "1000"):
        with pytest.raises(CliError, match="confirmations"):
            parse_ledger_spec(f"evm:http://h:1:{contract}:confirmations={bad}")
    with pytest.raises(CliError):  # confirmations, but no contract before them
        parse_ledger_spec("evm:http://h:1:confirmations=3")
    # JSON: amounts as decimal strings (exact above 2**53), bytes as hex, other ints as ints
    doc = jsonable({"balance": 2**128 - 1, "n": 3, "channel": b"\x01\xff", "x": [{"paid": 5}]})
    assert doc == {"balance": str(2**128 - 1), "n": 3, "channel": "01ff", "x": [{"paid": "5"}]}


def test_node_run_option_parsing() -> None:
    assert parse_behaviour(None, None) == 0.0
    assert parse_behaviour("drop:0.5", None) == 0.5
    assert parse_behaviour("drop", None) == 1.0
    assert parse_behaviour(None, 0.25) == 0.25
    assert parse_behaviour("honest", None) == 0.0
    for bad in ("drop:x", "drop:2", "evil", "honest:1"):
        with pytest.raises(CliError):
            parse_behaviour(bad, None)
    assert parse_hostport("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    for bad in ("9464", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(CliError):
            parse_hostport(bad)


def test_config_round_trips(tmp_path: Path) -> None:
    config = Config(
        ledger='sqlite:/tmp/a "quoted" \\ path',
        listen=["/ip4/127.0.0.1/tcp/4001"],
        services=["echo=1000"],
        node={"watch_interval": 0.2, "claim_grace_ms": 200, "watcher": True},
    )
    path = tmp_path / "config.toml"
    write_config(path, config)
    assert read_config(path) == config
    assert "[node]" in render_config(config)
    peer = Keypair.from_seed(bytes(32)).peer_id
    config.discovery = Discovery(
        bootstrap=[f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"],
        announce_interval_ms=90_000,
        deposit_calls=7,
        max_deposit=1234,
        max_attempts=5,
    )
    write_config(path, config)
    assert read_config(path) == config
    assert 'announce_interval = "90s"' in path.read_text()
    for bad, what in (
        ("bootstrap = ['/ip4/1.2.3.4/tcp/1']", "not a peer's multiaddr"),
        ("announce_interval = '1ms'", "between 1s and 8h"),
        ("deposit_calls = 0", "deposit_calls must be an integer"),
        ("max_deposit = '-1'", "max_deposit"),
        ("max_deposit = 0", "more than 0"),
        ("max_attempts = true", "max_attempts must be an integer"),
        ("bogus = 1", "no setting 'bogus'"),
    ):
        path.write_text(f"[discovery]\n{bad}\n")
        with pytest.raises(CliError, match=re.escape(what)):
            read_config(path)
    path.write_text("discovery = 1\n")
    with pytest.raises(CliError, match="must be a table"):
        read_config(path)
    path.write_text('ledger = "sqlite:x"\nbogus = 1\n')
    with pytest.raises(CliError, match="bogus"):
        read_config(path)
    path.write_text("[node]\nwatch_interval = true\n")
    with pytest.raises(CliError, match="watch_interval"):
        read_config(path)
    path.write_text("not = [toml")
    with pytest.raises(CliError, match="TOML"):
        read_config(path)


# ---------------------------------------------------------------------------
# commands without a node


def test_init_makes_a_0600_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    doc = js("--home", "h", "init", cwd=tmp_path)
    key = tmp_path / "h" / "key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert doc["peer_id"].startswith("12D3KooW")
    assert doc["ledger"] is None
    line = fails("--home", "h", "init", cwd=tmp_path)
    assert "refusing to overwrite" in line
    assert js("--home", "h", "id", cwd=tmp_path)["account"] == doc["account"]
    # P2PAY_HOME works as --home does; `--home` after the command too
    env_doc = json.loads(
        subprocess.run(
            [sys.executable, "-m", "p2pay", "id", "--json"],
            cwd=tmp_path,
            env={**_env(), "P2PAY_HOME": str(tmp_path / "h")},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout
    )
    assert env_doc["peer_id"] == doc["peer_id"]
    assert js("id", "--home", "h", cwd=tmp_path)["peer_id"] == doc["peer_id"]
    # a home without a ledger says what to do
    assert "no ledger configured" in fails("--home", "h", "balance", cwd=tmp_path)


def test_bad_arguments_give_one_line_in_real_processes(tmp_path: Path) -> None:
    ok("--home", "h", "init", cwd=tmp_path)
    line = fails("--home", "h", "ledger", "mint", "ab" * 32, "1.5", cwd=tmp_path)
    assert "fraction but no unit" in line
    assert "No such command" in fails("frobnicate", cwd=tmp_path)
    assert "no p2pay home" in fails("--home", str(tmp_path / "missing"), "id", cwd=tmp_path)
    assert "refusing to overwrite" in fails("--home", "h", "init", cwd=tmp_path)


def test_bad_arguments_give_one_line(cli: InProcess) -> None:
    cli.ok("--home", "h", "init")
    cli.ok("ledger", "create", "l.sqlite", "--dev")
    led = ("--ledger", "sqlite:l.sqlite")
    assert "fraction but no unit" in cli.fails(
        "--home", "h", "ledger", "mint", *led, "ab" * 32, "1.5"
    )
    assert "unknown unit" in cli.fails(
        "--home", "h", "ledger", "mint", *led, "ab" * 32, "2 parsecs"
    )
    assert "No such command" in cli.fails("frobnicate")
    assert "No such option" in cli.fails("balance", "--frobnicate")
    assert "no p2pay home" in cli.fails("--home", "missing", "balance")
    assert "expected 64 hex" in cli.fails("--home", "h", "ledger", "mint", *led, "zz", "1")
    assert "no ledger at" in cli.fails("--home", "h", "balance", "--ledger", "sqlite:nope")
    assert "expected evm:RPC_URL:0xCONTRACT" in cli.fails(
        "--home", "h", "balance", "--ledger", "evm:x"
    )
    assert "expected sqlite:PATH or evm:RPC_URL:0xCONTRACT" in cli.fails(
        "--home", "h", "balance", "--ledger", "ipfs:x"
    )
    assert "already exists" in cli.fails("ledger", "create", "l.sqlite")
    assert "no such folder" in cli.fails("ledger", "create", "nope/l.sqlite")
    assert "duration" in cli.fails(
        "--home", "h", "stake", "1", "--penalty", "1", "--claim-window", "soon"
    )
    assert "needs --penalty" in cli.fails("--home", "h", "stake", "1", *led)
    assert "NOT_STAKED" in cli.fails("--home", "h", "unstake", *led)
    assert "INSUFFICIENT_FUNDS" in cli.fails(
        "--home", "h", "stake", "1", "--penalty", "1", "--claim-window", "60s", *led
    )
    assert "expected NAME=PRICE" in cli.fails("--home", "h", "node", "run", "--service", "echo")
    assert "no built-in" in cli.fails("--home", "h", "node", "run", "--service", "cat=1")
    assert "cannot import" in cli.fails(
        "--home", "h", "node", "run", "--service", "x=1:no_such_module_here:f"
    )
    assert "HOST:PORT" in cli.fails("--home", "h", "node", "run", *led, "--metrics", "nowhere")
    assert "not a p2pay ledger" in cli.fails(
        "--home", "h", "balance", "--ledger", "sqlite:h/config.toml"
    )
    assert "expected the id (64 hex digits) or its first 8 or more" in cli.fails(
        "--home", "h", "channel", "close", "abc", *led
    )
    assert "Missing option '--max-price'" in cli.fails("--home", "h", "call", "x", "echo")


def test_mint_balance_stake_unstake_events(world: dict[str, Any]) -> None:
    c: InProcess = world["cli"]
    bal = c.js("--home", "p", "balance")
    assert bal["account"] == world["p"]["account"]
    assert bal["balance"] == str(2 * 10**24)
    assert (bal["staked"], bal["escrow_out"], bal["escrow_in"]) == ("0", "0", "0")
    # units are exact; an account may be hex, a PeerID or a /p2p/ multiaddr
    minted = c.js("--home", "p", "ledger", "mint", world["c"]["account"], "1.5 token")
    assert minted["amount"] == str(15 * 10**23)
    assert minted["balance"] == str(35 * 10**23)
    doc = c.js("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "2s")
    assert (doc["staked"], doc["penalty"], doc["claim_window_ms"]) == (
        str(10**24),
        str(10**23),
        2000,
    )
    assert doc["balance"] == str(10**24)
    # adding to a stake keeps its terms
    doc = c.js("--home", "p", "stake", "5")
    assert doc["staked"] == str(10**24 + 5) and doc["penalty"] == str(10**23)
    doc = c.js("--home", "p", "unstake")
    assert doc["stake_status"] == "unbonding" and doc["unbonding_at"] > 0
    assert "STAKE_LOCKED" in c.fails("--home", "p", "unstake", "--withdraw")
    events = c.js("--home", "p", "ledger", "events")["events"]
    kinds = [e["kind"] for e in events]
    assert kinds == ["Minted", "Minted", "Minted", "Staked", "Staked", "UnstakeRequested"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[2]["fields"]["amount"] == str(15 * 10**23)
    assert c.js("--home", "p", "ledger", "events", "--after", "5")["events"][0]["seq"] == 6
    totals = c.js("--home", "p", "ledger", "totals")
    assert totals["conserved"] is True and totals["supply"] == str(55 * 10**23)
    # a text table shows yocto and tokens
    text = c.ok("--home", "p", "balance")
    assert "1000000000000000000000005" in text and "token" in text
    assert "UnstakeRequested" in c.ok("--home", "p", "ledger", "events")
    # mint is for dev ledgers only; --use makes a new ledger the home's
    c.ok("--home", "p", "ledger", "create", "prod.sqlite", "--use")
    assert "NOT_DEV_LEDGER" in c.fails("--home", "p", "ledger", "mint", world["p"]["peer_id"], "1")
    assert c.js("--home", "p", "id")["ledger"] == f"sqlite:{world['dir'] / 'prod.sqlite'}"


def test_id_shows_the_ledger_id_of_the_homes_ledger(cli: InProcess, tmp_path: Path) -> None:
    """specs/settlement.md "Ledger ids": a SQLite ledger's id is b"p2pay:sqlite:" and 16
    random bytes, chosen at creation and kept in the file; `p2pay id` shows it (hex) beside
    the peer id and account, since a peer needs it for its hello."""
    created = cli.js("ledger", "create", "l.sqlite", "--dev")
    ledger_id = bytes.fromhex(created["ledger_id"])
    assert ledger_id.startswith(b"p2pay:sqlite:") and len(ledger_id) == 13 + 16
    cli.js("--home", "h", "init", "--ledger", "sqlite:l.sqlite")
    doc = cli.js("--home", "h", "id")
    assert doc["ledger_id"] == created["ledger_id"] and "ledger_error" not in doc
    text = cli.ok("--home", "h", "id")
    assert f"ledger id  {created['ledger_id']}" in text
    assert doc["peer_id"] in text and doc["account"] in text
    # another ledger file has another id
    other = cli.js("ledger", "create", "m.sqlite", "--dev")
    assert other["ledger_id"] != created["ledger_id"]
    # a home without a ledger has no ledger id; one whose ledger is gone says why
    cli.js("--home", "bare", "init")
    assert cli.js("--home", "bare", "id")["ledger_id"] is None
    (tmp_path / "l.sqlite").unlink()
    gone = cli.js("--home", "h", "id")
    assert gone["ledger_id"] is None and "no ledger at" in gone["ledger_error"]
    assert "(unavailable: no ledger at" in cli.ok("--home", "h", "id")


def test_payer_close_waits_for_the_challenge_period(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c: InProcess = world["cli"]
    opened = c.js(
        "--home", "c", "channel", "open", world["p"]["peer_id"], "--deposit", "10 milli",
        "--challenge", "1s", "--offline",
    )  # fmt: skip
    cid = opened["channel"]
    assert opened["deposit"] == str(10**22) and opened["state"] == "open"
    assert c.js("--home", "c", "balance")["escrow_out"] == str(10**22)
    assert c.js("--home", "p", "balance")["escrow_in"] == str(10**22)
    listed = c.js("--home", "c", "channel", "list")["channels"]
    assert [(x["channel"], x["role"], x["state"]) for x in listed] == [(cid, "payer", "open")]
    assert (listed[0]["paid"], listed[0]["spent"]) == ("0", "0")
    # the table in 120 columns: one line per channel (ids shortened as in `claims list`,
    # each amount column in one unit named in its header), paid beside spent, nothing after
    monkeypatch.setattr(render.stdout, "width", 120)
    text = c.ok("--home", "c", "channel", "list")
    lines = text.splitlines()
    assert lines[0] == "channels" and lines[-1].startswith("└") and cid not in text
    assert max(len(x) for x in lines) <= 120
    head = zip(lines[2].strip("┃").split("┃"), lines[3].strip("┃").split("┃"), strict=True)
    assert [" ".join(f"{a} {b}".split()) for a, b in head] == [
        "channel", "role", "peer", "state", "deposit (milli)", "paid (token)", "spent (token)",
        "redeemed (token)", "escrow (milli)",
    ]  # fmt: skip
    body = [x for x in lines if x.startswith("│")]
    assert len(body) == 1  # one line for the one channel
    short = f"{cid[:8]}…{cid[-8:]}"
    peer = render.short(world["p"]["peer_id"])
    assert table_rows(text) == [[short, "payer", peer, "open", "10", "0", "0", "0", "10"]]
    # the payee's home has no record of the channel (it never served on it): blank cells
    theirs = table_rows(c.ok("--home", "p", "channel", "list"))
    assert theirs == [[short, "payee", render.short(world["c"]["peer_id"]), "open", "10", "",
                       "", "0", "10"]]  # fmt: skip
    assert c.js("--home", "p", "channel", "list")["channels"][0]["role"] == "payee"
    # top-up and close take a unique prefix of 8 hex digits or more
    topped = c.js("--home", "c", "channel", "top-up", cid[:8], "5 milli")
    assert topped["deposit"] == str(15 * 10**21) and topped["channel"] == cid
    first = c.js("--home", "c", "channel", "close", cid[:12].upper())
    assert first["state"] == "closing" and first["channel"] == cid
    assert "closing" in c.ok("--home", "c", "channel", "list")
    done = c.js("--home", "c", "channel", "close", cid[:8], "--wait")
    assert done["state"] == "closed" and done["refunded"] == str(15 * 10**21)
    # every yocto of the deposit came back to the payer, none went to the payee
    assert c.js("--home", "c", "balance")["balance"] == str(2 * 10**24)
    assert c.js("--home", "p", "balance")["balance"] == str(2 * 10**24)
    # a prefix that is too short or not hex, or matches no channel: typed, one line
    code, _, err = c.run("--home", "c", "channel", "close", cid[:7], "--json")
    assert code == 1 and json.loads(err)["error"]["code"] == "INVALID_ARGUMENT"
    assert "first 8 or more" in json.loads(err)["error"]["message"]
    assert "first 8 or more" in c.fails("--home", "c", "channel", "top-up", "xyz12345", "1")
    other = "0" * 8 if not cid.startswith("0" * 8) else "f" * 8
    code, _, err = c.run("--home", "c", "channel", "close", other, "--json")
    assert code == 1 and json.loads(err)["error"]["code"] == "UNKNOWN_CHANNEL"
    assert "`channel list`" in json.loads(err)["error"]["message"]
    # no claims: said in words, not an empty table
    assert c.ok("--home", "c", "claims", "list") == "no claims\n"
    assert c.js("--home", "c", "claims", "list")["claims"] == []
    assert "no channel" in c.fails("--home", "c", "channel", "close", "00" * 32)


def test_every_json_output_parses(world: dict[str, Any]) -> None:
    c: InProcess = world["cli"]
    commands = [
        ("--home", "p", "id"),
        ("--home", "p", "balance"),
        ("--home", "p", "ledger", "events"),
        ("--home", "p", "ledger", "totals"),
        ("--home", "p", "channel", "list"),
        ("--home", "p", "claims", "list"),
        ("--home", "p", "stake", "1 milli", "--penalty", "1", "--claim-window", "1s"),
        ("--home", "p", "unstake"),
        ("--home", "p", "ledger", "mint", world["c"]["account"], "1"),
        ("--home", "c", "channel", "open", world["p"]["peer_id"], "--deposit", "1", "--offline"),
        ("ledger", "create", "other.sqlite"),
        ("--home", "x", "init"),
    ]
    for args in commands:
        code, out, err = c.run(*args, "--json")
        assert code == 0, err
        assert isinstance(json.loads(out), dict), args
    assert c.ok("--help").startswith("Usage: p2pay")
    for sub in ("init", "id", "ledger", "balance", "stake", "unstake", "channel", "call",
                "claims", "node", "demo"):  # fmt: skip
        assert "Usage:" in c.ok(sub, "--help")
    assert "--drop-rate" not in c.ok("node", "run", "--help")  # hidden, demo only


# ---------------------------------------------------------------------------
# with a running node


@pytest.mark.slow
def test_node_channel_call_restart_close(world: dict[str, Any], nodes: list[Node]) -> None:
    d = world["dir"]
    c: InProcess = world["cli"]  # for the commands that need neither the network nor a node
    (d / "handlers.py").write_text(
        "async def rev(call):\n    return bytes(call.body)[::-1]\n", encoding="utf-8"
    )
    c.ok("--home", "p", "stake", "1 token", "--penalty", "100 milli", "--claim-window", "2s")
    port = free_port()
    provider = [
        "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}",
        "--service", f"upper={PRICE}", "--service", "rev=1 yocto:handlers:rev",
    ]  # fmt: skip
    node = Node(d, "p", *provider, "--metrics", f"127.0.0.1:{port}")
    nodes.append(node)
    assert node.addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in node.addr
    assert node.addr.endswith(world["p"]["peer_id"])

    cid = js("--home", "c", "channel", "open", node.addr, "--deposit", "10 milli", cwd=d)["channel"]
    before_c = js("--home", "c", "balance", cwd=d)
    before_p = c.js("--home", "c", "balance", "--account", world["p"]["account"])
    assert before_c["escrow_out"] == str(10**22)

    res = js("--home", "c", "call", node.addr, "echo", "hello", "--max-price", "1000", cwd=d)
    assert (res["body"], res["price"], res["n"], res["channel"]) == ("hello", "1000", 1, cid)
    assert res["receipt"]["status"] == "OK" and res["receipt"]["spent"] == "1000"
    assert len(bytes.fromhex(res["receipt"]["signature"])) == 64
    assert bytes.fromhex(res["receipt"]["frame"])
    # the body and a newline
    assert ok("--home", "c", "call", node.addr, "upper", "abc", "--max-price", "1000", cwd=d) == (
        "ABC\n"
    )
    piped = p2pay(
        "--home", "c", "call", node.addr, "rev", "-", "--max-price", "1 zepto", "--json",
        cwd=d, stdin=b"stressed",
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["body"] == "desserts"
    # too expensive: refused before anything is signed
    assert "PAYMENT_REQUIRED" in fails(
        "--home", "c", "call", node.addr, "echo", "x", "--max-price", "999", cwd=d
    )
    assert "UNKNOWN_SERVICE" in fails(
        "--home", "c", "call", node.addr, "nope", "x", "--max-price", "1", cwd=d
    )
    # the provider's home is busy while its node runs
    assert "in use" in fails(
        "--home", "p", "call", node.addr, "echo", "x", "--max-price", "1", cwd=d
    )
    # metrics
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    deadline = time.monotonic() + 60  # a bound on the wait, generous for a loaded machine
    while "p2pay_calls_served_total 3.0" not in text and time.monotonic() < deadline:
        time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    assert "p2pay_calls_served_total 3.0" in text
    assert "p2pay_in_flight 0.0" in text
    assert 'p2pay_ledger_events_total{kind="skipped_logs"} 0.0' in text
    assert "p2pay_sessions_evicted_total 0.0" in text
    assert "p2pay_requests_from_payees_total 0.0" in text
    assert "p2pay_charged_total 2001.0" in text
    assert "p2pay_rate_limited_total 0.0" in text and "p2pay_idle_resets_total" in text

    # SIGINT: clean stop, then the same home again: state survived
    assert node.stop() == 0
    assert "msg=stopped" in node.stderr and "calls_served=3" in node.stderr
    assert "Traceback" not in node.stderr
    # without -v: what the node does, not a line per connection nor the library's own lines
    assert "msg=started" in node.stderr and "peer connected" not in node.stderr
    assert "logger=libp2p" not in node.stderr
    node = Node(d, "p", *provider, "--json")
    nodes.append(node)
    # prices are strings of yocto, as every amount in JSON
    assert node.doc["services"] == {"echo": str(PRICE), "upper": str(PRICE), "rev": "1"}
    res = js("--home", "c", "call", node.addr, "echo", "again", "--max-price", "1000", cwd=d)
    assert res["n"] == 4  # the client's counter survived its processes
    assert res["receipt"]["spent"] == "3001"  # and the provider's charges survived its restart
    # --raw: the body's bytes exactly; a body that ends with a newline gets no second one
    upper = ("--home", "c", "call", node.addr, "upper", "--max-price", "1000")
    assert ok(*upper, "abc", "--raw", cwd=d) == "ABC"
    assert ok(*upper, "abc\n", cwd=d) == "ABC\n"
    assert node.stop(signal.SIGTERM) == 0

    channels = c.js("--home", "c", "channel", "list")["channels"]
    assert channels[0]["spent"] == "5001" and channels[0]["last_n"] == 6
    claims = c.js("--home", "c", "claims", "list")
    assert claims["claims"] == []

    closed = js("--home", "p", "channel", "close", cid, cwd=d)  # payee: at once, redeeming
    assert closed["state"] == "closed" and closed["redeemed"] == "5001"
    after_c = js("--home", "c", "balance", cwd=d)
    after_p = c.js("--home", "p", "balance")
    assert int(after_c["balance"]) == int(before_c["balance"]) + 10**22 - 5001
    assert int(after_p["balance"]) == int(before_p["balance"]) + 5001
    assert after_c["escrow_out"] == "0" and after_c["channels_open"] == 0
    assert c.js("--home", "p", "ledger", "totals")["conserved"] is True
