"""Wire types of the exchange layer: frames, offers, claims, fulfils and route orders.

Every exchange message travels as one *frame* ``{"v": 1, "t": type, "b": body}`` in canonical
CBOR (:mod:`kofo.wire.codec`). The link a frame arrives on is already authenticated (see
``kofo.exchange.transport``), so frames themselves are not signed; what must be believed beyond
one link carries its own Ed25519 signature inside the body:

* an **offer** is a :class:`~kofo.wire.envelope.SignedMessage` by its maker's node key;
* a **claim** is a signed message by the initiator's *per-claim ephemeral key* (position 0), and
  carries a **path**: hop ``i`` appends ``(pub_i, sig_i)`` where ``sig_i`` is made by hop ``i``'s
  own per-claim ephemeral key over ``(claim_id, i, sig_{i-1})``. Each signature covers the one
  before it, so no hop can be removed, inserted or reordered, and no key in the path is linked to a
  node identity;
* a **fulfil** is a signed message by the filler's ephemeral key (v6: carrying the maker's
  offer proof sealed to the initiator, see :func:`make_offer_proof`); on the way back each
  hop adds a :class:`HopFee` signed by its ephemeral key for that claim: its acknowledgement
  that it carried the fulfil. The fee in it is always 0 in protocol v1: relays are paid their
  share of the protocol fee by the clearance ledger, as no leg of the route pays them.

Only the parties of the chosen route reveal their node keys, inside a sealed *join* the initiator
alone can open, and then co-sign a :class:`kofo.wire.orders.SettlementOrder`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.wire.codec import EncodingError, decode, encode
from kofo.wire.envelope import (
    BadMessage,
    BadSignature,
    check_signature,
    open_message,
    read_message,
    sign,
    verify_ed25519,
)

FRAME_VERSION = 6
"""Exchange link protocol version. 6 (this): a fulfil may carry ``op``, the filler's *offer
proof* sealed to the claim's ``reply_key`` (:func:`make_offer_proof`): the maker's node key
signs ``(claim_id, filler key, maker, offer_id)``, so the taker knows which makers of its book
have answered and ends its quote window once all have (docs/exchange.md, "The taker's quote
window"); relays see only a sealed box. 5: the provider's ``osig`` frame carries ``lp``, its
proofs of control of its leg keys (``[[leg, role, proof], ...]``, :mod:`kofo.wire.legkeys`),
which the initiator checks and puts in the ``commit_order`` with its own. 4: an order's four
deadlines are the initiator's plan for the chain pair (co-signers check only their order and
bounds, the provider its own margins), no longer one fixed derivation. 3: a join carries the
party's signed ``contact`` (``"host:port"`` where it accepts links, or ``""``; signed under
``KOFO/join/v2``), an order's leg expiry may be a block height (``expiry_time`` stays the unix
estimate), and the ``dm`` / ``dm_reply`` frames carry direct messages between two nodes. 2: an
offer's ``seq`` is per maker (its signing time in ms, strictly increasing over all the maker's
offers), a claim's path may start with the initiator's own dummy hops, and an ``order`` frame
carries every position's join so each party checks who carried the claim. Older nodes are
refused at the handshake (``frame: unsupported link protocol version``)."""

MAX_FRAME_BYTES = 256 * 1024
"""The biggest exchange frame is a fulfil with a full path and fees (a few KiB) or a peer list;
256 KiB leaves room for growth while bounding what one peer can make us buffer."""

MAX_HOPS = 8
"""A claim travels at most this many hops. Every hop adds one HTLC leg pair and one safety margin
to the first leg's expiry, so routes longer than this lock funds for too long to be useful; the
cap also bounds the path-verification work (one signature per hop) a claim can cost us."""

MAX_CLAIM_HORIZON_MS = 30_000
"""A claim's deadline may lie at most 30 s ahead: quotes are only good for moments, and a far
deadline would make every hop keep routing state for a long time."""

MAX_ASSET_LEN = 64
MAX_PEERS_IN_LIST = 64

PATH_DOMAIN = b"KOFO/path/v1\x00"
FEE_DOMAIN = b"KOFO/fee/v1\x00"
JOIN_DOMAIN = b"KOFO/join/v2\x00"

MAX_CONTACT_LEN = 262
"""A contact is ``host:port``: a DNS name (at most 253 characters) or an IP address, a colon,
and a port."""
QUOTE_ID_DOMAIN = b"KOFO/quote-id/v1\x00"
OFFER_PROOF_DOMAIN = b"KOFO/offer-proof/v1\x00"
MAX_OFFER_PROOF_BYTES = 256
"""A sealed offer proof is 32 + 16 + 117 bytes (X25519 key, AEAD tag, CBOR of maker, offer id
and signature); 256 leaves room without letting a filler pad fulfils."""
NO_OFFER_ID = bytes(16)
"""The offer id an offer proof names for a fill from the maker's extra liquidity (no offer)."""

