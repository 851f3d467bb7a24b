"""`python -m kofo.node.validator`: the ABCI server with the validator's chain observer wired by
default whenever its config names chain RPC URLs (issue 17 item: no `--observe` needed)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from web3 import Web3

from kofo.clearance.abci import server
from kofo.errors import ConfigError
from kofo.node import validator
from kofo.node.bonds import ensure_bond
from kofo.node.devnet import start_devnet
from kofo.node.ledger_client import LedgerClient
from kofo.node.registration import ensure_registered, load_or_create_paillier
from kofo.private_files import write_private_file
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.observer import AdapterObserver
from kofo.wire.codec import decode
from tests.clearance.helpers import ledger_params

pytestmark = pytest.mark.timeout(180)


def _config(tmp_path: Path, desc: dict[str, Any], *, vault: bool = True) -> Path:
    btc, eth = desc["chains"]["btc"], desc["chains"]["eth"]
    lines = [
        "[chains.btc]",
        f'rpc_url = "{btc["rpc_url"]}"',
        f'rpc_user = "{btc["rpc_user"]}"',
        f'rpc_password = "{btc["rpc_password"]}"',
        'network = "regtest"',
        "[chains.eth]",
        f'rpc_url = "{eth["rpc_url"]}"',
        f'htlc_contract = "{eth["htlc_contract"]}"',
    ]
    if vault:
        lines += ["[bond]", f'vault = "{desc["bond"]["vault"]}"']
        lines += ["[validator]", 'vault_key = "vault.key"']
        write_private_file(tmp_path / "vault.key", (b"11" * 32))
    path = tmp_path / "validator.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_config_names_chains_so_the_observer_is_wired_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = account_from_seed(os.urandom(32))
    net = start_devnet(fund=[key.address], block_interval=0, ledger_params=ledger_params())
    try:
        path = _config(tmp_path, net.describe())
        seen: dict[str, Any] = {}

        def fake_serve(args: Any, *, observer: Any = None, vault_signer: Any = None) -> None:
            seen.update(args=args, observer=observer, signer=vault_signer)

        monkeypatch.setattr(server, "serve", fake_serve)
        validator.main(["--db", str(tmp_path / "l.db"), "--config", str(path)])
        observer = seen["observer"]
        # the chain watchers, read off the ABCI loop (no chain RPC on the caller's thread)
        assert isinstance(observer, validator.PrefetchingObserver)
        inner = observer.inner
        assert isinstance(inner, AdapterObserver)
        assert set(inner.adapters) == {"btc", "eth"}
        assert seen["signer"] == bytes.fromhex("11" * 32)
        assert inner.vault is not None
        readers: set[int] = set()
        real_read = inner.vault.observe_bond

        def recorded(node: bytes, *args: Any) -> Any:
            readers.add(threading.get_ident())
            return real_read(node, *args)

        inner.vault.observe_bond = recorded  # type: ignore[method-assign]
        try:
            # the observer reads the real vault: a deposit is seen, at its confirmed height,
            # once the worker has read it (asked again, as each vote extension asks)
            node = os.urandom(32)
            w3 = Web3(Web3.HTTPProvider(net.eth_server.url))
            ensure_bond(
                home=tmp_path, w3=w3, account=key, vault=net.vault, node_id=node, amount=10**17
            )
            deadline = time.monotonic() + 60
            while (seen_bond := observer.observe_bond(node)) is None:
                assert time.monotonic() < deadline, "the bond never observed"
                time.sleep(0.05)
            assert seen_bond.amount == 10**17
            assert readers and threading.get_ident() not in readers
        finally:
            observer.close()
        # --no-observe: nothing wired; no chains in the config: nothing either
        validator.main(["--db", str(tmp_path / "l.db"), "--config", str(path), "--no-observe"])
        assert seen["observer"] is None
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        validator.main(["--db", str(tmp_path / "l.db"), "--config", str(empty)])
        assert seen["observer"] is None and seen["signer"] is None
    finally:
        net.stop()


def test_a_bad_validator_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "v.toml"
    path.write_text('[bond]\nvault = "0x1234"\n')
    with pytest.raises(ConfigError, match="vault"):
        validator.load_validator_config(path)
    path.write_text('[chains.eth]\nrpc_url = "http://127.0.0.1:1"\nhtlc_contract = "nope"\n')
    with pytest.raises(ConfigError, match="htlc_contract"):
        validator.load_validator_config(path)


def _register(tmp_path: Path, name: str, client: LedgerClient) -> None:
    home = tmp_path / name
    home.mkdir(mode=0o700)
    pub, priv = load_or_create_paillier(home, "passphrase", bits=1024, scrypt_n=2**17)
    ensure_registered(
        home=home,
        ledger=client,
        node_key=Ed25519PrivateKey.generate(),
        paillier_pub=pub,
        paillier_priv=priv,
        addresses={"eth": account_from_seed(os.urandom(32)).address},
    )


def test_a_hung_chain_read_never_holds_up_the_devnet_ledgers_blocks_or_queries(
    tmp_path: Path,
) -> None:
    """The solo ledger's producer asked its observer itself (whether a block is due, then
    under the lock every RPC query takes, for the block's attestation): a chain read that
    hangs (a node that stops answering) stopped the ledger making blocks, every transaction
    waiting, until it ended. Fails on main: b's registration never gets its block."""
    net = start_devnet(block_interval=0, ledger_params=ledger_params())
    entered, release = threading.Event(), threading.Event()
    try:
        client = LedgerClient(net.ledger.url, timeout=30)
        _register(tmp_path, "a", client)  # a registered node: each block asks for its bond
        height = client.status().height
        observer = net.ledger.chain.app.observer
        inner = getattr(observer, "inner", observer)
        assert isinstance(inner, AdapterObserver) and inner.vault is not None

        def hung(node: bytes, *args: Any) -> None:
            entered.set()
            release.wait(120)  # a chain RPC that does not answer (bounded: the test ends)

        inner.vault.observe_bond = hung  # type: ignore[method-assign]
        # the next block asks for the bond: the read hangs
        registering = threading.Thread(target=_register, args=(tmp_path, "b", client))
        registering.start()
        assert entered.wait(60), "the observer was never asked"
        # the ledger still answers, and makes blocks
        assert decode(client.abci_query("/params"))["foundation_bps"] == 1_000
        registering.join(60)
        assert not registering.is_alive()
        assert client.status().height > height  # b's registration made its block
    finally:
        release.set()
        net.stop()
