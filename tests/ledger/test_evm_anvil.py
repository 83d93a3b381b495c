"""The EVM ledger against anvil (a real JSON-RPC node): conformance, a paid call, a slash.

anvil comes from the npm package ``@foundry-rs/anvil`` (.ci/run installs it and puts it on
PATH; set P2PAY_ANVIL to its path otherwise). The fixture starts one anvil on 127.0.0.1 on
a free port, snapshots the fresh chain, reverts to it after every test, and stops anvil by
its PID. Without anvil these tests skip and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from p2pay import testing
from p2pay.core.errors import ErrorCode, SettlementError
from p2pay.core.evmsig import EvmKey
from p2pay.core.messages import Hello, Request, Response, check_signed_by
from p2pay.core.settlement import ChannelState, ClaimState
from p2pay.ledger import Ledger
from p2pay.ledger.evm import EvmLedger, Web3Chain
from p2pay.testing import ALICE, BOB, TOKEN, ManualClock, ledger_conformance_cases

pytestmark = pytest.mark.trio

DEPLOYER, EVM_KEYS = testing.evm_test_keys()
CASES = ledger_conformance_cases()
# The signed-transaction cases are for ledgers that check signatures themselves; on a
# chain the node checks msg.sender and nonces (specs/settlement.md 11): listed, skipped.
EVM_CASES = [
    pytest.param(
        name,
        case,
        id=name,
        marks=pytest.mark.skip(
            reason="specs/settlement.md 11: the chain checks msg.sender and its own nonces"
        ),
    )
    if name in testing.SIGNED_TX_CASES
    else pytest.param(name, case, id=name)
    for name, case in CASES
]


@pytest.fixture
def anvil_factory(chain: Web3Chain, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, key in EVM_KEYS.items():
        monkeypatch.setattr(testing, name, key)
    response = testing._ClaimSetup.response
    assert response.__defaults__ is not None
    monkeypatch.setattr(response, "__defaults__", (EVM_KEYS["BOB"], *response.__defaults__[1:]))
    made: list[Ledger] = []

    async def factory(clock: Callable[[], int], *, dev: bool = True) -> Ledger:
        ledger = await EvmLedger.deploy(chain, DEPLOYER, dev=dev, time_unit_us=1, clock=clock)
        made.append(ledger)
        return ledger

    return factory, made


@pytest.mark.slow
@pytest.mark.parametrize(("name", "case"), EVM_CASES)
async def test_anvil_ledger_conformance(anvil_factory: Any, name: str, case: Any) -> None:
    factory, made = anvil_factory
    await case(factory)
    assert made


async def test_paid_call_and_slash_on_anvil(chain: Web3Chain) -> None:
    """Ed25519 identities settle with their derived keys: bind, pay, serve, redeem, claim."""
    clock = ManualClock()
    alice, bob = EvmKey.derive(ALICE), EvmKey.derive(BOB)
    for key in (alice, bob):
        chain.fund(key.address)
    L = await EvmLedger.deploy(chain, DEPLOYER, dev=True, time_unit_us=1, clock=clock)
    # each peer's hello binds its PeerID key and its settlement account both ways
    hello_a = Hello.create(ALICE, ledger=L.ledger_id)
    hello_b = Hello.create(BOB, ledger=L.ledger_id)
    check_signed_by(hello_a, ALICE.public, L.ledger_id)
    check_signed_by(hello_b, BOB.public, L.ledger_id)
    assert (hello_a.account, hello_b.account) == (alice.account, bob.account)
    # money in: a dev mint for ALICE, a token deposit for BOB (approve + deposit)
    await L.mint(ALICE, alice.account, 10 * TOKEN)
    await L.mint(BOB, bob.account, 20 * TOKEN)
    await L.withdraw(BOB, 5 * TOKEN)  # tokens out to BOB's address ...
    await L.deposit(BOB, 5 * TOKEN)  # ... and back in
    await L.stake(BOB, 10 * TOKEN, 3 * TOKEN, 10_000)
    cid = await L.open_channel(ALICE, hello_b.account, TOKEN, 5_000)
    # a paid call: the request is the voucher (EIP-712 signed by ALICE's settlement key)
    price = 10**21
    req1 = Request.create(
        ALICE,
        ledger=L.ledger_id,
        channel=cid,
        n=1,
        paid=price,
        price=price,
        service="echo",
        body=b"ping",
        deadline=clock.ms + 1_000,
    )
    assert len(req1.signature) == 65 and req1.verify(hello_a.account)
    assert not req1.verify(ALICE.public)
    resp1 = Response.create(BOB, request=req1, status="OK", price=price, spent=price, body=b"ping")
    assert resp1.verify(hello_b.account)
    assert await L.redeem(BOB, req1, resp1.spent) == price
    # a second paid request that BOB never answers: ALICE claims, BOB is slashed
    req2 = Request.create(
        ALICE,
        ledger=L.ledger_id,
        channel=cid,
        n=2,
        paid=2 * price,
        price=price,
        service="echo",
        body=b"ping2",
        deadline=clock.ms + 1_000,
    )
    clock.ms = req2.deadline
    with pytest.raises(SettlementError) as refused:
        await L.file_claim(ALICE, req2)
    assert refused.value.code is ErrorCode.DEADLINE_NOT_PASSED
    clock.ms = req2.deadline + 1
    claim_id = await L.file_claim(ALICE, req2)
    assert claim_id == req2.hash  # the contract computed BLAKE2b of the CBOR signing bytes
    claim = await L.claim(claim_id)
    assert claim is not None and claim.request_frame == req2.to_frame()
    clock.ms = claim.window_ends + 1
    alice_before = await L.balance(alice.account)
    await L.resolve_claim(ALICE, claim_id)
    claim = await L.claim(claim_id)
    assert claim is not None and claim.state is ClaimState.UPHELD and claim.slashed == 3 * TOKEN
    bond = L.params.claim_bond
    assert await L.balance(alice.account) == alice_before + 3 * TOKEN // 2 + bond
    st = await L.stake_of(bob.account)
    assert st is not None and st.amount == 7 * TOKEN
    # a third request, answered in time: DELIVERED, BOB keeps its stake, the bond goes back
    req3 = Request.create(
        ALICE,
        ledger=L.ledger_id,
        channel=cid,
        n=3,
        paid=3 * price,
        price=price,
        service="echo",
        body=b"ping3",
        deadline=clock.ms + 10,
    )
    clock.ms = req3.deadline + 1
    claim3 = await L.file_claim(ALICE, req3)
    resp3 = Response.create(
        BOB, request=req3, status="OK", price=price, spent=2 * price, body=b"pong"
    )
    await L.answer_claim(BOB, claim3, resp3)
    c3 = await L.claim(claim3)
    assert (
        c3 is not None
        and c3.state is ClaimState.DELIVERED
        and c3.response_frame == resp3.to_frame()
    )
    # BOB closes with the best voucher, capped at what it charged
    assert await L.payee_close(BOB, cid, req3, 2 * price) == price
    ch = await L.channel(cid)
    assert ch is not None and ch.state is ChannelState.CLOSED and ch.redeemed == 2 * price
    totals = await L.totals()
    assert totals.conserved and totals.burnt == 3 * TOKEN - 3 * TOKEN // 2
    kinds = [e.kind for e in await L.events()]
    assert kinds.count("Redeemed") == 2 and "Slashed" in kinds and "ClaimAnswered" in kinds
    # a second ledger object on the same contract rebuilds the same events from the logs
    other = await EvmLedger.connect(chain, L.address)
    assert await other.events() == await L.events()
    await other.aclose()
    await L.aclose()
