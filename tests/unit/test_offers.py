"""Offers (specs/discovery.md): the topic and DHT key, the signed offer, the fetch exchange."""

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pay.core import codec, evmsig
from p2pay.core.errors import (
    DeadlineExceeded,
    DecodeError,
    ErrorCode,
    FrameTooLarge,
    LocalProtocolError,
    P2payError,
    RemoteProtocolError,
)
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, ServiceTerms, StakeTerms, decode_frame
from p2pay.core.offers import (
    MAX_FETCH_FRAME,
    MAX_FETCH_OFFERS,
    MAX_OFFER_LIFETIME_MS,
    MAX_OFFER_SIZE,
    FetchRequest,
    Offer,
    check_offer,
    decode_fetch_reply,
    decode_fetch_request,
    decode_offer,
    encode_fetch_reply,
    encode_fetch_request,
    offer_key,
    offer_topic,
)

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


@pytest.mark.parametrize("service", ["", "x" * 65, "é" * 33, "\ud800"])
def test_bad_service_names_are_refused(service: str) -> None:
    with pytest.raises(LocalProtocolError):
        offer_key(LEDGER, service)


@pytest.mark.parametrize("ledger", [b"", b"x" * 65])
def test_bad_ledger_ids_are_refused(ledger: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        offer_topic(ledger)


# --------------------------------------------------------------------------- the offer

BOB = Keypair.from_seed(bytes([2]) * 32)
ALICE = Keypair.from_seed(bytes([1]) * 32)
EVM = evmsig.evm_ledger_id(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
NOW = 1_767_225_600_000
STAKE = StakeTerms(amount=10**24, penalty=10**22, claim_window_ms=60_000)


def addr(key: Keypair = BOB, host: str = "/ip4/127.0.0.1/tcp/4001") -> str:
    return f"{host}/p2p/{key.peer_id}"


def make(key: Keypair = BOB, ledger: bytes = LEDGER, **kw: object) -> Offer:
    args: dict[str, object] = {
        "service": "echo",
        "price": 1000,
        "max_body": 65536,
        "stake": STAKE,
        "addrs": [addr(key)],
        "seq": 1,
        "expires": NOW + 180_000,
    }
    args.update(kw)
    return Offer.create(key, ledger=ledger, **args)  # type: ignore[arg-type]


def test_offer_round_trips_and_checks_out() -> None:
    offer = make()
    data = offer.encode()
    assert codec.decode(data) == [4, offer.signing_bytes, offer.signature]
    decoded = decode_offer(data)
    assert decoded == offer
    assert decoded.peer == BOB.public and decoded.peer_id == BOB.peer_id
    assert decoded.name == "echo" and decoded.price == 1000
    assert decoded.account == BOB.public and decoded.account_proof == b""
    check_offer(decoded, ledger=LEDGER, now_ms=NOW)
    with pytest.raises(AttributeError):
        decoded.seq = 2  # type: ignore[misc]


def test_evm_offer_binds_the_account_as_the_hello_does() -> None:
    offer = make(ledger=EVM)
    hello = Hello.create(BOB, ledger=EVM, stake=STAKE)
    assert (offer.account, offer.account_proof) == (hello.account, hello.account_proof)
    check_offer(decode_offer(offer.encode()), ledger=EVM, now_ms=NOW)
    # the account and proof a node's hello carries can be given as they are
    again = make(ledger=EVM, account=hello.account, account_proof=hello.account_proof)
    assert again == offer


def test_create_refuses_an_address_naming_another_peer() -> None:
    with pytest.raises(LocalProtocolError, match="every address ends in"):
        make(addrs=[addr(ALICE)])


def test_create_refuses_a_proof_without_its_account() -> None:
    with pytest.raises(LocalProtocolError, match="account_proof"):
        make(ledger=EVM, account_proof=bytes(65))


@pytest.mark.parametrize(
    "kw",
    [
        {"addrs": []},
        {"addrs": [addr(BOB, f"/ip4/10.0.0.{i}/tcp/1") for i in range(9)]},
        {"addrs": [addr(), addr()]},
        {"seq": 0},
        {"seq": 2**64},
        {"expires": -1},
        {"stake": None},
        {"price": -1},
        {"service": ""},
    ],
)
def test_create_refuses_fields_out_of_range(kw: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        make(**kw)


def test_an_address_is_visible_ascii_only() -> None:
    # discovery.md 2: 0x21..0x7e, every other code point refused (space, DEL, controls,
    # Latin-1, a line separator, a lone surrogate, the last code point)
    points = [*range(0x300), 0x2028, 0xD800, 0x10FFFF]
    for point in points:
        host = f"/dns4/a{chr(point)}b/tcp/1"
        if 0x21 <= point <= 0x7E:
            assert make(addrs=[addr(host=host)]).addrs == (addr(host=host),)
        else:
            with pytest.raises(LocalProtocolError, match="visible ASCII"):
                make(addrs=[addr(host=host)])


@pytest.mark.parametrize("ledger", [EVM, b"L" * 64])
def test_the_largest_valid_offer_fits_in_4096_bytes(ledger: bytes) -> None:
    suffix = "/p2p/" + BOB.peer_id
    addrs = [f"/dns4/{i}" + "a" * (256 - 7 - len(suffix)) + suffix for i in range(8)]
    assert all(len(a) == 256 for a in addrs)
    offer = make(
        ledger=ledger,
        service="\u00e9" * 32,
        price=2**128 - 1,
        max_body=2**64 - 1,
        stake=StakeTerms(amount=2**128 - 1, penalty=2**128 - 1, claim_window_ms=2**64 - 1),
        addrs=addrs,
        seq=2**64 - 1,
        expires=2**64 - 1,
    )
    assert len(offer.encode()) <= 2_700 < MAX_OFFER_SIZE  # discovery.md 2.1
    assert decode_offer(offer.encode()) == offer


def test_decode_refuses_a_hello_frame_and_decode_frame_refuses_an_offer() -> None:
    hello = Hello.create(BOB, ledger=LEDGER, stake=STAKE)
    with pytest.raises(DecodeError):
        decode_offer(hello.to_frame())
    with pytest.raises(DecodeError, match="unknown frame kind 4"):
        decode_frame(make().encode())  # protocol.md 7: never on a /p2pay/2.0.0 stream


def test_decode_refuses_an_offer_over_4096_bytes_before_parsing() -> None:
    with pytest.raises(FrameTooLarge):
        decode_offer(b"\x00" * (MAX_OFFER_SIZE + 1))


def test_expiry_window_is_now_exclusive_to_now_plus_24h_inclusive() -> None:
    check_offer(make(expires=NOW + 1), ledger=LEDGER, now_ms=NOW)
    check_offer(make(expires=NOW + MAX_OFFER_LIFETIME_MS), ledger=LEDGER, now_ms=NOW)
    for expires in (NOW, NOW - 1, NOW + MAX_OFFER_LIFETIME_MS + 1):
        with pytest.raises(DeadlineExceeded):
            check_offer(make(expires=expires), ledger=LEDGER, now_ms=NOW)


def test_an_address_naming_another_peer_is_unauthorized() -> None:
    forged = Offer(
        version=2,
        ledger=LEDGER,
        peer=BOB.public,
        account=BOB.public,
        account_proof=b"",
        service=ServiceTerms(name="echo", price=1, max_body=1),
        stake=STAKE,
        addrs=(addr(BOB), addr(ALICE)),
        seq=1,
        expires=NOW + 1000,
    )
    forged = forged.with_signature(BOB.sign(forged.signing_bytes))
    with pytest.raises(RemoteProtocolError) as info:
        check_offer(decode_offer(forged.encode()), ledger=LEDGER, now_ms=NOW)
    assert info.value.code is ErrorCode.UNAUTHORIZED


def test_check_offer_refuses_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        check_offer(make(), ledger=LEDGER, now_ms=-1)
    with pytest.raises(LocalProtocolError):
        check_offer(make().encode(), ledger=LEDGER, now_ms=NOW)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_mutation_of_an_offer_is_refused_with_a_typed_error_or_is_the_same_offer(
    data: st.DataObject,
) -> None:
    good = make().encode()
    position = data.draw(st.integers(0, len(good) - 1))
    byte = data.draw(st.integers(0, 255))
    mutated = good[:position] + bytes([byte]) + good[position + 1 :]
    try:
        offer = decode_offer(mutated)
    except P2payError:
        return
    # what decodes is the one encoding of its fields (INV-17): the decoder keeps the
    # received signing bytes, and building the same offer anew gives them again
    assert dataclasses.replace(offer).signing_bytes == offer.signing_bytes
    assert offer.encode() == mutated
    try:
        check_offer(offer, ledger=LEDGER, now_ms=NOW)
    except P2payError:
        return
    assert mutated == good  # a changed byte never yields an accepted offer


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_decoders(data: bytes) -> None:
    for decoder in (decode_offer, decode_fetch_request, decode_fetch_reply):
        try:
            decoder(data)
        except P2payError:
            pass


# --------------------------------------------------------------------------- fetch exchange


def test_fetch_request_round_trips() -> None:
    data = encode_fetch_request(LEDGER, "echo")
    assert data == codec.encode({"ledger": LEDGER, "service": "echo"})
    assert decode_fetch_request(data) == FetchRequest(ledger=LEDGER, service="echo")


@pytest.mark.parametrize(
    "value",
    [
        {"ledger": LEDGER},
        {"ledger": LEDGER, "service": "echo", "x": 1},
        {"ledger": b"", "service": "echo"},
        {"ledger": LEDGER, "service": ""},
        {"ledger": LEDGER, "service": "x" * 65},
        {"ledger": "text", "service": "echo"},
        [LEDGER, "echo"],
    ],
)
def test_fetch_request_of_another_shape_is_malformed(value: object) -> None:
    with pytest.raises(DecodeError):
        decode_fetch_request(codec.encode(value))


def test_fetch_request_non_canonical_or_too_large_is_refused() -> None:
    good = encode_fetch_request(LEDGER, "echo")
    with pytest.raises(DecodeError):
        decode_fetch_request(good + b"\x00")
    with pytest.raises(FrameTooLarge):
        decode_fetch_request(b"\xa2" + b"\x00" * MAX_FETCH_FRAME)
    with pytest.raises(LocalProtocolError):
        encode_fetch_request(LEDGER, "x" * 65)


def test_fetch_reply_round_trips_up_to_16_offers() -> None:
    offers = [make(seq=i).encode() for i in range(1, MAX_FETCH_OFFERS + 1)]
    assert decode_fetch_reply(encode_fetch_reply([])) == []
    assert decode_fetch_reply(encode_fetch_reply(offers)) == offers
    # 16 offers of the largest size fit in one fetch frame
    assert len(codec.encode([b"x" * MAX_OFFER_SIZE] * MAX_FETCH_OFFERS)) <= MAX_FETCH_FRAME


@pytest.mark.parametrize(
    "value",
    [
        [b"x"] * (MAX_FETCH_OFFERS + 1),
        [b"x" * (MAX_OFFER_SIZE + 1)],
        [b""],
        ["text"],
        {"offers": []},
    ],
)
def test_fetch_reply_of_another_shape_is_malformed(value: object) -> None:
    with pytest.raises(DecodeError):
        decode_fetch_reply(codec.encode(value))
    if isinstance(value, list):
        with pytest.raises(LocalProtocolError):
            encode_fetch_reply(value)
