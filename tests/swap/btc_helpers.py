"""Bitcoin-like legs for the two-node swap fixtures: one embedded regtest chain per chain name,
shared by every node of a test, with the same duck-typed surface as ``helpers.Evm`` (``account``,
``adapter``, ``policy``) so ``helpers.make_node`` builds nodes over both kinds of chain."""

from __future__ import annotations

import os
from collections.abc import Iterable

from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import b2lx
from web3 import Web3
from web3.exceptions import TransactionNotFound

from kofo.settlement.chain import ChainAdapter, TxKind
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import ChainBackend, EmbeddedBackend
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.tx import p2wpkh_script_pubkey
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.terms import ChainPolicy, Leg, devnet_policy
from tests.swap.helpers import Node

COINBASE_MATURITY = 100


class Btc:
    """One embedded Bitcoin-like regtest chain (``"btc"`` or ``"ltc"`` parameters)."""

    def __init__(self, chain: str = "btc") -> None:
        self.name = chain
        self.params = chain_params(chain, "regtest")
        self.chain = EmbeddedChain(params=self.params)
        self.backend: ChainBackend = EmbeddedBackend(self.chain)
        # Blocks that only move the clock pay a key nobody in the test holds, so wallet balances
        # change only through the swap.
        self._burn = p2wpkh_script_pubkey(HdWallet(os.urandom(32), self.params).identity.pubkey)

    def close(self) -> None:
        self.chain.close()

    def account(self, tokens: int = 0, coins: int = 1) -> HdWallet:
        """A fresh wallet owning ``coins`` mature coinbase outputs (50 coins each at first)."""
        del tokens  # Bitcoin-like chains have no tokens; the argument mirrors Evm.account
        wallet = HdWallet(os.urandom(32), self.params)
        self.chain.mine(coins, wallet.identity.script_pubkey)
        self.mine(COINBASE_MATURITY)
        return wallet

    def adapter(self, wallet: HdWallet) -> BitcoinAdapter:
        return BitcoinAdapter(self.backend, wallet)

    def policy(self) -> ChainPolicy:
        return devnet_policy(self.name, height_clock=True)

    def mine(self, count: int = 1) -> None:
        self.chain.mine(count, self._burn)

    def height(self) -> int:
        return self.chain.height()

    def mine_to(self, height: int) -> None:
        if height > self.height():
            self.mine(height - self.height())


def addr(node: Node, chain: str) -> str:
    """The node's identity on ``chain`` in the form HTLC terms use."""
    return node.engine.adapters[chain].address()


def btc_fee(adapter: BitcoinAdapter, txid: str) -> int:
    """What confirmed ``txid`` paid the miner (inputs minus outputs), read through the adapter's
    own chain index, so it works on the embedded chain and on real nodes alike."""
    adapter.index.sync()
    tx: CTransaction = adapter.index.txs[txid].tx
    spent = sum(
        adapter.index.txs[b2lx(txin.prevout.hash)].tx.vout[txin.prevout.n].nValue for txin in tx.vin
    )
    return int(spent - sum(out.nValue for out in tx.vout))


def fees_paid(node: Node, swap_id: bytes) -> dict[str, int]:
    """Native-coin fees each chain charged this node for the swap's journaled transactions
    that confirmed (the swap is over; a version replaced by a fee bump never confirmed)."""
    out: dict[str, int] = {}
    for _kind, chain, txid, at in node.engine.journal.all_txs(swap_id):
        if at is None:
            continue
        adapter = node.engine.adapters[chain]
        if isinstance(adapter, BitcoinAdapter):
            if adapter.tx_confirmations(txid) == 0:
                continue
            paid = btc_fee(adapter, txid)
        else:
            w3: Web3 = adapter.w3  # type: ignore[attr-defined]
            try:
                receipt = w3.eth.get_transaction_receipt(txid)  # type: ignore[arg-type]
            except TransactionNotFound:
                continue
            paid = receipt["gasUsed"] * receipt["effectiveGasPrice"]
        out[chain] = out.get(chain, 0) + paid
    return out


Holdings = dict[tuple[str, str | None], int]


def holdings(node: Node, assets: Iterable[tuple[str, str | None]]) -> Holdings:
    """The node's balance of each (chain, token) asset."""
    result: Holdings = {}
    for chain, token in assets:
        adapter: ChainAdapter = node.engine.adapters[chain]
        result[(chain, token)] = adapter.balance(token)
    return result


def expected_after(
    before: Holdings, *, gives: Leg, gets: Leg, fees: dict[str, int], refunded: bool = False
) -> Holdings:
    """Balances after a swap: ``gives`` left (unless refunded), ``gets`` arrived (unless
    refunded), and each chain's native coin paid this node's fees."""
    after = dict(before)
    if not refunded:
        after[(gives.chain, gives.token)] -= gives.amount
        after[(gets.chain, gets.token)] += gets.amount
    for chain, paid in fees.items():
        after[(chain, None)] -= paid
    return after


def confirmed_tx(node: Node, chain: str, swap_id: bytes, kind: TxKind) -> CTransaction:
    """The one confirmed transaction of ``kind`` on Bitcoin-like ``chain`` that ``node``
    journaled for the swap, read through the node's own adapter (embedded or real node)."""
    adapter = node.engine.adapters[chain]
    assert isinstance(adapter, BitcoinAdapter)
    (txid,) = [
        t
        for k, c, t, at in node.engine.journal.all_txs(swap_id)
        if k == kind.value and c == chain and at is not None and adapter.tx_confirmations(t)
    ]
    return adapter.index.txs[txid].tx
