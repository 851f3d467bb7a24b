"""Issue 19 item 1: no input takes a validator down.

Every ABCI handler turns a bad input into a refusal with a stable code, and a bug hit by some
input refuses that input instead of dropping the connection (which makes CometBFT exit)."""

import socket

import pytest

from kofo.clearance.abci.gen.tendermint.abci import types_pb2 as abci
from kofo.clearance.app import Block
from kofo.clearance.errors import ABCI_CODES
from kofo.wire.codec import encode
from kofo.wire.orders import CommitOrder, SettlementOrder, sign_tx

from .helpers import Ledger, Party, make_order
from .test_abci_server import _frame, _read_responses, server  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


def empty_legs_commit_order(party: Party) -> bytes:
    """A well-formed, correctly signed ``commit_order`` whose route has no legs."""
    full = make_order([party, Party.make(1)])
    order = SettlementOrder(full.order_id, full.kind, full.payment_hash, legs=())
    return sign_tx(party.key, CommitOrder(order, (order.sign(party.key),)))


def test_rank_routes_query_with_a_list_of_integers_is_refused_as_invalid_input():
    ledger = Ledger()
    with pytest.raises(Exception) as info:
        ledger.app.query("/rank_routes", bytes.fromhex("8101"))
    assert getattr(info.value, "code", None) == "invalid_input"


def test_commit_order_with_empty_legs_is_refused_by_check_tx_and_in_a_block():
    ledger = Ledger()
    alice = Party.make(0)
    ledger.ok(alice.register_tx())
    tx = empty_legs_commit_order(alice)
    check = ledger.app.check_tx(tx)
    assert check.error == "bad_message" and "legs" in check.log
    result = ledger.block(tx)
    assert [r.error for r in result.results] == ["bad_message"]


def test_a_bug_hit_by_one_tx_refuses_that_tx_and_the_block_goes_on(monkeypatch):
    ledger = Ledger()
    alice, bob = Party.make(0), Party.make(1)
    real = ledger.app._register

    def buggy(view, ctx, sender, tx):
        if sender == alice.id:
            raise IndexError("a bug")
        real(view, ctx, sender, tx)

    monkeypatch.setattr(ledger.app, "_register", buggy)
    before = ledger.app.app_hash
    result = ledger.block(alice.register_tx(), bob.register_tx())
    assert [r.error for r in result.results] == ["internal_error", ""]
    assert result.results[0].code == ABCI_CODES["internal_error"]
    assert ledger.app.node(alice.id) is None and ledger.app.node(bob.id) is not None
    assert ledger.app.app_hash != before


def test_check_tx_turns_any_exception_into_a_refusal(monkeypatch):
    ledger = Ledger()

    def boom(raw):
        raise TypeError("a bug")

    monkeypatch.setattr(ledger.app, "_decode_verified", boom)
    assert ledger.app.check_tx(b"anything").error == "internal_error"


def test_socket_server_answers_bad_queries_and_txs_and_keeps_the_connection(server):  # noqa: F811
    port, _app = server
    alice = Party.make(0)
    reqs = [
        abci.Request(query=abci.RequestQuery(path="/rank_routes", data=bytes.fromhex("8101"))),
        abci.Request(check_tx=abci.RequestCheckTx(tx=empty_legs_commit_order(alice))),
        abci.Request(query=abci.RequestQuery(path="/importance", data=encode(10**70))),
        abci.Request(query=abci.RequestQuery(path="/node", data=b"\xff")),
        abci.Request(query=abci.RequestQuery(path="/nope", data=b"")),
        abci.Request(echo=abci.RequestEcho(message="still here")),
        abci.Request(flush=abci.RequestFlush()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(_frame(r) for r in reqs))
        resps = _read_responses(sock, len(reqs))
    assert resps[0].query.code == ABCI_CODES["invalid_input"]
    assert resps[1].check_tx.code == ABCI_CODES["bad_message"]
    assert resps[2].query.code == ABCI_CODES["invalid_input"]
    assert resps[3].query.code == ABCI_CODES["bad_encoding"]
    assert resps[4].query.code == ABCI_CODES["not_found"]
    assert resps[5].echo.message == "still here"


def test_finalize_block_of_arbitrary_bytes_refuses_each_and_is_deterministic():
    junk = (b"", b"\x00", bytes.fromhex("8101"), b"\xa2cenv\xa0csig@", b"\xff" * 100)
    hashes = set()
    for _ in range(2):
        ledger = Ledger()
        result = ledger.app.apply_block(Block(ledger.app.height + 1, ledger.time, junk))
        assert all(not r.ok for r in result.results)
        hashes.add(result.app_hash)
    assert len(hashes) == 1


def test_a_query_whose_answer_cannot_be_built_is_answered_with_a_refusal(monkeypatch):
    from kofo.clearance.abci.server import AbciApp

    ledger = Ledger()
    abci_app = AbciApp(ledger.app)

    def bad_query(path, data):
        return "\udcff"  # a str where bytes belong: protobuf refuses it when serializing

    monkeypatch.setattr(ledger.app, "query", bad_query)
    req = abci.Request(query=abci.RequestQuery(path="/params"))
    resp = abci.Response.FromString(abci_app.handle_bytes(req))
    assert resp.query.code == ABCI_CODES["internal_error"]


def test_an_attestation_tx_that_hits_a_bug_is_refused_and_the_block_goes_on(monkeypatch):
    ledger = Ledger()
    alice, bob = Party.make(0), Party.make(1)
    ledger.ok(alice.register_tx())

    def buggy(view, ctx, raw, *, first):
        view.set(b"meta/junk", b"x")  # a write the refusal must drop
        raise IndexError("a bug")

    monkeypatch.setattr(ledger.app, "_attestations", buggy)
    blk = Block(2, ledger.time, (ledger.app.solo_attestation(2), bob.register_tx()))
    result = ledger.app.apply_block(blk)
    assert [r.error for r in result.results] == ["internal_error", ""]
    assert ledger.app.store.get(b"meta/junk") is None
    assert ledger.app.node(bob.id) is not None


def test_vote_extension_handlers_that_fail_answer_instead_of_dropping_the_connection(
    monkeypatch,
):
    from kofo.clearance.abci.server import AbciApp

    ledger = Ledger()
    abci_app = AbciApp(ledger.app)

    def boom(*args, **kwargs):
        raise IndexError("a bug")

    monkeypatch.setattr(ledger.app, "extend_vote", boom)
    monkeypatch.setattr(ledger.app, "verify_vote_extension", boom)
    resp = abci.Response.FromString(
        abci_app.handle_bytes(abci.Request(extend_vote=abci.RequestExtendVote(height=2)))
    )
    assert resp.WhichOneof("value") == "extend_vote" and resp.extend_vote.vote_extension == b""
    req = abci.Request(verify_vote_extension=abci.RequestVerifyVoteExtension(height=2))
    resp = abci.Response.FromString(abci_app.handle_bytes(req))
    assert resp.verify_vote_extension.status == abci.ResponseVerifyVoteExtension.REJECT
