"""Timed waits that the run's clock may serve itself.

The simulator's clock (`p2pay.sim.clock.SimClock`) wakes the simulation's timed waits
itself instead of trio's deadline machinery (a cancel scope entered, expired by raising and
catching `trio.Cancelled`, exited): the same instant, about a third of the CPU (7 against
20 us a wait, measured). The code that waits often in a simulation (the memory transport's
frame arrivals, a call's deadline, the watcher's rest, the idle timer) asks the clock with
`current_wakes` and, under any other clock (every real node), waits with trio's own code.
The clock is recognised by its ``sim_wakes`` attribute, so nothing here imports the
simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

__all__ = ["ClockWakes", "current_wakes", "sleep_until"]


class ClockWakes(Protocol):
    """What a clock that wakes sleepers itself offers (`p2pay.sim.clock.SimClock`)."""

    def wake_at(self, deadline: float, fn: Callable[[], None]) -> list[Any]:
        """Call ``fn()`` (it reschedules tasks) once the clock reaches `deadline`."""
        ...

    def cancel(self, wake: list[Any]) -> None:
        """Forget a wake `wake_at` returned (nothing happens if it was called already)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """`trio.sleep_until` on these wakes."""
        ...


def current_wakes() -> ClockWakes | None:
    """The current run's clock, if it wakes sleepers itself (the simulator's), else None."""
    wakes: ClockWakes | None = getattr(trio.lowlevel.current_clock(), "sim_wakes", None)
    return wakes


async def sleep_until(deadline: float) -> None:
    """`trio.sleep_until(deadline)`, on the clock's own wakes when it has them."""
    wakes = current_wakes()
    if wakes is None:
        await trio.sleep_until(deadline)
    else:
        await wakes.sleep_until(deadline)
