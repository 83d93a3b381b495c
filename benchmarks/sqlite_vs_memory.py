"""4. Paid calls/s with SqliteStore / with MemoryStore, same workload (>= 0.85).

Two node pairs on the in-memory transport (no network noise), provider serving "echo"
at 1 micro-token, 64 closed-loop callers on one stream; in one pair both nodes keep
their state in a `SqliteStore` (WAL, synchronous=FULL: a receipt leaves only after the
transaction holding its charge committed, group commit), in the other in a
`MemoryStore`. Alternating phases, ratio per round; the commit counts show how many
batches each fsync carried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from benchmarks._common import Result, median, spread
from benchmarks._harness import ALICE, BOB, CAROL, MALLORY, paid_pair, sqlite_stores
from benchmarks._throughput import compare, profile_phase

NAME = "sqlite_vs_memory"
TITLE = "paid calls/s with SqliteStore / with MemoryStore (memory transport, 64 callers)"
TARGET = 0.85

SIZE: dict[str, dict[str, Any]] = {
    "smoke": {"rounds": 1, "duration": 0.3, "concurrency": 8, "warmup": 0.1, "prof": 0.3},
    "quick": {"rounds": 3, "duration": 1.0, "concurrency": 64, "warmup": 0.5, "prof": 1.5},
    "full": {"rounds": 7, "duration": 3.0, "concurrency": 64, "warmup": 1.0, "prof": 5.0},
}


def _commits(pair: Any) -> tuple[int, int]:
    return pair.provider.store.commits, pair.client.store.commits


async def _main(size: str, profile_dir: Path | None) -> list[Result]:
    from p2pay.net.memory import MemoryNetwork

    p = SIZE[size]
    async with (
        sqlite_stores(2) as (provider_db, client_db),
        paid_pair(
            network=MemoryNetwork(),
            provider_store=provider_db,
            client_store=client_db,
            provider_key=BOB,
            client_key=ALICE,
        ) as durable,
        paid_pair(network=MemoryNetwork(), provider_key=CAROL, client_key=MALLORY) as volatile,
    ):
        d0, v0 = _commits(durable), _commits(volatile)
        cmp = await compare(
            durable.call,
            volatile.call,
            concurrency=p["concurrency"],
            duration=p["duration"],
            rounds=p["rounds"],
            warmup=p["warmup"],
        )
        d1, v1 = _commits(durable), _commits(volatile)
        sqlite_us = 1e6 / median(cmp.a_rates)
        memory_us = 1e6 / median(cmp.b_rates)
        # commits counted over warm-up + rounds; calls likewise (warm-up calls unknown,
        # so per-commit figures use the measured calls and are a lower bound)
        figures: dict[str, Any] = {
            "sqlite_calls_per_s": spread(cmp.a_rates),
            "memory_calls_per_s": spread(cmp.b_rates),
            "ratio_per_round": [round(r, 3) for r in cmp.ratios],
            "sqlite_us_per_call": round(sqlite_us, 1),
            "memory_us_per_call": round(memory_us, 1),
            "sqlite_cpu_us_per_call": round(median(cmp.a_cpu_us), 1),
            "memory_cpu_us_per_call": round(median(cmp.b_cpu_us), 1),
            "cpu_ratio": round(cmp.cpu_ratio, 3),
            "sqlite_trio_thread_cpu_us_per_call": round(median(cmp.a_main_cpu_us), 1),
            "sqlite_worker_threads_cpu_us_per_call": round(
                median(cmp.a_cpu_us) - median(cmp.a_main_cpu_us), 1
            ),
            "cpu_ratio_per_round": [round(r, 3) for r in cmp.cpu_ratios],
            "concurrency": p["concurrency"],
            "phase_s": p["duration"],
            "rounds": p["rounds"],
            "sqlite_calls": cmp.a_calls,
            "memory_calls": cmp.b_calls,
            "sqlite_commits_provider_client": [d1[0] - d0[0], d1[1] - d0[1]],
            "memory_store_writes_provider_client": [v1[0] - v0[0], v1[1] - v0[1]],
            "sqlite_calls_per_provider_commit": round(cmp.a_calls / max(1, d1[0] - d0[0]), 2),
            "loadavg_per_round": cmp.load,
        }
        notes = [
            f"sqlite {sqlite_us:,.0f} us/call vs memory {memory_us:,.0f} us/call (medians); "
            f"about {figures['sqlite_calls_per_provider_commit']} paid calls per provider "
            f"fsync'd commit",
            f"CPU per call (process_time, all threads incl. SQLite's): sqlite "
            f"{median(cmp.a_cpu_us):,.0f} us, memory {median(cmp.b_cpu_us):,.0f} us "
            f"(ratio {cmp.cpu_ratio:.3f}); of the sqlite figure, the trio thread takes "
            f"{median(cmp.a_main_cpu_us):,.0f} us and SQLite's worker threads "
            f"{median(cmp.a_cpu_us) - median(cmp.a_main_cpu_us):,.0f} us (the second core); "
            f"the fsync wait itself is not CPU",
        ]
        if profile_dir is not None:
            for label, pair in (("sqlite", durable), ("memory", volatile)):
                path, top, _ = await profile_phase(
                    pair.call,
                    concurrency=p["concurrency"],
                    duration=p["prof"],
                    title=f"{NAME}: paid calls, {label} stores, memory transport (SQLite "
                    f"commits run in a worker thread that cProfile does not see)",
                    profile_dir=profile_dir,
                    filename=f"{NAME}.{label}.txt",
                )
                figures[f"profile_{label}"] = path
                notes.append(f"{label} profile, self time: " + ", ".join(top))
    return [
        Result(
            name=NAME,
            title=TITLE,
            target_op=">=",
            target=TARGET,
            ratio=cmp.ratio,
            ratio_desc="median over rounds of (calls/s, SqliteStore) / (calls/s, MemoryStore)",
            figures=figures,
            notes=notes,
        )
    ]


def run(size: str, profile_dir: Path | None) -> list[Result]:
    return trio.run(_main, size, profile_dir)
