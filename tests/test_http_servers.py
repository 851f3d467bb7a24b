"""No request takes KOFO's HTTP servers down (issue 19 item 4, issue 16 case 7).

The same attacks against the three servers a stranger can reach: the embedded chain's Core RPC,
the embedded EVM's JSON-RPC and the swap peer channel. Each test speaks raw HTTP over a socket,
so what is checked is what the server does with the bytes, not what a polite client sends.
No assertion is about time: a stalled connection must be *closed* by the server; the loops
that wait for it are bounded and fail when it never happens.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.asgi import Limits
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer
from kofo.settlement.chains.ethereum.devnet import DevnetServer
from kofo.settlement.peer_http import PeerServer

AUTH = "Basic " + base64.b64encode(b"u:p").decode()
SHORT = Limits(max_body=1 << 16, request_timeout=2.0, write_timeout=2.0)
"""Short enough for a test to see a stalled connection dropped, long enough that a normal request
sent at once is never cut off on a loaded machine."""


class Target:
    def __init__(self, server: Any, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.server = server
        host, port = server_address(server)
        self.address = (host, port)
        self.path = path
        self.body = body
        self.headers = headers
        self.started = False

    def start(self) -> None:
        self.server.start()
        self.started = True

    def close(self) -> None:
        if self.started:
            self.server.stop()  # waits for serve_forever, so only once it runs
        else:
            for attr in ("_httpd", "_server", "_http"):
                inner = getattr(self.server, attr, None)
                if inner is not None:
                    inner.server_close()

    def request(self, body: bytes | None = None, **extra: str) -> bytes:
        body = self.body if body is None else body
        headers = {**self.headers, "Content-Length": str(len(body)), **extra}
        head = f"POST {self.path} HTTP/1.1\r\nHost: x\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return head.encode() + b"\r\n" + body


def server_address(server: Any) -> tuple[str, int]:
    for attr in ("_httpd", "_server", "_http"):
        inner = getattr(server, attr, None)
        if inner is not None:
            return inner.server_address[:2]  # type: ignore[no-any-return]
    raise AssertionError("no server socket")


@pytest.fixture(scope="module")
def btc_chain() -> Iterator[EmbeddedChain]:
    chain = EmbeddedChain()
    yield chain
    chain.close()


Factory = Callable[[Limits | None], Target]


@pytest.fixture(params=["core-rpc", "evm-devnet", "peer"])
def make(request: pytest.FixtureRequest, btc_chain: EmbeddedChain) -> Iterator[Factory]:
    made: list[Any] = []

    def factory(limits: Limits | None = None) -> Target:
        kw: dict[str, Any] = {} if limits is None else {"limits": limits}
        if request.param == "core-rpc":
            server: Any = RegtestRpcServer(btc_chain, "u", "p", **kw)
            body = b'{"method": "getblockcount", "params": [], "id": 1}'
            target = Target(server, "/", body, {"Authorization": AUTH})
        elif request.param == "evm-devnet":
            server = DevnetServer(**kw)
            body = b'{"jsonrpc": "2.0", "method": "eth_blockNumber", "params": [], "id": 1}'
            target = Target(server, "/", body, {"Content-Type": "application/json"})
        else:
            server = PeerServer(Ed25519PrivateKey.generate(), lambda body, sender: None, **kw)
            target = Target(server, "/kofo/v1/swap", b"\xa0", {})
        made.append(target)
        return target

    yield factory
    for target in made:
        with contextlib.suppress(Exception):
            target.close()


def _status(sock: socket.socket) -> int:
    """The status of the answer on ``sock`` (reads until the head is complete)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed without an answer (got {data!r})")
        data += chunk
    return int(data.split(b" ", 2)[1])


def _closed_by_server(sock: socket.socket, trickle: bytes = b"", rounds: int = 400) -> bool:
    """Send ``trickle`` one byte per round (0.05 s apart), then wait; True once the server
    closes the connection. Bounded: ``rounds`` rounds of at most 0.05 s each, plus 5 s."""
    sock.settimeout(0.05)
    for i in range(rounds):
        try:
            if i < len(trickle):
                sock.sendall(trickle[i : i + 1])
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True
        # An answer (a 408-like refusal) is fine too, as long as the connection then closes.
        sock.settimeout(5)
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True
    return False


