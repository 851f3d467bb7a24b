"""The nonce store: one nonce per signed transaction, across processes and resyncs."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import rlp
from eth_account import Account
from web3 import Web3

from kofo.errors import InsufficientFunds
from kofo.settlement.chain import HtlcTerms, SignedTx, UnixTime
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter, embedded_web3
from kofo.settlement.chains.ethereum.contract import deploy, load_artifact
from kofo.settlement.chains.ethereum.devnet import DevnetServer
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.chains.ethereum.nonces import NonceManager

ETHER = 10**18
PER_PROCESS = 25


def _nonce(tx: SignedTx) -> int:
    # An EIP-1559 transaction is 0x02 || rlp([chain_id, nonce, ...]).
    assert tx.raw[0] == 2
    return int.from_bytes(rlp.decode(tx.raw[1:])[1], "big")


def _fund(w3: Web3, address: str) -> None:
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": ETHER})
    )


def _terms(adapter: EthereumAdapter) -> HtlcTerms:
    return HtlcTerms(
        "eth",
        hashlib.sha256(os.urandom(32)).digest(),
        1000,
        adapter.address(),
        "0x" + "22" * 20,
        UnixTime(adapter.expiry_now().value + 3600),
    )


def _sign_lock_elsewhere(url: str, key: bytes, htlc: str, db: str, out: Any) -> None:
    """In another process: an adapter with the same key and nonce store signs one lock."""
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    adapter = EthereumAdapter(w3, Account.from_key(key), htlc, nonce_db=Path(db))
    (tx,) = adapter.prepare_lock(_terms(adapter))
    out.put((tx.txid, tx.raw))


@pytest.mark.timeout(120)
def test_two_processes_on_one_store_never_sign_the_same_nonce(tmp_path):
    with DevnetServer() as devnet:
        w3 = Web3(Web3.HTTPProvider(devnet.url, request_kwargs={"timeout": 30}))
        key = os.urandom(32)
        account = Account.from_key(key)
        _fund(w3, account.address)
        htlc = deploy(w3, "HTLC", account)
        db = tmp_path / "nonces.sqlite"
        here = EthereumAdapter(w3, account, htlc, nonce_db=db)
        (first,) = here.prepare_lock(_terms(here))
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        child = ctx.Process(target=_sign_lock_elsewhere, args=(devnet.url, key, htlc, str(db), out))
        child.start()
        txid, raw = out.get(timeout=90)
        child.join(timeout=30)
        assert child.exitcode == 0
        theirs = SignedTx("eth", first.kind, txid, raw)
        # This process signs again after the other one did: it must see the other's nonce.
        (third,) = here.prepare_lock(_terms(here))
        txs = [first, theirs, third]
        assert sorted(_nonce(t) for t in txs) == [
            _nonce(first),
            _nonce(first) + 1,
            _nonce(first) + 2,
        ]
        for tx in txs:
            here.broadcast(tx)
        for tx in txs:
            here.wait(tx.txid, timeout=30)


def _allocate_many(db: str, start: Any, out: Any) -> None:
    manager = NonceManager("0xabc", lambda: 0, Path(db))
    start.wait(timeout=60)
    out.put([manager.allocate() for _ in range(PER_PROCESS)])


@pytest.mark.timeout(120)
def test_concurrent_processes_allocate_disjoint_nonces(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    db = str(tmp_path / "nonces.sqlite")
    NonceManager("0xabc", lambda: 0, Path(db))  # create the schema before the race
    procs = [ctx.Process(target=_allocate_many, args=(db, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(got[0] + got[1]) == list(range(2 * PER_PROCESS))


def _adapter_with_store(tmp_path: Path) -> EthereumAdapter:
    w3 = embedded_web3()
    account = account_from_seed(os.urandom(32))
    _fund(w3, account.address)
    return EthereumAdapter(w3, account, deploy(w3, "HTLC", account), nonce_db=tmp_path / "n.db")


def test_resync_keeps_the_nonce_of_a_signed_unsent_transaction(tmp_path):
    adapter = _adapter_with_store(tmp_path)
    (held,) = adapter.prepare_lock(_terms(adapter))  # signed, not broadcast yet
    adapter.nonces.resync()  # the chain's pending count does not know it
    (later,) = adapter.prepare_lock(_terms(adapter))
    assert _nonce(later) == _nonce(held) + 1
    for tx in (held, later):
        adapter.broadcast(tx)
    for tx in (held, later):
        adapter.wait(tx.txid)


def test_a_released_nonce_is_handed_out_again_and_mined_ones_are_forgotten(tmp_path):
    adapter = _adapter_with_store(tmp_path)
    (sent,) = adapter.prepare_lock(_terms(adapter))
    adapter.broadcast(sent)
    adapter.wait(sent.txid)
    (dropped,) = adapter.prepare_lock(_terms(adapter))
    adapter.nonces.release(_nonce(dropped))  # discarded unsent: its nonce may be used again
    (again,) = adapter.prepare_lock(_terms(adapter))
    assert _nonce(again) == _nonce(dropped) == _nonce(sent) + 1
    adapter.broadcast(again)
    adapter.wait(again.txid)
    adapter.nonces.resync()
    assert adapter.nonces.reserved() == []


def test_an_approve_discarded_with_its_lock_leaves_no_nonce_gap(tmp_path, monkeypatch):
    w3 = embedded_web3()
    account = account_from_seed(os.urandom(32))
    _fund(w3, account.address)
    htlc = deploy(w3, "HTLC", account)
    token = deploy(w3, "TestToken", account, "T", "T", 6)
    adapter = EthereumAdapter(w3, account, htlc, nonce_db=tmp_path / "n.db")
    tok = w3.eth.contract(address=token, abi=load_artifact("TestToken").abi)
    w3.eth.wait_for_transaction_receipt(
        tok.functions.mint(account.address, 1000).transact({"from": w3.eth.accounts[0]})
    )
    unused = w3.eth.get_transaction_count(account.address, "pending")
    terms = replace(_terms(adapter), token=token)
    # The approve is signed, then the wallet is found short of the lock's fee (spent meanwhile
    # by another transaction): the approve is discarded with it.
    real_balance = EthereumAdapter.balance
    eth_reads = []

    def spent_after_the_approve(self: Any, token: Any = None, owner: Any = None) -> int:
        if token is None:
            eth_reads.append(1)
            if len(eth_reads) > 1:
                return 0
        return real_balance(self, token, owner)

    monkeypatch.setattr(EthereumAdapter, "balance", spent_after_the_approve)
    with pytest.raises(InsufficientFunds, match="lock needs"):
        adapter.prepare_lock(terms)
    monkeypatch.setattr(EthereumAdapter, "balance", real_balance)
    (tx,) = adapter.prepare_lock(_terms(adapter))
    assert _nonce(tx) == unused  # no gap left behind
    adapter.broadcast(tx)
    adapter.wait(tx.txid)


def test_a_failed_signature_gives_its_nonce_back(tmp_path, monkeypatch):
    adapter = _adapter_with_store(tmp_path)
    unused = adapter.w3.eth.get_transaction_count(adapter.address(), "pending")

    def broken(tx: Any) -> Any:
        raise RuntimeError("signer unavailable")

    real = adapter.account.sign_transaction
    monkeypatch.setattr(adapter.account, "sign_transaction", broken)
    with pytest.raises(RuntimeError, match="signer unavailable"):
        adapter.prepare_lock(_terms(adapter))
    monkeypatch.setattr(adapter.account, "sign_transaction", real)
    (tx,) = adapter.prepare_lock(_terms(adapter))
    assert _nonce(tx) == unused
    adapter.broadcast(tx)
    adapter.wait(tx.txid)


def test_a_store_from_before_raw_transactions_opens_and_keeps_its_reservations(tmp_path):
    import sqlite3

    path = tmp_path / "nonces.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE eth_nonce_signed (address TEXT, nonce INTEGER, PRIMARY KEY (address, nonce))"
    )
    old.execute("INSERT INTO eth_nonce_signed VALUES ('0xa', 4)")
    old.commit()
    old.close()
    store = NonceManager("0xa", lambda: 4, path)
    assert store.reserved() == [4] and store.allocate() == 5
    store.record(5, b"signed five")
    assert store.signed_between(0, 9) == [(5, b"signed five")]  # 4 has no raw transaction
    assert store.signed_between(0, 5) == []
