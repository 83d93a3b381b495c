"""Peer behaviours: honest, unreliable and adversarial (simulations/README.md, "Behaviours").

Theory of operation
-------------------
Every simulated peer runs a real `p2pay.node.Node`; its behaviour is one `PeerBehaviour`
object (one per peer), which is also the node's `p2pay.node.Behaviour`, so the node's own
hooks (`drop`, `before_handler`, `answers_claims`) apply directly. The engine calls the
other hooks:

* `bind(peer, sim)`: once, before the run; ``self.rng`` is a `random.Random` seeded from
  the scenario seed and the peer, the only randomness a behaviour may use.
* `down_periods(duration_s)`: the periods, in simulated seconds, when the peer is off
  (`DownPeriod`; mode ``"network"``: cut from the network, its node and watcher still
  run; ``"down"``: the node is stopped and later reopened on the same store;
  ``"crash"``: the same, its streams reset first).
* `call(target, service, body)`: the client's paid request (default: an honest
  `Node.call` through `Simulation.honest_call`); returns an outcome code.
* `call_any(service, body)`: the same for a client with ``discovery = true``, which
  names a service, not a provider (default: an honest `Node.call_any` through
  `Simulation.honest_call_any`).
* `run()`: a task that runs while the peer's node is up (cancelled when it goes down);
  adversaries attack from here.
* `settle()`: at the end of the run, how a provider closes its channels (default: a
  payee close that redeems exactly what it charged).

Class attributes say how the invariants treat the peer: ``honest`` peers must never be
slashed nor pay for what they did not get; ``adversary`` peers must not end with more
than an honest twin would (see `p2pay.sim.invariants`). A behaviour counts what it did
in ``self.stats`` (a Counter, reported per group); ``stats["served_illegitimately"]``
must stay 0 (an adversarial request that was served).

Decisions that could depend on the order in which trio runs tasks at one instant (which
request a dropper drops) are a hash of the seed and the request, not a draw from an
RNG, so a run is reproducible from its seed.

To write your own, subclass `PeerBehaviour` (or one below), set ``kind`` and ``roles``,
take parameters as keyword arguments in ``__init__`` and register it with
`p2pay.sim.registry.register`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from p2pay.core.channel import ChannelStatus, PayerChannel
from p2pay.core.errors import P2payError, SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Refusal, Request, Response, decode_frame
from p2pay.core.session import ClientSession, HelloReceived, ProtocolViolation, StreamRefused
from p2pay.node import Behaviour, Call
from p2pay.persist import StoreFailed
from p2pay.sim.params import parse_amount_param, parse_duration, parse_rate

if TYPE_CHECKING:
    from p2pay.net.base import Stream
    from p2pay.sim.engine import SimPeer, Simulation

log = logging.getLogger("p2pay.sim")

__all__ = [
    "BUILTIN",
    "Crasher",
    "DownPeriod",
    "Dropper",
    "FalseClaimer",
    "Forger",
    "Honest",
    "Offline",
    "Overspender",
    "PeerBehaviour",
    "RawSession",
    "Replayer",
    "Slow",
    "StaleCloser",
]


@dataclass(frozen=True, slots=True)
class DownPeriod:
    """The peer is off during [start_s, end_s) of simulated time."""

    start_s: float
    end_s: float
    mode: str  # "network" | "down" | "crash"


def _fraction(*parts: object) -> float:
    """A number in [0, 1) that is a hash of `parts`: a reproducible coin."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class PeerBehaviour(Behaviour):
    """Base class: an honest peer. Subclass and override the hooks you need."""

    kind: ClassVar[str] = "honest"
    #: roles this behaviour applies to
    roles: ClassVar[tuple[str, ...]] = ("provider", "client")
    #: in the honest-peer invariants (never slashed, never pays for nothing)
    honest: ClassVar[bool] = True
    #: in the no-gain invariant (ends with no more than an honest twin)
    adversary: ClassVar[bool] = False
    #: the engine passes the node's outgoing answers through `answer_filter`
    filters_answers: ClassVar[bool] = False
    #: with discovery, the node announces its offers (false: the behaviour does it)
    announces_offers: ClassVar[bool] = True

    def __init__(self, **params: object) -> None:
        if params:
            raise TypeError(f"{self.kind} takes no parameter {', '.join(sorted(params))}")
        self.stats: collections.Counter[str] = collections.Counter()
        self.rng = random.Random(0)
        self._peer: SimPeer | None = None
        self._sim: Simulation | None = None

    @property
    def peer(self) -> SimPeer:
        assert self._peer is not None, "bind() first"
        return self._peer

    @property
    def sim(self) -> Simulation:
        assert self._sim is not None, "bind() first"
        return self._sim

    def bind(self, peer: SimPeer, sim: Simulation) -> None:
        """Attach to the peer before the run (seeds ``self.rng``)."""
        self._peer = peer
        self._sim = sim
        self.rng = sim.rng(peer, "behaviour")

    def down_periods(self, duration_s: float) -> list[DownPeriod]:
        """When the peer is off; sorted, disjoint, within [0, duration_s)."""
        return []

    async def call(self, target: SimPeer, service: str, body: bytes) -> str:
        """One paid request of the client's workload; returns the outcome code."""
        return await self.sim.honest_call(self.peer, target, service, body)

    async def call_any(self, service: str, body: bytes) -> str:
        """One paid request of a discovery client's workload; returns the outcome code."""
        return await self.sim.honest_call_any(self.peer, service, body)

    async def run(self) -> None:
        """Runs while the node is up; cancelled when it goes down or the run ends."""

    def channel_challenge_ms(self, default_ms: int) -> int:
        """Clients: the challenge period of the channels it opens in the setup."""
        return default_ms

    def answer_filter(self, frame: bytes) -> bytes | None:
        """Providers with ``filters_answers``: the frame sent instead of `frame` on an
        inbound stream (None: send nothing). Memory transport only."""
        return frame

    async def settle(self) -> None:
        """End of run, providers: close every payee channel, redeeming what was charged."""
        node = self.peer.node
        if node is None:
            return
        for channel in sorted(node.payee_channels):
            ch = node.payee_channels[channel]
            if ch.status is ChannelStatus.CLOSED:
                continue
            try:
                await node.close_channel(channel)
            except StoreFailed:
                raise  # the node's store failed: a crash of the run, not a refused close
            except P2payError as exc:  # a SettlementError, a ChainError...
                self.stats["settle_errors"] += 1
                log.warning("%s: close %s failed: %s", self.peer.name, channel.hex()[:8], exc)


