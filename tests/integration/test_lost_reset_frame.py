"""A provider's idle reset whose RST waits for the connection longer than RESET_TIMEOUT
(another frame being written, or, as in the hostile-load test beside CPU hogs, a task
scheduled seconds late) must still reach the payer.

Before, `Libp2pStream.reset` gave the RST up at its 1 s bound: the payer's stream stayed
open, its next request was dropped by the provider's muxer (data for a stream it no longer
has) and the call waited for its own timeout: an honest call failed CallTimeout against a
reachable, honest provider (the hostile-load test: 300 s, three clients at once). Real
py-libp2p nodes on 127.0.0.1; the provider's connection to the payer is held (its yamux
write lock) across the idle reset. Every wait bounded; no timing assertion.
"""

from __future__ import annotations

import trio
from node_support import funded_ledger, wait_until

from p2pay.core.identity import Keypair
from p2pay.node import Call, NodeConfig, open_node

PAYER = Keypair.from_seed(bytes([151]) * 32)
PAYEE = Keypair.from_seed(bytes([152]) * 32)
PRICE = 1_000


async def _echo(call: Call) -> bytes:
    return call.body


async def test_a_call_after_an_idle_reset_held_up_by_the_connection_is_served() -> None:
    ledger = await funded_ledger(b"lost-reset", PAYER, PAYEE)
    async with (
        open_node(key=PAYEE, ledger=ledger, config=NodeConfig(idle_timeout=1.0)) as payee,
        open_node(key=PAYER, ledger=ledger, config=NodeConfig()) as payer,
    ):
        payee.serve("echo", _echo, price=PRICE)
        peer = payee.addrs[0]
        await payer.open_channel(peer, deposit=10**9)
        with trio.fail_after(60):
            first = await payer.call(peer, "echo", b"one", max_price=PRICE)
            assert first.body == b"one"
            (session,) = list(payee._live)
            conn = session.stream._net.muxed_conn
            resets = payee.counters.idle_resets
            await conn._write_lock.acquire()  # the connection is taken, past RESET_TIMEOUT
            try:
                await wait_until(lambda: payee.counters.idle_resets > resets, timeout=30)
                await wait_until(lambda: not payee._live, timeout=30)
                await trio.sleep(1.5)  # the reset has returned; its RST still waits
            finally:
                conn._write_lock.release()
        # the payer learns its stream ended; the call goes on a new one and is served
        with trio.fail_after(60):
            second = await payer.call(peer, "echo", b"two", max_price=PRICE, timeout=20)
        assert second.body == b"two" and second.price == PRICE
