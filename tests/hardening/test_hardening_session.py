"""A hostile peer against a provider's server session (issue 7; INV-7, INV-8, INV-18).

MALLORY, a peer with its own channel to BOB, feeds BOB random, mutated and hostile frames
over the memory transport (and raw bytes over libp2p). Whatever it sends, BOB answers with
a typed refusal, a signed response for MALLORY's own channel, or resets the stream; it
never logs an unhandled exception, never changes ALICE's or CAROL's channel (in memory or
in its store), and keeps serving them. MALLORY's own channel only moves by the prices of
the OK receipts it got (INV-1, INV-4).
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import pytest
import trio
from hardening_support import (
    ALICE,
    BOB,
    CAROL,
    IGNORED,
    MALLORY,
    OTHER_LEDGER_ID,
    PRICE,
    Mutator,
    World,
    capture_errors,
    make_ledger,
    provider_world,
    raw_peer,
    seed_corpus,
    snapshot,
)

from p2pay.core import codec
from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Refusal, Request, Response, decode_frame
from p2pay.ledger.memory import wall_clock_ms
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import NodeConfig, open_node

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---------------------------------------------------------------------------
# the session fuzzer


class SessionFuzzer:
    """Makes hostile inputs for BOB's session and checks every answer."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.n = 0  # MALLORY's highest request number sent
        self.ok_paid = 0  # prices of OK receipts MALLORY got
        self.answered: dict[bytes, bytes] = {}  # request hash -> the signed answer's frame
        self.counts: dict[str, int] = {}
        self.corpus: list[bytes] = []

    async def load_corpus(self) -> None:
        w = self.world
        captured = [r.frame for r in await w.alice.store.requests()]
        captured += [r.frame for r in await w.carol.store.requests()]
        assert captured, "the honest clients' requests are part of the corpus"
        self.corpus = captured + seed_corpus(w.ledger.ledger_id, w.channels["mallory"])
        self.corpus += [self.structured() for _ in range(20)]
        self.mutator = Mutator(self.rng, self.corpus)

    def structured(self) -> bytes:
        """A request MALLORY signs with hostile field values (its signature is valid)."""
        rng, w = self.rng, self.world
        self.n += 1
        now = wall_clock_ms()
        channel = rng.choice(
            [w.channels["mallory"]] * 6
            + [w.channels["alice"], w.channels["carol"], rng.randbytes(32)]
        )
        n = rng.choice([self.n] * 6 + [max(1, self.n - 3), self.n + 1000, 1])
        request = Request.create(
            MALLORY,
            ledger=rng.choice([w.ledger.ledger_id] * 8 + [OTHER_LEDGER_ID]),
            channel=channel,
            n=n,
            paid=rng.choice([self.n * PRICE] * 4 + [0, 10**9, 10**9 + 1, 2**128 - 1]),
            price=rng.choice([PRICE] * 4 + [0, PRICE - 1, 2**128 - 1]),
            service=rng.choice(["echo"] * 4 + ["nope", "e" * 64]),
            body=rng.randbytes(rng.choice((0, 5, 100))),
            deadline=rng.choice([now + 30_000] * 4 + [now - 1, now + 7_200_000, 2**64 - 1, 0]),
        )
        self.n = max(self.n, n)
        return request.to_frame()

    def next_input(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.25:
            return self.structured()
        if roll < 0.3:
            return self.rng.choice(self.corpus)  # replays of captured frames, as they are
        return self.mutator.mutate()

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def check_answer(self, sent: bytes, answer: object | None) -> None:
        if answer is None:
            self.count("stream-ended")
            return
        if answer == IGNORED:  # a response or refusal frame: never answered (D3)
            self.count("ignored")
            return
        if isinstance(answer, Refusal):
            assert answer.code in ErrorCode
            self.count(answer.code.value)
            return
        assert isinstance(answer, Response), f"unexpected answer {answer!r}"
        assert answer.verify(BOB.public), "a response BOB did not sign"
        request = decode_frame(sent)
        assert isinstance(request, Request)
        assert answer.request_hash == request.hash and answer.n == request.n
        assert answer.channel == self.world.channels["mallory"], "answered for another channel"
        if answer.request_hash in self.answered:
            # the same request re-sent: the stored answer again, never a second charge
            # (protocol v2, C-4)
            assert answer.to_frame() == self.answered[answer.request_hash]
            self.count("answered-again")
            return
        self.answered[answer.request_hash] = answer.to_frame()
        if answer.ok:
            assert answer.price == PRICE
            self.ok_paid += answer.price
            self.count("OK")
        else:
            assert answer.price == 0
            self.count("signed-" + answer.status)

    def check_channels(self, others: dict[str, Any]) -> None:
        w = self.world
        assert w.others() == others, "INV-7/INV-8: a refused frame moved an honest channel"
        ch = w.bob.payee_channels.get(w.channels["mallory"])
        if ch is not None:
            assert 0 <= ch.spent and ch.spent + ch.reserved <= ch.paid_max <= ch.deposit  # INV-1
            if ch.best is not None:
                assert ch.best.verify(MALLORY.public) and ch.best.paid == ch.paid_max  # INV-2


async def fuzz_session(world: World, seed: int, inputs: int) -> SessionFuzzer:
    fuzzer = SessionFuzzer(world, random.Random(seed))
    await fuzzer.load_corpus()
    others = world.others()
    stored = {
        name: await world.bob.store.payee_channel(world.channels[name])
        for name in ("alice", "carol")
    }
    async with capture_errors() as errors, raw_peer(world) as mallory:
        for i in range(inputs):
            data = fuzzer.next_input()
            answer = await mallory.exchange(data)
            fuzzer.check_answer(data, answer)
            fuzzer.check_channels(others)
            if isinstance(answer, Refusal) and not answer.channel:
                await mallory.connect()  # a framing-level refusal ends the stream
            if i % 2000 == 1999:  # honest clients are still served, and paid
                await world.alice.call(world.bob_addr, "echo", b"still", max_price=PRICE)
                others = world.others()
        fuzzer.counts["connects"] = mallory.connects
        await world.bob.persister.flush()
        assert not errors.records, errors.text()
    # ALICE and CAROL: served, and their stored state moved only by their own calls
    for name, node in (("alice", world.alice), ("carol", world.carol)):
        before = snapshot(world.bob, world.channels[name])
        result = await node.call(world.bob_addr, "echo", b"after", max_price=PRICE)
        assert result.body == b"after"
        after = snapshot(world.bob, world.channels[name])
        assert after[3] == before[3] + PRICE  # spent moved by exactly one price
    await world.bob.persister.flush()
    carol_record = await world.bob.store.payee_channel(world.channels["carol"])
    assert carol_record is not None and stored["carol"] is not None
    assert carol_record.spent == stored["carol"].spent + PRICE
    assert carol_record.last_n == stored["carol"].last_n + 1
    # MALLORY's channel moved by exactly the OK receipts it got (INV-1, INV-4)
    ch = world.bob.payee_channels.get(world.channels["mallory"])
    spent = ch.spent if ch is not None else 0
    assert spent == fuzzer.ok_paid
    record = await world.bob.store.payee_channel(world.channels["mallory"])
    assert (record.spent if record is not None else 0) == fuzzer.ok_paid
    return fuzzer


async def test_quick_session_fuzz() -> None:
    async with provider_world() as world:
        fuzzer = await fuzz_session(world, seed=11, inputs=1_500)
    counts = fuzzer.counts
    # the inputs reached the interesting outcomes
    for outcome in ("MALFORMED", "UNAUTHORIZED", "OK", "UNKNOWN_CHANNEL", "REPLAY"):
        assert counts.get(outcome, 0) > 0, counts
    assert any(key.startswith("signed-") for key in counts), counts


@pytest.mark.slow
async def test_slow_session_fuzz() -> None:
    started = time.perf_counter()
    inputs = 30_000
    async with provider_world() as world:
        fuzzer = await fuzz_session(world, seed=20240607, inputs=inputs)
        resets = world.bob.counters.rate_limited
    elapsed = time.perf_counter() - started
    print(
        f"\nsession fuzz: {inputs} inputs in {elapsed:.1f} s ({inputs / elapsed:.0f}/s), "
        f"rate-limit resets {resets}, outcomes {sorted(fuzzer.counts.items())}"
    )
    assert sum(v for k, v in fuzzer.counts.items() if k != "connects") == inputs


# ---------------------------------------------------------------------------
# named attacks (rows of specs/threat-model.md)


async def test_third_party_replaying_and_forging_changes_nothing() -> None:
    """Replayed (captured) and forged requests from a third party: UNAUTHORIZED, unsigned,
    no state change (INV-7, INV-8)."""
    async with provider_world() as world, capture_errors() as errors, raw_peer(world) as mallory:
        captured = [r.frame for r in await world.alice.store.requests()]
        forged = Request.create(
            CAROL,
            ledger=world.ledger.ledger_id,
            channel=world.channels["alice"],
            n=1000,
            paid=10**6,
            price=PRICE,
            service="echo",
            body=b"free lunch",
            deadline=wall_clock_ms() + 10_000,
        )
        before = world.others()
        for data in [*captured, forged.to_frame()]:
            answer = await mallory.exchange(data)
            assert isinstance(answer, Refusal) and answer.code is ErrorCode.UNAUTHORIZED
        assert world.others() == before
        assert not errors.records


async def test_tampered_signature_and_cross_channel_voucher() -> None:
    """A voucher signed for one channel presented for another (cross-channel replay),
    and a tampered signature: INVALID_SIGNATURE, no state change on either channel.

    With every voucher checked on arrival (limit 0); under deferred checks (protocol.md
    13.4) the payer's own tampered voucher may be served within the limit, see
    integration/test_node.py::test_deferred_checks_bound_what_bad_vouchers_get."""
    config = NodeConfig(watcher=False, default_timeout=5.0, unverified_credit_limit=0)
    async with provider_world(config) as world, raw_peer(world) as mallory:
        second = await world.ledger.open_channel(MALLORY, BOB.public, 10**9, 60_000)
        good = world.mallory_request(1)
        assert isinstance(await mallory.exchange(good.to_frame()), Response)
        mine = snapshot(world.bob, world.channels["mallory"])
        moved = Request(
            ledger=good.ledger,
            channel=second,
            n=2,
            paid=good.paid,
            price=good.price,
            service=good.service,
            body_hash=good.body_hash,
            deadline=good.deadline,
            body=good.body,
        ).with_signature(good.signature)
        answer = await mallory.exchange(moved.to_frame())
        assert isinstance(answer, Refusal) and answer.code is ErrorCode.INVALID_SIGNATURE
        flipped = bytes([good.signature[0] ^ 1]) + good.signature[1:]
        answer = await mallory.exchange(world.mallory_request(2).with_signature(flipped).to_frame())
        assert isinstance(answer, Refusal) and answer.code is ErrorCode.INVALID_SIGNATURE
        assert snapshot(world.bob, world.channels["mallory"]) == mine
        assert world.bob.payee_channels[second].last_n == 0


async def test_cross_ledger_request_is_wrong_ledger() -> None:
    """The payer's own valid signature on a request naming another ledger (a voucher from
    another settlement instance): WRONG_LEDGER, unsigned, nothing kept (INV-16)."""
    async with provider_world() as world, raw_peer(world) as mallory:
        assert isinstance(await mallory.exchange(world.mallory_request(1).to_frame()), Response)
        before = snapshot(world.bob, world.channels["mallory"])
        other = world.mallory_request(2, ledger=OTHER_LEDGER_ID, paid=10**9)
        answer = await mallory.exchange(other.to_frame())
        assert isinstance(answer, Refusal) and answer.code is ErrorCode.WRONG_LEDGER
        assert snapshot(world.bob, world.channels["mallory"]) == before


async def test_replayed_and_reordered_requests_are_replay_with_resync() -> None:
    """The payer's own requests replayed or reordered: an answered one gets its stored
    answer again, byte for byte (protocol v2, C-4); a number skipped and never answered is
    REPLAY (with the resync details), unsigned. Nothing is served or charged twice (INV-6,
    INV-10)."""
    async with provider_world() as world, raw_peer(world) as mallory:
        r1, r2, r3 = (world.mallory_request(n) for n in (1, 2, 3))
        a1 = await mallory.exchange(r1.to_frame())
        a3 = await mallory.exchange(r3.to_frame())  # skips n=2
        assert isinstance(a1, Response) and isinstance(a3, Response)
        spent = world.bob.payee_channels[world.channels["mallory"]].spent
        answer = await mallory.exchange(r2.to_frame())
        assert isinstance(answer, Refusal) and answer.code is ErrorCode.REPLAY
        assert answer.details["last_n"] == 3 and answer.details["spent"] == spent
        voucher = decode_frame(answer.details["voucher"])
        assert isinstance(voucher, Request) and voucher.verify(MALLORY.public)
        for old, first in ((r1, a1), (r3, a3)):
            again = await mallory.exchange(old.to_frame())
            assert isinstance(again, Response) and again.to_frame() == first.to_frame()
        assert world.bob.payee_channels[world.channels["mallory"]].spent == 2 * PRICE
        assert world.bob.counters.answers_resent == 2


async def test_voucher_beyond_the_deposit_is_refused_and_never_kept() -> None:
    """paid above the deposit: an unsigned INSUFFICIENT_DEPOSIT (N1: a signed refusal would
    be refundable after a top-up), the voucher is not kept, so the payee never holds a claim
    on more than the escrow (INV-1, INV-2)."""
    async with provider_world(deposit=5 * PRICE) as world, raw_peer(world) as mallory:
        assert isinstance(await mallory.exchange(world.mallory_request(1).to_frame()), Response)
        greedy = world.mallory_request(2, paid=5 * PRICE + 1)
        answer = await mallory.exchange(greedy.to_frame())
        assert isinstance(answer, Refusal)
        assert answer.code is ErrorCode.INSUFFICIENT_DEPOSIT
        ch = world.bob.payee_channels[world.channels["mallory"]]
        assert ch.paid_max == PRICE and ch.best is not None and ch.best.paid == PRICE
        assert ch.spent == PRICE


async def test_wrong_domain_non_canonical_nested_oversized_frames() -> None:
    """Frames that are not valid requests get an unsigned refusal with the right code and
    the stream ends; nothing is logged as an unhandled error (spec 5.2, 8; INV-18)."""
    config = NodeConfig(watcher=False, max_frame=8192)
    async with (
        provider_world(config) as world,
        capture_errors() as errors,
        raw_peer(world) as mallory,
    ):
        request = world.mallory_request(1)
        response = Response.create(
            BOB, request=request, status="OK", price=PRICE, spent=PRICE, body=b"x"
        )
        wrong_domain = codec.encode([1, response.signing_bytes, request.signature, b""])
        n_at = request.signing_bytes.index(b"an\x01") + 2  # "n": 1 -> non-minimal 0x1801
        loose = request.signing_bytes[:n_at] + b"\x18\x01" + request.signing_bytes[n_at + 1 :]
        non_canonical = codec.encode([1, loose, request.signature, request.body])
        nested = b"\x84\x01" + b"\x81" * 5000 + b"\x00"
        cases = [
            (wrong_domain, ErrorCode.WRONG_DOMAIN),
            (non_canonical, ErrorCode.MALFORMED),
            (nested, ErrorCode.MALFORMED),
            (b"\x84\x01" + b"\x5b" + b"\xff" * 8, ErrorCode.MALFORMED),
            (bytes(8193), ErrorCode.FRAME_TOO_LARGE),
            (b"", ErrorCode.MALFORMED),
            (Hello.create(MALLORY, ledger=world.ledger.ledger_id).to_frame(), ErrorCode.MALFORMED),
        ]
        for data, code in cases:
            await mallory.connect()
            answer = await mallory.exchange(data)
            assert isinstance(answer, Refusal), (code, answer)
            assert answer.code is code and answer.channel == b"" and answer.n == 0
            if code is ErrorCode.FRAME_TOO_LARGE:  # D2: the receiver's limit
                assert answer.details == {"max_frame": 8192}
            with trio.fail_after(5):
                assert await mallory.exchange(request.to_frame()) is None  # stream ended
        assert world.bob.counters.protocol_violations == len(cases)
        assert world.bob.payee_channels.get(world.channels["mallory"]) is None
        assert not errors.records, errors.text()


async def test_libp2p_bad_length_prefixes_get_a_refusal_not_a_crash() -> None:
    """Raw bytes on a real libp2p stream: a non-minimal or over-long length prefix is
    MALFORMED and an announced giant is FRAME_TOO_LARGE, refused before it is read; the
    stream is reset; the session never dies with an unhandled exception (spec 5.2)."""
    ledger = make_ledger()
    cases = [
        (b"\x80\x00", ErrorCode.MALFORMED),  # non-minimal prefix
        (b"\xff" * 9 + b"\x01", ErrorCode.MALFORMED),  # more than 9 bytes
        (b"\xff" * 8 + b"\x7f", ErrorCode.FRAME_TOO_LARGE),  # 2**63-1 bytes announced
        (b"\x81\x80\x40", ErrorCode.FRAME_TOO_LARGE),  # 1 MiB + 1
    ]

    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with (
        capture_errors() as errors,
        open_node(key=BOB, ledger=ledger, config=NodeConfig(watcher=False)) as bob,
        open_libp2p_transport(MALLORY, ignore) as transport,
    ):
        for raw, code in cases:
            stream = await transport.connect(bob.addrs[0])
            with trio.fail_after(10):
                await stream.send(Hello.create(MALLORY, ledger=ledger.ledger_id).to_frame())
                assert isinstance(decode_frame(await stream.receive()), Hello)
                await stream._net.write(raw)  # bytes that are not a frame
                answer = decode_frame(await stream.receive())
                assert isinstance(answer, Refusal) and answer.code is code
                if code is ErrorCode.FRAME_TOO_LARGE:  # D2: the receiver's limit
                    assert answer.details == {"max_frame": bob.config.max_frame}
                with pytest.raises(Exception, match=r"(?i)closed|reset|end of stream"):
                    await stream.receive()
            await stream.reset()
        assert bob.counters.protocol_violations == len(cases)
    assert not errors.records, errors.text()


async def test_garbage_hello_is_refused_and_the_node_keeps_serving() -> None:
    """Before the hello: garbage, another peer's hello (a PeerID claim the stream does not
    back), a hello for another ledger, and leaving at once. Each is refused or ignored."""
    async with provider_world() as world, capture_errors() as errors, raw_peer(world) as mallory:
        cases = [
            (b"\x00\x01\x02", ErrorCode.MALFORMED),
            (
                Hello.create(ALICE, ledger=world.ledger.ledger_id).to_frame(),
                ErrorCode.INVALID_SIGNATURE,
            ),
            (Hello.create(MALLORY, ledger=OTHER_LEDGER_ID).to_frame(), ErrorCode.WRONG_LEDGER),
            (world.mallory_request(1).to_frame(), ErrorCode.MALFORMED),
            (other_version(MALLORY, world.ledger.ledger_id).to_frame(), ErrorCode.VERSION_MISMATCH),
        ]
        for data, code in cases:
            stream = await mallory.transport.connect(world.bob_addr)
            with trio.fail_after(5):
                await stream.send(data)
                answer = decode_frame(await stream.receive())
            assert isinstance(answer, Refusal) and answer.code is code
            assert (answer.channel, answer.n) == (b"", 0)
            if code is ErrorCode.VERSION_MISMATCH:  # D2: the receiver's version
                assert answer.details == {"version": 2}
            await stream.reset()
        for _ in range(20):  # connect and leave without a word
            stream = await mallory.transport.connect(world.bob_addr)
            await stream.reset()
        await world.alice.call(world.bob_addr, "echo", b"ok", max_price=PRICE)
        with trio.fail_after(30):  # the 20 silent sessions end (a condition, not a nap)
            while world.bob._sessions > 2:
                await trio.sleep(0.01)
        assert world.bob._sessions == 2  # ALICE's and CAROL's
        assert not errors.records, errors.text()


def other_version(key: Keypair, ledger_id: bytes) -> Hello:
    """A hello of protocol version 3, otherwise valid, signed by `key`."""
    good = Hello.create(key, ledger=ledger_id)
    unsigned = dataclasses.replace(good, version=3, signature=b"")
    return unsigned.with_signature(key.sign(unsigned.signing_bytes))


async def test_response_and_refusal_frames_to_a_payee_are_ignored_and_the_stream_kept() -> None:
    """D3 (protocol.md 5.4): the answerer never answers a response or a refusal; it ignores
    them (a violation, counted) and keeps the stream, which goes on serving requests."""
    async with provider_world() as world, capture_errors() as errors, raw_peer(world) as mallory:
        r1 = world.mallory_request(1)
        a1 = await mallory.exchange(r1.to_frame())
        assert isinstance(a1, Response) and a1.ok
        stream = mallory.stream
        violations = world.bob.counters.protocol_violations
        for frame in (
            a1.to_frame(),
            Refusal(channel=b"", n=0, code=ErrorCode.MALFORMED).to_frame(),
        ):
            assert await mallory.exchange(frame) == IGNORED
        a2 = await mallory.exchange(world.mallory_request(2).to_frame())
        assert isinstance(a2, Response) and a2.ok and mallory.stream is stream  # kept
        assert world.bob.counters.protocol_violations == violations + 2
        assert not errors.records, errors.text()


async def test_a_payee_sending_a_request_gets_malformed_and_the_stream_stays() -> None:
    """D3 (protocol.md 5.4): requests go on a stream their payer opens; a caller receiving
    one answers an unsigned MALFORMED naming it and keeps the stream."""
    ledger = make_ledger()
    network = MemoryNetwork()
    got: list[object] = []
    done = trio.Event()

    async def fake_payee(stream: Any) -> None:
        with trio.fail_after(5):
            decode_frame(await stream.receive())  # the caller's hello
            await stream.send(Hello.create(CAROL, ledger=ledger.ledger_id).to_frame())
            request = Request.create(
                CAROL,
                ledger=ledger.ledger_id,
                channel=bytes(32),
                n=7,
                paid=1,
                price=1,
                service="echo",
                body=b"",
                deadline=wall_clock_ms() + 10_000,
            )
            await stream.send(request.to_frame())
            got.append(decode_frame(await stream.receive()))
            await stream.send(Refusal(channel=bytes(32), n=9, code=ErrorCode.REPLAY).to_frame())
        done.set()
        with trio.fail_after(5):
            await stream.receive()  # the caller keeps the stream until it closes

    config = NodeConfig(watcher=False)
    async with (
        capture_errors() as errors,
        open_memory_transport(network, CAROL, fake_payee) as transport,
        open_node(key=ALICE, ledger=ledger, network=network, config=config) as alice,
    ):
        hello = await alice.connect(transport.addrs[0])
        assert hello.account == CAROL.public
        with trio.fail_after(5):
            await done.wait()
        (answer,) = got
        assert isinstance(answer, Refusal) and answer.code is ErrorCode.MALFORMED
        assert (answer.channel, answer.n) == (bytes(32), 7)
        assert answer.message == "requests go on a stream their payer opens"
        assert not alice._connections[CAROL.peer_id].closed  # kept
        assert alice.counters.protocol_violations == 1
        assert not errors.records, errors.text()
