"""Attack round 48: since a1757b4 a provider reads every claim against it at the LATEST
block only (`Watcher._read_claim`: the answer task, the rescan, `_claimed_requests`). An
endpoint that lies about `latest` alone (`claims(id)` at latest shows no claim) keeps every
answer back, though its readings at head - k show the claim OPEN for the whole window: an
honest provider is slashed (UPHELD). On 0e3597b (claims read at head - k) the same endpoint
cost nothing once the ClaimFiled event was k deep. k = 3, a block every 0.3 s, a 20 s window.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import trio

pytest.importorskip("web3", reason="web3 not installed: pip install -e '.[dev]'")

from p2pay import testing
from p2pay.core.errors import SettlementError
from p2pay.core.messages import Request
from p2pay.core.settlement import ClaimState
from p2pay.ledger.evm import EvmLedger, Web3Chain
from p2pay.ledger.memory import wall_clock_ms
from p2pay.node import Call, NodeConfig, open_node

pytestmark = pytest.mark.trio

DEPLOYER, EVM_KEYS = testing.evm_test_keys()
A, B = EVM_KEYS["ALICE"], EVM_KEYS["BOB"]
TOKEN, PRICE, K = 10**24, 10**18, 3
FAST = NodeConfig(watch_interval=0.1, min_challenge_ms=50, default_timeout=5.0)
PARAMS = {
    "claim_bond": 10**18,
    "min_claim_window_ms": 50,
    "min_challenge_ms": 50,
    "max_deadline_horizon_ms": 60_000,
}


class _NoClaimAtLatest(Web3Chain):
    selector = b""

    def _rpc(self, method: str, params: list[object]) -> object:  # type: ignore[override]
        out = super()._rpc(method, params)  # type: ignore[arg-type]
        if (
            method == "eth_call"
            and params[1] == "latest"
            and params[0]["data"][2:10] == self.selector.hex()  # type: ignore[index]
            and isinstance(out, str)
        ):
            raw = bytearray(bytes.fromhex(out[2:]))
            raw[320:352] = bytes(32)  # state 0: no such claim
            return "0x" + raw.hex()
        return out


async def echo(call: Call) -> bytes:
    return call.body


async def test_a_latest_reading_that_hides_a_claim_does_not_get_it_upheld(
    chain: Web3Chain, anvil_url: str
) -> None:
    ledger = await EvmLedger.deploy(
        chain, DEPLOYER, dev=True, time_unit_us=1, clock=wall_clock_ms, **PARAMS
    )
    for key in (A, B):
        await ledger.mint(key, key.account, 10 * TOKEN)
    await ledger.stake(B, 5 * TOKEN, TOKEN, 20_000)
    channel = await ledger.open_channel(A, B.account, 10 * PRICE, 60_000)
    chain._rpc("anvil_mine", [hex(K + 1)])
    lying = _NoClaimAtLatest(anvil_url, timed=True, timeout_s=30)
    lying.selector = ledger._abi.calldata("claims", [b"\0" * 32])[:4]
    bob_ledger = await EvmLedger.connect(
        lying, ledger.address, clock=wall_clock_ms, confirmations=K
    )
    stop = threading.Event()

    def mine() -> None:
        while not stop.wait(0.3):
            chain._rpc("anvil_mine", ["0x1"])

    miner = threading.Thread(target=mine, daemon=True)
    miner.start()
    try:
        async with open_node(key=testing.BOB, ledger=bob_ledger, config=FAST) as bob:
            bob.serve("echo", echo, price=PRICE)
            request = Request.create(
                testing.ALICE,
                ledger=ledger.ledger_id,
                channel=channel,
                n=1,
                paid=PRICE,
                price=PRICE,
                service="echo",
                body=b"claimed",
                deadline=await ledger.now() - 1,
            )
            claim_id = await ledger.file_claim(A, request)
            with trio.fail_after(60):
                while True:
                    claim = await ledger.claim(claim_id)
                    assert claim is not None
                    if claim.state is not ClaimState.OPEN:
                        break
                    if await ledger.now() > claim.window_ends:
                        with contextlib.suppress(SettlementError):
                            await ledger.resolve_claim(A, claim_id)
                    await trio.sleep(0.1)
            seen = await bob_ledger.claim(claim_id)  # at head - k: the truth
            print(
                f"outcome {claim.state.name}, slashed {claim.slashed}; bob's head-k read: "
                f"{seen and seen.state.name}; answers {bob.counters.claims_answered}"
            )
            assert claim.state is ClaimState.DELIVERED and claim.slashed == 0, claim.state
    finally:
        stop.set()
        await trio.to_thread.run_sync(miner.join, 10.0)
        await bob_ledger.aclose()
        await ledger.aclose()
