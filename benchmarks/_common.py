"""Shared pieces: the result record, machine description, timing and profile helpers."""

from __future__ import annotations

import cProfile
import datetime
import io
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Fixed test keys (common brief): ALICE pays, BOB serves.
ALICE_SEED = bytes([1]) * 32
BOB_SEED = bytes([2]) * 32
CAROL_SEED = bytes([3]) * 32
MALLORY_SEED = bytes([4]) * 32

TOKEN = 10**24
MICRO = 10**18  # 1 micro-token in yocto: the scale-1000 scenario's echo price
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

PASS = "PASS"
FAIL = "FAIL"
NOT_MEASURED = "NOT MEASURED"


@dataclass
class Result:
    """One measured figure against its target.

    ``ratio`` is None only when the figure could not be measured (``status`` is then
    NOT MEASURED and ``notes`` says why): a benchmark never prints a made-up number.
    """

    name: str
    title: str
    target_op: str  # ">=" or "<="
    target: float
    ratio: float | None
    ratio_desc: str  # what the ratio divides by what
    figures: dict[str, Any] = field(default_factory=dict)  # absolute figures and spreads
    notes: list[str] = field(default_factory=list)
    status: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            self.status = self.verdict()

    def verdict(self) -> str:
        if self.ratio is None:
            return NOT_MEASURED
        ok = self.ratio >= self.target if self.target_op == ">=" else self.ratio <= self.target
        return PASS if ok else FAIL

    @property
    def target_text(self) -> str:
        return f"{self.target_op} {fmt(self.target)}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_text"] = self.target_text
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        data = dict(data)
        data.pop("target_text", None)
        return cls(**data)


def not_measured(
    name: str, title: str, op: str, target: float, desc: str, why: str, **figures: Any
) -> Result:
    return Result(
        name=name,
        title=title,
        target_op=op,
        target=target,
        ratio=None,
        ratio_desc=desc,
        figures=dict(figures),
        notes=[f"not measured: {why}"],
    )


