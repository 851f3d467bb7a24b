# pragma version 0.4.3
# pragma evm-version cancun
"""
@title KOFO bond vault: node bonds as collateral, governed by the ledger's validators
@notice ETH is locked as a node's bond under its 32-byte ledger node id (by anyone: the vault
        keeps no owner, so nobody can squat a node id by locking under it first; what is
        locked belongs to the node's bond). Nothing leaves the vault except by a ledger
        decision signed by validators holding more than two thirds of the voting power of the
        validator set the vault currently knows: `slash` (pay part of a bond to the recipient
        the decision names) and `release` (pay part back to the address the node named in its
        signed unbond request on the ledger). The validator set itself changes only by an update signed the same way by the
        current set (`update_valset`), as Gravity Bridge's valset updates do; the power of
        ledger validators with no key here counts in the total (`unkeyed_power`), so the
        threshold is always more than two thirds of the ledger's whole voting power.
@dev    Validators sign with secp256k1 keys registered on the ledger; the digest is
        keccak256(abi_encode(DOMAIN, chain.id, this vault, tag, ...)) with no Ethereum message
        prefix (kofo.clearance.bonds builds the same bytes). Signatures are aligned with the
        validator list (v = 0: that validator did not sign); high-s signatures are refused so
        a signature cannot be replayed in its malleated form. Each decision id executes once.
"""

MAX_VALIDATORS: constant(uint256) = 128
SECP256K1N_HALF: constant(uint256) = (
    57896044618658097711785492504343953926418782139537452191302581570759080747168
)  # secp256k1's group order n, halved
DOMAIN: constant(bytes32) = keccak256("KOFO/bond-vault/v1")
SLASH: constant(bytes32) = keccak256("slash")
RELEASE: constant(bytes32) = keccak256("release")
VALSET: constant(bytes32) = keccak256("valset")

event BondLocked:
    node: indexed(bytes32)
    sender: indexed(address)
    amount: uint256
    total: uint256

event BondSlashed:
    node: indexed(bytes32)
    decision: indexed(bytes32)
    amount: uint256
    recipient: address

event BondReleased:
    node: indexed(bytes32)
    decision: indexed(bytes32)
    amount: uint256
    recipient: address

event ValsetUpdated:
    nonce: indexed(uint256)
    validators: DynArray[address, MAX_VALIDATORS]
    powers: DynArray[uint256, MAX_VALIDATORS]
    unkeyed_power: uint256

validators: public(DynArray[address, MAX_VALIDATORS])
powers: public(DynArray[uint256, MAX_VALIDATORS])
total_power: public(uint256)
unkeyed_power: public(uint256)
# Ledger voting power of validators with no key here: counted in the total, never signing, so
# the threshold stays two thirds of the ledger's whole power.
valset_nonce: public(uint256)
bonds: public(HashMap[bytes32, uint256])
executed: public(HashMap[bytes32, bool])


@deploy
def __init__(
    validators: DynArray[address, MAX_VALIDATORS], powers: DynArray[uint256, MAX_VALIDATORS]
):
    self._set_valset(validators, powers, 0)


@internal
def _set_valset(
    validators: DynArray[address, MAX_VALIDATORS],
    powers: DynArray[uint256, MAX_VALIDATORS],
    unkeyed_power: uint256,
):
    assert len(validators) > 0 and len(validators) == len(powers), "bad validator set"
    total: uint256 = unkeyed_power
    for i: uint256 in range(len(validators), bound=MAX_VALIDATORS):
        assert powers[i] > 0, "zero power"
        if i > 0:
            # sorted strictly ascending: no validator twice
            assert convert(validators[i - 1], uint160) < convert(validators[i], uint160), (
                "validators not sorted"
            )
        else:
            assert validators[i] != empty(address), "zero address"
        total += powers[i]
    # a set whose keyed validators cannot reach the threshold could never be changed again
    assert (total - unkeyed_power) * 3 > total * 2, "keyed validators hold 2/3 or less"
    self.validators = validators
    self.powers = powers
    self.total_power = total
    self.unkeyed_power = unkeyed_power


@internal
@view
def _check_signatures(
    digest: bytes32,
    v: DynArray[uint8, MAX_VALIDATORS],
    r: DynArray[bytes32, MAX_VALIDATORS],
    s: DynArray[bytes32, MAX_VALIDATORS],
):
    n: uint256 = len(self.validators)
    assert len(v) == n and len(r) == n and len(s) == n, "one signature slot per validator"
    signed: uint256 = 0
    for i: uint256 in range(n, bound=MAX_VALIDATORS):
        if v[i] == 0:
            continue
        assert convert(s[i], uint256) <= SECP256K1N_HALF, "high-s signature"
        signer: address = ecrecover(digest, convert(v[i], uint256), r[i], s[i])
        assert signer != empty(address) and signer == self.validators[i], "bad signature"
        signed += self.powers[i]
    assert signed * 3 > self.total_power * 2, "signers hold 2/3 of the power or less"


