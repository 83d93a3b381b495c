"""Unit tests for p2pay.core.settlement against specs/settlement.md.

Every operation's success path, every refusal with its code (and the state left exactly as it
was: S-4), the events, the claim flow both ways, the challenge-period defence, unbonding vs
claims, voucher replay across channels and ledgers, and amounts at 2**128 - 1.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from p2pay.core import codec
from p2pay.core.errors import ErrorCode, LocalProtocolError, SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response, decode_frame
from p2pay.core.settlement import (
    CHANNEL_TABLE,
    CLAIM_TABLE,
    MAX_AMOUNT,
    AnswerClaim,
    Channel,
    ChannelOpKind,
    ChannelState,
    Claim,
    ClaimOpKind,
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
    Stake,
    StakeOp,
    StakeStatus,
    StartClose,
    State,
    TopUp,
    Touches,
    Transfer,
    Withdraw,
    WithdrawStake,
    apply,
    channel_id,
    channel_transition,
    claim_transition,
    invariant_violations,
    stake_status,
    tiling_conflict,
    touches,
    touches_loaded,
    unbonding_period,
)
from p2pay.testing import unchecked_request, unchecked_response

ALICE = Keypair.from_seed(bytes([1]) * 32)
BOB = Keypair.from_seed(bytes([2]) * 32)
CAROL = Keypair.from_seed(bytes([3]) * 32)
MALLORY = Keypair.from_seed(bytes([4]) * 32)
A, B, C, M = ALICE.public, BOB.public, CAROL.public, MALLORY.public

LEDGER = b"test-ledger"
OTHER_LEDGER = b"other-ledger"
BOND = 100
CHALLENGE = 1_000
WINDOW = 2_000
HORIZON = 10_000
T0 = 1_000_000
NOWHERE = bytes([9]) * 32


def make_params(**overrides: Any) -> Params:
    values: dict[str, Any] = {
        "ledger_id": LEDGER,
        "dev": True,
        "claim_bond": BOND,
        "slash_to_claimant_bps": 5_000,
        "min_challenge_ms": 1_000,
        "max_challenge_ms": 100_000,
        "min_claim_window_ms": 1_000,
        "max_claim_window_ms": 100_000,
        "max_deadline_horizon_ms": HORIZON,
    }
    values.update(overrides)
    return Params(**values)


def fresh(**overrides: Any) -> State:
    """A dev ledger where ALICE, BOB, CAROL and MALLORY hold 10_000 each."""
    state = State(params=make_params(**overrides))
    for account in (A, B, C, M):
        state.balances[account] = 10_000
    state.supply = 40_000
    return state


def ok(state: State, op: Op, now: int = T0) -> tuple[Any, list[Event]]:
    result, events = apply(state, op, now)
    assert events, "every successful op that changes something emits an event"
    for event in events:
        assert event.at == now
        codec.encode(event.fields)  # plain CBOR-able values only
        assert all(isinstance(v, bytes | int | str) for v in event.fields.values())
    assert invariant_violations(state) == []
    return result, events


def refused(state: State, op: Op, code: ErrorCode, now: int = T0) -> SettlementError:
    """The op is refused with `code` and the state is left exactly as it was (S-4)."""
    before = copy.deepcopy(state)
    with pytest.raises(SettlementError) as info:
        apply(state, op, now)
    assert info.value.code is code, info.value
    assert state == before
    return info.value


def open_channel(state: State, payer: bytes = A, payee: bytes = B, deposit: int = 1_000) -> bytes:
    cid, _ = ok(
        state, OpenChannel(sender=payer, payee=payee, deposit=deposit, challenge_ms=CHALLENGE)
    )
    assert isinstance(cid, bytes)
    return cid


def voucher(
    cid: bytes,
    paid: int,
    *,
    key: Keypair = ALICE,
    n: int = 1,
    ledger: bytes = LEDGER,
    deadline: int = T0 + 5_000,
    body: bytes = b"hello",
) -> Request:
    return Request.create(
        key,
        ledger=ledger,
        channel=cid,
        n=n,
        paid=paid,
        price=10,
        service="echo",
        body=body,
        deadline=deadline,
    )


def answer(request: Request, *, key: Keypair = BOB, status: str = "OK", **kw: Any) -> Response:
    price = 10 if status == "OK" else 0
    return Response.create(
        key, request=request, status=status, price=price, spent=10, body=b"r", **kw
    )


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


# ----------------------------------------------------------------------------- params, ids


def test_params_defaults_are_valid() -> None:
    params = Params(ledger_id=LEDGER)
    assert params.max_claim_body == 1 << 20
    assert make_params(max_claim_body=2**32).max_claim_body == 2**32
    assert make_params(max_claim_body=1).max_claim_body == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"ledger_id": b""},
        {"ledger_id": b"x" * 65},
        {"ledger_id": "text"},
        {"claim_bond": -1},
        {"claim_bond": MAX_AMOUNT + 1},
        {"slash_to_claimant_bps": 10_001},
        {"slash_to_claimant_bps": -1},
        {"min_challenge_ms": 0},
        {"min_challenge_ms": 10, "max_challenge_ms": 9},
        {"min_claim_window_ms": 0},
        {"min_claim_window_ms": 10, "max_claim_window_ms": 9},
        {"max_deadline_horizon_ms": -1},
        {"dev": 1},
        {"claim_bond": 1.0},
        {"max_claim_body": 0},
        {"max_claim_body": 2**32 + 1},
        {"max_claim_body": True},
    ],
)
def test_params_refuse_out_of_range(overrides: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        make_params(**overrides)


def test_channel_id_formula() -> None:
    expected = hashlib.blake2b(
        b"p2pay/v1/channel" + LEDGER + A + B + (7).to_bytes(8, "big"), digest_size=32
    ).digest()
    assert channel_id(LEDGER, A, B, 7) == expected
    ids = {
        channel_id(LEDGER, A, B, 0),
        channel_id(LEDGER, A, B, 1),
        channel_id(LEDGER, B, A, 0),
        channel_id(OTHER_LEDGER, A, B, 0),
        channel_id(LEDGER, A, C, 0),
    }
    assert len(ids) == 5


@pytest.mark.parametrize(
    "args",
    [
        (b"", A, B, 0),
        (LEDGER, A[:31], B, 0),
        (LEDGER, A, "b", 0),
        (LEDGER, A, B, -1),
        (LEDGER, A, B, 2**64),
    ],
)
def test_channel_id_refuses_bad_input(args: tuple[Any, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        channel_id(*args)


# ----------------------------------------------------------------------------- generic refusals


def test_apply_refuses_non_ops_bad_sender_and_bad_now() -> None:
    state = fresh()
    refused(state, "mint", ErrorCode.INVALID_ARGUMENT)  # type: ignore[arg-type]
    refused(state, Transfer(sender=A[:31], to=B, amount=1), ErrorCode.INVALID_ARGUMENT)
    refused(state, Transfer(sender="alice", to=B, amount=1), ErrorCode.INVALID_ARGUMENT)  # type: ignore[arg-type]
    refused(state, Transfer(sender=A, to=B, amount=1), ErrorCode.INVALID_ARGUMENT, now=-1)
    refused(state, Transfer(sender=A, to=B, amount=1), ErrorCode.INVALID_ARGUMENT, now=True)
    with pytest.raises(SettlementError) as info:
        touches("mint")  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT + 1, 1.0, True, None, "5"])
def test_amounts_must_be_ints_in_range(amount: Any) -> None:
    state = fresh()
    cid = open_channel(state)
    for op in (
        Mint(sender=A, account=A, amount=amount),
        Transfer(sender=A, to=B, amount=amount),
        Withdraw(sender=A, amount=amount),
        OpenChannel(sender=A, payee=B, deposit=amount, challenge_ms=CHALLENGE),
        TopUp(sender=A, channel=cid, amount=amount),
        StakeOp(sender=B, amount=amount, penalty=1, claim_window_ms=WINDOW),
        StakeOp(sender=B, amount=100, penalty=amount, claim_window_ms=WINDOW),
    ):
        refused(state, op, ErrorCode.INVALID_AMOUNT)


# ----------------------------------------------------------------------------- accounts


def test_mint_on_dev_ledger_any_sender_any_account() -> None:
    state = fresh()
    _, events = ok(state, Mint(sender=M, account=C, amount=5))
    assert state.balances[C] == 10_005 and state.supply == 40_005
    assert events == [Event(kind="Minted", fields={"account": C, "amount": 5}, at=T0)]


def test_mint_refused_off_dev_ledger() -> None:
    state = fresh(dev=False)
    refused(state, Mint(sender=A, account=A, amount=5), ErrorCode.NOT_DEV_LEDGER)


def test_mint_bad_account() -> None:
    refused(fresh(), Mint(sender=A, account=b"short", amount=5), ErrorCode.INVALID_ARGUMENT)


def test_mint_to_max_then_overflow() -> None:
    state = State(params=make_params())
    ok(state, Mint(sender=A, account=A, amount=MAX_AMOUNT))
    assert state.balances[A] == MAX_AMOUNT
    refused(state, Mint(sender=A, account=A, amount=1), ErrorCode.INVALID_AMOUNT)
    ok(state, Mint(sender=A, account=B, amount=MAX_AMOUNT))
    refused(state, Transfer(sender=B, to=A, amount=1), ErrorCode.INVALID_AMOUNT)
    ok(state, Transfer(sender=A, to=A, amount=MAX_AMOUNT))  # self transfer: a no-op
    assert state.balances[A] == MAX_AMOUNT


def test_transfer() -> None:
    state = fresh()
    _, events = ok(state, Transfer(sender=A, to=C, amount=300))
    assert state.balances[A] == 9_700 and state.balances[C] == 10_300
    assert events[0].kind == "Transferred"
    assert events[0].fields == {"from": A, "to": C, "amount": 300}
    ok(state, Transfer(sender=A, to=bytes([7]) * 32, amount=9_700))
    assert state.balances[A] == 0
    refused(state, Transfer(sender=A, to=C, amount=1), ErrorCode.INSUFFICIENT_FUNDS)
    refused(state, Transfer(sender=B, to=b"x", amount=1), ErrorCode.INVALID_ARGUMENT)
    refused(state, Transfer(sender=NOWHERE, to=B, amount=1), ErrorCode.INSUFFICIENT_FUNDS)


def test_self_transfer_cannot_exceed_balance() -> None:
    refused(fresh(), Transfer(sender=A, to=A, amount=10_001), ErrorCode.INSUFFICIENT_FUNDS)


def test_withdraw_decreases_supply() -> None:
    state = fresh()
    _, events = ok(state, Withdraw(sender=A, amount=400))
    assert state.balances[A] == 9_600 and state.supply == 39_600
    assert events[0].kind == "Withdrawn" and events[0].fields == {"account": A, "amount": 400}
    refused(state, Withdraw(sender=A, amount=9_601), ErrorCode.INSUFFICIENT_FUNDS)


# ----------------------------------------------------------------------------- channels


def test_open_channel() -> None:
    state = fresh()
    cid, events = ok(state, OpenChannel(sender=A, payee=B, deposit=1_000, challenge_ms=CHALLENGE))
    assert cid == channel_id(LEDGER, A, B, 0)
    assert state.nonce == 1 and state.balances[A] == 9_000
    assert state.channels[cid] == Channel(
        id=cid, payer=A, payee=B, deposit=1_000, redeemed=0, challenge_ms=CHALLENGE
    )
    assert events[0].kind == "ChannelOpened"
    assert events[0].fields == {
        "channel": cid,
        "payer": A,
        "payee": B,
        "deposit": 1_000,
        "challenge_ms": CHALLENGE,
    }
    second = open_channel(state)
    assert second == channel_id(LEDGER, A, B, 1) != cid


def test_open_channel_refusals() -> None:
    state = fresh()
    refused(
        state,
        OpenChannel(sender=A, payee=A, deposit=1, challenge_ms=CHALLENGE),
        ErrorCode.INVALID_ARGUMENT,
    )
    refused(
        state,
        OpenChannel(sender=A, payee=b"b", deposit=1, challenge_ms=CHALLENGE),
        ErrorCode.INVALID_ARGUMENT,
    )
    for challenge in (999, 100_001, 1_000.0, None):
        op = OpenChannel(sender=A, payee=B, deposit=1, challenge_ms=challenge)  # type: ignore[arg-type]
        refused(state, op, ErrorCode.INVALID_ARGUMENT)
    refused(
        state,
        OpenChannel(sender=A, payee=B, deposit=10_001, challenge_ms=CHALLENGE),
        ErrorCode.INSUFFICIENT_FUNDS,
    )
    ok(state, OpenChannel(sender=A, payee=B, deposit=1, challenge_ms=1_000))
    ok(state, OpenChannel(sender=A, payee=B, deposit=1, challenge_ms=100_000))


def test_open_channel_id_collision_is_refused() -> None:
    state = fresh()
    taken = channel_id(LEDGER, A, B, 0)
    state.channels[taken] = Channel(
        id=taken, payer=A, payee=B, deposit=0, redeemed=0, challenge_ms=CHALLENGE
    )
    refused(
        state,
        OpenChannel(sender=A, payee=B, deposit=1, challenge_ms=CHALLENGE),
        ErrorCode.CHANNEL_EXISTS,
    )


def test_top_up() -> None:
    state = fresh()
    cid = open_channel(state)
    _, events = ok(state, TopUp(sender=A, channel=cid, amount=500))
    assert state.channels[cid].deposit == 1_500 and state.balances[A] == 8_500
    assert events[0].kind == "ToppedUp"
    assert events[0].fields == {"channel": cid, "payer": A, "amount": 500, "deposit": 1_500}
    refused(state, TopUp(sender=B, channel=cid, amount=1), ErrorCode.NOT_PARTY)
    refused(state, TopUp(sender=M, channel=cid, amount=1), ErrorCode.NOT_PARTY)
    refused(state, TopUp(sender=A, channel=NOWHERE, amount=1), ErrorCode.UNKNOWN_CHANNEL)
    refused(state, TopUp(sender=A, channel=b"short", amount=1), ErrorCode.INVALID_ARGUMENT)
    refused(state, TopUp(sender=A, channel=cid, amount=8_501), ErrorCode.INSUFFICIENT_FUNDS)
    ok(state, StartClose(sender=A, channel=cid))
    refused(state, TopUp(sender=A, channel=cid, amount=1), ErrorCode.CHANNEL_CLOSED)
    ok(state, FinalizeClose(sender=A, channel=cid), now=T0 + CHALLENGE)
    refused(state, TopUp(sender=A, channel=cid, amount=1), ErrorCode.CHANNEL_CLOSED)


def test_top_up_deposit_overflow() -> None:
    state = State(params=make_params())
    ok(state, Mint(sender=A, account=A, amount=MAX_AMOUNT))
    cid = open_channel(state, deposit=MAX_AMOUNT)
    assert state.channels[cid].deposit == MAX_AMOUNT
    # Bob redeems it all and gives it back to Alice: the deposit total cannot grow further.
    ok(state, Redeem(sender=B, voucher=voucher(cid, MAX_AMOUNT)))
    ok(state, Transfer(sender=B, to=A, amount=1))
    refused(state, TopUp(sender=A, channel=cid, amount=1), ErrorCode.INVALID_AMOUNT)


def test_redeem_pays_up_to_the_voucher_and_is_idempotent() -> None:
    state = fresh()
    cid = open_channel(state)
    v1 = voucher(cid, 300, n=1)
    paid, events = ok(state, Redeem(sender=B, voucher=v1))
    assert paid == 300 and state.balances[B] == 10_300 and state.channels[cid].redeemed == 300
    assert events[0].kind == "Redeemed"
    assert events[0].fields == {
        "channel": cid,
        "payer": A,
        "payee": B,
        "amount": 300,
        "redeemed": 300,
        "n": 1,
        "paid": 300,
    }
    # the same voucher again, or an older one: pays 0, no event, not an error
    before = copy.deepcopy(state)
    assert apply(state, Redeem(sender=B, voucher=v1), T0) == (0, [])
    assert apply(state, Redeem(sender=B, voucher=voucher(cid, 200, n=2)), T0) == (0, [])
    assert state == before
    paid, _ = ok(state, Redeem(sender=B, voucher=voucher(cid, 450, n=3)))
    assert paid == 150 and state.channels[cid].redeemed == 450


def test_a_zero_payout_writes_nothing() -> None:
    state = fresh()
    cid = open_channel(state, payer=A, payee=bytes([7]) * 32)
    before = copy.deepcopy(state)
    assert apply(state, PayeeClose(sender=bytes([7]) * 32, channel=cid), T0)[0] == 0
    assert bytes([7]) * 32 not in state.balances
    assert state.balances[A] == before.balances[A] + 1_000


def test_redeem_amount_caps_the_payout() -> None:
    """An honest payee redeems only `spent`, below the voucher's `paid` (specs 4, 'Why amount')."""
    state = fresh()
    cid = open_channel(state)
    v = voucher(cid, 500)
    paid, _ = ok(state, Redeem(sender=B, voucher=v, amount=320))
    assert paid == 320 and state.channels[cid].redeemed == 320
    assert apply(state, Redeem(sender=B, voucher=v, amount=0), T0) == (0, [])
    paid, _ = ok(state, Redeem(sender=B, voucher=v, amount=10**9))  # cap above paid: paid wins
    assert paid == 180
    bad: Any
    for bad in (-1, MAX_AMOUNT + 1, 1.5, True):
        refused(state, Redeem(sender=B, voucher=v, amount=bad), ErrorCode.INVALID_AMOUNT)


