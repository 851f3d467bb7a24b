"""`kofo node` stopped during its start (issue 14, session 6, bug 2): a SIGTERM or SIGINT that
came while the daemon was still starting (the wallet's scrypt, connecting to the chains,
reading the ledger, the journal's re-sends) was honoured only once the start ended, which a
ledger that does not answer makes its RPC timeout (here 600 s). Now the signal handlers are
installed before the start, its blocking steps run in threads a stop does not wait for, and
the process exits at once with code 0 and a message saying so; the home is unlocked and its
journals open again at the next start."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import pytest

from kofo.node.home import init_home
from kofo.settlement import keystore
from tests.node.test_devnet_and_node import PASS, Proc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EXIT_WAIT = 60.0
"""Bound on the exit after the signal (a bound, not a timing goal: the old daemon waited for
the ledger's 600 s timeout)."""


class SilentServer:
    """A loopback TCP server that accepts connections and never answers (a hung ledger)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)  # accept wakes up to see close(): a blocked one holds the port
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        self._closed = False
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        for _ in range(10_000):  # bounded: 2,000 s of polls at most
            if self._closed:
                break
            try:
                conn, _addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self.conns.append(conn)
            self.accepted.set()
        self.sock.close()
        self.stopped.set()

    def close(self) -> None:
        self._closed = True
        self.stopped.wait(5)
        for c in self.conns:
            c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _home(tmp_path: Path, ledger_port: int) -> Path:
    home = tmp_path / "node"
    init_home(
        home,
        PASS,
        name="starting",
        ledger_url=f"http://127.0.0.1:{ledger_port}",
        scrypt_n=keystore.MIN_N,
    )
    cfg = home / "config.toml"
    text = cfg.read_text()
    text = text.replace("timeout = 10.0", "timeout = 600.0")
    text = text.replace('listen = "127.0.0.1:9730"', f'listen = "127.0.0.1:{_free_port()}"')
    text = text.replace('bind = "127.0.0.1:9731"', f'bind = "127.0.0.1:{_free_port()}"')
    cfg.write_text(text)
    return home


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_start_stops_the_node_promptly_and_the_next_start_works(
    tmp_path: Path, sig: signal.Signals
) -> None:
    ledger = SilentServer()
    home = _home(tmp_path, ledger.port)
    node = second = None
    try:
        node = Proc("node", "--home", str(home), cwd=tmp_path)
        # the start is reading the ledger, which never answers (600 s RPC timeout)
        assert ledger.accepted.wait(EXIT_WAIT), "the node never called the ledger"
        assert node.proc.poll() is None
        node.proc.send_signal(sig)
        rc = node.proc.wait(timeout=EXIT_WAIT)
        out = node.rest()
        assert rc == 0, out
        assert f"stopped by {sig.name} during its start" in out, out
        assert "Traceback" not in out, out
        # the home is unlocked and its journals open: with the ledger gone (refused at once,
        # an outage the node waits out), a second node starts, serves and stops cleanly
        ledger.close()
        second = Proc("node", "--home", str(home), cwd=tmp_path)
        second.wait_line(lambda s: "node 'starting' started" in s, "the second start")
        assert second.stop(signal.SIGTERM) == 0
        out2 = second.rest()
        assert "during its start" not in out2 and "Traceback" not in out2, out2
        assert "node 'starting' stopped" in out2, out2
    finally:
        ledger.close()
        for p in (node, second):
            if p is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
