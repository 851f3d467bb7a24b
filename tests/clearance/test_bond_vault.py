"""contracts/BondVault.vy on the embedded EVM (py-evm via eth-tester): bonds leave the vault only
with secp256k1 signatures of more than two thirds of the validator set's power, over digests
built by kofo.clearance.bonds; the set changes only by an update the current set signs."""

import hashlib

import pytest
from web3 import Web3

from kofo.clearance import bonds
from kofo.settlement.chains.ethereum.contract import deploy, load_artifact
from tests.ethereum.conftest import EmbeddedChain

pytestmark = pytest.mark.timeout(120)

NODE = hashlib.sha256(b"node-1").digest()


def _key(i: int) -> bytes:
    return hashlib.sha256(b"validator-secp-%d" % i).digest()


def _addr(key: bytes) -> bytes:
    import coincurve

    return bonds.eth_address(coincurve.PrivateKey(key).public_key)


class Vault:
    def __init__(self, keys, powers):
        self.chain = EmbeddedChain()
        w3 = self.chain.w3
        self.deployer = w3.eth.accounts[0]
        pairs = sorted(zip((_addr(k) for k in keys), keys, powers, strict=True))
        self.addrs = [a for a, _, _ in pairs]
        self.keys = {a: k for a, k, _ in pairs}
        self.powers = [p for _, _, p in pairs]
        address = deploy(
            w3,
            "BondVault",
            self.deployer,
            [Web3.to_checksum_address(a) for a in self.addrs],
            self.powers,
        )
        self.c = w3.eth.contract(address=address, abi=load_artifact("BondVault").abi)
        self.ref = bonds.Vault(w3.eth.chain_id, bytes.fromhex(address[2:]))
        self.owner = self.chain.new_account(10**20)
        self.chain.send(self.c.functions.lock(NODE), self.owner, value=10**18)

    def sigs(self, digest, signers):
        signed = {a: bonds.sign_digest(self.keys[a], digest) for a in signers}
        return bonds.signature_slots(self.addrs, signed)

    def slash(self, amount, recipient, decision, signers, sender=None):
        digest = bonds.slash_digest(self.ref, NODE, amount, recipient, decision)
        v, r, s = self.sigs(digest, signers)
        fn = self.c.functions.slash(
            NODE, amount, Web3.to_checksum_address(recipient), decision, v, r, s
        )
        return self.chain.send(fn, sender or self.owner)

    def balance(self, who: bytes) -> int:
        return self.chain.w3.eth.get_balance(Web3.to_checksum_address(who))


@pytest.fixture
def vault():
    return Vault([_key(i) for i in range(4)], [10, 10, 10, 10])


RECIPIENT = bytes.fromhex("00" * 19 + "ee")


def test_digests_match_the_contract(vault):
    d = b"\x01" * 32
    assert vault.c.functions.slash_digest(
        NODE, 5, Web3.to_checksum_address(RECIPIENT), d
    ).call() == (bonds.slash_digest(vault.ref, NODE, 5, RECIPIENT, d))
    assert vault.c.functions.release_digest(
        NODE, 5, Web3.to_checksum_address(RECIPIENT), d
    ).call() == bonds.release_digest(vault.ref, NODE, 5, RECIPIENT, d)
    vals = [Web3.to_checksum_address(a) for a in vault.addrs]
    assert vault.c.functions.valset_digest(3, vals, [1, 2, 3, 4], 5).call() == bonds.valset_digest(
        vault.ref, 3, vault.addrs, [1, 2, 3, 4], 5
    )


def test_a_slash_signed_by_three_of_four_pays_the_recipient_once(vault):
    d = b"\x02" * 32
    vault.slash(10**17, RECIPIENT, d, vault.addrs[:3])
    assert vault.balance(RECIPIENT) == 10**17
    assert vault.c.functions.bonds(NODE).call() == 9 * 10**17
    with vault.chain.reverts("decision already executed"):
        vault.slash(10**17, RECIPIENT, d, vault.addrs[:3])


