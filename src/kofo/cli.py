"""The ``kofo`` command."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kofo import __version__
from kofo.errors import KofoError, WalletError
from kofo.settlement.journal import Journal, JournalError

app = typer.Typer(help="KOFO: trustless cross-chain swaps.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log at INFO")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


@app.command()
def version() -> None:
    """Print the KOFO version."""
    console.print(__version__)


@app.command()
def demo() -> None:
    """The network on this machine: `kofo devnet` and six `kofo node` processes (two makers,
    three relays, a taker); a routed BTC→ETH trade driven through the nodes' APIs, cleared on
    the ledger and settled on both chains. Exits non-zero unless every check holds."""
    from kofo.demo import run_demo

    try:
        result = run_demo(console)
    except KofoError as exc:
        raise _fail(exc) from None
    if not result.ok:
        raise typer.Exit(1)


wallet_app = typer.Typer(help="The node's keys: one seed, encrypted at rest.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")

_DEFAULT_WALLET = Path(os.environ.get("KOFO_HOME", Path.home() / ".kofo")) / "wallet.json"


def _passphrase(confirm: bool) -> str:
    from kofo.wallet import PASSPHRASE_ENV

    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise WalletError(
            f"no passphrase: set {PASSPHRASE_ENV} or run this command on a terminal",
            code="passphrase_required",
        )
    value: str = typer.prompt("wallet passphrase", hide_input=True, confirmation_prompt=confirm)
    return value


def _fail(exc: KofoError) -> typer.Exit:
    """One ``error [code] message`` line (on stderr) and exit status 1."""
    err_console.print(f"[bold red]error[/] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(1)


@contextmanager
def _reading(what: str, path: Path) -> Iterator[None]:
    """Turn a file that cannot be read or decoded into a KOFO error naming it (never a
    traceback): a directory, a missing permission, bytes that are not text."""
    try:
        yield
    except IsADirectoryError:
        raise WalletError(f"the {what} {path} is a directory", code="unreadable_file") from None
    except OSError as exc:
        raise WalletError(
            f"cannot read the {what} {path}: {exc.strerror or exc}", code="unreadable_file"
        ) from None
    except UnicodeDecodeError:
        raise WalletError(f"the {what} {path} is not a KOFO key store (not text)") from None


@wallet_app.command("init")
def wallet_init(
    path: Annotated[Path, typer.Option(help="where to write the encrypted seed")] = _DEFAULT_WALLET,
    show_mnemonic: Annotated[
        bool, typer.Option("--show-mnemonic", help="print the new seed's 24-word paper backup")
    ] = False,
    restore: Annotated[
        bool,
        typer.Option("--restore", help="the seed from its 24 words (stdin or a hidden prompt)"),
    ] = False,
) -> None:
    """Create a new seed and store it encrypted (passphrase from $KOFO_PASSPHRASE or a prompt);
    with --restore, the seed of a paper backup (its words from stdin or a prompt, never argv)."""
    from kofo.node.commands import offer_backup_words, read_backup_words
    from kofo.wallet import NodeWallet, words_to_seed

    try:
        with _reading("wallet", path):
            passphrase = _passphrase(confirm=True)
            seed = words_to_seed(read_backup_words()) if restore else None
            wallet = NodeWallet.create(path, passphrase, seed=seed)
    except KofoError as exc:
        raise _fail(exc) from None
    console.print(f"{'restored' if restore else 'created'} an encrypted wallet at {path}")
    if not restore:
        console.print(
            "[yellow]back up this file and remember the passphrase, or keep the paper "
            "backup: without either the funds its keys hold cannot be recovered[/]"
        )
        offer_backup_words(wallet.mnemonic(), show_mnemonic)


@wallet_app.command("mnemonic")
def wallet_mnemonic(
    path: Annotated[Path, typer.Option(help="the encrypted seed file")] = _DEFAULT_WALLET,
) -> None:
    """Print the wallet's 24-word paper backup (after its passphrase). Works for every wallet,
    those made before the words existed included: the words encode the seed itself."""
    from kofo.node.commands import show_backup_words
    from kofo.wallet import NodeWallet

    try:
        with _reading("wallet", path):
            wallet = NodeWallet.open(path, _passphrase(confirm=False))
    except KofoError as exc:
        raise _fail(exc) from None
    show_backup_words(wallet.mnemonic())


@wallet_app.command("upgrade")
def wallet_upgrade(
    path: Annotated[Path, typer.Option(help="the encrypted seed file")] = _DEFAULT_WALLET,
) -> None:
    """Rewrite an old wallet file with today's encryption (same seed, same passphrase)."""
    from kofo.wallet import NodeWallet

    try:
        changed = NodeWallet.upgrade(path, _passphrase(confirm=False))
    except KofoError as exc:
        raise _fail(exc) from None
    console.print(f"upgraded {path}" if changed else f"{path} is already current")


