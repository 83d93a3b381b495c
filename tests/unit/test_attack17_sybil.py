"""Attack 17-3: three Sybil providers (a 1-yocto stake each, priced 1 yocto below the honest
provider) that refuse every call denied `call any` to every command-line client.

`p2pay call any` is a new process for every call: the `Chooser`'s memory of who failed
(specs/discovery.md 8) started empty each time, so the same three cheapest offers were
tried first every time (max_attempts = 3) and the call failed NO_PROVIDER forever; the
honest provider was never reached (reproduced against real `node run` processes by
/work/attack17/a3_sybil.py). discovery.md 8 now says a client keeps what it saw of each
provider across its runs; the reference keeps it in its store.

Here two runs of a client share one store, like two `p2pay call any` on one home.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from p2pay.core.identity import Keypair
from p2pay.core.messages import StakeTerms
from p2pay.core.offers import LIE_BAN_MS, Chooser, FailureKind, Offer, OfferBook
from p2pay.net.memory import MemoryNetwork
from p2pay.node import Call, NoProvider
from p2pay.store.memory import MemoryStore
from tests.unit.test_node_discovery import (
    CLIENT,
    P1,
    PENALTY,
    PRICE,
    STAKE,
    TOKEN,
    WINDOW,
    funded,
    node,
    settle,
)

SYBILS = [Keypair.from_seed(bytes([40 + i]) * 32) for i in range(3)]


async def refuse(call: Call) -> bytes:
    raise RuntimeError("no")


async def test_providers_that_failed_are_not_tried_first_at_the_next_run() -> None:
    ledger = await funded()
    for key in SYBILS:
        await ledger.mint(key, key.account, TOKEN)
        await ledger.stake(key, 1, 1, 60_000)  # a 1-yocto stake: any offer's minimum
    network = MemoryNetwork()
    store = MemoryStore()  # the client's home
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(node(P1, ledger, network, serve=PRICE))
        for key in SYBILS:
            sybil = await stack.enter_async_context(node(key, ledger, network, serve=PRICE - 1))
            sybil.serve("echo", refuse, price=PRICE - 1)
        await settle()
        sybils = {str(k.peer_id) for k in SYBILS}
        async with node(CLIENT, ledger, network, store=store) as client:  # run 1
            with trio.fail_after(30), pytest.raises(NoProvider) as caught:
                await client.call_any("echo", b"hi", max_price=PRICE)
            assert {a.peer for a in caught.value.attempts} == sybils
            assert {a.outcome for a in caught.value.attempts} == {"refused"}
        async with node(CLIENT, ledger, network, store=store) as client:  # run 2
            with trio.fail_after(30):
                result = await client.call_any("echo", b"hi", max_price=PRICE)
            assert result.peer == str(P1.peer_id) and result.body == b"hi"


def test_a_choosers_memory_survives_a_snapshot_and_ignores_junk() -> None:
    chooser = Chooser()
    chooser.record_failure("a", FailureKind.REFUSED, 10)
    chooser.record_success("b", 7, 20)
    again = Chooser()
    assert again.restore(chooser.snapshot()) == 2
    assert again.stats("a") == chooser.stats("a") and again.stats("b") == chooser.stats("b")
    junk = [["c", -1, 0, 0, None, 0, None, 0], ["d", 1, 1, 1, None, 0, "lied", 5], "e", 3]
    junk += [["f", 1, 1, 1, None, 0, None]]  # an entry of another form
    assert Chooser().restore(junk) == 0 and Chooser().restore({"a": 1}) == 0
    assert len(Chooser().snapshot()) == 0
    many = Chooser()
    for i in range(20):
        many.record_failure(str(i), FailureKind.TIMED_OUT, i)
    assert [e[0] for e in many.snapshot(limit=3)] == ["17", "18", "19"]


async def test_providers_caught_lying_stay_banned_at_the_next_run() -> None:
    # The same with liars: offers 1 yocto under the honest price, a hello that asks double.
    # A lie bans for an hour (discovery.md 7.5), but the ban lived in the process: every
    # `p2pay call any` met the three liars first again and ran out of attempts.
    ledger = await funded()
    for key in SYBILS:
        await ledger.mint(key, key.account, TOKEN)
    network = MemoryNetwork()
    store = MemoryStore()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(node(P1, ledger, network, serve=PRICE))
        for key in SYBILS:
            liar = await stack.enter_async_context(node(key, ledger, network, serve=2 * PRICE))
            assert liar.discovery is not None
            lie = Offer.create(
                key, ledger=ledger.ledger_id, service="echo", price=PRICE - 1, max_body=1 << 20,
                stake=StakeTerms(amount=STAKE, penalty=PENALTY, claim_window_ms=WINDOW),
                addrs=tuple(liar.discovery._addrs()), seq=1 << 62, expires=liar.now() + 60_000,
            )  # fmt: skip
            await liar.discovery.net.publish(ledger.ledger_id, lie.encode())
        await settle()
        liars = {str(k.peer_id) for k in SYBILS}
        async with node(CLIENT, ledger, network, store=store) as client:  # run 1
            with trio.fail_after(30), pytest.raises(NoProvider) as caught:
                await client.call_any("echo", b"hi", max_price=PRICE)
            assert {(a.peer, a.outcome) for a in caught.value.attempts} == {
                (p, "lied") for p in liars
            }
        async with node(CLIENT, ledger, network, store=store) as client:  # run 2
            with trio.fail_after(30):
                result = await client.call_any("echo", b"hi", max_price=PRICE)
            assert result.peer == str(P1.peer_id)


def test_bans_survive_a_snapshot_and_a_damaged_one_bans_nobody_longer() -> None:
    book = OfferBook(b"p2pay:test:discovery")
    book.lie("a", "test", 1_000)
    book.lie("b", "test", 2_000)
    again = OfferBook(b"p2pay:test:discovery")
    assert again.restore_bans(book.bans(3_000), 3_000) == 2
    assert again.banned("a", 3_000) and again.banned("b", 1_000 + LIE_BAN_MS)
    assert not again.banned("a", 1_000 + LIE_BAN_MS)  # ends when it would have
    assert book.bans(2_000 + LIE_BAN_MS) == []  # ended: not kept
    junk = [["c", 10**18], ["d", 1], ["e"], [5, 4_000], "f"]  # too long, ended, malformed
    fresh = OfferBook(b"p2pay:test:discovery")
    assert fresh.restore_bans(junk, 3_000) == 0 and fresh.restore_bans({"a": 1}, 3_000) == 0
