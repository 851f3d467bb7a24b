"""``kofo dashboard``: print (or open) the link to the node's dashboard, token included."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kofo.errors import ConfigError, KofoError

# The token files ``kofo init`` writes in the home (0600), as the API reads them.
TOKEN_FILE = "api.token"
READONLY_TOKEN_FILE = "api.readonly.token"


def read_token(home: Path, *, readonly: bool) -> str:
    """The API token from the home; refuses a file others can read (it grants the node)."""
    from kofo.private_files import check_private_file

    path = home / (READONLY_TOKEN_FILE if readonly else TOKEN_FILE)
    check_private_file(path)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no {path.name} in {home}: the API token is created by `kofo init` "
            "(a home made before the API: run `kofo init --force --home HOME`)"
        ) from None
    if not token:
        raise ConfigError(f"{path} is empty: run `kofo init --force --home HOME`")
    return token


def dashboard_command(
    home: Annotated[Path, typer.Option("--home", help="the node home")],
    readonly: Annotated[
        bool, typer.Option("--readonly", help="the read-only token: look, never trade")
    ] = False,
    open_browser: Annotated[
        bool, typer.Option("--open", help="open the link in the default browser")
    ] = False,
) -> None:
    """Print the link to this node's dashboard (served by `kofo node` on its \\[api] bind).
    The link carries the API token: treat it as a password."""
    from kofo.node.config import load_config
    from kofo.node.dashboard import dashboard_url

    try:
        config = load_config(home)
        url = dashboard_url(config.api.host, config.api.port, read_token(home, readonly=readonly))
    except KofoError as exc:
        typer.echo(f"error {exc}", err=True)
        raise typer.Exit(1) from None
    # Whole, never wrapped or cut: a person copies it.
    typer.echo(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard_command)
