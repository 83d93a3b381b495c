"""1. Paid call throughput / unpaid call throughput on the same libp2p transport (>= 0.90).

paid: `Node.call` (64 closed-loop callers, one long-lived stream, MemoryStore, memory
ledger, watcher on, price 1 micro-token) between two nodes on libp2p (Noise + yamux,
127.0.0.1). The node writes every ready (and, for answers, durable) frame of a burst in
one stream write, on both ends.

Two unpaid baselines, measured in the same alternating rounds (paid, unpaid, batching,
then reversed), both over the same p2pay transport (`p2pay.net.p2p`: Libp2pStream,
uvarint framing) with payloads of exactly the paid request and receipt frame sizes, and
no vouchers, receipts, signatures or store; same 64 callers:

* ``paid_vs_unpaid`` (the issue's baseline, as measured since run 1): an echo writing one
  frame per answer and per request;
* ``paid_vs_unpaid_batched``: an echo writing like the node (every frame already read
  answered in one `send_frames` write; the client's queued requests in one write).

Both ends of every pair run in this one process (one core for both sides), so each
ratio compares the CPU cost per call of the paid path with that of the bare transport.
"""

from __future__ import annotations

from pathlib import Path

import trio

from benchmarks._common import Result
from benchmarks._harness import batching_unpaid_echo, unpaid_echo
from benchmarks._throughput import Baseline, paid_vs_baselines

NAME = "paid_vs_unpaid"
TITLE = "paid / unpaid (p2pay transport echo, one write per frame) calls/s, 64 pipelined"
TARGET = 0.90

BASELINES = [
    Baseline(NAME, TITLE, "unpaid", unpaid_echo, "echo writing one frame per write"),
    Baseline(
        f"{NAME}_batched",
        "paid / unpaid (p2pay transport echo batching its writes) calls/s, 64 pipelined",
        "batching_unpaid",
        batching_unpaid_echo,
        "echo writing every ready frame in one write, like the node",
    ),
]


def run(size: str, profile_dir: Path | None) -> list[Result]:
    return trio.run(
        lambda: paid_vs_baselines(
            target=TARGET, baselines=BASELINES, size=size, profile_dir=profile_dir
        )
    )
