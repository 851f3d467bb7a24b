"""Seeds encrypted at rest: scrypt (KDF) + AES-256-GCM, in a small versioned JSON file.

Chain-neutral on purpose: the Bitcoin wallet (BIP32 seed) and the Ethereum side store their
secret the same way. File format, version 1::

    {"version": 1, "kdf": "scrypt", "n": 32768, "r": 8, "p": 1,
     "salt": "<hex>", "nonce": "<hex>", "ciphertext": "<hex>"}

The KDF parameters travel with the file so they can be raised later without breaking old files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kofo.errors import InvalidInput, WalletError

FORMAT_VERSION = 1
SCRYPT_N = 2**15
"""scrypt cost: 32 MiB and ~0.1 s per unlock on a laptop -- the interactive setting the
scrypt paper recommends; a node unlocks once at start, so this is paid rarely."""
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_SIZE = 16
_NONCE_SIZE = 12  # AES-GCM's standard 96-bit nonce
_AAD = b"kofo-keystore-v1"  # binds the ciphertext to this format


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def encrypt_secret(secret: bytes, passphrase: str, *, n: int = SCRYPT_N) -> dict[str, Any]:
    if not isinstance(secret, bytes) or not secret:
        raise InvalidInput("secret must be non-empty bytes")
    if not passphrase:
        raise InvalidInput("passphrase must not be empty")
    salt = os.urandom(_SALT_SIZE)
    nonce = os.urandom(_NONCE_SIZE)
    key = _derive(passphrase, salt, n, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(key).encrypt(nonce, secret, _AAD)
    return {
        "version": FORMAT_VERSION,
        "kdf": "scrypt",
        "n": n,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "ciphertext": ciphertext.hex(),
    }


def decrypt_secret(document: dict[str, Any], passphrase: str) -> bytes:
    if document.get("version") != FORMAT_VERSION or document.get("kdf") != "scrypt":
        raise WalletError(
            f"key store version {document.get('version')!r} / kdf {document.get('kdf')!r} "
            f"is not supported (expected version {FORMAT_VERSION}, scrypt)"
        )
    try:
        salt = bytes.fromhex(document["salt"])
        nonce = bytes.fromhex(document["nonce"])
        ciphertext = bytes.fromhex(document["ciphertext"])
        key = _derive(passphrase, salt, int(document["n"]), int(document["r"]), int(document["p"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise WalletError(f"key store file is corrupted: {type(exc).__name__}") from None
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _AAD)
    except InvalidTag:
        raise WalletError("wrong passphrase or corrupted key store") from None


def save_secret(path: str | Path, secret: bytes, passphrase: str, *, n: int = SCRYPT_N) -> None:
    """Write the encrypted ``secret`` to ``path`` (mode 0600, atomically via a temp file)."""
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    data = json.dumps(encrypt_secret(secret, passphrase, n=n), indent=1).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def load_secret(path: str | Path, passphrase: str) -> bytes:
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WalletError(f"no key store at {path}") from None
    except json.JSONDecodeError:
        raise WalletError(f"key store {path} is not JSON") from None
    if not isinstance(document, dict):
        raise WalletError(f"key store {path} is not a JSON object")
    return decrypt_secret(document, passphrase)
