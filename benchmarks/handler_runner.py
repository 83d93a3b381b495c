"""9. The server's handler runner: CPU per paid call with it / with a task per handler.

Until issue 15 the node started the handlers of admitted requests with a hand-written
coroutine runner: one task per burst took the requests in admission order and drove each
handler coroutine itself (``coro.send``), so a handler that never suspends (an echo) ran
to its end in that task without a task of its own, and handlers started in admission
order; the first handler that suspended kept the task and was resumed by a trampoline
(``_resume``: every trap of the handler passed up through a Python generator), and a new
runner took the rest. The issue keeps it only if a benchmark shows it pays. This is that
benchmark.

Three provider nodes, each paired with its own client on its own in-memory network (no
network noise; both ends in this process), 64 closed-loop callers each, in the same
alternating rounds (ABC CBA ...); each provider's inbound session starts its handlers one
way (the session's ``_start_handler`` is replaced on that one session):

* ``runner``: the runner as it was (its code is kept here, `_Runner`);
* ``tasks``: ``handlers.start_soon(session._run_handler, ...)``: every handler in a task
  of its own, a plain ``await handler(call)`` there (what the node does since issue 15);
* ``ordered``: a task each, but each waits until the previous admitted request's handler
  has started (an event chain): the cheapest way found to keep the runner's start order
  with plain tasks.

Two handlers, in two separate comparisons: ``echo`` (returns the body, never suspends: the
runner's best case) and ``suspending`` (``await trio.sleep(0)`` once, then the body: any
handler that does I/O suspends).

Results (ratios of CPU microseconds per paid call, both ends, median over rounds):

* ``handler_runner``: runner / tasks with the echo handler, target <= 0.95;
* ``handler_runner_suspending``: runner / tasks with the suspending handler, target <= 1.0.

The decision rule (issue 15, set before the recorded run): the runner stays only if it
saves at least 5 % of the CPU of a paid call for echo handlers AND costs nothing for
handlers that suspend, i.e. only if both results PASS.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from benchmarks._common import Result, median, spread
from benchmarks._harness import SERVICE, paid_pair
from benchmarks._throughput import compare_many
from p2pay.core.identity import Keypair
from p2pay.node import Call

NAME = "handler_runner"
TITLE = "CPU per paid call: handler runner / a task per handler, echo handler (memory net)"
TITLE_SUSPENDING = "CPU per paid call: handler runner / a task per handler, suspending handler"
TARGET = 0.95
TARGET_SUSPENDING = 1.0

SIZE: dict[str, dict[str, Any]] = {
    "smoke": {"rounds": 1, "duration": 0.3, "concurrency": 8, "warmup": 0.1},
    "quick": {"rounds": 4, "duration": 1.0, "concurrency": 64, "warmup": 0.5},
    "full": {"rounds": 8, "duration": 2.0, "concurrency": 64, "warmup": 1.0},
}

#: provider and client keys of the three pairs (their own, so no PeerID is shared)
KEYS = [Keypair.from_seed(bytes([40 + i]) * 32) for i in range(6)]
VARIANTS = ("runner", "tasks", "ordered")


async def echo(call: Call) -> bytes:
    return call.body


async def suspending(call: Call) -> bytes:
    await trio.sleep(0)
    return call.body


HANDLERS: dict[str, Callable[[Call], Awaitable[bytes]]] = {
    "echo": echo,
    "suspending": suspending,
}


# ---------------------------------------------------------------------------
# the three ways to start a handler, each replacing one session's `_start_handler`


@types.coroutine
def _resume(coro: Any, context: contextvars.Context, trap: Any) -> Any:
    """Drive `coro`, which suspended at `trap` in the current task, to its end: what
    ``await coro`` does (trio's traps pass up through here unchanged, their results and
    exceptions, cancellation included, go back down), each step in `context`."""
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            step = functools.partial(coro.throw, exc)
        else:
            step = functools.partial(coro.send, value)
        try:
            trap = context.run(step)
        except StopIteration:
            return


class _Runner:
    """The runner as `p2pay.node` had it (``_ServerSession._run_ready``) before issue 15."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.ready: collections.deque[tuple[Any, ...]] = collections.deque()
        self.running = False

    def start(self, handlers: trio.Nursery, *item: Any) -> None:
        self.ready.append(item)
        if not self.running:
            self.running = True
            handlers.start_soon(self.run, handlers)

    async def run(self, handlers: trio.Nursery) -> None:
        ready = self.ready
        runner = True  # this task runs the queue (until a handler suspends in it)
        try:
            while ready:
                coro = self.session._run_handler(*ready.popleft())
                context = contextvars.copy_context()  # as a task of its own would have
                try:
                    trap = context.run(coro.send, None)
                except StopIteration:
                    continue
                runner = False
                if ready:
                    handlers.start_soon(self.run, handlers)  # the next runner
                else:
                    self.running = False
                await _resume(coro, context, trap)
                return
        finally:
            if runner:
                self.running = False


