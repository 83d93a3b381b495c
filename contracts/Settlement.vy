# pragma version ~=0.4.3
# pragma evm-version cancun
# pragma optimize codesize
"""
@title p2pay settlement contract (specs/settlement.md, section "EVM binding")
@notice The rules of p2pay/core/settlement.py on an EVM chain. Every refusal reverts with
        the reason string of its ErrorCode (e.g. "INSUFFICIENT_FUNDS"), after the same checks
        in the same order as the reference; every success emits the events of section 7
        (each with `at`, the ledger time in ms).
        Accounts are addresses; off chain they are 32-byte accounts: 12 zero bytes and the
        address. The money is an ERC-20 token with 24 decimals held by this contract.
        Vouchers and responses are signed with secp256k1 over EIP-712 typed data.
"""

interface Token:
    def transfer(receiver: address, amount: uint256) -> bool: nonpayable
    def transferFrom(sender: address, receiver: address, amount: uint256) -> bool: nonpayable
    def mint(receiver: address, amount: uint256): nonpayable

# --- limits -----------------------------------------------------------------------------
MAX: constant(uint256) = 2**128 - 1
MAX_U64: constant(uint256) = 2**64 - 1
BPS: constant(uint256) = 10000
MAX_BODY: constant(uint256) = 32768  # largest request/response body a claim can carry
MAX_BLOCKS: constant(uint256) = 257  # BLAKE2b blocks of MAX_BODY bytes (+1 for empty input)
MAX_SERVICE: constant(uint256) = 64  # p2pay.core.messages.MAX_SERVICE_NAME (UTF-8 bytes)
MAX_CLAIMS_PER_WINDOW: constant(uint256) = 1000000  # p2pay.core.settlement.MAX_CLAIMS_PER_WINDOW
STATUS_OK: constant(String[2]) = "OK"
HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168  # secp256k1 n // 2

# --- channel and claim states ---------------------------------------------------------
S_NONE: constant(uint8) = 0
S_OPEN: constant(uint8) = 1
S_CLOSING: constant(uint8) = 2
S_CLOSED: constant(uint8) = 3
# claim outcomes (specs/claims.md section 3); every state but S_OPEN is final
S_DELIVERED: constant(uint8) = 2
S_REFUSED: constant(uint8) = 3
S_FRIVOLOUS: constant(uint8) = 4
S_UPHELD: constant(uint8) = 5

# the version of these rules (specs/settlement.md section 10): 2 = the claim game of
# specs/claims.md (paid slices, four outcomes, refunds and clawbacks); 3 = the answer
# windows of the claims against one stake are queued, one slot per claim open (claims.md C-1)
VERSION: public(constant(uint256)) = 3
# Params.max_claim_body on this binding
max_claim_body: public(constant(uint256)) = MAX_BODY

# --- hashing constants ------------------------------------------------------------------
# BLAKE2b-256 initial state: IV with h0 ^= 0x01010020 (digest 32 bytes, no key), LE words
B2B_H0: constant(bytes32) = 0x28c9bdf267e6096a3ba7ca8485ae67bb2bf894fe72f36e3cf1361d5f3af54fa5
B2B_H1: constant(bytes32) = 0xd182e6ad7f520e511f6c3e2b8c68059b6bbd41fbabd9831f79217e1319cde05b
BLAKE2F: constant(address) = 0x0000000000000000000000000000000000000009
LEDGER_PREFIX: constant(Bytes[10]) = b"p2pay:evm:"
CHANNEL_DOMAIN: constant(Bytes[16]) = b"p2pay/v1/channel"

DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
NAME_HASH: constant(bytes32) = keccak256("p2pay")
VERSION_HASH: constant(bytes32) = keccak256("1")
REQUEST_TYPEHASH: constant(bytes32) = keccak256(
    "Request(bytes ledger,bytes32 channel,uint64 n,uint256 paid,uint256 price,string service,bytes32 bodyHash,uint64 deadline)"
)
RESPONSE_TYPEHASH: constant(bytes32) = keccak256(
    "Response(bytes ledger,bytes32 channel,uint64 n,bytes32 requestHash,string status,uint256 price,uint256 spent,bytes32 bodyHash)"
)

# --- argument structs -------------------------------------------------------------------
struct Voucher:  # a signed Request (specs/protocol.md), without its body
    ledger: Bytes[64]
    channel: bytes32
    n: uint64
    paid: uint256
    price: uint256
    service: String[64]
    body_hash: bytes32
    deadline: uint64
    signature: Bytes[65]

struct Answer:  # a signed Response, without its body
    ledger: Bytes[64]
    channel: bytes32
    n: uint64
    request_hash: bytes32
    status: String[32]
    price: uint256
    spent: uint256
    body_hash: bytes32
    signature: Bytes[65]

# --- state ------------------------------------------------------------------------------
struct Channel:
    payer: address
    payee: address
    deposit: uint256
    redeemed: uint256
    challenge_ms: uint256
    state: uint8
    closes_at: uint256
    paid_seen: uint256  # highest `paid` of a payer-signed request seen (redeemed or claimed)
    refunded: uint256  # sum of claim refunds
    clawed: uint256  # taken back from the payee's stake for refunds it had redeemed

struct Stake:
    amount: uint256
    penalty: uint256  # > 0 once staked: marks that the record exists
    claim_window_ms: uint256
    unbonding_at: uint256
    open_claims: uint256
    unstake_requested_at: uint256

struct Claim:
    claimant: address
    respondent: address
    channel: bytes32
    n: uint64
    price: uint256  # the claimed request's price, paid and deadline (copied at filing)
    paid: uint256
    deadline: uint64
    bond: uint256
    filed_at: uint256
    window_ends: uint256
    state: uint8
    slashed: uint256
    refund: uint256
    clawed: uint256

struct Totals:
    supply: uint256
    balances: uint256
    escrow: uint256
    stakes: uint256
    bonds: uint256
    burnt: uint256

