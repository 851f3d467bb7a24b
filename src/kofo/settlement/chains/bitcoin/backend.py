"""What the adapter needs from a chain, and its two implementations.

:class:`EmbeddedBackend` calls an in-process :class:`EmbeddedChain`; :class:`RpcBackend` speaks
JSON-RPC to bitcoind/litecoind (Core dialect) or btcd, or to an embedded chain served over HTTP.
The adapter only ever sees :class:`ChainBackend`.
"""

from __future__ import annotations

import logging
import math
import string
import threading
from decimal import Decimal
from typing import Protocol

from bitcointx.core import (
    CBitcoinTransaction as CTransaction,
)
from bitcointx.core import (
    b2lx,
)

from kofo.errors import ChainError, FeeTooLow, TxRejected
from kofo.settlement.chains.bitcoin.embedded import AlreadyInChain, EmbeddedChain
from kofo.settlement.chains.bitcoin.rpc import BadRpcAnswer, RpcClient, RpcError

log = logging.getLogger(__name__)

MEMPOOL_FETCHES_PER_READ = 1_000
"""At most this many ``getrawtransaction`` calls per read of the node's mempool: what was
fetched is kept by txid (Core refuses a second transaction with a txid already in its mempool),
so each read fetches only what is new; a listing with more new txids (a busy mainnet node's
first read, or a lying node listing a million made-up txids) is read over several reads."""


class ChainBackend(Protocol):
    def block_count(self) -> int: ...

    def block_hash(self, height: int) -> str: ...

    def block_raw(self, block_hash: str) -> bytes: ...

    def median_time_past(self) -> int: ...

    def send_raw(self, raw: bytes) -> str:
        """Broadcast; a tx the node already has (mempool or chain) is not an error."""
        ...

    def test_accept(self, raw: bytes) -> None:
        """Raise :class:`TxRejected` with the node's reason if ``raw`` would be refused."""
        ...

    def mempool_raw(self) -> list[bytes]: ...

    def estimate_fee_rate(self) -> int | None:
        """sat/vB for confirmation within a few blocks; ``None`` when the node has no data."""
        ...

    def mine(self, count: int, address: str) -> list[str]:
        """Regtest only: mine ``count`` blocks paying ``address``."""
        ...


class EmbeddedBackend:
    def __init__(self, chain: EmbeddedChain) -> None:
        self.chain = chain

    def block_count(self) -> int:
        return self.chain.height()

    def block_hash(self, height: int) -> str:
        return self.chain.block_hash(height)

    def block_raw(self, block_hash: str) -> bytes:
        return self.chain.block_raw(block_hash)

    def median_time_past(self) -> int:
        return self.chain.median_time_past()

    def send_raw(self, raw: bytes) -> str:
        try:
            return self.chain.send_raw(raw)
        except AlreadyInChain:
            return _txid(raw)

    def test_accept(self, raw: bytes) -> None:
        self.chain.test_accept(raw)

    def mempool_raw(self) -> list[bytes]:
        out = []
        for txid in self.chain.mempool_txids():
            found = self.chain.find_tx(txid)
            if found is not None:
                out.append(found.tx.serialize())
        return out

    def estimate_fee_rate(self) -> int | None:
        # What the next block needs; with no fee market set, no estimate (like a fresh regtest).
        return self.chain.fee_estimate_rate or None

    def mine(self, count: int, address: str) -> list[str]:
        from kofo.settlement.chains.bitcoin.rpcserver import address_to_script

        return self.chain.mine(count, address_to_script(address))


# Core's RPC error codes for "the node already has it": RPC_VERIFY_ALREADY_IN_CHAIN (-27) and,
# on older nodes / btcd, RPC_TRANSACTION_ALREADY_IN_CHAIN / -25 with "already have".
_ALREADY_KNOWN = (
    "already in block chain",
    "already in utxo set",
    "already have",
    "already exists",
    "txn-already-known",
    "txn-already-in-mempool",
)

