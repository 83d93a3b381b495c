"""Services a ``p2pay node run`` offers: ``NAME=PRICE[:module:function]``.

Theory of operation
-------------------
A service spec names the service, its price (an amount: yocto, or a number and a unit)
and, optionally, the handler as ``module:function``: an ``async def f(call) -> bytes``
imported by name (the working directory is importable, as with ``python -m``). Without
a handler the name must be a built-in: ``echo`` (returns the body) or ``upper`` (the
body in upper case, ASCII letters only, so every byte string is a valid input).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pay.cli.errors import read_amount
from p2pay.cli.home import CliError
from p2pay.core.errors import AmountError

if TYPE_CHECKING:  # (`p2pay --help` does not import the node)
    from p2pay.node import Call

Handler = Callable[["Call"], Awaitable[bytes]]


async def echo(call: Call) -> bytes:
    """Built-in ``echo``: the response body is the request body."""
    return bytes(call.body)


async def upper(call: Call) -> bytes:
    """Built-in ``upper``: the request body with ASCII letters in upper case."""
    return bytes(call.body).upper()


BUILTINS: dict[str, Handler] = {"echo": echo, "upper": upper}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    price: int
    handler_ref: str | None  # "module:function", or None for a built-in

    def __str__(self) -> str:
        tail = f":{self.handler_ref}" if self.handler_ref else ""
        return f"{self.name}={self.price}{tail}"


def parse_service(text: str) -> ServiceSpec:
    """Read ``NAME=PRICE[:module:function]``.

    Raises:
        CliError: a bad name, a bad price, a bad handler reference, or an unknown built-in.
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not _NAME_RE.fullmatch(name):
        raise CliError(f"service {text[:80]!r}: expected NAME=PRICE[:module:function]")
    price_text, _, ref = rest.partition(":")
    try:
        price = read_amount(price_text.strip())
    except AmountError as exc:
        raise CliError(f"service {name!r}: price: {exc.message}") from None
    ref = ref.strip()
    if ref:
        module, colon, function = ref.partition(":")
        if not colon or not module or not function.isidentifier():
            raise CliError(f"service {name!r}: handler {ref!r} is not module:function")
        return ServiceSpec(name, price, ref)
    if name not in BUILTINS:
        raise CliError(
            f"service {name!r}: no built-in of that name ({', '.join(BUILTINS)}); "
            "give a handler as NAME=PRICE:module:function"
        )
    return ServiceSpec(name, price, None)


def load_handler(spec: ServiceSpec) -> Handler:
    """Import the handler of a spec (or return the built-in).

    Raises:
        CliError: the module cannot be imported, or the function is not an async function.
    """
    if spec.handler_ref is None:
        return BUILTINS[spec.name]
    module_name, _, function = spec.handler_ref.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error of user code is a bad argument, not a crash
        raise CliError(
            f"service {spec.name!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    handler = getattr(module, function, None)
    if handler is None:
        raise CliError(f"service {spec.name!r}: {module_name} has no {function!r}")
    if not inspect.iscoroutinefunction(handler):
        raise CliError(
            f"service {spec.name!r}: {spec.handler_ref} must be an async def f(call) -> bytes"
        )
    result: Handler = handler
    return result
