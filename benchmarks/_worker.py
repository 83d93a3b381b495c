"""``python -m benchmarks._worker NAME SIZE OUT.json [PROFILE_DIR]``: run one benchmark in
this (fresh) process and write its results as JSON (used by ``python -m benchmarks``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.__main__ import run_inline


def main(argv: list[str]) -> int:
    name, size, out = argv[0], argv[1], Path(argv[2])
    profile_dir = Path(argv[3]) if len(argv) > 3 else None
    results = run_inline(name, size, profile_dir)
    out.write_text(json.dumps([r.to_dict() for r in results], default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
