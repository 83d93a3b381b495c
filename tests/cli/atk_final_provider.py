"""A withholding provider for tests/cli/test_attack_final_cli.py, run as an OS process:
``python atk_final_provider.py LEDGER SEED_HEX LISTEN STATUS_DIR``.

A library node on the shared SQLite ledger: stakes, serves ``echo`` and ``fail``, takes
every request whose body is ``withhold`` and never answers it (on the stream or to its
claim). It writes ``ready`` (its address) and, whenever it changes, ``voucher`` (the hex
frame of its best voucher on any channel) into STATUS_DIR, so the test can cheat with it on
the ledger. Runs until killed (at most 300 s)."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from p2pay.core.identity import Keypair
from p2pay.ledger.sqlite import SqliteLedger
from p2pay.node import Behaviour, Call, NodeConfig, open_node
from p2pay.store.memory import MemoryStore

PRICE = 1000


class Withholds(Behaviour):
    answers_claims = False

    def drop(self, call: Call) -> bool:
        return call.body == b"withhold"


async def echo(call: Call) -> bytes:
    return call.body


async def fail(call: Call) -> bytes:
    raise RuntimeError("no")


async def main(ledger_path: str, seed: str, listen: str, status: Path) -> None:
    ledger = await SqliteLedger.open(ledger_path)
    key = Keypair.from_seed(bytes.fromhex(seed))
    config = NodeConfig(watch_interval=0.2, redeem_threshold=10**30, min_challenge_ms=1000)
    with trio.move_on_after(300):
        async with open_node(
            key=key,
            ledger=ledger,
            store=MemoryStore(),
            listen=(listen,),
            config=config,
            behaviour=Withholds(),
        ) as node:
            node.serve("echo", echo, price=PRICE)
            node.serve("fail", fail, price=PRICE)
            await node.stake(10**21, penalty=10**20, claim_window_ms=int(sys.argv[5]))
            (status / "ready").write_text(node.addrs[0])
            last = b""
            while True:
                for ch in node.payee_channels.values():
                    v = ch.verified_voucher()
                    if v is not None and v.to_frame() != last:
                        last = v.to_frame()
                        (status / "voucher.tmp").write_text(last.hex())
                        (status / "voucher.tmp").rename(status / "voucher")
                await trio.sleep(0.2)
    await ledger.aclose()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))
