"""Attack round 21 on 1019fb9: a payer's bad signatures each forced a store commit.

1019fb9 stores a channel's revoked deferral before the unsigned INVALID_SIGNATURE refusal
that revoked it goes out (protocol.md 13.4 e): `_ServerSession._on_request` staged the
payee channel's record, and held the refusal until that commit was durable, for *every*
such refusal, although only the first one revokes anything (later ones, and all of them
under a limit of 0, change nothing). A payer with one channel then made its payee commit
(BEGIN IMMEDIATE, fsync) once per request it signs badly: a request costs it no ledger
transaction and no money, only its refusal budget (`max_refusals_per_s` per stream);
before 1019fb9 these refusals wrote nothing.

Measured with `SqliteStore.commits` (a count, not a time): 20 badly signed re-sends of a
used number made 20 commits on 1019fb9; now one (the revocation), none with limit 0, and
the revocation is still stored (a restart keeps it). Every wait bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_deferred_restart import (
    ALICE,
    BOB,
    CAROL,
    PRICE,
    deferred_channel,
    echo,
    payer_request,
    send_all,
    served,
)

from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Refusal
from p2pay.node import open_node
from p2pay.store.sqlite import SqliteStore

BAD = 20


@pytest.mark.parametrize("limit", [5 * PRICE, 0])
async def test_bad_signatures_after_the_revocation_write_nothing(
    tmp_path: Path, limit: int
) -> None:
    ledger, config, channel = await deferred_channel(b"r21-refusal-commits", limit)

    def request(n: int, key: Keypair, body: bytes) -> bytes:
        return payer_request(ledger, channel, n, key, body)

    path = tmp_path / "bob.sqlite"
    store = await SqliteStore.open(path)
    try:
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            bob.serve("echo", echo, price=PRICE)
            (first,) = await send_all(bob.addrs[0], ledger, [request(1, ALICE, b"x")])
            assert served(first), first
            before = store.commits
            # a used number signed badly: checked at once (not deferrable), refused unsigned
            bad = [request(1, CAROL, b"bad %d" % i) for i in range(BAD)]
            answers = await send_all(bob.addrs[0], ledger, bad)
            for answer in answers:
                assert isinstance(answer, Refusal), answer
                assert answer.code == ErrorCode.INVALID_SIGNATURE.value, answer
            # on 1019fb9: BAD commits (one per refusal)
            assert store.commits - before == (1 if limit else 0)
            assert bob.payee_channels[channel].deferral_revoked is bool(limit)
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            assert bob.payee_channels[channel].deferral_revoked is bool(limit)
    finally:
        await store.aclose()
