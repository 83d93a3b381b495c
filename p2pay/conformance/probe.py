"""The tester's side of the wire: frames built from the spec, a bounded reader, raw bytes.

Theory of operation
-------------------
A conformance case must check the target, not this package, so what goes on the wire is
built here from the spec's rules (`specs/protocol.md`, `specs/wire.cddl`) with the
strict codec of `p2pay.core.codec`, and what comes back is checked here too:

* **Hellos** are built and parsed by this module, key by key (§9 as decided for issue 15,
  D1: ``version, ledger, services, stake, max_in_flight, max_frame, account,
  account_proof, deadline_horizon``). `build_hello` can also write the hello of the
  reference implementation before D1 (no ``deadline_horizon``), so that a target which
  refuses the spec's hello can still be tested on everything else (the case
  ``hello.spec-keys`` reports the refusal).
* **Requests, responses and refusals** are the core's `p2pay.core.messages` types, which
  implement the wire format; signatures are made with the keys the case chooses (a wrong
  one when the case wants a bad signature).
* `Probe` wraps one libp2p stream: `Probe.send` writes one frame (the transport adds the
  length prefix), `Probe.send_raw` writes bytes below the framing layer (bad prefixes),
  `Probe.next` waits a bounded time for the next frame and says what happened: a frame
  (decoded), the end of the stream, silence, bytes that are not a frame, or a flood.

Every wait is bounded by the caller's timeout: a silent target makes a case FAIL, never
hang. Every buffer the target can fill is bounded too (threat-model.md, Limits): the
probe's reader holds at most `MAX_QUEUED_FRAMES` frames and `MAX_QUEUED_BYTES` bytes
that the case has not read yet (one frame of any size is always taken), then stops
reading, so that the target's further frames wait in the muxer's bounded window
(backpressure). A conforming target only answers what the case sent, and the case reads
its answers; a target whose frames fill the buffer and stay unread for a whole timeout is
flooding: the reader resets the stream and the case's next read reports it (a FAIL).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pay.core import codec, evmsig
from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.errors import DecodeError, P2payError, RemoteProtocolError
from p2pay.core.identity import Keypair, verify
from p2pay.core.messages import (
    DOMAIN_HELLO,
    FRAME_MAX_DEPTH,
    MAX_LEDGER_ID_SIZE,
    MAX_SERVICE_NAME,
    MAX_SERVICES,
    MIN_FRAME_LIMIT,
    SIGNED_MAX_DEPTH,
    Refusal,
    Request,
    Response,
    decode_frame,
)
from p2pay.core.signing import Scheme, scheme_for, signer_for
from p2pay.net.base import StreamClosed
from p2pay.net.p2p import Libp2pStream

MAX_U64 = (1 << 64) - 1
PROTOCOL_VERSION = 2
HELLO_KEYS = frozenset(
    (
        "domain",
        "version",
        "ledger",
        "services",
        "stake",
        "max_in_flight",
        "max_frame",
        "account",
        "account_proof",
        "deadline_horizon",
    )
)
"""The hello's keys (protocol.md §9 with decision D1 of issue 15)."""
LEGACY_HELLO_KEYS = HELLO_KEYS - {"deadline_horizon"}
"""The hello of the reference implementation before D1."""
TESTER_MAX_FRAME = 1 << 20
TESTER_MAX_IN_FLIGHT = 64
TESTER_DEADLINE_HORIZON = 3_600_000
MAX_QUEUED_FRAMES = 64
"""Frames a probe holds that the case has not read yet (see the module docstring)."""
MAX_QUEUED_BYTES = 1 << 20
"""Bytes of such frames (a single frame of any size up to the transport's limit is taken)."""


