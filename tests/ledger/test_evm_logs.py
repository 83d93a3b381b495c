"""Hostile and malformed logs never stop an EVM ledger reader (issue 14 items 1-2).

A reader rebuilds events, per-account channel and claim lists and claim frames from the
contract's logs. A log it cannot turn into a valid event or frame (text that is not UTF-8,
a claimed request with ``n = 0``, a layout that does not decode, an unknown event) must be
recorded (logged, counted in ``skipped_logs``), skipped, and the cursor must still move past
it: before, one such log (e.g. a claim filed with ``n = 0`` on the first contract) made every
sync raise, so ``channels_of`` and node start failed for good.

The logs are injected by a chain wrapper at the contract's address, in the blocks of real
transactions, as raw topics and data: exactly what `eth_getLogs` would return.
"""

from __future__ import annotations

import logging

import pytest
import trio

pytest.importorskip("boa", reason="titanoboa not installed: pip install -e '.[dev]'")
pytest.importorskip("eth_abi", reason="web3/eth-abi not installed: pip install -e '.[dev]'")

from eth_abi import encode

from p2pay import testing
from p2pay.core.evmsig import keccak256
from p2pay.core.messages import Request
from p2pay.core.settlement import ClaimState
from p2pay.ledger.evm import BoaChain, EvmLedger, Log
from p2pay.testing import ManualClock

pytestmark = pytest.mark.trio

DEPLOYER, KEYS = testing.evm_test_keys()
A, B = KEYS["ALICE"], KEYS["BOB"]
TOKEN = 10**24
VOUCHER_T = "(bytes,bytes32,uint64,uint256,uint256,string,bytes32,uint64,bytes)"


