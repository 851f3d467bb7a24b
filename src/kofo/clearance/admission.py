"""What a ledger transaction costs its sender: the limits that keep spam from being free.

The ledger has no native coin to charge a fee in, and a bond is collateral for misbehaviour,
not a price per transaction, so the cost of a transaction is **a share of bounded capacity**,
enforced at two places:

* **In the block (consensus, deterministic):** :class:`BlockBudget` caps, per block, the txs
  one sender may have (``max_txs_per_sender_per_block``), the withdrawals one sender may make
  (one: each costs a Paillier re-encryption) and all withdrawals (``max_withdrawals_per_block``),
  and the registrations of the whole block (``max_registrations_per_block``: each carries a zero
  proof to verify, and sybil keys are free). A tx over a cap is refused with ``rate_limited``
  *before* its costly checks, the same way on every validator. This binds a malicious
  proposer too, which CheckTx cannot. The bond txs (``register_validator_key``, ``unbond``)
  count against the per-sender cap; they need no cap of their own: an unbond costs no check
  beyond its envelope, and a validator-key registration reaches its secp256k1 recovery only
  after a signature by a validator's own consensus key. The attestation tx has no sender: it
  is one per block, first, and its signatures are bounded by the validator set.
* **In CheckTx (each node's own mempool, not consensus):** :class:`SenderRateLimit`, a token
  bucket per sender id, so one sender cannot fill a validator's mempool or its CPU with
  signature and proof checks; and (``LedgerApp(require_registered=True)``, as a public validator
  runs) only a registered sender's txs, or a registration, are admitted at all, so fresh sybil
  keys cannot spend a validator's CheckTx on order signatures: they must register first, and
  registrations are capped per block; registrations from all senders together share one more
  bucket (new keys are free), charged only after the registration's pre-work (one hash) and
  work (one scrypt per pre-work at this node, :class:`WorkChecks`) passed, so a flood of
  unworked registrations cannot empty it. A tx the node already checked is not charged
  again (anyone can resend a victim's tx bytes; that must not spend the victim's budget).
  The buckets read a clock, which is fine there: CheckTx only decides what this node gossips,
  never what a block means.

**Registration costs work** (:func:`check_registration_work`): a registration carries a
``pow_nonce`` such that ``scrypt(n=1024, r=8, p=1)`` (1 MiB of memory per try) of
``KOFO/register-work/v1 || sender || paillier_n || nonce`` has ``registration_work_bits``
leading zero bits (a param, 12 by default: ~4,000 tries, ~10 s of one core; the ledger checks
it with one evaluation, ~2 ms, before any proof). Without it sybils filled the 20 registration
slots of every block for free. A bond cannot price registration (the vault is observed only
for registered nodes: observing every id anyone might lock under is unbounded) and the ledger
has no coin for a fee; memory-hard work is what the ledger can check alone, costs an honest node
once, and makes a flood of ``20`` a block cost ~200 cores, with GPUs and ASICs gaining little
on a memory-hard function.

Every other cost is bounded by schema (sizes of every field, 64 KiB per tx, moduli of exactly
2048 or 3072 bits), so the worst a sender can buy with its share is known in advance.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from kofo.clearance.errors import RateLimited
from kofo.wire.orders import CommitOrder, FileEvidence, RegisterNode, TxBody, WithdrawFees

WORK_CHECKS_PER_REGISTRATION_SLOT = 4
"""Registration work checks a block may cost per registration slot (:class:`BlockBudget`)."""


@dataclass(slots=True)
class BlockBudget:
    """Per-block caps (see module doc); one instance per FinalizeBlock."""

    per_sender: int
    registrations: int
    withdrawals: int
    _sent: dict[bytes, int] = field(default_factory=dict)
    _withdrew: set[bytes] = field(default_factory=set)
    _registered: int = 0
    _work_checks: int = 0

    def charge_work_check(self) -> None:
        """Count one evaluation of a registration's work (one scrypt, 1 MiB, ~2-10 ms) before
        it is made. A block holds at most ``WORK_CHECKS_PER_REGISTRATION_SLOT`` times its
        registration slots of them: CheckTx refuses registrations without their work, so only
        a hostile proposer's block holds more, and without this cap each one (a ~300-byte tx,
        a fresh key each) cost every validator a scrypt at FinalizeBlock, uncharged."""
        self._work_checks += 1
        cap = self.registrations * WORK_CHECKS_PER_REGISTRATION_SLOT
        if self._work_checks > cap:
            raise RateLimited(f"more than {cap} registration work checks in one block")

    def charge(self, sender: bytes, body: TxBody) -> None:
        sent = self._sent.get(sender, 0) + 1
        self._sent[sender] = sent
        if sent > self.per_sender:
            raise RateLimited(
                f"sender {sender.hex()} has more than {self.per_sender} txs in a block"
            )
        if isinstance(body, WithdrawFees):
            if sender in self._withdrew:
                raise RateLimited(f"sender {sender.hex()} has another withdrawal in this block")
            self._withdrew.add(sender)
            if len(self._withdrew) > self.withdrawals:
                raise RateLimited(f"more than {self.withdrawals} withdrawals in one block")
        elif isinstance(body, RegisterNode):
            self._registered += 1
            if self._registered > self.registrations:
                raise RateLimited(f"more than {self.registrations} registrations in one block")


class SenderRateLimit:
    """Token bucket per sender: ``rate`` txs per second, up to ``burst`` at once. Remembers at
    most ``max_senders`` senders (least recently seen forgotten first), so the table is bounded
    however many keys a spammer makes; a forgotten sender starts with a full bucket, which is no
    more than a new key would get."""

    def __init__(
        self,
        rate: float = 50.0,
        burst: int = 500,
        *,
        max_senders: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate, self._burst, self._max = rate, burst, max_senders
        self._clock = clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def charge(self, sender: bytes, cost: int = 1) -> None:
        """Take ``cost`` tokens (:func:`check_cost`: a heavy tx costs several) from the
        sender's bucket, or raise :class:`RateLimited` and take none."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(sender, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - last) * self._rate)
            if tokens < cost:
                self._buckets[sender] = (tokens, now)
                raise RateLimited(
                    f"sender {sender.hex()} is over {self._rate:g} txs/s at this node (this tx "
                    f"costs {cost}); retry later"
                )
            self._buckets[sender] = (tokens - cost, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)


