"""The node wallet: one encrypted seed, keys for every chain, never leaked."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from typer.testing import CliRunner

from kofo import private_files
from kofo.cli import app
from kofo.errors import KofoError, WalletError
from kofo.settlement import keystore
from kofo.wallet import NodeWallet


def test_a_wallet_reopens_to_the_same_keys_on_every_chain(tmp_path):
    path = tmp_path / "wallet.json"
    created = NodeWallet.create(path, "a long passphrase")
    opened = NodeWallet.open(path, "a long passphrase")
    assert opened.eth_account().address == created.eth_account().address
    assert opened.bitcoin("btc").identity.pubkey == created.bitcoin("btc").identity.pubkey
    assert opened.eth_account(1).address != opened.eth_account(0).address


def test_the_seed_file_holds_no_plaintext_key_material(tmp_path):
    path = tmp_path / "wallet.json"
    wallet = NodeWallet.create(path, "a long passphrase")
    text = path.read_text()
    assert wallet._seed.hex() not in text
    assert wallet.eth_account().key.hex()[2:] not in text
    assert "seed hidden" in repr(wallet)


def test_wrong_passphrase_short_passphrase_and_overwrite_are_refused(tmp_path):
    path = tmp_path / "wallet.json"
    with pytest.raises(WalletError, match="at least 8"):
        NodeWallet.create(path, "short")
    NodeWallet.create(path, "a long passphrase")
    with pytest.raises(WalletError, match="already exists"):
        NodeWallet.create(path, "a long passphrase")
    with pytest.raises(WalletError, match="wrong passphrase"):
        NodeWallet.open(path, "another passphrase")
    with pytest.raises(WalletError, match="no wallet"):
        NodeWallet.open(tmp_path / "missing.json", "a long passphrase")


def test_cli_init_then_show_prints_addresses_but_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("KOFO_PASSPHRASE", "a long passphrase")
    path = tmp_path / "w.json"
    runner = CliRunner()
    assert runner.invoke(app, ["wallet", "init", "--path", str(path)]).exit_code == 0
    shown = runner.invoke(app, ["wallet", "show", "--path", str(path)])
    assert shown.exit_code == 0
    wallet = NodeWallet.open(path, "a long passphrase")
    assert wallet.eth_account().address[:10] in shown.output
    assert wallet._seed.hex()[:16] not in shown.output
    again = runner.invoke(app, ["wallet", "init", "--path", str(path)])
    assert again.exit_code == 1
    assert "already exists" in again.output


# ---- writing a wallet: whole or not at all (issue 16, case 14) ------------------------------


def _seed_of(path, passphrase: str = "a long passphrase") -> bytes:
    return keystore.load_secret(path, passphrase)


def test_a_short_write_fails_the_save_and_the_old_wallet_survives(tmp_path, monkeypatch):
    path = tmp_path / "wallet.json"
    old = NodeWallet.create(path, "a long passphrase")
    real_write = os.write
    calls = []

    def disk_fills(fd: int, data) -> int:
        # The first write takes half (a short write), the next finds the disk full.
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(os, "write", disk_fills)
    with pytest.raises(KofoError, match="failed"):
        keystore.save_secret(path, os.urandom(32), "a long passphrase")
    monkeypatch.undo()
    assert _seed_of(path) == old._seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wallet.json"]  # no temp file left


def test_a_write_that_claims_more_than_it_wrote_is_caught_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "wallet.json"
    old = NodeWallet.create(path, "a long passphrase")
    real_write = os.write

    def lies(fd: int, data) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        return len(data)

    monkeypatch.setattr(os, "write", lies)
    with pytest.raises(KofoError, match="failed"):
        keystore.save_secret(path, os.urandom(32), "a long passphrase")
    monkeypatch.undo()
    assert _seed_of(path) == old._seed


def test_a_planted_temp_file_or_symlink_is_never_followed(tmp_path, monkeypatch):
    path = tmp_path / "wallet.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("another user's file")
    # Yesterday's fixed temp name, planted as a symlink to a file the attacker wants clobbered.
    (tmp_path / "wallet.json.tmp").symlink_to(victim)
    NodeWallet.create(path, "a long passphrase")
    assert victim.read_text() == "another user's file"
    # Even a temp name guessed right is refused (O_EXCL | O_NOFOLLOW), not followed.
    monkeypatch.setattr(private_files.secrets, "token_hex", lambda _n: "guessed")
    (tmp_path / ".wallet.json.guessed.tmp").symlink_to(victim)
    with pytest.raises(KofoError, match="temp file"):
        keystore.save_secret(path, os.urandom(32), "a long passphrase")
    assert victim.read_text() == "another user's file"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_rename_is_made_durable_by_syncing_the_directory(tmp_path, monkeypatch):
    synced: list[bool] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    keystore.save_secret(tmp_path / "seed.json", os.urandom(32), "a long passphrase")
    assert synced[-1] is True  # the directory, after the rename
    assert False in synced  # and the file itself before it


def test_init_over_a_wallet_keeps_a_backup_that_opens_or_refuses(tmp_path):
    path = tmp_path / "wallet.json"
    old = NodeWallet.create(path, "a long passphrase")
    with pytest.raises(WalletError, match="already exists"):
        NodeWallet.create(path, "new passphrase!")
    with pytest.raises(WalletError, match="wrong passphrase"):
        NodeWallet.create(path, "new passphrase!", replace_passphrase="not the old one")
    assert _seed_of(path) == old._seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wallet.json"]
    new = NodeWallet.create(path, "new passphrase!", replace_passphrase="a long passphrase")
    assert _seed_of(path, "new passphrase!") == new._seed
    assert _seed_of(tmp_path / "wallet.json.1.bak") == old._seed


# ---- the key store's KDF: today's cost, a floor and a ceiling (issue 16, case 17) ------------


def _document(path) -> dict:
    return json.loads(path.read_text())


def test_a_new_key_store_uses_the_standard_scrypt_keystore_cost(tmp_path):
    path = tmp_path / "wallet.json"
    NodeWallet.create(path, "a long passphrase")
    doc = _document(path)
    assert doc["version"] == 2
    assert (doc["n"], doc["r"], doc["p"]) == (2**18, 8, 1)  # geth's StandardScryptN/R/P


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("n", 2**40, "scrypt n="),  # would ask for 128 TiB: refused before any derivation
        ("n", 2**10, "scrypt n="),  # weaker than any version-2 file we wrote
        ("n", 3 * 2**17, "scrypt n="),  # not a power of two
        ("r", 2**20, "scrypt r="),
        ("p", 2**20, "scrypt r="),
        ("n", "262144", "'n' must be an integer"),
        ("salt", "ab" * 100, "'salt'"),
    ],
)
def test_a_malicious_key_store_is_refused_fast(tmp_path, field, value, reason):
    path = tmp_path / "wallet.json"
    doc = {"version": 2, "kdf": "scrypt", "n": 2**18, "r": 8, "p": 1}
    doc |= {"salt": "00" * 16, "nonce": "00" * 12, "ciphertext": "00" * 48, field: value}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, json.dumps(doc).encode())
    os.close(fd)
    # Refused before the KDF runs (the timeout marker bounds a hang on the old code).
    with pytest.raises(WalletError, match=reason):
        NodeWallet.open(path, "a long passphrase")


@pytest.mark.parametrize(("size", "reason"), [(4000, "not JSON"), (100_000, "bytes")])
def test_a_huge_or_deeply_nested_key_store_is_refused_before_parsing(tmp_path, size, reason):
    # One million "[" crash the old reader's JSON parser (a stack overflow kills the process).
    path = tmp_path / "wallet.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"[" * size)
    os.close(fd)
    with pytest.raises(WalletError, match=reason):
        NodeWallet.open(path, "a long passphrase")


def _version_1_file(path, seed: bytes, passphrase: str) -> None:
    """A wallet as the first release wrote it: scrypt N=2^15, AAD kofo-keystore-v1."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())
    doc = {
        "version": 1,
        "kdf": "scrypt",
        "n": 2**15,
        "r": 8,
        "p": 1,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "ciphertext": AESGCM(key).encrypt(nonce, seed, b"kofo-keystore-v1").hex(),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, json.dumps(doc).encode())
    os.close(fd)


