"""Build the test vectors of specs/vectors/ from fixed keys.

Run from the repository root::

    python specs/vectors/generate.py          # rewrite every file
    python specs/vectors/generate.py --check  # exit 1 if a file differs from a rebuild

Files: requests.json, responses.json (signed messages), hellos.json, refusals.json
(unsigned refusal frames), framing.json (length prefixes, sizes, nesting) and resync.json
(resync details and what the payer makes of them) and offers.json (signed service
offers, specs/discovery.md).

The output is deterministic: the keys come from fixed seeds, Ed25519 signatures are
deterministic (RFC 8032), secp256k1 signatures too (RFC 6979), and every value below is a
constant.

This script is a second, independent implementation of the wire format: it uses its own
small canonical CBOR encoder (RFC 8949 4.2.1), pynacl for Ed25519, hashlib for BLAKE2b-256,
and for the EVM hello coincurve (secp256k1) and pycryptodome (Keccak-256); it imports
nothing from p2pay. The expected outcomes are written here from the spec's rules (each
entry names its section); tests/vectors/test_vectors.py then checks that p2pay builds the
very same bytes and reaches the very same outcomes. See specs/vectors/README.md for the
format of the entries.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nacl.signing

HERE = Path(__file__).resolve().parent

ALICE = bytes([1]) * 32  # the payer in every vector
BOB = bytes([2]) * 32  # the payee
MALLORY = bytes([4]) * 32  # signs what she should not

LEDGER = b"p2pay:vectors:ledger-1"
OTHER_LEDGER = b"p2pay:vectors:ledger-2"
MAX_U64 = 2**64 - 1
MAX_YOCTO = 2**128 - 1
TOKEN = 10**24
DEADLINE = 1_767_225_600_000  # 2026-01-01T00:00:00Z in Unix ms


def blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


CHANNEL = blake2b256(b"p2pay vectors channel 1")
CHANNEL_2 = blake2b256(b"p2pay vectors channel 2")


def sign(seed: bytes, message: bytes) -> bytes:
    return nacl.signing.SigningKey(seed).sign(message).signature


def public(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key)


# --------------------------------------------------------------------------- CBOR
# A minimal encoder: `enc` is canonical; the helpers below it build deliberately
# non-canonical items for the invalid vectors.


def head(major: int, arg: int, width: int | None = None) -> bytes:
    """Initial byte and argument; `width` (0, 1, 2, 4, 8) forces a non-shortest form."""
    if width is None:
        if arg < 24:
            width = 0
        elif arg < 2**8:
            width = 1
        elif arg < 2**16:
            width = 2
        elif arg < 2**32:
            width = 4
        else:
            width = 8
    if width == 0:
        return bytes([major << 5 | arg])
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + arg.to_bytes(width, "big")


def enc(value: Any) -> bytes:
    """Canonical CBOR of bool/None/int/bytes/str/list/dict (keys sorted by encoding)."""
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        if 0 <= value <= MAX_U64:
            return head(0, value)
        if -(2**64) <= value < 0:
            return head(1, -1 - value)
        magnitude, tag = (value, 0xC2) if value > 0 else (-1 - value, 0xC3)
        raw = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
        return bytes([tag]) + head(2, len(raw)) + raw
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(enc(v) for v in value)
    if isinstance(value, dict):
        return enc_map(sorted((enc(k), enc(v)) for k, v in value.items()))
    if isinstance(value, float):
        import struct

        return b"\xfb" + struct.pack(">d", value)
    raise TypeError(type(value))


def enc_map(items: list[tuple[bytes, bytes]], width: int | None = None) -> bytes:
    """A map of already-encoded (key, value) pairs, in the order given."""
    return head(5, len(items), width) + b"".join(k + v for k, v in items)


def with_value(fields: dict[str, Any], key: str, encoded: bytes) -> bytes:
    """Canonical map of `fields`, except that `key`'s value is the given raw encoding."""
    items = [(enc(k), encoded if k == key else enc(v)) for k, v in fields.items()]
    return enc_map(sorted(items))


