"""A coroutine runner: drives a handler that suspended to its end in the current task."""

from __future__ import annotations

import contextvars
import functools
import types
from typing import Any


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
