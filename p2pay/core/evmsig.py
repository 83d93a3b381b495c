"""secp256k1 keys and EIP-712 signatures for EVM ledgers (specs/settlement.md "EVM binding").

Theory of operation
-------------------
An EVM chain has no Ed25519 precompile, so the settlement contract cannot check the
Ed25519 signature of a voucher. On an EVM ledger a voucher (`Request`) and a receipt
(`Response`) are therefore signed with secp256k1 over EIP-712 typed data, which the contract
checks with ``ecrecover``; everything else about the messages (the CBOR signing bytes on the
wire, `Request.hash`, the frames) is unchanged. Which scheme signs a message is decided by
the ledger it names (`p2pay.core.signing`): an EVM ledger id is ``b"p2pay:evm:" ||
u64be(chain id) || contract address`` (38 bytes), and the EIP-712 domain (``name "p2pay"``,
``version "1"``, chain id, verifying contract) is read from it.

On an EVM ledger an account is an address, written as a 32-byte account: 12 zero bytes then
the 20-byte address (the ABI encoding of an address). The zero address is never an account.

A peer keeps its Ed25519 key as its libp2p identity. Its settlement key `EvmKey` is either
its own secp256k1 secret or derived from the Ed25519 seed (`EvmKey.derive`). The two are
bound both ways in the peer's hello (specs/protocol.md §9 rule 7): the hello, signed with
the Ed25519 key, names the account, and carries the account key's `binding_proof` (its
signature of `binding_digest(ledger, peer)`), so a peer can neither name an account whose
key it does not hold nor have its account named by another identity.

Signatures are 65 bytes ``r || s || v`` with ``v`` in {27, 28}; a signature whose ``s`` is
above half the curve order (malleable twin) is refused, as is one recovering no address.
Everything here is computation (coincurve's libsecp256k1 and pycryptodome's Keccak): no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from p2pay.core import codec
from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair

__all__ = [
    "ADDRESS_SIZE",
    "DOMAIN_BIND",
    "EVM_LEDGER_ID_SIZE",
    "EVM_LEDGER_PREFIX",
    "EVM_SIGNATURE_SIZE",
    "EvmKey",
    "account_of_address",
    "address_of_account",
    "binding_digest",
    "binding_proof",
    "check_binding",
    "domain_separator",
    "evm_ledger_id",
    "is_evm_ledger",
    "keccak256",
    "parse_evm_ledger_id",
    "recover",
    "request_digest",
    "response_digest",
]

EVM_LEDGER_PREFIX = b"p2pay:evm:"
EVM_LEDGER_ID_SIZE = len(EVM_LEDGER_PREFIX) + 8 + 20
ADDRESS_SIZE = 20
EVM_SIGNATURE_SIZE = 65
DOMAIN_BIND = "p2pay/v1/bind"
_DERIVE_DOMAIN = b"p2pay/v1/evm-key"
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _N // 2
_MAX_U64 = (1 << 64) - 1

_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
_REQUEST_TYPE = (
    b"Request(bytes ledger,bytes32 channel,uint64 n,uint256 paid,uint256 price,"
    b"string service,bytes32 bodyHash,uint64 deadline)"
)
_RESPONSE_TYPE = (
    b"Response(bytes ledger,bytes32 channel,uint64 n,bytes32 requestHash,string status,"
    b"uint256 price,uint256 spent,bytes32 bodyHash)"
)


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as Ethereum uses it (not SHA3-256).

    Args:
        data: the bytes to hash.

    Returns:
        The 32-byte digest.
    """
    from Crypto.Hash import keccak

    return keccak.new(digest_bits=256, data=bytes(data)).digest()


# ---------------------------------------------------------------------------
# ledger ids and accounts


def evm_ledger_id(chain_id: int, contract: bytes) -> bytes:
    """The ledger id of a settlement contract: ``b"p2pay:evm:" || u64be(chain) || address``.

    Args:
        chain_id: the EIP-155 chain id, in ``[0, 2**64)``.
        contract: the contract's 20-byte address.

    Returns:
        The 38-byte ledger id.

    Raises:
        LocalProtocolError: an argument is out of range.
    """
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 <= chain_id <= _MAX_U64:
        raise LocalProtocolError("chain id must be an integer in [0, 2**64)")
    if not isinstance(contract, bytes) or len(contract) != ADDRESS_SIZE:
        raise LocalProtocolError("a contract address is 20 bytes")
    return EVM_LEDGER_PREFIX + chain_id.to_bytes(8, "big") + contract


def parse_evm_ledger_id(ledger: bytes) -> tuple[int, bytes] | None:
    """``(chain id, contract address)`` of an EVM ledger id, or None for any other id.

    Args:
        ledger: a ledger id.

    Returns:
        The pair, or None if `ledger` is not an EVM ledger id.
    """
    if (
        not isinstance(ledger, bytes)
        or len(ledger) != EVM_LEDGER_ID_SIZE
        or not ledger.startswith(EVM_LEDGER_PREFIX)
    ):
        return None
    start = len(EVM_LEDGER_PREFIX)
    return int.from_bytes(ledger[start : start + 8], "big"), ledger[start + 8 :]


