"""An EVM ledger's `confirmations` (settlement.md 10, "Confirmations"), on anvil.

With ``confirmations = k`` the ledger shows the chain as of block ``head - k``: events, and
every read (`channel`, `stake_of`, `claim`, `balance`, `totals`). Before, only the events
waited for k blocks and every read was of the latest block: a payee gave credit on a
deposit one block deep, and a reorganisation that dropped the deposit (here `evm_revert`)
left it with the charges of calls it had served and nothing to redeem them from. The CLI
could not set k at all. A payer's `open_channel` and `top_up` now wait (bounded) until the
ledger shows their deposit, so its first call is not refused by a payee that cannot see it
yet. Every wait is bounded; nothing asserts on timing. Without anvil these tests skip.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from confirmations_support import (
    FAST,
    PRICE,
    TOKEN,
    A,
    B,
    attached,
    deployed,
    echo,
    mine,
    miner,
    never_sent,
    outcome,
    redeemed_or_closed,
)

from p2pay import testing
from p2pay.core.errors import ErrorCode, LocalProtocolError, P2payError
from p2pay.core.settlement import ChannelState, ClaimState, Params
from p2pay.ledger.evm import BoaChain, ChainUnavailable, EvmLedger, RpcErrorReply, Web3Chain
from p2pay.node import open_node

pytestmark = pytest.mark.trio

K = 3


async def test_reads_show_a_state_only_once_it_is_k_blocks_deep(
    chain: Web3Chain, anvil_url: str
) -> None:
    now = await deployed(chain)
    deep = await attached(anvil_url, now, K)
    try:
        assert deep.confirmations == K and now.confirmations == 0
        with pytest.raises(ChainUnavailable, match="less than 3 blocks deep"):
            await deep.balance(A.account)  # the contract itself is not K blocks deep yet
        mine(chain, K)  # the mints are K blocks deep
        assert await deep.balance(A.account) == 10 * TOKEN
        channel = await now.open_channel(A, B.account, TOKEN, 1_000)
        assert (await now.channel(channel)) is not None  # k = 0: the latest block
        assert await now.balance(A.account) == 9 * TOKEN
        for _ in range(K - 1):
            assert await deep.channel(channel) is None
            assert await deep.balance(A.account) == 10 * TOKEN  # the deposit not taken yet
            mine(chain, 1)
        assert await deep.channel(channel) is None
        mine(chain, 1)  # now K blocks deep
        shown = await deep.channel(channel)
        assert shown is not None and shown.deposit == TOKEN
        assert await deep.balance(A.account) == 9 * TOKEN
        assert (await deep.totals()) == (await now.totals())
    finally:
        await deep.aclose()
        await now.aclose()


async def test_a_payee_gives_no_credit_on_a_deposit_a_reorganisation_drops(
    chain: Web3Chain, anvil_url: str
) -> None:
    """ALICE (k = 0) opens a channel to BOB (k = 3) and calls at once; then the block
    holding her deposit is dropped (`evm_revert`, as a reorganisation drops it). On the old
    code BOB read the channel at the latest block, served the call and held a charge on a
    channel that no longer exists; now he refuses it: he cannot see the deposit yet."""
    ledger = await deployed(chain)
    bob_ledger = await attached(anvil_url, ledger, K)
    mine(chain, K)
    try:
        async with (
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
            open_node(key=testing.ALICE, ledger=ledger, config=FAST) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            before = chain._rpc("evm_snapshot", [])
            info = await alice.open_channel(bob.addrs[0], deposit=TOKEN, challenge_ms=300)
            with pytest.raises(P2payError) as refused:
                await alice.call(bob.peer_id, "echo", b"now", max_price=PRICE)
            assert refused.value.code is ErrorCode.UNKNOWN_CHANNEL
            assert info.channel not in bob.payee_channels
            chain._rpc("evm_revert", [before])  # the reorganisation: the deposit is gone
            mine(chain, K + 1)
            assert await ledger.channel(info.channel) is None
            with pytest.raises(P2payError) as again:
                await alice.call(bob.peer_id, "echo", b"later", max_price=PRICE)
            assert again.value.code is ErrorCode.UNKNOWN_CHANNEL
            assert info.channel not in bob.payee_channels  # served nothing, owed nothing
            assert bob.counters.redeemed == 0
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()


async def test_open_channel_and_top_up_return_once_the_ledger_shows_the_deposit(
    chain: Web3Chain, anvil_url: str
) -> None:
    """Both nodes read with k = 3 on a chain that mines a block every 0.1 s: ALICE's first
    call on the channel she opened, and a call beyond the deposit she topped up, are
    served at once (without the wait BOB refused them: UNKNOWN_CHANNEL, then
    INSUFFICIENT_DEPOSIT)."""
    made = await deployed(chain)
    ledger = await attached(anvil_url, made, K)
    await made.aclose()
    mine(chain, K)  # the contract and the mints are K blocks deep
    try:
        async with (
            miner(anvil_url),
            open_node(key=testing.BOB, ledger=ledger, config=FAST) as bob,
            open_node(key=testing.ALICE, ledger=ledger, config=FAST) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            with trio.fail_after(60):
                info = await alice.open_channel(bob.addrs[0], deposit=PRICE, challenge_ms=300)
            shown = await ledger.channel(info.channel)
            assert shown is not None and shown.deposit == PRICE
            result = await alice.call(bob.peer_id, "echo", b"first", max_price=PRICE)
            assert result.body == b"first"
            with trio.fail_after(60):
                await alice.top_up(info.channel, PRICE)
            shown = await ledger.channel(info.channel)
            assert shown is not None and shown.deposit == 2 * PRICE
            result = await alice.call(bob.peer_id, "echo", b"second", max_price=PRICE)
            assert result.body == b"second"
    finally:
        await ledger.aclose()


async def test_a_payee_reading_k_blocks_late_still_redeems_before_a_close_ends(
    chain: Web3Chain, anvil_url: str
) -> None:
    """Attack round 47: BOB (k = 3) serves ALICE 3 calls, and she closes (a 60 s challenge
    period); no block is mined but the close's own and what the nodes send, so BOB's
    ledger, 3 blocks behind, does not show the close before it ends. On 8b6ca87 his
    watcher's look for closes (C-8, `_read_owed_channels`) read at ``head - 3`` too: the
    close ended and the 3 charges went back to ALICE. Now that look reads the latest block:
    he redeems while the close runs."""
    ledger = await deployed(chain)
    bob_ledger = await attached(anvil_url, ledger, K)
    mine(chain, K)
    try:
        async with (
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
            open_node(key=testing.ALICE, ledger=ledger, config=FAST) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            info = await alice.open_channel(bob.addrs[0], deposit=TOKEN, challenge_ms=60_000)
            mine(chain, K)  # BOB sees the channel
            before = await ledger.balance(B.account)
            for i in range(3):
                result = await alice.call(bob.peer_id, "echo", b"%d" % i, max_price=PRICE)
                assert result.body == b"%d" % i
            await alice.close_channel(info.channel)
            shown = await redeemed_or_closed(ledger, info.channel, 3 * PRICE)
            assert shown.redeemed == 3 * PRICE and shown.state is ChannelState.CLOSING
            assert await ledger.balance(B.account) - before == 3 * PRICE
            with trio.fail_after(30):  # his redeem's receipt may still be on its way
                while bob.counters.redeemed != 3 * PRICE:
                    await trio.sleep(0.05)
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()


async def test_a_provider_reading_k_blocks_late_answers_a_claim_within_its_window(
    chain: Web3Chain, anvil_url: str
) -> None:
    """Attack round 47: ALICE files a claim against BOB (k = 3, staked with a 20 s claim
    window) for a request she never sent him; no block is mined but the claim's and its
    answer's, so BOB's ledger, 3 blocks behind, shows neither the ClaimFiled event nor the
    claim before the window ends. On 8b6ca87 he learnt of claims from that event only: the
    claim ended unanswered, UPHELD, his stake slashed. Now he reads the claims filed against
    him in the blocks not confirmed yet, and the claim itself at the latest block: he
    serves the request through the claim and answers it, DELIVERED."""
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    bob_ledger = await attached(anvil_url, ledger, K)
    try:
        async with open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob:
            bob.serve("echo", echo, price=PRICE)
            request = await never_sent(ledger, channel)
            claim_id = await ledger.file_claim(A, request)
            claim = await outcome(ledger, claim_id)
            assert claim.state is ClaimState.DELIVERED and claim.slashed == 0
            stake = await ledger.stake_of(B.account)
            assert stake is not None and stake.amount == 5 * TOKEN
            # his count moves once his answer's call returns (its receipt, then a sync),
            # which can be after ALICE's ledger shows the claim DELIVERED
            with trio.fail_after(30):
                while bob.counters.claims_answered < 1:
                    await trio.sleep(0.05)
            assert bob.counters.claims_answered == 1
    finally:
        await bob_ledger.aclose()
        await ledger.aclose()


async def test_claims_in_unconfirmed_blocks_are_the_readers_own_and_keep_only_their_frames(
    chain: Web3Chain, anvil_url: str
) -> None:
    """`claims_filed_against` returns the ClaimFiled events naming the account in the
    blocks not confirmed yet, and keeps the frames of those claims only: attack round 48
    had another account's reader hold the frames of 40 claims against BOB (1.3 MB), and
    keep them after the index had them."""
    ledger = await deployed(chain)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    mine(chain, K + 1)
    bob_reader = await attached(anvil_url, ledger, K)
    alice_reader = await attached(anvil_url, ledger, K)
    try:
        request = await never_sent(ledger, channel)
        claim_id = await ledger.file_claim(A, request)
        (filed,) = await bob_reader.claims_filed_against(B.account)
        assert filed.kind == "ClaimFiled" and filed.seq == 0
        assert filed.fields["claim"] == claim_id and filed.fields["respondent"] == B.account
        assert set(bob_reader._tail_frames) == {claim_id}
        shown = await bob_reader.claim(claim_id, latest=True)
        assert shown is not None and shown.request_frame == request.to_frame()
        assert await bob_reader.claim(claim_id) is None  # not K blocks deep yet
        assert await alice_reader.claims_filed_against(A.account) == []
        assert alice_reader._tail_frames == {}  # not hers: nothing kept
        mine(chain, K)  # confirmed: in the index, out of the unconfirmed blocks
        assert await bob_reader.claims_filed_against(B.account) == []
        assert bob_reader._tail_frames == {}
        indexed = await bob_reader.claim(claim_id)
        assert indexed is not None and indexed.request_frame == request.to_frame()
    finally:
        await alice_reader.aclose()
        await bob_reader.aclose()
        await ledger.aclose()


async def test_a_read_the_endpoint_cannot_answer_is_chain_unavailable(
    chain: Web3Chain, anvil_url: str
) -> None:
    """A block the endpoint does not have, or whose state it pruned (not an archive node),
    is the endpoint's failure, to be read again: never a refusal of the contract."""

    class Pruned(Web3Chain):
        def _rpc(self, method: str, params: list[Any]) -> Any:
            if method == "eth_call" and params[1] != "latest":
                raise RpcErrorReply({"code": -32000, "message": "missing trie node"})
            return super()._rpc(method, params)

    made = await deployed(chain)
    pruned = await EvmLedger.connect(
        Pruned(anvil_url, timed=True, timeout_s=30), made.address, confirmations=K
    )
    try:
        with pytest.raises(ChainUnavailable, match="missing trie node"):
            await pruned.channel(bytes(32))
        with pytest.raises(ChainUnavailable):
            await pruned.balance(A.account)
    finally:
        await pruned.aclose()
        await made.aclose()


