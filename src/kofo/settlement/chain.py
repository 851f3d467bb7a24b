"""The chain adaptation standard: one interface every chain implements.

A swap never knows whether its chain is embedded (in-process) or a real node: both sit behind a
:class:`ChainAdapter`. Adding a chain means writing one adapter under
``kofo/settlement/chains/<name>/`` and nothing else.

Transactions are *prepared* (built and signed) separately from being *broadcast*, so the swap
engine can write every signed transaction to its journal before it leaves the process, and
re-broadcast it idempotently after a crash.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from kofo.errors import InvalidInput
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.legkeys import LegRole

# The plain terms types are protocol data (messages carry them): defined in ``wire``, re-exported
# here so every chain adapter keeps importing them from the chain standard.
from kofo.wire.terms import HtlcTerms, check_payment_hash

__all__ = [
    "PREIMAGE_SIZE",
    "BlockHeight",
    "BlockInfo",
    "ChainAdapter",
    "Expiry",
    "FeeEstimate",
    "HtlcRef",
    "HtlcState",
    "HtlcStatus",
    "HtlcTerms",
    "SignedTx",
    "TxKind",
    "UnixTime",
    "check_payment_hash",
    "check_preimage",
]

PREIMAGE_SIZE = 32
"""Every chain checks the preimage is exactly 32 bytes (Bitcoin: ``OP_SIZE 32``; Ethereum: the
``bytes32`` argument), so a secret valid on one chain is valid on every other one."""


def check_preimage(preimage: bytes) -> bytes:
    # The value itself never goes into the message: it may still be secret.
    if not isinstance(preimage, bytes) or len(preimage) != PREIMAGE_SIZE:
        size = len(preimage) if isinstance(preimage, bytes) else type(preimage).__name__
        raise InvalidInput(f"preimage must be exactly {PREIMAGE_SIZE} bytes, got {size}")
    return preimage


@dataclass(frozen=True, slots=True)
class HtlcRef:
    """Where a locked HTLC lives.

    ``locator`` is chain-specific: the contract's swap id (hex) on Ethereum, ``txid:vout`` of the
    funding output on Bitcoin-like chains. ``terms`` travel along so redeem/refund can be built
    from the reference alone.
    """

    terms: HtlcTerms
    locator: str
    lock_txid: str


class TxKind(enum.StrEnum):
    APPROVE = "approve"
    LOCK = "lock"
    REDEEM = "redeem"
    REFUND = "refund"
    TRANSFER = "transfer"
    CHILD = "child"  # spends our own output of a stuck lock/redeem/refund to pay its fee (CPFP)


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A fully signed transaction, ready to broadcast (and to be journaled before that)."""

    chain: str
    kind: TxKind
    txid: str
    raw: bytes = field(repr=False)


class HtlcState(enum.StrEnum):
    ABSENT = "absent"  # not on chain (or only in a block that was reorganised away)
    LOCKED = "locked"
    REDEEMED = "redeemed"
    REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class HtlcStatus:
    """What the chain says about an HTLC right now.

    ``confirmations`` counts blocks on top of (and including) the block holding the lock;
    0 means unconfirmed. ``spend_confirmations`` does the same for the redeem/refund.
    ``preimage`` is set once a redeem is visible (it is public from then on).
    """

    state: HtlcState
    confirmations: int = 0
    spend_txid: str | None = None
    spend_confirmations: int = 0
    preimage: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class BlockInfo:
    height: int
    hash: str
    time: int  # block timestamp, seconds


@dataclass(frozen=True, slots=True)
class FeeEstimate:
    """A fee level in the chain's own units.

    Bitcoin-like: ``rate`` is sat/vB. Ethereum: ``rate`` is ``maxFeePerGas`` in wei and
    ``priority`` is ``maxPriorityFeePerGas`` in wei.
    """

    rate: int
    priority: int = 0