class Honest(PeerBehaviour):
    """Follows the protocol (the default)."""


class Offline(PeerBehaviour):
    """Honest, but off for periods.

    Params: ``mode`` ("network": unreachable, node and watcher running; "down": node
    stopped, reopened on its store), and either ``periods = [[start, end], ...]`` or a
    random schedule ``every`` (mean time between outages) with ``for`` (outage length).
    """

    kind = "offline"
    default_mode = "network"

    def __init__(
        self,
        *,
        mode: str | None = None,
        periods: list[list[object]] | None = None,
        every: object = None,
        **rest: Any,
    ) -> None:
        length = rest.pop("for", None)
        super().__init__(**rest)
        self.mode = mode or self.default_mode
        if self.mode not in ("network", "down", "crash"):
            raise ValueError("mode must be network, down or crash")
        self.periods: list[tuple[float, float]] = []
        for item in periods or []:
            if not (isinstance(item, list) and len(item) == 2):
                raise ValueError("periods is a list of [start, end]")
            start = parse_duration(item[0], "periods start")
            end = parse_duration(item[1], "periods end")
            if end <= start:
                raise ValueError("a period ends after it starts")
            self.periods.append((start, end))
        self.every = None if every is None else parse_duration(every, "every")
        self.length = None if length is None else parse_duration(length, "for")
        if (self.every is None) != (self.length is None):
            raise ValueError("every and for go together")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be > 0")
        if not self.periods and self.every is None:
            raise ValueError("give periods, or every and for")

    def down_periods(self, duration_s: float) -> list[DownPeriod]:
        spans = list(self.periods)
        if self.every is not None and self.length is not None:
            t = 0.0
            for _ in range(100_000):  # bounded
                t += self.rng.expovariate(1.0 / self.every)
                if t >= duration_s:
                    break
                spans.append((t, t + self.length))
                t += self.length
        merged: list[DownPeriod] = []
        for start, end in sorted(spans):
            start, end = max(0.0, start), min(end, duration_s)
            if end <= start:
                continue
            if merged and start <= merged[-1].end_s:
                last = merged.pop()
                start, end = last.start_s, max(end, last.end_s)
            merged.append(DownPeriod(start, end, self.mode))
        return merged


