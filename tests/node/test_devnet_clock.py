"""The devnet's Ethereum clock keeps going while nobody transacts: the embedded EVM mines only
for a transaction, so an idle devnet's latest block time (the chain clock a node lays unix
deadlines from) used to stand still, and a swap laid out after a few idle minutes had deadlines
already past (``participant_lock_by ... has already passed``). With blocks on (a
``block_interval``), with or without ``--fast-timing``, the devnet now stamps an empty EVM
block at each block interval when the latest is older."""

from __future__ import annotations

import time

import pytest
from web3 import Web3

from kofo.node.devnet import start_devnet

pytestmark = [pytest.mark.timeout(300)]


def test_the_devnet_evm_clock_moves_without_transactions() -> None:
    net = start_devnet(block_interval=0.5)
    try:
        w3 = Web3(Web3.HTTPProvider(net.eth_server.url))
        first = w3.eth.get_block("latest")
        # no transaction from here on: only the devnet's clock can make blocks
        deadline = time.monotonic() + 120
        while True:
            latest = w3.eth.get_block("latest")
            if latest["number"] >= first["number"] + 2:
                break
            assert time.monotonic() < deadline, "no EVM block without a transaction"
            time.sleep(0.2)
        assert latest["timestamp"] > first["timestamp"]
        assert not latest["transactions"]
    finally:
        net.stop()


def test_no_evm_clock_without_blocks() -> None:
    """``block_interval = 0`` (tests that move time themselves): no block unless asked."""
    net = start_devnet(block_interval=0)
    try:
        assert net._miner is None
    finally:
        net.stop()
