"""What a run shows its user: the warnings counted (not printed one by one), calls to a
provider that the scenario took down counted as such, and figures whose panels, lines
and legends say what they show (tested on the figures' data, not on pixels)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from p2pay.sim import load_scenario, run_scenario
from p2pay.sim.plots import END_OF_WORKLOAD, figures
from p2pay.sim.report import LogCounts, log_kind, merge_reports
from p2pay.sim.run import capture_log

#: A dropper (claims against it are upheld: a node warning each), a forger, and a
#: provider off the network from 20 s to 50 s of a 2-minute workload (shared with
#: tests/cli/test_cli_simulate.py).
SCENARIO = (Path(__file__).parent / "small-cheaters.toml").read_text(encoding="utf-8")


def run(tmp_path: Path, text: str = SCENARIO) -> dict[str, Any]:
    path = tmp_path / "output.toml"
    path.write_text(text, encoding="utf-8")
    return run_scenario(load_scenario(path), out_dir=None, show_log=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("output"))


# -- the warnings


def test_log_kind_drops_the_arguments() -> None:
    record = logging.LogRecord(
        "p2pay.watcher", logging.WARNING, __file__, 1, "slashed for claim %s", ("ab",), None
    )
    assert log_kind(record) == "p2pay.watcher: slashed for claim \u2026"
    record.msg, record.args = "%(n)d of %5.2f%% done: %r", None
    assert log_kind(record) == "p2pay.watcher: \u2026 of \u2026% done: \u2026"


def test_capture_log_counts_and_hides_then_restores() -> None:
    root = logging.getLogger()
    ours = logging.getLogger("p2pay")
    seen = LogCounts()  # stands for the user's own handler
    root.addHandler(seen)
    before = (list(root.handlers), root.level, ours.level)
    ours.setLevel(logging.CRITICAL)  # counted all the same
    try:
        with capture_log(show=False) as counts:
            for _ in range(3):
                logging.getLogger("p2pay.watcher").warning("slashed for claim %s", "ab")
            logging.getLogger("p2pay.sim").error("%s: call failed", "client-1")
            logging.getLogger("p2pay.node").info("not counted")
        assert counts.as_dict() == {
            "warnings": {"p2pay.watcher: slashed for claim \u2026": 3},
            "errors": {"p2pay.sim: \u2026: call failed": 1},
        }
        assert not seen.warnings and not seen.errors  # hidden from the other handlers
        assert ours.level == logging.CRITICAL
        with capture_log(show=True) as counts:
            logging.getLogger("p2pay.watcher").warning("slashed for claim %s", "cd")
        assert counts.warnings == seen.warnings == {"p2pay.watcher: slashed for claim \u2026": 1}
    finally:
        ours.setLevel(before[2])
        root.removeHandler(seen)
    assert (list(root.handlers), root.level, ours.level) == (
        [h for h in before[0] if h is not seen],
        before[1],
        before[2],
    )


def test_the_report_counts_the_warnings_of_the_run(report: dict[str, Any]) -> None:
    upheld = report["claims"]["upheld"]
    assert upheld > 0
    assert report["log"] == {
        "warnings": {"p2pay.watcher: slashed for claim \u2026": upheld},
        "errors": {},
    }


def test_merged_reports_sum_the_log_counts(report: dict[str, Any]) -> None:
    other = {**report, "log": {"warnings": {"x: y": 2}, "errors": {"p2pay.sim: z": 1}}}
    merged = merge_reports([report, other], wall_s=1.0)
    kind = "p2pay.watcher: slashed for claim \u2026"
    assert merged["log"] == {
        "warnings": {kind: report["log"]["warnings"][kind], "x: y": 2},
        "errors": {"p2pay.sim: z": 1},
    }


# -- offline providers


def test_calls_to_a_provider_taken_down_count_as_provider_offline(
    report: dict[str, Any], tmp_path: Path
) -> None:
    requests = report["requests"]
    # only the flaky provider is ever unreachable, and only while the scenario has it down
    assert requests["failed_provider_offline"] == requests["by_outcome"]["UNREACHABLE"] > 0
    assert requests["failed_provider_offline"] <= requests["failed"]
    assert (
        report["series"]["requests"]["failed_provider_offline"][-1]
        == (requests["failed_provider_offline"])
    )
    # the same market without the outage: none
    calm = run(
        tmp_path,
        SCENARIO.replace(
            'behaviour = { kind = "offline", mode = "network", periods = [["20s", "50s"]] }', ""
        ),
    )
    assert calm["requests"]["failed_provider_offline"] == 0
    assert "UNREACHABLE" not in calm["requests"]["by_outcome"]


# -- the figures


def lines_and_legend(ax: Axes) -> tuple[list[str], list[str]]:
    legend = ax.get_legend()
    assert legend is not None, ax.get_title()
    return [str(line.get_label()) for line in ax.get_lines()], [
        t.get_text() for t in legend.get_texts()
    ]


def line(ax: Axes, label: str) -> list[float]:
    (found,) = [x for x in ax.get_lines() if x.get_label() == label]
    return [float(y) for y in found.get_ydata()]  # type: ignore[union-attr]


def test_every_line_of_every_figure_is_in_its_legend(report: dict[str, Any]) -> None:
    figs = figures(report)
    assert list(figs) == ["activity.png", "holdings.png", "claims.png"]
    try:
        for name, fig in figs.items():
            for ax in fig.axes:
                labels, legend = lines_and_legend(ax)
                assert labels == legend, (name, ax.get_title())
                assert all(label and not label.startswith("_") for label in labels)
                assert END_OF_WORKLOAD in labels, (name, ax.get_title())
                assert len(set(labels)) == len(labels)
                styles = [(x.get_color(), x.get_linestyle(), x.get_marker()) for x in ax.lines]
                assert len(set(styles)) == len(styles), (name, ax.get_title())  # all distinct
    finally:
        close(figs)


def test_activity_puts_requests_payments_and_slashes_on_separate_axes(
    report: dict[str, Any],
) -> None:
    figs = figures(report)
    try:
        requests, payments, slashing = figs["activity.png"].axes
        assert lines_and_legend(requests)[0] == [
            "sent",
            "OK",
            "failed",
            "failed: provider offline",
            "not sent: client offline",
            END_OF_WORKLOAD,
        ]
        assert lines_and_legend(payments)[0] == ["paid (OK receipts)", "redeemed", END_OF_WORKLOAD]
        assert lines_and_legend(slashing)[0] == [
            "slashed",
            "burnt (part of slashed)",
            END_OF_WORKLOAD,
        ]
        # what the panels draw is the report's figures
        assert (
            sum(line(requests, "failed: provider offline"))
            == (report["requests"]["failed_provider_offline"])
        )
        assert sum(line(requests, "sent")) == report["requests"]["sent"]
        assert max(line(payments, "paid (OK receipts)")) == report["money"]["paid"] / 10**24
        assert max(line(slashing, "slashed")) == report["money"]["slashed"] / 10**24
        # two scales: a penalty is ten thousand prices here
        assert report["money"]["slashed"] > 100 * report["money"]["paid"]
    finally:
        close(figs)


def test_holdings_has_one_panel_per_group(report: dict[str, Any]) -> None:
    figs = figures(report)
    try:
        axes = figs["holdings.png"].axes
        groups = [g["group"] for g in report["groups"]]
        assert [ax.get_title().split(" ")[0] for ax in axes] == groups
        for ax, g in zip(axes, report["groups"], strict=True):
            labels = lines_and_legend(ax)[0]
            staked = g["role"] == "provider"
            expected = ["holdings change", "stake change"] if staked else ["holdings change"]
            assert labels == [*expected, END_OF_WORKLOAD], g["group"]
        dropper = axes[groups.index("dropper")]
        assert line(dropper, "stake change")[-1] < 0  # slashed
        assert line(dropper, "holdings change")[-1] < 0
        assert line(axes[groups.index("honest")], "holdings change")[-1] > 0  # earned
    finally:
        close(figs)


def test_claims_puts_counts_and_amounts_on_separate_axes(report: dict[str, Any]) -> None:
    figs = figures(report)
    try:
        axes = figs["claims.png"].axes
        labels = [lines_and_legend(ax)[0] for ax in axes]
        assert labels[0][:3] == ["claims filed", "claims answered", "claims upheld"]
        assert labels[1] == ["slashed", END_OF_WORKLOAD]
        if report["money"]["refunded"] or report["money"]["clawed"]:
            assert len(axes) == 3 and "slashed" not in labels[2]
        else:
            assert len(axes) == 2
    finally:
        close(figs)


def close(figs: dict[str, Figure]) -> None:
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def test_quiet_still_reports_logged_errors_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-q: the report's path on stdout; errors logged during the run (a behaviour hook
    that raised, say), one line per kind with its count, on stderr."""
    from click.testing import CliRunner

    from p2pay.sim import run as sim_run
    from p2pay.sim.cli import simulate

    original = sim_run.run_simulation

    def run_simulation(*args: Any, **kwargs: Any) -> Any:
        for name in ("dropper-0", "dropper-1"):
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                logging.getLogger("p2pay.sim").exception("%s: behaviour %s failed", name, "dropper")
        return original(*args, **kwargs)

    monkeypatch.setattr(sim_run, "run_simulation", run_simulation)
    path = tmp_path / "output.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(simulate, [str(path), "--out", str(out), "-q", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out / 'report.json'}\n"
    assert result.stderr == (
        "2 errors from p2pay.sim: \u2026: behaviour \u2026 failed  (-v prints each)\n"
    )
