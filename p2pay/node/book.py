"""The channel book: the channels a node pays and is paid on, loaded, adopted, locked."""

from __future__ import annotations

import collections
import functools
import json
import logging
from collections.abc import Callable, Iterable

import trio

from p2pay.core.channel import (
    ChannelStatus,
    PayeeChannel,
    PayerChannel,
    Pending,
)
from p2pay.core.errors import (
    ErrorCode,
    P2payError,
    RemoteProtocolError,
)
from p2pay.core.messages import (
    Request,
    decode_held_frame,
)
from p2pay.core.settlement import Channel, ChannelState
from p2pay.ledger.base import Ledger, claims_one_by_one
from p2pay.node.types import NodeConfig
from p2pay.persist import Persister
from p2pay.store.base import (
    PayeeRecord,
    PayerRecord,
    Store,
    meta_json,
)

log = logging.getLogger("p2pay.node")


def _payee_record(ch: PayeeChannel) -> PayeeRecord:
    return PayeeRecord(
        channel=ch.channel,
        ledger=ch.ledger,
        payer=ch.payer,
        payee=ch.payee,
        deposit=ch.deposit,
        status=ch.status.value,
        last_n=ch.last_n,
        paid_max=ch.paid_max,
        best_voucher=ch.best.to_frame() if ch.best is not None else b"",
        spent=ch.spent,
        redeemed=ch.redeemed,
        # the last checked voucher, when best is not checked yet (protocol.md 13.4)
        verified_voucher=(
            ch.verified.to_frame()
            if ch.verified is not None and ch.verified is not ch.best
            else b""
        ),
        deferral_revoked=ch.deferral_revoked,
    )


def _payer_record(ch: PayerChannel) -> PayerRecord:
    return PayerRecord(
        channel=ch.channel,
        ledger=ch.ledger,
        payer=ch.payer,
        payee=ch.payee,
        deposit=ch.deposit,
        status=ch.status.value,
        last_n=ch.last_n,
        paid=ch.paid,
        spent=ch.spent,
        # what the receipt check and resync need that the requests cannot rebuild
        # (protocol.md 14.2): staged with every change that moves them
        absorbed=ch.absorbed,
        forgotten=ch.forgotten,
        released=ch.released,
    )


def _payee_snapshot(ch: PayeeChannel) -> tuple[bytes, Callable[[], PayeeRecord]]:
    """`ch`'s record built when the change is committed (`Persister.stage`): a payee
    channel changes with every answer, and is turned into a record once per commit."""
    return ch.channel, functools.partial(_payee_record, ch)


#: States of our requests whose outcome the channel's numbers already hold: a receipt or a
#: signed refusal accepted (on the stream, or as the answer to our claim), or a claim that
#: ended with a refund without an answer taken (UPHELD: settled as not charged). A
#: restart does not count them as abandoned again.
_ACCOUNTED_FOR = frozenset({"answered", "refused", "compensated"})


def _payer_snapshot(ch: PayerChannel) -> tuple[bytes, Callable[[], PayerRecord]]:
    """`ch`'s record built when the change is committed (`Persister.stage`): a payer
    channel changes with every request sent and every receipt, and is turned into a
    record once per commit."""
    return ch.channel, functools.partial(_payer_record, ch)


#: stored requests read at a time when a restarted payee checks those above its newest
#: checked voucher (`ChannelBook._check_stored`): a page is up to twice this many rows and
#: those of the number itself, each a request frame and its answer's (up to max_frame
#: each); at 16, 64 paid calls of 256 KiB made a restart hold 40 MB (attack round 34)
_CHECK_PAGE = 4

#: how many channels to us closing before they were ours `ChannelBook` remembers (32 bytes
#: each): evicting one takes a StartClose on a channel opened to us
CLOSING_SEEN_MAX = 4096
#: The store meta key of `ChannelBook.closing_seen` (their ids, oldest first, 32 bytes each),
#: staged by the watcher before the cursor that passes their events (attack round 19).
CLOSING_SEEN_KEY = "p2pay.closing_seen"


