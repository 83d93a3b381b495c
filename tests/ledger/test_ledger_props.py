"""MemoryLedger and SqliteLedger in lockstep under random operations (hypothesis).

Both ledgers share one ledger id and one manual clock, get the same operations (valid and
invalid, by ALICE, BOB, CAROL and MALLORY, with time moving on), and after every step:

* both return the same result or refuse with the same code;
* both hold identical balances, channels, stakes, claims, globals and events;
* both conserve money and pass `invariant_violations` (S-1, S-2, S-3);
* an operation by MALLORY (a third party: honest users never open a channel to her) never
  reduced anyone else's holdings, except ResolveClaim slashing a respondent's stake by at
  most its penalty (specs/settlement.md S-6c).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pay.core.errors import SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response
from p2pay.core.settlement import (
    MAX_AMOUNT,
    ChannelState,
    ClaimState,
    Params,
    State,
    invariant_violations,
)
from p2pay.ledger import MemoryLedger, SqliteLedger
from p2pay.testing import ALICE, BOB, CAROL, MALLORY, ManualClock

KEYS = [ALICE, BOB, CAROL, MALLORY]
HONEST = [ALICE, BOB, CAROL]
LEDGER_ID = b"p2pay:props:lockstep"
PARAMS = dict(
    claim_bond=50,
    min_challenge_ms=1_000,
    max_challenge_ms=20_000,
    min_claim_window_ms=1_000,
    max_claim_window_ms=10_000,
    max_deadline_horizon_ms=5_000,
)
STRANGER = b"\x77" * 32  # an account nobody holds the key of
# fsync dominates SqliteLedger's cost on a disk (synchronous=FULL); durability is not what
# this test checks, so its files go to a tmpfs when there is one.
TMP_BASE = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

valid_amounts = st.integers(1, 2_000)
amounts = st.one_of(
    valid_amounts,
    valid_amounts,
    valid_amounts,
    st.sampled_from([0, -1, MAX_AMOUNT, MAX_AMOUNT + 1]),
)
caps = st.one_of(st.none(), st.none(), st.integers(0, 3_000), st.just(-1))
keys = st.sampled_from(KEYS)


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return trio.run(functools.partial(fn, *args, **kwargs))


def holdings(state: State, account: bytes) -> int:
    """What `account` owns or will get back: balance, stake, escrow it paid, open bonds."""
    total = state.balances.get(account, 0)
    stake = state.stakes.get(account)
    total += stake.amount if stake is not None else 0
    total += sum(c.escrow for c in state.channels.values() if c.payer == account)
    total += sum(
        c.bond
        for c in state.claims.values()
        if c.claimant == account and c.state is ClaimState.OPEN
    )
    return total


def clawed_from(state: State, account: bytes) -> int:
    """Refunds taken back from `account`'s stake so far (over the claims against it)."""
    return sum(c.clawed for c in state.claims.values() if c.respondent == account)


