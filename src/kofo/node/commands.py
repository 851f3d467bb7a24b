"""The node's CLI commands (``kofo init``, ``kofo node``, ``kofo devnet``), registered on the
``kofo`` app by :func:`register`. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from kofo.errors import ConfigError, KofoError
from kofo.node.config import WALLET_FILE


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


def read_backup_words() -> str:
    """The 24 words of a wallet backup: from a hidden prompt on a terminal, else all of
    stdin (never from the command line, which other users and shell histories see)."""
    if sys.stdin.isatty():
        value: str = typer.prompt("the wallet's 24 backup words", hide_input=True)
        return value
    return sys.stdin.read()


def show_backup_words(words: str) -> None:
    """Print a paper backup once, to stdout only (never a log)."""
    typer.echo("paper backup of the wallet's seed (24 words; anyone who reads them holds the")
    typer.echo("funds: write them down, keep them offline; restore with `kofo init --restore`):")
    parts = words.split()
    for row in range(0, len(parts), 6):
        typer.echo(
            "  " + "  ".join(f"{row + i + 1:>2}. {w}" for i, w in enumerate(parts[row : row + 6]))
        )


def offer_backup_words(words: str, show: bool) -> None:
    """At creation: show the words if asked (``--show-mnemonic``), or if the operator at a
    terminal says so; else say how to see them later."""
    if show or (
        sys.stdin.isatty() and typer.confirm("show the wallet's 24-word paper backup now?")
    ):
        show_backup_words(words)
    else:
        typer.echo("write down the wallet's paper backup: `kofo wallet mnemonic` shows its words")


def init_command(
    home: Annotated[Path, typer.Option("--home", help="the node home to create")],
    name: Annotated[str, typer.Option(help="the node's name in logs")] = "kofo",
    ledger_url: Annotated[
        str, typer.Option(help="CometBFT RPC or solo ledger URL")
    ] = "http://127.0.0.1:26657",
    devnet: Annotated[
        Path | None,
        typer.Option(
            help="JSON from `kofo devnet --json`: fills \\[ledger], \\[chains.*] and \\[bond]"
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="rewrite the config of an existing home")
    ] = False,
    show_mnemonic: Annotated[
        bool,
        typer.Option("--show-mnemonic", help="print the new wallet's 24-word paper backup"),
    ] = False,
    restore: Annotated[
        bool,
        typer.Option(
            "--restore",
            help="restore the wallet from its 24 words (read from stdin or a hidden prompt)",
        ),
    ] = False,
) -> None:
    """Create a node home: commented config.toml, encrypted wallet, journal (0700/0600).
    The wallet's passphrase comes from $KOFO_PASSPHRASE or a prompt; with --restore its seed
    comes from its 24 backup words (stdin or a prompt), giving back the same node id and
    addresses."""
    from kofo.errors import WalletError
    from kofo.node.home import init_home
    from kofo.wallet import PASSPHRASE_ENV, SEED_BYTES, seed_to_words, words_to_seed

    try:
        if restore and not sys.stdin.isatty() and PASSPHRASE_ENV not in os.environ:
            raise WalletError(
                f"--restore reads the words from stdin: the passphrase must then come from "
                f"${PASSPHRASE_ENV}",
                code="passphrase_required",
            )
        seed = words_to_seed(read_backup_words()) if restore else os.urandom(SEED_BYTES)
        # --force on a home with a wallet keeps that wallet (a fresh seed is for a new one
        # only; a restore into a home with a wallet is still refused by init_home)
        keep = force and not restore and (home.expanduser() / WALLET_FILE).exists()
        chains: dict[str, dict[str, Any]] | None = None
        bond: dict[str, Any] | None = None
        timing: dict[str, int] | None = None
        if devnet is not None:
            try:
                desc = json.loads(devnet.read_text())
                ledger_url, chains = desc["ledger"]["url"], desc["chains"]
                bond = desc.get("bond")
                timing = desc.get("timing")
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
            bond=bond,
            timing=timing,
            force=force,
            seed=None if keep else seed,
        )
    except KofoError as exc:
        raise _fail(exc) from None
    typer.echo(f"node home {config.home}")
    typer.echo(f"  config  {config.config_path}")
    wallet_note = "new" if created else "kept, never overwritten"
    typer.echo(f"  wallet  {config.wallet_path} ({wallet_note})")
    typer.echo(f"  journal {config.journal_path}")
    typer.echo(f"  api     {config.home / 'api.token'} (and api.readonly.token: GET only)")
    if created and restore:
        typer.echo("restored the wallet from its backup words")
    elif created:
        typer.echo("back up the wallet file and remember the passphrase, or keep the wallet's")
        typer.echo("paper backup: without either, funds its keys hold cannot be recovered")
        offer_backup_words(seed_to_words(seed), show_mnemonic)


def node_command(
    home: Annotated[Path, typer.Option("--home", help="the node home (`kofo init`)")],
) -> None:
    """Run the node daemon on HOME until SIGINT/SIGTERM: offers, quotes, trades and swaps on
    the configured chains, cleared on the ledger (docs/node.md)."""
    passphrase = _passphrase(confirm=False)
    # before the daemon's (slow) import and its start: a SIGINT/SIGTERM during the start
    # (the wallet's scrypt, the chains, the ledger) stops it promptly, exit 0
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    from kofo.node.daemon import run_node

    try:
        in_start = run_node(home, passphrase, stop)
    except KofoError as exc:
        raise _fail(exc) from None
    if in_start is not None:
        first = got[0] if got else in_start
        name = signal.Signals(first).name if first else "a signal"
        typer.echo(
            f"kofo node: stopped by {name} during its start; nothing left running, {home} unlocked",
            err=True,
        )


def devnet_command(
    btc_port: Annotated[int, typer.Option(help="Bitcoin Core RPC port (0: any free)")] = 0,
    eth_port: Annotated[int, typer.Option(help="Ethereum JSON-RPC port (0: any free)")] = 0,
    ledger_port: Annotated[int, typer.Option(help="ledger RPC port (0: any free)")] = 0,
    ltc: Annotated[
        bool,
        typer.Option(
            "--ltc/--no-ltc",
            help="also the embedded Litecoin regtest chain over Core RPC (--no-ltc: BTC, ETH "
            "and the ledger only, as `make demo` runs it)",
        ),
    ] = True,
    ltc_port: Annotated[int, typer.Option(help="Litecoin Core RPC port (0: any free)")] = 0,
    fund: Annotated[
        list[str] | None,
        typer.Option(help="an address to fund (bcrt1..., rltc1... or 0x...); repeatable"),
    ] = None,
    block_interval: Annotated[
        float, typer.Option(help="seconds between regtest blocks (0: none)")
    ] = 1.0,
    fast_timing: Annotated[
        bool,
        typer.Option(
            "--fast-timing",
            help="the devnet's short time constants (lock window, leg expiry step, attest "
            "grace: seconds, not minutes) for the ledger and every node config it prints",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON line for `kofo init --devnet`")
    ] = False,
) -> None:
    """Start the embedded chains and the solo ledger on 127.0.0.1, fund --fund addresses,
    print what a node config needs; run until Ctrl-C. SIGUSR1 pauses the ledger (an outage:
    its RPC refuses connections, no blocks), SIGUSR2 resumes it."""
    from kofo.node.devnet import DEVNET_TIMING, run_until_signal, start_devnet, toml_snippet

    def progress(line: str) -> None:
        typer.echo(line, err=True)

    try:
        net = start_devnet(
            btc_port=btc_port,
            eth_port=eth_port,
            ledger_port=ledger_port,
            ltc=ltc,
            ltc_port=ltc_port,
            fund=fund,
            block_interval=block_interval,
            timing=DEVNET_TIMING if fast_timing else None,
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
    run_until_signal(net, progress)
    typer.echo("devnet stopped", err=True)


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
    app.command("node")(node_command)
    app.command("devnet")(devnet_command)
