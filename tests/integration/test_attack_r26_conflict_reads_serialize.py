"""Attack round 26 on 67ad627: conflict reads under the channel's lock, one claim at a time.

ec4f456 holds a claim filed against BOB by its ClaimFiled event's slice and reads it
from the ledger only when an answer finds it in tiling conflict with the claimed request
(`Watcher._claimed_requests`). That read is made under the channel's lock
(`_listing_on[channel]`, `read_all`), and every answer on the channel takes that lock (its
first `read_all`, of the unlisted claims, takes it even with nothing to read). So on one
channel, the answers whose claimed request conflicts with a slice not read yet go ONE
AT A TIME, each holding the lock for a whole endpoint read: `max_claim_answers` (16) at
once no longer applies.

MALLORY makes every one of her claims such an answer, for free but for the bonds: she
collects BOB's signed refusals of K requests (service ``nosuch``, n = 1..K, price 1, 1
yocto of her paid line each), files them as refusal claims (settled at once: no bond, no
answer task, but each one's slice is held by BOB's watcher unread), then files K open
claims, claim i on a request numbered i with another hash (service ``echo``, the same
slice): each answer finds the refusal claim i's slice in conflict (same number) and reads
it under the lock. The endpoint takes 0.5 s a claim read (rounds 23 and 25, slowed), the
window is 4 s, 20 claims per window (a 200 ms slot each, claims.md C-1): claim i's window
ends 4 s + i slots after its filing; BOB's reads go 16 at once (32 a second, over the 5
claims a second the capacity rule asks for: 3 reads each), but the lock lets one conflict
read through every 0.5 s (2 claims a second). With K = 40, claim 40's window is 12 s; the
lock's queue needs about 20 s.

The claims are frivolous (each has the payer-signed request ``n = i`` of the refusal
claim as evidence), so BOB must answer each FRIVOLOUS; one UPHELD is the penalty to
MALLORY and the bond back. On eb92449 (every claim filed since read once, 16 at a time,
by the first answer on the channel; the others then find all of them held) the same
flood is answered. Measured (at 0.3 s a read and a 2 s window, the attacker's setting):
67ad627 25 to 29 of 40 UPHELD (whole stake slashed, 5 runs of 5); eb92449 40 FRIVOLOUS (3
of 3); at 0.5 s and 4 s (slowed so that CPU alone cannot miss a window under a loaded
suite) 67ad627 25 UPHELD. Fixed in the twelfth session: conflict reads go side by side,
under no lock (the channel's lock only for claims whose events named no slice). The
``control`` case (the same 40 claims on fresh numbers, no conflict: REFUSED at once)
passes on 67ad627: the setting is within the capacity rule (on eb92449, at 0.3 s and 2 s,
it gets 2 UPHELD, round 23's residual that ec4f456 closed).
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

import pytest
import trio
from node_support import ended_claim, wait_until
from raw_payer import MALLORY, connected, ignore_streams
from test_watcher_claims import BOB, BOND, LEDGER_ID, PENALTY, PRICE, STAKE

from p2pay.core.messages import Request, Response
from p2pay.core.settlement import Claim, ClaimState, Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, open_memory_transport
from p2pay.node import Call, NodeConfig, open_node

DELAY = 0.5  # s, each claim read BOB's watcher makes
WINDOW_MS = 4_000
K = 40  # refusal claims, then as many open claims, one per number


class SlowClaims(MemoryLedger):
    """An endpoint with a latency on every claim read (the test reads through
    `MemoryLedger.claim` directly)."""

    async def claim(self, claim_id: bytes) -> Claim | None:
        await trio.sleep(DELAY)
        return await super().claim(claim_id)


async def echo(call: Call) -> bytes:
    return call.body


@pytest.mark.parametrize("conflicts", [True, False], ids=["twins", "control"])
async def test_conflicting_claims_serialize_on_the_channel_lock(conflicts: bool) -> None:
    params = Params(
        ledger_id=LEDGER_ID, dev=True, claim_bond=BOND, min_claim_window_ms=50,
        min_challenge_ms=50, max_deadline_horizon_ms=60_000, claims_per_window=20,
    )  # fmt: skip
    ledger = SlowClaims(params)
    for key in (BOB, MALLORY):
        await ledger.mint(key, key.account, 10**25)
    config = NodeConfig(
        watch_interval=0.05, claim_grace_ms=50, min_challenge_ms=50,
        redeem_threshold=10**30, default_timeout=30.0,
    )  # fmt: skip
    net = MemoryNetwork()
    claims: list[bytes] = []
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=config) as bob,
        open_memory_transport(net, MALLORY, ignore_streams) as transport,
    ):
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(STAKE, penalty=PENALTY, claim_window_ms=WINDOW_MS)
        channel = await ledger.open_channel(MALLORY, BOB.public, 10**9, 60_000)

        refusals: list[tuple[Request, Response]] = []
        deadline = await ledger.now() + 30_000
        async with connected(transport, bob, ledger, channel) as payer:
            for n in range(1, K + 1):
                request = payer.signed(n, n, deadline, price=1, service="nosuch")
                answer = await payer.exchange(request)
                assert isinstance(answer, Response) and answer.verify(BOB.account)
                assert answer.status != "OK" and answer.price == 0
                refusals.append((request, answer))
        for request, refusal in refusals:  # free, settled at once
            await ledger.file_claim(MALLORY, request, refusal=refusal)
        # One claim answered first, in conflict with none of them: on
        # eb92449 its answer reads every refusal claim (filed since, on its channel), and
        # the flood's answers find them all held; here their slices stay unread
        primer = Request.create(
            MALLORY, ledger=LEDGER_ID, channel=channel, n=K + 1, paid=K + PRICE, price=PRICE,
            service="echo", body=b"primer", deadline=await ledger.now() - 1,
        )  # fmt: skip
        primed = await ledger.file_claim(MALLORY, primer)

        async def primer_decided() -> bool:
            found = await MemoryLedger.claim(ledger, primed)
            return found is not None and found.state is not ClaimState.OPEN

        await wait_until(primer_decided, timeout=30)
        first = await MemoryLedger.claim(ledger, primed)
        assert first is not None  # DELIVERED (REFUSED DEADLINE_EXCEEDED on eb92449)
        assert first.state in (ClaimState.DELIVERED, ClaimState.REFUSED)
        base = K + PRICE  # the control's numbers and slices: fresh, in conflict with none
        for n in range(1, K + 1):
            twin = Request.create(
                MALLORY, ledger=LEDGER_ID, channel=channel,
                n=n if conflicts else K + 1 + n, paid=n if conflicts else base + n, price=1,
                service="echo", body=b"twin %d" % n, deadline=await ledger.now() - 1,
            )  # fmt: skip
            claims.append(await ledger.file_claim(MALLORY, twin))
        last = await MemoryLedger.claim(ledger, claims[-1])
        assert last is not None

        async def all_decided_or_past() -> bool:
            if await ledger.now() > last.window_ends + 200:
                return True
            for claim_id in claims:
                found = await MemoryLedger.claim(ledger, claim_id)
                assert found is not None
                if found.state is ClaimState.OPEN:
                    return False
            return True

        await wait_until(all_decided_or_past, timeout=60)
    outcomes: dict[str, int] = {}
    slashed = 0
    for claim_id in claims:
        found = await ended_claim(ledger, MALLORY, claim_id)
        outcomes[found.state.name] = outcomes.get(found.state.name, 0) + 1
        slashed += found.slashed
    print(f"MALLORY's {K} claims ({conflicts=}): {outcomes}, {slashed} slashed from BOB")
    assert outcomes.get("UPHELD", 0) == 0, f"honest BOB slashed {slashed}: {outcomes}"