class LockstepLedgers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.tmp = Path(tempfile.mkdtemp(prefix="p2pay-props-", dir=TMP_BASE))
        self.mem = MemoryLedger(Params(ledger_id=LEDGER_ID, dev=True, **PARAMS), clock=self.clock)
        self.sql: SqliteLedger = run(
            SqliteLedger.create,
            self.tmp / "ledger.db",
            dev=True,
            clock=self.clock,
            ledger_id=LEDGER_ID,
            **PARAMS,
        )
        self.channels: list[bytes] = []
        self.requests: list[Request] = []
        self.claims: list[bytes] = []
        self.outcomes: dict[str, int] = {}
        for key in KEYS:
            self.both("mint", key, key.account, 20_000)
        # a few channels and stakes from the start, so that most rules can succeed
        for payer, payee in ((ALICE, BOB), (BOB, CAROL), (CAROL, ALICE), (MALLORY, ALICE)):
            self.channels.append(self.both("open_channel", payer, payee.account, 2_000, 1_000))
        for key in (ALICE, BOB, CAROL):
            self.both("stake", key, 1_000, 300, 4_000)

    def teardown(self) -> None:
        run(self.sql.aclose)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- plumbing

    def both(self, name: str, key: Keypair, *args: Any, **kwargs: Any) -> Any:
        before = self.mem.state
        held = {k.account: holdings(before, k.account) for k in HONEST}
        clawed_before = {k.account: clawed_from(before, k.account) for k in HONEST}
        stakes = {
            a: (s.amount, s.penalty) for a, s in before.stakes.items() if a != MALLORY.account
        }
        outcomes = run(self._both, name, key, args, kwargs)
        assert outcomes[0] == outcomes[1], f"{name}: memory {outcomes[0]} != sqlite {outcomes[1]}"
        label = f"{name}:{outcomes[0][0] if outcomes[0][0] == 'ok' else outcomes[0][1]}"
        self.outcomes[label] = self.outcomes.get(label, 0) + 1
        if key is MALLORY:
            after = self.mem.state
            for k in HONEST:
                now_held = holdings(after, k.account)
                if now_held >= held[k.account]:
                    continue
                # S-6c: only a resolved claim slashes, by at most the penalty
                assert name == "resolve_claim", (
                    f"MALLORY's {name} {outcomes[0]} reduced holdings of {k.account.hex()[:8]}"
                    f" from {held[k.account]} to {now_held}"
                )
                # ... plus the clawback of a refund it had already redeemed (specs 5)
                amount, penalty = stakes[k.account]
                clawed = clawed_from(after, k.account) - clawed_before[k.account]
                assert clawed <= amount - min(amount, penalty)
                assert held[k.account] - now_held <= min(amount, penalty) + clawed
        return outcomes[0][1] if outcomes[0][0] == "ok" else None

    async def _both(
        self, name: str, key: Keypair, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Any]:
        outcomes: list[Any] = []
        for ledger in (self.mem, self.sql):
            try:
                outcomes.append(("ok", await getattr(ledger, name)(key, *args, **kwargs)))
            except SettlementError as exc:
                outcomes.append(("refused", exc.code))
        return outcomes

    async def _views(self) -> tuple[Any, ...]:
        return (
            await self.sql.load_state(),
            await self.mem.totals(),
            await self.sql.totals(),
            await self.mem.events(0, 1 << 20),
            await self.sql.events(0, 1 << 20),
        )

    def pick(self, data: st.DataObject, items: list[bytes], fallback: bytes) -> bytes:
        if items and data.draw(st.integers(0, 9)) > 0:
            return data.draw(st.sampled_from(items))
        return fallback

    # --- rules

    @rule(ms=st.one_of(st.integers(0, 3_000), st.integers(3_000, 40_000)))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)

    @rule(
        key=keys, to=st.sampled_from([k.account for k in KEYS] + [STRANGER, b"\1"]), amount=amounts
    )
    def mint(self, key: Keypair, to: bytes, amount: int) -> None:
        self.both("mint", key, to, amount)

    @rule(key=keys, to=st.sampled_from([k.account for k in KEYS] + [STRANGER]), amount=amounts)
    def transfer(self, key: Keypair, to: bytes, amount: int) -> None:
        self.both("transfer", key, to, amount)

    def pending_times(self) -> list[int]:
        """When something becomes possible: a close, a claim's resolution, an unbonding."""
        state = self.mem.state
        return sorted(
            [c.closes_at for c in state.channels.values() if c.state is ChannelState.CLOSING]
            + [c.window_ends + 1 for c in state.claims.values() if c.state is ClaimState.OPEN]
            + [s.unbonding_at for s in state.stakes.values() if s.unbonding_at > 0]
        )

    @precondition(lambda self: bool(self.pending_times()))
    @rule(data=st.data())
    def wait_for_something(self, data: st.DataObject) -> None:
        self.clock.ms = max(self.clock.ms, data.draw(st.sampled_from(self.pending_times())))

    @rule(key=keys, amount=amounts)
    def withdraw(self, key: Keypair, amount: int) -> None:
        self.both("withdraw", key, amount)

    @rule(
        key=keys,
        payee=st.sampled_from([k.account for k in HONEST] + [STRANGER]),
        deposit=st.one_of(valid_amounts, amounts),
        challenge=st.sampled_from([500, 1_000, 5_000, 20_000, 30_000]),
    )
    def open_channel(self, key: Keypair, payee: bytes, deposit: int, challenge: int) -> None:
        cid = self.both("open_channel", key, payee, deposit, challenge)
        if cid is not None:
            self.channels.append(cid)

    def actor(self, data: st.DataObject, account: bytes | None) -> Keypair:
        """Usually the key of `account` (the party an op needs), sometimes anyone."""
        party = next((k for k in KEYS if k.account == account), None)
        if party is not None and data.draw(st.integers(0, 3)) > 0:
            return party
        return data.draw(keys)

    def channel_party(
        self, data: st.DataObject, fallback: bytes, role: str
    ) -> tuple[Keypair, bytes]:
        cid = self.pick(data, self.channels, fallback)
        channel = self.mem.state.channels.get(cid)
        return self.actor(data, getattr(channel, role, None)), cid

    @rule(data=st.data(), amount=amounts)
    def top_up(self, data: st.DataObject, amount: int) -> None:
        key, cid = self.channel_party(data, b"\2" * 32, "payer")
        self.both("top_up", key, cid, amount)

    def voucher(self, data: st.DataObject, cid: bytes | None = None) -> Request:
        cid = cid if cid is not None else self.pick(data, self.channels, b"\3" * 32)
        channel = self.mem.state.channels.get(cid)
        signer = self.actor(data, channel.payer if channel is not None else None)
        request = Request.create(
            signer,
            ledger=LEDGER_ID if data.draw(st.integers(0, 19)) > 0 else b"p2pay:other",
            channel=cid,
            n=data.draw(st.integers(1, 50)),
            paid=data.draw(st.one_of(st.integers(0, 3_000), st.just(MAX_AMOUNT))),
            price=data.draw(st.integers(0, 100)),
            service="svc",
            body=data.draw(st.sampled_from([b"a", b"bb"])),
            deadline=self.clock.ms + data.draw(st.integers(-12_000, 3_000)),
        )
        self.requests.append(request)
        return request

    @rule(data=st.data(), cap=caps)
    def redeem(self, data: st.DataObject, cap: int | None) -> None:
        key, cid = self.channel_party(data, b"\3" * 32, "payee")
        self.both("redeem", key, self.voucher(data, cid), cap)

    @rule(data=st.data())
    def payee_close(self, data: st.DataObject) -> None:
        key, cid = self.channel_party(data, b"\4" * 32, "payee")
        voucher = None
        if data.draw(st.booleans()):
            other = data.draw(st.integers(0, 5)) == 0
            voucher = self.voucher(data, None if other else cid)
        cap = data.draw(caps)
        self.both("payee_close", key, cid, voucher, cap if voucher is not None else None)

    @rule(data=st.data())
    def start_close(self, data: st.DataObject) -> None:
        key, cid = self.channel_party(data, b"\5" * 32, "payer")
        self.both("start_close", key, cid)

    def prefer(
        self, data: st.DataObject, items: list[bytes], preferred: list[bytes]
    ) -> list[bytes]:
        """`preferred` (e.g. channels in CLOSING) most of the time when there are any."""
        return preferred if preferred and data.draw(st.integers(0, 3)) > 0 else items

    @rule(key=keys, data=st.data())
    def finalize_close(self, key: Keypair, data: st.DataObject) -> None:
        closing = [
            cid for cid, c in self.mem.state.channels.items() if c.state is ChannelState.CLOSING
        ]
        cid = self.pick(data, self.prefer(data, self.channels, closing), b"\5" * 32)
        self.both("finalize_close", key, cid)

    @rule(
        key=keys,
        amount=amounts,
        penalty=st.one_of(st.integers(1, 500), st.sampled_from([0, 5_000])),
        window=st.sampled_from([500, 1_000, 4_000, 10_000, 20_000]),
    )
    def stake(self, key: Keypair, amount: int, penalty: int, window: int) -> None:
        self.both("stake", key, amount, penalty, window)

    def staker(self, data: st.DataObject, unbonding: bool) -> Keypair:
        """Usually someone with a (bonded / unbonding) stake, sometimes anyone."""
        stakes = self.mem.state.stakes
        candidates = [
            k
            for k in KEYS
            if k.account in stakes and (stakes[k.account].unbonding_at > 0) == unbonding
        ]
        if candidates and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(candidates))
        return data.draw(keys)

    @rule(data=st.data())
    def request_unstake(self, data: st.DataObject) -> None:
        self.both("request_unstake", self.staker(data, unbonding=False))

    @rule(data=st.data())
    def withdraw_stake(self, data: st.DataObject) -> None:
        self.both("withdraw_stake", self.staker(data, unbonding=True))

    @rule(data=st.data())
    def file_claim(self, data: st.DataObject) -> None:
        if self.requests and data.draw(st.booleans()):
            request = data.draw(st.sampled_from(self.requests))
        else:
            request = self.voucher(data)
        channel = self.mem.state.channels.get(request.channel)
        key = self.actor(data, channel.payer if channel is not None else None)
        if data.draw(st.integers(0, 9)) == 0:
            request = Request(
                **{
                    f: getattr(request, f)
                    for f in ("ledger", "channel", "n", "paid", "price", "service", "deadline")
                },
                body_hash=request.body_hash,
                signature=request.signature,
                body=b"tampered",
            )
        claim_id = self.both("file_claim", key, request)
        if claim_id is not None:
            self.claims.append(claim_id)

    def claimable(self) -> list[tuple[bytes, Keypair]]:
        state = self.mem.state
        out = []
        for cid, channel in state.channels.items():
            stake = state.stakes.get(channel.payee)
            payer = next((k for k in KEYS if k.account == channel.payer), None)
            if payer is not None and stake is not None and stake.amount > 0:
                out.append((cid, payer))
        return out

    @precondition(lambda self: bool(self.claimable()))
    @rule(data=st.data())
    def well_formed_claim(self, data: st.DataObject) -> None:
        """The payer claims a request to a staked payee whose deadline has just passed."""
        cid, payer = data.draw(st.sampled_from(self.claimable()))
        window = self.mem.state.stakes[self.mem.state.channels[cid].payee].claim_window_ms
        request = Request.create(
            payer,
            ledger=LEDGER_ID,
            channel=cid,
            n=data.draw(st.integers(1, 1_000)),
            paid=data.draw(st.integers(10, 2_200)),  # the deposits are 2_000
            price=10,
            service="svc",
            body=b"q",
            deadline=self.clock.ms - data.draw(st.integers(1, window)),
        )
        self.requests.append(request)
        claim_id = self.both("file_claim", payer, request)
        if claim_id is not None:
            self.claims.append(claim_id)

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data())
    def answer_claim(self, data: st.DataObject) -> None:
        claim_id = data.draw(st.sampled_from(self.prefer(data, self.claims, self.open_claims())))
        claim = self.mem.state.claims[claim_id]
        key = self.actor(data, claim.respondent)
        request = next(r for r in self.requests if r.hash == claim_id)
        if data.draw(st.integers(0, 5)) == 0:
            request = data.draw(st.sampled_from(self.requests))  # answer the wrong request
        if data.draw(st.integers(0, 3)) == 0:  # evidence: another request of the payer
            evidence = data.draw(st.sampled_from(self.requests))
            self.both("answer_claim", key, claim_id, evidence=evidence)
            return
        respondent = next((k for k in KEYS if k.account == claim.respondent), MALLORY)
        signer = respondent if data.draw(st.integers(0, 4)) > 0 else data.draw(keys)
        ok = data.draw(st.booleans())
        response = Response.create(
            signer,
            request=request,
            status="OK" if ok else "OVERLOADED",
            price=request.price if ok else 0,
            spent=max(request.paid, request.price) if ok else 0,
            body=b"answer",
        )
        self.both("answer_claim", key, claim_id, response)

    def open_claims(self) -> list[bytes]:
        return [i for i, c in self.mem.state.claims.items() if c.state is ClaimState.OPEN]

    @rule(key=keys, data=st.data())
    def resolve_claim(self, key: Keypair, data: st.DataObject) -> None:
        claims = self.prefer(data, self.claims, self.open_claims())
        self.both("resolve_claim", key, self.pick(data, claims, b"\6" * 32))

    # --- invariants

    @invariant()
    def identical_and_conserved(self) -> None:
        mem_state = self.mem.state
        sql_state, mem_totals, sql_totals, mem_events, sql_events = run(self._views)
        assert invariant_violations(mem_state) == []
        assert invariant_violations(sql_state) == []
        assert {a: v for a, v in mem_state.balances.items() if v} == {
            a: v for a, v in sql_state.balances.items() if v
        }
        assert mem_state.channels == sql_state.channels
        assert list(mem_state.channels) == list(sql_state.channels)  # opening order
        assert mem_state.stakes == sql_state.stakes
        assert mem_state.claims == sql_state.claims
        assert (mem_state.supply, mem_state.burnt, mem_state.nonce) == (
            sql_state.supply,
            sql_state.burnt,
            sql_state.nonce,
        )
        assert mem_totals == sql_totals and mem_totals.conserved
        assert mem_events == sql_events
        assert [e.seq for e in mem_events] == list(range(1, len(mem_events) + 1))
        assert self.mem.tx_count == self.sql.tx_count
        assert self.sql.lazy_loads == 0