token: public(immutable(address))
dev: public(immutable(bool))
claim_bond: public(immutable(uint256))
slash_to_claimant_bps: public(immutable(uint256))
min_challenge_ms: public(immutable(uint256))
max_challenge_ms: public(immutable(uint256))
min_claim_window_ms: public(immutable(uint256))
max_claim_window_ms: public(immutable(uint256))
max_deadline_horizon_ms: public(immutable(uint256))
claims_per_window: public(immutable(uint256))  # claim windows ending per window, per stake (C-1)
time_unit_us: public(immutable(uint256))  # microseconds per block.timestamp unit
LEDGER_HASH: immutable(bytes32)
DOMAIN_SEPARATOR: public(immutable(bytes32))

balances: public(HashMap[address, uint256])
channels: public(HashMap[bytes32, Channel])
stakes: public(HashMap[address, Stake])
claims: public(HashMap[bytes32, Claim])
nonce: public(uint256)
totals: public(Totals)

# --- events (section 7); `at` is the ledger time in ms -----------------------------------
event Minted:
    account: address
    amount: uint256
    at: uint256

event Transferred:
    src: address
    dst: address
    amount: uint256
    at: uint256

event Withdrawn:
    account: address
    amount: uint256
    at: uint256

event ChannelOpened:
    channel: bytes32
    payer: address
    payee: address
    deposit: uint256
    challenge_ms: uint256
    at: uint256

event ToppedUp:
    channel: bytes32
    payer: address
    amount: uint256
    deposit: uint256
    at: uint256

event Redeemed:
    channel: bytes32
    payer: address
    payee: address
    amount: uint256
    redeemed: uint256
    n: uint64
    paid: uint256
    at: uint256

event ChannelClosing:
    channel: bytes32
    payer: address
    payee: address
    closes_at: uint256
    at: uint256

event ChannelClosed:
    channel: bytes32
    payer: address
    payee: address
    by: String[5]
    redeemed: uint256
    refunded: uint256
    at: uint256

event Staked:
    account: address
    amount: uint256
    total: uint256
    penalty: uint256
    claim_window_ms: uint256
    at: uint256

event UnstakeRequested:
    account: address
    amount: uint256
    unbonding_at: uint256
    at: uint256

event StakeWithdrawn:
    account: address
    amount: uint256
    at: uint256

event ClaimFiled:
    claim: bytes32
    claimant: address
    respondent: address
    channel: bytes32
    n: uint64
    deadline: uint64
    bond: uint256
    window_ends: uint256
    price: uint256
    paid: uint256
    at: uint256

event ClaimAnswered:
    claim: bytes32
    claimant: address
    respondent: address
    outcome: String[9]  # "delivered" | "refused" | "frivolous"
    status: String[32]  # the response's status, "" for frivolous
    bond: uint256
    bond_to: address
    refund: uint256
    clawed: uint256
    at: uint256

event ClaimUpheld:
    claim: bytes32
    claimant: address
    respondent: address
    slashed: uint256
    to_claimant: uint256
    burnt: uint256
    bond: uint256
    refund: uint256
    clawed: uint256
    at: uint256

event Slashed:
    account: address
    amount: uint256
    claim: bytes32
    at: uint256

# Not settlement events: the signed request / response / conflicting request of a claim, so
# that readers can rebuild `Claim.request_frame` / `response_frame` / `evidence_frame` from
# the logs (they are not stored).
event RequestEvidence:
    claim: indexed(bytes32)
    voucher: Voucher
    body: Bytes[MAX_BODY]

event ResponseEvidence:
    claim: indexed(bytes32)
    answer: Answer
    body: Bytes[MAX_BODY]

event ConflictEvidence:
    claim: indexed(bytes32)
    voucher: Voucher


# --- revert reasons ----------------------------------------------------------------------
# Every refusal reverts with `Error(string)` carrying the ErrorCode's text. The texts sit in
# one table read by `_need` (one copy of the encoding instead of one per check: EIP-170).
E_CHALLENGE_PENDING: constant(uint256) = 0
E_CHANNEL_CLOSED: constant(uint256) = 1
E_CHANNEL_EXISTS: constant(uint256) = 2
E_CHANNEL_NOT_CLOSING: constant(uint256) = 3
E_CLAIM_CLOSED: constant(uint256) = 4
E_CLAIM_EXISTS: constant(uint256) = 5
E_DEADLINE_NOT_PASSED: constant(uint256) = 6
E_INSUFFICIENT_FUNDS: constant(uint256) = 7
E_INTERNAL: constant(uint256) = 8
E_INVALID_AMOUNT: constant(uint256) = 9
E_INVALID_ARGUMENT: constant(uint256) = 10
E_INVALID_SIGNATURE: constant(uint256) = 11
E_MALFORMED: constant(uint256) = 12
E_NOT_DEV_LEDGER: constant(uint256) = 13
E_NOT_PARTY: constant(uint256) = 14
E_NOT_STAKED: constant(uint256) = 15
E_RESPONSE_MISMATCH: constant(uint256) = 16
E_STAKE_LOCKED: constant(uint256) = 17
E_UNBONDING: constant(uint256) = 18
E_UNKNOWN_CHANNEL: constant(uint256) = 19
E_UNKNOWN_CLAIM: constant(uint256) = 20
E_VOUCHER_EXCEEDS_DEPOSIT: constant(uint256) = 21
E_WINDOW_CLOSED: constant(uint256) = 22
E_WINDOW_OPEN: constant(uint256) = 23
E_WRONG_LEDGER: constant(uint256) = 24
ERROR_WIDTH: constant(uint256) = 23
ERROR_NAMES: constant(String[575]) = "CHALLENGE_PENDING      CHANNEL_CLOSED         CHANNEL_EXISTS         CHANNEL_NOT_CLOSING    CLAIM_CLOSED           CLAIM_EXISTS           DEADLINE_NOT_PASSED    INSUFFICIENT_FUNDS     INTERNAL               INVALID_AMOUNT         INVALID_ARGUMENT       INVALID_SIGNATURE      MALFORMED              NOT_DEV_LEDGER         NOT_PARTY              NOT_STAKED             RESPONSE_MISMATCH      STAKE_LOCKED           UNBONDING              UNKNOWN_CHANNEL        UNKNOWN_CLAIM          VOUCHER_EXCEEDS_DEPOSITWINDOW_CLOSED          WINDOW_OPEN            WRONG_LEDGER           "
ERROR_LENGTHS: constant(uint256) = 16425483113897711846146583866909506001  # 5 bits per code


