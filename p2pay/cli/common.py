"""What the commands share: parameter types, common options, the home, short-lived nodes.

Theory of operation
-------------------
`Settings` (the click context object) carries the resolved home. Every command that
needs it accepts ``--home`` too (`home_option`), so ``p2pay --home A cmd`` and
``p2pay cmd --home A`` mean the same. Amounts are read by `AMOUNT`
(`p2pay.cli.errors.read_amount`: an integer of yocto, or a number and a unit), durations
by `DURATION` (`p2pay.cli.home.parse_duration_ms`); a bad value is a click usage error.

`short_node` runs a node for one command (``channel open``/``close``, ``call``): the
home's key, ledger and store, listening on 127.0.0.1 with any free port and no watcher.
When it exits the node's persister has flushed and the store is closed, so the state the
command changed is durable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

import click
import trio

from p2pay.cli import render
from p2pay.cli.errors import read_amount
from p2pay.cli.home import (
    LEDGER_FORMS,
    CliError,
    Config,
    Home,
    bootstrap_addrs,
    check_node_overrides,
    open_ledger,
    parse_duration_ms,
)
from p2pay.cli.render import quoted
from p2pay.core.errors import AmountError, ErrorCode
from p2pay.core.identity import peer_id_from_public
from p2pay.core.settlement import ChannelState, ClaimState, stake_status
from p2pay.core.signing import Scheme, scheme_for

if TYPE_CHECKING:  # keeps `p2pay --help` from importing the node and the store
    from p2pay.ledger.base import Ledger
    from p2pay.net.base import DiscoveryNet, Transport
    from p2pay.node import DiscoveryConfig, DiscoveryFactory, Node, NodeConfig
    from p2pay.store.sqlite import SqliteStore

    # click >= 8.4 types ParamType by the value it converts to; older clicks (which the
    # package still runs with) cannot subscript it at run time.
    _IntParamType = click.ParamType[int]
else:
    _IntParamType = click.ParamType

log = logging.getLogger("p2pay.cli")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EPHEMERAL_LISTEN = ("/ip4/127.0.0.1/tcp/0",)


# ---------------------------------------------------------------------------
# parameter types


#: What a user typed that click took for an option but is a negative number.
_NEGATIVE = re.compile(r"-[0-9.]")


class AmountType(_IntParamType):
    """An amount: an integer of yocto, or a number and a unit ("1.5 token", "3 milli")."""

    name = "AMOUNT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return read_amount(str(value))
        except AmountError as exc:
            self.fail(exc.message, param, ctx)


class DurationType(_IntParamType):
    """A duration in ms: "1500", "250ms", "2s", "5m", "1h"."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value)
        if text.strip().startswith("-"):
            self.fail(f"{quoted(text.strip())} is negative: a duration is 0 or more", param, ctx)
        try:
            return parse_duration_ms(text)
        except CliError as exc:
            self.fail(exc.message, param, ctx)


AMOUNT = AmountType()
DURATION = DurationType()


# ---------------------------------------------------------------------------
# command classes


def is_help_request(exc: click.UsageError) -> bool:
    """True for the usage error of a group run without a command: its message is the
    group's help (click >= 8.2 raises it so; `Group` does on older clicks too)."""
    return exc.ctx is not None and exc.message == exc.ctx.get_help()


class Command(click.Command):
    """A command whose AMOUNT arguments may be typed negative: it says so (click alone
    takes ``-5`` for an unknown option). An argument typed with a leading ``-`` that is
    no option gets a hint: put it after ``--``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        typed = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            amounts = [
                p
                for p in self.params
                if isinstance(p, click.Argument) and isinstance(p.type, AmountType)
            ]
            negative = [a for a in typed if _NEGATIVE.match(a)]
            if not amounts or not negative or not negative[0].startswith(exc.option_name):
                takes_text = any(isinstance(p, click.Argument) for p in self.params)
                dash = not exc.option_name.startswith("--")
                if takes_text and dash and exc.option_name in typed and not exc.possibilities:
                    raise click.UsageError(
                        f"No such option {exc.option_name!r}: an argument that starts with '-' "
                        f"goes after '--' ({ctx.command_path} ... -- {exc.option_name})",
                        ctx=ctx,
                    ) from None
                raise
            raise click.BadParameter(
                f"{quoted(negative[0])} is negative: an amount is 0 or more",
                ctx=ctx,
                param=amounts[0],
            ) from None


class Group(click.Group):
    """A group whose commands are `Command`s and subgroups `Group`s; run bare, it raises a
    usage error whose message is its help (`is_help_request`), on every click version."""

    command_class = Command
    group_class = type

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            raise click.UsageError(ctx.get_help(), ctx=ctx)
        return super().parse_args(ctx, args)


# ---------------------------------------------------------------------------
# shared options and helpers


@dataclass
class Settings:
    home: Home
    verbose: int = 0


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def _set_home(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(Settings).home = Home(value.expanduser().absolute())


def home_option(f: Callable[..., T]) -> Callable[..., T]:
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        expose_value=False,
        callback=_set_home,
        help="Home folder (default: $P2PAY_HOME, else the user data folder).",
    )(f)


def json_option(f: Callable[..., T]) -> Callable[..., T]:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help=(
            "Print one JSON document on stdout. A failure prints nothing on stdout: its "
            'error goes to stderr as one JSON line {"error": {"code", "message", "details"}}, '
            "with a non-zero exit status."
        ),
    )(f)


def ledger_option(f: Callable[..., T]) -> Callable[..., T]:
    return click.option(
        "--ledger",
        "ledger",
        metavar="SPEC",
        help=f"Act on this ledger instead of the home's configured one: {LEDGER_FORMS}.",
    )(f)


def run(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run an async function under trio."""
    return trio.run(fn, *args)


