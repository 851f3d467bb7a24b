"""Swap protocol messages: propose, accept, locked, redeemed, refunded, cancel, error, and the
cooperative claim's cosign_claim / claim_cosigned.

Each travels as a signed envelope (:mod:`kofo.wire.envelope`) of type ``swap.<name>`` whose body
is the map below, in canonical CBOR (:mod:`kofo.wire.codec`). Schemas, with test vectors, are in
``docs/swap.md``. The chain is the source of truth: a ``locked`` or ``redeemed`` notice only tells
the receiver where to look (and what the sender *claims*, which is evidence if it is false).

Terms on the wire::

    {"swap_id": bytes(16), "payment_hash": bytes(32),
     "initiator_leg": leg, "participant_leg": leg,
     "initiator_lock_by": expiry, "participant_lock_by": expiry, "initiator_redeem_by": expiry,
     "initiator_node": bytes(32), "participant_node": bytes(32)}
    leg    = {"chain": text, "amount": uint, "sender": text, "recipient": text,
              "expiry": expiry, "token": text | null, "confirmations": uint,
              ? "output": text}
    expiry = {"unit": "height" | "time", "value": uint}

``output`` (schema version 2) is present only when a leg's HTLC is not its chain's default form
(``"p2tr"`` on Bitcoin-like chains); a body carries the lowest schema version that can hold it,
so a version-1 node refuses a Taproot proposal by its version instead of misreading it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.errors import KofoError
from kofo.wire.codec import encode
from kofo.wire.envelope import BadMessage, ReplayGuard, SignedMessage, open_message, sign
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.terms import HtlcTerms, Leg, SwapTerms

SCHEMA_VERSION = 2
"""Newest version of the swap body schemas; a body carries the lowest version that can hold it
as ``"sv"`` (1: no leg names an ``output`` and it is not a cooperative-claim message), so the
schemas evolve without a new envelope version and older nodes keep working for what they
understand."""

_LEG_FIELDS = frozenset({"chain", "amount", "sender", "recipient", "expiry", "token"})

MAX_TEXT = 256
"""Addresses, chain names and reasons are short; a longer string is malformed or hostile."""


def _get(m: Any, name: str, kind: type, where: str) -> Any:
    if not isinstance(m, dict):
        raise BadMessage(f"{where} must be a map")
    if name not in m:
        raise BadMessage(f"{where}: field {name!r} is missing")
    value = m[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadMessage(f"{where}: field {name!r} must be a non-negative integer")
    elif not isinstance(value, kind):
        raise BadMessage(f"{where}: field {name!r} must be {kind.__name__}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise BadMessage(f"{where}: field {name!r} is longer than {MAX_TEXT} characters")
    return value


def _bytes(m: Any, name: str, size: int, where: str) -> bytes:
    value: bytes = _get(m, name, bytes, where)
    if len(value) != size:
        raise BadMessage(f"{where}: field {name!r} must be {size} bytes, got {len(value)}")
    return value


def expiry_to_wire(e: Expiry) -> dict[str, Any]:
    return {"unit": "height" if isinstance(e, BlockHeight) else "time", "value": e.value}


def expiry_from_wire(m: Any, where: str) -> Expiry:
    unit = _get(m, "unit", str, where)
    value = _get(m, "value", int, where)
    if unit == "height":
        return BlockHeight(value)
    if unit == "time":
        return UnixTime(value)
    raise BadMessage(f"{where}: unit must be 'height' or 'time', got {unit!r}")


def _with_output(m: dict[str, Any], output: str | None) -> dict[str, Any]:
    if output is not None:
        m["output"] = output
    return m


def _fields(m: Any, where: str, known: frozenset[str]) -> str | None:
    """Refuse a map ``m`` with fields beyond ``known`` and ``output`` (a field this node does not
    know must not be silently dropped); return the ``output``, if present."""
    if not isinstance(m, dict):
        raise BadMessage(f"{where} must be a map")
    extra = set(m) - known - {"output"}
    if extra:
        raise BadMessage(f"{where}: unknown fields {sorted(extra)}")
    if "output" not in m:
        return None
    output: str = _get(m, "output", str, where)
    if not output:
        raise BadMessage(f"{where}: field 'output' must not be empty")
    return output


def _token(m: Any, where: str) -> str | None:
    token = _get(m, "token", object, where)
    if token is not None and not isinstance(token, str):
        raise BadMessage(f"{where}: field 'token' must be text or null")
    return token


def _leg_to_wire(leg: Leg) -> dict[str, Any]:
    m = {
        "chain": leg.chain,
        "amount": leg.amount,
        "sender": leg.sender,
        "recipient": leg.recipient,
        "expiry": expiry_to_wire(leg.expiry),
        "token": leg.token,
        "confirmations": leg.confirmations,
    }
    return _with_output(m, leg.output)


def _leg_from_wire(m: Any, where: str) -> Leg:
    output = _fields(m, where, _LEG_FIELDS | {"confirmations"})
    token = _token(m, where)
    amount = _get(m, "amount", int, where)
    if amount == 0:
        raise BadMessage(f"{where}: field 'amount' must be positive")
    return Leg(
        chain=_get(m, "chain", str, where),
        amount=amount,
        sender=_get(m, "sender", str, where),
        recipient=_get(m, "recipient", str, where),
        expiry=expiry_from_wire(_get(m, "expiry", dict, where), f"{where}.expiry"),
        token=token,
        confirmations=_get(m, "confirmations", int, where),
        output=output,
    )


def terms_to_wire(t: SwapTerms) -> dict[str, Any]:
    return {
        "swap_id": t.swap_id,
        "payment_hash": t.payment_hash,
        "initiator_leg": _leg_to_wire(t.initiator_leg),
        "participant_leg": _leg_to_wire(t.participant_leg),
        "initiator_lock_by": expiry_to_wire(t.initiator_lock_by),
        "participant_lock_by": expiry_to_wire(t.participant_lock_by),
        "initiator_redeem_by": expiry_to_wire(t.initiator_redeem_by),
        "initiator_node": t.initiator_node,
        "participant_node": t.participant_node,
    }


def terms_from_wire(m: Any) -> SwapTerms:
    w = "terms"
    return SwapTerms(
        swap_id=_bytes(m, "swap_id", 16, w),
        payment_hash=_bytes(m, "payment_hash", 32, w),
        initiator_leg=_leg_from_wire(_get(m, "initiator_leg", dict, w), "initiator_leg"),
        participant_leg=_leg_from_wire(_get(m, "participant_leg", dict, w), "participant_leg"),
        initiator_lock_by=expiry_from_wire(_get(m, "initiator_lock_by", dict, w), w),
        participant_lock_by=expiry_from_wire(_get(m, "participant_lock_by", dict, w), w),
        initiator_redeem_by=expiry_from_wire(_get(m, "initiator_redeem_by", dict, w), w),
        initiator_node=_bytes(m, "initiator_node", 32, w),
        participant_node=_bytes(m, "participant_node", 32, w),
    )


def terms_digest(t: SwapTerms) -> bytes:
    """What an ``accept`` commits to: sha256 of the canonical terms."""
    return hashlib.sha256(encode(terms_to_wire(t))).digest()


def htlc_to_wire(h: HtlcTerms) -> dict[str, Any]:
    m = {
        "chain": h.chain,
        "payment_hash": h.payment_hash,
        "amount": h.amount,
        "sender": h.sender,
        "recipient": h.recipient,
        "expiry": expiry_to_wire(h.expiry),
        "token": h.token,
    }
    return _with_output(m, h.output)


def htlc_from_wire(m: Any) -> HtlcTerms:
    w = "htlc"
    output = _fields(m, w, _LEG_FIELDS | {"payment_hash"})
    token = _token(m, w)
    try:
        return HtlcTerms(
            chain=_get(m, "chain", str, w),
            payment_hash=_bytes(m, "payment_hash", 32, w),
            amount=_get(m, "amount", int, w),
            sender=_get(m, "sender", str, w),
            recipient=_get(m, "recipient", str, w),
            expiry=expiry_from_wire(_get(m, "expiry", dict, w), "htlc.expiry"),
            token=token,
            output=output,
        )
    except KofoError as exc:
        raise BadMessage(f"htlc: {exc}") from None


# --------------------------------------------------------------------------- message bodies


@dataclass(frozen=True, slots=True)
class Propose:
    terms: SwapTerms


@dataclass(frozen=True, slots=True)
class Accept:
    swap_id: bytes
    terms_digest: bytes


@dataclass(frozen=True, slots=True)
class Locked:
    """The sender locked its leg: where the HTLC is and the terms it says it used."""

    swap_id: bytes
    locator: str
    txid: str
    htlc: HtlcTerms


@dataclass(frozen=True, slots=True)
class Redeemed:
    swap_id: bytes
    chain: str
    txid: str


@dataclass(frozen=True, slots=True)
class Refunded:
    swap_id: bytes
    chain: str
    txid: str


@dataclass(frozen=True, slots=True)
class Cancel:
    swap_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Error:
    swap_id: bytes
    code: str
    message: str


MAX_CLAIM_BYTES = 1_000
"""A claim to co-sign spends one input to a few outputs (~150 bytes); more is not a claim."""


@dataclass(frozen=True, slots=True)
class CosignClaim:
    """The recipient of a Taproot leg asks its sender to co-sign a key-path claim of it.

    ``claim`` is the unsigned transaction (64-byte placeholder witness), ``nonce`` the
    claimer's 66-byte MuSig2 public nonce, ``preimage`` the swap's secret: the co-signer gives
    up its refund only to someone who could claim by the leaf anyway (schema 2)."""

    swap_id: bytes
    chain: str
    claim: bytes
    nonce: bytes
    preimage: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClaimCosigned:
    """The sender's answer to :class:`CosignClaim`: its nonce and partial signature."""

    swap_id: bytes
    nonce: bytes
    partial_sig: bytes