def as_json(value: Any) -> Any:
    """Fields as JSON: integers as decimal strings, bytes as hex, text as text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return value
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- messages


def request_fields(
    *,
    n: int,
    paid: int,
    price: int,
    service: str = "echo",
    body: bytes = b"hello",
    deadline: int = DEADLINE,
    ledger: bytes = LEDGER,
    channel: bytes = CHANNEL,
) -> dict[str, Any]:
    return {
        "domain": "p2pay/v1/request",
        "ledger": ledger,
        "channel": channel,
        "n": n,
        "paid": paid,
        "price": price,
        "service": service,
        "body_hash": blake2b256(body),
        "deadline": deadline,
    }


def response_fields(
    request_signed: bytes,
    request: dict[str, Any],
    *,
    status: str,
    price: int,
    spent: int,
    body: bytes,
    ledger: bytes | None = None,
) -> dict[str, Any]:
    return {
        "domain": "p2pay/v1/response",
        "ledger": request["ledger"] if ledger is None else ledger,
        "channel": request["channel"],
        "n": request["n"],
        "request": blake2b256(request_signed),
        "status": status,
        "price": price,
        "spent": spent,
        "body_hash": blake2b256(body),
    }


def refusal_body(message: str, details: dict[str, Any]) -> bytes:
    return enc({"message": message, "details": details})


def entry(
    description: str,
    *,
    kind: int,
    signer: bytes,
    signed: bytes,
    body: bytes,
    fields: dict[str, Any],
    key: bytes | None = None,
    signature: bytes | None = None,
    frame: bytes | None = None,
    error: str | None = None,
    expected_ledger: bytes = LEDGER,
    extra: dict[str, Any] | None = None,
    section: str | None = None,
) -> dict[str, Any]:
    """One vector. `key` is whose signature the receiver expects (default: the signer)."""
    sig = sign(signer, signed) if signature is None else signature
    out: dict[str, Any] = {"description": description, "valid": error is None}
    if error is not None:
        out["error"] = error
    out["section"] = section or section_of(kind, error, description)
    out["public_key_hex"] = public(key if key is not None else signer).hex()
    out["expected_ledger_hex"] = expected_ledger.hex()
    out["signing_bytes_hex"] = signed.hex()
    out["signature_hex"] = sig.hex()
    out["hash_hex"] = blake2b256(signed).hex()
    out["body_hex"] = body.hex()
    out["fields"] = as_json(fields)
    out["frame_hex"] = (enc([kind, signed, sig, body]) if frame is None else frame).hex()
    out.update(extra or {})
    return out


def section_of(kind: int, error: str | None, description: str) -> str:
    """The protocol.md sections a request or response vector comes from."""
    message = "§10" if kind == 1 else "§11"
    if error is None:
        return f"protocol.md {message}"
    if error == "INVALID_SIGNATURE":
        return "protocol.md §2, §8"
    if error in ("WRONG_LEDGER", "WRONG_DOMAIN"):
        return "protocol.md §8"
    if any(w in description for w in ("non-canonical", "trailing", "duplicate")):
        return "protocol.md §6"
    return f"protocol.md §7, §8, {message}"


# --------------------------------------------------------------------------- requests

VALID_REQUESTS: list[tuple[str, dict[str, Any], bytes]] = [
    (
        "basic request: n = 1, paid = price = 1000 yocto",
        {"n": 1, "paid": 1000, "price": 1000},
        b"hello",
    ),
    ("price 0 (a free service), paid unchanged", {"n": 2, "paid": 1000, "price": 0}, b"ping"),
    (
        "paid above 2**64 (bignum), price 1 token = 10**24 yocto",
        {"n": 3, "paid": 2**64 + 10**24, "price": TOKEN},
        b"hello",
    ),
    (
        "integer boundaries: n = 24 (1-byte argument), paid = 2**64 - 1 (largest plain uint), "
        "price = 2**64 (smallest bignum)",
        {"n": 24, "paid": MAX_U64, "price": 2**64},
        b"",
    ),
    (
        "extremes: n = 2**64 - 1, paid = price = 2**128 - 1, deadline = 2**64 - 1",
        {"n": MAX_U64, "paid": MAX_YOCTO, "price": MAX_YOCTO, "deadline": MAX_U64},
        b"last",
    ),
    (
        "longest ASCII service name (64 bytes), empty body",
        {"n": 25, "paid": 5000, "price": 7, "service": "s" * 63 + "x"},
        b"",
    ),
    (
        "longest UTF-8 service name: 32 x U+00E9 = 64 bytes",
        {"n": 256, "paid": 5000, "price": 7, "service": "\u00e9" * 32},
        b"\x00\xff" * 8,
    ),
    (
        "1-byte ledger id, second channel, deadline 0, 300-byte body",
        {"n": 2**32, "paid": 1, "price": 1, "ledger": b"L", "channel": CHANNEL_2, "deadline": 0},
        bytes(range(256)) + bytes(44),
    ),
    (
        "64-byte ledger id",
        {"n": 2**32 + 1, "paid": 10**30, "price": 10**21, "ledger": bytes(range(64))},
        b"{}",
    ),
]


def build_requests() -> tuple[list[dict[str, Any]], list[tuple[bytes, dict[str, Any], bytes]]]:
    out: list[dict[str, Any]] = []
    made: list[tuple[bytes, dict[str, Any], bytes]] = []
    for description, params, body in VALID_REQUESTS:
        fields = request_fields(body=body, **params)
        signed = enc(fields)
        made.append((signed, fields, body))
        out.append(
            entry(
                description,
                kind=1,
                signer=ALICE,
                signed=signed,
                body=body,
                fields=fields,
                expected_ledger=fields["ledger"],
            )
        )

    base = request_fields(n=7, paid=2000, price=1000)
    base_signed = enc(base)
    body = b"hello"

    def bad(description: str, error: str, fields: dict[str, Any], signed: bytes, **kw: Any) -> None:
        out.append(
            entry(
                description,
                kind=1,
                signer=kw.pop("signer", ALICE),
                signed=signed,
                body=kw.pop("body", body),
                fields=fields,
                error=error,
                **kw,
            )
        )

    # --- signature and binding
    bad(
        "signed by MALLORY, presented as ALICE's",
        "INVALID_SIGNATURE",
        base,
        base_signed,
        signer=MALLORY,
        key=ALICE,
    )
    flipped = bytearray(sign(ALICE, base_signed))
    flipped[0] ^= 0x01
    bad(
        "ALICE's signature with one bit flipped",
        "INVALID_SIGNATURE",
        base,
        base_signed,
        signature=bytes(flipped),
    )
    other = request_fields(n=7, paid=2000, price=1000, ledger=OTHER_LEDGER)
    bad(
        f"signed for ledger {OTHER_LEDGER.decode()!r}; the receiver expects {LEDGER.decode()!r}",
        "WRONG_LEDGER",
        other,
        enc(other),
    )
    resp = response_fields(base_signed, base, status="OK", price=1000, spent=1000, body=b"hi")
    bad(
        "a response's signed bytes (signed by BOB) inside a request frame",
        "WRONG_DOMAIN",
        resp,
        enc(resp),
        signer=BOB,
        body=b"hi",
    )
    hello = {
        "domain": "p2pay/v1/hello",
        "version": 2,  # PROTOCOL_VERSION (paid slices)
        "ledger": LEDGER,
        "services": [{"name": "echo", "price": 1000, "max_body": 65536}],
        "stake": None,
        "max_in_flight": 64,
        "max_frame": 1 << 20,
    }
    bad(
        "a hello's signed bytes inside a request frame", "WRONG_DOMAIN", hello, enc(hello), body=b""
    )
    v2 = dict(base, domain="p2pay/v2/request")
    bad("domain tag of another version, p2pay/v2/request", "WRONG_DOMAIN", v2, enc(v2))

    # --- non-canonical encodings, each validly signed by ALICE over the bytes shown
    bad(
        "non-canonical: n = 7 written as a 1-byte argument (0x18 0x07)",
        "MALFORMED",
        base,
        with_value(base, "n", head(0, 7, width=1)),
    )
    bad(
        "non-canonical: price = 1000 written with a 4-byte argument",
        "MALFORMED",
        base,
        with_value(base, "price", head(0, 1000, width=4)),
    )
    bad(
        "non-canonical: paid = 2000 written as a tag 2 bignum",
        "MALFORMED",
        base,
        with_value(base, "paid", b"\xc2" + enc((2000).to_bytes(2, "big"))),
    )
    bad(
        "non-canonical: paid = 2**64 as a bignum with a leading zero byte",
        "MALFORMED",
        dict(base, paid=2**64),
        with_value(base, "paid", b"\xc2" + enc(b"\x00" + (2**64).to_bytes(9, "big"))),
    )
    items = sorted((enc(k), enc(v)) for k, v in base.items())
    bad(
        "non-canonical: map keys out of order ('domain' first)",
        "MALFORMED",
        base,
        enc_map(sorted(items, key=lambda kv: kv[0] != enc("domain"))),
    )
    bad(
        "non-canonical: map keys in reverse order",
        "MALFORMED",
        base,
        enc_map(list(reversed(items))),
    )
    bad(
        "non-canonical: map length written with a 1-byte argument",
        "MALFORMED",
        base,
        enc_map(items, width=1),
    )
    bad(
        "non-canonical: indefinite-length map",
        "MALFORMED",
        base,
        b"\xbf" + b"".join(k + v for k, v in items) + b"\xff",
    )
    bad(
        "non-canonical: service as an indefinite-length text string",
        "MALFORMED",
        base,
        with_value(base, "service", b"\x7f" + enc("ec") + enc("ho") + b"\xff"),
    )
    sig = sign(ALICE, base_signed)
    bad(
        "non-canonical frame around canonical signed bytes: body length with a 2-byte argument",
        "MALFORMED",
        base,
        base_signed,
        frame=head(4, 4)
        + enc(1)
        + enc(base_signed)
        + enc(sig)
        + head(2, len(body), width=2)
        + body,
    )
    bad(
        "trailing byte after the signed map",
        "MALFORMED",
        base,
        base_signed + b"\x00",
    )

    # --- wrong shape or out-of-range fields, each validly signed by ALICE
    def shaped(description: str, fields: dict[str, Any]) -> None:
        bad(description, "MALFORMED", fields, enc(fields))

    shaped("missing field: deadline", {k: v for k, v in base.items() if k != "deadline"})
    shaped("extra field: memo", dict(base, memo="thanks"))
    shaped("n = 0 (request numbers start at 1)", dict(base, n=0))
    shaped("n = 2**64 (above the 64-bit range)", dict(base, n=2**64))
    shaped("paid = 2**128 (a 17-byte bignum, above the amount range)", dict(base, paid=2**128))
    shaped("price = -1", dict(base, price=-1))
    shaped("paid as text", dict(base, paid="2000"))
    shaped("deadline as a float", dict(base, deadline=1.5e12))
    shaped("empty service name", dict(base, service=""))
    shaped("service name of 65 bytes", dict(base, service="s" * 65))
    shaped("service as bytes instead of text", dict(base, service=b"echo"))
    shaped("body_hash of 31 bytes", dict(base, body_hash=blake2b256(body)[:31]))
    shaped("empty ledger id", dict(base, ledger=b""))
    shaped("ledger id of 65 bytes", dict(base, ledger=bytes(65)))
    shaped("channel id of 31 bytes", dict(base, channel=CHANNEL[:31]))
    shaped("signed part is an array, not a map", [base["n"]])  # type: ignore[arg-type]
    bad(
        "signature of 63 bytes in the frame",
        "MALFORMED",
        base,
        base_signed,
        signature=sign(ALICE, base_signed)[:63],
    )
    return out, made


# --------------------------------------------------------------------------- responses


SIGNED_REFUSALS: list[tuple[str, str, str, str, dict[str, Any]]] = [
    (
        "signed refusal CHANNEL_CLOSED (check 7)",
        "CHANNEL_CLOSED",
        "protocol.md §13.2 check 7, §18",
        "channel is closing",
        {},
    ),
    (
        "signed refusal DEADLINE_EXCEEDED (check 8): the deadline has passed",
        "DEADLINE_EXCEEDED",
        "protocol.md §13.2 check 8, §18",
        "request deadline has passed",
        {},
    ),
    (
        "signed refusal DEADLINE_EXCEEDED (check 8): deadline beyond now + deadline_horizon",
        "DEADLINE_EXCEEDED",
        "protocol.md §13.2 check 8, §18",
        "request deadline is too far ahead",
        {"max_deadline": DEADLINE - 1},
    ),
    (
        "signed refusal DEADLINE_EXCEEDED (completion): the answer was late, nothing charged",
        "DEADLINE_EXCEEDED",
        "protocol.md §13.3, §18",
        "the answer was ready after the request's deadline; nothing charged",
        {"deadline": DEADLINE},
    ),
    (
        "signed refusal UNKNOWN_SERVICE (check 9)",
        "UNKNOWN_SERVICE",
        "protocol.md §13.2 check 9, §18",
        "no service 'echo'",
        {},
    ),
    (
        "signed refusal BODY_TOO_LARGE (check 10), details.max_body",
        "BODY_TOO_LARGE",
        "protocol.md §13.2 check 10, §18",
        "body over 4 bytes",
        {"max_body": 4},
    ),
    (
        "signed refusal MALFORMED (check 11): the body does not match body_hash",
        "MALFORMED",
        "protocol.md §13.2 check 11, §18",
        "body does not match its hash",
        {},
    ),
    (
        "signed refusal HANDLER_ERROR: the answer is too large to claim, details.max_body",
        "HANDLER_ERROR",
        "protocol.md §13.3, §18",
        "answer of 40000 bytes is over the ledger's claim body limit of 32768 bytes",
        {"max_body": 32768},
    ),
    (
        "signed refusal OVERLOADED after admission (reservation released)",
        "OVERLOADED",
        "protocol.md §13.2, §13.3, §18",
        "gave up: no capacity",
        {},
    ),
    (
        "signed refusal INTERNAL (the payee's own failure after admission)",
        "INTERNAL",
        "protocol.md §13.3, §18",
        "store unavailable",
        {},
    ),
    (
        "signed refusal INVALID_SIGNATURE (13.4 c: an earlier unchecked voucher failed)",
        "INVALID_SIGNATURE",
        "protocol.md §13.4, §18",
        "a voucher admitted earlier on this channel does not verify",
        {},
    ),
]


def _refusal_bodies() -> dict[bytes, tuple[str, dict[str, Any]]]:
    out = {}
    for _, _, _, message, details in SIGNED_REFUSALS:
        out[refusal_body(message, details)] = (message, details)
    for message, details in (
        ("service costs 2000, request allows 7", {"price": 2000}),
        ("handler failed", {}),
        (
            "credit 0 is below the price 1000000000000000000000",
            {"price": 10**21, "credit": 0, "spent": 2**64},
        ),
    ):
        out[refusal_body(message, details)] = (message, details)
    return out


REFUSAL_BODIES = _refusal_bodies()


def build_responses(made: list[tuple[bytes, dict[str, Any], bytes]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def good(
        description: str,
        index: int,
        *,
        status: str,
        price: int,
        spent: int,
        body: bytes,
        section: str | None = None,
    ) -> None:
        req_signed, req, _ = made[index]
        fields = response_fields(
            req_signed, req, status=status, price=price, spent=spent, body=body
        )
        extra: dict[str, Any] = {"request_index": index}
        if status != "OK":  # a signed refusal: its body is the refusal body
            refusal = REFUSAL_BODIES[body]
            extra["message"] = refusal[0]
            extra["details"] = as_json(refusal[1])
        out.append(
            entry(
                description,
                kind=2,
                signer=BOB,
                signed=enc(fields),
                body=body,
                fields=fields,
                expected_ledger=req["ledger"],
                extra=extra,
                section=section,
            )
        )

    def refused(
        description: str,
        index: int,
        status: str,
        spent: int,
        section: str,
        message: str,
        details: dict[str, Any],
    ) -> None:
        good(
            description,
            index,
            status=status,
            price=0,
            spent=spent,
            body=refusal_body(message, details),
            section=section,
        )

    good(
        "OK receipt for requests[0]: price 1000, spent 1000",
        0,
        status="OK",
        price=1000,
        spent=1000,
        body=b"hello back",
    )
    good(
        "OK receipt for requests[1], a free call: price 0, spent unchanged",
        1,
        status="OK",
        price=0,
        spent=1000,
        body=b"pong",
    )
    good(
        "OK receipt with spent above 2**64: price 1 token",
        2,
        status="OK",
        price=TOKEN,
        spent=TOKEN + 1000,
        body=b"hello back",
    )
    good(
        "integer boundaries: price = 2**64 (smallest bignum), spent = 2**64 + 1000, empty body",
        3,
        status="OK",
        price=2**64,
        spent=2**64 + 1000,
        body=b"",
    )
    good(
        "extremes: n = 2**64 - 1, price = spent = 2**128 - 1",
        4,
        status="OK",
        price=MAX_YOCTO,
        spent=MAX_YOCTO,
        body=b"done",
    )
    refused(
        "signed refusal PAYMENT_REQUIRED (check 12): price 0, details.price = 2000",
        5,
        "PAYMENT_REQUIRED",
        1000,
        "protocol.md §13.2 check 12, §18",
        "service costs 2000, request allows 7",
        {"price": 2000},
    )
    refused(
        "signed refusal HANDLER_ERROR: the reservation was released, price 0",
        6,
        "HANDLER_ERROR",
        1000,
        "protocol.md §13.3, §18",
        "handler failed",
        {},
    )
    refused(
        "signed refusal PAYMENT_REQUIRED, credit short (check 12'): amounts above 2**64",
        8,
        "PAYMENT_REQUIRED",
        2**64,
        "protocol.md §13.2 check 12', §18",
        "credit 0 is below the price 1000000000000000000000",
        {"price": 10**21, "credit": 0, "spent": 2**64},
    )
    good("1-byte ledger id, second channel", 7, status="OK", price=1, spent=1, body=bytes(100))
    # one signed refusal per code a payee signs (protocol.md §13.2 checks 7-12', §13.3,
    # §13.4 c), each answering requests[0]
    for description, status, section, message, details in SIGNED_REFUSALS:
        refused(description, 0, status, 0, section, message, details)

    req_signed, req, _ = made[0]
    base = response_fields(req_signed, req, status="OK", price=1000, spent=3000, body=b"ok")
    base_signed = enc(base)
    body = b"ok"

    def bad(description: str, error: str, fields: Any, signed: bytes, **kw: Any) -> None:
        out.append(
            entry(
                description,
                kind=2,
                signer=kw.pop("signer", BOB),
                signed=signed,
                body=kw.pop("body", body),
                fields=fields,
                error=error,
                **kw,
            )
        )

    bad(
        "signed by ALICE, presented as BOB's",
        "INVALID_SIGNATURE",
        base,
        base_signed,
        signer=ALICE,
        key=BOB,
    )
    flipped = bytearray(sign(BOB, base_signed))
    flipped[63] ^= 0x80
    bad(
        "BOB's signature with the top bit of S flipped",
        "INVALID_SIGNATURE",
        base,
        base_signed,
        signature=bytes(flipped),
    )
    other = dict(base, ledger=OTHER_LEDGER)
    bad(
        f"signed for ledger {OTHER_LEDGER.decode()!r}; the receiver expects {LEDGER.decode()!r}",
        "WRONG_LEDGER",
        other,
        enc(other),
    )
    bad(
        "a request's signed bytes (signed by ALICE) inside a response frame",
        "WRONG_DOMAIN",
        req,
        req_signed,
        signer=ALICE,
        body=b"hello",
    )
    bad(
        "non-canonical: spent = 3000 written with an 8-byte argument",
        "MALFORMED",
        base,
        with_value(base, "spent", head(0, 3000, width=8)),
    )
    items = sorted((enc(k), enc(v)) for k, v in base.items())
    bad(
        "non-canonical: map keys out of order ('status' first)",
        "MALFORMED",
        base,
        enc_map(sorted(items, key=lambda kv: kv[0] != enc("status"))),
    )
    bad(
        "non-canonical: duplicate key 'price'",
        "MALFORMED",
        base,
        enc_map(sorted([*items, (enc("price"), enc(1000))])),
        extra={"note": "the signed map repeats 'price'; fields show the decoded value"},
    )

    def shaped(description: str, fields: dict[str, Any]) -> None:
        bad(description, "MALFORMED", fields, enc(fields))

    shaped("missing field: request", {k: v for k, v in base.items() if k != "request"})
    shaped("extra field: note", dict(base, note="x"))
    shaped(
        "a refusal that charges: status PAYMENT_REQUIRED with price 1000",
        dict(base, status="PAYMENT_REQUIRED"),
    )
    shaped(
        "spent below price (spent includes this response's price)",
        dict(base, price=1000, spent=999),
    )
    shaped("unknown status 'NOPE'", dict(base, status="NOPE"))
    shaped("status in lower case 'ok'", dict(base, status="ok"))
    shaped("status as an array", dict(base, status=["OK"]))
    shaped("status as a map", dict(base, status={"OK": True}))
    shaped("request hash of 33 bytes", dict(base, request=bytes(33)))
    shaped("n = 0", dict(base, n=0))
    shaped("spent = 2**128", dict(base, spent=2**128))
    shaped("price = -1000", dict(base, price=-1000))
    return out


# --------------------------------------------------------------------------- hellos

EVM_CHAIN = 31337  # anvil's chain id
EVM_CONTRACT = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
EVM_LEDGER = b"p2pay:evm:" + EVM_CHAIN.to_bytes(8, "big") + EVM_CONTRACT  # settlement.md §12
EVM_LEDGER_2 = b"p2pay:evm:" + EVM_CHAIN.to_bytes(8, "big") + bytes(19) + b"\x01"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HELLO_HORIZON = 3_600_000
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def keccak256(data: bytes) -> bytes:
    from Crypto.Hash import keccak

    return keccak.new(digest_bits=256, data=data).digest()


def peer_id(seed: bytes) -> str:
    """protocol.md §2: base58btc of the identity multihash of the protobuf public key."""
    raw = b"\x00\x24\x08\x01\x12\x20" + public(seed)
    number = int.from_bytes(raw, "big")
    text = ""
    while number:
        number, digit = divmod(number, 58)
        text = B58[digit] + text
    return "1" * (len(raw) - len(raw.lstrip(b"\x00"))) + text


def evm_secret(seed: bytes) -> bytes:
    """settlement.md §10 "Identity": the settlement key derived from an Ed25519 seed."""
    for counter in range(256):
        secret = blake2b256(b"p2pay/v1/evm-key" + seed + bytes([counter]))
        if 0 < int.from_bytes(secret, "big") < SECP256K1_N:
            return secret
    raise AssertionError("no key")  # pragma: no cover


def evm_account(seed: bytes) -> bytes:
    import coincurve

    point = coincurve.PrivateKey(evm_secret(seed)).public_key.format(compressed=False)
    return bytes(12) + keccak256(point[1:])[12:]


def binding_digest(ledger: bytes, peer: bytes) -> bytes:
    return keccak256(enc({"domain": "p2pay/v1/bind", "ledger": ledger, "peer": peer}))


def binding_proof(seed: bytes, ledger: bytes, peer: bytes) -> bytes:
    """The account key's 65-byte r || s || v signature binding it to `peer` (§9 rule 4)."""
    import coincurve

    raw = coincurve.PrivateKey(evm_secret(seed)).sign_recoverable(
        binding_digest(ledger, peer), hasher=None
    )
    return raw[:64] + bytes([27 + raw[64]])


