"""Running a scenario to its report: `run_scenario` (what `p2pay simulate` calls).

Theory of operation
-------------------
On the memory transport the run is ``trio.run(sim.run, clock=MockClock(autojump_threshold=0))``
with trio's scheduling RNG seeded from the scenario seed (trio picks the order of tasks
that are ready together with it); on libp2p it is a plain ``trio.run`` on the wall clock.
Then the report is built, written with the plots if an output folder is given, and
returned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pay.sim.engine import Simulation
from p2pay.sim.report import build_report, write_report
from p2pay.sim.scenario import Scenario

__all__ = ["run_scenario", "run_simulation"]


def _seed_trio(seed: int) -> None:
    """Seed the RNG trio's scheduler uses to order ready tasks (private, best effort)."""
    try:
        from trio._core import _run

        _run._r.seed(seed)
    except (ImportError, AttributeError):  # pragma: no cover - another trio version
        pass


def run_simulation(
    scenario: Scenario,
    *,
    transport: str | None = None,
    on_progress: Callable[[float, float], None] | None = None,
) -> Simulation:
    """Build and run `scenario`; returns the finished `Simulation` (see `build_report`)."""
    sim = Simulation(scenario, transport=transport, on_progress=on_progress)
    if sim.transport == "memory":
        _seed_trio(scenario.seed)
        trio.run(sim.run, clock=trio.testing.MockClock(autojump_threshold=0))
    else:
        trio.run(sim.run)
    return sim


def run_scenario(
    scenario: Scenario,
    *,
    out_dir: Path | None = None,
    transport: str | None = None,
    plots: bool = True,
    on_progress: Callable[[float, float], None] | None = None,
) -> dict[str, Any]:
    """Run `scenario` and return its report; with `out_dir`, write report.json and PNGs.

    Raises:
        ScenarioError: the scenario cannot run (e.g. too many peers for libp2p).
    """
    sim = run_simulation(scenario, transport=transport, on_progress=on_progress)
    report = build_report(sim)
    if out_dir is not None:
        report["plots"] = []
        if plots:
            from p2pay.sim.plots import write_plots

            report["plots"] = [p.name for p in write_plots(report, out_dir)]
        write_report(report, out_dir)
    return report
