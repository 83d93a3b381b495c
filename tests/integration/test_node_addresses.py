"""The library side of issue 16 items 1-3: the address book (a bare PeerID after one full
multiaddr, kept in the node's store across restarts), connect errors that say what happened
(PeerUnreachable UNREACHABLE, WrongPeer WRONG_PEER, NoKnownAddress NO_ADDRESS) and
`Node.open_channel` contacting the peer before any escrow moves.

libp2p on 127.0.0.1 where the transport matters (refused connections, the Noise identity);
every wait bounded by `trio.fail_after`.
"""

from __future__ import annotations

import socket

import pytest
import trio

from p2pay.core.errors import ErrorCode, WrongLedger
from p2pay.core.identity import Keypair
from p2pay.core.messages import StakeTerms
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork, memory_addr
from p2pay.node import (
    Call,
    NodeConfig,
    NoKnownAddress,
    PeerUnreachable,
    TermsRefused,
    WrongPeer,
    open_node,
)
from p2pay.node.addrbook import META_KEY
from p2pay.store.memory import MemoryStore

ALICE = Keypair.from_seed(bytes([1]) * 32)  # client
BOB = Keypair.from_seed(bytes([2]) * 32)  # provider
CAROL = Keypair.from_seed(bytes([3]) * 32)  # another identity
PRICE = 1_000
TOKEN = 10**24
CONFIG = NodeConfig(min_challenge_ms=50, default_timeout=5.0, watcher=False)


def make_ledger(name: bytes = b"node-addresses") -> MemoryLedger:
    return MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:" + name,
            dev=True,
            min_claim_window_ms=50,
            min_challenge_ms=50,
        )
    )


async def funded(*names: bytes) -> MemoryLedger:
    ledger = make_ledger(*names)
    for key in (ALICE, BOB, CAROL):
        await ledger.mint(key, key.account, 10 * TOKEN)
    return ledger


async def echo(call: Call) -> bytes:
    return call.body


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_bare_peer_id_works_after_one_full_address_and_after_a_restart() -> None:
    ledger = await funded()
    store = MemoryStore()
    bob_id = str(BOB.peer_id)
    async with open_node(key=BOB, ledger=ledger, config=CONFIG) as bob:
        bob.serve("echo", echo, price=PRICE)
        async with open_node(key=ALICE, ledger=ledger, store=store, config=CONFIG) as alice:
            with trio.fail_after(10), pytest.raises(NoKnownAddress) as info:
                await alice.call(bob_id, "echo", b"x", max_price=PRICE)
            assert info.value.code is ErrorCode.NO_ADDRESS
            assert "give its full multiaddr once" in info.value.message
            with trio.fail_after(10):
                await alice.open_channel(bob.addrs[0], deposit=10**6)
                assert (await alice.call(bob_id, "echo", b"1", max_price=PRICE)).body == b"1"
            assert alice.addresses.addrs(bob_id) == [bob.addrs[0]]
        # a new node on the same store: the book was kept (durable, store meta)
        assert await store.get_meta(META_KEY) is not None
        async with open_node(key=ALICE, ledger=ledger, store=store, config=CONFIG) as alice:
            with trio.fail_after(10):
                assert (await alice.call(bob_id, "echo", b"2", max_price=PRICE)).body == b"2"
                hello = await alice.connect(bob_id)
            assert [s.name for s in hello.services] == ["echo"]
        # another store knows nothing of BOB
        async with open_node(key=ALICE, ledger=ledger, config=CONFIG) as alice:
            with trio.fail_after(10), pytest.raises(NoKnownAddress):
                await alice.connect(bob_id)


async def test_connect_errors_say_what_happened() -> None:
    ledger = await funded()
    async with open_node(key=BOB, ledger=ledger, config=CONFIG) as bob:
        bob.serve("echo", echo, price=PRICE)
        async with open_node(key=ALICE, ledger=ledger, config=CONFIG) as alice:
            # nothing listens there
            dead = f"/ip4/127.0.0.1/tcp/{dead_port()}/p2p/{BOB.peer_id}"
            with trio.fail_after(30), pytest.raises(PeerUnreachable) as unreachable:
                await alice.connect(dead)
            assert unreachable.value.code is ErrorCode.UNREACHABLE
            assert "Connection refused" in unreachable.value.message
            assert not isinstance(unreachable.value, WrongPeer)
            # BOB answers at an address that names CAROL: the handshake tells
            wrong = bob.addrs[0].replace(str(BOB.peer_id), str(CAROL.peer_id))
            with trio.fail_after(30), pytest.raises(WrongPeer) as info:
                await alice.connect(wrong)
            assert info.value.code is ErrorCode.WRONG_PEER
            assert info.value.details == {
                "expected": str(CAROL.peer_id),
                "actual": str(BOB.peer_id),
            }
            # neither failure entered the address book
            assert alice.addresses.addrs(str(BOB.peer_id)) == []
            assert alice.addresses.addrs(str(CAROL.peer_id)) == []
            # the call path reports the same codes (never OVERLOADED)
            with trio.fail_after(30), pytest.raises(WrongPeer):
                await alice.call(wrong, "echo", b"x", max_price=PRICE)
            assert alice.counters.call_errors == {"WRONG_PEER": 1}


