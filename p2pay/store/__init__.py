"""The node's durable store: what a node must not forget (design.md "local store").

`Store` is the protocol; `MemoryStore` (tests, simulations) and `SqliteStore` (one file
per node, WAL, synchronous=FULL, group commit) implement it. `p2pay.store.conformance`
holds the shared test suite, for anyone writing another backend.
"""

from p2pay.store.base import (
    Batch,
    ClaimRecord,
    FloorVoucher,
    OutgoingRequest,
    PayeeRecord,
    PayerRecord,
    RequestUpdate,
    Store,
    StoreClosed,
    StoredResponse,
    StoreError,
)
from p2pay.store.memory import MemoryStore
from p2pay.store.sqlite import SqliteStore

__all__ = [
    "Batch",
    "ClaimRecord",
    "FloorVoucher",
    "MemoryStore",
    "OutgoingRequest",
    "PayeeRecord",
    "PayerRecord",
    "RequestUpdate",
    "SqliteStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoredResponse",
]
