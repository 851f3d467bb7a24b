"""Outcomes by attestation through the ABCI++ handlers, in process: four validators, each its
own ledger app with its own view of the chains, driven the way CometBFT 0.38 drives them
(PrepareProposal on the proposer, ProcessProposal on all, FinalizeBlock + Commit, then
ExtendVote on all and VerifyVoteExtension of each other's extensions, signed with the
validators' Ed25519 consensus keys over CometBFT's CanonicalVoteExtension bytes)."""

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.clearance import attest
from kofo.clearance.abci.gen.tendermint.abci import types_pb2 as abci
from kofo.clearance.abci.gen.tendermint.crypto import keys_pb2
from kofo.clearance.abci.gen.tendermint.types import params_pb2
from kofo.clearance.abci.server import AbciApp
from kofo.clearance.app import LedgerApp
from kofo.clearance.store import MerkleStore
from kofo.wire.attest import Observation, encode_extension
from kofo.wire.envelope import public_key_bytes
from kofo.wire.orders import LegOutcome

from .helpers import T0, Party, SeenChains, commit_tx, ledger_params, make_order

pytestmark = pytest.mark.timeout(120)

CHAIN_ID = "kofo-attest-test"
ACCEPT = abci.ResponseProcessProposal.ACCEPT


class Validators:
    def __init__(self, powers=(10, 10, 10, 10), params=None, joiners=0):
        """``len(powers)`` genesis validators, plus ``joiners`` nodes running a validator's app
        with a consensus key outside the genesis set (they vote once the ledger lets them)."""
        params = params or ledger_params()
        self.keys = [
            Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"val%d" % i).digest())
            for i in range(len(powers) + joiners)
        ]
        self.powers = list(powers)
        self.pubs = [public_key_bytes(k) for k in self.keys]
        self.chains = [SeenChains() for _ in self.keys]
        self.apps = [AbciApp(LedgerApp(MerkleStore(), params, observer=c)) for c in self.chains]
        init = abci.RequestInitChain(
            chain_id=CHAIN_ID,
            validators=[
                abci.ValidatorUpdate(pub_key=keys_pb2.PublicKey(ed25519=pk), power=p)
                for pk, p in zip(self.pubs[: len(powers)], powers, strict=True)
            ],
            consensus_params=params_pb2.ConsensusParams(
                abci=params_pb2.ABCIParams(vote_extensions_enable_height=1)
            ),
            app_state_bytes=json.dumps({"params": params.as_map()}).encode(),
        )
        for a in self.apps:
            a.init_chain(init)
        self.height = 0
        self.time = T0
        self.last_commit = abci.ExtendedCommitInfo()
        self.lies: dict[int, bytes] = {}
        """validator index -> the extension it sends instead of its honest one"""

    def propose(self, txs=(), proposer=0):
        req = abci.RequestPrepareProposal(
            max_tx_bytes=1 << 20,
            txs=list(txs),
            height=self.height + 1,
            local_last_commit=self.last_commit,
        )
        return list(self.apps[proposer].prepare_proposal(req).prepare_proposal.txs)

    def process(self, block_txs):
        req = abci.RequestProcessProposal(txs=block_txs, height=self.height + 1)
        return [a.process_proposal(req).process_proposal.status for a in self.apps]

    def step(self, *txs, proposer=0, time=None):
        """One height: propose, process (all must accept), finalize, commit, extend votes."""
        self.time = time or self.time + 1
        block_txs = self.propose(txs, proposer)
        assert self.process(block_txs) == [ACCEPT] * len(self.apps)
        self.height += 1
        # CometBFT calls ExtendVote(H) when precommitting block H: before FinalizeBlock(H), on
        # the state committed at H - 1 (as the app's window record assumes)
        active = self.apps[0].app.validators_at(self.height)  # who CometBFT lets vote now
        exts = {
            i: a.extend_vote(abci.RequestExtendVote(height=self.height)).extend_vote
            for i, a in enumerate(self.apps)
            if self.address(i) in active
        }
        fin = abci.RequestFinalizeBlock(txs=block_txs, height=self.height)
        fin.time.seconds = self.time
        results = [a.finalize_block(fin).finalize_block for a in self.apps]
        assert len({r.app_hash for r in results}) == 1, "validators diverged"
        for a in self.apps:
            a.commit(abci.RequestCommit())
        votes = []
        for i, _a in enumerate(self.apps):
            if i not in exts:
                continue
            ext = exts[i]
            ext = self.lies.get(i, ext.vote_extension)
            for other in self.apps:
                req = abci.RequestVerifyVoteExtension(
                    height=self.height, vote_extension=ext, validator_address=self.address(i)
                )
                status = other.verify_vote_extension(req).verify_vote_extension.status
                assert status == abci.ResponseVerifyVoteExtension.ACCEPT
            sig = self.keys[i].sign(attest.extension_sign_bytes(CHAIN_ID, self.height, 0, ext))
            votes.append(
                abci.ExtendedVoteInfo(
                    validator=abci.Validator(
                        address=self.address(i), power=active[self.address(i)].power
                    ),
                    vote_extension=ext,
                    extension_signature=sig,
                    block_id_flag=2,
                )
            )
        self.last_commit = abci.ExtendedCommitInfo(round=0, votes=votes)
        return results[0]

    def address(self, i):
        return attest.validator_address(self.pubs[i])

    def order(self, order_id, i=0):
        return self.apps[i].app.order(order_id)


