"""Helpers the node integration tests share (imported as ``node_support``, like
``hardening_support`` in tests/hardening)."""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from p2pay.core.channel import PayerChannel
from p2pay.core.errors import SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Request, ServiceTerms
from p2pay.core.settlement import (
    Channel,
    ChannelState,
    Claim,
    ClaimState,
    Params,
    unbonding_period,
)
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.base import Stream
from p2pay.net.memory import MemoryNetwork
from p2pay.net.p2p import Libp2pStream
from p2pay.node import Call, Node, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore


async def wait_until(predicate: Callable[[], Any], timeout: float = 60.0) -> None:
    """Wait for a condition (a value or an awaitable), within a bound generous for a
    loaded machine."""
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.02)


def claim_game_params(ledger_id: bytes, **params: Any) -> Params:
    """Dev ledger parameters with short minimum periods (50 ms), a 60 s deadline horizon
    and `params` (which may set those too)."""
    fields: dict[str, Any] = {
        "min_claim_window_ms": 50,
        "min_challenge_ms": 50,
        "max_deadline_horizon_ms": 60_000,
        **params,
    }
    return Params(ledger_id=ledger_id, dev=True, **fields)


class ShiftedClock:
    """A ledger clock: the wall clock plus an offset a test moves forward (to jump past a
    period the ledger counts, e.g. a stake's unbonding)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset


async def withdraw_whole_stake(
    ledger: MemoryLedger, key: Keypair, window_ms: int, clock: ShiftedClock
) -> None:
    """`key` leaves with its whole stake (no claim open against it): unstake, the ledger's
    clock moved past the unbonding period, withdraw."""
    await ledger.request_unstake(key)
    clock.offset += unbonding_period(ledger.params, window_ms) + 1_000
    await ledger.withdraw_stake(key)
    stake = await ledger.stake_of(key.account)
    assert stake is None or stake.amount == 0


async def close_and_await_refund(
    payer: Node, ledger: MemoryLedger, channel: bytes, n: int
) -> tuple[Channel, list[tuple[int, ClaimState, int]]]:
    """`payer` closes `channel`; wait until it is closed and (bounded, it may never come)
    until `payer` has a claim on its request `n`. Returns the channel as the ledger has it
    then, and the payer's claims as (n, state, clawed)."""
    await payer.close_channel(channel)

    async def closed() -> bool:
        info = await ledger.channel(channel)
        return info is not None and info.state is ChannelState.CLOSED

    await wait_until(closed)

    async def refunded() -> bool:
        return any(c.n == n for c in await ledger.claims_of(payer.account))

    with trio.move_on_after(10):
        await wait_until(refunded, timeout=60)
    info = await ledger.channel(channel)
    assert info is not None
    claims = [(c.n, c.state, c.clawed) for c in await ledger.claims_of(payer.account)]
    print("redeemed", info.redeemed, "clawed", info.clawed, "claims", claims)
    return info, claims


async def claim_answered_with_evidence(
    ledger: MemoryLedger, payer: Keypair, payee: Keypair, claimed: Request, evidence: Request
) -> Claim:
    """`payer` claims `claimed` (its deadline passed); `payee` answers with `evidence`, a
    request of the payer's it says is in tiling conflict (the ledger refuses it if it is
    not). Returns the claim as it is then; prints how the payer's balance moved."""
    balance = await ledger.balance(payer.account)
    claim_id = await ledger.file_claim(payer, claimed)
    try:
        await ledger.answer_claim(payee, claim_id, evidence=evidence)
    except SettlementError as exc:  # no conflict: the claim stays open
        print("evidence refused:", exc)
    claim = await ledger.claim(claim_id)
    assert claim is not None
    moved = await ledger.balance(payer.account) - balance
    print("claim", claim.state, "the payer's balance moved by", moved)
    return claim


async def funded_ledger(name: bytes, *keys: Keypair, **params: Any) -> MemoryLedger:
    """A dev `MemoryLedger` with short minimum periods (50 ms), a 60 s deadline horizon
    and `params`, on which each of `keys` has 10 tokens."""
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:" + name, **params))
    for key in keys:
        await ledger.mint(key, key.account, 10**25)
    return ledger


