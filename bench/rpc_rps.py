"""Requests/s of the embedded chain's Core RPC server: a bounded loop of ``getblockcount``.

``python -m bench.rpc_rps [N]`` prints JSON: one keep-alive client (as bitcoin-cli and
python-bitcoinrpc hold one connection) and 8 concurrent clients, N requests each.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import threading
import time

from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer

BODY = b'{"jsonrpc": "1.0", "id": 1, "method": "getblockcount", "params": []}'
AUTH = "Basic " + base64.b64encode(b"u:p").decode()


def _client(port: int, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": AUTH, "Content-Type": "application/json"}
    for _ in range(n):
        conn.request("POST", "/", BODY, headers)
        reply = conn.getresponse()
        assert reply.status == 200, reply.status
        reply.read()
    conn.close()


def main(n: int) -> dict[str, float]:
    chain = EmbeddedChain()
    server = RegtestRpcServer(chain, "u", "p").start()
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    try:
        _client(port, 50)  # warm up
        start = time.perf_counter()
        _client(port, n)
        one = n / (time.perf_counter() - start)
        threads = [threading.Thread(target=_client, args=(port, n)) for _ in range(8)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eight = 8 * n / (time.perf_counter() - start)
    finally:
        server.stop()
        chain.close()
    return {"requests": n, "one_client_rps": round(one), "eight_clients_rps": round(eight)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)))
