"""The node's wallet: one seed, encrypted at rest, from which every chain's keys derive.

Ethereum keys follow BIP44 (``m/44'/60'/0'/0/i``), Bitcoin-like chains BIP84
(``m/84'/<coin>'/0'/...``), so the same seed restores the same addresses in other wallets. The
seed file is the versioned scrypt + AES-256-GCM format of :mod:`kofo.settlement.keystore`.

The paper backup: the 32-byte seed written as 24 BIP39 English words, the seed being the
words' *entropy* (:func:`seed_to_words`, :func:`words_to_seed`; the 24th word carries the
BIP39 checksum). Every wallet, old ones included, has its words, and the words give back the
same seed: the same node id and addresses. They are not the BIP39 *seed* of the words (the
PBKDF2 of the sentence) that other BIP39 wallets derive from: typed into such a wallet they
give other keys; restore them with ``kofo init --restore`` (or ``kofo wallet init
--restore``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_account.signers.local import LocalAccount

from kofo.errors import KofoError, WalletError
from kofo.private_files import (
    check_private_dir,
    ensure_private_dir,
    read_private_file,
    write_private_file,
)
from kofo.settlement import keystore
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.wallet import HdWallet, KeyIndexFile
from kofo.settlement.chains.ethereum.keys import account_from_seed

SEED_BYTES = 32
"""256 bits: the strength of the keys derived from it (secp256k1 gives ~128-bit security, so
more seed adds nothing, less would be the weakest link)."""

PASSPHRASE_ENV = "KOFO_PASSPHRASE"

MNEMONIC_WORDS = 24
"""BIP39 words for :data:`SEED_BYTES` of entropy (256 bits + an 8-bit checksum, 11 bits a word)."""

log = logging.getLogger(__name__)


def seed_to_words(seed: bytes) -> str:
    """The seed's paper backup: 24 BIP39 English words whose entropy is ``seed``."""
    from mnemonic import Mnemonic

    if len(seed) != SEED_BYTES:
        raise WalletError(f"a seed of {len(seed)} bytes has no {MNEMONIC_WORDS}-word backup")
    return str(Mnemonic("english").to_mnemonic(seed))


def words_to_seed(words: str) -> bytes:
    """The seed a paper backup encodes (see the module doc). Raises :class:`WalletError`
    (``bad_mnemonic``) naming what is wrong, never the words themselves: a word count other
    than 24, the position of a word not in the English list, or a failed checksum."""
    from mnemonic import Mnemonic

    m = Mnemonic("english")
    given = Mnemonic.normalize_string(words).lower().split()
    if len(given) != MNEMONIC_WORDS:
        raise WalletError(
            f"a wallet backup has {MNEMONIC_WORDS} words, {len(given)} were given",
            code="bad_mnemonic",
        )
    known = set(m.wordlist)
    for position, word in enumerate(given, 1):
        if word not in known:
            raise WalletError(
                f"word {position} of the backup is not in the BIP39 English word list",
                code="bad_mnemonic",
            )
    try:
        seed = bytes(m.to_entropy(given))
    except ValueError:
        raise WalletError(
            "the backup's checksum does not match: a word is wrong or two are swapped",
            code="bad_mnemonic",
        ) from None
    return seed


