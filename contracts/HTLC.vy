# pragma version 0.4.3
# Pinned to cancun, not the compiler default: cancun is the oldest fork with transient storage
# (the reentrancy lock lives there, so it costs ~100 gas instead of ~5000), and pinning keeps the
# committed artifact identical whatever the compiler's default becomes.
# pragma evm-version cancun
"""
@title KOFO hash time-locked contract (HTLC) v2 for ETH and ERC-20 tokens, with batches
@notice One contract holds many swaps. A swap's terms are never stored: its id, a hash of all
        its terms, is written into a storage slot its sender names, and every call that acts on
        a swap passes the terms and the slot again. Redeem needs the 32-byte preimage whose
        sha256 is the payment hash (sha256, as on Bitcoin, so one secret unlocks every leg of a
        cross-chain route); anyone may submit it and the recipient is paid. After expiry (a unix
        timestamp compared with block.timestamp) anyone may refund the sender, unless the swap
        was redeemed first.
@dev    Slots are per sender and reusable: a payout writes FREE (not zero) into a slot below
        ONE_SHOT, so the sender's next lock there rewrites a non-zero word (2,900 gas) instead of
        creating one (20,000). Slots from ONE_SHOT up are cleared on payout (a storage refund)
        for a sender that may not lock again. See docs/ethereum-htlc.md for the storage layout,
        the packed arguments and the log format.
        Fee-on-transfer and other tokens that deliver less than `amount` are rejected at lock
        time, and a payout that debits the contract by anything but `amount` is refused: the
        contract must pay out exactly what each swap id commits to, and a short deposit or an
        excess debit would be made good from other swaps' funds. Rebasing tokens are not
        supported either (their balance moves under the contract); do not lock them.
        Every entry point checks and writes its slot before any external call, and all of
        them share one reentrancy lock (transient storage), so a callback can enter nothing.
"""

from ethereum.ercs import IERC20

# Logs are anonymous (no event signature topic: 375 gas each) and told apart by their shape;
# topic 0 is always the swap id:
#   lock:   data = the slot, 4 bytes big-endian
#   redeem: data = the preimage, 32 bytes
#   refund: no data


struct LockItem:
    payment_hash: bytes32
    token: address  # empty(address) for ETH
    amount: uint256
    word: uint256  # recipient << 96 | expiry << 32 | slot


struct SwapItem:
    secret: bytes32  # the preimage (redeem) or the payment hash (refund)
    token: address
    amount: uint256
    word: uint256  # sender << 96 | expiry << 32 | slot
    recipient: address


MAX_BATCH: constant(uint256) = 64

# A settled slot below ONE_SHOT. No swap id is FREE (that would take a keccak256 preimage).
FREE: constant(bytes32) = 0x0000000000000000000000000000000000000000000000000000000000000001

# Slots from here up are cleared (zero) on payout instead of being marked FREE.
ONE_SHOT: constant(uint256) = 2**31

EXPIRY_MASK: constant(uint256) = 18446744073709551615  # 2**64 - 1, after >> 32
SLOT_MASK: constant(uint256) = 4294967295  # 2**32 - 1
# sender << 96 | slot: every bit but the expiry's.
KEY_MASK: constant(uint256) = 115792089237316195423570985008687907853269984665561335876943319670323880656895

# slots[sender << 96 | slot]: the id of the swap locked there, FREE once settled, or zero.
slots: public(HashMap[uint256, bytes32])


@internal
def _open(payment_hash: bytes32, token: address, amount: uint256, word: uint256):
    recipient: address = convert(word >> 96, address)
    expiry: uint256 = (word >> 32) & EXPIRY_MASK
    assert amount != 0, "zero amount"
    assert recipient != empty(address), "no recipient"
    assert expiry > block.timestamp, "expiry past"
    key: uint256 = convert(msg.sender, uint256) << 96 | (word & SLOT_MASK)
    held: bytes32 = self.slots[key]
    # A live swap in the slot would lose its record (and its deposit would be stranded).
    assert held == empty(bytes32) or held == FREE, "slot busy"
    swap_id: bytes32 = keccak256(abi_encode(payment_hash, token, msg.sender, recipient, amount, expiry))
    self.slots[key] = swap_id
    raw_log([swap_id], slice(convert(word, bytes32), 28, 4))


