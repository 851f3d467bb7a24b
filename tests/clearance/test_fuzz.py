"""Issue 19 item 1: a fuzzer over every ledger query path and every tx type.

Seeds are valid messages (every tx type, every query argument); hypothesis mutates them at the
structure level (a field replaced by a value of any type or size, removed, or added, then
correctly re-signed so the mutation reaches the schema and the rules) and at the byte level.
Properties: CheckTx and queries never raise and answer with a stable code; no input reaches an
``internal_error`` (that would be a bug); FinalizeBlock over any of these txs gives the same
results and app hash on a validator that had checked the txs (cache warm) and on one that had
not. Bounded by ``max_examples`` so it runs in CI in seconds."""

import dataclasses
import hashlib

import cbor2
import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kofo.clearance import attest, bonds, privacy
from kofo.clearance.app import Block
from kofo.clearance.errors import ABCI_CODES
from kofo.errors import KofoError
from kofo.wire.codec import encode
from kofo.wire.envelope import DOMAIN, public_key_bytes
from kofo.wire.orders import (
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    Quote,
    RegisterValidatorKey,
    ReportOutcome,
    Take,
    Unbond,
    derive_quote_id,
    sign_tx,
)

from .helpers import T0, Ledger, Party, commit_tx, make_order, take_order

pytestmark = pytest.mark.timeout(300)

PARTIES = [Party.make(i) for i in range(5)]
ALICE, M1, M2, RELAY, MON = PARTIES
ORDER = make_order([ALICE, M1, M2], relays=[RELAY])
VALIDATOR = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz-validator").digest())
SECP = hashlib.sha256(b"fuzz-secp").digest()


def _seed_txs() -> list[bytes]:
    quote = Quote(bytes(16), M1.id, "btc", 1_000, "eth", 50_000, T0 + 100, ALICE.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    take_commit = take_order(quote, M1, ALICE)
    take = Take(quote.quote_id, ALICE.id, T0 + 90, take_commit.order.order_id)
    consensus_key = public_key_bytes(VALIDATOR)
    eth = bonds.eth_address(coincurve.PrivateKey(SECP).public_key)
    valkey = RegisterValidatorKey(
        consensus_key=consensus_key,
        eth_address=eth,
        consensus_sig=VALIDATOR.sign(bonds.valkey_consensus_message(eth, M1.id)),
        eth_sig=bonds.sign_digest(SECP, bonds.valkey_eth_digest(consensus_key)),
    )
    return [
        PARTIES[0].register_tx(),
        commit_tx(ORDER, [ALICE, M1, M2, RELAY], ALICE),
        sign_tx(M1.key, ReportOutcome(ORDER.order_id, 1, LegOutcome.LOCKED, "tx1")),
        sign_tx(ALICE.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, ORDER.order_id, 1)),
        sign_tx(
            MON.key,
            FileEvidence(
                EvidenceKind.QUOTE_NOT_HONOURED,
                quote=quote,
                quote_sig=M1.key.sign(quote.signing_bytes()),
                take=take,
                take_sig=ALICE.key.sign(take.signing_bytes()),
                order=take_commit,
            ),
        ),
        sign_tx(M2.key, M2.withdraw(privacy.encrypt(M2.paillier_pub, 7), "btc", 0)),
        sign_tx(M1.key, valkey),
        sign_tx(M1.key, Unbond(10**15, 0, b"\x11" * 20)),
        _attest_tx(5, _attest_map(5)),
    ]


def _extension_map() -> dict:
    # What a validator attests: a leg of ORDER and a vault balance of M1 (valid as they stand).
    return {
        "v": 1,
        "obs": [[ORDER.order_id, 0, "locked", "ab" * 32, 100]],
        "bonds": [[M1.id, 10**18, 5]],
    }


def _attest_map(height: int, extension: bytes | None = None) -> dict:
    ext = encode(_extension_map()) if extension is None else extension
    return {"height": height - 1, "round": 0, "votes": [[attest.SOLO_ADDRESS, ext, b""]]}


def _attest_tx(height: int, m: dict) -> bytes:
    return attest.ATTEST_TX_PREFIX + cbor2.dumps(m, canonical=True)


SEEDS = _seed_txs()
KEYS = {p.id: p.key for p in PARTIES}

