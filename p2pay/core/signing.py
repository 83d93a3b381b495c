"""Signature schemes of vouchers and receipts, chosen by the ledger they name.

Theory of operation
-------------------
A `Request` (voucher) and a `Response` (receipt) are signed by a channel party and, in a
claim or a redeem, checked by the settlement contract. What the contract can check depends
on where it runs, so the scheme is a property of the ledger, read from the ledger id every
message carries (`scheme_for`):

* `ED25519` (memory and SQLite ledgers, any ledger id that is not an EVM one): Ed25519 over
  the canonical CBOR signing bytes; the account is the 32-byte public key.
* `EIP712` (EVM ledgers, ``b"p2pay:evm:"...`` ids, `p2pay.core.evmsig`): secp256k1 over the
  EIP-712 digest of the same fields; the account is 12 zero bytes then the address.

The wire format, the signing bytes and `Request.hash` are the same under both; only the
signature (64 or 65 bytes) and what it is computed over differ. Hellos stay Ed25519: they
are signed by the libp2p identity whatever the ledger.

A signer is anything with ``public``, ``account`` and ``sign(bytes)``: an Ed25519 `Keypair`
or an `EvmKey`. Under `EIP712` a `Keypair` signs with its derived settlement key
(`EvmKey.derive`), so a node holding one key file can sign on either kind of ledger.
"""

from __future__ import annotations

import enum
from typing import Protocol

from p2pay.core import evmsig
from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import SIGNATURE_SIZE, Keypair, verify

__all__ = [
    "SIGNATURE_SIZES",
    "Scheme",
    "SignedMessage",
    "Signer",
    "account_for",
    "scheme_for",
    "sign_message",
    "signer_for",
    "verify_message",
]

#: every signature size some scheme uses (a message's size is checked by its scheme)
SIGNATURE_SIZES = frozenset({SIGNATURE_SIZE, evmsig.EVM_SIGNATURE_SIZE})


class Scheme(enum.StrEnum):
    ED25519 = "ed25519"
    EIP712 = "secp256k1-eip712"


class Signer(Protocol):
    @property
    def public(self) -> bytes: ...

    @property
    def account(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class SignedMessage(Protocol):
    """What a scheme needs of a message: its ledger, signing bytes and EIP-712 digest."""

    @property
    def ledger(self) -> bytes: ...

    @property
    def signing_bytes(self) -> bytes: ...

    def eip712_digest(self) -> bytes | None: ...


def scheme_for(ledger: bytes) -> Scheme:
    """The scheme that signs messages naming `ledger`.

    Args:
        ledger: a ledger id.

    Returns:
        `Scheme.EIP712` for an EVM ledger id, else `Scheme.ED25519`.
    """
    return Scheme.EIP712 if evmsig.is_evm_ledger(ledger) else Scheme.ED25519


def _evm_key(key: Signer) -> evmsig.EvmKey:
    if isinstance(key, evmsig.EvmKey):
        return key
    if isinstance(key, Keypair):
        return evmsig.EvmKey.derive(key)
    raise LocalProtocolError("an EVM ledger needs an EvmKey or an Ed25519 Keypair to sign")


def account_for(key: Signer, ledger: bytes) -> bytes:
    """The account `key` has on `ledger` (what channels name as payer or payee).

    Args:
        key: a `Keypair` or an `EvmKey`.
        ledger: the ledger id.

    Returns:
        ``key.account`` under Ed25519; under EIP-712 the account of the key's settlement
        address (derived from a `Keypair`'s seed).

    Raises:
        LocalProtocolError: the key cannot act on that ledger.
    """
    if scheme_for(ledger) is Scheme.EIP712:
        return _evm_key(key).account
    return key.account


def signer_for(key: Signer, ledger: bytes) -> Signer:
    """The key that signs vouchers and receipts naming `ledger`.

    Under EIP-712 a `Keypair` is replaced by its derived `EvmKey` once here, so that a node
    signing many messages does not derive it for each; its ``public`` and ``account`` are
    then the account on that ledger.

    Args:
        key: a `Keypair` or an `EvmKey`.
        ledger: the ledger id.

    Returns:
        `key` under Ed25519; its `EvmKey` under EIP-712.

    Raises:
        LocalProtocolError: the key cannot act on that ledger.
    """
    if scheme_for(ledger) is Scheme.EIP712:
        return _evm_key(key)
    return key


def sign_message(key: Signer, message: SignedMessage) -> bytes:
    """Sign `message` with the scheme of the ledger it names.

    Args:
        key: a `Keypair` or an `EvmKey`.
        message: an unsigned `Request` or `Response`.

    Returns:
        The signature: 64 bytes (Ed25519) or 65 bytes (EIP-712, ``r || s || v``).

    Raises:
        LocalProtocolError: the key cannot sign on that ledger.
    """
    if scheme_for(message.ledger) is Scheme.EIP712:
        digest = message.eip712_digest()
        assert digest is not None  # an EVM ledger id always has a domain
        return _evm_key(key).sign_digest(digest)
    return key.sign(message.signing_bytes)


def verify_message(public: bytes, message: SignedMessage, signature: bytes) -> bool:
    """True if `signature` is the signature of `public`'s owner over `message`.

    Never raises. Under Ed25519 `public` is the 32-byte public key; under EIP-712 it is the
    32-byte account (or bare 20-byte address) that must be recovered from the signature.

    Args:
        public: who must have signed (a channel party's account).
        message: the `Request` or `Response`.
        signature: its signature.

    Returns:
        True if and only if the signature is valid for that signer under the ledger's
        scheme (high-s and zero-address signatures are invalid).
    """
    if scheme_for(message.ledger) is Scheme.EIP712:
        address = evmsig.address_of_account(public)
        if address is None:
            return False
        digest = message.eip712_digest()
        if digest is None:  # pragma: no cover - scheme_for said EVM
            return False
        return evmsig.recover(digest, signature) == address
    return verify(public, message.signing_bytes, signature)
