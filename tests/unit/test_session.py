"""The stream protocol's sans-IO sessions (p2pay.core.session), one test per rule of
specs/protocol.md §§5-15, named after its section; no trio, no transport: frames in, events
and exact bytes out."""

from __future__ import annotations

import json
import random
import secrets
from pathlib import Path
from typing import Any

import pytest

from p2pay.core import codec
from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.channel import PayeeChannel, PayerChannel, Replay
from p2pay.core.errors import (
    DecodeError,
    ErrorCode,
    FrameTooLarge,
    LocalProtocolError,
    PayeeFaulty,
    RemoteProtocolError,
)
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    MAX_LEDGER_ID_SIZE,
    MAX_REFUSAL_TEXT,
    MAX_SERVICE_NAME,
    MAX_U64,
    MIN_FRAME_LIMIT,
    REQUEST_OVERHEAD,
    Hello,
    Refusal,
    Request,
    Response,
    ServiceTerms,
    blake2b256,
    decode_frame,
    refusal_body,
)
from p2pay.core.session import (
    ClientSession,
    End,
    FrameIgnored,
    HelloReceived,
    PriceChanged,
    ProtocolViolation,
    Purpose,
    ReceiptAccepted,
    ReceiptRejected,
    RefusalBudget,
    RefusalReceived,
    RequestAdmitted,
    RequestReceived,
    RequestRefused,
    ResyncNeeded,
    ServerSession,
    StreamRefused,
    refusal_frame,
)