def ids_from_bytes(raw: bytes | None) -> list[bytes]:
    """The 32-byte ids a stored list holds (`ids_to_bytes`), in order; a short tail is
    dropped."""
    raw = raw or b""
    return [raw[i : i + 32] for i in range(0, len(raw) - 31, 32)]


def ids_to_bytes(ids: Iterable[bytes]) -> bytes:
    """32-byte ids as one stored value (`ids_from_bytes`)."""
    return b"".join(ids)


def _status_of(state: ChannelState | str) -> ChannelStatus:
    return ChannelStatus(str(state))


def adopted_payer_channel(info: Channel, ledger_id: bytes, *, last_n: int = 0) -> PayerChannel:
    """Our payer channel as a store that does not know it adopts it from the ledger's
    record `info` (a lost or new store): no requests, no receipts, ``paid`` no lower than
    the ledger's ``paid_seen`` (the highest ``paid`` of a voucher of ours it has seen: a
    redeem or a claim) and ``last_n`` no lower than `last_n` (the highest number of a
    request of ours it has seen). What the payee may have charged of that is
    ``forgotten``: ``paid_seen`` less what the ledger refunded (an honest payee's
    ``spent`` is at most that, claims.md C-2). Without these floors the payer would sign
    its next request inside ones it signed before, by slice or by number, on the word of
    the payee's resync details (which a payee may pick old, or which may be lost): the
    payee could then answer the payer's claim on it with the older one as evidence
    (FRIVOLOUS: the bond lost; attack rounds 11 and 12, claims.md 7). The first call still
    resyncs numbers from the payee (protocol.md 15)."""
    return PayerChannel(
        ledger=ledger_id,
        channel=info.id,
        payer=info.payer,
        payee=info.payee,
        deposit=info.deposit,
        status=_status_of(info.state),
        last_n=last_n,
        paid=info.paid_seen,
        forgotten=max(0, info.paid_seen - info.refunded),
    )


async def ledger_numbers(ledger: Ledger, account: bytes, channels: set[bytes]) -> dict[bytes, int]:
    """The highest number of a request of `account`'s the ledger has seen on each of
    `channels` (its Redeemed events and `account`'s claims), 0 if none: read when a store
    adopts channels it does not know (a lost or new store), `adopted_payer_channel`."""
    top = dict.fromkeys(channels, 0)
    after = 0
    while True:  # bounded: the cursor only moves forward, over the events there are
        events, cursor = await ledger.events_for(account, after)
        for event in events:
            channel = event.fields.get("channel")
            if event.kind == "Redeemed" and channel in top:
                top[channel] = max(top[channel], int(event.fields.get("n", 0)))
        if not events or cursor <= after:
            break
        after = cursor
    async for claim in claims_one_by_one(ledger, account, "claimant"):
        if claim.channel in top:
            top[claim.channel] = max(top[claim.channel], claim.n)
    return top


