"""Hypothesis state machine over the pure settlement contract (specs/settlement.md section 9).

ALICE, BOB, CAROL and MALLORY perform random operations on one dev ledger, valid and
invalid alike: any of them may try any op on any channel, stake or claim (MALLORY is simply
the one who is never a legitimate party unless hypothesis makes her one), sign vouchers with
the wrong key, present them on the wrong ledger, tamper with bodies, answer late, and so on.
After every step the named invariants are asserted:

* S-1..S-3 via `invariant_violations` (conservation, bounds, open-claim counts);
* S-4 a refused op left the state exactly as it was, a successful one emitted events;
* S-5 monotonicity (deposit, redeemed, paid_seen, refunded, clawed, nonce, burnt; final
  states; fixed parties and claimed terms; a new claim's window: a whole window plus a
  slot per claim open against the stake);
* S-6 no third party moved another's money, except S-6a/b/c/d;
* S-7 a payee never got more than the best voucher its payer signed, nor than the deposit;
* C-2 (specs/claims.md) an honest payee on its own channel (HONEST, who serves or refuses
  fresh slices, redeems only what it charged and answers every claim at once: with the
  response, the refusal, or conflicting evidence) is never clawed back nor slashed, and
  ``paid_seen - refunded >= spent`` always holds on its channel;
* T-1 `apply` on the partial state a backend loads from `touches_loaded` behaves exactly as
  on the full state (same outcome, same entities written): `touches` is complete.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import STATUS_OK, Request, Response, decode_frame
from p2pay.core.settlement import (
    MAX_AMOUNT,
    AnswerClaim,
    ChannelState,
    ClaimState,
    Event,
    FileClaim,
    FinalizeClose,
    Mint,
    Op,
    OpenChannel,
    Params,
    PayeeClose,
    Redeem,
    RequestUnstake,
    ResolveClaim,
    StakeOp,
    StartClose,
    State,
    TopUp,
    Transfer,
    Withdraw,
    WithdrawStake,
    apply,
    claim_slot_ms,
    invariant_violations,
    tiling_conflict,
    touches,
    touches_loaded,
)

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
CAROL = Keypair.from_seed(bytes([3]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)
HONEST = Keypair.from_seed(bytes([5]) * 32)  # an honest payee, never driven by random rules
KEYS = [ALICE, BOB, CAROL, MALLORY]
BY_ACCOUNT = {k.public: k for k in [*KEYS, HONEST]}

LEDGER = b"prop-ledger"
OTHER_LEDGER = b"elsewhere"
NOWHERE = bytes([9]) * 32
PARAMS = Params(
    ledger_id=LEDGER,
    dev=True,
    claim_bond=50,
    slash_to_claimant_bps=4_000,
    min_challenge_ms=1,
    max_challenge_ms=100,
    min_claim_window_ms=1,
    max_claim_window_ms=100,
    max_deadline_horizon_ms=100,
)

keys = st.sampled_from(KEYS)
accounts = st.one_of(keys.map(lambda k: k.public), keys.map(lambda k: k.public), st.just(NOWHERE))
# mostly valid values, with the edges (0, negative, 2**128 - 1, 2**128) mixed in
small = st.integers(1, 400)
amounts = st.one_of(
    small, small, small, st.sampled_from([0, -1, MAX_AMOUNT, MAX_AMOUNT - 1, MAX_AMOUNT + 1])
)
caps = st.one_of(st.none(), st.integers(-1, 400))
periods = st.one_of(st.integers(1, 100), st.integers(1, 100), st.sampled_from([0, 101]))


def partial(full: State, op: Op) -> State:
    """What a backend loading only `touches_loaded(op)` hands to `apply`."""
    first = touches(op)
    out = State(params=full.params, supply=full.supply, burnt=full.burnt, nonce=full.nonce)
    for cid in first.channels & full.channels.keys():
        out.channels[cid] = copy.deepcopy(full.channels[cid])
    for claim_id in first.claims & full.claims.keys():
        out.claims[claim_id] = copy.deepcopy(full.claims[claim_id])
    complete = touches_loaded(op, out)
    for cid in complete.channels & full.channels.keys():  # the channels of touched claims
        out.channels.setdefault(cid, copy.deepcopy(full.channels[cid]))
    for account in complete.accounts & full.balances.keys():
        out.balances[account] = full.balances[account]
    for account in complete.stakes & full.stakes.keys():
        out.stakes[account] = copy.deepcopy(full.stakes[account])
    return out


def escrow_of(state: State) -> dict[bytes, int]:
    return {cid: c.escrow for cid, c in state.channels.items()}


class SettlementMachine(RuleBasedStateMachine):
    channels = Bundle("channels")
    requests = Bundle("requests")
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.state = State(params=PARAMS)
        self.now = 1_000
        self.n = 0
        # S-7: highest `paid` the real payer signed per channel, on this ledger
        self.signed_max: dict[bytes, int] = {}
        self.claim_requests: dict[bytes, Request] = {}
        # C-2: ALICE pays HONEST on `honest_cid`; HONEST's view of what it served
        self.honest_cid = b""
        self.honest_seen: list[Request] = []  # every request HONEST received, in order
        self.honest_answers: dict[bytes, Response] = {}  # request hash -> its answer
        self.honest_spent = 0
        self.honest_claims: list[bytes] = []

    @initialize(target=channels)
    def setup(self) -> Any:
        """Everyone holds 5_000; BOB and CAROL are staked providers with a customer each."""
        for key in KEYS:
            self.do(Mint(sender=key.public, account=key.public, amount=5_000))
        self.do(StakeOp(sender=BOB.public, amount=1_000, penalty=150, claim_window_ms=50))
        self.do(StakeOp(sender=CAROL.public, amount=300, penalty=200, claim_window_ms=80))
        self.do(Mint(sender=HONEST.public, account=HONEST.public, amount=5_000))
        self.do(StakeOp(sender=HONEST.public, amount=1_000, penalty=150, claim_window_ms=100))
        self.honest_cid = self.do(
            OpenChannel(sender=ALICE.public, payee=HONEST.public, deposit=2_000, challenge_ms=40)
        )
        return multiple(
            self.do(
                OpenChannel(sender=ALICE.public, payee=BOB.public, deposit=900, challenge_ms=40)
            ),
            self.do(
                OpenChannel(sender=MALLORY.public, payee=CAROL.public, deposit=500, challenge_ms=1)
            ),
        )

    # ------------------------------------------------------------------ the checked step

    def do(self, op: Op) -> Any:
        before = copy.deepcopy(self.state)
        small = partial(before, op)
        try:
            result, events = apply(self.state, op, self.now)
        except SettlementError as exc:
            event(f"{type(op).__name__} refused {exc.code.value}")
            assert self.state == before, "S-4: a refused op changed the state"
            self.check_partial_refused(small, op, exc.code)
            return None
        event(f"{type(op).__name__} ok")
        if isinstance(op, Redeem | PayeeClose) and result:  # S-7: held <= entitled
            channel = self.state.channels[events[0].fields["channel"]]
            held = channel.redeemed - channel.clawed
            assert held <= max(0, channel.paid_seen - channel.refunded), "S-7 entitlement"
        self.check_partial_ok(small, op, result, events)
        self.check_events(op, result, events)
        self.check_monotonic(before)
        self.check_no_third_party(before, op, events)
        self.check_vouchers()
        return result

    def check_partial_refused(self, small: State, op: Op, code: ErrorCode) -> None:
        try:
            apply(small, op, self.now)
        except SettlementError as exc:
            assert exc.code is code, f"T-1: partial state refused with {exc.code}, full {code}"
        else:
            raise AssertionError("T-1: partial state accepted an op the full state refused")

    def check_partial_ok(self, small: State, op: Op, result: Any, events: list[Event]) -> None:
        assert apply(small, op, self.now) == (result, events), "T-1: partial outcome differs"
        full = self.state
        assert (small.supply, small.burnt, small.nonce) == (full.supply, full.burnt, full.nonce)
        for name in ("balances", "channels", "stakes", "claims"):
            part, whole = getattr(small, name), getattr(full, name)
            for key, value in part.items():
                assert whole[key] == value, f"T-1: {name} entry differs"

    def check_events(self, op: Op, result: Any, events: list[Event]) -> None:
        # S-4: every successful op emits an event, except a Redeem that paid nothing
        if not (isinstance(op, Redeem) and result == 0):
            assert events, "S-4: success without an event"
        for item in events:
            assert item.at == self.now
            assert all(isinstance(v, bytes | int | str) for v in item.fields.values())

    def check_monotonic(self, before: State) -> None:
        after = self.state
        assert after.nonce >= before.nonce and after.burnt >= before.burnt, "S-5"
        for cid, old in before.channels.items():
            new = after.channels[cid]
            assert new.deposit >= old.deposit and new.redeemed >= old.redeemed, "S-5 channel"
            assert new.paid_seen >= old.paid_seen, "S-5 paid_seen"
            assert new.refunded >= old.refunded and new.clawed >= old.clawed, "S-5 refunds"
            assert (new.payer, new.payee, new.challenge_ms) == (
                old.payer,
                old.payee,
                old.challenge_ms,
            )
            if old.state is ChannelState.CLOSED:
                # final, but claims on it still record what they show and refund
                # (paid_seen, refunded, clawed): a payee cannot close to escape a clawback
                moved = ("state", "deposit", "redeemed", "closes_at")
                assert all(getattr(new, f) == getattr(old, f) for f in moved), "S-5: CLOSED"
        for claim_id, old_claim in before.claims.items():
            new_claim = after.claims[claim_id]
            fixed = ("claimant", "respondent", "channel", "n", "price", "paid", "deadline", "bond")
            for name in fixed:
                assert getattr(new_claim, name) == getattr(old_claim, name), f"S-5 claim {name}"
            if old_claim.state is not ClaimState.OPEN:
                assert new_claim == old_claim, "S-5: DELIVERED/REFUSED/FRIVOLOUS/UPHELD are final"
        for claim_id, claim in after.claims.items():
            if claim_id in before.claims or claim.window_ends == claim.filed_at:
                continue  # not new, or a refund with the payee's refusal (settled at once)
            # a new regular claim: a whole window, plus a slot per claim still open
            stake = before.stakes[claim.respondent]
            slot = claim_slot_ms(after.params, stake.claim_window_ms)
            assert claim.window_ends == (
                claim.filed_at + stake.claim_window_ms + stake.open_claims * slot
            ), "S-5 queued window"

    def check_no_third_party(self, before: State, op: Op, events: list[Event]) -> None:
        after = self.state
        sender = op.sender

        def gained(account: bytes) -> int:
            return after.balances.get(account, 0) - before.balances.get(account, 0)

        # S-6: balances only go down for the sender
        for account in before.balances.keys() | after.balances.keys():
            if gained(account) < 0:
                assert account == sender, "S-6: a balance fell through another's op"

        # escrow leaves a channel only to its payer or payee, by the rightful op
        old_escrow, new_escrow = escrow_of(before), escrow_of(after)
        for cid, old in old_escrow.items():
            lost = old - new_escrow[cid]
            if lost <= 0:
                continue
            channel = after.channels[cid]
            if isinstance(op, Redeem):  # S-6a
                assert sender == channel.payee and gained(channel.payee) == lost
            elif isinstance(op, PayeeClose):  # S-6a
                assert sender == channel.payee
                assert gained(channel.payee) + gained(channel.payer) == lost
            elif isinstance(op, FinalizeClose):  # S-6b
                assert before.channels[cid].closes_at <= self.now
                assert gained(channel.payer) == lost
            else:
                raise AssertionError(f"S-6: {type(op).__name__} took escrow")

        # a stake shrinks only by its owner's withdrawal, a slash after the window, or the
        # clawback of a refund its owner had already redeemed
        for account, old_stake in before.stakes.items():
            lost = old_stake.amount - after.stakes[account].amount
            if lost <= 0:
                continue
            if isinstance(op, WithdrawStake):
                assert sender == account and gained(account) == lost, "S-6 withdraw"
            elif isinstance(op, ResolveClaim):  # S-6c
                claim = after.claims[op.claim]
                assert claim.respondent == account and self.now > claim.window_ends
                assert lost == claim.slashed + claim.clawed
                assert claim.slashed <= old_stake.penalty and claim.clawed <= claim.price
                to_claimant = claim.slashed * PARAMS.slash_to_claimant_bps // 10_000
                assert gained(claim.claimant) == to_claimant + claim.bond + claim.clawed
                assert after.burnt - before.burnt == claim.slashed - to_claimant
            elif isinstance(op, AnswerClaim):  # S-6d: REFUSED by the respondent itself
                claim = after.claims[op.claim]
                assert claim.state is ClaimState.REFUSED and sender == account
                assert claim.respondent == account and lost == claim.clawed <= claim.price
                assert gained(claim.claimant) == claim.bond + claim.clawed
            else:
                raise AssertionError(f"S-6: {type(op).__name__} took a stake")
        # a claim's bond goes to the claimant unless the payer's own signatures show the
        # claim is frivolous
        for claim_id, claim in after.claims.items():
            old_claim = before.claims.get(claim_id)
            if old_claim is None or old_claim.state is not ClaimState.OPEN:
                continue
            if claim.state is ClaimState.FRIVOLOUS:
                evidence = decode_frame(claim.evidence_frame)
                assert isinstance(evidence, Request) and evidence.body == b""
                channel = after.channels[claim.channel]
                claimed = self.claim_requests[claim_id]
                assert evidence.verify(channel.payer) and evidence.channel == claim.channel
                assert tiling_conflict(claimed, evidence, PARAMS.max_deadline_horizon_ms)
            elif claim.state is not ClaimState.OPEN:
                refunded = claim.state in (ClaimState.REFUSED, ClaimState.UPHELD)
                assert claim.refund == (claim.price if refunded else 0)

    def check_vouchers(self) -> None:
        for cid, channel in self.state.channels.items():
            best = self.signed_max.get(cid, 0)
            assert channel.redeemed <= min(best, channel.deposit), "S-7: paid beyond a voucher"
            assert channel.paid_seen <= best, "S-7: paid_seen beyond what the payer signed"

    @invariant()
    def honest_payee_never_clawed(self) -> None:
        """C-2 for HONEST's channel."""
        if not self.honest_cid:
            return
        channel = self.state.channels[self.honest_cid]
        assert channel.clawed == 0, "C-2: an honest payee was clawed back"
        assert channel.redeemed == self.honest_spent, "HONEST redeems exactly what it charged"
        if channel.state is not ChannelState.CLOSED:
            assert channel.paid_seen - channel.refunded >= self.honest_spent, "C-2"
        for claim_id in self.honest_claims:
            claim = self.state.claims[claim_id]
            assert claim.state is not ClaimState.UPHELD and claim.slashed == 0, "C-1"

    @invariant()
    def state_invariants(self) -> None:
        assert invariant_violations(self.state) == []

    # ------------------------------------------------------------------ time

    @rule(ms=st.one_of(st.integers(0, 30), st.integers(0, 150)))
    def tick(self, ms: int) -> None:
        self.now += ms

    # ------------------------------------------------------------------ accounts

    @rule(key=keys, to=accounts, amount=st.one_of(st.integers(1, 3_000), amounts))
    def mint(self, key: Keypair, to: bytes, amount: int) -> None:
        self.do(Mint(sender=key.public, account=to, amount=amount))

    @rule(key=keys, to=accounts, amount=amounts)
    def transfer(self, key: Keypair, to: bytes, amount: int) -> None:
        self.do(Transfer(sender=key.public, to=to, amount=amount))

    @rule(key=keys, amount=amounts)
    def withdraw(self, key: Keypair, amount: int) -> None:
        self.do(Withdraw(sender=key.public, amount=amount))

    # ------------------------------------------------------------------ channels

    def party(self, key: Keypair, cid: bytes, role: str | None) -> bytes:
        """`role` ("payer"/"payee") of channel `cid` if asked and known, else `key`."""
        channel = self.state.channels.get(cid)
        if role is None or channel is None:
            return key.public
        return channel.payer if role == "payer" else channel.payee

    @rule(target=channels, key=keys, payee=accounts, deposit=amounts, challenge=periods)
    def open_channel(self, key: Keypair, payee: bytes, deposit: int, challenge: int) -> Any:
        op = OpenChannel(sender=key.public, payee=payee, deposit=deposit, challenge_ms=challenge)
        cid = self.do(op)
        return multiple() if cid is None else cid

    @rule(target=channels, payer=keys, payee=keys, deposit=st.integers(1, 800))
    def honest_open(self, payer: Keypair, payee: Keypair, deposit: int) -> Any:
        if payer == payee:
            return multiple()
        op = OpenChannel(sender=payer.public, payee=payee.public, deposit=deposit, challenge_ms=30)
        cid = self.do(op)
        return multiple() if cid is None else cid

    def make_request(
        self, cid: bytes, key: Keypair, paid: int, deadline: int, *, ledger: bytes = LEDGER
    ) -> Request:
        """`key` signs a request on `cid` for cumulative `paid`, due `deadline` ms from now."""
        self.n += 1
        request = Request.create(
            key,
            ledger=ledger,
            channel=cid,
            n=self.n,
            paid=min(paid, MAX_AMOUNT),
            price=1,
            service="svc",
            body=b"body %d" % self.n,
            deadline=max(0, self.now + deadline),
        )
        channel = self.state.channels.get(cid)
        if channel is not None and key.public == channel.payer and ledger == LEDGER:
            self.signed_max[cid] = max(self.signed_max.get(cid, 0), request.paid)
        return request

    def fresh_voucher(self, cid: bytes, extra: int, deadline: int) -> Request:
        """The payer signs a little more than it signed before (what honest payers do)."""
        payer = BY_ACCOUNT[self.state.channels[cid].payer]
        return self.make_request(cid, payer, self.signed_max.get(cid, 0) + extra, deadline)

    @rule(target=requests, cid=channels, extra=st.integers(0, 200), deadline=st.integers(-40, 40))
    def honest_voucher(self, cid: bytes, extra: int, deadline: int) -> Request:
        return self.fresh_voucher(cid, extra, deadline)

    @rule(key=keys, cid=channels, amount=amounts, role=st.sampled_from([None, "payer"]))
    def top_up(self, key: Keypair, cid: bytes, amount: int, role: str | None) -> None:
        self.do(TopUp(sender=self.party(key, cid, role), channel=cid, amount=amount))

    @rule(
        target=requests,
        cid=st.one_of(channels, channels, channels, st.just(NOWHERE)),
        by_payer=st.sampled_from([True, True, True, False]),
        other=keys,
        paid=st.one_of(st.integers(0, 600), st.just(MAX_AMOUNT)),
        deadline=st.integers(-60, 150),
        foreign=st.integers(0, 9),
        bad_body=st.integers(0, 9),
    )
    def sign(
        self,
        cid: bytes,
        by_payer: bool,
        other: Keypair,
        paid: int,
        deadline: int,
        foreign: int,
        bad_body: int,
    ) -> Request:
        channel = self.state.channels.get(cid)
        key = BY_ACCOUNT[channel.payer] if by_payer and channel is not None else other
        ledger = OTHER_LEDGER if foreign == 0 else LEDGER
        request = self.make_request(cid, key, paid, deadline, ledger=ledger)
        if bad_body == 0:
            request = Request.from_signed(request.signing_bytes, request.signature, b"tampered")
        return request

    @rule(cid=channels, key=keys, extra=st.integers(1, 300))
    def outsider_redeem(self, cid: bytes, key: Keypair, extra: int) -> None:
        """Someone other than the payee presents a fresh, valid voucher."""
        voucher = self.fresh_voucher(cid, extra, 10)
        if key.public == self.state.channels[cid].payee:
            key = MALLORY if key != MALLORY else ALICE
        self.do(Redeem(sender=key.public, voucher=voucher))

    @rule(cid=channels, forger=keys, extra=st.integers(1, 300), close=st.booleans())
    def forged_redeem(self, cid: bytes, forger: Keypair, extra: int, close: bool) -> None:
        """The payee presents a voucher for more, signed by someone other than the payer."""
        channel = self.state.channels[cid]
        if forger.public == channel.payer:
            forger = MALLORY if forger != MALLORY else CAROL
        voucher = self.make_request(cid, forger, self.signed_max.get(cid, 0) + extra, 10)
        if close:
            self.do(PayeeClose(sender=channel.payee, channel=cid, voucher=voucher))
        else:
            self.do(Redeem(sender=channel.payee, voucher=voucher))

    @rule(cid=channels, extra=st.integers(0, 400), cap=caps)
    def honest_redeem(self, cid: bytes, extra: int, cap: int | None) -> None:
        """The payee redeems a fresh voucher, possibly above the deposit."""
        voucher = self.fresh_voucher(cid, extra, 10)
        self.do(Redeem(sender=self.state.channels[cid].payee, voucher=voucher, amount=cap))

    @rule(key=keys, voucher=requests, cap=caps, role=st.sampled_from([None, "payee", "payee"]))
    def redeem(self, key: Keypair, voucher: Request, cap: int | None, role: str | None) -> None:
        sender = self.party(key, voucher.channel, role)
        self.do(Redeem(sender=sender, voucher=voucher, amount=cap))

    @rule(
        key=keys,
        cid=channels,
        voucher=st.one_of(st.none(), requests),
        cap=caps,
        role=st.sampled_from([None, "payee"]),
    )
    def payee_close(
        self, key: Keypair, cid: bytes, voucher: Request | None, cap: int | None, role: str | None
    ) -> None:
        if voucher is not None and role is not None:
            cid = voucher.channel  # mostly a voucher for the channel being closed
        sender = self.party(key, cid, role)
        self.do(PayeeClose(sender=sender, channel=cid, voucher=voucher, amount=cap))

    @rule(key=keys, cid=channels, role=st.sampled_from([None, "payer"]))
    def start_close(self, key: Keypair, cid: bytes, role: str | None) -> None:
        self.do(StartClose(sender=self.party(key, cid, role), channel=cid))

    @rule(key=keys, cid=st.one_of(channels, channels, st.just(NOWHERE)))
    def finalize_close(self, key: Keypair, cid: bytes) -> None:
        self.do(FinalizeClose(sender=key.public, channel=cid))

    # ------------------------------------------------------------------ stakes

    @rule(key=keys, amount=amounts, penalty=st.one_of(st.integers(1, 60), amounts), window=periods)
    def stake(self, key: Keypair, amount: int, penalty: int, window: int) -> None:
        self.do(StakeOp(sender=key.public, amount=amount, penalty=penalty, claim_window_ms=window))

    @rule(key=keys)
    def request_unstake(self, key: Keypair) -> None:
        self.do(RequestUnstake(sender=key.public))

    @rule(key=keys)
    def withdraw_stake(self, key: Keypair) -> None:
        self.do(WithdrawStake(sender=key.public))

    # ------------------------------------------------------------------ claims

    @rule(target=claims, key=keys, request=requests, by_payer=st.booleans())
    def file_claim(self, key: Keypair, request: Request, by_payer: bool) -> Any:
        channel = self.state.channels.get(request.channel)
        sender = channel.payer if by_payer and channel is not None else key.public
        claim_id = self.claim(sender, request)
        return multiple() if claim_id is None else claim_id

    def claim(self, sender: bytes, request: Request) -> bytes | None:
        claim_id = self.do(FileClaim(sender=sender, request=request))
        if claim_id is not None:
            self.claim_requests[claim_id] = request
        return claim_id  # type: ignore[no-any-return]

    # the "honest" rules below pick a fitting entity by index so that complete flows (claim,
    # answer, slash) happen in most runs; the adversarial rules around them try everything else

    @rule(target=claims, pick=st.integers(0, 1_000), late=st.integers(1, 45))
    def honest_claim(self, pick: int, late: int) -> Any:
        """A payer claims a request to a staked payee whose deadline passed `late` ms ago."""
        fitting = sorted(
            cid
            for cid, c in self.state.channels.items()
            if self.state.stakes.get(c.payee) is not None and self.state.stakes[c.payee].amount > 0
        )
        if not fitting:
            return multiple()
        cid = fitting[pick % len(fitting)]
        request = self.fresh_voucher(cid, 0, -late)
        claim_id = self.claim(self.state.channels[cid].payer, request)
        return multiple() if claim_id is None else claim_id

    def open_claims(self) -> list[bytes]:
        return sorted(i for i, c in self.state.claims.items() if c.state is ClaimState.OPEN)

    @rule(pick=st.integers(0, 1_000), status=st.sampled_from(["OK", "OVERLOADED"]))
    def honest_answer(self, pick: int, status: str) -> None:
        """The respondent answers an open claim with its signed response."""
        open_ids = self.open_claims()
        if open_ids:
            claim_id = open_ids[pick % len(open_ids)]
            respondent = self.state.claims[claim_id].respondent
            self.answer_claim(MALLORY, claim_id, True, BY_ACCOUNT[respondent], status, None)

    @rule(key=keys, pick=st.integers(0, 1_000))
    def wait_and_resolve(self, key: Keypair, pick: int) -> None:
        """Anyone resolves an open claim once its window has passed."""
        open_ids = self.open_claims()
        if open_ids:
            claim_id = open_ids[pick % len(open_ids)]
            self.now = max(self.now, self.state.claims[claim_id].window_ends + 1)
            self.resolve_claim(key, claim_id)

    @rule(
        key=keys,
        claim_id=st.one_of(claims, st.just(NOWHERE)),
        by_respondent=st.booleans(),
        signer=keys,
        status=st.sampled_from(["OK", "OVERLOADED", "DEADLINE_EXCEEDED"]),
        other=st.one_of(st.none(), st.none(), st.none(), requests),
    )
    def answer_claim(
        self,
        key: Keypair,
        claim_id: bytes,
        by_respondent: bool,
        signer: Keypair,
        status: str,
        other: Request | None,
    ) -> None:
        claim = self.state.claims.get(claim_id)
        request = other if other is not None else self.claim_requests.get(claim_id)
        if request is None:
            request = (
                self.claim_requests[next(iter(self.claim_requests))]
                if self.claim_requests
                else None
            )
        if request is None:
            return
        sender = key.public
        if by_respondent and claim is not None:
            sender = claim.respondent
            signer = BY_ACCOUNT[claim.respondent]
        response = Response.create(
            signer,
            request=request,
            status=status,
            price=1 if status == "OK" else 0,
            spent=1,
            body=b"answer",
        )
        self.do(AnswerClaim(sender=sender, claim=claim_id, response=response))

    @rule(key=keys, claim_id=st.one_of(claims, st.just(NOWHERE)))
    def resolve_claim(self, key: Keypair, claim_id: bytes) -> None:
        self.do(ResolveClaim(sender=key.public, claim=claim_id))


