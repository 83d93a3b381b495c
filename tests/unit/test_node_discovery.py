"""The node's part in discovery (p2pay/node/discovery.py, specs/discovery.md) over the
in-memory twin of the discovery network: announcing (a seq that survives restarts, no offer
without a stake, re-announcing on a price change), finding (DHT lookup and fetch, gossip),
calling any provider (deposit policy, channel reuse, failover, lies caught from the hello
and from a PAYMENT_REQUIRED), and addresses learnt only from authenticated connections.

Every wait is bounded (`trio.fail_after`); the memory network has no latency.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio

from p2pay.core.errors import ErrorCode, LocalProtocolError, PayeeFaulty
from p2pay.core.identity import Keypair
from p2pay.core.messages import Response, StakeTerms
from p2pay.core.offers import (
    MAX_SERVICES_PER_PEER,
    Chooser,
    Drop,
    FailureKind,
    Offer,
    announce_spacing_ms,
)
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.base import DiscoveryNet, Transport
from p2pay.net.discovery import dial_reason
from p2pay.net.memory import MemoryNetwork, memory_addr
from p2pay.net.memory_discovery import open_memory_discovery
from p2pay.node import (
    Behaviour,
    Call,
    DiscoveryConfig,
    Node,
    NodeConfig,
    NoProvider,
    NotJoined,
    open_node,
)
from p2pay.node.discovery import SEQ_KEY, STATS_KEY, Discovery
from p2pay.store.base import Batch
from p2pay.store.memory import MemoryStore

CLIENT = Keypair.from_seed(bytes([1]) * 32)
P1 = Keypair.from_seed(bytes([2]) * 32)
P2 = Keypair.from_seed(bytes([3]) * 32)
LIAR = Keypair.from_seed(bytes([4]) * 32)
PRICE = 1_000
TOKEN = 10**24
STAKE = TOKEN // 2
PENALTY = TOKEN // 10
WINDOW = 60_000
CONFIG = NodeConfig(min_challenge_ms=50, challenge_ms=50, default_timeout=5.0, watcher=False)
FIND = DiscoveryConfig(find_wait=2.0, max_deposit=10**7)


def make_ledger() -> MemoryLedger:
    return MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:discovery",
            dev=True,
            min_claim_window_ms=50,
            min_challenge_ms=50,
        )
    )


async def funded() -> MemoryLedger:
    ledger = make_ledger()
    for key in (CLIENT, P1, P2, LIAR):
        await ledger.mint(key, key.account, 10 * TOKEN)
    return ledger


async def echo(call: Call) -> bytes:
    return call.body


def twin(
    network: MemoryNetwork,
) -> Callable[[Transport], AbstractAsyncContextManager[DiscoveryNet]]:
    return lambda transport: open_memory_discovery(network, transport)


@asynccontextmanager
async def node(
    key: Keypair,
    ledger: MemoryLedger,
    network: MemoryNetwork,
    *,
    store: MemoryStore | None = None,
    serve: int | None = None,
    stake: bool = True,
    config: DiscoveryConfig = FIND,
) -> AsyncIterator[Node]:
    if stake and serve is not None and await ledger.stake_of(key.account) is None:
        await ledger.stake(key, STAKE, PENALTY, WINDOW)
    async with open_node(
        key=key,
        ledger=ledger,
        store=store,
        network=network,
        config=CONFIG,
        discovery=twin(network),
        discovery_config=config,
    ) as n:
        if serve is not None:
            n.serve("echo", echo, price=serve)
        yield n


async def settle() -> None:
    """Let the background tasks (announcing, gossip) run: the network has no latency."""
    for _ in range(50):
        await trio.sleep(0.01)


async def test_a_provider_is_found_through_the_dht_and_called_paid() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with node(P1, ledger, network, serve=PRICE) as p1:
        await settle()
        assert p1.discovery is not None and p1.discovery.announced == 1
        async with node(CLIENT, ledger, network) as client:
            with trio.fail_after(10):
                offers = await client.find("echo")
            (offer,) = offers
            assert offer.peer == str(P1.peer_id)
            assert offer.addrs == (memory_addr(str(P1.peer_id)),)
            assert (offer.price, offer.stake, offer.penalty) == (PRICE, STAKE, PENALTY)
            assert offer.claim_window_ms == WINDOW and offer.service == "echo"
            assert offer.seen_ms_ago >= 0 and offer.expires > client.now()
            # learnt from an offer: not in the address book before a connection (19.2)
            assert client.addresses.addrs(offer.peer) == []
            with trio.fail_after(10):
                result = await client.call_any("echo", b"hello", max_price=PRICE)
            assert result.body == b"hello" and result.price == PRICE
            assert result.peer == offer.peer
            assert [(a.peer, a.outcome) for a in result.attempts] == [(offer.peer, "ok")]
            # the deposit policy: deposit_calls x price, at most max_deposit
            (ch,) = client.channels()
            assert ch.deposit == min(FIND.deposit_calls * PRICE, FIND.max_deposit)
            assert ch.spent == PRICE
            # the authenticated connection put the address in the book
            assert client.addresses.addrs(offer.peer) == list(offer.addrs)
            # a second call reuses the channel
            with trio.fail_after(10):
                await client.call_any("echo", b"again", max_price=PRICE)
            (ch,) = client.channels()
            assert ch.spent == 2 * PRICE


async def test_offers_filtered_by_price_and_stake_and_none_found_is_typed() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with node(P1, ledger, network, serve=PRICE), node(CLIENT, ledger, network) as client:
        await settle()
        with trio.fail_after(10):
            assert await client.find("echo", max_price=PRICE - 1, wait=0.2) == []
            assert await client.find("echo", min_stake=STAKE + 1, wait=0.2) == []
            assert len(await client.find("echo", max_price=PRICE, min_stake=STAKE)) == 1
            assert await client.find("upper", wait=0.2) == []
        with trio.fail_after(10), pytest.raises(NoProvider) as info:
            await client.call_any("echo", b"x", max_price=PRICE - 1)
        assert info.value.code is ErrorCode.NO_PROVIDER
        assert client.channels() == []  # nothing escrowed
        with pytest.raises(LocalProtocolError):
            await client.find("")
        with pytest.raises(LocalProtocolError):
            await client.call_any("echo", b"x", max_price=-1)
        # a bad timeout is refused before a channel is opened (nothing escrowed)
        for timeout in (-1.0, 0, float("nan"), "1"):
            with trio.fail_after(10), pytest.raises(LocalProtocolError, match="timeout"):
                await client.call_any("echo", b"x", max_price=PRICE, timeout=timeout)  # type: ignore[arg-type]
        assert client.channels() == []


async def test_no_offer_without_a_stake() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with node(P1, ledger, network, serve=PRICE, stake=False) as p1:
        await settle()
        assert await p1.announce_offers() == 0
        async with node(CLIENT, ledger, network) as client:
            with trio.fail_after(10):
                assert await client.find("echo", wait=0.2) == []


async def test_a_restart_never_reuses_a_seq_and_a_price_change_is_announced() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    store = MemoryStore()
    async with node(CLIENT, ledger, network) as client:
        async with node(P1, ledger, network, store=store, serve=PRICE) as p1:
            await settle()
            with trio.fail_after(10):
                (first,) = await client.find("echo")
            # a new price: re-announced at once, received through gossip
            p1.serve("echo", echo, price=2 * PRICE)
            await settle()
            (second,) = client.discovery.live("echo") if client.discovery else []
            assert second.price == 2 * PRICE and second.seq > first.seq
        stored = await store.get_meta(SEQ_KEY)
        assert stored is not None and int(stored) >= second.seq
        # the provider restarts with its store: its next offer is newer than any it made
        async with node(P1, ledger, network, store=store, serve=3 * PRICE):
            await settle()
            assert client.discovery is not None
            (third,) = client.discovery.live("echo")
            assert third.price == 3 * PRICE and third.seq > second.seq


async def test_call_any_fails_over_to_the_next_provider() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with (
        node(P1, ledger, network, serve=PRICE // 2) as p1,
        node(P2, ledger, network, serve=PRICE),
        node(CLIENT, ledger, network) as client,
    ):
        await settle()
        with trio.fail_after(10):
            offers = await client.find("echo")
        assert [o.peer for o in offers][:1] == [str(p1.peer_id)]  # the cheaper first
        assert len(offers) == 2
        network.set_online(str(P1.peer_id), False)
        with trio.fail_after(30):
            result = await client.call_any("echo", b"hi", max_price=PRICE)
        assert result.body == b"hi" and result.peer == str(P2.peer_id)
        assert [(a.peer, a.outcome) for a in result.attempts] == [
            (str(P1.peer_id), "unreachable"),
            (str(P2.peer_id), "ok"),
        ]
        assert result.attempts[0].code == ErrorCode.UNREACHABLE.value
        # every provider down: one typed error naming each attempt
        network.set_online(str(P2.peer_id), False)
        network.disconnect(str(P2.peer_id))
        with trio.fail_after(30), pytest.raises(NoProvider) as info:
            await client.call_any("echo", b"hi", max_price=PRICE)
        names = [a["peer"] for a in info.value.details["attempts"]]
        assert set(names) <= {str(P1.peer_id), str(P2.peer_id)} and names
        assert all(a.outcome == "unreachable" for a in info.value.attempts)


async def test_a_bootstrap_peer_answers_from_its_book_and_a_node_never_lists_itself() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    bootstrap = Keypair.from_seed(bytes([9]) * 32)
    joined = DiscoveryConfig(find_wait=2.0, bootstrap=(memory_addr(str(bootstrap.peer_id)),))
    async with node(bootstrap, ledger, network) as b:
        async with (
            node(P1, ledger, network, serve=PRICE, config=joined) as p1,
            node(P2, ledger, network, serve=2 * PRICE, config=joined),
        ):
            await settle()
            assert b.discovery is not None
            assert {o.peer for o in b.discovery.live("echo")} == {str(P1.peer_id), str(P2.peer_id)}
            # P1 looks for echo: the bootstrap relays P1's own offer too, never listed
            with trio.fail_after(10):
                found = await p1.find("echo")
            assert [o.peer for o in found] == [str(P2.peer_id)]
        # both providers gone (their DHT records stay): a newcomer still learns their
        # offers from the bootstrap's book, and call any names each failed attempt
        async with node(CLIENT, ledger, network, config=joined) as client:
            with trio.fail_after(10):
                found = await client.find("echo")
            assert {o.peer for o in found} == {str(P1.peer_id), str(P2.peer_id)}
            with trio.fail_after(30), pytest.raises(NoProvider) as info:
                await client.call_any("echo", b"x", max_price=2 * PRICE)
            assert [(a.peer, a.outcome) for a in info.value.attempts] == [
                (str(P1.peer_id), "unreachable"),
                (str(P2.peer_id), "unreachable"),
            ]


def fake_offer(client: Node, *, price: int, stake: int, seq: int) -> bytes:
    """An offer of LIAR's for echo, made by the test (not by a discovery of LIAR's)."""
    return Offer.create(
        LIAR,
        ledger=client.ledger.ledger_id,
        service="echo",
        price=price,
        max_body=1 << 16,
        stake=StakeTerms(amount=stake, penalty=PENALTY, claim_window_ms=WINDOW),
        addrs=(memory_addr(str(LIAR.peer_id)),),
        seq=seq,
        expires=client.now() + 60_000,
    ).encode()


@asynccontextmanager
async def liar_and_client(price: int) -> AsyncIterator[tuple[Node, Node, Discovery]]:
    """LIAR, staked, serving echo at `price` on a plain node (no discovery: its offers are
    the ones the test makes, `fake_offer`), and a client with its discovery."""
    ledger = await funded()
    network = MemoryNetwork()
    await ledger.stake(LIAR, STAKE, PENALTY, WINDOW)
    async with (
        open_node(key=LIAR, ledger=ledger, network=network, config=CONFIG) as liar,
        node(CLIENT, ledger, network) as client,
    ):
        liar.serve("echo", echo, price=price)
        assert client.discovery is not None
        yield liar, client, client.discovery


async def test_lies_are_caught_from_the_ledger_the_hello_and_a_payment_required() -> None:
    async with liar_and_client(PRICE) as (_, client, d):
        # a stake the ledger does not show: not live
        big = fake_offer(client, price=PRICE, stake=2 * STAKE, seq=1)
        assert not await d.take(big, sender=str(LIAR.peer_id))
        assert d.live("echo") == []
        # the ban lasts: an honest-looking offer of the same peer is ignored meanwhile
        fair = fake_offer(client, price=PRICE, stake=STAKE, seq=2)
        assert not await d.take(fair, sender=str(LIAR.peer_id))
        assert d.received == 2  # every offer given to the book is counted, kept or not


async def test_a_hello_that_contradicts_the_offer_is_a_lie() -> None:
    async with liar_and_client(2 * PRICE) as (_, client, d):  # the hello's price
        cheap = fake_offer(client, price=PRICE, stake=STAKE, seq=1)
        assert await d.take(cheap, sender=str(LIAR.peer_id))
        assert len(d.live("echo")) == 1
        with trio.fail_after(10), pytest.raises(NoProvider) as info:
            await client.call_any("echo", b"x", max_price=2 * PRICE)
        (attempt,) = info.value.attempts
        assert attempt.outcome == "lied" and "hello" in attempt.message
        assert d.live("echo") == []  # dropped with every offer of that peer
        assert client.channels() == []  # nothing escrowed for a liar


async def test_better_terms_in_the_hello_are_no_lie() -> None:
    # the provider lowered its price since its offer was made
    async with liar_and_client(PRICE // 2) as (_, client, d):
        offer = fake_offer(client, price=PRICE, stake=STAKE, seq=1)
        assert await d.take(offer, sender=str(LIAR.peer_id))
        with trio.fail_after(10):
            result = await client.call_any("echo", b"x", max_price=PRICE)
        assert result.price == PRICE // 2  # the hello's price
        assert [a.outcome for a in result.attempts] == ["ok"]
        assert len(d.live("echo")) == 1  # still trusted


async def test_a_payment_required_above_the_offer_is_a_lie() -> None:
    async with liar_and_client(PRICE) as (liar, client, d):
        offer = fake_offer(client, price=PRICE, stake=STAKE, seq=1)
        assert await d.take(offer, sender=str(LIAR.peer_id))
        with trio.fail_after(10):
            first = await client.call_any("echo", b"x", max_price=5 * PRICE)
        assert first.price == PRICE
        # the connection stays (its hello said PRICE); the provider now asks more
        liar.serve("echo", echo, price=3 * PRICE)
        with trio.fail_after(10), pytest.raises(NoProvider) as info:
            await client.call_any("echo", b"y", max_price=5 * PRICE)
        (attempt,) = info.value.attempts
        assert attempt.outcome == "lied" and attempt.code == ErrorCode.PAYMENT_REQUIRED.value
        assert d.live("echo") == []


async def test_a_node_without_discovery_says_so() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with open_node(key=CLIENT, ledger=ledger, network=network, config=CONFIG) as n:
        with pytest.raises(LocalProtocolError, match="no discovery"):
            await n.find("echo")
        with pytest.raises(LocalProtocolError, match="no discovery"):
            await n.call_any("echo", b"", max_price=1)


def test_discovery_config_is_checked() -> None:
    bad: list[dict[str, Any]] = [
        {"announce_interval_ms": 999},
        {"deposit_calls": 0},
        {"max_deposit": 0},
        {"max_attempts": 0},
        {"find_wait": 0},
        {"bootstrap": ["/ip4/1.2.3.4/tcp/1"]},
    ]
    for fields in bad:
        with pytest.raises(LocalProtocolError):
            DiscoveryConfig(**fields)


# -- what a newcomer met (issue 17 follow-up): joining, messages, ages, memory, timeouts


async def test_no_bootstrap_peer_reached_is_unreachable_not_an_empty_list() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    ghost = memory_addr(str(Keypair.from_seed(bytes([8]) * 32).peer_id))
    config = DiscoveryConfig(find_wait=2.0, bootstrap=(ghost,))
    async with (
        node(P1, ledger, network, serve=PRICE),
        node(CLIENT, ledger, network, config=config) as client,
    ):
        await settle()
        with trio.fail_after(10), pytest.raises(NotJoined) as info:
            await client.find("echo")
        assert info.value.code is ErrorCode.UNREACHABLE
        assert ghost in info.value.message and "no bootstrap peer reached" in info.value.message
        assert info.value.details["bootstrap"] == {ghost: "no such peer on the memory network"}
        with trio.fail_after(10), pytest.raises(NotJoined):
            await client.call_any("echo", b"x", max_price=PRICE)
        assert client.channels() == []
    # one bootstrap peer reached out of two: joined
    reachable = memory_addr(str(P1.peer_id))
    both = DiscoveryConfig(find_wait=2.0, bootstrap=(ghost, reachable))
    async with (
        node(P1, ledger, network, serve=PRICE),
        node(CLIENT, ledger, network, config=both) as client,
    ):
        await settle()
        with trio.fail_after(10):
            assert len(await client.find("echo")) == 1
        assert client.discovery is not None and list(client.discovery.not_reached) == [ghost]


async def test_a_bootstrap_peer_that_comes_up_later_is_joined() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    boot_key = Keypair.from_seed(bytes([9]) * 32)
    boot = memory_addr(str(boot_key.peer_id))
    config = DiscoveryConfig(find_wait=2.0, bootstrap=(boot,), announce_interval_ms=1_000)
    async with node(CLIENT, ledger, network, config=config) as client:
        await settle()
        with trio.fail_after(10), pytest.raises(NotJoined):
            await client.find("echo")
        async with node(boot_key, ledger, network), node(P1, ledger, network, serve=PRICE):
            await settle()
            # find tries the bootstrap peer again before it gives up: joined now
            with trio.fail_after(10):
                offers = await client.find("echo")
            assert [o.peer for o in offers] == [str(P1.peer_id)]
            assert client.discovery is not None and not client.discovery.not_reached


async def test_the_announce_round_tries_unreached_bootstrap_peers_again() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    boot_key = Keypair.from_seed(bytes([9]) * 32)
    boot = memory_addr(str(boot_key.peer_id))
    config = DiscoveryConfig(find_wait=2.0, bootstrap=(boot,), announce_interval_ms=1_000)
    async with node(P1, ledger, network, serve=PRICE, config=config) as p1:
        await settle()
        assert p1.discovery is not None and p1.discovery.unjoined
        async with node(boot_key, ledger, network):
            with trio.fail_after(30):
                while p1.discovery.not_reached:
                    await trio.sleep(0.1)
            assert not p1.discovery.unjoined


async def test_offers_outside_the_terms_are_counted_and_nobody_is_said() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with node(P1, ledger, network, serve=PRICE), node(CLIENT, ledger, network) as client:
        await settle()
        d = client.discovery
        assert d is not None
        with trio.fail_after(10):
            assert await client.find("echo", max_price=PRICE - 1) == []
        left = d.unmatched("echo", max_price=PRICE - 1)
        assert (left.total, left.above_price, left.lowest_price) == (1, 1, PRICE)
        assert (left.below_stake, left.highest_stake) == (0, None)
        with trio.fail_after(10), pytest.raises(NoProvider) as info:
            await client.call_any("echo", b"x", max_price=PRICE - 1)
        assert info.value.message == (
            f"no offer of 'echo' at or below {PRICE - 1} yocto; "
            f"1 offer above (lowest {PRICE} yocto)"
        )
        with trio.fail_after(10), pytest.raises(NoProvider) as info:
            await client.call_any("echo", b"x", max_price=PRICE, min_stake=STAKE + 1)
        assert info.value.message == (
            f"no offer of 'echo' at or below {PRICE} yocto with a stake of at least {STAKE + 1} "
            f"yocto; 1 offer below the stake (highest {STAKE} yocto)"
        )
        with trio.fail_after(10), pytest.raises(NoProvider) as info:
            await client.call_any("nosuch", b"x", max_price=PRICE)
        assert info.value.message == "nobody offers 'nosuch': no live offer of it was found"
        assert info.value.code is ErrorCode.NO_PROVIDER


async def test_an_offer_says_when_it_expires_and_when_it_was_seen() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    async with node(P1, ledger, network, serve=PRICE), node(CLIENT, ledger, network) as client:
        await settle()
        with trio.fail_after(10):
            (offer,) = await client.find("echo")
        now = client.now()
        assert 0 < offer.expires_in_ms <= 3 * FIND.announce_interval_ms
        assert offer.expires_in_ms <= offer.expires - now + 1_000
        assert 0 <= offer.seen_ms_ago <= now - (offer.expires - 3 * FIND.announce_interval_ms)
        assert not hasattr(offer, "age_ms")


async def test_failures_seen_outlive_the_node_and_the_result_says_what_was_opened() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    store = MemoryStore()
    bootstrap = Keypair.from_seed(bytes([9]) * 32)
    joined = DiscoveryConfig(
        find_wait=2.0, max_deposit=10**7, bootstrap=(memory_addr(str(bootstrap.peer_id)),)
    )
    async with (
        node(bootstrap, ledger, network),
        node(P1, ledger, network, serve=PRICE // 2, config=joined),
        node(P2, ledger, network, serve=PRICE, config=joined),
    ):
        await settle()
        # the cheaper provider stops; the bootstrap node still holds its offer
        network.set_online(str(P1.peer_id), False)
        async with node(CLIENT, ledger, network, store=store, config=joined) as client:
            with trio.fail_after(30):
                first = await client.call_any("echo", b"hi", max_price=PRICE)
            assert [(a.peer, a.outcome) for a in first.attempts] == [
                (str(P1.peer_id), "unreachable"),
                (str(P2.peer_id), "ok"),
            ]
            assert first.opened and first.deposit == joined.deposit_calls * PRICE
            with trio.fail_after(30):
                again = await client.call_any("echo", b"hi", max_price=PRICE)
            assert [a.peer for a in again.attempts] == [str(P2.peer_id)]  # P1 ranked after
            assert not again.opened and again.channel == first.channel
            assert again.deposit == first.deposit
        assert await store.get_meta(STATS_KEY) is not None
        # a new node on the same store (the next `call any` process) remembers P1 failed:
        # it tries P2 first, though P1 is cheaper and its offer is still live
        async with node(CLIENT, ledger, network, store=store, config=joined) as client:
            assert client.discovery is not None
            assert client.discovery.chooser.stats(str(P1.peer_id)).failures == 1
            with trio.fail_after(10):
                found = await client.find("echo")
            assert found[0].peer == str(P1.peer_id)
            with trio.fail_after(30):
                third = await client.call_any("echo", b"hi", max_price=PRICE)
            assert [(a.peer, a.outcome) for a in third.attempts] == [(str(P2.peer_id), "ok")]
            # the second call taught nothing new (a success of a known good provider): it
            # was not written, so the stats read back count the first success only
            assert client.discovery.chooser.stats(str(P2.peer_id)).successes == 2


@pytest.mark.parametrize("damaged", [b"\x01\x02", b"[" * 100_000])  # (nested: round 31)
async def test_unreadable_saved_stats_are_forgotten_not_fatal(damaged: bytes) -> None:
    ledger = await funded()
    network = MemoryNetwork()
    store = MemoryStore()
    await store.write(Batch(meta={STATS_KEY: damaged}))
    async with node(CLIENT, ledger, network, store=store) as client:
        assert client.discovery is not None and client.discovery.chooser.snapshot() == []


def test_peer_stats_and_bans_round_trip_and_damage_is_ignored() -> None:
    chooser = Chooser(max_peers=3)
    chooser.record_failure("a", FailureKind.UNREACHABLE, 10)
    chooser.record_success("b", 40, 11)
    chooser.record_failure("c", FailureKind.TIMED_OUT, 12)
    other = Chooser(max_peers=3)
    assert other.restore(json.loads(json.dumps(chooser.snapshot()))) == 3
    assert other.snapshot() == chooser.snapshot()
    assert other.stats("c").last_failure is FailureKind.TIMED_OUT
    assert other.stats("c").last_failure_ms == 12
    good = ["a", 1, 0, 0, None, 0, None, 0]
    for bad in (
        [good[:7]],
        [["a", -1, *good[2:]]],
        [[*good[:6], "lost", 0]],
        [[*good[:7], None]],
        "not a list",
    ):
        assert Chooser().restore(bad) == 0
    assert Chooser().restore([good]) == 1


class Silent(Behaviour):
    """Takes every paid request and never answers it."""

    def drop(self, call: Call) -> bool:
        return True


async def test_a_timed_out_attempt_is_said_in_prose() -> None:
    ledger = await funded()
    network = MemoryNetwork()
    await ledger.stake(P1, STAKE, PENALTY, WINDOW)
    async with (
        open_node(
            key=P1,
            ledger=ledger,
            network=network,
            config=CONFIG,
            behaviour=Silent(),
            discovery=twin(network),
            discovery_config=FIND,
        ) as silent,  # fmt: skip
        node(CLIENT, ledger, network) as client,
    ):
        silent.serve("echo", echo, price=PRICE)
        await settle()
        with trio.fail_after(30), pytest.raises(NoProvider) as info:
            await client.call_any("echo", b"x", max_price=PRICE, timeout=0.3)
        (attempt,) = info.value.attempts
        assert attempt.outcome == "timed_out"  # the machine's word
        assert f"{silent.peer_id} timed out (DEADLINE_EXCEEDED" in info.value.message
        assert "timed_out" not in info.value.message


def test_dial_reason_says_why_once() -> None:
    peer = str(P1.peer_id)
    message = (
        f"cannot reach {peer}: cannot reach {peer} at /ip4/127.0.0.1/tcp/1: Error connecting "
        "to ('127.0.0.1', 1): Connection refused"
    )
    assert dial_reason(message, peer) == "Connection refused"
    assert dial_reason(f"cannot reach {peer} within 10.0 s", peer) == "no connection within 10.0 s"
    assert dial_reason("cannot connect to ourselves", peer) == "cannot connect to ourselves"


async def test_a_provider_with_64_services_is_spaced_and_never_rate_limited() -> None:
    # discovery.md 5.1 and 7.3: 64 services announced every second (the shortest interval)
    # would be 64 offers a second; the provider spaces them (every 60 s, each expiring three
    # spacings later) and a receiver keeps every one (the old limits dropped 4 of the first
    # publication and 34 of each later one)
    ledger = await funded()
    network = MemoryNetwork()
    fast = DiscoveryConfig(find_wait=2.0, announce_interval_ms=1_000)
    async with node(CLIENT, ledger, network) as client:
        await ledger.stake(P1, STAKE, PENALTY, WINDOW)
        async with node(P1, ledger, network, config=fast) as provider:
            for i in range(MAX_SERVICES_PER_PEER):
                provider.serve(f"s{i}", echo, price=PRICE)
            await settle()
            assert provider.discovery is not None and client.discovery is not None
            with trio.fail_after(30):
                while provider.discovery.announced < MAX_SERVICES_PER_PEER:
                    await trio.sleep(0.01)
                while len(client.discovery.book) < MAX_SERVICES_PER_PEER:
                    await trio.sleep(0.01)
            book = client.discovery.book
            assert book.counts[Drop.RATE_LIMITED] == 0
            spacing = announce_spacing_ms(MAX_SERVICES_PER_PEER)
            for i in range(MAX_SERVICES_PER_PEER):
                kept = book.get(str(P1.peer_id), f"s{i}")
                assert kept is not None
                # made at most a few seconds before it was received: it lives 3 spacings
                assert kept.offer.expires - kept.received_ms > 3 * spacing - 10_000


async def test_a_provider_faulty_on_a_channel_is_a_liar_and_gets_no_new_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """protocol.md 14.3 "A faulty payee", discovery.md 7.5: P1 (the cheaper) overcharges
    in its receipts (each `spent` one yocto too high: refused whatever the sample). The
    first `call_any` pays P1 one request, finds its receipt bad, counts P1 as lying and is
    served by P2. Neither that run nor a later one (on the same store, with the ban
    forgotten) opens another channel to P1 or signs another request for it: before, each
    run opened or reused P1's channel and paid it again."""
    forge = Response.create.__func__  # type: ignore[attr-defined]

    def create(cls: type[Response], key: Any, **kw: Any) -> Response:
        if kw.get("status") == "OK" and getattr(key, "public", None) == P1.public:
            kw["spent"] += 1
        return forge(cls, key, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(Response, "create", classmethod(create))
    ledger = await funded()
    network = MemoryNetwork()
    store = MemoryStore()
    async with (
        node(P1, ledger, network, serve=PRICE // 2),
        node(P2, ledger, network, serve=PRICE),
    ):
        async with node(CLIENT, ledger, network, store=store) as client:
            await settle()
            with trio.fail_after(30):
                first = await client.call_any("echo", b"hi", max_price=PRICE)
            assert first.peer == str(P2.peer_id) and first.body == b"hi"
            (lied, ok) = first.attempts
            assert (lied.peer, lied.outcome, lied.code) == (str(P1.peer_id), "lied", "PAYEE_FAULTY")
            assert ok.outcome == "ok"
            to_p1 = [ch for ch in client.payer_channels.values() if ch.payee == P1.account]
            assert len(to_p1) == 1 and to_p1[0].faulty is not None
            assert (to_p1[0].last_n, to_p1[0].paid) == (1, PRICE // 2)
            with trio.fail_after(30):
                again = await client.call_any("echo", b"hi", max_price=PRICE)
            assert [a.peer for a in again.attempts] == [str(P2.peer_id)]  # P1 is banned
        # the next run on the same store, its bans lost: the mark alone keeps P1 out
        await store.write(Batch(meta={STATS_KEY: b"\x01\x02"}))
        async with node(CLIENT, ledger, network, store=store) as client:
            await settle()
            with trio.fail_after(30):
                third = await client.call_any("echo", b"hi", max_price=PRICE)
            assert [(a.peer, a.outcome) for a in third.attempts] == [
                (str(P1.peer_id), "lied"),
                (str(P2.peer_id), "ok"),
            ]
            to_p1 = [ch for ch in client.payer_channels.values() if ch.payee == P1.account]
            assert len(to_p1) == 1 and (to_p1[0].last_n, to_p1[0].paid) == (1, PRICE // 2)
            # a call naming P1 signs nothing either: PAYEE_FAULTY, the channel named
            with trio.fail_after(10), pytest.raises(PayeeFaulty) as info:
                await client.call(memory_addr(str(P1.peer_id)), "echo", b"x", max_price=PRICE)
            assert info.value.details == {"channel": to_p1[0].channel.hex()}
            assert to_p1[0].last_n == 1
