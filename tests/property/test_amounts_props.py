"""Property tests for p2pay.core.amounts: token strings round-trip exactly."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from p2pay.core.amounts import (
    MAX_YOCTO,
    YOCTO_PER_TOKEN,
    format_tokens,
    parse_amount,
    parse_tokens,
)
from p2pay.core.errors import AmountError

amounts = st.integers(min_value=0, max_value=MAX_YOCTO)


@given(amounts)
@example(0)
@example(1)
@example(10**18)
@example(10**24)
@example(MAX_YOCTO)
def test_tokens_round_trip(x: int) -> None:
    text = format_tokens(x)
    assert parse_tokens(text) == x
    assert format_tokens(parse_tokens(text)) == text


@given(amounts)
def test_format_matches_exact_division(x: int) -> None:
    whole, _, frac = format_tokens(x).partition(".")
    assert int(whole) == x // YOCTO_PER_TOKEN
    assert len(frac) <= 24
    assert int(frac.ljust(24, "0") or "0") == x % YOCTO_PER_TOKEN


@given(amounts)
def test_plain_integer_text_is_yocto(x: int) -> None:
    assert parse_amount(str(x)) == x
    assert parse_amount(f"{format_tokens(x)} token") == x


@given(st.integers(min_value=0, max_value=2**64), st.integers(min_value=0, max_value=48))
def test_trailing_zeros_never_change_the_value(whole: int, zeros: int) -> None:
    text = f"{whole}.{'0' * zeros}" if zeros else str(whole)
    try:
        value = parse_tokens(text)
    except AmountError:
        assert whole * YOCTO_PER_TOKEN > MAX_YOCTO
    else:
        assert value == whole * YOCTO_PER_TOKEN


@given(st.text(max_size=60))
def test_parse_tokens_only_raises_amount_error(text: str) -> None:
    try:
        value = parse_tokens(text)
    except AmountError:
        return
    assert 0 <= value <= MAX_YOCTO
    # whatever was accepted is plain ASCII decimal text
    assert set(text) <= set("0123456789.")


@given(st.text(max_size=60))
def test_parse_amount_only_raises_amount_error(text: str) -> None:
    try:
        value = parse_amount(text)
    except AmountError:
        return
    assert 0 <= value <= MAX_YOCTO


@given(st.integers().filter(lambda v: not 0 <= v <= MAX_YOCTO))
def test_out_of_range_ints_are_refused(x: int) -> None:
    try:
        format_tokens(x)
    except AmountError:
        return
    raise AssertionError(f"{x} was formatted")
