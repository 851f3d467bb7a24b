"""One wallet, several Bitcoin locks in flight: never two transactions spending one coin.

Found in a multi-process run: a taker ran BTC->ETH and BTC->DUSD at once and both locks were
built from the same coin; the second was refused by the chain as a double spend and the trade
could only end at its lock deadline (a maker would be slashed for ``leg_not_locked``). Every
coin the adapter selects is now held from selection (atomically, across threads) until its
spend is buried or abandoned, and the engine holds the coins of every journaled transaction at
start (a lock signed before a crash and never sent). All on the embedded regtest chain.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import pytest
from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import b2lx

from kofo.errors import InsufficientFunds
from kofo.settlement.chain import BlockHeight, HtlcTerms, SignedTx, TxKind, UnixTime
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.engine import CrashHook, SwapEngine
from kofo.settlement.journal import Journal
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg
from kofo.wire.swap import Propose, open_swap, sign_swap
from tests.swap.btc_helpers import Btc, addr
from tests.swap.helpers import ETHER, Evm, link, make_node, start_swap

pytestmark = pytest.mark.timeout(300)

AMOUNT = 1_500_000  # sats


@pytest.fixture
def btc() -> Iterator[Btc]:
    chain = Btc("btc")
    yield chain
    chain.close()


def _terms(adapter: BitcoinAdapter, amount: int = AMOUNT) -> HtlcTerms:
    preimage = os.urandom(32)
    return HtlcTerms(
        chain=adapter.chain,
        payment_hash=hashlib.sha256(preimage).digest(),
        amount=amount,
        sender=adapter.address(),
        recipient=HdWallet(os.urandom(32), adapter.params).identity.pubkey.hex(),
        expiry=BlockHeight(adapter.expiry_now().value + 50),
    )


def _inputs(tx: SignedTx) -> set[tuple[str, int]]:
    return {(b2lx(i.prevout.hash), i.prevout.n) for i in CTransaction.deserialize(tx.raw).vin}


def _concurrently(adapter: BitcoinAdapter, count: int) -> list[list[SignedTx] | Exception]:
    """``count`` threads prepare a lock each at the same moment (a barrier releases them)."""
    barrier = threading.Barrier(count)
    results: list[list[SignedTx] | Exception] = [ValueError("not run")] * count
    terms = [_terms(adapter) for _ in range(count)]

    def work(i: int) -> None:
        ensure_thread_params()
        barrier.wait(timeout=30)
        try:
            results[i] = list(adapter.prepare_lock(terms[i]))
        except Exception as exc:  # kept and asserted on below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_locks_prepared_at_once_by_one_wallet_spend_different_coins_and_all_mine(btc):
    adapter = btc.adapter(btc.account(coins=3))
    results = _concurrently(adapter, 2)
    locks = [r[0] for r in results if isinstance(r, list)]
    assert len(locks) == 2, results
    assert not _inputs(locks[0]) & _inputs(locks[1]), "two locks spend one coin"
    for lock in locks:  # the second used to be refused here as a double spend
        adapter.broadcast(lock)
    btc.mine(1)
    assert all(adapter.tx_confirmations(lock.txid) == 1 for lock in locks)


def test_one_coin_two_locks_at_once_one_is_refused_then_signed_from_the_change(btc):
    adapter = btc.adapter(btc.account(coins=1))
    results = _concurrently(adapter, 2)
    locks = [r for r in results if isinstance(r, list)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(locks) == 1 and len(refused) == 1, results
    assert isinstance(refused[0], InsufficientFunds)
    assert refused[0].code == "insufficient_funds"
    assert "held by 1 transaction(s) this wallet signed" in str(refused[0])
    # Until the first lock confirms its change is no coin to spend: still refused, never a
    # second transaction spending the one coin.
    with pytest.raises(InsufficientFunds):
        adapter.prepare_lock(_terms(adapter))
    adapter.broadcast(locks[0][0])
    btc.mine(1)
    second = adapter.prepare_lock(_terms(adapter))[0]
    assert not _inputs(second) & _inputs(locks[0][0])
    adapter.broadcast(second)
    btc.mine(1)
    assert adapter.tx_confirmations(second.txid) == 1


def test_a_released_lock_gives_its_coin_back(btc):
    adapter = btc.adapter(btc.account(coins=1))
    first = adapter.prepare_lock(_terms(adapter))
    assert adapter.spendable() == []
    adapter.release(first)  # never to be sent (its swap aborted)
    again = adapter.prepare_lock(_terms(adapter))
    assert _inputs(again[0]) == _inputs(first[0])


class _StopAt(CrashHook):
    """Stops the step at ``point`` (an exception the engine logs) instead of killing."""

    def hit(self, point: str) -> None:
        if point == self.target:
            raise RuntimeError(f"stopped at {point}")


def test_a_lock_signed_before_a_restart_keeps_its_coin_from_a_new_lock(btc, tmp_path):
    evm = Evm()
    wallet = btc.account(coins=2)
    alice = make_node(
        "alice",
        tmp_path,
        {"btc": btc, "eth": evm},  # type: ignore[dict-item]
        accounts={"btc": wallet, "eth": evm.account()},  # type: ignore[dict-item]
        crash=_StopAt("stored:lock"),
    )
    bob = make_node("bob", tmp_path, {"btc": btc, "eth": evm})  # type: ignore[dict-item]
    link(alice, bob)
    give = Leg("btc", AMOUNT, addr(alice, "btc"), addr(bob, "btc"), BlockHeight(0))
    get = Leg("eth", ETHER, addr(bob, "eth"), addr(alice, "eth"), UnixTime(0))
    sid = start_swap(alice, bob, give, get)
    for _ in range(5):
        alice.engine.tick()
        if alice.engine.journal.txs(sid, TxKind.LOCK):
            break
    signed = alice.engine.journal.txs(sid, TxKind.LOCK)
    assert len(signed) == 1  # journaled, never broadcast (the step stopped before it)
    assert alice.engine.adapters["btc"].tx_confirmations(signed[0].txid) == 0

    # The node restarts: a new engine and adapter over the same journal and wallet.
    adapter = btc.adapter(wallet)
    engine = SwapEngine(
        Journal(tmp_path / "alice.sqlite"),
        {"btc": adapter, "eth": evm.adapter(alice.accounts["eth"])},
        {"btc": btc.policy(), "eth": evm.policy()},
        alice.key,
    )
    other = adapter.prepare_lock(_terms(adapter))[0]  # another trade's lock, before resume
    assert not _inputs(other) & _inputs(signed[0]), "the new lock reuses the journaled coin"
    adapter.broadcast(other)
    engine.resume()
    for _ in range(3):  # the swap goes on: the journaled lock (not a new one) is sent
        engine.tick()
    btc.mine(1)
    assert adapter.tx_confirmations(signed[0].txid) == 1
    assert adapter.tx_confirmations(other.txid) == 1
    assert engine.journal.get(sid).state is State.LOCK_SENT


def test_a_swap_whose_lock_never_got_out_gives_the_coin_back_and_ends_once_it_is_spent(
    btc, tmp_path
):
    """Every send of the lock fails, so the swap gives up; but a signed lock may have reached
    a node all the same, so past the leg's expiry the swap keeps watching for it
    (``refund_wait``) with its coin back in the wallet. The wallet's next lock spends that
    coin; once that is buried, the old lock can never be mined and the swap is aborted.
    (The engine's own self-spend that ends such a lock past its expiry is off here, so the
    wallet's next lock is the conflict: ``test_engine_btc.py::test_a_lock_never_mined_...``
    has the self-spend.)"""
    evm = Evm()
    wallet = btc.account(coins=1)
    alice = make_node(
        "alice",
        tmp_path,
        {"btc": btc, "eth": evm},  # type: ignore[dict-item]
        accounts={"btc": wallet, "eth": evm.account()},  # type: ignore[dict-item]
        crash=_StopAt("before_broadcast:lock"),  # every send of the lock fails
    )
    bob = make_node("bob", tmp_path, {"btc": btc, "eth": evm})  # type: ignore[dict-item]
    link(alice, bob)
    give = Leg("btc", AMOUNT, addr(alice, "btc"), addr(bob, "btc"), BlockHeight(0))
    get = Leg("eth", ETHER, addr(bob, "eth"), addr(alice, "eth"), UnixTime(0))
    terms = alice.engine.propose(give, get, participant_node=bob.node_id, accept_window=30)
    body, sender = open_swap(sign_swap(alice.key, Propose(terms)).to_bytes(), bob.guard)
    reply = bob.engine.handle(body, sender)
    assert reply is not None
    body, sender = open_swap(sign_swap(bob.key, reply).to_bytes(), alice.guard)
    assert alice.engine.handle(body, sender) is None
    sid = terms.swap_id
    adapter = alice.engine.adapters["btc"]
    assert isinstance(adapter, BitcoinAdapter)
    adapter.prepare_lock_cancel = lambda *_a, **_k: None  # type: ignore[method-assign]
    alice.engine.tick()
    (lock,) = alice.engine.journal.txs(sid, TxKind.LOCK)
    assert set(adapter.held()) == _inputs(lock)
    expiry = alice.engine.terms_of(sid).initiator_leg.expiry.value
    for _ in range(200):  # bounded: past the lock deadline and the leg's expiry
        if btc.height() > expiry + 3:
            break
        btc.mine(1)
        alice.engine.tick()
    assert btc.height() > expiry + 3
    assert alice.engine.journal.get(sid).state is State.REFUND_WAIT
    assert adapter.held() == {}
    again = adapter.prepare_lock(_terms(adapter))[0]  # the one coin locks something else
    assert _inputs(again) == _inputs(lock)
    adapter.broadcast(again)
    for _ in range(10):  # bounded: the conflict buried at the leg's depth
        if alice.engine.journal.get(sid).state is State.ABORTED:
            break
        btc.mine(1)
        alice.engine.tick()
    assert alice.engine.journal.get(sid).state is State.ABORTED


def test_the_self_spend_ending_a_lock_never_sent_keeps_its_coin_across_a_restart(btc, tmp_path):
    """Past the leg's expiry the engine ends the never-sent lock with a self-spend of its
    coin (journaled before it is sent). The node restarts before that self-spend is out: the
    new engine holds its coin, so no new lock is built from it (the self-spend's re-send would
    replace that lock), then sends it; buried, the swap is ``aborted``."""
    evm = Evm()
    wallet = btc.account(coins=1)
    alice = make_node(
        "alice",
        tmp_path,
        {"btc": btc, "eth": evm},  # type: ignore[dict-item]
        accounts={"btc": wallet, "eth": evm.account()},  # type: ignore[dict-item]
        crash=_StopAt("before_broadcast:lock"),  # every send of the lock fails
    )
    bob = make_node("bob", tmp_path, {"btc": btc, "eth": evm})  # type: ignore[dict-item]
    link(alice, bob)
    give = Leg("btc", AMOUNT, addr(alice, "btc"), addr(bob, "btc"), BlockHeight(0))
    get = Leg("eth", ETHER, addr(bob, "eth"), addr(alice, "eth"), UnixTime(0))
    terms = alice.engine.propose(give, get, participant_node=bob.node_id, accept_window=30)
    body, sender = open_swap(sign_swap(alice.key, Propose(terms)).to_bytes(), bob.guard)
    reply = bob.engine.handle(body, sender)
    assert reply is not None
    body, sender = open_swap(sign_swap(bob.key, reply).to_bytes(), alice.guard)
    assert alice.engine.handle(body, sender) is None
    sid = terms.swap_id
    adapter = alice.engine.adapters["btc"]
    assert isinstance(adapter, BitcoinAdapter)
    adapter.broadcast = lambda tx: tx.txid  # type: ignore[method-assign]  # nothing gets out
    expiry = alice.engine.terms_of(sid).initiator_leg.expiry.value
    for _ in range(200):  # bounded: past the leg's expiry, the self-spend signed
        if alice.engine.journal.notice(sid, "lock_cancel") is not None:
            break
        btc.mine(1)
        alice.engine.tick()
    kept = alice.engine.journal.notice(sid, "lock_cancel")
    assert kept is not None and btc.height() >= expiry
    (lock,) = alice.engine.journal.txs(sid, TxKind.LOCK)
    cancel = SignedTx("btc", TxKind.TRANSFER, kept["txid"], bytes.fromhex(kept["raw"]))
    assert _inputs(cancel) <= _inputs(lock)

    # The node restarts: a new engine and adapter over the same journal and wallet.
    adapter = btc.adapter(wallet)
    engine = SwapEngine(
        Journal(tmp_path / "alice.sqlite"),
        {"btc": adapter, "eth": evm.adapter(alice.accounts["eth"])},
        {"btc": btc.policy(), "eth": evm.policy()},
        alice.key,
    )
    send = adapter.broadcast
    adapter.broadcast = lambda tx: tx.txid  # type: ignore[method-assign]  # still not out
    engine.resume()
    engine.tick()  # the lock's coins go back to the wallet (not unminable yet) but this one
    assert _inputs(cancel) <= set(adapter.held())
    with pytest.raises(InsufficientFunds):  # the one coin is the self-spend's
        adapter.prepare_lock(_terms(adapter))
    adapter.broadcast = send  # type: ignore[method-assign]
    for _ in range(20):  # bounded: re-sent, buried at the leg's depth
        engine.tick()
        if engine.journal.get(sid).state is State.ABORTED:
            break
        btc.mine(1)
    assert engine.journal.get(sid).state is State.ABORTED
    assert adapter.tx_confirmations(cancel.txid) >= 1