def _run_machine(max_examples: int, steps: int, *, derandomize: bool) -> dict[str, int]:
    seen: dict[str, int] = {}

    class Machine(LockstepLedgers):
        def teardown(self) -> None:
            for label, count in self.outcomes.items():
                seen[label] = seen.get(label, 0) + count
            super().teardown()

    Machine.TestCase.settings = settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=derandomize,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    Machine.TestCase().runTest()
    return seen


OPERATIONS = (
    "mint",
    "transfer",
    "withdraw",
    "open_channel",
    "top_up",
    "redeem",
    "payee_close",
    "start_close",
    "finalize_close",
    "stake",
    "request_unstake",
    "withdraw_stake",
    "file_claim",
    "answer_claim",
    "resolve_claim",
)


def test_lockstep_memory_and_sqlite() -> None:
    """A fixed-seed random run (stable in CI); checked not to be vacuous."""
    seen = _run_machine(max_examples=50, steps=30, derandomize=True)
    succeeded = {op for op in OPERATIONS if seen.get(f"{op}:ok", 0) > 0}
    refusals = {k.split(":")[1] for k in seen if not k.endswith(":ok")}
    # hypothesis enables a random subset of rules per example ("swarm testing"), so not
    # every op succeeds in every seed; the scripted test below covers each one for sure
    assert len(succeeded) >= 10, f"only {sorted(succeeded)} succeeded"
    assert len(refusals) >= 15, f"only {sorted(refusals)} refusal codes seen"


