"""Serve an :class:`EmbeddedChain` over HTTP in the Bitcoin Core JSON-RPC dialect.

Only the subset KOFO uses, so other processes (other nodes, the demo) can share one chain:
getblockchaininfo, getblockcount, getblockhash, getblock, getblockheader, getrawtransaction,
getrawmempool, sendrawtransaction, testmempoolaccept, estimatesmartfee, generatetoaddress.
Binds 127.0.0.1 only; HTTP basic auth.

The protocol follows Core's ``httprpc.cpp``/``rpc/server.cpp``: a request object or a batch
(a JSON array of them, answered by an array), positional or named params, JSON-RPC 1.x replies
(``result``, ``error``, ``id``; HTTP 500/404/400 on an error) or 2.0 ones (``"jsonrpc": "2.0"``,
HTTP 200, no reply to a notification). Arguments are type-checked as Core's ``RPCHelpMan`` does
(``RPC_TYPE_ERROR``, "Wrong type passed"). Every failure inside a handler is answered as a
JSON-RPC error; one nothing here anticipated is ``RPC_INTERNAL_ERROR`` without its details.

Decoded transactions (``getrawtransaction`` verbose, ``getblock`` verbosity 2 and 3) have the
shape of Core's ``TxToUniv`` (``core_write.cpp``), built from python-bitcointx's deserialization;
amounts are exact decimals with eight places (``ValueFromAmount``). Left out, because this
server cannot produce them the way Core does: the script ``asm`` and ``desc`` strings, base58
addresses on chains other than Bitcoin, ``size_on_disk``, and, in ``testmempoolaccept``, the
sigop-adjusted ``vsize`` and the ``fees`` it is the divisor of (and so ``maxfeerate``).
Where Core's versions differ, the answer is that of Core before 28/30 (litecoind's 0.21
dialect): ``warnings`` a string, script failures ``mandatory-script-verify-flag-failed``.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import b2lx
from bitcointx.core.serialize import VarIntSerializer
from bitcointx.segwit_addr import decode, encode
from bitcointx.wallet import (
    CBitcoinRegtestAddress,
    P2PKHBitcoinRegtestAddress,
    P2SHBitcoinRegtestAddress,
)

from kofo.asgi import (
    AsgiServer,
    Handler,
    Limits,
    Reply,
    Request,
    json_too_deep,
)
from kofo.errors import InvalidInput, KofoError, TxRejected
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.blocks import parse_block, parse_header
from kofo.settlement.chains.bitcoin.corejson import (
    block_proof,
    coin_amount,
    dumps,
    output_type,
    target_fields,
)
from kofo.settlement.chains.bitcoin.embedded import (
    AlreadyInChain,
    EmbeddedChain,
    MaxFeeExceeded,
    MissingInputs,
)

_log = logging.getLogger(__name__)

# Bitcoin Core's RPC error codes (src/rpc/protocol.h), so clients handle us like a real node.
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_INTERNAL_ERROR = -32603
RPC_PARSE_ERROR = -32700
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_ADDRESS = RPC_INVALID_ADDRESS_OR_KEY
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27

LIMITS = Limits(max_body=8 << 20)
"""8 MiB: twice the hex of the largest transaction a block can hold (4 MB), with room for the
JSON around it. Core's own cap is 32 MiB (``MAX_SIZE``); a smaller one bounds what this
server buffers per connection (``max_connections`` of them at most)."""

_TX_DECODE_HINT = "Make sure the tx has at least one input."
_NO_WALLET_HINT = "Use gettransaction for wallet transactions."
_MAX_TIP_AGE = 24 * 60 * 60
"""Core's DEFAULT_MAX_TIP_AGE: a tip older than this keeps a node in initial block download."""
_MAX_PACKAGE_COUNT = 25
_MAX_CONF_TARGET = 1008
"""What Core's fee estimator tracks at most (its long horizon), estimatesmartfee's upper bound."""
_NULL_HASH = "00" * 32
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")

# python-bitcointx's CheckTransaction messages -> Core's reject reasons (consensus/tx_check.cpp).
_CHECK_TRANSACTION_REASONS = {
    "vin empty": "bad-txns-vin-empty",
    "vout empty": "bad-txns-vout-empty",
    "size limits failed": "bad-txns-oversize",
    "txout.nValue negative": "bad-txns-vout-negative",
    "txout.nValue too high": "bad-txns-vout-toolarge",
    "txout total out of range": "bad-txns-txouttotal-toolarge",
    "duplicate inputs": "bad-txns-inputs-duplicate",
    "coinbase script size": "bad-cb-length",
    "prevout is null": "bad-txns-prevout-null",
}
_TRAILING_REASON = re.compile(r"\s*\(([^()]*)\)\s*$")


