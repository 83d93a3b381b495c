"""The report of a run: `report.json` (schema in simulations/README.md) and the terminal
summary.

Theory of operation
-------------------
`Series` samples the run at fixed simulated instants (cumulative counters, ledger
figures, holdings per peer group). `build_report` turns a finished `Simulation` into one
JSON-ready dict; amounts are exact ints of yocto (JSON integers: Python's json reads
them back exactly; other readers may need a big-integer mode). Every figure except
those under ``"wall"`` is a function of the scenario and its seed. `print_summary`
renders the same dict with rich.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from p2pay.core.amounts import format_tokens
from p2pay.sim.invariants import (
    ANSWERED_STATES,
    MAX_DETAILS,
    bond_to_respondent,
    claim_state,
    holdings_parts,
)

if TYPE_CHECKING:
    from p2pay.sim.engine import Simulation

__all__ = [
    "SCHEMA",
    "LogCounts",
    "Series",
    "build_report",
    "merge_reports",
    "print_summary",
    "write_report",
]

SCHEMA = "p2pay.sim.report/1"


#: claim counts sampled: filed, answered (any answer), then per state
CLAIM_SERIES = ("filed", "answered", "upheld", "delivered", "refused", "frivolous")


_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[a-zA-Z%]")


def log_kind(record: logging.LogRecord) -> str:
    """What a log record says without its arguments: ``<logger>: <message>`` with every
    ``%s``-style field of the message replaced by an ellipsis (``slashed for claim …``)."""
    msg = record.msg if isinstance(record.msg, str) else str(record.msg)
    text = _FORMAT_SPEC.sub(lambda m: "%" if m.group() == "%%" else "\u2026", msg)
    return f"{record.name}: {text}"


class LogCounts(logging.Handler):
    """A logging handler that counts the records of warning level and above by kind
    (`log_kind`): a run's warnings are summarised, not printed one per event."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        counter = self.errors if record.levelno >= logging.ERROR else self.warnings
        counter[log_kind(record)] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "warnings": dict(sorted(self.warnings.items())),
            "errors": dict(sorted(self.errors.items())),
        }


class Series:
    """Time series sampled during a run (lists of equal length, one entry per sample)."""

    COUNTERS = ("arrivals", "sent", "ok", "failed", "failed_provider_offline", "missed_offline")

    def __init__(self) -> None:
        self.t: list[float] = []
        self.counts: dict[str, list[int]] = {k: [] for k in self.COUNTERS}
        self.money: dict[str, list[int]] = {
            k: [] for k in ("paid", "redeemed", "slashed", "burnt", "escrow", "refunded", "clawed")
        }
        self.claims: dict[str, list[int]] = {k: [] for k in CLAIM_SERIES}
        self.groups: dict[str, dict[str, list[int]]] = {}
        # scenarios with discovery clients only (cumulative; see `discovery_section`)
        self.discovery: dict[str, list[int]] = {}
        self.answers_by_group: dict[str, list[int]] = {}

    def sample(self, sim: Simulation, t: float) -> None:
        state = sim.ledger.state
        self.t.append(round(t, 3))
        for k in self.COUNTERS:
            self.counts[k].append(sim.counts[k])
        self.money["paid"].append(sim.paid_ok)
        self.money["redeemed"].append(sum(ch.redeemed for ch in state.channels.values()))
        self.money["slashed"].append(sum(c.slashed for c in state.claims.values()))
        self.money["burnt"].append(state.burnt)
        self.money["escrow"].append(sum(ch.escrow for ch in state.channels.values()))
        claims = state.claims.values()
        self.money["refunded"].append(sum(int(getattr(c, "refund", 0)) for c in claims))
        self.money["clawed"].append(sum(int(getattr(c, "clawed", 0)) for c in claims))
        states = collections.Counter(claim_state(c) for c in claims)
        self.claims["filed"].append(len(state.claims))
        self.claims["answered"].append(sum(states[s] for s in ANSWERED_STATES))
        for key in CLAIM_SERIES[2:]:
            self.claims[key].append(states[key])
        parts = holdings_parts(state)
        sums: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
        for peer in sim.peers:
            p = parts.get(peer.account)
            if p is not None:
                g = sums[peer.group.group]
                for i in range(4):
                    g[i] += p[i]
        for group in sim.scenario.groups:
            g = sums[group.group]
            series = self.groups.setdefault(
                group.group, {"balance": [], "escrow": [], "stake": [], "bonds": []}
            )
            for i, key in enumerate(("balance", "escrow", "stake", "bonds")):
                series[key].append(g[i])
        if sim.scenario.uses_discovery:
            rec = sim.disc
            offers = sim.offer_counts()
            ignored = sum(v for k, v in offers.items() if k.startswith("ignored:"))
            for key, value in (
                ("calls", rec.calls),
                ("ok", rec.ok),
                ("failovers", rec.failovers),
                ("failed_tries", sum(rec.failed_tries.values())),
                ("offers_seen", offers["seen"]),
                ("offers_accepted", offers["accepted"]),
                ("offers_ignored", ignored),
                ("lies_seen", offers["lies"]),
            ):
                self.discovery.setdefault(key, []).append(value)
            for group in sim.scenario.groups:
                if group.role == "provider":
                    self.answers_by_group.setdefault(group.group, []).append(
                        rec.group_answers[group.group]
                    )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": self.t,
            "requests": self.counts,
            "money": self.money,
            "claims": self.claims,
            "groups": self.groups,
        }
        if self.discovery:
            out["discovery"] = {**self.discovery, "answers_by_group": self.answers_by_group}
        return out


