"""A damaged meta value nested too deep stops a node from starting (attack round 31).

Every meta value a node reads back is JSON it wrote itself (its marks of faulty payees,
the payees' minimum challenge periods, its address book, its provider stats, its response
retention, its claims' outcomes), and each reader promises to drop what does not parse.
But ``json.loads`` recurses once per level: a value nested 100,000 deep (a torn or
overwritten store page: 100 KB of ``[``) raised RecursionError out of `faulty_from_bytes`
and so out of `open_node` (the node could not run on that store at all, not even to close
its channels), and under pytest the C scanner overflowed the stack: the worker died of
SIGSEGV. On 2d94f57 (with the new ``p2pay.faulty_channels`` mark) the attacker measured
both; the other readers had the same flaw, and a damaged claim outcome made `Node.claims`
raise. Now every reader goes through `meta_json`, which measures the nesting in one pass
before parsing (`MAX_META_JSON_DEPTH`).

The node here starts on a store where every one of those values is nested 100,000 deep
(and once more with other damage), forgets them, and serves `claims` from the records.
"""

from __future__ import annotations

import pytest
import trio
from node_support import funded_ledger

from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import open_node
from p2pay.node.addrbook import META_KEY as ADDRBOOK_KEY
from p2pay.node.book import FAULTY_KEY, MINIMUMS_KEY, faulty_from_bytes, minimums_from_bytes
from p2pay.node.retention import RETENTION_KEY
from p2pay.node.watcher import outcome_key
from p2pay.store.base import MAX_META_JSON_DEPTH, Batch, ClaimRecord, meta_json
from p2pay.store.memory import MemoryStore

KEY = Keypair.from_seed(bytes([31]) * 32)
NESTED = b"[" * 100_000
CLAIM = bytes([7]) * 32


@pytest.mark.parametrize(
    "damaged",
    [
        NESTED,
        b'{"' + b"0" * 64 + b'":' + b"[" * 100_000,  # inside a valid-looking document
        b"\xff\xfe",  # not UTF-8
        b'"unterminated \\" [[[[',
        b'{"outcome": 1}',  # a document of the wrong shape
    ],
)
async def test_a_node_starts_on_a_store_whose_meta_values_are_damaged(damaged: bytes) -> None:
    store = MemoryStore()
    keys = (FAULTY_KEY, MINIMUMS_KEY, ADDRBOOK_KEY, RETENTION_KEY, outcome_key(CLAIM))
    await store.write(
        Batch(
            claims=[
                ClaimRecord(
                    claim_id=CLAIM,
                    role="claimant",
                    state="upheld",
                    request_hash=bytes(32),
                    updated_at=1,
                )
            ],
            meta=dict.fromkeys(keys, damaged),
        )
    )
    assert faulty_from_bytes(damaged) == {}
    assert minimums_from_bytes(damaged) == ({}, set())
    ledger = await funded_ledger(b"r31-damaged-meta", KEY)
    with trio.fail_after(30):
        async with open_node(key=KEY, ledger=ledger, store=store, network=MemoryNetwork()) as node:
            assert node.book.faulty_channels == {} and node.book.payee_minimums == {}
            (info,) = await node.claims()
            assert (info.claim_id, info.outcome, info.status) == (CLAIM, "upheld", "")


def test_meta_json_measures_the_nesting_before_it_parses() -> None:
    """Brackets inside strings (escaped quotes too) do not count; one level too many is
    refused as a ValueError, whatever follows."""
    deep: list[object] = []
    for _ in range(MAX_META_JSON_DEPTH - 1):
        deep = [deep]
    assert meta_json(b"[" * MAX_META_JSON_DEPTH + b"]" * MAX_META_JSON_DEPTH) == deep
    doc = b'{"a": ["[[[[[[[[[[[[[[[[[[[[[[\\"[[[[[[[[[[[[[[[[\\\\", {"b": "}}}]]]"}]}'
    assert meta_json(doc) == {"a": ["[" * 22 + '"' + "[" * 16 + "\\", {"b": "}}}]]]"}]}
    with pytest.raises(ValueError, match="nested deeper than"):
        meta_json(b"[" * (MAX_META_JSON_DEPTH + 1) + b"]" * (MAX_META_JSON_DEPTH + 1))
    with pytest.raises(ValueError, match="nested deeper than"):
        meta_json(b'"\\\\"' + NESTED)  # the string ends at its second quote
    with pytest.raises(ValueError):
        meta_json(b'"\\"' * 100_000)  # one unterminated string: no quadratic scan