def is_evm_ledger(ledger: bytes) -> bool:
    """True if `ledger` is an EVM ledger id (its messages are signed with EIP-712)."""
    return parse_evm_ledger_id(ledger) is not None


def account_of_address(address: bytes) -> bytes:
    """The 32-byte account of a 20-byte address (12 zero bytes, then the address).

    Raises:
        LocalProtocolError: not 20 bytes, or the zero address.
    """
    if not isinstance(address, bytes) or len(address) != ADDRESS_SIZE:
        raise LocalProtocolError("an address is 20 bytes")
    if address == bytes(ADDRESS_SIZE):
        raise LocalProtocolError("the zero address is not an account")
    return bytes(12) + address


def address_of_account(account: bytes) -> bytes | None:
    """The address inside a 32-byte EVM account, or None if `account` is not one.

    Args:
        account: 32 bytes (or a bare 20-byte address, accepted as is).

    Returns:
        The 20-byte non-zero address, or None.
    """
    if not isinstance(account, bytes):
        return None
    if len(account) == 32 and account[:12] == bytes(12):
        account = account[12:]
    if len(account) != ADDRESS_SIZE or account == bytes(ADDRESS_SIZE):
        return None
    return account


# ---------------------------------------------------------------------------
# keys


def _address_of_public(public_uncompressed: bytes) -> bytes:
    return keccak256(public_uncompressed[1:])[12:]


@dataclass(frozen=True, slots=True)
class EvmKey:
    """A secp256k1 settlement key. The secret never appears in repr().

    Raises:
        LocalProtocolError: on construction, if the secret is not a valid key.
    """

    secret: bytes = field(repr=False)
    address: bytes = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != 32:
            raise LocalProtocolError("a secp256k1 secret is exactly 32 bytes")
        if not 0 < int.from_bytes(self.secret, "big") < _N:
            raise LocalProtocolError("secp256k1 secret out of range")
        import coincurve

        public = coincurve.PrivateKey(self.secret).public_key.format(compressed=False)
        object.__setattr__(self, "address", _address_of_public(public))

    @classmethod
    def from_secret(cls, secret: bytes) -> EvmKey:
        """The key of a 32-byte secret (e.g. an Ethereum private key).

        Raises:
            LocalProtocolError: not 32 bytes, or 0 / above the curve order.
        """
        return cls(secret=secret)

    @classmethod
    def derive(cls, key: Keypair) -> EvmKey:
        """The settlement key derived from an Ed25519 identity's seed.

        ``secret = BLAKE2b-256(b"p2pay/v1/evm-key" || seed || counter)`` for the first
        ``counter = 0, 1, ...`` (one byte) that gives a valid key, so one key file is both
        the libp2p identity and the settlement key; nobody without the seed can derive it.

        Args:
            key: the Ed25519 key pair.

        Returns:
            The derived key.
        """
        for counter in range(256):
            data = _DERIVE_DOMAIN + key.seed + bytes([counter])
            secret = hashlib.blake2b(data, digest_size=32).digest()
            if 0 < int.from_bytes(secret, "big") < _N:
                return cls(secret=secret)
        raise LocalProtocolError("no valid key derived")  # pragma: no cover - p < 2**-8000

    @property
    def account(self) -> bytes:
        """The 32-byte ledger account: 12 zero bytes then the address."""
        return bytes(12) + self.address

    @property
    def public(self) -> bytes:
        """What `verify` takes for this key: the account (signatures recover addresses)."""
        return self.account

    def sign_digest(self, digest: bytes) -> bytes:
        """The 65-byte signature ``r || s || v`` (low s, v in {27, 28}) of a 32-byte digest.

        Raises:
            LocalProtocolError: `digest` is not 32 bytes.
        """
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise LocalProtocolError("a digest is 32 bytes")
        import coincurve

        raw = coincurve.PrivateKey(self.secret).sign_recoverable(digest, hasher=None)
        return raw[:64] + bytes([27 + raw[64]])

    def sign(self, message: bytes) -> bytes:
        """The 64-byte ``r || s`` of ``keccak256(message)``: what this key gives when asked
        to sign for an Ed25519 ledger. Such a ledger checks Ed25519 only, so it refuses the
        signature (INVALID_SIGNATURE) rather than the key failing to sign."""
        return self.sign_digest(keccak256(message))[:64]


