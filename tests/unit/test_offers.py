"""Offer names: the gossipsub topic and the DHT key (specs/discovery.md)."""

import hashlib

import pytest

from p2pay.core.errors import LocalProtocolError
from p2pay.core.offers import offer_key, offer_topic

LEDGER = b"p2pay:sqlite:" + bytes(range(16))


def test_topic_is_the_ledger_in_lower_case_hex() -> None:
    assert offer_topic(LEDGER) == "/p2pay/offers/2/" + LEDGER.hex()
    assert offer_topic(b"\xab") == "/p2pay/offers/2/ab"


def test_key_is_a_sha256_multihash_of_domain_ledger_and_service() -> None:
    key = offer_key(LEDGER, "echo")
    assert len(key) == 34 and key[:2] == b"\x12\x20"
    assert key[2:] == hashlib.sha256(b"p2pay/offer/2\x00" + LEDGER + b"\x00echo").digest()
    assert offer_key(LEDGER, "echo") != offer_key(LEDGER, "echo2")
    assert offer_key(LEDGER, "echo") != offer_key(LEDGER + b"x", "echo")


@pytest.mark.parametrize("service", ["", "x" * 65, "é" * 33])
def test_bad_service_names_are_refused(service: str) -> None:
    with pytest.raises(LocalProtocolError):
        offer_key(LEDGER, service)


@pytest.mark.parametrize("ledger", [b"", b"x" * 65])
def test_bad_ledger_ids_are_refused(ledger: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        offer_topic(ledger)