ALICE = Keypair.from_seed(bytes([1]) * 32)  # payer, opens the stream
BOB = Keypair.from_seed(bytes([2]) * 32)  # payee, accepts it
CAROL = Keypair.from_seed(bytes([3]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)

LEDGER = b"p2pay-test-ledger"
OTHER_LEDGER = b"p2pay-other-ledger"
CHANNEL = blake2b256(b"channel alice->bob")
NOW = 1_700_000_000_000
PRICE = 10
DEPOSIT = 1_000
MAX_BODY = 1024
MAX_FRAME = 4096
HORIZON = 600_000  # the payee's announced deadline_horizon (D1)
SERVICES = (ServiceTerms(name="echo", price=PRICE, max_body=MAX_BODY),)


def hello(key: Keypair = ALICE, **overrides: Any) -> Hello:
    fields: dict[str, Any] = {
        "ledger": LEDGER,
        "max_frame": MAX_FRAME,
        "max_in_flight": 2,
        "deadline_horizon": HORIZON,
    }
    fields.update(overrides)
    return Hello.create(key, **fields)


def forged_hello(signer: Keypair, **fields: Any) -> Hello:
    """A hello whose fields are set by hand (version, account...), signed by `signer`."""
    base = hello(ALICE)
    values: dict[str, Any] = {
        "version": base.version,
        "ledger": base.ledger,
        "services": base.services,
        "stake": base.stake,
        "max_in_flight": base.max_in_flight,
        "max_frame": base.max_frame,
        "account": base.account,
        "account_proof": base.account_proof,
        "deadline_horizon": base.deadline_horizon,
    }
    values.update(fields)
    unsigned = Hello(**values)
    return unsigned.with_signature(signer.sign(unsigned.signing_bytes))


BOB_HELLO = hello(BOB, services=SERVICES)


def server(*, max_in_flight: int = 2, burst: int = 3) -> ServerSession:
    return ServerSession(
        ledger=LEDGER,
        remote=ALICE.public,
        max_frame=MAX_FRAME,
        max_in_flight=max_in_flight,
        deadline_horizon=HORIZON,
        max_refusals_per_s=1,
        refusal_burst=burst,
        now=NOW,
    )


def open_server(**kw: Any) -> ServerSession:
    s = server(**kw)
    (event,) = s.receive(hello(ALICE).to_frame(), NOW)
    assert isinstance(event, HelloReceived)
    s.hello_frame(hello(BOB, services=SERVICES, max_in_flight=s.max_in_flight))
    return s


def payee(deposit: int = DEPOSIT) -> PayeeChannel:
    return PayeeChannel(
        ledger=LEDGER,
        channel=CHANNEL,
        payer=ALICE.public,
        payee=BOB.public,
        deposit=deposit,
        unverified_credit_limit=0,
    )


def payer(deposit: int = DEPOSIT) -> PayerChannel:
    return PayerChannel(
        ledger=LEDGER, channel=CHANNEL, payer=ALICE.public, payee=BOB.public, deposit=deposit
    )


def request(n: int = 1, paid: int | None = None, *, key: Keypair = ALICE, **kw: Any) -> Request:
    fields: dict[str, Any] = {
        "ledger": LEDGER,
        "channel": CHANNEL,
        "n": n,
        "paid": n * PRICE if paid is None else paid,
        "price": PRICE,
        "service": "echo",
        "body": b"hi",
        "deadline": NOW + 60_000,
    }
    fields.update(kw)
    return Request.create(key, **fields)


def client(ch: PayerChannel | None = None) -> tuple[ClientSession, PayerChannel]:
    ch = ch or payer()
    c = ClientSession(hello=hello(ALICE), remote=BOB.public, channels={CHANNEL: ch})
    c.start()
    (event,) = c.receive(BOB_HELLO.to_frame(), NOW)
    assert isinstance(event, HelloReceived)
    return c, ch


def send(c: ClientSession, ch: PayerChannel, purpose: Purpose = Purpose.CALL) -> Request:
    r = ch.next_request(ALICE, service="echo", body=b"hi", price=PRICE, deadline=NOW + 60_000)
    assert c.send_request(r, purpose=purpose) == r.to_frame()
    return r


def only(events: list[Any], kind: type) -> Any:
    assert len(events) == 1 and isinstance(events[0], kind), events
    return events[0]


def refused(event: RequestAdmitted | RequestRefused) -> RequestRefused:
    assert isinstance(event, RequestRefused), event
    return event


def refusal_bytes(event: ProtocolViolation, channel: bytes = b"", n: int = 0) -> bytes:
    return Refusal(
        channel=channel, n=n, code=event.code, message=event.message, details=event.details
    ).to_frame()


# ---------------------------------------------------------------------------
# §9 Hello


def test_9_rule_1_the_opener_sends_its_hello_first_and_once() -> None:
    c = ClientSession(hello=hello(ALICE), remote=BOB.public, channels={})
    with pytest.raises(LocalProtocolError):
        c.receive(BOB_HELLO.to_frame(), NOW)  # nothing is read before our hello went
    assert c.start() == hello(ALICE).to_frame()
    with pytest.raises(LocalProtocolError):
        c.start()


def test_9_rule_1_the_acceptor_checks_the_hello_then_answers_with_its_own() -> None:
    s = server()
    with pytest.raises(LocalProtocolError):
        s.hello_frame(BOB_HELLO)  # never before the peer's hello checked
    event = only(s.receive(hello(ALICE).to_frame(), NOW), HelloReceived)
    assert event.send is None and event.end is End.KEEP  # our terms only once it checked
    assert event.account == ALICE.public and s.account == ALICE.public
    with pytest.raises(LocalProtocolError):
        s.receive(request().to_frame(), NOW)  # our hello is owed first
    for other in ({"max_frame": MAX_FRAME * 2}, {"deadline_horizon": HORIZON + 1}):
        with pytest.raises(LocalProtocolError):
            s.hello_frame(hello(BOB, **other))  # not this session's limits
    assert s.hello_frame(BOB_HELLO) == BOB_HELLO.to_frame()
    assert s.open
    with pytest.raises(LocalProtocolError):
        s.hello_frame(BOB_HELLO)  # once


def test_9_rule_1_a_second_hello_is_malformed_and_ends_the_stream() -> None:
    s = open_server()
    event = only(s.receive(hello(ALICE).to_frame(), NOW), ProtocolViolation)
    assert (event.code, event.end) == (ErrorCode.MALFORMED, End.CLOSE)
    assert event.send == refusal_frame(b"", 0, ErrorCode.MALFORMED, "a second hello")
    assert s.ended
    with pytest.raises(LocalProtocolError):
        s.receive(request().to_frame(), NOW)
    c, _ = client()
    event = only(c.receive(BOB_HELLO.to_frame(), NOW), ProtocolViolation)
    assert (event.code, event.end, event.before_hello) == (ErrorCode.MALFORMED, End.CLOSE, False)
    assert event.send == refusal_frame(b"", 0, ErrorCode.MALFORMED, "a second hello")
    assert c.ended


@pytest.mark.parametrize(
    "first",
    [
        request().to_frame(),
        Refusal(channel=b"", n=0, code=ErrorCode.OVERLOADED).to_frame(),
        Refusal(channel=CHANNEL, n=1, code=ErrorCode.REPLAY).to_frame(),
    ],
)
def test_9_rule_2_any_frame_before_the_peers_hello_is_malformed_and_ends_it(first: bytes) -> None:
    s = server()
    event = only(s.receive(first, NOW), ProtocolViolation)
    assert (event.code, event.end, event.before_hello) == (ErrorCode.MALFORMED, End.CLOSE, True)
    assert event.send == refusal_frame(b"", 0, ErrorCode.MALFORMED, "expected a hello first")
    assert s.ended


def test_9_rule_2_no_request_before_the_payees_hello() -> None:
    ch = payer()
    c = ClientSession(hello=hello(ALICE), remote=BOB.public, channels={CHANNEL: ch})
    c.start()
    r = ch.next_request(ALICE, service="echo", body=b"", price=PRICE, deadline=NOW + 1)
    with pytest.raises(LocalProtocolError):
        c.send_request(r)
    with pytest.raises(LocalProtocolError):
        c.deadline(NOW, 1000)


@pytest.mark.parametrize(
    ("peer_hello", "code", "details"),
    [
        # several checks fail: the code is the first's, in the order of rule 3
        (forged_hello(CAROL, version=3, ledger=OTHER_LEDGER), ErrorCode.VERSION_MISMATCH, {}),
        (forged_hello(ALICE, version=1), ErrorCode.VERSION_MISMATCH, {}),
        (forged_hello(CAROL, ledger=OTHER_LEDGER), ErrorCode.WRONG_LEDGER, {}),
        (hello(CAROL), ErrorCode.INVALID_SIGNATURE, {}),  # not the stream's remote key
        (forged_hello(ALICE, account=CAROL.public), ErrorCode.UNAUTHORIZED, {}),
    ],
)
def test_9_rule_3_hello_checks_in_order_with_their_codes(
    peer_hello: Hello, code: ErrorCode, details: dict[str, Any]
) -> None:
    if code is ErrorCode.VERSION_MISMATCH:
        details = {"version": 2}  # D2: the receiver's version
    s = server()
    event = only(s.receive(peer_hello.to_frame(), NOW), ProtocolViolation)
    assert (event.code, event.end, event.before_hello) == (code, End.CLOSE, True)
    assert dict(event.details) == details
    assert event.send == refusal_bytes(event)
    assert event.error().code is code
    assert s.ended and s.peer_hello is None and s.account == b""


def test_9_rule_3_the_opener_checks_the_payees_hello_alike() -> None:
    c = ClientSession(hello=hello(ALICE), remote=BOB.public, channels={})
    c.start()
    event = only(c.receive(hello(CAROL).to_frame(), NOW), ProtocolViolation)
    assert (event.code, event.end, event.before_hello) == (
        ErrorCode.INVALID_SIGNATURE,
        End.CLOSE,
        True,
    )
    assert event.send == refusal_bytes(event)
    c = ClientSession(hello=hello(ALICE), remote=BOB.public, channels={})
    c.start()
    event = only(c.receive(forged_hello(BOB, version=7).to_frame(), NOW), ProtocolViolation)
    assert event.code is ErrorCode.VERSION_MISMATCH and dict(event.details) == {"version": 2}


def test_9_rule_3_the_opener_learns_its_hello_was_refused() -> None:
    c = ClientSession(hello=hello(ALICE), remote=BOB.public, channels={})
    c.start()
    refusal = Refusal(channel=b"", n=0, code=ErrorCode.OVERLOADED, message="too many sessions")
    event = only(c.receive(refusal.to_frame(), NOW), StreamRefused)
    assert event.send is None and event.end is End.RESET and c.ended
    assert event.error().code is ErrorCode.OVERLOADED


def test_9_the_hello_timeout_is_an_unsigned_deadline_exceeded() -> None:
    s = server()
    event = s.timed_out()
    assert (event.code, event.end) == (ErrorCode.DEADLINE_EXCEEDED, End.CLOSE)
    assert event.send == refusal_frame(b"", 0, ErrorCode.DEADLINE_EXCEEDED, "no hello in time")
    with pytest.raises(LocalProtocolError):
        open_server().timed_out()


# ---------------------------------------------------------------------------
# §5 Streams and framing


def test_5_1_the_acceptor_ignores_responses_and_refusals_for_a_token() -> None:
    s = open_server(burst=3)
    r = request()
    frames = [
        Response.create(BOB, request=r, status="OK", price=PRICE, spent=PRICE, body=b"").to_frame(),
        Refusal(channel=CHANNEL, n=1, code=ErrorCode.REPLAY).to_frame(),
        Refusal(channel=b"", n=0, code=ErrorCode.MALFORMED).to_frame(),
    ]
    for frame in frames:
        event = only(s.receive(frame, NOW), ProtocolViolation)
        # never answered with a refusal; the stream is kept
        assert (event.code, event.send, event.end) == (ErrorCode.MALFORMED, None, End.KEEP)
    assert s.budget.tokens == 0
    event = only(s.receive(frames[0], NOW), ProtocolViolation)
    assert (event.send, event.end) == (None, End.RESET)  # a flood of them ends in a reset
    assert s.ended


def test_5_1_the_opener_refuses_a_request_and_keeps_the_stream() -> None:
    c, _ = client()
    r = request(key=BOB)
    event = only(c.receive(r.to_frame(), NOW), ProtocolViolation)
    assert event.end is End.KEEP and not c.ended
    assert event.send == refusal_frame(
        CHANNEL, 1, ErrorCode.MALFORMED, "requests go on a stream their payer opens"
    )


def test_19_1_the_opener_answers_requests_within_its_refusal_budget() -> None:
    """§19.1: the opener answers request frames while its refusal budget has a token; the
    others are violations it does not answer (nothing to queue), and the stream is kept;
    the budget refills at its rate."""
    c = ClientSession(
        hello=hello(ALICE),
        remote=BOB.public,
        channels={},
        max_refusals_per_s=1,
        refusal_burst=2,
    )
    c.start()
    only(c.receive(BOB_HELLO.to_frame(), NOW), HelloReceived)
    frame = request(key=BOB).to_frame()
    answered = [only(c.receive(frame, NOW), ProtocolViolation) for _ in range(2)]
    assert all(e.send is not None and e.end is End.KEEP for e in answered)
    ignored = only(c.receive(frame, NOW), ProtocolViolation)
    assert (ignored.send, ignored.end, ignored.code) == (None, End.KEEP, ErrorCode.MALFORMED)
    assert not c.ended
    assert only(c.receive(frame, NOW + 1000), ProtocolViolation).send is not None  # refilled
    with pytest.raises(LocalProtocolError):
        ClientSession(hello=hello(ALICE), remote=BOB.public, channels={}, refusal_burst=0)


def test_5_2_frame_too_large_names_the_receivers_limit_and_ends_the_stream() -> None:
    for session in (open_server(), client()[0]):
        error = FrameTooLarge("peer announced a 5000-byte frame", details={"size": 5000})
        event = session.frame_error(error)
        assert (event.code, event.end) == (ErrorCode.FRAME_TOO_LARGE, End.CLOSE)
        assert dict(event.details) == {"max_frame": MAX_FRAME}  # D2
        assert event.send == refusal_bytes(event)
        assert session.ended
    # a payload over the limit that reached the session (no transport check) alike
    event = only(open_server().receive(bytes(MAX_FRAME + 1), NOW), ProtocolViolation)
    assert event.code is ErrorCode.FRAME_TOO_LARGE and dict(event.details) == {
        "max_frame": MAX_FRAME
    }


def test_5_2_a_bad_length_prefix_is_malformed_and_ends_the_stream() -> None:
    s = open_server()
    event = s.frame_error(DecodeError("non-minimal uvarint length prefix"))
    assert (event.code, event.end, dict(event.details)) == (ErrorCode.MALFORMED, End.CLOSE, {})
    assert event.send == refusal_frame(
        b"", 0, ErrorCode.MALFORMED, "non-minimal uvarint length prefix"
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", ErrorCode.MALFORMED),  # a length of 0 announces an empty frame
        (b"\x84\x01" + b"\x81" * 20 + b"\x00", ErrorCode.MALFORMED),  # nested too deep
        (b"\x82\x09\x00", ErrorCode.MALFORMED),  # unknown kind
    ],
)
def test_5_2_an_invalid_frame_gets_an_unsigned_refusal_and_the_stream_ends(
    payload: bytes, code: ErrorCode
) -> None:
    for session in (open_server(), client()[0]):
        event = only(session.receive(payload, NOW), ProtocolViolation)
        assert (event.code, event.end) == (code, End.CLOSE)
        assert event.send == refusal_bytes(event)


