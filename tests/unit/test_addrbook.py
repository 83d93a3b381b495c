"""The address book's rules (specs/protocol.md 19.2): validated, bounded, durable as bytes."""

from __future__ import annotations

import json

import pytest

from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.node.addrbook import MAX_ADDR_SIZE, AddressBook, check_address

PEERS = [str(Keypair.from_seed(bytes([i]) * 32).peer_id) for i in range(1, 8)]
A, B = PEERS[0], PEERS[1]


def addr(peer: str, port: int = 4001) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"


def test_an_address_is_kept_only_for_the_peer_it_names() -> None:
    book = AddressBook()
    with pytest.raises(LocalProtocolError, match="does not end in /p2p/"):
        book.learn(A, addr(B))  # B's address offered as A's
    for bad in (
        f"/p2p/{A}",  # no transport part
        f"/ip4/127.0.0.1/tcp/1/p2p/{A}/",  # not ending in the PeerID
        "/ip4/" + "1" * MAX_ADDR_SIZE + f"/p2p/{A}",  # too long
        f"/ip4/127.0.0.1/tcp/1 /p2p/{A}",  # not printable without spaces
        f"/ip4/127.0.0.1/tcp/1/p2p/{A}\n",
    ):
        with pytest.raises(LocalProtocolError):
            book.learn(A, bad)
    with pytest.raises(LocalProtocolError, match="Ed25519"):
        check_address("QmNotAKey", "/ip4/127.0.0.1/tcp/1/p2p/QmNotAKey")
    assert len(book) == 0
    assert book.learn(A, addr(A)) is True
    assert book.learn(A, addr(A)) is False  # unchanged: nothing to write
    assert book.addrs(A) == [addr(A)] and book.addrs(B) == []


def test_bounds_most_recent_first() -> None:
    book = AddressBook(max_peers=3, max_addrs=2)
    for port in (1, 2, 3):
        book.learn(A, addr(A, port))
    assert book.addrs(A) == [addr(A, 3), addr(A, 2)]  # the oldest dropped
    book.learn(A, addr(A, 2))
    assert book.addrs(A) == [addr(A, 2), addr(A, 3)]
    for peer in PEERS[1:4]:
        book.learn(peer, addr(peer))
    assert len(book) == 3 and book.addrs(A) == []  # least recently reached dropped
    book.learn(PEERS[1], addr(PEERS[1], 9))  # reached again: now the most recent
    book.learn(PEERS[4], addr(PEERS[4]))
    assert book.addrs(PEERS[2]) == [] and book.addrs(PEERS[1])[0] == addr(PEERS[1], 9)
    assert book.forget(PEERS[1]) and not book.forget(PEERS[1])


def test_round_trip_and_a_damaged_book_loses_only_bad_entries() -> None:
    book = AddressBook()
    book.learn(A, addr(A, 1))
    book.learn(A, addr(A, 2))
    book.learn(B, addr(B))
    again = AddressBook.from_bytes(book.to_bytes())
    assert again.addrs(A) == [addr(A, 2), addr(A, 1)] and again.addrs(B) == [addr(B)]
    damaged = json.dumps(
        {
            "peers": [
                [A, [addr(B), addr(A, 5), 7]],  # another peer's address, a number
                [B, "not a list"],
                ["x"],
                [PEERS[2], [addr(PEERS[2])]],
            ]
        }
    ).encode()
    loaded = AddressBook.from_bytes(damaged)
    assert loaded.addrs(A) == [addr(A, 5)] and loaded.addrs(B) == []
    assert loaded.addrs(PEERS[2]) == [addr(PEERS[2])]
    for raw in (None, b"", b"\xff", b"[]", b'{"peers": 3}'):
        assert len(AddressBook.from_bytes(raw)) == 0
    big = json.dumps({"peers": [[p, [addr(p)]] for p in PEERS]}).encode()
    assert len(AddressBook.from_bytes(big, max_peers=2)) == 2
