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

import trio
from node_support import wait_until
from raw_payer import watcher_steps
from test_watcher_claims import (
    ALICE,
    BOB,
    BOND,
    LEDGER_ID,
    PENALTY,
    PRICE,
    STAKE,
    claimed_request,
)

from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node
from p2pay.node.watcher import CURSOR_KEY
from p2pay.store.sqlite import SqliteStore

AHEAD_MS = 3_600_000
WINDOW_MS = 6_000

CONFIG = NodeConfig(
    watch_interval=0.5,  # rescans every 10 s (RESCAN_STEPS = 20, the default)
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
)


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


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_claim_open_at_a_restart_survives_one_failed_listing_read(
    tmp_path: Path,
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Glitch(params)
    Glitch.armed, Glitch.glitches = False, 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    store = await SqliteStore.open(tmp_path / "bob.sqlite")
    try:
        taken = trio.Event()
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=CONFIG
        ) as bob:
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
            channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
            watcher = bob.watcher
            assert watcher is not None

            async def crash_point(*args: Any, **kwargs: Any) -> None:
                taken.set()  # the node dies while making its answer
                await trio.sleep_forever()

            watcher._answer_claim = crash_point  # type: ignore[method-assign]
            claim_id = await ledger.file_claim(
                ALICE, claimed_request(channel, 1, deadline=await ledger.now() - 1)
            )
            with trio.fail_after(20):
                await taken.wait()
            filed_seq = max(
                e.seq for e in await ledger.events() if e.fields.get("claim") == claim_id
            )

            async def cursor_past() -> bool:
                return watcher.cursor >= filed_seq

            await wait_until(cursor_past, timeout=20)
            await watcher_steps(bob, 2)  # its cursor staged and stored
        raw = await store.get_meta(CURSOR_KEY)
        assert raw is not None and int.from_bytes(raw, "big") >= filed_seq  # not read again
        # the restart: the event is behind the stored cursor, only the rescan finds it
        Glitch.armed = True
        async with open_node(
            key=BOB, ledger=ledger, network=MemoryNetwork(), store=store, config=CONFIG
        ) as again:
            again.serve("echo", echo, price=PRICE)
            assert again.watcher is not None
            claim = await ledger.claim(claim_id)
            assert claim is not None and claim.state is ClaimState.OPEN
            window_ends = claim.window_ends
            print(f"restarted with {window_ends - await ledger.now()} ms of the window left")

            async def decided_or_past() -> bool:
                found = await ledger.claim(claim_id)
                assert found is not None
                return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

            await wait_until(decided_or_past, timeout=60)
        claim = await ledger.claim(claim_id)
        assert claim is not None
        if claim.state is ClaimState.OPEN:
            await ledger.resolve_claim(ALICE, claim_id)
            claim = await ledger.claim(claim_id)
            assert claim is not None
        print(f"after one failed listing read at the restart: {claim.state}, {Glitch.glitches}")
        assert Glitch.glitches == 1  # the failure hit the restart's first listing
        assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
        assert claim.state is ClaimState.DELIVERED, claim.state
    finally:
        await store.aclose()
