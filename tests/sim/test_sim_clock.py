"""The simulator's clock (`p2pay.sim.clock.SimClock`): trio's autojumping MockClock whose
own wakes replace a cancel scope per timed wait; same behaviour as trio's sleeps."""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from p2pay.core.identity import Keypair
from p2pay.net.base import Stream, StreamClosed
from p2pay.net.memory import MemoryNetwork, memory_addr, open_memory_transport
from p2pay.node.client import _Done
from p2pay.sim.clock import SimClock, current_wakes
from p2pay.sim.engine import sleep_until


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn, clock=SimClock().trio_clock)


def test_sleep_until_wakes_at_the_deadline() -> None:
    async def main() -> None:
        assert current_wakes() is not None
        start = trio.current_time()
        await sleep_until(start + 2.5)
        assert trio.current_time() == start + 2.5
        with trio.testing.assert_checkpoints():
            await sleep_until(start)  # already past: a checkpoint, no wait
        assert trio.current_time() == start + 2.5

    run(main)


def test_sleep_until_raises_an_outer_cancel_and_forgets_its_wake() -> None:
    async def main() -> None:
        start = trio.current_time()
        with trio.move_on_after(1.0) as scope:  # a trio deadline, before the wake
            await sleep_until(start + 5.0)
        assert scope.cancelled_caught
        assert trio.current_time() == start + 1.0
        with trio.CancelScope() as scope:
            scope.cancel()
            await sleep_until(start)  # cancelled before: raises even with a past deadline
        assert scope.cancelled_caught
        # the forgotten wake at start + 5 wakes nobody; the next sleep is not disturbed
        await sleep_until(start + 7.0)
        assert trio.current_time() == start + 7.0

    run(main)


def test_wakes_and_trio_deadlines_interleave_in_time_order() -> None:
    async def main() -> None:
        woke: list[tuple[str, float]] = []
        start = trio.current_time()

        async def ours(t: float) -> None:
            await sleep_until(start + t)
            woke.append(("wake", trio.current_time() - start))

        async def trios(t: float) -> None:
            await trio.sleep_until(start + t)
            woke.append(("trio", trio.current_time() - start))

        async with trio.open_nursery() as nursery:
            for t in (3.0, 1.0, 2.0, 1.5):
                nursery.start_soon(ours, t)
            for t in (2.5, 0.5):
                nursery.start_soon(trios, t)
        assert [t for _, t in woke] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        assert [k for k, _ in woke] == ["trio", "wake", "wake", "wake", "trio", "wake"]

    run(main)


@pytest.mark.parametrize("sim_clock", [True, False])
def test_memory_frames_arrive_after_their_latency_on_either_clock(sim_clock: bool) -> None:
    """A parked reader wakes at its frame's arrival (a wake of the clock, or its cancel
    scope's deadline on a plain MockClock), and a closing end wakes it at once."""

    async def main() -> None:
        net = MemoryNetwork()
        net.set_latency(lambda src, dst: 0.25)
        a, b = Keypair.from_seed(b"\x01" * 32), Keypair.from_seed(b"\x02" * 32)
        got: list[tuple[bytes, float]] = []

        async def echo(stream: Stream) -> None:
            while True:
                frame = await stream.receive()
                got.append((frame, trio.current_time()))
                await stream.send(frame)

        async with (
            open_memory_transport(net, b, echo),
            open_memory_transport(net, a, echo) as ta,
        ):
            stream = await ta.connect(memory_addr(str(b.peer_id)))
            t0 = trio.current_time()
            await stream.send(b"x")
            assert await stream.receive() == b"x"
            assert trio.current_time() - t0 == pytest.approx(0.5)
            assert got[0][1] - t0 == pytest.approx(0.25)
            async with trio.open_nursery() as nursery:

                async def close_later() -> None:
                    await trio.sleep(1.0)
                    await stream.aclose()

                nursery.start_soon(close_later)
                with pytest.raises(StreamClosed):
                    await stream.receive()
                assert trio.current_time() - t0 == pytest.approx(1.5)

    if sim_clock:
        run(main)
    else:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_runs_raise_the_gc_thresholds_and_restore_them() -> None:
    import gc

    from p2pay.sim.run import SIM_GC_THRESHOLDS, _gc_thresholds

    before = gc.get_threshold()
    with pytest.raises(RuntimeError), _gc_thresholds(SIM_GC_THRESHOLDS):
        assert gc.get_threshold() == SIM_GC_THRESHOLDS
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == before