def echo(text: str = "") -> None:
    render.stdout.print(text, markup=False)


def node_config(config: Config, **fixed: Any) -> NodeConfig:
    """The home's `NodeConfig` (config.toml's ``[node]``), with `fixed` on top."""
    from p2pay.node import NodeConfig

    values = check_node_overrides(config.node, "config.toml")
    values.update(fixed)
    try:
        return NodeConfig(**values)
    except (TypeError, ValueError) as exc:
        raise CliError(f"config.toml [node]: {exc}") from None


def bootstrap_option(f: Callable[..., T]) -> Callable[..., T]:
    return click.option(
        "--bootstrap",
        "bootstrap",
        multiple=True,
        metavar="MULTIADDR",
        help="A peer to join the network through, /ip4/.../p2p/<PeerID> (repeatable; "
        "added to config.toml's [discovery] bootstrap).",
    )(f)


def discovery_config(
    config: Config, bootstrap: Sequence[str] = (), **fixed: Any
) -> DiscoveryConfig:
    """The home's `DiscoveryConfig` (config.toml's ``[discovery]``), with the
    ``--bootstrap`` peers added to the configured ones and `fixed` on top."""
    from p2pay.node import DiscoveryConfig

    d = config.discovery
    peers = list(dict.fromkeys([*d.bootstrap, *bootstrap_addrs(bootstrap)]))
    return DiscoveryConfig(
        bootstrap=tuple(peers),
        announce_interval_ms=d.announce_interval_ms,
        deposit_calls=d.deposit_calls,
        max_deposit=d.max_deposit,
        max_attempts=d.max_attempts,
        **fixed,
    )


def libp2p_discovery(*, server: bool) -> DiscoveryFactory:
    """Discovery on the node's libp2p host: gossipsub, the Kademlia DHT, the offers
    fetch protocol (`p2pay.net.discovery`). `server`: a DHT server (`node run`: it keeps
    provider records for others), else a DHT client (a command that only looks up)."""

    def factory(transport: Transport) -> AbstractAsyncContextManager[DiscoveryNet]:
        from p2pay.net.discovery import open_libp2p_discovery

        return open_libp2p_discovery(transport, server=server)

    return factory


async def open_store(home: Home) -> SqliteStore:
    """Open the home's store, explaining the usual reason it is busy."""
    from p2pay.store.base import StoreError
    from p2pay.store.sqlite import SqliteStore

    try:
        return await SqliteStore.open(home.store_path)
    except StoreError as exc:
        raise CliError(
            f"{exc.message} (a home is used by one process at a time: is `p2pay node run` "
            "running on it? use a second home for the client)"
        ) from None


@asynccontextmanager
async def short_node(
    home: Home,
    ledger_text: str | None,
    *,
    offline: bool = False,
    discovery: DiscoveryConfig | None = None,
    receipt_check_every: int | None = None,
) -> AsyncIterator[Node]:
    """A node in this process for one command: no watcher, state durable after.

    Args:
        home: whose key, ledger and store.
        ledger_text: ``--ledger``, or None for the home's.
        offline: the command only needs the ledger and the store (``channel open`` /
            ``close`` / ``top-up``): the node gets a private in-memory transport instead
            of a libp2p host, which saves importing and starting libp2p (seconds).
        discovery: the command finds providers (``find``, ``call any``): the node joins
            the network with this config (`discovery_config`: config.toml's bootstrap
            peers and ``--bootstrap``).
        receipt_check_every: config.toml's ``receipt_check_every`` replaced (``call``: 1,
            every receipt checked before it is accepted, protocol.md 14.4).
    """
    from p2pay.node import open_node

    key = home.key()
    config = home.config()
    spec = home.ledger_spec(ledger_text)
    fixed: dict[str, Any] = {"watcher": False}
    if receipt_check_every is not None:
        fixed["receipt_check_every"] = receipt_check_every
    cfg = node_config(config, **fixed)
    transport: dict[str, Any] = {"listen": EPHEMERAL_LISTEN}
    if discovery is not None:
        transport["discovery"] = libp2p_discovery(server=False)
        transport["discovery_config"] = discovery
    if offline:
        from p2pay.net.memory import MemoryNetwork

        transport = {"network": MemoryNetwork()}
    async with open_ledger(spec) as ledger:
        store = await open_store(home)
        try:
            async with open_node(
                key=key, ledger=ledger, store=store, config=cfg, **transport
            ) as node:
                yield node
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()


