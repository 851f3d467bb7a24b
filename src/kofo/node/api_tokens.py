"""The API's bearer tokens in the node home (Bitcoin Core's cookie file, twice).

``api.token`` may do everything, ``api.readonly.token`` only read (GET). Each is 32 random
bytes as 64 hex digits in a 0600 file, written once by ``kofo init`` and kept after (clients
configured with it keep working). Light on imports: the SDK and the CLI read them too.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from kofo.errors import ConfigError
from kofo.private_files import read_private_file, write_private_file

TOKEN_FILE = "api.token"
READONLY_TOKEN_FILE = "api.readonly.token"


@dataclass(frozen=True, slots=True)
class ApiTokens:
    token: str = field(repr=False)
    readonly_token: str = field(repr=False)


def _valid(text: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{64}", text, re.ASCII) is not None


def ensure_tokens(home: Path) -> ApiTokens:
    """Create the home's two API tokens where missing; return both."""
    for name in (TOKEN_FILE, READONLY_TOKEN_FILE):
        path = Path(home) / name
        if not path.exists():
            write_private_file(path, (secrets.token_hex(32) + "\n").encode())
    return load_tokens(home)


def load_tokens(home: Path) -> ApiTokens:
    """The API tokens of a node home, refused unless private (0600) and well-formed."""
    values = []
    for name in (TOKEN_FILE, READONLY_TOKEN_FILE):
        path = Path(home) / name
        try:
            text = read_private_file(path, max_size=256).decode("ascii", "replace").strip()
        except FileNotFoundError:
            raise ConfigError(
                f"no API token {path}; `kofo init --home {home} --force` creates it",
                code="no_api_token",
            ) from None
        if not _valid(text):
            raise ConfigError(f"{path} is not a KOFO API token (64 hex digits)")
        values.append(text)
    if values[0] == values[1]:
        raise ConfigError(f"{home}: the read-only API token must differ from the full one")
    return ApiTokens(values[0], values[1])