@deploy
def __init__(
    _token: address,
    _dev: bool,
    _claim_bond: uint256,
    _slash_to_claimant_bps: uint256,
    _min_challenge_ms: uint256,
    _max_challenge_ms: uint256,
    _min_claim_window_ms: uint256,
    _max_claim_window_ms: uint256,
    _max_deadline_horizon_ms: uint256,
    _claims_per_window: uint256,
    _time_unit_us: uint256,
):
    # the same constraints as Params (specs/settlement.md 1.2)
    assert _token != empty(address), "INVALID_ARGUMENT"
    assert _claim_bond <= MAX, "INVALID_ARGUMENT"
    assert _slash_to_claimant_bps <= BPS, "INVALID_ARGUMENT"
    assert 1 <= _min_challenge_ms and _min_challenge_ms <= _max_challenge_ms, "INVALID_ARGUMENT"
    assert _max_challenge_ms <= MAX_U64, "INVALID_ARGUMENT"
    assert 1 <= _min_claim_window_ms and _min_claim_window_ms <= _max_claim_window_ms, "INVALID_ARGUMENT"
    assert _max_claim_window_ms <= MAX_U64, "INVALID_ARGUMENT"
    assert _max_deadline_horizon_ms <= MAX_U64, "INVALID_ARGUMENT"
    assert 1 <= _claims_per_window and _claims_per_window <= MAX_CLAIMS_PER_WINDOW, "INVALID_ARGUMENT"
    assert _time_unit_us >= 1 and _time_unit_us <= 1000000, "INVALID_ARGUMENT"
    assert chain.id <= MAX_U64, "INVALID_ARGUMENT"
    token = _token
    dev = _dev
    claim_bond = _claim_bond
    slash_to_claimant_bps = _slash_to_claimant_bps
    min_challenge_ms = _min_challenge_ms
    max_challenge_ms = _max_challenge_ms
    min_claim_window_ms = _min_claim_window_ms
    max_claim_window_ms = _max_claim_window_ms
    max_deadline_horizon_ms = _max_deadline_horizon_ms
    claims_per_window = _claims_per_window
    time_unit_us = _time_unit_us
    LEDGER_HASH = keccak256(self._ledger_id())
    DOMAIN_SEPARATOR = self._domain(chain.id, self)


# ======================================================================================
# helpers


@internal
@pure
def _need(ok: bool, code: uint256):
    """Revert with the ErrorCode text of `code` unless `ok`."""
    if not ok:
        size: uint256 = (ERROR_LENGTHS >> (5 * code)) & 31
        raise slice(ERROR_NAMES, code * ERROR_WIDTH, size)


@internal
@view
def _ledger_id() -> Bytes[38]:
    """b"p2pay:evm:" || u64be(chain id) || address (specs/settlement.md, EVM binding)."""
    return concat(LEDGER_PREFIX, slice(convert(chain.id, bytes32), 24, 8), convert(self, bytes20))


@external
@view
def ledger_id() -> Bytes[38]:
    return self._ledger_id()


@internal
@view
def _now() -> uint256:
    return block.timestamp * time_unit_us // 1000


@external
@view
def now_ms() -> uint256:
    return self._now()


@internal
@pure
def _account(x: bytes32) -> address:
    """A 32-byte account must be 12 zero bytes then a non-zero address."""
    raw: uint256 = convert(x, uint256)
    self._need(raw != 0 and raw < 2**160, E_INVALID_ARGUMENT)
    return convert(convert(raw, uint160), address)


@internal
@pure
def _padded(a: address) -> bytes32:
    return convert(convert(convert(a, uint160), uint256), bytes32)


@internal
@pure
def _check_amount(x: uint256):
    self._need(x >= 1 and x <= MAX, E_INVALID_AMOUNT)