ECHO_TERMS = {"name": "echo", "price": 1000, "max_body": 65536}


def hello_fields(
    seed: bytes,
    *,
    ledger: bytes = LEDGER,
    services: list[dict[str, Any]] | None = None,
    stake: dict[str, Any] | None = None,
    max_in_flight: int = 64,
    max_frame: int = 1 << 20,
    deadline_horizon: int = HELLO_HORIZON,
    version: int = 2,
) -> dict[str, Any]:
    evm = ledger.startswith(b"p2pay:evm:") and len(ledger) == 38
    return {
        "domain": "p2pay/v1/hello",
        "version": version,
        "ledger": ledger,
        "services": [ECHO_TERMS] if services is None else services,
        "stake": stake,
        "max_in_flight": max_in_flight,
        "max_frame": max_frame,
        "account": evm_account(seed) if evm else public(seed),
        "account_proof": binding_proof(seed, ledger, public(seed)) if evm else b"",
        "deadline_horizon": deadline_horizon,
    }


def hello_entry(
    description: str,
    fields: dict[str, Any],
    *,
    signer: bytes,
    section: str,
    peer: bytes | None = None,
    expected_ledger: bytes = LEDGER,
    signed: bytes | None = None,
    frame: bytes | None = None,
    error: str | None = None,
    refusal_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One hello vector; `peer` is the stream's remote key (default: the signer)."""
    peer = signer if peer is None else peer
    signed = enc(fields) if signed is None else signed
    sig = sign(signer, signed)
    out: dict[str, Any] = {"description": description, "valid": error is None}
    if error is not None:
        out["error"] = error
        out["refusal_details"] = as_json(refusal_details or {})
    out["section"] = section
    out["public_key_hex"] = public(peer).hex()
    out["peer_id"] = peer_id(peer)
    out["expected_ledger_hex"] = expected_ledger.hex()
    out["signing_bytes_hex"] = signed.hex()
    out["signature_hex"] = sig.hex()
    out["fields"] = as_json(fields)
    out["frame_hex"] = (enc([0, signed, sig]) if frame is None else frame).hex()
    ledger = fields.get("ledger") if isinstance(fields, dict) else None
    if error is None and isinstance(ledger, bytes) and ledger.startswith(b"p2pay:evm:"):
        out["evm_address_hex"] = evm_account(signer)[12:].hex()
        out["binding_digest_hex"] = binding_digest(ledger, public(signer)).hex()
    return out


def build_hellos() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rule3 = "protocol.md §9 rule 3"
    out.append(
        hello_entry(
            "Ed25519 ledger: one service, no stake, account_proof empty (h''), "
            "deadline_horizon 3600000",
            hello_fields(ALICE),
            signer=ALICE,
            section="protocol.md §9",
        )
    )
    out.append(
        hello_entry(
            "Ed25519 ledger, a staked payee: two services (one UTF-8 name, one bignum price at "
            "nesting level 4, the signed-map limit), max_in_flight 1, max_frame 4096, "
            "deadline_horizon 1",
            hello_fields(
                BOB,
                services=[
                    {"name": "echo", "price": 0, "max_body": 0},
                    {"name": "r\u00e9sum\u00e9", "price": MAX_YOCTO, "max_body": MAX_U64},
                ],
                stake={"amount": 2**100, "penalty": TOKEN, "window": 60_000},
                max_in_flight=1,
                max_frame=4096,
                deadline_horizon=1,
            ),
            signer=BOB,
            section="protocol.md §6, §9",
        )
    )
    out.append(
        hello_entry(
            "Ed25519 ledger, no services, every limit at 2**64 - 1, 1-byte ledger id",
            hello_fields(
                ALICE,
                ledger=b"L",
                services=[],
                max_in_flight=MAX_U64,
                max_frame=MAX_U64,
                deadline_horizon=MAX_U64,
            ),
            signer=ALICE,
            section="protocol.md §9",
            expected_ledger=b"L",
        )
    )
    evm_alice = hello_fields(ALICE, ledger=EVM_LEDGER)
    out.append(
        hello_entry(
            "EVM ledger (chain 31337): account = ALICE's derived EVM account, account_proof = "
            "its 65-byte binding signature",
            evm_alice,
            signer=ALICE,
            section="protocol.md §9 rule 4; settlement.md §10, §12",
            expected_ledger=EVM_LEDGER,
        )
    )
    out.append(
        hello_entry(
            "EVM ledger: BOB, staked, no services",
            hello_fields(
                BOB,
                ledger=EVM_LEDGER,
                services=[],
                stake={"amount": TOKEN, "penalty": 10**22, "window": 360_000},
            ),
            signer=BOB,
            section="protocol.md §9 rule 4; settlement.md §10, §12",
            expected_ledger=EVM_LEDGER,
        )
    )

    base = hello_fields(ALICE)

    def bad(description: str, error: str, fields: Any, section: str = rule3, **kw: Any) -> None:
        out.append(
            hello_entry(
                description, fields, error=error, section=section, **{"signer": ALICE, **kw}
            )
        )

    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in base.items() if k != key}

    # --- decoding (MALFORMED), the first check
    bad(
        "missing account_proof (the 9-key hello of the old spec)",
        "MALFORMED",
        without("account_proof"),
    )
    bad("missing deadline_horizon", "MALFORMED", without("deadline_horizon"))
    bad("extra key: memo", "MALFORMED", dict(base, memo="hi"))
    bad("deadline_horizon 0", "MALFORMED", dict(base, deadline_horizon=0))
    bad("deadline_horizon 2**64", "MALFORMED", dict(base, deadline_horizon=2**64))
    bad("max_frame 4095", "MALFORMED", dict(base, max_frame=4095))
    bad("max_in_flight 0", "MALFORMED", dict(base, max_in_flight=0))
    bad(
        "account_proof of 65 bytes on an Ed25519 ledger",
        "MALFORMED",
        dict(base, account_proof=bytes(64) + b"\x1b"),
    )
    bad("account_proof null", "MALFORMED", dict(base, account_proof=None))
    bad(
        "EVM ledger, account_proof empty",
        "MALFORMED",
        dict(evm_alice, account_proof=b""),
        expected_ledger=EVM_LEDGER,
    )
    bad(
        "EVM ledger, account is an Ed25519 key (not 12 zero bytes + address)",
        "MALFORMED",
        dict(evm_alice, account=public(ALICE)),
        expected_ledger=EVM_LEDGER,
    )
    bad(
        "EVM ledger, account is the zero address",
        "MALFORMED",
        dict(evm_alice, account=bytes(32)),
        expected_ledger=EVM_LEDGER,
    )
    bad("two services named echo", "MALFORMED", dict(base, services=[ECHO_TERMS, ECHO_TERMS]))
    bad(
        "257 services",
        "MALFORMED",
        dict(base, services=[{"name": f"s{i}", "price": 1, "max_body": 1} for i in range(257)]),
    )
    bad("a service with an extra key", "MALFORMED", dict(base, services=[dict(ECHO_TERMS, x=1)]))
    bad(
        "stake with key claim_window_ms instead of window",
        "MALFORMED",
        dict(base, stake={"amount": 1, "penalty": 1, "claim_window_ms": 1}),
    )
    bad(
        "service price nested one level beyond the signed-map limit: [bignum] at level 5",
        "MALFORMED",
        dict(base, services=[dict(ECHO_TERMS, price=[2**64])]),
        section="protocol.md §6, §9",
    )
    items = sorted((enc(k), enc(v)) for k, v in base.items())
    bad(
        "non-canonical: keys in reverse order",
        "MALFORMED",
        base,
        signed=enc_map(list(reversed(items))),
        section="protocol.md §6",
    )
    signed = enc(base)
    bad(
        "hello frame of 4 items",
        "MALFORMED",
        base,
        frame=enc([0, signed, sign(ALICE, signed), b""]),
        section="protocol.md §7",
    )
    req = request_fields(n=1, paid=1000, price=1000)
    bad(
        "a request's signed bytes (signed by ALICE) in a hello frame",
        "WRONG_DOMAIN",
        req,
        section="protocol.md §8",
    )
    # --- version, ledger, signature, account, in this order
    bad("version 1", "VERSION_MISMATCH", dict(base, version=1), refusal_details={"version": 2})
    bad(
        "version 3 and another ledger: the version is checked first",
        "VERSION_MISMATCH",
        dict(base, version=3, ledger=OTHER_LEDGER),
        refusal_details={"version": 2},
    )
    bad(
        f"ledger {OTHER_LEDGER.decode()!r}; the receiver's is {LEDGER.decode()!r}",
        "WRONG_LEDGER",
        dict(base, ledger=OTHER_LEDGER),
    )
    bad(
        "another ledger and signed by MALLORY: the ledger is checked first",
        "WRONG_LEDGER",
        dict(base, ledger=OTHER_LEDGER),
        signer=MALLORY,
        peer=ALICE,
    )
    bad(
        "signed by MALLORY on ALICE's stream", "INVALID_SIGNATURE", base, signer=MALLORY, peer=ALICE
    )
    bad(
        "Ed25519 ledger: account is BOB's key, signed by ALICE on ALICE's stream",
        "UNAUTHORIZED",
        dict(base, account=public(BOB)),
    )
    bad(
        "EVM ledger: MALLORY's hello naming ALICE's account with ALICE's proof",
        "UNAUTHORIZED",
        dict(evm_alice),
        signer=MALLORY,
        expected_ledger=EVM_LEDGER,
        section="protocol.md §9 rules 3-4",
    )
    bad(
        "EVM ledger: ALICE's proof made for another EVM ledger",
        "UNAUTHORIZED",
        dict(evm_alice, account_proof=binding_proof(ALICE, EVM_LEDGER_2, public(ALICE))),
        expected_ledger=EVM_LEDGER,
        section="protocol.md §9 rules 3-4",
    )
    return out


