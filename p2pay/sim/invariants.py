"""Invariants every simulation checks, during the run and after it.

Theory of operation
-------------------
Each invariant has a name, a one-line definition (copied into the report) and a result:
how many times it was checked and the violations found (the first 20 in detail, all
counted). Periodic checks run every ``check_every`` of simulated time; final checks run
after every node has stopped, on the ledger state and the peers' stores.

Definitions (the report carries them too; simulations/README.md "Invariants" explains the
money formula):

* ``conservation``: ``supply == balances + escrow + stakes + bonds + burnt`` on the ledger
  (`Totals.conserved`), periodically and at the end.
* ``honest_providers_never_slashed``: no claim against a provider whose behaviour is
  honest (honest, offline, crasher, slow, unbonding) is upheld (claims.md C-1).
  Periodically and at the end. (A provider that stays down longer than its claim window
  could legitimately be slashed: scenarios keep outages shorter.)
* ``honest_providers_never_clawed``: no refund is ever taken from an honest provider's
  stake (claims.md C-2: ``Claim.clawed`` is 0 on every claim against it). Periodic + final.
* ``refunds_never_touch_earnings`` (final, ledgers with ``Channel.paid_seen``): on every
  channel of an honest payee, ``max(paid_seen, its best voucher's paid) - refunded >=
  charged`` (claims.md C-2).
* ``honest_clients_pay_only_for_answers``: for every honest client,
  ``sum over its channels of (redeemed - clawed) <= value of the answers it got``: every
  paid request is answered or refunded. The value of the answers is the sum, over the
  distinct requests it signed, of the price charged for an OK answer it got: on time (the
  call returned OK), after the call gave up (its node accepted the signed OK receipt
  later, on the stream or by the watcher's re-delivery before claiming, claims.md 6: the
  payee served it before the deadline, C-4, and the node holds the answer a claim would
  give) or through a claim (an OK response on the ledger). An answer finished after the
  deadline is a signed DEADLINE_EXCEEDED, charged nothing (C-4): not an answer. At the end.
* ``honest_providers_paid_in_full`` (when the scenario settles): every honest provider
  redeemed at least what it charged.
* ``adversaries_gain_nothing``: for every adversary, ``gain = change of holdings +
  value received - value provided - compensation <= 0``. Holdings are balance + escrow
  of the channels it pays + stake + bonds of its open claims; value received and value
  provided are the values of answers (as above) it got as a payer and gave as a payee
  (a behaviour records answers it gets off its node, e.g. the overspender's, in
  ``peer.delivered``); compensation is its
  share of slashes for claims its node filed on requests it sent and never got an
  answer to (a real failure: an honest twin gets the same). An honest twin running the
  same workload pays exactly for the answers it gets: its gain is 0. A positive gain is
  money an adversary got out of the protocol.
* ``adversarial_requests_never_served``: no forged, replayed or over-deposit request
  got an OK answer (behaviours count ``served_illegitimately``).
* ``no_crashes``: no exception escaped a node call or a behaviour hook.
* ``fake_offers_never_chosen`` (scenarios with discovery clients): no ``call_any`` tries
  a provider whose offers have no stake or a stake the ledger does not back (such an
  offer is ignored, or is a lie seen before the offer is trusted), and no channel is
  ever opened to a provider whose offers lie, an under-priced one included (its lie is
  seen in its hello, before any channel or payment). Periodically and at the end.
* ``failing_providers_lose_their_clients`` (scenarios with discovery clients and
  providers with down periods): per discovery client and failing provider, the tries at
  it that started in one of its down periods and failed are at most
  ``MAX_CONSECUTIVE_FAILURES`` (3) per started ``FAILURE_SKIP_MS`` (5 min) of the period:
  after 3 consecutive failures a client skips the provider for 5 minutes (specs/discovery.md 8),
  so a provider that stays down keeps only a few tries per client, and the calls go to
  the other offers (failovers). At the end.

Claim states are read by value (``"open"``, ``"answered"`` of the first claim rules;
``"delivered"``, ``"refused"``, ``"frivolous"``, ``"upheld"`` of specs/claims.md), and the
claim and channel fields of specs/claims.md (``refund``, ``clawed``, ``paid_seen``,
``refunded``) are read when the ledger has them, so the checks run on both rule sets.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from p2pay.core.errors import P2payError
from p2pay.core.messages import Response, decode_frame, decode_held_frame
from p2pay.core.offers import FAILURE_SKIP_MS, MAX_CONSECUTIVE_FAILURES
from p2pay.core.settlement import ChannelState, Claim, State

if TYPE_CHECKING:
    from p2pay.sim.engine import SimPeer, Simulation

__all__ = [
    "ANSWERED_STATES",
    "DEFINITIONS",
    "InvariantResult",
    "Invariants",
    "bond_to_respondent",
    "claim_state",
    "delivered_answers",
    "holdings_parts",
    "ok_response",
]

MAX_DETAILS = 20

#: Claim states in which the respondent answered (first rules: "answered"; claims.md:
#: "delivered", "refused", "frivolous").
ANSWERED_STATES = frozenset({"answered", "delivered", "refused", "frivolous"})

DEFINITIONS = {
    "conservation": "ledger supply == balances + escrow + stakes + bonds + burnt",
    "honest_providers_never_slashed": "no claim against an honest provider is upheld",
    "honest_providers_never_clawed": "no refund is ever clawed from an honest provider's stake",
    "refunds_never_touch_earnings": (
        "per channel of an honest payee: max(paid_seen, its voucher's paid) - refunded >= "
        "what it charged"
    ),
    "honest_clients_pay_only_for_answers": (
        "per honest client: sum over its channels of (redeemed - clawed) <= value of the "
        "answers it got (OK on time, OK receipt after the call gave up, or OK through a claim)"
    ),
    "honest_providers_paid_in_full": "per honest provider: redeemed >= charged (after settling)",
    "adversaries_gain_nothing": (
        "per adversary: change of holdings + value of answers received - value of answers "
        "provided - compensation for real failures <= 0 (an honest twin's is 0)"
    ),
    "adversarial_requests_never_served": "no forged, replayed or over-deposit request answered OK",
    "no_crashes": "no exception escaped a node call or a behaviour hook",
    "fake_offers_never_chosen": (
        "no call any tries an offer without stake or with a stake the ledger does not back, "
        "and no channel is opened to a provider whose offers lie"
    ),
    "failing_providers_lose_their_clients": (
        "per discovery client and failing provider: failed tries started while it is down "
        "<= 3 per started 5 minutes of the outage (a client skips a peer after 3 "
        "consecutive failures)"
    ),
}


def claim_state(claim: Claim) -> str:
    """A claim's state as text (whatever enum the ledger uses)."""
    return str(getattr(claim.state, "value", claim.state))