class HostileChain(BoaChain):
    """A BoaChain whose log reads also return `extra` logs (address set by the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.extra: list[Log] = []

    def logs(self, address: bytes, first: int, last: int) -> list[Log]:
        out = super().logs(address, first, last)
        out += [lg for lg in self.extra if lg.address == address and first <= lg.block <= last]
        out.sort(key=lambda lg: (lg.block, lg.index))
        return out


def topic(signature: str) -> bytes:
    return keccak256(signature.encode())


def hostile_logs(address: bytes, block: int, claim_id: bytes, channel: bytes) -> list[Log]:
    """One of each kind of log a reader must survive, all in `block`."""
    ledger = b"p2pay:evm:" + bytes(8) + address
    claim_topic = (claim_id,)
    zero_n = encode(
        [VOUCHER_T, "bytes"],
        [(ledger, channel, 0, 5, 5, "echo", bytes(32), 1, b"\x01" * 65), b"body"],
    )
    bad_text = encode(
        [VOUCHER_T, "bytes"],
        [(ledger, channel, 3, 5, 5, "x", bytes(32), 1, b"\x01" * 65), b"body"],
    ).replace(b"x" + bytes(31), b"\xff" + bytes(31))  # the service text becomes 0xff
    answered = encode(
        ["bytes32", "address", "address", "string", "string"]
        + ["uint256", "address"]
        + ["uint256"] * 3,
        [
            claim_id,
            "0x" + A.address.hex(),
            "0x" + B.address.hex(),
            "refused",
            "\u00e9",  # replaced below by two bytes that are not UTF-8
            1,
            "0x" + A.address.hex(),
            0,
            0,
            5,
        ],
    ).replace("\u00e9".encode() + bytes(30), b"\xc3\x28" + bytes(30))
    voucher_sig = f"RequestEvidence(bytes32,{VOUCHER_T},bytes)"
    conflict_sig = f"ConflictEvidence(bytes32,{VOUCHER_T})"
    answered_sig = (
        "ClaimAnswered(bytes32,address,address,string,string,uint256,address,uint256,uint256,"
        "uint256)"
    )
    filed_sig = (
        "ClaimFiled(bytes32,address,address,bytes32,uint64,uint64,uint256,uint256,uint256,"
        "uint256,uint256)"
    )
    filed_zero_n = encode(
        ["bytes32", "address", "address", "bytes32", "uint64", "uint64"] + ["uint256"] * 5,
        [
            b"\x07" * 32,
            "0x" + A.address.hex(),
            "0x" + B.address.hex(),
            channel,
            0,
            1,
            1,
            1,
            1,
            1,
            1,
        ],
    )
    return [
        # a claimed request with n = 0 (the first contract accepted such claims)
        Log(block, 1000, address, (topic(voucher_sig), *claim_topic), zero_n),
        # a request whose service is not UTF-8
        Log(block, 1001, address, (topic(voucher_sig), *claim_topic), bad_text),
        # evidence whose layout does not decode
        Log(block, 1002, address, (topic(conflict_sig), *claim_topic), b"\x00" * 7),
        # a settlement event with text that is not UTF-8
        Log(block, 1003, address, (topic(answered_sig),), answered),
        # a claim filed with n = 0
        Log(block, 1004, address, (topic(filed_sig),), filed_zero_n),
        # an event this reader does not know
        Log(block, 1005, address, (topic("Surprise(uint256)"),), encode(["uint256"], [1])),
    ]


async def test_hostile_logs_are_skipped_and_the_cursor_moves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain = HostileChain()
    clock = ManualClock()
    L = await EvmLedger.deploy(
        chain, DEPLOYER, dev=True, time_unit_us=1, clock=clock, min_claim_window_ms=100
    )
    await L.mint(A, A.account, 10 * TOKEN)
    await L.mint(B, B.account, 10 * TOKEN)
    await L.stake(B, TOKEN, TOKEN // 10, 1_000)
    cid = await L.open_channel(A, B.account, TOKEN, 1_000)
    req = Request.create(
        A,
        ledger=L.ledger_id,
        channel=cid,
        n=1,
        paid=100,
        price=100,
        service="echo",
        body=b"ping",
        deadline=clock.ms + 10,
    )
    clock.advance(11)
    claim_id = await L.file_claim(A, req)
    # the hostile logs sit in the block of the next transaction, around a real event
    chain.extra = hostile_logs(L.address, chain.head() + 1, claim_id, cid)
    fresh = await EvmLedger.connect(chain, L.address)  # a new reader indexes everything
    await L.mint(A, A.account, 1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="p2pay.ledger.evm"):
        channels = await fresh.channels_of(A.account)  # what a node does when it starts
        cursor = await fresh.sync()
    assert [c.id for c in channels] == [cid]
    assert cursor == chain.head()
    assert fresh.skipped_logs == 6, list(fresh.skipped)
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 6
    # the genuine events and frames are all there, numbered as every reader numbers them
    assert await fresh.events() == await L.events()
    kinds = [e.kind for e in await fresh.events()]
    assert kinds[-2:] == ["ClaimFiled", "Minted"]
    claims = await fresh.claims_of(A.account)
    assert [c.id for c in claims] == [claim_id] and claims[0].state is ClaimState.OPEN
    assert claims[0].request_frame == req.to_frame()  # the hostile frames did not replace it
    # the ledger that sent the transactions skipped the same logs, and keeps working
    assert L.skipped_logs == 6
    assert (await L.totals()).conserved
    await fresh.aclose()
    await L.aclose()


async def test_a_node_starts_on_a_contract_with_hostile_logs() -> None:
    """Node start reads the ledger's channels (`channels_of`): a hostile log in the history
    must not stop it (before, it raised on every start)."""
    from p2pay.node import open_node

    chain = HostileChain()
    clock = ManualClock()
    L = await EvmLedger.deploy(chain, DEPLOYER, dev=True, time_unit_us=1, clock=clock)
    await L.mint(A, A.account, 10 * TOKEN)
    cid = await L.open_channel(A, B.account, TOKEN, 1_000)
    chain.extra = hostile_logs(L.address, chain.head() + 1, b"\x05" * 32, cid)
    await L.mint(A, A.account, 1)
    ledger = await EvmLedger.connect(chain, L.address)
    with trio.fail_after(30):
        async with open_node(key=testing.ALICE, ledger=ledger) as node:
            assert node.account == A.account
            assert cid in node.payer_channels  # adopted from the ledger's history
    assert ledger.skipped_logs == 6
    await ledger.aclose()
    await L.aclose()


async def test_the_contract_refuses_a_service_that_is_not_utf8() -> None:
    """No log can carry undecodable text: FileClaim and evidence refuse a service that is
    not strict UTF-8 (checked before anything else), and accept any valid one."""
    from p2pay.core.errors import ErrorCode
    from p2pay.ledger.evm import revert_code

    chain = BoaChain()
    clock = ManualClock()
    L = await EvmLedger.deploy(chain, DEPLOYER, dev=True, time_unit_us=1, clock=clock)
    await L.mint(A, A.account, 10 * TOKEN)
    await L.mint(B, B.account, 10 * TOKEN)
    await L.stake(B, TOKEN, TOKEN // 10, 1_000)
    cid = await L.open_channel(A, B.account, TOKEN, 1_000)
    voucher = (L.ledger_id, cid, 1, 5, 5, "x", bytes(32), 1, b"\x01" * 65)
    control = chain.transact(A, L.address, L._abi.calldata("file_claim", [voucher, b""]))
    assert revert_code(control.output)[0] is ErrorCode.INVALID_SIGNATURE  # text was fine
    for bad in (
        b"\xff",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
    ):
        data = L._abi.calldata("file_claim", [voucher, b""])
        data = data.replace(b"\x01x" + bytes(31), bytes([len(bad)]) + bad + bytes(32 - len(bad)))
        res = chain.transact(A, L.address, data)
        assert not res.ok and revert_code(res.output)[0] is ErrorCode.INVALID_ARGUMENT, bad
    # any valid UTF-8 service is claimable, and hashed as the off-chain request
    req = Request.create(
        A,
        ledger=L.ledger_id,
        channel=cid,
        n=1,
        paid=100,
        price=100,
        service="\u00e9\u20ac\U0001f600/echo",
        body=b"ping",
        deadline=clock.ms + 10,
    )
    clock.advance(11)
    assert await L.file_claim(A, req) == req.hash
    assert L.skipped_logs == 0
    await L.aclose()


class LaggingChain(BoaChain):
    """A BoaChain whose log reads leave out the logs of the newest block asked for while
    `lag` is set: an endpoint whose log backend is a block behind its head backend."""

    def __init__(self) -> None:
        super().__init__()
        self.lag = False

    def logs(self, address: bytes, first: int, last: int) -> list[Log]:
        out = super().logs(address, first, last)
        return [lg for lg in out if lg.block < last] if self.lag else out


async def test_logs_a_lagging_endpoint_left_out_are_read_at_the_next_sync() -> None:
    """Attack round 40 (tests/ledger/test_attack_r40_claim_log_lag.py on anvil and real
    nodes): a sync moved its cursor past logs the endpoint had not shown yet, and never
    asked for them again; a ClaimFiled hidden so was never answered. A sync reads the last
    `RESCAN_BLOCKS` blocks again, and what it read before is not indexed twice."""
    chain = LaggingChain()
    clock = ManualClock()
    L = await EvmLedger.deploy(chain, DEPLOYER, dev=True, time_unit_us=1, clock=clock)
    await L.mint(A, A.account, 10 * TOKEN)
    reader = await EvmLedger.connect(chain, L.address)
    await reader.sync()
    assert await reader.events() == await L.events()
    chain.lag = True
    cid = await L.open_channel(A, B.account, TOKEN, 1_000)
    assert await reader.sync() == chain.head()  # the cursor moves ...
    assert cid not in [c.id for c in await reader.channels_of(A.account)]  # ... unshown
    await L.mint(A, A.account, 1)  # the chain goes on: a block more
    await reader.sync()
    assert [c.id for c in await reader.channels_of(A.account)] == [cid]
    chain.lag = False
    for _ in range(3):  # read again, never indexed twice
        await reader.sync()
        assert await reader.events() == await L.events()
    assert reader.skipped_logs == 0
    await reader.aclose()
    await L.aclose()
