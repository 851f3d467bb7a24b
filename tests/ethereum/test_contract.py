"""HTLC.vy rules, each positive and negative, on the embedded EVM and on geth --dev."""

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

ETHER = 10**18
ZERO_ADDRESS = "0x" + "00" * 20
LONG = 3600
"""Lifetime (s) of swaps that are never refunded in the test."""
SHORT = 10
"""Lifetime (s) of swaps a test refunds: short because geth moves chain time by mining blocks,
long enough that a few transactions after the lock still land before expiry."""


@dataclass(frozen=True)
class Swap:
    preimage: bytes
    payment_hash: bytes
    token: str
    sender: str
    recipient: str
    amount: int
    expiry: int

    @property
    def terms(self) -> tuple[str, str, str, int, int]:
        """The arguments redeem and refund take after the preimage / payment hash."""
        return (self.token, self.sender, self.recipient, self.amount, self.expiry)

    @property
    def swap_id(self) -> bytes:
        return keccak(
            encode(
                ["bytes32", "address", "address", "address", "uint256", "uint256"],
                [self.payment_hash, *self.terms],
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
        )
        receipt = self.chain.send(
            self.htlc.functions.lock(swap.payment_hash, swap.recipient, swap.expiry),
            sender,
            value=amount,
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
        )
        receipt = self.chain.send(
            self.htlc.functions.lock_token(
                token.address, amount, swap.payment_hash, swap.recipient, swap.expiry
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
        return bool(self.htlc.functions.swaps(swap.swap_id).call())


@pytest.fixture
def env(eth_chain) -> Env:
    return Env(eth_chain)


# --- lock (ETH) --------------------------------------------------------------------------------


def test_lock_eth_holds_value_and_emits_all_terms(env):
    swap = env.lock_eth(amount=12345)
    assert env.live(swap)
    assert env.eth(env.htlc.address) == 12345
    (event,) = env.htlc.events.Locked().get_logs(
        from_block=0, argument_filters={"payment_hash": swap.payment_hash}
    )
    assert event.args.swap_id == swap.swap_id
    assert event.args.token == ZERO_ADDRESS
    assert event.args.sender == env.alice.address
    assert event.args.recipient == env.bob.address
    assert (event.args.amount, event.args.expiry) == (12345, swap.expiry)


def test_locked_event_is_filterable_by_recipient(env):
    other = env.chain.new_account(0)
    mine = env.lock_eth(recipient=env.bob.address)
    env.lock_eth(recipient=other.address)
    events = env.htlc.events.Locked().get_logs(
        from_block=0, argument_filters={"recipient": env.bob.address}
    )
    assert [e.args.swap_id for e in events] == [mine.swap_id]


def test_lock_returns_the_swap_id_of_its_terms(env):
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    expiry = env.chain.now() + LONG
    returned = env.htlc.functions.lock(payment_hash, env.bob.address, expiry).call(
        {"from": env.alice.address, "value": 7}
    )
    expected = Swap(
        preimage, payment_hash, ZERO_ADDRESS, env.alice.address, env.bob.address, 7, expiry
    )
    assert returned == expected.swap_id


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


def test_lock_with_terms_of_a_live_swap_is_rejected(env):
    swap = env.lock_eth()
    call = env.htlc.functions.lock(swap.payment_hash, swap.recipient, swap.expiry)
    with env.chain.reverts("exists"):
        env.chain.send(call, env.alice, value=swap.amount)
    assert env.eth(env.htlc.address) == swap.amount


# --- redeem ------------------------------------------------------------------------------------


def test_redeem_pays_recipient_and_publishes_preimage(env):
    swap = env.lock_eth()
    before = env.eth(env.bob.address)
    receipt = env.redeem(swap, by=env.bob)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert env.eth(env.bob.address) == before + swap.amount - fee
    assert env.eth(env.htlc.address) == 0
    assert not env.live(swap)
    (event,) = env.htlc.events.Redeemed().process_receipt(receipt)
    assert (event.args.swap_id, event.args.preimage) == (swap.swap_id, swap.preimage)


def test_redeem_by_anyone_pays_the_recipient_not_the_caller(env):
    swap = env.lock_eth()
    bob_before, carol_before = env.eth(env.bob.address), env.eth(env.carol.address)
    receipt = env.redeem(swap, by=env.carol)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert env.eth(env.bob.address) == bob_before + swap.amount
    assert env.eth(env.carol.address) == carol_before - fee


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
    (event,) = env.htlc.events.Refunded().process_receipt(receipt)
    assert event.args.swap_id == swap.swap_id


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
    call = env.htlc.functions.lock(swap.payment_hash, swap.recipient, swap.expiry)
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
    (event,) = env.htlc.events.Locked().get_logs(
        from_block=0, argument_filters={"swap_id": swap.swap_id}
    )
    assert event.args.token == token.address


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
        ZERO_ADDRESS, 1, os.urandom(32), env.bob.address, env.chain.now() + LONG
    )
    with env.chain.reverts("no token"):
        env.chain.send(call, env.alice)


def test_lock_token_with_an_account_that_is_not_a_token_is_rejected(env):
    call = env.htlc.functions.lock_token(
        env.carol.address, 1, os.urandom(32), env.bob.address, env.chain.now() + LONG
    )
    with env.chain.reverts(None):
        env.chain.send(call, env.alice)


def test_lock_token_refuses_ether(env):
    env.fund_token(env.token, env.alice, 10)
    call = env.htlc.functions.lock_token(
        env.token.address, 10, os.urandom(32), env.bob.address, env.chain.now() + LONG
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
        env.htlc.functions.lock_token(
            token.address, 1000, other.payment_hash, other.recipient, other.expiry
        ),
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
    call = env.htlc.functions.lock_token(
        env.token.address, 1000, eth_swap.payment_hash, eth_swap.recipient, eth_swap.expiry
    )
    env.chain.send(call, env.alice)
    env.redeem(eth_swap)
    token_swap = Swap(**{**eth_swap.__dict__, "token": env.token.address})
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
    )
    call = env.htlc.functions.lock_token_with_permit(
        env.token.address, amount, swap.payment_hash, swap.recipient, swap.expiry, deadline, v, r, s
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
    lock = env.htlc.functions.lock(payment_hash, env.bob.address, expiry)
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
