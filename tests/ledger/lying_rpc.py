"""A lying JSON-RPC endpoint in front of anvil, and real CLI nodes on it (attack round 40).

`LyingRpc` is a threaded stdlib HTTP server on 127.0.0.1 that relays every JSON-RPC call to
anvil and, by switch (`LyingRpc.lies`), lies to whoever uses it:

* ``logs_lag``: `eth_getLogs` leaves out the logs of the newest block asked for (a log
  backend one block behind the head backend, as load-balanced endpoints are);
* ``hide_topics``: `eth_getLogs` leaves out logs whose first topic is in this set;
* ``drop_sends``: how many of the next `eth_sendRawTransaction` calls answer the hash and
  are never forwarded (counted down);
* ``fake_receipts``: `eth_getTransactionReceipt` of a dropped hash answers status 1;
* ``garble``: method name -> the ``result`` answered instead of the true one (``None``: a
  null result; counted in `garbled`).
* ``once`` (attack round 44): method name -> a list of lies answered in turn, one a call,
  then the truth again; a lie is a ``result`` or a function of the true ``result`` (e.g.
  ``lambda head: hex(int(head, 16) + 200)``); each one answered is counted in `garbled`.
* ``rewrite`` (attack round 44): method name -> a function of the true ``result`` whose
  value is answered instead, every call (counted in `garbled`).

`anvil` starts anvil mining a block every second (block times follow the wall clock, as
the CLI's untimed `Web3Chain` expects) and stops it by its PID. `cli` runs
``python -m p2pay`` in its own process. `client_ledger`, `file_withheld_claim` and
`claim_outcome` play the client of a claim through anvil itself (never the proxy). Every
wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pay import testing
from p2pay.core.evmsig import EvmKey
from p2pay.core.messages import Request
from p2pay.core.settlement import Claim, ClaimState
from p2pay.ledger.evm import EvmLedger, Web3Chain

TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rpc(url: str, method: str, params: list[Any]) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.loads(reply.read())["result"]


ANVIL_MISSING = "anvil not found: npm install @foundry-rs/anvil (.ci/run does) or set P2PAY_ANVIL"


def skip_without_anvil() -> None:
    """Skip the calling test module (at import) when there is no anvil to run."""
    if testing.anvil_binary() is None:
        pytest.skip(ANVIL_MISSING, allow_module_level=True)


@contextmanager
def anvil() -> Iterator[str]:
    """anvil on a free 127.0.0.1 port, a block a second; its URL once it answers."""
    binary = testing.anvil_binary()
    assert binary is not None
    with testing.running_anvil(binary, block_time_s=1) as url:
        yield url


class LyingRpc:
    """The proxy; `url` is its address, `lies` its switches (read at each call)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lies: dict[str, Any] = {}
        self.dropped: set[str] = set()
        self.counts: dict[str, int] = {}
        self.garbled: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                doc = json.loads(raw)
                if isinstance(doc, list):
                    out: Any = [proxy.handle(d) for d in doc]
                else:
                    out = proxy.handle(doc)
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LyingRpc:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def _relay(self, doc: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.upstream, json.dumps(doc).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer

    def handle(self, doc: dict[str, Any]) -> dict[str, Any]:
        method = doc.get("method", "")
        self.counts[method] = self.counts.get(method, 0) + 1
        lies = self.lies
        base = {"jsonrpc": "2.0", "id": doc.get("id")}
        garble = lies.get("garble", {})
        if method in garble:
            self.garbled[method] = self.garbled.get(method, 0) + 1
            return {**base, "result": garble[method]}
        if method == "eth_sendRawTransaction" and lies.get("drop_sends", 0) > 0:
            lies["drop_sends"] -= 1
            raw = bytes.fromhex(doc["params"][0][2:])
            from eth_utils.crypto import keccak

            tx_hash = "0x" + keccak(raw).hex()
            self.dropped.add(tx_hash)
            return {**base, "result": tx_hash}
        if (
            method == "eth_getTransactionReceipt"
            and lies.get("fake_receipts")
            and doc["params"][0] in self.dropped
        ):
            head = rpc(self.upstream, "eth_blockNumber", [])
            return {
                **base,
                "result": {
                    "transactionHash": doc["params"][0],
                    "blockNumber": head,
                    "status": "0x1",
                    "gasUsed": "0x5208",
                    "logs": [],
                    "contractAddress": None,
                },
            }
        once = lies.get("once", {})
        if once.get(method):
            lie = once[method].pop(0)
            self.garbled[method] = self.garbled.get(method, 0) + 1
            if callable(lie):
                lie = lie(self._relay(doc).get("result"))
            return {**base, "result": lie}
        rewrite = lies.get("rewrite", {})
        if method in rewrite:
            self.garbled[method] = self.garbled.get(method, 0) + 1
            return {**base, "result": rewrite[method](self._relay(doc).get("result"))}
        answer = self._relay(doc)
        if method == "eth_getLogs" and isinstance(answer.get("result"), list):
            found = answer["result"]
            if lies.get("logs_lag"):
                newest = int(doc["params"][0]["toBlock"], 16)
                found = [lg for lg in found if int(lg["blockNumber"], 16) < newest]
            hidden = lies.get("hide_topics", ())
            if hidden:
                found = [lg for lg in found if not lg["topics"] or lg["topics"][0] not in hidden]
            answer["result"] = found
        return answer


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("P2PAY_HOME", None)
    return env


def cli(cwd: Path, *args: str, timeout: float = TIMEOUT) -> str:
    """Run ``p2pay ARGS`` in `cwd`; its stdout (fails the test with its stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "p2pay", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"p2pay {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout


def cli_json(cwd: Path, *args: str) -> Any:
    return json.loads(cli(cwd, *args, "--json"))


class NodeProcess:
    """`p2pay --home HOME node run ...` in its own process; `addr` from its first line."""

    def __init__(self, cwd: Path, home: str, *extra: str) -> None:
        self.log = cwd / f"node-{home}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p2pay", "--home", home, "node", "run", *extra],
                cwd=cwd,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + 60
        import select

        fd = self.proc.stdout.fileno()
        while b"\n" not in line and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                line += chunk
        first = line.decode("utf-8", "replace").split("\n")[0]
        if not first.startswith("listening "):
            self.stop()
            raise AssertionError(f"node did not start: {first!r}\n{self.log.read_text()}")
        self.addr = first.split()[1]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.log.read_text(encoding="utf-8", errors="replace")


def staked_provider(d: Path, rpc_url: str, proxy: LyingRpc) -> tuple[str, bytes]:
    """A dev contract on anvil (deployed from home ``dep``) and home ``p``, the provider,
    reading it through `proxy`: funded, staked 0.5 token (penalty 0.1 token, claim window
    20 s), watching every 0.2 s. Returns the contract's address (0x...) and p's account."""
    cli(d, "--home", "dep", "init")
    cli(d, "--home", "dep", "ledger", "deploy", rpc_url, "--dev", "--fund-dev-gas",
        "--use", "--min-challenge", "1s", "--min-claim-window", "1s")  # fmt: skip
    contract = str(cli_json(d, "--home", "dep", "id")["ledger"]).rpartition(":")[2]
    cli(d, "--home", "p", "init", "--ledger", f"evm:{proxy.url}:{contract}")
    provider = bytes.fromhex(cli_json(d, "--home", "p", "id")["account"].removeprefix("0x"))
    cli(d, "--home", "p", "ledger", "mint", provider.hex(), "1 token", "--fund-dev-gas")
    config = d / "p" / "config.toml"
    config.write_text(config.read_text() + "\n[node]\nwatch_interval = 0.2\n")
    cli(d, "--home", "p", "stake", "0.5 token", "--penalty", "100 milli",
        "--claim-window", "20s")  # fmt: skip
    return contract, provider


def start_provider(d: Path) -> NodeProcess:
    """`p2pay node run` for home ``p``, serving ``echo`` at 1000 yocto."""
    return NodeProcess(d, "p", "--listen", "/ip4/127.0.0.1/tcp/0",
                       "--service", "echo=1000", "--min-challenge", "2s")  # fmt: skip


def run(cwd: Path, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``p2pay ARGS`` in `cwd`, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "p2pay", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


ALICE = testing.ALICE  # the client of `client_ledger` (its derived EVM key settles)
PRICE = 1000  # what `start_provider` charges for echo
TOKEN = 10**24


@asynccontextmanager
async def client_ledger(
    rpc_url: str, contract: str, provider: bytes
) -> AsyncIterator[tuple[EvmLedger, bytes]]:
    """ALICE on `contract` through anvil at `rpc_url` (not the proxy): her EVM key funded
    with gas, a token minted to her, a channel of 10**21 yocto (challenge 60 s) open to
    `provider`. Yields the ledger and the channel id; closes the ledger after."""
    ledger = await EvmLedger.connect(Web3Chain(rpc_url), bytes.fromhex(contract[2:]))
    try:
        alice = EvmKey.derive(ALICE)
        ledger.chain.fund(alice.address)  # type: ignore[attr-defined]
        await ledger.mint(ALICE, alice.account, TOKEN)
        cid = await ledger.open_channel(ALICE, provider, 10**21, 60_000)
        yield ledger, cid
    finally:
        await ledger.aclose()


async def withheld_request(ledger: EvmLedger, cid: bytes, price: int = PRICE) -> Request:
    """ALICE's request 1 of channel `cid` (echo ``claimed`` at `price`, its deadline just
    past): claimable at once, as if the provider had taken it and never answered."""
    return Request.create(
        ALICE,
        ledger=ledger.ledger_id,
        channel=cid,
        n=1,
        paid=price,
        price=price,
        service="echo",
        body=b"claimed",
        deadline=await ledger.now() - 1,
    )


async def file_withheld_claim(ledger: EvmLedger, cid: bytes) -> bytes:
    """ALICE claims `withheld_request`. Returns the claim's id."""
    return await ledger.file_claim(ALICE, await withheld_request(ledger, cid))


async def claim_outcome(ledger: EvmLedger, claim_id: bytes) -> Claim:
    """The claim once it left OPEN: answered by the provider, or resolved by ALICE two
    seconds past its window (at most 90 s: the provider's 20 s window and then some)."""
    with trio.fail_after(90):
        while True:
            claim = await ledger.claim(claim_id)
            assert claim is not None
            if claim.state is not ClaimState.OPEN:
                return claim
            if await ledger.now() > claim.window_ends + 2000:
                await ledger.resolve_claim(ALICE, claim_id)
            else:
                await trio.sleep(0.5)
