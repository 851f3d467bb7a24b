"""``python -m kofo.node.validator --config FILE --db DB``: a validator's ABCI app, watching the
chains its config names.

This is ``python -m kofo.clearance.abci.server`` (same flags) with the validator's chain
observer wired **by default whenever the config names chain RPC URLs**: leg outcomes from its
own view of the chains (:class:`~kofo.settlement.observer.AdapterObserver`, one read-only
adapter per chain, throwaway keys that never sign) and bonds from the bond vault
(:class:`~kofo.settlement.observer.VaultWatcher`). The clearance layer cannot build these
itself (it never imports the settlement layer: tests/test_layering.py), so the composition
lives here, in the node package. ``--no-observe`` runs without; ``--observe FILE`` (testnets)
still takes facts from a file instead.

The config is TOML::

    [chains.btc]            # any number of chains, the same keys as a node's [chains.*]
    rpc_url = "http://127.0.0.1:18443"
    rpc_user = "..."
    rpc_password = "..."
    network = "regtest"
    confirmations = 6       # the depth this validator attests at

    [chains.eth]
    rpc_url = "http://127.0.0.1:8545"
    htlc_contract = "0x..."
    confirmations = 12

    [bond]
    vault = "0x..."         # the bond vault (on [chains.eth]) whose balances are the bonds

    [validator]
    vault_key = "vault.key" # 0600 file: the hex secp256k1 key registered with
                            # clearance.register_validator_key; it signs bond decisions
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3 import Web3

from kofo.clearance.abci import server
from kofo.errors import ConfigError, KofoError
from kofo.node.config import (
    BitcoinChainConfig,
    ChainConfig,
    EthereumChainConfig,
    _chain,
    _is_address,
    _Table,
)
from kofo.private_files import read_private_file
from kofo.settlement.chain import ChainAdapter
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.observer import AdapterObserver, VaultWatcher
from kofo.wire.attest import (
    BondObservation,
    ChainObserver,
    ChainTip,
    ChainUnreadable,
    ExecutedDecision,
    LegRef,
    Observation,
)

log = logging.getLogger("kofo.node.validator")

REFRESH_S = 0.25
"""Seconds the observer's worker rests between rounds over the facts asked for: a fact reaches
the next vote extension a round or two after the chain shows it (CometBFT makes a block every
few hundred milliseconds at the least), at a bounded cost in chain reads."""
FORGET_S = 120.0
"""Seconds a fact nobody asked for stays watched: the app asks for every pending leg at each
height, so a leg not asked for this long is settled (or its order gone)."""
MAX_WATCHED = 16_384
"""Facts watched at once (the app asks for at most ``MAX_OBSERVED_ORDERS`` orders of 8 legs
and a window of nodes per height): bounds the memory whatever the ledger holds."""


@dataclass(frozen=True, slots=True)
class ValidatorConfig:
    chains: dict[str, ChainConfig] = field(default_factory=dict)
    vault: str = ""
    vault_key: Path | None = None


def load_validator_config(path: Path) -> ValidatorConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the validator config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    top = _Table(path, "", raw)
    chains_t = top.sub("chains")
    chains: dict[str, ChainConfig] = {}
    for name in list(chains_t.data):
        sub = chains_t.sub(name)
        chains[name] = _chain(sub, name)
        sub.done()
    chains_t.done()
    bond_t = top.sub("bond")
    vault = bond_t.get("vault", str, "")
    if vault and not _is_address(vault):
        raise bond_t.fail("vault", f"must be a 0x-prefixed 20-byte address, got {vault!r}")
    if vault and not isinstance(chains.get("eth"), EthereumChainConfig):
        raise bond_t.fail("vault", "needs [chains.eth]: the vault is read over its RPC")
    bond_t.done()
    val_t = top.sub("validator")
    key = val_t.get("vault_key", str, "")
    val_t.done()
    top.done()
    key_path = None if not key else (path.parent / key).resolve()
    return ValidatorConfig(chains, vault, key_path)


def build_observer(config: ValidatorConfig) -> AdapterObserver | None:
    """The validator's chain watchers for every chain the config names (None: none named)."""
    if not config.chains:
        return None
    adapters: dict[str, ChainAdapter] = {}
    confirmations: dict[str, int] = {}
    since: dict[str, int] = {}
    vault = None
    for name, chain in config.chains.items():
        confirmations[name] = chain.confirmations
        if isinstance(chain, BitcoinChainConfig):
            client = RpcClient(
                chain.rpc_url,
                chain.rpc_user,
                chain.rpc_password,
                dialect=chain.dialect,  # type: ignore[arg-type]
                cert_path=chain.cert_path,
            )
            params = chain_params(chain.chain, chain.network)
            btc = BitcoinAdapter(RpcBackend(client), HdWallet(os.urandom(32), params))
            adapters[name] = btc
        else:
            w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 10}))
            adapters[name] = EthereumAdapter(
                w3, account_from_seed(os.urandom(32)), chain.htlc_contract
            )
            if config.vault and name == "eth":
                vault = VaultWatcher(w3, config.vault, confirmations=chain.confirmations)
        try:  # locks of orders committed from now on are newer than today's tip
            since[name] = adapters[name].tip().height
        except KofoError:
            since[name] = 0  # a node down at start: search from genesis, slower but complete
    return AdapterObserver(adapters, confirmations=confirmations, spent_since=since, vault=vault)


