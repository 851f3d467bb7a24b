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
        htlc.functions.refund(b"\x00" * 32, alice.address, 1, 1, alice.address).call()


def _htlc_abi():
    from kofo.settlement.chains.ethereum.contract import load_artifact

    return load_artifact("HTLC").abi


def test_malformed_requests_get_json_rpc_errors(devnet):
    req = urllib.request.Request(devnet.url, b"{not json", {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["error"]["code"] == -32700
    assert _rpc(devnet.url, "evm_mine", [0])["error"]["code"] == -32602
    assert _rpc(devnet.url, "no_such_method", [])["error"] == {
        "code": -32601,
        "message": "the method no_such_method does not exist/is not available",
    }


def test_refusals_are_geth_s_typed_errors_not_python_text(devnet):
    """Clients classify errors by geth's code and wording (ethers: NONCE_EXPIRED,
    INSUFFICIENT_FUNDS, UNSUPPORTED_OPERATION); no Python exception name or repr leaks."""
    w3 = Web3(Web3.HTTPProvider(devnet.url))
    payer = w3.eth.accounts[0]
    poor = account_from_seed(os.urandom(32))
    errors = {
        "unknown": _rpc(devnet.url, "eth_noSuchMethod", [])["error"],
        "bad_address": _rpc(devnet.url, "eth_getBalance", ["0x1234", "latest"])["error"],
        "poor": _rpc(
            devnet.url,
            "eth_estimateGas",
            [{"from": poor.address, "to": payer, "value": hex(10**18)}],
        )["error"],
    }
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": payer, "to": poor.address, "value": 10**18})
    )

    def signed(value: int) -> str:
        tx = {"to": payer, "value": value, "gas": 21_000, "gasPrice": 10**10, "nonce": 0}
        raw = poor.sign_transaction(tx | {"chainId": w3.eth.chain_id}).raw_transaction
        return "0x" + raw.hex()

    assert "result" in _rpc(devnet.url, "eth_sendRawTransaction", [signed(1)])
    errors["nonce"] = _rpc(devnet.url, "eth_sendRawTransaction", [signed(2)])["error"]
    assert errors["unknown"]["code"] == -32601
    assert errors["bad_address"]["code"] == -32602
    assert errors["poor"] == {
        "code": -32000,
        "message": "insufficient funds for gas * price + value",
    }
    assert errors["nonce"]["code"] == -32000
    assert errors["nonce"]["message"] == "nonce too low: next nonce 1, tx nonce 0"
    for error in errors.values():
        assert "Error" not in error["message"] and "b'" not in error["message"], error


def test_geth_attach_s_first_call_and_geth_s_object_shapes(devnet):
    assert _rpc(devnet.url, "rpc_modules", [])["result"]["eth"] == "1.0"
    w3 = Web3(Web3.HTTPProvider(devnet.url))
    alice = account_from_seed(os.urandom(32))
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": alice.address, "value": 10**18})
    )
    address = deploy(w3, "HTLC", alice)
    block = _rpc(devnet.url, "eth_getBlockByNumber", ["latest", True])["result"]
    (creation,) = block["transactions"]
    assert creation["to"] is None  # not "": ethers refuses an empty address
    assert (creation["blockHash"], creation["blockNumber"]) == (block["hash"], block["number"])
    receipt = _rpc(devnet.url, "eth_getTransactionReceipt", [creation["hash"]])["result"]
    assert receipt["to"] is None and "root" not in receipt and len(receipt["logsBloom"]) == 514
    assert receipt["contractAddress"].lower() == address.lower()
    # A log filter with one address (not a list) and by block hash, as ethers sends them.
    by_hash = _rpc(devnet.url, "eth_getLogs", [{"address": address, "blockHash": block["hash"]}])
    assert by_hash["result"] == []
    both = _rpc(devnet.url, "eth_getLogs", [{"blockHash": block["hash"], "fromBlock": "0x0"}])
    assert both["error"]["code"] == -32602


def _post_raw(url, body: bytes):
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_hostile_requests_get_errors_and_the_server_keeps_serving(devnet):
    call = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    too_many = _post_raw(devnet.url, json.dumps([call] * 1001).encode())
    assert too_many["error"] == {"code": -32600, "message": "batch too large"}
    assert len(_post_raw(devnet.url, json.dumps([call] * 1000).encode())) == 1000
    assert _post_raw(devnet.url, b"[]")["error"]["code"] == -32600
    for params in (5, "abc", {"a": 1}):
        reply = _rpc(devnet.url, "eth_getBalance", params)
        assert reply["error"]["code"] == -32602, (params, reply)
    assert _rpc(devnet.url, "evm_setNextBlockTimestamp", [])["error"]["code"] == -32602
    assert _post_raw(devnet.url, b"[" * 100_000)["error"]["code"] == -32700  # too deep
    assert _rpc(devnet.url, "eth_blockNumber", [])["result"].startswith("0x")
