"""One ledger client for both backends: a CometBFT validator or the embedded solo ledger.

The client speaks the subset of CometBFT's (v0.38) JSON-RPC the node needs, over HTTP POST:
``broadcast_tx_sync``, ``abci_query``, ``status``, ``block``, ``block_results`` and ``tx``.
The solo ledger (:mod:`kofo.clearance.consensus.solo_rpc`) answers the same calls with the same
JSON, so a node's code path is the same whichever ledger it is pointed at (the web3.py seam).

Two kinds of failure are kept apart, because a caller must treat them differently:

- :class:`LedgerRefused` -- the ledger answered and said no (CheckTx or the block refused the
  transaction, or a query has no answer). Sending the same bytes again gets the same answer.
- :class:`LedgerUnreachable` -- no answer (connection refused, timeout, a proxy's error page).
  Nothing is known about what happened; the caller may retry later. A transaction whose
  broadcast ended this way may still be in the mempool, so the node looks it up by hash before
  it sends anything new (the ledger refuses a duplicate order id anyway).

Every call is bounded by ``timeout`` (seconds, per HTTP request); :meth:`LedgerClient.wait_for_tx`
by its own deadline.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import itertools
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from kofo.errors import ConfigError, KofoError
from kofo.node.redact import public_url

DEFAULT_TIMEOUT = 10.0
"""Seconds per RPC call. A healthy ledger answers in milliseconds; ten seconds covers a node
busy committing a full block and still frees a caller long before any swap deadline."""

MAX_REPLY_BYTES = 32 << 20
"""A block of 5,000 routed orders (the solo producer's cap) is ~15 MB of base64; a reply larger
than twice that is not a ledger talking."""

POLL_INTERVAL = 0.1
"""Between ``tx`` lookups while waiting for inclusion: half a solo block interval, a fraction
of CometBFT's shortest useful ``timeout_commit``."""

_LOG_CODE = re.compile(r"^\[([a-z_]+)\] ")
_NOT_FOUND = re.compile(r"^tx \([0-9A-Fa-f]+\) not found")


class LedgerError(KofoError):
    """Root of the ledger client's errors."""

    code = "ledger_error"


class LedgerUnreachable(LedgerError):
    """No usable answer from the ledger (down, timed out, not a CometBFT RPC): retry later."""

    code = "ledger_unreachable"
    retryable = True


class LedgerRefused(LedgerError):
    """The ledger answered and refused: ``abci_code`` and ``log`` are what it said; ``code``
    is the KOFO error code from the log (``order_invalid``, ``not_found``...) when it has one."""

    retryable = False

    def __init__(
        self, what: str, abci_code: int, log: str, *, codespace: str = "", tx_hash: str = ""
    ) -> None:
        match = _LOG_CODE.match(log)
        reason = log[match.end() :] if match else log
        super().__init__(
            f"{what} refused by the ledger (code {abci_code}): {reason or 'no reason given'}",
            code=match.group(1) if match else "ledger_rejected",
        )
        self.abci_code = abci_code
        self.log = log
        self.codespace = codespace
        self.tx_hash = tx_hash


class LedgerRpcError(LedgerError):
    """The ledger answered a call with a JSON-RPC error (bad parameters, unknown method, height
    out of range): ``rpc_code``, ``message`` and ``data`` as it sent them."""

    code = "ledger_rpc_error"

    def __init__(self, method: str, rpc_code: int, message: str, data: str) -> None:
        super().__init__(f"{method}: {message} ({rpc_code}){': ' + data if data else ''}")
        self.rpc_code = rpc_code
        self.message = message
        self.data = data


class LedgerTimeout(LedgerError):
    """A transaction was not seen in a block before the caller's deadline. It may still be
    included later: look it up by hash again before resending anything."""

    code = "ledger_timeout"
    retryable = True


@dataclass(frozen=True, slots=True)
class Status:
    network: str
    """The chain id."""
    version: str
    height: int
    """The latest committed block (0 before the first)."""
    app_hash: bytes
    """The app hash after the latest block."""
    block_time: int
    """Unix seconds of the latest block (0 before the first)."""
    catching_up: bool


@dataclass(frozen=True, slots=True)
class LedgerBlock:
    height: int
    hash: str
    """Upper-case hex, as CometBFT shows it."""
    time: int
    """Unix seconds (sub-second part dropped)."""
    app_hash: bytes
    """The header's app hash: the state after the PREVIOUS block (CometBFT's rule)."""
    txs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TxResult:
    code: int
    log: str
    codespace: str
    events: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True, slots=True)
