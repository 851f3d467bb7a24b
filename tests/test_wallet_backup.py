"""The wallet's paper backup (issue 15, item 4): 24 BIP39 words that are the seed itself, shown
once at creation or on request, restored from stdin or a prompt (never argv); and `kofo wallet
show` printing every address whole at 80 columns."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kofo.cli import app
from kofo.errors import WalletError
from kofo.node.config import WALLET_FILE
from kofo.wallet import NodeWallet, seed_to_words, words_to_seed

PASS = "a long passphrase"


def _same_keys(a: NodeWallet, b: NodeWallet) -> None:
    assert a.node_key().public_key().public_bytes_raw() == (
        b.node_key().public_key().public_bytes_raw()
    )
    assert a.eth_account().address == b.eth_account().address
    for chain in ("btc", "ltc"):
        assert a.bitcoin(chain).address() == b.bitcoin(chain).address()


def _words(output: str) -> str:
    """The numbered words printed by the CLI, in order."""
    found = []
    for line in output.splitlines():
        parts = line.split()
        if parts and parts[0].endswith(".") and parts[0][:-1].isdigit():
            found += [parts[i + 1] for i in range(0, len(parts), 2)]
    return " ".join(found)


def test_the_words_are_the_seed_and_give_it_back():
    seed = bytes(range(32))
    words = seed_to_words(seed)
    assert len(words.split()) == 24
    assert words_to_seed(words) == seed
    assert words_to_seed("  " + words.upper().replace(" ", "\n  ") + "\n") == seed


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda w: w[:-1], "24 words, 23 were given"),
        (lambda w: [*w[:3], "notaword", *w[4:]], "word 4 of the backup is not in"),
        (lambda w: w[1:2] + w[0:1] + w[2:], "checksum"),
    ],
)
def test_a_wrong_backup_is_refused_naming_what_is_wrong_but_never_a_word(change, why):
    words = seed_to_words(os.urandom(32)).split()
    bad = change(list(words))
    if bad == words:  # the two swapped words were equal: nothing to refuse
        return
    with pytest.raises(WalletError) as refused:
        words_to_seed(" ".join(bad))
    assert refused.value.code == "bad_mnemonic"
    assert why in str(refused.value)
    assert not any(w in str(refused.value).split() for w in bad if len(w) > 3)


def test_an_existing_wallet_shows_its_words_and_they_restore_the_same_wallet(tmp_path, monkeypatch):
    monkeypatch.setenv("KOFO_PASSPHRASE", PASS)
    old = NodeWallet.create(tmp_path / "old.json", PASS)  # made as before the words existed
    runner = CliRunner()
    shown = runner.invoke(app, ["wallet", "mnemonic", "--path", str(tmp_path / "old.json")])
    assert shown.exit_code == 0, shown.output
    words = _words(shown.output)
    assert words == old.mnemonic() and len(words.split()) == 24
    restored_path = tmp_path / "restored.json"
    restored = runner.invoke(
        app, ["wallet", "init", "--restore", "--path", str(restored_path)], input=words + "\n"
    )
    assert restored.exit_code == 0, restored.output
    assert words not in restored.output
    _same_keys(old, NodeWallet.open(restored_path, PASS))


def test_kofo_init_shows_the_words_once_and_init_restore_gives_the_same_node(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("KOFO_PASSPHRASE", PASS)
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    first = runner.invoke(app, ["init", "--home", str(tmp_path / "a"), "--show-mnemonic"])
    assert first.exit_code == 0, first.output
    words = _words(first.output)
    assert len(words.split()) == 24
    original = NodeWallet.open(tmp_path / "a" / WALLET_FILE, PASS)
    assert words == original.mnemonic()
    assert not any(w in caplog.text for w in words.split() if len(w) > 4)  # never logged
    # Without the flag (and no terminal to ask on), the words are not printed.
    quiet = runner.invoke(app, ["init", "--home", str(tmp_path / "q")])
    assert quiet.exit_code == 0, quiet.output
    assert "kofo wallet mnemonic" in quiet.output and _words(quiet.output) == ""
    again = runner.invoke(app, ["init", "--home", str(tmp_path / "b"), "--restore"], input=words)
    assert again.exit_code == 0, again.output
    assert _words(again.output) == ""
    _same_keys(original, NodeWallet.open(tmp_path / "b" / WALLET_FILE, PASS))
    # A home that holds a wallet is never restored over.
    over = runner.invoke(
        app, ["init", "--home", str(tmp_path / "a"), "--force", "--restore"], input=words
    )
    assert over.exit_code == 1 and "already holds a wallet" in over.output
    monkeypatch.delenv("KOFO_PASSPHRASE")
    unasked = runner.invoke(app, ["init", "--home", str(tmp_path / "c"), "--restore"], input=words)
    assert unasked.exit_code == 1 and "passphrase_required" in unasked.output
    monkeypatch.setenv("KOFO_PASSPHRASE", PASS)
    wrong = runner.invoke(app, ["init", "--home", str(tmp_path / "c"), "--restore"], input="a b")
    assert wrong.exit_code == 1 and "bad_mnemonic" in wrong.output
    assert not (tmp_path / "c" / WALLET_FILE).exists()


@pytest.mark.timeout(120)
def test_wallet_show_prints_every_address_whole_at_80_columns(tmp_path):
    path = tmp_path / "w.json"
    wallet = NodeWallet.create(path, PASS)
    env = {**os.environ, "KOFO_PASSPHRASE": PASS, "COLUMNS": "80", "LINES": "24"}
    command = [sys.executable, "-c", "from kofo.cli import app; app()"]
    shown = subprocess.run(
        [*command, "wallet", "show", "--path", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert wallet.eth_account().address in out  # old: a table cell cut at 80 columns
    for chain in ("btc", "ltc"):
        hd = wallet.bitcoin(chain)
        assert hd.address() in out
        assert hd.identity.pubkey.hex() in out
