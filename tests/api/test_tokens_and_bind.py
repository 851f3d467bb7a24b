"""The API's tokens in the home (`kofo init` writes them, 0600, kept on --force) and the bind
rule (loopback, or TLS configured), and how the daemon serves the app (uvicorn_config)."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from kofo.errors import ConfigError
from kofo.node.api import create_app, load_tokens, uvicorn_config
from kofo.node.api_tokens import READONLY_TOKEN_FILE, TOKEN_FILE
from kofo.node.config import load_config, parse_config, render_config
from kofo.node.home import init_home

PASS = "correct horse battery"


def test_init_writes_two_private_random_tokens_and_force_keeps_them(tmp_path: Path) -> None:
    home = tmp_path / "h"
    init_home(home, PASS)
    tokens = load_tokens(home)
    for name in (TOKEN_FILE, READONLY_TOKEN_FILE):
        assert stat.S_IMODE(os.stat(home / name).st_mode) == 0o600
    assert len(tokens.token) == 64 and int(tokens.token, 16) >= 0
    assert tokens.token != tokens.readonly_token
    assert tokens.token not in repr(tokens)  # never in a log line
    init_home(home, PASS, force=True)
    assert load_tokens(home) == tokens  # clients configured with them keep working
    other = tmp_path / "other"
    init_home(other, PASS)
    assert load_tokens(other).token != tokens.token


def test_a_token_others_can_read_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "h"
    init_home(home, PASS)
    os.chmod(home / TOKEN_FILE, 0o644)
    with pytest.raises(ConfigError, match=r"api\.token"):
        load_tokens(home)


def test_missing_or_bad_token_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="kofo init"):
        load_tokens(home)
    for name in (TOKEN_FILE, READONLY_TOKEN_FILE):
        fd = os.open(home / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"not-a-token\n")
        os.close(fd)
    with pytest.raises(ConfigError, match="64 hex"):
        load_tokens(home)


def _config(tmp_path: Path, api: dict[str, str]):  # type: ignore[no-untyped-def]
    raw = tomllib.loads(render_config(name="n", ledger_url="http://127.0.0.1:26657"))
    raw["api"] = api
    return parse_config(tmp_path, raw)


def test_non_loopback_bind_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"loopback.*tls_cert"):
        _config(tmp_path, {"bind": "0.0.0.0:9731"})
    with pytest.raises(ConfigError, match="tls_key"):
        _config(tmp_path, {"bind": "0.0.0.0:9731", "tls_cert": "c.pem"})
    config = _config(tmp_path, {"bind": "0.0.0.0:9731", "tls_cert": "c.pem", "tls_key": "k.pem"})
    assert config.api_tls is not None and config.api_tls.cert == tmp_path / "c.pem"


def test_uvicorn_config_serves_the_bind_with_tls_and_no_access_log(tmp_path: Path) -> None:
    app = create_app(object(), token="a" * 64, readonly_token="b" * 64)  # type: ignore[arg-type]
    init_home(tmp_path / "h", PASS)
    plain = uvicorn_config(app, load_config(tmp_path / "h"))
    assert (plain.host, plain.port, plain.ssl_certfile) == ("127.0.0.1", 9731, None)
    assert plain.access_log is False
    tls = _config(tmp_path, {"bind": "0.0.0.0:9999", "tls_cert": "c.pem", "tls_key": "k.pem"})
    served = uvicorn_config(app, tls)
    assert served.host == "0.0.0.0" and served.ssl_certfile == str(tmp_path / "c.pem")
    assert served.ssl_keyfile == str(tmp_path / "k.pem")


def test_the_app_refuses_equal_or_empty_tokens() -> None:
    with pytest.raises(ConfigError):
        create_app(object(), token="a" * 64, readonly_token="a" * 64)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        create_app(object(), token="", readonly_token="b" * 64)  # type: ignore[arg-type]


def test_app_for_home_creates_the_tokens_of_an_older_home(tmp_path: Path) -> None:
    from kofo.node.api import app_for_home

    home = tmp_path / "h"
    init_home(home, PASS)
    for name in (TOKEN_FILE, READONLY_TOKEN_FILE):
        (home / name).unlink()  # a home made before the API
    app_for_home(object(), load_config(home))  # type: ignore[arg-type]
    tokens = load_tokens(home)
    assert tokens.token != tokens.readonly_token
