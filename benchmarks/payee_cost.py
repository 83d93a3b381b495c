"""3. Payee CPU cost per paid request / one raw Ed25519 verify of the same bytes (<= 1.3).

The payee's work per request, on the request frame as it comes off the stream:
``decode_frame`` -> ``PayeeChannel.admit`` -> ``complete`` -> ``Response.create`` (signs
the receipt). The baseline is one raw PyNaCl ``VerifyKey.verify`` of the same signing
bytes and signature (key object built once).

Two results, from the same repetitions:

* ``payee_cost``: the channel as the node builds it, with the default
  ``unverified_credit_limit`` (10**20 yocto, specs/protocol.md 13.4 deferred
  verification): ``admit`` checks the first voucher and then one voucher each time the
  unchecked credit would pass the limit (at 1 micro-token per request: about one in 100);
* ``payee_cost_verify_all``: the same pipeline with ``unverified_credit_limit = 0``:
  every voucher's signature is checked on arrival.

Every component is also timed alone on the same requests (decode_frame; the bare CBOR
decode inside it; building the signing bytes from the fields, which decode_frame no
longer does since it keeps the received bytes; admit at the default limit, at
limit 0 and with the signature taken as checked; complete; Response.create; the
receipt's to_frame; a raw sign), in alternating repetitions; each figure is the median
over repetitions of the time per request. Pure CPU, no I/O: this is the floor under
benchmarks 1 and 2.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing

from benchmarks._common import (
    ALICE_SEED,
    BOB_SEED,
    MICRO,
    TOKEN,
    Result,
    median,
    new_profiler,
    profile_text,
    top_buckets,
    write_profile,
)
from p2pay.core import codec
from p2pay.core.channel import Admit, PayeeChannel
from p2pay.core.identity import Keypair
from p2pay.core.messages import (
    STATUS_OK,
    Request,
    Response,
    decode_frame,
    request_signing_bytes,
)

NAME = "payee_cost"
TITLE = "payee CPU per request (decode+admit+complete+sign), default deferral / one verify"
TITLE_ALL = "payee CPU per request, every voucher verified (limit 0) / one raw verify"
TARGET = 1.3

SIZE: dict[str, dict[str, int]] = {
    "smoke": {"requests": 50, "reps": 1},
    "quick": {"requests": 800, "reps": 4},
    "full": {"requests": 3000, "reps": 7},
}

LEDGER = b"p2pay:memory:" + bytes(range(16))
CHANNEL = bytes(range(32))
BODY = b"b" * 32
NOW = 1_800_000_000_000  # fixed clock (ms): the core takes `now` as an argument


def _requests(count: int) -> list[Request]:
    payer = Keypair.from_seed(ALICE_SEED)
    return [
        Request.create(
            payer,
            ledger=LEDGER,
            channel=CHANNEL,
            n=n,
            paid=n * MICRO,
            price=MICRO,
            service="echo",
            body=BODY,
            deadline=NOW + 30_000,
        )
        for n in range(1, count + 1)
    ]


def _channel(limit: int | None = None) -> PayeeChannel:
    """A payee channel; `limit`: its unverified_credit_limit (None: the default)."""
    ch = PayeeChannel(
        ledger=LEDGER,
        channel=CHANNEL,
        payer=Keypair.from_seed(ALICE_SEED).public,
        payee=Keypair.from_seed(BOB_SEED).public,
        deposit=TOKEN,
    )
    if limit is not None:
        ch.unverified_credit_limit = limit
    return ch


def _admit(ch: PayeeChannel, req: Request, signature_ok: bool | None) -> None:
    decision = ch.admit(
        req,
        peer=ch.payer,
        price=MICRO,
        max_body=1 << 16,
        now=NOW,
        signature_ok=signature_ok,
        max_deadline=NOW + 3_600_000,
    )
    if not isinstance(decision, Admit):  # pragma: no cover - the benchmark is broken
        raise RuntimeError(f"benchmark request refused: {decision}")


def _pipeline(
    frames: list[bytes], payee: Keypair, *, verify: bool = True, limit: int | None = None
) -> None:
    """What the node does per request, minus I/O and the handler (echo). `verify=False`
    takes every signature as checked; `limit`: the channel's unverified_credit_limit."""
    ch = _channel(limit)
    ok = None if verify else True
    for frame in frames:
        req = decode_frame(frame)
        assert isinstance(req, Request)
        _admit(ch, req, ok)
        charged, spent = ch.complete(req.n, ok=True)
        Response.create(
            payee, request=req, status=STATUS_OK, price=charged, spent=spent, body=req.body
        )


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(size: str, profile_dir: Path | None) -> list[Result]:
    p = SIZE[size]
    count = p["requests"]
    payee = Keypair.from_seed(BOB_SEED)
    reqs = _requests(count)
    frames = [r.to_frame() for r in reqs]
    verify_key = nacl.signing.VerifyKey(Keypair.from_seed(ALICE_SEED).public)
    signer = nacl.signing.SigningKey(BOB_SEED)
    responses = [
        Response.create(
            payee, request=r, status=STATUS_OK, price=MICRO, spent=r.n * MICRO, body=r.body
        )
        for r in reqs
    ]

    def raw_verify() -> None:
        for r in reqs:
            verify_key.verify(r.signing_bytes, r.signature)

    def raw_sign() -> None:
        for r in responses:
            signer.sign(r.signing_bytes)

    def decode() -> None:
        for f in frames:
            decode_frame(f)

    def codec_decode() -> None:
        for f in frames:
            codec.decode(f, max_size=1 << 20, max_depth=8)

    def reencode() -> None:
        for r in reqs:
            request_signing_bytes(
                ledger=r.ledger,
                channel=r.channel,
                n=r.n,
                paid=r.paid,
                price=r.price,
                service=r.service,
                body_hash=r.body_hash,
                deadline=r.deadline,
            )

    def admit_default() -> None:
        ch = _channel()
        for r in reqs:
            _admit(ch, r, None)

    def admit_verify_all() -> None:
        ch = _channel(0)
        for r in reqs:
            _admit(ch, r, None)

    def admit_no_verify() -> None:
        ch = _channel()
        for r in reqs:
            _admit(ch, r, True)

    def complete() -> None:
        ch = _channel()
        for r in reqs:
            _admit(ch, r, True)
        t0 = time.perf_counter()
        for r in reqs:
            ch.complete(r.n, ok=True)
        complete.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]

    def create_response() -> None:
        for r in reqs:
            Response.create(
                payee, request=r, status=STATUS_OK, price=MICRO, spent=r.n * MICRO, body=r.body
            )

    def to_frame() -> None:
        for r in responses:
            r.to_frame()

    def pipeline() -> None:
        _pipeline(frames, payee)

    def pipeline_verify_all() -> None:
        _pipeline(frames, payee, limit=0)

    def pipeline_no_verify() -> None:
        _pipeline(frames, payee, verify=False)

    parts: dict[str, Callable[[], None]] = {
        "raw_verify": raw_verify,
        "payee_pipeline": pipeline,
        "payee_pipeline_verify_all": pipeline_verify_all,
        "raw_sign": raw_sign,
        "decode_frame": decode,
        "codec_decode_only": codec_decode,
        "signing_bytes_encode": reencode,
        "admit_default_limit": admit_default,
        "admit_verify_all": admit_verify_all,
        "admit_no_verify": admit_no_verify,
        "complete": complete,
        "response_create": create_response,
        "receipt_to_frame": to_frame,
        "pipeline_without_verify": pipeline_no_verify,
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    ratios: list[float] = []
    ratios_all: list[float] = []
    for fn in parts.values():  # warm-up
        fn()
    for rep in range(p["reps"]):
        items = list(parts.items())
        if rep % 2:
            items.reverse()
        this: dict[str, float] = {}
        for name, fn in items:
            elapsed = _timed(fn)
            if name == "complete":
                elapsed = complete.elapsed  # type: ignore[attr-defined]
            this[name] = elapsed / count * 1e6
            times[name].append(this[name])
        ratios.append(this["payee_pipeline"] / this["raw_verify"])
        ratios_all.append(this["payee_pipeline_verify_all"] / this["raw_verify"])
    us = {k: median(v) for k, v in times.items()}
    verify_us = us["raw_verify"]
    figures: dict[str, Any] = {f"{k}_us": round(v, 2) for k, v in us.items()}
    figures.update(
        {
            "requests_per_rep": count,
            "reps": p["reps"],
            "ratio_per_rep": [round(r, 3) for r in ratios],
            "verify_all_ratio_per_rep": [round(r, 3) for r in ratios_all],
            "verify_inside_admit_us": round(us["admit_verify_all"] - us["admit_no_verify"], 2),
            "default_limit_admit_extra_us": round(
                us["admit_default_limit"] - us["admit_no_verify"], 2
            ),
            "pipeline_without_verify_over_verify": round(
                us["pipeline_without_verify"] / verify_us, 3
            ),
            "raw_sign_over_verify": round(us["raw_sign"] / verify_us, 3),
            "sum_of_parts_us": round(
                us["decode_frame"]
                + us["admit_default_limit"]
                + us["complete"]
                + us["response_create"],
                2,
            ),
        }
    )
    notes = [
        "per request: "
        + ", ".join(
            f"{k} {us[k]:.1f} us ({us[k] / verify_us:.2f} verify)"
            for k in (
                "decode_frame",
                "codec_decode_only",
                "signing_bytes_encode",
                "admit_default_limit",
                "admit_verify_all",
                "admit_no_verify",
                "complete",
                "response_create",
                "raw_sign",
                "receipt_to_frame",
            )
        ),
        f"pipeline per request: default limit {us['payee_pipeline']:.1f} us "
        f"({us['payee_pipeline'] / verify_us:.2f} verify), every voucher checked "
        f"{us['payee_pipeline_verify_all']:.1f} us "
        f"({us['payee_pipeline_verify_all'] / verify_us:.2f} verify), no signature check at "
        f"all {us['pipeline_without_verify']:.1f} us "
        f"({us['pipeline_without_verify'] / verify_us:.2f} verify)",
    ]
    verdicts = "; ".join(
        f"{label}: {median(rs):.3f} {'PASS' if median(rs) <= TARGET else 'FAIL'} "
        f"(target <= {TARGET})"
        for label, rs in (
            ("default unverified_credit_limit 10**20", ratios),
            ("unverified_credit_limit 0", ratios_all),
        )
    )
    notes.insert(0, f"verdict per configuration, same reps: {verdicts}")
    if profile_dir is not None:
        reps_prof = max(1, min(5000, 3 * count) // count)
        for suffix, limit, label in (("", None, "default limit"), (".verify_all", 0, "limit 0")):
            prof = new_profiler(cpu_clock=False)
            prof.enable()
            for _ in range(reps_prof):
                _pipeline(frames, payee, limit=limit)
            prof.disable()
            per = count * reps_prof
            text, rows = profile_text(
                prof,
                f"{NAME}: payee pipeline ({label}), {per:,} requests",
                per=per,
                per_label="request",
                timer="cProfile's wall clock (a tight CPU loop, nothing waits)",
            )
            figures[f"profile{suffix.replace('.', '_')}"] = write_profile(
                profile_dir, f"{NAME}{suffix}.txt", text
            )
            notes.append(
                f"pipeline profile ({label}), self time: " + ", ".join(top_buckets(rows, 8))
            )
    return [
        Result(
            name=NAME,
            title=TITLE,
            target_op="<=",
            target=TARGET,
            ratio=median(ratios),
            ratio_desc="median over reps of (payee pipeline time, default unverified credit "
            "limit) / (raw verify time), per request",
            figures=figures,
            notes=notes,
        ),
        Result(
            name=f"{NAME}_verify_all",
            title=TITLE_ALL,
            target_op="<=",
            target=TARGET,
            ratio=median(ratios_all),
            ratio_desc="median over reps of (payee pipeline time, unverified_credit_limit 0) "
            "/ (raw verify time), per request",
            figures={
                "payee_pipeline_verify_all_us": round(us["payee_pipeline_verify_all"], 2),
                "raw_verify_us": round(verify_us, 2),
                "admit_verify_all_us": round(us["admit_verify_all"], 2),
                "verify_all_ratio_per_rep": [round(r, 3) for r in ratios_all],
            },
            notes=list(notes),
        ),
    ]
