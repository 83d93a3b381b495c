"""Wire messages and their signing bytes (specs/protocol.md "Frames", specs/wire.cddl).

Theory of operation
-------------------
Four frames travel on a p2pay stream, each one canonical CBOR array whose first item is
the frame kind:

=========  ================================================  =====================
kind       array                                             signed by
=========  ================================================  =====================
0 hello    ``[0, signed_bytes, signature]``                  the sender
1 request  ``[1, signed_bytes, signature, body]``            the channel's payer
2 response ``[2, signed_bytes, signature, body]``            the channel's payee
3 refusal  ``[3, channel, n, code, message, details]``       nobody (see below)
=========  ================================================  =====================

`signed_bytes` is itself the canonical CBOR encoding of a map that always carries the
domain tag ``"p2pay/v1/<kind>"`` (key ``"domain"``) and the ledger id (key ``"ledger"``).
A signature is Ed25519 over `signed_bytes` exactly as received, so the verifier never
re-encodes; the strict decoder then guarantees that those bytes are the only encoding of
their content.

A request's signed map *is* the payment voucher: ``paid`` is the cumulative yocto the
payer has authorised on the channel, this request included; ``price`` is the most the
payer agrees to be charged for this one request. A response is the receipt: ``spent``
is the cumulative yocto the payee has charged on the channel after this request,
``price`` what it charged for this one (0 unless ``status`` is ``"OK"``).

A refusal is unsigned: it answers frames that could not be authenticated (unknown
channel, bad signature, wrong ledger, malformed) or whose request number is not fresh
(REPLAY). Every request that *was* authenticated gets a signed response, whose status is
then an error code and whose body is ``encode({"message": str, "details": map})``: the
provider can show it to the settlement contract to defend a claim.

One function per kind builds the signing bytes: `request_signing_bytes`,
`response_signing_bytes`, `hello_signing_bytes`.

Every constructor validates its fields and raises `LocalProtocolError` for a bad one;
the same checks on decoded fields raise `DecodeError` (code MALFORMED), so peer input
surfaces only as `RemoteProtocolError` subclasses. `decode_frame` checks structure
only; whether a message is on our ledger and signed by the right key is
`check_signed_by`'s job.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, TypeVar, cast

from p2pay.core import codec, evmsig
from p2pay.core.amounts import MAX_YOCTO
from p2pay.core.errors import (
    DecodeError,
    ErrorCode,
    FrameTooLarge,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
    WrongDomain,
    WrongLedger,
)
from p2pay.core.identity import SIGNATURE_SIZE, Keypair, verify
from p2pay.core.signing import (
    SIGNATURE_SIZES,
    Scheme,
    Signer,
    scheme_for,
    sign_message,
    signer_for,
    verify_message,
)

PROTOCOL_VERSION = 2  # 2: paid slices (specs/claims.md 2), idempotent re-sends
PROTOCOL_ID = "/p2pay/2.0.0"
DOMAIN_HELLO = "p2pay/v1/hello"
DOMAIN_REQUEST = "p2pay/v1/request"
DOMAIN_RESPONSE = "p2pay/v1/response"

KIND_HELLO = 0
KIND_REQUEST = 1
KIND_RESPONSE = 2
KIND_REFUSAL = 3

STATUS_OK = "OK"
HASH_SIZE = 32
CHANNEL_ID_SIZE = 32
MAX_LEDGER_ID_SIZE = 64
MAX_SERVICE_NAME = 64
MAX_MESSAGE_TEXT = 512
MAX_REFUSAL_TEXT = 4 * MAX_MESSAGE_TEXT  # bytes of UTF-8: 512 characters at most 4 bytes each
MAX_SERVICES = 256
MIN_FRAME_LIMIT = 4096  # the smallest `max_frame` a hello may advertise
DEFAULT_DEADLINE_HORIZON_MS = 3_600_000  # a hello's default `deadline_horizon`: one hour
FRAME_MAX_DEPTH = 8  # nesting accepted in a frame (the array is level 1)
SIGNED_MAX_DEPTH = 4  # nesting accepted in a signed map (the map is level 1)
MAX_U64 = (1 << 64) - 1
#: What an OK response frame may take besides its body, at most (protocol.md 13.3): the
#: frame's array, kind and byte-string headers, the signed map (under 300 bytes), the
#: signature. The largest answer a payee sends is the payer's ``max_frame`` minus this.
RESPONSE_OVERHEAD = 1024
#: What a request frame may take besides its body, at most (protocol.md 5.3): the frame's
#: array and kind, the signed map (at most 334 bytes) with its header, the signature with
#: its header, the body's header: at most 415 bytes. A payer sends a body of at most the
#: payee's ``max_frame`` minus this (and the service's ``max_body``, 13.1 step 1'').
REQUEST_OVERHEAD = 512

ChannelId = NewType("ChannelId", bytes)
LedgerId = NewType("LedgerId", bytes)


def blake2b256(data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE2b with a 32-byte digest (no key, no salt): the protocol's one hash.

    Args:
        data: the bytes to hash.

    Returns:
        The 32-byte digest.
    """
    return hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


# ---------------------------------------------------------------------------
# field checks: LocalProtocolError when we build a message, DecodeError when a peer did


def _check(cond: bool, message: str, remote: bool) -> None:
    if not cond:
        raise DecodeError(message) if remote else LocalProtocolError(message)


def _check_bytes(
    value: object, name: str, size: int | None, remote: bool, max_size: int = 0
) -> None:
    _check(isinstance(value, bytes), f"{name} must be bytes", remote)
    assert isinstance(value, bytes)
    if size is not None:
        _check(len(value) == size, f"{name} must be {size} bytes", remote)
    else:
        _check(1 <= len(value) <= max_size, f"{name} must be 1..{max_size} bytes", remote)


def _check_uint(value: object, name: str, maximum: int, remote: bool) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum,
        f"{name} must be an integer in [0, {maximum}]",
        remote,
    )


def _check_text(
    value: object, name: str, maximum: int, remote: bool, empty_ok: bool = False
) -> None:
    _check(isinstance(value, str), f"{name} must be text", remote)
    assert isinstance(value, str)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not text CBOR can carry
        size = -1
    _check(size >= 0, f"{name} is not valid UTF-8 text", remote)
    _check(
        (empty_ok or size >= 1) and size <= maximum,
        f"{name} must be {'0' if empty_ok else '1'}..{maximum} bytes of text",
        remote,
    )


