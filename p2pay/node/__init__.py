"""The p2pay node: the imperative shell around the core (specs/protocol.md).

Theory of operation
-------------------
A node is one identity (an Ed25519 `Keypair`) on one ledger. It serves paid services to
peers and calls other peers' services, over a `Transport` (libp2p for real use, in-memory
for simulations and fast tests). The money decisions are all taken by the pure core
(`p2pay.core.channel`); the node moves frames, runs handlers, and makes state durable
through a `Persister` (ordered group commit) before anything that depends on it leaves.

The per-stream protocol (the hello exchange, which frames are allowed when, unsigned
refusals, the refusal budget, check 0', receipts, refusals and resync on the payer's side)
is decided by the sans-IO sessions of `p2pay.core.session`; the server and the client
here are pumps that move frames between a stream and a session and apply its events.

Server side, per inbound stream (`server._ServerSession`, a `ServerSession` pump): hello
both ways, then a loop that reads one frame at a time, hands it to the session, looks the
request's channel up and asks `ServerSession.admit`; each admitted request's handler
runs in a task of its own; every answer (signed receipt, signed refusal, unsigned refusal) is
appended *synchronously* to the session's outbox right after the decision that produced
it, and one sender task sends the outbox in order, each item only once its state is
durable, every durable item queued at that moment in one write. So receipts leave in
charge order and never before the charge is on disk.

Client side, per peer (`client._Connection`, a `ClientSession` pump): one long-lived
stream, hello both ways, requests pipelined on it. `call` signs the next voucher
(`PayerChannel.next_request`), stages the outgoing request (kept for claims), and appends
it to the connection's outbox, which sends in request-number order once durable (several
per write). One reader task hands every frame to the session, which checks receipts in
arrival order (`PayerChannel.on_response`); the pump persists and wakes the waiting call.

The watcher (`p2pay.node.watcher`) runs in the node's nursery and does the node's duties
towards the ledger.

The parts, each taking what it uses rather than the whole node where it can:

- `types`: public types, errors and `NodeConfig`;
- `book`: the channel book (loading, ledger adoption, per-channel locks, store records);
- `outbox`: frames in order, each sent once durable;
- `retention`: how long stored answers are kept (claims, N13);
- `invoke`: the one service invoker, used by the server and the watcher;
- `server`: inbound streams, session limits and eviction;
- `client`: connections to peers and the call policy;
- `watcher`: the duties towards the ledger;
- `discovery`: announcing our offers, finding others', calling any provider;
- `facade`: the `Node` and `open_node`.
"""

from __future__ import annotations

from p2pay.core import codec
from p2pay.node.book import _payee_record, _payer_record
from p2pay.node.client import _Connection, _Slot
from p2pay.node.facade import DiscoveryFactory, Node, open_node
from p2pay.node.invoke import _Service, run_service
from p2pay.node.outbox import _Outbox
from p2pay.node.server import _ServerSession
from p2pay.node.types import (
    Attempt,
    Behaviour,
    Call,
    CallResult,
    CallTimeout,
    ChannelInfo,
    ClaimInfo,
    ConnectionLost,
    Counters,
    DiscoveryConfig,
    Handler,
    NodeConfig,
    NoKnownAddress,
    NoProvider,
    NotJoined,
    OfferInfo,
    PeerUnreachable,
    ProviderUnbonding,
    RequestInDoubt,
    TermsRefused,
    Unclaimable,
    Unmatched,
    WrongPeer,
    split_peer,
)

__all__ = [
    "Attempt",
    "Behaviour",
    "Call",
    "CallResult",
    "CallTimeout",
    "ChannelInfo",
    "ClaimInfo",
    "ConnectionLost",
    "Counters",
    "DiscoveryConfig",
    "DiscoveryFactory",
    "Handler",
    "NoKnownAddress",
    "NoProvider",
    "Node",
    "NodeConfig",
    "NotJoined",
    "OfferInfo",
    "PeerUnreachable",
    "ProviderUnbonding",
    "RequestInDoubt",
    "TermsRefused",
    "Unclaimable",
    "Unmatched",
    "WrongPeer",
    "_Connection",
    "_Outbox",
    "_ServerSession",
    "_Service",
    "_Slot",
    "_payee_record",
    "_payer_record",
    "codec",
    "open_node",
    "run_service",
    "split_peer",
]
