"""Service offers: what a provider sells, signed, and where offers are found
(specs/discovery.md).

Theory of operation
-------------------
A provider announces each service it serves as a signed offer (`Offer`): ledger, PeerID key,
settlement account (bound to the PeerID exactly as a hello binds it), the service's terms,
the stake behind them, where to reach it, a sequence number and an expiry. An offer travels
as ``[4, signed, signature]``, `signed` being the canonical CBOR of a map with the domain tag
``"p2pay/v1/offer"`` that the PeerID key signs as received (as the hello, protocol.md 8-9).

Offers travel on a gossipsub topic per ledger (`offer_topic`) and are found by peers that
just joined through Kademlia DHT provider records under a key per (ledger, service)
(`offer_key`), then fetched with ``/p2pay/offers/2.0.0`` (`encode_fetch_request`,
`decode_fetch_reply`). Both names are fixed here, in the core, so that every transport and
every implementation derive the same bytes.

Checking is in two steps, as for frames: `decode_offer` checks structure only (MALFORMED,
WRONG_DOMAIN, FRAME_TOO_LARGE); `check_offer` checks it against the receiver's ledger and
clock (version, ledger, signature, account binding, expiry, addresses). Everything here is
sans-IO: the receiver's clock is an argument.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pay.core import codec
from p2pay.core.errors import (
    DeadlineExceeded,
    DecodeError,
    ErrorCode,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
    WrongLedger,
)
from p2pay.core.identity import SIGNATURE_SIZE, Keypair, PeerId, peer_id_from_public, verify
from p2pay.core.messages import (
    FRAME_MAX_DEPTH,
    MAX_LEDGER_ID_SIZE,
    MAX_SERVICE_NAME,
    MAX_U64,
    PROTOCOL_VERSION,
    ServiceTerms,
    StakeTerms,
    _check,
    _check_bytes,
    _check_uint,
    _signed_map,
    account_binding,
    check_account_binding,
    check_account_form,
)
from p2pay.core.signing import Signer

__all__ = [
    "DOMAIN_OFFER",
    "FETCH_PROTOCOL_ID",
    "FETCH_TIMEOUT_MS",
    "KIND_OFFER",
    "MAX_ADDR_SIZE",
    "MAX_FETCH_FRAME",
    "MAX_FETCH_OFFERS",
    "MAX_OFFER_ADDRS",
    "MAX_OFFER_LIFETIME_MS",
    "MAX_OFFER_SIZE",
    "OFFER_KEY_DOMAIN",
    "FetchRequest",
    "Offer",
    "check_offer",
    "decode_fetch_reply",
    "decode_fetch_request",
    "decode_offer",
    "encode_fetch_reply",
    "encode_fetch_request",
    "offer_key",
    "offer_topic",
]

DOMAIN_OFFER = "p2pay/v1/offer"
KIND_OFFER = 4
MAX_OFFER_SIZE = 4096  # bytes of an encoded offer, [4, signed, signature]
MAX_OFFER_ADDRS = 8
MAX_ADDR_SIZE = 256
MAX_OFFER_LIFETIME_MS = 86_400_000  # how far ahead of now `expires` may be: 24 h
FETCH_PROTOCOL_ID = "/p2pay/offers/2.0.0"
MAX_FETCH_OFFERS = 16
MAX_FETCH_FRAME = 70_000  # bytes of a fetch frame, either way (without its prefix)
FETCH_TIMEOUT_MS = 5_000

#: the prefix hashed into a DHT key, so that no other use of sha256 can collide with it
OFFER_KEY_DOMAIN = b"p2pay/offer/2\x00"
#: multihash header of a sha2-256 digest: code 0x12, length 32
_SHA256_MULTIHASH = bytes([0x12, 0x20])
_MAX_LEDGER_ID = MAX_LEDGER_ID_SIZE
_MAX_SERVICE_NAME = MAX_SERVICE_NAME


def _check_names(ledger: bytes, service: str | None = None) -> None:
    if not isinstance(ledger, bytes) or not 1 <= len(ledger) <= _MAX_LEDGER_ID:
        raise LocalProtocolError(f"a ledger id is 1 to {_MAX_LEDGER_ID} bytes")
    if service is not None and (
        not isinstance(service, str) or not 1 <= len(service.encode()) <= _MAX_SERVICE_NAME
    ):
        raise LocalProtocolError(f"a service name is 1 to {_MAX_SERVICE_NAME} bytes of UTF-8")


def offer_topic(ledger: bytes) -> str:
    """The gossipsub topic on which offers for `ledger` are published."""
    _check_names(ledger)
    return "/p2pay/offers/2/" + ledger.hex()


def offer_key(ledger: bytes, service: str) -> bytes:
    """The DHT provider-record key of `service` on `ledger`: a 34-byte sha2-256 multihash.

    It is the multihash of ``CIDv1(raw, sha2-256)`` that js-libp2p's content routing uses.
    """
    _check_names(ledger, service)
    digest = hashlib.sha256(OFFER_KEY_DOMAIN + ledger + b"\x00" + service.encode()).digest()
    return _SHA256_MULTIHASH + digest


# ---------------------------------------------------------------------------
# The offer


def offer_signing_bytes(
    *,
    version: int,
    ledger: bytes,
    peer: bytes,
    account: bytes,
    account_proof: bytes,
    service: ServiceTerms,
    stake: StakeTerms,
    addrs: tuple[str, ...],
    seq: int,
    expires: int,
) -> bytes:
    """The bytes a provider signs for an offer (specs/discovery.md 2).

    Returns:
        The canonical CBOR map with the domain tag ``"p2pay/v1/offer"``.
    """
    return _OFFER_LAYOUT.encode(
        {
            "domain": DOMAIN_OFFER,
            "version": version,
            "ledger": ledger,
            "peer": peer,
            "account": account,
            "account_proof": account_proof,
            "service": service.to_cbor(),
            "stake": stake.to_cbor(),
            "addrs": list(addrs),
            "seq": seq,
            "expires": expires,
        }
    )


_OFFER_KEYS = frozenset(
    (
        "domain",
        "version",
        "ledger",
        "peer",
        "account",
        "account_proof",
        "service",
        "stake",
        "addrs",
        "seq",
        "expires",
    )
)
_OFFER_LAYOUT = codec.MapLayout(tuple(sorted(_OFFER_KEYS)))
_SERVICE_KEYS = frozenset(("name", "price", "max_body"))
_STAKE_KEYS = frozenset(("amount", "penalty", "window"))
_P2P = "/p2p/"


def _addr_ok(addr: object) -> bool:
    return (
        isinstance(addr, str)
        and 1 <= len(addr) <= MAX_ADDR_SIZE
        and addr.startswith("/")
        and all("\x21" <= ch <= "\x7e" for ch in addr)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """A provider's signed offer of one service (specs/discovery.md 2).

    `peer` is the provider's Ed25519 public key (its PeerID's), which signs; `account` and
    `account_proof` bind its settlement account exactly as its hello does; `service` and
    `stake` are the terms its hello announces; `addrs` where to dial it (each ending in
    ``/p2p/<its PeerID>``); `seq` orders its offers of one service; `expires` is Unix ms.
    `signing_bytes` is computed at construction (or kept as received).

    Raises:
        LocalProtocolError: on construction, a field out of its range.
    """

    version: int
    ledger: bytes
    peer: bytes
    account: bytes
    account_proof: bytes
    service: ServiceTerms
    stake: StakeTerms
    addrs: tuple[str, ...]
    seq: int
    expires: int
    signature: bytes = field(default=b"", repr=False)
    signing_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_uint(self.version, "version", MAX_U64, False)
        _check_bytes(self.ledger, "ledger", None, False, MAX_LEDGER_ID_SIZE)
        _check_bytes(self.peer, "peer", 32, False)
        check_account_form(self.ledger, self.account, self.account_proof, remote=False)
        _check(isinstance(self.service, ServiceTerms), "service must be ServiceTerms", False)
        _check(isinstance(self.stake, StakeTerms), "stake must be StakeTerms (never None)", False)
        _check(isinstance(self.addrs, tuple), "addrs must be a tuple", False)
        _check(
            1 <= len(self.addrs) <= MAX_OFFER_ADDRS,
            f"an offer has 1..{MAX_OFFER_ADDRS} addresses",
            False,
        )
        _check(
            all(_addr_ok(a) for a in self.addrs),
            f"an address is 1..{MAX_ADDR_SIZE} bytes of visible ASCII starting with /",
            False,
        )
        _check(len(set(self.addrs)) == len(self.addrs), "addresses must be unique", False)
        _check_uint(self.seq, "seq", MAX_U64, False)
        _check(self.seq >= 1, "seq starts at 1", False)
        _check_uint(self.expires, "expires", MAX_U64, False)
        _check(isinstance(self.signature, bytes), "signature must be bytes", False)
        object.__setattr__(
            self,
            "signing_bytes",
            offer_signing_bytes(
                version=self.version,
                ledger=self.ledger,
                peer=self.peer,
                account=self.account,
                account_proof=self.account_proof,
                service=self.service,
                stake=self.stake,
                addrs=self.addrs,
                seq=self.seq,
                expires=self.expires,
            ),
        )

    @property
    def peer_id(self) -> PeerId:
        """The provider's PeerID text."""
        return peer_id_from_public(self.peer)

    @property
    def name(self) -> str:
        """The service's name."""
        return self.service.name

    @property
    def price(self) -> int:
        """The service's price per request, yocto."""
        return self.service.price

    @classmethod
    def create(
        cls,
        keypair: Keypair,
        *,
        ledger: bytes,
        service: str,
        price: int,
        max_body: int,
        stake: StakeTerms,
        addrs: Sequence[str],
        seq: int,
        expires: int,
        account: bytes | None = None,
        account_proof: bytes = b"",
        settlement_key: Signer | None = None,
    ) -> Offer:
        """Build and sign an offer with the provider's PeerID key.

        `account` and `account_proof` are what the provider's hello carries: by default they
        are made as the hello makes them (`messages.account_binding`: the key itself on an
        Ed25519 ledger; on an EVM ledger the settlement key's account, `settlement_key` or
        the one derived from `keypair`, and its binding proof). Every address must end in
        ``/p2p/<keypair's PeerID>``.

        Raises:
            LocalProtocolError: a field out of its range, an address naming another peer,
                `account_proof` given without `account`, or a settlement key that cannot
                act on `ledger`.
        """
        if account is None:
            _check(account_proof == b"", "account_proof is given with its account", False)
            account, account_proof = account_binding(keypair, ledger, settlement_key)
        suffix = _P2P + keypair.peer_id
        addresses = tuple(addrs)
        _check(
            all(isinstance(a, str) and a.endswith(suffix) for a in addresses),
            f"every address ends in {suffix}",
            False,
        )
        unsigned = cls(
            version=PROTOCOL_VERSION,
            ledger=ledger,
            peer=keypair.public,
            account=account,
            account_proof=account_proof,
            service=ServiceTerms(name=service, price=price, max_body=max_body),
            stake=stake,
            addrs=addresses,
            seq=seq,
            expires=expires,
        )
        offer = unsigned.with_signature(keypair.sign(unsigned.signing_bytes))
        _check(len(offer.encode()) <= MAX_OFFER_SIZE, f"offer over {MAX_OFFER_SIZE} bytes", False)
        return offer

    def with_signature(self, signature: bytes) -> Offer:
        """The same offer carrying `signature` (64 bytes; not verified here).

        Raises:
            LocalProtocolError: `signature` is not 64 bytes.
        """
        _check(
            isinstance(signature, bytes) and len(signature) == SIGNATURE_SIZE,
            f"a signature is {SIGNATURE_SIZE} bytes",
            False,
        )
        out = Offer.__new__(Offer)
        for name in Offer.__slots__:
            object.__setattr__(out, name, getattr(self, name))
        object.__setattr__(out, "signature", signature)
        return out

    def verify(self) -> bool:
        """True if `signature` is `peer`'s Ed25519 signature of the signing bytes."""
        return verify(self.peer, self.signing_bytes, self.signature)

    def encode(self) -> bytes:
        """The offer as it travels: ``[4, signing_bytes, signature]``.

        Raises:
            LocalProtocolError: the offer is not signed.
        """
        _check(len(self.signature) == SIGNATURE_SIZE, "the offer is not signed", False)
        return codec.encode([KIND_OFFER, self.signing_bytes, self.signature])

    @classmethod
    def from_signed(cls, signed: bytes, signature: bytes) -> Offer:
        """Rebuild an offer from received signing bytes (strictly decoded).

        Raises:
            DecodeError: malformed, non-canonical, a field out of range, or a signature
                that is not 64 bytes; WrongDomain: another kind's signing bytes.
        """
        fields = _signed_map(signed, DOMAIN_OFFER, _OFFER_KEYS)
        _check(
            isinstance(signature, bytes) and len(signature) == SIGNATURE_SIZE,
            f"signature must be {SIGNATURE_SIZE} bytes",
            True,
        )
        service_raw, stake_raw, addrs_raw = fields["service"], fields["stake"], fields["addrs"]
        if not isinstance(service_raw, dict) or service_raw.keys() != _SERVICE_KEYS:
            raise DecodeError("service is {name, price, max_body}")
        if not isinstance(stake_raw, dict) or stake_raw.keys() != _STAKE_KEYS:
            raise DecodeError("stake is {amount, penalty, window} (never null in an offer)")
        if not isinstance(addrs_raw, list):
            raise DecodeError("addrs must be an array")
        try:
            offer = cls(
                version=fields["version"],
                ledger=fields["ledger"],
                peer=fields["peer"],
                account=fields["account"],
                account_proof=fields["account_proof"],
                service=ServiceTerms(
                    name=service_raw["name"],
                    price=service_raw["price"],
                    max_body=service_raw["max_body"],
                ),
                stake=StakeTerms(
                    amount=stake_raw["amount"],
                    penalty=stake_raw["penalty"],
                    claim_window_ms=stake_raw["window"],
                ),
                addrs=tuple(addrs_raw),
                seq=fields["seq"],
                expires=fields["expires"],
                signature=signature,
            )
        except LocalProtocolError as exc:
            raise DecodeError(exc.message) from None
        if offer.signing_bytes != signed:  # pragma: no cover - strict decoder guarantees it
            raise DecodeError("offer signing bytes are not canonical")
        return offer