values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**300), max_value=2**300),
        st.sampled_from([0, 1, -1, 255, 256, 2**64, 2**256, 10**80]),
        st.binary(max_size=80),
        st.sampled_from([b"", b"\x00" * 16, b"\x00" * 32, b"\xff" * 64]),
        st.text(max_size=40),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _mutate(value, path, op, new):
    if not path:
        return new if op != "delete" else None
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        out = dict(value)
        if not rest and op == "delete":
            out.pop(head, None)
        elif not rest and op == "add":
            out[head + "_x" if isinstance(head, str) else "x"] = new
        else:
            out[head] = _mutate(value[head], rest, op, new)
        return out
    out = list(value)
    if not rest and op == "delete":
        del out[head]
    else:
        out[head] = _mutate(value[head], rest, op, new)
    return out


def _resign(env: dict) -> bytes:
    sender = env.get("sender")
    key = KEYS.get(sender) if isinstance(sender, bytes) else None
    body = cbor2.dumps(env, canonical=True)
    sig = key.sign(DOMAIN + body) if key is not None else b"\x00" * 64
    return cbor2.dumps({"env": env, "sig": sig}, canonical=True)


@st.composite
def fuzzed_txs(draw):
    raw = draw(st.sampled_from(SEEDS))
    kind = draw(st.sampled_from(["struct", "struct", "bytes", "seed"]))
    if kind == "seed":
        return raw
    if kind == "bytes":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            op = draw(st.sampled_from(["flip", "cut", "insert"]))
            if op == "flip":
                data[i] ^= draw(st.integers(1, 255))
            elif op == "cut":
                del data[i:]
                if not data:
                    break
            else:
                data[i:i] = draw(st.binary(min_size=1, max_size=9))
        return bytes(data)
    if attest.is_attest_tx(raw):  # not an envelope: its CBOR after the prefix
        m = cbor2.loads(raw[len(attest.ATTEST_TX_PREFIX) :])
        path = draw(st.sampled_from(list(_paths(m))[1:]))
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        mutated = _mutate(m, path, op, draw(values))
        return attest.ATTEST_TX_PREFIX + cbor2.dumps(mutated, canonical=True)
    env = cbor2.loads(raw)["env"]
    paths = list(_paths(env))
    path = draw(st.sampled_from(paths[1:]))
    op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    mutated = _mutate(env, path, op, draw(values))
    return _resign(mutated) if isinstance(mutated, dict) else cbor2.dumps(mutated)


@st.composite
def fuzzed_attestations(draw):
    """A function of the block height giving a mutated attestation tx for that block: the
    extension's structure, the tx's structure, or its bytes mutated (or none: a valid one)."""
    kind = draw(st.sampled_from(["seed", "extension", "extension", "outer", "bytes"]))
    ext_map = _extension_map()
    ext = encode(ext_map)
    if kind == "extension":
        path = draw(st.sampled_from(list(_paths(ext_map))[1:]))
        mutated = _mutate(
            ext_map, path, draw(st.sampled_from(["replace", "delete", "add"])), draw(values)
        )
        ext = cbor2.dumps(mutated, canonical=True)
    outer_op = None
    if kind == "outer":
        path = draw(st.sampled_from(list(_paths(_attest_map(2)))[1:]))
        outer_op = (path, draw(st.sampled_from(["replace", "delete", "add"])), draw(values))
    flips = []
    if kind == "bytes":
        flips = [(draw(st.integers(0, 10_000)), draw(st.integers(1, 255))) for _ in range(3)]

    def make(height: int) -> bytes:
        m = _attest_map(height, ext)
        if outer_op is not None:
            m = _mutate(m, *outer_op)
        raw = bytearray(_attest_tx(height, m))
        for i, x in flips:  # past the prefix: the bytes stay an attestation tx
            raw[len(attest.ATTEST_TX_PREFIX) + i % (len(raw) - len(attest.ATTEST_TX_PREFIX))] ^= x
        return bytes(raw)

    return make


_BASE = [
    [p.register_tx() for p in PARTIES],  # the same bytes for both (seeds are random)
    [commit_tx(ORDER, [ALICE, M1, M2, RELAY], ALICE)],
]


def _base_ledger() -> Ledger:
    ledger = Ledger()
    for txs in _BASE:
        ledger.ok(*txs)
    return ledger


