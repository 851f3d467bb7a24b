"""The node's CLI commands (``kofo init``, ``kofo node``, ``kofo devnet``), registered on the
``kofo`` app by :func:`register`. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from kofo.errors import ConfigError, KofoError


def _fail(exc: KofoError) -> typer.Exit:
    typer.echo(f"error {exc}", err=True)
    return typer.Exit(1)


def _passphrase(confirm: bool) -> str:
    from kofo.wallet import PASSPHRASE_ENV

    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env
    value: str = typer.prompt("wallet passphrase", hide_input=True, confirmation_prompt=confirm)
    return value


def init_command(
    home: Annotated[Path, typer.Option("--home", help="the node home to create")],
    name: Annotated[str, typer.Option(help="the node's name in logs")] = "kofo",
    ledger_url: Annotated[
        str, typer.Option(help="CometBFT RPC or solo ledger URL")
    ] = "http://127.0.0.1:26657",
    devnet: Annotated[
        Path | None,
        typer.Option(help="JSON from `kofo devnet --json`: fills [ledger] and [chains.*]"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="rewrite the config of an existing home")
    ] = False,
) -> None:
    """Create a node home: commented config.toml, encrypted wallet, journal (0700/0600).
    The wallet's passphrase comes from $KOFO_PASSPHRASE or a prompt."""
    from kofo.node.home import init_home

    try:
        chains: dict[str, dict[str, Any]] | None = None
        if devnet is not None:
            try:
                desc = json.loads(devnet.read_text())
                ledger_url, chains = desc["ledger"]["url"], desc["chains"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"--devnet {devnet}: not `kofo devnet --json` output: {exc}"
                ) from None
        config, created = init_home(
            home,
            _passphrase(confirm=True),
            name=name,
            ledger_url=ledger_url,
            chains=chains,
            force=force,
        )
    except KofoError as exc:
        raise _fail(exc) from None
    typer.echo(f"node home {config.home}")
    typer.echo(f"  config  {config.config_path}")
    wallet_note = "new" if created else "kept, never overwritten"
    typer.echo(f"  wallet  {config.wallet_path} ({wallet_note})")
    typer.echo(f"  journal {config.journal_path}")
    if created:
        typer.echo("back up the wallet file and remember the passphrase: without both, funds")
        typer.echo("its keys hold cannot be recovered")


def node_command(
    home: Annotated[Path, typer.Option("--home", help="the node home (`kofo init`)")],
) -> None:
    """Run the node daemon on HOME until SIGINT/SIGTERM: offers, quotes, trades and swaps on
    the configured chains, cleared on the ledger (docs/node.md)."""
    from kofo.node.daemon import run_node

    try:
        run_node(home, _passphrase(confirm=False))
    except KofoError as exc:
        raise _fail(exc) from None


def devnet_command(
    btc_port: Annotated[int, typer.Option(help="Bitcoin Core RPC port (0: any free)")] = 0,
    eth_port: Annotated[int, typer.Option(help="Ethereum JSON-RPC port (0: any free)")] = 0,
    ledger_port: Annotated[int, typer.Option(help="ledger RPC port (0: any free)")] = 0,
    fund: Annotated[
        list[str] | None,
        typer.Option(help="an address to fund (bcrt1... or 0x...); repeatable"),
    ] = None,
    block_interval: Annotated[
        float, typer.Option(help="seconds between regtest blocks (0: none)")
    ] = 1.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON line for `kofo init --devnet`")
    ] = False,
) -> None:
    """Start the embedded chains and the solo ledger on 127.0.0.1, fund --fund addresses,
    print what a node config needs; run until Ctrl-C."""
    from kofo.node.devnet import run_until_signal, start_devnet, toml_snippet

    def progress(line: str) -> None:
        typer.echo(line, err=True)

    try:
        net = start_devnet(
            btc_port=btc_port,
            eth_port=eth_port,
            ledger_port=ledger_port,
            fund=fund,
            block_interval=block_interval,
            progress=progress,
        )
    except KofoError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(ConfigError(f"cannot start the devnet: {exc}")) from None
    desc = net.describe()
    if as_json:
        typer.echo(json.dumps(desc))
    else:
        typer.echo("# node config for this devnet (kofo init --devnet takes the --json form)")
        typer.echo(toml_snippet(desc))
    typer.echo("devnet running; Ctrl-C stops it", err=True)
    sys.stdout.flush()
    run_until_signal(net)
    typer.echo("devnet stopped", err=True)


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
    app.command("node")(node_command)
    app.command("devnet")(devnet_command)
