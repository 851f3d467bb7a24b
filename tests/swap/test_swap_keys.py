"""Every swap uses its own keys, and a node finds them again from its seed (issue 16, case 16).

Bitcoin-like legs: a new HTLC key per leg, a new change address per lock, a new address per
claim or refund, all from the node's one seed (``HdWallet``); a node restarted from the seed and
its journal alone (its key index file lost) still claims and refunds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import b2lx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.errors import WalletError
from kofo.settlement.chain import BlockHeight, SignedTx, TxKind, UnixTime
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import EmbeddedBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.tx import build_funding_tx, p2wpkh_script_pubkey
from kofo.settlement.chains.bitcoin.wallet import (
    HTLC,
    LOOKAHEAD,
    RECEIVE,
    HdWallet,
    KeyIndexFile,
)
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg
from kofo.wire.swap import Accept, Propose, open_swap, sign_swap
from tests.swap.btc_helpers import Btc, confirmed_tx
from tests.swap.helpers import ETHER, Evm, Node, drive, link, make_node

ACCEPT_WINDOW = 30
"""Short accept window (devnet seconds), so the refund test mines few blocks."""

BTC_AMOUNT = 1_500_000


class World:
    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.btc = Btc("btc")
        self.evm = Evm()
        self.chains = {"btc": self.btc, "eth": self.evm}
        self.seeds = {name: os.urandom(32) for name in ("alice", "bob")}
        self.keys = {name: Ed25519PrivateKey.generate() for name in ("alice", "bob")}
        self.eth = {name: self.evm.account() for name in ("alice", "bob")}
        for name in ("alice", "bob"):
            funding = HdWallet(self.seeds[name], self.btc.params).identity.script_pubkey
            self.btc.chain.mine(1, funding)
        self.btc.mine(self.btc.params.coinbase_maturity)

    def node(self, name: str) -> Node:
        """``name``'s node, from its seed and journal alone (no key index file)."""
        wallet = HdWallet(self.seeds[name], self.btc.params)
        accounts = {"btc": wallet, "eth": self.eth[name]}
        return make_node(
            name,
            self.tmp_path,
            self.chains,  # type: ignore[arg-type]
            accounts=accounts,  # type: ignore[arg-type]
            key=self.keys[name],
        )

    def legs(self, alice: Node, bob: Node) -> tuple[Leg, Leg]:
        """Alice's BTC for Bob's ETH; each side's keys asked from its own adapter."""
        a, b = alice.engine.adapters, bob.engine.adapters
        give = Leg("btc", BTC_AMOUNT, a["btc"].address(), b["btc"].address(), BlockHeight(0))
        get = Leg("eth", ETHER, b["eth"].address(), a["eth"].address(), UnixTime(0))
        return give, get

    def mine_all(self, _round: int) -> None:
        self.btc.mine(1)  # the EVM mines a block per transaction

    def time_passes(self, _round: int) -> None:
        self.btc.mine(3)
        self.evm.advance(5)


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.btc.close()


def start_swap(alice: Node, bob: Node, give: Leg, get: Leg) -> bytes:
    """Alice proposes, Bob accepts, over signed wire bytes; returns the swap id."""
    terms = alice.engine.propose(
        give, get, participant_node=bob.node_id, accept_window=ACCEPT_WINDOW
    )
    body, sender = open_swap(sign_swap(alice.key, Propose(terms)).to_bytes(), bob.guard)
    reply = bob.engine.handle(body, sender)
    assert isinstance(reply, Accept), reply
    body, sender = open_swap(sign_swap(bob.key, reply).to_bytes(), alice.guard)
    assert alice.engine.handle(body, sender) is None
    return terms.swap_id


def _wallet(node: Node) -> HdWallet:
    adapter = node.engine.adapters["btc"]
    assert isinstance(adapter, BitcoinAdapter)
    return adapter.wallet


def _outputs(tx: CTransaction) -> list[bytes]:
    return [bytes(o.scriptPubKey) for o in tx.vout]


def test_two_swaps_use_different_htlc_keys_change_and_claim_addresses(world):
    alice, bob = world.node("alice"), world.node("bob")
    link(alice, bob)
    swaps = []
    for _ in range(2):
        give, get = world.legs(alice, bob)
        sid = start_swap(alice, bob, give, get)
        assert drive([alice, bob], sid, between=world.mine_all) == {
            "alice": State.REDEEMED,
            "bob": State.REDEEMED,
        }
        swaps.append((give, sid))
    (give1, sid1), (give2, sid2) = swaps
    identity = {_wallet(n).identity.pubkey.hex() for n in (alice, bob)}
    # The HTLC keys: new ones per swap on both sides, none of them the funding key.
    assert give1.sender != give2.sender and give1.recipient != give2.recipient
    assert not {give1.sender, give2.sender, give1.recipient, give2.recipient} & identity
    # Alice's change and Bob's claim destinations: a new address each time.
    lock1, lock2 = (confirmed_tx(alice, "btc", s, TxKind.LOCK) for s in (sid1, sid2))
    claim1, claim2 = (confirmed_tx(bob, "btc", s, TxKind.REDEEM) for s in (sid1, sid2))
    funding = {_wallet(n).identity.script_pubkey for n in (alice, bob)}
    change1, change2 = (set(_outputs(t)) & _wallet(alice).scripts() for t in (lock1, lock2))
    assert change1 and change2 and not change1 & change2 and not (change1 | change2) & funding
    assert _outputs(claim1) != _outputs(claim2)
    assert not (set(_outputs(claim1)) | set(_outputs(claim2))) & funding


