"""The outbox sends a durable frame at once on a stream that can send without waiting
(`MemoryStream.send_nowait`), and queues it for its pump otherwise; frames keep their order."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import Stream, StreamClosed
from p2pay.net.memory import (
    PIPE_CAPACITY,
    MemoryNetwork,
    MemoryStream,
    memory_addr,
    open_memory_transport,
)
from p2pay.node import Call, NodeConfig, open_node
from p2pay.node.outbox import _Outbox
from p2pay.persist import Persister
from p2pay.store.base import Batch
from p2pay.store.conformance import payee_record
from p2pay.store.memory import MemoryStore

ALICE, BOB = Keypair.from_seed(b"\x01" * 32), Keypair.from_seed(b"\x02" * 32)


async def _pair(
    nursery: trio.Nursery, net: MemoryNetwork
) -> tuple[MemoryStream, trio.MemoryReceiveChannel[tuple[bytes, float]]]:
    """A stream from ALICE to BOB; what BOB reads comes out of the channel, timed."""
    send, recv = trio.open_memory_channel[tuple[bytes, float]](1000)

    async def reader(stream: Stream) -> None:
        try:
            while True:
                frame = await stream.receive()
                await send.send((frame, trio.current_time()))
        except StreamClosed:
            pass

    bob = await nursery.start(_serve, net, BOB, reader)
    alice = await nursery.start(_serve, net, ALICE, reader)
    assert bob is not None
    stream = await alice.connect(memory_addr(str(BOB.peer_id)))
    assert isinstance(stream, MemoryStream)
    return stream, recv


async def _serve(net: MemoryNetwork, key: Keypair, handler: object, *, task_status: object) -> None:
    async with open_memory_transport(net, key, handler) as transport:  # type: ignore[arg-type]
        task_status.started(transport)  # type: ignore[attr-defined]
        await trio.sleep_forever()


async def test_send_nowait_sends_as_send_would(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    net.set_latency(lambda src, dst: 0.25)
    async with trio.open_nursery() as nursery:
        stream, got = await _pair(nursery, net)
        t0 = trio.current_time()
        assert stream.send_nowait(b"a")
        await stream.send(b"b")
        assert [await got.receive() for _ in range(2)] == [(b"a", t0 + 0.25), (b"b", t0 + 0.25)]
        # a full pipe: nothing sent, send() would wait
        for _ in range(PIPE_CAPACITY):
            assert stream.send_nowait(b"x")
        assert not stream.send_nowait(b"y")
        nursery.cancel_scope.cancel()


async def test_send_nowait_declines_when_it_cannot(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    net.set_send_filter(str(BOB.peer_id), lambda frame: frame)
    accepted: list[Stream] = []

    async def keep(stream: Stream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(_serve, net, BOB, keep)
        alice = await nursery.start(_serve, net, ALICE, keep)
        stream = await alice.connect(memory_addr(str(BOB.peer_id)))
        await trio.testing.wait_all_tasks_blocked()
        (filtered,) = accepted
        assert isinstance(filtered, MemoryStream) and isinstance(stream, MemoryStream)
        assert not filtered.send_nowait(b"a")  # its frames pass a send filter: send()
        await stream.aclose()
        assert not stream.send_nowait(b"a")  # closed: send() says why
        nursery.cancel_scope.cancel()


async def test_outbox_sends_durable_frames_at_once_and_queues_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        stream, got = await _pair(nursery, net)
        # group commit (not written through): a staged change is durable only once the
        # flusher committed it
        persister = Persister(MemoryStore())
        nursery.start_soon(persister.run)
        outbox = _Outbox()
        nursery.start_soon(outbox.pump, persister, stream)
        await trio.testing.wait_all_tasks_blocked()
        outbox.put(0, b"now")  # durable, nothing queued: sent by put itself
        assert outbox.sent == 1 and not outbox.items
        generation = persister.stage(payee=payee_record(1))
        outbox.put(generation, b"after-commit")  # not durable yet: queued
        outbox.put(0, b"behind-it")  # durable, but behind a queued frame: queued
        assert outbox.sent == 1 and len(outbox.items) == 2
        await outbox.wait_sent(3)
        frames = [(await got.receive())[0] for _ in range(3)]
        assert frames == [b"now", b"after-commit", b"behind-it"]
        assert persister.is_durable(generation)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("write_through", [True, False])
async def test_outbox_keeps_order_either_way(
    autojump_clock: trio.testing.MockClock, write_through: bool
) -> None:
    net = MemoryNetwork()
    net.set_latency(lambda src, dst: 0.01)
    async with trio.open_nursery() as nursery:
        stream, got = await _pair(nursery, net)
        persister = Persister(MemoryStore(write_through=write_through))
        nursery.start_soon(persister.run)
        outbox = _Outbox()
        nursery.start_soon(outbox.pump, persister, stream)
        await trio.testing.wait_all_tasks_blocked()
        sent = []
        for i in range(20):
            generation = persister.stage(payee=payee_record(i % 3 + 1)) if i % 2 else 0
            frame = b"%d" % i
            outbox.put(generation, frame)
            sent.append(frame)
            if i % 5 == 0:
                await trio.sleep(0.003)
        await outbox.wait_sent(20)
        assert [(await got.receive())[0] for _ in range(20)] == sent
        nursery.cancel_scope.cancel()


async def test_a_cancelled_pump_lets_nothing_more_leave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once the pump's scope is cancelled (its connection closing, the node stopping), a
    frame put before the pump task runs again is not sent by `put` either: a pump never
    sends after its cancellation, so before the direct path (2d8f703) such a frame never
    left; a payer's request would leave although its call then fails ConnectionLost."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        stream, got = await _pair(nursery, net)
        persister = Persister(MemoryStore(write_through=True))
        outbox = _Outbox()
        async with trio.open_nursery() as pumps:
            pumps.start_soon(outbox.pump, persister, stream)
            await trio.testing.wait_all_tasks_blocked()
            outbox.put(0, b"before")
            await trio.testing.wait_all_tasks_blocked()  # sent; the pump parked again
            pumps.cancel_scope.cancel()
            # the pump has not run since: a durable frame, nothing queued
            outbox.put(persister.stage(payee=payee_record(1)), b"late")
            outbox.put(0, b"later")
        assert outbox.closed and outbox.sent == 1
        assert (await got.receive())[0] == b"before"
        with trio.move_on_after(60):
            frame = await got.receive()
            raise AssertionError(f"{frame!r} left after the pump was cancelled")
        nursery.cancel_scope.cancel()


async def test_a_pump_cancelled_while_it_sends_lets_nothing_more_leave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same when the cancellation reaches the pump mid-send (blocked on a full pipe):
    its send is abandoned (the stream reset) and what is put then is not sent either."""
    net = MemoryNetwork()
    net.set_latency(lambda src, dst: 1000.0)
    async with trio.open_nursery() as nursery:
        stream, _ = await _pair(nursery, net)
        persister = Persister(MemoryStore(write_through=True))
        outbox = _Outbox()
        for _ in range(PIPE_CAPACITY):  # the reader reads them only at their arrival
            assert stream.send_nowait(b"fill")
        await trio.testing.wait_all_tasks_blocked()
        while stream.send_nowait(b"fill"):  # (the reader holds one, waiting for it)
            pass
        async with trio.open_nursery() as pumps:
            pumps.start_soon(outbox.pump, persister, stream)
            await trio.testing.wait_all_tasks_blocked()
            outbox.put(0, b"blocked")  # the pipe is full: the pump's send() waits
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.sent == 0 and len(outbox.items) == 1
            pumps.cancel_scope.cancel()
            outbox.put(0, b"late")
        assert outbox.closed and outbox.sent == 0
        with pytest.raises(StreamClosed):
            await stream.send(b"x")  # reset: a send cancelled while it waited
        nursery.cancel_scope.cancel()


