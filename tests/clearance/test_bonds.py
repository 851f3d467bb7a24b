"""Issue 17 section 3: a bond is collateral in the bond vault, counted only as validators attest
it, slashed only through a ledger decision that > 2/3 of the validators sign for the vault."""

import hashlib
import itertools

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from kofo.clearance import bonds
from kofo.clearance.errors import NotFound
from kofo.settlement.chains.ethereum.contract import deploy, load_artifact
from kofo.wire.attest import BondObservation, encode_extension
from kofo.wire.envelope import open_message
from kofo.wire.orders import (
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    RegisterValidatorKey,
    Unbond,
    sign_tx,
)
from tests.ethereum.conftest import EmbeddedChain

from .helpers import Ledger, Party, commit_tx, ledger_params, make_order
from .test_vote_extensions import Validators

pytestmark = pytest.mark.timeout(120)


def _codes(result):
    return [r.error for r in result.results]


def test_a_declared_bond_counts_for_nothing_only_the_attested_vault_balance_does():
    ledger = Ledger()
    whale, plain = Party.make(0, bond=10**60), Party.make(1, bond=0)
    ledger.ok(whale.register_tx(), plain.register_tx())
    assert ledger.app.bond(whale.id) == 0
    assert ledger.app.importance(whale.id) == ledger.app.importance(plain.id)
    ledger.chains.see_bond(whale.id, 10**18)
    ledger.attested()
    assert ledger.app.bond(whale.id) == 10**18
    assert ledger.app.importance(whale.id) == 10**9 // 2  # isqrt(bond) at a 50 % success rate


def test_an_older_view_of_the_vault_does_not_override_a_newer_one():
    ledger = Ledger()
    p = Party.make(0)
    ledger.ok(p.register_tx())
    ledger.chains.see_bond(p.id, 500, height=20)
    ledger.attested()
    ledger.chains.see_bond(p.id, 10**18, height=10)
    ledger.attested()
    assert ledger.app.bond(p.id) == 500


def test_a_minority_of_validators_cannot_attest_a_bond():
    vals = Validators()
    p = Party.make(0)
    vals.step(p.register_tx())
    vals.lies[0] = encode_extension([], [BondObservation(p.id, 10**30, 5)])
    vals.step()
    vals.step()
    assert vals.apps[1].app.bond(p.id) == 0
    for c in vals.chains[1:]:
        c.see_bond(p.id, 7 * 10**17, 6)
    vals.step()
    vals.step()
    assert {a.app.bond(p.id) for a in vals.apps} == {7 * 10**17}


def _secp(i):
    return hashlib.sha256(b"validator-secp-%d" % i).digest()


def _eth(key):
    return bonds.eth_address(coincurve.PrivateKey(key).public_key)


def _valkey_tx(vals, i, submitter, secp=None):
    secp = secp or _secp(i)
    eth = _eth(_secp(i))
    body = RegisterValidatorKey(
        consensus_key=vals.pubs[i],
        eth_address=eth,
        consensus_sig=vals.keys[i].sign(bonds.valkey_consensus_message(eth, submitter.id)),
        eth_sig=bonds.sign_digest(secp, bonds.valkey_eth_digest(vals.pubs[i])),
    )
    return sign_tx(submitter.key, body)


def test_validator_keys_need_both_proofs_of_possession_and_a_validator():
    vals = Validators()
    p = Party.make(0)
    vals.step(p.register_tx())
    res = vals.step(_valkey_tx(vals, 0, p, secp=_secp(77)), _valkey_tx(vals, 1, p))
    assert [r.code for r in res.tx_results] == [0, 10, 0]  # attestation, bad eth sig, ok
    again = _valkey_tx(vals, 1, p)
    assert vals.apps[0].app.check_tx(again).error == "already_exists"
    res = vals.step(again)
    assert [r.code for r in res.tx_results] == [0]  # an honest proposer leaves the replay out
    stranger = Party.make(9)
    body = RegisterValidatorKey(
        stranger.id,
        _eth(_secp(9)),
        stranger.key.sign(bonds.valkey_consensus_message(_eth(_secp(9)), p.id)),
        bonds.sign_digest(_secp(9), bonds.valkey_eth_digest(stranger.id)),
    )
    res = vals.step(sign_tx(p.key, body))
    assert [r.code for r in res.tx_results] == [0, 10]  # not a validator
    assert vals.apps[0].app.validator_keys() == {vals.address(1): _eth(_secp(1))}


