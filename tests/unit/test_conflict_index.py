"""`ConflictIndex` finds a request in tiling conflict whenever comparing with every request
held would (claims.md 2), from at most five candidates (attack: a claim flood of k
requests made the watcher compare each claim with every other, k^2 comparisons), also
when some are held by their `Slice` alone (a claim known from its ClaimFiled event: the
watcher reads only a slice in conflict, attack round 23)."""

from __future__ import annotations

import random

from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.core.settlement import ConflictIndex, Slice, tiling_conflict

PAYER = Keypair.from_seed(bytes([7]) * 32)
HORIZON = 1_000


def slice_of(r: Request) -> Slice:
    return Slice(r.n, r.paid, r.price, r.deadline, r.hash)


def request(n: int, paid: int, price: int, deadline: int, body: bytes = b"") -> Request:
    return Request.create(
        PAYER,
        ledger=b"p2pay:test:conflicts",
        channel=b"\x01" * 32,
        n=n,
        paid=paid,
        price=price,
        service="echo",
        body=body,
        deadline=deadline,
    )


def test_the_candidates_hold_a_conflict_whenever_one_exists() -> None:
    rng = random.Random(17)
    for trial in range(300):
        held = []
        for k in range(rng.randrange(0, 9)):
            price = rng.randrange(0, 4)
            held.append(
                request(
                    rng.randrange(1, 8),
                    rng.randrange(price, 20),
                    price,
                    rng.randrange(0, 3_000),
                    b"%d-%d" % (trial, k),
                )
            )
        index = ConflictIndex()
        for r in held:
            index.add(slice_of(r) if rng.random() < 0.5 else r)  # some known by slice only
        price = rng.randrange(0, 4)
        claimed = request(
            rng.randrange(1, 8), rng.randrange(price, 20), price, rng.randrange(0, 3_000), b"c"
        )
        any_conflict = any(tiling_conflict(claimed, r, HORIZON) for r in held)
        candidates = index.candidates(claimed)
        assert len(candidates) <= 5
        assert all(c.hash != claimed.hash for c in candidates)
        assert any(tiling_conflict(claimed, c, HORIZON) for c in candidates) == any_conflict
        same_n = any(r.n == claimed.n and r.hash != claimed.hash for r in held)
        assert any(c.n == claimed.n for c in candidates) == same_n


def test_a_request_held_is_not_its_own_candidate_and_adding_it_again_changes_nothing() -> None:
    a = request(1, 10, 10, 100)
    b = request(2, 20, 10, 100)
    index = ConflictIndex()
    for r in (a, b, a):
        index.add(r)
    assert len(index) == 2 and a.hash in index
    assert index.candidates(a) == [b]
    assert not tiling_conflict(a, b, HORIZON)  # a tiled pair: candidates, no conflict


def test_a_request_takes_its_slices_place_and_nothing_else_is_replaced() -> None:
    a = request(1, 10, 10, 100)
    b = request(2, 20, 10, 100)
    index = ConflictIndex()
    index.add(slice_of(a))
    index.add(b)
    assert index.get(a.hash) == slice_of(a) and index.requests() == [b]
    assert index.candidates(b) == [slice_of(a)]
    index.add(a)  # read: the request replaces its slice
    assert index.get(a.hash) is a and index.candidates(b) == [a]
    index.add(slice_of(a))  # a slice never replaces a request
    assert index.get(a.hash) is a and len(index) == 2
    index.discard(a.hash)
    index.discard(a.hash)  # nothing held: nothing changes
    assert a.hash not in index and index.candidates(b) == [] and index.requests() == [b]


def test_a_claim_filed_events_fields_give_its_slice_or_none() -> None:
    r = request(3, 30, 10, 500)
    fields: dict[str, object] = {
        "claim": r.hash, "channel": r.channel, "n": 3, "paid": 30, "price": 10,
        "deadline": 500, "bond": 0, "window_ends": 9,
    }  # fmt: skip
    assert Slice.of_filed(fields) == slice_of(r)
    for name, bad in [
        ("claim", None), ("claim", "ab"), ("n", None), ("n", True), ("paid", -1),
        ("price", 1.0), ("deadline", "500"),
    ]:  # fmt: skip
        assert Slice.of_filed({**fields, name: bad}) is None, (name, bad)
    assert Slice.of_filed({k: v for k, v in fields.items() if k != "paid"}) is None
