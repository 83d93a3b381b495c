"""What the tests of an EVM ledger's `confirmations` share (settlement.md 10,
"Confirmations"; attack rounds 47 and 48), on anvil: a contract deployed with ALICE and BOB
minted, readers attached with confirmations, blocks mined by hand or by a thread, a claim
for a request ALICE never sent (a provider serves it through the claim, DELIVERED), and the
bounded waits for a claim's outcome, for calls a payee serves once it sees the channel, and
for a redeem during a close. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from lying_rpc import withheld_request

from p2pay import testing
from p2pay.core.errors import P2payError, SettlementError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request
from p2pay.core.settlement import Channel, ChannelState, Claim, ClaimState
from p2pay.ledger.evm import EvmLedger, RpcErrorReply, Web3Chain
from p2pay.ledger.memory import wall_clock_ms
from p2pay.node import Call, Node, NodeConfig, open_node

DEPLOYER, EVM_KEYS = testing.evm_test_keys()
A, B = EVM_KEYS["ALICE"], EVM_KEYS["BOB"]
TOKEN = 10**24
PRICE = 10**18
FAST = NodeConfig(watch_interval=0.1, min_challenge_ms=50, default_timeout=5.0)
PARAMS = {
    "claim_bond": 10**18,
    "min_claim_window_ms": 50,
    "min_challenge_ms": 50,
    "max_deadline_horizon_ms": 60_000,
}


def mine(chain: Web3Chain, blocks: int) -> None:
    chain._rpc("anvil_mine", [hex(blocks)])


async def deployed(chain: Web3Chain) -> EvmLedger:
    """A fresh contract (k = 0), ALICE and BOB minted 10 tokens each."""
    for key in (DEPLOYER, A, B):
        chain.fund(key.address)
    made = await EvmLedger.deploy(
        chain, DEPLOYER, dev=True, time_unit_us=1, clock=wall_clock_ms, **PARAMS
    )
    for key in (A, B):
        await made.mint(key, key.account, 10 * TOKEN)
    return made


async def attached(
    anvil_url: str, to: EvmLedger, confirmations: int, chain: Web3Chain | None = None
) -> EvmLedger:
    """Another reader of `to`'s contract, on a chain object of its own (or `chain`)."""
    return await EvmLedger.connect(
        chain or Web3Chain(anvil_url, timed=True, timeout_s=30),
        to.address,
        clock=wall_clock_ms,
        confirmations=confirmations,
    )


async def echo(call: Call) -> bytes:
    return call.body