def test_evidence_slashes_the_vault_through_a_decision_signed_by_the_validators():
    chain = EmbeddedChain()
    w3 = chain.w3
    eth_vals = sorted(_eth(_secp(i)) for i in range(4))
    vault_addr = deploy(
        w3,
        "BondVault",
        w3.eth.accounts[0],
        [Web3.to_checksum_address(a) for a in eth_vals],
        [10, 10, 10, 10],
    )
    vault = w3.eth.contract(address=vault_addr, abi=load_artifact("BondVault").abi)
    foundation = "0x" + "ee" * 20
    params = ledger_params(
        bond_vault_chain_id=w3.eth.chain_id,
        bond_vault_address=vault_addr,
        slash_recipient=foundation,
    )
    vals = Validators(params=params)
    alice, m1, m2 = (Party.make(i) for i in range(3))
    vals.step(
        *(p.register_tx() for p in (alice, m1, m2)), *(_valkey_tx(vals, i, alice) for i in range(4))
    )
    # m1 locks a real bond in the vault; every validator's watcher sees it
    owner = chain.new_account(10**19)
    chain.send(vault.functions.lock(m1.id), owner, value=10**18)
    for c in vals.chains:
        c.see_bond(m1.id, vault.functions.bonds(m1.id).call(), w3.eth.block_number)
    order = make_order([alice, m1, m2], t0=vals.time)
    vals.step(commit_tx(order, [alice, m1, m2], alice))
    vals.step()
    assert vals.apps[0].app.bond(m1.id) == 10**18
    for c in vals.chains:  # alice locked leg 0; m1 never locks leg 1
        c.see(order, 0, LegOutcome.LOCKED)
    vals.step()
    vals.step()
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    res = vals.step(ev, time=order.legs[1].lock_by + params.attest_grace + 1)
    assert [r.code for r in res.tx_results] == [0, 0]
    slash = 10**18 * 500 // 10_000
    events = [e for e in res.tx_results[1].events if e.type == "bond_decision"]
    did = bytes.fromhex(dict((a.key, a.value) for a in events[0].attributes)["id"])
    decision = vals.apps[0].app.decision(did)
    assert (decision["node"], decision["amount"]) == (m1.id, slash)
    assert vals.apps[0].app.bond(m1.id) == 10**18 - slash  # counted at once, paid on execution
    # each validator checks the decision on its own ledger and signs its digest
    expected = vault.functions.slash_digest(
        m1.id, slash, Web3.to_checksum_address(foundation), did
    ).call()
    assert decision["digest"] == expected
    signed = {_eth(_secp(i)): bonds.sign_digest(_secp(i), decision["digest"]) for i in range(3)}
    v, r, s = bonds.signature_slots(eth_vals, signed)
    relayer = chain.new_account(10**18)
    chain.send(
        vault.functions.slash(m1.id, slash, Web3.to_checksum_address(foundation), did, v, r, s),
        relayer,
    )
    assert w3.eth.get_balance(Web3.to_checksum_address(foundation)) == slash
    # the watchers see the lower balance: a fall alone is not read as the execution (anything
    # could cause it), so the slash stays pending and the bond is not counted lower twice ...
    for c in vals.chains:
        c.see_bond(m1.id, vault.functions.bonds(m1.id).call(), w3.eth.block_number)
    vals.step()
    vals.step()
    rec = vals.apps[0].app.node(m1.id)
    assert (rec["bond_locked"], rec["slash_pending"]) == (10**18 - slash, slash)
    # ... until they see the vault's executed decision, matched to the ledger's id
    for c in vals.chains:
        c.see_executed(did, w3.eth.block_number)
    vals.step()
    vals.step()
    rec = vals.apps[0].app.node(m1.id)
    assert (rec["bond_locked"], rec["slash_pending"]) == (10**18 - slash, 0)
    assert vals.apps[0].app.bond(m1.id) == 10**18 - slash


def test_voting_power_follows_the_attested_bond_of_the_validators_node():
    vals = Validators()
    node = Party.make(5)
    vals.step(node.register_tx())
    res = vals.step(_valkey_tx(vals, 0, node))
    # bound to a node with no attested bond: its power drops to 0 (from height + 2)
    assert [(u.pub_key.ed25519, u.power) for u in res.validator_updates] == [(vals.pubs[0], 0)]
    with pytest.raises(NotFound):  # no vault set while validators with power have no key
        vals.apps[0].app.valset_decision(1)
    for c in vals.chains:
        c.see_bond(node.id, 7 * 10**15, 3)  # 0.007 ETH at 10^15 wei per unit: power 7
    vals.step()
    res = vals.step()
    assert [(u.pub_key.ed25519, u.power) for u in res.validator_updates] == [(vals.pubs[0], 7)]
    for c in vals.chains:
        c.see_bond(node.id, 25 * 10**15, 4)  # 25, but the others still stand in with 10 each:
    vals.step()  # a bound genesis validator votes with no more than its genesis power
    res = vals.step()
    assert [(u.pub_key.ed25519, u.power) for u in res.validator_updates] == [(vals.pubs[0], 10)]
    with pytest.raises(NotFound):  # the other three still have no key
        vals.apps[0].app.valset_decision(1)
    # the ledger keeps verifying attestations with the set that signed them, block after block
    for _ in range(3):
        vals.step()
    assert len({a.app.app_hash for a in vals.apps}) == 1