# --------------------------------------------------------------------------- offers

OFFER_NOW = DEADLINE  # the receiver's clock in every offer vector
OFFER_LIFETIME = 86_400_000  # discovery.md §3 check 7
STAKE_TERMS = {"amount": TOKEN, "penalty": 10**22, "window": 60_000}


def offer_addrs(seed: bytes, *hosts: str) -> list[str]:
    return [f"{host}/p2p/{peer_id(seed)}" for host in hosts or ("/ip4/127.0.0.1/tcp/4001",)]


def offer_fields(
    seed: bytes,
    *,
    ledger: bytes = LEDGER,
    service: dict[str, Any] | None = None,
    stake: dict[str, Any] | None = None,
    addrs: list[str] | None = None,
    seq: int = 1,
    expires: int = OFFER_NOW + 180_000,
    version: int = 2,
) -> dict[str, Any]:
    """discovery.md §2: the 11 keys of an offer's signed map, made by the seed's peer."""
    evm = ledger.startswith(b"p2pay:evm:") and len(ledger) == 38
    return {
        "domain": "p2pay/v1/offer",
        "version": version,
        "ledger": ledger,
        "peer": public(seed),
        "account": evm_account(seed) if evm else public(seed),
        "account_proof": binding_proof(seed, ledger, public(seed)) if evm else b"",
        "service": ECHO_TERMS if service is None else service,
        "stake": STAKE_TERMS if stake is None else stake,
        "addrs": offer_addrs(seed) if addrs is None else addrs,
        "seq": seq,
        "expires": expires,
    }


