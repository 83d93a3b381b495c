"""The payee's redeem policy (specs/protocol.md section 17.1), with a fake clock and ledger.

`redeem_reason` is the decision alone; `Watcher._redeem_due` is the decision applied to a
node's payee channels. The fake node below has only what the watcher's redeem duty uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from p2pay.core.channel import ChannelStatus, PayeeChannel
from p2pay.core.errors import LocalProtocolError
from p2pay.core.messages import Request
from p2pay.node import NodeConfig
from p2pay.node.watcher import Watcher, redeem_reason
from p2pay.store.conformance import ALICE, BOB, LEDGER, channel_id

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
DEFAULT = NodeConfig()


def reason(
    unredeemed: int,
    escrow: int = 1_000,
    *,
    closing: bool = False,
    now: int = 10 * DAY,
    since: int | None = None,
    last: int | None = None,
    config: NodeConfig = DEFAULT,
) -> str | None:
    return redeem_reason(
        unredeemed=unredeemed,
        escrow=escrow,
        closing=closing,
        now=now,
        unredeemed_since=now if since is None else since,
        last_redeem=last,
        config=config,
    )


def test_defaults_are_proportional_rate_limited_and_time_bounded() -> None:
    assert DEFAULT.redeem_fraction_bps == 5_000
    assert DEFAULT.redeem_threshold == (1 << 128) - 1  # no absolute threshold unless set
    assert DEFAULT.min_redeem_interval_ms == 5 * MINUTE
    assert DEFAULT.redeem_max_age_ms == DAY


def test_nothing_unredeemed_is_never_redeemed() -> None:
    assert reason(0) is None
    assert reason(0, closing=True) is None
    assert reason(0, since=0) is None


def test_fraction_of_the_escrow() -> None:
    assert reason(499, 1_000) is None
    assert reason(500, 1_000) == "fraction"
    assert reason(1_000, 1_000) == "fraction"
    # the escrow is what is left: after a redeem, the next half is of what remains
    assert reason(249, 500) is None and reason(250, 500) == "fraction"
    # exact integer arithmetic at the top of the range
    big = (1 << 128) - 1
    assert reason(big // 2, big) is None
    assert reason(big // 2 + 1, big) == "fraction"
    quarter = NodeConfig(redeem_fraction_bps=2_500)
    assert reason(249, 1_000, config=quarter) is None
    assert reason(250, 1_000, config=quarter) == "fraction"
    off = NodeConfig(redeem_fraction_bps=0)
    assert reason(1_000, 1_000, config=off) is None


def test_absolute_threshold_when_configured() -> None:
    config = NodeConfig(redeem_threshold=100)
    assert reason(99, 10**9, config=config) is None
    assert reason(100, 10**9, config=config) == "threshold"
    assert reason(100, 10**9) is None  # default: no absolute threshold
    # 0: whatever is owed, once per minimum interval
    anything = NodeConfig(redeem_threshold=0, redeem_fraction_bps=0)
    assert reason(1, 10**9, config=anything) == "threshold"
    assert reason(1, 10**9, now=10 * DAY, last=10 * DAY - MINUTE, config=anything) is None


def test_oldest_unredeemed_charge_has_a_maximum_age() -> None:
    now = 10 * DAY
    assert reason(1, 10**9, now=now, since=now - DAY + 1) is None
    assert reason(1, 10**9, now=now, since=now - DAY) == "age"
    short = NodeConfig(redeem_max_age_ms=MINUTE)
    assert reason(1, 10**9, now=now, since=now - MINUTE, config=short) == "age"


def test_minimum_interval_between_redeems_of_a_channel() -> None:
    now = 10 * DAY
    recent = now - 5 * MINUTE + 1
    assert reason(1_000, 1_000, now=now, last=recent) is None
    assert reason(1, 10**9, now=now, since=0, last=recent) is None  # age waits too
    assert reason(1_000, 1_000, now=now, last=now - 5 * MINUTE) == "fraction"
    # a clock that went backwards does not shorten the interval
    assert reason(1_000, 1_000, now=now, last=now + HOUR) is None
    # the first redeem of a channel is not rate limited
    assert reason(1_000, 1_000, now=now, last=None) == "fraction"


def test_a_closing_channel_is_redeemed_at_once_whatever_the_rest_says() -> None:
    now = 10 * DAY
    off = NodeConfig(redeem_fraction_bps=0, redeem_max_age_ms=10 * DAY)
    assert reason(1, 10**9, closing=True, now=now, last=now, config=off) == "closing"
    assert reason(1, 10**9, closing=True, now=now, last=now - 1) == "closing"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("redeem_fraction_bps", -1),
        ("redeem_fraction_bps", 10_001),
        ("redeem_fraction_bps", 0.5),
        ("redeem_threshold", -1),
        ("redeem_threshold", 1 << 128),
        ("redeem_threshold", True),
        ("min_redeem_interval_ms", -1),
        ("redeem_max_age_ms", 0),
        ("redeem_max_age_ms", 1.5),
    ],
)
def test_config_refuses_nonsense(name: str, value: object) -> None:
    with pytest.raises(LocalProtocolError):
        NodeConfig(**{name: value})


# ---------------------------------------------------------------------------
# the watcher applying it, with a fake clock and ledger


class FakeLedger:
    """Redeem pays `min(amount, voucher.paid, deposit) - redeemed`, like the contract."""

    def __init__(self) -> None:
        self.redeemed: dict[bytes, int] = {}
        self.deposit: dict[bytes, int] = {}
        self.calls: list[tuple[bytes, int]] = []

    async def redeem(self, key: Any, best: Any, amount: int) -> int:
        target = min(amount, best.paid, self.deposit[best.channel])
        pay = max(0, target - self.redeemed.get(best.channel, 0))
        self.redeemed[best.channel] = self.redeemed.get(best.channel, 0) + pay
        self.calls.append((best.channel, amount))
        return pay


class FakePersister:
    def __init__(self) -> None:
        self.flushes = 0
        self.during_flush: Callable[[], None] | None = None

    async def flush(self) -> None:
        self.flushes += 1
        if self.during_flush is not None:
            self.during_flush()  # requests completing while the flush waits for the disk


@dataclass
class FakeCounters:
    redeemed: int = 0


@dataclass
class FakeNode:
    config: NodeConfig
    clock: int = 1_000 * DAY
    ledger: FakeLedger = field(default_factory=FakeLedger)
    persister: FakePersister = field(default_factory=FakePersister)
    counters: FakeCounters = field(default_factory=FakeCounters)
    payee_channels: dict[bytes, PayeeChannel] = field(default_factory=dict)
    key: Any = BOB

    def now(self) -> int:
        return self.clock

    async def refresh_channel(self, channel: bytes) -> None:
        ch = self.payee_channels[channel]
        ch.redeemed = max(ch.redeemed, self.ledger.redeemed.get(channel, 0))
        ch.deposit = max(ch.deposit, self.ledger.deposit[channel])

    def open(self, i: int, deposit: int) -> PayeeChannel:
        ch = PayeeChannel(
            ledger=LEDGER, channel=channel_id(i), payer=ALICE.public, payee=BOB.public,
            deposit=deposit,
        )  # fmt: skip
        self.payee_channels[ch.channel] = ch
        self.ledger.deposit[ch.channel] = deposit
        return ch

    def charge(self, ch: PayeeChannel, amount: int) -> None:
        """What admitting and completing paid requests does to the fields redeem reads."""
        ch.spent += amount
        ch.paid_max = max(ch.paid_max, ch.spent)
        ch.last_n += 1
        ch.best = Request.create(
            ALICE, ledger=LEDGER, channel=ch.channel, n=ch.last_n, paid=ch.paid_max,
            price=amount, service="echo", body=b"", deadline=1_700_000_000_000,
        )  # fmt: skip


async def run_steps(node: FakeNode, watcher: Watcher, ch: PayeeChannel, **plan: int) -> None:
    """`steps` watcher steps `every` ms apart, charging `per_step` yocto before each."""
    for _ in range(plan["steps"]):
        node.charge(ch, plan["per_step"])
        await watcher._redeem_due()
        node.clock += plan["every"]


async def test_a_busy_channel_is_redeemed_by_fraction_not_at_every_step() -> None:
    node = FakeNode(config=NodeConfig())
    watcher = Watcher(node)  # type: ignore[arg-type]
    deposit = 10**24
    ch = node.open(1, deposit)
    # 2,000 steps of 1 s, each charging 1/4,000 of the deposit: half the deposit in all.
    # The old absolute threshold (10**21) would have redeemed at almost every step.
    await run_steps(node, watcher, ch, steps=2_000, per_step=deposit // 4_000, every=1_000)
    assert len(node.ledger.calls) == 1
    assert watcher.redeems == {"fraction": 1}
    assert ch.redeemed == node.ledger.redeemed[ch.channel] == deposit // 2
    assert node.counters.redeemed == deposit // 2
    assert node.persister.flushes == 1  # the charge is made durable before redeeming


async def test_fraction_redeems_are_rate_limited_then_catch_up() -> None:
    node = FakeNode(config=NodeConfig())
    watcher = Watcher(node)  # type: ignore[arg-type]
    deposit = 1_000_000
    ch = node.open(1, deposit)
    # a quarter of the deposit per second: the fraction is reached every 2 s, but the
    # minimum interval allows one redeem per 5 minutes
    await run_steps(node, watcher, ch, steps=1, per_step=500_000, every=1_000)
    assert len(node.ledger.calls) == 1
    await run_steps(node, watcher, ch, steps=1, per_step=499_999, every=1_000)
    for _ in range(298):
        await watcher._redeem_due()
        node.clock += 1_000
    assert len(node.ledger.calls) == 1, "no second redeem within the minimum interval"
    await watcher._redeem_due()  # 300 s after the first
    assert len(node.ledger.calls) == 2
    assert ch.redeemed == ch.spent == 999_999


async def test_a_quiet_channel_is_redeemed_by_age() -> None:
    node = FakeNode(config=NodeConfig())
    watcher = Watcher(node)  # type: ignore[arg-type]
    ch = node.open(1, 10**24)
    node.charge(ch, 1)
    start = node.clock
    while not node.ledger.calls:
        await watcher._redeem_due()
        node.clock += MINUTE
        assert node.clock - start <= DAY + MINUTE, "not redeemed after a day"
    assert watcher.redeems == {"age": 1}
    assert node.clock - start == DAY + MINUTE
    assert ch.redeemed == 1
    # the age counts from the first unredeemed charge after the last redeem, not from the
    # last charge: a trickle of charges does not postpone it
    node.charge(ch, 1)
    start = node.clock
    while len(node.ledger.calls) < 2:
        node.charge(ch, 1)
        await watcher._redeem_due()
        node.clock += HOUR
        assert node.clock - start <= DAY + HOUR
    assert ch.redeemed == ch.spent


async def test_closing_channels_are_redeemed_at_every_step_until_done() -> None:
    node = FakeNode(config=NodeConfig(redeem_fraction_bps=0))
    watcher = Watcher(node)  # type: ignore[arg-type]
    ch = node.open(1, 10**6)
    other = node.open(2, 10**6)
    node.charge(ch, 10)
    node.charge(other, 10)
    await watcher._redeem_due()
    assert node.ledger.calls == []
    ch.status = ChannelStatus.CLOSING
    await watcher._redeem_due()
    assert node.ledger.calls == [(ch.channel, 10)]
    node.charge(ch, 5)  # a charge completing after the close began
    await watcher._redeem_due()  # no minimum interval while closing
    assert node.ledger.calls == [(ch.channel, 10), (ch.channel, 15)]
    await watcher._redeem_due()
    assert len(node.ledger.calls) == 2, "nothing left: no empty redeem"
    assert other.redeemed == 0
    assert watcher.redeems == {"closing": 2}


async def test_each_channel_has_its_own_clocks() -> None:
    node = FakeNode(config=NodeConfig())
    watcher = Watcher(node)  # type: ignore[arg-type]
    a, b = node.open(1, 1_000), node.open(2, 1_000)
    node.charge(a, 600)
    await watcher._redeem_due()
    node.clock += 1_000
    node.charge(b, 600)
    await watcher._redeem_due()  # b's first redeem is not held back by a's
    assert [c for c, _ in node.ledger.calls] == [a.channel, b.channel]


async def test_absolute_threshold_still_works_for_configs_that_set_it() -> None:
    node = FakeNode(config=NodeConfig(redeem_threshold=100, min_redeem_interval_ms=0))
    watcher = Watcher(node)  # type: ignore[arg-type]
    ch = node.open(1, 10**9)
    await run_steps(node, watcher, ch, steps=10, per_step=50, every=1_000)
    assert len(node.ledger.calls) == 5
    assert watcher.redeems == {"threshold": 5}
    assert ch.redeemed == 500


async def test_charges_made_while_redeeming_are_not_taken_for_redeemed() -> None:
    """The redeem claims what was charged (and is durable after the flush), and charges
    completing meanwhile stay unredeemed: a later close still redeems them."""
    node = FakeNode(config=NodeConfig())
    watcher = Watcher(node)  # type: ignore[arg-type]
    ch = node.open(1, 1_000)
    node.charge(ch, 600)
    node.persister.during_flush = lambda: node.charge(ch, 100)
    await watcher._redeem_due()
    node.persister.during_flush = None
    assert node.ledger.calls == [(ch.channel, 600)]
    assert ch.spent == 700
    assert ch.redeemed == node.ledger.redeemed[ch.channel] == 600
    ch.status = ChannelStatus.CLOSING
    await watcher._redeem_due()
    assert node.ledger.calls[-1] == (ch.channel, 700)
    assert ch.redeemed == node.ledger.redeemed[ch.channel] == 700


async def test_a_pass_reads_the_clock_once_until_a_redeem_waits() -> None:
    """`_redeem_due` reads the clock once for the channels it only looks at (nothing can
    move the time between them) and again after a redeem waited: the channel after it
    sees the time the redeem ended at, as when each channel read the clock itself."""
    node = FakeNode(config=NodeConfig(redeem_max_age_ms=MINUTE))
    watcher = Watcher(node)  # type: ignore[arg-type]
    reads = 0
    real_now = node.now

    def counting_now() -> int:
        nonlocal reads
        reads += 1
        return real_now()

    node.now = counting_now  # type: ignore[method-assign]
    a, b, c, idle = node.open(1, 10**9), node.open(2, 10**9), node.open(3, 10**9), node.open(4, 1)
    for ch in (a, b, c):
        node.charge(ch, 1)
    start = node.clock
    await watcher._redeem_due()  # nothing due yet: one read for the three owing channels
    assert reads == 1 and node.ledger.calls == []
    assert watcher._unredeemed_since == {a.channel: start, b.channel: start, c.channel: start}
    node.clock += MINUTE
    b.status = ChannelStatus.CLOSING  # b is redeemed at once; the redeem takes a second
    node.persister.during_flush = lambda: setattr(node, "clock", node.clock + 1_000)
    reads = 0
    await watcher._redeem_due()
    # a is redeemed by age at start + MINUTE (one read), c after b's redeem moved the clock
    assert [ch for ch, _ in node.ledger.calls] == [a.channel, b.channel, c.channel]
    assert watcher._last_redeem == {
        a.channel: start + MINUTE,
        b.channel: start + MINUTE + 1_000,
        c.channel: start + MINUTE + 2_000,
    }
    assert reads == 3
    assert idle.channel not in watcher._unredeemed_since
