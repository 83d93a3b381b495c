"""What each proposed optimisation would buy, measured (not a target: evidence for
RESULTS.md). ``python -m benchmarks.ablations [--quick] [--out FILE]``.

Each ablation patches p2pay *in this process only* (a measurement hook that lives in
benchmarks/; no shared code is changed) to remove one cost the profiles point at, and
measures paid calls/s with and without the patch on the same node pair, in alternating
phases (memory transport, 64 closed-loop callers, MemoryStore, price 1 micro-token).
The gain is reported as CPU time per paid call (both ends; `time.process_time` over each
phase, so what other processes on this shared machine take does not count) before and
after, as their ratio, and as the wall-clock throughput ratio beside it. The CPU saved
per call carries over to the libp2p transport: the same work is done there, only the
transport's own cost is added.

Patches (each is the upper bound of the change it stands for):

Since session 2 the node already memoises PeerID <-> key (bounded LRU) and defers voucher
checks (``unverified_credit_limit``): ``peer_id_cache`` and ``payee_verify_deferred`` now
measure what is left of those costs (a lever taken shows as a ratio near 1).

* ``peer_id_cache``: `peer_id_from_public` / `public_from_peer_id` memoised (base58
  encode/decode of PeerIDs on every call, stream and receipt).
* ``frame_cache``: `Request.to_frame` / `Response.to_frame` memoised (the node re-encodes
  frames it already has: ``best.to_frame()`` in every payee record, the request frame
  again when its receipt arrives).
* ``no_store_validation``: `MemoryStore.write` skips `check_batch` (every commit
  re-validates every record it carries; records are built by the node itself).
* ``payee_verify_deferred``: the payee's voucher check `Request.verify` returns True
  (no voucher checked at all: the upper bound of deferred verification, which at the
  default limit already checks about 1 voucher in 100 at this price).
* ``payer_receipt_verify``: the payer's receipt check `Response.verify` returns True
  (shows what the second signature check per call costs; not a proposal by itself).
* ``all_but_payer``: every patch above but the last, together.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from benchmarks._common import fmt, machine, median
from benchmarks._harness import Phase, paid_pair, run_callers

SIZE: dict[str, dict[str, Any]] = {
    "smoke": {"rounds": 1, "duration": 0.2, "concurrency": 8, "warmup": 0.1},
    "quick": {"rounds": 3, "duration": 1.0, "concurrency": 64, "warmup": 0.3},
    "full": {"rounds": 6, "duration": 2.0, "concurrency": 64, "warmup": 0.5},
}


@contextlib.contextmanager
def _patched(targets: list[tuple[Any, str, Any]]) -> Iterator[None]:
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    try:
        for obj, name, value in targets:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _peer_id_cache() -> list[tuple[Any, str, Any]]:
    import p2pay.core.identity as identity
    import p2pay.net.memory as net_memory
    import p2pay.net.p2p as net_p2p
    import p2pay.node.client as node_client
    import p2pay.node.facade as node_facade
    import p2pay.node.server as node_server
    import p2pay.node.types as node_types

    to_id = functools.lru_cache(maxsize=65536)(identity.peer_id_from_public)
    to_public = functools.lru_cache(maxsize=65536)(identity.public_from_peer_id)
    out: list[tuple[Any, str, Any]] = []
    for module in (
        identity,
        node_facade,
        node_server,
        node_client,
        node_types,
        net_p2p,
        net_memory,
    ):
        if hasattr(module, "peer_id_from_public"):
            out.append((module, "peer_id_from_public", to_id))
        if hasattr(module, "public_from_peer_id"):
            out.append((module, "public_from_peer_id", to_public))
    return out


def _frame_cache() -> list[tuple[Any, str, Any]]:
    from p2pay.core.messages import Request, Response

    out: list[tuple[Any, str, Any]] = []
    for cls in (Request, Response):
        cache: dict[tuple[bytes, bytes, bytes], bytes] = {}

        def to_frame(self: Any, _orig: Any = cls.to_frame, _cache: Any = cache) -> bytes:
            key = (self.signing_bytes, self.signature, self.body)
            frame = _cache.get(key)
            if frame is None:
                if len(_cache) > 8192:
                    _cache.clear()
                frame = _cache[key] = _orig(self)
            return frame

        out.append((cls, "to_frame", to_frame))
    return out


def _no_store_validation() -> list[tuple[Any, str, Any]]:
    import p2pay.store.memory as store_memory

    return [(store_memory, "check_batch", lambda batch: None)]


def _payee_verify_deferred() -> list[tuple[Any, str, Any]]:
    from p2pay.core.messages import Request

    return [(Request, "verify", lambda self, public: True)]


def _payer_receipt_verify() -> list[tuple[Any, str, Any]]:
    from p2pay.core.messages import Response

    return [(Response, "verify", lambda self, public: True)]


ABLATIONS = {
    "peer_id_cache": _peer_id_cache,
    "frame_cache": _frame_cache,
    "no_store_validation": _no_store_validation,
    "payee_verify_deferred": _payee_verify_deferred,
    "payer_receipt_verify": _payer_receipt_verify,
    "all_but_payer": lambda: (
        _peer_id_cache() + _frame_cache() + _no_store_validation() + _payee_verify_deferred()
    ),
}


async def _main(size: str) -> list[dict[str, Any]]:
    from p2pay.net.memory import MemoryNetwork

    p = SIZE[size]
    rows: list[dict[str, Any]] = []
    async with paid_pair(network=MemoryNetwork()) as pair:
        await run_callers(pair.call, p["concurrency"], p["warmup"])
        for name, make in ABLATIONS.items():
            targets = make()
            base: list[Phase] = []
            patched: list[Phase] = []
            for r in range(p["rounds"]):
                order = ("base", "patch") if r % 2 == 0 else ("patch", "base")
                for which in order:
                    # the patch holds for the whole phase (every task sees it)
                    ctx = _patched(targets) if which == "patch" else contextlib.nullcontext()
                    with ctx:
                        phase = await run_callers(pair.call, p["concurrency"], p["duration"])
                    (patched if which == "patch" else base).append(phase)
            pairs = list(zip(patched, base, strict=True))
            base_cpu = median(ph.cpu_us for ph in base)
            patch_cpu = median(ph.cpu_us for ph in patched)
            rows.append(
                {
                    "ablation": name,
                    "cpu_ratio": median(b.cpu_us / a.cpu_us for a, b in pairs),
                    "rate_ratio": median(a.rate / b.rate for a, b in pairs),
                    "base_cpu_us_per_call": base_cpu,
                    "patched_cpu_us_per_call": patch_cpu,
                    "cpu_us_saved_per_call": base_cpu - patch_cpu,
                    "cpu_ratios": [round(b.cpu_us / a.cpu_us, 3) for a, b in pairs],
                    "base_calls_per_s": median(ph.rate for ph in base),
                    "patched_calls_per_s": median(ph.rate for ph in patched),
                }
            )
    return rows


def run(size: str) -> list[dict[str, Any]]:
    return trio.run(_main, size)


def render(rows: list[dict[str, Any]], size: str) -> str:
    info = machine()
    lines = [
        f"# ablations ({size}), {info['date']}, {info['nproc']} x {info['cpu']}, Python "
        f"{info['python']}, load average {' '.join(map(str, info['loadavg']))}",
        "# memory transport, 64 callers, MemoryStore, both nodes in this process.",
        "# cpu ratio = baseline / patched CPU per call (= the throughput gain when CPU-bound),",
        "# median over alternating rounds; rate ratio = patched / baseline calls per wall s.",
        f"{'ablation':<24} {'cpu ratio':>9} {'CPU us/call base':>17} {'saved':>8} "
        f"{'rate ratio':>10}  cpu ratio per round",
    ]
    for row in rows:
        lines.append(
            f"{row['ablation']:<24} {row['cpu_ratio']:>9.3f} "
            f"{fmt(row['base_cpu_us_per_call']):>17} {fmt(row['cpu_us_saved_per_call']):>8} "
            f"{row['rate_ratio']:>10.3f}  {row['cpu_ratios']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablations")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    text = render(run(size), size)
    sys.stdout.write(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