@dataclass
class _Watch:
    read: Callable[[], Any]
    asked: float
    seen: Any = None
    known: bool = False
    """Whether ``seen`` is what the last read returned: False before the first read and
    after a read that failed (``seen`` is then older, or nothing)."""


class PrefetchingObserver:
    """The validator's chain observer, answered from memory: ``observe``, ``observe_bond``,
    ``observe_decision`` and ``observe_tips`` (every :class:`~kofo.wire.attest.ChainObserver`
    method) return what a worker thread last read for that fact and ask it to read again; no
    chain RPC runs on the caller's thread.

    The ABCI server answers CometBFT's connections (consensus, mempool, queries) on one event
    loop, and the app asks its observer from ``ExtendVote``: reading the chains there (a lock
    search over RPC, a node slow to answer) held up every block and every ``abci_query`` of the
    validator -- seen as >10 s query timeouts on a loaded 4-validator network. A fact now
    reaches a vote extension a round later; a read that fails keeps the last fact (each is
    confirmed at the chain's depth) and is logged."""

    def __init__(self, inner: ChainObserver, *, refresh_s: float = REFRESH_S) -> None:
        self.inner = inner
        self.refresh_s = refresh_s
        self._watches: dict[Hashable, _Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chain-observer", daemon=True)
        self._thread.start()

    def observe(self, ref: LegRef) -> Observation | None:
        """The leg's last fact read; :class:`ChainUnreadable` when there is none and the leg
        was not read yet or its last read failed: only a read that succeeded can say "no lock"
        (the ledger counts that against the leg's sender once its deadline passed). A fact read
        before a failing read is still given (facts are confirmed at the chain's depth)."""
        seen: Observation | None = self._ask(
            ("leg", ref.order_id, ref.index),  # a committed order's leg never changes
            lambda: self.inner.observe(ref),
            need_known=ref.leg.chain,
        )
        return seen

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        seen: BondObservation | None = self._ask(
            ("bond", node, step),
            lambda: self.inner.observe_bond(node, step),
        )
        return seen

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        seen: ExecutedDecision | None = self._ask(
            ("decision", decision, step),
            lambda: self.inner.observe_decision(decision, step),
        )
        return seen

    def observe_tips(self) -> list[ChainTip]:
        seen: list[ChainTip] | None = self._ask(("tips",), self.inner.observe_tips)
        return list(seen or [])

    def _ask(self, key: Hashable, read: Callable[[], Any], need_known: str | None = None) -> Any:
        """What the worker last read for ``key`` (and ask it to read again); with
        ``need_known`` (a leg's chain), :class:`ChainUnreadable` instead of None unless the
        last read succeeded."""
        now = time.monotonic()
        with self._lock:
            watch = self._watches.get(key)
            if watch is None:
                if len(self._watches) >= MAX_WATCHED:
                    oldest = min(self._watches, key=lambda k: self._watches[k].asked)
                    del self._watches[oldest]
                watch = self._watches[key] = _Watch(read, now)
            watch.read, watch.asked = read, now
            seen, known = watch.seen, watch.known
        self._wake.set()
        if need_known is not None and seen is None and not known:
            raise ChainUnreadable(need_known, "not read yet, or its last read failed")
        return seen

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()  # asked (each vote extension asks), or closing
            self._wake.clear()
            with self._lock:
                cutoff = time.monotonic() - FORGET_S
                for key in [k for k, w in self._watches.items() if w.asked < cutoff]:
                    del self._watches[key]
                watches = list(self._watches.values())
            for watch in watches:
                if self._stop.is_set():
                    return
                try:
                    seen = watch.read()
                except Exception as exc:  # a chain down or odd: keep the last fact
                    log.info("observing the chains: %s: %s", type(exc).__name__, exc)
                    with self._lock:
                        watch.known = False
                    continue
                with self._lock:
                    watch.seen, watch.known = seen, True
            self._stop.wait(self.refresh_s)  # at most a round per refresh_s

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)


def vault_signer(config: ValidatorConfig) -> bytes | None:
    if config.vault_key is None:
        return None
    text = read_private_file(config.vault_key, max_size=256).decode().strip()
    try:
        key = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise ConfigError(f"{config.vault_key}: not a hex secp256k1 key") from None
    if len(key) != 32:
        raise ConfigError(f"{config.vault_key}: a secp256k1 key is 32 bytes, got {len(key)}")
    return key


def build_parser() -> argparse.ArgumentParser:
    parser = server.build_parser()
    parser.description = "KOFO clearance ledger (ABCI) with this validator's chain observer"
    parser.add_argument("--config", type=Path, help="validator TOML: chain RPC URLs, bond vault")
    parser.add_argument(
        "--no-observe",
        action="store_true",
        help="do not watch the chains even though the config names them",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = load_validator_config(args.config) if args.config else ValidatorConfig()
    observer = None
    if not args.no_observe and not args.observe:
        chains = build_observer(config)  # by default whenever chains are named
        # read off the ABCI loop: a slow chain never holds up blocks and queries
        observer = None if chains is None else PrefetchingObserver(chains)
    server.serve(args, observer=observer, vault_signer=vault_signer(config))


if __name__ == "__main__":
    main()
