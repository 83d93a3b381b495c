"""The service invoker: runs a paid service's handler for a stream or a claim."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from p2pay.core.messages import RESPONSE_OVERHEAD
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
    limit: int,
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
        limit: ``L`` of protocol.md 13.3, the longest body the answer may have (the
            payer's ``max_frame`` less the response's overhead, and for a paid request the
            ledger's ``max_claim_body``: `p2pay.core.messages.answer_limit`; for an answer
            to a claim, ``max_claim_body``).
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
    if len(result) > limit:
        # Never charge an answer the payer cannot receive in one frame (5.3) or that we
        # could not post to the ledger if it is claimed (issue 13 item 7): refuse it,
        # signed and uncharged, saying the limit (13.3).
        error = f"answer of {len(result)} bytes is over the limit of {limit} bytes"
        return False, b"", error, {"max_body": limit}
    return True, bytes(result), "", {}


def claim_answer_limit(max_claim_body: int | None, max_frame: int) -> int:
    """``L`` for an answer to a claim: it goes to the ledger, so the ledger's
    ``max_claim_body``; without one, what fits in one of our own frames."""
    if max_claim_body is not None:
        return max_claim_body
    return max_frame - RESPONSE_OVERHEAD
