"""Scenario files: what a simulation builds and runs (simulations/README.md).

Theory of operation
-------------------
A scenario is a TOML file read with `tomllib` and turned into frozen dataclasses, all of
it validated up front so that a typo fails before anything runs, with the key that is
wrong in the message (`ScenarioError`). Amounts are p2pay amounts (``"1 micro"``, or an
int of yocto) and are exact ints from here on; durations are seconds (a number) or text
with a unit (``"250ms"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"``) and become float
seconds of *simulated* time. Unknown keys are errors (a misspelt key silently ignored is
a scenario that does not test what its author thinks).

Nothing here runs anything: the engine (`p2pay.sim.engine`) reads a `Scenario`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pay.sim.params import ScenarioError, parse_duration
from p2pay.sim.params import parse_amount_param as _amount

__all__ = [
    "ClientSpec",
    "DiscoverySpec",
    "LedgerSpec",
    "NetworkSpec",
    "NodeSpec",
    "PeerGroup",
    "PriceChange",
    "ProviderSpec",
    "Scenario",
    "ScenarioError",
    "ServiceSpec",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]


def _ms(value: object, where: str) -> int:
    return round(parse_duration(value, where) * 1000)


def _number(value: object, where: str, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where}: expected a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise ScenarioError(f"{where}: must be in [{low}, {high}]")
    return number


def _int(value: object, where: str, *, low: int = 0, high: int = 10**9) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScenarioError(f"{where}: expected an integer in [{low}, {high}]")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ScenarioError(f"{where}: expected a non-empty text")
    return value


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a table")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}")


# ---------------------------------------------------------------------------
# the parts of a scenario


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """A service every provider that offers it serves at `price` (yocto)."""

    name: str
    price: int
    work_s: float = 0.0  # simulated time the handler takes
    response_bytes: int = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceChange:
    """At `at_s` (simulated seconds), the providers of a group re-serve `service` at `price`."""

    at_s: float
    service: str
    price: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderSpec:
    services: tuple[str, ...]
    prices: dict[str, int]  # per-group price overrides
    stake: int
    penalty: int
    claim_window_ms: int
    price_changes: tuple[PriceChange, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSpec:
    deposit: int
    channels: int  # providers each client opens a channel to
    targets: tuple[str, ...]  # provider groups it may pick (empty: all)
    rate: float  # paid requests per simulated second (Poisson)
    mix: dict[str, float]  # service -> weight
    body_bytes: tuple[int, int]  # uniform [low, high]
    timeout_s: float
    max_price: int | None  # None: twice the service's base price
    top_up: bool
    max_pending: int
    # discovery = true: no channels at setup; the client finds providers by service name
    # and pays through the node's `call_any` (which opens channels under its deposit policy)
    discovery: bool = False
    min_stake: int = 0  # offers backed by less are ignored (discovery)
    max_attempts: int = 3  # offers tried per call before giving up (discovery)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerGroup:
    """`count` peers with one role and one behaviour."""

    group: str
    role: str  # "provider" | "client"
    count: int
    balance: int
    behaviour: str
    behaviour_params: dict[str, Any]
    provider: ProviderSpec | None
    client: ClientSpec | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerSpec:
    claim_bond: int = 10**18
    slash_to_claimant_bps: int = 5_000
    max_deadline_horizon_ms: int = 3_600_000


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """`NodeConfig` settings of every peer (simulated seconds are free: keep them short)."""

    watch_interval_s: float = 5.0
    claim_grace_ms: int = 1_000
    challenge_ms: int = 600_000
    redeem_threshold: int = 10**21
    max_in_flight: int = 64
    max_deadline_horizon_ms: int = 3_600_000
    min_challenge_ms: int = 60_000  # payees refuse shorter channels (claims.md C-8)


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSpec:
    latency_s: float = 0.0  # one-way
    jitter_s: float = 0.0  # + a fixed, seeded uniform [0, jitter) per ordered peer pair


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoverySpec:
    """How providers announce their offers and clients pay for new channels, when a client
    group has ``discovery = true`` (specs/discovery.md)."""

    announce_interval_s: float = 60.0  # providers re-publish their offers this often
    deposit_calls: int = 1000  # a channel opened by `call_any` holds this many calls...
    max_deposit: int = 10**22  # ...at most this much (yocto; default 0.01 token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Libp2pSpec:
    time_scale: float | None = None  # wall seconds per simulated second; None: computed
    max_wall_s: float = 60.0  # target wall time when time_scale is computed
    max_peers: int = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    description: str
    source: str
    seed: int
    duration_s: float
    drain_s: float | None  # None: computed from the claim windows and challenge periods
    sample_every_s: float
    check_every_s: float
    settle: bool
    transport: str
    ledger: LedgerSpec
    node: NodeSpec
    network: NetworkSpec
    libp2p: Libp2pSpec
    services: dict[str, ServiceSpec]
    groups: tuple[PeerGroup, ...] = field(default=())
    shards: int = 1  # independent sub-markets run in parallel processes (memory transport)
    discovery: DiscoverySpec = field(default_factory=DiscoverySpec)

    @property
    def peer_count(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def uses_discovery(self) -> bool:
        """Some client group finds its providers by service name (``discovery = true``)."""
        return any(g.client is not None and g.client.discovery for g in self.groups)

    def with_overrides(
        self, *, seed: int | None = None, transport: str | None = None, shards: int | None = None
    ) -> Scenario:
        """The same scenario with another seed, transport or shard count (the CLI's options)."""
        changes: dict[str, Any] = {}
        if seed is not None:
            changes["seed"] = _int(seed, "seed", high=2**63 - 1)
        if shards is not None:
            if self.uses_discovery and shards != 1:
                raise ScenarioError("shards: a scenario with discovery runs as one market")
            changes["shards"] = _check_shards(shards, self.groups)
        if transport is not None:
            if transport not in ("memory", "libp2p"):
                raise ScenarioError("transport: memory or libp2p")
            if self.uses_discovery and transport != "memory":
                raise ScenarioError(
                    "transport: discovery is simulated on the memory transport only"
                )
            changes["transport"] = transport
        return replace(self, **changes)


# ---------------------------------------------------------------------------
# parsing

_TOP = {
    "name",
    "description",
    "seed",
    "duration",
    "drain",
    "sample_every",
    "check_every",
    "settle",
    "transport",
    "shards",
    "ledger",
    "node",
    "network",
    "libp2p",
    "discovery",
    "services",
    "peers",
}
_PEER_COMMON = {"group", "role", "count", "balance", "behaviour"}
_PROVIDER_KEYS = {"services", "prices", "stake", "penalty", "claim_window", "price_changes"}
_CLIENT_KEYS = {
    "deposit",
    "channels",
    "targets",
    "rate",
    "mix",
    "body_bytes",
    "timeout",
    "max_price",
    "top_up",
    "max_pending",
    "discovery",
    "min_stake",
    "max_attempts",
}
#: client keys that describe channels opened at setup: errors with ``discovery = true``
_SETUP_CHANNEL_KEYS = ("deposit", "channels", "targets", "top_up")
#: client keys that only mean something with ``discovery = true``
_DISCOVERY_ONLY_KEYS = ("min_stake", "max_attempts")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ScenarioError: unreadable file, bad TOML or a bad value (the message says where).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(data, source=str(path))


def parse_scenario(data: dict[str, Any], *, source: str = "<scenario>") -> Scenario:
    """Validate a scenario given as the dict `tomllib` returns.

    Raises:
        ScenarioError: a bad value (the message names the key).
    """
    _check_keys(data, _TOP, "scenario")
    name = _text(data.get("name", Path(source).stem or "scenario"), "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError("description: expected a text")
    seed = _int(data.get("seed", 1), "seed", high=2**63 - 1)
    duration_s = parse_duration(data.get("duration", "10m"), "duration")
    if duration_s <= 0:
        raise ScenarioError("duration: must be > 0")
    drain_raw = data.get("drain", "auto")
    drain_s = None if drain_raw == "auto" else parse_duration(drain_raw, "drain")
    sample_every_s = parse_duration(data.get("sample_every", duration_s / 60), "sample_every")
    check_every_s = parse_duration(data.get("check_every", duration_s / 10), "check_every")
    if sample_every_s <= 0 or check_every_s <= 0:
        raise ScenarioError("sample_every and check_every must be > 0")
    if duration_s / sample_every_s > 100_000:
        raise ScenarioError("sample_every: at most 100000 samples per run")
    settle = data.get("settle", True)
    if not isinstance(settle, bool):
        raise ScenarioError("settle: expected true or false")
    transport = data.get("transport", "memory")
    if transport not in ("memory", "libp2p"):
        raise ScenarioError("transport: memory or libp2p")

    ledger = _parse_ledger(_table(data.get("ledger", {}), "ledger"))
    node = _parse_node(_table(data.get("node", {}), "node"), ledger)
    network = _parse_network(_table(data.get("network", {}), "network"))
    libp2p = _parse_libp2p(_table(data.get("libp2p", {}), "libp2p"))
    discovery = _parse_discovery(_table(data.get("discovery", {}), "discovery"))

    raw_services = data.get("services", [])
    if not isinstance(raw_services, list) or not raw_services:
        raise ScenarioError("services: at least one [[services]] table")
    services: dict[str, ServiceSpec] = {}
    for i, raw in enumerate(raw_services):
        spec = _parse_service(_table(raw, f"services[{i}]"), f"services[{i}]")
        if spec.name in services:
            raise ScenarioError(f"services[{i}]: service {spec.name!r} defined twice")
        services[spec.name] = spec

    raw_peers = data.get("peers", [])
    if not isinstance(raw_peers, list) or not raw_peers:
        raise ScenarioError("peers: at least one [[peers]] table")
    groups: list[PeerGroup] = []
    for i, raw in enumerate(raw_peers):
        groups.append(_parse_group(_table(raw, f"peers[{i}]"), f"peers[{i}]", services, node))
    names = [g.group for g in groups]
    if len(set(names)) != len(names):
        raise ScenarioError("peers: group names must be unique")
    provider_groups = {g.group for g in groups if g.role == "provider"}
    if not provider_groups:
        raise ScenarioError("peers: a scenario needs at least one provider group")
    for g in groups:
        if g.client is not None:
            for target in g.client.targets:
                if target not in provider_groups:
                    raise ScenarioError(f"peers ({g.group}): targets: no provider group {target!r}")
    if sum(g.count for g in groups) > 100_000:
        raise ScenarioError("peers: at most 100000 peers")
    for g in groups:
        _check_fake_offers(g)
    uses_discovery = any(g.client is not None and g.client.discovery for g in groups)
    if "discovery" in data and not uses_discovery:
        raise ScenarioError("discovery: no client group has discovery = true")
    if uses_discovery and data.get("shards", 1) != 1:
        raise ScenarioError("shards: a scenario with discovery runs as one market (shards = 1)")
    shards = _check_shards(data.get("shards", 1), groups)
    if uses_discovery and transport != "memory":
        raise ScenarioError("transport: discovery is simulated on the memory transport only")
    return Scenario(
        name=name,
        description=description,
        source=source,
        seed=seed,
        duration_s=duration_s,
        drain_s=drain_s,
        sample_every_s=sample_every_s,
        check_every_s=check_every_s,
        settle=settle,
        transport=transport,
        ledger=ledger,
        node=node,
        network=network,
        libp2p=libp2p,
        services=services,
        groups=tuple(groups),
        shards=shards,
        discovery=discovery,
    )


def _check_fake_offers(g: PeerGroup) -> None:
    """A ``fake_offers`` group's lie must be one: an under-priced liar needs the genuine
    stake it announces, an unbacked one must not hold the stake it claims."""
    if g.behaviour != "fake_offers" or g.provider is None:
        return
    lie = g.behaviour_params.get("lie", "no_stake")
    if lie == "underpriced" and not g.provider.stake:
        raise ScenarioError(
            f"peers ({g.group}): an under-priced fake provider announces its genuine stake: "
            "give it a stake"
        )
    if lie == "unbacked_stake":
        claimed = _amount(g.behaviour_params.get("stake", "5 token"), f"peers ({g.group}).stake")
        if g.provider.stake >= claimed:
            raise ScenarioError(
                f"peers ({g.group}): its offers claim a stake it holds (stake >= the "
                "behaviour's stake): not a lie"
            )


MAX_SHARDS = 64


def _check_shards(value: object, groups: Sequence[PeerGroup]) -> int:
    """A shard count: every group must have a peer in every shard."""
    shards = _int(value, "shards", low=1, high=MAX_SHARDS)
    small = [g.group for g in groups if g.count < shards]
    if small:
        raise ScenarioError(
            f"shards = {shards}: every group needs at least {shards} peers "
            f"({', '.join(small)} has fewer)"
        )
    return shards


def _parse_ledger(t: dict[str, Any]) -> LedgerSpec:
    _check_keys(t, {"claim_bond", "slash_to_claimant_bps", "max_deadline_horizon"}, "ledger")
    return LedgerSpec(
        claim_bond=_amount(t.get("claim_bond", 10**18), "ledger.claim_bond"),
        slash_to_claimant_bps=_int(
            t.get("slash_to_claimant_bps", 5000), "ledger.slash_to_claimant_bps", high=10_000
        ),
        max_deadline_horizon_ms=max(
            1, _ms(t.get("max_deadline_horizon", "1h"), "ledger.max_deadline_horizon")
        ),
    )


def _parse_node(t: dict[str, Any], ledger: LedgerSpec) -> NodeSpec:
    _check_keys(
        t,
        {
            "watch_interval",
            "claim_grace",
            "challenge",
            "min_challenge",
            "redeem_threshold",
            "max_in_flight",
        },
        "node",
    )
    watch = parse_duration(t.get("watch_interval", "5s"), "node.watch_interval")
    if watch <= 0:
        raise ScenarioError("node.watch_interval: must be > 0")
    challenge_ms = _ms(t.get("challenge", "10m"), "node.challenge")
    if challenge_ms < 1:
        raise ScenarioError("node.challenge: must be >= 1ms")
    return NodeSpec(
        watch_interval_s=watch,
        claim_grace_ms=_ms(t.get("claim_grace", "1s"), "node.claim_grace"),
        challenge_ms=challenge_ms,
        redeem_threshold=_amount(t.get("redeem_threshold", 10**21), "node.redeem_threshold"),
        max_in_flight=_int(t.get("max_in_flight", 64), "node.max_in_flight", low=1, high=1024),
        max_deadline_horizon_ms=ledger.max_deadline_horizon_ms,
        # default: the node's 60 s, or the scenario's own challenge if that is shorter
        min_challenge_ms=_ms(t["min_challenge"], "node.min_challenge")
        if "min_challenge" in t
        else min(60_000, challenge_ms),
    )


def _parse_network(t: dict[str, Any]) -> NetworkSpec:
    _check_keys(t, {"latency", "jitter"}, "network")
    return NetworkSpec(
        latency_s=parse_duration(t.get("latency", 0), "network.latency"),
        jitter_s=parse_duration(t.get("jitter", 0), "network.jitter"),
    )


def _parse_libp2p(t: dict[str, Any]) -> Libp2pSpec:
    _check_keys(t, {"time_scale", "max_wall", "max_peers"}, "libp2p")
    scale = t.get("time_scale")
    return Libp2pSpec(
        time_scale=None
        if scale is None
        else _number(scale, "libp2p.time_scale", low=1e-6, high=1000.0),
        max_wall_s=parse_duration(t.get("max_wall", 60), "libp2p.max_wall"),
        max_peers=_int(t.get("max_peers", 200), "libp2p.max_peers", low=1, high=10_000),
    )


def _parse_discovery(t: dict[str, Any]) -> DiscoverySpec:
    _check_keys(t, {"announce_interval", "deposit_calls", "max_deposit"}, "discovery")
    interval = parse_duration(t.get("announce_interval", "60s"), "discovery.announce_interval")
    if interval <= 0:
        raise ScenarioError("discovery.announce_interval: must be > 0")
    max_deposit = _amount(t.get("max_deposit", "0.01 token"), "discovery.max_deposit")
    if max_deposit <= 0:
        raise ScenarioError("discovery.max_deposit: must be > 0")
    return DiscoverySpec(
        announce_interval_s=interval,
        deposit_calls=_int(
            t.get("deposit_calls", 1000), "discovery.deposit_calls", low=1, high=10**9
        ),
        max_deposit=max_deposit,
    )


def _parse_service(t: dict[str, Any], where: str) -> ServiceSpec:
    _check_keys(t, {"name", "price", "work", "response_bytes"}, where)
    name = _text(t.get("name"), f"{where}.name")
    if "price" not in t:
        raise ScenarioError(f"{where}.price: required")
    return ServiceSpec(
        name=name,
        price=_amount(t["price"], f"{where}.price"),
        work_s=parse_duration(t.get("work", 0), f"{where}.work"),
        response_bytes=_int(t.get("response_bytes", 32), f"{where}.response_bytes", high=1 << 19),
    )


def _parse_behaviour(value: object, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    table = _table(value, where)
    kind = _text(table.get("kind"), f"{where}.kind")
    return kind, {k: v for k, v in table.items() if k != "kind"}


def _parse_group(
    t: dict[str, Any], where: str, services: dict[str, ServiceSpec], node: NodeSpec
) -> PeerGroup:
    role = t.get("role")
    if role not in ("provider", "client"):
        raise ScenarioError(f"{where}.role: provider or client")
    allowed = _PEER_COMMON | (_PROVIDER_KEYS if role == "provider" else _CLIENT_KEYS)
    _check_keys(t, allowed, where)
    group = _text(t.get("group", f"{role}s-{where.split('[')[1].rstrip(']')}"), f"{where}.group")
    where = f"peers ({group})"
    count = _int(t.get("count", 1), f"{where}.count", low=1, high=100_000)
    balance = _amount(t.get("balance", "10 token"), f"{where}.balance")
    kind, params = _parse_behaviour(t.get("behaviour", "honest"), f"{where}.behaviour")
    from p2pay.sim.registry import check_behaviour  # (the behaviours import the node)

    try:
        check_behaviour(kind, role, params)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}.behaviour: {exc}") from None
    provider: ProviderSpec | None = None
    client: ClientSpec | None = None
    if role == "provider":
        offered = t.get("services", sorted(services))
        if not isinstance(offered, list) or not offered:
            raise ScenarioError(f"{where}.services: a non-empty list of service names")
        for s in offered:
            if s not in services:
                raise ScenarioError(f"{where}.services: no service {s!r}")
        prices_raw = _table(t.get("prices", {}), f"{where}.prices")
        prices = {}
        for s, p in prices_raw.items():
            if s not in offered:
                raise ScenarioError(f"{where}.prices: {s!r} is not offered by this group")
            prices[s] = _amount(p, f"{where}.prices.{s}")
        stake = _amount(t.get("stake", 0), f"{where}.stake")
        penalty = _amount(t.get("penalty", stake // 10 if stake else 0), f"{where}.penalty")
        if stake and not 0 < penalty <= stake:
            raise ScenarioError(f"{where}.penalty: must be in [1, stake]")
        if stake > balance:
            raise ScenarioError(f"{where}.stake: above the group's balance")
        window = _ms(t.get("claim_window", "10m"), f"{where}.claim_window")
        if window < 1:
            raise ScenarioError(f"{where}.claim_window: must be >= 1ms")
        changes_raw = t.get("price_changes", [])
        if not isinstance(changes_raw, list):
            raise ScenarioError(f"{where}.price_changes: a list of tables")
        changes = []
        for j, c in enumerate(changes_raw):
            c = _table(c, f"{where}.price_changes[{j}]")
            _check_keys(c, {"at", "service", "price"}, f"{where}.price_changes[{j}]")
            service = _text(c.get("service"), f"{where}.price_changes[{j}].service")
            if service not in offered:
                raise ScenarioError(f"{where}.price_changes[{j}]: {service!r} is not offered")
            changes.append(
                PriceChange(
                    at_s=parse_duration(c.get("at", 0), f"{where}.price_changes[{j}].at"),
                    service=service,
                    price=_amount(c.get("price"), f"{where}.price_changes[{j}].price"),
                )
            )
        provider = ProviderSpec(
            services=tuple(offered),
            prices=prices,
            stake=stake,
            penalty=penalty,
            claim_window_ms=window,
            price_changes=tuple(sorted(changes, key=lambda c: c.at_s)),
        )
    else:
        mix_raw = _table(t.get("mix", {s: 1.0 for s in sorted(services)}), f"{where}.mix")
        mix: dict[str, float] = {}
        for s, w in mix_raw.items():
            if s not in services:
                raise ScenarioError(f"{where}.mix: no service {s!r}")
            mix[s] = _number(w, f"{where}.mix.{s}")
        if not mix or sum(mix.values()) <= 0:
            raise ScenarioError(f"{where}.mix: needs a positive weight")
        body = t.get("body_bytes", [16, 256])
        if isinstance(body, int) and not isinstance(body, bool):
            body = [body, body]
        if not (isinstance(body, list) and len(body) == 2):
            raise ScenarioError(f"{where}.body_bytes: an int or [low, high]")
        low = _int(body[0], f"{where}.body_bytes", high=1 << 16)
        high = _int(body[1], f"{where}.body_bytes", high=1 << 16)
        if low > high:
            raise ScenarioError(f"{where}.body_bytes: low > high")
        targets = t.get("targets", [])
        if not isinstance(targets, list) or not all(isinstance(x, str) for x in targets):
            raise ScenarioError(f"{where}.targets: a list of provider group names")
        timeout = parse_duration(t.get("timeout", "5s"), f"{where}.timeout")
        if timeout <= 0:
            raise ScenarioError(f"{where}.timeout: must be > 0")
        if timeout * 1000 > node.max_deadline_horizon_ms:
            raise ScenarioError(f"{where}.timeout: beyond ledger.max_deadline_horizon")
        max_price = t.get("max_price")
        discovery = t.get("discovery", False)
        if not isinstance(discovery, bool):
            raise ScenarioError(f"{where}.discovery: expected true or false")
        if discovery:
            setup = [k for k in _SETUP_CHANNEL_KEYS if k in t]
            if setup:
                raise ScenarioError(
                    f"{where}: {', '.join(setup)}: no channels are opened at setup with "
                    "discovery = true (call_any opens them: see [discovery])"
                )
        else:
            only = [k for k in _DISCOVERY_ONLY_KEYS if k in t]
            if only:
                raise ScenarioError(f"{where}: {', '.join(only)}: only with discovery = true")
        client = ClientSpec(
            deposit=_amount(t.get("deposit", "100 milli"), f"{where}.deposit"),
            channels=_int(t.get("channels", 1), f"{where}.channels", low=1, high=10_000),
            targets=tuple(targets),
            rate=_number(t.get("rate", 1.0), f"{where}.rate", high=1e6),
            mix=mix,
            body_bytes=(low, high),
            timeout_s=timeout,
            max_price=None if max_price is None else _amount(max_price, f"{where}.max_price"),
            top_up=bool(t.get("top_up", True)),
            max_pending=_int(t.get("max_pending", 256), f"{where}.max_pending", low=1),
            discovery=discovery,
            min_stake=_amount(t.get("min_stake", 0), f"{where}.min_stake"),
            max_attempts=_int(t.get("max_attempts", 3), f"{where}.max_attempts", low=1, high=16),
        )
    return PeerGroup(
        group=group,
        role=role,
        count=count,
        balance=balance,
        behaviour=kind,
        behaviour_params=params,
        provider=provider,
        client=client,
    )
