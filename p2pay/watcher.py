"""The node's duties towards the ledger (specs/protocol.md "Watcher", specs/settlement.md).

Theory of operation
-------------------
The watcher runs inside the node's nursery. Each step it

1. reads ledger events after its persisted cursor and updates the node's view: top-ups,
   redeems, closes; a payer's `ChannelClosing` on a channel we are paid on makes us
   redeem at once (the challenge-period defence); a `ClaimFiled` against us is answered
   from the signed response we stored, or, if the request never reached us, by running
   the handler on the request the claim carries;
2. does its periodic duties: redeem what we charged when the policy says so
   (`redeem_reason`, specs/protocol.md 17.1: closing, a share of the escrow, an
   optional absolute threshold, or age; at most once per channel per
   `min_redeem_interval_ms` unless closing); finalize our payer closes whose challenge
   period ended; file a claim (with the signed request) for every paid request we sent
   that is still unanswered past its deadline plus a grace period, while the claim window
   is open; resolve our claims whose answer window has passed; prune old stored responses.

Every handler is idempotent, because after a crash events after the last persisted
cursor are seen again. Failures of one duty are logged and retried next step; they never
stop the node.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import trio

from p2pay.core.channel import ChannelStatus, PayeeChannel
from p2pay.core.errors import ErrorCode, P2payError, SettlementError
from p2pay.core.messages import STATUS_OK, Request, Response, decode_frame, refusal_body
from p2pay.core.settlement import ChannelState, ClaimState, Event
from p2pay.store.base import ClaimRecord, OutgoingRequest

if TYPE_CHECKING:
    from p2pay.node import Node, NodeConfig

log = logging.getLogger("p2pay.watcher")

CURSOR_KEY = "ledger_cursor"


def redeem_reason(
    *,
    unredeemed: int,
    escrow: int,
    closing: bool,
    now: int,
    unredeemed_since: int,
    last_redeem: int | None,
    config: NodeConfig,
) -> str | None:
    """Why a payee channel must be redeemed now, or None (specs/protocol.md 17.1).

    Args:
        unredeemed: what the payee charged and has not redeemed (yocto).
        escrow: the channel's ``deposit - redeemed`` (yocto).
        closing: the ledger shows the channel CLOSING (the payer started a close).
        now: the node's clock (ms).
        unredeemed_since: when the oldest unredeemed charge was first seen (ms).
        last_redeem: when this node last redeemed the channel (ms), None if never.
        config: the node's redeem settings.

    Returns:
        ``"closing"``, ``"fraction"``, ``"threshold"``, ``"age"``, or None.
    """
    if unredeemed <= 0:
        return None
    if closing:
        return "closing"  # the challenge-period defence: never rate limited
    if last_redeem is not None and not now - last_redeem >= config.min_redeem_interval_ms:
        return None
    bps = config.redeem_fraction_bps
    if bps and unredeemed * 10_000 >= bps * escrow:
        return "fraction"
    if unredeemed >= config.redeem_threshold:
        return "threshold"
    if now - unredeemed_since >= config.redeem_max_age_ms:
        return "age"
    return None


class Watcher:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cursor = 0
        self.steps = 0
        self._wake = trio.Event()
        self.redeems: collections.Counter[str] = collections.Counter()  # by reason
        self._unredeemed_since: dict[bytes, int] = {}  # channel -> ms (node clock)
        self._last_redeem: dict[bytes, int] = {}  # channel -> ms (node clock)

    def poke(self) -> None:
        """Run the next step now instead of after the interval."""
        self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raw = await self.node.store.get_meta(CURSOR_KEY)
        self.cursor = int.from_bytes(raw, "big") if raw else 0
        task_status.started()
        while True:
            try:
                await self.step()
            except (P2payError, OSError) as exc:
                log.warning("watcher step failed: %s", exc)
            with trio.move_on_after(self.node.config.watch_interval):
                await self._wake.wait()
            self._wake = trio.Event()

    async def step(self) -> None:
        """One pass: follow events, then do the periodic duties."""
        node = self.node
        while True:
            events, cursor = await node.ledger.events_for(node.account, self.cursor, 500)
            for event in events:
                try:
                    await self._on_event(event)
                except (P2payError, OSError) as exc:
                    log.warning("event %s #%d: %s", event.kind, event.seq, exc)
                self.cursor = event.seq
            if cursor > self.cursor:
                self.cursor = cursor
                node.persister.stage(meta={CURSOR_KEY: self.cursor.to_bytes(8, "big")})
            elif events:
                node.persister.stage(meta={CURSOR_KEY: self.cursor.to_bytes(8, "big")})
            if len(events) < 500:
                break
        await self._redeem_due()
        await self._finalize_closes()
        await self._file_claims()
        await self._resolve_claims()
        self.steps += 1
        if self.steps % 100 == 1:
            await node.store.prune_responses(node.now())

    # -- events

    async def _on_event(self, event: Event) -> None:
        node = self.node
        f = event.fields
        me = node.account
        kind = event.kind
        if kind in ("ToppedUp", "Redeemed", "ChannelClosing", "ChannelClosed"):
            channel = f.get("channel")
            if isinstance(channel, bytes) and (
                channel in node.payee_channels or channel in node.payer_channels
            ):
                await node.refresh_channel(channel)
                if kind == "ChannelClosing" and channel in node.payee_channels:
                    await self._redeem(node.payee_channels[channel], force=True)
        elif kind == "ClaimFiled" and f.get("respondent") == me:
            await self._answer_claim(f["claim"])
        elif kind == "ClaimFiled" and f.get("claimant") == me:
            self._claim_state(f["claim"], "claimant", "open")
        elif kind == "ClaimAnswered" and f.get("claimant") == me:
            self._claim_state(f["claim"], "claimant", "answered")
            await self._request_state(f["claim"], "rejected")
        elif kind == "ClaimAnswered" and f.get("respondent") == me:
            self._claim_state(f["claim"], "respondent", "answered")
        elif kind == "ClaimUpheld" and f.get("claimant") == me:
            node.counters.claims_won += 1
            self._claim_state(f["claim"], "claimant", "upheld")
            await self._request_state(f["claim"], "compensated")
        elif kind == "ClaimUpheld" and f.get("respondent") == me:
            self._claim_state(f["claim"], "respondent", "upheld")
            log.warning("slashed for claim %s", f["claim"].hex())
            await node.refresh_stake()
        elif kind in ("Staked", "UnstakeRequested", "StakeWithdrawn") and f.get("account") == me:
            await node.refresh_stake()

    def _claim_state(self, claim_id: bytes, role: str, state: str) -> None:
        self.node.persister.stage(
            claim=ClaimRecord(
                claim_id=claim_id,
                role=role,
                state=state,
                request_hash=claim_id,
                updated_at=self.node.now(),
            )
        )

    async def _request_state(self, request_hash: bytes, state: str) -> None:
        record = await self.node.store.request(request_hash)
        if record is not None and record.state != state:
            self.node.persister.stage(request=_with_state(record, state, self.node.now()))

    async def _answer_claim(self, claim_id: bytes) -> None:
        """Defend a claim against us with the stored response, or by serving it now."""
        node = self.node
        if not node.behaviour.answers_claims:
            return
        claim = await node.ledger.claim(claim_id)
        if claim is None or claim.state is not ClaimState.OPEN:
            return
        await node.persister.flush()
        stored = await node.store.response(claim_id)
        response: Response | None = None
        if stored is not None:
            frame = decode_frame(stored.frame)
            if isinstance(frame, Response):
                response = frame
        if response is None:
            response = await self._serve_claimed(claim.request_frame)
        if response is None:
            log.error("cannot answer claim %s: no response and request unusable", claim_id.hex())
            return
        try:
            await node.ledger.answer_claim(node.key, claim_id, response)
        except SettlementError as exc:
            log.warning("answer to claim %s refused: %s", claim_id.hex(), exc)
            return
        node.counters.claims_answered += 1
        self._claim_state(claim_id, "respondent", "answered")
        log.info("answered claim %s", claim_id.hex())

    async def _serve_claimed(self, request_frame: bytes) -> Response | None:
        """The request never reached us (or we lost it): answer it now, charging nothing."""
        node = self.node
        try:
            request = decode_frame(request_frame)
        except P2payError:
            return None
        if not isinstance(request, Request):
            return None
        ch = node.payee_channels.get(request.channel)
        spent = ch.spent if ch is not None else 0
        service = node.services.get(request.service)
        if service is None:
            return Response.create(
                node.signer,
                request=request,
                status=ErrorCode.UNKNOWN_SERVICE.value,
                price=0,
                spent=spent,
                body=refusal_body(f"no service {request.service!r}"),
            )
        from p2pay.node import Call

        try:
            with trio.fail_after(node.config.default_timeout):
                body = await service.handler(
                    Call(
                        service=request.service,
                        body=request.body,
                        peer_id=node.peer_of(ch.payer) if ch is not None else "",
                        channel=request.channel,
                        n=request.n,
                        price=0,
                        deadline=request.deadline,
                    )
                )
            status, body = STATUS_OK, bytes(body)
        except Exception as exc:  # the handler's failure is still a signed answer
            log.warning("handler failed while answering a claim: %r", exc)
            status, body = ErrorCode.HANDLER_ERROR.value, refusal_body("handler failed")
        return Response.create(
            node.signer, request=request, status=status, price=0, spent=spent, body=body
        )

    # -- periodic duties

    async def _redeem(self, ch: PayeeChannel, *, force: bool = False) -> None:
        node = self.node
        due = ch.spent - ch.redeemed
        if ch.best is None or due <= 0 or ch.status is ChannelStatus.CLOSED:
            self._unredeemed_since.pop(ch.channel, None)
            return
        now = node.now()
        since = self._unredeemed_since.setdefault(ch.channel, now)
        reason = "closing" if force else None
        reason = reason or redeem_reason(
            unredeemed=due,
            escrow=ch.deposit - ch.redeemed,
            closing=ch.status is ChannelStatus.CLOSING,
            now=now,
            unredeemed_since=since,
            last_redeem=self._last_redeem.get(ch.channel),
            config=node.config,
        )
        if reason is None:
            return
        # Charges made while we wait below are not durable yet: redeem what was charged now.
        amount = ch.spent
        await node.persister.flush()  # never redeem a charge that is not durable
        voucher = ch.verified_voucher()  # checked first (protocol.md 13.4 rule b)
        if voucher is None:
            return
        amount = min(amount, voucher.paid)  # never more than a checked voucher covers
        if amount <= ch.redeemed:
            return
        try:
            paid = await node.ledger.redeem(node.key, voucher, amount)
        except SettlementError as exc:
            log.warning("redeem on %s refused: %s", ch.channel.hex(), exc)
            if exc.code is ErrorCode.CHANNEL_CLOSED:
                await node.refresh_channel(ch.channel)
            return
        node.counters.redeemed += paid
        self.redeems[reason] += 1
        self._last_redeem[ch.channel] = now
        self._unredeemed_since.pop(ch.channel, None)
        ch.redeemed = max(ch.redeemed, amount)
        await node.refresh_channel(ch.channel)
        log.info("redeemed channel=%s amount=%d", ch.channel.hex(), paid)

    async def _redeem_due(self) -> None:
        for ch in list(self.node.payee_channels.values()):
            await self._redeem(ch, force=ch.status is ChannelStatus.CLOSING)

    async def _finalize_closes(self) -> None:
        node = self.node
        closing = [c for c in node.payer_channels.values() if c.status is ChannelStatus.CLOSING]
        if not closing:
            return
        now = await node.ledger.now()
        for ch in closing:
            info = await node.ledger.channel(ch.channel)
            if info is None:
                continue
            if info.state is ChannelState.CLOSING and now >= info.closes_at:
                try:
                    await node.ledger.finalize_close(node.key, ch.channel)
                except SettlementError as exc:
                    log.warning("finalize %s refused: %s", ch.channel.hex(), exc)
                    continue
            await node.refresh_channel(ch.channel)

    async def _file_claims(self) -> None:
        node = self.node
        if not node.config.auto_claim:
            return
        await node.persister.flush()
        awaiting = await node.store.requests(state="awaiting")
        if not awaiting:
            return
        now = await node.ledger.now()
        for record in awaiting:
            if now <= record.deadline + node.config.claim_grace_ms:
                continue
            stake = await node.ledger.stake_of(record.payee)
            if stake is None or stake.amount == 0:
                node.persister.stage(request=_with_state(record, "unclaimable", node.now()))
                continue
            if now > record.deadline + stake.claim_window_ms:
                node.persister.stage(request=_with_state(record, "expired", node.now()))
                continue
            try:
                request = decode_frame(record.frame)
                assert isinstance(request, Request)
                claim_id = await node.ledger.file_claim(node.key, request)
            except SettlementError as exc:
                if exc.code is ErrorCode.CLAIM_EXISTS:
                    node.persister.stage(request=_with_state(record, "claimed", node.now()))
                else:
                    log.warning("claim for n=%d refused: %s", record.n, exc)
                continue
            node.counters.claims_filed += 1
            log.info("filed claim %s for n=%d", claim_id.hex(), record.n)
            node.persister.stage(
                request=_with_state(record, "claimed", node.now(), claim_id=claim_id),
                claim=ClaimRecord(
                    claim_id=claim_id,
                    role="claimant",
                    state="open",
                    request_hash=record.request_hash,
                    updated_at=node.now(),
                ),
            )

    async def _resolve_claims(self) -> None:
        node = self.node
        mine = [c for c in await node.store.claims() if c.role == "claimant" and c.state == "open"]
        if not mine:
            return
        now = await node.ledger.now()
        for record in mine:
            claim = await node.ledger.claim(record.claim_id)
            if claim is None:
                continue
            if claim.state is ClaimState.OPEN and now > claim.window_ends:
                try:
                    await node.ledger.resolve_claim(node.key, record.claim_id)
                except SettlementError as exc:
                    log.warning("resolve %s refused: %s", record.claim_id.hex(), exc)


def _with_state(
    record: OutgoingRequest, state: str, now: int, *, claim_id: bytes | None = None
) -> OutgoingRequest:
    claim = record.claim_id if claim_id is None else claim_id
    return dataclasses.replace(record, state=state, updated_at=now, claim_id=claim)


__all__ = ["Watcher"]
