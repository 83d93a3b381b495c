"""p2pay: peer-to-peer micropayment messaging.

Every request a client sends over libp2p carries a signed, cumulative payment in
yocto-units (1 token = 10**24 yocto); providers stake collateral in a settlement
contract and are slashed when they take a paid request and do not answer.
See README.md and specs/.

The public API::

    async with p2pay.open_node(key=..., ledger=..., store=...) as node:
        node.serve("echo", handler, price=1_000)
        ch = await node.open_channel(peer, deposit=10**21)
        result = await node.call(peer, "echo", b"hi", max_price=1_000, timeout=5)
"""

import importlib
from typing import TYPE_CHECKING, Any

# The package imports lazily: `import p2pay.core...` must not pull in trio, libp2p or
# sqlite3 (the core is pure, and a test checks it), so names resolve on first use.
_EXPORTS = {
    "format_tokens": "p2pay.core.amounts",
    "parse_amount": "p2pay.core.amounts",
    "parse_tokens": "p2pay.core.amounts",
    "DeadlineExceeded": "p2pay.core.errors",
    "ErrorCode": "p2pay.core.errors",
    "HandlerError": "p2pay.core.errors",
    "InsufficientDeposit": "p2pay.core.errors",
    "LocalProtocolError": "p2pay.core.errors",
    "Overloaded": "p2pay.core.errors",
    "P2payError": "p2pay.core.errors",
    "PayeeFaulty": "p2pay.core.errors",
    "PaymentRequired": "p2pay.core.errors",
    "RemoteProtocolError": "p2pay.core.errors",
    "SettlementError": "p2pay.core.errors",
    "UnknownService": "p2pay.core.errors",
    "Keypair": "p2pay.core.identity",
    "Behaviour": "p2pay.node",
    "Call": "p2pay.node",
    "CallResult": "p2pay.node",
    "CallTimeout": "p2pay.node",
    "ChannelInfo": "p2pay.node",
    "ConnectionLost": "p2pay.node",
    "Node": "p2pay.node",
    "NodeConfig": "p2pay.node",
    "PeerUnreachable": "p2pay.node",
    "NoKnownAddress": "p2pay.node",
    "WrongPeer": "p2pay.node",
    "TermsRefused": "p2pay.node",
    "ProviderUnbonding": "p2pay.node",
    "Unclaimable": "p2pay.node",
    "RequestInDoubt": "p2pay.node",
    "open_node": "p2pay.node",
}

if TYPE_CHECKING:
    from p2pay.core.amounts import format_tokens, parse_amount, parse_tokens
    from p2pay.core.errors import (
        DeadlineExceeded,
        ErrorCode,
        HandlerError,
        InsufficientDeposit,
        LocalProtocolError,
        Overloaded,
        P2payError,
        PayeeFaulty,
        PaymentRequired,
        RemoteProtocolError,
        SettlementError,
        UnknownService,
    )
    from p2pay.core.identity import Keypair
    from p2pay.node import (
        Behaviour,
        Call,
        CallResult,
        CallTimeout,
        ChannelInfo,
        ConnectionLost,
        Node,
        NodeConfig,
        NoKnownAddress,
        PeerUnreachable,
        ProviderUnbonding,
        RequestInDoubt,
        TermsRefused,
        Unclaimable,
        WrongPeer,
        open_node,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'p2pay' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__version__ = "0.1.0"

__all__ = [
    "Behaviour",
    "Call",
    "CallResult",
    "CallTimeout",
    "ChannelInfo",
    "ConnectionLost",
    "DeadlineExceeded",
    "ErrorCode",
    "HandlerError",
    "InsufficientDeposit",
    "Keypair",
    "LocalProtocolError",
    "NoKnownAddress",
    "Node",
    "NodeConfig",
    "Overloaded",
    "P2payError",
    "PayeeFaulty",
    "PaymentRequired",
    "PeerUnreachable",
    "ProviderUnbonding",
    "RemoteProtocolError",
    "RequestInDoubt",
    "SettlementError",
    "TermsRefused",
    "Unclaimable",
    "UnknownService",
    "WrongPeer",
    "format_tokens",
    "open_node",
    "parse_amount",
    "parse_tokens",
]
