"""libp2p work per call: Noise and yamux operations per paid and per unpaid call, with
py-libp2p's default yamux window policy and with ``PY_YAMUX_RELEASE_ON_READ=0``
(evidence for RESULTS.md, not a target). ``python -m benchmarks.libp2p_io [--quick]``.

Counts come from wrappers around py-libp2p's ``SecureSession.read/write`` (one Noise
frame each) and ``YamuxStream.read/write``, installed in this process only. Each
setting runs in its own child process (py-libp2p reads the variable when it runs, but
a fresh process keeps the two apart). Both ends in one process, 64 closed-loop callers,
CPU per call from ``time.process_time``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent


async def _measure(duration: float) -> list[dict[str, Any]]:
    from libp2p.security import secure_session
    from libp2p.stream_muxer.yamux import yamux

    from benchmarks._harness import frame_sizes, paid_pair, run_callers, unpaid_echo

    counts: collections.Counter[str] = collections.Counter()

    def wrap(cls: Any, name: str, key: str) -> None:
        original = getattr(cls, name)

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return await original(self, *args, **kwargs)

        setattr(cls, name, counted)

    wrap(secure_session.SecureSession, "write", "noise_writes")
    wrap(secure_session.SecureSession, "read", "noise_reads")
    wrap(yamux.YamuxStream, "write", "yamux_stream_writes")
    wrap(yamux.YamuxStream, "read", "yamux_stream_reads")
    rows = []
    req, rep = frame_sizes()
    async with paid_pair() as pair, unpaid_echo(req, rep) as echo:
        for label, fn in (("paid", pair.call), ("unpaid", echo.call)) * 2:
            await run_callers(fn, 64, duration / 4)
            counts.clear()
            phase = await run_callers(fn, 64, duration)
            row: dict[str, Any] = {"kind": label, "calls": phase.calls, "cpu_us": phase.cpu_us}
            row.update({k: v / max(1, phase.calls) for k, v in sorted(counts.items())})
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.libp2p_io")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    duration = 1.0 if args.quick else 3.0
    if args.child:
        print(json.dumps(trio.run(_measure, duration)))
        return 0
    lines = [
        "# libp2p operations per call (both ends), 64 callers, one process; "
        "cpu_us = process CPU per call",
        f"{'setting':<28} {'kind':<7} {'calls':>6} {'cpu us':>7} {'noise w':>8} "
        f"{'noise r':>8} {'yamux w':>8} {'yamux r':>8}",
    ]
    for setting in ("default", "PY_YAMUX_RELEASE_ON_READ=0"):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.pop("PY_YAMUX_RELEASE_ON_READ", None)
        if setting != "default":
            env["PY_YAMUX_RELEASE_ON_READ"] = "0"
        cmd = [sys.executable, "-m", "benchmarks.libp2p_io", "--child"]
        if args.quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            lines.append(f"{setting}: failed: {out.stderr[-300:]}")
            continue
        for row in json.loads(out.stdout.strip().splitlines()[-1]):
            lines.append(
                f"{setting:<28} {row['kind']:<7} {row['calls']:>6} {row['cpu_us']:>7.0f} "
                f"{row.get('noise_writes', 0):>8.2f} {row.get('noise_reads', 0):>8.2f} "
                f"{row.get('yamux_stream_writes', 0):>8.2f} "
                f"{row.get('yamux_stream_reads', 0):>8.2f}"
            )
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