def _burn_htlc_keys(node: Node, count: int) -> None:
    """Hand out ``count`` HTLC keys, so the swap's key lies past what a restart derives."""
    for _ in range(count):
        node.engine.adapters["btc"].address()


def test_a_participant_restarted_from_its_seed_alone_still_claims(world):
    alice, bob = world.node("alice"), world.node("bob")
    _burn_htlc_keys(bob, 3 * LOOKAHEAD)
    link(alice, bob)
    give, get = world.legs(alice, bob)
    sid = start_swap(alice, bob, give, get)
    bob.engine.journal.close()
    bob = world.node("bob")  # a new process: the same seed and journal, no key index
    assert not bob.engine.adapters["btc"].owns(give.recipient)  # beyond the lookahead
    link(alice, bob)
    states = drive([alice, bob], sid, between=world.mine_all)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    claim = confirmed_tx(bob, "btc", sid, TxKind.REDEEM)
    assert set(_outputs(claim)) <= _wallet(bob).scripts()


def test_an_initiator_restarted_from_its_seed_alone_still_refunds(world):
    alice, bob = world.node("alice"), world.node("bob")
    _burn_htlc_keys(alice, 3 * LOOKAHEAD)
    link(alice, bob)
    give, get = world.legs(alice, bob)
    sid = start_swap(alice, bob, give, get)  # bob accepts, then is never heard of again
    assert drive([alice], sid, rounds=3, between=world.mine_all)["alice"] is not State.REFUNDED
    assert alice.engine.journal.txs(sid, TxKind.LOCK)
    alice.engine.journal.close()
    alice = world.node("alice")
    assert drive([alice], sid, rounds=60, between=world.time_passes) == {"alice": State.REFUNDED}
    refund = confirmed_tx(alice, "btc", sid, TxKind.REFUND)
    assert set(_outputs(refund)) <= _wallet(alice).scripts()


def test_the_key_index_file_is_written_before_a_key_is_given_and_never_gives_it_twice(
    tmp_path, monkeypatch
):
    seed, params = os.urandom(32), chain_params("btc", "regtest")
    index = KeyIndexFile(tmp_path / "keys-btc.json")
    first = HdWallet(seed, params, index_file=index)
    given = [first.next_key(HTLC).pubkey for _ in range(LOOKAHEAD + 5)]
    restarted = HdWallet(seed, params, index_file=index)
    assert all(restarted.owns_pubkey(p) for p in given)  # derived at start, no search
    assert restarted.next_key(HTLC).pubkey not in given
    assert (tmp_path / "keys-btc.json").stat().st_mode & 0o077 == 0

    def full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WalletError, match="no new key is handed out"):
        restarted.next_key(HTLC)


def test_a_wallet_restored_from_its_seed_finds_funds_past_the_lookahead(world):
    btc = world.btc
    payer = HdWallet(os.urandom(32), btc.params)
    btc.chain.mine(1, payer.identity.script_pubkey)
    btc.mine(btc.params.coinbase_maturity)
    spender = BitcoinAdapter(EmbeddedBackend(btc.chain), payer)
    receiver = HdWallet(world.seeds["bob"], btc.params)
    # Claims and refunds pay a new receiving address each: 2 x LOOKAHEAD of them in a row.
    paid = [receiver.next_key(RECEIVE).script_pubkey for _ in range(2 * LOOKAHEAD)]
    tx = build_funding_tx(
        spender.spendable(),
        payer.key_for_script,
        [(spk, 10_000) for spk in paid],
        payer.identity.script_pubkey,
        None,
        btc.params,
    )
    spender.broadcast(SignedTx("btc", TxKind.TRANSFER, b2lx(tx.GetTxid()), tx.serialize()))
    btc.mine(1)
    restored = BitcoinAdapter(EmbeddedBackend(btc.chain), HdWallet(world.seeds["bob"], btc.params))
    funding = p2wpkh_script_pubkey(restored.wallet.identity.pubkey)
    found = {u.script_pubkey for u in restored.spendable()}
    assert found - {funding} == set(paid)
