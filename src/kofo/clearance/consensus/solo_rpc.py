"""The solo ledger served over CometBFT's RPC, so several local nodes share one ledger.

The node's :class:`kofo.node.ledger_client.LedgerClient` talks to a CometBFT validator; this
server answers the same subset of CometBFT v0.38's JSON-RPC with the same JSON, so the client
(and every node behind it) takes one code path for both, as the embedded chains serve Core's
and Ethereum's JSON-RPC. Served (POST JSON-RPC 2.0, batches, or GET ``/method?arg=...``):

- ``broadcast_tx_sync {tx: base64}`` -- CheckTx, then the mempool: ``{code, data, log,
  codespace, hash}``;
- ``abci_query {path, data: hex}`` -- ``{response: {code, log, info, index, key, value: base64,
  proofOps, height, codespace}}``;
- ``status``, ``block {height?}``, ``block_results {height}``, ``tx {hash: base64}``.

Integers are JSON strings where CometBFT writes them so (heights, ``index`` in a query), hashes
upper-case hex, byte fields base64, times RFC 3339 UTC. Errors are CometBFT's: ``-32602``
invalid params, ``-32601`` unknown method, ``-32603`` with CometBFT's ``data`` text (tx not
found, height out of range, tx already in cache, mempool full).

What differs, because there is no consensus to show: headers carry no commit, validator or
evidence hashes that mean anything (empty strings), ``last_commit`` is absent, and the block
hash is SHA-256 over the header fields shown (it identifies the block, it proves nothing). The
index of blocks and txs (for ``block``, ``block_results``, ``tx``) covers the blocks produced
since the server started, the last :data:`MAX_INDEXED_TXS` transactions' worth, like a pruned
CometBFT node; the state itself (``abci_query``) is always whole.

Blocks: a producer thread makes one as soon as the mempool holds a transaction, at most one per
``block_interval`` seconds (a batch gathers meanwhile), and none while the mempool is empty.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from kofo.clearance.app import TxResult
from kofo.clearance.consensus.http_shell import LoopbackHttpServer
from kofo.clearance.consensus.solo import SoloChain
from kofo.errors import ConfigError, KofoError

_log = logging.getLogger(__name__)

RPC_VERSION = "0.38.17"
"""The CometBFT release whose RPC this server's answers follow."""
CODESPACE = "kofo"
"""The ABCI server's codespace for a refusal (kofo.clearance.abci.server.CODESPACE)."""

BLOCK_INTERVAL = 0.1
"""Seconds between blocks while transactions arrive: CometBFT test networks run 100-200 ms
``timeout_commit``; shorter only spends CPU on blocks of one tx."""
MAX_MEMPOOL = 10_000
"""Transactions waiting for a block (two full solo blocks); past it a broadcast is refused
as CometBFT refuses one to a full mempool, and the client retries later."""
MAX_INDEXED_TXS = 200_000
"""Transactions kept in the ``tx``/``block`` index (a few hundred MB at most)."""

_PARSE_ERROR = -32700
_METHOD_NOT_FOUND = -32601
_INVALID_PARAMS = -32602
_INTERNAL = -32603


