"""Unit tests for p2pay.core.identity: Ed25519 keys, signatures, PeerIDs vs py-libp2p."""

from __future__ import annotations

import hashlib

import base58
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.peer.id import ID

from p2pay.core.errors import DecodeError, ErrorCode, LocalProtocolError
from p2pay.core.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Keypair,
    peer_id_from_public,
    public_from_peer_id,
    verify,
)

ALICE_SEED = bytes([1]) * 32
BOB_SEED = bytes([2]) * 32
ALICE = Keypair.from_seed(ALICE_SEED)
BOB = Keypair.from_seed(BOB_SEED)
MESSAGE = b"p2pay/v1/test message"

# Pinned so that a change in derivation shows up even if py-libp2p changed the same way.
ALICE_PEER_ID = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
ALICE_PUBLIC_HEX = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"


def libp2p_peer_id(seed: bytes) -> tuple[ID, bytes]:
    """What py-libp2p 0.8.1 computes for the key of `seed`: (PeerID, raw public key)."""
    pair = create_new_key_pair(seed)
    return ID.from_pubkey(pair.public_key), pair.public_key.to_bytes()


# ----------------------------------------------------------------------------- keys


def test_fixed_keys() -> None:
    assert ALICE.public.hex() == ALICE_PUBLIC_HEX
    assert ALICE.peer_id == ALICE_PEER_ID
    assert ALICE.account == ALICE.public
    assert len(ALICE.public) == PUBLIC_KEY_SIZE
    assert ALICE.public != BOB.public
    assert Keypair.from_seed(ALICE_SEED) == ALICE


@pytest.mark.parametrize(
    "seed",
    [
        b"",
        bytes(31),
        bytes(33),
        bytes(64),  # a libsodium "secret key" (seed + public) is not a seed
        bytearray(32),
        memoryview(bytes(32)),
        "a" * 32,
        None,
        32,
        list(range(32)),
    ],
)
def test_keypair_only_from_32_byte_seed(seed: object) -> None:
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        Keypair.from_seed(seed)  # type: ignore[arg-type]


def test_seed_never_in_repr() -> None:
    seed = bytes(range(32))
    key = Keypair.from_seed(seed)
    for text in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert repr(seed) not in text
        assert seed.hex() not in text
        assert "seed" not in text
        assert "_signer" not in text
    assert repr(key.public) in repr(key)


def test_keypair_is_frozen() -> None:
    with pytest.raises(AttributeError):
        ALICE.public = BOB.public  # type: ignore[misc]


# ----------------------------------------------------------------------------- signatures


def test_signature_equals_pynacl_and_verifies() -> None:
    signature = ALICE.sign(MESSAGE)
    assert len(signature) == SIGNATURE_SIZE
    assert signature == nacl.signing.SigningKey(ALICE_SEED).sign(MESSAGE).signature
    assert verify(ALICE.public, MESSAGE, signature)
    # Ed25519 is deterministic
    assert ALICE.sign(MESSAGE) == signature
    # and equal to what py-libp2p's key signs
    assert create_new_key_pair(ALICE_SEED).private_key.sign(MESSAGE) == signature


def test_verify_accepts_bytes_like() -> None:
    signature = ALICE.sign(MESSAGE)
    assert verify(bytearray(ALICE.public), memoryview(MESSAGE), bytearray(signature))  # type: ignore[arg-type]


def test_verify_refuses_wrong_key_and_message() -> None:
    signature = ALICE.sign(MESSAGE)
    assert not verify(BOB.public, MESSAGE, signature)
    assert not verify(ALICE.public, MESSAGE + b"!", signature)
    assert not verify(ALICE.public, b"", signature)