class ChannelBook:
    """The channels a node pays (`payer_channels`) and is paid on (`payee_channels`): loaded
    from the store, adopted from the ledger, and one lock per channel id while a payee
    channel is looked up on the ledger. It takes what it uses, not the node."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        store: Store,
        persister: Persister,
        account: bytes,
        config: NodeConfig,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.persister = persister
        self.account = account
        self.config = config
        self.payee_channels: dict[bytes, PayeeChannel] = {}
        self.payer_channels: dict[bytes, PayerChannel] = {}
        self._channel_locks: dict[bytes, trio.Lock] = collections.defaultdict(trio.Lock)
        #: channels to us a ChannelClosing named before they were ours (`note_closing`),
        #: the newest `CLOSING_SEEN_MAX`: adopted CLOSING whatever the read says
        self.closing_seen: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        #: what payees said of their shortest challenge period (protocol.md 17): the
        #: minimum each payee account stated in a CHALLENGE_TOO_SHORT refusal, and the
        #: channels (ours, as payer) it refused so. Durable under `MINIMUMS_KEY`.
        self.payee_minimums: dict[bytes, int] = {}
        self.refused_channels: set[bytes] = set()
        #: why the payee of each of our channels listed is faulty (protocol.md 14.3, "A
        #: faulty payee"): `PayerChannel.faulty`, durable under `FAULTY_KEY`
        self.faulty_channels: dict[bytes, str] = {}
        self._faulty_generation = 0  # the persister's generation holding the newest mark

    async def load(self) -> None:
        """Load the stored channels, count requests left without a receipt as abandoned,
        and adopt the ledger's channels we pay on that the store does not know; load what
        payees said of their minimum challenge period (`MINIMUMS_KEY`)."""
        minimums, refused = minimums_from_bytes(await self.store.get_meta(MINIMUMS_KEY))
        self.payee_minimums.update(minimums)
        self.refused_channels.update(refused)
        self.faulty_channels.update(faulty_from_bytes(await self.store.get_meta(FAULTY_KEY)))
        # the closes noted before a restart (`note_closing`): their events are behind the
        # stored cursor and are not read again (attack round 19)
        for channel in ids_from_bytes(await self.store.get_meta(CLOSING_SEEN_KEY)):
            self.note_closing(channel)
        for rec in await self.store.payee_channels():
            ch = PayeeChannel(
                ledger=rec.ledger,
                channel=rec.channel,
                payer=rec.payer,
                payee=rec.payee,
                deposit=rec.deposit,
                status=ChannelStatus(rec.status),
                last_n=rec.last_n,
                paid_max=rec.paid_max,
                spent=rec.spent,
                redeemed=rec.redeemed,
                unverified_credit_limit=self.config.unverified_credit_limit,
                deferral_revoked=rec.deferral_revoked,
            )
            # held frames, not the wire's: a voucher taken through a claim (`admit_claimed`)
            # carries its body, up to the ledger's max_claim_body (attack round 22: a free
            # claim of 1 MiB made every later start fail, FRAME_TOO_LARGE)
            if rec.verified_voucher:  # the last checked voucher, best being unchecked
                verified = decode_held_frame(rec.verified_voucher)
                if isinstance(verified, Request) and verified.verify(ch.payer):
                    ch.verified = ch.best = verified
                    # the requests admitted since, before a good best would hide them
                    if not ch.deferral_revoked and ch.unverified_credit_limit:
                        await self._check_stored(ch)
            if rec.best_voucher:
                best = decode_held_frame(rec.best_voucher)
                if isinstance(best, Request):
                    ch.best = best  # maybe admitted unchecked (protocol.md 13.4): check it
                    if ch.verified_voucher() is not best:
                        log.error(
                            "stored voucher of channel %s does not verify: %d yocto charged "
                            "on unchecked vouchers are lost (at most the unverified credit "
                            "limit)",
                            ch.channel.hex(),
                            ch.spent - ch.verified_paid,
                        )
            if ch.deferral_revoked != rec.deferral_revoked:
                self.persister.stage(payee=_payee_record(ch))
            self.payee_channels[rec.channel] = ch
        for prec in await self.store.payer_channels():
            self.payer_channels[prec.channel] = PayerChannel(
                ledger=prec.ledger,
                channel=prec.channel,
                payer=prec.payer,
                payee=prec.payee,
                deposit=prec.deposit,
                status=ChannelStatus(prec.status),
                last_n=prec.last_n,
                paid=prec.paid,
                spent=prec.spent,
                absorbed=prec.absorbed,
                forgotten=prec.forgotten,
                released=prec.released,
                faulty=self.faulty_channels.get(prec.channel),
            )
        # Requests that never got a receipt (in flight when we stopped, or since marked
        # unclaimable, expired or claimed by the watcher): the payee may have charged
        # them, so count them as abandoned (a later receipt may then show spent above
        # ours by at most their prices, less the jumps already absorbed).
        unanswered: dict[bytes, list[Pending]] = collections.defaultdict(list)
        for record in await self.store.requests():
            if record.state in _ACCOUNTED_FOR:
                continue
            payer_ch = self.payer_channels.get(record.channel)
            if payer_ch is None or not record.frame:
                continue
            sent = decode_held_frame(record.frame)
            if (
                isinstance(sent, Request)
                and sent.channel == payer_ch.channel
                and 0 < sent.n <= payer_ch.last_n
            ):
                unanswered[payer_ch.channel].append(Pending(sent, record.price))
        for channel, payer_ch in self.payer_channels.items():
            payer_ch.restore_abandoned(unanswered.get(channel, ()))
        await self.adopt_ledger_channels()

    async def _check_stored(self, ch: PayeeChannel) -> None:
        """Check the requests stored on `ch` above its stored checked voucher (`verified`,
        stored beside an unchecked best), a page at a time (protocol.md 13.4 e: those
        admitted since the last check, maybe unchecked; a restart kept no list of them).
        A bad one revokes the channel's deferral. When no checked voucher is stored beside
        best, best itself was checked, and with it every request admitted before it."""
        floor = ch.verified.n if ch.verified is not None else 0
        key = floor
        # bounded: `key` only grows; the page at `last_n` itself is read too (its twins
        # past the previous page's limit: attack round 35, a bad one there went unchecked)
        while key <= ch.last_n and (key < ch.last_n or key > floor):
            page = await self.store.vouchers_near(ch.channel, key, limit=_CHECK_PAGE)
            requests = []
            for stored in page:
                # above the check (a page after the first repeats the requests numbered
                # `key`, twins cut by the last one's limit): at most MAX_UNCHECKED or so,
                # any checked request raises `verified` (13.4 d)
                if max(floor, key - 1) < stored.n <= ch.last_n:
                    try:
                        request = decode_held_frame(stored.request_frame)
                    except P2payError:
                        continue  # the store checked it when written: not a frame of ours
                    if isinstance(request, Request):
                        requests.append(request)
            if not ch.check_stored(requests):
                log.error(
                    "a request stored on channel %s does not carry its payer's signature: "
                    "no more unchecked credit on it (protocol.md 13.4 e)",
                    ch.channel.hex(),
                )
                return
            top = max((stored.n for stored in page), default=key)
            if top <= key or key >= ch.last_n:
                return
            key = top

    async def adopt_ledger_channels(self) -> None:
        """Channels we pay on that the ledger knows and our store does not (a lost or new
        store): adopt them with empty state; the first call resyncs from the payee."""
        adopt = [
            info
            for info in await self.ledger.channels_of(self.account)
            if info.payer == self.account
            and info.id not in self.payer_channels
            and info.state is not ChannelState.CLOSED
        ]
        if not adopt:
            return
        numbers = await ledger_numbers(self.ledger, self.account, {info.id for info in adopt})
        for info in adopt:
            ch = adopted_payer_channel(info, self.ledger.ledger_id, last_n=numbers[info.id])
            ch.faulty = self.faulty_channels.get(info.id)
            self.payer_channels[info.id] = ch
            log.info(
                "adopted channel %s from the ledger (this store had no record of it): "
                "requests from n=%d, slices from %d yocto, %d yocto signed elsewhere "
                "counted as forgotten",
                info.id.hex(),
                ch.last_n + 1,
                ch.paid,
                ch.forgotten,
            )
            self.persister.stage(payer=_payer_record(ch))

    def note_closing(self, channel: bytes) -> None:
        """A ChannelClosing named `channel`, a channel to us that is not ours yet (no
        request on it so far): if it ever is, it is adopted CLOSING, whatever the ledger's
        read then says. A read served from before the StartClose (a lagging endpoint)
        adopted it OPEN long after the event went by, and nothing read it again: its
        charges were never redeemed and the FinalizeClose gave them back to the payer
        (attack round 18; claims.md C-8). The newest `CLOSING_SEEN_MAX` are kept, and
        stored (`stage_closing_seen`, by the watcher before the cursor that passes the
        event: in memory only, a restart forgot them; attack round 19)."""
        self.closing_seen[channel] = None
        self.closing_seen.move_to_end(channel)
        while len(self.closing_seen) > CLOSING_SEEN_MAX:
            self.closing_seen.popitem(last=False)

    def stage_closing_seen(self) -> None:
        """Stage `closing_seen` (`CLOSING_SEEN_KEY`, loaded by `load`)."""
        self.persister.stage(meta={CLOSING_SEEN_KEY: ids_to_bytes(self.closing_seen)})

    async def payee_channel_for(self, request: Request, peer: bytes) -> PayeeChannel | None:
        ch = self.payee_channels.get(request.channel)
        if ch is not None:
            return ch
        if peer == self.account:
            return None
        lock = self._channel_locks[request.channel]
        try:
            async with lock:
                ch = self.payee_channels.get(request.channel)
                if ch is not None:
                    return ch
                info = await self.ledger.channel(request.channel)
                if info is None or info.payee != self.account:
                    return None
                if info.challenge_ms < self.config.min_challenge_ms:
                    # C-8: a payer could close it faster than we can redeem
                    raise RemoteProtocolError(
                        f"challenge period {info.challenge_ms} ms is below this payee's "
                        f"minimum {self.config.min_challenge_ms} ms",
                        code=ErrorCode.CHALLENGE_TOO_SHORT,
                        details={"min_challenge_ms": self.config.min_challenge_ms},
                    )
                status = _status_of(info.state)
                if status is ChannelStatus.OPEN and info.id in self.closing_seen:
                    status = ChannelStatus.CLOSING  # the read predates the close we saw
                ch = PayeeChannel(
                    ledger=self.ledger.ledger_id,
                    channel=info.id,
                    payer=info.payer,
                    payee=self.account,
                    deposit=info.deposit,
                    status=status,
                    redeemed=info.redeemed,
                    unverified_credit_limit=self.config.unverified_credit_limit,
                )
                self.payee_channels[ch.channel] = ch
                self.persister.stage(payee=_payee_record(ch))
                return ch
        finally:
            # One lock per channel id a peer names would grow without bound under a flood
            # of made-up ids: drop it once nobody holds or waits for it (a task waiting on
            # it keeps using this object, so two lookups of one id never run at once).
            if (
                not lock.locked()
                and lock.statistics().tasks_waiting == 0
                and self._channel_locks.get(request.channel) is lock
            ):
                del self._channel_locks[request.channel]

    async def refresh_channel(self, channel: bytes) -> None:
        """Re-read a channel's deposit, state and redeemed total from the ledger."""
        info = await self.ledger.channel(channel)
        if info is None:
            return
        for ch in (self.payee_channels.get(channel), self.payer_channels.get(channel)):
            if ch is None:
                continue
            ch.deposit = max(ch.deposit, info.deposit)
            status = _status_of(info.state)
            if status is not ChannelStatus.OPEN or ch.status is ChannelStatus.OPEN:
                ch.status = status
            if isinstance(ch, PayeeChannel):
                ch.redeemed = max(ch.redeemed, info.redeemed)
                self.persister.stage(payee=_payee_record(ch))
            else:
                self.persister.stage(payer=_payer_record(ch))

    async def challenge_refused(self, ch: PayerChannel, least: int) -> int | None:
        """`ch`'s payee refused it as CHALLENGE_TOO_SHORT, stating its minimum `least`
        (protocol.md 17): remember both, durably (`payer_channel_to` skips `ch` from now
        on). Returns `ch`'s challenge period in ms, as the ledger has it (0 if gone), or
        None, remembering nothing, when that period is not below `least`: the refusal
        contradicts itself (17 rule 2)."""
        info = await self.ledger.channel(ch.channel)
        if info is not None and least <= info.challenge_ms:
            return None
        self.payee_minimums.pop(ch.payee, None)  # the newest last (`MAX_MINIMUMS`)
        self.payee_minimums[ch.payee] = least
        self.refused_channels.add(ch.channel)
        data = minimums_to_bytes(self.payee_minimums, self.refused_channels)
        await self.persister.durable(self.persister.stage(meta={MINIMUMS_KEY: data}))
        return info.challenge_ms if info is not None else 0

    def note_faulty(self, ch: PayerChannel) -> None:
        """`ch`'s payee sent a receipt that failed the check (`ch.faulty` says why): keep
        the mark, staged for the store (`faulty_durable` waits for it)."""
        if ch.faulty is None or self.faulty_channels.get(ch.channel) == ch.faulty:
            return
        self.faulty_channels[ch.channel] = ch.faulty
        data = faulty_to_bytes(self.faulty_channels)
        self._faulty_generation = self.persister.stage(meta={FAULTY_KEY: data})

    async def faulty_durable(self) -> None:
        """Wait until every mark `note_faulty` staged is in the store."""
        await self.persister.durable(self._faulty_generation)

    def faulty_payee(self, payee: bytes) -> str | None:
        """Why `payee` is faulty on one of our channels (protocol.md 14.3), or None."""
        for channel, reason in self.faulty_channels.items():
            ch = self.payer_channels.get(channel)
            if ch is not None and ch.payee == payee:
                return reason
        return None

    def payer_channel_to(self, payee: bytes) -> PayerChannel | None:
        """Our open channel to `payee` with the most credit left, among those it did not
        refuse as CHALLENGE_TOO_SHORT (protocol.md 17) and on which it is not faulty
        (protocol.md 14.3)."""
        best: PayerChannel | None = None
        for ch in self.payer_channels.values():
            if ch.channel in self.refused_channels or ch.faulty is not None:
                continue
            if ch.payee == payee and ch.status is ChannelStatus.OPEN:
                if best is None or ch.available > best.available:
                    best = ch
        return best


