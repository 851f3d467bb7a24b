"""HTLC.vy rules, each positive and negative, on the embedded EVM and on geth --dev."""

# The contract's log format (anonymous logs told apart by shape) is decoded with the event
# index's own decoder, so these tests also pin what a monitor reads.

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

from kofo.settlement.chains.ethereum.contract import deploy, load_artifact
from kofo.settlement.chains.ethereum.event_index import decode_log

ETHER = 10**18
ZERO_ADDRESS = "0x" + "00" * 20
LONG = 3600
"""Lifetime (s) of swaps that are never refunded in the test."""
SHORT = 10
"""Lifetime (s) of swaps a test refunds: short because geth moves chain time by mining blocks,
long enough that a few transactions after the lock still land before expiry."""
FREE = (1).to_bytes(32, "big")
ONE_SHOT = 2**31


def word(party: str, expiry: int, slot: int) -> int:
    """The contract's packed argument: party << 96 | expiry << 32 | slot."""
    return int(party, 16) << 96 | expiry << 32 | slot


def logs_of(env: Any, receipt: Any) -> list[tuple[bytes, str, int | None, bytes | None]]:
    """The HTLC's logs in ``receipt``, decoded: (swap id, name, slot, preimage)."""
    return [
        decode_log([bytes(t) for t in entry["topics"]], bytes(entry["data"]))
        for entry in receipt["logs"]
        if entry["address"] == env.htlc.address
    ]


@dataclass(frozen=True)
class Swap:
    preimage: bytes
    payment_hash: bytes
    token: str
    sender: str
    recipient: str
    amount: int
    expiry: int
    slot: int = 0

    @property
    def terms(self) -> tuple[str, int, int, str]:
        """The arguments redeem and refund take after the preimage / payment hash."""
        return (self.token, self.amount, word(self.sender, self.expiry, self.slot), self.recipient)

    @property
    def lock_word(self) -> int:
        return word(self.recipient, self.expiry, self.slot)

    @property
    def swap_id(self) -> bytes:
        return keccak(
            encode(
                ["bytes32", "address", "address", "address", "uint256", "uint256"],
                [
                    self.payment_hash,
                    self.token,
                    self.sender,
                    self.recipient,
                    self.amount,
                    self.expiry,
                ],
            )
        )


class Env:
    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self.w3: Web3 = chain.w3
        deployer = chain.new_account(ETHER)
        self.htlc = self.contract("HTLC", deploy(self.w3, "HTLC", deployer))
        self.token = self.contract(
            "TestToken", deploy(self.w3, "TestToken", deployer, "Test", "TST", 18)
        )
        self.nobool = self.contract("NoBoolToken", deploy(self.w3, "NoBoolToken", deployer))
        self.alice = chain.new_account(10 * ETHER)  # sender
        self.bob = chain.new_account(ETHER)  # recipient
        self.carol = chain.new_account(ETHER)  # anyone else: a watchtower, an attacker
        self._slots: dict[str, int] = {}

    def next_slot(self, sender: str) -> int:
        """A slot of ``sender``'s never used before in this test."""
        self._slots[sender] = self._slots.get(sender, -1) + 1
        return self._slots[sender]

    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=address, abi=load_artifact(name).abi)

    def deploy(self, name: str, *args: Any) -> Contract:
        return self.contract(name, deploy(self.w3, name, self.carol, *args))

    def eth(self, who: str) -> int:
        return self.w3.eth.get_balance(who)

    def lock_eth(
        self,
        amount: int = ETHER // 10,
        lifetime: int = LONG,
        sender: LocalAccount | None = None,
        recipient: str | None = None,
        payment_hash: bytes | None = None,
        slot: int | None = None,
    ) -> Swap:
        sender = sender or self.alice
        preimage = os.urandom(32)
        swap = Swap(
            preimage=preimage,
            payment_hash=payment_hash or hashlib.sha256(preimage).digest(),
            token=ZERO_ADDRESS,
            sender=sender.address,
            recipient=recipient or self.bob.address,
            amount=amount,
            expiry=self.chain.now() + lifetime,
            slot=self.next_slot(sender.address) if slot is None else slot,
        )
        receipt = self.chain.send(
            self.htlc.functions.lock(swap.payment_hash, swap.lock_word), sender, value=amount
        )
        assert receipt["status"] == 1
        return swap

    def fund_token(self, token: Contract, owner: LocalAccount, amount: int) -> None:
        self.chain.send(token.functions.mint(owner.address, amount), owner)
        self.chain.send(token.functions.approve(self.htlc.address, amount), owner)

    def lock_token(
        self, token: Contract, amount: int = 1000, lifetime: int = LONG, approve: bool = True
    ) -> Swap:
        if approve:
            self.fund_token(token, self.alice, amount)
        preimage = os.urandom(32)
        swap = Swap(
            preimage,
            hashlib.sha256(preimage).digest(),
            token.address,
            self.alice.address,
            self.bob.address,
            amount,
            self.chain.now() + lifetime,
            self.next_slot(self.alice.address),
        )
        receipt = self.chain.send(
            self.htlc.functions.lock_token(
                token.address, amount, swap.payment_hash, swap.lock_word
            ),
            self.alice,
        )
        assert receipt["status"] == 1
        return swap

    def redeem(self, swap: Swap, by: LocalAccount | None = None, preimage: bytes | None = None):
        call = self.htlc.functions.redeem(preimage or swap.preimage, *swap.terms)
        return self.chain.send(call, by or self.carol)

    def refund(self, swap: Swap, by: LocalAccount | None = None):
        call = self.htlc.functions.refund(swap.payment_hash, *swap.terms)
        return self.chain.send(call, by or self.carol)

    def live(self, swap: Swap) -> bool:
        key = int(swap.sender, 16) << 96 | swap.slot
        return bytes(self.htlc.functions.slots(key).call()) == swap.swap_id


