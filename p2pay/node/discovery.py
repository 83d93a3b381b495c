"""Discovery on the node: announcing our offers, finding others', calling any provider
(specs/discovery.md).

Theory of operation
-------------------
A `Discovery` runs in the node's nursery when the node has a discovery network (a
`DiscoveryNet`: gossipsub and the Kademlia DHT on libp2p, or the in-memory twin). It
takes what it uses of its node through `DiscoveryHost` (the `Node` is one).

Announcing. For each service the node serves, while it has a bonded stake, it makes a
signed offer (`p2pay.core.offers.Offer`) with the hello's terms (price, body limit,
stake, account binding), the node's addresses, a fresh ``seq`` and an expiry of three
announce intervals. A ``seq`` is above the last one used, kept in the store
(`SEQ_KEY`), and at least the current Unix time in ms: the new value is durable before
any offer carrying it leaves, so a restart never reuses one, even with a clock that went
back (receivers drop an offer whose seq is not above the last they kept).
Offers are published on the ledger's topic every interval, and at once when the terms
change (a price, the stake, the services, the addresses: `changed` wakes the loop, which
compares). A provider record is put in the DHT for each service by a task of its own, for
a new service at once and then every `PROVIDE_INTERVAL` (10 minutes, specs/discovery.md
5.2): a DHT walk can take its whole 30 s bound (peers in our routing table that never
answer), and publishing never waits for one. The latest offers
answer the fetch protocol (`serve_offers`).

Receiving. Every gossip message and every fetched offer goes to the `OfferBook` (the
core: decoding, signature, ledger, expiry, seq, spam limits per sender). An offer the
book takes is not relied on before its stake is read from the ledger
(``ledger.stake_of(account)``) and given to the book (`OfferBook.stake_checked`): a stake
below the offer's is a lie, and the book drops the peer.

Joining: the node connects to its bootstrap peers; when it reached none (and was given
some), `find` and `call_any` raise `NotJoined` (UNREACHABLE): an empty answer would say
"nobody offers it" when nobody was asked. Bootstrap peers not reached are tried again
at each announce round, and by `find`/`call_any` before they give up, so a node started
before its bootstrap peer joins once that peer is up.

Finding (`find`): the live offers seen so far, plus a DHT lookup of the service's
providers and a fetch of each one's offers, all within a bounded wait (over as soon as
offers of the service are known, within the terms or not: `unmatched` counts those the
terms leave out, for the message that says so).

Calling (`call_any`): the live offers within the caller's price and stake, ranked by the
`Chooser` (failures, price, stake, latency); each is tried in turn, at most
``max_attempts``: reach the provider at the offer's addresses (an address that led to an
authenticated hello goes to the address book, protocol.md 19.2 rule 1: never on the
offer's word), compare its hello with the offer (another account, or worse terms: a
higher price, a smaller stake, is a lie, `OfferBook.lie`), reuse a channel to it that
has room for the price or open one under the deposit policy (``deposit_calls`` x price,
at most ``max_deposit``; the open contacts the peer and checks its stake on the ledger
first), then call with the offer's price as the most to pay: a PAYMENT_REQUIRED above
the offer's price is a lie too. An unreachable provider, a refusal or a timeout is
recorded (`Chooser.record_failure`) and the next offer is tried; when none is left the
call fails with `NoProvider`, naming every attempt. The Chooser's stats and the book's bans
are saved in the store after a call that learnt something (a failure, a lie, a new peer;
`STATS_KEY`) and loaded when the node starts, so a short-lived client (one `call any` per
process) remembers the providers that failed it or lied to it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import trio

from p2pay.core.errors import (
    AmountError,
    ErrorCode,
    LocalProtocolError,
    P2payError,
    PayeeFaulty,
    PaymentRequired,
    RemoteProtocolError,
)
from p2pay.core.messages import MAX_SERVICE_NAME
from p2pay.core.offers import (
    MAX_ADDR_SIZE,
    MAX_FETCH_OFFERS,
    MAX_OFFER_ADDRS,
    Chooser,
    FailureKind,
    KeptOffer,
    Offer,
    OfferBook,
    announce_spacing_ms,
)
from p2pay.node.types import (
    Attempt,
    CallResult,
    CallTimeout,
    ConnectionLost,
    DiscoveryConfig,
    NoProvider,
    NotJoined,
    OfferInfo,
    TermsRefused,
    Unmatched,
)
from p2pay.store.base import meta_json

if TYPE_CHECKING:
    # (trio_typing's, as in p2pay.persist: py-libp2p's trio-typing stubs shadow trio's)
    from trio_typing import TaskStatus

    from p2pay.core.identity import Keypair, PeerId
    from p2pay.core.messages import Hello
    from p2pay.ledger.base import Ledger
    from p2pay.net.base import DiscoveryNet
    from p2pay.node.book import ChannelBook
    from p2pay.node.client import _Connection
    from p2pay.node.types import ChannelInfo
    from p2pay.persist import Persister
    from p2pay.store.base import Store

log = logging.getLogger("p2pay.node")

#: the store meta key of the last offer sequence number used (decimal text)
SEQ_KEY = "p2pay.discovery.seq"
#: the store meta key of what `call_any` saw of each provider and the bans for lies (JSON
#: ``{"stats": Chooser.snapshot(), "bans": OfferBook.bans()}``): a command line client is a
#: new process for every call, and must not try first again the providers that just failed
#: it or lied to it (specs/discovery.md 7.5, 8)
STATS_KEY = "p2pay.discovery.stats"
#: providers a DHT lookup asks for at most
LOOKUP_LIMIT = 20
#: seconds between DHT lookups while `find` has found nothing
LOOKUP_RETRY = 1.0
#: seconds one round of publishing, or one DHT record, may take before it is given up
ANNOUNCE_TIMEOUT = 30.0
#: seconds between two DHT records of one service (specs/discovery.md 5.2: 10 minutes)
PROVIDE_INTERVAL = 600.0
_MAX_SEQ = (1 << 64) - 1
#: the outcomes of an attempt that count as the provider's failure (`Chooser`)
_FAILURES = frozenset(k.value for k in FailureKind)


class DiscoveryHost(Protocol):
    """What discovery uses of its node (the `Node` is one)."""

    key: Keypair
    ledger: Ledger
    store: Store
    persister: Persister
    book: ChannelBook

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def addrs(self) -> list[str]: ...

    def now(self) -> int: ...

    def hello(self) -> Hello: ...

    async def _reach(self, peer: str) -> _Connection: ...

    async def open_channel(
        self,
        peer: str,
        *,
        deposit: int,
        challenge_ms: int | None = None,
        offline: bool = False,
        require_stake: bool = False,
        max_price: int | None = None,
    ) -> ChannelInfo: ...

    async def call(
        self,
        peer: str,
        service: str,
        body: bytes,
        *,
        max_price: int,
        timeout: float | None = None,
    ) -> CallResult: ...


class _Failed(P2payError):
    """One attempt of `call_any` failed (internal: it becomes an `Attempt`)."""

    def __init__(self, outcome: str, code: ErrorCode, message: str) -> None:
        super().__init__(message, code=code)
        self.outcome = outcome


def _failed(outcome: str, exc: P2payError) -> _Failed:
    return _Failed(outcome, exc.code, exc.message or str(exc))


def _check_amount(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AmountError(f"{name} must be an amount in yocto (an int >= 0), not {value!r}")


def _check_timeout(timeout: object) -> None:
    """`Node.call`'s rule for its timeout, checked before a channel is opened for it."""
    if timeout is None:
        return
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (timeout > 0 and math.isfinite(timeout))
    ):
        raise LocalProtocolError(f"timeout must be a positive number of seconds, not {timeout!r}")


