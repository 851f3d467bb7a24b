"""Mutation checks of contracts/HTLC.vy: each mutant removes or bends one safety rule of v2 (a
slot check, the FREE marker, an exact-balance check, a batch rule, the hash function), and a
scenario that passes on the real contract must fail on it. A mutant that survives means the
rule is not tested."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import TransactionFailed
from web3 import EthereumTesterProvider, Web3

from kofo.settlement.chains.ethereum.contract import CONTRACTS_DIR, load_artifact

vyper = pytest.importorskip("vyper")

ZERO = "0x" + "00" * 20
ONE_SHOT = 2**31
SOURCE = (CONTRACTS_DIR / "HTLC.vy").read_text()


class World:
    def __init__(self, source: str) -> None:
        self.w3 = Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend())))
        self.deployer, self.alice, self.bob, self.carol = self.w3.eth.accounts[:4]
        out = vyper.compile_code(source, output_formats=["abi", "bytecode"])
        self.htlc = self._deploy(out["abi"], out["bytecode"])
        self.n = 0

    def _deploy(self, abi: Any, bytecode: Any, *args: Any) -> Any:
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        tx = factory.constructor(*args).transact({"from": self.deployer})
        address = self.w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
        return self.w3.eth.contract(address=address, abi=abi)

    def token(self, name: str, *args: Any) -> Any:
        art = load_artifact(name)
        return self._deploy(art.abi, "0x" + art.bytecode.hex(), *args)

    def ok(self, call: Any, tx: dict[str, Any]) -> bool:
        try:
            call.transact(tx)
        except TransactionFailed:
            return False
        return True

    def terms(self, sender: str, slot: int, token: str = ZERO, amount: int = 1000) -> dict:
        self.n += 1
        preimage = hashlib.sha256(b"mutant %d" % self.n).digest()
        expiry = int(self.w3.eth.get_block("latest")["timestamp"]) + 100
        return {
            "preimage": preimage,
            "hash": hashlib.sha256(preimage).digest(),
            "token": token,
            "sender": sender,
            "recipient": self.bob,
            "amount": amount,
            "expiry": expiry,
            "slot": slot,
        }

    @staticmethod
    def lock_word(t: dict) -> int:
        return int(t["recipient"], 16) << 96 | t["expiry"] << 32 | t["slot"]

    @staticmethod
    def args(t: dict, secret: bytes) -> tuple:
        word = int(t["sender"], 16) << 96 | t["expiry"] << 32 | t["slot"]
        return (secret, t["token"], t["amount"], word, t["recipient"])

    def lock(self, t: dict) -> bool:
        if t["token"] == ZERO:
            call = self.htlc.functions.lock(t["hash"], self.lock_word(t))
            return self.ok(call, {"from": t["sender"], "value": t["amount"]})
        call = self.htlc.functions.lock_token(t["token"], t["amount"], t["hash"], self.lock_word(t))
        return self.ok(call, {"from": t["sender"]})

    def redeem(self, t: dict, secret: bytes | None = None) -> bool:
        args = self.args(t, t["preimage"] if secret is None else secret)
        return self.ok(self.htlc.functions.redeem(*args), {"from": self.carol})

    def refund(self, t: dict) -> bool:
        return self.ok(self.htlc.functions.refund(*self.args(t, t["hash"])), {"from": self.carol})

    def word(self, sender: str, slot: int) -> bytes:
        return bytes(self.htlc.functions.slots(int(sender, 16) << 96 | slot).call())


def funded_token(w: World, name: str = "TestToken", *args: Any) -> Any:
    """A token held by alice and carol, each of whom approved the HTLC."""
    token = w.token(name, *args)
    for who in (w.alice, w.carol):
        token.functions.mint(who, 10**9).transact({"from": who})
        token.functions.approve(w.htlc.address, 10**9).transact({"from": who})
    return token


def plain_token(w: World) -> Any:
    return funded_token(w, "TestToken", "T", "T", 6)


def redeem_many(w: World, *terms: dict) -> bool:
    rows = [w.args(t, t["preimage"]) for t in terms]
    return w.ok(w.htlc.functions.redeem_many(rows), {"from": w.carol})


def busy_slot_refused(w: World) -> bool:
    first = w.terms(w.alice, 0)
    return w.lock(first) and not w.lock(w.terms(w.alice, 0)) and w.redeem(first)


def busy_token_slot_refused(w: World) -> bool:
    token = plain_token(w).address
    first = w.terms(w.alice, 0, token)
    return w.lock(first) and not w.lock(w.terms(w.alice, 0, token)) and w.redeem(first)


def paid_once(w: World) -> bool:
    w.lock(w.terms(w.alice, 1))  # other funds the second payout could take
    t = w.terms(w.alice, 0)
    return w.lock(t) and w.redeem(t) and not w.redeem(t) and not w.refund(t)


def paid_once_in_a_batch(w: World) -> bool:
    w.lock(w.terms(w.alice, 1))
    t = w.terms(w.alice, 0)
    return w.lock(t) and redeem_many(w, t) and not w.redeem(t)


def kept_slot_is_free_one_shot_is_cleared(w: World) -> bool:
    kept, once = w.terms(w.alice, 2), w.terms(w.alice, ONE_SHOT)
    w.lock(kept), w.lock(once), w.redeem(kept), w.redeem(once)
    return w.word(w.alice, 2) == (1).to_bytes(32, "big") and w.word(w.alice, ONE_SHOT) == bytes(32)


def kept_slot_is_free_one_shot_is_cleared_in_a_batch(w: World) -> bool:
    kept, once = w.terms(w.alice, 2), w.terms(w.alice, ONE_SHOT)
    w.lock(kept), w.lock(once), redeem_many(w, kept, once)
    return w.word(w.alice, 2) == (1).to_bytes(32, "big") and w.word(w.alice, ONE_SHOT) == bytes(32)


def no_refund_before_expiry(w: World) -> bool:
    t = w.terms(w.alice, 0)
    return w.lock(t) and not w.refund(t) and w.redeem(t)


def slots_are_per_sender(w: World) -> bool:
    return w.lock(w.terms(w.alice, 0)) and w.lock(w.terms(w.carol, 0))


def token_slots_are_per_sender(w: World) -> bool:
    token = plain_token(w).address
    return w.lock(w.terms(w.alice, 0, token)) and w.lock(w.terms(w.carol, 0, token))


def sha256_not_keccak(w: World) -> bool:
    t = w.terms(w.alice, 0)
    t["hash"] = Web3.keccak(t["preimage"])
    return w.lock(t) and not w.redeem(t)


def sha256_not_keccak_in_a_batch(w: World) -> bool:
    t = w.terms(w.alice, 0)
    t["hash"] = Web3.keccak(t["preimage"])
    # A batch skips a swap that is not live for the preimage given: the swap must stay live.
    return w.lock(t) and redeem_many(w, t) and w.word(w.alice, 0) != (1).to_bytes(32, "big")


def redeem_pays_the_recipient(w: World) -> bool:
    t = w.terms(w.alice, 0)
    before = w.w3.eth.get_balance(w.bob)
    w.lock(t)
    return redeem_many(w, t) and w.w3.eth.get_balance(w.bob) == before + t["amount"]


def single_redeem_pays_the_recipient(w: World) -> bool:
    t = w.terms(w.alice, 0)
    before = w.w3.eth.get_balance(w.bob)
    return w.lock(t) and w.redeem(t) and w.w3.eth.get_balance(w.bob) == before + t["amount"]


def single_token_redeem_pays_the_recipient(w: World) -> bool:
    token = plain_token(w)
    t = w.terms(w.alice, 0, token.address)
    before = token.functions.balanceOf(w.bob).call()
    ok = w.lock(t) and w.redeem(t)
    return ok and token.functions.balanceOf(w.bob).call() == before + t["amount"]


def recipient_redeems_without_naming_itself(w: World) -> bool:
    t = w.terms(w.alice, 0)
    before = w.w3.eth.get_balance(w.bob)
    w.lock(t)
    call = w.htlc.functions.redeem(*w.args(t, t["preimage"])[:4])
    try:
        receipt = w.w3.eth.wait_for_transaction_receipt(call.transact({"from": w.bob}))
    except TransactionFailed:
        return False
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    return w.w3.eth.get_balance(w.bob) == before + t["amount"] - fee


def lock_many_takes_exact_value(w: World) -> bool:
    t = w.terms(w.alice, 0)
    row = [(t["hash"], ZERO, t["amount"], w.lock_word(t))]
    many = w.htlc.functions.lock_many(row)
    return not w.ok(many, {"from": w.alice, "value": t["amount"] + 1}) and w.ok(
        many, {"from": w.alice, "value": t["amount"]}
    )


def fee_on_transfer_refused(w: World) -> bool:
    token = funded_token(w, "FeeToken")
    return not w.lock(w.terms(w.alice, 0, token.address))


def fee_on_transfer_refused_in_a_batch(w: World) -> bool:
    token = funded_token(w, "FeeToken")
    t = w.terms(w.alice, 0, token.address)
    row = [(t["hash"], t["token"], t["amount"], w.lock_word(t))]
    return not w.ok(w.htlc.functions.lock_many(row), {"from": w.alice})


def payout_debits_exactly(w: World) -> bool:
    token = funded_token(w, "FeeOnTopToken")
    mine, other = w.terms(w.alice, 0, token.address), w.terms(w.alice, 1, token.address)
    w.lock(mine), w.lock(other)
    token.functions.set_fee(300).transact({"from": w.carol})
    return not w.redeem(mine)


def payout_debits_exactly_in_a_batch(w: World) -> bool:
    token = funded_token(w, "FeeOnTopToken")
    mine, other = w.terms(w.alice, 0, token.address), w.terms(w.alice, 1, token.address)
    w.lock(mine), w.lock(other)
    token.functions.set_fee(300).transact({"from": w.carol})
    return not redeem_many(w, mine)


# (name, the source text mutated, its replacement, which occurrence (0: the first in the
# source), scenario). A rule written twice (in an internal function, for the batches and the
# ETH lock, and written out in the single token lock or the single redeem) has a mutant for
# each copy, and each copy's scenario goes through that copy.
MUTANTS: list[tuple[str, str, str, int, Callable[[World], bool]]] = [
    (
        "no slot busy check (_open)",
        'assert held == empty(bytes32) or held == FREE, "slot busy"',
        "pass",
        0,
        busy_slot_refused,
    ),
    (
        "no slot busy check (lock_token)",
        'assert held == empty(bytes32) or held == FREE, "slot busy"',
        "pass",
        1,
        busy_token_slot_refused,
    ),
    (
        "payout keeps the id (_settle)",
        "self.slots[key] = FREE",
        "self.slots[key] = swap_id",
        0,
        paid_once_in_a_batch,
    ),
    (
        "payout keeps the id (redeem)",
        "self.slots[key] = FREE",
        "self.slots[key] = swap_id",
        1,
        paid_once,
    ),
    (
        "one-shot test inverted (_settle)",
        "if word & SLOT_MASK < ONE_SHOT:",
        "if word & SLOT_MASK >= ONE_SHOT:",
        0,
        kept_slot_is_free_one_shot_is_cleared_in_a_batch,
    ),
    (
        "one-shot test inverted (redeem)",
        "if word & SLOT_MASK < ONE_SHOT:",
        "if word & SLOT_MASK >= ONE_SHOT:",
        1,
        kept_slot_is_free_one_shot_is_cleared,
    ),
    (
        "refund ignores expiry",
        'assert block.timestamp >= expiry, "not expired"',
        "pass",
        0,
        no_refund_before_expiry,
    ),
    (
        "slots keyed by the word's party, not msg.sender (_open)",
        "key: uint256 = convert(msg.sender, uint256) << 96 | (word & SLOT_MASK)",
        "key: uint256 = word & SLOT_MASK",
        0,
        slots_are_per_sender,
    ),
    (
        "slots keyed by the word's party, not msg.sender (lock_token)",
        "key: uint256 = convert(msg.sender, uint256) << 96 | (word & SLOT_MASK)",
        "key: uint256 = word & SLOT_MASK",
        1,
        token_slots_are_per_sender,
    ),
    (
        "keccak hash lock (_redeem)",
        "self._settle(sha256(preimage)",
        "self._settle(keccak256(preimage)",
        0,
        sha256_not_keccak_in_a_batch,
    ),
    (
        "keccak hash lock (redeem)",
        "abi_encode(sha256(preimage), token",
        "abi_encode(keccak256(preimage), token",
        0,
        sha256_not_keccak,
    ),
    (
        "redeem pays the sender (_redeem)",
        "self._pay(token, recipient, amount)\n\n\n@internal\ndef _refund(",
        "self._pay(token, convert(word >> 96, address), amount)\n\n\n@internal\ndef _refund(",
        0,
        redeem_pays_the_recipient,
    ),
    (
        "redeem pays the sender ETH (redeem)",
        'raw_call(recipient, b"", value=amount)',
        'raw_call(sender, b"", value=amount)',
        0,
        single_redeem_pays_the_recipient,
    ),
    (
        "redeem pays the sender tokens (redeem)",
        "recipient, amount, default_return_value=True",
        "sender, amount, default_return_value=True",
        0,
        single_token_redeem_pays_the_recipient,
    ),
    (
        "the default recipient is not the caller",
        "recipient: address = msg.sender,",
        "recipient: address = block.coinbase,",
        0,
        recipient_redeems_without_naming_itself,
    ),
    (
        "lock_many keeps surplus ETH",
        'assert eth == msg.value, "value mismatch"',
        "pass",
        0,
        lock_many_takes_exact_value,
    ),
    (
        "no exact deposit check (_pull)",
        'assert after == unsafe_add(before, amount), "amount mismatch"',
        "pass",
        0,
        fee_on_transfer_refused_in_a_batch,
    ),
    (
        "no exact deposit check (lock_token)",
        'assert after == unsafe_add(before, amount), "amount mismatch"',
        "pass",
        1,
        fee_on_transfer_refused,
    ),
    (
        "no exact payout check (_pay)",
        'assert unsafe_add(after, amount) == before, "payout mismatch"',
        "pass",
        0,
        payout_debits_exactly_in_a_batch,
    ),
    (
        "no exact payout check (redeem)",
        'assert unsafe_add(after, amount) == before, "payout mismatch"',
        "pass",
        1,
        payout_debits_exactly,
    ),
]


def mutate(source: str, original: str, mutated: str, occurrence: int) -> str:
    parts = source.split(original)
    assert len(parts) > occurrence + 1, f"{original!r} has no occurrence {occurrence}"
    head = original.join(parts[: occurrence + 1])
    return head + mutated + original.join(parts[occurrence + 1 :])


def test_every_copy_of_a_mutated_rule_has_its_mutant():
    covered: dict[str, set[int]] = {}
    for _, original, _, occurrence, _ in MUTANTS:
        covered.setdefault(original, set()).add(occurrence)
    for original, occurrences in covered.items():
        assert occurrences == set(range(SOURCE.count(original))), original


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "original", "mutated", "occurrence", "scenario"),
    MUTANTS,
    ids=[m[0] for m in MUTANTS],
)
def test_each_mutant_is_caught_and_the_contract_passes(
    name, original, mutated, occurrence, scenario
):
    assert scenario(World(SOURCE)), f"{scenario.__name__} fails on the real contract"
    mutant = mutate(SOURCE, original, mutated, occurrence)
    assert not scenario(World(mutant)), f"mutant {name!r} survived"


def test_the_mutated_source_is_the_committed_one():
    # The mutants are made from the source the committed artifact was compiled from.
    assert hashlib.sha256(SOURCE.encode()).hexdigest() == load_artifact("HTLC").source_sha256
    assert os.path.exists(CONTRACTS_DIR / "HTLC.vy")
