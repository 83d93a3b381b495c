"""Same seed, same report; the command line; the libp2p transport."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p2pay.sim import load_scenario, run_scenario
from p2pay.sim.cli import simulate

ROOT = Path(__file__).resolve().parents[2]

#: A small scenario that exercises every kind of behaviour at once.
MIXED = """
name = "mixed"
seed = 11
duration = "2m"
sample_every = "10s"
check_every = "30s"

[ledger]
claim_bond = "1 milli"

[node]
watch_interval = "2s"
challenge = "1m"
redeem_threshold = "10 micro"

[network]
latency = "10ms"
jitter = "20ms"

[[services]]
name = "echo"
price = "1 micro"
work = "5ms"

[[peers]]
group = "honest-providers"
role = "provider"
count = 2
stake = "1 token"
penalty = "10 milli"
claim_window = "1m"

[[peers]]
group = "dropper"
role = "provider"
stake = "1 token"
penalty = "10 milli"
claim_window = "1m"
behaviour = { kind = "dropper", rate = 0.3 }

[[peers]]
group = "slow"
role = "provider"
stake = "1 token"
penalty = "10 milli"
claim_window = "1m"
behaviour = { kind = "slow", rate = 0.3, delay = "3s" }

[[peers]]
group = "crasher"
role = "provider"
stake = "1 token"
penalty = "10 milli"
claim_window = "1m"
behaviour = { kind = "crasher", every = "40s", for = "10s" }

[[peers]]
group = "clients"
role = "client"
count = 6
deposit = "20 micro"
channels = 3
rate = 0.5
timeout = "2s"

[[peers]]
group = "roaming"
role = "client"
count = 2
channels = 2
rate = 0.5
timeout = "2s"
behaviour = { kind = "offline", every = "30s", for = "10s" }

[[peers]]
group = "forger"
role = "client"
channels = 2
rate = 0.2
behaviour = { kind = "forger", every = "5s" }

[[peers]]
group = "replayer"
role = "client"
channels = 2
rate = 0.2
behaviour = { kind = "replayer", every = "5s" }

[[peers]]
group = "overspender"
role = "client"
rate = 0.2
behaviour = { kind = "overspender", deposit = "20 micro", every = "3s" }

[[peers]]
group = "false-claimer"
role = "client"
channels = 2
rate = 0.5
timeout = "2s"
behaviour = { kind = "false_claimer", every = "10s" }

[[peers]]
group = "closer"
role = "client"
channels = 1
targets = ["crasher"]
rate = 0.5
timeout = "2s"
behaviour = { kind = "stale_closer" }
"""


def without_wall(report: dict[str, Any]) -> dict[str, Any]:
    report = dict(report)
    del report["wall"]
    return report


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.toml"
    path.write_text(MIXED, encoding="utf-8")
    return path


def test_mixed_scenario_holds_its_invariants(mixed: Path) -> None:
    report = run_scenario(load_scenario(mixed))
    assert report["invariants_ok"], [r for r in report["invariants"] if not r["ok"]]
    assert report["errors"] == {}
    kinds = {p["behaviour"] for p in report["peers"]}
    assert kinds == {
        "honest", "dropper", "slow", "crasher", "offline", "forger", "replayer",
        "overspender", "false_claimer", "stale_closer",
    }  # fmt: skip
    assert report["money"]["top_ups"] > 0  # 20 micro deposits run out


def test_same_seed_same_report_in_one_process(mixed: Path) -> None:
    scenario = load_scenario(mixed)
    first = without_wall(run_scenario(scenario))
    second = without_wall(run_scenario(scenario))
    assert first == second
    third = without_wall(run_scenario(scenario.with_overrides(seed=12)))
    assert third["requests"] != first["requests"]


def test_same_seed_same_report_across_processes(mixed: Path, tmp_path: Path) -> None:
    """Two processes with different hash seeds write identical report.json (but wall)."""
    reports = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"out-{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [sys.executable, "-m", "p2pay.sim", str(mixed), "--out", str(out), "-q", "--no-plots"],
            check=True,
            env=env,
            timeout=120,
            cwd=tmp_path,
        )
        reports.append(without_wall(json.loads((out / "report.json").read_text())))
    assert reports[0] == reports[1]


def test_cli_writes_report_and_plots(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(simulate, [str(mixed), "--out", str(out), "--seed", "5"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["seed"] == 5
    assert report["plots"] == ["activity.png", "holdings.png", "claims.png"]
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "invariants" in result.output and "conservation" in result.output


def test_cli_refuses_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MIXED.replace('duration = "2m"', 'duraton = "2m"'), encoding="utf-8")
    result = CliRunner().invoke(simulate, [str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "duraton" in result.output


def test_cli_exit_status_is_1_when_an_invariant_breaks(mixed: Path, tmp_path: Path) -> None:
    # the closer's payee stays down past the challenge period: the close succeeds
    text = MIXED.replace(
        'behaviour = { kind = "crasher", every = "40s", for = "10s" }',
        'behaviour = { kind = "offline", mode = "down", periods = [["30s", "110s"]] }',
    ).replace('redeem_threshold = "10 micro"', 'redeem_threshold = "1 token"')
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(simulate, [str(path), "--out", str(out), "-q", "--no-plots"])
    assert result.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    broken = {r["name"] for r in report["invariants"] if not r["ok"]}
    assert broken == {"honest_providers_paid_in_full", "adversaries_gain_nothing"}
    # -q: the report's path on stdout, what broke on stderr
    assert result.stdout == f"{out / 'report.json'}\n"
    assert result.stderr == (
        "invariants violated: honest_providers_paid_in_full, adversaries_gain_nothing\n"
    )


LIBP2P = """
name = "libp2p-20"
seed = 3
duration = "60s"
drain = "20s"
sample_every = "5s"
check_every = "10s"

[libp2p]
time_scale = 0.5             # 80 simulated s in about 40 wall s: a 4 s timeout is 2 s of wall
                             # time (1 s timed out by the hundred beside CPU hogs in CI)

[node]
watch_interval = "2s"
challenge = "10s"
redeem_threshold = "50 micro"

[[services]]
name = "echo"
price = "1 micro"

[[peers]]
group = "providers"
role = "provider"
count = 3
stake = "1 token"
penalty = "10 milli"
claim_window = "8s"

[[peers]]
group = "dropper"
role = "provider"
stake = "1 token"
penalty = "10 milli"
claim_window = "8s"
behaviour = { kind = "dropper", rate = 0.2 }

[[peers]]
group = "clients"
role = "client"
count = 15
deposit = "5 milli"
channels = 2
rate = 0.3
timeout = "4s"

[[peers]]
group = "forger"
role = "client"
channels = 2
rate = 0.1
behaviour = { kind = "forger", every = "10s" }
"""


@pytest.mark.slow
def test_twenty_peers_on_libp2p(tmp_path: Path) -> None:
    path = tmp_path / "libp2p.toml"
    path.write_text(LIBP2P, encoding="utf-8")
    scenario = load_scenario(path).with_overrides(transport="libp2p")
    assert scenario.peer_count == 20
    report = run_scenario(scenario)
    assert report["scenario"]["transport"] == "libp2p"
    assert report["invariants_ok"], [r for r in report["invariants"] if not r["ok"]]
    assert report["requests"]["ok"] > 100
    assert stats_of(report, "dropper")["dropped"] > 0
    assert report["claims"]["upheld"] > 0
    assert stats_of(report, "forger").get("served_illegitimately", 0) == 0


def stats_of(report: dict[str, Any], group: str) -> dict[str, int]:
    return next(g for g in report["groups"] if g["group"] == group)["behaviour_stats"]
