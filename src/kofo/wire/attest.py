"""Leg observations: what a ledger validator saw of a settlement leg on its chain.

The clearance ledger accepts a leg's outcome (locked, redeemed, refunded) only when validators
holding at least two thirds of the voting power attested the same fact from their own view of
the chain, in their CometBFT vote extensions (see docs/clearance.md, "Outcomes by attestation").
The settlement layer implements :class:`ChainObserver` over its chain watchers; the node (or a
test) hands one to the ledger app. Neither layer imports the other: they share these types.

Vote-extension bytes are canonical CBOR ``{"v": 1, "obs": [[order_id, leg, outcome, txid,
chain_height], ...]}``, at most :data:`MAX_OBSERVATIONS` entries, sorted and without repeats,
plus, when the validator saw bond balances differ from the ledger's record, ``"bonds":
[[node_id, amount, chain_height], ...]`` (the bond vault's balance per node, same limits),
and, when the vault executed bond decisions the ledger still holds open, ``"done":
[[decision_id, chain_height], ...]`` (``executed(decision_id)`` is true in the vault as of
``chain_height``; sorted by id, same limits), and, when the validator watches chains, ``"tips":
[[chain, safe_height], ...]`` (each watched chain's tip at the validator's confirmation depth:
the chain's clock, sorted by chain, at most :data:`MAX_TIPS`), and, when the validator could
not read some legs of its order window this height, ``"blind": [chain, ...]`` (the chains of
those legs, sorted, at most :data:`MAX_BLIND`; a full list means "could not read at all"): its
look at the window counts only for legs on the other chains. These keys are present only when
non-empty.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kofo.errors import KofoError
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import BadMessage
from kofo.wire.orders import NODE_ID_SIZE, ORDER_ID_SIZE, Leg, LegOutcome

EXTENSION_VERSION = 1
MAX_OBSERVATIONS = 64
"""Leg facts one validator may attest per height: bounds the vote extension (~7 KB) and the
tally work per block; more pending changes simply wait for the next heights (every honest
validator picks the same first ones: the lowest order ids)."""
MAX_EXTENSION_BYTES = 7_680
"""64 observations with 128-character txids fit; 128 validators' extensions fit one 1 MiB
attestation tx."""
MAX_TXID_LEN = 128
MAX_CHAIN_HEIGHT = 2**63 - 1
MAX_LEG_INDEX = 255
MAX_TIPS = 16
"""Chains one validator may report a tip for (a few bytes each)."""
MAX_CHAIN_NAME = 16
MAX_BLIND = 16
"""Chains one extension may name as unread; an extension naming this many counts as having
read no chain (a validator blind to more chains than this says so by naming the first 16)."""
MAX_BOND = 2**128 - 1
"""Wei; far above all the ether there is, far below anything that costs to print or compare."""


@dataclass(frozen=True, slots=True)
class LegRef:
    """A leg the ledger wants watched: the committed order's id, the leg's index and terms."""

    order_id: bytes
    index: int
    leg: Leg
    payment_hash: bytes
    committed_at: int = 0
    """Ledger block time (unix seconds) the order was committed at; 0: unknown. Nothing locks
    before its order is committed, so a lock in a chain block older than this (less the
    chain's timestamp tolerance) is someone else's HTLC with the same terms, not this leg."""


@dataclass(frozen=True, slots=True, order=True)
class Observation:
    """``outcome`` of leg ``leg`` of ``order_id``, seen in transaction ``txid`` at
    ``chain_height`` of the leg's chain (the lock for ``locked``, the spend otherwise)."""

    order_id: bytes
    leg: int
    outcome: LegOutcome
    txid: str
    chain_height: int

    def as_list(self) -> list[Any]:
        return [self.order_id, self.leg, self.outcome.value, self.txid, self.chain_height]

    @classmethod
    def from_list(cls, v: Any, where: str) -> Observation:
        if not isinstance(v, list) or len(v) != 5:
            raise BadMessage(f"{where} must be a list of 5 items")
        order_id, leg, outcome, txid, height = v
        if not isinstance(order_id, bytes) or len(order_id) != ORDER_ID_SIZE:
            raise BadMessage(f"{where}[0] (order_id) must be {ORDER_ID_SIZE} bytes")
        bounds = (("leg", leg, MAX_LEG_INDEX), ("chain_height", height, MAX_CHAIN_HEIGHT))
        for name, n, hi in bounds:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= hi:
                raise BadMessage(f"{where} {name} must be an integer in 0..{hi}")
        try:
            kind = LegOutcome(outcome)
        except ValueError:
            raise BadMessage(f"{where}[2] has unknown outcome {outcome!r}") from None
        if not isinstance(txid, str) or not 0 < len(txid) <= MAX_TXID_LEN:
            raise BadMessage(f"{where}[3] (txid) must be a string of 1..{MAX_TXID_LEN} chars")
        return cls(order_id, leg, kind, txid, height)


@dataclass(frozen=True, slots=True, order=True)
class BondObservation:
    """The bond vault holds ``amount`` (wei) for ``node`` as of ``chain_height`` (confirmed)."""

    node: bytes
    amount: int
    chain_height: int

    def as_list(self) -> list[Any]:
        return [self.node, self.amount, self.chain_height]

    @classmethod
    def from_list(cls, v: Any, where: str) -> BondObservation:
        if not isinstance(v, list) or len(v) != 3:
            raise BadMessage(f"{where} must be a list of 3 items")
        node, amount, height = v
        if not isinstance(node, bytes) or len(node) != NODE_ID_SIZE:
            raise BadMessage(f"{where}[0] (node) must be {NODE_ID_SIZE} bytes")
        for name, n, hi in (
            ("amount", amount, MAX_BOND),
            ("chain_height", height, MAX_CHAIN_HEIGHT),
        ):
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= hi:
                raise BadMessage(f"{where} {name} must be an integer in 0..{hi}")
        return cls(node, amount, height)


@dataclass(frozen=True, slots=True, order=True)
class ChainTip:
    """``chain``'s highest block at the validator's confirmation depth is ``height``: what the
    ledger reads as that chain's clock (docs/clearance.md, "Chain clocks")."""

    chain: str
    height: int

    def as_list(self) -> list[Any]:
        return [self.chain, self.height]

    @classmethod
    def from_list(cls, v: Any, where: str) -> ChainTip:
        if not isinstance(v, list) or len(v) != 2:
            raise BadMessage(f"{where} must be a list of 2 items")
        chain, height = v
        if (
            not isinstance(chain, str)
            or not 0 < len(chain) <= MAX_CHAIN_NAME
            or not chain.isascii()
            or not all(c.islower() or c.isdigit() for c in chain)
        ):
            raise BadMessage(f"{where}[0] (chain) must be 1..{MAX_CHAIN_NAME} of [a-z0-9]")
        if isinstance(height, bool) or not isinstance(height, int):
            raise BadMessage(f"{where} height must be an integer")
        if not 0 <= height <= MAX_CHAIN_HEIGHT:
            raise BadMessage(f"{where} height must be in 0..{MAX_CHAIN_HEIGHT}")
        return cls(chain, height)


class ChainUnreadable(KofoError):
    """A chain observer could not read a leg's chain now (its node down or lagging, a
    timeout, a chain it does not watch): not "no lock there", which only a read can say."""

    code = "chain_unreadable"

    def __init__(self, chain: str, why: str = "") -> None:
        super().__init__(f"chain {chain!r} cannot be read now" + (f": {why}" if why else ""))
        self.chain = chain


class ChainObserver(Protocol):
    """A validator's own view of the chains (implemented over the settlement watchers).

    ``observe`` returns the leg's current state on its chain, or None when no HTLC matching the
    leg's terms (chain, token, payment hash, amount, recipient, expiry) is confirmed. It must
    only answer with confirmed facts (the chain's safe depth). When it could not read the leg's
    chain (a failed or timed-out read, a chain it does not watch, nothing read yet) it raises
    :class:`ChainUnreadable`: None would say "read, and no lock there", which the ledger counts
    against the leg's sender once its deadline passed (any other exception counts the same as
    :class:`ChainUnreadable`).

    Every method is required, also of an observer that wraps another (a cache, a lock): the
    app refuses an observer lacking one (:data:`OBSERVER_METHODS`). They were optional once,
    asked for with ``getattr``, and a wrapper written without ``observe_decision`` made a
    validator silently never attest a vault execution: a relayed slash stayed pending forever.
    """

    def observe(self, ref: LegRef) -> Observation | None: ...

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        """The bond vault's balance for ``node`` at the highest confirmed height that is a
        multiple of ``step`` (the ledger's ``bond_height_step``, so that validators with other
        tips or confirmation settings report the same height); None if no vault is watched."""
        ...

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        """Whether the vault had executed the ledger decision ``decision`` as of the same
        rounded height :meth:`observe_bond` reads: ``ExecutedDecision(decision, that height)``,
        else None (also when no vault is watched)."""
        ...

    def observe_tips(self) -> list[ChainTip]:
        """Each watched chain's highest block at this validator's confirmation depth (the
        ledger's clock of that chain); empty if none is watched or none answers."""
        ...


OBSERVER_METHODS = ("observe", "observe_bond", "observe_decision", "observe_tips")
"""The methods of :class:`ChainObserver`, every one required: the app checks an observer it is
given has them all (a type checker sees only typed code)."""


@dataclass(frozen=True, slots=True, order=True)
class ExecutedDecision:
    """The bond vault had executed ledger decision ``decision`` (a slash or a release) as of
    its block ``chain_height`` (confirmed; the same rounded height bonds are read at)."""

    decision: bytes
    chain_height: int

    def as_list(self) -> list[Any]:
        return [self.decision, self.chain_height]

    @classmethod
    def from_list(cls, v: Any, where: str) -> ExecutedDecision:
        if not isinstance(v, list) or len(v) != 2:
            raise BadMessage(f"{where} must be a list of 2 items")
        decision, height = v
        if not isinstance(decision, bytes) or len(decision) != DECISION_ID_SIZE:
            raise BadMessage(f"{where}[0] (decision) must be {DECISION_ID_SIZE} bytes")
        if isinstance(height, bool) or not isinstance(height, int):
            raise BadMessage(f"{where} chain_height must be an integer")
        if not 0 <= height <= MAX_CHAIN_HEIGHT:
            raise BadMessage(f"{where} chain_height must be in 0..{MAX_CHAIN_HEIGHT}")
        return cls(decision, height)


DECISION_ID_SIZE = 32


def encode_extension(
    observations: list[Observation],
    bond_observations: list[BondObservation] = (),  # type: ignore[assignment]
    executed: list[ExecutedDecision] = (),  # type: ignore[assignment]
    tips: list[ChainTip] = (),  # type: ignore[assignment]
    blind: Iterable[str] = (),
) -> bytes:
    """The canonical extension; ``blind``: the chains of window legs this validator could not
    read this height (at most :data:`MAX_BLIND` kept: a full list reads as blind to all)."""
    unread = sorted(set(blind))[:MAX_BLIND]
    for c in unread:
        _check_chain_name(c, "blind chain")
    # one tip per chain (the highest, should an observer name a chain twice), at most MAX_TIPS
    best: dict[str, ChainTip] = {}
    for t in tips:
        if t.chain not in best or t.height > best[t.chain].height:
            best[t.chain] = t
    clock = [best[c].as_list() for c in sorted(best)][:MAX_TIPS]
    obs = sorted(set(observations))[:MAX_OBSERVATIONS]
    bonds = sorted(set(bond_observations))[:MAX_OBSERVATIONS]
    done = sorted(set(executed))[:MAX_OBSERVATIONS]
    # Within MAX_EXTENSION_BYTES, which every validator's VerifyVoteExtension enforces: 64 leg
    # facts and 64 bond facts can take ~9.5 KB, and an extension every validator refuses
    # counts no precommit, so the chain would stop while those facts stay pending. Leg facts
    # first, then bonds; the rest waits for later heights (dropped from the end, so every
    # honest validator that sees the same facts keeps the same ones).
    while True:
        body: dict[str, Any] = {"v": EXTENSION_VERSION, "obs": [o.as_list() for o in obs]}
        if bonds:
            body["bonds"] = [b.as_list() for b in bonds]
        if done:
            body["done"] = [d.as_list() for d in done]
        if clock:  # at most 16 x ~27 bytes: always kept
            body["tips"] = clock
        if unread:  # at most 16 x ~17 bytes: always kept (dropping one would be a false look)
            body["blind"] = unread
        raw = encode(body)
        if len(raw) <= MAX_EXTENSION_BYTES:
            return raw
        # drop no more entries than the excess needs (an encoded executed decision is at
        # most ~45 bytes, a bond fact ~62, a leg fact ~170), at least one, executed first
        excess = len(raw) - MAX_EXTENSION_BYTES
        if done:
            done = done[: max(0, len(done) - max(1, excess // 46))]
        elif bonds:
            bonds = bonds[: max(0, len(bonds) - max(1, excess // 64))]
        else:
            obs = obs[: max(0, len(obs) - max(1, excess // 180))]


def decode_extension(raw: bytes) -> list[Observation]:
    """The leg observations of a vote extension (see :func:`decode_extension_full`)."""
    return decode_extension_full(raw)[0]


def decode_extension_full(raw: bytes) -> tuple[list[Observation], list[BondObservation]]:
    """The leg and bond observations of a vote extension (see :func:`decode_extension_all`)."""
    obs, bonds, _ = decode_extension_all(raw)
    return obs, bonds


def decode_extension_all(
    raw: bytes,
) -> tuple[list[Observation], list[BondObservation], list[ExecutedDecision]]:
    """The leg, bond and decision observations of a vote extension (see
    :func:`decode_extension_every`)."""
    obs, bonds, done, _ = decode_extension_every(raw)
    return obs, bonds, done


def decode_extension_every(
    raw: bytes,
) -> tuple[list[Observation], list[BondObservation], list[ExecutedDecision], list[ChainTip]]:
    """The observations of a vote extension; :class:`BadMessage` for anything but the
    canonical, bounded, sorted form (an empty extension means "nothing to report")."""
    obs, bonds, done, tips, _ = decode_extension_with_blind(raw)
    return obs, bonds, done, tips


def _check_chain_name(chain: Any, where: str) -> None:
    # a leg's chain (kofo.wire.orders.Leg): a string of 1..16 characters
    if not isinstance(chain, str) or not 0 < len(chain) <= MAX_CHAIN_NAME:
        raise BadMessage(f"{where} must be a chain name of 1..{MAX_CHAIN_NAME} characters")


def decode_extension_with_blind(
    raw: bytes,
) -> tuple[
    list[Observation], list[BondObservation], list[ExecutedDecision], list[ChainTip], list[str]
]:
    """:func:`decode_extension_every` and the extension's ``"blind"`` chains."""
    if not raw:
        return [], [], [], [], []
    if len(raw) > MAX_EXTENSION_BYTES:
        raise BadMessage(f"vote extension is {len(raw)} bytes, more than {MAX_EXTENSION_BYTES}")
    m = decode(raw)
    if (
        not isinstance(m, dict)
        or set(m) - {"bonds", "done", "tips", "blind"} != {"v", "obs"}
        or m["v"] != EXTENSION_VERSION
        or m.get("bonds", 1) == []
        or m.get("done", 1) == []
        or m.get("tips", 1) == []
        or m.get("blind", 1) == []
    ):
        raise BadMessage(
            f"vote extension must be {{'v': {EXTENSION_VERSION}, 'obs': [...]}} and, if any, "
            "a non-empty 'bonds': [...], 'done': [...], 'tips': [...] and 'blind': [...]"
        )
    items = m["obs"]
    if not isinstance(items, list) or len(items) > MAX_OBSERVATIONS:
        raise BadMessage(f"vote extension obs must be a list of at most {MAX_OBSERVATIONS}")
    obs = [Observation.from_list(x, f"vote extension obs[{i}]") for i, x in enumerate(items)]
    if any(a >= b for a, b in itertools.pairwise(obs)):
        raise BadMessage("vote extension obs must be sorted without repeats")
    keys = [(o.order_id, o.leg) for o in obs]
    if len(set(keys)) != len(keys):
        raise BadMessage("vote extension names a leg twice")
    raw_bonds = m.get("bonds", [])
    if not isinstance(raw_bonds, list) or len(raw_bonds) > MAX_OBSERVATIONS:
        raise BadMessage(f"vote extension bonds must be a list of at most {MAX_OBSERVATIONS}")
    bonds = [
        BondObservation.from_list(x, f"vote extension bonds[{i}]") for i, x in enumerate(raw_bonds)
    ]
    if any(a.node >= b.node for a, b in itertools.pairwise(bonds)):
        raise BadMessage("vote extension bonds must be sorted by node, one each")
    raw_done = m.get("done", [])
    if not isinstance(raw_done, list) or len(raw_done) > MAX_OBSERVATIONS:
        raise BadMessage(f"vote extension done must be a list of at most {MAX_OBSERVATIONS}")
    done = [
        ExecutedDecision.from_list(x, f"vote extension done[{i}]") for i, x in enumerate(raw_done)
    ]
    if any(a.decision >= b.decision for a, b in itertools.pairwise(done)):
        raise BadMessage("vote extension done must be sorted by decision, one each")
    raw_tips = m.get("tips", [])
    if not isinstance(raw_tips, list) or len(raw_tips) > MAX_TIPS:
        raise BadMessage(f"vote extension tips must be a list of at most {MAX_TIPS}")
    tips = [ChainTip.from_list(x, f"vote extension tips[{i}]") for i, x in enumerate(raw_tips)]
    if any(a.chain >= b.chain for a, b in itertools.pairwise(tips)):
        raise BadMessage("vote extension tips must be sorted by chain, one each")
    blind = m.get("blind", [])
    if not isinstance(blind, list) or len(blind) > MAX_BLIND:
        raise BadMessage(f"vote extension blind must be a list of at most {MAX_BLIND}")
    for i, c in enumerate(blind):
        _check_chain_name(c, f"vote extension blind[{i}]")
    if any(a >= b for a, b in itertools.pairwise(blind)):
        raise BadMessage("vote extension blind must be sorted, one each")
    return obs, bonds, done, tips, list(blind)