def _check_signature(signature: object, remote: bool = False) -> None:
    """An Ed25519 signature's size (a hello's, an offer's)."""
    _check(
        isinstance(signature, bytes) and len(signature) == SIGNATURE_SIZE,
        f"a signature is {SIGNATURE_SIZE} bytes",
        remote,
    )


def _check_message_signature(ledger: bytes, signature: object, remote: bool) -> None:
    """A request's or response's signature size: 64 bytes on an Ed25519 ledger; on an EVM
    ledger 65 (EIP-712), or 64 (accepted so that it can be refused as INVALID_SIGNATURE)."""
    if type(signature) is bytes and len(signature) == SIGNATURE_SIZE:
        return  # right on every ledger: the scheme is not looked up (several times a call)
    if scheme_for(ledger) is Scheme.ED25519:
        sizes = f"{SIGNATURE_SIZE} bytes"
        ok = isinstance(signature, bytes) and len(signature) == SIGNATURE_SIZE
    else:
        sizes = "64 or 65 bytes"
        ok = isinstance(signature, bytes) and len(signature) in SIGNATURE_SIZES
    _check(ok, f"a signature on this ledger is {sizes}", remote)


def _signed_map(data: bytes, domain: str, keys: frozenset[str]) -> dict[str, Any]:
    """Strictly decode signing bytes and check the domain tag and the exact key set."""
    value = codec.decode(data, max_depth=SIGNED_MAX_DEPTH)
    if not isinstance(value, dict):
        raise DecodeError("signed part must be a map")
    tag = value.get("domain")
    if tag != domain:
        if isinstance(tag, str):
            raise WrongDomain(f"domain tag is {tag[:40]!r}, expected {domain!r}")
        raise DecodeError("signed part has no domain tag")
    if value.keys() != keys:
        raise DecodeError(
            f"signed {domain} has fields {sorted(map(str, value))}, expected {sorted(keys)}"
        )
    # Its keys are `keys`, text: the decoder gives them as plain `str`, no copy needed.
    return cast("dict[str, Any]", value)


# ---------------------------------------------------------------------------
# Request: the signed voucher


def request_signing_bytes(
    *,
    ledger: bytes,
    channel: bytes,
    n: int,
    paid: int,
    price: int,
    service: str,
    body_hash: bytes,
    deadline: int,
) -> bytes:
    """The bytes a payer signs for a request (specs/protocol.md "Request").

    Args:
        ledger, channel, n, paid, price, service, body_hash, deadline: the voucher fields
            (not validated here: build a `Request` to validate them).

    Returns:
        The canonical CBOR map with the domain tag ``"p2pay/v1/request"``.

    Raises:
        LocalProtocolError: a value cannot be encoded at all (e.g. a float).
    """
    return _REQUEST_LAYOUT.encode(
        {
            "domain": DOMAIN_REQUEST,
            "ledger": ledger,
            "channel": channel,
            "n": n,
            "paid": paid,
            "price": price,
            "service": service,
            "body_hash": body_hash,
            "deadline": deadline,
        }
    )


_REQUEST_KEYS = frozenset(
    ("domain", "ledger", "channel", "n", "paid", "price", "service", "body_hash", "deadline")
)
_REQUEST_LAYOUT = codec.MapLayout(tuple(sorted(_REQUEST_KEYS)))
_REQUEST_FIELDS = ("ledger", "channel", "n", "paid", "price", "service", "body_hash", "deadline")


def _fields_ok(message: Request | Response) -> bool:
    """One pass over the fields of the common, plain case (exact types, ASCII service
    name); False sends the caller to the detailed checks, which name the bad field."""
    ledger, channel, n, body_hash = message.ledger, message.channel, message.n, message.body_hash
    if not (
        type(ledger) is bytes
        and 1 <= len(ledger) <= MAX_LEDGER_ID_SIZE
        and type(channel) is bytes
        and len(channel) == CHANNEL_ID_SIZE
        and type(n) is int
        and 1 <= n <= MAX_U64
        and type(body_hash) is bytes
        and len(body_hash) == HASH_SIZE
        and type(message.signature) is bytes
        and type(message.body) is bytes
    ):
        return False
    price = message.price
    if type(price) is not int or not 0 <= price <= MAX_YOCTO:
        return False
    if isinstance(message, Request):
        paid, service, deadline = message.paid, message.service, message.deadline
        return (
            type(paid) is int
            and 0 <= paid <= MAX_YOCTO
            and type(service) is str
            and 1 <= len(service) <= MAX_SERVICE_NAME
            and service.isascii()
            and type(deadline) is int
            and 0 <= deadline <= MAX_U64
        )
    status, spent, request_hash = message.status, message.spent, message.request_hash
    return (
        type(status) is str
        and status in _STATUSES
        and (price == 0 or status == STATUS_OK)
        and type(spent) is int
        and price <= spent <= MAX_YOCTO
        and type(request_hash) is bytes
        and len(request_hash) == HASH_SIZE
    )


_Signed = TypeVar("_Signed", "Request", "Response", "Hello")


