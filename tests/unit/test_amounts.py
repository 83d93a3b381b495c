"""Unit tests for p2pay.core.amounts: exact yocto amounts and token strings."""

from __future__ import annotations

import decimal
import fractions

import pytest

from p2pay.core.amounts import (
    DECIMALS,
    MAX_AMOUNT_TEXT,
    MAX_YOCTO,
    UNITS,
    YOCTO_PER_TOKEN,
    format_tokens,
    parse_amount,
    parse_tokens,
    yocto,
)
from p2pay.core.errors import AmountError, ErrorCode, LocalProtocolError


def test_constants() -> None:
    assert DECIMALS == 24
    assert YOCTO_PER_TOKEN == 10**24
    assert MAX_YOCTO == 2**128 - 1


def test_amount_error_is_local_protocol_error_and_value_error() -> None:
    assert issubclass(AmountError, LocalProtocolError)
    assert issubclass(AmountError, ValueError)
    with pytest.raises(AmountError) as info:
        yocto(-1)
    assert info.value.code is ErrorCode.INVALID_AMOUNT


# ----------------------------------------------------------------------------- yocto()


@pytest.mark.parametrize("value", [0, 1, 10**24, MAX_YOCTO - 1, MAX_YOCTO])
def test_yocto_accepts_the_range(value: int) -> None:
    out = yocto(value)
    assert out == value
    assert type(out) is int


def test_yocto_normalises_int_subclasses() -> None:
    class Sneaky(int):
        def __str__(self) -> str:
            return "surprise"

    out = yocto(Sneaky(5))
    assert out == 5 and type(out) is int


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        1.0,
        0.0,
        1e24,
        float("nan"),
        float("inf"),
        decimal.Decimal(1),
        fractions.Fraction(1, 1),
        "1",
        b"1",
        None,
        [1],
        1 + 0j,
    ],
)
def test_yocto_refuses_non_integers(value: object) -> None:
    with pytest.raises(AmountError, match="integer"):
        yocto(value)


@pytest.mark.parametrize("value", [-1, -(2**128), MAX_YOCTO + 1, 2**128, 2**200])
def test_yocto_refuses_out_of_range(value: int) -> None:
    with pytest.raises(AmountError):
        yocto(value)


@pytest.mark.parametrize("value", [10**5000, -(10**5000)], ids=["plus_10e5000", "minus_10e5000"])
def test_yocto_refuses_huge_ints_with_amount_error(value: int) -> None:
    # str() of an int above 4300 digits raises a bare ValueError: the message must not do it.
    with pytest.raises(AmountError, match="bit integer"):
        yocto(value)


# ----------------------------------------------------------------------------- tokens


TOKEN_PAIRS = [
    ("0", 0),
    ("1", 10**24),
    ("0.000001", 10**18),
    ("0.000000000000000000000001", 1),
    ("0.5", 5 * 10**23),
    ("1.5", 15 * 10**23),
    ("10", 10 * 10**24),
    ("123.456", 123456 * 10**21),
    ("340282366920938.463463374607431768211455", MAX_YOCTO),
]


@pytest.mark.parametrize(("text", "amount"), TOKEN_PAIRS)
def test_tokens_both_ways(text: str, amount: int) -> None:
    assert parse_tokens(text) == amount
    assert format_tokens(amount) == text


def test_max_yocto_round_trip() -> None:
    text = format_tokens(2**128 - 1)
    assert parse_tokens(text) == 2**128 - 1
    assert format_tokens(parse_tokens(text)) == text


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("1.0", 10**24),
        ("1.50", 15 * 10**23),
        ("007", 7 * 10**24),
        ("0.000001000", 10**18),
        ("00.1", 10**23),
        ("1." + "0" * 40, 10**24),  # trailing zeros are exact, whatever their number
    ],
)
def test_parse_tokens_accepts_non_shortest_forms_exactly(text: str, amount: int) -> None:
    assert parse_tokens(text) == amount


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        ".",
        "1.",
        ".5",
        "-1",
        "+1",
        "-0",
        "1e3",
        "1E3",
        "1e-3",
        " 1",
        "1 ",
        "1\n",
        "1 000",
        "1_000",
        "1,5",
        "0x10",
        "inf",
        "nan",
        "Infinity",
        "\u0661",  # ARABIC-INDIC DIGIT ONE
        "\uff11",  # FULLWIDTH DIGIT ONE
        "1\u0660",  # ASCII then ARABIC-INDIC ZERO
        "\u00b2",  # SUPERSCRIPT TWO
        "1..2",
        "1.2.3",
        "abc",
        "1 token",
        "\x00",
    ],
)
def test_parse_tokens_refuses_garbage(text: str) -> None:
    with pytest.raises(AmountError):
        parse_tokens(text)


