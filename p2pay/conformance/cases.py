"""The conformance cases and their runner (`run_conformance`).

Theory of operation
-------------------
Each case is one rule of `specs/protocol.md` (a MUST, or a rule fixed by the issue-15
decisions D1-D8) checked over a fresh libp2p stream to the target: the case builds the
frames (`p2pay.conformance.probe`), sends them, and compares what comes back with what
the rule requires. A case ends PASS, FAIL (with what was sent, what was expected and what
came back) or SKIP (with the reason: what the case needs and does not have).

The run starts with a *discovery* stream: the tester opens it, waits a moment (the opener
speaks first, §9 rule 1), sends the spec's hello (D1 key set) and reads the target's. If
the target refuses that hello but takes the pre-D1 reference hello, the case
``hello.spec-keys`` FAILs and the other cases use the pre-D1 hello, so that one gap does
not hide everything else.

Cases under ``paid.`` need a channel from a payer to the target, on the target's ledger:
with a payer key and that ledger (`p2pay conformance --home DIR`), the runner opens a
small channel with the ledger API, uses it with raw frames, and starts its close at the
end. Without them those cases SKIP.

The paid cases cost money: a target may redeem every voucher it receives (that is how
payments work), so they can cost up to the deposits of the channels they open. Those are
capped by `max_deposit` (``--max-deposit``, default `DEFAULT_MAX_DEPOSIT`): the main
channel holds the target's price times the number of requests the cases may sign
(`requests_needed`), and the paid cases SKIP, saying so, when that exceeds the cap. No
request on it signs a ``paid`` above its deposit. The one exception is check 5''
(``paid.over-deposit``), which can only be tested with a valid voucher above a deposit,
i.e. one the target can redeem for the whole deposit: that case runs last, on a channel
of its own holding `OVER_DEPOSIT_CHANNEL` (1 yocto), so that it costs at most that.

The tester dials under an ephemeral key of its own; paid cases use the payer's key (the
stream's remote peer is the channel's payer, §13.2 check 3). Every read has a timeout and
every case a bound (`MAX_CASE_SECONDS` whatever the timeout, at most `MAX_TIMEOUT`): a
silent target FAILs, never hangs; a flooding one FAILs too (`Probe`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pay.core import codec
from p2pay.core.amounts import format_tokens
from p2pay.core.errors import ErrorCode, LocalProtocolError, P2payError
from p2pay.core.identity import Keypair, public_from_peer_id
from p2pay.core.messages import (
    DOMAIN_REQUEST,
    Refusal,
    Request,
    Response,
    blake2b256,
    decode_frame,
)
from p2pay.core.signing import Scheme, account_for, scheme_for, sign_message
from p2pay.net.base import PROTOCOL_ID, ConnectError, Stream, split_p2p
from p2pay.net.framing import encode_uvarint
from p2pay.net.p2p import Libp2pStream, Libp2pTransport, open_libp2p_transport

from .probe import (
    HELLO_KEYS,
    LEGACY_HELLO_KEYS,
    MAX_U64,
    PROTOCOL_VERSION,
    Got,
    Probe,
    Service,
    TargetHello,
    build_hello,
    hello_binds,
    hello_signed_by,
    nested,
    now_ms,
    open_probe,
)

if TYPE_CHECKING:
    from p2pay.ledger.base import Ledger

log = logging.getLogger("p2pay.conformance")

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0
"""The largest per-answer timeout (seconds)."""
MAX_CASE_SECONDS = 120.0
"""A case's bound, whatever the timeout (a case waits for a few answers)."""
DEFAULT_MAX_DEPOSIT = 10**21
"""The default cap on what the paid cases may cost (0.001 token)."""
OVER_DEPOSIT_CHANNEL = 1
"""The deposit (yocto) of the channel on which ``paid.over-deposit`` signs ``paid`` 2."""
MAX_SENT_BODY = 8 << 20
"""The largest body or frame the tester builds (bytes)."""
BODY = b"p2pay conformance"
OTHER_LEDGER = b"p2pay:conformance:not-your-ledger"


class Fail(P2payError):
    """The target broke the rule: what was sent, what the rule expects, what came."""

    def __init__(self, sent: str, expected: str, got: str) -> None:
        super().__init__(got)
        self.sent = sent
        self.expected = expected
        self.got = got

    def __str__(self) -> str:
        return self.got


class Skip(P2payError):
    """The case cannot run here (the reason says what it needs)."""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    section: str
    title: str
    run: Callable[[Tester], Awaitable[str]]
    paid: bool = False