def test_an_old_wallet_still_opens_and_upgrades_to_the_same_seed(tmp_path, monkeypatch):
    path = tmp_path / "wallet.json"
    seed = os.urandom(32)
    _version_1_file(path, seed, "a long passphrase")
    assert NodeWallet.open(path, "a long passphrase")._seed == seed
    monkeypatch.setenv("KOFO_PASSPHRASE", "a long passphrase")
    upgraded = CliRunner().invoke(app, ["wallet", "upgrade", "--path", str(path)])
    assert upgraded.exit_code == 0, upgraded.output
    assert _document(path)["version"] == 2 and _document(path)["n"] == 2**18
    assert NodeWallet.open(path, "a long passphrase")._seed == seed
    assert NodeWallet.upgrade(path, "a long passphrase") is False  # already current


# ---- a wallet only its owner can read (issue 16, case 15) ------------------------------------


def test_the_wallet_is_created_private_and_refused_when_others_can_read_it(tmp_path):
    home = tmp_path / "home" / ".kofo"
    path = home / "wallet.json"
    NodeWallet.create(path, "a long passphrase")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(WalletError, match=r"chmod 600"):
        NodeWallet.open(path, "a long passphrase")
    os.chmod(path, 0o600)
    os.chmod(home, 0o777)
    with pytest.raises(KofoError, match="chmod 700"):
        NodeWallet.create(home / "other.json", "a long passphrase")
    with pytest.raises(WalletError, match="chmod 700"):  # others could swap the wallet
        NodeWallet.open(path, "a long passphrase")


def test_the_node_wallet_keeps_bitcoin_key_indexes_in_its_home(tmp_path):
    path = tmp_path / "wallet.json"
    wallet = NodeWallet.create(path, "a long passphrase")
    given = wallet.bitcoin("btc", home=tmp_path).next_key(2).pubkey
    again = wallet.bitcoin("btc", home=tmp_path).next_key(2).pubkey
    assert given != again
    assert (tmp_path / "keys-btc-regtest.json").stat().st_mode & 0o077 == 0
