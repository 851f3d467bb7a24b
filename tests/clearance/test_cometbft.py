"""The ledger app under real CometBFT v0.38: one node, then a 4-validator loopback testnet."""

import base64
import json
import socket
import subprocess
import sys
import time

import pytest

from kofo.clearance.app import Block, LedgerApp
from kofo.clearance.attest import Validator
from kofo.clearance.consensus.testnet import LocalTestnet, free_base_port
from kofo.clearance.store import MerkleStore
from kofo.wire.codec import decode, encode
from tests.conftest import require_binary
from tests.nodes import free_port, init_comet_home, start_comet

from .helpers import Party, commit_tx, ledger_params, make_order

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(180)]


def _now() -> int:
    return int(time.time())


def _fresh_order(route, relays=()):
    # Deadlines relative to wall time: CometBFT stamps blocks with (BFT) real time.
    return make_order(route, relays=list(relays), t0=_now())


def _port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_single_cometbft_node_commits_orders_and_check_tx_rejects_bad_ones(tmp_path):
    require_binary("cometbft")
    home = tmp_path / "comet"
    init_comet_home(home)
    genesis_path = home / "config" / "genesis.json"
    genesis = json.loads(genesis_path.read_text())
    genesis["app_state"] = {"params": ledger_params().as_map()}
    genesis_path.write_text(json.dumps(genesis))
    port = free_port()
    log_path = tmp_path / "abci.log"
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kofo.clearance.abci.server",
                "--db",
                str(tmp_path / "l.db"),
                "--addr",
                f"127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def listening():
        assert server.poll() is None, f"ABCI server exited:\n{log_path.read_text()[-2000:]}"
        return _port_open(port)

    try:
        _wait(listening, what="abci server")
        with start_comet(home, f"tcp://127.0.0.1:{port}") as node:
            alice, m1, m2 = (Party.make(i) for i in range(3))
            for p in (alice, m1, m2):
                node.broadcast_tx_commit(p.register_tx(ts=_now()))
            order = _fresh_order([alice, m1, m2])
            node.broadcast_tx_commit(commit_tx(order, [alice, m1, m2], m1, ts=_now()))
            rec = decode(node.abci_query(encode(order.order_id), path="/order"))
            assert rec["order"] == order.as_map()

            # a signature missing (on a new order: a copy of the committed one is a replay,
            # refused as such before any signature is checked)
            bad = commit_tx(_fresh_order([alice, m1, m2]), [alice, m1], m1, ts=_now())
            check = node.rpc("broadcast_tx_sync", tx=base64.b64encode(bad).decode())
            assert int(check["code"]) != 0
            assert "signature" in check["log"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _genesis_args(path):
    """What InitChain gives the app from a genesis file: the validator set (its vote extensions
    attest outcomes), the chain id and the vote extensions' first height."""
    genesis = json.loads(path.read_text())
    validators = [
        Validator(base64.b64decode(v["pub_key"]["value"]), int(v["power"]))
        for v in genesis["validators"]
    ]
    abci_params = genesis.get("consensus_params", {}).get("abci") or {}
    return {
        "validators": validators,
        "chain_id": genesis["chain_id"],
        "vote_extensions_height": int(abci_params.get("vote_extensions_enable_height", 0)),
    }


def test_four_validators_commit_survive_a_crash_and_the_restarted_one_catches_up(tmp_path):
    require_binary("cometbft")
    parties = [Party.make(i) for i in range(6)]
    route, relays = parties[:3], parties[3:4]
    net = LocalTestnet(
        tmp_path / "net", 4, base_port=free_base_port(4), params=ledger_params().as_map()
    )
    net.create()
    with net:
        net.start_all()
        # several clients, each talking to its own validator
        for i, p in enumerate(parties):
            assert net.broadcast(i % 4, p.register_tx(ts=_now()))["code"] == 0

        def committed(validator, order):
            code, _ = net.query(validator, "/order", encode(order.order_id))
            return code == 0

        def submit_orders(validators, count):
            orders = []
            for k in range(count):
                order = _fresh_order(route, relays)
                submitter = parties[k % 3]
                tx = commit_tx(order, [*route, *relays], submitter, ts=_now())
                assert net.broadcast(validators[k % len(validators)], tx)["code"] == 0
                orders.append(order)
            return orders

        # A public validator admits a sender's txs once its registration is committed there.
        _wait(
            lambda: all(
                net.query(v, "/node", encode(p.id))[0] == 0 for v in range(4) for p in parties
            ),
            what="registrations on every validator",
        )
        before = submit_orders([0, 1, 2, 3], 8)
        _wait(lambda: all(committed(0, o) for o in before), what="orders before the crash")

        net.kill(3)
        height_at_kill = net.height(0)
        during = submit_orders([0, 1, 2], 8)
        _wait(lambda: all(committed(1, o) for o in during), what="orders with one validator down")
        for v in range(3):  # the three survivors keep committing blocks
            assert net.wait_for_height(v, height_at_kill + 2, timeout=30) >= height_at_kill + 2

        net.start(3)
        # The highest survivor holds every order committed during the outage (validator 0 may
        # lag validator 1, where they were seen); each validator must also hold block `target`,
        # which carries the app hash read below.
        target = max(net.height(v) for v in range(3))
        for v in range(4):
            net.wait_for_height(v, target, timeout=60)
        assert all(committed(3, o) for o in during)
        hashes = {net.app_hash_at(v, target - 1) for v in range(4)}
        assert len(hashes) == 1

    # the validator's own block log replays, from genesis, to the app hash the network agreed on
    app = LedgerApp(MerkleStore(net.validators[0].home / "ledger.db"))
    replica = LedgerApp(MerkleStore(), ledger_params())
    replica.init_chain(**_genesis_args(net.validators[0].home / "config" / "genesis.json"))
    for height, raw in app.store.blocks():
        if height < target:
            replica.apply_block(Block.from_bytes(raw))
    assert replica.height == target - 1
    assert replica.app_hash.hex().upper() == hashes.pop()
