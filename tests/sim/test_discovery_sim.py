"""Discovery in the simulator (issue 17): clients that find providers by service name and
pay through `Node.call_any`, fake offers, failing providers; the scenario keys, the
report's ``discovery`` section and the plots."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from p2pay.sim import ScenarioError, load_scenario, parse_scenario, run_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"

#: 30 peers: 3 honest providers, 2 flaky, 1 crashing, one fake provider of each kind,
#: 21 clients that know no provider.
SMALL = """
name = "discovery-small"
seed = 5
duration = "4m"
drain = "2m"
sample_every = "10s"
check_every = "1m"

[ledger]
claim_bond = "1 milli"

[node]
watch_interval = "5s"
challenge = "2m"

[network]
latency = "10ms"
jitter = "10ms"

[discovery]
announce_interval = "30s"
deposit_calls = 50
max_deposit = "1 milli"

[[services]]
name = "echo"
price = "1 micro"
work = "2ms"

[[peers]]
group = "honest"
role = "provider"
count = 3
stake = "1 token"
penalty = "10 milli"
claim_window = "2m"

[[peers]]
group = "flaky"
role = "provider"
count = 2
stake = "1 token"
penalty = "10 milli"
claim_window = "2m"
behaviour = { kind = "offline", mode = "network", periods = [["1m", "2m"]] }

[[peers]]
group = "crashing"
role = "provider"
count = 1
stake = "1 token"
penalty = "10 milli"
claim_window = "2m"
behaviour = { kind = "offline", mode = "crash", periods = [["2m", "3m"]] }

[[peers]]
group = "fake-no-stake"
role = "provider"
behaviour = { kind = "fake_offers", lie = "no_stake" }

[[peers]]
group = "fake-unbacked"
role = "provider"
behaviour = { kind = "fake_offers", lie = "unbacked_stake", stake = "1 token" }

[[peers]]
group = "fake-underpriced"
role = "provider"
stake = "1 token"
penalty = "10 milli"
claim_window = "2m"
behaviour = { kind = "fake_offers", lie = "underpriced" }

