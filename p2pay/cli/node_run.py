"""``p2pay node run``: a long-running node that serves paid services and does its duties.

Theory of operation
-------------------
The node opens the home's ledger and store, listens, registers its services, then prints
one line per listen address on stdout, ``listening /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...``,
and flushes: a script reads that line to learn where to connect. Everything else goes to
stderr as one ``key=value`` line per notable event (start, peers, claims, stop).

The signal receiver (SIGINT, SIGTERM) is installed before anything is printed, so a
signal sent as soon as the address is read already stops the node cleanly: the node's
nursery is cancelled, `open_node` flushes the persister, and the store is closed, so
everything the node acknowledged is on disk when the process exits with status 0.

``--metrics HOST:PORT`` serves Prometheus text metrics (prometheus_client, in its own
daemon thread). The collector reads a snapshot that a trio task refreshes every
`METRICS_INTERVAL` seconds, so the HTTP thread never touches the node's live objects.
Counters in yocto are exported as floats (Prometheus has no integers): exact below
2**53 yocto, approximate above; the exact figures are in ``p2pay balance``.

Hidden ``--drop-rate P`` / ``--behaviour drop:P`` make a dishonest provider for the demo:
it takes a paid request with probability P and never answers it, and it never defends
a claim (`p2pay.node.Behaviour`).
"""

from __future__ import annotations

import ctypes
import logging
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
import trio

from p2pay.cli import render
from p2pay.cli.common import (
    DURATION,
    Group,
    Guard,
    bootstrap_option,
    discovery_config,
    home_option,
    json_option,
    ledger_option,
    libp2p_discovery,
    node_config,
    open_store,
    run,
    settings,
)
from p2pay.cli.home import CliError, Home, listen_addrs, open_ledger
from p2pay.cli.services import Handler, ServiceSpec, load_handler, parse_service

if TYPE_CHECKING:  # (at run time the node is imported only when a node runs)
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from p2pay.net.base import ListenError
    from p2pay.node import Behaviour, Call, Counters, DiscoveryConfig, Node

log = logging.getLogger("p2pay.cli.node")
METRICS_INTERVAL = 0.5


def _behaviour_class() -> Callable[[float], Behaviour]:
    from p2pay.node import Behaviour

    class DropBehaviour(Behaviour):
        """Takes a paid request with probability `rate` and never answers it; never
        defends a claim."""

        answers_claims = False

        def __init__(self, rate: float) -> None:
            self.rate = rate
            self._random = random.Random()

        def drop(self, call: Call) -> bool:
            dropped = self._random.random() < self.rate
            if dropped:
                render.event(log, "dropped", service=call.service, n=call.n, peer=call.peer_id)
            return dropped

    return DropBehaviour


#: glibc's ``mallopt`` parameter M_MMAP_THRESHOLD, and the value `node run` sets
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def release_large_blocks() -> bool:
    """On glibc, serve every allocation of `MMAP_THRESHOLD` bytes or more with a mapping of
    its own, given back to the system when it is freed; True if set.

    glibc's default raises that threshold to the largest block freed (up to 32 MiB), so
    once a claim's request of a MiB had been read, every such frame came from the heaps of
    the threads that read the ledger and store, and stayed there: a flood of claims with
    large bodies (free when REFUSED, the SQLite dev ledger's ``max_claim_body`` is 1 MiB)
    grew a ``node run`` by about 2 MiB per claim for good (attack round 17: 500 claims,
    100 -> 1,100 MiB resident; with the threshold fixed, flat). A long-running node
    trades a mapping per large block for memory it gets back."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def parse_behaviour(behaviour: str | None, drop_rate: float | None) -> float:
    """The drop rate in [0, 1] from ``--behaviour drop:P`` or ``--drop-rate P``."""
    rate = drop_rate or 0.0
    if behaviour:
        kind, _, arg = behaviour.partition(":")
        if kind == "honest" and not arg:
            rate = 0.0
        elif kind == "drop":
            try:
                rate = float(arg) if arg else 1.0
            except ValueError:
                raise CliError(
                    f"behaviour {behaviour!r}: expected drop:P with P in [0, 1]"
                ) from None
        else:
            raise CliError(f"unknown behaviour {behaviour!r} (honest, drop:P)")
    if not 0.0 <= rate <= 1.0:
        raise CliError(f"drop rate {rate} is not in [0, 1]")
    return rate


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CliError(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


def full_addrs(node: Node) -> list[str]:
    """The node's listen addresses, each ending in /p2p/<PeerID>."""
    out = []
    for addr in node.addrs:
        text = str(addr)
        if "/p2p/" not in text:
            text = f"{text}/p2p/{node.peer_id}"
        out.append(text)
    return out


