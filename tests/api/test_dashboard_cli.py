"""``kofo dashboard``: the link to the page with the token, read from the home's 0600 file."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from kofo.cli import app
from kofo.node.config import render_config
from kofo.node.dashboard import dashboard_url

TOKEN = "ab" * 32


def _home(tmp_path, bind="127.0.0.1:9931"):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    cfg = home / "config.toml"
    cfg.write_text(render_config(name="n", ledger_url="http://127.0.0.1:1", api_bind=bind))
    cfg.chmod(0o600)
    for name, token in (("api.token", TOKEN), ("api.readonly.token", "cd" * 32)):
        (home / name).write_text(token + "\n")
        (home / name).chmod(0o600)
    return home


def _run(*args):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})


def test_kofo_dashboard_prints_the_whole_link_with_the_token_at_80_columns(tmp_path):
    home = _home(tmp_path)
    result = _run("dashboard", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"http://127.0.0.1:9931/dashboard/#token={TOKEN}"
    result = _run("dashboard", "--home", str(home), "--readonly")
    assert result.output.strip().endswith("#token=" + "cd" * 32)


def test_kofo_dashboard_refuses_a_token_file_others_can_read_and_names_a_missing_one(tmp_path):
    home = _home(tmp_path)
    os.chmod(home / "api.token", 0o644)
    result = _run("dashboard", "--home", str(home))
    assert result.exit_code == 1
    assert TOKEN not in result.output
    (home / "api.token").unlink()
    result = _run("dashboard", "--home", str(home))
    assert result.exit_code == 1
    assert "no api.token in" in result.output and "kofo init" in result.output


def test_an_ipv6_bind_is_bracketed_in_the_link():
    assert dashboard_url("::1", 9731, "t") == "http://[::1]:9731/dashboard/#token=t"