def test_a_validator_cannot_be_bound_to_another_node_than_the_one_it_signed_for():
    vals = Validators()
    mine, thief = Party.make(5), Party.make(6)
    vals.step(mine.register_tx(), thief.register_tx())
    tx = _valkey_tx(vals, 0, mine)  # signed for `mine`, resubmitted by `thief` as its own
    body = RegisterValidatorKey.from_map(open_message(tx).envelope.body)
    res = vals.step(sign_tx(thief.key, body))
    assert [r.code for r in res.tx_results] == [0, 4]  # bad_signature


def test_one_bond_cannot_back_two_validators():
    vals = Validators()
    node = Party.make(5)
    vals.step(node.register_tx())
    res = vals.step(_valkey_tx(vals, 0, node), _valkey_tx(vals, 1, node))
    assert [r.code for r in res.tx_results] == [0, 0, 6]  # the second: already_exists


def test_unbonding_stops_counting_at_once_stays_slashable_and_releases_through_the_vault():
    chain = EmbeddedChain()
    w3 = chain.w3
    eth_vals = sorted(_eth(_secp(i)) for i in range(4))
    vault_addr = deploy(
        w3,
        "BondVault",
        w3.eth.accounts[0],
        [Web3.to_checksum_address(a) for a in eth_vals],
        [10, 10, 10, 10],
    )
    vault = w3.eth.contract(address=vault_addr, abi=load_artifact("BondVault").abi)
    ledger = Ledger(
        params=ledger_params(
            bond_vault_chain_id=w3.eth.chain_id, bond_vault_address=vault_addr, unbond_delay=1_000
        )
    )
    node = Party.make(3)
    ledger.ok(node.register_tx())
    owner = chain.new_account(10**19)
    chain.send(vault.functions.lock(node.id), owner, value=10**18)
    ledger.chains.see_bond(node.id, 10**18, w3.eth.block_number)
    ledger.attested()
    payout = bytes.fromhex("00" * 19 + "cd")
    unbond = sign_tx(node.key, Unbond(4 * 10**17, 0, payout))
    too_much = sign_tx(node.key, Unbond(10**18 + 1, 0, payout))
    assert _codes(ledger.block(too_much)) == ["order_invalid"]
    start = ledger.time
    assert _codes(ledger.block(unbond)) == [""]
    assert ledger.app.bond(node.id) == 6 * 10**17  # importance and power stop counting it
    assert _codes(ledger.block(unbond, time=start + 999)) == ["order_invalid"]  # too early
    elsewhere = sign_tx(node.key, Unbond(4 * 10**17, 0, bytes.fromhex("00" * 19 + "ef")))
    assert _codes(ledger.block(elsewhere, time=start + 1_000)) == ["order_invalid"]  # payout
    res = ledger.block(unbond, time=start + 1_000)
    assert _codes(res) == [""]
    event = next(e for e in res.results[0].events if e[0] == "bond_decision")
    did = bytes.fromhex(dict(event[1])["id"])
    decision = ledger.app.decision(did)
    assert (decision["kind"], decision["amount"]) == ("release", 4 * 10**17)
    checksum = Web3.to_checksum_address(payout)
    assert decision["recipient"] == "0x" + payout.hex()
    assert (
        decision["digest"]
        == vault.functions.release_digest(node.id, 4 * 10**17, checksum, did).call()
    )
    signed = {_eth(_secp(i)): bonds.sign_digest(_secp(i), decision["digest"]) for i in (0, 2, 3)}
    v, r, s = bonds.signature_slots(eth_vals, signed)
    chain.send(
        vault.functions.release(node.id, 4 * 10**17, checksum, did, v, r, s),
        chain.new_account(10**18),
    )
    assert w3.eth.get_balance(checksum) == 4 * 10**17
    ledger.chains.see_bond(node.id, vault.functions.bonds(node.id).call(), w3.eth.block_number)
    ledger.chains.see_executed(did, w3.eth.block_number)
    ledger.attested()
    assert ledger.app.bond(node.id) == 6 * 10**17
    assert ledger.app.node(node.id)["slash_pending"] == 0
    # the old request, replayed by anyone, does not start another unbonding
    assert _codes(ledger.block(unbond)) == ["order_invalid"]
    assert ledger.app.bond(node.id) == 6 * 10**17