@contextlib.asynccontextmanager
async def miner(anvil_url: str, every: float = 0.1) -> AsyncIterator[None]:
    """A block every `every` s while the block runs, as a live chain makes them."""
    chain = Web3Chain(anvil_url, timed=True, timeout_s=30)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            mine(chain, 1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        await trio.to_thread.run_sync(thread.join, 10.0)
        assert not thread.is_alive()


async def never_sent(ledger: EvmLedger, channel: bytes) -> Request:
    """ALICE's request 1 on `channel` to BOB, its deadline passed: claimable at once."""
    return await withheld_request(ledger, channel, PRICE)


async def voucher(
    ledger: EvmLedger,
    channel: bytes,
    paid: int,
    *,
    signer: Keypair = testing.ALICE,
    deadline_in_ms: int = 60_000,
) -> Request:
    """Request 1 on `channel` (echo ``x`` at `PRICE`, `paid` in all), signed by `signer`,
    its deadline `deadline_in_ms` from the ledger's now (-1: just past, claimable)."""
    return Request.create(
        signer,
        ledger=ledger.ledger_id,
        channel=channel,
        n=1,
        paid=paid,
        price=PRICE,
        service="echo",
        body=b"x",
        deadline=await ledger.now() + deadline_in_ms,
    )


def first_block_of(chain: Web3Chain, ledger: EvmLedger) -> int:
    """The block of `ledger`'s contract's first log (its deployment's): no channel yet."""
    found = chain._rpc(
        "eth_getLogs", [{"address": "0x" + ledger.address.hex(), "fromBlock": "0x0"}]
    )
    return int(found[0]["blockNumber"], 16)


class StaleLatest(Web3Chain):
    """Once `frozen` is set, every `eth_call` and `eth_estimateGas` at `latest` is answered
    as of block `frozen` (a backend whose latest state is stale, or a lie; attack rounds 49
    to 52); with `estimate` set, every estimate is that; with `fail_next_read` set, the
    next `eth_call` at a block number fails (an error reply). Every other reply (the head,
    reads at a block number, logs, sends, receipts) is true. Counts its sends."""

    frozen: int | None = None
    estimate: int | None = None
    fail_next_read = False
    sends = 0

    def _rpc(self, method: str, params: list[Any]) -> Any:
        if method == "eth_sendRawTransaction":
            self.sends += 1
        if method == "eth_estimateGas" and self.estimate is not None:
            return hex(self.estimate)
        if method == "eth_call" and params[1] != "latest" and self.fail_next_read:
            self.fail_next_read = False
            raise RpcErrorReply({"code": -32000, "message": "header not found"})
        if self.frozen is not None and method in ("eth_call", "eth_estimateGas"):
            if params[1] == "latest":
                params = [params[0], hex(self.frozen), *params[2:]]
        return super()._rpc(method, params)


async def outcome(ledger: EvmLedger, claim_id: bytes, timeout: float = 60.0) -> Claim:
    """The claim once it is no longer OPEN; ALICE resolves it once its window ends."""
    with trio.fail_after(timeout):
        while True:
            claim = await ledger.claim(claim_id)
            assert claim is not None
            if claim.state is not ClaimState.OPEN:
                return claim
            if await ledger.now() > claim.window_ends:
                with contextlib.suppress(SettlementError):
                    await ledger.resolve_claim(A, claim_id)
            await trio.sleep(0.1)


async def served(alice: Node, bob: Node, calls: int = 3) -> None:
    """ALICE's `calls` echo calls to BOB, each tried again until he serves it (he refuses
    them, UNKNOWN_CHANNEL, until his ledger shows the channel; each refused call still
    takes its price of ALICE's voucher range, so her deposit must cover them too)."""
    with trio.fail_after(60):
        done = 0
        while done < calls:
            try:
                await alice.call(bob.peer_id, "echo", b"x", max_price=PRICE)
                done += 1
            except P2payError:
                await trio.sleep(0.5)


async def redeemed_or_closed(ledger: EvmLedger, channel: bytes, amount: int) -> Channel:
    """The channel once `amount` is redeemed on it, or once its close ended first."""
    with trio.fail_after(90):
        while True:
            shown = await ledger.channel(channel)
            assert shown is not None
            if shown.redeemed == amount or shown.state is ChannelState.CLOSED:
                return shown
            await trio.sleep(0.1)


class LatestViewLie(Web3Chain):
    """An endpoint whose reply to the `eth_call` of one view at the latest block is
    rewritten in place by `lie` (its bytes), once `lie` is set; every other reply is true.
    `aim` names the view."""

    selector = b""
    lie: Callable[[bytearray], None] | None = None

    def aim(self, ledger: EvmLedger, view: str) -> None:
        self.selector = ledger._abi.calldata(view, [b"\0" * 32])[:4]

    def _rpc(self, method: str, params: list[Any]) -> Any:
        out = super()._rpc(method, params)
        if (
            self.lie is not None
            and method == "eth_call"
            and params[1] == "latest"
            and params[0]["data"][2:10] == self.selector.hex()
            and isinstance(out, str)
        ):
            raw = bytearray(bytes.fromhex(out[2:]))
            self.lie(raw)
            return "0x" + raw.hex()
        return out


async def closed_after_three_calls(
    chain: Web3Chain,
    anvil_url: str,
    k: int,
    bob_chain: Web3Chain,
    fault: Callable[[EvmLedger], None],
    every: float = 0.3,
) -> Channel:
    """ALICE (k = 0) opens a channel to BOB (k confirmations, reading through
    `bob_chain`) on a chain making a block every `every` s, and is served 3 calls; then
    `fault` (given ALICE's ledger) makes BOB's endpoint misbehave, and ALICE closes: the
    channel once the 3 calls are redeemed, or once the close ended first."""
    alice_ledger = await deployed(chain)
    mine(chain, k + 1)
    bob_ledger = await attached(anvil_url, alice_ledger, k, bob_chain)
    try:
        async with (
            miner(anvil_url, every),
            open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob,
            open_node(key=testing.ALICE, ledger=alice_ledger, config=FAST) as alice,
        ):
            bob.serve("echo", echo, price=PRICE)
            info = await alice.open_channel(bob.addrs[0], deposit=100 * PRICE, challenge_ms=60_000)
            await served(alice, bob)
            fault(alice_ledger)
            await alice.close_channel(info.channel)
            return await redeemed_or_closed(alice_ledger, info.channel, 3 * PRICE)
    finally:
        await bob_ledger.aclose()
        await alice_ledger.aclose()