def offer_entry(
    description: str,
    fields: Any,
    *,
    signer: bytes,
    section: str,
    peer: bytes | None = None,
    expected_ledger: bytes = LEDGER,
    now: int = OFFER_NOW,
    signed: bytes | None = None,
    offer: bytes | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One offer vector; `peer` is the seed whose key is the offer's `peer` (default: the
    signer's); `offer` replaces the encoded offer `[4, signed, signature]`."""
    peer = signer if peer is None else peer
    signed = enc(fields) if signed is None else signed
    sig = sign(signer, signed)
    out: dict[str, Any] = {"description": description, "valid": error is None}
    if error is not None:
        out["error"] = error
    out["section"] = section
    out["public_key_hex"] = public(peer).hex()
    out["peer_id"] = peer_id(peer)
    out["expected_ledger_hex"] = expected_ledger.hex()
    out["now_ms"] = str(now)
    out["signing_bytes_hex"] = signed.hex()
    out["signature_hex"] = sig.hex()
    out["fields"] = as_json(fields)
    out["offer_hex"] = (enc([4, signed, sig]) if offer is None else offer).hex()
    ledger = fields.get("ledger") if isinstance(fields, dict) else None
    if error is None and isinstance(ledger, bytes) and ledger.startswith(b"p2pay:evm:"):
        out["evm_address_hex"] = evm_account(signer)[12:].hex()
        out["binding_digest_hex"] = binding_digest(ledger, public(signer)).hex()
    return out


def build_offers() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    checks = "discovery.md §3"
    out.append(
        offer_entry(
            "Ed25519 ledger: BOB offers echo at 1000 yocto, 1 token staked, one address, seq 1, "
            "expires in 3 minutes",
            offer_fields(BOB),
            signer=BOB,
            section="discovery.md §2",
        )
    )
    # an address of exactly 256 bytes, BOB's /p2p/ suffix included
    suffix = len(".example/tcp/1") + len("/p2p/" + peer_id(BOB))
    long_host = "/dns4/" + "a" * (256 - len("/dns4/") - suffix) + ".example/tcp/1"
    addrs = offer_addrs(
        BOB,
        long_host,
        *(f"/ip4/10.0.0.{i}/tcp/4001" for i in range(1, 7)),
        "/ip6/::1/udp/4001/quic-v1",
    )
    assert len(addrs[0]) == 256 and len(addrs) == 8
    big = offer_fields(
        BOB,
        service={"name": "\u00e9" * 32, "price": MAX_YOCTO, "max_body": MAX_U64},
        stake={"amount": 2**100, "penalty": MAX_YOCTO, "window": MAX_U64},
        addrs=addrs,
        seq=MAX_U64,
        expires=OFFER_NOW + OFFER_LIFETIME,
    )
    out.append(
        offer_entry(
            "Ed25519 ledger: a UTF-8 service name of 64 bytes, price 2**128 - 1 and stake 2**100 "
            "(bignums), max_body 2**64 - 1, 8 addresses (the first of 256 bytes), seq "
            "2**64 - 1, expires exactly 24 h ahead",
            big,
            signer=BOB,
            section="discovery.md §2, §3 check 7",
        )
    )
    out.append(
        offer_entry(
            "Ed25519 ledger: expires 1 ms after now (still live), 1-byte ledger id",
            offer_fields(ALICE, ledger=b"L", expires=OFFER_NOW + 1),
            signer=ALICE,
            section="discovery.md §3 check 7",
            expected_ledger=b"L",
        )
    )
    evm_bob = offer_fields(BOB, ledger=EVM_LEDGER)
    out.append(
        offer_entry(
            "EVM ledger (chain 31337): account = BOB's derived EVM account, account_proof = its "
            "65-byte binding signature, as in BOB's hello",
            evm_bob,
            signer=BOB,
            section="discovery.md §2; protocol.md §9 rule 4",
            expected_ledger=EVM_LEDGER,
        )
    )

    base = offer_fields(BOB)

    def bad(description: str, error: str, fields: Any, section: str = checks, **kw: Any) -> None:
        out.append(
            offer_entry(
                description,
                fields,
                error=error,
                section=section,
                **{"signer": BOB, "peer": BOB, **kw},
            )
        )

    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in base.items() if k != key}

    signed = enc(base)
    good_sig = sign(BOB, signed)
    # --- size (FRAME_TOO_LARGE), before anything is parsed
    padded = dict(
        base,
        addrs=[f"/ip4/10.0.0.{i}/tcp/4001/p2p/{peer_id(BOB)}" for i in range(44)] + ["/x"],
    )
    while len(enc([4, enc(padded), good_sig])) < 4097:
        padded["addrs"][-1] += "x"
    assert len(enc([4, enc(padded), good_sig])) == 4097
    bad("4097 bytes (45 addresses): too large, not parsed", "FRAME_TOO_LARGE", padded)
    # --- decoding (MALFORMED / WRONG_DOMAIN)
    bad("missing seq", "MALFORMED", without("seq"))
    bad("missing account_proof", "MALFORMED", without("account_proof"))
    bad("extra key: memo", "MALFORMED", dict(base, memo="hi"))
    bad("stake null (an offer without stake is not an offer)", "MALFORMED", dict(base, stake=None))
    bad(
        "stake with key claim_window_ms instead of window",
        "MALFORMED",
        dict(base, stake={"amount": 1, "penalty": 1, "claim_window_ms": 1}),
    )
    bad("service with an extra key", "MALFORMED", dict(base, service=dict(ECHO_TERMS, x=1)))
    bad(
        "service as an array of services (the hello's form)",
        "MALFORMED",
        dict(base, service=[ECHO_TERMS]),
    )
    bad(
        "service name of 65 bytes", "MALFORMED", dict(base, service=dict(ECHO_TERMS, name="x" * 65))
    )
    bad("service price 2**128", "MALFORMED", dict(base, service=dict(ECHO_TERMS, price=2**128)))
    bad("stake amount -1", "MALFORMED", dict(base, stake=dict(STAKE_TERMS, amount=-1)))
    bad("addrs empty", "MALFORMED", dict(base, addrs=[]))
    bad(
        "9 addresses",
        "MALFORMED",
        dict(base, addrs=offer_addrs(BOB, *(f"/ip4/10.0.0.{i}/tcp/1" for i in range(9)))),
    )
    bad(
        "an address of 257 bytes",
        "MALFORMED",
        dict(
            base, addrs=["/" + "a" * (256 - len("/p2p/" + peer_id(BOB))) + "/p2p/" + peer_id(BOB)]
        ),
    )
    bad(
        "an address with a space",
        "MALFORMED",
        dict(base, addrs=offer_addrs(BOB, "/ip4/1.2.3.4 /tcp/1")),
    )
    bad(
        "an address with a non-ASCII character",
        "MALFORMED",
        dict(base, addrs=offer_addrs(BOB, "/dns4/\u00e9.example/tcp/1")),
    )
    bad(
        "an address not starting with /",
        "MALFORMED",
        dict(base, addrs=offer_addrs(BOB, "ip4/1.2.3.4/tcp/1")),
    )
    bad("an address as bytes", "MALFORMED", dict(base, addrs=[base["addrs"][0].encode()]))
    bad("the same address twice", "MALFORMED", dict(base, addrs=base["addrs"] * 2))
    bad("seq 0", "MALFORMED", dict(base, seq=0))
    bad("seq 2**64", "MALFORMED", dict(base, seq=2**64))
    bad("expires 2**64", "MALFORMED", dict(base, expires=2**64))
    bad("version 2**64", "MALFORMED", dict(base, version=2**64))
    bad("peer of 31 bytes", "MALFORMED", dict(base, peer=public(BOB)[:31]))
    bad(
        "account_proof of 65 bytes on an Ed25519 ledger",
        "MALFORMED",
        dict(base, account_proof=bytes(64) + b"\x1b"),
    )
    bad(
        "EVM ledger, account_proof empty",
        "MALFORMED",
        dict(evm_bob, account_proof=b""),
        expected_ledger=EVM_LEDGER,
    )
    bad(
        "EVM ledger, account is an Ed25519 key (not 12 zero bytes + address)",
        "MALFORMED",
        dict(evm_bob, account=public(BOB)),
        expected_ledger=EVM_LEDGER,
    )
    bad(
        "service price nested one level beyond the signed-map limit: [[bignum]] at level 5",
        "MALFORMED",
        dict(base, service=dict(ECHO_TERMS, price=[[2**64]])),
        section="discovery.md §2.1; protocol.md §6",
    )
    items = sorted((enc(k), enc(v)) for k, v in base.items())
    bad(
        "non-canonical: keys in reverse order (validly signed)",
        "MALFORMED",
        base,
        signed=enc_map(list(reversed(items))),
        section="protocol.md §6",
    )
    bad(
        "non-canonical: seq 1 written on two bytes (validly signed)",
        "MALFORMED",
        base,
        signed=with_value(base, "seq", head(0, 1, 1)),
        section="protocol.md §6",
    )
    bad(
        "offer array of 4 items",
        "MALFORMED",
        base,
        offer=enc([4, signed, good_sig, b""]),
        section="discovery.md §2.1",
    )
    bad(
        "kind 0 (a hello's kind) around an offer's signed bytes",
        "MALFORMED",
        base,
        offer=enc([0, signed, good_sig]),
        section="discovery.md §2.1",
    )
    bad(
        "signature of 63 bytes",
        "MALFORMED",
        base,
        offer=enc([4, signed, good_sig[:63]]),
        section="discovery.md §2.1",
    )
    bad(
        "trailing byte after the array",
        "MALFORMED",
        base,
        offer=enc([4, signed, good_sig]) + b"\x00",
        section="discovery.md §2.1",
    )
    bad(
        "a map instead of the array",
        "MALFORMED",
        base,
        offer=enc({"kind": 4}),
        section="discovery.md §2.1",
    )
    hello = hello_fields(BOB, stake=STAKE_TERMS)
    bad(
        "BOB's hello signed bytes (signed by BOB) in an offer array",
        "WRONG_DOMAIN",
        hello,
        section="discovery.md §2.1; protocol.md §8",
    )
    # --- version, ledger, signature, binding, expiry, addresses: in this order
    bad("version 1", "VERSION_MISMATCH", dict(base, version=1))
    bad(
        "version 3 and another ledger: the version is checked first",
        "VERSION_MISMATCH",
        dict(base, version=3, ledger=OTHER_LEDGER),
    )
    bad(
        f"ledger {OTHER_LEDGER.decode()!r}; the receiver's is {LEDGER.decode()!r}",
        "WRONG_LEDGER",
        dict(base, ledger=OTHER_LEDGER),
    )
    bad(
        "another ledger and signed by MALLORY: the ledger is checked first",
        "WRONG_LEDGER",
        dict(base, ledger=OTHER_LEDGER),
        signer=MALLORY,
    )
    bad("BOB's offer signed by MALLORY", "INVALID_SIGNATURE", base, signer=MALLORY)
    flipped = bytearray(good_sig)
    flipped[0] ^= 1
    bad(
        "BOB's offer, its signature with one bit flipped",
        "INVALID_SIGNATURE",
        base,
        offer=enc([4, signed, bytes(flipped)]),
    )
    bad(
        "signed by MALLORY and expired: the signature is checked first",
        "INVALID_SIGNATURE",
        dict(base, expires=OFFER_NOW),
        signer=MALLORY,
    )
    bad(
        "Ed25519 ledger: account is ALICE's key in BOB's offer",
        "UNAUTHORIZED",
        dict(base, account=public(ALICE)),
    )
    evm_alice = offer_fields(ALICE, ledger=EVM_LEDGER)
    bad(
        "EVM ledger: MALLORY's offer naming ALICE's account with ALICE's proof",
        "UNAUTHORIZED",
        dict(evm_alice, peer=public(MALLORY), addrs=offer_addrs(MALLORY)),
        signer=MALLORY,
        peer=MALLORY,
        expected_ledger=EVM_LEDGER,
        section="discovery.md §3 check 6; protocol.md §9 rule 4",
    )
    bad(
        "EVM ledger: BOB's proof made for another EVM ledger",
        "UNAUTHORIZED",
        dict(evm_bob, account_proof=binding_proof(BOB, EVM_LEDGER_2, public(BOB))),
        expected_ledger=EVM_LEDGER,
        section="discovery.md §3 check 6; protocol.md §9 rule 4",
    )
    bad("expires at now exactly (expired)", "DEADLINE_EXCEEDED", dict(base, expires=OFFER_NOW))
    bad("expired a day ago", "DEADLINE_EXCEEDED", dict(base, expires=OFFER_NOW - OFFER_LIFETIME))
    bad(
        "expires 24 h + 1 ms ahead",
        "DEADLINE_EXCEEDED",
        dict(base, expires=OFFER_NOW + OFFER_LIFETIME + 1),
    )
    bad(
        "expired and an address naming ALICE: the expiry is checked first",
        "DEADLINE_EXCEEDED",
        dict(base, expires=OFFER_NOW, addrs=offer_addrs(ALICE)),
    )
    bad(
        "BOB's offer with an address ending in ALICE's PeerID",
        "UNAUTHORIZED",
        dict(base, addrs=[base["addrs"][0], offer_addrs(ALICE, "/ip4/10.0.0.1/tcp/1")[0]]),
    )
    bad("an address without /p2p/", "UNAUTHORIZED", dict(base, addrs=["/ip4/127.0.0.1/tcp/4001"]))
    bad(
        "an address with a / after its /p2p/ PeerID",
        "UNAUTHORIZED",
        dict(base, addrs=[base["addrs"][0] + "/"]),
    )
    return out


# --------------------------------------------------------------------------- refusals (unsigned)


def refusal_frame(
    channel: bytes, n: int, code: str, message: str, details: dict[str, Any]
) -> bytes:
    return enc([3, channel, n, code, message, details])


def voucher_frame(n: int, paid: int, price: int = 1000, body: bytes = b"hello", **kw: Any) -> bytes:
    """A request frame signed by ALICE (the payer), with its body (as the payer sent it);
    `bodiless` gives it as resync details carry it."""
    signer = kw.pop("signer", ALICE)
    fields = request_fields(n=n, paid=paid, price=price, body=body, **kw)
    signed = enc(fields)
    signature = sign(signer, signed)
    frame = enc([1, signed, signature, body])
    _VOUCHER_PARTS[frame] = (signed, signature)
    return frame


_VOUCHER_PARTS: dict[bytes, tuple[bytes, bytes]] = {}


def bodiless(frame: bytes) -> bytes:
    """The request `frame` (made by `voucher_frame`) with an empty body: the resync
    details' `voucher` (protocol.md 15: `[1, signed, signature, h'']`; the body is bound by
    `body_hash` in the signed bytes, and without it a refusal always fits 4096 bytes)."""
    signed, signature = _VOUCHER_PARTS[frame]
    return enc([1, signed, signature, b""])