def test_8_wrong_domain_is_refused_as_such() -> None:
    r = request()
    response = Response.create(BOB, request=r, status="OK", price=PRICE, spent=PRICE, body=b"")
    from p2pay.core import codec

    payload = codec.encode([1, response.signing_bytes, r.signature, b""])
    event = only(open_server().receive(payload, NOW), ProtocolViolation)
    assert (event.code, event.end) == (ErrorCode.WRONG_DOMAIN, End.CLOSE)
    assert event.send == refusal_bytes(event)


# ---------------------------------------------------------------------------
# §13.2 Payee: admission


def test_13_2_a_request_after_the_hello_is_received_for_admission() -> None:
    s = open_server()
    r = request()
    event = only(s.receive(r.to_frame(), NOW), RequestReceived)
    assert event.request == r and event.send is None and event.end is End.KEEP
    ch = payee()
    admitted = s.admit(r, ch, price=PRICE, max_body=MAX_BODY, now=NOW)
    assert isinstance(admitted, RequestAdmitted)
    assert (admitted.price, admitted.voucher_improved, admitted.send) == (PRICE, True, None)
    assert s.in_flight == 1 and ch.reserved == PRICE and ch.last_n == 1
    s.finished()
    assert s.in_flight == 0
    with pytest.raises(LocalProtocolError):
        s.finished()


def test_13_2_check_0_prime_overloaded_is_unsigned_and_consumes_nothing() -> None:
    s = open_server(max_in_flight=2)
    ch = payee()
    for n in (1, 2):
        only(s.receive(request(n).to_frame(), NOW), RequestReceived)
        assert isinstance(
            s.admit(request(n), ch, price=PRICE, max_body=MAX_BODY, now=NOW), RequestAdmitted
        )
    r3 = request(3)
    event = only(s.receive(r3.to_frame(), NOW), RequestRefused)
    assert (event.code, event.signed, event.end) == (ErrorCode.OVERLOADED, False, End.KEEP)
    assert event.send == refusal_frame(
        CHANNEL, 3, ErrorCode.OVERLOADED, "too many requests in flight; retry later"
    )
    assert ch.last_n == 2 and ch.paid_max == 2 * PRICE  # n not consumed, voucher not kept
    assert s.budget.tokens == 2  # a refusal this peer caused costs a token
    s.finished()
    only(s.receive(r3.to_frame(), NOW), RequestReceived)


def test_13_2_check_0_prime_node_wide_overload_costs_no_token() -> None:
    s = open_server()
    for _ in range(10):
        event = only(s.receive(request().to_frame(), NOW, node_busy=True), RequestRefused)
        assert (event.code, event.signed, event.end) == (ErrorCode.OVERLOADED, False, End.KEEP)
    assert s.budget.tokens == 3


def test_13_2_check_1_wrong_ledger_is_decided_before_the_channel_is_looked_up() -> None:
    # Found by `p2pay conformance` (request.wrong-ledger): the node looked the channel up
    # first and answered UNKNOWN_CHANNEL, at the cost of a ledger read per foreign request.
    s = open_server()
    r = request(ledger=OTHER_LEDGER)
    event = only(s.receive(r.to_frame(), NOW), RequestRefused)
    assert (event.code, event.signed, event.end) == (ErrorCode.WRONG_LEDGER, False, End.KEEP)
    assert event.send == refusal_frame(
        CHANNEL, 1, ErrorCode.WRONG_LEDGER, "the request names another ledger"
    )
    assert s.budget.tokens == 2 and s.in_flight == 0  # a refused request costs a token


