"""Interop (issue 17): a js-libp2p peer joins p2pay's offer topic and DHT and sees the offers.

tests/interop/js/peer.mjs is a js-libp2p node (TCP, Noise, yamux, identify, ping,
@libp2p/gossipsub, @libp2p/kad-dht; versions pinned by its package-lock.json). It dials
a p2pay discovery node (`p2pay.net.discovery` on a `Libp2pTransport`) on 127.0.0.1,
subscribes to the ledger's offer topic, looks up the providers of (ledger, service) in
the DHT under ``CIDv1(raw, offer_key(ledger, service))``, and prints one JSON line per
event. Both directions are checked:

* the JS peer receives the provider's signed offer, byte for byte as published, and it
  decodes and verifies with the core (`decode_offer`, `check_offer`); its DHT lookup
  finds the provider at the provider's address;
* the p2pay node receives an offer the JS peer publishes (signed for the JS peer's own
  PeerID: the JS peer is a provider like any other) from the JS peer's PeerID, and its
  `find_providers` finds the JS peer's provider record.

The same between a JS peer and a whole p2pay node (`open_node` with libp2p discovery): the
JS peer receives the offer the node announces for the service it serves, and finds the
node in the DHT; a p2pay node's `find` lists the offer of a JS peer whose stake is on the
ledger.

Needs Node.js and the npm modules (``npm ci --prefix tests/interop/js``; .ci/run does
it). Without them these tests skip and say why, except under CI (``CI=true``), where
they fail: a broken install must not pass as a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pay.core.identity import Keypair
from p2pay.core.messages import StakeTerms
from p2pay.core.offers import Offer, check_offer, decode_offer, offer_key, offer_topic
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.base import DiscoveryNet, Stream, Transport
from p2pay.net.discovery import Libp2pDiscovery, open_libp2p_discovery
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import Call, DiscoveryConfig, NodeConfig, open_node

JS_DIR = Path(__file__).resolve().parents[1] / "interop" / "js"
PEER_SCRIPT = JS_DIR / "peer.mjs"
#: the npm packages whose presence, at the version package.json pins, we check
JS_PACKAGES = ("libp2p", "@libp2p/gossipsub", "@libp2p/kad-dht")

LEDGER = b"p2pay:memory:" + bytes.fromhex("1f" * 16)  # an Ed25519 ledger
SERVICE = "echo"
PROVIDER = Keypair.from_seed(bytes([2]) * 32)
JS_SEED = bytes([7]) * 32  # the JS peer's identity, so that the test can sign its offer
JS_KEY = Keypair.from_seed(JS_SEED)
STAKE = StakeTerms(amount=10**21, penalty=10**18, claim_window_ms=60_000)

#: the JS peer gives up by itself after this long (--timeout-ms) ...
JS_TIMEOUT_MS = 60_000
#: ... and the test stops it (by its PID) after this long, whatever it does
JS_RUN_S = 90.0
#: how often the provider republishes its offer while the JS peer runs
ANNOUNCE_EVERY_S = 0.5


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _js_unavailable() -> str | None:
    """Why the JS peer cannot run here, or None."""
    if shutil.which("node") is None:
        return "node not found: the js-libp2p interop peer needs Node.js >= 20"
    pins = json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    for name in JS_PACKAGES:
        manifest = JS_DIR / "node_modules" / name / "package.json"
        if not manifest.is_file():
            return f"npm module {name} missing: run `npm ci --prefix tests/interop/js` (.ci/run)"
        version = json.loads(manifest.read_text()).get("version")
        if version != pins[name]:
            return (
                f"npm module {name} is {version}, tests/interop/js/package.json pins "
                f"{pins[name]}: run `npm ci --prefix tests/interop/js`"
            )
    return None


def _require_js() -> str:
    """The `node` to run peer.mjs with; skips, or fails under CI, when it cannot run."""
    reason = _js_unavailable()
    if reason is not None:
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: the interop test must run in CI)")
        pytest.skip(reason)
    binary = shutil.which("node")
    assert binary is not None
    return binary


@pytest.fixture
def node_binary() -> str:
    return _require_js()


def test_missing_js_modules_fail_under_ci_and_skip_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The rule above, for a checkout whose npm modules were never installed."""
    (tmp_path / "package.json").write_text(
        json.dumps({"dependencies": dict.fromkeys(JS_PACKAGES, "1.0.0")})
    )
    monkeypatch.setattr(sys.modules[__name__], "JS_DIR", tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"npm module libp2p missing.*CI=true"):
        _require_js()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="npm module libp2p missing"):
        _require_js()
    # an install at another version than the pinned one is not used either
    (tmp_path / "node_modules" / "libp2p").mkdir(parents=True)
    (tmp_path / "node_modules" / "libp2p" / "package.json").write_text('{"version": "0.9.0"}')
    with pytest.raises(pytest.skip.Exception, match=r"libp2p is 0\.9\.0, .* pins 1\.0\.0"):
        _require_js()


