"""Node pairs, echo baselines and closed-loop callers shared by the throughput benchmarks.

Three ways to make a request and get its answer, all pipelined the same way (``C``
closed-loop callers, each starts its next request as soon as its last one is answered,
so ``C`` requests are in flight on one long-lived stream):

* paid: `p2pay.Node.call` between two real nodes (vouchers, receipts, signatures, store,
  watcher), `paid_pair`;
* unpaid: a raw request/response echo over the *same* p2pay transport
  (`p2pay.net.p2p` or `p2pay.net.memory`: the same Libp2pStream, the same uvarint
  framing) with no vouchers, receipts, signatures or store, `unpaid_echo`; the payloads
  have the exact sizes of the paid request and receipt frames;
* raw libp2p: py-libp2p hosts with the same security and muxer (Noise + yamux, one
  connection per peer), fixed-size records on a bare yamux stream, no p2pay code at all,
  `raw_libp2p_echo`.

The node writes every answer (and every request) that is ready in ONE stream write
(`p2pay.node.outbox._Outbox.pump` via `p2pay.net.base.send_frames`); the two echoes above write
one frame per answer. So each echo also has a batching twin that writes the same way on
both ends: every frame already read is answered in one write, and the client's queued
requests go out in one write (`batching_unpaid_echo`, `batching_raw_libp2p_echo`).
"""

from __future__ import annotations

import collections
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from benchmarks._common import ALICE_SEED, BOB_SEED, CAROL_SEED, MALLORY_SEED, MICRO, TOKEN
from p2pay.core.identity import Keypair
from p2pay.core.messages import STATUS_OK, Request, Response
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import StreamClosed
from p2pay.node import Call, Node, NodeConfig, open_node

ALICE = Keypair.from_seed(ALICE_SEED)
BOB = Keypair.from_seed(BOB_SEED)
CAROL = Keypair.from_seed(CAROL_SEED)
MALLORY = Keypair.from_seed(MALLORY_SEED)

BODY = b"b" * 32  # request body of every benchmark call (the echo returns it)
SERVICE = "echo"


async def echo(call: Call) -> bytes:
    return call.body


def frame_sizes(price: int = MICRO, body: bytes = BODY) -> tuple[int, int]:
    """Sizes (bytes, without length prefix) of a paid request frame and its receipt frame,
    built with realistic field values; the unpaid and raw echoes carry exactly these."""
    request, receipt = sample_frames(price, body)
    return len(request), len(receipt)


def sample_frames(
    price: int = MICRO, body: bytes = BODY, *, ledger: bytes = b"p2pay:memory:" + bytes(16)
) -> tuple[bytes, bytes]:
    """A paid request frame (Alice's) and its receipt frame (Bob's), without length prefix,
    built with realistic field values."""
    request = Request.create(
        ALICE,
        ledger=ledger,
        channel=bytes(32),
        n=123_456,
        paid=123_456 * price,
        price=price,
        service=SERVICE,
        body=body,
        deadline=int(time.time() * 1000) + 30_000,
    )
    response = Response.create(
        BOB, request=request, status=STATUS_OK, price=price, spent=123_456 * price, body=body
    )
    return request.to_frame(), response.to_frame()


# ---------------------------------------------------------------------------
# closed-loop callers


@dataclass
class Phase:
    """What one phase of closed-loop calls did."""

    calls: int
    elapsed: float  # wall seconds, including the tail of calls in flight
    cpu: float  # CPU seconds of this process (all threads) over the phase
    main_cpu: float = 0.0  # CPU seconds of the calling (trio) thread alone

    @property
    def rate(self) -> float:
        """Calls per wall second."""
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """CPU microseconds per call: what a call costs whatever else runs on the machine
        (both ends of the call run in this process)."""
        return self.cpu / self.calls * 1e6 if self.calls else float("inf")


