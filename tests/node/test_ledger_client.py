"""One LedgerClient, three ledgers: the solo ledger served over CometBFT's RPC, a real
single-node CometBFT running the ledger app, and a 4-validator CometBFT testnet (started with
its tx index kept, ``LocalTestnet(tx_index=True)``; the client talks to a validator other than
the first). The same test body runs against all three."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kofo.clearance.app import LedgerApp
from kofo.clearance.consensus.solo import SoloChain
from kofo.clearance.consensus.solo_rpc import SoloLedgerRpc
from kofo.clearance.consensus.testnet import LocalTestnet, free_base_port
from kofo.clearance.store import MerkleStore
from kofo.node.ledger_client import (
    LedgerClient,
    LedgerRefused,
    LedgerTimeout,
    LedgerUnreachable,
    tx_hash,
)
from kofo.wire.codec import decode, encode
from tests.clearance.helpers import Party, commit_tx, ledger_params, make_order
from tests.conftest import require_binary
from tests.nodes import free_port, init_comet_home, start_comet

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0
"""Bound on a tx reaching a block (either ledger does it in well under a second)."""


def _now() -> int:
    return int(time.time())


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def solo_url() -> Iterator[str]:
    app = LedgerApp(MerkleStore(), ledger_params())
    with SoloLedgerRpc(SoloChain(app), block_interval=0.05) as rpc:
        yield rpc.url


@pytest.fixture
def cometbft_url(tmp_path) -> Iterator[str]:
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
                *(sys.executable, "-m", "kofo.clearance.abci.server"),
                *("--db", str(tmp_path / "l.db"), "--addr", f"127.0.0.1:{port}"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _port_open(port):
            assert server.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "ABCI server did not listen"
            time.sleep(0.05)
        with start_comet(home, f"tcp://127.0.0.1:{port}") as node:
            yield node.rpc_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def testnet4_url(tmp_path) -> Iterator[str]:
    """Validator 2 of a 4-validator testnet running the ledger app, with the tx index on."""
    require_binary("cometbft")
    net = LocalTestnet(
        tmp_path / "net",
        4,
        base_port=free_base_port(4),
        params=ledger_params().as_map(),
        tx_index=True,
    )
    net.create()
    with net:
        net.start_all()
        yield net.validators[2].rpc_url


def test_a_testnet_keeps_no_tx_index_unless_asked(tmp_path):
    """The benchmark's default is unchanged: CometBFT's indexer off (``tx`` then fails, and
    the client names the setting); ``tx_index=True`` keeps the ``kv`` indexer."""
    require_binary("cometbft")
    indexers = {}
    for keep in (False, True):
        net = LocalTestnet(tmp_path / f"net-{keep}", 4, base_port=free_base_port(4), tx_index=keep)
        net.create()
        for v in net.validators:
            config = (v.home / "config" / "config.toml").read_text()
            section = config.split("[tx_index]", 1)[1].split("\n[", 1)[0]
            indexers.setdefault(keep, set()).add(
                next(ln for ln in section.splitlines() if ln.startswith("indexer")).strip()
            )
    assert indexers == {False: {'indexer = "null"'}, True: {'indexer = "kv"'}}


@pytest.fixture(
    params=[
        "solo",
        pytest.param("cometbft", marks=pytest.mark.realnode),
        pytest.param("testnet4", marks=[pytest.mark.realnode, pytest.mark.slow]),
    ],
)
def ledger_url(request) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_one_client_registers_commits_queries_and_reports_refusals(ledger_url):
    client = LedgerClient(ledger_url, timeout=10)
    status = client.status()
    assert status.network and not status.catching_up

    alice, m1, m2 = (Party.make(i) for i in range(3))
    included = [client.commit(p.register_tx(ts=_now()), timeout=WAIT) for p in (alice, m1, m2)]
    for p, inc in zip((alice, m1, m2), included, strict=True):
        assert inc.result.ok and inc.height >= 1
        looked_up = client.tx(inc.hash)
        assert looked_up is not None and looked_up.height == inc.height
        assert inc.tx in client.block(inc.height).txs
        node = decode(client.abci_query("/node", encode(p.id)))
        assert node["bond"] == p.bond

    order = make_order([alice, m1, m2], t0=_now())
    commit = commit_tx(order, [alice, m1, m2], m1, ts=_now())
    done = client.commit(commit, timeout=WAIT)
    assert ("order_committed", (("order_id", order.order_id.hex()),)) in done.result.events
    assert decode(client.abci_query("/order", encode(order.order_id)))["order"] == order.as_map()

    # the same bytes again (a retry after a lost answer): found by hash, never sent twice
    again = client.commit(commit, timeout=WAIT)
    assert (again.height, again.index) == (done.height, done.index)

    # CheckTx refuses: a party's signature is missing (on a new order: a copy of the committed
    # one is refused first, as a replay of its HTLCs)
    bad = commit_tx(make_order([alice, m1, m2], t0=_now()), [alice, m1], m1, ts=_now())
    with pytest.raises(LedgerRefused) as refused:
        client.broadcast_tx_sync(bad)
    assert refused.value.abci_code != 0 and "signature" in refused.value.log
    assert client.tx(tx_hash(bad)) is None

    # the same order again in a new envelope (new tx bytes): refused as a replay of its HTLCs
    # before it reaches a block
    dup = commit_tx(order, [alice, m1, m2], alice, ts=_now() + 1)
    with pytest.raises(LedgerRefused) as replay:
        client.commit(dup, timeout=WAIT)
    assert replay.value.code == "already_exists"
    assert client.tx(tx_hash(dup)) is None

    # a query with no answer
    with pytest.raises(LedgerRefused) as missing:
        client.abci_query("/order", encode(b"\x00" * 16))
    assert missing.value.code == "not_found"

    # app hashes: block H+1 carries the state after block H, as under CometBFT
    h = done.height
    assert client.block(h).app_hash == client.app_hash_after(h - 1)
    assert client.block().height >= h
    assert client.status().height >= h

    # a tx no block holds
    assert client.tx("00" * 32) is None
    with pytest.raises(LedgerTimeout):
        client.wait_for_tx("00" * 32, timeout=0.3)


def test_an_unreachable_ledger_is_a_distinct_retryable_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LedgerUnreachable) as exc:
        LedgerClient(f"http://127.0.0.1:{port}", timeout=2).status()
    assert exc.value.retryable and exc.value.code == "ledger_unreachable"


def test_a_ledger_that_never_answers_times_out_as_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        client = LedgerClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        with pytest.raises(LedgerUnreachable):
            client.status()  # accepted by the kernel, never answered
    finally:
        listener.close()


def test_something_that_is_not_a_ledger_is_unreachable_not_a_refusal():
    class Html(BaseHTTPRequestHandler):
        def do_POST(self):
            body = b"<html>bad gateway</html>"
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(LedgerUnreachable) as exc:
            LedgerClient(f"http://127.0.0.1:{server.server_address[1]}").abci_query("/params")
        assert "non-JSON" in str(exc.value)
    finally:
        server.shutdown()
        server.server_close()


def test_solo_rpc_answers_cometbft_uri_requests_and_rpc_errors(solo_url):
    def get(path):
        with urllib.request.urlopen(solo_url + path, timeout=10) as r:
            return json.loads(r.read())

    party = Party.make(7)
    raw = party.register_tx(ts=_now())
    sent = get(f"/broadcast_tx_sync?tx=0x{raw.hex()}")["result"]
    assert sent["code"] == 0 and sent["hash"] == tx_hash(raw)
    client = LedgerClient(solo_url)
    included = client.wait_for_tx(sent["hash"], timeout=WAIT)
    found = get(f"/tx?hash=0x{sent['hash']}")["result"]
    assert found["height"] == str(included.height) and found["index"] == 0
    query = get(f'/abci_query?path="/node"&data=0x{encode(party.id).hex()}')["result"]
    assert query["response"]["code"] == 0 and query["response"]["height"] == str(included.height)
    status = get("/status")["result"]["sync_info"]
    assert status["latest_block_height"] == str(included.height)
    assert status["latest_app_hash"] == client.status().app_hash.hex().upper()

    too_high = get(f"/block?height={included.height + 5}")["error"]
    assert too_high["code"] == -32603 and "must be less than or equal" in too_high["data"]
    assert get("/tx?hash=0x" + "00" * 32)["error"]["data"].endswith("not found")
    again = get(f"/broadcast_tx_sync?tx=0x{raw.hex()}")["error"]
    assert again["data"] == "tx already exists in cache"

    body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "nosuch", "params": {}}).encode()
    req = urllib.request.Request(solo_url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["error"]["code"] == -32601


def test_solo_rpc_commits_concurrent_broadcasts_each_exactly_once(solo_url):
    client = LedgerClient(solo_url)
    txs = [Party.make(10 + i).register_tx(ts=_now()) for i in range(24)]
    results: list = []
    errors: list = []

    def send(chunk):
        try:
            results.extend(LedgerClient(solo_url).commit(tx, timeout=WAIT) for tx in chunk)
        except Exception as exc:  # reported below; a thread must not swallow it
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(txs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT * 2)
    assert not errors
    assert sorted(r.hash for r in results) == sorted(tx_hash(t) for t in txs)
    assert len({(r.height, r.index) for r in results}) == len(txs)
    in_blocks = [tx for h in range(1, client.status().height + 1) for tx in client.block(h).txs]
    assert sorted(in_blocks) == sorted(txs)  # each once, nothing else


def test_the_ledger_http_server_sheds_connections_past_its_bound_and_recovers():
    from kofo.clearance.consensus.http_shell import LoopbackHttpServer

    # Idle connections hold their slots for the whole test (a long read timeout), and the
    # server takes a slot when it accepts, in accept order: the fifth connection is shed
    # whatever the machine's load.
    server = LoopbackHttpServer(
        lambda verb, path, body: (200, b'{"result": {}}'), max_connections=4, read_timeout=300
    ).start()
    idle = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # a request that never finishes
            idle.append(s)
        client = LedgerClient(server.url, timeout=30)
        with pytest.raises(LedgerUnreachable):
            client.call("status")
        for s in idle:
            s.close()
        idle.clear()
        deadline = time.monotonic() + WAIT
        while True:  # each idle handler sees EOF and frees its slot
            try:
                assert client.call("status") == {}
                break
            except LedgerUnreachable:
                assert time.monotonic() < deadline, "the server did not recover"
                time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_solo_rpc_stop_commits_what_the_mempool_holds():
    app = LedgerApp(MerkleStore(), ledger_params())
    rpc = SoloLedgerRpc(SoloChain(app), block_interval=30).start()  # no block before stop
    try:
        raw = Party.make(3).register_tx(ts=_now())
        LedgerClient(rpc.url).broadcast_tx_sync(raw)
    finally:
        rpc.stop()
    assert app.height == 1 and app.node(Party.make(3).id) is not None


def test_a_paused_solo_ledger_is_unreachable_then_resumes_with_its_state_on_the_same_url():
    """``SoloLedgerRpc.pause()`` (``kofo devnet``'s SIGUSR1): connections refused, no block
    made; ``resume()`` serves the same state on the same URL and commits what was sent."""
    app = LedgerApp(MerkleStore(), ledger_params())
    with SoloLedgerRpc(SoloChain(app), block_interval=0.05) as rpc:
        client = LedgerClient(rpc.url, timeout=5)
        alice, bob = Party.make(0), Party.make(1)
        first = client.commit(alice.register_tx(ts=_now()), timeout=WAIT)
        url, height = rpc.url, client.status().height
        rpc.pause()
        assert rpc.paused and rpc.url == url
        with pytest.raises(LedgerUnreachable) as down:
            client.status()
        assert down.value.code == "ledger_unreachable" and down.value.retryable
        tx = bob.register_tx(ts=_now())
        with pytest.raises(LedgerUnreachable):
            client.broadcast_tx_sync(tx)
        assert app.height == height  # no block while paused
        rpc.resume()
        assert not rpc.paused and rpc.url == url
        assert client.tx(first.hash) is not None  # the state survived
        done = client.commit(tx, timeout=WAIT)
        assert done.result.ok and done.height > height
        rpc.pause()  # and again: stop() after a pause still shuts down cleanly
