"""EVM ledger: the settlement contract (contracts/Settlement.vy) on an EVM chain.

Theory of operation
-------------------
The rules run on chain: the contract is the authority, and `EvmLedger` is a thin adapter
that turns the `Ledger` operations into contract calls and the contract's logs back into
`Event`s. Nothing here re-implements a rule.

* **Chains.** A `Chain` executes calls and transactions. `Web3Chain` talks JSON-RPC with
  web3.py (anvil, a testnet, mainnet), signing every transaction locally with the sender's
  secp256k1 key; `BoaChain` runs py-evm in process through titanoboa (tests, simulations).
  Chain calls are blocking; `EvmLedger` runs `Web3Chain` calls in a worker thread.
* **Keys and accounts.** On chain an account is an address; off chain it is the 32-byte
  account ``12 zero bytes || address`` (`p2pay.core.evmsig`). An operation's ``key`` is an
  `EvmKey`, or an Ed25519 `Keypair` that then acts with its derived settlement key.
* **Refusals.** The contract reverts with the `ErrorCode` text; a transaction is first
  simulated (same sender, same block time), and a revert raises `SettlementError` with
  that code without sending anything, so a refused operation changes nothing. Arguments
  that cannot even be ABI-encoded (a negative amount, a 31-byte id, an object that is not
  a `Request`) are refused by the pure rules on an empty state, which check arguments
  before anything else, so the code is the one the contract would give.
* **Time.** The contract's clock is ``block.timestamp * time_unit_us // 1000`` ms. A real
  chain uses seconds (``time_unit_us = 10**6``). A test chain whose blocks the ledger
  times itself (``clock=...``: BoaChain, anvil) uses microseconds (``time_unit_us = 1``):
  each transaction gets the timestamp ``max(clock_ms * 1000, previous + 1)``, so ledger time
  follows the clock to the millisecond, never runs backwards, and blocks stay strictly
  increasing.
* **Events.** The ledger follows the contract's logs up to ``head - confirmations`` with a
  block cursor, numbers the settlement events ``seq = 1, 2, ...`` in chain order, indexes
  the channels and claims of every account, and keeps the request/response frames that the
  claim logs carry (the contract stores only their hashes' effects). The index and the
  cursor live in SQLite (``index_path``; in memory by default), so a restarted ledger
  resumes where it stopped.
* **Ledger id** ``b"p2pay:evm:" || u64be(chain id) || contract address``: vouchers naming it
  are signed with EIP-712 (`p2pay.core.signing`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, TypeVarTuple

import trio

from p2pay.core import codec
from p2pay.core.errors import ErrorCode, LocalProtocolError, P2payError, SettlementError
from p2pay.core.evmsig import (
    EvmKey,
    account_of_address,
    address_of_account,
    evm_ledger_id,
    keccak256,
)
from p2pay.core.identity import Keypair
from p2pay.core.messages import Request, Response
from p2pay.core.settlement import (
    AnswerClaim,
    Channel,
    ChannelState,
    Claim,
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
    StartClose,
    State,
    TopUp,
    Transfer,
    Withdraw,
    WithdrawStake,
    apply,
)
from p2pay.core.signing import Signer
from p2pay.ledger.base import (
    CLAIM_ROLES,
    ClaimRole,
    LedgerKey,
    OpLedger,
    Receipt,
    Totals,
    check_claim_role,
)

__all__ = [
    "CONTRACT_VERSION",
    "MAX_BODY",
    "BoaChain",
    "Chain",
    "ChainError",
    "ChainUnavailable",
    "EvmLedger",
    "InsufficientGasFunds",
    "Log",
    "RpcErrorReply",
    "TransactionTimeout",
    "TxResult",
    "Web3Chain",
    "load_artifact",
]

MAX_BODY = 32768  # contracts/Settlement.vy MAX_BODY: largest body a claim can carry
MAX_SERVICE_BYTES = 64  # contracts/Settlement.vy MAX_SERVICE (= messages.MAX_SERVICE_NAME)
CONTRACT_VERSION = 3  # contracts/Settlement.vy VERSION: the rules this adapter speaks
_U256 = (1 << 256) - 1
_ERROR_SELECTOR = bytes.fromhex("08c379a0")
_VOUCHER_T = "(bytes,bytes32,uint64,uint256,uint256,string,bytes32,uint64,bytes)"
_ANSWER_T = "(bytes,bytes32,uint64,bytes32,string,uint256,uint256,bytes32,bytes)"
_CHANNEL_STATES = {1: ChannelState.OPEN, 2: ChannelState.CLOSING, 3: ChannelState.CLOSED}
_CLAIM_STATES = {
    1: ClaimState.OPEN,
    2: ClaimState.DELIVERED,
    3: ClaimState.REFUSED,
    4: ClaimState.FRIVOLOUS,
    5: ClaimState.UPHELD,
}
_FIELD_NAMES = {"src": "from", "dst": "to"}
_EVIDENCE = ("RequestEvidence", "ResponseEvidence", "ConflictEvidence")
#: Refusals of a channel's operations a reading at ``head - confirmations`` can rule out
#: (`EvmLedger._contradicted`; UNKNOWN_CLAIM is checked against the claim).
_CHECKABLE = frozenset(
    {ErrorCode.UNKNOWN_CHANNEL, ErrorCode.VOUCHER_EXCEEDS_DEPOSIT, ErrorCode.NOT_STAKED}
)
#: Claims whose frames `EvmLedger.claims_filed_against` keeps from blocks not confirmed yet.
_TAIL_CLAIMS = 1024

log = logging.getLogger("p2pay.ledger.evm")

#: blocks before its cursor whose logs a sync reads again (`EvmLedger._sync`): how far
#: behind its head an endpoint's log backend may lag without hiding a log for good
RESCAN_BLOCKS = 64

#: the highest first tip (maxPriorityFeePerGas, wei a gas) `Web3Chain` pays, whatever the
#: endpoint suggests: 50 gwei, above what Ethereum's blocks take outside a rush and
#: Polygon's 25-30 gwei floor; a transaction it leaves unmined is re-priced (`fee_bump`)
MAX_TIP_WEI = 50 * 10**9

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")
_P = ParamSpec("_P")


def _contracts_dir() -> Path:
    env = os.environ.get("P2PAY_CONTRACTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "contracts"


def load_artifact(name: str) -> dict[str, Any]:
    """The compiled artifact ``p2pay/ledger/contracts/<name>.json`` (abi, bytecode, versions).

    The artifacts are package data, so a plain ``pip install '.[evm]'`` has them;
    ``P2PAY_CONTRACTS_DIR`` points elsewhere (e.g. at artifacts being rebuilt).

    Raises:
        LocalProtocolError: the artifact is missing (set P2PAY_CONTRACTS_DIR).
    """
    path = _contracts_dir() / f"{name}.json"
    try:
        artifact: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LocalProtocolError(f"contract artifact {path} not readable: {exc}") from None
    return artifact


def _abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){kind[5:]}"
    return kind


class _Abi:
    """Selectors, argument types and event decoders of one contract ABI."""

    def __init__(self, abi: list[dict[str, Any]]) -> None:
        self.functions: dict[str, tuple[bytes, list[str], list[str]]] = {}
        self.events: dict[bytes, tuple[str, list[tuple[str, str, bool]]]] = {}
        for item in abi:
            if item["type"] == "function":
                types = [_abi_type(i) for i in item["inputs"]]
                sig = f"{item['name']}({','.join(types)})"
                outs = [_abi_type(o) for o in item.get("outputs", [])]
                self.functions[item["name"]] = (keccak256(sig.encode())[:4], types, outs)
            elif item["type"] == "event":
                fields = [(i["name"], _abi_type(i), bool(i["indexed"])) for i in item["inputs"]]
                sig = f"{item['name']}({','.join(t for _, t, _ in fields)})"
                self.events[keccak256(sig.encode())] = (item["name"], fields)

    def calldata(self, name: str, args: Sequence[Any]) -> bytes:
        from eth_abi.abi import encode

        selector, types, _ = self.functions[name]
        return selector + encode(types, list(args))

    def decode_output(self, name: str, data: bytes) -> tuple[Any, ...]:
        from eth_abi.abi import decode

        _, _, outs = self.functions[name]
        return tuple(decode(outs, data))

    def decode_log(self, topics: Sequence[bytes], data: bytes) -> tuple[str, dict[str, Any]] | None:
        from eth_abi.abi import decode

        if not topics or topics[0] not in self.events:
            return None
        name, fields = self.events[topics[0]]
        plain = [t for _, t, indexed in fields if not indexed]
        values = iter(decode(plain, data))
        indexed_topics = iter(topics[1:])
        out: dict[str, Any] = {}
        for field_name, type_, indexed in fields:
            value = decode([type_], next(indexed_topics))[0] if indexed else next(values)
            if type_ == "address":  # as a 32-byte account
                value = bytes(12) + bytes.fromhex(value[2:])
            out[field_name] = value
        return name, out


# ---------------------------------------------------------------------------
# chains


@dataclass(frozen=True, slots=True)
class Log:
    block: int
    index: int
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class TxResult:
    """A transaction's outcome: `ok` False means reverted (`output` is the revert data)."""

    ok: bool
    output: bytes
    logs: tuple[Log, ...] = ()
    gas_used: int = 0
    block: int = 0  # the block it was mined in; 0: not sent (a simulation's refusal)


class Chain:
    """What `EvmLedger` needs of a chain. All methods block; addresses are 20 bytes."""

    blocking_io = False  # True: EvmLedger calls it from a worker thread
    past_views = False  # True: `call` can read the state at an earlier block

    def chain_id(self) -> int:
        raise NotImplementedError

    def head(self) -> int:
        """The latest block number."""
        raise NotImplementedError

    def last_timestamp(self) -> int:
        """The timestamp of the latest block (chain units)."""
        raise NotImplementedError

    def call(
        self, to: bytes, data: bytes, sender: bytes | None = None, block: int | None = None
    ) -> TxResult:
        """Execute without changing state: eth_call on the latest block, or on block
        number `block` (only where `past_views`)."""
        raise NotImplementedError

    def transact(
        self,
        key: EvmKey,
        to: bytes | None,
        data: bytes,
        timestamp: int | None = None,
        simulate: bool = True,
        repeatable: bool = False,
    ) -> TxResult:
        """Simulate, and if it succeeds, execute a transaction (``to=None`` deploys).

        `timestamp` (test chains) is the block timestamp to run at. A simulated revert
        sends nothing and returns ``ok=False`` (``block`` 0). For a deployment ``output``
        is the address. `simulate` False sends it without the simulation, for the chain to
        decide (a refusal the adapter does not believe: settlement.md 10, "Confirmations");
        a revert then comes with the block it was mined in. `repeatable`: a second landing
        of it cannot apply it twice (the contract refuses it, or it pays nothing more), so
        one that ran out of gas may be sent again (settlement.md 10, "Gas").
        """
        raise NotImplementedError

    def logs(self, address: bytes, first: int, last: int) -> list[Log]:
        """Logs of `address` in blocks ``first..last`` in chain order."""
        raise NotImplementedError

    def close(self) -> None:
        return None


