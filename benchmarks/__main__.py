"""``python -m benchmarks [--quick] [--only NAME] [--json FILE]``: run and print the table.

Each benchmark runs in its own child process (``python -m benchmarks._worker``) so that
one's memory, threads and libp2p hosts never colour another's figures; ``--inline`` runs
them in this process instead (the smoke test does, to stay fast). A benchmark that
fails prints NOT MEASURED with its error, never a number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import BENCHMARKS
from benchmarks._common import (
    NOT_MEASURED,
    PROFILE_DIR,
    Result,
    code_version,
    fmt,
    machine,
    not_measured,
)

ROOT = Path(__file__).resolve().parent.parent


def run_inline(name: str, size: str, profile_dir: Path | None) -> list[Result]:
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    try:
        return list(module.run(size, profile_dir))
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return [_failed(name, f"benchmark raised {detail[-500:]}")]


ERROR_PREFIX = "not measured: benchmark error: "


def _failed(name: str, why: str) -> Result:
    return not_measured(name, name, ">=", 0.0, "-", f"benchmark error: {why}")


def run_child(name: str, size: str, profile_dir: Path | None, timeout: float) -> list[Result]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="p2pay-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks._worker", name, size, str(out)]
        if profile_dir is not None:
            cmd.append(str(profile_dir))
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return [_failed(name, f"did not finish within {timeout:.0f} s")]
        if not out.exists():
            return [_failed(name, f"worker exited {proc.returncode}: {proc.stderr[-500:]}")]
        return [Result.from_dict(d) for d in json.loads(out.read_text())]


def _summary(r: Result) -> str:
    """The first few absolute figures of a result, for the table."""
    parts = []
    for key, value in r.figures.items():
        if key.startswith(("profile", "loadavg", "ratio_per")) or isinstance(value, list | dict):
            continue
        parts.append(f"{key}={fmt(value)}")
        if len(parts) == 3:
            break
    return "; ".join(parts)


def table(results: list[Result]) -> str:
    head = f"{'benchmark':<20} {'ratio':>9}  {'target':<10} {'verdict':<12} absolute figures"
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = "n/a" if r.ratio is None else fmt(r.ratio)
        lines.append(f"{r.name:<20} {ratio:>9}  {r.target_text:<10} {r.status:<12} {_summary(r)}")
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    lines = []
    for r in results:
        lines.append(f"\n[{r.name}] {r.title}")
        lines.append(f"  ratio: {r.ratio_desc}")
        for note in r.notes:
            lines.append(f"  - {note}")
        for key, value in r.figures.items():
            if key.startswith("loadavg"):
                continue
            lines.append(f"    {key}: {fmt(value) if not isinstance(value, dict) else value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="p2pay benchmarks (issue 9): ratios measured inside one run.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes for the smoke test (figures meaningless)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help=f"where profiles go (default {PROFILE_DIR.relative_to(ROOT)}; none with --smoke)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile passes")
    parser.add_argument(
        "--inline", action="store_true", help="run in this process, not one child per benchmark"
    )
    parser.add_argument(
        "--timeout", type=float, default=7200.0, help="seconds per benchmark (child mode)"
    )
    args = parser.parse_args(argv)
    sz = "smoke" if args.smoke else "quick" if args.quick else "full"
    profile_dir: Path | None = args.profile_dir
    if profile_dir is None and not args.smoke:
        profile_dir = PROFILE_DIR
    if args.no_profile:
        profile_dir = None
    names = args.only or list(BENCHMARKS)
    info = machine()
    started = time.perf_counter()
    print(
        f"p2pay benchmarks, size {sz}, {info['date']}: {info['nproc']} x {info['cpu']}, "
        f"Python {info['python']}, load average {' '.join(map(str, info['loadavg']))}, "
        f"p2pay code {info['p2pay_code']}",
        flush=True,
    )
    results: list[Result] = []
    timings: dict[str, float] = {}
    versions: dict[str, list[str]] = {}
    for name in names:
        t0 = time.perf_counter()
        before = code_version()
        print(f"... {name}", file=sys.stderr, flush=True)
        got = (
            run_inline(name, sz, profile_dir)
            if args.inline
            else run_child(name, sz, profile_dir, args.timeout)
        )
        timings[name] = round(time.perf_counter() - t0, 1)
        after = code_version()
        versions[name] = [before, after]
        if after != before:
            for r in got:
                r.notes.append(
                    f"warning: p2pay's code changed on disk during this benchmark "
                    f"({before} -> {after}); the figures may mix two versions"
                )
        results.extend(got)
    elapsed = time.perf_counter() - started
    print()
    print(table(results))
    print(details(results))
    end_load = machine()["loadavg"]
    print(
        f"\ntook {elapsed:.0f} s ({', '.join(f'{k} {v} s' for k, v in timings.items())}); "
        f"load average at the end {' '.join(map(str, end_load))}"
    )
    if args.json is not None:
        payload: dict[str, Any] = {
            "size": sz,
            "machine": info,
            "loadavg_end": end_load,
            "elapsed_s": round(elapsed, 1),
            "seconds_per_benchmark": timings,
            "p2pay_code_per_benchmark": versions,
            "results": [r.to_dict() for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    # FAIL is a finding, not an error; a benchmark that crashed is one (exit 1).
    return 1 if any(errored(r) for r in results) else 0


def errored(r: Result) -> bool:
    """True if the benchmark itself broke (as opposed to measuring a FAIL, or a figure
    that cannot be taken here, such as a simulator that is not ready)."""
    return r.status == NOT_MEASURED and any(n.startswith(ERROR_PREFIX) for n in r.notes)


if __name__ == "__main__":
    raise SystemExit(main())
