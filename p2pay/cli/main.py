"""The ``p2pay`` command line (click): thin, it parses, calls the library and renders.

Theory of operation
-------------------
Each command resolves the home (`p2pay.cli.home`), opens what it needs (the ledger, the
store, a node) inside one ``trio.run``, and hands a plain dict to `p2pay.cli.render`
(``--json``: one JSON document on stdout; otherwise tables for a person). `main` is the
console script: it turns every expected failure (a `P2payError`, a bad file, a click
usage error) into ONE line on stderr (with ``--json``, one JSON object
``{"error": {"code", "message", "details"}}``) and a non-zero exit code, never a
traceback (``P2PAY_DEBUG=1`` shows it); `p2pay.cli.errors` words it in the user's terms.
A group run without a command (``p2pay``, ``p2pay channel``) prints its help on stderr
and exits 2, as click does.

Commands that need a running node for a moment (``channel open``/``close``, ``call``)
start a short-lived node in this process on 127.0.0.1 with the home's key, ledger and
store, do their work and stop it; their state is durable when they exit. The store is
opened exclusively, so they cannot share a home with a running ``p2pay node run``:
use one home per identity (a provider home and a client home).

Exit codes: 0 success, 1 error, 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import trio

from p2pay import __version__
from p2pay.cli import render
from p2pay.cli.common import (
    AMOUNT,
    CONTEXT,
    DURATION,
    Group,
    Settings,
    account_summary,
    bootstrap_option,
    channel_prefix,
    discovery_config,
    echo,
    home_option,
    is_help_request,
    json_option,
    ledger_option,
    open_store,
    resolve_channel,
    run,
    run_with_node,
    settings,
)
from p2pay.cli.errors import Failure, explain, report, wants_json
from p2pay.cli.home import (
    LEDGER_FORMS,
    CliError,
    Config,
    Home,
    LedgerSpec,
    account_label,
    account_of_key,
    default_home,
    format_ms,
    listen_addrs,
    open_ledger,
    parse_account,
    parse_ledger_spec,
    stable_listen,
    write_config,
)
from p2pay.cli.services import parse_service
from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair, peer_id_from_public
from p2pay.core.settlement import ChannelState, StakeStatus, stake_status

if TYPE_CHECKING:
    from p2pay.core.settlement import Event, Params
    from p2pay.ledger.base import Totals
    from p2pay.node import CallResult, ChannelInfo, DiscoveryConfig, Node, OfferInfo, Unmatched
    from p2pay.store.base import PayeeRecord, PayerRecord

log = logging.getLogger("p2pay.cli")


# ---------------------------------------------------------------------------
# the group


class _Main(Group):
    """The top group. `simulate` is loaded when it is named (or help lists it): importing
    the simulator is about half of the CLI's start-up time, which every other command
    would otherwise pay."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "simulate"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "simulate" and cmd_name not in self.commands:
            from p2pay.sim.cli import simulate

            self.add_command(simulate)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Main, context_settings=CONTEXT)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Home folder (default: $P2PAY_HOME, else the user data folder).",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help=(
        "More log lines on stderr: -v info, -vv debug and the network library's own lines. "
        "Without it only warnings and errors, but `node run` also logs what it does (info: "
        "started, refusals, redeems, claims, stopped; not each connection)."
    ),
)
@click.version_option(__version__, prog_name="p2pay")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, verbose: int) -> None:
    """p2pay: peer-to-peer messaging where every request carries its own payment.

    Amounts are integers of yocto (1 token = 10**24 yocto) or a number and a unit
    ("1.5 token", "3 milli", "250 micro"). A home folder holds one identity: its key,
    config.toml and its node's store. Use one home per process: a provider home runs
    `p2pay node run`, a client home makes calls.
    """
    path = home if home is not None else default_home()
    ctx.obj = Settings(home=Home(path.expanduser().absolute()), verbose=verbose)
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    render.setup_logging(level)


# ---------------------------------------------------------------------------
# init / id


@cli.command()
@click.option(
    "--ledger", "ledger", metavar="SPEC", help=f"The ledger this home uses: {LEDGER_FORMS}."
)
@click.option(
    "--listen", multiple=True, metavar="MULTIADDR", help="Where `node run` listens (repeatable)."
)
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="NAME=PRICE[:module:function]",
    help="A service `node run` offers (repeatable).",
)
@home_option
@json_option
def init(
    ledger: str | None, listen: tuple[str, ...], services: tuple[str, ...], as_json: bool
) -> None:
    """Create a home: a new key (0600) and config.toml. Never overwrites a key."""
    home = settings().home
    spec = parse_ledger_spec(ledger) if ledger else None
    for text in services:
        parse_service(text)
    config = Config(ledger=str(spec) if spec else None, services=list(services))
    config.listen = listen_addrs(listen) if listen else stable_listen()
    key = home.init(config)
    account = account_of_key(key, spec)
    doc = {
        "home": str(home.path),
        "peer_id": key.peer_id,
        "account": account,
        "ledger": config.ledger,
        "listen": config.listen,
        "services": config.services,
    }
    if as_json:
        render.print_json(doc)
        return
    echo(f"created home {home.path}")
    echo(f"peer id  {key.peer_id}")
    echo(f"account  {account.hex()}")
    none = (
        "(none yet: `p2pay ledger create PATH --use`, `p2pay ledger deploy RPC_URL --use`, "
        f"or --ledger {LEDGER_FORMS} on each command)"
    )
    echo(f"ledger   {config.ledger or none}")


@cli.command("id")
@home_option
@json_option
def id_(as_json: bool) -> None:
    """Show this home's peer id, ledger account, ledger id and listen addresses.

    The ledger id (specs/settlement.md "Ledger ids") is read from the home's ledger: the
    SQLite file, or the chain for an EVM ledger. A peer needs it to talk to this one (it is
    in every hello and signed message); ``ledger_id`` is null, with ``ledger_error``
    saying why, when the ledger cannot be read.
    """
    home = settings().home
    key = home.key()
    config = home.config()
    spec = parse_ledger_spec(config.ledger) if config.ledger else None
    account = account_of_key(key, spec)
    ledger_id: bytes | None = None
    ledger_error: str | None = None
    if spec is not None:
        ledger_id, ledger_error = run(_read_ledger_id, spec)
    doc: dict[str, Any] = {
        "home": str(home.path),
        "peer_id": key.peer_id,
        "account": account,
        "listen": config.listen,
        "ledger": config.ledger,
        "ledger_id": ledger_id,
    }
    if ledger_error is not None:
        doc["ledger_error"] = ledger_error
    if as_json:
        render.print_json(doc)
        return
    echo(f"peer id    {key.peer_id}")
    echo(f"account    {account.hex()}")
    echo(f"listen     {' '.join(config.listen)}")
    echo(f"ledger     {config.ledger or '(none)'}")
    if spec is not None:
        echo(f"ledger id  {ledger_id.hex() if ledger_id is not None else f'({ledger_error})'}")
    echo(f"home       {home.path}")