class _VaultOnly:
    """A validator's observer that watches only the bond vault (a real VaultWatcher)."""

    def __init__(self, watcher):
        self.watcher = watcher

    def observe(self, ref):
        return None

    def observe_bond(self, node, step=1):
        return self.watcher.observe_bond(node, step)

    def observe_decision(self, decision, step=1):
        return self.watcher.observe_decision(decision, step)

    def observe_tips(self):
        return []


@pytest.mark.parametrize("step", [1, 8])
def test_validators_with_different_tips_agree_on_the_vault_height(step):
    # Issue 17 (review): each validator read the vault at its own tip - confirmations + 1, so
    # validators with different confirmation settings (or tips) attested the same balance at
    # different heights, no exact fact reached > 2/3 and the bond was never counted. They now
    # read at the highest confirmed multiple of bond_height_step. step=1 is the old rule: the
    # bond stalls; step=8: it is attested.
    from kofo.settlement.observer import VaultWatcher

    chain = EmbeddedChain()
    w3 = chain.w3
    vault_addr = deploy(
        w3, "BondVault", w3.eth.accounts[0], [Web3.to_checksum_address("0x" + "11" * 20)], [1]
    )
    vault = w3.eth.contract(address=vault_addr, abi=load_artifact("BondVault").abi)
    vals = Validators(params=ledger_params(bond_height_step=step))
    for i, a in enumerate(vals.apps):  # confirmations 1, 2, 3, 4: four different tips
        a.app.observer = _VaultOnly(VaultWatcher(w3, vault_addr, confirmations=i + 1))
    p = Party.make(0)
    vals.step(p.register_tx())
    owner = chain.new_account(10**20)
    chain.send(vault.functions.lock(p.id), owner, value=10**18)
    locked_at = w3.eth.block_number
    # every validator's confirmed tip past the same multiple of 8, itself after the lock
    while w3.eth.block_number % 8 != 6 or w3.eth.block_number < locked_at + 8:
        chain.tester.mine_blocks(1)
    seen = {a.app.observer.observe_bond(p.id, step).chain_height for a in vals.apps}
    for _ in range(3):
        vals.step()
    if step == 1:
        assert len(seen) == 4  # four heights, four different facts
        assert {a.app.bond(p.id) for a in vals.apps} == {0}
    else:
        assert len(seen) == 1
        assert {a.app.bond(p.id) for a in vals.apps} == {10**18}


def _updates(res):
    return [(u.pub_key.ed25519, u.power) for u in res.validator_updates]


def test_a_validator_joins_after_genesis_through_a_bond_and_leaves_by_unbonding():
    # Issue 17: powers changed only for the genesis validators. A node that locks a bond in
    # the vault (attested) and registers a consensus key outside the set now joins: CometBFT
    # gets the update, the ledger counts its vote (and its weight) from height + 2.
    # Three genesis validators (a set of three tolerates no fault, so the joiners may hold up
    # to (30 - 1) // 2 = 14: with four or more, joiners and the genesis validators the set
    # tolerates as faulty stay below 1/3, and the joiner's weight could never show).
    vals = Validators(powers=(10, 10, 10), params=ledger_params(validator_min_power=10), joiners=1)
    node, other = Party.make(5), Party.make(6)
    vals.step(node.register_tx(), other.register_tx())
    res = vals.step(_valkey_tx(vals, 3, node))  # no bond yet: not a validator
    assert [r.code for r in res.tx_results] == [0, 10]  # not_authorised
    for c in vals.chains:
        c.see_bond(node.id, 14 * 10**15, 3)  # power 14 at 10^15 wei a unit (< 1/3 of 44)
    vals.step()
    vals.step()
    assert vals.apps[0].app.bond(node.id) == 14 * 10**15
    res = vals.step(_valkey_tx(vals, 3, node))
    assert [r.code for r in res.tx_results] == [0, 0]
    assert _updates(res) == [(vals.pubs[3], 14)]
    joined_at = vals.height
    app = vals.apps[0].app
    assert vals.address(3) not in app.validators_at(joined_at + 1)
    assert app.validators_at(joined_at + 2)[vals.address(3)].power == 14
    vals.step()
    vals.step()  # the joiner now extends its votes
    # its weight counts: two genesis validators (20 of 44) no longer make > 2/3 ...
    for c in vals.chains[:2]:
        c.see_bond(other.id, 7 * 10**17, 4)
    vals.step()
    vals.step()
    assert {a.app.bond(other.id) for a in vals.apps} == {0}
    # ... and its vote counts: with it, 34 of 44
    vals.chains[3].see_bond(other.id, 7 * 10**17, 4)
    vals.step()
    vals.step()
    assert {a.app.bond(other.id) for a in vals.apps} == {7 * 10**17}
    # it leaves by unbonding: its power goes to 0 at once (CometBFT removes it)
    res = vals.step(
        sign_tx(node.key, Unbond(amount=14 * 10**15, seq=0, payout=bytes.fromhex("ab" * 20)))
    )
    assert [r.code for r in res.tx_results] == [0, 0]
    assert _updates(res) == [(vals.pubs[3], 0)]
    for _ in range(3):
        vals.step()
    assert vals.address(3) not in app.validators_at(vals.height)


