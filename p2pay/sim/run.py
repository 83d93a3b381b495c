"""Running a scenario to its report: `run_scenario` (what `p2pay simulate` calls).

Theory of operation
-------------------
On the memory transport the run is ``trio.run(sim.run, clock=MockClock(autojump_threshold=0))``
with trio's scheduling RNG seeded from the scenario seed (trio picks the order of tasks
that are ready together with it); on libp2p it is a plain ``trio.run`` on the wall clock.
Then the report is built, written with the plots if an output folder is given, and
returned.

With ``shards = N`` (memory transport), the market is split into N independent
sub-markets that run at the same time, one per process: shard k holds member i of every
group for i % N == k, with the index, name, key and RNGs that peer has in the unsharded
run, and its own ledger; clients open channels to providers of their own shard. Shard 0
runs in this process (it drives the progress bar), the others in spawned processes. Each
shard is a deterministic run, and `merge_reports` combines their reports in shard order,
so the report is still a function of the scenario and its seed (and N).
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pay.sim.engine import Simulation
from p2pay.sim.report import build_report, merge_reports, write_report
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
    shard: int = 0,
    shards: int = 1,
) -> Simulation:
    """Build and run `scenario` (or one of its shards); returns the finished `Simulation`
    (see `build_report`)."""
    sim = Simulation(
        scenario, transport=transport, on_progress=on_progress, shard=shard, shards=shards
    )
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
    shards = scenario.shards if (transport or scenario.transport) == "memory" else 1
    if shards > 1:
        report = _run_sharded(scenario, shards, on_progress)
    else:
        report = build_report(
            run_simulation(scenario, transport=transport, on_progress=on_progress)
        )
    if out_dir is not None:
        report["plots"] = []
        if plots:
            from p2pay.sim.plots import write_plots

            report["plots"] = [p.name for p in write_plots(report, out_dir)]
        write_report(report, out_dir)
    return report


def _shard_report(scenario: Scenario, shard: int, shards: int, log_level: int) -> dict[str, Any]:
    """Run one shard in a worker process; returns its report."""
    logging.basicConfig(level=log_level, stream=sys.stderr)
    return build_report(run_simulation(scenario, transport="memory", shard=shard, shards=shards))


def _run_sharded(
    scenario: Scenario,
    shards: int,
    on_progress: Callable[[float, float], None] | None,
) -> dict[str, Any]:
    wall_start = time.perf_counter()
    level = logging.getLogger().getEffectiveLevel()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=shards - 1, mp_context=context) as pool:
        futures = [pool.submit(_shard_report, scenario, k, shards, level) for k in range(1, shards)]
        try:
            first = build_report(
                run_simulation(
                    scenario, transport="memory", on_progress=on_progress, shard=0, shards=shards
                )
            )
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        reports = [first, *(future.result() for future in futures)]
    return merge_reports(reports, wall_s=time.perf_counter() - wall_start)