#: The store meta key of `ChannelBook.faulty_channels`.
FAULTY_KEY = "p2pay.faulty_channels"


def faulty_to_bytes(faulty: dict[bytes, str]) -> bytes:
    """JSON ``{channel_hex: reason, ...}``."""
    return json.dumps({k.hex(): v for k, v in faulty.items()}, separators=(",", ":")).encode()


def faulty_from_bytes(raw: bytes | None) -> dict[bytes, str]:
    """What `faulty_to_bytes` wrote. Never raises: a stored mark that does not parse is
    kept with a reason saying so if its channel id does, else dropped (logged)."""
    faulty: dict[bytes, str] = {}
    if not raw:
        return faulty
    try:
        doc = meta_json(raw)
    except ValueError:  # (also nested too deep: damaged)
        doc = None
    if not isinstance(doc, dict):
        log.error("unreadable %s meta %r: marks of faulty payees lost", FAULTY_KEY, raw[:64])
        return faulty
    for key, reason in doc.items():
        try:
            channel = bytes.fromhex(key)
        except ValueError:
            log.error("unreadable channel id %r in %s meta: dropped", key, FAULTY_KEY)
            continue
        if len(channel) == 32:
            faulty[channel] = reason if isinstance(reason, str) else "faulty (reason unreadable)"
    return faulty


