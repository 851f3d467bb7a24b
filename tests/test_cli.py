"""The ``kofo`` command on bad files and without a terminal: one ``error [code]`` line, no
traceback, and nothing written when it only reads (issue 19 item 5)."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from typer.testing import CliRunner

from kofo.cli import app
from kofo.settlement.journal import Journal
from kofo.settlement.swap import Role, State
from kofo.wallet import PASSPHRASE_ENV, NodeWallet
from tests.swap.test_wire_and_http import vector_terms

runner = CliRunner()


def _one_error_line(result, code: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error [{code}] "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"\xff\xfe\x00 not text", "wallet_error"),
        (b"{not json", "wallet_error"),
        (b'{"version": 1, "kdf": "scrypt", "salt": 5}', "wallet_error"),
        (None, "unsafe_permissions"),  # a directory where the file should be: not a regular file
    ],
    ids=["binary", "not-json", "corrupt-fields", "directory"],
)
def test_a_corrupt_or_unreadable_wallet_is_one_error_line(tmp_path, monkeypatch, content, code):
    monkeypatch.setenv(PASSPHRASE_ENV, "a long passphrase")
    path = tmp_path / "wallet.json"
    if content is None:
        path.mkdir(mode=0o700)
    else:
        path.write_bytes(content)
        path.chmod(0o600)  # private, as the node requires: the content is what is bad
    line = _one_error_line(runner.invoke(app, ["wallet", "show", "--path", str(path)]), code)
    assert str(path.name) in line or code == "wallet_error"


def test_without_a_terminal_or_kofo_passphrase_the_message_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    path = tmp_path / "wallet.json"
    NodeWallet.create(path, "a long passphrase")
    for args in (["wallet", "show", "--path", str(path)], ["wallet", "init", "--path", "x"]):
        line = _one_error_line(runner.invoke(app, args, input=""), "passphrase_required")
        assert PASSPHRASE_ENV in line


def test_swap_list_refuses_another_application_s_database_and_leaves_it_alone(tmp_path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE contacts (name TEXT)")
    db.execute("INSERT INTO contacts VALUES ('ada')")
    db.commit()
    db.close()
    path.chmod(0o600)  # private, as the node requires: what is wrong is whose database it is
    before = path.read_bytes()
    _one_error_line(runner.invoke(app, ["swap", "list", "--journal", str(path)]), "not_a_journal")
    assert path.read_bytes() == before  # no KOFO tables, no switch to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal/-shm either
    with pytest.raises(Exception, match="not a KOFO swap journal"):
        Journal(path)  # the node refuses it too, rather than adding its tables


@pytest.mark.parametrize(
    "content", [b"SQLite format 3\x00" + b"\x00" * 200, b"plain text, not a database" * 10]
)
def test_a_corrupt_journal_is_one_error_line(tmp_path, content):
    path = tmp_path / "swaps.sqlite"
    path.write_bytes(content)
    path.chmod(0o600)
    result = runner.invoke(app, ["swap", "list", "--journal", str(path)])
    line = result.output.strip()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert line.startswith(("error [journal_unreadable] ", "error [not_a_journal] ")), line
    assert path.read_bytes() == content


def test_listing_a_journal_reads_it_without_writing(tmp_path):
    path = tmp_path / "swaps.sqlite"
    terms = vector_terms()
    journal = Journal(path)
    journal.create_swap(Role.INITIATOR, terms, State.PROPOSED, preimage=bytes(32))
    journal.close()
    assert hashlib.sha256(bytes(32)).digest() == terms.payment_hash
    before = path.read_bytes()
    result = runner.invoke(app, ["swap", "list", "--journal", str(path)])
    assert result.exit_code == 0, result.output
    assert "proposed" in result.output
    result = runner.invoke(app, ["swap", "show", terms.swap_id.hex()[:8], "--journal", str(path)])
    assert result.exit_code == 0, result.output
    # The database is untouched; SQLite's WAL reader may leave its shared-memory index (-shm)
    # and an empty -wal beside it, but nothing is written into the journal.
    assert path.read_bytes() == before
    wal = tmp_path / "swaps.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def _commands(command, path):
    out = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        out += _commands(sub, [*path, name])
    return out


def test_help_shows_config_table_names_in_brackets():
    """Help texts name config tables (``[api] bind``, ``[ledger]``): rich markup read them as
    style tags and dropped them (``kofo init --help`` said "fills , and"). Every bracketed
    name in a command's or option's help must reach ``--help`` as written."""
    import re

    import typer

    checked = 0
    for path, command in _commands(typer.main.get_command(app), []):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        shown = " ".join(runner.invoke(app, [*path, "--help"], terminal_width=200).output.split())
        for text in texts:
            for name in re.findall(r"\\?\[([^\]\s]+)\]", text):
                checked += 1
                assert f"[{name}]" in shown, (path, name)
    assert checked >= 4  # [api] (every node command), [ledger], [chains.*], [bond]