class JsPeer:
    """A running peer.mjs: the JSON events it printed so far, and a way to wait for one."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self.exited = False
        self._changed = trio.Event()

    def transcript(self) -> str:
        lines = [json.dumps(e) for e in self.events]
        err = self.stderr.decode(errors="replace")[-4000:]
        return "\n".join([*lines, "--- stderr:", err])

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """The first `event` with these fields; fails, with the transcript, if the peer
        exits first (its own --timeout-ms bounds the wait)."""
        while True:
            found = self.find(event, **fields)
            if found:
                return found[0]
            if self.exited:
                pytest.fail(f"the JS peer printed no {event} {fields}:\n{self.transcript()}")
            await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        try:
            async for chunk in self.process.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                self.events.extend(json.loads(line) for line in lines if line.strip())
                self._note()
        finally:
            self.exited = True
            self._note()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            if len(self.stderr) < 1_000_000:
                self.stderr += chunk


@asynccontextmanager
async def js_peer(node: str, connect: str, *extra: str) -> AsyncIterator[JsPeer]:
    """Run peer.mjs against `connect` on `LEDGER`'s topic and (`LEDGER`, `SERVICE`)'s DHT
    key; it is stopped by its PID when the block ends (or after `JS_RUN_S`)."""
    args = [
        node,
        str(PEER_SCRIPT),
        "--connect",
        connect,
        "--topic",
        offer_topic(LEDGER),
        "--key",
        offer_key(LEDGER, SERVICE).hex(),
        "--timeout-ms",
        str(JS_TIMEOUT_MS),
        *extra,
    ]
    process = await trio.lowlevel.open_process(
        args, cwd=JS_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peer = JsPeer(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer._read_stdout)
            nursery.start_soon(peer._read_stderr)
            with trio.fail_after(JS_RUN_S):
                yield peer
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for stop in (process.terminate, process.kill):
                if process.returncode is None:
                    stop()
                    with trio.move_on_after(10):
                        await process.wait()


async def _refuse(stream: Stream) -> None:
    """The provider's /p2pay/2.0.0 handler: not used here (no calls are made)."""
    await stream.reset()


@asynccontextmanager
async def discovery_node(key: Keypair) -> AsyncIterator[tuple[Libp2pDiscovery, list[str]]]:
    """A p2pay discovery node (DHT server) on 127.0.0.1, and its addresses."""
    async with (
        open_libp2p_transport(key, _refuse) as transport,
        open_libp2p_discovery(transport) as discovery,
    ):
        yield discovery, transport.addrs


