"""Helpers the node integration tests share (imported as ``node_support``, like
``hardening_support`` in tests/hardening)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


async def wait_until(predicate: Callable[[], Any], timeout: float = 60.0) -> None:
    """Wait for a condition (a value or an awaitable), within a bound generous for a
    loaded machine."""
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.02)
