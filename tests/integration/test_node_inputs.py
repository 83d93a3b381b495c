"""Bad arguments to the node's API get a typed error (a `P2payError`, the package's one
root), before anything is signed or sent (issue 15 item 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from p2pay.core.errors import AmountError, ErrorCode, LocalProtocolError, P2payError
from p2pay.core.identity import Keypair
from p2pay.core.messages import REQUEST_OVERHEAD
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, Node, NodeConfig, open_node, split_peer

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
PRICE = 1_000


async def echo(call: Call) -> bytes:
    return call.body


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    ledger = MemoryLedger()
    await ledger.mint(ALICE, ALICE.account, 10**24)
    network = MemoryNetwork()
    config = NodeConfig(watcher=False)
    async with (
        open_node(key=BOB, ledger=ledger, network=network, config=config) as bob,
        open_node(key=ALICE, ledger=ledger, network=network, config=config) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        yield bob, alice


@pytest.mark.parametrize("peer", [123, None, b"12D3KooW", ["/p2p/x"]])
def test_split_peer_refuses_what_is_not_text(peer: Any) -> None:
    with pytest.raises(LocalProtocolError, match="peer address or PeerID"):
        split_peer(peer)


BAD_CALLS: dict[str, tuple[type[P2payError], Callable[[Node, Node], Awaitable[Any]]]] = {
    "peer not text": (
        LocalProtocolError,
        lambda bob, alice: alice.call(123, "echo", b"x", max_price=PRICE),  # type: ignore[arg-type]
    ),
    "service not text": (
        LocalProtocolError,
        lambda bob, alice: alice.call(bob.peer_id, 5, b"x", max_price=PRICE),  # type: ignore[arg-type]
    ),
    "max_price text": (
        AmountError,
        lambda bob, alice: alice.call(bob.peer_id, "echo", b"x", max_price="1000"),  # type: ignore[arg-type]
    ),
    "max_price float": (
        AmountError,
        lambda bob, alice: alice.call(bob.peer_id, "echo", b"x", max_price=1000.0),  # type: ignore[arg-type]
    ),
    "max_price bool": (
        AmountError,
        lambda bob, alice: alice.call(bob.peer_id, "echo", b"x", max_price=True),
    ),
    "max_price negative": (
        AmountError,
        lambda bob, alice: alice.call(bob.peer_id, "echo", b"x", max_price=-1),
    ),
    "timeout text": (
        LocalProtocolError,
        lambda bob, alice: alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout="1"),  # type: ignore[arg-type]
    ),
    "timeout zero": (
        LocalProtocolError,
        lambda bob, alice: alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0),
    ),
    "connect to a number": (
        LocalProtocolError,
        lambda bob, alice: alice.connect(5),  # type: ignore[arg-type]
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
async def test_bad_arguments_are_typed_errors_and_sign_nothing(case: str) -> None:
    error, make = BAD_CALLS[case]
    async with pair() as (bob, alice):
        [ch] = alice.payer_channels.values()
        with trio.fail_after(10), pytest.raises(error) as raised:
            await make(bob, alice)
        assert raised.value.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.INVALID_AMOUNT)
        assert (ch.last_n, ch.paid, ch.spent) == (0, 0, 0)  # nothing signed
        assert bob.counters.calls_served == 0
        # the node is fine: the same call with good arguments goes through
        result = await alice.call(bob.peer_id, "echo", b"ok", max_price=PRICE)
        assert result.body == b"ok" and result.price == PRICE


async def test_a_body_is_at_most_what_fits_the_payees_max_frame() -> None:
    """protocol.md §5.3, §13.1 step 1'': a request frame is its body plus at most
    REQUEST_OVERHEAD bytes. A node offers no service whose max_body exceeds its max_frame
    minus that; a payer sends a body of exactly the limit (its frame fits) and refuses one
    byte more before signing anything (BODY_TOO_LARGE, details max_body)."""
    max_frame = 8192
    limit = max_frame - REQUEST_OVERHEAD
    ledger = MemoryLedger()
    await ledger.mint(ALICE, ALICE.account, 10**24)
    network = MemoryNetwork()
    async with (
        open_node(
            key=BOB,
            ledger=ledger,
            network=network,
            config=NodeConfig(watcher=False, max_frame=max_frame),
        ) as bob,
        open_node(
            key=ALICE, ledger=ledger, network=network, config=NodeConfig(watcher=False)
        ) as alice,
    ):
        with pytest.raises(LocalProtocolError) as refused:
            bob.serve("echo", echo, price=PRICE, max_body=limit + 1)
        assert refused.value.details == {"max_body": limit}
        assert "echo" not in bob.services
        bob.serve("echo", echo, price=PRICE, max_body=limit)
        await alice.open_channel(bob.addrs[0], deposit=10**6)
        [ch] = alice.payer_channels.values()
        with trio.fail_after(10):
            result = await alice.call(bob.peer_id, "echo", bytes(limit), max_price=PRICE)
            assert result.body == bytes(limit)
            with pytest.raises(LocalProtocolError) as too_long:
                await alice.call(bob.peer_id, "echo", bytes(limit + 1), max_price=PRICE)
        assert too_long.value.code is ErrorCode.BODY_TOO_LARGE
        assert too_long.value.details == {"max_body": limit}
        assert (ch.last_n, ch.spent) == (1, PRICE)  # nothing signed for the second
