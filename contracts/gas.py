"""Measure the gas table of specs/settlement.md section 10 ("Gas per operation (measured)").

Usage: ``python contracts/gas.py [--anvil PATH]``: starts anvil (from P2PAY_ANVIL, PATH or
``--anvil``) on a free local port, deploys the contract with `EvmLedger.deploy` (a dev ledger
with the default Params, a TestToken), runs one fixed sequence of operations and prints each
contract function's receipts' ``gasUsed`` in the order they ran, then stops anvil by its PID.
The sequence: ``mint`` x3, ``withdraw``, ``deposit``, ``transfer``, ``stake``, two channels,
``top_up``, ``redeem``, every claim outcome (100-byte bodies unless said), both closes,
unbonding. The figures are deterministic for one anvil version and one contract.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import trio

# this checkout's p2pay (and its contract artifacts), not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pay import testing
from p2pay.core.evmsig import EvmKey
from p2pay.core.messages import Request, Response
from p2pay.ledger.evm import MAX_BODY, EvmLedger, Web3Chain
from p2pay.testing import TOKEN, ManualClock

BODY = b"b" * 100


async def measure(chain: Web3Chain) -> list[tuple[str, list[int]]]:
    """Run the sequence; returns (row label, gasUsed of each call) in table order."""
    deployer, keys = testing.evm_test_keys()
    a, b, c = keys["ALICE"], keys["BOB"], keys["CAROL"]
    for key in (deployer, a, b, c):
        chain.fund(key.address)
    clock = ManualClock()
    L = await EvmLedger.deploy(chain, deployer, dev=True, time_unit_us=1, clock=clock)
    lid = L.ledger_id
    price = 10**21

    def request(cid: bytes, n: int, body: bytes = BODY, key: EvmKey = a) -> Request:
        return Request.create(
            key,
            ledger=lid,
            channel=cid,
            n=n,
            paid=n * price,
            price=price,
            service="echo",
            body=body,
            deadline=clock.ms + 100,
        )

    def answer(r: Request, status: str = "OK", body: bytes = BODY) -> Response:
        charged = price if status == "OK" else 0
        return Response.create(b, request=r, status=status, price=charged, spent=charged, body=body)

    for key in (a, b, c):
        await L.mint(key, key.account, 100 * TOKEN)
    await L.withdraw(b, 5 * TOKEN)
    await L.deposit(b, 5 * TOKEN)
    await L.transfer(a, c.account, TOKEN)
    await L.stake(b, 10 * TOKEN, TOKEN, 10_000)
    cid = await L.open_channel(a, b.account, 10 * TOKEN, 5_000)
    other = await L.open_channel(a, b.account, 10 * TOKEN, 5_000)
    await L.top_up(a, cid, TOKEN)
    rs = {n: request(cid, n) for n in range(1, 11)}
    big = request(cid, 11, body=b"x" * MAX_BODY)
    await L.redeem(b, rs[1], price)
    clock.advance(101)
    # DELIVERED, REFUSED (a refund), FRIVOLOUS (evidence: another request numbered 4)
    c2 = await L.file_claim(a, rs[2])
    c3 = await L.file_claim(a, rs[3])
    await L.answer_claim(b, c2, answer(rs[2]))
    await L.answer_claim(b, c3, answer(rs[3], "OVERLOADED"))
    c4 = await L.file_claim(a, rs[4])
    await L.answer_claim(b, c4, evidence=request(cid, 4, body=b"another body"))
    # a 32 KiB body, claimed and answered
    cbig = await L.file_claim(a, big)
    await L.answer_claim(b, cbig, answer(big, body=b"y" * MAX_BODY))
    # refunds with the payee's refusal: slice 5 (nothing to claw back), then, once the
    # payee has redeemed every slice up to 11, slices 6 and 7 (clawed back from its stake)
    refunds = [await L.file_claim(a, rs[5], answer(rs[5], "OVERLOADED"))]
    await L.redeem(b, big, None)
    for n in (6, 7):
        refunds.append(await L.file_claim(a, rs[n], answer(rs[n], "OVERLOADED")))
    # UPHELD: never answered, resolved after the window
    c9 = await L.file_claim(a, rs[9])
    claim = await L.claim(c9)
    assert claim is not None
    clock.ms = claim.window_ends + 1
    await L.resolve_claim(c, c9)
    # both closes: the payee's (with a voucher paying nothing more), the payer's
    await L.payee_close(b, cid, rs[8], None)
    await L.start_close(a, other)
    clock.advance(5_001)
    await L.finalize_close(c, other)
    # unbonding
    await L.request_unstake(b)
    st = await L.stake_of(b.account)
    assert st is not None
    clock.ms = st.unbonding_at
    await L.withdraw_stake(b)
    totals = await L.totals()
    assert totals.conserved
    # the sequence did what the labels below say
    states = [await L.claim(i) for i in (c2, c3, c4, cbig, c9, *refunds)]
    assert [(x.state.value, x.clawed > 0) for x in states if x] == [
        ("delivered", False),
        ("refused", False),
        ("frivolous", False),
        ("delivered", False),
        ("upheld", True),
        ("refused", False),
        ("refused", True),
        ("refused", True),
    ], states
    g = L.gas_used
    rows = [
        ("mint (dev)", g["mint"]),
        ("deposit (after approve)", g["deposit"]),
        ("transfer", g["transfer"]),
        ("withdraw", g["withdraw"]),
        ("open_channel", g["open_channel"]),
        ("top_up", g["top_up"]),
        ("redeem", g["redeem"]),
        ("payee_close (voucher paying 0)", g["payee_close"]),
        ("start_close", g["start_close"]),
        ("finalize_close", g["finalize_close"]),
        ("stake", g["stake"]),
        ("request_unstake", g["request_unstake"]),
        ("withdraw_stake", g["withdraw_stake"]),
        ("file_claim (slices 2, 3, 4, the 32 KiB body, 9)", g["file_claim"]),
        ("answer_claim (DELIVERED, REFUSED, OK with a 32 KiB body)", g["answer_claim"]),
        ("answer_claim_evidence (FRIVOLOUS)", g["answer_claim_evidence"]),
        ("file_claim_refused (slice 5, then clawing back 6 and 7)", g["file_claim_refused"]),
        ("resolve_claim (UPHELD: slash, refund, clawback)", g["resolve_claim"]),
    ]
    await L.aclose()
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Measure the gas table of specs/settlement.md section 10."
    )
    parser.add_argument("--anvil", default=testing.anvil_binary())
    args = parser.parse_args(argv)
    if not args.anvil:
        print("anvil not found: npm install @foundry-rs/anvil, or pass --anvil PATH")
        return 1
    version = subprocess.run(
        [args.anvil, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()[0]
    try:
        with testing.running_anvil(args.anvil, start_timeout_s=30) as url:
            rows = trio.run(measure, Web3Chain(url, timed=True, timeout_s=30))
    except RuntimeError as exc:
        print(exc)
        return 1
    print(f"{version}; gasUsed of each call, in order")
    for label, used in rows:
        print(f"{label}: {' / '.join(f'{u:,}'.replace(',', ' ') for u in used)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