async def test_js_peer_receives_the_offer_and_finds_the_provider(node_binary: str) -> None:
    async with discovery_node(PROVIDER) as (provider, addrs):
        offer = Offer.create(
            PROVIDER,
            ledger=LEDGER,
            service=SERVICE,
            price=1_000,
            max_body=65_536,
            stake=STAKE,
            addrs=addrs[:1],
            seq=1,
            expires=wall_clock_ms() + 180_000,
        )
        published = offer.encode()
        await provider.provide(LEDGER, SERVICE)
        async with trio.open_nursery() as nursery:

            async def announce() -> None:  # as a provider re-announces (faster here)
                while True:
                    await provider.publish(LEDGER, published)
                    await trio.sleep(ANNOUNCE_EVERY_S)

            nursery.start_soon(announce)
            async with js_peer(
                node_binary,
                addrs[0],
                *("--from", provider.peer_id, "--provider", provider.peer_id),
                *("--linger-ms", "0"),
            ) as js:
                done = await js.wait_for("done")
            nursery.cancel_scope.cancel()

    assert done["ok"] is True, js.transcript()
    messages = js.find("message", **{"from": provider.peer_id})
    assert messages, js.transcript()
    for message in messages:  # the very bytes published, every time
        assert message["topic"] == offer_topic(LEDGER)
        assert bytes.fromhex(message["data"]) == published
    received = decode_offer(bytes.fromhex(messages[0]["data"]))
    check_offer(received, ledger=LEDGER, now_ms=wall_clock_ms())
    assert received == offer
    assert received.peer_id == provider.peer_id
    providers = js.find("provider", peer=provider.peer_id)
    assert len(providers) == 1, js.transcript()
    assert addrs[0] in providers[0]["addrs"], js.transcript()


def signed_js_offer(addr: str, *, seq: int) -> bytes:
    """The JS peer's offer of `SERVICE` (900 yocto, 4 KiB bodies, `STAKE`) at `addr`,
    signed here with its key and live for 3 minutes, encoded (the JS peer publishes it)."""
    return Offer.create(
        JS_KEY,
        ledger=LEDGER,
        service=SERVICE,
        price=900,
        max_body=4_096,
        stake=STAKE,
        addrs=[addr],
        seq=seq,
        expires=wall_clock_ms() + 180_000,
    ).encode()


async def test_p2pay_node_receives_the_js_offer_and_finds_the_js_provider(
    node_binary: str,
) -> None:
    # The JS peer's offer names its PeerID; its port is not known in advance, and an
    # offer's addresses are hints a receiver dials later: a fixed one is fine here.
    js_offer = signed_js_offer(f"/ip4/127.0.0.1/tcp/4001/p2p/{JS_KEY.peer_id}", seq=7)
    async with discovery_node(PROVIDER) as (node, addrs):
        gossip = node.subscribe(LEDGER)
        async with js_peer(
            node_binary,
            addrs[0],
            *("--seed", JS_SEED.hex(), "--provide", "--publish", js_offer.hex()),
            *("--linger-ms", str(JS_TIMEOUT_MS)),  # kept alive until we are done
        ) as js:
            listening = await js.wait_for("listening")
            assert listening["peer"] == JS_KEY.peer_id
            sender, data = "", b""
            while sender != JS_KEY.peer_id:  # bounded by js_peer's JS_RUN_S
                sender, data = await gossip.receive()
            await js.wait_for("provided")
            found: list[tuple[str, list[str]]] = []
            while JS_KEY.peer_id not in dict(found):  # bounded by js_peer's JS_RUN_S
                found = await node.find_providers(LEDGER, SERVICE)
                await trio.sleep(0.1)

    assert data == js_offer
    received = decode_offer(data)
    check_offer(received, ledger=LEDGER, now_ms=wall_clock_ms())
    assert received.peer_id == sender == JS_KEY.peer_id
    assert set(dict(found)[JS_KEY.peer_id]) & set(listening["addrs"]), (found, js.transcript())


# --- a whole p2pay node ---------------------------------------------------------------

TOKEN = 10**24
PRICE = 1_000
NODE_CONFIG = NodeConfig(default_timeout=5.0, watcher=False)
#: announce every second (the least allowed), so that the JS peer need not wait long
DISCOVERY = DiscoveryConfig(announce_interval_ms=1_000, find_wait=2.0)