@pytest.fixture
def env(eth_chain) -> Env:
    return Env(eth_chain)


# --- lock (ETH) --------------------------------------------------------------------------------


def test_lock_eth_holds_value_and_logs_its_id_and_slot(env):
    swap = env.lock_eth(amount=12345, slot=7)
    assert env.live(swap)
    assert env.eth(env.htlc.address) == 12345
    raw = env.w3.eth.get_logs({"address": env.htlc.address, "fromBlock": 0})
    (entry,) = raw
    # One topic (the swap id: what a monitor filters on) and the slot as 4 bytes: nothing else.
    assert [bytes(t) for t in entry["topics"]] == [swap.swap_id]
    assert bytes(entry["data"]) == (7).to_bytes(4, "big")
    assert decode_log([swap.swap_id], bytes(entry["data"])) == (swap.swap_id, "Locked", 7, None)


def test_lock_logs_are_filterable_by_swap_id(env):
    other = env.chain.new_account(0)
    mine = env.lock_eth(recipient=env.bob.address)
    env.lock_eth(recipient=other.address)
    events = env.w3.eth.get_logs(
        {"address": env.htlc.address, "fromBlock": 0, "topics": ["0x" + mine.swap_id.hex()]}
    )
    assert [bytes(e["topics"][0]) for e in events] == [mine.swap_id]


def test_a_settled_kept_slot_is_free_and_takes_the_next_lock(env):
    first = env.lock_eth(slot=3)
    env.redeem(first)
    key = int(env.alice.address, 16) << 96 | 3
    assert bytes(env.htlc.functions.slots(key).call()) == FREE
    second = env.lock_eth(slot=3)
    assert env.live(second)
    env.redeem(second)


def test_a_one_shot_slot_is_cleared_on_payout(env):
    swap = env.lock_eth(slot=ONE_SHOT + 5)
    env.redeem(swap)
    key = int(env.alice.address, 16) << 96 | (ONE_SHOT + 5)
    assert bytes(env.htlc.functions.slots(key).call()) == bytes(32)
    assert env.live(env.lock_eth(slot=ONE_SHOT + 5))


def test_slots_are_per_sender(env):
    # Carol's slot 0 is another word than Alice's: she cannot overwrite (or block) Alice's swap.
    alices = env.lock_eth(slot=0)
    carols = env.lock_eth(slot=0, sender=env.carol)
    assert env.live(alices) and env.live(carols)


def test_lock_with_zero_amount_is_rejected(env):
    with env.chain.reverts("zero amount"):
        env.lock_eth(amount=0)


@pytest.mark.parametrize("offset", [0, -1, -1000])
def test_lock_with_expiry_not_in_the_future_is_rejected(env, offset):
    # The next block is stamped after the latest one, so "now" is already in the past.
    with env.chain.reverts("expiry past"):
        env.lock_eth(lifetime=offset)


# Only the embedded chain tells the next block's timestamp in advance.
@pytest.mark.parametrize("eth_chain", ["embedded"], indirect=True)
def test_lock_expiring_in_its_own_block_is_rejected(env):
    pending = env.w3.eth.get_block("pending")["timestamp"]
    with env.chain.reverts("expiry past"):
        env.lock_eth(lifetime=pending - env.chain.now())
    pending = env.w3.eth.get_block("pending")["timestamp"]
    swap = env.lock_eth(lifetime=pending + 1 - env.chain.now())
    assert env.live(swap)