def decode_offer(data: bytes | bytearray | memoryview) -> Offer:
    """Parse an encoded offer, ``[4, signed, signature]`` (structure only: the signature,
    ledger and expiry are `check_offer`'s job).

    Raises:
        FrameTooLarge: over `MAX_OFFER_SIZE` bytes (not parsed).
        DecodeError: malformed or non-canonical, another kind, a field out of range.
        WrongDomain: another kind's signed bytes.
    """
    value = codec.decode(data, max_size=MAX_OFFER_SIZE, max_depth=FRAME_MAX_DEPTH)
    if not isinstance(value, list) or len(value) != 3 or type(value[0]) is not int:
        raise DecodeError("an offer is [4, signed, signature]")
    kind, signed, signature = value
    if kind != KIND_OFFER:
        raise DecodeError(f"an offer is kind {KIND_OFFER}, not {kind!r}")
    if not isinstance(signed, bytes) or not isinstance(signature, bytes):
        raise DecodeError("an offer is [4, signed, signature]")
    return Offer.from_signed(signed, signature)


def check_offer(offer: Offer, *, ledger: bytes, now_ms: int) -> None:
    """Raise unless `offer` is authentic, for `ledger`, and live at `now_ms` (the receiver's
    checks 3-8 of specs/discovery.md 3, in that order).

    Raises:
        RemoteProtocolError: code VERSION_MISMATCH (another protocol version), or code
            UNAUTHORIZED (an account not bound to `peer`, or an address naming another
            PeerID).
        WrongLedger: an offer for another ledger.
        InvalidSignature: not signed by `peer`.
        DeadlineExceeded: expired (``expires <= now_ms``) or expiring more than
            `MAX_OFFER_LIFETIME_MS` after `now_ms`.
        LocalProtocolError: `offer` is not an Offer or `now_ms` not a time.
    """
    _check(isinstance(offer, Offer), "offer must be an Offer", False)
    _check_uint(now_ms, "now_ms", MAX_U64, False)
    if offer.version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"offer of version {offer.version}, we speak {PROTOCOL_VERSION}",
            code=ErrorCode.VERSION_MISMATCH,
            details={"version": PROTOCOL_VERSION},
        )
    if offer.ledger != ledger:
        raise WrongLedger("offer is for another ledger")
    if not offer.verify():
        raise InvalidSignature("offer signature does not verify")
    check_account_binding(offer.account, offer.account_proof, ledger, offer.peer, "offer")
    if offer.expires <= now_ms:
        raise DeadlineExceeded("offer expired", details={"expires": offer.expires})
    if offer.expires > now_ms + MAX_OFFER_LIFETIME_MS:
        raise DeadlineExceeded(
            "offer expires more than 24 h ahead", details={"expires": offer.expires}
        )
    suffix = _P2P + offer.peer_id
    if not all(addr.endswith(suffix) for addr in offer.addrs):
        raise RemoteProtocolError(
            "an offer's address names another peer", code=ErrorCode.UNAUTHORIZED
        )


