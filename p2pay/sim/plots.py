"""PNG plots of a report's time series (matplotlib, Agg backend: no display needed).

Three figures, written next to report.json:

* ``activity.png``: requests per sample interval (sent, OK, failed), and cumulative
  payments (paid by clients for OK receipts, redeemed on the ledger, slashed, burnt);
* ``holdings.png``: per peer group, the change of its holdings (balance + escrow of the
  channels it pays + stake + open claim bonds) since the first sample, and its stake;
* ``claims.png``: claims filed / answered / upheld and, under specs/claims.md, answered
  delivered / refused / frivolous (cumulative), and the amounts slashed, refunded and
  clawed back from stakes.

Amounts are plotted in tokens (floats: for drawing only, never for accounting). A dashed
vertical line marks the end of the workload (after it: the drain, then the settlement).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_plots"]

TOKEN = 10**24


def _tokens(values: list[int]) -> list[float]:
    return [v / TOKEN for v in values]


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNG files of `report` into `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    t_raw = series["t"]
    if not t_raw:
        return []
    minutes = report["time"]["simulated_s"] > 600
    div = 60.0 if minutes else 1.0
    t = [x / div for x in t_raw]
    xlabel = "simulated time (min)" if minutes else "simulated time (s)"
    workload_end = report["time"]["workload_s"] / div
    title = f"{report['scenario']['name']} (seed {report['scenario']['seed']})"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    meta = {"Software": "p2pay.sim"}

    def finish(fig: Figure, axes: list[Axes], name: str) -> None:
        for ax in axes:
            ax.axvline(workload_end, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlabel(xlabel)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize="small")
        fig.suptitle(title)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100, metadata=meta)
        plt.close(fig)
        paths.append(path)

    # activity
    req = series["requests"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for key, label in (
        ("sent", "sent"),
        ("ok", "OK"),
        ("failed", "failed"),
        ("missed_offline", "missed (offline)"),
    ):
        values = req[key]
        per = [values[0]] + [b - a for a, b in itertools.pairwise(values)]
        ax1.plot(t, per, label=label)
    ax1.set_ylabel("requests per sample interval")
    money = series["money"]
    for key, label in (
        ("paid", "paid (OK receipts)"),
        ("redeemed", "redeemed"),
        ("slashed", "slashed"),
        ("burnt", "burnt"),
    ):
        ax2.plot(t, _tokens(money[key]), label=label)
    ax2.set_ylabel("cumulative (tokens)")
    finish(fig, [ax1, ax2], "activity.png")

    # holdings per group
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for group, data in series["groups"].items():
        total = [
            sum(parts)
            for parts in zip(
                data["balance"], data["escrow"], data["stake"], data["bonds"], strict=True
            )
        ]
        ax1.plot(t, _tokens([v - total[0] for v in total]), label=group)
        if any(data["stake"]):
            ax2.plot(t, _tokens(data["stake"]), label=group)
    ax1.set_ylabel("holdings change (tokens)")
    ax2.set_ylabel("stake (tokens)")
    if not ax2.lines:
        ax2.text(0.5, 0.5, "no stakes", ha="center", va="center", transform=ax2.transAxes)
        ax2.plot([], [], label="(none)")
    finish(fig, [ax1, ax2], "holdings.png")

    # claims and slashes
    claims = series["claims"]
    fig, ax1 = plt.subplots(figsize=(9, 4.5))
    for key in ("filed", "answered", "upheld", "delivered", "refused", "frivolous"):
        values = claims.get(key)
        if values is not None and (key in ("filed", "answered", "upheld") or any(values)):
            ax1.plot(t, values, label=f"claims {key}")
    ax1.set_ylabel("claims (cumulative)")
    ax2 = ax1.twinx()
    ax2.plot(t, _tokens(money["slashed"]), color="black", linestyle=":", label="slashed (tokens)")
    for key, style in (("refunded", "-."), ("clawed", "--")):
        values = money.get(key)
        if values is not None and any(values):
            ax2.plot(t, _tokens(values), color="grey", linestyle=style, label=f"{key} (tokens)")
    ax2.set_ylabel("slashed, refunded, clawed (tokens)")
    ax2.legend(loc="lower right", fontsize="small")
    finish(fig, [ax1], "claims.png")
    return paths
