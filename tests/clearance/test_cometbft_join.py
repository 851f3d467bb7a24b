"""A fifth validator joins a real 4-validator CometBFT v0.38 network through a bond (issue 17):
its node's bond is attested by the validators (FileObserver), it registers its consensus key and
its vault key, the app returns the validator update (capped while the genesis validators stand
in) and CometBFT lets it sign blocks."""

import base64
import hashlib
import json
import os
import time

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.clearance import attest, bonds
from kofo.clearance.consensus.testnet import LocalTestnet, free_base_port
from kofo.wire.codec import decode, encode
from kofo.wire.orders import RegisterValidatorKey, sign_tx
from tests.conftest import require_binary

from .helpers import Party, ledger_params

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(240)]


def _wait(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_fifth_validator_joins_through_a_bond_and_signs_blocks(tmp_path):
    require_binary("cometbft")
    net = LocalTestnet(
        tmp_path / "net",
        4,
        base_port=free_base_port(5),
        params=ledger_params(validator_min_power=10).as_map(),
        vote_extensions_height=1,
        observe=True,
        full_nodes=1,
    )
    net.create()
    # Genesis powers of 10 (cometbft testnet writes 1): the four genesis validators stand in,
    # and joiners plus the one faulty genesis validator a set of four tolerates must stay
    # below 1/3, so joiners may hold (40 - 3 * 10 - 1) // 2 = 4 (against four of 1: none).
    genesis = json.loads((net.validators[0].home / "config" / "genesis.json").read_text())
    for val in genesis["validators"]:
        val["power"] = "10"
    for v in net.validators:
        (v.home / "config" / "genesis.json").write_text(json.dumps(genesis, indent=2))
    key_file = json.loads(
        (net.validators[4].home / "config" / "priv_validator_key.json").read_text()
    )
    consensus = Ed25519PrivateKey.from_private_bytes(
        base64.b64decode(key_file["priv_key"]["value"])[:32]
    )
    pub = consensus.public_key().public_bytes_raw()
    address = attest.validator_address(pub).hex().upper()
    with net:
        net.start_all(wait_height=2)
        node = Party.make(5)
        assert net.broadcast(0, node.register_tx(ts=int(time.time())))["code"] == 0
        _wait(
            lambda: all(net.query(v, "/node", encode(node.id))[0] == 0 for v in range(5)),
            what="the registration on every node",
        )
        for v in range(5):  # every validator sees the node's bond in the vault: power 20
            path = net.observed_path(v)
            path.with_suffix(".tmp").write_text(
                json.dumps({"bonds": [[node.id.hex(), 20 * 10**15, 16]]})
            )
            os.replace(path.with_suffix(".tmp"), path)

        def bond(v: int) -> int:
            code, value = net.query(v, "/node", encode(node.id))
            return int(decode(value).get("bond_locked", 0)) if code == 0 else 0

        _wait(lambda: all(bond(v) == 20 * 10**15 for v in range(5)), what="the bond attested")
        secp = hashlib.sha256(b"joiner-secp").digest()
        eth = bonds.eth_address(coincurve.PrivateKey(secp).public_key)
        body = RegisterValidatorKey(
            consensus_key=pub,
            eth_address=eth,
            consensus_sig=consensus.sign(bonds.valkey_consensus_message(eth, node.id)),
            eth_sig=bonds.sign_digest(secp, bonds.valkey_eth_digest(pub)),
        )
        assert net.broadcast(1, sign_tx(node.key, body))["code"] == 0

        def in_set() -> bool:
            vals = net.rpc(0, "validators")["validators"]
            # its bond gives 20, capped to 4: the four genesis validators still vote with their
            # stand-in power (10 each here); with one of them it holds 14 of 44, below 1/3
            return any(v["address"] == address and int(v["voting_power"]) == 4 for v in vals)

        _wait(in_set, what="CometBFT's validator set to hold the joiner")

        def signed() -> bool:
            commit = net.rpc(0, "commit")["signed_header"]["commit"]
            return any(s.get("validator_address") == address for s in commit["signatures"])

        _wait(signed, what="a block signed by the joiner")
        height = min(net.height(v) for v in range(5)) - 1
        assert len({net.app_hash_at(v, height) for v in range(5)}) == 1