MSG_OFFER = "offer"
MSG_CLAIM = "claim"
MSG_FULFIL = "fulfil"
MSG_ACCEPT = "accept"


# --------------------------------------------------------------------------- field checks


def _get(m: dict[str, Any], name: str, kind: type, *, where: str) -> Any:
    if name not in m:
        raise BadMessage(f"{where}: field {name!r} is missing")
    value = m[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadMessage(f"{where}: field {name!r} must be an integer, got {value!r:.40}")
    elif not isinstance(value, kind):
        raise BadMessage(f"{where}: field {name!r} must be {kind.__name__}")
    return value


def _bytes(m: dict[str, Any], name: str, size: int, *, where: str) -> bytes:
    value: bytes = _get(m, name, bytes, where=where)
    if len(value) != size:
        raise BadMessage(f"{where}: field {name!r} must be {size} bytes, got {len(value)}")
    return value


def _nonneg(m: dict[str, Any], name: str, *, where: str, positive: bool = False) -> int:
    value: int = _get(m, name, int, where=where)
    if value < (1 if positive else 0):
        raise BadMessage(f"{where}: field {name!r} must be {'>' if positive else '>='} 0: {value}")
    return value


def _asset(m: dict[str, Any], name: str, *, where: str) -> str:
    value: str = _get(m, name, str, where=where)
    if not value or len(value) > MAX_ASSET_LEN:
        raise BadMessage(f"{where}: field {name!r} must be 1..{MAX_ASSET_LEN} chars: {value!r:.70}")
    return value


def _exact_keys(m: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise BadMessage(f"{where}: must be a map")
    if set(m) != keys:
        raise BadMessage(f"{where}: fields must be exactly {sorted(keys)}, got {sorted(m)}")
    return m


def _cbor_bytes_header(n: int) -> bytes:
    if n < 24:
        return bytes([0x40 | n])
    if n < 1 << 8:
        return bytes([0x58, n])
    if n < 1 << 16:
        return b"\x59" + n.to_bytes(2, "big")
    return b"\x5a" + n.to_bytes(4, "big")


_OFFER_FRAME_HEAD = b"\xa3\x61b\xa1\x61m"
_OFFER_FRAME_TAIL = b"\x61t\x65offer\x61v" + bytes([FRAME_VERSION])


def offer_frame_bytes(raw: bytes) -> bytes:
    """``Frame("offer", {"m": raw}).to_bytes()`` by concatenation (canonical CBOR: keys b, t,
    v), for sending a whole book without an encoder call per offer; equal by a test."""
    return _OFFER_FRAME_HEAD + _cbor_bytes_header(len(raw)) + raw + _OFFER_FRAME_TAIL


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    """One unit on a link: a message type and its body."""

    type: str
    body: dict[str, Any]

    def to_bytes(self) -> bytes:
        return encode({"v": FRAME_VERSION, "t": self.type, "b": self.body})

    @staticmethod
    def from_bytes(data: bytes) -> Frame:
        if len(data) > MAX_FRAME_BYTES:
            raise BadMessage(f"frame is {len(data)} bytes, more than {MAX_FRAME_BYTES}")
        try:
            m = decode(data)
        except EncodingError as exc:
            raise BadMessage(f"frame: {exc}") from None
        m = _exact_keys(m, {"v", "t", "b"}, "frame")
        v = _get(m, "v", int, where="frame")
        if v != FRAME_VERSION:
            raise BadMessage(
                f"frame: unsupported link protocol version {v} (this node speaks "
                f"{FRAME_VERSION}; both ends must run the same exchange protocol)"
            )
        t: str = _get(m, "t", str, where="frame")
        if not t or len(t) > 32:
            raise BadMessage(f"frame: bad type {t!r:.40}")
        return Frame(t, _get(m, "b", dict, where="frame"))


# --------------------------------------------------------------------------- offers


@dataclass(frozen=True, slots=True)
class Offer:
    """A maker's standing quote: it receives ``buy`` and pays ``sell``.

    For an input of ``n`` base units of ``buy`` (``min_in <= n <= max_in``) the maker pays
    ``n * price_num // price_den - fee`` base units of ``sell``. ``partial`` says whether the
    maker fills a claim larger than ``max_in`` with ``max_in``. ``expiry_ms`` is absolute unix
    time in milliseconds. A higher ``seq`` for the same ``(maker, offer_id)`` supersedes; an offer
    with ``max_in == 0`` withdraws it.
    """

    offer_id: bytes
    buy: str
    sell: str
    price_num: int
    price_den: int
    min_in: int
    max_in: int
    partial: bool
    fee: int
    expiry_ms: int
    seq: int

    def to_body(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id,
            "buy": self.buy,
            "sell": self.sell,
            "price_num": self.price_num,
            "price_den": self.price_den,
            "min_in": self.min_in,
            "max_in": self.max_in,
            "partial": self.partial,
            "fee": self.fee,
            "expiry_ms": self.expiry_ms,
            "seq": self.seq,
        }

    @staticmethod
    def from_body(b: Any) -> Offer:
        w = "offer"
        b = _exact_keys(b, set(_OFFER_KEYS), w)
        offer = Offer(
            offer_id=_bytes(b, "offer_id", 16, where=w),
            buy=_asset(b, "buy", where=w),
            sell=_asset(b, "sell", where=w),
            price_num=_nonneg(b, "price_num", where=w, positive=True),
            price_den=_nonneg(b, "price_den", where=w, positive=True),
            min_in=_nonneg(b, "min_in", where=w),
            max_in=_nonneg(b, "max_in", where=w),
            partial=_get(b, "partial", bool, where=w),
            fee=_nonneg(b, "fee", where=w),
            expiry_ms=_nonneg(b, "expiry_ms", where=w),
            seq=_nonneg(b, "seq", where=w),
        )
        if offer.buy == offer.sell:
            raise BadMessage(f"offer: buy and sell are the same asset {offer.buy!r}")
        if offer.max_in and offer.min_in > offer.max_in:
            raise BadMessage(f"offer: min_in {offer.min_in} > max_in {offer.max_in}")
        return offer

    @property
    def withdrawn(self) -> bool:
        return self.max_in == 0

    def fill(self, amount_in: int) -> tuple[int, int] | None:
        """``(amount_in, amount_out)`` this offer gives for a claim of ``amount_in``, or None."""
        if self.withdrawn or amount_in < self.min_in:
            return None
        if amount_in > self.max_in:
            if not self.partial:
                return None
            amount_in = self.max_in
        out = amount_in * self.price_num // self.price_den - self.fee
        return (amount_in, out) if out > 0 else None


_OFFER_KEYS = (
    "offer_id buy sell price_num price_den min_in max_in partial fee expiry_ms seq".split()
)


@dataclass(frozen=True, slots=True)
class SignedOffer:
    """An offer with its maker's signature; ``raw`` is what is gossiped unchanged."""

    maker: bytes
    offer: Offer
    raw: bytes

    @property
    def key(self) -> tuple[bytes, bytes]:
        return (self.maker, self.offer.offer_id)


def make_offer(key: Ed25519PrivateKey, offer: Offer) -> SignedOffer:
    msg = sign(key, MSG_OFFER, offer.to_body())
    return SignedOffer(msg.envelope.sender, offer, msg.to_bytes())


def read_offer(raw: bytes) -> SignedOffer:
    """Parse and schema-check an offer *without* its signature: only for deciding to drop it
    early; call :func:`check_offer` before believing it."""
    msg = read_message(raw)
    if msg.envelope.type != MSG_OFFER:
        raise BadMessage(f"offer: envelope type is {msg.envelope.type!r}")
    return SignedOffer(msg.envelope.sender, Offer.from_body(msg.envelope.body), raw)


def check_offer(so: SignedOffer) -> None:
    check_signature(so.maker, so.raw)


def open_offer(raw: bytes) -> SignedOffer:
    so = read_offer(raw)
    check_offer(so)
    return so


# --------------------------------------------------------------------------- claims and paths


@dataclass(frozen=True, slots=True)
class Claim:
    """A request for quote: "I have ``amount`` of ``have`` and want ``want``".

    The limit price is the least acceptable ``delivered / amount`` as the rational
    ``limit_num / limit_den``. ``max_hops`` is the TTL (a hop at position ``max_hops`` answers
    but does not forward). ``reply_key`` is an X25519 public key only the initiator can use to
    open the joins of the chosen route.
    """

    have: str
    want: str
    amount: int
    limit_num: int
    limit_den: int
    deadline_ms: int
    max_hops: int
    reply_key: bytes

    def to_body(self) -> dict[str, Any]:
        return {
            "have": self.have,
            "want": self.want,
            "amount": self.amount,
            "limit_num": self.limit_num,
            "limit_den": self.limit_den,
            "deadline_ms": self.deadline_ms,
            "max_hops": self.max_hops,
            "reply_key": self.reply_key,
        }

    @staticmethod
    def from_body(b: Any) -> Claim:
        w = "claim"
        keys = "have want amount limit_num limit_den deadline_ms max_hops reply_key".split()
        b = _exact_keys(b, set(keys), w)
        claim = Claim(
            have=_asset(b, "have", where=w),
            want=_asset(b, "want", where=w),
            amount=_nonneg(b, "amount", where=w, positive=True),
            limit_num=_nonneg(b, "limit_num", where=w),
            limit_den=_nonneg(b, "limit_den", where=w, positive=True),
            deadline_ms=_nonneg(b, "deadline_ms", where=w),
            max_hops=_nonneg(b, "max_hops", where=w, positive=True),
            reply_key=_bytes(b, "reply_key", 32, where=w),
        )
        if claim.max_hops > MAX_HOPS:
            raise BadMessage(f"claim: max_hops {claim.max_hops} exceeds {MAX_HOPS}")
        if claim.have == claim.want:
            raise BadMessage(f"claim: have and want are the same asset {claim.have!r}")
        return claim

    def accepts(self, amount_in: int, delivered: int) -> bool:
        """Whether ``delivered`` for ``amount_in`` meets the limit price (exact rationals)."""
        return delivered * self.limit_den >= amount_in * self.limit_num


@dataclass(frozen=True, slots=True)
class SignedClaim:
    initiator_eph: bytes  # position-0 ephemeral key, never a node identity
    claim: Claim
    raw: bytes
    signature: bytes
    ts: int

    @property
    def claim_id(self) -> bytes:
        return digest(self.raw)


def make_claim(ephemeral: Ed25519PrivateKey, claim: Claim) -> SignedClaim:
    msg = sign(ephemeral, MSG_CLAIM, claim.to_body())
    return SignedClaim(msg.envelope.sender, claim, msg.to_bytes(), msg.signature, msg.envelope.ts)


def open_claim(raw: bytes) -> SignedClaim:
    msg = open_message(raw)
    if msg.envelope.type != MSG_CLAIM:
        raise BadMessage(f"claim: envelope type is {msg.envelope.type!r}")
    claim = Claim.from_body(msg.envelope.body)
    return SignedClaim(msg.envelope.sender, claim, raw, msg.signature, msg.envelope.ts)


@dataclass(frozen=True, slots=True)
class PathHop:
    pub: bytes
    sig: bytes

    def to_wire(self) -> list[bytes]:
        return [self.pub, self.sig]


def _path_message(claim_id: bytes, position: int, prev_sig: bytes) -> bytes:
    return PATH_DOMAIN + encode([claim_id, position, prev_sig])


def sign_hop(ephemeral: Ed25519PrivateKey, claim: SignedClaim, path: list[PathHop]) -> PathHop:
    """The entry hop ``len(path) + 1`` appends before forwarding ``claim``."""
    prev = path[-1].sig if path else claim.signature
    sig = ephemeral.sign(_path_message(claim.claim_id, len(path) + 1, prev))
    return PathHop(ephemeral.public_key().public_bytes_raw(), sig)


def parse_path(value: Any) -> list[PathHop]:
    if not isinstance(value, list) or len(value) > MAX_HOPS:
        raise BadMessage(f"path: must be a list of at most {MAX_HOPS} hops")
    hops = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or len(item[0]) != 32
            or not isinstance(item[1], bytes)
            or len(item[1]) != 64
        ):
            raise BadMessage(f"path[{i}]: must be [32-byte key, 64-byte signature]")
        hops.append(PathHop(item[0], item[1]))
    return hops


def verify_path(claim: SignedClaim, path: list[PathHop], *, checked: int = 0) -> None:
    """Raise :class:`BadSignature` unless every hop signed its position after its predecessor,
    and :class:`BadMessage` if a key repeats (a loop). The signatures of the first ``checked``
    hops are taken as verified already (the caller checked that prefix)."""
    seen = {claim.initiator_eph}
    prev = claim.signature
    for i, hop in enumerate(path, start=1):
        if hop.pub in seen:
            raise BadMessage(f"path[{i - 1}]: key repeats (loop)")
        seen.add(hop.pub)
        if i > checked and not verify_ed25519(
            hop.pub, hop.sig, _path_message(claim.claim_id, i, prev)
        ):
            raise BadSignature(f"path[{i - 1}]: signature for position {i} does not verify")
        prev = hop.sig


# --------------------------------------------------------------------------- fulfils


@dataclass(frozen=True, slots=True)
class Fulfil:
    """A quote for a claim by the hop at ``position`` (its ephemeral key signs the fulfil).

    ``path`` repeats the claim's path as the filler received it, so the initiator can check the
    whole route. ``valid_until_ms`` bounds how long the filler holds the quote. ``op`` (v6,
    optional: ``b""`` is sent as no field) is the filler's offer proof sealed to the claim's
    ``reply_key`` (:func:`make_offer_proof`); only the initiator can open it.
    """

    claim_id: bytes
    position: int
    amount_in: int
    amount_out: int
    valid_until_ms: int
    path: list[PathHop]
    op: bytes = b""

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "claim_id": self.claim_id,
            "position": self.position,
            "amount_in": self.amount_in,
            "amount_out": self.amount_out,
            "valid_until_ms": self.valid_until_ms,
            "path": [h.to_wire() for h in self.path],
        }
        if self.op:
            body["op"] = self.op
        return body

    @staticmethod
    def from_body(b: Any) -> Fulfil:
        w = "fulfil"
        keys = set("claim_id position amount_in amount_out valid_until_ms path".split())
        if isinstance(b, dict) and "op" in b:
            keys.add("op")
        b = _exact_keys(b, keys, w)
        op: bytes = _get(b, "op", bytes, where=w) if "op" in b else b""
        if "op" in b and not 0 < len(op) <= MAX_OFFER_PROOF_BYTES:
            raise BadMessage(f"fulfil: field 'op' must be 1..{MAX_OFFER_PROOF_BYTES} bytes")
        f = Fulfil(
            claim_id=_bytes(b, "claim_id", 32, where=w),
            position=_nonneg(b, "position", where=w, positive=True),
            amount_in=_nonneg(b, "amount_in", where=w, positive=True),
            amount_out=_nonneg(b, "amount_out", where=w, positive=True),
            valid_until_ms=_nonneg(b, "valid_until_ms", where=w),
            path=parse_path(b.get("path")),
            op=op,
        )
        if f.position != len(f.path) + 1:
            raise BadMessage(f"fulfil: position {f.position} but path has {len(f.path)} hops")
        return f


