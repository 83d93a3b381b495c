"""A corrupted ``p2pay.faulty_channels`` meta value stops the node from starting (attack
round 31).

`faulty_from_bytes` (p2pay/node/book.py) promises it never raises on what the store holds:
a mark that does not parse is dropped, logged. It catches ValueError and
UnicodeDecodeError from ``json.loads``, but a value nested deeper than the interpreter's
recursion limit (here 100,000 ``[``: 100 KB, e.g. a torn or overwritten store page) makes
``json.loads`` raise RecursionError, and with a deeper stack (under pytest) the C scanner
overflows it: the process dies of SIGSEGV. `ChannelBook.load` reads the value as the node
starts, so the node cannot run on that store at all, not even to close its channels.

Fails on 2d94f57 (1b7fdcf, "A faulty payee"). Measured with Python 3.11.7: a plain
``python -c`` gets RecursionError ("maximum recursion depth exceeded while decoding a
JSON array") out of `faulty_from_bytes` and of `open_node`; inside pytest the worker
crashed ("Fatal Python error: Segmentation fault"), so both checks run in a child
process here. The other malformed values tried (invalid UTF-8, a list, bad hex keys,
``1e999999``, ``null``) are dropped as documented.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    import trio
    sys.path.insert(0, {support!r})
    from node_support import funded_ledger
    from p2pay.core.identity import Keypair
    from p2pay.net.memory import MemoryNetwork
    from p2pay.node import open_node
    from p2pay.node.book import FAULTY_KEY, faulty_from_bytes
    from p2pay.store.base import Batch
    from p2pay.store.memory import MemoryStore

    NESTED = b"[" * 100_000
    assert faulty_from_bytes(NESTED) == {{}}
    print("parsed")

    async def main():
        key = Keypair.from_seed(bytes([31]) * 32)
        ledger = await funded_ledger(b"r31-nested", key)
        store = MemoryStore()
        await store.write(Batch(meta={{FAULTY_KEY: NESTED}}))
        with trio.fail_after(30):
            async with open_node(
                key=key, ledger=ledger, store=store, network=MemoryNetwork()
            ) as node:
                assert node.book.faulty_channels == {{}}
        print("started")

    trio.run(main)
    """
).format(support=str(ROOT / "tests" / "integration"))


def test_a_node_starts_on_a_store_whose_faulty_mark_is_nested_too_deep() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["parsed", "started"]