def test_verify_refuses_every_flipped_bit() -> None:
    signature = ALICE.sign(MESSAGE)
    for i in range(len(signature) * 8):
        flipped = bytearray(signature)
        flipped[i // 8] ^= 1 << (i % 8)
        assert not verify(ALICE.public, MESSAGE, bytes(flipped)), i
    for i in range(len(MESSAGE) * 8):
        flipped = bytearray(MESSAGE)
        flipped[i // 8] ^= 1 << (i % 8)
        assert not verify(ALICE.public, bytes(flipped), signature), i
    for i in range(len(ALICE.public) * 8):
        flipped = bytearray(ALICE.public)
        flipped[i // 8] ^= 1 << (i % 8)
        assert not verify(bytes(flipped), MESSAGE, signature), i


@pytest.mark.parametrize(
    ("public", "message", "signature"),
    [
        (b"", MESSAGE, bytes(64)),
        (bytes(31), MESSAGE, bytes(64)),
        (bytes(33), MESSAGE, bytes(64)),
        (ALICE.public, MESSAGE, b""),
        (ALICE.public, MESSAGE, bytes(63)),
        (ALICE.public, MESSAGE, bytes(65)),
        (ALICE.public + b"\x00", MESSAGE, ALICE.sign(MESSAGE)),
        (ALICE.public, MESSAGE, ALICE.sign(MESSAGE) + b"\x00"),
        (ALICE.public, MESSAGE, bytes(64)),
        (bytes(32), MESSAGE, bytes(64)),  # low-order public key
        (b"\xff" * 32, MESSAGE, b"\xff" * 64),  # not a point, non-canonical scalar
        (None, MESSAGE, ALICE.sign(MESSAGE)),
        (ALICE.public, None, ALICE.sign(MESSAGE)),
        (ALICE.public, MESSAGE, None),
        (ALICE.public.hex(), MESSAGE, ALICE.sign(MESSAGE)),
        (ALICE.public, MESSAGE.decode(), ALICE.sign(MESSAGE)),
        (1, 2, 3),
    ],
)
def test_verify_returns_false_never_raises(
    public: object, message: object, signature: object
) -> None:
    assert verify(public, message, signature) is False  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=64), st.binary(max_size=70))
def test_verify_random_garbage_is_false(public: bytes, message: bytes, signature: bytes) -> None:
    assert verify(public, message, signature) is False


# ----------------------------------------------------------------------------- PeerID


@pytest.mark.parametrize("seed", [bytes([i]) * 32 for i in (0, 1, 2, 3, 4, 255)])
def test_peer_id_identical_to_py_libp2p(seed: bytes) -> None:
    theirs, their_public = libp2p_peer_id(seed)
    ours = Keypair.from_seed(seed)
    assert their_public == ours.public
    assert str(theirs) == ours.peer_id
    assert theirs.to_bytes() == base58.b58decode(ours.peer_id)
    assert ours.peer_id.startswith("12D3KooW")
    # both directions
    assert public_from_peer_id(str(theirs)) == ours.public
    assert ID.from_base58(ours.peer_id) == theirs
    extracted = ID.from_base58(ours.peer_id).extract_public_key()
    assert extracted is not None and extracted.to_bytes() == ours.public


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_peer_id_matches_py_libp2p_for_any_seed(seed: bytes) -> None:
    theirs, their_public = libp2p_peer_id(seed)
    ours = Keypair.from_seed(seed)
    assert their_public == ours.public
    assert str(theirs) == ours.peer_id == peer_id_from_public(ours.public)
    assert public_from_peer_id(str(theirs)) == ours.public
    assert ID.from_string(ours.peer_id) == theirs


@pytest.mark.parametrize("public", [b"", bytes(31), bytes(33), bytearray(32), "x" * 32, None])
def test_peer_id_from_public_refuses_wrong_keys(public: object) -> None:
    with pytest.raises(LocalProtocolError):
        peer_id_from_public(public)  # type: ignore[arg-type]


def _b58(data: bytes) -> str:
    return base58.b58encode(data).decode("ascii")


def _refuse(text: object) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        public_from_peer_id(text)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.MALFORMED
    return info.value


def test_public_from_peer_id_refuses_sha256_peer_ids() -> None:
    qm = _b58(bytes([0x12, 0x20]) + hashlib.sha256(b"some rsa key").digest())
    assert qm.startswith("Qm")
    _refuse(qm)
    # a real secp256k1 PeerID from py-libp2p: identity multihash, but not an Ed25519 key
    secp = str(ID.from_pubkey(create_secp256k1_key_pair(bytes([5]) * 32).public_key))
    _refuse(secp)


def test_public_from_peer_id_refuses_wrong_prefixes() -> None:
    public = ALICE.public
    for prefix in (
        bytes([0x00, 0x24, 0x08, 0x02, 0x12, 0x20]),  # key type secp256k1
        bytes([0x00, 0x24, 0x08, 0x00, 0x12, 0x20]),  # key type RSA
        bytes([0x00, 0x25, 0x08, 0x01, 0x12, 0x20]),  # multihash length off by one
        bytes([0x12, 0x24, 0x08, 0x01, 0x12, 0x20]),  # sha2-256 code with a key inside
        bytes([0x00, 0x24, 0x08, 0x01, 0x1A, 0x20]),  # protobuf field 3
        bytes([0x01, 0x24, 0x08, 0x01, 0x12, 0x20]),
    ):
        _refuse(_b58(prefix + public))
    good = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
    _refuse(_b58(good + public[:31]))
    _refuse(_b58(good + public + b"\x00"))
    _refuse(_b58(public))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "12D3KooW",
        "not a peer id at all, not a peer id at all, really",
        ALICE_PEER_ID[:-1],
        ALICE_PEER_ID + "1",
        ALICE_PEER_ID + " ",  # base58 would ignore trailing whitespace
        ALICE_PEER_ID + "\n",
        " " + ALICE_PEER_ID,
        "1" + ALICE_PEER_ID,
        ALICE_PEER_ID.replace("K", "0", 1),  # '0' is not base58
        ALICE_PEER_ID.replace("K", "l", 1),  # nor 'l'
        ALICE_PEER_ID.replace("D", "\u0414", 1),  # Cyrillic DE
        ALICE_PEER_ID.lower(),
        "z" + ALICE_PEER_ID,  # multibase prefix is not our format
        "x" * 1000,
        None,
        ALICE.public,
        base58.b58encode(bytes([0, 0x24, 8, 1, 0x12, 0x20]) + ALICE.public),  # bytes, not str
    ],
)
def test_public_from_peer_id_refuses_garbage(text: object) -> None:
    _refuse(text)


def test_peer_id_round_trip_fixed_keys() -> None:
    for seed in (bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32, bytes([4]) * 32):
        key = Keypair.from_seed(seed)
        assert public_from_peer_id(key.peer_id) == key.public


def test_peer_id_conversions_are_memoised_and_still_refuse_bad_input() -> None:
    key = Keypair.from_seed(bytes([9]) * 32)
    first = peer_id_from_public(key.public)
    assert peer_id_from_public(key.public) is first  # served from the cache
    assert public_from_peer_id(first) == key.public
    assert public_from_peer_id(first) is public_from_peer_id(first)
    for bad_key in (bytearray(key.public), [1] * 32, key.public[:31], None):
        with pytest.raises(LocalProtocolError):
            peer_id_from_public(bad_key)  # type: ignore[arg-type]
    for bad_id in ([first], first + " ", first[:-1] + "0", None):
        with pytest.raises(DecodeError):
            public_from_peer_id(bad_id)  # type: ignore[arg-type]
