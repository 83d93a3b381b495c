"""Deferred verification across a restart of the payee (protocol.md 13.4 rule e).

Found in the review after attack round 19 (97f59d1), fixed: the payee kept the list of
requests it admitted without checking their signatures (rule d) and whether a channel's
deferral was revoked (rule c) in memory only. A payer that signs badly then got the limit
once more at every restart of its payee:

- a bad request admitted unchecked, then a good one, and a restart before the next check:
  the restarted payee checked the good `best`, took it as covering everything, and never
  checked the bad one (which it served and charged, and which is no evidence against a
  made-up claim on its slice, claims.md 2); its deferral went on;
- a channel whose deferral a bad signature had revoked extended unchecked credit again
  after a restart.

Now the payee stores the revocation with the channel (SqliteStore schema 5), and after a
restart checks every request it stored above its stored checked voucher before it admits
anything unchecked. In both cases a bad request sent after the restart is now checked at
once and refused INVALID_SIGNATURE (on 97f59d1: admitted unchecked, served).

The payer is a raw libp2p peer on 127.0.0.1 that signs what it likes (CAROL's signature
is not the payer's). Every wait bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from p2pay.core.codec import MAX_FRAME_SIZE
from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Hello, Refusal, Request, Response, decode_frame
from p2pay.core.settlement import Params
from p2pay.ledger.memory import MemoryLedger, wall_clock_ms
from p2pay.net.p2p import open_libp2p_transport
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

ALICE = Keypair.from_seed(bytes([1]) * 32)  # the payer
BOB = Keypair.from_seed(bytes([2]) * 32)  # the payee
CAROL = Keypair.from_seed(bytes([3]) * 32)  # signs "ALICE's" bad requests
PRICE = 1_000


async def echo(call: Call) -> bytes:
    return call.body


async def ignore(stream: Any) -> None:
    await stream.aclose()


async def send_all(
    bob_addr: str, ledger: MemoryLedger, frames: list[bytes], *, max_frame: int = MAX_FRAME_SIZE
) -> list[object]:
    """ALICE's raw session: a hello, then each frame in turn with its answer."""
    answers: list[object] = []
    async with open_libp2p_transport(ALICE, ignore, max_frame=max_frame) as alice:
        stream = await alice.connect(bob_addr)
        with trio.fail_after(30):
            hello = Hello.create(ALICE, ledger=ledger.ledger_id, max_frame=max_frame)
            await stream.send(hello.to_frame())
            assert isinstance(decode_frame(await stream.receive(), max_size=max_frame), Hello)
            for frame in frames:
                await stream.send(frame)
                answers.append(decode_frame(await stream.receive(), max_size=max_frame))
        await stream.reset()
    return answers


async def deferred_channel(
    name: bytes, limit: int, **config: Any
) -> tuple[MemoryLedger, NodeConfig, bytes]:
    """A dev ledger named `name` on which ALICE and BOB are funded, ALICE's channel to BOB,
    and BOB's config: no watcher, no redeem, deferral up to `limit` (and `config`)."""
    ledger = MemoryLedger(
        Params(
            ledger_id=b"p2pay:test:" + name,
            dev=True,
            min_claim_window_ms=50,
            min_challenge_ms=50,
            max_deadline_horizon_ms=60_000,
        )
    )
    for key in (ALICE, BOB):
        await ledger.mint(key, key.account, 10**25)
    node_config = NodeConfig(
        watcher=False,
        default_timeout=5.0,
        redeem_threshold=10**30,
        unverified_credit_limit=limit,
        **config,
    )
    return ledger, node_config, await ledger.open_channel(ALICE, BOB.public, 10**6, 60_000)


def payer_request(
    ledger: MemoryLedger, channel: bytes, n: int, key: Keypair, body: bytes = b"x"
) -> bytes:
    """Request `n` of ALICE's channel at PRICE each, signed by `key` (CAROL: badly)."""
    return Request.create(
        key, ledger=ledger.ledger_id, channel=channel, n=n, paid=n * PRICE, price=PRICE,
        service="echo", body=body, deadline=wall_clock_ms() + 30_000,
    ).to_frame()  # fmt: skip


def served(answer: object) -> bool:
    return isinstance(answer, Response) and answer.ok


@pytest.mark.parametrize(
    "case",
    [
        # 1 checked (the first), 2 bad and 3 good admitted unchecked: the restart comes
        # before anything checks them
        "unchecked_list",
        # 1 checked, 2 bad, 3 and 4 unchecked; 5 passes the limit: checked, and with it
        # the list: 2 revokes deferral (rule d) before the restart
        "revoked",
    ],
)
async def test_a_restart_of_the_payee_gives_a_bad_signer_nothing_more(
    tmp_path: Path, case: str
) -> None:
    limit = 3 * PRICE if case == "revoked" else 5 * PRICE
    ledger, config, channel = await deferred_channel(b"deferred-restart", limit)

    def request(n: int, key: Keypair) -> bytes:
        return payer_request(ledger, channel, n, key)

    path = tmp_path / "bob.sqlite"
    signers = {"unchecked_list": [ALICE, CAROL, ALICE], "revoked": [ALICE, CAROL, ALICE, ALICE]}
    if case == "revoked":
        signers["revoked"].append(ALICE)  # n=5: past the limit
    frames = [request(n, key) for n, key in enumerate(signers[case], start=1)]
    store = await SqliteStore.open(path)
    async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
        bob.serve("echo", echo, price=PRICE)
        answers = await send_all(bob.addrs[0], ledger, frames)
        assert all(served(a) for a in answers), answers  # the bad 2 too: unchecked
        payee = bob.payee_channels[channel]
        assert payee.deferral_revoked is (case == "revoked")
    await store.aclose()

    store = await SqliteStore.open(path)
    try:
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            bob.serve("echo", echo, price=PRICE)
            payee = bob.payee_channels[channel]
            # on 97f59d1 False: the list and the revocation were lost with the process
            assert payee.deferral_revoked
            n = len(frames) + 1
            (answer,) = await send_all(bob.addrs[0], ledger, [request(n, CAROL)])
            # checked at once: refused (on 97f59d1 admitted unchecked and served)
            assert isinstance(answer, Refusal), answer
            assert answer.code == ErrorCode.INVALID_SIGNATURE.value, answer
            assert payee.spent == len(frames) * PRICE
        # the revocation is stored: a second restart keeps it
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            assert bob.payee_channels[channel].deferral_revoked
    finally:
        await store.aclose()
