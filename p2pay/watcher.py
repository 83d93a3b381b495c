"""Kept for imports from before the node became a package: the watcher is
`p2pay.node.watcher` (this module only re-exports it)."""

from p2pay.node.watcher import (
    CURSOR_KEY,
    Watcher,
    check_claim_answer,
    claim_outcome,
    outcome_key,
    redeem_reason,
)

__all__ = [
    "CURSOR_KEY",
    "Watcher",
    "check_claim_answer",
    "claim_outcome",
    "outcome_key",
    "redeem_reason",
]