def fresh_hello(node: Node) -> bytes:
    """The hello frame `Hello.create` builds and signs now from `node`'s current terms (what
    `Node.hello`, which keeps its last one while they are the same, must return)."""
    return Hello.create(
        node.key,
        ledger=node.ledger.ledger_id,
        services=tuple(
            ServiceTerms(name=s.name, price=s.price, max_body=s.max_body)
            for s in sorted(node.services.values(), key=lambda s: s.name)
        ),
        stake=node._stake,
        max_in_flight=node.config.max_in_flight,
        max_frame=node.config.max_frame,
        deadline_horizon=node.config.max_deadline_horizon_ms,
        settlement_key=node.signer,
    ).to_frame()


@asynccontextmanager
async def held_service_pair(
    ledger: MemoryLedger,
    payer: Keypair,
    payee: Keypair,
    held: Callable[[Call], Awaitable[bytes]],
    *,
    price: int,
    config: NodeConfig,
) -> AsyncIterator[tuple[Node, Node]]:
    """`payee` serving `held` as ``"held"`` at `price`, staked (10**20, penalty 10**19,
    30 s claim window), and `payer` with a 10**6 yocto channel to it, on the in-memory
    transport. `payer` files no claims of its own (``auto_claim`` off): the tests that use
    it play the watcher's part at a racy moment. Yields ``(payer, payee)``."""
    net = MemoryNetwork()
    async with (
        open_node(key=payee, ledger=ledger, network=net, config=config) as provider,
        open_node(
            key=payer,
            ledger=ledger,
            network=net,
            config=dataclasses.replace(config, auto_claim=False),
        ) as client,
    ):
        provider.serve("held", held, price=price)
        await provider.stake(10**20, penalty=10**19, claim_window_ms=30_000)
        await client.open_channel(provider.addrs[0], deposit=10**6)
        yield client, provider


@dataclasses.dataclass
class PayingPair:
    """What `paying_pair` yields."""

    payer: Node
    payee: Node
    channel: bytes  # the payer's channel to the payee
    net: MemoryNetwork


async def echo(call: Call) -> bytes:
    """A handler that answers each call with its body."""
    return call.body


@asynccontextmanager
async def paying_pair(
    ledger: MemoryLedger,
    payer: Keypair,
    payee: Keypair,
    *,
    config: NodeConfig,
    price: int,
    service: str = "echo",
    handler: Callable[[Call], Awaitable[bytes]] = echo,
    staked: bool = False,
) -> AsyncIterator[PayingPair]:
    """`payee` serving `handler` as `service` at `price` (staked 10**20, penalty 10**19,
    30 s claim window, if `staked`), and `payer` with a 10**9 yocto channel to it, both
    with `config`, on the in-memory transport; the ledger's totals are conserved at the
    end."""
    net = MemoryNetwork()
    async with (
        open_node(key=payee, ledger=ledger, network=net, config=config) as provider,
        open_node(key=payer, ledger=ledger, network=net, config=config) as client,
    ):
        provider.serve(service, handler, price=price)
        if staked:
            await provider.stake(10**20, penalty=10**19, claim_window_ms=30_000)
        ch = await client.open_channel(provider.addrs[0], deposit=10**9)
        yield PayingPair(client, provider, ch.channel, net)
    assert (await ledger.totals()).conserved


async def first_life(
    ledger: MemoryLedger,
    payer: Keypair,
    payee: bytes,
    channel: bytes,
    deposit: int,
    *,
    count: int,
    price: int,
    deadline_in_ms: int = 20_000,
) -> list[Request]:
    """The first `count` requests `payer` signs on `channel` (service ``echo``, bodies
    ``b"1"``, ``b"2"``, ..., each of `price`, deadlines `deadline_in_ms` ahead of the
    ledger's clock), as its node signed them before its store was lost: the tests of a
    channel adopted from the ledger (`adopted_payer_channel`) start from them."""
    before = PayerChannel(
        ledger=ledger.ledger_id, channel=channel, payer=payer.account, payee=payee, deposit=deposit
    )
    deadline = await ledger.now() + deadline_in_ms
    return [
        before.next_request(payer, service="echo", body=b"%d" % i, price=price, deadline=deadline)
        for i in range(1, count + 1)
    ]


