"""6. Simulator wall time for simulations/scenarios/scale-1000.toml (<= 60 s on 2 cores).

Two target runs of the documented command, one after the other, each in a child process:

* ``simulator``: ``python -m p2pay.sim simulations/scenarios/scale-1000.toml --no-plots
  -q --out TMP``, the scenario as it is: one market of 1,000 peers, which runs in one
  process and one thread (one trio run on a mock clock), so it uses one core;
* ``simulator_shards2``: the same command with ``--shards 2``: two independent
  half-markets (a client picks providers only in its shard) in two processes, one per
  core; the report is merged and every invariant checked per shard and on the sums.

Wall time, CPU time (user + sys, the shard worker process included: it is a waited-for
child of the command) and peak RSS (of the largest process) come from ``os.wait4``. Each
ratio is wall seconds / 60. Wall time also counts what other processes took from us (the
load average is printed beside it).

Growth: the same scenario rescaled to 100, 1,000 and 5,000 peers (groups scaled in
proportion, same rate per client), one market each (unsharded), each for 5 simulated
minutes instead of 20 so that the 5,000-peer point fits in the run (requests grow with
peers), through the simulator's library interface (`benchmarks._simrun`). --quick runs
only 100 peers for 2 simulated minutes (the scale-1000 targets are then reported as not
measured); the smoke size runs 40 peers for 20 simulated seconds, unsharded and in 2
shards. The cProfile pass (full run only) profiles the 100-peer point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import Result, load_average, not_measured

NAME = "simulator"
TITLE = "simulator wall time, scale-1000.toml (one market, one process) / 60 s"
TITLE_SHARDS = "simulator wall time, scale-1000.toml --shards 2 (two half-markets) / 60 s"
TARGET = 1.0
LIMIT_S = 60.0

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "simulations" / "scenarios" / "scale-1000.toml"

#: (peers, simulated duration or None for the scenario's own, timeout seconds, shards)
SIZE: dict[str, dict[str, Any]] = {
    "smoke": {"target": False, "growth": [(40, 20.0, 120, 1), (40, 20.0, 120, 2)]},
    "quick": {"target": False, "growth": [(100, 120.0, 300, 1)]},
    "full": {
        "target": True,
        "growth": [(100, 300.0, 600, 1), (1000, 300.0, 1800, 1), (5000, 300.0, 3600, 1)],
    },
}


def _child(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run `cmd`; wall, CPU and peak RSS of that child alone (os.wait4)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    load_before = [round(x, 2) for x in load_average()]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return {"timeout": True, "wall_s": time.perf_counter() - t0}
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return {
        "timeout": False,
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stdout": stdout,
        "stderr_tail": stderr[-2000:],
        "loadavg_before_after": [load_before, [round(x, 2) for x in load_average()]],
    }


def _simulator_ready() -> str | None:
    """None if ``p2pay.sim`` imports and has its documented interface, else why not."""
    try:
        from p2pay.sim import parse_scenario, run_scenario  # noqa: F401
    except Exception as exc:
        return f"simulator not ready: cannot import p2pay.sim ({exc!r})"[:400]
    if not SCENARIO.exists():
        return f"simulator not ready: {SCENARIO.relative_to(ROOT)} is missing"
    return None


def _target(shards: int) -> tuple[float | None, dict[str, Any], list[str]]:
    """Run the documented command on scale-1000.toml (with ``--shards`` if > 1)."""
    figures: dict[str, Any] = {}
    notes: list[str] = []
    ratio: float | None = None
    with tempfile.TemporaryDirectory(prefix="p2pay-bench-sim-") as out_dir:
        cmd = [sys.executable, "-m", "p2pay.sim", str(SCENARIO), "--no-plots", "-q"]
        if shards > 1:
            cmd += ["--shards", str(shards)]
        res = _child([*cmd, "--out", out_dir], 3600)
        report_path = Path(out_dir) / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    what = "scale-1000" + (f" --shards {shards}" if shards > 1 else " (one market)")
    if res.get("timeout"):
        notes.append(f"not measured: {what} did not finish within 3600 s")
    elif res["returncode"] not in (0, 1):
        notes.append(
            f"not measured: simulator exited {res['returncode']}: {res['stderr_tail'][-300:]}"
        )
    else:
        ratio = res["wall_s"] / LIMIT_S
        rq = report.get("requests", {})
        ok = rq.get("ok") or 0
        wall = report.get("wall", {})
        figures["scale_1000_wall_s"] = res["wall_s"]
        figures["scale_1000_cpu_s"] = res["cpu_s"]
        figures["scale_1000"] = {
            "shards": shards,
            "wall_s": res["wall_s"],
            "cpu_s": res["cpu_s"],
            "peak_rss_mib": res["peak_rss_mib"],
            "requests_sent_ok": [rq.get("sent"), ok],
            "invariants_ok": report.get("invariants_ok"),
            "report_cpu_s": wall.get("cpu_seconds"),
            "report_shard_wall_s": wall.get("shard_seconds"),
            "loadavg_before_after": res["loadavg_before_after"],
        }
        notes.append(
            f"{what} (20 simulated minutes): {res['wall_s']} s wall, {res['cpu_s']} s CPU "
            f"(all processes; CPU / 60 = {res['cpu_s'] / LIMIT_S:.2f}), peak RSS "
            f"{res['peak_rss_mib']} MiB (largest process), {ok:,} OK requests, invariants ok: "
            f"{report.get('invariants_ok')}"
            + (f", {res['cpu_s'] / ok * 1e3:.2f} ms CPU per OK request" if ok else "")
            + f"; load average before/after {res['loadavg_before_after']}"
        )
        if wall.get("shard_seconds"):
            notes.append(f"wall seconds per shard (from the report): {wall['shard_seconds']}")
    return ratio, figures, notes


def run(size: str, profile_dir: Path | None) -> list[Result]:
    p = SIZE[size]
    desc = "wall seconds of `python -m p2pay.sim scale-1000.toml` / 60"
    desc2 = "wall seconds of `python -m p2pay.sim scale-1000.toml --shards 2` / 60"
    why = _simulator_ready()
    if why is not None:
        return [
            not_measured(NAME, TITLE, "<=", TARGET, desc, why),
            not_measured(f"{NAME}_shards2", TITLE_SHARDS, "<=", TARGET, desc2, why),
        ]
    figures: dict[str, Any] = {}
    notes: list[str] = []
    ratio: float | None = None
    figures2: dict[str, Any] = {}
    notes2: list[str] = []
    ratio2: float | None = None
    if p["target"]:
        ratio, figures, notes = _target(1)
        ratio2, figures2, notes2 = _target(2)
    else:
        notes.append(f"not measured: scale-1000 runs in the full run only (size {size!r})")
        notes2.append(f"not measured: scale-1000 runs in the full run only (size {size!r})")
    growth = [_growth_point(*point) for point in p["growth"]]
    figures["growth"] = growth
    for g in growth:
        shards = f" in {g['shards']} shards" if g.get("shards", 1) > 1 else ""
        if "wall_s" in g and "cpu_s" in g:
            per_req = ""
            ok = g.get("requests_sent_ok", [None, None])[1]
            if ok:
                per_req = f", {g['cpu_s'] / ok * 1e3:.2f} ms CPU per OK request"
            notes.append(
                f"{g['peers']} peers{shards}, {g['simulated_s']:.0f} simulated s: "
                f"{g['wall_s']} s wall, {g['cpu_s']} s CPU, "
                f"{g.get('peak_rss_mib')} MiB peak RSS{per_req}"
            )
        else:
            notes.append(f"{g['peers']} peers{shards}: not measured ({g.get('why')})")
    for g in growth:
        if "wall_s" in g:
            tag = f"{g['peers']}p_{g['simulated_s']:.0f}s" + (
                f"_{g['shards']}shards" if g.get("shards", 1) > 1 else ""
            )
            figures[f"wall_s_{tag}"] = g["wall_s"]
            figures[f"cpu_s_{tag}"] = g["cpu_s"]
    if profile_dir is not None and size == "full":
        peers, duration, _timeout, _shards = p["growth"][0]
        figures["profile"] = _profile(profile_dir, peers, duration)
        notes.append(f"profile ({peers} peers, {duration:.0f} simulated s): {figures['profile']}")
    if not figures2:
        figures2["scale_1000"] = "not measured at this size (full run only)"
    return [
        Result(
            name=NAME,
            title=TITLE,
            target_op="<=",
            target=TARGET,
            ratio=ratio,
            ratio_desc=desc,
            figures=figures,
            notes=notes,
        ),
        Result(
            name=f"{NAME}_shards2",
            title=TITLE_SHARDS,
            target_op="<=",
            target=TARGET,
            ratio=ratio2,
            ratio_desc=desc2,
            figures=figures2,
            notes=notes2,
        ),
    ]


def _growth_point(
    peers: int, duration: float | None, timeout: float, shards: int = 1
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks._simrun", str(SCENARIO), "--peers", str(peers)]
    if duration is not None:
        cmd += ["--duration", str(duration)]
    if shards > 1:
        cmd += ["--shards", str(shards)]
    res = _child(cmd, timeout)
    if res.get("timeout"):
        return {"peers": peers, "why": f"did not finish within {timeout} s"}
    if res["returncode"] != 0:
        return {"peers": peers, "why": f"exit {res['returncode']}: {res['stderr_tail'][-300:]}"}
    summary = json.loads(res["stdout"].strip().splitlines()[-1])
    rq = summary.get("requests", {})
    return {
        "peers": summary["peers"],
        "shards": summary.get("shards", 1),
        "simulated_s": summary["duration_s"],
        "wall_s": res["wall_s"],
        "cpu_s": res["cpu_s"],
        "peak_rss_mib": res["peak_rss_mib"],
        "requests_sent_ok": [rq.get("sent"), rq.get("ok")],
        "invariants_ok": summary.get("invariants_ok"),
        "loadavg_before_after": res["loadavg_before_after"],
    }


def _profile(profile_dir: Path, peers: int, duration: float) -> str | None:
    """cProfile of a rescaled run, summarised by component (in a child process)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from benchmarks._simrun import main\n"
        "from benchmarks._common import new_profiler, profile_text, write_profile\n"
        "prof = new_profiler()\n"
        "prof.enable()\n"
        f"main([{str(SCENARIO)!r}, '--peers', '{peers}', '--duration', '{duration}'])\n"
        "prof.disable()\n"
        f"text, _ = profile_text(prof, 'simulator: scale-1000 at {peers} peers, "
        f"{duration:.0f} simulated s')\n"
        f"print(write_profile(Path({str(profile_dir)!r}), 'simulator.txt', text))\n"
    )
    res = _child([sys.executable, "-c", code], 900)
    if res.get("timeout") or res.get("returncode") != 0:
        return None
    return res["stdout"].strip().splitlines()[-1]