@internal
def _pull(token: address, amount: uint256):
    assert token != empty(address), "no token"
    # The balance read also proves the token has code (an account without code returns no
    # data, which fails the read), so the transfer skips its own contract check.
    before: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
    # default_return_value: tokens whose transferFrom returns nothing (e.g. USDT) count as success.
    assert extcall IERC20(token).transferFrom(
        msg.sender, self, amount, default_return_value=True, skip_contract_check=True
    ), "transfer failed"
    # Reject fee-on-transfer tokens (see the contract notice): the deposit must be exact.
    after: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
    assert after == unsafe_add(before, amount), "amount mismatch"


@internal
def _pay(token: address, to: address, amount: uint256):
    if token == empty(address):
        # raw_call forwards all gas, so contract wallets with non-trivial receive hooks work.
        raw_call(to, b"", value=amount)
    else:
        # A token may start charging a fee after the lock (or otherwise take more than `amount`
        # from the payer): that excess would come out of other swaps' funds. Only an exact
        # debit is accepted, so a bad token can stall its own swaps but never drain others.
        before: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
        assert extcall IERC20(token).transfer(
            to, amount, default_return_value=True, skip_contract_check=True
        ), "transfer failed"
        after: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
        assert unsafe_add(after, amount) == before, "payout mismatch"


@internal
def _settle(
    payment_hash: bytes32,
    token: address,
    amount: uint256,
    word: uint256,
    recipient: address,
    strict: bool,
    refund: bool,
) -> bytes32:
    """Settle a live swap (its slot becomes FREE, or zero from ONE_SHOT up) before anything
    is paid; return its id. When it is not live in the slot `word` names: revert if `strict`,
    else return zero (a batch skips it)."""
    sender: address = convert(word >> 96, address)
    expiry: uint256 = (word >> 32) & EXPIRY_MASK
    swap_id: bytes32 = keccak256(abi_encode(payment_hash, token, sender, recipient, amount, expiry))
    key: uint256 = word & KEY_MASK
    if self.slots[key] != swap_id:
        assert not strict, "no swap"
        return empty(bytes32)
    if refund:
        assert block.timestamp >= expiry, "not expired"
    if word & SLOT_MASK < ONE_SHOT:
        self.slots[key] = FREE
    else:
        self.slots[key] = empty(bytes32)
    return swap_id


@internal
def _redeem(
    preimage: bytes32,
    token: address,
    amount: uint256,
    word: uint256,
    recipient: address,
    strict: bool,
):
    swap_id: bytes32 = self._settle(sha256(preimage), token, amount, word, recipient, strict, False)
    if swap_id != empty(bytes32):
        raw_log([swap_id], preimage)
        self._pay(token, recipient, amount)


@internal
def _refund(
    payment_hash: bytes32,
    token: address,
    amount: uint256,
    word: uint256,
    recipient: address,
    strict: bool,
):
    swap_id: bytes32 = self._settle(payment_hash, token, amount, word, recipient, strict, True)
    if swap_id != empty(bytes32):
        raw_log([swap_id], b"")
        self._pay(token, convert(word >> 96, address), amount)


@payable
@external
@nonreentrant
def lock(payment_hash: bytes32, word: uint256):
    """
    @notice Lock msg.value wei under sha256 hash `payment_hash`. `word` packs the recipient, the
            expiry (unix time) and the caller's storage slot (empty, or FREE after an earlier
            swap): recipient << 96 | expiry << 32 | slot.
    """
    self._open(payment_hash, empty(address), msg.value, word)


@external
@nonreentrant
def lock_token(token: address, amount: uint256, payment_hash: bytes32, word: uint256):
    """
    @notice Lock `amount` of ERC-20 `token`, pulled from msg.sender (approve this contract
            first); `word` as in `lock`.
    @dev    The single lock is `_open` then `_pull` written out (an internal call passes its
            arguments through memory: ~230 gas); the mutation tests cover both copies.
    """
    recipient: address = convert(word >> 96, address)
    expiry: uint256 = (word >> 32) & EXPIRY_MASK
    assert amount != 0, "zero amount"
    assert recipient != empty(address), "no recipient"
    assert expiry > block.timestamp, "expiry past"
    key: uint256 = convert(msg.sender, uint256) << 96 | (word & SLOT_MASK)
    held: bytes32 = self.slots[key]
    assert held == empty(bytes32) or held == FREE, "slot busy"
    swap_id: bytes32 = keccak256(abi_encode(payment_hash, token, msg.sender, recipient, amount, expiry))
    self.slots[key] = swap_id
    raw_log([swap_id], slice(convert(word, bytes32), 28, 4))
    # State first, then the token calls: a token that calls back finds the slot already taken;
    # if the pull fails, the whole call reverts with it.
    assert token != empty(address), "no token"
    before: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
    assert extcall IERC20(token).transferFrom(
        msg.sender, self, amount, default_return_value=True, skip_contract_check=True
    ), "transfer failed"
    after: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
    assert after == unsafe_add(before, amount), "amount mismatch"


