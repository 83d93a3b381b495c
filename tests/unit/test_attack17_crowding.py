"""Attack 17-6: identities with a token stake crowd an honest provider out of a bootstrap
node's fetch answers.

A fetch answer holds at most 16 offers (discovery.md 6); a bootstrap node answers from its
book, and took the 16 cheapest. Sixteen identities, each with a 1-yocto stake on the ledger
(a real stake: their offers are verified) and a price of 0, filled every answer: a client
that joined through the bootstrap node never saw the honest provider there (it still could
by gossip, once a minute, or the DHT, whose per-key records the same identities can also
fill). discovery.md 6 now says a responder answering with others' offers takes those with
the largest stake first: crowding it then costs real stake.
"""

from __future__ import annotations

from p2pay.core.identity import Keypair
from p2pay.core.offers import MAX_FETCH_OFFERS, OfferBook
from tests.unit.test_offer_book import LEDGER, NOW, ledger_stake, offer

HONEST = Keypair.from_seed(bytes([90]) * 32)
SYBILS = [Keypair.from_seed(bytes([100 + i]) * 32) for i in range(MAX_FETCH_OFFERS)]


def test_a_fetch_answer_is_not_crowded_out_by_token_stakes() -> None:
    book = OfferBook(LEDGER)
    honest = offer(HONEST, price=1000, amount=10**24, penalty=10**23)
    assert book.receive(honest, sender="g", now_ms=NOW).accepted
    assert book.stake_checked(
        HONEST.peer_id, ledger_stake(HONEST, amount=10**24, penalty=10**23), NOW
    )
    for key in SYBILS:
        assert book.receive(offer(key, price=0, amount=1, penalty=1), sender=str(key.peer_id),
                            now_ms=NOW).accepted  # fmt: skip
        assert book.stake_checked(key.peer_id, ledger_stake(key, amount=1, penalty=1), NOW)
    answer = book.encoded("echo", now_ms=NOW, limit=MAX_FETCH_OFFERS)
    assert len(answer) == MAX_FETCH_OFFERS and honest in answer
    assert answer[0] == honest  # the largest stake first
    # the client's own listing still puts the cheapest first (discovery.md 8)
    assert [k.offer.price for k in book.live("echo", now_ms=NOW)][-1] == 1000
