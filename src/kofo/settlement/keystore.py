"""Seeds encrypted at rest: scrypt (KDF) + AES-256-GCM, in a small versioned JSON file.

Chain-neutral on purpose: the Bitcoin wallet (BIP32 seed) and the Ethereum side store their
secret the same way. File format, version 2 (written today)::

    {"version": 2, "kdf": "scrypt", "n": 262144, "r": 8, "p": 1,
     "salt": "<hex>", "nonce": "<hex>", "ciphertext": "<hex>"}

Version 1 is the same with ``n = 32768`` and another AAD; it still opens, and
:func:`upgrade_file` rewrites it as version 2 (``kofo wallet upgrade``).

The KDF parameters travel with the file, so a file is also an input an attacker may have
written: loading refuses parameters below the floor of its version (a weak file is not
silently accepted) and above a ceiling (``n = 2**40`` would ask for 128 TiB and hang or kill
the node), before any key derivation runs. Tampering with accepted parameters only changes the
derived key, which the AES-GCM tag then refuses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kofo.errors import InvalidInput, KofoError, WalletError
from kofo.private_files import read_private_file, write_private_file

FORMAT_VERSION = 2
SCRYPT_N = 2**18
"""scrypt cost: geth's (and ethstore's) standard keystore setting, N=2^18, r=8, p=1 -- 256 MiB
and ~1 s per unlock. The scrypt paper's 2^14..2^15 "interactive" setting dates from 2009; a node
unlocks once at start, so the stronger setting is paid rarely and multiplies an offline guess's
cost by 8 over version 1."""
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True, slots=True)
class _Limits:
    aad: bytes
    min_n: int
    """The floor: a file of this version was never written weaker."""


_VERSIONS = {
    1: _Limits(b"kofo-keystore-v1", 2**15),
    2: _Limits(b"kofo-keystore-v2", 2**17),
}
MIN_N = _VERSIONS[FORMAT_VERSION].min_n
"""Today's version's floor (2^17, 128 MiB, ~0.5 s): what the tests and ``make demo`` write their
throwaway key files with (``n=MIN_N``); an operator's wallet always gets :data:`SCRYPT_N`."""
MAX_N = 2**20
"""The ceiling: 1 GiB of memory at r=8 (4x the standard), a few seconds. Anything above is a
file meant to exhaust the node, not a key store we wrote."""
MAX_R = 16
MAX_P = 4
MAX_FILE_BYTES = 4096
"""A key store is ~400 bytes; a larger file is refused before it is parsed."""
MAX_SECRET_BYTES = 64  # BIP32 seeds are 16..64 bytes
_SALT_SIZE = 16
_NONCE_SIZE = 12  # AES-GCM's standard 96-bit nonce
_TAG_SIZE = 16


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _encrypt(secret: bytes, passphrase: str, n: int) -> tuple[dict[str, Any], bytes]:
    if not isinstance(secret, bytes) or not 0 < len(secret) <= MAX_SECRET_BYTES:
        raise InvalidInput(f"secret must be 1..{MAX_SECRET_BYTES} bytes")
    if not passphrase:
        raise InvalidInput("passphrase must not be empty")
    _check_params(FORMAT_VERSION, n, SCRYPT_R, SCRYPT_P)
    salt = os.urandom(_SALT_SIZE)
    nonce = os.urandom(_NONCE_SIZE)
    key = _derive(passphrase, salt, n, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(key).encrypt(nonce, secret, _VERSIONS[FORMAT_VERSION].aad)
    document = {
        "version": FORMAT_VERSION,
        "kdf": "scrypt",
        "n": n,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "ciphertext": ciphertext.hex(),
    }
    return document, key


def encrypt_secret(secret: bytes, passphrase: str, *, n: int = SCRYPT_N) -> dict[str, Any]:
    return _encrypt(secret, passphrase, n)[0]


def _check_params(version: int, n: int, r: int, p: int) -> None:
    floor = _VERSIONS[version].min_n
    if n < floor or n > MAX_N or n & (n - 1):
        raise WalletError(
            f"key store scrypt n={n} is refused: version {version} needs a power of two in "
            f"[{floor}, {MAX_N}]"
        )
    if not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise WalletError(
            f"key store scrypt r={r}, p={p} is refused: r must be in [1, {MAX_R}], "
            f"p in [1, {MAX_P}]"
        )


def _int_field(document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WalletError(f"key store field {name!r} must be an integer")
    return value


def _hex_field(document: dict[str, Any], name: str, low: int, high: int) -> bytes:
    value = document.get(name)
    if not isinstance(value, str) or len(value) > 2 * high:
        raise WalletError(f"key store field {name!r} must be hex of {low}..{high} bytes")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise WalletError(f"key store field {name!r} is not hex") from None
    if not low <= len(raw) <= high:
        raise WalletError(f"key store field {name!r} must be {low}..{high} bytes, got {len(raw)}")
    return raw


def format_version(document: dict[str, Any]) -> int:
    """The document's version, refusing unknown ones and other KDFs."""
    version = document.get("version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or version not in _VERSIONS
        or document.get("kdf") != "scrypt"
    ):
        raise WalletError(
            f"key store version {version!r} / kdf {document.get('kdf')!r} is not supported "
            f"(versions {sorted(_VERSIONS)}, scrypt)"
        )
    return version


def decrypt_secret(document: dict[str, Any], passphrase: str) -> bytes:
    """The secret in ``document``. Every field is checked (types, sizes, the KDF's floor and
    ceiling) before the KDF runs."""
    version = format_version(document)
    n, r, p = (_int_field(document, f) for f in ("n", "r", "p"))
    _check_params(version, n, r, p)
    salt = _hex_field(document, "salt", _SALT_SIZE, 64)
    nonce = _hex_field(document, "nonce", _NONCE_SIZE, _NONCE_SIZE)
    ciphertext = _hex_field(document, "ciphertext", 1 + _TAG_SIZE, MAX_SECRET_BYTES + _TAG_SIZE)
    key = _derive(passphrase, salt, n, r, p)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _VERSIONS[version].aad)
    except InvalidTag:
        raise WalletError("wrong passphrase or corrupted key store") from None


def needs_upgrade(document: dict[str, Any]) -> bool:
    """Whether the file was written with an older version or weaker parameters than today's."""
    return format_version(document) < FORMAT_VERSION or _int_field(document, "n") < SCRYPT_N


def save_secret(path: str | Path, secret: bytes, passphrase: str, *, n: int = SCRYPT_N) -> None:
    """Write the encrypted ``secret`` to ``path`` (mode 0600), whole or not at all.

    The bytes read back from the temp file must decrypt to ``secret`` (with the key just
    derived, no second KDF run) before they replace ``path``; a short or failed write raises
    and leaves any previous file as it was (see :func:`kofo.private_files.write_private_file`).
    """
    document, key = _encrypt(secret, passphrase, n)
    data = json.dumps(document, indent=1).encode()
    aad = _VERSIONS[FORMAT_VERSION].aad

    def verify(back: bytes) -> None:
        try:
            doc = json.loads(back)
            ok = AESGCM(key).decrypt(
                bytes.fromhex(doc["nonce"]), bytes.fromhex(doc["ciphertext"]), aad
            )
        except (ValueError, KeyError, TypeError, InvalidTag):
            ok = b""
        if ok != secret:
            raise WalletError(f"the key store written to {path} does not decrypt; not replaced")

    write_private_file(Path(path), data, verify=verify)


def read_document(path: str | Path) -> dict[str, Any]:
    """The parsed key store at ``path`` (refused unless private, small and a JSON object)."""
    try:
        raw = read_private_file(Path(path), max_size=MAX_FILE_BYTES)
    except FileNotFoundError:
        raise WalletError(f"no key store at {path}") from None
    except KofoError as exc:
        raise WalletError(f"key store refused: {exc.args[0]}", code=exc.code) from None
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nesting meant to crash
        raise WalletError(f"key store {path} is not JSON") from None
    if not isinstance(document, dict):
        raise WalletError(f"key store {path} is not a JSON object")
    return document


def load_secret(path: str | Path, passphrase: str) -> bytes:
    return decrypt_secret(read_document(path), passphrase)


def upgrade_file(path: str | Path, passphrase: str) -> bool:
    """Rewrite an old or weak key store at today's version and cost; False if it already is.
    The old file stays until the new one is written whole and checked to decrypt."""
    document = read_document(path)
    if not needs_upgrade(document):
        return False
    secret = decrypt_secret(document, passphrase)
    save_secret(path, secret, passphrase)
    return True