@internal
@view
def _blake2b256(data: Bytes[MAX_BODY]) -> bytes32:
    """BLAKE2b-256 (no key) of `data` with the EIP-152 compression precompile. Reads the
    input in place (no zero-padded copy): the words past the end are zero, the last
    partial word is assembled byte by byte."""
    size: uint256 = len(data)
    h: Bytes[64] = concat(B2B_H0, B2B_H1)
    blocks: uint256 = max((size + 127) // 128, 1)
    for i: uint256 in range(blocks, bound=MAX_BLOCKS):
        off: uint256 = i * 128
        last: bool = i + 1 == blocks
        counter: uint256 = off + 128
        if last:
            counter = size
        le: uint256 = 0
        for k: uint256 in range(8):
            le |= ((counter >> (8 * k)) & 255) << (8 * (31 - k))
        flag: Bytes[1] = b"\x00"
        if last:
            flag = b"\x01"
        words: bytes32[4] = empty(bytes32[4])
        for j: uint256 in range(4):
            start: uint256 = off + 32 * j
            if start + 32 <= size:
                words[j] = extract32(data, start)
            elif start < size:
                w: uint256 = 0
                for t: uint256 in range(32):
                    if start + t >= size:
                        break
                    w |= convert(slice(data, start + t, 1), uint256) << (8 * (31 - t))
                words[j] = convert(w, bytes32)
        call_data: Bytes[213] = concat(
            b"\x00\x00\x00\x0c",
            h,
            words[0],
            words[1],
            words[2],
            words[3],
            slice(convert(le, bytes32), 0, 16),
            flag,
        )
        h = raw_call(BLAKE2F, call_data, max_outsize=64, is_static_call=True)
    return extract32(h, 0)


@internal
@pure
def _valid_utf8(text: Bytes[MAX_SERVICE]) -> bool:
    """Strict UTF-8 (as Python decodes it): no overlong forms, surrogates or > U+10FFFF."""
    need: uint256 = 0
    lo: uint256 = 128
    hi: uint256 = 191
    for i: uint256 in range(len(text), bound=MAX_SERVICE):
        b: uint256 = convert(slice(text, i, 1), uint256)
        if need == 0:
            lo = 128
            hi = 191
            if b < 128:
                continue
            elif b >= 194 and b <= 223:
                need = 1
            elif b == 224:
                need = 2
                lo = 160
            elif b == 237:
                need = 2
                hi = 159
            elif b >= 225 and b <= 239:
                need = 2
            elif b == 240:
                need = 3
                lo = 144
            elif b >= 241 and b <= 243:
                need = 3
            elif b == 244:
                need = 3
                hi = 143
            else:
                return False
        else:
            if b < lo or b > hi:
                return False
            need -= 1
            lo = 128
            hi = 191
    return need == 0


@internal
@pure
def _check_text(text: String[MAX_SERVICE], empty_ok: bool):
    """A service name (or status): 1..64 bytes (0.. if `empty_ok`) of valid UTF-8, so no
    log carries text a reader cannot decode (issue 14)."""
    raw: Bytes[MAX_SERVICE] = convert(text, Bytes[MAX_SERVICE])
    self._need((empty_ok or len(raw) > 0) and self._valid_utf8(raw), E_INVALID_ARGUMENT)


@internal
@pure
def _byte(x: uint256) -> Bytes[1]:
    return slice(convert(x, bytes32), 31, 1)


@internal
@pure
def _head(major: uint256, arg: uint256) -> Bytes[9]:
    """CBOR initial byte and argument in shortest form (arg < 2**64)."""
    mt: uint256 = major << 5
    if arg < 24:
        return slice(convert(mt | arg, bytes32), 31, 1)
    if arg <= 255:
        return slice(convert(((mt | 24) << 8) | arg, bytes32), 30, 2)
    if arg <= 65535:
        return slice(convert(((mt | 25) << 16) | arg, bytes32), 29, 3)
    if arg <= 4294967295:
        return slice(convert(((mt | 26) << 32) | arg, bytes32), 27, 5)
    return slice(convert(((mt | 27) << 64) | arg, bytes32), 23, 9)


@internal
@pure
def _uint(x: uint256) -> Bytes[34]:
    """Canonical CBOR of an unsigned integer < 2**128 (bignum tag 2 above 2**64 - 1)."""
    if x <= MAX_U64:
        return self._head(0, x)
    size: uint256 = 9
    for k: uint256 in range(9, 17):
        if x >> (8 * k) != 0:
            size = k + 1
    return concat(b"\xc2", self._byte(64 + size), slice(convert(x, bytes32), 32 - size, size))


@internal
@view
def _request_hash(v: Voucher) -> bytes32:
    """BLAKE2b-256 of the request's canonical CBOR signing bytes: `Request.hash`."""
    signed: Bytes[430] = concat(
        b"\xa9",
        b"\x61n", self._uint(convert(v.n, uint256)),
        b"\x64paid", self._uint(v.paid),
        b"\x65price", self._uint(v.price),
        b"\x66domain", b"\x70p2pay/v1/request",
        b"\x66ledger", self._head(2, len(v.ledger)), v.ledger,
        b"\x67channel", b"\x58\x20", v.channel,
        b"\x67service", self._head(3, len(v.service)), convert(v.service, Bytes[64]),
        b"\x68deadline", self._uint(convert(v.deadline, uint256)),
        b"\x69body_hash", b"\x58\x20", v.body_hash,
    )
    return self._blake2b256(signed)


@internal
@pure
def _domain(chain_id: uint256, verifying: address) -> bytes32:
    return keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chain_id, verifying))


@internal
@pure
def _domain_of(ledger: Bytes[64]) -> bytes32:
    """The EIP-712 domain separator of the EVM ledger a message names (0 if not one)."""
    if len(ledger) != 38 or slice(ledger, 0, 10) != LEDGER_PREFIX:
        return empty(bytes32)
    tail: uint256 = convert(extract32(ledger, 6), uint256)  # u64 chain id || address
    return self._domain((tail >> 160) & MAX_U64, convert(convert(tail & (2**160 - 1), uint160), address))


@internal
@pure
def _recover(digest: bytes32, sig: Bytes[65]) -> address:
    """The signer of `digest`, or the zero address for a malformed or high-s signature."""
    if len(sig) != 65:
        return empty(address)
    r: uint256 = convert(extract32(sig, 0), uint256)
    s: uint256 = convert(extract32(sig, 32), uint256)
    v: uint256 = convert(extract32(sig, 33), uint256) & 255
    if (v != 27 and v != 28) or r == 0 or s == 0 or s > HALF_N:
        return empty(address)
    return ecrecover(digest, v, r, s)


@internal
@pure
def _voucher_signer(v: Voucher) -> address:
    if v.paid > MAX or v.price > MAX:
        return empty(address)  # no Request has such fields (core refuses to build one)
    domain: bytes32 = self._domain_of(v.ledger)
    if domain == empty(bytes32):
        return empty(address)
    struct_hash: bytes32 = keccak256(
        abi_encode(
            REQUEST_TYPEHASH,
            keccak256(v.ledger),
            v.channel,
            v.n,
            v.paid,
            v.price,
            keccak256(v.service),
            v.body_hash,
            v.deadline,
        )
    )
    return self._recover(keccak256(concat(b"\x19\x01", domain, struct_hash)), v.signature)


@internal
@pure
def _answer_signer(a: Answer) -> address:
    domain: bytes32 = self._domain_of(a.ledger)
    if domain == empty(bytes32):
        return empty(address)
    struct_hash: bytes32 = keccak256(
        abi_encode(
            RESPONSE_TYPEHASH,
            keccak256(a.ledger),
            a.channel,
            a.n,
            a.request_hash,
            keccak256(a.status),
            a.price,
            a.spent,
            a.body_hash,
        )
    )
    return self._recover(keccak256(concat(b"\x19\x01", domain, struct_hash)), a.signature)


@internal
def _credit(account: address, amount: uint256):
    self._need(self.balances[account] + amount <= MAX, E_INVALID_AMOUNT)
    self.balances[account] += amount


@internal
def _debit(account: address, amount: uint256):
    self._need(self.balances[account] >= amount, E_INSUFFICIENT_FUNDS)
    self.balances[account] -= amount


@internal
@view
def _channel(cid: bytes32) -> Channel:
    ch: Channel = self.channels[cid]
    self._need(ch.state != S_NONE, E_UNKNOWN_CHANNEL)
    return ch