WARM, COLD = _base_ledger(), _base_ledger()
AWARM, ACOLD = _base_ledger(), _base_ledger()
STABLE = set(ABCI_CODES.values()) | {0}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(txs=st.lists(fuzzed_txs(), min_size=1, max_size=4), dt=st.integers(0, 20_000))
def test_fuzzed_txs_are_refused_with_stable_codes_and_blocks_stay_deterministic(txs, dt):
    for tx in txs:
        result = WARM.app.check_tx(tx)
        assert result.code in STABLE and result.error != "internal_error", result.log
    time = T0 + dt if dt > WARM.time - T0 else WARM.time
    r_warm = WARM.block(*txs, time=time)
    r_cold = COLD.block(*txs, time=time)
    assert [r.code for r in r_warm.results] == [r.code for r in r_cold.results]
    assert all(r.error != "internal_error" for r in r_warm.results), r_warm.results
    assert r_warm.app_hash == r_cold.app_hash


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    make=fuzzed_attestations(),
    txs=st.lists(fuzzed_txs(), max_size=2),
    dt=st.integers(0, 20_000),
)
def test_fuzzed_attestation_txs_are_refused_or_applied_alike_and_never_halt(make, txs, dt):
    """The proposer-placed attestation tx (first in the block) mutated: FinalizeBlock refuses
    it with a stable code or applies it, never an internal error, alike on a warm and a cold
    validator; CheckTx refuses it from the mempool."""
    height = AWARM.app.height + 1
    raw = make(height)
    assert AWARM.app.check_tx(raw).error == "not_authorised"
    time = T0 + dt if dt > AWARM.time - T0 else AWARM.time
    results = []
    for ledger in (AWARM, ACOLD):
        for tx in txs:
            if ledger is AWARM:
                ledger.app.check_tx(tx)
        ledger.time = time
        results.append(ledger.app.apply_block(Block(height, time, (raw, *txs))))
    r_warm, r_cold = results
    assert [r.code for r in r_warm.results] == [r.code for r in r_cold.results]
    assert all(r.code in STABLE and r.error != "internal_error" for r in r_warm.results), (
        r_warm.results
    )
    assert r_warm.app_hash == r_cold.app_hash


QUERY_SEEDS = [
    ("/node", encode(ALICE.id)),
    ("/order", encode(ORDER.order_id)),
    ("/importance", encode(10)),
    ("/importance", b""),
    ("/rank_routes", encode([[ALICE.id, M1.id], [M2.id]])),
    ("/balance", encode({"node": M2.id, "asset": "btc"})),
    ("/foundation", encode("btc")),
    ("/params", b""),
    ("/decision", encode(bonds.decision_id(b"e" * 32))),
    ("/decisions", encode(0)),
    ("/decisions", b""),
    ("/valset_decision", encode(1)),
    ("/validator_keys", b""),
]


@st.composite
def fuzzed_queries(draw):
    path, data = draw(st.sampled_from(QUERY_SEEDS))
    path = draw(st.one_of(st.just(path), st.text(max_size=20)))
    kind = draw(st.sampled_from(["seed", "struct", "bytes", "random"]))
    if kind == "struct" and data:
        arg = cbor2.loads(data)
        target = draw(st.sampled_from(list(_paths(arg))))
        mutated = _mutate(
            arg, target, draw(st.sampled_from(["replace", "delete", "add"])), draw(values)
        )
        data = cbor2.dumps(mutated, canonical=True)
    elif kind == "bytes" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + draw(st.binary(max_size=4)) + data[i + 1 :]
    elif kind == "random":
        data = draw(st.one_of(st.binary(max_size=64), values.map(lambda v: cbor2.dumps(v))))
    return path, data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=fuzzed_queries())
def test_fuzzed_queries_answer_or_refuse_with_a_stable_code(query):
    path, data = query
    try:
        WARM.app.query(path, data)
    except KofoError as exc:
        assert exc.code in ABCI_CODES and exc.code != "internal_error", exc


def test_rank_routes_regression_case_from_the_issue():
    with pytest.raises(KofoError) as info:
        WARM.app.query("/rank_routes", bytes.fromhex("8101"))
    assert info.value.code == "invalid_input"