class _InFlight:
    """Counts handlers running right now (exported as a gauge)."""

    def __init__(self) -> None:
        self.value = 0

    def wrap(self, name: str, handler: Handler) -> Handler:
        async def counted(call: Call) -> bytes:
            self.value += 1
            try:
                return await handler(call)
            finally:
                self.value -= 1
                render.event(
                    log,
                    "served",
                    logging.DEBUG,
                    service=name,
                    n=call.n,
                    price=call.price,
                    peer=call.peer_id,
                )

        return counted


class _Metrics:
    """A prometheus_client collector over a snapshot of the node's counters."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def refresh(self, node: Node, in_flight: _InFlight) -> None:
        c = node.counters
        self.snapshot = {
            "calls_served": c.calls_served,
            "charged": c.charged,
            "refused": dict(c.refused),
            "in_flight": in_flight.value,
            "calls_made": c.calls_made,
            "calls_ok": c.calls_ok,
            "paid": c.paid,
            "timeouts": c.timeouts,
            "claims_filed": c.claims_filed,
            "claims_answered": c.claims_answered,
            "claims_won": c.claims_won,
            "redeemed": c.redeemed,
            "connections": c.connections,
            "protocol_violations": c.protocol_violations,
            "sessions_refused": c.sessions_refused,
            "rate_limited": c.rate_limited,
            "idle_resets": c.idle_resets,
            "sessions_evicted": c.sessions_evicted,
            "requests_from_payees": c.requests_from_payees,
            "answers_resent": c.answers_resent,
            "late_answers": c.late_answers,
            "in_doubt": c.in_doubt,
        }
        # an EVM ledger's health (issue 14): logs it could not index, RPC retries,
        # re-priced transactions, low-gas warnings, nonce races
        ledger = node.ledger
        chain_stats = getattr(getattr(ledger, "chain", None), "stats", None)
        self.snapshot["ledger"] = {
            "skipped_logs": getattr(ledger, "skipped_logs", 0),
            **(chain_stats if isinstance(chain_stats, dict) else {}),
        }

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        if not snap:
            return
        simple = (
            ("calls_served", "Paid calls served (handler answered OK)."),
            ("charged", "Yocto charged for calls served."),
            ("calls_made", "Calls this node made."),
            ("calls_ok", "Calls this node made that succeeded."),
            ("paid", "Yocto paid for calls made."),
            ("timeouts", "Calls made that timed out."),
            ("claims_filed", "Claims filed by this node."),
            ("claims_answered", "Claims against this node it answered."),
            ("claims_won", "Claims filed by this node that were upheld."),
            ("redeemed", "Yocto redeemed from channels."),
            ("connections", "Outbound connections opened."),
            ("protocol_violations", "Frames from peers that broke the protocol."),
            ("sessions_refused", "Inbound sessions refused (max_sessions limits)."),
            ("rate_limited", "Streams reset for too many refused requests."),
            ("idle_resets", "Streams reset as idle or slow-loris."),
            ("sessions_evicted", "Inbound sessions reset to make room for a new peer."),
            ("requests_from_payees", "Request frames a payee sent on a stream we opened."),
            ("answers_resent", "Re-sent requests answered with their stored answer."),
            ("late_answers", "Handlers that finished after the deadline (not charged)."),
            ("in_doubt", "Calls that ended in doubt (the request stays claimable)."),
        )
        for name, doc in simple:
            yield CounterMetricFamily(f"p2pay_{name}", doc, value=float(snap[name]))
        ledger = CounterMetricFamily(
            "p2pay_ledger_events",
            "Ledger adapter events: skipped_logs, rpc_retries, repriced, low_gas_warnings, "
            "nonce_races (EVM ledgers; 0 elsewhere).",
            labels=["kind"],
        )
        for kind, count in sorted(snap["ledger"].items()):
            if isinstance(count, int):
                ledger.add_metric([kind], float(count))
        yield ledger
        refusals = CounterMetricFamily(
            "p2pay_refusals", "Requests refused, by error code.", labels=["code"]
        )
        for code, count in sorted(snap["refused"].items()):
            refusals.add_metric([code], float(count))
        yield refusals
        yield GaugeMetricFamily(
            "p2pay_in_flight", "Handlers running now.", value=float(snap["in_flight"])
        )


@dataclass
class _Serving:
    """What `_serve` needs besides the node."""

    spec: str
    services: Sequence[ServiceSpec]
    handlers: Sequence[Handler]
    metrics: tuple[str, int] | None
    drop_rate: float
    as_json: bool
    signals: AsyncIterator[int]
    in_flight: _InFlight = field(default_factory=_InFlight)
    collector: _Metrics = field(default_factory=_Metrics)
    server: WSGIServer | None = None


async def run_node(
    home: Home,
    *,
    ledger_text: str | None,
    listen: Sequence[str],
    services: Sequence[ServiceSpec],
    handlers: Sequence[Handler],
    metrics: tuple[str, int] | None,
    drop_rate: float,
    as_json: bool,
    discovery_cfg: DiscoveryConfig,
    min_challenge_ms: int | None = None,
) -> dict[str, Any]:
    """Run until SIGINT/SIGTERM; return the final counters."""
    from p2pay.node import open_node

    # First thing: from here on SIGINT/SIGTERM are ours (a clean stop), not an exception.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        key = home.key()
        config = home.config()
        spec = home.ledger_spec(ledger_text)
        fixed = {} if min_challenge_ms is None else {"min_challenge_ms": min_challenge_ms}
        cfg = node_config(config, **fixed)
        behaviour = _behaviour_class()(drop_rate) if drop_rate > 0 else None
        serving = _Serving(str(spec), services, handlers, metrics, drop_rate, as_json, signals)
        guard = Guard()
        async with open_ledger(spec) as ledger:
            store = await open_store(home)
            try:
                async with open_node(
                    key=key,
                    ledger=ledger,
                    store=store,
                    listen=list(listen),
                    config=cfg,
                    behaviour=behaviour,
                    discovery=libp2p_discovery(server=True),
                    discovery_config=discovery_cfg,
                ) as node:
                    counters = await guard.run(_serve, node, serving)
            except BaseException as exc:
                if guard.error is not None:
                    raise guard.error from None
                busy = _listen_error(exc)
                if busy is not None:  # e.g. the port is another node's: one line, exit 1
                    raise CliError(
                        f"{busy.message}: pass --listen (e.g. /ip4/127.0.0.1/tcp/0), or edit "
                        "listen in the home's config.toml"
                    ) from None
                raise
            finally:
                if serving.server is not None:
                    serving.server.shutdown()
                    serving.server.server_close()
                with trio.CancelScope(shield=True):
                    await store.aclose()
        guard.check()
    summary = {
        "calls_served": counters.calls_served,
        "charged": counters.charged,
        "refused": sum(counters.refused.values()),
        "claims_answered": counters.claims_answered,
        "claims_filed": counters.claims_filed,
        "redeemed": counters.redeemed,
    }
    render.event(log, "stopped", **summary)
    return summary


def _listen_error(exc: BaseException) -> ListenError | None:
    """The transport's `ListenError` in `exc` (maybe inside exception groups), or None."""
    from p2pay.net.base import ListenError

    if isinstance(exc, ListenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for leaf in exc.exceptions:
            found = _listen_error(leaf)
            if found is not None:
                return found
    return None


async def _serve(node: Node, s: _Serving) -> Counters:
    """Register the services, announce the address, wait for a signal."""
    for svc, handler in zip(s.services, s.handlers, strict=True):
        node.serve(svc.name, s.in_flight.wrap(svc.name, handler), price=svc.price)
    addrs = full_addrs(node)
    stake = await node.refresh_stake()
    if s.metrics is not None:
        s.server = _start_metrics(s.collector, s.metrics)
        s.collector.refresh(node, s.in_flight)
    if s.as_json:
        render.print_json(
            {
                "peer_id": node.peer_id,
                "account": node.account,
                "listening": addrs,
                "services": {svc.name: str(svc.price) for svc in s.services},
            },
            compact=True,  # one line: a script reads it as it reads `listening ...`
        )
    else:
        for addr in addrs:
            sys.stdout.write(f"listening {addr}\n")
        sys.stdout.flush()
    render.event(
        log,
        "started",
        peer_id=node.peer_id,
        ledger=s.spec,
        services=",".join(f"{svc.name}={svc.price}" for svc in s.services) or "-",
        staked=stake.amount if stake is not None else 0,
        drop_rate=s.drop_rate,
        addr=addrs[0] if addrs else "-",
        bootstrap=len(node.discovery.config.bootstrap) if node.discovery is not None else 0,
    )
    if s.services and stake is None:
        render.event(
            log,
            "not staked",
            logging.WARNING,
            hint="clients cannot claim against an unstaked provider, and no offer is "
            "announced without a stake",
        )
    async with trio.open_nursery() as nursery:
        if s.metrics is not None:
            nursery.start_soon(_refresh_metrics, s.collector, node, s.in_flight)
        async for signum in s.signals:
            render.event(log, "stopping", signal=signal.Signals(signum).name)
            nursery.cancel_scope.cancel()
            break
    return node.counters


def _start_metrics(collector: _Metrics, where: tuple[str, int]) -> WSGIServer:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    try:
        server, _thread = start_http_server(where[1], addr=where[0], registry=registry)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {where[0]}:{where[1]}: {exc.strerror}") from None
    port = int(server.server_address[1])
    render.event(log, "metrics", url=f"http://{where[0]}:{port}/metrics")
    return server


async def _refresh_metrics(collector: _Metrics, node: Node, in_flight: _InFlight) -> None:
    while True:
        collector.refresh(node, in_flight)
        await trio.sleep(METRICS_INTERVAL)


@click.group("node", cls=Group)
def node_group() -> None:
    """Run a node."""


@node_group.command("run")
@click.option(
    "--listen",
    multiple=True,
    metavar="MULTIADDR",
    help="Listen address, e.g. /ip4/127.0.0.1/tcp/4001 (repeatable; default: config).",
)
@click.option(
    "--service",
    "service_texts",
    multiple=True,
    metavar="NAME=PRICE[:module:function]",
    help="Offer a service (repeatable; default: config). Built-ins: echo, upper.",
)
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics there.")
@bootstrap_option
@click.option(
    "--min-challenge",
    type=DURATION,
    help="Refuse channels whose challenge period is shorter (default: config, else 60s).",
)
@click.option("--drop-rate", type=click.FloatRange(0.0, 1.0), hidden=True)
@click.option("--behaviour", hidden=True)
@ledger_option
@home_option
@json_option
def node_run(
    listen: tuple[str, ...],
    service_texts: tuple[str, ...],
    metrics: str | None,
    min_challenge: int | None,
    bootstrap: tuple[str, ...],
    drop_rate: float | None,
    behaviour: str | None,
    ledger: str | None,
    as_json: bool,
) -> None:
    """Serve paid services until SIGINT/SIGTERM; print `listening <multiaddr>` on start.

    The node takes part in discovery: it joins the network through the bootstrap peers
    (--bootstrap, and config.toml's [discovery] bootstrap), announces a signed offer for
    each service while it has a stake, and relays others' offers. With no services it is
    a bootstrap node for others (give them its address).

    The node's watcher redeems what it earned, defends claims against it, and files claims
    for paid requests this home sent that were never answered. A home is used by one
    process at a time: make calls from another home.
    """
    home = settings().home
    started = time.monotonic()
    release_large_blocks()
    rate = parse_behaviour(behaviour, drop_rate)
    config = home.config()
    addrs = listen_addrs(listen or config.listen)
    specs = [parse_service(text) for text in (service_texts or config.services)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CliError("a service name is given twice")
    handlers = [load_handler(s) for s in specs]
    metrics_at = parse_hostport(metrics) if metrics else None
    found = discovery_config(config, bootstrap)  # a bad --bootstrap fails before anything starts
    if logging.getLogger("p2pay").getEffectiveLevel() > logging.INFO:
        logging.getLogger("p2pay").setLevel(logging.INFO)
    run(
        lambda: run_node(
            home,
            ledger_text=ledger,
            listen=addrs,
            services=specs,
            handlers=handlers,
            metrics=metrics_at,
            drop_rate=rate,
            as_json=as_json,
            discovery_cfg=found,
            min_challenge_ms=min_challenge,
        )
    )
    log.debug("ran for %.1f s", time.monotonic() - started)
