"""7. Memory per open channel and per connected peer (memory transport and libp2p).

Issue 9 sets no number here, so the budgets below are this benchmark's, derived from
the project's own sizes (the ratio printed is measured / budget, target <= 1):

* per channel, ``CHANNEL_BUDGET`` = 10 KiB: a provider with 100,000 open channels in
  about 1 GiB (a channel's durable record is under 1 KiB);
* per peer on the memory transport, ``SIM_PEER_BUDGET`` = 2.4 MiB: the 5,000-peer
  simulation in half of this 24 GiB machine (12 GiB / 5,000);
* per connected libp2p peer, ``LIBP2P_PEER_BUDGET`` = 1 MiB: a host at its
  ``MAX_CONNECTIONS`` = 1,000 in 1 GiB.

How: in one process, with the nodes of each step kept open, ``gc.collect()`` and then
the RSS delta (/proc/self/status, tracemalloc off) over N channels or N peers; then the
same step again on fresh nodes under tracemalloc (Python allocations only: retained
delta and peak delta), with the top allocation sites of the retained delta saved as the
profile. Also measured: bytes retained per paid call (the store keeps every signed
response for ``response_retention_ms``, 3 days by default, and every outgoing request).
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from benchmarks._common import MICRO, TOKEN, Result, rss_bytes, write_profile
from benchmarks._harness import ALICE, BOB, BODY, CAROL, MALLORY, SERVICE, echo
from p2pay.core.identity import Keypair
from p2pay.ledger.memory import MemoryLedger
from p2pay.node import Node, open_node

NAME = "memory_footprint"
KIB = 1024
MIB = 1024 * 1024
CHANNEL_BUDGET = 10 * KIB
SIM_PEER_BUDGET = int(2.4 * MIB)
LIBP2P_PEER_BUDGET = 1 * MIB

SIZE: dict[str, dict[str, int]] = {
    "smoke": {"channels": 10, "peers": 3, "libp2p_peers": 1, "calls": 50},
    "quick": {"channels": 300, "peers": 30, "libp2p_peers": 8, "calls": 1000},
    "full": {"channels": 2000, "peers": 200, "libp2p_peers": 40, "calls": 10000},
}


def _key(i: int) -> Keypair:
    return Keypair.from_seed(b"\x07" + i.to_bytes(31, "big"))


class _Measure:
    """RSS delta (tracemalloc off) or tracemalloc retained and peak deltas."""

    def __init__(self, traced: bool) -> None:
        self.traced = traced
        self.snapshot: Any = None

    def start(self) -> None:
        gc.collect()
        if self.traced:
            tracemalloc.reset_peak()
            self.base = tracemalloc.get_traced_memory()[0]
            self.snapshot = tracemalloc.take_snapshot()
        else:
            self.base = rss_bytes()

    def stop(self) -> dict[str, int]:
        gc.collect()
        if self.traced:
            current, peak = tracemalloc.get_traced_memory()
            self.after = tracemalloc.take_snapshot()
            return {"traced": current - self.base, "traced_peak": peak - self.base}
        return {"rss": rss_bytes() - self.base}

    def top_sites(self, n: int = 15) -> str:
        if self.snapshot is None:
            return ""
        stats = self.after.compare_to(self.snapshot, "lineno")
        lines = [str(s) for s in stats[:n]]
        return "\n".join(lines)


async def _pair(
    stack: contextlib.AsyncExitStack,
    net: Any,
    provider: Keypair,
    client: Keypair,
    ledger: MemoryLedger,
    first_deposit: int = MICRO * 1_000_000,
) -> tuple[Node, Node, str]:
    await ledger.mint(client, client.account, 10 * TOKEN)
    prov = await stack.enter_async_context(open_node(key=provider, ledger=ledger, network=net))
    prov.serve(SERVICE, echo, price=MICRO)
    cli = await stack.enter_async_context(open_node(key=client, ledger=ledger, network=net))
    addr = prov.addrs[0]
    await cli.open_channel(addr, deposit=first_deposit)
    await cli.call(addr, SERVICE, BODY, max_price=MICRO, timeout=60)
    return prov, cli, addr


async def _channels(n: int, traced: bool, keys: tuple[Keypair, Keypair]) -> tuple[dict, _Measure]:
    """Open n channels client -> provider, then one call on each (payee side appears)."""
    from p2pay.net.memory import MemoryNetwork

    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        ledger = MemoryLedger()
        # The first channel holds less than the new ones, and a call pays from the open
        # channel with the most credit left, so the n calls below use each new channel once.
        prov, cli, addr = await _pair(
            stack, MemoryNetwork(), keys[0], keys[1], ledger, first_deposit=MICRO * 10
        )
        m = _Measure(traced)
        m.start()
        for _ in range(n):
            await cli.open_channel(addr, deposit=MICRO * 100)
        out["opened"] = m.stop()
        before = len(prov.payee_channels)
        m2 = _Measure(traced)
        m2.start()
        for _ in range(n):
            await cli.call(prov.peer_id, SERVICE, BODY, max_price=MICRO, timeout=60)
        out["used_once"] = m2.stop()
        out["payee_channels_added"] = len(prov.payee_channels) - before
        if out["payee_channels_added"] != n:
            raise RuntimeError(f"{n} calls reached {out['payee_channels_added']} new channels")
    return out, m


async def _calls(n: int, traced: bool) -> tuple[dict, _Measure]:
    from p2pay.net.memory import MemoryNetwork

    async with contextlib.AsyncExitStack() as stack:
        prov, cli, _addr = await _pair(stack, MemoryNetwork(), BOB, ALICE, MemoryLedger())
        m = _Measure(traced)
        m.start()
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await cli.call(prov.peer_id, SERVICE, BODY, max_price=MICRO, timeout=60)

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(worker)
        return m.stop(), m


async def _peers(n: int, traced: bool, libp2p: bool, offset: int) -> tuple[dict, _Measure]:
    """n client nodes, each with a channel to one provider and one call made."""
    net: Any = None
    if not libp2p:
        from p2pay.net.memory import MemoryNetwork

        net = MemoryNetwork()
    async with contextlib.AsyncExitStack() as stack:
        ledger = MemoryLedger()
        prov, _cli, addr = await _pair(
            stack, net, CAROL if traced else BOB, MALLORY if traced else ALICE, ledger
        )
        m = _Measure(traced)
        m.start()
        for i in range(n):
            key = _key(offset + i)
            await ledger.mint(key, key.account, TOKEN)
            node = await stack.enter_async_context(open_node(key=key, ledger=ledger, network=net))
            await node.open_channel(addr, deposit=MICRO * 100)
            await node.call(addr, SERVICE, BODY, max_price=MICRO, timeout=60)
        result = m.stop()
        result["connections_at_provider"] = len(prov.payee_channels)
        return result, m


def _result(
    name: str, title: str, per: float, budget: int, figures: dict[str, Any], notes: list[str]
) -> Result:
    return Result(
        name=name,
        title=title,
        target_op="<=",
        target=1.0,
        ratio=per / budget,
        ratio_desc=f"measured bytes per unit (max of RSS and traced deltas) / budget "
        f"{budget / KIB:,.0f} KiB",
        figures=figures,
        notes=notes,
    )


async def _main(size: str, profile_dir: Path | None) -> list[Result]:
    p = SIZE[size]
    nch, npeer, nlib, ncalls = p["channels"], p["peers"], p["libp2p_peers"], p["calls"]
    tracemalloc_was = tracemalloc.is_tracing()
    profile: list[str] = []

    async def both(
        fn: Callable[[bool], Awaitable[tuple[dict, _Measure]]], label: str
    ) -> tuple[dict, dict]:
        rss, _ = await fn(False)
        tracemalloc.start(1)
        try:
            traced, m = await fn(True)
        finally:
            if not tracemalloc_was:
                tracemalloc.stop()
        profile.append(f"## {label}: top allocation sites of the retained delta\n{m.top_sites()}\n")
        return rss, traced

    ch_rss, ch_tr = await both(
        lambda t: _channels(nch, t, (CAROL, MALLORY) if t else (BOB, ALICE)),
        f"{nch} channels opened",
    )
    per_open = max(ch_rss["opened"]["rss"], ch_tr["opened"]["traced"]) / nch
    per_used = max(ch_rss["used_once"]["rss"], ch_tr["used_once"]["traced"]) / nch
    per_channel = per_open + per_used
    call_rss, call_tr = await both(lambda t: _calls(ncalls, t), f"{ncalls} paid calls")
    per_call = max(call_rss["rss"], call_tr["traced"]) / ncalls
    peer_rss, peer_tr = await both(
        lambda t: _peers(npeer, t, False, 1000 if t else 0), f"{npeer} memory-transport peers"
    )
    per_peer = max(peer_rss["rss"], peer_tr["traced"]) / npeer
    lib_rss, _ = await _peers(nlib, False, True, 5000)
    per_lib = lib_rss["rss"] / nlib
    path = write_profile(profile_dir, f"{NAME}.txt", "\n".join(profile))

    def kib(x: float) -> float:
        return round(x / KIB, 2)

    channel = _result(
        "memory_channel",
        "bytes per open channel (payer + payee + ledger + store), memory transport / budget",
        per_channel,
        CHANNEL_BUDGET,
        {
            "channels": nch,
            "open_only_kib_per_channel": {
                "rss": kib(ch_rss["opened"]["rss"] / nch),
                "traced": kib(ch_tr["opened"]["traced"] / nch),
                "traced_peak": kib(ch_tr["opened"]["traced_peak"] / nch),
            },
            "first_call_kib_per_channel": {
                "rss": kib(ch_rss["used_once"]["rss"] / nch),
                "traced": kib(ch_tr["used_once"]["traced"] / nch),
                "traced_peak": kib(ch_tr["used_once"]["traced_peak"] / nch),
            },
            "payee_channels_added": ch_tr["payee_channels_added"],
            "retained_kib_per_paid_call": {
                "rss": kib(call_rss["rss"] / ncalls),
                "traced": kib(call_tr["traced"] / ncalls),
            },
            "calls": ncalls,
            "profile": path,
        },
        [
            f"{kib(per_open)} KiB per channel opened + {kib(per_used)} KiB when first used "
            f"(payee side, its stored response and request)",
            f"every paid call retains {kib(per_call)} KiB (signed response + outgoing "
            f"request kept in the store for response_retention_ms = 3 days)",
        ],
    )
    peer = _result(
        "memory_sim_peer",
        "bytes per connected peer (whole client node + channel + session), memory "
        "transport / budget",
        per_peer,
        SIM_PEER_BUDGET,
        {
            "peers": npeer,
            "kib_per_peer": {
                "rss": kib(peer_rss["rss"] / npeer),
                "traced": kib(peer_tr["traced"] / npeer),
                "traced_peak": kib(peer_tr["traced_peak"] / npeer),
            },
            "profile": path,
        },
        [
            f"{kib(per_peer)} KiB per peer (a client node, its channel, its session at the "
            f"provider, one call)"
        ],
    )
    lib = _result(
        "memory_libp2p_peer",
        "RSS per connected libp2p peer (client host + node + connection) / budget",
        per_lib,
        LIBP2P_PEER_BUDGET,
        {"peers": nlib, "kib_per_peer_rss": kib(per_lib)},
        [
            f"{kib(per_lib)} KiB RSS per libp2p peer (includes the client's own host and node, "
            f"so the provider's share is less)"
        ],
    )
    return [channel, peer, lib]


def run(size: str, profile_dir: Path | None) -> list[Result]:
    return trio.run(_main, size, profile_dir)