class _RpcFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Arg:
    """One declared argument: Core's name(s) (``a|b`` for an alias), its JSON type
    (``number``, ``string``, ``bool``, ``array``; ``any``: checked by the handler), and
    whether it is required."""

    names: str
    kind: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class _Method:
    handler: Callable[..., Any]
    args: tuple[_Arg, ...] = ()


@dataclass(frozen=True, slots=True)
class _Prevout:
    """The output an input spends (what Core reads from the block's undo data)."""

    generated: bool
    height: int
    value: int
    script_pubkey: bytes


def address_to_script(address: str, *, hrp: str | None = None) -> bytes:
    """scriptPubKey of a bech32 segwit ``address`` (any HRP: bcrt, rltc, ...; only ``hrp``
    when given, as a node accepts only its own network's addresses)."""
    if not isinstance(address, str):
        raise InvalidInput(f"address must be a string, got {type(address).__name__}")
    found = address.rpartition("1")[0].lower()
    if not found:
        raise InvalidInput(f"not a bech32 address: {address!r}")
    if hrp is not None and found != hrp:
        raise InvalidInput(f"address {address!r} is not for this network ({hrp})")
    version, program = decode(found, address)
    if version is None or program is None:
        raise InvalidInput(f"not a segwit address: {address!r}")
    op = 0 if version == 0 else 0x50 + version
    return bytes([op, len(program), *program])


