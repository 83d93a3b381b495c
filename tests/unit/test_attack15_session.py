"""Attacks on the sans-IO stream sessions (p2pay.core.session, issue 15 item 1): rules of
specs/protocol.md §§5, 9, 12-15, 19 that a session breaks on the inputs below."""

from __future__ import annotations

import os

from p2pay.core.channel import PayeeChannel
from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, ServiceTerms, blake2b256
from p2pay.core.session import (
    HelloReceived,
    RequestAdmitted,
    RequestReceived,
    RequestRefused,
    ServerSession,
)

ALICE = Keypair.from_seed(bytes([161]) * 32)  # the payer
BOB = Keypair.from_seed(bytes([162]) * 32)  # the payee
LEDGER = b"p2pay:test:attack15"
CHANNEL = blake2b256(b"attack15 alice->bob")
NOW = 1_700_000_000_000
PRICE = 10
PAYER_MAX_FRAME = 4096  # the least a peer may announce (§5.3): a light client
MAX_BODY = 8192  # the payee's service takes bodies larger than the payer's max_frame


def _hello(key: Keypair, **kw: object) -> Hello:
    fields: dict[str, object] = {
        "ledger": LEDGER,
        "max_frame": 1 << 20,
        "max_in_flight": 4,
        "deadline_horizon": 600_000,
    }
    fields.update(kw)
    return Hello.create(key, **fields)  # type: ignore[arg-type]


def _request(n: int, body: bytes) -> Request:
    return Request.create(
        ALICE,
        ledger=LEDGER,
        channel=CHANNEL,
        n=n,
        paid=n * PRICE,
        price=PRICE,
        service="echo",
        body=body,
        deadline=NOW + 60_000,
    )


def test_resync_refusal_fits_the_payers_announced_max_frame() -> None:
    """protocol.md §5.3: a peer MUST NOT send a frame larger than the other peer's
    ``max_frame`` (the one of its hello, at least 4096), and "a refusal ... always fits".
    A REPLAY (or slice-rule PAYMENT_REQUIRED) carries the resync details of §15, whose
    ``voucher`` is the whole request frame *with its body*. A payer announcing 4096 that
    sent one request with a 4000-byte body (within the service's ``max_body``) and then
    lost its state gets a REPLAY larger than its max_frame: it refuses it as
    FRAME_TOO_LARGE and resets, and every later request of its gets the same REPLAY, so
    it can never resync with this payee (§15)."""
    s = ServerSession(
        ledger=LEDGER,
        remote=ALICE.public,
        max_frame=1 << 20,
        max_in_flight=4,
        deadline_horizon=600_000,
        max_refusals_per_s=50,
        refusal_burst=200,
        now=NOW,
    )
    payer_hello = _hello(ALICE, max_frame=PAYER_MAX_FRAME, max_in_flight=1)
    (event,) = s.receive(payer_hello.to_frame(), NOW)
    assert isinstance(event, HelloReceived)
    services = (ServiceTerms(name="echo", price=PRICE, max_body=MAX_BODY),)
    s.hello_frame(_hello(BOB, services=services))
    ch = PayeeChannel(
        ledger=LEDGER,
        channel=CHANNEL,
        payer=ALICE.public,
        payee=BOB.public,
        deposit=10_000,
        unverified_credit_limit=0,
    )
    first = _request(1, os.urandom(4000))
    (event,) = s.receive(first.to_frame(), NOW)
    assert isinstance(event, RequestReceived)
    admitted = s.admit(event.request, ch, price=PRICE, max_body=MAX_BODY, now=NOW)
    assert isinstance(admitted, RequestAdmitted)
    ch.complete(1, ok=True, now=NOW)
    s.finished()
    # the payer restarted without its store: it signs n = 1 again (a small body)
    again = _request(1, b"hi")
    (event,) = s.receive(again.to_frame(), NOW)
    assert isinstance(event, RequestReceived)
    refused = s.admit(event.request, ch, price=PRICE, max_body=MAX_BODY, now=NOW)
    assert isinstance(refused, RequestRefused) and refused.code is ErrorCode.REPLAY
    assert refused.send is not None
    assert len(refused.send) <= PAYER_MAX_FRAME, (
        f"the REPLAY is {len(refused.send)} bytes; the payer announced max_frame {PAYER_MAX_FRAME}"
    )


def test_the_payer_never_sends_a_request_frame_above_the_payees_max_frame() -> None:
    """protocol.md §5.3: a peer MUST NOT send a frame larger than the other peer's
    ``max_frame``; §9 rule 5: a payer keeps within the limits the payee's hello announces
    (frames of at most ``max_frame`` bytes). A payee announcing 4096 with a service whose
    ``max_body`` is 4096 (the body alone fits, the frame around it does not) gets from the
    reference client a request frame of more than 4096 bytes: it must refuse it
    FRAME_TOO_LARGE and reset the stream, abandoning every other request of the payer in
    flight on it. The client must refuse such a request locally, before sending it."""
    from p2pay.core.channel import PayerChannel
    from p2pay.core.errors import LocalProtocolError
    from p2pay.core.session import ClientSession

    payee_max_frame = 4096
    services = (ServiceTerms(name="echo", price=PRICE, max_body=payee_max_frame),)
    ch = PayerChannel(
        ledger=LEDGER, channel=CHANNEL, payer=ALICE.public, payee=BOB.public, deposit=10_000
    )
    c = ClientSession(
        hello=_hello(ALICE, max_frame=PAYER_MAX_FRAME, max_in_flight=1),
        remote=BOB.public,
        channels={CHANNEL: ch},
    )
    c.start()
    (event,) = c.receive(_hello(BOB, services=services, max_frame=payee_max_frame).to_frame(), NOW)
    assert isinstance(event, HelloReceived)
    body = bytes(4000)  # within the service's max_body
    request = ch.next_request(ALICE, service="echo", body=body, price=PRICE, deadline=NOW + 60_000)
    assert len(request.to_frame()) > payee_max_frame
    sent: bytes | None = None
    try:
        sent = c.send_request(request)
    except LocalProtocolError:
        pass
    assert sent is None or len(sent) <= payee_max_frame, (
        f"the client sent a {len(sent)}-byte request to a payee announcing max_frame "
        f"{payee_max_frame}"
    )