def bond_to_respondent(claim: Claim) -> bool:
    """Whether the claimant's bond went to the respondent: any answer under the first
    rules ("answered"), a FRIVOLOUS claim under specs/claims.md."""
    return claim_state(claim) in ("answered", "frivolous")


def ok_response(claim: Claim) -> Response | None:
    """The OK response a respondent posted to answer `claim`, if any."""
    if claim_state(claim) not in ANSWERED_STATES or not claim.response_frame:
        return None
    try:
        response = decode_held_frame(claim.response_frame)
    except P2payError:
        return None
    if isinstance(response, Response) and response.ok and response.body_matches():
        return response
    return None


async def delivered_answers(sim: Simulation) -> dict[bytes, tuple[bytes, bytes, int]]:
    """Every request that got an OK answer to its payer: request hash -> (payer, payee,
    price charged). A request answered more than one way counts once. The ways:

    * on time: the call returned OK (recorded by the engine in ``peer.delivered``);
    * after the call gave up: the payer's node accepted the payee's signed OK receipt
      later, the receipt arriving after the wait, or the watcher re-delivering the request
      before claiming it (specs/claims.md 6: it claims only if re-delivery fails). Its
      stored request is then ``answered``; the payee served it before the deadline (C-4:
      a late answer is a signed DEADLINE_EXCEEDED, nothing charged) and the payer's node
      holds the answer, exactly what a claim on it would give (DELIVERED, claims.md 4.2).
      Its price is the one in the payee's signed OK response, as the payee stored it
      (none stored: counted 0, never more than the receipt said);
    * through a claim: an OK response on the ledger (the claimant is the channel's payer).
    """
    out: dict[bytes, tuple[bytes, bytes, int]] = {}
    for peer in sim.peers:
        for request_hash, (payee, price) in peer.delivered.items():
            out[request_hash] = (peer.account, payee, price)
    for peer in sim.peers:
        for record in await peer.store.requests(state="answered"):
            if record.request_hash in out:
                continue
            charged = await _charged(sim, record.payee, record.request_hash)
            if charged is not None:
                out[record.request_hash] = (peer.account, record.payee, charged)
    for claim in sim.ledger.state.claims.values():
        if claim.id in out:
            continue
        response = ok_response(claim)
        if response is not None:
            out[claim.id] = (claim.claimant, claim.respondent, response.price)
    return out