@external
@payable
def lock(node: bytes32):
    """Add msg.value to `node`'s bond. It leaves only by a ledger decision: a release pays the
    address the node itself named on the ledger, never the locker as such."""
    assert msg.value > 0, "nothing to lock"
    total: uint256 = self.bonds[node] + msg.value
    self.bonds[node] = total
    log BondLocked(node=node, sender=msg.sender, amount=msg.value, total=total)


@external
@view
def slash_digest(node: bytes32, amount: uint256, recipient: address, decision: bytes32) -> bytes32:
    return keccak256(
        abi_encode(DOMAIN, chain.id, self, SLASH, node, amount, recipient, decision)
    )


@external
@view
def release_digest(
    node: bytes32, amount: uint256, recipient: address, decision: bytes32
) -> bytes32:
    return keccak256(
        abi_encode(DOMAIN, chain.id, self, RELEASE, node, amount, recipient, decision)
    )


@external
@view
def valset_digest(
    nonce: uint256,
    validators: DynArray[address, MAX_VALIDATORS],
    powers: DynArray[uint256, MAX_VALIDATORS],
    unkeyed_power: uint256,
) -> bytes32:
    return keccak256(
        abi_encode(DOMAIN, chain.id, self, VALSET, nonce, validators, powers, unkeyed_power)
    )


@external
@nonreentrant
def slash(
    node: bytes32,
    amount: uint256,
    recipient: address,
    decision: bytes32,
    v: DynArray[uint8, MAX_VALIDATORS],
    r: DynArray[bytes32, MAX_VALIDATORS],
    s: DynArray[bytes32, MAX_VALIDATORS],
):
    assert not self.executed[decision], "decision already executed"
    assert recipient != empty(address), "zero recipient"
    self._check_signatures(
        keccak256(abi_encode(DOMAIN, chain.id, self, SLASH, node, amount, recipient, decision)),
        v,
        r,
        s,
    )
    assert amount > 0 and amount <= self.bonds[node], "amount exceeds the bond"
    self.executed[decision] = True
    self.bonds[node] -= amount
    log BondSlashed(node=node, decision=decision, amount=amount, recipient=recipient)
    send(recipient, amount)


@external
@nonreentrant
def release(
    node: bytes32,
    amount: uint256,
    recipient: address,
    decision: bytes32,
    v: DynArray[uint8, MAX_VALIDATORS],
    r: DynArray[bytes32, MAX_VALIDATORS],
    s: DynArray[bytes32, MAX_VALIDATORS],
):
    assert not self.executed[decision], "decision already executed"
    assert recipient != empty(address), "zero recipient"
    self._check_signatures(
        keccak256(abi_encode(DOMAIN, chain.id, self, RELEASE, node, amount, recipient, decision)),
        v,
        r,
        s,
    )
    assert amount > 0 and amount <= self.bonds[node], "amount exceeds the bond"
    self.executed[decision] = True
    self.bonds[node] -= amount
    log BondReleased(node=node, decision=decision, amount=amount, recipient=recipient)
    send(recipient, amount)


@external
def update_valset(
    nonce: uint256,
    validators: DynArray[address, MAX_VALIDATORS],
    powers: DynArray[uint256, MAX_VALIDATORS],
    unkeyed_power: uint256,
    v: DynArray[uint8, MAX_VALIDATORS],
    r: DynArray[bytes32, MAX_VALIDATORS],
    s: DynArray[bytes32, MAX_VALIDATORS],
):
    """Replace the validator set; signed by more than 2/3 of the power of the current one.
    `unkeyed_power` is the ledger power of validators with no key: it counts in the total."""
    assert nonce > self.valset_nonce, "stale validator set nonce"
    self._check_signatures(
        keccak256(
            abi_encode(DOMAIN, chain.id, self, VALSET, nonce, validators, powers, unkeyed_power)
        ),
        v,
        r,
        s,
    )
    self._set_valset(validators, powers, unkeyed_power)
    self.valset_nonce = nonce
    log ValsetUpdated(
        nonce=nonce, validators=validators, powers=powers, unkeyed_power=unkeyed_power
    )
