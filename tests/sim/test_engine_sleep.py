"""The simulator's cheap sleep: same behaviour as trio.sleep_until."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pay.sim.engine import sleep_until


async def test_sleep_until_wakes_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    await sleep_until(start + 2.5)
    assert trio.current_time() == pytest.approx(start + 2.5)
    with trio.testing.assert_checkpoints():
        await sleep_until(start)  # already past: a checkpoint, no wait
    assert trio.current_time() == pytest.approx(start + 2.5)


async def test_sleep_until_raises_an_outer_cancel(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    with trio.move_on_after(1.0) as scope:
        await sleep_until(start + 5.0)
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(start + 1.0)
    with trio.CancelScope() as scope:
        scope.cancel()
        await sleep_until(start)  # cancelled before: raises even with a past deadline
    assert scope.cancelled_caught


async def test_many_sleepers_wake_in_deadline_order(autojump_clock: trio.testing.MockClock) -> None:
    woke: list[float] = []

    async def sleeper(t: float) -> None:
        await sleep_until(t)
        woke.append(t)

    async with trio.open_nursery() as nursery:
        for t in (3.0, 1.0, 2.0, 1.5):
            nursery.start_soon(sleeper, trio.current_time() + t)
    assert woke == sorted(woke) and len(woke) == 4