@dataclass(frozen=True, slots=True)
class SignedFulfil:
    filler_eph: bytes
    fulfil: Fulfil
    raw: bytes

    @property
    def fulfil_id(self) -> bytes:
        return digest(self.raw)


def make_fulfil(ephemeral: Ed25519PrivateKey, fulfil: Fulfil) -> SignedFulfil:
    msg = sign(ephemeral, MSG_FULFIL, fulfil.to_body())
    return SignedFulfil(msg.envelope.sender, fulfil, msg.to_bytes())


def read_fulfil(raw: bytes) -> SignedFulfil:
    """Parse and schema-check a fulfil *without* its signature: only for deciding to drop it
    early (unknown claim, over a cap); call :func:`check_fulfil` before believing it."""
    msg = read_message(raw)
    if msg.envelope.type != MSG_FULFIL:
        raise BadMessage(f"fulfil: envelope type is {msg.envelope.type!r}")
    return SignedFulfil(msg.envelope.sender, Fulfil.from_body(msg.envelope.body), raw)


def check_fulfil(sf: SignedFulfil) -> None:
    check_signature(sf.filler_eph, sf.raw)


def open_fulfil(raw: bytes) -> SignedFulfil:
    msg = open_message(raw)
    if msg.envelope.type != MSG_FULFIL:
        raise BadMessage(f"fulfil: envelope type is {msg.envelope.type!r}")
    return SignedFulfil(msg.envelope.sender, Fulfil.from_body(msg.envelope.body), raw)