class IncludedTx:
    """A transaction in a committed block, with the block's verdict on it."""

    hash: str
    height: int
    index: int
    result: TxResult
    tx: bytes


def tx_hash(tx: bytes) -> str:
    """CometBFT's transaction hash: SHA-256 of the bytes, upper-case hex."""
    return hashlib.sha256(tx).hexdigest().upper()


class LedgerClient:
    """``LedgerClient("http://127.0.0.1:26657").status().height``.

    Thread-safe (no shared connection; each call opens one). Never goes through an HTTP proxy:
    a ledger is the node's own, reached directly.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"ledger url must be http(s)://host:port, got {url!r}")
        if not 0 < timeout <= 600:
            raise ConfigError(f"ledger timeout must be in (0, 600] seconds, got {timeout}")
        self.url = url
        self.shown = public_url(url)  # in errors and logs: no credential in a path
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"LedgerClient({self.shown!r})"

    # -- calls -------------------------------------------------------------------------------

    def broadcast_tx_sync(self, tx: bytes) -> str:
        """Submit ``tx`` to the mempool; returns its hash once CheckTx accepted it. Raises
        :class:`LedgerRefused` when CheckTx refuses it (the block has not seen it)."""
        result = self.call("broadcast_tx_sync", tx=base64.b64encode(tx).decode())
        code = int(result.get("code", 0))
        digest = str(result.get("hash", ""))
        if code != 0:
            raise LedgerRefused(
                "transaction",
                code,
                str(result.get("log", "")),
                codespace=str(result.get("codespace", "")),
                tx_hash=digest,
            )
        return digest

    def abci_query(self, path: str, data: bytes = b"") -> bytes:
        """The ledger app's answer to ``path`` with argument ``data`` (canonical CBOR, see
        :meth:`kofo.clearance.app.LedgerApp.query`). Raises :class:`LedgerRefused` when the app
        answers with an error (``not_found`` for a missing node or order)."""
        result = self.call("abci_query", path=path, data=data.hex())
        response = result.get("response") or {}
        code = int(response.get("code", 0))
        if code != 0:
            raise LedgerRefused(
                f"query {path}",
                code,
                str(response.get("log", "")),
                codespace=str(response.get("codespace", "")),
            )
        value = response.get("value")
        return base64.b64decode(value) if value else b""

    def status(self) -> Status:
        result = self.call("status")
        node, sync = result.get("node_info") or {}, result.get("sync_info") or {}
        height = int(sync.get("latest_block_height", 0))
        return Status(
            network=str(node.get("network", "")),
            version=str(node.get("version", "")),
            height=height,
            app_hash=bytes.fromhex(str(sync.get("latest_app_hash") or "")),
            block_time=_unix(str(sync.get("latest_block_time", ""))) if height else 0,
            catching_up=bool(sync.get("catching_up", False)),
        )

    def block(self, height: int | None = None) -> LedgerBlock:
        """The block at ``height`` (the latest when ``None``)."""
        params = {} if height is None else {"height": str(height)}
        result = self.call("block", **params)
        header = result["block"]["header"]
        txs = result["block"].get("data", {}).get("txs") or []
        return LedgerBlock(
            height=int(header["height"]),
            hash=str(result["block_id"]["hash"]),
            time=_unix(str(header["time"])),
            app_hash=bytes.fromhex(str(header.get("app_hash") or "")),
            txs=tuple(base64.b64decode(t) for t in txs),
        )

    def app_hash_after(self, height: int) -> bytes:
        """The app hash after block ``height`` was applied (``block_results``), without
        waiting for the next block to carry it."""
        result = self.call("block_results", height=str(height))
        value = result.get("app_hash")
        return base64.b64decode(value) if value else b""

    def tx(self, digest: str) -> IncludedTx | None:
        """The committed transaction with hash ``digest`` (hex), or ``None`` if no block
        holds it (yet). Needs the ledger's tx index (CometBFT's default ``kv`` indexer)."""
        raw = bytes.fromhex(digest)
        try:
            result = self.call("tx", hash=base64.b64encode(raw).decode())
        except LedgerRpcError as exc:
            if _NOT_FOUND.match(exc.data):
                return None
            if "indexing is disabled" in exc.data:
                raise ConfigError(
                    f'ledger at {self.shown} keeps no tx index; set [tx_index] indexer = "kv" '
                    "in its CometBFT config.toml (the node looks transactions up by hash)"
                ) from None
            raise
        tr = result.get("tx_result") or {}
        events = tuple(
            (
                str(e.get("type", "")),
                tuple(
                    (str(a.get("key", "")), str(a.get("value", "")))
                    for a in e.get("attributes") or []
                ),
            )
            for e in tr.get("events") or []
        )
        return IncludedTx(
            hash=str(result["hash"]),
            height=int(result["height"]),
            index=int(result.get("index", 0)),
            result=TxResult(
                int(tr.get("code", 0)), str(tr.get("log", "")), str(tr.get("codespace", "")), events
            ),
            tx=base64.b64decode(result.get("tx") or ""),
        )

    def wait_for_tx(self, digest: str, *, timeout: float) -> IncludedTx:
        """Poll until the transaction is in a committed block; raises :class:`LedgerTimeout`
        after ``timeout`` seconds. A block may include a transaction and still refuse it: check
        ``result.ok`` (or use :meth:`commit`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.tx(digest)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise LedgerTimeout(
                    f"tx {digest} not in a block after {timeout:g}s; it may still be: look it "
                    "up by hash before resending"
                )
            time.sleep(min(POLL_INTERVAL, left))

    def commit(self, tx: bytes, *, timeout: float) -> IncludedTx:
        """Broadcast ``tx`` and wait until a block includes it; raises :class:`LedgerRefused`
        if CheckTx or the block refused it. A tx already in the mempool or in a block (a retry
        after :class:`LedgerUnreachable`) is waited for, not sent twice."""
        digest = tx_hash(tx)
        found = self.tx(digest)
        if found is None:
            try:
                self.broadcast_tx_sync(tx)
            except LedgerRpcError as exc:
                # CometBFT answers a tx already in its cache/mempool with this error.
                if "already exists in cache" not in exc.data:
                    raise
            found = self.wait_for_tx(digest, timeout=timeout)
        if not found.result.ok:
            r = found.result
            raise LedgerRefused(
                f"transaction in block {found.height}",
                r.code,
                r.log,
                codespace=r.codespace,
                tx_hash=digest,
            )
        return found

    # -- transport ---------------------------------------------------------------------------

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One JSON-RPC 2.0 call; the ``result`` object. Raises :class:`LedgerUnreachable`
        or :class:`LedgerRpcError`."""
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        )
        request = urllib.request.Request(
            self.url,
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                payload = response.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            # CometBFT answers JSON-RPC errors with HTTP 200, but some proxies and older
            # versions use 500 with the JSON body: read it if there is one.
            payload = exc.read(MAX_REPLY_BYTES + 1)
            if not payload:
                raise LedgerUnreachable(
                    f"{method}: ledger at {self.shown} answered HTTP {exc.code}"
                ) from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets are OSErrors
            raise LedgerUnreachable(
                f"{method}: cannot reach ledger at {self.shown}: {exc}"
            ) from None
        if len(payload) > MAX_REPLY_BYTES:
            raise LedgerUnreachable(
                f"{method}: reply from {self.shown} exceeds {MAX_REPLY_BYTES} B"
            )
        try:
            answer = json.loads(payload)
        except ValueError:
            raise LedgerUnreachable(
                f"{method}: ledger at {self.shown} answered with non-JSON: {payload[:80]!r}"
            ) from None
        if not isinstance(answer, dict):
            raise LedgerUnreachable(f"{method}: ledger at {self.shown} answered {type(answer)}")
        error = answer.get("error")
        if error:
            if not isinstance(error, dict):
                error = {"message": str(error)}
            raise LedgerRpcError(
                method,
                int(error.get("code", 0)),
                str(error.get("message", "")),
                str(error.get("data", "")),
            )
        result = answer.get("result")
        if not isinstance(result, dict):
            raise LedgerUnreachable(f"{method}: ledger at {self.shown} sent no result object")
        return result


_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?Z$")


def _unix(text: str) -> int:
    """Unix seconds of CometBFT's RFC 3339 UTC time (nanoseconds dropped)."""
    m = _RFC3339.match(text)
    if m is None:
        raise LedgerUnreachable(f"ledger sent a block time that is not RFC 3339 UTC: {text!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
