"""Attack round 14 on 32a62ca (finding 1): a request refused at ADMISSION on a stream while
the payee's watcher prepares the answer to its claim was still taken for a gap and served
again (C-6, C-4). Fixed: a lookup watches its number's answers at admission too.

32a62ca watched `PayeeChannel.complete` only. A request that arrives on a stream after
its deadline is refused at admission (protocol.md 13.2 check 8: signed DEADLINE_EXCEEDED,
`n` consumed, `last_n := n`) and never reaches `complete`: nothing is remembered, the
stored answer is staged but the watcher has read the store already. It then finds the
number at or below `last_n`, neither pending nor "completed since", and admits it through
the claim as a gap (`admit_claimed`), runs the handler and CHARGES it.

Result: two different signed answers of the honest payee to one request: the stream's
DEADLINE_EXCEEDED (price 0, spent S) and the claim's OK (price p, spent S + p). The payer
who took the stream's refusal rejects every later receipt (spent one price ahead).

The attacker is the payer (a raw peer, MALLORY): it signs request n (never sends it),
waits for its deadline, files the claim, and sends the request on its stream when the
payee's watcher has read the store (here: the moment is chosen by wrapping the payee's
store read, as test_claim_answer_race.py chooses its moment by wrapping the channel
look-up; a stranger gets there by timing: the window spans the watcher's ledger reads).
Every wait bounded; nothing asserts on timing.
"""

from __future__ import annotations

from typing import Any

from raw_payer import BOB, MALLORY, PRICE, in_claim_answer, raw_payer_and_provider

from p2pay.core.errors import ErrorCode
from p2pay.core.messages import Response, decode_frame
from p2pay.core.settlement import ClaimState


async def test_a_request_refused_at_admission_during_the_claim_lookup_is_answered_once() -> None:
    async with raw_payer_and_provider(b"r14-admission") as (payer, bob):
        ledger = payer.ledger
        # n=1: an ordinary paid call (the payee adopts the channel)
        first = await payer.call(1, PRICE)
        assert isinstance(first, Response) and first.status == "OK" and first.spent == PRICE
        # n=2: signed, never sent; its deadline passes
        r2 = payer.signed(2, 2 * PRICE, await ledger.now() + 200)
        await payer.wait_past(r2.deadline)
        stream_answers: list[Any] = []
        read = bob.store.response

        async def response(request_hash: bytes) -> Any:
            found = await read(request_hash)
            if request_hash == r2.hash and found is None and not stream_answers:
                if in_claim_answer():
                    # the watcher has read the store: now the request arrives on its stream
                    # (late: refused at admission, signed, n consumed)
                    stream_answers.append(await payer.exchange(r2))
            return found

        bob.store.response = response  # type: ignore[method-assign]
        claim = await payer.decided(await ledger.file_claim(MALLORY, r2))
        by_claim = decode_frame(claim.response_frame)
        [by_stream] = stream_answers
        assert isinstance(by_claim, Response) and isinstance(by_stream, Response)
        spent_after_claim = bob.payee_channels[payer.channel].spent
        # n=3 on the stream: the receipt a payer that took the stream's answer checks
        third = await payer.call(3, 3 * PRICE)
        assert isinstance(third, Response)
        # one answer to request n=2, the stream's: the claim gets that very refusal (REFUSED,
        # nothing charged), and the next receipt's spent is the payer's plus its price
        assert by_stream.request_hash == by_claim.request_hash == r2.hash
        assert by_stream.verify(BOB.account)
        assert by_stream.status == ErrorCode.DEADLINE_EXCEEDED.value and by_stream.price == 0
        assert by_claim.to_frame() == by_stream.to_frame()
        assert claim.state is ClaimState.REFUSED and claim.slashed == 0
        assert spent_after_claim == PRICE  # n=1 only
        assert third.spent == 2 * PRICE