def test_redeem_never_pays_beyond_the_deposit() -> None:
    state = fresh()
    cid = open_channel(state, deposit=1_000)
    paid, _ = ok(state, Redeem(sender=B, voucher=voucher(cid, 5_000)))
    assert paid == 1_000 and state.channels[cid].escrow == 0
    ok(state, TopUp(sender=A, channel=cid, amount=100))
    paid, _ = ok(state, Redeem(sender=B, voucher=voucher(cid, 5_000)))
    assert paid == 100


def test_redeem_refusals() -> None:
    state = fresh()
    cid = open_channel(state)
    v = voucher(cid, 300)
    refused(state, Redeem(sender=B, voucher="v"), ErrorCode.INVALID_ARGUMENT)  # type: ignore[arg-type]
    refused(
        state,
        Redeem(sender=B, voucher=voucher(cid, 300, ledger=OTHER_LEDGER)),
        ErrorCode.WRONG_LEDGER,
    )
    refused(state, Redeem(sender=B, voucher=voucher(NOWHERE, 300)), ErrorCode.UNKNOWN_CHANNEL)
    refused(state, Redeem(sender=A, voucher=v), ErrorCode.NOT_PARTY)
    refused(state, Redeem(sender=M, voucher=v), ErrorCode.NOT_PARTY)
    refused(
        state, Redeem(sender=B, voucher=voucher(cid, 300, key=MALLORY)), ErrorCode.INVALID_SIGNATURE
    )
    refused(
        state, Redeem(sender=B, voucher=voucher(cid, 300, key=BOB)), ErrorCode.INVALID_SIGNATURE
    )
    tampered = voucher(cid, 100).with_signature(v.signature)  # paid changed after signing
    refused(state, Redeem(sender=B, voucher=tampered), ErrorCode.INVALID_SIGNATURE)
    ok(state, PayeeClose(sender=B, channel=cid))
    refused(state, Redeem(sender=B, voucher=v), ErrorCode.CHANNEL_CLOSED)


def test_voucher_replay_across_channels_and_ledgers() -> None:
    """The channel id and ledger id are inside the signed voucher (specs 4.1)."""
    state = fresh()
    alice_to_bob = open_channel(state, A, B)
    carol_to_bob = open_channel(state, C, B)
    # Alice's voucher names Alice's channel: presented, it can only pay from that channel.
    v = voucher(alice_to_bob, 200)
    ok(state, Redeem(sender=B, voucher=v))
    assert state.channels[carol_to_bob].redeemed == 0
    # Re-signing Alice's voucher fields for Carol's channel with Alice's key fails: only
    # Carol can sign for Carol's channel.
    forged = voucher(carol_to_bob, 200, key=ALICE)
    refused(state, Redeem(sender=B, voucher=forged), ErrorCode.INVALID_SIGNATURE)
    refused(state, FileClaim(sender=C, request=forged), ErrorCode.INVALID_SIGNATURE)
    # Alice's signature transplanted onto a voucher for Carol's channel fails too.
    transplanted = voucher(carol_to_bob, 200, key=CAROL).with_signature(v.signature)
    refused(state, Redeem(sender=B, voucher=transplanted), ErrorCode.INVALID_SIGNATURE)
    # A voucher signed for the same channel id on another ledger is refused as such.
    elsewhere = voucher(alice_to_bob, 900, ledger=OTHER_LEDGER)
    refused(state, Redeem(sender=B, voucher=elsewhere), ErrorCode.WRONG_LEDGER)
    refused(
        state, PayeeClose(sender=B, channel=alice_to_bob, voucher=elsewhere), ErrorCode.WRONG_LEDGER
    )


