"""What the adapter needs from a chain, and its two implementations.

:class:`EmbeddedBackend` calls an in-process :class:`EmbeddedChain`; :class:`RpcBackend` speaks
JSON-RPC to bitcoind/litecoind (Core dialect) or btcd, or to an embedded chain served over HTTP.
The adapter only ever sees :class:`ChainBackend`.
"""

from __future__ import annotations

from typing import Protocol

from bitcointx.core import (
    CBitcoinTransaction as CTransaction,
)
from bitcointx.core import (
    b2lx,
)

from kofo.errors import ChainError, FeeTooLow, TxRejected
from kofo.settlement.chains.bitcoin.embedded import AlreadyInChain, EmbeddedChain
from kofo.settlement.chains.bitcoin.rpc import RpcClient, RpcError


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
    def __init__(self, client: RpcClient) -> None:
        self.client = client

    def block_count(self) -> int:
        return int(self.client.call("getblockcount"))

    def block_hash(self, height: int) -> str:
        return str(self.client.call("getblockhash", height))

    def block_raw(self, block_hash: str) -> bytes:
        return bytes.fromhex(self.client.call("getblock", block_hash, 0))

    def median_time_past(self) -> int:
        if self.client.dialect == "btcd":
            # btcd's getblockchaininfo has no mediantime; its getblockheader neither. Use the
            # median of the last 11 block times, which is what the field means (BIP113).
            tip = self.block_count()
            times = []
            for height in range(max(0, tip - 10), tip + 1):
                header = self.client.call("getblockheader", self.block_hash(height), True)
                times.append(int(header["time"]))
            return sorted(times)[len(times) // 2]
        return int(self.client.call("getblockchaininfo")["mediantime"])

    def send_raw(self, raw: bytes) -> str:
        try:
            return str(self.client.call("sendrawtransaction", raw.hex()))
        except RpcError as exc:
            text = exc.message.lower()
            if exc.rpc_code == -27 or any(marker in text for marker in _ALREADY_KNOWN):
                return _txid(raw)
            if any(marker in text for marker in _FEE_REFUSALS):
                raise FeeTooLow(
                    f"node refused the transaction for its fee: {exc.message}"
                ) from None
            raise TxRejected(f"node refused the transaction: {exc.message}") from None

    def test_accept(self, raw: bytes) -> None:
        if self.client.dialect == "btcd":
            # btcd requires maxfeerate; 0 means "no cap", as in Core.
            result = self.client.call("testmempoolaccept", [raw.hex()], 0)
        else:
            result = self.client.call("testmempoolaccept", [raw.hex()])
        if not result or not result[0].get("allowed"):
            reason = result[0].get("reject-reason", "rejected") if result else "no answer"
            raise TxRejected(f"node would refuse the transaction: {reason}")

    def mempool_raw(self) -> list[bytes]:
        out = []
        for txid in self.client.call("getrawmempool"):
            try:
                out.append(bytes.fromhex(self.client.call("getrawtransaction", txid)))
            except RpcError:
                continue  # mined or evicted between the two calls
        return out

    def estimate_fee_rate(self) -> int | None:
        if self.client.dialect == "btcd":
            return None
        try:
            answer = self.client.call("estimatesmartfee", 3)
        except RpcError:
            return None
        rate = answer.get("feerate")
        if rate is None:
            return None
        # BTC/kvB as an exact decimal (the client parses JSON numbers as Decimal) -> sat/vB,
        # rounded up so the estimate is never undercut.
        sat_per_kvb = int(rate * 100_000_000)
        return -(-sat_per_kvb // 1000)

    def mine(self, count: int, address: str) -> list[str]:
        if self.client.dialect == "btcd":
            # btcd mines to its --miningaddr with the `generate` RPC; it has no generatetoaddress.
            return [str(h) for h in self.client.call("generate", count)]
        return [str(h) for h in self.client.call("generatetoaddress", count, address)]


__all__ = ["ChainBackend", "ChainError", "EmbeddedBackend", "RpcBackend"]