def now_ms() -> int:
    """Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------
# hellos


def build_hello(
    key: Keypair,
    ledger: bytes,
    *,
    legacy: bool = False,
    version: int = PROTOCOL_VERSION,
    account: bytes | None = None,
    sign_with: Keypair | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A hello frame ``[0, signed, signature]`` from `key`, built key by key from §9.

    Args:
        key: the tester's PeerID key (it signs, unless `sign_with`).
        ledger: the ledger id the hello names.
        legacy: leave out ``deadline_horizon`` (the pre-D1 reference hello).
        version: the protocol version to announce.
        account: the account to announce (default: `key`'s on `ledger`).
        sign_with: sign with this key instead (a bad signature).
        extra: keys to add or replace in the signed map.
    """
    settler = signer_for(key, ledger)
    proof = b""
    if isinstance(settler, evmsig.EvmKey):
        proof = evmsig.binding_proof(settler, ledger, key.public)
    fields: dict[str, Any] = {
        "domain": DOMAIN_HELLO,
        "version": version,
        "ledger": ledger,
        "services": [],
        "stake": None,
        "max_in_flight": TESTER_MAX_IN_FLIGHT,
        "max_frame": TESTER_MAX_FRAME,
        "account": settler.account if account is None else account,
        "account_proof": proof,
        "deadline_horizon": TESTER_DEADLINE_HORIZON,
    }
    if legacy:
        del fields["deadline_horizon"]
    fields.update(extra or {})
    signed = codec.encode(fields)
    signature = (sign_with or key).sign(signed)
    return codec.encode([0, signed, signature])


@dataclass(frozen=True, slots=True)
class Service:
    """One service a target's hello offers."""

    name: str
    price: int
    max_body: int


@dataclass(slots=True)
class TargetHello:
    """A target's hello as parsed by `parse_hello` (fields the cases use)."""

    raw: bytes
    keys: frozenset[str]
    version: int
    ledger: bytes
    services: list[Service]
    max_in_flight: int
    max_frame: int
    account: bytes
    deadline_horizon: int | None
    signed: bytes = field(repr=False, default=b"")
    signature: bytes = field(repr=False, default=b"")

    def cheapest(self) -> Service | None:
        """The cheapest service (ties: the first), or None without services."""
        if not self.services:
            return None
        return min(self.services, key=lambda s: s.price)


class HelloError(P2payError):
    """A target's hello breaks a rule of §9 (the message says which)."""

    def __str__(self) -> str:
        return self.message


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise HelloError(message)


def _uint(value: object, maximum: int) -> bool:
    return type(value) is int and 0 <= value <= maximum