async def staked_ledger(*keys: Keypair) -> MemoryLedger:
    """A ledger on which each of `keys` has a stake (STAKE's terms)."""
    ledger = MemoryLedger(Params(ledger_id=LEDGER, dev=True))
    for key in keys:
        await ledger.mint(key, key.account, 10 * TOKEN)
        await ledger.stake(key, STAKE.amount, STAKE.penalty, STAKE.claim_window_ms)
    return ledger


def recording(published: list[bytes]) -> Any:
    """A discovery factory for `open_node`: libp2p discovery that also keeps what the node
    publishes in `published`."""

    @asynccontextmanager
    async def factory(transport: Transport) -> AsyncIterator[DiscoveryNet]:
        async with open_libp2p_discovery(transport) as net:  # type: ignore[arg-type]
            publish = net.publish

            async def record(ledger: bytes, data: bytes) -> None:
                published.append(bytes(data))
                await publish(ledger, data)

            net.publish = record  # type: ignore[method-assign]
            yield net

    return factory


async def echo(call: Call) -> bytes:
    return call.body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_js_peer_sees_the_offer_a_p2pay_node_announces(node_binary: str) -> None:
    ledger = await staked_ledger(PROVIDER)
    published: list[bytes] = []
    async with open_node(
        key=PROVIDER,
        ledger=ledger,
        config=NODE_CONFIG,
        discovery=recording(published),
        discovery_config=DISCOVERY,
    ) as node:
        node.serve(SERVICE, echo, price=PRICE)
        async with js_peer(
            node_binary,
            node.addrs[0],
            *("--from", str(node.peer_id), "--provider", str(node.peer_id)),
            *("--linger-ms", "0"),
        ) as js:
            done = await js.wait_for("done")
        addrs = node.addrs

    assert done["ok"] is True, js.transcript()
    messages = js.find("message", **{"from": str(PROVIDER.peer_id)})
    assert messages, js.transcript()
    for message in messages:  # only what the node published, byte for byte
        assert bytes.fromhex(message["data"]) in published
    offer = decode_offer(bytes.fromhex(messages[-1]["data"]))
    check_offer(offer, ledger=LEDGER, now_ms=wall_clock_ms())
    assert offer.peer_id == str(PROVIDER.peer_id)
    assert (offer.name, offer.price) == (SERVICE, PRICE)
    stake = await ledger.stake_of(PROVIDER.account)
    assert stake is not None
    assert (offer.stake.amount, offer.stake.penalty) == (stake.amount, stake.penalty)
    assert set(offer.addrs) <= {*addrs}, (offer.addrs, addrs)
    (provider,) = js.find("provider", peer=str(PROVIDER.peer_id))
    assert set(provider["addrs"]) & set(addrs), js.transcript()


async def test_a_p2pay_node_finds_the_offer_of_a_js_provider(node_binary: str) -> None:
    ledger = await staked_ledger(JS_KEY)  # the JS peer's stake is on the ledger
    port = free_port()
    js_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{JS_KEY.peer_id}"
    js_offer = signed_js_offer(js_addr, seq=1)
    client = Keypair.from_seed(bytes([5]) * 32)
    async with open_node(
        key=client,
        ledger=ledger,
        config=NODE_CONFIG,
        discovery=lambda t: open_libp2p_discovery(t),  # type: ignore[arg-type]
        discovery_config=DISCOVERY,
    ) as node:
        async with js_peer(
            node_binary,
            node.addrs[0],
            *("--listen", f"/ip4/127.0.0.1/tcp/{port}", "--seed", JS_SEED.hex()),
            *("--provide", "--publish", js_offer.hex()),
            *("--linger-ms", str(JS_TIMEOUT_MS)),  # kept alive until we are done
        ) as js:
            await js.wait_for("published")
            found = []
            while not found:  # bounded by js_peer's JS_RUN_S
                found = await node.find(SERVICE)

    (offer,) = found
    assert offer.peer == str(JS_KEY.peer_id), js.transcript()
    assert (offer.service, offer.price, offer.seq) == (SERVICE, 900, 1)
    assert (offer.stake, offer.penalty) == (STAKE.amount, STAKE.penalty)
    assert offer.addrs == (js_addr,)
