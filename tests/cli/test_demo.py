"""`p2pay demo`: runs, passes its own checks, and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 120  # seconds; the demo itself aims for well under a minute


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("P2PAY_HOME", "P2PAY_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a pid reused by another user's process
        return True
    # a zombie is not running: it is only waiting to be reaped
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _children(pid: int) -> set[int]:
    """Direct children of `pid` (Linux /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_demo_runs_checks_and_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "p2pay", "demo", "--json"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # stdout holds exactly one JSON document
    assert doc["ok"] is True
    assert all(doc["checks"].values()), doc["checks"]
    # conservation, read from the numbers themselves (decimal strings of yocto)
    for when in ("before", "after"):
        totals = doc[when]["totals"]
        held = sum(int(totals[k]) for k in ("balances", "escrow", "stakes", "bonds", "burnt"))
        assert held == int(totals["supply"])
        accounts = doc[when]["accounts"]
        assert {a["name"] for a in accounts} == {"honest", "dropper", "client"}
        assert sum(
            int(a["balance"]) + int(a["staked"]) + int(a["escrow"]) + int(a["bonds"])
            for a in accounts
        ) + int(totals["burnt"]) == int(totals["supply"])
    assert doc["before"]["totals"]["supply"] == doc["after"]["totals"]["supply"]
    # "before" is taken once the providers have staked (the set-up the calls start from)
    staked_before = {a["name"]: int(a["staked"]) for a in doc["before"]["accounts"]}
    assert staked_before["honest"] > 0 and staked_before["dropper"] > 0
    assert staked_before["client"] == 0
    assert int(doc["before"]["totals"]["stakes"]) == staked_before["honest"] * 2
    # the dropping provider was slashed, the honest one was not
    upheld = [c for c in doc["claims"] if c["state"] == "upheld"]
    assert upheld and all(c["respondent"] == "dropper" for c in upheld)
    after = {a["name"]: a for a in doc["after"]["accounts"]}
    before = {a["name"]: a for a in doc["before"]["accounts"]}
    assert int(after["dropper"]["staked"]) < int(after["honest"]["staked"])
    assert int(after["honest"]["balance"]) + int(after["honest"]["staked"]) > int(
        before["honest"]["balance"]
    )
    assert int(doc["after"]["totals"]["burnt"]) > 0
    assert doc["calls"]["ok"] > 0 and doc["calls"]["timeouts"] > 0
    # every process it started has exited and was reaped
    assert len(doc["processes"]) == 3
    for child in doc["processes"]:
        assert child["returncode"] == 0, child
        assert not _alive(child["pid"]), child
    assert doc["kept"] is False and not Path(doc["folder"]).exists()


@pytest.mark.slow
def test_demo_tells_a_person_the_price_and_what_the_client_paid(tmp_path: Path) -> None:
    """Without --json the demo says what a call costs and what the client paid in all, in
    tokens and exact yocto, beside the tables and checks."""
    proc = subprocess.run(
        [sys.executable, "-m", "p2pay", "demo", "--calls", "2"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "services echo and upper at 0.001 token (1000000000000000000000 yocto) a call" in out
    assert (
        "client: 2 calls answered, paid 0.002 token (2000000000000000000000 yocto); "
        "2 unanswered, 2 claims filed"
    ) in out
    assert "ok   honest provider paid for what it served" in out
    assert out.rstrip().splitlines()[-1].startswith("demo passed in ")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_demo_stopped_by_sigterm_leaves_no_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pay", "demo"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        children: set[int] = set()
        deadline = time.monotonic() + 60
        while len(children) < 2 and time.monotonic() < deadline and proc.poll() is None:
            children |= _children(proc.pid)
            time.sleep(0.05)
        assert len(children) >= 2, "the demo started no provider processes"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("p2pay: error: demo interrupted")
    for pid in children:
        assert not _alive(pid), f"process {pid} left behind"