def build_report(sim: Simulation, log: LogCounts | None = None) -> dict[str, Any]:
    """Everything a finished run measured, as a JSON-ready dict (see the README schema).

    `log` holds the log records of warning level and above emitted during the run,
    counted by kind (`LogCounts`); without it the report's ``log`` counts are empty."""
    s = sim.scenario
    state = sim.ledger.state
    bps = state.params.slash_to_claimant_bps
    claims = list(state.claims.values())
    by_state = collections.Counter(claim_state(c) for c in claims)
    provider_refused: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    node_totals: collections.Counter[str] = collections.Counter()
    for peer in sim.peers:
        provider_refused.update(peer.refused)
        outcomes.update(peer.outcomes)
        node_totals.update(peer.totals)
    totals = _totals(sim)
    honest = {p.account for p in sim.clients if p.behaviour.honest}

    groups = []
    for group in s.groups:
        members = [p for p in sim.peers if p.group is group]
        stats: collections.Counter[str] = collections.Counter()
        g_outcomes: collections.Counter[str] = collections.Counter()
        g_refused: collections.Counter[str] = collections.Counter()
        g_totals: collections.Counter[str] = collections.Counter()
        for p in members:
            stats.update(p.behaviour.stats)
            g_outcomes.update(p.outcomes)
            g_refused.update(p.refused)
            g_totals.update(p.totals)
        figures = [sim.invariants.peer_figures(p) for p in members]
        groups.append(
            {
                "group": group.group,
                "role": group.role,
                "behaviour": group.behaviour,
                "count": len(members),
                "holdings_start": sum(f.get("holdings_start", 0) for f in figures),
                "holdings_end": sum(f.get("holdings_end", 0) for f in figures),
                "gain": sum(f.get("gain", 0) for f in figures),
                "requests": dict(sorted(g_outcomes.items())),
                "served": g_totals["calls_served"],
                "charged": g_totals["charged"],
                "refused": dict(sorted(g_refused.items())),
                "claims_filed": g_totals["claims_filed"],
                "claims_answered": g_totals["claims_answered"],
                "claims_won": g_totals["claims_won"],
                "behaviour_stats": dict(sorted(stats.items())),
            }
        )

    peers = []
    for p in sim.peers:
        f = sim.invariants.peer_figures(p)
        peers.append(
            {
                "name": p.name,
                "group": p.group.group,
                "role": p.role,
                "behaviour": p.behaviour.kind,
                "account": p.account.hex(),
                "incarnations": p.incarnations,
                "down_periods": [
                    [round(d.start_s, 3), round(d.end_s, 3), d.mode] for d in p.periods
                ],
                "requests": dict(sorted(p.outcomes.items())),
                "paid": p.paid_ok,
                "served": p.totals["calls_served"],
                "charged": p.totals["charged"],
                "refused": dict(sorted(p.refused.items())),
                **f,
            }
        )

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "scenario": {
            "name": s.name,
            "description": s.description,
            "source": s.source,
            "seed": s.seed,
            "transport": sim.transport,
            "peers": s.peer_count,
            "providers": len(sim.providers),
            "clients": len(sim.clients),
            "shards": s.shards,
        },
        "time": {
            "workload_s": s.duration_s,
            "drain_s": round(sim.drain_s, 3),
            "simulated_s": round(sim.sim_end_s, 3),
            "time_scale": sim.scale,
        },
        "requests": {
            "arrivals": sim.counts["arrivals"],
            "sent": sim.counts["sent"],
            "ok": sim.counts["ok"],
            "failed": sim.counts["failed"],
            "failed_provider_offline": sim.counts["failed_provider_offline"],
            "missed_offline": sim.counts["missed_offline"],
            "missed_backlog": sim.counts["missed_backlog"],
            "missed_no_channel": sim.counts["missed_no_channel"],
            "by_outcome": dict(sorted(outcomes.items())),
            "served_by_providers": node_totals["calls_served"],
            "refused_by_providers": dict(sorted(provider_refused.items())),
        },
        "money": {
            "minted": state.supply,
            "paid": sim.paid_ok,
            "charged": node_totals["charged"],
            "redeemed": sum(ch.redeemed for ch in state.channels.values()),
            "slashed": sum(c.slashed for c in claims),
            "burnt": state.burnt,
            "to_claimants": sum(c.slashed * bps // 10_000 for c in claims),
            "refunded": sum(int(getattr(c, "refund", 0)) for c in claims),
            "clawed": sum(int(getattr(c, "clawed", 0)) for c in claims),
            "bonds_forfeited": sum(c.bond for c in claims if bond_to_respondent(c)),
            "bonds_forfeited_by_honest_clients": sum(
                c.bond for c in claims if bond_to_respondent(c) and c.claimant in honest
            ),
            "top_ups": sim.counts["top_ups"],
            "price_changes": sim.counts["price_changes"],
        },
        "claims": {
            "filed": len(claims),
            "answered": sum(by_state.get(s, 0) for s in ANSWERED_STATES),
            "delivered": by_state.get("delivered", 0),
            "refused": by_state.get("refused", 0),
            "frivolous": by_state.get("frivolous", 0),
            "upheld": by_state.get("upheld", 0),
            "open": by_state.get("open", 0),
            "filed_by_watchers": node_totals["claims_filed"],
            "answered_by_watchers": node_totals["claims_answered"],
            "false_claims_filed": sum(p.behaviour.stats["false_claims_filed"] for p in sim.peers),
        },
        "ledger": {
            "transactions": sim.ledger.tx_count,
            "setup_transactions": sim.setup_tx,
            "events": sim.event_count,
            "totals": totals,
        },
        "invariants": sim.invariants.as_list(),
        "invariants_ok": sim.invariants.all_ok,
        "errors": dict(sorted(sim.errors.items())),
        "log": (log or LogCounts()).as_dict(),
        "groups": groups,
        "peers": peers,
        **({"discovery": discovery_section(sim)} if s.uses_discovery else {}),
        "series": sim.series.as_dict(),
        "wall": {
            "seconds": round(sim.wall_s, 3),
            "cpu_seconds": round(sim.cpu_s, 3),
            "ok_requests_per_second": round(sim.counts["ok"] / sim.wall_s, 1) if sim.wall_s else 0,
        },
    }
    return report


