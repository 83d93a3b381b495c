"""Values of scenario files and behaviour parameters: durations, amounts, rates, and the
error they raise (`ScenarioError`).

Shared by the scenario reader (`p2pay.sim.scenario`) and the behaviours
(`p2pay.sim.behaviours`, `p2pay.sim.cheaters`), which parse their own parameters; it
imports nothing else of the simulator.
"""

from __future__ import annotations

import math
import re

from p2pay.core.amounts import parse_amount
from p2pay.core.errors import AmountError, ErrorCode, P2payError

__all__ = [
    "ScenarioError",
    "parse_amount_param",
    "parse_duration",
    "parse_rate",
]


class ScenarioError(P2payError, ValueError):
    """A scenario file is malformed; the message names the key. ``str()`` is the message
    alone (it is the one line `p2pay sim` prints)."""

    code = ErrorCode.INVALID_ARGUMENT

    def __str__(self) -> str:
        return self.message


_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object, where: str = "duration") -> float:
    """Seconds from a number of seconds or a text such as ``"1.5s"``, ``"10m"``, ``"2h"``.

    Raises:
        ScenarioError: not a finite duration >= 0.
    """
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: a duration is a number of seconds or a text like '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise ScenarioError(
                f"{where}: cannot read duration {value!r} (use e.g. 250ms, 30s, 10m)"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ScenarioError(f"{where}: a duration is a number of seconds or a text like '10m'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ScenarioError(f"{where}: a duration must be finite and >= 0")
    return seconds


def parse_amount_param(value: object, where: str) -> int:
    """Yocto from an int of yocto or a p2pay amount text (``"1 micro"``, ``"1.5 token"``).

    Raises:
        ScenarioError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ScenarioError(f"{where}: an amount is an int of yocto or a text like '1 micro'")
    try:
        return int(parse_amount(value))
    except AmountError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def parse_rate(value: object, name: str) -> float:
    """A behaviour's rate: a number in [0, 1].

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1]")
    return float(value)
