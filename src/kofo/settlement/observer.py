"""The clearance ledger's chain observer over this layer's chain adapters.

A ledger validator attests leg outcomes from its own view of the chains (see
:mod:`kofo.wire.attest`); this is that view, built on the same :class:`ChainAdapter` the swap
engine uses. A leg is looked up by its **full** terms (chain, token, payment hash, amount,
sender and recipient addresses, expiry), so a lock that differs in anything (a smaller amount,
another recipient, an earlier expiry) is not the leg and is never reported; only facts with the
chain's safe number of confirmations are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from web3 import Web3

from kofo.errors import KofoError
from kofo.settlement.chain import ChainAdapter, HtlcState, HtlcTerms
from kofo.settlement.chains.ethereum.contract import load_artifact
from kofo.wire.attest import (
    MAX_TIPS,
    BondObservation,
    ChainTip,
    ChainUnreadable,
    ExecutedDecision,
    LegRef,
    Observation,
)
from kofo.wire.orders import LegOutcome

log = logging.getLogger("kofo.settlement.observer")

_OUTCOME = {
    HtlcState.LOCKED: LegOutcome.LOCKED,
    HtlcState.REDEEMED: LegOutcome.REDEEMED,
    HtlcState.REFUNDED: LegOutcome.REFUNDED,
}


LOCK_TIME_SKEW = {"eth": 120}
"""Seconds a lock's block timestamp may lie before its order's ledger commit time and still be
the leg's lock, per chain (``DEFAULT_LOCK_TIME_SKEW`` for the others): Ethereum's slots keep
block times within seconds; a Bitcoin-like block's time may be up to two hours off."""
DEFAULT_LOCK_TIME_SKEW = 7_200


class AdapterObserver:
    """``observe(leg)`` for the ledger: the leg's HTLC state on its chain, once confirmed.

    ``confirmations`` per chain (default 1); ``spent_since`` per chain: the lowest block height
    a routed lock can be in (the ledger's orders are newer), so a spent lock is found without
    scanning the chain's whole history.

    A lock counts for a leg only if its block is not older than the order's ledger commit
    (``LegRef.committed_at``, less ``lock_time_skew`` for the chain): nothing locks before its
    order is committed (the node's rule), and an HTLC already on a chain when a sybil order
    copying its terms was committed belongs to another swap (issue 17: such copies were
    settled by someone else's HTLCs)."""

    def __init__(
        self,
        adapters: Mapping[str, ChainAdapter],
        *,
        confirmations: Mapping[str, int] | None = None,
        spent_since: Mapping[str, int] | None = None,
        vault: VaultWatcher | None = None,
        lock_time_skew: Mapping[str, int] | None = None,
    ) -> None:
        self.adapters = dict(adapters)
        self.lock_time_skew = {**LOCK_TIME_SKEW, **(lock_time_skew or {})}
        self.confirmations = dict(confirmations or {})
        self.spent_since = dict(spent_since or {})
        self.vault = vault

    def observe(self, ref: LegRef) -> Observation | None:
        leg = ref.leg
        adapter = self.adapters.get(leg.chain)
        if adapter is None:  # a chain this validator does not watch: it cannot say "no lock"
            raise ChainUnreadable(leg.chain, "not watched by this validator")
        try:
            terms = HtlcTerms(
                chain=leg.chain,
                payment_hash=ref.payment_hash,
                amount=leg.amount,
                sender=leg.sender_address,
                recipient=leg.recipient_address,
                expiry=leg.expiry,
                token=leg.token,
            )
            found = adapter.find_htlc(terms, spent_since=self.spent_since.get(leg.chain, 0))
            if found is None:
                return None
            status = adapter.status(found)
            tip = adapter.tip().height
            need = max(1, self.confirmations.get(leg.chain, 1))
            outcome = _OUTCOME.get(status.state)
            if outcome is None or status.confirmations < need:
                return None
            if ref.committed_at:
                lock_block = adapter.block_at(tip - status.confirmations + 1)
                skew = self.lock_time_skew.get(leg.chain, DEFAULT_LOCK_TIME_SKEW)
                if lock_block.time < ref.committed_at - skew:
                    log.info(
                        "observing %s leg %d: the matching lock (block time %d) predates the "
                        "order's commit (%d): another swap's HTLC",
                        ref.order_id.hex(),
                        ref.index,
                        lock_block.time,
                        ref.committed_at,
                    )
                    return None
        except Exception as exc:  # a node down or lagging: not read (never "no lock")
            # (web3's and requests' own errors too, not only the adapters' ChainError)
            log.info("observing %s leg %d: %s", ref.order_id.hex(), ref.index, exc)
            raise ChainUnreadable(leg.chain, type(exc).__name__) from exc
        if outcome is LegOutcome.LOCKED:
            txid, confs = found.lock_txid, status.confirmations
        else:
            if status.spend_txid is None or status.spend_confirmations < need:
                # spent, but not deep enough yet: the lock is what is safely known
                txid, confs, outcome = found.lock_txid, status.confirmations, LegOutcome.LOCKED
            else:
                txid, confs = status.spend_txid, status.spend_confirmations
        return Observation(ref.order_id, ref.index, outcome, txid, tip - confs + 1)

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        """The bond vault's confirmed balance for ``node`` at a multiple of ``step`` (None
        without a vault or when the vault's chain cannot be read now)."""
        return None if self.vault is None else self.vault.observe_bond(node, step)

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        """Whether the vault executed ledger decision ``decision`` (see VaultWatcher)."""
        return None if self.vault is None else self.vault.observe_decision(decision, step)

    def observe_tips(self) -> list[ChainTip]:
        """Each watched chain's tip at its confirmation depth (``tip - confirmations + 1``):
        the chain clock this validator attests (a chain that cannot be read now is left out)."""
        out = []
        for chain in sorted(self.adapters)[:MAX_TIPS]:
            try:
                tip = self.adapters[chain].tip().height
            except KofoError as exc:
                log.info("reading %s's tip: %s", chain, exc)
                continue
            safe = tip - max(1, self.confirmations.get(chain, 1)) + 1
            if safe >= 0:
                out.append(ChainTip(chain, safe))
        return out


