"""Identity: Ed25519 keys, ledger accounts and libp2p PeerIDs (specs/protocol.md, "Identity").

Theory of operation
-------------------
One Ed25519 key is everything a peer is: it signs vouchers and receipts, its 32-byte
public key is the peer's ledger account, and the libp2p PeerID derived from it is what
the Noise handshake authenticates. So when a stream's remote PeerID decodes to the
channel payer's public key, the stream *is* the payer.

A PeerID of an Ed25519 key is the base58btc text of the identity multihash of the
protobuf-encoded public key: ``00 24 | 08 01 12 20 | pub32`` (multihash code 0x00,
length 36; protobuf field 1 KeyType=Ed25519(1), field 2 bytes(32)). That is exactly
what py-libp2p computes (tests check it against py-libp2p itself).

The core never makes keys up: `Keypair.from_seed` takes the 32 random bytes from the
caller (`p2pay.keys` reads or creates the key file).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NewType

import base58
import nacl.exceptions
import nacl.signing

from p2pay.core.errors import DecodeError, LocalProtocolError

PeerId = NewType("PeerId", str)
Account = NewType("Account", bytes)

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


@dataclass(frozen=True, slots=True)
class Keypair:
    """An Ed25519 key pair made from a 32-byte seed. The seed never appears in repr()."""

    seed: bytes = field(repr=False)
    public: bytes = field(init=False)
    _signer: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise LocalProtocolError("an Ed25519 seed is exactly 32 bytes")
        signer = nacl.signing.SigningKey(self.seed)
        object.__setattr__(self, "_signer", signer)
        object.__setattr__(self, "public", bytes(signer.verify_key))

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        """Derive the key pair of a 32-byte Ed25519 seed (RFC 8032 secret key).

        Args:
            seed: exactly 32 bytes (``bytes``, not a bytearray), from a CSPRNG.

        Returns:
            The key pair; its repr() shows the public key only.

        Raises:
            LocalProtocolError: if `seed` is not 32 bytes.
        """
        return cls(seed=seed)

    @property
    def account(self) -> Account:
        """The ledger account: the 32-byte public key."""
        return Account(self.public)

    @property
    def peer_id(self) -> PeerId:
        return peer_id_from_public(self.public)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of `message`."""
        return self._signer.sign(message).signature


@functools.lru_cache(maxsize=4096)
def _verify_key(public: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature. Never raises on bad input: returns False.

    Args:
        public: 32-byte public key.
        message: the signed bytes.
        signature: 64-byte signature.

    Returns:
        True if and only if `signature` is `public`'s valid signature of `message`;
        False for anything else, including arguments of the wrong type or length.
    """
    if not all(isinstance(x, bytes | bytearray | memoryview) for x in (public, message, signature)):
        return False
    try:
        public, message, signature = bytes(public), bytes(message), bytes(signature)
        if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        _verify_key(public).verify(message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def peer_id_from_public(public: bytes) -> PeerId:
    """The libp2p PeerID text ("12D3KooW...") of an Ed25519 public key.

    Args:
        public: the 32-byte public key.

    Returns:
        base58btc of the identity multihash of the protobuf-encoded key.

    Raises:
        LocalProtocolError: if `public` is not 32 bytes.
    """
    if type(public) is not bytes or len(public) != PUBLIC_KEY_SIZE:
        if not isinstance(public, bytes) or len(public) != PUBLIC_KEY_SIZE:
            raise LocalProtocolError("an Ed25519 public key is exactly 32 bytes")
        public = bytes(public)  # a bytes subclass: cache by its value
    return _peer_id_of(public)


# The node converts between keys and PeerIDs on every call and every stream (base58 is
# ~40 us each way); both caches are bounded, and hold only valid pairs.
@functools.lru_cache(maxsize=4096)
def _peer_id_of(public: bytes) -> PeerId:
    return PeerId(base58.b58encode(_PEER_ID_PREFIX + public).decode("ascii"))


def public_from_peer_id(peer_id: str) -> bytes:
    """Recover the Ed25519 public key from a PeerID text.

    Only the canonical text is accepted: the exact string `peer_id_from_public` gives
    for the key (the base58 library would otherwise ignore trailing whitespace).

    Args:
        peer_id: a PeerID in base58btc ("12D3KooW...").

    Returns:
        The 32-byte public key.

    Raises:
        DecodeError: if the text is not base58, or not the identity multihash of an
            Ed25519 key (sha256 "Qm..." PeerIDs do not contain the key).
    """
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 64:
        raise DecodeError("not an Ed25519 PeerID")
    return _public_of(str(peer_id))


@functools.lru_cache(maxsize=4096)
def _public_of(peer_id: str) -> bytes:
    """`public_from_peer_id` of a plain str (errors are raised, so never cached)."""
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except ValueError as exc:
        raise DecodeError(f"PeerID is not base58: {exc}") from None
    if len(raw) != len(_PEER_ID_PREFIX) + PUBLIC_KEY_SIZE or not raw.startswith(_PEER_ID_PREFIX):
        raise DecodeError("PeerID is not the identity multihash of an Ed25519 key")
    public = raw[len(_PEER_ID_PREFIX) :]
    if peer_id_from_public(public) != peer_id:
        raise DecodeError("PeerID text is not canonical base58")
    return public