@dataclass(frozen=True, slots=True)
class OfferProof:
    """What a fulfil's sealed ``op`` says once opened: the maker ``maker`` (its node key, the
    key that signs its offers) answered claim ``claim_id`` with the fulfil signed by
    ``filler_eph``, from its offer ``offer_id`` (:data:`NO_OFFER_ID`: from extra liquidity).
    ``sig`` is by ``maker`` over :func:`offer_proof_message`."""

    maker: bytes
    offer_id: bytes
    sig: bytes

    def to_bytes(self) -> bytes:
        return encode([self.maker, self.offer_id, self.sig])

    @staticmethod
    def from_bytes(data: bytes) -> OfferProof:
        try:
            m = decode(data)
        except EncodingError as exc:
            raise BadMessage(f"offer proof: {exc}") from None
        if (
            not isinstance(m, list)
            or len(m) != 3
            or not all(isinstance(x, bytes) for x in m)
            or [len(x) for x in m] != [32, 16, 64]
        ):
            raise BadMessage("offer proof: must be [32-byte maker, 16-byte offer id, signature]")
        return OfferProof(m[0], m[1], m[2])


ANONYMOUS_OFFER_PROOF = OfferProof(bytes(32), NO_OFFER_ID, bytes(64)).to_bytes()
"""The plaintext of the ``op`` of a fill that names no maker: one from liquidity no public
offer of the filler covers (no taker awaits it, and its maker stays as anonymous to the taker
as before v6). Sealed like a proof, of the same length, so relays cannot tell the two apart."""


