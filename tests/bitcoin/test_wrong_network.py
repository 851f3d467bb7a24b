"""A Bitcoin-like node on another network than the configured one (issue 16, the class of open
suspicion 1): a transaction names no chain, so only the node's block 0 tells a mainnet adapter
that it is reading a chain where coins are free. The embedded regtest chain plays the node."""

from __future__ import annotations

import pytest

from kofo.errors import ChainError
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import EmbeddedBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.wallet import HdWallet

from .conftest import REGTEST


@pytest.mark.parametrize(
    ("chain_name", "network"),
    [("btc", "mainnet"), ("btc", "testnet"), ("btc", "signet"), ("ltc", "mainnet")],
)
def test_an_adapter_for_a_public_network_refuses_a_node_on_another(chain, chain_name, network):
    params = chain_params(chain_name, network)
    with pytest.raises(ChainError) as refused:
        BitcoinAdapter(EmbeddedBackend(chain), HdWallet(b"\x51" * 32, params))
    assert refused.value.code == "wrong_chain"
    assert network in str(refused.value)


def test_a_regtest_adapter_takes_the_regtest_node(chain):
    adapter = BitcoinAdapter(EmbeddedBackend(chain), HdWallet(b"\x52" * 32, REGTEST))
    assert adapter.tip().height >= 0
