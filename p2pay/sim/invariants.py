"""Invariants every simulation checks, during the run and after it.

Theory of operation
-------------------
Each invariant has a name, a one-line definition (copied into the report) and a result:
how many times it was checked and the violations found (the first 20 in detail, all
counted). Periodic checks run every ``check_every`` of simulated time; final checks run
after every node has stopped, on the ledger state and the peers' stores.

Definitions (the report carries them too):

* ``conservation``: ``supply == balances + escrow + stakes + bonds + burnt`` on the ledger
  (`Totals.conserved`), periodically and at the end.
* ``honest_providers_never_slashed``: no claim against a provider whose behaviour is
  honest (honest, offline, crasher, slow) is upheld. Periodically and at the end.
  (A provider that stays down longer than its claim window could legitimately be
  slashed: scenarios keep outages shorter.)
* ``honest_clients_pay_only_for_answers``: for every honest client,
  ``redeemed from its channels <= receipts accepted + answers obtained through claims
  + compensation``, where receipts accepted is the ``spent`` its payer channels reached
  through checked receipts (late ones included), answers through claims are the prices
  in the OK responses providers posted to answer its claims, and compensation is its
  share of slashes. At the end (in flight, a provider can redeem a charge whose receipt
  is on its way).
* ``honest_providers_paid_in_full`` (when the scenario settles): every honest provider
  redeemed at least what it charged.
* ``adversaries_gain_nothing``: for every adversary, ``gain = change of holdings +
  value received - value provided - compensation <= 0``. Holdings are balance + escrow
  of the channels it pays + stake + bonds of its open claims; value received is the
  ``spent`` of its payer channels (service it got, at the price it was offered, with the
  behaviour's own off-node channels, e.g. the overspender's); value provided is what it
  charged as a payee. An honest twin running the same workload pays exactly for what it
  receives and gets compensation only for real failures: its gain is 0. So a positive
  gain is money an adversary got out of the protocol.
* ``adversarial_requests_never_served``: no forged, replayed or over-deposit request
  got an OK answer (behaviours count ``served_illegitimately``).
* ``no_crashes``: no exception escaped a node call or a behaviour hook.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from p2pay.core.messages import Response, decode_frame
from p2pay.core.settlement import ChannelState, ClaimState, State

if TYPE_CHECKING:
    from p2pay.sim.engine import SimPeer, Simulation

__all__ = ["DEFINITIONS", "InvariantResult", "Invariants", "holdings_parts"]

MAX_DETAILS = 20

DEFINITIONS = {
    "conservation": "ledger supply == balances + escrow + stakes + bonds + burnt",
    "honest_providers_never_slashed": "no claim against an honest provider is upheld",
    "honest_clients_pay_only_for_answers": (
        "per honest client: redeemed from its channels <= receipts accepted + answers "
        "obtained through claims + compensation"
    ),
    "honest_providers_paid_in_full": "per honest provider: redeemed >= charged (after settling)",
    "adversaries_gain_nothing": (
        "per adversary: change of holdings + value received - value provided - "
        "compensation <= 0 (an honest twin's is 0)"
    ),
    "adversarial_requests_never_served": "no forged, replayed or over-deposit request answered OK",
    "no_crashes": "no exception escaped a node call or a behaviour hook",
}


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
        if claim.state is ClaimState.OPEN:
            parts[claim.claimant][3] += claim.bond
    return parts


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

    def _check_slashes(self, t: float) -> None:
        honest = self._honest_providers()
        upheld = [
            c
            for c in self.sim.ledger.state.claims.values()
            if c.state is ClaimState.UPHELD and c.respondent in honest
        ]
        detail = None
        if upheld:
            names = sorted({self._name(c.respondent) for c in upheld})
            detail = {"t": round(t, 3), "upheld": len(upheld), "providers": names[:10]}
        self.results["honest_providers_never_slashed"].record(not upheld, detail)

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
        redeemed_by_payer: collections.Counter[bytes] = collections.Counter()
        redeemed_by_payee: collections.Counter[bytes] = collections.Counter()
        for ch in state.channels.values():
            redeemed_by_payer[ch.payer] += ch.redeemed
            redeemed_by_payee[ch.payee] += ch.redeemed
        compensation: collections.Counter[bytes] = collections.Counter()
        via_claims: collections.Counter[bytes] = collections.Counter()
        for claim in state.claims.values():
            if claim.state is ClaimState.UPHELD:
                compensation[claim.claimant] += claim.slashed * bps // 10_000
            elif claim.state is ClaimState.ANSWERED and claim.response_frame:
                response = decode_frame(claim.response_frame)
                if isinstance(response, Response) and response.ok:
                    via_claims[claim.claimant] += response.price

        received: dict[bytes, int] = {}
        provided: dict[bytes, int] = {}
        for peer in sim.peers:
            received[peer.account] = sum(r.spent for r in await peer.store.payer_channels())
            received[peer.account] += int(getattr(peer.behaviour, "extra_received", 0))
            provided[peer.account] = sum(r.spent for r in await peer.store.payee_channels())

        clients = self.results["honest_clients_pay_only_for_answers"]
        for peer in sim.clients:
            if not peer.behaviour.honest:
                continue
            a = peer.account
            bound = received[a] + via_claims[a] + compensation[a]
            clients.record(
                redeemed_by_payer[a] <= bound,
                {
                    "peer": peer.name,
                    "redeemed": redeemed_by_payer[a],
                    "receipts": received[a],
                    "answered_via_claims": via_claims[a],
                    "compensation": compensation[a],
                },
            )

        paid = self.results["honest_providers_paid_in_full"]
        if sim.scenario.settle:
            for peer in sim.providers:
                if peer.behaviour.honest:
                    a = peer.account
                    paid.record(
                        redeemed_by_payee[a] >= provided[a],
                        {
                            "peer": peer.name,
                            "charged": provided[a],
                            "redeemed": redeemed_by_payee[a],
                        },
                    )
        else:
            paid.skipped = "the scenario does not settle (settle = false)"

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
                "compensation": compensation[a],
                "gain": gain,
            }
            if peer.behaviour.adversary:
                detail = {"peer": peer.name, "behaviour": peer.behaviour.kind, "gain": gain}
                adversaries.append(detail)
                gains.record(gain <= 0, detail)
        if not adversaries:
            gains.skipped = "no adversary in this scenario"

        crashes = self.results["no_crashes"]
        crashes.record(not sim.errors, {"errors": dict(sorted(sim.errors.items()))})

    def peer_figures(self, peer: SimPeer) -> dict[str, Any]:
        figures: dict[str, Any] = self.final.get(peer.name, {})
        return figures

    def as_list(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.results.values()]

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.results.values())
