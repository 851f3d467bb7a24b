"""Builders for clearance tests and the bench: nodes with real keys, signed orders and txs."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from phe import paillier

from kofo.clearance import admission, privacy
from kofo.clearance.app import Block, LedgerApp
from kofo.clearance.fees import protocol_fee
from kofo.clearance.params import LedgerParams
from kofo.clearance.store import MerkleStore
from kofo.settlement.chain import BlockHeight, UnixTime
from kofo.wire.attest import (
    BondObservation,
    ChainTip,
    ChainUnreadable,
    ExecutedDecision,
    LegRef,
    Observation,
)
from kofo.wire.envelope import public_key_bytes
from kofo.wire.legkeys import KeyKind, LegRole, address_of, sign_leg_key
from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FeeQuote,
    FileEvidence,
    Leg,
    LegOutcome,
    OrderKind,
    Quote,
    QuoteRole,
    RegisterNode,
    SettlementOrder,
    Take,
    WithdrawFees,
    sign_tx,
    with_derived_id,
)

PAILLIER_BITS = 1024
"""Test keys only: 1024-bit keys generate in ~0.1 s; the ledger's default minimum is 2048."""

T0 = 1_700_000_000
"""Block time of the first test block; orders' deadlines are set relative to it."""
BTC_TIP_SEEN = 799_000
"""The btc tip (at 6 confirmations) every test validator sees unless a test says otherwise."""


TEST_WORK_BITS = 2
"""Registration work in tests: a few scrypt tries, not the default's ~4,000."""
TEST_PREWORK_BITS = 4
"""Registration pre-work in tests: a few hashes, not the default's 65,536."""


@functools.cache
def registration_work(
    node: bytes, n: bytes, bits: int = TEST_WORK_BITS, prework_bits: int = TEST_PREWORK_BITS
) -> int:
    return admission.solve_registration_work(node, n, bits, prework_bits)


@functools.cache
def _modulus_proof(p: int, q: int, node: bytes) -> bytes:
    pub = paillier.PaillierPublicKey(p * q)
    return privacy.prove_modulus(
        paillier.PaillierPrivateKey(pub, p, q), privacy.modulus_context(node)
    )


def modulus_proof(priv: paillier.PaillierPrivateKey, node: bytes) -> bytes:
    """The modulus certificate of ``priv``'s modulus for ``node`` (cached: tests reuse keys)."""
    return _modulus_proof(priv.p, priv.q, node)


def ledger_params(**overrides: object) -> LedgerParams:
    base: dict[str, object] = {
        "paillier_bits": (PAILLIER_BITS,),
        "registration_work_bits": TEST_WORK_BITS,
        "registration_prework_bits": TEST_PREWORK_BITS,
        "bond_height_step": 1,  # fakes report exact heights; the rounding has its own test
        "max_registrations_per_block": 20,  # tests register many parties in one block
    }
    base.update(overrides)
    return LedgerParams(**base)  # type: ignore[arg-type]


@functools.cache
def _paillier(i: int) -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    return privacy.generate_keypair(PAILLIER_BITS)