def test_a_joined_validators_key_enters_the_vaults_signer_set():
    # The genesis validator votes with its own bond (no stand-in power: the joiner is not
    # capped below 1/3), bound first; the joiner's key then enters the vault's set with it.
    vals = Validators(powers=(10,), params=ledger_params(validator_min_power=10), joiners=1)
    node, own = Party.make(5), Party.make(6)
    vals.step(node.register_tx(), own.register_tx())
    for c in vals.chains:
        c.see_bond(node.id, 30 * 10**15, 3)
        c.see_bond(own.id, 70 * 10**15, 3)
    vals.step()
    vals.step()
    res = vals.step(_valkey_tx(vals, 0, own))
    assert _updates(res) == [(vals.pubs[0], 70)]
    res = vals.step(_valkey_tx(vals, 1, node))
    assert _updates(res) == [(vals.pubs[1], 30)]
    decision = vals.apps[0].app.valset_decision(2)
    by_eth = dict(zip(decision["validators"], decision["powers"], strict=True))
    assert by_eth == {_eth(_secp(0)): 70, _eth(_secp(1)): 30}
    assert decision["unkeyed_power"] == 0


def test_a_new_validator_needs_the_minimum_bond_and_a_free_slot():
    vals = Validators(params=ledger_params(validator_min_power=10), joiners=1)
    node = Party.make(5)
    vals.step(node.register_tx())
    for c in vals.chains:
        c.see_bond(node.id, 9 * 10**15, 3)  # power 9 < 10
    vals.step()
    vals.step()
    res = vals.step(_valkey_tx(vals, 4, node))
    assert [r.code for r in res.tx_results] == [0, 10]
    assert "below the 10" in res.tx_results[1].log


def test_a_top_up_hiding_an_executed_release_is_not_misread():
    # Issue 17 (review): the ledger read any fall of a vault balance as an executed slash or
    # release, and nothing else as one. A top-up between two attested views hid an executed
    # release (the balance rose), so the release stayed "pending" for good and the node's
    # bond was counted short by it forever; a fall from anything else would be misread the
    # other way. Executions are now attested by decision id (the vault's executed record).
    ledger = Ledger(params=ledger_params(unbond_delay=1_000))
    node = Party.make(3)
    ledger.ok(node.register_tx())
    ledger.chains.see_bond(node.id, 10**18, 10)
    ledger.attested()
    payout = bytes.fromhex("00" * 19 + "cd")
    unbond = sign_tx(node.key, Unbond(4 * 10**17, 0, payout))
    start = ledger.time
    ledger.ok(unbond)
    res = ledger.block(unbond, time=start + 1_000)
    event = next(e for e in res.results[0].events if e[0] == "bond_decision")
    did = bytes.fromhex(dict(event[1])["id"])
    assert ledger.app.bond(node.id) == 6 * 10**17
    # the vault: the release executes (-4e17), the owner tops up 5e17: the balance rises
    ledger.chains.see_bond(node.id, 10**18 - 4 * 10**17 + 5 * 10**17, 20)
    ledger.attested()
    # no execution attested yet: the release stays pending (the bond is not over-counted)
    assert ledger.app.bond(node.id) == 11 * 10**17 - 4 * 10**17
    ledger.chains.see_executed(did, 20)
    ledger.attested()
    assert ledger.app.bond(node.id) == 11 * 10**17  # the top-up counts in full
    assert ledger.app.node(node.id)["slash_pending"] == 0
    assert ledger.app.decision(did)["executed_at"] == 20


def test_an_execution_counts_only_with_a_balance_that_shows_it():
    # The executed decision is attested before the lower balance: the pending amount is paid
    # off only once a balance from that vault height on is attested (never the execution
    # without the balance, which would count the bond twice).
    ledger = Ledger(params=ledger_params(unbond_delay=1_000))
    node = Party.make(3)
    ledger.ok(node.register_tx())
    ledger.chains.see_bond(node.id, 10**18, 10)
    ledger.attested()
    unbond = sign_tx(node.key, Unbond(4 * 10**17, 0, bytes.fromhex("00" * 19 + "cd")))
    start = ledger.time
    ledger.ok(unbond)
    res = ledger.block(unbond, time=start + 1_000)
    did = bytes.fromhex(
        dict(next(e for e in res.results[0].events if e[0] == "bond_decision")[1])["id"]
    )
    del ledger.chains.bonds[node.id]  # the watcher lags on the balance
    ledger.chains.see_executed(did, 30)
    ledger.attested()
    assert ledger.app.bond(node.id) == 6 * 10**17  # not 10**18: not counted twice
    # a top-up equal to the release leaves the amount unchanged: still re-attested at 30
    ledger.chains.see_bond(node.id, 10**18, 30)
    ledger.attested()
    assert ledger.app.bond(node.id) == 10**18
    assert ledger.app.node(node.id)["slash_pending"] == 0