def test_lock_without_recipient_is_rejected(env):
    with env.chain.reverts("no recipient"):
        env.lock_eth(recipient=ZERO_ADDRESS)


def test_lock_into_a_live_slot_is_rejected(env):
    swap = env.lock_eth()
    # The same terms, or any others, in a slot that holds a live swap.
    for payment_hash in (swap.payment_hash, os.urandom(32)):
        call = env.htlc.functions.lock(payment_hash, swap.lock_word)
        with env.chain.reverts("slot busy"):
            env.chain.send(call, env.alice, value=swap.amount)
    assert env.eth(env.htlc.address) == swap.amount
    assert env.live(swap)


# --- redeem ------------------------------------------------------------------------------------


def test_redeem_pays_recipient_and_publishes_preimage(env):
    swap = env.lock_eth()
    before = env.eth(env.bob.address)
    receipt = env.redeem(swap, by=env.bob)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert env.eth(env.bob.address) == before + swap.amount - fee
    assert env.eth(env.htlc.address) == 0
    assert not env.live(swap)
    assert logs_of(env, receipt) == [(swap.swap_id, "Redeemed", None, swap.preimage)]


def test_redeem_by_anyone_pays_the_recipient_not_the_caller(env):
    swap = env.lock_eth()
    bob_before, carol_before = env.eth(env.bob.address), env.eth(env.carol.address)
    receipt = env.redeem(swap, by=env.carol)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert env.eth(env.bob.address) == bob_before + swap.amount
    assert env.eth(env.carol.address) == carol_before - fee


@pytest.mark.parametrize("asset", ["eth", "token"])
def test_the_short_redeem_pays_only_a_recipient_redeeming_its_own_swap(env, asset):
    # redeem(preimage, token, amount, word): the recipient is msg.sender, part of the swap id.
    token = env.deploy("TestToken", "T", "T", 6) if asset == "token" else None
    swap = env.lock_eth() if token is None else env.lock_token(token, amount=500)
    short = env.htlc.functions.redeem(swap.preimage, *swap.terms[:3])
    with env.chain.reverts("no swap"):
        env.chain.send(short, env.carol)  # anyone else misses the slot
    assert env.live(swap)
    receipt = env.chain.send(short, env.bob)
    assert logs_of(env, receipt) == [(swap.swap_id, "Redeemed", None, swap.preimage)]
    assert not env.live(swap)
    if token is not None:
        assert token.functions.balanceOf(env.bob.address).call() == 500


def test_redeem_after_expiry_is_allowed_until_refunded(env):
    swap = env.lock_eth(lifetime=SHORT)
    env.chain.advance_time(SHORT + 1)
    before = env.eth(env.bob.address)
    env.redeem(swap)
    assert env.eth(env.bob.address) == before + swap.amount


def test_redeem_with_wrong_preimage_is_rejected(env):
    swap = env.lock_eth()
    with env.chain.reverts("no swap"):
        env.redeem(swap, preimage=os.urandom(32))
    assert env.live(swap)


def test_redeem_checks_sha256_not_keccak(env):
    preimage = os.urandom(32)
    swap = env.lock_eth(payment_hash=keccak(preimage))
    with env.chain.reverts("no swap"):
        env.redeem(swap, preimage=preimage)