def test_redeem_payee_balance_overflow() -> None:
    state = State(params=make_params())
    ok(state, Mint(sender=A, account=A, amount=10))
    ok(state, Mint(sender=A, account=B, amount=MAX_AMOUNT))
    cid = open_channel(state, deposit=10)
    refused(state, Redeem(sender=B, voucher=voucher(cid, 1)), ErrorCode.INVALID_AMOUNT)
    refused(
        state, PayeeClose(sender=B, channel=cid, voucher=voucher(cid, 1)), ErrorCode.INVALID_AMOUNT
    )
    assert apply(state, Redeem(sender=B, voucher=voucher(cid, 1), amount=0), T0) == (0, [])


def test_payee_close_with_voucher_and_amount() -> None:
    state = fresh()
    cid = open_channel(state, deposit=1_000)
    ok(state, Redeem(sender=B, voucher=voucher(cid, 100)))
    paid, events = ok(
        state, PayeeClose(sender=B, channel=cid, voucher=voucher(cid, 700, n=5), amount=400)
    )
    assert paid == 300
    assert kinds(events) == ["Redeemed", "ChannelClosed"]
    assert events[1].fields == {
        "channel": cid,
        "payer": A,
        "payee": B,
        "by": "payee",
        "redeemed": 400,
        "refunded": 600,
    }
    assert state.balances[B] == 10_400 and state.balances[A] == 9_600
    assert state.channels[cid].state is ChannelState.CLOSED and state.channels[cid].escrow == 0


def test_payee_close_without_voucher_refunds_everything() -> None:
    state = fresh()
    cid = open_channel(state, deposit=1_000)
    paid, events = ok(state, PayeeClose(sender=B, channel=cid))
    assert paid == 0 and kinds(events) == ["ChannelClosed"]
    assert events[0].fields["refunded"] == 1_000 and state.balances[A] == 10_000


def test_payee_close_refusals() -> None:
    state = fresh()
    cid = open_channel(state)
    other = open_channel(state, A, C)
    refused(state, PayeeClose(sender=B, channel=cid, amount=5), ErrorCode.INVALID_ARGUMENT)
    refused(
        state,
        PayeeClose(sender=B, channel=cid, voucher=voucher(other, 5)),
        ErrorCode.INVALID_ARGUMENT,
    )
    refused(state, PayeeClose(sender=B, channel=cid, voucher="v"), ErrorCode.INVALID_ARGUMENT)  # type: ignore[arg-type]
    refused(
        state,
        PayeeClose(sender=B, channel=cid, voucher=voucher(cid, 5), amount=-1),
        ErrorCode.INVALID_AMOUNT,
    )
    refused(state, PayeeClose(sender=B, channel=NOWHERE), ErrorCode.UNKNOWN_CHANNEL)
    refused(state, PayeeClose(sender=A, channel=cid), ErrorCode.NOT_PARTY)
    refused(state, PayeeClose(sender=M, channel=cid), ErrorCode.NOT_PARTY)
    refused(
        state,
        PayeeClose(sender=B, channel=cid, voucher=voucher(cid, 5, key=MALLORY)),
        ErrorCode.INVALID_SIGNATURE,
    )
    ok(state, PayeeClose(sender=B, channel=cid))
    refused(state, PayeeClose(sender=B, channel=cid), ErrorCode.CHANNEL_CLOSED)


def test_payer_close_and_the_challenge_period_defence() -> None:
    """Alice starts a close; Bob redeems his best voucher during CLOSING and loses nothing."""
    state = fresh()
    cid = open_channel(state, deposit=1_000)
    _, events = ok(state, StartClose(sender=A, channel=cid))
    closes_at = T0 + CHALLENGE
    assert state.channels[cid].state is ChannelState.CLOSING
    assert state.channels[cid].closes_at == closes_at
    assert events[0].kind == "ChannelClosing"
    assert events[0].fields == {"channel": cid, "payer": A, "payee": B, "closes_at": closes_at}
    refused(
        state, FinalizeClose(sender=A, channel=cid), ErrorCode.CHALLENGE_PENDING, now=closes_at - 1
    )
    paid, _ = ok(state, Redeem(sender=B, voucher=voucher(cid, 650)), now=closes_at - 1)
    assert paid == 650
    # anyone may finalise; the remainder goes to the payer only
    _, events = ok(state, FinalizeClose(sender=M, channel=cid), now=closes_at)
    assert events[0].kind == "ChannelClosed"
    assert events[0].fields == {
        "channel": cid,
        "payer": A,
        "payee": B,
        "by": "payer",
        "redeemed": 650,
        "refunded": 350,
    }
    assert (
        state.balances[A] == 9_350 and state.balances[B] == 10_650 and state.balances[M] == 10_000
    )
    refused(
        state, Redeem(sender=B, voucher=voucher(cid, 900)), ErrorCode.CHANNEL_CLOSED, now=closes_at
    )


def test_payee_close_during_closing() -> None:
    state = fresh()
    cid = open_channel(state)
    ok(state, StartClose(sender=A, channel=cid))
    paid, _ = ok(state, PayeeClose(sender=B, channel=cid, voucher=voucher(cid, 10)))
    assert paid == 10 and state.channels[cid].state is ChannelState.CLOSED


def test_start_close_refusals() -> None:
    state = fresh()
    cid = open_channel(state)
    refused(state, StartClose(sender=A, channel=NOWHERE), ErrorCode.UNKNOWN_CHANNEL)
    refused(state, StartClose(sender=B, channel=cid), ErrorCode.NOT_PARTY)
    refused(state, StartClose(sender=M, channel=cid), ErrorCode.NOT_PARTY)
    ok(state, StartClose(sender=A, channel=cid))
    refused(state, StartClose(sender=A, channel=cid), ErrorCode.CHALLENGE_PENDING)
    ok(state, FinalizeClose(sender=A, channel=cid), now=T0 + CHALLENGE)
    refused(state, StartClose(sender=A, channel=cid), ErrorCode.CHANNEL_CLOSED)


def test_finalize_close_refusals() -> None:
    state = fresh()
    cid = open_channel(state)
    refused(state, FinalizeClose(sender=A, channel=NOWHERE), ErrorCode.UNKNOWN_CHANNEL)
    refused(state, FinalizeClose(sender=A, channel=cid), ErrorCode.CHANNEL_NOT_CLOSING)
    ok(state, PayeeClose(sender=B, channel=cid))
    refused(state, FinalizeClose(sender=A, channel=cid), ErrorCode.CHANNEL_CLOSED)


def test_finalize_close_refund_overflow() -> None:
    state = State(params=make_params())
    ok(state, Mint(sender=A, account=A, amount=10))
    cid = open_channel(state, deposit=10)
    ok(state, Mint(sender=A, account=A, amount=MAX_AMOUNT))
    ok(state, StartClose(sender=A, channel=cid))
    refused(
        state, FinalizeClose(sender=A, channel=cid), ErrorCode.INVALID_AMOUNT, now=T0 + CHALLENGE
    )
    ok(state, Withdraw(sender=A, amount=10))
    ok(state, FinalizeClose(sender=A, channel=cid), now=T0 + CHALLENGE)
    assert state.balances[A] == MAX_AMOUNT


# ----------------------------------------------------------------------------- state tables


def test_channel_table_is_complete_and_matches_the_spec() -> None:
    assert set(CHANNEL_TABLE) == {(s, o) for s in ChannelState for o in ChannelOpKind}
    for (state, op), outcome in CHANNEL_TABLE.items():
        if isinstance(outcome, ErrorCode):
            with pytest.raises(SettlementError) as info:
                channel_transition(state, op)
            assert info.value.code is outcome
        else:
            assert channel_transition(state, op) is outcome
    for op in ChannelOpKind:  # CLOSED is final
        outcome = CHANNEL_TABLE[(ChannelState.CLOSED, op)]
        assert outcome in (ErrorCode.CHANNEL_CLOSED, ChannelState.CLOSED)


def test_claim_table_is_complete_and_final_states_are_final() -> None:
    assert set(CLAIM_TABLE) == {(s, o) for s in ClaimState for o in ClaimOpKind}
    assert {s.value for s in ClaimState} == {
        "open",
        "delivered",
        "refused",
        "frivolous",
        "upheld",
    }
    assert claim_transition(ClaimState.OPEN, ClaimOpKind.ANSWER) == {
        ClaimState.DELIVERED,
        ClaimState.REFUSED,
        ClaimState.FRIVOLOUS,
    }
    assert claim_transition(ClaimState.OPEN, ClaimOpKind.RESOLVE) == {ClaimState.UPHELD}
    for final in set(ClaimState) - {ClaimState.OPEN}:
        for op in ClaimOpKind:
            with pytest.raises(SettlementError) as info:
                claim_transition(final, op)
            assert info.value.code is ErrorCode.CLAIM_CLOSED


# ----------------------------------------------------------------------------- stakes


def test_stake_and_restake() -> None:
    state = fresh()
    assert stake_status(state.stakes.get(B)) is StakeStatus.NONE
    _, events = ok(state, StakeOp(sender=B, amount=1_000, penalty=100, claim_window_ms=WINDOW))
    assert state.stakes[B] == Stake(account=B, amount=1_000, penalty=100, claim_window_ms=WINDOW)
    assert stake_status(state.stakes[B]) is StakeStatus.BONDED
    assert state.balances[B] == 9_000
    assert events[0].kind == "Staked"
    assert events[0].fields == {
        "account": B,
        "amount": 1_000,
        "total": 1_000,
        "penalty": 100,
        "claim_window_ms": WINDOW,
    }
    ok(state, StakeOp(sender=B, amount=500, penalty=1_500, claim_window_ms=3_000))
    assert state.stakes[B].amount == 1_500 and state.stakes[B].penalty == 1_500
    assert state.stakes[B].claim_window_ms == 3_000