# A call's wait for its answer (`p2pay.node.client._Done.wait_until`): under SimClock a
# wake of the clock replaces the `trio.move_on_at` cancel scope; the outcome and the
# instant must be those of the cancel scope, ties at the deadline included.


async def _scope_wait(done: _Done, deadline: float) -> None:
    with trio.move_on_at(deadline):  # the code before: a cancel scope per call
        await done.wait()


async def _wake_wait(done: _Done, deadline: float) -> None:
    await done.wait_until(deadline)


@pytest.mark.parametrize("wait", [_scope_wait, _wake_wait], ids=["scope", "wake"])
@pytest.mark.parametrize(
    ("answer_at", "setter_first", "answered"),
    [
        (1.0, False, True),  # answered before the deadline
        (None, False, False),  # never answered: gives up at the deadline
        (3.0, False, False),  # answered after it
        (2.0, False, True),  # answered at the deadline itself (the setter's wake is later)
        (2.0, True, True),  # the same, the setter's wake registered first
    ],
)
def test_a_calls_wait_ends_as_under_a_cancel_scope(
    wait: Callable[[_Done, float], Awaitable[None]],
    answer_at: float | None,
    setter_first: bool,
    answered: bool,
) -> None:
    async def main() -> None:
        start = trio.current_time()
        done = _Done()
        ended: list[tuple[float, bool]] = []

        async def waiter() -> None:
            await wait(done, start + 2.0)
            ended.append((trio.current_time() - start, done.is_set()))

        async def setter() -> None:
            assert answer_at is not None
            await sleep_until(start + answer_at)  # a wake of the clock, as a frame's arrival
            done.set()

        async with trio.open_nursery() as nursery:
            if answer_at is not None and setter_first:
                nursery.start_soon(setter)
                await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            if answer_at is not None and not setter_first:
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(setter)
        assert ended == [(min(answer_at or 2.0, 2.0) if answered else 2.0, answered)]

    for seed in range(8):  # trio's scheduler order varies per pass: the outcome must not
        trio._core._run._r.seed(seed)
        run(main)


def test_a_calls_wait_raises_an_outer_cancel_and_forgets_its_wake() -> None:
    async def main() -> None:
        start = trio.current_time()
        done = _Done()
        with trio.move_on_at(start + 1.0) as scope:
            await done.wait_until(start + 2.0)
        assert scope.cancelled_caught and not done.is_set()
        assert trio.current_time() == start + 1.0
        done.set()  # nobody waits any more: nothing rescheduled
        await sleep_until(start + 3.0)  # the dead wake at start + 2 wakes nobody
        with trio.testing.assert_checkpoints():
            await done.wait_until(start + 4.0)  # set already: a checkpoint
        assert trio.current_time() == start + 3.0

    run(main)


def test_a_wake_due_at_once_fires_without_a_jump() -> None:
    async def main() -> None:
        wakes = current_wakes()
        assert wakes is not None
        start = trio.current_time()
        task = trio.lowlevel.current_task()
        wakes.wake_at(start, lambda: trio.lowlevel.reschedule(task))  # e.g. a 0 s latency
        with trio.move_on_after(5.0):  # a later trio deadline: not jumped to
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
        assert trio.current_time() == start
        await sleep_until(start + 1.0)  # later wakes still jump, to their instant
        assert trio.current_time() == start + 1.0

    run(main)


def test_the_simulations_ledger_clock_reads_the_sim_clock_as_trio_does() -> None:
    from pathlib import Path

    from p2pay.sim import parse_scenario
    from p2pay.sim.engine import EPOCH_MS, Simulation

    path = Path(__file__).parent / "small-cheaters.toml"
    sim = Simulation(parse_scenario(tomllib.loads(path.read_text()), source=str(path)))
    seen: list[tuple[int, int]] = []

    async def body(wall_start: float, cpu_start: float) -> None:
        assert sim._sim_time is not None  # read from the SimClock directly
        for t in (0.0, 0.0004, 1.2345, 77.7771):
            await sleep_until(t)
            seen.append((sim.ledger_now_ms(), EPOCH_MS + int(trio.current_time() * 1000)))

    sim._run = body  # type: ignore[method-assign]
    run(sim.run)
    assert len(seen) == 4 and all(fast == slow for fast, slow in seen)
    assert sim._sim_time is None  # outside its run it reads trio's clock again
