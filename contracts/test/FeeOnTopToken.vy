# pragma version 0.4.3
# pragma evm-version cancun
"""
@title Test token whose fee, once switched on, is charged on top of a transfer
@notice A transfer of `amount` delivers `amount` and takes `amount + fee` from the sender (the
        fee is burnt). Anyone may mint and anyone may set the fee: it models a token whose owner
        turns a fee on after swaps in it are locked.
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

fee: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])


@external
def mint(to: address, amount: uint256):
    self.balanceOf[to] += amount


@external
def set_fee(fee: uint256):
    self.fee = fee


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    return True


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    self.balanceOf[sender] -= amount + self.fee
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    self.allowance[sender][msg.sender] -= amount
    self._transfer(sender, receiver, amount)
    return True