def test_a_joined_validator_that_unbonded_gives_its_slot_to_the_next(monkeypatch):
    # Attacker's pass on the join rule: slots were never freed, so bonding briefly, joining
    # and unbonding held the set's slots for good. A full set now reclaims the slot of a
    # joined validator whose bond fell below the minimum.
    from kofo.clearance import attest

    monkeypatch.setattr(attest, "MAX_VALIDATORS", 5)  # four genesis validators, one slot
    vals = Validators(params=ledger_params(validator_min_power=10), joiners=2)
    squatter, honest = Party.make(5), Party.make(6)
    vals.step(squatter.register_tx(), honest.register_tx())
    for c in vals.chains:
        c.see_bond(squatter.id, 20 * 10**15, 3)
        c.see_bond(honest.id, 20 * 10**15, 3)
    vals.step()
    vals.step()
    assert [r.code for r in vals.step(_valkey_tx(vals, 4, squatter)).tx_results] == [0, 0]
    res = vals.step(_valkey_tx(vals, 5, honest))
    assert [r.code for r in res.tx_results] == [0, 17]  # rate_limited: the set is full
    unbond = Unbond(amount=20 * 10**15, seq=0, payout=bytes.fromhex("ab" * 20))
    vals.step(sign_tx(squatter.key, unbond))  # the squatter's power goes to 0
    res = vals.step(_valkey_tx(vals, 5, honest))
    assert [r.code for r in res.tx_results] == [0, 0]
    # 20 capped to 4: joiners and one genesis validator stay below 1/3 (14 of 44)
    assert _updates(res) == [(vals.pubs[5], 4)]
    keys = vals.apps[0].app.validator_keys()
    assert vals.address(5) in keys and vals.address(4) not in keys


def test_a_slot_reclaimed_in_the_block_its_holder_unbonds_removes_it_from_the_set(monkeypatch):
    # Attacker's pass: the holder unbonds and the next joiner takes its slot in the same
    # block; the holder was still in the set with its old power and, forgotten by the ledger,
    # would have kept it in CometBFT's set for good.
    from kofo.clearance import attest

    monkeypatch.setattr(attest, "MAX_VALIDATORS", 5)
    vals = Validators(params=ledger_params(validator_min_power=10), joiners=2)
    squatter, honest = Party.make(5), Party.make(6)
    vals.step(squatter.register_tx(), honest.register_tx())
    for c in vals.chains:
        c.see_bond(squatter.id, 20 * 10**15, 3)
        c.see_bond(honest.id, 30 * 10**15, 3)
    vals.step()
    vals.step()
    vals.step(_valkey_tx(vals, 4, squatter))
    vals.step()
    unbond = Unbond(amount=20 * 10**15, seq=0, payout=bytes.fromhex("ab" * 20))
    res = vals.step(sign_tx(squatter.key, unbond), _valkey_tx(vals, 5, honest))
    assert [r.code for r in res.tx_results] == [0, 0, 0]
    # 30 capped to 4: joiners and one genesis validator stay below 1/3 (14 of 44)
    assert sorted(_updates(res)) == sorted([(vals.pubs[4], 0), (vals.pubs[5], 4)])
    for _ in range(3):
        vals.step()
    active = vals.apps[0].app.validators_at(vals.height)
    assert vals.address(4) not in active and active[vals.address(5)].power == 4


class _WithoutDecisions:
    """The shape of the devnet's and the validator's observer wrapper before the fix: it
    forwarded leg and bond reads only, and the app (which asked for ``observe_decision`` with
    ``getattr``) then never attested a vault execution: a relayed slash stayed pending."""

    def __init__(self, inner):
        self.inner = inner

    def observe(self, ref):
        return self.inner.observe(ref)

    def observe_bond(self, node, step=1):
        return self.inner.observe_bond(node, step)