@pytest.mark.timeout(120)
def test_two_hundred_clients_arriving_at_once_are_all_queued_and_served(make: Factory) -> None:
    target = make(None)
    # The server is listening but not yet accepting: every connection must fit the kernel's
    # queue (Python's default backlog of 5 leaves the 7th client's handshake unanswered).
    socks = []
    try:
        for _ in range(200):
            sock = socket.create_connection(target.address, timeout=3)
            socks.append(sock)
        for sock in socks:
            sock.sendall(target.request())
        target.start()
        statuses = []
        for sock in socks:
            sock.settimeout(60)
            statuses.append(_status(sock))
    finally:
        for sock in socks:
            sock.close()
    assert len(statuses) == 200
    assert all(s < 500 for s in statuses), statuses


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "stall",
    [
        b"",  # connects and sends nothing
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 300,  # headers a byte at a time
        b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"{" * 300,  # body, likewise
    ],
    ids=["idle", "slow-headers", "slow-body"],
)
def test_a_stalled_connection_is_dropped_and_others_are_served(make: Factory, stall: bytes):
    target = make(SHORT)
    target.start()
    slow = [socket.create_connection(target.address, timeout=5) for _ in range(3)]
    try:
        # While the slow clients stall, a normal client is answered.
        with socket.create_connection(target.address, timeout=30) as ok:
            ok.sendall(target.request())
            assert _status(ok) < 500
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda s=s: results.append(_closed_by_server(s, stall)))
            for s in slow
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [True, True, True]
    finally:
        for s in slow:
            s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "value", ["abc", "-1", "1e3", "0x10", " 12 x", "3, 4", "99999999999999999999"]
)
def test_a_malformed_content_length_is_a_400(make: Factory, value: str) -> None:
    target = make(None)
    target.start()
    with socket.create_connection(target.address, timeout=30) as sock:
        sock.sendall(target.request(**{"Content-Length": value}))
        assert _status(sock) == 400


@pytest.mark.timeout(60)
def test_conflicting_framing_is_refused(make: Factory) -> None:
    target = make(None)
    target.start()
    for extra in (
        {"Transfer-Encoding": "chunked"},
        {"Transfer-Encoding": "chunked", "X": "y"},
    ):
        with socket.create_connection(target.address, timeout=30) as sock:
            head = target.request(**extra)
            sock.sendall(head)
            assert _status(sock) in (400, 501)


@pytest.mark.timeout(60)
def test_a_body_over_the_cap_is_a_413_without_being_read(make: Factory) -> None:
    target = make(None)
    target.start()
    with socket.create_connection(target.address, timeout=30) as sock:
        head = target.request(b"", **{"Content-Length": str(64 << 20)})
        sock.sendall(head)  # the 64 MiB never follow
        assert _status(sock) == 413


@pytest.mark.timeout(60)
def test_the_servers_still_answer_after_every_attack(make: Factory) -> None:
    target = make(SHORT)
    target.start()
    for raw in (
        b"\x16\x03\x01\x02\x00" + b"\x00" * 100,  # a TLS hello
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # too many headers
        b"POST /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",  # too long a request line
    ):
        with socket.create_connection(target.address, timeout=30) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(raw)
                sock.recv(4096)
    with socket.create_connection(target.address, timeout=30) as sock:
        sock.sendall(target.request())
        assert _status(sock) < 500


@pytest.mark.timeout(60)
def test_a_deeply_nested_body_is_refused_and_does_not_kill_the_process(make: Factory) -> None:
    # py-evm (imported here, as in every node) raises Python's recursion limit to 100,000: a
    # JSON decoder following 200,000 brackets overflowed the handler thread's C stack and the
    # whole process died (SIGSEGV).
    target = make(None)
    target.start()
    deep = b"\x81" * 100_000 + b"\x00" if target.path != "/" else b"[" * 100_000
    with socket.create_connection(target.address, timeout=30) as sock:
        sock.sendall(target.request(deep))
        assert _status(sock) < 600  # an answer (an error), not a dead server
    with socket.create_connection(target.address, timeout=30) as sock:
        sock.sendall(target.request())
        assert _status(sock) < 500