@pytest.fixture
def parties():
    return [Party.make(i) for i in range(3)]


def _committed_order(vals, parties):
    vals.step(*(p.register_tx() for p in parties))
    order = make_order(parties, t0=vals.time)
    result = vals.step(commit_tx(order, parties, parties[0]))
    assert [r.code for r in result.tx_results] == [0, 0]  # the attestation tx, the order
    return order


def test_a_validator_lying_in_its_vote_extension_is_outvoted(parties):
    vals = Validators()
    order = _committed_order(vals, parties)
    for c in vals.chains[:3]:
        c.see(order, 0, LegOutcome.LOCKED, txid="aa" * 32)
    lie = Observation(order.order_id, 0, LegOutcome.REFUNDED, "bb" * 32, 100)
    vals.lies[3] = encode_extension([lie])
    vals.step()  # extensions of this height carry the observations
    vals.step()  # ...and are tallied in this block
    for i in range(4):
        rec = vals.order(order.order_id, i)
        assert rec["status"] == "committed"
        assert (rec["legs"][0]["outcome"], rec["legs"][0]["txid"]) == ("locked", "aa" * 32)
    # the liar alone claiming every leg redeemed settles nothing
    vals.lies[3] = encode_extension(
        [Observation(order.order_id, i, LegOutcome.REDEEMED, "cc" * 32, 9) for i in range(3)]
    )
    vals.step()
    vals.step()
    assert vals.order(order.order_id)["status"] == "committed"
    assert [x["outcome"] for x in vals.order(order.order_id)["legs"]] == ["locked", None, None]


def test_no_fact_counts_without_more_than_two_thirds_of_the_power(parties):
    vals = Validators()
    order = _committed_order(vals, parties)
    for c in vals.chains[:2]:  # half the power sees the lock, the other half not yet
        c.see(order, 0, LegOutcome.LOCKED, txid="aa" * 32)
    vals.step()
    vals.step()
    assert vals.order(order.order_id)["legs"][0]["outcome"] is None
    vals.chains[2].see(order, 0, LegOutcome.LOCKED, txid="aa" * 32)  # a third one catches up
    vals.step()
    vals.step()
    assert vals.order(order.order_id)["legs"][0]["outcome"] == "locked"


def test_a_heavy_liar_below_a_third_of_the_power_is_still_outvoted(parties):
    vals = Validators(powers=(30, 25, 25, 20))
    order = _committed_order(vals, parties)
    vals.lies[0] = encode_extension(
        [Observation(order.order_id, 0, LegOutcome.REFUNDED, "bb" * 32, 100)]
    )
    vals.step()
    vals.step()
    assert vals.order(order.order_id)["status"] == "committed"


