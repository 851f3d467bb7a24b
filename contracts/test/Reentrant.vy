# pragma version 0.4.3
# pragma evm-version cancun
"""
@title Reentrancy attacker: an ETH recipient/sender and an ERC-20 token in one contract
@notice For tests only. When armed, the next callback it receives (ETH arriving in
        __default__, or the HTLC calling its transfer/transferFrom as a token) calls `target`
        with the stored calldata once, and records whether that inner call succeeded. It can
        also be told to refuse ETH, to test that a failed payout reverts the whole call.
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

target: public(address)
reentry_calldata: public(Bytes[1024])
armed: public(bool)
reentry_attempts: public(uint256)
reentry_succeeded: public(bool)
reject_eth: public(bool)

balanceOf: public(HashMap[address, uint256])


@external
def arm(target: address, calldata: Bytes[1024]):
    self.target = target
    self.reentry_calldata = calldata
    self.armed = True


@external
def set_reject_eth(reject: bool):
    self.reject_eth = reject


@payable
@external
def execute(target: address, data: Bytes[1024], amount: uint256):
    """@notice Make this contract the msg.sender of a call (e.g. a lock), so it can be refunded."""
    raw_call(target, data, value=amount)


@internal
def _attack():
    if not self.armed:
        return
    self.armed = False
    self.reentry_attempts += 1
    self.reentry_succeeded = raw_call(self.target, self.reentry_calldata, revert_on_failure=False)


@payable
@external
def __default__():
    assert not self.reject_eth, "no eth"
    self._attack()


@external
def mint(to: address, amount: uint256):
    self.balanceOf[to] += amount


@external
def approve(spender: address, amount: uint256) -> bool:
    # No allowance bookkeeping: this token exists to call back, not to be a correct ERC-20.
    return True


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self.balanceOf[msg.sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=msg.sender, receiver=receiver, value=amount)
    self._attack()
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)
    self._attack()
    return True
