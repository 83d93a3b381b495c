"""Attack round 35 on e411ef6: a restarted payee's check of the stored requests above its
checked voucher (protocol.md 13.4 e, `ChannelBook._check_stored`) never reads the rows
numbered `last_n` that the previous page cut off.

The check pages through `Store.vouchers_near(channel, key, limit=_CHECK_PAGE)`: the rows
numbered `key`, and the `_CHECK_PAGE` rows above it (by ``(n, request_hash)``), then goes
on from the highest number it saw. A page after the first re-reads the rows numbered
`key` (twins cut by the previous page's limit). But the loop runs only while
``key < last_n``: once a page's rows reach `last_n`, it ends, and the twins numbered
`last_n` beyond that page's limit are never read, whatever the page size (the pages are
aligned by how many requests the payer sent).

A node gets twins at its `last_n` when a claim on another request of that number is
refused REPLAY through the claim (a signed refusal stored with the request's frame,
`Watcher._store_answer`); a request admitted unchecked there with a bad signature and a
price of 0 (it does not become best, so the restart's check of best does not see it) and
a larger hash than the twin's stays unchecked after a restart: the channel keeps
deferring (13.4 rule c says it must not).

Here, with crafted records in a MemoryStore and a SqliteStore: checked voucher n=1, good
requests n=2..4, at n=5 a good twin T and the bad request B (hash(T) < hash(B)),
last_n=5. On e411ef6 the first page (key 1) holds 2, 3, 4 and T; its top is 5 = last_n,
the loop ends; B is never read and `deferral_revoked` stays False (both stores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pay.core.channel import PayeeChannel
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.node.book import ChannelBook
from p2pay.store.base import Batch, Store, StoredResponse
from p2pay.store.memory import MemoryStore
from p2pay.store.sqlite import SqliteStore

PAYER = Keypair.from_seed(bytes([7]) * 32)
FORGER = Keypair.from_seed(bytes([8]) * 32)
PAYEE = Keypair.from_seed(bytes([9]) * 32)
LEDGER = bytes(32)
CHANNEL = bytes([1]) * 32
LAST_N = 5


def _request(n: int, paid: int, key: Keypair, body: bytes, price: int = 1) -> Request:
    return Request.create(
        key, ledger=LEDGER, channel=CHANNEL, n=n, paid=paid, price=price,
        service="echo", body=body, deadline=10**12,
    )  # fmt: skip


def _stored(request: Request) -> StoredResponse:
    return StoredResponse(
        request_hash=request.hash,
        channel=CHANNEL,
        n=request.n,
        frame=b"\x00" * 8,
        expires_at=10**15,
        request_frame=request.to_frame(),
    )


def _records() -> tuple[Request, list[Request]]:
    """The checked voucher and the requests stored above it: the bad one's hash above
    its good twin's."""
    verified = _request(1, 1, PAYER, b"1")
    good = [_request(n, n, PAYER, b"%d" % n) for n in range(2, LAST_N)]
    i = 0
    while True:
        twin = _request(LAST_N, LAST_N - 1, PAYER, b"twin %d" % i, price=0)
        bad = _request(LAST_N, LAST_N - 1, FORGER, b"bad %d" % i, price=0)
        if twin.hash < bad.hash:
            break
        i += 1
    return verified, [*good, twin, bad]


class _Book:
    def __init__(self, store: Store) -> None:
        self.store = store


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_restart_checks_every_request_numbered_last_n(kind: str, tmp_path: Path) -> None:
    verified, stored = _records()
    store: Store
    if kind == "memory":
        store = MemoryStore()
    else:
        store = await SqliteStore.open(tmp_path / "payee.sqlite")
    try:
        await store.write(Batch(responses=[_stored(r) for r in stored]))
        ch = PayeeChannel(
            ledger=LEDGER, channel=CHANNEL, payer=PAYER.public, payee=PAYEE.public,
            deposit=10**9, last_n=LAST_N, paid_max=LAST_N - 1, verified=verified,
            best=stored[-3],
        )  # fmt: skip
        await ChannelBook._check_stored(_Book(store), ch)  # type: ignore[arg-type]
        assert not stored[-1].verify(PAYER.public)
        assert ch.deferral_revoked, "a stored request numbered last_n went unchecked"
    finally:
        await store.aclose()
