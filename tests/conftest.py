"""Shared fixtures and hooks. (Markers such as `slow` are registered in pyproject.toml.)"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
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


def _skip_reason(exc: BaseException | None) -> str | None:
    """The message of the first `pytest.skip` with one, searched through exception groups
    and the exceptions an exception was raised while handling."""
    seen: set[int] = set()
    queue = [exc]
    while queue:
        e = queue.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, pytest.skip.Exception) and e.msg:
            return e.msg
        if isinstance(e, BaseExceptionGroup):
            queue.extend(e.exceptions)
        queue.extend((e.__cause__, e.__context__))
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Every skip states its reason (issue 16). pytest-trio runs an async test and its
    async fixtures in one `trio.run`; a `pytest.skip(reason)` raised there (a fixture
    finding anvil missing, say) reaches it inside an exception group, and it re-raises a
    bare `pytest.skip()`, so `pytest -rs` printed "Skipped" and no reason. Put the reason
    back from the original exception."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or call.excinfo is None or not isinstance(report.longrepr, tuple):
        return
    message = report.longrepr[2]
    if message.strip() not in ("Skipped", "Skipped:"):
        return
    reason = _skip_reason(call.excinfo.value)
    if reason:  # shown at the test, not at pytest-trio's wrapper
        path, lineno, _name = item.location
        report.longrepr = (path, (lineno or 0) + 1, f"Skipped: {reason}")
