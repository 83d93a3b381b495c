"""Running a scenario to its report: `run_scenario` (what `p2pay simulate` calls).

Theory of operation
-------------------
On the memory transport the run is ``trio.run(sim.run, clock=SimClock().trio_clock)`` (trio's
``MockClock(autojump_threshold=0)`` that also wakes the simulator's sleepers, `p2pay.sim.clock`)
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

Log records of warning level and above emitted during a run (a node's "slashed for
claim ..." each time a claim against it is upheld, say) are counted by kind into the
report's ``log`` section (`capture_log`); with ``show_log=False`` they are only counted,
not passed on to the process's log handlers (what ``p2pay simulate`` does without
``-v``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import trio

from p2pay.sim.clock import SimClock
from p2pay.sim.engine import Simulation
from p2pay.sim.report import LogCounts, build_report, merge_reports, write_report
from p2pay.sim.scenario import Scenario

__all__ = ["capture_log", "run_scenario", "run_simulation"]


@contextlib.contextmanager
def capture_log(show: bool) -> Iterator[LogCounts]:
    """Count the log records of warning level and above emitted inside the block.

    The root logger and the ``p2pay`` logger are let through at warning level for the
    block (the counts do not depend on how logging was configured). With `show` false
    the root logger's handlers are set aside for the block, so the records are counted
    and printed nowhere; with `show` true they also go where they went before (stderr
    when nothing was configured). Levels and handlers are restored afterwards.
    """
    counts = LogCounts()
    root = logging.getLogger()
    ours = logging.getLogger("p2pay")
    saved_levels = (root.level, ours.level)
    saved_handlers = list(root.handlers)
    if root.getEffectiveLevel() > logging.WARNING:
        root.setLevel(logging.WARNING)
    if ours.getEffectiveLevel() > logging.WARNING:
        ours.setLevel(logging.WARNING)
    extra: logging.Handler | None = None
    if not show:
        for handler in saved_handlers:
            root.removeHandler(handler)
    elif not saved_handlers:  # what logging would do without our handler: stderr
        extra = logging.StreamHandler(sys.stderr)
        extra.setLevel(logging.WARNING)
        root.addHandler(extra)
    root.addHandler(counts)
    try:
        yield counts
    finally:
        root.removeHandler(counts)
        if extra is not None:
            root.removeHandler(extra)
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_levels[0])
        ours.setLevel(saved_levels[1])


def _seed_trio(seed: int) -> None:
    """Seed the RNG trio's scheduler uses to order ready tasks (private, best effort)."""
    try:
        from trio._core import _run

        _run._r.seed(seed)
    except (ImportError, AttributeError):  # pragma: no cover - another trio version
        pass


#: The cyclic garbage collector's thresholds while a simulation is built, run and reported
#: on. With
#: Python's default (700, 10, 10) it took 15-20 % of the CPU of a few hundred peers: each
#: of its frequent collections of the older generations walks every node's state, which
#: is large and long-lived. Collections are rarer, not fewer in kind: the garbage of a
#: run is collected as before, later (peak RSS was unchanged at 400 peers).
SIM_GC_THRESHOLDS = (50_000, 20, 100)


@contextlib.contextmanager
def _gc_thresholds(thresholds: tuple[int, int, int]) -> Iterator[None]:
    """Set the garbage collector's thresholds for the block, then restore them."""
    saved = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


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
    with _gc_thresholds(SIM_GC_THRESHOLDS):
        sim = Simulation(
            scenario, transport=transport, on_progress=on_progress, shard=shard, shards=shards
        )
        if sim.transport == "memory":
            _seed_trio(scenario.seed)
            trio.run(sim.run, clock=SimClock().trio_clock)
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
    show_log: bool = True,
) -> dict[str, Any]:
    """Run `scenario` and return its report; with `out_dir`, write report.json and PNGs.

    Warnings and errors logged during the run are counted in the report's ``log``
    section; with `show_log` false they are not printed (see `capture_log`).

    Raises:
        ScenarioError: the scenario cannot run (e.g. too many peers for libp2p).
    """
    shards = scenario.shards if (transport or scenario.transport) == "memory" else 1
    if shards > 1:
        report = _run_sharded(scenario, shards, on_progress, show_log)
    else:
        with _gc_thresholds(SIM_GC_THRESHOLDS):
            with capture_log(show_log) as log:
                sim = run_simulation(scenario, transport=transport, on_progress=on_progress)
            report = build_report(sim, log)
    if out_dir is not None:
        report["plots"] = []
        if plots:
            from p2pay.sim.plots import write_plots

            report["plots"] = [p.name for p in write_plots(report, out_dir)]
        write_report(report, out_dir)
    return report


def _shard_report(scenario: Scenario, shard: int, shards: int, show_log: bool) -> dict[str, Any]:
    """Run one shard in a worker process; returns its report."""
    with _gc_thresholds(SIM_GC_THRESHOLDS):
        with capture_log(show_log) as log:
            sim = run_simulation(scenario, transport="memory", shard=shard, shards=shards)
        return build_report(sim, log)


def _run_sharded(
    scenario: Scenario,
    shards: int,
    on_progress: Callable[[float, float], None] | None,
    show_log: bool,
) -> dict[str, Any]:
    wall_start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=shards - 1, mp_context=context) as pool:
        futures = [
            pool.submit(_shard_report, scenario, k, shards, show_log) for k in range(1, shards)
        ]
        try:
            with _gc_thresholds(SIM_GC_THRESHOLDS):
                with capture_log(show_log) as log:
                    sim = run_simulation(
                        scenario,
                        transport="memory",
                        on_progress=on_progress,
                        shard=0,
                        shards=shards,
                    )
                first = build_report(sim, log)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        reports = [first, *(future.result() for future in futures)]
    return merge_reports(reports, wall_s=time.perf_counter() - wall_start)