def discovery_section(sim: Simulation) -> dict[str, Any]:
    """The report's ``discovery`` section: what the discovery clients' nodes did with the
    offers they received (summed over the clients), and how their `call_any` calls went:
    per provider, the offers tried, the answers and how failed tries ended."""
    rec = sim.disc
    offers = sim.offer_counts()
    ignored = {k.split(":", 1)[1]: v for k, v in sorted(offers.items()) if k.startswith("ignored:")}
    # a lie is seen when an offer arrives (its stake is not on the ledger) or on a try
    # (the hello or a PAYMENT_REQUIRED contradicts the offer): the book counts both, the
    # engine the second
    lies = {
        "stake_not_on_ledger": offers["lies"] - rec.lies,
        "hello_or_price_contradicts_offer": rec.lies,
    }
    providers = []
    by_group: dict[str, dict[str, int]] = {}
    for p in sim.providers:
        failed = {how: n for (name, how), n in sorted(rec.failed_tries.items()) if name == p.name}
        providers.append(
            {
                "name": p.name,
                "group": p.group.group,
                "behaviour": p.behaviour.kind,
                "lie": getattr(p.behaviour, "lie", None),
                "tried": rec.tries[p.name],
                "answered": rec.answers[p.name],
                "failed": failed,
                "fake_offers_published": p.behaviour.stats["fake_offers_published"],
            }
        )
        g = by_group.setdefault(
            p.group.group, {"providers": 0, "tried": 0, "answered": 0, "failed": 0}
        )
        g["providers"] += 1
        g["tried"] += rec.tries[p.name]
        g["answered"] += rec.answers[p.name]
        g["failed"] += sum(failed.values())
    clients = [p for p in sim.clients if p.group.client and p.group.client.discovery]
    accounts = {p.account for p in clients}
    return {
        "clients": len(clients),
        "calls": rec.calls,
        "ok": rec.ok,
        "failovers": rec.failovers,
        "answered_after_failover": rec.answered_after_failover,
        "failed_tries": sum(rec.failed_tries.values()),
        "failed_tries_by_code": dict(sorted(rec.codes.items())),
        "outcomes": dict(sorted(rec.outcomes.items())),
        "offers": {
            "seen": offers["seen"],
            "accepted": offers["accepted"],
            "ignored": ignored,
            "lies_seen": offers["lies"],
            "lies": {k: v for k, v in lies.items() if v},
            "dropped_by_lie": offers["dropped_by_lie"],
            "evicted": offers["evicted"],
        },
        "fake_offers_tried": rec.fake_tried,
        "channels_opened": sum(
            1 for ch in sim.ledger.state.channels.values() if ch.payer in accounts
        ),
        "by_group": by_group,
        "providers": providers,
    }