#: How long `p2pay id` waits for a ledger (an EVM node) before it shows no ledger id.
LEDGER_ID_TIMEOUT_S = 15


async def _read_ledger_id(spec: LedgerSpec) -> tuple[bytes | None, str | None]:
    """The ledger id of the ledger `spec` names, or None and why it cannot be read."""
    try:
        with trio.fail_after(LEDGER_ID_TIMEOUT_S):
            async with open_ledger(spec) as led:
                return led.ledger_id, None
    except trio.TooSlowError:
        return None, f"unavailable: no answer from the ledger in {LEDGER_ID_TIMEOUT_S} s"
    except (P2payError, OSError) as exc:
        return None, f"unavailable: {getattr(exc, 'message', None) or exc}"


# ---------------------------------------------------------------------------
# ledger


#: Default shortest challenge period and claim window of a new SQLite ledger (ms): the
#: time a payee has to redeem when its payer closes, and a provider to answer a claim.
SAFE_MIN_PERIOD_MS = 60_000
#: The same on a chain: 30 block intervals of 12 s.
EVM_MIN_PERIOD_MS = 30 * 12_000


@cli.group()
def ledger() -> None:
    """Create and inspect a ledger (the embedded SQLite settlement contract)."""


@ledger.command("create")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dev", is_flag=True, help="A development ledger: `ledger mint` allowed.")
@click.option("--claim-bond", type=AMOUNT, help="Bond a claimant deposits per claim.")
@click.option(
    "--min-challenge",
    type=DURATION,
    help="Shortest channel challenge period (default 60s: a payee's time to redeem).",
)
@click.option(
    "--min-claim-window",
    type=DURATION,
    help="Shortest claim window of a stake (default 60s: a provider's time to answer).",
)
@click.option(
    "--max-deadline-horizon", type=DURATION, help="Furthest request deadline; sets unbonding."
)
@click.option(
    "--claims-per-window",
    type=click.IntRange(1, 1_000_000),
    help="Claims a provider must be able to answer per claim window (default 100): a "
    "claim's window grows by window/N for each claim open against the stake.",
)
@click.option("--use", is_flag=True, help="Also make it this home's ledger (config.toml).")
@home_option
@json_option
def ledger_create(
    path: Path,
    dev: bool,
    claim_bond: int | None,
    min_challenge: int | None,
    min_claim_window: int | None,
    max_deadline_horizon: int | None,
    claims_per_window: int | None,
    use: bool,
    as_json: bool,
) -> None:
    """Create a new SQLite ledger file at PATH."""
    overrides: dict[str, Any] = {}
    for name, value in (
        ("claim_bond", claim_bond),
        ("min_challenge_ms", SAFE_MIN_PERIOD_MS if min_challenge is None else min_challenge),
        (
            "min_claim_window_ms",
            SAFE_MIN_PERIOD_MS if min_claim_window is None else min_claim_window,
        ),
        ("max_deadline_horizon_ms", max_deadline_horizon),
        ("claims_per_window", claims_per_window),
    ):
        if value is not None:
            overrides[name] = value
    spec = parse_ledger_spec(f"sqlite:{path}")
    home = settings().home
    if use:
        home.require()

    async def create() -> Params:
        from p2pay.ledger.sqlite import SqliteLedger

        try:
            made = await SqliteLedger.create(spec.target, dev=dev, **overrides)
        except FileExistsError:
            raise CliError(
                f"{spec.target} already exists; refusing to overwrite a ledger"
            ) from None
        except FileNotFoundError:
            raise CliError(f"cannot create {spec.target}: no such folder") from None
        try:
            return made.params
        finally:
            await made.aclose()

    params = run(create)
    extra = {
        "min_challenge_ms": params.min_challenge_ms,
        "min_claim_window_ms": params.min_claim_window_ms,
        "max_deadline_horizon_ms": params.max_deadline_horizon_ms,
        "claims_per_window": params.claims_per_window,
    }
    _adopt_and_report(home, spec, params, "created", use=use, as_json=as_json, extra=extra)


