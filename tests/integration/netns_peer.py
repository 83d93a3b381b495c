"""One p2pay peer for tests/integration/test_netns.py, run as an OS process in a network
namespace: ``python netns_peer.py provider|client --ledger FILE --status FILE ...``.

Both roles use the shared SQLite ledger file and report progress as lines appended to
their ``--status`` file (flushed at once), which the test polls:

* provider: ``READY <multiaddr>``, then ``HANDLER_STARTED <n>`` when its ``slow``
  service starts (it then sleeps ``--sleep`` seconds and answers ``answer:`` + body),
  ``HANDLER_DONE <n>``; it runs until killed or ``--max-seconds``.
* client: ``CHANNEL <hex>``; ``CALL_OK <body hex>`` or ``CALL_FAILED <exception type>``;
  then, once the claim the watcher files for the unanswered request is decided,
  ``RESULT <json>`` with the outcome, the answer's status and body as the node reads
  them from the ledger (``Node.claims``: checked like a receipt), or ``RESULT_TIMEOUT``.

Every wait is bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio

from p2pay.core.identity import Keypair
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.node import Call, NodeConfig, open_node
from p2pay.store.memory import MemoryStore

PRICE = 10**18
SERVICE = "slow"


def say(status: Path, line: str) -> None:
    with status.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def config(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(
        watch_interval=0.2,
        claim_grace_ms=500,
        default_timeout=args.timeout,
        redeem_threshold=10**30,  # redeem only when a duty forces it
    )


async def provider(args: argparse.Namespace) -> None:
    status = Path(args.status)
    ledger = await SqliteLedger.open(args.ledger)
    key = Keypair.from_seed(bytes.fromhex(args.seed))

    async def slow(call: Call) -> bytes:
        say(status, f"HANDLER_STARTED {call.n}")
        await trio.sleep(args.sleep)
        say(status, f"HANDLER_DONE {call.n}")
        return b"answer:" + call.body

    with trio.move_on_after(args.max_seconds):
        async with open_node(
            key=key, ledger=ledger, store=MemoryStore(), listen=(args.listen,), config=config(args)
        ) as node:
            node.serve(SERVICE, slow, price=PRICE)
            say(status, f"READY {node.addrs[0]}")
            await trio.sleep_forever()
    await ledger.aclose()


async def client(args: argparse.Namespace) -> None:
    status = Path(args.status)
    ledger = await SqliteLedger.open(args.ledger)
    key = Keypair.from_seed(bytes.fromhex(args.seed))
    body = bytes.fromhex(args.body)
    deadline = time.monotonic() + args.max_seconds
    with trio.move_on_after(args.max_seconds):
        async with open_node(
            key=key, ledger=ledger, store=MemoryStore(), listen=(args.listen,), config=config(args)
        ) as node:
            info = await node.open_channel(
                args.provider, deposit=100 * PRICE, challenge_ms=args.challenge_ms
            )
            say(status, f"CHANNEL {info.channel.hex()}")
            try:
                result = await node.call(
                    args.provider, SERVICE, body, max_price=PRICE, timeout=args.timeout
                )
            except Exception as exc:  # the answer is not expected to come back: say why
                say(status, f"CALL_FAILED {type(exc).__name__}")
            else:
                say(status, f"CALL_OK {result.body.hex()}")
            while time.monotonic() < deadline:
                found = await decided_claim(node)
                if found is not None:
                    say(status, "RESULT " + json.dumps(found, sort_keys=True))
                    break
                await trio.sleep(0.2)
            else:
                say(status, "RESULT_TIMEOUT")
    await ledger.aclose()


async def decided_claim(node: Any) -> dict[str, Any] | None:
    """The first claim this node filed that has an outcome, as the node reports it
    (nodes without `Node.claims`, before specs/claims.md: as the ledger has it)."""
    if not hasattr(node, "claims"):
        return await decided_claim_on_ledger(node)
    for info in await node.claims():
        if info.role != "claimant" or info.outcome == "open":
            continue
        response = info.response
        return {
            "claim": info.claim_id.hex(),
            "outcome": info.outcome,
            "status": info.status,
            "bond_returned": info.bond_returned,
            "slashed": info.slashed,
            "body": response.body.hex() if response is not None else None,
        }
    return None


async def decided_claim_on_ledger(node: Any) -> dict[str, Any] | None:
    from p2pay.core.messages import Response, decode_frame

    for claim in await node.ledger.claims_of(node.account):
        state = str(getattr(claim.state, "value", claim.state))
        if claim.claimant != node.account or state == "open":
            continue
        response = decode_frame(claim.response_frame) if claim.response_frame else None
        ok = isinstance(response, Response)
        return {
            "claim": claim.id.hex(),
            "outcome": state,
            "status": response.status if ok else "",
            "bond_returned": None,
            "slashed": claim.slashed,
            "body": response.body.hex() if ok else None,
        }
    return None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("provider", "client"))
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--seed", required=True, help="32-byte key seed, hex")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--provider", help="client: the provider's multiaddr")
    parser.add_argument("--body", default="68656c6c6f", help="client: request body, hex")
    parser.add_argument("--sleep", type=float, default=2.0, help="provider: handler time (s)")
    parser.add_argument("--timeout", type=float, default=4.0, help="call timeout (s)")
    parser.add_argument("--challenge-ms", type=int, default=120_000)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    trio.run(provider if args.role == "provider" else client, args)


if __name__ == "__main__":
    main(sys.argv[1:])
