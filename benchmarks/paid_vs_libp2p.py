"""2. Paid call throughput / a raw py-libp2p echo, same security and muxer (>= 0.80).

paid: as in benchmark 1 (`Node.call`, 64 closed-loop callers, libp2p Noise + yamux; the
node writes every ready frame of a burst in one stream write).

Two raw baselines, measured in the same alternating rounds: two bare py-libp2p hosts
pinned to Noise + yamux with one connection per peer, fixed-size records of exactly the
paid request and receipt frame sizes on one yamux stream; no p2pay code (no framing, no
Libp2pStream); the same 64 closed-loop callers:

* ``paid_vs_libp2p`` (the issue's baseline, as measured since run 1): each record
  answered by one yamux write, each request written by its caller;
* ``paid_vs_libp2p_batched``: every whole record of a read answered by ONE yamux write,
  and the client's queued requests written in one yamux write (what the node does).

Both ends of every pair run in this one process.
"""

from __future__ import annotations

from pathlib import Path

import trio

from benchmarks._common import Result
from benchmarks._harness import batching_raw_libp2p_echo, raw_libp2p_echo
from benchmarks._throughput import Baseline, paid_vs_baselines

NAME = "paid_vs_libp2p"
TITLE = "paid / raw py-libp2p echo (one write per record) calls/s, 64 pipelined"
TARGET = 0.80

BASELINES = [
    Baseline(NAME, TITLE, "raw_libp2p", raw_libp2p_echo, "raw echo writing one record per write"),
    Baseline(
        f"{NAME}_batched",
        "paid / raw py-libp2p echo batching its writes calls/s, 64 pipelined",
        "batching_raw_libp2p",
        batching_raw_libp2p_echo,
        "raw echo writing every ready record in one yamux write, like the node",
    ),
]


def run(size: str, profile_dir: Path | None) -> list[Result]:
    return trio.run(
        lambda: paid_vs_baselines(
            target=TARGET, baselines=BASELINES, size=size, profile_dir=profile_dir
        )
    )
