"""The hello check both sides of a stream apply to the peer's first frame."""

from __future__ import annotations

from p2pay.core.errors import (
    DecodeError,
)
from p2pay.core.messages import (
    Hello,
    check_signed_by,
)


def _check_hello(frame: object, remote: bytes, ledger: bytes) -> Hello:
    """The first frame must be a hello on our ledger, signed by the stream's peer."""
    if not isinstance(frame, Hello):
        raise DecodeError("expected a hello first")
    check_signed_by(frame, remote, ledger)
    return frame
