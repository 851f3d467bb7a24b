"""The journal holds live swap secrets: it, its SQLite side files and its directory are created
private and refused at start when other local users could read them (issue 16, case 15)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kofo.errors import ConfigError
from kofo.settlement.chain import SignedTx, TxKind
from kofo.settlement.journal import Journal

SWAP = b"\x02" * 32


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_something(journal: Journal) -> None:
    journal.store_txs(SWAP, TxKind.LOCK, [SignedTx("btc", TxKind.LOCK, "ab" * 32, b"\x01" * 50)])


@pytest.fixture
def open_umask():
    """The loosest umask a user could run the node with: nothing is masked."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_the_journal_its_wal_and_shm_and_its_home_are_created_private(tmp_path, open_umask):
    home = tmp_path / "node" / "home"
    path = home / "swaps.sqlite"
    journal = Journal(path)
    _write_something(journal)
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    assert wal.exists() and shm.exists()
    assert {p.name: _mode(p) for p in (path, wal, shm)} == {
        "swaps.sqlite": 0o600,
        "swaps.sqlite-wal": 0o600,
        "swaps.sqlite-shm": 0o600,
    }
    assert _mode(home) == 0o700 and _mode(home.parent) == 0o700
    journal.close()


@pytest.mark.parametrize("which", ["", "-wal", "-shm"])
def test_a_journal_file_others_can_read_is_refused_at_start_naming_it_and_the_fix(tmp_path, which):
    path = tmp_path / "swaps.sqlite"
    journal = Journal(path)
    _write_something(journal)
    # Side files outlive an unclean stop (SIGKILL); here they are made to stay.
    target = Path(f"{path}{which}")
    if not target.exists():
        target.touch(mode=0o600)
    os.chmod(target, 0o644)
    with pytest.raises(ConfigError, match=rf"{target.name}.*chmod 600 {target}") as caught:
        Journal(path)
    assert caught.value.code == "unsafe_permissions"
    journal.close()


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_journal_in_a_directory_others_can_write_is_refused(tmp_path, mode):
    home = tmp_path / "shared"
    home.mkdir()
    os.chmod(home, mode)
    with pytest.raises(ConfigError, match=f"chmod 700 {home}"):
        Journal(home / "swaps.sqlite")
    assert not (home / "swaps.sqlite").exists()


def test_a_symlinked_journal_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere.sqlite"
    Journal(elsewhere).close()
    (tmp_path / "swaps.sqlite").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not a regular file"):
        Journal(tmp_path / "swaps.sqlite")
