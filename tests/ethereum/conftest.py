"""One Ethereum test surface over two backends: the embedded EVM and a real geth --dev node.

Tests take ``eth_chain`` and run unchanged on both. It offers a Web3, freshly funded local
accounts, a way to move chain time forward, and ``send`` that signs locally (EIP-1559) and waits
for the receipt, as a node does in production.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import TransactionFailed
from web3 import EthereumTesterProvider, Web3
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

PRIORITY_FEE = 10**9
"""1 gwei tip: any positive tip gets included on both backends; the value is irrelevant to tests."""

GETH_MAX_ADVANCE = 60
"""advance_time on geth costs real transactions (one block, one second each at least); tests use
expiries of a few seconds, so anything larger is a test bug, not a wait to sit through."""


class EthChain:
    """What a test needs from a chain, independent of the backend."""

    backend: str
    w3: Web3

    def new_account(self, wei: int) -> LocalAccount:
        account: LocalAccount = Account.create()
        if wei:
            self._fund(account.address, wei)
        return account

    def now(self) -> int:
        """The latest block's timestamp: what the next block's block.timestamp is compared to."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def send(
        self,
        tx_fn: Any,
        account: LocalAccount,
        *,
        value: int = 0,
        gas: int | None = None,
    ) -> TxReceipt:
        """Sign ``tx_fn`` (a bound contract function) with ``account``'s key and mine it.

        Without ``gas`` the node estimates it, so a call that would revert raises
        ``ContractLogicError`` with the revert message before anything is sent. With ``gas`` the
        transaction is mined regardless and the receipt's status tells the outcome.
        """
        base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        params: dict[str, Any] = {
            "from": account.address,
            "value": value,
            "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": self.w3.eth.chain_id,
            "maxPriorityFeePerGas": PRIORITY_FEE,
            "maxFeePerGas": 2 * base_fee + PRIORITY_FEE,
        }
        if gas is not None:
            params["gas"] = gas
        tx = tx_fn.build_transaction(params)
        signed = account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)

    def transfer(self, account: LocalAccount, to: str, wei: int) -> TxReceipt:
        """A plain ETH payment signed by ``account``."""
        base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tx: dict[str, Any] = {
            "from": account.address,
            "to": to,
            "value": wei,
            "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": self.w3.eth.chain_id,
            "maxPriorityFeePerGas": PRIORITY_FEE,
            "maxFeePerGas": 2 * base_fee + PRIORITY_FEE,
        }
        tx["gas"] = self.w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
        signed = account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)

    def reverts(self, reason: str | None) -> pytest.RaisesExc[Exception]:
        """Expect a contract revert whose message contains ``reason`` (None: any revert).

        web3 raises ContractLogicError for a node's revert; eth-tester raises its own
        TransactionFailed before web3 sees a response. Both carry the revert string.
        """
        return pytest.raises(
            (ContractLogicError, TransactionFailed),
            match=None if reason is None else re.escape(reason),
        )

    def advance_time(self, seconds: int) -> None:
        raise NotImplementedError

    def _fund(self, address: str, wei: int) -> None:
        raise NotImplementedError


class EmbeddedChain(EthChain):
    """py-evm through eth-tester; time jumps instantly."""

    backend = "embedded"

    def __init__(self) -> None:
        self.tester = EthereumTester(PyEVMBackend())
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self._faucet = self.w3.eth.accounts[0]

    def _fund(self, address: str, wei: int) -> None:
        tx_hash = self.w3.eth.send_transaction({"from": self._faucet, "to": address, "value": wei})
        self.w3.eth.wait_for_transaction_receipt(tx_hash)

    def advance_time(self, seconds: int) -> None:
        # eth-tester mines the next block exactly at the travelled-to timestamp.
        self.tester.time_travel(self.now() + seconds)
        self.tester.mine_blocks(1)


class GethChain(EthChain):
    """A geth --dev node (a block per transaction) over JSON-RPC."""

    backend = "geth"

    def __init__(self, rpc_url: str, dev_account: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self._dev = Web3.to_checksum_address(dev_account)

    def _fund(self, address: str, wei: int) -> None:
        tx_hash = self.w3.eth.send_transaction({"from": self._dev, "to": address, "value": wei})
        self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)

    def advance_time(self, seconds: int) -> None:
        # geth --dev stamps each block max(wall clock, parent + 1), so every mined block moves
        # chain time by at least a second: mining is quicker than sleeping for short jumps, and
        # a block must exist anyway for eth_call/estimateGas to see the later time.
        if seconds > GETH_MAX_ADVANCE:
            raise ValueError(f"advance_time({seconds}) exceeds {GETH_MAX_ADVANCE}s on geth")
        target = self.now() + seconds
        deadline = time.monotonic() + GETH_MAX_ADVANCE + 30
        while self.now() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"geth chain time did not reach {target}")
            self._fund(self._dev, 0)


@pytest.fixture(
    params=["embedded", pytest.param("geth", marks=pytest.mark.realnode)],
)
def eth_chain(request: pytest.FixtureRequest) -> Iterator[EthChain]:
    if request.param == "embedded":
        yield EmbeddedChain()
    else:
        node = request.getfixturevalue("geth")
        yield GethChain(node.rpc_url, node.dev_account)
