"""Two machines: a provider and a client in separate network namespaces (issue 13, 6).

The test builds two network namespaces joined by a veth pair (10.77.x.1 and 10.77.x.2,
addresses that exist only inside the namespaces it created), runs a provider node in
one and a client node in the other as OS processes (``ip netns exec NS python
tests/integration/netns_peer.py ...``), both on one SQLite ledger file on disk (the
ledger is a shared file, so both still reach it when the network between them is cut).

The client calls a service whose handler takes 2 s; as soon as the provider's handler
has started (the paid request arrived), the test takes the veth link down on both sides.
The handler finishes in time and charges, but its answer never crosses the network. Then
(specs/claims.md):

* C-1: the provider, online with its watcher running, is not slashed;
* C-5: the client's watcher claims the request, the provider's watcher answers the claim
  with the stored answer: the claim ends DELIVERED, the client's node reads the signed
  answer from the ledger (checked like a receipt) and its body is the service's answer;
  the client's bond came back.

Skipped, with the reason, when not root, when ``ip`` is missing or when ``ip netns`` is
not permitted (containers without CAP_SYS_ADMIN). The namespaces (and with them the
veth pair) and the processes are removed in a ``finally`` block; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from p2pay.core.identity import Keypair
from p2pay.ledger.sqlite import SqliteLedger

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("netns_peer.py")
TOKEN = 10**24
STAKE = TOKEN
PENALTY = TOKEN // 10
BOND = 10**18
CLAIM_WINDOW_MS = 20_000
PROVIDER = Keypair.from_seed(bytes([0x51]) * 32)
CLIENT = Keypair.from_seed(bytes([0x52]) * 32)
BODY = b"two machines"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def _skip_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"p2pn-probe-{os.getpid()}"
    try:
        added = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns is not usable here: {exc}"
    if added.returncode != 0:
        return f"ip netns add is not permitted here: {added.stderr.strip()[:200]}"
    _ip("netns", "del", probe, check=False)
    return None


@contextmanager
def namespaces() -> Iterator[tuple[str, str, str, str, str, str]]:
    """Two namespaces joined by a veth pair; yields (ns_a, ns_b, veth_a, veth_b, ip_a,
    ip_b). Removed on exit, whatever happened."""
    tag = os.getpid() % 100_000
    ns_a, ns_b = f"p2pn-{tag}-a", f"p2pn-{tag}-b"
    veth_a, veth_b = f"p2pv{tag}a", f"p2pv{tag}b"  # at most 15 characters
    subnet = f"10.77.{tag % 250}"
    ip_a, ip_b = f"{subnet}.1", f"{subnet}.2"
    try:
        _ip("netns", "add", ns_a)
        _ip("netns", "add", ns_b)
        _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        _ip("link", "set", veth_a, "netns", ns_a)
        _ip("link", "set", veth_b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, veth_a, ip_a), (ns_b, veth_b, ip_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield ns_a, ns_b, veth_a, veth_b, ip_a, ip_b
    finally:
        for ns in (ns_a, ns_b):  # deleting a namespace deletes its end of the veth
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", veth_a, check=False)  # if it never moved into ns_a


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _wait_for(
    what: str, predicate: Callable[[], str | None], timeout: float, logs: list[Path]
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found is not None:
            return found
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(_lines(p)[-30:]) for p in logs)
    raise AssertionError(f"no {what} within {timeout} s\n{tails}")


def _line_starting(path: Path, prefix: str) -> Callable[[], str | None]:
    def find() -> str | None:
        for line in _lines(path):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None

    return find


async def _make_ledger(path: Path) -> None:
    ledger = await SqliteLedger.create(
        path, dev=True, claim_bond=BOND, min_challenge_ms=1_000, min_claim_window_ms=1_000
    )
    try:
        for key in (PROVIDER, CLIENT):
            await ledger.mint(key, key.public, 10 * TOKEN)
        await ledger.stake(PROVIDER, STAKE, PENALTY, CLAIM_WINDOW_MS)
    finally:
        await ledger.aclose()


async def _read_ledger(path: Path) -> tuple[list[object], object, int]:
    ledger = await SqliteLedger.open(path)
    try:
        claims = await ledger.claims_of(CLIENT.public)
        stake = await ledger.stake_of(PROVIDER.public)
        balance = await ledger.balance(CLIENT.public)
    finally:
        await ledger.aclose()
    return list(claims), stake, balance


def test_claim_delivers_across_a_cut_link(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    ledger_path = tmp_path / "ledger.sqlite"
    trio.run(_make_ledger, ledger_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    status_p, status_c = tmp_path / "provider.status", tmp_path / "client.status"
    log_p, log_c = tmp_path / "provider.log", tmp_path / "client.log"
    logs = [status_p, log_p, status_c, log_c]
    procs: list[subprocess.Popen[bytes]] = []
    with namespaces() as (ns_a, ns_b, veth_a, veth_b, ip_a, ip_b):
        try:

            def start(ns: str, log: Path, *args: str) -> None:
                with log.open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            ["ip", "netns", "exec", ns, sys.executable, str(PEER), *args],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            env=env,
                            cwd=ROOT,
                        )
                    )

            common = ("--ledger", str(ledger_path), "--max-seconds", "90")
            start(
                ns_a,
                log_p,
                "provider",
                *common,
                "--status",
                str(status_p),
                "--seed",
                (bytes([0x51]) * 32).hex(),
                "--listen",
                f"/ip4/{ip_a}/tcp/0",
                "--sleep",
                "2.0",
            )
            addr = _wait_for("provider READY", _line_starting(status_p, "READY "), 30, logs)
            assert f"/ip4/{ip_a}/tcp/" in addr and "/p2p/" in addr
            start(
                ns_b,
                log_c,
                "client",
                *common,
                "--status",
                str(status_c),
                "--seed",
                (bytes([0x52]) * 32).hex(),
                "--listen",
                f"/ip4/{ip_b}/tcp/0",
                "--provider",
                addr,
                "--body",
                BODY.hex(),
                "--timeout",
                "4.0",
            )
            _wait_for(
                "paid request at the provider",
                _line_starting(status_p, "HANDLER_STARTED"),
                30,
                logs,
            )
            # the provider has the paid request: cut the link before its answer leaves
            _ip("-n", ns_a, "link", "set", veth_a, "down")
            _ip("-n", ns_b, "link", "set", veth_b, "down")
            call = _wait_for(
                "end of the client's call",
                lambda: (
                    _line_starting(status_c, "CALL_FAILED")()
                    or (("OK " + v) if (v := _line_starting(status_c, "CALL_OK")()) else None)
                ),
                30,
                logs,
            )
            assert not call.startswith("OK "), "the answer crossed a link that was down"
            _wait_for(
                "provider's handler to finish", _line_starting(status_p, "HANDLER_DONE"), 30, logs
            )
            result = _wait_for(
                "claim outcome at the client",
                lambda: (
                    _line_starting(status_c, "RESULT ")()
                    or (
                        "TIMEOUT"
                        if _line_starting(status_c, "RESULT_TIMEOUT")() is not None
                        else None
                    )
                ),
                75,
                logs,
            )
            assert result != "TIMEOUT", "\n".join(_lines(log_c)[-30:])
            outcome = json.loads(result)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    # C-5: the claim delivered the answer, read and checked by the client's node
    assert outcome["outcome"] == "delivered", outcome
    assert outcome["status"] == "OK"
    assert bytes.fromhex(outcome["body"]) == b"answer:" + BODY
    assert outcome["bond_returned"] is True
    # the ledger agrees; C-1: the provider, online with its watcher, is not slashed
    claims, stake, _balance = trio.run(_read_ledger, ledger_path)
    assert len(claims) == 1
    claim = claims[0]
    assert str(getattr(claim.state, "value", claim.state)) == "delivered"  # type: ignore[attr-defined]
    assert claim.slashed == 0  # type: ignore[attr-defined]
    assert stake is not None and stake.amount == STAKE  # type: ignore[attr-defined]
