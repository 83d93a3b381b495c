"""specs/ says what the code does, and says it without naming the code as the authority.

These checks read the spec files as text: the hello's keys in protocol.md §9, wire.cddl and
the decoder agree; the wire codes of protocol.md §18, wire.cddl and the code's registry
agree; §9's rules are numbered 1..7 in order; the ledger id prefixes of settlement.md §12
are the backends'; no spec file cites a Python module, class or function of this repository
as where a rule is decided.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2pay.core import codec, evmsig, offers
from p2pay.core.errors import ErrorCode
from p2pay.core.identity import Keypair
from p2pay.core.messages import DEFAULT_DEADLINE_HORIZON_MS, Hello, ServiceTerms, StakeTerms
from p2pay.core.offers import DOMAIN_OFFER, Offer

SPECS = Path(__file__).resolve().parents[2] / "specs"
PROTOCOL = (SPECS / "protocol.md").read_text("utf-8")
CDDL = (SPECS / "wire.cddl").read_text("utf-8")
SETTLEMENT = (SPECS / "settlement.md").read_text("utf-8")
DISCOVERY = (SPECS / "discovery.md").read_text("utf-8")


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def cddl_rule(name: str) -> str:
    match = re.search(rf"^{re.escape(name)} = (.*?)(?=\n\n|\n;)", CDDL, re.S | re.M)
    assert match, name
    return match.group(1)


def test_hello_keys_agree_in_the_spec_the_cddl_and_the_code() -> None:
    hello_section = section(PROTOCOL, "## 9. Hello", "## 10. Request")
    table = set(re.findall(r"^\| `([a-z_]+)` \|", hello_section, re.M))
    cddl = set(re.findall(r'^\s+"([a-z_]+)":', cddl_rule("hello-signed"), re.M)) - {"domain"}
    hello = Hello.create(Keypair.from_seed(bytes(32)), ledger=b"L", services=(
        ServiceTerms(name="a", price=1, max_body=1),))  # fmt: skip
    signed = codec.decode(hello.signing_bytes)
    assert isinstance(signed, dict)
    code = set(signed) - {"domain"}
    assert table == cddl == code
    assert {"account_proof", "deadline_horizon"} <= code
    assert signed["account_proof"] == b"" and signed["deadline_horizon"] == 3_600_000
    assert DEFAULT_DEADLINE_HORIZON_MS == 3_600_000
    assert "exactly 10 keys" in hello_section and len(signed) == 10


def test_offer_keys_agree_in_the_spec_the_cddl_and_the_code() -> None:
    offer_section = section(DISCOVERY, "## 2. The offer", "### 2.1 Encoding")
    table = set(re.findall(r"^\| `([a-z_]+)` \|", offer_section, re.M))
    cddl = set(re.findall(r'^\s+"([a-z_]+)":', cddl_rule("offer-signed"), re.M)) - {"domain"}
    key = Keypair.from_seed(bytes(32))
    offer = Offer.create(
        key,
        ledger=b"L",
        service="a",
        price=1,
        max_body=1,
        stake=StakeTerms(amount=1, penalty=1, claim_window_ms=1),
        addrs=[f"/ip4/127.0.0.1/tcp/1/p2p/{key.peer_id}"],
        seq=1,
        expires=1,
    )
    signed = codec.decode(offer.signing_bytes)
    assert isinstance(signed, dict)
    code = set(signed) - {"domain"}
    assert table == cddl == code
    assert "exactly 11 keys" in offer_section and len(signed) == 11
    assert signed["domain"] == DOMAIN_OFFER and f'"{DOMAIN_OFFER}"' in offer_section


def test_discovery_constants_are_the_codes() -> None:
    constants = DISCOVERY[DISCOVERY.index("## 10. Constants") :]
    for name, value in (
        ("MAX_OFFER_SIZE", offers.MAX_OFFER_SIZE),
        ("MAX_OFFER_ADDRS", offers.MAX_OFFER_ADDRS),
        ("MAX_ADDR_SIZE", offers.MAX_ADDR_SIZE),
        ("MAX_OFFER_LIFETIME_MS", offers.MAX_OFFER_LIFETIME_MS),
        ("MAX_FETCH_OFFERS", offers.MAX_FETCH_OFFERS),
        ("MAX_FETCH_FRAME", offers.MAX_FETCH_FRAME),
        ("FETCH_TIMEOUT_MS", offers.FETCH_TIMEOUT_MS),
        ("MAX_SERVICES_PER_PEER", offers.MAX_SERVICES_PER_PEER),
        ("MAX_OFFERS", offers.MAX_OFFERS),
        ("LIE_BAN_MS", offers.LIE_BAN_MS),
        ("STAKE_RECHECK_MS", offers.STAKE_RECHECK_MS),
        ("STAKE_READ_RETRY_MS", offers.STAKE_READ_RETRY_MS),
        ("FAILURE_SKIP_MS", offers.FAILURE_SKIP_MS),
    ):
        row = re.search(rf"^\| `{name}` \| ([0-9,]+) \|", constants, re.M)
        assert row, name
        assert int(row.group(1).replace(",", "")) == value, name
    rate = (
        f"| `OFFERS_PER_MINUTE`, `OFFER_BURST` | {offers.OFFERS_PER_MINUTE}, {offers.OFFER_BURST} |"
    )
    assert rate in constants
    assert f"{offers.MAX_CONSECUTIVE_FAILURES} or more consecutive failures" in DISCOVERY
    # the book's drop reasons are the ones the spec names (7, 7.4, 7.5)
    for reason in offers.Drop:
        assert f"`{reason.value}`" in DISCOVERY, reason
    assert f"`{offers.FETCH_PROTOCOL_ID}`" in DISCOVERY
    assert '"/p2pay/offers/2/"' in DISCOVERY and offers.offer_topic(b"\x01").startswith(
        "/p2pay/offers/2/"
    )


def test_wire_codes_agree_in_the_spec_the_cddl_and_the_code() -> None:
    protocol = set(re.findall(r'"([A-Z_]+)"', cddl_rule("protocol-code")))
    settlement = set(re.findall(r'"([A-Z_]+)"', cddl_rule("settlement-code")))
    local = set(re.findall(r'"([A-Z_]+)"', cddl_rule("local-code")))
    assert not protocol & settlement and not local & (protocol | settlement)
    assert protocol | settlement | local == {code.value for code in ErrorCode}
    table = section(PROTOCOL, "## 18. Error codes", "**Local codes.**")
    assert set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M)) == protocol
    local_table = section(PROTOCOL, "**Local codes.**", "## 19. Limits")
    assert set(re.findall(r"^\| ([A-Z_]+) \|", local_table, re.M)) == local


def test_hello_rules_are_numbered_in_order() -> None:
    rules = section(PROTOCOL, "\nRules:\n", "## 10. Request")
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", rules, re.M)]
    assert numbers == list(range(1, 8))


def test_ledger_id_prefixes_are_the_backends() -> None:
    ids = section(SETTLEMENT, "## 12. Ledger ids", "For example")
    for prefix in (b"p2pay:memory:", b"p2pay:sqlite:", b"p2pay:evm:"):
        assert f"`{prefix.decode()}`" in ids
        assert prefix.hex(" ") in ids  # the exact bytes
    assert evmsig.EVM_LEDGER_PREFIX == b"p2pay:evm:" and evmsig.EVM_LEDGER_ID_SIZE == 38
    example = evmsig.evm_ledger_id(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
    assert example.hex() in SETTLEMENT.replace(" ", "")


@pytest.mark.parametrize(
    "name",
    [
        "protocol.md",
        "wire.cddl",
        "settlement.md",
        "claims.md",
        "keys.md",
        "invariants.md",
        "discovery.md",
    ],
)
def test_no_code_is_cited_as_the_authority(name: str) -> None:
    """Rules are stated; the reference implementation may be named as an example (and
    invariants.md lists the tests that check each invariant), never as where a rule is."""
    text = (SPECS / name).read_text("utf-8")
    cited = re.findall(r"`?p2pay\.[a-z_.]+`?|\bnode\.py\b|p2pay/(?:core|node)[\w/]*\.py", text)
    assert not cited, cited
    for phrase in (
        "the reference is `",
        "see `Payee",
        "see `Payer",
        "(`PayeeChannel",
        "(`PayerChannel",
    ):
        assert phrase not in text, phrase
