"""The cheaters of specs/claims.md, one scenario each (simulations/scenarios/, issue 13).

Each test runs a scenario file as shipped (a few peers, two or three simulated minutes
on the memory transport under trio's MockClock: well under a second of CPU each) and
asserts its invariants: the cheater gains nothing (``adversaries_gain_nothing``, the
formula of simulations/README.md "Invariants"), honest providers are never slashed nor
clawed, honest clients get an answer or a refund for every paid request, the ledger
conserves money, nothing crashed. Then it checks that the cheat was really tried (a
scenario whose cheater never got to cheat proves nothing) and how the claim game ended
for it.

On the rules before specs/claims.md every one of these scenarios violates an invariant
(simulations/README.md "Cheaters" says which): they are the regression tests of
claims.md C-1 .. C-9 at the level of a market.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pay.sim import load_scenario, run_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"

CHEATER_SCENARIOS = (
    "bond-harvester",
    "fake-replay",
    "late-answer",
    "claim-flood",
    "unbonding-claim",
    "fast-close",
)


def run(name: str) -> dict[str, Any]:
    return run_scenario(load_scenario(SCENARIOS / f"{name}.toml"), out_dir=None)


def group(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in report["groups"] if g["group"] == name)


def invariants(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in report["invariants"]}


def assert_all_hold(report: dict[str, Any]) -> None:
    broken = [r for r in report["invariants"] if not r["ok"]]
    assert not broken, broken
    assert report["errors"] == {}
    checked = invariants(report)
    for name in (
        "conservation",
        "honest_providers_never_slashed",
        "honest_providers_never_clawed",
        "honest_clients_pay_only_for_answers",
        "adversaries_gain_nothing",
    ):
        assert checked[name]["checks"] > 0 and not checked[name].get("skipped"), name
    assert report["ledger"]["totals"]["conserved"]


def assert_cheater_gains_nothing(name: str, rep: dict[str, Any]) -> None:
    """The invariants, then: every adversary's gain <= 0, no clawback from an honest
    provider (the only clawbacks allowed are from the bond harvesters)."""
    assert_all_hold(rep)
    adversaries = [p for p in rep["peers"] if p["behaviour"] not in ("honest", "unbonding")]
    assert adversaries, name
    for peer in adversaries:
        assert peer["gain"] <= 0, peer
    if name != "bond-harvester":
        assert rep["money"]["clawed"] == 0


def test_every_cheater_scenario_file_loads() -> None:
    for name in CHEATER_SCENARIOS:
        scenario = load_scenario(SCENARIOS / f"{name}.toml")
        assert scenario.name == name and scenario.peer_count <= 8
        assert scenario.duration_s <= 180


def test_bond_harvester() -> None:
    rep = run("bond-harvester")
    assert_cheater_gains_nothing("bond-harvester", rep)
    withheld = 0
    for name in ("harvester-error", "harvester-overloaded"):
        stats = group(rep, name)["behaviour_stats"]
        assert stats["withheld"] > 0 and stats["claims_answered_refusal"] > 0
        assert stats["redeemed_by_harvester"] > 0  # it did take the money first
        withheld += stats["withheld"]
        assert group(rep, name)["gain"] <= 0
    claims = rep["claims"]
    # every withheld request was claimed and ended REFUSED: price refunded, bond back
    assert claims["refused"] >= withheld and claims["upheld"] == 0 and claims["open"] == 0
    assert rep["money"]["bonds_forfeited"] == 0
    assert rep["money"]["refunded"] > 0
    assert group(rep, "clients")["gain"] == 0


def test_fake_replay() -> None:
    rep = run("fake-replay")
    assert_cheater_gains_nothing("fake-replay", rep)
    stats = group(rep, "fake-replay")["behaviour_stats"]
    assert stats["fake_replays"] > 0 and stats["fake_replayed_charged"] > 0
    # the payer kept every faked request and got its answer through a claim
    assert rep["claims"]["delivered"] > 0 and rep["claims"]["upheld"] == 0
    assert rep["money"]["bonds_forfeited"] == 0
    assert group(rep, "fake-replay")["gain"] <= 0
    assert group(rep, "clients")["gain"] == 0


def test_late_answer() -> None:
    rep = run("late-answer")
    assert_cheater_gains_nothing("late-answer", rep)
    stats = group(rep, "late")["behaviour_stats"]
    assert stats["late"] > 0
    late = group(rep, "late")
    # nothing charged after a deadline (C-4): it charged only what it answered on time
    assert late["gain"] <= 0
    assert rep["requests"]["by_outcome"].get("TIMEOUT", 0) > 0
    assert rep["claims"]["upheld"] == 0 and rep["money"]["bonds_forfeited"] == 0


def test_claim_flood() -> None:
    rep = run("claim-flood")
    assert_cheater_gains_nothing("claim-flood", rep)
    stats = group(rep, "flooder")["behaviour_stats"]
    assert stats["claims_made_up"] >= 30 and stats["bursts"] == 2
    claims = rep["claims"]
    assert claims["filed"] >= stats["claims_made_up"]
    # every claim answered in its window, none upheld (C-1, C-7)
    assert claims["upheld"] == 0 and claims["open"] == 0
    assert claims["answered"] == claims["filed"]
    assert group(rep, "flooder")["gain"] <= 0
    assert group(rep, "clients")["gain"] == 0


def test_unbonding_claim() -> None:
    rep = run("unbonding-claim")
    assert_cheater_gains_nothing("unbonding-claim", rep)
    claimer = group(rep, "claimer")["behaviour_stats"]
    refused = claimer.get("claim_after_unbonding_began_refused:UNBONDING", 0)
    assert refused > 0
    assert claimer.get("claims_after_unbonding_began", 0) == 0  # none got through (C-9)
    leaving = group(rep, "leaving")["behaviour_stats"]
    assert leaving["unstake_requested"] == 1 and leaving["stake_withdrawn"] == 1
    assert rep["claims"]["upheld"] == 0
    assert group(rep, "claimer")["gain"] <= 0


def test_fast_close() -> None:
    rep = run("fast-close")
    assert_cheater_gains_nothing("fast-close", rep)
    closer = group(rep, "fast-closer")
    assert closer["behaviour_stats"]["closes_started"] > 0
    # the payees refused the short channels (C-8): the closer got nothing for free
    assert closer["gain"] <= 0
    assert closer["requests"].get("OK", 0) == 0
    assert group(rep, "providers")["gain"] >= 0