class Crasher(Offline):
    """Honest, but crashes at random (mean uptime ``every``) and restarts from its store
    after ``for``; its streams are reset at the crash (in-flight requests are lost)."""

    kind = "crasher"
    default_mode = "crash"


class Dropper(PeerBehaviour):
    """Provider that takes a fraction ``rate`` of paid requests (keeps the voucher) and
    never answers them, nor the claims they cause (``answers_claims``, default false).
    ``greedy = true``: at settlement it redeems the full signed vouchers (including the
    prices of the requests it dropped) instead of what it charged."""

    kind = "dropper"
    roles = ("provider",)
    honest = False
    adversary = True

    def __init__(self, *, rate: float = 0.1, answers_claims: bool = False, greedy: bool = False):
        super().__init__()
        self.rate = parse_rate(rate, "rate")
        self.answers_claims = bool(answers_claims)
        self.greedy = bool(greedy)

    def drop(self, call: Call) -> bool:
        dropped = (
            _fraction(self.sim.scenario.seed, self.peer.index, call.channel, call.n) < self.rate
        )
        if dropped:
            self.stats["dropped"] += 1
        return dropped

    async def settle(self) -> None:
        if not self.greedy:
            await super().settle()
            return
        node = self.peer.node
        if node is None:
            return
        for channel in sorted(node.payee_channels):
            ch = node.payee_channels[channel]
            if ch.status is ChannelStatus.CLOSED:
                continue
            try:  # no amount: the contract pays up to the voucher's `paid`
                taken = await node.ledger.payee_close(node.key, channel, ch.best, None)
            except SettlementError as exc:
                self.stats["settle_errors"] += 1
                log.warning("%s: greedy close failed: %s", self.peer.name, exc)
                continue
            self.stats["taken_beyond_charged"] += max(0, taken - (ch.spent - ch.redeemed))
            ch.status = ChannelStatus.CLOSED


class Slow(PeerBehaviour):
    """Provider that answers a fraction ``rate`` of requests after ``delay`` (typically past
    the deadline: the client has given up, the late receipt still counts)."""

    kind = "slow"
    roles = ("provider",)

    def __init__(self, *, rate: float = 0.2, delay: object = "10s") -> None:
        super().__init__()
        self.rate = parse_rate(rate, "rate")
        self.delay = parse_duration(delay, "delay")

    async def before_handler(self, call: Call) -> None:
        if _fraction(self.sim.scenario.seed, self.peer.index, call.channel, call.n) < self.rate:
            self.stats["delayed"] += 1
            await self.sim.sleep(self.delay)


# ---------------------------------------------------------------------------
# adversarial clients driving raw frames


