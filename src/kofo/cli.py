"""The ``kofo`` command."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kofo import __version__
from kofo.errors import KofoError

app = typer.Typer(help="KOFO: trustless cross-chain swaps.", no_args_is_help=True)
console = Console()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log at INFO")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


@app.command()
def version() -> None:
    """Print the KOFO version."""
    console.print(__version__)


@app.command()
def demo() -> None:
    """Run the main job on the embedded chains: HTLC lock → redeem and lock → refund."""
    from kofo.demo import run_demo

    try:
        run_demo(console)
    except KofoError as exc:
        raise _fail(exc) from None


wallet_app = typer.Typer(help="The node's keys: one seed, encrypted at rest.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")

_DEFAULT_WALLET = Path(os.environ.get("KOFO_HOME", Path.home() / ".kofo")) / "wallet.json"


def _passphrase(confirm: bool) -> str:
    from kofo.wallet import PASSPHRASE_ENV

    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env
    value: str = typer.prompt("wallet passphrase", hide_input=True, confirmation_prompt=confirm)
    return value


def _fail(exc: KofoError) -> typer.Exit:
    console.print(f"[bold red]error[/] {escape(str(exc))}")
    return typer.Exit(1)


@wallet_app.command("init")
def wallet_init(
    path: Annotated[Path, typer.Option(help="where to write the encrypted seed")] = _DEFAULT_WALLET,
) -> None:
    """Create a new seed and store it encrypted (passphrase from $KOFO_PASSPHRASE or a prompt)."""
    from kofo.wallet import NodeWallet

    try:
        NodeWallet.create(path, _passphrase(confirm=True))
    except KofoError as exc:
        raise _fail(exc) from None
    console.print(f"created an encrypted wallet at {path}")
    console.print(
        "[yellow]back up this file and remember the passphrase: without both the "
        "funds its keys hold cannot be recovered[/]"
    )


@wallet_app.command("show")
def wallet_show(
    path: Annotated[Path, typer.Option(help="the encrypted seed file")] = _DEFAULT_WALLET,
    network: Annotated[str, typer.Option(help="mainnet, testnet or regtest")] = "regtest",
) -> None:
    """Show this node's receiving identity on every chain (never a private key)."""
    from kofo.wallet import NodeWallet

    try:
        wallet = NodeWallet.open(path, _passphrase(confirm=False))
        table = Table(title=f"wallet {path}")
        table.add_column("chain")
        table.add_column("address")
        table.add_column("HTLC key (compressed pubkey)")
        table.add_row("eth", wallet.eth_account().address, "-")
        for chain in ("btc", "ltc"):
            hd = wallet.bitcoin(chain, network)
            table.add_row(f"{chain} ({network})", hd.address(), hd.identity.pubkey.hex())
    except KofoError as exc:
        raise _fail(exc) from None
    console.print(table)
