"""Attack (claim queue): the in-place v3 -> v4 upgrade of a SQLite ledger breaks every
process of the previous release that has the file open, and an honest provider among them
is slashed (specs/claims.md C-1).

A previous-release process checks the file's version only when it opens it, and reads each
stake with its exact field set (`_blob_entity`: "corrupt ledger: a stored Stake has the
wrong fields"). Version 4 added `Stake.last_window_ends` to every stake record: a provider
node of the previous release that was running when anyone opened the file with this release
could no longer answer a claim (every answer reads its stake) and was UPHELD: measured with
the real nodes in attacks/claimq/upgrade_under_old.py (old `p2pay node run` of 916c95d, its
answer retried on "wrong fields" until the 5 s window ended; slashed 0.1 token).

The rule this holds: records that processes of the previous version still read keep their
fields through the upgrade (the version and params, read once at open, may change).
Deterministic: no clock, no network.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from p2pay.core import codec
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.ledger.sqlite import SqliteLedger

ALICE = Keypair.from_seed(bytes([21]) * 32)
BOB = Keypair.from_seed(bytes([22]) * 32)
#: the Stake fields of a version 3 file, exactly what a version 3 process decodes
V3_STAKE_FIELDS = {
    "account",
    "amount",
    "penalty",
    "claim_window_ms",
    "unbonding_at",
    "open_claims",
    "unstake_requested_at",
}


async def test_the_upgrade_keeps_stake_records_readable_by_a_running_v3_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    clock = [1_000_000]
    ledger = await SqliteLedger.create(path, dev=True, clock=lambda: clock[0])
    await ledger.mint(ALICE, ALICE.account, 10**20)
    await ledger.mint(BOB, BOB.account, 10**9)
    await ledger.stake(BOB, 10**6, 10**5, 10_000)
    cid = await ledger.open_channel(ALICE, BOB.account, 10**6, 5_000)

    def request(n: int) -> Request:
        return Request.create(
            ALICE,
            ledger=ledger.ledger_id,
            channel=cid,
            n=n,
            paid=100 * n,
            price=100,
            service="echo",
            body=bytes([n]),
            deadline=clock[0] - 1,
        )

    await ledger.file_claim(ALICE, request(1))
    await ledger.aclose()
    # make it a version 3 file, as the previous release wrote it
    conn = sqlite3.connect(path)
    params = codec.decode(conn.execute("SELECT value FROM meta WHERE key='params'").fetchone()[0])
    params.pop("claims_per_window", None)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'params'", (codec.encode(params),))
    for account, data in conn.execute("SELECT account, data FROM stakes").fetchall():
        stake = codec.decode(data)
        stake = {k: v for k, v in stake.items() if k in V3_STAKE_FIELDS}
        conn.execute("UPDATE stakes SET data = ? WHERE account = ?", (codec.encode(stake), account))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (codec.encode(3),))
    conn.commit()
    conn.close()

    # a process of this release opens it (read as it is: no upgrade) and files a claim
    clock[0] += 1
    upgraded = await SqliteLedger.open(path, clock=lambda: clock[0])
    try:
        await upgraded.file_claim(ALICE, request(2))
    finally:
        await upgraded.aclose()
    # what a version 3 process, still running, reads for the provider's next answer
    conn = sqlite3.connect(path)
    try:
        for (data,) in conn.execute("SELECT data FROM stakes").fetchall():
            fields = set(codec.decode(data))
            assert fields == V3_STAKE_FIELDS, (
                f"a running v3 process refuses this stake (extra {fields - V3_STAKE_FIELDS}): "
                "its watcher cannot answer a claim and is slashed"
            )
    finally:
        conn.close()