def test_parse_tokens_refuses_too_many_decimals() -> None:
    with pytest.raises(AmountError, match="decimals"):
        parse_tokens("0.0000000000000000000000001")  # 25 decimals, 10**-25 token
    with pytest.raises(AmountError, match="decimals"):
        parse_tokens("1.0000000000000000000000011")


@pytest.mark.parametrize(
    "text",
    [
        "340282366920938.463463374607431768211456",  # 2**128 exactly
        "340282366920939",
        "1" + "0" * 38,
        "9" * 5000,  # int() of > 4300 digits would raise a bare ValueError
        "0" * 200 + "9" * 40,
    ],
)
def test_parse_tokens_refuses_overflow(text: str) -> None:
    with pytest.raises(AmountError):
        parse_tokens(text)


def test_parse_tokens_bounds_its_input() -> None:
    assert parse_tokens("0" * (MAX_AMOUNT_TEXT - 1) + "1") == 10**24
    with pytest.raises(AmountError, match="at most"):
        parse_tokens("0" * MAX_AMOUNT_TEXT + "1")
    # a huge input is refused on its length, before any parsing (no stopwatch: issue 16)
    with pytest.raises(AmountError, match="at most"):
        parse_tokens("1" * 1_000_000)


@pytest.mark.parametrize("value", [1, 1.0, None, b"1", bytearray(b"1")])
def test_parse_tokens_refuses_non_strings(value: object) -> None:
    with pytest.raises(AmountError):
        parse_tokens(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, MAX_YOCTO + 1, 1.5, True, "1"])
def test_format_tokens_refuses_invalid_amounts(value: object) -> None:
    with pytest.raises(AmountError):
        format_tokens(value)  # type: ignore[arg-type]


def test_format_tokens_has_no_exponent_or_trailing_zeros() -> None:
    for amount in [1, 10, 10**18, 10**23, 10**24 + 1, 10**30, 12345 * 10**20]:
        text = format_tokens(amount)
        assert "e" not in text.lower()
        assert not (("." in text) and text.endswith("0"))
        assert not text.endswith(".")


# ----------------------------------------------------------------------------- parse_amount


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("0", 0),
        ("12", 12),
        (" 12 ", 12),
        ("340282366920938463463374607431768211455", MAX_YOCTO),
        ("1 token", 10**24),
        ("1.5 token", 15 * 10**23),
        ("2 tokens", 2 * 10**24),
        ("1 TOKEN", 10**24),
        ("1.5token", 15 * 10**23),
        ("3 milli", 3 * 10**21),
        ("1 micro", 10**18),
        ("1 nano", 10**15),
        ("1 pico", 10**12),
        ("1 femto", 10**9),
        ("1 atto", 10**6),
        ("1 zepto", 10**3),
        ("7yocto", 7),
        ("7 Yocto", 7),
        ("1.0 yocto", 1),
        ("0.001 zepto", 1),
        ("0.000000000000000000000001 token", 1),
    ],
)
def test_parse_amount_units(text: str, amount: int) -> None:
    assert parse_amount(text) == amount


def test_units_table_is_powers_of_ten_of_yocto() -> None:
    for unit, exponent in UNITS.items():
        assert parse_amount(f"1 {unit}") == 10**exponent


@pytest.mark.parametrize("value", [0, 5, MAX_YOCTO])
def test_parse_amount_takes_ints_as_yocto(value: int) -> None:
    assert parse_amount(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "1.5",  # a fraction of a yocto needs a unit
        "1.5 yocto",
        "0.0001 zepto",
        "1 parsec",
        "1 t",
        "token",
        "-1 token",
        "+1",
        "1e3",
        "1e3 yocto",
        "1 2",
        "1 token token",
        "\u0661 token",
        "1 tokén",
        "340282366920938463463374607431768211456",
        "340282366920939 token",
        "9" * 300,
        "1" + " " * 10_000 + "x",
        -1,
        MAX_YOCTO + 1,
        True,
        1.0,
        None,
        b"1",
    ],
)
def test_parse_amount_refuses(value: object) -> None:
    with pytest.raises(AmountError):
        parse_amount(value)  # type: ignore[arg-type]


def test_parse_amount_is_not_quadratic_on_spaces() -> None:
    # the pattern backtracks quadratically on runs of spaces: a long input is refused on
    # its length before the pattern sees it (checked by the reason, not a stopwatch)
    with pytest.raises(AmountError, match="at most"):
        parse_amount("1" + " " * 100_000 + "1")
    # the longest input the pattern may see is refused for its content
    with pytest.raises(AmountError, match="cannot read amount"):
        parse_amount("1" + " " * (MAX_AMOUNT_TEXT - 2) + "1")