VERIFICATIONS_PER_TOKEN = 6
"""Signature checks one CheckTx token pays for: a two-leg order's (2 Ed25519 party signatures,
4 secp256k1 leg-key proofs), so an ordinary order still costs one token."""
BYTES_PER_TOKEN = 8192
"""Tx bytes one CheckTx token pays for (decoding and parsing cost ~0.25 ms per KiB)."""


def verifications(body: TxBody) -> int:
    """The signature checks (Ed25519 or secp256k1) a tx's stateless checks make beyond its
    envelope's: up to 24 party signatures and 16 leg-key proofs for an order, 2 more for a
    quote evidence. (A registration's proofs have their own caps: work, the shared bucket.)"""
    extra = 0
    if isinstance(body, FileEvidence) and body.order is not None:
        body, extra = body.order, 2  # the quote's and the take's signatures
    if not isinstance(body, CommitOrder):
        return extra
    proofs = sum(p is not None for pair in body.leg_proofs for p in pair)
    return extra + len(body.signatures) + proofs


def check_cost(body: TxBody, size: int) -> int:
    """What a new tx costs in CheckTx tokens: one, or more for a tx that makes the node verify
    more than a plain order's signatures or decode more than ``BYTES_PER_TOKEN`` bytes.

    A flat token per tx let a registered sender buy ~7x an honest sender's CPU per token with
    24-party, 8-leg orders (or quote evidence) and resend the same signed content in fresh
    envelopes (one Ed25519 signature each, ~50 us, for ~7-14 ms of verification at every
    validator, 50 a second per sybil: about half a core of each validator per registration)."""
    units = -(-verifications(body) // VERIFICATIONS_PER_TOKEN)
    return max(1, units, -(-size // BYTES_PER_TOKEN))


REGISTRATION_WORK_DOMAIN = b"KOFO/register-work/v1\x00"
WORK_SCRYPT_N, WORK_SCRYPT_R, WORK_SCRYPT_P = 1024, 8, 1
"""scrypt costs of one try: 1 MiB of memory (128 * r * n bytes), ~2 ms."""


def registration_work(sender: bytes, paillier_n: bytes, nonce: int) -> bytes:
    """The 32-byte work digest of a registration by ``sender`` with modulus ``paillier_n``."""
    return hashlib.scrypt(
        REGISTRATION_WORK_DOMAIN + sender + paillier_n + nonce.to_bytes(8, "big"),
        salt=REGISTRATION_WORK_DOMAIN,
        n=WORK_SCRYPT_N,
        r=WORK_SCRYPT_R,
        p=WORK_SCRYPT_P,
        maxmem=4 * 128 * WORK_SCRYPT_R * WORK_SCRYPT_N,
        dklen=32,
    )


def _meets(digest: bytes, bits: int) -> bool:
    return int.from_bytes(digest, "big") >> (256 - bits) == 0 if bits else True


def check_registration_work(sender: bytes, paillier_n: bytes, nonce: int, bits: int) -> bool:
    """Whether ``nonce`` is work of ``bits`` leading zero bits for this registration."""
    return bits == 0 or _meets(registration_work(sender, paillier_n, nonce), bits)


PREWORK_DOMAIN = b"KOFO/register-prework/v1\x00"


def prework_digest(sender: bytes, paillier_n: bytes, nonce: int) -> bytes:
    """SHA-256 of the pre-work: the top 32 bits of ``nonce`` (its "pre" part) for this sender
    and modulus. The scrypt work covers the whole nonce."""
    return hashlib.sha256(
        PREWORK_DOMAIN + sender + paillier_n + (nonce >> 32).to_bytes(4, "big")
    ).digest()


def check_prework(sender: bytes, paillier_n: bytes, nonce: int, bits: int) -> bool:
    """Whether the top 32 bits of ``nonce`` are pre-work of ``bits`` bits (one SHA-256, ~1 us):
    what a registration must show before a validator evaluates its scrypt or charges a shared
    budget for it, so that junk registrations cost their sender ``2^bits`` hashes each."""
    return bits == 0 or _meets(prework_digest(sender, paillier_n, nonce), bits)


def solve_registration_work(
    sender: bytes, paillier_n: bytes, bits: int, prework_bits: int = 0
) -> int:
    """The first nonce meeting both: a pre part (top 32 bits) of ``prework_bits`` (expected
    ``2^prework_bits`` hashes), then a low part meeting ``bits`` (``2^bits`` scrypt tries)."""
    pre = 0
    while not check_prework(sender, paillier_n, pre << 32, prework_bits):
        pre += 1
    nonce = pre << 32
    while not check_registration_work(sender, paillier_n, nonce, bits):
        nonce += 1
    return nonce


class WorkChecks:
    """This node's memo of scrypt work checks, keyed by (sender, modulus, pre part), bounded
    (least recently used first out). The result of a check is a pure function of the tx, so
    a memo never changes what a block means; CheckTx also uses it as policy: one pre-work buys
    at most one scrypt evaluation at this node (:meth:`spent`), so a flood that found one
    pre-work and varies the low bits of the nonce costs the validator nothing more."""

    def __init__(self, max_entries: int = 65_536) -> None:
        self._max = max_entries
        self._seen: OrderedDict[bytes, tuple[int, bool]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(sender: bytes, paillier_n: bytes, nonce: int) -> bytes:
        return hashlib.sha256(sender + paillier_n + (nonce >> 32).to_bytes(4, "big")).digest()

    def spent(self, sender: bytes, paillier_n: bytes, nonce: int) -> bool:
        """Whether this pre-work was already spent on a check of another nonce here."""
        with self._lock:
            hit = self._seen.get(self._key(sender, paillier_n, nonce))
        return hit is not None and hit[0] != nonce

    def check(self, sender: bytes, paillier_n: bytes, nonce: int, bits: int) -> bool:
        key = self._key(sender, paillier_n, nonce)
        with self._lock:
            hit = self._seen.get(key)
            if hit is not None and hit[0] == nonce:
                self._seen.move_to_end(key)
                return hit[1]
        ok = check_registration_work(sender, paillier_n, nonce, bits)
        with self._lock:
            self._seen[key] = (nonce, ok)
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
        return ok
