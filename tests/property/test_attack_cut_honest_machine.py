"""Attack round on 6a5f0fd (protocol.md 14.3, "what this takes off `absorbed` is taken off
`spent` too"): can an HONEST payee ever make the payer cut ``spent``?

A Hypothesis state machine drives the real `PayerChannel` and `PayeeChannel` with a model
of the reference node around them (node/client.py, node/server.py, node/watcher.py):

* one stream at a time; a reset loses every frame on the old stream both ways and abandons
  the payer's requests in flight on it (ConnectionLost); a receipt the payer refuses
  closes the stream too (`ReceiptRejected`, End.CLOSE);
* a call may time out (abandoned, the session forgets it: a late answer is still read);
* requests may be lost on the way; the payee may refuse a fresh one OVERLOADED unsigned,
  before admission (the payer drops it: `on_refusal`);
* handlers end in any order, ok or failed, in time or late (DEADLINE_EXCEEDED, signed,
  not charged); the payee may charge less than the request's price;
* the payer re-delivers abandoned requests (REDELIVERY: the stored answer served again,
  or the running handler's answer sent there too, or an unsigned REPLAY kept);
* the payer claims abandoned requests; the honest payee answers with its stored answer,
  a late DEADLINE_EXCEEDED for a handler past its deadline, or serves/refuses the request
  through the claim (`admit_claimed`); the payer takes the answer as `Watcher._take_answer`
  does (a refusal: refunded, `settle_refunded` if the answer is not taken);
* the payer restarts: its channel rebuilt from `_payer_record` and the requests whose
  state is not in `book._ACCOUNTED_FOR` (as `ChannelBook.load`).

Asserted after every step: no cut ever happens (``absorbed`` never exceeds what the
requests without an answer may explain), ``payer.spent`` never decreases and never exceeds
the payee's, and the payee's charges stay within ``payer.spent + payer.outstanding``
(so the watcher never takes the honest payee for a thief, claims.md 6).
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pay.core.channel import Admit, PayeeChannel, PayerChannel, Pending, Refuse
from p2pay.core.errors import ErrorCode, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import STATUS_OK, Request, Response, blake2b256, refusal_body
from p2pay.node.book import _ACCOUNTED_FOR, _payer_record

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
LEDGER = b"p2pay-test-ledger"
CHANNEL = blake2b256(b"channel alice->bob (cut attack)")
DEPOSIT = 10**9
PRICE = 10
T0 = 1_700_000_000_000


class CutCounter(PayerChannel):
    """A payer channel that counts the yocto `_settle_abandoned` finds no request left to
    explain (a cut of ``spent`` at run time; at a restore, a clamp of ``absorbed``)."""

    cuts: int = 0

    def _settle_abandoned(self, *, cut_spent: bool = True) -> None:
        unexplained = self.absorbed - self._unanswered()
        super()._settle_abandoned(cut_spent=cut_spent)
        if unexplained > 0:
            CutCounter.cuts += unexplained


def new_payer(**numbers: int) -> CutCounter:
    return CutCounter(
        ledger=LEDGER,
        channel=CHANNEL,
        payer=ALICE.public,
        payee=BOB.public,
        deposit=DEPOSIT,
        **numbers,
    )


@dataclasses.dataclass
class Frame:
    sid: int
    kind: str  # "response" | "overloaded" | "replay"
    n: int
    response: Response | None = None


class HonestCutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        CutCounter.cuts = 0
        self.now = T0
        self.payer = new_payer()
        self.payee = PayeeChannel(
            ledger=LEDGER,
            channel=CHANNEL,
            payer=ALICE.public,
            payee=BOB.public,
            deposit=DEPOSIT,
            unverified_credit_limit=0,
        )
        self.sid = 0
        self.forward: list[tuple[int, Request, str]] = []  # (sid, request, purpose)
        self.reverse: list[Frame] = []
        self.outstanding: dict[int, str] = {}  # payer session: n -> purpose
        self.requests: dict[int, Request] = {}  # every request signed, by n
        self.state: dict[int, str] = {}  # payer store: n -> request state (absent: deleted)
        self.stored: dict[int, Response] = {}  # payee store
        self.waiters: dict[int, list[int]] = {}  # payee: running n -> sids to answer on
        self.late_refused: dict[int, Response] = {}
        self.service_price: dict[int, int] = {}
        self.spent_floor = 0
        self.rejected = 0

    # -- payer

    @rule(
        count=st.integers(1, 3),
        deadline=st.integers(1, 300),
        price=st.sampled_from([PRICE, PRICE, 7]),
    )
    def send(self, count: int, deadline: int, price: int) -> None:
        for _ in range(count):
            request = self.payer.next_request(
                ALICE, service="echo", body=b"x", price=price, deadline=self.now + deadline
            )
            self.requests[request.n] = request
            self.state[request.n] = "awaiting"
            self.outstanding[request.n] = "call"
            self.forward.append((self.sid, request, "call"))

    @precondition(lambda self: bool(self.payer.in_flight))
    @rule(data=st.data())
    def time_out(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(sorted(self.payer.in_flight)))
        self.payer.abandon(n)
        self.outstanding.pop(n, None)

    @rule(chance=st.integers(0, 4))
    def reset(self, chance: int) -> None:
        if chance == 0:
            self._reset()

    def _reset(self) -> None:
        for n in list(self.payer.in_flight):
            self.payer.abandon(n)
        self.outstanding.clear()
        self.sid += 1
        event("stream reset")

    @precondition(lambda self: bool(self.payer.abandoned))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(sorted(self.payer.abandoned)))
        if n in self.outstanding:
            return
        self.outstanding[n] = "redelivery"
        self.forward.append((self.sid, self.requests[n], "redelivery"))

    @rule(ms=st.integers(0, 200))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @rule(chance=st.integers(0, 4))
    def restart(self, chance: int) -> None:
        if chance:
            return
        rec = _payer_record(self.payer)
        payer = new_payer(
            last_n=rec.last_n,
            paid=rec.paid,
            spent=rec.spent,
            absorbed=rec.absorbed,
            forgotten=rec.forgotten,
            released=rec.released,
        )
        payer.restore_abandoned(
            Pending(self.requests[n], self.requests[n].price)
            for n, state in sorted(self.state.items())
            if state not in _ACCOUNTED_FOR
        )
        self.payer = payer
        self._reset()
        event("payer restart")

    @precondition(lambda self: bool(self.reverse))
    @rule(count=st.integers(1, 4), drop=st.integers(0, 5))
    def payer_receives(self, count: int, drop: int) -> None:
        for _ in range(count):
            if not self.reverse:
                return
            frame = self.reverse.pop(0)
            if frame.sid != self.sid:
                continue  # lost with its stream
            if drop == 0 and frame.kind == "response" and frame.n in self.payer.abandoned:
                continue  # the late answer to an abandoned request, lost (e.g. redelivery)
            self._payer_takes(frame)

    def _payer_takes(self, frame: Frame) -> None:
        n = frame.n
        purpose = self.outstanding.pop(n, None)
        if frame.kind == "overloaded":
            if purpose == "call":
                self.payer.on_refusal(n)
                self.state.pop(n, None)
                event("dropped on an unsigned OVERLOADED")
            return
        if frame.kind == "replay":
            return  # a re-delivery refused unsigned: kept
        response = frame.response
        assert response is not None
        if not self.payer.expects(n):
            return
        before = self.payer.spent
        try:
            self.payer.on_response(response)
        except RemoteProtocolError:
            self.rejected += 1
            event("honest receipt refused: stream closed")
            self.payer.abandon(n)
            self._reset()
            return
        self.state[n] = "answered" if response.ok else "refused"
        if self.payer.spent > before + response.price:
            event("receipt with a jump accepted")
        elif response.spent < before + response.price:
            event("stored receipt (rule 8) accepted")
        if self.payer.absorbed and self.payer.abandoned:
            event("absorbed > 0 with requests abandoned")

    @precondition(lambda self: bool(self.payer.abandoned))
    @rule(data=st.data(), ok=st.booleans(), chance=st.integers(0, 2))
    def claim(self, data: st.DataObject, ok: bool, chance: int) -> None:
        if chance:
            return
        n = data.draw(st.sampled_from(sorted(self.payer.abandoned)))
        request = self.requests[n]
        answer = self._payee_answers_claim(request, ok)
        if answer is None:
            return
        event(f"claim answered {'DELIVERED' if answer.ok else 'REFUSED'}")
        # Watcher._take_answer
        refunded = not answer.ok
        pending = self.payer.abandoned.get(n)
        taken = True
        if pending is not None and pending.request.hash == request.hash:
            taken = True
            try:
                self.payer.on_response(answer, signature_ok=True)
            except RemoteProtocolError:
                taken = False
                event("claim answer refused by the receipt rules")
            if refunded and not taken:
                self.payer.settle_refunded(n)
                taken = True
        outcome = "answered" if answer.ok else "refused"
        self.state[n] = outcome if taken else "claimed"

    # -- payee

    def _payee_answers_claim(self, request: Request, ok: bool) -> Response | None:
        n = request.n
        if n in self.stored:
            return self.stored[n]
        if n in self.payee.pending:
            if self.now <= request.deadline:
                return None  # the claim waits for the handler's answer
            late = Response.create(
                BOB,
                request=request,
                status=ErrorCode.DEADLINE_EXCEEDED.value,
                price=0,
                spent=self.payee.spent,
                body=refusal_body("late"),
            )
            self.late_refused[n] = late
            self.stored[n] = late
            return late
        decision = self.payee.admit_claimed(
            request, price=PRICE, max_body=100, seen=False, deadline=self.now + 1000
        )
        if isinstance(decision, Refuse):
            if decision.code is ErrorCode.REPLAY and n in self.payee.pending:
                return None
            response = Response.create(
                BOB,
                request=request,
                status=decision.code.value,
                price=0,
                spent=self.payee.spent,
                body=refusal_body(decision.message),
            )
        else:
            response = self._complete(request, ok=ok)
        self.stored[n] = response
        return response

    def _complete(self, request: Request, *, ok: bool) -> Response:
        """The payee completes admitted `request` (the handler ok or failed) and signs its
        answer: OK with the charge, or the refusal completion gives."""
        done = self.payee.complete(request.n, ok=ok, now=self.now)
        if done.refusal is not None:
            status = done.refusal.value
        else:
            status = STATUS_OK if ok else ErrorCode.HANDLER_ERROR.value
        return Response.create(
            BOB,
            request=request,
            status=status,
            price=done.charged,
            spent=done.spent,
            body=b"ok" if status == STATUS_OK else refusal_body("no"),
        )

    @precondition(lambda self: bool(self.forward))
    @rule(count=st.integers(1, 4), lose=st.integers(0, 6), overload=st.integers(0, 6))
    def payee_receives(self, count: int, lose: int, overload: int) -> None:
        for _ in range(count):
            if not self.forward:
                return
            sid, request, purpose = self.forward.pop(0)
            if sid != self.sid or lose == 0:
                continue  # lost
            n = request.n
            if overload == 0 and purpose == "call" and n > self.payee.last_n:
                self.reverse.append(Frame(sid, "overloaded", n))  # before admission
                continue
            price = min(request.price, PRICE if n % 3 else 7)
            decision = self.payee.admit(
                request, peer=ALICE.public, price=price, max_body=100, now=self.now
            )
            if isinstance(decision, Admit):
                self.waiters[n] = [sid]
                continue
            if decision.code is ErrorCode.REPLAY:
                if n in self.waiters:
                    self.waiters[n].append(sid)
                elif n in self.stored:
                    self.reverse.append(Frame(sid, "response", n, self.stored[n]))
                else:
                    self.reverse.append(Frame(sid, "replay", n))
                continue
            assert decision.authenticated, decision
            response = Response.create(
                BOB,
                request=request,
                status=decision.code.value,
                price=0,
                spent=self.payee.spent,
                body=refusal_body(decision.message),
            )
            self.stored[n] = response
            self.reverse.append(Frame(sid, "response", n, response))

    @precondition(lambda self: bool(self.waiters))
    @rule(data=st.data(), ok=st.integers(0, 3))
    def payee_completes(self, data: st.DataObject, ok: int) -> None:
        n = data.draw(st.sampled_from(sorted(self.waiters)))
        request = self.requests[n]
        sids = self.waiters.pop(n)
        late = self.late_refused.pop(n, None)
        if late is not None:
            self.payee.complete(n, ok=False)
            response = late
        else:
            response = self._complete(request, ok=ok > 0)
            self.stored[n] = response
        for sid in sids:
            self.reverse.append(Frame(sid, "response", n, response))

    # -- invariants

    @invariant()
    def no_cut(self) -> None:
        assert CutCounter.cuts == 0, (
            f"an honest payee made the payer cut {CutCounter.cuts} yocto off spent "
            f"(payer spent {self.payer.spent}, payee spent {self.payee.spent})"
        )
        assert self.payer.spent >= self.spent_floor, (self.payer.spent, self.spent_floor)
        self.spent_floor = self.payer.spent
        assert self.payer.spent <= self.payee.spent
        # (a reservation whose claim was answered late is never charged)
        reserved = self.payee.reserved - sum(self.payee.pending[n] for n in self.late_refused)
        assert self.payee.spent + reserved <= (self.payer.spent + self.payer.outstanding), (
            self.payee.spent,
            self.payee.reserved,
            self.payer.spent,
            self.payer.outstanding,
        )


TestHonestCut = HonestCutMachine.TestCase
TestHonestCut.settings = settings(
    max_examples=500,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