async def test_confirmations_need_a_chain_that_reads_past_blocks() -> None:
    pytest.importorskip("boa", reason="titanoboa not installed: pip install -e '.[dev]'")
    params = Params(ledger_id=b"x", dev=True)
    with pytest.raises(LocalProtocolError, match="confirmations must be 0"):
        EvmLedger(BoaChain(), bytes(20), params, time_unit_us=1, confirmations=1)
    for bad in (-1, True, 1.5):
        with pytest.raises(LocalProtocolError, match="confirmations"):
            EvmLedger(BoaChain(), bytes(20), params, time_unit_us=1, confirmations=bad)  # type: ignore[arg-type]


async def test_the_clis_close_with_wait_finalizes_on_a_ledger_with_confirmations(
    chain: Web3Chain, anvil_url: str
) -> None:
    """Attack round 49: `p2pay channel close --wait` (`p2pay.cli.main.close_channel`) read
    the channel back at ``head - k`` after its own StartClose, saw it OPEN, and returned
    without waiting or finalizing; a second close failed CHALLENGE_PENDING. It now reads
    its own channel at the latest block: one close, waited and final. No block is mined
    but the close's own transactions, so the old code never saw the close."""
    from p2pay.cli.main import close_channel

    ledger = await deployed(chain)
    channel = await ledger.open_channel(A, B.account, TOKEN, 100)
    mine(chain, K + 1)
    alice_ledger = await attached(anvil_url, ledger, K)
    try:
        async with open_node(key=testing.ALICE, ledger=alice_ledger, config=FAST) as alice:
            with trio.fail_after(60):
                await close_channel(alice, channel, wait=True)
            shown = await ledger.channel(channel)
            assert shown is not None and shown.state is ChannelState.CLOSED
    finally:
        await alice_ledger.aclose()
        await ledger.aclose()
