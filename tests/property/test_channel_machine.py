"""Hypothesis state machine: one payer (ALICE), one payee (BOB), one channel, a hostile net.

The payer's requests travel to the payee as frames (`Request.to_frame` / `decode_frame`,
so the codec is exercised on every hop) over a forward stream that may duplicate, reorder
and drop frames. MALLORY has her own authenticated stream to BOB: she forges requests for
ALICE's channel with her key, and replays ALICE's earlier frames as her own. The payee
answers over an ordered reverse stream that may drop frames but never reorders them;
handlers finish in any order; the payer times out and abandons requests, tops up the
deposit (the payee learns it later, from the ledger), and may lose its state, in which case
it resyncs from the payee's REPLAY refusal.

The model beside the two channels knows what really happened: the price charged for each
request, the receipts that were lost, the highest voucher ALICE ever signed. Invariants of
specs/invariants.md asserted here, after every step or at the step that can break them:

* INV-1   payee ``0 <= spent``, ``spent + reserved <= paid_max <= deposit``, and
          ``reserved`` is the sum of the pending reservations.
* INV-2   ``best`` is absent iff ``paid_max == 0``, else ALICE-signed with ``paid == paid_max``
          and on the channel's ledger; ``paid_max`` never decreases.
* INV-3   a charge is the service price, at most the request's ``price``.
* INV-4   ``admit`` never changes ``spent``; ``complete`` changes it by the reserved price or 0,
          and by 0 whenever it runs after the request's deadline (C-4).
* INV-5   refused requests reserve nothing and their signed responses carry ``price = 0``.
* INV-6   the payee's ``last_n`` never decreases; admission and every authenticated
          refusal set it to the request's ``n``.
* INV-7   REPLAY (and every refusal before authentication) changes no payee state.
* INV-8   MALLORY's frames (forged with her key, or ALICE's frames replayed on her stream)
          are refused UNAUTHORIZED and change no payee state.
* INV-9   the signed responses BOB sends along the reverse stream form a chain:
          ``r2.spent == r1.spent + r2.price``.
* INV-11  each request signs ``paid = paid + price <= deposit`` (protocol v2: a fresh
          slice, credit never reused); ``payer.paid`` never decreases (within one life of
          the payer's state), ``n`` strictly increases.
* SLICES  ALICE's fresh requests reach the payee with ``paid - price >= paid_max``, so the
          slice rule never refuses them; the slices she signs never overlap.
* INV-12  every receipt the payer accepts has ``spent`` = previous accepted ``spent`` + its
          price + exactly the charges of receipts lost before it; a refused receipt
          leaves the payer unchanged, and an honest receipt is refused only while a lost
          receipt's request is still in flight (not yet abandoned).
* INV-13  after losing its state the payer resyncs from REPLAY details to exactly the
          payee's ``last_n`` and ``paid_max`` (from the voucher its own key checks), never
          adopting the unsigned ``spent``: the payee's charges it forgot explain the next
          receipt's jump instead. A REPLAY of a request the payer still has never drops it.

And properties specs/invariants.md does not number (yet):

* REDEEMABLE-SIGNED  ``payee.paid_max <= `` the most ALICE ever signed, and
          ``payee.spent <= payer.paid``: what the payee can redeem, ALICE signed.
* SPENT-CONSERVED  ``payer.spent`` + charges of lost receipts + charges on the wire
          ``== payee.spent``; with no receipt lost, the prices the payer accepted add up
          to the payee's ``spent``; the payer never believes more was spent than was.
* HONEST-CREDIT  ALICE's requests are never refused for lack of credit.
* ABSORBED-BOUNDED  ``payer.absorbed`` never exceeds the abandoned prices plus
          ``forgotten``.
* PAYER-RESTART  the payer's stored record (``_payer_record``) is valid at every step (its
          consistency checks hold), and a channel rebuilt from it and the requests without
          an answer (as a node loads it after a restart, protocol.md 14.2) is the live
          channel with every request in flight abandoned: same numbers, same
          ``outstanding``, hence the same verdict on every later answer.

`ChannelMachine` checks every voucher (``unverified_credit_limit = 0``: the check order of
protocol.md 13.2). `DeferredChannelMachine` runs the same model under deferred verification
(13.4, a limit of ``DEFERRED_LIMIT``) and adds a cheating ALICE: on her own authenticated
stream she sends vouchers signed by MALLORY's key. Before she cheats every decision is the
same as without deferral; after, the honest-payer model no longer applies and the machine
asserts INV-21 instead: ``spent + reserved <= verified.paid + limit``, ``verified`` is
ALICE-signed and never above what she signed, and a bad voucher is never what the payee
would redeem (`verified_voucher`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from p2pay.core.channel import Admit, ChannelStatus, PayeeChannel, PayerChannel, Refuse, Replay
from p2pay.core.errors import ErrorCode, InsufficientDeposit, RemoteProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    STATUS_OK,
    Refusal,
    Request,
    Response,
    blake2b256,
    decode_frame,
    refusal_body,
)
from p2pay.node.book import _payer_record

ALICE = Keypair.from_seed(bytes([1]) * 32)  # payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # payee
MALLORY = Keypair.from_seed(bytes([4]) * 32)  # third party with her own stream to BOB

LEDGER = b"p2pay-test-ledger"
CHANNEL = blake2b256(b"channel alice->bob")
DEPOSIT = 300
MAX_BODY = 32
T0 = 1_700_000_000_000
#: service name -> price; "nope" is not offered by BOB
SERVICES: dict[str, int] = {"echo": 10, "big": 25, "free": 0}
DEFERRED_LIMIT = 35  # three "echo" requests, or one "big" and one "echo", unchecked


def snapshot(channel: PayeeChannel | PayerChannel) -> dict[str, Any]:
    state = {f.name: getattr(channel, f.name) for f in dataclasses.fields(channel)}
    return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


@dataclasses.dataclass
class Wire:
    """A frame on the reverse stream, with what the model knows about it."""

    data: bytes
    n: int
    charged: int
    #: charges of receipts lost just before this frame: the payee's ``spent`` in the next
    #: receipt the payer accepts includes them
    carry: int = 0
    carry_ns: frozenset[int] = frozenset()


class ChannelMachine(RuleBasedStateMachine):
    LIMIT = 0  # the payee's unverified_credit_limit

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.payee = PayeeChannel(
            ledger=LEDGER,
            channel=CHANNEL,
            payer=ALICE.public,
            payee=BOB.public,
            deposit=DEPOSIT,
            unverified_credit_limit=self.LIMIT,
        )
        self.cheated = False  # ALICE sent a voucher that is not hers (deferred machine)
        self.payer = self._new_payer(DEPOSIT)
        self.top_ups: list[int] = []  # on the ledger, not yet seen by the payee
        self.forward: list[tuple[bytes, bytes]] = []  # (stream's remote peer, frame)
        self.reverse: list[Wire] = []  # to ALICE, in order
        self.alice_frames: list[bytes] = []  # every request frame ALICE ever sent
        self.admitted: dict[int, Request] = {}  # requests the payee admitted, by n
        self.max_signed = 0
        self.max_n_signed = 0
        # charges of receipts lost after the last frame on the reverse stream
        self.tail_carry = 0
        self.tail_ns: set[int] = set()
        self.last_response_spent = 0  # INV-9: spent of BOB's last signed response
        self.payee_paid_max_floor = 0  # INV-2
        self.payee_last_n_floor = 0  # INV-6
        # charges of lost receipts the payer has passed since its last accepted receipt
        self.unaccounted = 0
        self.lost: set[int] = set()  # n whose charging receipt the payer did not get
        self.paid_floor = 0
        self.life_dropped = False  # a receipt was lost in this life of the payer's state
        self.life_accepted = 0  # sum of charges accepted in this life
        self.life_base = 0  # payer.spent at the start of this life

    @staticmethod
    def _new_payer(deposit: int) -> PayerChannel:
        return PayerChannel(
            ledger=LEDGER, channel=CHANNEL, payer=ALICE.public, payee=BOB.public, deposit=deposit
        )

    # ------------------------------------------------------------------ payer

    @rule(data=st.data(), count=st.integers(min_value=1, max_value=3))
    def payer_sends(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            self._payer_sends_one(
                data.draw(st.sampled_from(["echo", "echo", "big", "free", "nope"]), "service"),
                data.draw(st.sampled_from([0, 0, 0, 0, -1, 5]), "price offset"),
                data.draw(st.binary(max_size=MAX_BODY + 4), "body"),
                data.draw(st.integers(min_value=-20, max_value=400), "deadline"),
            )

    def _payer_sends_one(self, service: str, offset: int, body: bytes, deadline: int) -> None:
        price = max(0, SERVICES.get(service, 10) + offset)
        before = snapshot(self.payer)
        outstanding = self.payer.outstanding
        try:
            request = self.payer.next_request(
                ALICE, service=service, body=body, price=price, deadline=self.now + deadline
            )
        except InsufficientDeposit as exc:
            event("payer: deposit exhausted")
            assert snapshot(self.payer) == before
            assert exc.details["needed"] > self.payer.deposit
            assert exc.details["needed"] == before["paid"] + price
            return
        assert request.n == before["last_n"] + 1, "INV-11"
        assert request.paid == before["paid"] + price, "INV-11"
        assert request.paid >= before["spent"] + outstanding + price, "INV-11"
        assert request.paid <= self.payer.deposit, "INV-11"
        assert request.verify(ALICE.public)
        self.max_signed = max(self.max_signed, request.paid)
        self.max_n_signed = max(self.max_n_signed, request.n)
        frame = request.to_frame()
        self.alice_frames.append(frame)
        self.forward.append((ALICE.public, frame))

    @precondition(lambda self: bool(self.payer.in_flight))
    @rule(data=st.data())
    def payer_times_out(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(sorted(self.payer.in_flight)), label="abandon")
        assert self.payer.abandon(n) is not None
        assert n in self.payer.abandoned

    @rule(amount=st.integers(min_value=1, max_value=500))
    def payer_tops_up(self, amount: int) -> None:
        self.payer.deposit += amount  # the payer's own ledger transaction
        self.top_ups.append(amount)

    @precondition(lambda self: bool(self.top_ups))
    @rule()
    def payee_sees_top_up(self) -> None:
        self.payee.deposit += self.top_ups.pop(0)

    @precondition(lambda self: bool(self.reverse))
    @rule(count=st.integers(min_value=1, max_value=4))
    def payer_receives(self, count: int) -> None:
        for _ in range(min(count, len(self.reverse))):
            self._payer_receives_one()

    def _payer_receives_one(self) -> None:
        wire = self._receive_back()
        message = decode_frame(wire.data)
        if self.cheated:
            return  # ALICE's own accounting after she cheated is not modelled
        if isinstance(message, Refusal) and message.code is ErrorCode.INSUFFICIENT_DEPOSIT:
            # Refused before `n` is consumed (protocol.md 13.2 check 5''): the slice is above
            # the deposit, so nothing of it could be charged; the payer lets it go.
            assert message.channel == CHANNEL
            event("payer: INSUFFICIENT_DEPOSIT refusal")
            before = snapshot(self.payer)
            self.payer.on_refusal(message.n)
            assert self.payer.spent == before["spent"]
            return
        if isinstance(message, Refusal):
            # ALICE's requests are authentic: the only other unsigned refusal she gets is
            # REPLAY (a duplicate or a reordered older frame). The request may have been
            # served (the duplicate's original), so it is abandoned, not dropped.
            assert message.code is ErrorCode.REPLAY
            assert message.channel == CHANNEL
            event("payer: REPLAY refusal")
            before = snapshot(self.payer)
            raw = message.details.get("voucher")
            voucher = decode_frame(raw) if isinstance(raw, bytes) else None
            assert voucher is None or isinstance(voucher, Request)
            outcome = self.payer.on_replay(
                message.n,
                last_n=message.details["last_n"],
                voucher=voucher,
                paid_max=message.details["paid_max"],
            )
            # INV-13: ALICE kept her state: the unsigned REPLAY drops nothing, moves no
            # spent; the node re-sends once, then abandons it (in doubt, claimable)
            assert outcome is not Replay.SUPERSEDED, outcome
            assert self.payer.spent == before["spent"]
            assert self.payer.forgotten == before["forgotten"]
            if message.n in self.payer.in_flight:
                self.payer.abandon(message.n)
            return
        assert isinstance(message, Response)
        before = snapshot(self.payer)
        try:
            receipt = self.payer.on_response(message)
        except RemoteProtocolError as exc:
            # An honest payee's receipt is refused only when a receipt lost before it
            # charged a request the payer still has in flight (not yet abandoned).
            event("payer: receipt refused (lost receipt still in flight)")
            assert exc.code is ErrorCode.MALFORMED, exc
            assert snapshot(self.payer) == before, "INV-12"
            assert any(n in self.payer.in_flight for n in self.lost), ("INV-12", exc, self.lost)
            self.life_dropped = True
            self.unaccounted += wire.charged
            self.lost.add(wire.n)
            return
        # INV-12: the receipt chain as the payer sees it
        assert receipt.charged == wire.charged
        jump = receipt.spent - before["spent"] - receipt.charged
        assert jump == self.unaccounted, ("INV-12", jump, self.unaccounted, self.lost)
        if jump:
            event("payer: spent jump explained by abandoned requests")
        self.unaccounted = 0
        self.lost.clear()
        self.life_accepted += receipt.charged
        event("payer: receipt accepted")
        assert message.n not in self.payer.in_flight
        assert message.n not in self.payer.abandoned

    # ------------------------------------------------------------------ reverse stream

    def _send_back(self, data: bytes, n: int, charged: int) -> None:
        message = decode_frame(data)
        if isinstance(message, Response):  # INV-9
            assert message.spent == self.last_response_spent + message.price, "INV-9"
            assert message.price == charged and (message.ok or message.price == 0), "INV-5"
            self.last_response_spent = message.spent
        self.reverse.append(Wire(data, n, charged, self.tail_carry, frozenset(self.tail_ns)))
        self.tail_carry = 0
        self.tail_ns.clear()

    def _drop_back(self, i: int) -> None:
        """The reverse stream loses frame `i`: what it carried moves to the next frame."""
        wire = self.reverse.pop(i)
        carry = wire.carry + wire.charged
        ns = wire.carry_ns | ({wire.n} if wire.charged else set())
        if wire.charged:
            event("net: charged receipt lost")
            self.life_dropped = True
        if i < len(self.reverse):
            after = self.reverse[i]
            self.reverse[i] = dataclasses.replace(
                after, carry=after.carry + carry, carry_ns=after.carry_ns | ns
            )
        else:
            self.tail_carry += carry
            self.tail_ns |= ns

    def _receive_back(self) -> Wire:
        wire = self.reverse.pop(0)
        self.unaccounted += wire.carry
        self.lost |= wire.carry_ns
        return wire

    @precondition(lambda self: bool(self.payer.in_flight or self.reverse))
    @rule(chance=st.integers(0, 2))
    def stream_resets(self, chance: int) -> None:
        """ALICE's stream to BOB dies: frames on it are lost, everything in flight is
        abandoned (it may have been charged); the node opens a new stream."""
        if chance:
            return  # rarer than the other rules
        event("net: stream reset")
        self.forward = [(peer, frame) for peer, frame in self.forward if peer != ALICE.public]
        while self.reverse:
            self._drop_back(0)
        for n in sorted(self.payer.in_flight):
            self.payer.abandon(n)

    @precondition(lambda self: self.payer.last_n >= 2)
    @rule(data=st.data(), chance=st.integers(0, 3))
    def payer_loses_state_and_resyncs(self, data: st.DataObject, chance: int) -> None:
        """The payer's process dies: its streams die with it, then it resyncs.

        The payee's running handlers finish (their receipts are lost with the stream).
        The new process knows only its key, the channel and the deposit (from the
        ledger). If the payee has authenticated anything, the new process's first request
        reuses a consumed n and gets REPLAY, whose details it resyncs from.
        """
        if chance or self.cheated:
            return  # rarer than the other rules
        event("payer: lost state")
        self.forward = [(peer, frame) for peer, frame in self.forward if peer != ALICE.public]
        self.reverse.clear()
        for n in sorted(self.payee.pending):
            self.payee.complete(n, ok=data.draw(st.booleans(), label=f"handler {n} ok"))
        assert self.payee.reserved == 0
        self.last_response_spent = self.payee.spent  # their receipts left on the dead stream
        fresh = self._new_payer(self.payer.deposit)
        if self.payee.last_n >= 1:
            probe = fresh.next_request(
                ALICE, service="echo", body=b"probe", price=0, deadline=self.now + 100
            )
            self.max_signed = max(self.max_signed, probe.paid)
            before = snapshot(self.payee)
            decision = self.payee.admit(
                decode_frame(probe.to_frame()),  # type: ignore[arg-type]
                peer=ALICE.public,
                price=SERVICES["echo"],
                max_body=MAX_BODY,
                now=self.now,
            )
            assert isinstance(decision, Refuse) and decision.code is ErrorCode.REPLAY
            assert not decision.authenticated and snapshot(self.payee) == before
            refusal = decode_frame(
                Refusal(
                    channel=CHANNEL,
                    n=probe.n,
                    code=decision.code,
                    message=decision.message,
                    details=decision.details,
                ).to_frame()
            )
            assert isinstance(refusal, Refusal)
            raw = refusal.details.get("voucher")
            voucher = decode_frame(raw) if isinstance(raw, bytes) else None
            assert voucher is None or isinstance(voucher, Request)
            outcome = fresh.on_replay(
                refusal.n,
                last_n=refusal.details["last_n"],
                voucher=voucher,
                paid_max=refusal.details["paid_max"],
            )
            if voucher is None:
                # nothing signed proves we lost state: the probe stays in doubt
                assert outcome is Replay.IN_DOUBT
                fresh.abandon(probe.n)
            else:
                assert outcome is Replay.SUPERSEDED, (outcome, voucher, probe)
                assert probe.n not in fresh.in_flight
            event(f"payer: resynced from REPLAY ({outcome.value})")
        assert (fresh.last_n, fresh.paid, fresh.spent) == (  # INV-13
            self.payee.last_n,
            self.payee.paid_max,
            0,  # the unsigned spent is never adopted
        )
        assert fresh.forgotten == self.payee.paid_max  # all of it signed in a forgotten life
        self.payer = fresh
        self.tail_carry = 0
        self.unaccounted = self.payee.spent  # the next accepted receipt jumps by it
        self.lost.clear()
        self.tail_ns.clear()
        self.paid_floor = fresh.paid
        self.life_dropped = self.payee.spent > 0
        self.life_accepted = 0
        self.life_base = fresh.spent

    # ------------------------------------------------------------------ payee

    @precondition(lambda self: bool(self.forward))
    @rule(count=st.integers(min_value=1, max_value=4))
    def payee_processes(self, count: int) -> None:
        for _ in range(min(count, len(self.forward))):
            self._payee_processes_one()

    def _payee_processes_one(self) -> None:
        peer, frame = self.forward.pop(0)
        request = decode_frame(frame)
        assert isinstance(request, Request)
        before = snapshot(self.payee)
        price = SERVICES.get(request.service)
        decision = self.payee.admit(
            request, peer=peer, price=price, max_body=MAX_BODY, now=self.now
        )
        if peer == MALLORY.public:
            # INV-7, INV-8: a third party changes nothing
            assert isinstance(decision, Refuse), decision
            assert decision.code is ErrorCode.UNAUTHORIZED
            assert not decision.authenticated
            assert snapshot(self.payee) == before, "INV-8"
            refusal = Refusal(
                channel=request.channel,
                n=request.n,
                code=decision.code,
                message=decision.message,
                details=decision.details,
            )
            assert decode_frame(refusal.to_frame()) == refusal  # goes back to MALLORY
            event("payee: refused MALLORY")
            return
        assert self.payee.spent == before["spent"]  # INV-4
        if self.cheated:
            self._after_cheating(request, decision, before)
            return
        expected = self._expected_decision(request, before, price)
        if isinstance(decision, Admit) or decision.authenticated:
            assert self.payee.last_n == request.n  # INV-6
        if isinstance(decision, Admit):
            assert expected is None, (expected, decision)
            assert price is not None and decision.price == price <= request.price
            if self.LIMIT:  # also when a checked voucher catches up with `best`
                assert decision.voucher_improved >= (request.paid > before["paid_max"])
            else:
                assert decision.voucher_improved == (request.paid > before["paid_max"])
            self.admitted[request.n] = request
            event("payee: admitted")
            return
        assert decision.code is expected, (decision, expected)
        event(f"payee: refused {decision.code.value}")
        if not decision.authenticated:
            assert decision.code in (ErrorCode.REPLAY, ErrorCode.INSUFFICIENT_DEPOSIT)
            assert snapshot(self.payee) == before, "INV-7"
            data = Refusal(
                channel=request.channel,
                n=request.n,
                code=decision.code,
                message=decision.message,
                details=decision.details,
            ).to_frame()
            self._send_back(data, request.n, 0)
            return
        assert self.payee.last_n == request.n
        assert self.payee.reserved == before["reserved"], "INV-5"
        response = Response.create(
            BOB,
            request=request,
            status=decision.code.value,
            price=0,
            spent=self.payee.spent,
            body=refusal_body(decision.message, decision.details),
        )
        self._send_back(response.to_frame(), request.n, 0)

    def _after_cheating(
        self, request: Request, decision: Admit | Refuse, before: dict[str, Any]
    ) -> None:
        """ALICE has cheated: no model of the decision, only what 13.4 promises."""
        if isinstance(decision, Admit):
            self.admitted[request.n] = request
            event("payee: admitted after ALICE cheated")
            if not request.verify(ALICE.public):
                event("payee: admitted a bad voucher unchecked")
                assert not before["deferral_revoked"], "13.4 rule c"
            return
        event(f"payee: refused {decision.code.value} after ALICE cheated")
        if decision.code is ErrorCode.INVALID_SIGNATURE:
            assert self.payee.deferral_revoked, "13.4 rule c"
        if not decision.authenticated:
            return
        response = Response.create(
            BOB,
            request=request,
            status=decision.code.value,
            price=0,
            spent=self.payee.spent,
            body=refusal_body(decision.message, decision.details),
        )
        self._send_back(response.to_frame(), request.n, 0)

    def _expected_decision(
        self, request: Request, before: dict[str, Any], price: int | None
    ) -> ErrorCode | None:
        """The model's answer for one of ALICE's (authentic) requests (protocol.md 13.2)."""
        if request.n <= before["last_n"]:
            return ErrorCode.REPLAY
        if request.paid > before["deposit"]:
            return ErrorCode.INSUFFICIENT_DEPOSIT
        if self.now > request.deadline:
            return ErrorCode.DEADLINE_EXCEEDED
        if price is None:
            return ErrorCode.UNKNOWN_SERVICE
        if len(request.body) > MAX_BODY:
            return ErrorCode.BODY_TOO_LARGE
        if request.price < price:
            return ErrorCode.PAYMENT_REQUIRED
        # SLICES: an honest payer's fresh request never overlaps what the payee has seen
        assert request.paid - request.price >= before["paid_max"], (request, before)
        credit = max(before["paid_max"], request.paid) - before["spent"] - before["reserved"]
        # HONEST-CREDIT: ALICE signs paid >= spent + outstanding + price, and everything
        # the payee charged or reserved is in her spent or outstanding.
        assert credit >= price, (credit, price, request)
        return None

    @precondition(lambda self: bool(self.payee.pending))
    @rule(data=st.data(), count=st.integers(min_value=1, max_value=3))
    def payee_completes(self, data: st.DataObject, count: int) -> None:
        for _ in range(min(count, len(self.payee.pending))):
            n = data.draw(st.sampled_from(sorted(self.payee.pending)), label="complete")
            ok = data.draw(st.integers(0, 3), label="ok") > 0  # handlers mostly succeed
            self._payee_completes_one(n, ok)

    def _payee_completes_one(self, n: int, ok: bool) -> None:
        request = self.admitted[n]
        reserved = self.payee.pending[n]
        spent_before = self.payee.spent
        assert self.payee.deadlines[n] == request.deadline
        done = self.payee.complete(n, ok=ok, now=self.now)
        charged, spent = done
        late = self.now > request.deadline  # C-4: a late answer is never charged
        assert (done.refusal is ErrorCode.DEADLINE_EXCEEDED) is late, "INV-4"
        if late:
            event("payee: late answer, not charged")
        assert charged == (reserved if ok and not late else 0), "INV-3/INV-4"
        assert charged <= request.price, "INV-3"
        assert spent == spent_before + charged == self.payee.spent, "INV-4"
        if late:
            response = Response.create(
                BOB,
                request=request,
                status=ErrorCode.DEADLINE_EXCEEDED.value,
                price=0,
                spent=spent,
                body=refusal_body("late"),
            )
        elif ok:
            response = Response.create(
                BOB, request=request, status=STATUS_OK, price=charged, spent=spent, body=b"ok"
            )
        else:
            response = Response.create(
                BOB,
                request=request,
                status=ErrorCode.HANDLER_ERROR.value,
                price=0,
                spent=spent,
                body=refusal_body("handler failed"),
            )
        self._send_back(response.to_frame(), n, charged)

    @precondition(lambda self: bool(self.forward or self.payee.pending or self.reverse))
    @rule(data=st.data())
    def calm_network(self, data: st.DataObject) -> None:
        """A calm spell: every frame is delivered, every handler finishes, in order."""
        while self.forward:
            self._payee_processes_one()
        for n in sorted(self.payee.pending):
            self._payee_completes_one(n, data.draw(st.integers(0, 3), label=f"ok {n}") > 0)
        while self.reverse:
            self._payer_receives_one()
        assert self.payee.reserved == 0
        if not self.cheated:
            assert self.payer.spent + self.unaccounted + self.tail_carry == self.payee.spent

    @precondition(lambda self: bool(self.forward or self.payee.pending or self.reverse))
    @rule(data=st.data())
    def lossy_network(self, data: st.DataObject) -> None:
        """Every request is delivered and served, handlers finish in any order, but the
        reverse stream loses some responses (then the payer may abandon what timed out)."""
        while self.forward:
            self._payee_processes_one()
        while self.payee.pending:
            n = data.draw(st.sampled_from(sorted(self.payee.pending)), label="complete")
            self._payee_completes_one(n, data.draw(st.integers(0, 3), label="ok") > 0)
        while self.reverse:
            if data.draw(st.integers(0, 2), label="lose") == 0:
                self._drop_back(0)
            else:
                self._payer_receives_one()
        if data.draw(st.booleans(), label="time out"):
            for n in sorted(self.payer.in_flight):
                self.payer.abandon(n)

    # ------------------------------------------------------------------ network

    @precondition(lambda self: bool(self.forward))
    @rule(data=st.data())
    def net_duplicates(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.forward) - 1), label="duplicate")
        j = data.draw(st.integers(i + 1, len(self.forward)), label="at")
        self.forward.insert(j, self.forward[i])

    @precondition(lambda self: len(self.forward) >= 2)
    @rule(data=st.data())
    def net_reorders(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.forward) - 2), label="swap")
        j = data.draw(st.integers(i + 1, len(self.forward) - 1), label="with")
        self.forward[i], self.forward[j] = self.forward[j], self.forward[i]

    @precondition(lambda self: bool(self.forward))
    @rule(data=st.data())
    def net_drops_request(self, data: st.DataObject) -> None:
        del self.forward[data.draw(st.integers(0, len(self.forward) - 1), label="drop")]

    @precondition(lambda self: bool(self.reverse))
    @rule(data=st.data())
    def net_drops_response(self, data: st.DataObject) -> None:
        self._drop_back(data.draw(st.integers(0, len(self.reverse) - 1), label="drop"))

    @rule(ms=st.integers(min_value=0, max_value=150))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    # ------------------------------------------------------------------ MALLORY

    @rule(
        ahead=st.integers(min_value=0, max_value=3),
        paid=st.integers(min_value=0, max_value=3 * DEPOSIT),
        service=st.sampled_from(sorted(SERVICES)),
    )
    def mallory_forges(self, ahead: int, paid: int, service: str) -> None:
        forged = Request.create(
            MALLORY,
            ledger=LEDGER,
            channel=CHANNEL,
            n=self.payee.last_n + 1 + ahead,
            paid=paid,
            price=SERVICES[service],
            service=service,
            body=b"gimme",
            deadline=self.now + 1000,
        )
        self.forward.append((MALLORY.public, forged.to_frame()))

    @precondition(lambda self: bool(self.alice_frames))
    @rule(data=st.data())
    def mallory_replays(self, data: st.DataObject) -> None:
        frame = data.draw(st.sampled_from(self.alice_frames), label="replay")
        self.forward.append((MALLORY.public, frame))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def inv_1_payee_credit(self) -> None:
        ch = self.payee
        assert 0 <= ch.spent and 0 <= ch.reserved, "INV-1"
        assert ch.spent + ch.reserved <= ch.paid_max <= ch.deposit, "INV-1"
        assert ch.reserved == sum(ch.pending.values()), "INV-1"
        assert set(ch.deadlines) == set(ch.pending), "INV-4: each reservation has its deadline"

    @invariant()
    def inv_2_best_voucher(self) -> None:
        ch = self.payee
        if ch.paid_max == 0:
            assert ch.best is None and ch.verified is None, "INV-2"
        else:
            assert ch.best is not None, "INV-2"
            if not ch.deferral_revoked:  # a failed check drops `best` back to `verified`
                assert ch.best.paid == ch.paid_max, "INV-2"
            assert (ch.best.ledger, ch.best.channel) == (LEDGER, CHANNEL), "INV-2"
            if not self.cheated:
                assert ch.best.verify(ALICE.public), "INV-2"
        if ch.verified is not None:  # what the payee would redeem: ALICE signed it
            assert ch.verified.verify(ALICE.public), "INV-2"
            assert ch.verified.paid <= min(ch.paid_max, self.max_signed), "INV-2"
        if not self.LIMIT:
            assert ch.verified is ch.best, "INV-2: every voucher is checked"
        assert ch.paid_max >= self.payee_paid_max_floor, "INV-2"
        self.payee_paid_max_floor = ch.paid_max

    @invariant()
    def inv_21_unchecked_credit_bounded(self) -> None:
        ch = self.payee
        assert ch.spent + ch.reserved <= ch.verified_paid + self.LIMIT, "INV-21"
        assert ch.unverified_credit <= self.LIMIT, "INV-21"

    @invariant()
    def inv_6_request_numbers(self) -> None:
        assert self.payee.last_n >= self.payee_last_n_floor, "INV-6"
        self.payee_last_n_floor = self.payee.last_n

    @invariant()
    def redeemable_was_signed(self) -> None:
        if self.cheated:  # the payee's loss is bounded by INV-21 instead
            return
        assert self.payee.paid_max <= self.max_signed
        assert self.payee.spent <= self.payer.paid
        assert self.payee.last_n <= self.max_n_signed
        assert self.payee.deposit <= self.payer.deposit

    @invariant()
    def inv_11_payer_paid_monotonic(self) -> None:
        assert self.paid_floor <= self.payer.paid <= self.payer.deposit, "INV-11"
        self.paid_floor = self.payer.paid

    @invariant()
    def spent_conserved(self) -> None:
        if self.cheated:
            return
        on_wire = sum(w.charged + w.carry for w in self.reverse) + self.tail_carry
        assert self.payer.spent + self.unaccounted + on_wire == self.payee.spent
        assert self.payer.spent <= self.payee.spent
        if not self.life_dropped:
            # no receipt lost: the prices the payer accepted add up to the payee's spent
            assert self.unaccounted == 0
            assert self.life_base + self.life_accepted + on_wire == self.payee.spent

    @invariant()
    def absorbed_bounded(self) -> None:
        pool = sum(p.price for p in self.payer.abandoned.values()) + self.payer.forgotten
        assert 0 <= self.payer.absorbed <= pool
        assert not set(self.payer.in_flight) & set(self.payer.abandoned)

    @invariant()
    def payer_restart_changes_nothing(self) -> None:
        live = self.payer
        record = _payer_record(live)  # raises if a consistency check of the record fails
        restored = PayerChannel(
            ledger=record.ledger,
            channel=record.channel,
            payer=record.payer,
            payee=record.payee,
            deposit=record.deposit,
            status=ChannelStatus(record.status),
            last_n=record.last_n,
            paid=record.paid,
            spent=record.spent,
            absorbed=record.absorbed,
            forgotten=record.forgotten,
            released=record.released,
        )
        restored.restore_abandoned([*live.in_flight.values(), *live.abandoned.values()])
        stopped = dataclasses.replace(
            live, in_flight=dict(live.in_flight), abandoned=dict(live.abandoned)
        )
        for n in list(stopped.in_flight):
            stopped.abandon(n)
        assert snapshot(restored) == snapshot(stopped), "PAYER-RESTART"
        assert restored.outstanding == stopped.outstanding, "PAYER-RESTART"


class DeferredChannelMachine(ChannelMachine):
    LIMIT = DEFERRED_LIMIT

    @rule(
        ahead=st.integers(min_value=1, max_value=2),
        extra=st.integers(min_value=0, max_value=60),
        service=st.sampled_from(["echo", "big"]),
    )
    def alice_cheats(self, ahead: int, extra: int, service: str) -> None:
        """ALICE sends, on her own authenticated stream, a voucher MALLORY's key signed
        (a bad signature): paid above anything she signed, so it looks like fresh credit."""
        event("ALICE cheats")
        self.cheated = True
        price = SERVICES[service]
        forged = Request.create(
            MALLORY,
            ledger=LEDGER,
            channel=CHANNEL,
            n=max(self.payee.last_n, self.max_n_signed) + ahead,
            paid=min(self.payee.deposit, max(self.payee.paid_max, self.max_signed) + price + extra),
            price=price,
            service=service,
            body=b"gimme",
            deadline=self.now + 1000,
        )
        self.max_n_signed = max(self.max_n_signed, forged.n)
        self.forward.append((ALICE.public, forged.to_frame()))

    @invariant()
    def bad_voucher_never_redeemed(self) -> None:
        ch = self.payee
        voucher = dataclasses.replace(ch).verified_voucher()  # a copy: checking changes state
        assert voucher is None or voucher.verify(ALICE.public), "13.4 rule b"
        if voucher is not None:
            assert voucher.paid <= self.max_signed
            # the payee's loss (charged, not redeemable) is at most the limit
            assert ch.spent - min(ch.spent, voucher.paid) <= self.LIMIT, "INV-21"


ChannelMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestChannelMachine = ChannelMachine.TestCase
DeferredChannelMachine.TestCase.settings = ChannelMachine.TestCase.settings
TestDeferredChannelMachine = DeferredChannelMachine.TestCase


#: The same machine with many more and longer runs: ``pytest -m slow``.
TestChannelMachineSlow = pytest.mark.slow(
    type(
        "TestChannelMachineSlow",
        (ChannelMachine.TestCase,),
        {
            "settings": settings(
                max_examples=2000,
                stateful_step_count=100,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
        },
    )
)