def test_bonded_stake_terms_cannot_be_weakened() -> None:
    """Lowering penalty or window would shrink the protection of requests already served."""
    state = fresh()
    ok(state, StakeOp(sender=B, amount=1_000, penalty=100, claim_window_ms=WINDOW))
    weaker_penalty = StakeOp(sender=B, amount=1, penalty=99, claim_window_ms=WINDOW)
    shorter_window = StakeOp(sender=B, amount=1, penalty=100, claim_window_ms=WINDOW - 1)
    refused(state, weaker_penalty, ErrorCode.STAKE_LOCKED)
    refused(state, shorter_window, ErrorCode.STAKE_LOCKED)
    # to lower them the provider unstakes, waits out the unbonding period, and stakes again
    ok(state, RequestUnstake(sender=B))
    ok(state, WithdrawStake(sender=B), now=T0 + HORIZON + 2 * WINDOW)
    restake = StakeOp(sender=B, amount=500, penalty=99, claim_window_ms=WINDOW - 1)
    ok(state, restake, now=T0 + HORIZON + 2 * WINDOW)
    assert (state.stakes[B].penalty, state.stakes[B].claim_window_ms) == (99, WINDOW - 1)


def test_stake_refusals() -> None:
    state = fresh()
    for window in (999, 100_001, None):
        op = StakeOp(sender=B, amount=10, penalty=1, claim_window_ms=window)  # type: ignore[arg-type]
        refused(state, op, ErrorCode.INVALID_ARGUMENT)
    refused(
        state,
        StakeOp(sender=B, amount=10, penalty=11, claim_window_ms=WINDOW),
        ErrorCode.INVALID_ARGUMENT,
    )
    refused(
        state,
        StakeOp(sender=B, amount=10_001, penalty=1, claim_window_ms=WINDOW),
        ErrorCode.INSUFFICIENT_FUNDS,
    )
    ok(state, StakeOp(sender=B, amount=10, penalty=10, claim_window_ms=WINDOW))
    ok(state, RequestUnstake(sender=B))
    refused(
        state, StakeOp(sender=B, amount=10, penalty=1, claim_window_ms=WINDOW), ErrorCode.UNBONDING
    )


def test_stake_amount_overflow() -> None:
    state = State(params=make_params())
    ok(state, Mint(sender=B, account=B, amount=MAX_AMOUNT))
    ok(state, StakeOp(sender=B, amount=MAX_AMOUNT, penalty=1, claim_window_ms=WINDOW))
    ok(state, Mint(sender=B, account=B, amount=1))
    refused(
        state,
        StakeOp(sender=B, amount=1, penalty=1, claim_window_ms=WINDOW),
        ErrorCode.INVALID_AMOUNT,
    )


def test_unstake_and_withdraw() -> None:
    state = fresh()
    refused(state, RequestUnstake(sender=B), ErrorCode.NOT_STAKED)
    refused(state, WithdrawStake(sender=B), ErrorCode.NOT_STAKED)
    ok(state, StakeOp(sender=B, amount=1_000, penalty=100, claim_window_ms=WINDOW))
    refused(state, WithdrawStake(sender=B), ErrorCode.NOT_STAKED)  # not unbonding yet
    _, events = ok(state, RequestUnstake(sender=B))
    period = HORIZON + 2 * WINDOW
    assert unbonding_period(state.params, WINDOW) == period
    assert state.stakes[B].unbonding_at == T0 + period
    assert events[0].fields == {"account": B, "amount": 1_000, "unbonding_at": T0 + period}
    assert stake_status(state.stakes[B]) is StakeStatus.UNBONDING
    refused(state, RequestUnstake(sender=B), ErrorCode.UNBONDING)
    refused(state, WithdrawStake(sender=B), ErrorCode.STAKE_LOCKED, now=T0 + period - 1)
    _, events = ok(state, WithdrawStake(sender=B), now=T0 + period)
    assert events[0].kind == "StakeWithdrawn" and events[0].fields == {
        "account": B,
        "amount": 1_000,
    }
    assert state.balances[B] == 10_000
    assert stake_status(state.stakes[B]) is StakeStatus.NONE
    refused(state, WithdrawStake(sender=B), ErrorCode.NOT_STAKED)
    refused(state, RequestUnstake(sender=B), ErrorCode.NOT_STAKED)
    ok(state, StakeOp(sender=B, amount=5, penalty=5, claim_window_ms=WINDOW))  # stake again
    assert state.stakes[B].amount == 5


def test_withdraw_stake_overflow() -> None:
    state = State(params=make_params())
    ok(state, Mint(sender=B, account=B, amount=10))
    ok(state, StakeOp(sender=B, amount=10, penalty=1, claim_window_ms=WINDOW))
    ok(state, RequestUnstake(sender=B))
    ok(state, Mint(sender=B, account=B, amount=MAX_AMOUNT))
    later = T0 + HORIZON + 2 * WINDOW
    refused(state, WithdrawStake(sender=B), ErrorCode.INVALID_AMOUNT, now=later)


# ----------------------------------------------------------------------------- claims


def claim_world(**overrides: Any) -> tuple[State, bytes, Request]:
    """Alice has a channel to Bob; Bob is staked; a request of Alice's went unanswered."""
    state = fresh(**overrides)
    cid = open_channel(state)
    ok(state, StakeOp(sender=B, amount=1_000, penalty=300, claim_window_ms=WINDOW))
    return state, cid, voucher(cid, 10, n=7, deadline=T0 + 5_000)


AFTER = T0 + 5_001  # just after the request's deadline


def request_with(
    cid: bytes,
    *,
    n: int = 7,
    paid: int = 10,
    price: int = 10,
    service: str = "echo",
    body: bytes = b"hello",
    deadline: int = T0 + 5_000,
    key: Keypair = ALICE,
    ledger: bytes = LEDGER,
) -> Request:
    """A signed request with any fields, even ones `Request` itself refuses (n = 0, ...)."""
    return unchecked_request(
        key,
        ledger=ledger,
        channel=cid,
        n=n,
        paid=paid,
        price=price,
        service=service,
        body=body,
        deadline=deadline,
    )


def test_file_claim() -> None:
    state, cid, request = claim_world()
    claim_id, events = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    assert claim_id == request.hash
    assert state.claims[claim_id] == Claim(
        id=claim_id,
        claimant=A,
        respondent=B,
        channel=cid,
        n=7,
        price=10,
        paid=10,
        deadline=T0 + 5_000,
        bond=BOND,
        filed_at=AFTER,
        window_ends=AFTER + WINDOW,
        request_frame=request.to_frame(),
    )
    assert state.balances[A] == 9_000 - BOND and state.stakes[B].open_claims == 1
    assert state.channels[cid].paid_seen == 10  # a claimed request is a payer-signed voucher
    assert events[0].kind == "ClaimFiled"
    assert events[0].fields == {
        "claim": claim_id,
        "claimant": A,
        "respondent": B,
        "channel": cid,
        "n": 7,
        "price": 10,
        "paid": 10,
        "deadline": T0 + 5_000,
        "bond": BOND,
        "window_ends": AFTER + WINDOW,
    }


def test_file_claim_refusals() -> None:
    state, cid, request = claim_world()
    ok(state, OpenChannel(sender=A, payee=C, deposit=10, challenge_ms=CHALLENGE))
    unstaked = voucher(channel_id(LEDGER, A, C, 1), 10, deadline=T0)
    refused(state, FileClaim(sender=A, request="r"), ErrorCode.INVALID_ARGUMENT, now=AFTER)  # type: ignore[arg-type]
    foreign = voucher(cid, 10, ledger=OTHER_LEDGER, deadline=T0)
    refused(state, FileClaim(sender=A, request=foreign), ErrorCode.WRONG_LEDGER, now=AFTER)
    refused(
        state,
        FileClaim(sender=A, request=voucher(NOWHERE, 10, deadline=T0)),
        ErrorCode.UNKNOWN_CHANNEL,
        now=AFTER,
    )
    refused(state, FileClaim(sender=M, request=request), ErrorCode.NOT_PARTY, now=AFTER)
    refused(state, FileClaim(sender=B, request=request), ErrorCode.NOT_PARTY, now=AFTER)
    forged = voucher(cid, 10, key=MALLORY, deadline=T0)
    refused(state, FileClaim(sender=A, request=forged), ErrorCode.INVALID_SIGNATURE, now=AFTER)
    no_body = Request.from_signed(request.signing_bytes, request.signature, b"other body")
    refused(state, FileClaim(sender=A, request=no_body), ErrorCode.MALFORMED, now=AFTER)
    above = voucher(cid, 1_001, deadline=T0)  # more than the channel's deposit of 1_000
    refused(state, FileClaim(sender=A, request=above), ErrorCode.VOUCHER_EXCEEDS_DEPOSIT, now=AFTER)
    refused(state, FileClaim(sender=A, request=unstaked), ErrorCode.NOT_STAKED, now=AFTER)
    refused(
        state, FileClaim(sender=A, request=request), ErrorCode.DEADLINE_NOT_PASSED, now=T0 + 5_000
    )
    last = T0 + 5_000 + WINDOW
    refused(state, FileClaim(sender=A, request=request), ErrorCode.WINDOW_CLOSED, now=last + 1)
    ok(state, Transfer(sender=A, to=C, amount=state.balances[A] - BOND + 1))
    refused(state, FileClaim(sender=A, request=request), ErrorCode.INSUFFICIENT_FUNDS, now=last)
    ok(state, Transfer(sender=C, to=A, amount=1))
    ok(state, FileClaim(sender=A, request=request), now=last)
    refused(state, FileClaim(sender=A, request=request), ErrorCode.CLAIM_EXISTS, now=last)
    ok(state, Transfer(sender=C, to=A, amount=BOND))
    ok(state, FileClaim(sender=A, request=voucher(cid, 1_000, n=8, deadline=T0 + 5_000)), now=last)


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 0},
        {"price": 0},
        {"price": 0, "paid": 0},
        {"paid": 9},  # paid < price: the slice would start below zero
        {"service": ""},
        {"body": b"x" * 6},  # max_claim_body is 5 here
    ],
    ids=["n0", "price0", "free", "paid-below-price", "no-service", "body-too-big"],
)
def test_file_claim_argument_refusals(fields: dict[str, Any]) -> None:
    """claims.md 4.2: requests no honest payee signs are refused before anything else."""
    state, cid, _ = claim_world(max_claim_body=5)
    bad = request_with(cid, **fields)
    refused(state, FileClaim(sender=A, request=bad), ErrorCode.INVALID_ARGUMENT, now=AFTER)
    # argument checks come first: even on another ledger, from a stranger, unsigned by Alice
    worse = request_with(cid, key=MALLORY, ledger=OTHER_LEDGER, **fields)
    refused(state, FileClaim(sender=M, request=worse), ErrorCode.INVALID_ARGUMENT, now=AFTER)