# ---------------------------------------------------------------------------
# /p2pay/offers/2.0.0: fetch a peer's offers (specs/discovery.md 6)


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """What a caller asks on ``/p2pay/offers/2.0.0``: the offers of `service` on `ledger`."""

    ledger: bytes
    service: str


_FETCH_KEYS = frozenset(("ledger", "service"))


def _fetch_request_fields(ledger: object, service: object, remote: bool) -> None:
    _check_bytes(ledger, "ledger", None, remote, MAX_LEDGER_ID_SIZE)
    _check(isinstance(service, str), "service must be text", remote)
    assert isinstance(service, str)
    try:
        size = len(service.encode("utf-8"))
    except UnicodeEncodeError:
        size = 0
    _check(1 <= size <= MAX_SERVICE_NAME, f"service is 1..{MAX_SERVICE_NAME} bytes", remote)


def encode_fetch_request(ledger: bytes, service: str) -> bytes:
    """The request frame's bytes: canonical CBOR ``{"ledger", "service"}``.

    Raises:
        LocalProtocolError: a ledger id or service name out of range.
    """
    _fetch_request_fields(ledger, service, False)
    return codec.encode({"ledger": ledger, "service": service})


def decode_fetch_request(data: bytes | bytearray | memoryview) -> FetchRequest:
    """Parse a fetch request strictly.

    Raises:
        FrameTooLarge: over `MAX_FETCH_FRAME` bytes.
        DecodeError: anything but the canonical map of exactly those two keys in range.
    """
    value = codec.decode(data, max_size=MAX_FETCH_FRAME, max_depth=1)
    if not isinstance(value, dict) or value.keys() != _FETCH_KEYS:
        raise DecodeError('a fetch request is {"ledger", "service"}')
    ledger, service = value["ledger"], value["service"]
    _fetch_request_fields(ledger, service, True)
    assert isinstance(ledger, bytes) and isinstance(service, str)
    return FetchRequest(ledger=ledger, service=service)


