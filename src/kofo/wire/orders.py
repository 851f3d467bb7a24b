"""Settlement orders and clearance-ledger transactions: the wire types layer 2 speaks.

Every ledger transaction is a signed envelope (:mod:`kofo.wire.envelope`) whose ``type`` is one
of the ``TX_*`` names below and whose ``body`` is the ``as_map()`` of the matching dataclass. The
exchange layer builds :class:`SettlementOrder` values, collects every party's signature over
:meth:`SettlementOrder.signing_bytes` and submits a :data:`TX_COMMIT_ORDER`; the settlement layer
reports leg outcomes and files evidence. Neither imports the ledger: they share these types.

Node ids are raw 32-byte Ed25519 public keys. Money is integers (base units). Paillier values are
big-endian unsigned integers in ``bytes``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.wire import envelope
from kofo.wire.codec import encode
from kofo.wire.envelope import BadMessage, BadSignature, SignedMessage, public_key_bytes, sign
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.legkeys import LegKeyUnproven, LegRole, key_kind, verify_leg_key

ORDER_DOMAIN = b"KOFO/order/v1\x00"
"""Prefix of what every route party signs, so an order signature is never valid for anything
else the same key signs (envelopes use ``KOFO/msg/v1``, quotes ``KOFO/quote/v1``)."""

QUOTE_DOMAIN = b"KOFO/quote/v1\x00"
ORDER_ID_DOMAIN = b"KOFO/order-id/v1\x00"
QUOTE_ID_DOMAIN = b"KOFO/quote-id/v1\x00"
TAKE_DOMAIN = b"KOFO/take/v1\x00"

TX_REGISTER_NODE = "clearance.register_node"
TX_COMMIT_ORDER = "clearance.commit_order"
TX_REPORT_OUTCOME = "clearance.report_outcome"
TX_FILE_EVIDENCE = "clearance.file_evidence"
TX_WITHDRAW_FEES = "clearance.withdraw_fees"
TX_REGISTER_VALIDATOR_KEY = "clearance.register_validator_key"
TX_UNBOND = "clearance.unbond"
TX_TYPES = frozenset(
    {
        TX_REGISTER_NODE,
        TX_COMMIT_ORDER,
        TX_REPORT_OUTCOME,
        TX_FILE_EVIDENCE,
        TX_WITHDRAW_FEES,
        TX_REGISTER_VALIDATOR_KEY,
        TX_UNBOND,
    }
)

NODE_ID_SIZE = 32
ORDER_ID_SIZE = 16
QUOTE_ID_SIZE = 16
MAX_LEGS = 8
"""A route longer than eight legs would need expiries spread over many safety margins (days of
lock-up for the first leg); no sensible route gets there, so longer ones are refused as hostile."""
MAX_RELAYS = 16
MAX_CIPHERTEXT_BYTES = 768
"""Big enough for Paillier with a 3072-bit modulus, the largest the ledger accepts (ciphertexts
live mod n^2: 6144 bits). Proof values are no larger."""

MAX_PROOF_BYTES = 4 * 3 * 384
"""A zero proof under a 3072-bit modulus: four rounds of ``a`` (mod n^2) and ``z`` (mod n),
fixed width (``kofo.clearance.privacy``)."""
MAX_MODULUS_PROOF_BYTES = 4 * 384
"""A modulus certificate under a 3072-bit modulus: four n-th roots mod n."""

BALANCE_SCHEMA_VERSION = 3
"""``sv`` of ``register_node`` and ``withdraw_fees`` bodies. Version 2 added the proof that a
seed encrypts 0 and the withdrawal number; version 3 made the zero proof four rounds of 20-bit
challenges and added the registration's modulus certificate and work proof. Older bodies are
refused (version 1 let a node seed its balance with any amount and replay a withdrawal; a
version 2 zero proof was forgeable under a modulus with a small factor)."""

MAX_U64 = (1 << 64) - 1
"""Bound of every count, index, time and basis-point field: no such value needs more, and a
bounded integer can never make a validator do big-number work or hit Python's int->str limit
(``PYTHONINTMAXSTRDIGITS``), whatever its environment."""
MAX_AMOUNT = (1 << 256) - 1
"""Bound of every amount (base units): an EVM ``uint256`` is the widest any chain has."""


class OrderKind(enum.StrEnum):
    DIRECT = "direct"  # two parties, no intermediary network involved: no protocol fee
    ROUTED = "routed"  # found through the claim/fulfil network: pays the protocol fee


class QuoteRole(enum.StrEnum):
    RELAY = "relay"  # carried the claim (and the fulfil back)
    PROVIDER = "provider"  # served the quote with its own liquidity (an intermediary on the route)


class LegOutcome(enum.StrEnum):
    LOCKED = "locked"
    REDEEMED = "redeemed"
    REFUNDED = "refunded"


class EvidenceKind(enum.StrEnum):
    LEG_NOT_LOCKED = "leg_not_locked"
    QUOTE_NOT_HONOURED = "quote_not_honoured"


# ---------------------------------------------------------------------------------------------
# field readers: every message is parsed from a plain map, naming the field that is wrong


def _get(m: Mapping[str, Any], name: str, where: str) -> Any:
    # ``type(m) is dict`` first: decoded CBOR maps are plain dicts, and the ABC check behind
    # ``isinstance(m, Mapping)`` is the single costliest step of parsing an order.
    if type(m) is not dict and not isinstance(m, Mapping):
        raise BadMessage(f"{where} must be a map")
    if name not in m:
        raise BadMessage(f"{where}.{name} is missing")
    return m[name]


def _int(
    m: Mapping[str, Any], name: str, where: str, *, minimum: int = 0, maximum: int = MAX_U64
) -> int:
    """An integer field within ``[minimum, maximum]``. Every integer of every ledger message is
    read here, so none is unbounded; the message quotes the bad value only when it is small
    (formatting a huge int is itself the attack: slow, and refused past Python's digit limit)."""
    v = _get(m, name, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadMessage(f"{where}.{name} must be an integer, got {type(v).__name__}")
    if not minimum <= v <= maximum:
        raise BadMessage(f"{where}.{name} must be within {minimum}..{maximum}, got {show_int(v)}")
    return v


def show_int(v: int) -> str:
    """``v`` for an error message: in full only when it has at most 80 bits (so formatting it
    is cheap and no environment setting can change or refuse it)."""
    if -(1 << 80) < v < 1 << 80:
        return str(v)
    return f"a {v.bit_length()}-bit integer"


def _bytes(m: Mapping[str, Any], name: str, where: str, size: int | None = None) -> bytes:
    v = _get(m, name, where)
    if not isinstance(v, bytes):
        raise BadMessage(f"{where}.{name} must be bytes, got {type(v).__name__}")
    if size is not None and len(v) != size:
        raise BadMessage(f"{where}.{name} must be {size} bytes, got {len(v)}")
    return v


def _str(m: Mapping[str, Any], name: str, where: str, *, max_len: int = 256) -> str:
    v = _get(m, name, where)
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise BadMessage(f"{where}.{name} must be a non-empty string of at most {max_len} chars")
    return v


def _opt_str(m: Mapping[str, Any], name: str, where: str) -> str | None:
    if _get(m, name, where) is None:
        return None
    return _str(m, name, where)


_E = TypeVar("_E", bound=enum.StrEnum)


def _enum(m: Mapping[str, Any], name: str, where: str, kind: type[_E]) -> _E:
    v = _get(m, name, where)
    try:
        return kind(v)
    except ValueError:
        raise BadMessage(f"{where}.{name} has unknown value {v!r}") from None


def _list(m: Mapping[str, Any], name: str, where: str, max_len: int, min_len: int = 0) -> list[Any]:
    v = _get(m, name, where)
    if not isinstance(v, list) or not min_len <= len(v) <= max_len:
        raise BadMessage(f"{where}.{name} must be a list of {min_len}..{max_len} items")
    return v


def _exact_keys(m: Mapping[str, Any], keys: set[str], where: str) -> None:
    if (type(m) is not dict and not isinstance(m, Mapping)) or m.keys() != keys:
        got = sorted(m) if isinstance(m, Mapping) else type(m).__name__
        raise BadMessage(f"{where} must have exactly the fields {sorted(keys)}, got {got}")


def expiry_to_map(e: Expiry) -> dict[str, Any]:
    return {"unit": "height" if isinstance(e, BlockHeight) else "unix", "value": e.value}


def expiry_from_map(m: Any, where: str) -> Expiry:
    _exact_keys(m, {"unit", "value"}, where)
    unit = m["unit"]
    value = _int(m, "value", where)
    if unit == "height":
        return BlockHeight(value)
    if unit == "unix":
        return UnixTime(value)
    raise BadMessage(f"{where}.unit must be 'height' or 'unix', got {unit!r}")


def asset_key(chain: str, token: str | None) -> str:
    """The ledger's name for an asset: ``btc``, ``eth``, ``eth:0xToken...``."""
    return chain if token is None else f"{chain}:{token}"


# ---------------------------------------------------------------------------------------------
# settlement order


@dataclass(frozen=True, slots=True)
class Leg:
    """One HTLC of a route: ``sender`` locks ``amount`` on ``chain`` payable to ``recipient``.

    ``expiry`` is in the chain's own unit (what the HTLC uses). ``expiry_time`` is the unix time
    by which every party agrees that expiry will have passed; it is what the ledger orders legs
    by, because heights on different chains cannot be compared. ``lock_by`` is the ledger (block)
    time by which the sender must have locked; missing it is penalised evidence.
    """

    chain: str
    token: str | None
    sender: bytes
    recipient: bytes
    sender_address: str
    recipient_address: str
    amount: int
    expiry: Expiry
    expiry_time: int
    lock_by: int

    @property
    def asset(self) -> str:
        return asset_key(self.chain, self.token)

    def as_map(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "token": self.token,
            "sender": self.sender,
            "recipient": self.recipient,
            "sender_address": self.sender_address,
            "recipient_address": self.recipient_address,
            "amount": self.amount,
            "expiry": expiry_to_map(self.expiry),
            "expiry_time": self.expiry_time,
            "lock_by": self.lock_by,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "leg") -> Leg:
        _exact_keys(m, set(_LEG_KEYS), where)
        return cls(
            chain=_str(m, "chain", where, max_len=16),
            token=_opt_str(m, "token", where),
            sender=_bytes(m, "sender", where, NODE_ID_SIZE),
            recipient=_bytes(m, "recipient", where, NODE_ID_SIZE),
            sender_address=_str(m, "sender_address", where),
            recipient_address=_str(m, "recipient_address", where),
            amount=_int(m, "amount", where, minimum=1, maximum=MAX_AMOUNT),
            expiry=expiry_from_map(m["expiry"], f"{where}.expiry"),
            expiry_time=_int(m, "expiry_time", where),
            lock_by=_int(m, "lock_by", where),
        )


_LEG_KEYS = (
    "chain",
    "token",
    "sender",
    "recipient",
    "sender_address",
    "recipient_address",
    "amount",
    "expiry",
    "expiry_time",
    "lock_by",
)


@dataclass(frozen=True, slots=True)
class FeeQuote:
    """A carrier of the claim (relay) or server of the quote (provider) on a routed order.

    ``quote_id`` names the fulfil the carrier signed in the exchange layer. ``fee_ct`` is the
    carrier's own fee for this trade (a provider's spread, a relay's tip) as a Paillier
    ciphertext under the carrier's key, encrypted by the carrier with its own randomness: the
    ledger adds it to the carrier's private ``earned`` total and never learns it.
    """

    node: bytes
    role: QuoteRole
    quote_id: bytes
    fee_ct: bytes | None = None

    def as_map(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "role": self.role.value,
            "quote_id": self.quote_id,
            "fee_ct": self.fee_ct,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "quote") -> FeeQuote:
        _exact_keys(m, {"node", "role", "quote_id", "fee_ct"}, where)
        fee_ct = m["fee_ct"]
        if fee_ct is not None and (
            not isinstance(fee_ct, bytes) or not 0 < len(fee_ct) <= MAX_CIPHERTEXT_BYTES
        ):
            raise BadMessage(f"{where}.fee_ct must be at most {MAX_CIPHERTEXT_BYTES} bytes")
        return cls(
            node=_bytes(m, "node", where, NODE_ID_SIZE),
            role=_enum(m, "role", where, QuoteRole),
            quote_id=_bytes(m, "quote_id", where, QUOTE_ID_SIZE),
            fee_ct=fee_ct,
        )


@dataclass(frozen=True, slots=True)
class SettlementOrder:
    """A route everyone on it agreed to: legs, one payment hash, expiries and fees.

    Leg ``i`` is paid by ``legs[i].sender`` to ``legs[i].recipient``; the route is a cycle
    (each leg's recipient pays the next leg, the last leg pays the initiator back). The
    ``notional`` is the first leg's amount, in the first leg's asset, and the protocol fee is
    charged on it.
    """

    order_id: bytes
    kind: OrderKind
    payment_hash: bytes
    legs: tuple[Leg, ...]
    relays: tuple[bytes, ...] = ()
    quotes: tuple[FeeQuote, ...] = ()
    protocol_fee_bps: int = 0
    protocol_fee: int = 0

    @property
    def initiator(self) -> bytes:
        return self.legs[0].sender

    @property
    def notional(self) -> int:
        return self.legs[0].amount

    @property
    def fee_asset(self) -> str:
        return self.legs[0].asset

    def intermediaries(self) -> list[bytes]:
        """Every node on the route except the initiator, in route order."""
        return [leg.recipient for leg in self.legs[:-1]]

    def parties(self) -> list[bytes]:
        """Everyone who must sign: the route's nodes and the relays, in a fixed order."""
        seen: list[bytes] = []
        for node in [self.initiator, *self.intermediaries(), *self.relays]:
            if node not in seen:
                seen.append(node)
        return seen

    def as_map(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "kind": self.kind.value,
            "payment_hash": self.payment_hash,
            "legs": [leg.as_map() for leg in self.legs],
            "relays": list(self.relays),
            "quotes": [q.as_map() for q in self.quotes],
            "protocol_fee_bps": self.protocol_fee_bps,
            "protocol_fee": self.protocol_fee,
        }

    def signing_bytes(self) -> bytes:
        return ORDER_DOMAIN + encode(self.as_map())

    def sign(self, key: Ed25519PrivateKey) -> OrderSignature:
        return OrderSignature(public_key_bytes(key), key.sign(self.signing_bytes()))

    @classmethod
    def from_map(cls, m: Any, where: str = "order") -> SettlementOrder:
        _exact_keys(
            m,
            {
                "order_id",
                "kind",
                "payment_hash",
                "legs",
                "relays",
                "quotes",
                "protocol_fee_bps",
                "protocol_fee",
            },
            where,
        )
        # At least two legs: every rule and property (initiator, notional, parties) reads
        # legs[0], so an empty route must not get past the schema (it once raised IndexError
        # in CheckTx and took the validator down).
        legs = _list(m, "legs", where, MAX_LEGS, min_len=2)
        relays = _list(m, "relays", where, MAX_RELAYS)
        quotes = _list(m, "quotes", where, MAX_LEGS + MAX_RELAYS)
        for i, r in enumerate(relays):
            if not isinstance(r, bytes) or len(r) != NODE_ID_SIZE:
                raise BadMessage(f"{where}.relays[{i}] must be a {NODE_ID_SIZE}-byte node id")
        return cls(
            order_id=_bytes(m, "order_id", where, ORDER_ID_SIZE),
            kind=_enum(m, "kind", where, OrderKind),
            payment_hash=_bytes(m, "payment_hash", where, 32),
            legs=tuple(Leg.from_map(x, f"{where}.legs[{i}]") for i, x in enumerate(legs)),
            relays=tuple(relays),
            quotes=tuple(
                FeeQuote.from_map(x, f"{where}.quotes[{i}]") for i, x in enumerate(quotes)
            ),
            protocol_fee_bps=_int(m, "protocol_fee_bps", where, maximum=10_000),
            protocol_fee=_int(m, "protocol_fee", where, maximum=MAX_AMOUNT),
        )


@dataclass(frozen=True, slots=True)
class OrderSignature:
    signer: bytes
    signature: bytes

    def as_map(self) -> dict[str, Any]:
        return {"signer": self.signer, "sig": self.signature}


def verify_ed25519(signer: bytes, signature: bytes, message: bytes, what: str) -> None:
    """Raise :class:`BadSignature` unless ``signature`` verifies (strictly, see
    :func:`kofo.wire.envelope.verify_ed25519`)."""
    if not envelope.verify_ed25519(signer, signature, message):
        raise BadSignature(f"{what}: signature does not verify for {signer.hex()}")


# ---------------------------------------------------------------------------------------------
# ledger transaction bodies


@dataclass(frozen=True, slots=True)
class RegisterNode:
    """Registers the envelope's sender as a node.

    ``paillier_n`` is the node's Paillier public modulus. ``balance_seed`` is an encryption of 0
    under it, made by the node with fresh randomness: the ledger starts the node's fee balance
    from it, so the stored ciphertext is never a trivial (randomness-1) encryption.
    ``seed_proof`` proves that the seed encrypts 0 (``kofo.clearance.privacy.prove_zero``,
    bound to the sender's id). ``modulus_proof`` certifies ``paillier_n`` (no prime factor
    below 2^20, square-free, prime to phi(n): ``privacy.prove_modulus``), without which the
    zero proof means nothing. ``pow_nonce`` is the registration's work
    (``kofo.clearance.admission.solve_registration_work``): what a registration costs. ``bond``
    is informational (bonds are attested from the vault, never declared).
    """

    addresses: dict[str, str]
    paillier_n: bytes
    balance_seed: bytes
    bond: int
    monitor: bool = False
    seed_proof: bytes = b""
    modulus_proof: bytes = b""
    pow_nonce: int = 0

    def as_map(self) -> dict[str, Any]:
        return {
            "sv": BALANCE_SCHEMA_VERSION,
            "addresses": dict(self.addresses),
            "paillier_n": self.paillier_n,
            "balance_seed": self.balance_seed,
            "seed_proof": self.seed_proof,
            "modulus_proof": self.modulus_proof,
            "pow_nonce": self.pow_nonce,
            "bond": self.bond,
            "monitor": self.monitor,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "register_node") -> RegisterNode:
        _schema_version(m, where)
        _exact_keys(
            m,
            {
                "sv",
                "addresses",
                "paillier_n",
                "balance_seed",
                "seed_proof",
                "modulus_proof",
                "pow_nonce",
                "bond",
                "monitor",
            },
            where,
        )
        addrs = m["addresses"]
        if not isinstance(addrs, dict) or len(addrs) > 16:
            raise BadMessage(f"{where}.addresses must be a map of at most 16 chains")
        for chain, addr in addrs.items():
            if not 0 < len(chain) <= 16:
                raise BadMessage(f"{where}.addresses keys must be chain names of 1..16 chars")
            if not isinstance(addr, str) or not addr or len(addr) > 256:
                raise BadMessage(f"{where}.addresses.{chain} must be a non-empty string")
        if not isinstance(m["monitor"], bool):
            raise BadMessage(f"{where}.monitor must be a boolean")
        return cls(
            addresses=dict(addrs),
            paillier_n=_ct_bytes(m, "paillier_n", where),
            balance_seed=_ct_bytes(m, "balance_seed", where),
            bond=_int(m, "bond", where, maximum=MAX_AMOUNT),
            monitor=m["monitor"],
            seed_proof=_ct_bytes(m, "seed_proof", where, MAX_PROOF_BYTES),
            modulus_proof=_ct_bytes(m, "modulus_proof", where, MAX_MODULUS_PROOF_BYTES),
            pow_nonce=_int(m, "pow_nonce", where),
        )


def _ct_bytes(
    m: Mapping[str, Any], name: str, where: str, max_len: int = MAX_CIPHERTEXT_BYTES
) -> bytes:
    v = _bytes(m, name, where)
    if not 0 < len(v) <= max_len:
        raise BadMessage(f"{where}.{name} must be 1..{max_len} bytes, got {len(v)}")
    return v


def _schema_version(m: Any, where: str) -> None:
    if type(m) is dict and m.get("sv") != BALANCE_SCHEMA_VERSION:
        raise BadMessage(
            f"{where}.sv must be {BALANCE_SCHEMA_VERSION} (older bodies, without a sound proof "
            "that the seed encrypts 0, are no longer accepted)"
        )


COMMIT_SCHEMA_VERSION = 2
"""``sv`` of ``commit_order`` bodies. Version 2 added ``leg_proofs``: for every leg, the proofs
that its sender and recipient chain keys signed the order id (:mod:`kofo.wire.legkeys`).
Version 1 bodies are refused (a sybil could commit an order copying a stranger's HTLC terms
and have it settled by the stranger's locks)."""

LegProofs = tuple[tuple[bytes | None, bytes | None], ...]
"""Per leg ``(sender proof, recipient proof)``; None only in a take evidence's order, for the
roles of the provider (who adds its own when it commits)."""


@dataclass(frozen=True, slots=True)
class CommitOrder:
    order: SettlementOrder
    signatures: tuple[OrderSignature, ...]
    signed_bytes: bytes | None = field(default=None, compare=False, repr=False)
    """``order.signing_bytes()`` as received, when parsed from the wire (saves re-encoding)."""
    leg_proofs: LegProofs = ()

    def as_map(self) -> dict[str, Any]:
        return {
            "sv": COMMIT_SCHEMA_VERSION,
            "order": self.order.as_map(),
            "signatures": [s.as_map() for s in self.signatures],
            # none yet: one null pair per leg (refused at commit as unproven, by leg and role)
            "leg_proofs": [list(p) for p in self.leg_proofs]
            or [[None, None] for _ in self.order.legs],
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "commit_order") -> CommitOrder:
        if type(m) is dict and m.get("sv") != COMMIT_SCHEMA_VERSION:
            raise BadMessage(
                f"{where}.sv must be {COMMIT_SCHEMA_VERSION} (older orders carry no proofs "
                "of control of their leg keys)"
            )
        _exact_keys(m, {"sv", "order", "signatures", "leg_proofs"}, where)
        sigs = []
        for i, s in enumerate(_list(m, "signatures", where, MAX_LEGS + MAX_RELAYS)):
            w = f"{where}.signatures[{i}]"
            _exact_keys(s, {"signer", "sig"}, w)
            sigs.append(
                OrderSignature(_bytes(s, "signer", w, NODE_ID_SIZE), _bytes(s, "sig", w, 64))
            )
        order = SettlementOrder.from_map(m["order"], f"{where}.order")
        n = len(order.legs)
        proofs: list[tuple[bytes | None, bytes | None]] = []
        for i, p in enumerate(_list(m, "leg_proofs", where, n, min_len=n)):
            w = f"{where}.leg_proofs[{i}]"
            if not isinstance(p, list) or len(p) != 2:
                raise BadMessage(f"{w} must be a list [sender proof, recipient proof]")
            for role, v in zip(("sender", "recipient"), p, strict=True):
                if v is not None and (not isinstance(v, bytes) or len(v) not in (64, 65)):
                    raise BadMessage(f"{w} ({role}) must be a 64- or 65-byte proof or null")
            proofs.append((p[0], p[1]))
        # from_map accepted exactly the schema's fields with their exact types, so the received
        # map re-encodes to what the parties signed; cbor2 directly avoids a second type walk.
        signed = ORDER_DOMAIN + cbor2.dumps(m["order"], canonical=True)
        return cls(order, tuple(sigs), signed, tuple(proofs))

    def verify_signatures(self) -> None:
        """Every party signed, nobody else did, and every signature verifies; and every leg
        key proved its control (:meth:`verify_leg_proofs`)."""
        self.verify_party_signatures()
        self.verify_leg_proofs()

    def verify_party_signatures(self) -> None:
        """Every party signed, nobody else did, and every signature verifies."""
        parties = self.order.parties()
        signers = [s.signer for s in self.signatures]
        if sorted(signers) != sorted(parties) or len(set(signers)) != len(signers):
            missing = [p.hex() for p in parties if p not in signers]
            raise BadSignature(
                f"order signatures must be exactly the route's parties; missing {missing}"
            )
        msg = self.signed_bytes or self.order.signing_bytes()
        for s in self.signatures:
            verify_ed25519(s.signer, s.signature, msg, "order")

    def verify_leg_proofs(self, *, absent_for: bytes | None = None) -> None:
        """Every leg's sender and recipient keys signed the order id (:mod:`kofo.wire.legkeys`):
        at most ``2 * MAX_LEGS`` secp256k1 operations. ``absent_for``: a node whose roles may
        lack their proof (a take evidence's provider); a proof present is checked anyway."""
        order = self.order
        if len(self.leg_proofs) != len(order.legs):
            raise LegKeyUnproven(
                f"order {order.order_id.hex()}: leg_proofs must have one entry per leg "
                f"({len(order.legs)}), got {len(self.leg_proofs)}"
            )
        for i, (leg, pair) in enumerate(zip(order.legs, self.leg_proofs, strict=True)):
            for role, node, address, proof in (
                (LegRole.SENDER, leg.sender, leg.sender_address, pair[0]),
                (LegRole.RECIPIENT, leg.recipient, leg.recipient_address, pair[1]),
            ):
                name = role.name.lower()
                if proof is None:
                    if absent_for is not None and node == absent_for:
                        continue
                    raise LegKeyUnproven(
                        f"order {order.order_id.hex()} legs[{i}] {name}: no proof of control "
                        f"of {name}_address {address}"
                    )
                if key_kind(address) is None:
                    raise LegKeyUnproven(
                        f"order {order.order_id.hex()} legs[{i}] {name}: {name}_address "
                        f"{address!r} is neither an Ethereum address nor a compressed "
                        "secp256k1 public key: its control cannot be proven"
                    )
                if not verify_leg_key(address, proof, order.order_id, i, role):
                    raise LegKeyUnproven(
                        f"order {order.order_id.hex()} legs[{i}] {name}: the proof is not by "
                        f"the key of {name}_address {address}"
                    )

    def with_leg_proofs(self, proofs: Mapping[tuple[int, LegRole], bytes]) -> CommitOrder:
        """This commit with ``proofs`` (by (leg, role)) added to those it carries."""
        current = list(self.leg_proofs) or [(None, None)] * len(self.order.legs)
        for (i, role), proof in proofs.items():
            s, r = current[i]
            current[i] = (proof, r) if role is LegRole.SENDER else (s, proof)
        return dataclasses.replace(self, leg_proofs=tuple(current))


def leg_roles_of(order: SettlementOrder, node: bytes) -> list[tuple[int, LegRole, str]]:
    """The (leg, role, address) whose key ``node`` holds in ``order``: what it must prove."""
    out = []
    for i, leg in enumerate(order.legs):
        if leg.sender == node:
            out.append((i, LegRole.SENDER, leg.sender_address))
        if leg.recipient == node:
            out.append((i, LegRole.RECIPIENT, leg.recipient_address))
    return out


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    order_id: bytes
    leg: int
    outcome: LegOutcome
    txid: str

    def as_map(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "leg": self.leg,
            "outcome": self.outcome.value,
            "txid": self.txid,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "report_outcome") -> ReportOutcome:
        _exact_keys(m, {"order_id", "leg", "outcome", "txid"}, where)
        return cls(
            order_id=_bytes(m, "order_id", where, ORDER_ID_SIZE),
            leg=_int(m, "leg", where, maximum=MAX_LEGS - 1),
            outcome=_enum(m, "outcome", where, LegOutcome),
            txid=_str(m, "txid", where, max_len=128),
        )


@dataclass(frozen=True, slots=True)
class Quote:
    """A provider's firm price, signed by it in the exchange layer: it will pay ``give_amount``
    of ``give_asset`` for ``take_amount`` of ``take_asset`` until ``valid_until`` (unix), to
    ``taker`` (the node it answers; 32 zero bytes: anyone). Naming the taker keeps a stranger
    who copies the quote from recording the take first and never co-signing."""

    quote_id: bytes
    provider: bytes
    give_asset: str
    give_amount: int
    take_asset: str
    take_amount: int
    valid_until: int
    taker: bytes = bytes(NODE_ID_SIZE)

    def as_map(self) -> dict[str, Any]:
        return {
            "quote_id": self.quote_id,
            "provider": self.provider,
            "give_asset": self.give_asset,
            "give_amount": self.give_amount,
            "take_asset": self.take_asset,
            "take_amount": self.take_amount,
            "valid_until": self.valid_until,
            "taker": self.taker,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "quote") -> Quote:
        _exact_keys(m, set(cls.__slots__), where)
        return cls(
            quote_id=_bytes(m, "quote_id", where, QUOTE_ID_SIZE),
            provider=_bytes(m, "provider", where, NODE_ID_SIZE),
            give_asset=_str(m, "give_asset", where),
            give_amount=_int(m, "give_amount", where, minimum=1, maximum=MAX_AMOUNT),
            take_asset=_str(m, "take_asset", where),
            take_amount=_int(m, "take_amount", where, minimum=1, maximum=MAX_AMOUNT),
            valid_until=_int(m, "valid_until", where),
            taker=_bytes(m, "taker", where, NODE_ID_SIZE),
        )

    def signing_bytes(self) -> bytes:
        return QUOTE_DOMAIN + encode(self.as_map())


@dataclass(frozen=True, slots=True)
class Take:
    """A taker's acceptance of a quote at its price, signed by the taker before it expired.

    ``order_id`` is the order the taker committed to for this quote: the evidence that records
    the take carries that order with the signatures of every party but the provider (the
    taker's included), so the provider can always commit it alone, and a taker that never
    co-signs can never record a take (version 2 of the evidence, issue 17)."""

    quote_id: bytes
    taker: bytes
    ts: int
    order_id: bytes = bytes(ORDER_ID_SIZE)

    def as_map(self) -> dict[str, Any]:
        return {
            "quote_id": self.quote_id,
            "taker": self.taker,
            "ts": self.ts,
            "order_id": self.order_id,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "take") -> Take:
        _exact_keys(m, {"quote_id", "taker", "ts", "order_id"}, where)
        return cls(
            quote_id=_bytes(m, "quote_id", where, QUOTE_ID_SIZE),
            taker=_bytes(m, "taker", where, NODE_ID_SIZE),
            ts=_int(m, "ts", where),
            order_id=_bytes(m, "order_id", where, ORDER_ID_SIZE),
        )

    def signing_bytes(self) -> bytes:
        return TAKE_DOMAIN + encode(self.as_map())


EVIDENCE_SCHEMA_VERSION = 2
"""``sv`` of ``file_evidence`` bodies. Version 2: a quote's take names the order the taker
committed to, and the evidence carries that order signed by every party but the provider.
Version 1 bodies are refused (a named taker could record a take and never co-sign)."""


@dataclass(frozen=True, slots=True)
class FileEvidence:
    """Misbehaviour evidence.

    ``leg_not_locked``: ``order_id`` and ``leg`` are set; the ledger checks its own record (no
    lock attested by the leg's ``lock_by`` plus the grace, every earlier leg locked in time).
    ``quote_not_honoured``: ``quote``/``quote_sig`` (by the provider), ``take``/``take_sig``
    (by the taker) and ``order`` (the order ``take.order_id``, with the signatures of every
    party but the provider) are set; the ledger checks every signature, that the order uses
    the quote and could be committed, that the take came in time, and that no committed order
    with the taker used the quote by ``valid_until`` plus the honour grace.
    """

    kind: EvidenceKind
    order_id: bytes | None = None
    leg: int | None = None
    quote: Quote | None = None
    quote_sig: bytes | None = None
    take: Take | None = None
    take_sig: bytes | None = None
    order: CommitOrder | None = None

    def as_map(self) -> dict[str, Any]:
        return {
            "sv": EVIDENCE_SCHEMA_VERSION,
            "kind": self.kind.value,
            "order_id": self.order_id,
            "leg": self.leg,
            "quote": None if self.quote is None else self.quote.as_map(),
            "quote_sig": self.quote_sig,
            "take": None if self.take is None else self.take.as_map(),
            "take_sig": self.take_sig,
            "order": None if self.order is None else self.order.as_map(),
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "file_evidence") -> FileEvidence:
        _exact_keys(
            m,
            {"sv", "kind", "order_id", "leg", "quote", "quote_sig", "take", "take_sig", "order"},
            where,
        )
        if m["sv"] != EVIDENCE_SCHEMA_VERSION:
            raise BadMessage(
                f"{where}.sv must be {EVIDENCE_SCHEMA_VERSION} (version 1 takes named no order)"
            )
        kind = _enum(m, "kind", where, EvidenceKind)
        if kind is EvidenceKind.LEG_NOT_LOCKED:
            return cls(
                kind,
                order_id=_bytes(m, "order_id", where, ORDER_ID_SIZE),
                leg=_int(m, "leg", where, maximum=MAX_LEGS - 1),
            )
        return cls(
            kind,
            quote=Quote.from_map(m["quote"], f"{where}.quote"),
            quote_sig=_bytes(m, "quote_sig", where, 64),
            take=Take.from_map(m["take"], f"{where}.take"),
            take_sig=_bytes(m, "take_sig", where, 64),
            order=CommitOrder.from_map(m["order"], f"{where}.order"),
        )


@dataclass(frozen=True, slots=True)
class WithdrawFees:
    """Withdraw the whole accrued fee balance in ``asset``.

    The node reveals the balance's plaintext ``amount`` and the ciphertext's randomness
    ``randomness`` (recoverable with its private key); validators re-encrypt and compare.
    ``new_seed`` is a fresh encryption of 0 that re-blinds the balance after the reveal, and
    ``new_seed_proof`` proves it encrypts 0 (bound to the sender, asset and ``seq``). ``seq`` is
    the number of withdrawals the node made before in this asset: the ledger accepts only the
    next one, so the same signed withdrawal can never be applied twice.
    """

    asset: str
    amount: int
    randomness: bytes
    new_seed: bytes
    payout_address: str
    seq: int = 0
    new_seed_proof: bytes = b""

    def as_map(self) -> dict[str, Any]:
        return {
            "sv": BALANCE_SCHEMA_VERSION,
            "asset": self.asset,
            "amount": self.amount,
            "randomness": self.randomness,
            "new_seed": self.new_seed,
            "new_seed_proof": self.new_seed_proof,
            "payout_address": self.payout_address,
            "seq": self.seq,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "withdraw_fees") -> WithdrawFees:
        _schema_version(m, where)
        _exact_keys(
            m,
            {
                "sv",
                "asset",
                "amount",
                "randomness",
                "new_seed",
                "new_seed_proof",
                "payout_address",
                "seq",
            },
            where,
        )
        return cls(
            asset=_str(m, "asset", where),
            amount=_int(m, "amount", where, minimum=1, maximum=MAX_AMOUNT),
            randomness=_ct_bytes(m, "randomness", where),
            new_seed=_ct_bytes(m, "new_seed", where),
            payout_address=_str(m, "payout_address", where),
            seq=_int(m, "seq", where),
            new_seed_proof=_ct_bytes(m, "new_seed_proof", where, MAX_PROOF_BYTES),
        )


@dataclass(frozen=True, slots=True)
class RegisterValidatorKey:
    """Binds a validator's CometBFT consensus key (Ed25519) to the secp256k1 key (Ethereum
    address) it signs bond-vault decisions with. Two proofs of possession:
    ``consensus_sig`` by the consensus key over ``KOFO/validator-key/v1\0 || eth_address ||
    sender`` (the envelope's sender: the node whose attested bond becomes the validator's
    voting power), and
    ``eth_sig`` (65 bytes r || s || v) by the secp256k1 key over
    ``keccak256(KOFO/validator-key/v1\0 || consensus_key)``."""

    consensus_key: bytes
    eth_address: bytes
    consensus_sig: bytes
    eth_sig: bytes

    def as_map(self) -> dict[str, Any]:
        return {
            "consensus_key": self.consensus_key,
            "eth_address": self.eth_address,
            "consensus_sig": self.consensus_sig,
            "eth_sig": self.eth_sig,
        }

    @classmethod
    def from_map(cls, m: Any, where: str = "register_validator_key") -> RegisterValidatorKey:
        _exact_keys(m, {"consensus_key", "eth_address", "consensus_sig", "eth_sig"}, where)
        return cls(
            consensus_key=_bytes(m, "consensus_key", where, 32),
            eth_address=_bytes(m, "eth_address", where, 20),
            consensus_sig=_bytes(m, "consensus_sig", where, 64),
            eth_sig=_bytes(m, "eth_sig", where, 65),
        )


@dataclass(frozen=True, slots=True)
class Unbond:
    """Asks for ``amount`` (wei) of the sender's vault bond back. The first one starts the
    unbonding delay (the amount stops counting for importance and power at once, and stays
    slashable); the same tx after the delay records the release decision for the vault.
    ``seq`` is the node's count of completed unbonds: a replayed old unbond never starts a new
    one. ``payout`` is the 20-byte Ethereum address the vault pays the release to (the node's
    own word, signed here: the vault keeps no owner a stranger could claim first)."""

    amount: int
    seq: int
    payout: bytes

    def as_map(self) -> dict[str, Any]:
        return {"amount": self.amount, "seq": self.seq, "payout": self.payout}

    @classmethod
    def from_map(cls, m: Any, where: str = "unbond") -> Unbond:
        _exact_keys(m, {"amount", "seq", "payout"}, where)
        payout = _bytes(m, "payout", where, 20)
        if payout == bytes(20):
            raise BadMessage(f"{where}.payout must not be the zero address")
        return cls(
            amount=_int(m, "amount", where, minimum=1, maximum=MAX_AMOUNT),
            seq=_int(m, "seq", where),
            payout=payout,
        )


TxBody = (
    RegisterNode
    | CommitOrder
    | ReportOutcome
    | FileEvidence
    | WithdrawFees
    | RegisterValidatorKey
    | Unbond
)

_PARSERS: dict[str, Any] = {
    TX_REGISTER_NODE: RegisterNode.from_map,
    TX_COMMIT_ORDER: CommitOrder.from_map,
    TX_REPORT_OUTCOME: ReportOutcome.from_map,
    TX_FILE_EVIDENCE: FileEvidence.from_map,
    TX_WITHDRAW_FEES: WithdrawFees.from_map,
    TX_REGISTER_VALIDATOR_KEY: RegisterValidatorKey.from_map,
    TX_UNBOND: Unbond.from_map,
}
_TYPE_OF: dict[type, str] = {
    RegisterNode: TX_REGISTER_NODE,
    CommitOrder: TX_COMMIT_ORDER,
    ReportOutcome: TX_REPORT_OUTCOME,
    FileEvidence: TX_FILE_EVIDENCE,
    WithdrawFees: TX_WITHDRAW_FEES,
    RegisterValidatorKey: TX_REGISTER_VALIDATOR_KEY,
    Unbond: TX_UNBOND,
}


def tx_type(body: TxBody) -> str:
    return _TYPE_OF[type(body)]


def parse_tx_body(msg_type: str, body: dict[str, Any]) -> TxBody:
    """The typed body of a ledger transaction; :class:`BadMessage` names the bad field."""
    parser = _PARSERS.get(msg_type)
    if parser is None:
        raise BadMessage(f"envelope type {msg_type!r} is not a clearance transaction")
    result: TxBody = parser(body)
    return result


def sign_tx(key: Ed25519PrivateKey, body: TxBody, *, ts: int | None = None) -> bytes:
    """The bytes of a ledger transaction: ``body`` in an envelope signed by ``key``."""
    msg: SignedMessage = sign(key, tx_type(body), body.as_map(), ts=ts)
    return msg.to_bytes()


# ---------------------------------------------------------------------------------------------
# content-derived ids: a stranger who copies an id from the mempool cannot reuse it for other
# content, because the ledger recomputes the id from what the parties signed


def derive_order_id(order: SettlementOrder) -> bytes:
    """``sha256(ORDER_ID_DOMAIN || canonical order map with order_id = 16 zero bytes)[:16]``."""
    m = order.as_map()
    m["order_id"] = bytes(ORDER_ID_SIZE)
    return hashlib.sha256(ORDER_ID_DOMAIN + encode(m)).digest()[:ORDER_ID_SIZE]


def with_derived_id(order: SettlementOrder) -> SettlementOrder:
    """``order`` with its ``order_id`` set to :func:`derive_order_id` (what the ledger requires)."""
    return dataclasses.replace(order, order_id=derive_order_id(order))


def derive_quote_id(quote: Quote) -> bytes:
    """``sha256(QUOTE_ID_DOMAIN || canonical quote map with quote_id = 16 zero bytes)[:16]``:
    the provider cannot give two different quotes the same id."""
    m = quote.as_map()
    m["quote_id"] = bytes(QUOTE_ID_SIZE)
    return hashlib.sha256(QUOTE_ID_DOMAIN + encode(m)).digest()[:QUOTE_ID_SIZE]
