"""Run one simulator scenario, optionally rescaled, and print its summary as JSON.

``python -m benchmarks._simrun SCENARIO [--peers N] [--duration SECONDS] [--shards K]
[--report-out PATH]``: the
peer groups are scaled in proportion to reach N peers (each group keeps at least one
peer), the simulated duration is replaced if given, and ``--shards K`` runs it as K
independent sub-markets in K processes (as the CLI's ``--shards``); the run uses the
simulator's library interface (`p2pay.sim.parse_scenario` + `run_scenario`, no plots, no
files; ``--report-out`` writes the report without its ``wall`` part, which is a function of
the scenario and its seed, so two builds' files can be compared byte for byte). The
benchmark runs this
in a child process to read its wall time, CPU time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any


def scaled(data: dict[str, Any], peers: int | None, duration: float | None) -> dict[str, Any]:
    data = dict(data)
    if peers is not None:
        groups = [dict(g) for g in data.get("peers", [])]
        total = sum(int(g.get("count", 1)) for g in groups)
        for g in groups:
            g["count"] = max(1, round(int(g.get("count", 1)) * peers / total))
        data["peers"] = groups
        data["name"] = f"{data.get('name', 'scenario')}-{peers}"
    if duration is not None:
        data["duration"] = duration
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._simrun")
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--peers", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument(
        "--report-out",
        type=Path,
        default=None,
        help="also write the whole report but its `wall` part (sorted JSON), to diff runs",
    )
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    from p2pay.sim import parse_scenario, run_scenario

    data = scaled(
        tomllib.loads(args.scenario.read_text(encoding="utf-8")), args.peers, args.duration
    )
    spec = parse_scenario(data, source=str(args.scenario))
    if args.shards is not None:
        spec = spec.with_overrides(shards=args.shards)
    t0 = time.perf_counter()
    report = run_scenario(spec, plots=False)
    wall = time.perf_counter() - t0
    if args.report_out is not None:
        kept = {k: v for k, v in report.items() if k != "wall"}
        args.report_out.write_text(json.dumps(kept, sort_keys=True, indent=1, default=str))
    out = {
        "peers": spec.peer_count,
        "duration_s": spec.duration_s,
        "shards": spec.shards,
        "wall_s": wall,
        "requests": report.get("requests", {}),
        "invariants_ok": report.get("invariants_ok"),
        "report_wall": report.get("wall", {}),
    }
    json.dump(out, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