def _with_signature(message: _Signed, signature: bytes) -> _Signed:
    """A copy of a frozen, slotted signed message with another signature; the signing
    bytes computed at construction are reused, not rebuilt."""
    cls = type(message)
    out = cls.__new__(cls)
    for name in cls.__slots__:
        object.__setattr__(out, name, getattr(message, name))
    object.__setattr__(out, "signature", signature)
    if "_frame" in cls.__slots__:
        object.__setattr__(out, "_frame", b"")  # the frame carries the signature
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A paid request: the signed voucher fields, the signature, and the body beside them.

    `deadline` is a Unix time in milliseconds after which the payee must not serve it.
    `signing_bytes` and `hash` are computed once, at construction. `body` does not take
    part in equality (its hash does).

    Raises:
        LocalProtocolError: on construction, if a field is out of its range.
    """

    ledger: bytes
    channel: bytes
    n: int
    paid: int
    price: int
    service: str
    body_hash: bytes
    deadline: int
    signature: bytes = field(default=b"", repr=False)
    body: bytes = field(default=b"", repr=False, compare=False)
    signing_bytes: bytes = field(init=False, repr=False, compare=False)
    hash: bytes = field(init=False, repr=False, compare=False)
    #: `to_frame`'s result once computed (``b""`` before), or the frame the request was
    #: decoded from (`decode_frame`): a payee stores the same request's frame several
    #: times (its channel record's best voucher, its answer's evidence). Reset by every
    #: copy with another signature (`_with_signature`).
    _frame: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _fields_ok(self):
            self._validate(remote=False)
        signed = request_signing_bytes(
            ledger=self.ledger,
            channel=self.channel,
            n=self.n,
            paid=self.paid,
            price=self.price,
            service=self.service,
            body_hash=self.body_hash,
            deadline=self.deadline,
        )
        object.__setattr__(self, "signing_bytes", signed)
        object.__setattr__(self, "hash", blake2b256(signed))

    def _validate(self, *, remote: bool) -> None:
        _check_bytes(self.ledger, "ledger", None, remote, MAX_LEDGER_ID_SIZE)
        _check_bytes(self.channel, "channel", CHANNEL_ID_SIZE, remote)
        _check_uint(self.n, "n", MAX_U64, remote)
        _check(self.n >= 1, "n starts at 1", remote)
        _check_uint(self.paid, "paid", MAX_YOCTO, remote)
        _check_uint(self.price, "price", MAX_YOCTO, remote)
        _check_text(self.service, "service", MAX_SERVICE_NAME, remote)
        _check_bytes(self.body_hash, "body_hash", HASH_SIZE, remote)
        _check_uint(self.deadline, "deadline", MAX_U64, remote)
        _check(isinstance(self.signature, bytes), "signature must be bytes", remote)
        _check(isinstance(self.body, bytes), "body must be bytes", remote)

    @classmethod
    def create(
        cls,
        key: Signer,
        *,
        ledger: bytes,
        channel: bytes,
        n: int,
        paid: int,
        price: int,
        service: str,
        body: bytes,
        deadline: int,
    ) -> Request:
        """Build and sign a request with the payer's key.

        The ledger's scheme signs (`p2pay.core.signing`): Ed25519 over the signing bytes, or
        on an EVM ledger secp256k1 over the EIP-712 digest (`key` is then an `EvmKey`, or a
        `Keypair` signing with its derived settlement key).

        Raises:
            LocalProtocolError: a field is out of its range.
        """
        _check(isinstance(body, bytes), "body must be bytes", False)
        request = cls(
            ledger=ledger,
            channel=channel,
            n=n,
            paid=paid,
            price=price,
            service=service,
            body_hash=blake2b256(body),
            deadline=deadline,
            body=body,
        )
        signature = sign_message(key, request)
        _check_message_signature(request.ledger, signature, False)
        object.__setattr__(request, "signature", signature)  # new, not yet seen by anyone
        return request

    def with_signature(self, signature: bytes) -> Request:
        """The same request carrying `signature` (not verified here).

        Raises:
            LocalProtocolError: `signature` is not 64 bytes (65 allowed on an EVM ledger).
        """
        _check_message_signature(self.ledger, signature, False)
        return _with_signature(self, signature)

    def verify(self, public: bytes) -> bool:
        """True if `signature` is `public`'s signature under the ledger's scheme.

        `public` is the signer's account: the Ed25519 public key, or on an EVM ledger the
        32-byte account (or 20-byte address) the EIP-712 signature must recover.
        """
        return verify_message(public, self, self.signature)

    def eip712_digest(self) -> bytes | None:
        """The EIP-712 digest signed on an EVM ledger (None on other ledgers)."""
        if scheme_for(self.ledger) is not Scheme.EIP712:
            return None
        return evmsig.request_digest(
            ledger=self.ledger,
            channel=self.channel,
            n=self.n,
            paid=self.paid,
            price=self.price,
            service=self.service,
            body_hash=self.body_hash,
            deadline=self.deadline,
        )

    def body_matches(self) -> bool:
        """True if BLAKE2b-256 of `body` is `body_hash`."""
        return blake2b256(self.body) == self.body_hash

    @classmethod
    def from_signed(cls, signed: bytes, signature: bytes, body: bytes) -> Request:
        """Rebuild a request from received signing bytes (strictly decoded).

        Raises:
            DecodeError: malformed, non-canonical, a field out of range, or a signature
                that is not 64 bytes; WrongDomain: another kind's signing bytes.
        """
        fields = _signed_map(signed, DOMAIN_REQUEST, _REQUEST_KEYS)
        _check_message_signature(fields["ledger"], signature, True)
        # The strict decoder accepted `signed`, so it is the only encoding of these fields
        # (INV-17): keep the received bytes rather than encoding them again.
        signed = bytes(signed)
        request = cls.__new__(cls)
        setattr_ = object.__setattr__
        for name in _REQUEST_FIELDS:
            setattr_(request, name, fields[name])
        setattr_(request, "signature", signature)
        setattr_(request, "body", body)
        setattr_(request, "signing_bytes", signed)
        setattr_(request, "hash", blake2b256(signed))
        setattr_(request, "_frame", b"")
        if not _fields_ok(request):
            request._validate(remote=True)
        return request

    def to_frame(self) -> bytes:
        """The request frame ``[1, signing_bytes, signature, body]``.

        Raises:
            LocalProtocolError: the request is not signed.
        """
        frame = self._frame
        if not frame:
            _check_message_signature(self.ledger, self.signature, False)
            frame = codec.encode([KIND_REQUEST, self.signing_bytes, self.signature, self.body])
            object.__setattr__(self, "_frame", frame)
        return frame

    def voucher_frame(self) -> bytes:
        """The request frame with an empty body, ``[1, signing_bytes, signature, h'']``: the
        voucher as resync details carry it (protocol.md 15; ``body_hash`` is signed, so the
        body adds nothing a payer checks, and the refusal stays within 4096 bytes, 5.3).

        Raises:
            LocalProtocolError: the request is not signed.
        """
        _check_message_signature(self.ledger, self.signature, False)
        return codec.encode([KIND_REQUEST, self.signing_bytes, self.signature, b""])


# ---------------------------------------------------------------------------
# Response: the signed receipt


def response_signing_bytes(
    *,
    ledger: bytes,
    channel: bytes,
    n: int,
    request_hash: bytes,
    status: str,
    price: int,
    spent: int,
    body_hash: bytes,
) -> bytes:
    """The bytes a payee signs for a response (specs/protocol.md "Response").

    The request hash travels under the key ``"request"``.

    Returns:
        The canonical CBOR map with the domain tag ``"p2pay/v1/response"``.

    Raises:
        LocalProtocolError: a value cannot be encoded at all (e.g. a float).
    """
    return _RESPONSE_LAYOUT.encode(
        {
            "domain": DOMAIN_RESPONSE,
            "ledger": ledger,
            "channel": channel,
            "n": n,
            "request": request_hash,
            "status": status,
            "price": price,
            "spent": spent,
            "body_hash": body_hash,
        }
    )


_RESPONSE_KEYS = frozenset(
    ("domain", "ledger", "channel", "n", "request", "status", "price", "spent", "body_hash")
)
_RESPONSE_LAYOUT = codec.MapLayout(tuple(sorted(_RESPONSE_KEYS)))
_STATUSES = frozenset([STATUS_OK, *(code.value for code in ErrorCode)])
_RESPONSE_FIELDS = ("ledger", "channel", "n", "status", "price", "spent", "body_hash")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A signed receipt for request `n` on `channel`, with the body beside it.

    ``price`` is what this request was charged (0 unless ``status`` is ``"OK"``) and
    ``spent`` the channel's cumulative charge after it, so ``price <= spent`` always.

    Raises:
        LocalProtocolError: on construction, if a field is out of its range.
    """

    ledger: bytes
    channel: bytes
    n: int
    request_hash: bytes
    status: str
    price: int
    spent: int
    body_hash: bytes
    signature: bytes = field(default=b"", repr=False)
    body: bytes = field(default=b"", repr=False, compare=False)
    signing_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _fields_ok(self):
            self._validate(remote=False)
        object.__setattr__(
            self,
            "signing_bytes",
            response_signing_bytes(
                ledger=self.ledger,
                channel=self.channel,
                n=self.n,
                request_hash=self.request_hash,
                status=self.status,
                price=self.price,
                spent=self.spent,
                body_hash=self.body_hash,
            ),
        )

    def _validate(self, *, remote: bool) -> None:
        _check_bytes(self.ledger, "ledger", None, remote, MAX_LEDGER_ID_SIZE)
        _check_bytes(self.channel, "channel", CHANNEL_ID_SIZE, remote)
        _check_uint(self.n, "n", MAX_U64, remote)
        _check(self.n >= 1, "n starts at 1", remote)
        _check_bytes(self.request_hash, "request", HASH_SIZE, remote)
        # isinstance first: a peer's status may be an (unhashable) array or map
        _check(
            isinstance(self.status, str) and self.status in _STATUSES,
            "status must be OK or an error code",
            remote,
        )
        _check_uint(self.price, "price", MAX_YOCTO, remote)
        _check(self.status == STATUS_OK or self.price == 0, "a refusal charges nothing", remote)
        _check_uint(self.spent, "spent", MAX_YOCTO, remote)
        _check(self.price <= self.spent, "spent includes this response's price", remote)
        _check_bytes(self.body_hash, "body_hash", HASH_SIZE, remote)
        _check(isinstance(self.signature, bytes), "signature must be bytes", remote)
        _check(isinstance(self.body, bytes), "body must be bytes", remote)

    @property
    def ok(self) -> bool:
        """True if the request was served (status ``"OK"``)."""
        return self.status == STATUS_OK

    @property
    def hash(self) -> bytes:
        """BLAKE2b-256 of the signing bytes."""
        return blake2b256(self.signing_bytes)

    @classmethod
    def create(
        cls,
        key: Signer,
        *,
        request: Request,
        status: str,
        price: int,
        spent: int,
        body: bytes,
    ) -> Response:
        """Build and sign the receipt for `request` with the payee's key.

        Raises:
            LocalProtocolError: a field is out of its range (e.g. a refusal with a price).
        """
        _check(isinstance(body, bytes), "body must be bytes", False)
        _check(isinstance(request, Request), "request must be a Request", False)
        response = cls(
            ledger=request.ledger,
            channel=request.channel,
            n=request.n,
            request_hash=request.hash,
            status=status,
            price=price,
            spent=spent,
            body_hash=blake2b256(body),
            body=body,
        )
        signature = sign_message(key, response)
        _check_message_signature(response.ledger, signature, False)
        object.__setattr__(response, "signature", signature)  # new, not yet seen by anyone
        return response

    def with_signature(self, signature: bytes) -> Response:
        """The same response carrying `signature` (not verified here).

        Raises:
            LocalProtocolError: `signature` is not 64 bytes (65 allowed on an EVM ledger).
        """
        _check_message_signature(self.ledger, signature, False)
        return _with_signature(self, signature)

    def verify(self, public: bytes) -> bool:
        """True if `signature` is `public`'s signature under the ledger's scheme.

        `public` is the signer's account: the Ed25519 public key, or on an EVM ledger the
        32-byte account (or 20-byte address) the EIP-712 signature must recover.
        """
        return verify_message(public, self, self.signature)

    def eip712_digest(self) -> bytes | None:
        """The EIP-712 digest signed on an EVM ledger (None on other ledgers)."""
        if scheme_for(self.ledger) is not Scheme.EIP712:
            return None
        return evmsig.response_digest(
            ledger=self.ledger,
            channel=self.channel,
            n=self.n,
            request_hash=self.request_hash,
            status=self.status,
            price=self.price,
            spent=self.spent,
            body_hash=self.body_hash,
        )

    def body_matches(self) -> bool:
        """True if BLAKE2b-256 of `body` is `body_hash`."""
        return blake2b256(self.body) == self.body_hash

    def refusal_info(self) -> tuple[str, dict[str, Any]]:
        """For a non-OK response: the (message, details) its body carries.

        Returns:
            ``("", {})`` if the body is not a refusal body (never raises).
        """
        try:
            value = codec.decode(self.body, max_size=4096, max_depth=4)
        except DecodeError:
            return ("", {})
        if not isinstance(value, dict):
            return ("", {})
        message = value.get("message")
        details = value.get("details")
        return (
            message if isinstance(message, str) else "",
            {str(k): v for k, v in details.items()} if isinstance(details, dict) else {},
        )

    @classmethod
    def from_signed(cls, signed: bytes, signature: bytes, body: bytes) -> Response:
        """Rebuild a response from received signing bytes (strictly decoded).

        Raises:
            DecodeError: malformed, non-canonical, a field out of range, or a signature
                that is not 64 bytes; WrongDomain: another kind's signing bytes.
        """
        fields = _signed_map(signed, DOMAIN_RESPONSE, _RESPONSE_KEYS)
        _check_message_signature(fields["ledger"], signature, True)
        # As for requests: the strict decoder's bytes are the only encoding (INV-17).
        response = cls.__new__(cls)
        setattr_ = object.__setattr__
        for name in _RESPONSE_FIELDS:
            setattr_(response, name, fields[name])
        setattr_(response, "request_hash", fields["request"])
        setattr_(response, "signature", signature)
        setattr_(response, "body", body)
        setattr_(response, "signing_bytes", bytes(signed))
        if not _fields_ok(response):
            response._validate(remote=True)
        return response

    def to_frame(self) -> bytes:
        """The response frame ``[2, signing_bytes, signature, body]``.

        Raises:
            LocalProtocolError: the response is not signed.
        """
        _check_message_signature(self.ledger, self.signature, False)
        return codec.encode([KIND_RESPONSE, self.signing_bytes, self.signature, self.body])