def test_13_2_check_2_unknown_channel_is_unsigned() -> None:
    s = open_server()
    r = request()
    event = refused(s.admit(r, None, price=PRICE, max_body=MAX_BODY, now=NOW))
    assert (event.code, event.signed, event.end) == (ErrorCode.UNKNOWN_CHANNEL, False, End.KEEP)
    assert event.send == refusal_frame(
        CHANNEL, 1, ErrorCode.UNKNOWN_CHANNEL, "no such channel to this payee"
    )


def test_13_2_a_channel_that_could_not_be_adopted_is_refused_with_its_error() -> None:
    s = open_server()
    error = RemoteProtocolError(
        "challenge too short", code=ErrorCode.CHALLENGE_TOO_SHORT, details={"min_challenge_ms": 9}
    )
    event = refused(s.admit(request(), error, price=PRICE, max_body=MAX_BODY, now=NOW))
    assert isinstance(event, RequestRefused) and not event.signed
    assert event.send == refusal_frame(
        CHANNEL, 1, ErrorCode.CHALLENGE_TOO_SHORT, "challenge too short", {"min_challenge_ms": 9}
    )


def test_13_2_check_3_a_third_party_is_unauthorized_unsigned() -> None:
    s = ServerSession(
        ledger=LEDGER,
        remote=MALLORY.public,
        max_frame=MAX_FRAME,
        max_in_flight=2,
        deadline_horizon=HORIZON,
        max_refusals_per_s=1,
        refusal_burst=3,
        now=NOW,
    )
    only(s.receive(hello(MALLORY).to_frame(), NOW), HelloReceived)
    s.hello_frame(BOB_HELLO)
    ch = payee()
    event = refused(s.admit(request(), ch, price=PRICE, max_body=MAX_BODY, now=NOW))
    assert (event.code, event.signed) == (ErrorCode.UNAUTHORIZED, False)
    assert event.send == refusal_frame(
        CHANNEL, 1, ErrorCode.UNAUTHORIZED, "only the channel's payer may use it"
    )
    assert ch.last_n == 0


def test_13_2_check_4_a_bad_signature_on_the_payers_stream_is_a_violation() -> None:
    s = open_server()
    r = request()
    bad = r.with_signature(bytes([r.signature[0] ^ 1]) + r.signature[1:])
    event = refused(s.admit(bad, payee(), price=PRICE, max_body=MAX_BODY, now=NOW))
    assert (event.code, event.signed, event.violation) == (
        ErrorCode.INVALID_SIGNATURE,
        False,
        True,
    )


def test_13_2_checks_7_to_12_are_signed_refusals_that_consume_n() -> None:
    s = open_server()
    ch = payee()
    event = refused(s.admit(request(), ch, price=None, max_body=0, now=NOW))
    assert isinstance(event, RequestRefused)
    assert (event.code, event.signed, event.send) == (ErrorCode.UNKNOWN_SERVICE, True, None)
    assert event.voucher_improved and ch.last_n == 1 and ch.paid_max == PRICE
    assert s.budget.tokens == 2  # a refused request costs a token, signed or not
    assert s.in_flight == 0


def test_13_2_check_8_deadline_beyond_the_announced_horizon_is_refused_signed() -> None:
    s = open_server()
    late = request(deadline=NOW + HORIZON + 1)
    event = refused(s.admit(late, payee(), price=PRICE, max_body=MAX_BODY, now=NOW))
    assert (event.code, event.signed) == (ErrorCode.DEADLINE_EXCEEDED, True)
    assert dict(event.details) == {"max_deadline": NOW + HORIZON}
    edge = request(2, deadline=NOW + HORIZON)
    assert isinstance(
        s.admit(edge, payee(), price=PRICE, max_body=MAX_BODY, now=NOW), RequestAdmitted
    )


