"""The simulator's clock: trio's autojumping `MockClock` that also wakes sleepers itself.

Theory of operation
-------------------
Under ``MockClock(autojump_threshold=0)`` every timed wait is a `trio.CancelScope` with a
deadline: entered (registered in trio's deadline heap), expired (the scope is cancelled,
the task's abort function is called, it reschedules the task), exited, and the jump to
the deadline costs the run loop one more, empty, pass. A simulation waits that way a
few times per request (the workload's arrivals, each handler's work, each frame's
arrival on the memory transport), so `SimClock` keeps those waits in a heap of its own:

* `wake_at(deadline, fn)` holds ``fn`` (which reschedules a task) until the clock reaches
  `deadline`; `cancel` forgets it (lazily: the heap entry stays, marked dead).
* When every task waits, trio asks the clock to jump (`_autojump`). `SimClock` jumps,
  exactly as `MockClock` computes it, to the earlier of trio's next deadline and its own
  next wake, and calls every ``fn`` whose deadline has come, in (deadline, order of
  `wake_at`) order; those tasks run in the pass that follows. Trio's own deadlines (timeouts
  in the node's code) still expire in trio's way.
* `sleep_until` is `trio.sleep_until` on these wakes: an outer cancellation is raised as
  usual and removes the wake.

Time still moves only when every task waits, to the next instant something is due, so a
simulation sees the same instants; tasks due together may run in another order than
under `MockClock` (the simulator's report does not depend on that order).

`current_time` returns the virtual time without reading the real clock (the rate is 0: the
same value `MockClock` computes). Both rely on `MockClock`'s private fields and its
`_autojump` hook, as `p2pay.sim.run` relies on trio's scheduler RNG.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any, NoReturn

import trio
import trio.testing
from trio._core import _run

import p2pay.wakes

__all__ = ["SimClock", "current_wakes"]

#: A pending wake: [deadline, sequence number, callback or None once cancelled or done].
Wake = list[Any]


class SimClock:
    """``MockClock(autojump_threshold=0)`` with cheap timed wakes (module docstring).

    `MockClock` cannot be subclassed (trio marks it final), so this wraps one and replaces
    two of its methods on the instance; pass `trio_clock` to `trio.run`. Code running
    under it finds it with `current_wakes`.
    """

    def __init__(self) -> None:
        self.trio_clock = trio.testing.MockClock(autojump_threshold=0)
        self._wakes: list[Wake] = []
        self._order = itertools.count()
        clock: Any = self.trio_clock
        clock._autojump = self._autojump  # trio's run loop calls it when every task waits
        clock.current_time = self.current_time
        clock.sim_wakes = self

    def current_time(self) -> float:
        clock: Any = self.trio_clock
        if clock._rate == 0.0:  # MockClock's value: virtual base + 0.0 * real offset
            return float(clock._virtual_base)
        return trio.testing.MockClock.current_time(clock)

    def wake_at(self, deadline: float, fn: Callable[[], None]) -> Wake:
        """Call ``fn()`` (from the run loop, between passes) once the clock reaches
        `deadline`; it should only reschedule tasks. Returns a handle for `cancel`."""
        wake: Wake = [deadline, next(self._order), fn]
        heapq.heappush(self._wakes, wake)
        return wake

    @staticmethod
    def cancel(wake: Wake) -> None:
        """Forget a wake (nothing happens if it was called already)."""
        wake[2] = None

    def _fire(self, now: float) -> bool:
        wakes = self._wakes
        fired = False
        while wakes and wakes[0][0] <= now:
            fn = heapq.heappop(wakes)[2]
            if fn is not None:
                fn()
                fired = True
        return fired

    def _autojump(self) -> None:
        # Called by trio's run loop when no task is runnable (autojump_threshold=0).
        # (Almost every call jumps: the wake due at once, a frame sent with no latency, is
        # rare, so it is looked for without calling `_fire`; `now` is read once. Same
        # jumps and wakes as before; 480 k calls in scale-1000, measured in the commit.)
        wakes = self._wakes
        while wakes and wakes[0][2] is None:
            heapq.heappop(wakes)
        now = self.current_time()
        if wakes and wakes[0][0] <= now:
            self._fire(now)  # a live wake is due: its tasks run, no jump
            return
        jump = self._trio_next_deadline() - now
        if wakes and wakes[0][0] - now < jump:
            jump = wakes[0][0] - now
        if 0 < jump < math.inf:
            self.trio_clock.jump(jump)
            self._fire(self.current_time())

    @staticmethod
    def _trio_next_deadline() -> float:
        """The run loop's next deadline (what `current_statistics` reports relative to now,
        read without building the statistics: a trio internal, with that as fallback)."""
        try:
            deadline: float = _run.GLOBAL_RUN_CONTEXT.runner.deadlines.next_deadline()
        except AttributeError:  # pragma: no cover - another trio version
            stats = trio.lowlevel.current_statistics()
            deadline = trio.current_time() + stats.seconds_to_next_deadline
        return deadline

    async def sleep_until(self, deadline: float) -> None:
        """`trio.sleep_until(deadline)` on this clock's wakes (the run's clock must be
        this one)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if deadline <= self.current_time():
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        task = trio.lowlevel.current_task()
        wake = self.wake_at(deadline, lambda: trio.lowlevel.reschedule(task))

        def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
            wake[2] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


def current_wakes() -> SimClock | None:
    """The `SimClock` the current trio run uses, or None (another clock; the node's code
    asks `p2pay.wakes.current_wakes`, which finds it the same way)."""
    wakes = p2pay.wakes.current_wakes()
    return wakes if isinstance(wakes, SimClock) else None
