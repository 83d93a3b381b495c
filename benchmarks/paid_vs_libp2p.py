"""2. Paid call throughput / a raw py-libp2p echo, same security and muxer (>= 0.80).

paid: as in benchmark 1 (`Node.call`, 64 closed-loop callers, libp2p Noise + yamux).
raw libp2p: two bare py-libp2p hosts pinned to Noise + yamux with one connection per peer,
fixed-size records of exactly the paid request and receipt frame sizes on one yamux
stream, each answered by one write; no p2pay code (no framing, no Libp2pStream); the same
64 closed-loop callers. Both ends of both pairs run in this one process.
"""

from __future__ import annotations

from pathlib import Path

import trio

from benchmarks._common import Result
from benchmarks._harness import raw_libp2p_echo
from benchmarks._throughput import paid_vs_baseline

NAME = "paid_vs_libp2p"
TITLE = "paid / raw py-libp2p echo calls/s (Noise + yamux), 64 pipelined"
TARGET = 0.80


def run(size: str, profile_dir: Path | None) -> list[Result]:
    result = trio.run(
        lambda: paid_vs_baseline(
            name=NAME,
            title=TITLE,
            target=TARGET,
            baseline=raw_libp2p_echo,
            baseline_label="raw_libp2p",
            size=size,
            profile_dir=profile_dir,
        )
    )
    return [result]
