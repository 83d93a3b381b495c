"""The offer book and the chooser (specs/discovery.md 7 and 8): one test per rule, named
after it, and a property test that no sequence of received offers breaks the book's caps
or makes it return an offer that is expired, banned or unverified."""

from __future__ import annotations

import functools
import hashlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pay.core.errors import LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, ServiceTerms, StakeTerms
from p2pay.core.offers import (
    FAILURE_FORGET_MS,
    FAILURE_SKIP_MS,
    LIE_BAN_MS,
    MAX_SERVICES_PER_PEER,
    OFFER_BURST,
    OFFERS_PER_MINUTE,
    STAKE_READ_RETRY_MS,
    STAKE_RECHECK_MS,
    Chooser,
    Drop,
    FailureKind,
    KeptOffer,
    Offer,
    OfferBook,
    announce_spacing_ms,
    decode_offer,
    stake_covers,
)
from p2pay.core.settlement import Stake

LEDGER = b"p2pay:vectors:ledger-1"
NOW = 1_767_225_600_000
KEYS = [Keypair.from_seed(bytes([i + 1]) * 32) for i in range(8)]
BOB, ALICE, CAROL = KEYS[1], KEYS[0], KEYS[2]
TERMS = StakeTerms(amount=1000, penalty=10, claim_window_ms=60_000)


@functools.cache
def offer(
    key: Keypair = BOB,
    *,
    service: str = "echo",
    price: int = 100,
    seq: int = 1,
    expires: int = NOW + 180_000,
    amount: int = 1000,
    penalty: int = 10,
    window: int = 60_000,
    ledger: bytes = LEDGER,
) -> bytes:
    return Offer.create(
        key,
        ledger=ledger,
        service=service,
        price=price,
        max_body=1024,
        stake=StakeTerms(amount=amount, penalty=penalty, claim_window_ms=window),
        addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{key.peer_id}"],
        seq=seq,
        expires=expires,
    ).encode()


def ledger_stake(key: Keypair = BOB, **kw: int) -> Stake:
    fields = {"amount": 1000, "penalty": 10, "claim_window_ms": 60_000} | kw
    return Stake(account=key.public, **fields)


def verified_book(*keys: Keypair, book: OfferBook | None = None, **kw: object) -> OfferBook:
    book = book or OfferBook(LEDGER)
    for key in keys or (BOB,):
        verdict = book.receive(offer(key, **kw), sender=key.peer_id, now_ms=NOW)  # type: ignore[arg-type]
        assert verdict.accepted, verdict
        assert book.stake_checked(key.peer_id, ledger_stake(key), NOW)
    return book


# --------------------------------------------------------------------------- 7: check order


def test_7_rule_1_rate_is_checked_before_anything_else() -> None:
    book = OfferBook(LEDGER, burst=1)
    assert book.receive(b"junk", sender="s", now_ms=NOW).dropped is Drop.MALFORMED
    assert book.receive(offer(), sender="s", now_ms=NOW).dropped is Drop.RATE_LIMITED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00" * 5000, Drop.MALFORMED),
        (b"\x83\x04", Drop.MALFORMED),
        (offer(ledger=b"other"), Drop.WRONG_LEDGER),
        (offer(expires=NOW), Drop.EXPIRED),
        (offer(expires=NOW + 86_400_001), Drop.EXPIRED),
    ],
)
def test_7_rule_2_failed_checks_are_dropped_and_counted_by_reason(
    data: bytes, reason: Drop
) -> None:
    book = OfferBook(LEDGER)
    verdict = book.receive(data, sender="s", now_ms=NOW)
    assert verdict.dropped is reason and not verdict.accepted and len(book) == 0
    assert book.counts[reason] == 1


def test_7_rule_2_a_forged_signature_is_invalid_signature() -> None:
    real = Offer.create(
        BOB,
        ledger=LEDGER,
        service="echo",
        price=1,
        max_body=1,
        stake=TERMS,
        addrs=[f"/ip4/1.2.3.4/tcp/1/p2p/{BOB.peer_id}"],
        seq=1,
        expires=NOW + 1000,
    )
    forged = real.with_signature(ALICE.sign(real.signing_bytes)).encode()
    assert OfferBook(LEDGER).receive(forged, sender="s", now_ms=NOW).dropped is (
        Drop.INVALID_SIGNATURE
    )