def offer_proof_message(claim_id: bytes, filler_eph: bytes, maker: bytes, offer_id: bytes) -> bytes:
    """What an offer proof's signature covers: ``KOFO/offer-proof/v1 0x00 || cbor([claim_id,
    filler_eph, maker, offer_id])``. The claim id and the filler's per-claim key bind it to one
    fulfil: it cannot be moved to another fulfil (another key) or replayed for another claim."""
    return OFFER_PROOF_DOMAIN + encode([claim_id, filler_eph, maker, offer_id])


def make_offer_proof(
    maker_key: Ed25519PrivateKey, claim_id: bytes, filler_eph: bytes, offer_id: bytes
) -> bytes:
    """The plaintext of a fulfil's ``op``: the proof signed by the maker's node key. The
    filler seals it to the claim's ``reply_key`` (``kofo.exchange.sealed.seal``), so relays
    carry it unread."""
    maker = maker_key.public_key().public_bytes_raw()
    sig = maker_key.sign(offer_proof_message(claim_id, filler_eph, maker, offer_id))
    return OfferProof(maker, offer_id, sig).to_bytes()


def check_offer_proof(plain: bytes, claim_id: bytes, filler_eph: bytes) -> OfferProof:
    """An opened offer proof, checked against the fulfil it came in; raises
    :class:`BadMessage` / :class:`BadSignature` naming what is wrong."""
    p = OfferProof.from_bytes(plain)
    data = offer_proof_message(claim_id, filler_eph, p.maker, p.offer_id)
    if not verify_ed25519(p.maker, p.sig, data):
        raise BadSignature("offer proof: signature does not verify for this claim and filler")
    return p


