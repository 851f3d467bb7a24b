"""Bonds as collateral: the ledger side of contracts/BondVault.vy.

A node's bond is ETH it locked in the bond vault under its node id. The ledger never takes a
node's word for it: validators attest the vault's balance per node through their vote
extensions (the same path as leg outcomes, see :mod:`kofo.clearance.attest`), and importance
counts only that attested amount, minus slashes decided but not yet executed on the vault.

Slashing (and release) is a **ledger decision**: the ledger records it in its state
(``decision/<id>``, query ``/decision``); each validator signs the vault digest of the decision
with the secp256k1 key it registered on the ledger (``clearance.register_validator_key``); a
relayer submits the decision with signatures of more than two thirds of the voting power to the
vault, which checks them against the validator set it tracks (updated by the same signatures).

The digests here are byte-for-byte the vault's ``keccak256(abi_encode(DOMAIN, chain.id, vault,
tag, ...))``; :func:`sign_digest` makes a low-s recoverable signature as the vault requires.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import coincurve
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from kofo.wire.envelope import BadMessage

DOMAIN = keccak(b"KOFO/bond-vault/v1")
SLASH = keccak(b"slash")
RELEASE = keccak(b"release")
VALSET = keccak(b"valset")

VALKEY_DOMAIN = b"KOFO/validator-key/v1\x00"
"""Both proofs of possession in ``clearance.register_validator_key`` sign this prefix plus the
other key: the consensus key vouches for the Ethereum address, the secp256k1 key for the
consensus key."""

DECISION_DOMAIN = b"KOFO/decision/v1\x00"


@dataclass(frozen=True, slots=True)
class Vault:
    """Where the bond vault lives: the EVM chain id and the contract's 20-byte address."""

    chain_id: int
    address: bytes

    @classmethod
    def parse(cls, chain_id: int, address: str) -> Vault | None:
        if not address:
            return None
        raw = bytes.fromhex(address.removeprefix("0x"))
        if len(raw) != 20:
            raise BadMessage(f"bond vault address must be 20 bytes, got {address!r}")
        return cls(chain_id, raw)


def _addr(a: bytes) -> str:
    return "0x" + a.hex()


def _payout_digest(
    kind: bytes, vault: Vault, node: bytes, amount: int, recipient: bytes, decision: bytes
) -> bytes:
    """The digest validators sign for a payout of ``kind`` (SLASH or RELEASE) out of ``node``'s
    bond: the same encoding the vault rebuilds on chain."""
    return keccak(
        abi_encode(
            [
                "bytes32",
                "uint256",
                "address",
                "bytes32",
                "bytes32",
                "uint256",
                "address",
                "bytes32",
            ],
            [
                DOMAIN,
                vault.chain_id,
                _addr(vault.address),
                kind,
                node,
                amount,
                _addr(recipient),
                decision,
            ],
        )
    )


def slash_digest(
    vault: Vault, node: bytes, amount: int, recipient: bytes, decision: bytes
) -> bytes:
    return _payout_digest(SLASH, vault, node, amount, recipient, decision)


def release_digest(
    vault: Vault, node: bytes, amount: int, recipient: bytes, decision: bytes
) -> bytes:
    return _payout_digest(RELEASE, vault, node, amount, recipient, decision)


def valset_digest(
    vault: Vault,
    nonce: int,
    validators: Sequence[bytes],
    powers: Sequence[int],
    unkeyed_power: int = 0,
) -> bytes:
    return keccak(
        abi_encode(
            [
                "bytes32",
                "uint256",
                "address",
                "bytes32",
                "uint256",
                "address[]",
                "uint256[]",
                "uint256",
            ],
            [
                DOMAIN,
                vault.chain_id,
                _addr(vault.address),
                VALSET,
                nonce,
                [_addr(v) for v in validators],
                list(powers),
                unkeyed_power,
            ],
        )
    )


def eth_address(public_key: coincurve.PublicKey) -> bytes:
    return keccak(public_key.format(compressed=False)[1:])[12:]


def sign_digest(private_key: bytes, digest: bytes) -> bytes:
    """65 bytes ``r || s || v`` (v = 27 or 28) over a 32-byte digest; libsecp256k1 signs low-s."""
    sig = coincurve.PrivateKey(private_key).sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([27 + sig[64]])


def recover_address(signature: bytes, digest: bytes) -> bytes | None:
    """The Ethereum address that made ``signature`` over ``digest``; None if it does not
    recover or is high-s (the vault refuses those too)."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        raise BadMessage("a secp256k1 signature is 65 bytes r || s || v with v in {27, 28}")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < s <= SECP256K1_N // 2:
        return None
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([signature[64] - 27]), digest, hasher=None
        )
    except Exception:  # coincurve raises ValueError / its own errors for invalid points
        return None
    return eth_address(pub)


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def signature_slots(
    validators: Sequence[bytes], signatures: Mapping[bytes, bytes]
) -> tuple[list[int], list[bytes], list[bytes]]:
    """The vault's aligned ``(v[], r[], s[])`` for its validator list from ``signatures`` by
    Ethereum address (v = 0 where a validator did not sign)."""
    vs, rs, ss = [], [], []
    for val in validators:
        sig = signatures.get(val)
        if sig is None:
            vs.append(0)
            rs.append(bytes(32))
            ss.append(bytes(32))
        else:
            vs.append(sig[64])
            rs.append(sig[:32])
            ss.append(sig[32:64])
    return vs, rs, ss


def decision_id(evidence_id: bytes) -> bytes:
    """A slash decision's 32-byte id, derived from the evidence that caused it (one each)."""
    return hashlib.sha256(DECISION_DOMAIN + evidence_id).digest()


def valkey_consensus_message(eth_addr: bytes, node: bytes) -> bytes:
    """What the consensus key signs: the Ethereum address and the node whose bond is its power
    (so nobody else can bind a validator to another node)."""
    return VALKEY_DOMAIN + eth_addr + node


def valkey_eth_digest(consensus_key: bytes) -> bytes:
    return keccak(VALKEY_DOMAIN + consensus_key)