def test_7_rule_3_fetch_reply_offer_of_another_service_is_dropped() -> None:
    book = OfferBook(LEDGER)
    verdict = book.receive(offer(service="other"), sender="s", now_ms=NOW, service="echo")
    assert verdict.dropped is Drop.WRONG_SERVICE
    assert book.receive(offer(), sender="s", now_ms=NOW, service="echo").accepted


def test_7_rule_4_offers_of_a_banned_peer_are_dropped() -> None:
    book = OfferBook(LEDGER)
    book.lie(BOB.peer_id, "test", NOW)
    assert book.receive(offer(seq=9), sender="s", now_ms=NOW).dropped is Drop.BANNED


def test_7_4_an_offer_with_stake_zero_is_not_kept() -> None:
    book = OfferBook(LEDGER)
    assert book.receive(offer(amount=0), sender="s", now_ms=NOW).dropped is Drop.NO_STAKE
    assert book.counts[Drop.NO_STAKE] == 1 and len(book) == 0


def test_7_4_an_offer_below_the_minimum_stake_is_not_kept() -> None:
    book = OfferBook(LEDGER, min_stake=1001)
    assert book.receive(offer(), sender="s", now_ms=NOW).dropped is Drop.BELOW_MIN_STAKE
    assert book.receive(offer(amount=1001, seq=2), sender="s", now_ms=NOW).accepted


# --------------------------------------------------------------------------- 7.1 seq


def test_7_1_newest_offer_only_lower_or_equal_seq_is_stale() -> None:
    book = OfferBook(LEDGER)
    assert book.receive(offer(seq=5), sender="s", now_ms=NOW).accepted
    assert book.receive(offer(seq=5), sender="s", now_ms=NOW).dropped is Drop.STALE
    assert book.receive(offer(seq=4, price=1), sender="s", now_ms=NOW).dropped is Drop.STALE
    kept = book.get(BOB.peer_id, "echo")
    assert kept is not None and kept.offer.seq == 5 and kept.offer.price == 100
    assert book.receive(offer(seq=6, price=7), sender="s", now_ms=NOW).accepted
    kept = book.get(BOB.peer_id, "echo")
    assert kept is not None and kept.offer.price == 7 and len(book) == 1


def test_7_1_seq_is_per_peer_and_service() -> None:
    book = OfferBook(LEDGER)
    assert book.receive(offer(seq=5), sender="s", now_ms=NOW).accepted
    assert book.receive(offer(seq=1, service="x"), sender="s", now_ms=NOW).accepted
    assert book.receive(offer(ALICE, seq=1), sender="s", now_ms=NOW).accepted
    assert len(book) == 3


# --------------------------------------------------------------------------- 7.2 expiry


def test_7_2_an_expired_offer_is_never_returned_and_is_forgotten() -> None:
    book = verified_book(expires=NOW + 1000)
    assert [k.offer.peer_id for k in book.live("echo", now_ms=NOW + 999)] == [BOB.peer_id]
    assert book.live("echo", now_ms=NOW + 1000) == []
    assert book.expire(NOW + 1000) == 1 and len(book) == 0


# --------------------------------------------------------------------------- 7.3 rate