class BoaChain(Chain):
    """An in-process EVM (titanoboa / py-evm). Each transaction is one block.

    Args:
        chain_id: the chain id the EVM reports.
    """

    def __init__(self, chain_id: int = 31337) -> None:
        import boa
        from boa.environment import Env

        self._boa = boa
        self.env = Env()
        self.env.evm.patch.chain_id = chain_id
        self._chain_id = chain_id
        self._block = 1
        self._timestamp = 1
        self.env.evm.patch.block_number = self._block
        self.env.evm.patch.timestamp = self._timestamp
        self._logs: list[Log] = []

    def chain_id(self) -> int:
        return self._chain_id

    def head(self) -> int:
        return self._block

    def last_timestamp(self) -> int:
        return self._timestamp

    def _address(self, raw: bytes) -> Any:
        from boa.util.abi import Address

        return Address(raw)

    def call(
        self, to: bytes, data: bytes, sender: bytes | None = None, block: int | None = None
    ) -> TxResult:
        if block is not None and block != self._block:
            raise LocalProtocolError("BoaChain reads the latest block only")
        self.env.evm.patch.timestamp = self._timestamp
        computation = self.env.execute_code(
            to_address=self._address(to),
            sender=self._address(sender or bytes(20)),
            data=data,
            is_modifying=False,
        )
        return TxResult(ok=not computation.is_error, output=bytes(computation.output))

    def transact(
        self,
        key: EvmKey,
        to: bytes | None,
        data: bytes,
        timestamp: int | None = None,
        simulate: bool = True,
        repeatable: bool = False,
    ) -> TxResult:
        # one execution: a refused one is not kept (no block), whatever `simulate` says
        ts = self._timestamp + 1 if timestamp is None else max(timestamp, self._timestamp + 1)
        self.env.evm.patch.timestamp = ts
        self.env.evm.patch.block_number = self._block + 1
        sender = self._address(key.address)
        if to is None:
            try:
                address, computation = self.env.deploy(sender=sender, bytecode=data)
            except Exception as exc:  # boa raises on a failed deployment
                self.env.evm.patch.timestamp = self._timestamp
                self.env.evm.patch.block_number = self._block
                return TxResult(ok=False, output=str(exc).encode())
            output = bytes.fromhex(str(address)[2:])
        else:
            computation = self.env.execute_code(
                to_address=self._address(to), sender=sender, data=data, is_modifying=True
            )
            output = bytes(computation.output)
        if computation.is_error:
            self.env.evm.patch.timestamp = self._timestamp
            self.env.evm.patch.block_number = self._block
            return TxResult(ok=False, output=output)
        self._block += 1
        self._timestamp = ts
        logs = []
        for index, entry in enumerate(computation.get_log_entries()):
            address, topics, log_data = entry[-3:]
            logs.append(
                Log(
                    block=self._block,
                    index=index,
                    address=bytes(address),
                    topics=tuple(t.to_bytes(32, "big") for t in topics),
                    data=bytes(log_data),
                )
            )
        self._logs.extend(logs)
        return TxResult(
            ok=True,
            output=output,
            logs=tuple(logs),
            gas_used=computation.get_gas_used(),
            block=self._block,
        )

    def logs(self, address: bytes, first: int, last: int) -> list[Log]:
        return [lg for lg in self._logs if lg.address == address and first <= lg.block <= last]


class ChainError(P2payError):
    """The chain could not carry out a call or transaction (never a rule's refusal: those
    are `SettlementError`). Nothing of a failed transaction is known to have been applied
    unless the subclass says so."""

    code = ErrorCode.INTERNAL


class ChainUnavailable(ChainError, OSError):
    """The RPC endpoint failed (connection refused, reset, stalled, a bad reply) on every
    retry. Also an `OSError`: callers that treat an unreachable endpoint as I/O (the CLI's
    "cannot reach") keep doing so."""


class InsufficientGasFunds(ChainError):
    """The sender's address cannot pay the gas of the transaction (nothing was sent)."""


class TransactionTimeout(ChainError):
    """A sent transaction was not mined in time, re-priced or not. It may still be mined
    later: its nonce stays reserved, and the next transaction of the sender replaces it if
    it is still pending (same nonce, higher fees)."""


# what reading a reply of the wrong shape raises (``int(None, 16)``, ``None["timestamp"]``,
# iterating ``None``, ``bytes.fromhex("zz")``, a log without "topics")
_MALFORMED = (TypeError, ValueError, KeyError, AttributeError, IndexError)