def parse_hello(raw: bytes) -> TargetHello:
    """Parse a hello frame strictly (§6-§9 with D1's key set, or the pre-D1 key set).

    It does not check the signature, the version or the ledger (the case does, to say
    which failed).

    Raises:
        HelloError: the frame is not a hello of either key set.
    """
    value: Any
    try:
        value = codec.decode(raw, max_depth=FRAME_MAX_DEPTH)
    except DecodeError as exc:
        raise HelloError(f"the frame is not canonical CBOR: {exc.message}") from None
    _need(
        isinstance(value, list)
        and len(value) == 3
        and value[0] == 0
        and type(value[0]) is int
        and isinstance(value[1], bytes)
        and isinstance(value[2], bytes),
        "a hello frame is [0, signed bytes, signature bytes]",
    )
    signed: bytes = value[1]
    signature: bytes = value[2]
    _need(len(signature) == 64, f"the hello signature is {len(signature)} bytes, not 64")
    fields: Any
    try:
        fields = codec.decode(signed, max_depth=SIGNED_MAX_DEPTH)
    except DecodeError as exc:
        raise HelloError(f"the signed map is not canonical CBOR: {exc.message}") from None
    _need(isinstance(fields, dict), "the signed part is not a map")
    _need(fields.get("domain") == DOMAIN_HELLO, f"domain tag is {fields.get('domain')!r}")
    keys = frozenset(str(k) for k in fields)
    _need(
        keys in (HELLO_KEYS, LEGACY_HELLO_KEYS),
        f"hello keys are {sorted(keys)}, expected {sorted(HELLO_KEYS)}",
    )
    _need(_uint(fields["version"], MAX_U64), "version is not a uint64")
    ledger = fields["ledger"]
    _need(
        isinstance(ledger, bytes) and 1 <= len(ledger) <= MAX_LEDGER_ID_SIZE,
        "ledger is not 1..64 bytes",
    )
    raw_services = fields["services"]
    _need(isinstance(raw_services, list), "services is not an array")
    _need(len(raw_services) <= MAX_SERVICES, f"more than {MAX_SERVICES} services")
    services = []
    for item in raw_services:
        _need(
            isinstance(item, dict) and set(item) == {"name", "price", "max_body"},
            "a service is {name, price, max_body}",
        )
        name = item["name"]
        _need(
            isinstance(name, str) and 1 <= len(name.encode("utf-8")) <= MAX_SERVICE_NAME,
            "a service name is 1..64 bytes of UTF-8",
        )
        _need(_uint(item["price"], MAX_YOCTO), f"service {name!r}: price is not an amount")
        _need(_uint(item["max_body"], MAX_U64), f"service {name!r}: max_body is not a uint64")
        services.append(Service(name, item["price"], item["max_body"]))
    _need(len({s.name for s in services}) == len(services), "service names are not unique")
    stake = fields["stake"]
    _need(
        stake is None
        or (
            isinstance(stake, dict)
            and set(stake) == {"amount", "penalty", "window"}
            and _uint(stake["amount"], MAX_YOCTO)
            and _uint(stake["penalty"], MAX_YOCTO)
            and _uint(stake["window"], MAX_U64)
        ),
        "stake is neither null nor {amount, penalty, window}",
    )
    mif = fields["max_in_flight"]
    _need(_uint(mif, MAX_U64) and mif >= 1, "max_in_flight is not a uint64 >= 1")
    max_frame = fields["max_frame"]
    _need(
        _uint(max_frame, MAX_U64) and max_frame >= MIN_FRAME_LIMIT,
        f"max_frame is not a uint64 >= {MIN_FRAME_LIMIT}",
    )
    account = fields["account"]
    _need(isinstance(account, bytes) and len(account) == 32, "account is not 32 bytes")
    proof = fields["account_proof"]
    _need(isinstance(proof, bytes), "account_proof is not a byte string")
    if scheme_for(ledger) is Scheme.EIP712:
        _need(len(proof) == evmsig.EVM_SIGNATURE_SIZE, "account_proof is not 65 bytes (EVM)")
        _need(
            evmsig.address_of_account(account) is not None,
            "account is not 12 zero bytes and a non-zero address (EVM)",
        )
    else:
        _need(proof == b"", "account_proof is not empty on an Ed25519 ledger")
    horizon = fields.get("deadline_horizon")
    if horizon is not None:
        _need(_uint(horizon, MAX_U64) and horizon >= 1, "deadline_horizon is not a uint64 >= 1")
    return TargetHello(
        raw=bytes(raw),
        keys=keys,
        version=fields["version"],
        ledger=ledger,
        services=services,
        max_in_flight=mif,
        max_frame=max_frame,
        account=account,
        deadline_horizon=horizon,
        signed=signed,
        signature=signature,
    )


def hello_signed_by(hello: TargetHello, public: bytes) -> bool:
    """True if the hello is `public`'s Ed25519 signature of its signed bytes as received."""
    return verify(public, hello.signed, hello.signature)


def hello_binds(hello: TargetHello, public: bytes) -> bool:
    """§9 rule 3 (account): the hello's account is bound to the stream's PeerID key."""
    if scheme_for(hello.ledger) is Scheme.ED25519:
        return hello.account == public
    fields: Any
    try:
        fields = codec.decode(hello.signed, max_depth=SIGNED_MAX_DEPTH)
    except DecodeError:
        return False
    proof = fields.get("account_proof") if isinstance(fields, dict) else None
    return isinstance(proof, bytes) and evmsig.check_binding(
        hello.account, hello.ledger, public, proof
    )


# ---------------------------------------------------------------------------
# what came back


Frame = TargetHello | Request | Response | Refusal