class _RpcError(Exception):
    def __init__(self, code: int, message: str, data: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _internal(data: str) -> _RpcError:
    return _RpcError(_INTERNAL, "Internal error", data)


def _bad_params(data: str) -> _RpcError:
    return _RpcError(_INVALID_PARAMS, "Invalid params", data)


@dataclass(frozen=True, slots=True)
class _BlockRecord:
    height: int
    time: int
    txs: tuple[bytes, ...]
    hash: str
    last_hash: str
    app_hash_before: bytes
    app_hash_after: bytes
    results: tuple[TxResult, ...]


def rfc3339(unix: int) -> str:
    """Go's RFC3339Nano for a whole second: no fraction."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _tx_hash(tx: bytes) -> str:
    return hashlib.sha256(tx).hexdigest().upper()


def _events(result: TxResult) -> list[dict[str, Any]]:
    return [
        {
            "type": kind,
            "attributes": [{"key": k, "value": v, "index": True} for k, v in attrs],
        }
        for kind, attrs in result.events
    ]


def _exec_result(result: TxResult) -> dict[str, Any]:
    return {
        "code": result.code,
        "data": None,
        "log": result.log,
        "info": "",
        "gas_wanted": "0",
        "gas_used": "0",
        "events": _events(result),
        "codespace": CODESPACE if result.code else "",
    }


class SoloLedgerRpc:
    """``with SoloLedgerRpc(SoloChain(app)) as rpc: LedgerClient(rpc.url)``."""

    def __init__(
        self,
        chain: SoloChain,
        *,
        port: int = 0,
        chain_id: str = "kofo-solo",
        block_interval: float = BLOCK_INTERVAL,
    ) -> None:
        if not 0 < block_interval <= 60:
            raise ConfigError(f"block_interval must be in (0, 60] seconds, got {block_interval}")
        self.chain = chain
        self.chain_id = chain_id
        self._interval = block_interval
        # One lock around the app: a block being applied and a query reading the store must not
        # interleave (the store is not safe for concurrent reads and writes).
        self._lock = threading.RLock()
        self._wake = threading.Condition()
        self._stopping = False
        self._blocks: OrderedDict[int, _BlockRecord] = OrderedDict()
        self._txs: dict[str, tuple[int, int]] = {}  # hash -> (height, index)
        self._indexed = 0
        self._pending: set[str] = set()  # hashes in the mempool (CometBFT's tx cache)
        self._started_height = chain.app.height
        self._last_hash = ""
        self._producer = threading.Thread(target=self._produce, name="kofo-solo-blocks")
        self._http = LoopbackHttpServer(self._serve_http, port=port)
        self._port = self._http.port  # kept across pause()/resume()
        self._serving = threading.Event()  # cleared while paused: no RPC, no blocks
        self._serving.set()
        self._methods = {
            "broadcast_tx_sync": self._broadcast_tx_sync,
            "abci_query": self._abci_query,
            "status": self._status,
            "block": self._block,
            "block_results": self._block_results,
            "tx": self._tx,
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def paused(self) -> bool:
        return not self._serving.is_set()

    def pause(self) -> None:
        """An outage, as clients and the chain see it (tests and ``kofo devnet``): the RPC
        port is closed (connections refused) and no block is made until :meth:`resume`;
        nothing of the state or the mempool is lost."""
        if self.paused:
            return
        self._serving.clear()
        self._http.stop()
        _log.warning("solo ledger: paused (RPC closed, no blocks)")

    def resume(self) -> None:
        """Serve again on the same port and make blocks again."""
        if not self.paused:
            return
        self._http = LoopbackHttpServer(self._serve_http, port=self._port).start()
        self._serving.set()
        _log.warning("solo ledger: resumed on %s", self.url)

    def start(self) -> SoloLedgerRpc:
        self._producer.start()
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop serving, then let the producer commit what the mempool holds."""
        if not self.paused:
            self._http.stop()
        self._serving.set()
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._producer.is_alive():
            self._producer.join()

    def __enter__(self) -> SoloLedgerRpc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- blocks ------------------------------------------------------------------------------

    def _attest_due(self) -> bool:
        """Whether a block is due without any tx: the producer observes the chains (solo
        attestation) and committed orders have legs whose outcome can still change, or the
        observer sees a bond in the vault that the ledger does not hold yet. Like CometBFT
        (``create_empty_blocks``), the ledger then keeps making blocks, so an outcome or a bond
        seen on a chain is attested on an idle ledger too."""
        if self.chain.app.observer is None:
            return False
        with self._lock:
            if self.chain.app.pending_legs():
                return True
        # Outside the lock: the vault is read over the network, and a slow Ethereum node must
        # not hold up the RPC. Only this thread commits blocks, so the state it reads is still.
        return self.chain.app.bonds_to_attest()

    def _produce(self) -> None:
        while True:
            # read each time: an observer may be attached after the server started (the devnet
            # attaches it once its contracts are deployed)
            observing = self.chain.app.observer is not None
            due = self._attest_due()  # read outside the condition (it takes the app lock)
            with self._wake:
                if not self._stopping and self.chain.pending == 0 and not due:
                    # with an observer, look again each interval for legs to attest
                    self._wake.wait(self._interval if observing else None)
                    continue
                stopping = self._stopping
                if not stopping:
                    # Let a batch gather: one block per interval, not one per transaction.
                    self._wake.wait(self._interval)
                    stopping = self._stopping
            if not stopping and not self._serving.is_set():
                self._serving.wait()  # paused: no blocks until resume() (or stop())
                continue
            if self.chain.pending or (due and not stopping):
                try:
                    self.produce_block()
                except Exception:  # a bug in the app must not kill the producer silently
                    _log.exception("solo ledger: producing a block failed")
                    if stopping:
                        return  # never spin at shutdown on a block that cannot be made
                    time.sleep(self._interval)
            if stopping and self.chain.pending == 0:
                return

    def produce_block(self) -> int:
        """Apply the mempool's next block now; returns its height (also for tests)."""
        with self._lock:
            before = self.chain.app.app_hash
            result = self.chain.produce_block()
            block = self.chain.last_block
            assert block is not None and block.height == result.height
            header = {
                "chain_id": self.chain_id,
                "height": block.height,
                "time": block.time,
                "last_block_hash": self._last_hash,
                "txs": [_tx_hash(t) for t in block.txs],
                "app_hash": before.hex(),
            }
            digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()
            record = _BlockRecord(
                block.height,
                block.time,
                block.txs,
                digest.upper(),
                self._last_hash,
                before,
                result.app_hash,
                result.results,
            )
            self._last_hash = record.hash
            self._blocks[record.height] = record
            for index, tx in enumerate(block.txs):
                digest_tx = _tx_hash(tx)
                self._txs[digest_tx] = (record.height, index)
                self._pending.discard(digest_tx)
            self._indexed += len(block.txs)
            while self._indexed > MAX_INDEXED_TXS and len(self._blocks) > 1:
                _, old = self._blocks.popitem(last=False)
                self._indexed -= len(old.txs)
                for tx in old.txs:
                    if self._txs.get(_tx_hash(tx), (0,))[0] == old.height:
                        del self._txs[_tx_hash(tx)]
            return record.height

    # -- HTTP / JSON-RPC ---------------------------------------------------------------------

    def _serve_http(self, verb: str, path: str, body: bytes) -> tuple[int, bytes]:
        if verb == "GET":
            return self._serve_uri(path)
        try:
            request = json.loads(body)
        except (ValueError, RecursionError) as exc:
            err = {"code": _PARSE_ERROR, "message": "Parse error. Invalid JSON", "data": str(exc)}
            return 500, json.dumps({"jsonrpc": "2.0", "error": err}).encode()
        if isinstance(request, list):
            if not request:
                err = {"code": _INVALID_PARAMS - 2, "message": "Invalid Request"}
                return 500, json.dumps({"jsonrpc": "2.0", "error": err}).encode()
            return 200, json.dumps([self._one(r) for r in request]).encode()
        return 200, json.dumps(self._one(request)).encode()

    def _serve_uri(self, path: str) -> tuple[int, bytes]:
        parsed = urllib.parse.urlsplit(path)
        name = parsed.path.strip("/")
        if name not in self._methods:
            return 404, b'{"error":"unknown method; POST JSON-RPC or GET /status"}'
        params: dict[str, Any] = {}
        try:
            for key, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
                params[key] = _uri_arg(key, value)
        except _RpcError as exc:
            error = {"code": exc.code, "message": exc.message, "data": exc.data}
            return 200, json.dumps({"jsonrpc": "2.0", "id": -1, "error": error}).encode()
        reply = self._one({"jsonrpc": "2.0", "id": -1, "method": name, "params": params})
        return 200, json.dumps(reply).encode()

    def _one(self, request: Any) -> dict[str, Any]:
        rid = request.get("id") if isinstance(request, dict) else None
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        try:
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise _RpcError(-32600, "Invalid Request", "no method")
            method = self._methods.get(request["method"])
            if method is None:
                raise _RpcError(_METHOD_NOT_FOUND, "Method not found")
            params = request.get("params") or {}
            if not isinstance(params, dict):
                raise _bad_params("params must be an object of named arguments")
            reply["result"] = method(params)
        except _RpcError as exc:
            error = {"code": exc.code, "message": exc.message}
            if exc.data:
                error["data"] = exc.data
            reply["error"] = error
        except Exception:
            _log.exception("ledger rpc %r failed", request)
            reply["error"] = {"code": _INTERNAL, "message": "Internal error"}
        return reply

    # -- methods -----------------------------------------------------------------------------

    def _broadcast_tx_sync(self, params: dict[str, Any]) -> dict[str, Any]:
        tx = _b64_param(params, "tx")
        digest = _tx_hash(tx)
        with self._wake:
            if digest in self._pending or digest in self._txs:
                raise _internal("tx already exists in cache")
            if self.chain.pending >= MAX_MEMPOOL:
                raise _internal(
                    f"mempool is full: number of txs {self.chain.pending} (max: {MAX_MEMPOOL})"
                )
            self._pending.add(digest)
        result = self.chain.submit(tx)  # CheckTx is stateless: no need to hold the app lock
        with self._wake:
            if result.ok:
                self._wake.notify_all()
            else:
                self._pending.discard(digest)
        return {
            "code": result.code,
            "data": "",
            "log": result.log,
            "codespace": CODESPACE if result.code else "",
            "hash": digest,
        }

    def _abci_query(self, params: dict[str, Any]) -> dict[str, Any]:
        path = params.get("path", "")
        if not isinstance(path, str):
            raise _bad_params("path must be a string")
        data_hex = params.get("data", "")
        if not isinstance(data_hex, str):
            raise _bad_params("data must be hex")
        try:
            data = bytes.fromhex(data_hex.removeprefix("0x"))
        except ValueError:
            raise _bad_params(
                f"error converting json params to arguments: bad hex {data_hex!r}"
            ) from None
        with self._lock:
            height = self.chain.app.height
            try:
                value = self.chain.app.query(path, data)
                code, log, codespace = 0, "", ""
            except KofoError as exc:
                value, code, log, codespace = b"", 1, str(exc), CODESPACE
        return {
            "response": {
                "code": code,
                "log": log,
                "info": "",
                "index": "0",
                "key": None,
                "value": base64.b64encode(value).decode() if value else None,
                "proofOps": None,
                "height": str(height),
                "codespace": codespace,
            }
        }

    def _status(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            height = self.chain.app.height
            app_hash = self.chain.app.app_hash
            latest = self._blocks.get(height)
            earliest = next(iter(self._blocks.values()), None)
        return {
            "node_info": {
                "protocol_version": {"p2p": "8", "block": "11", "app": "1"},
                "id": "",
                "listen_addr": "",
                "network": self.chain_id,
                "version": RPC_VERSION,
                "channels": "",
                "moniker": "kofo-solo",
                "other": {"tx_index": "on", "rpc_address": self.url},
            },
            "sync_info": {
                "latest_block_hash": latest.hash if latest else "",
                "latest_app_hash": app_hash.hex().upper(),
                "latest_block_height": str(height),
                "latest_block_time": rfc3339(latest.time if latest else 0),
                "earliest_block_hash": earliest.hash if earliest else "",
                "earliest_app_hash": earliest.app_hash_before.hex().upper() if earliest else "",
                "earliest_block_height": str(earliest.height if earliest else 0),
                "earliest_block_time": rfc3339(earliest.time if earliest else 0),
                "catching_up": False,
            },
            "validator_info": {"address": "", "pub_key": None, "voting_power": "0"},
        }

    def _record(self, params: dict[str, Any], *, optional: bool) -> _BlockRecord:
        raw = params.get("height")
        with self._lock:
            current = self.chain.app.height
            if raw is None and optional:
                height = current
            else:
                height = _int_param(raw, "height")
                if height <= 0:
                    raise _internal(f"height must be greater than 0, but got {height}")
                if height > current:
                    raise _internal(
                        f"height {height} must be less than or equal to the current "
                        f"blockchain height {current}"
                    )
            record = self._blocks.get(height)
            if record is None:
                lowest = next(iter(self._blocks), current + 1)
                raise _internal(f"height {height} is not available, lowest height is {lowest}")
            return record

    def _block(self, params: dict[str, Any]) -> dict[str, Any]:
        r = self._record(params, optional=True)
        block_id = {"hash": r.hash, "parts": {"total": 1, "hash": r.hash}}
        return {
            "block_id": block_id,
            "block": {
                "header": {
                    "version": {"block": "11", "app": "1"},
                    "chain_id": self.chain_id,
                    "height": str(r.height),
                    "time": rfc3339(r.time),
                    "last_block_id": {
                        "hash": r.last_hash,
                        "parts": {"total": 0 if not r.last_hash else 1, "hash": r.last_hash},
                    },
                    "last_commit_hash": "",
                    "data_hash": "",
                    "validators_hash": "",
                    "next_validators_hash": "",
                    "consensus_hash": "",
                    "app_hash": r.app_hash_before.hex().upper(),
                    "last_results_hash": "",
                    "evidence_hash": "",
                    "proposer_address": "",
                },
                "data": {"txs": [base64.b64encode(t).decode() for t in r.txs]},
                "evidence": {"evidence": []},
                "last_commit": None,
            },
        }

    def _block_results(self, params: dict[str, Any]) -> dict[str, Any]:
        r = self._record(params, optional=True)
        return {
            "height": str(r.height),
            "txs_results": [_exec_result(x) for x in r.results] or None,
            "finalize_block_events": [],
            "validator_updates": None,
            "consensus_param_updates": None,
            "app_hash": base64.b64encode(r.app_hash_after).decode(),
        }

    def _tx(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = _b64_param(params, "hash")
        digest = raw.hex().upper()
        with self._lock:
            where = self._txs.get(digest)
            record = self._blocks.get(where[0]) if where else None
        if where is None or record is None:
            raise _internal(f"tx ({digest}) not found")
        index = where[1]
        tx = record.txs[index]
        return {
            "hash": digest,
            "height": str(record.height),
            "index": index,
            "tx_result": _exec_result(record.results[index]),
            "tx": base64.b64encode(tx).decode(),
        }


def _b64_param(params: dict[str, Any], name: str) -> bytes:
    value = params.get(name)
    if not isinstance(value, str):
        raise _bad_params(f"error converting json params to arguments: {name} must be base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_params(
            f"error converting json params to arguments: illegal base64 data in {name}"
        ) from None


def _int_param(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise _bad_params(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise _bad_params(f"error converting json params to arguments: {name} {value!r}")


_URI_BYTES_B64 = {"tx", "hash"}  # CometBFT's []byte arguments: base64 in JSON-RPC
_URI_HEX = {"data"}  # its HexBytes arguments: hex in JSON-RPC


def _uri_arg(key: str, value: str) -> Any:
    """A URI query value as the JSON-RPC parameter CometBFT would have received: ``0x`` hex or
    a quoted string for bytes, a quoted string for strings, a bare number for integers."""
    quoted = len(value) >= 2 and value[0] == value[-1] == '"'
    text = value[1:-1] if quoted else value
    if key in _URI_BYTES_B64 or key in _URI_HEX:
        if not quoted and text.startswith("0x"):
            try:
                raw = bytes.fromhex(text[2:])
            except ValueError:
                raise _bad_params(f"{key}: bad hex") from None
        else:
            raw = text.encode()
        return base64.b64encode(raw).decode() if key in _URI_BYTES_B64 else raw.hex()
    return text