def merge_reports(reports: list[dict[str, Any]], *, wall_s: float) -> dict[str, Any]:
    """One report for a market run as independent shards (see `p2pay.sim.run`).

    Counts and amounts are summed (the series sample by sample); the ledger totals are
    summed and conservation is checked once more on the sums, for the whole market;
    invariant results are combined (checks and violations summed, details tagged with
    their shard); peers are listed in the order of the unsharded run. `wall_s` is the
    wall time of the whole run; CPU seconds are summed over the shards.
    """
    if not reports:
        raise ValueError("no shard reports to merge")
    first = reports[0]
    scenario = dict(first["scenario"])
    for key in ("providers", "clients"):
        scenario[key] = sum(r["scenario"][key] for r in reports)
    time_ = dict(first["time"])
    time_["simulated_s"] = max(r["time"]["simulated_s"] for r in reports)
    ledger = _sum_tree([r["ledger"] for r in reports])
    t = ledger["totals"]
    held = t["balances"] + t["escrow"] + t["stakes"] + t["bonds"] + t["burnt"]
    t["conserved"] = t["supply"] == held

    invariants = []
    for i, r0 in enumerate(first["invariants"]):
        results = [r["invariants"][i] for r in reports]
        if any(x["name"] != r0["name"] for x in results):
            raise ValueError(f"shard reports list different invariants at {i}")
        merged: dict[str, Any] = {
            "name": r0["name"],
            "ok": True,
            "definition": r0["definition"],
            "checks": sum(x["checks"] for x in results),
            "violations": sum(x["violations"] for x in results),
            "details": [{**d, "shard": k} for k, x in enumerate(results) for d in x["details"]][
                :MAX_DETAILS
            ],
        }
        if r0["name"] == "conservation":  # the whole market, on the summed totals
            merged["checks"] += 1
            if not t["conserved"]:
                merged["violations"] += 1
                merged["details"] = [
                    {"market": True, "supply": t["supply"], "held": held},
                    *merged["details"],
                ][:MAX_DETAILS]
        merged["ok"] = merged["violations"] == 0
        if all(x.get("skipped") for x in results):
            merged["skipped"] = r0["skipped"]
        invariants.append(merged)

    order = {g["group"]: i for i, g in enumerate(first["groups"])}
    peers = sorted(
        (p for r in reports for p in r["peers"]),
        key=lambda p: (order[p["group"]], int(p["name"].rsplit("-", 1)[1])),
    )
    series = [r["series"] for r in reports]
    ok = sum(r["requests"]["ok"] for r in reports)
    return {
        "schema": SCHEMA,
        "scenario": scenario,
        "time": time_,
        "requests": _sum_tree([r["requests"] for r in reports]),
        "money": _sum_tree([r["money"] for r in reports]),
        "claims": _sum_tree([r["claims"] for r in reports]),
        "ledger": ledger,
        "invariants": invariants,
        "invariants_ok": all(x["ok"] for x in invariants),
        "errors": _sum_tree([r["errors"] for r in reports]),
        "log": _sum_tree([r["log"] for r in reports]),
        "groups": [_sum_tree(list(gs)) for gs in zip(*(r["groups"] for r in reports), strict=True)],
        "peers": peers,
        "series": {
            "t": [max(ts) for ts in zip(*(s["t"] for s in series), strict=True)],
            **_sum_tree([{k: v for k, v in s.items() if k != "t"} for s in series]),
        },
        "wall": {
            "seconds": round(wall_s, 3),
            "cpu_seconds": round(sum(r["wall"]["cpu_seconds"] for r in reports), 3),
            "ok_requests_per_second": round(ok / wall_s, 1) if wall_s else 0,
            "shard_seconds": [r["wall"]["seconds"] for r in reports],
        },
    }