@dataclass
class Party:
    key: Ed25519PrivateKey
    paillier_pub: paillier.PaillierPublicKey
    paillier_priv: paillier.PaillierPrivateKey = field(repr=False)
    bond: int = 1_000_000
    monitor: bool = False

    @property
    def id(self) -> bytes:
        return public_key_bytes(self.key)

    @classmethod
    def make(cls, i: int, *, monitor: bool = False, bond: int = 1_000_000) -> Party:
        # Deterministic Ed25519 keys so test failures are reproducible; Paillier keys are
        # pooled (generating one per party would dominate test time).
        seed = hashlib.sha256(b"kofo-test-party" + i.to_bytes(4, "big")).digest()
        pub, priv = _paillier(i % 6)
        return cls(Ed25519PrivateKey.from_private_bytes(seed), pub, priv, bond, monitor)

    def register_tx(self, ts: int = T0, *, addresses: dict[str, str] | None = None) -> bytes:
        seed, proof = privacy.zero_seed(self.paillier_pub, privacy.register_context(self.id))
        n = privacy.public_modulus(self.paillier_pub)
        body = RegisterNode(
            addresses={c: node_address(self.id, c) for c in ("btc", "eth")}
            if addresses is None
            else addresses,
            paillier_n=n,
            balance_seed=seed,
            bond=self.bond,
            monitor=self.monitor,
            seed_proof=proof,
            modulus_proof=modulus_proof(self.paillier_priv, self.id),
            pow_nonce=registration_work(self.id, n),
        )
        return sign_tx(self.key, body, ts=ts)

    def withdraw(self, ct: bytes, asset: str, seq: int, **overrides: object) -> WithdrawFees:
        """The withdrawal of the whole balance ``ct`` (revealed with this party's key)."""
        amount, r = privacy.reveal(self.paillier_priv, ct)
        seed, proof = privacy.zero_seed(
            self.paillier_pub, privacy.withdraw_context(self.id, asset, seq)
        )
        body = WithdrawFees(asset, amount, r, seed, "bc1-payout", seq, proof)
        return dataclasses.replace(body, **overrides)  # type: ignore[arg-type]