def _check_service(service: object) -> str:
    if not isinstance(service, str) or not 1 <= len(service.encode()) <= MAX_SERVICE_NAME:
        raise LocalProtocolError(
            f"service must be a name of 1 to {MAX_SERVICE_NAME} bytes of UTF-8, not {service!r}"
        )
    return service


def _full(addr: str, peer_id: str) -> str:
    return addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"


class Discovery:
    """The node's part in discovery (see the module docstring)."""

    def __init__(self, host: DiscoveryHost, net: DiscoveryNet, config: DiscoveryConfig) -> None:
        self.host = host
        self.net = net
        self.config = config
        self.ledger_id = host.ledger.ledger_id
        self.book = OfferBook(self.ledger_id)
        self.chooser = Chooser(client=str(host.peer_id))
        #: our latest encoded offers, by service name (what the fetch protocol answers)
        self._mine: dict[str, bytes] = {}
        self._seq = 0
        self._changed = trio.Event()
        self._provide_due = trio.Event()  # set when a service may need its DHT record
        self._provided: dict[str, float] = {}  # service -> when its record was last put
        self._arrived = trio.Event()
        self._joined = trio.Event()
        self.announced = 0  # offers published (counted)
        self.lies = 0  # lies seen (counted)
        self.received = 0  # offers given to the book (gossip and fetch replies; counted)
        #: the bootstrap peers not reached when joining: address -> why
        self.not_reached: dict[str, str] = {}
        #: whether every bootstrap peer tried (ours but us) failed: not joined
        self.unjoined = False

    # -- running

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the seq counter, serve fetches, receive gossip, join, announce."""
        self._seq = _parse_seq(await self.host.store.get_meta(SEQ_KEY))
        stored = await self.host.store.get_meta(STATS_KEY)
        if stored:
            try:
                seen = meta_json(stored)
            except ValueError:  # damaged: forgotten (it only orders the next attempts)
                seen = None
            if isinstance(seen, dict):
                self.chooser.restore(seen.get("stats"))
                self.book.restore_bans(seen.get("bans"), self.host.now())
            else:
                log.warning("discovery: the stored provider stats are damaged: forgotten")
        receive = self.net.subscribe(self.ledger_id)
        self.net.serve_offers(self._serve)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._gossip, receive)
                nursery.start_soon(self._join)
                task_status.started()
                await self._joined.wait()
                nursery.start_soon(self._provide_loop)
                await self._announce_loop()
        finally:
            self.net.serve_offers(None)

    async def _join(self) -> None:
        me = str(self.host.peer_id)
        tried = [a for a in self.config.bootstrap if a.rpartition("/p2p/")[2] != me]
        try:
            self.not_reached = dict(await self.net.bootstrap(list(self.config.bootstrap)))
        except P2payError as exc:
            self.not_reached = {a: exc.message or str(exc) for a in tried}
        finally:
            self.unjoined = bool(tried) and all(a in self.not_reached for a in tried)
            # info: `find` and `call any` fail with it (one line); `node run` shows it
            if self.unjoined:
                log.info("discovery: %s", self._not_joined().message)
            else:
                for addr, why in self.not_reached.items():
                    log.info("discovery: bootstrap peer %s not reached: %s", addr, why)
            self._joined.set()

    async def _rejoin(self) -> None:
        """Try again the bootstrap peers not reached so far."""
        if not self.not_reached:
            return
        again = list(self.not_reached)
        try:
            still = dict(await self.net.bootstrap(again))
        except P2payError as exc:
            still = {a: exc.message or str(exc) for a in again}
        for addr in again:
            if addr not in still:
                log.info("discovery: bootstrap peer %s reached", addr)
        self.not_reached = still
        if self.unjoined and len(still) < len(again):
            self.unjoined = False

    def _not_joined(self) -> NotJoined:
        tried = "; ".join(f"{addr} ({why})" for addr, why in self.not_reached.items())
        return NotJoined(
            f"cannot join the network: no bootstrap peer reached: {tried}",
            details={"bootstrap": dict(self.not_reached)},
        )

    def changed(self) -> None:
        """Our terms may have changed (a service, a price, the stake): re-announce now if
        they did."""
        self._changed.set()

    def _terms(self) -> tuple[object, ...]:
        hello = self.host.hello()
        return (hello.services, hello.stake, tuple(self._addrs()))

    def _interval_ms(self, count: int) -> int:
        """How often `count` offers are published again: the announce interval, or the
        least spacing that keeps them within receivers' rate limits if that is longer
        (specs/discovery.md 5.1)."""
        return max(self.config.announce_interval_ms, announce_spacing_ms(count))

    async def _announce_loop(self) -> None:
        last: tuple[object, ...] | None = None
        due = -math.inf  # the next publication again
        earliest = -math.inf  # the first one allowed on a change of terms (5.1 spacing)
        while True:
            self._changed = trio.Event()
            self.book.expire(self.host.now())  # forget expired offers and ended bans
            terms = self._terms()
            now = trio.current_time()
            if now >= due or (terms != last and now >= earliest):
                if now >= due:
                    with trio.move_on_after(ANNOUNCE_TIMEOUT):
                        await self._rejoin()
                before = self.announced
                with trio.move_on_after(ANNOUNCE_TIMEOUT):
                    await self.announce()
                published = self.announced - before  # (also if the timeout cut it short)
                last = terms
                due = now + self._interval_ms(len(self.host.hello().services)) / 1000
                earliest = now + announce_spacing_ms(published) / 1000
            with trio.move_on_at(due if terms == last else min(due, earliest)):
                await self._changed.wait()

    async def _provide_loop(self) -> None:
        """Put the DHT record of each service we announce: a new one at once, then every
        `PROVIDE_INTERVAL`; each bounded by `ANNOUNCE_TIMEOUT`, never holding back the
        offers' publication (`announce`)."""
        while True:
            self._provide_due = trio.Event()
            for name in list(self._mine):
                last = self._provided.get(name)
                if last is not None and trio.current_time() - last < PROVIDE_INTERVAL:
                    continue
                with trio.move_on_after(ANNOUNCE_TIMEOUT):
                    try:
                        await self.net.provide(self.ledger_id, name)
                    except P2payError as exc:
                        log.warning("discovery: cannot put the DHT record of %r: %s", name, exc)
                self._provided[name] = trio.current_time()
            for name in [n for n in self._provided if n not in self._mine]:
                del self._provided[name]  # no longer served: a new record if it comes back
            due = min(self._provided.values(), default=trio.current_time()) + PROVIDE_INTERVAL
            with trio.move_on_at(due):
                await self._provide_due.wait()

    def _addrs(self) -> list[str]:
        peer_id = str(self.host.peer_id)
        out: list[str] = []
        for addr in self.host.addrs:
            text = _full(str(addr), peer_id)
            if len(text) <= MAX_ADDR_SIZE and text.isascii() and text.isprintable():
                out.append(text)
        return out[:MAX_OFFER_ADDRS]

    async def announce(self) -> int:
        """Make, publish and serve a new offer for each service we serve (their DHT records
        are `_provide_loop`'s, which this wakes). Nothing is announced without services, a
        bonded stake or an address (an offer without a stake is not an offer). Called at
        once, not paced: the announce loop keeps to the spacing of discovery.md 5.1 (a
        caller publishing sooner may see receivers drop offers as rate-limited, 7.3).

        Returns:
            The number of offers published.
        """
        host = self.host
        hello = host.hello()
        addrs = self._addrs()
        if not hello.services or hello.stake is None or not addrs:
            if hello.services and hello.stake is None and self._mine:
                log.warning("discovery: no bonded stake: our offers are no longer announced")
            self._mine = {}
            return 0
        count = len(hello.services)
        # above every seq used before (the durable counter), and at least the time, so
        # that a store lost or reset still announces above what peers kept
        first = max(self._seq + 1, host.now())
        if first + count - 1 > _MAX_SEQ:  # pragma: no cover - a clock 500 My ahead
            log.error("discovery: offer sequence numbers exhausted")
            return 0
        self._seq = first + count - 1
        # durable before any offer carrying these numbers leaves (never reused)
        await host.persister.durable(host.persister.stage(meta={SEQ_KEY: str(self._seq).encode()}))
        expires = host.now() + 3 * self._interval_ms(count)
        mine: dict[str, bytes] = {}
        for i, terms in enumerate(hello.services):
            offer = Offer.create(
                host.key,
                ledger=self.ledger_id,
                service=terms.name,
                price=terms.price,
                max_body=terms.max_body,
                stake=hello.stake,
                addrs=tuple(addrs),
                seq=first + i,
                expires=expires,
                account=hello.account,
                account_proof=hello.account_proof,
            )
            mine[terms.name] = offer.encode()
        self._mine = mine
        published = 0
        for name, data in mine.items():
            try:
                await self.net.publish(self.ledger_id, data)
                published += 1
                self.announced += 1
            except P2payError as exc:
                log.warning("discovery: cannot publish the offer of %r: %s", name, exc)
        self._provide_due.set()  # a new service gets its DHT record at once
        return published

    def _serve(self, ledger: bytes, service: str) -> list[bytes]:
        """The fetch protocol's answer: our latest offer of `service` if we serve it, then
        the live verified offers of others our book holds (a bootstrap node answers from
        it), at most `MAX_FETCH_OFFERS`."""
        if ledger != self.ledger_id:
            return []
        mine = self._mine.get(service)
        others = self.book.encoded(service, now_ms=self.host.now(), limit=MAX_FETCH_OFFERS)
        return ([mine] if mine is not None else []) + others[: MAX_FETCH_OFFERS - bool(mine)]

    # -- receiving

    async def _gossip(self, receive: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        async with receive:
            async for sender, data in receive:
                await self.take(data, sender=sender)

    async def take(self, data: bytes, *, sender: str, service: str | None = None) -> bool:
        """Give one encoded offer (from gossip, or an item of a fetch reply from `sender`
        to a request for `service`) to the book and, if the book asks for it, read the
        provider's stake on the ledger.

        Returns:
            True if the offer is now kept and verified (its stake read and covering it).
        """
        self.received += 1
        verdict = self.book.receive(data, sender=sender, now_ms=self.host.now(), service=service)
        kept = verdict.kept
        if kept is None:
            return False
        if verdict.needs_stake_check:
            peer = kept.offer.peer_id
            try:
                stake = await self.host.ledger.stake_of(kept.offer.account)
            except P2payError as exc:  # e.g. an EVM ledger's RPC failed: not relied on yet
                log.info("discovery: cannot read the stake of %s: %s", peer, exc)
                return False
            if not self.book.stake_checked(peer, stake, self.host.now()):
                self.lies += 1
                log.warning("discovery: %s offers a stake the ledger does not show", peer)
                return False
        current = self.book.get(kept.offer.peer_id, kept.offer.name)
        verified = current is not None and current.verified
        if verified:
            self._arrived.set()
        return verified

    # -- finding

    def unmatched(
        self, service: str, *, max_price: int | None = None, min_stake: int = 0
    ) -> Unmatched:
        """What the caller's terms leave out of the live verified offers of `service`
        seen so far (`Unmatched`)."""
        offers = [k.offer for k in self._live(service, self.host.now(), None, 0)]
        above = [o.price for o in offers if max_price is not None and o.price > max_price]
        below = [o.stake.amount for o in offers if o.stake.amount < min_stake]
        return Unmatched(
            total=len(offers),
            above_price=len(above),
            lowest_price=min(above, default=None),
            below_stake=len(below),
            highest_stake=max(below, default=None),
        )

    def live(
        self, service: str, *, max_price: int | None = None, min_stake: int = 0
    ) -> list[OfferInfo]:
        """The live verified offers of `service` seen so far, within the terms, cheapest
        first (then the best staked)."""
        now = self.host.now()
        return [_info(k, now) for k in self._live(service, now, max_price, min_stake)]

    def _live(
        self, service: str, now: int, max_price: int | None, min_stake: int
    ) -> list[KeptOffer]:
        """The book's live offers of `service` but ours (a peer's cache may relay them)."""
        me = str(self.host.peer_id)
        kept = self.book.live(service, now_ms=now, max_price=max_price, min_stake=min_stake)
        return [k for k in kept if k.offer.peer_id != me]

    async def find(
        self,
        service: str,
        *,
        max_price: int | None = None,
        min_stake: int = 0,
        wait: float | None = None,
    ) -> list[OfferInfo]:
        """`Node.find` (its docstring has the arguments and the result)."""
        _check_service(service)
        _check_amount("max_price", max_price, optional=True)
        _check_amount("min_stake", min_stake)
        wait = self.config.find_wait if wait is None else wait
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise LocalProtocolError(f"wait must be a number of seconds >= 0, not {wait!r}")
        deadline = trio.current_time() + wait
        with trio.move_on_at(deadline):
            await self._joined.wait()
            if self.unjoined:
                await self._rejoin()
        if self.unjoined:
            raise self._not_joined()
        fetched: set[str] = set()  # the DHT's providers fetched in this find (once each)
        while True:
            # a lookup, then (while nothing was found) gossip for a while, then again: a
            # provider that joined a moment ago may not have put its record yet. Offers
            # found outside the terms end the wait too: the lookup asked everyone it could
            self._arrived = trio.Event()
            with trio.move_on_at(deadline):
                await self._lookup(service, fetched)
            found = self.live(service, max_price=max_price, min_stake=min_stake)
            if found or self._live(service, self.host.now(), None, 0):
                return found
            if trio.current_time() >= deadline:
                return found
            with trio.move_on_at(min(deadline, trio.current_time() + LOOKUP_RETRY)):
                await self._arrived.wait()

    async def _lookup(self, service: str, fetched: set[str]) -> None:
        """Ask the DHT for providers of `service` and fetch the offers of each one not in
        `fetched` (then added: a provider record's addresses are its maker's word, so one
        find dials them once, not at every round); ask the bootstrap peers too (they
        answer with the offers they hold)."""
        me = str(self.host.peer_id)
        async with trio.open_nursery() as nursery:
            for addr in self.config.bootstrap:
                peer_id = addr.rpartition("/p2p/")[2]
                if peer_id != me:
                    nursery.start_soon(self._fetch, peer_id, [addr], service)
            providers = await self.net.find_providers(self.ledger_id, service, limit=LOOKUP_LIMIT)
            for peer_id, addrs in providers:
                if peer_id != me and peer_id not in fetched:
                    fetched.add(peer_id)
                    nursery.start_soon(self._fetch, peer_id, list(addrs), service)

    async def _fetch(self, peer_id: str, addrs: list[str], service: str) -> None:
        try:
            offers = await self.net.fetch_offers(peer_id, addrs, self.ledger_id, service)
        except P2payError as exc:  # FetchFailed, or an address that names another peer
            log.info("discovery: no offers from %s: %s", peer_id, exc)
            return
        for data in offers:
            await self.take(data, sender=peer_id, service=service)

    # -- calling

    async def call_any(
        self,
        service: str,
        body: bytes,
        *,
        max_price: int,
        timeout: float | None = None,
        deposit: int | None = None,
        min_stake: int = 0,
    ) -> CallResult:
        """`Node.call_any` (its docstring has the arguments, result and errors)."""
        _check_service(service)
        _check_amount("max_price", max_price)
        _check_amount("deposit", deposit, optional=True)
        _check_amount("min_stake", min_stake)
        _check_timeout(timeout)
        if not isinstance(body, bytes | bytearray | memoryview):
            raise LocalProtocolError("body must be bytes")
        body = bytes(body)
        now = self.host.now()
        kept = self._live(service, now, max_price, min_stake)
        if not kept:
            await self.find(service, max_price=max_price, min_stake=min_stake)
            now = self.host.now()
            kept = self._live(service, now, max_price, min_stake)
        if not kept:
            left = self.unmatched(service, max_price=max_price, min_stake=min_stake)
            raise NoProvider(
                none_within(service, left, max_price=max_price, min_stake=min_stake),
                details={
                    "service": service,
                    "max_price": max_price,
                    "min_stake": min_stake,
                    "offers": left.total,
                    "above_price": left.above_price,
                    "below_stake": left.below_stake,
                },
            )
        ranked = [_info(k, now) for k in self.chooser.rank(kept, now)]
        if not ranked:
            raise NoProvider(
                f"every provider of {service!r} failed {self.chooser.max_failures} times in a "
                "row lately: skipped for a while",
                details={"service": service, "max_price": max_price},
            )
        attempts: list[Attempt] = []
        seen = [False]  # something the next run should know (a failure, a lie, a new peer)
        try:
            return await self._try(
                service, ranked, body, max_price, timeout, deposit, attempts, seen
            )
        finally:
            if seen[0]:  # (a latency change alone is not worth a durable write per call)
                await self._remember()

    async def _try(
        self,
        service: str,
        ranked: list[OfferInfo],
        body: bytes,
        max_price: int,
        timeout: float | None,
        deposit: int | None,
        attempts: list[Attempt],
        seen: list[bool],
    ) -> CallResult:
        """Try the offers in turn (`call_any`), recording each attempt in `attempts` and
        in `seen[0]` whether it learnt something the next run should know."""
        for offer in ranked[: self.config.max_attempts]:
            started = trio.current_time()
            try:
                result, opened = await self._attempt(offer, body, timeout, deposit)
            except _Failed as failure:
                attempts.append(
                    Attempt(
                        peer=offer.peer,
                        outcome=failure.outcome,
                        code=failure.code.value,
                        message=failure.message,
                    )
                )
                if failure.outcome in _FAILURES:  # not a lie (banned) nor our own policy
                    kind = FailureKind(failure.outcome)
                    self.chooser.record_failure(offer.peer, kind, self.host.now())
                seen[0] = seen[0] or failure.outcome != "skipped"
                log.info(
                    "call any %r: %s %s: %s", service, offer.peer, prose(failure.outcome), failure
                )
                continue
            latency_ms = max(0, int((trio.current_time() - started) * 1000))
            before = self.chooser.stats(offer.peer)
            seen[0] = seen[0] or before.consecutive_failures > 0 or before.successes == 0
            self.chooser.record_success(offer.peer, latency_ms, self.host.now())
            attempts.append(Attempt(peer=offer.peer, outcome="ok"))
            ch = self.host.book.payer_channels.get(result.channel)
            return replace(
                result,
                peer=offer.peer,
                attempts=tuple(attempts),
                opened=opened,
                deposit=ch.deposit if ch is not None else 0,
            )
        raise NoProvider(
            none_served(service, [failed_text(a) for a in attempts]),
            attempts=tuple(attempts),
            details={"service": service, "max_price": max_price},
        )

    async def _remember(self) -> None:
        """Keep what was seen of the providers, and the bans, in the store (`STATS_KEY`),
        durably: the next run (the next `p2pay call any`) ranks them as this one would."""
        seen = {"stats": self.chooser.snapshot(), "bans": self.book.bans(self.host.now())}
        data = json.dumps(seen, separators=(",", ":")).encode()
        try:
            await self.host.persister.durable(self.host.persister.stage(meta={STATS_KEY: data}))
        except P2payError as exc:  # the call's outcome stands; only the ranking is lost
            log.warning("discovery: cannot keep the provider stats: %s", exc)

    async def _attempt(
        self, offer: OfferInfo, body: bytes, timeout: float | None, deposit: int | None
    ) -> tuple[CallResult, bool]:
        """Try one offer: its result, and whether a channel was opened for it. Raises
        `_Failed` when it should be recorded and skipped."""
        conn = await self._reach(offer)
        lie = _hello_lie(offer, conn.hello)
        if lie is None and not self.book.hello_seen(offer.peer, conn.hello, self.host.now()):
            lie = "its hello announces worse terms than one of its offers (price or stake)"
        if lie is not None:
            self._lie(offer.peer, lie)
            await conn.close()
            raise _Failed("lied", ErrorCode.TERMS_REFUSED, lie)
        self._not_faulty(offer.peer, conn.account)
        ch = self.host.book.payer_channel_to(conn.account)
        opened = ch is None or ch.available < offer.price
        if opened:
            amount = deposit
            if amount is None:
                amount = min(self.config.deposit_calls * offer.price, self.config.max_deposit)
            if amount < offer.price:
                raise _Failed(
                    "skipped",
                    ErrorCode.TERMS_REFUSED,
                    f"its price, {offer.price} yocto, is above the deposit policy's "
                    f"max_deposit of {amount} yocto",
                )
            try:
                await self.host.open_channel(
                    conn.peer_id,
                    deposit=max(1, amount),
                    require_stake=True,
                    max_price=offer.price,
                )
            except (TermsRefused, RemoteProtocolError) as exc:
                raise _failed("refused", exc) from None
            except ConnectionLost as exc:
                raise _failed("unreachable", exc) from None
        try:
            result = await self.host.call(
                conn.peer_id, offer.service, body, max_price=offer.price, timeout=timeout
            )
            return result, opened
        except PaymentRequired as exc:
            asked = exc.details.get("price")
            if type(asked) is int and asked > offer.price:
                reason = f"asked {asked} yocto, above its offer's price of {offer.price} yocto"
                self.book.price_seen(offer.peer, offer.service, asked, self.host.now())
                self._lie(offer.peer, reason)
                raise _Failed("lied", exc.code, reason) from None
            raise _failed("refused", exc) from None
        except CallTimeout as exc:  # RequestInDoubt too: the request stays claimable
            raise _failed(FailureKind.TIMED_OUT, exc) from None
        except ConnectionLost as exc:
            raise _failed("unreachable", exc) from None
        except (RemoteProtocolError, PayeeFaulty) as exc:
            self._not_faulty(offer.peer, conn.account)  # a bad receipt made it faulty
            if isinstance(exc, PayeeFaulty):  # (another call found it faulty meanwhile)
                raise _failed("lied", exc) from None
            raise _failed("refused", exc) from None

    def _not_faulty(self, peer: str, account: bytes) -> None:
        """Raise `_Failed` ("lied") if `account` sent a bad receipt on one of our channels
        (protocol.md 14.3, "A faulty payee"): it is banned as a liar, and no channel is
        opened to it nor a request signed for it."""
        faulty = self.host.book.faulty_payee(account)
        if faulty is not None:
            reason = f"it sent a receipt that failed the check ({faulty})"
            self._lie(peer, reason)
            raise _Failed("lied", ErrorCode.PAYEE_FAULTY, reason)

    async def _reach(self, offer: OfferInfo) -> _Connection:
        """A connection to the offer's peer, through its addresses in turn (an address
        that leads to an authenticated hello is recorded in the address book)."""
        error: P2payError | None = None
        for addr in offer.addrs:
            try:
                return await self.host._reach(addr)
            except ConnectionLost as exc:  # WrongPeer, NoKnownAddress, PeerUnreachable
                error = exc
            except RemoteProtocolError as exc:  # refused the hello (WrongLedger, Overloaded)
                raise _failed("refused", exc) from None
            except LocalProtocolError as exc:  # an address the transport cannot dial
                error = exc
        if error is None:
            raise _Failed("unreachable", ErrorCode.NO_ADDRESS, "the offer has no address")
        raise _failed("unreachable", error)

    def _lie(self, peer: str, reason: str) -> None:
        self.lies += 1
        log.warning("discovery: %s lied about its offer: %s; ignored for a while", peer, reason)
        if not self.book.banned(peer, self.host.now()):  # hello_seen may have banned it
            self.book.lie(peer, reason, self.host.now())


# -- the core's values, as the node uses them


def _parse_seq(raw: bytes | None) -> int:
    """The stored counter (0 if none); a damaged value never lowers it below what it may
    have been: it is refused loudly."""
    if not raw:
        return 0
    try:
        value = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise LocalProtocolError(
            f"the store's {SEQ_KEY} is not a number: cannot tell which offer sequence "
            "numbers were used"
        ) from None
    if not 0 <= value <= _MAX_SEQ:
        raise LocalProtocolError(f"the store's {SEQ_KEY} is out of range")
    return value


def prose(outcome: str) -> str:
    """An attempt's outcome in a sentence: ``timed out`` for ``timed_out``."""
    return outcome.replace("_", " ")


def failed_text(attempt: Attempt) -> str:
    """A failed attempt of `call_any` in a sentence, e.g. ``PEER timed out (CODE: ...)``."""
    return f"{attempt.peer} {prose(attempt.outcome)} ({attempt.code}: {attempt.message})"


def none_served(service: str, said: list[str]) -> str:
    """NO_PROVIDER's message when every attempt failed: what each one `said`
    (`failed_text`, which a caller may complete)."""
    return f"no provider of {service!r} served the call: " + "; ".join(said)


def none_within(
    service: str, left: Unmatched, *, max_price: int | None = None, min_stake: int = 0
) -> str:
    """Why no offer of `service` is within the terms: nobody offers it, or how many offers
    the terms leave out (`Unmatched`), e.g. ``no offer of 'echo' at or below 999 yocto; 1
    offer above (lowest 1000 yocto)``."""
    if not left.total:
        return f"nobody offers {service!r}: no live offer of it was found"
    terms = []
    if max_price is not None:
        terms.append(f"at or below {max_price} yocto")
    if min_stake:
        terms.append(f"with a stake of at least {min_stake} yocto")
    both = len(terms) == 2
    out = []
    if left.above_price:
        n = left.above_price
        out.append(
            f"{n} offer{'s' * (n > 1)} above{' the price' * both} "
            f"(lowest {left.lowest_price} yocto)"
        )
    if left.below_stake:
        n = left.below_stake
        out.append(
            f"{n} offer{'s' * (n > 1)} below{' the stake' * both} "
            f"(highest {left.highest_stake} yocto)"
        )
    return f"no offer of {service!r} {' '.join(terms)}; {', '.join(out)}"


def _info(kept: KeptOffer, now: int) -> OfferInfo:
    """The `OfferInfo` of an offer the book keeps."""
    offer = kept.offer
    return OfferInfo(
        peer=offer.peer_id,
        account=offer.account,
        service=offer.name,
        price=offer.price,
        max_body=offer.service.max_body,
        stake=offer.stake.amount,
        penalty=offer.stake.penalty,
        claim_window_ms=offer.stake.claim_window_ms,
        addrs=tuple(offer.addrs),
        seq=offer.seq,
        expires=offer.expires,
        expires_in_ms=max(0, offer.expires - now),
        seen_ms_ago=max(0, now - kept.received_ms),
    )


def _hello_lie(offer: OfferInfo, hello: Hello) -> str | None:
    """How the peer's hello contradicts its offer (specs/discovery.md 7.5), or None: another
    account, or worse terms (a higher price; no stake, a smaller amount or penalty, another
    window). Better terms are no lie: the offer is older than the hello."""
    if hello.account != offer.account:
        return "its hello names another account than its offer"
    terms = hello.service(offer.service)
    if terms is not None and terms.price > offer.price:
        return (
            f"its hello prices {offer.service!r} at {terms.price} yocto, its offer at "
            f"{offer.price} yocto"
        )
    stake = hello.stake
    if (
        stake is None
        or stake.amount < offer.stake
        or stake.penalty < offer.penalty
        or stake.claim_window_ms != offer.claim_window_ms
    ):
        shown = "no stake" if stake is None else f"a stake of {stake.amount} yocto"
        return (
            f"its hello announces {shown}, below its offer's {offer.stake} yocto (or a "
            "smaller penalty, or another claim window)"
        )
    return None
