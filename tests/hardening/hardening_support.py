"""Shared pieces of the hardening tests (issue 7): keys, a seed corpus of valid frames, a
seeded mutation engine, a synchronous driver of `FrameReader`, an independent reference
framer, outcome checks for every parser, and a provider world on the memory transport.

Nothing here draws randomness of its own: every generator takes a `random.Random` (or a
hypothesis strategy draws the choices), so a failing input is reproduced by its seed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from p2pay.core import codec
from p2pay.core.errors import DecodeError, ErrorCode, FrameTooLarge, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    REQUEST_OVERHEAD,
    Hello,
    Refusal,
    Request,
    Response,
    ServiceTerms,
    StakeTerms,
    check_signed_by,
    decode_frame,
    refusal_body,
)
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.base import StreamClosed
from p2pay.net.framing import READ_SIZE, FrameReader
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, Node, NodeConfig, open_node

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
CAROL = Keypair.from_seed(bytes([3]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)

PRICE = 1_000
TOKEN = 10**24
LEDGER_ID = b"p2pay:test:hardening"
OTHER_LEDGER_ID = b"p2pay:test:elsewhere"
WIRE_CODES = frozenset(ErrorCode)


# ---------------------------------------------------------------------------
# seed corpus


def seed_corpus(ledger: bytes = LEDGER_ID, channel: bytes = bytes(range(32))) -> list[bytes]:
    """Valid frames of every kind, with the fields at interesting values."""
    deadline = 1_700_000_000_000
    requests = [
        Request.create(
            ALICE,
            ledger=ledger,
            channel=channel,
            n=n,
            paid=paid,
            price=price,
            service=service,
            body=body,
            deadline=deadline,
        )
        for n, paid, price, service, body in (
            (1, PRICE, PRICE, "echo", b"hello"),
            (2**64 - 1, 2**128 - 1, 2**64, "s" * 64, b""),
            (23, 24, 255, "\u00e9\u6f22", bytes(range(256))),
        )
    ]
    responses = [
        Response.create(BOB, request=requests[0], status="OK", price=PRICE, spent=PRICE, body=b"x"),
        Response.create(
            BOB,
            request=requests[1],
            status=ErrorCode.PAYMENT_REQUIRED.value,
            price=0,
            spent=2**128 - 1,
            body=refusal_body("pay more", {"price": 2**70, "credit": 0}),
        ),
    ]
    hellos = [
        Hello.create(BOB, ledger=ledger),
        Hello.create(
            BOB,
            ledger=ledger,
            services=(
                ServiceTerms(name="echo", price=PRICE, max_body=65536),
                ServiceTerms(name="big", price=2**128 - 1, max_body=2**64 - 1),
            ),
            stake=StakeTerms(amount=10**20, penalty=10**19, claim_window_ms=30_000),
            max_in_flight=3,
            max_frame=4096,
        ),
    ]
    refusals = [
        Refusal(channel=b"", n=0, code=ErrorCode.MALFORMED, message="bad"),
        Refusal(
            channel=channel,
            n=7,
            code=ErrorCode.REPLAY,
            message="replay",
            details={
                "last_n": 9,
                "spent": 5,
                "paid_max": PRICE,
                "voucher": requests[0].to_frame(),
            },
        ),
        Refusal(
            channel=channel,
            n=1,
            code=ErrorCode.OVERLOADED,
            details={"a": [[[{"b": [-1, -(2**128), True, None]}]]]},
        ),
    ]
    return (
        [r.to_frame() for r in requests]
        + [r.to_frame() for r in responses]
        + [h.to_frame() for h in hellos]
        + [r.to_frame() for r in refusals]
    )


# ---------------------------------------------------------------------------
# mutations

# Bytes that change a CBOR head's meaning: each major type's 1/2/4/8-byte argument and
# indefinite forms, tags 2/3 and others, simple values, floats, "break".
INTERESTING = bytes(
    [
        *(0x00, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x38, 0x3B, 0x40, 0x57, 0x58),
        *(0x5B, 0x5F, 0x60, 0x78, 0x7B, 0x7F, 0x80, 0x98, 0x9B, 0x9F, 0xA0, 0xB8, 0xBB, 0xBF),
        *(0xC0, 0xC2, 0xC3, 0xC4, 0xD8, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFF),
        0xFE,
    ]
)


class Mutator:
    """Seeded mutations of a corpus: flips, interesting bytes, inserts, deletions,
    duplications, truncation, splices, nesting bombs, length lies and pure noise."""

    def __init__(self, rng: random.Random, corpus: list[bytes]) -> None:
        self.rng = rng
        self.corpus = corpus
        self.ops: list[Callable[[bytearray], bytearray]] = [
            self._flip,
            self._flip,
            self._interesting,
            self._interesting,
            self._random_byte,
            self._insert,
            self._delete,
            self._duplicate,
            self._truncate,
            self._splice,
            self._nest,
            self._length_lie,
        ]

    def mutate(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.03:
            return rng.randbytes(rng.randrange(0, 64))
        data = bytearray(rng.choice(self.corpus))
        for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
            data = rng.choice(self.ops)(data)
        return bytes(data)

    def _pos(self, data: bytearray) -> int:
        return self.rng.randrange(len(data)) if data else 0

    def _flip(self, data: bytearray) -> bytearray:
        if data:
            data[self._pos(data)] ^= 1 << self.rng.randrange(8)
        return data

    def _interesting(self, data: bytearray) -> bytearray:
        if data:
            data[self._pos(data)] = self.rng.choice(INTERESTING)
        return data

    def _random_byte(self, data: bytearray) -> bytearray:
        if data:
            data[self._pos(data)] = self.rng.randrange(256)
        return data

    def _insert(self, data: bytearray) -> bytearray:
        at = self.rng.randrange(len(data) + 1)
        data[at:at] = self.rng.randbytes(self.rng.randrange(1, 9))
        return data

    def _delete(self, data: bytearray) -> bytearray:
        if data:
            at = self._pos(data)
            del data[at : at + self.rng.randrange(1, 17)]
        return data

    def _duplicate(self, data: bytearray) -> bytearray:
        if data:
            at = self._pos(data)
            piece = data[at : at + self.rng.randrange(1, 33)]
            to = self.rng.randrange(len(data) + 1)
            data[to:to] = piece
        return data

    def _truncate(self, data: bytearray) -> bytearray:
        return data[: self.rng.randrange(len(data) + 1)]

    def _splice(self, data: bytearray) -> bytearray:
        other = self.rng.choice(self.corpus)
        return data[: self._pos(data)] + other[self.rng.randrange(len(other) + 1) :]

    def _nest(self, data: bytearray) -> bytearray:
        depth = self.rng.choice((2, 7, 8, 9, 17, 1000, 100_000))
        head = self.rng.choice((b"\x81", b"\xa1\x00", b"\xc2"))
        at = self.rng.randrange(len(data) + 1)
        data[at:at] = head * depth
        return data

    def _length_lie(self, data: bytearray) -> bytearray:
        # Replace one byte by a head announcing a huge string/array/map.
        if data:
            major = self.rng.choice((0x40, 0x60, 0x80, 0xA0))
            width = self.rng.choice(((0x1A, 4), (0x1B, 8)))
            at = self._pos(data)
            data[at : at + 1] = bytes([major | width[0]]) + b"\xff" * width[1]
        return data


# ---------------------------------------------------------------------------
# parser outcome checks


def check_decode(data: bytes, *, max_size: int = codec.MAX_FRAME_SIZE, max_depth: int = 16) -> bool:
    """codec.decode: a value that re-encodes to exactly `data`, or DecodeError. True: valid."""
    try:
        value = codec.decode(data, max_size=max_size, max_depth=max_depth)
    except FrameTooLarge:
        assert len(data) > max_size
        return False
    except DecodeError as exc:
        assert exc.code is ErrorCode.MALFORMED
        return False
    assert codec.encode(value, max_depth=max_depth) == data, "INV-17: accepted non-canonical"
    return True


def check_frame(
    data: bytes, *, max_size: int = codec.MAX_FRAME_SIZE, verify: bool = True
) -> object | None:
    """decode_frame: a frame that re-encodes to `data`, or a typed RemoteProtocolError.

    With `verify`, a signed frame is also checked against two keys and ledgers
    (check_signed_by may only answer with a typed error)."""
    try:
        frame = decode_frame(data, max_size=max_size)
    except RemoteProtocolError as exc:  # DecodeError, FrameTooLarge, WrongDomain
        assert exc.code in WIRE_CODES
        assert isinstance(exc.message, str)
        return None
    assert isinstance(frame, Hello | Request | Response | Refusal)
    assert frame.to_frame() == data, "INV-17: a frame re-encodes to its bytes"
    if verify and isinstance(frame, Hello | Request | Response):
        for key, ledger in ((ALICE.public, LEDGER_ID), (BOB.public, OTHER_LEDGER_ID)):
            try:
                check_signed_by(frame, key, ledger)
            except RemoteProtocolError as exc:
                assert exc.code in WIRE_CODES
    if isinstance(frame, Response):
        message, details = frame.refusal_info()  # never raises
        assert isinstance(message, str) and isinstance(details, dict)
    return frame


def check_from_signed(kind: type, signed: bytes, signature: bytes, body: bytes) -> object | None:
    """Request/Response/Hello.from_signed: the message, or a typed RemoteProtocolError."""
    try:
        if kind is Hello:
            message = Hello.from_signed(signed, signature)
        else:
            message = kind.from_signed(signed, signature, body)
    except RemoteProtocolError as exc:
        assert exc.code in WIRE_CODES
        return None
    assert message.signing_bytes == signed
    return message


# ---------------------------------------------------------------------------
# framing: a synchronous driver and an independent reference


def chunked(data: bytes, sizes: Iterator[int]) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        size = max(1, min(next(sizes), READ_SIZE))
        out.append(data[pos : pos + size])
        pos += size
    return out


def drive_reader(chunks: list[bytes], max_frame: int) -> tuple[list[bytes], str]:
    """Run a `FrameReader` over `chunks` without an event loop (its reads never block).

    Returns the frames read and how the stream ended, named as `reference_frames` names
    it. Asserts the reader's memory bound: it never asks for more bytes while holding a
    whole frame, so what it buffers stays at most ``max_frame + 9`` (prefix) before a read,
    and that its errors are sticky.
    """
    feed = iter(chunks)
    reader: FrameReader

    async def read_some(n: int) -> bytes:
        assert n == READ_SIZE
        assert reader.buffered <= max_frame + 9, "FrameReader buffered beyond its bound"
        return next(feed, b"")

    reader = FrameReader(read_some, max_frame)
    frames: list[bytes] = []
    while True:
        step = reader.next()
        try:
            step.send(None)
        except StopIteration as stop:
            frames.append(stop.value)
            continue
        except (StreamClosed, DecodeError) as exc:
            again = reader.next()  # sticky: fails the same way, without reading
            try:
                again.send(None)
            except (StreamClosed, DecodeError) as second:
                assert type(second) is type(exc)
            else:  # pragma: no cover - a failure
                raise AssertionError("a FrameReader error was not sticky") from None
            if isinstance(exc, FrameTooLarge):
                return frames, "too-large"
            if isinstance(exc, DecodeError):
                return frames, "bad-prefix"
            return frames, "eof" if reader.clean_eof else "eof-mid"
        raise AssertionError("FrameReader suspended on a read that never blocks")


def reference_frames(data: bytes, max_frame: int) -> tuple[list[bytes], str]:
    """The frames in `data` per specs/protocol.md 5.2, written independently of framing.py.

    Returns (frames, end) with end one of "eof" (clean, between frames), "eof-mid" (inside
    a prefix or a frame), "bad-prefix" (non-minimal or over 9 bytes), "too-large".
    """
    frames = []
    pos = 0
    while True:
        if pos == len(data):
            return frames, "eof"
        length = 0
        i = 0
        while True:
            if i == 9:
                return frames, "bad-prefix"
            if pos + i == len(data):
                return frames, "eof-mid"
            byte = data[pos + i]
            length |= (byte & 0x7F) << (7 * i)
            i += 1
            if byte < 0x80:
                if byte == 0 and i > 1:
                    return frames, "bad-prefix"
                break
        if length > max_frame:
            return frames, "too-large"
        if pos + i + length > len(data):
            return frames, "eof-mid"
        frames.append(data[pos + i : pos + i + length])
        pos += i + length


# ---------------------------------------------------------------------------
# a provider world on the memory transport


def make_ledger(ledger_id: bytes = LEDGER_ID) -> MemoryLedger:
    return MemoryLedger(
        Params(
            ledger_id=ledger_id,
            dev=True,
            claim_bond=10**18,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )


async def echo(call: Call) -> bytes:
    return call.body


async def answer_hello_as_bob(stream: Any, ledger_id: bytes) -> None:
    """A fake BOB's side of the hello (protocol.md 9): take the payer's, answer with BOB's
    offering "echo" at `PRICE`, bodies up to 1,000 bytes."""
    first = decode_frame(await stream.receive())
    assert isinstance(first, Hello)
    terms = (ServiceTerms(name="echo", price=PRICE, max_body=1000),)
    await stream.send(Hello.create(BOB, ledger=ledger_id, services=terms).to_frame())


def snapshot(node: Node, channel: bytes) -> tuple[Any, ...]:
    """Everything the payee keeps about a channel (INV-7: unchanged by refused frames)."""
    ch = node.payee_channels[channel]
    best = ch.best.hash if ch.best is not None else None
    return (ch.last_n, ch.paid_max, best, ch.spent, ch.reserved, ch.deposit, ch.status)


class ErrorLog(logging.Handler):
    """Collects ERROR records and records with a traceback (an unhandled exception)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@asynccontextmanager
