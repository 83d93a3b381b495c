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
clock (version, ledger, signature, account binding, expiry, addresses).

An `OfferBook` is what a receiver keeps (specs/discovery.md 7): per sender a token bucket
checked before decoding, the highest `seq` per (peer, service), expiry, caps per peer and
in all, a minimum stake, and the truth: an offer is *verified* only once the caller has
read the provider's stake from the ledger and it covers the offer; a ledger read, a hello
or a PAYMENT_REQUIRED contradicting an offer is a lie, which drops the peer's offers and
bans it for an hour. Every message dropped is counted by reason (`Drop`). A `Chooser`
ranks live offers from what the client saw of each provider (specs/discovery.md 8).

Everything here is sans-IO: the receiver's clock is an argument, and the ledger read is
the caller's (a verdict says when one is needed).
"""

from __future__ import annotations

import enum
import hashlib
import heapq
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

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
    Hello,
    ServiceTerms,
    StakeTerms,
    _check,
    _check_bytes,
    _check_signature,
    _check_text,
    _check_uint,
    _signed_map,
    account_binding,
    check_account_binding,
    check_account_form,
)
from p2pay.core.settlement import Stake, StakeStatus, stake_status
from p2pay.core.signing import Signer

__all__ = [
    "DOMAIN_OFFER",
    "FAILURE_FORGET_MS",
    "FAILURE_SKIP_MS",
    "FETCH_PROTOCOL_ID",
    "FETCH_TIMEOUT_MS",
    "KIND_OFFER",
    "LIE_BAN_MS",
    "MAX_ADDR_SIZE",
    "MAX_CONSECUTIVE_FAILURES",
    "MAX_FETCH_FRAME",
    "MAX_FETCH_OFFERS",
    "MAX_OFFERS",
    "MAX_OFFER_ADDRS",
    "MAX_OFFER_LIFETIME_MS",
    "MAX_OFFER_SIZE",
    "MAX_REMEMBERED_PEERS",
    "MAX_SERVICES_PER_PEER",
    "OFFERS_PER_MINUTE",
    "OFFER_BURST",
    "OFFER_KEY_DOMAIN",
    "STAKE_READ_RETRY_MS",
    "STAKE_RECHECK_MS",
    "Chooser",
    "Drop",
    "FailureKind",
    "FetchRequest",
    "KeptOffer",
    "Offer",
    "OfferBook",
    "PeerStats",
    "Verdict",
    "announce_spacing_ms",
    "check_offer",
    "decode_fetch_reply",
    "decode_fetch_request",
    "decode_offer",
    "encode_fetch_reply",
    "encode_fetch_request",
    "offer_key",
    "offer_topic",
    "stake_covers",
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


def _check_names(ledger: object, service: object, remote: bool) -> None:
    """A ledger id of 1..64 bytes and a service name of 1..64 bytes of UTF-8."""
    _check_bytes(ledger, "ledger", None, remote, MAX_LEDGER_ID_SIZE)
    _check_text(service, "service", MAX_SERVICE_NAME, remote)


def offer_topic(ledger: bytes) -> str:
    """The gossipsub topic on which offers for `ledger` are published."""
    _check_bytes(ledger, "ledger", None, False, MAX_LEDGER_ID_SIZE)
    return "/p2pay/offers/2/" + ledger.hex()


def offer_key(ledger: bytes, service: str) -> bytes:
    """The DHT provider-record key of `service` on `ledger`: a 34-byte sha2-256 multihash.

    It is the multihash of ``CIDv1(raw, sha2-256)`` that js-libp2p's content routing uses.
    """
    _check_names(ledger, service, False)
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
#: the signed map's fields an `Offer` keeps as they are
_OFFER_FIELDS = ("version", "ledger", "peer", "account", "account_proof", "seq", "expires")
_P2P = "/p2p/"


def _addr_ok(addr: object) -> bool:
    # visible ASCII, 0x21..0x7e: the printable ASCII characters but the space (checked
    # by str methods, not character by character: every received offer's addresses pass here)
    return (
        isinstance(addr, str)
        and 1 <= len(addr) <= MAX_ADDR_SIZE
        and addr.startswith("/")
        and addr.isascii()
        and addr.isprintable()
        and " " not in addr
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
        self._validate(remote=False)
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

    def _validate(self, *, remote: bool) -> None:
        _check_uint(self.version, "version", MAX_U64, remote)
        _check_bytes(self.ledger, "ledger", None, remote, MAX_LEDGER_ID_SIZE)
        _check_bytes(self.peer, "peer", 32, remote)
        check_account_form(self.ledger, self.account, self.account_proof, remote=remote)
        _check(isinstance(self.service, ServiceTerms), "service must be ServiceTerms", remote)
        _check(isinstance(self.stake, StakeTerms), "stake must be StakeTerms (never None)", remote)
        _check(isinstance(self.addrs, tuple), "addrs must be a tuple", remote)
        _check(
            1 <= len(self.addrs) <= MAX_OFFER_ADDRS,
            f"an offer has 1..{MAX_OFFER_ADDRS} addresses",
            remote,
        )
        _check(
            all(_addr_ok(a) for a in self.addrs),
            f"an address is 1..{MAX_ADDR_SIZE} bytes of visible ASCII starting with /",
            remote,
        )
        _check(len(set(self.addrs)) == len(self.addrs), "addresses must be unique", remote)
        _check_uint(self.seq, "seq", MAX_U64, remote)
        _check(self.seq >= 1, "seq starts at 1", remote)
        _check_uint(self.expires, "expires", MAX_U64, remote)
        _check(isinstance(self.signature, bytes), "signature must be bytes", remote)

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
        # every offer whose fields are in range encodes to under 2,700 bytes, well within
        # MAX_OFFER_SIZE (tests/unit/test_offers.py builds the largest)
        return unsigned.with_signature(keypair.sign(unsigned.signing_bytes))

    def with_signature(self, signature: bytes) -> Offer:
        """The same offer carrying `signature` (64 bytes; not verified here).

        Raises:
            LocalProtocolError: `signature` is not 64 bytes.
        """
        _check_signature(signature)
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
        _check_signature(signature, remote=True)
        service = ServiceTerms.from_cbor(fields["service"])
        stake = StakeTerms.from_cbor(fields["stake"])  # never null in an offer
        addrs_raw = fields["addrs"]
        if not isinstance(addrs_raw, list):
            raise DecodeError("addrs must be an array")
        # The strict decoder accepted `signed`, so it is the only encoding of these fields
        # (INV-17): keep the received bytes rather than encoding them again.
        offer = cls.__new__(cls)
        setattr_ = object.__setattr__
        for name in _OFFER_FIELDS:
            setattr_(offer, name, fields[name])
        setattr_(offer, "service", service)
        setattr_(offer, "stake", stake)
        setattr_(offer, "addrs", tuple(addrs_raw))
        setattr_(offer, "signature", signature)
        setattr_(offer, "signing_bytes", bytes(signed))
        offer._validate(remote=True)
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


def encode_fetch_request(ledger: bytes, service: str) -> bytes:
    """The request frame's bytes: canonical CBOR ``{"ledger", "service"}``.

    Raises:
        LocalProtocolError: a ledger id or service name out of range.
    """
    _check_names(ledger, service, False)
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
    _check_names(ledger, service, True)
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


# ---------------------------------------------------------------------------
# The offer book (specs/discovery.md 7)

MAX_SERVICES_PER_PEER = 64
#: discovery.md 7.3: twice a full publication (`MAX_SERVICES_PER_PEER` offers) a minute,
#: and a burst that holds two
OFFERS_PER_MINUTE = 2 * MAX_SERVICES_PER_PEER
OFFER_BURST = 2 * MAX_SERVICES_PER_PEER
MAX_OFFERS = 10_000
LIE_BAN_MS = 3_600_000
STAKE_RECHECK_MS = 600_000
STAKE_READ_RETRY_MS = 30_000
_MINUTE_MS = 60_000
#: a token is counted in 1/60000ths, so that refilling N a minute is exact integer arithmetic
_TOKEN = _MINUTE_MS


def announce_spacing_ms(count: int) -> int:
    """The least time, in ms, between two publications of a provider's `count` offers
    (specs/discovery.md 5.1): at that pace they use at most half of a receiver's rate per
    sender (7.3), so that a provider that publishes no sooner is never rate-limited,
    publications on a change of terms included.

    Raises:
        LocalProtocolError: `count` is not a non-negative integer.
    """
    _check_uint(count, "count", MAX_U64, False)
    return -(-count * 2 * _MINUTE_MS // OFFERS_PER_MINUTE)


#: senders whose bucket the book remembers at once (the least recently seen are forgotten)
_MAX_BUCKETS = 4096


class Drop(enum.StrEnum):
    """Why the book did not keep an offer (or let one go): the counters' names
    (specs/discovery.md 7)."""

    RATE_LIMITED = "rate_limited"
    MALFORMED = "malformed"
    VERSION_MISMATCH = "version_mismatch"
    WRONG_LEDGER = "wrong_ledger"
    INVALID_SIGNATURE = "invalid_signature"
    UNAUTHORIZED = "unauthorized"
    EXPIRED = "expired"
    WRONG_SERVICE = "wrong_service"
    BANNED = "banned"
    NO_STAKE = "no_stake"
    BELOW_MIN_STAKE = "below_min_stake"
    STALE = "stale"
    PEER_FULL = "peer_full"
    BOOK_FULL = "book_full"
    # offers the book kept and let go (not a verdict on a received message)
    EVICTED = "evicted"
    DROPPED_BY_LIE = "dropped_by_lie"
    LIES = "lies"


_CHECK_DROPS = {
    ErrorCode.FRAME_TOO_LARGE: Drop.MALFORMED,
    ErrorCode.MALFORMED: Drop.MALFORMED,
    ErrorCode.WRONG_DOMAIN: Drop.MALFORMED,
    ErrorCode.VERSION_MISMATCH: Drop.VERSION_MISMATCH,
    ErrorCode.WRONG_LEDGER: Drop.WRONG_LEDGER,
    ErrorCode.INVALID_SIGNATURE: Drop.INVALID_SIGNATURE,
    ErrorCode.UNAUTHORIZED: Drop.UNAUTHORIZED,
    ErrorCode.DEADLINE_EXCEEDED: Drop.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class KeptOffer:
    """An offer in the book: the offer, its bytes as received (to relay or serve them
    unchanged), when it was received (Unix ms) and whether a ledger read covers it."""

    offer: Offer
    data: bytes
    received_ms: int
    verified: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the book made of one received message.

    `kept` is the offer if the book kept it (new, or newer than the one it had), else None
    and `dropped` says why. `needs_stake_check`: the caller should read the stake of
    ``kept.offer.account`` from the ledger and report it with `OfferBook.stake_checked`
    (the offer stays unverified, never listed, until then).
    """

    kept: KeptOffer | None
    dropped: Drop | None = None
    needs_stake_check: bool = False

    @property
    def accepted(self) -> bool:
        """True if the book kept the offer."""
        return self.kept is not None


