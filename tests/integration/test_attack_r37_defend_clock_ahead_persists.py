"""Attack round 37 (the chain's endpoint lies): a clock that reads ahead for as long as a
claim's window (not one reading) keeps an honest provider from answering a false claim on
a request it answered: UPHELD, its penalty slashed, half of it to the false claimant.

Round 28 (b7704c4 and after) made the answer task (`Watcher._defend`) give a claim up only
if the ledger's clock and the node's both say its window ended. But while the ledger's
clock alone says so, the task does not answer: it logs "past its window by the ledger's
clock only" and reads again after a backoff, and again, until the node's own clock says
the window ended too; then it gives up. An endpoint whose clock reads ahead for the whole
window thus keeps every claim against the provider unanswered. One lying reply is enough
on an EVM ledger: `EvmLedger.now` keeps the largest time it ever read (``_last_at =
max(_last_at, ...)``), so one block timestamp an hour ahead reads an hour ahead for an
hour. The ledger itself (its state, its clock) stays truthful: an answer posted would be
accepted.

Setting: BOB (honest) reads the ledger through an endpoint whose clock reads an hour
ahead from the moment ALICE files a false claim on a request BOB answered and stored. BOB
must answer it with his stored response (DELIVERED). Every wait bounded; nothing asserts
on timing.
"""

from __future__ import annotations

from typing import Any

from node_support import ended_claim, wait_until
from test_watcher_claims import ALICE, BOB, BOND, LEDGER_ID, PENALTY, PRICE, STAKE

from p2pay.core.messages import Request, decode_frame
from p2pay.core.settlement import ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NodeConfig, open_node

AHEAD_MS = 3_600_000
WINDOW_MS = 30_000  # room for the answer on a loaded machine

CONFIG = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,
    default_timeout=30.0,
    min_challenge_ms=50,
)


class AheadEndpoint:
    """BOB's view of the ledger: every read goes to the real ledger, but once `ahead` its
    clock reads `AHEAD_MS` ahead. Nothing of the ledger itself changes."""

    def __init__(self, real: MemoryLedger) -> None:
        self._real = real
        self.ahead = False
        self.lies = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def now(self) -> int:
        real = await self._real.now()
        if self.ahead:
            self.lies += 1
            return real + AHEAD_MS
        return real


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_clock_ahead_through_a_window_does_not_keep_an_honest_answer_back() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = MemoryLedger(params)
    endpoint = AheadEndpoint(ledger)
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=endpoint, network=net, config=CONFIG) as bob,  # type: ignore[arg-type]
        open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        await alice.open_channel(bob.addrs[0], deposit=10**9)
        result = await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=5.0)
        record = await alice.store.request(result.receipt.request_hash)
        assert record is not None
        request = decode_frame(record.frame)
        assert isinstance(request, Request)

        async def past_deadline() -> bool:
            return await ledger.now() > request.deadline

        await wait_until(past_deadline, timeout=60)
        stake_before = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
        endpoint.ahead = True
        claim_id = await ledger.file_claim(ALICE, request)  # false: BOB answered it
        claim = await ledger.claim(claim_id)
        assert claim is not None
        window_ends = claim.window_ends

        async def decided_or_past() -> bool:
            found = await ledger.claim(claim_id)
            assert found is not None
            return found.state is not ClaimState.OPEN or await ledger.now() > window_ends

        await wait_until(decided_or_past, timeout=90)
    claim = await ended_claim(ledger, ALICE, claim_id)
    stake_after = (await ledger.stake_of(BOB.account)).amount  # type: ignore[union-attr]
    print(
        f"false claim on an answered request, BOB's clock ahead: {claim.state}, "
        f"lies {endpoint.lies}, slashed {claim.slashed}"
    )
    assert endpoint.lies > 0
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert stake_after == stake_before
    assert claim.state is ClaimState.DELIVERED, claim.state
