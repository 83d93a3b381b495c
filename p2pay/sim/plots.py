"""PNG plots of a report's time series (matplotlib, Agg backend: no display needed).

Three figures, written next to report.json (`figures` builds them, `write_plots` saves
them):

* ``activity.png``, three panels: requests per sample interval (sent, OK, failed, failed
  while the provider was down by the scenario, not sent while the client was down);
  cumulative payments (paid by clients for OK receipts, redeemed on the ledger); and,
  on their own axis since they are often a hundred times larger, cumulative slashes and
  burns;
* ``holdings.png``, one panel per peer group (each on its own scale, so that a group
  earning a few micro is not flattened by one losing tokens): the change of the group's
  holdings (balance + escrow of the channels it pays + stake + open claim bonds) since
  the first sample and, for groups that stake, the change of their stake;
* ``claims.png``, two panels: claims filed / answered / upheld and, under
  specs/claims.md, answered delivered / refused / frivolous (cumulative counts); the
  amounts slashed, refunded and clawed back from stakes (tokens).

With discovery clients (``discovery = true``), two more:

* ``discovery.png``, four panels over time: the offers the clients' nodes received per
  sample interval (seen, accepted, ignored); the OK answers per provider group per
  interval (a failing group's line drops while it is down: its clients went elsewhere);
  on their own axis since they are far fewer, the failovers (calls that tried another
  offer after a failed try) and the failed tries; and the lies seen (a burst when the
  clients first meet the liars);
* ``choices.png``, two bar charts over the whole run: per provider (grouped and coloured
  by group), the offers tried and the answers got from it; and the offers ignored and
  the lies seen, by reason (each bar carries its count).

Every line has its own colour, line style and markers (lines that coincide stay
visible), and every line is in its panel's legend, the dashed vertical line that marks
the end of the workload (after it: the drain, then the settlement) included. Amounts are
plotted in tokens (floats: for drawing only, never for accounting).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["END_OF_WORKLOAD", "figures", "write_plots"]

TOKEN = 10**24

#: the legend label of the vertical line at the end of the workload
END_OF_WORKLOAD = "end of workload"

#: (colour, line style, marker) of the n-th line of a panel
_STYLES = list(
    zip(
        ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"],
        ["-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1))],
        ["o", "s", "^", "v", "D", "x"],
        strict=True,
    )
)
_MARKS = 12  # about this many markers per line


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _counts_axis(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _tokens_axis(ax: Axes) -> None:
    """Amounts as plain decimals (0.00005, not 5 with an offset of 1e-5 above the axis)."""
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _tokens(values: list[int]) -> list[float]:
    return [v / TOKEN for v in values]


def _per_interval(values: list[int]) -> list[int]:
    return [values[0]] + [b - a for a, b in itertools.pairwise(values)]


class _Panel:
    """Draws the lines of one axes, each with the next style of `_STYLES`."""

    def __init__(self, ax: Axes, t: list[float]) -> None:
        self.ax = ax
        self.t = t
        self.n = 0

    def line(self, values: list[float] | list[int], label: str) -> None:
        colour, style, marker = _STYLES[self.n % len(_STYLES)]
        step = max(1, len(self.t) // _MARKS)
        self.ax.plot(
            self.t,
            values,
            label=label,
            color=colour,
            linestyle=style,
            marker=marker,
            markersize=4,
            markevery=(self.n % step, step),  # staggered: coinciding lines stay apart
            linewidth=1.4,
        )
        self.n += 1


def figures(report: dict[str, Any]) -> dict[str, Figure]:
    """The figures of `report`, by file name (empty when the run has no samples)."""
    plt = _pyplot()
    series = report["series"]
    t_raw = series["t"]
    if not t_raw:
        return {}
    minutes = report["time"]["simulated_s"] > 600
    div = 60.0 if minutes else 1.0
    t = [x / div for x in t_raw]
    xlabel = "simulated time (min)" if minutes else "simulated time (s)"
    workload_end = report["time"]["workload_s"] / div
    title = f"{report['scenario']['name']} (seed {report['scenario']['seed']})"
    out: dict[str, Figure] = {}

    def finish(fig: Figure, axes: list[Axes], name: str, bottom: list[Axes]) -> None:
        for ax in axes:
            ax.axvline(
                workload_end, color="grey", linestyle="--", linewidth=0.8, label=END_OF_WORKLOAD
            )
            ax.grid(True, alpha=0.3)
            ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1.0))
        for ax in bottom:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(labelbottom=True)
        fig.suptitle(title)
        fig.tight_layout()
        out[name] = fig

    # activity: requests, payments, slashes (three scales)
    req = series["requests"]
    money = series["money"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    p = _Panel(ax1, t)
    for key, label in (
        ("sent", "sent"),
        ("ok", "OK"),
        ("failed", "failed"),
        ("failed_provider_offline", "failed: provider offline"),
        ("missed_offline", "not sent: client offline"),
    ):
        values = req.get(key)
        if values is not None:
            p.line(_per_interval(values), label)
    ax1.set_ylabel("requests per sample interval")
    _counts_axis(ax1)
    ax1.set_title("requests", fontsize="medium")
    p = _Panel(ax2, t)
    p.line(_tokens(money["paid"]), "paid (OK receipts)")
    p.line(_tokens(money["redeemed"]), "redeemed")
    ax2.set_ylabel("cumulative (tokens)")
    _tokens_axis(ax2)
    ax2.set_title("payments", fontsize="medium")
    p = _Panel(ax3, t)
    p.line(_tokens(money["slashed"]), "slashed")
    p.line(_tokens(money["burnt"]), "burnt (part of slashed)")
    ax3.set_ylabel("cumulative (tokens)")
    _tokens_axis(ax3)
    ax3.set_title("slashing", fontsize="medium")
    for ax in (ax2, ax3):
        ax.set_ylim(bottom=0)  # cumulative amounts
    if not any(money["slashed"]):
        _note(ax3, "no slashes in this run")
    finish(fig, [ax1, ax2, ax3], "activity.png", [ax3])

    # holdings: one panel per group, each on its own scale
    groups = series["groups"]
    roles = {g["group"]: (g["role"], g["behaviour"]) for g in report.get("groups", [])}
    n = max(1, len(groups))
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(
        rows, cols, figsize=(6 * cols + 2, 2.6 * rows + 1), sharex=True, squeeze=False
    )
    cells = [ax for row in grid for ax in row]
    for ax in cells[len(groups) :]:
        fig.delaxes(ax)
    axes = cells[: len(groups)]
    for ax, (group, data) in zip(axes, groups.items(), strict=False):
        total = [
            sum(parts)
            for parts in zip(
                data["balance"], data["escrow"], data["stake"], data["bonds"], strict=True
            )
        ]
        p = _Panel(ax, t)
        p.line(_tokens([v - total[0] for v in total]), "holdings change")
        if any(data["stake"]):
            p.line(_tokens([v - data["stake"][0] for v in data["stake"]]), "stake change")
        role, behaviour = roles.get(group, ("", ""))
        ax.set_title(f"{group} ({role}, {behaviour})" if role else group, fontsize="medium")
        ax.set_ylabel("tokens")
        _tokens_axis(ax)
    # the lowest panel of each column carries the time axis
    bottom = [axes[max(range(c, len(axes), cols))] for c in range(min(cols, len(axes)))]
    finish(fig, axes, "holdings.png", bottom)

    # claims: counts, then amounts
    claims = series["claims"]
    refunds = [(key, money[key]) for key in ("refunded", "clawed") if any(money.get(key) or [0])]
    fig, panels = plt.subplots(3 if refunds else 2, 1, figsize=(10, 10 if refunds else 7))
    ax1, ax2 = panels[0], panels[1]
    for ax in panels[1:]:
        ax.sharex(ax1)
    p = _Panel(ax1, t)
    for key in ("filed", "answered", "upheld", "delivered", "refused", "frivolous"):
        values = claims.get(key)
        if values is not None and (key in ("filed", "answered", "upheld") or any(values)):
            p.line(values, f"claims {key}")
    ax1.set_ylabel("claims (cumulative)")
    _counts_axis(ax1)
    ax1.set_title("claims", fontsize="medium")
    p = _Panel(ax2, t)
    p.line(_tokens(money["slashed"]), "slashed")
    ax2.set_ylabel("cumulative (tokens)")
    _tokens_axis(ax2)
    ax2.set_title("slashed (penalties)", fontsize="medium")
    ax2.set_ylim(bottom=0)
    if not any(money["slashed"]):
        _note(ax2, "no slashes in this run")
    if refunds:  # prices of requests: far smaller than penalties, on their own axis
        p = _Panel(panels[2], t)
        for key, values in refunds:
            p.line(_tokens(values), "clawed from stakes" if key == "clawed" else key)
        panels[2].set_ylabel("cumulative (tokens)")
        _tokens_axis(panels[2])
        panels[2].set_title("refunds to claimants", fontsize="medium")
        panels[2].set_ylim(bottom=0)
    for ax in panels[:-1]:
        ax.xaxis.set_tick_params(labelbottom=False)
    finish(fig, list(panels), "claims.png", [panels[-1]])

    disc = series.get("discovery")
    if disc:
        fig, (ax1, ax2, ax3, ax4) = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
        p = _Panel(ax1, t)
        for key, label in (
            ("offers_seen", "offers seen"),
            ("offers_accepted", "offers accepted"),
            ("offers_ignored", "offers ignored"),
        ):
            p.line(_per_interval(disc[key]), label)
        ax1.set_ylabel("offers per sample interval")
        _counts_axis(ax1)
        ax1.set_title("offers received by the clients' nodes", fontsize="medium")
        p = _Panel(ax2, t)
        behaviours = {g["group"]: g["behaviour"] for g in report.get("groups", [])}
        for group, values in disc["answers_by_group"].items():
            p.line(_per_interval(values), f"{group} ({behaviours.get(group, '?')})")
        ax2.set_ylabel("answers per sample interval")
        _counts_axis(ax2)
        ax2.set_title("calls answered, by provider group (call any)", fontsize="medium")
        p = _Panel(ax3, t)
        p.line(_per_interval(disc["failovers"]), "failovers (calls)")
        p.line(_per_interval(disc["failed_tries"]), "failed tries")
        ax3.set_ylabel("per sample interval")
        _counts_axis(ax3)
        ax3.set_title("failovers and failed tries (call any)", fontsize="medium")
        if not any(disc["failed_tries"]):
            _note(ax3, "no failed try in this run")
        p = _Panel(ax4, t)
        p.line(_per_interval(disc["lies_seen"]), "lies seen")
        ax4.set_ylabel("per sample interval")
        _counts_axis(ax4)
        ax4.set_title("lies seen: offers or hellos contradicted (peer dropped)", fontsize="medium")
        if not any(disc["lies_seen"]):
            _note(ax4, "no lie seen in this run")
        finish(fig, [ax1, ax2, ax3, ax4], "discovery.png", [ax4])
        choices = _choices_figure(plt, report, title)
        if choices is not None:
            out["choices.png"] = choices
    return out


def _choices_figure(plt: Any, report: dict[str, Any], title: str) -> Figure | None:
    """Bar charts of the report's ``discovery`` section (see the module docstring)."""
    disc = report.get("discovery")
    if disc is None or not disc["providers"]:
        return None
    providers = disc["providers"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(10, 0.22 * len(providers) + 4), 9))
    colours: dict[str, str] = {}
    for g in providers:
        colours.setdefault(g["group"], _STYLES[len(colours) % len(_STYLES)][0])
    x = list(range(len(providers)))
    labelled: set[str] = set()
    for i, entry in enumerate(providers):
        group, colour = entry["group"], colours[entry["group"]]
        lie = f", lie: {entry['lie']}" if entry.get("lie") else ""
        first = group not in labelled
        labelled.add(group)
        ax1.bar(
            i - 0.2,
            entry["tried"],
            width=0.4,
            color=colour,
            alpha=0.45,
            hatch="//",
            edgecolor=colour,
            label=f"{group} ({entry['behaviour']}{lie}): offers tried" if first else None,
        )
        ax1.bar(
            i + 0.2,
            entry["answered"],
            width=0.4,
            color=colour,
            label=f"{group}: answers" if first else None,
        )
    ax1.set_xticks(x, [e["name"] for e in providers], rotation=90, fontsize="x-small")
    ax1.set_ylabel("calls (whole run)")
    _counts_axis(ax1)
    ax1.set_title("choices per provider: offers tried and answers (call any)", fontsize="medium")
    ax1.grid(True, axis="y", alpha=0.3)
    ax1.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1.0))

    offers = disc["offers"]
    reasons = [(f"ignored: {k}", v) for k, v in offers["ignored"].items()]
    reasons += [(f"lie seen: {k}", v) for k, v in offers["lies"].items()]
    if reasons:
        names = [name for name, _ in reasons]
        values = [v for _, v in reasons]
        bars = ax2.barh(
            names,
            values,
            color=["tab:grey" if n.startswith("ignored") else "tab:red" for n in names],
        )
        ax2.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize="small")
        ax2.invert_yaxis()
        from matplotlib.patches import Patch

        ax2.legend(
            handles=[
                Patch(color="tab:grey", label="offers ignored (not trusted)"),
                Patch(color="tab:red", label="lies seen (provider dropped)"),
            ],
            loc="upper left",
            fontsize="small",
            bbox_to_anchor=(1.01, 1.0),
        )
    else:
        _note(ax2, "no offer ignored and no lie seen in this run")
    ax2.set_xlabel("offers (whole run, summed over the clients' nodes)")
    ax2.set_title("offers ignored and lies seen, by reason", fontsize="medium")
    ax2.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    figure: Figure = fig
    return figure


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNG files of `report` into `out_dir`; returns their paths."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, fig in figures(report).items():
        path = out_dir / name
        fig.savefig(path, dpi=100, metadata={"Software": "p2pay.sim"}, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
