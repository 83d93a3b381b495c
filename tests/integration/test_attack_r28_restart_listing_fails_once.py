"""Attack round 28 on b7704c4: one transient failure of the restart's first claim
listing leaves the claims open at the restart undefended until the next rescan.

A claim whose ClaimFiled event the provider took before a crash (its cursor stored past
the event) and whose answer never landed is found again, after the restart, only by the
first step's rescan (`_defend_open_claims`, round 27). That rescan first lists the claims
against us from their filings (`_listed_once` -> `Ledger.claim_filings_of`, e58409c;
on SQLite since b7704c4 one index read then a lock turn per 256 claims, each one a
chance to meet "ledger file busy": `SettlementError(OVERLOADED)`, the typed error the
SQLite ledger raises when another process holds the file past its busy timeout). If that
one read fails, `_rescan` logs "rescan of the claims against us failed" and nothing reads
the open claims again until the next rescan, `RESCAN_STEPS` (20) steps later: 20 *
`watch_interval`, past a short window. Round 27's setting: 0.5 s watch interval (rescans
10 s apart), a 6 s window; the endpoint fails exactly one read, the restart's first
claim listing (`claim_filings_of`, or `claim_ids_of` on versions without it). BOB must
answer the claim in its window. Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_attack_r27_restart_clock_glitch import claim_open_at_a_restart
from test_watcher_claims import BOND, LEDGER_ID

from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger


class Glitch(MemoryLedger):
    """An endpoint that fails one read once `armed`: the first listing of the claims
    against an account after it (`claim_filings_of`, or `claim_ids_of` if that comes
    first), as a busy SQLite ledger
    file fails it. Every other read and operation goes through."""

    armed = False
    glitches = 0

    def _fail_once(self, role: Any) -> None:
        if Glitch.armed and role == "respondent":
            Glitch.armed = False
            Glitch.glitches += 1
            raise SettlementError(
                "ledger file busy, nothing read or applied: database is locked",
                code=ErrorCode.OVERLOADED,
            )

    async def claim_filings_of(self, account: bytes, role: Any = None) -> Any:
        self._fail_once(role)
        return await super().claim_filings_of(account, role)

    async def claim_ids_of(self, account: bytes, role: Any = None) -> Any:
        self._fail_once(role)
        return await super().claim_ids_of(account, role)


async def test_a_claim_open_at_a_restart_survives_one_failed_listing_read(
    tmp_path: Path,
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    Glitch.armed, Glitch.glitches = False, 0
    claim = await claim_open_at_a_restart(
        tmp_path, Glitch(params), lambda: setattr(Glitch, "armed", True)
    )
    print(f"after one failed listing read at the restart: {claim.state}, {Glitch.glitches}")
    assert Glitch.glitches == 1  # the failure hit the restart's first listing
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert claim.state is ClaimState.DELIVERED, claim.state
