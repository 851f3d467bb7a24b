"""Registration on the ledger (issue 14 item 4): once per node, idempotent across restarts.

The node's ledger identity is its Ed25519 node key (derived from the wallet seed); its fee
balances are encrypted under its Paillier key, whose private half is kept in the home
(``paillier.json`` + ``paillier.key``: scrypt + AES-256-GCM under the wallet passphrase,
0600) and never leaves it.

``ensure_registered`` asks the ledger first (``/node``): a registered node sends nothing. Else
the signed ``register_node`` tx is written to the home (``register.tx``, 0600) **before** it is
broadcast, and a restart re-sends those same bytes (``LedgerClient.commit`` looks the hash up
first), so one intent is never two transactions. A registration carries the seed's zero
proof, the certificate of the Paillier modulus and the registration's memory-hard work at the
difficulty the ledger's params set (``/params``: ``registration_work_bits``; ~10 s of one core
at the default, paid once: the journaled tx keeps it). The bond is 0: bonds are not declared
but attested (validators observe the bond vault on its chain, docs/clearance.md); a maker's
bond is locked in the vault by :func:`kofo.node.bonds.ensure_bond`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from phe import paillier

from kofo.clearance import admission, privacy
from kofo.errors import KofoError
from kofo.node.ledger_client import LedgerClient, LedgerRefused
from kofo.private_files import read_private_file, write_private_file
from kofo.settlement import keystore
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import public_key_bytes
from kofo.wire.orders import RegisterNode, sign_tx

log = logging.getLogger("kofo.node.registration")

PAILLIER_FILE = "paillier.json"
PAILLIER_BLOB = "paillier.key"
_AAD = b"kofo paillier key v1"
REGISTER_TX_FILE = "register.tx"
MAX_TX_BYTES = 1 << 20


class RegistrationError(KofoError):
    code = "registration_failed"


def load_or_create_paillier(
    home: Path, passphrase: str, *, bits: int = 2048, scrypt_n: int = keystore.SCRYPT_N
) -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    """The node's Paillier key pair, created once and kept encrypted in the home: a random
    32-byte file key in ``paillier.json`` (the wallet's key store format, under the
    passphrase) and the primes in ``paillier.key`` (AES-256-GCM under that key), both 0600."""
    key_path, blob_path = home / PAILLIER_FILE, home / PAILLIER_BLOB
    if key_path.exists() and blob_path.exists():
        file_key = keystore.load_secret(key_path, passphrase)
        blob = read_private_file(blob_path, max_size=MAX_TX_BYTES)
        try:
            plain = AESGCM(file_key).decrypt(blob[:12], blob[12:], _AAD)
        except InvalidTag:
            raise RegistrationError(f"{blob_path} does not decrypt with its key") from None
        raw = decode(plain)
        p, q = int.from_bytes(raw["p"], "big"), int.from_bytes(raw["q"], "big")
        pub = paillier.PaillierPublicKey(p * q)
        return pub, paillier.PaillierPrivateKey(pub, p, q)
    pub, priv = privacy.generate_keypair(bits)
    file_key = os.urandom(32)
    nonce = os.urandom(12)
    plain = encode({"p": _int_bytes(priv.p), "q": _int_bytes(priv.q)})
    write_private_file(blob_path, nonce + AESGCM(file_key).encrypt(nonce, plain, _AAD))
    keystore.save_secret(key_path, file_key, passphrase, n=scrypt_n)
    return pub, priv


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def registered(ledger: LedgerClient, node_id: bytes) -> dict[str, object] | None:
    """The ledger's record of ``node_id``, or None when it is not registered."""
    try:
        return dict(decode(ledger.abci_query("/node", encode(node_id))))
    except LedgerRefused as exc:
        if exc.code == "not_found" or "not registered" in exc.log:
            return None
        raise


def registration_body(
    node_id: bytes,
    paillier_priv: paillier.PaillierPrivateKey,
    addresses: Mapping[str, str],
    *,
    work_bits: int,
    prework_bits: int = 0,
) -> RegisterNode:
    """A complete ``register_node`` body: a fresh zero seed and its proof, the modulus
    certificate and the work, all bound to ``node_id``."""
    pub = paillier_priv.public_key
    seed, proof = privacy.zero_seed(pub, privacy.register_context(node_id))
    n_bytes = privacy.public_modulus(pub)
    return RegisterNode(
        addresses=dict(addresses),
        paillier_n=n_bytes,
        balance_seed=seed,
        bond=0,
        seed_proof=proof,
        modulus_proof=privacy.prove_modulus(paillier_priv, privacy.modulus_context(node_id)),
        pow_nonce=admission.solve_registration_work(node_id, n_bytes, work_bits, prework_bits),
    )


def ensure_registered(
    *,
    home: Path,
    ledger: LedgerClient,
    node_key: Ed25519PrivateKey,
    paillier_pub: paillier.PaillierPublicKey,
    paillier_priv: paillier.PaillierPrivateKey,
    addresses: Mapping[str, str],
    timeout: float = 30.0,
) -> int | None:
    """Register this node unless the ledger already knows it; returns the height of the
    registration this call committed, or None if there was nothing to do."""
    node_id = public_key_bytes(node_key)
    if registered(ledger, node_id) is not None:
        log.info("node %s is registered on the ledger", node_id.hex()[:16])
        return None
    path = home / REGISTER_TX_FILE
    if path.exists():  # an intent journaled by an earlier run: the same bytes again
        tx = read_private_file(path, max_size=MAX_TX_BYTES)
    else:
        params = dict(decode(ledger.abci_query("/params")))
        body = registration_body(
            node_id,
            paillier_priv,
            addresses,
            work_bits=int(params.get("registration_work_bits", 0)),
            prework_bits=int(params.get("registration_prework_bits", 0)),
        )
        tx = sign_tx(node_key, body)
        write_private_file(path, tx)
    try:
        included = ledger.commit(tx, timeout=timeout)
    except LedgerRefused as exc:
        if registered(ledger, node_id) is not None:  # registered meanwhile (same intent)
            return None
        path.unlink(missing_ok=True)  # a refused intent is dropped: the next start builds anew
        raise RegistrationError(f"the ledger refused this node's registration: {exc.log}") from exc
    log.info("node %s registered at height %d", node_id.hex()[:16], included.height)
    return included.height
