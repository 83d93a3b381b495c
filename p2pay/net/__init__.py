"""Transports: authenticated, ordered, framed streams between peers.

`p2pay.net.base` defines the interface (`Transport`, `Stream`) and its semantics;
`p2pay.net.memory` implements it in-process (simulations, fast tests) and
`p2pay.net.p2p` over libp2p (TCP, Noise, yamux). Discovery (`DiscoveryNet`) has the
same two: `p2pay.net.discovery` (gossipsub, Kademlia DHT) and
`p2pay.net.memory_discovery`. py-libp2p is imported only by `p2pay.net.p2p` and
`p2pay.net.discovery`, so importing this package stays cheap; `open_libp2p_transport`
and `open_libp2p_discovery` are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pay.core.errors import FrameTooLarge
from p2pay.net.base import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_ID,
    AddressInUse,
    ConnectError,
    DiscoveryNet,
    FetchFailed,
    ListenError,
    NetError,
    NoAddress,
    PeerNotReached,
    Stream,
    StreamClosed,
    StreamHandler,
    Transport,
    WrongIdentity,
)
from p2pay.net.framing import FrameReader, decode_uvarint, encode_uvarint, frame
from p2pay.net.memory import MemoryNetwork, memory_addr, open_memory_transport
from p2pay.net.memory_discovery import open_memory_discovery

if TYPE_CHECKING:
    from p2pay.net.discovery import open_libp2p_discovery
    from p2pay.net.p2p import open_libp2p_transport

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_ID",
    "AddressInUse",
    "ConnectError",
    "DiscoveryNet",
    "FetchFailed",
    "FrameReader",
    "FrameTooLarge",
    "ListenError",
    "MemoryNetwork",
    "NetError",
    "NoAddress",
    "PeerNotReached",
    "Stream",
    "StreamClosed",
    "StreamHandler",
    "Transport",
    "WrongIdentity",
    "decode_uvarint",
    "encode_uvarint",
    "frame",
    "memory_addr",
    "open_libp2p_discovery",
    "open_libp2p_transport",
    "open_memory_discovery",
    "open_memory_transport",
]


def __getattr__(name: str) -> Any:
    if name == "open_libp2p_transport":
        from p2pay.net.p2p import open_libp2p_transport

        return open_libp2p_transport
    if name == "open_libp2p_discovery":
        from p2pay.net.discovery import open_libp2p_discovery

        return open_libp2p_discovery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