def test_proposals_that_forge_drop_or_misplace_attestations_are_rejected(parties):
    vals = Validators()
    order = _committed_order(vals, parties)
    lie = encode_extension([Observation(order.order_id, 0, LegOutcome.REFUNDED, "bb" * 32, 1)])
    txs = vals.propose()
    tx = attest.decode_attest_tx(txs[0])
    reject = [abci.ResponseProcessProposal.REJECT] * 4

    forged = attest.AttestTx(
        tx.height,
        tx.round,
        tuple(attest.Vote(v.validator, lie, v.signature) for v in tx.votes),
    )
    assert vals.process([attest.encode_attest_tx(forged), *txs[1:]]) == reject
    dropped = attest.AttestTx(tx.height, tx.round, tx.votes[:2])  # half the power
    assert vals.process([attest.encode_attest_tx(dropped), *txs[1:]]) == reject
    assert vals.process(txs[1:]) == reject  # no attestation at all
    assert vals.process([*txs, txs[0]]) == reject  # a second one, mid-block
    stale = attest.AttestTx(tx.height - 1, tx.round, tx.votes)
    assert vals.process([attest.encode_attest_tx(stale), *txs[1:]]) == reject
    # an attestation tx arriving from the mempool is not proposed
    assert vals.propose([txs[0]]) == txs
    assert vals.apps[0].app.check_tx(txs[0]).error == "not_authorised"
    # the honest proposal of the same height is accepted
    assert vals.process(txs) == [ACCEPT] * 4


def test_every_validator_reaches_the_same_outcomes_and_app_hash(parties):
    vals = Validators()
    order = _committed_order(vals, parties)
    for c in vals.chains:
        for leg in range(3):
            c.see(order, leg, LegOutcome.LOCKED)
    vals.step()
    vals.step()
    for c in vals.chains:
        for leg in range(3):
            c.see(order, leg, LegOutcome.REDEEMED)
    vals.step()
    last = vals.step()
    assert vals.order(order.order_id)["status"] == "settled"
    assert [r.code for r in last.tx_results] == [0]
    assert len({a.app.app_hash for a in vals.apps}) == 1


def test_attestation_bytes_match_the_documented_vector():
    ext = encode_extension(
        [Observation(bytes(range(16)), 1, LegOutcome.LOCKED, "cd" * 32, 800_000)]
    )
    assert ext.hex() == (
        "a2617601636f6273818550000102030405060708090a0b0c0d0e0f01666c6f636b656478406364636463"
        "646364636463646364636463646364636463646364636463646364636463646364636463646364636463"
        "64636463646364636463646364636463641a000c3500"
    )
    sign_bytes = attest.extension_sign_bytes("kofo-test", 7, 0, ext)
    assert sign_bytes == (
        bytes.fromhex("80010a6a") + ext + bytes.fromhex("11070000000000000022096b6f666f2d74657374")
    )
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"alice").digest())
    assert attest.validator_address(public_key_bytes(key)).hex() == (
        "1c0c490f1b5528d8173c5de46d131160e4b2c0c3"
    )
    assert key.sign(sign_bytes).hex() == (
        "378c67d30b34c5b5820928525e61b1eb870bab44ebbd621968f76545585f76dab8e696a2c985dcd629"
        "20bf9ead7e3cc0867d056767e54b157ba00c2bc4e0b002"
    )


def test_a_proposal_starts_with_the_attestations_and_leaves_over_budget_txs_for_later():
    """Both PrepareProposal duties at once: the previous height's attestation tx first, then
    the mempool within the block's budgets (a 3rd registration over a cap of 2 waits for the
    next block instead of being refused in this one)."""
    vals = Validators(params=ledger_params(max_registrations_per_block=2))
    vals.step()
    regs = [Party.make(i).register_tx() for i in range(3)]
    block = vals.propose(regs)
    assert attest.is_attest_tx(block[0])
    assert block[1:] == regs[:2]
    result = vals.step(*regs)
    assert [r.code for r in result.tx_results] == [0, 0, 0]
    assert [r.code for r in vals.step(regs[2]).tx_results] == [0, 0]
