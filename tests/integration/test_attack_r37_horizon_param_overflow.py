"""Attack round 37 (the chain's endpoint lies): a `max_deadline_horizon_ms` of 2**130 in
the ledger parameters a provider reads makes every answer it stores expire past the
store's `MAX_TIME` (2**128 - 1): each paid call is charged, its answer never stored nor
sent, and each claim on it UPHELD: an honest provider slashed once per call.

`AnswerRetention.expiry` (node/retention.py) is ``deadline + max(response_retention_ms,
horizon + 2 * claim_window)``; `Params` puts no upper bound on the horizon (an EVM ledger
reads it from the contract, a uint256, through its endpoint). The store refuses the
`StoredResponse` (INVALID_AMOUNT: expires_at out of range) in the charge path, after the
charge: the stream handler fails, the payer's call is lost (ConnectionLost), and the
watcher's answer to the claim fails the same way at every try until the window ends.

Only BOB's view of the parameters lies (`dataclasses.replace` of the real ones); the ledger
itself, its clock and ALICE's view are truthful. BOB must not be slashed, and must not
charge what ALICE got no receipt for. Every wait bounded; nothing asserts on timing.
(The lead fixes the expiry itself, in node/retention.py and node/types.py.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from node_support import ended_claim, wait_until
from test_watcher_claims import ALICE, BOB, BOND, LEDGER_ID, PENALTY, PRICE, STAKE

from p2pay.core.errors import P2payError
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

CALLS = 3
WINDOW_MS = 30_000  # room for the answer on a loaded machine

CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
)


class HugeHorizon:
    """BOB's view of the ledger: everything the real ledger says, but its parameters with
    ``max_deadline_horizon_ms = 2**130``."""

    def __init__(self, real: MemoryLedger) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def params(self) -> Params:
        return dataclasses.replace(self._real.params, max_deadline_horizon_ms=2**130)


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_huge_horizon_read_from_the_endpoint_never_gets_a_provider_slashed() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = MemoryLedger(params)
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    view: Any = HugeHorizon(ledger)
    async with (
        open_node(key=BOB, ledger=view, network=net, config=CONFIG) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        stake_before = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        await alice.open_channel(bob.addrs[0], deposit=10**9)
        failures = []
        for _ in range(CALLS):
            try:
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=10.0)
            except P2payError as exc:
                failures.append(type(exc).__name__)

        async def settled() -> bool:
            await alice.persister.flush()
            if any(r.state == "awaiting" for r in await alice.store.requests()):
                return False
            now = await ledger.now()
            for claim in await ledger.claims_of(ALICE.account):
                if claim.state is ClaimState.OPEN and now <= claim.window_ends:
                    return False
            return True

        await wait_until(settled, timeout=120)
        charged, paid = bob.counters.charged, alice.counters.paid
    claims = [await ended_claim(ledger, ALICE, c.id) for c in await ledger.claims_of(ALICE.account)]
    stake_after = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
    print(
        f"huge horizon: call failures {failures}, BOB charged {charged}, ALICE paid {paid}, "
        f"claims {[c.state.value for c in claims]}"
    )
    assert all(c.slashed == 0 for c in claims), [(c.state, c.slashed) for c in claims]
    assert stake_after == stake_before
    assert charged == paid, "BOB charged calls ALICE got no receipt for"
    assert (await ledger.totals()).conserved
