"""The ABCI socket server against a plain TCP client: framing, pipelining and answers.

CometBFT pipelines many requests per write (a CheckTx per gossiped tx, then a Flush) and may
split one across writes; the server must answer every request, in order, whatever the
framing."""

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from kofo.clearance.abci.gen.tendermint.abci import types_pb2 as abci
from kofo.clearance.abci.server import MAX_REQUEST_BYTES, AbciServer
from kofo.clearance.app import LedgerApp
from kofo.clearance.attest import uvarint
from kofo.clearance.errors import abci_code
from kofo.clearance.store import MerkleStore
from kofo.wire.envelope import BadSignature

from .helpers import Party, commit_tx, ledger_params, make_order

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server() -> Iterator[tuple[int, LedgerApp]]:
    app = LedgerApp(MerkleStore(), ledger_params())
    app.init_chain()
    srv = AbciServer(app, "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    ports: list[int] = []

    async def run() -> None:
        async with await asyncio.start_server(srv._serve_conn, "127.0.0.1", 0) as listener:
            ports.append(listener.sockets[0].getsockname()[1])
            started.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield ports[0], app
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _frame(req: abci.Request) -> bytes:
    data = req.SerializeToString()
    return uvarint(len(data)) + data


def _read_responses(sock: socket.socket, count: int) -> list[abci.Response]:
    buf, out = b"", []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection early"
        buf += chunk
        while buf:
            size, shift, i = 0, 0, 0
            while True:
                if i >= len(buf):
                    break
                byte = buf[i]
                i += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if byte & 0x80 or i + size > len(buf):
                break
            out.append(abci.Response.FromString(buf[i : i + size]))
            buf = buf[i + size :]
    return out


def _requests() -> tuple[list[abci.Request], int]:
    alice, m1, m2 = (Party.make(i) for i in range(3))
    order = make_order([alice, m1, m2])
    good = commit_tx(order, [alice, m1, m2], alice)
    bad = commit_tx(order, [alice, m1], alice)  # a party signature missing
    reqs = [
        abci.Request(echo=abci.RequestEcho(message="hello")),
        abci.Request(check_tx=abci.RequestCheckTx(tx=good)),
        abci.Request(check_tx=abci.RequestCheckTx(tx=bad)),
        abci.Request(check_tx=abci.RequestCheckTx(tx=good, type=abci.RECHECK)),
        abci.Request(info=abci.RequestInfo()),
        abci.Request(flush=abci.RequestFlush()),
    ]
    return reqs, abci_code(BadSignature("x"))


def _assert_answers(resps: list[abci.Response], bad_code: int) -> None:
    kinds = [r.WhichOneof("value") for r in resps]
    assert kinds == ["echo", "check_tx", "check_tx", "check_tx", "info", "flush"]
    assert resps[0].echo.message == "hello"
    assert resps[1].check_tx.code == 0
    assert resps[2].check_tx.code == bad_code
    assert "signature" in resps[2].check_tx.log
    assert resps[3].check_tx.code == 0
    assert resps[4].info.last_block_height == 0


def test_pipelined_requests_in_one_write_are_all_answered_in_order(server):
    port, _ = server
    reqs, bad_code = _requests()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(_frame(r) for r in reqs))
        _assert_answers(_read_responses(sock, len(reqs)), bad_code)


def test_requests_split_anywhere_across_writes_are_reassembled(server):
    port, _ = server
    reqs, bad_code = _requests()
    data = b"".join(_frame(r) for r in reqs)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(data[:1])  # the first length prefix alone, then odd-sized pieces
        for i in range(1, len(data), 997):
            sock.sendall(data[i : i + 997])
        _assert_answers(_read_responses(sock, len(reqs)), bad_code)


def test_oversize_length_prefix_closes_the_connection(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(uvarint(MAX_REQUEST_BYTES + 1))
        assert sock.recv(1) == b""  # closed without an answer