def _sum_tree(values: list[Any]) -> Any:
    """Sum same-shaped JSON trees: ints added, lists element by element, dicts key by key
    (a key missing from one counts as 0), booleans and-ed, texts must be equal."""
    v0 = values[0]
    if isinstance(v0, bool):
        return all(values)
    if isinstance(v0, int):
        return sum(values)
    if isinstance(v0, str):
        if any(v != v0 for v in values):
            raise ValueError(f"shard reports differ: {sorted(set(values))}")
        return v0
    if isinstance(v0, list):
        return [_sum_tree(list(xs)) for xs in zip(*values, strict=True)]
    if isinstance(v0, dict):
        keys = list(v0)
        for v in values[1:]:
            keys += [k for k in v if k not in keys]
        if all(list(v) == sorted(v) for v in values):
            keys.sort()
        out = {}
        for k in keys:
            present = [v[k] for v in values if k in v]
            out[k] = _sum_tree(present)
        return out
    raise ValueError(f"cannot merge {type(v0).__name__} values")


def _totals(sim: Simulation) -> dict[str, Any]:
    from p2pay.ledger.base import totals_of

    t = totals_of(sim.ledger.state)
    return {
        "supply": t.supply,
        "balances": t.balances,
        "escrow": t.escrow,
        "stakes": t.stakes,
        "bonds": t.bonds,
        "burnt": t.burnt,
        "conserved": t.conserved,
    }


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``report.json`` into `out_dir` (created); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _tok(amount: int) -> str:
    return format_tokens(amount)


