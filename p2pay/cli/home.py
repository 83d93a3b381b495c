"""A p2pay home folder: the key, ``config.toml`` and the node's store.

Theory of operation
-------------------
A home is one identity. It holds

* ``key``: the Ed25519 secret key, mode 0600 (`p2pay.keys` writes and reads it);
* ``config.toml``: a few keys, read with `tomllib` and written by `write_config`
  (the ledger spec, the listen addresses, the services `node run` offers, and ``[node]``
  overrides of `p2pay.node.NodeConfig`);
* ``store.sqlite``: the node's `SqliteStore`. SQLite opens it exclusively, so one process
  at a time uses a home: while ``p2pay node run`` runs on a home, the commands that need
  its store (``call``, ``channel open``/``close``) must use another home.

Which home: ``--home DIR``, else ``$P2PAY_HOME``, else the platform's user data folder
(platformdirs). A ledger is named by a spec (`LEDGER_FORMS`): ``sqlite:PATH`` for the
embedded SQLite ledger, ``evm:RPC_URL:0xCONTRACT`` for a settlement contract on an EVM
chain; `parse_ledger_spec` is the one place a new kind gets added.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from p2pay.cli.render import quoted
from p2pay.core.amounts import format_tokens, parse_amount
from p2pay.core.errors import AmountError, DecodeError, ErrorCode, LocalProtocolError, P2payError
from p2pay.core.identity import Keypair, peer_id_from_public, public_from_peer_id
from p2pay.ledger.base import Ledger, LedgerFileError

ENV_HOME = "P2PAY_HOME"
KEY_FILE = "key"
CONFIG_FILE = "config.toml"
STORE_FILE = "store.sqlite"
DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)


class CliError(P2payError):
    """A command cannot do what was asked; the message is the one line the user sees."""

    code = ErrorCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------
# ledger specs


#: The ledger specs a person may type, as error messages and help texts name them.
LEDGER_FORMS = "sqlite:PATH or evm:RPC_URL:0xCONTRACT[:confirmations=N]"
#: The most confirmations an EVM ledger spec may ask for: an endpoint that is not an archive
#: node keeps the state of its latest 128 blocks only (settlement.md 10, "Confirmations").
MAX_CONFIRMATIONS = 128


@dataclass(frozen=True, slots=True)
class LedgerSpec:
    """Which ledger: ``kind`` ("sqlite" or "evm") and its target (an absolute path for
    sqlite, ``RPC_URL:0xcontract`` for evm); for evm, the blocks a state must be buried
    under before the node acts on it (`EvmLedger` ``confirmations``)."""

    kind: str
    target: str
    confirmations: int = 0

    def __str__(self) -> str:
        if self.confirmations:
            return f"{self.kind}:{self.target}:confirmations={self.confirmations}"
        return f"{self.kind}:{self.target}"


def parse_ledger_spec(text: str, *, base: Path | None = None) -> LedgerSpec:
    """Read ``sqlite:PATH`` (PATH relative to `base`, default the working directory) or
    ``evm:RPC_URL:0xCONTRACT``, optionally followed by ``:confirmations=N`` (0 to
    `MAX_CONFIRMATIONS`; 0 by default, right for a local dev chain only).

    Args:
        text: the spec as typed or as stored in config.toml.
        base: the folder a relative path is relative to.

    Returns:
        The spec, with an absolute path.

    Raises:
        CliError: an unknown kind, or no target.
    """
    kind, sep, target = text.partition(":")
    if not sep or not target:
        raise CliError(f"ledger {text!r}: expected {LEDGER_FORMS}")
    kind = kind.lower()
    if kind == "sqlite":
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return LedgerSpec("sqlite", str(path.resolve()))
    if kind == "evm":
        # evm:RPC_URL:0xCONTRACT[:confirmations=N] (the URL has colons of its own: the
        # address is the last part but the optional confirmations)
        confirmations = 0
        rest, sep, last = target.rpartition(":")
        if sep and last.startswith("confirmations="):
            number = last.removeprefix("confirmations=")
            if not re.fullmatch(r"[0-9]{1,3}", number) or int(number) > MAX_CONFIRMATIONS:
                raise CliError(
                    f"ledger {text!r}: confirmations must be a whole number from 0 to "
                    f"{MAX_CONFIRMATIONS}, not {number!r}"
                )
            confirmations, target = int(number), rest
        url, sep, contract = target.rpartition(":")
        if not sep or not url or not re.fullmatch(r"0x[0-9a-fA-F]{40}", contract):
            raise CliError(
                f"ledger {text!r}: expected evm:RPC_URL:0xCONTRACT[:confirmations=N] "
                "(the contract's address: 0x and 40 hex digits)"
            )
        return LedgerSpec("evm", f"{url}:{contract.lower()}", confirmations)
    raise CliError(f"ledger {text!r}: unknown kind {kind!r}; expected {LEDGER_FORMS}")


@asynccontextmanager
async def open_ledger(spec: LedgerSpec) -> AsyncIterator[Ledger]:
    """Open the ledger a spec names, and close it afterwards.

    Raises:
        CliError: the ledger does not exist or is not a ledger.
    """
    if spec.kind == "evm":
        async with _open_evm_ledger(spec) as evm_ledger:
            yield evm_ledger
        return
    if spec.kind != "sqlite":  # pragma: no cover - parse_ledger_spec refuses the others
        raise CliError(f"unsupported ledger kind {spec.kind!r}")
    from p2pay.ledger.sqlite import SqliteLedger

    try:
        ledger = await SqliteLedger.open(spec.target)
    except FileNotFoundError:
        raise CliError(
            f"no ledger at {spec.target} (create one with: p2pay ledger create PATH --dev)"
        ) from None
    except LedgerFileError as exc:
        raise CliError(exc.message) from None
    try:
        yield ledger
    finally:
        await ledger.aclose()


@asynccontextmanager
async def _open_evm_ledger(spec: LedgerSpec) -> AsyncIterator[Ledger]:
    """An `EvmLedger` on the contract an ``evm:RPC_URL:0xCONTRACT`` spec names."""
    try:
        from p2pay.ledger.evm import EvmLedger, Web3Chain
    except ImportError as exc:  # pragma: no cover - the evm extra is missing
        raise CliError(
            f"evm ledgers need the evm extra (pip install 'p2pay[evm]'): {exc}"
        ) from None
    url, _, contract = spec.target.rpartition(":")
    try:
        ledger = await EvmLedger.connect(
            Web3Chain(url), bytes.fromhex(contract[2:]), confirmations=spec.confirmations
        )
    except LocalProtocolError as exc:
        raise CliError(exc.message) from None
    except OSError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from None
    try:
        yield ledger
    finally:
        await ledger.aclose()


# ---------------------------------------------------------------------------
# parsing helpers shared by the commands


def account_of_key(key: Keypair, spec: LedgerSpec | None) -> bytes:
    """The ledger account `key` settles as on the ledger `spec` names.

    On an EVM ledger it is the account of the settlement key derived from the home's key
    (`EvmKey.derive`: no chain access needed); otherwise the Ed25519 public key.

    Raises:
        CliError: an EVM ledger without the evm extra installed.
    """
    if spec is None or spec.kind != "evm":
        return key.account
    try:
        from p2pay.core.evmsig import EvmKey

        return EvmKey.derive(key).account
    except ImportError as exc:  # pragma: no cover - the evm extra is missing
        raise CliError(
            f"evm ledgers need the evm extra (pip install 'p2pay[evm]'): {exc}"
        ) from None


def account_label(account: bytes, spec: LedgerSpec | None) -> str:
    """How an account is shown: its PeerID on an Ed25519 ledger, ``0x`` + address on EVM."""
    if spec is not None and spec.kind == "evm":
        return "0x" + account[12:].hex()
    return peer_id_from_public(account)


def parse_account(text: str, spec: LedgerSpec | None = None) -> bytes:
    """A ledger account: 64 hex digits, or (EVM ledgers) a 0x address, or (other ledgers) a
    PeerID or a multiaddr ending in /p2p/<PeerID>.

    On an EVM ledger an account is an address that a PeerID does not determine (the peer's
    hello binds them): `p2pay id` on the peer's home shows it.

    Raises:
        CliError: anything else.
    """
    text = text.strip()
    evm = spec is not None and spec.kind == "evm"
    if re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text.removeprefix("0x"))
    if re.fullmatch(r"0x[0-9a-fA-F]{40}", text):
        if not evm:
            raise CliError(f"account {text!r}: a 0x address names an account on an EVM ledger")
        return bytes(12) + bytes.fromhex(text[2:])
    if evm:
        raise CliError(
            f"account {text[:80]!r}: on an EVM ledger give the 0x address or 64 hex digits "
            "(`p2pay id` on that home shows its account); a PeerID does not name one"
        )
    if "/p2p/" in text:
        text = text.rsplit("/p2p/", 1)[1].strip("/")
    try:
        return public_from_peer_id(text)
    except DecodeError:
        raise CliError(
            f"account {text[:80]!r}: expected 64 hex digits, a PeerID or a /p2p/ multiaddr"
        ) from None


_DURATION_RE = re.compile(r"\s*([0-9]+)(?:\.([0-9]+))?\s*(ms|s|m|h|d)?\s*")
_DURATION_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """A duration as ms: ``"1500"`` (ms), ``"250ms"``, ``"2s"``, ``"1.5s"``, ``"5m"``, ``"1h"``.

    Exact integer arithmetic; a duration that is not a whole number of ms is refused.

    Raises:
        CliError: anything else.
    """
    match = _DURATION_RE.fullmatch(text) if len(text) <= 64 else None
    if match is None:
        raise CliError(f"duration {quoted(text)}: use ms (1500) or a unit: 250ms, 10s, 5m, 1h, 1d")
    whole, frac, unit = match.group(1), match.group(2) or "", match.group(3) or "ms"
    scale = _DURATION_MS[unit]
    if len(whole) > 18:
        raise CliError(f"duration {quoted(text)} is too long")
    numerator = int(whole + frac) * scale
    denominator: int = 10 ** len(frac)  # int ** int is typed Any (a negative power is a float)
    if numerator % denominator:
        raise CliError(f"duration {quoted(text)} is not a whole number of milliseconds")
    return numerator // denominator


def format_ms(ms: int) -> str:
    """``2000 -> "2s"``, ``1500 -> "1500ms"``, ``300000 -> "5m"``."""
    for unit in ("d", "h", "m", "s"):
        scale = _DURATION_MS[unit]
        if ms and ms % scale == 0:
            return f"{ms // scale}{unit}"
    return f"{ms}ms"


# ---------------------------------------------------------------------------
# config.toml


#: ``[discovery]`` defaults (specs/discovery.md): `p2pay.node.DiscoveryConfig`'s, kept here
#: so that reading a config does not import the node (tests/cli/test_cli_discovery.py
#: checks that they agree)
DEFAULT_ANNOUNCE_INTERVAL_MS = 60_000
DEFAULT_DEPOSIT_CALLS = 1000
DEFAULT_MAX_DEPOSIT = 10**22  # 0.01 token
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(slots=True)
class Discovery:
    """``[discovery]`` of config.toml: where to join the network, how often to announce
    our offers, and the policy of ``call any`` (the deposit of a channel it opens is
    ``deposit_calls`` x the price, at most ``max_deposit``; it tries at most
    ``max_attempts`` offers)."""

    bootstrap: list[str] = field(default_factory=list)
    announce_interval_ms: int = DEFAULT_ANNOUNCE_INTERVAL_MS
    deposit_calls: int = DEFAULT_DEPOSIT_CALLS
    max_deposit: int = DEFAULT_MAX_DEPOSIT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


@dataclass(slots=True)
class Config:
    """What ``config.toml`` holds (all optional)."""

    ledger: str | None = None
    listen: list[str] = field(default_factory=lambda: list(DEFAULT_LISTEN))
    services: list[str] = field(default_factory=list)
    node: dict[str, Any] = field(default_factory=dict)
    discovery: Discovery = field(default_factory=Discovery)


_TOP_KEYS = {"ledger", "listen", "services", "node", "discovery"}
_DISCOVERY_KEYS = {"bootstrap", "announce_interval", "deposit_calls", "max_deposit", "max_attempts"}


def bootstrap_addrs(values: Sequence[str], where: str = "--bootstrap") -> list[str]:
    """Check bootstrap multiaddrs: each names its peer (ends in ``/p2p/<PeerID>``).

    Raises:
        CliError: one that is not a multiaddr of a peer.
    """
    out: list[str] = []
    for value in values:
        head, sep, peer = value.rpartition("/p2p/")
        ok = value.startswith("/") and sep and head and peer and "/" not in peer
        if ok:
            try:
                public_from_peer_id(peer)
            except DecodeError:
                ok = False
        if not ok:
            raise CliError(
                f"{where} {quoted(value)} is not a peer's multiaddr: expected "
                "/ip4/HOST/tcp/PORT/p2p/<PeerID> (what `node run` prints after `listening`)"
            )
        out.append(value)
    return out


def _read_discovery(table: Any, where: str) -> Discovery:
    """Check ``[discovery]`` and read it (amounts and durations as a user types them)."""
    if not isinstance(table, dict):
        raise CliError(f"{where}: [discovery] must be a table")
    unknown = set(table) - _DISCOVERY_KEYS
    if unknown:
        raise CliError(f"{where}: [discovery] has no setting {sorted(unknown)[0]!r}")
    out = Discovery()
    if "bootstrap" in table:
        value = table["bootstrap"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CliError(f"{where}: [discovery] bootstrap must be a list of multiaddrs")
        out.bootstrap = bootstrap_addrs(value, f"{where}: [discovery] bootstrap")
    if "announce_interval" in table:
        value = table["announce_interval"]
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise CliError(f'{where}: [discovery] announce_interval must be a duration ("60s")')
        ms = value * 1000 if isinstance(value, int) else parse_duration_ms(value)
        if not 1_000 <= ms <= 8 * 3_600_000:
            raise CliError(f"{where}: [discovery] announce_interval must be between 1s and 8h")
        out.announce_interval_ms = ms
    for name, high in (("deposit_calls", 1 << 32), ("max_attempts", 64)):
        if name in table:
            value = table[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise CliError(f"{where}: [discovery] {name} must be an integer in [1, {high}]")
            setattr(out, name, value)
    if "max_deposit" in table:
        value = table["max_deposit"]
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise CliError(f'{where}: [discovery] max_deposit must be an amount ("0.01 token")')
        try:
            amount = parse_amount(value)
        except AmountError as exc:
            raise CliError(f"{where}: [discovery] max_deposit: {exc.message}") from None
        if amount < 1:
            raise CliError(f"{where}: [discovery] max_deposit must be more than 0")
        out.max_deposit = amount
    return out


def node_config_fields() -> dict[str, type]:
    """`NodeConfig` field names and types that ``[node]`` in config.toml may set."""
    from p2pay.node import NodeConfig

    types = {"int": int, "float": float, "bool": bool}
    out: dict[str, type] = {}
    for f in dataclasses.fields(NodeConfig):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in types:
            out[f.name] = types[kind]
    return out


def check_node_overrides(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate ``[node]`` overrides against `NodeConfig`'s fields.

    Raises:
        CliError: an unknown key or a value of the wrong type.
    """
    if not values:
        return {}
    allowed = node_config_fields()
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = allowed.get(key)
        if kind is None:
            raise CliError(f"{where}: [node] has no setting {key!r}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is bool and not isinstance(value, bool):
            raise CliError(f"{where}: [node] {key} must be true or false")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise CliError(f"{where}: [node] {key} must be an integer")
        if kind is float and not (isinstance(value, float) and math.isfinite(value)):
            raise CliError(f"{where}: [node] {key} must be a number")
        out[key] = value
    return out


def read_config(path: Path) -> Config:
    """Read and check ``config.toml``.

    Raises:
        CliError: the file is not valid TOML or holds unknown keys / wrong types.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise CliError(f"{path}: unknown setting {sorted(unknown)[0]!r}")
    config = Config()
    ledger = data.get("ledger")
    if ledger is not None and not isinstance(ledger, str):
        raise CliError(f"{path}: ledger must be a string such as {LEDGER_FORMS}")
    config.ledger = ledger
    for name in ("listen", "services"):
        if name in data:
            value = data[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CliError(f"{path}: {name} must be a list of strings")
            setattr(config, name, list(value))
    node = data.get("node", {})
    if not isinstance(node, dict):
        raise CliError(f"{path}: [node] must be a table")
    config.node = check_node_overrides(node, str(path))
    config.discovery = _read_discovery(data.get("discovery", {}), str(path))
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to config.toml")


def render_config(config: Config) -> str:
    """The TOML text of a config (comments say what each key is)."""
    lines = [
        "# p2pay home configuration (written by `p2pay init`; edit freely).",
        f"# ledger: which settlement ledger this home uses ({LEDGER_FORMS}).",
    ]
    if config.ledger is not None:
        lines.append(f"ledger = {_toml_value(config.ledger)}")
    else:
        lines.append('# ledger = "sqlite:/path/to/ledger.sqlite"')
    lines += [
        "# listen: libp2p multiaddrs `p2pay node run` listens on unless --listen is given (init",
        "# picks a port free at the time, so the address stays the same; port 0 = any free port).",
        f"listen = {_toml_value(config.listen)}",
        "# services: what `p2pay node run` offers: NAME=PRICE[:module:function].",
        f"services = {_toml_value(config.services)}",
    ]
    if config.node:
        lines += ["", "# Overrides of p2pay.node.NodeConfig.", "[node]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in config.node.items()]
    d = config.discovery
    lines += [
        "",
        "# Finding providers and being found (`node run`, `find`, `call any`).",
        "[discovery]",
        "# bootstrap: multiaddrs (ending in /p2p/<PeerID>) of peers to join the network through",
        "# (a plain `p2pay node run` with no services is one); --bootstrap adds to them.",
        f"bootstrap = {_toml_value(d.bootstrap)}",
        "# announce_interval: how often `node run` publishes its offers again (they expire",
        "# after three intervals).",
        f"announce_interval = {_toml_value(format_ms(d.announce_interval_ms))}",
        "# `call any` opens a channel with a deposit of deposit_calls x the price, at most",
        "# max_deposit, and tries at most max_attempts providers.",
        f"deposit_calls = {d.deposit_calls}",
        f"max_deposit = {_toml_value(format_tokens(d.max_deposit) + ' token')}",
        f"max_attempts = {d.max_attempts}",
    ]
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: Config) -> None:
    """Write config.toml atomically (temporary file, then rename)."""
    text = render_config(config)
    tomllib.loads(text)  # never write a file we could not read back
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# the home


def default_home() -> Path:
    """``$P2PAY_HOME``, else the platform's user data folder for p2pay."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("p2pay", appauthor=False))


@dataclass(slots=True)
class Home:
    """A home folder (see the module docstring)."""

    path: Path

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def store_path(self) -> Path:
        return self.path / STORE_FILE

    def exists(self) -> bool:
        return self.key_path.is_file()

    def require(self) -> None:
        """Raises CliError unless the home has a key."""
        if not self.path.is_dir():
            raise CliError(f"no p2pay home at {self.path} (run: p2pay --home DIR init)")
        if not self.exists():
            raise CliError(f"no key in {self.path} (run: p2pay --home DIR init)")

    def config(self) -> Config:
        return read_config(self.config_path)

    def key(self) -> Keypair:
        """Load the home's key.

        Raises:
            CliError: no home, or the key file is unreadable or not a key.
        """
        self.require()
        from p2pay import keys

        try:
            return keys.load_key(self.key_path)
        except P2payError as exc:
            raise CliError(exc.message) from None

    def init(self, config: Config) -> Keypair:
        """Create the folder (0700), a new key (0600) and config.toml.

        Raises:
            CliError: a key is already there (it is never overwritten).
        """
        if self.key_path.exists():
            raise CliError(f"{self.key_path} already exists; refusing to overwrite a key")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        from p2pay import keys

        try:
            key = keys.create_key(self.key_path)
        except P2payError as exc:
            raise CliError(exc.message) from None
        write_config(self.config_path, config)
        return key

    def ledger_spec(self, override: str | None) -> LedgerSpec:
        """The ledger to act on: `override` (``--ledger``), else the configured one.

        Raises:
            CliError: neither is given.
        """
        if override:
            return parse_ledger_spec(override)
        if not self.path.is_dir():
            raise CliError(
                f"no p2pay home at {self.path}: run p2pay init, or pass --ledger {LEDGER_FORMS}"
            )
        config = self.config()
        if config.ledger is None:
            raise CliError(
                f"no ledger configured in {self.config_path}: pass --ledger sqlite:PATH "
                "or run p2pay init --ledger sqlite:PATH"
            )
        return parse_ledger_spec(config.ledger, base=self.path)


#: the start of the kernel's ephemeral port range where /proc does not say (Linux's default)
_EPHEMERAL_LOW = 32768


def stable_listen() -> list[str]:
    """The listen address `init` writes to config.toml: 127.0.0.1 and a port that is free
    now, so that `node run` comes back at the same address after a restart (peers keep it
    in their address books). The port is drawn below the kernel's ephemeral range
    (``ip_local_port_range``): the kernel never hands such a port out by itself (to a bind
    to port 0 or an outgoing connection), so no program takes it by chance while the node
    is down (one drawn by the system from that range was, on a busy machine: "address
    already in use" at `node run`). Taken later all the same: `node run` says so
    (ADDRESS_IN_USE); edit ``listen`` in config.toml or pass --listen.
    """
    import random
    import socket

    low = _EPHEMERAL_LOW
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    draw = random.SystemRandom()
    for _ in range(200):  # bounded: a free one comes at once on any usual machine
        port = draw.randrange(max(1024, low - 12_000), max(1025, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return [f"/ip4/127.0.0.1/tcp/{port}"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # none free below the range: the system picks one
        port = sock.getsockname()[1]
    return [f"/ip4/127.0.0.1/tcp/{port}"]


def listen_addrs(values: Sequence[str]) -> list[str]:
    """Check multiaddrs a little (the transport parses them for real)."""
    out = []
    for value in values:
        if not value.startswith("/"):
            raise CliError(f"listen address {value!r} is not a multiaddr (/ip4/127.0.0.1/tcp/0)")
        out.append(value)
    return out