def test_file_claim_limits_are_inclusive() -> None:
    state, cid, _ = claim_world(max_claim_body=5)
    ok(state, FileClaim(sender=A, request=request_with(cid, body=b"x" * 5)), now=AFTER)
    edge = request_with(cid, n=1, paid=1_000, price=1_000)  # paid == price == deposit
    ok(state, FileClaim(sender=A, request=edge), now=AFTER)
    assert state.channels[cid].paid_seen == 1_000


def test_unbonding_stake_cannot_be_held_hostage() -> None:
    """C-9: a request dated after unbonding began could not have been accepted under the
    bonded terms, so it cannot be claimed against the unbonding stake."""
    state, cid, _ = claim_world()
    asked = T0 + 100
    ok(state, RequestUnstake(sender=B), now=asked)
    assert state.stakes[B].unstake_requested_at == asked
    last_ok = asked + HORIZON
    hostage = voucher(cid, 20, n=9, deadline=last_ok + 1)
    refused(state, FileClaim(sender=A, request=hostage), ErrorCode.UNBONDING, now=last_ok + 2)
    served = voucher(cid, 10, n=8, deadline=last_ok)
    ok(state, FileClaim(sender=A, request=served), now=last_ok + 1)


def test_file_claim_on_closed_channel_and_zero_bond() -> None:
    state, cid, request = claim_world(claim_bond=0)
    ok(state, PayeeClose(sender=B, channel=cid))
    ok(state, Transfer(sender=A, to=C, amount=state.balances[A]))
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    assert state.claims[claim_id].bond == 0


def answered_fields(claim_id: bytes, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "claim": claim_id,
        "claimant": A,
        "respondent": B,
        "bond": BOND,
        "refund": 0,
        "clawed": 0,
    }
    base.update(fields)
    return base


def test_claim_delivered_in_time_returns_the_bond() -> None:
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    response = answer(request)
    _, events = ok(
        state, AnswerClaim(sender=B, claim=claim_id, response=response), now=AFTER + WINDOW
    )
    claim = state.claims[claim_id]
    assert claim.state is ClaimState.DELIVERED and claim.response_frame == response.to_frame()
    assert (claim.refund, claim.clawed, claim.evidence_frame) == (0, 0, b"")
    assert state.balances[A] == 9_000 and state.balances[B] == 9_000  # bond back to Alice
    assert state.stakes[B].amount == 1_000 and state.stakes[B].open_claims == 0
    assert state.channels[cid].refunded == 0
    assert events[0].kind == "ClaimAnswered"
    assert events[0].fields == answered_fields(
        claim_id, outcome="delivered", status="OK", bond_to=A
    )
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=response),
        ErrorCode.CLAIM_CLOSED,
        now=AFTER,
    )
    refused(
        state,
        ResolveClaim(sender=A, claim=claim_id),
        ErrorCode.CLAIM_CLOSED,
        now=AFTER + WINDOW + 1,
    )


def test_an_ok_answer_may_charge_less_but_not_more_than_the_price() -> None:
    state, _, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    dearer = Response.create(BOB, request=request, status="OK", price=11, spent=11, body=b"r")
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=dearer),
        ErrorCode.RESPONSE_MISMATCH,
        now=AFTER,
    )
    cheaper = Response.create(BOB, request=request, status="OK", price=3, spent=3, body=b"r")
    ok(state, AnswerClaim(sender=B, claim=claim_id, response=cheaper), now=AFTER)
    assert state.claims[claim_id].state is ClaimState.DELIVERED


def test_bond_harvesting_is_gone_a_refusal_refunds_the_price() -> None:
    """Issue 13: a signed refusal used to win the bond. Now it returns the bond to the
    claimant and refunds the request's slice (here still in escrow: no clawback)."""
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    refusal = answer(request, status=ErrorCode.HANDLER_ERROR.value)
    _, events = ok(state, AnswerClaim(sender=B, claim=claim_id, response=refusal), now=AFTER)
    claim = state.claims[claim_id]
    assert claim.state is ClaimState.REFUSED and claim.response_frame == refusal.to_frame()
    assert (claim.refund, claim.clawed) == (10, 0)
    assert state.balances[A] == 9_000 and state.balances[B] == 9_000
    assert state.stakes[B].amount == 1_000
    channel = state.channels[cid]
    assert (channel.paid_seen, channel.refunded, channel.clawed) == (10, 10, 0)
    assert events[0].fields == answered_fields(
        claim_id, outcome="refused", status="HANDLER_ERROR", bond_to=A, refund=10
    )
    # the refunded slice cannot be redeemed any more: it goes back to Alice at close
    assert apply(state, Redeem(sender=B, voucher=request), AFTER) == (0, [])
    ok(state, PayeeClose(sender=B, channel=cid), now=AFTER)
    assert state.balances[A] == 10_000 and state.balances[B] == 9_000


def test_a_refusal_after_redeeming_the_slice_is_clawed_back() -> None:
    """The withholder redeemed the price, then answers with a refusal: the slice it now
    says it never charged is taken back from its stake and paid to the claimant."""
    state, cid, request = claim_world()
    paid, _ = ok(state, Redeem(sender=B, voucher=request), now=T0)
    assert paid == 10
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    refusal = answer(request, status=ErrorCode.OVERLOADED.value)
    _, events = ok(state, AnswerClaim(sender=B, claim=claim_id, response=refusal), now=AFTER)
    assert events[0].fields == answered_fields(
        claim_id, outcome="refused", status="OVERLOADED", bond_to=A, refund=10, clawed=10
    )
    assert state.balances[A] == 9_000 + 10 and state.balances[B] == 9_000 + 10
    assert state.stakes[B].amount == 990
    channel = state.channels[cid]
    assert (channel.redeemed, channel.refunded, channel.clawed) == (10, 10, 10)
    assert state.claims[claim_id].clawed == 10
    # a second voucher cannot win the slice back: the payee holds 0 and is entitled to 0
    assert apply(state, Redeem(sender=B, voucher=request), AFTER) == (0, [])


def test_closing_the_channel_does_not_escape_the_clawback() -> None:
    """A withholder that redeemed and closed the channel is still clawed back: claims on a
    CLOSED channel keep its paid_seen/refunded/clawed accounting (and nothing else)."""
    state, cid, request = claim_world()
    ok(state, PayeeClose(sender=B, channel=cid, voucher=request), now=T0)
    closed = copy.deepcopy(state.channels[cid])
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    refusal = answer(request, status=ErrorCode.OVERLOADED.value)
    _, events = ok(state, AnswerClaim(sender=B, claim=claim_id, response=refusal), now=AFTER)
    assert events[0].fields["clawed"] == 10 and state.stakes[B].amount == 990
    channel = state.channels[cid]
    assert (channel.refunded, channel.clawed) == (10, 10)
    assert (channel.state, channel.deposit, channel.redeemed) == (
        closed.state,
        closed.deposit,
        closed.redeemed,
    )


def test_a_refusal_that_charges_is_a_mismatch() -> None:
    state, _, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    greedy = unchecked_response(
        BOB, request=request, status=ErrorCode.OVERLOADED.value, price=1, spent=1, body=b""
    )
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=greedy),
        ErrorCode.RESPONSE_MISMATCH,
        now=AFTER,
    )


def test_clawback_is_capped_by_the_stake() -> None:
    state = fresh()
    cid = open_channel(state, deposit=1_000)
    ok(state, StakeOp(sender=B, amount=400, penalty=300, claim_window_ms=WINDOW))
    big = voucher(cid, 1_000, n=1, deadline=T0)
    big = request_with(cid, n=1, paid=1_000, price=1_000, deadline=T0)
    other = request_with(cid, n=2, paid=1_000, price=1_000, deadline=T0, body=b"2")
    ok(state, Redeem(sender=B, voucher=big), now=T0)
    c1, _ = ok(state, FileClaim(sender=A, request=big), now=T0 + 1)
    c2, _ = ok(state, FileClaim(sender=A, request=other), now=T0 + 1)
    ok(state, AnswerClaim(sender=B, claim=c1, response=answer(big, status="OVERLOADED")), T0 + 1)
    assert state.claims[c1].clawed == 400 and state.stakes[B].amount == 0
    assert state.channels[cid].clawed == 400
    # the second refund finds nothing left to claw (and the stake is empty)
    # c2's window ends one slot after c1's (FileClaim: claim windows queue per stake)
    _, events = ok(state, ResolveClaim(sender=M, claim=c2), now=state.claims[c2].window_ends + 1)
    assert events[0].fields["slashed"] == 0 and events[0].fields["clawed"] == 0
    assert events[0].fields["refund"] == 1_000


def test_upheld_claim_slashes_then_claws_what_is_left() -> None:
    state = fresh()
    cid = open_channel(state, deposit=1_000)
    ok(state, StakeOp(sender=B, amount=400, penalty=300, claim_window_ms=WINDOW))
    big = request_with(cid, n=1, paid=1_000, price=1_000, deadline=T0)
    ok(state, Redeem(sender=B, voucher=big), now=T0)
    claim_id, _ = ok(state, FileClaim(sender=A, request=big), now=T0 + 1)
    alice = state.balances[A]
    _, events = ok(state, ResolveClaim(sender=M, claim=claim_id), now=T0 + 1 + WINDOW + 1)
    fields = events[0].fields
    assert (fields["slashed"], fields["to_claimant"], fields["clawed"]) == (300, 150, 100)
    assert state.balances[A] == alice + 150 + 100 + BOND
    assert state.stakes[B].amount == 0 and state.burnt == 150


def test_redeem_is_capped_at_paid_seen_minus_refunded() -> None:
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    ok(state, AnswerClaim(sender=B, claim=claim_id, response=answer(request, status="OVERLOADED")))
    later = voucher(cid, 30, n=8)  # slice (20, 30]
    paid, events = ok(state, Redeem(sender=B, voucher=later), now=AFTER)
    assert paid == 20  # 30 seen, 10 refunded
    assert state.channels[cid].paid_seen == 30
    assert events[0].fields["paid"] == 30 and events[0].fields["amount"] == 20
    # PayeeClose applies the same cap, and what the payee may not take goes to the payer
    _, events = ok(state, PayeeClose(sender=B, channel=cid, voucher=voucher(cid, 50, n=9)), AFTER)
    assert kinds(events) == ["Redeemed", "ChannelClosed"] and events[0].fields["amount"] == 20
    assert state.balances[B] == 9_000 + 40 and state.balances[A] == 10_000 - 40