class _Ordered:
    """A task per handler, each starting after the previous admitted one started."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.last: trio.Event | None = None

    def start(self, handlers: trio.Nursery, *item: Any) -> None:
        before, started = self.last, trio.Event()
        self.last = started
        handlers.start_soon(self.run, before, started, item)

    async def run(self, before: trio.Event | None, started: trio.Event, item: Any) -> None:
        if before is not None and not before.is_set():
            with trio.CancelScope(shield=True):  # bounded: every earlier task starts at once
                await before.wait()
        started.set()
        await self.session._run_handler(*item)


class _Tasks:
    """A task per handler: ``await handler(call)`` in it (the node since issue 15)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def start(self, handlers: trio.Nursery, *item: Any) -> None:
        handlers.start_soon(self.session._run_handler, *item)


STARTERS: dict[str, Any] = {"runner": _Runner, "tasks": _Tasks, "ordered": _Ordered}


def _install(variant: str, provider: Any) -> None:
    """Make the provider's one inbound session start handlers the `variant` way."""
    [session] = list(provider._live)
    session._start_handler = STARTERS[variant](session).start


# ---------------------------------------------------------------------------


async def _compare(handler_name: str, size: str) -> Any:
    p = SIZE[size]
    from p2pay.net.memory import MemoryNetwork

    async with contextlib.AsyncExitStack() as stack:
        callers = {}
        for i, variant in enumerate(VARIANTS):
            pair = await stack.enter_async_context(
                paid_pair(
                    network=MemoryNetwork(), provider_key=KEYS[2 * i], client_key=KEYS[2 * i + 1]
                )
            )
            pair.provider.serve(SERVICE, HANDLERS[handler_name], price=pair.price)
            _install(variant, pair.provider)
            callers[variant] = pair.call
        return await compare_many(
            callers,
            concurrency=p["concurrency"],
            duration=p["duration"],
            rounds=p["rounds"],
            warmup=p["warmup"],
        )


def _result(name: str, title: str, target: float, handler_name: str, cmp: Any, p: Any) -> Result:
    cpu = cmp.cpu_us
    per_round = [r / t for r, t in zip(cpu["runner"], cpu["tasks"], strict=True)]
    ordered_round = [r / o for r, o in zip(cpu["runner"], cpu["ordered"], strict=True)]
    ratio = median(per_round)
    figures: dict[str, Any] = {f"{v}_cpu_us_per_call": round(median(cpu[v]), 1) for v in VARIANTS}
    figures.update({f"{v}_calls_per_s": spread(cmp.rates[v]) for v in VARIANTS})
    figures.update(
        {
            "ratio_per_round": [round(r, 3) for r in per_round],
            "runner_over_ordered": round(median(ordered_round), 3),
            "runner_over_ordered_per_round": [round(r, 3) for r in ordered_round],
            "rate_ratio_runner_over_tasks": round(median(cmp.ratios("runner", "tasks")), 3),
            "concurrency": p["concurrency"],
            "phase_s": p["duration"],
            "rounds": p["rounds"],
            "calls": dict(cmp.calls),
            "loadavg_per_round": cmp.load,
        }
    )
    saved = (1 - ratio) * 100
    notes = [
        f"{handler_name} handler: runner {median(cpu['runner']):,.0f} us CPU per paid call, "
        f"a task per handler {median(cpu['tasks']):,.0f} us, ordered tasks "
        f"{median(cpu['ordered']):,.0f} us (both ends, in-memory transport)",
        f"the runner {'saves' if saved >= 0 else 'costs'} {abs(saved):.1f} % of the CPU of a "
        "paid call against a task per handler",
        "decision rule: the runner stays only if handler_runner (echo) and "
        "handler_runner_suspending both PASS",
    ]
    return Result(
        name=name,
        title=title,
        target_op="<=",
        target=target,
        ratio=ratio,
        ratio_desc="median over rounds of (runner CPU us per call) / (task-per-handler CPU us "
        "per call)",
        figures=figures,
        notes=notes,
    )


async def _main(size: str) -> list[Result]:
    p = SIZE[size]
    echo_cmp = await _compare("echo", size)
    susp_cmp = await _compare("suspending", size)
    return [
        _result(NAME, TITLE, TARGET, "echo", echo_cmp, p),
        _result(
            f"{NAME}_suspending", TITLE_SUSPENDING, TARGET_SUSPENDING, "suspending", susp_cmp, p
        ),
    ]


def run(size: str, profile_dir: Path | None) -> list[Result]:
    return trio.run(_main, size)
