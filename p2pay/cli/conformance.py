"""``p2pay conformance MULTIADDR``: run the conformance cases against an implementation.

Theory of operation
-------------------
A thin wrapper over `p2pay.conformance.run_conformance`: it resolves the target's ledger
id and, with ``--home DIR``, the payer (that home's key) and the ledger (that home's
configured one, or ``--ledger``), on which it opens the paid cases' channel. It prints
one line per case as each ends (``--json``: one document at the end) and exits 0 only if
no case failed, 1 if one did.

The home is used only when given explicitly (``--home`` on the command or on ``p2pay``):
the tester opens channels from that identity. The paid cases can cost up to those
channels' deposits (a target may redeem every voucher it gets), which ``--max-deposit``
caps; the paid cases SKIP when the target's prices need more. The home's store is not
touched, so a ``p2pay node run`` may use the home at the same time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from p2pay.cli import render
from p2pay.cli.common import AMOUNT, echo, json_option, ledger_option, run
from p2pay.cli.home import CliError, Home, open_ledger


def _parse_ledger_id(text: str) -> bytes:
    raw = text.strip().removeprefix("0x")
    try:
        value = bytes.fromhex(raw)
    except ValueError:
        raise CliError(f"ledger id {text[:80]!r}: expected hex digits") from None
    if not 1 <= len(value) <= 64:
        raise CliError(f"ledger id {text[:80]!r}: 1 to 64 bytes")
    return value


def _explicit_home(ctx: click.Context, home: Path | None) -> Home | None:
    if home is None:
        parent = ctx.parent.params.get("home") if ctx.parent is not None else None
        home = parent if isinstance(parent, Path) else None
    if home is None and os.environ.get("P2PAY_HOME"):
        home = Path(os.environ["P2PAY_HOME"])
    return Home(home.expanduser().absolute()) if home is not None else None


@click.command("conformance")
@click.argument("multiaddr")
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="A home on the target's ledger, with funds: its key pays for the paid cases.",
)
@ledger_option
@click.option(
    "--ledger-id",
    "ledger_id_text",
    metavar="HEX",
    help="The target's ledger id (default: the home's ledger's).",
)
@click.option(
    "--case",
    "patterns",
    multiple=True,
    metavar="PATTERN",
    help="Run only the cases matching PATTERN (e.g. 'hello.*' or 'paid'); repeatable.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=30),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each answer of the target (at most 30; a case: 120 s at most).",
)
@click.option(
    "--max-deposit",
    type=AMOUNT,
    default="0.001 token",
    show_default=True,
    help="The most the paid cases may cost: the deposits of the channels they open, in all. "
    "A target may redeem every voucher it gets, so they can cost up to that; they SKIP when "
    "the target's prices need more.",
)
@json_option
@click.pass_context
def conformance(
    ctx: click.Context,
    multiaddr: str,
    home_dir: Path | None,
    ledger: str | None,
    ledger_id_text: str | None,
    patterns: tuple[str, ...],
    timeout: float,
    max_deposit: int,
    as_json: bool,
) -> None:
    """Drive the implementation at MULTIADDR (ending in /p2p/<PeerID>) through the
    protocol's conformance cases (specs/protocol.md), one line per case.

    With --home, the home's key opens small channels to the target on the home's ledger
    (which must be the target's) for the paid cases, and starts their close at the end;
    without it those cases are skipped. The paid cases can cost up to those channels'
    deposits, at most --max-deposit: a target may redeem every voucher it gets. Exit
    status 0 only if no case failed.
    """
    from p2pay.conformance import run_conformance, select
    from p2pay.conformance.cases import CaseResult, cost_note
    from p2pay.core.errors import LocalProtocolError
    from p2pay.net.base import split_p2p

    try:
        split_p2p(multiaddr)
    except LocalProtocolError as exc:
        raise CliError(exc.message) from None
    if not select(patterns):
        raise CliError(f"no case matches {' '.join(patterns)!r}")
    ledger_id = _parse_ledger_id(ledger_id_text) if ledger_id_text else None
    home = _explicit_home(ctx, home_dir)
    key = home.key() if home is not None else None
    spec = home.ledger_spec(ledger) if home is not None else None
    if spec is None and ledger_id is None:
        raise CliError(
            "the target's ledger id is needed for any hello: pass --home DIR (a home on its "
            "ledger) or --ledger-id HEX"
        )

    if spec is not None and not as_json and any(c.paid for c in select(patterns)):
        echo(f"note: {cost_note(max_deposit)}")

    def show(result: CaseResult) -> None:
        if not as_json:
            echo(f"{result.status}  {result.id:<24}  {result.section:<16}  {result.reason}")

    async def go() -> Any:
        if spec is None:
            return await run_conformance(
                multiaddr, ledger_id=ledger_id, patterns=patterns, timeout=timeout, on_result=show
            )
        async with open_ledger(spec) as led:
            return await run_conformance(
                multiaddr,
                ledger_id=ledger_id,
                payer=key,
                ledger=led,
                patterns=patterns,
                timeout=timeout,
                max_deposit=max_deposit,
                on_result=show,
            )

    report = run(go)
    if as_json:
        render.print_json(report.to_dict())
    else:
        for note in report.notes:
            echo(f"note: {note}")
        echo(report.summary())
    ctx.exit(0 if report.ok else 1)
