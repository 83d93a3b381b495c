"""Two real nodes (libp2p on 127.0.0.1) settling through the Settlement contract.

On an EVM ledger a node's account is its derived secp256k1 address, not its Ed25519 key:
the hello binds the two both ways (specs/protocol.md §9 rule 4, INV-22). These tests run the
same flows on the in-process EVM (titanoboa) and on anvil (skipped without it): open a
channel to a PeerID, pay per call with EIP-712 vouchers, claim against a provider that drops
a paid request and see it slashed, close and redeem, and check conservation on chain. A peer
that names another's account in its hello is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

pytest.importorskip("boa", reason="titanoboa not installed: pip install -e '.[dev]'")

from p2pay import testing
from p2pay.core.errors import ErrorCode
from p2pay.core.messages import Hello, Refusal, Response, decode_frame
from p2pay.core.settlement import ChannelState, ClaimState
from p2pay.ledger.evm import BoaChain, EvmLedger
from p2pay.ledger.memory import wall_clock_ms
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import Behaviour, Call, CallTimeout, Node, NodeConfig, open_node

# these tests use their own EVM (BoaChain) or anvil, never boa's global env: titanoboa's
# pytest plugin must not anchor it around their fixtures (it cannot unwind a fixture that
# is requested dynamically, like `chain` below)
pytestmark = pytest.mark.ignore_isolation

ALICE, BOB, MALLORY = testing.ALICE, testing.BOB, testing.MALLORY
DEPLOYER, EVM_KEYS = testing.evm_test_keys()
TOKEN = 10**24
PRICE = 10**18
FAST = NodeConfig(
    watch_interval=0.05,
    claim_grace_ms=50,
    redeem_threshold=10**30,  # redeem only when a duty forces it (close, challenge)
    min_challenge_ms=50,  # the tests' channels close in well under a second
    default_timeout=5.0,
)
PARAMS = {
    "claim_bond": 10**18,
    "min_claim_window_ms": 50,
    "min_challenge_ms": 50,
    "max_deadline_horizon_ms": 60_000,
}


@pytest.fixture(params=["boa", "anvil"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[EvmLedger]:
    """A fresh dev Settlement contract whose block times follow the wall clock (ms)."""
    chain: Any = BoaChain() if request.param == "boa" else request.getfixturevalue("chain")
    if request.param == "anvil":
        for key in (DEPLOYER, *EVM_KEYS.values()):
            chain.fund(key.address)
    made = await EvmLedger.deploy(
        chain, DEPLOYER, dev=True, time_unit_us=1, clock=wall_clock_ms, **PARAMS
    )
    for name in ("ALICE", "BOB"):
        await made.mint(EVM_KEYS[name], EVM_KEYS[name].account, 10 * TOKEN)
    try:
        yield made
    finally:
        await made.aclose()


async def echo(call: Call) -> bytes:
    return call.body


class Dropper(Behaviour):
    answers_claims = False

    def drop(self, call: Call) -> bool:
        return True


@asynccontextmanager
async def pair(
    ledger: EvmLedger, behaviour: Behaviour | None = None
) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        open_node(key=BOB, ledger=ledger, config=FAST, behaviour=behaviour) as bob,
        open_node(key=ALICE, ledger=ledger, config=FAST) as alice,
    ):
        bob.serve("echo", echo, price=PRICE)
        yield alice, bob


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.05)


async def test_two_nodes_pay_close_and_redeem_on_the_contract(ledger: EvmLedger) -> None:
    alice_acct, bob_acct = EVM_KEYS["ALICE"].account, EVM_KEYS["BOB"].account
    async with pair(ledger) as (alice, bob):
        assert (alice.account, bob.account) == (alice_acct, bob_acct)
        # opening needs the payee's account: the node learns it from the payee's hello
        info = await alice.open_channel(bob.addrs[0], deposit=TOKEN, challenge_ms=300)
        assert info.peer == bob.peer_id
        on_chain = await ledger.channel(info.channel)
        assert on_chain is not None
        assert (on_chain.payer, on_chain.payee) == (alice_acct, bob_acct)
        for i in range(5):
            result = await alice.call(bob.peer_id, "echo", b"hi %d" % i, max_price=PRICE)
            assert result.body == b"hi %d" % i and result.price == PRICE
            assert len(result.receipt.signature) == 65 and result.receipt.verify(bob_acct)
        assert result.spent == 5 * PRICE
        payee = bob.payee_channels[info.channel]
        assert payee.best is not None and payee.best.verify(alice_acct)
        assert [c.peer for c in bob.channels()] == [alice.peer_id]
        # the payer closes; the payee's watcher redeems during the challenge; it finalizes
        await alice.close_channel(info.channel)

        async def closed() -> bool:
            ch = await ledger.channel(info.channel)
            return ch is not None and ch.state is ChannelState.CLOSED

        await wait_until(closed)
    ch = await ledger.channel(info.channel)
    assert ch is not None and ch.redeemed == 5 * PRICE
    assert await ledger.balance(bob_acct) == 10 * TOKEN + 5 * PRICE
    assert await ledger.balance(alice_acct) == 10 * TOKEN - 5 * PRICE
    assert (await ledger.totals()).conserved


async def test_a_dropping_provider_is_slashed_on_the_contract(ledger: EvmLedger) -> None:
    alice_acct, bob_acct = EVM_KEYS["ALICE"].account, EVM_KEYS["BOB"].account
    stake, penalty = TOKEN, TOKEN // 10
    async with pair(ledger, behaviour=Dropper()) as (alice, bob):
        await bob.stake(stake, penalty=penalty, claim_window_ms=300)
        hello = await alice.connect(bob.addrs[0])
        assert hello.account == bob_acct and hello.stake is not None
        await alice.open_channel(bob.peer_id, deposit=TOKEN)
        with pytest.raises(CallTimeout):
            await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE, timeout=0.5)

        async def upheld() -> bool:
            claims = await ledger.claims_of(alice_acct)
            return bool(claims) and claims[0].state is ClaimState.UPHELD

        await wait_until(upheld, timeout=30)
        await wait_until(lambda: alice.counters.claims_won == 1)
    stake_now = await ledger.stake_of(bob_acct)
    assert stake_now is not None and stake_now.amount == stake - penalty
    assert (await ledger.totals()).conserved


async def test_a_hello_naming_another_peers_account_is_refused(ledger: EvmLedger) -> None:
    async with pair(ledger) as (alice, bob):
        genuine = alice.hello()
        assert genuine.account == EVM_KEYS["ALICE"].account

        async def ignore(stream: Any) -> None:
            await stream.aclose()

        # MALLORY replays ALICE's account and binding proof under its own PeerID key
        unsigned = Hello(
            version=genuine.version,
            ledger=genuine.ledger,
            services=(),
            stake=None,
            max_in_flight=1,
            max_frame=genuine.max_frame,
            account=genuine.account,
            account_proof=genuine.account_proof,
            deadline_horizon=genuine.deadline_horizon,
        )
        forged = unsigned.with_signature(MALLORY.sign(unsigned.signing_bytes))
        async with open_libp2p_transport(MALLORY, ignore) as mallory:
            stream = await mallory.connect(bob.addrs[0])
            with trio.fail_after(30):
                await stream.send(forged.to_frame())
                answer = decode_frame(await stream.receive())
            await stream.reset()
        assert isinstance(answer, Refusal) and answer.code is ErrorCode.UNAUTHORIZED
        assert bob.counters.refused[ErrorCode.UNAUTHORIZED.value] == 1


async def test_a_redeemed_refused_slice_is_clawed_back_on_the_contract(ledger: EvmLedger) -> None:
    """Attack N1 on chain: BOB raises his price, so ALICE's next request is refused with a
    signed PAYMENT_REQUIRED and its slice is never reused; BOB then redeems the full best
    voucher, refused slice included. ALICE's watcher posts the refusal (file_claim_refused):
    REFUSED at once, no bond, the slice clawed back from BOB's stake."""
    alice_acct, bob_acct = EVM_KEYS["ALICE"].account, EVM_KEYS["BOB"].account
    stake = TOKEN
    async with pair(ledger) as (alice, bob):
        await bob.stake(stake, penalty=TOKEN // 10, claim_window_ms=30_000)
        info = await alice.open_channel(bob.addrs[0], deposit=TOKEN)
        await alice.call(bob.peer_id, "echo", b"first", max_price=PRICE)
        bob.serve("echo", echo, price=2 * PRICE)  # ALICE's next request is refused once
        result = await alice.call(bob.peer_id, "echo", b"second", max_price=10 * PRICE)
        assert result.price == 2 * PRICE
        payee = bob.payee_channels[info.channel]
        voucher = payee.verified_voucher()
        assert voucher is not None and voucher.paid == payee.spent + PRICE  # refused slice
        assert await ledger.redeem(EVM_KEYS["BOB"], voucher) == voucher.paid  # the theft

        async def refunded() -> bool:
            ch = await ledger.channel(info.channel)
            return ch is not None and ch.redeemed - ch.clawed == payee.spent

        await wait_until(refunded, timeout=30)
    ch = await ledger.channel(info.channel)
    assert ch is not None and (ch.clawed, ch.refunded) == (PRICE, PRICE)
    claims = await ledger.claims_of(alice_acct)
    assert [(c.state, c.bond, c.clawed) for c in claims] == [(ClaimState.REFUSED, 0, PRICE)]
    refusal = decode_frame(claims[0].response_frame)  # the refusal, rebuilt from the log
    assert isinstance(refusal, Response) and refusal.verify(bob_acct)
    assert (refusal.status, refusal.price) == (ErrorCode.PAYMENT_REQUIRED.value, 0)
    stake_now = await ledger.stake_of(bob_acct)
    assert stake_now is not None and stake_now.amount == stake - PRICE
    assert (await ledger.totals()).conserved
