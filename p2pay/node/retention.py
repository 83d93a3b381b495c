"""How long a node keeps the signed answers it stored: claims can be filed on them, and
they are evidence against claims, for a claim window after their deadline (claims.md 2,
attack N13)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from p2pay.core.settlement import Stake
from p2pay.persist import Persister
from p2pay.store.base import MAX_TIME, Store, meta_json

log = logging.getLogger("p2pay.node")

RETENTION_KEY = "response_retention"


@dataclass
class _Retention:
    """The persisted state of `AnswerRetention` (meta `RETENTION_KEY`)."""

    window: int = 0  # the largest claim window our stake ever had (ms)
    shift: int = 0  # prune this far behind the clock (ms) ...
    until: int = 0  # ... until then (Unix ms; 0 = no shift)

    def encode(self) -> bytes:
        return json.dumps([self.window, self.shift, self.until]).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> _Retention:
        try:
            window, shift, until = meta_json(raw) if raw else (0, 0, 0)
            if all(type(v) is int and v >= 0 for v in (window, shift, until)):
                return cls(window, shift, until)
        except (ValueError, TypeError):
            pass
        log.error("unreadable %s meta %r: starting over", RETENTION_KEY, raw)
        return cls()


class AnswerRetention:
    """When stored answers expire, and before when they may be pruned.

    Args:
        store: where the state is read from (meta `RETENTION_KEY`).
        persister: where changes to it are staged.
        retention_ms: the node's ``response_retention_ms`` (the least kept).
        now: the node's clock (Unix ms).
        horizon: the ledger's ``max_deadline_horizon_ms``, None if it has none.
    """

    def __init__(
        self,
        *,
        store: Store,
        persister: Persister,
        retention_ms: int,
        now: Callable[[], int],
        horizon: Callable[[], int | None],
    ) -> None:
        self._store = store
        self._persister = persister
        self._retention_ms = retention_ms
        self._now = now
        self._horizon = horizon
        self.state: _Retention | None = None  # loaded by the first `follow`

    def expiry(self, deadline: int, window: int) -> int:
        """When a signed response (and the request beside it) to a request with this
        `deadline` may be pruned, our stake's claim window being `window` (0: no stake): a
        claim can be filed on it until its deadline plus the claim window, and it serves as
        evidence against claimed requests dated up to ``max_deadline_horizon_ms`` later
        (claims.md 2), whose claims run a window more. So ``deadline +
        max(response_retention_ms, horizon + 2 * claim_window)``, with the largest window
        the stake ever had (N13). At most the store's `MAX_TIME` (kept for good): a setting
        or a ledger's window that large must not make the answer unstorable (the charge's
        commit would fail with it)."""
        horizon = self._horizon() or 0
        if self.state is not None:
            window = max(window, self.state.window)
        return min(MAX_TIME, deadline + max(self._retention_ms, horizon + 2 * window))

    async def follow(self, stake: Stake | None) -> None:
        """Keep stored answers as long as the claim window now in force needs (N13).

        A claim uses the stake's *current* window, so a response whose expiry was
        computed with a smaller one would be pruned before a claim on it could end. The
        node retains with the largest window it ever had (`expiry`); when it grows by d,
        every stored expiry is 2d short: pruning then runs 2d behind the clock
        (`prune_before`) until every response stored under the old window has expired."""
        if self.state is None:
            raw = await self._store.get_meta(RETENTION_KEY)
            self.state = _Retention.decode(raw)
        r = self.state
        window = stake.claim_window_ms if stake is not None and stake.amount > 0 else 0
        now = self._now()
        if r.until and now > r.until:
            r.shift = r.until = 0
        if window <= r.window:
            return
        horizon = self._horizon() or 0
        # every answer stored so far has deadline <= now + horizon (or a claim's window end,
        # <= now + old window) and expires within max(retention, horizon + 2 * old window)
        old_left = horizon + r.window + max(self._retention_ms, horizon + 2 * r.window)
        r.shift += 2 * (window - r.window)
        r.until = max(r.until, now + old_left + r.shift)
        r.window = window
        self._persister.stage(meta={RETENTION_KEY: r.encode()})

    def prune_before(self) -> int:
        """The time before which stored responses may be pruned (`follow`)."""
        shift = self.state.shift if self.state is not None else 0
        return max(0, self._now() - shift)
