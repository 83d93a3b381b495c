"""1. Paid call throughput / unpaid call throughput on the same libp2p transport (>= 0.90).

paid: `Node.call` (64 closed-loop callers, one long-lived stream, MemoryStore, memory
ledger, watcher on, price 1 micro-token) between two nodes on libp2p (Noise + yamux,
127.0.0.1).
unpaid: a request/response echo over the same p2pay transport (`p2pay.net.p2p`:
Libp2pStream, uvarint framing) with payloads of exactly the paid request and receipt frame
sizes, and no vouchers, receipts, signatures or store; same 64 callers.
Both ends of both pairs run in this one process (one core for both sides), so the ratio
compares the CPU cost per call of the paid path with that of the bare transport.
"""

from __future__ import annotations

from pathlib import Path

import trio

from benchmarks._common import Result
from benchmarks._harness import unpaid_echo
from benchmarks._throughput import paid_vs_baseline

NAME = "paid_vs_unpaid"
TITLE = "paid / unpaid (p2pay transport echo) calls/s over libp2p, 64 pipelined"
TARGET = 0.90


def run(size: str, profile_dir: Path | None) -> list[Result]:
    result = trio.run(
        lambda: paid_vs_baseline(
            name=NAME,
            title=TITLE,
            target=TARGET,
            baseline=unpaid_echo,
            baseline_label="unpaid",
            size=size,
            profile_dir=profile_dir,
        )
    )
    return [result]
