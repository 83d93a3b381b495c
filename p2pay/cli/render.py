"""Output for the command line: one JSON document, or rich tables; logs to stderr.

Every command that prints data builds a plain ``dict`` (amounts as ints, bytes as bytes)
and hands it to `emit`. With ``--json`` the dict becomes ONE JSON document on stdout and
nothing else goes there: amounts (the keys listed in `AMOUNT_KEYS`) become decimal
strings of yocto (JSON numbers lose precision past 2**53), bytes become lowercase hex.
Without ``--json`` the command's own renderer prints a table or a few lines for a person.

Logs are one ``key=value`` line per event on stderr (`setup_logging`), so that a node's
stdout carries only what a script reads (its ``listening ...`` line).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2pay.core.amounts import UNITS, format_tokens
from p2pay.core.errors import AmountError

#: Keys whose int values are amounts of yocto: JSON gives them as decimal strings.
AMOUNT_KEYS = frozenset(
    {
        "amount",
        "balance",
        "bond",
        "burnt",
        "charged",
        "claim_bond",
        "clawed",
        "deposit",
        "escrow",
        "escrow_in",
        "escrow_out",
        "held",
        "paid",
        "paid_max",
        "penalty",
        "price",
        "max_price",
        "min_stake",
        "needed",
        "redeemed",
        "refund",
        "refunded",
        "slashed",
        "spent",
        "stake",
        "staked",
        "stakes",
        "supply",
        "to_claimant",
        "total",
        "balances",
        "bonds",
    }
)

#: Tables hold 40-digit yocto amounts: when the output is not a terminal (a pipe, a file,
#: a test), draw them 160 columns wide instead of rich's default 80.
WIDE = 160
#: Narrower than this, a table folds every column (ids included) to fit.
WIDE_ENOUGH = 140
stdout = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else WIDE)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def jsonable(value: Any, key: str | None = None) -> Any:
    """Turn a result into JSON-ready values (amounts -> decimal strings, bytes -> hex).

    Args:
        value: dicts, lists, tuples, ints, bytes, str, bool, None (nested).
        key: the dict key `value` is stored under (decides whether an int is an amount).

    Returns:
        The same structure with only JSON types.
    """
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return value
    if isinstance(value, int):
        return str(value) if key in AMOUNT_KEYS else value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, key) for v in value]
    return str(value)


def print_json(document: Mapping[str, Any], *, compact: bool = False) -> None:
    """Print ONE JSON document on stdout (and a newline); `compact`: on one line."""
    text = json.dumps(jsonable(document), indent=None if compact else 2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def amount_text(amount: int) -> str:
    """``"0.0015 token (1500000000000000000000 yocto)"``: tokens for a person, exact yocto.

    Every amount the command line writes for a person (results and errors) has this form;
    a value that is not an amount (negative, above 2**128 - 1) is written as yocto only.
    """
    try:
        return f"{format_tokens(amount)} token ({amount} yocto)"
    except AmountError:
        return f"{amount} yocto"


def iso_time(ms: int) -> str:
    """A ledger time (Unix ms) as ISO 8601 UTC: ``"2026-12-05T08:12:56.123Z"``.

    Milliseconds are shown only when not zero. A time outside what a calendar date can
    show (year 1 to 9999) stays ``"<ms> ms after 1970-01-01T00:00:00Z"``.
    """
    seconds, millis = divmod(int(ms), 1000)
    try:
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms after 1970-01-01T00:00:00Z"
    return f"{stamp}.{millis:03d}Z" if millis else f"{stamp}Z"


def field_text(key: str, value: Any) -> str:
    """A named value for a person: amounts with units, ``*_at`` times as ISO 8601 UTC,
    bytes shortened (`short`); anything else as ``str``."""
    if isinstance(value, bytes):
        return short(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if key in AMOUNT_KEYS:
            return amount_text(value)
        if (key.endswith(("_at", "_ends")) or key == "deadline") and value > 0:
            return iso_time(value)
    return str(value)


def short(data: bytes | str, keep: int = 8) -> str:
    """A short form of a hex id or PeerID for tables (the JSON always has the full one)."""
    text = data.hex() if isinstance(data, bytes) else data
    return text if len(text) <= 2 * keep + 1 else f"{text[:keep]}…{text[-keep:]}"


def printable(text: str) -> str:
    """`text` with every non-printable character (ESC and the other C0 and C1 controls,
    DEL, format characters) written as a Python-style escape (``\\x1b``, ``\\u200e``), so
    that text from a peer cannot drive the terminal it is shown on (protocol.md 11)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    amounts: Iterable[str] = (),
    whole: Iterable[str] = (),
) -> Table:
    """A rich table; columns named in `amounts` show yocto and tokens, right-aligned; those
    named in `whole` are kept on one line (ids a user copies) when the output is wide
    enough (a pipe, a file, a wide terminal), the others fold to fit."""
    money = set(amounts)
    keep = set(whole) if stdout.width >= WIDE_ENOUGH else set()
    t = Table(title=title, title_justify="left")
    for name in columns:
        t.add_column(
            name,
            justify="right" if name in money else "left",
            overflow="fold",
            no_wrap=name in keep,
        )
    for row in rows:
        cells = []
        for name, cell in zip(columns, row, strict=True):
            if name in keep:
                t.columns[columns.index(name)].min_width = len(str(cell))
            if name in money and isinstance(cell, int) and not isinstance(cell, bool):
                cells.append(f"{cell}\n[dim]{format_tokens(cell)} token[/dim]")
            elif isinstance(cell, bytes):
                cells.append(short(cell))
            else:
                # a cell may be a peer's text (an offer's address): text, never markup
                # (specs/discovery.md 4; a `[link=...]` became a terminal hyperlink)
                cells.append("" if cell is None else escape(printable(str(cell))))
        t.add_row(*cells)
    return t


