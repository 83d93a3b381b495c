"""``p2pay demo``: the whole protocol on one machine, in separate processes, in seconds.

Theory of operation
-------------------
In a fresh temporary folder the demo creates a development SQLite ledger with
demo-sized periods and three homes: an honest provider, a provider that takes paid
requests and never answers them (nor the claims), and a client. It mints money to each
and stakes both providers (claim window `CLAIM_WINDOW_MS`). Then it starts three OS
processes that talk libp2p over 127.0.0.1:

* two ``python -m p2pay node run`` providers (the dropping one with the hidden
  ``--drop-rate``), whose ``listening ...`` lines give their addresses;
* one ``python -m p2pay demo-client`` (hidden command): a full node on the client home
  that opens a channel to each provider, makes paid calls (one JSON line on stdout per
  call, which this process turns into a progress bar), starts closing its channels,
  and waits until its watcher has claimed against every unanswered paid request, the
  claims are resolved (the dropping provider slashed after its window) and the channels
  are finalized.

Finally the providers get SIGINT, and the demo prints every account before and after
(balance, staked, escrow), checks the conservation of supply (ledger totals, and the
accounts' sum), and exits 0 only if every check holds. Children are killed in a
``finally`` (also on SIGINT/SIGTERM of the demo itself), so no process is left behind.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import trio
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import p2pay
from p2pay.cli import render
from p2pay.cli.common import (
    AMOUNT,
    EPHEMERAL_LISTEN,
    Guard,
    account_summary,
    home_option,
    json_option,
    node_config,
    open_store,
    run,
    settings,
)
from p2pay.cli.home import CliError, Config, Home, LedgerSpec, format_ms, open_ledger
from p2pay.core.amounts import parse_amount
from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair
from p2pay.core.settlement import ChannelState, ClaimState

if TYPE_CHECKING:
    from p2pay.node import Node
    from p2pay.store.sqlite import SqliteStore

CLAIM_WINDOW_MS = 2_000
CHALLENGE_MS = 1_000
CALL_TIMEOUT = 1.0
PRICE = parse_amount("1 milli")
DEPOSIT = parse_amount("50 milli")
STAKE = parse_amount("1 token")
PENALTY = parse_amount("100 milli")
MINT_PROVIDER = parse_amount("2 token")
MINT_CLIENT = parse_amount("5 token")
#: `[node]` settings of every demo home: demo-sized periods.
DEMO_NODE = {
    "watch_interval": 0.2,
    "claim_grace_ms": 200,
    "challenge_ms": CHALLENGE_MS,
    "min_challenge_ms": CHALLENGE_MS,  # demo-sized: the demo's ledger allows short ones
    "hello_timeout": 5.0,
}
START_TIMEOUT = 30.0  # a provider prints its address within this
CLIENT_TIMEOUT = 60.0  # the client finishes within this
SETTLE_TIMEOUT = 25.0  # claims resolved and channels closed within this (client side)
STOP_TIMEOUT = 10.0  # a provider stops after SIGINT within this


# ---------------------------------------------------------------------------
# child processes


class LineReader:
    """Lines from a trio receive stream (a child's stdout)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its newline, or None at end of stream."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                if self.buffer:
                    line = bytes(self.buffer)
                    self.buffer.clear()
                    return line
                return None
            self.buffer += chunk
            if len(self.buffer) > 1 << 20:
                raise CliError("a demo process wrote a line longer than 1 MiB")


@dataclass
class Child:
    name: str
    process: trio.Process
    log_path: Path
    reader: LineReader

    @property
    def pid(self) -> int:
        return int(self.process.pid)


@dataclass
class Children:
    """Every process the demo started; `stop_all` leaves none running."""

    items: list[Child] = field(default_factory=list)

    async def start(self, name: str, args: Sequence[str], log_dir: Path) -> Child:
        env = dict(os.environ)
        root = str(Path(p2pay.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.pop("P2PAY_HOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        log_path = log_dir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "p2pay", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        assert process.stdout is not None
        child = Child(name, process, log_path, LineReader(process.stdout))
        self.items.append(child)
        return child

    async def stop(
        self, child: Child, sig: signal.Signals = signal.SIGINT, timeout: float = STOP_TIMEOUT
    ) -> None:
        process = child.process
        if process.returncode is None:
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                pass
            with trio.move_on_after(timeout):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    async def stop_all(self) -> None:
        """SIGTERM every child still running, kill after a short wait, reap all."""
        with trio.CancelScope(shield=True):
            for child in self.items:
                if child.process.returncode is None:
                    try:
                        child.process.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            with trio.move_on_after(3):
                for child in self.items:
                    await child.process.wait()
            for child in self.items:
                if child.process.returncode is None:
                    child.process.kill()
                await child.process.wait()


def log_tail(child: Child, lines: int = 5) -> str:
    try:
        text = child.log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


async def read_listening(child: Child) -> str:
    """The provider's multiaddr from its first ``listening ...`` line."""
    with trio.move_on_after(START_TIMEOUT):
        while True:
            line = await child.reader.readline()
            if line is None:
                raise CliError(f"{child.name} exited before listening: {log_tail(child)}")
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("listening "):
                return text.split(" ", 1)[1]
    raise CliError(f"{child.name} did not print its address within {START_TIMEOUT} s")


# ---------------------------------------------------------------------------
# the demo


@dataclass
class Actor:
    name: str
    home: Home
    key: Keypair


async def snapshot(spec: LedgerSpec, actors: Sequence[Actor]) -> dict[str, Any]:
    """Every actor's balance, stake and escrow, and the ledger's totals."""
    async with open_ledger(spec) as led:
        accounts = []
        for actor in actors:
            summary = await account_summary(led, actor.key.account)
            accounts.append(
                {
                    "name": actor.name,
                    "account": actor.key.account,
                    "balance": summary["balance"],
                    "staked": summary["staked"],
                    "escrow": summary["escrow_out"],
                    "bonds": summary["bonds"],
                }
            )
        totals = await led.totals()
    return {
        "accounts": accounts,
        "totals": {
            "supply": totals.supply,
            "balances": totals.balances,
            "escrow": totals.escrow,
            "stakes": totals.stakes,
            "bonds": totals.bonds,
            "burnt": totals.burnt,
            "conserved": totals.conserved,
        },
    }


def accounts_sum(snap: dict[str, Any]) -> int:
    """What the actors hold plus what was burnt: equals the supply when nothing leaks."""
    held = sum(a["balance"] + a["staked"] + a["escrow"] + a["bonds"] for a in snap["accounts"])
    return int(held + snap["totals"]["burnt"])


@asynccontextmanager
async def _signals_cancel(
    scope_box: list[trio.CancelScope], flag: list[str]
) -> AsyncIterator[None]:
    """SIGINT/SIGTERM cancel the demo (so `finally` stops the children)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    flag.append(signal.Signals(signum).name)
                    for scope in scope_box:
                        scope.cancel()
                    return

            nursery.start_soon(watch)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()


async def run_demo(*, calls: int, drop_rate: float, keep: bool, as_json: bool) -> dict[str, Any]:
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="p2pay-demo-"))
    say = (lambda text: None) if as_json else (lambda text: render.stdout.print(text, markup=False))
    children = Children()
    interrupted: list[str] = []
    scope = trio.CancelScope()
    result: dict[str, Any] = {}
    try:
        async with _signals_cancel([scope], interrupted):
            with scope:
                result = await _demo_body(folder, children, calls, drop_rate, say, as_json)
        if interrupted:
            raise CliError(f"demo interrupted by {interrupted[0]}; every process stopped")
        if not result:
            raise CliError("demo cancelled")
    finally:
        await children.stop_all()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    result["processes"] = [
        {"name": c.name, "pid": c.pid, "returncode": c.process.returncode} for c in children.items
    ]
    result["folder"] = str(folder)
    result["kept"] = keep
    result["wall_time_s"] = round(time.monotonic() - started, 3)
    return result


async def _demo_body(
    folder: Path,
    children: Children,
    calls: int,
    drop_rate: float,
    say: Callable[[str], None],
    as_json: bool,
) -> dict[str, Any]:
    from p2pay.ledger.sqlite import SqliteLedger

    logs = folder / "logs"
    logs.mkdir()
    ledger_path = folder / "ledger.sqlite"
    made = await SqliteLedger.create(
        ledger_path,
        dev=True,
        min_challenge_ms=1_000,
        min_claim_window_ms=1_000,
        max_deadline_horizon_ms=60_000,
    )
    params = made.params
    await made.aclose()
    spec = LedgerSpec("sqlite", str(ledger_path))
    say(f"demo folder {folder}")
    say(f"created dev ledger {spec} (claim bond {render.amount_text(params.claim_bond)})")
    services = [f"echo={PRICE}", f"upper={PRICE}"]
    actors = []
    for name, offered in (("honest", services), ("dropper", services), ("client", [])):
        home = Home(folder / name)
        config = Config(ledger=str(spec), services=offered, node=dict(DEMO_NODE))
        actors.append(Actor(name, home, home.init(config)))
    honest, dropper, client = actors

    async with open_ledger(spec) as led:
        minter = client.key
        for actor in actors:
            amount = MINT_CLIENT if actor is client else MINT_PROVIDER
            await led.mint(minter, actor.key.account, amount)
    async with open_ledger(spec) as led:
        for actor in (honest, dropper):
            await led.stake(actor.key, STAKE, PENALTY, CLAIM_WINDOW_MS)
    # "before" is the set-up the calls start from: minted, and the providers staked
    before = await snapshot(spec, actors)
    say(
        f"minted; providers staked {render.amount_text(STAKE)} each, penalty "
        f"{render.amount_text(PENALTY)}, claim window {format_ms(CLAIM_WINDOW_MS)}"
    )

    provider_args = ["node", "run", "--listen", EPHEMERAL_LISTEN[0]]
    started = [
        await children.start("honest", ["--home", str(honest.home.path), *provider_args], logs),
        await children.start(
            "dropper",
            ["--home", str(dropper.home.path), *provider_args, "--drop-rate", str(drop_rate)],
            logs,
        ),
    ]
    addrs = {}
    for child in started:
        addrs[child.name] = await read_listening(child)
        say(f"{child.name:8s} listening {addrs[child.name]}")
    say(f"services echo and upper at {render.amount_text(PRICE)} a call")

    client_args = [
        "--home",
        str(client.home.path),
        "demo-client",
        "--calls",
        str(calls),
        "--deposit",
        str(DEPOSIT),
        "--max-price",
        str(PRICE),
        "--timeout",
        str(CALL_TIMEOUT),
    ]
    for name, addr in addrs.items():
        client_args += ["--provider", f"{name}={addr}"]
    client_proc = await children.start("client", client_args, logs)
    done = await _follow_client(client_proc, calls * len(addrs), say, as_json)

    with trio.move_on_after(CLIENT_TIMEOUT):
        await client_proc.process.wait()
    if client_proc.process.returncode != 0:
        raise CliError(
            f"demo client failed (exit {client_proc.process.returncode}): {log_tail(client_proc)}"
        )
    for child in started:
        await children.stop(child)
    after = await snapshot(spec, actors)

    outcome = await _outcome(spec, actors)
    checks = {
        "ledger conserved before": bool(before["totals"]["conserved"]),
        "ledger conserved after": bool(after["totals"]["conserved"]),
        "supply unchanged": before["totals"]["supply"] == after["totals"]["supply"],
        "accounts + burnt == supply": accounts_sum(after) == after["totals"]["supply"]
        and accounts_sum(before) == before["totals"]["supply"],
        "every channel closed": outcome["channels_closed"],
        "every unanswered paid call claimed and resolved": outcome["claims_settled"]
        and outcome["upheld"] == done["timeouts"],
        "dropper slashed by penalty x upheld claims": (
            outcome["slashed"].get("dropper", 0) == PENALTY * outcome["upheld_against"]["dropper"]
        ),
        "honest provider not slashed": outcome["slashed"].get("honest", 0) == 0,
        "honest provider paid for what it served": (
            _delta(before, after, "honest", "balance") + _delta(before, after, "honest", "staked")
            == done["paid_to"].get("honest", 0)
        ),
        "providers exited cleanly": all(c.process.returncode == 0 for c in started),
    }
    if drop_rate >= 1.0:
        checks["dropper claimed against"] = (
            outcome["upheld_against"]["dropper"] == done["timeouts"] and done["timeouts"] == calls
        )
    return {
        "ok": all(checks.values()),
        "ledger": str(spec),
        "ledger_id": params.ledger_id,
        "calls": {
            "made": done["made"],
            "ok": done["ok"],
            "timeouts": done["timeouts"],
            "errors": done["errors"],
            "paid": done["paid"],
        },
        "claims": outcome["claims"],
        "before": before,
        "after": after,
        "checks": checks,
    }


def _delta(before: dict[str, Any], after: dict[str, Any], name: str, key: str) -> int:
    def pick(snap: dict[str, Any]) -> int:
        return int(next(a[key] for a in snap["accounts"] if a["name"] == name))

    return pick(after) - pick(before)


async def _outcome(spec: LedgerSpec, actors: Sequence[Actor]) -> dict[str, Any]:
    names: dict[bytes, str] = {bytes(a.key.account): a.name for a in actors}
    client = next(a for a in actors if a.name == "client")
    from p2pay.ledger.base import claims_one_by_one

    async with open_ledger(spec) as led:
        claims = [c async for c in claims_one_by_one(led, client.key.account, "claimant")]
        channels = await led.channels_of(client.key.account)
    slashed: dict[str, int] = {}
    upheld_against = {a.name: 0 for a in actors}
    rows = []
    for c in claims:
        who = names.get(c.respondent, c.respondent.hex())
        if c.state is ClaimState.UPHELD:
            slashed[who] = slashed.get(who, 0) + c.slashed
            upheld_against[who] = upheld_against.get(who, 0) + 1
        rows.append(
            {
                "claim": c.id,
                "respondent": who,
                "n": c.n,
                "state": str(c.state),
                "slashed": c.slashed,
            }
        )
    return {
        "claims": rows,
        "claims_settled": all(c.state is not ClaimState.OPEN for c in claims),
        "upheld": sum(1 for c in claims if c.state is ClaimState.UPHELD),
        "upheld_against": upheld_against,
        "slashed": slashed,
        "channels_closed": bool(channels) and all(c.state is ChannelState.CLOSED for c in channels),
    }


async def _follow_client(child: Child, total: int, say: Any, as_json: bool) -> dict[str, Any]:
    """Read the client's JSON lines; draw the calls as a progress bar."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=render.stderr,
        transient=False,
    )
    done: dict[str, Any] | None = None
    with progress:
        calls_task = progress.add_task("paid calls", total=total, note="")
        settle_task = progress.add_task("claims, closes", total=None, note="", visible=False)
        counts = {"ok": 0, "timeout": 0, "error": 0}
        with trio.move_on_after(CLIENT_TIMEOUT):
            while True:
                line = await child.reader.readline()
                if line is None:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                kind = message.get("event")
                if kind == "call":
                    counts[message["outcome"]] = counts.get(message["outcome"], 0) + 1
                    note = f"ok {counts['ok']}  unanswered {counts['timeout']}"
                    progress.update(calls_task, advance=1, note=note)
                elif kind == "settling":
                    progress.update(settle_task, visible=True, note="waiting for claim windows")
                elif kind == "claim":
                    progress.update(settle_task, note=f"claim {message['state']}")
                elif kind == "done":
                    progress.update(settle_task, total=1, completed=1, note="settled")
                    done = message
                    break
    if done is None:
        raise CliError(f"the demo client did not finish: {log_tail(child)}")
    done["paid"] = int(done["paid"])
    say(
        f"client: {done['ok']} calls answered, paid {render.amount_text(done['paid'])}; "
        f"{done['timeouts']} unanswered, {done['claims_filed']} claims filed"
    )
    done["paid_to"] = {k: int(v) for k, v in done["paid_to"].items()}
    return done


def print_report(result: dict[str, Any]) -> None:
    cols = ("account", "balance", "staked", "escrow", "bonds")
    for when in ("before", "after"):
        snap = result[when]
        rows = [
            [a["name"], a["balance"], a["staked"], a["escrow"], a["bonds"]]
            for a in snap["accounts"]
        ]
        title = "before (minted, providers staked)" if when == "before" else when
        render.stdout.print(render.table(title, cols, rows, amounts=cols[1:]))
    names = ("supply", "balances", "escrow", "stakes", "bonds", "burnt")
    rows = [[when, *(result[when]["totals"][n] for n in names)] for when in ("before", "after")]
    render.stdout.print(render.table("ledger totals", ("", *names), rows, amounts=names))
    for claim in result["claims"]:
        render.stdout.print(
            f"claim {claim['claim'].hex()[:16]} against {claim['respondent']} n={claim['n']}: "
            f"{claim['state']}, slashed {render.amount_text(claim['slashed'])}",
            markup=False,
        )
    for name, ok in result["checks"].items():
        render.stdout.print(f"[{'green' if ok else 'red'}]{'ok  ' if ok else 'FAIL'}[/] {name}")
    render.stdout.print(
        f"demo {'passed' if result['ok'] else 'FAILED'} in {result['wall_time_s']} s"
    )


@click.command("demo")
@click.option(
    "--calls",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Paid calls to each provider.",
)
@click.option("--drop-rate", type=click.FloatRange(0.0, 1.0), default=1.0, hidden=True)
@click.option("--keep", is_flag=True, help="Keep the demo folder (ledger, homes, logs).")
@json_option
def demo(calls: int, drop_rate: float, keep: bool, as_json: bool) -> None:
    """Run an honest provider, a dropping provider and a client as separate processes on a
    fresh dev ledger, and show every account before and after."""
    result = run(
        functools.partial(run_demo, calls=calls, drop_rate=drop_rate, keep=keep, as_json=as_json)
    )
    if as_json:
        render.print_json(result)
    else:
        print_report(result)
    if not result["ok"]:
        raise SystemExit(1)


# ---------------------------------------------------------------------------
# the client process


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(render.jsonable(fields)) + "\n")
    sys.stdout.flush()


async def run_client(
    home: Home,
    providers: Sequence[tuple[str, str]],
    *,
    calls: int,
    deposit: int,
    max_price: int,
    timeout: float,
) -> None:
    from p2pay.node import open_node

    key = home.key()
    config = home.config()
    spec = home.ledger_spec(None)
    guard = Guard()
    async with open_ledger(spec) as led:
        store = await open_store(home)
        try:
            async with open_node(
                key=key,
                ledger=led,
                store=store,
                listen=EPHEMERAL_LISTEN,
                config=node_config(config),
            ) as node:
                await guard.run(
                    _client_body, node, store, providers, calls, deposit, max_price, timeout
                )
        except BaseException:
            if guard.error is not None:
                raise guard.error from None
            raise
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()
    guard.check()


async def _client_body(
    node: Node,
    store: SqliteStore,
    providers: Sequence[tuple[str, str]],
    calls: int,
    deposit: int,
    max_price: int,
    timeout: float,
) -> None:
    """Open channels, call, close, and wait until claims and closes are settled."""
    from p2pay.ledger.base import claims_one_by_one
    from p2pay.node import CallTimeout
    from p2pay.persist import StoreFailed

    led = node.ledger
    me = node.account
    channels: dict[str, bytes] = {}
    for name, addr in providers:
        info = await node.open_channel(addr, deposit=deposit)
        channels[name] = info.channel
        _emit(event="channel", provider=name, channel=info.channel, deposit=deposit)
    tally = {"made": 0, "ok": 0, "timeouts": 0, "errors": 0}
    paid_to = {name: 0 for name, _ in providers}

    async def calls_to(name: str, addr: str) -> None:
        for i in range(calls):
            body = f"hello {i} from the p2pay demo".encode()
            tally["made"] += 1
            try:
                result = await node.call(addr, "upper", body, max_price=max_price, timeout=timeout)
            except CallTimeout:
                tally["timeouts"] += 1
                _emit(event="call", provider=name, outcome="timeout")
                continue
            except StoreFailed:
                raise  # our store failed: the demo stops, it is not a call's outcome
            except P2payError as exc:
                tally["errors"] += 1
                _emit(event="call", provider=name, outcome="error", code=exc.code.value)
                continue
            if result.body != body.upper():
                raise CliError(f"{name} answered {result.body[:40]!r}, not upper case")
            tally["ok"] += 1
            paid_to[name] += result.price
            _emit(event="call", provider=name, outcome="ok", n=result.n, price=result.price)

    async with trio.open_nursery() as nursery:
        for name, addr in providers:
            nursery.start_soon(calls_to, name, addr)
    for cid in channels.values():
        await node.close_channel(cid)
    _emit(event="settling")
    seen: dict[bytes, str] = {}
    settled = False
    with trio.move_on_after(SETTLE_TIMEOUT):
        while not settled:
            mine = [c async for c in claims_one_by_one(led, me, "claimant")]
            for c in mine:
                if seen.get(c.id) != str(c.state):
                    seen[c.id] = str(c.state)
                    _emit(event="claim", claim=c.id, state=str(c.state), n=c.n)
            chans = [await led.channel(cid) for cid in channels.values()]
            settled = (
                all(c is not None and c.state is ChannelState.CLOSED for c in chans)
                and not any(c.state is ClaimState.OPEN for c in mine)
                and not await store.requests(state="awaiting")
                and len(mine) >= tally["timeouts"]
            )
            if not settled:
                await trio.sleep(0.1)
    counters = node.counters
    _emit(
        event="done",
        settled=settled,
        paid=counters.paid,
        paid_to=paid_to,
        claims_filed=counters.claims_filed,
        claims_won=counters.claims_won,
        **tally,
    )


@click.command("demo-client", hidden=True)
@click.option("--provider", "providers", multiple=True, required=True, metavar="NAME=MULTIADDR")
@click.option("--calls", type=click.IntRange(1, 1000), default=5)
@click.option("--deposit", type=AMOUNT, required=True)
@click.option("--max-price", type=AMOUNT, required=True)
@click.option("--timeout", type=click.FloatRange(min=0.05, max=60), default=CALL_TIMEOUT)
@home_option
def demo_client(
    providers: tuple[str, ...], calls: int, deposit: int, max_price: int, timeout: float
) -> None:
    """The demo's client process (JSON lines on stdout)."""
    pairs = []
    for text in providers:
        name, sep, addr = text.partition("=")
        if not sep or not name or not addr:
            raise CliError(f"--provider {text!r}: expected NAME=MULTIADDR")
        pairs.append((name, addr))
    run(
        functools.partial(
            run_client,
            settings().home,
            pairs,
            calls=calls,
            deposit=deposit,
            max_price=max_price,
            timeout=timeout,
        )
    )
