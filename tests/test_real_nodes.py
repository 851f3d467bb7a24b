"""Each real node the project tests against starts from tests/nodes.py and really works."""

from __future__ import annotations

import secrets
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import coincurve
import pytest
from bitcointx import segwit_addr
from bitcointx.core import CTransaction, Hash160
from web3 import HTTPProvider, Web3

from tests import conftest
from tests.nodes import (
    GETH_DEV_CHAIN_ID,
    BtcdNode,
    CometNode,
    GethNode,
    LitecoindNode,
    NodeError,
    kept_or_removed,
    start_btcd,
    start_comet_testnet,
    start_litecoind,
    stop_all,
)

realnode = pytest.mark.realnode

COIN = 100_000_000
# Bitcoin and Litecoin regtest both start at a 50-coin subsidy and halve it every 150 blocks
# (consensus parameters of the regtest chains, not of these tests).
REGTEST_INITIAL_SUBSIDY = 50 * COIN
REGTEST_HALVING_INTERVAL = 150


def regtest_subsidy(height: int) -> int:
    return REGTEST_INITIAL_SUBSIDY >> (height // REGTEST_HALVING_INTERVAL)


def new_p2wpkh(hrp: str) -> tuple[str, bytes]:
    """A fresh P2WPKH address with human-readable part ``hrp`` and its scriptPubKey."""
    program = Hash160(coincurve.PrivateKey().public_key.format())
    address = segwit_addr.encode(hrp, 0, program)
    assert address is not None
    return address, bytes([0x00, len(program)]) + program


def new_eth_address() -> str:
    return Web3.to_checksum_address("0x" + secrets.token_hex(20))


# --- geth --------------------------------------------------------------------------------------


@realnode
def test_geth_dev_runs_chain_1337_and_web3_can_use_it(geth: GethNode) -> None:
    assert int(geth.rpc("eth_chainId"), 16) == GETH_DEV_CHAIN_ID == 1337
    w3 = Web3(HTTPProvider(geth.rpc_url))
    assert w3.eth.chain_id == 1337
    assert w3.eth.accounts[0].lower() == geth.dev_account.lower()
    assert geth.balance(geth.dev_account) > 0


@realnode
def test_geth_fund_moves_exactly_the_amount_and_the_dev_account_pays_the_gas(
    geth: GethNode,
) -> None:
    recipient = new_eth_address()
    wei = 10**18 + secrets.randbelow(10**9)
    dev_before = geth.balance(geth.dev_account)
    assert geth.balance(recipient) == 0

    receipt = geth.fund(recipient, wei)

    assert geth.balance(recipient) == wei
    # In --dev the dev account is also the block's fee recipient: it pays the gas but gets the
    # priority tip back, so it loses exactly the amount plus the burnt base fee.
    block = geth.rpc("eth_getBlockByNumber", receipt["blockNumber"], False)
    assert block["miner"].lower() == geth.dev_account.lower()
    burnt = int(receipt["gasUsed"], 16) * int(block["baseFeePerGas"], 16)
    assert geth.balance(geth.dev_account) == dev_before - wei - burnt


# --- btcd --------------------------------------------------------------------------------------


@realnode
def test_btcd_generate_pays_the_mining_address(
    btcd_factory: Callable[[str], BtcdNode],
) -> None:
    address, script_pubkey = new_p2wpkh("bcrt")
    btcd = btcd_factory(address)
    assert btcd.block_count() == 0

    hashes = btcd.generate(101)

    assert len(hashes) == 101
    assert btcd.block_count() == 101
    tip = btcd.rpc("getblock", hashes[-1])
    assert tip["hash"] == btcd.rpc("getbestblockhash") == hashes[-1]
    assert tip["height"] == 101
    # btcd's getrawtransaction takes an int verbose flag; 0 = raw hex, decoded independently.
    coinbase = CTransaction.deserialize(
        bytes.fromhex(btcd.rpc("getrawtransaction", tip["tx"][0], 0))
    )
    assert coinbase.is_coinbase()
    paying = [out for out in coinbase.vout if bytes(out.scriptPubKey) == script_pubkey]
    assert len(paying) == 1
    assert sum(out.nValue for out in coinbase.vout) == regtest_subsidy(101)


@realnode
def test_btcd_rpc_is_tls_only_and_trusts_only_its_own_certificate(
    btcd_factory: Callable[[str], BtcdNode],
) -> None:
    btcd = btcd_factory(new_p2wpkh("bcrt")[0])
    assert btcd.rpc_url.startswith("https://127.0.0.1:")
    assert btcd.cert_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert btcd.rpc("getblockchaininfo")["chain"] == "regtest"

    plain = btcd.rpc_url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(plain, data=b"{}", timeout=5)
    system_roots_only = ssl.create_default_context()
    with pytest.raises(urllib.error.URLError) as excinfo:
        urllib.request.urlopen(btcd.rpc_url, data=b"{}", timeout=5, context=system_roots_only)
    assert isinstance(excinfo.value.reason, ssl.SSLCertVerificationError)


@realnode
def test_btcd_refuses_a_mining_address_of_another_network_and_the_error_shows_its_log(
    tmp_path: Path,
) -> None:
    conftest.require_binary("btcd")
    mainnet_address = new_p2wpkh("bc")[0]
    with pytest.raises(NodeError) as excinfo:
        start_btcd(tmp_path / "btcd", mainnet_address)
    message = str(excinfo.value)
    assert "exited with code" in message
    assert "last lines of" in message
    assert mainnet_address in message  # btcd's own complaint, read from its log


@realnode
def test_stopped_node_is_reaped_and_its_rpc_port_is_closed(tmp_path: Path) -> None:
    conftest.require_binary("btcd")
    node = start_btcd(tmp_path / "btcd", new_p2wpkh("bcrt")[0])
    assert node.process.running()

    node.stop()

    assert node.process.proc.returncode is not None
    with pytest.raises(OSError):
        node.rpc("getblockcount")


# --- litecoind ---------------------------------------------------------------------------------


@realnode
def test_litecoind_regtest_generatetoaddress_pays_the_address(litecoind: LitecoindNode) -> None:
    assert litecoind.rpc("getblockchaininfo")["chain"] == "regtest"
    address, script_pubkey = new_p2wpkh("rltc")
    before = litecoind.block_count()

    hashes = litecoind.generate_to_address(101, address)

    assert len(hashes) == 101
    assert litecoind.block_count() == before + 101
    tip = litecoind.rpc("getblock", hashes[-1], 2)
    outputs = tip["tx"][0]["vout"]
    assert [out["scriptPubKey"]["hex"] for out in outputs].count(script_pubkey.hex()) == 1


@realnode
def test_litecoind_activate_soft_forks_enforces_cltv() -> None:
    conftest.require_binary("litecoind")
    # Its own node: activation mines ~1350 blocks, which the shared fixture's users won't want.
    with kept_or_removed(Path(tempfile.mkdtemp(prefix="kofo-ltc-"))) as datadir:
        with start_litecoind(datadir) as node:
            bip65 = node.rpc("getblockchaininfo")["softforks"]["bip65"]
            assert bip65["active"] is False

            mined = node.activate_soft_forks()

            info = node.rpc("getblockchaininfo")
            assert info["softforks"]["bip65"]["active"] is True
            assert mined == info["blocks"] == bip65["height"] - 1
            assert all(
                fork["active"] for fork in info["softforks"].values() if fork["type"] == "buried"
            )
            assert node.activate_soft_forks() == 0


# --- CometBFT ----------------------------------------------------------------------------------


@realnode
def test_comet_kvstore_commits_a_tx_and_answers_a_query_for_it(comet_kvstore: CometNode) -> None:
    key, value = f"k{secrets.token_hex(4)}", secrets.token_hex(8)
    assert comet_kvstore.abci_query(key.encode()) is None

    result = comet_kvstore.broadcast_tx_commit(f"{key}={value}".encode())

    assert int(result["height"]) >= 1
    assert comet_kvstore.abci_query(key.encode()) == value.encode()


@realnode
def test_comet_four_validator_testnet_on_loopback_replicates_a_tx(tmp_path: Path) -> None:
    conftest.require_binary("cometbft")
    nodes = start_comet_testnet(tmp_path / "net", 4)
    try:
        assert len({node.rpc_url for node in nodes}) == 4
        validators = nodes[0].rpc("validators")["validators"]
        assert len(validators) == 4
        # Block 1 needs only >2/3 of the votes, so the last connections may still be dialling.
        deadline = time.monotonic() + 15
        while not all(int(node.rpc("net_info")["n_peers"]) == 3 for node in nodes):
            assert time.monotonic() < deadline, "validators did not all connect to each other"
            time.sleep(0.1)

        height = int(nodes[0].broadcast_tx_commit(b"swap=settled")["height"])

        for node in nodes:
            node.wait_for_height(height)
            assert node.abci_query(b"swap") == b"settled"
    finally:
        stop_all(nodes)


# --- binary lookup policy ----------------------------------------------------------------------


def test_missing_binary_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "find_binary", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"install-nodes\.sh"):
        conftest.require_binary("geth")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.require_binary("geth")
