"""The conformance tester (`p2pay conformance`, issue 15 item 4) against the reference node
and against deliberately broken servers, over libp2p on 127.0.0.1.

Against the reference node every case must PASS (none skipped: the node is given what
each case needs). Against a server that breaks rules the tester must report those cases
as FAIL: a tester that cannot fail checks nothing. Every wait is bounded (`trio.fail_after`
around each run; the tester's own per-answer timeout); subprocesses have timeouts.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from p2pay.conformance import CASES, Report, run_conformance
from p2pay.conformance import cases as cases_module
from p2pay.conformance import select as select_cases
from p2pay.conformance.probe import MAX_QUEUED_FRAMES, build_hello, decode_any, parse_hello
from p2pay.core.errors import DecodeError, ErrorCode, LocalProtocolError
from p2pay.core.identity import Keypair
from p2pay.core.messages import Refusal, Request, decode_frame
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.net.base import Stream, StreamClosed
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import Call, NodeConfig, open_node

PROVIDER = Keypair.from_seed(bytes([21]) * 32)
PAYER = Keypair.from_seed(bytes([22]) * 32)
LEDGER_ID = b"p2pay:test:conformance"
PRICE = 1_000
RUN_BOUND = 120.0  # seconds for a whole run of the tester
REPO = Path(__file__).resolve().parents[2]


def make_ledger() -> MemoryLedger:
    return MemoryLedger(Params(ledger_id=LEDGER_ID, dev=True))


async def slow_echo(call: Call) -> bytes:
    # Slow enough that a burst of requests beyond max_in_flight finds them all in flight
    # (the case paid.overloaded), quick enough for the other cases.
    await trio.sleep(0.5)
    return call.body


def by_id(report: Report) -> dict[str, Any]:
    return {r.id: r for r in report.results}


def failures(report: Report) -> str:
    return "\n".join(line for line in report.lines() if not line.startswith("PASS"))


async def test_every_case_passes_against_the_reference_node() -> None:
    ledger = make_ledger()
    await ledger.mint(PAYER, PAYER.account, 10**24)
    config = NodeConfig(watcher=False, min_challenge_ms=1_000)
    async with open_node(key=PROVIDER, ledger=ledger, config=config) as node:
        node.serve("echo", slow_echo, price=PRICE, max_body=1024)
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(node.addrs[0], payer=PAYER, ledger=ledger, timeout=5.0)
        served = node.counters.calls_served
        node_hello = parse_hello(node.hello().to_frame())
    # (asserted outside the node's nursery, so that a failure reads as itself)
    assert len(report.results) == len(CASES)
    assert [r.status for r in report.results] == ["PASS"] * len(CASES), failures(report)
    assert report.ok
    # the paid cases ran on a channel of their own, paid.over-deposit (last) on a 1-yocto
    # one; the tester started the close of both
    channels = await ledger.channels_of(PAYER.account)
    assert sorted(c.deposit for c in channels) == [
        1,
        PRICE * cases_module.requests_needed(node_hello),
    ]
    assert all(c.payee == PROVIDER.account for c in channels)
    assert {str(c.state) for c in channels} == {"closing"}
    assert report.results[-1].id == "paid.over-deposit"
    assert any("can cost up to" in note for note in report.notes)
    assert served > 0


async def test_paid_cases_skip_without_a_payer_and_say_why() -> None:
    ledger = make_ledger()
    async with open_node(key=PROVIDER, ledger=ledger, config=NodeConfig(watcher=False)) as node:
        node.serve("echo", slow_echo, price=PRICE)
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(
                node.addrs[0], ledger_id=LEDGER_ID, patterns=["paid.call", "hello.exchange"]
            )
    results = by_id(report)
    assert list(results) == ["hello.exchange", "paid.call"]
    assert results["hello.exchange"].status == "PASS"
    assert results["paid.call"].status == "SKIP"
    assert "--home" in results["paid.call"].reason


# ---------------------------------------------------------------------------
# broken servers: the tester must catch them


@asynccontextmanager
async def server(handler: Callable[[Stream], Awaitable[None]]) -> AsyncIterator[str]:
    async with open_libp2p_transport(PROVIDER, handler) as transport:
        yield transport.addrs[0]


async def silent(stream: Stream) -> None:
    """Reads everything and never answers: not even its hello."""
    with trio.move_on_after(60):
        while True:
            try:
                await stream.receive()
            except (StreamClosed, DecodeError):
                return


async def chatty(stream: Stream) -> None:
    """Sends a hello of the right shape after the peer's first frame, whatever it was,
    then answers every frame with a MALFORMED refusal and keeps the stream, refusals and
    responses included (§12, D3 forbid that), and never checks a thing."""
    refusal = Refusal(channel=b"", n=0, code=ErrorCode.MALFORMED, message="no").to_frame()
    first = True
    with trio.move_on_after(60):
        while True:
            try:
                await stream.receive()
            except StreamClosed:
                return
            except DecodeError:
                await stream.send(refusal)
                return
            await stream.send(build_hello(PROVIDER, LEDGER_ID) if first else refusal)
            first = False


async def test_a_server_that_never_sends_its_hello_fails() -> None:
    async with server(silent) as addr:
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(
                addr, ledger_id=LEDGER_ID, timeout=0.5, patterns=["hello"]
            )
    results = by_id(report)
    assert not report.ok
    assert results["hello.exchange"].status == "FAIL"
    assert "no frame within" in results["hello.exchange"].reason
    # the refusals it owes never come either: FAIL, not a hang and not a skip
    for case in ("hello.version-mismatch", "hello.wrong-ledger", "hello.request-first"):
        assert results[case].status == "FAIL", results[case]
    assert results["hello.waits"].status == "PASS"  # it did not speak first


async def test_a_server_that_answers_everything_with_a_refusal_fails() -> None:
    async with server(chatty) as addr:
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(addr, ledger_id=LEDGER_ID, timeout=1.0)
    results = by_id(report)
    assert not report.ok
    assert results["hello.exchange"].status == "PASS"  # its hello itself is fine
    assert results["hello.spec-keys"].status == "PASS"
    expected_failures = (
        "d3.response-ignored",  # answered a response with a refusal
        "d3.refusal-ignored",  # answered a refusal with a refusal
        "frame.nesting-limit",
        "hello.version-mismatch",  # sent its hello instead of VERSION_MISMATCH
        "hello.wrong-ledger",
        "hello.bad-signature",
        "hello.second",  # MALFORMED but kept the stream
        "frame.too-large",
        "request.unknown-channel",
        "request.wrong-domain",
    )
    for case in expected_failures:
        assert results[case].status == "FAIL", results[case]
    reason = results["d3.refusal-ignored"].reason
    assert "sent a refusal frame" in reason and "got an unsigned refusal MALFORMED" in reason
    assert results["paid.call"].status == "SKIP"


async def test_an_unreachable_target_fails_at_once() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{PROVIDER.peer_id}"
    with trio.fail_after(RUN_BOUND):
        report = await run_conformance(addr, ledger_id=LEDGER_ID, timeout=0.5)
    results = by_id(report)
    assert results["hello.exchange"].status == "FAIL"
    assert not report.ok
    others = [r for r in report.results if r.id != "hello.exchange"]
    assert {r.status for r in others} == {"SKIP"}
    assert "could not be reached" in others[0].reason


# ---------------------------------------------------------------------------
# pieces


def test_case_ids_are_unique_and_cite_sections() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(c.section.startswith("§") for c in CASES)
    assert [c.id for c in select_cases(["hello"])] == [i for i in ids if i.startswith("hello.")]
    assert [c.id for c in select_cases(["*.wrong-ledger"])] == [
        "hello.wrong-ledger",
        "request.wrong-ledger",
        "paid.wrong-ledger",
    ]
    assert select_cases(["nothing-like-this"]) == []


def test_hello_builder_and_parser_agree_and_refuse_bad_hellos() -> None:
    raw = build_hello(PAYER, LEDGER_ID)
    hello = parse_hello(raw)
    assert hello.deadline_horizon is not None and hello.account == PAYER.public
    legacy = parse_hello(build_hello(PAYER, LEDGER_ID, legacy=True))
    assert legacy.deadline_horizon is None
    got = decode_any(build_hello(PAYER, LEDGER_ID, extra={"max_frame": 100}))
    assert got.kind == "undecodable" and "max_frame" in got.error
    got = decode_any(build_hello(PAYER, LEDGER_ID, extra={"surprise": 1}))
    assert got.kind == "undecodable" and "keys" in got.error


def test_the_malformed_frames_differ_from_a_valid_one_only_where_meant() -> None:
    """Control for the cbor.* cases: the same builder without a fault makes a frame the
    core decodes; each fault makes one it refuses for that fault."""
    tester = SimpleNamespace(ledger_id=LEDGER_ID, transport_key=PAYER)
    build = cases_module._raw_request
    valid = decode_frame(build(tester, {}))  # type: ignore[arg-type]
    assert isinstance(valid, Request) and valid.verify(PAYER.public)
    hash_bytes = b"\x5f\x58\x20" + bytes(32) + b"\xff"
    faults = {  # why the decoder must refuse it: a word of its message
        "non-shortest": build(tester, {"n": b"\x18\x01"}),  # type: ignore[arg-type]
        "bignum": build(tester, {"paid": b"\xc2\x41\x01"}),  # type: ignore[arg-type]
        "order": build(tester, {}, reverse=True),  # type: ignore[arg-type]
        "canonical order": build(tester, {}, duplicate="n"),  # type: ignore[arg-type]
        "indefinite": build(tester, {"body_hash": hash_bytes}),  # type: ignore[arg-type]
        "floating": build(tester, {"deadline": b"\xfb" + bytes(8)}),  # type: ignore[arg-type]
        "UTF-8": build(tester, {"service": b"\x62\xc3\x28"}),  # type: ignore[arg-type]
    }
    for why, frame in faults.items():
        with pytest.raises(DecodeError) as info:
            decode_frame(frame)
        assert info.value.code is ErrorCode.MALFORMED and why in info.value.message, why


# ---------------------------------------------------------------------------
# the command line, as in the README walkthrough: a SQLite ledger, two homes


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("P2PAY_HOME", "P2PAY_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def p2pay(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "p2pay", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").split("\n")[0]


async def sqlite_ledger_id(path: Path) -> bytes:
    ledger = await SqliteLedger.open(path)
    try:
        return ledger.ledger_id
    finally:
        await ledger.aclose()


@pytest.mark.slow
def test_cli_against_node_run(tmp_path: Path) -> None:
    def ok(*args: str) -> str:
        proc = p2pay(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    ok("ledger", "create", "ledger.sqlite", "--dev", "--min-challenge", "1s")
    client = json.loads(ok("--home", "c", "init", "--ledger", "sqlite:ledger.sqlite", "--json"))
    ok("--home", "p", "init", "--ledger", "sqlite:ledger.sqlite")
    ok("--home", "c", "ledger", "mint", client["peer_id"], "1 token")
    (tmp_path / "slow.py").write_text(
        "import trio\n\nasync def echo(call):\n    await trio.sleep(0.5)\n    return call.body\n",
        encoding="utf-8",
    )
    log = open(tmp_path / "node.log", "wb")  # closed in the finally
    node = subprocess.Popen(
        [sys.executable, "-m", "p2pay", "--home", "p", "node", "run",
         "--listen", "/ip4/127.0.0.1/tcp/0", "--service", f"echo={PRICE}:slow:echo"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=log,
    )  # fmt: skip
    try:
        line = first_line(node, timeout=30)
        assert line.startswith("listening "), line
        addr = line.split()[1]
        # text: one line per case, then the summary; exit 0 only if none failed
        text = p2pay("--home", "c", "conformance", addr, "--case", "hello.exchange", cwd=tmp_path)
        assert text.returncode == 0, text.stdout + text.stderr
        assert text.stdout.splitlines()[0].startswith("PASS  hello.exchange")
        assert "1 passed, 0 failed, 0 skipped, 1 cases" in text.stdout
        # everything, as JSON
        full = p2pay("conformance", addr, "--home", "c", "--json", "--timeout", "5", cwd=tmp_path)
        doc = json.loads(full.stdout)
        assert [c["id"] for c in doc["cases"]] == [c.id for c in CASES]
        bad = [c for c in doc["cases"] if c["status"] != "PASS"]
        assert not bad, json.dumps(bad, indent=1)
        assert full.returncode == 0 and doc["ok"] is True
        assert any("can cost up to" in note for note in doc["notes"])
        # the paid cases cost at most --max-deposit: below what they need, they skip
        capped = p2pay("--home", "c", "conformance", addr, "--case", "paid.call",
                       "--max-deposit", "1000 yocto", cwd=tmp_path)  # fmt: skip
        lines = capped.stdout.splitlines()
        assert capped.returncode == 0, capped.stdout + capped.stderr
        assert lines[0].startswith("note: the paid cases") and "can cost up to" in lines[0]
        assert lines[1].startswith("SKIP  paid.call") and "--max-deposit" in lines[1]
        usage = p2pay("conformance", "--help", cwd=tmp_path)
        assert "--max-deposit" in usage.stdout
        assert "redeem every voucher" in " ".join(usage.stdout.split())
        # usage errors: one line, non-zero
        wrong = p2pay("conformance", "/ip4/127.0.0.1/tcp/1", cwd=tmp_path)
        assert wrong.returncode == 1 and wrong.stderr.startswith("p2pay: error: ")
        none = p2pay("--home", "c", "conformance", addr, "--case", "nope", cwd=tmp_path)
        assert none.returncode == 1 and "no case matches" in none.stderr
        blind = p2pay("conformance", addr, cwd=tmp_path)
        assert blind.returncode == 1 and "--ledger-id" in blind.stderr
        # --ledger-id without a home: the paid cases skip, saying why
        hexid = trio.run(sqlite_ledger_id, tmp_path / "ledger.sqlite").hex()
        args = ("conformance", addr, "--ledger-id", hexid, "--case", "paid.call", "--case", "hello")
        unpaid = p2pay(*args, "--json", cwd=tmp_path)
        statuses = {c["id"]: c["status"] for c in json.loads(unpaid.stdout)["cases"]}
        assert statuses["hello.exchange"] == "PASS" and statuses["paid.call"] == "SKIP"
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=10)
        if node.stdout is not None:
            node.stdout.close()
        log.close()


# ---------------------------------------------------------------------------
# what a hostile or extreme target can make the tester do (see also
# test_attack15_conformance.py)


async def test_paid_cases_skip_when_the_targets_prices_need_more_than_max_deposit() -> None:
    """The paid cases never open channels holding more than max_deposit in all: a price
    that needs more makes them SKIP, saying so, with no channel opened."""
    ledger = make_ledger()
    await ledger.mint(PAYER, PAYER.account, 10**24)
    async with open_node(key=PROVIDER, ledger=ledger, config=NodeConfig(watcher=False)) as node:
        node.serve("echo", slow_echo, price=PRICE)
        needed = PRICE * cases_module.requests_needed(parse_hello(node.hello().to_frame()))
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(
                node.addrs[0],
                payer=PAYER,
                ledger=ledger,
                patterns=["paid.call", "paid.over-deposit"],
                max_deposit=needed - 1,
            )
            exact = await run_conformance(
                node.addrs[0],
                payer=PAYER,
                ledger=ledger,
                patterns=["paid.call", "paid.over-deposit"],
                max_deposit=needed + 1,
            )
    results = by_id(report)
    assert results["paid.call"].status == "SKIP"
    assert "--max-deposit" in results["paid.call"].reason
    assert f"{needed} yocto" in results["paid.call"].reason
    # the over-deposit case needs only its 1-yocto channel
    assert results["paid.over-deposit"].status == "PASS", results["paid.over-deposit"].reason
    # the cap is the sum: the main channel (needed) then 1 yocto, within needed + 1
    assert [r.status for r in exact.results] == ["PASS", "PASS"], failures(exact)
    deposits = sorted(c.deposit for c in await ledger.channels_of(PAYER.account))
    assert deposits == [1, 1, needed]
    assert any("can cost up to" in n for n in report.notes)


async def test_run_conformance_refuses_a_timeout_beyond_its_bound() -> None:
    addr = f"/ip4/127.0.0.1/tcp/1/p2p/{PROVIDER.peer_id}"
    for timeout in (0.0, -1.0, cases_module.MAX_TIMEOUT + 1, float("nan")):
        with pytest.raises(LocalProtocolError, match="timeout"):
            await run_conformance(addr, ledger_id=LEDGER_ID, timeout=timeout)
    with pytest.raises(LocalProtocolError, match="max_deposit"):
        await run_conformance(addr, ledger_id=LEDGER_ID, max_deposit=-1)


async def test_a_target_that_floods_the_stream_fails_the_case_and_is_reset() -> None:
    """After its hello the target streams frames and reads nothing: the case (sending a
    frame of its max_frame, which the target never reads) cannot drain them, the probe's
    bounded buffer fills, and after a timeout the probe resets the stream; the case FAILs
    saying so, well before its own bound."""
    junk = Refusal(channel=os.urandom(32), n=1, code=ErrorCode.MALFORMED, message="x" * 2000)
    frames = [junk.to_frame()] * 50
    pushed = 0
    reset_seen = trio.Event()

    async def flood(stream: Stream) -> None:
        nonlocal pushed
        try:
            await stream.receive()
            await stream.send(build_hello(PROVIDER, LEDGER_ID))
            with trio.move_on_after(30):
                while True:
                    await stream.send_many(frames)
                    pushed += len(frames)
        except StreamClosed:
            reset_seen.set()

    async with server(flood) as addr:
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(
                addr, ledger_id=LEDGER_ID, patterns=["frame.at-limit"], timeout=1.0
            )
            with trio.move_on_after(10):
                await reset_seen.wait()
    (result,) = report.results
    assert result.status == "FAIL"
    assert "flooded" in result.reason and "reset" in result.reason, result.reason
    assert reset_seen.is_set(), "the target's sends did not end"
    assert pushed >= MAX_QUEUED_FRAMES


async def test_extreme_limits_skip_rather_than_fail() -> None:
    """A hello announcing the largest limits §19 allows (max_frame, deadline_horizon,
    max_body at 2**64 - 1): the cases the tester cannot build SKIP with the reason."""

    async def huge(stream: Stream) -> None:
        try:
            await stream.receive()
            extra = {
                "max_frame": 2**64 - 1,
                "deadline_horizon": 2**64 - 1,
                "services": [{"name": "svc", "price": 1, "max_body": 2**64 - 1}],
            }
            await stream.send(build_hello(PROVIDER, LEDGER_ID, extra=extra))
            await stream.receive()
        except (StreamClosed, DecodeError):
            return

    async with server(huge) as addr:
        with trio.fail_after(RUN_BOUND):
            report = await run_conformance(
                addr,
                ledger_id=LEDGER_ID,
                patterns=["frame.too-large", "frame.at-limit", "paid.deadline-horizon"],
                timeout=1.0,
            )
    results = by_id(report)
    assert {r.status for r in report.results} == {"SKIP"}, failures(report)
    assert "2**63" in results["frame.too-large"].reason
    assert "8 MiB" in results["frame.at-limit"].reason
    assert "2**64" in results["paid.deadline-horizon"].reason