SwapBody = (
    Propose | Accept | Locked | Redeemed | Refunded | Cancel | Error | CosignClaim | ClaimCosigned
)

_TYPES: dict[type, str] = {
    Propose: "swap.propose",
    Accept: "swap.accept",
    Locked: "swap.locked",
    Redeemed: "swap.redeemed",
    Refunded: "swap.refunded",
    Cancel: "swap.cancel",
    Error: "swap.error",
    CosignClaim: "swap.cosign_claim",
    ClaimCosigned: "swap.claim_cosigned",
}
MESSAGE_TYPES = tuple(_TYPES.values())


def body_to_wire(body: SwapBody) -> dict[str, Any]:
    m: dict[str, Any]
    if isinstance(body, Propose):
        m = {"terms": terms_to_wire(body.terms)}
    elif isinstance(body, Accept):
        m = {"swap_id": body.swap_id, "terms_digest": body.terms_digest}
    elif isinstance(body, Locked):
        m = {
            "swap_id": body.swap_id,
            "locator": body.locator,
            "txid": body.txid,
            "htlc": htlc_to_wire(body.htlc),
        }
    elif isinstance(body, Redeemed | Refunded):
        m = {"swap_id": body.swap_id, "chain": body.chain, "txid": body.txid}
    elif isinstance(body, Cancel):
        m = {"swap_id": body.swap_id, "reason": body.reason}
    elif isinstance(body, CosignClaim):
        m = {
            "swap_id": body.swap_id,
            "chain": body.chain,
            "claim": body.claim,
            "nonce": body.nonce,
            "preimage": body.preimage,
        }
    elif isinstance(body, ClaimCosigned):
        m = {"swap_id": body.swap_id, "nonce": body.nonce, "partial_sig": body.partial_sig}
    else:
        m = {"swap_id": body.swap_id, "code": body.code, "message": body.message}
    m["sv"] = _lowest_schema(body)
    return m