def n1_world() -> tuple[State, bytes, Request, Request, Response]:
    """Attack N1: Alice signs r1 (1, paid 10) and r2 (2, paid 20); Bob refuses r1 with a
    signed OVERLOADED (not charged) and serves r2. Bob earned 10, the best voucher says 20."""
    state, cid, _ = claim_world()
    r1 = request_with(cid, n=1, paid=10, price=10)
    r2 = request_with(cid, n=2, paid=20, price=10)
    return state, cid, r1, r2, answer(r1, status=ErrorCode.OVERLOADED.value)


def test_refund_with_the_payees_refusal_caps_its_redeem() -> None:
    """N1: the refused slice posted with Bob's refusal is settled at once as REFUSED (no bond,
    no deadline, no window); Bob's redeem of the best voucher then pays only what he earned."""
    state, cid, r1, r2, refusal = n1_world()
    balance_a = state.balances[A]
    claim_id, events = ok(state, FileClaim(sender=A, request=r1, refusal=refusal), now=T0)
    assert claim_id == r1.hash and kinds(events) == ["ClaimFiled", "ClaimAnswered"]
    assert events[0].fields["bond"] == 0 and events[0].fields["window_ends"] == T0
    assert events[1].fields == answered_fields(
        claim_id, outcome="refused", status="OVERLOADED", bond=0, bond_to=A, refund=10
    )
    claim = state.claims[claim_id]
    assert claim.state is ClaimState.REFUSED and claim.response_frame == refusal.to_frame()
    assert (claim.bond, claim.refund, claim.clawed, claim.price, claim.paid) == (0, 10, 0, 10, 10)
    assert state.stakes[B].open_claims == 0 and state.balances[A] == balance_a
    channel = state.channels[cid]
    assert (channel.paid_seen, channel.refunded, channel.clawed) == (10, 10, 0)
    paid, _ = ok(state, Redeem(sender=B, voucher=r2), now=T0)
    assert paid == 10  # not 20: the refused slice is not Bob's
    ok(state, PayeeClose(sender=B, channel=cid), now=T0)
    assert state.balances[A] == balance_a + 1_000 - 10


def test_refund_with_the_payees_refusal_claws_back_a_redeemed_slice() -> None:
    state, cid, r1, r2, refusal = n1_world()
    assert ok(state, Redeem(sender=B, voucher=r2), now=T0)[0] == 20  # the theft
    balance_a = state.balances[A]
    _, events = ok(state, FileClaim(sender=A, request=r1, refusal=refusal), now=T0 + 1)
    assert events[1].fields["clawed"] == 10 and events[1].fields["refund"] == 10
    assert state.balances[A] == balance_a + 10 and state.stakes[B].amount == 990
    channel = state.channels[cid]
    assert (channel.redeemed, channel.refunded, channel.clawed) == (20, 10, 10)
    assert apply(state, Redeem(sender=B, voucher=r2), T0 + 1) == (0, [])


def test_refund_with_a_refusal_needs_no_stake() -> None:
    """Without a stake nothing can be clawed, but the refund still caps later redeems."""
    state = fresh()
    cid = open_channel(state)
    r1 = request_with(cid, n=1, paid=10, price=10)
    r2 = request_with(cid, n=2, paid=20, price=10)
    refusal = answer(r1, status=ErrorCode.PAYMENT_REQUIRED.value)
    _, events = ok(state, FileClaim(sender=A, request=r1, refusal=refusal), now=T0)
    assert events[1].fields["clawed"] == 0 and B not in state.stakes
    assert ok(state, Redeem(sender=B, voucher=r2), now=T0)[0] == 10


def test_refund_with_a_refusal_refusals() -> None:
    state, cid, r1, r2, refusal = n1_world()

    def file(request: Request, response: Any, code: ErrorCode, sender: bytes = A) -> None:
        op = FileClaim(sender=sender, request=request, refusal=response)
        refused(state, op, code, now=T0)

    file(r1, "junk", ErrorCode.INVALID_ARGUMENT)
    file(request_with(cid, n=0), refusal, ErrorCode.INVALID_ARGUMENT)  # argument checks first
    file(request_with(cid, n=1, ledger=OTHER_LEDGER), refusal, ErrorCode.WRONG_LEDGER)
    file(request_with(NOWHERE, n=1), refusal, ErrorCode.UNKNOWN_CHANNEL)
    file(r1, refusal, ErrorCode.NOT_PARTY, sender=B)
    file(r1, refusal, ErrorCode.NOT_PARTY, sender=M)
    file(request_with(cid, n=1, key=MALLORY), refusal, ErrorCode.INVALID_SIGNATURE)
    by_mallory = answer(r1, key=MALLORY, status="OVERLOADED")
    file(r1, by_mallory, ErrorCode.INVALID_SIGNATURE)  # signed by someone else
    file(r1, answer(r2, status="OVERLOADED"), ErrorCode.RESPONSE_MISMATCH)  # another request
    file(r1, answer(r1), ErrorCode.RESPONSE_MISMATCH)  # an OK answer is no refusal
    charging = unchecked_response(BOB, request=r1, status="OVERLOADED", price=1, spent=10, body=b"")
    file(r1, charging, ErrorCode.RESPONSE_MISMATCH)  # a refusal charges nothing
    above = request_with(cid, n=3, paid=1_001, price=10)
    file(above, answer(above, status="OVERLOADED"), ErrorCode.VOUCHER_EXCEEDS_DEPOSIT)
    ok(state, FileClaim(sender=A, request=r1, refusal=refusal), now=T0)
    file(r1, refusal, ErrorCode.CLAIM_EXISTS)  # twice
    refused(state, FileClaim(sender=A, request=r1), ErrorCode.CLAIM_EXISTS, now=T0 + 5_001)
    # and a refusal for a request already claimed the regular way
    claim_id, _ = ok(state, FileClaim(sender=A, request=r2), now=T0 + 5_001)
    file(r2, answer(r2, status="OVERLOADED"), ErrorCode.CLAIM_EXISTS)
    assert state.claims[claim_id].state is ClaimState.OPEN


def test_refund_with_a_refusal_touches_the_payees_stake() -> None:
    state, cid, r1, _, refusal = n1_world()
    op = FileClaim(sender=A, request=r1, refusal=refusal)
    loaded = touches_loaded(op, state)
    assert B in loaded.stakes and cid in loaded.channels and r1.hash in loaded.claims


def test_an_honest_payee_is_never_clawed() -> None:
    """C-2: the payee charged n=1 and n=3, refused n=2 (not charged) and redeemed `spent`.
    Claims on every request: n=2 is REFUSED without a clawback, the others DELIVERED."""
    state, cid, _ = claim_world()
    r1 = request_with(cid, n=1, paid=10, price=10, deadline=T0)
    r2 = request_with(cid, n=2, paid=25, price=15, deadline=T0)  # refused: (10, 25] unearned
    r3 = request_with(cid, n=3, paid=35, price=10, deadline=T0)
    spent = r1.price + r3.price
    ok(state, Redeem(sender=B, voucher=r3, amount=spent), now=T0)
    ids = [ok(state, FileClaim(sender=A, request=r), now=T0 + 1)[0] for r in (r1, r2, r3)]
    ok(state, AnswerClaim(sender=B, claim=ids[1], response=answer(r2, status="OVERLOADED")))
    for claim_id, r in ((ids[0], r1), (ids[2], r3)):
        ok(state, AnswerClaim(sender=B, claim=claim_id, response=answer(r)), now=T0 + 1)
    channel = state.channels[cid]
    assert channel.clawed == 0 and state.stakes[B].amount == 1_000
    assert channel.paid_seen - channel.refunded >= spent
    assert [state.claims[i].state for i in ids] == [
        ClaimState.DELIVERED,
        ClaimState.REFUSED,
        ClaimState.DELIVERED,
    ]


@pytest.mark.parametrize(
    ("evidence_fields", "why"),
    [
        ({"n": 7, "paid": 10, "price": 10, "body": b"other"}, "same n, another hash"),
        ({"n": 6, "paid": 5, "price": 5}, "earlier request overlaps the claimed slice"),
        ({"n": 8, "paid": 15, "price": 10}, "later request overlaps the claimed slice"),
        ({"n": 6, "paid": 0, "price": 0, "deadline": T0 + 5_000 + HORIZON + 1}, "post-dated"),
        (
            {"n": 8, "paid": 20, "price": 10, "deadline": T0 + 5_000 - HORIZON - 1},
            "claim post-dated",
        ),
    ],
)
def test_a_frivolous_claim_loses_its_bond(evidence_fields: dict[str, Any], why: str) -> None:
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    evidence = request_with(cid, **evidence_fields)
    assert tiling_conflict(request, evidence, HORIZON), why
    _, events = ok(state, AnswerClaim(sender=B, claim=claim_id, evidence=evidence), now=AFTER)
    claim = state.claims[claim_id]
    assert claim.state is ClaimState.FRIVOLOUS and claim.response_frame == b""
    stored = decode_frame(claim.evidence_frame)
    assert isinstance(stored, Request) and stored.hash == evidence.hash
    assert stored.body == b"" and stored.verify(A)  # the body is not kept
    assert state.balances[B] == 9_000 + BOND and state.balances[A] == 9_000 - BOND
    assert state.stakes[B].amount == 1_000 and state.stakes[B].open_claims == 0
    assert state.channels[cid].refunded == 0
    assert events[0].fields == answered_fields(claim_id, outcome="frivolous", status="", bond_to=B)


