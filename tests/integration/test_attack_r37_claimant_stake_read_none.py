"""Attack round 37 (the chain's endpoint lies): one read of the provider's stake that says
"no stake" makes a payer give up the claim on a withheld paid request for good: the
withholder keeps the price and is never slashed.

A payer's watcher claims a paid request its payee never answered (claims.md 6,
`Watcher._claim`): it re-sends it, then, if that brings no signed answer, reads the
provider's stake again and, if it reads none (or 0), stores the request "unclaimable" and
never looks at it again (only "awaiting" requests are claimed). The ledger itself would
have taken the claim; only that one reply lied.

Setting: BOB takes ALICE's paid request and never answers it, nor its claim (a cheater).
ALICE's watcher must claim it; the claim is UPHELD, BOB slashed, ALICE refunded. The
ledger's own state and clock stay truthful; only one reply ALICE's node reads lies.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from node_support import ended_claim, wait_until
from test_watcher_claims import ALICE, BOB, BOND, LEDGER_ID, PENALTY, PRICE, STAKE

from p2pay.core.settlement import ClaimState, Params, Stake
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Behaviour, Call, CallTimeout, NodeConfig, open_node

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


class NoStake(MemoryLedger):
    """An endpoint whose stake read says "no stake" once: the first the payer's claim task
    (`Watcher._claim`) makes after its re-send failed, once `armed`. The ledger's own
    state stays truthful."""

    armed = False
    lies = 0

    async def stake_of(self, account: bytes) -> Stake | None:
        real = await super().stake_of(account)
        caller = sys._getframe(1).f_code.co_name
        if NoStake.armed and account == BOB.account and caller == "_claim":
            NoStake.armed = False
            NoStake.lies += 1
            return None
        return real


async def echo(call: Call) -> bytes:
    return call.body


async def test_one_stake_read_saying_none_does_not_drop_the_claim_on_a_withheld_request() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = NoStake(params)
    NoStake.armed, NoStake.lies = False, 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    cheat = Withholder()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=CONFIG, behaviour=cheat) as bob,
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
                NoStake.armed = True  # the next stake read (in `_claim`) lies
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
        f"withheld request after one stake read saying none: {state}, "
        f"claims filed {filed}, lies {NoStake.lies}, claim {claim and claim.state}"
    )
    assert NoStake.lies == 1  # the lie hit the claim task's stake read
    assert state == "claimed", f"ALICE gave up her claim: request {state}"
    assert claim is not None

    async def window_over() -> bool:
        return await MemoryLedger.now(ledger) > claim.window_ends

    await wait_until(window_over, timeout=90)
    ended = await ended_claim(ledger, ALICE, request_hash)
    assert ended.state is ClaimState.UPHELD, ended.state
    assert ended.refund == PRICE and ended.slashed == PENALTY
    assert (await ledger.totals()).conserved
