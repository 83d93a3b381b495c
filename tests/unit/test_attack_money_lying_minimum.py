"""Attack (money): a staked provider refuses every channel as CHALLENGE_TOO_SHORT while
stating a minimum no longer than the channel's own challenge period (a refusal that
contradicts itself). Before the fix the payer marked each such channel refused, so every
`call any` (one home, run after run, like the CLI) opened and escrowed a new channel to it:
three deposits of up to ``max_deposit`` per ten minutes, without end. Now the contradiction
teaches nothing and marks nothing (protocol.md 17 rule 2): one channel, reused.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from p2pay.core.errors import ErrorCode, RemoteProtocolError
from p2pay.net.memory import MemoryNetwork
from p2pay.node import NoProvider
from p2pay.store.memory import MemoryStore
from tests.unit.test_node_discovery import CLIENT, LIAR, PRICE, funded, node, settle


async def test_a_self_contradicting_refusal_does_not_make_call_any_open_channel_after_channel() -> (
    None
):
    ledger = await funded()
    network = MemoryNetwork()
    store = MemoryStore()  # the client's home, kept across its runs
    async with node(LIAR, ledger, network, serve=PRICE) as liar:

        async def lying(request: Any, peer: bytes) -> None:
            # the client's channels have a 50 ms period (test_node_discovery's CONFIG)
            raise RemoteProtocolError(
                "too short", code=ErrorCode.CHALLENGE_TOO_SHORT, details={"min_challenge_ms": 50}
            )

        liar.book.payee_channel_for = lying  # type: ignore[method-assign]
        await settle()
        for _ in range(3):
            async with node(CLIENT, ledger, network, store=store) as client:
                with trio.fail_after(30), pytest.raises(NoProvider) as caught:
                    await client.call_any("echo", b"hi", max_price=PRICE)
                assert [a.code for a in caught.value.attempts] == ["CHALLENGE_TOO_SHORT"]
                assert not client.book.refused_channels and not client.book.payee_minimums
                to_liar = [c for c in client.payer_channels.values() if c.payee == LIAR.account]
                assert len(to_liar) == 1  # the first run's channel, reused: one deposit locked
        assert (
            len([c for c in await ledger.channels_of(CLIENT.account) if c.payee == LIAR.account])
            == 1
        )
