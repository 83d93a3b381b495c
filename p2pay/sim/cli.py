"""``p2pay simulate SCENARIO``: run a scenario file, write its report and plots.

The lead wires `simulate` into the ``p2pay`` command group; ``python -m p2pay.sim`` runs
the same command on its own. Exit status: 0 when every invariant holds, 1 when one is
violated (the report is written either way), 2 for a bad scenario or usage.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from p2pay.sim.report import print_summary
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
@click.option("--verbose", "-v", is_flag=True, help="Show the nodes' warnings (logged to stderr).")
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
    logging.basicConfig(level=logging.WARNING if verbose else logging.CRITICAL, stream=sys.stderr)
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
            )
            progress.update(task, completed=1.0)
    except ScenarioError as exc:
        raise click.UsageError(str(exc)) from None
    if not quiet:
        print_summary(report, console)
        console.print(f"report: {out_dir / 'report.json'}")
        for name in report.get("plots", []):
            console.print(f"plot:   {out_dir / name}")
    if not report["invariants_ok"]:
        raise SystemExit(1)


def main() -> None:
    simulate(prog_name="python -m p2pay.sim")