async def run_callers(fn: Callable[[], Awaitable[Any]], concurrency: int, duration: float) -> Phase:
    """Run `concurrency` closed-loop callers of `fn` for about `duration` seconds."""
    count = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await fn()
            count += 1

    t0 = time.perf_counter()
    c0 = time.process_time()
    m0 = time.thread_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return Phase(count, time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0)


# ---------------------------------------------------------------------------
# paid


@dataclass
class PaidPair:
    ledger: MemoryLedger
    provider: Node
    client: Node
    addr: str
    price: int

    async def call(self) -> None:
        await self.client.call(
            self.provider.peer_id, SERVICE, BODY, max_price=self.price, timeout=60
        )


@contextlib.asynccontextmanager
async def paid_pair(
    *,
    network: Any = None,
    price: int = MICRO,
    deposit: int = TOKEN,
    provider_store: Any = None,
    client_store: Any = None,
    config: NodeConfig | None = None,
    ledger: MemoryLedger | None = None,
    provider_key: Keypair = BOB,
    client_key: Keypair = ALICE,
) -> AsyncIterator[PaidPair]:
    """A provider serving "echo" at `price` and a client with a channel of `deposit` to it,
    connected (one warm-up call made). `network`: a MemoryNetwork, or None for libp2p."""
    ledger = ledger or MemoryLedger()
    await ledger.mint(client_key, client_key.account, deposit * 2)
    async with (
        open_node(
            key=provider_key, ledger=ledger, network=network, store=provider_store, config=config
        ) as provider,
        open_node(
            key=client_key, ledger=ledger, network=network, store=client_store, config=config
        ) as client,
    ):
        provider.serve(SERVICE, echo, price=price)
        addr = provider.addrs[0]
        await client.open_channel(addr, deposit=deposit)
        pair = PaidPair(ledger=ledger, provider=provider, client=client, addr=addr, price=price)
        await client.call(addr, SERVICE, BODY, max_price=price, timeout=60)
        yield pair


@contextlib.asynccontextmanager
async def sqlite_stores(count: int) -> AsyncIterator[list[Any]]:
    """`count` fresh SqliteStores in a temporary folder, closed and removed afterwards."""
    from p2pay.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory(prefix="p2pay-bench-") as folder:
        stores = [await SqliteStore.open(Path(folder) / f"node{i}.sqlite") for i in range(count)]
        try:
            yield stores
        finally:
            for store in stores:
                with trio.CancelScope(shield=True):
                    await store.aclose()


# ---------------------------------------------------------------------------
# unpaid: echo over the p2pay transport


class FifoClient:
    """Requests on one stream answered in order: each caller waits for its own answer."""

    def __init__(self, send: Callable[[bytes], Awaitable[Any]], payload: bytes) -> None:
        self._send = send
        self._payload = payload
        self._waiting: collections.deque[trio.Event] = collections.deque()

    def answered(self) -> None:
        self._waiting.popleft().set()

    async def call(self) -> None:
        done = trio.Event()
        self._waiting.append(done)  # no checkpoint before the send lock: wire order
        await self._send(self._payload)
        await done.wait()


@contextlib.asynccontextmanager
async def unpaid_echo(
    request_size: int, reply_size: int, *, network: Any = None
) -> AsyncIterator[FifoClient]:
    """An echo server and a client over p2pay's transport (libp2p, or the memory network):
    the client sends `request_size`-byte frames, the server answers each with a
    `reply_size`-byte frame. Same Libp2pStream and framing as the node; nothing else."""
    reply = b"r" * reply_size

    async def server(stream: Any) -> None:
        while True:
            try:
                await stream.receive()
            except StreamClosed:
                return
            await stream.send(reply)

    async def nothing(stream: Any) -> None:
        await stream.reset()

    if network is None:
        from p2pay.net.p2p import open_libp2p_transport

        def opener(key: Keypair, handler: Any) -> Any:
            return open_libp2p_transport(key, handler)
    else:
        from p2pay.net.memory import open_memory_transport

        def opener(key: Keypair, handler: Any) -> Any:
            return open_memory_transport(network, key, handler)

    async with opener(CAROL, server) as srv, opener(MALLORY, nothing) as cli:
        stream = await cli.connect(srv.addrs[0])
        client = FifoClient(stream.send, b"q" * request_size)

        async def reader() -> None:
            while True:
                try:
                    await stream.receive()
                except StreamClosed:
                    return
                client.answered()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            yield client
            nursery.cancel_scope.cancel()
        await stream.reset()


