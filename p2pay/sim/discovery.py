"""Discovery in the simulator: providers announce signed offers, clients find them by
service name and pay through the node's `call_any` (specs/discovery.md, issue 17).

Theory of operation
-------------------
When a client group of a scenario has ``discovery = true``, the engine gives every peer's
node the in-memory discovery net (`p2pay.net.memory_discovery`): providers announce their
offers on it as the node does on libp2p, and discovery clients open no channel at setup:
each request of their workload is a ``node.call_any(service, ...)``, so the offers they
trust, the provider they choose, the failover to the next offer and the channel opened
under the deposit policy are the node's own code (`p2pay.core.offers`), not the
simulator's.

This module holds what the simulator adds around that code:

* `FakeOffers`, a provider behaviour that publishes offers that lie: without stake
  (``lie = "no_stake"``), with a stake it does not have (``"unbacked_stake"``), or with a
  price below the one it charges (``"underpriced"``). Its node serves honestly at its real
  price and does not announce anything itself: the behaviour publishes the lying offers
  in its place, on the same topic, and answers direct offer fetches with them.
* `DiscoveryRecord`, what the engine records of every `call_any`: the offers each one
  tried and how each try ended, per provider, the failovers, and the OK answers per
  provider group over time (the report's ``discovery`` section and ``discovery.png``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from p2pay.core.messages import StakeTerms
from p2pay.core.offers import Offer
from p2pay.sim.behaviours import PeerBehaviour
from p2pay.sim.invariants import MAX_DETAILS
from p2pay.sim.params import parse_amount_param

if TYPE_CHECKING:
    from p2pay.sim.engine import SimPeer

__all__ = ["LIES", "DiscoveryRecord", "FakeOffers"]

#: the lies a `FakeOffers` provider can tell in its offers
LIES = ("no_stake", "unbacked_stake", "underpriced")
#: lies that no client may ever act on: an offer without stake is ignored (O4) and one
#: whose stake the ledger does not back is a lie seen before the offer is verified (O3)
NEVER_TRIED = frozenset({"no_stake", "unbacked_stake"})


class FakeOffers(PeerBehaviour):
    """Provider that announces offers that lie (its node serves honestly, at its real
    price). ``lie``: ``"no_stake"`` (stake amount 0), ``"unbacked_stake"`` (claims
    ``stake``, default 5 token, whatever the ledger holds for it), ``"underpriced"`` (its
    genuine stake, and its price divided by ``price_factor``, default 10)."""

    kind = "fake_offers"
    roles = ("provider",)
    honest = False
    adversary = True
    #: the engine does not let its node announce offers: this behaviour publishes its own
    announces_offers: ClassVar[bool] = False

    def __init__(
        self, *, lie: str = "no_stake", stake: object = "5 token", price_factor: int = 10
    ) -> None:
        super().__init__()
        if lie not in LIES:
            raise ValueError(f"lie must be one of {', '.join(LIES)}")
        self.lie = lie
        self.claimed_stake = parse_amount_param(stake, "stake")
        if self.claimed_stake <= 0:
            raise ValueError("stake must be > 0")
        if isinstance(price_factor, bool) or not isinstance(price_factor, int) or price_factor < 2:
            raise ValueError("price_factor must be an int >= 2")
        self.price_factor = price_factor
        self.seq = 0

    async def run(self) -> None:
        """Publish the lying offers every announce interval (with a new seq) and answer
        direct fetches with them, on the peer's own discovery net (``peer.discovery``),
        while the node is up."""
        sim, peer = self.sim, self.peer
        net = peer.discovery
        if net is None:  # the scenario has no discovery clients: nobody to lie to
            return
        ledger = sim.ledger.ledger_id
        current: dict[str, bytes] = {}
        net.serve_offers(lambda led, service: [current[service]] if service in current else [])
        interval = sim.scenario.discovery.announce_interval_s
        for _ in range(10_000_000):  # bounded by the end of the run
            for name in sorted(peer.prices):
                data = (await self.offer(name, lifetime_s=3 * interval)).encode()
                current[name] = data
                await net.publish(ledger, data)
                await net.provide(ledger, name)
                self.stats["fake_offers_published"] += 1
            await sim.sleep(interval)

    async def offer(self, service: str, *, lifetime_s: float) -> Offer:
        """The next lying offer of `service` (a new seq each time)."""
        sim, peer = self.sim, self.peer
        node = peer.node
        assert node is not None and peer.group.provider is not None
        window = max(1, int(peer.group.provider.claim_window_ms * sim.scale))
        price = peer.prices[service]
        if self.lie == "no_stake":
            stake = StakeTerms(amount=0, penalty=0, claim_window_ms=window)
        elif self.lie == "unbacked_stake":
            stake = StakeTerms(
                amount=self.claimed_stake,
                penalty=max(1, self.claimed_stake // 10),
                claim_window_ms=window,
            )
        else:  # underpriced: its genuine stake, a lower price
            held = await sim.ledger.stake_of(peer.account)
            if held is None or held.amount == 0:
                raise ValueError("an under-priced fake provider needs a stake (set `stake`)")
            stake = StakeTerms(
                amount=held.amount, penalty=held.penalty, claim_window_ms=held.claim_window_ms
            )
            price = max(1, price // self.price_factor)
        self.seq += 1
        return Offer.create(
            node.key,
            ledger=sim.ledger.ledger_id,
            service=service,
            price=price,
            max_body=node.services[service].max_body,
            stake=stake,
            addrs=[peer.addr],
            seq=self.seq,
            expires=sim.ledger_now_ms() + int(sim.wall(lifetime_s) * 1000),
        )


#: how a try at a provider ended, when it is the provider's failure (specs/discovery.md 8:
#: unreachable, refused, timed out; the node's `Attempt` outcomes, upper-cased)
FAILED = frozenset({"UNREACHABLE", "REFUSED", "TIMED_OUT"})


@dataclass
class DiscoveryRecord:
    """What the engine saw of the discovery clients' `call_any` calls."""

    calls: int = 0
    ok: int = 0
    failovers: int = 0  # calls that tried another offer after a try that failed or lied
    answered_after_failover: int = 0
    lies: int = 0  # tries that caught the provider lying (hello or price vs its offer)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    tries: collections.Counter[str] = field(default_factory=collections.Counter)  # per peer
    answers: collections.Counter[str] = field(default_factory=collections.Counter)  # per peer
    # (peer, how the try ended) for every try that did not answer
    failed_tries: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # "<how>:<error code>" for every try that did not answer (why it failed)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    group_answers: collections.Counter[str] = field(default_factory=collections.Counter)
    # (simulated time its call started, client, provider) of every try that failed (FAILED)
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    # tries at a provider whose offers lie about its stake (must stay 0)
    fake_tried: int = 0
    fake_tried_details: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self,
        client: SimPeer,
        tries: list[tuple[SimPeer | None, str, str]],
        *,
        outcome: str,
        start: float,
    ) -> None:
        """One `call_any` that started at simulated time `start`: the offers it tried in
        order, each with how the try ended ("OK" or the node's attempt outcome in upper
        case: UNREACHABLE, REFUSED, TIMED_OUT, LIED, SKIPPED) and its error code, and the
        call's outcome ("OK" or an error code)."""
        self.calls += 1
        self.outcomes[outcome] += 1
        if outcome == "OK":
            self.ok += 1
        failed_before = False
        for provider, how, code in tries:
            name = provider.name if provider is not None else "<not a simulated peer>"
            self.tries[name] += 1
            if provider is not None and getattr(provider.behaviour, "lie", None) in NEVER_TRIED:
                self.fake_tried += 1
                if len(self.fake_tried_details) < MAX_DETAILS:
                    self.fake_tried_details.append(
                        {"t": round(start, 3), "client": client.name, "provider": name}
                    )
            if how == "OK":
                self.answers[name] += 1
                if provider is not None:
                    self.group_answers[provider.group.group] += 1
                if failed_before:
                    self.answered_after_failover += 1
                continue
            self.failed_tries[(name, how)] += 1
            self.codes[f"{how}:{code}"] += 1
            if how == "LIED":
                self.lies += 1
            if how in FAILED:
                self.failures.append((start, client.name, name))
            failed_before = True
        if any(how != "OK" for _, how, _ in tries[:-1]):
            self.failovers += 1