def _btc_expiry(i: int, n: int, t0: int, expiry_time: int) -> BlockHeight:
    """A test order's btc expiry: the initiator's leg (legs[0], paying legs[1]) far out, as
    before (800,00x: any own leg after it is safe); a later btc leg, paid by an eth leg, at its
    ``expiry_time`` on the test validators' btc clock (``BTC_TIP_SEEN``, nominal 600 s blocks),
    so that ``commit_order``'s chain-clock check accepts it."""
    if i == 0:
        return BlockHeight(800_000 + n - i)
    return BlockHeight(BTC_TIP_SEEN + 5 + -(-(expiry_time - t0) // 600))


def make_order(
    route: list[Party],
    *,
    relays: list[Party] = (),  # type: ignore[assignment]
    kind: OrderKind = OrderKind.ROUTED,
    amount: int = 10_000_000,
    order_id: bytes | None = None,
    fee_bps: int = 10,
    t0: int = T0,
    expiry_gap: int = 3_600,
    private_fee: int | None = None,
) -> SettlementOrder:
    """A cyclic route ``route[0] -> route[1] -> ... -> route[0]`` with valid expiries."""
    n = len(route)
    legs = []
    chains = ["btc", "eth"]
    for i in range(n):
        expiry_time = t0 + 10_000 + (n - i) * expiry_gap
        chain = chains[i % 2]
        legs.append(
            Leg(
                chain=chain,
                token=None,
                sender=route[i].id,
                recipient=route[(i + 1) % n].id,
                sender_address=leg_address(chain, f"{chain}-addr-{i}"),
                recipient_address=leg_address(chain, f"{chain}-addr-{i + 1}"),
                amount=amount + i,
                expiry=UnixTime(expiry_time)
                if chain == "eth"
                else _btc_expiry(i, n, t0, expiry_time),
                expiry_time=expiry_time,
                lock_by=t0 + 600 + i * 60,
            )
        )
    quotes: list[FeeQuote] = []
    if kind is OrderKind.ROUTED:
        for p in route[1:]:
            fee_ct = None if private_fee is None else privacy.encrypt(p.paillier_pub, private_fee)
            quotes.append(FeeQuote(p.id, QuoteRole.PROVIDER, os.urandom(16), fee_ct))
        quotes += [FeeQuote(r.id, QuoteRole.RELAY, os.urandom(16)) for r in relays]
    routed = kind is OrderKind.ROUTED
    order = SettlementOrder(
        order_id=order_id or bytes(16),
        kind=kind,
        payment_hash=hashlib.sha256(os.urandom(32)).digest(),
        legs=tuple(legs),
        relays=tuple(r.id for r in relays),
        quotes=tuple(quotes),
        protocol_fee_bps=fee_bps if routed else 0,
        protocol_fee=protocol_fee(amount, fee_bps) if routed else 0,
    )
    # The ledger requires the id derived from the content; an explicit ``order_id`` is kept
    # as given (to test that the ledger refuses it).
    return order if order_id is not None else with_derived_id(order)


LEG_KEYS: dict[str, bytes] = {}
"""Test leg keys by the address a leg names (``leg_address``): what ``prove_legs`` signs with."""


def leg_address(chain: str, label: str) -> str:
    """A deterministic chain address for ``label`` whose key the tests hold: an Ethereum
    account on ``eth``, a compressed secp256k1 public key (an HTLC key) elsewhere."""
    key = hashlib.sha256(b"kofo-test-leg-key/" + label.encode()).digest()
    address = address_of(key, KeyKind.ETHEREUM if chain == "eth" else KeyKind.SECP256K1)
    LEG_KEYS[address] = key
    return address


def node_address(node: bytes, chain: str) -> str:
    """The ``chain`` address node ``node`` registers (its key held by the tests)."""
    return leg_address(chain, f"node-{node.hex()}")


def _blocks_for_margin(chain: str) -> int:
    """The fewest blocks of height chain ``chain`` two legs on it must be apart for
    ``commit_order`` (its lenient reading: the gap's blocks at their slowest) to leave the
    sender of the earlier-expiring one its margin (notice + settle), at the default params."""
    p = LedgerParams()
    cfg = p.chain_clock[chain]
    need = cfg["notice"] + cfg["settle"]
    slowest = cfg["block_interval"] * (100 + p.clock_tolerance_pct)
    return -(-need * 100 // slowest)


def quote_legs(order: SettlementOrder, quote: Quote) -> SettlementOrder:
    """``order`` with the provider's legs trading ``quote``'s terms (its incoming leg pays
    ``take_amount`` of ``take_asset``, its outgoing leg ``give_amount`` of ``give_asset``) at
    the provider's registered addresses, as the ledger requires of a taken order."""
    n = len(order.legs)
    legs = []
    for i, leg in enumerate(order.legs):
        if leg.recipient == quote.provider:
            asset, amount = quote.take_asset, quote.take_amount
        elif leg.sender == quote.provider:
            asset, amount = quote.give_asset, quote.give_amount
        else:
            legs.append(leg)
            continue
        chain = asset.split(":", 1)[0]
        token = asset.split(":", 1)[1] if ":" in asset else None

        def addr(node: bytes, label: int, chain: str = chain) -> str:
            if node == quote.provider:
                return node_address(node, chain)
            return leg_address(chain, f"{chain}-addr-{label}")

        legs.append(
            dataclasses.replace(
                leg,
                chain=chain,
                token=token,
                amount=amount,
                sender_address=addr(leg.sender, i),
                recipient_address=addr(leg.recipient, i + 1),
                expiry=UnixTime(leg.expiry_time)
                if chain == "eth"
                # the provider's own btc leg 10 blocks out on the test validators' btc clock
                # (safe against the eth leg paying it); a btc leg paying it far out
                else BlockHeight(BTC_TIP_SEEN + 5 + 10)
                if leg.sender == quote.provider
                else BlockHeight(800_000 + n - i),
            )
        )
    pays = next(i for i, leg in enumerate(legs) if leg.sender == quote.provider)
    # a btc leg right after the provider's own btc leg (route [taker, provider, x]: x is paid by
    # the provider) expires the least number of blocks under it that commit_order's chain-clock
    # check accepts (notice + settle within n blocks at their slowest): written short, as a taker
    # may write it, it sits a block above the test validators' estimated tip
    own = legs[pays]
    if pays + 1 < n and isinstance(own.expiry, BlockHeight):
        nxt = legs[pays + 1]
        if isinstance(nxt.expiry, BlockHeight) and nxt.chain == own.chain:
            legs[pays + 1] = dataclasses.replace(
                nxt, expiry=BlockHeight(own.expiry.value - _blocks_for_margin(own.chain))
            )
    # the provider's own leg is due attest_grace after the leg paying it in (the ledger's rule:
    # it may lock only once paid in), and the legs after it no earlier
    grace = LedgerParams().attest_grace
    for i in range(max(pays, 1), n):
        least = legs[i - 1].lock_by + (grace if i == pays else 0)
        if legs[i].lock_by < least:
            legs[i] = dataclasses.replace(legs[i], lock_by=least)
    fee = protocol_fee(legs[0].amount, order.protocol_fee_bps) if order.protocol_fee_bps else 0
    return dataclasses.replace(order, legs=tuple(legs), protocol_fee=fee)


def hold_keys(*accounts: object) -> None:
    """The tests hold these Ethereum accounts' keys (``LocalAccount``s): ``prove_legs`` signs
    with them."""
    for acct in accounts:
        LEG_KEYS[acct.address] = bytes(acct.key)  # type: ignore[attr-defined]


def prove_legs(commit: CommitOrder, *, skip: bytes | None = None) -> CommitOrder:
    """``commit`` with the proofs of control of every leg key the tests hold (those of node
    ``skip`` left out), as the route's parties add them."""
    order = commit.order
    proofs = {}
    for i, leg in enumerate(order.legs):
        for role, node, address in (
            (LegRole.SENDER, leg.sender, leg.sender_address),
            (LegRole.RECIPIENT, leg.recipient, leg.recipient_address),
        ):
            key = LEG_KEYS.get(address)
            if key is not None and node != skip:
                proofs[(i, role)] = sign_leg_key(key, address, order.order_id, i, role)
    return commit.with_leg_proofs(proofs)


def signed_commit(order: SettlementOrder, signers: list[Party]) -> CommitOrder:
    """``order`` signed by ``signers``, with every leg key's proof."""
    return prove_legs(CommitOrder(order, tuple(order.sign(p.key) for p in signers)))


def commit_tx(
    order: SettlementOrder, signers: list[Party], submitter: Party, ts: int = T0
) -> bytes:
    return sign_tx(submitter.key, signed_commit(order, signers), ts=ts)


def all_parties(route: list[Party], relays: list[Party] = ()) -> list[Party]:  # type: ignore[assignment]
    return [*route, *relays]


class SeenChains:
    """One validator's view of the chains (what its chain watchers report), set by the test:
    the ledger's :class:`~kofo.wire.attest.ChainObserver` interface over a table. Tests of the
    settlement watchers themselves run against the embedded chains (tests/swap, tests/bitcoin,
    tests/ethereum); here what matters is what the ledger does with what validators saw."""

    def __init__(self) -> None:
        self.facts: dict[tuple[bytes, int], Observation] = {}
        self.asked: list[LegRef] = []
        self.bonds: dict[bytes, BondObservation] = {}
        self.executed: dict[bytes, ExecutedDecision] = {}
        self.blind: set[str] = set()
        """chains whose reads fail now (the validator's node down, a timeout): ``observe``
        raises :class:`~kofo.wire.attest.ChainUnreadable` for their legs"""
        self.tips: dict[str, int] = {"btc": BTC_TIP_SEEN}
        """chain -> its tip at the confirmation depth (the chain clock this validator attests);
        btc's by default, far enough below the test orders' btc expiries (800,00x) for a
        leg paying in btc to leave any own leg its margin (a take needs the clocks)"""

    def observe_tips(self) -> list[ChainTip]:
        return [ChainTip(c, h) for c, h in sorted(self.tips.items())]

    def see_bond(self, node: bytes, amount: int, height: int = 1) -> None:
        """The bond vault holds ``amount`` for ``node`` (as of the vault chain's ``height``)."""
        self.bonds[node] = BondObservation(node, amount, height)

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        return self.bonds.get(node)

    def see_executed(self, decision: bytes, height: int = 1) -> None:
        """The bond vault executed ledger decision ``decision`` (as of ``height``)."""
        self.executed[decision] = ExecutedDecision(decision, height)

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        return self.executed.get(decision)

    def see(
        self,
        order: SettlementOrder,
        leg: int,
        outcome: LegOutcome,
        txid: str | None = None,
        height: int = 100,
    ) -> None:
        txid = txid or hashlib.sha256(order.order_id + bytes([leg]) + outcome.encode()).hexdigest()
        self.facts[(order.order_id, leg)] = Observation(order.order_id, leg, outcome, txid, height)

    def observe(self, ref: LegRef) -> Observation | None:
        self.asked.append(ref)
        if ref.leg.chain in self.blind:
            raise ChainUnreadable(ref.leg.chain, "its node is down")
        return self.facts.get((ref.order_id, ref.index))


class Ledger:
    """A ledger app plus a block counter: ``ledger.block(tx, ...)`` applies one block.

    As in solo mode, each block after the first starts with the attestation of what
    ``chains`` (this single validator's observer) sees of the pending legs."""

    def __init__(
        self,
        path: str | None = None,
        params: LedgerParams | None = None,
        chains: SeenChains | None = None,
    ) -> None:
        self.chains = chains if chains is not None else SeenChains()
        self.app = LedgerApp(MerkleStore(path), params or ledger_params(), observer=self.chains)
        self.app.init_chain()
        self.time = T0

    def block(self, *txs: bytes, time: int | None = None):
        if time is not None:
            self.time = time
        height = self.app.height + 1
        if height > 1:
            txs = (self.app.solo_attestation(height), *txs)
        blk = Block(height, self.time, tuple(txs))
        result = self.app.apply_block(blk)
        if height > 1:  # the callers look at their own txs' results
            assert result.results[0].ok, result.results[0].log
            result = type(result)(result.height, result.app_hash, result.results[1:])
        return result

    def attested(self, time: int | None = None) -> None:
        """One empty block: what the chains show now gets attested."""
        self.ok(time=time)

    def bonded(self, *parties: Party) -> None:
        """Each party's bond seen locked in the vault, and attested."""
        for p in parties:
            self.chains.see_bond(p.id, p.bond)
        self.attested()
        for p in parties:
            assert self.app.bond(p.id) == p.bond

    def ok(self, *txs: bytes, time: int | None = None) -> None:
        result = self.block(*txs, time=time)
        bad = [r.log for r in result.results if not r.ok]
        assert not bad, bad


def take_order(
    quote: Quote,
    provider: Party,
    taker: Party,
    *,
    route: list[Party] | None = None,
    t0: int | None = None,
) -> CommitOrder:
    """The order a taker commits to when it takes ``quote`` (a direct trade with the provider
    unless ``route`` says otherwise), signed by every party but the provider. By default its
    first leg's ``lock_by`` is 600 s after the quote's ``valid_until``: past the provider's
    honour window, as the ledger requires of a taken order."""
    route = route or [taker, provider]
    t0 = quote.valid_until if t0 is None else t0
    order = make_order(route, amount=1_000, t0=t0)
    quotes = tuple(
        FeeQuote(q.node, q.role, quote.quote_id, q.fee_ct) if q.node == provider.id else q
        for q in order.quotes
    )
    if not any(q.node == provider.id for q in quotes):
        quotes += (FeeQuote(provider.id, QuoteRole.PROVIDER, quote.quote_id),)
    order = with_derived_id(quote_legs(dataclasses.replace(order, quotes=quotes), quote))
    commit = CommitOrder(order, tuple(order.sign(p.key) for p in route if p is not provider))
    return prove_legs(commit, skip=provider.id)


def take_evidence(
    quote: Quote,
    provider: Party,
    taker: Party,
    *,
    filer: Party | None = None,
    ts: int | None = None,
    order: CommitOrder | None = None,
) -> bytes:
    """``quote_not_honoured`` evidence: ``taker``'s take of ``quote`` with its order."""
    order = order or take_order(quote, provider, taker)
    take = Take(
        quote.quote_id,
        taker.id,
        quote.valid_until - 10 if ts is None else ts,
        order.order.order_id,
    )
    return sign_tx(
        (filer or taker).key,
        FileEvidence(
            EvidenceKind.QUOTE_NOT_HONOURED,
            quote=quote,
            quote_sig=provider.key.sign(quote.signing_bytes()),
            take=take,
            take_sig=taker.key.sign(take.signing_bytes()),
            order=order,
        ),
    )
