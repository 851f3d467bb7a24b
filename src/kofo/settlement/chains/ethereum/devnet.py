"""The embedded EVM served over Ethereum JSON-RPC on 127.0.0.1.

One in-process py-evm chain (through eth-tester), reachable from other processes with any
JSON-RPC client — so several KOFO nodes (and the demo, and crash tests that kill nodes) share one
chain, and a node's code path is the same as against geth: ``Web3(HTTPProvider(url))``.

Requests go through web3.py's own eth-tester request manager (which turns JSON-RPC parameters
into eth-tester calls); results are turned back into JSON-RPC's wire form (hex quantities, hex
data). Besides the standard ``eth_*``/``net_*``/``web3_*`` methods it answers a few development
methods: ``evm_mine`` (mine N blocks), ``evm_setNextBlockTimestamp`` / ``evm_increaseTime``
(move chain time, then mine one block), ``evm_snapshot`` / ``evm_revert`` (real reorgs for tests).
``eth_sendTransaction`` works from the pre-funded unlocked accounts (``eth_accounts``): the
faucet.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.serializers import (
    serialize_transaction,
    serialize_transaction_receipt,
)
from eth_tester.exceptions import BlockNotFound, TransactionFailed, TransactionNotFound
from eth_tester.exceptions import ValidationError as TesterValidationError
from eth_tester.utils.filters import check_if_log_matches
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, Web3
from web3.exceptions import ContractLogicError, MethodUnavailable, Web3ValidationError

from kofo.asgi import AsgiServer, Handler, Limits, Reply, Request, json_too_deep

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 << 20
"""Large enough for any contract deployment we make, small enough that a bad client cannot make
the server buffer unbounded input (geth's own cap is 5 MB)."""

LIMITS = Limits(max_body=MAX_REQUEST_BYTES)

MAX_BATCH = 1000
"""geth's ``BatchRequestLimit``: one request cannot queue unbounded work behind the chain's
lock."""

_RENAMED = {"y_parity": "yParity", "state_root": "root"}
_BLOOM_BYTES = 256


class IndexedPyEVMBackend(PyEVMBackend):  # type: ignore[misc]
    """py-evm's eth-tester backend with a transaction-hash index.

    The stock backend finds a transaction (for its receipt, and for every transaction of every
    block an ``eth_getLogs`` covers) by walking the chain back from the head, so a log query
    costs (blocks covered) x (their age) and a node polling many swaps goes quadratic in chain
    length. Here each canonical block is indexed once; the index is checked against the
    canonical hashes on every lookup, so blocks dropped by ``evm_revert`` (or any other head
    change, however it was made) are forgotten and their replacements indexed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._indexed: list[tuple[bytes, list[bytes]]] = []  # per height: block hash, tx hashes
        self._tx_at: dict[bytes, tuple[int, int]] = {}  # tx hash -> (height, index in block)

    def _sync_index(self, head: int) -> None:
        """Make the index cover exactly the canonical blocks below ``head`` (the pending one)."""
        chaindb = self.chain.chaindb
        # A block whose hash still matches vouches for all its ancestors: drop from the top
        # until one does.
        while self._indexed and (
            len(self._indexed) > head
            or chaindb.get_canonical_block_hash(len(self._indexed) - 1) != self._indexed[-1][0]
        ):
            height = len(self._indexed) - 1
            for tx_hash in self._indexed.pop()[1]:
                if self._tx_at.get(tx_hash, (None,))[0] == height:
                    del self._tx_at[tx_hash]
        for height in range(len(self._indexed), head):
            block = self.chain.get_canonical_block_by_number(height)
            hashes = [tx.hash for tx in block.transactions]
            for index, tx_hash in enumerate(hashes):
                self._tx_at[tx_hash] = (height, index)
            self._indexed.append((block.hash, hashes))

    def _locate(self, transaction_hash: bytes) -> tuple[Any, Any, int]:
        pending = self.chain.get_block()
        for index, tx in enumerate(pending.transactions):
            if tx.hash == transaction_hash:
                return pending, tx, index
        self._sync_index(pending.number)
        hit = self._tx_at.get(transaction_hash)
        if hit is None:
            raise TransactionNotFound(
                f"No transaction found for transaction hash: 0x{bytes(transaction_hash).hex()}"
            )
        block = self.chain.get_canonical_block_by_number(hit[0])
        return block, block.transactions[hit[1]], hit[1]

    def get_transaction_by_hash(self, transaction_hash: bytes) -> Any:
        block, tx, index = self._locate(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        return serialize_transaction(block, tx, index, is_pending)

    def get_transaction_receipt(self, transaction_hash: bytes) -> Any:
        block, tx, index = self._locate(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        receipts = block.get_receipts(self.chain.chaindb)
        return serialize_transaction_receipt(
            block, receipts, tx, index, is_pending, self.chain.get_vm()
        )


class IndexedEthereumTester(EthereumTester):  # type: ignore[misc]
    """eth-tester whose ``get_logs`` keeps each mined block's log entries, keyed by block hash.

    The stock ``get_logs`` serialises every block in the range and every receipt in them on
    each call; a node polling many swaps asks for the same recent blocks again and again. A
    block's logs never change once it is mined, and a block replaced by a revert has another
    hash, so the cache needs no invalidation.
    """

    def __init__(self, backend: IndexedPyEVMBackend) -> None:
        super().__init__(backend)
        self._block_logs: dict[bytes, tuple[Any, ...]] = {}

    def _raw_logs(self, number: int) -> tuple[Any, ...]:
        chain = self.backend.chain
        if number >= chain.get_block().number:  # the pending block: still filling, no logs
            self.get_block_by_number(number)  # raises BlockNotFound, as the stock query does
        block_hash = chain.chaindb.get_canonical_block_hash(number)
        entries = self._block_logs.get(block_hash)
        if entries is None:
            block = self.get_block_by_number(number)
            entries = tuple(
                self.normalizer.normalize_inbound_log_entry(log_entry)
                for tx_hash in block["transactions"]
                for log_entry in self.get_transaction_receipt(tx_hash)["logs"]
            )
            self._block_logs[block_hash] = entries
        return entries

    def get_logs(
        self,
        from_block: Any = None,
        to_block: Any = None,
        address: Any = None,
        topics: Any = None,
    ) -> tuple[Any, ...]:
        self.validator.validate_inbound_filter_params(
            from_block=from_block, to_block=to_block, address=address, topics=topics
        )
        raw_from, raw_to, raw_address, raw_topics = self.normalizer.normalize_inbound_filter_params(
            from_block=from_block, to_block=to_block, address=address, topics=topics
        )
        lower = raw_from if isinstance(raw_from, int) else None
        upper = raw_to if isinstance(raw_to, int) else None
        if lower is None:
            lower = self.get_block_by_number(raw_from or "latest")["number"]
        if upper is None:
            upper = self.get_block_by_number(raw_to or "latest")["number"]
        out = []
        for number in range(lower, upper + 1):
            for entry in self._raw_logs(number):
                if check_if_log_matches(
                    entry,
                    from_block=raw_from,
                    to_block=raw_to,
                    addresses=raw_address,
                    topics=raw_topics,
                ):
                    out.append(self.normalizer.normalize_outbound_log_entry(entry))
        return tuple(out)


def indexed_tester() -> EthereumTester:
    """A fresh in-process chain whose transaction, receipt and log lookups do not rescan it."""
    return IndexedEthereumTester(IndexedPyEVMBackend())


def mine_at(tester: EthereumTester, timestamp: int) -> None:
    """Mine one block stamped exactly ``timestamp`` (later than the latest block's).

    Not ``EthereumTester.time_travel``: it stamps the block one second early (py-evm no longer
    adds the second its comment expects), mines nothing when the target equals the pending
    block's time, and rewrites the pending header with a copy read before mining, so a block
    mined by another thread in between is replaced (a mined transaction disappears). Callers
    must hold whatever lock serialises access to ``tester`` (eth-tester is not thread-safe).
    """
    latest = int(tester.get_block_by_number("latest")["timestamp"])
    if timestamp <= latest:
        raise ValueError(f"timestamp {timestamp} is not after the latest block's {latest}")
    chain = tester.backend.chain
    chain.set_header_timestamp(timestamp)  # py-evm MiningChain: the pending block's time
    tester.mine_blocks(1)


def _to_wire(value: Any, key: str = "") -> Any:
    """A web3.py result value in JSON-RPC wire form."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if key == "logsBloom":
            return "0x" + value.to_bytes(_BLOOM_BYTES, "big").hex()
        return hex(value)
    if isinstance(value, HexBytes | bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = _RENAMED.get(str(k), str(k))
            out[name] = _to_wire(v, name)
        return out
    if isinstance(value, list | tuple):
        return [_to_wire(v, key) for v in value]
    return value


class EmbeddedEvm:
    """The chain itself plus the development controls; thread-safe (one lock)."""

    def __init__(self) -> None:
        self.tester = indexed_tester()
        self.provider = EthereumTesterProvider(self.tester)
        self.w3 = Web3(self.provider)
        self._lock = threading.Lock()

    def handle(self, method: str, params: list[Any]) -> Any:
        with self._lock:
            dev = _DEV_METHODS.get(method)
            if dev is not None:
                return dev(self, params)
            if method in _FIXED:
                return _FIXED[method]
            if method.split("_", 1)[0] not in _MODULES:
                raise _RpcError(-32601, f"the method {method} does not exist/is not available")
            if method in ("eth_getLogs", "eth_newFilter") and params:
                params = [self._log_filter(params[0]), *params[1:]]
            if method in ("eth_call", "eth_estimateGas") and params and isinstance(params[0], dict):
                # geth skips the nonce check for calls and estimates (SkipNonceChecks)
                params = [{k: v for k, v in params[0].items() if k != "nonce"}, *params[1:]]
            result = _to_wire(self.w3.manager.request_blocking(method, params))  # type: ignore[arg-type]
            return _geth_shape(method, result)

    def _log_filter(self, query: Any) -> dict[str, Any]:
        """A log filter as geth reads it: ``address`` one string or a list, ``blockHash``
        instead of a block range (an unknown hash is geth's "unknown block")."""
        if not isinstance(query, dict):
            raise _RpcError(-32602, "invalid argument 0: filter must be an object")
        out: dict[str, Any] = dict(query)
        if isinstance(out.get("address"), str):
            out["address"] = [out["address"]]
        block_hash = out.pop("blockHash", None)
        if block_hash is not None:
            if "fromBlock" in out or "toBlock" in out:
                raise _RpcError(
                    -32602,
                    "invalid argument 0: cannot specify both BlockHash and FromBlock/ToBlock",
                )
            try:
                number = self.w3.eth.get_block(block_hash)["number"]
            except Exception:
                raise _RpcError(-32000, "unknown block") from None
            out["fromBlock"] = out["toBlock"] = hex(number)
        return out

    def _now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def _mine(self, params: list[Any]) -> str:
        count = int(params[0], 0) if params and isinstance(params[0], str) else 1
        if params and isinstance(params[0], int):
            count = params[0]
        if not 1 <= count <= 10_000:
            raise ValueError(f"evm_mine: block count must be 1..10000, got {count}")
        self.tester.mine_blocks(count)
        return hex(int(self.w3.eth.block_number))

    def _set_timestamp(self, params: list[Any]) -> str:
        target = int(params[0], 0) if isinstance(params[0], str) else int(params[0])
        mine_at(self.tester, target)  # under self._lock, as every chain access here
        return hex(target)

    def _increase_time(self, params: list[Any]) -> str:
        seconds = int(params[0], 0) if isinstance(params[0], str) else int(params[0])
        if seconds <= 0:
            raise ValueError(f"evm_increaseTime needs a positive number of seconds, got {seconds}")
        return self._set_timestamp([self._now() + seconds])

    def _snapshot(self, params: list[Any]) -> str:
        return hex(int(self.tester.take_snapshot()))

    def _revert(self, params: list[Any]) -> bool:
        snapshot = int(params[0], 0) if isinstance(params[0], str) else int(params[0])
        self.tester.revert_to_snapshot(snapshot)
        return True


class _RpcError(Exception):
    """A JSON-RPC error with geth's code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_MODULES = {"eth": "1.0", "net": "1.0", "web3": "1.0", "evm": "1.0"}
_FIXED: dict[str, Any] = {"rpc_modules": _MODULES}
"""``rpc_modules`` is the first call of ``geth attach``: it lists what the console may use."""

_EMPTY_BLOOM = "0x" + "00" * _BLOOM_BYTES


def _geth_shape(method: str, result: Any) -> Any:
    """eth-tester's objects as geth writes them: a contract creation's ``to`` is null (not
    ""), a receipt has ``logsBloom`` and no pre-Byzantium ``root``, a log says ``removed``."""
    if method == "eth_getTransactionReceipt" and isinstance(result, dict):
        result.pop("root", None)
        result.setdefault("logsBloom", _EMPTY_BLOOM)
        if result.get("to") == "":
            result["to"] = None
        for entry in result.get("logs") or []:
            _log_shape(entry)
    elif method in (
        "eth_getTransactionByHash",
        "eth_getTransactionByBlockNumberAndIndex",
        "eth_getTransactionByBlockHashAndIndex",
    ) and isinstance(result, dict):
        _tx_shape(result)
    elif method in ("eth_getBlockByNumber", "eth_getBlockByHash") and isinstance(result, dict):
        for index, tx in enumerate(result.get("transactions") or []):
            if isinstance(tx, dict):
                _tx_shape(tx)
                tx.setdefault("blockHash", result.get("hash"))
                tx.setdefault("blockNumber", result.get("number"))
                tx.setdefault("transactionIndex", hex(index))
    elif method in ("eth_getLogs", "eth_getFilterLogs", "eth_getFilterChanges"):
        for entry in result or []:
            if isinstance(entry, dict):
                _log_shape(entry)
    return result


def _tx_shape(tx: dict[str, Any]) -> None:
    if tx.get("to") == "":
        tx["to"] = None


def _log_shape(entry: dict[str, Any]) -> None:
    entry.setdefault("removed", False)
    entry.pop("type", None)


_DEV_METHODS = {
    "evm_mine": EmbeddedEvm._mine,
    "evm_setNextBlockTimestamp": EmbeddedEvm._set_timestamp,
    "evm_increaseTime": EmbeddedEvm._increase_time,
    "evm_snapshot": EmbeddedEvm._snapshot,
    "evm_revert": EmbeddedEvm._revert,
}


_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string), Solidity's and Vyper's revert data


_NONCE = re.compile(r"Invalid transaction nonce: Expected (\d+), but got (\d+)")
_AFFORD = re.compile(r"cannot afford txn gas (\d+) with account balance (\d+)")


def _error(exc: Exception, method: str = "") -> dict[str, Any]:
    """The JSON-RPC error geth gives for the same failure (code and wording, which clients
    such as ethers classify by), never Python's exception text."""
    if isinstance(exc, _RpcError):
        return {"code": exc.code, "message": exc.message}
    if isinstance(exc, TransactionFailed):
        reason = str(exc).removeprefix("execution reverted: ").removeprefix("execution reverted")
        data = "0x" + (_ERROR_SELECTOR + abi_encode(["string"], [reason])).hex()
        return {"code": 3, "message": f"execution reverted: {reason}", "data": data}
    if isinstance(exc, ContractLogicError):
        # Geth's shape for a revert: code 3, the ABI-encoded reason in data. web3.py clients
        # turn it back into ContractLogicError with the contract's message.
        return {"code": 3, "message": str(exc.message or exc), "data": exc.data or "0x"}
    if isinstance(exc, MethodUnavailable | NotImplementedError):
        return {"code": -32601, "message": f"the method {method} does not exist/is not available"}
    text = str(exc)
    nonce = _NONCE.search(text)
    if nonce is not None:
        expected, got = int(nonce[1]), int(nonce[2])
        word = "low" if got < expected else "high"
        return {
            "code": -32000,
            "message": f"nonce too {word}: next nonce {expected}, tx nonce {got}",
        }
    afford = _AFFORD.search(text)
    if afford is not None or "not have enough balance" in text or "insufficient funds" in text:
        return {"code": -32000, "message": "insufficient funds for gas * price + value"}
    if isinstance(
        exc, TesterValidationError | Web3ValidationError | TypeError | ValueError | IndexError
    ):
        return {"code": -32602, "message": f"invalid argument: {_plain(text)}"}
    if isinstance(exc, TransactionNotFound | BlockNotFound):
        return {"code": -32000, "message": "not found"}
    log.warning("devnet: %s failed", method, exc_info=exc)
    return {"code": -32000, "message": _plain(text) or "internal error"}


def _plain(text: str) -> str:
    """An exception's text without Python reprs of bytes (what a client can read)."""
    return re.sub(r"b'(?:[^'\\]|\\.)*'", "<bytes>", text)[:300]


def _parse_error() -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}


class _Handler(Handler):
    def __init__(self, evm: EmbeddedEvm) -> None:
        self.evm = evm

    def error_reply(self, status: int, message: str) -> Reply:
        return Reply(status, message.encode(), "text/plain; charset=utf-8")

    def respond(self, request: Request) -> Reply:
        body = request.body
        if json_too_deep(body):
            return _json_reply(_parse_error())
        try:
            call = json.loads(body)
        except (ValueError, RecursionError):
            return _json_reply(_parse_error())
        if isinstance(call, list):
            if not call:
                return _json_reply(_invalid("empty batch"))
            if len(call) > MAX_BATCH:
                return _json_reply(_invalid("batch too large"))
            return _json_reply([self._call(r) for r in call])
        return _json_reply(self._call(call))

    def _call(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "invalid request"},
            }
        rid = request.get("id")
        params = request.get("params")
        if params is None:
            params = []
        if not isinstance(params, list):
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32602, "message": "non-array args"},
            }
        try:
            result = self.evm.handle(request["method"], list(params))
        except Exception as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": _error(exc, request["method"])}
        return {"jsonrpc": "2.0", "id": rid, "result": result}


def _invalid(message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}


def _json_reply(body: Any) -> Reply:
    return Reply(200, json.dumps(body).encode(), "application/json")


class DevnetServer:
    """Serve an :class:`EmbeddedEvm` on ``127.0.0.1:port`` (0 = a free port) in a thread."""

    def __init__(
        self, port: int = 0, evm: EmbeddedEvm | None = None, *, limits: Limits | None = None
    ) -> None:
        self.evm = evm or EmbeddedEvm()
        self._server = AsgiServer(
            _Handler(self.evm), limits or LIMITS, name="evm-devnet", port=port
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DevnetServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> DevnetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