def test_half_the_power_cannot_slash_or_release(vault):
    with vault.chain.reverts("2/3 of the power or less"):
        vault.slash(10**17, RECIPIENT, b"\x03" * 32, vault.addrs[:2])
    digest = bonds.release_digest(vault.ref, NODE, 10**18, RECIPIENT, b"\x04" * 32)
    v, r, s = vault.sigs(digest, vault.addrs[:2])
    fn = vault.c.functions.release(
        NODE, 10**18, Web3.to_checksum_address(RECIPIENT), b"\x04" * 32, v, r, s
    )
    with vault.chain.reverts("2/3 of the power or less"):
        vault.chain.send(fn, vault.owner)
    assert vault.c.functions.bonds(NODE).call() == 10**18


def test_signatures_over_another_decision_or_by_strangers_are_refused(vault):
    # signatures for a 1-wei slash reused for the whole bond
    small = bonds.slash_digest(vault.ref, NODE, 1, RECIPIENT, b"\x05" * 32)
    v, r, s = vault.sigs(small, vault.addrs)
    fn = vault.c.functions.slash(
        NODE, 10**18, Web3.to_checksum_address(RECIPIENT), b"\x05" * 32, v, r, s
    )
    with vault.chain.reverts("bad signature"):
        vault.chain.send(fn, vault.owner)
    # a stranger's key in a validator's slot
    digest = bonds.slash_digest(vault.ref, NODE, 1, RECIPIENT, b"\x06" * 32)
    v, r, s = vault.sigs(digest, vault.addrs[:2])
    forged = bonds.sign_digest(_key(99), digest)
    v[2], r[2], s[2] = forged[64], forged[:32], forged[32:64]
    fn = vault.c.functions.slash(
        NODE, 1, Web3.to_checksum_address(RECIPIENT), b"\x06" * 32, v, r, s
    )
    with vault.chain.reverts("bad signature"):
        vault.chain.send(fn, vault.owner)
    # the malleated (high-s) form of a valid signature
    v, r, s = vault.sigs(digest, vault.addrs[:3])
    high = bonds.SECP256K1_N - int.from_bytes(s[0], "big")
    v[0], s[0] = 55 - v[0], high.to_bytes(32, "big")
    fn = vault.c.functions.slash(
        NODE, 1, Web3.to_checksum_address(RECIPIENT), b"\x06" * 32, v, r, s
    )
    with vault.chain.reverts("high-s signature"):
        vault.chain.send(fn, vault.owner)


def test_release_pays_the_recipient_the_decision_names_and_no_other(vault):
    payout = bytes.fromhex("00" * 19 + "cd")
    d = b"\x07" * 32
    digest = bonds.release_digest(vault.ref, NODE, 4 * 10**17, payout, d)
    v, r, s = vault.sigs(digest, vault.addrs[1:])
    stranger = vault.chain.new_account(10**18)
    # the relayer cannot redirect the signed release to itself
    fn = vault.c.functions.release(
        NODE, 4 * 10**17, Web3.to_checksum_address(stranger.address), d, v, r, s
    )
    with vault.chain.reverts("bad signature"):
        vault.chain.send(fn, stranger)
    fn = vault.c.functions.release(NODE, 4 * 10**17, Web3.to_checksum_address(payout), d, v, r, s)
    vault.chain.send(fn, stranger)
    assert vault.balance(payout) == 4 * 10**17
    assert vault.c.functions.bonds(NODE).call() == 6 * 10**17


def test_a_stranger_locking_first_under_a_node_id_neither_blocks_its_bond_nor_gets_its_release(
    vault,
):
    """Review attack: the vault made the first locker the bond's owner. A stranger watching the
    Ethereum mempool locked 1 wei under a node's id first: every lock by the node itself was
    then refused ("bond owned by another address") and releases paid the stranger."""
    node = hashlib.sha256(b"honest node").digest()
    squatter, honest = vault.chain.new_account(10**18), vault.chain.new_account(10**19)
    vault.chain.send(vault.c.functions.lock(node), squatter, value=1)
    vault.chain.send(vault.c.functions.lock(node), honest, value=10**18)
    assert vault.c.functions.bonds(node).call() == 10**18 + 1
    payout = bytes.fromhex(honest.address[2:])  # the node's own choice, signed on the ledger
    d = b"\x09" * 32
    digest = bonds.release_digest(vault.ref, node, 10**18, payout, d)
    v, r, s = vault.sigs(digest, vault.addrs[:3])
    before = vault.balance(payout)
    fn = vault.c.functions.release(node, 10**18, honest.address, d, v, r, s)
    vault.chain.send(fn, squatter)
    assert vault.balance(payout) == before + 10**18