[[peers]]
group = "clients"
role = "client"
count = 21
balance = "1 token"
discovery = true
rate = 0.2
mix = { echo = 1.0 }
timeout = "5s"
max_price = "2 micro"
"""


def small() -> dict[str, Any]:
    return tomllib.loads(SMALL)


def clients(data: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in data["peers"] if g["group"] == "clients")


# ---------------------------------------------------------------------------
# scenario keys


def test_the_scenario_keys_are_read() -> None:
    scenario = parse_scenario(small())
    assert scenario.uses_discovery and scenario.peer_count == 30
    assert scenario.discovery.announce_interval_s == 30.0
    assert scenario.discovery.deposit_calls == 50
    assert scenario.discovery.max_deposit == 10**21
    spec = next(g.client for g in scenario.groups if g.client is not None)
    assert spec.discovery and spec.min_stake == 0 and spec.max_attempts == 3
    fakes = {g.group: g.behaviour_params for g in scenario.groups if g.behaviour == "fake_offers"}
    assert fakes == {
        "fake-no-stake": {"lie": "no_stake"},
        "fake-unbacked": {"lie": "unbacked_stake", "stake": "1 token"},
        "fake-underpriced": {"lie": "underpriced"},
    }


def test_the_defaults_of_discovery() -> None:
    data = small()
    del data["discovery"]
    scenario = parse_scenario(data)
    assert scenario.discovery.announce_interval_s == 60.0
    assert scenario.discovery.deposit_calls == 1000
    assert scenario.discovery.max_deposit == 10**22  # 0.01 token (decision O6)


def test_a_scenario_without_discovery_is_unchanged() -> None:
    scenario = load_scenario(SCENARIOS / "honest.toml")
    assert not scenario.uses_discovery
    assert all(not g.client.discovery for g in scenario.groups if g.client is not None)
    with open(SCENARIOS / "honest.toml", "rb") as f:
        data = tomllib.load(f)
    data["duration"] = "30s"
    for g in data["peers"]:
        g["count"] = 2
    report = run_scenario(parse_scenario(data), show_log=False)
    assert report["invariants_ok"] and "discovery" not in report
    assert "discovery" not in report["series"]
    checked = {r["name"]: r for r in report["invariants"]}
    for name in ("fake_offers_never_chosen", "failing_providers_lose_their_clients"):
        assert checked[name]["skipped"] == "no discovery client" and checked[name]["checks"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["discovery"].update(annouce_interval="1m"), "unknown key(s) annouce_interval"),
        (lambda d: d["discovery"].update(announce_interval=0), "must be > 0"),
        (lambda d: d["discovery"].update(deposit_calls=0), "discovery.deposit_calls"),
        (lambda d: d["discovery"].update(max_deposit=0), "discovery.max_deposit"),
        (lambda d: clients(d).update(discovery="yes"), "discovery: expected true or false"),
        (lambda d: clients(d).update(channels=2), "channels: no channels are opened at setup"),
        (lambda d: clients(d).update(deposit="1 milli"), "deposit: no channels are opened"),
        (lambda d: clients(d).update(targets=["honest"]), "targets: no channels are opened"),
        (lambda d: clients(d).update(top_up=False), "top_up: no channels are opened"),
        (lambda d: clients(d).update(max_attempts=0), "max_attempts"),
        (lambda d: clients(d).update(max_attemps=2), "unknown key(s) max_attemps"),
        (lambda d: clients(d).update(discovery=False), "min_stake"),
        (lambda d: d.update(shards=3), "discovery runs as one market"),
        (lambda d: d.update(transport="libp2p"), "memory transport only"),
    ],
)
def test_bad_discovery_keys_are_errors(change: Any, message: str) -> None:
    data = small()
    if message == "min_stake":
        clients(data)["min_stake"] = "1 token"
    change(data)
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_scenario(data)


def test_a_discovery_table_without_discovery_clients_is_an_error() -> None:
    data = small()
    clients(data)["discovery"] = False
    with pytest.raises(ScenarioError, match="no client group has discovery = true"):
        parse_scenario(data)


def test_overrides_keep_a_discovery_scenario_on_one_memory_market() -> None:
    scenario = parse_scenario(small())
    with pytest.raises(ScenarioError, match="one market"):
        scenario.with_overrides(shards=2)
    with pytest.raises(ScenarioError, match="memory transport only"):
        scenario.with_overrides(transport="libp2p")
    assert scenario.with_overrides(seed=9, shards=1, transport="memory").seed == 9


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ({"kind": "fake_offers", "lie": "free_lunch"}, "lie must be one of"),
        ({"kind": "fake_offers", "lie": "unbacked_stake", "stake": 0}, "stake must be > 0"),
        ({"kind": "fake_offers", "lie": "underpriced", "price_factor": 1}, "price_factor"),
        ({"kind": "fake_offers", "colour": "red"}, "colour"),
    ],
)
def test_bad_fake_offers_are_errors(behaviour: dict[str, Any], message: str) -> None:
    data = small()
    data["peers"][3]["behaviour"] = behaviour
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data)


def test_a_fake_offer_must_be_a_lie() -> None:
    data = small()
    del data["peers"][5]["stake"]  # fake-underpriced
    with pytest.raises(ScenarioError, match=r"under-priced fake provider .* give it a stake"):
        parse_scenario(data)
    data = small()
    data["peers"][4]["stake"] = "1 token"  # fake-unbacked claims 1 token
    with pytest.raises(ScenarioError, match="claim a stake it holds"):
        parse_scenario(data)


def test_fake_offers_are_for_providers() -> None:
    data = small()
    clients(data)["behaviour"] = {"kind": "fake_offers"}
    with pytest.raises(ScenarioError, match="applies to provider, not client"):
        parse_scenario(data)


def test_the_1000_peer_scenario_loads() -> None:
    scenario = load_scenario(SCENARIOS / "discovery-1000.toml")
    assert scenario.peer_count == 1000 and scenario.uses_discovery
    providers = [g for g in scenario.groups if g.role == "provider"]
    assert sum(g.count for g in providers) == 50
    fake = sum(g.count for g in providers if g.behaviour == "fake_offers")
    failing = sum(g.count for g in providers if g.behaviour in ("offline", "crasher"))
    assert fake == 10 and failing == 10
    (client,) = [g for g in scenario.groups if g.client is not None]
    assert client.count == 950 and client.client is not None and client.client.discovery


# ---------------------------------------------------------------------------
# a run of 30 peers


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_scenario(parse_scenario(small(), source="discovery-small"), show_log=False)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in report["discovery"]["providers"]}


def test_every_invariant_holds(report: dict[str, Any]) -> None:
    broken = [r for r in report["invariants"] if not r["ok"]]
    assert not broken, broken
    assert report["errors"] == {} and report["log"]["errors"] == {}
    checked = {r["name"]: r for r in report["invariants"]}
    for name in ("fake_offers_never_chosen", "failing_providers_lose_their_clients"):
        assert checked[name]["checks"] > 0 and "skipped" not in checked[name], name
    assert report["ledger"]["totals"]["conserved"]  # no yocto created or lost


def test_clients_find_providers_by_name_and_pay(report: dict[str, Any]) -> None:
    disc, rq, mo = report["discovery"], report["requests"], report["money"]
    assert disc["clients"] == 21
    # every request was a call by name, and every one was answered (failing over when a
    # provider was down or lied)
    assert disc["calls"] == rq["sent"] == rq["ok"] == disc["ok"] > 500
    assert disc["outcomes"] == {"OK": disc["calls"]}
    # no channel at setup: every channel was opened by call any, under the deposit policy
    assert report["ledger"]["setup_transactions"] == 30 + 7  # 30 mints, 7 stakes
    assert disc["channels_opened"] >= disc["clients"]
    assert mo["paid"] == disc["calls"] * 10**18  # 1 micro each
    # a provider that crashed while answering had served and charged: the client's node
    # got that answer later (re-delivered before any claim) and pays for it too, so
    # charged may exceed what the calls paid, by at most the tries that failed
    assert mo["paid"] <= mo["charged"] == mo["redeemed"]
    assert mo["charged"] - mo["paid"] <= disc["failed_tries"] * 10**18


def test_fake_offers_are_never_chosen(report: dict[str, Any]) -> None:
    disc = report["discovery"]
    providers = by_name(report)
    # offers without stake are ignored when they arrive; offers claiming a stake the
    # ledger does not hold are a lie seen before they are trusted: never tried
    assert providers["fake-no-stake-0"]["tried"] == 0
    assert providers["fake-unbacked-0"]["tried"] == 0
    assert disc["fake_offers_tried"] == 0
    assert disc["offers"]["ignored"]["no_stake"] > 0
    # the under-priced offer is the cheapest, so every client tries it once; its hello
    # gives the lie away, the client drops it (banned for an hour): never paid
    assert providers["fake-underpriced-0"] == {
        **providers["fake-underpriced-0"],
        "tried": 21,
        "answered": 0,
        "failed": {"LIED": 21},
    }
    # each client caught each liar exactly once
    assert disc["offers"]["lies"] == {
        "stake_not_on_ledger": 21,
        "hello_or_price_contradicts_offer": 21,
    }
    assert disc["offers"]["ignored"]["banned"] > 0  # their later offers
    for group in ("fake-no-stake", "fake-unbacked", "fake-underpriced"):
        g = next(x for x in report["groups"] if x["group"] == group)
        assert g["served"] == 0 and g["charged"] == 0 and g["gain"] == 0
        assert g["behaviour_stats"]["fake_offers_published"] > 0


def test_failing_providers_lose_their_clients(report: dict[str, Any]) -> None:
    disc = report["discovery"]
    providers = by_name(report)
    for name in ("flaky-0", "flaky-1", "crashing-0"):
        failed = providers[name]["failed"]
        assert set(failed) == {"UNREACHABLE"} and failed["UNREACHABLE"] > 0, name
    # every failed try (a down provider, a liar) was followed by another offer in the
    # same call, which answered
    assert disc["failovers"] == disc["answered_after_failover"] > 0
    assert disc["failed_tries"] == sum(sum(p["failed"].values()) for p in disc["providers"])
    assert disc["failed_tries"] == sum(disc["failed_tries_by_code"].values())
    assert disc["failed_tries_by_code"]["LIED:TERMS_REFUSED"] == 21
    # while a group is down it answers nothing; the others take its clients
    series = report["series"]
    t = series["t"]
    answers = series["discovery"]["answers_by_group"]
    for group, (start, end) in (("flaky", (60, 120)), ("crashing", (120, 180))):
        inside = [
            b - a
            for a, b, t0, t1 in zip(answers[group], answers[group][1:], t, t[1:], strict=False)
            if start <= t0 and t1 <= end
        ]
        assert inside and not any(inside), group
        assert answers[group][-1] > 0  # it answered before
    honest = answers["honest"]
    assert honest[-1] == by_group(report, "honest")["answered"]


def by_group(report: dict[str, Any], group: str) -> dict[str, int]:
    return dict(report["discovery"]["by_group"][group])


def test_the_offers_the_clients_saw(report: dict[str, Any]) -> None:
    offers = report["discovery"]["offers"]
    ignored = sum(offers["ignored"].values())
    assert offers["seen"] == offers["accepted"] + ignored
    assert offers["accepted"] > 0 and offers["evicted"] == 0
    # the series ends where the totals are
    series = report["series"]["discovery"]
    assert series["offers_seen"][-1] == offers["seen"]
    assert series["offers_accepted"][-1] == offers["accepted"]
    assert series["failovers"][-1] == report["discovery"]["failovers"]


def test_same_seed_same_discovery(report: dict[str, Any]) -> None:
    again = run_scenario(parse_scenario(small(), source="discovery-small"), show_log=False)
    for key in ("discovery", "requests", "money", "claims", "series", "invariants"):
        assert again[key] == report[key], key


def test_the_discovery_figures(report: dict[str, Any]) -> None:
    from p2pay.sim.plots import END_OF_WORKLOAD, figures

    figs = figures(report)
    try:
        assert list(figs)[-2:] == ["discovery.png", "choices.png"]
        offers, answers, failovers, lies = figs["discovery.png"].axes
        for ax in (offers, answers, failovers, lies):
            labels = [str(x.get_label()) for x in ax.get_lines()]
            legend = ax.get_legend()
            assert legend is not None
            assert labels == [t.get_text() for t in legend.get_texts()]
            assert END_OF_WORKLOAD in labels
            styles = [(x.get_color(), x.get_linestyle(), x.get_marker()) for x in ax.lines]
            assert len(set(styles)) == len(styles)
        assert [str(x.get_label()) for x in offers.get_lines()][:3] == [
            "offers seen",
            "offers accepted",
            "offers ignored",
        ]
        # failovers are on their own axis: far fewer than the offers
        assert [str(x.get_label()) for x in failovers.get_lines()] == [
            "failovers (calls)",
            "failed tries",
            END_OF_WORKLOAD,
        ]
        assert [str(x.get_label()) for x in lies.get_lines()] == ["lies seen", END_OF_WORKLOAD]
        assert sum(lies.get_lines()[0].get_ydata()) == report["discovery"]["offers"]["lies_seen"]  # type: ignore[arg-type]
        groups = [g for g in report["series"]["discovery"]["answers_by_group"]]
        assert len(answers.get_lines()) == len(groups) + 1
        tried, reasons = figs["choices.png"].axes
        # every bar is in a legend entry of its group, and every reason bar has its count
        legend = tried.get_legend()
        assert legend is not None
        assert len(legend.get_texts()) == 2 * len(groups)
        counts = [t.get_text() for t in reasons.texts]
        offers_section = report["discovery"]["offers"]
        expected = [f"{v:,}" for v in offers_section["ignored"].values()]
        expected += [f"{v:,}" for v in offers_section["lies"].values()]
        assert counts == expected
    finally:
        import matplotlib.pyplot as plt

        for fig in figs.values():
            plt.close(fig)


def test_the_discovery_invariants_catch_what_they_check() -> None:
    from p2pay.sim.engine import Simulation

    sim = Simulation(parse_scenario(small(), source="discovery-small"))
    peers = {p.name: p for p in sim.peers}
    client, fake, flaky = peers["clients-0"], peers["fake-unbacked-0"], peers["flaky-0"]
    checks = sim.invariants.results
    # a call that tried an offer whose stake is not on the ledger
    sim.disc.record(client, [(fake, "REFUSED", "OVERLOADED")], outcome="NO_PROVIDER", start=1.0)
    sim.invariants._check_fake_offers(1.0)
    assert not checks["fake_offers_never_chosen"].ok
    assert checks["fake_offers_never_chosen"].details[0]["first_tries"] == [
        {"t": 1.0, "client": "clients-0", "provider": "fake-unbacked-0"}
    ]
    # a client that keeps trying a provider that is down (60 s to 120 s): 3 failures in
    # a row are allowed per 5 minutes, a fourth is not
    for i in range(3):
        sim.disc.record(
            client, [(flaky, "UNREACHABLE", "UNREACHABLE")], outcome="NO_PROVIDER", start=61.0 + i
        )
    sim.invariants._check_failovers()
    assert checks["failing_providers_lose_their_clients"].ok
    sim.disc.record(
        client, [(flaky, "UNREACHABLE", "UNREACHABLE")], outcome="NO_PROVIDER", start=70.0
    )
    sim.invariants._check_failovers()
    result = checks["failing_providers_lose_their_clients"]
    assert not result.ok
    assert result.details[-1] == {
        "client": "clients-0",
        "provider": "flaky-0",
        "down": [60.0, 120.0],
        "failed_tries": 4,
        "bound": 3,
    }


@pytest.mark.slow
def test_the_1000_peer_scenario() -> None:
    """The file as shipped: 950 clients finding 50 providers by name (about two minutes
    of CPU)."""
    report = run_scenario(load_scenario(SCENARIOS / "discovery-1000.toml"), show_log=False)
    broken = [r for r in report["invariants"] if not r["ok"]]
    assert not broken, broken
    assert report["errors"] == {} and report["log"]["errors"] == {}
    assert report["scenario"]["peers"] == 1000
    disc = report["discovery"]
    assert disc["clients"] == 950 and disc["fake_offers_tried"] == 0
    assert disc["ok"] >= 0.9 * disc["calls"] > 5000
    groups = disc["by_group"]
    for fake in ("fake-no-stake", "fake-unbacked"):
        assert groups[fake]["tried"] == 0
    # every client meets each under-priced liar at most once: its hello gives it away
    liars = groups["fake-underpriced"]
    assert 0 < liars["tried"] == liars["failed"] <= 2 * 950 and liars["answered"] == 0
    assert disc["offers"]["ignored"]["no_stake"] > 0
    assert disc["offers"]["lies"]["stake_not_on_ledger"] > 0
    for failing in ("flaky", "crashing"):
        assert groups[failing]["failed"] > 0 and groups[failing]["answered"] > 0
    assert disc["failovers"] > 0 and disc["answered_after_failover"] > 0
    assert report["ledger"]["totals"]["conserved"]


def test_the_summary_shows_discovery(report: dict[str, Any]) -> None:
    from rich.console import Console

    from p2pay.sim.report import print_summary

    console = Console(record=True, width=200)
    print_summary(report, console)
    text = console.export_text()
    offers = report["discovery"]["offers"]
    (line,) = [x for x in text.splitlines() if "offers seen / accepted" in x]
    assert line.split("│")[2].strip() == f"{offers['seen']:,} / {offers['accepted']:,}"
    assert "offers ignored: no_stake" in text and "lies seen: stake_not_on_ledger" in text
    assert "choices per provider group (call any)" in text
    assert "fake-underpriced" in text