UNSIGNED_REFUSALS: list[tuple[str, str, bytes, int, str, str, dict[str, Any]]] = [
    (
        "a bad length prefix (non-minimal, or over 9 bytes)",
        "protocol.md §5.2 rule 1",
        b"",
        0,
        "MALFORMED",
        "non-minimal uvarint length prefix",
        {},
    ),
    (
        "a frame announced above the receiver's max_frame, with its limit",
        "protocol.md §5.2 rule 2",
        b"",
        0,
        "FRAME_TOO_LARGE",
        "peer announced a 1048577-byte frame, the limit is 1048576",
        {"max_frame": 1 << 20},
    ),
    (
        "a frame whose signed bytes are of another kind",
        "protocol.md §5.2 rule 4, §8",
        b"",
        0,
        "WRONG_DOMAIN",
        "domain tag is p2pay/v1/response, expected p2pay/v1/request",
        {},
    ),
    (
        "a frame that does not decode",
        "protocol.md §5.2 rule 4",
        b"",
        0,
        "MALFORMED",
        "trailing bytes after the top-level item",
        {},
    ),
    ("a second hello", "protocol.md §5.4, §9 rule 1", b"", 0, "MALFORMED", "a second hello", {}),
    (
        "a first frame that is not a hello",
        "protocol.md §5.4, §9 rule 2",
        b"",
        0,
        "MALFORMED",
        "expected a hello first",
        {},
    ),
    (
        "a request sent to the stream's caller: it names the request",
        "protocol.md §5.4",
        CHANNEL,
        7,
        "MALFORMED",
        "requests go on a stream their payer opens",
        {},
    ),
    (
        "no hello within the answerer's hello timeout",
        "protocol.md §5.4",
        b"",
        0,
        "DEADLINE_EXCEEDED",
        "no hello in time",
        {},
    ),
    (
        "a hello of another version, with the receiver's version",
        "protocol.md §9 rule 3, §18",
        b"",
        0,
        "VERSION_MISMATCH",
        "peer speaks version 1, we speak 2",
        {"version": 2},
    ),
    (
        "a hello for another ledger",
        "protocol.md §9 rule 3",
        b"",
        0,
        "WRONG_LEDGER",
        "message is for another ledger",
        {},
    ),
    (
        "a hello not signed by the stream's peer",
        "protocol.md §9 rule 3",
        b"",
        0,
        "INVALID_SIGNATURE",
        "signature does not verify",
        {},
    ),
    (
        "a hello whose account is not bound to the sender",
        "protocol.md §9 rules 3-4",
        b"",
        0,
        "UNAUTHORIZED",
        "the hello's account is not the sender's",
        {},
    ),
    (
        "a stream the answerer has no room for, in place of its hello",
        "protocol.md §19.1",
        b"",
        0,
        "OVERLOADED",
        "too many sessions; retry later",
        {},
    ),
    (
        "a request over the stream's max_in_flight, before admission",
        "protocol.md §13.2 check 0'",
        CHANNEL,
        9,
        "OVERLOADED",
        "too many requests in flight; retry later",
        {},
    ),
    (
        "a request for another ledger",
        "protocol.md §13.2 check 1",
        CHANNEL,
        9,
        "WRONG_LEDGER",
        "request is for another ledger",
        {},
    ),
    (
        "a request on a channel the payee is not payee of",
        "protocol.md §13.2 check 2",
        CHANNEL_2,
        1,
        "UNKNOWN_CHANNEL",
        "no such channel to this payee",
        {},
    ),
    (
        "a channel whose challenge period is below the payee's minimum",
        "protocol.md §13.2 check 2', §17",
        CHANNEL,
        1,
        "CHALLENGE_TOO_SHORT",
        "challenge period 1000 ms is below this payee's minimum 60000 ms",
        {"min_challenge_ms": 60_000},
    ),
    (
        "a request on a stream whose peer is not the channel's payer",
        "protocol.md §13.2 check 3",
        CHANNEL,
        9,
        "UNAUTHORIZED",
        "only the channel's payer may use it",
        {},
    ),
    (
        "a request whose signature is not the payer's",
        "protocol.md §13.2 check 4",
        CHANNEL,
        9,
        "INVALID_SIGNATURE",
        "voucher signature does not verify",
        {},
    ),
    (
        "REPLAY with the resync details: last_n, spent, paid_max and the checked voucher",
        "protocol.md §13.2 check 5, §15",
        CHANNEL,
        2,
        "REPLAY",
        "request number 2 is not above 3",
        {"last_n": 3, "spent": 2000, "paid_max": 3000, "voucher": bodiless(voucher_frame(3, 3000))},
    ),
    (
        "REPLAY when the payee holds no voucher: paid_max 0, no voucher key",
        "protocol.md §13.2 check 5, §15",
        CHANNEL,
        1,
        "REPLAY",
        "request number 1 is not above 2",
        {"last_n": 2, "spent": 0, "paid_max": 0},
    ),
    (
        "PAYMENT_REQUIRED of the slice rule, unsigned, with price and the resync details",
        "protocol.md §13.2 check 5', §15",
        CHANNEL,
        4,
        "PAYMENT_REQUIRED",
        "request's slice starts at 1000, below the paid_max 3000 already authorised",
        {
            "price": 1000,
            "last_n": 3,
            "spent": 2000,
            "paid_max": 3000,
            "voucher": bodiless(voucher_frame(3, 3000)),
        },
    ),
    (
        "INSUFFICIENT_DEPOSIT, unsigned, with amounts above 2**64",
        "protocol.md §13.2 check 5''",
        CHANNEL,
        4,
        "INSUFFICIENT_DEPOSIT",
        "voucher pays more than the deposit",
        {"deposit": 2**65, "paid_max": 2**64 + 1, "spent": 2**64},
    ),
    (
        "message of exactly 2048 bytes (512 four-byte characters)",
        "protocol.md §7, §12",
        CHANNEL,
        1,
        "UNKNOWN_CHANNEL",
        "\U0001f600" * 512,
        {},
    ),
    (
        "a settlement code decodes (forward compatibility) though a sender never uses it",
        "protocol.md §18",
        b"",
        0,
        "INSUFFICIENT_FUNDS",
        "",
        {},
    ),
]