def _signed(amount: int) -> str:
    if amount > 0:
        return "+" + format_tokens(amount)
    if amount < 0:
        return "-" + format_tokens(-amount)
    return "0"


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    """Render the report's main figures, groups and invariants as rich tables."""
    console = console or Console()
    sc, rq, mo, cl = report["scenario"], report["requests"], report["money"], report["claims"]
    tm, wall = report["time"], report["wall"]

    head = Table(title=f"p2pay simulation: {sc['name']} (seed {sc['seed']}, {sc['transport']})")
    head.add_column("figure")
    head.add_column("value", justify="right")
    rows = [
        ("peers (providers / clients)", f"{sc['peers']} ({sc['providers']} / {sc['clients']})"),
        ("simulated time", f"{tm['simulated_s']:,.1f} s (workload {tm['workload_s']:,.0f} s)"),
        ("wall time (CPU time)", f"{wall['seconds']:,.2f} s ({wall['cpu_seconds']:,.2f} s)"),
        ("requests sent / OK / failed", f"{rq['sent']:,} / {rq['ok']:,} / {rq['failed']:,}"),
        ("failed: provider offline (scenario)", f"{rq.get('failed_provider_offline', 0):,}"),
        (
            "not sent: client offline / backlog / no channel",
            f"{rq['missed_offline']:,} / {rq['missed_backlog']:,} / {rq['missed_no_channel']:,}",
        ),
        ("paid (OK receipts)", _tok(mo["paid"])),
        ("charged by providers", _tok(mo["charged"])),
        ("redeemed on the ledger", _tok(mo["redeemed"])),
        (
            "bonds forfeited (by honest clients)",
            f"{_tok(mo['bonds_forfeited'])} ({_tok(mo['bonds_forfeited_by_honest_clients'])})",
        ),
        (
            "slashed / burnt / to claimants",
            f"{_tok(mo['slashed'])} / {_tok(mo['burnt'])} / {_tok(mo['to_claimants'])}",
        ),
        (
            "claims filed / answered / upheld / open",
            f"{cl['filed']} / {cl['answered']} / {cl['upheld']} / {cl['open']}",
        ),
        (
            "answers delivered / refused / frivolous",
            f"{cl.get('delivered', 0)} / {cl.get('refused', 0)} / {cl.get('frivolous', 0)}",
        ),
        (
            "refunded / clawed from stakes",
            f"{_tok(mo.get('refunded', 0))} / {_tok(mo.get('clawed', 0))}",
        ),
        ("ledger transactions", f"{report['ledger']['transactions']:,}"),
        ("OK requests per wall second", f"{wall['ok_requests_per_second']:,.0f}"),
    ]
    for name, value in rows:
        head.add_row(name, value)
    console.print(head)

    if rq["by_outcome"]:
        out = Table(title="request outcomes (client side) and refusals (provider side)")
        out.add_column("code")
        out.add_column("clients saw", justify="right")
        out.add_column("providers refused", justify="right")
        codes = sorted(set(rq["by_outcome"]) | set(rq["refused_by_providers"]))
        for code in codes:
            out.add_row(
                code,
                f"{rq['by_outcome'].get(code, 0):,}",
                f"{rq['refused_by_providers'].get(code, 0):,}",
            )
        console.print(out)

    disc = report.get("discovery")
    if disc is not None:
        offers = disc["offers"]
        table = Table(title="discovery (call any: offers found by service name)")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_row(
            "offers seen / accepted (clients' nodes)",
            f"{offers['seen']:,} / {offers['accepted']:,}",
        )
        for reason, n in offers["ignored"].items():
            table.add_row(f"offers ignored: {reason}", f"{n:,}")
        for reason, n in offers["lies"].items():
            table.add_row(f"lies seen: {reason}", f"{n:,}")
        table.add_row("calls / answered", f"{disc['calls']:,} / {disc['ok']:,}")
        table.add_row(
            "failovers (answered after a failed try)",
            f"{disc['failovers']:,} ({disc['answered_after_failover']:,})",
        )
        table.add_row("offers tried from fake providers", f"{disc['fake_offers_tried']:,}")
        table.add_row("channels opened by call any", f"{disc['channels_opened']:,}")
        console.print(table)
        chosen = Table(title="choices per provider group (call any)")
        chosen.add_column("group")
        chosen.add_column("providers", justify="right")
        chosen.add_column("tried", justify="right")
        chosen.add_column("answered", justify="right")
        chosen.add_column("failed tries", justify="right")
        for name, g in disc["by_group"].items():
            chosen.add_row(
                name,
                str(g["providers"]),
                f"{g['tried']:,}",
                f"{g['answered']:,}",
                f"{g['failed']:,}",
            )
        console.print(chosen)

    groups = Table(title="peer groups (amounts in tokens)")
    groups.add_column("group")
    groups.add_column("role")
    groups.add_column("behaviour")
    groups.add_column("n", justify="right")
    groups.add_column("holdings change", justify="right")
    groups.add_column("gain", justify="right")
    for g in report["groups"]:
        groups.add_row(
            g["group"],
            g["role"],
            g["behaviour"],
            str(g["count"]),
            _signed(g["holdings_end"] - g["holdings_start"]),
            _signed(g["gain"]),
        )
    console.print(groups)
    figures = [
        (g["group"], k, v) for g in report["groups"] for k, v in g["behaviour_stats"].items()
    ]
    if figures:
        beh = Table(title="what the behaviours did")
        beh.add_column("group")
        beh.add_column("figure")
        beh.add_column("count", justify="right")
        for group, key, value in figures:
            beh.add_row(group, key, f"{value:,}")
        console.print(beh)

    inv = Table(title="invariants")
    inv.add_column("invariant")
    inv.add_column("result")
    inv.add_column("checks", justify="right")
    inv.add_column("violations", justify="right")
    for r in report["invariants"]:
        if r.get("skipped"):
            result = "[dim]skipped[/dim]"
        else:
            result = "[green]ok[/green]" if r["ok"] else "[red]VIOLATED[/red]"
        inv.add_row(r["name"], result, str(r["checks"]), str(r["violations"]))
    console.print(inv)
    for r in report["invariants"]:
        for d in r["details"][:3]:
            console.print(f"  [red]{r['name']}[/red]: {d}")
    for line in log_lines(report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def log_lines(report: dict[str, Any], *, errors_only: bool = False) -> list[str]:
    """One line per kind of log record the run emitted (warnings, then errors), with its
    count: ``297 warnings from p2pay.watcher: slashed for claim …  (-v prints each)``."""
    log = report.get("log", {})
    lines = []
    for level, key in (("warning", "warnings"), ("error", "errors")):
        if errors_only and level != "error":
            continue
        for kind, n in log.get(key, {}).items():
            plural = "" if n == 1 else "s"
            lines.append(f"{n:,} {level}{plural} from {kind}  (-v prints each)")
    return lines
