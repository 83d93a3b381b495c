"""5. Ledger transactions per paid request over a long run (<= 1e-4).

One client pays one provider for N calls of "echo" on the in-memory transport (64
closed-loop callers, wall clock), at a realistic price of 1 micro-token (10**18 yocto;
the scale-1000 scenario's echo price), with the default `NodeConfig` redeem policy
(specs/protocol.md 17.1): the provider redeems when the unredeemed amount reaches
redeem_fraction_bps = 5000 of the escrow (half of it), when the oldest unredeemed charge
is redeem_max_age_ms = 1 day old, or past an absolute redeem_threshold (default
2**128 - 1: off), at most once per min_redeem_interval_ms = 5 min, and at close (every
step until nothing is owed). The channel's escrow is price x (calls + 10), so the run
spends almost all of it. Counted: every ledger transaction of the channel's life, from
`open_channel` to the provider's close (`MemoryLedger.tx_count`; the dev-only mint that
funds the client is not counted).

In the full run the same lifetime is measured at two more prices (escrow scaled the same
way, so the count should not depend on the price), and at 1 micro-token with
redeem_threshold = 10**22 (what scale-1000.toml sets), each for 20,000 calls.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks._common import (
    MICRO,
    Result,
    new_profiler,
    profile_text,
    top_buckets,
    write_profile,
)
from benchmarks._harness import ALICE, BOB, BODY, SERVICE, echo
from p2pay.ledger.memory import MemoryLedger
from p2pay.net.memory import MemoryNetwork
from p2pay.node import NodeConfig, open_node

NAME = "ledger_tx"
TITLE = "ledger transactions per paid request, channel lifetime (memory transport)"
TARGET = 1e-4

SIZE: dict[str, dict[str, Any]] = {
    "smoke": {"calls": 300, "sweep": [], "prof_calls": 100},
    "quick": {"calls": 3_000, "sweep": [], "prof_calls": 1_000},
    "full": {
        "calls": 100_000,
        "sweep": [(10**15, 20_000, None), (10**20, 20_000, None), (MICRO, 20_000, 10**22)],
        "prof_calls": 5_000,
    },
}
CONCURRENCY = 64


async def _run_calls(client: Any, peer: str, price: int, calls: int) -> float:
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.call(peer, SERVICE, BODY, max_price=price, timeout=60)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(worker)
    return time.perf_counter() - t0


async def _lifetime(
    price: int,
    calls: int,
    prof_calls: int,
    profile_dir: Path | None,
    threshold: int | None = None,
) -> dict:
    config = NodeConfig() if threshold is None else NodeConfig(redeem_threshold=threshold)
    ledger = MemoryLedger()
    deposit = price * (calls + prof_calls + 10)
    await ledger.mint(ALICE, ALICE.account, deposit)
    tx0 = ledger.tx_count
    events0 = len(await ledger.events(0, 10**9))
    out: dict[str, Any] = {"price": price, "calls": calls}
    net = MemoryNetwork()
    async with (
        open_node(key=BOB, ledger=ledger, network=net, config=config) as provider,
        open_node(key=ALICE, ledger=ledger, network=net, config=config) as client,
    ):
        provider.serve(SERVICE, echo, price=price)
        info = await client.open_channel(provider.addrs[0], deposit=deposit)
        elapsed = await _run_calls(client, provider.peer_id, price, calls)
        out["calls_per_s"] = calls / elapsed
        out["elapsed_s"] = elapsed
        if prof_calls and profile_dir is not None:
            prof = new_profiler()
            prof.enable()
            await _run_calls(client, provider.peer_id, price, prof_calls)
            prof.disable()
            text, rows = profile_text(
                prof,
                f"{NAME}: {prof_calls:,} paid calls at {price} yocto, memory transport",
                per=prof_calls,
            )
            out["profile"] = write_profile(profile_dir, f"{NAME}.txt", text)
            out["profile_top"] = top_buckets(rows, 8)
            out["ledger_watcher_share"] = sum(
                share for name, _s, share in rows if "ledger" in name or "watcher" in name
            )
            out["calls"] += prof_calls
        await provider.close_channel(info.channel)
        out["charged"] = provider.counters.charged
        out["redeemed_counter"] = provider.counters.redeemed
    events = (await ledger.events(0, 10**9))[events0:]
    out["tx"] = ledger.tx_count - tx0
    out["events"] = dict(collections.Counter(e.kind for e in events))
    out["tx_per_call"] = out["tx"] / out["calls"]
    out["threshold"] = config.redeem_threshold
    out["watch_interval_s"] = config.watch_interval
    out["deposit"] = deposit
    out["config"] = {
        "redeem_fraction_bps": config.redeem_fraction_bps,
        "redeem_threshold": config.redeem_threshold,
        "redeem_max_age_ms": config.redeem_max_age_ms,
        "min_redeem_interval_ms": config.min_redeem_interval_ms,
    }
    return out


async def _main(size: str, profile_dir: Path | None) -> list[Result]:
    p = SIZE[size]
    main = await _lifetime(MICRO, p["calls"], p["prof_calls"], profile_dir)
    sweep = [
        await _lifetime(price, calls, 0, None, threshold) for price, calls, threshold in p["sweep"]
    ]
    figures: dict[str, Any] = {
        "price_yocto": MICRO,
        "calls": main["calls"],
        "ledger_tx": main["tx"],
        "ledger_events": main["events"],
        "redeem_policy": main["config"],
        "watch_interval_s": main["watch_interval_s"],
        "calls_per_s": round(main["calls_per_s"], 1),
        "run_s": round(main["elapsed_s"], 1),
        "deposit_yocto": main["deposit"],
        "charged_yocto": main["charged"],
        "charged_over_half_escrow": round(main["charged"] / (main["deposit"] / 2), 3),
    }
    notes = [
        f"{main['tx']} ledger tx for {main['calls']:,} calls at {MICRO} yocto "
        f"({main['events']}); charged / (escrow/2) = {figures['charged_over_half_escrow']} "
        f"(the half-escrow rule fires once per half escrow left unredeemed, at most once "
        f"per {main['config']['min_redeem_interval_ms'] // 1000} s; the close settles the rest)",
    ]
    for s in sweep:
        threshold = "off" if s["threshold"] >= 2**128 - 1 else f"{s['threshold']:.0e}"
        key = f"price_{s['price']:.0e}_threshold_{threshold}"
        figures[key] = {
            "calls": s["calls"],
            "tx": s["tx"],
            "tx_per_call": s["tx_per_call"],
            "calls_per_s": round(s["calls_per_s"], 1),
            "events": s["events"],
            "charged_over_half_escrow": round(s["charged"] / (s["deposit"] / 2), 3),
        }
        notes.append(
            f"at {s['price']:.0e} yocto/call, redeem_threshold {threshold}: {s['tx']} tx / "
            f"{s['calls']:,} calls = {s['tx_per_call']:.2e} ({s['events']}; "
            f"{round(s['calls_per_s'])} calls/s)"
        )
    if "profile" in main:
        figures["profile"] = main["profile"]
        figures["ledger_watcher_share_of_cpu"] = round(main["ledger_watcher_share"], 4)
        notes.append("profile, self time: " + ", ".join(main["profile_top"]))
    return [
        Result(
            name=NAME,
            title=TITLE,
            target_op="<=",
            target=TARGET,
            ratio=main["tx_per_call"],
            ratio_desc="ledger transactions (open + redeems + close) / paid calls",
            figures=figures,
            notes=notes,
        )
    ]


def run(size: str, profile_dir: Path | None) -> list[Result]:
    return trio.run(_main, size, profile_dir)