class HonestMachine(SettlementMachine):
    """SettlementMachine plus HONEST's channel: C-2 and the three answers (specs/claims.md)."""

    def honest_request(self, n: int, paid: int, price: int, deadline: int) -> Request:
        request = Request.create(
            ALICE,
            ledger=LEDGER,
            channel=self.honest_cid,
            n=n,
            paid=paid,
            price=price,
            service="svc",
            body=b"q%d" % n,
            deadline=deadline,
        )
        self.signed_max[self.honest_cid] = max(self.signed_max.get(self.honest_cid, 0), paid)
        return request

    @rule(price=st.integers(1, 60), gap=st.integers(0, 20), charge=st.booleans())
    def honest_session(self, price: int, gap: int, charge: bool) -> None:
        """ALICE sends a fresh slice; HONEST charges it (OK) or refuses it (not charged).
        HONEST admits only slices above every voucher it saw and within the deposit."""
        paid_max = max((r.paid for r in self.honest_seen), default=0)
        paid = paid_max + gap + price
        channel = self.state.channels[self.honest_cid]
        if paid > channel.deposit or channel.state is not ChannelState.OPEN:
            return
        n = len(self.honest_seen) + 1
        request = self.honest_request(n, paid, price, self.now - 1)  # due: claimable now
        self.honest_seen.append(request)
        spent = self.honest_spent + (price if charge else 0)
        response = Response.create(
            HONEST,
            request=request,
            status=STATUS_OK if charge else "OVERLOADED",
            price=price if charge else 0,
            spent=spent,
            body=b"answer",
        )
        self.honest_answers[request.hash] = response
        self.honest_spent = spent
        if charge:  # it redeems what it charged, with the newest voucher
            self.do(Redeem(sender=HONEST.public, voucher=request, amount=spent))
            event(f"honest redeem, channel state {channel.state.value}")

    def claim(self, sender: bytes, request: Request) -> bytes | None:
        """Whichever rule files it, a claim on HONEST's channel is answered at once."""
        claim_id = super().claim(sender, request)
        if claim_id is not None and request.channel == self.honest_cid:
            self.honest_defend(claim_id, request)
        return claim_id

    def honest_defend(self, claim_id: bytes, claimed: Request) -> None:
        """HONEST answers a claim at once: its stored answer, else conflicting evidence, else
        (a request it never received, disjoint from every slice it charged) a refusal."""
        self.honest_claims.append(claim_id)
        answer = self.honest_answers.get(claimed.hash)
        horizon = PARAMS.max_deadline_horizon_ms
        evidence = next((r for r in self.honest_seen if tiling_conflict(claimed, r, horizon)), None)
        if answer is not None:
            self.do(AnswerClaim(sender=HONEST.public, claim=claim_id, response=answer))
        elif evidence is not None:
            self.do(AnswerClaim(sender=HONEST.public, claim=claim_id, evidence=evidence))
        else:
            refusal = Response.create(
                HONEST,
                request=claimed,
                status="OVERLOADED",
                price=0,
                spent=self.honest_spent,
                body=b"",
            )
            self.honest_seen.append(claimed)
            self.honest_answers[claimed.hash] = refusal
            self.do(AnswerClaim(sender=HONEST.public, claim=claim_id, response=refusal))
        outcome = self.state.claims[claim_id].state
        event(f"honest claim {outcome.value}")
        assert outcome is not ClaimState.OPEN, "HONEST failed to answer a claim"

    @rule(pick=st.integers(0, 1_000))
    def alice_claims_a_sent_request(self, pick: int) -> None:
        """ALICE claims a request she sent (served or refused): DELIVERED or REFUSED."""
        if not self.honest_seen:
            return
        request = self.honest_seen[pick % len(self.honest_seen)]
        if request.hash in self.state.claims:
            return
        self.claim(ALICE.public, request)  # answered by HONEST at once (`claim`)

    @rule(
        pick=st.integers(0, 1_000),
        kind=st.sampled_from(["same_n", "overlap", "post_dated"]),
        price=st.integers(1, 60),
    )
    def alice_claims_a_made_up_request(self, pick: int, kind: str, price: int) -> None:
        """ALICE makes up a request in tiling conflict with one HONEST saw: FRIVOLOUS."""
        if not self.honest_seen:
            return
        seen = self.honest_seen[pick % len(self.honest_seen)]
        horizon = PARAMS.max_deadline_horizon_ms
        if kind == "same_n":
            fake = self.honest_request(seen.n, seen.paid, max(1, seen.price - 1), self.now - 1)
        elif kind == "overlap":
            fake = self.honest_request(seen.n + 1_000, seen.paid + price - 1, price, self.now - 1)
        else:  # dated beyond a later request's deadline + horizon
            fake = self.honest_request(
                max(1, seen.n - 1) if seen.n > 1 else seen.n + 1_000,
                seen.paid if seen.n > 1 else seen.paid + price,
                price,
                seen.deadline + horizon + 1,
            )
        if fake.hash in self.honest_answers or not any(
            tiling_conflict(fake, r, horizon) for r in self.honest_seen
        ):
            return
        self.now = max(self.now, fake.deadline + 1)
        claim_id = self.claim(ALICE.public, fake)
        if claim_id is not None:
            assert self.state.claims[claim_id].state is ClaimState.FRIVOLOUS

    @rule(pick=st.integers(0, 1_000))
    def honest_answers_refusal_after_cheating(self, pick: int) -> None:
        """Contrast (C-3): BOB redeems a whole voucher, then refuses a claim on it: the
        refund is clawed back from its stake at once."""
        fitting = sorted(
            cid
            for cid, c in self.state.channels.items()
            if c.payee == BOB.public and c.state is not ChannelState.CLOSED
        )
        stake = self.state.stakes.get(BOB.public)
        if not fitting or stake is None or stake.amount == 0:
            return
        cid = fitting[pick % len(fitting)]
        request = self.fresh_voucher(cid, 5, -1)
        paid = self.do(Redeem(sender=BOB.public, voucher=request))
        claim_id = self.claim(self.state.channels[cid].payer, request)
        if not paid or claim_id is None:
            return
        refusal = Response.create(
            BOB, request=request, status="OVERLOADED", price=0, spent=0, body=b""
        )
        self.do(AnswerClaim(sender=BOB.public, claim=claim_id, response=refusal))
        claim = self.state.claims[claim_id]
        if claim.state is ClaimState.REFUSED:
            event(f"cheater clawed {'some' if claim.clawed else 'none'}")


