"""The stream protocol as sans-IO state machines (specs/protocol.md §§5-15).

Theory of operation
-------------------
One stream between two peers carries one *session*. The peer that **opens** the stream is
the caller on it (the payer: `ClientSession`); the peer that **accepts** it answers (the
payee: `ServerSession`) (§5.1, §9 rule 1). Like h11 and wsproto, a session does no I/O and
reads no clock: the transport does the framing (length prefixes, §5.2) and hands each
frame's payload to `receive(payload, now)`, which returns typed *events*; the bytes to send
come back inside those events (`Event.send`), with what to do with the stream afterwards
(`Event.end`: keep it, close it once the frame left, or reset it now). A pump (the node's
server and client, the simulator's raw clients) moves payloads in, sends `Event.send`
out, and applies the events. Peer-caused outcomes are events, never exceptions;
`LocalProtocolError` means the caller misused the session.

The rules the sessions decide (each tested in tests/unit/test_session.py):

* **Hello** (§9 rules 1-3): the opener sends its hello first (`ClientSession.start`); the
  acceptor checks it (decoding; version, VERSION_MISMATCH with details ``{"version": 2}``;
  ledger; signature by the stream's remote key; account), then answers with its own
  (`ServerSession.hello_frame`, which refuses to run before the peer's hello checked).
  A failed check, or any other frame first, is an unsigned refusal (channel empty, n 0)
  and the stream ends. Each side sends one hello; a second one is MALFORMED and ends the
  stream.
* **Frames allowed per role** (§5.1, §5.4, §12): only the opener sends requests; only the
  acceptor sends responses and refusals of requests. The acceptor ignores a response or
  a refusal frame (a protocol violation that costs a token of the refusal budget, below);
  the opener answers a request frame with an unsigned MALFORMED and keeps the stream, as
  long as its own refusal budget has a token (below; without one the frame is ignored,
  unanswered); a refusal naming a (channel, n) the opener has no request outstanding for
  is ignored.
  Nobody answers a response or a refusal with a refusal.
* **Invalid frames** (§5.2): a length prefix that is not minimal or too long is MALFORMED,
  an announced frame above the receiver's ``max_frame`` FRAME_TOO_LARGE with details
  ``{"max_frame": limit}`` (the transport reports both: `frame_error`); a payload that
  does not decode is MALFORMED or WRONG_DOMAIN. Each gets an unsigned refusal (channel
  empty, n 0) and the stream is closed after it (``End.CLOSE``).
* **Capacity** (§13.2 check 0'): a request arriving while this stream has
  ``max_in_flight`` admitted requests unanswered, or while the node as a whole is full
  (``node_busy``), is refused with an unsigned OVERLOADED before any other check: a
  signed refusal would be refundable money (claims.md §3), and `n` is not consumed.
* **Refusal budget** (§19.1, threat model row 25): the acceptor keeps a token bucket per
  stream, ``refusal_burst`` tokens refilled at ``max_refusals_per_s`` per second
  (integral thousandths of a token per millisecond; a clock that steps back refills
  nothing). Every refused request (unsigned refusal or signed refusal), and every ignored
  response or refusal frame, takes a token, except an OVERLOADED due only to the node-wide
  limit. The event that finds the bucket empty carries ``End.RESET``. The opener keeps
  the same bucket for its answers to request frames (§19.1): one without a token is not
  answered (``send`` None), and the stream is kept.
* **Admission** (§13.2 checks 1-12) is `PayeeChannel.admit`'s: `ServerSession.admit` asks
  it (with ``max_deadline = now + deadline_horizon``, the horizon the payee announces in
  its hello, §9) and turns its decision into `RequestAdmitted` or `RequestRefused` (unsigned bytes,
  or ``signed=True`` for a refusal the payee signs, §11).
* **Client side** (§13.1, §14.3, §15): `ClientSession.deadline` caps a request's deadline
  at the payee hello's ``deadline_horizon`` and the ledger's horizon; `ClientSession.max_body`
  is the longest body a request may carry (the service's ``max_body`` and the payee's
  ``max_frame`` minus ``REQUEST_OVERHEAD``, §5.3); `ClientSession.send_request` refuses a
  body whose frame might not fit the payee's ``max_frame`` and records what is
  outstanding on the stream; responses go to
  `PayerChannel.on_response` (`ReceiptAccepted` / `ReceiptRejected`), a signed
  PAYMENT_REQUIRED with another price is `PriceChanged`; unsigned refusals are sorted
  into those that prove nothing was charged (`RefusalReceived` with ``dropped``: the
  channel forgets the request) and those that prove nothing (REPLAY and the slice-rule
  PAYMENT_REQUIRED: `ResyncNeeded`, after `PayerChannel.on_replay` adopted the checked
  resync details; a re-sent or re-delivered request, or an INSUFFICIENT_DEPOSIT of a slice
  within the deposit as we know it: kept on record).

The split with the channels: the sessions own everything about the *stream* (state, who
may send what, the hello, budgets, unsigned refusal bytes, matching answers to requests
sent on this stream); `p2pay.core.channel` owns the *money* (admission checks 1-12,
charges, receipts, resync adoption). A session calls the channel methods itself, so one
call decides a frame completely; the node then only does what needs I/O: looking a channel
up on the ledger before `ServerSession.admit`, signing and storing signed responses,
making state durable before the bytes leave, running handlers, and waking callers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.channel import Admit, PayeeChannel, PayerChannel, Receipt, Replay
from p2pay.core.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    remote_error,
)
from p2pay.core.messages import (
    REQUEST_OVERHEAD,
    Frame,
    Hello,
    Refusal,
    Request,
    Response,
    check_signed_by,
    decode_frame,
)

#: The message of the refusal a caller answers a request frame with (§5.4).
REQUEST_TO_CALLER = "requests go on a stream their payer opens"

#: Longest refusal message a session writes, in characters (at most 2000 bytes of UTF-8,
#: within the 2048 bytes of protocol.md §12).
MAX_MESSAGE_CHARS = 500


class End(enum.StrEnum):
    """What happens to the stream after an event's frame (if any) was sent."""

    KEEP = "keep"  # the stream goes on
    CLOSE = "close"  # send the event's frame, then end the stream (a graceful close)
    RESET = "reset"  # abort the stream now: nothing more is read, queued frames may be lost