async def file_free_claims(
    ledger: Any, payer: Keypair, payee: bytes, count: int, body_size: int
) -> tuple[bytes, list[bytes]]:
    """Open `payer`'s channel to `payee`, wait until a deadline has passed on the ledger,
    and file `count` claims on requests never sent, for a service the payee does not
    offer ("nosuch"), each with a body of `body_size` bytes: claims that cost the payer
    nothing (REFUSED, the bond back). Returns the channel and the claim ids; no body is
    held once it returns."""
    channel = await ledger.open_channel(payer, payee, 10**6, 60_000)
    deadline = await ledger.now() + 100

    async def past() -> bool:
        return bool(await ledger.now() > deadline)

    await wait_until(past, timeout=10)
    ids = []
    for i in range(count):
        request = Request.create(
            payer, ledger=ledger.ledger_id, channel=channel, n=1 + i, paid=1 + i, price=1,
            service="nosuch", body=bytes([i % 256]) * body_size, deadline=deadline,
        )  # fmt: skip
        ids.append(await ledger.file_claim(payer, request))
        del request
    return channel, ids


async def all_decided(ledger: Any, claim_ids: list[bytes]) -> bool:
    """Every one of the claims is past OPEN (read one at a time: no bodies held)."""
    for claim_id in claim_ids:
        claim = await ledger.claim(claim_id)
        if claim is None or claim.state is ClaimState.OPEN:
            return False
    return True


async def ended_claim(ledger: MemoryLedger, claimant: Keypair, claim_id: bytes) -> Claim:
    """`claim_id` as it ended: resolved by `claimant` (UPHELD, the respondent slashed) if it
    is still OPEN. Read through `MemoryLedger.claim` itself, past the latency or the faults
    an attack test's ledger adds to the reads its nodes make."""
    claim = await MemoryLedger.claim(ledger, claim_id)
    assert claim is not None
    if claim.state is ClaimState.OPEN:
        await ledger.resolve_claim(claimant, claim_id)
        claim = await MemoryLedger.claim(ledger, claim_id)
        assert claim is not None
    return claim


async def peak_during(action: Callable[[], Awaitable[None]]) -> int:
    """The peak of traced memory above its level at the start, while `action` runs."""
    tracemalloc.start()
    try:
        gc.collect()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        await action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


class SlowAnswers(SqliteLedger):
    """An endpoint that takes `latency` seconds to take each claim answer (the
    transaction's time: an EVM one takes seconds)."""

    latency = 0.3

    async def answer_claim(self, *args: Any, **kwargs: Any) -> None:
        await trio.sleep(self.latency)
        await super().answer_claim(*args, **kwargs)


@asynccontextmanager
async def slow_answers_world(
    tmp_path: Path, *keys: Keypair
) -> AsyncIterator[tuple[SqliteLedger, SqliteStore]]:
    """A `SlowAnswers` SQLite ledger (dev, 50 ms minimum periods) on which each of `keys`
    has 10 tokens, and a provider's `SqliteStore` that outlives its node (the memory
    attack tests restart a provider on it); both closed at the end."""
    ledger = await SlowAnswers.create(
        tmp_path / "ledger.sqlite", dev=True, min_claim_window_ms=50, min_challenge_ms=50
    )
    store = await SqliteStore.open(tmp_path / "provider.sqlite")
    try:
        for key in keys:
            await ledger.mint(key, key.account, 10**25)
        yield ledger, store
    finally:
        await store.aclose()
        await ledger.aclose()


async def peak_answering_again(
    ledger: Any,
    store: SqliteStore,
    key: Keypair,
    config: NodeConfig,
    serve: Callable[[Node], None],
    claim_ids: list[bytes],
    *,
    timeout: float = 180.0,
) -> tuple[int, set[ClaimState]]:
    """Start `key`'s node again on `store` (on a network of its own: nobody calls it),
    `serve` its services, and wait until every one of `claim_ids` is decided. Returns the
    peak of traced memory meanwhile (`peak_during`) and the claims' states."""

    async def serve_again() -> None:
        async with open_node(
            key=key, ledger=ledger, network=MemoryNetwork(), store=store, config=config
        ) as again:
            serve(again)
            await wait_until(lambda: all_decided(ledger, claim_ids), timeout=timeout)

    peak = await peak_during(serve_again)
    states = set()
    for claim_id in claim_ids:
        claim = await ledger.claim(claim_id)
        assert claim is not None
        states.add(claim.state)
    return peak, states