def test_7_3_a_sender_has_a_burst_then_a_steady_rate() -> None:
    book = OfferBook(LEDGER)
    assert (OFFERS_PER_MINUTE, OFFER_BURST) == (128, 128)  # discovery.md 7.3
    token_ms = -(-60_000 // OFFERS_PER_MINUTE)  # the first whole millisecond with a token
    for _ in range(OFFER_BURST):
        assert book.receive(b"x", sender="s", now_ms=NOW).dropped is Drop.MALFORMED
    assert book.receive(b"x", sender="s", now_ms=NOW).dropped is Drop.RATE_LIMITED
    assert book.receive(b"x", sender="s", now_ms=NOW + token_ms - 1).dropped is Drop.RATE_LIMITED
    assert book.receive(b"x", sender="s", now_ms=NOW + token_ms).dropped is Drop.MALFORMED
    # after ten minutes the bucket is full again, and no fuller
    later = NOW + 10 * 60_000
    outcomes = [
        book.receive(b"x", sender="s", now_ms=later).dropped for _ in range(OFFER_BURST + 1)
    ]
    assert outcomes.count(Drop.MALFORMED) == OFFER_BURST and outcomes[-1] is Drop.RATE_LIMITED


def test_7_3_the_rate_limit_is_per_sender() -> None:
    book = OfferBook(LEDGER, burst=1)
    assert book.receive(b"x", sender="a", now_ms=NOW).dropped is Drop.MALFORMED
    assert book.receive(b"x", sender="a", now_ms=NOW).dropped is Drop.RATE_LIMITED
    assert book.receive(b"x", sender="b", now_ms=NOW).dropped is Drop.MALFORMED
    assert book.counts[Drop.RATE_LIMITED] == 1


def test_7_3_a_clock_going_back_refills_nothing() -> None:
    book = OfferBook(LEDGER, per_minute=30, burst=1)  # a token every 2 s
    book.receive(b"x", sender="a", now_ms=NOW)
    assert book.receive(b"x", sender="a", now_ms=NOW - 60_000).dropped is Drop.RATE_LIMITED
    assert book.receive(b"x", sender="a", now_ms=NOW + 1999).dropped is Drop.RATE_LIMITED
    assert book.receive(b"x", sender="a", now_ms=NOW + 2000).dropped is Drop.MALFORMED


def test_7_3_an_honest_provider_with_every_service_it_may_have_is_never_rate_limited() -> None:
    # 64 services (the most a book keeps of one peer), published as 5.1 allows: every
    # spacing at the earliest, each publication followed by one for a change of terms as
    # soon as the spacing allows it. The old limits (30 a minute, burst 60) dropped 4 of
    # the first publication's 64 and 34 of each later one.
    book = OfferBook(LEDGER)
    spacing = announce_spacing_ms(MAX_SERVICES_PER_PEER)
    assert spacing >= 60_000 * MAX_SERVICES_PER_PEER // OFFERS_PER_MINUTE
    for round_ in range(10):
        now = NOW + round_ * spacing
        for i in range(MAX_SERVICES_PER_PEER):
            data = offer(service=f"s{i}", seq=1 + round_ * 64 + i, expires=now + 3 * spacing)
            assert book.receive(data, sender=BOB.peer_id, now_ms=now).accepted
    assert book.counts[Drop.RATE_LIMITED] == 0


def test_5_1_announce_spacing_uses_at_most_half_the_rate() -> None:
    assert announce_spacing_ms(0) == 0
    assert announce_spacing_ms(1) == -(-2 * 60_000 // OFFERS_PER_MINUTE)
    assert announce_spacing_ms(MAX_SERVICES_PER_PEER) == 60_000  # the default interval
    for count in range(1, 200):
        spacing = announce_spacing_ms(count)
        assert count * 60_000 * 2 <= spacing * OFFERS_PER_MINUTE  # at most half the rate
        assert (spacing - 1) * OFFERS_PER_MINUTE < count * 60_000 * 2  # the least such
    assert OFFER_BURST >= MAX_SERVICES_PER_PEER  # a whole publication fits in the burst
    with pytest.raises(LocalProtocolError):
        announce_spacing_ms(-1)


# --------------------------------------------------------------------------- 7.4 caps


def test_7_4_at_most_64_services_per_peer() -> None:
    book = OfferBook(LEDGER, per_minute=10**6, burst=10**6)
    for i in range(64):
        assert book.receive(offer(service=f"s{i}"), sender="s", now_ms=NOW).accepted
    assert book.receive(offer(service="s64"), sender="s", now_ms=NOW).dropped is Drop.PEER_FULL
    # a newer offer of a kept service still replaces it
    assert book.receive(offer(service="s0", seq=2), sender="s", now_ms=NOW).accepted
    assert len(book) == 64


def test_7_4_a_full_book_evicts_the_offer_expiring_first() -> None:
    book = OfferBook(LEDGER, max_offers=3)
    for key, expires in ((BOB, NOW + 5000), (ALICE, NOW + 3000), (CAROL, NOW + 4000)):
        assert book.receive(offer(key, expires=expires), sender="s", now_ms=NOW).accepted
    assert book.receive(offer(KEYS[3], expires=NOW + 6000), sender="s", now_ms=NOW).accepted
    assert book.get(ALICE.peer_id, "echo") is None and len(book) == 3
    assert book.counts[Drop.EVICTED] == 1


def test_7_4_a_full_book_drops_a_new_offer_that_expires_first() -> None:
    book = OfferBook(LEDGER, max_offers=2)
    book.receive(offer(BOB, expires=NOW + 5000), sender="s", now_ms=NOW)
    book.receive(offer(ALICE, expires=NOW + 4000), sender="s", now_ms=NOW)
    verdict = book.receive(offer(CAROL, expires=NOW + 4000), sender="s", now_ms=NOW)
    assert verdict.dropped is Drop.BOOK_FULL and len(book) == 2


def test_7_4_a_full_book_forgets_expired_offers_first() -> None:
    book = OfferBook(LEDGER, max_offers=2)
    book.receive(offer(BOB, expires=NOW + 5000), sender="s", now_ms=NOW)
    book.receive(offer(ALICE, expires=NOW + 1000), sender="s", now_ms=NOW)
    later = NOW + 2000
    assert book.receive(offer(CAROL, expires=NOW + 3000), sender="s", now_ms=later).accepted
    assert book.counts[Drop.EVICTED] == 0 and book.get(BOB.peer_id, "echo") is not None


# --------------------------------------------------------------------------- 7.5 stake, lies


def test_7_5_an_offer_is_unverified_until_the_ledger_read_covers_it() -> None:
    book = OfferBook(LEDGER)
    verdict = book.receive(offer(), sender="s", now_ms=NOW)
    assert verdict.accepted and verdict.needs_stake_check
    assert verdict.kept is not None and not verdict.kept.verified
    assert book.live("echo", now_ms=NOW) == []
    assert book.encoded("echo", now_ms=NOW) == []
    assert book.stake_checked(BOB.peer_id, ledger_stake(), NOW)
    live = book.live("echo", now_ms=NOW)
    assert [k.offer.peer_id for k in live] == [BOB.peer_id] and live[0].verified
    assert book.encoded("echo", now_ms=NOW) == [offer()]


def test_7_5_one_read_at_a_time_per_provider_retried_after_30_s() -> None:
    book = OfferBook(LEDGER)
    assert book.receive(offer(service="a"), sender="s", now_ms=NOW).needs_stake_check
    assert not book.receive(offer(service="b"), sender="s", now_ms=NOW + 1).needs_stake_check
    later = NOW + STAKE_READ_RETRY_MS
    assert book.receive(offer(service="c"), sender="s", now_ms=later).needs_stake_check


def test_7_5_a_read_covers_later_offers_for_10_minutes() -> None:
    book = verified_book()
    later = NOW + STAKE_RECHECK_MS
    verdict = book.receive(offer(seq=2, expires=later + 1000), sender="s", now_ms=later - 1)
    assert verdict.kept is not None and verdict.kept.verified and not verdict.needs_stake_check
    verdict = book.receive(offer(seq=3, expires=later + 1000), sender="s", now_ms=later)
    assert verdict.kept is not None and not verdict.kept.verified and verdict.needs_stake_check


def test_7_5_a_later_offer_stating_more_than_was_read_needs_a_new_read() -> None:
    book = verified_book()
    verdict = book.receive(offer(seq=2, amount=1001), sender="s", now_ms=NOW + 1)
    assert verdict.kept is not None and not verdict.kept.verified and verdict.needs_stake_check
    assert book.live("echo", now_ms=NOW + 1) == []


@pytest.mark.parametrize(
    "stake",
    [
        None,
        ledger_stake(amount=999),
        ledger_stake(penalty=9),
        ledger_stake(claim_window_ms=60_001),
        ledger_stake(claim_window_ms=59_999),
        ledger_stake(unbonding_at=NOW + 1),
        ledger_stake(ALICE),
    ],
    ids=["none", "amount", "penalty", "window+", "window-", "unbonding", "account"],
)
def test_7_5_a_ledger_read_that_does_not_cover_the_offer_is_a_lie(stake: Stake | None) -> None:
    book = OfferBook(LEDGER)
    book.receive(offer(), sender="s", now_ms=NOW)
    book.receive(offer(service="other"), sender="s", now_ms=NOW)
    assert not book.stake_checked(BOB.peer_id, stake, NOW)
    assert len(book) == 0 and book.banned(BOB.peer_id, NOW)
    assert book.counts[Drop.LIES] == 1 and book.counts[Drop.DROPPED_BY_LIE] == 2


def test_7_5_more_stake_than_offered_covers_it() -> None:
    assert stake_covers(ledger_stake(amount=10**9, penalty=10**6), decode_offer(offer()))
    book = OfferBook(LEDGER)
    book.receive(offer(), sender="s", now_ms=NOW)
    assert book.stake_checked(BOB.peer_id, ledger_stake(amount=10**9), NOW)


def test_7_5_a_liar_is_ignored_for_an_hour() -> None:
    book = verified_book()
    assert book.lie(BOB.peer_id, "test", NOW) == 1
    assert book.live("echo", now_ms=NOW) == [] and len(book) == 0
    later = NOW + LIE_BAN_MS - 1
    data = offer(seq=2, expires=later + 1000)
    assert book.receive(data, sender="s", now_ms=later).dropped is Drop.BANNED
    after = NOW + LIE_BAN_MS
    assert not book.banned(BOB.peer_id, after)
    assert book.receive(offer(seq=3, expires=after + 1000), sender="s", now_ms=after).accepted


def test_7_5_bans_are_capped_forgetting_the_one_ending_first() -> None:
    book = OfferBook(LEDGER, max_offers=2)
    book.lie("a", "", NOW)
    book.lie("b", "", NOW + 1)
    book.lie("c", "", NOW + 2)
    assert not book.banned("a", NOW + 2) and book.banned("b", NOW + 2) and book.banned("c", NOW + 2)


def _hello(price: int = 100, stake: StakeTerms | None = TERMS) -> Hello:
    return Hello.create(
        BOB,
        ledger=LEDGER,
        services=(ServiceTerms(name="echo", price=price, max_body=1),),
        stake=stake,
    )


def test_7_5_a_hello_that_agrees_with_the_offer_is_no_lie() -> None:
    book = verified_book()
    assert book.hello_seen(BOB.peer_id, _hello(), NOW) and len(book) == 1


@pytest.mark.parametrize(
    "hello",
    [
        _hello(price=101),
        _hello(stake=None),
        _hello(stake=StakeTerms(amount=1000, penalty=10, claim_window_ms=1)),
        _hello(stake=StakeTerms(amount=999, penalty=10, claim_window_ms=60_000)),
        _hello(stake=StakeTerms(amount=1000, penalty=9, claim_window_ms=60_000)),
    ],
    ids=["price-up", "no-stake", "window", "amount", "penalty"],
)
def test_7_5_a_hello_announcing_worse_terms_is_a_lie(hello: Hello) -> None:
    book = verified_book()
    assert not book.hello_seen(BOB.peer_id, hello, NOW)
    assert book.banned(BOB.peer_id, NOW) and len(book) == 0


@pytest.mark.parametrize(
    "hello",
    [
        _hello(price=99),
        _hello(stake=StakeTerms(amount=1001, penalty=11, claim_window_ms=60_000)),
    ],
    ids=["price-down", "more-stake"],
)
def test_7_5_a_hello_announcing_better_terms_is_no_lie(hello: Hello) -> None:
    book = verified_book()
    assert book.hello_seen(BOB.peer_id, hello, NOW)
    assert not book.banned(BOB.peer_id, NOW) and len(book) == 1


def test_7_5_payment_required_above_the_offer_price_is_a_lie() -> None:
    book = verified_book()
    assert book.price_seen(BOB.peer_id, "echo", 100, NOW)
    assert book.price_seen(BOB.peer_id, "echo", 50, NOW)
    assert book.price_seen(BOB.peer_id, "unknown", 10**9, NOW)  # no offer: nothing to judge
    assert not book.price_seen(BOB.peer_id, "echo", 101, NOW)
    assert book.banned(BOB.peer_id, NOW)


# --------------------------------------------------------------------------- live


def test_7_live_filters_by_price_and_stake_and_sorts() -> None:
    book = OfferBook(LEDGER)
    for key, price, amount in ((BOB, 100, 1000), (ALICE, 50, 1000), (CAROL, 50, 5000)):
        book.receive(offer(key, price=price, amount=amount), sender="s", now_ms=NOW)
        assert book.stake_checked(key.peer_id, ledger_stake(key, amount=amount), NOW)
    peers = [k.offer.peer_id for k in book.live("echo", now_ms=NOW)]
    assert peers == [CAROL.peer_id, ALICE.peer_id, BOB.peer_id]
    assert [k.offer.price for k in book.live("echo", now_ms=NOW, max_price=50)] == [50, 50]
    assert [k.offer.peer_id for k in book.live("echo", now_ms=NOW, min_stake=2000)] == [
        CAROL.peer_id
    ]
    assert book.live("other", now_ms=NOW) == []


def test_book_refuses_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        OfferBook(b"")
    with pytest.raises(LocalProtocolError):
        OfferBook(LEDGER, max_offers=0)
    with pytest.raises(LocalProtocolError):
        OfferBook(LEDGER).receive(offer(), sender="s", now_ms=-1)


# --------------------------------------------------------------------------- 8 choice


def kept(key: Keypair, price: int = 100, amount: int = 1000) -> KeptOffer:
    data = offer(key, price=price, amount=amount)
    return KeptOffer(offer=decode_offer(data), data=data, received_ms=NOW, verified=True)


def test_8_rank_by_failures_then_price_then_stake_then_latency_then_tie_break() -> None:
    chooser = Chooser(client="me")
    a, b, c, d, e = (kept(k) for k in KEYS[:5])
    cheap = kept(KEYS[5], price=50)
    staked = kept(KEYS[6], amount=5000)
    chooser.record_failure(a.offer.peer_id, FailureKind.UNREACHABLE, NOW)
    chooser.record_success(b.offer.peer_id, 30, NOW)
    chooser.record_success(c.offer.peer_id, 10, NOW)
    ranked = chooser.rank([a, b, c, d, e, cheap, staked], NOW)
    by_tie = sorted((d, e), key=lambda k: hashlib.sha256(b"me" + k.offer.peer_id.encode()).digest())
    assert ranked == [cheap, staked, *by_tie, c, b, a]  # unmeasured count as 0 ms


def test_8_the_tie_break_is_salted_by_the_client_so_clients_spread() -> None:
    equals = [kept(k) for k in KEYS]
    firsts = {Chooser(client=f"client-{i}").rank(equals, NOW)[0].offer.peer_id for i in range(40)}
    assert len(firsts) > 1  # with PeerID order every client picked the same provider
    one = Chooser(client="client-1")
    assert one.rank(equals, NOW) == one.rank(list(reversed(equals)), NOW)


def test_8_a_failure_older_than_the_forget_time_no_longer_ranks_a_peer_behind() -> None:
    chooser = Chooser(client="me")
    a, b = kept(KEYS[0]), kept(KEYS[1], price=101)
    chooser.record_failure(a.offer.peer_id, FailureKind.UNREACHABLE, NOW)
    assert chooser.rank([a, b], NOW + FAILURE_FORGET_MS - 1) == [b, a]
    assert chooser.rank([a, b], NOW + FAILURE_FORGET_MS) == [a, b]  # cheaper again


def test_8_rank_is_deterministic_whatever_the_input_order() -> None:
    chooser = Chooser()
    offers = [kept(k) for k in KEYS]
    assert chooser.rank(offers, NOW) == chooser.rank(list(reversed(offers)), NOW)
    assert chooser.rank([k.offer for k in offers], NOW) == [
        k.offer for k in chooser.rank(offers, NOW)
    ]


def test_8_three_consecutive_failures_skip_the_peer_for_5_minutes() -> None:
    chooser = Chooser()
    bob = kept(BOB)
    peer = bob.offer.peer_id
    for kind in (FailureKind.UNREACHABLE, FailureKind.REFUSED):
        chooser.record_failure(peer, kind, NOW)
        assert chooser.rank([bob], NOW) == [bob]
    chooser.record_failure(peer, FailureKind.TIMED_OUT, NOW)
    assert chooser.rank([bob], NOW + FAILURE_SKIP_MS - 1) == []
    assert chooser.rank([bob], NOW + FAILURE_SKIP_MS) == [bob]
    chooser.record_failure(peer, "refused", NOW + FAILURE_SKIP_MS)  # type: ignore[arg-type]
    assert chooser.skipped(peer, NOW + 2 * FAILURE_SKIP_MS - 1)
    chooser.record_success(peer, 5, NOW + 2 * FAILURE_SKIP_MS)
    stats = chooser.stats(peer)
    assert (stats.successes, stats.failures, stats.consecutive_failures) == (1, 4, 0)
    stats.successes = 99  # a copy: the chooser's own record is not changed through it
    assert chooser.stats(peer).successes == 1
    assert not chooser.skipped(peer, NOW + 2 * FAILURE_SKIP_MS)


def test_8_latency_is_an_integer_moving_average() -> None:
    chooser = Chooser()
    for sample in (100, 20, 20, 7):
        chooser.record_success("p", sample, NOW)
    # 100, (300 + 20) // 4 = 80, (240 + 20) // 4 = 65, (195 + 7) // 4 = 50
    assert chooser.stats("p").latency_ms == 50


def test_8_chooser_refuses_bad_arguments_and_caps_its_peers() -> None:
    chooser = Chooser(max_peers=2)
    with pytest.raises(LocalProtocolError):
        chooser.record_failure("p", "lost", NOW)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        chooser.record_success("p", -1, NOW)
    for peer in ("a", "b", "c"):
        chooser.record_success(peer, 1, NOW)
    assert chooser.stats("a").successes == 0 and chooser.stats("c").successes == 1


# --------------------------------------------------------------------------- property

MAX_OFFERS_TEST = 3
PER_PEER_TEST = 2
MIN_STAKE_TEST = 500
PEERS_TEST = KEYS[:2]
_peers = st.sampled_from(PEERS_TEST)
_received = st.tuples(
    st.just("receive"),
    _peers,
    st.sampled_from(["a", "b", "c"]),
    st.integers(1, 4),  # seq
    st.sampled_from([1000, 20_000, 200_000, 200_000]),  # expires after the start
    st.sampled_from([0, 300, 600, 1000]),  # stake amount stated
    st.sampled_from(["s1", "s2"]),  # sender
)
_checked = st.tuples(st.just("stake"), _peers, st.sampled_from([None, 500, 700, 1000, 2000]))
_lied = st.tuples(st.just("lie"), _peers)
_waited = st.tuples(st.just("wait"), st.integers(0, 30_000))
# mostly offers received, some ledger reads, a few lies and waits
_ops = st.integers(0, 9).flatmap(
    lambda i: _received if i < 6 else _checked if i < 8 else _lied if i < 9 else _waited
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ops, min_size=5, max_size=80))
@example(  # a read covering 600, then a newer offer stating 1000
    [
        ("receive", KEYS[0], "a", 1, 200_000, 600, "s1"),
        ("stake", KEYS[0], 700),
        ("receive", KEYS[0], "a", 2, 200_000, 1000, "s1"),
    ]
)
def test_no_sequence_of_offers_breaks_the_caps_or_returns_a_dead_offer(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """Whatever arrives, in whatever order: the book keeps at most its caps, and `live`
    returns only offers that are verified by a ledger read that covers them, live, from a
    peer not banned, of the service asked, staking at least the minimum."""
    book = OfferBook(
        LEDGER,
        min_stake=MIN_STAKE_TEST,
        max_offers=MAX_OFFERS_TEST,
        max_services_per_peer=PER_PEER_TEST,
    )
    now = NOW
    bans: dict[str, int] = {}
    covered: dict[str, int] = {}  # peer -> the stake amount of its last read that covered
    for op in ops:
        if op[0] == "receive":
            _, key, service, seq, ttl, amount, sender = op
            data = offer(key, service=service, seq=seq, expires=NOW + ttl, amount=amount)
            verdict = book.receive(data, sender=sender, now_ms=now)
            if verdict.accepted:
                assert amount >= MIN_STAKE_TEST and not book.banned(key.peer_id, now)
        elif op[0] == "stake":
            _, key, amount = op
            stake = None if amount is None else ledger_stake(key, amount=amount)
            if book.stake_checked(key.peer_id, stake, now):
                if amount is not None:
                    covered[key.peer_id] = amount
            else:
                bans[key.peer_id] = now + LIE_BAN_MS
                covered.pop(key.peer_id, None)
        elif op[0] == "lie":
            book.lie(op[1].peer_id, "test", now)
            bans[op[1].peer_id] = now + LIE_BAN_MS
            covered.pop(op[1].peer_id, None)
        else:
            now += op[1]
        assert len(book) <= MAX_OFFERS_TEST
        for key in PEERS_TEST:
            services = [s for s in "abc" if book.get(key.peer_id, s) is not None]
            assert len(services) <= PER_PEER_TEST
        for service in "abc":
            for kept_offer in book.live(service, now_ms=now):
                o = kept_offer.offer
                assert kept_offer.verified and o.expires > now and o.name == service
                assert o.stake.amount >= MIN_STAKE_TEST
                assert not (o.peer_id in bans and now < bans[o.peer_id])
                assert o.stake.amount <= covered[o.peer_id]