def test_the_validator_set_changes_only_by_the_current_sets_signatures(vault):
    new_keys = [_key(10 + i) for i in range(3)]
    new = sorted(_addr(k) for k in new_keys)
    powers = [5, 5, 5]
    digest = bonds.valset_digest(vault.ref, 1, new, powers, 0)
    vals = [Web3.to_checksum_address(a) for a in new]
    v, r, s = vault.sigs(digest, vault.addrs[:2])
    with vault.chain.reverts("2/3 of the power or less"):
        vault.chain.send(vault.c.functions.update_valset(1, vals, powers, 0, v, r, s), vault.owner)
    v, r, s = vault.sigs(digest, vault.addrs[:3])
    vault.chain.send(vault.c.functions.update_valset(1, vals, powers, 0, v, r, s), vault.owner)
    with vault.chain.reverts("stale validator set nonce"):
        vault.chain.send(vault.c.functions.update_valset(1, vals, powers, 0, v, r, s), vault.owner)
    # the old set can no longer slash; the new one can
    old = dict(vault.keys)
    vault.addrs, vault.powers = new, powers
    vault.keys = {_addr(k): k for k in new_keys}
    d = b"\x08" * 32
    digest = bonds.slash_digest(vault.ref, NODE, 1, RECIPIENT, d)
    signed = {a: bonds.sign_digest(k, digest) for a, k in list(old.items())[:3]}
    v, r, s = bonds.signature_slots(new, signed)
    fn = vault.c.functions.slash(NODE, 1, Web3.to_checksum_address(RECIPIENT), d, v, r, s)
    with vault.chain.reverts("2/3 of the power or less"):
        vault.chain.send(fn, vault.owner)
    vault.slash(1, RECIPIENT, d, new)
    assert vault.balance(RECIPIENT) == 1


def test_unkeyed_ledger_power_counts_in_the_vaults_total_and_never_signs(vault):
    """The ledger's validators without an Ethereum key keep their share of the total: three
    keyed validators of power 10 and 10 unkeyed need all three signatures (30 of 40), as on
    the ledger; a set whose keyed validators hold 2/3 or less is refused (it could never be
    changed again)."""
    keys = [_key(20 + i) for i in range(3)]
    new = sorted(_addr(k) for k in keys)
    vals = [Web3.to_checksum_address(a) for a in new]
    too_weak = bonds.valset_digest(vault.ref, 1, new, [10, 10, 10], 15)
    v, r, s = vault.sigs(too_weak, vault.addrs)
    with vault.chain.reverts("keyed validators hold 2/3 or less"):
        fn = vault.c.functions.update_valset(1, vals, [10, 10, 10], 15, v, r, s)
        vault.chain.send(fn, vault.owner)
    digest = bonds.valset_digest(vault.ref, 1, new, [10, 10, 10], 10)
    v, r, s = vault.sigs(digest, vault.addrs)
    vault.chain.send(
        vault.c.functions.update_valset(1, vals, [10, 10, 10], 10, v, r, s), vault.owner
    )
    assert vault.c.functions.total_power().call() == 40
    vault.addrs, vault.powers = new, [10, 10, 10]
    vault.keys = {_addr(k): k for k in keys}
    with vault.chain.reverts("2/3 of the power or less"):
        vault.slash(1, RECIPIENT, b"\x0a" * 32, new[:2])  # 20 of 40
    vault.slash(1, RECIPIENT, b"\x0a" * 32, new)  # 30 of 40
    assert vault.balance(RECIPIENT) == 1