async def capture_errors() -> AsyncIterator[ErrorLog]:
    handler = ErrorLog()
    logger = logging.getLogger("p2pay")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass
class World:
    """A provider (BOB) on a MemoryNetwork, clients ALICE and CAROL with channels, and
    MALLORY with a channel of its own; all on one dev MemoryLedger."""

    network: MemoryNetwork
    ledger: MemoryLedger
    bob: Node
    alice: Node
    carol: Node
    channels: dict[str, bytes] = field(default_factory=dict)

    @property
    def bob_addr(self) -> str:
        return self.bob.addrs[0]

    def others(self) -> dict[str, tuple[Any, ...]]:
        """Snapshots of the honest clients' channels at the payee."""
        return {name: snapshot(self.bob, self.channels[name]) for name in ("alice", "carol")}

    def mallory_request(self, n: int, **overrides: Any) -> Request:
        fields: dict[str, Any] = dict(
            ledger=self.ledger.ledger_id,
            channel=self.channels["mallory"],
            n=n,
            paid=n * PRICE,
            price=PRICE,
            service="echo",
            body=b"m%d" % n,
            deadline=wall_clock_ms() + 30_000,
        )
        fields.update(overrides)
        return Request.create(MALLORY, **fields)


@asynccontextmanager
async def provider_world(
    config: NodeConfig | None = None,
    *,
    deposit: int = 10**9,
    calls: int = 2,
    clock: Callable[[], int] | None = None,
    services: dict[str, Callable[[Call], Any]] | None = None,
) -> AsyncIterator[World]:
    """Open the world; ALICE and CAROL each make `calls` paid calls first. `clock` is
    BOB's (Unix ms); `services` are offered at PRICE besides echo."""
    network = MemoryNetwork()
    ledger = make_ledger()
    for key in (ALICE, BOB, CAROL, MALLORY):
        await ledger.mint(key, key.account, 10 * TOKEN)
    quiet = NodeConfig(watcher=False, default_timeout=5.0)
    async with (
        open_node(
            key=BOB, ledger=ledger, network=network, config=config or quiet, clock=clock
        ) as bob,
        open_node(key=ALICE, ledger=ledger, network=network, config=quiet) as alice,
        open_node(key=CAROL, ledger=ledger, network=network, config=quiet) as carol,
    ):
        bob.serve(
            "echo",
            echo,
            price=PRICE,
            max_body=min(1 << 16, bob.config.max_frame - REQUEST_OVERHEAD),
        )
        for name, handler in (services or {}).items():
            bob.serve(
                name,
                handler,
                price=PRICE,
                max_body=min(1 << 16, bob.config.max_frame - REQUEST_OVERHEAD),
            )
        world = World(network, ledger, bob, alice, carol)
        for name, node in (("alice", alice), ("carol", carol)):
            info = await node.open_channel(bob.addrs[0], deposit=deposit)
            world.channels[name] = info.channel
            for _ in range(calls):
                await node.call(bob.addrs[0], "echo", b"hi", max_price=PRICE)
        world.channels["mallory"] = await ledger.open_channel(MALLORY, BOB.public, deposit, 60_000)
        yield world