def refusal_entry(
    description: str,
    section: str,
    frame: bytes,
    *,
    error: str | None = None,
    value: tuple[bytes, int, str, str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "valid": error is None}
    if error is not None:
        out["error"] = error
    out["section"] = section
    if value is not None:
        channel, n, code, message, details = value
        out["channel_hex"] = channel.hex()
        out["n"] = str(n)
        out["code"] = code
        out["message"] = message
        out["details"] = as_json(details)
    out["frame_hex"] = frame.hex()
    return out


def build_refusals() -> list[dict[str, Any]]:
    out = []
    for description, section, channel, n, code, message, details in UNSIGNED_REFUSALS:
        value = (channel, n, code, message, details)
        out.append(refusal_entry(description, section, refusal_frame(*value), value=value))
    frame_rules = "protocol.md §7, §12"

    def bad(description: str, frame: bytes, section: str = frame_rules) -> None:
        out.append(refusal_entry(description, section, frame, error="MALFORMED"))

    bad("unknown code NOPE", enc([3, CHANNEL, 1, "NOPE", "", {}]))
    bad("code in lower case", enc([3, CHANNEL, 1, "replay", "", {}]))
    bad("code as an integer", enc([3, CHANNEL, 1, 5, "", {}]))
    bad("empty channel with n = 1", enc([3, b"", 1, "MALFORMED", "", {}]))
    bad("channel of 31 bytes", enc([3, CHANNEL[:31], 1, "MALFORMED", "", {}]))
    bad("n = -1", enc([3, CHANNEL, -1, "MALFORMED", "", {}]))
    bad("n = 2**64 (a bignum)", enc([3, CHANNEL, 2**64, "MALFORMED", "", {}]))
    bad("message of 2049 bytes", enc([3, CHANNEL, 1, "MALFORMED", "x" * 2049, {}]))
    bad("message as bytes", enc([3, CHANNEL, 1, "MALFORMED", b"oops", {}]))
    bad("details as an array", enc([3, CHANNEL, 1, "MALFORMED", "", []]))
    bad("details with an integer key", enc([3, CHANNEL, 1, "MALFORMED", "", {1: 2}]))
    bad("5 items", enc([3, CHANNEL, 1, "MALFORMED", ""]))
    bad("7 items", enc([3, CHANNEL, 1, "MALFORMED", "", {}, 0]))
    bad(
        "non-canonical: details keys out of order",
        head(4, 6)
        + enc(3)
        + enc(CHANNEL)
        + enc(1)
        + enc("REPLAY")
        + enc("")
        + enc_map([(enc("paid_max"), enc(0)), (enc("spent"), enc(0)), (enc("last_n"), enc(1))]),
        section="protocol.md §6",
    )
    return out


# --------------------------------------------------------------------------- framing


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def nested(levels: int, inner: Any) -> Any:
    for _ in range(levels):
        inner = [inner]
    return inner


def request_frame_of_size(size: int) -> bytes:
    """A valid request frame (ALICE's) of exactly `size` bytes, by choosing its body."""
    for body_len in range(size, -1, -1):
        frame = voucher_frame(1, 1000, body=bytes(body_len))
        if len(frame) == size:
            return frame
        if len(frame) < size:
            break
    raise AssertionError(f"no request frame of {size} bytes")  # pragma: no cover


def framing_entry(
    description: str,
    section: str,
    wire: bytes,
    result: str,
    *,
    max_frame: int = 4096,
    frames: Sequence[bytes] = (),
    stage: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "section": section}
    out["max_frame"] = str(max_frame)
    out["input_hex"] = wire.hex()
    out["result"] = result
    out["frames_hex"] = [f.hex() for f in frames]
    if stage is not None:
        out["refused_at"] = stage
    if result != "accept":
        out["details"] = as_json(details or {})
    return out


def build_framing() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    small = refusal_frame(b"", 0, "MALFORMED", "", {})
    two_byte = refusal_frame(b"", 0, "MALFORMED", "x" * 183, {})  # 200 bytes: a 2-byte prefix
    assert len(two_byte) == 200

    def add(*args: Any, **kw: Any) -> None:
        out.append(framing_entry(*args, **kw))

    prefix = "protocol.md §5.2"
    add(
        f"1-byte prefix {len(small):02x} and a {len(small)}-byte refusal frame",
        prefix,
        uvarint(len(small)) + small,
        "accept",
        frames=[small],
    )
    add(
        "2-byte prefix c8 01 (200) and a 200-byte frame",
        prefix,
        uvarint(200) + two_byte,
        "accept",
        frames=[two_byte],
    )
    add(
        "two frames in one read",
        prefix,
        uvarint(len(small)) + small + uvarint(200) + two_byte,
        "accept",
        frames=[small, two_byte],
    )
    add(
        "non-minimal prefix 89 00 (9 written in 2 bytes)",
        prefix + " rule 1",
        b"\x89\x00" + small,
        "MALFORMED",
        stage="prefix",
    )
    add(
        "non-minimal prefix 80 00 (0 written in 2 bytes)",
        prefix + " rule 1",
        b"\x80\x00",
        "MALFORMED",
        stage="prefix",
    )
    add(
        "prefix of 10 bytes (the 9th still has its high bit set)",
        prefix + " rule 1",
        b"\xff" * 9 + b"\x01",
        "MALFORMED",
        stage="prefix",
    )
    add(
        "longest valid prefix (9 bytes, 2**63 - 1): far above max_frame",
        prefix + " rule 2",
        b"\xff" * 8 + b"\x7f",
        "FRAME_TOO_LARGE",
        stage="prefix",
        details={"max_frame": 4096},
    )
    add("zero length 00: an empty frame", prefix + " rule 3-4", b"\x00", "MALFORMED", stage="frame")
    add(
        "a good frame, then a non-minimal prefix: the first frame is taken",
        prefix,
        uvarint(len(small)) + small + b"\x85\x00",
        "MALFORMED",
        frames=[small],
        stage="prefix",
    )
    exact = request_frame_of_size(4096)
    add(
        "a frame of exactly max_frame (4096) bytes, prefix 80 20",
        prefix + " rule 2, §5.3",
        uvarint(4096) + exact,
        "accept",
        frames=[exact],
    )
    add(
        "prefix 81 20 announcing max_frame + 1 (4097): refused before any of the body",
        prefix + " rule 2",
        uvarint(4097) + exact[:16],
        "FRAME_TOO_LARGE",
        stage="prefix",
        details={"max_frame": 4096},
    )
    add(
        "prefix 81 80 40 announcing 1 MiB + 1 to a receiver whose max_frame is 1 MiB",
        prefix + " rule 2, §5.3",
        uvarint((1 << 20) + 1),
        "FRAME_TOO_LARGE",
        max_frame=1 << 20,
        stage="prefix",
        details={"max_frame": 1 << 20},
    )
    trailing = small + b"\x00"
    add(
        "a frame with a trailing byte inside its declared length",
        prefix + " rule 4, §6",
        uvarint(len(trailing)) + trailing,
        "MALFORMED",
        stage="frame",
    )

    # nesting (protocol.md §6): arrays, maps and tags are levels; limit 8 in a frame
    depth = "protocol.md §6"

    def refusal_nesting(inner: Any) -> bytes:  # array (1) > details map (2) > inner (3..)
        return refusal_frame(b"", 0, "MALFORMED", "", {"x": inner})

    for description, frame, result in (
        (
            "frame nesting 8: refusal array, details map, 6 arrays around 0",
            refusal_nesting(nested(6, 0)),
            "accept",
        ),
        ("frame nesting 9: one array more", refusal_nesting(nested(7, 0)), "MALFORMED"),
        (
            "frame nesting 8 with a bignum (tag 2) as the 8th level",
            refusal_nesting(nested(5, 2**64)),
            "accept",
        ),
        (
            "frame nesting 9 with a bignum as the 9th level",
            refusal_nesting(nested(6, 2**64)),
            "MALFORMED",
        ),
        (
            "frame nesting 9 with an empty array as the 9th level (empty containers count)",
            refusal_nesting(nested(6, [])),
            "MALFORMED",
        ),
        (
            "frame nesting 8 with maps: details map, then maps and arrays",
            refusal_nesting({"a": [{"b": [{"c": [0]}]}]}),
            "accept",
        ),
    ):
        add(
            description,
            depth,
            uvarint(len(frame)) + frame,
            result,
            frames=[frame] if result == "accept" else [],
            stage=None if result == "accept" else "frame",
        )

    # a signed map is decoded from its own bytes: its levels count from 1, limit 4
    hello4 = hello_fields(BOB, services=[{"name": "big", "price": MAX_YOCTO, "max_body": 1}])
    signed4 = enc(hello4)
    frame4 = enc([0, signed4, sign(BOB, signed4)])
    add(
        "signed-map nesting 4: a hello whose service price is a bignum (map, services, "
        "service, tag)",
        depth + ", §9",
        uvarint(len(frame4)) + frame4,
        "accept",
        frames=[frame4],
    )
    hello5 = hello_fields(BOB, services=[{"name": "big", "price": [MAX_YOCTO], "max_body": 1}])
    signed5 = enc(hello5)
    frame5 = enc([0, signed5, sign(BOB, signed5)])
    add(
        "signed-map nesting 5: the price wrapped in one more array (no valid signed map "
        "nests deeper than 4)",
        depth + ", §9",
        uvarint(len(frame5)) + frame5,
        "MALFORMED",
        stage="frame",
    )
    return out


# --------------------------------------------------------------------------- resync


def resync_entry(
    description: str,
    *,
    payer: dict[str, Any],
    in_flight: Sequence[bytes] = (),
    abandoned: Sequence[bytes] = (),
    n: int,
    details: dict[str, Any],
    expected: dict[str, Any],
    code: str = "REPLAY",
    section: str = "protocol.md §15",
) -> dict[str, Any]:
    """`payer`: deposit, last_n, paid, spent, forgotten before; `expected`: the outcome and
    the payer's numbers after (in_flight / abandoned: the request numbers left)."""
    frame = refusal_frame(CHANNEL, n, code, "resync", details)
    return {
        "description": description,
        "section": section,
        "payer": as_json(
            {
                **payer,
                "in_flight_hex": [f.hex() for f in in_flight],
                "abandoned_hex": [f.hex() for f in abandoned],
            }
        ),
        "refusal_hex": frame.hex(),
        "details": as_json(details),
        "expected": as_json(expected),
    }


def state(
    last_n: int,
    paid: int,
    spent: int = 0,
    forgotten: int = 0,
    released: int = 0,
    absorbed: int = 0,
) -> dict[str, Any]:
    """A payer's numbers (protocol.md 14.2): `released` is the uncharged part of the slices
    answered by a signed response, `absorbed` the spent jumps abandoned requests (or
    forgotten credit) already explained."""
    return {
        "deposit": 10**6,
        "last_n": last_n,
        "paid": paid,
        "spent": spent,
        "forgotten": forgotten,
        "released": released,
        "absorbed": absorbed,
    }


def after(
    outcome: str,
    last_n: int,
    paid: int,
    spent: int = 0,
    forgotten: int = 0,
    in_flight: Sequence[int] = (),
    abandoned: Sequence[int] = (),
    error: str | None = None,
    released: int = 0,
    absorbed: int = 0,
) -> dict[str, Any]:
    out: dict[str, Any] = {"outcome": outcome}
    if error is not None:
        out["error"] = error
    out.update(
        last_n=last_n,
        paid=paid,
        spent=spent,
        forgotten=forgotten,
        released=released,
        absorbed=absorbed,
        in_flight=list(in_flight),
        abandoned=list(abandoned),
    )
    return out


def details_of(
    last_n: int,
    spent: int,
    voucher: bytes | None,
    paid_max: int | None = None,
    *,
    with_body: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """Resync details; paid_max defaults to the voucher's paid (0 without one). The voucher
    goes without its body (protocol.md 15), unless `with_body` (a payer reads it the same)."""
    out: dict[str, Any] = {"last_n": last_n, "spent": spent}
    if paid_max is None:
        paid_max = 0 if voucher is None else VOUCHER_PAID[voucher]
    out["paid_max"] = paid_max
    if voucher is not None:
        out["voucher"] = voucher if with_body else bodiless(voucher)
    out.update(extra)
    return out


VOUCHER_PAID: dict[bytes, int] = {}


def v(n: int, paid: int, price: int = 1000, body: bytes = b"hello", **kw: Any) -> bytes:
    frame = voucher_frame(n, paid, price, body, **kw)
    VOUCHER_PAID[frame] = paid
    return frame


def build_resync() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    r1 = v(1, 1000)
    r1b = v(1, 1000, body=b"other")
    r2 = v(2, 2000)
    r5 = v(5, 5000)

    def add(description: str, **kw: Any) -> None:
        out.append(resync_entry(description, **kw))

    add(
        "the payee served r1, then sent REPLAY with genuine details (a cheat): in doubt, "
        "spent not adopted",
        payer=state(1, 1000),
        in_flight=[r1],
        n=1,
        details=details_of(1, 1000, r1),
        expected=after("in_doubt", 1, 1000, in_flight=[1]),
    )
    add(
        "the payer lost its state: the voucher is numbered above its last_n: superseded, "
        "its paid forgotten",
        payer=state(1, 1000),
        in_flight=[r1b],
        n=1,
        details=details_of(3, 3000, v(3, 3000)),
        expected=after("superseded", 3, 3000, forgotten=3000),
    )
    add(
        "the same, the voucher sent with its body (a payee sends it empty; the payer reads "
        "only its signed fields and signature, so it is read the same)",
        payer=state(1, 1000),
        in_flight=[r1b],
        n=1,
        details=details_of(3, 3000, v(3, 3000), with_body=True),
        expected=after("superseded", 3, 3000, forgotten=3000),
    )
    add(
        "a restored backup: the voucher has the request's n and another hash: superseded",
        payer=state(1, 1000),
        in_flight=[r1b],
        n=1,
        details=details_of(1, 1000, r1),
        expected=after("superseded", 1, 1000, forgotten=1000),
    )
    add(
        "the voucher is numbered below the request with paid above its slice start: superseded",
        payer=state(2, 2000),
        in_flight=[r2],
        n=2,
        details=details_of(1, 0, v(1, 1500, price=1500)),
        expected=after("superseded", 2, 2000, forgotten=1500),
    )
    add(
        "spent above paid_max (after a failed deferred check, 13.4 c): valid, spent not adopted",
        payer=state(5, 5000, spent=1000),
        in_flight=[r5],
        n=5,
        details=details_of(9, 6000, r1),
        expected=after("in_doubt", 9, 5000, spent=1000, in_flight=[5]),
    )
    add(
        "an unsigned PAYMENT_REQUIRED of the slice rule carries the same details: its "
        "voucher proves lost state",
        payer=state(5, 2000),
        in_flight=[v(5, 2000)],
        n=5,
        details=details_of(4, 0, v(4, 4000), price=1000),
        expected=after("superseded", 5, 4000, forgotten=4000),
        code="PAYMENT_REQUIRED",
        section="protocol.md §13.2 check 5', §15",
    )
    add(
        "a refusal naming a request that is not outstanding is not read (5.4): nothing "
        "adopted, not even last_n",
        payer=state(1, 1000),
        n=7,
        details=details_of(9, 0, None),
        expected=after("unknown", 1, 1000),
        section="protocol.md §5.4, §15",
    )
    # forgotten (step 4): what the payer cannot account for below voucher.paid
    add(
        "lost state after a signed refusal: the refused slice (released) is not forgotten; "
        "the superseded request's slice is",
        payer=state(3, 3000, spent=1000, released=1000),
        in_flight=[v(3, 3000, body=b"other")],
        n=3,
        details=details_of(4, 2000, v(4, 4000)),
        expected=after("superseded", 4, 4000, spent=1000, forgotten=2000, released=1000),
    )
    add(
        "lost state: requests in flight are not accounted for (forgotten requests may "
        "overlap them), abandoned ones are (a jump may take them already)",
        payer=state(5, 5000, spent=1500, absorbed=500),
        in_flight=[v(4, 4000, body=b"other"), v(5, 5000, body=b"other")],
        abandoned=[v(2, 2000)],
        n=4,
        details=details_of(6, 0, v(6, 6000)),
        expected=after(
            "superseded",
            6,
            6000,
            spent=1500,
            forgotten=4000,
            absorbed=500,
            in_flight=[5],
            abandoned=[2],
        ),
    )
    add(
        "a voucher of ours with paid above our paid proves lost state, though it does not "
        "supersede the request (numbered above it, within last_n): in doubt, forgotten raised",
        payer=state(9, 1000),
        in_flight=[r1],
        n=1,
        details=details_of(9, 0, r5),
        expected=after("in_doubt", 9, 5000, forgotten=5000, in_flight=[1]),
    )
    add(
        "forgotten never shrinks: a lost-state voucher that leaves less unaccounted for keeps it",
        payer=state(6, 6000, spent=2000, forgotten=4000),
        in_flight=[v(6, 6000, body=b"other")],
        n=6,
        details=details_of(5, 0, v(5, 5500)),
        expected=after("superseded", 6, 6000, spent=2000, forgotten=4000),
    )
    add(
        "never lowers anything: last_n and paid below the payer's",
        payer=state(2, 2000),
        in_flight=[r2],
        n=2,
        details=details_of(1, 1000, r1),
        expected=after("in_doubt", 2, 2000, in_flight=[2]),
    )
    add(
        "an abandoned request in doubt stays abandoned (claimable)",
        payer=state(1, 1000),
        abandoned=[r1],
        n=1,
        details=details_of(1, 1000, r1),
        expected=after("in_doubt", 1, 1000, abandoned=[1]),
    )

    # ignored details: nothing adopted, the request stays as it was (in doubt)
    def ignored(description: str, error: str, details: dict[str, Any]) -> None:
        add(
            description,
            payer=state(1, 1000),
            in_flight=[r1],
            n=1,
            details=details,
            expected=after("ignored", 1, 1000, in_flight=[1], error=error),
        )

    ignored(
        "voucher signed by MALLORY",
        "INVALID_SIGNATURE",
        details_of(3, 0, v(3, 3000, signer=MALLORY)),
    )
    ignored(
        "voucher of another channel",
        "INVALID_SIGNATURE",
        details_of(3, 0, v(3, 3000, channel=CHANNEL_2)),
    )
    ignored(
        "voucher of another ledger",
        "INVALID_SIGNATURE",
        details_of(3, 0, v(3, 3000, ledger=OTHER_LEDGER)),
    )
    ignored(
        "paid_max is not the voucher's paid",
        "MALFORMED",
        details_of(3, 0, v(3, 3000), paid_max=2999),
    )
    ignored("paid_max above 0 without a voucher", "MALFORMED", details_of(3, 0, None, 5))
    ignored("voucher numbered above last_n", "MALFORMED", details_of(2, 0, v(3, 3000)))
    ignored("last_n missing", "MALFORMED", {"spent": 0, "paid_max": 0})
    ignored("last_n as text", "MALFORMED", {"last_n": "3", "spent": 0, "paid_max": 0})
    ignored("spent missing", "MALFORMED", {"last_n": 3, "paid_max": 0})
    ignored("spent negative", "MALFORMED", {"last_n": 3, "spent": -1, "paid_max": 0})
    ignored("paid_max missing", "MALFORMED", {"last_n": 3, "spent": 0})
    ignored(
        "voucher is a refusal frame, not a request frame",
        "MALFORMED",
        {
            "last_n": 3,
            "spent": 0,
            "paid_max": 0,
            "voucher": refusal_frame(b"", 0, "MALFORMED", "", {}),
        },
    )
    ignored(
        "voucher bytes that are not a frame",
        "MALFORMED",
        {"last_n": 3, "spent": 0, "paid_max": 0, "voucher": b"\x00"},
    )
    ignored("voucher null", "MALFORMED", {"last_n": 3, "spent": 0, "paid_max": 0, "voucher": None})
    return out


# --------------------------------------------------------------------------- receipts


REQUEST_SIGNED: dict[bytes, tuple[bytes, dict[str, Any]]] = {}


def sent(n: int, paid: int, price: int = 1000, body: bytes = b"hello") -> bytes:
    """A request frame the payer (ALICE) sent: numbered `n`, slice (paid - price, paid]."""
    fields = request_fields(n=n, paid=paid, price=price, body=body)
    signed = enc(fields)
    frame = enc([1, signed, sign(ALICE, signed), body])
    REQUEST_SIGNED[frame] = (signed, fields)
    return frame


def answer(
    request: bytes,
    *,
    price: int,
    spent: int,
    status: str = "OK",
    signer: bytes = BOB,
    body: bytes | None = None,
    carried: bytes | None = None,
    answers: bytes | None = None,
    channel: bytes | None = None,
) -> bytes:
    """The payee's response frame to `request` (`answers`: name another request's hash;
    `carried`: put other bytes than `body` in the frame, so the body hash fails)."""
    signed_req, fields = REQUEST_SIGNED[request]
    if answers is not None:
        signed_req = REQUEST_SIGNED[answers][0]
    if body is None:
        body = b"answer" if status == "OK" else refusal_body("no", {})
    resp = response_fields(signed_req, fields, status=status, price=price, spent=spent, body=body)
    if channel is not None:
        resp["channel"] = channel
    signed = enc(resp)
    return enc([2, signed, sign(signer, signed), body if carried is None else carried])


def receipt_case(
    description: str, requests: Sequence[bytes], steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """A payer that sent `requests` (in order, nothing else on the channel: `last_n` and
    `paid` are those of the last one, `spent` 0) and what it makes of each step."""
    last = REQUEST_SIGNED[requests[-1]][1]
    return {
        "description": description,
        "section": "protocol.md §14.3",
        "payer": as_json(
            {
                "deposit": 10**6,
                "last_n": last["n"],
                "paid": last["paid"],
                "spent": 0,
                "in_flight_hex": [r.hex() for r in requests],
            }
        ),
        "steps": steps,
    }


def abandon(n: int) -> dict[str, Any]:
    return {"action": "abandon", "n": str(n)}


def respond(
    frame: bytes,
    verdict: str,
    *,
    spent: int,
    in_flight: Sequence[int],
    abandoned: Sequence[int] = (),
    error: str | None = None,
) -> dict[str, Any]:
    """A response arrives; `verdict` is accept / reject (with `error`) / ignore, and the
    payer's `spent`, in-flight and abandoned requests after it."""
    out: dict[str, Any] = {"action": "response", "response_hex": frame.hex(), "verdict": verdict}
    if error is not None:
        out["error"] = error
    out.update(
        spent=str(spent),
        in_flight=[str(n) for n in in_flight],
        abandoned=[str(n) for n in abandoned],
    )
    return out


def build_receipts() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    r1, r2, r3 = sent(1, 1000), sent(2, 2000), sent(3, 3000)
    out.append(
        receipt_case(
            "a normal chain: each receipt's spent is the previous one plus its price (a "
            "charge below the request's price, a signed refusal charging 0)",
            [r1, r2, r3],
            [
                respond(answer(r1, price=1000, spent=1000), "accept", spent=1000, in_flight=[2, 3]),
                respond(answer(r2, price=600, spent=1600), "accept", spent=1600, in_flight=[3]),
                respond(
                    answer(r3, price=0, spent=1600, status="HANDLER_ERROR"),
                    "accept",
                    spent=1600,
                    in_flight=[],
                ),
            ],
        )
    )
    out.append(
        receipt_case(
            "rule 7: a jump explained by an abandoned request, once; then rule 8: the "
            "abandoned request's stored receipt, with the spent of its time, moves nothing",
            [r1, r2, r3],
            [
                abandon(1),
                respond(
                    answer(r2, price=1000, spent=2000),
                    "accept",
                    spent=2000,
                    in_flight=[3],
                    abandoned=[1],
                ),
                respond(
                    answer(r3, price=1000, spent=4000),
                    "reject",
                    error="MALFORMED",
                    spent=2000,
                    in_flight=[3],
                    abandoned=[1],
                ),
                respond(
                    answer(r3, price=1000, spent=3000),
                    "accept",
                    spent=3000,
                    in_flight=[],
                    abandoned=[1],
                ),
                respond(answer(r1, price=1000, spent=1000), "accept", spent=3000, in_flight=[]),
            ],
        )
    )
    out.append(
        receipt_case(
            "a jump taken for an abandoned request, then that request's signed refusal: the "
            "refusal says it was not charged, so no request explains the jump any more and "
            "it leaves spent (what the payee may hold never grows by an answer)",
            [r1, r2],
            [
                abandon(1),
                respond(
                    answer(r2, price=1000, spent=2000),
                    "accept",
                    spent=2000,
                    in_flight=[],
                    abandoned=[1],
                ),
                respond(
                    answer(r1, price=0, spent=2000, status="HANDLER_ERROR"),
                    "accept",
                    spent=1000,
                    in_flight=[],
                ),
            ],
        )
    )
    out.append(
        receipt_case(
            "rule 8 needs a jump that absorbed the charge: without one the stored receipt is "
            "rejected; a stored signed refusal (price 0) is accepted",
            [r1, r2],
            [
                abandon(1),
                respond(
                    answer(r2, price=1000, spent=1000),
                    "accept",
                    spent=1000,
                    in_flight=[],
                    abandoned=[1],
                ),
                respond(
                    answer(r1, price=1000, spent=1000),
                    "reject",
                    error="MALFORMED",
                    spent=1000,
                    in_flight=[],
                    abandoned=[1],
                ),
                respond(
                    answer(r1, price=0, spent=0, status="OVERLOADED"),
                    "accept",
                    spent=1000,
                    in_flight=[],
                ),
            ],
        )
    )
    bad = [
        (
            "signed by MALLORY, not the payee",
            answer(r1, price=1000, spent=1000, signer=MALLORY),
            "INVALID_SIGNATURE",
        ),
        (
            "names another request's hash",
            answer(r1, price=1000, spent=1000, answers=r2),
            "MALFORMED",
        ),
        (
            "body does not match body_hash",
            answer(r1, price=1000, spent=1000, carried=b"tampered"),
            "MALFORMED",
        ),
        ("charges more than the request's price", answer(r1, price=1001, spent=1001), "MALFORMED"),
        ("spent above the payer's paid", answer(r1, price=1000, spent=2001), "MALFORMED"),
        ("a spent jump with nothing abandoned", answer(r1, price=1000, spent=1500), "MALFORMED"),
        (
            "on another channel (the payee is faulty, 5.4)",
            answer(r1, price=1000, spent=1000, channel=CHANNEL_2),
            "MALFORMED",
        ),
    ]
    for what, frame, code in bad:
        out.append(
            receipt_case(
                f"rejected: {what}; the state is unchanged and the right receipt still counts",
                [r1, r2],
                [
                    respond(frame, "reject", error=code, spent=0, in_flight=[1, 2]),
                    respond(
                        answer(r1, price=1000, spent=1000), "accept", spent=1000, in_flight=[2]
                    ),
                ],
            )
        )
    out.append(
        receipt_case(
            "rejected: spent short of the previous spent plus the price (and above the "
            "previous spent, so not a stored receipt either)",
            [r1, r2],
            [
                respond(answer(r1, price=1000, spent=1000), "accept", spent=1000, in_flight=[2]),
                respond(
                    answer(r2, price=1000, spent=1500),
                    "reject",
                    error="MALFORMED",
                    spent=1000,
                    in_flight=[2],
                ),
                respond(answer(r2, price=1000, spent=2000), "accept", spent=2000, in_flight=[]),
            ],
        )
    )
    out.append(
        receipt_case(
            "ignored (5.4, 14.3): a response naming no outstanding request (never sent, or "
            "answered already), whatever it says",
            [r1, r2],
            [
                respond(answer(r1, price=1000, spent=1000), "accept", spent=1000, in_flight=[2]),
                respond(answer(r1, price=1000, spent=9999), "ignore", spent=1000, in_flight=[2]),
                respond(
                    answer(sent(9, 9000), price=1000, spent=9000),
                    "ignore",
                    spent=1000,
                    in_flight=[2],
                ),
                respond(answer(r2, price=1000, spent=2000), "accept", spent=2000, in_flight=[]),
            ],
        )
    )
    return out


FILES = {
    "requests.json": "requests",
    "responses.json": "responses",
    "hellos.json": "hellos",
    "refusals.json": "refusals",
    "framing.json": "framing",
    "resync.json": "resync",
    "receipts.json": "receipts",
    "offers.json": "offers",
}


def build() -> dict[str, list[dict[str, Any]]]:
    """Every vector file's entries, by file name."""
    requests, made = build_requests()
    return {
        "requests.json": requests,
        "responses.json": build_responses(made),
        "hellos.json": build_hellos(),
        "refusals.json": build_refusals(),
        "framing.json": build_framing(),
        "resync.json": build_resync(),
        "receipts.json": build_receipts(),
        "offers.json": build_offers(),
    }


def render(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    outputs = {HERE / name: render(entries) for name, entries in build().items()}
    if "--check" in argv:
        stale = [
            p.name for p, text in outputs.items() if not p.exists() or p.read_text("utf-8") != text
        ]
        if stale:
            print(f"stale: {', '.join(stale)}; run python specs/vectors/generate.py")
            return 1
        print("vectors are up to date")
        return 0
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(json.loads(text))} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
