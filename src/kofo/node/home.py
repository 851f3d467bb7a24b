"""Creating a node home (`kofo init`) and holding it (the lock a running node takes).

See :mod:`kofo.node.config` for the layout. The home directory is 0700 and every file in it
0600: it holds the encrypted seed and, in the config, chain RPC passwords.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tomllib
from pathlib import Path
from typing import Any

from kofo.errors import ConfigError, KofoError
from kofo.node.api_tokens import ensure_tokens
from kofo.node.config import (
    CONFIG_FILE,
    JOURNAL_FILE,
    LOCK_FILE,
    WALLET_FILE,
    NodeConfig,
    parse_config,
    render_config,
)
from kofo.settlement.journal import Journal
from kofo.wallet import NodeWallet


class NodeAlreadyRunning(KofoError):
    """Another ``kofo node`` holds this home's lock."""

    code = "node_running"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) whole: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def init_home(
    home: Path,
    passphrase: str,
    *,
    name: str = "kofo",
    ledger_url: str = "http://127.0.0.1:26657",
    chains: dict[str, dict[str, Any]] | None = None,
    bond: dict[str, Any] | None = None,
    timing: dict[str, int] | None = None,
    force: bool = False,
    seed: bytes | None = None,
) -> tuple[NodeConfig, bool]:
    """Write a node home; returns its config and whether a new wallet was created.

    An existing home is refused unless ``force``; with ``force`` the config is rewritten and
    an existing wallet is kept (and must open with ``passphrase``): a wallet is never
    overwritten, its seed may hold funds. ``seed``: the new wallet's seed (restored from its
    words); a home that already holds a wallet is then refused."""
    home = home.expanduser().absolute()
    config_path, wallet_path = home / CONFIG_FILE, home / WALLET_FILE
    if home.exists() and not home.is_dir():
        raise ConfigError(f"{home} exists and is not a directory")
    if home.exists() and any(home.iterdir()) and not force:
        raise ConfigError(
            f"{home} is not empty (a node home already?); pass --force to rewrite its "
            "config.toml (an existing wallet is kept, never overwritten)"
        )
    if seed is not None and (wallet_path.exists() or wallet_path.is_symlink()):
        raise ConfigError(
            f"{wallet_path} already holds a wallet; restore into a new home (a wallet is "
            "never overwritten)"
        )
    text = render_config(name=name, ledger_url=ledger_url, chains=chains, bond=bond, timing=timing)
    config = parse_config(home, tomllib.loads(text), config_path)  # what we write must load
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    if wallet_path.exists():
        NodeWallet.open(wallet_path, passphrase)  # the kept wallet must be this operator's
        created = False
    else:
        NodeWallet.create(wallet_path, passphrase, seed=seed)
        created = True
    os.chmod(wallet_path, 0o600)
    _write_private(config_path, text)
    old_umask = os.umask(0o077)  # SQLite's journal/WAL files inherit it
    try:
        Journal(home / JOURNAL_FILE).close()
    finally:
        os.umask(old_umask)
    os.chmod(home / JOURNAL_FILE, 0o600)
    ensure_tokens(home)  # the API's bearer tokens; existing ones are kept
    return config, created


class HomeLock:
    """An exclusive ``flock`` on ``HOME/node.lock`` for the life of a node process.

    The kernel drops the lock when the process dies however it dies (SIGKILL included), so a
    stale file never blocks a restart; the PID inside is only for the message."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> HomeLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise NodeAlreadyRunning(
                f"another kofo node (PID {holder}) is running on {self.path.parent}; "
                "stop it first, or use another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HomeLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