@runtime_checkable
class ChainAdapter(Protocol):
    """The interface every chain implements (see module docstring)."""

    chain: str
    """Short chain name: ``"btc"``, ``"ltc"``, ``"eth"``."""

    outputs: tuple[str, ...]
    """HTLC output forms (``HtlcTerms.output``) this adapter can lock, audit and spend besides
    the chain's default (``None``); a leg naming another is refused (``terms_output``)."""

    def leg_output(self) -> str | None:
        """``Leg.output`` for a leg this node proposes on the chain: its configured form."""
        ...

    def min_amount(self, terms: HtlcTerms) -> int:
        """The smallest amount an HTLC of ``terms``' form can lock so that its claim and its
        refund, at the chain's fees now, still pay something out (below it a lock could be
        neither claimed nor refunded); a leg asking for less is refused (``terms_amount``)."""
        ...

    def spend_fee_reserve(self) -> int:
        """Native base units this node's wallet keeps aside, per HTLC spend (redeem or refund)
        it may have to send, for that spend's fee paid from outside the HTLC, at the chain's
        fees now with room for a rise; 0 where a spend pays its fee out of the HTLC itself
        (Bitcoin-like chains). A node that cannot pay its redeem or refund loses the leg."""
        ...

    def expiry_now(self) -> Expiry:
        """The chain's clock in the unit its HTLC expiries use (height or block time)."""
        ...

    def address(self) -> str:
        """A key or address of this node for one leg of a new swap, in the form ``HtlcTerms``
        uses (its sender or recipient). Where the chain allows, every call gives a new one,
        derived from the node's seed and recorded before it is returned, so swaps are not
        linkable through it (Bitcoin-like chains); Ethereum gives the node's one account."""
        ...

    def owns(self, address: str) -> bool:
        """Whether ``address`` (a sender or recipient in terms) is this node's: one that
        :meth:`address` handed out. Cheap and derivation-free (asked for every proposal)."""
        ...

    def prove_leg_key(self, address: str, order_id: bytes, leg: int, role: LegRole) -> bytes:
        """The proof that this wallet holds the key behind ``address`` (one it handed out) as
        leg ``leg``'s ``role`` of ledger order ``order_id`` (:mod:`kofo.wire.legkeys`); raises
        for an address that is not its own."""
        ...

    def balance(self, token: str | None = None) -> int:
        """Confirmed balance of this node's wallet in base units."""
        ...

    def prepare_lock(self, terms: HtlcTerms, fee: FeeEstimate | None = None) -> Sequence[SignedTx]:
        """Build and sign what locks ``terms`` (an ERC-20 lock may need an approve first)."""
        ...

    def htlc_ref(self, terms: HtlcTerms, lock_tx: SignedTx) -> HtlcRef:
        """The reference of the HTLC that ``lock_tx`` creates."""
        ...

    def prepare_redeem(
        self, ref: HtlcRef, preimage: bytes, fee: FeeEstimate | None = None
    ) -> SignedTx:
        """Build and sign the redeem paying ``ref.terms.recipient``."""
        ...

    def prepare_refund(self, ref: HtlcRef, fee: FeeEstimate | None = None) -> SignedTx:
        """Build and sign the refund to ``ref.terms.sender`` (valid once the expiry passes)."""
        ...

    def prepare_bump(
        self,
        ref: HtlcRef,
        sent: Sequence[SignedTx],
        preimage: bytes | None = None,
        fee: FeeEstimate | None = None,
    ) -> SignedTx:
        """Raise the fee of our lock, redeem (``preimage`` given) or refund of ``ref`` that is
        waiting unconfirmed. ``sent`` is what was sent for it: the lock or the newest version
        of the spend, then any children already paying for it.

        The chain decides how. A replacement (kind ``REDEEM``/``REFUND``) spends the same HTLC
        (Bitcoin: the same outpoint, under BIP125; Ethereum: the same nonce), so it supersedes
        ``sent``. A child (kind ``CHILD``; a lock on a Bitcoin-like chain, or a spend where its
        nodes relay no replacement) spends the last transaction of ``sent`` back to our wallet
        (a lock: its change), so the whole package is mined at its combined fee rate and is
        sent after ``sent``. A spend the node does not hold (refused for its fee, evicted) gets
        a replacement on every chain: a child of it could not be relayed. Either way the new
        rate is at least ``fee`` (default: the current estimate) and the chain's rules for a
        bump. Raises :class:`kofo.errors.ChainError` when they cannot be met (e.g. the fee
        would eat more of the HTLC than this adapter allows)."""
        ...

    def hold(self, txs: Sequence[SignedTx]) -> None:
        """Keep what ``txs`` (signed by this wallet, maybe never sent) use from being used by
        any other transaction this adapter prepares: on a Bitcoin-like chain the wallet coins
        they spend (until that spend is buried or :meth:`release`\\ d). Every ``prepare_*``
        holds what it chose itself; the engine calls this at start for every journaled
        transaction of its unfinished swaps. (Ethereum: nothing to do, its nonce store is
        durable and already keeps every signed nonce reserved.)"""
        ...

    def release(self, txs: Sequence[SignedTx]) -> None:
        """Give up what :meth:`hold` kept for ``txs``: they will never be sent."""
        ...

    def broadcast(self, tx: SignedTx) -> str:
        """Send ``tx``; idempotent (a tx the chain already has is not an error). Returns txid.
        A refusal for the fee alone raises :class:`kofo.errors.FeeTooLow` (the same spend at a
        higher fee may be taken); any other refusal another :class:`kofo.errors.ChainError`."""
        ...

    def status(self, ref: HtlcRef) -> HtlcStatus:
        """The HTLC's on-chain state, confirmations and (once redeemed) the preimage."""
        ...

    def find_htlc(
        self,
        terms: HtlcTerms,
        *,
        spent_since: int | None = None,
        not_before: int | None = None,
    ) -> HtlcRef | None:
        """Look for a lock matching ``terms`` exactly (the counterparty's, when auditing).

        A live (unspent) lock is always found. A lock already redeemed or refunded is found
        when ``spent_since`` (a block height) is given and the lock is at or above it; without
        it an adapter may skip that search, which can cost a scan of the chain's history.
        ``not_before`` (a block height) says no lock of these terms can be below it (its
        payment hash did not exist yet): an adapter may then leave older history unread."""
        ...

    def audit(self, ref: HtlcRef, expected: HtlcTerms, min_confirmations: int) -> HtlcStatus:
        """Check the HTLC at ``ref`` on chain matches ``expected`` field by field and has at
        least ``min_confirmations``. Raises :class:`kofo.errors.AuditFailed` naming the first
        field that differs."""
        ...

    def tip(self) -> BlockInfo:
        """The best block."""
        ...

    def observe(self) -> AbstractContextManager[None]:
        """A block within which chain reads (``status``, ``find_htlc``, ``audit``,
        ``tx_confirmations``, ``expiry_now``) see one view of the chain, read once on entry:
        a decision made from several reads sees a consistent chain and pays for one head
        query. Re-entrant; per thread. Signing and broadcasting are not meant to run inside."""
        ...

    def block_at(self, height: int) -> BlockInfo:
        """The block at ``height`` on the best chain (used to notice reorgs)."""
        ...

    def tx_confirmations(self, txid: str) -> int:
        """Confirmations of ``txid`` on the best chain; 0 if in mempool or unknown."""
        ...

    def lock_unminable(self, ref: HtlcRef, txs: Sequence[SignedTx], depth: int) -> bool:
        """Whether ``txs`` (our signed lock of ``ref``, with any approve or child), not on
        chain, can never create the HTLC any more: a coin the lock spends is spent by another
        transaction buried ``depth`` deep (Bitcoin-like), or the chain's clock has reached the
        HTLC's expiry and the contract refuses such a lock (Ethereum). False while the lock
        could still be mined, by anyone holding it."""
        ...

    def estimate_fee(self) -> FeeEstimate:
        """A fee level likely to confirm within a few blocks; never below the relay minimum."""
        ...

    def lock(self, terms: HtlcTerms, fee: FeeEstimate | None = None) -> HtlcRef:
        """Convenience for callers without a journal: prepare, broadcast, return the ref."""
        ...