#: What `RawPeer.exchange` returns for a frame the payee ignores (no answer is due).
IGNORED = "ignored"


class RawPeer:
    """A hostile peer with its own key: raw frames on memory-transport streams to BOB."""

    def __init__(self, world: World, key: Keypair, transport: Any) -> None:
        self.world = world
        self.key = key
        self.transport = transport
        self.stream: Any = None
        self.hello = Hello.create(key, ledger=world.ledger.ledger_id).to_frame()
        self.connects = 0

    async def connect(self) -> Any:
        if self.stream is not None:
            await self.stream.reset()
        self.stream = await self.transport.connect(self.world.bob_addr)
        self.connects += 1
        with trio.fail_after(30):
            await self.stream.send(self.hello)
            answer = decode_frame(await self.stream.receive())
        assert isinstance(answer, Hello), answer
        return self.stream

    async def exchange(self, frame: bytes, timeout: float = 30.0) -> object | None:
        """Send one frame and return the answer frame, or None if the stream ended.

        A response or a refusal frame gets no answer on a stream the payee accepted
        (protocol.md §12, D3): it is only sent, and `IGNORED` returned. `timeout` bounds
        the wait for a payee that never answers; it is wall time, so it is far above an
        answer's (5 s was exceeded once by `test_slow_session_fuzz`, one exchange of
        30,000, in a suite run beside another suite and two CPU hogs on 2 cores)."""
        if self.stream is None:
            await self.connect()
        try:
            sent: object = decode_frame(frame)
        except RemoteProtocolError:
            sent = None
        with trio.fail_after(timeout):
            try:
                await self.stream.send(frame)
                if isinstance(sent, Response | Refusal):
                    return IGNORED
                payload = await self.stream.receive()
            except StreamClosed:
                self.stream = None
                return None
        return decode_frame(payload)