def test_13_2_check_5_prime_the_slice_rule_is_unsigned_with_resync_details() -> None:
    s = open_server()
    ch = payee()
    assert isinstance(
        s.admit(request(1), ch, price=PRICE, max_body=MAX_BODY, now=NOW), RequestAdmitted
    )
    overlapping = request(2, paid=PRICE + PRICE // 2)
    event = refused(s.admit(overlapping, ch, price=PRICE, max_body=MAX_BODY, now=NOW))
    assert (event.code, event.signed) == (ErrorCode.PAYMENT_REQUIRED, False)
    details = {**ch.resync_details(), "price": PRICE}
    assert dict(event.details) == details
    assert event.send == refusal_frame(
        CHANNEL, 2, ErrorCode.PAYMENT_REQUIRED, event.message, details
    )
    assert ch.last_n == 1


def test_15_replay_is_unsigned_with_the_resync_details() -> None:
    s = open_server()
    ch = payee()
    r1 = request(1)
    assert isinstance(s.admit(r1, ch, price=PRICE, max_body=MAX_BODY, now=NOW), RequestAdmitted)
    event = refused(s.admit(r1, ch, price=PRICE, max_body=MAX_BODY, now=NOW))
    assert (event.code, event.signed) == (ErrorCode.REPLAY, False)
    details = ch.resync_details()
    assert set(details) == {"last_n", "spent", "paid_max", "voucher"}
    assert event.send == refusal_frame(CHANNEL, 1, ErrorCode.REPLAY, event.message, details)
    # §15: the voucher goes without its body; body_hash is in the signed bytes
    assert details["voucher"] == r1.voucher_frame() != r1.to_frame()
    assert decode_frame(details["voucher"]).body == b"" and r1.body


@pytest.mark.parametrize("with_body", [False, True])
def test_15_step_1_the_voucher_is_read_without_or_with_its_body(with_body: bool) -> None:
    """§15 step 1: the payer reads only the voucher's signed fields and signature: sent
    without its body, or (an older payee) with it, it is read the same."""
    c, ch = client()
    r = send(c, ch)
    newer = request(5, paid=7 * PRICE)  # signed by us in a life we forgot
    voucher = newer.to_frame() if with_body else newer.voucher_frame()
    details = {"last_n": 5, "spent": 0, "paid_max": 7 * PRICE, "voucher": voucher}
    event = only(c.receive(_replay(r.n, details), NOW), ResyncNeeded)
    assert (event.outcome, event.violation) == (Replay.SUPERSEDED, None)
    assert ch.last_n == 5 and ch.paid == 7 * PRICE


# ---------------------------------------------------------------------------
# §19 Limits: the refusal budget


def test_19_the_refusal_budget_resets_the_stream_when_spent() -> None:
    s = open_server(burst=3)
    for n in (1, 2, 3):
        event = refused(s.admit(request(n), None, price=PRICE, max_body=MAX_BODY, now=NOW))
        assert event.end is End.KEEP
    event = refused(s.admit(request(4), None, price=PRICE, max_body=MAX_BODY, now=NOW))
    assert event.end is End.RESET and s.ended
    assert event.send is not None  # the refusal is still produced; the reset may drop it


def test_19_the_refusal_budget_refills_at_its_rate_and_never_backwards() -> None:
    budget = RefusalBudget(per_s=2, burst=2, now=NOW)
    assert budget.take(NOW) and budget.take(NOW) and not budget.take(NOW)
    budget = RefusalBudget(per_s=2, burst=2, now=NOW)
    assert budget.take(NOW) and budget.take(NOW)
    assert not budget.take(NOW + 499)  # 0.998 token
    assert budget.take(NOW + 500)  # 1 token
    assert not budget.take(NOW - 10_000)  # a clock stepping back refills nothing
    assert budget.take(NOW + 1000)
    budget = RefusalBudget(per_s=1000, burst=2, now=NOW)
    budget.take(NOW)
    assert budget.take(NOW + 10**9) and budget.tokens == 1  # never above the burst
    with pytest.raises(LocalProtocolError):
        RefusalBudget(per_s=0, burst=1, now=NOW)


# ---------------------------------------------------------------------------
# §13.1 Payer; §14.3 receipts; §9 rule 4 prices


def test_13_1_deadlines_are_capped_at_the_payees_horizon_and_the_ledgers() -> None:
    c, _ = client()
    assert c.deadline(NOW, 5_000) == NOW + 5_000
    assert c.deadline(NOW, 0) == NOW + 1
    assert c.deadline(NOW, 10**12) == NOW + HORIZON  # the payee hello's deadline_horizon
    assert c.deadline(NOW, 10**12, ledger_horizon=60_000) == NOW + 60_000


def _largest_request(body: bytes) -> Request:
    """The request with the largest envelope: the longest ledger id and service name, every
    number at its maximum."""
    return Request.create(
        ALICE,
        ledger=b"L" * MAX_LEDGER_ID_SIZE,
        channel=CHANNEL,
        n=MAX_U64,
        paid=MAX_YOCTO,
        price=MAX_YOCTO,
        service="s" * MAX_SERVICE_NAME,
        body=body,
        deadline=MAX_U64,
    )


def test_5_3_a_request_frame_is_its_body_plus_at_most_request_overhead() -> None:
    """§5.3: the largest envelope (415 bytes with a 9-byte body header) is within
    REQUEST_OVERHEAD, so a body of exactly max_frame - REQUEST_OVERHEAD always fits."""
    empty = _largest_request(b"")
    assert len(empty.signing_bytes) == 334
    # the empty body's header is 1 byte, the longest (2**32 bytes or more) 9; an EVM
    # signature takes one byte more (65), with a shorter ledger id (38 bytes)
    assert len(empty.to_frame()) - 1 + 9 + 1 == 415 <= REQUEST_OVERHEAD
    for max_frame in (MIN_FRAME_LIMIT, 65_536, 1 << 20):
        frame = _largest_request(bytes(max_frame - REQUEST_OVERHEAD)).to_frame()
        assert len(frame) <= max_frame


def test_5_3_a_refusal_always_fits_4096_bytes() -> None:
    """§5.3, §12: the largest refusal (the longest code, a message of 2048 bytes, the
    resync details of check 5' with a voucher without its body, numbers at their maximum)
    is at most 2,629 bytes, whatever the body of the voucher's request was."""
    voucher = _largest_request(bytes(1 << 20)).voucher_frame()
    assert len(voucher) == 406 and decode_frame(voucher).body == b""
    details = {
        "price": MAX_YOCTO,
        "last_n": MAX_U64,
        "spent": MAX_YOCTO,
        "paid_max": MAX_YOCTO,
        "voucher": voucher,
    }
    assert len(codec.encode(details)) == 509
    longest_code = max((code for code in ErrorCode), key=lambda code: len(code.value))
    frame = Refusal(
        channel=CHANNEL,
        n=MAX_U64,
        code=longest_code,
        message="\u00e9" * (MAX_REFUSAL_TEXT // 2),  # 2048 bytes of UTF-8
        details=details,
    ).to_frame()
    assert len(frame) == 2629 <= MIN_FRAME_LIMIT


def test_5_3_the_payer_refuses_a_body_whose_frame_would_not_fit_the_payees_max_frame() -> None:
    """§5.3, §13.1 step 1'': the longest body is min(max_body, the payee's max_frame -
    REQUEST_OVERHEAD); `send_request` refuses a longer one (BODY_TOO_LARGE, details
    max_body), records nothing, and takes a body of exactly the limit."""
    ch = payer(deposit=10**6)
    services = (ServiceTerms(name="echo", price=PRICE, max_body=MAX_FRAME),)
    c = ClientSession(hello=hello(ALICE), remote=BOB.public, channels={CHANNEL: ch})
    c.start()
    only(c.receive(hello(BOB, services=services).to_frame(), NOW), HelloReceived)
    limit = MAX_FRAME - REQUEST_OVERHEAD
    assert c.frame_body_limit() == limit
    assert c.max_body("echo") == limit  # below the service's max_body (4096)
    assert c.max_body("nope") is None
    too_long = ch.next_request(
        ALICE, service="echo", body=bytes(limit + 1), price=PRICE, deadline=NOW + 60_000
    )
    with pytest.raises(LocalProtocolError) as info:
        c.send_request(too_long)
    assert info.value.code is ErrorCode.BODY_TOO_LARGE
    assert info.value.details == {"max_body": limit}
    assert not c.outstanding
    fits = ch.next_request(
        ALICE, service="echo", body=bytes(limit), price=PRICE, deadline=NOW + 60_000
    )
    frame = c.send_request(fits)
    assert len(frame) <= MAX_FRAME and (CHANNEL, fits.n) in c.outstanding
    # a service whose max_body is the smaller bound keeps it
    c2, _ = client()
    assert c2.max_body("echo") == MAX_BODY


def test_13_1_requests_go_only_to_their_channels_payee() -> None:
    other = PayerChannel(
        ledger=LEDGER, channel=CHANNEL, payer=ALICE.public, payee=CAROL.public, deposit=DEPOSIT
    )
    c, _ = client(other)
    r = other.next_request(ALICE, service="echo", body=b"", price=PRICE, deadline=NOW + 1)
    with pytest.raises(LocalProtocolError):
        c.send_request(r)


def test_14_3_a_good_receipt_is_accepted_and_the_price_learnt() -> None:
    c, ch = client()
    assert c.price("echo") == PRICE and c.price("nope") is None
    r = send(c, ch)
    response = Response.create(BOB, request=r, status="OK", price=PRICE, spent=PRICE, body=b"x")
    event = only(c.receive(response.to_frame(), NOW), ReceiptAccepted)
    assert (event.request, event.purpose, event.send, event.end) == (
        r,
        Purpose.CALL,
        None,
        End.KEEP,
    )
    assert event.receipt.spent == PRICE and not event.signed_refusal
    assert ch.spent == PRICE and not ch.in_flight and not c.outstanding
    # a second answer to the settled request changes nothing
    ignored = only(c.receive(response.to_frame(), NOW), FrameIgnored)
    assert ignored.frame == response and ch.spent == PRICE


def test_14_3_a_bad_receipt_is_rejected_and_the_stream_ends() -> None:
    c, ch = client()
    r = send(c, ch)
    wrong = Response.create(BOB, request=r, status="OK", price=PRICE, spent=2 * PRICE, body=b"")
    event = only(c.receive(wrong.to_frame(), NOW), ReceiptRejected)
    assert (event.request, event.end, event.send) == (r, End.CLOSE, None)
    assert event.error().code is ErrorCode.MALFORMED
    assert ch.spent == 0 and r.n in ch.in_flight and c.ended
    # and the payee is faulty on the channel: nothing more is signed on it ("A faulty payee")
    assert ch.faulty is not None and ch.faulty.startswith("its receipt for request 1 failed")
    with pytest.raises(PayeeFaulty) as info:
        send(client()[0], ch)
    assert info.value.code is ErrorCode.PAYEE_FAULTY
    assert (ch.last_n, ch.paid, ch.spent) == (1, PRICE, 0)


def test_14_3_an_answer_to_a_settled_request_makes_no_payee_faulty() -> None:
    """Whatever it says: ignored (§14.3), the channel stays usable."""
    c, ch = client()
    r = send(c, ch)
    good = Response.create(BOB, request=r, status="OK", price=PRICE, spent=PRICE, body=b"")
    only(c.receive(good.to_frame(), NOW), ReceiptAccepted)
    wrong = Response.create(BOB, request=r, status="OK", price=PRICE, spent=9 * PRICE, body=b"")
    only(c.receive(wrong.to_frame(), NOW), FrameIgnored)
    assert ch.faulty is None and send(c, ch).n == 2


class _Draws(random.Random):
    """A §14.4 draw that returns the values given, in order (then 1: not checked)."""

    def __init__(self, draws: list[int]) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.asked = 0

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        assert args == (16,) and not kwargs  # randrange(K): 0 means "check it"
        self.asked += 1
        return self.draws.pop(0) if self.draws else 1


def sampling_client(
    rng: random.Random | None, every: int = 16, ch: PayerChannel | None = None
) -> tuple[ClientSession, PayerChannel]:
    ch = payer(deposit=10**6) if ch is None else ch
    c = ClientSession(
        hello=hello(ALICE),
        remote=BOB.public,
        channels={CHANNEL: ch},
        receipt_check_every=every,
        rng=rng,
    )
    c.start()
    only(c.receive(BOB_HELLO.to_frame(), NOW), HelloReceived)
    return c, ch


def test_14_4_an_ok_receipt_is_checked_when_drawn_and_only_then() -> None:
    """receipt_check_every K: one draw per response; an OK receipt with no jump is checked
    when the draw is 0 (probability 1/K), accepted unchecked otherwise."""
    draws = _Draws([1, 0, 5, 0])
    c, ch = sampling_client(draws)
    checked = []
    for _ in range(5):
        r = send(c, ch)
        good = Response.create(
            BOB, request=r, status="OK", price=PRICE, spent=ch.spent + PRICE, body=b"x"
        )
        event = only(c.receive(good.to_frame(), NOW), ReceiptAccepted)
        checked.append(event.receipt.checked)
    assert checked == [False, True, False, True, False]
    assert draws.asked == 5 and ch.spent == 5 * PRICE


def test_14_4_a_payee_forging_receipts_is_caught_at_the_first_one_drawn() -> None:
    """A payee whose receipts carry another key's signature: the ones left out of the
    sample are accepted (their money rules hold: spent moves by exactly the price), the
    first one drawn is rejected INVALID_SIGNATURE and the stream ends (§14.3)."""
    c, ch = sampling_client(_Draws([3, 9, 1, 0]))
    for i in range(4):
        r = send(c, ch)
        forged = Response.create(
            MALLORY, request=r, status="OK", price=PRICE, spent=ch.spent + PRICE, body=b"x"
        )
        events = c.receive(forged.to_frame(), NOW)
        if i < 3:
            assert not only(events, ReceiptAccepted).receipt.checked
    event = only(events, ReceiptRejected)
    assert event.error().code is ErrorCode.INVALID_SIGNATURE and event.end is End.CLOSE
    assert ch.spent == 3 * PRICE and ch.paid == 4 * PRICE and list(ch.in_flight) == [4]
    assert c.ended


def test_14_4_with_a_real_draw_a_forging_payee_is_caught_within_a_bound() -> None:
    """The node's draw (a `random.Random` seeded from `secrets`): a payee forging every
    receipt is caught; the chance it is not within 600 receipts at K = 16 is (15/16)^600,
    about 1.6e-17."""
    c, ch = sampling_client(random.Random(secrets.randbits(128)))
    accepted = 0
    for _ in range(600):
        r = send(c, ch)
        forged = Response.create(
            MALLORY, request=r, status="OK", price=PRICE, spent=ch.spent + PRICE, body=b"x"
        )
        (event,) = c.receive(forged.to_frame(), NOW)
        if isinstance(event, ReceiptRejected):
            break
        accepted += 1
    assert isinstance(event, ReceiptRejected) and c.ended
    assert ch.spent == accepted * PRICE  # every accepted one moved spent by its price


def test_14_4_an_answer_served_again_is_checked_whatever_the_draw() -> None:
    """A forged receipt refused when drawn stays refused when the payee serves it again:
    the answer to a request re-delivered (the watcher, before it claims) or re-sent, and an
    answer not asked for on this stream (a late one, after the call gave up), are checked
    whatever the draw. Else the watcher would take the same forged bytes, served again,
    for the signed answer that makes a claim needless (15 times in 16)."""
    c, ch = sampling_client(_Draws([0]))  # the first receipt drawn, then never again
    r = send(c, ch)
    forged = Response.create(
        MALLORY, request=r, status="OK", price=PRICE, spent=PRICE, body=b"x"
    ).to_frame()
    only(c.receive(forged, NOW), ReceiptRejected)
    assert ch.spent == 0 and list(ch.in_flight) == [1]
    for purpose in (Purpose.REDELIVERY, Purpose.RESEND):
        c, _ = sampling_client(_Draws([]), ch=ch)  # a new stream (the old one ended)
        assert c.send_request(r, purpose=purpose) == r.to_frame()
        event = only(c.receive(forged, NOW), ReceiptRejected)
        assert event.error().code is ErrorCode.INVALID_SIGNATURE
        assert ch.spent == 0 and list(ch.in_flight) == [1]
    # given up on this stream (the call timed out), answered late: not asked for here
    ch.abandon(1)
    c, _ = sampling_client(_Draws([]), ch=ch)
    only(c.receive(forged, NOW), ReceiptRejected)
    assert ch.spent == 0 and list(ch.abandoned) == [1]
    # the payee's good signature: accepted, checked
    c, _ = sampling_client(_Draws([]), ch=ch)
    good = Response.create(BOB, request=r, status="OK", price=PRICE, spent=PRICE, body=b"x")
    assert only(c.receive(good.to_frame(), NOW), ReceiptAccepted).receipt.checked
    assert ch.spent == PRICE and not ch.abandoned


def test_14_4_refusals_are_checked_whatever_the_draw() -> None:
    c, ch = sampling_client(_Draws([]))  # never drawn
    r = send(c, ch)
    forged = Response.create(
        MALLORY, request=r, status="HANDLER_ERROR", price=0, spent=0, body=refusal_body("x")
    )
    event = only(c.receive(forged.to_frame(), NOW), ReceiptRejected)
    assert event.error().code is ErrorCode.INVALID_SIGNATURE and ch.spent == 0


def test_14_4_the_core_draws_nothing_of_its_own() -> None:
    """A sample needs a draw from the caller (the core is deterministic, no randomness of
    its own); K = 1 needs none and checks every receipt."""
    with pytest.raises(LocalProtocolError, match="needs an rng"):
        ClientSession(hello=hello(ALICE), remote=BOB.public, channels={}, receipt_check_every=16)
    c, ch = sampling_client(_Draws([7] * 3), every=1)  # never asked
    r = send(c, ch)
    good = Response.create(BOB, request=r, status="OK", price=PRICE, spent=PRICE, body=b"x")
    assert only(c.receive(good.to_frame(), NOW), ReceiptAccepted).receipt.checked


@pytest.mark.parametrize("every", [0, -1, True, 1.5, "16"])
def test_14_4_receipt_check_every_must_be_an_int_of_at_least_1(every: Any) -> None:
    with pytest.raises(LocalProtocolError, match="receipt_check_every"):
        ClientSession(hello=hello(ALICE), remote=BOB.public, channels={}, receipt_check_every=every)


def test_14_3_a_response_on_a_channel_this_peer_is_not_payee_of_is_not_answered() -> None:
    c, ch = client()
    r = send(c, ch)
    forged = Response.create(CAROL, request=r, status="OK", price=PRICE, spent=PRICE, body=b"")
    forged_other = Response(
        ledger=forged.ledger,
        channel=blake2b256(b"elsewhere"),
        n=1,
        request_hash=forged.request_hash,
        status="OK",
        price=PRICE,
        spent=PRICE,
        body_hash=forged.body_hash,
        body=b"",
    )
    forged_other = forged_other.with_signature(CAROL.sign(forged_other.signing_bytes))
    event = only(c.receive(forged_other.to_frame(), NOW), ProtocolViolation)
    assert (event.send, event.end) == (None, End.CLOSE)


def test_9_rule_4_a_signed_payment_required_with_another_price_is_a_price_change() -> None:
    c, ch = client()
    r = send(c, ch)
    body = refusal_body("price rose", {"price": 3 * PRICE})
    refused = Response.create(
        BOB, request=r, status=ErrorCode.PAYMENT_REQUIRED.value, price=0, spent=0, body=body
    )
    accepted, changed = c.receive(refused.to_frame(), NOW)
    assert isinstance(accepted, ReceiptAccepted) and accepted.signed_refusal
    assert isinstance(changed, PriceChanged) and (changed.service, changed.price) == (
        "echo",
        3 * PRICE,
    )
    assert c.price("echo") == 3 * PRICE


# ---------------------------------------------------------------------------
# §12 Refusal (the payer's side)


def test_12_an_unsigned_refusal_before_authentication_drops_the_request() -> None:
    c, ch = client()
    r = send(c, ch)
    refusal = Refusal(channel=CHANNEL, n=r.n, code=ErrorCode.UNKNOWN_CHANNEL)
    event = only(c.receive(refusal.to_frame(), NOW), RefusalReceived)
    assert (event.request, event.dropped) == (r, True)
    assert not ch.in_flight and not ch.abandoned and ch.paid == PRICE  # slice not reused
    assert event.error().code is ErrorCode.UNKNOWN_CHANNEL


def test_12_a_refusal_of_a_request_not_outstanding_here_is_ignored() -> None:
    c, ch = client()
    r = send(c, ch)
    c.forget(CHANNEL, r.n)  # the call gave up
    refusal = Refusal(channel=CHANNEL, n=r.n, code=ErrorCode.UNKNOWN_CHANNEL)
    only(c.receive(refusal.to_frame(), NOW), FrameIgnored)
    assert r.n in ch.in_flight
    only(
        c.receive(Refusal(channel=CHANNEL, n=77, code=ErrorCode.OVERLOADED).to_frame(), NOW),
        FrameIgnored,
    )


def test_12_a_refusal_with_an_empty_channel_refers_to_the_stream() -> None:
    c, _ = client()
    refusal = Refusal(channel=b"", n=0, code=ErrorCode.MALFORMED, message="bad frame")
    event = only(c.receive(refusal.to_frame(), NOW), StreamRefused)
    assert event.send is None and event.end is End.KEEP


@pytest.mark.parametrize("purpose", [Purpose.RESEND, Purpose.REDELIVERY])
def test_12_an_unsigned_refusal_of_a_request_in_doubt_keeps_it(purpose: Purpose) -> None:
    c, ch = client()
    r = send(c, ch, purpose)
    refusal = Refusal(channel=CHANNEL, n=r.n, code=ErrorCode.UNKNOWN_CHANNEL)
    event = only(c.receive(refusal.to_frame(), NOW), RefusalReceived)
    assert not event.dropped and r.n in ch.in_flight


def test_12_insufficient_deposit_within_the_deposit_we_know_keeps_the_request() -> None:
    c, ch = client()
    r = send(c, ch)
    refusal = Refusal(channel=CHANNEL, n=r.n, code=ErrorCode.INSUFFICIENT_DEPOSIT)
    assert not only(c.receive(refusal.to_frame(), NOW), RefusalReceived).dropped
    c2, ch2 = client(payer(deposit=PRICE))
    r2 = send(c2, ch2)
    ch2.deposit = PRICE - 1  # we learnt a smaller deposit: the payee is right
    refusal = Refusal(channel=CHANNEL, n=r2.n, code=ErrorCode.INSUFFICIENT_DEPOSIT)
    assert only(c2.receive(refusal.to_frame(), NOW), RefusalReceived).dropped


# ---------------------------------------------------------------------------
# §15 Resync (the payer's side)


def _replay(n: int, details: dict[str, Any], code: ErrorCode = ErrorCode.REPLAY) -> bytes:
    return Refusal(channel=CHANNEL, n=n, code=code, details=details).to_frame()


def test_15_a_replay_with_consistent_details_leaves_the_request_in_doubt() -> None:
    c, ch = client()
    r = send(c, ch)
    event = only(
        c.receive(_replay(r.n, {"last_n": 1, "spent": 0, "paid_max": 0}), NOW), ResyncNeeded
    )
    assert (event.outcome, event.violation, event.request) == (Replay.IN_DOUBT, None, r)
    assert r.n in ch.in_flight  # never forgotten on an unsigned word


def test_15_step_4_our_own_newer_voucher_supersedes_the_request() -> None:
    c, ch = client()
    r = send(c, ch)
    newer = request(5, paid=7 * PRICE)  # signed by us in a life we forgot
    details = {"last_n": 5, "spent": 7 * PRICE, "paid_max": 7 * PRICE, "voucher": newer.to_frame()}
    event = only(c.receive(_replay(r.n, details), NOW), ResyncNeeded)
    assert (event.outcome, event.violation) == (Replay.SUPERSEDED, None)
    assert ch.last_n == 5 and ch.paid == 7 * PRICE and ch.spent == 0  # spent never adopted


def test_15_spent_above_paid_max_is_informative_not_malformed() -> None:
    """D5: after a failed deferred check (§13.4 c) the payee's spent exceeds the checked
    voucher's paid; the details are still used (spent is never adopted)."""
    c, ch = client()
    r = send(c, ch)
    details = {"last_n": 1, "spent": 50 * PRICE, "paid_max": 0}
    event = only(c.receive(_replay(r.n, details), NOW), ResyncNeeded)
    assert (event.outcome, event.violation) == (Replay.IN_DOUBT, None)
    assert ch.spent == 0


def test_15_step_2_paid_max_other_than_the_vouchers_paid_adopts_nothing() -> None:
    c, ch = client()
    r = send(c, ch)
    newer = request(5, paid=7 * PRICE)
    details = {"last_n": 9, "spent": 0, "paid_max": 8 * PRICE, "voucher": newer.to_frame()}
    event = only(c.receive(_replay(r.n, details), NOW), ResyncNeeded)
    assert event.outcome is Replay.IN_DOUBT
    assert event.violation is not None and event.violation.code is ErrorCode.MALFORMED
    assert (ch.last_n, ch.paid) == (1, PRICE)


def test_15_step_1_a_voucher_not_signed_by_us_adopts_nothing() -> None:
    c, ch = client()
    r = send(c, ch)
    theirs = request(5, paid=7 * PRICE, key=MALLORY)
    details = {"last_n": 9, "spent": 0, "paid_max": 7 * PRICE, "voucher": theirs.to_frame()}
    event = only(c.receive(_replay(r.n, details), NOW), ResyncNeeded)
    assert event.violation is not None and event.violation.code is ErrorCode.INVALID_SIGNATURE
    assert (ch.last_n, ch.paid) == (1, PRICE)


@pytest.mark.parametrize(
    "details",
    [
        {"last_n": "x", "spent": 0, "paid_max": 0},
        {"last_n": 1, "paid_max": 0},  # spent missing
        {"last_n": 1, "spent": 0},  # paid_max missing
        {"last_n": 1, "spent": 0, "paid_max": 0, "voucher": b"\x00"},
        {"last_n": 1, "spent": -1, "paid_max": 0},
    ],
)
def test_15_step_1_details_of_the_wrong_shape_are_malformed(details: dict[str, Any]) -> None:
    c, ch = client()
    r = send(c, ch)
    event = only(c.receive(_replay(r.n, details), NOW), ResyncNeeded)
    assert event.outcome is Replay.IN_DOUBT and r.n in ch.in_flight
    assert event.violation is not None and event.violation.code is ErrorCode.MALFORMED
    assert (ch.last_n, ch.paid) == (1, PRICE)


def test_13_2_check_5_prime_an_unsigned_payment_required_with_details_is_a_resync() -> None:
    c, ch = client()
    r = send(c, ch)
    details = {"price": PRICE, "last_n": 0, "spent": 0, "paid_max": 0}
    event = only(c.receive(_replay(r.n, details, ErrorCode.PAYMENT_REQUIRED), NOW), ResyncNeeded)
    assert event.outcome is Replay.IN_DOUBT and event.violation is None


def test_15_the_server_and_client_sessions_agree_on_a_replay() -> None:
    """The payee's REPLAY bytes, fed to the payer's session, adopt the checked voucher."""
    s = open_server()
    pch = payee()
    c, ch = client()
    r = send(c, ch)
    assert isinstance(s.admit(r, pch, price=PRICE, max_body=MAX_BODY, now=NOW), RequestAdmitted)
    pch.complete(r.n, ok=True, now=NOW)
    replay = refused(s.admit(r, pch, price=PRICE, max_body=MAX_BODY, now=NOW))
    assert replay.send is not None and isinstance(decode_frame(replay.send), Refusal)
    event = only(c.receive(replay.send, NOW), ResyncNeeded)
    assert (event.outcome, event.violation) == (Replay.IN_DOUBT, None)


# ---------------------------------------------------------------------------
# the refusals the sessions produce are byte for byte those of specs/vectors/refusals.json

REFUSAL_VECTORS = {
    v["description"]: v
    for v in json.loads(
        (Path(__file__).resolve().parents[2] / "specs" / "vectors" / "refusals.json").read_text(
            "utf-8"
        )
    )
}


def _vector(description: str) -> tuple[bytes, int, bytes]:
    v = REFUSAL_VECTORS[description]
    return bytes.fromhex(v["channel_hex"]), int(v["n"]), bytes.fromhex(v["frame_hex"])


def _request_on(channel: bytes, n: int) -> Request:
    return request(n, channel=channel)


def _sent_by_session(description: str) -> bytes | None:
    channel, n, _ = _vector(description)
    if description == "a second hello":
        (event,) = open_server().receive(hello(ALICE).to_frame(), NOW)
    elif description == "a first frame that is not a hello":
        (event,) = server().receive(request().to_frame(), NOW)
    elif description == "no hello within the answerer's hello timeout":
        event = server().timed_out()
    elif description == "a request sent to the stream's caller: it names the request":
        (event,) = client()[0].receive(_request_on(channel, n).to_frame(), NOW)
    elif description == "a request over the stream's max_in_flight, before admission":
        s = open_server(max_in_flight=1)
        assert isinstance(
            s.admit(request(1), payee(), price=PRICE, max_body=MAX_BODY, now=NOW), RequestAdmitted
        )
        (event,) = s.receive(_request_on(channel, n).to_frame(), NOW)
    elif description == "a request on a channel the payee is not payee of":
        event = open_server().admit(
            _request_on(channel, n), None, price=PRICE, max_body=MAX_BODY, now=NOW
        )
    elif description == "a frame announced above the receiver's max_frame, with its limit":
        s = ServerSession(
            ledger=LEDGER,
            remote=ALICE.public,
            max_frame=1 << 20,
            max_in_flight=2,
            deadline_horizon=HORIZON,
            max_refusals_per_s=1,
            refusal_burst=3,
            now=NOW,
        )
        only(s.receive(hello(ALICE, max_frame=1 << 20).to_frame(), NOW), HelloReceived)
        message = REFUSAL_VECTORS[description]["message"]  # the transport's text
        event = s.frame_error(FrameTooLarge(message, details={"size": (1 << 20) + 1}))
    else:
        raise AssertionError(description)
    return event.send


@pytest.mark.parametrize(
    "description",
    [
        "a second hello",
        "a first frame that is not a hello",
        "no hello within the answerer's hello timeout",
        "a request sent to the stream's caller: it names the request",
        "a request over the stream's max_in_flight, before admission",
        "a request on a channel the payee is not payee of",
        "a frame announced above the receiver's max_frame, with its limit",
    ],
)
def test_5_4_the_sessions_refusals_are_the_vectors_bytes(description: str) -> None:
    assert _sent_by_session(description) == _vector(description)[2]
