"""Error codes and the two kinds of error (specs/protocol.md, "Errors").

Theory of operation
-------------------
Every refusal p2pay can put on the wire has a stable text code (`ErrorCode`). In Python
there are two families of exception, as in h11:

* `LocalProtocolError`: the caller misused the API (a negative amount, a request
  number that goes backwards, a float where yocto are needed). Fix the calling code.
* `RemoteProtocolError`: the peer (or the bytes it sent) misbehaved, or the peer
  refused us. It always carries an `ErrorCode`; `remote_error()` turns a code received
  on the wire back into the most specific subclass (`PaymentRequired` carries `price`).

`SettlementError` is raised by the settlement rules and every ledger backend when an
operation's precondition fails (specs/settlement.md); it carries a code as well.

Peer-caused outcomes inside the core's state machines are *values* (decisions), not
exceptions; exceptions are for parsing and for the public API.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class ErrorCode(enum.StrEnum):
    """Stable wire codes. Never renumber or rename: peers and ledgers store them."""

    # --- protocol refusals (specs/protocol.md) ---
    PAYMENT_REQUIRED = "PAYMENT_REQUIRED"
    INVALID_SIGNATURE = "INVALID_SIGNATURE"
    STALE_VOUCHER = "STALE_VOUCHER"
    REPLAY = "REPLAY"
    INSUFFICIENT_DEPOSIT = "INSUFFICIENT_DEPOSIT"
    CHANNEL_CLOSED = "CHANNEL_CLOSED"
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"
    UNKNOWN_SERVICE = "UNKNOWN_SERVICE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    OVERLOADED = "OVERLOADED"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    MALFORMED = "MALFORMED"
    WRONG_LEDGER = "WRONG_LEDGER"
    WRONG_DOMAIN = "WRONG_DOMAIN"
    UNAUTHORIZED = "UNAUTHORIZED"
    HANDLER_ERROR = "HANDLER_ERROR"
    PRICE_CHANGED = "PRICE_CHANGED"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    CHALLENGE_TOO_SHORT = "CHALLENGE_TOO_SHORT"  # channel challenge_ms below the payee's minimum
    # --- local outcomes of reaching a peer (never sent by a peer; specs/protocol.md 18) ---
    UNREACHABLE = "UNREACHABLE"  # nothing answered at the address (refused, timeout, no hello)
    WRONG_PEER = "WRONG_PEER"  # another identity answered at the address (Noise authenticated it)
    NO_ADDRESS = "NO_ADDRESS"  # a bare PeerID whose address this node does not know
    TERMS_REFUSED = "TERMS_REFUSED"  # the peer's hello terms are not what the caller accepts
    NO_PROVIDER = "NO_PROVIDER"  # call any: no offer within the terms, or every one tried failed
    PAYEE_FAULTY = "PAYEE_FAULTY"  # the channel's payee sent a bad receipt: nothing more is signed
    # --- settlement refusals (specs/settlement.md) ---
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_DEV_LEDGER = "NOT_DEV_LEDGER"
    NOT_PARTY = "NOT_PARTY"
    CHANNEL_EXISTS = "CHANNEL_EXISTS"
    CHANNEL_NOT_CLOSING = "CHANNEL_NOT_CLOSING"
    CHALLENGE_PENDING = "CHALLENGE_PENDING"
    VOUCHER_EXCEEDS_DEPOSIT = "VOUCHER_EXCEEDS_DEPOSIT"
    NOT_STAKED = "NOT_STAKED"
    STAKE_LOCKED = "STAKE_LOCKED"
    UNBONDING = "UNBONDING"
    UNKNOWN_CLAIM = "UNKNOWN_CLAIM"
    CLAIM_EXISTS = "CLAIM_EXISTS"
    CLAIM_CLOSED = "CLAIM_CLOSED"
    DEADLINE_NOT_PASSED = "DEADLINE_NOT_PASSED"
    WINDOW_OPEN = "WINDOW_OPEN"
    WINDOW_CLOSED = "WINDOW_CLOSED"
    RESPONSE_MISMATCH = "RESPONSE_MISMATCH"
    BAD_NONCE = "BAD_NONCE"  # a ledger transaction replayed, reordered or skipped
    INTERNAL = "INTERNAL"


class P2payError(Exception):
    """Base of every exception p2pay raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str = "",
        *,
        code: ErrorCode | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.message = message or self.code.value
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(f"{self.code.value}: {self.message}")