class Purpose(enum.StrEnum):
    """Why a request was sent on this stream (`ClientSession.send_request`)."""

    CALL = "call"  # sent for the first time by a call
    RESEND = "resend"  # the same signed request again, after an unsigned REPLAY (§15 step 5)
    REDELIVERY = "redelivery"  # sent again by the watcher before it claims (claims.md 6)


# ---------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of the events: `send` is a frame payload to send now (or None), `end` what to
    do with the stream once it left."""

    send: bytes | None = None
    end: End = End.KEEP


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloReceived(Event):
    """The peer's hello passed every check of §9 rule 3. `account` is the ledger account it
    binds to the stream's remote peer (§9 rule 7)."""

    hello: Hello
    account: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolViolation(Event):
    """The peer broke a rule of the stream. `send` holds the unsigned refusal answering it
    (None when the rule is to answer nothing: a response or refusal frame is never
    answered with a refusal). `before_hello` marks a failure of the hello exchange."""

    code: ErrorCode
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    before_hello: bool = False

    def error(self) -> RemoteProtocolError:
        """The violation as an exception (for a caller waiting on the hello)."""
        return remote_error(self.code, self.message, self.details)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRefused(Event):
    """The peer sent an unsigned refusal with an empty channel: it refers to the stream
    (our hello was refused, too many sessions, a frame of ours did not decode). Before the
    hello exchange completed the session is over (``End.RESET``)."""

    refusal: Refusal

    def error(self) -> RemoteProtocolError:
        return remote_error(self.refusal.code, self.refusal.message, self.refusal.details)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameIgnored(Event):
    """A frame that needs nothing (logged, not a violation): a refusal naming a request
    not outstanding here, or a second answer to a request already settled."""

    frame: Frame
    reason: str


# server side


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived(Event):
    """A request frame passed checks 0 and 0' (§13.2): look its channel up and call
    `ServerSession.admit`."""

    request: Request


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAdmitted(Event):
    """Admitted: `price` is reserved on the channel; run the handler, then call
    `PayeeChannel.complete` and `ServerSession.finished`. `voucher_improved`: the
    channel's best or checked voucher changed (store it)."""

    request: Request
    price: int
    voucher_improved: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRefused(Event):
    """Not served. Unsigned (`signed` False): `send` is the refusal frame; for REPLAY
    (`code`), first check whether the request is one already answered or being served
    (§13.5): then that answer goes instead, and `send` is not sent. Signed: the payee signs
    a response with status `code`, price 0 and the channel's current spent, body
    ``refusal_body(message, details)`` (§11). `violation`: the payer's own stream carried a
    bad signature (§13.4 c)."""

    request: Request
    code: ErrorCode
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    signed: bool = False
    voucher_improved: bool = False
    violation: bool = False


