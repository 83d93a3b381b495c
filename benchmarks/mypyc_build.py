"""Build a copy of the source tree with some p2pay modules compiled by mypyc (issue 18).

``python -m benchmarks.mypyc_build OUT [--modules core|async] [--keep]``: copies ``p2pay/``
and ``pyproject.toml`` to ``OUT`` (a directory outside git's view, e.g. ``/tmp/p2pay-mypyc``),
links ``benchmarks/``, ``simulations/`` and copies ``tests/`` beside them, applies the few
source edits mypyc needs (below), and runs ``mypyc`` there, which leaves one ``.so`` per
compiled module next to its ``.py`` (the ``.so`` is imported first). Run anything against it
with ``cd OUT && PYTHONPATH=OUT ...``; ``python -m benchmarks.ab_trees . OUT`` alternates
CPU runs of this tree and that one. Nothing in the working tree is changed.

The edits, each needed to compile or to run compiled (measured 2026-12-06, mypy 2.4.1):

* ``messages.py``: ``cls.__new__(cls)`` on a frozen dataclass crashes mypyc (an internal
  error, "'Request' has no attribute '__new__'"): the call goes through ``Any``;
  ``_with_signature`` walks ``cls.__slots__``, which a compiled (native) class does not
  have: it walks ``__dataclass_fields__`` (the same names).
* ``store/base.py``: ``@runtime_checkable`` on the ``Store`` protocol raises ``TypeError``
  at import when compiled; nothing calls ``isinstance(x, Store)``, the decorator is dropped.

``--modules core`` (the default) compiles the pure, synchronous modules (about 65 s of CPU
here); ``async`` adds the hot trio modules that compile (``net/memory.py`` does not: async
generators). What compiling changes in behaviour (wrong-typed arguments and decoded fields
raise ``TypeError`` or, for ``True``/``False`` where an ``int`` is annotated, are taken as
1/0; deep recursion overflows the C stack; compiled frozen dataclasses cannot be deep-copied
or subclassed by interpreted code) is in the report of issue 18's mypyc session: the tree is
for measuring, not for running a node.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CORE = [
    "p2pay/core/codec.py",
    "p2pay/core/amounts.py",
    "p2pay/core/messages.py",
    "p2pay/core/channel.py",
    "p2pay/core/session.py",
    "p2pay/core/settlement.py",
    "p2pay/core/signing.py",
    "p2pay/core/identity.py",
    "p2pay/store/base.py",
]
ASYNC = [
    "p2pay/store/memory.py",
    "p2pay/persist.py",
    "p2pay/ledger/memory.py",
    "p2pay/wakes.py",
    "p2pay/sim/clock.py",
    "p2pay/node/client.py",
    "p2pay/node/server.py",
    "p2pay/node/outbox.py",
    "p2pay/node/book.py",
]

# (file, old, new, expected count)
EDITS = [
    ("p2pay/core/messages.py", "= cls.__new__(cls)\n", "= cast(Any, cls).__new__(cls)\n", 4),
    (
        "p2pay/core/messages.py",
        "    for name in cls.__slots__:\n",
        "    for name in cls.__dataclass_fields__:\n",
        1,
    ),
    (
        "p2pay/core/messages.py",
        '    if "_frame" in cls.__slots__:\n',
        '    if "_frame" in cls.__dataclass_fields__:\n',
        1,
    ),
    ("p2pay/store/base.py", "@runtime_checkable\nclass Store(", "class Store(", 1),
    ("pyproject.toml", "warn_unused_configs = true", "warn_unused_configs = false", 1),
]


def edit(out: Path) -> None:
    for name, old, new, count in EDITS:
        path = out / name
        text = path.read_text(encoding="utf-8")
        found = text.count(old)
        if found != count:
            raise SystemExit(f"{name}: expected {count} of {old!r}, found {found}")
        path.write_text(text.replace(old, new), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mypyc_build")
    parser.add_argument("out", type=Path)
    parser.add_argument("--modules", choices=["core", "async"], default="core")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit("OUT must be outside the working tree")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(ROOT / "p2pay", out / "p2pay", ignore=ignore)
    shutil.copytree(ROOT / "tests", out / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", out / "pyproject.toml")
    for name in ("benchmarks", "simulations", "specs"):
        (out / name).symlink_to(ROOT / name)
    edit(out)
    modules = CORE + (ASYNC if args.modules == "async" else [])
    mypyc = Path(sys.executable).with_name("mypyc")
    t0 = time.perf_counter()
    subprocess.run([str(mypyc), *modules], cwd=out, check=True, stdout=subprocess.DEVNULL)
    print(f"compiled {len(modules)} modules in {time.perf_counter() - t0:.1f} s into {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