class Guard:
    """The outcome of a block run inside `open_node`, kept where the block runs.

    An error of the block then reaches the user as itself (not wrapped in trio's
    exception groups), and a block that ended without finishing (the node was torn down
    under it) is reported, never taken as a success.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.done = False

    async def run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        try:
            value = await fn(*args)
        except Exception as exc:
            self.error = exc
            raise
        self.done = True
        return value

    def check(self) -> None:
        """Raises the block's error, or CliError if the block never finished."""
        if self.error is not None:
            raise self.error
        if not self.done:
            raise CliError("the node stopped before the command finished (run with -v)")


def run_with_node(
    home: Home,
    ledger_text: str | None,
    fn: Callable[[Node], Awaitable[T]],
    *,
    offline: bool = False,
    discovery: DiscoveryConfig | None = None,
    receipt_check_every: int | None = None,
) -> T:
    """Run ``await fn(node)`` in a `short_node` (see `Guard`) and return its value.

    Raises:
        whatever `fn` raised; CliError if the node stopped before `fn` finished.
    """
    guard = Guard()
    box: list[T] = []

    async def body() -> None:
        async with short_node(
            home,
            ledger_text,
            offline=offline,
            discovery=discovery,
            receipt_check_every=receipt_check_every,
        ) as node:
            box.append(await guard.run(fn, node))

    try:
        run(body)
    except BaseException:
        if guard.error is not None:
            raise guard.error from None
        raise
    guard.check()
    return box[0]


#: The fewest hex digits a channel id prefix may have (`channel close 9ccaaf66`).
MIN_CHANNEL_PREFIX = 8


def channel_prefix(text: str) -> str:
    """`text` as a channel id or id prefix: 8 to 64 hex digits (lower case, no ``0x``).

    Raises:
        CliError: not hex, or fewer than 8 or more than 64 digits.
    """
    digits = text.strip().removeprefix("0x").lower()
    if not MIN_CHANNEL_PREFIX <= len(digits) <= 64 or any(
        c not in "0123456789abcdef" for c in digits
    ):
        raise CliError(
            f"channel id {quoted(text)}: expected the id (64 hex digits) or its first "
            f"{MIN_CHANNEL_PREFIX} or more, as `channel list` shows it",
            details={"channel": text[:80]},
        )
    return digits


async def resolve_channel(led: Ledger, account: bytes, text: str) -> bytes:
    """The channel of `account` (as payer or payee) whose id is `text` or starts with it.

    Raises:
        CliError: `text` is not an id or prefix (`channel_prefix`); code UNKNOWN_CHANNEL if
            no channel of `account` matches a prefix; INVALID_ARGUMENT (the matches in
            its details) if several do. A full id is returned as is (the command says if it
            is unknown).
    """
    digits = channel_prefix(text)
    if len(digits) == 64:
        return bytes.fromhex(digits)
    found = sorted(c.id for c in await led.channels_of(account) if c.id.hex().startswith(digits))
    if not found:
        raise CliError(
            f"no channel of this identity starts with {digits}: see `channel list`",
            code=ErrorCode.UNKNOWN_CHANNEL,
            details={"channel": digits},
        )
    if len(found) > 1:
        raise CliError(
            f"{len(found)} channels of this identity start with {digits} "
            f"({', '.join(c.hex()[:16] + '…' for c in found[:4])}): give more digits",
            details={"channel": digits, "matches": [c.hex() for c in found]},
        )
    return found[0]


async def account_summary(led: Ledger, account: bytes) -> dict[str, Any]:
    """Balance, stake and channel totals of one account (what `balance --json` prints)."""
    balance = await led.balance(account)
    stake = await led.stake_of(account)
    from p2pay.ledger.base import claims_one_by_one

    channels = await led.channels_of(account)
    escrow_out = sum(c.escrow for c in channels if c.payer == account)
    escrow_in = sum(c.escrow for c in channels if c.payee == account)
    bonds = 0  # one claim at a time: anyone can file claims of 1 MiB against a provider
    async for claim in claims_one_by_one(led, account, "claimant"):
        if claim.state is ClaimState.OPEN:
            bonds += claim.bond
    return {
        "account": account,
        # an EVM account is an address that no PeerID names: shown as 0x + address
        "peer_id": (
            peer_id_from_public(account)
            if scheme_for(led.ledger_id) is Scheme.ED25519
            else "0x" + account[12:].hex()
        ),
        "balance": balance,
        "staked": stake.amount if stake is not None else 0,
        "stake_status": stake_status(stake).value,
        "penalty": stake.penalty if stake is not None else 0,
        "claim_window_ms": stake.claim_window_ms if stake is not None else 0,
        "unbonding_at": stake.unbonding_at if stake is not None else 0,
        "open_claims_against": stake.open_claims if stake is not None else 0,
        "escrow_out": escrow_out,
        "escrow_in": escrow_in,
        "bonds": bonds,
        "channels_open": sum(1 for c in channels if c.state is not ChannelState.CLOSED),
    }
