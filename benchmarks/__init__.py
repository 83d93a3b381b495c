"""p2pay benchmarks (issue 9): every target is a ratio measured inside one run.

Run ``python -m benchmarks`` (all, full size), ``python -m benchmarks --quick`` (under
about two minutes), ``--only NAME`` (repeatable) and ``--json FILE``. See RESULTS.md for
the figures, how they were taken, and what each profile says.

This machine is shared and noisy, so no benchmark has an absolute-time target: each one
measures the thing and its baseline in the same process, in alternating rounds, and
reports the median of the per-round ratios; absolute figures are printed beside it.

Two more tools measure evidence rather than a target: ``python -m benchmarks.ablations``
(CPU saved per paid call by patching one cost out, in-process only) and
``python -m benchmarks.libp2p_io`` (Noise and yamux operations per call).

Each benchmark module has a ``NAME`` and ``run(size, profile_dir) -> list[Result]``,
where ``size`` is ``"smoke"`` (seconds; used by the smoke test, figures meaningless),
``"quick"`` or ``"full"``, and ``profile_dir`` (or None) is where it writes its cProfile
summary as text.
"""

from __future__ import annotations

#: benchmark names = module names (benchmarks.<name>), in issue 9's order, then issue 15's,
#: then issue 18's.
BENCHMARKS: tuple[str, ...] = (
    "paid_vs_unpaid",
    "paid_vs_libp2p",
    "payee_cost",
    "sqlite_vs_memory",
    "ledger_tx",
    "simulator",
    "memory_footprint",
    "handler_runner",
    "two_process",
    "codec_cbor2",
)

SIZES = ("smoke", "quick", "full")

__all__ = ["BENCHMARKS", "SIZES"]