def recover(digest: bytes, signature: bytes) -> bytes | None:
    """The address that signed a 32-byte digest, or None.

    Never raises: a signature that is not 65 bytes, has ``v`` outside {27, 28}, ``r`` or
    ``s`` zero or at least the curve order, or ``s`` above half the order (high s), gives
    None.

    Args:
        digest: the signed 32-byte digest.
        signature: ``r || s || v``.

    Returns:
        The 20-byte address, or None.
    """
    if not isinstance(digest, bytes) or len(digest) != 32:
        return None
    if not isinstance(signature, bytes) or len(signature) != EVM_SIGNATURE_SIZE:
        return None
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28) or not 0 < r < _N or not 0 < s <= _HALF_N:
        return None
    import coincurve

    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except Exception:  # coincurve raises bare Exception for unrecoverable signatures
        return None
    address = _address_of_public(public.format(compressed=False))
    return None if address == bytes(ADDRESS_SIZE) else address


# ---------------------------------------------------------------------------
# EIP-712


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def domain_separator(chain_id: int, contract: bytes) -> bytes:
    """The EIP-712 domain separator ``{name: "p2pay", version: "1", chainId, verifyingContract}``.

    Args:
        chain_id: the chain id.
        contract: the 20-byte settlement contract address.

    Returns:
        32 bytes.
    """
    return keccak256(
        keccak256(_DOMAIN_TYPE)
        + keccak256(b"p2pay")
        + keccak256(b"1")
        + _word(chain_id)
        + bytes(12)
        + contract
    )


def _typed_digest(ledger: bytes, struct_hash: bytes) -> bytes | None:
    parsed = parse_evm_ledger_id(ledger)
    if parsed is None:
        return None
    return keccak256(b"\x19\x01" + domain_separator(*parsed) + struct_hash)


def request_digest(
    *,
    ledger: bytes,
    channel: bytes,
    n: int,
    paid: int,
    price: int,
    service: str,
    body_hash: bytes,
    deadline: int,
) -> bytes | None:
    """The EIP-712 digest a payer signs for a request on an EVM ledger.

    Type: ``Request(bytes ledger,bytes32 channel,uint64 n,uint256 paid,uint256 price,string
    service,bytes32 bodyHash,uint64 deadline)``, domain read from `ledger`.

    Returns:
        32 bytes, or None if `ledger` is not an EVM ledger id.
    """
    struct_hash = keccak256(
        keccak256(_REQUEST_TYPE)
        + keccak256(ledger)
        + channel
        + _word(n)
        + _word(paid)
        + _word(price)
        + keccak256(service.encode("utf-8"))
        + body_hash
        + _word(deadline)
    )
    return _typed_digest(ledger, struct_hash)


def response_digest(
    *,
    ledger: bytes,
    channel: bytes,
    n: int,
    request_hash: bytes,
    status: str,
    price: int,
    spent: int,
    body_hash: bytes,
) -> bytes | None:
    """The EIP-712 digest a payee signs for a response on an EVM ledger.

    Type: ``Response(bytes ledger,bytes32 channel,uint64 n,bytes32 requestHash,string
    status,uint256 price,uint256 spent,bytes32 bodyHash)``, domain read from `ledger`.

    Returns:
        32 bytes, or None if `ledger` is not an EVM ledger id.
    """
    struct_hash = keccak256(
        keccak256(_RESPONSE_TYPE)
        + keccak256(ledger)
        + channel
        + _word(n)
        + request_hash
        + keccak256(status.encode("utf-8"))
        + _word(price)
        + _word(spent)
        + body_hash
    )
    return _typed_digest(ledger, struct_hash)


# ---------------------------------------------------------------------------
# binding an Ed25519 identity to a settlement account


def binding_digest(ledger: bytes, peer: bytes) -> bytes:
    """What a settlement key signs to consent to being bound to the identity `peer`.

    ``keccak256(canonical CBOR {domain: "p2pay/v1/bind", ledger, peer})``.

    Args:
        ledger: the EVM ledger id.
        peer: the 32-byte Ed25519 public key (of the PeerID) the account is bound to.

    Returns:
        The 32-byte digest.

    Raises:
        LocalProtocolError: `ledger` is not an EVM ledger id, or `peer` is not 32 bytes.
    """
    if not is_evm_ledger(ledger):
        raise LocalProtocolError("a binding names an EVM ledger")
    if not isinstance(peer, bytes) or len(peer) != 32:
        raise LocalProtocolError("peer is a 32-byte Ed25519 public key")
    return keccak256(codec.encode({"domain": DOMAIN_BIND, "ledger": ledger, "peer": peer}))


def binding_proof(key: EvmKey, ledger: bytes, peer: bytes) -> bytes:
    """`key`'s 65-byte signature of `binding_digest(ledger, peer)`.

    Raises:
        LocalProtocolError: as `binding_digest`.
    """
    return key.sign_digest(binding_digest(ledger, peer))


def check_binding(account: bytes, ledger: bytes, peer: bytes, proof: bytes) -> bool:
    """True if `proof` is the signature of `account`'s key binding it to `peer` on `ledger`.

    Never raises: a malformed account, ledger, peer or proof gives False.
    """
    address = address_of_account(account)
    if address is None or not is_evm_ledger(ledger):
        return False
    if not isinstance(peer, bytes) or len(peer) != 32:
        return False
    return recover(binding_digest(ledger, peer), proof) == address