class _LoggedStore(MemoryStore):
    """Logs the request hashes of the responses and requests it commits (to `log`);
    its writes may be slow, and fail from the `fail_after`-th on."""

    def __init__(
        self, log: list[tuple[str, bytes]], *, delay: float, fail_after: int, through: bool
    ) -> None:
        super().__init__(write_through=through)
        self.log, self.delay, self.fail_after, self.writes = log, delay, fail_after, 0

    def _written(self, batch: Batch) -> None:
        for record in [*batch.responses, *batch.requests]:
            self.log.append(("commit", record.request_hash))

    async def write(self, batch: Batch) -> None:
        self.writes += 1
        await trio.sleep(self.delay * (self.writes % 3))
        if self.writes >= self.fail_after:
            raise OSError("disk gone")
        await super().write(batch)
        self._written(batch)

    def write_now(self, batch: Batch) -> None:
        self.writes += 1
        if self.writes >= self.fail_after:
            raise OSError("disk gone")
        super().write_now(batch)
        self._written(batch)


@pytest.mark.parametrize(
    ("bob_store", "alice_store"),
    [
        ({"delay": 0.01, "fail_after": 10**9, "through": False}, {"through": True}),
        ({"delay": 0.01, "fail_after": 12, "through": False}, {"through": False}),
        ({"delay": 0.0, "fail_after": 12, "through": True}, {"through": True}),
        ({"delay": 0.0, "fail_after": 10**9, "through": True}, {"fail_after": 9}),
    ],
)
async def test_no_request_or_answer_leaves_before_it_is_stored(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    bob_store: dict[str, Any],
    alice_store: dict[str, Any],
) -> None:
    """Two nodes over the memory transport (direct sends and the pump), stores slow or
    failing, group commit or written through: every signed answer BOB sends and every
    request ALICE sends left after the record holding it was committed (13.3)."""
    log: list[tuple[str, bytes]] = []
    sent_by = {str(ALICE.peer_id): "alice", str(BOB.peer_id): "bob"}

    def record(stream: MemoryStream, payload: bytes) -> None:
        frame = decode_frame(payload)
        if isinstance(frame, Response) and sent_by[stream._transport.peer_id] == "bob":
            log.append(("answer", frame.request_hash))
        elif isinstance(frame, Request) and sent_by[stream._transport.peer_id] == "alice":
            log.append(("request", frame.hash))

    send, send_many, send_nowait = (
        MemoryStream.send,
        MemoryStream.send_many,
        MemoryStream.send_nowait,
    )

    async def logged_send(self: MemoryStream, payload: bytes) -> None:
        record(self, payload)
        await send(self, payload)

    async def logged_send_many(self: MemoryStream, payloads: list[bytes]) -> None:
        for payload in payloads:
            record(self, payload)
        await send_many(self, payloads)

    def logged_send_nowait(self: MemoryStream, payload: bytes) -> bool:
        if send_nowait(self, payload):
            record(self, payload)
            return True
        return False

    monkeypatch.setattr(MemoryStream, "send", logged_send)
    monkeypatch.setattr(MemoryStream, "send_many", logged_send_many)
    monkeypatch.setattr(MemoryStream, "send_nowait", logged_send_nowait)
    ledger = MemoryLedger()
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**24)
    net = MemoryNetwork()
    net.set_latency(lambda src, dst: 0.001)
    config = NodeConfig(watch_interval=0.05)
    bobs = _LoggedStore(log, **bob_store)
    alices = _LoggedStore(
        log, **{"delay": 0.005, "fail_after": 10**9, "through": False, **alice_store}
    )
    answered = 0

    async def echo(call: Call) -> bytes:
        await trio.sleep(0.002 * (call.n % 3))
        return call.body

    async with (
        open_node(key=BOB, ledger=ledger, network=net, store=bobs, config=config) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, store=alices, config=config) as alice,
    ):
        bob.serve("echo", echo, price=1_000)
        await alice.open_channel(bob.addrs[0], deposit=10**9)

        async def one(i: int) -> None:
            nonlocal answered
            await trio.sleep(0.001 * (i % 7))
            with contextlib.suppress(P2payError):
                await alice.call(bob.peer_id, "echo", b"%d" % i, max_price=1_000)
                answered += 1

        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
    stored: set[bytes] = set()
    left = 0
    for kind, request_hash in log:
        if kind == "commit":
            stored.add(request_hash)
        else:
            left += 1
            assert request_hash in stored, (kind, request_hash.hex())
    assert left > 0
