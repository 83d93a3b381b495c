"""Helpers the node integration tests share (imported as ``node_support``, like
``hardening_support`` in tests/hardening)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, ServiceTerms
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.node import Node


async def wait_until(predicate: Callable[[], Any], timeout: float = 60.0) -> None:
    """Wait for a condition (a value or an awaitable), within a bound generous for a
    loaded machine."""
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.02)


def claim_game_params(ledger_id: bytes, **params: Any) -> Params:
    """Dev ledger parameters with short minimum periods (50 ms), a 60 s deadline horizon
    and `params`."""
    return Params(
        ledger_id=ledger_id,
        dev=True,
        min_claim_window_ms=50,
        min_challenge_ms=50,
        max_deadline_horizon_ms=60_000,
        **params,
    )


async def funded_ledger(name: bytes, *keys: Keypair, **params: Any) -> MemoryLedger:
    """A dev `MemoryLedger` with short minimum periods (50 ms), a 60 s deadline horizon
    and `params`, on which each of `keys` has 10 tokens."""
    ledger = MemoryLedger(claim_game_params(b"p2pay:test:" + name, **params))
    for key in keys:
        await ledger.mint(key, key.account, 10**25)
    return ledger


def fresh_hello(node: Node) -> bytes:
    """The hello frame `Hello.create` builds and signs now from `node`'s current terms (what
    `Node.hello`, which keeps its last one while they are the same, must return)."""
    return Hello.create(
        node.key,
        ledger=node.ledger.ledger_id,
        services=tuple(
            ServiceTerms(name=s.name, price=s.price, max_body=s.max_body)
            for s in sorted(node.services.values(), key=lambda s: s.name)
        ),
        stake=node._stake,
        max_in_flight=node.config.max_in_flight,
        max_frame=node.config.max_frame,
        deadline_horizon=node.config.max_deadline_horizon_ms,
        settlement_key=node.signer,
    ).to_frame()