@dataclass(frozen=True)
class NodeWallet:
    _seed: bytes

    def __repr__(self) -> str:  # the seed must never reach a log or a traceback
        return "NodeWallet(<seed hidden>)"

    @classmethod
    def create(
        cls,
        path: Path,
        passphrase: str,
        *,
        replace_passphrase: str | None = None,
        seed: bytes | None = None,
        scrypt_n: int = keystore.SCRYPT_N,
    ) -> NodeWallet:
        """A new seed (or ``seed``: one restored from its words, :func:`words_to_seed`),
        stored encrypted at ``path`` (directory 0700, file 0600).

        An existing wallet is never lost: it is refused, unless ``replace_passphrase`` (its
        passphrase) is given; it is then first copied to a backup next to it, and the backup
        must decrypt with that passphrase before the new wallet replaces it."""
        if len(passphrase) < 8:
            raise WalletError("the passphrase must have at least 8 characters")
        # The file is encrypted: a directory others may list is tolerated, one they may write
        # (replace the wallet, plant a symlink) is not.
        ensure_private_dir(path.parent, readable=True)
        backup: Path | None = None
        if path.exists() or path.is_symlink():
            if replace_passphrase is None:
                raise WalletError(f"a wallet already exists at {path}; refusing to overwrite it")
            backup = cls._backup(path, replace_passphrase)
        if seed is None:
            seed = os.urandom(SEED_BYTES)
        elif len(seed) != SEED_BYTES:
            raise WalletError(f"a wallet seed has {SEED_BYTES} bytes, not {len(seed)}")
        keystore.save_secret(path, seed, passphrase, n=scrypt_n)
        if backup is not None:
            log.warning("replaced the wallet at %s; the previous one is kept at %s", path, backup)
        return cls(seed)

    @staticmethod
    def _backup(path: Path, passphrase: str) -> Path:
        """Copy the wallet at ``path`` to a new ``<name>.<n>.bak`` and check the copy opens."""
        data = read_private_file(path, max_size=keystore.MAX_FILE_BYTES)
        keystore.decrypt_secret(keystore.read_document(path), passphrase)  # the original opens
        for n in range(1, 1000):
            backup = path.with_name(f"{path.name}.{n}.bak")
            if not backup.exists() and not backup.is_symlink():
                break
        else:
            raise WalletError(f"too many backups of {path}; move some away first")
        write_private_file(backup, data)
        keystore.load_secret(backup, passphrase)  # ... and so does its copy, read from disk
        return backup

    @classmethod
    def open(cls, path: Path, passphrase: str) -> NodeWallet:
        if not path.exists() and not path.is_symlink():
            raise WalletError(f"no wallet at {path}; create one with `kofo wallet init`")
        try:  # others able to write its directory could swap the wallet for theirs
            check_private_dir(path.parent, readable=True)
        except KofoError as exc:
            raise WalletError(exc.args[0], code=exc.code) from None
        document = keystore.read_document(path)
        wallet = cls(keystore.decrypt_secret(document, passphrase))
        if keystore.needs_upgrade(document):
            log.warning(
                "the wallet at %s uses an older, weaker encryption (key store version %s); "
                "run `kofo wallet upgrade` to rewrite it",
                path,
                document.get("version"),
            )
        return wallet

    @staticmethod
    def upgrade(path: Path, passphrase: str) -> bool:
        """Rewrite the wallet at ``path`` with today's key store version and KDF cost (the old
        file is replaced only once the new one is written whole and decrypts); False when it
        already is current."""
        return keystore.upgrade_file(path, passphrase)

    def mnemonic(self) -> str:
        """The 24 words of this wallet's seed (its paper backup): show them only to the
        operator who asked, never log them."""
        return seed_to_words(self._seed)

    def node_key(self) -> Ed25519PrivateKey:
        """The node's Ed25519 identity on the ledger and the network (HKDF-SHA256 of the seed,
        its own domain: no chain key derives the same bytes)."""
        raw = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"kofo node key v1"
        ).derive(self._seed)
        return Ed25519PrivateKey.from_private_bytes(raw)

    def file_key(self, purpose: str) -> bytes:
        """A 32-byte AES key for one of the home's private files (``purpose`` names it), HKDF-
        SHA256 of the seed in its own domain: the file is then as safe at rest as the wallet
        (the seed is under the passphrase's scrypt) without a second scrypt of its own."""
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"kofo file key v1: " + purpose.encode(),
        ).derive(self._seed)

    def eth_account(self, index: int = 0) -> LocalAccount:
        return account_from_seed(self._seed, index)

    def bitcoin(
        self, chain: str = "btc", network: str = "regtest", *, home: Path | None = None
    ) -> HdWallet:
        """The chain's keys. ``home`` (the node's home) keeps the per-swap key indexes in
        ``keys-<chain>-<network>.json`` there, so a restart never hands out a key twice; a node
        must pass it (without, keys are still found again, but may be reused)."""
        index = None if home is None else KeyIndexFile(home / f"keys-{chain}-{network}.json")
        return HdWallet(self._seed, chain_params(chain, network), index_file=index)
