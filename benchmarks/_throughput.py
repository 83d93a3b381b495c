"""Alternating-rounds throughput comparison of two ways of calling (A / B)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import (
    Result,
    load_average,
    median,
    new_profiler,
    profile_text,
    spread,
    top_buckets,
    write_profile,
)
from benchmarks._harness import Phase, run_callers

Caller = Callable[[], Awaitable[Any]]


@dataclass
class Comparison:
    a_rates: list[float] = field(default_factory=list)  # calls/s, one per round
    b_rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # a/b per round
    a_cpu_us: list[float] = field(default_factory=list)  # CPU us per call, one per round
    b_cpu_us: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)  # (b cpu/call) / (a cpu/call)
    a_main_cpu_us: list[float] = field(default_factory=list)  # trio thread only
    b_main_cpu_us: list[float] = field(default_factory=list)
    a_calls: int = 0
    b_calls: int = 0
    load: list[list[float]] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)  # label -> file
    breakdown: dict[str, list[str]] = field(default_factory=dict)  # label -> top buckets
    us_per_call: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return median(self.ratios)

    @property
    def cpu_ratio(self) -> float:
        return median(self.cpu_ratios)


async def compare(
    a: Caller,
    b: Caller,
    *,
    concurrency: int,
    duration: float,
    rounds: int,
    warmup: float,
) -> Comparison:
    """Measure A and B in alternating phases (ABBA order), `rounds` pairs of phases of
    `duration` seconds each with `concurrency` closed-loop callers; ratio per round A/B."""
    out = Comparison()
    await run_callers(a, concurrency, warmup)
    await run_callers(b, concurrency, warmup)
    for r in range(rounds):
        out.load.append([round(x, 2) for x in load_average()])
        order = [("a", a), ("b", b)] if r % 2 == 0 else [("b", b), ("a", a)]
        phases: dict[str, Phase] = {}
        for label, fn in order:
            phases[label] = await run_callers(fn, concurrency, duration)
        a_phase, b_phase = phases["a"], phases["b"]
        out.a_calls += a_phase.calls
        out.b_calls += b_phase.calls
        out.a_rates.append(a_phase.rate)
        out.b_rates.append(b_phase.rate)
        out.ratios.append(a_phase.rate / b_phase.rate)
        out.a_cpu_us.append(a_phase.cpu_us)
        out.b_cpu_us.append(b_phase.cpu_us)
        out.cpu_ratios.append(b_phase.cpu_us / a_phase.cpu_us)
        out.a_main_cpu_us.append(a_phase.main_cpu / max(1, a_phase.calls) * 1e6)
        out.b_main_cpu_us.append(b_phase.main_cpu / max(1, b_phase.calls) * 1e6)
    out.load.append([round(x, 2) for x in load_average()])
    return out


async def profile_phase(
    fn: Caller,
    *,
    concurrency: int,
    duration: float,
    title: str,
    profile_dir: Any,
    filename: str,
) -> tuple[str | None, list[str], dict[str, float]]:
    """cProfile one phase; write the text summary; return (path, top buckets, us/call by
    bucket)."""
    prof = new_profiler()
    prof.enable()
    phase = await run_callers(fn, concurrency, duration)
    prof.disable()
    count, elapsed = phase.calls, phase.elapsed
    text, rows = profile_text(
        prof,
        f"{title}: {count:,} calls in {elapsed:.2f} s under cProfile, {concurrency} callers",
        per=max(count, 1),
    )
    path = write_profile(profile_dir, filename, text)
    per_call = {name: secs / max(count, 1) * 1e6 for name, secs, _share in rows}
    return path, top_buckets(rows), per_call


#: phase sizes shared by the libp2p throughput benchmarks (1 and 2)
LIBP2P_SIZE: dict[str, dict[str, Any]] = {
    "smoke": {"rounds": 1, "duration": 0.3, "concurrency": 8, "warmup": 0.1, "prof": 0.3},
    "quick": {"rounds": 3, "duration": 1.0, "concurrency": 64, "warmup": 0.5, "prof": 1.5},
    "full": {"rounds": 7, "duration": 3.0, "concurrency": 64, "warmup": 1.0, "prof": 5.0},
}


async def paid_vs_baseline(
    *,
    name: str,
    title: str,
    target: float,
    baseline: Any,  # async context manager factory: (request_size, reply_size) -> FifoClient
    baseline_label: str,
    size: str,
    profile_dir: Any,
) -> Result:
    """Benchmarks 1 and 2: paid `Node.call` over libp2p against an echo baseline."""
    from benchmarks._harness import frame_sizes, paid_pair

    p = LIBP2P_SIZE[size]
    req, rep = frame_sizes()
    async with paid_pair() as pair, baseline(req, rep) as echo:
        cmp = await compare(
            pair.call,
            echo.call,
            concurrency=p["concurrency"],
            duration=p["duration"],
            rounds=p["rounds"],
            warmup=p["warmup"],
        )
        paid_us = 1e6 / median(cmp.a_rates)
        base_us = 1e6 / median(cmp.b_rates)
        figures: dict[str, Any] = {
            "paid_calls_per_s": spread(cmp.a_rates),
            f"{baseline_label}_calls_per_s": spread(cmp.b_rates),
            "ratio_per_round": [round(r, 3) for r in cmp.ratios],
            "paid_us_per_call": round(paid_us, 1),
            f"{baseline_label}_us_per_call": round(base_us, 1),
            "paid_cpu_us_per_call": round(median(cmp.a_cpu_us), 1),
            f"{baseline_label}_cpu_us_per_call": round(median(cmp.b_cpu_us), 1),
            "cpu_ratio": round(cmp.cpu_ratio, 3),
            "cpu_ratio_per_round": [round(r, 3) for r in cmp.cpu_ratios],
            "concurrency": p["concurrency"],
            "phase_s": p["duration"],
            "rounds": p["rounds"],
            "request_frame_bytes": req,
            "receipt_frame_bytes": rep,
            "paid_calls": cmp.a_calls,
            f"{baseline_label}_calls": cmp.b_calls,
            "ledger_tx_during_run": pair.ledger.tx_count,
            "loadavg_per_round": cmp.load,
        }
        notes = [
            f"paid {paid_us:,.0f} us/call vs {baseline_label} {base_us:,.0f} us/call "
            f"(medians; both ends of each pair on one core): the paid path adds "
            f"{paid_us - base_us:,.0f} us/call",
            f"CPU per call (process_time, immune to other processes): paid "
            f"{median(cmp.a_cpu_us):,.0f} us, {baseline_label} {median(cmp.b_cpu_us):,.0f} us; "
            f"their ratio {cmp.cpu_ratio:.3f} is what the throughput ratio would be on an "
            f"idle core",
        ]
        if profile_dir is not None:
            for label, fn in (("paid", pair.call), (baseline_label, echo.call)):
                path, top, _per_call = await profile_phase(
                    fn,
                    concurrency=p["concurrency"],
                    duration=p["prof"],
                    title=f"{name}: {label} calls over libp2p, both ends in one process",
                    profile_dir=profile_dir,
                    filename=f"{name}.{label}.txt",
                )
                figures[f"profile_{label}"] = path
                notes.append(f"{label} profile, self time: " + ", ".join(top))
    return Result(
        name=name,
        title=title,
        target_op=">=",
        target=target,
        ratio=cmp.ratio,
        ratio_desc=f"median over rounds of (paid calls/s) / ({baseline_label} calls/s)",
        figures=figures,
        notes=notes,
    )