async def test_open_channel_contacts_the_peer_before_escrow_moves() -> None:
    ledger = await funded()
    net = MemoryNetwork()
    before = await ledger.balance(ALICE.account)
    bob_addr = memory_addr(str(BOB.peer_id))
    async with open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice:
        # BOB is not running
        with trio.fail_after(10), pytest.raises(PeerUnreachable):
            await alice.open_channel(bob_addr, deposit=10**6)
        assert await ledger.balance(ALICE.account) == before
        assert await ledger.channels_of(ALICE.account) == []
        async with open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob:
            bob.serve("echo", echo, price=PRICE)
            # terms: no stake, a price above the maximum
            with trio.fail_after(10), pytest.raises(TermsRefused) as terms:
                await alice.open_channel(bob_addr, deposit=10**6, require_stake=True)
            assert terms.value.code is ErrorCode.TERMS_REFUSED
            assert terms.value.details == {
                "peer": str(BOB.peer_id),
                "stake": 0,
                "prices": {"echo": PRICE},
            }
            with (
                trio.fail_after(10),
                pytest.raises(
                    TermsRefused, match="at least 1000 yocto a call, above max_price 999"
                ),
            ):
                await alice.open_channel(bob_addr, deposit=10**6, max_price=PRICE - 1)
            assert await ledger.balance(ALICE.account) == before
            # a connection open from before (its hello: no stake) is replaced after BOB stakes
            assert (await alice.connect(bob_addr)).stake is None
            await bob.stake(TOKEN, penalty=TOKEN // 10, claim_window_ms=1000)
            with trio.fail_after(10):
                info = await alice.open_channel(
                    bob_addr, deposit=10**6, require_stake=True, max_price=PRICE
                )
                result = await alice.call(bob_addr, "echo", b"hi", max_price=PRICE)
            assert result.channel == info.channel
            assert await ledger.balance(ALICE.account) == before - 10**6


async def test_open_channel_refuses_a_peer_on_another_ledger() -> None:
    ours, theirs = await funded(b"ours"), await funded(b"theirs")
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=theirs, network=net, config=CONFIG) as bob,
        open_node(key=ALICE, ledger=ours, network=net, config=CONFIG) as alice,
    ):
        before = await ours.balance(ALICE.account)
        with trio.fail_after(10), pytest.raises(WrongLedger):
            await alice.open_channel(bob.addrs[0], deposit=10**6)
        assert await ours.balance(ALICE.account) == before
        assert await ours.channels_of(ALICE.account) == []


async def test_open_channel_offline_is_a_ledger_operation_only() -> None:
    ledger = await funded()
    async with open_node(key=ALICE, ledger=ledger, network=MemoryNetwork(), config=CONFIG) as a:
        info = await a.open_channel(str(BOB.peer_id), deposit=10**6, offline=True)
        assert info.deposit == 10**6 and info.peer == str(BOB.peer_id)
        assert a.addresses.addrs(str(BOB.peer_id)) == []  # no contact, nothing learned


async def test_require_stake_refuses_a_stake_the_ledger_does_not_have() -> None:
    """A hello's stake is the peer's word (protocol.md 9 rule 6): a provider announcing a
    stake it does not have on the ledger gets no escrow. (Found by an attacker: the check
    read only the hello.)"""
    ledger = await funded(b"fake-stake")
    net = MemoryNetwork()
    before = await ledger.balance(ALICE.account)
    bob_addr = memory_addr(str(BOB.peer_id))
    async with open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob:
        bob.serve("echo", echo, price=PRICE)
        assert await ledger.stake_of(BOB.account) is None
        bob._stake = StakeTerms(amount=TOKEN, penalty=TOKEN // 10, claim_window_ms=1000)
        async with open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice:
            assert (await alice.connect(bob_addr)).stake is not None  # the lie is in the hello
            with trio.fail_after(10), pytest.raises(TermsRefused) as info:
                await alice.open_channel(bob_addr, deposit=10**6, require_stake=True)
            assert info.value.details["stake"] == 0
            assert info.value.details["announced_stake"] == TOKEN
            assert await ledger.balance(ALICE.account) == before
            assert await ledger.channels_of(ALICE.account) == []


async def test_require_stake_refuses_a_provider_that_unstaked_since_the_last_hello() -> None:
    """A kept connection's hello may predate an unstake: the ledger decides."""
    ledger = await funded(b"stale-hello")
    net = MemoryNetwork()
    bob_addr = memory_addr(str(BOB.peer_id))
    async with open_node(key=BOB, ledger=ledger, network=net, config=CONFIG) as bob:
        bob.serve("echo", echo, price=PRICE)
        await bob.stake(TOKEN, penalty=TOKEN // 10, claim_window_ms=1000)
        async with open_node(key=ALICE, ledger=ledger, network=net, config=CONFIG) as alice:
            assert (await alice.connect(bob_addr)).stake is not None  # staked when it said hello
            await ledger.request_unstake(BOB)
            before = await ledger.balance(ALICE.account)
            with trio.fail_after(10), pytest.raises(TermsRefused):
                await alice.open_channel(bob_addr, deposit=10**6, require_stake=True)
            assert await ledger.balance(ALICE.account) == before
            assert await ledger.channels_of(ALICE.account) == []
