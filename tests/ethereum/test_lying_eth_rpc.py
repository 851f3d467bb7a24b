"""A lying Ethereum JSON-RPC endpoint in front of the devnet's real one (issue 16, open
suspicions 1 and 2): a node that serves, or says it serves, another chain than the configured
one, and a node that lies about the account's transaction counts.

The liar forwards every call to a real :class:`DevnetServer` (the embedded EVM over HTTP) and
rewrites the answer of the methods it is told to lie about; the adapter talks to it over HTTP,
as to any node.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import rlp
from eth_account import Account
from web3 import Web3

from kofo.errors import ChainError
from kofo.settlement.chain import HtlcState, HtlcTerms, SignedTx, UnixTime
from kofo.settlement.chains.ethereum import nonces
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.devnet import DevnetServer

ETHER = 10**18

Lie = Callable[[list[Any], Any], Any]
"""Given the call's params and the true result, the result to answer with."""


class LyingEthRpc:
    """Answers the methods in ``lies`` with a rewritten result; forwards everything."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.lies: dict[str, Lie] = {}
        liar = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                data = liar.forward(raw)
                request = json.loads(raw)
                lie = liar.lies.get(request.get("method", ""))
                if lie is not None:
                    answer = json.loads(data)
                    if "result" in answer:
                        answer["result"] = lie(request.get("params", []), answer["result"])
                        data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def forward(self, raw: bytes) -> bytes:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            conn.request("POST", "/", body=raw, headers={"Content-Type": "application/json"})
            return conn.getresponse().read()
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def count_lie(tag: str, change: Callable[[int], int]) -> Lie:
    """Lie about eth_getTransactionCount for the block tag ``tag`` ('latest' or 'pending')."""

    def lie(params: list[Any], true: Any) -> Any:
        if len(params) > 1 and params[1] == tag:
            return hex(change(int(true, 16)))
        return true

    return lie


class World:
    def __init__(self, devnet: DevnetServer, liar: LyingEthRpc) -> None:
        self.honest = Web3(Web3.HTTPProvider(devnet.url, request_kwargs={"timeout": 30}))
        self.lying = Web3(Web3.HTTPProvider(liar.url, request_kwargs={"timeout": 30}))
        self.liar = liar
        self.account = Account.create()
        faucet = self.honest.eth.accounts[0]
        self.honest.eth.wait_for_transaction_receipt(
            self.honest.eth.send_transaction(
                {"from": faucet, "to": self.account.address, "value": 10 * ETHER}
            )
        )
        self.htlc = deploy(self.honest, "HTLC", self.account)
        self.chain_id = int(self.honest.eth.chain_id)

    def adapter(self, tmp_path: Any, **kwargs: Any) -> EthereumAdapter:
        return EthereumAdapter(
            self.lying, self.account, self.htlc, nonce_db=tmp_path / "nonces.db", **kwargs
        )

    def terms(self, adapter: EthereumAdapter) -> HtlcTerms:
        return HtlcTerms(
            "eth",
            hashlib.sha256(os.urandom(32)).digest(),
            1000,
            adapter.address(),
            "0x" + "22" * 20,
            UnixTime(adapter.expiry_now().value + 3600),
        )

    def mined_count(self) -> int:
        return int(self.honest.eth.get_transaction_count(self.account.address, "latest"))

    def send_honestly(self, tx: SignedTx) -> None:
        self.honest.eth.wait_for_transaction_receipt(
            self.honest.eth.send_raw_transaction(tx.raw), timeout=30
        )


@pytest.fixture
def world() -> Iterator[World]:
    with DevnetServer() as devnet:
        liar = LyingEthRpc(devnet.url)
        try:
            yield World(devnet, liar)
        finally:
            liar.close()


def _fields(tx: SignedTx) -> list[bytes]:
    assert tx.raw[0] == 2  # EIP-1559: 0x02 || rlp([chain_id, nonce, ...])
    fields: list[bytes] = rlp.decode(tx.raw[1:])
    return fields


def _nonce(tx: SignedTx) -> int:
    return int.from_bytes(_fields(tx)[1], "big")


def _chain_id(tx: SignedTx) -> int:
    return int.from_bytes(_fields(tx)[0], "big")


# -- suspicion 1: the chain id ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_adapter_refuses_a_node_serving_another_chain_than_configured(world, tmp_path):
    with pytest.raises(ChainError) as refused:
        world.adapter(tmp_path, chain_id=world.chain_id + 1)
    assert refused.value.code == "wrong_chain"
    # A node that says it serves the configured chain while it does not (its first answer):
    # the old adapter took the node's word as the chain id and signed for that chain.
    world.liar.lies["eth_chainId"] = lambda _params, _true: hex(1)
    with pytest.raises(ChainError) as lied:
        world.adapter(tmp_path, chain_id=world.chain_id)
    assert lied.value.code == "wrong_chain"


@pytest.mark.timeout(120)
def test_a_node_switching_chains_mid_run_is_refused_and_nothing_is_signed_for_it(world, tmp_path):
    adapter = world.adapter(tmp_path, chain_id=world.chain_id)
    assert adapter.chain_id == world.chain_id
    terms = world.terms(adapter)
    (lock,) = adapter.prepare_lock(terms)
    assert _chain_id(lock) == world.chain_id  # EIP-155: signed for the configured chain
    adapter.broadcast(lock)
    adapter.wait(lock.txid)
    ref = adapter.htlc_ref(terms, lock)
    assert adapter.status(ref).state is HtlcState.LOCKED
    # Now the node (a load balancer's other backend, say) serves chain id 5.
    world.liar.lies["eth_chainId"] = lambda _params, _true: hex(5)
    world.honest.eth.wait_for_transaction_receipt(  # a new head: the index reads again
        world.honest.eth.send_transaction(
            {"from": world.honest.eth.accounts[0], "to": world.account.address, "value": 1}
        )
    )
    with pytest.raises(ChainError) as reading:
        adapter.status(ref)  # old code: answered from whatever chain the node serves
    assert reading.value.code == "wrong_chain"
    with pytest.raises(ChainError) as signing:
        adapter.prepare_lock(world.terms(adapter))
    assert signing.value.code == "wrong_chain"
    del world.liar.lies["eth_chainId"]
    (later,) = adapter.prepare_lock(world.terms(adapter))
    assert _chain_id(later) == world.chain_id


# -- suspicion 2: lying transaction counts ------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_mined_count_lying_high_cannot_make_the_wallet_sign_over_its_own_pending_lock(
    world, tmp_path
):
    adapter = world.adapter(tmp_path)
    (held,) = adapter.prepare_lock(world.terms(adapter))  # signed, still on its way
    n = _nonce(held)
    world.liar.lies["eth_getTransactionCount"] = count_lie("latest", lambda c: c + 1)
    adapter.nonces.resync()  # the node claims nonce n is mined: no receipt proves it
    assert adapter.nonces.reserved() == [n]  # old code: forgotten
    del world.liar.lies["eth_getTransactionCount"]
    (later,) = adapter.prepare_lock(world.terms(adapter))
    assert _nonce(later) == n + 1  # old code: n, a second transaction over the pending lock
    adapter.broadcast(later)  # the gap is filled by the held lock, re-sent first
    adapter.wait(held.txid)
    adapter.wait(later.txid)
    adapter.nonces.resync()
    assert adapter.nonces.reserved() == []
    assert adapter.nonces.marks() == (n + 2, n + 2)


@pytest.mark.timeout(120)
def test_a_pending_count_lying_high_does_not_leave_a_gap_that_never_mines(world, tmp_path):
    adapter = world.adapter(tmp_path)
    (first,) = adapter.prepare_lock(world.terms(adapter))
    adapter.broadcast(first)
    adapter.wait(first.txid)
    world.liar.lies["eth_getTransactionCount"] = count_lie("pending", lambda c: c + 50)
    (second,) = adapter.prepare_lock(world.terms(adapter))
    assert _nonce(second) == _nonce(first) + 1  # old code: + 51, never mined
    world.send_honestly(second)
    assert world.mined_count() == _nonce(second) + 1


@pytest.mark.timeout(120)
def test_a_pending_count_lying_low_never_hands_out_a_nonce_proven_mined(world, tmp_path):
    adapter = world.adapter(tmp_path)
    sent = []
    for _ in range(3):
        (tx,) = adapter.prepare_lock(world.terms(adapter))
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
        sent.append(tx)
    adapter.nonces.resync()  # receipts prove them mined: forgotten, the floor raised
    assert adapter.nonces.reserved() == []
    world.liar.lies["eth_getTransactionCount"] = count_lie("pending", lambda _c: 0)
    (next_lock,) = adapter.prepare_lock(world.terms(adapter))
    assert _nonce(next_lock) == _nonce(sent[-1]) + 1  # old code: 0 (refused: nonce too low)
    world.send_honestly(next_lock)


@pytest.mark.timeout(120)
def test_a_prune_forgets_only_what_receipts_prove_mined(world, tmp_path, monkeypatch):
    adapter = world.adapter(tmp_path)
    mined = []
    for _ in range(3):
        (tx,) = adapter.prepare_lock(world.terms(adapter))
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
        mined.append(_nonce(tx))
    (held,) = adapter.prepare_lock(world.terms(adapter))  # signed, not sent
    assert adapter.nonces.reserved() == [*mined, _nonce(held)]
    monkeypatch.setattr(nonces, "PRUNE_ABOVE", 2)  # the next allocation prunes
    world.liar.lies["eth_getTransactionCount"] = count_lie("latest", lambda c: c + 1)
    (after,) = adapter.prepare_lock(world.terms(adapter))  # the node says held is mined
    assert _nonce(after) == _nonce(held) + 1
    assert adapter.nonces.reserved() == [_nonce(held), _nonce(after)]  # the mined ones went
    assert adapter.nonces.marks()[0] == mined[-1] + 1
    del world.liar.lies["eth_getTransactionCount"]
    adapter.broadcast(after)  # held is re-sent first: no gap
    adapter.wait(held.txid)
    adapter.wait(after.txid)


@pytest.mark.timeout(120)
def test_nonces_the_chain_mined_from_another_user_of_the_key_are_followed(world, tmp_path):
    adapter = world.adapter(tmp_path)
    (first,) = adapter.prepare_lock(world.terms(adapter))
    adapter.broadcast(first)
    adapter.wait(first.txid)
    # The same key used elsewhere (a restored wallet, say): two transactions mined.
    for _ in range(2):
        signed = world.account.sign_transaction(
            {
                "to": world.account.address,
                "value": 1,
                "gas": 21_000,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
                "nonce": world.honest.eth.get_transaction_count(world.account.address),
                "chainId": world.chain_id,
            }
        )
        world.honest.eth.wait_for_transaction_receipt(
            world.honest.eth.send_raw_transaction(signed.raw_transaction)
        )
    (second,) = adapter.prepare_lock(world.terms(adapter))
    assert _nonce(second) == _nonce(first) + 3
    world.send_honestly(second)
