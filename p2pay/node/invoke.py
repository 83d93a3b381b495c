"""The service invoker: runs a paid service's handler for a stream or a claim."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from p2pay.node.types import Behaviour, Call, Handler

log = logging.getLogger("p2pay.node")


@dataclass
class _Service:
    name: str
    handler: Handler
    price: int
    max_body: int


async def run_service(
    service: _Service,
    call: Call,
    *,
    behaviour: Behaviour,
    max_frame: int,
    claim_limit: int | None,
) -> tuple[bool, bytes, str, dict[str, Any]]:
    """Run `service`'s handler for an admitted `call`: a request on a stream, or one served
    through a claim by the watcher (specs/claims.md C-6). One function, so both check the
    handler's result alike.

    Returns:
        ``(ok, body, error, details)``: ``ok`` with the body the response carries, or
        False with why (the handler raised, returned something else than bytes, too much
        for a frame, or more than the ledger accepts in a claim answer) and the refusal's
        details. A cancellation (stream closed, deadline) propagates.

    Args:
        behaviour: the node's misbehaviour hooks (`Behaviour.before_handler` runs first).
        max_frame: the node's frame limit (an answer must fit in a frame).
        claim_limit: the ledger's ``max_claim_body``, None if it has none.
    """
    try:
        await behaviour.before_handler(call)
        result = await service.handler(call)
    except trio.Cancelled:
        raise
    except Exception as exc:  # a handler's failure is the caller's HANDLER_ERROR, never ours
        log.warning("handler %s failed: %r", call.service, exc)
        return False, b"", f"handler failed: {type(exc).__name__}", {}
    if not isinstance(result, bytes | bytearray | memoryview):
        return False, b"", f"handler returned {type(result).__name__}, not bytes", {}
    if len(result) > max_frame - 4096:
        return False, b"", "handler response too large", {}
    if claim_limit is not None and len(result) > claim_limit:
        # Never charge an answer we could not post to the ledger if it is claimed
        # (issue 13 item 7): refuse it, signed and uncharged.
        error = (
            f"answer of {len(result)} bytes is over the ledger's claim body limit "
            f"of {claim_limit} bytes"
        )
        return False, b"", error, {"max_body": claim_limit}
    return True, bytes(result), "", {}
