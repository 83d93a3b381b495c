"""The address book: where a node reached its peers (specs/protocol.md 19.2).

Theory of operation
-------------------
A node remembers, per PeerID, the multiaddrs it reached that peer at, so that a bare
PeerID works after one call (or channel open, or connect) with the full address. The book
is durable: it lives in the node's store under one meta key (`META_KEY`), JSON, written
when it changes and read when the node starts.

Rules (19.2): an address is recorded only for the PeerID it names (it ends in
``/p2p/<that PeerID>``) and only after a connection to it authenticated that PeerID and
its hello was checked (the node calls `AddressBook.learn` then, never on a peer's word).
Bounded: `MAX_PEERS` peers, least recently reached dropped first; `MAX_ADDRS_PER_PEER`
addresses each, most recent first; `MAX_ADDR_SIZE` bytes of printable ASCII per address.
A stored book that breaks a rule (a hand-edited or damaged store) loses the entries that
break it, never the node's start.
"""

from __future__ import annotations

import json

from p2pay.core.errors import DecodeError, LocalProtocolError
from p2pay.core.identity import public_from_peer_id
from p2pay.store.base import meta_json

#: the store meta key that holds the book
META_KEY = "p2pay.addrbook"
MAX_PEERS = 1024
MAX_ADDRS_PER_PEER = 4
MAX_ADDR_SIZE = 256


def check_address(peer_id: str, addr: str) -> str:
    """Check that `addr` is an address of `peer_id` (rule 1 of 19.2) and return it.

    Raises:
        LocalProtocolError: `addr` is not text of at most `MAX_ADDR_SIZE` printable
            ASCII characters starting with "/" and ending in ``/p2p/<peer_id>`` with a
            transport part before it, or `peer_id` is not an Ed25519 PeerID.
    """
    if not isinstance(peer_id, str) or not isinstance(addr, str):
        raise LocalProtocolError("a peer id and an address are text")
    if not addr.isascii() or not addr.isprintable() or " " in addr:
        raise LocalProtocolError(f"address {addr[:80]!r} is not printable ASCII")
    if len(addr) > MAX_ADDR_SIZE:
        raise LocalProtocolError(f"address longer than {MAX_ADDR_SIZE} characters")
    head, sep, named = addr.rpartition("/p2p/")
    if not sep or named != peer_id:
        raise LocalProtocolError(f"address {addr[:80]!r} does not end in /p2p/{peer_id[:60]}")
    if not head.startswith("/") or len(head) < 2:
        raise LocalProtocolError(f"address {addr[:80]!r} has no transport part")
    try:
        public_from_peer_id(peer_id)
    except DecodeError as exc:
        raise LocalProtocolError(f"not an Ed25519 PeerID: {peer_id[:80]!r}") from exc
    return addr


class AddressBook:
    """PeerID -> addresses it was reached at (most recent first), bounded."""

    def __init__(self, *, max_peers: int = MAX_PEERS, max_addrs: int = MAX_ADDRS_PER_PEER) -> None:
        if max_peers < 1 or max_addrs < 1:
            raise LocalProtocolError("an address book holds at least one peer and address")
        self.max_peers = max_peers
        self.max_addrs = max_addrs
        # insertion order = least recently reached first
        self._peers: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def addrs(self, peer_id: str) -> list[str]:
        """The addresses of `peer_id`, most recently reached first (empty if unknown)."""
        return list(self._peers.get(peer_id, ()))

    def learn(self, peer_id: str, addr: str) -> bool:
        """Record that `peer_id` was reached (authenticated) at `addr`.

        Returns:
            True if the book changed (so it should be written to the store).

        Raises:
            LocalProtocolError: `addr` is not an address of `peer_id` (`check_address`).
        """
        check_address(peer_id, addr)
        known = self._peers.pop(peer_id, [])
        changed = not known or known[0] != addr
        addrs = [addr, *(a for a in known if a != addr)][: self.max_addrs]
        self._peers[peer_id] = addrs  # now the most recently reached
        while len(self._peers) > self.max_peers:
            del self._peers[next(iter(self._peers))]
            changed = True
        return changed

    def forget(self, peer_id: str) -> bool:
        """Drop every address of `peer_id`; True if it had any."""
        return self._peers.pop(peer_id, None) is not None

    def to_bytes(self) -> bytes:
        """The book as stored: JSON ``{"peers": [[peer_id, [addr, ...]], ...]}``,
        least recently reached first."""
        doc = {"peers": [[p, list(a)] for p, a in self._peers.items()]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(
        cls, raw: bytes | None, *, max_peers: int = MAX_PEERS, max_addrs: int = MAX_ADDRS_PER_PEER
    ) -> AddressBook:
        """Load a stored book; entries that break a rule are dropped (never raises)."""
        book = cls(max_peers=max_peers, max_addrs=max_addrs)
        if not raw:
            return book
        try:
            doc = meta_json(raw)
        except ValueError:
            return book
        peers = doc.get("peers") if isinstance(doc, dict) else None
        if not isinstance(peers, list):
            return book
        for entry in peers[-max_peers:]:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
                continue
            peer_id, addrs = entry
            good: list[str] = []
            for addr in addrs[:max_addrs]:
                try:
                    good.append(check_address(peer_id, addr))
                except LocalProtocolError:
                    continue
            if good:
                book._peers.pop(peer_id, None)
                book._peers[peer_id] = list(dict.fromkeys(good))
        return book


__all__ = ["MAX_ADDRS_PER_PEER", "MAX_ADDR_SIZE", "MAX_PEERS", "META_KEY", "AddressBook"]