class RegtestRpcServer:
    """``with RegtestRpcServer(chain, user, password) as server: server.url``."""

    def __init__(
        self,
        chain: EmbeddedChain,
        user: str,
        password: str,
        *,
        port: int = 0,
        limits: Limits | None = None,
    ) -> None:
        self.chain = chain
        self._expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._work: dict[str, int] = {}  # block hash -> chain work up to it (blocks never change)
        self._left_ibd = False  # Core latches initial block download off once it is over
        # The genesis block's only transaction (its txid is the merkle root), never served.
        self._genesis_coinbase = parse_header(chain.block_raw(chain.block_hash(0))).merkle_root
        num, string, flag = "number", "string", "bool"
        self._methods: dict[str, _Method] = {
            "getblockchaininfo": _Method(self._getblockchaininfo),
            "getblockcount": _Method(lambda: chain.height()),
            "getblockhash": _Method(self._getblockhash, (_Arg("height", num, True),)),
            "getblock": _Method(
                self._getblock, (_Arg("blockhash", string, True), _Arg("verbosity|verbose", "any"))
            ),
            "getblockheader": _Method(
                self._getblockheader, (_Arg("blockhash", string, True), _Arg("verbose", flag))
            ),
            "getrawtransaction": _Method(
                self._getrawtransaction,
                (
                    _Arg("txid", string, True),
                    _Arg("verbosity|verbose", "any"),
                    _Arg("blockhash", string),
                ),
            ),
            "getrawmempool": _Method(
                self._getrawmempool, (_Arg("verbose", flag), _Arg("mempool_sequence", flag))
            ),
            "sendrawtransaction": _Method(
                self._sendrawtransaction,
                (
                    _Arg("hexstring", string, True),
                    _Arg("maxfeerate", "amount"),
                    _Arg("maxburnamount", "amount"),
                ),
            ),
            "testmempoolaccept": _Method(
                self._testmempoolaccept,
                (_Arg("rawtxs", "array", True), _Arg("maxfeerate", "amount")),
            ),
            "estimatesmartfee": _Method(
                self._estimatesmartfee,
                (_Arg("conf_target", num, True), _Arg("estimate_mode", string)),
            ),
            "generatetoaddress": _Method(
                self._generatetoaddress,
                (_Arg("nblocks", num, True), _Arg("address", string, True), _Arg("maxtries", num)),
            ),
        }
        server = self

        class _Handler(Handler):
            methods = frozenset({"POST", "GET"})

            def respond(self, request: Request) -> Reply:
                if request.method != "POST":
                    return Reply(405, b"JSONRPC server handles only POST requests")
                ensure_thread_params()
                auth = request.headers.get("authorization", "")
                if not hmac.compare_digest(auth.encode("latin-1"), server._expected.encode()):
                    return Reply(401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
                status, reply = server._handle(request.body)
                data = b"" if reply is None else dumps(reply).encode()
                return Reply(status, data, "application/json" if data else None)

            def error_reply(self, status: int, message: str) -> Reply:
                return Reply(status, message.encode(), "text/plain; charset=utf-8")

            def internal_error(self) -> Reply:
                error = {"code": RPC_INTERNAL_ERROR, "message": "Internal error"}
                data = json.dumps({"result": None, "error": error, "id": None}).encode()
                return Reply(500, data, "application/json")

        self._httpd = AsgiServer(_Handler(), limits or LIMITS, name="core-rpc", port=port)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> RegtestRpcServer:
        self._httpd.start()
        return self

    def stop(self) -> None:
        self._httpd.stop()

    def __enter__(self) -> RegtestRpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- JSON-RPC ----------------------------------------------------------------------------

    def _handle(self, body: bytes) -> tuple[int, Any]:
        """(HTTP status, reply or ``None`` for no body) for one HTTP request body."""
        if json_too_deep(body):
            return 500, _reply(None, _error(RPC_PARSE_ERROR, "Parse error"), None, v2=False)
        try:
            request = json.loads(body, parse_float=Decimal, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return 500, _reply(None, _error(RPC_PARSE_ERROR, "Parse error"), None, v2=False)
        if isinstance(request, dict):
            reply, notification, v2 = self._execute(request)
            if notification:
                return 204, None
            status = 200
            if not v2 and reply["error"] is not None:
                code = reply["error"]["code"]
                status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(code, 500)
            return status, reply
        if isinstance(request, list):
            replies = []
            for item in request:
                reply, notification, _ = self._execute(item)
                if not notification:
                    replies.append(reply)
            return 200, replies
        error = _error(RPC_PARSE_ERROR, "Top-level object parse error")
        return 500, _reply(None, error, None, v2=False)

    def _execute(self, request: Any) -> tuple[dict[str, Any], bool, bool]:
        """(reply, is a JSON-RPC 2.0 notification, is JSON-RPC 2.0) for one request object."""
        req_id: Any = None
        v2 = False
        notification = False
        try:
            if not isinstance(request, dict):
                raise _RpcFailure(RPC_INVALID_REQUEST, "Invalid Request object")
            version = request.get("jsonrpc")
            if version is not None:
                if not isinstance(version, str):
                    raise _RpcFailure(RPC_INVALID_REQUEST, "jsonrpc field must be a string")
                if version == "2.0":
                    v2 = True
                elif version != "1.0":
                    raise _RpcFailure(RPC_INVALID_REQUEST, "JSON-RPC version not supported")
            req_id = request.get("id")
            notification = v2 and "id" not in request
            name = request.get("method")
            if name is None:
                raise _RpcFailure(RPC_INVALID_REQUEST, "Missing method")
            if not isinstance(name, str):
                raise _RpcFailure(RPC_INVALID_REQUEST, "Method must be a string")
            params = request.get("params")
            if params is not None and not isinstance(params, list | dict):
                raise _RpcFailure(RPC_INVALID_REQUEST, "Params must be an array or object")
            method = self._methods.get(name)
            if method is None:
                raise _RpcFailure(RPC_METHOD_NOT_FOUND, "Method not found")
            result = self._call(name, method, params)
            return _reply(result, None, req_id, v2=v2), notification, v2
        except _RpcFailure as exc:
            return _reply(None, _error(exc.code, exc.message), req_id, v2=v2), notification, v2

    def _call(self, name: str, method: _Method, params: list[Any] | dict[str, Any] | None) -> Any:
        args = _positional(method, params)
        required = sum(1 for a in method.args if a.required)
        if not required <= len(args) <= len(method.args):
            raise _RpcFailure(
                RPC_MISC_ERROR,
                f"{_usage(name, method)}\n\nWrong number of parameters ({len(args)} given)",
            )
        mismatches = {}
        for index, (spec, value) in enumerate(zip(method.args, args, strict=False)):
            problem = _type_problem(spec, value)
            if problem:
                mismatches[f"Position {index + 1} ({spec.names})"] = problem
        if mismatches:
            text = json.dumps(mismatches, indent=4)
            raise _RpcFailure(RPC_TYPE_ERROR, f"Wrong type passed:\n{text}")
        args += [None] * (len(method.args) - len(args))
        try:
            return method.handler(*args)
        except _RpcFailure:
            raise
        except AlreadyInChain:
            raise _RpcFailure(
                RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction already in block chain"
            ) from None
        except TxRejected as exc:
            reason, detail = _reject_reason(exc)
            code = RPC_VERIFY_ERROR if isinstance(exc, MissingInputs) else RPC_VERIFY_REJECTED
            raise _RpcFailure(code, f"{reason}, {detail}" if detail else reason) from None
        except KofoError as exc:
            # KOFO's messages name the field and the value, never a secret.
            raise _RpcFailure(RPC_MISC_ERROR, _message(exc)) from None
        except Exception:
            _log.exception("rpc %s failed", name)
            raise _RpcFailure(RPC_INTERNAL_ERROR, "Internal error") from None

    # ---- blockchain --------------------------------------------------------------------------

    def _getblockchaininfo(self) -> dict[str, Any]:
        tip = self.chain.height()
        best = self.chain.block_hash(tip)
        header = parse_header(self.chain.block_raw(best))
        result: dict[str, Any] = {
            "chain": "regtest",
            "blocks": tip,
            "headers": tip,
            "bestblockhash": best,
            "bits": f"{header.bits:08x}",
        }
        result.update(target_fields(header.bits))
        result.update(
            {
                "time": header.time,
                "mediantime": self.chain.median_time_past(best),
                # Core's GuessVerificationProgress: regtest has no chain tx data, so 1.
                "verificationprogress": 1,
                "initialblockdownload": self._initial_block_download(header.time),
                "chainwork": f"{self._chainwork(best):064x}",
                "pruned": False,
                "warnings": "",
            }
        )
        return result

    def _initial_block_download(self, tip_time: int) -> bool:
        # Core's IsInitialBlockDownload on regtest (no minimum chain work): until the tip is
        # less than a day old, then never again.
        if self._left_ibd:
            return False
        if tip_time < self.chain.now() - _MAX_TIP_AGE:
            return True
        self._left_ibd = True
        return False

    def _getblockhash(self, height: Any) -> str:
        number = _integer(height)
        if not 0 <= number <= self.chain.height():
            raise _RpcFailure(RPC_INVALID_PARAMETER, "Block height out of range")
        return self.chain.block_hash(number)

    def _getblockheader(self, block_hash: str, verbose: bool | None) -> Any:
        block_hash = _parse_hash(block_hash, "hash")
        raw = self._block_raw(block_hash)
        if verbose is False:
            return raw[:80].hex()
        count = VarIntSerializer.stream_deserialize(io.BytesIO(raw[80:]))
        return self._header_json(block_hash, raw, count)

    def _getblock(self, block_hash: str, verbosity: Any) -> Any:
        block_hash = _parse_hash(block_hash, "blockhash")
        raw = self._block_raw(block_hash)
        level = _verbosity(verbosity, default=1)
        if level <= 0:
            return raw.hex()
        block = parse_block(raw)
        result = self._header_json(block_hash, raw, len(block.txs))
        stripped = 80 + len(VarIntSerializer.serialize(len(block.txs)))
        stripped += sum(len(tx.serialize(include_witness=False)) for tx in block.txs)
        result["strippedsize"] = stripped
        result["size"] = len(raw)
        result["weight"] = stripped * 3 + len(raw)
        if level == 1:
            result["tx"] = [b2lx(tx.GetTxid()) for tx in block.txs]
            return result
        # Core reads each input's spent output from the block's undo data: we know it for a
        # block on the best chain (every output it spends is on that chain too).
        undo = self.chain.on_best_chain(block_hash)
        result["tx"] = [
            self._tx_json(
                tx,
                self._prevouts(tx) if undo and index > 0 else None,
                show_prevout=level >= 3,
            )
            for index, tx in enumerate(block.txs)
        ]
        return result

    def _block_raw(self, block_hash: str) -> bytes:
        try:
            return self.chain.block_raw(block_hash)
        except KofoError:
            raise _RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Block not found") from None

    def _header_json(self, block_hash: str, raw: bytes, tx_count: int) -> dict[str, Any]:
        """Core's blockheaderToJSON (rpc/blockchain.cpp)."""
        header = parse_header(raw)
        height = self.chain.block_height(block_hash)
        tip = self.chain.height()
        on_best = self.chain.on_best_chain(block_hash)
        result: dict[str, Any] = {
            "hash": block_hash,
            "confirmations": tip - height + 1 if on_best else -1,
            "height": height,
            "version": header.version,
            "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
            "merkleroot": header.merkle_root,
            "time": header.time,
            "mediantime": self.chain.median_time_past(block_hash),
            "nonce": header.nonce,
            "bits": f"{header.bits:08x}",
        }
        result.update(target_fields(header.bits))
        result["chainwork"] = f"{self._chainwork(block_hash):064x}"
        result["nTx"] = tx_count
        if height > 0:
            result["previousblockhash"] = header.prev_hash
        if on_best and height < tip:
            result["nextblockhash"] = self.chain.block_hash(height + 1)
        return result

    def _chainwork(self, block_hash: str) -> int:
        """The work of every block from genesis to ``block_hash``, from their headers' bits
        (Core's nChainWork: the sum of GetBlockProof)."""
        path: list[tuple[str, int]] = []
        cursor = block_hash
        while cursor not in self._work and cursor != _NULL_HASH:
            header = parse_header(self.chain.block_raw(cursor))
            path.append((cursor, header.bits))
            cursor = header.prev_hash
        work = self._work.get(cursor, 0)
        for hash_, bits in reversed(path):
            work += block_proof(bits)
            self._work[hash_] = work
        return self._work[block_hash]

    # ---- transactions ------------------------------------------------------------------------

    def _getrawtransaction(self, txid: str, verbosity: Any, block_hash: str | None) -> Any:
        txid = _parse_hash(txid, "parameter 1")
        if txid == self._genesis_coinbase:
            raise _RpcFailure(
                RPC_INVALID_ADDRESS_OR_KEY,
                "The genesis block coinbase is not considered an ordinary transaction and "
                "cannot be retrieved",
            )
        level = _verbosity(verbosity, default=0)
        tx: CTransaction | None = None
        given_block = block_hash is not None
        if block_hash is not None:
            block_hash = _parse_hash(block_hash, "parameter 3")
            try:
                raw = self.chain.block_raw(block_hash)
            except KofoError:
                raise _RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found") from None
            tx = next((t for t in parse_block(raw).txs if b2lx(t.GetTxid()) == txid), None)
            if tx is None:
                raise _RpcFailure(
                    RPC_INVALID_ADDRESS_OR_KEY,
                    f"No such transaction found in the provided block. {_NO_WALLET_HINT}",
                )
        else:
            found = self.chain.find_tx(txid)
            if found is None:
                raise _RpcFailure(
                    RPC_INVALID_ADDRESS_OR_KEY,
                    f"No such mempool or blockchain transaction. {_NO_WALLET_HINT}",
                )
            tx, block_hash = found.tx, found.block_hash
        if level <= 0:
            return tx.serialize().hex()
        result: dict[str, Any] = {}
        on_best = block_hash is not None and self.chain.on_best_chain(block_hash)
        if given_block:
            result["in_active_chain"] = on_best
        prevouts = None
        if level >= 2 and on_best and not tx.is_coinbase():
            prevouts = self._prevouts(tx)
        result.update(self._tx_json(tx, prevouts, show_prevout=level >= 2))
        if block_hash is not None:
            result["blockhash"] = block_hash
            if on_best:
                height = self.chain.block_height(block_hash)
                result["confirmations"] = self.chain.height() - height + 1
                result["time"] = self.chain.block_time(block_hash)
                result["blocktime"] = self.chain.block_time(block_hash)
            else:
                result["confirmations"] = 0
        return result

    def _prevouts(self, tx: CTransaction) -> list[_Prevout] | None:
        """The outputs ``tx``'s inputs spend, for a ``tx`` in a block on the best chain (None
        if one cannot be found there)."""
        prevouts = []
        for txin in tx.vin:
            found = self.chain.find_tx(b2lx(txin.prevout.hash))
            if found is None or found.height is None or txin.prevout.n >= len(found.tx.vout):
                return None
            out = found.tx.vout[txin.prevout.n]
            prevouts.append(
                _Prevout(found.tx.is_coinbase(), found.height, out.nValue, bytes(out.scriptPubKey))
            )
        return prevouts

    def _tx_json(
        self, tx: CTransaction, prevouts: list[_Prevout] | None, *, show_prevout: bool
    ) -> dict[str, Any]:
        """Core's TxToUniv (core_write.cpp) with the hex; ``fee`` when ``prevouts`` are known,
        and each input's ``prevout`` too with ``show_prevout``."""
        raw = tx.serialize()
        weight = len(tx.serialize(include_witness=False)) * 3 + len(raw)
        result: dict[str, Any] = {
            "txid": b2lx(tx.GetTxid()),
            "hash": b2lx(tx.GetHash()),
            "version": tx.nVersion & 0xFFFFFFFF,
            "size": len(raw),
            "vsize": (weight + 3) // 4,
            "weight": weight,
            "locktime": tx.nLockTime,
        }
        coinbase = tx.is_coinbase()
        vin = []
        for index, txin in enumerate(tx.vin):
            entry: dict[str, Any] = {}
            if coinbase:
                entry["coinbase"] = bytes(txin.scriptSig).hex()
            else:
                entry["txid"] = b2lx(txin.prevout.hash)
                entry["vout"] = txin.prevout.n
                entry["scriptSig"] = {"hex": bytes(txin.scriptSig).hex()}
            if index < len(tx.wit.vtxinwit):
                stack = [bytes(item).hex() for item in tx.wit.vtxinwit[index].scriptWitness]
                if stack:
                    entry["txinwitness"] = stack
            if prevouts is not None and show_prevout:
                spent = prevouts[index]
                entry["prevout"] = {
                    "generated": spent.generated,
                    "height": spent.height,
                    "value": coin_amount(spent.value),
                    "scriptPubKey": self._script_json(spent.script_pubkey),
                }
            entry["sequence"] = txin.nSequence
            vin.append(entry)
        result["vin"] = vin
        result["vout"] = [
            {
                "value": coin_amount(out.nValue),
                "n": n,
                "scriptPubKey": self._script_json(bytes(out.scriptPubKey)),
            }
            for n, out in enumerate(tx.vout)
        ]
        if prevouts is not None:
            fee = sum(p.value for p in prevouts) - sum(out.nValue for out in tx.vout)
            result["fee"] = coin_amount(fee)
        result["hex"] = raw.hex()
        return result

    def _script_json(self, script_pubkey: bytes) -> dict[str, Any]:
        """Core's ScriptToUniv for an output script, without ``asm`` and ``desc``."""
        kind = output_type(script_pubkey)
        result: dict[str, Any] = {"hex": script_pubkey.hex()}
        address = self._address_of(script_pubkey, kind)
        if address is not None:
            result["address"] = address
        result["type"] = kind
        return result

    def _address_of(self, script_pubkey: bytes, kind: str) -> str | None:
        """Core's ExtractDestination + EncodeDestination for this network (None: no address)."""
        if kind.startswith("witness_") or kind == "anchor":
            version = 0 if script_pubkey[0] == 0 else script_pubkey[0] - 0x50
            return encode(self.chain.params.bech32_hrp, version, script_pubkey[2:])
        if self.chain.params.chain != "btc":
            return None  # base58 prefixes of other chains are not known here
        if kind == "pubkeyhash":
            return str(P2PKHBitcoinRegtestAddress.from_bytes(script_pubkey[3:23]))
        if kind == "scripthash":
            return str(P2SHBitcoinRegtestAddress.from_bytes(script_pubkey[2:22]))
        return None

    def _getrawmempool(self, verbose: bool | None, mempool_sequence: bool | None) -> list[str]:
        if verbose or mempool_sequence:
            raise _RpcFailure(
                RPC_INVALID_PARAMETER,
                "this regtest server answers getrawmempool with txids only (verbose=false)",
            )
        return self.chain.mempool_txids()

    def _sendrawtransaction(self, hexstring: str, maxfeerate: Any, maxburnamount: Any) -> str:
        raw = _decode_hex_tx(hexstring)
        if raw is None:
            raise _RpcFailure(RPC_DESERIALIZATION_ERROR, f"TX decode failed. {_TX_DECODE_HINT}")
        fee_rate = _max_fee_rate(maxfeerate)
        max_burn = 0 if maxburnamount is None else _amount_from_value(maxburnamount)
        tx = CTransaction.deserialize(raw)
        for out in tx.vout:
            script = bytes(out.scriptPubKey)
            if (script[:1] == b"\x6a" or len(script) > 10_000) and out.nValue > max_burn:
                raise _RpcFailure(
                    RPC_VERIFY_ERROR,
                    "Unspendable output exceeds maximum configured by user (maxburnamount)",
                )
        try:
            return self.chain.send_raw(raw, max_fee_rate=fee_rate)
        except MaxFeeExceeded:
            raise _RpcFailure(
                RPC_VERIFY_ERROR,
                "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
            ) from None

    def _testmempoolaccept(self, rawtxs: list[Any], maxfeerate: Any) -> list[dict[str, Any]]:
        if not 1 <= len(rawtxs) <= _MAX_PACKAGE_COUNT:
            raise _RpcFailure(
                RPC_INVALID_PARAMETER,
                f"Array must contain between 1 and {_MAX_PACKAGE_COUNT} transactions.",
            )
        decoded = []
        for index, hexstring in enumerate(rawtxs):
            if not isinstance(hexstring, str):
                kind = _json_type(hexstring)
                raise _RpcFailure(
                    RPC_MISC_ERROR, f"JSON value of type {kind} is not of expected type string"
                )
            raw = _decode_hex_tx(hexstring)
            if raw is None:
                raise _RpcFailure(
                    RPC_DESERIALIZATION_ERROR,
                    f"TX decode failed for tx {index}. {_TX_DECODE_HINT}",
                )
            decoded.append(raw)
        fee_rate = _max_fee_rate(maxfeerate)
        return [self._test_accept(raw, fee_rate) for raw in decoded]

    def _test_accept(self, raw: bytes, max_fee_rate: int) -> dict[str, Any]:
        """One testmempoolaccept result, in Core's shape (rpc/mempool.cpp)."""
        tx = CTransaction.deserialize(raw)
        txid = b2lx(tx.GetTxid())
        wtxid = b2lx(tx.GetHash())
        result: dict[str, Any] = {"txid": txid, "wtxid": wtxid}
        reason, detail = "", ""
        in_pool = self.chain.find_tx(txid)
        if in_pool is not None and in_pool.block_hash is None:
            same = b2lx(in_pool.tx.GetHash()) == wtxid
            reason = "txn-already-in-mempool" if same else "txn-same-nonwitness-data-in-mempool"
        else:
            try:
                self.chain.test_accept(raw, max_fee_rate=max_fee_rate)
            except MaxFeeExceeded:
                reason = "max-fee-exceeded"
            except AlreadyInChain:
                # Core finds the inputs spent; "already known" while an output is unspent.
                unspent = any(self.chain.utxo(txid, n) for n in range(len(tx.vout)))
                reason = "txn-already-known" if unspent else "missing-inputs"
            except MissingInputs:
                reason = "missing-inputs"
            except TxRejected as exc:
                reason, detail = _reject_reason(exc)
        if not reason:
            result["allowed"] = True
            return result
        result["allowed"] = False
        result["reject-reason"] = reason
        if reason != "missing-inputs":
            result["reject-details"] = f"{reason}, {detail}" if detail else reason
        return result

    def _estimatesmartfee(self, conf_target: Any, estimate_mode: str | None) -> dict[str, Any]:
        target = _integer(conf_target)
        if not 1 <= target <= _MAX_CONF_TARGET:
            raise _RpcFailure(
                RPC_INVALID_PARAMETER,
                f"Invalid conf_target, must be between 1 and {_MAX_CONF_TARGET}",
            )
        if estimate_mode is not None and estimate_mode.lower() not in (
            "unset",
            "economical",
            "conservative",
        ):
            raise _RpcFailure(
                RPC_INVALID_PARAMETER,
                'Invalid estimate_mode parameter, must be one of: "unset", "economical", '
                '"conservative"',
            )
        rate = self.chain.fee_estimate_rate
        if rate:
            # What the next block needs, in Core's unit (BTC/kvB, an exact decimal).
            return {"feerate": Decimal(rate * 1000) / 100_000_000, "blocks": 2}
        # Like a fresh regtest bitcoind: no fee history, so no estimate.
        return {"errors": ["Insufficient data or no feerate found"], "blocks": 2}

    def _generatetoaddress(self, nblocks: Any, address: str, maxtries: Any) -> list[str]:
        count = _integer(nblocks)
        if maxtries is not None:
            _integer(maxtries)
        script = self._address_script(address)
        return self.chain.mine(count, script)

    def _address_script(self, address: str) -> bytes:
        """Core's DecodeDestination on this network, or RPC_INVALID_ADDRESS_OR_KEY."""
        try:
            return address_to_script(address, hrp=self.chain.params.bech32_hrp)
        except InvalidInput:
            pass
        if self.chain.params.chain == "btc":
            try:
                return bytes(CBitcoinRegtestAddress(address).to_scriptPubKey())
            except Exception:  # not base58, a bad checksum, another network's prefix
                pass
        raise _RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address")


# ---- helpers -------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def _reply(result: Any, error: dict[str, Any] | None, req_id: Any, *, v2: bool) -> dict[str, Any]:
    """Core's JSONRPCReplyObj: 1.x carries result, error and id; 2.0 one of the two."""
    if not v2:
        return {"result": result, "error": error, "id": req_id}
    if error is not None:
        return {"jsonrpc": "2.0", "error": error, "id": req_id}
    return {"jsonrpc": "2.0", "result": result, "id": req_id}


def _positional(method: _Method, params: list[Any] | dict[str, Any] | None) -> list[Any]:
    """Core's transformNamedArguments: named params in declared order, null in the gaps."""
    if params is None:
        return []
    if isinstance(params, list):
        return list(params)
    remaining = dict(params)
    out: list[Any] = []
    hole = 0
    for spec in method.args:
        name = next((n for n in spec.names.split("|") if n in remaining), None)
        if name is None:
            hole += 1
            continue
        out += [None] * hole
        hole = 0
        out.append(remaining.pop(name))
    if remaining:
        raise _RpcFailure(RPC_INVALID_PARAMETER, f"Unknown named parameter {next(iter(remaining))}")
    return out


def _usage(name: str, method: _Method) -> str:
    """The first line of Core's help for a method, its answer to a wrong number of params."""

    def shown(spec: _Arg) -> str:
        first = spec.names.split("|")[0]
        return f'"{first}"' if spec.kind == "string" else first

    required = [shown(a) for a in method.args if a.required]
    optional = [shown(a) for a in method.args if not a.required]
    parts = [name, *required]
    if optional:
        parts.append(f"( {' '.join(optional)} )")
    return " ".join(parts)


def _json_type(value: Any) -> str:
    """Core's uvTypeName of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number"


def _type_problem(spec: _Arg, value: Any) -> str:
    """Core's RPCArg::MatchesType (AmountFromValue for an amount): empty when ``value`` fits."""
    if spec.kind == "any" or (value is None and not spec.required):
        return ""
    found = _json_type(value)
    if spec.kind == "amount":
        return "" if found in ("number", "string") else "Amount is not a number or string"
    if found == spec.kind:
        return ""
    return f"JSON value of type {found} is not of expected type {spec.kind}"


DEFAULT_MAX_FEE_RATE = 10_000_000
"""Core's ``DEFAULT_MAX_RAW_TX_FEE_RATE``: 0.10 coin per kvB, in base units per kvB."""


def _amount_from_value(value: Any) -> int:
    """Core's AmountFromValue: a number or numeric string of coins, at most 8 decimals, in
    range; in base units."""
    try:
        amount = Decimal(value) if isinstance(value, str) else Decimal(str(value))
    except ArithmeticError:
        raise _RpcFailure(RPC_TYPE_ERROR, "Invalid amount") from None
    if not amount.is_finite():
        raise _RpcFailure(RPC_TYPE_ERROR, "Invalid amount")
    units = amount * 100_000_000
    if units != units.to_integral_value():
        raise _RpcFailure(RPC_TYPE_ERROR, "Invalid amount")
    if not 0 <= units <= 21_000_000 * 100_000_000:
        raise _RpcFailure(RPC_TYPE_ERROR, "Amount out of range")
    return int(units)


def _max_fee_rate(value: Any) -> int:
    """``maxfeerate`` (coins per kvB, default 0.10, 0 for none) in base units per kvB."""
    return DEFAULT_MAX_FEE_RATE if value is None else _amount_from_value(value)


def _integer(value: Any) -> int:
    """Core's UniValue::getInt<int>."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        kind = _json_type(value)
        raise _RpcFailure(
            RPC_MISC_ERROR, f"JSON value of type {kind} is not of expected type number"
        )
    if isinstance(value, Decimal) or not -(2**31) <= value < 2**31:
        raise _RpcFailure(RPC_MISC_ERROR, "JSON integer out of range")
    return value


def _verbosity(value: Any, *, default: int) -> int:
    """Core's ParseVerbosity: a number, or a boolean for 0/1."""
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    return _integer(value)


def _parse_hash(value: str, name: str) -> str:
    """Core's ParseHashV: 64 hex digits, as the lower-case display hex."""
    if len(value) != 64:
        raise _RpcFailure(
            RPC_INVALID_PARAMETER,
            f"{name} must be of length 64 (not {len(value)}, for '{value}')",
        )
    if not _HEX.fullmatch(value):
        raise _RpcFailure(
            RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')"
        )
    return value.lower()


def _decode_hex_tx(hexstring: str) -> bytes | None:
    """The bytes of a hex transaction python-bitcointx deserializes in full, else None
    (Core's DecodeHexTx; its legacy-encoding fallback for transactions without inputs aside)."""
    if not _HEX.fullmatch(hexstring):
        return None
    raw = bytes.fromhex(hexstring)
    try:
        CTransaction.deserialize(raw)
    except Exception:
        return None
    return raw


def _message(exc: BaseException) -> str:
    """An exception's message without KOFO's ``[code]`` prefix."""
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _reject_reason(exc: TxRejected) -> tuple[str, str]:
    """Core's (reject reason, debug message) for the embedded chain's refusal: the reason is
    the short token the chain's message ends with (in parentheses), the message the rest."""
    text = _message(exc)
    if isinstance(exc, MissingInputs):
        return "bad-txns-inputs-missingorspent", _TRAILING_REASON.sub("", text)
    if "script verification" in text:
        # A consensus script failure in Core's mempool (before Core 30, which says
        # "mempool-script-verify-flag-failed"); the kernel does not name the script error.
        return "mandatory-script-verify-flag-failed", _TRAILING_REASON.sub("", text)
    for fragment, reason in _CHECK_TRANSACTION_REASONS.items():
        if "CheckTransaction()" in text and text.endswith(fragment):
            return reason, text
    match = _TRAILING_REASON.search(text)
    if match is None:
        return text, ""
    reason = match.group(1).split(",")[0].strip()
    return reason, text[: match.start()]
