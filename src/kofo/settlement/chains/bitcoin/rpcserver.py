"""Serve an :class:`EmbeddedChain` over HTTP in the Bitcoin Core JSON-RPC dialect.

Only the subset KOFO uses, so other processes (other nodes, the demo) can share one chain:
getblockchaininfo, getblockcount, getblockhash, getblock, getblockheader, getrawtransaction,
getrawmempool, sendrawtransaction, testmempoolaccept, estimatesmartfee, generatetoaddress.
Binds 127.0.0.1 only; HTTP basic auth.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import threading
from collections.abc import Callable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bitcointx.core import b2lx
from bitcointx.segwit_addr import decode

from kofo.errors import ChainError, InvalidInput, KofoError, TxRejected
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.embedded import AlreadyInChain, EmbeddedChain, MissingInputs

# Bitcoin Core's RPC error codes (src/rpc/protocol.h), so clients handle us like a real node.
RPC_MISC_ERROR = -1
RPC_INVALID_PARAMETER = -8
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_ADDRESS = -5
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27


class _RpcFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def address_to_script(address: str) -> bytes:
    """scriptPubKey of a bech32 segwit ``address`` (any HRP: bcrt, rltc, ...)."""
    hrp = address.rpartition("1")[0].lower()
    if not hrp:
        raise InvalidInput(f"not a bech32 address: {address!r}")
    version, program = decode(hrp, address)
    if version is None or program is None:
        raise InvalidInput(f"not a segwit address: {address!r}")
    op = 0 if version == 0 else 0x50 + version
    return bytes([op, len(program), *program])


class RegtestRpcServer:
    """``with RegtestRpcServer(chain, user, password) as server: server.url``."""

    def __init__(self, chain: EmbeddedChain, user: str, password: str, *, port: int = 0) -> None:
        self.chain = chain
        self._expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        methods: dict[str, Callable[..., Any]] = {
            "getblockchaininfo": self._getblockchaininfo,
            "getblockcount": lambda: chain.height(),
            "getblockhash": self._getblockhash,
            "getblock": self._getblock,
            "getblockheader": self._getblockheader,
            "getrawtransaction": self._getrawtransaction,
            "getrawmempool": lambda: chain.mempool_txids(),
            "sendrawtransaction": self._sendrawtransaction,
            "testmempoolaccept": self._testmempoolaccept,
            "estimatesmartfee": self._estimatesmartfee,
            "generatetoaddress": self._generatetoaddress,
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                ensure_thread_params()
                if not hmac.compare_digest(self.headers.get("Authorization", ""), server._expected):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    request = json.loads(self.rfile.read(length), parse_float=Decimal)
                    body = server._dispatch(methods, request)
                except json.JSONDecodeError:
                    body = {"result": None, "error": {"code": -32700, "message": "parse error"}}
                data = _dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # requests are not worth a log line each

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> RegtestRpcServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> RegtestRpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _dispatch(self, methods: dict[str, Callable[..., Any]], request: Any) -> dict[str, Any]:
        req_id = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise _RpcFailure(-32600, "invalid request")
            method = methods.get(request["method"])
            if method is None:
                raise _RpcFailure(RPC_METHOD_NOT_FOUND, f"Method not found: {request['method']}")
            params = request.get("params") or []
            return {"result": method(*params), "error": None, "id": req_id}
        except _RpcFailure as exc:
            return {
                "result": None,
                "error": {"code": exc.code, "message": exc.message},
                "id": req_id,
            }
        except AlreadyInChain as exc:
            error = {"code": RPC_VERIFY_ALREADY_IN_CHAIN, "message": str(exc)}
        except MissingInputs as exc:
            error = {"code": RPC_VERIFY_ERROR, "message": str(exc)}
        except TxRejected as exc:
            error = {"code": RPC_VERIFY_REJECTED, "message": str(exc)}
        except (InvalidInput, ChainError, KofoError) as exc:
            error = {"code": RPC_INVALID_PARAMETER, "message": str(exc)}
        except (TypeError, ValueError) as exc:
            error = {"code": RPC_MISC_ERROR, "message": f"bad parameters: {exc}"}
        return {"result": None, "error": error, "id": req_id}

    def _getblockchaininfo(self) -> dict[str, Any]:
        tip = self.chain.height()
        best = self.chain.block_hash(tip)
        return {
            "chain": "regtest",
            "blocks": tip,
            "headers": tip,
            "bestblockhash": best,
            "mediantime": self.chain.median_time_past(),
            "time": self.chain.block_time(best),
        }

    def _getblockhash(self, height: int) -> str:
        if not isinstance(height, int) or not 0 <= height <= self.chain.height():
            raise _RpcFailure(RPC_INVALID_PARAMETER, "Block height out of range")
        return self.chain.block_hash(height)

    def _getblockheader(self, block_hash: str, verbose: bool = True) -> Any:
        raw = self.chain.block_raw(block_hash)
        if not verbose:
            return raw[:80].hex()
        height = self.chain.block_height(block_hash)
        on_best = self.chain.on_best_chain(block_hash)
        return {
            "hash": block_hash,
            "height": height,
            "time": self.chain.block_time(block_hash),
            "mediantime": self.chain.median_time_past(block_hash),
            "confirmations": self.chain.height() - height + 1 if on_best else -1,
            "previousblockhash": raw[4:36][::-1].hex(),
        }

    def _getblock(self, block_hash: str, verbosity: int = 1) -> Any:
        raw = self.chain.block_raw(block_hash)
        if verbosity == 0:
            return raw.hex()
        header = self._getblockheader(block_hash)
        from kofo.settlement.chains.bitcoin.blocks import parse_block

        header["tx"] = [b2lx(tx.GetTxid()) for tx in parse_block(raw).txs]
        return header

    def _getrawtransaction(self, txid: str, verbose: Any = False, *_: Any) -> Any:
        found = self.chain.find_tx(txid)
        if found is None:
            raise _RpcFailure(
                -5,
                "No such mempool or blockchain transaction",
            )
        raw = found.tx.serialize().hex()
        if not verbose:
            return raw
        result: dict[str, Any] = {"txid": txid, "hex": raw}
        if found.block_hash is not None and found.height is not None:
            result["blockhash"] = found.block_hash
            result["confirmations"] = self.chain.height() - found.height + 1
        return result

    def _sendrawtransaction(self, hexstring: str, *_: Any) -> str:
        return self.chain.send_raw(bytes.fromhex(hexstring))

    def _testmempoolaccept(self, rawtxs: list[str], *_: Any) -> list[dict[str, Any]]:
        results = []
        for hexstring in rawtxs:
            try:
                txid = self.chain.test_accept(bytes.fromhex(hexstring))
                results.append({"txid": txid, "allowed": True})
            except TxRejected as exc:
                results.append({"allowed": False, "reject-reason": str(exc)})
        return results

    def _estimatesmartfee(self, *_: Any) -> dict[str, Any]:
        rate = self.chain.fee_estimate_rate
        if rate:
            # What the next block needs, in Core's unit (BTC/kvB, an exact decimal).
            return {"feerate": Decimal(rate * 1000) / 100_000_000, "blocks": 2}
        # Like a fresh regtest bitcoind: no fee history, so no estimate.
        return {"errors": ["Insufficient data or no feerate found"], "blocks": 2}

    def _generatetoaddress(self, nblocks: int, address: str, *_: Any) -> list[str]:
        try:
            script = address_to_script(address)
        except InvalidInput as exc:
            raise _RpcFailure(RPC_INVALID_ADDRESS, str(exc)) from None
        return self.chain.mine(int(nblocks), script)


_DECIMAL_MARK = "\x00decimal:"
_DECIMAL_TEXT = re.compile(r'"\\u0000decimal:(-?[0-9]+(?:\.[0-9]+)?)"')


def _json_default(value: object) -> Any:
    if isinstance(value, Decimal):
        return f"{_DECIMAL_MARK}{value:f}"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(body: object) -> str:
    """JSON with every Decimal written as a number with its exact digits, as Core writes
    amounts (``json`` itself can only write a Decimal through a float or as a string)."""
    return _DECIMAL_TEXT.sub(r"\1", json.dumps(body, default=_json_default))
