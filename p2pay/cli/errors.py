"""What a failed command tells its user: one line, or one JSON object with ``--json``.

Theory of operation
-------------------
`main` turns every failure into a `Failure` (`failure_of`): a stable ``code`` (the
library's `ErrorCode` value, or ``USAGE`` / ``INTERRUPTED`` / ``OS_ERROR`` / ``INTERNAL``
for failures that are not the library's), a ``message`` for a person and ``details`` for
a script. `report` writes it on stderr: ``p2pay: error: CODE: message`` on one line, or,
when the command line asked for ``--json``, ONE JSON object
``{"error": {"code": ..., "message": ..., "details": {...}}}`` on one line (amounts in
``details`` are decimal strings of yocto, as in every JSON the command line prints).

The library speaks to programs: its messages name fields (``challenge_ms``), methods
(``open_channel``) and raw numbers (yocto, Unix ms). `explain` rewrites the messages a
command line user can meet into the user's terms: the option they typed (``--challenge``),
the command to run (``p2pay channel open PEER``), amounts as tokens with their exact yocto
(`render.amount_text`) and times as ISO 8601 UTC (`render.iso_time`). The numbers it
parses out of a message also go into ``details`` (under the names the rewrite says they
are). A message it does not know is shown as the library wrote it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pay.cli import render
from p2pay.cli.render import QUOTE_MAX, quoted
from p2pay.core.amounts import MAX_YOCTO, format_tokens, parse_amount
from p2pay.core.errors import AmountError

#: Library names of values (fields, parameters) -> the option or argument a user types.
OPTION_OF: dict[str, str] = {
    "challenge_ms": "--challenge",
    "window": "--claim-window",
    "claim_window_ms": "--claim-window",
    "penalty": "--penalty",
    "deposit": "--deposit",
    "amount": "AMOUNT",
    "max_price": "--max-price",
    "min_challenge_ms": "--min-challenge",
    "min_claim_window_ms": "--min-claim-window",
    "max_deadline_horizon_ms": "--max-deadline-horizon",
    "claim_bond": "--claim-bond",
}

#: Values named in `OPTION_OF` that are durations in ms (the others are amounts).
DURATIONS = frozenset(
    {
        "challenge_ms",
        "window",
        "claim_window_ms",
        "min_challenge_ms",
        "min_claim_window_ms",
        "max_deadline_horizon_ms",
    }
)

#: Largest amount, for messages.
LARGEST_AMOUNT = f"2**128 - 1 yocto ({format_tokens(MAX_YOCTO)} token)"


# ---------------------------------------------------------------------------
# what the user typed, quoted back


#: Longest text quoted back in a message (longer text is described, never cut short: a
#: long number cut short would be quoted as another number).
AMOUNT_HELP = "use an integer number of yocto, or a number and a unit (1.5 token, 3 milli)"


def amount_problem(text: str) -> str | None:
    """Why `text` is plainly not an amount (negative, too many digits), in the user's terms;
    None if it may be one (`parse_amount` decides)."""
    stripped = text.strip()
    if stripped.startswith("-"):
        return f"{quoted(stripped)} is negative: an amount is 0 or more"
    number = re.match(r"[0-9]*", stripped)
    whole = number.group(0).lstrip("0") if number is not None else ""
    if len(whole) > len(str(MAX_YOCTO)):
        return f"{quoted(stripped)} is above the largest amount, {LARGEST_AMOUNT}"
    return None


def read_amount(text: str) -> int:
    """An amount as a user types it (`parse_amount`), with a message in the user's terms.

    Raises:
        AmountError: why `text` is not an amount; the text is quoted whole or described
            (`quoted`), never cut short (`parse_amount` quotes its first 64 characters,
            which for a long number is another number).
    """
    problem = amount_problem(text)
    if problem is not None:
        raise AmountError(problem)
    try:
        return parse_amount(text)
    except AmountError as exc:
        shown = quoted(text.strip())
        if "2**128 - 1" in exc.message:  # "exceeds" / "cannot exceed"
            raise AmountError(f"{shown} is above the largest amount, {LARGEST_AMOUNT}") from None
        if len(text.strip()) > QUOTE_MAX:
            raise AmountError(f"{shown} is not an amount: {AMOUNT_HELP}") from None
        raise


# ---------------------------------------------------------------------------
# failures


@dataclass
class Failure:
    """A failed command as its user sees it."""

    code: str
    message: str
    exit_code: int = 1
    details: dict[str, Any] = field(default_factory=dict)
    #: The line starts with the code (the library's refusals); else the message alone.
    show_code: bool = False
    #: Shown as is (already formatted, e.g. a help text): not folded onto one line.
    verbatim: bool = False

    def line(self) -> str:
        """The one line for a person: ``CODE: message``, or the message alone."""
        text = " ".join(self.message.split())
        return f"{self.code}: {text}" if self.show_code else text

    def document(self) -> dict[str, Any]:
        """The JSON object written with ``--json``."""
        return {
            "error": {
                "code": self.code,
                "message": " ".join(self.message.split()),
                "details": render.jsonable(self.details),
            }
        }


def wants_json(argv: Sequence[str]) -> bool:
    """Did the command line ask for ``--json`` (before a ``--`` that ends the options)?"""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def report(failure: Failure, *, as_json: bool) -> None:
    """Write `failure` on stderr: one line, or one JSON object (one line) with `as_json`."""
    sys.stdout.flush()
    if as_json:
        sys.stderr.write(json.dumps(failure.document()) + "\n")
    elif failure.verbatim:
        sys.stderr.write(failure.message.rstrip("\n") + "\n")
    else:
        sys.stderr.write(f"p2pay: error: {failure.line()}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# the library's messages, in the user's terms


def _duration(ms: int) -> str:
    from p2pay.cli.home import format_ms

    return format_ms(ms)


def _range(match: re.Match[str], details: dict[str, Any]) -> str | None:
    name, low, high = match.group("name"), int(match.group("low")), match.group("high")
    option = OPTION_OF.get(name)
    if option is None:
        return None
    details["option"] = option
    if name in DURATIONS:
        details["min_ms"], details["max_ms"] = low, int(high)
        return f"{option} must be between {_duration(low)} and {_duration(int(high))}"
    details["min"], details["max"] = low, MAX_YOCTO
    if low == 1:
        return f"{option} must be more than 0 (and at most {LARGEST_AMOUNT})"
    return f"{option} must be between {render.amount_text(low)} and {LARGEST_AMOUNT}"


def _funds(match: re.Match[str], details: dict[str, Any]) -> str:
    balance, needed = int(match.group("balance")), int(match.group("needed"))
    details["balance"], details["needed"] = balance, needed
    return (
        f"the free balance, {render.amount_text(balance)}, is below the "
        f"{render.amount_text(needed)} this needs (p2pay balance shows it)"
    )


def _closing(match: re.Match[str], details: dict[str, Any]) -> str:
    details["closes_at"] = int(match.group("at"))
    return (
        f"the challenge period runs until {render.iso_time(details['closes_at'])}: "
        "run this again after it, or use --wait"
    )


def _unbonds(match: re.Match[str], details: dict[str, Any]) -> str:
    details["unbonding_at"] = int(match.group("at"))
    return (
        f"the stake unbonds at {render.iso_time(details['unbonding_at'])}: "
        "p2pay unstake --withdraw after it"
    )


def _no_channel(match: re.Match[str], details: dict[str, Any]) -> str:
    peer = match.group("peer")
    details["peer"] = peer
    return f"no open channel to {peer}: run `p2pay channel open {peer} --deposit AMOUNT` first"


def _costs(match: re.Match[str], details: dict[str, Any]) -> str:
    price, most = int(match.group("price")), int(match.group("max"))
    details["price"], details["max_price"] = price, most
    return (
        f"{match.group('service')} costs {render.amount_text(price)}, above --max-price "
        f"{render.amount_text(most)}"
    )


def _short_challenge(match: re.Match[str], details: dict[str, Any]) -> str:
    asked, least = int(match.group("asked")), int(match.group("min"))
    details["challenge_ms"], details["min_challenge_ms"] = asked, least
    return f"--challenge {_duration(asked)} is below this payee's minimum of {_duration(least)}"


def _unstaking(match: re.Match[str], details: dict[str, Any]) -> str:
    at, deadline, last = (int(match.group(k)) for k in ("at", "deadline", "last"))
    details.update(unstake_requested_at=at, deadline=deadline, last=last)
    return (
        f"the provider is unstaking (since {render.iso_time(at)}): a paid request due by "
        f"{render.iso_time(deadline)} is after {render.iso_time(last)}, the last deadline a "
        "claim could be filed for; use a shorter --timeout or another provider"
    )


def _no_stake(match: re.Match[str], details: dict[str, Any]) -> str:
    return f"{match.group(0)} (--no-stake-ok accepts it, knowing that)"


def _above_max(match: re.Match[str], details: dict[str, Any]) -> str:
    least, most = int(match.group("least")), int(match.group("max"))
    return (
        f"{match.group('peer')} charges at least {render.amount_text(least)} a call, above "
        f"--max-price {render.amount_text(most)}"
    )


def _no_offer(match: re.Match[str], details: dict[str, Any]) -> str:
    most = int(match.group("max"))
    details["max_price"] = most
    text = (
        f"no offer of {match.group('service')} at or below --max-price {render.amount_text(most)}"
    )
    if match.group("stake") is not None:
        details["min_stake"] = int(match.group("stake"))
        text += f" with a stake of at least {render.amount_text(details['min_stake'])}"
    return f"{text}; {match.group('left')} (p2pay find lists the offers)"


_Rewrite = Callable[[re.Match[str], dict[str, Any]], "str | None"]


def _fixed(text: str) -> _Rewrite:
    def rewrite(_match: re.Match[str], _details: dict[str, Any]) -> str:
        return text

    return rewrite


#: Known library messages (matched whole) and their rewrites.
REWRITES: tuple[tuple[re.Pattern[str], _Rewrite], ...] = (
    (
        re.compile(r"(?P<name>\w+) must be an integer in \[(?P<low>\d+), (?P<high>\d+)\]"),
        _range,
    ),
    (
        re.compile(r"(?P<name>\w+) must be an integer in \[(?P<low>\d+), (?P<high>2\*\*128)\)"),
        _range,
    ),
    (re.compile(r"balance (?P<balance>\d+) is below (?P<needed>\d+)"), _funds),
    (re.compile(r"challenge period runs until (?P<at>\d+)"), _closing),
    (re.compile(r"stake unbonds at (?P<at>\d+)"), _unbonds),
    (re.compile(r"no open channel to (?P<peer>\S+): open_channel first"), _no_channel),
    (
        re.compile(
            r"\S+ has no stake: nothing would answer for a paid request it leaves unanswered"
        ),
        _no_stake,
    ),
    (
        re.compile(
            r"(?P<peer>\S+) charges at least (?P<least>\d+) yocto a call, above max_price "
            r"(?P<max>\d+)"
        ),
        _above_max,
    ),
    (
        re.compile(r"(?P<service>'.*') costs (?P<price>\d+), above max_price (?P<max>\d+)"),
        _costs,
    ),
    (
        re.compile(
            r"no offer of (?P<service>'.*') at or below (?P<max>\d+) yocto"
            r"(?: with a stake of at least (?P<stake>\d+) yocto)?; (?P<left>.*)"
        ),
        _no_offer,
    ),
    (
        re.compile(
            r"challenge period (?P<asked>\d+) ms is below this payee's minimum (?P<min>\d+) ms"
        ),
        _short_challenge,
    ),
    (
        re.compile(
            r"the provider is unstaking \(requested at (?P<at>\d+)\): a paid request with "
            r"deadline (?P<deadline>\d+) after (?P<last>\d+) could not be claimed .*",
            re.DOTALL,
        ),
        _unstaking,
    ),
    (
        re.compile(r"a bonded stake's penalty and window can only grow \(unstake to lower them\)"),
        _fixed(
            "a bonded stake's --penalty and --claim-window can only grow "
            "(p2pay unstake, then stake again, to lower them)"
        ),
    ),
    (
        re.compile(r"penalty and window cannot change while claims are open"),
        _fixed(
            "--penalty and --claim-window cannot change while claims against the stake are open"
        ),
    ),
    (
        re.compile(r"payee must differ from payer"),
        _fixed("PEER is this home's own identity: a channel needs another peer"),
    ),
)


def explain(message: str, details: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """A library message in the user's terms, and the details with what it parsed out.

    Args:
        message: the library's message (`P2payError.message`).
        details: the library's details (`P2payError.details`).

    Returns:
        The message to show (unchanged if no rewrite knows it) and the details.
    """
    out: dict[str, Any] = dict(details or {})
    for pattern, rewrite in REWRITES:
        match = pattern.fullmatch(message)
        if match is None:
            continue
        found: dict[str, Any] = {}
        text = rewrite(match, found)
        if text is not None:
            out.update(found)
            return text, out
    return message, out
