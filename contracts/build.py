"""Compile the settlement contracts and write their ABI and bytecode beside them.

Usage: ``python contracts/build.py`` (rewrite the artifacts) or ``python contracts/build.py
--check`` (exit 1 if the committed artifacts differ from a fresh build: what the drift test
runs). Needs the ``vyper`` package at the exact version pinned below (``pip install
-e '.[dev]'`` brings it): the bytecode depends on the compiler version.

Each artifact ``p2pay/ledger/contracts/<Name>.json`` holds ``abi``, ``bytecode`` (deploy code, hex
with 0x), ``vyper`` (compiler version), ``evm_version`` and ``source_sha256`` (of the .vy
file), so a reader can tell which source an artifact came from.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "p2pay" / "ledger" / "contracts"  # package data: shipped by pip install
CONTRACTS = ("Settlement", "TestToken")
VYPER_VERSION = "0.4.3"
EVM_VERSION = "cancun"


def compile_contract(name: str) -> dict[str, Any]:
    """Compile ``contracts/<name>.vy``; returns the artifact dict.

    Raises:
        RuntimeError: the installed vyper is not `VYPER_VERSION`.
    """
    import vyper  # the compiler: a build/test dependency only

    version = vyper.__version__.split("+")[0]
    if version != VYPER_VERSION:
        raise RuntimeError(f"vyper {VYPER_VERSION} needed, {vyper.__version__} installed")
    path = HERE / f"{name}.vy"
    source = path.read_text(encoding="utf-8")
    out = vyper.compile_code(
        source,
        contract_path=path.name,
        output_formats=["abi", "bytecode"],
    )
    return {
        "contract": name,
        "vyper": VYPER_VERSION,
        "evm_version": EVM_VERSION,
        "source_sha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
        "abi": out["abi"],
        "bytecode": out["bytecode"],
    }


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    BUILD.mkdir(exist_ok=True)
    drift = []
    for name in CONTRACTS:
        text = render(compile_contract(name))
        target = BUILD / f"{name}.json"
        if check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                drift.append(name)
        else:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target.relative_to(HERE.parent)}")
    if drift:
        print(f"artifacts out of date: {', '.join(drift)} (run python contracts/build.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