@asynccontextmanager
async def raw_peer(world: World, key: Keypair = MALLORY) -> AsyncIterator[RawPeer]:
    async def ignore(stream: Any) -> None:
        await stream.aclose()

    async with open_memory_transport(world.network, key, ignore) as transport:
        peer = RawPeer(world, key, transport)
        try:
            yield peer
        finally:
            if peer.stream is not None:
                await peer.stream.reset()


# ---------------------------------------------------------------------------
# a provider as an OS process (`python -m p2pay node run`), for crash and load tests

REPO = Path(__file__).resolve().parents[2]


def cli_env(extra_path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("P2PAY_HOME", "P2PAY_DEBUG")}
    paths = [str(REPO), *(p for p in (extra_path, env.get("PYTHONPATH")) if p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def cli(*args: str, cwd: Path, timeout: float = 60) -> str:
    """Run ``python -m p2pay ARGS`` (bounded) and return its stdout; fail on an error."""
    proc = subprocess.run(
        [sys.executable, "-m", "p2pay", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"p2pay {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def make_provider_home(cwd: Path, node_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """A dev SQLite ledger and a provider home, made with the CLI as a user would."""
    cli("ledger", "create", "ledger.sqlite", "--dev", cwd=cwd)
    doc = json.loads(
        cli("--home", "provider", "init", "--ledger", "sqlite:ledger.sqlite", "--json", cwd=cwd)
    )
    if node_settings:
        config = cwd / "provider" / "config.toml"
        lines = ["", "[node]"] + [f"{k} = {json.dumps(v)}" for k, v in node_settings.items()]
        config.write_text(config.read_text(encoding="utf-8") + "\n".join(lines) + "\n")
    return {
        "ledger": cwd / "ledger.sqlite",
        "home": cwd / "provider",
        "peer_id": doc["peer_id"],
        "account": bytes.fromhex(doc["account"]),
    }


class ProviderProcess:
    """``python -m p2pay --home H node run`` in the background; `start` returns its address."""

    def __init__(self, cwd: Path, home: str, *args: str, extra_path: str | None = None) -> None:
        self.cwd = cwd
        self.argv = [sys.executable, "-m", "p2pay", "--home", home, "node", "run", *args]
        self.env = cli_env(extra_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_seconds: list[float] = []

    async def start(self, timeout: float = 60) -> str:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        out = self.cwd / f"provider-{self.starts}.out"
        err = self.cwd / f"provider-{self.starts}.err"
        started = time.monotonic()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=stdout, stderr=stderr
            )
        with trio.fail_after(timeout):
            while True:
                text = out.read_text(encoding="utf-8", errors="replace")
                for line in text.splitlines():
                    if line.startswith("listening ") and "/tcp/" in line:
                        self.start_seconds.append(time.monotonic() - started)
                        return line.split(" ", 1)[1].strip()
                if self.proc.poll() is not None:
                    raise AssertionError(f"provider exited: {err.read_text()[-2000:]}")
                await trio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident set size of the provider process (Linux /proc)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")  # pragma: no cover

    def cpu_seconds(self) -> float:
        """User + system CPU time of the provider process so far (Linux /proc)."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    async def stop(self) -> int:
        """SIGINT (a clean stop, everything flushed), then SIGKILL if it hangs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        with trio.move_on_after(60):  # a bound on a hang, generous for a loaded machine
            while self.proc.poll() is None:
                await trio.sleep(0.05)
        self.kill()
        return self.proc.wait(timeout=10)

    def stderr_text(self) -> str:
        return "".join(
            (self.cwd / f"provider-{i}.err").read_text(errors="replace")
            for i in range(1, self.starts + 1)
        )
