"""The :class:`~kofo.settlement.chain.ChainAdapter` for Bitcoin-like UTXO chains.

One adapter serves Bitcoin and Litecoin (and btcd): only :class:`ChainParams` and the backend
differ. It follows the chain itself (no wallet RPC: btcd has none) with :class:`ChainIndex`,
which re-reads blocks from the first height whose hash changed -- so after a reorg a
transaction in a block that left the best chain has 0 confirmations again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NoReturn

from bitcointx.core import (
    CBitcoinTransaction as CTransaction,
)
from bitcointx.core import (
    b2lx,
)

from kofo.errors import (
    AuditFailed,
    ChainError,
    HtlcNotFound,
    InsufficientFunds,
    InvalidInput,
    TxRejected,
)
from kofo.settlement.chain import (
    BlockHeight,
    BlockInfo,
    Expiry,
    FeeEstimate,
    HeadPin,
    HtlcRef,
    HtlcState,
    HtlcStatus,
    HtlcTerms,
    SignedTx,
    TxKind,
    UnixTime,
    check_preimage,
)
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.backend import BadRpcAnswer, ChainBackend
from kofo.settlement.chains.bitcoin.blocks import (
    BadBlock,
    Header,
    ParsedBlock,
    checked_block,
    compact_target,
    parse_block,
    parse_header,
)
from kofo.settlement.chains.bitcoin.cooperative import (
    CooperativeClaim,
    begin_claim,
    cosign_claim,
    finish_claim,
)
from kofo.settlement.chains.bitcoin.kernel import SpentOutput, verify_input
from kofo.settlement.chains.bitcoin.params import ChainParams, chain_params
from kofo.settlement.chains.bitcoin.script import (
    build_htlc_script,
    p2wsh_script_pubkey,
    parse_htlc_script,
    pubkey_from_hex,
)
from kofo.settlement.chains.bitcoin.taproot import (
    TaprootHtlc,
    build_taproot_htlc,
    build_taproot_spend,
    read_taproot_spend,
    unsigned_key_path_spend,
)
from kofo.settlement.chains.bitcoin.tx import (
    SpendPath,
    UnrecognisedSpend,
    Utxo,
    build_child_spend,
    build_funding_tx,
    build_htlc_spend,
    build_self_spend,
    effective_fee_rate,
    min_htlc_amount,
    read_htlc_spend,
    self_spend_vsize,
    vsize,
)
from kofo.settlement.chains.bitcoin.wallet import CHANGE, HTLC, RECEIVE, HdWallet
from kofo.wire.legkeys import LegRole, sign_leg_key

log = logging.getLogger(__name__)


@dataclass
class _Confirmed:
    tx: CTransaction
    height: int


MTP_WINDOW = 11
"""BIP113: the median of this many block times (the tip's and the ten below) is the clock
time locks are judged by."""

SYNC_ROUNDS = 8
"""How many times :meth:`ChainIndex.sync` walks back and reads forward again when the chain
reorganises while it reads; past that the sync fails (a chain error: retried next tick)."""


@dataclass
class ChainIndex:
    """Every transaction since ``start_height`` on the best chain, with who spends what.

    Kept in memory: right for regtest/test chains and a node's own recent history; a mainnet
    node starts it at its wallet's birthday height.
    """

    backend: ChainBackend
    start_height: int = 0
    params: ChainParams = field(default_factory=lambda: chain_params("btc", "regtest"))
    hashes: list[str] = field(default_factory=list)
    txs: dict[str, _Confirmed] = field(default_factory=dict)
    spends: dict[tuple[str, int], str] = field(default_factory=dict)
    by_script: dict[bytes, list[tuple[str, int]]] = field(default_factory=dict)
    _per_height: dict[int, list[str]] = field(default_factory=dict)
    _bits: dict[int, int] = field(default_factory=dict)
    _times: dict[int, int] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def height(self) -> int:
        return self.start_height + len(self.hashes) - 1

    def sync(self) -> None:
        """Follow the node's best chain: undo blocks it no longer has, apply the new ones.

        Every applied block must link to the one below it: a reorganisation that lands while
        the new blocks are being read (between ``getblockcount`` and ``getblockhash``) would
        otherwise leave a block the chain no longer has in the index for good. A block that
        does not link starts the walk again, at most :data:`SYNC_ROUNDS` times.

        Every block is checked before anything in it is believed (:func:`.blocks.check_block`:
        Core's context-free checks, merkle root, witness commitment, proof of work against
        ``bits`` and the network's limit, ``params.min_block_work``), and its ``bits`` must
        follow its parent's where the network retargets (:meth:`_check_bits`). A block that
        fails raises :class:`.blocks.BadBlock` and the index keeps what it had."""
        ensure_thread_params()
        with self._lock:
            for _ in range(SYNC_ROUNDS):
                if self._sync_round():
                    return
            raise ChainError(
                f"{self.backend!r}: the chain kept reorganising while it was read "
                f"({SYNC_ROUNDS} attempts); will retry"
            )

    def _sync_round(self) -> bool:
        tip = self.backend.block_count()
        # Walk back to the highest block we share with the node; everything above is undone.
        while self.hashes:
            top = self.height()
            if top <= tip and self.backend.block_hash(top) == self.hashes[-1]:
                break
            self._undo(top)
            self._bits.pop(top, None)
            self._times.pop(top, None)
        for height in range(self.height() + 1, tip + 1):
            block_hash = self.backend.block_hash(height)
            raw = self.backend.block_raw(block_hash)
            header = parse_header(raw)
            below = self.hashes[-1] if self.hashes else None
            if header.hash != block_hash:
                raise BadBlock(f"the node's block {block_hash} at {height} hashes to {header.hash}")
            if below is not None and header.prev_hash != below:
                return False  # the chain moved under us: walk back again
            if height > 0:  # the genesis block is the chain's given, not proven by work
                block = checked_block(raw, self.params)[1]
                self._check_bits(height, header)
            else:
                block = parse_block(raw)
            self._apply(height, block_hash, block)
            self._bits[height] = header.bits
            self._times[height] = header.time
        return True

    def _check_bits(self, height: int, header: Header) -> None:
        """Where the network retargets every ``params.retarget_interval`` blocks, a block's
        ``bits`` equal its parent's inside a period and change by at most a factor of 4 at a
        boundary (Core's GetNextWorkRequired clamps the timespan to [T/4, 4T]). So a lying node
        cannot drop the difficulty to fake blocks cheaply: from the index's first block on, each
        fake block costs what a real one does. (The first block is the anchor: its bits are
        checked against ``min_block_work`` and the limit only.)"""
        interval = self.params.retarget_interval
        parent = self._bits.get(height - 1)
        if interval is None or parent is None:
            return
        if height % interval:
            if header.bits != parent:
                raise BadBlock(
                    f"block {header.hash} at {height}: bits {header.bits:#010x} differ from its "
                    f"parent's {parent:#010x} inside a difficulty period"
                )
            return
        old, new = compact_target(parent), compact_target(header.bits)
        # Compact bits keep 23 bits of mantissa: the quarter may round down by 2^-15.
        if new > old * 4 or new * 4 * (1 << 14) < old * ((1 << 14) - 1):
            raise BadBlock(
                f"block {header.hash} at {height}: bits {header.bits:#010x} move the target "
                f"more than 4x from {parent:#010x}"
            )

    def _apply(self, height: int, block_hash: str, block: ParsedBlock) -> None:
        ids: list[str] = []
        for tx in block.txs:
            txid = b2lx(tx.GetTxid())
            ids.append(txid)
            self.txs[txid] = _Confirmed(tx, height)
            if not tx.is_coinbase():
                for txin in tx.vin:
                    self.spends[(b2lx(txin.prevout.hash), txin.prevout.n)] = txid
            for n, out in enumerate(tx.vout):
                self.by_script.setdefault(bytes(out.scriptPubKey), []).append((txid, n))
        self._per_height[height] = ids
        self.hashes.append(block_hash)

    def _undo(self, height: int) -> None:
        for txid in reversed(self._per_height.pop(height, [])):
            confirmed = self.txs.pop(txid, None)
            if confirmed is None:
                continue
            tx = confirmed.tx
            if not tx.is_coinbase():
                for txin in tx.vin:
                    self.spends.pop((b2lx(txin.prevout.hash), txin.prevout.n), None)
            for n, out in enumerate(tx.vout):
                entries = self.by_script.get(bytes(out.scriptPubKey), [])
                if (txid, n) in entries:
                    entries.remove((txid, n))
        self.hashes.pop()

    def median_time_past(self) -> int | None:
        """BIP113's clock from the checked headers: the median time of the tip and the ten
        blocks below it (fewer near genesis, as Core does). ``None`` while the index, started
        above genesis, holds fewer than eleven blocks."""
        tip = self.height()
        low = max(0, tip - MTP_WINDOW + 1)
        if low < self.start_height or tip < self.start_height:
            return None
        times = sorted(self._times[h] for h in range(low, tip + 1))
        return times[len(times) // 2]

    def block(self, height: int) -> BlockInfo | None:
        """The checked block at ``height``, if the index holds it."""
        with self._lock:
            offset = height - self.start_height
            if not 0 <= offset < len(self.hashes):
                return None
            return BlockInfo(height=height, hash=self.hashes[offset], time=self._times[height])

    def confirmations(self, txid: str) -> int:
        found = self.txs.get(txid)
        return 0 if found is None else self.height() - found.height + 1


HTLC_KINDS = ("p2wsh", "p2tr")
"""HTLC output forms the adapter can lock, audit and spend; ``HtlcTerms.output`` names one
(``None`` is P2WSH). Both parties build the leg from the same terms, so they agree on the form;
an auditor refuses a P2TR lock of terms that say P2WSH, and the reverse."""

MAX_BUMP_FEE_PCT = 50
"""A fee bump never spends more than this share of the HTLC amount on fees: past it, the
swap's value is going to miners, and it is better to wait for fees to fall (the engine keeps
sending the newest version meanwhile). A first claim or refund pays the rate asked."""

_BUMP_TRIES = 4

MAX_PACKAGE = 25
"""Bitcoin and Litecoin Core's default ``-limitancestorcount``: a child with more unconfirmed
ancestors is not relayed, so a spend gets at most 24 children."""


def _paid_out(tx: CTransaction) -> int:
    return sum(int(out.nValue) for out in tx.vout)


class FeeBumpRefused(ChainError):
    """No replacement could be built within the chain's rules and this adapter's fee cap."""

    code = "fee_bump_refused"


HELD_UNTIL_DEPTH = 6
"""A coin held by a wallet transaction (:meth:`BitcoinAdapter.hold`) is forgotten once that
transaction is this deep on chain: a reorganisation shallower than this puts it back in the
mempool (still spending the coin), never frees the coin for another transaction."""


class BitcoinAdapter:
    """ChainAdapter for a Bitcoin-like chain (``chain`` is ``"btc"`` or ``"ltc"``).

    Each HTLC's output form comes from its terms (``HtlcTerms.output``): P2WSH
    (:mod:`.script`) by default, or ``"p2tr"`` (:mod:`.taproot`; this adapter spends it through
    its leaves -- the cooperative key path needs both parties and goes through
    :mod:`.cooperative`). ``htlc_kind`` is the form this node asks for on the legs it proposes
    (:meth:`leg_output`).
    """

    outputs: tuple[str, ...] = HTLC_KINDS

    def __init__(
        self,
        backend: ChainBackend,
        wallet: HdWallet,
        *,
        start_height: int = 0,
        expiry_unit: type[BlockHeight] | type[UnixTime] = BlockHeight,
        htlc_kind: str = "p2wsh",
        min_block_work: int | None = None,
    ) -> None:
        self.htlc_kind = self._known_output(htlc_kind, "htlc_kind")
        self.backend = backend
        self.wallet = wallet
        self.params = wallet.params
        self.chain = wallet.params.chain
        self.expiry_unit = expiry_unit
        if min_block_work is not None:
            if isinstance(min_block_work, bool) or not isinstance(min_block_work, int):
                raise InvalidInput(f"min_block_work must be an integer, got {min_block_work!r}")
            if min_block_work < 0:
                raise InvalidInput(f"min_block_work must not be negative, got {min_block_work}")
            self.params = dataclasses.replace(self.params, min_block_work=min_block_work)
        self._check_network()
        self.index = ChainIndex(backend, start_height, self.params)
        self._pin = HeadPin()  # inside observe(), the index is not re-synced per read
        self._coins = threading.Lock()  # coin selection + its reservation, one at a time
        self._held: dict[tuple[str, int], str] = {}
        """Wallet coins (outpoints) spent by a transaction this wallet signed (-> its txid),
        until that spend is buried on chain or the caller :meth:`release`\\ s it."""

    def __repr__(self) -> str:
        return f"BitcoinAdapter({self.chain}/{self.params.network})"

    def _check_network(self) -> None:
        """Refuse a node on another network than the configured one (its block 0 is not the
        network's genesis): a Bitcoin transaction names no chain, so nothing else would tell a
        mainnet adapter that it audits locks on a chain where coins are free. Local networks
        (regtest) have no fixed genesis here."""
        expected = self.params.genesis_hash
        if expected is None:
            return
        served = self.backend.block_hash(0)
        if served.lower() != expected:
            raise ChainError(
                f"{self.chain}: the node's block 0 is {served}, not the genesis of "
                f"{self.params.network} ({expected}): it serves another network; nothing is "
                "read or signed through it",
                code="wrong_chain",
            )

    # ---- identity, clock, fees ---------------------------------------------------------------

    def address(self) -> str:
        """A new HTLC key (compressed public key, hex) for one leg of one swap: every call
        gives another (:meth:`HdWallet.next_key`, recorded before it is returned), so no two
        swaps share a key on chain."""
        ensure_thread_params()  # key derivation needs it too; callers run in any thread
        return self.wallet.next_key(HTLC).pubkey.hex()

    def owns(self, address: str) -> bool:
        """Whether ``address`` (an HTLC key in terms) is a key this wallet handed out."""
        try:
            pubkey = bytes.fromhex(address)
        except ValueError:
            return False
        return self.wallet.owns_pubkey(pubkey)

    def prove_leg_key(self, address: str, order_id: bytes, leg: int, role: LegRole) -> bytes:
        """The proof that this wallet holds the HTLC key ``address`` as leg ``leg``'s ``role``
        of ledger order ``order_id`` (:mod:`kofo.wire.legkeys`: BIP340 over its x-only key)."""
        if not self.owns(address):
            raise InvalidInput(f"HTLC key {address} is not a key of this wallet")
        ensure_thread_params()
        key = self.wallet.key_for_pubkey(bytes.fromhex(address))
        return sign_leg_key(key.secret_bytes, address, order_id, leg, role)

    def expiry_now(self) -> Expiry:
        """Tip height, or (for time expiries) the tip's median time past -- the clock CLTV uses.
        A height refund is valid once ``expiry_now() >= expiry``; a time refund once
        ``expiry_now() > expiry`` (BIP113 needs the lock time strictly below the MTP)."""
        self._sync()  # both clocks come from the checked blocks, not from the node's word
        if self.expiry_unit is UnixTime:
            return UnixTime(self._pin.cached("mtp", self._median_time_past))
        return BlockHeight(self.index.height())

    def _median_time_past(self) -> int:
        mtp = self.index.median_time_past()
        # An index started above genesis has no eleven checked headers yet: the node's word.
        return self.backend.median_time_past() if mtp is None else mtp

    def observe(self) -> AbstractContextManager[None]:
        """Sync once; inside the block, the HTLC reads, the mempool and the clock see one view
        of the chain (no re-sync per read)."""
        return self._pin.hold(self.index.sync)

    def _sync(self) -> None:
        if not self._pin.held:
            self.index.sync()

    def _mempool(self) -> list[CTransaction]:
        return list(self._pin.cached("mempool", self._read_mempool))  # a copy to iterate

    def _read_mempool(self) -> list[CTransaction]:
        """The node's mempool, decoded. A transaction that does not decode is left out (and
        logged): unconfirmed transactions are only ever a hint here -- a node can hide them
        anyway -- and one bad entry must not stop every read of this chain."""
        out = []
        for raw in self.backend.mempool_raw():
            try:
                out.append(CTransaction.deserialize(raw))
            except Exception as exc:  # bitcointx raises several types for bad bytes
                log.warning(
                    "%s: the node's mempool holds %d bytes that are no transaction (%s); ignored",
                    self.chain,
                    len(raw),
                    type(exc).__name__,
                )
        return out

    def estimate_fee(self) -> FeeEstimate:
        """The node's estimate (the fallback without one), at least the relay minimum; one above
        the chain's ceiling is lowered to it. An answer that is no fee rate (NaN, a string, a
        negative number: :class:`BadRpcAnswer`) is logged and treated as no estimate: a claim
        or refund at the fallback rate, bumped later, beats none at all while a deadline runs."""
        try:
            rate = self.backend.estimate_fee_rate()
        except BadRpcAnswer as exc:
            log.error("%s: %s; paying the fallback fee rate", self.chain, exc)
            rate = None
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate < 0):
            log.error("%s: fee estimate %r is no rate; paying the fallback", self.chain, rate)
            rate = None
        if rate is not None and rate > self.params.max_fee_rate:
            log.warning(
                "%s fee estimate %d sat/vB is above the ceiling %d: paying the ceiling",
                self.chain,
                rate,
                self.params.max_fee_rate,
            )
            rate = self.params.max_fee_rate
        return FeeEstimate(rate=effective_fee_rate(rate, self.params))

    def _rate(self, fee: FeeEstimate | None) -> int:
        if fee is None:
            return self.estimate_fee().rate
        return effective_fee_rate(fee.rate, self.params)

    # ---- wallet ------------------------------------------------------------------------------

    def hold(self, txs: Sequence[SignedTx]) -> None:
        """Reserve the coins that ``txs`` (transactions this wallet signed on this chain: a
        lock, a child) spend: no other transaction of this adapter selects them until the
        spend is buried (:data:`HELD_UNTIL_DEPTH`) or :meth:`release`\\ d. Every transaction
        this adapter builds from wallet coins holds them itself at selection; this is for
        the ones signed before a restart (the engine holds every journaled one at start): a
        signed, unsent lock keeps its coins, so nothing else signs a double spend of them."""
        with self._coins:
            for signed in txs:
                if signed.chain == self.chain:
                    self._hold_tx(CTransaction.deserialize(signed.raw))

    def release(self, txs: Sequence[SignedTx]) -> None:
        """Give up the reservations of ``txs`` (abandoned: they will never be sent)."""
        gone = {t.txid for t in txs if t.chain == self.chain}
        with self._coins:
            for outpoint in [o for o, txid in self._held.items() if txid in gone]:
                del self._held[outpoint]

    def held(self) -> dict[tuple[str, int], str]:
        """The reserved coins: outpoint -> txid of the wallet transaction spending it."""
        with self._coins:
            return dict(self._held)

    def _hold_tx(self, tx: CTransaction) -> None:
        txid = b2lx(tx.GetTxid())
        for txin in tx.vin:
            self._held[(b2lx(txin.prevout.hash), txin.prevout.n)] = txid

    def _prune_held(self) -> None:
        """Forget reservations whose coin is spent by a transaction buried
        :data:`HELD_UNTIL_DEPTH` deep (the chain itself keeps it from being selected)."""
        for outpoint in list(self._held):
            spender = self.index.spends.get(outpoint)
            if spender is not None and self.index.confirmations(spender) >= HELD_UNTIL_DEPTH:
                del self._held[outpoint]

    def spendable(self) -> list[Utxo]:
        """Confirmed, mature wallet outputs not spent on chain or in the mempool, nor held by
        a transaction this wallet signed (:meth:`hold`: a lock signed but not yet sent or
        seen, one being built in another thread)."""
        with self._coins:
            return self._free_coins()

    def _free_coins(self) -> list[Utxo]:
        """:meth:`spendable`; the caller holds ``_coins`` (so that a coin it selects can be
        held before any other thread selects)."""
        unspent = self._unspent()
        self._prune_held()
        return [u for u in unspent if (u.txid, u.vout) not in self._held]

    def _unspent(self) -> list[Utxo]:
        """Confirmed, mature wallet outputs not spent on chain or in the mempool."""
        self.index.sync()
        mempool_spent = {
            (b2lx(txin.prevout.hash), txin.prevout.n)
            for tx in self._read_mempool()
            for txin in tx.vin
        }
        tip = self.index.height()
        out: list[Utxo] = []
        scripts = self.wallet.scripts()
        # The gap limit: an output paid near the end of what is derived derives further, and
        # the new keys are looked up too (a wallet restored from its seed alone).
        while any(self.wallet.extend_past(s) for s in scripts if s in self.index.by_script):
            scripts = self.wallet.scripts()
        for script in scripts:
            for txid, n in self.index.by_script.get(script, []):
                if (txid, n) in self.index.spends or (txid, n) in mempool_spent:
                    continue
                confirmed = self.index.txs[txid]
                if (
                    confirmed.tx.is_coinbase()
                    and tip + 1 - confirmed.height < self.params.coinbase_maturity
                ):
                    continue
                out.append(Utxo(txid, n, confirmed.tx.vout[n].nValue, script))
        return out

    def balance(self, token: str | None = None) -> int:
        if token is not None:
            raise InvalidInput(f"{self.chain} has no tokens, got token {token!r}")
        # Coins held by a signed, unsent lock are still counted: the engine already keeps the
        # amount of every swap not yet locked aside (``SwapEngine.reserved``).
        return sum(u.amount for u in self._unspent())

    # ---- HTLC --------------------------------------------------------------------------------

    @staticmethod
    def _known_output(output: str, what: str) -> str:
        if output not in HTLC_KINDS:
            raise InvalidInput(
                f"{what} must be one of {', '.join(HTLC_KINDS)}, got {output!r}", code="bad_output"
            )
        return output

    def min_amount(self, terms: HtlcTerms) -> int:
        """:func:`.tx.min_htlc_amount` at the node's fee estimate now (both forms priced at the
        larger spend)."""
        del terms
        return min_htlc_amount(self.estimate_fee().rate, self.params)

    def spend_fee_reserve(self) -> int:
        """0: a claim or refund pays its fee out of the HTLC (:meth:`min_amount` sees that it
        can)."""
        return 0

    def leg_output(self) -> str | None:
        """``Leg.output`` for a leg this node proposes on this chain (``None``: P2WSH)."""
        return None if self.htlc_kind == "p2wsh" else self.htlc_kind

    def _kind(self, terms: HtlcTerms) -> str:
        return self._known_output(terms.output or "p2wsh", "terms.output")

    def _check_terms(self, terms: HtlcTerms) -> tuple[bytes, bytes]:
        if terms.chain != self.chain:
            raise InvalidInput(f"terms.chain is {terms.chain!r}, this adapter is {self.chain!r}")
        if terms.token is not None:
            raise InvalidInput(f"{self.chain} has no tokens, got token {terms.token!r}")
        self._kind(terms)
        return pubkey_from_hex("sender", terms.sender), pubkey_from_hex(
            "recipient", terms.recipient
        )

    def witness_script(self, terms: HtlcTerms) -> bytes:
        ensure_thread_params()
        sender, recipient = self._check_terms(terms)
        return build_htlc_script(terms.payment_hash, recipient, sender, terms.expiry)

    def taproot_htlc(self, terms: HtlcTerms) -> TaprootHtlc:
        ensure_thread_params()
        sender, recipient = self._check_terms(terms)
        return build_taproot_htlc(terms.payment_hash, recipient, sender, terms.expiry)

    def output_script_pubkey(self, terms: HtlcTerms) -> bytes:
        """The scriptPubKey of the HTLC output for ``terms`` (in the form ``terms.output``)."""
        if self._kind(terms) == "p2tr":
            return self.taproot_htlc(terms).script_pubkey
        return p2wsh_script_pubkey(self.witness_script(terms))

    def prepare_lock(self, terms: HtlcTerms, fee: FeeEstimate | None = None) -> list[SignedTx]:
        spk = self.output_script_pubkey(terms)
        if not self.owns(terms.sender):
            raise InvalidInput(f"sender {terms.sender} is not a key of this wallet")
        # Even at the relay minimum its claim or refund would leave dust: no fee market can make
        # such a lock spendable. (Whether it is worth locking at today's fees is decided on the
        # terms, before anyone locks: ``min_amount`` / ``terms_amount``.)
        smallest = min_htlc_amount(self.params.min_relay_fee_rate, self.params)
        if terms.amount < smallest:
            raise InvalidInput(
                f"amount {terms.amount} is too small to lock: even at the relay minimum its "
                f"claim or refund would leave dust (at least {smallest} is needed)",
                code="amount_too_small",
            )
        rate = self._rate(fee)
        with self._coins:  # select and hold in one step: no other thread picks these coins
            utxos = self._free_coins()
            try:
                tx = build_funding_tx(
                    utxos,
                    self.wallet.key_for_script,
                    [(spk, terms.amount)],
                    self.wallet.next_key(CHANGE).script_pubkey,  # a new change address per lock
                    rate,
                    self.params,
                )
            except InsufficientFunds as exc:
                raise self._short(exc) from None
            self._hold_tx(tx)
        return [SignedTx(self.chain, TxKind.LOCK, b2lx(tx.GetTxid()), tx.serialize())]

    def htlc_ref(self, terms: HtlcTerms, lock_tx: SignedTx) -> HtlcRef:
        spk = self.output_script_pubkey(terms)
        tx = CTransaction.deserialize(lock_tx.raw)
        for n, out in enumerate(tx.vout):
            if bytes(out.scriptPubKey) == spk and out.nValue == terms.amount:
                return HtlcRef(terms, f"{lock_tx.txid}:{n}", lock_tx.txid)
        raise HtlcNotFound(f"transaction {lock_tx.txid} has no output locking these terms")

    def lock(self, terms: HtlcTerms, fee: FeeEstimate | None = None) -> HtlcRef:
        txs = self.prepare_lock(terms, fee)
        for tx in txs:
            self.broadcast(tx)
        return self.htlc_ref(terms, txs[-1])

    def _outpoint(self, ref: HtlcRef) -> tuple[str, int]:
        txid, _, vout = ref.locator.partition(":")
        hex_txid = len(txid) == 64 and all(c in "0123456789abcdef" for c in txid)
        if not hex_txid or not (vout.isascii() and vout.isdigit() and len(vout) <= 10):
            raise InvalidInput(f"locator must be txid:vout, got {ref.locator!r}")
        return txid, int(vout)

    def _find_tx(self, txid: str) -> CTransaction | None:
        """``txid`` from the best chain, else from the node's mempool; None if neither has it."""
        self._sync()
        found = self.index.txs.get(txid)
        if found is not None:
            return found.tx
        for tx in self._mempool():
            if b2lx(tx.GetTxid()) == txid:
                return tx
        return None

    def _output_amount(self, ref: HtlcRef) -> int:
        txid, vout = self._outpoint(ref)
        tx = self._find_tx(txid)
        if tx is not None and vout < len(tx.vout):
            return int(tx.vout[vout].nValue)
        raise HtlcNotFound(f"HTLC output {ref.locator} is not on chain or in the mempool")

    def prepare_redeem(
        self, ref: HtlcRef, preimage: bytes, fee: FeeEstimate | None = None
    ) -> SignedTx:
        check_preimage(preimage)
        if hashlib.sha256(preimage).digest() != ref.terms.payment_hash:
            raise InvalidInput("preimage does not hash to the HTLC's payment_hash")
        _, recipient = self._check_terms(ref.terms)
        return self._spend(ref, TxKind.REDEEM, recipient, fee, preimage=preimage)

    def prepare_refund(self, ref: HtlcRef, fee: FeeEstimate | None = None) -> SignedTx:
        sender, _ = self._check_terms(ref.terms)
        return self._spend(ref, TxKind.REFUND, sender, fee, preimage=None)

    # ---- the cooperative (key-path) claim of a Taproot HTLC (:mod:`.cooperative`) ------------

    def _taproot_only(self, ref: HtlcRef) -> TaprootHtlc:
        if self._kind(ref.terms) != "p2tr":
            raise InvalidInput(
                f"a cooperative claim needs a Taproot HTLC; {ref.locator} is "
                f"{self._kind(ref.terms)}",
                code="bad_output",
            )
        return self.taproot_htlc(ref.terms)

    def begin_cooperative_claim(
        self, ref: HtlcRef, fee: FeeEstimate | None = None
    ) -> CooperativeClaim:
        """Start a key-path claim of ``ref`` (this wallet is its recipient), paying this wallet
        at ``fee`` (default: the node's estimate); send ``claim.raw`` and ``claim.nonce`` to the
        sender, then :meth:`finish_cooperative_claim` with its answer."""
        htlc = self._taproot_only(ref)
        txid, vout = self._outpoint(ref)
        amount = self._output_amount(ref)
        unsigned = unsigned_key_path_spend(
            txid=txid,
            vout=vout,
            amount=amount,
            destination_script_pubkey=self.wallet.next_key(RECEIVE).script_pubkey,
            fee_rate=self._rate(fee),
            params=self.params,
        )
        key = self.wallet.key_for_pubkey(htlc.recipient_pubkey)
        return begin_claim(htlc, unsigned, amount, key.secret_bytes)

    def cosign_cooperative_claim(
        self, ref: HtlcRef, unsigned_raw: bytes, claimer_nonce: bytes
    ) -> tuple[bytes, bytes]:
        """As the sender of ``ref``: (public nonce, partial signature) for the recipient's
        key-path claim ``unsigned_raw``. The caller decides whether co-signing is safe (it
        gives up this HTLC's refund); this checks the claim spends only the HTLC output."""
        htlc = self._taproot_only(ref)
        key = self.wallet.key_for_pubkey(htlc.refund_pubkey)
        return cosign_claim(
            htlc,
            self._outpoint(ref),
            unsigned_raw,
            self._output_amount(ref),
            key.secret_bytes,
            claimer_nonce,
        )

    def finish_cooperative_claim(
        self, claim: CooperativeClaim, cosigner_nonce: bytes, partial: bytes
    ) -> SignedTx:
        """The signed key-path claim, once the sender's ``partial`` signature checks out."""
        ensure_thread_params()  # the engine may finish a claim in a thread of its own
        tx = finish_claim(claim, cosigner_nonce, partial)
        return SignedTx(self.chain, TxKind.REDEEM, b2lx(tx.GetTxid()), tx.serialize())

    def prepare_bump(
        self,
        ref: HtlcRef,
        sent: Sequence[SignedTx],
        preimage: bytes | None = None,
        fee: FeeEstimate | None = None,
    ) -> SignedTx:
        """A lock gets a child (:meth:`prepare_child`; replacing it would move the HTLC). A
        claim or refund gets a BIP125 replacement of the newest version where the chain's nodes
        relay them (:meth:`prepare_replacement`), else a child paying for the package. A claim
        or refund the node does not hold (it refused it for its fee, or evicted it) is re-signed
        at a higher fee on every chain: a child of it could not be relayed, and a new version
        replaces nothing in that node's mempool."""
        if not sent:
            raise InvalidInput(f"nothing sent for the HTLC {ref.locator} to bump")
        if sent[0].kind is TxKind.LOCK and self._find_tx(sent[0].txid) is None:
            raise InvalidInput(
                f"lock {sent[0].txid} is neither on chain nor in the node's mempool (refused or "
                "evicted): no node would relay a child of it; send it again when fees allow",
                code="lock_not_held",
            )
        if sent[0].kind is not TxKind.LOCK:
            held = self._find_tx(sent[0].txid) is not None
            if not held or self.params.replacement_relayed:
                if held and len(sent) > 1:
                    raise InvalidInput(
                        f"{self.chain} bumps a spend by replacement; got a package of {len(sent)}"
                    )
                return self.prepare_replacement(ref, sent[0], preimage, fee)
        return self.prepare_child(ref, sent, fee)

    def prepare_child(
        self, ref: HtlcRef, package: Sequence[SignedTx], fee: FeeEstimate | None = None
    ) -> SignedTx:
        """Child pays for parent. ``package`` starts with the lock of ``ref`` or a claim or
        refund of it, then holds the children already paying for that, each spending the one
        before. The new child spends the last one's wallet output (the lock's change, or output
        0) back to the wallet, with a fee that lifts the whole package to the new rate: the
        larger of ``fee`` (default: the node's estimate) and the package's rate plus a quarter
        (at least the relay minimum more). Miners take a package at its combined rate; the
        child alone also pays the relay minimum. Fees of the package never exceed
        :data:`MAX_BUMP_FEE_PCT` of the HTLC amount (a higher rate is lowered to the cap when a
        bump still fits under it, else refused), and a package never grows past the mempool's
        ancestor limit (:data:`MAX_PACKAGE`). Where that output cannot pay the child's fee (a
        lock's small change), the child adds confirmed wallet coins as inputs."""
        if not package:
            raise InvalidInput(f"nothing sent for the HTLC {ref.locator} to pay for")
        if len(package) >= MAX_PACKAGE:
            raise FeeBumpRefused(
                f"{package[0].kind} {package[0].txid} already has {len(package) - 1} children; "
                f"nodes keep at most {MAX_PACKAGE} unconfirmed transactions in a chain"
            )
        txs = [CTransaction.deserialize(t.raw) for t in package]
        head_fee, head_out = self._package_head(ref, package[0], txs[0])
        outs = [head_out] + [0] * (len(txs) - 1)  # the wallet output each one's child spends
        pairs = list(zip(itertools.pairwise(txs), outs[:-1], strict=True))
        for ((parent, child), n), signed in zip(pairs, package[1:], strict=True):
            first = child.vin[0].prevout
            if (b2lx(first.hash), first.n) != (b2lx(parent.GetTxid()), n):
                raise InvalidInput(f"transaction {signed.txid} is not a child of the one before it")
        paid = head_fee + sum(
            # A child that added wallet coins: their values are looked up on chain.
            (int(parent.vout[n].nValue) if len(child.vin) == 1 else self._inputs_value(child))
            - _paid_out(child)
            for (parent, child), n in pairs
        )
        amount = ref.terms.amount
        size = sum(vsize(tx) for tx in txs)
        old_rate = -(-paid // size)
        floor = old_rate + max(self.params.min_relay_fee_rate, old_rate // 4)
        rate = min(max(self._rate(fee), floor), self.params.max_fee_rate)
        if rate < floor:
            raise FeeBumpRefused(
                f"lifting {package[0].kind} {package[0].txid} needs {floor} sat/vB, above this "
                f"chain's ceiling of {self.params.max_fee_rate} sat/vB"
            )
        cap = amount * MAX_BUMP_FEE_PCT // 100

        def child_fee(child_vsize: int) -> int:
            total = size + child_vsize
            allowed = min(rate, cap // total)
            if allowed < floor:
                raise FeeBumpRefused(
                    f"lifting {package[0].kind} {package[0].txid} ({paid} sat in fees) to "
                    f"{floor} sat/vB needs {floor * total} sat, over {MAX_BUMP_FEE_PCT} % of the "
                    f"HTLC amount {amount}"
                )
            return allowed * total - paid

        tail, out = txs[-1], outs[-1]
        spk = bytes(tail.vout[out].scriptPubKey)
        own = Utxo(b2lx(tail.GetTxid()), out, int(tail.vout[out].nValue), spk)
        with self._coins:  # the coins a child adds are held like a lock's
            # An earlier child of this package never sent (a node refused it): it spends the
            # same output as this one, so at most one of them can ever confirm, and the coins
            # it added may pay for this one.
            rival = self._held.get((own.txid, own.vout))
            if rival is not None:
                for outpoint in [o for o, txid in self._held.items() if txid == rival]:
                    del self._held[outpoint]
            try:
                child = build_child_spend(
                    own, self.wallet.key_for_script, child_fee, self.params, self._free_coins()
                )
            except InsufficientFunds as exc:
                raise self._short(exc) from None
            self._hold_tx(child)
        return SignedTx(self.chain, TxKind.CHILD, b2lx(child.GetTxid()), child.serialize())

    def _package_head(self, ref: HtlcRef, signed: SignedTx, tx: CTransaction) -> tuple[int, int]:
        """(fee paid, index of the wallet output a child spends) of the first transaction of a
        fee-bump package: the lock of ``ref`` (its change) or a claim or refund of it."""
        txid, vout = self._outpoint(ref)
        if signed.txid == txid:
            change = [
                n
                for n, o in enumerate(tx.vout)
                if n != vout and bytes(o.scriptPubKey) in self.wallet.scripts()
            ]
            if not change:
                raise FeeBumpRefused(
                    f"lock {txid} has no change output for a child to pay its fee from"
                )
            return self._inputs_value(tx) - _paid_out(tx), change[0]
        if not any(b2lx(i.prevout.hash) == txid and i.prevout.n == vout for i in tx.vin):
            raise InvalidInput(
                f"transaction {signed.txid} is neither the lock nor a spend of the HTLC "
                f"{ref.locator}"
            )
        return ref.terms.amount - _paid_out(tx), 0

    def _inputs_value(self, tx: CTransaction) -> int:
        """What ``tx``'s inputs are worth (each from a confirmed or a mempool transaction)."""
        self._sync()
        pool = {b2lx(t.GetTxid()): t for t in self._mempool()}
        total = 0
        for txin in tx.vin:
            prev_id = b2lx(txin.prevout.hash)
            found = self.index.txs.get(prev_id)
            prev = found.tx if found is not None else pool.get(prev_id)
            if prev is None:
                raise ChainError(
                    f"input {prev_id}:{txin.prevout.n} of {b2lx(tx.GetTxid())} is neither on "
                    "chain nor in the mempool: its value, and so the fee paid, is unknown"
                )
            total += int(prev.vout[txin.prevout.n].nValue)
        return total

    def prepare_replacement(
        self,
        ref: HtlcRef,
        old: SignedTx,
        preimage: bytes | None = None,
        fee: FeeEstimate | None = None,
    ) -> SignedTx:
        """Re-sign the claim (``preimage``) or refund ``old`` of ``ref`` at a higher fee rate.

        The new rate is the larger of ``fee`` (default: the node's estimate) and the old rate
        plus a quarter (at least the relay minimum more). Core's BIP125 rules are then checked
        on the result: the fee rate goes up, and the absolute fee pays the old fee plus the
        relay fee for the replacement's own size. A replacement never spends more than
        :data:`MAX_BUMP_FEE_PCT` of the HTLC amount on fees: a higher rate is lowered to that
        cap when a bump still fits under it, else refused."""
        txid, vout = self._outpoint(ref)
        prev = CTransaction.deserialize(old.raw)
        if not any(b2lx(i.prevout.hash) == txid and i.prevout.n == vout for i in prev.vin):
            raise InvalidInput(f"transaction {old.txid} does not spend the HTLC {ref.locator}")
        amount = self._output_amount(ref)
        old_fee, old_vsize = amount - _paid_out(prev), vsize(prev)
        old_rate = -(-old_fee // old_vsize)
        step = max(self.params.min_relay_fee_rate, old_rate // 4)
        rate = min(max(self._rate(fee), old_rate + step), self.params.max_fee_rate)
        if rate < old_rate + step:
            raise FeeBumpRefused(
                f"replacing {old.txid} at {old_rate} sat/vB needs {old_rate + step}, above this "
                f"chain's ceiling of {self.params.max_fee_rate} sat/vB"
            )
        cap = amount * MAX_BUMP_FEE_PCT // 100
        for _ in range(_BUMP_TRIES):
            raised = FeeEstimate(rate)
            signed = (
                self.prepare_refund(ref, raised)
                if preimage is None
                else self.prepare_redeem(ref, preimage, raised)
            )
            tx = CTransaction.deserialize(signed.raw)
            new_fee, new_vsize = amount - _paid_out(tx), vsize(tx)
            if new_fee > cap:
                # The most the cap allows (sizes are estimated up to 1 vB high), if that is
                # still a valid bump; otherwise no bump at all.
                ceiling = cap // (new_vsize + 1)
                if old_rate + step <= ceiling < rate:
                    rate = ceiling
                    continue
                raise FeeBumpRefused(
                    f"replacing {old.txid} ({old_fee} sat) needs a fee of {new_fee} at "
                    f"{rate} sat/vB, over {MAX_BUMP_FEE_PCT} % of the HTLC amount {amount}"
                )
            relay = self.params.min_relay_fee_rate * new_vsize
            if new_fee >= old_fee + relay and new_fee * old_vsize > old_fee * new_vsize:
                return signed
            rate += step
            if rate > self.params.max_fee_rate:
                break
        raise FeeBumpRefused(f"no replacement of {old.txid} met BIP125 in {_BUMP_TRIES} tries")

    def _spend(
        self,
        ref: HtlcRef,
        kind: TxKind,
        signer: bytes,
        fee: FeeEstimate | None,
        *,
        preimage: bytes | None,
    ) -> SignedTx:
        """Sign the claim (with ``preimage``) or the refund (without) of the HTLC at ``ref``."""
        txid, vout = self._outpoint(ref)
        common: dict[str, Any] = {
            "txid": txid,
            "vout": vout,
            "amount": self._output_amount(ref),
            "key": self.wallet.key_for_pubkey(signer),
            "destination_script_pubkey": self.wallet.next_key(RECEIVE).script_pubkey,
            "fee_rate": self._rate(fee),
            "params": self.params,
            "preimage": preimage,
        }
        if self._kind(ref.terms) == "p2tr":
            tx = build_taproot_spend(
                htlc=self.taproot_htlc(ref.terms), refund=preimage is None, **common
            )
        else:
            tx = build_htlc_spend(
                witness_script=self.witness_script(ref.terms),
                refund_expiry=ref.terms.expiry if preimage is None else None,
                **common,
            )
        return SignedTx(self.chain, kind, b2lx(tx.GetTxid()), tx.serialize())

    def broadcast(self, tx: SignedTx) -> str:
        return self.backend.send_raw(tx.raw)

    def status(self, ref: HtlcRef) -> HtlcStatus:
        txid, vout = self._outpoint(ref)
        self._sync()
        mempool = self._mempool()
        lock_confs = self.index.confirmations(txid)
        if lock_confs == 0 and not any(b2lx(t.GetTxid()) == txid for t in mempool):
            return HtlcStatus(HtlcState.ABSENT)
        spender: CTransaction | None = None
        outcome: tuple[bool, bytes | None] | None = None
        spend_id = self.index.spends.get((txid, vout))
        if spend_id is not None:
            spender = self.index.txs[spend_id].tx
            outcome = self._spend_outcome(spender, txid, vout, ref.terms, confirmed=True)
        else:
            for tx in mempool:
                if any(b2lx(i.prevout.hash) == txid and i.prevout.n == vout for i in tx.vin):
                    outcome = self._spend_outcome(tx, txid, vout, ref.terms, confirmed=False)
                    if outcome is not None:
                        spender = tx
                        break
        if spender is None or outcome is None:
            return HtlcStatus(HtlcState.LOCKED, lock_confs)
        spender_id = b2lx(spender.GetTxid())
        redeemed, preimage = outcome
        return HtlcStatus(
            HtlcState.REDEEMED if redeemed else HtlcState.REFUNDED,
            lock_confs,
            spend_txid=spender_id,
            spend_confirmations=self.index.confirmations(spender_id),
            preimage=preimage,
        )

    def _spend_outcome(
        self, spender: CTransaction, txid: str, vout: int, terms: HtlcTerms, *, confirmed: bool
    ) -> tuple[bool, bytes | None] | None:
        """(redeemed?, preimage) for the transaction spending the HTLC output, read by what its
        witness proves (:func:`.tx.read_htlc_spend`, :func:`.taproot.read_taproot_spend`): only
        a proven refund is a refund, and a spend proving neither branch raises
        :class:`UnrecognisedSpend` (an alarm; the swap's state is not moved by it).

        None for a spend that is not ``confirmed`` (only a node's mempool shows it) and that the
        script interpreter could not check (an input on no chain the index follows: a node can
        add an input of a made-up transaction to a refund nobody signed), or that the next block
        could not hold (a refund signed before its expiry). Such a spend is believed only when
        it proves itself: a claim whose secret hashes to the payment hash.

        The script checks ``HASH160(preimage)``, i.e. 160 bits of ``sha256(preimage)``: a claim
        whose preimage does not hash to the payment hash in full (a RIPEMD160 collision, ~2^80
        work for the secret's owner) opens this output but no other leg. It is reported as a
        claim without a preimage, never as a secret to redeem with."""
        try:
            if self._kind(terms) == "p2tr":
                spend = read_taproot_spend(spender, txid, vout, self.taproot_htlc(terms))
            else:
                spend = read_htlc_spend(spender, txid, vout, self.witness_script(terms))
            checked = spend is not None and self._verify_spend(spender, txid, vout)
        except UnrecognisedSpend as exc:
            log.error("%s: ALARM %s", self.chain, exc)
            raise
        if spend is None:  # the index or the mempool named a transaction that does not spend it
            raise UnrecognisedSpend(
                f"{b2lx(spender.GetTxid())} is reported as spending HTLC {txid}:{vout} but has "
                "no input spending it"
            )
        proves_itself = (
            spend.path is SpendPath.CLAIM
            and spend.preimage is not None
            and hashlib.sha256(spend.preimage).digest() == terms.payment_hash
        )
        if not (confirmed or proves_itself):
            why = None
            if not checked:
                why = "cannot be checked (an input on no chain followed)"
            elif not self._final_next_block(spender):
                why = "could not be in the next block (its lock time is not reached)"
            if why is not None:
                log.warning(
                    "%s: %s (only in the node's mempool) spends HTLC %s:%d but %s: not "
                    "believed until it is mined",
                    self.chain,
                    b2lx(spender.GetTxid()),
                    txid,
                    vout,
                    why,
                )
                return None
        if spend.path is SpendPath.REFUND:
            return False, None
        # Cooperative key-path spend: KOFO co-signs only claims (the co-signer already holds
        # the preimage), and the chain shows none, so preimage is None.
        found = spend.preimage
        if found is not None and hashlib.sha256(found).digest() != terms.payment_hash:
            log.error(
                "%s: %s claims HTLC %s:%d with a secret whose sha256 is not the payment hash "
                "(a HASH160 collision): it opens no other leg",
                self.chain,
                b2lx(spender.GetTxid()),
                txid,
                vout,
            )
            return True, None
        return True, found

    def _final_next_block(self, tx: CTransaction) -> bool:
        """Whether ``tx`` is final for the block after the index's tip (Core's IsFinalTx with
        BIP113): the script interpreter checks a refund's nLockTime against the script's
        expiry, not against the chain, so a refund signed early passes it."""
        if tx.nLockTime == 0 or all(txin.nSequence == 0xFFFFFFFF for txin in tx.vin):
            return True
        if tx.nLockTime < 500_000_000:
            return bool(tx.nLockTime < self.index.height() + 1)
        return bool(tx.nLockTime < self._pin.cached("mtp", self._median_time_past))

    def _verify_spend(self, spender: CTransaction, txid: str, vout: int) -> bool:
        """Run Bitcoin Core's script interpreter (:func:`.kernel.verify_input`, every consensus
        flag) on the input of ``spender`` that opens ``txid:vout``: a claim or refund is only
        believed when its signature and script pass, so a node cannot show a spend that no one
        could have signed (in its mempool, where no proof of work backs it). The check needs
        every output ``spender`` spends (Taproot signatures commit to all of them); when one is
        neither on the followed chain nor in the mempool it is skipped and False returned: a
        confirmed spend is then read as it stands (backed by the block checks), an unconfirmed
        one only if it proves itself (:meth:`_spend_outcome`). True when the input passed."""
        spent: list[SpentOutput] = []
        pool: dict[str, CTransaction] | None = None
        index = -1
        for n, txin in enumerate(spender.vin):
            prev_id, out = b2lx(txin.prevout.hash), txin.prevout.n
            found = self.index.txs.get(prev_id)
            prev = found.tx if found is not None else None
            if prev is None:
                if pool is None:
                    pool = {b2lx(t.GetTxid()): t for t in self._mempool()}
                prev = pool.get(prev_id)
            if prev is None or out >= len(prev.vout):
                log.debug("%s: cannot see every input of %s", self.chain, b2lx(spender.GetTxid()))
                return False
            if (prev_id, out) == (txid, vout):
                index = n
            spent.append(
                SpentOutput(bytes(prev.vout[out].scriptPubKey), int(prev.vout[out].nValue))
            )
        try:
            verify_input(spender.serialize(), index, spent)
        except TxRejected as exc:
            raise UnrecognisedSpend(
                f"{b2lx(spender.GetTxid())} spends HTLC {txid}:{vout} with a witness that fails "
                f"Bitcoin's script rules ({exc})"
            ) from None
        return True

    def find_htlc(
        self,
        terms: HtlcTerms,
        *,
        spent_since: int | None = None,
        not_before: int | None = None,
    ) -> HtlcRef | None:
        # The index holds spent outputs too, so ``spent_since`` needs no extra search here, and
        # it covers every block from its start, so ``not_before`` saves nothing either.
        spk = self.output_script_pubkey(terms)
        self._sync()
        for txid, n in self.index.by_script.get(spk, []):
            if self.index.txs[txid].tx.vout[n].nValue == terms.amount:
                return HtlcRef(terms, f"{txid}:{n}", txid)
        for tx in self._mempool():
            for n, out in enumerate(tx.vout):
                if bytes(out.scriptPubKey) == spk and out.nValue == terms.amount:
                    txid = b2lx(tx.GetTxid())
                    return HtlcRef(terms, f"{txid}:{n}", txid)
        return None

    def audit(self, ref: HtlcRef, expected: HtlcTerms, min_confirmations: int) -> HtlcStatus:
        """Check the output at ``ref`` pays the P2WSH of exactly ``expected``'s HTLC script.

        Errors carry ``audit_<field>`` codes (as the Ethereum adapter's do), so evidence names
        the field. The output commits to a hash of the script; when ``ref.terms`` (the terms the
        counterparty claims) produce that output, the first script field that differs from
        ``expected`` is named, otherwise ``audit_script``. Fields are checked before
        confirmations, so a wrong lock still in the mempool is reported for what is wrong with
        it, not as merely unconfirmed.
        """
        if expected.chain != self.chain:
            raise AuditFailed(
                f"chain: expected {expected.chain!r}, this is {self.chain!r}", code="audit_chain"
            )
        txid, vout = self._outpoint(ref)
        tx = self._find_tx(txid)
        if tx is None or vout >= len(tx.vout):
            raise AuditFailed(
                f"confirmations: {ref.locator} is not confirmed on the best chain "
                f"(expected at least {max(min_confirmations, 1)})",
                code="audit_confirmations",
            )
        out = tx.vout[vout]
        if out.nValue != expected.amount:
            raise AuditFailed(
                f"amount: expected {expected.amount}, on chain {out.nValue}", code="audit_amount"
            )
        spk = bytes(out.scriptPubKey)
        if spk != self.output_script_pubkey(expected):
            self._name_script_field(ref.terms, expected, spk)
        status = self.status(ref)
        if status.state is not HtlcState.LOCKED:
            raise AuditFailed(
                f"state: expected locked, it is {status.state.value}", code="audit_state"
            )
        if status.confirmations < min_confirmations:
            raise AuditFailed(
                f"confirmations: expected at least {min_confirmations}, has {status.confirmations}",
                code="audit_confirmations",
            )
        return status

    def _name_script_field(self, claimed: HtlcTerms, expected: HtlcTerms, spk: bytes) -> NoReturn:
        """Raise for a script mismatch, naming the field when ``claimed`` explains ``spk``."""
        try:
            explained = claimed.chain == self.chain and self.output_script_pubkey(claimed) == spk
        except InvalidInput:
            explained = False
        if explained:
            for name in ("payment_hash", "recipient", "sender", "expiry"):
                have, want = getattr(claimed, name), getattr(expected, name)
                if have != want:
                    shown = (have.hex(), want.hex()) if isinstance(have, bytes) else (have, want)
                    raise AuditFailed(
                        f"{name}: expected {shown[1]}, the script has {shown[0]}",
                        code=f"audit_{name}",
                    )
        raise AuditFailed(
            "script: the output does not commit to the expected payment_hash, "
            "recipient, sender and expiry",
            code="audit_script",
        )

    def audit_script(self, ref: HtlcRef, witness_script: bytes, expected: HtlcTerms) -> None:
        """Parse the counterparty's ``witness_script`` and name the first field that differs."""
        txid, vout = self._outpoint(ref)
        self._sync()
        found = self.index.txs.get(txid)
        if found is None or vout >= len(found.tx.vout):
            raise AuditFailed(f"locator: {ref.locator} is not confirmed on the best chain")
        try:
            fields = parse_htlc_script(witness_script, bytes(found.tx.vout[vout].scriptPubKey))
        except InvalidInput as exc:
            raise AuditFailed(f"script: {exc}") from None
        sender, recipient = self._check_terms(expected)
        if not fields.matches_payment_hash(expected.payment_hash):
            raise AuditFailed("payment_hash: the script locks to a different hash")
        if fields.recipient_pubkey != recipient:
            raise AuditFailed(
                f"recipient: expected {expected.recipient}, script pays "
                f"{fields.recipient_pubkey.hex()}"
            )
        if fields.refund_pubkey != sender:
            raise AuditFailed(
                f"sender: expected {expected.sender}, script refunds to "
                f"{fields.refund_pubkey.hex()}"
            )
        if fields.expiry != expected.expiry:
            raise AuditFailed(f"expiry: expected {expected.expiry}, script has {fields.expiry}")

    # ---- following the chain -----------------------------------------------------------------

    def tip(self) -> BlockInfo:
        """The tip of the checked index (synced first outside :meth:`observe`)."""
        self._sync()
        return self.block_at(self.index.height())

    def block_at(self, height: int) -> BlockInfo:
        """A block of the checked index; one below its start is read from the node (its hash
        checked against its header, nothing more: a block the index never followed)."""
        known = self.index.block(height)
        if known is not None:
            return known
        block_hash = self.backend.block_hash(height)
        header = parse_header(self.backend.block_raw(block_hash))
        if header.hash != block_hash:
            raise BadBlock(f"the node's block {block_hash} at {height} hashes to {header.hash}")
        return BlockInfo(height=height, hash=block_hash, time=header.time)

    def tx_confirmations(self, txid: str) -> int:
        self._sync()
        return self.index.confirmations(txid)

    def lock_unminable(self, ref: HtlcRef, txs: Sequence[SignedTx], depth: int) -> bool:
        """A lock can be mined as long as every coin it spends is unspent (or spent by it):
        only another transaction spending one of them, buried ``depth`` deep, rules it out."""
        self._sync()
        lock = next((t for t in txs if t.txid == ref.lock_txid and t.chain == self.chain), None)
        if lock is None:
            return False  # not ours to judge: keep watching
        for txin in CTransaction.deserialize(lock.raw).vin:
            spender = self.index.spends.get((b2lx(txin.prevout.hash), txin.prevout.n))
            if (
                spender is not None
                and spender != lock.txid
                and self.index.confirmations(spender) >= max(depth, 1)
            ):
                return True
        return False

    def prepare_lock_cancel(
        self,
        ref: HtlcRef,
        txs: Sequence[SignedTx],
        prev: SignedTx | None = None,
        fee: FeeEstimate | None = None,
    ) -> SignedTx | None:
        """A self-spend that ends our signed lock of ``ref`` (in ``txs``), never seen on chain:
        the lock's largest input spent whole back to this wallet, at a fee that replaces the
        lock wherever it may still wait (BIP125: a higher rate, and the lock's fee plus the
        relay fee for its own size) and, given ``prev`` (an earlier version not mined), bumps
        that one by a quarter of its rate at least. Buried, it makes the lock unminable
        (:meth:`lock_unminable`). None when nothing is to be done: the lock is on chain, or a
        coin of it is already spent by another transaction (on chain, or in the mempool other
        than ``prev``): that conflict ends the lock by itself. The caller decides that the lock
        is no longer wanted (the engine: past its HTLC's expiry)."""
        self._sync()
        lock = next((t for t in txs if t.txid == ref.lock_txid and t.chain == self.chain), None)
        if lock is None or self.index.confirmations(lock.txid) > 0:
            return None
        ltx = CTransaction.deserialize(lock.raw)
        in_pool = {
            (b2lx(i.prevout.hash), i.prevout.n): b2lx(t.GetTxid())
            for t in self._mempool()
            for i in t.vin
        }
        coins: list[Utxo] = []
        for txin in ltx.vin:
            outpoint = (b2lx(txin.prevout.hash), txin.prevout.n)
            if self.index.spends.get(outpoint) is not None:
                return None  # mined by the lock or a conflict: nothing to cancel
            other = in_pool.get(outpoint)
            if other is not None and other != lock.txid and (prev is None or other != prev.txid):
                return None  # the wallet spends it elsewhere already
            found = self.index.txs.get(outpoint[0])
            if found is not None:
                out = found.tx.vout[outpoint[1]]
                coins.append(Utxo(*outpoint, int(out.nValue), bytes(out.scriptPubKey)))
        if not coins:
            raise ChainError(f"lock {lock.txid} spends no confirmed coin of this wallet")
        coin = max(coins, key=lambda u: (u.amount, u.txid, u.vout))
        relay = self.params.min_relay_fee_rate
        dest = self.wallet.next_key(CHANGE).script_pubkey
        size = self_spend_vsize(dest)
        lock_fee = self._inputs_value(ltx) - _paid_out(ltx)
        floor_rate = -(-lock_fee // vsize(ltx)) + 1
        floor_fee = lock_fee + relay * size
        if prev is not None:
            ptx = CTransaction.deserialize(prev.raw)
            prev_fee = coin.amount - _paid_out(ptx)
            prev_rate = -(-prev_fee // vsize(ptx))
            floor_rate = max(floor_rate, prev_rate + max(relay, prev_rate // 4))
            floor_fee = max(floor_fee, prev_fee + relay * size)
        rate = min(max(self._rate(fee), floor_rate), self.params.max_fee_rate)
        amount = max(rate * size, floor_fee)
        with self._coins:
            tx = build_self_spend(
                coin, self.wallet.key_for_script(coin.script_pubkey), dest, amount, self.params
            )
            self._hold_tx(tx)
        return SignedTx(self.chain, TxKind.TRANSFER, b2lx(tx.GetTxid()), tx.serialize())

    def _short(self, exc: InsufficientFunds) -> InsufficientFunds:
        """``exc``, saying which coins are held by this wallet's own unconfirmed transactions
        (their change becomes spendable once they confirm: a retry then may succeed)."""
        held = set(self._held.values())
        if not held:
            return exc
        return InsufficientFunds(
            f"{exc}; {len(self._held)} more coin(s) are held by {len(held)} transaction(s) "
            "this wallet signed that are not yet confirmed (their change is spendable once "
            "they are)"
        )

    def require_funds(self, amount: int) -> None:
        if self.balance() < amount:
            raise InsufficientFunds(f"wallet balance {self.balance()} is below {amount}")
