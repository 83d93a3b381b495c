"""Amounts in yocto-units (specs/protocol.md, "Amounts").

Theory of operation
-------------------
All money in p2pay is an exact integer number of yocto-units, 1 token = 10**24 yocto,
in the closed range [0, 2**128 - 1]. There are no floats anywhere: a float cannot hold
10**-24 of anything exactly, so `yocto()` refuses them outright. Token strings such as
``"0.000001"`` are parsed digit by digit (never through float) and formatted back the
same way, so ``format_tokens(parse_tokens(s))`` is exact.

`parse_amount` is what the CLI and configuration use: a bare integer means yocto, and a
number followed by a unit (``"1.5 token"``, ``"3 milli"``, ``"7yocto"``) is scaled
exactly. Anything else raises `AmountError` with a message saying why.
"""

from __future__ import annotations

import re
from typing import NewType

from p2pay.core.errors import AmountError

Yocto = NewType("Yocto", int)

DECIMALS = 24
YOCTO_PER_TOKEN = 10**DECIMALS
MAX_YOCTO = (1 << 128) - 1
_MAX_DIGITS = len(str(MAX_YOCTO))  # 39
#: Longest text `parse_tokens` / `parse_amount` read (bounds the regex work on hostile input).
MAX_AMOUNT_TEXT = 256

#: Units accepted by `parse_amount`, as a power of ten of yocto.
UNITS: dict[str, int] = {
    "token": 24,
    "tokens": 24,
    "milli": 21,
    "micro": 18,
    "nano": 15,
    "pico": 12,
    "femto": 9,
    "atto": 6,
    "zepto": 3,
    "yocto": 0,
}

_DECIMAL_RE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?")
_AMOUNT_RE = re.compile(r"\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z]+)?\s*")


def yocto(value: object) -> Yocto:
    """Validate an amount given as a Python int.

    Args:
        value: the candidate amount.

    Returns:
        The same integer (as a plain ``int``), typed as `Yocto`.

    Raises:
        AmountError: if it is not an int (bool and float included), negative, or above
            2**128 - 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmountError(
            f"an amount must be an integer number of yocto, not {type(value).__name__}"
        )
    # Never format the value itself: str() of an int above 4300 digits raises ValueError.
    if value < 0:
        raise AmountError(f"an amount cannot be negative ({_describe(value)})")
    if value > MAX_YOCTO:
        raise AmountError(f"an amount cannot exceed 2**128 - 1 yocto ({_describe(value)})")
    return Yocto(int(value))


def _describe(value: int) -> str:
    """A short text for an out-of-range int that is safe for any size."""
    if abs(value) < 10**60:
        return str(int(value))
    return f"a {abs(value).bit_length()}-bit integer"


def _scaled(text: str, exponent: int, what: str) -> Yocto:
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise AmountError(f"{what} {text[:64]!r} is not a decimal number")
    whole_digits = match.group("int").lstrip("0")
    frac = (match.group("frac") or "").rstrip("0")
    if len(frac) > exponent:
        raise AmountError(f"{what} {text[:64]!r} has more decimals than 1 yocto allows")
    # Bound the digits before int(): int() of more than 4300 digits raises ValueError,
    # and anything longer than 2**128 - 1 (39 digits) is an overflow anyway.
    if len(whole_digits) + exponent > _MAX_DIGITS:
        raise AmountError(f"{what} {text[:64]!r} exceeds 2**128 - 1 yocto")
    whole = int(whole_digits or "0") * 10**exponent
    part = int(frac.ljust(exponent, "0")) if frac else 0
    return yocto(whole + part)


def parse_tokens(text: str) -> Yocto:
    """Parse a token string such as ``"0.000001"`` into yocto (here 10**18).

    The grammar is ``[0-9]+ ("." [0-9]+)?`` in ASCII digits only: no sign, exponent,
    space, underscore or other Unicode digit. Trailing zeros of the fraction are exact
    and accepted ("1.50" is 1.5 tokens).

    Args:
        text: the token amount.

    Returns:
        The exact amount in yocto.

    Raises:
        AmountError: on signs, exponents, spaces, more than 24 decimals or overflow.
    """
    if not isinstance(text, str):
        raise AmountError("a token amount must be a string")
    if len(text) > MAX_AMOUNT_TEXT:
        raise AmountError(f"a token amount is at most {MAX_AMOUNT_TEXT} characters")
    return _scaled(text, DECIMALS, "token amount")


def format_tokens(amount: int) -> str:
    """Format yocto as a token string with no trailing zeros (``10**18 -> "0.000001"``).

    Args:
        amount: yocto, an int in [0, 2**128).

    Returns:
        The shortest decimal text that `parse_tokens` reads back as `amount`.

    Raises:
        AmountError: if `amount` is not a valid amount (see `yocto`).
    """
    value = yocto(amount)
    whole, frac = divmod(value, YOCTO_PER_TOKEN)
    if frac == 0:
        return str(whole)
    return f"{whole}.{str(frac).rjust(DECIMALS, '0').rstrip('0')}"


def parse_amount(text: str | int) -> Yocto:
    """Parse what a user typed: a plain integer is yocto; ``"<number> <unit>"`` is scaled.

    Units: token(s), milli, micro, nano, pico, femto, atto, zepto, yocto (any case).

    Args:
        text: an int (yocto), or text such as ``"12"``, ``"1.5 token"``, ``"3milli"``.

    Returns:
        The exact amount in yocto.

    Raises:
        AmountError: with a one-line reason for anything else.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return yocto(text)
    if not isinstance(text, str):
        raise AmountError(f"an amount must be text or an integer, not {type(text).__name__}")
    if len(text) > MAX_AMOUNT_TEXT:
        # _AMOUNT_RE backtracks quadratically on long runs of spaces: bound the input first.
        raise AmountError(f"an amount is at most {MAX_AMOUNT_TEXT} characters")
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise AmountError(
            f"cannot read amount {text[:64]!r}: use an integer number of yocto, or a number and "
            f"a unit ({', '.join(u for u in UNITS if u != 'tokens')})"
        )
    unit = match.group("unit")
    if unit is None:
        if "." in match.group("num"):
            raise AmountError(f"amount {text[:64]!r} has a fraction but no unit; yocto are whole")
        return _scaled(match.group("num"), 0, "amount")
    exponent = UNITS.get(unit.lower())
    if exponent is None:
        raise AmountError(f"unknown unit {unit[:32]!r} in {text[:64]!r}")
    return _scaled(match.group("num"), exponent, "amount")