_FEE_REFUSALS = (
    # Core and litecoind: under -minrelaytxfee, under a full mempool's floor, a BIP125
    # replacement paying too little (also our embedded chain's wording).
    "min relay fee not met",
    "mempool min fee not met",
    "insufficient fee",
    # btcd (mempool.go): under the relay fee, a free transaction's priority or rate limit, a
    # replacement's fee rate or absolute fee ("insufficient fee rate" matches above).
    "under the required amount",
    "insufficient priority",
    "due to low fees",
    "insufficient absolute fee",
)
"""Lower-cased fragments of a node's reason that name the fee alone as the refusal."""


def _txid(raw: bytes) -> str:
    return str(b2lx(CTransaction.deserialize(raw).GetTxid()))


class RpcBackend:
    """:class:`ChainBackend` over JSON-RPC. Every answer is checked for the shape and range its
    call returns before it is used (a lying or broken node gets :class:`BadRpcAnswer`, never a
    Python error out of the adapter); amounts in coins are converted exactly (Decimal)."""

    def __init__(self, client: RpcClient) -> None:
        self.client = client
        self._mempool_lock = threading.Lock()
        # txid -> raw transaction, or None for a listed txid the node then did not return.
        self._mempool_seen: dict[str, bytes | None] = {}

    def __repr__(self) -> str:
        return f"RpcBackend({self.client!r})"

    def block_count(self) -> int:
        return _count("getblockcount", self.client.call("getblockcount"))

    def block_hash(self, height: int) -> str:
        return _hash("getblockhash", self.client.call("getblockhash", height))

    def block_raw(self, block_hash: str) -> bytes:
        return _hex("getblock", self.client.call("getblock", block_hash, 0))

    def median_time_past(self) -> int:
        if self.client.dialect == "btcd":
            # btcd's getblockchaininfo has no mediantime; its getblockheader neither. Use the
            # median of the last 11 block times, which is what the field means (BIP113).
            tip = self.block_count()
            times = []
            for height in range(max(0, tip - 10), tip + 1):
                header = self.client.call("getblockheader", self.block_hash(height), True)
                times.append(_count("getblockheader", _field("getblockheader", header, "time")))
            return sorted(times)[len(times) // 2]
        info = self.client.call("getblockchaininfo")
        return _count("getblockchaininfo", _field("getblockchaininfo", info, "mediantime"))

    def send_raw(self, raw: bytes) -> str:
        txid = _txid(raw)
        try:
            answer = self.client.call("sendrawtransaction", raw.hex())
        except RpcError as exc:
            text = exc.message.lower()
            if exc.rpc_code == -27 or any(marker in text for marker in _ALREADY_KNOWN):
                return txid
            if any(marker in text for marker in _FEE_REFUSALS):
                raise FeeTooLow(
                    f"node refused the transaction for its fee: {exc.message}"
                ) from None
            raise TxRejected(f"node refused the transaction: {exc.message}") from None
        if _hash("sendrawtransaction", answer) != txid:
            raise BadRpcAnswer("sendrawtransaction", f"txid {answer}, not the sent {txid}")
        return txid

    def test_accept(self, raw: bytes) -> None:
        if self.client.dialect == "btcd":
            # btcd requires maxfeerate; 0 means "no cap", as in Core.
            result = self.client.call("testmempoolaccept", [raw.hex()], 0)
        else:
            result = self.client.call("testmempoolaccept", [raw.hex()])
        if not isinstance(result, list) or len(result) != 1 or not isinstance(result[0], dict):
            raise BadRpcAnswer("testmempoolaccept", f"{_shown(result)}, not one result object")
        allowed = result[0].get("allowed")
        if allowed is None and isinstance(result[0].get("reject-reason"), str):
            allowed = False  # btcd's result omits a false "allowed" (Go's omitempty)
        if not isinstance(allowed, bool):
            raise BadRpcAnswer("testmempoolaccept", f"allowed={_shown(allowed)}")
        if not allowed:
            reason = str(result[0].get("reject-reason", "rejected"))[:1000]
            raise TxRejected(f"node would refuse the transaction: {reason}")

    def mempool_raw(self) -> list[bytes]:
        txids = self.client.call("getrawmempool")
        if not isinstance(txids, list):
            raise BadRpcAnswer("getrawmempool", f"{_shown(txids)}, not a list of txids")
        listed = [_hash("getrawmempool", txid) for txid in txids]
        with self._mempool_lock:
            seen = {t: self._mempool_seen[t] for t in listed if t in self._mempool_seen}
            new = [t for t in dict.fromkeys(listed) if t not in seen]
            if len(new) > MEMPOOL_FETCHES_PER_READ:
                log.warning(
                    "the node's mempool lists %d transactions not read yet; reading %d now",
                    len(new),
                    MEMPOOL_FETCHES_PER_READ,
                )
            for txid in new[:MEMPOOL_FETCHES_PER_READ]:
                try:
                    seen[txid] = _hex(
                        "getrawtransaction", self.client.call("getrawtransaction", txid)
                    )
                except RpcError:
                    seen[txid] = None  # mined or evicted between the two calls
            self._mempool_seen = seen
            return [raw for raw in seen.values() if raw is not None]

    def estimate_fee_rate(self) -> int | None:
        if self.client.dialect == "btcd":
            return None
        try:
            answer = self.client.call("estimatesmartfee", 3)
        except RpcError:
            return None
        if not isinstance(answer, dict):
            raise BadRpcAnswer("estimatesmartfee", f"{_shown(answer)}, not an object")
        rate = answer.get("feerate")
        if rate is None:
            return None  # Core leaves it out (with "errors") while it has too little data
        # BTC/kvB, exactly -> sat/vB (x 1e8 / 1000), rounded up so the estimate is never undercut.
        return math.ceil(_coins("estimatesmartfee feerate", rate) * 100_000)

    def mine(self, count: int, address: str) -> list[str]:
        if self.client.dialect == "btcd":
            # btcd mines to its --miningaddr with the `generate` RPC; it has no generatetoaddress.
            hashes = self.client.call("generate", count)
        else:
            hashes = self.client.call("generatetoaddress", count, address)
        if not isinstance(hashes, list):
            raise BadRpcAnswer("generate", f"{_shown(hashes)}, not a list of block hashes")
        return [_hash("generate", h) for h in hashes]


MAX_COINS = 21_000_000
"""No amount in coins a node reports (a fee rate per kvB included) can exceed every coin there
is; a larger number is a lying node, and is refused before any arithmetic on it."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _count(method: str, value: object) -> int:
    """A non-negative JSON integer (a height, a time); not a bool, string or fraction."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 1 << 63:
        raise BadRpcAnswer(method, f"{_shown(value)}, not a non-negative integer")
    return value


def _hash(method: str, value: object) -> str:
    """A block hash or txid: 64 hex digits (returned lower-case, as the index keeps them)."""
    if (
        not isinstance(value, str)
        or len(value) != 64
        or not all(c in string.hexdigits for c in value)
    ):
        raise BadRpcAnswer(method, f"{_shown(value)}, not a 64-digit hex hash")
    return value.lower()


def _hex(method: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise BadRpcAnswer(method, f"{_shown(value)}, not hex data")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BadRpcAnswer(method, f"{_shown(value)}, not hex data") from None


def _field(method: str, answer: object, name: str) -> object:
    if not isinstance(answer, dict) or name not in answer:
        raise BadRpcAnswer(method, f"{_shown(answer)}, an object without {name!r}")
    return answer[name]


def _coins(what: str, value: object) -> Decimal:
    """A non-negative amount in coins, exactly: JSON numbers arrive as Decimal (a float is
    read through its shortest repr, the number the JSON held); never NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise BadRpcAnswer(what, f"{_shown(value)}, not a number")
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not exact.is_finite() or not 0 <= exact <= MAX_COINS:
        raise BadRpcAnswer(what, f"{_shown(value)}, not an amount between 0 and {MAX_COINS}")
    return exact


__all__ = ["BadRpcAnswer", "ChainBackend", "ChainError", "EmbeddedBackend", "RpcBackend"]
