"""Test vectors of every protocol message type, checked against docs/protocol.md.

Each vector is a deterministic message (fixed keys, nonces and times; Ed25519 signatures are
deterministic) whose wire bytes are printed in docs/protocol.md. The test rebuilds every message,
compares its bytes with the document, and parses it back with the receiver's own parser.
Regenerate the document section with ``python -m tests.wire.test_protocol_vectors --write``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.wire import exchange as ex
from kofo.wire import orders as od
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import open_message, public_key_bytes, sign
from kofo.wire.expiry import BlockHeight, UnixTime
from kofo.wire.legkeys import KeyKind, LegRole, address_of, sign_leg_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BEGIN, END = "<!-- vectors:begin -->", "<!-- vectors:end -->"

TS = 1_790_000_000
NONCE = bytes(range(16))


def _key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


ALICE, BOB, EPH = _key("alice"), _key("bob"), _key("ephemeral")
LEG_KEY_LABELS = ("alice-btc-leg", "bob-btc-leg", "bob-eth-leg", "alice-eth-leg")
PREIMAGE = bytes(32)  # the all-zero preimage: fine for a vector, never for a swap
PAYMENT_HASH = hashlib.sha256(PREIMAGE).digest()


def _order() -> od.SettlementOrder:
    a, b = public_key_bytes(ALICE), public_key_bytes(BOB)
    legs = (
        od.Leg(
            "btc",
            None,
            a,
            b,
            "02" + "aa" * 32,
            "03" + "bb" * 32,
            100_000,
            BlockHeight(900_144),
            TS + 86_400,
            TS + 600,
        ),
        od.Leg(
            "eth",
            None,
            b,
            a,
            "0x" + "bb" * 20,
            "0x" + "aa" * 20,
            30 * 10**15,
            UnixTime(TS + 43_200),
            TS + 43_200,
            TS + 1_200,
        ),
    )
    return od.SettlementOrder(bytes(range(16)), od.OrderKind.DIRECT, PAYMENT_HASH, legs)


def _signed(key: Ed25519PrivateKey, msg_type: str, body: dict) -> bytes:
    return sign(key, msg_type, body, ts=TS, nonce=NONCE).to_bytes()


LEG_KEYS = {label: hashlib.sha256(label.encode()).digest() for label in LEG_KEY_LABELS}


def _commit_order() -> bytes:
    # commit_order sv 2: each leg's addresses are keys whose proofs of control it carries
    # (kofo.wire.legkeys; BIP340 with 32 zero bytes of aux randomness, for a fixed vector).
    order = _order()
    addr = {
        "alice-btc-leg": address_of(LEG_KEYS["alice-btc-leg"], KeyKind.SECP256K1),
        "bob-btc-leg": address_of(LEG_KEYS["bob-btc-leg"], KeyKind.SECP256K1),
        "bob-eth-leg": address_of(LEG_KEYS["bob-eth-leg"], KeyKind.ETHEREUM),
        "alice-eth-leg": address_of(LEG_KEYS["alice-eth-leg"], KeyKind.ETHEREUM),
    }
    legs = (
        dataclasses.replace(
            order.legs[0],
            sender_address=addr["alice-btc-leg"],
            recipient_address=addr["bob-btc-leg"],
        ),
        dataclasses.replace(
            order.legs[1],
            sender_address=addr["bob-eth-leg"],
            recipient_address=addr["alice-eth-leg"],
        ),
    )
    order = dataclasses.replace(order, legs=legs)
    labels = (("alice-btc-leg", "bob-btc-leg"), ("bob-eth-leg", "alice-eth-leg"))
    proofs = {
        (i, role): sign_leg_key(
            LEG_KEYS[labels[i][role]], addr[labels[i][role]], order.order_id, i, role, aux=bytes(32)
        )
        for i in range(2)
        for role in LegRole
    }
    body = od.CommitOrder(order, (order.sign(ALICE), order.sign(BOB))).with_leg_proofs(proofs)
    body.verify_signatures()
    return _signed(ALICE, od.TX_COMMIT_ORDER, body.as_map())


def _report_outcome() -> bytes:
    body = od.ReportOutcome(bytes(range(16)), 1, od.LegOutcome.REDEEMED, "0x" + "cd" * 32)
    return _signed(BOB, od.TX_REPORT_OUTCOME, body.as_map())


def _offer() -> bytes:
    # Exchange protocol v2: seq is the maker's signing time in ms (here 10 minutes before
    # the offer expires).
    seq = TS * 1000 - 600_000
    offer = ex.Offer(bytes(16), "btc", "eth", 30, 1, 10_000, 10**8, True, 0, TS * 1000, seq)
    return _signed(ALICE, ex.MSG_OFFER, offer.to_body())


def _claim() -> bytes:
    claim = ex.Claim("btc", "eth", 100_000, 29, 1, TS * 1000 + 5_000, 4, public_key_bytes(EPH))
    return _signed(EPH, ex.MSG_CLAIM, claim.to_body())


def _register_node() -> bytes:
    # Paillier values are opaque bytes to the wire; the ledger checks their size and form.
    body = od.RegisterNode(
        {"btc": "02" + "aa" * 32, "eth": "0x" + "aa" * 20},
        paillier_n=bytes([0xC5]) * 256,
        balance_seed=bytes([0x3D]) * 512,
        bond=1_000_000,
        seed_proof=bytes([0x5A]) * 3072,
        modulus_proof=bytes([0x6B]) * 1024,
        pow_nonce=4242,
    )
    return _signed(ALICE, od.TX_REGISTER_NODE, body.as_map())


def _file_evidence() -> bytes:
    body = od.FileEvidence(od.EvidenceKind.LEG_NOT_LOCKED, order_id=bytes(range(16)), leg=1)
    return _signed(ALICE, od.TX_FILE_EVIDENCE, body.as_map())


def _withdraw_fees() -> bytes:
    body = od.WithdrawFees(
        asset="btc",
        amount=6_320,
        randomness=bytes([0x11]) * 256,
        new_seed=bytes([0x22]) * 512,
        payout_address="bcrt1q" + "q" * 38,
        seq=3,
        new_seed_proof=bytes([0x33]) * 768,
    )
    return _signed(BOB, od.TX_WITHDRAW_FEES, body.as_map())


def _register_validator_key() -> bytes:
    # Fixed stand-ins for the two signatures: the vector shows the layout; the ledger's checks
    # of both proofs of possession are tested in tests/clearance/test_bonds.py.
    body = od.RegisterValidatorKey(
        consensus_key=public_key_bytes(BOB),
        eth_address=bytes([0xAB]) * 20,
        consensus_sig=bytes([0x5C]) * 64,
        eth_sig=bytes([0xE5]) * 64 + bytes([27]),
    )
    return _signed(ALICE, od.TX_REGISTER_VALIDATOR_KEY, body.as_map())


def _unbond() -> bytes:
    return _signed(ALICE, od.TX_UNBOND, od.Unbond(4 * 10**17, 0, bytes.fromhex("cd" * 20)).as_map())


def _claim_message() -> ex.SignedClaim:
    return ex.open_claim(_claim())


def _fulfil() -> bytes:
    claim = _claim_message()
    hop = ex.sign_hop(_key("hop1"), claim, [])
    fulfil = ex.Fulfil(claim.claim_id, 2, 100_000, 2_997_000, TS * 1000 + 4_000, [hop])
    return _signed(_key("maker-ephemeral"), ex.MSG_FULFIL, fulfil.to_body())


SEAL_EPH = hashlib.sha256(b"kofo-seal-eph").digest()  # the box's X25519 key (vectors only)


def _offer_proof_plain() -> bytes:
    """v6: Alice (the offer vector's maker, offer id 00..00) proves she answered the claim
    vector with the fulfil signed by ``maker-ephemeral``."""
    filler = public_key_bytes(_key("maker-ephemeral"))
    return ex.make_offer_proof(ALICE, _claim_message().claim_id, filler, bytes(16))


def _offer_proof_signed_bytes() -> bytes:
    filler = public_key_bytes(_key("maker-ephemeral"))
    cid = _claim_message().claim_id
    return ex.offer_proof_message(cid, filler, public_key_bytes(ALICE), bytes(16))


def _offer_proof_op() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from kofo.exchange.sealed import seal

    eph = X25519PrivateKey.from_private_bytes(SEAL_EPH)
    return seal(_claim_message().claim.reply_key, _offer_proof_plain(), eph=eph)


def _fulfil_with_proof() -> bytes:
    claim = _claim_message()
    hop = ex.sign_hop(_key("hop1"), claim, [])
    fulfil = ex.Fulfil(
        claim.claim_id, 2, 100_000, 2_997_000, TS * 1000 + 4_000, [hop], _offer_proof_op()
    )
    return _signed(_key("maker-ephemeral"), ex.MSG_FULFIL, fulfil.to_body())


def _accept() -> bytes:
    claim = _claim_message()
    body = ex.Accept(claim.claim_id, hashlib.sha256(_fulfil()).digest())
    return _signed(EPH, ex.MSG_ACCEPT, body.to_body())


def _parse_tx(msg_type: str) -> Callable[[bytes], object]:
    return lambda raw: od.parse_tx_body(msg_type, open_message(raw).envelope.body)


# name -> (message type, builder, receiver's parser)
VECTORS: dict[str, tuple[str, Callable[[], bytes], Callable[[bytes], object]]] = {
    "clearance.register_node": (
        od.TX_REGISTER_NODE,
        _register_node,
        _parse_tx(od.TX_REGISTER_NODE),
    ),
    "clearance.commit_order": (od.TX_COMMIT_ORDER, _commit_order, _parse_tx(od.TX_COMMIT_ORDER)),
    "clearance.report_outcome": (
        od.TX_REPORT_OUTCOME,
        _report_outcome,
        _parse_tx(od.TX_REPORT_OUTCOME),
    ),
    "clearance.file_evidence": (
        od.TX_FILE_EVIDENCE,
        _file_evidence,
        _parse_tx(od.TX_FILE_EVIDENCE),
    ),
    "clearance.withdraw_fees": (
        od.TX_WITHDRAW_FEES,
        _withdraw_fees,
        _parse_tx(od.TX_WITHDRAW_FEES),
    ),
    "clearance.register_validator_key": (
        od.TX_REGISTER_VALIDATOR_KEY,
        _register_validator_key,
        _parse_tx(od.TX_REGISTER_VALIDATOR_KEY),
    ),
    "clearance.unbond": (od.TX_UNBOND, _unbond, _parse_tx(od.TX_UNBOND)),
    "exchange offer": (ex.MSG_OFFER, _offer, ex.open_offer),
    "exchange claim": (ex.MSG_CLAIM, _claim, ex.open_claim),
    "exchange fulfil": (ex.MSG_FULFIL, _fulfil, ex.open_fulfil),
    "exchange fulfil with offer proof (v6)": (ex.MSG_FULFIL, _fulfil_with_proof, ex.open_fulfil),
    "exchange accept": (
        ex.MSG_ACCEPT,
        _accept,
        lambda raw: ex.open_accept(raw, public_key_bytes(EPH)),
    ),
}


def _join() -> ex.Join:
    """Bob joins at position 1 of the fulfil vector's route (path key ``hop1``)."""
    claim = _claim_message()
    fid = hashlib.sha256(_fulfil()).digest()
    eph = _key("hop1")
    pub, bob = public_key_bytes(eph), public_key_bytes(BOB)
    addrs = {"btc": "03" + "bb" * 32, "eth": "0x" + "bb" * 20}
    data = ex.join_message(claim.claim_id, fid, 1, pub, bob, addrs)
    return ex.Join(1, bob, addrs, eph.sign(data), BOB.sign(data))


def _join_signed_bytes() -> bytes:
    j = _join()
    fid = hashlib.sha256(_fulfil()).digest()
    pub = public_key_bytes(_key("hop1"))
    return ex.join_message(_claim_message().claim_id, fid, 1, pub, j.node_id, j.addresses)


def _provider_join() -> ex.Join:
    """The maker joins at position 2 (the fulfil vector's filler, key ``ephemeral``) with its
    contact (protocol v3: signed in the join)."""
    claim = _claim_message()
    fid = hashlib.sha256(_fulfil()).digest()
    pub, maker = public_key_bytes(EPH), public_key_bytes(_key("maker"))
    addrs = {"btc": "03" + "cc" * 32, "eth": "0x" + "cc" * 20}
    contact = "127.0.0.1:9735"
    data = ex.join_message(claim.claim_id, fid, 2, pub, maker, addrs, contact)
    return ex.Join(2, maker, addrs, EPH.sign(data), _key("maker").sign(data), contact)


def _quote_ids() -> bytes:
    fid = hashlib.sha256(_fulfil()).digest()
    return ex.quote_id_for(fid, 1, public_key_bytes(BOB), "relay") + ex.quote_id_for(
        fid, 2, public_key_bytes(_key("maker")), "provider"
    )


# Exchange v2 values that are not envelopes: what a join signs, the join body as it travels
# (sealed to the initiator, then in the order frame), and the derived ledger quote ids.
DERIVED: dict[str, Callable[[], bytes]] = {
    "exchange join: signed bytes": _join_signed_bytes,
    "exchange join: body": lambda: encode(_join().to_body()),
    "exchange join: provider body with contact (v3)": lambda: encode(_provider_join().to_body()),
    "exchange quote ids: relay at 1 (bob), provider at 2 (maker)": _quote_ids,
    "exchange offer proof: signed bytes (v6)": _offer_proof_signed_bytes,
    "exchange offer proof: plaintext (v6)": _offer_proof_plain,
    "exchange offer proof: sealed op (v6)": _offer_proof_op,
}
DBEGIN, DEND = "<!-- derived-vectors:begin -->", "<!-- derived-vectors:end -->"


def _render_derived() -> str:
    out = [DBEGIN, ""]
    for name, build in DERIVED.items():
        hexed = build().hex()
        lines = [hexed[i : i + 96] for i in range(0, len(hexed), 96)]
        out += [f"#### `{name}`", "", "```", *lines, "```", ""]
    out.append(DEND)
    return "\n".join(out)


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_derived_exchange_vectors_match_the_document(name):
    text = DOC.read_text()
    section = text[text.index(DBEGIN) : text.index(DEND)]
    found = re.findall(r"#### `([^`]+)`\n\n```\n([0-9a-f\n]+)```", section)
    documented = {n: body.replace("\n", "") for n, body in found}
    assert documented.get(name) == DERIVED[name]().hex(), f"run: python -m {__name__} --write"
    if name == "exchange join: body":
        j = ex.Join.from_body(decode(DERIVED[name]()))
        assert j == _join()
    if name == "exchange join: provider body with contact (v3)":
        j = ex.Join.from_body(decode(DERIVED[name]()))
        assert j == _provider_join() and j.contact == "127.0.0.1:9735"
    if name == "exchange offer proof: plaintext (v6)":
        filler = public_key_bytes(_key("maker-ephemeral"))
        p = ex.check_offer_proof(DERIVED[name](), _claim_message().claim_id, filler)
        assert p.maker == public_key_bytes(ALICE) and p.offer_id == bytes(16)
    if name == "exchange offer proof: sealed op (v6)":
        f = ex.open_fulfil(_fulfil_with_proof()).fulfil
        assert f.op == DERIVED[name]()


def _render() -> str:
    out = [BEGIN, ""]
    for name, (_, build, _) in VECTORS.items():
        hexed = build().hex()
        lines = [hexed[i : i + 96] for i in range(0, len(hexed), 96)]
        out += [f"#### `{name}`", "", "```", *lines, "```", ""]
    out.append(END)
    return "\n".join(out)


def _documented() -> dict[str, str]:
    text = DOC.read_text()
    section = text[text.index(BEGIN) : text.index(END)]
    found = re.findall(r"#### `([^`]+)`\n\n```\n([0-9a-f\n]+)```", section)
    return {name: body.replace("\n", "") for name, body in found}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_bytes_match_the_document_and_parse_back(name):
    msg_type, build, parse = VECTORS[name]
    raw = build()
    assert _documented().get(name) == raw.hex(), f"run: python -m {__name__} --write"
    assert open_message(raw).envelope.type == msg_type
    parse(raw)


def test_every_ledger_and_exchange_message_type_has_a_vector():
    types = {t for t, _, _ in VECTORS.values()}
    assert od.TX_TYPES | {ex.MSG_OFFER, ex.MSG_CLAIM, ex.MSG_FULFIL, ex.MSG_ACCEPT} == types


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    text = DOC.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + _render() + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + _render() + "\n"
    if DBEGIN in text:
        text = text[: text.index(DBEGIN)] + _render_derived() + text[text.index(DEND) + len(DEND) :]
    else:
        text = text.rstrip() + "\n\n" + _render_derived() + "\n"
    DOC.write_text(text)
    print(f"wrote {len(VECTORS)} vectors to {DOC}")