def answer_limit(max_frame: int, *, max_claim_body: int | None, paid: bool) -> int:
    """``L``, the largest answer body a payee may charge (protocol.md 13.3): the payer's
    `max_frame` (from its hello) minus `RESPONSE_OVERHEAD`, and for a paid request
    (``request.price > 0``) at most the ledger's `max_claim_body` (None: no such limit).
    A longer answer is a signed HANDLER_ERROR, nothing charged, details ``{"max_body": L}``.

    Raises:
        LocalProtocolError: `max_frame` below the protocol's minimum (4096), or
            `max_claim_body` not a positive integer.
    """
    _check_uint(max_frame, "max_frame", MAX_U64, False)
    _check(max_frame >= MIN_FRAME_LIMIT, f"max_frame is at least {MIN_FRAME_LIMIT}", False)
    limit = max_frame - RESPONSE_OVERHEAD
    if paid and max_claim_body is not None:
        _check_uint(max_claim_body, "max_claim_body", MAX_U64, False)
        _check(max_claim_body >= 1, "max_claim_body is at least 1", False)
        limit = min(limit, max_claim_body)
    return limit


def refusal_body(message: str, details: Mapping[str, Any] | None = None) -> bytes:
    """The body of a signed non-OK response: ``encode({"message", "details"})``.

    Args:
        message: human-readable reason, cut to `MAX_MESSAGE_TEXT` characters.
        details: machine-readable details (e.g. ``{"price": int}`` for PAYMENT_REQUIRED).

    Raises:
        LocalProtocolError: details cannot be encoded.
    """
    return codec.encode({"message": message[:MAX_MESSAGE_TEXT], "details": dict(details or {})})


