"""Attack round 24 on ef1de55: one read of one claim that raises something other than a
P2payError or an OSError ends the honest provider's node, and every claim filed against
it afterwards is UPHELD.

`_read_claims_against` (the rescan, every RESCAN_STEPS steps) and `_claimed_requests`'s
reads (ef1de55: in a nursery) catch (P2payError, OSError) only, and `_rescan` too: any
other exception from `ledger.claim` leaves the rescan task, the watcher's task nursery,
and `open_node`. `_defend` says of the same case "a bug or a backend's surprise: never
the node's end". EvmLedger's reads raise such a thing on one bad reply: an `eth_call`
answered ``0x`` (a lagging node behind a load balancer, a pruned block) decodes with
eth_abi's InsufficientDataBytes (a DecodingError, an Exception); an odd-length hex
reply raises ValueError (`bytes.fromhex`). Neither is a ChainUnavailable.

Here: BOB serves ``echo`` and stakes. ALICE files P (``nosuch``; any claim will do). The
endpoint fails ONE read, the rescan's first read of P, with ValueError (a bad reply),
and is correct from then on. Then ALICE files V, an honest ``echo`` request BOB can
answer at once. BOB's node must still run and V must be DELIVERED. On ef1de55 the node
is gone after that one read; V is UPHELD and BOB's penalty (10^19 yocto) slashed.
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import sys

import trio
from node_support import wait_until
from test_watcher_claims import (
    ALICE,
    BOB,
    BOND,
    LEDGER_ID,
    PENALTY,
    PRICE,
    STAKE,
    claimed_request,
    echo,
)

from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import NodeConfig, open_node

WINDOW_MS = 3_000


class Glitch(MemoryLedger):
    """An endpoint whose reply to the rescan's first read of one claim is unreadable."""

    poison: set[bytes] = set()
    raised = 0

    async def claim(self, claim_id: bytes) -> Claim | None:
        # the rescan's read, made directly or through `Watcher._read_claim`
        callers = f"{sys._getframe(1).f_code.co_qualname} {sys._getframe(2).f_code.co_qualname}"
        if claim_id in Glitch.poison and "_read_claims_against" in callers and not Glitch.raised:
            Glitch.raised += 1
            raise ValueError("non-hexadecimal number found in fromhex() arg")  # a bad reply
        return await super().claim(claim_id)


async def test_one_unreadable_claim_reply_does_not_end_the_node() -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000,
    )  # fmt: skip
    ledger = Glitch(params)
    Glitch.poison, Glitch.raised = set(), 0
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50)
    crashed: BaseException | None = None
    channel, deadline, victim = b"", 0, b""
    try:
        async with open_node(key=BOB, ledger=ledger, network=MemoryNetwork(), config=config) as bob:
            bob.serve("echo", echo, price=PRICE)
            await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
            channel = await ledger.open_channel(ALICE, BOB.public, 10**9, 60_000)
            deadline = await ledger.now() - 1
            poison = claimed_request(channel, 2, deadline=deadline, service="nosuch")
            Glitch.poison.add(poison.hash)  # the claim's id
            await ledger.file_claim(ALICE, poison)
            await wait_until(lambda: Glitch.raised > 0, timeout=30)  # the rescan read it
            for _ in range(20):  # a few watcher steps
                await trio.sleep(0.05)
            request = claimed_request(channel, 1, deadline=deadline)
            victim = request.hash
            await ledger.file_claim(ALICE, request)

            async def decided() -> bool:
                found = await ledger.claim(victim)
                assert found is not None
                return found.state is not ClaimState.OPEN

            await wait_until(decided, timeout=60)
    except BaseException as exc:  # the node's end is what is measured
        crashed = exc
    if not victim:  # the node ended before V: V is filed against its stake all the same
        request = claimed_request(channel, 1, deadline=deadline)
        victim = request.hash
        await ledger.file_claim(ALICE, request)
    claim = await ledger.claim(victim)
    assert claim is not None

    async def past() -> bool:
        return await ledger.now() > claim.window_ends

    await wait_until(past, timeout=60)
    if claim.state is ClaimState.OPEN:
        await ledger.resolve_claim(ALICE, victim)
    claim = await ledger.claim(victim)
    assert claim is not None
    print(f"V: {claim.state}, slashed {claim.slashed}; node ended by {crashed!r}")
    assert claim.slashed == 0, f"honest BOB slashed {claim.slashed}: {claim.state}"
    assert crashed is None, f"BOB's node ended on one bad reply: {crashed!r}"
    assert Glitch.raised == 1
