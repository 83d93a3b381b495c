"""CPU seconds of one simulator run from two source trees, alternated in pairs.

``python -m benchmarks.ab_trees A_ROOT B_ROOT [--pairs N] [--peers N] [--duration S]
[--scenario PATH] [--json OUT] [--report-dir DIR]``: runs ``python -m benchmarks._simrun``
with its working directory and ``PYTHONPATH`` set to each root in turn (A, B, A, B, ...; the
second of each pair goes first in every other pair), reads the report's ``cpu_seconds`` and
the 1-minute load before each run, and prints one line per run and the B/A ratio of each
pair; ``--report-dir`` keeps each run's report but its ``wall`` part, to compare the two
trees' byte for byte. Each root must hold ``p2pay/`` and ``benchmarks/`` (e.g. a copy of the
tree with compiled modules in it, see ``benchmarks/mypyc_build.py``). On shared vCPUs one
run's CPU time moves by several per cent (RESULTS.md 12.2), so compare medians of pairs,
not single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_once(
    root: Path,
    scenario: str,
    peers: int | None,
    duration: float | None,
    report_out: Path | None = None,
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks._simrun", scenario]
    if report_out is not None:
        cmd += ["--report-out", str(report_out)]
    if peers is not None:
        cmd += ["--peers", str(peers)]
    if duration is not None:
        cmd += ["--duration", str(duration)]
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONHASHSEED="0")
    load = os.getloadavg()[0]
    started = time.strftime("%H:%M:%S", time.gmtime())
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "root": str(root),
        "utc": started,
        "load1": round(load, 2),
        "cpu_seconds": out["report_wall"]["cpu_seconds"],
        "ok": out["requests"].get("ok"),
        "invariants_ok": out["invariants_ok"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_trees")
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--scenario", default="simulations/scenarios/scale-1000.toml")
    parser.add_argument("--peers", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="keep each run's report (all but `wall`) there, as a-1.json, b-1.json, ...",
    )
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    ratios: list[float] = []
    for i in range(args.pairs):
        order = [args.a, args.b] if i % 2 == 0 else [args.b, args.a]
        pair: dict[Path, dict[str, Any]] = {}
        for root in order:
            report_out = None
            if args.report_dir is not None:
                args.report_dir.mkdir(parents=True, exist_ok=True)
                side = "a" if root == args.a else "b"
                report_out = (args.report_dir / f"{side}-{i + 1}.json").resolve()
            r = run_once(root, args.scenario, args.peers, args.duration, report_out)
            pair[root] = r
            runs.append(r)
            print(json.dumps(r), flush=True)
        ratio = pair[args.b]["cpu_seconds"] / pair[args.a]["cpu_seconds"]
        ratios.append(ratio)
        print(f"pair {i + 1}: B/A = {ratio:.3f}", flush=True)
    print(f"median B/A = {statistics.median(ratios):.3f} over {len(ratios)} pairs")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