def stake_covers(stake: Stake | None, offer: Offer) -> bool:
    """True if the ledger's stake record `stake` covers what `offer` states
    (specs/discovery.md 7.5): bonded, the offer's account, at least its amount and penalty,
    the same claim window."""
    return (
        stake is not None
        and stake_status(stake) is StakeStatus.BONDED
        and stake.account == offer.account
        and _terms_cover(stake, offer.stake)
    )


def _terms_cover(stake: Stake | StakeTerms, offered: StakeTerms) -> bool:
    """`stake` (a ledger record or a hello's terms) is no worse than the `offered` terms:
    at least the amount and penalty, the same claim window (specs/discovery.md 7.5)."""
    return (
        stake.amount >= offered.amount
        and stake.penalty >= offered.penalty
        and stake.claim_window_ms == offered.claim_window_ms
    )


@dataclass(slots=True)
class _Bucket:
    level: int  # in 1/60000ths of a token
    at_ms: int


@dataclass(slots=True)
class _StakeRead:
    stake: Stake | None = None
    read_ms: int | None = None  # when the last answer came (None: never)
    asked_ms: int | None = None  # when a read was last asked for and not yet answered


class OfferBook:
    """The offers a receiver keeps (specs/discovery.md 7), sans-IO: every call takes the
    receiver's clock.

    Feed it every message with `receive`; when a verdict says `needs_stake_check`, read
    the provider's stake from the ledger and report it with `stake_checked`; report a
    provider's hello with `hello_seen` and a PAYMENT_REQUIRED with `price_seen`, or any
    other contradiction with `lie`. `live` lists the offers a client may rely on.
    `counts` says how many messages were dropped and why (and how many kept offers were
    evicted or dropped for a lie).

    Args:
        ledger: the receiver's ledger id.
        min_stake: the least stake amount an offer must state to be kept (0: any stake).
        max_offers, max_services_per_peer, per_minute, burst, lie_ban_ms: the limits of
            specs/discovery.md 7 (defaults: the spec's).

    Raises:
        LocalProtocolError: a limit out of range.
    """

    def __init__(
        self,
        ledger: bytes,
        *,
        min_stake: int = 0,
        max_offers: int = MAX_OFFERS,
        max_services_per_peer: int = MAX_SERVICES_PER_PEER,
        per_minute: int = OFFERS_PER_MINUTE,
        burst: int = OFFER_BURST,
        lie_ban_ms: int = LIE_BAN_MS,
    ) -> None:
        _check_bytes(ledger, "ledger", None, False, MAX_LEDGER_ID_SIZE)
        _check_uint(min_stake, "min_stake", (1 << 128) - 1, False)
        for name, value in (
            ("max_offers", max_offers),
            ("max_services_per_peer", max_services_per_peer),
            ("per_minute", per_minute),
            ("burst", burst),
            ("lie_ban_ms", lie_ban_ms),
        ):
            _check_uint(value, name, MAX_U64, False)
            _check(value >= 1, f"{name} is at least 1", False)
        self.ledger = ledger
        self.min_stake = min_stake
        self.max_offers = max_offers
        self.max_services_per_peer = max_services_per_peer
        self.per_minute = per_minute
        self.burst = burst
        self.lie_ban_ms = lie_ban_ms
        self.counts: Counter[Drop] = Counter()
        self._offers: dict[str, dict[str, KeptOffer]] = {}  # peer id -> service -> kept
        self._size = 0
        # (expires, peer, service, seq): the kept offers by expiry; entries of offers since
        # replaced or dropped stay until popped (checked against `_offers`) or compacted
        self._by_expiry: list[tuple[int, str, str, int]] = []
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._bans: dict[str, int] = {}  # peer id -> banned until (Unix ms)
        self._reads: dict[str, _StakeRead] = {}

    # -- queries

    def __len__(self) -> int:
        return self._size

    def banned(self, peer: str, now_ms: int) -> bool:
        """True if `peer` (a PeerID) is banned for a lie at `now_ms`."""
        until = self._bans.get(peer)
        return until is not None and now_ms < until

    def get(self, peer: str, service: str) -> KeptOffer | None:
        """The kept offer of `peer` for `service` (expired or not), or None."""
        return self._offers.get(peer, {}).get(service)

    def live(
        self, service: str, *, now_ms: int, max_price: int | None = None, min_stake: int = 0
    ) -> list[KeptOffer]:
        """The verified offers of `service` live at `now_ms` from peers not banned, priced
        at most `max_price` (None: any price), staking at least `min_stake` (and the book's
        own minimum). Sorted by price, stake (higher first), then PeerID.
        """
        floor = max(min_stake, self.min_stake)
        out = [
            kept
            for peer, services in self._offers.items()
            if (kept := services.get(service)) is not None
            and kept.verified
            and kept.offer.expires > now_ms
            and not self.banned(peer, now_ms)
            and (max_price is None or kept.offer.price <= max_price)
            and kept.offer.stake.amount >= floor
        ]
        out.sort(key=lambda k: (k.offer.price, -k.offer.stake.amount, k.offer.peer_id))
        return out

    def encoded(self, service: str, *, now_ms: int, limit: int = MAX_FETCH_OFFERS) -> list[bytes]:
        """The bytes of up to `limit` live verified offers of `service`, as received: what
        a peer answers on ``/p2pay/offers/2.0.0`` from its book (specs/discovery.md 6),
        the largest stake first (then price, PeerID): offers with a token stake cannot
        crowd the others out of an answer."""
        kept = self.live(service, now_ms=now_ms)
        kept.sort(key=lambda k: (-k.offer.stake.amount, k.offer.price, k.offer.peer_id))
        return [k.data for k in kept[:limit]]

    # -- receiving

    def _take_token(self, sender: str, now_ms: int) -> bool:
        full = self.burst * _TOKEN
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets.popitem(last=False)  # the least recently seen sender
            bucket = self._buckets[sender] = _Bucket(level=full, at_ms=now_ms)
        else:
            self._buckets.move_to_end(sender)
            if now_ms > bucket.at_ms:  # a clock going back refills nothing
                bucket.level = min(full, bucket.level + (now_ms - bucket.at_ms) * self.per_minute)
                bucket.at_ms = now_ms
        if bucket.level < _TOKEN:
            return False
        bucket.level -= _TOKEN
        return True

    def _drop(self, reason: Drop) -> Verdict:
        self.counts[reason] += 1
        return Verdict(kept=None, dropped=reason)

    def receive(
        self,
        data: bytes,
        *,
        sender: str,
        now_ms: int,
        service: str | None = None,
    ) -> Verdict:
        """Handle one message from `sender` (the gossip propagation source, or the remote
        peer of a fetch stream), in the order of specs/discovery.md 7.

        Args:
            data: the message: one encoded offer.
            sender: the PeerID the message came from (rate-limited per sender).
            now_ms: the receiver's clock.
            service: for an item of a fetch reply, the service asked (another is dropped).

        Returns:
            The verdict: the offer kept (and whether to read its stake), or why not.

        Raises:
            LocalProtocolError: `sender` not text or `now_ms` not a time.
        """
        _check(isinstance(sender, str), "sender is a PeerID text", False)
        _check_uint(now_ms, "now_ms", MAX_U64, False)
        if not self._take_token(sender, now_ms):
            return self._drop(Drop.RATE_LIMITED)
        try:
            offer = decode_offer(data)
            check_offer(offer, ledger=self.ledger, now_ms=now_ms)
        except RemoteProtocolError as exc:
            return self._drop(_CHECK_DROPS.get(exc.code, Drop.MALFORMED))
        if service is not None and offer.name != service:
            return self._drop(Drop.WRONG_SERVICE)
        peer = offer.peer_id
        if self.banned(peer, now_ms):
            return self._drop(Drop.BANNED)
        if offer.stake.amount == 0:
            return self._drop(Drop.NO_STAKE)
        if offer.stake.amount < self.min_stake:
            return self._drop(Drop.BELOW_MIN_STAKE)
        services = self._offers.get(peer)
        old = services.get(offer.name) if services is not None else None
        if old is not None and offer.seq <= old.offer.seq:
            return self._drop(Drop.STALE)
        if old is None:
            if services is not None and len(services) >= self.max_services_per_peer:
                return self._drop(Drop.PEER_FULL)
            if self._size >= self.max_offers and not self._make_room(offer, now_ms):
                return self._drop(Drop.BOOK_FULL)
        read = self._reads.get(peer)
        verified = (
            read is not None
            and read.read_ms is not None
            and now_ms - read.read_ms < STAKE_RECHECK_MS
            and stake_covers(read.stake, offer)
        )
        kept = KeptOffer(offer=offer, data=bytes(data), received_ms=now_ms, verified=verified)
        self._put(peer, kept)
        needs = False
        if not verified:
            if read is None:
                read = self._reads[peer] = _StakeRead()
            if read.asked_ms is None or now_ms - read.asked_ms >= STAKE_READ_RETRY_MS:
                read.asked_ms = now_ms
                needs = True
        return Verdict(kept=kept, needs_stake_check=needs)

    def _put(self, peer: str, kept: KeptOffer) -> None:
        services = self._offers.setdefault(peer, {})
        if kept.offer.name not in services:
            self._size += 1
        services[kept.offer.name] = kept
        heapq.heappush(self._by_expiry, (kept.offer.expires, peer, kept.offer.name, kept.offer.seq))
        if len(self._by_expiry) > 2 * self._size + 64:
            self._by_expiry = [
                e for e in self._by_expiry if self._current(e[1], e[2], e[3]) is not None
            ]
            heapq.heapify(self._by_expiry)

    def _current(self, peer: str, service: str, seq: int) -> KeptOffer | None:
        kept = self._offers.get(peer, {}).get(service)
        return kept if kept is not None and kept.offer.seq == seq else None

    def _remove(self, peer: str, service: str) -> None:
        services = self._offers.get(peer)
        if services is not None and services.pop(service, None) is not None:
            self._size -= 1
            if not services:  # nothing of it kept: forget its stake read too
                del self._offers[peer]
                self._reads.pop(peer, None)

    def _make_room(self, offer: Offer, now_ms: int) -> bool:
        """Forget expired offers; if the book is still full, evict the offer that expires
        first unless `offer` expires no later (then False)."""
        self.expire(now_ms)
        while self._size >= self.max_offers:
            expires, peer, service, seq = self._by_expiry[0]
            if self._current(peer, service, seq) is None:
                heapq.heappop(self._by_expiry)
                continue
            if offer.expires <= expires:
                return False
            heapq.heappop(self._by_expiry)
            self._remove(peer, service)
            self.counts[Drop.EVICTED] += 1
        return True

    def expire(self, now_ms: int) -> int:
        """Forget the offers expired at `now_ms` and the bans that have ended.

        Returns:
            How many offers were forgotten.
        """
        forgotten = 0
        while self._by_expiry and self._by_expiry[0][0] <= now_ms:
            _, peer, service, seq = heapq.heappop(self._by_expiry)
            if self._current(peer, service, seq) is not None:
                self._remove(peer, service)
                forgotten += 1
        for peer in [p for p, until in self._bans.items() if until <= now_ms]:
            del self._bans[peer]
        return forgotten

    # -- the truth: the ledger, the hello, the price charged

    def bans(self, now_ms: int, limit: int = 1_000) -> list[list[Any]]:
        """The bans in force at `now_ms`, at most `limit` (those ending last), as
        ``[peer, until]`` pairs (Unix ms) that `restore_bans` takes back: a client that runs
        as short processes keeps them in its store (specs/discovery.md 7.5)."""
        _check_uint(now_ms, "now_ms", MAX_U64, False)
        _check_uint(limit, "limit", MAX_U64, False)
        live = sorted(
            ((until, peer) for peer, until in self._bans.items() if until > now_ms), reverse=True
        )
        return [[peer, until] for until, peer in live[:limit]]

    def restore_bans(self, entries: object, now_ms: int) -> int:
        """Take back what `bans` gave. An entry not of its form, ended, or ending more than
        `lie_ban_ms` after `now_ms` is ignored (a damaged value bans nobody for longer).

        Returns:
            How many bans were restored.
        """
        _check_uint(now_ms, "now_ms", MAX_U64, False)
        if not isinstance(entries, list):
            return 0
        restored = 0
        for entry in entries:
            if len(self._bans) >= self.max_offers:
                break
            if not isinstance(entry, list) or len(entry) != 2:
                continue
            peer, until = entry
            if (
                isinstance(peer, str)
                and type(until) is int
                and now_ms < until <= now_ms + self.lie_ban_ms
            ):
                self._bans[peer] = max(self._bans.get(peer, 0), until)
                restored += 1
        return restored

    def stake_checked(self, peer: str, ledger_stake: Stake | None, now_ms: int) -> bool:
        """Report the ledger's stake record of `peer`'s account (None: no record), read
        because a verdict asked for it. Every kept offer of `peer` it covers becomes
        verified; if it does not cover one, that is a lie (`lie`).

        Returns:
            True if it covers every kept offer of `peer` (False: `peer` is now banned).
        """
        read = self._reads.get(peer)
        services = self._offers.get(peer)
        if services is None:  # nothing kept any more (expired, evicted): nothing to judge
            if read is not None:
                del self._reads[peer]
            return True
        if read is None:
            read = self._reads[peer] = _StakeRead()
        read.stake, read.read_ms, read.asked_ms = ledger_stake, now_ms, None
        if not all(stake_covers(ledger_stake, k.offer) for k in services.values()):
            self.lie(peer, "the ledger's stake does not cover the offer", now_ms)
            return False
        for name, kept in list(services.items()):
            if not kept.verified:
                services[name] = KeptOffer(kept.offer, kept.data, kept.received_ms, True)
        return True

    def hello_seen(self, peer: str, hello: Hello, now_ms: int) -> bool:
        """Compare `peer`'s hello (checked: its stream's remote is `peer`) with its kept offers:
        worse terms than an offer (a higher price; no stake, a smaller amount or penalty,
        another window) are a lie. Better terms are not: the offer is older than the hello.

        Returns:
            True if the hello agrees with every kept offer of `peer`.
        """
        services = self._offers.get(peer, {})
        for name, kept in services.items():
            terms = hello.service(name)
            if terms is not None and terms.price > kept.offer.price:
                self.lie(peer, f"hello price of {name} is above the offer's", now_ms)
                return False
            if hello.stake is None or not _terms_cover(hello.stake, kept.offer.stake):
                self.lie(peer, "hello stake is below the offer's", now_ms)
                return False
        return True

    def price_seen(self, peer: str, service: str, price: int, now_ms: int) -> bool:
        """Report that `peer` asked `price` for `service` (a PAYMENT_REQUIRED's price): above
        its kept offer's price it is a lie.

        Returns:
            True unless it was a lie.
        """
        kept = self.get(peer, service)
        if kept is not None and price > kept.offer.price:
            self.lie(peer, f"asked {price} for {service}, offered {kept.offer.price}", now_ms)
            return False
        return True

    def lie(self, peer: str, reason: str, now_ms: int) -> int:
        """`peer` lied (`reason`, for the caller's log): drop its offers and ignore it for
        `lie_ban_ms`.

        Returns:
            How many of its offers were dropped.
        """
        _check_uint(now_ms, "now_ms", MAX_U64, False)
        del reason  # the caller logs it; the book keeps no text from peers
        dropped = 0
        for service in list(self._offers.get(peer, {})):
            self._remove(peer, service)
            dropped += 1
        self._reads.pop(peer, None)
        if peer not in self._bans and len(self._bans) >= self.max_offers:
            self.expire(now_ms)
            if len(self._bans) >= self.max_offers:
                del self._bans[min(self._bans, key=lambda p: (self._bans[p], p))]
        self._bans[peer] = now_ms + self.lie_ban_ms
        self.counts[Drop.LIES] += 1
        self.counts[Drop.DROPPED_BY_LIE] += dropped
        return dropped


