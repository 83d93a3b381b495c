"""Shared fixtures. (Markers such as `slow` are registered in pyproject.toml.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2pay.core.settlement import Params
from p2pay.ledger import Ledger, MemoryLedger, SqliteLedger


class LedgerFactory:
    """Makes fresh dev ledgers of one backend (`factory(clock, dev=True)`), and remembers them."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.made: list[Ledger] = []

    async def __call__(
        self, clock: Callable[[], int], *, dev: bool = True, **params: Any
    ) -> Ledger:
        ledger: Ledger
        if self.backend == "memory":
            ledger_id = b"p2pay:memory:" + os.urandom(16)
            ledger = MemoryLedger(Params(ledger_id=ledger_id, dev=dev, **params), clock=clock)
        else:
            path = self.tmp_path / f"ledger{len(self.made)}.db"
            ledger = await SqliteLedger.create(path, dev=dev, clock=clock, **params)
        self.made.append(ledger)
        return ledger


@pytest.fixture(params=["memory", "sqlite"])
def ledger_factory(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerFactory:
    """A `LedgerFactory` for each backend in turn (the test runs once per backend)."""
    return LedgerFactory(request.param, tmp_path)