def test_an_observer_lacking_a_chain_observer_method_is_refused_naming_it():
    from kofo.clearance.app import LedgerApp
    from kofo.clearance.store import MerkleStore
    from kofo.errors import ConfigError

    from .helpers import SeenChains

    chains = SeenChains()
    with pytest.raises(ConfigError, match="_WithoutDecisions lacks observe_decision"):
        LedgerApp(MerkleStore(), ledger_params(), observer=_WithoutDecisions(chains))
    app = LedgerApp(MerkleStore(), ledger_params(), observer=chains)
    with pytest.raises(ConfigError, match="observe_decision"):
        app.observer = _WithoutDecisions(chains)  # attached later, as the devnet does
    assert app.observer is chains  # the complete one is kept
    app.observer = None  # no observer at all is allowed (a validator that sees nothing)
    assert app.observer is None


def test_a_bonded_joiner_cannot_outvote_the_genesis_stand_in_powers():
    # Attacker's pass (session 4): an unbound genesis validator votes with its genesis power
    # (10 here, CometBFT's default), a bound one with its bond // power_unit (1,000 per ETH).
    # A joiner bonding the minimum (1 ETH at the default params) got 1,000 against 40: more
    # than 2/3 of the votes (the chain is its), and being the only keyed validator the next
    # valset decision made it the vault's sole signer (every bond its to release). While a
    # genesis validator votes with its stand-in power, the joiners together now stay below
    # 1/3 of the total, and the vault gets no set they control.
    vals = Validators(joiners=1)  # default params: validator_min_power 1,000 (1 ETH)
    node = Party.make(5)
    vals.step(node.register_tx())
    for c in vals.chains:
        c.see_bond(node.id, 10**18, 3)
    vals.step()
    vals.step()
    res = vals.step(_valkey_tx(vals, 4, node))
    assert {r.code for r in res.tx_results} == {0}
    (update,) = _updates(res)
    assert update[0] == vals.pubs[4] and update[1] > 0  # it joins ...
    app = vals.apps[0].app
    powers = app.validators_at(vals.height + 2)
    total = sum(v.power for v in powers.values())
    assert 3 * powers[vals.address(4)].power < total  # ... below 1/3 of the votes
    with pytest.raises(NotFound):
        app.valset_decision(1)  # and the vault keeps its set


def _bond(vals, node, eth, height=3):
    for c in vals.chains:
        c.see_bond(node.id, eth * 10**18, height)
    vals.step()
    vals.step()


def test_joiners_and_one_dishonest_genesis_validator_stay_below_a_third():
    # Attacker's pass (session 7): joiners were capped just below 1/3 of the total (19 against
    # four genesis validators of 10). A set of four tolerates one faulty validator; joiners
    # (one attacker bonding far above the minimum, under two nodes) and that one genesis
    # validator then held 29 of 59, more than 1/3: the chain halts at their will. Now
    # J + F < (G + J) / 3 (F: the power of the genesis validators the set tolerates as
    # faulty, 10): J < (40 - 30) / 2, at most 4 together.
    vals = Validators(joiners=2)  # default params: validator_min_power 1,000 (1 ETH)
    a, b = Party.make(5), Party.make(6)
    vals.step(a.register_tx(), b.register_tx())
    _bond(vals, a, 50)
    _bond(vals, b, 30)
    res = vals.step(_valkey_tx(vals, 4, a), _valkey_tx(vals, 5, b))
    assert {r.code for r in res.tx_results} == {0}
    assert sorted(_updates(res)) == sorted([(vals.pubs[4], 2), (vals.pubs[5], 1)])  # floor
    for _ in range(3):
        vals.step()
    powers = {a: v.power for a, v in vals.apps[0].app.validators_at(vals.height).items()}
    joined = powers[vals.address(4)] + powers[vals.address(5)]
    total = sum(powers.values())
    assert 0 < joined < 5
    assert 3 * (joined + max(powers[vals.address(i)] for i in range(4))) < total
    # the vault's > 2/3 is out of their reach with fewer than three genesis keys of four
    assert 3 * (joined + 20) <= 2 * total
    # and the ledger still runs with the joiners voting
    assert len({x.app.app_hash for x in vals.apps}) == 1


def test_joiners_stay_out_while_unequal_genesis_powers_leave_no_room():
    # With genesis powers 11, 10, 10, 10, 10, 10 (61) two validators of 10 (20 < 61 / 3) are
    # a coalition the set tolerates; a joiner of any power would push them past 1/3 with
    # it, so it gets none while the genesis validators stand in (before: 30 of 91).
    vals = Validators(powers=(11, 10, 10, 10, 10, 10), joiners=1)
    node = Party.make(7)
    vals.step(node.register_tx())
    _bond(vals, node, 5)
    res = vals.step(_valkey_tx(vals, 6, node))
    assert {r.code for r in res.tx_results} == {0}  # its key is recorded ...
    assert _updates(res) == []  # ... but it gets no power
    vals.step()
    vals.step()
    assert vals.address(6) not in vals.apps[0].app.validators_at(vals.height)


