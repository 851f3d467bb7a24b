"""The ledger app: a deterministic state machine over signed clearance transactions.

``LedgerApp.finalize_block(block)`` applies a block's transactions in order to the Merkle store
and returns the app hash and one result per transaction; ``commit()`` makes it durable. Nothing
in here reads a clock, draws randomness or does I/O beyond the store: time is ``block.time``
(seconds, from the block producer — the solo producer or CometBFT's BFT time), so replaying the
same blocks from genesis gives the same app hash on every machine.

A transaction is applied atomically: its writes go to an overlay that reaches the store only if
every rule passed. A refused transaction still occupies its place in the block (CometBFT keeps
it with a non-zero code) and changes nothing.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import cbor2
import coincurve

from kofo.clearance import admission, attest, bonds, clocks, privacy
from kofo.clearance.admission import BlockBudget, SenderRateLimit
from kofo.clearance.attest import Validator
from kofo.clearance.errors import (
    AlreadyExists,
    EvidenceInvalid,
    FeeRuleViolated,
    InternalError,
    NotAuthorised,
    NotFound,
    OrderInvalid,
    RateLimited,
    UnknownNode,
    WithdrawalInvalid,
    abci_code,
)
from kofo.clearance.fees import protocol_fee, split_fee
from kofo.clearance.importance import NodeStats, decay, rank_routes, score
from kofo.clearance.params import FOUNDATION, LedgerParams
from kofo.clearance.ranking import MAX_RANKED, Ranking
from kofo.clearance.store import MerkleStore
from kofo.errors import ConfigError, InvalidInput, KofoError
from kofo.wire.attest import (
    MAX_BLIND,
    MAX_OBSERVATIONS,
    OBSERVER_METHODS,
    BondObservation,
    ChainObserver,
    ChainTip,
    ExecutedDecision,
    LegRef,
    Observation,
    decode_extension,
    decode_extension_with_blind,
    encode_extension,
)
from kofo.wire.codec import EncodingError, count_items, decode, encode
from kofo.wire.envelope import (
    BadMessage,
    Envelope,
    check_signature,
    read_message,
    signed_sender,
)
from kofo.wire.expiry import BlockHeight, UnixTime
from kofo.wire.orders import (
    MAX_LEGS,
    NODE_ID_SIZE,
    ORDER_DOMAIN,
    ORDER_ID_SIZE,
    CommitOrder,
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    OrderKind,
    Quote,
    QuoteRole,
    RegisterNode,
    RegisterValidatorKey,
    ReportOutcome,
    SettlementOrder,
    Take,
    TxBody,
    Unbond,
    WithdrawFees,
    derive_order_id,
    derive_quote_id,
    parse_tx_body,
    show_int,
    verify_ed25519,
)

log = logging.getLogger("kofo.clearance")

_VERIFIED_CACHE = 200_000
"""Transactions CheckTx already verified (signatures included), kept by hash so FinalizeBlock
does not verify them twice; bounded so a flood of txs cannot grow memory without limit."""
_VERIFIED_BYTES = 32 << 20
"""...and bounded in bytes: at most 32 MiB of tx bytes (a decoded tx takes a few times its
wire size in memory; 32 MiB still holds ~16,000 orders, three full blocks), whatever the size
of the txs a spammer sends."""
MAX_TX_BYTES = 64 << 10
"""The largest ledger tx: an 8-leg order with every quote carrying a 3072-bit ciphertext is
~30 KiB. Bigger ones are refused before they are even decoded."""


MAX_TX_ITEMS = 2_048
"""CBOR items in a ledger tx, counted from the headers before anything is decoded (the heaviest
valid tx, an 8-leg order with 16 relays and every fee ciphertext, holds ~610): 64 KiB of
one-byte items (``[[], [], ...]``) from anyone, without a key, cost every validator's CheckTx
60-90 ms to decode and refuse; now under a millisecond."""
MAX_QUERY_BYTES = 32 << 10
"""A query's argument (the largest, ``/rank_routes`` of 64 routes of 8 ids, is ~17.5 KB)."""
MAX_QUERY_ITEMS = 1_024
"""...and its CBOR items (``/rank_routes`` at most ~580)."""


MAX_OBSERVED_ORDERS = 1_024
"""Open orders one ExtendVote asks the observer about (at most 8 legs each): bounds the work per
height however many orders are open; with more, a window rotates over them height by height."""


def _window(ids: list[bytes], height: int, size: int | None = None) -> list[bytes]:
    """``size`` (default ``MAX_OBSERVED_ORDERS``) of the sorted ``ids`` from a start rotating
    with ``height``: O(window), the same on every validator with the same state."""
    size = MAX_OBSERVED_ORDERS if size is None else size
    n = len(ids)
    if n <= size:
        return list(ids)
    start = height * size % n
    out = ids[start : start + size]
    return out + ids[: size - len(out)]


COMPLETE_EXTENSION_OBS = 32
"""A vote extension with fewer leg facts than this looked at its validator's whole order window:
ExtendVote stops at ``MAX_OBSERVATIONS`` (64) facts, and encoding drops leg facts only past
``MAX_EXTENSION_BYTES`` (7,680 bytes: more than 38 leg facts of at most ~180 bytes beside 16
tips and 16 ``blind`` chains, always kept). Only then does the window count as observed, and
only for the chains the extension does not name as ``blind`` (see
:meth:`LedgerApp._observed_window`)."""

_NOT_DUE = 1 << 62
"""An order state's ``due`` once every leg is attested or already seen missed."""


def _ids_in_range(ids: list[bytes], first: bytes, last: bytes) -> list[bytes]:
    """The sorted ``ids`` in ``first..last`` (inclusive; wrapping round if ``first > last``)."""
    lo, hi = bisect.bisect_left(ids, first), bisect.bisect_right(ids, last)
    return ids[lo:hi] if first <= last else ids[lo:] + ids[:hi]


def _lock_seen(leg: Mapping[str, Any], status: str) -> str:
    """How the ledger knows a leg's lock (``status``: its order's): ``"in_time"`` (attested
    before any observation after its deadline saw it missing: a flood slowing the window only
    delays it), ``"late"`` (attested after one), ``"missed"`` (seen missing after its deadline
    and not attested since; or, the order failed, never attested: no lock is attested after a
    failure, as before) or ``"unseen"`` (open, no lock attested, and not yet observed after its
    deadline: nothing is known yet)."""
    missed = "missed_at" in leg
    if leg.get("locked_at") is not None:
        return "late" if missed else "in_time"
    return "missed" if missed or status != "committed" else "unseen"


def _insort(ids: list[bytes], item: bytes) -> None:
    i = bisect.bisect_left(ids, item)
    if i == len(ids) or ids[i] != item:
        ids.insert(i, item)


def _remove_sorted(ids: list[bytes], item: bytes) -> None:
    i = bisect.bisect_left(ids, item)
    if i < len(ids) and ids[i] == item:
        del ids[i]


def _enc(value: Any) -> bytes:
    # State values are built here from already-validated messages, so the codec's type walk
    # (the costliest part of encoding a 2 KB order) is skipped; the bytes are the same
    # deterministic CBOR ``kofo.wire.codec.encode`` produces.
    return cbor2.dumps(value, canonical=True)


def _dec(raw: bytes) -> Any:
    # Our own committed state: no need to re-check canonical form on every read.
    return cbor2.loads(raw)