@wallet_app.command("show")
def wallet_show(
    path: Annotated[Path, typer.Option(help="the encrypted seed file")] = _DEFAULT_WALLET,
    network: Annotated[str, typer.Option(help="mainnet, testnet or regtest")] = "regtest",
) -> None:
    """Show this node's receiving identity on every chain (never a private key)."""
    from kofo.wallet import NodeWallet

    try:
        with _reading("wallet", path):
            wallet = NodeWallet.open(path, _passphrase(confirm=False))
        rows: list[tuple[str, str, str]] = [("eth", str(wallet.eth_account().address), "")]
        for chain in ("btc", "ltc"):
            hd = wallet.bitcoin(chain, network)
            rows.append((f"{chain} ({network})", hd.address(), hd.identity.pubkey.hex()))
    except KofoError as exc:
        raise _fail(exc) from None
    # One value a line, never a table cell: a terminal of any width shows each address and key
    # whole (a table cut them at 80 columns), and a copy takes the line as it is.
    console.print(f"wallet {escape(str(path))}", soft_wrap=True)
    for chain, address, key in rows:
        console.print(f"{chain}", soft_wrap=True)
        console.print(f"  address      {address}", soft_wrap=True)
        if key:
            console.print(f"  funding key  {key}", soft_wrap=True)
    console.print("(HTLCs use a new key per swap)", soft_wrap=True)


swap_app = typer.Typer(help="Swaps in this node's journal.", no_args_is_help=True)
app.add_typer(swap_app, name="swap")

_JOURNAL_OPTION = typer.Option(
    None, "--journal", "-j", envvar="KOFO_JOURNAL", help="swap journal (SQLite file)"
)


def _open_journal(path: str | None) -> Journal:
    """The journal, opened read-only: these commands only read it."""
    journal_path = Path(path) if path else Path.home() / ".kofo" / "swaps.sqlite"
    try:
        if not journal_path.exists():
            raise JournalError(f"no swap journal at {journal_path}", code="no_journal")
        if not journal_path.is_file():
            raise JournalError(f"{journal_path} is not a file", code="journal_unreadable")
        return Journal(journal_path, read_only=True)
    except KofoError as exc:
        raise _fail(exc) from None


def _unreadable(j: Journal, exc: Exception) -> KofoError:
    if isinstance(exc, KofoError):
        return exc
    return JournalError(
        f"the swap journal {j.path} is damaged: {type(exc).__name__}", code="journal_unreadable"
    )


@swap_app.command("list")
def swap_list(journal: str | None = _JOURNAL_OPTION) -> None:
    """Every swap with its role, legs and current state."""
    from rich.table import Table

    j = _open_journal(journal)
    table = Table(title=f"swaps in {j.path}")
    for col in ("id", "role", "state", "gives", "gets", "updated"):
        table.add_column(col)
    import time as _time

    try:
        swaps = j.swaps()
    except (KofoError, sqlite3.Error, ValueError) as exc:
        raise _fail(_unreadable(j, exc)) from None
    finally:
        j.close()
    for s in swaps:
        a, b = s.terms.initiator_leg, s.terms.participant_leg
        give, get = (a, b) if s.role.value == "initiator" else (b, a)
        table.add_row(
            s.swap_id.hex()[:12],
            s.role.value,
            s.state.value,
            f"{give.amount} {give.token or give.chain}",
            f"{get.amount} {get.token or get.chain}",
            _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(s.updated_at)),
        )
    console.print(table)


@swap_app.command("show")
def swap_show(swap_id: str, journal: str | None = _JOURNAL_OPTION) -> None:
    """One swap: terms, deadlines, every event, its transactions and any evidence."""
    import time as _time

    from kofo.errors import KofoError as _KofoError

    j = _open_journal(journal)
    try:
        s = j.find(swap_id)
    except _KofoError as exc:
        raise _fail(exc) from None
    except (sqlite3.Error, ValueError) as exc:
        raise _fail(_unreadable(j, exc)) from None
    t = s.terms
    console.print(f"[bold]swap {s.swap_id.hex()}[/]  role {s.role.value}  state {s.state.value}")
    console.print(f"payment hash {t.payment_hash.hex()}")
    for name, leg in (("initiator leg", t.initiator_leg), ("participant leg", t.participant_leg)):
        console.print(
            f"{name}: {leg.amount} {leg.token or leg.chain} on {leg.chain}, "
            f"{leg.sender} -> {leg.recipient}, refundable at {leg.expiry}, "
            f"{leg.confirmations} confirmation(s)"
        )
    console.print(
        f"deadlines: initiator_lock_by {t.initiator_lock_by}, participant_lock_by "
        f"{t.participant_lock_by}, initiator_redeem_by {t.initiator_redeem_by}"
    )
    console.print("[bold]events[/]")
    for e in j.events(s.swap_id):
        when = _time.strftime("%H:%M:%S", _time.localtime(e.at))
        txids = ", ".join(e.payload.get("txids", []))
        console.print(
            f"  {e.seq:>3} {when} {e.state.value:<16} {e.payload.get('reason', '')}"
            + (f"  tx {txids}" if txids else "")
        )
    for kind, chain, txid, at in j.all_txs(s.swap_id):
        sent = "sent" if at is not None else "not sent"
        console.print(f"  tx {kind.value:<8} {chain} {txid} ({sent})")
    for ev in j.evidence(s.swap_id):
        console.print(f"  [yellow]evidence[/] {ev.kind} {ev.code} {ev.detail}")


# `kofo init`, `kofo node`, `kofo devnet`: their code lives in kofo.node.commands.
from kofo.node.commands import register as _register_node_commands  # noqa: E402

_register_node_commands(app)

# `kofo trade`, `kofo offer`, `kofo balances`, ...: clients of a running node's API (the SDK).
from kofo.node.cli_api import register as _register_api_commands  # noqa: E402

_register_api_commands(app)

# `kofo dashboard`: the link to the node's web page (kofo.node.cli_dashboard).
from kofo.node.cli_dashboard import register as _register_dashboard_command  # noqa: E402

_register_dashboard_command(app)
