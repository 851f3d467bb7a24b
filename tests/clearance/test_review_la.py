"""Attacker-briefed review of issue 17 sections 1 and 4 and the ABCI hardening: each test is an
attack that worked on the merged implementation and is now refused."""

import pytest

from kofo.clearance import attest, privacy
from kofo.clearance.abci.gen.tendermint.abci import types_pb2 as abci
from kofo.clearance.app import LedgerApp
from kofo.clearance.importance import NodeStats, score
from kofo.clearance.ranking import MAX_RANKED, Ranking
from kofo.wire.attest import (
    MAX_EXTENSION_BYTES,
    BondObservation,
    Observation,
    decode_extension_full,
    encode_extension,
)
from kofo.wire.codec import decode
from kofo.wire.orders import LegOutcome, Unbond, sign_tx

from .helpers import Ledger, Party, ledger_params
from .test_bonds import _eth, _secp, _valkey_tx
from .test_money import _settled_order
from .test_vote_extensions import Validators

pytestmark = pytest.mark.timeout(120)


def _codes(result):
    return [r.error for r in result.results]


def test_a_replayed_old_withdrawal_does_not_take_the_senders_withdrawal_slot():
    """Anyone can resend a node's old, already applied withdrawal (its bytes are in a block).
    It passes every stateless check, so it reached the block and was charged to its sender's
    budget before being refused: placed ahead of the node's new withdrawal, it took the one
    withdrawal a sender has per block and the honest one was refused (rate_limited); an honest
    proposer even left the honest one out for the replay, every block, for good."""
    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    order = _settled_order(ledger, [alice, m1, m2])
    asset = order.fee_asset
    old = sign_tx(m2.key, m2.withdraw(ledger.app.balance_ciphertext(m2.id, asset), asset, 0))
    ledger.ok(old)
    _settled_order(ledger, [alice, m1, m2])
    new = sign_tx(m2.key, m2.withdraw(ledger.app.balance_ciphertext(m2.id, asset), asset, 1))
    # an honest proposer drops the replay (it can never apply) and keeps the new withdrawal
    assert ledger.app.propose([old, new], max_bytes=10**6) == [new]
    # a hostile proposer includes it first: it is refused without spending m2's budget
    assert _codes(ledger.block(old, new)) == ["withdrawal_invalid", ""]


def test_replayed_old_txs_do_not_fill_their_senders_share_of_a_block():
    """Replays of a node's already applied txs (its registration, say) were charged to the
    per-sender cap of the block, so a few old bytes shut the node out of every block."""
    ledger = Ledger(params=ledger_params(max_txs_per_sender_per_block=2))
    a = Party.make(0)
    reg = a.register_tx()
    ledger.ok(reg)
    ledger.bonded(a)
    unbond = sign_tx(a.key, Unbond(1, 0, b"\x11" * 20))  # a new tx of a's
    result = ledger.block(reg, reg, unbond)
    assert _codes(result) == ["already_exists", "already_exists", ""]
    # CheckTx does not admit a tx that can never apply again either
    assert ledger.app.check_tx(reg).error == "already_exists"
    assert ledger.app.check_tx(a.register_tx()).error == "already_exists"


def test_a_full_mempool_never_makes_a_proposal_cometbft_refuses_to_build():
    """CometBFT counts a proposal's txs by their protobuf size (each tx 1 tag byte, a length
    varint, the bytes: ``types.Txs.Validate``) and refuses to build a block over
    ``max_tx_bytes`` ("unable to create proposal block": no proposal in the round). The app
    counted raw tx lengths, and added its attestation tx on top of a reaped mempool that already
    filled the budget: with a full mempool (anyone's spam, or just load) every proposer's block
    was over the limit, so no block could be proposed while the mempool stayed full."""
    vals = Validators()
    a = Party.make(0)
    vals.step(a.register_tx())
    txs = [sign_tx(a.key, Unbond(10**30 + i, 0, b"\x11" * 20)) for i in range(200)]
    # what CometBFT reaps: as many txs as fit max_tx_bytes by their protobuf size
    limit = abci.ResponsePrepareProposal(txs=txs).ByteSize()
    req = abci.RequestPrepareProposal(
        max_tx_bytes=limit, txs=txs, height=vals.height + 1, local_last_commit=vals.last_commit
    )
    out = vals.apps[0].prepare_proposal(req).prepare_proposal
    assert attest.is_attest_tx(out.txs[0]) and len(out.txs) > 150
    assert out.ByteSize() <= limit  # what CometBFT's CreateProposalBlock checks
    assert list(out.txs[1:]) == txs[: len(out.txs) - 1]