@internal
@pure
def _entitled(paid_seen: uint256, refunded: uint256) -> uint256:
    """The most the payee may hold from a channel: max(0, paid_seen - refunded)."""
    if paid_seen <= refunded:
        return 0
    return paid_seen - refunded


@internal
@pure
def _voucher_pay(ch: Channel, v: Voucher, has_amount: bool, amount: uint256) -> uint256:
    """What redeeming `v` (capped by `amount`) pays now (section 4, Redeem step 7): the
    payee may hold at most its entitlement `max(paid_seen, v.paid) - refunded`, never more
    than the deposit (or the cap); it holds `redeemed - clawed`."""
    target: uint256 = min(self._entitled(max(ch.paid_seen, v.paid), ch.refunded), ch.deposit)
    if has_amount:
        target = min(target, amount)
    held: uint256 = ch.redeemed - ch.clawed
    if target <= held:
        return 0
    return min(target - held, ch.deposit - ch.redeemed)


# ======================================================================================
# accounts (section 3)


@external
def mint(account: bytes32, amount: uint256):
    """Development ledgers only: create `amount` (test tokens minted to this contract)."""
    self._check_amount(amount)
    to: address = self._account(account)
    self._need(dev, E_NOT_DEV_LEDGER)
    self._credit(to, amount)
    self.totals.supply += amount
    self.totals.balances += amount
    extcall Token(token).mint(self, amount)
    log Minted(account=to, amount=amount, at=self._now())


@external
def deposit(amount: uint256):
    """Money enters the ledger: `amount` tokens from the sender (approve first)."""
    self._check_amount(amount)
    self._credit(msg.sender, amount)
    self.totals.supply += amount
    self.totals.balances += amount
    self._need(extcall Token(token).transferFrom(msg.sender, self, amount), E_INTERNAL)
    log Minted(account=msg.sender, amount=amount, at=self._now())


@external
def transfer(to: bytes32, amount: uint256):
    self._check_amount(amount)
    dst: address = self._account(to)
    self._debit(msg.sender, amount)
    self._credit(dst, amount)
    log Transferred(src=msg.sender, dst=dst, amount=amount, at=self._now())


@external
def withdraw(amount: uint256):
    self._check_amount(amount)
    self._debit(msg.sender, amount)
    self.totals.supply -= amount
    self.totals.balances -= amount
    self._need(extcall Token(token).transfer(msg.sender, amount), E_INTERNAL)
    log Withdrawn(account=msg.sender, amount=amount, at=self._now())


# ======================================================================================
# channels (section 4)


@external
def open_channel(payee: bytes32, deposit: uint256, challenge_ms: uint256) -> bytes32:
    self._check_amount(deposit)
    to: address = self._account(payee)
    self._need(to != msg.sender, E_INVALID_ARGUMENT)
    self._need(challenge_ms >= min_challenge_ms and challenge_ms <= max_challenge_ms, E_INVALID_ARGUMENT)
    self._debit(msg.sender, deposit)
    nonce: uint256 = self.nonce
    self._need(nonce <= MAX_U64, E_INTERNAL)
    cid: bytes32 = self._blake2b256(
        concat(
            CHANNEL_DOMAIN,
            self._ledger_id(),
            self._padded(msg.sender),
            payee,
            slice(convert(nonce, bytes32), 24, 8),
        )
    )
    self._need(self.channels[cid].state == S_NONE, E_CHANNEL_EXISTS)
    self.channels[cid] = Channel(
        payer=msg.sender,
        payee=to,
        deposit=deposit,
        redeemed=0,
        challenge_ms=challenge_ms,
        state=S_OPEN,
        closes_at=0,
        paid_seen=0,
        refunded=0,
        clawed=0,
    )
    self.nonce = nonce + 1
    self.totals.balances -= deposit
    self.totals.escrow += deposit
    log ChannelOpened(
        channel=cid, payer=msg.sender, payee=to, deposit=deposit, challenge_ms=challenge_ms,
        at=self._now()
    )
    return cid


@external
def top_up(channel: bytes32, amount: uint256):
    self._check_amount(amount)
    ch: Channel = self._channel(channel)
    self._need(msg.sender == ch.payer, E_NOT_PARTY)
    self._need(ch.state == S_OPEN, E_CHANNEL_CLOSED)
    self._debit(msg.sender, amount)
    self._need(ch.deposit + amount <= MAX, E_INVALID_AMOUNT)
    self.channels[channel].deposit = ch.deposit + amount
    self.totals.balances -= amount
    self.totals.escrow += amount
    log ToppedUp(
        channel=channel, payer=ch.payer, amount=amount, deposit=ch.deposit + amount,
        at=self._now()
    )


@internal
def _check_voucher_ledger(v: Voucher):
    self._need(keccak256(v.ledger) == LEDGER_HASH, E_WRONG_LEDGER)


@internal
def _pay_voucher(cid: bytes32, ch: Channel, v: Voucher, pay: uint256) -> uint256:
    """Redeem `pay` (> 0) on the channel; returns the new `redeemed`."""
    redeemed: uint256 = ch.redeemed + pay
    self.channels[cid].redeemed = redeemed
    if v.paid > ch.paid_seen:
        self.channels[cid].paid_seen = v.paid
    self.totals.escrow -= pay
    self.totals.balances += pay
    log Redeemed(
        channel=cid, payer=ch.payer, payee=ch.payee, amount=pay, redeemed=redeemed, n=v.n,
        paid=v.paid, at=self._now()
    )
    return redeemed


@external
def redeem(v: Voucher, has_amount: bool, amount: uint256) -> uint256:
    self._need(not has_amount or amount <= MAX, E_INVALID_AMOUNT)
    self._check_voucher_ledger(v)
    ch: Channel = self._channel(v.channel)
    self._need(msg.sender == ch.payee, E_NOT_PARTY)
    self._need(ch.state != S_CLOSED, E_CHANNEL_CLOSED)
    self._need(self._voucher_signer(v) == ch.payer, E_INVALID_SIGNATURE)
    pay: uint256 = self._voucher_pay(ch, v, has_amount, amount)
    self._credit(ch.payee, pay)
    if pay > 0:
        self._pay_voucher(v.channel, ch, v, pay)
    return pay


