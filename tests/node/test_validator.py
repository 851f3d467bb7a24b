"""`python -m kofo.node.validator`: the ABCI server with the validator's chain observer wired by
default whenever its config names chain RPC URLs (issue 17 item: no `--observe` needed)."""

from __future__ import annotations

import hashlib
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
from kofo.wire.attest import (
    OBSERVER_METHODS,
    BondObservation,
    ChainTip,
    ChainUnreadable,
    ExecutedDecision,
    LegRef,
    Observation,
)
from kofo.wire.codec import decode
from kofo.wire.orders import LegOutcome
from tests.clearance.helpers import Party, ledger_params

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


class _Recorded:
    """A complete ChainObserver over a table (the tests' SeenChains) that records the thread of
    each read."""

    def __init__(self) -> None:
        from tests.clearance.helpers import SeenChains

        self.chains = SeenChains()
        self.readers: dict[str, set[int]] = {m: set() for m in OBSERVER_METHODS}

    def _read(self, method: str, *args: Any) -> Any:
        self.readers[method].add(threading.get_ident())
        return getattr(self.chains, method)(*args)

    def observe(self, ref: LegRef) -> Observation | None:
        seen: Observation | None = self._read("observe", ref)
        return seen

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        seen: BondObservation | None = self._read("observe_bond", node, step)
        return seen

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        seen: ExecutedDecision | None = self._read("observe_decision", decision, step)
        return seen

    def observe_tips(self) -> list[ChainTip]:
        seen: list[ChainTip] = self._read("observe_tips")
        return seen


def test_the_prefetching_observer_answers_every_chain_observer_method_off_the_callers_thread() -> (
    None
):
    """The devnet's solo ledger and ``kofo.node.validator`` observe through the prefetching
    wrapper. It forwarded ``observe`` and ``observe_bond`` only: the app asked for
    ``observe_decision`` with ``getattr``, found none, and a vault execution was never attested
    (a relayed slash stayed in ``slash_pending`` forever; tests/node/test_bonds.py timed out).
    Every method of the protocol is asked here, so one added later is covered too. Fails on
    main: the wrapper has no ``observe_decision``."""
    from tests.clearance.helpers import make_order

    inner = _Recorded()
    order = make_order([Party.make(i) for i in range(3)])
    ref = LegRef(order.order_id, 0, order.legs[0], order.payment_hash)
    node, decision = os.urandom(32), hashlib.sha256(b"a decision").digest()
    inner.chains.see(order, 0, LegOutcome.LOCKED, height=7)
    inner.chains.see_bond(node, 10**17, 8)
    inner.chains.see_executed(decision, 8)
    inner.chains.tips["btc"] = 9
    asks: dict[str, tuple[Any, ...]] = {
        "observe": (ref,),
        "observe_bond": (node, 1),
        "observe_decision": (decision, 1),
        "observe_tips": (),
    }
    assert set(asks) == set(OBSERVER_METHODS)
    observer = validator.PrefetchingObserver(inner, refresh_s=0.01)
    try:
        for method, args in asks.items():
            want = getattr(inner.chains, method)(*args)
            assert want
            for _ in range(6_000):  # bounded: the worker reads each round (0.01 s apart)
                try:
                    got = getattr(observer, method)(*args)
                except ChainUnreadable:  # a leg not read yet
                    got = None
                if got:
                    break
                time.sleep(0.01)
            assert got == want, method
            assert inner.readers[method] and threading.get_ident() not in inner.readers[method]
    finally:
        observer.close()


def _until(read: Any) -> Any:
    """``read()`` once the prefetching worker has read it (bounded: 60 s of 0.01 s rounds)."""
    for _ in range(6_000):
        try:
            return read()
        except ChainUnreadable:
            time.sleep(0.01)
    raise AssertionError("never read")


def test_the_prefetching_observer_tells_a_failed_or_pending_read_from_no_lock() -> None:
    """A validator's failed chain read is not a look that saw no lock (issue 17): the wrapper
    answered None for a leg it had not read yet and kept None when its reads failed, and the
    ledger counted that as "looked after the deadline, no lock" (``missed_at``: the sender
    slashed though it locked in time). Now it raises ChainUnreadable until a read succeeds and
    again once one fails, and still gives a fact it read before the failure. Fails on main:
    the first ask answers None."""
    from tests.clearance.helpers import make_order

    inner = _Recorded()
    order = make_order([Party.make(i) for i in range(3)])
    empty = LegRef(order.order_id, 0, order.legs[0], order.payment_hash)  # btc, no lock
    locked = LegRef(order.order_id, 2, order.legs[2], order.payment_hash)  # btc, locked
    inner.chains.see(order, 2, LegOutcome.LOCKED, height=7)
    observer = validator.PrefetchingObserver(inner, refresh_s=0.01)
    try:
        with pytest.raises(ChainUnreadable):
            observer.observe(empty)  # not read yet: nothing is known
        assert _until(lambda: observer.observe(empty)) is None  # read: no lock there
        assert _until(lambda: observer.observe(locked)) == inner.chains.facts[(order.order_id, 2)]
        inner.chains.blind.add("btc")  # btc's node goes down
        for _ in range(6_000):  # bounded: until a failed read is recorded
            try:
                observer.observe(empty)
            except ChainUnreadable:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("a failed read still answered 'no lock'")
        assert observer.observe(locked) == inner.chains.facts[(order.order_id, 2)]
    finally:
        observer.close()