#: The units an amount column may be shown in, largest first (exponents of 10 in yocto).
COLUMN_UNITS = ("token", "milli", "micro", "nano", "pico", "femto", "atto", "zepto", "yocto")


def in_unit(amount: int, unit: str) -> str:
    """`amount` (yocto) written exactly in `unit`: ``in_unit(1500, "zepto") == "1.5"``."""
    exponent = UNITS[unit]
    whole, frac = divmod(amount, 10**exponent)
    if not frac:
        return str(whole)
    return f"{whole}.{str(frac).rjust(exponent, '0').rstrip('0')}"


def column_unit(amounts: Iterable[int]) -> str:
    """The unit that writes every amount of a column shortest (exactly, no rounding); of
    units as short, the largest. ``"token"`` for a column with no amounts."""
    values = list(amounts)
    best, width = "token", None
    for unit in COLUMN_UNITS:
        longest = max((len(in_unit(v, unit)) for v in values), default=0)
        if width is None or longest < width:
            best, width = unit, longest
    return best


def unit_table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    amounts: Iterable[str] = (),
    whole: Iterable[str] = (),
) -> Table:
    """A rich table whose `amounts` columns each show one unit, named under the column's
    name in the header (``deposit`` over ``(milli)``), right-aligned on one line; the
    columns in `whole` (short ids) are not folded either; None cells are empty."""
    cells = [list(r) for r in rows]
    headers = list(columns)
    money = {columns.index(name) for name in amounts}
    for i in money:
        unit = column_unit(r[i] for r in cells if isinstance(r[i], int))
        headers[i] = f"{columns[i]}\n({unit})"
        for r in cells:
            if isinstance(r[i], int) and not isinstance(r[i], bool):
                r[i] = in_unit(r[i], unit)
    t = Table(title=title, title_justify="left")
    keep = money | {columns.index(name) for name in whole}
    for i, name in enumerate(headers):
        t.add_column(
            name, justify="right" if i in money else "left", overflow="fold", no_wrap=i in keep
        )
    for r in cells:
        t.add_row(*("" if cell is None else str(cell) for cell in r))
    return t


class KeyValueFormatter(logging.Formatter):
    """One line per record: ``t=... level=info logger=p2pay.node msg="..." key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)
        parts = [
            f"t={stamp}.{millis:03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            parts.extend(f"{k}={_quote(str(v))}" for k, v in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append(f"error={_quote(f'{type(exc).__name__}: {exc}')}")
            if os.environ.get("P2PAY_DEBUG"):  # the traceback, on the lines after
                return " ".join(parts) + "\n" + self.formatException(record.exc_info)
        return " ".join(parts)


def _quote(text: str) -> str:
    text = text.replace("\n", " ").replace("\r", " ")
    if text and all(c not in text for c in ' "=\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at the time of the record (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _LibraryLogs(_StderrHandler):
    """`logging.lastResort`: the records of loggers with no handler of their own (py-libp2p
    configures its loggers so): key=value lines with -vv, else dropped (the command's own
    error line says what went wrong; a library's lines beside it are noise)."""

    def __init__(self, shown: bool) -> None:
        super().__init__()
        self.shown = shown
        self.setFormatter(KeyValueFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if self.shown:
            super().emit(record)


def setup_logging(level: int) -> None:
    """Send every log record to stderr, one key=value line each (other libraries' records
    that no handler takes: only with -vv, see `_LibraryLogs`)."""
    logging.lastResort = _LibraryLogs(shown=level <= logging.DEBUG)
    handler = _StderrHandler()
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _StderrHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("p2pay").setLevel(level)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event: ``msg=<name> key=value ...`` (amounts as yocto ints)."""
    logger.log(level, name, extra={"fields": {k: _field(v) for k, v in fields.items()}})


def _field(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return value


QUOTE_MAX = 48


def quoted(text: str) -> str:
    """`text` quoted for a message, or described when it is too long to quote whole."""
    if len(text) <= QUOTE_MAX:
        return repr(text)
    if text.isdigit():
        return f"the {len(text)}-digit number"
    return f"the {len(text)}-character value"
