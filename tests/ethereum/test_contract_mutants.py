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


def busy_slot_refused(w: World) -> bool:
    first = w.terms(w.alice, 0)
    return w.lock(first) and not w.lock(w.terms(w.alice, 0)) and w.redeem(first)


def paid_once(w: World) -> bool:
    w.lock(w.terms(w.alice, 1))  # other funds the second payout could take
    t = w.terms(w.alice, 0)
    return w.lock(t) and w.redeem(t) and not w.redeem(t) and not w.refund(t)


def kept_slot_is_free_one_shot_is_cleared(w: World) -> bool:
    kept, once = w.terms(w.alice, 2), w.terms(w.alice, ONE_SHOT)
    w.lock(kept), w.lock(once), w.redeem(kept), w.redeem(once)
    return w.word(w.alice, 2) == (1).to_bytes(32, "big") and w.word(w.alice, ONE_SHOT) == bytes(32)


def no_refund_before_expiry(w: World) -> bool:
    t = w.terms(w.alice, 0)
    return w.lock(t) and not w.refund(t) and w.redeem(t)


def slots_are_per_sender(w: World) -> bool:
    return w.lock(w.terms(w.alice, 0)) and w.lock(w.terms(w.carol, 0))


def sha256_not_keccak(w: World) -> bool:
    t = w.terms(w.alice, 0)
    t["hash"] = Web3.keccak(t["preimage"])
    return w.lock(t) and not w.redeem(t)


def redeem_pays_the_recipient(w: World) -> bool:
    t = w.terms(w.alice, 0)
    before = w.w3.eth.get_balance(w.bob)
    w.lock(t)
    rows = [w.args(t, t["preimage"])]
    ok = w.ok(w.htlc.functions.redeem_many(rows), {"from": w.carol})
    return ok and w.w3.eth.get_balance(w.bob) == before + t["amount"]


def lock_many_takes_exact_value(w: World) -> bool:
    t = w.terms(w.alice, 0)
    row = [(t["hash"], ZERO, t["amount"], w.lock_word(t))]
    many = w.htlc.functions.lock_many(row)
    return not w.ok(many, {"from": w.alice, "value": t["amount"] + 1}) and w.ok(
        many, {"from": w.alice, "value": t["amount"]}
    )


def fee_on_transfer_refused(w: World) -> bool:
    token = w.token("FeeToken")
    token.functions.mint(w.alice, 10**6).transact({"from": w.alice})
    token.functions.approve(w.htlc.address, 10**6).transact({"from": w.alice})
    return not w.lock(w.terms(w.alice, 0, token.address))


def payout_debits_exactly(w: World) -> bool:
    token = w.token("FeeOnTopToken")
    token.functions.mint(w.alice, 10**6).transact({"from": w.alice})
    token.functions.approve(w.htlc.address, 10**6).transact({"from": w.alice})
    mine, other = w.terms(w.alice, 0, token.address), w.terms(w.alice, 1, token.address)
    w.lock(mine), w.lock(other)
    token.functions.set_fee(300).transact({"from": w.carol})
    return not w.redeem(mine)


MUTANTS: list[tuple[str, str, str, Callable[[World], bool]]] = [
    (
        "no slot busy check",
        'assert held == empty(bytes32) or held == FREE, "slot busy"',
        "pass",
        busy_slot_refused,
    ),
    ("payout keeps the id", "self.slots[key] = FREE", "self.slots[key] = swap_id", paid_once),
    (
        "one-shot test inverted",
        "if word & SLOT_MASK < ONE_SHOT:",
        "if word & SLOT_MASK >= ONE_SHOT:",
        kept_slot_is_free_one_shot_is_cleared,
    ),
    (
        "refund ignores expiry",
        'assert block.timestamp >= expiry, "not expired"',
        "pass",
        no_refund_before_expiry,
    ),
    (
        "slots keyed by the word's party, not msg.sender",
        "key: uint256 = convert(msg.sender, uint256) << 96 | (word & SLOT_MASK)",
        "key: uint256 = word & SLOT_MASK",
        slots_are_per_sender,
    ),
    (
        "keccak hash lock",
        "self._settle(sha256(preimage)",
        "self._settle(keccak256(preimage)",
        sha256_not_keccak,
    ),
    (
        "redeem pays the sender",
        "self._pay(token, recipient, amount)\n\n\n@internal\ndef _refund(",
        "self._pay(token, convert(word >> 96, address), amount)\n\n\n@internal\ndef _refund(",
        redeem_pays_the_recipient,
    ),
    (
        "lock_many keeps surplus ETH",
        'assert eth == msg.value, "value mismatch"',
        "pass",
        lock_many_takes_exact_value,
    ),
    (
        "no exact deposit check",
        'assert after == before + amount, "amount mismatch"',
        "pass",
        fee_on_transfer_refused,
    ),
    (
        "no exact payout check",
        'assert after + amount == before, "payout mismatch"',
        "pass",
        payout_debits_exactly,
    ),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "original", "mutated", "scenario"), MUTANTS, ids=[m[0] for m in MUTANTS]
)
def test_each_mutant_is_caught_and_the_contract_passes(name, original, mutated, scenario):
    assert SOURCE.count(original) == 1, f"mutation point of {name!r} not found exactly once"
    assert scenario(World(SOURCE)), f"{scenario.__name__} fails on the real contract"
    assert not scenario(World(SOURCE.replace(original, mutated))), f"mutant {name!r} survived"


def test_the_mutated_source_is_the_committed_one():
    # The mutants are made from the source the committed artifact was compiled from.
    assert hashlib.sha256(SOURCE.encode()).hexdigest() == load_artifact("HTLC").source_sha256
    assert os.path.exists(CONTRACTS_DIR / "HTLC.vy")
