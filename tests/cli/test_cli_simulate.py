"""`p2pay simulate` as a user runs it (a real process): what it prints, with and without
``-q`` and ``-v``, on a small scenario with cheaters whose providers get slashed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds for one run (about 2 s of CPU)

#: tests/sim/small-cheaters.toml (shared with tests/sim/test_output.py).
SCENARIO = (REPO / "tests" / "sim" / "small-cheaters.toml").read_text(encoding="utf-8")

SLASHED = "p2pay.watcher: slashed for claim \u2026"


def simulate(
    tmp_path: Path, *args: str, group_args: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``python -m p2pay GROUP_ARGS simulate SCENARIO --out OUT ARGS``; returns it
    and OUT."""
    scenario = tmp_path / "small.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("P2PAY_HOME", "P2PAY_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["P2PAY_HOME"] = str(tmp_path / "home")
    command = [sys.executable, "-m", "p2pay", *group_args, "simulate", str(scenario)]
    command += ["--out", str(out), *args]
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return proc, out


def report_of(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return report


def test_quiet_prints_only_the_report_path(tmp_path: Path) -> None:
    proc, out = simulate(tmp_path, "-q", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out / 'report.json'}\n"
    assert proc.stderr == ""
    assert Path(proc.stdout.strip()).is_file()
    report = report_of(out)
    # the warnings were there, counted in the report, not printed
    assert report["claims"]["upheld"] > 0
    assert report["log"] == {"warnings": {SLASHED: report["claims"]["upheld"]}, "errors": {}}


def test_summary_counts_warnings_in_one_line_per_kind(tmp_path: Path) -> None:
    proc, out = simulate(tmp_path, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    report = report_of(out)
    upheld = report["claims"]["upheld"]
    assert upheld > 0
    lines = proc.stdout.splitlines()
    expected = f"{upheld} warnings from {SLASHED}  (-v prints each)"
    assert [line for line in lines if "slashed for claim" in line] == [expected]
    assert lines[-1] == f"report: {out / 'report.json'}"
    # no per-event log line anywhere: stderr holds the progress bar only
    assert "slashed for claim" not in proc.stderr
    assert not re.search(r"warning", proc.stderr, re.IGNORECASE), proc.stderr
    assert "small-cheaters" in proc.stderr  # the progress bar


@pytest.mark.parametrize("where", ["simulate -v", "p2pay -v"])
def test_verbose_prints_each_warning_too(tmp_path: Path, where: str) -> None:
    if where == "simulate -v":
        proc, out = simulate(tmp_path, "-q", "--no-plots", "-v")
    else:  # the group's option: `p2pay -v simulate ...`
        proc, out = simulate(tmp_path, "-q", "--no-plots", group_args=("-v",))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out / 'report.json'}\n"
    report = report_of(out)
    each = [line for line in proc.stderr.splitlines() if "slashed for claim" in line]
    assert len(each) == report["claims"]["upheld"] > 0
    assert report["log"]["warnings"] == {SLASHED: len(each)}
