"""Files only this user may read: the wallet, the swap journal, the node's home.

A live swap's preimage sits in the journal (and in SQLite's ``-wal`` until a checkpoint), the
seed in the wallet file: another local user who can read either can take the swap's funds or
the wallet's. So, as ssh does with its keys:

* everything is *created* private -- directories 0700, files 0600, the mode given at creation
  (``os.open(..., 0o600)``), never set after the data is in;
* everything is *checked* before it is used: a file that group or other users can reach, a
  directory they can write (or, where asked, enter), anything another user owns, is refused
  with an error naming the path and the fix (the secret may already have been read: the
  operator must decide, not the node);
* a file is replaced whole or not at all (:func:`write_private_file`): a unique temp name opened
  with ``O_EXCL | O_NOFOLLOW`` (a planted file or symlink is never followed), every byte written
  and read back, fsynced, renamed over the target, and the directory fsynced so the rename
  survives a power loss.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from kofo.errors import ConfigError, KofoError

__all__ = [
    "check_private_dir",
    "check_private_file",
    "ensure_private_dir",
    "fsync_dir",
    "read_private_file",
    "write_private_file",
]

UNSAFE = "unsafe_permissions"
"""Error code of every refusal here."""

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _owner_ok(st: os.stat_result) -> bool:
    # root may own a user's files (a home made by an installer); anyone else may not.
    return st.st_uid in (os.geteuid(), 0)


def check_private_dir(path: Path, *, readable: bool = False) -> None:
    """Refuse a directory that group/other can enter, list or write, or another user owns.
    ``readable``: group/other may list and enter it but never write (ssh's rule for the
    directory of an encrypted key: nobody else can replace or plant a file in it)."""
    try:
        st = os.stat(path)  # a symlinked home is fine; what it points to must be private
    except FileNotFoundError:
        raise ConfigError(f"directory {path} does not exist", code=UNSAFE) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory", code=UNSAFE)
    if not _owner_ok(st):
        raise ConfigError(
            f"directory {path} is owned by uid {st.st_uid}, not by this user "
            f"(uid {os.geteuid()}): another user controls what is in it; use a directory of "
            "your own",
            code=UNSAFE,
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (0o022 if readable else 0o077):
        what = "writable" if mode & 0o022 else "accessible"
        raise ConfigError(
            f"directory {path} is {what} by group/other users (mode {mode:04o}); it holds "
            f"swap secrets and keys: run `chmod 700 {path}`",
            code=UNSAFE,
        )


def check_private_file(path: Path) -> None:
    """Refuse a file that group/other can read or write, another user owns, or that is not a
    regular file (a symlink is refused: it may point anywhere). A missing file passes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    _check_file_stat(path, st)


def _check_file_stat(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"{path} is not a regular file (a symlink or special file); refusing to use it",
            code=UNSAFE,
        )
    if not _owner_ok(st):
        raise ConfigError(
            f"file {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})",
            code=UNSAFE,
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"file {path} is accessible by group/other users (mode {mode:04o}); it holds swap "
            f"secrets or keys, which may already have been read: run `chmod 600 {path}` (and "
            "move funds to new keys if others could read it)",
            code=UNSAFE,
        )


def ensure_private_dir(path: Path, *, readable: bool = False) -> None:
    """Create ``path`` (and missing parents) with mode 0700, then check it
    (:func:`check_private_dir`)."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    check_private_dir(path, readable=readable)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # a filesystem that cannot sync directories: nothing to do
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # a write that makes no progress would loop for ever
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def _read_back(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def write_private_file(
    path: Path, data: bytes, *, verify: Callable[[bytes], None] | None = None
) -> None:
    """Replace ``path`` with ``data`` (mode 0600), whole or not at all.

    ``verify`` runs on the bytes read back from the temp file, before the rename; it raises to
    refuse them (the old file stays). Raises :class:`KofoError` (``write_failed``) when the data
    could not be written completely; the old file, if any, is then untouched."""
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise KofoError(
            f"cannot create a temp file in {directory}: {exc.strerror}", code="write_failed"
        ) from None
    renamed = False
    try:
        try:
            os.fchmod(fd, 0o600)  # the mode is ours whatever the umask
            _write_all(fd, data)
            os.fsync(fd)
            written = os.fstat(fd).st_size
            back = _read_back(fd, len(data))
        except OSError as exc:
            raise KofoError(
                f"writing {path} failed ({exc.strerror or exc}); the previous file is unchanged",
                code="write_failed",
            ) from None
        finally:
            os.close(fd)
        if written != len(data) or back != data:
            raise KofoError(
                f"writing {path} failed: {written} of {len(data)} bytes reached the disk; "
                "the previous file is unchanged",
                code="write_failed",
            )
        if verify is not None:
            verify(back)
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. a directory planted at ``path``
            raise KofoError(
                f"cannot replace {path}: {exc.strerror}; the previous file is unchanged",
                code="write_failed",
            ) from None
        renamed = True
        fsync_dir(directory)
    finally:
        if not renamed:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def read_private_file(path: Path, *, max_size: int) -> bytes:
    """The bytes of ``path``, refused unless private (:func:`check_private_file`, checked on
    the opened file, so a swap between check and open changes nothing) and at most
    ``max_size`` bytes (a huge file is an attack on memory, not a key). Raises
    ``FileNotFoundError`` when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise ConfigError(f"{path} is a symlink; refusing to follow it", code=UNSAFE) from None
        raise
    try:
        st = os.fstat(fd)
        _check_file_stat(path, st)
        if st.st_size > max_size:
            raise ConfigError(
                f"{path} is {st.st_size} bytes, more than the {max_size} such a file can hold",
                code="file_too_large",
            )
        return _read_back(fd, st.st_size)
    finally:
        os.close(fd)