#: The store meta key of `ChannelBook.payee_minimums` and `refused_channels`.
MINIMUMS_KEY = "p2pay.payee_minimums"
#: At most this many payees' minimums (the oldest dropped) and refused channels (those with
#: the lowest ids kept) are stored.
MAX_MINIMUMS = 1024


def minimums_to_bytes(minimums: dict[bytes, int], refused: set[bytes]) -> bytes:
    """JSON ``{"minimums": [[payee_hex, ms], ...], "refused": [channel_hex, ...]}``."""
    doc = {
        "minimums": [[k.hex(), v] for k, v in list(minimums.items())[-MAX_MINIMUMS:]],
        "refused": sorted(c.hex() for c in refused)[:MAX_MINIMUMS],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def minimums_from_bytes(raw: bytes | None) -> tuple[dict[bytes, int], set[bytes]]:
    """What `minimums_to_bytes` wrote; entries that do not parse are dropped (never raises)."""
    minimums: dict[bytes, int] = {}
    refused: set[bytes] = set()
    try:
        doc = meta_json(raw) if raw else {}
    except ValueError:
        return minimums, refused
    if not isinstance(doc, dict):
        return minimums, refused
    mins, refs = doc.get("minimums"), doc.get("refused")
    for entry in mins[-MAX_MINIMUMS:] if isinstance(mins, list) else []:
        try:
            key, ms = entry
            if isinstance(ms, int) and not isinstance(ms, bool) and 0 <= ms <= 2**64 - 1:
                minimums[bytes.fromhex(key)] = ms
        except (TypeError, ValueError):
            continue
    for text in refs[:MAX_MINIMUMS] if isinstance(refs, list) else []:
        try:
            cid = bytes.fromhex(text)
        except (TypeError, ValueError):
            continue
        if len(cid) == 32:
            refused.add(cid)
    return minimums, refused
