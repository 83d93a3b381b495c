"""Attack round 42b, a property that held (no defect shown by this test): an honest
payee over real libp2p (library nodes on 127.0.0.1) with a tiny idle_timeout and
max_in_flight 2; a library payer makes bursts of calls with short timeouts (answers
racing them) and cancels whole bursts from outside (a nursery cancel) mid-flight, so
that frame writes (whole frames, net/p2p.py `_GuardedYamux._write_frame`) and stream
resets race cancellations on both sides.

Every call ends with a typed P2payError or its answer, never PeerUnreachable against
this honest payee, no request is served (or charged) twice, the payer's channel spent
equals the payee's once its awaiting records are delivered again, and the ledger's
totals are conserved after the close. Bounded waits; no timing assertion.
"""

from __future__ import annotations

import collections
import random

import trio
from node_support import funded_ledger, redeliver_awaiting

from p2pay.core.errors import P2payError
from p2pay.core.identity import Keypair
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([147]) * 32)
PAYEE = Keypair.from_seed(bytes([148]) * 32)
PRICE = 1_000
ROUNDS = 25


async def test_cancelled_bursts_charge_nothing_twice() -> None:
    rnd = random.Random(42)
    ledger = await funded_ledger(b"r42b-cancels", PAYER, PAYEE)
    served: collections.Counter[tuple[bytes, int]] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    started = 0
    charged = 0
    common = dict(watch_interval=0.05, min_challenge_ms=50, auto_claim=False)
    payee_config = NodeConfig(**common, idle_timeout=0.02, max_in_flight=2)
    payer_config = NodeConfig(**common, redeem_threshold=10**30, max_in_flight=2)
    async with (
        open_node(key=PAYEE, ledger=ledger, config=payee_config) as payee,
        open_node(key=PAYER, ledger=ledger, config=payer_config) as payer,
    ):

        async def handler(call: Call) -> bytes:
            served[(call.channel, call.n)] += 1
            await trio.sleep(rnd.random() * 0.03)
            return call.body * rnd.randint(1, 2000)

        payee.serve("svc", handler, price=PRICE)
        ch = await payer.open_channel(payee.addrs[0], deposit=10**9)
        peer = payee.addrs[0]

        async def call(body: bytes, timeout: float) -> None:
            nonlocal charged
            try:
                result = await payer.call(peer, "svc", body, max_price=PRICE, timeout=timeout)
            except P2payError as exc:
                kinds[type(exc).__name__] += 1
                errors.append(f"{type(exc).__name__}: {exc}")
            except trio.Cancelled:
                kinds["cancelled"] += 1
                raise
            else:
                ok = result.body.startswith(body) and len(result.body) % len(body) == 0
                kinds["ok" if ok else "wrong body"] += 1
                charged += result.price

        with trio.fail_after(120):
            for r in range(ROUNDS):
                async with trio.open_nursery() as burst:
                    for _ in range(rnd.randint(1, 10)):
                        timeout = rnd.choice([0.01, 0.03, 0.06, 0.1, 5.0])
                        burst.start_soon(call, b"b%d-" % started, timeout)
                        started += 1
                    if r % 3 == 0:
                        await trio.sleep(rnd.random() * 0.05)
                        burst.cancel_scope.cancel()
                await trio.sleep(rnd.random() * 0.06)
        print(dict(kinds), "charged", charged, "served", len(served))
        for e in errors:
            if "PeerUnreachable" in e:
                print(e)
        assert sum(kinds.values()) == started and "wrong body" not in kinds
        assert not [e for e in errors if e.startswith("PeerUnreachable")], errors
        assert max(served.values(), default=1) == 1
        with trio.fail_after(60):
            await redeliver_awaiting(payer, each=5)
        paid_for = payer.payer_channels[ch.channel].spent
        assert payee.payee_channels[ch.channel].spent == paid_for
        assert charged <= paid_for <= PRICE * len(served)
        with trio.fail_after(30):
            await payer.close_channel(ch.channel)
    assert (await ledger.totals()).conserved
