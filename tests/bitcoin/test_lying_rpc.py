"""A lying JSON-RPC endpoint in front of the embedded chain's real one (issue 16, case 12).

Each test has the liar answer one call with something no node answers; every other call goes
through to the real server. Whatever the answer, the adapter raises a KOFO error naming the
call (a ChainError), never a TypeError/ValueError/KeyError, and a fee estimate that is no fee
rate falls back to the chain's fallback rate rather than stopping claims and refunds.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kofo.errors import ChainError
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import BadRpcAnswer, RpcBackend
from kofo.settlement.chains.bitcoin.blocks import BadBlock
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer
from kofo.settlement.chains.bitcoin.wallet import HdWallet

from .conftest import REGTEST, RPC_PASSWORD, RPC_USER

Answer = Callable[[int], bytes]
"""Given the request id, the whole HTTP body to answer with."""


def result(text: str) -> Answer:
    """An answer whose ``result`` is the raw JSON ``text`` (it may be no valid JSON value)."""
    return lambda rid: f'{{"result": {text}, "error": null, "id": {rid}}}'.encode()


def body(text: str) -> Answer:
    return lambda _rid: text.encode()


class LyingRpc:
    """Answers the methods in ``lies`` itself and forwards every other call upstream."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.lies: dict[str, Answer] = {}
        self.trickle: dict[str, float] = {}  # method -> seconds between bytes of the answer
        liar = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(raw)
                method = request["method"]
                if method in liar.lies:
                    data = liar.lies[method](request["id"])
                else:
                    data = liar.forward(raw, self.headers["Authorization"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                pause = liar.trickle.get(method)
                if pause is None:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):  # bounded: one byte at a time, then done
                    try:
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return  # the client hung up
                    time.sleep(pause)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def forward(self, raw: bytes, auth: str) -> bytes:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            conn.request("POST", "/", body=raw, headers={"Authorization": auth})
            return conn.getresponse().read()
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def liar(server: RegtestRpcServer) -> Iterator[LyingRpc]:
    lying = LyingRpc(server.url)
    yield lying
    lying.close()


def _adapter(liar: LyingRpc, timeout: float = 30.0) -> BitcoinAdapter:
    client = RpcClient(liar.url, RPC_USER, RPC_PASSWORD, timeout=timeout)
    return BitcoinAdapter(RpcBackend(client), HdWallet(b"\x3c" * 32, REGTEST))


@pytest.fixture(scope="module")
def mined(server: RegtestRpcServer) -> None:
    honest = BitcoinAdapter(
        RpcBackend(RpcClient(server.url, RPC_USER, RPC_PASSWORD)), HdWallet(b"\x3d" * 32, REGTEST)
    )
    honest.backend.mine(3, honest.wallet.address())


FEE_LIES = {
    "nan": result('{"feerate": NaN, "blocks": 2}'),
    "infinity": result('{"feerate": Infinity, "blocks": 2}'),
    "minus-infinity": result('{"feerate": -Infinity, "blocks": 2}'),
    "huge-exponent": result('{"feerate": 1e400, "blocks": 2}'),
    "string": result('{"feerate": "", "blocks": 2}'),
    "negative": result('{"feerate": -0.0001, "blocks": 2}'),
    "bool": result('{"feerate": true, "blocks": 2}'),
    "list-rate": result('{"feerate": [0.0001], "blocks": 2}'),
    "not-an-object": result("0.0001"),
    "a-list": result("[0.0001]"),
    "a-string": result('"0.0001"'),
}


@pytest.mark.parametrize("lie", FEE_LIES, ids=list(FEE_LIES))
def test_a_fee_estimate_that_is_no_rate_is_refused_and_the_fallback_is_paid(liar, mined, lie):
    liar.lies["estimatesmartfee"] = FEE_LIES[lie]
    adapter = _adapter(liar)
    with pytest.raises(BadRpcAnswer, match="estimatesmartfee"):
        adapter.backend.estimate_fee_rate()
    assert adapter.estimate_fee().rate == REGTEST.fallback_fee_rate


def test_a_fee_rate_in_coins_is_converted_exactly_and_rounded_up(liar, mined):
    # 0.00012345 BTC/kvB = 12,345 sat/kvB = 12.345 sat/vB: paid as 13, never 12.
    liar.lies["estimatesmartfee"] = result('{"feerate": 0.00012345, "blocks": 2}')
    assert _adapter(liar).backend.estimate_fee_rate() == 13
    # 0.00001001 BTC/kvB: float arithmetic makes 1000.9999... sat/kvB; exactly it is 1,001.
    liar.lies["estimatesmartfee"] = result('{"feerate": 0.00001001, "blocks": 2}')
    assert _adapter(liar).backend.estimate_fee_rate() == 2


READ_LIES: dict[str, tuple[str, Answer, Callable[[BitcoinAdapter], object]]] = {
    "count-string": ("getblockcount", result('"12"'), lambda a: a.tip()),
    "count-negative": ("getblockcount", result("-1"), lambda a: a.tip()),
    "count-fraction": ("getblockcount", result("1.5"), lambda a: a.tip()),
    "count-null": ("getblockcount", result("null"), lambda a: a.expiry_now()),
    "hash-number": ("getblockhash", result("123"), lambda a: a.tip()),
    "hash-not-hex": ("getblockhash", result('"' + "zz" * 32 + '"'), lambda a: a.tip()),
    "block-number": ("getblock", result("5"), lambda a: a.tip()),
    "block-not-hex": ("getblock", result('"xyz"'), lambda a: a.index.sync()),
    "block-garbage": ("getblock", result('"' + "00" * 81 + '"'), lambda a: a.index.sync()),
    "block-short": ("getblock", result('"0011"'), lambda a: a.tip()),
    "mempool-object": ("getrawmempool", result("{}"), lambda a: a.spendable()),
    "mempool-bad-txid": ("getrawmempool", result("[7]"), lambda a: a.spendable()),
    "info-list": ("getblockchaininfo", result("[]"), lambda a: a.backend.median_time_past()),
    "mtp-string": (
        "getblockchaininfo",
        result('{"mediantime": "soon"}'),
        lambda a: a.backend.median_time_past(),
    ),
    "accept-object": ("testmempoolaccept", result("{}"), lambda a: a.backend.test_accept(b"")),
    "accept-not-bool": (
        "testmempoolaccept",
        result('[{"allowed": "yes"}]'),
        lambda a: a.backend.test_accept(b""),
    ),
    "json-list": ("getblockcount", body("[1, 2]"), lambda a: a.tip()),
    "json-nan": ("getblockcount", body("NaN"), lambda a: a.tip()),
    "json-deep": ("getblockcount", body("[" * 100_000 + "]" * 100_000), lambda a: a.tip()),
    # Deep enough to overflow the C stack under a raised recursion limit (it crashed a run).
    "json-deeper": ("getblockcount", body("[" * 2_000_000), lambda a: a.tip()),
    "json-many": ("getblockcount", body("[" + "[]," * 5000 + "[]]"), lambda a: a.tip()),
    "json-huge-int": ("getblockcount", body("9" * 5000), lambda a: a.tip()),
    "error-string": (
        "getblockcount",
        body('{"result": null, "error": "no", "id": 1}'),
        lambda a: a.tip(),
    ),
    "error-code-text": (
        "getblockcount",
        body('{"result": null, "error": {"code": "x", "message": "m"}, "id": 1}'),
        lambda a: a.tip(),
    ),
    "other-request": (
        "getblockcount",
        body('{"result": 3, "error": null, "id": -4}'),
        lambda a: a.tip(),
    ),
}


@pytest.mark.parametrize("lie", READ_LIES, ids=list(READ_LIES))
def test_every_malformed_answer_is_a_chain_error(liar, mined, lie):
    method, answer, read = READ_LIES[lie]
    liar.lies[method] = answer
    with pytest.raises(ChainError) as err:
        read(_adapter(liar))
    assert isinstance(err.value, (BadRpcAnswer, BadBlock)), err.value
    if isinstance(err.value, BadRpcAnswer):
        assert method in str(err.value)


def test_a_block_that_hashes_to_another_is_refused(liar, mined, server):
    upstream = RpcClient(server.url, RPC_USER, RPC_PASSWORD)
    other = upstream.call("getblock", upstream.call("getblockhash", 1), 0)
    liar.lies["getblock"] = result(f'"{other}"')
    with pytest.raises(BadBlock, match="hashes to"):
        _adapter(liar).tip()


@pytest.mark.timeout(60)
def test_a_node_that_trickles_its_answer_is_cut_off_at_the_call_deadline(liar, mined):
    """The socket timeout is per read: a node sending a byte every 0.2 s never trips a 1 s
    one. The call has one deadline for the whole exchange."""
    liar.lies["getblockcount"] = result("5" + " " * 200)  # ~40 s at one byte per 0.2 s
    liar.trickle["getblockcount"] = 0.2
    with pytest.raises(ChainError, match="deadline passed"):
        _adapter(liar, timeout=1.0).backend.block_count()


def test_a_mempool_of_made_up_txids_costs_a_bounded_number_of_calls_per_read(liar, mined):
    """Review (huge answers): every read of the mempool (each tick, per chain) asked the node
    for every listed transaction, so a node listing a million made-up txids (or a busy mainnet
    node's 100,000 real ones) held the watchtower for that many calls on every tick. Each read
    now fetches at most MEMPOOL_FETCHES_PER_READ txids not read before; what was read is kept
    while the node lists it."""
    from kofo.settlement.chains.bitcoin.backend import MEMPOOL_FETCHES_PER_READ

    listed = [f"{n:064x}" for n in range(1, 2 * MEMPOOL_FETCHES_PER_READ + 501)]
    asked: list[str] = []

    def getrawtransaction(rid: int) -> bytes:
        asked.append("")
        if len(asked) == 8:  # the 8th txid listed is a transaction (read in listed order)
            return f'{{"result": "c0ffee", "error": null, "id": {rid}}}'.encode()
        error = '{"code": -5, "message": "No such mempool or blockchain transaction"}'
        return f'{{"result": null, "error": {error}, "id": {rid}}}'.encode()

    liar.lies["getrawmempool"] = result(json.dumps(listed))
    liar.lies["getrawtransaction"] = getrawtransaction
    backend = _adapter(liar).backend
    reads = []
    for _ in range(4):  # bounded: the listing takes three reads, the fourth asks nothing
        before = len(asked)
        reads.append((backend.mempool_raw(), len(asked) - before))
    assert [calls for _, calls in reads] == [1000, 1000, 500, 0]
    assert all(raws == [bytes.fromhex("c0ffee")] for raws, _ in reads)
