"""A payer channel across a restart (protocol.md 14.2): what the node stores per channel
(`PayerRecord`) and which requests it loads back as abandoned give the same channel, so
the receipt check (14.3) and resync (15) give the same verdicts after a restart."""

from __future__ import annotations

import dataclasses

import pytest

from p2pay.core.channel import ChannelStatus, PayerChannel, Pending, Replay
from p2pay.core.errors import ErrorCode, LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, blake2b256, refusal_body
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.node.book import ChannelBook, _payer_record
from p2pay.node.types import NodeConfig
from p2pay.persist import Persister
from p2pay.store import Batch, MemoryStore, OutgoingRequest

ALICE = Keypair.from_seed(bytes([1]) * 32)  # payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # payee
LEDGER = b"p2pay:test:payer-restore"
CHANNEL = blake2b256(b"channel alice->bob (restore)")
OTHER = blake2b256(b"another channel")
LATER = 1_700_000_060_000
PRICE = 10


def payer() -> PayerChannel:
    return PayerChannel(
        ledger=LEDGER, channel=CHANNEL, payer=ALICE.public, payee=BOB.public, deposit=1_000
    )


def send(ch: PayerChannel) -> Request:
    return ch.next_request(ALICE, service="echo", body=b"q", price=PRICE, deadline=LATER)


def answer(req: Request, *, price: int, spent: int, status: str = "OK") -> Response:
    body = b"ok" if status == "OK" else refusal_body("no")
    return Response.create(BOB, request=req, status=status, price=price, spent=spent, body=body)


def state(ch: PayerChannel) -> dict[str, object]:
    fields = {f.name: getattr(ch, f.name) for f in dataclasses.fields(ch)}
    return {k: dict(v) if isinstance(v, dict) else v for k, v in fields.items()}


def test_restore_abandoned_adds_the_unanswered_and_bounds_absorbed() -> None:
    ch = payer()
    r1, r2, r3 = send(ch), send(ch), send(ch)
    record = dataclasses.replace(_payer_record(ch), spent=2 * PRICE, absorbed=2 * PRICE, released=0)
    restored = PayerChannel(
        ledger=LEDGER,
        channel=CHANNEL,
        payer=ALICE.public,
        payee=BOB.public,
        deposit=record.deposit,
        last_n=record.last_n,
        paid=record.paid,
        spent=record.spent,
        absorbed=record.absorbed,
    )
    # only r1 is on record unanswered: absorbed cannot exceed what it may explain
    restored.restore_abandoned([Pending(r1, PRICE)])
    assert (set(restored.abandoned), restored.in_flight) == ({1}, {})
    assert (restored.absorbed, restored.outstanding) == (PRICE, 0)
    assert r2.n not in restored.abandoned and r3.n not in restored.abandoned
    # ``spent`` stays as stored: a store this code wrote never holds more absorbed than
    # its unanswered requests explain (cuts are taken at run time); one written before the
    # cut rule may (a claim-DELIVERED request counted as answered, its charge absorbed),
    # and cutting then would take an honest payee's charge out of spent (protocol.md 14.3)
    assert restored.spent == 2 * PRICE


@pytest.mark.parametrize(
    "bad",
    [
        lambda ch: Request.create(
            ALICE,
            ledger=LEDGER,
            channel=OTHER,
            n=1,
            paid=PRICE,
            price=PRICE,
            service="echo",
            body=b"",
            deadline=LATER,
        ),
        lambda ch: Request.create(
            ALICE,
            ledger=LEDGER,
            channel=CHANNEL,
            n=ch.last_n + 1,
            paid=ch.paid + PRICE,
            price=PRICE,
            service="echo",
            body=b"",
            deadline=LATER,
        ),
    ],
    ids=["another channel", "above last_n"],
)
def test_restore_abandoned_refuses_requests_the_channel_did_not_send(bad: object) -> None:
    ch = payer()
    r1 = send(ch)
    ch.abandon(r1.n)
    before = state(ch)
    assert callable(bad)
    with pytest.raises(LocalProtocolError):
        ch.restore_abandoned([Pending(r1, PRICE), Pending(bad(ch), PRICE)])
    assert state(ch) == before, "nothing restored when one request is not the channel's"