async def _charged(sim: Simulation, payee: bytes, request_hash: bytes) -> int | None:
    """The price `payee` charged for `request_hash` in the signed OK response it stored,
    or None (not stored, not OK, or not that request's)."""
    peer = sim.peer_by_account(payee)
    if peer is None:
        return None
    stored = await peer.store.response(request_hash)
    if stored is None:
        return None
    try:
        response = decode_frame(stored.frame)
    except P2payError:
        return None
    if (
        isinstance(response, Response)
        and response.ok
        and response.request_hash == request_hash
        and response.body_matches()
    ):
        return response.price
    return None


def holdings_parts(state: State) -> dict[bytes, list[int]]:
    """Per account: [balance, escrow of channels it pays, stake, bonds of its open claims]."""
    parts: dict[bytes, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for account, balance in state.balances.items():
        parts[account][0] += balance
    for ch in state.channels.values():
        if ch.state is not ChannelState.CLOSED:
            parts[ch.payer][1] += ch.deposit - ch.redeemed
    for stake in state.stakes.values():
        parts[stake.account][2] += stake.amount
    for claim in state.claims.values():
        if claim_state(claim) == "open":
            parts[claim.claimant][3] += claim.bond
    return parts


@dataclass
class InvariantResult:
    name: str
    definition: str
    checks: int = 0
    violations: int = 0
    details: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def record(self, holds: bool, detail: dict[str, Any] | None = None) -> None:
        self.checks += 1
        if not holds:
            self.violations += 1
            if detail is not None and len(self.details) < MAX_DETAILS:
                self.details.append(detail)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "ok": self.ok,
            "definition": self.definition,
            "checks": self.checks,
            "violations": self.violations,
            "details": self.details,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        return out


class Invariants:
    """The invariant results of one simulation."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.results = {name: InvariantResult(name, text) for name, text in DEFINITIONS.items()}
        self.final: dict[str, Any] = {}

    def holdings_now(self) -> dict[bytes, int]:
        return {a: sum(p) for a, p in holdings_parts(self.sim.ledger.state).items()}

    def _honest_providers(self) -> set[bytes]:
        return {p.account for p in self.sim.providers if p.behaviour.honest}

    async def check_periodic(self, t: float) -> None:
        sim = self.sim
        totals = await sim.ledger.totals()
        self.results["conservation"].record(
            totals.conserved, {"t": round(t, 3), "supply": totals.supply, "held": totals.held}
        )
        self._check_slashes(t)
        served = sum(p.behaviour.stats["served_illegitimately"] for p in sim.peers)
        self.results["adversarial_requests_never_served"].record(
            served == 0, {"t": round(t, 3), "served": served}
        )
        self._check_fake_offers(t)

    def _check_fake_offers(self, t: float) -> None:
        sim = self.sim
        result = self.results["fake_offers_never_chosen"]
        liars = {p.account: p for p in sim.providers if getattr(p.behaviour, "lie", None)}
        if not sim.scenario.uses_discovery or not liars:
            result.skipped = (
                "no discovery client"
                if not sim.scenario.uses_discovery
                else ("no provider publishes fake offers")
            )
            return
        paid = sorted(
            {liars[ch.payee].name for ch in sim.ledger.state.channels.values() if ch.payee in liars}
        )
        result.record(
            sim.disc.fake_tried == 0 and not paid,
            {
                "t": round(t, 3),
                "tried": sim.disc.fake_tried,
                "first_tries": sim.disc.fake_tried_details[:5],
                "channels_to": paid[:10],
            },
        )

    def _check_failovers(self) -> None:
        sim = self.sim
        result = self.results["failing_providers_lose_their_clients"]
        failing = {
            p.name: p for p in sim.providers if p.periods and not getattr(p.behaviour, "lie", None)
        }
        if not sim.scenario.uses_discovery or not failing:
            result.skipped = (
                "no discovery client"
                if not sim.scenario.uses_discovery
                else ("no provider with down periods")
            )
            return
        tries: collections.Counter[tuple[str, str, int]] = collections.Counter()
        for start, client, provider in sim.disc.failures:
            peer = failing.get(provider)
            if peer is None:
                continue
            for i, period in enumerate(peer.periods):
                if period.start_s <= start < period.end_s:
                    tries[(client, provider, i)] += 1
        for (client, provider, i), n in sorted(tries.items()):
            period = failing[provider].periods[i]
            skip_s = FAILURE_SKIP_MS / 1000  # (discovery runs on the memory transport)
            bound = MAX_CONSECUTIVE_FAILURES * math.ceil((period.end_s - period.start_s) / skip_s)
            result.record(
                n <= bound,
                {
                    "client": client,
                    "provider": provider,
                    "down": [round(period.start_s, 3), round(period.end_s, 3)],
                    "failed_tries": n,
                    "bound": bound,
                },
            )
        if not result.checks:  # nobody tried a provider while it was down: nothing lost
            result.record(True)

    def _check_slashes(self, t: float) -> None:
        honest = self._honest_providers()
        claims = [c for c in self.sim.ledger.state.claims.values() if c.respondent in honest]
        upheld = [c for c in claims if claim_state(c) == "upheld"]
        detail = None
        if upheld:
            names = sorted({self._name(c.respondent) for c in upheld})
            detail = {"t": round(t, 3), "upheld": len(upheld), "providers": names[:10]}
        self.results["honest_providers_never_slashed"].record(not upheld, detail)
        clawed = [c for c in claims if int(getattr(c, "clawed", 0)) > 0]
        detail = None
        if clawed:
            names = sorted({self._name(c.respondent) for c in clawed})
            detail = {
                "t": round(t, 3),
                "clawed": sum(int(getattr(c, "clawed", 0)) for c in clawed),
                "claims": len(clawed),
                "providers": names[:10],
            }
        self.results["honest_providers_never_clawed"].record(not clawed, detail)

    def _name(self, account: bytes) -> str:
        peer = self.sim.peer_by_account(account)
        return peer.name if peer is not None else account.hex()[:16]

    async def check_final(self) -> None:
        """After the run: every invariant once more, with the stores."""
        sim = self.sim
        t = sim.sim_end_s
        await self.check_periodic(t)
        state = sim.ledger.state
        bps = state.params.slash_to_claimant_bps

        # value of the answers each peer got (as payer) and gave (as payee)
        received: collections.Counter[bytes] = collections.Counter()
        provided: collections.Counter[bytes] = collections.Counter()
        for payer, payee, price in (await delivered_answers(sim)).values():
            received[payer] += price
            provided[payee] += price

        # compensation for real failures: slashes on claims the node filed for requests
        # it sent and never got an answer to on time
        sent: dict[bytes, set[bytes]] = {}
        charged: dict[bytes, int] = {}
        for peer in sim.peers:
            sent[peer.account] = {r.request_hash for r in await peer.store.requests()} - set(
                peer.delivered
            )
            charged[peer.account] = sum(r.spent for r in await peer.store.payee_channels())
        compensation: collections.Counter[bytes] = collections.Counter()
        illegitimate: collections.Counter[bytes] = collections.Counter()
        for claim in state.claims.values():
            if claim_state(claim) != "upheld":
                continue
            share = claim.slashed * bps // 10_000
            if claim.id in sent.get(claim.claimant, set()):
                compensation[claim.claimant] += share
            else:
                illegitimate[claim.claimant] += share

        net_paid: collections.Counter[bytes] = collections.Counter()
        redeemed_by_payee: collections.Counter[bytes] = collections.Counter()
        for ch in state.channels.values():
            net_paid[ch.payer] += ch.redeemed - int(getattr(ch, "clawed", 0))
            redeemed_by_payee[ch.payee] += ch.redeemed

        clients = self.results["honest_clients_pay_only_for_answers"]
        for peer in sim.clients:
            if not peer.behaviour.honest:
                continue
            a = peer.account
            clients.record(
                net_paid[a] <= received[a],
                {
                    "peer": peer.name,
                    "paid": net_paid[a],
                    "answers": received[a],
                    "compensation": compensation[a],
                },
            )

        paid = self.results["honest_providers_paid_in_full"]
        if sim.scenario.settle:
            for peer in sim.providers:
                if peer.behaviour.honest:
                    a = peer.account
                    paid.record(
                        redeemed_by_payee[a] >= charged[a],
                        {
                            "peer": peer.name,
                            "charged": charged[a],
                            "redeemed": redeemed_by_payee[a],
                        },
                    )
        else:
            paid.skipped = "the scenario does not settle (settle = false)"

        await self._check_earnings()

        end = self.holdings_now()
        gains = self.results["adversaries_gain_nothing"]
        adversaries = []
        for peer in sim.peers:
            a = peer.account
            change = end.get(a, 0) - sim.start_holdings.get(a, 0)
            gain = change + received[a] - provided[a] - compensation[a]
            self.final[peer.name] = {
                "holdings_start": sim.start_holdings.get(a, 0),
                "holdings_end": end.get(a, 0),
                "received": received[a],
                "provided": provided[a],
                "charged": charged[a],
                "compensation": compensation[a],
                "compensation_illegitimate": illegitimate[a],
                "gain": gain,
            }
            if peer.behaviour.adversary:
                detail = {"peer": peer.name, "behaviour": peer.behaviour.kind, "gain": gain}
                adversaries.append(detail)
                gains.record(gain <= 0, detail)
        if not adversaries:
            gains.skipped = "no adversary in this scenario"

        self._check_failovers()

        crashes = self.results["no_crashes"]
        crashes.record(not sim.errors, {"errors": dict(sorted(sim.errors.items()))})

    async def _check_earnings(self) -> None:
        """claims.md C-2 on every channel of an honest payee (ledgers that keep paid_seen)."""
        sim = self.sim
        result = self.results["refunds_never_touch_earnings"]
        channels = list(sim.ledger.state.channels.values())
        if channels and not hasattr(channels[0], "paid_seen"):
            result.skipped = "the ledger keeps no paid_seen (rules before specs/claims.md)"
            return
        by_id = {ch.id: ch for ch in channels}
        for peer in sim.providers:
            if not peer.behaviour.honest:
                continue
            for record in await peer.store.payee_channels():
                ch = by_id.get(record.channel)
                if ch is None:
                    continue
                # what the payee may hold: the highest paid the ledger has seen or the
                # payee holds a voucher for, minus the refunds (settlement Redeem)
                seen = max(int(getattr(ch, "paid_seen", 0)), record.paid_max)
                entitled = seen - int(getattr(ch, "refunded", 0))
                result.record(
                    entitled >= record.spent,
                    {
                        "peer": peer.name,
                        "channel": ch.id.hex()[:16],
                        "paid_seen": seen,
                        "refunded": int(getattr(ch, "refunded", 0)),
                        "charged": record.spent,
                    },
                )
        if not result.checks:
            result.skipped = "no channel of an honest payee"

    def peer_figures(self, peer: SimPeer) -> dict[str, Any]:
        figures: dict[str, Any] = self.final.get(peer.name, {})
        return figures

    def as_list(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.results.values()]

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.results.values())