def test_lockstep_scripted() -> None:
    """Every operation's success path, in lockstep, with the checks after each step."""
    m = LockstepLedgers()
    ok: set[str] = set()

    def step(name: str, key: Keypair, *args: Any, **kwargs: Any) -> Any:
        result = m.both(name, key, *args, **kwargs)
        assert m.outcomes.get(f"{name}:ok"), f"{name} was refused: {m.outcomes}"
        ok.add(name)
        m.identical_and_conserved()
        return result

    def request(key: Keypair, cid: bytes, n: int, paid: int, deadline: int) -> Request:
        return Request.create(
            key,
            ledger=LEDGER_ID,
            channel=cid,
            n=n,
            paid=paid,
            price=10,
            service="svc",
            body=b"q",
            deadline=deadline,
        )

    try:
        m.identical_and_conserved()
        step("mint", MALLORY, CAROL.account, 7)
        step("transfer", ALICE, CAROL.account, 5)
        step("withdraw", CAROL, 3)
        cid = step("open_channel", ALICE, BOB.account, 1_000, 2_000)
        step("top_up", ALICE, cid, 500)
        assert step("redeem", BOB, request(ALICE, cid, 1, 300, m.clock.ms), None) == 300
        r2 = request(ALICE, cid, 2, 400, m.clock.ms)
        m.clock.advance(1)
        claim = step("file_claim", ALICE, r2)
        response = Response.create(BOB, request=r2, status="OK", price=10, spent=400, body=b"a")
        step("answer_claim", BOB, claim, response)
        r3 = request(ALICE, cid, 3, 500, m.clock.ms)
        m.clock.advance(1)
        claim3 = step("file_claim", ALICE, r3)
        # claim3's window ends one slot after claim's (claim windows queue per stake)
        m.clock.ms = m.mem.state.claims[claim3].window_ends + 1
        step("resolve_claim", MALLORY, claim3)
        assert m.mem.state.claims[claim3].refund == 10
        # a refusal after redeeming the slice: REFUSED, refund clawed back from the stake
        r4 = request(ALICE, cid, 4, 600, m.clock.ms)
        assert step("redeem", BOB, r4, None) == 290  # paid_seen 600 - refunded 10 - held 300
        m.clock.advance(1)
        claim4 = step("file_claim", ALICE, r4)
        refusal = Response.create(BOB, request=r4, status="OVERLOADED", price=0, spent=0, body=b"")
        step("answer_claim", BOB, claim4, refusal)
        c4 = m.mem.state.claims[claim4]
        assert (c4.state, c4.refund, c4.clawed) == (ClaimState.REFUSED, 10, 10)
        # a claim on a request overlapping r4's slice: the payee shows r4, FRIVOLOUS
        r5 = request(ALICE, cid, 5, 600, m.clock.ms)
        m.clock.advance(1)
        claim5 = step("file_claim", ALICE, r5)
        step("answer_claim", BOB, claim5, evidence=r4)
        assert m.mem.state.claims[claim5].state is ClaimState.FRIVOLOUS
        step("start_close", ALICE, cid)
        m.clock.advance(2_000)
        step("finalize_close", MALLORY, cid)
        assert m.mem.state.channels[cid].state is ChannelState.CLOSED
        cid2 = step("open_channel", CAROL, BOB.account, 100, 1_000)
        assert step("payee_close", BOB, cid2, request(CAROL, cid2, 1, 60, m.clock.ms), 50) == 50
        step("stake", CAROL, 500, 400, 5_000)  # a bonded stake's terms may only grow
        step("request_unstake", CAROL)
        m.clock.ms = m.mem.state.stakes[CAROL.account].unbonding_at
        step("withdraw_stake", CAROL)
        assert ok == set(OPERATIONS)
    finally:
        m.teardown()


@pytest.mark.slow
def test_lockstep_memory_and_sqlite_long() -> None:
    """Random seeds, longer runs."""
    _run_machine(max_examples=300, steps=60, derandomize=False)