@external
def payee_close(
    channel: bytes32, has_voucher: bool, v: Voucher, has_amount: bool, amount: uint256
) -> uint256:
    self._need(not has_amount or amount <= MAX, E_INVALID_AMOUNT)
    self._need(has_voucher or not has_amount, E_INVALID_ARGUMENT)
    if has_voucher:
        self._need(v.channel == channel, E_INVALID_ARGUMENT)
        self._check_voucher_ledger(v)
    ch: Channel = self._channel(channel)
    self._need(msg.sender == ch.payee, E_NOT_PARTY)
    self._need(ch.state != S_CLOSED, E_CHANNEL_CLOSED)
    pay: uint256 = 0
    if has_voucher:
        self._need(self._voucher_signer(v) == ch.payer, E_INVALID_SIGNATURE)
        pay = self._voucher_pay(ch, v, has_amount, amount)
    refund: uint256 = ch.deposit - ch.redeemed - pay
    self._credit(ch.payee, pay)
    self._credit(ch.payer, refund)
    redeemed: uint256 = ch.redeemed
    if pay > 0:
        redeemed = self._pay_voucher(channel, ch, v, pay)
    self.channels[channel].state = S_CLOSED
    self.totals.escrow -= refund
    self.totals.balances += refund
    log ChannelClosed(
        channel=channel, payer=ch.payer, payee=ch.payee, by="payee", redeemed=redeemed,
        refunded=refund, at=self._now()
    )
    return pay


@external
def start_close(channel: bytes32):
    ch: Channel = self._channel(channel)
    self._need(msg.sender == ch.payer, E_NOT_PARTY)
    self._need(ch.state != S_CLOSED, E_CHANNEL_CLOSED)
    self._need(ch.state == S_OPEN, E_CHALLENGE_PENDING)
    closes_at: uint256 = self._now() + ch.challenge_ms
    self.channels[channel].state = S_CLOSING
    self.channels[channel].closes_at = closes_at
    log ChannelClosing(
        channel=channel, payer=ch.payer, payee=ch.payee, closes_at=closes_at, at=self._now()
    )


@external
def finalize_close(channel: bytes32):
    ch: Channel = self._channel(channel)
    self._need(ch.state != S_CLOSED, E_CHANNEL_CLOSED)
    self._need(ch.state == S_CLOSING, E_CHANNEL_NOT_CLOSING)
    self._need(self._now() >= ch.closes_at, E_CHALLENGE_PENDING)
    refund: uint256 = ch.deposit - ch.redeemed
    self._credit(ch.payer, refund)
    self.channels[channel].state = S_CLOSED
    self.totals.escrow -= refund
    self.totals.balances += refund
    log ChannelClosed(
        channel=channel, payer=ch.payer, payee=ch.payee, by="payer", redeemed=ch.redeemed,
        refunded=refund, at=self._now()
    )


# ======================================================================================
# stakes (section 6)


@external
def stake(amount: uint256, penalty: uint256, claim_window_ms: uint256):
    self._check_amount(amount)
    self._check_amount(penalty)
    self._need(claim_window_ms >= min_claim_window_ms and claim_window_ms <= max_claim_window_ms, E_INVALID_ARGUMENT)
    st: Stake = self.stakes[msg.sender]
    self._need(st.unbonding_at == 0, E_UNBONDING)
    self._need(penalty <= st.amount + amount, E_INVALID_ARGUMENT)
    if st.open_claims > 0:
        self._need(penalty == st.penalty and claim_window_ms == st.claim_window_ms, E_STAKE_LOCKED)
    if st.amount > 0:  # BONDED (not unbonding, checked above)
        self._need(penalty >= st.penalty and claim_window_ms >= st.claim_window_ms, E_STAKE_LOCKED)
    self._debit(msg.sender, amount)
    self._need(st.amount + amount <= MAX, E_INVALID_AMOUNT)
    total: uint256 = st.amount + amount
    self.stakes[msg.sender].amount = total
    self.stakes[msg.sender].penalty = penalty
    self.stakes[msg.sender].claim_window_ms = claim_window_ms
    self.totals.balances -= amount
    self.totals.stakes += amount
    log Staked(
        account=msg.sender, amount=amount, total=total, penalty=penalty,
        claim_window_ms=claim_window_ms, at=self._now()
    )


@external
def request_unstake():
    st: Stake = self.stakes[msg.sender]
    self._need(st.unbonding_at > 0 or st.amount > 0, E_NOT_STAKED)
    self._need(st.unbonding_at == 0, E_UNBONDING)
    unbonding_at: uint256 = self._now() + max_deadline_horizon_ms + 2 * st.claim_window_ms
    self.stakes[msg.sender].unbonding_at = unbonding_at
    self.stakes[msg.sender].unstake_requested_at = self._now()
    log UnstakeRequested(
        account=msg.sender, amount=st.amount, unbonding_at=unbonding_at, at=self._now()
    )


@external
def withdraw_stake():
    st: Stake = self.stakes[msg.sender]
    self._need(st.unbonding_at > 0, E_NOT_STAKED)
    self._need(self._now() >= st.unbonding_at, E_STAKE_LOCKED)
    self._need(st.open_claims == 0, E_STAKE_LOCKED)
    self._credit(msg.sender, st.amount)
    self.stakes[msg.sender].amount = 0
    self.stakes[msg.sender].unbonding_at = 0
    self.stakes[msg.sender].unstake_requested_at = 0
    self.totals.stakes -= st.amount
    self.totals.balances += st.amount
    log StakeWithdrawn(account=msg.sender, amount=st.amount, at=self._now())


# ======================================================================================
# claims (section 5)




@internal
def _claimed_channel(v: Voucher) -> Channel:
    """FileClaim steps 1-6 (specs/settlement.md 5): the claimed request's arguments, ledger,
    channel, sender and signature."""
    # arguments: a claimable request takes a fresh paid slice (specs/claims.md 2); the body
    # is at most MAX_BODY bytes (the ABI type: a longer one does not decode)
    self._need(v.n >= 1 and v.price >= 1 and v.paid >= v.price, E_INVALID_ARGUMENT)
    self._check_text(v.service, False)
    self._check_voucher_ledger(v)
    ch: Channel = self._channel(v.channel)
    self._need(msg.sender == ch.payer, E_NOT_PARTY)
    self._need(self._voucher_signer(v) == ch.payer, E_INVALID_SIGNATURE)
    return ch