@dataclass(frozen=True, slots=True)
class HopFee:
    """The hop at ``position`` acknowledges, by its ephemeral key, carrying a fulfil.

    ``fee`` (in the claim's ``want`` asset) must be 0 in protocol v1: a relay holds no leg, so
    nothing would pay it; its pay is its ledger share of the protocol fee. The field stays in
    the signed bytes so a later version can price hops without a new message."""

    position: int
    fee: int
    sig: bytes

    def to_wire(self) -> list[Any]:
        return [self.position, self.fee, self.sig]


def _fee_message(fulfil_id: bytes, position: int, fee: int) -> bytes:
    return FEE_DOMAIN + encode([fulfil_id, position, fee])


def sign_fee(ephemeral: Ed25519PrivateKey, fulfil_id: bytes, position: int, fee: int) -> HopFee:
    return HopFee(position, fee, ephemeral.sign(_fee_message(fulfil_id, position, fee)))


def parse_fees(value: Any) -> list[HopFee]:
    if not isinstance(value, list) or len(value) > MAX_HOPS:
        raise BadMessage(f"fees: must be a list of at most {MAX_HOPS} entries")
    fees = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, list)
            or len(item) != 3
            or type(item[0]) is not int
            or type(item[1]) is not int
            or item[1] < 0
            or not isinstance(item[2], bytes)
            or len(item[2]) != 64
        ):
            raise BadMessage(f"fees[{i}]: must be [position, fee >= 0, 64-byte signature]")
        fees.append(HopFee(item[0], item[1], item[2]))
    return fees


