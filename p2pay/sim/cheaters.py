"""The cheaters of specs/claims.md, one behaviour each (simulations/README.md "Cheaters").

Theory of operation
-------------------
Each class plays one strategy of the claim game (claims.md section 4) against honest
peers, using only what such a peer really has: its own key, its node, its store and
the ledger. None of them changes the node; providers act through the node's hooks
(`drop`, `before_handler`, ``answers_claims``), the engine's answer filter
(`PeerBehaviour.answer_filter`: what the node sends on its inbound streams), and direct
ledger operations signed with their own key; clients act through the ledger and
requests they sign themselves.

* `BondHarvester` (provider): takes a fraction of paid requests, never answers them,
  redeems their prices anyway (its own redeems, beyond what the node charged), and
  answers the claims they cause with a signed refusal (``HANDLER_ERROR`` or
  ``OVERLOADED``), hoping to keep the price and win the bond.
* `FakeReplay` (provider): serves and charges, then sends an unsigned REPLAY refusal
  with its genuine resync data instead of the signed answer (also when the same request
  is sent again), hoping the payer forgets the request.
* `LateAnswer` (provider): lets a fraction of handlers finish after the request's
  deadline, hoping to charge the late answer.
* `ClaimFlooder` (client): files bursts of claims against an honest (slow) provider:
  on requests it was answered, on made-up requests on a channel of its own, and on
  made-up requests reusing a number (a tiling conflict).
* `UnbondingClaimer` (client) with `Unbonding` (an honest provider that requests
  unstake, stays until its unbonding ends, then closes its channels, withdraws and
  leaves): files claims on made-up requests dated just before ``unbonding_at``.
* `FastCloser` (client): opens its channels with a very short challenge period, spends,
  starts closing and finalizes as early as the ledger allows.

Every decision that could depend on task order is a hash of the seed and the request
(`_fraction`), so runs stay reproducible.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from p2pay.core.channel import ChannelStatus
from p2pay.core.errors import ErrorCode, P2payError, SettlementError
from p2pay.core.messages import (
    Refusal,
    Request,
    Response,
    decode_frame,
    decode_held_frame,
    refusal_body,
)
from p2pay.ledger.base import claims_one_by_one
from p2pay.node import Call
from p2pay.persist import StoreFailed
from p2pay.sim.behaviours import DownPeriod, PeerBehaviour, _Attacker, _fraction
from p2pay.sim.params import parse_amount_param, parse_duration, parse_rate

if TYPE_CHECKING:
    from p2pay.core.settlement import Channel, Claim, Stake
    from p2pay.sim.engine import SimPeer

log = logging.getLogger("p2pay.sim")

__all__ = [
    "CHEATERS",
    "BondHarvester",
    "ClaimFlooder",
    "FakeReplay",
    "FastCloser",
    "LateAnswer",
    "Unbonding",
    "UnbondingClaimer",
]


def _state(entity: Claim | Channel) -> str:
    return str(getattr(entity.state, "value", entity.state))


def _count_refusal(stats: collections.Counter[str], what: str, exc: SettlementError) -> None:
    stats[f"{what}_refused:{exc.code.value}"] += 1


# ---------------------------------------------------------------------------
# providers


class BondHarvester(PeerBehaviour):
    """Charges a fraction ``rate`` of paid requests, withholds their answers and answers
    the resulting claims with a signed refusal (``status``: HANDLER_ERROR or OVERLOADED).

    Its own task (every ``every``) redeems what the node charged plus the withheld
    prices, and answers every open claim against it: with the stored answer when there
    is one (requests it served), else with the refusal. The node's watcher does not
    answer claims for it (``answers_claims = False``)."""

    kind = "bond_harvester"
    roles = ("provider",)
    honest = False
    adversary = True
    answers_claims = False

    def __init__(self, *, rate: float = 0.3, status: str = "HANDLER_ERROR", every: object = "2s"):
        super().__init__()
        self.rate = parse_rate(rate, "rate")
        if status not in (ErrorCode.HANDLER_ERROR.value, ErrorCode.OVERLOADED.value):
            raise ValueError("status must be HANDLER_ERROR or OVERLOADED")
        self.status = status
        self.every = parse_duration(every, "every")
        if self.every <= 0:
            raise ValueError("every must be > 0")
        self.withheld: collections.Counter[bytes] = collections.Counter()  # channel -> yocto
        self.answered: set[bytes] = set()

    def drop(self, call: Call) -> bool:
        if _fraction(self.sim.scenario.seed, self.peer.index, call.channel, call.n) >= self.rate:
            return False
        self.withheld[call.channel] += call.price
        self.stats["withheld"] += 1
        self.stats["withheld_charged"] += call.price
        return True

    async def run(self) -> None:
        for _ in range(10_000_000):  # bounded by the end of the run
            await self.sim.sleep(self.every)
            await self.harvest()

    async def harvest(self) -> None:
        node = self.peer.node
        if node is None:
            return
        for channel in sorted(self.withheld):
            ch = node.payee_channels.get(channel)
            if ch is None or ch.status is ChannelStatus.CLOSED:
                continue
            voucher = ch.verified_voucher()
            if voucher is None:
                continue
            target = min(voucher.paid, ch.spent + self.withheld[channel])
            info = await node.ledger.channel(channel)
            if info is None or target <= info.redeemed:
                continue
            try:
                taken = await node.ledger.redeem(node.key, voucher, target)
            except SettlementError as exc:
                _count_refusal(self.stats, "redeem", exc)
                continue
            self.stats["redeemed_by_harvester"] += taken
            await node.refresh_channel(channel)
        async for claim in claims_one_by_one(node.ledger, node.account, "respondent"):
            if _state(claim) != "open":
                continue
            if claim.id in self.answered:
                continue
            response = await self._answer_for(claim)
            if response is None:
                continue
            self.answered.add(claim.id)
            try:
                await node.ledger.answer_claim(node.key, claim.id, response)
            except SettlementError as exc:
                _count_refusal(self.stats, "answer", exc)
                continue
            self.stats["claims_answered_ok" if response.ok else "claims_answered_refusal"] += 1

    async def _answer_for(self, claim: Claim) -> Response | None:
        node = self.peer.node
        assert node is not None
        stored = await node.store.response(claim.id)
        if stored is not None:
            frame = decode_frame(stored.frame)
            if isinstance(frame, Response):
                return frame
        try:
            request = decode_held_frame(claim.request_frame)
        except P2payError:
            return None
        if not isinstance(request, Request):
            return None
        ch = node.payee_channels.get(request.channel)
        return Response.create(
            node.signer,
            request=request,
            status=self.status,
            price=0,
            spent=ch.spent if ch is not None else 0,
            body=refusal_body("handler failed"),
        )

    async def settle(self) -> None:
        """Close every channel, redeeming the withheld prices too."""
        node = self.peer.node
        if node is None:
            return
        for channel in sorted(node.payee_channels):
            ch = node.payee_channels[channel]
            if ch.status is ChannelStatus.CLOSED:
                continue
            voucher = ch.verified_voucher()
            amount = ch.spent + self.withheld[channel] if voucher is not None else None
            try:
                await node.ledger.payee_close(node.key, channel, voucher, amount)
            except SettlementError as exc:
                _count_refusal(self.stats, "close", exc)
                continue
            ch.status = ChannelStatus.CLOSED


class FakeReplay(PeerBehaviour):
    """Serves and charges a fraction ``rate`` of requests like an honest provider, then
    sends an unsigned REPLAY refusal carrying its genuine resync data (``last_n``,
    ``spent``, ``paid_max``, its best voucher) instead of the signed answer; a request
    sent again gets the same (its stored answer is replaced again). Its watcher answers
    claims honestly (``answers_claims``, default true): the stored answer then reaches
    the payer through the ledger."""

    kind = "fake_replay"
    roles = ("provider",)
    honest = False
    adversary = True
    filters_answers = True

    def __init__(self, *, rate: float = 0.3, answers_claims: bool = True) -> None:
        super().__init__()
        self.rate = parse_rate(rate, "rate")
        self.answers_claims = bool(answers_claims)

    def answer_filter(self, frame: bytes) -> bytes | None:
        try:
            message = decode_frame(frame)
        except P2payError:
            return frame
        if not isinstance(message, Response) or not message.ok:
            return frame
        key = (self.sim.scenario.seed, self.peer.index, message.channel, message.n)
        if _fraction(*key) >= self.rate:
            return frame
        node = self.peer.node
        ch = node.payee_channels.get(message.channel) if node is not None else None
        if ch is None:
            return frame
        self.stats["fake_replays"] += 1
        self.stats["fake_replayed_charged"] += message.price
        return Refusal(
            channel=message.channel,
            n=message.n,
            code=ErrorCode.REPLAY,
            message=f"request number {message.n} is not above {ch.last_n}",
            details=ch.resync_details(),
        ).to_frame()


class LateAnswer(PeerBehaviour):
    """Lets a fraction ``rate`` of handlers finish ``after`` past the request's deadline
    (the caller has given up), hoping to charge the late answer."""

    kind = "late_answer"
    roles = ("provider",)
    honest = False
    adversary = True

    def __init__(self, *, rate: float = 0.3, after: object = "1s") -> None:
        super().__init__()
        self.rate = parse_rate(rate, "rate")
        self.after = parse_duration(after, "after")

    async def before_handler(self, call: Call) -> None:
        if _fraction(self.sim.scenario.seed, self.peer.index, call.channel, call.n) >= self.rate:
            return
        self.stats["late"] += 1
        self.stats["late_prices"] += call.price
        wait_ms = call.deadline - self.sim.ledger_now_ms()
        await self.sim.sleep(max(0.0, wait_ms / 1000) + self.after)


class Unbonding(PeerBehaviour):
    """Honest provider that requests unstake at ``unstake_at``, keeps serving and
    answering until its unbonding ends (``unbonding_at``: every legitimate claim is
    over), then, ``margin`` later, closes its channels, withdraws its stake (if it can)
    and leaves for good (its node stops)."""

    kind = "unbonding"
    roles = ("provider",)

    def __init__(self, *, unstake_at: object = "30s", margin: object = "2s") -> None:
        super().__init__()
        self.unstake_at = parse_duration(unstake_at, "unstake_at")
        self.margin = parse_duration(margin, "margin")
        if self.margin <= 0:
            raise ValueError("margin must be > 0")

    def leave_at(self) -> float:
        """Simulated second it leaves: unstake + horizon + 2 claim windows + margin."""
        spec = self.peer.group.provider
        assert spec is not None
        period_ms = self.sim.scenario.ledger.max_deadline_horizon_ms + 2 * spec.claim_window_ms
        return self.unstake_at + period_ms / 1000 + self.margin

    def down_periods(self, duration_s: float) -> list[DownPeriod]:
        # gone from leave_at to well past the end of the run
        return [DownPeriod(self.leave_at(), self.sim.end_s + 10**6, "down")]

    async def run(self) -> None:
        node = self.peer.node
        assert node is not None
        if self.sim.now() < self.unstake_at:
            await self.sim.sleep_until(self.unstake_at)
            try:
                await node.ledger.request_unstake(node.key)
                self.stats["unstake_requested"] += 1
            except SettlementError as exc:
                _count_refusal(self.stats, "unstake", exc)
        leave = self.leave_at()
        if self.sim.now() >= leave - self.margin / 2:
            return
        await self.sim.sleep_until(leave - self.margin / 2)
        await super().settle()  # close every channel, redeeming what was charged
        try:
            await node.ledger.withdraw_stake(node.key)
            self.stats["stake_withdrawn"] += 1
        except SettlementError as exc:
            _count_refusal(self.stats, "withdraw", exc)


# ---------------------------------------------------------------------------
# clients


class _SideChannel:
    """A channel a cheating client opens straight on the ledger (its node does not use
    it) and signs made-up requests on: fresh numbers and fresh slices of the paid line."""

    def __init__(self, behaviour: PeerBehaviour, target: SimPeer, deposit: int) -> None:
        self.behaviour = behaviour
        self.target = target
        self.deposit = deposit
        self.channel = b""
        self.n = 0
        self.paid = 0
        self.made: dict[int, Request] = {}

    async def open(self) -> None:
        node = self.behaviour.peer.node
        assert node is not None
        self.channel = await node.ledger.open_channel(
            node.key, self.target.account, self.deposit, node.config.challenge_ms
        )
        self.behaviour.stats["side_channels"] += 1

    def made_up(self, *, deadline: int, n: int | None = None) -> Request | None:
        """A payer-signed request never sent; with `n`, one reusing that number."""
        sim = self.behaviour.sim
        node = self.behaviour.peer.node
        assert node is not None
        service, price = sim.any_service(self.target)
        if n is None:
            if self.paid + price > self.deposit:
                return None
            self.n += 1
            self.paid += price
            n, paid = self.n, self.paid
        else:
            paid = self.made[n].paid
        request = Request.create(
            node.signer,
            ledger=node.ledger.ledger_id,
            channel=self.channel,
            n=n,
            paid=paid,
            price=price,
            service=service,
            body=self.behaviour.rng.randbytes(16),
            deadline=deadline,
        )
        self.made.setdefault(n, request)
        return request


async def _file(behaviour: PeerBehaviour, request: Request, what: str) -> bool:
    node = behaviour.peer.node
    assert node is not None
    try:
        await node.ledger.file_claim(node.key, request)
    except SettlementError as exc:
        _count_refusal(behaviour.stats, f"claim_{what}", exc)
        return False
    behaviour.stats[f"claims_{what}"] += 1
    behaviour.stats["false_claims_filed"] += 1
    return True


class ClaimFlooder(_Attacker):
    """Every ``every`` (mean), files a burst of claims against a staked provider it has a
    channel to: ``answered`` claims on requests it was answered, ``made_up`` claims on
    never-sent requests (fresh numbers and slices of a side channel of ``deposit``), and
    ``conflicting`` ones reusing a made-up request's number with another body (a tiling
    conflict with a request the provider has seen in an earlier claim)."""

    kind = "claim_flooder"

    def __init__(
        self,
        *,
        every: object = "60s",
        answered: int = 5,
        made_up: int = 20,
        conflicting: int = 2,
        deposit: object = "10 milli",
        max_bursts: int = 3,
    ) -> None:
        super().__init__(every=every)
        for name, value in (
            ("answered", answered),
            ("made_up", made_up),
            ("conflicting", conflicting),
            ("max_bursts", max_bursts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0")
        self.answered, self.made_up, self.conflicting = answered, made_up, conflicting
        self.max_bursts = max_bursts
        self.deposit = parse_amount_param(deposit, "deposit")
        self.side: _SideChannel | None = None
        self.claimed: set[bytes] = set()

    async def attack(self) -> None:
        if self.stats["bursts"] >= self.max_bursts:
            return
        node = self.peer.node
        assert node is not None
        ledger = node.ledger
        targets = [
            t for t, _ in self.peer.channels if (await ledger.stake_of(t.account)) is not None
        ]
        if not targets:
            return
        target = targets[0]
        stake = await ledger.stake_of(target.account)
        assert stake is not None
        self.stats["bursts"] += 1
        now = await ledger.now()
        # 1. requests it was answered, still within their claim window
        records = [
            r
            for r in await self.peer.store.requests(state="answered")
            if r.payee == target.account
            and r.frame
            and r.request_hash not in self.claimed
            and r.deadline < now <= r.deadline + stake.claim_window_ms // 2
        ]
        for record in records[: self.answered]:
            answered = decode_frame(record.frame)
            assert isinstance(answered, Request)
            self.claimed.add(record.request_hash)
            await _file(self, answered, "answered")
        # 2. made-up requests: fresh numbers and slices, deadline just passed
        if self.side is None:
            self.side = _SideChannel(self, target, self.deposit)
            await self.side.open()
        side = self.side
        if side.target is not target:
            return
        first = side.n + 1
        for _ in range(self.made_up):
            request = side.made_up(deadline=now - 1)
            if request is None:
                self.stats["side_channel_exhausted"] += 1
                break
            await _file(self, request, "made_up")
        # 3. a number reused with another body (the provider saw the first in a claim)
        for n in range(first, min(first + self.conflicting, side.n + 1)):
            request = side.made_up(deadline=now - 1, n=n)
            if request is not None:
                await _file(self, request, "conflicting")


class UnbondingClaimer(_Attacker):
    """Waits for a provider it has a channel to to request unstake, then files claims on
    made-up requests (a side channel of ``deposit``) dated just before ``unbonding_at``:
    one every ``every`` from ``before`` ahead of ``unbonding_at`` to ``after`` past it
    (each dated 1 ms before it is filed, at most ``unbonding_at - 1``). With ``control``,
    also one made-up claim dated before ``unstake_requested_at + horizon`` (a request the
    provider could have accepted under its bonded terms: claims.md C-9 allows it)."""

    kind = "unbonding_claimer"

    def __init__(
        self,
        *,
        every: object = "1s",
        before: object = "10s",
        after: object = "10s",
        deposit: object = "10 milli",
        control: bool = True,
    ) -> None:
        super().__init__(every=every)
        self.before = parse_duration(before, "before")
        self.after = parse_duration(after, "after")
        self.deposit = parse_amount_param(deposit, "deposit")
        self.control = bool(control)
        self.done = False

    async def run(self) -> None:
        sim = self.sim
        node = self.peer.node
        assert node is not None
        if self.done:
            return
        ledger = node.ledger
        horizon = ledger.params.max_deadline_horizon_ms
        for _ in range(100_000):  # wait for an unbonding target (bounded by the run)
            for target, _channel in self.peer.channels:
                stake = await ledger.stake_of(target.account)
                if stake is not None and stake.unbonding_at > 0:
                    await self._attack(target, stake, horizon)
                    return
            if sim.workload_over:
                return
            await sim.sleep(self.every)

    async def _attack(self, target: SimPeer, stake: Stake, horizon: int) -> None:
        self.done = True
        sim = self.sim
        node = self.peer.node
        assert node is not None
        requested = int(getattr(stake, "unstake_requested_at", 0)) or (
            stake.unbonding_at - horizon - 2 * stake.claim_window_ms
        )
        side = _SideChannel(self, target, self.deposit)
        await side.open()
        if self.control:
            deadline = requested + horizon - 5_000
            await self._sleep_past(deadline)
            request = side.made_up(deadline=deadline)
            if request is not None:
                await _file(self, request, "control")
        start = stake.unbonding_at - int(self.before * 1000)
        end = stake.unbonding_at + int(self.after * 1000)
        step = max(1, int(self.every * 1000))
        for at in range(start, end + 1, step):
            await self._sleep_past(at)
            deadline = min(sim.ledger_now_ms() - 1, stake.unbonding_at - 1)
            request = side.made_up(deadline=deadline)
            if request is None:
                self.stats["side_channel_exhausted"] += 1
                return
            await _file(self, request, "after_unbonding_began")

    async def _sleep_past(self, ledger_ms: int) -> None:
        wait = (ledger_ms + 1 - self.sim.ledger_now_ms()) / 1000
        if wait > 0:
            await self.sim.sleep(wait)


class FastCloser(_Attacker):
    """Opens its channels with a ``challenge`` period far below the usual (the ledger
    allows it), spends on them, starts closing them all at ``at`` and finalizes each
    as soon as the ledger allows, hoping the payee has not redeemed by then."""

    kind = "fast_closer"

    def __init__(self, *, challenge: object = "1s", at: object = "60s") -> None:
        super().__init__(every="1s")
        self.challenge = parse_duration(challenge, "challenge")
        if self.challenge <= 0:
            raise ValueError("challenge must be > 0")
        self.at = parse_duration(at, "at")
        self.closed = False

    def channel_challenge_ms(self, default_ms: int) -> int:
        return max(1, int(self.challenge * 1000 * self.sim.scale))

    async def run(self) -> None:
        sim = self.sim
        node = self.peer.node
        assert node is not None
        if self.closed or sim.now() >= sim.scenario.duration_s:
            return
        await sim.sleep_until(self.at)
        self.closed = True
        closing = []
        for _target, channel in self.peer.channels:
            ch = node.payer_channels.get(channel)
            if ch is None or ch.status is not ChannelStatus.OPEN:
                continue
            try:
                await node.close_channel(channel)
            except StoreFailed:
                raise  # the node's store failed: a crash of the run, not a refused close
            except P2payError as exc:  # a SettlementError, a ChainError...
                self.stats[f"close_refused:{exc.code.value}"] += 1
                continue
            self.stats["closes_started"] += 1
            closing.append(channel)
        for channel in closing:
            info = await node.ledger.channel(channel)
            if info is None or _state(info) != "closing":
                continue
            wait = (info.closes_at - sim.ledger_now_ms()) / 1000
            if wait > 0:
                await sim.sleep(wait)
            try:
                await node.ledger.finalize_close(node.key, channel)
            except SettlementError as exc:
                _count_refusal(self.stats, "finalize", exc)
                continue
            self.stats["finalized"] += 1
            info = await node.ledger.channel(channel)
            if info is not None and info.redeemed == 0:
                self.stats["finalized_unredeemed"] += 1
            await node.refresh_channel(channel)


# the cheaters, registered under their ``kind`` by `p2pay.sim.registry`
CHEATERS: tuple[type[PeerBehaviour], ...] = (
    BondHarvester,
    FakeReplay,
    LateAnswer,
    Unbonding,
    ClaimFlooder,
    UnbondingClaimer,
    FastCloser,
)
