# pragma version 0.4.3
# Pinned to cancun, not the compiler default: cancun is the oldest fork with transient storage
# (the reentrancy lock lives there, so it costs ~100 gas instead of ~5000), and pinning keeps the
# committed artifact identical whatever the compiler's default becomes.
# pragma evm-version cancun
"""
@title KOFO hash time-locked contract (HTLC) for ETH and ERC-20 tokens
@notice One contract holds many swaps. A swap is never stored: only its id, a hash of all its
        terms, is kept as one storage slot, and every call that acts on a swap passes the terms
        again. Redeem needs the 32-byte preimage whose sha256 is the payment hash (sha256, as on
        Bitcoin, so one secret unlocks every leg of a cross-chain route); anyone may submit it
        and the recipient is paid. After expiry (a unix timestamp compared with
        block.timestamp) anyone may refund the sender, unless the swap was redeemed first.
@dev    Fee-on-transfer and other tokens that deliver less than `amount` are rejected at lock
        time, and a payout that debits the contract by anything but `amount` is refused: the
        contract must pay out exactly what each swap id commits to, and a short deposit or an
        excess debit would be made good from other swaps' funds. Rebasing tokens are not
        supported either (their balance moves under the contract); do not lock them.
"""

from ethereum.ercs import IERC20

event Locked:
    swap_id: indexed(bytes32)
    payment_hash: indexed(bytes32)
    token: address
    sender: address
    recipient: indexed(address)
    amount: uint256
    expiry: uint256

event Redeemed:
    swap_id: indexed(bytes32)
    preimage: bytes32

event Refunded:
    swap_id: indexed(bytes32)


interface IERC2612:
    def permit(
        owner: address,
        spender: address,
        amount: uint256,
        deadline: uint256,
        v: uint8,
        r: bytes32,
        s: bytes32,
    ): nonpayable


# True while a swap is locked and neither redeemed nor refunded. A bool keeps one slot per swap,
# and clearing it on payout earns the storage refund.
swaps: public(HashMap[bytes32, bool])


@pure
@internal
def _swap_id(
    payment_hash: bytes32,
    token: address,
    sender: address,
    recipient: address,
    amount: uint256,
    expiry: uint256,
) -> bytes32:
    return keccak256(abi_encode(payment_hash, token, sender, recipient, amount, expiry))


@internal
def _open(
    payment_hash: bytes32, token: address, recipient: address, amount: uint256, expiry: uint256
) -> bytes32:
    assert amount != 0, "zero amount"
    assert recipient != empty(address), "no recipient"
    assert expiry > block.timestamp, "expiry past"
    swap_id: bytes32 = self._swap_id(payment_hash, token, msg.sender, recipient, amount, expiry)
    # A second lock with the same terms would map to the same slot and strand one deposit.
    assert not self.swaps[swap_id], "exists"
    self.swaps[swap_id] = True
    log Locked(
        swap_id=swap_id,
        payment_hash=payment_hash,
        token=token,
        sender=msg.sender,
        recipient=recipient,
        amount=amount,
        expiry=expiry,
    )
    return swap_id


@internal
def _pull(token: address, amount: uint256):
    assert token != empty(address), "no token"
    before: uint256 = staticcall IERC20(token).balanceOf(self)
    # default_return_value: tokens whose transferFrom returns nothing (e.g. USDT) count as success.
    assert extcall IERC20(token).transferFrom(
        msg.sender, self, amount, default_return_value=True
    ), "transfer failed"
    # Reject fee-on-transfer tokens (see the contract notice): the deposit must be exact.
    assert staticcall IERC20(token).balanceOf(self) == before + amount, "amount mismatch"


@internal
def _pay(token: address, to: address, amount: uint256):
    if token == empty(address):
        # raw_call forwards all gas, so contract wallets with non-trivial receive hooks work.
        raw_call(to, b"", value=amount)
    else:
        # A token may start charging a fee after the lock (or otherwise take more than `amount`
        # from the payer): that excess would come out of other swaps' funds. Only an exact
        # debit is accepted, so a bad token can stall its own swaps but never drain others.
        before: uint256 = staticcall IERC20(token).balanceOf(self)
        assert extcall IERC20(token).transfer(to, amount, default_return_value=True), "transfer failed"
        assert staticcall IERC20(token).balanceOf(self) + amount == before, "payout mismatch"


@payable
@external
@nonreentrant
def lock(payment_hash: bytes32, recipient: address, expiry: uint256) -> bytes32:
    """
    @notice Lock msg.value wei for `recipient` under sha256 hash `payment_hash` until `expiry`.
    @return The swap id.
    """
    return self._open(payment_hash, empty(address), recipient, msg.value, expiry)


@external
@nonreentrant
def lock_token(
    token: address, amount: uint256, payment_hash: bytes32, recipient: address, expiry: uint256
) -> bytes32:
    """
    @notice Lock `amount` of ERC-20 `token`, pulled from msg.sender (approve this contract first).
    @return The swap id.
    """
    # State first, then the token call: a token that calls back finds the swap already recorded
    # and the reentrancy lock held; if the pull fails, the whole call reverts with it.
    swap_id: bytes32 = self._open(payment_hash, token, recipient, amount, expiry)
    self._pull(token, amount)
    return swap_id


@external
@nonreentrant
def lock_token_with_permit(
    token: address,
    amount: uint256,
    payment_hash: bytes32,
    recipient: address,
    expiry: uint256,
    deadline: uint256,
    v: uint8,
    r: bytes32,
    s: bytes32,
) -> bytes32:
    """
    @notice Like lock_token, with an EIP-2612 permit for `amount` so no separate approve is needed.
    """
    swap_id: bytes32 = self._open(payment_hash, token, recipient, amount, expiry)
    # The permit may already have been used by someone who copied it from the mempool; that must
    # not make the lock fail, so a failed permit is ignored and transferFrom decides.
    success: bool = raw_call(
        token,
        abi_encode(
            msg.sender, self, amount, deadline, v, r, s, method_id=method_id(
                "permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"
            )
        ),
        revert_on_failure=False,
    )
    self._pull(token, amount)
    return swap_id


@external
@nonreentrant
def redeem(
    preimage: bytes32,
    token: address,
    sender: address,
    recipient: address,
    amount: uint256,
    expiry: uint256,
):
    """
    @notice Pay `recipient` the swap whose payment hash is sha256(preimage). Anyone may call it,
            also after expiry as long as the swap was not refunded.
    """
    swap_id: bytes32 = self._swap_id(sha256(preimage), token, sender, recipient, amount, expiry)
    assert self.swaps[swap_id], "no swap"
    self.swaps[swap_id] = False
    log Redeemed(swap_id=swap_id, preimage=preimage)
    self._pay(token, recipient, amount)


@external
@nonreentrant
def refund(
    payment_hash: bytes32,
    token: address,
    sender: address,
    recipient: address,
    amount: uint256,
    expiry: uint256,
):
    """
    @notice Return an expired, unredeemed swap to its `sender`. Anyone may call it.
    """
    swap_id: bytes32 = self._swap_id(payment_hash, token, sender, recipient, amount, expiry)
    assert self.swaps[swap_id], "no swap"
    assert block.timestamp >= expiry, "not expired"
    self.swaps[swap_id] = False
    log Refunded(swap_id=swap_id)
    self._pay(token, sender, amount)