def _reply_checked(
    fn: Callable[Concatenate[Web3Chain, _P], _T],
) -> Callable[Concatenate[Web3Chain, _P], _T]:
    """A `Web3Chain` method whose reading of a malformed reply (a well-formed JSON-RPC
    answer whose ``result`` is not what the method returns) fails with `ChainUnavailable`,
    never with the Python error of the reading: one ``{"result": null}`` for
    `eth_blockNumber` ended a node's watcher, and with it the node (attack round 40)."""

    def checked(self: Web3Chain, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(self, *args, **kwargs)
        except P2payError:
            raise
        except _MALFORMED as exc:
            raise ChainUnavailable(
                f"{fn.__name__}: malformed reply from {self.url}: "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from None

    checked.__name__, checked.__qualname__ = fn.__name__, fn.__qualname__
    checked.__doc__ = fn.__doc__
    return checked


#: What `Web3Chain._send` returns as the output of a revert that used all its gas.
_OUT_OF_GAS = b"out of gas"
#: Times `Web3Chain.transact` sends a repeatable transaction again, at twice the gas limit,
#: after an out-of-gas revert (an estimate too low: the endpoint's lie, or a state that
#: changed).
OUT_OF_GAS_RESENDS = 4
#: The most nonces below a transaction's that `Web3Chain._fill_gap` fills.
MAX_GAP_FILL = 16
#: Nonces whose sends `Web3Chain` remembers (`_fill_gap` fills none the endpoint knows).
_SENT_KEPT = 256


def _gas_floor(data: bytes) -> int:
    """The least gas limit of a transaction with calldata `data`, whatever the estimate:
    100,000 plus 64 a byte covers a redeem, a close, a top-up and a claim's answer (one
    with a 32 KiB body used 1.94 M: calldata at 16 a byte, and hashing the body); an
    operation it does not cover (opening a channel, filing or resolving a claim, a stake:
    settlement.md 10's gas table) runs out of gas at it only on an estimate made up too
    low, and is then sent again at twice the limit (`OUT_OF_GAS_RESENDS`)."""
    return 100_000 + 64 * len(data)


class Web3Chain(Chain):
    """A JSON-RPC chain through web3.py; transactions are signed locally.

    Robust against a misbehaving endpoint and a congested chain (issue 14):

    * every RPC is retried with exponential backoff on connection errors, timeouts and
      unreadable replies (`rpc_retries` times), then fails with `ChainUnavailable`; an RPC
      error *reply* (a revert, a refusal) is not retried;
    * transactions carry EIP-1559 fees (``maxFeePerGas = 2 * baseFee + tip``) and an
      explicit nonce kept per sender (re-read from the chain after a nonce race);
    * a transaction not mined after `reprice_after_s` is sent again with the same nonce and
      both fees raised by `fee_bump` (at least the 10 % nodes require), up to the overall
      `timeout_s`, then `TransactionTimeout`;
    * before sending, the sender's gas balance is checked: too little for this transaction
      is `InsufficientGasFunds` (nothing sent); less than `low_gas_txs` such transactions
      logs a warning;
    * the tip the endpoint suggests (``eth_maxPriorityFeePerGas``) is taken up to
      `max_tip_wei` a gas, never above: an endpoint that answered 100,000 gwei made one
      ``p2pay stake`` pay 5.74 ETH in tips, against 0.00006 ETH told the truth (attack
      round 44); re-pricing raises it to ``max_tip_wei x fee_bump^n`` at most, ``n`` =
      ``ceil(timeout_s / reprice_after_s)``, and more than ``n`` "underpriced" replies to
      one transaction fail it with `ChainUnavailable`: an endpoint answering that 50 times
      made one stake pay 201 ETH (attack round 45).

    Args:
        url: the RPC endpoint (``http://127.0.0.1:8545``).
        timed: the ledger times blocks itself (anvil: ``evm_setNextBlockTimestamp``).
        timeout_s: how long to wait for a transaction's receipt, re-pricing included.
        rpc_timeout_s: how long one RPC may take before it counts as failed.
        rpc_retries: retries of a failed RPC (connection errors, timeouts).
        reprice_after_s: resend with higher fees after this long without a receipt.
        fee_bump: factor applied to both fees at each re-pricing.
        poll_s: receipt polling interval.
        low_gas_txs: warn when the gas balance pays for fewer transactions than this.
        max_tip_wei: the highest first tip a gas (re-pricing raises it by `fee_bump` a time).
    """

    blocking_io = True
    past_views = True

    def __init__(
        self,
        url: str,
        *,
        timed: bool = False,
        timeout_s: float = 60.0,
        rpc_timeout_s: float = 10.0,
        rpc_retries: int = 4,
        reprice_after_s: float = 15.0,
        fee_bump: float = 1.25,
        poll_s: float = 0.05,
        low_gas_txs: int = 20,
        max_tip_wei: int = MAX_TIP_WEI,
    ) -> None:
        from web3 import HTTPProvider, Web3

        if fee_bump < 1.1 or rpc_retries < 0 or poll_s <= 0 or max_tip_wei < 1:
            raise LocalProtocolError(
                "need fee_bump >= 1.1, rpc_retries >= 0, poll_s > 0, max_tip_wei >= 1"
            )
        # web3's own retries off: `_rpc` is the one place that retries (and counts)
        provider = HTTPProvider(
            url, request_kwargs={"timeout": rpc_timeout_s}, exception_retry_configuration=None
        )
        self.w3 = Web3(provider)
        self.url = url
        self.timed = timed
        self.timeout_s = timeout_s
        self.rpc_retries = rpc_retries
        self.reprice_after_s = reprice_after_s
        self.fee_bump = fee_bump
        self.poll_s = poll_s
        self.low_gas_txs = low_gas_txs
        self.max_tip_wei = max_tip_wei
        self._chain_id: int | None = None
        self._nonces: dict[bytes, int] = {}  # next nonce per sender address
        #: (sender, nonce) -> the hashes of our sends of it, the latest `_SENT_KEPT`
        self._sent_at: dict[tuple[bytes, int], tuple[str, ...]] = {}
        # what happened (tests, metrics): RPC retries, re-priced sends, low-gas warnings
        self.stats = {
            "rpc_retries": 0,
            "repriced": 0,
            "low_gas_warnings": 0,
            "nonce_races": 0,
            "out_of_gas": 0,
            "gap_fillers": 0,
        }

    def _rpc(self, method: str, params: list[Any]) -> Any:
        from web3.types import RPCEndpoint

        delay = 0.05
        for attempt in range(self.rpc_retries + 1):  # bounded
            try:
                reply = self.w3.provider.make_request(RPCEndpoint(method), params)
            except Exception as exc:  # connection refused / reset, timeout, bad JSON
                if attempt == self.rpc_retries:
                    raise ChainUnavailable(
                        f"{method} failed {attempt + 1} times on {self.url}: "
                        f"{type(exc).__name__}: {str(exc)[:200]}"
                    ) from None
                self.stats["rpc_retries"] += 1
                log.info("RPC %s failed (%s), retrying in %.2f s", method, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if not isinstance(reply, dict) or ("error" not in reply and "result" not in reply):
                if attempt == self.rpc_retries:
                    raise ChainUnavailable(f"{method}: unreadable reply from {self.url}")
                self.stats["rpc_retries"] += 1
                time.sleep(delay)
                continue
            if "error" in reply:
                raise RpcErrorReply(reply["error"])
            return reply["result"]
        raise AssertionError("unreachable")  # pragma: no cover

    @_reply_checked
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._rpc("eth_chainId", []), 16)
        return self._chain_id

    @_reply_checked
    def head(self) -> int:
        """The lower of two readings of the head: `eth_blockNumber` and the number of the
        block `eth_getBlockByNumber` calls latest. The ledger's log cursor moves to the
        head (`EvmLedger._sync`) and reads again only `RESCAN_BLOCKS` before it: one
        `eth_blockNumber` reply 200 blocks ahead of the chain (a load-balanced backend
        ahead or wrong, once) moved it past blocks not mined yet, whose logs were then
        never read: a claim filed there was never answered and an honest provider was
        slashed (attack round 44). A head not mined yet has no block to show; an endpoint
        that lies in both at once is still believed (settlement.md, "A chain that
        misbehaves")."""
        number = int(self._rpc("eth_blockNumber", []), 16)
        latest = self._rpc("eth_getBlockByNumber", ["latest", False])
        return min(number, int(latest["number"], 16))

    @_reply_checked
    def last_timestamp(self) -> int:
        block = self._rpc("eth_getBlockByNumber", ["latest", False])
        return int(block["timestamp"], 16)

    def _eth_call(
        self, tx: dict[str, Any], timestamp: int | None, block: int | None = None
    ) -> TxResult:
        params: list[Any] = [tx, "latest" if block is None else hex(block)]
        if timestamp is not None:
            params += [{}, {"time": hex(timestamp)}]
        try:
            return TxResult(ok=True, output=bytes.fromhex(self._rpc("eth_call", params)[2:]))
        except RpcErrorReply as exc:
            return TxResult(ok=False, output=exc.revert_data())

    @_reply_checked
    def call(
        self, to: bytes, data: bytes, sender: bytes | None = None, block: int | None = None
    ) -> TxResult:
        tx: dict[str, Any] = {"to": "0x" + to.hex(), "data": "0x" + data.hex()}
        if sender is not None:
            tx["from"] = "0x" + sender.hex()
        return self._eth_call(tx, None, block)

    @_reply_checked
    def fund(self, address: bytes, wei: int = 10**21) -> None:
        """Give `address` gas money (dev chains: ``anvil_setBalance``)."""
        self._rpc("anvil_setBalance", ["0x" + address.hex(), hex(wei)])

    def _fees(self) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas) for the next block (EIP-1559)."""
        block = self._rpc("eth_getBlockByNumber", ["latest", False])
        base = int(block.get("baseFeePerGas") or "0x0", 16)
        try:
            tip = int(self._rpc("eth_maxPriorityFeePerGas", []), 16)
        except RpcErrorReply:
            tip = 10**9
        # the endpoint's word, bounded: the tip goes to the block's producer, not back
        tip = min(max(tip, 1), self.max_tip_wei)
        return 2 * base + tip, tip

    def _next_nonce(self, address: bytes, *, refresh: bool = False) -> int:
        chain = int(self._rpc("eth_getTransactionCount", ["0x" + address.hex(), "pending"]), 16)
        known = self._nonces.get(address, 0)
        nonce = chain if refresh else max(chain, known)
        self._nonces[address] = nonce
        return nonce

    def _check_gas_funds(self, address: bytes, cost: int) -> None:
        balance = int(self._rpc("eth_getBalance", ["0x" + address.hex(), "latest"]), 16)
        if balance < cost:
            raise InsufficientGasFunds(
                f"0x{address.hex()} holds {balance} wei, the transaction may cost {cost}: "
                "fund the address",
                details={"address": "0x" + address.hex(), "balance": balance, "cost": cost},
            )
        if balance < cost * self.low_gas_txs:
            self.stats["low_gas_warnings"] += 1
            log.warning(
                "gas balance of 0x%s is low: %d wei, about %d transactions left",
                address.hex(),
                balance,
                balance // max(cost, 1),
            )

    def _receipt(self, hashes: Sequence[str]) -> dict[str, Any] | None:
        for tx_hash in hashes:
            receipt = self._rpc("eth_getTransactionReceipt", [tx_hash])
            if receipt:
                return dict(receipt)
        return None

    @_reply_checked
    def transact(
        self,
        key: EvmKey,
        to: bytes | None,
        data: bytes,
        timestamp: int | None = None,
        simulate: bool = True,
        repeatable: bool = False,
    ) -> TxResult:
        sender = "0x" + key.address.hex()
        tx: dict[str, Any] = {"from": sender, "data": "0x" + data.hex()}
        if to is not None:
            tx["to"] = "0x" + to.hex()
        if self.timed and timestamp is not None:
            timestamp = max(timestamp, self.last_timestamp() + 1)
        else:
            timestamp = None
        simulated = self._eth_call(tx, timestamp) if simulate else TxResult(ok=True, output=b"")
        if not simulated.ok:
            return simulated
        try:
            gas = int(self._rpc("eth_estimateGas", [tx, "latest"]), 16)
        except RpcErrorReply:
            # a timed test chain: the estimate runs at the latest block's time, where the
            # op may still be refused (e.g. a deadline not passed yet); the simulation at the
            # next block's time succeeded, so give it a generous limit. Sent without the
            # simulation, the estimate may fail as the simulation did: the floor then
            gas = 4_000_000 if simulate else 0
        # never below the floor (`_gas_floor`): an endpoint's estimate of 21,000 ran every
        # forced answer out of gas (attack round 50); and doubled after an out-of-gas revert
        # of an operation a second landing cannot apply twice: a receipt that lies "out of
        # gas" about a transaction that went in had a stake or a top-up applied twice
        gas_limit = max(gas * 13 // 10 + 50_000, _gas_floor(data))
        resends = OUT_OF_GAS_RESENDS if repeatable else 0
        for resend in range(resends + 1):  # bounded
            res = self._send(key, to, data, tx, timestamp, simulate, simulated.output, gas_limit)
            if res.ok or res.output != _OUT_OF_GAS or resend == resends:
                break
            self.stats["out_of_gas"] += 1
            log.warning("transaction ran out of gas at a limit of %d: sent again", gas_limit)
            gas_limit *= 2
            if timestamp is not None:
                timestamp = max(timestamp, self.last_timestamp() + 1)
        return res

    def _send(
        self,
        key: EvmKey,
        to: bytes | None,
        data: bytes,
        tx: dict[str, Any],
        timestamp: int | None,
        simulate: bool,
        output: bytes,
        gas_limit: int,
    ) -> TxResult:
        """Sign, send and wait for one transaction of `transact` at `gas_limit` (re-priced
        until `timeout_s`). `output` is its simulation's (returned with a success)."""
        from eth_account import Account

        sender = "0x" + key.address.hex()
        max_fee, tip = self._fees()
        self._check_gas_funds(key.address, gas_limit * max_fee)
        nonce = self._next_nonce(key.address)
        unsigned: dict[str, Any] = {
            "chainId": self.chain_id(),
            "gas": gas_limit,
            "data": data,
            "value": 0,
        }
        if to is not None:
            from eth_utils.address import to_checksum_address

            unsigned["to"] = to_checksum_address("0x" + to.hex())
        sent: list[str] = []
        deadline = time.monotonic() + self.timeout_s
        receipt: dict[str, Any] | None = None
        # every raise of the fees, timed or on an "underpriced" reply, is bounded: the tip
        # never above max_tip_wei x fee_bump^bumps, and at most `bumps` "underpriced"
        # replies: one endpoint answering it 50 times in a row raised the tip 1.25^50-fold
        # and one p2pay stake paid 201 ETH (attack round 45)
        bumps = min(max(1, math.ceil(self.timeout_s / max(self.reprice_after_s, 1e-3))), 64)
        ceiling = int(self.max_tip_wei * self.fee_bump**bumps)
        underpriced = 0
        # a send of this transaction the endpoint may have taken: answered without an error,
        # "already known", or retried after a lost reply (`_rpc`'s retries)
        maybe_taken = False
        looked_for_gap = False
        for _round in range(64):  # bounded: each round waits reprice_after_s or ends
            unsigned.update(nonce=nonce, maxFeePerGas=max_fee, maxPriorityFeePerGas=tip)
            signed = Account.sign_transaction(unsigned, key.secret)
            tx_hash = "0x" + bytes(signed.hash).hex()
            if timestamp is not None:
                self._rpc("evm_setNextBlockTimestamp", [timestamp])
            # known before it is sent: if the reply is lost and the retry hears "nonce too
            # low" or "already known", the receipt of this hash tells whether it went in
            if tx_hash not in sent:
                sent.append(tx_hash)
                self._sent_at[(key.address, nonce)] = tuple(sent)
                while len(self._sent_at) > _SENT_KEPT:  # the oldest first (dict order)
                    del self._sent_at[next(iter(self._sent_at))]
            retries = self.stats["rpc_retries"]
            try:
                self._rpc("eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])
                maybe_taken = True
            except RpcErrorReply as exc:
                maybe_taken = maybe_taken or self.stats["rpc_retries"] != retries
                text = str(exc).lower()
                if "insufficient funds" in text:
                    if len(sent) == 1:  # else an earlier price of it is pending: wait for it
                        raise InsufficientGasFunds(f"{sender} cannot pay the gas: {exc}") from None
                elif "already known" in text or "already imported" in text:
                    maybe_taken = True  # an earlier try of this very send got through
                elif "nonce too low" in text or "nonce too high" in text:
                    receipt = self._receipt(sent)
                    if receipt is not None:
                        break
                    if "nonce too high" in text or not maybe_taken:
                        # another transaction took the nonce (another process with this key)
                        self.stats["nonce_races"] += 1
                        nonce = self._next_nonce(key.address, refresh=True)
                        continue
                    # an earlier send of this very transaction may be what took the nonce,
                    # its receipt not served (yet): wait for it, never send it again under
                    # another nonce: an endpoint hiding the receipt of a mined transaction
                    # got one p2pay stake applied twice (attack round 45)
                elif "underpriced" in text:
                    underpriced += 1
                    if underpriced > bumps or tip >= ceiling:
                        self._nonces[key.address] = nonce
                        raise ChainUnavailable(
                            f"eth_sendRawTransaction refused as underpriced {underpriced} "
                            f"times, the tip raised to {tip} wei a gas: {exc}",
                            details={"hashes": sent, "nonce": nonce},
                        ) from None
                    max_fee = int(max_fee * self.fee_bump) + 1
                    tip = min(int(tip * self.fee_bump) + 1, ceiling)
                    continue
                else:
                    raise ChainUnavailable(f"eth_sendRawTransaction refused: {exc}") from None
            reprice_at = time.monotonic() + self.reprice_after_s
            while receipt is None and time.monotonic() < min(reprice_at, deadline):  # bounded
                receipt = self._receipt(sent)
                if receipt is None:
                    time.sleep(self.poll_s)
            if receipt is not None or time.monotonic() >= deadline:
                break
            if not looked_for_gap:
                # a nonce of ours below this one that the chain holds no transaction for (one
                # a reorganisation or the endpoint dropped, its nonce cached as used) keeps
                # this one from ever being mined: filled, once
                looked_for_gap = True
                self._fill_gap(key, nonce, max_fee, tip)
            # not mined in time: the same nonce again with higher fees replaces it
            self.stats["repriced"] += 1
            max_fee = int(max_fee * self.fee_bump) + 1
            tip = min(int(tip * self.fee_bump) + 1, ceiling)
            log.warning(
                "transaction %s not mined after %.1f s: re-priced", tx_hash, self.reprice_after_s
            )
        if receipt is None:
            # next time the chain's pending count decides: nonce + 1 while this one is still
            # pending (it may yet be mined), nonce again if the node dropped it
            self._nonces[key.address] = nonce
            raise TransactionTimeout(
                f"transaction of {sender} (nonce {nonce}) not mined within {self.timeout_s} s",
                details={"hashes": sent, "nonce": nonce},
            )
        counted = int(self._rpc("eth_getTransactionCount", [sender, "latest"]), 16)
        if counted <= nonce:
            # a receipt the chain's own count of the sender's transactions does not back (an
            # endpoint that acknowledged a transaction it dropped, a reorg): believed, the op
            # counted as done and the next nonce skipped one, so every later transaction
            # waited behind the gap, never mined (attack round 40)
            self._nonces[key.address] = nonce
            raise ChainUnavailable(
                f"a receipt for transaction {receipt.get('transactionHash')} of {sender} "
                f"(nonce {nonce}) that the chain does not count ({counted} transactions)",
                details={"hashes": sent, "nonce": nonce},
            )
        self._nonces[key.address] = nonce + 1
        block = int(receipt["blockNumber"], 16)
        if int(receipt["status"], 16) != 1:
            if int(receipt.get("gasUsed") or "0x0", 16) >= gas_limit:
                # out of gas: not the contract's refusal, whatever a simulation now says (a
                # lying one "explained" it as a final refusal, attack round 50)
                return TxResult(ok=False, output=_OUT_OF_GAS, block=block)
            # the reason: a simulation at the latest block, or, for one sent without its
            # simulation (a refusal there not believed), at the block that reverted it
            again = self._eth_call(tx, None, None if simulate else block)
            return TxResult(ok=False, output=again.output, block=block)
        logs = tuple(
            Log(
                block=block,
                index=int(lg["logIndex"], 16),
                address=bytes.fromhex(lg["address"][2:]),
                topics=tuple(bytes.fromhex(t[2:]) for t in lg["topics"]),
                data=bytes.fromhex(lg["data"][2:]),
            )
            for lg in receipt["logs"]
        )
        if to is None:
            output = bytes.fromhex(str(receipt["contractAddress"])[2:])
        return TxResult(
            ok=True, output=output, logs=logs, gas_used=int(receipt["gasUsed"], 16), block=block
        )

    def _fill_gap(self, key: EvmKey, nonce: int, max_fee: int, tip: int) -> None:
        """Send an empty transfer to itself, at the waiting transaction's price (`max_fee`,
        `tip`: what the chain takes), at each nonce of `key` below `nonce` that the chain's
        pending count says holds no transaction (at most `MAX_GAP_FILL`; a larger gap is
        left, logged), but never at a nonce one of our own sends the endpoint still knows
        (`_sent_at`, `eth_getTransactionByHash`): a count that lags, or lies, had a filler
        replace our own pending transfer, which never landed (attack round 53). Priced at
        the least that is mined instead (a tip of 1 wei), a filler was refused on a chain
        with a minimum tip, and an answer waiting behind the gap got an honest provider
        slashed (attack round 54)."""
        from eth_account import Account
        from eth_utils.address import to_checksum_address

        address = "0x" + key.address.hex()
        pending = int(self._rpc("eth_getTransactionCount", [address, "pending"]), 16)
        if pending >= nonce:
            return
        if nonce - pending > MAX_GAP_FILL:
            log.warning(
                "nonces %d..%d of %s hold no transaction: not filled", pending, nonce - 1, address
            )
            return
        for free in range(pending, nonce):
            ours = self._sent_at.get((key.address, free), ())
            if any(self._rpc("eth_getTransactionByHash", [h]) for h in ours):
                log.info(
                    "nonce %d of %s: our transaction is still known, not filled", free, address
                )
                continue
            filler = {
                "chainId": self.chain_id(),
                "nonce": free,
                "to": to_checksum_address(address),
                "value": 0,
                "gas": 21_000,
                "data": b"",
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": tip,
            }
            signed = Account.sign_transaction(filler, key.secret)
            try:
                self._rpc("eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])
                self.stats["gap_fillers"] += 1
                log.warning("nonce %d of %s held no transaction: filled", free, address)
            except RpcErrorReply as exc:
                log.info("filler at nonce %d refused: %s", free, exc)

    @_reply_checked
    def logs(self, address: bytes, first: int, last: int) -> list[Log]:
        out: list[Log] = []
        step = 5_000
        for start in range(first, last + 1, step):  # bounded by the range
            end = min(last, start + step - 1)
            found = self._rpc(
                "eth_getLogs",
                [{"address": "0x" + address.hex(), "fromBlock": hex(start), "toBlock": hex(end)}],
            )
            for lg in found:
                out.append(
                    Log(
                        block=int(lg["blockNumber"], 16),
                        index=int(lg["logIndex"], 16),
                        address=bytes.fromhex(lg["address"][2:]),
                        topics=tuple(bytes.fromhex(t[2:]) for t in lg["topics"]),
                        data=bytes.fromhex(lg["data"][2:]),
                    )
                )
        out.sort(key=lambda lg: (lg.block, lg.index))
        return out


class RpcErrorReply(ChainError):
    """The endpoint answered an RPC with an error (a revert is read from it where a
    revert is expected; anywhere else it reaches the caller as this typed error)."""

    def __init__(self, error: object) -> None:
        super().__init__(str(error)[:500], details={"error": error})
        self.error = error

    def revert_data(self) -> bytes:
        data = self.error.get("data") if isinstance(self.error, dict) else None
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            try:
                return bytes.fromhex(data[2:])
            except ValueError:
                return b""
        return str(self.error).encode()


def revert_code(output: bytes) -> tuple[ErrorCode, str]:
    """The `ErrorCode` in revert data ``Error(string)``; INTERNAL if there is none."""
    if output.startswith(_ERROR_SELECTOR):
        from eth_abi.abi import decode

        try:
            (reason,) = decode(["string"], output[4:])
        except Exception:
            return ErrorCode.INTERNAL, "undecodable revert"
        try:
            return ErrorCode(reason), reason
        except ValueError:
            return ErrorCode.INTERNAL, f"contract reverted: {reason}"
    return ErrorCode.INTERNAL, f"transaction failed: {output[:200]!r}"


# ---------------------------------------------------------------------------
# the event index


class _Index:
    """Settlement events, per-account channel and claim lists, claim frames, block cursor."""

    def __init__(self, path: str | os.PathLike[str] | None, ledger_id: bytes) -> None:
        self.db = sqlite3.connect(":memory:" if path is None else os.fspath(path))
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, fields BLOB NOT NULL,
                at INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS parties (
                kind TEXT NOT NULL, account BLOB NOT NULL, id BLOB NOT NULL,
                ord INTEGER NOT NULL, PRIMARY KEY (kind, account, id));
            CREATE TABLE IF NOT EXISTS frames (
                claim BLOB NOT NULL, kind TEXT NOT NULL, frame BLOB NOT NULL,
                PRIMARY KEY (claim, kind));
            CREATE TABLE IF NOT EXISTS seen (
                block INTEGER NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (block, idx));
            """
        )
        row = self.db.execute("SELECT value FROM meta WHERE key = 'ledger'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('ledger', ?), ('cursor', 0)", (ledger_id,))
            self.db.commit()
        elif bytes(row[0]) != ledger_id:
            raise LocalProtocolError("the index file belongs to another ledger")
        if self._meta_int("seen_from") is None:
            # an index written before `seen` was kept: its own logs are not read again
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('seen_from', ?)", (self.cursor + 1,))

    def _meta_int(self, key: str) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def rescan_from(self, first: int) -> int:
        """The first block a sync may read again from `first` on: not before the blocks
        whose logs `seen` records (an index written before it was kept)."""
        seen_from = self._meta_int("seen_from")
        return max(first, seen_from if seen_from is not None else 0)

    def unseen(self, logs: Sequence[Log]) -> list[Log]:
        """The logs of `logs` not read before (by block and index in block; only those at
        or below the cursor can have been)."""
        cursor = self.cursor
        out = []
        for lg in logs:
            if lg.block > cursor:
                out.append(lg)
                continue
            row = self.db.execute(
                "SELECT 1 FROM seen WHERE block = ? AND idx = ?", (lg.block, lg.index)
            ).fetchone()
            if row is None:
                out.append(lg)
        return out

    @property
    def cursor(self) -> int:
        cursor = self._meta_int("cursor")
        assert cursor is not None  # written when the index is made
        return cursor

    def last_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def add(
        self,
        decoded: Sequence[tuple[Log, str, dict[str, Any]]],
        cursor: int,
        *,
        read: Sequence[Log] = (),
        keep_from: int = 0,
    ) -> list[tuple[Log, str]]:
        """Index decoded logs ``(log, name, fields)`` and move the cursor to `cursor`.

        Each entry is checked completely before anything of it is written; an entry that
        does not make a valid event or frame (a request with ``n = 0``, a field of the
        wrong type, ...) is left out and returned as ``(log, reason)``. The cursor always
        advances: one bad log never stops the index (issue 14). The logs `read` (indexed,
        skipped or not) of blocks from `keep_from` on are recorded as seen, in the same
        transaction; what is recorded of blocks before it is dropped."""
        skipped: list[tuple[Log, str]] = []
        seq = self.last_seq()
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO seen VALUES (?, ?)",
                [(lg.block, lg.index) for lg in read if lg.block >= keep_from],
            )
            self.db.execute("DELETE FROM seen WHERE block < ?", (keep_from,))
            for lg, name, fields in decoded:
                try:
                    row = _index_row(name, fields)
                except Exception as exc:  # a hostile log is skipped, never fatal
                    skipped.append((lg, f"{name}: {type(exc).__name__}: {exc}"))
                    continue
                if isinstance(row, _FrameRow):
                    self.db.execute(
                        "INSERT OR REPLACE INTO frames VALUES (?, ?, ?)",
                        (row.claim, row.kind, row.frame),
                    )
                    continue
                seq += 1
                self.db.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?)", (seq, name, row.fields, row.at)
                )
                for kind, account, id_ in row.parties:
                    self.db.execute(
                        "INSERT OR IGNORE INTO parties VALUES (?, ?, ?, ?)",
                        (kind, account, id_, seq),
                    )
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'cursor'", (cursor,))
        return skipped

    def events(self, after: int, limit: int) -> list[Event]:
        rows = self.db.execute(
            "SELECT seq, kind, fields, at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        out = []
        for seq, kind, raw, at in rows:
            fields = codec.decode(bytes(raw), max_size=max(len(raw), 1), max_depth=codec.MAX_DEPTH)
            assert isinstance(fields, dict)
            out.append(
                Event(kind=kind, fields={str(k): v for k, v in fields.items()}, at=at, seq=seq)
            )
        return out

    def ids_of(self, kind: str, account: bytes) -> list[bytes]:
        rows = self.db.execute(
            "SELECT id FROM parties WHERE kind = ? AND account = ? ORDER BY ord", (kind, account)
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def claim_ids_of(self, account: bytes, role: str) -> list[bytes]:
        """The claims `account` is a party of whose ClaimFiled event names it as `role`
        (the parties table does not say which; an index written by an earlier version
        is read as it is)."""
        rows = self.db.execute(
            "SELECT p.id, e.fields FROM parties p JOIN events e ON e.seq = p.ord"
            " WHERE p.kind = 'claim' AND p.account = ? ORDER BY p.ord",
            (account,),
        ).fetchall()
        out = []
        for id_, raw in rows:
            fields = codec.decode(bytes(raw), max_size=max(len(raw), 1), max_depth=codec.MAX_DEPTH)
            if isinstance(fields, dict) and fields.get(role) == account:
                out.append(bytes(id_))
        return out

    def claim_filings_of(self, account: bytes, roles: Sequence[str]) -> list[Event]:
        """The ClaimFiled events that name `account` as one of `roles`, in index order."""
        rows = self.db.execute(
            "SELECT e.seq, e.fields, e.at FROM parties p JOIN events e ON e.seq = p.ord"
            " WHERE p.kind = 'claim' AND p.account = ? AND e.kind = 'ClaimFiled'"
            " ORDER BY p.ord",
            (account,),
        ).fetchall()
        out = []
        for seq, raw, at in rows:
            fields = codec.decode(bytes(raw), max_size=max(len(raw), 1), max_depth=codec.MAX_DEPTH)
            if isinstance(fields, dict) and any(fields.get(r) == account for r in roles):
                named = {str(k): v for k, v in fields.items()}
                out.append(Event(kind="ClaimFiled", fields=named, at=at, seq=seq))
        return out

    def frame(self, claim: bytes, kind: str) -> bytes:
        row = self.db.execute(
            "SELECT frame FROM frames WHERE claim = ? AND kind = ?", (claim, kind)
        ).fetchone()
        return b"" if row is None else bytes(row[0])

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True, slots=True)
class _FrameRow:
    claim: bytes
    kind: str  # "request" | "response" | "evidence"
    frame: bytes


@dataclass(frozen=True, slots=True)
class _EventRow:
    fields: bytes  # canonical CBOR
    at: int
    parties: tuple[tuple[str, bytes, bytes], ...]  # (kind, account, id) to index


_ID_FIELDS = {"ChannelOpened": ("channel", "payer", "payee"), "ClaimFiled": ("claim",)}


def _index_row(name: str, fields: dict[str, Any]) -> _FrameRow | _EventRow:
    """What one decoded log adds to the index; raises if it is not a valid event or frame."""
    if name in _EVIDENCE:
        claim = fields["claim"]
        if not isinstance(claim, bytes) or len(claim) != 32:
            raise LocalProtocolError("evidence for a malformed claim id")
        if name == "RequestEvidence":
            return _FrameRow(claim, "request", _request_of(fields).to_frame())
        if name == "ResponseEvidence":
            return _FrameRow(claim, "response", _response_of(fields).to_frame())
        # the evidence frame carries no body (p2pay.core.settlement: the signature is the
        # evidence)
        return _FrameRow(claim, "evidence", _request_of({**fields, "body": b""}).to_frame())
    fields = dict(fields)
    at = fields.pop("at")
    if not isinstance(at, int) or at < 0:
        raise LocalProtocolError("event time is not an int >= 0")
    for key, value in fields.items():
        if not isinstance(value, bytes | int | str) or isinstance(value, bool):
            raise LocalProtocolError(f"event field {key} has an unexpected type")
    for key in _ID_FIELDS.get(name, ()):
        if not isinstance(fields.get(key), bytes) or len(fields[key]) != 32:
            raise LocalProtocolError(f"{name}.{key} is not 32 bytes")
    if name == "ClaimFiled" and not (isinstance(fields.get("n"), int) and fields["n"] >= 1):
        raise LocalProtocolError("ClaimFiled with n < 1")  # never a claimable request
    parties: tuple[tuple[str, bytes, bytes], ...] = ()
    if name == "ChannelOpened":
        parties = tuple(("channel", fields[p], fields["channel"]) for p in ("payer", "payee"))
    elif name == "ClaimFiled":
        parties = tuple(
            ("claim", fields[p], fields["claim"])
            for p in ("claimant", "respondent")
            if isinstance(fields.get(p), bytes)
        )
    return _EventRow(codec.encode(fields), at, parties)


def _request_of(fields: dict[str, Any]) -> Request:
    ledger, channel, n, paid, price, service, body_hash, deadline, sig = fields["voucher"]
    return Request(
        ledger=ledger,
        channel=channel,
        n=n,
        paid=paid,
        price=price,
        service=service,
        body_hash=body_hash,
        deadline=deadline,
        signature=sig,
        body=fields["body"],
    )


def _response_of(fields: dict[str, Any]) -> Response:
    ledger, channel, n, request_hash, status, price, spent, body_hash, sig = fields["answer"]
    return Response(
        ledger=ledger,
        channel=channel,
        n=n,
        request_hash=request_hash,
        status=status,
        price=price,
        spent=spent,
        body_hash=body_hash,
        signature=sig,
        body=fields["body"],
    )


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    """Contract log fields as specs/settlement.md section 7 names and types them."""
    return {_FIELD_NAMES.get(key, key): value for key, value in fields.items()}


# ---------------------------------------------------------------------------
# argument encoding


class _Unencodable(P2payError):
    """An op argument the contract's ABI cannot carry (caught in `_submit`, which answers
    with the rules' own refusal)."""


def _u256(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U256:
        raise _Unencodable
    return value


def _b32(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise _Unencodable
    return value


def _sig(signature: bytes) -> bytes:
    return signature if len(signature) <= 65 else b""


def _voucher(value: object) -> tuple[Any, ...]:
    if not isinstance(value, Request):
        raise _Unencodable
    r = value
    try:
        service = r.service.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        raise _Unencodable from None
    if len(service) > MAX_SERVICE_BYTES:
        raise _Unencodable  # the contract's String[64] could not carry it
    return (
        r.ledger,
        r.channel,
        r.n,
        r.paid,
        r.price,
        r.service,
        r.body_hash,
        r.deadline,
        _sig(r.signature),
    )


_EMPTY_VOUCHER = (b"", bytes(32), 0, 0, 0, "", bytes(32), 0, b"")


def _answer(r: object) -> tuple[Any, ...]:
    """A signed Response as the contract's Answer struct (raises _Unencodable)."""
    if not isinstance(r, Response):
        raise _Unencodable
    return (
        r.ledger,
        r.channel,
        r.n,
        r.request_hash,
        r.status,
        r.price,
        r.spent,
        r.body_hash,
        _sig(r.signature),
    )


def _body(body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise SettlementError(
            f"a claim on an EVM ledger carries at most {MAX_BODY} bytes of body",
            code=ErrorCode.INVALID_ARGUMENT,
        )
    return body


#: Operations a second landing cannot apply twice: a redeem is cumulative (it pays what
#: the channel has not paid yet), and the contract refuses a claim, an answer, a resolve
#: or a close's step made again (CLAIM_EXISTS, CLAIM_CLOSED, CHALLENGE_PENDING,
#: CHANNEL_CLOSED). One of these that ran out of gas is sent again (`Chain.transact`'s
#: `repeatable`); a stake, a top-up, an opening or a transfer is not.
_REPEATABLE = (Redeem, PayeeClose, StartClose, FinalizeClose, FileClaim, AnswerClaim, ResolveClaim)


def _channel_named(op: Op) -> bytes | None:
    """The channel `op` acts on (None: it names none)."""
    if isinstance(op, (TopUp, PayeeClose, StartClose, FinalizeClose)):
        return op.channel
    if isinstance(op, Redeem):
        return op.voucher.channel
    if isinstance(op, FileClaim):
        return op.request.channel
    return None


def _claim_named(op: Op) -> bytes | None:
    """The claim `op` acts on (None: it names none)."""
    if isinstance(op, (AnswerClaim, ResolveClaim)):
        return op.claim
    return None


def _encode_op(op: Op) -> tuple[str, list[Any]]:
    """The contract function and arguments of `op` (raises _Unencodable)."""
    if isinstance(op, Mint):
        return "mint", [_b32(op.account), _u256(op.amount)]
    if isinstance(op, Transfer):
        return "transfer", [_b32(op.to), _u256(op.amount)]
    if isinstance(op, Withdraw):
        return "withdraw", [_u256(op.amount)]
    if isinstance(op, OpenChannel):
        return "open_channel", [_b32(op.payee), _u256(op.deposit), _u256(op.challenge_ms)]
    if isinstance(op, TopUp):
        return "top_up", [_b32(op.channel), _u256(op.amount)]
    if isinstance(op, Redeem):
        voucher = _voucher(op.voucher)
        has = op.amount is not None
        return "redeem", [voucher, has, _u256(op.amount) if has else 0]
    if isinstance(op, PayeeClose):
        has_v = op.voucher is not None
        has_a = op.amount is not None
        return "payee_close", [
            _b32(op.channel),
            has_v,
            _voucher(op.voucher) if has_v else _EMPTY_VOUCHER,
            has_a,
            _u256(op.amount) if has_a else 0,
        ]
    if isinstance(op, StartClose):
        return "start_close", [_b32(op.channel)]
    if isinstance(op, FinalizeClose):
        return "finalize_close", [_b32(op.channel)]
    if isinstance(op, StakeOp):
        return "stake", [_u256(op.amount), _u256(op.penalty), _u256(op.claim_window_ms)]
    if isinstance(op, RequestUnstake):
        return "request_unstake", []
    if isinstance(op, WithdrawStake):
        return "withdraw_stake", []
    if isinstance(op, FileClaim):
        voucher = _voucher(op.request)
        assert isinstance(op.request, Request)
        refusal = op.refusal
        if refusal is not None:
            # refund with the payee's refusal: settled at once as REFUSED (section 5)
            return "file_claim_refused", [
                voucher,
                _body(op.request.body),
                _answer(refusal),
                _body(refusal.body),
            ]
        return "file_claim", [voucher, _body(op.request.body)]
    if isinstance(op, AnswerClaim):
        r = op.response
        if r is None and op.evidence is not None:
            return "answer_claim_evidence", [_b32(op.claim), _voucher(op.evidence)]
        if op.evidence is not None:
            raise _Unencodable
        answer = _answer(r)
        assert isinstance(r, Response)
        return "answer_claim", [_b32(op.claim), answer, _body(r.body)]
    if isinstance(op, ResolveClaim):
        return "resolve_claim", [_b32(op.claim)]
    raise _Unencodable


# ---------------------------------------------------------------------------
# the ledger

KeyLike = LedgerKey


class EvmLedger(OpLedger):
    """A settlement contract on an EVM chain, as a `Ledger`.

    Make one with `EvmLedger.deploy` (new contract) or `EvmLedger.connect` (existing).

    Args:
        chain: where the contract is.
        address: the contract's 20-byte address.
        params: the contract's parameters (read from the chain by `connect`).
        time_unit_us: microseconds per block timestamp unit (see module doc).
        clock: for test chains whose block times the ledger sets: ledger time in ms.
        confirmations: blocks a log or a state must be buried under before the ledger
            shows it: events, and every read (`channel`, `stake_of`, `claim`, `balance`,
            `totals`), are of block ``head - confirmations``; transactions are simulated
            and sent at the latest block. Above 0 it needs a chain with `past_views`.
        index_path: SQLite file of the event index and block cursor (None: in memory).
    """

    def __init__(
        self,
        chain: Chain,
        address: bytes,
        params: Params,
        *,
        time_unit_us: int,
        clock: Callable[[], int] | None = None,
        confirmations: int = 0,
        index_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(confirmations, bool) or not isinstance(confirmations, int):
            raise LocalProtocolError(f"confirmations must be an int, not {confirmations!r}")
        if confirmations < 0:
            raise LocalProtocolError("confirmations must be >= 0")
        if confirmations > 0 and not chain.past_views:
            raise LocalProtocolError(
                f"{type(chain).__name__} cannot read an earlier block's state: "
                "confirmations must be 0 on it"
            )
        self.chain = chain
        self.address = address
        self._params = params
        self._time_unit_us = time_unit_us
        self._clock = clock
        self._confirmations = confirmations
        self._abi = _Abi(load_artifact("Settlement")["abi"])
        self._index = _Index(index_path, params.ledger_id)
        self._keys: dict[bytes, EvmKey] = {}
        self._last_at = 0
        self._closed = False
        self._sync_lock = trio.Lock()
        self.gas_used: dict[str, list[int]] = {}  # per contract function (for the gas table)
        self.skipped_logs = 0  # logs of the contract that could not be indexed (issue 14)
        self.skipped: collections.deque[str] = collections.deque(maxlen=100)  # their reasons
        # simulations' refusals the confirmed reading contradicted, sent all the same
        self.unbelieved_refusals = 0
        # frames of the claims against us filed in blocks not confirmed yet (the last
        # `claims_filed_against`), by claim id and kind; at most `_TAIL_CLAIMS` claims
        self._tail_frames: dict[bytes, dict[str, bytes]] = {}

    # --- construction
    @classmethod
    async def deploy(
        cls,
        chain: Chain,
        deployer: KeyLike,
        *,
        dev: bool = True,
        token: bytes | None = None,
        time_unit_us: int = 1_000_000,
        clock: Callable[[], int] | None = None,
        confirmations: int = 0,
        index_path: str | os.PathLike[str] | None = None,
        **overrides: int,
    ) -> EvmLedger:
        """Deploy a settlement contract (and, without `token`, a `TestToken` for it).

        Args:
            chain: the chain.
            deployer: pays for the deployments.
            dev: a development ledger (``mint`` allowed; needs a token with a public mint).
            token: the ERC-20 (24 decimals) that is the ledger's money.
            time_unit_us: 10**6 on a real chain (timestamps in s), 1 on a timed test chain.
            clock, confirmations, index_path: as for the constructor.
            overrides: `Params` fields other than ``ledger_id`` and ``dev``.

        Returns:
            The ledger.

        Raises:
            LocalProtocolError: a deployment failed or a parameter is invalid.
        """
        key = _as_evm_key(deployer)
        if overrides.get("max_claim_body", MAX_BODY) != MAX_BODY:
            raise LocalProtocolError(f"an EVM ledger's max_claim_body is {MAX_BODY}")
        overrides.pop("max_claim_body", None)
        defaults = Params(ledger_id=b"x", dev=dev, **overrides)  # validates the overrides
        if token is None:
            token_art = load_artifact("TestToken")
            res = await _run(
                chain, chain.transact, key, None, bytes.fromhex(token_art["bytecode"][2:])
            )
            if not res.ok:
                raise LocalProtocolError(f"token deployment failed: {revert_code(res.output)[1]}")
            token = res.output
        from eth_abi.abi import encode

        ctor = encode(
            ["address", "bool"] + ["uint256"] * 9,
            [
                "0x" + token.hex(),
                dev,
                defaults.claim_bond,
                defaults.slash_to_claimant_bps,
                defaults.min_challenge_ms,
                defaults.max_challenge_ms,
                defaults.min_claim_window_ms,
                defaults.max_claim_window_ms,
                defaults.max_deadline_horizon_ms,
                defaults.claims_per_window,
                time_unit_us,
            ],
        )
        art = load_artifact("Settlement")
        res = await _run(
            chain, chain.transact, key, None, bytes.fromhex(art["bytecode"][2:]) + ctor
        )
        if not res.ok:
            raise LocalProtocolError(f"settlement deployment failed: {revert_code(res.output)[1]}")
        return await cls.connect(
            chain, res.output, clock=clock, confirmations=confirmations, index_path=index_path
        )

    @classmethod
    async def connect(
        cls,
        chain: Chain,
        address: bytes,
        *,
        clock: Callable[[], int] | None = None,
        confirmations: int = 0,
        index_path: str | os.PathLike[str] | None = None,
    ) -> EvmLedger:
        """Attach to a deployed settlement contract; its parameters are read from the chain.

        Raises:
            LocalProtocolError: no settlement contract answers at `address`.
        """
        abi = _Abi(load_artifact("Settlement")["abi"])

        async def get(name: str) -> Any:
            res = await _run(chain, chain.call, address, abi.calldata(name, []))
            if not res.ok or not res.output:
                raise LocalProtocolError(f"no settlement contract at 0x{address.hex()}")
            return abi.decode_output(name, res.output)[0]

        chain_id = await _run(chain, chain.chain_id)
        ledger_id = evm_ledger_id(chain_id, address)
        if bytes(await get("ledger_id")) != ledger_id:
            raise LocalProtocolError("the contract reports another ledger id")
        version = int(await get("VERSION"))
        if version != CONTRACT_VERSION:
            raise LocalProtocolError(
                f"the settlement contract at 0x{address.hex()} speaks rules version {version}; "
                f"this node needs {CONTRACT_VERSION} (deploy a new contract)"
            )
        params = Params(
            ledger_id=ledger_id,
            dev=bool(await get("dev")),
            claim_bond=int(await get("claim_bond")),
            slash_to_claimant_bps=int(await get("slash_to_claimant_bps")),
            min_challenge_ms=int(await get("min_challenge_ms")),
            max_challenge_ms=int(await get("max_challenge_ms")),
            min_claim_window_ms=int(await get("min_claim_window_ms")),
            max_claim_window_ms=int(await get("max_claim_window_ms")),
            max_deadline_horizon_ms=int(await get("max_deadline_horizon_ms")),
            max_claim_body=int(await get("max_claim_body")),
            claims_per_window=int(await get("claims_per_window")),
        )
        return cls(
            chain,
            address,
            params,
            time_unit_us=int(await get("time_unit_us")),
            clock=clock,
            confirmations=confirmations,
            index_path=index_path,
        )

    # --- identity
    @property
    def ledger_id(self) -> bytes:
        return self._params.ledger_id

    @property
    def params(self) -> Params:
        return self._params

    def register_key(self, key: KeyLike) -> EvmKey:
        """Remember `key` so that pre-built ops (`submit`) from its account can be signed."""
        evm_key = _as_evm_key(key)
        self._keys[evm_key.account] = evm_key
        return evm_key

    # --- time
    def _chain_ms(self, timestamp: int) -> int:
        return timestamp * self._time_unit_us // 1000

    async def now(self) -> int:
        last = await self._call_chain(self.chain.last_timestamp)
        self._last_at = max(self._last_at, self._chain_ms(last))
        if self._clock is not None:
            self._last_at = max(self._last_at, int(self._clock()))
        return self._last_at

    def _next_timestamp(self) -> int | None:
        if self._clock is None:
            return None
        self._last_at = max(self._last_at, int(self._clock()))
        return self._last_at * 1000 // self._time_unit_us

    # --- plumbing
    async def _call_chain(self, fn: Callable[[*_Args], _T], *args: *_Args) -> _T:
        return await _run(self.chain, fn, *args)

    @property
    def confirmations(self) -> int:
        """Blocks a log or a state is buried under before this ledger shows it."""
        return self._confirmations

    async def _view(self, name: str, *args: Any, latest: bool = False) -> tuple[Any, ...]:
        """A view of the contract at the latest block, or with `confirmations` at block
        ``head - confirmations`` (the block events are read up to): a deposit, a stake,
        a claim or a close that a reorganisation shallower than that drops is never
        shown (settlement.md 10, "Confirmations"). `latest`: the latest block all the
        same (what a node must defend against, never what it gives credit on)."""
        block = None
        if self._confirmations and not latest:
            head = await self._call_chain(self.chain.head)
            block = max(head - self._confirmations, 0)
        data = self._abi.calldata(name, args)
        res = await self._call_chain(self.chain.call, self.address, data, None, block)
        if not res.ok:
            if not res.output.startswith(_ERROR_SELECTOR):
                # not the contract's refusal: the endpoint's (e.g. a block it has not, or
                # whose state it pruned): read again later, like an unreachable endpoint
                where = "latest" if block is None else f"block {block}"
                raise ChainUnavailable(
                    f"{name} at {where}: the endpoint refused the read: {res.output[:200]!r}"
                )
            code, message = revert_code(res.output)
            raise SettlementError(message, code=code)
        if block is not None and not res.output:
            # no code at that block: the contract is younger than `confirmations` blocks
            raise ChainUnavailable(
                f"{name} at block {block}: no contract at 0x{self.address.hex()} yet (it is "
                f"less than {self._confirmations} blocks deep: read again later)"
            )
        try:
            return self._abi.decode_output(name, res.output)
        except Exception as exc:  # an endpoint's garbled eth_call result (attack round 40)
            raise ChainUnavailable(
                f"{name}: unreadable eth_call result: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None

    async def claims_filed_against(self, account: bytes) -> list[Event]:
        """The ClaimFiled events naming `account` as respondent in the blocks that are not
        confirmed yet (``head - confirmations + 1 .. head``), read from the chain each time
        and never indexed (``seq`` 0: a reorganisation may still drop them; the index gets
        them, numbered, once they are `confirmations` deep). Their frames are kept for
        `claim` (at most `_TAIL_CLAIMS` claims). A claim is a threat to answer within its
        window, not a state to trust: read k blocks late, it ended unanswered when k block
        times exceeded the window, and an honest provider was slashed (attack round 47).
        Empty without `confirmations`. A log that does not make a valid event or frame is
        left out, as a sync leaves it out."""
        if not self._confirmations:
            return []
        head = await self._call_chain(self.chain.head)
        first = max(self._index.cursor, head - self._confirmations) + 1
        if first > head:
            return []
        read = await self._call_chain(self.chain.logs, self.address, first, head)
        found: list[Event] = []
        frames: dict[bytes, dict[str, bytes]] = {}
        for lg in read:
            decoded = self._decode(lg)
            if isinstance(decoded, str):
                continue  # left out here as a sync leaves it out (and counts it)
            name, fields = decoded
            try:
                row = _index_row(name, fields)
            except Exception:  # not a valid event or frame: as a sync leaves it out
                continue
            if isinstance(row, _FrameRow):
                frames.setdefault(row.claim, {})[row.kind] = row.frame
                continue
            if name != "ClaimFiled" or fields.get("respondent") != account:
                continue
            event_fields = dict(fields)
            at = event_fields.pop("at")
            found.append(Event(kind=name, fields=event_fields, at=at, seq=0))
        # only the frames of these claims, and only while they are not confirmed (then the
        # index has them): the frames of every claim in those blocks, kept past their
        # confirmation, held 1.3 MB for 40 claims against another account (attack round 48)
        mine = [event.fields["claim"] for event in found][-_TAIL_CLAIMS:]
        self._tail_frames = {claim: frames[claim] for claim in mine if claim in frames}
        return found

    async def sync(self) -> int:
        """Index the contract's logs up to ``head - confirmations``; returns the cursor.

        One sync at a time: two tasks (e.g. two watchers sharing this ledger) reading the
        same cursor would index the same logs twice and number them twice."""
        async with self._sync_lock:
            return await self._sync()

    async def _sync(self) -> int:
        """Read the logs of the blocks up to ``head - confirmations``, the last
        `RESCAN_BLOCKS` before the cursor again (their logs read already are known by
        block and index, `_Index.unseen`): an endpoint whose log backend lags its head
        backend leaves out the logs of its newest blocks, and a cursor moved past them
        never asked for them again: a ClaimFiled hidden so was never answered, and an
        honest provider was slashed (attack round 40)."""
        head = await self._call_chain(self.chain.head)
        target = head - self._confirmations
        cursor = self._index.cursor
        if target <= cursor:
            return cursor
        first = self._index.rescan_from(max(cursor + 1 - RESCAN_BLOCKS, 1))
        first = min(first, cursor + 1)
        read = await self._call_chain(self.chain.logs, self.address, first, target)
        logs = self._index.unseen(read)
        decoded: list[tuple[Log, str, dict[str, Any]]] = []
        for lg in logs:
            found = self._decode(lg)
            if isinstance(found, str):
                self._skip(lg, found)
                continue
            decoded.append((lg, *found))
        keep_from = target + 1 - RESCAN_BLOCKS
        for lg, reason in self._index.add(decoded, target, read=read, keep_from=keep_from):
            self._skip(lg, reason)
        return target

    def _decode(self, lg: Log) -> tuple[str, dict[str, Any]] | str:
        """A contract log as (event name, fields as the settlement spec names them), or why
        it is none: any malformed log is left out, never fatal."""
        try:
            found = self._abi.decode_log(lg.topics, lg.data)
        except Exception as exc:
            return f"undecodable log: {type(exc).__name__}: {exc}"
        if found is None:
            return "unknown event"
        name, fields = found
        return name, fields if name in _EVIDENCE else _plain(fields)

    def _skip(self, lg: Log, reason: str) -> None:
        """Record a log that cannot be indexed (issue 14): logged, counted, skipped; the
        cursor moves past it all the same, so one hostile log never stops a reader."""
        self.skipped_logs += 1
        where = f"block {lg.block} log {lg.index}"
        self.skipped.append(f"{where}: {reason}"[:300])
        log.warning("EVM ledger 0x%s: skipped %s: %s", self.address.hex(), where, reason[:300])

    async def _submit(self, op: Op, key: Signer | None = None) -> Receipt:
        # the chain transaction is signed with the registered key of op.sender (`_k`)
        if self._closed:
            raise LocalProtocolError("ledger is closed")
        timestamp = self._next_timestamp()
        try:
            name, args = _encode_op(op)
        except _Unencodable:
            # argument checks come first (section 2): the rules on an empty state give the
            # code the contract would give for the first bad argument
            now = self._last_at
            try:
                apply(State(params=self._params), op, now)
            except SettlementError as exc:
                if exc.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.INVALID_AMOUNT):
                    raise
            raise SettlementError(
                "argument not representable on an EVM ledger", code=ErrorCode.INVALID_ARGUMENT
            ) from None
        sender = op.sender
        key = self._keys.get(sender) if isinstance(sender, bytes) else None
        if key is None:
            raise LocalProtocolError("no key for this sender: pass the key (or register_key)")
        data = self._abi.calldata(name, args)
        repeatable = isinstance(op, _REPEATABLE)
        res = await self._call_chain(
            self.chain.transact, key, self.address, data, timestamp, True, repeatable
        )
        if not res.ok and not res.block and await self._contradicted(op, res.output):
            self.unbelieved_refusals += 1
            log.warning(
                "%s: the endpoint's simulation refused it (%s) on what block head - %d shows: "
                "sent for the chain to decide",
                name,
                revert_code(res.output)[1],
                self._confirmations,
            )
            res = await self._call_chain(
                self.chain.transact, key, self.address, data, timestamp, False, repeatable
            )
        if not res.ok:
            code, message = revert_code(res.output)
            raise SettlementError(message, code=code)
        self.gas_used.setdefault(name, []).append(res.gas_used)
        before = self._index.last_seq()
        await self.sync()
        if self._confirmations == 0:
            stored = tuple(self._index.events(before, 1 << 30))
        else:
            stored = ()
        return Receipt(self._result(name, res, op), stored)

    async def _contradicted(self, op: Op, refusal: bytes) -> bool:
        """Whether a simulation's `refusal` of `op` is one the reading at block
        ``head - confirmations`` rules out (settlement.md 10, "Confirmations"): UNKNOWN_CHANNEL
        or UNKNOWN_CLAIM for a channel or a claim that block holds (the contract removes
        neither); a claim's VOUCHER_EXCEEDS_DEPOSIT for a voucher within the deposit it
        shows (a deposit never shrinks); a claim's NOT_STAKED against a stake it shows, not
        unbonding (withdrawing one takes the unbonding period). False without
        confirmations. Raises `ChainUnavailable` if that reading fails."""
        if not self._confirmations:
            return False
        code, _ = revert_code(refusal)
        try:
            if code is ErrorCode.UNKNOWN_CLAIM:
                claim = _claim_named(op)
                return claim is not None and int((await self._view("claims", claim))[0][10]) != 0
            if code not in _CHECKABLE:
                return False
            named = _channel_named(op)
            channel = None if named is None else await self.channel(named)
            if channel is None:
                return False
            if code is ErrorCode.UNKNOWN_CHANNEL:
                return True
            if not isinstance(op, FileClaim):
                return False
            if code is ErrorCode.VOUCHER_EXCEEDS_DEPOSIT:
                return op.request.paid <= channel.deposit
            stake = await self.stake_of(channel.payee)
            return stake is not None and stake.amount > 0 and stake.unbonding_at == 0
        except (P2payError, OSError) as exc:
            # unchecked, the refusal is neither believed nor overruled: read again later
            # (believed, one failed read ended an answer task on a final UNKNOWN_CLAIM and
            # an honest provider was UPHELD before the next rescan: attack round 51)
            raise ChainUnavailable(
                f"the simulation refused it ({code}); the reading at head - "
                f"{self._confirmations} to check that against failed: {exc}"
            ) from None

    def _result(self, name: str, res: TxResult, op: Op) -> Any:
        own = [
            self._abi.decode_log(lg.topics, lg.data)
            for lg in res.logs
            if lg.address == self.address
        ]
        found = [f for f in own if f is not None]
        if name == "open_channel":
            return next(bytes(f["channel"]) for n, f in found if n == "ChannelOpened")
        if name in ("file_claim", "file_claim_refused"):
            return next(bytes(f["claim"]) for n, f in found if n == "ClaimFiled")
        if name in ("redeem", "payee_close"):
            return next((int(f["amount"]) for n, f in found if n == "Redeemed"), 0)
        return None

    # --- operations: accept EvmKey or Keypair; remember the key for signing
    def _k(self, key: KeyLike) -> EvmKey:
        return self.register_key(key)

    async def mint(self, key: KeyLike, account: bytes, amount: int) -> None:
        await super().mint(self._k(key), account, amount)

    async def transfer(self, key: KeyLike, to: bytes, amount: int) -> None:
        await super().transfer(self._k(key), to, amount)

    async def withdraw(self, key: KeyLike, amount: int) -> None:
        await super().withdraw(self._k(key), amount)

    async def open_channel(
        self, key: KeyLike, payee: bytes, deposit: int, challenge_ms: int
    ) -> bytes:
        return await super().open_channel(self._k(key), payee, deposit, challenge_ms)

    async def top_up(self, key: KeyLike, channel_id: bytes, amount: int) -> None:
        await super().top_up(self._k(key), channel_id, amount)

    async def redeem(self, key: KeyLike, voucher: Request, amount: int | None = None) -> int:
        return await super().redeem(self._k(key), voucher, amount)

    async def payee_close(
        self,
        key: KeyLike,
        channel_id: bytes,
        voucher: Request | None = None,
        amount: int | None = None,
    ) -> int:
        return await super().payee_close(self._k(key), channel_id, voucher, amount)

    async def start_close(self, key: KeyLike, channel_id: bytes) -> None:
        await super().start_close(self._k(key), channel_id)

    async def finalize_close(self, key: KeyLike, channel_id: bytes) -> None:
        await super().finalize_close(self._k(key), channel_id)

    async def stake(self, key: KeyLike, amount: int, penalty: int, claim_window_ms: int) -> None:
        await super().stake(self._k(key), amount, penalty, claim_window_ms)

    async def request_unstake(self, key: KeyLike) -> None:
        await super().request_unstake(self._k(key))

    async def withdraw_stake(self, key: KeyLike) -> None:
        await super().withdraw_stake(self._k(key))

    async def file_claim(
        self, key: KeyLike, request: Request, refusal: Response | None = None
    ) -> bytes:
        """File a claim; with `refusal` (the payee's signed refusal of `request`) it is
        settled at once as REFUSED and the price refunded (`file_claim_refused`)."""
        return await super().file_claim(self._k(key), request, refusal)

    async def answer_claim(
        self,
        key: KeyLike,
        claim_id: bytes,
        response: Response | None = None,
        *,
        evidence: Request | None = None,
    ) -> None:
        """Answer with the signed response, or with `evidence` (a payer-signed request in
        tiling conflict with the claimed one)."""
        await super().answer_claim(self._k(key), claim_id, response, evidence=evidence)

    async def resolve_claim(self, key: KeyLike, claim_id: bytes) -> None:
        await super().resolve_claim(self._k(key), claim_id)

    async def deposit(self, key: KeyLike, amount: int) -> None:
        """Move `amount` tokens from the key's address into the ledger (approve + deposit).

        Raises:
            SettlementError: the contract refused (e.g. INSUFFICIENT_FUNDS at the token).
        """
        evm_key = self.register_key(key)
        token = bytes.fromhex((await self._view("token"))[0][2:])
        from eth_abi.abi import encode

        approve = keccak256(b"approve(address,uint256)")[:4] + encode(
            ["address", "uint256"], ["0x" + self.address.hex(), _u256(amount)]
        )
        res = await self._call_chain(
            self.chain.transact, evm_key, token, approve, self._next_timestamp()
        )
        if not res.ok:
            raise SettlementError("token approve failed", code=ErrorCode.INSUFFICIENT_FUNDS)
        data = self._abi.calldata("deposit", [_u256(amount)])
        res = await self._call_chain(
            self.chain.transact, evm_key, self.address, data, self._next_timestamp()
        )
        if not res.ok:
            code, message = revert_code(res.output)
            if code is ErrorCode.INTERNAL:
                code = ErrorCode.INSUFFICIENT_FUNDS  # the token's transferFrom refused
            raise SettlementError(message, code=code)
        self.gas_used.setdefault("deposit", []).append(res.gas_used)
        self._tx_count += 1
        await self.sync()

    # --- reads
    async def balance(self, account: bytes) -> int:
        address = (
            address_of_account(account)
            if isinstance(account, bytes) and len(account) == 32
            else None
        )
        if address is None:
            return 0
        return int((await self._view("balances", "0x" + address.hex()))[0])

    async def channel(self, channel_id: bytes, *, latest: bool = False) -> Channel | None:
        """The channel as of block ``head - confirmations``; with `latest`, as of the
        latest block whatever `confirmations` says: a watcher's look for a close it must
        answer at once (C-8), never a reading to give credit on."""
        if not isinstance(channel_id, bytes) or len(channel_id) != 32:
            return None
        (
            payer,
            payee,
            deposit,
            redeemed,
            challenge,
            state,
            closes_at,
            paid_seen,
            refunded,
            clawed,
        ) = (await self._view("channels", channel_id, latest=latest))[0]
        if state not in _CHANNEL_STATES:
            return None
        return Channel(
            id=channel_id,
            payer=account_of_address(bytes.fromhex(payer[2:])),
            payee=account_of_address(bytes.fromhex(payee[2:])),
            deposit=int(deposit),
            redeemed=int(redeemed),
            challenge_ms=int(challenge),
            state=_CHANNEL_STATES[int(state)],
            closes_at=int(closes_at),
            paid_seen=int(paid_seen),
            refunded=int(refunded),
            clawed=int(clawed),
        )

    async def stake_of(self, account: bytes) -> Stake | None:
        address = (
            address_of_account(account)
            if isinstance(account, bytes) and len(account) == 32
            else None
        )
        if address is None:
            return None
        amount, penalty, window, unbonding_at, open_claims, requested_at = (
            await self._view("stakes", "0x" + address.hex())
        )[0]
        if penalty == 0:
            return None
        return Stake(
            account=account,
            amount=int(amount),
            penalty=int(penalty),
            claim_window_ms=int(window),
            unbonding_at=int(unbonding_at),
            open_claims=int(open_claims),
            unstake_requested_at=int(requested_at),
        )

    async def claim(self, claim_id: bytes, *, latest: bool = False) -> Claim | None:
        """The claim as of block ``head - confirmations``; with `latest`, as of the latest
        block (a claim against us is answered as soon as it is seen, never k blocks late:
        `claims_filed_against`), its frames from the index or from that read of the
        blocks not confirmed yet."""
        if not isinstance(claim_id, bytes) or len(claim_id) != 32:
            return None
        (
            claimant,
            respondent,
            channel,
            n,
            price,
            paid,
            deadline,
            bond,
            filed_at,
            window_ends,
            state,
            slashed,
            refund,
            clawed,
        ) = (await self._view("claims", claim_id, latest=latest))[0]
        if state not in _CLAIM_STATES:
            return None
        await self.sync()
        tail = self._tail_frames.get(claim_id, {})
        return Claim(
            id=claim_id,
            claimant=account_of_address(bytes.fromhex(claimant[2:])),
            respondent=account_of_address(bytes.fromhex(respondent[2:])),
            channel=bytes(channel),
            n=int(n),
            price=int(price),
            paid=int(paid),
            deadline=int(deadline),
            bond=int(bond),
            filed_at=int(filed_at),
            window_ends=int(window_ends),
            state=_CLAIM_STATES[int(state)],
            request_frame=self._index.frame(claim_id, "request") or tail.get("request", b""),
            response_frame=self._index.frame(claim_id, "response") or tail.get("response", b""),
            evidence_frame=self._index.frame(claim_id, "evidence") or tail.get("evidence", b""),
            slashed=int(slashed),
            refund=int(refund),
            clawed=int(clawed),
        )

    async def channels_of(self, account: bytes) -> list[Channel]:
        await self.sync()
        out = []
        for cid in self._index.ids_of("channel", account):
            found = await self.channel(cid)
            if found is not None:
                out.append(found)
        return out

    async def claims_of(self, account: bytes) -> list[Claim]:
        await self.sync()
        out = []
        for claim_id in self._index.ids_of("claim", account):
            found = await self.claim(claim_id)
            if found is not None:
                out.append(found)
        return out

    async def claim_ids_of(self, account: bytes, role: ClaimRole | None = None) -> list[bytes]:
        check_claim_role(role)
        await self.sync()
        if role is None:
            return self._index.ids_of("claim", account)
        return self._index.claim_ids_of(account, role)

    async def claim_filings_of(self, account: bytes, role: ClaimRole | None = None) -> list[Event]:
        checked = check_claim_role(role)
        roles: tuple[str, ...] = CLAIM_ROLES if checked is None else (checked,)
        await self.sync()
        return self._index.claim_filings_of(account, roles)

    async def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        if after < 0 or limit < 0:
            raise LocalProtocolError("after and limit must be >= 0")
        await self.sync()
        return self._index.events(after, limit)

    async def totals(self) -> Totals:
        supply, balances, escrow, stakes, bonds, burnt = (await self._view("totals"))[0]
        return Totals(
            supply=int(supply),
            balances=int(balances),
            escrow=int(escrow),
            stakes=int(stakes),
            bonds=int(bonds),
            burnt=int(burnt),
        )

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self._closed:
            self._closed = True
            self._index.close()


def _as_evm_key(key: KeyLike) -> EvmKey:
    if isinstance(key, EvmKey):
        return key
    if isinstance(key, Keypair):
        return EvmKey.derive(key)
    raise LocalProtocolError("a key is an EvmKey or an Ed25519 Keypair")


async def _run(chain: Chain, fn: Callable[[*_Args], _T], *args: *_Args) -> _T:
    if chain.blocking_io:
        return await trio.to_thread.run_sync(lambda: fn(*args))
    await trio.lowlevel.checkpoint()
    return fn(*args)


# keep dataclasses imported for users who replace entities (reads return fresh objects)
_ = dataclasses