def test_evidence_refusals() -> None:
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    ok(state, OpenChannel(sender=A, payee=B, deposit=10, challenge_ms=CHALLENGE))
    second = channel_id(LEDGER, A, B, 1)
    conflict = {"n": 7, "body": b"other"}

    def no(code: ErrorCode, **kw: Any) -> None:
        refused(state, AnswerClaim(sender=B, claim=claim_id, **kw), code, now=AFTER)

    no(ErrorCode.INVALID_ARGUMENT)  # neither
    no(ErrorCode.INVALID_ARGUMENT, response=answer(request), evidence=request_with(cid, **conflict))
    no(ErrorCode.INVALID_ARGUMENT, evidence=answer(request))
    no(ErrorCode.INVALID_ARGUMENT, evidence="junk")
    no(ErrorCode.WRONG_LEDGER, evidence=request_with(cid, ledger=OTHER_LEDGER, **conflict))
    no(ErrorCode.RESPONSE_MISMATCH, evidence=request_with(second, **conflict))
    no(ErrorCode.INVALID_SIGNATURE, evidence=request_with(cid, key=MALLORY, **conflict))
    no(ErrorCode.INVALID_SIGNATURE, evidence=request_with(cid, key=BOB, **conflict))
    no(ErrorCode.RESPONSE_MISMATCH, evidence=request)  # the claimed request itself
    no(ErrorCode.RESPONSE_MISMATCH, evidence=request_with(cid, n=8, paid=20, price=10))
    no(ErrorCode.RESPONSE_MISMATCH, evidence=request_with(cid, n=6, paid=0, price=0))
    edge = T0 + 5_000 + HORIZON  # exactly the horizon: no conflict
    no(ErrorCode.RESPONSE_MISMATCH, evidence=request_with(cid, n=6, paid=0, price=0, deadline=edge))
    # a state check still comes before the evidence's own checks
    refused(
        state,
        AnswerClaim(sender=M, claim=claim_id, evidence=request_with(cid, **conflict)),
        ErrorCode.NOT_PARTY,
        now=AFTER,
    )
    # an evidence body that does not match is fine: the signature is the evidence
    odd = request_with(cid, **conflict)
    odd_body = Request.from_signed(odd.signing_bytes, odd.signature, b"not the body")
    ok(state, AnswerClaim(sender=B, claim=claim_id, evidence=odd_body), now=AFTER)


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        ((1, 10, 10, 100), (2, 20, 10, 100), False),  # adjacent slices (0,10], (10,20]
        ((1, 10, 10, 100), (3, 50, 5, 100), False),  # a gap between slices
        ((1, 10, 10, 100), (2, 19, 10, 100), True),  # overlap by one
        ((2, 20, 10, 100), (1, 10, 10, 100), False),  # order of the arguments is irrelevant
        ((2, 19, 10, 100), (1, 10, 10, 100), True),
        ((1, 30, 10, 100), (2, 20, 10, 100), True),  # out of order
        ((1, 10, 10, 100 + HORIZON), (2, 20, 10, 100), False),  # deadline at the horizon
        ((1, 10, 10, 101 + HORIZON), (2, 20, 10, 100), True),  # post-dated
        ((2, 20, 10, 100), (1, 10, 10, 101 + HORIZON), True),
        ((1, 10, 10, 50), (2, 20, 10, 100 + HORIZON), False),  # later deadlines are fine
        ((1, 0, 0, 100), (2, 0, 0, 100), False),  # free requests take empty slices
    ],
)
def test_tiling_conflict(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int], conflict: bool
) -> None:
    ra = voucher_fields(*a)
    rb = voucher_fields(*b)
    assert tiling_conflict(ra, rb, HORIZON) is conflict
    assert tiling_conflict(rb, ra, HORIZON) is conflict


def voucher_fields(n: int, paid: int, price: int, deadline: int) -> Request:
    return request_with(NOWHERE, n=n, paid=paid, price=price, deadline=deadline)


def test_tiling_conflict_same_n() -> None:
    one = voucher_fields(3, 10, 10, 100)
    assert tiling_conflict(one, one, HORIZON) is False  # the same request
    assert tiling_conflict(one, voucher_fields(3, 10, 10, 101), HORIZON) is True
    assert tiling_conflict(one, voucher_fields(3, 10, 10, 100), HORIZON) is False  # same hash


def test_answer_claim_refusals() -> None:
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    good = answer(request)
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response="r"),  # type: ignore[arg-type]
        ErrorCode.INVALID_ARGUMENT,
        now=AFTER,
    )
    refused(
        state,
        AnswerClaim(sender=B, claim=NOWHERE, response=good),
        ErrorCode.UNKNOWN_CLAIM,
        now=AFTER,
    )
    refused(
        state,
        AnswerClaim(sender=B, claim=b"x", response=good),
        ErrorCode.INVALID_ARGUMENT,
        now=AFTER,
    )
    refused(
        state, AnswerClaim(sender=M, claim=claim_id, response=good), ErrorCode.NOT_PARTY, now=AFTER
    )
    refused(
        state, AnswerClaim(sender=A, claim=claim_id, response=good), ErrorCode.NOT_PARTY, now=AFTER
    )
    late = AFTER + WINDOW + 1
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=good),
        ErrorCode.WINDOW_CLOSED,
        now=late,
    )
    by_mallory = answer(request, key=MALLORY)
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=by_mallory),
        ErrorCode.INVALID_SIGNATURE,
        now=AFTER,
    )
    other_request = voucher(cid, 10, n=8, deadline=T0 + 5_000)
    for wrong in (
        answer(other_request),  # another request (hash, n)
        Response.create(
            BOB,
            request=voucher(cid, 10, n=7, deadline=T0 + 5_001),
            status="OK",
            price=1,
            spent=1,
            body=b"",
        ),  # same n, another hash
        Response.create(
            BOB,
            request=voucher(cid, 10, n=7, ledger=OTHER_LEDGER, deadline=T0 + 5_000),
            status="OK",
            price=1,
            spent=1,
            body=b"",
        ),  # another ledger
    ):
        refused(
            state,
            AnswerClaim(sender=B, claim=claim_id, response=wrong),
            ErrorCode.RESPONSE_MISMATCH,
            now=AFTER,
        )
    forged_fields = Response(
        ledger=LEDGER,
        channel=NOWHERE,
        n=7,
        request_hash=request.hash,
        status="OK",
        price=1,
        spent=1,
        body_hash=good.body_hash,
    )
    wrong_channel = forged_fields.with_signature(BOB.sign(forged_fields.signing_bytes))
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=wrong_channel),
        ErrorCode.RESPONSE_MISMATCH,
        now=AFTER,
    )
    bad_body = Response.from_signed(good.signing_bytes, good.signature, b"not the body")
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=bad_body),
        ErrorCode.MALFORMED,
        now=AFTER,
    )


def test_answer_claim_bond_overflow() -> None:
    """The bond goes back to the claimant (DELIVERED, REFUSED) or to the respondent
    (FRIVOLOUS); a credit past 2**128 - 1 is refused either way."""
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    ok(state, Mint(sender=A, account=A, amount=MAX_AMOUNT - state.balances[A]))
    for response in (answer(request), answer(request, status="OVERLOADED")):
        refused(
            state,
            AnswerClaim(sender=B, claim=claim_id, response=response),
            ErrorCode.INVALID_AMOUNT,
            now=AFTER,
        )
    ok(state, Mint(sender=B, account=B, amount=MAX_AMOUNT - state.balances[B]))
    evidence = request_with(cid, body=b"other")
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, evidence=evidence),
        ErrorCode.INVALID_AMOUNT,
        now=AFTER,
    )


def test_claim_upheld_after_the_window() -> None:
    state, cid, request = claim_world(slash_to_claimant_bps=3_333)
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    window_ends = AFTER + WINDOW
    refused(state, ResolveClaim(sender=M, claim=claim_id), ErrorCode.WINDOW_OPEN, now=window_ends)
    refused(
        state, ResolveClaim(sender=M, claim=NOWHERE), ErrorCode.UNKNOWN_CLAIM, now=window_ends + 1
    )
    alice_before = state.balances[A]
    _, events = ok(state, ResolveClaim(sender=M, claim=claim_id), now=window_ends + 1)
    to_claimant = 300 * 3_333 // 10_000
    assert to_claimant == 99
    assert state.balances[A] == alice_before + to_claimant + BOND
    assert state.stakes[B].amount == 700 and state.stakes[B].open_claims == 0
    assert state.burnt == 300 - to_claimant
    claim = state.claims[claim_id]
    assert claim.state is ClaimState.UPHELD and claim.slashed == 300
    assert (claim.refund, claim.clawed, state.channels[cid].refunded) == (10, 0, 10)
    assert kinds(events) == ["ClaimUpheld", "Slashed"]
    assert events[0].fields == {
        "claim": claim_id,
        "claimant": A,
        "respondent": B,
        "slashed": 300,
        "to_claimant": 99,
        "burnt": 201,
        "bond": BOND,
        "refund": 10,
        "clawed": 0,
    }
    assert events[1].fields == {"account": B, "amount": 300, "claim": claim_id}
    refused(
        state, ResolveClaim(sender=M, claim=claim_id), ErrorCode.CLAIM_CLOSED, now=window_ends + 1
    )
    late = answer(request)
    refused(
        state,
        AnswerClaim(sender=B, claim=claim_id, response=late),
        ErrorCode.CLAIM_CLOSED,
        now=window_ends,
    )


def test_slash_is_capped_by_what_is_left() -> None:
    state, cid, _ = claim_world()
    ids = []
    for n in range(1, 6):  # 5 claims x penalty 300 against a 1_000 stake
        request = voucher(cid, 10, n=n, deadline=T0)
        claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=T0 + 1)
        ids.append(claim_id)
    slashes = []
    for claim_id in ids:
        ends = state.claims[claim_id].window_ends  # a slot per claim open before it (FileClaim)
        _, events = ok(state, ResolveClaim(sender=C, claim=claim_id), now=ends + 1)
        slashes.append(events[0].fields["slashed"])
        assert kinds(events) == (["ClaimUpheld", "Slashed"] if slashes[-1] else ["ClaimUpheld"])
    assert slashes == [300, 300, 300, 100, 0]
    assert state.stakes[B].amount == 0
    # a stake slashed to nothing cannot be claimed against
    refused(
        state,
        FileClaim(sender=A, request=voucher(cid, 10, n=9, deadline=T0)),
        ErrorCode.NOT_STAKED,
        now=T0 + 1,
    )


def test_refunded_saturates_and_never_blocks_a_refund() -> None:
    state = State(params=make_params())
    ok(state, Mint(sender=A, account=A, amount=MAX_AMOUNT))
    ok(state, Mint(sender=B, account=B, amount=10))
    cid = open_channel(state, deposit=MAX_AMOUNT - 2 * BOND)
    ok(state, StakeOp(sender=B, amount=10, penalty=1, claim_window_ms=WINDOW))
    top = MAX_AMOUNT - 2 * BOND
    ids = []
    for n in (1, 2):
        request = request_with(cid, n=n, paid=top, price=top, deadline=T0, body=bytes([n]))
        ids.append(ok(state, FileClaim(sender=A, request=request), now=T0 + 1)[0])
    for claim_id in ids:
        ok(
            state,
            ResolveClaim(sender=M, claim=claim_id),
            now=state.claims[claim_id].window_ends + 1,
        )
    assert state.channels[cid].refunded == MAX_AMOUNT
    assert [state.claims[i].refund for i in ids] == [top, top]