def test_idle_sybil_nodes_cost_the_per_height_ranking_nothing():
    """Registrations are free (20 a block, for good) and each new height's first /importance
    query ranked every registered node, on the ABCI loop that also runs consensus: sybils
    that never bond nor trade made that pass as long as the attacker liked (~0.1 s per 200,000
    nodes, every height, forced by any public query). Nodes with neither volume nor bond
    score 0 at every height; the ranking now keeps them apart, in id order, and never scores
    them, with the same answers."""
    calls = []

    def counting(stats, height):
        calls.append(1)
        return score(stats, height, half_life=1_000, penalty_weight=10)

    idle = NodeStats(0, 1, 0, 0, 0, 0)
    nodes = [(bytes([i % 256, i // 256]) * 16, idle) for i in range(1, 3_001)]
    active = {
        b"\xff" * 32: NodeStats(0, 1, 1, 0, 10**6, 0),
        b"\x00" * 32: NodeStats(500, 1, 3, 1, 0, 0),
        b"\x10" * 32: NodeStats(0, 1, 0, 5, 4, 100),  # scored, but 0 after its penalties
    }
    ranking = Ranking(counting)
    ranking.load([*nodes, *active.items()])
    top = ranking.top(MAX_RANKED, 50)
    assert len(calls) <= len(active)  # old code: a score for each of the 3,003 nodes
    everyone = [*nodes, *active.items()]
    full = sorted(((n, counting(s, 50)) for n, s in everyone), key=lambda t: (-t[1], t[0]))
    assert top == full[:MAX_RANKED]
    # a node that bonds leaves the idle set, one that loses everything goes back
    ranking.update(nodes[7][0], NodeStats(0, 1, 0, 0, 9, 0))
    ranking.update(b"\xff" * 32, idle)
    assert ranking.importance(nodes[7][0], 51) == 1 and ranking.importance(b"\xff" * 32, 51) == 0
    everyone = [(n, NodeStats(0, 1, 0, 0, 9, 0) if n == nodes[7][0] else s) for n, s in nodes]
    everyone += [(b"\xff" * 32, idle), *list(active.items())[1:]]
    full = sorted(((n, counting(s, 51)) for n, s in everyone), key=lambda t: (-t[1], t[0]))
    assert ranking.top(MAX_RANKED, 51) == full[:MAX_RANKED]


class _CountingDict(dict):
    """The store's key/value dict, counting the passes over all of it."""

    passes = 0

    def __iter__(self):
        type(self).passes += 1
        return super().__iter__()


def test_the_validator_keys_query_does_not_scan_the_whole_state():
    """``/validator_keys`` (a public query, no argument) scanned every key of the state for the
    ``valkey/`` prefix, on the ABCI loop that also runs consensus: ~0.09 s a query at a million
    keys and growing with every order, so a client repeating it stalled the validator. Only
    genesis validators can register a key, so it reads one key per genesis validator."""
    vals = Validators()
    a = Party.make(0)
    vals.step(a.register_tx())
    vals.step(_valkey_tx(vals, 1, a))
    app = vals.apps[0].app
    expected = {vals.address(1): _eth(_secp(1))}
    app.store._data = _CountingDict(app.store._data)
    assert app.validator_keys() == expected
    assert decode(app.query("/validator_keys", b"")) == [[vals.address(1), _eth(_secp(1))]]
    assert _CountingDict.passes == 0


def test_sybil_withdrawals_without_a_balance_do_not_fill_the_blocks_withdrawal_cap():
    """A block takes at most max_withdrawals_per_block withdrawals from all senders, charged
    before the withdrawal was judged: free sybil registrations sending withdrawals of fees
    they never earned (no balance at all) filled the cap, so every honest withdrawal was
    refused (rate_limited) or left out by an honest proposer, block after block. A withdrawal
    that the state already refuses (no balance, not the next seq, more than credited) is now
    refused before the cap is charged."""
    ledger = Ledger(params=ledger_params(max_withdrawals_per_block=2))
    alice, m1, m2 = (Party.make(i) for i in range(3))
    sybils = [Party.make(i) for i in (3, 4)]
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2, *sybils)))
    order = _settled_order(ledger, [alice, m1, m2])
    asset = order.fee_asset
    ct = ledger.app.balance_ciphertext(m2.id, asset)
    bogus = [
        sign_tx(s.key, s.withdraw(privacy.encrypt(s.paillier_pub, 5), asset, 0)) for s in sybils
    ]
    honest = sign_tx(m2.key, m2.withdraw(ct, asset, 0))
    assert ledger.app.propose([*bogus, honest], max_bytes=10**6) == [honest]
    assert _codes(ledger.block(*bogus, honest)) == ["withdrawal_invalid"] * 2 + [""]


def test_an_honest_vote_extension_always_fits_the_size_every_validator_accepts():
    """ExtendVote reports up to 64 leg facts and (since the bond vault) up to 64 bond facts,
    but VerifyVoteExtension refuses extensions over MAX_EXTENSION_BYTES: 64 ordinary leg facts
    and 64 bond changes (anyone may add a wei to any node's bond in the vault) made a 9.5 KB
    extension that every validator refused, so no precommit counted and the chain stopped for
    as long as those facts stayed pending. The encoder now keeps to the limit: leg facts first,
    then bonds, dropping from the end (the same on every honest validator)."""
    legs = [
        Observation(bytes([i]) * 16, i % 8, LegOutcome.REDEEMED, f"{i:064x}", 900_000 + i)
        for i in range(64)
    ]
    bonds = [BondObservation(bytes([i]) * 32, 10**18 + i, 20_000_000 + i) for i in range(64)]
    worst = [
        Observation(bytes([i]) * 16, 255, LegOutcome.REDEEMED, "f" * 128, 2**63 - 1)
        for i in range(64)
    ]
    for o, b in ((legs, bonds), (worst, bonds), (legs[:10], bonds), ([], bonds)):
        raw = encode_extension(o, b)
        assert len(raw) <= MAX_EXTENSION_BYTES and LedgerApp.verify_vote_extension(raw)
        got_legs, got_bonds = decode_extension_full(raw)
        assert got_legs == sorted(o)[: len(got_legs)] and got_bonds == sorted(b)[: len(got_bonds)]
        assert len(got_legs) == len(o) or not got_bonds  # bonds give way to legs
    assert decode_extension_full(encode_extension(legs[:10], bonds)) == (legs[:10], bonds)


def test_executed_decisions_in_the_extension_round_trip_and_keep_to_the_size():
    from kofo.wire.attest import ExecutedDecision, decode_extension_all

    legs = [
        Observation(bytes([i]) * 16, 255, LegOutcome.REDEEMED, "f" * 128, 2**63 - 1)
        for i in range(64)
    ]
    bonds = [BondObservation(bytes([i]) * 32, 2**128 - 1, 2**63 - 1) for i in range(64)]
    done = [ExecutedDecision(bytes([i]) * 32, 2**63 - 1) for i in range(64)]
    for o, b, d in ((legs, bonds, done), ([], [], done), ([], bonds, done), (legs[:5], [], done)):
        raw = encode_extension(o, b, d)
        assert len(raw) <= MAX_EXTENSION_BYTES and LedgerApp.verify_vote_extension(raw)
        got_legs, got_bonds, got_done = decode_extension_all(raw)
        assert got_legs == sorted(o)[: len(got_legs)]
        assert got_done == sorted(d)[: len(got_done)]
        assert len(got_bonds) == len(b) or not got_done  # executed give way to bonds
    assert decode_extension_all(encode_extension([], [], done)) == ([], [], done)
    # unsorted, repeated or empty lists are refused
    bad = encode_extension([], [], done[:2])
    assert not LedgerApp.verify_vote_extension(bad.replace(done[0].decision, done[1].decision))