@dataclass(slots=True)
class CaseResult:
    """One case's outcome. `reason` is one line; for a FAIL it says what was sent,
    what was expected and what came back (also in `sent`, `expected`, `got`)."""

    id: str
    section: str
    title: str
    status: str
    reason: str
    sent: str = ""
    expected: str = ""
    got: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "section": self.section,
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "sent": self.sent,
            "expected": self.expected,
            "got": self.got,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class Report:
    """The outcome of a run: one `CaseResult` per case, in order."""

    target: str
    results: list[CaseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        """True if no case failed (the exit status of ``p2pay conformance``)."""
        return self.count(FAIL) == 0

    def summary(self) -> str:
        return (
            f"{self.count(PASS)} passed, {self.count(FAIL)} failed, "
            f"{self.count(SKIP)} skipped, {len(self.results)} cases"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "protocol": PROTOCOL_ID,
            "ok": self.ok,
            "passed": self.count(PASS),
            "failed": self.count(FAIL),
            "skipped": self.count(SKIP),
            "notes": list(self.notes),
            "cases": [r.to_dict() for r in self.results],
        }

    def lines(self) -> list[str]:
        """The text report: one line per case, then the notes and the summary."""
        width = max((len(r.id) for r in self.results), default=10)
        out = [f"{r.status}  {r.id:<{width}}  {r.section:<12}  {r.reason}" for r in self.results]
        out.extend(f"note: {n}" for n in self.notes)
        out.append(self.summary())
        return out


@dataclass(slots=True)
class Discovery:
    """What the discovery stream showed (§9): the target's first frames."""

    early: Got | None = None  # a frame before our hello (it must wait)
    spec_refused: Got | None = None  # its answer to the D1 hello, when not a hello
    legacy: bool = False  # later cases send the pre-D1 hello
    hello_got: Got | None = None  # what came after our hello
    hello: TargetHello | None = None
    problem: str = ""  # why there is no usable hello
    unreachable: str = ""  # why no stream to the target could be opened


@dataclass(slots=True)
class Channel:
    """The tester's payer view of its channel (§14.2), kept from the target's answers."""

    id: bytes
    deposit: int
    service: Service
    price: int  # the price the requests sign: the service's, at least 1
    body: bytes
    n: int = 0
    paid: int = 0
    spent: int = 0


class Tester:
    """State shared by the cases of one run (see the module docstring)."""

    def __init__(
        self,
        addr: str,
        transport: Libp2pTransport,
        key: Keypair,
        *,
        ledger_id: bytes | None,
        timeout: float,
        payer: Keypair | None,
        payer_transport: Libp2pTransport | None,
        ledger: Ledger | None,
        max_deposit: int = DEFAULT_MAX_DEPOSIT,
    ) -> None:
        self.addr = addr
        self.transport = transport
        self.transport_key = key
        self.ledger_id = ledger_id
        self.timeout = timeout
        self.payer = payer
        self.payer_transport = payer_transport
        self.ledger = ledger
        _, peer_id = split_p2p(addr)
        self.target_public = public_from_peer_id(peer_id)
        self.discovery: Discovery | None = None
        self.channel: Channel | None = None
        self.channel_problem = ""
        self.max_deposit = max_deposit
        self.opened: list[Channel] = []  # every channel opened, closed at the end
        self.notes: list[str] = []

    # -- streams

    @asynccontextmanager
    async def stream(self, *, payer: bool = False) -> AsyncIterator[Probe]:
        """A new stream to the target (no hello yet)."""
        transport = self.payer_transport if payer else self.transport
        assert transport is not None
        try:
            with trio.fail_after(self.timeout * 3 + 5):
                raw: Stream = await transport.connect(self.addr)
        except (ConnectError, trio.TooSlowError) as exc:
            raise Fail("a new stream", "the target accepts the stream", f"{exc}") from None
        assert isinstance(raw, Libp2pStream)
        async with open_probe(raw, self.timeout) as probe:
            yield probe

    def our_hello(self, key: Keypair, **kw: Any) -> bytes:
        self.need_hello_run()
        assert self.ledger_id is not None
        legacy = self.discovery is not None and self.discovery.legacy
        return build_hello(key, self.ledger_id, legacy=legacy, **kw)

    @asynccontextmanager
    async def session(self, *, payer: bool = False) -> AsyncIterator[Probe]:
        """A new stream after the hello exchange (our hello, then the target's)."""
        self.need_hello()
        key = self.payer if payer else self.transport_key
        assert key is not None
        async with self.stream(payer=payer) as probe:
            await probe.send(self.our_hello(key))
            got = await probe.next()
            if not (got.kind == "frame" and isinstance(got.frame, TargetHello)):
                raise Fail("our hello", "the target's hello", got.describe())
            yield probe

    def need_hello_run(self) -> None:
        """Skip unless a hello can be built (the ledger id) and the target was reached."""
        if self.ledger_id is None:
            raise Skip("the target's ledger id is unknown: pass --ledger-id HEX or --home DIR")
        if self.discovery is not None and self.discovery.unreachable:
            raise Skip(f"the target could not be reached ({self.discovery.unreachable})")

    def need_hello(self) -> TargetHello:
        if self.ledger_id is None:
            raise Skip("the target's ledger id is unknown: pass --ledger-id HEX or --home DIR")
        d = self.discovery
        if d is None or d.hello is None:
            raise Skip(f"no hello exchange with the target ({d.problem if d else 'not run'})")
        return d.hello

    # -- discovery

    async def discover(self) -> None:
        """The discovery stream (module docstring)."""
        d = self.discovery = Discovery()
        if self.ledger_id is None:
            d.problem = "the target's ledger id is unknown"
            return
        quiet = min(1.0, self.timeout / 2)
        try:
            async with self.stream() as probe:
                early = await probe.next(quiet)
                if early.kind != "silent":
                    d.early = early
                await probe.send(build_hello(self.transport_key, self.ledger_id))
                got = early if early.kind == "frame" else await probe.next()
                if got.kind == "frame" and isinstance(got.frame, TargetHello):
                    d.hello_got = got
        except Fail as exc:
            d.problem = d.unreachable = exc.got
            return
        if d.hello_got is None:
            d.spec_refused = got
            try:  # the pre-D1 reference hello
                async with self.stream() as probe:
                    await probe.send(build_hello(self.transport_key, self.ledger_id, legacy=True))
                    legacy_got = await probe.next()
            except Fail as exc:
                d.problem = exc.got
                return
            if legacy_got.kind == "frame" and isinstance(legacy_got.frame, TargetHello):
                d.legacy = True
                d.hello_got = legacy_got
                self.notes.append(
                    "the target refused the spec's hello (D1 keys) and took the pre-D1 one: "
                    "the other cases send the pre-D1 hello"
                )
            else:
                d.problem = f"it answered our hello with {got.describe()}"
                return
        hello = d.hello_got.frame
        assert isinstance(hello, TargetHello)
        problems = self.hello_problems(hello)
        if problems:
            d.problem = "a hello that does not check: " + "; ".join(problems)
            return
        d.hello = hello

    def hello_problems(self, hello: TargetHello) -> list[str]:
        problems = []
        if hello.version != PROTOCOL_VERSION:
            problems.append(f"version {hello.version}, expected {PROTOCOL_VERSION}")
        if hello.ledger != self.ledger_id:
            problems.append(f"ledger {hello.ledger.hex()}, ours is {(self.ledger_id or b'').hex()}")
        if not hello_signed_by(hello, self.target_public):
            problems.append("not signed by the stream's PeerID key")
        if not hello_binds(hello, self.target_public):
            problems.append("its account is not bound to the stream's PeerID (§9 rule 3)")
        return problems

    # -- the paid channel

    async def need_channel(self) -> Channel:
        if self.channel is not None:
            return self.channel
        if self.channel_problem:
            raise Skip(self.channel_problem)
        try:
            self.channel = await self._open_channel()
        except Skip as exc:
            self.channel_problem = str(exc)
            raise
        return self.channel

    def _payer_service(self) -> tuple[TargetHello, Service]:
        """What a channel needs: the target's hello, a payer on its ledger, a service."""
        hello = self.need_hello()
        if self.payer is None or self.ledger is None or self.payer_transport is None:
            raise Skip(
                "no payer on the target's ledger: pass --home DIR (a p2pay home whose ledger "
                "is the target's, with funds)"
            )
        if self.ledger.ledger_id != hello.ledger:
            raise Skip(
                f"the home's ledger {self.ledger.ledger_id.hex()} is not the target's "
                f"{hello.ledger.hex()}"
            )
        if self.payer.public == self.target_public:
            raise Skip("the payer key is the target's own key")
        service = hello.cheapest()
        if service is None:
            raise Skip("the target's hello offers no service")
        return hello, service

    async def _open(self, service: Service, deposit: int, why: str) -> Channel:
        """Open a channel with `deposit` to the target, within `max_deposit` (else Skip)."""
        assert self.payer is not None and self.ledger is not None
        committed = sum(c.deposit for c in self.opened)
        if committed + deposit > self.max_deposit:
            held = f" (the channels opened already hold {_tokens(committed)})" if committed else ""
            raise Skip(
                f"{why} need a deposit of {_tokens(deposit)}, more than --max-deposit "
                f"{_tokens(self.max_deposit)} allows{held}: raise it to run them (a target may "
                "redeem every voucher it gets, so they can cost up to the deposit)"
            )
        led = self.ledger
        payer_account = account_for(self.payer, led.ledger_id)
        balance = await led.balance(payer_account)
        if balance < deposit:
            raise Skip(
                f"the payer's balance {balance} is below the deposit {why} need ({deposit} yocto)"
            )
        params = led.params
        challenge = min(max(params.min_challenge_ms, 60_000), params.max_challenge_ms)
        try:
            cid = await led.open_channel(self.payer, self.target_account(), deposit, challenge)
        except P2payError as exc:
            raise Skip(f"opening a channel on the ledger failed: {exc}") from None
        price = max(service.price, 1)
        ch = Channel(
            id=cid, deposit=deposit, service=service, price=price, body=BODY[: service.max_body]
        )
        self.opened.append(ch)
        self.notes.append(
            f"opened channel {cid.hex()} to the target with a deposit of {_tokens(deposit)} "
            f"for {why}, service {service.name!r} at {service.price} yocto: the target may "
            "redeem every voucher it gets, so this can cost up to the deposit"
        )
        return ch

    def target_account(self) -> bytes:
        return self.need_hello().account

    async def _open_channel(self) -> Channel:
        hello, service = self._payer_service()
        price = max(service.price, 1)
        deposit = price * requests_needed(hello)
        return await self._open(service, deposit, "the paid cases")

    async def over_deposit_channel(self) -> Channel:
        """A channel of its own for ``paid.over-deposit`` (module docstring)."""
        _, service = self._payer_service()
        return await self._open(
            service, OVER_DEPOSIT_CHANNEL, "the case paid.over-deposit (a channel of its own)"
        )

    async def close_channel(self) -> None:
        """Start the close of every channel the run opened."""
        if self.ledger is None or self.payer is None:
            return
        for ch in self.opened:
            try:
                await self.ledger.start_close(self.payer, ch.id)
                self.notes.append(
                    f"started the close of channel {ch.id.hex()}: its unspent deposit returns "
                    "to the payer after the challenge period (p2pay channel close ID --wait)"
                )
            except P2payError as exc:
                self.notes.append(f"could not start the close of channel {ch.id.hex()}: {exc}")

    def request(
        self,
        ch: Channel,
        *,
        n: int | None = None,
        paid: int | None = None,
        price: int | None = None,
        service: str | None = None,
        body: bytes | None = None,
        deadline: int | None = None,
        key: Keypair | None = None,
        ledger: bytes | None = None,
        channel: bytes | None = None,
        body_hash: bytes | None = None,
        over_deposit: bool = False,
    ) -> Request:
        """A request on `ch`, by default the next one a payer would send (§13.1).

        Raises:
            Skip: its ``paid`` would exceed the deposit (only ``paid.over-deposit`` signs
                that, with `over_deposit`): the target could redeem the whole deposit.
        """
        assert self.ledger_id is not None and self.payer is not None
        price = ch.price if price is None else price
        body = ch.body if body is None else body
        hello = self.need_hello()
        if deadline is None:
            ahead = 30_000
            if hello.deadline_horizon is not None:
                ahead = min(ahead, hello.deadline_horizon // 2)
            deadline = now_ms() + max(ahead, 1)
        unsigned = Request(
            ledger=self.ledger_id if ledger is None else ledger,
            channel=ch.id if channel is None else channel,
            n=ch.n + 1 if n is None else n,
            paid=ch.paid + price if paid is None else paid,
            price=price,
            service=ch.service.name if service is None else service,
            body_hash=blake2b256(body) if body_hash is None else body_hash,
            deadline=deadline,
            body=body,
        )
        if unsigned.paid > ch.deposit and not over_deposit:
            raise Skip(
                f"the channel's deposit {ch.deposit} is used up: the next request would sign "
                f"paid {unsigned.paid} (the target answered more requests than planned)"
            )
        signer = self.payer if key is None else key
        return unsigned.with_signature(sign_message(signer, unsigned))

    def take(self, ch: Channel, request: Request, response: Response) -> None:
        """A signed answer consumed `request`'s n and slice (§13.2): follow it."""
        ch.n = max(ch.n, request.n)
        ch.paid = max(ch.paid, request.paid)
        ch.spent = response.spent


def requests_needed(hello: TargetHello) -> int:
    """How many requests at the service's price the paid cases on the main channel may
    sign: twice the window they fill (``paid.pipelining``, ``paid.overloaded``), plus the
    single requests of the other cases, with room to spare."""
    window = min(hello.max_in_flight, 256)
    return 2 * window + 64


def cost_note(max_deposit: int) -> str:
    """What the paid cases may cost (said before they run, and in the report)."""
    return (
        f"the paid cases open channels to the target holding at most {_tokens(max_deposit)} "
        "in all (--max-deposit): a target may redeem every voucher it gets, so they can cost "
        "up to that"
    )


def _tokens(amount: int) -> str:
    return f"{amount} yocto ({format_tokens(amount)} token)"


# ---------------------------------------------------------------------------
# checks shared by the cases


def expect_refusal(
    got: Got,
    sent: str,
    code: ErrorCode,
    *,
    channel: bytes = b"",
    n: int = 0,
    either_place: bool = False,
) -> Refusal:
    """`got` must be an unsigned refusal `code` naming (channel, n) (or, with
    `either_place`, the empty channel and n 0 instead)."""
    where = f"channel {channel.hex()[:12] or 'empty'}, n {n}"
    expected = f"an unsigned refusal {code.value} ({where})"
    frame = got.frame
    if not isinstance(frame, Refusal) or frame.code is not code:
        raise Fail(sent, expected, got.describe())
    places = [(channel, n)] + ([(b"", 0)] if either_place else [])
    if (frame.channel, frame.n) not in places:
        raise Fail(sent, expected, got.describe())
    return frame


def expect_response(
    t: Tester,
    got: Got,
    sent: str,
    request: Request,
    status: str,
    *,
    price: int | None = None,
    spent: int | None = None,
) -> Response:
    """`got` must be the target's signed response to `request` with `status` (§11, §14.3)."""
    expected = f"a signed response {status} to n {request.n}"
    if price is not None:
        expected += f", price {price}"
    if spent is not None:
        expected += f", spent {spent}"
    frame = got.frame
    if not isinstance(frame, Response):
        raise Fail(sent, expected, got.describe())
    hello = t.need_hello()
    problems = []
    if frame.status != status:
        problems.append(f"status {frame.status}")
    if (frame.ledger, frame.channel, frame.n) != (request.ledger, request.channel, request.n):
        problems.append("another (ledger, channel, n)")
    if frame.request_hash != request.hash:
        problems.append("request hash is not our request's")
    if not frame.verify(hello.account):
        problems.append("not signed by the target's account")
    if not frame.body_matches():
        problems.append("body does not match body_hash")
    if frame.price > request.price:
        problems.append(f"price {frame.price} above the request's {request.price}")
    if price is not None and frame.price != price:
        problems.append(f"price {frame.price}")
    if spent is not None and frame.spent != spent:
        problems.append(f"spent {frame.spent}")
    if problems:
        raise Fail(sent, expected, f"{got.describe()}: " + "; ".join(problems))
    return frame


def details_of(response: Response) -> dict[str, Any]:
    return response.refusal_info()[1]


async def stream_kept(t: Tester, probe: Probe, sent: str) -> None:
    """After a frame the target must ignore: no answer, and the stream still serves (a
    request on an unknown channel gets its UNKNOWN_CHANNEL refusal next)."""
    quiet = await probe.next(min(1.0, t.timeout / 2))
    if quiet.kind != "silent":
        raise Fail(
            sent, "no answer: it is ignored (§12, D3), and the stream kept", quiet.describe()
        )
    ping = unknown_channel_request(t)
    await probe.send(ping.to_frame())
    got = await probe.next()
    expect_refusal(
        got,
        sent + ", then a request on an unknown channel",
        ErrorCode.UNKNOWN_CHANNEL,
        channel=ping.channel,
        n=ping.n,
    )


def unknown_channel_request(t: Tester, *, ledger: bytes | None = None) -> Request:
    t.need_hello_run()
    assert t.ledger_id is not None
    return Request.create(
        t.transport_key,
        ledger=t.ledger_id if ledger is None else ledger,
        channel=os.urandom(32),
        n=1,
        paid=1,
        price=1,
        service="p2pay-conformance",
        body=b"",
        deadline=now_ms() + 30_000,
    )


async def expect_refusal_then_end(
    probe: Probe, sent: str, code: ErrorCode, *, details: dict[str, Any] | None = None
) -> str:
    """The hello / framing refusals: unsigned `code` (channel empty, n 0), then the
    stream ends, with no hello or anything else from the target."""
    got = await probe.next()
    refusal = expect_refusal(got, sent, code)
    if details is not None:
        wrong = {k: refusal.details.get(k) for k in details if refusal.details.get(k) != details[k]}
        if wrong:
            raise Fail(
                sent,
                f"{code.value} with details {details}",
                f"{got.describe()}",
            )
    problem = await probe.expect_end()
    if problem is not None:
        raise Fail(sent, f"{code.value}, then the stream ends (reset)", problem)
    return f"{code.value} (channel empty, n 0), then the stream ended"


# ---------------------------------------------------------------------------
# §9 hello


async def hello_waits(t: Tester) -> str:
    """§9 rule 1: the peer that accepted the stream answers; it waits for our hello."""
    t.need_hello_run()
    d = t.discovery
    assert d is not None
    if d.early is not None:
        raise Fail(
            "nothing, for a moment after opening the stream",
            "nothing: the opener sends its hello first",
            d.early.describe(),
        )
    return "nothing came before our hello"


async def hello_exchange(t: Tester) -> str:
    if t.ledger_id is None:
        t.need_hello_run()  # skips, saying why
    d = t.discovery
    assert d is not None
    sent = "our hello" + (" (pre-D1 keys)" if d.legacy else "")
    if d.hello is None:
        raise Fail(
            sent if not d.unreachable else "a new stream",
            "its hello: decodes (§6-§9), version 2, our ledger, signed by the stream's PeerID, "
            "account bound to it",
            d.problem,
        )
    h = d.hello
    return (
        f"its hello decodes and checks: {len(h.services)} services, max_in_flight "
        f"{h.max_in_flight}, max_frame {h.max_frame}"
    )


async def hello_spec_keys(t: Tester) -> str:
    t.need_hello_run()
    d = t.discovery
    assert d is not None
    if d.hello is None and not d.legacy:
        raise Skip(f"no hello exchange with the target ({d.problem})")
    if d.legacy:
        refused = d.spec_refused.describe() if d.spec_refused is not None else "?"
        raise Fail(
            f"a hello with the keys of §9 ({', '.join(sorted(HELLO_KEYS - {'domain'}))})",
            "the target's hello",
            f"{refused} (it took the same hello without deadline_horizon)",
        )
    return "it took a hello with the keys of §9 (D1)"


async def hello_deadline_horizon(t: Tester) -> str:
    hello = t.need_hello()
    if hello.keys == LEGACY_HELLO_KEYS:
        raise Fail(
            "our hello",
            "its hello carries deadline_horizon (uint, ms, >= 1; §9, D1)",
            f"a hello with keys {sorted(hello.keys)}",
        )
    return f"deadline_horizon {hello.deadline_horizon} ms"


async def _bad_hello(
    t: Tester, sent: str, frame: bytes, code: ErrorCode, details: dict[str, Any] | None = None
) -> str:
    t.need_hello_run()
    async with t.stream() as probe:
        await probe.send(frame)
        return await expect_refusal_then_end(probe, sent, code, details=details)


async def hello_version_mismatch(t: Tester) -> str:
    frame = t.our_hello(t.transport_key, version=PROTOCOL_VERSION + 1)
    return await _bad_hello(
        t,
        f"a hello with version {PROTOCOL_VERSION + 1}",
        frame,
        ErrorCode.VERSION_MISMATCH,
        {"version": PROTOCOL_VERSION},
    )


async def hello_wrong_ledger(t: Tester) -> str:
    t.need_hello_run()
    frame = build_hello(
        t.transport_key, OTHER_LEDGER, legacy=t.discovery is not None and t.discovery.legacy
    )
    return await _bad_hello(t, "a hello naming another ledger", frame, ErrorCode.WRONG_LEDGER)


async def hello_bad_signature(t: Tester) -> str:
    frame = t.our_hello(t.transport_key, sign_with=Keypair.from_seed(os.urandom(32)))
    return await _bad_hello(
        t, "a hello signed by another key than the stream's", frame, ErrorCode.INVALID_SIGNATURE
    )


async def hello_wrong_account(t: Tester) -> str:
    t.need_hello_run()
    assert t.ledger_id is not None
    if scheme_for(t.ledger_id) is not Scheme.ED25519:
        raise Skip("an EVM ledger: the account is bound by account_proof, not by the PeerID")
    other = Keypair.from_seed(os.urandom(32))
    frame = t.our_hello(t.transport_key, account=other.public)
    return await _bad_hello(
        t, "a hello whose account is another key", frame, ErrorCode.UNAUTHORIZED
    )


async def hello_check_order(t: Tester) -> str:
    t.need_hello_run()
    frame = build_hello(
        t.transport_key,
        OTHER_LEDGER,
        legacy=t.discovery is not None and t.discovery.legacy,
        version=PROTOCOL_VERSION + 1,
        sign_with=Keypair.from_seed(os.urandom(32)),
    )
    return await _bad_hello(
        t,
        "a hello with another version, another ledger and a bad signature",
        frame,
        ErrorCode.VERSION_MISMATCH,
    )


async def hello_request_first(t: Tester) -> str:
    t.need_hello_run()
    request = unknown_channel_request(t)
    async with t.stream() as probe:
        await probe.send(request.to_frame())
        sent = "a request before any hello"
        got = await probe.next()
        expect_refusal(got, sent, ErrorCode.MALFORMED)
        problem = await probe.expect_end()
        if problem is not None:
            raise Fail(sent, "MALFORMED, then the stream ends", problem)
    return "MALFORMED (channel empty, n 0), then the stream ended"


async def hello_second(t: Tester) -> str:
    async with t.session() as probe:
        await probe.send(t.our_hello(t.transport_key))
        return await expect_refusal_then_end(probe, "a second hello", ErrorCode.MALFORMED)


# ---------------------------------------------------------------------------
# §5.2 framing, §6 canonical CBOR, §7 frames, §8 domain


async def _framing(t: Tester, sent: str, raw: bytes, code: ErrorCode, *, end: bool) -> str:
    async with t.session() as probe:
        await probe.send_raw(raw)
        if end:
            return await expect_refusal_then_end(probe, sent, code)
        got = await probe.next()
        expect_refusal(got, sent, code)
        return f"{code.value} (channel empty, n 0)"


async def frame_non_minimal_prefix(t: Tester) -> str:
    return await _framing(
        t, "length prefix 0x81 0x00 (1, not minimal)", b"\x81\x00\x00", ErrorCode.MALFORMED,
        end=True,
    )  # fmt: skip


async def frame_long_prefix(t: Tester) -> str:
    return await _framing(
        t, "a 10-byte length prefix", b"\x80" * 9 + b"\x01" + b"\x00", ErrorCode.MALFORMED,
        end=True,
    )  # fmt: skip


async def frame_zero_length(t: Tester) -> str:
    return await _framing(t, "a frame of length 0", b"\x00", ErrorCode.MALFORMED, end=False)


async def frame_too_large(t: Tester) -> str:
    hello = t.need_hello()
    size = hello.max_frame + 1
    if size >= 1 << 63:
        raise Skip(
            f"its max_frame {hello.max_frame} is at least 2**63 - 1: a length prefix carries "
            "at most 2**63 - 1 (§5.2), so no frame is too large for it"
        )
    sent = f"a length prefix announcing {size} bytes (its max_frame + 1), and no body"
    async with t.session() as probe:
        await probe.send_raw(encode_uvarint(size))
        got = await probe.next()
        refusal = expect_refusal(got, sent, ErrorCode.FRAME_TOO_LARGE)
        if refusal.details.get("max_frame") != hello.max_frame:
            raise Fail(
                sent,
                f"FRAME_TOO_LARGE with details {{'max_frame': {hello.max_frame}}} (D2)",
                got.describe(),
            )
        problem = await probe.expect_end()
        if problem is not None:
            raise Fail(sent, "FRAME_TOO_LARGE, then the stream ends", problem)
    return "FRAME_TOO_LARGE with max_frame before the body was sent, then the stream ended"


async def _bad_frame(t: Tester, sent: str, payload: bytes, code: ErrorCode) -> str:
    async with t.session() as probe:
        await probe.send(payload)
        got = await probe.next()
        expect_refusal(got, sent, code, either_place=True)
        return f"{code.value}"


def _request_frame(t: Tester) -> bytes:
    return unknown_channel_request(t).to_frame()


async def frame_not_canonical(t: Tester) -> str:
    good = _request_frame(t)
    assert good[0] == 0x84
    bad = b"\x98\x04" + good[1:]  # the array's length in a 1-byte argument: not shortest
    return await _bad_frame(
        t, "a request frame whose array length is not in shortest form", bad, ErrorCode.MALFORMED
    )


async def frame_trailing_bytes(t: Tester) -> str:
    return await _bad_frame(
        t, "a request frame followed by one byte", _request_frame(t) + b"\x00",
        ErrorCode.MALFORMED,
    )  # fmt: skip


async def frame_unknown_kind(t: Tester) -> str:
    return await _bad_frame(
        t, "a frame of kind 9", codec.encode([9, b"", b"", b""]), ErrorCode.MALFORMED
    )


def _refusal_frame(depth: int) -> bytes:
    """A refusal frame nested `depth` levels (the frame array is level 1, its details
    map level 2)."""
    details = {"x": nested(depth - 2)} if depth > 2 else {}
    return codec.encode(
        [3, os.urandom(32), 1, "MALFORMED", "p2pay conformance", details], max_depth=depth + 1
    )


async def frame_nesting_over(t: Tester) -> str:
    return await _bad_frame(
        t, "a refusal frame nested 9 levels", _refusal_frame(9), ErrorCode.MALFORMED
    )


async def frame_nesting_limit(t: Tester) -> str:
    sent = "a refusal frame nested 8 levels (the limit)"
    async with t.session() as probe:
        await probe.send(_refusal_frame(8))
        await stream_kept(t, probe, sent)
    return "accepted as a frame (ignored as a refusal; the stream kept)"


async def _sized_frame(t: Tester, size: int, what: str) -> str:
    """A request on an unknown channel padded to exactly `size` bytes must be read and
    answered as a frame (UNKNOWN_CHANNEL), not refused for its size."""
    t.need_hello()
    assert t.ledger_id is not None
    channel = os.urandom(32)
    body_len = max(0, size - 400)
    for _ in range(8):  # the body's length header grows with it: settle in a few steps
        frame = Request.create(
            t.transport_key,
            ledger=t.ledger_id,
            channel=channel,
            n=1,
            paid=1,
            price=1,
            service="p2pay-conformance",
            body=bytes(body_len),
            deadline=now_ms() + 30_000,
        ).to_frame()
        if len(frame) == size:
            break
        body_len += size - len(frame)
    if len(frame) != size:  # pragma: no cover - the loop settles in two steps
        raise Skip(f"could not build a frame of exactly {size} bytes")
    sent = f"a request frame of exactly {size} bytes ({what}) on an unknown channel"
    async with t.session() as probe:
        await probe.send(frame)
        got = await probe.next(t.timeout * 2)
        expect_refusal(got, sent, ErrorCode.UNKNOWN_CHANNEL, channel=channel, n=1)
    return f"read and answered (UNKNOWN_CHANNEL): {size} bytes"


async def frame_at_limit(t: Tester) -> str:
    hello = t.need_hello()
    if hello.max_frame > MAX_SENT_BODY:
        raise Skip(f"its max_frame {hello.max_frame} is more than this tester sends (8 MiB)")
    return await _sized_frame(t, hello.max_frame, "its max_frame")


async def frame_4096(t: Tester) -> str:
    return await _sized_frame(t, 4096, "every peer accepts 4096")


def _raw_request(
    t: Tester, raw: dict[str, bytes], *, reverse: bool = False, duplicate: str = ""
) -> bytes:
    """A request frame whose signed map is written pair by pair: `raw` replaces the
    encoding of some values; `reverse` puts the keys out of order; `duplicate` repeats a
    key. Signed by the tester over the bytes as written (§8)."""
    assert t.ledger_id is not None
    values: dict[str, Any] = {
        "domain": DOMAIN_REQUEST,
        "ledger": t.ledger_id,
        "channel": os.urandom(32),
        "n": 1,
        "paid": 1,
        "price": 1,
        "service": "p2pay-conformance",
        "body_hash": blake2b256(b""),
        "deadline": now_ms() + 30_000,
    }
    pairs = sorted((codec.encode(k), raw.get(k, codec.encode(v))) for k, v in values.items())
    if reverse:
        pairs.reverse()
    if duplicate:
        pairs.append((codec.encode(duplicate), codec.encode(values[duplicate])))
    signed = bytes([0xA0 + len(pairs)]) + b"".join(k + v for k, v in pairs)
    return codec.encode([1, signed, t.transport_key.sign(signed), b""])


async def _cbor_case(t: Tester, sent: str, frame: bytes) -> str:
    return await _bad_frame(t, sent, frame, ErrorCode.MALFORMED)


async def cbor_non_shortest(t: Tester) -> str:
    t.need_hello()
    return await _cbor_case(
        t, "a request whose n is 1 written in two bytes (0x18 0x01)",
        _raw_request(t, {"n": b"\x18\x01"}),
    )  # fmt: skip


async def cbor_small_bignum(t: Tester) -> str:
    t.need_hello()
    return await _cbor_case(
        t, "a request whose paid is 1 written as a bignum (tag 2)",
        _raw_request(t, {"paid": b"\xc2\x41\x01"}),
    )  # fmt: skip


async def cbor_unsorted(t: Tester) -> str:
    t.need_hello()
    return await _cbor_case(
        t, "a request whose signed map has its keys out of order", _raw_request(t, {}, reverse=True)
    )


async def cbor_duplicate(t: Tester) -> str:
    t.need_hello()
    return await _cbor_case(
        t, "a request whose signed map has the key n twice", _raw_request(t, {}, duplicate="n")
    )


async def cbor_indefinite(t: Tester) -> str:
    t.need_hello()
    digest = blake2b256(b"")
    return await _cbor_case(
        t, "a request whose body_hash is an indefinite-length byte string",
        _raw_request(t, {"body_hash": b"\x5f\x58\x20" + digest + b"\xff"}),
    )  # fmt: skip


async def cbor_float(t: Tester) -> str:
    t.need_hello()
    return await _cbor_case(
        t, "a request whose deadline is a float",
        _raw_request(t, {"deadline": b"\xfb" + struct.pack(">d", float(now_ms() + 30_000))}),
    )  # fmt: skip


async def cbor_bad_utf8(t: Tester) -> str:
    t.need_hello()
    return await _cbor_case(
        t, "a request whose service name is not UTF-8",
        _raw_request(t, {"service": b"\x62\xc3\x28"}),
    )  # fmt: skip


async def frame_signed_nesting(t: Tester) -> str:
    t.need_hello()
    assert t.ledger_id is not None
    signed = codec.encode(
        {
            "domain": DOMAIN_REQUEST,
            "ledger": t.ledger_id,
            "channel": os.urandom(32),
            "n": 1,
            "paid": 1,
            "price": 1,
            "service": nested(4),  # the map is level 1: 5 levels
            "body_hash": blake2b256(b""),
            "deadline": now_ms() + 30_000,
        }
    )
    frame = codec.encode([1, signed, t.transport_key.sign(signed), b""])
    return await _bad_frame(
        t, "a request whose signed map is nested 5 levels", frame, ErrorCode.MALFORMED
    )


async def request_wrong_domain(t: Tester) -> str:
    t.need_hello()
    assert t.ledger_id is not None
    request = unknown_channel_request(t)
    response = Response.create(
        t.transport_key, request=request, status="OK", price=0, spent=0, body=b""
    )
    frame = codec.encode([1, response.signing_bytes, response.signature, b""])
    sent = "a request frame carrying response signed bytes"
    async with t.session() as probe:
        await probe.send(frame)
        got = await probe.next()
        expect_refusal(
            got, sent, ErrorCode.WRONG_DOMAIN, channel=request.channel, n=1, either_place=True
        )
    return "WRONG_DOMAIN"


async def request_missing_key(t: Tester) -> str:
    t.need_hello()
    assert t.ledger_id is not None
    fields: Any = codec.decode(unknown_channel_request(t).signing_bytes)
    assert isinstance(fields, dict)
    del fields["deadline"]
    signed = codec.encode(fields)
    frame = codec.encode([1, signed, t.transport_key.sign(signed), b""])
    return await _bad_frame(
        t, "a request whose signed map lacks deadline", frame, ErrorCode.MALFORMED
    )


async def request_unknown_channel(t: Tester) -> str:
    request = unknown_channel_request(t)
    sent = "a request on a channel the target does not know"
    async with t.session() as probe:
        await probe.send(request.to_frame())
        got = await probe.next()
        expect_refusal(got, sent, ErrorCode.UNKNOWN_CHANNEL, channel=request.channel, n=1)
    return "UNKNOWN_CHANNEL naming (channel, n)"


async def request_wrong_ledger(t: Tester) -> str:
    t.need_hello()
    request = unknown_channel_request(t, ledger=OTHER_LEDGER)
    sent = "a request naming another ledger (on a channel the target does not know)"
    async with t.session() as probe:
        await probe.send(request.to_frame())
        got = await probe.next()
        expect_refusal(got, sent, ErrorCode.WRONG_LEDGER, channel=request.channel, n=1)
    return "WRONG_LEDGER (check 1 before check 2)"


# ---------------------------------------------------------------------------
# §12 / D3: responses and refusals sent to the accepting side


async def response_ignored(t: Tester) -> str:
    request = unknown_channel_request(t)
    response = Response.create(
        t.transport_key, request=request, status="OK", price=0, spent=0, body=b""
    )
    sent = "a response frame"
    async with t.session() as probe:
        await probe.send(response.to_frame())
        await stream_kept(t, probe, sent)
    return "no answer; the stream kept serving"


async def refusal_ignored(t: Tester) -> str:
    t.need_hello()
    refusal = Refusal(channel=os.urandom(32), n=1, code=ErrorCode.MALFORMED, message="conformance")
    sent = "a refusal frame naming an unknown (channel, n)"
    async with t.session() as probe:
        await probe.send(refusal.to_frame())
        await stream_kept(t, probe, sent)
    return "no answer; the stream kept serving"


# ---------------------------------------------------------------------------
# §13-§15 paid calls


@asynccontextmanager
async def paid(t: Tester) -> AsyncIterator[tuple[Channel, Probe]]:
    ch = await t.need_channel()
    async with t.session(payer=True) as probe:
        yield ch, probe


async def _call(t: Tester, ch: Channel, probe: Probe, sent: str) -> tuple[Request, Got, Response]:
    request = t.request(ch)
    await probe.send(request.to_frame())
    got = await probe.next()
    response = expect_response(
        t, got, sent, request, "OK", price=ch.service.price, spent=ch.spent + ch.service.price
    )
    t.take(ch, request, response)
    return request, got, response


async def paid_bad_signature(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        request = t.request(ch, key=Keypair.from_seed(os.urandom(32)))
        sent = f"request n {request.n} signed by another key than the payer's"
        await probe.send(request.to_frame())
        got = await probe.next()
        expect_refusal(got, sent, ErrorCode.INVALID_SIGNATURE, channel=ch.id, n=request.n)
    return "INVALID_SIGNATURE, unsigned"


async def paid_wrong_ledger(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        request = t.request(ch, ledger=OTHER_LEDGER)
        sent = f"request n {request.n} on our channel naming another ledger"
        await probe.send(request.to_frame())
        got = await probe.next()
        expect_refusal(got, sent, ErrorCode.WRONG_LEDGER, channel=ch.id, n=request.n)
    return "WRONG_LEDGER, unsigned"


async def paid_unauthorized(t: Tester) -> str:
    ch = await t.need_channel()
    request = t.request(ch)
    sent = f"the payer's request n {request.n}, on a stream from another peer"
    async with t.session() as probe:  # the tester's own key, not the payer's
        await probe.send(request.to_frame())
        got = await probe.next()
        expect_refusal(got, sent, ErrorCode.UNAUTHORIZED, channel=ch.id, n=request.n)
    return "UNAUTHORIZED, unsigned"


async def paid_call(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        before = ch.spent
        _, _, response = await _call(t, ch, probe, "a paid request at the service's price")
    return f"OK, signed, price {response.price}, spent {before} -> {response.spent}"


async def paid_resend(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        request, first, _ = await _call(t, ch, probe, "a paid request")
        sent = f"the same request n {request.n} again"
        await probe.send(request.to_frame())
        again = await probe.next()
        if again.raw != first.raw or again.kind != "frame":
            raise Fail(sent, "the same response, byte for byte (§13.5)", again.describe())
    return "the same signed response, byte for byte"


def _check_resync(
    t: Tester, ch: Channel, refusal: Refusal, sent: str, expected: str, got: str
) -> None:
    """§15 resync details: last_n, spent, paid_max = the voucher's paid, a voucher we
    signed on our channel (D5: spent is informative)."""
    d = refusal.details
    problems = []
    if d.get("last_n") != ch.n:
        problems.append(f"last_n {d.get('last_n')!r}, ours is {ch.n}")
    if type(d.get("spent")) is not int:
        problems.append("no spent")
    voucher_raw = d.get("voucher")
    voucher_paid = 0
    if voucher_raw is not None:
        try:
            voucher = decode_frame(voucher_raw) if isinstance(voucher_raw, bytes) else None
        except P2payError:
            voucher = None
        if not isinstance(voucher, Request):
            problems.append("voucher is not a request frame")
        else:
            assert t.payer is not None
            if voucher.channel != ch.id or not voucher.verify(account_for(t.payer, voucher.ledger)):
                problems.append("voucher is not one we signed on this channel")
            voucher_paid = voucher.paid
            if voucher.paid > ch.paid:
                problems.append(f"voucher paid {voucher.paid} above any we signed")
    elif ch.paid > 0:
        problems.append("no voucher although we signed one")
    if d.get("paid_max") != voucher_paid:
        problems.append(f"paid_max {d.get('paid_max')!r} is not the voucher's paid {voucher_paid}")
    if problems:
        raise Fail(sent, expected, f"{got}: " + "; ".join(problems))


async def paid_replay(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        if ch.n == 0:
            await _call(t, ch, probe, "a paid request")
        # not the request the target answered as n (that one signed paid <= ch.paid)
        request = t.request(ch, n=ch.n, paid=ch.paid + ch.price)
        sent = f"a new request numbered n {request.n} (not above last_n)"
        await probe.send(request.to_frame())
        got = await probe.next()
        expected = "an unsigned REPLAY with details last_n, spent, paid_max, voucher (§15)"
        refusal = expect_refusal(got, sent, ErrorCode.REPLAY, channel=ch.id, n=request.n)
        _check_resync(t, ch, refusal, sent, expected, got.describe())
    return "REPLAY, unsigned, with resync details that check against our signature"


async def paid_slice_below(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        if ch.paid < ch.price:
            await _call(t, ch, probe, "a paid request")
        request = t.request(ch, paid=ch.paid)
        sent = (
            f"request n {request.n} with paid {request.paid}, price {request.price}: its slice "
            f"starts below paid_max {ch.paid}"
        )
        await probe.send(request.to_frame())
        got = await probe.next()
        expected = "an unsigned PAYMENT_REQUIRED with details price and the resync details"
        refusal = expect_refusal(got, sent, ErrorCode.PAYMENT_REQUIRED, channel=ch.id, n=request.n)
        if refusal.details.get("price") != ch.service.price:
            raise Fail(sent, expected, f"{got.describe()}: price is not the service's")
        _check_resync(t, ch, refusal, sent, expected, got.describe())
    return "PAYMENT_REQUIRED, unsigned, with price and the resync details (n not consumed)"


async def paid_over_deposit(t: Tester) -> str:
    """Check 5'' needs a valid voucher above a deposit, which the target may redeem for
    that whole deposit: it is signed on a channel of its own holding 1 yocto (module
    docstring). Its slice is 1 yocto (``paid`` 2, ``price`` 1): check 5' passes, and
    check 5'' comes before the price check (12)."""
    t.need_hello()
    ch = await t.over_deposit_channel()
    async with t.session(payer=True) as probe:
        request = t.request(ch, paid=ch.deposit + 1, price=1, over_deposit=True)
        sent = (
            f"request n {request.n} with paid {request.paid} > the deposit {ch.deposit} (a "
            "channel of its own)"
        )
        await probe.send(request.to_frame())
        got = await probe.next()
        refusal = expect_refusal(
            got, sent, ErrorCode.INSUFFICIENT_DEPOSIT, channel=ch.id, n=request.n
        )
        d = refusal.details
        if d.get("deposit") != ch.deposit or "paid_max" not in d or "spent" not in d:
            raise Fail(
                sent,
                f"INSUFFICIENT_DEPOSIT with details deposit {ch.deposit}, paid_max, spent",
                got.describe(),
            )
    return "INSUFFICIENT_DEPOSIT, unsigned, with deposit, paid_max and spent"


async def _signed_refusal(
    t: Tester,
    ch: Channel,
    probe: Probe,
    request: Request,
    sent: str,
    status: ErrorCode,
    details: dict[str, Any] | None = None,
) -> Response:
    await probe.send(request.to_frame())
    got = await probe.next()
    response = expect_response(t, got, sent, request, status.value, price=0, spent=ch.spent)
    for key, value in (details or {}).items():
        if details_of(response).get(key) != value:
            raise Fail(
                sent,
                f"a signed {status.value} with details {details}",
                got.describe(),
            )
    t.take(ch, request, response)
    return response


async def paid_deadline_passed(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        request = t.request(ch, deadline=now_ms() - 10_000)
        await _signed_refusal(
            t, ch, probe, request, f"request n {request.n} whose deadline passed 10 s ago",
            ErrorCode.DEADLINE_EXCEEDED,
        )  # fmt: skip
    return "DEADLINE_EXCEEDED, signed, price 0, spent unchanged"


async def paid_unknown_service(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        hello = t.need_hello()
        name = "p2pay-conformance-no-such-service"
        while hello.cheapest() is not None and any(s.name == name for s in hello.services):
            name += "-"
        request = t.request(ch, service=name)
        await _signed_refusal(
            t, ch, probe, request, f"request n {request.n} for service {name!r}",
            ErrorCode.UNKNOWN_SERVICE,
        )  # fmt: skip
    return "UNKNOWN_SERVICE, signed, price 0"


async def paid_body_too_large(t: Tester) -> str:
    ch = await t.need_channel()
    hello = t.need_hello()
    size = ch.service.max_body + 1
    if size + 512 > hello.max_frame:
        raise Skip(f"a body of max_body + 1 ({size} bytes) would not fit its max_frame")
    if size > MAX_SENT_BODY:
        raise Skip(f"a body of max_body + 1 ({size} bytes) is more than this tester sends")
    async with paid(t) as (ch, probe):
        request = t.request(ch, body=b"x" * size)
        await _signed_refusal(
            t, ch, probe, request, f"request n {request.n} with a {size}-byte body",
            ErrorCode.BODY_TOO_LARGE, {"max_body": ch.service.max_body},
        )  # fmt: skip
    return "BODY_TOO_LARGE, signed, price 0, details max_body"


async def paid_body_hash(t: Tester) -> str:
    async with paid(t) as (ch, probe):
        request = t.request(ch, body_hash=blake2b256(b"another body"))
        await _signed_refusal(
            t, ch, probe, request, f"request n {request.n} whose body does not match body_hash",
            ErrorCode.MALFORMED,
        )  # fmt: skip
    return "MALFORMED, signed, price 0"


async def paid_price_below(t: Tester) -> str:
    ch = await t.need_channel()
    if ch.service.price == 0:
        raise Skip(f"service {ch.service.name!r} is free: no price below it")
    async with paid(t) as (ch, probe):
        request = t.request(ch, price=ch.service.price - 1)
        await _signed_refusal(
            t, ch, probe, request,
            f"request n {request.n} at price {request.price}, below the service's",
            ErrorCode.PAYMENT_REQUIRED, {"price": ch.service.price},
        )  # fmt: skip
    return "PAYMENT_REQUIRED, signed, price 0, details price"


async def paid_deadline_horizon(t: Tester) -> str:
    hello = t.need_hello()
    if hello.deadline_horizon is None:
        raise Skip("the target's hello has no deadline_horizon (D1)")
    ahead = hello.deadline_horizon + 120_000
    if now_ms() + ahead > MAX_U64:
        raise Skip(
            f"its deadline_horizon {hello.deadline_horizon} ms leaves no deadline beyond it "
            "(+ 2 min) below 2**64 ms"
        )
    async with paid(t) as (ch, probe):
        request = t.request(ch, deadline=now_ms() + ahead)
        await _signed_refusal(
            t, ch, probe, request,
            f"request n {request.n} with a deadline {ahead} ms ahead (its horizon + 2 min)",
            ErrorCode.DEADLINE_EXCEEDED,
        )  # fmt: skip
    return "DEADLINE_EXCEEDED, signed, price 0"


async def _collect(probe: Probe, count: int, sent: str) -> list[Got]:
    answers: list[Got] = []
    for _ in range(count):
        got = await probe.next()
        if got.kind != "frame":
            raise Fail(sent, f"{count} answers", f"{len(answers)} answers, then {got.describe()}")
        answers.append(got)
    return answers


async def paid_pipelining(t: Tester) -> str:
    hello = t.need_hello()
    async with paid(t) as (ch, probe):
        count = max(1, min(hello.max_in_flight, 16))
        requests = []
        for _ in range(count):
            request = t.request(ch)
            requests.append(request)
            ch.n, ch.paid = request.n, request.paid
        sent = f"{count} paid requests in one write (its max_in_flight is {hello.max_in_flight})"
        await probe.send_many([r.to_frame() for r in requests])
        answers = await _collect(probe, count, sent)
        by_n = {r.n: r for r in requests}
        spent = ch.spent
        seen: set[int] = set()
        for got in answers:
            frame = got.frame
            n = getattr(frame, "n", None)
            if not isinstance(frame, Response) or n not in by_n or n in seen:
                raise Fail(sent, "one signed response per request, matched by (channel, n)",
                           got.describe())  # fmt: skip
            seen.add(n)
            status = frame.status if frame.status == "OK" else ErrorCode.OVERLOADED.value
            price = ch.service.price if frame.status == "OK" else 0
            expect_response(t, got, sent, by_n[n], status, price=price, spent=spent + price)
            spent = frame.spent
        ch.spent = spent
    return f"{count} signed responses, matched by n, spent rising by the price along the stream"


async def paid_overloaded(t: Tester) -> str:
    hello = t.need_hello()
    if hello.max_in_flight > 256:
        raise Skip(f"max_in_flight {hello.max_in_flight} is too many requests to send at once")
    async with paid(t) as (ch, probe):
        count = hello.max_in_flight + 4
        requests = []
        for _ in range(count):
            request = t.request(ch)
            requests.append(request)
            ch.n, ch.paid = request.n, request.paid
        sent = f"{count} paid requests in one write, {hello.max_in_flight} allowed in flight"
        await probe.send_many([r.to_frame() for r in requests])
        answers = await _collect(probe, count, sent)
        unsigned = [g for g in answers if isinstance(g.frame, Refusal)]
        numbers = {r.n for r in requests}
        for got in unsigned:
            frame = got.frame
            assert isinstance(frame, Refusal)
            if frame.code is not ErrorCode.OVERLOADED or frame.channel != ch.id:
                expected = "signed responses, or unsigned OVERLOADED refusals naming (channel, n)"
                raise Fail(sent, expected, got.describe())
            if frame.n not in numbers:
                raise Fail(sent, "one answer per request, matched by (channel, n)", got.describe())
            numbers.discard(frame.n)
        signed_overloaded = [
            g
            for g in answers
            if isinstance(g.frame, Response) and g.frame.status == ErrorCode.OVERLOADED.value
        ]
        if signed_overloaded:
            raise Fail(
                sent,
                "requests beyond max_in_flight refused before admission: unsigned OVERLOADED "
                "(§13.2 check 0', D6)",
                f"{len(signed_overloaded)} signed OVERLOADED responses, e.g. "
                f"{signed_overloaded[0].describe()}",
            )
        if not unsigned:
            raise Skip(
                f"inconclusive: it answered all {count} requests without refusing one (its "
                "handler is faster than the requests arrive)"
            )
    return f"{len(unsigned)} unsigned OVERLOADED refusals beyond max_in_flight"


# ---------------------------------------------------------------------------
# the list and the runner


CASES: tuple[Case, ...] = (
    Case("hello.waits", "§9 r1", "the accepting side waits for the opener's hello", hello_waits),
    Case("hello.exchange", "§9 r1,r3", "its hello comes after ours and checks", hello_exchange),
    Case("hello.spec-keys", "§9 (D1)", "it takes a hello with the keys of §9", hello_spec_keys),
    Case("hello.deadline-horizon", "§9 (D1)", "its hello announces deadline_horizon",
         hello_deadline_horizon),
    Case("hello.version-mismatch", "§9 r3, §18", "VERSION_MISMATCH {version: 2}, then reset",
         hello_version_mismatch),
    Case("hello.wrong-ledger", "§9 r3", "WRONG_LEDGER, then reset", hello_wrong_ledger),
    Case("hello.bad-signature", "§9 r3", "INVALID_SIGNATURE, then reset", hello_bad_signature),
    Case("hello.wrong-account", "§9 r3", "UNAUTHORIZED, then reset", hello_wrong_account),
    Case("hello.check-order", "§9 r3", "the first failing check decides", hello_check_order),
    Case("hello.request-first", "§9 r2", "a request before the hello: MALFORMED, reset",
         hello_request_first),
    Case("hello.second", "§9 r1, D3", "a second hello: MALFORMED, reset", hello_second),
    Case("frame.non-minimal-prefix", "§5.2", "non-minimal prefix: MALFORMED, reset",
         frame_non_minimal_prefix),
    Case("frame.long-prefix", "§5.2", "prefix over 9 bytes: MALFORMED, reset", frame_long_prefix),
    Case("frame.zero-length", "§5.2", "an empty frame: MALFORMED", frame_zero_length),
    Case("frame.too-large", "§5.2, D2", "over max_frame: FRAME_TOO_LARGE unread, reset",
         frame_too_large),
    Case("frame.not-canonical", "§6", "non-canonical CBOR: MALFORMED", frame_not_canonical),
    Case("frame.trailing-bytes", "§6", "trailing bytes: MALFORMED", frame_trailing_bytes),
    Case("frame.unknown-kind", "§7", "an unknown kind: MALFORMED", frame_unknown_kind),
    Case("frame.nesting-over", "§6, D8", "a frame nested 9 levels: MALFORMED", frame_nesting_over),
    Case("frame.nesting-limit", "§6, D8, D3", "a frame nested 8 levels is a frame",
         frame_nesting_limit),
    Case("frame.signed-nesting", "§6, D8", "a signed map nested 5 levels: MALFORMED",
         frame_signed_nesting),
    Case("frame.at-limit", "§5.3", "a frame of its max_frame is read", frame_at_limit),
    Case("frame.4096", "§5.3", "a frame of 4096 bytes is read", frame_4096),
    Case("cbor.non-shortest", "§6", "a non-shortest integer: MALFORMED", cbor_non_shortest),
    Case("cbor.small-bignum", "§6", "a bignum that fits 64 bits: MALFORMED", cbor_small_bignum),
    Case("cbor.unsorted-keys", "§6", "map keys out of order: MALFORMED", cbor_unsorted),
    Case("cbor.duplicate-key", "§6", "a duplicate map key: MALFORMED", cbor_duplicate),
    Case("cbor.indefinite", "§6", "an indefinite length: MALFORMED", cbor_indefinite),
    Case("cbor.float", "§6", "a float: MALFORMED", cbor_float),
    Case("cbor.bad-utf8", "§6", "invalid UTF-8: MALFORMED", cbor_bad_utf8),
    Case("request.wrong-domain", "§8", "response bytes in a request: WRONG_DOMAIN",
         request_wrong_domain),
    Case("request.missing-key", "§8", "a signed map without a key: MALFORMED",
         request_missing_key),
    Case("request.unknown-channel", "§13.2 c2, §12", "UNKNOWN_CHANNEL, unsigned",
         request_unknown_channel),
    Case("request.wrong-ledger", "§13.2 c1", "WRONG_LEDGER before UNKNOWN_CHANNEL",
         request_wrong_ledger),
    Case("d3.response-ignored", "§12, D3", "a response is not answered; stream kept",
         response_ignored),
    Case("d3.refusal-ignored", "§12, D3", "a refusal is not answered; stream kept",
         refusal_ignored),
    Case("paid.bad-signature", "§13.2 c4", "INVALID_SIGNATURE, unsigned", paid_bad_signature,
         paid=True),
    Case("paid.wrong-ledger", "§13.2 c1", "WRONG_LEDGER, unsigned", paid_wrong_ledger, paid=True),
    Case("paid.unauthorized", "§13.2 c3", "UNAUTHORIZED, unsigned", paid_unauthorized, paid=True),
    Case("paid.call", "§11, §14.3", "signed OK, spent = previous spent + price", paid_call,
         paid=True),
    Case("paid.resend", "§13.5", "a re-sent request gets the same bytes", paid_resend, paid=True),
    Case("paid.replay", "§13.2 c5, §15", "REPLAY with resync details", paid_replay, paid=True),
    Case("paid.slice-below", "§13.2 c5', §15", "PAYMENT_REQUIRED, unsigned, resync details",
         paid_slice_below, paid=True),
    Case("paid.deadline-passed", "§13.2 c8", "DEADLINE_EXCEEDED, signed, price 0",
         paid_deadline_passed, paid=True),
    Case("paid.unknown-service", "§13.2 c9", "UNKNOWN_SERVICE, signed", paid_unknown_service,
         paid=True),
    Case("paid.body-too-large", "§13.2 c10", "BODY_TOO_LARGE, signed, max_body",
         paid_body_too_large, paid=True),
    Case("paid.body-hash", "§13.2 c11", "body_hash mismatch: MALFORMED, signed", paid_body_hash,
         paid=True),
    Case("paid.price-below", "§13.2 c12", "PAYMENT_REQUIRED, signed, details price",
         paid_price_below, paid=True),
    Case("paid.deadline-horizon", "§9 (D1), c8", "deadline beyond the horizon: refused, signed",
         paid_deadline_horizon, paid=True),
    Case("paid.pipelining", "§5.1, §13.3", "many in flight, matched by (channel, n)",
         paid_pipelining, paid=True),
    Case("paid.overloaded", "§13.2 c0', D6", "beyond max_in_flight: OVERLOADED, unsigned",
         paid_overloaded, paid=True),
    # last: the target keeps a voucher for the whole deposit of the case's own channel
    Case("paid.over-deposit", "§13.2 c5''",
         "INSUFFICIENT_DEPOSIT, unsigned (run last: on a 1-yocto channel of its own, whose "
         "whole deposit the target can then redeem)", paid_over_deposit, paid=True),
)  # fmt: skip


def select(patterns: Sequence[str]) -> list[Case]:
    """The cases whose id matches one of `patterns` (shell patterns; a plain prefix such as
    ``hello`` selects ``hello.*``); all of them without patterns."""
    if not patterns:
        return list(CASES)
    return [
        c
        for c in CASES
        if any(
            fnmatch.fnmatchcase(c.id, p) or c.id.startswith(p.rstrip(".") + ".") for p in patterns
        )
    ]


async def run_case(t: Tester, case: Case) -> CaseResult:
    started = time.monotonic()
    result = CaseResult(case.id, case.section, case.title, PASS, "")
    try:
        with trio.fail_after(min(t.timeout * 8 + 10, MAX_CASE_SECONDS)):
            result.reason = await case.run(t)
    except Fail as exc:
        result.status = FAIL
        result.sent, result.expected, result.got = exc.sent, exc.expected, exc.got
        result.reason = f"sent {exc.sent}; expected {exc.expected}; got {exc.got}"
    except Skip as exc:
        result.status = SKIP
        result.reason = str(exc)
    except trio.TooSlowError:
        result.status = FAIL
        result.reason = "the case did not finish in time (the target stalled)"
    except P2payError as exc:
        result.status = FAIL
        result.reason = f"{type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - started
    log.info("%s %s %s", result.status, case.id, result.reason)
    return result


async def _refuse_inbound(stream: Stream) -> None:
    await stream.reset()


async def run_conformance(
    target: str,
    *,
    ledger_id: bytes | None = None,
    payer: Keypair | None = None,
    ledger: Ledger | None = None,
    patterns: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    max_deposit: int = DEFAULT_MAX_DEPOSIT,
    close_channel: bool = True,
    on_result: Callable[[CaseResult], None] | None = None,
) -> Report:
    """Run the conformance cases against the implementation listening at `target`.

    Args:
        target: its multiaddr, ending in ``/p2p/<PeerID>``.
        ledger_id: its ledger id (default: `ledger`'s); without it only the cases that
            need no hello run.
        payer: a key with funds on `ledger` for the paid cases (else they SKIP).
        ledger: the target's ledger, where the paid cases' channel is opened.
        patterns: which cases (see `select`); all by default.
        timeout: seconds to wait for each answer, in (0, `MAX_TIMEOUT`].
        max_deposit: the most the paid cases may cost, in yocto: the sum of the deposits
            of the channels they open (a target may redeem every voucher it gets). The
            paid cases SKIP when the target's prices need more.
        close_channel: start the close of the paid cases' channels at the end.
        on_result: called with each result as soon as it is known.

    Returns:
        The `Report`.

    Raises:
        LocalProtocolError: `target` is not a multiaddr ending in /p2p/<PeerID>, or
            `timeout` or `max_deposit` is out of range.
    """
    split_p2p(target)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise LocalProtocolError(f"timeout {timeout!r}: in (0, {MAX_TIMEOUT:g}] seconds")
    if type(max_deposit) is not int or max_deposit < 0:
        raise LocalProtocolError(f"max_deposit {max_deposit!r}: a whole number of yocto >= 0")
    if ledger_id is None and ledger is not None:
        ledger_id = ledger.ledger_id
    cases = select(patterns)
    report = Report(target=target)
    tester_key = Keypair.from_seed(os.urandom(32))
    async with open_libp2p_transport(tester_key, _refuse_inbound) as transport:
        async with _payer_transport(payer, ledger) as payer_transport:
            t = Tester(
                target,
                transport,  # type: ignore[arg-type]
                tester_key,
                ledger_id=ledger_id,
                timeout=timeout,
                payer=payer if payer_transport is not None else None,
                payer_transport=payer_transport,
                ledger=ledger,
                max_deposit=max_deposit,
            )
            try:
                with trio.fail_after(min(timeout * 6 + 20, MAX_CASE_SECONDS)):
                    await t.discover()
            except trio.TooSlowError:
                assert t.discovery is not None
                t.discovery.problem = t.discovery.unreachable = "the first stream stalled"
            if payer_transport is not None and any(c.paid for c in cases):
                t.notes.append(cost_note(max_deposit))
            try:
                for case in cases:
                    result = await run_case(t, case)
                    report.results.append(result)
                    if on_result is not None:
                        on_result(result)
            finally:
                if close_channel:
                    with trio.CancelScope(shield=True), trio.move_on_after(30):
                        await t.close_channel()
            report.notes.extend(t.notes)
    return report


@asynccontextmanager
async def _payer_transport(
    payer: Keypair | None, ledger: Ledger | None
) -> AsyncIterator[Libp2pTransport | None]:
    if payer is None or ledger is None:
        yield None
        return
    async with open_libp2p_transport(payer, _refuse_inbound) as transport:
        yield transport  # type: ignore[misc]


__all__ = [
    "CASES",
    "Case",
    "CaseResult",
    "Report",
    "run_conformance",
    "select",
]