# ---------------------------------------------------------------------------
# Choosing a provider (specs/discovery.md 8)

FAILURE_SKIP_MS = 300_000
FAILURE_FORGET_MS = 600_000
MAX_CONSECUTIVE_FAILURES = 3
#: peers whose stats a client keeps across its runs (`Chooser.snapshot`)
MAX_REMEMBERED_PEERS = 1_000


class FailureKind(enum.StrEnum):
    """How a call to a provider failed."""

    UNREACHABLE = "unreachable"
    REFUSED = "refused"
    TIMED_OUT = "timed_out"


@dataclass(slots=True)
class PeerStats:
    """What a client saw of one provider: calls that succeeded and failed, the failures
    since the last success, the latency average (ms, None before a success) and until when
    the peer is skipped."""

    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    latency_ms: int | None = None
    skip_until_ms: int = 0
    last_failure: FailureKind | None = None
    last_failure_ms: int = 0


_Ranked = TypeVar("_Ranked", Offer, KeptOffer)


class Chooser:
    """Ranks offers by recent failures, price, stake, latency and a tie-break salted with
    the client's own PeerID (specs/discovery.md 8), deterministically, from what the
    client saw of each provider.

    Args:
        client: the choosing client's PeerID text (the tie-break's salt).
        max_failures: consecutive failures after which a peer is skipped.
        skip_ms: how long it is skipped after each failure from then on.
        max_peers: peers whose stats are kept (the least recently updated are forgotten).
    """

    def __init__(
        self,
        *,
        client: str = "",
        max_failures: int = MAX_CONSECUTIVE_FAILURES,
        skip_ms: int = FAILURE_SKIP_MS,
        max_peers: int = MAX_OFFERS,
    ) -> None:
        for name, value in (("max_failures", max_failures), ("max_peers", max_peers)):
            _check_uint(value, name, MAX_U64, False)
            _check(value >= 1, f"{name} is at least 1", False)
        _check_uint(skip_ms, "skip_ms", MAX_U64, False)
        _check(isinstance(client, str), "client is a PeerID text", False)
        self.client = client.encode()
        self.max_failures = max_failures
        self.skip_ms = skip_ms
        self.max_peers = max_peers
        self._stats: OrderedDict[str, PeerStats] = OrderedDict()

    def stats(self, peer: str) -> PeerStats:
        """A copy of what was seen of `peer` (all zero if nothing)."""
        seen = self._stats.get(peer)
        return PeerStats() if seen is None else replace(seen)

    def _entry(self, peer: str) -> PeerStats:
        _check(isinstance(peer, str), "peer is a PeerID text", False)
        seen = self._stats.get(peer)
        if seen is None:
            if len(self._stats) >= self.max_peers:
                self._stats.popitem(last=False)
            seen = self._stats[peer] = PeerStats()
        else:
            self._stats.move_to_end(peer)
        return seen

    def record_success(self, peer: str, latency_ms: int, now: int) -> None:
        """A call to `peer` succeeded after `latency_ms`."""
        _check_uint(latency_ms, "latency_ms", MAX_U64, False)
        _check_uint(now, "now", MAX_U64, False)
        seen = self._entry(peer)
        seen.successes += 1
        seen.consecutive_failures = 0
        seen.skip_until_ms = 0
        seen.latency_ms = (
            latency_ms if seen.latency_ms is None else (3 * seen.latency_ms + latency_ms) // 4
        )

    def record_failure(self, peer: str, kind: FailureKind, now: int) -> None:
        """A call to `peer` failed (`kind`) at `now`."""
        try:
            kind = FailureKind(kind)
        except ValueError:
            raise LocalProtocolError(f"kind is one of {[k.value for k in FailureKind]}") from None
        _check_uint(now, "now", MAX_U64, False)
        seen = self._entry(peer)
        seen.failures += 1
        seen.consecutive_failures += 1
        seen.last_failure = kind
        seen.last_failure_ms = now
        if seen.consecutive_failures >= self.max_failures:
            seen.skip_until_ms = now + self.skip_ms

    def snapshot(self, limit: int = MAX_REMEMBERED_PEERS) -> list[list[Any]]:
        """What was seen of the `limit` most recently updated peers, as plain values (a
        JSON array of arrays) that `restore` takes back: a client that runs as short
        processes (a command line) keeps it in its store, so that the providers that
        failed it are not tried first again at its next run (specs/discovery.md 8)."""
        _check_uint(limit, "limit", MAX_U64, False)
        entries = list(self._stats.items())[-limit:] if limit else []
        return [
            [
                peer,
                seen.successes,
                seen.failures,
                seen.consecutive_failures,
                seen.latency_ms,
                seen.skip_until_ms,
                None if seen.last_failure is None else seen.last_failure.value,
                seen.last_failure_ms,
            ]
            for peer, seen in entries
        ]

    def restore(self, entries: object) -> int:
        """Take back what `snapshot` gave (entries not of its form are ignored: the store
        is ours, but an old or damaged value must not stop a call).

        Returns:
            How many peers were restored.
        """
        restored = 0
        if not isinstance(entries, list):
            return 0
        for entry in entries[-self.max_peers :]:
            if not isinstance(entry, list) or len(entry) != 8:
                continue
            peer, successes, failures, consecutive, latency, skip_until, last, last_ms = entry
            counts = (successes, failures, consecutive, skip_until, last_ms)
            if (
                not isinstance(peer, str)
                or not all(type(c) is int and 0 <= c <= MAX_U64 for c in counts)
                or not (latency is None or (type(latency) is int and 0 <= latency <= MAX_U64))
                or last not in (None, *(k.value for k in FailureKind))
            ):
                continue
            seen = self._entry(peer)
            seen.successes, seen.failures = successes, failures
            seen.consecutive_failures, seen.latency_ms = consecutive, latency
            seen.skip_until_ms = skip_until
            seen.last_failure = None if last is None else FailureKind(last)
            seen.last_failure_ms = last_ms
            restored += 1
        return restored

    def skipped(self, peer: str, now: int) -> bool:
        """True if `peer` is skipped at `now` (too many consecutive failures)."""
        seen = self._stats.get(peer)
        return seen is not None and now < seen.skip_until_ms

    def rank(self, offers: Iterable[_Ranked], now: int) -> list[_Ranked]:
        """`offers` best first, without those of skipped peers. Deterministic: the same
        offers and stats give the same order whatever the input order."""

        def key(item: _Ranked) -> tuple[int, int, int, int, bytes]:
            offer = item.offer if isinstance(item, KeptOffer) else item
            peer = offer.peer_id
            seen = self._stats.get(peer)
            recent = seen is not None and now - seen.last_failure_ms < FAILURE_FORGET_MS
            return (
                seen.consecutive_failures if seen is not None and recent else 0,
                offer.price,
                -offer.stake.amount,
                0 if seen is None or seen.latency_ms is None else seen.latency_ms,
                hashlib.sha256(self.client + peer.encode()).digest(),
            )

        kept = [
            item
            for item in offers
            if not self.skipped((item.offer if isinstance(item, KeptOffer) else item).peer_id, now)
        ]
        kept.sort(key=key)
        return kept