@internal
def _new_claim(
    cid: bytes32, v: Voucher, body: Bytes[MAX_BODY], ch: Channel, bond: uint256,
    now: uint256, window_ends: uint256
) -> Claim:
    """Store an OPEN claim on `v` (FileClaim's effects but the bond and the stake)."""
    self._need(self.claims[cid].state == S_NONE, E_CLAIM_EXISTS)
    self._debit(msg.sender, bond)
    c: Claim = Claim(
        claimant=msg.sender,
        respondent=ch.payee,
        channel=v.channel,
        n=v.n,
        price=v.price,
        paid=v.paid,
        deadline=v.deadline,
        bond=bond,
        filed_at=now,
        window_ends=window_ends,
        state=S_OPEN,
        slashed=0,
        refund=0,
        clawed=0,
    )
    self.claims[cid] = c
    if v.paid > ch.paid_seen:
        self.channels[v.channel].paid_seen = v.paid
    self.totals.balances -= bond
    self.totals.bonds += bond
    log ClaimFiled(
        claim=cid, claimant=msg.sender, respondent=ch.payee, channel=v.channel, n=v.n,
        deadline=v.deadline, bond=bond, window_ends=window_ends, price=v.price,
        paid=v.paid, at=now
    )
    log RequestEvidence(claim=cid, voucher=v, body=body)
    return c


@external
def file_claim(v: Voucher, body: Bytes[MAX_BODY]) -> bytes32:
    ch: Channel = self._claimed_channel(v)
    self._need(self._blake2b256(body) == v.body_hash, E_MALFORMED)
    self._need(v.paid <= ch.deposit, E_VOUCHER_EXCEEDS_DEPOSIT)
    st: Stake = self.stakes[ch.payee]
    self._need(st.amount > 0, E_NOT_STAKED)
    deadline: uint256 = convert(v.deadline, uint256)
    if st.unbonding_at > 0:
        # C-9: a request dated after unbonding began was not served under the bonded terms
        self._need(deadline <= st.unstake_requested_at + max_deadline_horizon_ms, E_UNBONDING)
    now: uint256 = self._now()
    self._need(now > deadline, E_DEADLINE_NOT_PASSED)
    self._need(now <= deadline + st.claim_window_ms, E_WINDOW_CLOSED)
    cid: bytes32 = self._request_hash(v)
    # C-1: a whole window plus one slot, ceil(claim_window_ms / claims_per_window), for each
    # claim against this stake still open
    slot: uint256 = (st.claim_window_ms + claims_per_window - 1) // claims_per_window
    window_ends: uint256 = now + st.claim_window_ms + st.open_claims * slot
    self._new_claim(cid, v, body, ch, claim_bond, now, window_ends)
    self.stakes[ch.payee].open_claims = st.open_claims + 1
    return cid


@external
def file_claim_refused(
    v: Voucher, body: Bytes[MAX_BODY], a: Answer, answer_body: Bytes[MAX_BODY]
) -> bytes32:
    """FileClaim with the payee's signed refusal of the request (status not OK, price 0):
    a refund settled at once as REFUSED, without bond, stake, deadline or window; neither
    body is checked (nothing is served: the signatures are the proof). The price is refunded
    as for a REFUSED answer (specs/settlement.md 5.3)."""
    self._check_text(a.status, False)
    ch: Channel = self._claimed_channel(v)
    cid: bytes32 = self._request_hash(v)
    self._check_response(cid, a, v.channel, v.n, ch.payee)
    self._need(a.status != STATUS_OK and a.price == 0, E_RESPONSE_MISMATCH)
    self._need(v.paid <= ch.deposit, E_VOUCHER_EXCEEDS_DEPOSIT)
    now: uint256 = self._now()
    c: Claim = self._new_claim(cid, v, body, ch, 0, now, now)
    st: Stake = self.stakes[ch.payee]
    claw: uint256 = self._refund(cid, c, st.amount)
    self.claims[cid].state = S_REFUSED
    self.stakes[ch.payee].amount = st.amount - claw
    log ClaimAnswered(
        claim=cid, claimant=msg.sender, respondent=ch.payee, outcome="refused",
        status=a.status, bond=0, bond_to=msg.sender, refund=v.price, clawed=claw, at=now
    )
    log ResponseEvidence(claim=cid, answer=a, body=answer_body)
    return cid


@internal
@view
def _open_claim(claim: bytes32) -> Claim:
    """The claim the respondent (the sender) answers, still open and in its window."""
    c: Claim = self.claims[claim]
    self._need(c.state != S_NONE, E_UNKNOWN_CLAIM)
    self._need(msg.sender == c.respondent, E_NOT_PARTY)
    self._need(c.state == S_OPEN, E_CLAIM_CLOSED)
    self._need(self._now() <= c.window_ends, E_WINDOW_CLOSED)
    return c


@internal
def _refund(claim: bytes32, c: Claim, stake_left: uint256) -> uint256:
    """Refund the claimed price (specs/claims.md 3): `refunded += price`; what the payee
    already holds beyond its new entitlement (at most the price, at most `stake_left`) is
    taken from its stake and paid to the claimant. Returns that clawback."""
    ch: Channel = self.channels[c.channel]
    # saturates at MAX: the entitlement is 0 beyond paid_seen <= MAX anyway, so a refund
    # never fails (and never locks the claim) on the sum
    refunded: uint256 = min(ch.refunded + c.price, MAX)
    entitled: uint256 = self._entitled(ch.paid_seen, refunded)
    held: uint256 = ch.redeemed - ch.clawed
    claw: uint256 = 0
    if held > entitled:
        claw = min(min(held - entitled, c.price), stake_left)
    self._credit(c.claimant, claw)
    self.channels[c.channel].refunded = refunded
    self.channels[c.channel].clawed = ch.clawed + claw
    self.claims[claim].refund = c.price
    self.claims[claim].clawed = claw
    self.totals.stakes -= claw
    self.totals.balances += claw
    return claw


