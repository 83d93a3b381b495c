"""Sharded runs (``shards = N``): independent sub-markets in parallel processes, one report."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p2pay.sim import parse_scenario, run_scenario
from p2pay.sim.cli import simulate
from p2pay.sim.report import merge_reports
from p2pay.sim.scenario import ScenarioError, load_scenario

SHARDED = """
name = "sharded"
seed = 21
duration = "1m"
sample_every = "10s"
check_every = "20s"
shards = 2

[ledger]
claim_bond = "1 milli"

[node]
watch_interval = "2s"
challenge = "30s"
redeem_threshold = "10 micro"

[network]
latency = "10ms"
jitter = "20ms"

[[services]]
name = "echo"
price = "1 micro"
work = "5ms"

[[peers]]
group = "providers"
role = "provider"
count = 3
stake = "1 token"
penalty = "10 milli"
claim_window = "30s"

[[peers]]
group = "dropper"
role = "provider"
count = 2
stake = "1 token"
penalty = "10 milli"
claim_window = "30s"
behaviour = { kind = "dropper", rate = 0.3 }

[[peers]]
group = "clients"
role = "client"
count = 5
channels = 2
rate = 0.5
timeout = "2s"

[[peers]]
group = "forger"
role = "client"
count = 2
channels = 1
rate = 0.2
behaviour = { kind = "forger", every = "5s" }
"""


def without_wall(report: dict[str, Any]) -> dict[str, Any]:
    report = dict(report)
    del report["wall"]
    return report


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    path = tmp_path / "sharded.toml"
    path.write_text(SHARDED, encoding="utf-8")
    return path


def test_sharded_run_is_deterministic_and_covers_every_peer(sharded: Path) -> None:
    scenario = load_scenario(sharded)
    assert scenario.shards == 2
    first = run_scenario(scenario)
    assert first["invariants_ok"], [r for r in first["invariants"] if not r["ok"]]
    assert first["errors"] == {}
    assert first["scenario"]["shards"] == 2
    assert len(first["wall"]["shard_seconds"]) == 2
    assert without_wall(run_scenario(scenario)) == without_wall(first)

    single = run_scenario(scenario.with_overrides(shards=1))
    assert single["scenario"]["shards"] == 1 and "shard_seconds" not in single["wall"]
    # The same peers (names, keys, order), each in exactly one shard.
    assert [(p["name"], p["account"]) for p in first["peers"]] == [
        (p["name"], p["account"]) for p in single["peers"]
    ]
    assert [g["count"] for g in first["groups"]] == [3, 2, 5, 2]
    assert (first["scenario"]["providers"], first["scenario"]["clients"]) == (5, 7)
    # Every client draws the same arrivals as in the unsharded run.
    assert first["requests"]["arrivals"] == single["requests"]["arrivals"]
    assert first["requests"]["ok"] > 0
    # Totals add up over the whole market.
    totals = first["ledger"]["totals"]
    held = sum(totals[k] for k in ("balances", "escrow", "stakes", "bonds", "burnt"))
    assert totals["supply"] == single["ledger"]["totals"]["supply"] == held
    assert totals["conserved"] is True
    assert sum(p["holdings_end"] for p in first["peers"]) + totals["burnt"] == totals["supply"]
    # Periodic checks ran in both shards, plus the whole-market conservation check.
    checks = {r["name"]: r["checks"] for r in first["invariants"]}
    assert checks["conservation"] == 2 * single_checks(single, "conservation") + 1
    t = first["series"]["t"]
    assert len(t) == len(single["series"]["t"])
    assert first["series"]["requests"]["ok"][-1] == first["requests"]["ok"]


def single_checks(report: dict[str, Any], name: str) -> int:
    return next(r["checks"] for r in report["invariants"] if r["name"] == name)


def test_merge_catches_money_created_across_the_market(sharded: Path) -> None:
    """A shard whose own totals hold but disagree with the market is still caught."""
    scenario = load_scenario(sharded).with_overrides(shards=1)
    report = run_scenario(scenario)
    other = copy.deepcopy(report)
    other["ledger"]["totals"]["supply"] += 1  # one yocto minted that nobody holds
    merged = merge_reports([report, other], wall_s=1.0)
    conservation = next(r for r in merged["invariants"] if r["name"] == "conservation")
    assert not conservation["ok"] and conservation["violations"] == 1
    assert conservation["details"][0]["market"] is True
    assert merged["ledger"]["totals"]["conserved"] is False
    assert merged["invariants_ok"] is False
    # Counts add up, violations and their details keep their shard.
    other["invariants"][-1]["violations"] = 2
    other["invariants"][-1]["details"] = [{"errors": {"x": 2}}]
    merged = merge_reports([report, other], wall_s=1.0)
    crashes = merged["invariants"][-1]
    assert crashes["violations"] == 2 and crashes["details"] == [{"errors": {"x": 2}, "shard": 1}]
    assert merged["requests"]["ok"] == 2 * report["requests"]["ok"]
    assert merged["money"]["paid"] == 2 * report["money"]["paid"]


def test_merge_refuses_reports_of_different_shapes(sharded: Path) -> None:
    report = run_scenario(load_scenario(sharded).with_overrides(shards=1))
    other = copy.deepcopy(report)
    other["series"]["requests"]["ok"].append(0)
    with pytest.raises(ValueError):
        merge_reports([report, other], wall_s=1.0)
    other = copy.deepcopy(report)
    other["groups"][0]["behaviour"] = "dropper"
    with pytest.raises(ValueError):
        merge_reports([report, other], wall_s=1.0)
    with pytest.raises(ValueError):
        merge_reports([], wall_s=1.0)


def test_shards_need_a_peer_of_every_group_in_every_shard(sharded: Path) -> None:
    import tomllib

    data = tomllib.loads(SHARDED)
    with pytest.raises(ScenarioError, match="shards = 3"):
        parse_scenario({**data, "shards": 3})  # the dropper group has 2 peers
    with pytest.raises(ScenarioError, match="shards"):
        parse_scenario({**data, "shards": 0})
    with pytest.raises(ScenarioError, match="shards"):
        load_scenario(sharded).with_overrides(shards=3)
    assert parse_scenario({k: v for k, v in data.items() if k != "shards"}).shards == 1


def test_cli_shards_option(sharded: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(simulate, [str(sharded), "--out", str(out), "--no-plots", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["scenario"]["shards"] == 2
    result = CliRunner().invoke(
        simulate, [str(sharded), "--out", str(out), "--no-plots", "-q", "--shards", "1"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["scenario"]["shards"] == 1
    result = CliRunner().invoke(simulate, [str(sharded), "--shards", "3", "-q"])
    assert result.exit_code == 2 and "shards = 3" in result.output