def _reply_items_ok(items: Sequence[Any]) -> bool:
    return len(items) <= MAX_FETCH_OFFERS and all(
        isinstance(item, bytes) and 1 <= len(item) <= MAX_OFFER_SIZE for item in items
    )


def encode_fetch_reply(offers: Sequence[bytes]) -> bytes:
    """The reply frame's bytes: a CBOR array of at most 16 encoded offers.

    Raises:
        LocalProtocolError: more than 16, or an item that is not 1..4096 bytes.
    """
    items = list(offers)
    _check(
        _reply_items_ok(items),
        f"a reply is at most {MAX_FETCH_OFFERS} offers of 1..{MAX_OFFER_SIZE} bytes",
        False,
    )
    return codec.encode(items)


def decode_fetch_reply(data: bytes | bytearray | memoryview) -> list[bytes]:
    """Parse a fetch reply strictly: the encoded offers it carries, each still to be decoded
    and checked (`decode_offer`, `check_offer`) as if received from the responder.

    Raises:
        FrameTooLarge: over `MAX_FETCH_FRAME` bytes.
        DecodeError: not an array of at most 16 byte strings of 1..4096 bytes.
    """
    value = codec.decode(data, max_size=MAX_FETCH_FRAME, max_depth=1)
    if not isinstance(value, list) or not _reply_items_ok(value):
        raise DecodeError(
            f"a fetch reply is an array of at most {MAX_FETCH_OFFERS} offers of "
            f"1..{MAX_OFFER_SIZE} bytes"
        )
    return [item for item in value if isinstance(item, bytes)]
