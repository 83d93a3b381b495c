"""The requests a stream left unanswered while their calls waited are re-sent first on
the next stream to the payee, before anything new (protocol.md 13.1 step 4,
`Client._resend_lost_first`), each with a place of its own among the stream's
``max_in_flight``; a call that stops waiting takes its request out of that (`_disown`).

The drop and the meanwhile call as in test_attack_r38_resend_after_newer.py: the frames'
latency keeps the requests on the wire while the connection drops (the payee never reads
them), the lost calls' tasks are held on an event where a test needs an order, and every
wait is bounded. No timing assertion.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
from node_support import (
    call_outcome,
    drop_under_a_call,
    funded_ledger,
    hold_resends,
    paying_pair,
    wait_until,
)

from p2pay.core.identity import Keypair
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, Node, NodeConfig

PAYER = Keypair.from_seed(bytes([85]) * 32)
PAYEE = Keypair.from_seed(bytes([86]) * 32)
PRICE = 1_000
CONFIG = NodeConfig(
    watch_interval=0.05, min_challenge_ms=50, auto_claim=False, redeem_threshold=10**30
)
TIMEOUT = 30.0


@asynccontextmanager
async def pair(
    name: bytes, handler: Callable[[Call], Awaitable[bytes]]
) -> AsyncIterator[tuple[Node, Node, bytes, MemoryNetwork]]:
    """A payee serving `handler` as "svc" at PRICE, a payer with a channel to it: (payer,
    payee, channel id, network); the ledger's totals conserved at the end."""
    ledger = await funded_ledger(name, PAYER, PAYEE)
    async with paying_pair(
        ledger, PAYER, PAYEE, config=CONFIG, price=PRICE, service="svc", handler=handler
    ) as both:
        yield both.payer, both.payee, both.channel, both.net


def recorder(
    served: list[bytes], hold: trio.Event | None = None
) -> Callable[[Call], Awaitable[bytes]]:
    """An echo that records each body it serves, holding b"lost" until `hold` is set."""

    async def echo(call: Call) -> bytes:
        served.append(call.body)
        if hold is not None and call.body == b"lost":
            await hold.wait()
        return call.body

    return echo


async def test_several_lost_requests_go_before_a_newer_one_in_order() -> None:
    served: list[bytes] = []
    async with pair(b"lost-first-several", recorder(served)) as (payer, payee, channel, net):
        peer = payee.peer_id
        outcomes: dict[bytes, str] = {}
        gate = trio.Event()
        hold_resends(payer, gate)
        lost = [b"lost-1", b"lost-2", b"lost-3"]

        def call(body: bytes) -> Callable[[], Awaitable[None]]:
            return functools.partial(
                call_outcome, outcomes, payer, peer, "svc", body, price=PRICE, timeout=TIMEOUT
            )

        def start_lost() -> None:
            for body in lost:
                nursery.start_soon(call(body))

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await drop_under_a_call(net, payer, peer, start_lost, calls=len(lost))
                nursery.start_soon(call(b"meanwhile"))
                await wait_until(lambda: b"meanwhile" in outcomes)
                gate.set()
        assert outcomes == dict.fromkeys([*lost, b"meanwhile"], "ok"), outcomes
        # each served once; a lost one admitted after the newer request would have been
        # answered REPLAY, not served (handlers start in the order trio schedules them)
        assert sorted(served) == sorted([*lost, b"meanwhile"]), served
        mine = payer.payer_channels[channel]
        assert not mine.in_flight and not mine.abandoned
        assert payee.payee_channels[channel].spent == 4 * PRICE  # each charged once
        assert payer.client._lost == {}
        new = payer._connections[peer]
        assert new.slots.value == CONFIG.max_in_flight and not new.pending


async def lost_and_cancelled(payer: Node, peer: str, scope: trio.CancelScope) -> None:
    """A call of b"lost" that `scope` cancels (its outcome, Cancelled, is not recorded)."""
    with scope:
        await call_outcome({}, payer, peer, "svc", b"lost", price=PRICE, timeout=TIMEOUT)


async def test_a_call_that_stops_waiting_is_not_re_sent() -> None:
    served: list[bytes] = []
    async with pair(b"lost-first-gone", recorder(served)) as (payer, payee, channel, net):
        peer = payee.peer_id
        outcomes: dict[bytes, str] = {}
        held: list[int] = []
        hold_resends(payer, trio.Event(), held=held)  # never set: the lost call is cancelled
        scope = trio.CancelScope()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                start = functools.partial(
                    nursery.start_soon, lost_and_cancelled, payer, peer, scope
                )
                await drop_under_a_call(net, payer, peer, start)
                await wait_until(lambda: held)  # its stream ended; it is about to re-send
                assert peer in payer.client._lost
                scope.cancel()
            assert payer.client._lost == {}  # nothing kept for a call that has gone
            await call_outcome(outcomes, payer, peer, "svc", b"later", price=PRICE, timeout=TIMEOUT)
        assert outcomes == {b"later": "ok"}, outcomes
        assert served == [b"later"]  # the lost request was not re-sent
        assert list(payer.payer_channels[channel].abandoned) == [1]  # on record, claimable
        assert payer._connections[peer].slots.value == CONFIG.max_in_flight


async def test_a_copy_whose_call_has_gone_is_forgotten_and_its_place_given_back() -> None:
    served: list[bytes] = []
    release = trio.Event()
    async with pair(b"lost-first-orphan", recorder(served, release)) as (
        payer,
        payee,
        channel,
        net,
    ):
        peer = payee.peer_id
        outcomes: dict[bytes, str] = {}
        hold_resends(payer, trio.Event())  # never set: the lost call is cancelled
        scope = trio.CancelScope()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                start = functools.partial(
                    nursery.start_soon, lost_and_cancelled, payer, peer, scope
                )
                await drop_under_a_call(net, payer, peer, start)
                await call_outcome(
                    outcomes, payer, peer, "svc", b"meanwhile", price=PRICE, timeout=TIMEOUT
                )
                new = payer._connections[peer]
                assert sorted(served) == [b"lost", b"meanwhile"]  # its copy served, too
                assert (channel, 1) in new.pending
                assert new.slots.value == CONFIG.max_in_flight - 1  # the copy's own place
                scope.cancel()
            release.set()
        assert outcomes == {b"meanwhile": "ok"}, outcomes
        assert (channel, 1) not in new.pending  # forgotten: nobody waits for it
        assert new.slots.value == CONFIG.max_in_flight  # its place given back
        assert 1 in payer.payer_channels[channel].abandoned  # may be charged: claimable
