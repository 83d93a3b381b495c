"""The EVM ledger (contracts/Settlement.vy + p2pay.ledger.evm) on an in-process EVM.

The whole ledger conformance suite (p2pay.testing) runs against the contract on titanoboa's
py-evm, with the suite's fixed test keys replaced by their derived secp256k1 settlement keys
(an EVM account is an address). Plus: the signature scheme (EIP-712 digests checked against
eth-account, high-s and zero-address refusals), the on-chain BLAKE2b and CBOR request hash,
and the contract's own argument checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

pytest.importorskip("boa", reason="titanoboa not installed: pip install -e '.[dev]'")
pytest.importorskip("eth_abi", reason="web3/eth-abi not installed: pip install -e '.[dev]'")

from p2pay import testing
from p2pay.core.identity import Keypair
from p2pay.ledger import Ledger
from p2pay.ledger.evm import BoaChain, EvmLedger
from p2pay.testing import ManualClock, ledger_conformance_cases

pytestmark = pytest.mark.trio

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
DEPLOYER, EVM_KEYS = testing.evm_test_keys()


@pytest.fixture
def evm_test_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the conformance cases with secp256k1 keys: on an EVM ledger an account is an
    address, so the suite's Ed25519 ALICE..MALLORY act through their derived keys."""
    for name, key in EVM_KEYS.items():
        monkeypatch.setattr(testing, name, key)
    response = testing._ClaimSetup.response
    defaults = response.__defaults__
    assert defaults is not None and isinstance(defaults[0], Keypair), "suite changed: update"
    monkeypatch.setattr(response, "__defaults__", (EVM_KEYS["BOB"], *defaults[1:]))
    yield


@pytest.fixture
def boa_factory(evm_test_keys: None) -> tuple[Callable[..., Any], list[Ledger]]:
    chain = BoaChain()
    made: list[Ledger] = []

    async def factory(clock: Callable[[], int], *, dev: bool = True) -> Ledger:
        ledger = await EvmLedger.deploy(chain, DEPLOYER, dev=dev, time_unit_us=1, clock=clock)
        made.append(ledger)
        return ledger

    return factory, made


@pytest.mark.parametrize(("name", "case"), EVM_CASES)
async def test_evm_ledger_conformance(boa_factory: Any, name: str, case: Any) -> None:
    factory, made = boa_factory
    await case(factory)
    assert made, "the case made no ledger"


async def test_concurrent_syncs_index_each_log_once() -> None:
    """Two watchers sharing one EvmLedger read events at once: each log is indexed once."""
    chain = BoaChain()
    alice = EVM_KEYS["ALICE"]
    ledger = await EvmLedger.deploy(chain, DEPLOYER, dev=True, time_unit_us=1, clock=ManualClock())
    for _ in range(3):
        await ledger.mint(alice, alice.account, testing.TOKEN)
    expected = await ledger.events()
    fresh = await EvmLedger.connect(chain, ledger.address)  # its index starts empty
    pages: list[list[Any]] = []

    async def read() -> None:
        pages.append(await fresh.events())

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(read)
    assert [e.seq for e in expected] == list(range(1, len(expected) + 1))
    assert all(page == expected for page in pages)
    assert await fresh.events() == expected
    await fresh.aclose()
    await ledger.aclose()


async def test_claims_per_window_is_a_constructor_argument() -> None:
    """`claims_per_window` (claims.md C-1) is fixed at deployment, read back by `connect`,
    and the contract itself refuses 0 and more than MAX_CLAIMS_PER_WINDOW."""
    from eth_abi.abi import encode

    from p2pay.core.settlement import MAX_CLAIMS_PER_WINDOW
    from p2pay.ledger.evm import load_artifact

    chain = BoaChain()
    ledger = await EvmLedger.deploy(chain, DEPLOYER, dev=True, claims_per_window=7)
    assert ledger.params.claims_per_window == 7
    again = await EvmLedger.connect(chain, ledger.address)
    assert again.params == ledger.params
    token = b"\x11" * 20
    code = bytes.fromhex(load_artifact("Settlement")["bytecode"][2:])

    def constructor(claims_per_window: int) -> bytes:
        return encode(
            ["address", "bool"] + ["uint256"] * 9,
            [token, True, 1, 1, 1, 2, 1, 2, 0, claims_per_window, 1],
        )

    for bad in (0, MAX_CLAIMS_PER_WINDOW + 1):  # what Params refuses, sent around it
        assert not chain.transact(DEPLOYER, None, code + constructor(bad)).ok, bad
    for good in (1, MAX_CLAIMS_PER_WINDOW):
        assert chain.transact(DEPLOYER, None, code + constructor(good)).ok, good
    await again.aclose()
    await ledger.aclose()
