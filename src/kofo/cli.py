"""The ``kofo`` command."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

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
        console.print(f"[bold red]error[/] {exc}")
        raise typer.Exit(1) from None