def test_a_bound_genesis_validator_cannot_outvote_the_ones_still_standing_in():
    # The same class for a genesis validator: bound to a bond of 1 ETH (1,000) against three
    # stand-ins of 10 it held 1,000 of 1,030, the chain and (keyed alone) the vault. While
    # others stand in, a bound genesis validator votes with no more than its genesis power;
    # once all four are bound, power is bond alone and joiners are no longer capped.
    vals = Validators(joiners=1)
    gen = [Party.make(10 + i) for i in range(4)]
    joiner = Party.make(9)
    vals.step(*(p.register_tx() for p in [*gen, joiner]))
    for c in vals.chains:
        for i, p in enumerate(gen):
            c.see_bond(p.id, (1 + i) * 10**18, 3)
        c.see_bond(joiner.id, 10**18, 3)
    vals.step()
    vals.step()
    res = vals.step(_valkey_tx(vals, 0, gen[0]))
    assert _updates(res) == []  # 1,000 by bond, 10 while the others stand in: no change
    res = vals.step(_valkey_tx(vals, 4, joiner))
    assert _updates(res) == [(vals.pubs[4], 4)]  # capped as above
    app = vals.apps[0].app
    with pytest.raises(NotFound):  # keyed 14 of 44: the vault keeps its set
        app.valset_decision(1)
    res = vals.step(*(_valkey_tx(vals, i, gen[i]) for i in range(1, 4)))
    # all genesis validators bound: bond-only power, the joiner's 1,000 uncapped
    assert sorted(_updates(res)) == sorted(
        [
            (vals.pubs[0], 1000),
            (vals.pubs[1], 2000),
            (vals.pubs[2], 3000),
            (vals.pubs[3], 4000),
            (vals.pubs[4], 1000),
        ]
    )
    for _ in range(3):
        vals.step()
    decision = app.valset_decision(1)
    assert sorted(decision["powers"]) == [1000, 1000, 2000, 3000, 4000]
    assert decision["unkeyed_power"] == 0


def test_unbound_genesis_validators_stop_standing_in_at_the_bond_deadline():
    # validator_bond_deadline: from that height the unbound genesis validators have no power,
    # nobody stands in, and the joiners' powers are their bonds, no longer capped.
    vals = Validators(params=ledger_params(validator_bond_deadline=12), joiners=1)
    gen = [Party.make(10 + i) for i in range(2)]
    joiner = Party.make(9)
    vals.step(*(p.register_tx() for p in [*gen, joiner]))
    for c in vals.chains:
        for p in gen:
            c.see_bond(p.id, 2 * 10**18, 3)
        c.see_bond(joiner.id, 10**18, 3)
    vals.step()
    vals.step()
    res = vals.step(_valkey_tx(vals, 0, gen[0]), _valkey_tx(vals, 1, gen[1]))
    assert _updates(res) == []  # 2,000 by bond, 10 while two others stand in
    res = vals.step(_valkey_tx(vals, 4, joiner))
    assert _updates(res) == [(vals.pubs[4], 4)]
    while vals.height < 11:
        assert _updates(vals.step()) == []
    res = vals.step()  # height 12: the deadline
    assert sorted(_updates(res)) == sorted(
        [
            (vals.pubs[0], 2000),
            (vals.pubs[1], 2000),
            (vals.pubs[2], 0),
            (vals.pubs[3], 0),
            (vals.pubs[4], 1000),
        ]
    )


@settings(max_examples=300, deadline=None)
@given(
    genesis=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    joined=st.lists(st.integers(1, 10**6), min_size=1, max_size=4),
)
def test_the_joiners_cap_keeps_every_tolerated_genesis_coalition_below_a_third(genesis, joined):
    # Against every coalition of genesis validators the genesis set tolerates (any f =
    # (n - 1) // 3 of them, or any below 1/3 of their power; all subsets, brute force), the
    # capped joiners and that coalition hold less than 1/3 of the total.
    from kofo.clearance.app import Validator, _cap_joined_power

    g = {b"g%d" % i: p for i, p in enumerate(genesis)}
    new = {**g, **{b"j%d" % i: p for i, p in enumerate(joined)}}
    _cap_joined_power(new, {a: Validator(a, p) for a, p in g.items()})
    total_g, f = sum(genesis), (len(genesis) - 1) // 3
    j = sum(new[b"j%d" % i] for i in range(len(joined)))
    assert all(new[a] == p for a, p in g.items())  # genesis powers untouched
    for r in range(len(genesis) + 1):
        for coalition in itertools.combinations(genesis, r):
            if r <= f or 3 * sum(coalition) < total_g:
                assert 3 * (sum(coalition) + j) < total_g + j or j == 0