class RawSession:
    """A hand-driven protocol stream to a provider: hello both ways, then one frame out,
    one frame back. What an attacker with its own key (and nothing else) can do."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    @classmethod
    async def open(cls, peer: SimPeer, target: SimPeer, timeout: float) -> RawSession:
        node = peer.node
        assert node is not None
        transport = node._transport  # the node's own transport (no public accessor yet)
        assert transport is not None  # (the node is open)
        with trio.fail_after(timeout):
            stream = await transport.connect(target.addr)
            try:
                # the hello exchange of the protocol (p2pay.core.session): ours first, then
                # the provider's, checked; the attacks then bypass the session
                session = ClientSession(
                    hello=Hello.create(node.key, ledger=node.ledger.ledger_id),
                    remote=stream.remote_public,
                    channels={},
                )
                await stream.send(session.start())
                (event,) = session.receive(await stream.receive(), node.now())
                if not isinstance(event, HelloReceived):  # refused, or a bad hello
                    assert isinstance(event, ProtocolViolation | StreamRefused)
                    raise event.error()
            except BaseException:
                await stream.reset()
                raise
        return cls(stream)

    async def exchange(self, frame: bytes, timeout: float) -> Response | Refusal | None:
        """Send one frame and read the answer (None: no answer in time)."""
        with trio.move_on_after(timeout):
            await self.stream.send(frame)
            answer = decode_frame(await self.stream.receive())
            return answer if isinstance(answer, Response | Refusal) else None
        return None

    async def close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self.stream.aclose()


class _Attacker(PeerBehaviour):
    """A client that runs its honest workload and, every ``every`` (mean, exponential),
    one attack; `attack` returns the answer it got (counted by code)."""

    roles = ("client",)
    honest = False
    adversary = True

    def __init__(self, *, every: object = "30s", **rest: Any) -> None:
        super().__init__(**rest)
        self.every = parse_duration(every, "every")
        if self.every <= 0:
            raise ValueError("every must be > 0")

    async def run(self) -> None:
        sim = self.sim
        for _ in range(10_000_000):  # bounded by the workload's end
            await sim.sleep(self.rng.expovariate(1.0 / self.every))
            if sim.workload_over:
                return
            try:
                await self.attack()
            except StoreFailed:
                raise  # the node's store failed: a crash of the run, not a failed attack
            except (P2payError, trio.TooSlowError) as exc:  # a NetError too
                self.stats[f"attack_failed:{type(exc).__name__}"] += 1

    async def attack(self) -> None:
        raise NotImplementedError

    def _targets(self) -> list[tuple[SimPeer, bytes]]:
        return [(t, ch) for t, ch in self.peer.channels if t.is_up]

    def _count(self, answer: Response | Refusal | None, what: str) -> None:
        if answer is None:
            self.stats[f"{what}:NO_ANSWER"] += 1
        elif isinstance(answer, Refusal):
            self.stats[f"{what}:{answer.code.value}"] += 1
        else:
            self.stats[f"{what}:{answer.status}"] += 1
            if answer.ok:
                self.stats["served_illegitimately"] += 1

    async def _send(self, target: SimPeer, frame: bytes, what: str) -> None:
        timeout = self.sim.wall(10.0)
        session = await RawSession.open(self.peer, target, timeout)
        try:
            self.stats[f"{what}_sent"] += 1
            self._count(await session.exchange(frame, timeout), what)
        finally:
            await session.close()


class Forger(_Attacker):
    """Sends requests it cannot sign for: on another client's channel to the same
    provider (signed with its own key: UNAUTHORIZED expected), and on its own channel
    signed by a throwaway key (INVALID_SIGNATURE expected)."""

    kind = "forger"

    async def attack(self) -> None:
        targets = self._targets()
        if not targets:
            return
        target, own = targets[self.rng.randrange(len(targets))]
        ledger = self.sim.ledger
        others = sorted(
            ch.id
            for ch in ledger.state.channels.values()
            if ch.payee == target.key.public and ch.payer != self.peer.key.public
        )
        victim = (
            others[self.rng.randrange(len(others))] if others and self.rng.random() < 0.5 else None
        )
        service, price = self.sim.any_service(target)
        deadline = self.sim.ledger_now_ms() + int(self.sim.wall(5.0) * 1000)
        body = self.rng.randbytes(16)
        if victim is not None:
            key, channel, what = self.peer.key, victim, "forged_other_channel"
        else:
            key = Keypair.from_seed(self.rng.randbytes(32))
            channel, what = own, "forged_signature"
        request = Request.create(
            key,
            ledger=ledger.ledger_id,
            channel=channel,
            n=10**9 + self.rng.randrange(10**6),
            paid=10**30,
            price=price,
            service=service,
            body=body,
            deadline=deadline,
        )
        await self._send(target, request.to_frame(), what)


class Replayer(_Attacker):
    """Re-sends captured request frames: its own, already answered (its stored answer
    again, nothing charged: protocol v2; REPLAY on nodes before it), and another
    client's, as an eavesdropper would have them (UNAUTHORIZED expected)."""

    kind = "replayer"

    async def attack(self) -> None:
        targets = self._targets()
        if not targets:
            return
        own = self.rng.random() < 0.5
        source = self.peer
        if not own:
            victims = [p for p in self.sim.clients if p is not self.peer]
            if victims:
                source = victims[self.rng.randrange(len(victims))]
        records = [r for r in await source.store.requests(state="answered") if r.frame]
        target_by_key = {t.key.public: t for t, _ in targets}
        records = [r for r in records if r.payee in target_by_key]
        if not records:
            return
        record = records[self.rng.randrange(len(records))]
        target = target_by_key[record.payee]
        if source is not self.peer:
            await self._send(target, record.frame, "replayed_other")
            return
        # Its own answered request sent again: under protocol v2 (claims.md C-4) the payee
        # re-sends the answer it stored, charging nothing again; anything else is a fault.
        timeout = self.sim.wall(10.0)
        session = await RawSession.open(self.peer, target, timeout)
        try:
            self.stats["replayed_own_sent"] += 1
            answer = await session.exchange(record.frame, timeout)
        finally:
            await session.close()
        if isinstance(answer, Response) and answer.ok:
            stored = await target.store.response(record.request_hash)
            if stored is not None and stored.frame == answer.to_frame():
                self.stats["replayed_own:STORED_ANSWER"] += 1
                return
        self._count(answer, "replayed_own")


