"""The node wallet: one encrypted seed, keys for every chain, never leaked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kofo.cli import app
from kofo.errors import WalletError
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
