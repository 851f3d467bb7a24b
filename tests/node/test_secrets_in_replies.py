"""A read-only API client must not learn the node's RPC credentials from its error texts.

A hosted Ethereum endpoint carries its API key in the URL (``https://host/v3/<key>``, or
``https://user:pass@host``); the HTTP library's errors quote that URL. The node used to put
such errors verbatim into ``GET /v1/info`` (a chain's error), a trade's error and the event
stream, all readable with ``api.readonly.token``. Here the Ethereum RPC sits behind a real
HTTP proxy whose path is the key; once the node runs, the proxy refuses (401) and the node's
replies are searched for the key."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kofo.node.api import create_app
from kofo.node.config import EthereumChainConfig, load_config
from kofo.node.daemon import Node
from kofo.node.devnet import start_devnet
from kofo.node.home import init_home
from kofo.wallet import NodeWallet
from tests.clearance.helpers import ledger_params

pytestmark = [pytest.mark.timeout(240)]

PASS = "secrets test passphrase"
KEY = "c0ffee5ecretapikey0123456789abcdef"
USER, PASSWORD = "rpcuser", "s3cretRpcPassw0rd"


class _Proxy:
    """Forwards JSON-RPC posts on ``/v3/KEY`` to ``upstream``; 401 once ``refuse`` is set."""

    def __init__(self, upstream: str) -> None:
        self.refuse = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if proxy.refuse.is_set() or self.path != f"/v3/{KEY}":
                    self.send_response(401)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                req = urllib.request.Request(
                    upstream, data=body, headers={"content-type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=30) as r:
                    data = r.read()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Node, _Proxy]]:
    home = tmp_path / "n"
    home.mkdir(mode=0o700)
    wallet = NodeWallet.create(home / "wallet.json", PASS)
    devnet = start_devnet(fund=[wallet.eth_account().address], ledger_params=ledger_params())
    proxy = _Proxy(devnet.eth_server.url)
    try:
        desc = devnet.describe()
        init_home(
            home,
            PASS,
            name="n",
            ledger_url=desc["ledger"]["url"],
            chains=desc["chains"],
            force=True,
        )
        cfg = load_config(home)
        secret_url = f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}/v3/{KEY}"
        chains = {
            name: replace(c, rpc_url=secret_url) if isinstance(c, EthereumChainConfig) else c
            for name, c in cfg.chains.items()
        }
        node = Node(replace(cfg, chains=chains), wallet, passphrase=PASS, paillier_bits=1024)
        yield node, proxy
    finally:
        proxy.close()
        devnet.stop()


def _assert_no_secret(text: str, where: str) -> None:
    for secret in (KEY, PASSWORD):
        assert secret not in text, f"{where} shows the RPC credential: {text[:300]}"


def test_rpc_credentials_never_reach_the_read_only_api(
    proxied: tuple[Node, _Proxy], caplog: pytest.LogCaptureFixture
) -> None:
    node, proxy = proxied

    async def run() -> tuple[str, str]:
        await node.start()
        try:
            proxy.refuse.set()  # the endpoint now answers 401 (its error quotes the URL)
            await node._refresh_chains()
            info = await node.info()
            eth = next(c for c in info.chains if c.chain == "eth")
            assert eth.error, "the refused endpoint is reported"
            app = create_app(node, token="a" * 64, readonly_token="b" * 64)
            with TestClient(app, base_url="http://127.0.0.1") as client:
                ro = {"authorization": "Bearer " + "b" * 64}
                got = client.get("/v1/info", headers=ro)
                events = client.get("/v1/events", headers=ro, params={"limit": 1000})
            return got.text, events.text
        finally:
            await node.stop()

    info_text, events_text = asyncio.run(run())
    assert "401" in info_text  # the error is still there, readable
    _assert_no_secret(info_text, "GET /v1/info")
    _assert_no_secret(events_text, "GET /v1/events")
    _assert_no_secret(caplog.text, "the node's log")


def test_the_redactor_masks_each_credential_of_an_endpoint_url() -> None:
    from kofo.node.redact import Redactor, public_url

    url = f"https://{USER}:{PASSWORD}@eth.example:8545/v3/{KEY}?apikey=Q1w2e3r4"
    redact = Redactor.for_urls([url, "http://127.0.0.1:26657"], ["btcpassw0rd"])
    text = (
        f"HTTPError: 401 Client Error: Unauthorized for url: {url}; "
        f"HTTPSConnectionPool(host='eth.example', port=8545): Max retries exceeded with url: "
        f"/v3/{KEY}?apikey=Q1w2e3r4; rpc btcpassw0rd refused; ledger http://127.0.0.1:26657"
    )
    out = redact(text)
    for secret in (KEY, PASSWORD, USER, "Q1w2e3r4", "btcpassw0rd"):
        assert secret not in out, out
    assert "eth.example" in out and "http://127.0.0.1:26657" in out  # where, not who
    assert redact.deep({"reason": [text], "n": 1}) == {"reason": [out], "n": 1}
    # any URL's user info, even one not configured
    assert redact("at http://bob:hunter22@10.0.0.1/") == "at http://***@10.0.0.1/"
    assert public_url(url) == "https://eth.example:8545/***"
    assert public_url("http://127.0.0.1:26657") == "http://127.0.0.1:26657"


def test_ledger_client_errors_name_the_host_not_the_credential() -> None:
    import socket

    from kofo.node.ledger_client import LedgerClient, LedgerError

    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        client = LedgerClient(f"http://127.0.0.1:{port}/v3/{KEY}", timeout=2)
        with pytest.raises(LedgerError) as info:
            client.status()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(client)