class BatchingClient:
    """Like `FifoClient`, but requests are queued and one pump task writes everything
    queued in one write (as the node's outbox does for a client's requests)."""

    def __init__(self, send_many: Callable[[list[bytes]], Awaitable[Any]], payload: bytes):
        self._send_many = send_many
        self._payload = payload
        self._waiting: collections.deque[trio.Event] = collections.deque()
        self._queued: list[bytes] = []
        self._wake = trio.Event()
        self.writes = 0  # stream writes made by the pump
        self.sent = 0  # requests those writes carried

    def answered(self) -> None:
        self._waiting.popleft().set()

    async def call(self) -> None:
        done = trio.Event()
        self._waiting.append(done)
        self._queued.append(self._payload)
        self._wake.set()
        await done.wait()

    async def pump(self) -> None:
        while True:
            while not self._queued:
                self._wake = trio.Event()
                await self._wake.wait()
            batch, self._queued = self._queued, []
            await self._send_many(batch)
            self.writes += 1
            self.sent += len(batch)


@contextlib.asynccontextmanager
async def batching_unpaid_echo(request_size: int, reply_size: int) -> AsyncIterator[Any]:
    """`unpaid_echo` over libp2p, writing like the node: the server's reader takes every
    frame already received (`Libp2pStream.receive` returns buffered frames without a
    read) and queues one reply each; its pump answers everything queued in ONE write
    (`p2pay.net.base.send_frames`, i.e. `Libp2pStream.send_many`); the client queues its
    requests and writes everything queued in one write. No vouchers, receipts,
    signatures or store."""
    from p2pay.net.base import send_frames
    from p2pay.net.p2p import open_libp2p_transport

    reply = b"r" * reply_size

    async def server(stream: Any) -> None:
        queued: list[bytes] = []
        wake = trio.Event()

        async def pump() -> None:
            nonlocal queued, wake
            while True:
                while not queued:
                    wake = trio.Event()
                    await wake.wait()
                batch, queued = queued, []
                await send_frames(stream, batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            while True:
                try:
                    await stream.receive()
                except StreamClosed:
                    break
                queued.append(reply)
                wake.set()
            nursery.cancel_scope.cancel()

    async def nothing(stream: Any) -> None:
        await stream.reset()

    async with (
        open_libp2p_transport(CAROL, server) as srv,
        open_libp2p_transport(MALLORY, nothing) as cli,
    ):
        stream = await cli.connect(srv.addrs[0])

        async def send_many(batch: list[bytes]) -> None:
            await send_frames(stream, batch)

        client = BatchingClient(send_many, b"q" * request_size)

        async def reader() -> None:
            while True:
                try:
                    await stream.receive()
                except StreamClosed:
                    return
                client.answered()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(client.pump)
            yield client
            nursery.cancel_scope.cancel()
        await stream.reset()


# ---------------------------------------------------------------------------
# raw py-libp2p echo


def _raw_host(key: Keypair) -> Any:
    """A py-libp2p host pinned to Noise + yamux, one connection per peer (as p2pay's)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux

    kp = create_new_key_pair(key.seed)
    return new_host(
        key_pair=kp,
        sec_opt={NOISE: Noise(kp, noise_privkey=x25519_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX): Yamux},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


@contextlib.asynccontextmanager
async def _raw_stream(
    protocol: str, server: Callable[[Any], Awaitable[None]]
) -> AsyncIterator[Any]:
    """Two bare py-libp2p hosts, CAROL serving `server` on `protocol` and MALLORY dialling
    it: yields MALLORY's stream; resets it and closes both hosts (bounded) on exit."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    proto = TProtocol(protocol)
    listen = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
    srv_host = _raw_host(CAROL)
    cli_host = _raw_host(MALLORY)
    async with srv_host.run(listen_addrs=listen), cli_host.run(listen_addrs=listen):
        srv_host.set_stream_handler(proto, server)
        addr = srv_host.get_addrs()[0]
        info = info_from_p2p_addr(Multiaddr(str(addr)))
        await cli_host.connect(info)
        net_stream = await cli_host.new_stream(info.peer_id, [proto])
        try:
            yield net_stream
        finally:
            with trio.move_on_after(3), contextlib.suppress(Exception):
                await net_stream.reset()
            for host in (cli_host, srv_host):
                with trio.move_on_after(3), contextlib.suppress(Exception):
                    await host.close()


async def _count_replies(net_stream: Any, reply_size: int, client: Any) -> None:
    """Read fixed-size replies until the stream ends, telling `client` of each one."""
    got = 0
    while True:
        try:
            data = await net_stream.read(65536)
        except Exception:
            return
        if not data:
            return
        got += len(data)
        while got >= reply_size:
            got -= reply_size
            client.answered()


async def echo_records(net_stream: Any, request_size: int, reply: bytes) -> None:
    """Answer every whole `request_size`-byte record read from a py-libp2p stream with one
    write of `reply`, until the stream ends."""
    pending = 0
    while True:
        data = await net_stream.read(65536)
        if not data:
            return
        pending += len(data)
        while pending >= request_size:
            pending -= request_size
            await net_stream.write(reply)


@contextlib.asynccontextmanager
async def raw_libp2p_echo(request_size: int, reply_size: int) -> AsyncIterator[FifoClient]:
    """Two bare py-libp2p hosts: fixed-size `request_size`-byte records on one yamux
    stream, each answered by one `reply_size`-byte write; no framing, no p2pay code."""
    reply = b"r" * reply_size

    async def server(net_stream: Any) -> None:
        try:
            await echo_records(net_stream, request_size, reply)
        except Exception:
            with contextlib.suppress(Exception):
                await net_stream.reset()

    async with _raw_stream("/p2pay-bench/raw-echo/1", server) as net_stream:
        lock = trio.Lock()

        async def send(data: bytes) -> None:
            async with lock:
                await net_stream.write(data)

        client = FifoClient(send, b"q" * request_size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_count_replies, net_stream, reply_size, client)
            yield client
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def batching_raw_libp2p_echo(request_size: int, reply_size: int) -> AsyncIterator[Any]:
    """`raw_libp2p_echo`, writing like the node: the server answers every whole record of
    each read with ONE yamux write (all the replies concatenated); the client queues its
    requests and one pump writes everything queued in one yamux write. No p2pay code
    (py-libp2p's default yamux window policy)."""
    reply = b"r" * reply_size

    async def server(net_stream: Any) -> None:
        pending = 0
        try:
            while True:
                data = await net_stream.read(65536)
                if not data:
                    return
                pending += len(data)
                ready, pending = divmod(pending, request_size)
                if ready:
                    await net_stream.write(reply * ready)
        except Exception:
            with contextlib.suppress(Exception):
                await net_stream.reset()

    async with _raw_stream("/p2pay-bench/raw-batching-echo/1", server) as net_stream:

        async def send_many(batch: list[bytes]) -> None:
            await net_stream.write(b"".join(batch))

        client = BatchingClient(send_many, b"q" * request_size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_count_replies, net_stream, reply_size, client)
            nursery.start_soon(client.pump)
            yield client
            nursery.cancel_scope.cancel()
