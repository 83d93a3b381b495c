"""Every skip states its reason (issue 16), also a skip raised inside pytest-trio's run (an
async fixture finding a tool missing), which pytest-trio re-raised without its reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import pytest


@pytest.fixture
async def tool() -> None:
    pytest.skip("the tool is not installed: install it")


async def test_uses_the_tool(tool: None) -> None:
    raise AssertionError("never runs")
"""


def run_inner(tmp_path: Path, *plugins: str) -> str:
    """Run INNER in its own pytest with `plugins`; the short summary it printed."""
    (tmp_path / "test_inner.py").write_text(INNER, encoding="utf-8")
    args = ["-rs", "-p", "no:cacheprovider", "-o", "trio_mode=true"]
    args += [arg for plugin in plugins for arg in ("-p", plugin)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def test_a_skip_inside_trio_shows_its_reason(tmp_path: Path) -> None:
    # (without `-p tests.conftest` the report says only "Skipped": pytest-trio 0.8)
    shown = run_inner(tmp_path, "tests.conftest")
    assert "test_inner.py:10: the tool is not installed: install it" in shown, shown