@dataclass(frozen=True, slots=True)
class Quote:
    """A fulfil as the initiator sees it once every signature checked out."""

    claim_id: bytes
    fulfil: SignedFulfil
    fees: list[HopFee]
    via: bytes  # the initiator's neighbour it arrived from (known to it anyway)
    received_ms: int
    # v6: the maker named by the fulfil's offer proof once opened and verified (None: no
    # proof, or one that did not check out). Rank reads its ledger importance (None: 0).
    maker: bytes | None = None

    @property
    def fulfil_id(self) -> bytes:
        return self.fulfil.fulfil_id

    @property
    def amount_in(self) -> int:
        return self.fulfil.fulfil.amount_in

    @property
    def delivered(self) -> int:
        """What reaches the initiator: the filler's output (hop fees are 0 in v1)."""
        return self.fulfil.fulfil.amount_out - sum(f.fee for f in self.fees)

    @property
    def rate(self) -> Fraction:
        return Fraction(self.delivered, self.amount_in)


def verify_fulfil(
    claim: SignedClaim, sf: SignedFulfil, fees: list[HopFee], own_hops: Sequence[PathHop] = ()
) -> None:
    """Check a fulfil arriving at the initiator: the path, the filler, and every hop fee.
    ``own_hops`` are the initiator's own dummy hops: the path must start with them, and they
    carry no fee entry (nobody but the initiator holds their keys)."""
    f = sf.fulfil
    if f.claim_id != claim.claim_id:
        raise BadMessage("fulfil: claim_id does not match")
    d = len(own_hops)
    if f.position <= d or f.path[:d] != list(own_hops):
        raise BadMessage("fulfil: the path does not start with the initiator's own hops")
    verify_path(claim, f.path)
    if sf.filler_eph == claim.initiator_eph or any(h.pub == sf.filler_eph for h in f.path):
        raise BadMessage("fulfil: filler key repeats a path key")
    positions = sorted(fee.position for fee in fees)
    if positions != list(range(d + 1, f.position)):
        raise BadMessage(
            f"fulfil: fee positions {positions} do not cover {d + 1}..{f.position - 1}"
        )
    fid = sf.fulfil_id
    if any(fee.fee for fee in fees):
        raise BadMessage("fulfil: hop fees must be 0 (relays are paid from the protocol fee)")
    for fee in fees:
        pub = f.path[fee.position - 1].pub
        if not verify_ed25519(pub, fee.sig, _fee_message(fid, fee.position, fee.fee)):
            raise BadSignature(f"fees: signature for position {fee.position} does not verify")
    if sum(fee.fee for fee in fees) >= f.amount_out:
        raise BadMessage("fulfil: fees eat the whole output")


def verify_fulfil_after(
    claim: SignedClaim, sf: SignedFulfil, fees: list[HopFee], position: int
) -> None:
    """What the relay at ``position`` checks before forwarding a fulfil towards the initiator:
    the path hops, the filler key and the hop fees of the parties after it (the path up to it
    is the one it verified and signed; the caller checks the fee positions and amounts). The
    initiator checks the same; a relay that forwarded a bad one would be scored for it, so
    each catches it at the first honest relay, which scores the link it came from."""
    f = sf.fulfil
    verify_path(claim, f.path, checked=position)
    if sf.filler_eph == claim.initiator_eph or any(h.pub == sf.filler_eph for h in f.path):
        raise BadMessage("fulfil: filler key repeats a path key")
    fid = sf.fulfil_id
    for fee in fees:
        pub = f.path[fee.position - 1].pub
        if not verify_ed25519(pub, fee.sig, _fee_message(fid, fee.position, fee.fee)):
            raise BadSignature(f"fees: signature for position {fee.position} does not verify")


# --------------------------------------------------------------------------- accept / join