def fmt(value: Any) -> str:
    """Short human text for a figure."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) < 10**7 else f"{value:.3g}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


# ---------------------------------------------------------------------------
# the machine


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        return (0.0, 0.0, 0.0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in load_average()],
        "p2pay_code": code_version(),
    }


def code_version() -> str:
    """A short hash of every p2pay/**/*.py as it is on disk now (the tree is not
    committed while engineers work, so this is what ties a figure to the code)."""
    import hashlib

    root = Path(__file__).resolve().parent.parent / "p2pay"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return 0


# ---------------------------------------------------------------------------
# statistics


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def spread(values: list[float]) -> str:
    """``median [min..max]`` of a list of figures."""
    if not values:
        return "-"
    return f"{fmt(median(values))} [{fmt(min(values))}..{fmt(max(values))}]"


# ---------------------------------------------------------------------------
# profiles

_OTHER = "other (stdlib, builtins)"

#: (bucket, predicate on (file, function)) in priority order; first match wins.
_BUCKETS: list[tuple[str, Any]] = [
    ("ed25519 verify (libsodium crypto_sign_open)", lambda f, n: "crypto_sign_open" in n),
    ("ed25519 sign (libsodium crypto_sign)", lambda f, n: n.endswith("crypto_sign>")),
    ("blake2b", lambda f, n: "blake2b" in n),
    ("p2pay.core.codec (CBOR)", lambda f, n: f.endswith("p2pay/core/codec.py")),
    ("p2pay.core.messages (build/validate)", lambda f, n: f.endswith("p2pay/core/messages.py")),
    ("p2pay.core.channel (accounting)", lambda f, n: f.endswith("p2pay/core/channel.py")),
    ("PyNaCl Python wrappers", lambda f, n: "/nacl/" in f),
    ("p2pay.core.identity + base58 (PeerIDs)", lambda f, n: "identity.py" in f or "base58" in f),
    ("p2pay.core other", lambda f, n: "p2pay/core/" in f),
    ("p2pay.store (validate, encode, write)", lambda f, n: "p2pay/store/" in f),
    ("sqlite3 (C)", lambda f, n: "sqlite3" in n),
    ("p2pay.persist (group commit)", lambda f, n: f.endswith("p2pay/persist.py")),
    ("p2pay.node", lambda f, n: "p2pay/node/" in f and not f.endswith("/watcher.py")),
    ("p2pay.watcher", lambda f, n: f.endswith("p2pay/node/watcher.py")),
    ("p2pay.ledger + settlement", lambda f, n: "p2pay/ledger/" in f or "settlement" in f),
    ("p2pay.net (framing, streams)", lambda f, n: "p2pay/net/" in f),
    ("p2pay.sim", lambda f, n: "p2pay/sim/" in f),
    ("libp2p yamux", lambda f, n: "libp2p/stream_muxer" in f),
    (
        "libp2p noise + AEAD",
        lambda f, n: "libp2p/security" in f or "/noise/" in f or "cryptography" in f,
    ),
    ("libp2p other", lambda f, n: "/libp2p/" in f or "multiaddr" in f),
    ("trio (scheduler, sockets, sync)", lambda f, n: "/trio/" in f or "outcome" in f),
    ("I/O syscalls (epoll, socket)", lambda f, n: "socket" in n or "select" in n or "epoll" in n),
    ("benchmark harness", lambda f, n: "/benchmarks/" in f),
]


def _bucket(file: str, func: str) -> str:
    for name, pred in _BUCKETS:
        if pred(file, func):
            return name
    return _OTHER


def buckets(stats: pstats.Stats) -> list[tuple[str, float, float]]:
    """Self time grouped by component: [(bucket, seconds, share of total)], largest first.

    Self time of a stdlib or builtin function (``isinstance``, ``len``, dataclass
    machinery...) is charged to the components that called it, in proportion to the
    time spent under each caller (up to four levels up), so a component's share
    includes the builtins it leans on.
    """
    table = stats.stats  # type: ignore[attr-defined]
    raw: dict[str, float] = {}

    def bucket_of(key: tuple[str, int, str]) -> str:
        file, _line, func = key
        return _bucket(file, f"{file}:{func}" if file != "~" else func)

    def charge(key: tuple[str, int, str], amount: float, depth: int) -> None:
        b = bucket_of(key)
        entry = table.get(key)
        callers = entry[4] if entry is not None else {}
        if b != _OTHER or depth >= 4 or not callers:
            raw[b] = raw.get(b, 0.0) + amount
            return
        weights = {c: v[2] if isinstance(v, tuple) else 0.0 for c, v in callers.items()}
        total = sum(weights.values())
        if total <= 0:
            raw[b] = raw.get(b, 0.0) + amount
            return
        for caller, w in weights.items():
            charge(caller, amount * w / total, depth + 1)

    for key, (_cc, _nc, tt, _ct, _callers) in table.items():
        charge(key, tt, 0)
    grand = sum(raw.values())
    rows = sorted(raw.items(), key=lambda kv: -kv[1])
    return [(b, s, s / grand if grand else 0.0) for b, s in rows]


def new_profiler(*, cpu_clock: bool = True) -> cProfile.Profile:
    """A profiler timed by this thread's CPU clock (default): time spent waiting (epoll,
    other processes on a loaded machine, SQLite commits in a worker thread) is not
    counted, so shares are shares of the CPU this thread spent. That clock is a system
    call per profiler event, which inflates code made of many tiny calls (trio's sync
    primitives, the CBOR encoder) several times more than C calls (libsodium): use the
    shares to find *where*, and the unprofiled timings (payee_cost components, ablations)
    for *how much*. ``cpu_clock=False``: cProfile's own cheap wall clock, for tight CPU
    loops with no waiting."""
    return cProfile.Profile(time.thread_time) if cpu_clock else cProfile.Profile()


def profile_text(
    prof: cProfile.Profile,
    title: str,
    *,
    per: int = 0,
    per_label: str = "call",
    top: int = 25,
    timer: str = "main-thread CPU time",
) -> tuple[str, list[tuple[str, float, float]]]:
    """A profile as text: self time by component, then the top functions by cumulative
    and by self time. ``per`` divides seconds into microseconds per unit of work."""
    stats = pstats.Stats(prof)
    rows = buckets(stats)
    total = sum(s for _b, s, _p in rows)
    out = io.StringIO()
    out.write(f"# {title}\n")
    out.write(f"# total profiled self time {total:.3f} s")
    if per:
        out.write(f" over {per:,} {per_label}s = {total / per * 1e6:.0f} us per {per_label}")
    out.write(
        f" (timer: {timer}; cProfile overhead included and it inflates many-small-call "
        "Python code far more than C calls, so read shares as where, not how much)\n\n"
    )
    out.write("## self time by component\n")
    for name, secs, share in rows:
        extra = f"  {secs / per * 1e6:8.1f} us/{per_label}" if per else ""
        out.write(f"{share * 100:6.1f}%  {secs:8.3f} s{extra}  {name}\n")
    for key, label in (("cumulative", "cumulative time"), ("tottime", "self time")):
        out.write(f"\n## top {top} functions by {label}\n")
        buf = io.StringIO()
        s = pstats.Stats(prof, stream=buf)
        s.strip_dirs().sort_stats(key).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        out.write(text[start:] if start >= 0 else text)
    return out.getvalue(), rows


def write_profile(profile_dir: Path | None, filename: str, text: str) -> str | None:
    if profile_dir is None:
        return None
    profile_dir.mkdir(parents=True, exist_ok=True)
    path = profile_dir / filename
    path.write_text(text, encoding="utf-8")
    return str(path)


def top_buckets(rows: list[tuple[str, float, float]], n: int = 6) -> list[str]:
    return [f"{share * 100:.0f}% {name}" for name, _s, share in rows[:n]]