# ---------------------------------------------------------------------------
# Binding a PeerID to its settlement account (protocol.md 9 rule 4): the hello and the
# offer (specs/discovery.md) carry the same two fields and follow the same rules.


def check_account_form(
    ledger: bytes, account: object, account_proof: object, *, remote: bool
) -> None:
    """`account` and `account_proof` have the form `ledger` requires: on an EVM ledger 12
    zero bytes then a non-zero address, and a 65-byte proof; on any other ledger a 32-byte
    account and an empty proof.

    Raises:
        DecodeError (`remote`) or LocalProtocolError: the form is wrong.
    """
    _check_bytes(account, "account", 32, remote)
    assert isinstance(account, bytes)
    _check(isinstance(account_proof, bytes), "account_proof must be bytes", remote)
    assert isinstance(account_proof, bytes)
    if evmsig.is_evm_ledger(ledger):
        _check(
            evmsig.address_of_account(account) is not None,
            "account on an EVM ledger is 12 zero bytes then a non-zero address",
            remote,
        )
        _check(
            len(account_proof) == evmsig.EVM_SIGNATURE_SIZE,
            "account_proof on an EVM ledger is a 65-byte signature",
            remote,
        )
    else:
        _check(account_proof == b"", "account_proof is empty on this ledger", remote)


def account_binding(
    key: Keypair, ledger: bytes, settlement_key: Signer | None = None
) -> tuple[bytes, bytes]:
    """The (account, account_proof) a peer with PeerID key `key` announces on `ledger`.

    `settlement_key` signs vouchers and receipts (default `signing.signer_for(key, ledger)`);
    on an EVM ledger the proof is its `evmsig.binding_proof` for `key`, else empty.

    Raises:
        LocalProtocolError: the settlement key cannot act on `ledger`.
    """
    settler = signer_for(key if settlement_key is None else settlement_key, ledger)
    proof = b""
    if isinstance(settler, evmsig.EvmKey):
        proof = evmsig.binding_proof(settler, ledger, key.public)
    return settler.account, proof


def check_account_binding(
    account: bytes, account_proof: bytes, ledger: bytes, public: bytes, what: str
) -> None:
    """Raise unless `account` is bound to the PeerID key `public` on `ledger`: equal to it on
    an Ed25519 ledger, bound by `account_proof` on an EVM ledger (`evmsig.check_binding`).

    Args:
        what: the message's name, for the error text ("hello", "offer").

    Raises:
        RemoteProtocolError: code UNAUTHORIZED.
    """
    if scheme_for(ledger) is Scheme.ED25519:
        if account != public:
            raise RemoteProtocolError(
                f"on an Ed25519 ledger the {what}'s account is its signer's public key",
                code=ErrorCode.UNAUTHORIZED,
            )
    elif not evmsig.check_binding(account, ledger, public, account_proof):
        raise RemoteProtocolError(
            f"the {what}'s account_proof does not bind its account to the signer",
            code=ErrorCode.UNAUTHORIZED,
        )


# ---------------------------------------------------------------------------
# Hello