# client side


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptAccepted(Event):
    """A response passed the receipt check (§14.3) and was accounted for. `request` is the
    request it answers if it was outstanding on this stream (else an answer to a request
    abandoned earlier). `purpose`: why that request was sent."""

    receipt: Receipt
    request: Request | None
    purpose: Purpose | None

    @property
    def signed_refusal(self) -> bool:
        """The payee's signed refusal (status not OK, nothing charged): evidence to keep
        (claims.md 3, refund with the payee's refusal)."""
        response = self.receipt.response
        return not response.ok and response.price == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptRejected(Event):
    """A response for one of our channels failed the receipt check (§14.3): the channel
    state is unchanged but for its `PayerChannel.faulty` mark (nothing more is signed on
    it), the stream ends."""

    response: Response
    request: Request | None
    purpose: Purpose | None
    error_value: RemoteProtocolError

    def error(self) -> RemoteProtocolError:
        return self.error_value


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceChanged(Event):
    """A signed PAYMENT_REQUIRED named another price for `service` (§9 rule 4): the price
    the payer offers from now on (`ClientSession.price`)."""

    service: str
    price: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusalReceived(Event):
    """An unsigned refusal of a request outstanding here, other than a resync. `dropped`:
    it proves nothing was charged (refused before authentication, §12): the channel
    forgot the request (its slice is not reused) and its record can go. Otherwise (a
    re-sent or re-delivered request, or INSUFFICIENT_DEPOSIT of a slice within the
    deposit we know) it proves nothing and the request stays on record."""

    refusal: Refusal
    request: Request
    purpose: Purpose
    dropped: bool

    def error(self) -> RemoteProtocolError:
        return remote_error(self.refusal.code, self.refusal.message, self.refusal.details)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResyncNeeded(Event):
    """An unsigned REPLAY, or PAYMENT_REQUIRED with resync details (§13.2 check 5'), of a
    request outstanding here: `outcome` is what `PayerChannel.on_replay` decided after
    adopting the checked details (§15). IN_DOUBT: re-send the same request once (or, if it
    was already re-sent, the call ends in doubt); SUPERSEDED: the request can go, send a
    fresh one; UNKNOWN: not in flight. `violation`: the details were unusable or not ours
    (nothing adopted)."""

    refusal: Refusal
    request: Request
    purpose: Purpose
    outcome: Replay
    violation: RemoteProtocolError | None = None

    def error(self) -> RemoteProtocolError:
        return remote_error(self.refusal.code, self.refusal.message, self.refusal.details)


# ---------------------------------------------------------------------------
# shared rules


class _State(enum.Enum):
    IDLE = "idle"  # client: hello not sent yet
    AWAIT_HELLO = "await_hello"
    HELLO_CHECKED = "hello_checked"  # server: the peer's hello checked, ours not sent yet
    OPEN = "open"
    ENDED = "ended"


def refusal_frame(
    channel: bytes,
    n: int,
    code: ErrorCode,
    message: str,
    details: Mapping[str, Any] | None = None,
) -> bytes:
    """An unsigned refusal frame ``[3, channel, n, code, message, details]`` (§12), the
    message cut to `MAX_MESSAGE_CHARS` characters."""
    return Refusal(
        channel=channel,
        n=n,
        code=code,
        message=message[:MAX_MESSAGE_CHARS],
        details=dict(details or {}),
    ).to_frame()


def _error_details(error: RemoteProtocolError, max_frame: int) -> dict[str, Any]:
    """The details of the refusal answering `error` (§5.2: FRAME_TOO_LARGE names our
    limit; VERSION_MISMATCH our version, as `check_signed_by` gives it)."""
    if error.code is ErrorCode.FRAME_TOO_LARGE:
        return {"max_frame": max_frame}
    if error.code is ErrorCode.VERSION_MISMATCH:
        return dict(error.details)
    return {}


class _Session:
    """What both roles share: the state, the hello check, invalid frames."""

    def __init__(self, *, ledger: bytes, remote: bytes, max_frame: int) -> None:
        self.ledger = ledger
        self.remote = remote
        self.max_frame = max_frame
        self._state = _State.AWAIT_HELLO
        #: the peer's checked hello and the account it binds (None before)
        self.peer_hello: Hello | None = None
        self.account: bytes = b""

    @property
    def ended(self) -> bool:
        """An event ended the stream: no more frames are taken."""
        return self._state is _State.ENDED

    @property
    def open(self) -> bool:
        """Both hellos went: requests and answers may flow."""
        return self._state is _State.OPEN

    def _end(self, event: Event) -> Event:
        if event.end is not End.KEEP:
            self._state = _State.ENDED
        return event

    def _violation(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        refuse: bool = True,
        end: End = End.CLOSE,
        channel: bytes = b"",
        n: int = 0,
    ) -> ProtocolViolation:
        frame = refusal_frame(channel, n, code, message, details) if refuse else None
        event = ProtocolViolation(
            code=code,
            message=message,
            details=dict(details or {}),
            send=frame,
            end=end,
            before_hello=self._state in (_State.AWAIT_HELLO, _State.IDLE),
        )
        self._end(event)
        return event

    def _check_receiving(self) -> None:
        if self._state is _State.ENDED:
            raise LocalProtocolError("the session has ended: no frame is taken any more")
        if self._state is _State.IDLE:
            raise LocalProtocolError("send the hello first (ClientSession.start)")

    def frame_error(self, error: DecodeError) -> ProtocolViolation:
        """The transport could not read a frame: a length prefix that is not a minimal
        uvarint of at most 9 bytes (MALFORMED), or one announcing more than our
        ``max_frame`` (FRAME_TOO_LARGE, details ``{"max_frame": ...}``). An unsigned
        refusal (channel empty, n 0), then the stream ends (§5.2)."""
        self._check_receiving()
        return self._violation(
            error.code, error.message, details=_error_details(error, self.max_frame)
        )

    def _decode(self, payload: bytes | bytearray | memoryview) -> Frame | ProtocolViolation:
        try:
            return decode_frame(payload, max_size=self.max_frame)
        except RemoteProtocolError as exc:  # DecodeError, FrameTooLarge, WrongDomain
            return self._violation(
                exc.code, exc.message, details=_error_details(exc, self.max_frame)
            )

    def _check_hello(self, frame: Frame) -> Hello | ProtocolViolation:
        """§9 rule 3, in order: a hello (decoded already), version, ledger, signature by
        the stream's remote key, account (`check_signed_by`)."""
        if not isinstance(frame, Hello):
            return self._violation(ErrorCode.MALFORMED, "expected a hello first")
        try:
            check_signed_by(frame, self.remote, self.ledger)
        except RemoteProtocolError as exc:
            return self._violation(
                exc.code, exc.message, details=_error_details(exc, self.max_frame)
            )
        return frame


