"""Settlement ledgers: one async interface (`Ledger`), several backends.

* `MemoryLedger`: the whole state in memory (tests, simulations).
* `SqliteLedger`: one durable SQLite file, shared by several processes on one machine.

Both run the same pure rules (`p2pay.core.settlement.apply`); the conformance suite in
`p2pay.testing` checks any backend against specs/settlement.md.
"""

from p2pay.ledger.base import Ledger, LedgerFileError, OpLedger, Receipt, Totals, totals_of
from p2pay.ledger.memory import MemoryLedger
from p2pay.ledger.sqlite import SqliteLedger

__all__ = [
    "Ledger",
    "LedgerFileError",
    "MemoryLedger",
    "OpLedger",
    "Receipt",
    "SqliteLedger",
    "Totals",
    "totals_of",
]
