"""Review of issue 18 (rv19): `decode_frame` keeps a request's received frame as its
`to_frame` (be54feb) and a hello's received signing bytes (a5e5a07), on the argument that
the strict decoder accepts one encoding only (INV-17). Checked here on mutated frames, the
outer frame and the signed map inside it: whatever `decode_frame` accepts, the bytes it
kept are exactly what encoding the decoded message again gives (so the frame a payee
stores as evidence or a best voucher is the one a ledger re-encodes)."""

from __future__ import annotations

import random

from test_messages import make_hello, make_request, make_response

from p2pay.core import codec
from p2pay.core.errors import P2payError
from p2pay.core.evmsig import evm_ledger_id
from p2pay.core.messages import (
    Hello,
    Request,
    Response,
    decode_frame,
    hello_signing_bytes,
    request_signing_bytes,
)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        p = rng.randrange(len(b))
        op = rng.random()
        if op < 0.6:
            b[p] = rng.randrange(256)
        elif op < 0.8:
            del b[p]
        else:
            b.insert(p, rng.randrange(256))
    return bytes(b)


def _check_kept(data: bytes) -> bool:
    try:
        message = decode_frame(data)
    except P2payError:
        return False
    assert codec.encode(codec.decode(data)) == data
    if isinstance(message, Request):
        assert message.to_frame() == data
        assert message.to_frame() == codec.encode(
            [1, message.signing_bytes, message.signature, message.body]
        )
        assert message.signing_bytes == request_signing_bytes(
            ledger=message.ledger,
            channel=message.channel,
            n=message.n,
            paid=message.paid,
            price=message.price,
            service=message.service,
            body_hash=message.body_hash,
            deadline=message.deadline,
        )
    elif isinstance(message, Hello):
        assert message.signing_bytes == hello_signing_bytes(
            version=message.version,
            ledger=message.ledger,
            services=message.services,
            stake=message.stake,
            max_in_flight=message.max_in_flight,
            max_frame=message.max_frame,
            account=message.account,
            account_proof=message.account_proof,
            deadline_horizon=message.deadline_horizon,
        )
        assert message.to_frame() == data
    else:
        assert isinstance(message, Response)
        assert message.to_frame() == data
    return True


def test_whatever_decode_frame_accepts_it_keeps_as_its_one_encoding() -> None:
    rng = random.Random(19)
    evm = evm_ledger_id(31337, bytes(range(1, 21)))
    messages = [make_request(), make_hello(), make_hello(ledger=evm), make_response()]
    frames = [m.to_frame() for m in messages]
    accepted = 0
    for _ in range(6_000):  # the outer frame
        accepted += _check_kept(_mutate(rng, rng.choice(frames)))
    for _ in range(6_000):  # the signed map inside it, the frame around it well formed
        frame = codec.decode(rng.choice(frames))
        assert isinstance(frame, list)
        frame[1] = _mutate(rng, frame[1])
        accepted += _check_kept(codec.encode(frame))
    assert accepted > 500  # the check ran on accepted frames, not only on refusals
