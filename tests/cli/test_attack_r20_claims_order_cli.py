"""Attack round 20 on 746a80e: `p2pay claims list` no longer lists claims in filing order.

7cbca57 made `claims list` read the claims one at a time, by role (`claim_ids_of` for
"claimant", then for "respondent"), and merge the two lists by ``filed_at``. Ledger time
never runs back, but it does not always move either: every operation of one EVM block has
the block's timestamp, and the SQLite dev ledger's time is ``max(clock, last operation's
time)`` in ms. Claims of both roles filed at the same ledger time come out claimant
first, whatever the order they were filed in (``Ledger.claims_of``, which the command
read before, gives the filing order).

Here P is a provider (claims against it) and a payer (its own claims): C claims against
P, then P claims against C, both at one ledger time (the ledger opened with a clock that
stands still: each operation takes the last one's time). On 746a80e `claims list` for P
shows P's own claim first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
from test_cli import (  # noqa: F401 - fixtures
    InProcess,
    cli,
    world,
)

from p2pay.cli.home import Home
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.ledger.sqlite import SqliteLedger

PRICE = 1000


def test_claims_list_keeps_filing_order_across_roles_at_one_ledger_time(
    world: dict[str, Any],  # noqa: F811
) -> None:
    c: InProcess = world["cli"]
    d: Path = world["dir"]
    channels = {}
    for home, other in (("p", "c"), ("c", "p")):
        c.ok("--home", home, "stake", "1 token", "--penalty", "100 milli", "--claim-window",
             "60s")  # fmt: skip
        doc = c.js("--home", other, "channel", "open", world[home]["peer_id"], "--deposit",
                   "10 milli", "--offline")  # fmt: skip
        channels[other] = bytes.fromhex(doc["channel"])  # `other` pays `home`
    client, provider = Home(d / "c").key(), Home(d / "p").key()

    async def file() -> list[bytes]:
        # a clock that stands still: every operation takes the last one's time
        led = await SqliteLedger.open(d / "ledger.sqlite", clock=lambda: 0)
        try:
            # the ledger's last operation was a moment ago (the channels opened): its time
            deadline = int(time.time() * 1000) - 5_000

            def request(payer: Keypair, channel: bytes) -> Request:
                return Request.create(
                    payer, ledger=led.ledger_id, channel=channel, n=1, paid=PRICE,
                    price=PRICE, service="echo", body=b"x", deadline=deadline,
                )  # fmt: skip

            against_p = await led.file_claim(client, request(client, channels["c"]))
            by_p = await led.file_claim(provider, request(provider, channels["p"]))
            times = {(await led.claim(i)).filed_at for i in (against_p, by_p)}  # type: ignore[union-attr]
            assert len(times) == 1  # one ledger time: the setting of the attack
            return [against_p, by_p]
        finally:
            await led.aclose()

    filed = trio.run(file)
    doc = c.js("--home", "p", "claims", "list")
    listed = [bytes.fromhex(row["claim"]) for row in doc["claims"]]
    roles = [row["role"] for row in doc["claims"]]
    print("filed:", [i.hex()[:8] for i in filed], "listed:", [i.hex()[:8] for i in listed], roles)
    assert sorted(listed) == sorted(filed)  # each once
    assert listed == filed, roles
