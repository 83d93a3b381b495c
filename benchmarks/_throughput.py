"""Alternating-rounds throughput comparison of two ways of calling (A / B)."""

from __future__ import annotations

import contextlib
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


@dataclass
class MultiComparison:
    """Per-label figures of `compare_many`: calls/s and CPU us per call, one per round."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    load: list[list[float]] = field(default_factory=list)

    def ratios(self, a: str, b: str) -> list[float]:
        """(a calls/s) / (b calls/s), per round."""
        return [x / y for x, y in zip(self.rates[a], self.rates[b], strict=True)]

    def cpu_ratios(self, a: str, b: str) -> list[float]:
        """(b CPU per call) / (a CPU per call), per round."""
        return [y / x for x, y in zip(self.cpu_us[a], self.cpu_us[b], strict=True)]


async def compare_many(
    callers: dict[str, Caller], *, concurrency: int, duration: float, rounds: int, warmup: float
) -> MultiComparison:
    """Like `compare` for several ways of calling: each round runs every one of them for
    `duration` seconds, in the listed order on even rounds and reversed on odd rounds
    (ABC CBA ...), so every ratio is taken between phases of the same round."""
    out = MultiComparison()
    for label, fn in callers.items():
        await run_callers(fn, concurrency, warmup)
        out.rates[label], out.cpu_us[label], out.calls[label] = [], [], 0
    for r in range(rounds):
        out.load.append([round(x, 2) for x in load_average()])
        order = list(callers.items())
        if r % 2:
            order.reverse()
        for label, fn in order:
            phase = await run_callers(fn, concurrency, duration)
            out.rates[label].append(phase.rate)
            out.cpu_us[label].append(phase.cpu_us)
            out.calls[label] += phase.calls
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


@dataclass
class Baseline:
    """One baseline of benchmark 1 or 2: `factory(request_size, reply_size)` is an async
    context manager yielding an object with ``call()``; its ratio is reported as the
    result `name` against `target`."""

    name: str
    title: str
    label: str
    factory: Any
    how: str  # how the baseline writes, for the verdict line


async def paid_vs_baselines(
    *, target: float, baselines: list[Baseline], size: str, profile_dir: Any
) -> list[Result]:
    """Benchmarks 1 and 2: paid `Node.call` over libp2p against echo baselines, all in the
    same alternating rounds (ABC CBA ...); one Result per baseline, each with its verdict,
    and a line in every result saying which baseline passes and which fails."""
    from benchmarks._harness import frame_sizes, paid_pair

    p = LIBP2P_SIZE[size]
    req, rep = frame_sizes()
    async with contextlib.AsyncExitStack() as stack:
        pair = await stack.enter_async_context(paid_pair())
        echoes = {b.label: await stack.enter_async_context(b.factory(req, rep)) for b in baselines}
        callers: dict[str, Caller] = {"paid": pair.call}
        callers.update({label: e.call for label, e in echoes.items()})
        cmp = await compare_many(
            callers,
            concurrency=p["concurrency"],
            duration=p["duration"],
            rounds=p["rounds"],
            warmup=p["warmup"],
        )
        paid_us = 1e6 / median(cmp.rates["paid"])
        paid_cpu = median(cmp.cpu_us["paid"])
        profiles: dict[str, tuple[str | None, list[str]]] = {}
        if profile_dir is not None:
            for label, fn in callers.items():
                path, top, _per_call = await profile_phase(
                    fn,
                    concurrency=p["concurrency"],
                    duration=p["prof"],
                    title=f"{baselines[0].name}: {label} calls over libp2p, both ends in one "
                    "process",
                    profile_dir=profile_dir,
                    filename=f"{baselines[0].name}.{label}.txt",
                )
                profiles[label] = (path, top)
        ledger_tx = pair.ledger.tx_count
        per_write = {
            label: e.sent / e.writes for label, e in echoes.items() if getattr(e, "writes", 0)
        }
    ratios = {b.label: median(cmp.ratios("paid", b.label)) for b in baselines}
    verdicts = [
        f"{b.label} ({b.how}): {ratios[b.label]:.3f} "
        f"{'PASS' if ratios[b.label] >= target else 'FAIL'} (target >= {target})"
        for b in baselines
    ]
    results = []
    for b in baselines:
        label = b.label
        base_us = 1e6 / median(cmp.rates[label])
        base_cpu = median(cmp.cpu_us[label])
        cpu_ratio = median(cmp.cpu_ratios("paid", label))
        figures: dict[str, Any] = {
            "paid_calls_per_s": spread(cmp.rates["paid"]),
            f"{label}_calls_per_s": spread(cmp.rates[label]),
            "ratio_per_round": [round(r, 3) for r in cmp.ratios("paid", label)],
            "paid_us_per_call": round(paid_us, 1),
            f"{label}_us_per_call": round(base_us, 1),
            "paid_cpu_us_per_call": round(paid_cpu, 1),
            f"{label}_cpu_us_per_call": round(base_cpu, 1),
            "cpu_ratio": round(cpu_ratio, 3),
            "cpu_ratio_per_round": [round(r, 3) for r in cmp.cpu_ratios("paid", label)],
            "concurrency": p["concurrency"],
            "phase_s": p["duration"],
            "rounds": p["rounds"],
            "request_frame_bytes": req,
            "receipt_frame_bytes": rep,
            "paid_calls": cmp.calls["paid"],
            f"{label}_calls": cmp.calls[label],
            "ledger_tx_during_run": ledger_tx,
            "loadavg_per_round": cmp.load,
        }
        if label in per_write:  # over the whole run (warm-up and profile included)
            figures[f"{label}_client_requests_per_write"] = round(per_write[label], 1)
        notes = [
            "verdict per baseline, same rounds: " + "; ".join(verdicts),
            f"paid {paid_us:,.0f} us/call vs {label} {base_us:,.0f} us/call "
            f"(medians; both ends of each pair on one core): the paid path adds "
            f"{paid_us - base_us:,.0f} us/call",
            f"CPU per call (process_time, immune to other processes): paid "
            f"{paid_cpu:,.0f} us, {label} {base_cpu:,.0f} us; their ratio {cpu_ratio:.3f} is "
            f"what the throughput ratio would be on an idle core",
        ]
        for lab in ("paid", label):
            if lab in profiles:
                figures[f"profile_{lab}"] = profiles[lab][0]
                notes.append(f"{lab} profile, self time: " + ", ".join(profiles[lab][1]))
        results.append(
            Result(
                name=b.name,
                title=b.title,
                target_op=">=",
                target=target,
                ratio=ratios[label],
                ratio_desc=f"median over rounds of (paid calls/s) / ({label} calls/s)",
                figures=figures,
                notes=notes,
            )
        )
    return results
