# pragma version ~=0.4.3
# pragma evm-version cancun
"""
@title p2pay test token
@notice A plain ERC-20 with 24 decimals (1 token = 10**24 yocto, the unit of p2pay
        amounts) and an unrestricted `mint`: for development chains and tests ONLY.
        A dev settlement contract calls `mint` to create the money of its `mint` op.
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    amount: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    amount: uint256

name: public(String[32])
symbol: public(String[8])
decimals: public(uint8)
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])


@deploy
def __init__():
    self.name = "p2pay test token"
    self.symbol = "P2PT"
    self.decimals = 24


@external
def transfer(receiver: address, amount: uint256) -> bool:
    assert receiver != empty(address), "zero receiver"
    assert self.balanceOf[msg.sender] >= amount, "balance too low"
    self.balanceOf[msg.sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=msg.sender, receiver=receiver, amount=amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, amount=amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    assert receiver != empty(address), "zero receiver"
    assert self.balanceOf[sender] >= amount, "balance too low"
    assert self.allowance[sender][msg.sender] >= amount, "allowance too low"
    self.allowance[sender][msg.sender] -= amount
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, amount=amount)
    return True


@external
def mint(receiver: address, amount: uint256):
    """Anyone may mint: this token is worthless by design (dev chains and tests)."""
    assert receiver != empty(address), "zero receiver"
    self.totalSupply += amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=empty(address), receiver=receiver, amount=amount)
