"""Attack round 21: stored request frames above 1 MiB on a payee whose ``max_frame`` is
larger (`NodeConfig.max_frame`, config.toml ``[node] max_frame``).

A node may take frames up to its ``max_frame`` and serve bodies up to that less
`REQUEST_OVERHEAD`. It stores each answered request's frame, and its best voucher, as
received. At start-up `ChannelBook.load` read them back with `decode_frame`'s default
limit (1 MiB, `codec.MAX_FRAME_SIZE`), not the node's:

- the restart check of protocol.md 13.4 e (`ChannelBook._check_stored`, 1019fb9) took the
  FrameTooLarge of a stored request above 1 MiB for "not a frame of ours" and skipped it:
  a payer that signs badly hid a bad request from the check by giving it a big body, and
  kept its unchecked credit (rule c, e) after the restart: a bad request sent then was
  admitted unchecked and served;
- a stored best voucher above 1 MiB (any payer's, honest too) made `load` raise: the payee
  could not start again on its store at all.

The payer is a raw libp2p peer on 127.0.0.1 that signs what it likes (CAROL's signature is
not ALICE's). Every wait bounded.
"""

from __future__ import annotations

from pathlib import Path

from test_deferred_restart import ALICE, BOB, CAROL, PRICE, deferred_channel, payer_request, served
from test_deferred_restart import send_all as deferred_send_all

from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import Refusal
from p2pay.ledger.memory import MemoryLedger
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.sqlite import SqliteStore

MAX_FRAME = 2 << 20  # the payee's (and the payer's) max_frame: 2 MiB
BIG = b"y" * ((1 << 20) + 1_000)  # a body whose request frame is above 1 MiB


async def small(call: Call) -> bytes:
    return b"ok"


async def setup() -> tuple[MemoryLedger, NodeConfig, bytes]:
    return await deferred_channel(b"r21-big", 5 * PRICE, max_frame=MAX_FRAME)


def make_request(
    ledger: MemoryLedger, channel: bytes, n: int, key: Keypair, body: bytes = b"x"
) -> bytes:
    return payer_request(ledger, channel, n, key, body)


async def send_all(bob_addr: str, ledger: MemoryLedger, frames: list[bytes]) -> list[object]:
    """ALICE's raw session with a max_frame of 2 MiB (`test_deferred_restart.send_all`)."""
    return await deferred_send_all(bob_addr, ledger, frames, max_frame=MAX_FRAME)


async def test_a_big_bad_request_is_not_hidden_from_the_restart_check(tmp_path: Path) -> None:
    ledger, config, channel = await setup()
    # 1 checked (the first); 2 bad, its frame above 1 MiB, and 3 good: admitted unchecked
    frames = [
        make_request(ledger, channel, 1, ALICE),
        make_request(ledger, channel, 2, CAROL, BIG),
        make_request(ledger, channel, 3, ALICE),
    ]
    path = tmp_path / "bob.sqlite"
    store = await SqliteStore.open(path)
    async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
        bob.serve("echo", small, price=PRICE, max_body=MAX_FRAME - 1024)
        answers = await send_all(bob.addrs[0], ledger, frames)
        assert all(served(a) for a in answers), answers  # the bad 2 too: unchecked
        assert not bob.payee_channels[channel].deferral_revoked
    await store.aclose()

    store = await SqliteStore.open(path)
    try:
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            bob.serve("echo", small, price=PRICE, max_body=MAX_FRAME - 1024)
            payee = bob.payee_channels[channel]
            # on 1019fb9 False: the check skipped 2 (FrameTooLarge taken for "not ours")
            assert payee.deferral_revoked
            (answer,) = await send_all(
                bob.addrs[0], ledger, [make_request(ledger, channel, 4, CAROL)]
            )
            # checked at once (on 1019fb9 admitted unchecked and served)
            assert isinstance(answer, Refusal), answer
            assert answer.code == ErrorCode.INVALID_SIGNATURE.value, answer
    finally:
        await store.aclose()


async def test_a_big_best_voucher_does_not_keep_the_payee_from_starting(tmp_path: Path) -> None:
    ledger, config, channel = await setup()
    # an honest payer: both good; 2 (its frame above 1 MiB) is the stored best voucher
    frames = [make_request(ledger, channel, 1, ALICE), make_request(ledger, channel, 2, ALICE, BIG)]
    path = tmp_path / "bob.sqlite"
    store = await SqliteStore.open(path)
    async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
        bob.serve("echo", small, price=PRICE, max_body=MAX_FRAME - 1024)
        answers = await send_all(bob.addrs[0], ledger, frames)
        assert all(served(a) for a in answers), answers
    await store.aclose()

    store = await SqliteStore.open(path)
    try:
        # on 1019fb9 (and before) open_node raised FrameTooLarge reading the best voucher
        async with open_node(key=BOB, ledger=ledger, store=store, config=config) as bob:
            payee = bob.payee_channels[channel]
            assert payee.best is not None and payee.best.n == 2
            assert payee.verified_voucher() is payee.best
            assert payee.spent == 2 * PRICE
            assert not payee.deferral_revoked
    finally:
        await store.aclose()