def _live_channel() -> tuple[PayerChannel, dict[int, tuple[Request, str]], Response]:
    """A channel with absorbed, released and forgotten all above 0, one request in flight;
    the requests the node stores, with their states; and r1's stored receipt."""
    ch = payer()
    r1, r2, r3, r4 = send(ch), send(ch), send(ch), send(ch)
    ch.abandon(r1.n)  # served and charged (spent 10), its receipt lost
    stored_r1 = answer(r1, price=PRICE, spent=PRICE)
    ch.on_response(answer(r2, price=PRICE, spent=2 * PRICE))  # jump: r1's charge
    ch.on_response(answer(r3, price=0, spent=2 * PRICE, status=ErrorCode.UNKNOWN_SERVICE.value))
    # the payee holds a voucher of ours numbered above our last_n: we lost state once
    forgotten = Request.create(
        ALICE,
        ledger=LEDGER,
        channel=CHANNEL,
        n=9,
        paid=100,
        price=PRICE,
        service="echo",
        body=b"forgotten",
        deadline=LATER,
    )
    outcome = ch.on_replay(r4.n, last_n=9, voucher=forgotten, paid_max=100, spent=50)
    assert outcome is Replay.SUPERSEDED  # r4 dropped (the node deletes its row)
    r10 = send(ch)  # in flight when the node stops
    assert (ch.absorbed, ch.released, ch.spent) == (PRICE, PRICE, 2 * PRICE)
    # forgotten = 100 - (spent 20 - absorbed 10 + released 10 + abandoned 10) = 70
    assert ch.forgotten == 70 and ch.paid == 110 and ch.last_n == 10
    stored = {1: (r1, "awaiting"), 2: (r2, "answered"), 3: (r3, "refused"), 10: (r10, "awaiting")}
    return ch, stored, stored_r1


async def test_a_node_restart_restores_the_channel_the_receipt_check_uses() -> None:
    live, stored, stored_r1 = _live_channel()
    rows = [
        OutgoingRequest(
            request_hash=req.hash,
            channel=CHANNEL,
            n=n,
            payee=BOB.public,
            price=PRICE,
            deadline=LATER,
            frame=req.to_frame(),
            state=state_,
        )
        for n, (req, state_) in stored.items()
    ]
    strays = [  # ignored on load: a row of a channel we do not pay on, one without frame
        dataclasses.replace(rows[0], request_hash=blake2b256(b"stray"), channel=OTHER),
        dataclasses.replace(rows[0], request_hash=blake2b256(b"no frame"), frame=b""),
    ]
    store = MemoryStore()
    await store.write(Batch(payer=[_payer_record(live)], requests=rows + strays))
    book = ChannelBook(
        ledger=MemoryLedger(Params(ledger_id=LEDGER, dev=True)),
        store=store,
        persister=Persister(store),
        account=ALICE.public,
        config=NodeConfig(watcher=False),
    )
    await book.load()
    restored = book.payer_channels[CHANNEL]

    stopped = dataclasses.replace(live, in_flight=dict(live.in_flight))
    stopped.abandon(10)  # in flight when the node stopped: abandoned after the restart
    assert state(restored) == state(stopped)
    assert (restored.absorbed, restored.forgotten, restored.released) == (PRICE, 70, PRICE)
    assert restored.outstanding == stopped.outstanding == 70 + 2 * PRICE - PRICE
    assert restored.status is ChannelStatus.OPEN

    # r1's stored receipt served again: accepted (rule 8), as it is without a restart
    for ch in (restored, stopped):
        got = ch.on_response(stored_r1)
        assert (got.n, ch.absorbed, ch.spent) == (1, 0, 2 * PRICE)
    assert state(restored) == state(stopped)