def test_resolve_with_missing_stake_or_channel_is_internal() -> None:
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    without_channel = copy.deepcopy(state)
    del without_channel.channels[cid]  # a backend that failed to load the claim's channel
    for broken in (without_channel,):
        refused(
            broken, ResolveClaim(sender=A, claim=claim_id), ErrorCode.INTERNAL, AFTER + WINDOW + 1
        )
        refused(
            broken,
            AnswerClaim(sender=B, claim=claim_id, response=answer(request)),
            ErrorCode.INTERNAL,
            AFTER,
        )
    del state.stakes[B]  # a backend that failed to load the respondent's stake
    refused(
        state, ResolveClaim(sender=A, claim=claim_id), ErrorCode.INTERNAL, now=AFTER + WINDOW + 1
    )


def test_claims_lock_the_stake_terms_but_not_top_ups() -> None:
    state, _, request = claim_world()
    ok(state, FileClaim(sender=A, request=request), now=AFTER)
    refused(
        state,
        StakeOp(sender=B, amount=1, penalty=301, claim_window_ms=WINDOW),
        ErrorCode.STAKE_LOCKED,
        now=AFTER,
    )
    refused(
        state,
        StakeOp(sender=B, amount=1, penalty=300, claim_window_ms=WINDOW + 1),
        ErrorCode.STAKE_LOCKED,
        now=AFTER,
    )
    ok(state, StakeOp(sender=B, amount=1, penalty=300, claim_window_ms=WINDOW), now=AFTER)
    assert state.stakes[B].amount == 1_001


def test_unbonding_stake_stays_claimable_until_withdrawn() -> None:
    """A request served before RequestUnstake can still be claimed and slashed (specs 6)."""
    state, cid, _ = claim_world()
    served_at = T0
    request = voucher(cid, 10, n=3, deadline=served_at + HORIZON)  # the farthest deadline
    ok(state, RequestUnstake(sender=B), now=served_at)
    unbonding_at = state.stakes[B].unbonding_at
    assert unbonding_at == served_at + HORIZON + 2 * WINDOW
    last_filing = request.deadline + WINDOW
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=last_filing)
    window_ends = state.claims[claim_id].window_ends
    assert window_ends <= unbonding_at  # resolvable (after the window) from unbonding_at on
    refused(state, WithdrawStake(sender=B), ErrorCode.STAKE_LOCKED, now=unbonding_at)
    ok(state, ResolveClaim(sender=A, claim=claim_id), now=window_ends + 1)
    _, events = ok(state, WithdrawStake(sender=B), now=max(unbonding_at, window_ends + 1))
    assert events[0].fields["amount"] == 700
    assert state.stakes[B].unstake_requested_at == 0
    refused(
        state,
        FileClaim(sender=A, request=voucher(cid, 10, n=4, deadline=unbonding_at)),
        ErrorCode.NOT_STAKED,
        now=unbonding_at + 1,
    )


# ----------------------------------------------------------------------------- touches


def test_touches_names_what_each_op_uses() -> None:
    state, cid, request = claim_world()
    claim_id, _ = ok(state, FileClaim(sender=A, request=request), now=AFTER)
    response = answer(request)
    assert touches(Mint(sender=M, account=A, amount=1)) == Touches(accounts=frozenset({A}))
    assert touches(Transfer(sender=A, to=B, amount=1)) == Touches(accounts=frozenset({A, B}))
    assert touches(Withdraw(sender=A, amount=1)) == Touches(accounts=frozenset({A}))
    assert touches(OpenChannel(sender=A, payee=B, deposit=1, challenge_ms=1)) == Touches(
        accounts=frozenset({A}), new_channel=True
    )
    one = frozenset({cid})
    assert touches(TopUp(sender=A, channel=cid, amount=1)) == Touches(
        accounts=frozenset({A}), channels=one
    )
    assert touches(Redeem(sender=B, voucher=request)) == Touches(
        accounts=frozenset({B}), channels=one
    )
    assert touches(PayeeClose(sender=B, channel=cid)) == Touches(
        accounts=frozenset({B}), channels=one
    )
    assert touches(StartClose(sender=A, channel=cid)) == Touches(channels=one)
    assert touches(FinalizeClose(sender=M, channel=cid)) == Touches(channels=one)
    assert touches(StakeOp(sender=B, amount=1, penalty=1, claim_window_ms=1)) == Touches(
        accounts=frozenset({B}), stakes=frozenset({B})
    )
    assert touches(RequestUnstake(sender=B)) == Touches(stakes=frozenset({B}))
    assert touches(WithdrawStake(sender=B)) == Touches(
        accounts=frozenset({B}), stakes=frozenset({B})
    )
    assert touches(FileClaim(sender=A, request=request)) == Touches(
        accounts=frozenset({A}), channels=one, claims=frozenset({claim_id})
    )
    assert touches(AnswerClaim(sender=B, claim=claim_id, response=response)) == Touches(
        accounts=frozenset({B}), stakes=frozenset({B}), claims=frozenset({claim_id})
    )
    assert touches(ResolveClaim(sender=M, claim=claim_id)) == Touches(claims=frozenset({claim_id}))
    # malformed fields are left out rather than crashing the backend
    assert touches(TopUp(sender=A, channel=[1], amount=1)) == Touches(accounts=frozenset({A}))  # type: ignore[arg-type]
    assert touches(Redeem(sender=B, voucher=None)) == Touches(accounts=frozenset({B}))  # type: ignore[arg-type]
    assert touches(FileClaim(sender=A, request=None)) == Touches(accounts=frozenset({A}))  # type: ignore[arg-type]
    # derived parties
    full = touches_loaded(ResolveClaim(sender=M, claim=claim_id), state)
    assert full.accounts == {A, B} and full.stakes == {A, B} and full.claims == {claim_id}
    assert full.channels == one  # a claim's refund and clawback touch its channel
    full = touches_loaded(AnswerClaim(sender=B, claim=claim_id, response=response), state)
    assert full.accounts == {A, B} and full.channels == one
    full = touches_loaded(FinalizeClose(sender=M, channel=cid), state)
    assert full.accounts == {A, B} and full.stakes == {A, B} and full.channels == one
    assert touches_loaded(
        FinalizeClose(sender=M, channel=NOWHERE), State(params=state.params)
    ) == Touches(channels=frozenset({NOWHERE}))


def partial(full: State, op: Op) -> State:
    """The state a backend that loads only `touches_loaded(op)` would hand to apply."""
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


def test_apply_on_partial_state_matches_full_state() -> None:
    state, cid, request = claim_world()
    claim_id = request.hash
    refused_req = request_with(cid, n=2, paid=60, price=10, deadline=T0 + 5_000)
    frivolous = request_with(cid, n=3, paid=65, price=10, deadline=T0 + 5_000)
    script: list[tuple[Op, int]] = [
        (Mint(sender=M, account=C, amount=5), T0),
        (Transfer(sender=A, to=C, amount=5), T0),
        (TopUp(sender=A, channel=cid, amount=5), T0),
        (Redeem(sender=B, voucher=voucher(cid, 50)), T0),
        (FileClaim(sender=A, request=request), AFTER),
        (Redeem(sender=B, voucher=refused_req), AFTER),
        (FileClaim(sender=A, request=refused_req), AFTER),
        (
            AnswerClaim(
                sender=B, claim=refused_req.hash, response=answer(refused_req, status="OVERLOADED")
            ),
            AFTER,
        ),
        (FileClaim(sender=A, request=frivolous), AFTER),
        (AnswerClaim(sender=B, claim=frivolous.hash, evidence=refused_req), AFTER),
        (ResolveClaim(sender=M, claim=claim_id), AFTER + WINDOW + 1),
        (StartClose(sender=A, channel=cid), AFTER),
        (FinalizeClose(sender=M, channel=cid), AFTER + CHALLENGE),
        (RequestUnstake(sender=B), AFTER),
        (WithdrawStake(sender=B), AFTER + HORIZON + 2 * WINDOW),
        (OpenChannel(sender=C, payee=B, deposit=5, challenge_ms=CHALLENGE), AFTER),
    ]
    for op, now in script:
        small = partial(state, op)
        small_result = apply(small, op, now)
        result = apply(state, op, now)
        assert small_result == result
        assert all(state.balances[k] == v for k, v in small.balances.items())
        assert all(state.channels[k] == v for k, v in small.channels.items())
        assert all(state.stakes[k] == v for k, v in small.stakes.items())
        assert all(state.claims[k] == v for k, v in small.claims.items())
        assert (small.supply, small.burnt, small.nonce) == (state.supply, state.burnt, state.nonce)
        assert invariant_violations(state) == []


def test_invariant_violations_reports_each_invariant() -> None:
    state, _, request = claim_world()
    ok(state, FileClaim(sender=A, request=request), now=AFTER)
    assert invariant_violations(state) == []
    state.balances[C] += 1
    state.stakes[B].open_claims = 0
    state.channels[request.channel].redeemed = state.channels[request.channel].deposit + 1
    found = {v.split()[0] for v in invariant_violations(state)}
    assert found == {"S-1", "S-2", "S-3"}


def test_claim_schedule_fits_the_claim_window() -> None:
    # claims.md 6: the claimant starts after the grace, or a quarter of a short window
    from p2pay.core.settlement import claim_starts_ms, resend_budget_s

    assert claim_starts_ms(1_000, 5_000, 60_000) == 6_000  # the grace is sooner
    assert claim_starts_ms(1_000, 5_000, 2_000) == 1_500  # a quarter of a 2 s window
    assert claim_starts_ms(1_000, 5_000, None) == 6_000  # no stake: the grace
    assert claim_starts_ms(1_000, 0, 2_000) == 1_000
    # the re-send waits at most its timeout and a third of what is left, at least 10 ms
    assert resend_budget_s(5.0, 1_000, 60_000, 2_000) == 5.0
    assert resend_budget_s(5.0, 1_000, 2_000, 1_500) == 0.5
    assert resend_budget_s(5.0, 1_000, 2_000, 5_000) == 0.01