_T = TypeVar("_T")


class CooperativeClaimSession(Protocol):
    """The claimer's half of a cooperative claim, kept in memory between its two steps."""

    @property
    def raw(self) -> bytes:
        """The unsigned claim, as the co-signer receives it."""
        ...

    @property
    def nonce(self) -> bytes:
        """The claimer's public MuSig2 nonce."""
        ...


@runtime_checkable
class BatchSettlement(Protocol):
    """Optional, for chains where one transaction can redeem or refund several HTLCs (the
    Ethereum contract's ``redeem_many``/``refund_many``). The swap engine uses it for the redeems
    (and the refunds) that fall due together on one chain; each swap stores the one transaction
    as its own and reads its outcome from the chain as for a single one. Every payout still goes
    only to each HTLC's recipient (redeem) or sender (refund)."""

    def prepare_redeem_many(
        self, items: Sequence[tuple[HtlcRef, bytes]], fee: FeeEstimate | None = None
    ) -> SignedTx:
        """One transaction redeeming each ``(ref, preimage)``."""
        ...

    def prepare_refund_many(
        self, refs: Sequence[HtlcRef], fee: FeeEstimate | None = None
    ) -> SignedTx:
        """One transaction refunding each of ``refs`` (all past their expiry)."""
        ...


@runtime_checkable
class CooperativeClaims(Protocol):
    """Optional, for chains whose HTLC both parties can spend with one signature (a Taproot
    HTLC's key path): a claim that is smaller than the claim leaf and shows no preimage. The
    sender co-signs only once the recipient could claim anyway (it holds the preimage); the
    swap engine decides that, the adapter only builds and checks the transaction."""

    def begin_cooperative_claim(
        self, ref: HtlcRef, fee: FeeEstimate | None = None
    ) -> CooperativeClaimSession:
        """As the recipient: the unsigned claim of ``ref`` and our nonce."""
        ...

    def cosign_cooperative_claim(
        self, ref: HtlcRef, unsigned_raw: bytes, claimer_nonce: bytes
    ) -> tuple[bytes, bytes]:
        """As the sender: (our nonce, our partial signature) for the recipient's claim."""
        ...

    def finish_cooperative_claim(
        self, claim: Any, cosigner_nonce: bytes, partial: bytes
    ) -> SignedTx:
        """As the recipient: the signed claim, once the sender's part checks out. The swap
        engine calls it outside its lock, so it must not touch shared state (pure crypto)."""
        ...


class HeadPin:
    """How an adapter implements :meth:`ChainAdapter.observe`: a re-entrant, per-thread pin,
    and values read at most once while it is held."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def held(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    @contextmanager
    def hold(self, on_entry: Callable[[], object]) -> Iterator[None]:
        """Hold the pin; the outermost entry runs ``on_entry`` (the adapter's one head read)."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.cache = {}
            on_entry()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    def cached(self, key: str, read: Callable[[], _T]) -> _T:
        """``read()``, once per holding of the pin (every time when it is not held)."""
        if not self.held:
            return read()
        cache: dict[str, Any] = self._local.cache
        if key not in cache:
            cache[key] = read()
        return cache[key]  # type: ignore[no-any-return]