# ---------------------------------------------------------------------------
# server (the accepting side: the payee)


class RefusalBudget:
    """A token bucket: `burst` tokens, refilled at `per_s` tokens per second, in
    thousandths of a token so that the refill per millisecond stays integral."""

    def __init__(self, *, per_s: int, burst: int, now: int) -> None:
        for name, value in (("per_s", per_s), ("burst", burst)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalProtocolError(f"refusal budget {name} must be an int >= 1")
        self.per_s = per_s
        self.burst = burst
        self._tokens = burst * 1000
        self._at = now
        self.exhausted = False

    @property
    def tokens(self) -> float:
        """Tokens left at the last take (for logs and tests)."""
        return self._tokens / 1000

    def take(self, now: int) -> bool:
        """Take one token at time `now` (Unix ms); False if less than one token is left
        (then the session resets the stream)."""
        elapsed = max(0, now - self._at)  # a clock that steps back refills nothing
        self._at = max(self._at, now)
        self._tokens = min(self.burst * 1000, self._tokens + elapsed * self.per_s)
        if self._tokens < 1000:
            self.exhausted = True
            return False
        self._tokens -= 1000
        return True


class ServerSession(_Session):
    """The accepting side of a stream: the payee (§5.1, §5.4).

    Args:
        ledger: our ledger id.
        remote: the stream's authenticated remote public key (Ed25519, 32 bytes).
        max_frame: the largest frame we accept (announced in our hello).
        max_in_flight: admitted requests of this stream we hold unanswered (announced).
        deadline_horizon: ms: we refuse a request whose deadline is later than
            ``now + deadline_horizon`` (announced in our hello, §9).
        max_refusals_per_s, refusal_burst: the refusal budget (module docstring).
        now: Unix ms when the stream was accepted.
    """

    def __init__(
        self,
        *,
        ledger: bytes,
        remote: bytes,
        max_frame: int,
        max_in_flight: int,
        deadline_horizon: int,
        max_refusals_per_s: int,
        refusal_burst: int,
        now: int,
    ) -> None:
        super().__init__(ledger=ledger, remote=remote, max_frame=max_frame)
        for name, value in (
            ("max_frame", max_frame),
            ("max_in_flight", max_in_flight),
            ("deadline_horizon", deadline_horizon),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalProtocolError(f"{name} must be an int >= 1, not {value!r}")
        self.max_in_flight = max_in_flight
        self.deadline_horizon = deadline_horizon
        self.budget = RefusalBudget(per_s=max_refusals_per_s, burst=refusal_burst, now=now)
        #: admitted requests of this stream not finished yet
        self.in_flight = 0

    # -- the hello exchange

    def hello_frame(self, hello: Hello) -> bytes:
        """Our hello, sent once the peer's checked (§9 rule 1: the acceptor answers second,
        so a peer it refuses learns nothing of its terms).

        Raises:
            LocalProtocolError: the peer's hello has not been checked, ours went already,
                or `hello` does not announce this session's ledger and limits.
        """
        if self._state is not _State.HELLO_CHECKED:
            raise LocalProtocolError("the acceptor sends its hello once, after the peer's")
        if (hello.ledger, hello.max_frame, hello.max_in_flight, hello.deadline_horizon) != (
            self.ledger,
            self.max_frame,
            self.max_in_flight,
            self.deadline_horizon,
        ):
            raise LocalProtocolError("our hello must announce this session's ledger and limits")
        self._state = _State.OPEN
        return hello.to_frame()

    def timed_out(self) -> ProtocolViolation:
        """No hello arrived within the hello timeout: DEADLINE_EXCEEDED (unsigned, channel
        empty), then the stream ends.

        Raises:
            LocalProtocolError: the peer's hello was received already.
        """
        if self._state is not _State.AWAIT_HELLO:
            raise LocalProtocolError("the hello timeout applies only before the peer's hello")
        return self._violation(ErrorCode.DEADLINE_EXCEEDED, "no hello in time")

    # -- frames

    def receive(
        self, payload: bytes | bytearray | memoryview, now: int, *, node_busy: bool = False
    ) -> list[Event]:
        """Take one frame's payload received at `now` (Unix ms).

        Args:
            node_busy: the node as a whole holds its limit of admitted requests (§13.2
                check 0'): a request is refused OVERLOADED, without costing a token.

        Returns:
            One event: `HelloReceived` (then send `hello_frame`), `RequestReceived`,
            `RequestRefused` (OVERLOADED before admission, check 0', or WRONG_LEDGER,
            check 1, decided before the channel is looked up), or `ProtocolViolation`.

        Raises:
            LocalProtocolError: the session ended, or our hello is still owed.
        """
        return [self._receive(payload, now, node_busy)]

    def _receive(self, payload: bytes | bytearray | memoryview, now: int, node_busy: bool) -> Event:
        self._check_receiving()
        if self._state is _State.HELLO_CHECKED:
            raise LocalProtocolError("send our hello (hello_frame) before reading on")
        frame = self._decode(payload)
        if isinstance(frame, ProtocolViolation):
            return frame
        if self._state is _State.AWAIT_HELLO:
            hello = self._check_hello(frame)
            if isinstance(hello, ProtocolViolation):
                return hello
            self.peer_hello, self.account = hello, hello.account
            self._state = _State.HELLO_CHECKED
            return HelloReceived(hello=hello, account=hello.account)
        if isinstance(frame, Hello):
            return self._violation(ErrorCode.MALFORMED, "a second hello")
        if isinstance(frame, Response | Refusal):
            # §5.4: the answerer never answers a response or a refusal. Ignored, but it
            # costs a token (§19.1): a flood of them ends in a reset.
            kind = "response" if isinstance(frame, Response) else "refusal"
            flooded = not self.budget.take(now)
            return self._violation(
                ErrorCode.MALFORMED,
                f"a {kind} frame on a stream the peer opened (requests only)",
                refuse=False,
                end=End.RESET if flooded else End.KEEP,
            )
        assert isinstance(frame, Request)
        stream_full = self.in_flight >= self.max_in_flight
        if stream_full or node_busy:
            # Check 0': before any other check, unsigned, `n` not consumed. The node-wide
            # limit is not this peer's doing: it costs no token.
            flooded = stream_full and not self.budget.take(now)
            return self._end(
                RequestRefused(
                    request=frame,
                    code=ErrorCode.OVERLOADED,
                    message="too many requests in flight; retry later",
                    send=refusal_frame(
                        frame.channel,
                        frame.n,
                        ErrorCode.OVERLOADED,
                        "too many requests in flight; retry later",
                    ),
                    end=End.RESET if flooded else End.KEEP,
                )
            )
        if frame.ledger != self.ledger:
            # Check 1 before the channel is looked up (check 2): a request for another
            # ledger costs the payee no ledger read (§13.2).
            return self._refuse(
                frame, ErrorCode.WRONG_LEDGER, "the request names another ledger", {}, now
            )
        return RequestReceived(request=frame)

    def admit(
        self,
        request: Request,
        channel: PayeeChannel | RemoteProtocolError | None,
        *,
        price: int | None,
        max_body: int,
        now: int,
    ) -> RequestAdmitted | RequestRefused:
        """Decide a request `receive` returned, given its channel (§13.2 checks 1-12).

        Args:
            request: the `RequestReceived.request`.
            channel: the payee channel it names, None if we are not payee of such a channel
                (UNKNOWN_CHANNEL), or the error that kept it from being adopted (e.g.
                CHALLENGE_TOO_SHORT, with its details).
            price: the service's current price, None if there is no such service.
            max_body: the service's largest body.
            now: Unix ms.

        Returns:
            `RequestAdmitted` (``in_flight`` counts it until `finished`) or
            `RequestRefused`; ``End.RESET`` once the refusal budget is spent.
        """
        if not self.open:
            raise LocalProtocolError("requests are admitted only on an open session")
        if isinstance(channel, RemoteProtocolError):
            return self._refuse(request, channel.code, channel.message, channel.details, now)
        if channel is None:
            return self._refuse(
                request, ErrorCode.UNKNOWN_CHANNEL, "no such channel to this payee", {}, now
            )
        decision = channel.admit(
            request,
            peer=self.account,
            price=price,
            max_body=max_body,
            now=now,
            max_deadline=now + self.deadline_horizon,
        )
        if isinstance(decision, Admit):
            self.in_flight += 1
            return RequestAdmitted(
                request=request, price=decision.price, voucher_improved=decision.voucher_improved
            )
        return self._refuse(
            request,
            decision.code,
            decision.message,
            decision.details,
            now,
            signed=decision.authenticated,
            voucher_improved=decision.voucher_improved,
            # on the payer's own stream a bad signature is the payer cheating (13.4 c)
            violation=decision.code is ErrorCode.INVALID_SIGNATURE,
        )

    def _refuse(
        self,
        request: Request,
        code: ErrorCode,
        message: str,
        details: Mapping[str, Any],
        now: int,
        *,
        signed: bool = False,
        voucher_improved: bool = False,
        violation: bool = False,
    ) -> RequestRefused:
        flooded = not self.budget.take(now)
        send = None if signed else refusal_frame(request.channel, request.n, code, message, details)
        event = RequestRefused(
            request=request,
            code=code,
            message=message,
            details=dict(details),
            signed=signed,
            voucher_improved=voucher_improved,
            violation=violation,
            send=send,
            end=End.RESET if flooded else End.KEEP,
        )
        self._end(event)
        return event

    def finished(self) -> None:
        """An admitted request was answered (or given up): it leaves ``in_flight``.

        Raises:
            LocalProtocolError: nothing is in flight.
        """
        if self.in_flight <= 0:
            raise LocalProtocolError("no admitted request is in flight")
        self.in_flight -= 1


# ---------------------------------------------------------------------------
# client (the opening side: the payer)


@dataclass(slots=True)
class _Outstanding:
    request: Request
    purpose: Purpose


class Draw(Protocol):
    """A source of draws for §14.4 (`random.Random` is one)."""

    def randrange(self, stop: int, /) -> int: ...


class ClientSession(_Session):
    """The opening side of a stream: the payer (§5.1, §5.4).

    Args:
        hello: our signed hello (sent first, `start`).
        remote: the stream's authenticated remote public key.
        channels: our payer channels by id (read to check receipts and refusals; the
            session calls their methods, the caller persists what changed).
        max_refusals_per_s, refusal_burst: the budget of refusals answering request
            frames the payee sends (§5.4, §19.1); beyond it they are ignored, unanswered.
        receipt_check_every: ``K`` of §14.4: an OK receipt with no jump has its signature
            checked with probability ``1/K`` (1, the default: every receipt is checked);
            every other response is always checked.
        rng: the draw of §14.4, needed when ``K > 1``: ``rng.randrange(K) == 0`` checks
            the receipt. It must be a source the payee cannot predict (the node passes a
            `random.Random` seeded from `secrets`); the core draws nothing of its own.

    Raises:
        LocalProtocolError: ``receipt_check_every`` is not an int >= 1, or is above 1
            without an ``rng``.
    """

    def __init__(
        self,
        *,
        hello: Hello,
        remote: bytes,
        channels: Mapping[bytes, PayerChannel],
        max_refusals_per_s: int = 50,
        refusal_burst: int = 200,
        receipt_check_every: int = 1,
        rng: Draw | None = None,
    ) -> None:
        if (
            isinstance(receipt_check_every, bool)
            or not isinstance(receipt_check_every, int)
            or receipt_check_every < 1
        ):
            raise LocalProtocolError(
                f"receipt_check_every must be an int >= 1, not {receipt_check_every!r}"
            )
        if receipt_check_every > 1 and rng is None:
            raise LocalProtocolError("receipt_check_every above 1 needs an rng to draw from")
        self._check_every = receipt_check_every
        self._rng = rng if receipt_check_every > 1 else None
        super().__init__(ledger=hello.ledger, remote=remote, max_frame=hello.max_frame)
        # full at the first take, whatever its clock (a bucket refills up to its burst)
        self.budget = RefusalBudget(per_s=max_refusals_per_s, burst=refusal_burst, now=0)
        self._hello = hello
        self._state = _State.IDLE
        self.channels = channels
        #: requests sent on this stream and not answered, by (channel, n)
        self.outstanding: dict[tuple[bytes, int], _Outstanding] = {}
        #: prices learnt since the hello (signed PAYMENT_REQUIRED, charged prices)
        self.prices: dict[str, int] = {}

    def start(self) -> bytes:
        """Our hello: the first frame on the stream (§9 rule 1).

        Raises:
            LocalProtocolError: called twice.
        """
        if self._state is not _State.IDLE:
            raise LocalProtocolError("the hello is sent once, first")
        self._state = _State.AWAIT_HELLO
        return self._hello.to_frame()

    # -- what a call needs from the payee's hello

    def _peer(self) -> Hello:
        if self.peer_hello is None or not self.open:
            raise LocalProtocolError("the payee's hello has not been checked")
        return self.peer_hello

    def price(self, service: str) -> int | None:
        """The price to offer for `service`: the latest learnt (a signed PAYMENT_REQUIRED's
        ``details.price``, or what a receipt charged), else the hello's; None if the payee
        offers no such service (§13.1 step 1)."""
        terms = self._peer().service(service)
        if terms is None:
            return None
        return self.prices.get(service, terms.price)

    def max_body(self, service: str) -> int | None:
        """The longest body a request for `service` may carry: the service's ``max_body``
        and the payee hello's ``max_frame`` minus `REQUEST_OVERHEAD` (§5.3, §13.1 step 1''),
        whichever is smaller; None if the payee offers no such service."""
        terms = self._peer().service(service)
        if terms is None:
            return None
        return min(terms.max_body, self.frame_body_limit())

    def frame_body_limit(self) -> int:
        """The longest body whose request frame fits the payee hello's ``max_frame``
        (§5.3): ``max_frame - REQUEST_OVERHEAD``."""
        return self._peer().max_frame - REQUEST_OVERHEAD

    def deadline(self, now: int, timeout_ms: int, *, ledger_horizon: int | None = None) -> int:
        """The deadline of a request sent at `now` that waits `timeout_ms`: at most the
        payee's announced ``deadline_horizon`` ahead (it refuses later ones), and the
        ledger's ``max_deadline_horizon_ms`` (a later one could be post-dated, claims.md 2).
        """
        deadline = now + max(1, timeout_ms)
        deadline = min(deadline, now + self._peer().deadline_horizon)
        if ledger_horizon is not None:
            deadline = min(deadline, now + ledger_horizon)
        return deadline

    def send_request(self, request: Request, *, purpose: Purpose = Purpose.CALL) -> bytes:
        """The frame of `request`, recorded as outstanding on this stream until its answer.

        Raises:
            LocalProtocolError: the payee's hello was not checked yet (§9 rule 2), the
                session ended, `request` is not on one of our channels to this payee, or
                its body is longer than the payee's ``max_frame`` minus `REQUEST_OVERHEAD`
                (§5.3: its frame might not fit; code BODY_TOO_LARGE, details
                ``{"max_body": limit}``; nothing is recorded).
        """
        self._peer()
        ch = self.channels.get(request.channel)
        if ch is None or ch.payee != self.account or request.ledger != self.ledger:
            raise LocalProtocolError("a request goes only to its channel's payee")
        limit = self.frame_body_limit()
        if len(request.body) > limit:
            raise LocalProtocolError(
                f"a body of {len(request.body)} bytes does not fit the payee's max_frame of "
                f"{self._peer().max_frame} bytes (at most {limit})",
                code=ErrorCode.BODY_TOO_LARGE,
                details={"max_body": limit},
            )
        self.outstanding[(request.channel, request.n)] = _Outstanding(request, purpose)
        return request.to_frame()

    def forget(self, channel: bytes, n: int) -> None:
        """Stop waiting for (channel, n) on this stream (the call gave up)."""
        self.outstanding.pop((channel, n), None)

    # -- frames

    def receive(self, payload: bytes | bytearray | memoryview, now: int) -> list[Event]:
        """Take one frame's payload received at `now` (Unix ms).

        Returns:
            Before the payee's hello: `HelloReceived`, `StreamRefused` or
            `ProtocolViolation`; then `ReceiptAccepted` (followed by `PriceChanged` when a
            signed PAYMENT_REQUIRED names another price), `ReceiptRejected`,
            `RefusalReceived`, `ResyncNeeded`, `StreamRefused`, `FrameIgnored` or
            `ProtocolViolation`.

        Raises:
            LocalProtocolError: the hello was not sent yet, or the session ended.
        """
        self._check_receiving()
        frame = self._decode(payload)
        if isinstance(frame, ProtocolViolation):
            return [frame]
        if self._state is _State.AWAIT_HELLO:
            if isinstance(frame, Refusal) and not frame.channel:
                # our hello refused, or the payee is full (OVERLOADED)
                event = StreamRefused(refusal=frame, end=End.RESET)
                self._end(event)
                return [event]
            hello = self._check_hello(frame)
            if isinstance(hello, ProtocolViolation):
                return [hello]
            self.peer_hello, self.account = hello, hello.account
            self._state = _State.OPEN
            return [HelloReceived(hello=hello, account=hello.account)]
        if isinstance(frame, Hello):
            return [self._violation(ErrorCode.MALFORMED, "a second hello")]
        if isinstance(frame, Request):
            # §5.4: requests go on a stream their payer opens; answered while the refusal
            # budget lasts (§19.1: then ignored, so a flood of them costs us no memory),
            # the stream kept.
            return [
                self._violation(
                    ErrorCode.MALFORMED,
                    REQUEST_TO_CALLER,
                    refuse=self.budget.take(now),
                    end=End.KEEP,
                    channel=frame.channel,
                    n=frame.n,
                )
            ]
        if isinstance(frame, Response):
            return self._on_response(frame)
        return [self._on_refusal(frame)]

    def _on_response(self, response: Response) -> list[Event]:
        ch = self.channels.get(response.channel)
        if ch is None or ch.payee != self.account:
            # not a channel we pay this peer on: never answered with a refusal
            return [
                self._violation(
                    ErrorCode.MALFORMED,
                    "a response for a channel this peer is not payee of",
                    refuse=False,
                )
            ]
        sent = self.outstanding.pop((response.channel, response.n), None)
        request = sent.request if sent is not None else None
        purpose = sent.purpose if sent is not None else None
        if not ch.expects(response.n):
            # a second answer to a request re-sent while its handler ran (C-4), or to one
            # already settled: it changes nothing (§14.3), even when a copy of the request
            # was sent on this stream after its answer came (a watcher's re-delivery racing
            # the late answer): never a reason to end the stream and what is in flight on it
            return [FrameIgnored(frame=response, reason="an answer to a settled request")]
        # §14.4: draw whether this receipt's signature is checked (on_response checks
        # every response that is not an OK receipt with no jump, drawn or not). An answer
        # to a request sent again (re-sent or re-delivered, §13.5: the payee's stored
        # response served again) or not asked for on this stream (a late answer, one to a
        # request abandoned on an earlier stream) is always checked: else a receipt
        # refused for its signature when drawn would be accepted when served again, and
        # the watcher would take it for the signed answer that makes a claim needless.
        check = self._rng is None or self._rng.randrange(self._check_every) == 0
        check = check or purpose is not Purpose.CALL
        try:
            receipt = ch.on_response(response, check_signature=check)
        except RemoteProtocolError as exc:
            ch.found_faulty(response.n, exc)  # nothing more is signed on it (14.3)
            event = ReceiptRejected(
                response=response,
                request=request,
                purpose=purpose,
                error_value=exc,
                end=End.CLOSE,
            )
            self._end(event)
            return [event]
        events: list[Event] = [ReceiptAccepted(receipt=receipt, request=request, purpose=purpose)]
        service = request.service if request is not None else None
        if service is not None and response.ok:
            self.prices[service] = receipt.charged
        elif service is not None and response.status == ErrorCode.PAYMENT_REQUIRED.value:
            _, details = response.refusal_info()
            asked = details.get("price")
            if (
                isinstance(asked, int)
                and not isinstance(asked, bool)
                and 0 <= asked <= MAX_YOCTO
                and request is not None
                and asked != request.price
            ):
                self.prices[service] = asked
                events.append(PriceChanged(service=service, price=asked))
        return events

    def _on_refusal(self, refusal: Refusal) -> Event:
        if not refusal.channel:
            return StreamRefused(refusal=refusal)
        key = (refusal.channel, refusal.n)
        sent = self.outstanding.get(key)
        ch = self.channels.get(refusal.channel)
        if sent is None or ch is None:
            return FrameIgnored(frame=refusal, reason="a refusal of no request outstanding here")
        del self.outstanding[key]
        request, purpose = sent.request, sent.purpose
        if purpose is Purpose.REDELIVERY:
            # the payee refused our re-delivery: it stays on record, claimable
            return RefusalReceived(refusal=refusal, request=request, purpose=purpose, dropped=False)
        if refusal.code is ErrorCode.REPLAY or (
            refusal.code is ErrorCode.PAYMENT_REQUIRED and "last_n" in refusal.details
        ):
            return self._on_resync(ch, refusal, request, purpose)
        if purpose is Purpose.RESEND or (
            refusal.code is ErrorCode.INSUFFICIENT_DEPOSIT and request.paid <= ch.deposit
        ):
            # An unsigned word about a request in doubt proves nothing, nor an
            # INSUFFICIENT_DEPOSIT of a slice within the deposit as we know it: kept.
            return RefusalReceived(refusal=refusal, request=request, purpose=purpose, dropped=False)
        # refused before authentication: nothing charged, the voucher not kept
        ch.on_refusal(refusal.n)
        return RefusalReceived(refusal=refusal, request=request, purpose=purpose, dropped=True)

    def _on_resync(
        self, ch: PayerChannel, refusal: Refusal, request: Request, purpose: Purpose
    ) -> ResyncNeeded:
        """§15: adopt the checked details (never ``spent``); the request is kept unless our
        own signature proves it superseded."""
        outcome = Replay.IN_DOUBT if refusal.n in ch.in_flight else Replay.UNKNOWN
        violation: RemoteProtocolError | None = None
        try:
            outcome = ch.on_resync(refusal.n, refusal.details)
        except RemoteProtocolError as exc:  # unusable, not our voucher, inconsistent numbers
            violation = exc
        return ResyncNeeded(
            refusal=refusal, request=request, purpose=purpose, outcome=outcome, violation=violation
        )
