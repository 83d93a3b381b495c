"""p2pay.core is pure: no I/O, clock, randomness, trio, libp2p or sqlite (conventions #1).

Two checks, because neither is enough alone:

* importing every core module in a fresh interpreter must not load an I/O framework
  (trio, libp2p, sqlite3, socket, asyncio, multiaddr, ...);
* reading the clock or a random source cannot be seen from imports (``time`` is loaded by
  the interpreter anyway), so the source of every core module is parsed and any import
  of, or call to, an impure module or builtin fails the test.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "p2pay" / "core"
CORE_FILES = sorted(CORE.glob("*.py"))
CORE_MODULES = [
    "p2pay.core" if path.stem == "__init__" else f"p2pay.core.{path.stem}" for path in CORE_FILES
]

#: Must not be in sys.modules after importing the whole core.
FORBIDDEN_LOADED = frozenset(
    {
        "trio",
        "libp2p",
        "sqlite3",
        "_sqlite3",
        "socket",
        "_socket",
        "asyncio",
        "multiaddr",
        "threading",
        "subprocess",
        "random",
        "secrets",
        "web3",
    }
)

#: Must not be imported by core source (top-level package name).
FORBIDDEN_IMPORTS = frozenset(
    {
        "time",
        "datetime",
        "random",
        "secrets",
        "os",
        "socket",
        "threading",
        "subprocess",
        "trio",
        "libp2p",
        "sqlite3",
        "asyncio",
        "multiaddr",
        "pathlib",
        "shutil",
        "tempfile",
        "uuid",
        "signal",
        "select",
        "selectors",
        "ssl",
        "urllib",
        "http",
        "importlib",
        "multiprocessing",
        "concurrent",
        "logging",
        "web3",
    }
)

#: Builtins that do I/O or import by name.
FORBIDDEN_CALLS = frozenset({"open", "input", "print", "__import__", "breakpoint", "exec", "eval"})


def impurities(source: str, filename: str = "<core>") -> list[str]:
    """Every forbidden import or call in `source`, as ``"file:line: what"``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in FORBIDDEN_IMPORTS:
                found.append(f"{filename}:{getattr(node, 'lineno', 0)}: import {name}")
        if isinstance(node, ast.Call):
            func = node.func
            called = None
            if isinstance(func, ast.Name):
                called = func.id
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in {"builtins", "io", "codecs"}
            ):
                called = func.attr  # builtins.open(...), io.open(...)
            if called in FORBIDDEN_CALLS:
                found.append(f"{filename}:{getattr(node, 'lineno', 0)}: call {called}()")
    return found


def test_core_has_the_expected_modules() -> None:
    stems = {path.stem for path in CORE_FILES}
    assert {"amounts", "identity", "errors", "messages", "channel", "codec"} <= stems


def test_importing_the_core_loads_no_io_framework() -> None:
    code = (
        "".join(f"import {name}; " for name in CORE_MODULES)
        + "import sys; print(sorted(sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = ast.literal_eval(result.stdout.strip())
    assert isinstance(loaded, list) and "p2pay.core.channel" in loaded
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_LOADED)
    assert bad == [], f"importing p2pay.core loads {bad}"


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_source_is_pure(path: Path) -> None:
    assert impurities(path.read_text(encoding="utf-8"), path.name) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import time as clock",
        "from time import monotonic",
        "from datetime import datetime",
        "import os.path",
        "from os import urandom",
        "import random",
        "import secrets",
        "import socket",
        "import threading",
        "import subprocess",
        "import trio",
        "from libp2p.peer.id import ID",
        "import sqlite3",
        "def f():\n    import asyncio\n",
        "data = open('x').read()",
        "with open('x') as f:\n    pass",
        "mod = __import__('time')",
        "import builtins\nbuiltins.open('x')",
        "print('hello')",
    ],
)
def test_the_scanner_catches_impurities(source: str) -> None:
    assert impurities(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import hashlib",
        "from p2pay.core.errors import DecodeError",
        "from . import codec",
        "timeout = 3",
        "def open_channel(): pass\nopen_channel()",
        "x.opened()",
        "channel.open(deposit=1)",
        "import dataclasses, enum, typing",
    ],
)
def test_the_scanner_allows_pure_code(source: str) -> None:
    assert impurities(source) == []
