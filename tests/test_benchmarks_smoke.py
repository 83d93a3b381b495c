"""Smoke test of the benchmark suite (issue 9): every benchmark runs at a tiny size and
prints a ratio and a target. It checks the *shape* of the output, never a speed: the
figures at this size mean nothing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS
from benchmarks.__main__ import main, table
from benchmarks._common import FAIL, NOT_MEASURED, PASS, Result, buckets, fmt

ROW = re.compile(
    r"^(?P<name>[a-z0-9_]+)\s+(?P<ratio>n/a|[0-9.,e+-]+)\s+(?P<op>>=|<=) (?P<target>[0-9.,e+-]+)"
    r"\s+(?P<verdict>PASS|FAIL|NOT MEASURED)\b"
)

#: the results each benchmark module returns: benchmarks 1 and 2 one per baseline (one
#: write per frame, batching), 3 one per unverified_credit_limit (default, 0), 6 one per
#: way of running scale-1000 (one market, 2 shards); memory_footprint three; 8 (issue 15)
#: one per handler (echo, suspending); issue 18's two_process one per ratio (calls/s against
#: the echo, payer CPU against payee CPU), codec_cbor2 one
EXPECTED = {
    "paid_vs_unpaid": ["paid_vs_unpaid", "paid_vs_unpaid_batched"],
    "paid_vs_libp2p": ["paid_vs_libp2p", "paid_vs_libp2p_batched"],
    "payee_cost": ["payee_cost", "payee_cost_verify_all"],
    "sqlite_vs_memory": ["sqlite_vs_memory"],
    "ledger_tx": ["ledger_tx"],
    "simulator": ["simulator", "simulator_shards2"],
    "memory_footprint": ["memory_channel", "memory_sim_peer", "memory_libp2p_peer"],
    "handler_runner": ["handler_runner", "handler_runner_suspending"],
    "two_process": ["two_process", "two_process_cpu"],
    "codec_cbor2": ["codec_cbor2"],
}


def test_every_benchmark_is_listed() -> None:
    assert set(EXPECTED) == set(BENCHMARKS)
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    for name in BENCHMARKS:
        assert (here / f"{name}.py").is_file(), name


def test_result_verdicts() -> None:
    def r(ratio: float | None, op: str) -> Result:
        return Result(name="x", title="t", target_op=op, target=1.0, ratio=ratio, ratio_desc="d")

    assert r(1.0, ">=").status == PASS
    assert r(0.99, ">=").status == FAIL
    assert r(1.0, "<=").status == PASS
    assert r(1.01, "<=").status == FAIL
    assert r(None, "<=").status == NOT_MEASURED
    row = table([r(0.5, ">=")]).splitlines()[-1]
    match = ROW.match(row)
    assert match is not None and match["verdict"] == FAIL and match["ratio"] == fmt(0.5)


def test_profile_buckets_charge_builtins_to_callers() -> None:
    import cProfile

    from p2pay.core import codec

    prof = cProfile.Profile()
    prof.enable()
    for i in range(300):
        codec.encode({"n": i, "b": b"x" * 40, "s": "text"})
    prof.disable()
    import pstats

    rows = buckets(pstats.Stats(prof))
    names = [name for name, _s, _share in rows]
    assert names[0] == "p2pay.core.codec (CBOR)"
    assert abs(sum(share for _n, _s, share in rows) - 1.0) < 1e-6


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_all_benchmarks_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    profiles = tmp_path / "profiles"
    code = main(["--smoke", "--inline", "--json", str(out), "--profile-dir", str(profiles)])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            rows[match["name"]] = match
    names = [n for group in EXPECTED.values() for n in group]
    assert sorted(rows) == sorted(names), text
    data = json.loads(out.read_text())
    assert data["size"] == "smoke" and data["machine"]["nproc"] >= 1
    by_name = {r["name"]: r for r in data["results"]}
    for name in names:
        r = by_name[name]
        assert r["target_op"] in (">=", "<=") and r["target"] > 0
        assert r["status"] in (PASS, FAIL, NOT_MEASURED)
        if r["status"] == NOT_MEASURED:
            # only the simulator may be legitimately unmeasurable (not ready), and then
            # it says so instead of printing a number
            assert name.startswith("simulator") and r["ratio"] is None, r
            assert any(n.startswith("not measured") for n in r["notes"])
            assert rows[name]["ratio"] == "n/a"
        else:
            # a ratio is a measurement: memory deltas may come out slightly negative under
            # noise, so only its form is checked here (the figures live in RESULTS.md)
            assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]), r
            assert rows[name]["ratio"] != "n/a"
        assert r["figures"], f"{name} printed no absolute figures"
    # each pair of results says which configuration passes and which fails, and the
    # verdict it prints for each is that result's own status
    for first, second, key in (
        ("paid_vs_unpaid", "paid_vs_unpaid_batched", "verdict per baseline"),
        ("paid_vs_libp2p", "paid_vs_libp2p_batched", "verdict per baseline"),
        ("payee_cost", "payee_cost_verify_all", "verdict per configuration"),
    ):
        line = next(n for n in by_name[first]["notes"] if n.startswith(key))
        assert line in by_name[second]["notes"]
        parts = line.split(": ", 1)[1].split("; ")
        assert [p.split(" (target")[0].rsplit(" ", 1)[1] for p in parts] == [
            by_name[first]["status"],
            by_name[second]["status"],
        ], line
    # the simulator's growth points ran, unsharded and in 2 shards
    growth = by_name["simulator"]["figures"]["growth"]
    assert [g.get("shards") for g in growth] == [1, 2], growth
    assert all(g["invariants_ok"] and g["requests_sent_ok"][1] > 0 for g in growth), growth
    # each measured benchmark with a profile pass wrote its text profile
    written = {p.name for p in profiles.glob("*.txt")}
    for expected in (
        "paid_vs_unpaid.paid.txt",
        "paid_vs_unpaid.batching_unpaid.txt",
        "paid_vs_libp2p.raw_libp2p.txt",
        "paid_vs_libp2p.batching_raw_libp2p.txt",
        "payee_cost.txt",
        "payee_cost.verify_all.txt",
        "sqlite_vs_memory.sqlite.txt",
        "ledger_tx.txt",
        "memory_footprint.txt",
    ):
        assert expected in written, written
        body = (profiles / expected).read_text()
        assert "self time by component" in body or "allocation sites" in body


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ablations_smoke() -> None:
    from benchmarks import ablations

    rows = ablations.run("smoke")
    assert [r["ablation"] for r in rows] == list(ablations.ABLATIONS)
    for row in rows:
        assert row["base_cpu_us_per_call"] > 0 and row["patched_cpu_us_per_call"] > 0
        assert row["cpu_ratio"] > 0 and row["rate_ratio"] > 0
    text = ablations.render(rows, "smoke")
    assert all(name in text for name in ablations.ABLATIONS)
    # every patch was undone: the real methods are back
    from p2pay.core import identity
    from p2pay.core.messages import Request, Response
    from p2pay.store import memory

    assert Request.verify.__module__ == "p2pay.core.messages"
    assert Response.to_frame.__module__ == "p2pay.core.messages"
    assert memory.check_batch.__module__ == "p2pay.store.base"
    assert not hasattr(identity.public_from_peer_id, "cache_info")


def _no_such_process(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_two_process_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18's two-process benchmark alone, at the smoke size: four child processes ran,
    every figure is a finite positive number, and no child outlived the benchmark."""
    out = tmp_path / "results.json"
    code = main(["--smoke", "--inline", "--only", "two_process", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    by_name = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert sorted(by_name) == ["two_process", "two_process_cpu"], text
    for r in by_name.values():
        assert r["status"] in (PASS, FAIL), r
        assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]) and r["ratio"] > 0
    figures = by_name["two_process"]["figures"]
    rounds = figures["paid_rounds"] + figures["by_addr_rounds"] + figures["echo_rounds"]
    assert len(rounds) == 3 * figures["rounds"]
    for row in rounds:
        assert row["calls"] == figures["calls_per_round"]
        for key in ("wall_s", "calls_per_s", "client_cpu_us", "server_cpu_us"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    # the ratios are the ones of the rounds' own figures
    paid, echo = figures["paid_rounds"][0], figures["echo_rounds"][0]
    assert figures["rate_ratio_per_round"][0] == pytest.approx(
        paid["calls_per_s"] / echo["calls_per_s"], rel=0.01
    )
    assert figures["payer_payee_cpu_ratio_per_round"][0] == pytest.approx(
        paid["client_cpu_us"] / paid["server_cpu_us"], rel=0.01
    )
    pids = figures["child_pids"]
    assert len(pids) == 4 and all(_no_such_process(pid) for pid in pids), pids


def test_codec_cbor2_smoke() -> None:
    """Issue 18's codec comparison at the smoke size: both codecs agree on every input they
    were given (the timing means something only then), and the figures are well-formed."""
    from benchmarks import codec_cbor2

    [result] = codec_cbor2.run("smoke", None)
    figures = result.figures
    assert figures["agreement_disagreements"] == 0, result.notes
    assert figures["agreement_inputs"] > 1000 and figures["agreement_accepted_by_both"] > 0
    assert result.ratio is not None and math.isfinite(result.ratio) and result.ratio > 0
    assert result.status in (PASS, FAIL)
    assert figures["cbor2"].startswith("cbor2 ")


def test_two_process_kills_its_children_when_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that cannot start (here: no ledger file) stops the benchmark with its error,
    and every child started so far is killed and reaped."""
    from benchmarks import two_process

    started: list[two_process.Child] = []

    class Recorded(two_process.Child):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    async def no_ledger(path: Path, payer_funds: int) -> None:
        del path, payer_funds

    monkeypatch.setattr(two_process, "Child", Recorded)
    monkeypatch.setattr(two_process, "_make_ledger", no_ledger)
    with pytest.raises(two_process.ChildFailed, match="provider"):
        two_process.measure("smoke")
    assert [c.role for c in started] == ["provider", "echo-server"]
    for child in started:
        assert child.proc.returncode is not None
        assert _no_such_process(child.proc.pid)
