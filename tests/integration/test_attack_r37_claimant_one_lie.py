"""Attack round 37 (the chain's endpoint lies): one reply to the payer's claim task that
lies made the payer give up the claim on a withheld paid request for good: the withholder
kept the price and was never slashed.

A payer's watcher claims a paid request its payee never answered (claims.md 6,
`Watcher._claim`): it re-sends it, then, if that brings no signed answer, reads the
provider's stake and the ledger's clock and files a claim, unless the claim window has
ended by then. Each read was taken at its word, once:

* ``clock ahead``: ``await ledger.now() > record.deadline + stake.claim_window_ms`` read an
  hour ahead stored the request "expired" (rounds 27 and 28 showed the same glitch on the
  provider's side, where a window ends only if both clocks say so; now on the payer's too);
* ``stake read as none``: the request was stored "unclaimable" (now the claim is filed, and
  the ledger refuses it NOT_STAKED if the provider really has no stake).

Either way it was never looked at again (only "awaiting" requests are claimed), though the
ledger itself would have taken the claim.

Setting: BOB takes ALICE's paid request and never answers it, nor its claim (a cheater).
ALICE's watcher must claim it; the claim is UPHELD, BOB slashed, ALICE refunded. The
ledger's own state and clock stay truthful; only one reply ALICE's node reads lies.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

import pytest
from node_support import called_from, ended_claim, wait_until
from test_watcher_claims import ALICE, BOB, BOND, LEDGER_ID, PENALTY, PRICE, STAKE

from p2pay.core.settlement import ClaimState, Params, Stake
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Behaviour, Call, CallTimeout, NodeConfig, open_node

AHEAD_MS = 3_600_000
WINDOW_MS = 15_000  # room for the claim to be filed on a loaded machine

CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
    redeliver_timeout=1.0,
)


class Withholder(Behaviour):
    """Takes paid requests and never answers them, nor their claims."""

    answers_claims = False

    def drop(self, call: Call) -> bool:
        return True


class OneLie(MemoryLedger):
    """An endpoint that lies once, in the first read of its kind the payer's claim task
    (`Watcher._claim`) makes after its re-send failed (once `armed`). The ledger's own
    operations go by its real state and time."""

    armed = False
    lies = 0

    def lie(self) -> bool:
        if self.armed and called_from("_claim", 5):
            self.armed = False
            self.lies += 1
            return True
        return False


class ClockAhead(OneLie):
    async def now(self) -> int:
        real = await super().now()
        return real + AHEAD_MS if self.lie() else real


class StakeReadAsNone(OneLie):
    async def stake_of(self, account: bytes) -> Stake | None:
        real = await super().stake_of(account)
        return None if account == BOB.account and self.lie() else real


async def echo(call: Call) -> bytes:
    return call.body


@pytest.mark.parametrize(
    "endpoint", [ClockAhead, StakeReadAsNone], ids=["clock ahead", "stake read as none"]
)
async def test_one_lying_read_does_not_drop_the_claim_on_a_withheld_request(
    endpoint: type[OneLie],
) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    skip = [0]  # ms the ledger's clock is ahead of the wall clock (set once, below)
    ledger = endpoint(params, clock=lambda: wall_clock_ms() + skip[0])
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    async with (
        open_node(
            key=BOB, ledger=ledger, network=net, config=CONFIG, behaviour=Withholder()
        ) as bob,
        open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        await alice.open_channel(bob.addrs[0], deposit=10**9)
        resent = 0
        redeliver = alice.redeliver

        async def redeliver_then_arm(*args: Any, **kwargs: Any) -> Any:
            nonlocal resent
            answer = await redeliver(*args, **kwargs)
            resent += 1
            if resent == 1:
                ledger.armed = True  # the next read of its kind in `_claim` lies
            return answer

        alice.redeliver = redeliver_then_arm  # type: ignore[method-assign]
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=1.0)
        [record] = await alice.store.requests()
        request_hash = record.request_hash

        async def settled() -> bool:
            await alice.persister.flush()
            current = await alice.store.request(request_hash)
            return current is not None and current.state != "awaiting"

        await wait_until(settled, timeout=90)
        current = await alice.store.request(request_hash)
        assert current is not None
        state, filed = current.state, alice.counters.claims_filed
    claim = await MemoryLedger.claim(ledger, request_hash)  # a claim's id is its request's hash
    print(
        f"withheld request after one lying read ({endpoint.__name__}): {state}, "
        f"claims filed {filed}, lies {ledger.lies}, claim {claim and claim.state}"
    )
    assert ledger.lies == 1  # the lie hit the claim task after its re-send
    assert state == "claimed", f"ALICE gave up her claim: request {state}"
    assert claim is not None

    # the claim's window ends: the ledger's clock jumps past it rather than the test
    # waiting WINDOW_MS (nothing else is left to happen in it: BOB answers no claim)
    skip[0] = max(0, claim.window_ends + 1 - await MemoryLedger.now(ledger))
    assert await MemoryLedger.now(ledger) > claim.window_ends
    ended = await ended_claim(ledger, ALICE, request_hash)
    assert ended.state is ClaimState.UPHELD, ended.state
    assert ended.refund == PRICE and ended.slashed == PENALTY
    assert (await ledger.totals()).conserved
