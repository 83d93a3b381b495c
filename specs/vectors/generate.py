"""Build specs/vectors/requests.json and responses.json from fixed keys.

Run from the repository root::

    python specs/vectors/generate.py          # rewrite both files
    python specs/vectors/generate.py --check  # exit 1 if the files differ from a rebuild

The output is deterministic: the keys come from fixed seeds, Ed25519 signatures are
deterministic (RFC 8032), and every value below is a constant.

This script is a second, independent implementation of the wire format: it uses its own
small canonical CBOR encoder (RFC 8949 4.2.1), pynacl for Ed25519 and hashlib for
BLAKE2b-256, and imports nothing from p2pay. tests/vectors/test_vectors.py then checks that
p2pay builds the very same bytes, and refuses the invalid vectors with the listed codes.
See specs/vectors/README.md for the format of an entry.
"""

from __future__ import annotations

import hashlib
import json
import sys
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
) -> dict[str, Any]:
    """One vector. `key` is whose signature the receiver expects (default: the signer)."""
    sig = sign(signer, signed) if signature is None else signature
    out: dict[str, Any] = {"description": description, "valid": error is None}
    if error is not None:
        out["error"] = error
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


def build_responses(made: list[tuple[bytes, dict[str, Any], bytes]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def good(
        description: str, index: int, *, status: str, price: int, spent: int, body: bytes
    ) -> None:
        req_signed, req, _ = made[index]
        fields = response_fields(
            req_signed, req, status=status, price=price, spent=spent, body=body
        )
        out.append(
            entry(
                description,
                kind=2,
                signer=BOB,
                signed=enc(fields),
                body=body,
                fields=fields,
                expected_ledger=req["ledger"],
                extra={"request_index": index},
            )
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
    good(
        "PAYMENT_REQUIRED refusal: price 0, details.price = 2000",
        5,
        status="PAYMENT_REQUIRED",
        price=0,
        spent=1000,
        body=refusal_body("service costs 2000, request allows 7", {"price": 2000}),
    )
    good(
        "HANDLER_ERROR: the reservation was released, price 0",
        6,
        status="HANDLER_ERROR",
        price=0,
        spent=1000,
        body=refusal_body("handler failed", {}),
    )
    good(
        "INSUFFICIENT_DEPOSIT with amounts above 2**64 in the details",
        8,
        status="INSUFFICIENT_DEPOSIT",
        price=0,
        spent=2**64,
        body=refusal_body(
            "voucher pays more than the deposit",
            {"deposit": 2**65, "paid_max": 2**64 + 1, "spent": 2**64},
        ),
    )
    good("1-byte ledger id, second channel", 7, status="OK", price=1, spent=1, body=bytes(100))

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


def build() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    requests, made = build_requests()
    return requests, build_responses(made)


def render(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    requests, responses = build()
    outputs = {HERE / "requests.json": render(requests), HERE / "responses.json": render(responses)}
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
