"""Leg outcomes by validator attestation (CometBFT 0.38 vote extensions).

Each validator's app holds a :class:`~kofo.wire.attest.ChainObserver`. At ``ExtendVote`` for
height ``h`` it observes the pending legs of committed orders (state as of ``h - 1``) and puts
the facts that differ from the ledger's record into its vote extension. CometBFT signs the
extension with the validator's consensus key; at ``h + 1`` the proposer puts the extended
commit of ``h`` into its block as the first transaction (an *attestation tx*, see
:func:`encode_attest_tx`), ``ProcessProposal`` on every validator checks each signature against
the validator set the ledger recorded at genesis, and ``FinalizeBlock`` counts a fact once
validators with more than two thirds of the total voting power attested exactly it (order,
leg, outcome, txid and chain height). Nothing else can set a leg's outcome.

Solo mode has no validator set: the producer's own observation is the single vote (power 1 of
1), placed by the producer; ``check_tx`` refuses anything that starts like an attestation tx,
so nobody can slip one into the mempool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kofo.wire import envelope
from kofo.wire.attest import (
    MAX_EXTENSION_BYTES,
    MAX_TIPS,
    BondObservation,
    ChainTip,
    ChainUnreadable,
    ExecutedDecision,
    LegRef,
    Observation,
    decode_extension_every,
)
from kofo.wire.codec import EncodingError, count_items, decode, encode
from kofo.wire.envelope import BadMessage

ATTEST_TX_PREFIX = b"KOFO/attest/v1\x00"
"""Marks the attestation tx; not valid CBOR of an envelope, so no user tx can look like one."""
VALIDATOR_ADDRESS_SIZE = 20
MAX_VALIDATORS = 128
ATTEST_TX_ITEMS = 8 + 4 * MAX_VALIDATORS
"""CBOR items of an attestation tx: its map, height, round and one [address, extension,
signature] per validator."""
SOLO_ADDRESS = b""
"""The single vote of solo mode (no consensus keys)."""


@dataclass(frozen=True, slots=True)
class Validator:
    pub_key: bytes  # Ed25519, 32 bytes
    power: int

    @property
    def address(self) -> bytes:
        return validator_address(self.pub_key)


def validator_address(pub_key: bytes) -> bytes:
    """CometBFT's address of an Ed25519 validator key: the first 20 bytes of its SHA-256."""
    return hashlib.sha256(pub_key).digest()[:VALIDATOR_ADDRESS_SIZE]


@dataclass(frozen=True, slots=True)
class Vote:
    validator: bytes
    extension: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class AttestTx:
    height: int
    """The height whose precommits carried these extensions (the block's height minus one)."""
    round: int
    votes: tuple[Vote, ...]


def _sfixed64(field_no: int, value: int) -> bytes:
    if value == 0:
        return b""
    return bytes([field_no << 3 | 1]) + (value & (2**64 - 1)).to_bytes(8, "little")


def _len_field(field_no: int, data: bytes) -> bytes:
    if not data:
        return b""
    return bytes([field_no << 3 | 2]) + uvarint(len(data)) + data