@internal
def _check_response(claim: bytes32, a: Answer, channel: bytes32, n: uint64, respondent: address):
    """The response is signed by the respondent, for the claimed request."""
    self._need(self._answer_signer(a) == respondent, E_INVALID_SIGNATURE)
    self._need(
        (
        a.request_hash == claim
        and a.channel == channel
        and a.n == n
        and keccak256(a.ledger) == LEDGER_HASH
    ),
        E_RESPONSE_MISMATCH,
    )


@external
def answer_claim(claim: bytes32, a: Answer, body: Bytes[MAX_BODY]):
    """Answer with the signed response: OK -> DELIVERED, any other status -> REFUSED
    (the price is refunded); the bond goes back to the claimant either way."""
    self._check_text(a.status, False)
    c: Claim = self._open_claim(claim)
    self._check_response(claim, a, c.channel, c.n, c.respondent)
    self._need(self._blake2b256(body) == a.body_hash, E_MALFORMED)
    if a.status == STATUS_OK:
        self._need(a.price <= c.price, E_RESPONSE_MISMATCH)  # charges at most the request's price
    else:
        self._need(a.price == 0, E_RESPONSE_MISMATCH)  # a refusal charges nothing
    st: Stake = self.stakes[c.respondent]
    self._need(st.penalty > 0, E_INTERNAL)
    self._credit(c.claimant, c.bond)
    state: uint8 = S_DELIVERED
    outcome: String[9] = "delivered"
    refund: uint256 = 0
    claw: uint256 = 0
    if a.status != STATUS_OK:
        state = S_REFUSED
        outcome = "refused"
        refund = c.price
        claw = self._refund(claim, c, st.amount)
    self.claims[claim].state = state
    self.stakes[c.respondent].amount = st.amount - claw
    self.stakes[c.respondent].open_claims = st.open_claims - 1
    self.totals.bonds -= c.bond
    self.totals.balances += c.bond
    log ClaimAnswered(
        claim=claim, claimant=c.claimant, respondent=c.respondent, outcome=outcome,
        status=a.status, bond=c.bond, bond_to=c.claimant, refund=refund, clawed=claw,
        at=self._now()
    )
    log ResponseEvidence(claim=claim, answer=a, body=body)


@internal
@view
def _conflicts(claim: bytes32, c: Claim, e: Voucher) -> bool:
    """tiling_conflict(claimed, evidence, horizon) of p2pay/core/settlement.py."""
    if e.n == c.n:
        return self._request_hash(e) != claim
    a_paid: uint256 = c.paid
    a_deadline: uint256 = convert(c.deadline, uint256)
    b_paid: uint256 = e.paid
    b_price: uint256 = e.price
    b_deadline: uint256 = convert(e.deadline, uint256)
    if e.n < c.n:
        a_paid = e.paid
        a_deadline = convert(e.deadline, uint256)
        b_paid = c.paid
        b_price = c.price
        b_deadline = convert(c.deadline, uint256)
    # a.paid > b.paid - b.price (without going below zero), or a post-dated
    return a_paid + b_price > b_paid or a_deadline > b_deadline + max_deadline_horizon_ms


@external
def answer_claim_evidence(claim: bytes32, e: Voucher):
    """Answer with a payer-signed request of the same channel in tiling conflict with the
    claimed one (specs/claims.md 2): FRIVOLOUS, the bond goes to the respondent. Its body
    is neither needed nor checked: the signature is the evidence."""
    self._check_text(e.service, False)
    c: Claim = self._open_claim(claim)
    self._check_voucher_ledger(e)
    self._need(e.channel == c.channel, E_RESPONSE_MISMATCH)
    # the claimant is the channel's payer (FileClaim)
    self._need(self._voucher_signer(e) == c.claimant, E_INVALID_SIGNATURE)
    self._need(self._conflicts(claim, c, e), E_RESPONSE_MISMATCH)
    st: Stake = self.stakes[c.respondent]
    self._need(st.penalty > 0, E_INTERNAL)
    self._credit(c.respondent, c.bond)
    self.claims[claim].state = S_FRIVOLOUS
    self.stakes[c.respondent].open_claims = st.open_claims - 1
    self.totals.bonds -= c.bond
    self.totals.balances += c.bond
    log ClaimAnswered(
        claim=claim, claimant=c.claimant, respondent=c.respondent, outcome="frivolous",
        status="", bond=c.bond, bond_to=c.respondent, refund=0, clawed=0, at=self._now()
    )
    log ConflictEvidence(claim=claim, voucher=e)


@external
def resolve_claim(claim: bytes32):
    c: Claim = self.claims[claim]
    self._need(c.state != S_NONE, E_UNKNOWN_CLAIM)
    self._need(c.state == S_OPEN, E_CLAIM_CLOSED)
    self._need(self._now() > c.window_ends, E_WINDOW_OPEN)
    st: Stake = self.stakes[c.respondent]
    self._need(st.penalty > 0, E_INTERNAL)
    slash: uint256 = min(st.penalty, st.amount)
    to_claimant: uint256 = slash * slash_to_claimant_bps // BPS
    burn: uint256 = slash - to_claimant
    self._credit(c.claimant, to_claimant + c.bond)
    claw: uint256 = self._refund(claim, c, st.amount - slash)
    self.stakes[c.respondent].amount = st.amount - slash - claw
    self.stakes[c.respondent].open_claims = st.open_claims - 1
    self.claims[claim].state = S_UPHELD
    self.claims[claim].slashed = slash
    self.totals.stakes -= slash
    self.totals.bonds -= c.bond
    self.totals.burnt += burn
    self.totals.balances += to_claimant + c.bond
    log ClaimUpheld(
        claim=claim, claimant=c.claimant, respondent=c.respondent, slashed=slash,
        to_claimant=to_claimant, burnt=burn, bond=c.bond, refund=c.price, clawed=claw,
        at=self._now()
    )
    if slash > 0:
        log Slashed(account=c.respondent, amount=slash, claim=claim, at=self._now())