@pytest.mark.parametrize(
    "field,value",
    [
        ("amount", ETHER // 10 + 1),
        ("expiry", 1),
        ("sender", "carol"),
        ("recipient", "carol"),
        ("token", "token"),
    ],
)
def test_redeem_with_any_term_changed_is_rejected(env, field, value):
    swap = env.lock_eth()
    value = {"carol": env.carol.address, "token": env.token.address}.get(value, value)
    forged = Swap(**{**swap.__dict__, field: value})
    with env.chain.reverts("no swap"):
        env.redeem(forged)
    assert env.live(swap)


def test_second_redeem_is_rejected(env):
    swap = env.lock_eth()
    env.lock_eth()  # the contract still holds funds another redeem could take
    env.redeem(swap)
    with env.chain.reverts("no swap"):
        env.redeem(swap)


def test_redeem_after_refund_is_rejected(env):
    swap = env.lock_eth(lifetime=SHORT)
    env.chain.advance_time(SHORT)
    env.refund(swap)
    with env.chain.reverts("no swap"):
        env.redeem(swap)


def test_preimage_of_exactly_32_bytes_is_enforced_by_the_abi(env):
    swap = env.lock_eth()
    call = env.htlc.functions.redeem(swap.preimage, *swap.terms)
    data = bytes.fromhex(call._encode_transaction_data()[2:])
    # Drop the last byte of the 6-word argument block: the call no longer decodes.
    short = data[:-1]
    tx = {"to": env.htlc.address, "data": short, "from": env.carol.address}
    with env.chain.reverts(None):
        env.w3.eth.call(tx)


# --- refund ------------------------------------------------------------------------------------


def test_refund_before_expiry_is_rejected(env):
    swap = env.lock_eth(lifetime=SHORT)
    with env.chain.reverts("not expired"):
        env.refund(swap)
    assert env.live(swap)


def test_refund_at_expiry_by_anyone_pays_the_sender(env):
    swap = env.lock_eth(lifetime=SHORT)
    env.chain.advance_time(SHORT)
    before = env.eth(env.alice.address)
    receipt = env.refund(swap, by=env.carol)
    assert env.eth(env.alice.address) == before + swap.amount
    assert env.eth(env.htlc.address) == 0
    assert not env.live(swap)
    assert logs_of(env, receipt) == [(swap.swap_id, "Refunded", None, None)]


# Only the embedded chain can stamp a block at an exact second.
@pytest.mark.parametrize("eth_chain", ["embedded"], indirect=True)
def test_refund_boundary_is_exactly_the_expiry_timestamp(env):
    swap = env.lock_eth(lifetime=SHORT)
    env.chain.advance_time(swap.expiry - 2 - env.chain.now())
    # The next block is stamped expiry - 1: one second early.
    with env.chain.reverts("not expired"):
        env.refund(swap)
    env.chain.advance_time(1)
    receipt = env.refund(swap)
    assert env.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == swap.expiry
    assert not env.live(swap)


def test_refund_after_redeem_is_rejected(env):
    swap = env.lock_eth(lifetime=SHORT)
    env.redeem(swap)
    env.chain.advance_time(SHORT)
    with env.chain.reverts("no swap"):
        env.refund(swap)


def test_second_refund_is_rejected(env):
    swap = env.lock_eth(lifetime=SHORT)
    env.lock_eth(lifetime=SHORT)
    env.chain.advance_time(SHORT)
    env.refund(swap)
    with env.chain.reverts("no swap"):
        env.refund(swap)


def test_refund_of_unknown_swap_is_rejected(env):
    swap = env.lock_eth(lifetime=SHORT)
    env.chain.advance_time(SHORT)
    forged = Swap(**{**swap.__dict__, "sender": env.carol.address})
    with env.chain.reverts("no swap"):
        env.refund(forged)


def test_same_terms_can_be_locked_again_once_settled(env):
    swap = env.lock_eth()
    env.redeem(swap)
    call = env.htlc.functions.lock(swap.payment_hash, swap.lock_word)
    env.chain.send(call, env.alice, value=swap.amount)
    assert env.live(swap)


# --- ERC-20 ------------------------------------------------------------------------------------


@pytest.fixture(params=["TestToken", "NoBoolToken"])
def token(env, request) -> Contract:
    return env.token if request.param == "TestToken" else env.nobool


def test_lock_token_pulls_exactly_amount(env, token):
    swap = env.lock_token(token, amount=500)
    assert token.functions.balanceOf(env.htlc.address).call() == 500
    assert token.functions.balanceOf(env.alice.address).call() == 0
    # The swap id commits to the token: the same terms with another token are another swap.
    assert env.live(swap)
    assert not env.live(Swap(**{**swap.__dict__, "token": ZERO_ADDRESS}))


def test_redeem_token_pays_recipient(env, token):
    swap = env.lock_token(token, amount=500)
    env.redeem(swap)
    assert token.functions.balanceOf(env.bob.address).call() == 500
    assert token.functions.balanceOf(env.htlc.address).call() == 0
    with env.chain.reverts("no swap"):
        env.redeem(swap)


def test_refund_token_pays_sender(env, token):
    swap = env.lock_token(token, amount=500, lifetime=SHORT)
    with env.chain.reverts("not expired"):
        env.refund(swap)
    env.chain.advance_time(SHORT)
    env.refund(swap)
    assert token.functions.balanceOf(env.alice.address).call() == 500
    assert token.functions.balanceOf(env.htlc.address).call() == 0


def test_lock_token_without_allowance_is_rejected(env, token):
    env.chain.send(token.functions.mint(env.alice.address, 500), env.alice)
    # TestToken reverts on the allowance underflow; either way nothing is locked.
    with env.chain.reverts(None):
        env.lock_token(token, amount=500, approve=False)
    assert token.functions.balanceOf(env.htlc.address).call() == 0


def test_lock_token_with_zero_amount_is_rejected(env):
    with env.chain.reverts("zero amount"):
        env.lock_token(env.token, amount=0)


def test_lock_token_without_token_address_is_rejected(env):
    call = env.htlc.functions.lock_token(
        ZERO_ADDRESS, 1, os.urandom(32), word(env.bob.address, env.chain.now() + LONG, 0)
    )
    with env.chain.reverts("no token"):
        env.chain.send(call, env.alice)


def test_lock_token_with_an_account_that_is_not_a_token_is_rejected(env):
    call = env.htlc.functions.lock_token(
        env.carol.address, 1, os.urandom(32), word(env.bob.address, env.chain.now() + LONG, 0)
    )
    with env.chain.reverts(None):
        env.chain.send(call, env.alice)


def test_lock_token_refuses_ether(env):
    env.fund_token(env.token, env.alice, 10)
    call = env.htlc.functions.lock_token(
        env.token.address, 10, os.urandom(32), word(env.bob.address, env.chain.now() + LONG, 0)
    )
    # Built by hand: web3 itself refuses a value for a non-payable function.
    tx = call.build_transaction({"from": env.alice.address, "gas": 200_000, "value": 0})
    tx["value"] = 1
    tx["nonce"] = env.w3.eth.get_transaction_count(env.alice.address)
    signed = env.alice.sign_transaction(tx)
    receipt = env.w3.eth.wait_for_transaction_receipt(
        env.w3.eth.send_raw_transaction(signed.raw_transaction)
    )
    assert receipt["status"] == 0
    assert env.eth(env.htlc.address) == 0


def test_fee_on_transfer_token_is_rejected(env):
    fee_token = env.deploy("FeeToken")
    env.fund_token(fee_token, env.alice, 1000)
    with env.chain.reverts("amount mismatch"):
        env.lock_token(fee_token, amount=1000, approve=False)
    assert fee_token.functions.balanceOf(env.alice.address).call() == 1000


def test_a_fee_switched_on_after_the_lock_cannot_take_other_swaps_funds(env):
    # Two users' swaps in one token; the token then charges a fee on top of every transfer,
    # which would come out of the HTLC's balance, that is out of the other user's swap.
    token = env.deploy("FeeOnTopToken")
    dave = env.chain.new_account(ETHER)
    mine = env.lock_token(token, amount=1000)
    env.fund_token(token, dave, 1000)
    preimage = os.urandom(32)
    other = Swap(
        preimage,
        hashlib.sha256(preimage).digest(),
        token.address,
        dave.address,
        env.carol.address,
        1000,
        env.chain.now() + LONG,
    )
    env.chain.send(
        env.htlc.functions.lock_token(token.address, 1000, other.payment_hash, other.lock_word),
        dave,
    )
    env.chain.send(token.functions.set_fee(300), env.carol)
    # The payout would take 1,300 from the contract: refused, and the swap stays live.
    receipt = env.chain.send(
        env.htlc.functions.redeem(mine.preimage, *mine.terms), env.carol, gas=300_000
    )
    assert receipt["status"] == 0
    assert env.live(mine) and env.live(other)
    assert token.functions.balanceOf(env.htlc.address).call() == 2000
    # Once the token stops charging, both swaps pay out in full.
    env.chain.send(token.functions.set_fee(0), env.carol)
    env.redeem(mine)
    env.redeem(other)
    assert token.functions.balanceOf(env.bob.address).call() == 1000
    assert token.functions.balanceOf(env.carol.address).call() == 1000
    assert token.functions.balanceOf(env.htlc.address).call() == 0


def test_a_refund_is_refused_too_while_the_token_takes_a_fee_from_the_contract(env):
    token = env.deploy("FeeOnTopToken")
    kept = env.lock_token(token, amount=1000)
    swap = env.lock_token(token, amount=1000, lifetime=SHORT)
    env.chain.send(token.functions.set_fee(1), env.carol)
    env.chain.advance_time(SHORT + 1)
    receipt = env.chain.send(
        env.htlc.functions.refund(swap.payment_hash, *swap.terms), env.carol, gas=300_000
    )
    assert receipt["status"] == 0 and env.live(swap)
    assert token.functions.balanceOf(env.htlc.address).call() == 2000
    env.chain.send(token.functions.set_fee(0), env.carol)
    env.refund(swap)
    env.redeem(kept)
    assert token.functions.balanceOf(env.alice.address).call() == 1000
    assert token.functions.balanceOf(env.bob.address).call() == 1000


def test_token_and_eth_swaps_with_same_hash_are_distinct(env):
    eth_swap = env.lock_eth(amount=1000)
    env.fund_token(env.token, env.alice, 1000)
    token_swap = Swap(**{**eth_swap.__dict__, "token": env.token.address, "slot": 99})
    call = env.htlc.functions.lock_token(
        env.token.address, 1000, eth_swap.payment_hash, token_swap.lock_word
    )
    env.chain.send(call, env.alice)
    env.redeem(eth_swap)
    assert env.live(token_swap)
    assert env.eth(env.htlc.address) == 0
    env.redeem(token_swap)
    assert env.token.functions.balanceOf(env.bob.address).call() == 1000


# --- EIP-2612 permit -----------------------------------------------------------------------------


def _permit(env, owner: LocalAccount, amount: int, deadline: int) -> tuple[int, bytes, bytes]:
    signed = owner.sign_typed_data(
        domain_data={
            "name": "Test",
            "version": "1",
            "chainId": env.w3.eth.chain_id,
            "verifyingContract": env.token.address,
        },
        message_types={
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        },
        message_data={
            "owner": owner.address,
            "spender": env.htlc.address,
            "value": amount,
            "nonce": env.token.functions.nonces(owner.address).call(),
            "deadline": deadline,
        },
    )
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def _lock_with_permit(env, amount: int, v: int, r: bytes, s: bytes, deadline: int) -> Swap:
    preimage = os.urandom(32)
    swap = Swap(
        preimage,
        hashlib.sha256(preimage).digest(),
        env.token.address,
        env.alice.address,
        env.bob.address,
        amount,
        env.chain.now() + LONG,
        env.next_slot(env.alice.address),
    )
    call = env.htlc.functions.lock_token_with_permit(
        env.token.address, amount, swap.payment_hash, swap.lock_word, deadline, v, r, s
    )
    env.chain.send(call, env.alice)
    return swap


def test_lock_token_with_permit_needs_no_approve_transaction(env):
    env.chain.send(env.token.functions.mint(env.alice.address, 300), env.alice)
    deadline = env.chain.now() + LONG
    swap = _lock_with_permit(env, 300, *_permit(env, env.alice, 300, deadline), deadline)
    assert env.live(swap)
    assert env.token.functions.balanceOf(env.htlc.address).call() == 300
    env.redeem(swap)
    assert env.token.functions.balanceOf(env.bob.address).call() == 300


def test_lock_token_with_permit_survives_a_front_run_permit(env):
    env.chain.send(env.token.functions.mint(env.alice.address, 300), env.alice)
    deadline = env.chain.now() + LONG
    v, r, s = _permit(env, env.alice, 300, deadline)
    # Someone copies the permit from the mempool and submits it first.
    env.chain.send(
        env.token.functions.permit(env.alice.address, env.htlc.address, 300, deadline, v, r, s),
        env.carol,
    )
    swap = _lock_with_permit(env, 300, v, r, s, deadline)
    assert env.live(swap)


def test_lock_token_with_invalid_permit_is_rejected(env):
    env.chain.send(env.token.functions.mint(env.alice.address, 300), env.alice)
    deadline = env.chain.now() + LONG
    v, r, s = _permit(env, env.carol, 300, deadline)  # signed by the wrong owner
    with env.chain.reverts(None):  # the token's allowance underflow
        _lock_with_permit(env, 300, v, r, s, deadline)
    assert env.token.functions.balanceOf(env.htlc.address).call() == 0


# --- contract recipients and reentrancy ---------------------------------------------------------


@pytest.fixture
def attacker(env) -> Contract:
    return env.deploy("Reentrant")


def test_redeem_pays_a_contract_recipient(env, attacker):
    swap = env.lock_eth(recipient=attacker.address)
    env.redeem(swap)
    assert env.eth(attacker.address) == swap.amount


def test_redeem_reverts_when_the_recipient_refuses_ether(env, attacker):
    env.chain.send(attacker.functions.set_reject_eth(True), env.carol)
    swap = env.lock_eth(recipient=attacker.address)
    with env.chain.reverts(None):
        env.redeem(swap)
    assert env.live(swap)
    assert env.eth(env.htlc.address) == swap.amount


def _arm(env, attacker: Contract, call: Any) -> None:
    data = bytes.fromhex(call._encode_transaction_data()[2:])
    env.chain.send(attacker.functions.arm(env.htlc.address, data), env.carol)


def test_recipient_reentering_redeem_of_the_same_swap_gets_nothing(env, attacker):
    swap = env.lock_eth(recipient=attacker.address)
    env.lock_eth(recipient=attacker.address, amount=swap.amount + 1)  # funds to steal
    _arm(env, attacker, env.htlc.functions.redeem(swap.preimage, *swap.terms))
    env.redeem(swap)
    assert attacker.functions.reentry_attempts().call() == 1
    assert not attacker.functions.reentry_succeeded().call()
    assert env.eth(attacker.address) == swap.amount


def test_recipient_cannot_reenter_to_settle_another_swap(env, attacker):
    first = env.lock_eth(recipient=attacker.address)
    second = env.lock_eth(recipient=attacker.address)
    _arm(env, attacker, env.htlc.functions.redeem(second.preimage, *second.terms))
    env.redeem(first)
    # The reentrancy lock refused even a redeem that would be valid on its own.
    assert attacker.functions.reentry_attempts().call() == 1
    assert not attacker.functions.reentry_succeeded().call()
    assert env.live(second)
    env.redeem(second)
    assert env.eth(attacker.address) == first.amount + second.amount


def test_sender_reentering_refund_gets_nothing(env, attacker):
    amount = ETHER // 100
    env.chain.transfer(env.alice, attacker.address, 2 * amount)
    expiry = env.chain.now() + SHORT
    payment_hash = os.urandom(32)
    lock = env.htlc.functions.lock(payment_hash, word(env.bob.address, expiry, 0))
    lock_data = bytes.fromhex(lock._encode_transaction_data()[2:])
    env.chain.send(attacker.functions.execute(env.htlc.address, lock_data, amount), env.carol)
    env.lock_eth(amount=amount)  # another swap's funds sit in the contract
    swap = Swap(b"", payment_hash, ZERO_ADDRESS, attacker.address, env.bob.address, amount, expiry)
    assert env.live(swap)
    env.chain.advance_time(SHORT)
    _arm(env, attacker, env.htlc.functions.refund(payment_hash, *swap.terms))
    env.refund(swap)
    assert attacker.functions.reentry_attempts().call() == 1
    assert not attacker.functions.reentry_succeeded().call()
    assert env.eth(attacker.address) == 2 * amount
    assert env.eth(env.htlc.address) == amount


def test_malicious_token_cannot_reenter_during_lock_or_payout(env, attacker):
    victim = env.lock_eth(recipient=env.carol.address)
    env.chain.send(attacker.functions.mint(env.alice.address, 100), env.alice)
    # During transferFrom in lock_token, the token tries to redeem the victim's ETH swap.
    _arm(env, attacker, env.htlc.functions.redeem(victim.preimage, *victim.terms))
    swap = env.lock_token(attacker, amount=100, approve=False)
    assert attacker.functions.reentry_attempts().call() == 1
    assert not attacker.functions.reentry_succeeded().call()
    # During transfer in redeem, it tries again.
    _arm(env, attacker, env.htlc.functions.redeem(victim.preimage, *victim.terms))
    env.redeem(swap)
    assert attacker.functions.reentry_attempts().call() == 2
    assert not attacker.functions.reentry_succeeded().call()
    assert env.live(victim)
    assert env.eth(env.htlc.address) == victim.amount


# --- batches ----------------------------------------------------------------------------------


def _batch_terms(env, n: int, token: str = ZERO_ADDRESS, lifetime: int = LONG) -> list[Swap]:
    recipients = [env.bob.address, env.carol.address]
    out = []
    for i in range(n):
        preimage = os.urandom(32)
        out.append(
            Swap(
                preimage,
                hashlib.sha256(preimage).digest(),
                token,
                env.alice.address,
                recipients[i % 2],
                1000 + i,
                env.chain.now() + lifetime,
                env.next_slot(env.alice.address),
            )
        )
    return out


def _lock_rows(swaps: list[Swap]) -> list[tuple]:
    return [(s.payment_hash, s.token, s.amount, s.lock_word) for s in swaps]


def _spend_rows(swaps: list[Swap], refund: bool = False) -> list[tuple]:
    return [((s.payment_hash if refund else s.preimage), *s.terms) for s in swaps]


def test_lock_many_locks_eth_and_token_swaps_in_one_transaction(env):
    eth = _batch_terms(env, 3)
    tokens = _batch_terms(env, 2, env.token.address)
    env.fund_token(env.token, env.alice, sum(s.amount for s in tokens))
    value = sum(s.amount for s in eth)
    receipt = env.chain.send(
        env.htlc.functions.lock_many(_lock_rows(eth + tokens)), env.alice, value=value
    )
    assert [entry[:3] for entry in logs_of(env, receipt)] == [
        (s.swap_id, "Locked", s.slot) for s in eth + tokens
    ]
    assert all(env.live(s) for s in eth + tokens)
    assert env.eth(env.htlc.address) == value
    assert env.token.functions.balanceOf(env.htlc.address).call() == 2001


@pytest.mark.parametrize("delta", [-1, 1])
def test_lock_many_needs_exactly_the_eth_it_locks(env, delta):
    swaps = _batch_terms(env, 2)
    call = env.htlc.functions.lock_many(_lock_rows(swaps))
    with env.chain.reverts("value mismatch"):
        env.chain.send(call, env.alice, value=sum(s.amount for s in swaps) + delta)
    assert not any(env.live(s) for s in swaps)


def test_lock_many_applies_every_single_lock_rule(env):
    swaps = _batch_terms(env, 2)
    bad = Swap(**{**swaps[1].__dict__, "slot": swaps[0].slot})  # the same slot twice
    call = env.htlc.functions.lock_many(_lock_rows([swaps[0], bad]))
    with env.chain.reverts("slot busy"):
        env.chain.send(call, env.alice, value=swaps[0].amount + bad.amount)
    past = Swap(**{**swaps[1].__dict__, "expiry": env.chain.now() - 1})
    call = env.htlc.functions.lock_many(_lock_rows([swaps[0], past]))
    with env.chain.reverts("expiry past"):
        env.chain.send(call, env.alice, value=swaps[0].amount + past.amount)


def test_redeem_many_by_anyone_pays_each_recipient(env):
    swaps = _batch_terms(env, 4)
    env.chain.send(
        env.htlc.functions.lock_many(_lock_rows(swaps)),
        env.alice,
        value=sum(s.amount for s in swaps),
    )
    dave = env.chain.new_account(ETHER)  # a watchtower: not a party
    bob, carol = env.eth(env.bob.address), env.eth(env.carol.address)
    receipt = env.chain.send(env.htlc.functions.redeem_many(_spend_rows(swaps)), dave)
    assert logs_of(env, receipt) == [(s.swap_id, "Redeemed", None, s.preimage) for s in swaps]
    assert env.eth(env.bob.address) == bob + swaps[0].amount + swaps[2].amount
    assert env.eth(env.carol.address) == carol + swaps[1].amount + swaps[3].amount
    assert env.eth(env.htlc.address) == 0
    assert not any(env.live(s) for s in swaps)


def test_redeem_many_skips_a_swap_settled_meanwhile_and_a_wrong_preimage(env):
    swaps = _batch_terms(env, 3)
    env.chain.send(
        env.htlc.functions.lock_many(_lock_rows(swaps)),
        env.alice,
        value=sum(s.amount for s in swaps),
    )
    env.redeem(swaps[0])  # redeemed on its own first
    wrong = Swap(**{**swaps[1].__dict__, "preimage": os.urandom(32)})
    receipt = env.chain.send(
        env.htlc.functions.redeem_many(_spend_rows([swaps[0], wrong, swaps[2]])), env.carol
    )
    assert logs_of(env, receipt) == [(swaps[2].swap_id, "Redeemed", None, swaps[2].preimage)]
    assert env.live(swaps[1]) and not env.live(swaps[2])
    assert env.eth(env.htlc.address) == swaps[1].amount


def test_refund_many_after_expiry_pays_each_sender(env, eth_chain):
    tokens = _batch_terms(env, 2, env.token.address, lifetime=SHORT)
    env.fund_token(env.token, env.alice, sum(s.amount for s in tokens))
    env.chain.send(env.htlc.functions.lock_many(_lock_rows(tokens)), env.alice)
    call = env.htlc.functions.refund_many(_spend_rows(tokens, refund=True))
    with env.chain.reverts("not expired"):
        env.chain.send(call, env.carol)
    env.chain.advance_time(SHORT)
    receipt = env.chain.send(call, env.carol)
    assert logs_of(env, receipt) == [(s.swap_id, "Refunded", None, None) for s in tokens]
    assert env.token.functions.balanceOf(env.alice.address).call() == 2001
    assert env.token.functions.balanceOf(env.htlc.address).call() == 0
    # Settled: a second batch skips both and moves nothing.
    assert logs_of(env, env.chain.send(call, env.carol)) == []


def test_a_batch_cannot_redeem_another_senders_slot_with_forged_terms(env):
    victim = env.lock_eth(amount=5000)
    forged = Swap(**{**victim.__dict__, "recipient": env.carol.address})
    receipt = env.chain.send(env.htlc.functions.redeem_many(_spend_rows([forged])), env.carol)
    assert logs_of(env, receipt) == []
    assert env.live(victim) and env.eth(env.htlc.address) == 5000