def _lowest_schema(body: SwapBody) -> int:
    """The lowest schema version that can carry ``body``: 2 once a leg names an ``output``,
    and for the cooperative-claim messages."""
    if isinstance(body, Propose):
        legs = (body.terms.initiator_leg, body.terms.participant_leg)
        return 2 if any(leg.output is not None for leg in legs) else 1
    if isinstance(body, Locked):
        return 2 if body.htlc.output is not None else 1
    if isinstance(body, CosignClaim | ClaimCosigned):
        return 2
    return 1


def body_from_wire(msg_type: str, m: dict[str, Any]) -> SwapBody:
    sv = _get(m, "sv", int, msg_type)
    if not 1 <= sv <= SCHEMA_VERSION:
        raise BadMessage(
            f"{msg_type}: schema version {sv} is not one this node reads (1..{SCHEMA_VERSION})"
        )
    body = _body_from_wire(msg_type, m)
    if sv < _lowest_schema(body):
        raise BadMessage(
            f"{msg_type}: this body needs schema version {_lowest_schema(body)}, it says {sv}"
        )
    return body


def _body_from_wire(msg_type: str, m: dict[str, Any]) -> SwapBody:
    keys = set(m) - {"sv"}

    def exact(*names: str) -> None:
        if keys != set(names):
            raise BadMessage(f"{msg_type}: fields must be exactly {sorted(names)}")

    if msg_type == "swap.propose":
        exact("terms")
        return Propose(terms_from_wire(_get(m, "terms", dict, msg_type)))
    swap_id = _bytes(m, "swap_id", 16, msg_type)
    if msg_type == "swap.accept":
        exact("swap_id", "terms_digest")
        return Accept(swap_id, _bytes(m, "terms_digest", 32, msg_type))
    if msg_type == "swap.locked":
        exact("swap_id", "locator", "txid", "htlc")
        return Locked(
            swap_id,
            _get(m, "locator", str, msg_type),
            _get(m, "txid", str, msg_type),
            htlc_from_wire(_get(m, "htlc", dict, msg_type)),
        )
    if msg_type in ("swap.redeemed", "swap.refunded"):
        exact("swap_id", "chain", "txid")
        cls = Redeemed if msg_type == "swap.redeemed" else Refunded
        return cls(swap_id, _get(m, "chain", str, msg_type), _get(m, "txid", str, msg_type))
    if msg_type == "swap.cancel":
        exact("swap_id", "reason")
        return Cancel(swap_id, _get(m, "reason", str, msg_type))
    if msg_type == "swap.cosign_claim":
        exact("swap_id", "chain", "claim", "nonce", "preimage")
        claim: bytes = _get(m, "claim", bytes, msg_type)
        if not 0 < len(claim) <= MAX_CLAIM_BYTES:
            raise BadMessage(f"{msg_type}: field 'claim' must be 1..{MAX_CLAIM_BYTES} bytes")
        return CosignClaim(
            swap_id,
            _get(m, "chain", str, msg_type),
            claim,
            _bytes(m, "nonce", 66, msg_type),
            _bytes(m, "preimage", 32, msg_type),
        )
    if msg_type == "swap.claim_cosigned":
        exact("swap_id", "nonce", "partial_sig")
        return ClaimCosigned(
            swap_id, _bytes(m, "nonce", 66, msg_type), _bytes(m, "partial_sig", 32, msg_type)
        )
    if msg_type == "swap.error":
        exact("swap_id", "code", "message")
        return Error(swap_id, _get(m, "code", str, msg_type), _get(m, "message", str, msg_type))
    raise BadMessage(f"unknown swap message type {msg_type!r}")


def sign_swap(
    key: Ed25519PrivateKey, body: SwapBody, *, ts: int | None = None, nonce: bytes | None = None
) -> SignedMessage:
    return sign(key, _TYPES[type(body)], body_to_wire(body), ts=ts, nonce=nonce)


def open_swap(
    data: bytes, guard: ReplayGuard | None = None, now: int | None = None
) -> tuple[SwapBody, bytes]:
    """Verify, replay-check and parse a swap message; returns the body and the sender's key.
    Raises ``bad_encoding``, ``bad_message``, ``bad_signature`` or ``replayed_message``."""
    msg = open_message(data)
    env = msg.envelope
    if env.type not in MESSAGE_TYPES:
        raise BadMessage(f"not a swap message: type {env.type!r}")
    body = body_from_wire(env.type, env.body)
    # Freshness last: a message that fails to parse must not burn its nonce.
    if guard is not None:
        guard.check(env, now)
    return body, env.sender
