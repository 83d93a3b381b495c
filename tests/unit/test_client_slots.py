"""`p2pay.node.client._take`: a call's slot on its connection (``max_in_flight``), taken
without a scheduling point when one is free; otherwise what `trio.Semaphore.acquire` does."""

from __future__ import annotations

import trio
import trio.testing

from p2pay.node.client import _take


def test_a_free_slot_is_taken_without_yielding() -> None:
    async def main() -> None:
        slots = trio.Semaphore(2)
        ran: list[str] = []

        async def other() -> None:
            ran.append("other")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await _take(slots)  # no scheduling point: `other` has not run yet
            assert ran == [] and slots.value == 1
        assert ran == ["other"]

    trio.run(main)


def test_a_pending_cancellation_is_raised_and_takes_no_slot() -> None:
    async def main() -> None:
        slots = trio.Semaphore(1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await _take(slots)
        assert scope.cancelled_caught and slots.value == 1

    trio.run(main)


def test_a_full_semaphore_waits_for_a_release_in_order() -> None:
    async def main() -> None:
        slots = trio.Semaphore(1)
        await _take(slots)
        got: list[int] = []

        async def call(i: int) -> None:
            await _take(slots)
            got.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(call, i)
                await trio.testing.wait_all_tasks_blocked()
            assert got == []
            for _ in range(3):
                slots.release()
                await trio.testing.wait_all_tasks_blocked()
        assert got == [0, 1, 2]  # first come, first served, as trio's acquire

    trio.run(main)


def test_a_cancelled_waiter_takes_no_slot() -> None:
    async def main() -> None:
        slots = trio.Semaphore(1)
        await _take(slots)
        with trio.move_on_after(1) as scope:
            await _take(slots)
        assert scope.cancelled_caught
        slots.release()
        assert slots.value == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