class Overspender(_Attacker):
    """Opens an extra channel straight on the ledger with ``deposit`` and drives it with a
    `PayerChannel` that believes the deposit is ``factor`` times larger: it signs valid
    vouchers beyond its deposit. Requests within the deposit are paid and served;
    beyond it they must be refused (INSUFFICIENT_DEPOSIT)."""

    kind = "overspender"

    def __init__(self, *, deposit: object = "1 milli", factor: int = 10, every: object = "5s"):
        super().__init__(every=every)
        self.deposit = parse_amount_param(deposit, "deposit")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError("factor must be an int >= 2")
        self.factor = factor
        self.channel: PayerChannel | None = None
        self.target: SimPeer | None = None

    async def attack(self) -> None:
        sim, node = self.sim, self.peer.node
        assert node is not None
        if self.channel is None:
            targets = self._targets()
            if not targets:
                return
            self.target = targets[0][0]
            channel = await node.ledger.open_channel(
                node.key, self.target.key.public, self.deposit, node.config.challenge_ms
            )
            self.channel = PayerChannel(
                ledger=node.ledger.ledger_id,
                channel=channel,
                payer=node.account,
                payee=self.target.key.public,
                deposit=self.deposit * self.factor,  # the lie
            )
            self.stats["attack_channels"] += 1
        assert self.target is not None
        if not self.target.is_up:
            return
        ch = self.channel
        service, price = sim.any_service(self.target)
        try:
            request = ch.next_request(
                node.key,
                service=service,
                body=self.rng.randbytes(16),
                price=price,
                deadline=sim.ledger_now_ms() + int(sim.wall(5.0) * 1000),
            )
        except P2payError:
            self.stats["lie_exhausted"] += 1
            return
        beyond = request.paid > self.deposit
        what = "over_deposit" if beyond else "within_deposit"
        session = await RawSession.open(self.peer, self.target, sim.wall(10.0))
        try:
            self.stats[f"{what}_sent"] += 1
            answer = await session.exchange(request.to_frame(), sim.wall(10.0))
        finally:
            await session.close()
        if answer is None:
            ch.abandon(request.n)
            self.stats[f"{what}:NO_ANSWER"] += 1
            return
        if isinstance(answer, Refusal):
            ch.on_refusal(request.n)
            self.stats[f"{what}:{answer.code.value}"] += 1
            return
        receipt = ch.on_response(answer)
        self.stats[f"{what}:{answer.status}"] += 1
        if answer.ok:
            # service received outside the node: counted like the node's answers
            self.peer.delivered[request.hash] = (self.target.account, receipt.charged)
            if beyond:
                self.stats["served_illegitimately"] += 1