@dataclass(frozen=True, slots=True)
class Accept:
    claim_id: bytes
    fulfil_id: bytes

    def to_body(self) -> dict[str, Any]:
        return {"claim_id": self.claim_id, "fulfil_id": self.fulfil_id}

    @staticmethod
    def from_body(b: Any) -> Accept:
        b = _exact_keys(b, {"claim_id", "fulfil_id"}, "accept")
        return Accept(
            _bytes(b, "claim_id", 32, where="accept"), _bytes(b, "fulfil_id", 32, where="accept")
        )


def open_accept(raw: bytes, initiator_eph: bytes) -> Accept:
    """An accept must be signed by the claim's position-0 key: only the initiator can choose."""
    msg = open_message(raw)
    if msg.envelope.type != MSG_ACCEPT or msg.envelope.sender != initiator_eph:
        raise BadSignature("accept: not signed by the claim's initiator key")
    return Accept.from_body(msg.envelope.body)


def parse_contact(contact: str) -> tuple[str, int] | None:
    """``"host:port"`` -> ``(host, port)``; ``""`` -> None (the party takes no links). The host
    may be a bracketed IPv6 address. Raises :class:`BadMessage` naming what is wrong."""
    if not isinstance(contact, str) or len(contact) > MAX_CONTACT_LEN:
        raise BadMessage(f"contact: must be a string of at most {MAX_CONTACT_LEN} characters")
    if contact == "":
        return None
    host, sep, port = contact.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not sep
        or not host
        or not port.isascii()
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or any(c.isspace() or c in "/@[]" for c in host)
    ):
        raise BadMessage(f"contact: {contact!r:.80} is not host:port")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Join:
    """What a party of the chosen route reveals to the initiator (sealed to ``reply_key``).

    ``eph_sig`` (by the party's ephemeral key) and ``node_sig`` (by its node key) both sign
    :func:`join_message`, proving one holder controls the path key and the node identity.
    ``contact`` (v3) is where the party accepts links (``"host:port"``), so the initiator can
    reach the provider directly; relays and dummy hops give ``""``.
    """

    position: int
    node_id: bytes
    addresses: dict[str, str]  # chain -> this party's address there (what HTLC legs pay to)
    eph_sig: bytes
    node_sig: bytes
    contact: str = ""

    def to_body(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "node_id": self.node_id,
            "addresses": dict(self.addresses),
            "contact": self.contact,
            "eph_sig": self.eph_sig,
            "node_sig": self.node_sig,
        }

    @staticmethod
    def from_body(b: Any) -> Join:
        w = "join"
        keys = {"position", "node_id", "addresses", "contact", "eph_sig", "node_sig"}
        b = _exact_keys(b, keys, w)
        addresses = _get(b, "addresses", dict, where=w)
        if len(addresses) > 16 or not all(
            isinstance(v, str) and 0 < len(v) <= 256 for v in addresses.values()
        ):
            raise BadMessage("join: addresses must map at most 16 chains to addresses")
        contact: str = _get(b, "contact", str, where=w)
        parse_contact(contact)
        return Join(
            _nonneg(b, "position", where=w, positive=True),
            _bytes(b, "node_id", 32, where=w),
            dict(addresses),
            _bytes(b, "eph_sig", 64, where=w),
            _bytes(b, "node_sig", 64, where=w),
            contact,
        )


def join_message(
    claim_id: bytes,
    fulfil_id: bytes,
    position: int,
    eph: bytes,
    node: bytes,
    addresses: dict[str, str],
    contact: str = "",
) -> bytes:
    """What a join's two signatures cover (v2 domain: the contact is signed too, so nobody on
    the way can redirect the initiator's direct messages)."""
    return JOIN_DOMAIN + encode([claim_id, fulfil_id, position, eph, node, addresses, contact])


def quote_id_for(fulfil_id: bytes, position: int, node: bytes, role: str) -> bytes:
    """The ledger's 16-byte ``quote_id`` of one route party's ``FeeQuote`` (``role`` is
    ``"relay"`` or ``"provider"``): ``sha256(KOFO/quote-id/v1 0x00 || fulfil_id || position (1
    byte) || role || node)[:16]``. Each party's id differs (the ledger refuses an order whose
    quote ids repeat), and it is derived from what the party signs, so nobody can occupy it
    first: an order using it needs that party's signature over this very fulfil."""
    if not 0 < position <= MAX_HOPS:
        raise BadMessage(f"quote id: position {position} is out of range")
    return digest(QUOTE_ID_DOMAIN + fulfil_id + bytes([position]) + role.encode() + node)[:16]