_SERVICE_KEYS = frozenset(("name", "price", "max_body"))
_STAKE_KEYS = frozenset(("amount", "penalty", "window"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceTerms:
    """One service a peer offers: its name, price per request (yocto), largest body."""

    name: str
    price: int
    max_body: int

    def __post_init__(self) -> None:
        _check_text(self.name, "service name", MAX_SERVICE_NAME, False)
        _check_uint(self.price, "price", MAX_YOCTO, False)
        _check_uint(self.max_body, "max_body", MAX_U64, False)

    def to_cbor(self) -> dict[str, Any]:
        """The map ``{name, price, max_body}`` carried in a hello and an offer."""
        return {"name": self.name, "price": self.price, "max_body": self.max_body}

    @classmethod
    def from_cbor(cls, value: object) -> ServiceTerms:
        """Parse a received ``{name, price, max_body}`` map (a hello's or an offer's).

        Raises:
            DecodeError: another shape, or a field out of its range.
        """
        if not isinstance(value, dict) or value.keys() != _SERVICE_KEYS:
            raise DecodeError("a service is {name, price, max_body}")
        try:
            return cls(name=value["name"], price=value["price"], max_body=value["max_body"])
        except LocalProtocolError as exc:
            raise DecodeError(exc.message) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class StakeTerms:
    """What a provider has at stake: amount, penalty per missed request, claim window (ms)."""

    amount: int
    penalty: int
    claim_window_ms: int

    def __post_init__(self) -> None:
        _check_uint(self.amount, "stake amount", MAX_YOCTO, False)
        _check_uint(self.penalty, "penalty", MAX_YOCTO, False)
        _check_uint(self.claim_window_ms, "claim_window_ms", MAX_U64, False)

    def to_cbor(self) -> dict[str, Any]:
        """The map ``{amount, penalty, window}`` carried in a hello and an offer."""
        return {"amount": self.amount, "penalty": self.penalty, "window": self.claim_window_ms}

    @classmethod
    def from_cbor(cls, value: object) -> StakeTerms:
        """Parse a received ``{amount, penalty, window}`` map (a hello's or an offer's).

        Raises:
            DecodeError: another shape, or a field out of its range.
        """
        if not isinstance(value, dict) or value.keys() != _STAKE_KEYS:
            raise DecodeError("stake is {amount, penalty, window}")
        try:
            return cls(
                amount=value["amount"], penalty=value["penalty"], claim_window_ms=value["window"]
            )
        except LocalProtocolError as exc:
            raise DecodeError(exc.message) from None


def hello_signing_bytes(
    *,
    version: int,
    ledger: bytes,
    services: tuple[ServiceTerms, ...],
    stake: StakeTerms | None,
    max_in_flight: int,
    max_frame: int,
    account: bytes,
    account_proof: bytes,
    deadline_horizon: int,
) -> bytes:
    """The bytes a peer signs for its hello (specs/protocol.md "Hello").

    Returns:
        The canonical CBOR map with the domain tag ``"p2pay/v1/hello"``.
    """
    return codec.encode(
        {
            "domain": DOMAIN_HELLO,
            "version": version,
            "ledger": ledger,
            "services": [s.to_cbor() for s in services],
            "stake": stake.to_cbor() if stake is not None else None,
            "max_in_flight": max_in_flight,
            "max_frame": max_frame,
            "account": account,
            "account_proof": account_proof,
            "deadline_horizon": deadline_horizon,
        }
    )


_HELLO_KEYS = frozenset(
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


#: the hello's fields `Hello.from_signed` takes as decoded
_HELLO_FIELDS = (
    "version",
    "ledger",
    "max_in_flight",
    "max_frame",
    "account",
    "account_proof",
    "deadline_horizon",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """First frame each way on a stream: who I am on which ledger, and my terms.

    `max_in_flight` is how many of the peer's requests the sender will hold unanswered
    at once (at least 1); `max_frame` the largest frame, in bytes without its length
    prefix, that the sender accepts (at least `MIN_FRAME_LIMIT`). `account` is the sender's
    settlement account on `ledger`: its Ed25519 public key on an Ed25519 ledger (and
    `account_proof` empty), its EVM account on an EVM ledger (and `account_proof` that
    account key's `evmsig.binding_proof` for the sender's PeerID key). Signed with the PeerID
    key, the hello binds the PeerID and the account both ways (specs/protocol.md §9).
    `deadline_horizon` (ms, at least 1) is how far ahead of its clock the sender accepts a
    request's deadline: it refuses a later one, and a payer caps its deadlines to it.

    Raises:
        LocalProtocolError: on construction, if a field is out of its range.
    """

    version: int
    ledger: bytes
    services: tuple[ServiceTerms, ...]
    stake: StakeTerms | None
    max_in_flight: int
    max_frame: int
    account: bytes
    account_proof: bytes
    deadline_horizon: int
    signature: bytes = field(default=b"", repr=False)
    signing_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_fields()
        object.__setattr__(
            self,
            "signing_bytes",
            hello_signing_bytes(
                version=self.version,
                ledger=self.ledger,
                services=self.services,
                stake=self.stake,
                max_in_flight=self.max_in_flight,
                max_frame=self.max_frame,
                account=self.account,
                account_proof=self.account_proof,
                deadline_horizon=self.deadline_horizon,
            ),
        )

    def _check_fields(self) -> None:
        """Check every field but the signing bytes (on construction, and on a received hello
        before its signing bytes are kept, `from_signed`)."""
        _check_uint(self.version, "version", MAX_U64, False)
        _check_bytes(self.ledger, "ledger", None, False, MAX_LEDGER_ID_SIZE)
        check_account_form(self.ledger, self.account, self.account_proof, remote=False)
        _check(isinstance(self.services, tuple), "services must be a tuple", False)
        _check(
            all(isinstance(s, ServiceTerms) for s in self.services),
            "services must be ServiceTerms",
            False,
        )
        _check(len(self.services) <= MAX_SERVICES, f"more than {MAX_SERVICES} services", False)
        names = [s.name for s in self.services]
        _check(len(set(names)) == len(names), "service names must be unique", False)
        _check(
            self.stake is None or isinstance(self.stake, StakeTerms),
            "stake must be StakeTerms or None",
            False,
        )
        _check_uint(self.max_in_flight, "max_in_flight", MAX_U64, False)
        _check(self.max_in_flight >= 1, "max_in_flight is at least 1", False)
        _check_uint(self.max_frame, "max_frame", MAX_U64, False)
        _check(self.max_frame >= MIN_FRAME_LIMIT, f"max_frame is at least {MIN_FRAME_LIMIT}", False)
        _check_uint(self.deadline_horizon, "deadline_horizon", MAX_U64, False)
        _check(self.deadline_horizon >= 1, "deadline_horizon is at least 1 ms", False)
        _check(isinstance(self.signature, bytes), "signature must be bytes", False)

    def service(self, name: str) -> ServiceTerms | None:
        """The terms of service `name`, or None if the sender does not offer it."""
        for terms in self.services:
            if terms.name == name:
                return terms
        return None

    @classmethod
    def create(
        cls,
        key: Keypair,
        *,
        ledger: bytes,
        services: tuple[ServiceTerms, ...] = (),
        stake: StakeTerms | None = None,
        max_in_flight: int = 64,
        max_frame: int = codec.MAX_FRAME_SIZE,
        settlement_key: Signer | None = None,
        deadline_horizon: int = DEFAULT_DEADLINE_HORIZON_MS,
    ) -> Hello:
        """Build and sign a hello for `PROTOCOL_VERSION`.

        `settlement_key` is the key that signs vouchers and receipts on `ledger` (default
        `signing.signer_for(key, ledger)`); the hello names its account and, on an EVM
        ledger, carries its binding proof for `key`. `deadline_horizon` is the sender's
        (a node sends its ``max_deadline_horizon_ms``).

        Raises:
            LocalProtocolError: a field is out of its range, or the settlement key cannot
                act on `ledger`.
        """
        account, proof = account_binding(key, ledger, settlement_key)
        unsigned = cls(
            version=PROTOCOL_VERSION,
            ledger=ledger,
            services=services,
            stake=stake,
            max_in_flight=max_in_flight,
            max_frame=max_frame,
            account=account,
            account_proof=proof,
            deadline_horizon=deadline_horizon,
        )
        return unsigned.with_signature(key.sign(unsigned.signing_bytes))

    def with_signature(self, signature: bytes) -> Hello:
        """The same hello carrying `signature` (64 bytes; not verified here).

        Raises:
            LocalProtocolError: `signature` is not 64 bytes.
        """
        _check_signature(signature)
        return _with_signature(self, signature)

    def verify(self, public: bytes) -> bool:
        """True if `signature` is `public`'s signature of the signing bytes.

        A peer's hello stays the same bytes while what it says does (no time or nonce in
        it, deterministic signatures), and each new stream to it brings it again: a hello
        that verified is kept (`_hello_verified`), so the same (key, signing bytes,
        signature) again gets the answer Ed25519 gave them, without a second verification.
        """
        signed, signature = self.signing_bytes, self.signature
        if (
            type(public) is bytes
            and type(signed) is bytes
            and type(signature) is bytes
            and len(signed) <= _KEPT_HELLO_SIZE
        ):
            try:
                return _hello_verified(public, signed, signature)
            except InvalidSignature:  # raised, so not kept
                return False
        return verify(public, signed, signature)

    @classmethod
    def from_signed(cls, signed: bytes, signature: bytes) -> Hello:
        """Rebuild a hello from received signing bytes (strictly decoded).

        Raises:
            DecodeError: malformed, non-canonical, a field out of range, or a signature
                that is not 64 bytes; WrongDomain: another kind's signing bytes.
        """
        fields = _signed_map(signed, DOMAIN_HELLO, _HELLO_KEYS)
        _check_signature(signature, remote=True)
        services_raw = fields["services"]
        if not isinstance(services_raw, list):
            raise DecodeError("services must be an array")
        if len(services_raw) > MAX_SERVICES:
            raise DecodeError(f"more than {MAX_SERVICES} services")
        services = tuple(ServiceTerms.from_cbor(item) for item in services_raw)
        stake_raw = fields["stake"]
        stake = None if stake_raw is None else StakeTerms.from_cbor(stake_raw)
        hello = cls.__new__(cls)
        setattr_ = object.__setattr__
        for name in _HELLO_FIELDS:
            setattr_(hello, name, fields[name])
        setattr_(hello, "services", services)
        setattr_(hello, "stake", stake)
        setattr_(hello, "signature", signature)
        try:
            hello._check_fields()
        except LocalProtocolError as exc:
            raise DecodeError(exc.message) from None
        # As for requests: the strict decoder accepted `signed`, so it is the only encoding
        # of these fields (INV-17); keep it rather than encoding the hello again (its
        # encoding, services and all, was about 0.6 % of the simulator's CPU at 1,000 peers).
        setattr_(hello, "signing_bytes", bytes(signed))
        return hello

    def to_frame(self) -> bytes:
        """The hello frame ``[0, signing_bytes, signature]``.

        Raises:
            LocalProtocolError: the hello is not signed.
        """
        _check_signature(self.signature)
        return codec.encode([KIND_HELLO, self.signing_bytes, self.signature])


# ---------------------------------------------------------------------------
# Refusal (unsigned)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """An unsigned refusal of a frame that could not be authenticated (or was a REPLAY).

    `channel` is empty and `n` is 0 when the frame could not be parsed that far (or the
    refusal is about the stream); otherwise `channel` is 32 bytes and `n` at least 1
    (protocol.md 7, wire.cddl). `details` is a map with text keys (for REPLAY: ``last_n``,
    ``spent``, ``paid_max`` and ``voucher``, see specs/protocol.md "Resync").

    Raises:
        LocalProtocolError: on construction, if a field is out of its range or `details`
            cannot be encoded.
    """

    channel: bytes
    n: int
    code: ErrorCode
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(isinstance(self.code, ErrorCode), "code must be an ErrorCode", False)
        _check(
            isinstance(self.channel, bytes) and len(self.channel) in (0, CHANNEL_ID_SIZE),
            "channel is empty or 32 bytes",
            False,
        )
        _check_uint(self.n, "n", MAX_U64, False)
        _check(len(self.channel) > 0 or self.n == 0, "n is 0 when channel is empty", False)
        _check(len(self.channel) == 0 or self.n >= 1, "n is at least 1 with a channel", False)
        _check_text(self.message, "message", MAX_REFUSAL_TEXT, False, empty_ok=True)
        _check(
            isinstance(self.details, Mapping) and all(isinstance(k, str) for k in self.details),
            "details is a map with text keys",
            False,
        )
        # LocalProtocolError now rather than in to_frame; the frame array adds one level, and
        # `decode_frame` accepts 8 (`FRAME_MAX_DEPTH`), so the details may nest 7 deep.
        codec.encode(dict(self.details), max_depth=FRAME_MAX_DEPTH - 1)

    @classmethod
    def of_error(cls, error: RemoteProtocolError, *, channel: bytes = b"", n: int = 0) -> Refusal:
        """The unsigned refusal answering `error`: its code, message and details.

        The details are the ones the spec gives the code (protocol.md 18), e.g.
        ``{"version": 2}`` for VERSION_MISMATCH (`check_signed_by`) and
        ``{"max_frame": limit}`` for FRAME_TOO_LARGE (`decode_frame`, the frame reader).

        Raises:
            LocalProtocolError: `channel`/`n` out of range, or details that cannot be sent.
        """
        return cls(
            channel=channel,
            n=n,
            code=error.code,
            message=_cut_utf8(error.message, MAX_REFUSAL_TEXT),
            details=dict(error.details),
        )

    def to_frame(self) -> bytes:
        """The refusal frame ``[3, channel, n, code, message, details]``."""
        return codec.encode(
            [KIND_REFUSAL, self.channel, self.n, self.code.value, self.message, dict(self.details)]
        )


def _cut_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, on a character boundary."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


Frame = Hello | Request | Response | Refusal


#: Hellos whose signing bytes are at most this long are kept once verified (`Hello.verify`).
_KEPT_HELLO_SIZE = 1024


@functools.lru_cache(maxsize=2048)
def _hello_verified(public: bytes, signed: bytes, signature: bytes) -> bool:
    """True if the hello verifies (`identity.verify`), kept for its exact bytes: a pure
    function of the three, so a kept answer is the one verifying again would give. Only
    successes are kept (a failure raises): hellos that do not verify push out no others.
    At most 2,048 of at most `_KEPT_HELLO_SIZE` bytes (about 3 MB at worst; a node's
    peers' hellos are 200-300 bytes). A peer reconnecting with an unchanged hello then
    costs no second Ed25519 verification (each end of a stream verifies the other's).

    Raises:
        InvalidSignature: the signature does not verify.
    """
    if not verify(public, signed, signature):
        raise InvalidSignature("hello signature does not verify")
    return True


def decode_frame(
    data: bytes | bytearray | memoryview, *, max_size: int = codec.MAX_FRAME_SIZE
) -> Frame:
    """Parse one frame (without its length prefix). Signatures are *not* checked here.

    Args:
        data: the frame bytes.
        max_size: the largest frame accepted.

    Returns:
        A `Hello`, `Request`, `Response` or `Refusal`.

    Raises:
        FrameTooLarge: over `max_size`; its details are ``{"max_frame": max_size}``.
        DecodeError: anything malformed, non-canonical or of an unknown kind.
        WrongDomain: signed bytes of another kind (e.g. a response inside a request frame).
    """
    try:
        value = codec.decode(data, max_size=max_size, max_depth=FRAME_MAX_DEPTH)
    except FrameTooLarge as exc:  # details as the refusal carries them (protocol.md 5.2)
        raise FrameTooLarge(exc.message, details={"max_frame": max_size}) from None
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise DecodeError("a frame is an array starting with its kind")
    kind = value[0]
    if kind == KIND_REQUEST or kind == KIND_RESPONSE:
        if len(value) != 4:
            raise DecodeError("request/response frame is [kind, signed, signature, body]")
        signed, signature, body = value[1], value[2], value[3]
        if not (
            isinstance(signed, bytes) and isinstance(signature, bytes) and isinstance(body, bytes)
        ):
            raise DecodeError("request/response frame is [kind, signed, signature, body]")
        if kind == KIND_REQUEST:
            request = Request.from_signed(signed, signature, body)
            # The strict decoder accepted `data`, so it is the only encoding of this frame
            # (INV-17): exactly what `to_frame` would encode again. The payee keeps every
            # request's frame (its answer's evidence, its channel's best voucher); this
            # saves encoding it back (108k of the 216k request-frame encodes at 1,000 peers,
            # 1.4 s of 186 s profiled).
            object.__setattr__(request, "_frame", bytes(data))
            return request
        return Response.from_signed(signed, signature, body)
    if kind == KIND_HELLO:
        if len(value) != 3:
            raise DecodeError("hello frame is [0, signed, signature]")
        signed, signature = value[1], value[2]
        if not (isinstance(signed, bytes) and isinstance(signature, bytes)):
            raise DecodeError("hello frame is [0, signed, signature]")
        return Hello.from_signed(signed, signature)
    if kind == KIND_REFUSAL:
        if len(value) != 6:
            raise DecodeError("refusal frame is [3, channel, n, code, message, details]")
        _, channel, n, code, message, details = value
        if not isinstance(code, str):
            raise DecodeError("refusal code must be text")
        try:
            known = ErrorCode(code)
        except ValueError:
            raise DecodeError(f"unknown refusal code {code[:40]!r}") from None
        if not isinstance(details, dict) or not isinstance(message, str):
            raise DecodeError("refusal message is text and details a map")
        if not all(isinstance(k, str) for k in details):
            raise DecodeError("refusal details keys must be text")
        if not isinstance(channel, bytes) or not isinstance(n, int) or isinstance(n, bool):
            raise DecodeError("refusal channel is bytes and n an integer")
        try:
            return Refusal(
                channel=channel,
                n=n,
                code=known,
                message=message,
                details={str(k): v for k, v in details.items()},
            )
        except LocalProtocolError as exc:
            raise DecodeError(exc.message) from None
    raise DecodeError(f"unknown frame kind {kind}")


def decode_held_frame(data: bytes) -> Frame:
    """`decode_frame` of a frame held whole already, read from a ledger (a claim's request,
    response or evidence) or from the node's own store: bounded by what wrote it, not by
    `codec.MAX_FRAME_SIZE`, the limit on what a peer sends. A claim's request may carry a
    body of the ledger's ``max_claim_body`` (1 MiB on the SQLite dev ledger), which takes
    its frame past 1 MiB: decoded with the wire's limit it was unreadable, its claim never
    answered and the provider slashed (attack round 20); a node whose ``max_frame`` is
    above 1 MiB stores frames as large, and could not start on such a best voucher, nor
    check such a request after a restart (round 21).

    Raises:
        DecodeError: as `decode_frame`.
    """
    return decode_frame(data, max_size=max(len(data), codec.MAX_FRAME_SIZE))


def check_signed_by(message: Request | Response | Hello, public: bytes, ledger: bytes) -> None:
    """Raise unless `message` is on `ledger` and signed by `public`.

    For a `Hello` the protocol version is checked first, and last its `account`: on an
    Ed25519 ledger it must be `public` itself; on an EVM ledger `account_proof` must be the
    account key's binding proof for `public` (`evmsig.check_binding`).

    Raises:
        RemoteProtocolError: code VERSION_MISMATCH, a hello of another protocol version;
            code UNAUTHORIZED, a hello naming an account not bound to `public`.
        WrongLedger: the message names another ledger.
        InvalidSignature: the signature is not `public`'s.
    """
    if isinstance(message, Hello) and message.version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"peer speaks version {message.version}, we speak {PROTOCOL_VERSION}",
            code=ErrorCode.VERSION_MISMATCH,
            details={"version": PROTOCOL_VERSION},
        )
    if message.ledger != ledger:
        raise WrongLedger("message is for another ledger")
    if not message.verify(public):
        raise InvalidSignature("signature does not verify")
    if isinstance(message, Hello):
        check_account_binding(message.account, message.account_proof, ledger, public, "hello")
