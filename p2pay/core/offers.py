"""Service offers: how a provider says what it sells, and where offers are found
(specs/discovery.md).

Theory of operation
-------------------
A provider announces each service it serves as a signed offer. Offers travel on a
gossipsub topic per ledger (`offer_topic`) and are found by peers that just joined through
Kademlia DHT provider records under a key per (ledger, service) (`offer_key`). Both names
are fixed here, in the core, so that every transport and every implementation derive
the same bytes.
"""

from __future__ import annotations

import hashlib

from p2pay.core.errors import LocalProtocolError
from p2pay.core.messages import MAX_SERVICE_NAME as _MAX_SERVICE_NAME

__all__ = ["OFFER_KEY_DOMAIN", "offer_key", "offer_topic"]

#: the prefix hashed into a DHT key, so that no other use of sha256 can collide with it
OFFER_KEY_DOMAIN = b"p2pay/offer/2\x00"
#: multihash header of a sha2-256 digest: code 0x12, length 32
_SHA256_MULTIHASH = bytes([0x12, 0x20])
_MAX_LEDGER_ID = 64


def _check(ledger: bytes, service: str | None = None) -> None:
    if not isinstance(ledger, bytes) or not 1 <= len(ledger) <= _MAX_LEDGER_ID:
        raise LocalProtocolError(f"a ledger id is 1 to {_MAX_LEDGER_ID} bytes")
    if service is not None and (
        not isinstance(service, str) or not 1 <= len(service.encode()) <= _MAX_SERVICE_NAME
    ):
        raise LocalProtocolError(f"a service name is 1 to {_MAX_SERVICE_NAME} bytes of UTF-8")


def offer_topic(ledger: bytes) -> str:
    """The gossipsub topic on which offers for `ledger` are published."""
    _check(ledger)
    return "/p2pay/offers/2/" + ledger.hex()


def offer_key(ledger: bytes, service: str) -> bytes:
    """The DHT provider-record key of `service` on `ledger`: a 34-byte sha2-256 multihash.

    It is the multihash of ``CIDv1(raw, sha2-256)`` that js-libp2p's content routing uses.
    """
    _check(ledger, service)
    digest = hashlib.sha256(OFFER_KEY_DOMAIN + ledger + b"\x00" + service.encode()).digest()
    return _SHA256_MULTIHASH + digest