TestSettlementMachine = SettlementMachine.TestCase
TestSettlementMachine.settings = settings(stateful_step_count=60, deadline=None)
TestHonestMachine = HonestMachine.TestCase
TestHonestMachine.settings = settings(stateful_step_count=60, deadline=None)


# The examples below replay, step by step, runs hypothesis found; `event` records nothing
# outside a hypothesis test, so it is silenced for them.


def _replay(monkeypatch: Any) -> HonestMachine:
    monkeypatch.setattr(sys.modules[__name__], "event", lambda _text: None)
    machine = HonestMachine()
    machine.setup()
    return machine


def test_a_claim_any_rule_files_on_the_honest_channel_is_answered_at_once(
    monkeypatch: Any,
) -> None:
    """The newcomer run of 8f7b389 beside a hog: `honest_claim` picked HONEST's channel and
    filed a claim (a request in tiling conflict with the one HONEST charged) that HONEST never
    answered, so `wait_and_resolve` UPHELD it and clawed HONEST back. An honest payee answers
    every claim (C-2's premise): here with the conflicting request, FRIVOLOUS."""
    machine = _replay(monkeypatch)
    machine.honest_session(charge=True, gap=0, price=1)
    fitting = sorted(
        cid for cid, c in machine.state.channels.items() if machine.state.stakes.get(c.payee)
    )
    machine.honest_claim(late=1, pick=fitting.index(machine.honest_cid))
    assert machine.honest_claims, "the claim on HONEST's channel was not answered"
    assert machine.state.claims[machine.honest_claims[0]].state is ClaimState.FRIVOLOUS
    machine.wait_and_resolve(key=ALICE, pick=0)
    machine.honest_payee_never_clawed()
    machine.state_invariants()


def test_a_claim_of_a_request_honest_never_saw_is_refused_and_costs_it_nothing(
    monkeypatch: Any,
) -> None:
    """A claimed request HONEST never received and that conflicts with none it saw: its slice
    is disjoint from every slice HONEST charged, so HONEST refuses it (REFUSED) and the refund
    comes out of the unearned slice, never out of what it redeemed (C-2)."""
    machine = _replay(monkeypatch)
    machine.honest_session(charge=True, gap=0, price=5)
    machine.honest_session(charge=True, gap=0, price=5)
    unseen = machine.honest_request(1_000, 10 + 7, 7, machine.now - 1)  # slice [10, 17)
    claim_id = machine.claim(ALICE.public, unseen)
    assert claim_id is not None
    assert machine.state.claims[claim_id].state is ClaimState.REFUSED
    machine.honest_payee_never_clawed()
    machine.state_invariants()
    assert machine.state.channels[machine.honest_cid].redeemed == 10