_K_PARAMS = b"meta/params"
_K_LAST = b"meta/last"
_K_WINDOW = b"meta/window"
"""[height, first id, last id] of the order window ExtendVote observes on the
state committed at ``height`` (CometBFT: its attestation tx lands two blocks later)."""
_K_TXCOUNT = b"meta/txcount"
_K_VALIDATORS = b"meta/validators"
"""The validator sets (Ed25519 consensus keys and powers) whose vote extensions count, as
``[[first height it signs, set], ...]`` (CometBFT applies an update made at H from H + 2)."""
_K_VALSET_NONCE = b"meta/valset_nonce"
_K_VAULT_SET = b"meta/vault_set"
_K_DECISIONS = b"meta/decisions"
_K_OPEN_DECISIONS = b"meta/open_decisions"
"""Sorted ids of the bond decisions the vault has not been attested to execute yet."""
"""How many bond decisions were recorded; ``decision_seq/<u64>`` holds each one's id, in order,
so a relayer pages through them (query ``/decisions``) without a scan of the state."""
MAX_DECISIONS_PAGE = 256
"""The last validator set (Ethereum keys, powers) recorded for the vault."""
_K_GENESIS_VALIDATORS = b"meta/genesis_validators"
_K_JOINED_VALIDATORS = b"meta/joined_validators"
"""Validators that joined after genesis through a bond: ``[pub_key, ...]`` in join order."""
"""Every validator that may hold power: the genesis set (one that lost its power to a missing
bond regains it when its bond is attested)."""
_K_CHAIN_ID = b"meta/chain_id"
_K_VE_HEIGHT = b"meta/ve_height"
"""CometBFT's vote_extensions_enable_height (0: disabled, solo mode)."""


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    time: int
    """Block time, unix seconds (from the producer; never read from a clock in the app)."""
    txs: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        return encode({"height": self.height, "time": self.time, "txs": list(self.txs)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Block:
        m = decode(data)
        return cls(m["height"], m["time"], tuple(m["txs"]))


@dataclass(frozen=True, slots=True)
class TxResult:
    code: int = 0
    log: str = ""
    error: str = ""
    """The stable error code string (empty on success)."""
    events: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True, slots=True)
class BlockResult:
    height: int
    app_hash: bytes
    results: tuple[TxResult, ...]
    validator_updates: tuple[tuple[bytes, int], ...] = ()
    """(Ed25519 consensus key, new power) for CometBFT; power 0 removes the validator."""


@dataclass(slots=True)
class _Ctx:
    height: int
    time: int
    events: list[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=list)


class _Backing(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def set(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...


class _View:
    """A transaction's writes, buffered until the transaction has passed every rule. A view
    over another view (one attested fact inside the attestation tx) flushes into it."""

    __slots__ = ("_store", "_writes")

    def __init__(self, store: MerkleStore | _View) -> None:
        self._store = store
        self._writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        return self._store.get(key)

    def get_map(self, key: bytes) -> dict[str, Any] | None:
        raw = self.get(key)
        return None if raw is None else dict(_dec(raw))

    def set(self, key: bytes, value: bytes) -> None:
        self._writes[key] = value

    def set_map(self, key: bytes, value: dict[str, Any]) -> None:
        self._writes[key] = _enc(value)

    def delete(self, key: bytes) -> None:
        self._writes[key] = None

    def flush(self) -> None:
        for key, value in self._writes.items():
            if value is None:
                self._store.delete(key)
            else:
                self._store.set(key, value)


_NODE_PREFIX = b"node/"


def _node_key(node: bytes) -> bytes:
    return _NODE_PREFIX + node


def _stats(rec: dict[str, Any]) -> NodeStats:
    return NodeStats(
        rec["volume"],
        rec["volume_height"],
        rec["settled"],
        rec["failed"],
        _effective_bond(rec),
        rec["penalty_points"],
    )


def _order_key(order_id: bytes) -> bytes:
    # The order itself, as its canonical bytes: written once, never rewritten.
    return b"order/" + order_id


def _order_state_key(order_id: bytes) -> bytes:
    # What changes after commit (status, per-leg outcomes), kept apart so that an outcome
    # report rewrites a hundred bytes, not the whole order.
    return b"order_state/" + order_id


def _order_bytes(tx: CommitOrder) -> bytes:
    # The bytes the parties signed, minus the domain prefix, are the order's canonical CBOR;
    # reusing them saves re-encoding a 1-2 KB map per order.
    if tx.signed_bytes is not None:
        return tx.signed_bytes[len(ORDER_DOMAIN) :]
    return encode(tx.order.as_map())


def _load_order(view: _View, order_id: bytes) -> tuple[SettlementOrder, dict[str, Any]]:
    raw = view.get(_order_key(order_id))
    state = view.get_map(_order_state_key(order_id))
    if raw is None or state is None:
        raise NotFound(f"order {order_id.hex()} is not committed")
    return SettlementOrder.from_map(_dec(raw)), state


def _genesis_fault_power(powers: Sequence[int]) -> int:
    """The most power the faulty genesis validators can hold while the genesis set still
    tolerates them, from the genesis validators' current ``powers``: the larger of

    * by count: the ``f = (n - 1) // 3`` largest powers (``n`` genesis validators, counting
      any at 0: a BFT set of ``n`` tolerates ``f`` faults);
    * by weight: any coalition below 1/3 of ``G = sum(powers)``, bounded without a subset
      search by ``min(sum of the k largest, (G - 1) // 3)``, ``k`` the most validators whose
      ``k`` smallest powers stay below ``G / 3`` (no coalition below 1/3 has more members).

    Equal powers give ``f * power`` both ways; the weight bound covers unequal ones (of 11, 10,
    10, 10, 10, 10, two of 10 are 20 < 61 / 3, more than the largest alone)."""
    ordered = sorted(powers)
    n, total = len(ordered), sum(ordered)
    f = (n - 1) // 3 if n else 0
    by_count = sum(ordered[n - f :]) if f else 0
    k = small = 0
    while k < n and 3 * (small + ordered[k]) < total:
        small += ordered[k]
        k += 1
    by_weight = min(sum(ordered[n - k :]) if k else 0, max(0, (total - 1) // 3))
    return max(by_count, by_weight)


def _cap_joined_power(new: dict[bytes, int], genesis: Mapping[bytes, Validator]) -> None:
    """Scale the joined validators' powers in ``new`` (in place) while a genesis validator
    still votes with its genesis power, so that joining never lowers the fault tolerance the
    genesis set had. That power is a bootstrap stand-in, not stake: measured against it, a
    bond of any size (1 ETH against four genesis validators of 10) bought the joiner more than
    2/3 of the votes, hence the chain and, through the next valset decision, the bond vault.

    Every joiner may be one attacker, allied with the genesis validators the set tolerates as
    faulty (at most ``F`` power, :func:`_genesis_fault_power`); with ``G`` the genesis power
    and ``J`` the joined total, a BFT set needs ``J + F < (G + J) / 3``, i.e. ``2 * J < G -
    3 * F``: ``J <= (G - 3 * F - 1) // 2`` (0 when ``G <= 3 * F``). Four genesis validators of
    10 (``F`` 10) leave the joiners 4 of 44, so joiners and one genesis validator hold 14 <
    44 / 3. Scaled together by integer floor (the same on every validator); once every genesis
    validator votes with its own bond (or ``validator_bond_deadline`` passed), power is bond
    alone."""
    joined = sorted(a for a in new if a not in genesis)
    total_joined = sum(new[a] for a in joined)
    powers = [v for a, v in new.items() if a in genesis]
    cap = max(0, (sum(powers) - 3 * _genesis_fault_power(powers) - 1) // 2)
    if total_joined <= cap:
        return
    for a in joined:
        new[a] = new[a] * cap // total_joined


def _validators_at(raw: bytes | None, height: int) -> dict[bytes, Validator] | None:
    """The validator set that signed at ``height`` (None: solo mode, no set)."""
    if raw is None:
        return None
    chosen = None
    for first, state in _dec(raw):
        if first <= height:
            chosen = state
    return attest.validators_from_state(chosen if chosen is not None else _dec(raw)[0][1])


MAX_POWER = 2**50
"""Per validator: CometBFT caps the total at 2^63 / 8; 128 validators at 2^50 stay below it."""


def _slashable_bond(rec: dict[str, Any]) -> int:
    """Attested locked in the vault, less outflows (slashes, releases) decided but not yet
    executed there: what a slash can still take. A declared ``bond`` counts for nothing."""
    return max(0, int(rec.get("bond_locked", 0)) - int(rec.get("slash_pending", 0)))


def _effective_bond(rec: dict[str, Any]) -> int:
    """The bond importance and voting power count: the slashable bond less what is unbonding."""
    return max(0, _slashable_bond(rec) - int(rec.get("unbonding", 0)))


def _htlc_address(address: str) -> str:
    # One form per key: hex case folded, and a compressed public key by its x coordinate
    # alone (a BIP340 leg-key proof binds the x-only key, so 02x and 03x would both prove).
    folded = address.lower()
    return folded[2:] if len(folded) == 66 and folded[:2] in ("02", "03") else folded


def _htlc_token(token: str | None) -> str:
    # A token as the chain reads it: an Ethereum adapter takes a token address in any case,
    # with or without its 0x (eth_utils), so every spelling of one token is one HTLC (issue 17
    # review: four spellings of one ERC-20 let one real swap settle four orders).
    if token is None:
        return ""
    folded = token.lower()
    return "t" + (folded[2:] if folded.startswith("0x") else folded)


def _htlc_keys(order: SettlementOrder) -> list[bytes]:
    """One state key per leg: the HTLC the validators' observers match that leg by (payment
    hash, chain, token, sender and recipient keys; amount and expiry left out, so the rule is
    stricter than the match). An HTLC serves one order leg, ever: two legs sharing one would
    both be settled by one lock and redeem (issue 17's copies, volume and fee shares for
    nobody's money). A payment hash itself is not unique: another order may reuse a hash it
    saw (a take's, in the mempool) without blocking it, since its legs need keys of its own."""
    keys = []
    for leg in order.legs:
        h = hashlib.sha256(order.payment_hash)
        for part in (
            leg.chain,
            _htlc_token(leg.token),
            _htlc_address(leg.sender_address),
            _htlc_address(leg.recipient_address),
        ):
            raw = part.encode()
            h.update(len(raw).to_bytes(4, "big") + raw)  # length-prefixed: unambiguous
        keys.append(b"htlc/" + h.digest())
    return keys


def _check_htlcs_free(get: Callable[[bytes], bytes | None], order: SettlementOrder) -> None:
    """Raise ``AlreadyExists`` if a leg's HTLC serves another order (or a take's order), and
    ``OrderInvalid`` if two legs of ``order`` are one HTLC."""
    keys = _htlc_keys(order)
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise OrderInvalid(
                f"order {order.order_id.hex()}: legs[{keys.index(key)}] and legs[{i}] are one "
                "HTLC (same payment hash, chain, token and keys): one lock would pay both"
            )
        if get(key) not in (None, order.order_id):
            leg = order.legs[i]
            raise AlreadyExists(
                f"legs[{i}]: an HTLC with payment hash {order.payment_hash.hex()} between these "
                f"{leg.chain} keys already serves another order"
            )


def _quote_used_key(node: bytes, quote_id: bytes) -> bytes:
    return b"quote_used/" + node + quote_id


def _take_key(provider: bytes, quote_id: bytes, taker: bytes) -> bytes:
    """One take per taker of a quote: the first take never squats an open quote for others."""
    return b"take/" + provider + quote_id + taker


def _takes_key(provider: bytes, quote_id: bytes) -> bytes:
    """How many takes of a quote were recorded: each take's ``seq`` (first come, first served)."""
    return b"takes/" + provider + quote_id


def _reserve_key(order_id: bytes) -> bytes:
    """The takes of open quotes whose order is ``order_id`` and that hold reserved bond:
    ``[[taker, provider, amount, until], ...]`` (one per provider quote the order uses)."""
    return b"reserve/" + order_id


def _live_reserved(rec: dict[str, Any], time: int) -> list[list[Any]]:
    """A node's reservations still held at ``time``: ``[order_id, provider, amount, until]``
    each, bond reserved for a take of an open quote until its order resolves or ``until`` (the
    end of the take's fill window) passes."""
    return [e for e in rec.get("reserved", []) if time <= int(e[3])]


def _reserved(rec: dict[str, Any], time: int) -> int:
    return sum(int(e[2]) for e in _live_reserved(rec, time))


def _quote_terms_mismatch(quote: Quote, order: SettlementOrder) -> str | None:
    """Why ``order`` does not trade ``quote``'s terms (None if it does): the provider is paid
    exactly ``take_amount`` of ``take_asset`` on its one incoming leg and pays exactly
    ``give_amount`` of ``give_asset`` on its one outgoing leg. Without it a taker's order could
    ask a price the provider never quoted (an honest provider refusing it was slashed), and a
    provider could "fill" its quote with dust legs locked to its own sybil."""
    ins = [i for i, leg in enumerate(order.legs) if leg.recipient == quote.provider]
    outs = [i for i, leg in enumerate(order.legs) if leg.sender == quote.provider]
    if len(ins) != 1 or len(outs) != 1:
        return "the provider holds no leg of the order: a quote prices a trade it is on"
    (i,), (o,) = ins, outs
    pay_in, pay_out = order.legs[i], order.legs[o]
    if (pay_in.asset, pay_in.amount) != (quote.take_asset, quote.take_amount):
        return (
            f"legs[{i}] pays the provider {pay_in.amount} {pay_in.asset}, the quote takes "
            f"{quote.take_amount} {quote.take_asset}"
        )
    if (pay_out.asset, pay_out.amount) != (quote.give_asset, quote.give_amount):
        return (
            f"legs[{o}] has the provider pay {pay_out.amount} {pay_out.asset}, the quote gives "
            f"{quote.give_amount} {quote.give_asset}"
        )
    return None


def _bal_key(node: bytes, asset: str) -> bytes:
    return b"bal/" + node + b"/" + asset.encode()


def _earned_key(node: bytes, asset: str) -> bytes:
    return b"earned/" + node + b"/" + asset.encode()


def _credited_key(node: bytes, asset: str) -> bytes:
    return b"credited/" + node + b"/" + asset.encode()


def _withdrawn_key(node: bytes, asset: str) -> bytes:
    return b"withdrawn/" + node + b"/" + asset.encode()


def _withdrawals_key(node: bytes, asset: str) -> bytes:
    return b"withdrawals/" + node + b"/" + asset.encode()


def _int_get(view: _View, key: bytes) -> int:
    raw = view.get(key)
    return 0 if raw is None else int(_dec(raw))


def _int_get_store(store: MerkleStore, key: bytes) -> int:
    raw = store.get(key)
    return 0 if raw is None else int(_dec(raw))


def _int_add(view: _View, key: bytes, amount: int) -> None:
    view.set(key, _enc(_int_get(view, key) + amount))


def _withdrawal_applies(
    get: Callable[[bytes], bytes | None], sender: bytes, tx: WithdrawFees
) -> None:
    """The cheap state rules of a withdrawal (see ``LedgerApp._withdraw``, which applies them
    again with the same refusals): the sender is a node with a balance in the asset, ``seq``
    is its next withdrawal number, the amount at most what the ledger credited and has not
    paid out."""
    if get(_node_key(sender)) is None:
        raise UnknownNode(f"withdrawing node {sender.hex()} is not a registered node")
    if get(_bal_key(sender, tx.asset)) is None:
        raise WithdrawalInvalid(f"no fee balance in {tx.asset!r} for {sender.hex()}")

    def num(key: bytes) -> int:
        raw = get(key)
        return 0 if raw is None else int(_dec(raw))

    done = num(_withdrawals_key(sender, tx.asset))
    if tx.seq != done:
        raise WithdrawalInvalid(
            f"withdraw_fees.seq must be {done} (the withdrawals made in {tx.asset!r}), "
            f"got {tx.seq}: a withdrawal is applied once"
        )
    available = num(_credited_key(sender, tx.asset)) - num(_withdrawn_key(sender, tx.asset))
    if tx.amount > available:
        raise WithdrawalInvalid(
            f"withdraw_fees.amount {show_int(tx.amount)} exceeds the {available} the ledger "
            f"credited to {sender.hex()} in {tx.asset!r} and has not paid out"
        )


def _verify_evidence_signatures(tx: FileEvidence) -> None:
    """Every signature a ``quote_not_honoured`` evidence carries (the provider's quote, the
    taker's take, up to 24 on the taken order) verifies: stateless, so checked at CheckTx with
    the envelope and cached for the block like an order's. Judged only in FinalizeBlock, a
    registered sender's share of a block (a thousand such txs, the last signature bad) cost
    every validator ~25 verifications each there, and an honest proposer included them."""
    if tx.kind is not EvidenceKind.QUOTE_NOT_HONOURED:
        return
    assert tx.quote is not None and tx.take is not None  # guaranteed by the parser
    assert tx.quote_sig is not None and tx.take_sig is not None
    verify_ed25519(tx.quote.provider, tx.quote_sig, tx.quote.signing_bytes(), "quote")
    verify_ed25519(tx.take.taker, tx.take_sig, tx.take.signing_bytes(), "take")
    if tx.order is not None:
        msg = tx.order.signed_bytes or tx.order.order.signing_bytes()
        for sig in tx.order.signatures:
            verify_ed25519(sig.signer, sig.signature, msg, "take order")
        # Every leg key but the provider's proved its control: the provider can commit the
        # order alone by adding its own proofs (a taker that left one out could otherwise have
        # it slashed for an order nobody could commit).
        tx.order.verify_leg_proofs(absent_for=tx.quote.provider)


def _record_decision(view: _View, did: bytes, rec: dict[str, Any]) -> None:
    """Store a bond decision and append its id to the ordered list relayers page through."""
    seq = _int_get(view, _K_DECISIONS)
    view.set(_K_DECISIONS, _enc(seq + 1))
    view.set(b"decision_seq/" + seq.to_bytes(8, "big"), did)
    view.set_map(b"decision/" + did, rec)
    if rec["recipient"]:  # without one the vault can never execute it: never watched
        open_ids = [bytes(d) for d in _dec(view.get(_K_OPEN_DECISIONS) or _enc([]))]
        _insort(open_ids, did)
        view.set(_K_OPEN_DECISIONS, _enc(open_ids))


def _settle_executed(rec: dict[str, Any]) -> None:
    """Pay off ``slash_pending`` with the node's executed decisions that its attested vault
    balance already shows (executed as of a vault height <= ``bond_height``): the balance and
    the execution then count together, never one without the other."""
    waiting = rec.get("executed_unseen", [])
    if not waiting:
        return
    height = rec.get("bond_height", 0)
    seen = [w for w in waiting if w[0] <= height]
    rest = [w for w in waiting if w[0] > height]
    rec["slash_pending"] = max(0, rec.get("slash_pending", 0) - sum(w[1] for w in seen))
    if rest:
        rec["executed_unseen"] = rest
    else:
        rec.pop("executed_unseen", None)


def _internal_error(exc: Exception, where: str) -> TxResult:
    # The log names only the exception type: its text could quote tx content, and a result's
    # text must not depend on anything but the input.
    log.error("%s: refused a tx after an internal error", where, exc_info=exc)
    err = InternalError(f"internal error ({type(exc).__name__}); the tx is refused")
    return TxResult(abci_code(err), str(err), err.code)


class LedgerApp:
    """The clearance ledger over a :class:`MerkleStore` (see module docstring)."""

    def __init__(
        self,
        store: MerkleStore,
        params: LedgerParams | None = None,
        *,
        rate_limit: SenderRateLimit | None = None,
        require_registered: bool = False,
        registration_limit: SenderRateLimit | None = None,
        observer: ChainObserver | None = None,
        vault_signer: bytes | None = None,
    ) -> None:
        self.store = store
        self._observer: ChainObserver | None = None
        self.observer = observer
        self.vault_signer = vault_signer
        """This validator's registered secp256k1 key (32 bytes), if it signs bond decisions:
        ``/decision`` (and :meth:`valset_decision`) then carry its signature of the vault digest of
        what its own committed state decided (a relayer collects them from the validators)."""
        # In-memory indexes of committed state for ExtendVote; a finalized block's events reach
        # them only at its Commit (a re-finalized block must not leave ids behind).
        self._open: list[bytes] | None = None
        """Open order ids, sorted (built from the committed state once, then kept by events)."""
        self._nodes: list[bytes] | None = None
        """Registered node ids, sorted (likewise)."""
        self._block_events: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self._verified: OrderedDict[bytes, tuple[Envelope, TxBody, int]] = OrderedDict()
        # check_tx may run on several threads at once (the solo node's API, a pool verifying
        # signatures while the GIL is released); only the cache is shared between them.
        self._verified_lock = threading.Lock()
        self._verified_bytes = 0
        self._work = admission.WorkChecks()
        """Memo of registration work checks (also CheckTx's one-scrypt-per-pre-work policy)."""
        self.rate_limit = rate_limit
        """This node's per-sender CheckTx limit (None: none, e.g. the embedded solo ledger)."""
        self.require_registered = require_registered
        """CheckTx admits only registrations and txs from registered senders."""
        self.registration_limit = registration_limit
        """This node's CheckTx limit on registrations from all senders together."""
        self._pending_block: Block | None = None
        self._rank: Ranking | None = None  # kept current at Commit
        raw = store.get(_K_PARAMS)
        if raw is None:
            self._params = params or LedgerParams()
        else:
            self._params = LedgerParams.from_map(decode(raw))
            if params is not None and params != self._params:
                raise KofoError(
                    "the store was created with other ledger params; refusing to mix them",
                    code="config_error",
                )
        # One pass over the node records when the app opens its store, so that no query ever
        # pays it on the block loop.
        self._ranking()

    @property
    def params(self) -> LedgerParams:
        return self._params

    @property
    def height(self) -> int:
        return self.store.height

    @property
    def app_hash(self) -> bytes:
        return self.store.app_hash

    def init_chain(
        self,
        params: LedgerParams | None = None,
        *,
        validators: Sequence[Validator] = (),
        chain_id: str = "",
        vote_extensions_height: int = 0,
    ) -> bytes:
        """Write genesis (the params, and under CometBFT the validator set whose vote
        extensions attest leg outcomes) once; idempotent, so a restart before block 1 is fine.

        ``params`` (from the genesis file) replaces the constructor's before anything is
        written; on a store that already has params they must match."""
        if params is not None and params != self._params:
            if self.store.get(_K_PARAMS) is not None:
                raise KofoError(
                    "genesis params differ from the ones this store was created with",
                    code="config_error",
                )
            self._params = params
        if self.store.get(_K_PARAMS) is None:
            self.store.set(_K_PARAMS, encode(self._params.as_map()))
            if validators:
                if len(validators) > attest.MAX_VALIDATORS:
                    raise KofoError(
                        f"at most {attest.MAX_VALIDATORS} validators", code="config_error"
                    )
                genesis = attest.validators_to_state(validators)
                self.store.set(_K_VALIDATORS, _enc([[0, genesis]]))
                self.store.set(_K_GENESIS_VALIDATORS, _enc(genesis))
                self.store.set(_K_CHAIN_ID, _enc(chain_id))
                self.store.set(_K_VE_HEIGHT, _enc(vote_extensions_height))
            self.store.commit(0)
        return self.store.app_hash

    # -- mempool admission ---------------------------------------------------------------------

    def check_tx(self, raw: bytes, *, recheck: bool = False) -> TxResult:
        """Stateless admission: size, canonical encoding, envelope signature, schema, every
        party's signature of an order and a registration's zero proof; then this node's
        per-sender rate limit (new txs only: a recheck is free). Of the state-dependent rules
        only the replay lookups run here (:meth:`_refuse_replay`, before the rate limit and on
        rechecks too); the others are applied in the block."""
        if attest.is_attest_tx(raw):
            return TxResult(
                abci_code(NotAuthorised("")),
                "attestation txs are placed by the block proposer, never through the mempool",
                NotAuthorised.code,
            )
        try:
            # A tx this node already checked is not charged again: anyone can resend a victim's
            # tx bytes, and that must not spend the victim's rate budget.
            env, body = self._decode_verified(
                raw,
                None if recheck else lambda e, b: self._admit(e, b, len(raw)),
                gate_on_hit=False,
            )
            # Every time, cache hit or recheck included: a tx applied meanwhile (or an old one
            # resent by anyone) can never apply again and leaves the mempool.
            self._refuse_replay(self.store.get_committed, env.sender, body, None)
        except KofoError as exc:
            return TxResult(abci_code(exc), str(exc), exc.code)
        except Exception as exc:  # a bug must refuse the tx, never take the validator down
            return _internal_error(exc, "check_tx")
        return TxResult()

    def _admit(self, env: Envelope, body: TxBody, size: int) -> None:
        """This node's own mempool policy for a new tx (see :mod:`kofo.clearance.admission`)."""
        # A replay is refused before it is charged: it must not spend its sender's budget.
        self._refuse_replay(self.store.get_committed, env.sender, body, None)
        if (
            self.require_registered
            and not isinstance(body, RegisterNode)
            and self.store.get_committed(_node_key(env.sender)) is None
        ):
            raise UnknownNode(f"sender {env.sender.hex()} is not a registered node; register first")
        registration = body if isinstance(body, RegisterNode) else None
        if registration is not None:
            self._check_prework(env.sender, registration)  # one SHA-256, before any charge
        if self.rate_limit is not None:
            # weighted: a 24-party order costs its sender as much as the checks it buys
            self.rate_limit.charge(env.sender, admission.check_cost(body, size))
        if registration is not None:
            # The work before the shared registration bucket: a flood of unworked registrations
            # (fresh keys, free) emptied that bucket and shut honest registrations out. Each
            # scrypt evaluated here needed its own pre-work (above): one pre-work buys one
            # evaluation at this node, whatever the low bits of the nonce.
            if self._work.spent(env.sender, registration.paillier_n, registration.pow_nonce):
                raise BadMessage(
                    "register_node.pow_nonce: this pre-work was already spent on another nonce"
                )
            self._check_registration_work(env.sender, registration)
            if self.registration_limit is not None:
                # New keys are free, so a per-sender limit alone does not bound registrations.
                self.registration_limit.charge(b"registrations")

    def _decode_verified(
        self,
        raw: bytes,
        gate: Callable[[Envelope, TxBody], None] | None = None,
        *,
        gate_on_hit: bool = True,
    ) -> tuple[Envelope, TxBody]:
        """The tx's envelope and body after every stateless check. ``gate`` (a rate limit or a
        block budget) runs after the cheap checks and before the costly ones, and on a cache
        hit too, so what it decides never depends on what this node happened to cache."""
        # Keyed by the hash of the exact bytes: the same bytes always decode and verify the
        # same way, so a hit gives the result a fresh check would, and only txs that passed
        # every stateless check (signatures included) are ever stored.
        digest = hashlib.sha256(raw).digest()
        with self._verified_lock:
            hit = self._verified.get(digest)
        if hit is not None:
            env, body, _ = hit
            if gate is not None and gate_on_hit:
                gate(env, body)
            return env, body
        if len(raw) > MAX_TX_BYTES:
            raise BadMessage(f"a ledger tx is at most {MAX_TX_BYTES} bytes, got {len(raw)}")
        if count_items(raw, MAX_TX_ITEMS) > MAX_TX_ITEMS:
            raise BadMessage(f"a ledger tx holds at most {MAX_TX_ITEMS} CBOR items")
        # The signature first, from the canonical layout (one verification, ~55 us): junk from
        # anyone cost a decode of up to 2,048 items (~4 ms) before it was refused.
        signer = signed_sender(raw)
        if signer is None:
            raise EncodingError("a ledger tx is a signed envelope in canonical CBOR")
        check_signature(signer, raw)
        msg = read_message(raw)
        if msg.envelope.sender != signer:  # (canonical bytes put the sender there)
            raise BadMessage("the envelope's sender is not where its canonical form puts it")
        body = parse_tx_body(msg.envelope.type, msg.envelope.body)
        if gate is not None:
            gate(msg.envelope, body)
        if isinstance(body, CommitOrder):
            body.verify_signatures()
        elif isinstance(body, RegisterNode):
            self._check_registration_proof(msg.envelope.sender, body)
        elif isinstance(body, FileEvidence):
            _verify_evidence_signatures(body)
        with self._verified_lock:
            if digest not in self._verified:
                self._verified[digest] = (msg.envelope, body, len(raw))
                self._verified_bytes += len(raw)
            while len(self._verified) > _VERIFIED_CACHE or self._verified_bytes > _VERIFIED_BYTES:
                self._verified_bytes -= self._verified.popitem(last=False)[1][2]
        return msg.envelope, body

    def _check_prework(self, sender: bytes, tx: RegisterNode) -> None:
        """One SHA-256: a registration without its pre-work costs nothing more, anywhere."""
        bits = self._params.registration_prework_bits
        if not admission.check_prework(sender, tx.paillier_n, tx.pow_nonce, bits):
            raise BadMessage(
                f"register_node.pow_nonce: its top 32 bits are not pre-work of {bits} bits"
            )

    def _check_registration_work(self, sender: bytes, tx: RegisterNode) -> None:
        """One scrypt evaluation (memoized): cheap enough to run before the block's
        registration slots are charged, so that registrations without their work cannot fill
        them."""
        bits = self._params.registration_work_bits
        if not self._work.check(sender, tx.paillier_n, tx.pow_nonce, bits):
            raise BadMessage(
                f"register_node.pow_nonce is not work of {bits} bits for this sender and modulus"
            )

    def _check_registration_proof(self, sender: bytes, tx: RegisterNode) -> None:
        n = privacy.from_bytes(tx.paillier_n)
        allowed = self._params.paillier_bits
        # Exact sizes, minimal bytes: the modulus bounds every proof and reveal a validator will
        # ever check for this node, so an outsized one must never get in.
        if n.bit_length() not in allowed or len(tx.paillier_n) * 8 != n.bit_length() or n % 2 == 0:
            raise BadMessage(
                f"register_node.paillier_n must be an odd modulus of exactly "
                f"{' or '.join(map(str, allowed))} bits, got {n.bit_length()} bits"
            )
        # Cheapest first: the work (one scrypt; a block checks it before charging its slots
        # too, see _gate), then the modulus (a gcd and four powers mod n), and only on a
        # certified modulus the zero proof (eight powers mod n^2).
        self._check_registration_work(sender, tx)
        privacy.check_modulus(
            n, tx.modulus_proof, privacy.modulus_context(sender), "register_node.paillier_n"
        )
        privacy.verify_zero(
            n,
            tx.balance_seed,
            tx.seed_proof,
            privacy.register_context(sender),
            "register_node.balance_seed",
        )

    def propose(
        self,
        txs: Sequence[bytes],
        max_bytes: int,
        *,
        tx_size: Callable[[bytes], int] = len,
    ) -> list[bytes]:
        """The txs an honest proposer puts in its block, in mempool order: within ``max_bytes``
        (each tx counted as ``tx_size`` says: under CometBFT its protobuf size, framing
        included, as CometBFT checks the proposal), without txs that fail their stateless
        checks, and without those the block's budget would refuse (:class:`BlockBudget`) --
        those stay in the mempool for a later block instead of being refused in this one, and
        so does a replay of an applied tx. Not consensus: any proposal is judged at
        FinalizeBlock alike."""
        budget = self._budget()
        out: list[bytes] = []
        size = 0
        for raw in txs:
            if size + tx_size(raw) > max_bytes:
                break
            try:
                self._decode_verified(raw, lambda e, b: self._gate(self.store.get, budget, e, b))
            except KofoError:
                continue
            out.append(raw)
            size += tx_size(raw)
        return out

    def defer_over_budget(self, txs: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """The solo producer's split of its mempool batch: ``(this block's txs, later)``.
        Txs the block's budget would refuse (``rate_limited``: a sixth registration, a second
        withdrawal of a sender) wait for the next block, as CometBFT's honest proposer leaves
        them in the mempool (:meth:`propose`); every other tx goes in and gets its result."""
        budget = self._budget()
        keep: list[bytes] = []
        later: list[bytes] = []
        for raw in txs:
            try:
                self._decode_verified(raw, lambda e, b: self._gate(self.store.get, budget, e, b))
            except RateLimited:
                later.append(raw)
                continue
            except KofoError:
                pass
            keep.append(raw)
        return keep, later

    def _gate(
        self,
        get: Callable[[bytes], bytes | None],
        budget: BlockBudget,
        env: Envelope,
        body: TxBody,
        time: int | None = None,
    ) -> None:
        """The block's gate before a tx's costly checks: a replay, or a withdrawal the state
        already refuses, is refused uncharged; then the sender's share of the block is charged.

        Withdrawals share a cap over all senders (``max_withdrawals_per_block``), so one that
        cannot apply must not take a slot: free sybil registrations sending withdrawals of
        fees never earned filled it and shut every honest withdrawal out. Judged here exactly
        (balance, next ``seq``, credited bound: lookups only); the proof and the reveal come
        after the charge, and cost their sender's own budget."""
        self._refuse_replay(get, env.sender, body, time)
        if isinstance(body, WithdrawFees):
            _withdrawal_applies(get, env.sender, body)
        if isinstance(body, RegisterNode):
            # Before the block's registration slots are charged: a registration without its
            # work must not take the slot of one with it (CheckTx likewise checks the work
            # before its shared registration bucket, see _admit).
            # The checks themselves are capped per block: only a hostile proposer includes
            # registrations without work, and each costs every validator one scrypt.
            # The pre-work first (one hash): without it nothing is charged, not even a check.
            self._check_prework(env.sender, body)
            budget.charge_work_check()
            self._check_registration_work(env.sender, body)
        budget.charge(env.sender, body)

    @staticmethod
    def _refuse_replay(
        get: Callable[[bytes], bytes | None], sender: bytes, body: TxBody, time: int | None
    ) -> None:
        """Raise the tx's own refusal if the state already shows it can never apply: its
        one-shot key is taken (an old tx resent, by anyone: its bytes are public in a block).

        Such a tx passes every stateless check, so without this it reached the block and was
        charged to its sender's share there (a resent old withdrawal took the sender's one
        withdrawal of the block, a few resent old txs its whole per-sender cap), an honest
        proposer kept it and left the sender's real tx out, block after block. Only state
        lookups here (at most one node record decoded), so it can run before the budget."""
        if isinstance(body, RegisterNode):
            if get(_node_key(sender)) is not None:
                raise AlreadyExists(f"node {sender.hex()} is already registered")
        elif isinstance(body, WithdrawFees):
            done = get(_withdrawals_key(sender, body.asset))
            if done is not None and body.seq < _dec(done):
                raise WithdrawalInvalid(
                    f"withdraw_fees.seq {body.seq} was already used in {body.asset!r}: "
                    "a withdrawal is applied once"
                )
        elif isinstance(body, Unbond):
            raw = get(_node_key(sender))
            unbonds = 0 if raw is None else _dec(raw).get("unbonds", 0)
            if body.seq < unbonds:
                raise OrderInvalid(f"unbond.seq {body.seq} was already used (now {unbonds})")
        elif isinstance(body, CommitOrder):
            # (a committed order's replay; an HTLC serves one order leg ever, and a recorded
            # take reserves its order's HTLCs for that order alone)
            order = body.order
            for key in _htlc_keys(order):
                used = get(key)
                if used is not None and (used != order.order_id or get(_order_key(used))):
                    raise AlreadyExists(
                        f"an HTLC of order {order.order_id.hex()} (payment hash "
                        f"{order.payment_hash.hex()}) already serves a committed order"
                    )
        elif isinstance(body, RegisterValidatorKey):
            addr = attest.validator_address(body.consensus_key)
            if get(b"valkey/" + addr) is not None:
                raise AlreadyExists(f"validator {addr.hex()} already registered its key")
        elif isinstance(body, ReportOutcome):
            raise NotAuthorised(
                "report_outcome is no longer accepted: leg outcomes are attested by the "
                "validators' own observation of the chains"
            )
        elif isinstance(body, FileEvidence):
            if body.kind is EvidenceKind.LEG_NOT_LOCKED:
                assert body.order_id is not None and body.leg is not None
                eid = b"evidence/lnl/" + body.order_id + body.leg.to_bytes(1, "big")
            else:
                assert body.quote is not None
                quote = body.quote
                eid = b"evidence/qnh/" + quote.provider + quote.quote_id
                assert body.take is not None
                taken = get(_take_key(quote.provider, quote.quote_id, body.take.taker))
                if taken is not None and time is not None and time <= quote.valid_until:
                    raise AlreadyExists(
                        f"quote {quote.quote_id.hex()} was already taken by this taker"
                    )
            if get(eid) is not None:
                raise AlreadyExists("this evidence was already filed")

    def _budget(self) -> BlockBudget:
        return BlockBudget(
            self._params.max_txs_per_sender_per_block,
            self._params.max_registrations_per_block,
            self._params.max_withdrawals_per_block,
        )

    # -- blocks --------------------------------------------------------------------------------

    def finalize_block(self, block: Block) -> BlockResult:
        """Apply ``block`` on top of the committed state; its writes stay in memory until
        :meth:`commit`. Finalizing again before the commit (CometBFT restarted, the app did not,
        and replays the block) first drops the earlier finalization, so the same block always
        gives the same app hash."""
        if self._pending_block is not None:
            self.store.rollback()
            self._pending_block = None
        self._block_events = []
        if self.store.get(_K_PARAMS) is None:
            self.init_chain()
        if block.height != self.store.height + 1:
            raise KofoError(
                f"block height {block.height} does not follow committed height {self.store.height}",
                code="config_error",
            )
        # The successful-tx counter lives in state but is read and written once per block: the
        # value after the block is the same as counting tx by tx, without a store write each.
        count = before = _int_get_store(self.store, _K_TXCOUNT)
        results = []
        budget = self._budget()
        for raw in block.txs:
            result = self._deliver(raw, block, count, budget)
            count += result.ok and not attest.is_attest_tx(raw)
            results.append(result)
        if count != before:
            self.store.set(_K_TXCOUNT, _enc(count))
        updates = self._update_validators(block.height)
        last = {"height": block.height, "time": block.time}
        self.store.set(_K_LAST, _enc(last))
        self._pending_block = block
        return BlockResult(block.height, self.store.root(), tuple(results), updates)

    def _update_validators(self, height: int) -> tuple[tuple[bytes, int], ...]:
        """Voting power from attested bonds: a validator bound to a node (by
        ``register_validator_key``) votes with its node's effective bond // ``power_unit``;
        an unbound one keeps its genesis power until ``validator_bond_deadline`` (0: always),
        then has none. While one stands in, a bound genesis validator votes with no more than
        its genesis power and the joiners are capped (:func:`_cap_joined_power`). Changes go
        to CometBFT (effective at ``height + 2``), into the ledger's own set history, and (see
        :meth:`_record_vault_set`) into a vault valset decision."""
        view = _View(self.store)
        raw = view.get(_K_VALIDATORS)
        if raw is None:
            return ()
        sets = _dec(raw)
        latest = attest.validators_from_state(sets[-1][1])
        genesis = attest.validators_from_state(_dec(view.get(_K_GENESIS_VALIDATORS) or _enc([])))
        joined = {
            attest.validator_address(bytes(k)): Validator(bytes(k), 0)
            for k in _dec(view.get(_K_JOINED_VALIDATORS) or _enc([]))
        }
        p = self._params
        new: dict[bytes, int] = {}
        stand_in = False  # a genesis validator votes with its genesis power, not a bond
        everyone = {**joined, **genesis}
        current = {a: latest.get(a, Validator(v.pub_key, 0)) for a, v in everyone.items()}
        for addr, val in everyone.items():
            node = view.get(b"valnode/" + addr)
            if node is not None:
                rec = view.get_map(_node_key(node))
                power = 0 if rec is None else _effective_bond(rec) // p.power_unit
                if addr not in genesis and power < p.validator_min_power:
                    power = 0  # a joined validator whose bond fell below the minimum leaves
            elif p.validator_bond_deadline and height >= p.validator_bond_deadline:
                power = 0
            else:
                power = val.power
                stand_in = True
            new[addr] = min(power, MAX_POWER)
        if stand_in:
            # A bound genesis validator votes with its bond, but not above its genesis power
            # while others stand in: a bond of 1 ETH (1,000) against three stand-ins of 10
            # made one genesis validator of four more than 2/3 of the chain.
            for addr, val in genesis.items():
                new[addr] = min(new[addr], val.power)
            _cap_joined_power(new, genesis)
        for addr, val in latest.items():
            if addr not in everyone:  # a joined validator whose slot was reclaimed: it leaves
                current[addr] = val
                new[addr] = 0
        updates: tuple[tuple[bytes, int], ...] = ()
        # unchanged, or it would leave no validator at all: no update
        if not (all(new[a] == v.power for a, v in current.items()) or not any(new.values())):
            updates = tuple(
                (current[a].pub_key, new[a]) for a in sorted(new) if new[a] != current[a].power
            )
            kept = [Validator(current[a].pub_key, new[a]) for a in sorted(new) if new[a] > 0]
            # Keep the sets that may still sign an attestation this ledger verifies (CometBFT
            # applies this one from height + 2; the previous ones sign until then).
            sets = [*sets, [height + 2, attest.validators_to_state(kept)]][-4:]
            view.set(_K_VALIDATORS, _enc(sets))
            latest = {v.address: v for v in kept}
        self._record_vault_set(view, height, latest)
        view.flush()
        return updates

    def _record_vault_set(self, view: _View, height: int, latest: dict[bytes, Validator]) -> None:
        """A vault valset decision when the set the vault should hold changed: each keyed
        validator's Ethereum address and power, plus ``unkeyed_power``, the power of validators
        with no registered key, which the vault counts in its total but which never signs (so
        its threshold stays 2/3 of the ledger's whole power: a set of the keyed validators
        alone would hand the others' share to them, one keyed validator of four becoming all
        of the vault). Recorded only while the keyed validators hold more than 2/3 of the power
        (the vault refuses a set it could never change again); until then it keeps its set."""
        eth = []
        unkeyed = 0
        for addr, val in latest.items():
            if val.power <= 0:
                continue
            key = view.get(b"valkey/" + addr)
            if key is None:
                unkeyed += val.power
            else:
                eth.append((key, val.power))
        eth.sort()
        keyed = sum(w for _, w in eth)
        if 3 * keyed <= 2 * (keyed + unkeyed):
            return
        vault_set = _enc([[e for e, _ in eth], [w for _, w in eth], unkeyed])
        if view.get(_K_VAULT_SET) == vault_set:
            return
        view.set(_K_VAULT_SET, vault_set)
        nonce = _int_get(view, _K_VALSET_NONCE) + 1
        view.set(_K_VALSET_NONCE, _enc(nonce))
        view.set_map(
            b"valset_decision/" + nonce.to_bytes(8, "big"),
            {
                "nonce": nonce,
                "height": height,
                "validators": [e for e, _ in eth],
                "powers": [w for _, w in eth],
                "unkeyed_power": unkeyed,
            },
        )

    def commit(self) -> bytes:
        block = self._pending_block
        if block is None:
            return self.store.app_hash  # nothing finalized since the last commit
        self._pending_block = None
        changed = [k for k in self.store.uncommitted_keys() if k.startswith(_NODE_PREFIX)]
        app_hash = self.store.commit(block.height, block.to_bytes())
        self._index_committed()
        if self._rank is not None:
            for key in changed:
                raw = self.store.get(key)
                self._rank.update(
                    key[len(_NODE_PREFIX) :], None if raw is None else _stats(_dec(raw))
                )
        return app_hash

    def apply_block(self, block: Block) -> BlockResult:
        """finalize + commit: what the solo producer and replays do."""
        result = self.finalize_block(block)
        self.commit()
        return result

    def _deliver(self, raw: bytes, block: Block, count: int, budget: BlockBudget) -> TxResult:
        """Apply one tx; ``count`` is the number of successful txs before it."""
        ctx = _Ctx(block.height, block.time)
        view = _View(self.store)
        if attest.is_attest_tx(raw):
            try:
                self._attestations(view, ctx, raw, first=block.txs[0] == raw)
            except KofoError as exc:
                return TxResult(abci_code(exc), str(exc), exc.code)
            except Exception as exc:  # refused like any tx: writes dropped, same everywhere
                return _internal_error(exc, "finalize_block")
            view.flush()
            self._note_events(ctx.events)
            return TxResult(events=tuple(ctx.events))
        try:
            env, body = self._decode_verified(
                raw, lambda e, b: self._gate(view.get, budget, e, b, block.time)
            )
            self._apply(view, ctx, env.sender, body)
            if count < self._params.early_tx_limit:
                sender = view.get_map(_node_key(env.sender))
                if sender is not None:
                    sender["points"] += self._params.early_points_per_tx
                    view.set_map(_node_key(env.sender), sender)
        except KofoError as exc:
            return TxResult(abci_code(exc), str(exc), exc.code)
        except Exception as exc:
            # A bug hit by some input: the tx is refused and its writes dropped, the same way
            # on every validator (same code, same state), so the chain neither halts nor splits.
            return _internal_error(exc, "finalize_block")
        view.flush()
        self._note_events(ctx.events)
        return TxResult(events=tuple(ctx.events))

    def _apply(self, view: _View, ctx: _Ctx, sender: bytes, body: TxBody) -> None:
        if isinstance(body, RegisterNode):
            self._register(view, ctx, sender, body)
        elif isinstance(body, CommitOrder):
            self._commit_order(view, ctx, sender, body)
        elif isinstance(body, ReportOutcome):
            self._report(view, ctx, sender, body)
        elif isinstance(body, FileEvidence):
            self._evidence(view, ctx, sender, body)
        elif isinstance(body, RegisterValidatorKey):
            self._register_validator_key(view, ctx, sender, body)
        elif isinstance(body, Unbond):
            self._unbond(view, ctx, sender, body)
        else:
            self._withdraw(view, ctx, sender, body)

    # -- RegisterNode --------------------------------------------------------------------------

    def _register(self, view: _View, ctx: _Ctx, sender: bytes, tx: RegisterNode) -> None:
        if sender == FOUNDATION:
            raise NotAuthorised("the foundation account id cannot be registered as a node")
        if view.get(_node_key(sender)) is not None:
            raise AlreadyExists(f"node {sender.hex()} is already registered")
        # The modulus size and the seed's zero proof were checked with the tx's stateless checks
        # (_check_registration_proof), in CheckTx and again here for a tx not seen before.
        if tx.bond < self._params.min_bond:
            raise OrderInvalid(f"register_node.bond {tx.bond} is below {self._params.min_bond}")
        view.set_map(
            _node_key(sender),
            {
                "addresses": tx.addresses,
                "paillier_n": tx.paillier_n,
                "seed": tx.balance_seed,
                "bond": tx.bond,
                "monitor": tx.monitor,
                "registered": ctx.height,
                "points": 0,
                "penalty_points": 0,
                "settled": 0,
                "failed": 0,
                "volume": 0,
                "volume_height": ctx.height,
                "slashed": 0,
            },
        )
        ctx.events.append(("node_registered", (("node", sender.hex()),)))

    def _node(self, view: _View, node: bytes, what: str) -> dict[str, Any]:
        rec = view.get_map(_node_key(node))
        if rec is None:
            raise UnknownNode(f"{what} {node.hex()} is not a registered node")
        return rec

    # -- CommitSettlementOrder -----------------------------------------------------------------

    def _commit_order(self, view: _View, ctx: _Ctx, sender: bytes, tx: CommitOrder) -> None:
        order = tx.order
        if sender not in order.parties():
            raise NotAuthorised(f"submitter {sender.hex()} is not a party of the order")
        self._check_committable(view, ctx, order)
        for q in order.quotes:
            view.set(_quote_used_key(q.node, q.quote_id), order.order_id)
        for key in _htlc_keys(order):
            view.set(key, order.order_id)
        view.set(_order_key(order.order_id), _order_bytes(tx))
        view.set_map(
            _order_state_key(order.order_id),
            {
                "status": "committed",
                "height": ctx.height,
                "time": ctx.time,
                "legs": [{"outcome": None, "txid": None, "at": None} for _ in order.legs],
                # the earliest lock_by of a leg not yet attested nor seen missed
                "due": min(leg.lock_by for leg in order.legs),
            },
        )
        ctx.events.append(("order_committed", (("order_id", order.order_id.hex()),)))

    def _check_committable(
        self,
        view: _View,
        ctx: _Ctx,
        order: SettlementOrder,
        *,
        spent_ok: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Every state check of ``commit_order`` on ``order`` (its signatures aside); the
        quote ``spent_ok`` (node, quote id) may already be used (see ``_check_take_order``)."""
        parties = order.parties()
        if order.order_id != derive_order_id(order):
            raise OrderInvalid(
                f"order_id {order.order_id.hex()} is not derived from the order's content "
                f"(expected {derive_order_id(order).hex()})"
            )
        if view.get(_order_key(order.order_id)) is not None:
            raise AlreadyExists(f"order {order.order_id.hex()} is already committed")
        # Validators find a leg's HTLC by its chain terms, which name no ledger node: a copy of
        # an honest order's legs under other node ids would be settled by the honest swap's
        # locks and redeems (volume, importance and fee shares for nobody's money). One order
        # leg per HTLC, ever (a recorded take reserved its order's: that order may use them).
        _check_htlcs_free(view.get, order)
        self._check_route(order, ctx)
        self._check_clock_order(view, ctx, order)
        for p in parties:  # existence only: decoding four node records is wasted work here
            if view.get(_node_key(p)) is None:
                raise UnknownNode(f"order party {p.hex()} is not a registered node")
        self._check_fees(view, order, spent_ok)

    def _check_route(self, order: SettlementOrder, ctx: _Ctx) -> None:
        legs = order.legs
        oid = order.order_id.hex()
        if len(legs) < 2:
            raise OrderInvalid(f"order {oid}: a route needs at least 2 legs, got {len(legs)}")
        for i, leg in enumerate(legs):
            nxt = legs[(i + 1) % len(legs)]
            if leg.sender == leg.recipient:
                raise OrderInvalid(f"order {oid}: legs[{i}] pays its own sender")
            if leg.recipient != nxt.sender:
                raise OrderInvalid(
                    f"order {oid}: legs[{i}].recipient must pay the next leg (route is a cycle)"
                )
            unit = self._params.expiry_unit.get(leg.chain)
            if unit is None:
                # A leg on a chain the validators do not watch is never read: never attested
                # locked, never seen missed (a look counts only for chains read), so its order
                # never failed nor settled and stayed open and in the window for good, and a
                # defaulter on it was never judged (review of issue 17).
                raise OrderInvalid(
                    f"order {oid}: legs[{i}] is on chain {leg.chain!r}, which this ledger does not "
                    f"route (it routes {', '.join(sorted(self._params.expiry_unit))}: "
                    "expiry_unit)"
                )
            if unit != ("height" if isinstance(leg.expiry, BlockHeight) else "unix"):
                raise OrderInvalid(
                    f"order {oid}: legs[{i}] ({leg.chain} {leg.expiry}) must expire in "
                    f"{leg.chain}'s unit, a {unit} (its HTLC's; expiry_unit)"
                )
            if isinstance(leg.expiry, UnixTime) and leg.expiry.value != leg.expiry_time:
                raise OrderInvalid(
                    f"order {oid}: legs[{i}].expiry_time {leg.expiry_time} differs from its "
                    f"unix expiry {leg.expiry.value}"
                )
            if leg.lock_by >= leg.expiry_time:
                raise OrderInvalid(
                    f"order {oid}: legs[{i}].lock_by {leg.lock_by} is not before its expiry "
                    f"{leg.expiry_time}"
                )
            if i + 1 < len(legs):
                gap = leg.expiry_time - nxt.expiry_time
                if gap < self._params.min_expiry_gap:
                    raise OrderInvalid(
                        f"order {oid}: legs[{i}] must expire at least "
                        f"{self._params.min_expiry_gap}s after legs[{i + 1}], gap is {gap}s"
                    )
                if nxt.lock_by < leg.lock_by:
                    raise OrderInvalid(
                        f"order {oid}: legs[{i + 1}].lock_by is before legs[{i}].lock_by"
                    )
        hops = order.intermediaries()
        if len(set(hops)) != len(hops) or order.initiator in hops:
            raise OrderInvalid(f"order {oid}: a node appears twice on the route")
        if ctx.time > legs[0].lock_by:
            raise OrderInvalid(
                f"order {oid}: block time {ctx.time} is past legs[0].lock_by {legs[0].lock_by}"
            )

    def _check_clock_order(self, view: _View, ctx: _Ctx, order: SettlementOrder) -> None:
        """Refuse an order in which a leg expires later than (or too close to) the leg paying its
        sender, on the validators' attested chain clocks, even in the reading most favourable
        to the order (``kofo.clearance.clocks``): ``expiry_time`` is the parties' word, a height
        expiry is what the HTLC enforces. A chain with no clock attested yet leaves the pair to
        be judged when the paying leg is locked (``leg_not_locked`` then excuses the sender)."""
        tips: dict[str, int] | None = None
        for i in range(len(order.legs) - 1):
            pay, own = order.legs[i], order.legs[i + 1]
            if not clocks.crosses_clocks(pay, own):
                continue
            if tips is None:
                tips = self._fresh_tips(view, ctx.time)
            gap = clocks.expiry_gap(pay, own, ctx.time, tips, self._params, strict=False)
            need = clocks.margin(pay, own, self._params)
            if gap is not None and gap < need:
                raise OrderInvalid(
                    f"order {order.order_id.hex()}: legs[{i + 1}] ({own.chain} {own.expiry}) "
                    f"expires at most {gap}s before legs[{i}] ({pay.chain} {pay.expiry}) paying "
                    f"its sender, on the attested chain clocks {tips}; it needs {need}s "
                    "(notice + settle)"
                )

    def _check_fees(
        self, view: _View, order: SettlementOrder, spent_ok: tuple[bytes, bytes] | None = None
    ) -> None:
        oid = order.order_id.hex()
        if order.kind is OrderKind.DIRECT:
            if len(order.legs) != 2 or order.relays or order.quotes:
                raise FeeRuleViolated(
                    f"order {oid}: a direct order is two legs with no relays or quotes"
                )
            if order.protocol_fee_bps or order.protocol_fee:
                raise FeeRuleViolated(
                    f"order {oid}: direct swaps pay no protocol fee, got {order.protocol_fee}"
                )
            return
        if order.protocol_fee_bps != self._params.protocol_fee_bps:
            raise FeeRuleViolated(
                f"order {oid}: protocol_fee_bps is {order.protocol_fee_bps}, the ledger's is "
                f"{self._params.protocol_fee_bps}"
            )
        expected = protocol_fee(order.notional, order.protocol_fee_bps)
        if order.protocol_fee != expected:
            raise FeeRuleViolated(
                f"order {oid}: protocol_fee is {order.protocol_fee}, the rule gives {expected}"
            )
        hops = order.intermediaries()
        if set(order.relays) & {order.initiator, *hops} or len(set(order.relays)) != len(
            order.relays
        ):
            raise FeeRuleViolated(
                f"order {oid}: relays must be distinct and hold no leg (the initiator pays the "
                "fee; it cannot relay its own order and take a share back)"
            )
        wanted = {(h, QuoteRole.PROVIDER) for h in hops} | {
            (r, QuoteRole.RELAY) for r in order.relays
        }
        got = [(q.node, q.role) for q in order.quotes]
        if len(got) != len(wanted) or set(got) != wanted:
            raise FeeRuleViolated(
                f"order {oid}: needs one provider quote per intermediary and one relay quote "
                "per relay"
            )
        # Quote ids are the carrier's own (a fulfil's hash in the exchange layer), recorded per
        # carrier: a stranger who copies one into its own order uses its own namespace and
        # cannot block the honest order.
        for q in order.quotes:
            if (q.node, q.quote_id) == spent_ok:
                pass
            elif view.get(_quote_used_key(q.node, q.quote_id)) is not None:
                raise AlreadyExists(
                    f"quote {q.quote_id.hex()} of {q.node.hex()} was already used by an order"
                )
            if q.fee_ct is not None:
                node = self._node(view, q.node, "quote node")
                n = privacy.from_bytes(node["paillier_n"])
                privacy.check_ciphertext(n, q.fee_ct, f"quote {q.quote_id.hex()} fee_ct")

    # -- ReportLegOutcome ----------------------------------------------------------------------

    _TRANSITIONS: ClassVar[dict[str | None, frozenset[str]]] = {
        None: frozenset({"locked", "redeemed", "refunded"}),
        "locked": frozenset({"redeemed", "refunded"}),
        "redeemed": frozenset(),
        "refunded": frozenset(),
    }

    def _report(self, view: _View, ctx: _Ctx, sender: bytes, tx: ReportOutcome) -> None:
        # Outcomes were once declared by route nodes and self-declared "monitors"; a declared
        # outcome is worth nothing (a fake txid, a refund that never happened). They now come
        # only from the validators' attestations (see _attestations).
        raise NotAuthorised(
            "report_outcome is no longer accepted: leg outcomes are attested by the validators' "
            "own observation of the chains"
        )

    # -- attested outcomes -----------------------------------------------------------------------

    def _attestations(self, view: _View, ctx: _Ctx, raw: bytes, *, first: bool) -> None:
        """Apply the facts that validators with > 2/3 of the power attested at height - 1."""
        if not first or view.get(b"meta/attested") == _enc(ctx.height):
            raise NotAuthorised("an attestation tx must be the first tx of its block")
        tx = attest.decode_attest_tx(raw)
        validators = _validators_at(view.get(_K_VALIDATORS), ctx.height - 1)
        if validators is None:  # solo: the producer's own observation, one vote of power 1
            if tx.height != ctx.height - 1 or [v.validator for v in tx.votes] != [
                attest.SOLO_ADDRESS
            ]:
                raise NotAuthorised("a solo attestation is the producer's single vote")
            votes = [(1, tx.votes[0].extension)]
            total = 1
        else:
            if not self.vote_extensions_enabled_at(ctx.height):
                raise NotAuthorised("vote extensions are not enabled at this height")
            attest.check_attest_tx(
                tx,
                expected_height=ctx.height - 1,
                chain_id=str(_dec(view.get(_K_CHAIN_ID) or _enc(""))),
                validators=validators,
            )
            votes = [(validators[v.validator].power, v.extension) for v in tx.votes]
            total = sum(v.power for v in validators.values())
        view.set(b"meta/attested", _enc(ctx.height))
        tallied = attest.tally_all(votes, total)
        facts, bond_facts, executed = tallied.facts, tallied.bonds, tallied.executed
        # the clocks first: a lock attested in this block is judged with them
        self._set_clocks(view, ctx, tallied.clocks)
        for fact in facts:
            self._apply_fact(view, ctx, fact, self._set_outcome)
        for bond in bond_facts:
            self._apply_fact(view, ctx, bond, self._set_bond)
        for done in executed:
            self._apply_fact(view, ctx, done, self._set_executed)
        self._observed_window(view, ctx, votes, total, solo=validators is None)

    def _observed_window(
        self, view: _View, ctx: _Ctx, votes: list[tuple[int, bytes]], total: int, *, solo: bool
    ) -> None:
        """Mark the legs the validators looked at after their deadline without seeing a lock.

        ExtendVote observes a window of at most ``MAX_OBSERVED_ORDERS`` open orders, a pure
        function of the committed state and height it extends (:func:`_window`); so the app
        knows which orders a counted attestation looked at. When validators with > 2/3 of the
        power sent complete extensions (fewer than ``COMPLETE_EXTENSION_OBS`` leg facts: the
        whole window read), each order of that window whose leg has no lock attested (after
        this tx's facts) and whose ``lock_by + attest_grace`` is at or before this block's time
        gets ``missed_at``: only then is the leg "not locked in time"
        (``leg_not_locked``, take fills). A lock attested before that is in time however late
        a flood of open orders made the window reach it. Work: the window's order states (and
        an order itself only when one of its legs fell due), one write per leg at most once."""
        ids = self._open_orders()
        window = _window(ids, self.store.height)
        here: list[Any] | None = None
        if window:
            here = [self.store.height, window[0], window[-1]]
        seen: list[Any] | None
        if solo:  # the producer's extension was built on this committed state
            seen = here
        else:  # ExtendVote(H) ran on the state committed at H - 1: recorded by the last block
            raw = view.get(_K_WINDOW)
            seen = None if raw is None else _dec(raw)
            view.set(_K_WINDOW, _enc(here))
            if seen is not None and int(seen[0]) != self.store.height - 1:
                seen = None
        if seen is None:
            return
        complete = 0
        looks: list[tuple[int, frozenset[str]]] = []  # per complete extension: power, blind
        reports: dict[tuple[bytes, int], list[int]] = {}  # leg -> its reporters (looks index)
        for power, ext in votes:
            try:
                obs, _, _, _, blind = decode_extension_with_blind(ext)
            except KofoError:
                continue
            if len(obs) < COMPLETE_EXTENSION_OBS and len(blind) < MAX_BLIND:
                complete += power
                for o in {(o.order_id, o.leg) for o in obs}:
                    reports.setdefault(o, []).append(len(looks))
                looks.append((power, frozenset(blind)))
        if 3 * complete <= 2 * total:
            return  # the window was not read whole: nothing is known of it (a delay only)
        # A look counts only for the chains it read: a leg on a chain that validators with
        # > 1/3 of the power could not read this height (their node down, a shared RPC
        # provider out, a DoS on the backends) is not marked; a later look decides. And it
        # says "no lock" only for a leg it reported nothing of: a leg is marked when
        # validators with > 2/3 of the power read its chain AND saw nothing there. (Counting
        # every reader as "no lock" let a byzantine validator's empty extension, with the
        # honest ones that saw the lock, outweigh those that could not read: an honest lock
        # seen by half the power marked missed.) Work: a pass over the looks per chain, and
        # per leg over its reporters (< COMPLETE_EXTENSION_OBS facts per look in all).
        read: dict[str, int] = {}

        def saw_no_lock(oid: bytes, index: int, chain: str) -> bool:
            if chain not in read:
                read[chain] = sum(p for p, blind in looks if chain not in blind)
            seen = sum(
                looks[k][0] for k in reports.get((oid, index), ()) if chain not in looks[k][1]
            )
            return 3 * (read[chain] - seen) > 2 * total

        # The time of the look: this block's, as for every attested fact (``locked_at``); the
        # extensions were made a height or two before it, which attest_grace allows for.
        height, at = int(seen[0]), ctx.time
        grace = self._params.attest_grace
        sub = _View(view)  # (in its own overlay, as a fact: a bug here drops only the marks)
        mark = len(ctx.events)
        try:
            for oid in _ids_in_range(ids, bytes(seen[1]), bytes(seen[2])):
                key = _order_state_key(oid)
                state = sub.get_map(key)
                if state is None or state["status"] != "committed" or state["height"] > height:
                    continue  # settled or failed since, or committed after the observed state
                if int(state.get("due", 0)) + grace > at:
                    continue
                raw_order = sub.get(_order_key(oid))
                if raw_order is None:
                    continue
                order = SettlementOrder.from_map(_dec(raw_order))
                due = _NOT_DUE
                for i, (leg, rec) in enumerate(zip(order.legs, state["legs"], strict=True)):
                    if rec["outcome"] is not None or "missed_at" in rec:
                        continue
                    if leg.lock_by + grace <= at and saw_no_lock(oid, i, leg.chain):
                        rec["missed_at"] = at
                    else:
                        due = min(due, leg.lock_by)
                state["due"] = due
                first = state["legs"][0]
                if first["outcome"] is None and "missed_at" in first:
                    # The initiator never paid in: nobody locks after an unpaid-in leg, so the
                    # order can never settle. It fails now (out of the open set and the
                    # window); legs locked out of turn refund on their chains at expiry, and
                    # leg_not_locked against legs[0] still slashes (its lock is "missed").
                    state["status"] = "failed"
                    state["failed_at"], state["failed_unpaid"] = at, 0
                    self._fail(sub, ctx, order, initiator_only=True)
                    self._release_takes(sub, ctx, order, state)
                sub.set_map(key, state)
        except Exception as exc:
            del ctx.events[mark:]
            log.error("observed window marks dropped after an internal error", exc_info=exc)
            return
        sub.flush()

    def _apply_fact(
        self,
        view: _View,
        ctx: _Ctx,
        fact: Observation | BondObservation | ExecutedDecision,
        apply: Callable[[_View, _Ctx, Any], None],
    ) -> None:
        """Apply one attested fact in its own overlay: one whose application raises (a bug hit
        by some state) is dropped alone, its writes and events with it, the same way on every
        validator; the height's other facts still apply. (All the facts of a height travel in
        one attestation tx: before, one raising fact refused the tx and lost them all.)"""
        sub = _View(view)
        mark = len(ctx.events)
        try:
            apply(sub, ctx, fact)
        except Exception as exc:
            del ctx.events[mark:]
            what = type(fact).__name__
            log.error("attested %s dropped after an internal error: %r", what, fact, exc_info=exc)
            ctx.events.append(("attested_fact_dropped", (("kind", what),)))
            return
        sub.flush()

    def _set_clocks(self, view: _View, ctx: _Ctx, heights: Mapping[str, int]) -> None:
        """Each chain's attested height (the highest > 2/3 of the power report at least), kept
        with this block's time; never lowered (a proposer leaving out honest votes could
        otherwise set it back). Chains without ``chain_clock`` params are not kept."""
        for chain, height in heights.items():
            if chain not in self._params.chain_clock:
                continue
            prev = view.get_map(clocks.clock_key(chain))
            since = ctx.time
            if prev is not None and height <= int(prev["height"]):
                # unchanged (or a lower tally, never kept): since when the height was reached
                height = int(prev["height"])
                since = int(prev.get("since", prev["time"]))
            view.set_map(
                clocks.clock_key(chain), {"height": height, "since": since, "time": ctx.time}
            )

    def _fresh_tips(self, view: _View, at: int) -> dict[str, int]:
        """The chains' attested heights usable at block time ``at`` (see ``clock_max_age``)."""
        return clocks.fresh_tips(self._clocks(view), at, self._params)

    def _clocks(self, view: _View) -> dict[str, dict[str, Any]]:
        found = {}
        for chain in sorted(self._params.chain_clock):
            c = view.get_map(clocks.clock_key(chain))
            if c is not None:
                found[chain] = c
        return found

    def _set_bond(self, view: _View, ctx: _Ctx, fact: BondObservation) -> None:
        """An attested bond-vault balance: the only bond importance counts. A fall in it is
        *not* read as an executed slash or release (anything else could cause it): only the
        vault's executed decisions, attested by id (:meth:`_set_executed`), pay off
        ``slash_pending``, once the balance shows them (:func:`_settle_executed`)."""
        rec = view.get_map(_node_key(fact.node))
        if rec is None or fact.chain_height < rec.get("bond_height", 0):
            return  # unknown node, or a view older than the one already counted
        rec["bond_locked"] = fact.amount
        rec["bond_height"] = fact.chain_height
        _settle_executed(rec)
        view.set_map(_node_key(fact.node), rec)
        ctx.events.append(
            ("bond_attested", (("node", fact.node.hex()), ("amount", str(fact.amount))))
        )

    def _set_executed(self, view: _View, ctx: _Ctx, fact: ExecutedDecision) -> None:
        """The vault executed ledger decision ``fact.decision`` (attested by > 2/3): its amount
        stops being pending once the node's attested balance is from that vault height on."""
        key = b"decision/" + fact.decision
        dec = view.get_map(key)
        if dec is None or "executed_at" in dec:
            return  # not this ledger's decision, or already counted
        dec["executed_at"] = fact.chain_height
        view.set_map(key, dec)
        open_ids = [bytes(d) for d in _dec(view.get(_K_OPEN_DECISIONS) or _enc([]))]
        _remove_sorted(open_ids, fact.decision)
        view.set(_K_OPEN_DECISIONS, _enc(open_ids))
        node = bytes(dec["node"])
        rec = view.get_map(_node_key(node))
        if rec is not None:
            rec["executed_unseen"] = [
                *rec.get("executed_unseen", []),
                [fact.chain_height, int(dec["amount"])],
            ]
            _settle_executed(rec)
            view.set_map(_node_key(node), rec)
        ctx.events.append(
            (
                "bond_decision_executed",
                (("id", fact.decision.hex()), ("node", node.hex()), ("amount", str(dec["amount"]))),
            )
        )

    # -- validator keys and bond decisions -----------------------------------------------------

    def _register_validator_key(
        self, view: _View, ctx: _Ctx, sender: bytes, tx: RegisterValidatorKey
    ) -> None:
        raw_sets = view.get(_K_VALIDATORS)
        validators = _validators_at(raw_sets, ctx.height + 2) or {}
        rec = self._node(view, sender, "validator's node")
        addr = attest.validator_address(tx.consensus_key)
        if view.get(b"valkey/" + addr) is not None:
            raise AlreadyExists(f"validator {addr.hex()} already registered its key")
        genesis = attest.validators_from_state(_dec(view.get(_K_GENESIS_VALIDATORS) or _enc([])))
        known = genesis.get(addr) or validators.get(addr)
        joining = known is None  # (a genesis validator whose power fell to 0 is no joiner)
        if known is not None and known.pub_key != tx.consensus_key:
            raise NotAuthorised(f"{tx.consensus_key.hex()} is not a validator's consensus key")
        joined: list[bytes] = [bytes(k) for k in _dec(view.get(_K_JOINED_VALIDATORS) or _enc([]))]
        if joining:
            # A new validator, through its node's bond: only where a validator set exists
            # (CometBFT; solo has none), with at least validator_min_power of attested bond,
            # and within the set's bound (genesis and joined together).
            p = self._params
            power = _effective_bond(rec) // p.power_unit
            if raw_sets is None or power < p.validator_min_power:
                raise NotAuthorised(
                    f"{tx.consensus_key.hex()} is not a validator's consensus key, and the "
                    f"node's attested bond gives power {power}, below the "
                    f"{p.validator_min_power} a new validator needs"
                )
            if len(genesis) + len(joined) >= attest.MAX_VALIDATORS:
                # A slot held by a joined validator whose bond no longer gives the minimum
                # is reclaimed: otherwise bonding briefly, joining and unbonding would hold
                # the set's slots for good and shut every later validator out.
                idle = next((k for k in joined if self._joined_idle(view, k)), None)
                if idle is None:
                    raise RateLimited(f"the validator set is full ({attest.MAX_VALIDATORS})")
                joined.remove(idle)
                self._forget_validator_key(view, attest.validator_address(idle))
        if view.get(b"nodeval/" + sender) is not None:
            # one bond backs one validator: two validators on one node would count it twice
            raise AlreadyExists(f"node {sender.hex()} already backs a validator")
        if view.get(b"valeth/" + tx.eth_address) is not None:
            # one Ethereum key per validator: a key shared by two would sign with both powers,
            # and a vault set listing an address twice is refused by update_valset for good
            raise AlreadyExists(f"{tx.eth_address.hex()} is already another validator's key")
        verify_ed25519(
            tx.consensus_key,
            tx.consensus_sig,
            bonds.valkey_consensus_message(tx.eth_address, sender),
            "register_validator_key.consensus_sig",
        )
        if bonds.recover_address(tx.eth_sig, bonds.valkey_eth_digest(tx.consensus_key)) != (
            tx.eth_address
        ):
            raise NotAuthorised("register_validator_key.eth_sig is not by eth_address's key")
        if joining:
            view.set(_K_JOINED_VALIDATORS, _enc([*joined, tx.consensus_key]))
            ctx.events.append(("validator_joined", (("address", addr.hex()),)))
        view.set(b"valkey/" + addr, tx.eth_address)
        view.set(b"valnode/" + addr, sender)
        view.set(b"nodeval/" + sender, addr)
        view.set(b"valeth/" + tx.eth_address, addr)

    def _joined_idle(self, view: _View, pub_key: bytes) -> bool:
        """Whether a joined validator's node bond gives less than ``validator_min_power`` (the
        same rule that takes its power to 0 in :meth:`_update_validators`)."""
        node = view.get(b"valnode/" + attest.validator_address(pub_key))
        rec = None if node is None else view.get_map(_node_key(node))
        power = 0 if rec is None else _effective_bond(rec) // self._params.power_unit
        return power < self._params.validator_min_power

    @staticmethod
    def _forget_validator_key(view: _View, addr: bytes) -> None:
        node = view.get(b"valnode/" + addr)
        eth = view.get(b"valkey/" + addr)
        for key in (b"valkey/" + addr, b"valnode/" + addr):
            view.delete(key)
        if node is not None:
            view.delete(b"nodeval/" + node)
        if eth is not None:
            view.delete(b"valeth/" + eth)

    def _unbond(self, view: _View, ctx: _Ctx, sender: bytes, tx: Unbond) -> None:
        rec = self._node(view, sender, "unbonding node")
        key = b"unbond/" + sender
        pending = view.get_map(key)
        if tx.seq != rec.get("unbonds", 0):
            raise OrderInvalid(f"unbond.seq must be {rec.get('unbonds', 0)}, got {tx.seq}")
        # Bond reserved for takes of open quotes stays until they resolve (issue 17): it is
        # what a default on them costs, and a provider's excuse rests on it.
        reserved = _reserved(rec, ctx.time)
        if pending is None:
            free = max(0, _effective_bond(rec) - reserved)
            if tx.amount > free:
                raise OrderInvalid(
                    f"unbond.amount {tx.amount} exceeds the attested bond not reserved for takes "
                    f"{free} (reserved {reserved})"
                )
            view.set_map(key, {"amount": tx.amount, "at": ctx.time, "payout": tx.payout})
            rec["unbonding"] = tx.amount
            view.set_map(_node_key(sender), rec)
            ctx.events.append(("unbonding", (("node", sender.hex()), ("amount", str(tx.amount)))))
            return
        ready = pending["at"] + self._params.unbond_delay
        if tx.amount != pending["amount"] or tx.payout != pending["payout"]:
            raise OrderInvalid(
                f"an unbond of {pending['amount']} to 0x{pending['payout'].hex()} is already "
                "pending"
            )
        if ctx.time < ready:
            raise OrderInvalid(f"the unbond of {tx.amount} can be released from {ready}")
        # slashes in the meantime come first, and bond reserved for takes is not released
        amount = min(tx.amount, max(0, _slashable_bond(rec) - reserved))
        rec["unbonding"] = 0
        rec["unbonds"] = rec.get("unbonds", 0) + 1
        rec["slash_pending"] = rec.get("slash_pending", 0) + amount
        view.set_map(_node_key(sender), rec)
        view.delete(key)
        if amount:
            did = bonds.decision_id(b"release/" + sender + _enc(ctx.height))
            _record_decision(
                view,
                did,
                {
                    "kind": "release",
                    "node": sender,
                    "amount": amount,
                    "recipient": "0x" + tx.payout.hex(),
                    "height": ctx.height,
                },
            )
            ctx.events.append(
                (
                    "bond_decision",
                    (("id", did.hex()), ("node", sender.hex()), ("amount", str(amount))),
                )
            )

    def _decide_slash(
        self, view: _View, ctx: _Ctx, evidence_id: bytes, node: bytes, amount: int
    ) -> None:
        """Record a slash for the validators to sign and a relayer to execute on the vault."""
        did = bonds.decision_id(evidence_id)
        _record_decision(
            view,
            did,
            {
                "kind": "slash",
                "node": node,
                "amount": amount,
                "recipient": self._params.slash_recipient,
                "height": ctx.height,
            },
        )
        ctx.events.append(
            ("bond_decision", (("id", did.hex()), ("node", node.hex()), ("amount", str(amount))))
        )

    def _set_outcome(self, view: _View, ctx: _Ctx, fact: Observation) -> None:
        """One attested fact; one that no longer applies (order final, leg already there, a
        transition the HTLC cannot make) changes nothing."""
        try:
            order, rec = _load_order(view, fact.order_id)
        except NotFound:
            return
        if fact.leg >= len(order.legs) or rec["status"] != "committed":
            return
        leg = rec["legs"][fact.leg]
        if fact.outcome.value not in self._TRANSITIONS[leg["outcome"]]:
            return
        if leg["outcome"] is None or fact.outcome is LegOutcome.LOCKED:
            leg["locked_at"] = ctx.time
            # the lock's block on its chain, for height expiries (a spend's if no lock was seen
            # first: at or after the lock, so it errs towards excusing the next leg's sender)
            leg["locked_height"] = fact.chain_height
            # the chain clocks when the leg was locked, for judging its recipient's own leg
            # (only the height chains of this order: at most one entry per leg)
            kept = self._clocks(view)
            tips = clocks.fresh_tips(kept, ctx.time, self._params)
            since = clocks.fresh_since(kept, ctx.time, self._params)
            chains = sorted({x.chain for x in order.legs if isinstance(x.expiry, BlockHeight)})
            leg["clocks"] = {c: tips[c] for c in chains if c in tips}
            leg["clock_since"] = {c: since[c] for c in chains if c in since}
        leg["outcome"] = fact.outcome.value
        leg["txid"] = fact.txid
        leg["at"] = ctx.time
        leg["chain_height"] = fact.chain_height
        ctx.events.append(
            (
                "leg_outcome",
                (
                    ("order_id", fact.order_id.hex()),
                    ("leg", str(fact.leg)),
                    ("outcome", fact.outcome.value),
                    ("txid", fact.txid),
                ),
            )
        )
        outcomes = [x["outcome"] for x in rec["legs"]]
        if all(o == "redeemed" for o in outcomes):
            rec["status"] = "settled"
            self._settle(view, ctx, order)
            self._release_takes(view, ctx, order, rec)
        elif fact.outcome is LegOutcome.REFUNDED:
            rec["status"] = "failed"
            # (from then on no lock is attested: a leg before it not yet due is not judged)
            rec["failed_at"], rec["failed_by"] = ctx.time, fact.leg
            self._fail(view, ctx, order)
            self._release_takes(view, ctx, order, rec)
        view.set_map(_order_state_key(fact.order_id), rec)

    def _note_events(self, events: list[tuple[str, tuple[tuple[str, str], ...]]]) -> None:
        # Kept until the block's Commit (dropped with a rolled-back finalization).
        self._block_events += events

    def _index_committed(self) -> None:
        # The in-memory sorted lists ExtendVote windows over, kept exact by the events of each
        # committed block's txs: the open (committed, unfinished) orders and the registered nodes.
        events, self._block_events = self._block_events, []
        if self._open is None and self._nodes is None:
            return
        for kind, attrs in events:
            if kind == "order_committed" and self._open is not None:
                _insort(self._open, bytes.fromhex(attrs[0][1]))
            elif kind in ("order_settled", "order_failed") and self._open is not None:
                _remove_sorted(self._open, bytes.fromhex(attrs[0][1]))
            elif kind == "node_registered" and self._nodes is not None:
                _insort(self._nodes, bytes.fromhex(attrs[0][1]))

    def _open_orders(self) -> list[bytes]:
        if self._open is None:
            self._open = sorted(
                k[len(b"order_state/") :]
                for k, v in self.store.scan_committed(b"order_state/")
                if _dec(v)["status"] == "committed"
            )
        return self._open

    def pending_legs(self) -> list[LegRef]:
        """Legs whose outcome can still change, of committed unfinished orders (committed
        state: what ExtendVote observes). At most ``MAX_OBSERVED_ORDERS`` orders per height: a
        window over the open orders by id, rotating with the committed height, so every honest
        validator derives the same window from the same state and their facts agree. Only the
        window's orders are read: the work per height is bounded however many are open."""
        open_orders: list[tuple[bytes, dict[str, Any]]] = []
        for oid in _window(self._open_orders(), self.store.height):
            state_raw = self.store.get_committed(_order_state_key(oid))
            if state_raw is None:
                continue
            state = _dec(state_raw)
            if state["status"] == "committed":
                open_orders.append((oid, state))
        refs = []
        for oid, state in open_orders:
            raw = self.store.get_committed(_order_key(oid))
            if raw is None:
                continue
            order = SettlementOrder.from_map(_dec(raw))
            for i, leg in enumerate(order.legs):
                if state["legs"][i]["outcome"] in (None, "locked"):
                    refs.append(LegRef(oid, i, leg, order.payment_hash, int(state.get("time", 0))))
        return refs

    @property
    def observer(self) -> ChainObserver | None:
        """This validator's own view of the chains: what its vote extensions attest."""
        return self._observer

    @observer.setter
    def observer(self, observer: ChainObserver | None) -> None:
        # Every method is required (kofo.wire.attest.ChainObserver): one missing was once
        # skipped in silence, and the validator never attested what only it would read.
        missing = [m for m in OBSERVER_METHODS if not callable(getattr(observer, m, None))]
        if observer is not None and missing:
            raise ConfigError(
                f"the ledger's chain observer {type(observer).__name__} lacks "
                f"{', '.join(missing)}: every ChainObserver method is required"
            )
        self._observer = observer

    def extend_vote(self) -> bytes:
        """This validator's vote extension: what its observer sees of pending legs that
        differs from the ledger's record (at most ``MAX_OBSERVATIONS``, in order-id order, so
        honest validators pick the same facts)."""
        if self.observer is None:
            return b""
        seen: list[Observation] = []
        blind: set[str] = set()
        for ref in self.pending_legs():
            try:
                obs = self.observer.observe(ref)
            except Exception:  # a read that failed is "not read", never "no lock", nor a crash
                # (an observer's ChainUnreadable or anything else: this height's look at the
                # leg's chain does not count, see _observed_window)
                blind.add(ref.leg.chain)
                continue
            if obs is None or (obs.order_id, obs.leg) != (ref.order_id, ref.index):
                continue
            state = _dec(self.store.get_committed(_order_state_key(ref.order_id)) or _enc({}))
            if state.get("legs", [{}])[ref.index].get("outcome") == obs.outcome.value:
                continue
            seen.append(obs)
            if len(seen) >= MAX_OBSERVATIONS:
                break
        return encode_extension(
            seen,
            self._bond_observations(),
            self._executed_observations(),
            self._tips(),
            blind=blind,
        )

    def _tips(self) -> list[ChainTip]:
        """This validator's chain clocks: its observer's tips, for the chains the ledger keeps
        a clock of (``chain_clock``)."""
        if self.observer is None:
            return []
        try:
            seen = self.observer.observe_tips()
        except Exception:  # an observer failing is "saw nothing", never a crash
            return []
        out = []
        for t in seen:
            if not isinstance(t, ChainTip) or t.chain not in self._params.chain_clock:
                continue
            try:  # what every validator's VerifyVoteExtension will accept
                out.append(ChainTip.from_list(t.as_list(), "tip"))
            except BadMessage:
                continue
        return out

    def bonds_to_attest(self) -> bool:
        """Whether this validator's observer sees a vault balance the ledger does not hold,
        or a decision the vault executed that the ledger holds open (what the next vote
        extension would attest)."""
        return bool(self._bond_observations()) or bool(self._executed_observations())

    def _executed_observations(self) -> list[ExecutedDecision]:
        """The open decisions the vault has executed, for a window of them rotating with the
        height, read at the same rounded vault height as the balances."""
        if self.observer is None:
            return []
        observe = self.observer.observe_decision
        open_ids = [bytes(d) for d in _dec(self.store.get_committed(_K_OPEN_DECISIONS) or _enc([]))]
        out: list[ExecutedDecision] = []
        # one vault read each: MAX_OBSERVATIONS a height (the most an extension carries)
        for did in _window(open_ids, self.store.height, MAX_OBSERVATIONS):
            try:
                seen = observe(did, self._params.bond_height_step)
            except Exception:  # an observer failing is "saw nothing", never a crash
                seen = None
            if isinstance(seen, ExecutedDecision) and seen.decision == did:
                out.append(seen)
                if len(out) >= MAX_OBSERVATIONS:
                    break
        return out

    def _bond_observations(self) -> list[BondObservation]:
        """Vault balances that differ from the ledger's attested record, for a window of
        registered nodes rotating with the height (same window on every honest validator)."""
        if self._nodes is None:
            self._nodes = [k[len(b"node/") :] for k, _ in self.store.scan_committed(b"node/")]
        nodes = _window(self._nodes, self.store.height)
        out: list[BondObservation] = []
        if self.observer is None:
            return out
        observe = self.observer.observe_bond
        for node in nodes:
            raw = self.store.get_committed(_node_key(node))
            if raw is None:
                continue
            try:
                seen = observe(node, self._params.bond_height_step)
            except Exception:  # an observer failing is "saw nothing", never a crash
                seen = None
            if not isinstance(seen, BondObservation) or seen.node != node:
                continue
            rec = _dec(raw)
            if seen.chain_height < rec.get("bond_height", 0):
                continue
            # an executed decision the recorded balance does not show yet: re-attest the
            # balance at a newer height even if the amount looks unchanged (a top-up may
            # have matched the slash)
            unseen = any(w[0] > rec.get("bond_height", 0) for w in rec.get("executed_unseen", []))
            if seen.amount == rec.get("bond_locked", 0) and not (
                unseen and seen.chain_height > rec.get("bond_height", 0)
            ):
                continue
            out.append(seen)
            if len(out) >= MAX_OBSERVATIONS:
                break
        return out

    @staticmethod
    def verify_vote_extension(raw: bytes) -> bool:
        """Structure only (deterministic): an honest validator may see the chains differently
        from this one; what counts is decided by the tally."""
        try:
            decode_extension(raw)
        except KofoError:
            return False
        return True

    def vote_extensions_enabled_at(self, height: int) -> bool:
        """Whether block ``height`` must carry the extended commit of ``height - 1``."""
        raw = self.store.get_committed(_K_VE_HEIGHT)
        ve = 0 if raw is None else int(_dec(raw))
        return ve > 0 and height - 1 >= ve

    def solo_attestation(self, height: int) -> bytes:
        """Solo mode: the attestation tx of the producer's own observation, for block
        ``height`` (facts seen on the state committed at ``height - 1``)."""
        vote = attest.Vote(attest.SOLO_ADDRESS, self.extend_vote(), b"")
        return attest.encode_attest_tx(attest.AttestTx(height - 1, 0, (vote,)))

    def check_proposal(self, height: int, txs: Sequence[bytes]) -> str | None:
        """ProcessProposal: why the proposal must be rejected, or None. A block past the vote
        extensions' first height must start with a valid attestation tx, and no other tx may
        be one; every ordinary tx is judged when the block is finalized."""
        if any(attest.is_attest_tx(t) for t in txs[1:]):
            return "an attestation tx after the first position"
        if not self.vote_extensions_enabled_at(height):
            return (
                "an attestation tx before vote extensions"
                if txs and attest.is_attest_tx(txs[0])
                else None
            )
        if not txs or not attest.is_attest_tx(txs[0]):
            return "the block lacks the previous height's attestations"
        validators = _validators_at(self.store.get_committed(_K_VALIDATORS), height - 1)
        if validators is None:
            return "no validator set"
        try:
            tx = attest.decode_attest_tx(txs[0])
            attest.check_attest_tx(
                tx,
                expected_height=height - 1,
                chain_id=str(_dec(self.store.get_committed(_K_CHAIN_ID) or _enc(""))),
                validators=validators,
            )
        except KofoError as exc:
            return str(exc)
        return None

    def _bump_stats(
        self, view: _View, ctx: _Ctx, node: bytes, *, settled: bool, volume: int
    ) -> None:
        rec = self._node(view, node, "route node")
        rec["volume"] = decay(
            rec["volume"], ctx.height - rec["volume_height"], self._params.importance_half_life
        )
        rec["volume"] += volume
        rec["volume_height"] = ctx.height
        rec["settled" if settled else "failed"] += 1
        view.set_map(_node_key(node), rec)

    def _settle(self, view: _View, ctx: _Ctx, order: SettlementOrder) -> None:
        unit = self._params.volume_units.get(order.fee_asset, 0)
        volume = order.notional // unit if unit else 0
        for node in [order.initiator, *order.intermediaries(), *order.relays]:
            self._bump_stats(view, ctx, node, settled=True, volume=volume)
        ctx.events.append(("order_settled", (("order_id", order.order_id.hex()),)))
        if order.kind is OrderKind.DIRECT:
            return
        hops = order.intermediaries()
        split = split_fee(
            order.protocol_fee,
            order.relays,
            hops,
            foundation_bps=self._params.foundation_bps,
            relay_pool_bps=self._params.relay_pool_bps,
        )
        asset = order.fee_asset
        _int_add(view, b"foundation/" + asset.encode(), split.foundation)
        _int_add(view, b"fees_collected/" + asset.encode(), split.fee)
        for node, amount in split.shares:
            rec = self._node(view, node, "fee recipient")
            n = privacy.from_bytes(rec["paillier_n"])
            key = _bal_key(node, asset)
            view.set(key, privacy.add_plain(n, view.get(key) or rec["seed"], amount))
            # The public twin of the encrypted balance: withdrawals can never exceed it.
            _int_add(view, _credited_key(node, asset), amount)
        received = {leg.recipient: leg.asset for leg in order.legs}
        for q in order.quotes:
            if q.role is QuoteRole.PROVIDER:
                rec = self._node(view, q.node, "provider")
                rec["points"] += self._params.liquidity_points_per_order
                view.set_map(_node_key(q.node), rec)
            if q.fee_ct is not None:
                rec = self._node(view, q.node, "fee recipient")
                n = privacy.from_bytes(rec["paillier_n"])
                key = _earned_key(q.node, received.get(q.node, asset))
                prev = view.get(key)
                view.set(key, q.fee_ct if prev is None else privacy.add(n, prev, q.fee_ct))

    def _fail(
        self, view: _View, ctx: _Ctx, order: SettlementOrder, *, initiator_only: bool = False
    ) -> None:
        """Count the failure against the initiator and the intermediaries (a refunded leg),
        or against the initiator alone (``initiator_only``: it never paid in)."""
        blamed = [order.initiator] if initiator_only else [order.initiator, *order.intermediaries()]
        for node in blamed:
            self._bump_stats(view, ctx, node, settled=False, volume=0)
        ctx.events.append(("order_failed", (("order_id", order.order_id.hex()),)))

    # -- FileEvidence --------------------------------------------------------------------------

    def _evidence(self, view: _View, ctx: _Ctx, sender: bytes, tx: FileEvidence) -> None:
        # Evidence is judged against facts the ledger itself holds: leg outcomes attested by
        # the validators, takes recorded in a block before the quote expired. Who files it
        # only matters for takes (the taker's own); the "monitor" flag carries no power.
        self._node(view, sender, "evidence reporter")
        p = self._params
        # (providers whose take's taker paid a leg in too near its expiry height)
        unsafe_for: set[bytes] | None = None
        if tx.kind is EvidenceKind.LEG_NOT_LOCKED:
            assert tx.order_id is not None and tx.leg is not None  # guaranteed by the parser
            order, rec = _load_order(view, tx.order_id)
            if tx.leg >= len(order.legs):
                raise EvidenceInvalid(f"leg {tx.leg} does not exist")
            eid = b"evidence/lnl/" + tx.order_id + tx.leg.to_bytes(1, "big")
            leg = order.legs[tx.leg]
            # A lock is "in time" unless the validators, looking at the order at or after
            # lock_by + attest_grace, saw none (_observed_window: the leg's missed_at). The
            # ledger sees a lock only after its confirmations and a height, so judging by
            # lock_by itself would slash a sender who locked just before it; and judging by the
            # block that counted the lock let a flood of open orders, slowing the window that
            # observes them, make an honest lock late.
            grace = p.attest_grace
            if ctx.time <= leg.lock_by + grace:
                raise EvidenceInvalid(
                    f"legs[{tx.leg}] is judged after lock_by {leg.lock_by} + attest_grace "
                    f"{grace} (block time {ctx.time})"
                )
            seen = _lock_seen(rec["legs"][tx.leg], rec["status"])
            if seen == "in_time":
                locked_at = rec["legs"][tx.leg]["locked_at"]
                raise EvidenceInvalid(f"legs[{tx.leg}] was attested locked at {locked_at}")
            for j in range(tx.leg):
                before = _lock_seen(rec["legs"][j], rec["status"])
                if before == "unseen":
                    raise EvidenceInvalid(
                        f"legs[{j}] was not yet observed after its lock_by "
                        f"{order.legs[j].lock_by} + attest_grace {grace}: file again later"
                    )
                if before != "in_time":
                    raise EvidenceInvalid(
                        f"legs[{j}] was not attested locked by its lock_by "
                        f"{order.legs[j].lock_by} + attest_grace {grace}: legs[{tx.leg}]'s "
                        "sender was right not to lock"
                    )
            offender = leg.sender
            try:
                # An order failed by a refund of a leg after this one (one with a height expiry
                # written short can refund at once) before this leg was due: no lock of it is
                # attested any more, and its sender, the route broken downstream, was right not
                # to lock. (A refund of a leg paying it in is judged by the margin rule.)
                failed_at, failed_by = int(rec.get("failed_at", 0)), int(rec.get("failed_by", -1))
                early = failed_by > tx.leg and failed_at <= leg.lock_by + grace
                if early:
                    raise EvidenceInvalid(
                        f"the order failed at {failed_at} (legs[{failed_by}] refunded), before "
                        f"legs[{tx.leg}] was due (lock_by {leg.lock_by} + attest_grace {grace}): "
                        "its sender was right not to lock"
                    )
                self._check_paid_in_safely(order, rec, tx.leg)
                self._check_paid_in_clock(order, rec, tx.leg)
            except EvidenceInvalid:
                # The sender was right not to lock. If it is the provider of a take whose taker
                # wrote the order and reserved bond for it, or another party before such a
                # provider, the taker's order had it paid in too near the expiry height, or
                # failed early: that is the taker's default, its reservation is forfeited (so a
                # later taker's evidence does not slash the provider for it either).
                unsafe_for = {lg.sender for lg in order.legs[tx.leg :]}
                if early:
                    # (a provider that failed its own take's order, its leg locked out of turn
                    # and refunded at once, is not excused by that: the taker forfeits nothing)
                    unsafe_for.discard(order.legs[failed_by].sender)
                taker = self._reserving_taker(view, ctx, tx.order_id, leg.sender, unsafe_for)
                if taker is None:
                    raise
                offender = taker
            if offender == leg.sender and seen == "unseen":
                # (only the sender's own default needs it: a taker's forfeit rests on its order)
                raise EvidenceInvalid(
                    f"legs[{tx.leg}] was not yet observed after its lock_by {leg.lock_by} + "
                    f"attest_grace {grace}: file again later"
                )
            slash_bps, points = p.slash_bps_not_locked, p.penalty_points_not_locked
        else:
            assert tx.quote is not None and tx.take is not None
            assert tx.quote_sig is not None and tx.take_sig is not None
            quote, take = tx.quote, tx.take
            if quote.quote_id != derive_quote_id(quote):
                raise EvidenceInvalid("quote.quote_id is not derived from the quote's content")
            # quote_sig, take_sig and the order's signatures were verified with the tx's
            # stateless checks (_verify_evidence_signatures: at CheckTx, cached for the block)
            if sender != take.taker:
                raise NotAuthorised("only the taker itself may file its take of a quote")
            if take.taker == quote.provider:
                raise EvidenceInvalid("a provider cannot take its own quote")
            if quote.taker not in (bytes(32), take.taker):
                raise EvidenceInvalid(f"the quote was given to {quote.taker.hex()}, not the taker")
            self._node(view, take.taker, "taker")
            if take.quote_id != quote.quote_id:
                raise EvidenceInvalid("the take is for another quote")
            if take.ts > quote.valid_until:
                raise EvidenceInvalid(
                    f"take at {take.ts} came after the quote expired at {quote.valid_until}"
                )
            take_key = _take_key(quote.provider, quote.quote_id, take.taker)
            recorded = view.get_map(take_key)
            if ctx.time <= quote.valid_until:
                # The take's time is the block's, never the taker's word: recorded now, judged
                # after the honour grace (so a back-dated take of an expired quote is refused).
                # Each taker's take is its own record, numbered in arrival order: the first
                # take (a provider's own sybil, say) never shuts the others out (issue 17).
                if recorded is not None:
                    raise AlreadyExists(
                        f"quote {quote.quote_id.hex()} was already taken by this taker"
                    )
                self._check_take_order(view, ctx, quote, take, tx.order)
                # An open quote's take reserves the taker's bond for the provider's quote slash:
                # its default then costs it that much, and excuses the provider (issue 17).
                reserve = 0
                if quote.taker == bytes(NODE_ID_SIZE):
                    reserve = self._reserve_take(view, ctx, quote, take.taker, take.order_id)
                spent_by = view.get(_quote_used_key(quote.provider, quote.quote_id))
                # The take's order keeps its HTLCs: its parties (the taker and a sybil it put on
                # the route) could otherwise commit another order with one of them and make the
                # taken order uncommittable, excusing the provider. Nobody else can: a leg's
                # HTLC needs both its keys' proofs, so its payment hash alone, public since the
                # take was in the mempool, blocks nothing.
                assert tx.order is not None  # (_check_take_order)
                for key in _htlc_keys(tx.order.order):
                    view.set(key, take.order_id)
                seq = _int_get(view, _takes_key(quote.provider, quote.quote_id))
                view.set(_takes_key(quote.provider, quote.quote_id), _enc(seq + 1))
                view.set_map(
                    take_key,
                    {
                        "taker": take.taker,
                        "seq": seq,
                        # the order that had spent the quote when the take came, if any
                        "spent_by": spent_by or b"",
                        "at": ctx.time,
                        "order_id": take.order_id,
                        # bond reserved for it (an open quote's take; 0: none)
                        "reserve": reserve,
                        # the other parties' quotes it uses: spent elsewhere, they block it too
                        "quotes": [
                            [q.node, q.quote_id]
                            for q in (tx.order.order.quotes if tx.order else ())
                            if q.node != quote.provider
                        ],
                    },
                )
                ctx.events.append(
                    (
                        "take_recorded",
                        (
                            ("provider", quote.provider.hex()),
                            ("quote_id", quote.quote_id.hex()),
                            ("taker", take.taker.hex()),
                            ("seq", str(seq)),
                        ),
                    )
                )
                return
            if recorded is None:
                raise EvidenceInvalid(
                    "no take of this quote by this taker was recorded on the ledger before "
                    f"the quote expired at {quote.valid_until}"
                )
            if ctx.time <= quote.valid_until + p.honour_grace:
                raise EvidenceInvalid(
                    f"the provider has until {quote.valid_until + p.honour_grace} to honour it"
                )
            used = view.get(_quote_used_key(quote.provider, quote.quote_id))
            if used is not None:
                honoured, state = _load_order(view, used)
                if take.taker in honoured.parties():
                    raise EvidenceInvalid(
                        f"quote {quote.quote_id.hex()} was honoured by order {used.hex()}"
                    )
                # First come, first served: the quote fills one order, so an order that took
                # an EARLIER recorded take excuses the provider towards this one, but only if
                # it really filled it (see _filled_earlier_take): committing a sybil's take
                # alone costs nothing and proves no price.
                self._filled_earlier_take(view, ctx, quote, recorded, honoured, state)
            # The taker (or another party of the taken order, its sybil) could make the taken
            # order uncommittable by committing another order first with a quote of a party
            # other than the provider: then the provider failed nobody. (Its HTLCs are reserved
            # when the take is recorded; time cannot block it: its legs[0].lock_by is past the
            # window, see _check_take_order; parties are never deregistered.)
            for node, quote_id in recorded.get("quotes", []):
                if view.get(_quote_used_key(node, quote_id)) not in (None, recorded["order_id"]):
                    raise EvidenceInvalid(
                        f"quote {bytes(quote_id).hex()} of {bytes(node).hex()} in the taken order "
                        "was used by another order: the provider could not commit the taken order"
                    )
            eid = b"evidence/qnh/" + quote.provider + quote.quote_id
            offender = quote.provider
            slash_bps, points = p.slash_bps_quote, p.penalty_points_quote
        if view.get(eid) is not None:
            raise AlreadyExists("this evidence was already filed")
        rec = self._node(view, offender, "offender")
        # The bond is what validators attested locked in the vault, less slashes already
        # decided; the slash becomes a decision executed on the vault by their signatures.
        slash = _slashable_bond(rec) * slash_bps // 10_000
        forfeit: list[bytes] = []
        if tx.kind is EvidenceKind.LEG_NOT_LOCKED:
            assert tx.order_id is not None and tx.leg is not None
            # A default on a take's order costs the bond reserved for the take (the quote
            # slash of each provider whose open quote it took), a fixed amount whatever else
            # the taker owes; it is what excuses those providers towards later takers.
            held, forfeit = self._forfeit_takes(view, ctx, offender, rec, tx.order_id, unsafe_for)
            if unsafe_for is not None:
                if not forfeit:  # (the index and the taker's record agree: never)
                    raise EvidenceInvalid("the take's reservation is no longer held")
                slash = 0  # not a missed lock: only the reservation
                # (other takers' reservations for providers further on: theirs too)
                forfeit += self._forfeit_for_order(
                    view, ctx, eid, order, tx.leg, offender, 0, unsafe_for
                )
            else:
                # The taker writes the whole order: a default by another party before the
                # provider's leg (its bondless sybil paying the provider in, say) is its too,
                # for what the defaulter's own slash does not cover.
                paid = min(_slashable_bond(rec), slash)
                forfeit += self._forfeit_for_order(view, ctx, eid, order, tx.leg, offender, paid)
            slash = min(_slashable_bond(rec), max(slash, held))
        # (the slash is kept: a taker's default excuses a provider only if it cost as much, or
        # forfeited the bond the take reserved for that provider's quote)
        view.set(
            eid,
            encode(
                {
                    "height": ctx.height,
                    "reporter": sender,
                    "slash": slash,
                    "offender": offender,
                    "forfeit": forfeit,
                }
            ),
        )
        rec["slash_pending"] = rec.get("slash_pending", 0) + slash
        rec["slashed"] += slash
        if slash:
            self._decide_slash(view, ctx, eid, offender, slash)
        rec["penalty_points"] += points
        rec["points"] = max(0, rec["points"] - points)
        view.set_map(_node_key(offender), rec)
        _int_add(view, b"foundation_bond", slash)
        ctx.events.append(
            ("penalty", (("node", offender.hex()), ("kind", tx.kind.value), ("slash", str(slash))))
        )

    def _reserve_take(
        self, view: _View, ctx: _Ctx, quote: Quote, taker: bytes, order_id: bytes
    ) -> int:
        """Reserve ``taker``'s bond for its take of the open ``quote`` (order ``order_id``):
        the provider's quote slash now (``slash_bps_quote`` of its slashable bond), out of the
        taker's attested bond not yet reserved nor unbonding, until the order settles, fails
        with the provider's legs locked in time, or the take's fill window passes. Returns the
        amount (0 when the provider has no bond: nothing to cover). A bondless taker could
        otherwise take, default for free and leave the provider to be slashed by a second
        taker; and one bond could back many takes at once (a percentage slash shrinks)."""
        p = self._params
        amount = _slashable_bond(self._node(view, quote.provider, "provider")) * p.slash_bps_quote
        amount //= 10_000
        # (a zero reservation, the provider's bond not yet attested, is recorded too: its
        # default then forfeits all the quote promised when taken, and excuses the provider
        # even once its bond is attested; else a bondless griefer's default excused nothing)
        key = _reserve_key(order_id)
        raw = view.get(key)
        held = [e for e in ([] if raw is None else _dec(raw)) if ctx.time <= int(e[3])]
        if any(bytes(e[1]) == quote.provider for e in held):
            raise AlreadyExists(
                f"order {order_id.hex()} already backs a take of this quote: an order backs "
                "one take of each quote"
            )
        rec = self._node(view, taker, "taker")
        live = _live_reserved(rec, ctx.time)  # (expired entries are dropped here)
        if len(live) >= p.max_open_takes:
            raise EvidenceInvalid(
                f"the taker holds bond reserved for {len(live)} takes of open quotes already "
                f"(max_open_takes {p.max_open_takes})"
            )
        free = _effective_bond(rec) - sum(int(e[2]) for e in live)
        if max(0, free) < amount:
            raise EvidenceInvalid(
                f"taking an open quote reserves the provider's quote slash, {amount}, of the "
                f"taker's attested bond until the take resolves; its unreserved bond is "
                f"{max(0, free)}"
            )
        until = quote.valid_until + p.honour_grace + p.take_fill_window
        until += p.attest_grace + p.honour_grace  # (when a later taker's evidence is judged)
        rec["reserved"] = [*live, [order_id, quote.provider, amount, until]]
        view.set_map(_node_key(taker), rec)
        view.set(key, _enc([*held, [taker, quote.provider, amount, until]]))
        ctx.events.append(
            (
                "take_bond_reserved",
                (
                    ("taker", taker.hex()),
                    ("order_id", order_id.hex()),
                    ("amount", str(amount)),
                    ("until", str(until)),
                ),
            )
        )
        return amount

    def _forfeit_for_order(
        self,
        view: _View,
        ctx: _Ctx,
        eid: bytes,
        order: SettlementOrder,
        leg: int,
        offender: bytes,
        paid: int,
        providers: set[bytes] | None = None,
    ) -> list[bytes]:
        """``leg_not_locked`` on ``order.legs[leg]`` (sender ``offender``, slashed ``paid``
        for it) is a default before the leg of each provider sending a later leg: a taker (not
        the offender) holding bond reserved for its take of such a provider's open quote with
        this order forfeits it (it wrote the order and chose its parties; its own bondless
        sybil paying the provider in would otherwise default for free), less what ``paid``
        already covers (a well-bonded defaulter, another provider say, costs the honest taker
        nothing). Each forfeit is slashed (decision id from ``eid`` and the taker) and goes to
        the foundation; the pair paid at least the reservation. Only ``providers``' quotes if
        given. Returns those providers."""
        key = _reserve_key(order.order_id)
        raw = view.get(key)
        if raw is None:
            return []
        later = {lg.sender for lg in order.legs[leg + 1 :]} if providers is None else providers
        keep, gone = [], []
        for e in _dec(raw):
            taker, provider = bytes(e[0]), bytes(e[1])
            if taker == offender or provider not in later or ctx.time > int(e[3]):
                keep.append(e)
                continue
            rec = self._node(view, taker, "taker")
            live = _live_reserved(rec, ctx.time)
            took = [r for r in live if bytes(r[0]) == order.order_id and bytes(r[1]) == provider]
            if not took:  # (the index and the taker's record agree: never)
                keep.append(e)
                continue
            rec["reserved"] = [r for r in live if r not in took]
            slash = min(_slashable_bond(rec), max(0, sum(int(r[2]) for r in took) - paid))
            rec["slash_pending"] = rec.get("slash_pending", 0) + slash
            rec["slashed"] += slash
            view.set_map(_node_key(taker), rec)
            if slash:
                self._decide_slash(view, ctx, eid + taker, taker, slash)
            _int_add(view, b"foundation_bond", slash)
            gone.append(provider)
            ctx.events.append(
                (
                    "penalty",
                    (("node", taker.hex()), ("kind", "take_forfeit"), ("slash", str(slash))),
                )
            )
        if keep:
            view.set(key, _enc(keep))
        else:
            view.delete(key)
        return gone

    def _reserving_taker(
        self, view: _View, ctx: _Ctx, order_id: bytes, provider: bytes, wanted: set[bytes]
    ) -> bytes | None:
        """The taker holding bond reserved for its take of ``provider``'s open quote with
        order ``order_id`` (still held), else of the quote of another provider in ``wanted``
        (the senders of the legs after), if any (only providers in ``wanted``)."""
        raw = view.get(_reserve_key(order_id))
        held = [e for e in ([] if raw is None else _dec(raw)) if ctx.time <= int(e[3])]
        for only in ({provider} & wanted, wanted):
            for e in held:
                if bytes(e[1]) in only:
                    return bytes(e[0])
        return None

    def _forfeit_takes(
        self,
        view: _View,
        ctx: _Ctx,
        node: bytes,
        rec: dict[str, Any],
        order_id: bytes,
        providers: set[bytes] | None,
    ) -> tuple[int, list[bytes]]:
        """Take out of ``rec`` (``node``'s record, saved by the caller) the bond it
        holds reserved for takes with order ``order_id`` (only those of ``providers``' quotes
        if given): returns the amount and the providers whose quotes those takes were of."""
        key = _reserve_key(order_id)
        raw = view.get(key)
        if raw is None:
            return 0, []
        live = _live_reserved(rec, ctx.time)
        took = [
            e
            for e in live
            if bytes(e[0]) == order_id and (providers is None or bytes(e[1]) in providers)
        ]
        if not took:
            return 0, []
        gone = [bytes(e[1]) for e in took]
        rec["reserved"] = [e for e in live if e not in took]
        rest = [e for e in _dec(raw) if not (bytes(e[1]) in gone and bytes(e[0]) == node)]
        if rest:
            view.set(key, _enc(rest))
        else:
            view.delete(key)
        return sum(int(e[2]) for e in took), gone

    def _release_takes(
        self, view: _View, ctx: _Ctx, order: SettlementOrder, state: dict[str, Any]
    ) -> None:
        """Release the bond reserved for takes with ``order`` once it resolved: settled, or
        failed with the provider's legs and every leg before them attested locked in time (it
        filled the take; the taker can no longer default on it). A failed order where the
        provider did not lock (or was paid in late) keeps the reservation until the fill window
        passes: the taker may have paid it in too near an expiry height, or late, and refunded
        at once, and that evidence is still to come."""
        key = _reserve_key(order.order_id)
        raw = view.get(key)
        if raw is None:
            return
        keep = []
        for e in _dec(raw):
            taker, provider = bytes(e[0]), bytes(e[1])
            if state["status"] != "settled":
                # Filled as _filled_earlier_take judges it: every leg up to each of the
                # provider's own was attested locked in time (a late pay-in is a default, and
                # the provider's lock after it fills nothing: its evidence may still come).
                mine = [i for i, leg in enumerate(order.legs) if leg.sender == provider]
                if not mine or any(
                    _lock_seen(state["legs"][j], state["status"]) != "in_time"
                    for j in range(max(mine) + 1)
                ):
                    keep.append(e)
                    continue
            rec = self._node(view, taker, "taker")
            rec["reserved"] = [
                r
                for r in rec.get("reserved", [])
                if not (bytes(r[0]) == order.order_id and bytes(r[1]) == provider)
            ]
            view.set_map(_node_key(taker), rec)
            ctx.events.append(
                (
                    "take_bond_released",
                    (("taker", taker.hex()), ("order_id", order.order_id.hex())),
                )
            )
        if keep:
            view.set(key, _enc(keep))
        else:
            view.delete(key)

    def _check_take_order(
        self, view: _View, ctx: _Ctx, quote: Quote, take: Take, commit: CommitOrder | None
    ) -> None:
        """A take counts only with the order the taker committed to for the quote, signed by
        every party but the provider and committable now: then the provider can always commit
        it alone, and a taker that never co-signs cannot cause a slash."""
        if commit is None:
            raise EvidenceInvalid("a take must carry the order the taker signed")
        order = commit.order
        if order.order_id != take.order_id:
            raise EvidenceInvalid("the take names another order than the one it carries")
        parties = order.parties()
        if take.taker not in parties or quote.provider not in parties:
            raise EvidenceInvalid("the taker and the provider must both be parties of the order")
        if not any(q.node == quote.provider and q.quote_id == quote.quote_id for q in order.quotes):
            raise EvidenceInvalid("the order does not use the provider's quote")
        # The taker writes the whole order, the provider's side included: it must be one an
        # honest provider can commit and fill, or refusing it would be "not honouring" it.
        mismatch = _quote_terms_mismatch(quote, order)
        if mismatch is not None:
            raise EvidenceInvalid(f"the taken order does not trade the quote's terms: {mismatch}")
        # The provider may lock only once paid in, and the leg paying it in counts as in time if
        # attested by its lock_by + attest_grace: its own leg must then leave it as long again,
        # or a taker locking at the last in-time moment had an honest provider slashed
        # (leg_not_locked if it honoured the take, quote_not_honoured if not).
        paid_in = next(i for i, leg in enumerate(order.legs) if leg.recipient == quote.provider)
        pays = next(i for i, leg in enumerate(order.legs) if leg.sender == quote.provider)
        gap = order.legs[pays].lock_by - order.legs[paid_in].lock_by
        if gap < self._params.attest_grace:
            raise EvidenceInvalid(
                f"the taken order's legs[{pays}].lock_by (the provider's) is {gap}s after "
                f"legs[{paid_in}].lock_by (paying it in), less than attest_grace "
                f"{self._params.attest_grace}: the provider could not lock in time after it"
            )
        # The provider must be able to fill the order safely now: its own leg expiring enough
        # before the leg paying it on the chain clocks in the strict reading (the one its
        # engine applies), not only in the lenient one commit_order refuses by. A take of an
        # order an honest provider's engine refuses (terms_margin_too_small) had it slashed 2 %.
        self._check_take_clocks(view, ctx, order, paid_in, pays)
        self._check_take_lock_time(view, ctx, order, pays)
        # The provider's leg keys are the only ones the taken order carries no proof for: they
        # must be the chain addresses it registered, or a taker could name an address the
        # provider does not hold and have it slashed for an order it could never commit.
        registered = self._node(view, quote.provider, "provider").get("addresses", {})
        for i, leg in enumerate(order.legs):
            for role, node, address in (
                ("sender", leg.sender, leg.sender_address),
                ("recipient", leg.recipient, leg.recipient_address),
            ):
                # (none registered for the chain: the taker's order names it; otherwise a
                # provider registering no address would make every take of its quotes
                # unrecordable, and its false prices unpunishable)
                known = registered.get(leg.chain)
                if (
                    node == quote.provider
                    and isinstance(known, str)
                    and known.lower() != address.lower()
                ):
                    raise EvidenceInvalid(
                        f"the taken order's legs[{i}].{role}_address is not the provider's "
                        f"registered {leg.chain} address"
                    )
        signers = [sig.signer for sig in commit.signatures]
        wanted = [p for p in parties if p != quote.provider]
        if sorted(signers) != sorted(wanted) or len(set(signers)) != len(signers):
            raise EvidenceInvalid(
                "the order must be signed by every party but the provider, the taker included"
            )
        # (each signature was verified with the tx's stateless checks)
        # The provider's own quote may be spent already: by an order of an earlier take, or by
        # an order the provider committed as the take came (a sham fill with its sybil, sent
        # ahead of the take it saw in the mempool, squatted the quote as a first take did).
        # The take is then recorded anyway, and judged on whether that order was filled.
        self._check_committable(view, ctx, order, spent_ok=(quote.provider, quote.quote_id))
        # Committable now is not enough: an order is refused once block time passes its first
        # leg's lock_by, so a taker could sign one due in the take's own block and have the
        # provider slashed for an order nobody could commit after it. The taken order must
        # stay committable (as far as time goes) through the whole window the provider is
        # judged on.
        honour_end = quote.valid_until + self._params.honour_grace
        if order.legs[0].lock_by < honour_end:
            raise EvidenceInvalid(
                f"the taken order's legs[0].lock_by {order.legs[0].lock_by} is before the end "
                f"of the provider's honour window {honour_end} (quote valid_until + "
                "honour_grace): the provider could not commit it in time"
            )
        if quote.taker == bytes(NODE_ID_SIZE):
            # An open quote serves its takes first come, first served: a later taker waits to
            # learn whether the provider filled an earlier take (locked its legs in time), so
            # that wait is bounded by the take's own order.
            last = honour_end + self._params.take_fill_window
            late = [i for i, leg in enumerate(order.legs) if leg.lock_by > last]
            if late:
                raise EvidenceInvalid(
                    f"the taken order's legs[{late[0]}].lock_by {order.legs[late[0]].lock_by} is "
                    f"after {last} (the open quote's honour window + take_fill_window): a "
                    "later taker could not learn in time whether the provider filled it"
                )

    def _check_take_lock_time(
        self, view: _View, ctx: _Ctx, order: SettlementOrder, pays: int
    ) -> None:
        """Raise ``EvidenceInvalid`` if the provider's own leg ``legs[pays]`` may hold its funds
        longer than ``max_lock_seconds`` (read late on the clocks attested now)."""
        own = order.legs[pays]
        tips = self._fresh_tips(view, ctx.time)
        # No engine locks funds for longer than its max_lock_seconds: a take of a leg that may
        # last longer is one the honest provider refuses (or pins its funds for weeks).
        held = clocks.seconds_left(own, ctx.time, tips, self._params, late=True)
        if held is not None and held > self._params.max_lock_seconds:
            raise EvidenceInvalid(
                f"the taken order's legs[{pays}] (the provider's, {own.chain} {own.expiry}) may "
                f"hold its funds {held}s, more than max_lock_seconds "
                f"{self._params.max_lock_seconds}: the provider could not fill it"
            )

    def _check_take_clocks(
        self, view: _View, ctx: _Ctx, order: SettlementOrder, paid_in: int, pays: int
    ) -> None:
        """Raise ``EvidenceInvalid`` unless the provider's own leg ``legs[pays]`` expires at
        least ``notice + settle`` before ``legs[paid_in]`` paying it, in the strict reading of
        the chain clocks attested now; a clock it needs that is not attested refuses the take
        too (the ledger cannot tell that an honest provider could fill it)."""
        pay, own = order.legs[paid_in], order.legs[pays]
        kept = self._clocks(view)
        tips = clocks.fresh_tips(kept, ctx.time, self._params)
        since = clocks.fresh_since(kept, ctx.time, self._params)
        if pays != paid_in + 1 or not clocks.crosses_clocks(pay, own):
            return  # (pays == paid_in + 1 in every route: the provider sends the next leg)
        gap = clocks.expiry_gap(pay, own, ctx.time, tips, self._params, strict=True, since=since)
        need = clocks.margin(pay, own, self._params)
        if gap is None:
            raise EvidenceInvalid(
                f"the taken order's legs[{pays}] ({own.chain} {own.expiry}) and legs[{paid_in}] "
                f"({pay.chain} {pay.expiry}) cannot be compared: no clock of a chain they need "
                f"is attested (attested: {tips}); the provider could not judge it safe"
            )
        if gap < need:
            raise EvidenceInvalid(
                f"the taken order's legs[{pays}] (the provider's, {own.chain} {own.expiry}) may "
                f"expire as little as {gap}s before legs[{paid_in}] ({pay.chain} {pay.expiry}) "
                f"paying it, on the attested chain clocks {tips}; it needs {need}s (notice + "
                "settle): the provider could not fill it safely"
            )

    def _check_paid_in_safely(
        self, order: SettlementOrder, rec: dict[str, Any], index: int
    ) -> None:
        """Raise ``EvidenceInvalid`` if the leg paying ``legs[index]``'s sender has a block-height
        expiry and was attested locked at a height leaving fewer than ``height_expiry_margin``
        blocks of its chain before that expiry: the sender could not lock its own leg and still
        be sure to redeem the leg paying it (a taker writes both legs of a take's order, and the
        ledger cannot relate a height to time), so it was right not to lock."""
        if index == 0:
            return  # the initiator locks first: nothing pays it in before
        paid_in = order.legs[index - 1]
        if not isinstance(paid_in.expiry, BlockHeight):
            return  # a unix expiry is ordered by expiry_time (min_expiry_gap)
        margin = self._params.height_expiry_margin.get(paid_in.chain)
        height = rec["legs"][index - 1].get("locked_height")
        if margin is None or height is None:
            return
        left = paid_in.expiry.value - height
        if left < margin:
            raise EvidenceInvalid(
                f"legs[{index - 1}] (paying legs[{index}]'s sender) was attested locked at "
                f"{paid_in.chain} height {height}, {left} blocks before its expiry height "
                f"{paid_in.expiry.value}, less than height_expiry_margin {margin}: "
                f"legs[{index}]'s sender was right not to lock"
            )

    def _check_paid_in_clock(self, order: SettlementOrder, rec: dict[str, Any], index: int) -> None:
        """Raise ``EvidenceInvalid`` if ``legs[index]`` (the sender's own) would expire later
        than, or too close to, the leg paying its sender, in the strict reading of the chain
        clocks attested when that leg was locked (``kofo.clearance.clocks``): the paying party
        could refund its leg and then redeem the sender's, so the sender was right not to lock.
        A clock the judgement needs that was not attested then also excuses it."""
        if index == 0:
            return
        pay, own = order.legs[index - 1], order.legs[index]
        if not clocks.crosses_clocks(pay, own):
            return
        paid = rec["legs"][index - 1]
        at = paid.get("locked_at")
        if at is None:
            return  # not locked: judged above
        tips = {str(c): int(h) for c, h in (paid.get("clocks") or {}).items()}
        since = {str(c): int(t) for c, t in (paid.get("clock_since") or {}).items()}
        if isinstance(pay.expiry, BlockHeight) and paid.get("locked_height") is not None:
            # its lock was seen at the confirmation depth: the attested tip is at least there
            if int(paid["locked_height"]) > tips.get(pay.chain, 0):
                tips[pay.chain] = int(paid["locked_height"])
                since.pop(pay.chain, None)  # seen at the lock's attestation
        gap = clocks.expiry_gap(pay, own, int(at), tips, self._params, strict=True, since=since)
        need = clocks.margin(pay, own, self._params)
        if gap is None:
            raise EvidenceInvalid(
                f"no clock of {own.chain if isinstance(own.expiry, BlockHeight) else pay.chain} "
                f"was attested when legs[{index - 1}] was locked: legs[{index}]'s sender could "
                "not know its leg expires before the leg paying it, and was right not to lock"
            )
        if gap < need:
            raise EvidenceInvalid(
                f"on the chain clocks attested when legs[{index - 1}] was locked, legs[{index}] "
                f"({own.chain} {own.expiry}) could expire as little as {gap}s before "
                f"legs[{index - 1}] ({pay.chain} {pay.expiry}) paying its sender, less than "
                f"notice + settle {need}s: legs[{index}]'s sender was right not to lock"
            )

    def _filled_earlier_take(
        self,
        view: _View,
        ctx: _Ctx,
        quote: Quote,
        recorded: dict[str, Any],
        used: SettlementOrder,
        state: dict[str, Any],
    ) -> None:
        """Judge a take against the order ``used`` that spent the quote without its taker.

        Returns (the provider is not excused) unless ``used`` is the order of a take recorded
        before this one, or had spent the quote when this take was recorded. Then it raises
        ``EvidenceInvalid`` (excused) if the provider really filled that order: it settled, or
        each leg the provider sends in it was attested locked in time after every leg before
        it (the taker paid in, the provider paid out), or a leg before it was not locked in
        time (a default) and the default cost its sender a ``leg_not_locked`` slash at least
        as large as this one would be. An order committed with the provider's own sybil, which
        nobody then locks, proves nothing and excuses nothing. Before the provider's last
        deadline in that order plus the graces (at most the fill window's), the evidence is
        refused as early."""
        p = self._params
        provider = quote.provider
        if quote.taker != bytes(NODE_ID_SIZE):
            # A named quote is its taker's alone (no first come, first served): an order that
            # spent it without the taker (the provider's own sybil, filled with its own money
            # both ways) honoured nobody.
            return
        earlier = bytes(recorded.get("spent_by", b"")) == used.order_id
        for node in used.parties():
            if earlier:
                break
            if node == provider or node == recorded["taker"]:
                continue
            other = view.get_map(_take_key(provider, quote.quote_id, node))
            if (
                other is not None
                and other["seq"] < recorded["seq"]
                and bytes(other["order_id"]) == used.order_id
            ):
                earlier = True
                break
        if not earlier:
            return  # the quote went to a sybil, or to a later taker: not honoured
        if _quote_terms_mismatch(quote, used) is not None:
            return  # an order at another price or size (dust legs, say) fills nothing
        oid = used.order_id.hex()
        if state["status"] == "settled":
            raise EvidenceInvalid(
                f"quote {quote.quote_id.hex()} filled an earlier take (order {oid}, settled)"
            )
        grace = p.attest_grace
        legs = state["legs"]

        def in_time(j: int) -> bool:
            seen = _lock_seen(legs[j], state["status"])
            if seen == "unseen" and used.legs[j].lock_by + grace < ctx.time:
                # due, but not yet observed since (a flood slowing the window): not a default
                raise EvidenceInvalid(
                    f"order {oid}'s legs[{j}] was not yet observed after its lock_by "
                    f"{used.legs[j].lock_by} + attest_grace {grace}: file again later"
                )
            return seen == "in_time"

        # (a provider that sends no leg, a relay quoting, is judged on the whole route)
        mine = [i for i, leg in enumerate(used.legs) if leg.sender == provider] or list(
            range(len(used.legs))
        )
        due = _slashable_bond(self._node(view, provider, "provider")) * p.slash_bps_quote // 10_000
        # (capped as an open quote's take orders are: an order that spent the quote without a
        # take may be due years later, and would put the evidence off for good)
        cap = quote.valid_until + p.honour_grace + p.take_fill_window + grace + p.honour_grace
        deadline = min(cap, max(used.legs[i].lock_by for i in mine) + grace + p.honour_grace)
        for i in mine:
            # Filled: the legs paying the provider were locked, and then its own, in time (a
            # provider locking to its sybil alone, the sybil never paying in, fills nothing).
            default = next((j for j in range(i) if not in_time(j)), None)
            if default is None and in_time(i):
                continue
            # A default (a leg before the provider's not locked in time), or the provider's
            # own leg not locked because the taker paid it in too near an expiry height: the
            # evidence of it excuses the provider if it forfeited the bond the earlier take
            # reserved for this quote, or (no reservation: an order without a take) cost its
            # sender at least this slash.
            blamed = i if default is None else default
            raw = view.get(b"evidence/lnl/" + used.order_id + blamed.to_bytes(1, "big"))
            if raw is not None:
                ev = _dec(raw)
                if provider in [bytes(f) for f in ev.get("forfeit", [])]:
                    continue
                if default is not None and int(ev.get("slash", 0)) >= due:
                    continue
            if ctx.time <= deadline:
                raise EvidenceInvalid(
                    f"the quote went to an earlier take (order {oid}); whether the provider "
                    f"filled it is judged after {deadline}"
                )
            return  # the provider never filled the earlier take: this one was wronged
        raise EvidenceInvalid(
            f"quote {quote.quote_id.hex()} filled an earlier take (order {oid}: the provider "
            "locked its legs in time)"
        )

    # -- WithdrawFees --------------------------------------------------------------------------

    def _withdraw(self, view: _View, ctx: _Ctx, sender: bytes, tx: WithdrawFees) -> None:
        """Pay out the node's whole fee balance in ``tx.asset``.

        Money can come only from what the ledger itself credited: the reveal must re-encrypt the
        recorded balance, the amount is below ``n`` (so ``m + k*n`` cannot pass for ``m``) and at
        most the public credited total minus what was already paid, ``seq`` is the next
        withdrawal number (no replay), and the new seed is proven to encrypt 0."""
        rec = self._node(view, sender, "withdrawing node")
        key = _bal_key(sender, tx.asset)
        ct = view.get(key)
        if ct is None:
            raise WithdrawalInvalid(f"no fee balance in {tx.asset!r} for {sender.hex()}")
        seq_key = _withdrawals_key(sender, tx.asset)
        done = _int_get(view, seq_key)
        if tx.seq != done:
            raise WithdrawalInvalid(
                f"withdraw_fees.seq must be {done} (the withdrawals made in {tx.asset!r}), "
                f"got {tx.seq}: a withdrawal is applied once"
            )
        n = privacy.from_bytes(rec["paillier_n"])
        available = _int_get(view, _credited_key(sender, tx.asset)) - _int_get(
            view, _withdrawn_key(sender, tx.asset)
        )
        if tx.amount >= n or tx.amount > available:
            raise WithdrawalInvalid(
                f"withdraw_fees.amount {show_int(tx.amount)} exceeds the {available} the ledger "
                f"credited to {sender.hex()} in {tx.asset!r} and has not paid out"
            )
        if tx.new_seed == ct:
            raise WithdrawalInvalid("withdraw_fees.new_seed must be a fresh encryption of 0")
        if not privacy.verify_reveal(n, ct, tx.amount, tx.randomness):
            raise WithdrawalInvalid(
                f"withdraw_fees.amount {tx.amount} with the given randomness does not "
                "re-encrypt to the recorded balance"
            )
        privacy.verify_zero(
            n,
            tx.new_seed,
            tx.new_seed_proof,
            privacy.withdraw_context(sender, tx.asset, tx.seq),
            "withdraw_fees.new_seed",
        )
        view.set(key, tx.new_seed)
        rec["seed"] = tx.new_seed
        view.set_map(_node_key(sender), rec)
        view.set(seq_key, _enc(done + 1))
        _int_add(view, _withdrawn_key(sender, tx.asset), tx.amount)
        ctx.events.append(
            (
                "payout",
                (
                    ("node", sender.hex()),
                    ("asset", tx.asset),
                    ("amount", str(tx.amount)),
                    ("address", tx.payout_address),
                ),
            )
        )

    # -- queries (read the committed state only; never change it) -----------------------------

    def node(self, node: bytes) -> dict[str, Any] | None:
        raw = self.store.get_committed(_node_key(node))
        return None if raw is None else dict(decode(raw))

    def order(self, order_id: bytes) -> dict[str, Any] | None:
        """``{"order": <the order's map>, "status", "height", "legs"}``, or None."""
        raw = self.store.get_committed(_order_key(order_id))
        state = self.store.get_committed(_order_state_key(order_id))
        if raw is None or state is None:
            return None
        return {"order": decode(raw), **decode(state)}

    def balance_ciphertext(self, node: bytes, asset: str) -> bytes | None:
        """The node's withdrawable fee balance in ``asset`` (Paillier, under its key)."""
        return self.store.get_committed(_bal_key(node, asset))

    def earned_ciphertext(self, node: bytes, asset: str) -> bytes | None:
        """The node's own (private) quote fees in ``asset``, summed."""
        return self.store.get_committed(_earned_key(node, asset))

    def decision(self, decision_id: bytes) -> dict[str, Any]:
        """A bond decision and, when the vault is configured, the digest validators sign."""
        raw = self.store.get_committed(b"decision/" + decision_id)
        if raw is None:
            raise NotFound(f"decision {decision_id.hex()} does not exist")
        rec = dict(decode(raw))
        vault = bonds.Vault.parse(self._params.bond_vault_chain_id, self._params.bond_vault_address)
        if vault is not None and rec["recipient"]:
            recipient = bytes.fromhex(rec["recipient"].removeprefix("0x"))
            digest = bonds.release_digest if rec["kind"] == "release" else bonds.slash_digest
            rec["digest"] = digest(vault, rec["node"], rec["amount"], recipient, decision_id)
            self._sign(rec)
        return rec

    def _sign(self, rec: dict[str, Any]) -> None:
        """This validator's signature of ``rec["digest"]``, when it holds a vault key."""
        if self.vault_signer is not None:
            rec["signer"] = bonds.eth_address(coincurve.PrivateKey(self.vault_signer).public_key)
            rec["signature"] = bonds.sign_digest(self.vault_signer, rec["digest"])

    def decisions(self, start: int, limit: int = MAX_DECISIONS_PAGE) -> list[tuple[int, bytes]]:
        """Bond decision ids in the order they were decided, from number ``start``: at most
        ``limit`` point reads (no scan)."""
        raw = self.store.get_committed(_K_DECISIONS)
        count = 0 if raw is None else int(_dec(raw))
        out = []
        for seq in range(start, min(count, start + min(limit, MAX_DECISIONS_PAGE))):
            did = self.store.get_committed(b"decision_seq/" + seq.to_bytes(8, "big"))
            if did is not None:
                out.append((seq, did))
        return out

    def validators_at(self, height: int) -> dict[bytes, Validator]:
        """The validator set (by address) whose votes at ``height`` this ledger counts."""
        return _validators_at(self.store.get_committed(_K_VALIDATORS), height) or {}

    def valset_decision(self, nonce: int) -> dict[str, Any]:
        """The validator set the vault should move to (``update_valset``), by nonce."""
        raw = self.store.get_committed(b"valset_decision/" + nonce.to_bytes(8, "big"))
        if raw is None:
            raise NotFound(f"valset decision {nonce} does not exist")
        rec = dict(decode(raw))
        vault = bonds.Vault.parse(self._params.bond_vault_chain_id, self._params.bond_vault_address)
        if vault is not None:
            rec["digest"] = bonds.valset_digest(
                vault, nonce, rec["validators"], rec["powers"], rec["unkeyed_power"]
            )
            self._sign(rec)
        return rec

    def validator_keys(self) -> dict[bytes, bytes]:
        """Registered secp256k1 keys: validator address -> Ethereum address, by address.

        One read per genesis or joined validator (only they can register a key; 128 at most),
        never a scan of the state: this answers a public query on the loop that also runs
        consensus."""
        raw = self.store.get_committed(_K_GENESIS_VALIDATORS)
        addrs = set(attest.validators_from_state(_dec(raw)) if raw is not None else ())
        joined = self.store.get_committed(_K_JOINED_VALIDATORS)
        addrs |= {attest.validator_address(bytes(k)) for k in _dec(joined or _enc([]))}
        out = {}
        for addr in sorted(addrs):
            eth = self.store.get_committed(b"valkey/" + addr)
            if eth is not None:
                out[addr] = eth
        return out

    def foundation_balance(self, asset: str) -> int:
        raw = self.store.get_committed(b"foundation/" + asset.encode())
        return 0 if raw is None else int(decode(raw))

    def fees_collected(self, asset: str) -> int:
        raw = self.store.get_committed(b"fees_collected/" + asset.encode())
        return 0 if raw is None else int(decode(raw))

    def tx_count(self) -> int:
        raw = self.store.get_committed(_K_TXCOUNT)
        return 0 if raw is None else int(decode(raw))

    def bond(self, node: bytes) -> int:
        """The node's bond as the ledger counts it: attested locked in the vault, less
        slashes decided and not yet executed there (0 for an unknown node)."""
        rec = self.node(node)
        return 0 if rec is None else _effective_bond(rec)

    def importance(self, node: bytes) -> int:
        return self._ranking().importance(node, self.store.height)

    def _stats_score(self, stats: NodeStats, height: int) -> int:
        return score(
            stats,
            height,
            half_life=self._params.importance_half_life,
            penalty_weight=self._params.penalty_weight,
        )

    def _score(self, rec: dict[str, Any]) -> int:
        return self._stats_score(_stats(rec), self.store.height)

    def _ranking(self) -> Ranking:
        if self._rank is None:
            self._rank = Ranking(self._stats_score)
            self._rank.load(
                (k[len(_NODE_PREFIX) :], _stats(_dec(v)))
                for k, v in self.store.scan_committed(_NODE_PREFIX)
            )
        return self._rank

    def ranked_nodes(self, limit: int = 100) -> list[tuple[bytes, int]]:
        """Nodes by importance, best first (ties by node id), at the committed height; at
        most :data:`MAX_RANKED` (see :mod:`kofo.clearance.ranking`)."""
        return self._ranking().top(limit, self.store.height)

    def rank_routes(self, routes: Sequence[Sequence[bytes]]) -> list[tuple[int, int]]:
        """(route index, score) best first; a route scores as its weakest node."""
        nodes = {n for route in routes for n in route}
        return rank_routes(routes, {n: self.importance(n) for n in nodes})

    def chain_clock(self, chain: str) -> dict[str, Any] | None:
        """``chain``'s attested clock: ``{"height", "time"}`` (the highest height validators
        with > 2/3 of the power report at least, and the block time it was last attested at),
        or None if none was."""
        raw = self.store.get_committed(clocks.clock_key(chain))
        return None if raw is None else dict(_dec(raw))

    def query(self, path: str, data: bytes) -> bytes:
        """The ABCI query face: ``path`` names the query, ``data`` is its canonical-CBOR
        argument; the answer is canonical CBOR. Raises :class:`NotFound` (unknown path or
        nothing there) or :class:`InvalidInput` (an argument of the wrong shape, named)."""
        if len(data) > MAX_QUERY_BYTES or count_items(data, MAX_QUERY_ITEMS) > MAX_QUERY_ITEMS:
            # before decoding: 500 KB of one-byte items cost ~1 s of the loop that runs consensus
            raise InvalidInput(
                f"a query argument is at most {MAX_QUERY_BYTES} bytes and {MAX_QUERY_ITEMS} "
                "CBOR items"
            )
        arg = decode(data) if data else None
        if path == "/node":
            node = _arg_bytes(arg, NODE_ID_SIZE, "/node: the node id")
            rec = self.node(node)
            if rec is None:
                raise NotFound(f"node {node.hex()} is not registered")
            rec["importance"] = self._score(rec)
            return encode(rec)
        if path == "/order":
            order_id = _arg_bytes(arg, ORDER_ID_SIZE, "/order: the order id")
            order = self.order(order_id)
            if order is None:
                raise NotFound(f"order {order_id.hex()} is not committed")
            return encode(order)
        if path == "/importance":
            limit = 100 if arg is None else arg
            if type(limit) is not int or not 1 <= limit <= MAX_RANKED:
                raise InvalidInput(f"/importance: the limit must be an integer 1..{MAX_RANKED}")
            return encode([[n, s] for n, s in self.ranked_nodes(limit)])
        if path == "/rank_routes":
            return encode([[i, s] for i, s in self.rank_routes(_arg_routes(arg))])
        if path == "/balance":
            if type(arg) is not dict or arg.keys() != {"node", "asset"}:
                raise InvalidInput("/balance: the argument is a map {node, asset}")
            node = _arg_bytes(arg["node"], NODE_ID_SIZE, "/balance: node")
            asset = _arg_str(arg["asset"], "/balance: asset")
            return encode(
                {
                    "balance": self.balance_ciphertext(node, asset),
                    "earned": self.earned_ciphertext(node, asset),
                }
            )
        if path == "/foundation":
            return encode(self.foundation_balance(_arg_str(arg, "/foundation: the asset")))
        if path == "/params":
            return encode(self._params.as_map())
        if path == "/decision":
            return encode(self.decision(_arg_bytes(arg, 32, "/decision: the decision id")))
        if path == "/valset_decision":
            if type(arg) is not int or not 1 <= arg < 2**63:
                raise InvalidInput("/valset_decision: the argument is the nonce, >= 1")
            return encode(self.valset_decision(arg))
        if path == "/decisions":
            start = 0 if arg is None else arg
            if type(start) is not int or not 0 <= start < 2**63:
                raise InvalidInput("/decisions: the argument is the first decision number, >= 0")
            return encode([[seq, did] for seq, did in self.decisions(start)])
        if path == "/clock":
            chain = _arg_str(arg, "/clock: the chain")
            clock = self.chain_clock(chain)
            if clock is None:
                raise NotFound(f"no clock of {chain[:16]!r} was attested")
            return encode(clock)
        if path == "/validator_keys":
            if arg is not None:
                raise InvalidInput("/validator_keys takes no argument")
            return encode([[a, e] for a, e in self.validator_keys().items()])
        raise NotFound(f"unknown query path {path[:64]!r}")


MAX_QUERY_ROUTES = 64
"""Most routes one /rank_routes query ranks (each of at most ``MAX_LEGS`` nodes)."""


def _arg_bytes(arg: object, size: int, what: str) -> bytes:
    if type(arg) is not bytes or len(arg) != size:
        raise InvalidInput(f"{what} must be {size} bytes")
    return arg


def _arg_str(arg: object, what: str) -> str:
    if type(arg) is not str or not 0 < len(arg) <= 256:
        raise InvalidInput(f"{what} must be a string of 1..256 characters")
    return arg


def _arg_routes(arg: object) -> list[list[bytes]]:
    if type(arg) is not list or not 0 < len(arg) <= MAX_QUERY_ROUTES:
        raise InvalidInput(f"/rank_routes: the argument is a list of 1..{MAX_QUERY_ROUTES} routes")
    for i, route in enumerate(arg):
        if type(route) is not list or not 0 < len(route) <= MAX_LEGS:
            raise InvalidInput(f"/rank_routes: route {i} must be a list of 1..{MAX_LEGS} node ids")
        for node in route:
            _arg_bytes(node, NODE_ID_SIZE, f"/rank_routes: route {i}'s node ids")
    return arg
