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

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2

from kofo.clearance import privacy
from kofo.clearance.admission import BlockBudget, SenderRateLimit
from kofo.clearance.errors import (
    AlreadyExists,
    EvidenceInvalid,
    FeeRuleViolated,
    InternalError,
    NotAuthorised,
    NotFound,
    OrderInvalid,
    OutcomeInvalid,
    UnknownNode,
    WithdrawalInvalid,
    abci_code,
)
from kofo.clearance.fees import protocol_fee, split_fee
from kofo.clearance.importance import NodeStats, decay, rank_routes, score
from kofo.clearance.params import FOUNDATION, LedgerParams
from kofo.clearance.ranking import MAX_RANKED, Ranking
from kofo.clearance.store import MerkleStore
from kofo.errors import InvalidInput, KofoError
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import BadMessage, Envelope, open_message
from kofo.wire.expiry import UnixTime
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
    QuoteRole,
    RegisterNode,
    ReportOutcome,
    SettlementOrder,
    TxBody,
    WithdrawFees,
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
_K_TXCOUNT = b"meta/txcount"


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


@dataclass(slots=True)
class _Ctx:
    height: int
    time: int
    events: list[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=list)


class _View:
    """A transaction's writes, buffered until the transaction has passed every rule."""

    __slots__ = ("_store", "_writes")

    def __init__(self, store: MerkleStore) -> None:
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
        rec["bond"],
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
    ) -> None:
        self.store = store
        self._verified: OrderedDict[bytes, tuple[Envelope, TxBody, int]] = OrderedDict()
        # check_tx may run on several threads at once (the solo node's API, a pool verifying
        # signatures while the GIL is released); only the cache is shared between them.
        self._verified_lock = threading.Lock()
        self._verified_bytes = 0
        self.rate_limit = rate_limit
        """This node's per-sender CheckTx limit (None: none, e.g. the embedded solo ledger)."""
        self.require_registered = require_registered
        self.registration_limit = registration_limit
        """This node's CheckTx limit on registrations from all senders together."""
        """CheckTx admits only registrations and txs from registered senders."""
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

    def init_chain(self, params: LedgerParams | None = None) -> bytes:
        """Write genesis (the params) once; idempotent, so a restart before block 1 is fine.

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
            self.store.commit(0)
        return self.store.app_hash

    # -- mempool admission ---------------------------------------------------------------------

    def check_tx(self, raw: bytes, *, recheck: bool = False) -> TxResult:
        """Stateless admission: size, canonical encoding, envelope signature, schema, every
        party's signature of an order and a registration's zero proof; then this node's
        per-sender rate limit (new txs only: a recheck is free). State-dependent rules are
        applied in the block."""
        try:
            # A tx this node already checked is not charged again: anyone can resend a victim's
            # tx bytes, and that must not spend the victim's rate budget.
            self._decode_verified(raw, None if recheck else self._admit, gate_on_hit=False)
        except KofoError as exc:
            return TxResult(abci_code(exc), str(exc), exc.code)
        except Exception as exc:  # a bug must refuse the tx, never take the validator down
            return _internal_error(exc, "check_tx")
        return TxResult()

    def _admit(self, env: Envelope, body: TxBody) -> None:
        """This node's own mempool policy for a new tx (see :mod:`kofo.clearance.admission`)."""
        if (
            self.require_registered
            and not isinstance(body, RegisterNode)
            and self.store.get_committed(_node_key(env.sender)) is None
        ):
            raise UnknownNode(f"sender {env.sender.hex()} is not a registered node; register first")
        if self.rate_limit is not None:
            self.rate_limit.charge(env.sender)
        if self.registration_limit is not None and isinstance(body, RegisterNode):
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
        msg = open_message(raw)
        body = parse_tx_body(msg.envelope.type, msg.envelope.body)
        if gate is not None:
            gate(msg.envelope, body)
        if isinstance(body, CommitOrder):
            body.verify_signatures()
        elif isinstance(body, RegisterNode):
            self._check_registration_proof(msg.envelope.sender, body)
        with self._verified_lock:
            if digest not in self._verified:
                self._verified[digest] = (msg.envelope, body, len(raw))
                self._verified_bytes += len(raw)
            while len(self._verified) > _VERIFIED_CACHE or self._verified_bytes > _VERIFIED_BYTES:
                self._verified_bytes -= self._verified.popitem(last=False)[1][2]
        return msg.envelope, body

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
        privacy.verify_zero(
            n,
            tx.balance_seed,
            tx.seed_proof,
            privacy.register_context(sender),
            "register_node.balance_seed",
        )

    def propose(self, txs: Sequence[bytes], max_bytes: int) -> list[bytes]:
        """The txs an honest proposer puts in its block, in mempool order: within ``max_bytes``,
        without txs that fail their stateless checks, and without those the block's budget
        would refuse (:class:`BlockBudget`) -- those stay in the mempool for a later block
        instead of being refused in this one. Not consensus: any proposal is judged at
        FinalizeBlock alike."""
        budget = self._budget()
        out: list[bytes] = []
        size = 0
        for raw in txs:
            if size + len(raw) > max_bytes:
                break
            try:
                self._decode_verified(raw, lambda e, b: budget.charge(e.sender, b))
            except KofoError:
                continue
            out.append(raw)
            size += len(raw)
        return out

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
            count += result.ok
            results.append(result)
        if count != before:
            self.store.set(_K_TXCOUNT, _enc(count))
        last = {"height": block.height, "time": block.time}
        self.store.set(_K_LAST, _enc(last))
        self._pending_block = block
        return BlockResult(block.height, self.store.root(), tuple(results))

    def commit(self) -> bytes:
        block = self._pending_block
        if block is None:
            return self.store.app_hash  # nothing finalized since the last commit
        self._pending_block = None
        changed = [k for k in self.store.uncommitted_keys() if k.startswith(_NODE_PREFIX)]
        app_hash = self.store.commit(block.height, block.to_bytes())
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
        try:
            env, body = self._decode_verified(raw, lambda e, b: budget.charge(e.sender, b))
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

    def _node(self, view: _View, node: bytes, what: str) -> dict[str, Any]:
        rec = view.get_map(_node_key(node))
        if rec is None:
            raise UnknownNode(f"{what} {node.hex()} is not a registered node")
        return rec

    # -- CommitSettlementOrder -----------------------------------------------------------------

    def _commit_order(self, view: _View, ctx: _Ctx, sender: bytes, tx: CommitOrder) -> None:
        order = tx.order
        parties = order.parties()
        if sender not in parties:
            raise NotAuthorised(f"submitter {sender.hex()} is not a party of the order")
        if view.get(_order_key(order.order_id)) is not None:
            raise AlreadyExists(f"order {order.order_id.hex()} is already committed")
        self._check_route(order, ctx)
        for p in parties:  # existence only: decoding four node records is wasted work here
            if view.get(_node_key(p)) is None:
                raise UnknownNode(f"order party {p.hex()} is not a registered node")
        self._check_fees(view, order)
        for q in order.quotes:
            view.set(b"quote_used/" + q.quote_id, order.order_id)
        view.set(_order_key(order.order_id), _order_bytes(tx))
        view.set_map(
            _order_state_key(order.order_id),
            {
                "status": "committed",
                "height": ctx.height,
                "legs": [{"outcome": None, "txid": None, "at": None} for _ in order.legs],
            },
        )
        ctx.events.append(("order_committed", (("order_id", order.order_id.hex()),)))

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

    def _check_fees(self, view: _View, order: SettlementOrder) -> None:
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
        if set(order.relays) & set(hops) or len(set(order.relays)) != len(order.relays):
            raise FeeRuleViolated(f"order {oid}: relays must be distinct and hold no leg")
        wanted = {(h, QuoteRole.PROVIDER) for h in hops} | {
            (r, QuoteRole.RELAY) for r in order.relays
        }
        got = [(q.node, q.role) for q in order.quotes]
        if len(got) != len(wanted) or set(got) != wanted:
            raise FeeRuleViolated(
                f"order {oid}: needs one provider quote per intermediary and one relay quote "
                "per relay"
            )
        ids = [q.quote_id for q in order.quotes]
        if len(set(ids)) != len(ids):
            raise FeeRuleViolated(f"order {oid}: quote ids repeat")
        for q in order.quotes:
            if view.get(b"quote_used/" + q.quote_id) is not None:
                raise AlreadyExists(f"quote {q.quote_id.hex()} was already used by an order")
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
        order, rec = _load_order(view, tx.order_id)
        if tx.leg >= len(order.legs):
            raise OutcomeInvalid(f"leg {tx.leg} does not exist (order has {len(order.legs)})")
        route = [order.initiator, *order.intermediaries()]
        if sender not in route:
            reporter = view.get_map(_node_key(sender))
            if reporter is None or not reporter["monitor"]:
                raise NotAuthorised(
                    f"reporter {sender.hex()} is neither on the route nor a registered monitor"
                )
        leg = rec["legs"][tx.leg]
        if tx.outcome.value not in self._TRANSITIONS[leg["outcome"]]:
            raise OutcomeInvalid(
                f"leg {tx.leg} of order {tx.order_id.hex()} is {leg['outcome'] or 'open'}; "
                f"it cannot become {tx.outcome.value}"
            )
        if leg["outcome"] is None or tx.outcome is LegOutcome.LOCKED:
            leg["locked_at"] = ctx.time
        leg["outcome"] = tx.outcome.value
        leg["txid"] = tx.txid
        leg["at"] = ctx.time
        outcomes = [x["outcome"] for x in rec["legs"]]
        if rec["status"] == "committed":
            if all(o == "redeemed" for o in outcomes):
                rec["status"] = "settled"
                self._settle(view, ctx, order)
            elif tx.outcome is LegOutcome.REFUNDED:
                rec["status"] = "failed"
                self._fail(view, ctx, order)
        view.set_map(_order_state_key(tx.order_id), rec)

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

    def _fail(self, view: _View, ctx: _Ctx, order: SettlementOrder) -> None:
        for node in [order.initiator, *order.intermediaries()]:
            self._bump_stats(view, ctx, node, settled=False, volume=0)
        ctx.events.append(("order_failed", (("order_id", order.order_id.hex()),)))

    # -- FileEvidence --------------------------------------------------------------------------

    def _evidence(self, view: _View, ctx: _Ctx, sender: bytes, tx: FileEvidence) -> None:
        reporter = self._node(view, sender, "evidence reporter")
        p = self._params
        if tx.kind is EvidenceKind.LEG_NOT_LOCKED:
            assert tx.order_id is not None and tx.leg is not None  # guaranteed by the parser
            eid = b"evidence/lnl/" + tx.order_id + tx.leg.to_bytes(1, "big")
            order, rec = _load_order(view, tx.order_id)
            if tx.leg >= len(order.legs):
                raise EvidenceInvalid(f"leg {tx.leg} does not exist")
            if not reporter["monitor"] and sender not in order.parties():
                raise NotAuthorised(f"{sender.hex()} is neither a monitor nor a party")
            leg = order.legs[tx.leg]
            if ctx.time <= leg.lock_by:
                raise EvidenceInvalid(
                    f"legs[{tx.leg}].lock_by {leg.lock_by} has not passed (block time {ctx.time})"
                )
            locked_at = rec["legs"][tx.leg].get("locked_at")
            if locked_at is not None and locked_at <= leg.lock_by:
                raise EvidenceInvalid(f"legs[{tx.leg}] was reported locked at {locked_at}")
            offender = leg.sender
            slash_bps, points = p.slash_bps_not_locked, p.penalty_points_not_locked
        else:
            assert tx.quote is not None and tx.take is not None
            assert tx.quote_sig is not None and tx.take_sig is not None
            if not reporter["monitor"]:
                raise NotAuthorised(f"{sender.hex()} is not a registered monitor")
            quote, take = tx.quote, tx.take
            eid = b"evidence/qnh/" + quote.quote_id
            verify_ed25519(quote.provider, tx.quote_sig, quote.signing_bytes(), "quote")
            verify_ed25519(take.taker, tx.take_sig, take.signing_bytes(), "take")
            self._node(view, take.taker, "taker")
            if take.quote_id != quote.quote_id:
                raise EvidenceInvalid("the take is for another quote")
            if take.ts > quote.valid_until:
                raise EvidenceInvalid(
                    f"take at {take.ts} came after the quote expired at {quote.valid_until}"
                )
            if ctx.time <= quote.valid_until + p.honour_grace:
                raise EvidenceInvalid(
                    f"the provider has until {quote.valid_until + p.honour_grace} to honour it"
                )
            if view.get(b"quote_used/" + quote.quote_id) is not None:
                raise EvidenceInvalid(f"quote {quote.quote_id.hex()} was honoured by an order")
            offender = quote.provider
            slash_bps, points = p.slash_bps_quote, p.penalty_points_quote
        if view.get(eid) is not None:
            raise AlreadyExists("this evidence was already filed")
        view.set(eid, encode({"height": ctx.height, "reporter": sender}))
        rec = self._node(view, offender, "offender")
        slash = rec["bond"] * slash_bps // 10_000
        rec["bond"] -= slash
        rec["slashed"] += slash
        rec["penalty_points"] += points
        rec["points"] = max(0, rec["points"] - points)
        view.set_map(_node_key(offender), rec)
        _int_add(view, b"foundation_bond", slash)
        ctx.events.append(
            ("penalty", (("node", offender.hex()), ("kind", tx.kind.value), ("slash", str(slash))))
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

    def foundation_balance(self, asset: str) -> int:
        raw = self.store.get_committed(b"foundation/" + asset.encode())
        return 0 if raw is None else int(decode(raw))

    def fees_collected(self, asset: str) -> int:
        raw = self.store.get_committed(b"fees_collected/" + asset.encode())
        return 0 if raw is None else int(decode(raw))

    def tx_count(self) -> int:
        raw = self.store.get_committed(_K_TXCOUNT)
        return 0 if raw is None else int(decode(raw))

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

    def query(self, path: str, data: bytes) -> bytes:
        """The ABCI query face: ``path`` names the query, ``data`` is its canonical-CBOR
        argument; the answer is canonical CBOR. Raises :class:`NotFound` (unknown path or
        nothing there) or :class:`InvalidInput` (an argument of the wrong shape, named)."""
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