def called_from(name: str, depth: int = 4) -> bool:
    """Whether a function called `name` is among the callers of our caller, `depth` levels
    up at most (a lying test ledger's read asks whether the node code it lies to made it:
    the read may go through a helper of the watcher's)."""
    frame: FrameType | None = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


async def call_outcome(
    outcomes: dict[bytes, str],
    payer: Node,
    peer: str,
    service: str,
    body: bytes,
    *,
    price: int,
    timeout: float,
) -> None:
    """Call `service` on `peer` with `body` and record how it ended in ``outcomes[body]``:
    "ok" (its body echoed), "wrong body", or the error's type and message."""
    try:
        result = await payer.call(peer, service, body, max_price=price, timeout=timeout)
    except Exception as exc:  # the outcome is what the test reads
        outcomes[body] = f"{type(exc).__name__}: {exc}"
    else:
        outcomes[body] = "ok" if result.body == body else "wrong body"


async def drop_under_a_call(
    net: MemoryNetwork, payer: Node, peer: str, start: Callable[[], None], calls: int = 1
) -> None:
    """Start `calls` calls (`start`) whose requests stay on the wire (30 s of latency out
    of `payer`), then drop `payer`'s connection to `peer` under them, both ends reset: the
    payee never reads the requests. Returns once the payer has seen the drop."""
    net.set_latency(lambda src, dst: 30.0 if src == payer.peer_id else 0.0)
    old = await payer._connection(peer)
    start()
    await wait_until(lambda: len(old.pending) == calls)
    net.set_latency(None)
    net.disconnect(payer.peer_id)
    await wait_until(lambda: old.closed)


def hold_resends(
    payer: Node, gate: trio.Event, *, body: bytes | None = None, held: list[int] | None = None
) -> None:
    """Hold each task of `payer` about to re-send a request its lost stream left
    (`Client._resend_lost`: of the call of `body` only, if given) until `gate` is set,
    counting the tasks held in `held`: the lost call's task is scheduled after what a test
    does meanwhile (a scheduling race on any node)."""
    resend_lost = payer.client._resend_lost

    async def late_resend(*args: Any) -> Any:
        if body is None or args[2].request.body == body:
            if held is not None:
                held.append(1)
            await gate.wait()
        return await resend_lost(*args)

    payer.client._resend_lost = late_resend  # type: ignore[method-assign]


async def redeliver_awaiting(payer: Node, *, each: float, tries: int = 5) -> None:
    """Deliver again every request `payer` still awaits an answer for (as its watcher does
    before it claims, claims.md 6), each at most `tries` times, 0.2 s apart, within `each`
    seconds: a request the payee never read, numbered below one it served since, is
    answered REPLAY (unsigned: `redeliver` gives None) and stays awaiting, claimable,
    uncharged (protocol.md 13.5). Retried until `each` ran out, each such request cost
    `each` seconds (30 s in round 41's storm test, where it happens one run in three)."""
    await payer.persister.flush()
    for record in await payer.store.requests(state="awaiting"):
        with trio.move_on_after(each):
            for _ in range(tries):
                if await payer.redeliver(record, timeout=10) is not None:
                    break
                await trio.sleep(0.2)


def tcp_of(stream: Stream) -> Any:
    """py-libp2p's TCP stream (`TrioTCPStream`) under a p2pay libp2p stream. Holding its
    ``read_lock`` stops the connection's reader: nothing more is read from the socket."""
    assert isinstance(stream, Libp2pStream)
    return stream._net.muxed_conn.secured_conn.conn.conn.stream


@contextmanager
def socket_of(stream: Stream) -> Iterator[socket.socket]:
    """A duplicate of the socket under a p2pay libp2p stream (closing it leaves the
    original open): to set its options, or to write past py-libp2p into it."""
    sock = socket.socket(fileno=os.dup(tcp_of(stream).stream.socket.fileno()))
    try:
        yield sock
    finally:
        sock.close()