@external
@nonreentrant
def lock_token_with_permit(
    token: address,
    amount: uint256,
    payment_hash: bytes32,
    word: uint256,
    deadline: uint256,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    """
    @notice Like lock_token, with an EIP-2612 permit for `amount` so no separate approve is needed.
    """
    self._open(payment_hash, token, amount, word)
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


@payable
@external
@nonreentrant
def lock_many(items: DynArray[LockItem, MAX_BATCH]):
    """
    @notice Lock several swaps (ETH and tokens mixed) in one transaction: msg.value must equal
            the sum of the ETH swaps' amounts, and each token swap pulls its own amount.
    """
    eth: uint256 = 0
    for item: LockItem in items:
        self._open(item.payment_hash, item.token, item.amount, item.word)
        if item.token == empty(address):
            eth += item.amount
        else:
            self._pull(item.token, item.amount)
    assert eth == msg.value, "value mismatch"


@external
@nonreentrant
def redeem(
    preimage: bytes32,
    token: address,
    amount: uint256,
    word: uint256,
    recipient: address = msg.sender,
):
    """
    @notice Pay `recipient` the swap whose payment hash is sha256(preimage); `word` packs the
            sender, the expiry and the slot: sender << 96 | expiry << 32 | slot. Anyone may
            call it, also after expiry as long as the swap was not refunded. A recipient
            redeeming its own swap may leave `recipient` out (it is msg.sender then).
    @dev    `_settle`, the log and `_pay` written out (~500 gas less than the internal calls);
            the mutation tests cover both copies.
    """
    sender: address = convert(word >> 96, address)
    expiry: uint256 = (word >> 32) & EXPIRY_MASK
    swap_id: bytes32 = keccak256(
        abi_encode(sha256(preimage), token, sender, recipient, amount, expiry)
    )
    key: uint256 = word & KEY_MASK
    assert self.slots[key] == swap_id, "no swap"
    if word & SLOT_MASK < ONE_SHOT:
        self.slots[key] = FREE
    else:
        self.slots[key] = empty(bytes32)
    raw_log([swap_id], preimage)
    if token == empty(address):
        raw_call(recipient, b"", value=amount)
    else:
        before: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
        assert extcall IERC20(token).transfer(
            recipient, amount, default_return_value=True, skip_contract_check=True
        ), "transfer failed"
        after: uint256 = staticcall IERC20(token).balanceOf(self, skip_contract_check=True)
        assert unsafe_add(after, amount) == before, "payout mismatch"


@external
@nonreentrant
def refund(payment_hash: bytes32, token: address, amount: uint256, word: uint256, recipient: address):
    """
    @notice Return an expired, unredeemed swap to its sender; `word` as in `redeem`. Anyone may
            call it.
    """
    self._refund(payment_hash, token, amount, word, recipient, True)


@external
@nonreentrant
def redeem_many(items: DynArray[SwapItem, MAX_BATCH]):
    """
    @notice Redeem several swaps (`secret` is each one's preimage) in one transaction; anyone
            may call it and each recipient is paid. A swap no longer live (settled meanwhile)
            is skipped, so a batch does not fail because one of its swaps was redeemed first.
    """
    for item: SwapItem in items:
        self._redeem(item.secret, item.token, item.amount, item.word, item.recipient, False)


@external
@nonreentrant
def refund_many(items: DynArray[SwapItem, MAX_BATCH]):
    """
    @notice Refund several expired swaps (`secret` is each one's payment hash) to their senders.
            A swap no longer live is skipped; a live one not yet expired reverts the batch.
    """
    for item: SwapItem in items:
        self._refund(item.secret, item.token, item.amount, item.word, item.recipient, False)
