"""The halt and divergence attacks of issues 17 (section 4) and 19 (item 1) against real
CometBFT v0.38: one node, then four validators whose apps run with different int->str limits.

Each case once stopped CometBFT (the ABCI connection dropped on an uncaught exception) or made
validators disagree; now each is refused with a stable code and the chain goes on."""

import base64
import json
import subprocess
import sys
import time

import pytest

from kofo.clearance.consensus.testnet import LocalTestnet, free_base_port
from kofo.clearance.errors import ABCI_CODES
from kofo.wire.codec import encode
from kofo.wire.orders import EvidenceKind, FileEvidence, sign_tx
from tests.conftest import require_binary
from tests.nodes import free_port, init_comet_home, start_comet

from .helpers import Party, commit_tx, ledger_params, make_order
from .test_cometbft import _port_open, _wait
from .test_hardening import empty_legs_commit_order
from .test_limits import _huge_int_txs

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(240)]


def _now() -> int:
    return int(time.time())


def _attack_txs(order_id: bytes) -> list[tuple[bytes, str]]:
    alice = Party.make(0)
    leg256 = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order_id, 256))
    return [
        (empty_legs_commit_order(alice), "bad_message"),
        (leg256, "bad_message"),
        *((tx, "bad_encoding") for tx in _huge_int_txs()),
    ]


def test_one_node_refuses_each_attack_and_keeps_running(tmp_path):
    require_binary("cometbft")
    home = tmp_path / "comet"
    init_comet_home(home)
    genesis_path = home / "config" / "genesis.json"
    genesis = json.loads(genesis_path.read_text())
    genesis["app_state"] = {"params": ledger_params().as_map()}
    genesis_path.write_text(json.dumps(genesis))
    port = free_port()
    log_path = tmp_path / "abci.log"
    with open(log_path, "wb") as log:
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
            node.broadcast_tx_commit(alice.register_tx(ts=_now()))
            query = node.rpc("abci_query", path="/rank_routes", data="8101")["response"]
            assert int(query["code"]) == ABCI_CODES["invalid_input"]
            for tx, code in _attack_txs(b"\x01" * 16):
                check = node.rpc("broadcast_tx_sync", tx=base64.b64encode(tx).decode())
                assert int(check["code"]) == ABCI_CODES[code], check
            # the node, its app and the chain are all still there
            assert server.poll() is None
            for p in (m1, m2):
                node.broadcast_tx_commit(p.register_tx(ts=_now()))
            order = make_order([alice, m1, m2], t0=_now())
            node.broadcast_tx_commit(commit_tx(order, [alice, m1, m2], alice, ts=_now()))
            assert node.abci_query(encode(order.order_id), path="/order") is not None
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_four_validators_with_different_int_str_limits_and_hash_seeds_refuse_alike_and_agree(
    tmp_path,
):
    require_binary("cometbft")
    limits = {0: "0", 1: "640", 2: "4300", 3: "100000"}
    net = LocalTestnet(
        tmp_path / "net",
        4,
        base_port=free_base_port(4),
        params=ledger_params().as_map(),
        # and different hash seeds: no set or dict order may reach a result
        app_env={
            i: {"PYTHONINTMAXSTRDIGITS": v, "PYTHONHASHSEED": str(17 * i)}
            for i, v in limits.items()
        },
    )
    net.create()
    with net:
        net.start_all()
        parties = [Party.make(i) for i in range(3)]
        for i, p in enumerate(parties):
            assert net.broadcast(i, p.register_tx(ts=_now()))["code"] == 0
        # A public validator admits a sender's txs once its registration is committed there.
        _wait(
            lambda: all(
                net.query(v, "/node", encode(p.id))[0] == 0 for v in range(4) for p in parties
            ),
            what="registrations on every validator",
        )
        for v in range(4):
            code, _ = net.query(v, "/rank_routes", bytes.fromhex("8101"))
            assert code == ABCI_CODES["invalid_input"]
            for tx, expected in _attack_txs(b"\x01" * 16):
                assert net.broadcast(v, tx)["code"] == ABCI_CODES[expected]
        order = make_order(parties, t0=_now())
        assert net.broadcast(3, commit_tx(order, parties, parties[0], ts=_now()))["code"] == 0
        _wait(
            lambda: all(net.query(v, "/order", encode(order.order_id))[0] == 0 for v in range(4)),
            what="the order on every validator",
        )
        target = max(net.height(v) for v in range(4))
        for v in range(4):
            net.wait_for_height(v, target + 1, timeout=60)
        assert len({net.app_hash_at(v, target) for v in range(4)}) == 1
        for v in net.validators:
            assert v.app is not None and v.app.poll() is None
            assert v.comet is not None and v.comet.poll() is None


def test_cometbft_only_restarts_keep_the_app_and_the_hashes_agree(tmp_path):
    """CometBFT of one validator is killed (its app keeps running, possibly holding a finalized
    but uncommitted block) and restarted, several times while orders flow; it replays what the
    app lacks and ends on the app hash of the other three."""
    require_binary("cometbft")
    parties = [Party.make(i) for i in range(3)]
    net = LocalTestnet(
        tmp_path / "net", 4, base_port=free_base_port(4), params=ledger_params().as_map()
    )
    net.create()
    with net:
        net.start_all()
        for i, p in enumerate(parties):
            assert net.broadcast(i, p.register_tx(ts=_now()))["code"] == 0
        # A public validator admits a sender's txs once its registration is committed there.
        _wait(
            lambda: all(
                net.query(v, "/node", encode(p.id))[0] == 0 for v in range(4) for p in parties
            ),
            what="registrations on every validator",
        )
        orders = []
        for _ in range(4):  # bounded: four kill/restart rounds
            for _ in range(3):
                order = make_order(parties, t0=_now())
                assert (
                    net.broadcast(0, commit_tx(order, parties, parties[0], ts=_now()))["code"] == 0
                )
                orders.append(order)
            net.kill_comet(3)
            net.start_comet(3)
            net.wait_for_height(3, net.height(0), timeout=60)
        _wait(
            lambda: all(net.query(3, "/order", encode(o.order_id))[0] == 0 for o in orders),
            what="every order on the restarted validator",
        )
        target = net.height(0)
        for v in range(4):  # app_hash_at(v, target) reads block target + 1 on validator v
            net.wait_for_height(v, target + 1, timeout=60)
        assert len({net.app_hash_at(v, target) for v in range(4)}) == 1
        app = net.validators[3].app
        assert app is not None and app.poll() is None  # the same app process throughout
