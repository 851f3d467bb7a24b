"""Codecs of the exchange wire types and the per-claim path signatures."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from kofo.clearance.fees import protocol_fee as clearance_protocol_fee
from kofo.exchange.book import OrderBook
from kofo.exchange.route import net_of_protocol_fee
from kofo.exchange.route import protocol_fee as route_protocol_fee
from kofo.exchange.sealed import open_sealed, seal
from kofo.wire.codec import EncodingError
from kofo.wire.envelope import (
    BadMessage,
    BadSignature,
)
from kofo.wire.exchange import (
    MAX_HOPS,
    Claim,
    Frame,
    Fulfil,
    Offer,
    PathHop,
    Quote,
    SignedOffer,
    make_claim,
    make_fulfil,
    make_offer,
    open_claim,
    open_fulfil,
    open_offer,
    parse_path,
    sign_fee,
    sign_hop,
    verify_fulfil,
    verify_path,
)

assets = st.sampled_from(["btc", "eth", "eth:0xA0b8", "ltc"])
pos_int = st.integers(min_value=1, max_value=2**80)

offers = st.builds(
    Offer,
    offer_id=st.binary(min_size=16, max_size=16),
    buy=st.just("btc"),
    sell=assets.filter(lambda a: a != "btc"),
    price_num=pos_int,
    price_den=pos_int,
    min_in=st.integers(0, 10**6),
    max_in=st.integers(10**6, 2**70),
    partial=st.booleans(),
    fee=st.integers(0, 10**9),
    expiry_ms=st.integers(0, 2**48),
    seq=st.integers(0, 2**32),
)


def _claim(max_hops: int = 6) -> Claim:
    return Claim("btc", "eth", 10**6, 1, 1, 2**45, max_hops, os.urandom(32))


@given(offers)
def test_offer_roundtrips_through_its_signed_bytes(offer):
    key = Ed25519PrivateKey.generate()
    so = open_offer(make_offer(key, offer).raw)
    assert so.offer == offer
    assert so.maker == key.public_key().public_bytes_raw()


@given(offers, st.integers(0, 200), st.integers(0, 255))
def test_any_flipped_bit_in_a_signed_offer_is_rejected(offer, pos, bit):
    raw = bytearray(make_offer(Ed25519PrivateKey.generate(), offer).raw)
    raw[pos % len(raw)] ^= 1 << (bit % 8)
    with pytest.raises((BadMessage, BadSignature, EncodingError)):
        open_offer(bytes(raw))


@given(
    st.text(min_size=1, max_size=32),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.binary(max_size=40))),
)
def test_frame_roundtrip(t, body):
    assert Frame.from_bytes(Frame(t, body).to_bytes()) == Frame(t, body)


def test_claim_with_ttl_above_the_cap_is_rejected():
    c = _claim()
    body = c.to_body() | {"max_hops": MAX_HOPS + 1}
    with pytest.raises(BadMessage, match="max_hops"):
        Claim.from_body(body)


def _path(sc, n: int) -> tuple[list[PathHop], list[Ed25519PrivateKey]]:
    path: list[PathHop] = []
    keys = []
    for _ in range(n):
        k = Ed25519PrivateKey.generate()
        path.append(sign_hop(k, sc, path))
        keys.append(k)
    return path, keys


@settings(max_examples=40)
@given(st.integers(0, MAX_HOPS))
def test_a_path_signed_hop_by_hop_verifies_and_survives_the_codec(n):
    sc = make_claim(Ed25519PrivateKey.generate(), _claim())
    path, _ = _path(sc, n)
    again = parse_path([h.to_wire() for h in path])
    verify_path(open_claim(sc.raw), again)


@settings(max_examples=40)
@given(st.integers(2, MAX_HOPS), st.data())
def test_removing_reordering_or_forging_a_hop_breaks_the_path(n, data):
    sc = make_claim(Ed25519PrivateKey.generate(), _claim())
    path, _ = _path(sc, n)
    i = data.draw(st.integers(0, n - 2))
    tampered = [
        path[:i] + path[i + 1 :],  # a hop removed
        [*path[:i], path[i + 1], path[i], *path[i + 2 :]],  # two hops swapped
        [*path[:i], PathHop(os.urandom(32), path[i].sig), *path[i + 1 :]],  # key replaced
    ]
    for bad in tampered:
        with pytest.raises(BadSignature):
            verify_path(sc, bad)


def test_a_path_signed_for_another_claim_does_not_verify():
    sc1 = make_claim(Ed25519PrivateKey.generate(), _claim())
    sc2 = make_claim(Ed25519PrivateKey.generate(), _claim())
    path, _ = _path(sc1, 3)
    with pytest.raises(BadSignature):
        verify_path(sc2, path)


def test_a_repeated_hop_key_is_rejected_as_a_loop():
    sc = make_claim(Ed25519PrivateKey.generate(), _claim())
    k = Ed25519PrivateKey.generate()
    p1 = [sign_hop(k, sc, [])]
    p2 = [*p1, sign_hop(k, sc, p1)]
    with pytest.raises(BadMessage, match="loop"):
        verify_path(sc, p2)


def test_path_keys_reveal_no_node_identity():
    # Every hop key is fresh per claim: the same "node" (sequence of calls) produces unrelated
    # keys for two claims, so hops cannot be linked across claims or to node ids.
    sc1 = make_claim(Ed25519PrivateKey.generate(), _claim())
    sc2 = make_claim(Ed25519PrivateKey.generate(), _claim())
    p1, _ = _path(sc1, 3)
    p2, _ = _path(sc2, 3)
    assert not {h.pub for h in p1} & {h.pub for h in p2}


def test_fulfil_with_every_hop_acknowledgement_verifies_and_delivers_the_filler_output():
    e0 = Ed25519PrivateKey.generate()
    sc = make_claim(e0, _claim())
    path, keys = _path(sc, 3)
    filler = Ed25519PrivateKey.generate()
    sf = make_fulfil(filler, Fulfil(sc.claim_id, 4, 10**6, 3 * 10**7, 2**45, path))
    sf = open_fulfil(sf.raw)
    acks = [sign_fee(keys[p - 1], sf.fulfil_id, p, 0) for p in (3, 2, 1)]
    verify_fulfil(sc, sf, acks)
    q = Quote(sc.claim_id, sf, acks, b"x" * 32, 0)
    assert q.delivered == 3 * 10**7
    # One hop cannot stand in for another: each acknowledgement is signed for its position.
    swapped = [*acks[:2], type(acks[2])(1, 0, acks[1].sig)]
    with pytest.raises(BadSignature):
        verify_fulfil(sc, sf, swapped)
    with pytest.raises(BadMessage, match="fee positions"):
        verify_fulfil(sc, sf, acks[:2])


@given(st.integers(1, 10**9), st.sampled_from([1, 2, 3]))
def test_a_hop_fee_is_refused_because_no_leg_would_pay_the_relay(fee, position):
    sc = make_claim(Ed25519PrivateKey.generate(), _claim())
    path, keys = _path(sc, 3)
    sf = make_fulfil(
        Ed25519PrivateKey.generate(), Fulfil(sc.claim_id, 4, 10**6, 3 * 10**7, 2**45, path)
    )
    acks = [sign_fee(keys[p - 1], sf.fulfil_id, p, fee if p == position else 0) for p in (1, 2, 3)]
    with pytest.raises(BadMessage, match="hop fees must be 0"):
        verify_fulfil(sc, sf, acks)


@given(st.binary(max_size=600))
def test_sealed_box_opens_only_with_the_recipient_key(msg):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    rk = X25519PrivateKey.generate()
    box = seal(rk.public_key().public_bytes_raw(), msg)
    assert open_sealed(rk, box) == msg
    with pytest.raises(BadMessage):
        open_sealed(X25519PrivateKey.generate(), box)


# ------------------------------------------------------------------ fast signed-message path


@given(offers)
def test_a_stale_offer_copy_is_refused_before_its_signature_is_needed(offer):
    book = OrderBook()
    now = 1
    live = Offer(
        **{**{f: getattr(offer, f) for f in offer.__slots__}, "expiry_ms": now + 10**6, "seq": now}
    )
    key = Ed25519PrivateKey.generate()
    so = make_offer(key, live)
    assert book.precheck(so, now) is None
    assert book.add(so, now).accepted
    forged = SignedOffer(so.maker, so.offer, so.raw[:-1] + bytes([so.raw[-1] ^ 1]))
    verdict = book.precheck(forged, now)
    assert verdict is not None and not verdict.accepted and "not newer" in verdict.reason


@given(st.integers(0, 2**80), st.integers(0, 10_000))
def test_route_protocol_fee_is_the_ledgers_rule(notional, bps):
    assert route_protocol_fee(notional, bps) == clearance_protocol_fee(notional, bps)


@given(st.integers(1, 2**64), st.integers(1, 2**64), st.integers(0, 10_000))
def test_provider_output_net_of_protocol_fee_never_beats_its_own_price(amount_in, out, bps):
    net = net_of_protocol_fee(amount_in, out, bps)
    kept = amount_in - clearance_protocol_fee(amount_in, bps)
    assert 0 <= net <= out
    # Exactly the provider's price applied to the input it keeps, floored.
    assert net * amount_in <= out * kept < (net + 1) * amount_in


def test_a_maker_cannot_exceed_its_cap_by_reviving_withdrawn_offer_ids():
    """Attacker's pass: re-publishing withdrawn ids (newer seq) must not lift a maker past
    ``per_maker`` live offers."""
    book = OrderBook(1_000, per_maker=4)
    key = Ed25519PrivateKey.generate()
    now = 10**12
    ids = [os.urandom(16) for _ in range(8)]

    def offer(oid: bytes, seq: int, max_in: int = 100) -> SignedOffer:
        o = Offer(oid, "btc", "eth", 2, 1, 1, max_in, True, 0, now + 60_000, seq)
        return make_offer(key, o)

    seq = now - 1000
    for oid in ids:  # 8 offers, withdrawn at once: 8 tombstones
        seq += 1
        book.add(offer(oid, seq), now)
        seq += 1
        book.add(offer(oid, seq, max_in=0), now)
    for oid in ids:
        seq += 1
        book.add(offer(oid, seq), now)
    assert book.maker_count(key.public_key().public_bytes_raw()) == 4
    assert len(book) == 4


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, 70000])
def test_offer_frame_bytes_equals_the_encoder(size):
    from kofo.wire.exchange import offer_frame_bytes

    raw = os.urandom(size)
    assert offer_frame_bytes(raw) == Frame("offer", {"m": raw}).to_bytes()
