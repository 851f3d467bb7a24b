"""The embedded EVM served over JSON-RPC: other processes share it through a plain HTTP URL."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request

import pytest
from web3 import Web3

from kofo.errors import TxRejected
from kofo.settlement.chain import HtlcState, HtlcTerms, UnixTime
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.devnet import DevnetServer
from kofo.settlement.chains.ethereum.keys import account_from_seed


@pytest.fixture
def devnet():
    with DevnetServer() as server:
        yield server


def _rpc(url, method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_an_htlc_round_trip_over_json_rpc(devnet):
    w3 = Web3(Web3.HTTPProvider(devnet.url))
    alice, bob = (account_from_seed(os.urandom(32)) for _ in range(2))
    for acct in (alice, bob):
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_transaction(
                {"from": w3.eth.accounts[0], "to": acct.address, "value": 10**18}
            )
        )
    htlc = deploy(w3, "HTLC", alice)
    a, b = EthereumAdapter(w3, alice, htlc), EthereumAdapter(w3, bob, htlc)
    preimage = os.urandom(32)
    terms = HtlcTerms(
        "eth",
        hashlib.sha256(preimage).digest(),
        10**17,
        alice.address,
        bob.address,
        UnixTime(a.expiry_now().value + 3600),
    )
    ref = a.lock(terms)
    b.audit(ref, terms, 1)
    tx = b.prepare_redeem(ref, preimage)
    b.broadcast(tx)
    b.wait(tx.txid)
    status = a.status(ref)
    assert status.state is HtlcState.REDEEMED and status.preimage == preimage

    terms2 = HtlcTerms("eth", terms.payment_hash, 5, alice.address, bob.address, terms.expiry)
    ref2 = a.lock(terms2)
    with pytest.raises(TxRejected):
        a.prepare_refund(ref2)
    _rpc(devnet.url, "evm_increaseTime", [3600])
    tx = a.prepare_refund(ref2)
    a.broadcast(tx)
    a.wait(tx.txid)
    assert b.status(ref2).state is HtlcState.REFUNDED


def test_reverts_come_back_with_the_contracts_reason(devnet):
    w3 = Web3(Web3.HTTPProvider(devnet.url))
    alice = account_from_seed(os.urandom(32))
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": alice.address, "value": 10**18})
    )
    htlc = w3.eth.contract(address=deploy(w3, "HTLC", alice), abi=_htlc_abi())
    with pytest.raises(Exception, match="no swap"):
        htlc.functions.refund(
            b"\x00" * 32, alice.address, alice.address, alice.address, 1, 1
        ).call()


def _htlc_abi():
    from kofo.settlement.chains.ethereum.contract import load_artifact

    return load_artifact("HTLC").abi


def test_malformed_requests_get_json_rpc_errors(devnet):
    req = urllib.request.Request(devnet.url, b"{not json", {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["error"]["code"] == -32700
    assert _rpc(devnet.url, "evm_mine", [0])["error"]["code"] == -32000
    assert _rpc(devnet.url, "no_such_method", [])["error"]["code"] == -32000
