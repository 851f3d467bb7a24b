"""Attacker-briefed review of issue 17 sections 2 and 3 (bond vault, validator keys, voting
power): each test is an attack that worked on the first implementation and is now refused."""

import hashlib

import pytest

from kofo.clearance import bonds
from kofo.wire.orders import RegisterValidatorKey, sign_tx

from .helpers import Party
from .test_bonds import _eth
from .test_vote_extensions import Validators

pytestmark = pytest.mark.timeout(120)


def _valkey_with(vals, i, node, secp):
    """Validator ``i`` bound to ``node`` with the Ethereum key ``secp`` (both proofs valid)."""
    eth = _eth(secp)
    body = RegisterValidatorKey(
        consensus_key=vals.pubs[i],
        eth_address=eth,
        consensus_sig=vals.keys[i].sign(bonds.valkey_consensus_message(eth, node.id)),
        eth_sig=bonds.sign_digest(secp, bonds.valkey_eth_digest(vals.pubs[i])),
    )
    return sign_tx(node.key, body)


def test_two_validators_cannot_register_one_ethereum_address():
    """Two colluding validators (a minority) register the same Ethereum key: the ledger's
    valset decisions would then list that address twice, which the vault's update_valset
    refuses for good ("validators not sorted"), freezing the vault on its old validator set
    (and a shared key would sign with both validators' power)."""
    vals = Validators()
    a, b = Party.make(5), Party.make(6)
    vals.step(a.register_tx(), b.register_tx())
    shared = hashlib.sha256(b"colluders' key").digest()
    res = vals.step(_valkey_with(vals, 0, a, shared), _valkey_with(vals, 1, b, shared))
    assert [r.code for r in res.tx_results] == [0, 0, 6]  # already_exists
    assert list(vals.apps[0].app.validator_keys().values()) == [_eth(shared)]