def uvarint(n: int) -> bytes:
    """Protobuf's unsigned varint (also the ABCI socket's length prefix)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def extension_sign_bytes(chain_id: str, height: int, round_: int, extension: bytes) -> bytes:
    """What CometBFT signs for a vote extension: the length-delimited protobuf
    ``tendermint.types.CanonicalVoteExtension{extension=1, height=2 (sfixed64),
    round=3 (sfixed64), chain_id=4}`` (proto3: zero values are omitted)."""
    body = (
        _len_field(1, extension)
        + _sfixed64(2, height)
        + _sfixed64(3, round_)
        + _len_field(4, chain_id.encode())
    )
    return uvarint(len(body)) + body


def encode_attest_tx(tx: AttestTx) -> bytes:
    votes = [[v.validator, v.extension, v.signature] for v in tx.votes]
    return ATTEST_TX_PREFIX + encode({"height": tx.height, "round": tx.round, "votes": votes})


def is_attest_tx(raw: bytes) -> bool:
    return raw.startswith(ATTEST_TX_PREFIX)


def decode_attest_tx(raw: bytes) -> AttestTx:
    if not is_attest_tx(raw):
        raise BadMessage("not an attestation tx")
    body = raw[len(ATTEST_TX_PREFIX) :]
    # Counted from the headers before decoding: a hostile proposer's 1 MB of one-byte items
    # cost every validator ~1.5 s of ProcessProposal (the extensions themselves are bytes).
    if count_items(body, ATTEST_TX_ITEMS) > ATTEST_TX_ITEMS:
        raise BadMessage(f"an attestation tx holds at most {ATTEST_TX_ITEMS} CBOR items")
    m = decode(body)
    if not isinstance(m, dict) or set(m) != {"height", "round", "votes"}:
        raise BadMessage("attestation tx must be {'height', 'round', 'votes'}")
    height, round_, votes = m["height"], m["round"], m["votes"]
    for name, n in (("height", height), ("round", round_)):
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**62:
            raise BadMessage(f"attestation tx {name} must be an integer in 0..2^62")
    if not isinstance(votes, list) or len(votes) > MAX_VALIDATORS:
        raise BadMessage(f"attestation tx votes must be a list of at most {MAX_VALIDATORS}")
    out = []
    for i, v in enumerate(votes):
        if (
            not isinstance(v, list)
            or len(v) != 3
            or not all(isinstance(x, bytes) for x in v)
            or len(v[1]) > MAX_EXTENSION_BYTES
            or len(v[2]) > 64
        ):
            raise BadMessage(f"attestation tx votes[{i}] must be [address, extension, signature]")
        out.append(Vote(v[0], v[1], v[2]))
    addrs = [v.validator for v in out]
    if addrs != sorted(set(addrs)):
        raise BadMessage("attestation tx votes must be sorted by validator, one each")
    return AttestTx(height, round_, tuple(out))


def check_attest_tx(
    tx: AttestTx,
    *,
    expected_height: int,
    chain_id: str,
    validators: Mapping[bytes, Validator],
) -> None:
    """Raise :class:`BadMessage` unless every vote is by a known validator, signed by its key
    over its extension, and the votes hold more than two thirds of the voting power (so a
    proposer can leave out less than a third of the attestations, never fabricate one)."""
    if tx.height != expected_height:
        raise BadMessage(f"attestation tx is for height {tx.height}, expected {expected_height}")
    total = sum(v.power for v in validators.values())
    present = 0
    for vote in tx.votes:
        val = validators.get(vote.validator)
        if val is None:
            raise BadMessage(f"attestation by unknown validator {vote.validator.hex()}")
        msg = extension_sign_bytes(chain_id, tx.height, tx.round, vote.extension)
        if not envelope.verify_ed25519(val.pub_key, vote.signature, msg):
            raise BadMessage(f"attestation by {vote.validator.hex()}: bad extension signature")
        present += val.power
    if 3 * present <= 2 * total:
        raise BadMessage(
            f"attestation tx carries {present} of {total} voting power; more than 2/3 needed"
        )


def tally(
    votes: Iterable[tuple[int, bytes]], total_power: int
) -> tuple[list[Observation], list[BondObservation], list[ExecutedDecision]]:
    """The facts attested by more than two thirds of ``total_power`` (see :func:`tally_all`)."""
    t = tally_all(votes, total_power)
    return t.facts, t.bonds, t.executed


@dataclass(frozen=True, slots=True)
class Tally:
    facts: list[Observation]
    bonds: list[BondObservation]
    executed: list[ExecutedDecision]
    clocks: dict[str, int]
    """Per chain, the attested height: see :func:`attested_height`."""


def attested_height(reports: Iterable[tuple[int, int]], total_power: int) -> int | None:
    """The highest height ``h`` that validators holding more than two thirds of
    ``total_power`` report at least (``reports`` are ``(power, height)``), or None when the
    reports hold no more than two thirds. With less than a third of the power lying, more than
    a third of the power behind ``h`` is honest, so ``h`` is at most the highest honest report
    (liars cannot push it up); when the honest power present exceeds two thirds, ``h`` is at
    least the lowest honest report (liars cannot push it down either)."""
    behind = 0
    for power, height in sorted(reports, key=lambda r: -r[1]):
        behind += power
        if 3 * behind > 2 * total_power:
            return height
    return None


def tally_all(votes: Iterable[tuple[int, bytes]], total_power: int) -> Tally:
    """The facts attested by more than two thirds of ``total_power``, sorted: leg outcomes,
    bond balances, bond decisions the vault executed, and each chain's clock.

    ``votes`` are ``(power, extension)``; a malformed extension counts for nothing (an honest
    validator's never is: its structure is what VerifyVoteExtension checks)."""
    weight: dict[Observation, int] = {}
    bond_weight: dict[BondObservation, int] = {}
    done_weight: dict[ExecutedDecision, int] = {}
    tips: dict[str, list[tuple[int, int]]] = {}
    for power, ext in votes:
        try:
            obs, bonds, done, seen_tips = decode_extension_every(ext)
        except (BadMessage, EncodingError):
            continue
        for o in obs:
            weight[o] = weight.get(o, 0) + power
        for b in bonds:
            bond_weight[b] = bond_weight.get(b, 0) + power
        for d in done:
            done_weight[d] = done_weight.get(d, 0) + power
        for t in seen_tips:
            tips.setdefault(t.chain, []).append((power, t.height))
    clocks = {}
    # (<= MAX_VALIDATORS votes of <= MAX_TIPS tips each: bounded work)
    for chain in sorted(tips):
        h = attested_height(tips[chain], total_power)
        if h is not None:
            clocks[chain] = h
    return Tally(
        sorted(o for o, w in weight.items() if 3 * w > 2 * total_power),
        sorted(b for b, w in bond_weight.items() if 3 * w > 2 * total_power),
        sorted(d for d, w in done_weight.items() if 3 * w > 2 * total_power),
        clocks,
    )


def validators_to_state(vals: Sequence[Validator]) -> list[list[Any]]:
    return [[v.pub_key, v.power] for v in sorted(vals, key=lambda v: v.address)]


def validators_from_state(raw: Any) -> dict[bytes, Validator]:
    vals = [Validator(bytes(k), int(p)) for k, p in raw]
    return {v.address: v for v in vals}


class FileObserver:
    """A validator's view of the chains read from a JSON file (re-read when it changes): for
    testnets and tests, where the test decides what each validator sees. Production nodes
    inject the settlement layer's chain watchers instead (clearance never imports them).

    ``{"legs": [[order_id hex, leg, outcome, txid, chain_height], ...],
    "bonds": [[node hex, amount, chain_height], ...], "done": [[decision hex, chain_height],
    ...], "tips": [[chain, safe_height], ...], "blind": [chain, ...]}`` (``blind``: chains
    whose reads fail, :class:`ChainUnreadable`); a missing or unreadable file is an observer
    that sees nothing."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._legs: dict[tuple[bytes, int], Observation] = {}
        self._bonds: dict[bytes, BondObservation] = {}
        self._done: dict[bytes, ExecutedDecision] = {}
        self._tips: list[ChainTip] = []
        self._blind: frozenset[str] = frozenset()

    def _load(self) -> None:
        import json
        import os

        try:
            st = os.stat(self._path)
        except OSError:
            self._legs, self._bonds, self._done, self._stamp = {}, {}, {}, None
            self._tips, self._blind = [], frozenset()
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(self._path, encoding="utf-8") as f:
                data = json.load(f)
            legs = {}
            for oid, leg, outcome, txid, height in data.get("legs", []):
                obs = Observation.from_list(
                    [bytes.fromhex(oid), leg, outcome, txid, height], "observed leg"
                )
                legs[(obs.order_id, obs.leg)] = obs
            bonds = {}
            for node, amount, height in data.get("bonds", []):
                b = BondObservation.from_list([bytes.fromhex(node), amount, height], "bond")
                bonds[b.node] = b
            done = {}
            for decision, height in data.get("done", []):
                d = ExecutedDecision.from_list([bytes.fromhex(decision), height], "done")
                done[d.decision] = d
            tips = [
                ChainTip.from_list([chain, height], "tip")
                for chain, height in data.get("tips", [])[:MAX_TIPS]
            ]
            blind = frozenset(str(c) for c in data.get("blind", []))
        except (OSError, ValueError, TypeError, BadMessage):
            return  # a half-written file: keep the last good view
        self._legs, self._bonds, self._done, self._stamp = legs, bonds, done, stamp
        self._tips, self._blind = tips, blind

    def observe(self, ref: LegRef) -> Observation | None:
        self._load()
        if ref.leg.chain in self._blind:
            raise ChainUnreadable(ref.leg.chain, "listed as blind in the observer file")
        return self._legs.get((ref.order_id, ref.index))

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        self._load()
        return self._bonds.get(node)

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        self._load()
        return self._done.get(decision)

    def observe_tips(self) -> list[ChainTip]:
        self._load()
        return list(self._tips)