class VaultWatcher:
    """A validator's read-only view of the bond vault over Ethereum JSON-RPC."""

    def __init__(self, w3: Web3, address: str, *, confirmations: int = 1) -> None:
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.confirmations = max(1, confirmations)
        self._contract: Any = w3.eth.contract(
            address=self.address, abi=load_artifact("BondVault").abi
        )

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        """The vault's balance for ``node`` at the highest confirmed height that is a multiple
        of ``step``: validators whose tips or confirmation settings differ read the same height
        (at exact heights their facts never matched, and a bond was never attested)."""
        try:
            confirmed = int(self.w3.eth.block_number) - self.confirmations + 1
            height = confirmed - confirmed % max(1, step)
            if confirmed < 0:
                return None
            amount = int(self._contract.functions.bonds(node).call(block_identifier=height))
        except Exception as exc:  # a node down or lagging: nothing seen this time
            log.info("observing the bond of %s: %s", node.hex()[:16], exc)
            return None
        return BondObservation(node, amount, height)

    def _height(self, step: int) -> int:
        confirmed = int(self.w3.eth.block_number) - self.confirmations + 1
        return confirmed - confirmed % max(1, step) if confirmed >= 0 else -1

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        """Whether the vault had executed ledger decision ``decision`` (its ``executed``
        record, set with the ``BondSlashed``/``BondReleased`` event of the same call) as of the
        same rounded height :meth:`observe_bond` reads, so the ledger counts the execution and
        the lower balance together; None if not (yet) or unreadable."""
        try:
            height = self._height(step)
            if height < 0:
                return None
            done = bool(self._contract.functions.executed(decision).call(block_identifier=height))
        except Exception as exc:  # a node down or lagging: nothing seen this time
            log.info("observing decision %s: %s", decision.hex()[:16], exc)
            return None
        return ExecutedDecision(decision, height) if done else None