@dataclass(slots=True)
class Got:
    """What a bounded read brought: a frame, the stream's end, silence or garbage."""

    kind: str  # "frame" | "closed" | "silent" | "undecodable" | "flooded"
    raw: bytes = b""
    frame: Frame | None = None
    error: str = ""

    def describe(self) -> str:
        """A short text for a report."""
        if self.kind == "closed":
            return "the stream ended" + (f" ({self.error})" if self.error else "")
        if self.kind == "silent":
            return f"nothing ({self.error})"
        if self.kind == "flooded":
            return self.error
        if self.kind == "undecodable":
            return f"a frame that does not decode ({self.error}; {len(self.raw)} bytes)"
        return describe_frame(self.frame)


def describe_frame(frame: object) -> str:
    """One line naming a frame: kind, code or status, (channel, n), signed or not."""
    if isinstance(frame, TargetHello):
        return "a hello"
    if isinstance(frame, Refusal):
        where = f"channel {frame.channel.hex()[:12] or 'empty'}, n {frame.n}"
        return f"an unsigned refusal {frame.code.value} ({where}, details {_short(frame.details)})"
    if isinstance(frame, Response):
        _, details = frame.refusal_info() if not frame.ok else ("", {})
        text = f"a signed response {frame.status} (n {frame.n}, price {frame.price}, "
        text += f"spent {frame.spent}"
        return text + (f", details {_short(details)})" if details else ")")
    if isinstance(frame, Request):
        return f"a request (n {frame.n})"
    return repr(frame)


def _short(details: Any) -> str:
    if not isinstance(details, dict):
        return repr(details)
    parts = []
    for k, v in details.items():
        shown = f"<{len(v)} bytes>" if isinstance(v, bytes) else repr(v)
        parts.append(f"{k}={shown}")
    return "{" + ", ".join(parts) + "}"


def decode_any(raw: bytes) -> Got:
    """Decode a frame the target sent: a hello with this module's parser (both key sets),
    any other kind with the core's decoder."""
    try:
        head = codec.decode(raw, max_depth=FRAME_MAX_DEPTH)
    except DecodeError as exc:
        return Got("undecodable", raw=raw, error=exc.message)
    if isinstance(head, list) and head and head[0] == 0 and type(head[0]) is int:
        try:
            return Got("frame", raw=raw, frame=parse_hello(raw))
        except HelloError as exc:
            return Got("undecodable", raw=raw, error=f"hello: {exc}")
    try:
        frame = decode_frame(raw)
    except RemoteProtocolError as exc:
        return Got("undecodable", raw=raw, error=exc.message)
    if not isinstance(frame, Request | Response | Refusal):  # pragma: no cover - kind 0 above
        return Got("undecodable", raw=raw, error="unexpected frame")
    return Got("frame", raw=raw, frame=frame)


