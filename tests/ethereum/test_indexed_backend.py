"""The embedded EVM's transaction index answers exactly what py-evm's chain scan answers, also
after a revert has replaced blocks it had indexed."""

from __future__ import annotations

import pytest
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import TransactionNotFound
from web3 import EthereumTesterProvider, Web3

from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.devnet import IndexedPyEVMBackend, indexed_tester, mine_at

_MINT_ABI = [
    {
        "name": "mint",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [],
    }
]


def _send(w3: Web3, value: int) -> bytes:
    accounts = w3.eth.accounts
    return bytes(w3.eth.send_transaction({"from": accounts[0], "to": accounts[1], "value": value}))


def _scanned(backend: IndexedPyEVMBackend, tx_hash: bytes) -> object:
    """The stock backend's answer: a walk of the chain from the head."""
    return PyEVMBackend.get_transaction_receipt(backend, tx_hash)


def test_indexed_receipts_match_the_chain_scan_across_snapshot_and_revert() -> None:
    tester = indexed_tester()
    backend = tester.backend
    w3 = Web3(EthereumTesterProvider(tester))
    before = [_send(w3, v) for v in range(1, 4)]
    tester.mine_blocks(3)  # empty blocks between transactions must not confuse the index
    snapshot = tester.take_snapshot()
    dropped = _send(w3, 99)
    assert backend.get_transaction_receipt(dropped) == _scanned(backend, dropped)

    tester.revert_to_snapshot(snapshot)
    replacement = _send(w3, 7)  # mined at the height the dropped one had
    mine_at(tester, int(w3.eth.get_block("latest")["timestamp"]) + 600)
    with pytest.raises(TransactionNotFound):  # its height is canonical again, its block is not
        backend.get_transaction_receipt(dropped)
    for tx_hash in [*before, replacement]:
        assert backend.get_transaction_receipt(tx_hash) == _scanned(backend, tx_hash)
        assert backend.get_transaction_by_hash(tx_hash) == PyEVMBackend.get_transaction_by_hash(
            backend, tx_hash
        )
    assert w3.eth.get_transaction_receipt(replacement)["blockNumber"] == w3.eth.block_number - 1


def test_an_unknown_transaction_is_not_found() -> None:
    tester = indexed_tester()
    w3 = Web3(EthereumTesterProvider(tester))
    _send(w3, 1)
    with pytest.raises(TransactionNotFound):
        tester.backend.get_transaction_receipt(b"\x01" * 32)


def test_cached_logs_match_the_stock_query_across_snapshot_and_revert() -> None:
    tester = indexed_tester()
    w3 = Web3(EthereumTesterProvider(tester))
    deployer = w3.eth.accounts[0]
    address = deploy(w3, "TestToken", deployer, "Test USD", "TUSD", 6)
    token = w3.eth.contract(address=address, abi=_MINT_ABI)
    holders = w3.eth.accounts[1:4]

    def transfer(to: str, amount: int) -> None:  # a mint: a Transfer event from address zero
        token.functions.mint(to, amount).transact({"from": deployer})

    def same_as_stock(**query: object) -> None:
        assert tester.get_logs(**query) == EthereumTester.get_logs(tester, **query)

    for i, who in enumerate(holders):
        transfer(who, i + 1)
    snapshot = tester.take_snapshot()
    transfer(holders[0], 50)
    same_as_stock(from_block=0)  # caches the block about to be dropped
    tester.revert_to_snapshot(snapshot)
    transfer(holders[1], 60)  # a different block at the dropped one's height
    tester.mine_blocks(2)
    tip = int(w3.eth.block_number)
    to_topic = "0x" + bytes(12).hex() + holders[1][2:].lower()
    for query in (
        {"from_block": 0},
        {"from_block": 0, "to_block": tip},
        {"from_block": tip - 3, "to_block": "latest"},
        {"from_block": 0, "address": token.address},
        {"from_block": 0, "topics": [None, None, to_topic]},
        {"from_block": 0, "address": holders[2]},  # matches nothing
    ):
        same_as_stock(**query)
    amounts = [int(entry["data"], 16) for entry in tester.get_logs(from_block=0)]
    assert 50 not in amounts and 60 in amounts
