"""``p2pay simulate SCENARIO``: run a scenario file, write its report and plots.

The lead wires `simulate` into the ``p2pay`` command group; ``python -m p2pay.sim`` runs
the same command on its own. Exit status: 0 when every invariant holds, 1 when one is
violated (the report is written either way), 2 for a bad scenario or usage.

Output: a progress bar and the summary tables, then the paths of the report and the
plots. The nodes' warnings (a provider is slashed, ...) are counted and shown as one line
per kind with its count, in the summary and in the report; ``-v`` also prints each one on
stderr as it happens. With ``-q`` the only output is the report's path on stdout, and on
stderr what went wrong: violated invariants, errors logged during the run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from p2pay.sim.report import log_lines, print_summary
from p2pay.sim.run import run_scenario
from p2pay.sim.scenario import ScenarioError, load_scenario

__all__ = ["main", "simulate"]


@click.command("simulate")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.json and the PNG plots (default: simulations/out/<name>).",
)
@click.option(
    "--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="Override the scenario's seed."
)
@click.option(
    "--transport",
    type=click.Choice(["memory", "libp2p"]),
    default=None,
    help="memory: simulated time (fast); libp2p: real hosts on 127.0.0.1, wall clock, "
    "scaled times.",
)
@click.option(
    "--shards",
    type=click.IntRange(1, 64),
    default=None,
    help="Override the scenario's shards: independent sub-markets run in parallel processes.",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print only the report's path (and, on stderr, violated invariants and errors).",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also print each of the nodes' warnings on stderr as it happens (they are counted "
    "in the summary either way).",
)
def simulate(
    scenario: Path,
    out_dir: Path | None,
    seed: int | None,
    transport: str | None,
    shards: int | None,
    no_plots: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Run the simulation SCENARIO (a TOML file, see simulations/README.md)."""
    root = click.get_current_context().find_root().obj
    show_log = verbose or getattr(root, "verbose", 0) > 0  # `p2pay -v simulate` too
    if show_log:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # no-op under `p2pay`
    try:
        spec = load_scenario(scenario).with_overrides(seed=seed, transport=transport, shards=shards)
    except ScenarioError as exc:
        raise click.UsageError(str(exc)) from None
    if out_dir is None:
        out_dir = Path("simulations") / "out" / spec.name
    console = Console()
    err = Console(stderr=True)
    progress = Progress(
        TextColumn(f"[bold]{spec.name}[/bold] ({spec.peer_count} peers, {spec.transport})"),
        BarColumn(),
        TextColumn("{task.fields[sim]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
    task = progress.add_task("sim", total=1.0, sim="")

    def on_progress(t: float, end: float) -> None:
        progress.update(task, completed=t / end if end else 1.0, sim=f"sim {t:,.0f}/{end:,.0f} s")

    try:
        with progress:
            report = run_scenario(
                spec,
                out_dir=out_dir,
                transport=transport,
                plots=not no_plots,
                on_progress=on_progress,
                show_log=show_log,
            )
            end = report["time"]["simulated_s"]
            progress.update(task, completed=1.0, sim=f"sim {end:,.0f}/{end:,.0f} s")
    except ScenarioError as exc:
        raise click.UsageError(str(exc)) from None
    report_path = out_dir / "report.json"
    if quiet:
        click.echo(str(report_path))
        violated = [r["name"] for r in report["invariants"] if not r["ok"]]
        if violated:
            click.echo(f"invariants violated: {', '.join(violated)}", err=True)
        for line in log_lines(report, errors_only=True):
            click.echo(line, err=True)
    else:
        print_summary(report, console)
        console.print(f"report: {report_path}", markup=False, highlight=False, soft_wrap=True)
        for name in report.get("plots", []):
            console.print(
                f"plot:   {out_dir / name}", markup=False, highlight=False, soft_wrap=True
            )
    if not report["invariants_ok"]:
        raise SystemExit(1)


def main() -> None:
    simulate(prog_name="python -m p2pay.sim")
