# pragma version 0.4.3
# pragma evm-version cancun
"""
@title Test fee-on-transfer token
@notice Burns 1% of every transfer, so the receiver gets less than `amount`. Anyone may mint.
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

FEE_PERCENT: constant(uint256) = 1

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])


@external
def mint(to: address, amount: uint256):
    self.balanceOf[to] += amount


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    return True


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    fee: uint256 = amount * FEE_PERCENT // 100
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount - fee
    log Transfer(sender=sender, receiver=receiver, value=amount - fee)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    self.allowance[sender][msg.sender] -= amount
    self._transfer(sender, receiver, amount)
    return True