def _adopt_and_report(
    home: Home,
    spec: LedgerSpec,
    params: Params,
    verb: str,
    *,
    use: bool,
    as_json: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """After ``ledger create``/``deploy``: make `spec` the home's ledger if `use`, then
    print the new ledger's spec and parameters (``extra``: more fields for --json)."""
    if use:
        config = home.config()
        config.ledger = str(spec)
        write_config(home.config_path, config)
    doc = {
        "ledger": str(spec),
        "ledger_id": params.ledger_id,
        "dev": params.dev,
        "claim_bond": params.claim_bond,
        "slash_to_claimant_bps": params.slash_to_claimant_bps,
        **(extra or {}),
    }
    if as_json:
        render.print_json(doc)
        return
    echo(f"{verb} {'dev ' if params.dev else ''}ledger {spec}")
    echo(f"ledger id {params.ledger_id.hex()}")


@ledger.command("deploy")
@click.argument("rpc_url")
@click.option("--dev", is_flag=True, help="A development ledger: `ledger mint` allowed.")
@click.option("--token", metavar="0xADDRESS", help="The ERC-20 (24 decimals) to settle in.")
@click.option("--claim-bond", type=AMOUNT, help="Bond a claimant deposits per claim.")
@click.option(
    "--min-challenge",
    type=DURATION,
    help="Shortest channel challenge period (default 6m: 30 blocks of 12 s).",
)
@click.option(
    "--min-claim-window",
    type=DURATION,
    help="Shortest claim window of a stake (default 6m: 30 blocks of 12 s).",
)
@click.option(
    "--fund-dev-gas", is_flag=True, help="Dev chains (anvil): give the deployer gas money first."
)
@click.option("--use", is_flag=True, help="Also make it this home's ledger (config.toml).")
@home_option
@json_option
def ledger_deploy(
    rpc_url: str,
    dev: bool,
    token: str | None,
    claim_bond: int | None,
    min_challenge: int | None,
    min_claim_window: int | None,
    fund_dev_gas: bool,
    use: bool,
    as_json: bool,
) -> None:
    """Deploy a settlement contract on the EVM chain at RPC_URL (signed by this home's key).

    Without --token a test token (anyone may mint) is deployed too: for dev chains only.
    """
    home = settings().home
    key = home.key()
    overrides: dict[str, Any] = {} if claim_bond is None else {"claim_bond": claim_bond}
    # a payee must see a close, and a provider a claim, and get a transaction in: at least
    # 30 block intervals (specs/claims.md C-8)
    overrides["min_challenge_ms"] = EVM_MIN_PERIOD_MS if min_challenge is None else min_challenge
    overrides["min_claim_window_ms"] = (
        EVM_MIN_PERIOD_MS if min_claim_window is None else min_claim_window
    )
    token_address: bytes | None = None
    if token is not None:
        if not (token.startswith("0x") and len(token) == 42):
            raise CliError(f"--token {token!r}: expected 0x and 40 hex digits")
        try:
            token_address = bytes.fromhex(token[2:])
        except ValueError:
            raise CliError(f"--token {token!r}: expected 0x and 40 hex digits") from None

    async def deploy() -> tuple[bytes, Params]:
        try:
            from p2pay.core.evmsig import EvmKey
            from p2pay.ledger.evm import EvmLedger, Web3Chain
        except ImportError as exc:  # pragma: no cover - the evm extra is missing
            raise CliError(f"needs the evm extra (pip install 'p2pay[evm]'): {exc}") from None
        chain = Web3Chain(rpc_url)
        try:
            if fund_dev_gas:
                chain.fund(EvmKey.derive(key).address)
            made = await EvmLedger.deploy(chain, key, dev=dev, token=token_address, **overrides)
        except OSError as exc:
            raise CliError(f"cannot reach {rpc_url}: {exc}") from None
        try:
            return made.address, made.params
        finally:
            await made.aclose()

    address, params = run(deploy)
    spec = parse_ledger_spec(f"evm:{rpc_url}:0x{address.hex()}")
    if use:
        home.require()
    extra = {
        "min_challenge_ms": params.min_challenge_ms,
        "min_claim_window_ms": params.min_claim_window_ms,
        "max_deadline_horizon_ms": params.max_deadline_horizon_ms,
    }
    _adopt_and_report(home, spec, params, "deployed", use=use, as_json=as_json, extra=extra)


@ledger.command("mint")
@click.argument("account")
@click.argument("amount", type=AMOUNT)
@click.option(
    "--fund-dev-gas",
    is_flag=True,
    help="EVM dev chains (anvil): first give the sender and ACCOUNT gas money.",
)
@ledger_option
@home_option
@json_option
def ledger_mint(
    account: str, amount: int, fund_dev_gas: bool, ledger: str | None, as_json: bool
) -> None:
    """Create AMOUNT on ACCOUNT (hex account; a PeerID or /p2p/ multiaddr, or on an EVM
    ledger a 0x address). Dev ledgers only."""
    home = settings().home
    spec = home.ledger_spec(ledger)
    target = parse_account(account, spec)
    if fund_dev_gas and spec.kind != "evm":
        raise CliError("--fund-dev-gas is for EVM dev chains (evm:RPC_URL:0xCONTRACT)")
    # Any sender may mint on a dev ledger; use the home's key when there is one.
    sender = home.key() if home.exists() else Keypair.from_seed(os.urandom(32))

    async def mint() -> int:
        async with open_ledger(spec) as led:
            if fund_dev_gas:
                from p2pay.ledger.evm import EvmLedger, Web3Chain

                chain = led.chain if isinstance(led, EvmLedger) else None
                if not isinstance(chain, Web3Chain):
                    raise CliError("cannot fund gas on this chain (dev chains only): no JSON-RPC")
                sender_account = account_of_key(sender, spec)
                try:
                    for who in (sender_account, target):
                        await trio.to_thread.run_sync(chain.fund, who[12:])
                except Exception as exc:
                    raise CliError(
                        f"cannot fund gas on this chain (dev chains only): {exc}"
                    ) from None
            await led.mint(sender, target, amount)
            return await led.balance(target)

    balance = run(mint)
    doc = {
        "account": target,
        "peer_id": account_label(target, spec),
        "amount": amount,
        "balance": balance,
    }
    if as_json:
        render.print_json(doc)
        return
    echo(f"minted {render.amount_text(amount)} to {target.hex()}")
    echo(f"balance {render.amount_text(balance)}")


@ledger.command("events")
@click.option("--after", type=click.IntRange(min=0), default=0, help="Only events after seq N.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, help="At most N events.")
@ledger_option
@home_option
@json_option
def ledger_events(after: int, limit: int, ledger: str | None, as_json: bool) -> None:
    """List the ledger's events (every operation emits at least one)."""
    spec = settings().home.ledger_spec(ledger)

    async def read() -> list[Event]:
        async with open_ledger(spec) as led:
            return await led.events(after=after, limit=limit)

    events = run(read)
    doc = {
        "ledger": str(spec),
        "events": [
            {"seq": e.seq, "at": e.at, "kind": e.kind, "fields": dict(e.fields)} for e in events
        ],
    }
    if as_json:
        render.print_json(doc)
        return
    rows = []
    for e in events:
        fields = " ".join(f"{k}={render.field_text(k, v)}" for k, v in e.fields.items())
        rows.append((e.seq, render.iso_time(e.at), e.kind, fields))
    render.stdout.print(render.table(f"events of {spec}", ("seq", "at", "kind", "fields"), rows))


@ledger.command("totals")
@ledger_option
@home_option
@json_option
def ledger_totals(ledger: str | None, as_json: bool) -> None:
    """Where every yocto is: supply = balances + escrow + stakes + bonds + burnt."""
    spec = settings().home.ledger_spec(ledger)

    async def read() -> Totals:
        async with open_ledger(spec) as led:
            return await led.totals()

    totals = run(read)
    doc = {
        "ledger": str(spec),
        "supply": totals.supply,
        "balances": totals.balances,
        "escrow": totals.escrow,
        "stakes": totals.stakes,
        "bonds": totals.bonds,
        "burnt": totals.burnt,
        "conserved": totals.conserved,
    }
    if as_json:
        render.print_json(doc)
        return
    names = ("supply", "balances", "escrow", "stakes", "bonds", "burnt")
    render.stdout.print(
        render.table(None, names, [[getattr(totals, n) for n in names]], amounts=names)
    )
    echo("conserved" if totals.conserved else "NOT CONSERVED")


# ---------------------------------------------------------------------------
# balance / stake / unstake


@cli.command()
@click.option("--account", "account_text", help="Another account (hex, PeerID or multiaddr).")
@ledger_option
@home_option
@json_option
def balance(account_text: str | None, ledger: str | None, as_json: bool) -> None:
    """Show the account's free balance, stake and channel escrow."""
    home = settings().home
    spec = home.ledger_spec(ledger)
    if account_text:
        account = parse_account(account_text, spec)
    else:
        account = account_of_key(home.key(), spec)

    async def read() -> dict[str, Any]:
        async with open_ledger(spec) as led:
            return await account_summary(led, account)

    doc = run(read)
    if as_json:
        render.print_json(doc)
        return
    echo(f"account  {account.hex()}")
    names = ("balance", "staked", "escrow_out", "escrow_in", "bonds")
    render.stdout.print(render.table(None, names, [[doc[n] for n in names]], amounts=names))
    echo(f"stake    {doc['stake_status']}, channels open {doc['channels_open']}")


@cli.command()
@click.argument("amount", type=AMOUNT)
@click.option("--penalty", type=AMOUNT, help="Slashed per upheld claim (default: current).")
@click.option(
    "--claim-window", type=DURATION, help="How long claims stay open: 1500 (ms), 10s, 5m."
)
@ledger_option
@home_option
@json_option
def stake(
    amount: int, penalty: int | None, claim_window: int | None, ledger: str | None, as_json: bool
) -> None:
    """Stake AMOUNT as collateral for the paid requests this identity serves."""
    home = settings().home
    key = home.key()
    spec = home.ledger_spec(ledger)
    me = account_of_key(key, spec)

    async def do() -> dict[str, Any]:
        async with open_ledger(spec) as led:
            current = await led.stake_of(me)
            pen, window = penalty, claim_window
            if current is not None and current.amount > 0:
                pen = current.penalty if pen is None else pen
                window = current.claim_window_ms if window is None else window
            if pen is None or window is None:
                raise CliError("a first stake needs --penalty AMOUNT and --claim-window DURATION")
            await led.stake(key, amount, pen, window)
            return await account_summary(led, me)

    doc = run(do)
    if as_json:
        render.print_json(doc)
        return
    echo(f"staked {render.amount_text(doc['staked'])} in total")
    echo(
        f"penalty {render.amount_text(doc['penalty'])} per upheld claim, "
        f"claim window {format_ms(doc['claim_window_ms'])}"
    )


@cli.command()
@click.option("--withdraw", is_flag=True, help="Withdraw a stake whose unbonding has ended.")
@ledger_option
@home_option
@json_option
def unstake(withdraw: bool, ledger: str | None, as_json: bool) -> None:
    """Request unstaking (starts the unbonding period), or --withdraw after it.

    Keep `p2pay node run` going until the unbonding period ends: claims can still be filed
    for requests dated up to the unstake time plus the deadline horizon (specs/claims.md C-9),
    and only a running watcher answers them.
    """
    home = settings().home
    key = home.key()
    spec = home.ledger_spec(ledger)
    me = account_of_key(key, spec)

    async def do() -> dict[str, Any]:
        async with open_ledger(spec) as led:
            before = await led.stake_of(me)
            if withdraw:
                await led.withdraw_stake(key)
            else:
                await led.request_unstake(key)
            doc = await account_summary(led, me)
            doc["withdrawn"] = before.amount if (withdraw and before is not None) else 0
            return doc

    doc = run(do)
    if as_json:
        render.print_json(doc)
        return
    if withdraw:
        echo(f"withdrew {render.amount_text(doc['withdrawn'])}")
        echo(f"balance {render.amount_text(doc['balance'])}")
    else:
        echo(f"unbonding {render.amount_text(doc['staked'])}")
        echo(
            f"withdraw with `p2pay unstake --withdraw` after {render.iso_time(doc['unbonding_at'])}"
        )
        echo(
            "keep `p2pay node run` going until then: its watcher answers claims that may "
            "still be filed against the stake"
        )


# ---------------------------------------------------------------------------
# channels


@cli.group()
def channel() -> None:
    """Open, list and close payment channels."""


def _channel_row(
    ch: Any, me: bytes, local: dict[bytes, Any], faulty: dict[bytes, str], spec: LedgerSpec
) -> dict[str, Any]:
    role = "payer" if ch.payer == me else "payee"
    other = ch.payee if role == "payer" else ch.payer
    rec = local.get(ch.id)
    return {
        "channel": ch.id,
        "role": role,
        "peer": account_label(other, spec),
        "state": str(ch.state),
        "deposit": ch.deposit,
        "redeemed": ch.redeemed,
        "escrow": ch.escrow,
        "challenge_ms": ch.challenge_ms,
        "closes_at": ch.closes_at,
        "paid": (rec.paid if role == "payer" else rec.paid_max) if rec is not None else None,
        "spent": rec.spent if rec is not None else None,
        "last_n": rec.last_n if rec is not None else None,
        # why its payee is faulty (protocol.md 14.3): nothing more is paid on it
        "faulty": faulty.get(ch.id) if role == "payer" else None,
    }


@channel.command("list")
@ledger_option
@home_option
@json_option
def channel_list(ledger: str | None, as_json: bool) -> None:
    """List this identity's channels (ledger state, and what the local store knows)."""
    home = settings().home
    key = home.key()
    spec = home.ledger_spec(ledger)
    me = account_of_key(key, spec)

    from p2pay.node.book import FAULTY_KEY, faulty_from_bytes

    async def read() -> dict[str, Any]:
        local: dict[bytes, PayerRecord | PayeeRecord] = {}
        faulty: dict[bytes, str] = {}
        store_note = None
        if home.store_path.exists():
            try:
                store = await open_store(home)
            except CliError as exc:
                store_note = exc.message
                log.warning("local store not read: %s", exc.message)
            else:
                try:
                    for payer_rec in await store.payer_channels():
                        local[payer_rec.channel] = payer_rec
                    for payee_rec in await store.payee_channels():
                        local[payee_rec.channel] = payee_rec
                    faulty = faulty_from_bytes(await store.get_meta(FAULTY_KEY))
                finally:
                    await store.aclose()
        async with open_ledger(spec) as led:
            chans = await led.channels_of(me)
        return {
            "account": me,
            "channels": [_channel_row(c, me, local, faulty, spec) for c in chans],
            "store": "read" if store_note is None else "busy",
        }

    doc = run(read)
    if as_json:
        render.print_json(doc)
        return
    # ids shortened like `claims list` (`channel close` takes a unique prefix of 8 or more
    # hex digits; --json has the full ids); paid: what the payer's vouchers promise (for a
    # payee, the most it has seen), spent: what the payee charged (13.1); empty when this
    # home's store has no record of the channel. Each amount column in one unit, named in
    # its header.
    cols = ("channel", "role", "peer", "state", "deposit", "paid", "spent", "redeemed", "escrow")
    rows = [
        [
            render.short(c["channel"]),
            c["role"],
            render.short(c["peer"]),
            c["state"] + (" (payee faulty)" if c["faulty"] else ""),
            c["deposit"],
            c["paid"],
            c["spent"],
            c["redeemed"],
            c["escrow"],
        ]
        for c in doc["channels"]
    ]
    money = ("deposit", "paid", "spent", "redeemed", "escrow")
    render.stdout.print(
        render.unit_table("channels", cols, rows, amounts=money, whole=("channel", "peer"))
    )


@channel.command("open")
@click.argument("peer")
@click.option("--deposit", type=AMOUNT, required=True, help="Escrow for calls to PEER.")
@click.option(
    "--challenge", type=DURATION, help="Challenge period of a payer close (default: config)."
)
@click.option(
    "--max-price",
    type=AMOUNT,
    help="Refuse PEER if it offers no service at or below this price a call.",
)
@click.option(
    "--no-stake-ok", is_flag=True, help="Accept a PEER with no stake (refused by default)."
)
@click.option(
    "--offline",
    is_flag=True,
    help="Do not contact PEER first (ledger only): if PEER never answers, the deposit stays "
    "locked until a close's challenge period ends.",
)
@ledger_option
@home_option
@json_option
def channel_open(
    peer: str,
    deposit: int,
    challenge: int | None,
    max_price: int | None,
    no_stake_ok: bool,
    offline: bool,
    ledger: str | None,
    as_json: bool,
) -> None:
    """Open a channel to PEER (a multiaddr ending in /p2p/<PeerID>, or a PeerID whose
    address this home knows from an earlier call or open).

    PEER is contacted first: its hello must name this ledger and its terms must be
    acceptable (a stake, unless --no-stake-ok; a price within --max-price, when given),
    else nothing moves on the ledger. The terms are printed. --offline skips this.
    """
    home = settings().home
    spec = home.ledger_spec(ledger)
    if offline:
        if spec.kind == "evm":
            raise CliError(
                "--offline needs an ed25519 ledger: on an EVM ledger the payee's account is "
                "what its hello binds, so `channel open` must contact it"
            )
        # a ledger operation only: the peer's PeerID is all it needs (no connection)
        target: str = peer_id_from_public(parse_account(peer, spec))
    else:
        target = peer

    async def do(node: Node) -> tuple[ChannelInfo, Any, Any]:
        hello = None if offline else await node.connect(target)
        info = await node.open_channel(
            target,
            deposit=deposit,
            challenge_ms=challenge,
            offline=offline,
            require_stake=not no_stake_ok,
            max_price=max_price,
        )
        # the stake shown is the ledger's, not the hello's word (protocol.md 9 rule 6)
        stake = None if hello is None else await node.ledger.stake_of(hello.account)
        return info, hello, stake

    info, hello, stake = run_with_node(home, ledger, do, offline=offline)
    terms: dict[str, Any] | None = None
    if hello is not None:
        if stake is not None and stake_status(stake) is not StakeStatus.BONDED:
            stake = None
        # amounts as strings of yocto, as in every JSON document
        terms = {
            "stake": str(stake.amount if stake is not None else 0),
            "penalty": str(stake.penalty if stake is not None else 0),
            "claim_window_ms": stake.claim_window_ms if stake is not None else 0,
            "prices": {s.name: str(s.price) for s in hello.services},
        }
    doc = {
        "channel": info.channel,
        "role": info.role,
        "peer": info.peer,
        "deposit": info.deposit,
        "state": info.status,
        "terms": terms,
    }
    if as_json:
        render.print_json(doc)
        return
    echo(f"opened channel {info.channel.hex()}")
    echo(f"to {info.peer}, deposit {render.amount_text(info.deposit)}")
    if terms is not None:
        prices = ", ".join(f"{k} {render.amount_text(int(v))}" for k, v in terms["prices"].items())
        staked = (
            f"stake {render.amount_text(int(terms['stake']))}, penalty "
            f"{render.amount_text(int(terms['penalty']))}, claim window "
            f"{format_ms(terms['claim_window_ms'])}"
            if terms["stake"] != "0"
            else "no stake"
        )
        echo(f"terms {staked}; prices {prices or '(no services)'}")


@channel.command("top-up")
@click.argument("channel_id", metavar="CHANNEL")
@click.argument("amount", type=AMOUNT)
@ledger_option
@home_option
@json_option
def channel_top_up(channel_id: str, amount: int, ledger: str | None, as_json: bool) -> None:
    """Add AMOUNT to the escrow of a channel this identity pays on.

    CHANNEL: its id, or the first 8 or more hex digits of it (as `channel list` shows)."""
    home = settings().home
    channel_prefix(channel_id)  # a malformed id fails before anything starts

    async def do(node: Node) -> ChannelInfo:
        cid = await resolve_channel(node.ledger, node.account, channel_id)
        return await node.top_up(cid, amount)

    info = run_with_node(home, ledger, do, offline=True)
    doc = {"channel": info.channel, "deposit": info.deposit, "state": info.status}
    if as_json:
        render.print_json(doc)
        return
    echo(f"channel {info.channel.hex()} deposit {render.amount_text(info.deposit)}")


@channel.command("close")
@click.argument("channel_id", metavar="CHANNEL")
@click.option("--wait", is_flag=True, help="As payer, wait for the challenge period and finalize.")
@ledger_option
@home_option
@json_option
def channel_close(channel_id: str, wait: bool, ledger: str | None, as_json: bool) -> None:
    """Close a channel: as payee at once (redeeming what was charged); as payer start the
    challenge period, and finalize once it has passed (run again, or use --wait).

    CHANNEL: its id, or the first 8 or more hex digits of it (as `channel list` shows)."""
    home = settings().home
    channel_prefix(channel_id)  # a malformed id fails before anything starts

    async def do(node: Node) -> dict[str, Any]:
        cid = await resolve_channel(node.ledger, node.account, channel_id)
        return await close_channel(node, cid, wait=wait)

    doc = run_with_node(home, ledger, do, offline=True)
    if as_json:
        render.print_json(doc)
        return
    echo(f"channel {doc['channel'].hex()} {doc['state']}")
    if doc["state"] == "closing":
        echo(f"finalize after {render.iso_time(doc['closes_at'])}: run this again, or use --wait")
    else:
        echo(f"redeemed {render.amount_text(doc['redeemed'])} to the payee in total")


async def _own_channel(led: Any, cid: bytes) -> Any:
    """`cid` as of the latest block on a ledger with confirmations (settlement.md 10): a
    party closing its own channel acts on its own transactions, which the contract checks
    at the latest block anyway; read k blocks back, `close --wait` neither waited nor
    finalized, and a second close failed CHALLENGE_PENDING (attack round 49)."""
    if getattr(led, "confirmations", 0):
        return await led.channel(cid, latest=True)
    return await led.channel(cid)


async def close_channel(node: Node, cid: bytes, *, wait: bool) -> dict[str, Any]:
    """Close `cid` as whichever party `node` is; finalize a payer close when due."""
    led = node.ledger
    info = await _own_channel(led, cid)
    if info is None:
        raise CliError(f"no channel {cid.hex()} on this ledger")
    me = node.account
    if info.payee == me:
        if info.state is not ChannelState.CLOSED:
            if cid in node.payee_channels:
                await node.close_channel(cid)
            else:  # never served on it: nothing charged, close at once
                await led.payee_close(node.key, cid)
    elif info.payer == me:
        if info.state is ChannelState.OPEN:
            if cid in node.payer_channels:
                await node.close_channel(cid)
            else:
                await led.start_close(node.key, cid)
        info = await _own_channel(led, cid)
        assert info is not None
        if info.state is ChannelState.CLOSING:
            now = await led.now()
            if wait and now < info.closes_at:
                await trio.sleep((info.closes_at - now) / 1000 + 0.05)
                for _ in range(100):  # ledger time is the writer's clock: bounded re-check
                    if await led.now() >= info.closes_at:
                        break
                    await trio.sleep(0.05)
            if await led.now() >= info.closes_at:
                await led.finalize_close(node.key, cid)
    else:
        raise CliError(f"channel {cid.hex()} is not this identity's (neither payer nor payee)")
    await node.refresh_channel(cid)
    await node.persister.flush()
    final = await _own_channel(led, cid)
    assert final is not None
    return {
        "channel": cid,
        "role": "payee" if final.payee == me else "payer",
        "state": str(final.state),
        "deposit": final.deposit,
        "redeemed": final.redeemed,
        "refunded": final.deposit - final.redeemed if final.state is ChannelState.CLOSED else 0,
        "closes_at": final.closes_at,
    }


# ---------------------------------------------------------------------------
# call


def call_document(result: Any) -> dict[str, Any]:
    """The JSON of a paid call: body, price, n, channel and the signed receipt (and, for
    ``call any``, the provider that answered and every provider tried)."""
    receipt = result.receipt
    try:
        text: str | None = result.body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    found: dict[str, Any] = {}
    if result.peer:
        found = {
            "peer": result.peer,
            "attempts": [
                {"peer": a.peer, "outcome": a.outcome, "code": a.code, "message": a.message}
                for a in result.attempts
            ],
            "opened": result.opened,
            "deposit": result.deposit,
        }
    return {
        **found,
        "body": text,
        "body_hex": result.body,
        "price": result.price,
        "n": result.n,
        "channel": result.channel,
        "spent": result.spent,
        "receipt": {
            "frame": receipt.to_frame(),
            "ledger": receipt.ledger,
            "channel": receipt.channel,
            "n": receipt.n,
            "request_hash": receipt.request_hash,
            "status": receipt.status,
            "price": receipt.price,
            "spent": receipt.spent,
            "body_hash": receipt.body_hash,
            "signature": receipt.signature,
        },
    }


async def timeout_advice(node: Node, peer: str, message: str) -> str:
    """What `call` says when a paid request got no answer: what a claim would risk."""
    try:
        stake = await node.ledger.stake_of(await node.account_of(peer))
    except P2payError:
        stake = None
    if stake is None or stake.amount == 0 or stake.unbonding_at:
        return (
            f"{message}; the provider has no bonded stake, so this request cannot be claimed "
            "(it may still answer: `p2pay node run` on this home re-sends it and keeps a late "
            "answer)"
        )
    bond = render.amount_text(node.ledger.params.claim_bond)
    return (
        f"{message}; the paid request is on record: `p2pay node run` on this home re-sends it "
        "and, only if that brings no answer, claims it within the provider's claim window "
        f"({format_ms(stake.claim_window_ms)} after its deadline). A claim locks a bond of "
        f"{bond} until the provider answers or the window ends; the bond comes back unless "
        "the claim is frivolous (in conflict with another request you signed)"
    )


async def call_any(
    node: Node, service: str, body: bytes, *, max_price: int, timeout: float, min_stake: int = 0
) -> CallResult:
    """`Node.call_any`; a NO_PROVIDER whose attempts include a timed-out paid request
    says, for it, what `call PEER` says of one (`timeout_advice`)."""
    from p2pay.node import NoProvider
    from p2pay.node.discovery import failed_text, none_served

    try:
        return await node.call_any(
            service, body, max_price=max_price, timeout=timeout, min_stake=min_stake
        )
    except NoProvider as exc:
        if not any(a.outcome == "timed_out" for a in exc.attempts):
            raise
        parts = []
        for a in exc.attempts:
            said = failed_text(a)
            if a.outcome == "timed_out":
                said = await timeout_advice(node, a.peer, said)
            parts.append(said)
        raise NoProvider(
            none_served(service, parts), attempts=exc.attempts, details=dict(exc.details)
        ) from None


def via_line(result: CallResult) -> str:
    """What `call any` did, for a person (stderr): the provider that answered, the price,
    the channel (opened, with its deposit, or reused), and the providers skipped."""
    from p2pay.core.amounts import format_tokens
    from p2pay.node.discovery import prose

    channel = render.short(result.channel, 4)
    if result.opened:
        how = f"opened channel {channel}, deposit {format_tokens(result.deposit)} token"
    else:
        how = f"channel {channel}"
    line = f"via {render.short(result.peer, 4)} (price {result.price} yocto; {how})"
    skipped = [
        f"{render.short(a.peer, 4)} {prose(a.outcome)}" + (f" ({a.code})" if a.code else "")
        for a in result.attempts
        if a.outcome != "ok"
    ]
    return line + (f"; skipped {', '.join(skipped)}" if skipped else "")


def need_bootstrap(home: Home, bootstrap: Sequence[str]) -> DiscoveryConfig:
    """The home's discovery config with the `bootstrap` peers added (`discovery_config`).

    Raises:
        CliError: it has no peer to join the network through.
    """
    joining = discovery_config(home.config(), bootstrap)
    if not joining.bootstrap:
        raise CliError(
            "no bootstrap peer to find providers through: pass --bootstrap MULTIADDR (a "
            "running node's address, /ip4/HOST/tcp/PORT/p2p/<PeerID>), or set bootstrap in "
            "[discovery] of this home's config.toml"
        )
    return joining


def offer_row(offer: OfferInfo) -> dict[str, Any]:
    """One offer as `find --json` prints it (an offer carries no time it was made:
    ``seen_ms_ago`` is since this command received it, ``expires_in_ms`` until it is
    void)."""
    return {
        "peer": offer.peer,
        "addrs": list(offer.addrs),
        "service": offer.service,
        "price": offer.price,
        "max_body": offer.max_body,
        "stake": offer.stake,
        "penalty": offer.penalty,
        "claim_window_ms": offer.claim_window_ms,
        "expires": offer.expires,
        "expires_in_ms": offer.expires_in_ms,
        "seen_ms_ago": offer.seen_ms_ago,
        "seq": offer.seq,
    }


@cli.command()
@click.argument("service")
@click.option("--max-price", type=AMOUNT, help="Only offers at or below this price a call.")
@click.option("--min-stake", type=AMOUNT, default=0, help="Only offers with at least this stake.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0, max=600),
    default=10.0,
    show_default=True,
    help="Seconds to look for offers at most.",
)
@bootstrap_option
@ledger_option
@home_option
@json_option
def find(
    service: str,
    max_price: int | None,
    min_stake: int,
    wait: float,
    bootstrap: tuple[str, ...],
    ledger: str | None,
    as_json: bool,
) -> None:
    """List the live offers of SERVICE: who sells it, where, at what price, with which
    stake (read on the ledger), and how long each offer holds (expires in).

    The node joins the network through the bootstrap peers (--bootstrap, and config.toml's
    [discovery] bootstrap), asks the DHT for the service's providers, fetches and checks
    their signed offers, and listens to the offers gossiped meanwhile. Not while `node run`
    runs on this same home.

    An offer lives until it expires (three announce intervals after its provider made it;
    a running provider renews it every interval): a provider that stopped stays listed
    until then. When no bootstrap peer can be reached, find fails (UNREACHABLE) rather
    than list nothing; when offers exist outside --max-price / --min-stake, it says how
    many and the nearest terms. --json: seen_ms_ago is the time since this command
    received an offer, expires_in_ms the time left before it is void.
    """
    from p2pay.node.discovery import none_within

    home = settings().home
    joining = need_bootstrap(home, bootstrap)

    async def do(node: Node) -> tuple[list[OfferInfo], Unmatched]:
        found = await node.find(service, max_price=max_price, min_stake=min_stake, wait=wait)
        assert node.discovery is not None
        return found, node.discovery.unmatched(service, max_price=max_price, min_stake=min_stake)

    offers, left = run_with_node(home, ledger, do, discovery=joining)
    doc = {
        "service": service,
        "offers": [offer_row(o) for o in offers],
        "left_out": {  # amounts as decimal strings of yocto, as everywhere
            "above_max_price": left.above_price,
            "lowest_price": None if left.lowest_price is None else str(left.lowest_price),
            "below_min_stake": left.below_stake,
            "highest_stake": None if left.highest_stake is None else str(left.highest_stake),
        },
    }
    if as_json:
        render.print_json(doc)
        return
    if not offers:
        echo(none_within(service, left, max_price=max_price, min_stake=min_stake))
        return
    cols = ("peer", "price", "stake", "expires in", "addresses")
    rows = [
        [o.peer, o.price, o.stake, format_ms(max(o.expires_in_ms, 1)), " ".join(o.addrs)]
        for o in offers
    ]
    render.stdout.print(
        render.table(
            f"offers of {service}", cols, rows, amounts=("price", "stake"), whole=("peer",)
        )
    )


@cli.command()
@click.argument("peer")
@click.argument("service")
@click.argument("data", required=False)
@click.option("--max-price", type=AMOUNT, required=True, help="The most this call may cost.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.001, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait; also the request's deadline.",
)
@click.option(
    "--raw", is_flag=True, help="Print the body's bytes exactly (no newline added at the end)."
)
@click.option(
    "--min-stake",
    type=AMOUNT,
    default=None,
    help="With PEER any: only providers staking at least this (default: any stake).",
)
@bootstrap_option
@ledger_option
@home_option
@json_option
def call(
    peer: str,
    service: str,
    data: str | None,
    max_price: int,
    timeout: float,
    raw: bool,
    min_stake: int | None,
    bootstrap: tuple[str, ...],
    ledger: str | None,
    as_json: bool,
) -> None:
    """Call SERVICE on PEER with DATA (text; "-" reads stdin) and print the response body.

    PEER "any" calls the best provider of SERVICE found on the network (`p2pay find`
    lists them): of the offers at or below --max-price, the one with the fewest recent
    failures, then the cheapest, the best staked, the fastest.
    A channel to it is reused, or opened with a deposit of config.toml's [discovery]
    deposit_calls x the price (at most max_deposit); an unreachable, refusing or silent
    provider is skipped for the next one (at most max_attempts), and ranked after the
    others by the next runs (the failures seen and liars caught are kept in this home).
    --min-stake skips providers staking less (a stake is what a stranger puts at risk). It
    says on stderr which provider answered, through which channel, and whom it skipped
    (--json: in the document). Needs a bootstrap peer (--bootstrap or config.toml).

    Any other PEER needs an open channel to it (p2pay channel open). A paid request left unanswered
    stays on record: `p2pay node run` on this home re-sends it and, only if that brings no
    answer and the provider has a stake, claims it within the provider's claim window. A
    claim locks the ledger's claim bond until the provider answers or the window ends; the
    bond comes back unless the claim is frivolous. Not while `node run` runs on this same
    home: a home is used by one process at a time.

    The body is printed followed by a newline (unless it ends with one already); --raw
    prints its bytes exactly, --json a document with the body and the signed receipt.
    """
    home = settings().home
    if data == "-":
        body = sys.stdin.buffer.read()
    else:
        body = (data or "").encode("utf-8", "surrogateescape")

    anyone = peer == "any"
    joining = None
    if anyone:
        joining = need_bootstrap(home, bootstrap)
    elif bootstrap:
        raise CliError("--bootstrap is for `call any`: a call to PEER needs no network")
    elif min_stake is not None:
        raise CliError("--min-stake is for `call any`: a call to PEER needs an open channel")

    async def do(node: Node) -> CallResult:
        from p2pay.node import CallTimeout

        if anyone:
            return await call_any(
                node, service, body, max_price=max_price, timeout=timeout, min_stake=min_stake or 0
            )
        try:
            return await node.call(peer, service, body, max_price=max_price, timeout=timeout)
        except CallTimeout as exc:  # its code kept (DEADLINE_EXCEEDED), the advice added
            advice = await timeout_advice(node, peer, exc.message)
            raise CallTimeout(advice, details=dict(exc.details)) from None

    # Every receipt is checked before the node accepts it (protocol.md 14.4, K = 1): this
    # command shows it as the payee's signature anyway, and a forged one accepted first
    # would be paid for, end the call with an error instead of `call any`'s next provider,
    # count as the provider's success in the ranking the next runs use, and leave nothing
    # to re-send or claim (the request would be answered). One check per call costs nothing.
    result = run_with_node(home, ledger, do, discovery=joining, receipt_check_every=1)
    if as_json:
        render.print_json(call_document(result))
        return
    if anyone:
        sys.stderr.write(via_line(result) + "\n")
        sys.stderr.flush()
    out = sys.stdout.buffer
    out.write(result.body)
    if not raw and not result.body.endswith(b"\n"):
        out.write(b"\n")
    out.flush()


# ---------------------------------------------------------------------------
# claims


@cli.group()
def claims() -> None:
    """Claims filed by or against this identity."""


@claims.command("list")
@ledger_option
@home_option
@json_option
def claims_list(ledger: str | None, as_json: bool) -> None:
    """List claims where this identity is claimant or respondent, with their outcomes.

    outcome: open, delivered (answered with the answer), refused (answered with a signed
    refusal: the request's price refunded), frivolous (answered with a conflicting request
    the claimant signed: its bond lost), upheld (not answered in time: the provider slashed,
    the price refunded). status: the answer's status. bond_outcome: locked (while open),
    returned, or lost to the respondent (frivolous); bond_to: who got it (empty while
    open). refund, clawed (the part of the refund taken from the provider's stake) and
    slashed are amounts (strings of yocto in --json); window_ends: when the provider's
    time to answer ends (ISO 8601 UTC in the table, Unix ms in --json).
    """
    home = settings().home
    key = home.key()
    spec = home.ledger_spec(ledger)
    me = account_of_key(key, spec)

    async def read() -> list[dict[str, Any]]:
        from p2pay.ledger.base import claims_one_by_one

        # in filing order, one claim at a time (anyone can file claims of 1 MiB against
        # a provider): each row keeps no frame
        async with open_ledger(spec) as led:
            return [claim_row(c, me, spec) async for c in claims_one_by_one(led, me)]

    rows = run(read)
    if as_json:
        render.print_json({"account": me, "claims": rows})
        return
    if not rows:
        echo("no claims")
        return
    cols = (
        "claim", "role", "outcome", "status", "n", "bond", "bond_outcome", "refund", "slashed",
        "window_ends",
    )  # fmt: skip
    table = [[render.iso_time(r[c]) if c == "window_ends" else r[c] for c in cols] for r in rows]
    render.stdout.print(render.table("claims", cols, table, amounts=("bond", "refund", "slashed")))


#: What became of a claim's bond, by outcome (specs/claims.md 3): only a frivolous claim
#: loses it (to the respondent); an open claim holds it.
BOND_OUTCOME = {
    "open": "locked",
    "delivered": "returned",
    "refused": "returned",
    "upheld": "returned",
    "frivolous": "lost to the respondent",
}


def claim_row(claim: Any, me: bytes, spec: Any) -> dict[str, Any]:
    """One claim for `claims list` (amounts as ints: --json prints them as strings)."""
    from p2pay.core.messages import Response, decode_held_frame
    from p2pay.node.watcher import claim_outcome

    outcome = claim_outcome(claim)
    status = ""
    if claim.response_frame:
        try:
            response = decode_held_frame(claim.response_frame)
        except P2payError:
            response = None
        status = response.status if isinstance(response, Response) else "INVALID"
    bond_to = {"open": ""}.get(outcome, "respondent" if outcome == "frivolous" else "claimant")
    claimant = claim.claimant == me
    return {
        "claim": claim.id,
        "role": "claimant" if claimant else "respondent",
        "outcome": outcome,
        "state": outcome,
        "status": status,
        "claimant": account_label(claim.claimant, spec),
        "respondent": account_label(claim.respondent, spec),
        "channel": claim.channel,
        "n": claim.n,
        "price": claim.price,
        "bond": claim.bond,
        "bond_to": bond_to,
        "bond_outcome": BOND_OUTCOME.get(outcome, ""),
        "bond_returned": None if outcome == "open" else bond_to == "claimant",
        "refund": claim.refund,
        "clawed": claim.clawed,
        "slashed": claim.slashed,
        "filed_at": claim.filed_at,
        "window_ends": claim.window_ends,
    }


# ---------------------------------------------------------------------------
# node run

from p2pay.cli.conformance import conformance  # noqa: E402 - after `cli` exists
from p2pay.cli.demo import demo, demo_client  # noqa: E402
from p2pay.cli.node_run import node_group  # noqa: E402

cli.add_command(node_group)
cli.add_command(conformance)
cli.add_command(demo)
cli.add_command(demo_client)


# ---------------------------------------------------------------------------
# entry point


def _leaf(exc: BaseException) -> BaseException:
    """The exception to report out of trio's exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = list(exc.exceptions)
        preferred = [e for e in leaves if isinstance(e, P2payError | click.ClickException)]
        exc = (preferred or leaves)[0]
    return exc


def failure_of(exc: BaseException) -> Failure:
    """What the user is told about `exc` (see `p2pay.cli.errors`)."""
    if isinstance(exc, click.UsageError) and is_help_request(exc):
        return Failure("USAGE", exc.message, exit_code=exc.exit_code, verbatim=True)
    if isinstance(exc, click.UsageError):
        details: dict[str, Any] = {}
        hint = ""
        if exc.ctx is not None:
            hint = f" (see: {exc.ctx.command_path} --help)"
            details["command"] = exc.ctx.command_path
        param = getattr(exc, "param", None)
        if isinstance(param, click.Parameter):
            details["parameter"] = param.human_readable_name
        return Failure(
            "USAGE", exc.format_message() + hint, exit_code=exc.exit_code, details=details
        )
    if isinstance(exc, click.ClickException):
        return Failure("INVALID_ARGUMENT", exc.format_message(), exit_code=exc.exit_code)
    if isinstance(exc, KeyboardInterrupt | click.Abort):
        return Failure("INTERRUPTED", "interrupted", exit_code=130)
    if isinstance(exc, P2payError):
        message, details = explain(exc.message, exc.details)
        # a CliError's message is already the user's; a library error leads with its code
        return Failure(
            exc.code.value, message, details=details, show_code=not isinstance(exc, CliError)
        )
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return Failure("OS_ERROR", f"{exc.strerror or exc}{where}")
    return Failure(
        "INTERNAL", f"unexpected {type(exc).__name__}: {exc} (P2PAY_DEBUG=1 shows the traceback)"
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console script entry point: run the CLI; any failure is one line on stderr (one
    JSON object with ``--json``) and a non-zero exit code."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        rv = cli.main(args=args, prog_name="p2pay", standalone_mode=False)
    except BaseException as raised:  # every failure becomes one line
        exc = _leaf(raised)
        if os.environ.get("P2PAY_DEBUG") and not isinstance(exc, SystemExit):
            raise
        if isinstance(exc, SystemExit):
            raise exc from None
        if isinstance(exc, click.exceptions.Exit):
            raise SystemExit(exc.exit_code) from None
        failure = failure_of(exc)
        report(failure, as_json=wants_json(args))
        raise SystemExit(failure.exit_code) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)


__all__ = ["cli", "main"]