class StaleCloser(_Attacker):
    """Starts closing its channels while their payee is down, hoping it stays down past
    the challenge period (then the payee could not redeem what it earned). With ``at``,
    it starts closing every channel at that time regardless."""

    kind = "stale_closer"

    def __init__(self, *, at: object = None, every: object = "1s") -> None:
        super().__init__(every=every)
        self.at = None if at is None else parse_duration(at, "at")

    async def attack(self) -> None:
        node = self.peer.node
        assert node is not None
        now = self.sim.now()
        for target, channel in self.peer.channels:
            ch = node.payer_channels.get(channel)
            if ch is None or ch.status is not ChannelStatus.OPEN:
                continue
            if (self.at is not None and now >= self.at) or (self.at is None and not target.is_up):
                await node.close_channel(channel)
                self.stats["closes_started"] += 1
                if not target.is_up:
                    self.stats["closes_while_payee_down"] += 1


class FalseClaimer(_Attacker):
    """Files claims for requests that were answered (it holds their receipts), hoping the
    provider cannot prove it; each costs it a claim bond when the provider answers."""

    kind = "false_claimer"

    def __init__(self, *, every: object = "60s", max_claims: int = 1000) -> None:
        super().__init__(every=every)
        if isinstance(max_claims, bool) or not isinstance(max_claims, int) or max_claims < 0:
            raise ValueError("max_claims must be an int >= 0")
        self.max_claims = max_claims
        self.claimed: set[bytes] = set()

    async def attack(self) -> None:
        if self.stats["false_claims_filed"] >= self.max_claims:
            return
        sim = self.sim
        ledger = sim.ledger
        now = await ledger.now()
        candidates = []
        for record in await self.peer.store.requests(state="answered"):
            if not record.frame or record.request_hash in self.claimed:
                continue
            stake = ledger.state.stakes.get(record.payee)
            if stake is None or stake.amount == 0:
                continue
            if record.deadline < now <= record.deadline + stake.claim_window_ms // 2:
                candidates.append(record)
        if not candidates:
            return
        record = candidates[self.rng.randrange(len(candidates))]
        request = decode_frame(record.frame)
        assert isinstance(request, Request)
        self.claimed.add(record.request_hash)
        try:
            await ledger.file_claim(self.peer.key, request)
        except SettlementError as exc:
            self.stats[f"false_claim_refused:{exc.code.value}"] += 1
            return
        self.stats["false_claims_filed"] += 1


# ---------------------------------------------------------------------------
# the behaviours of this module, registered under their ``kind`` by `p2pay.sim.registry`

BUILTIN: tuple[type[PeerBehaviour], ...] = (
    Honest,
    Offline,
    Crasher,
    Dropper,
    Slow,
    Forger,
    Replayer,
    Overspender,
    StaleCloser,
    FalseClaimer,
)