class Probe:
    """One stream to the target, read by a task of its own into a bounded queue.

    A read that times out must not cancel the stream's own `receive` (a cancelled
    receive resets a libp2p stream), so a reader task owns the stream's receive side and
    `next` waits on its queue: waiting for silence leaves the stream intact. The queue is
    bounded (module docstring): a full one stops the reader; one that stays full for the
    probe's timeout ends the stream as a flood. Use through `open_probe`.
    """

    def __init__(self, stream: Libp2pStream, timeout: float) -> None:
        self.stream = stream
        self.timeout = timeout
        self.ended = False
        self.flooded = ""  # why the reader gave up on a flooding target
        self._send, self._queue = trio.open_memory_channel[Got](MAX_QUEUED_FRAMES)
        self._queued_bytes = 0
        self._drained = trio.Event()

    async def _read(self) -> None:
        while True:
            try:
                raw = await self.stream.receive()
            except StreamClosed as exc:
                await self._put(Got("closed", error=str(exc)[:120]))
                return
            except DecodeError as exc:  # the target's framing is broken
                await self._put(Got("undecodable", error=f"length prefix: {exc.message}"))
                return
            if not await self._put(decode_any(raw)):
                return

    async def _put(self, got: Got) -> bool:
        """Queue `got`, waiting (not reading) while the queue is full; False if it stayed
        full for the probe's timeout: the stream is then reset as flooded."""
        size = len(got.raw)
        with trio.move_on_after(self.timeout):
            while self._queued_bytes and self._queued_bytes + size > MAX_QUEUED_BYTES:
                await self._drained.wait()
            self._queued_bytes += size  # before the send: `next` may take it at once
            try:
                await self._send.send(got)
            except trio.Cancelled:
                self._queued_bytes -= size
                raise
            return True
        waiting = self._queue.statistics().current_buffer_used
        self.flooded = (
            f"the target flooded the stream: {waiting} frames ({self._queued_bytes} bytes) "
            f"it sent were still unread after {_seconds(self.timeout)} and it sent more (the "
            f"tester holds at most {MAX_QUEUED_FRAMES} frames or {MAX_QUEUED_BYTES} bytes); "
            "the stream was reset"
        )
        await self.stream.reset()
        return False

    async def send(self, payload: bytes) -> bool:
        """Write one frame (the transport adds its length prefix). False if the stream
        is already gone."""
        try:
            await self.stream.send(payload)
            return True
        except StreamClosed:
            return False

    async def send_many(self, payloads: list[bytes]) -> bool:
        """Write several frames as one write (pipelining)."""
        try:
            await self.stream.send_many(payloads)
            return True
        except StreamClosed:
            return False

    async def send_raw(self, data: bytes) -> bool:
        """Write `data` as is, below the framing layer (bad length prefixes)."""
        try:
            await self.stream._write(data)
            return True
        except StreamClosed:
            return False

    async def next(self, timeout: float | None = None) -> Got:
        """The next thing the target does within `timeout` (default: the probe's)."""
        if self.flooded:
            self.ended = True
            return Got("flooded", error=self.flooded)
        if self.ended:
            return Got("closed", error="already ended")
        wait = self.timeout if timeout is None else timeout
        with trio.move_on_after(wait):
            got = await self._queue.receive()
            self._queued_bytes -= len(got.raw)
            self._drained.set()
            self._drained = trio.Event()
            if got.kind != "frame":
                self.ended = True
            return got
        return Got("silent", error=f"no frame within {_seconds(wait)}")

    async def expect_end(self, timeout: float | None = None) -> str | None:
        """None if the stream ends (EOF or reset) within `timeout` with no frame before;
        else what happened instead."""
        got = await self.next(timeout)
        if got.kind == "closed":
            return None
        if got.kind == "silent":
            return f"the stream was still open after {got.error.removeprefix('no frame within ')}"
        return f"{got.describe()} instead of the end of the stream"


@asynccontextmanager
async def open_probe(stream: Libp2pStream, timeout: float) -> AsyncIterator[Probe]:
    """A `Probe` on `stream`, its reader running; the stream is closed on exit."""
    probe = Probe(stream, timeout)
    # The block's exception is re-raised outside the nursery, as itself rather than
    # inside an ExceptionGroup.
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe._read)
        try:
            yield probe
        except Exception as exc:
            body_error = exc
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


def _seconds(value: float) -> str:
    if value == math.floor(value):
        return f"{int(value)} s"
    return f"{value:g} s"


def nested(depth: int) -> list[Any]:
    """`depth` arrays inside each other, the innermost empty: ``[[...[]...]]``.

    It is `depth` levels deep however a receiver counts (containers only, or every item
    from the outermost at level 1, decision D8), since it holds no scalar.
    """
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


__all__ = [
    "HELLO_KEYS",
    "LEGACY_HELLO_KEYS",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_FRAMES",
    "Got",
    "HelloError",
    "Probe",
    "Service",
    "TargetHello",
    "build_hello",
    "decode_any",
    "describe_frame",
    "hello_binds",
    "hello_signed_by",
    "nested",
    "now_ms",
    "open_probe",
    "parse_hello",
]
