"""Attacker-briefed review of issue 17 sections 1 and 4 and the ABCI hardening: each test is an
attack that worked on the merged implementation and is now refused."""

import pytest

from kofo.clearance import attest
from kofo.clearance.abci.gen.tendermint.abci import types_pb2 as abci
from kofo.wire.orders import Unbond, sign_tx

from .helpers import Ledger, Party, ledger_params
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
