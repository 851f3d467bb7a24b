"""Swap messages on the wire and over the HTTP channel between two nodes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from kofo.settlement.chain import BlockHeight, HtlcTerms, UnixTime
from kofo.settlement.peer_http import PeerClient, PeerError, PeerServer
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg, SwapTerms
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import BadMessage, BadSignature, ReplayedMessage, ReplayGuard
from kofo.wire.swap import (
    Accept,
    Cancel,
    ClaimCosigned,
    CosignClaim,
    Error,
    Locked,
    Propose,
    Redeemed,
    Refunded,
    open_swap,
    sign_swap,
)
from tests.swap.helpers import ETHER, Evm, drive, make_node

DOCS = Path(__file__).resolve().parents[2] / "docs" / "swap.md"
VECTOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VECTOR_NONCE = bytes(range(16))
VECTOR_TS = 1790000000


def vector_terms() -> SwapTerms:
    return SwapTerms(
        swap_id=bytes(range(16)),
        payment_hash=bytes.fromhex(
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        ),  # sha256 of 32 zero bytes
        initiator_leg=Leg(
            "btc", 150_000, "02" + "11" * 32, "03" + "22" * 32, BlockHeight(800_144), None, 6
        ),
        participant_leg=Leg(
            "eth",
            10**17,
            "0x00000000000000000000000000000000000000b0",
            "0x00000000000000000000000000000000000000a0",
            UnixTime(1_790_020_000),
            None,
            64,
        ),
        initiator_lock_by=BlockHeight(800_001),
        participant_lock_by=UnixTime(1_790_008_000),
        initiator_redeem_by=UnixTime(1_790_014_000),
        initiator_node=bytes(32),
        participant_node=bytes([1]) * 32,
    )


def vector_bodies():
    t = vector_terms()
    sid = t.swap_id
    htlc = t.participant_leg.htlc(t.payment_hash)
    return {
        "swap.propose": Propose(t),
        "swap.accept": Accept(sid, bytes(32)),
        "swap.locked": Locked(sid, "0x" + "ab" * 32, "0x" + "cd" * 32, htlc),
        "swap.redeemed": Redeemed(sid, "eth", "0x" + "ef" * 32),
        "swap.refunded": Refunded(sid, "btc", "12" * 32),
        "swap.cancel": Cancel(sid, "changed my mind"),
        "swap.error": Error(sid, "terms_margin_too_small", "need 3720 s"),
        # The wire carries the claim and the MuSig2 values as opaque bytes of fixed sizes.
        "swap.cosign_claim": CosignClaim(
            sid, "btc", bytes.fromhex("02" * 60), b"\x02" * 66, bytes(32)
        ),
        "swap.claim_cosigned": ClaimCosigned(sid, b"\x03" * 66, b"\x04" * 32),
    }


def test_every_swap_message_round_trips_through_canonical_signed_bytes():
    for body in vector_bodies().values():
        data = sign_swap(VECTOR_KEY, body).to_bytes()
        parsed, sender = open_swap(data, ReplayGuard(), now=None)
        assert parsed == body
        assert sender == bytes.fromhex(
            "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        )


def test_swap_message_test_vectors_match_docs():
    text = DOCS.read_text()
    for msg_type, body in vector_bodies().items():
        data = sign_swap(VECTOR_KEY, body, ts=VECTOR_TS, nonce=VECTOR_NONCE).to_bytes()
        m = re.search(rf"`{re.escape(msg_type)}` wire bytes:\n```\n([0-9a-f\n]+)```", text)
        assert m, f"no vector for {msg_type} in docs/swap.md"
        assert m.group(1).replace("\n", "") == data.hex(), msg_type


@given(st.integers(1, 2**64), st.text(max_size=40), st.binary(min_size=16, max_size=16))
def test_cancel_messages_of_any_content_round_trip(ts, reason, sid):
    body = Cancel(sid, reason)
    parsed, _ = open_swap(sign_swap(VECTOR_KEY, body, ts=ts).to_bytes())
    assert parsed == body


def test_a_tampered_message_fails_its_signature():
    outer = decode(sign_swap(VECTOR_KEY, vector_bodies()["swap.accept"]).to_bytes())
    outer["env"]["body"]["terms_digest"] = b"\x01" * 32
    with pytest.raises(BadSignature):
        open_swap(encode(outer))


def test_a_replayed_message_is_refused():
    guard = ReplayGuard()
    data = sign_swap(VECTOR_KEY, vector_bodies()["swap.cancel"]).to_bytes()
    open_swap(data, guard)
    with pytest.raises(ReplayedMessage):
        open_swap(data, guard)


def taproot_vector_terms() -> SwapTerms:
    """The vector terms with a Taproot initiator leg (``output`` = "p2tr", schema version 2)."""
    t = vector_terms()
    return dataclasses.replace(t, initiator_leg=dataclasses.replace(t.initiator_leg, output="p2tr"))


def test_the_taproot_propose_vector_matches_docs_and_says_schema_2():
    body = Propose(taproot_vector_terms())
    data = sign_swap(VECTOR_KEY, body, ts=VECTOR_TS, nonce=VECTOR_NONCE).to_bytes()
    m = re.search(
        r"`swap.propose` \(Taproot leg\) wire bytes:\n```\n([0-9a-f\n]+)```", DOCS.read_text()
    )
    assert m, "no Taproot propose vector in docs/swap.md"
    assert m.group(1).replace("\n", "") == data.hex()
    wire = decode(data)["env"]["body"]
    assert wire["sv"] == 2 and wire["terms"]["initiator_leg"]["output"] == "p2tr"
    assert "output" not in wire["terms"]["participant_leg"]  # the default form is not named
    assert open_swap(data)[0] == body
    # Without an output the same terms still travel as schema 1, byte for byte as before.
    plain = decode(sign_swap(VECTOR_KEY, Propose(vector_terms())).to_bytes())["env"]["body"]
    assert plain["sv"] == 1 and "output" not in plain["terms"]["initiator_leg"]


def test_a_leg_output_under_schema_1_or_an_unknown_schema_is_refused():
    from kofo.wire.envelope import sign
    from kofo.wire.swap import body_to_wire

    body = body_to_wire(Propose(taproot_vector_terms()))
    with pytest.raises(BadMessage, match="needs schema version 2, it says 1"):
        open_swap(sign(VECTOR_KEY, "swap.propose", body | {"sv": 1}).to_bytes())
    with pytest.raises(BadMessage, match=r"schema version 3 is not one this node reads \(1..2\)"):
        open_swap(sign(VECTOR_KEY, "swap.propose", body | {"sv": 3}).to_bytes())
    empty = decode(encode(body))
    empty["terms"]["initiator_leg"]["output"] = ""
    with pytest.raises(BadMessage, match="'output' must not be empty"):
        open_swap(sign(VECTOR_KEY, "swap.propose", empty).to_bytes())


def test_a_leg_or_htlc_with_an_unknown_field_is_refused_not_ignored():
    from kofo.wire.envelope import sign
    from kofo.wire.swap import body_to_wire

    body = body_to_wire(vector_bodies()["swap.propose"])
    body["terms"]["participant_leg"]["script"] = "ff"
    with pytest.raises(BadMessage, match=r"participant_leg: unknown fields \['script'\]"):
        open_swap(sign(VECTOR_KEY, "swap.propose", body).to_bytes())
    locked = body_to_wire(vector_bodies()["swap.locked"])
    locked["htlc"]["kind"] = "p2tr"
    with pytest.raises(BadMessage, match=r"htlc: unknown fields \['kind'\]"):
        open_swap(sign(VECTOR_KEY, "swap.locked", locked).to_bytes())


def test_cosign_messages_check_sizes_and_hide_the_secret():
    from kofo.wire.envelope import sign
    from kofo.wire.swap import body_to_wire

    request = vector_bodies()["swap.cosign_claim"]
    assert request.preimage.hex() not in repr(request)
    wire = body_to_wire(request)
    assert wire["sv"] == 2
    for field_name, bad, match in (
        ("nonce", b"\x02" * 65, "'nonce' must be 66 bytes"),
        ("preimage", bytes(33), "'preimage' must be 32 bytes"),
        ("claim", b"", "'claim' must be 1..1000 bytes"),
        ("claim", bytes(1001), "'claim' must be 1..1000 bytes"),
    ):
        data = sign(VECTOR_KEY, "swap.cosign_claim", wire | {field_name: bad}).to_bytes()
        with pytest.raises(BadMessage, match=match):
            open_swap(data)
    answer = body_to_wire(vector_bodies()["swap.claim_cosigned"]) | {"partial_sig": bytes(31)}
    with pytest.raises(BadMessage, match="'partial_sig' must be 32 bytes"):
        open_swap(sign(VECTOR_KEY, "swap.claim_cosigned", answer).to_bytes())


def test_a_body_with_an_extra_field_is_refused():
    from kofo.wire.envelope import sign
    from kofo.wire.swap import body_to_wire

    body = body_to_wire(vector_bodies()["swap.redeemed"]) | {"extra": 1}
    with pytest.raises(BadMessage, match="fields must be exactly"):
        open_swap(sign(VECTOR_KEY, "swap.redeemed", body).to_bytes())


def test_two_nodes_swap_over_http_and_refuse_forged_and_replayed_messages(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    servers = {}
    clients = {}
    for me, other in ((alice, bob), (bob, alice)):
        servers[me.name] = PeerServer(me.key, me.engine.handle, allowed={other.node_id}).start()
        clients[me.name] = PeerClient(me.key)
    try:
        alice.engine._notify = lambda _sid, body: clients["alice"].send(servers["bob"].url, body)
        bob.engine._notify = lambda _sid, body: clients["bob"].send(servers["alice"].url, body)
        terms = alice.engine.propose(
            Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
            Leg("eth", 10**6, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
            participant_node=bob.node_id,
        )
        reply = clients["alice"].send(servers["bob"].url, Propose(terms), expect_sender=bob.node_id)
        assert isinstance(reply, Accept)
        assert alice.engine.handle(reply, bob.node_id) is None
        # A forged accept (signed by a stranger) and a replay are refused by the channel.
        stranger = PeerClient(Ed25519PrivateKey.generate())
        with pytest.raises(PeerError) as err:
            stranger.send(servers["alice"].url, Cancel(terms.swap_id, "forged"))
        assert err.value.code == "unknown_peer"
        data = sign_swap(bob.key, Cancel(terms.swap_id, "nothing")).to_bytes()
        bad = bytearray(data)
        bad[-1] ^= 1
        with pytest.raises(PeerError) as err:
            clients["bob"].send_bytes(servers["alice"].url, bytes(bad))
        assert err.value.code == "bad_signature"
        assert alice.engine.journal.get(terms.swap_id).state is State.ACCEPTED
        ok = sign_swap(bob.key, Error(b"\x00" * 16, "x", "y")).to_bytes()
        clients["bob"].send_bytes(servers["alice"].url, ok)
        with pytest.raises(PeerError) as err:
            clients["bob"].send_bytes(servers["alice"].url, ok)
        assert err.value.code == "replayed_message"
        states = drive([alice, bob], terms.swap_id)
        assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    finally:
        for s in servers.values():
            s.stop()


def test_htlc_terms_in_a_locked_notice_keep_every_field():
    t = vector_terms()
    h = t.initiator_leg.htlc(t.payment_hash)
    body = Locked(
        t.swap_id,
        "txid:0",
        "txid",
        HtlcTerms(
            **{
                f: getattr(h, f)
                for f in (
                    "chain",
                    "payment_hash",
                    "amount",
                    "sender",
                    "recipient",
                    "expiry",
                    "token",
                )
            }
        ),
    )
    parsed, _ = open_swap(sign_swap(VECTOR_KEY, body).to_bytes())
    assert parsed == body


def test_the_client_tells_a_message_that_never_left_from_one_that_got_no_answer():
    """A refused connection: the peer got nothing (PeerNotReached, a NotDelivered). A peer that
    reads the request and hangs up: it may have acted on it (peer_unreachable)."""
    import socket
    import threading

    from kofo.errors import NotDelivered
    from kofo.settlement.peer_http import PeerNotReached

    client = PeerClient(VECTOR_KEY)
    body = vector_bodies()["swap.cancel"]
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(PeerNotReached) as err:
        client.send(f"http://127.0.0.1:{closed_port}/kofo/v1/swap", body)
    assert isinstance(err.value, NotDelivered) and err.value.code == "peer_not_reached"

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def read_then_hang_up() -> None:
            conn, _ = server.accept()
            with conn:  # read the whole request (headers, then Content-Length bytes), close
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(rest) < length:
                    rest += conn.recv(65536)

        thread = threading.Thread(target=read_then_hang_up, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/kofo/v1/swap"
        with pytest.raises(PeerError) as err:
            client.send(url, body)
        thread.join(timeout=5)
    assert err.value.code == "peer_unreachable" and not isinstance(err.value, NotDelivered)