class LocalProtocolError(P2payError, ValueError):
    """The caller misused the API. Not a peer's fault."""

    code = ErrorCode.INVALID_ARGUMENT


class AmountError(LocalProtocolError):
    """An amount is not an integer in [0, 2**128) or a token string cannot be parsed."""

    code = ErrorCode.INVALID_AMOUNT


class PayeeFaulty(LocalProtocolError):
    """The channel's payee sent a receipt that failed the payer's check (specs/protocol.md
    14.3, "A faulty payee"): no request is signed on that channel any more. Refused
    locally, before anything is signed; close the channel to get its deposit back."""

    code = ErrorCode.PAYEE_FAULTY


class RemoteProtocolError(P2payError):
    """The peer misbehaved or refused; `code` is the wire code."""

    code = ErrorCode.MALFORMED


class DecodeError(RemoteProtocolError):
    """Bytes are not a well-formed, canonical p2pay message."""

    code = ErrorCode.MALFORMED


class FrameTooLarge(DecodeError):
    code = ErrorCode.FRAME_TOO_LARGE


class InvalidSignature(RemoteProtocolError):
    code = ErrorCode.INVALID_SIGNATURE


class WrongLedger(RemoteProtocolError):
    code = ErrorCode.WRONG_LEDGER


class WrongDomain(RemoteProtocolError):
    code = ErrorCode.WRONG_DOMAIN


class PaymentRequired(RemoteProtocolError):
    """The payee wants more credit; `price` is what the service costs."""

    code = ErrorCode.PAYMENT_REQUIRED

    @property
    def price(self) -> int | None:
        value = self.details.get("price")
        return value if isinstance(value, int) else None


class InsufficientDeposit(RemoteProtocolError):
    code = ErrorCode.INSUFFICIENT_DEPOSIT


class DeadlineExceeded(RemoteProtocolError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Overloaded(RemoteProtocolError):
    code = ErrorCode.OVERLOADED


class UnknownService(RemoteProtocolError):
    code = ErrorCode.UNKNOWN_SERVICE


class HandlerError(RemoteProtocolError):
    code = ErrorCode.HANDLER_ERROR


class SettlementError(P2payError):
    """A settlement operation's precondition failed (specs/settlement.md)."""

    code = ErrorCode.INVALID_ARGUMENT


_REMOTE_CLASSES: dict[ErrorCode, type[RemoteProtocolError]] = {
    cls.code: cls
    for cls in (
        DecodeError,
        FrameTooLarge,
        InvalidSignature,
        WrongLedger,
        WrongDomain,
        PaymentRequired,
        InsufficientDeposit,
        DeadlineExceeded,
        Overloaded,
        UnknownService,
        HandlerError,
    )
}


def remote_error(
    code: ErrorCode | str, message: str = "", details: Mapping[str, Any] | None = None
) -> RemoteProtocolError:
    """Build the most specific `RemoteProtocolError` for a code received from a peer.

    Args:
        code: a wire code; an unknown string becomes MALFORMED (a peer cannot invent codes).
        message: the peer's human-readable message (untrusted text).
        details: the peer's details map (for PAYMENT_REQUIRED, ``{"price": int}``).

    Returns:
        The exception, not raised.
    """
    try:
        known = ErrorCode(code)
    except ValueError:
        return DecodeError(f"peer sent unknown error code {str(code)[:64]!r}")
    cls = _REMOTE_CLASSES.get(known, RemoteProtocolError)
    return cls(message, code=known, details=details)
