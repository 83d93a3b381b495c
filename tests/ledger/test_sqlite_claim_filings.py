"""`SqliteLedger.claim_filings_of` reads the account's claims only (attack round 27).

e58409c answered it by decoding every ClaimFiled event of the ledger file, under the file's
lock: strangers' claims, free to file between two keys of one attacker (150,000 of them),
made a restarted provider's first listing, and every ledger call of its node waiting for
the lock, take longer than a claim's window (UPHELD). It now reads the account's claims
through the claimant / respondent index, a page at a time: here a provider with 2 claims
against it, on a ledger holding 40 strangers' claims, has 2 claims decoded and no event.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.ledger import sqlite as sqlite_module
from p2pay.ledger.sqlite import SqliteLedger

BOB = Keypair.from_seed(bytes([2]) * 32)  # the provider
ALICE = Keypair.from_seed(bytes([1]) * 32)  # its client
MALLORY = Keypair.from_seed(bytes([7]) * 32)  # a stranger's two keys
TRENT = Keypair.from_seed(bytes([8]) * 32)
TOKEN = 10**24


async def file_claims(ledger: SqliteLedger, payer: Keypair, payee: Keypair, count: int) -> None:
    channel = await ledger.open_channel(payer, payee.account, 10**6, 60_000)
    deadline = await ledger.now() - 1  # already past: claimable at once
    for n in range(1, count + 1):
        request = Request.create(
            payer, ledger=ledger.ledger_id, channel=channel, n=n, paid=n, price=1,
            service="nosuch", body=b"x", deadline=deadline,
        )  # fmt: skip
        await ledger.file_claim(payer, request)


async def test_the_filings_of_an_account_decode_its_claims_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await SqliteLedger.create(tmp_path / "ledger.sqlite", dev=True, claim_bond=0)
    try:
        for key in (BOB, ALICE, MALLORY, TRENT):
            await ledger.mint(key, key.account, 10 * TOKEN)
        for payee in (BOB, TRENT):
            await ledger.stake(payee, TOKEN, TOKEN, 60_000)
        await file_claims(ledger, MALLORY, TRENT, 40)
        await file_claims(ledger, ALICE, BOB, 2)
        decoded: list[object] = []
        real_entity, real_event = sqlite_module._blob_entity, sqlite_module._stored_event

        def entity(kind: type, data: bytes) -> object:
            found = real_entity(kind, data)
            decoded.append(found)
            return found

        def event(row: tuple[object, ...]) -> object:
            found = real_event(row)
            decoded.append(found)
            return found

        monkeypatch.setattr(sqlite_module, "_blob_entity", entity)
        monkeypatch.setattr(sqlite_module, "_stored_event", event)
        filings = await ledger.claim_filings_of(BOB.account, "respondent")
        assert [f.fields["claimant"] for f in filings] == [ALICE.account] * 2
        assert len(decoded) == 2, len(decoded)  # BOB's two claims, nothing of TRENT's 40
    finally:
        await ledger.aclose()
