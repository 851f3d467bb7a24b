"""`kofo init` homes, config validation and the one-node-per-home lock (in process)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import tomllib

import pytest

from kofo.errors import ConfigError, WalletError
from kofo.node.config import load_config, parse_config, render_config
from kofo.node.home import HomeLock, NodeAlreadyRunning, init_home
from kofo.wallet import NodeWallet

PASS = "correct horse battery"

DEVNET_CHAINS = {
    "btc": {
        "rpc_url": "http://127.0.0.1:18443",
        "rpc_user": "kofo",
        "rpc_password": "secret",
        "network": "regtest",
        "dialect": "core",
    },
    "eth": {
        "rpc_url": "http://127.0.0.1:8545",
        "htlc_contract": "0x" + "11" * 20,
        "tokens": {"DUSD": "0x" + "22" * 20},
    },
}


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_writes_a_private_home_whose_config_loads(tmp_path):
    home = tmp_path / "alice"
    config, created = init_home(
        home, PASS, name="alice", ledger_url="http://127.0.0.1:26657", chains=DEVNET_CHAINS
    )
    assert created
    assert _mode(home) == 0o700
    for f in ("config.toml", "wallet.json", "journal.sqlite"):
        assert _mode(home / f) == 0o600, f
    loaded = load_config(home)
    assert loaded == config
    assert loaded.name == "alice" and loaded.ledger.url == "http://127.0.0.1:26657"
    assert loaded.chains["btc"].rpc_password == "secret"  # type: ignore[union-attr]
    assert loaded.chains["eth"].tokens == {"DUSD": "0x" + "22" * 20}  # type: ignore[union-attr]
    assert str(loaded.api) == "127.0.0.1:9731"
    NodeWallet.open(loaded.wallet_path, PASS)
    assert "secret" not in repr(loaded)  # a chain password never reaches a log line


def test_init_refuses_an_existing_home_and_force_never_overwrites_the_wallet(tmp_path):
    home = tmp_path / "h"
    init_home(home, PASS)
    address = NodeWallet.open(home / "wallet.json", PASS).eth_account().address
    wallet_bytes = (home / "wallet.json").read_bytes()
    with pytest.raises(ConfigError, match="not empty"):
        init_home(home, PASS)
    with pytest.raises(WalletError):  # --force with another passphrase: the wallet is not ours
        init_home(home, "another passphrase", force=True)
    _, created = init_home(home, PASS, name="renamed", force=True)
    assert not created
    assert (home / "wallet.json").read_bytes() == wallet_bytes
    assert NodeWallet.open(home / "wallet.json", PASS).eth_account().address == address
    assert load_config(home).name == "renamed"


def _config(**tables):
    raw = tomllib.loads(render_config(name="n", ledger_url="http://127.0.0.1:1"))
    for table, values in tables.items():
        raw.setdefault(table, {}).update(values)
    return raw


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"ledger": {"urll": "x"}}, r"unknown key\(s\) urll in \[ledger\]"),
        ({"ledger": {"url": "ftp://x"}}, r"\[ledger\] url must be an http\(s\)://host:port URL"),
        ({"ledger": {"timeout": "10"}}, r"\[ledger\] timeout must be an integer or a number"),
        ({"ledger": {"timeout": 0}}, r"\[ledger\] timeout must be in \(0, 600\]"),
        ({"api": {"bind": "0.0.0.0:9731"}}, r"\[api\] bind must be a loopback address"),
        ({"p2p": {"listen": "127.0.0.1"}}, r"\[p2p\] listen must be host:port"),
        ({"p2p": {"bootstrap": [7]}}, r"\[p2p\] bootstrap\[0\] must be a string"),
        ({"p2p": {"discover": "no"}}, r"\[p2p\] discover must be"),
        ({"p2p": {"target_degree": 0}}, r"\[p2p\] target_degree must be in 1..16, got 0"),
        ({"p2p": {"target_degree": True}}, r"\[p2p\] target_degree must be an integer"),
        ({"p2p": {"feeler_s": -1}}, r"\[p2p\] feeler_s must be in 0..3600 seconds"),
        ({"node": {"log_level": "loud"}}, r"\[node\] log_level must be one of"),
        ({"chains": {"doge": {}}}, r"\[chains.doge\] is not a chain KOFO settles"),
        (
            {"chains": {"btc": {"rpc_url": "http://127.0.0.1:1", "rpc_user": "u"}}},
            r"\[chains.btc\] rpc_password is required",
        ),
        (
            {"chains": {"eth": {"rpc_url": "http://127.0.0.1:1", "htlc_contract": "0x12"}}},
            r"\[chains.eth\] htlc_contract must be a 0x-prefixed 20-byte address",
        ),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(tmp_path, tables, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tmp_path, _config(**tables))


def test_p2p_discover_false_dials_only_the_bootstrap_peers(tmp_path):
    """``[p2p] discover = false`` (a fixed topology, ``make demo``'s): the exchange keeps as
    many links as there are bootstrap peers and sends no feelers to learned addresses."""
    from kofo.node.daemon import Node

    assert parse_config(tmp_path, _config()).discover is True
    peers = ["127.0.0.1:7001", "127.0.0.1:7002"]
    home = tmp_path / "h"
    init_home(home, PASS, name="n")
    cfg = parse_config(home, _config(p2p={"bootstrap": peers, "discover": False}))
    assert cfg.discover is False
    node = Node(cfg, NodeWallet.open(home / "wallet.json", PASS), passphrase=PASS)
    node._fresh_addresses = dict  # no chains in this test: the addresses do not matter
    ex = node._exchange_config()
    assert ex.target_degree == 2 and ex.feeler_s == 0 and ex.discover is False
    assert ex.bootstrap == [("127.0.0.1", 7001), ("127.0.0.1", 7002)]
    other = Node(
        parse_config(home, _config(p2p={"bootstrap": peers})), node.wallet, passphrase=PASS
    )
    other._fresh_addresses = dict
    default = other._exchange_config()
    assert default.target_degree == 4 and default.feeler_s > 0 and default.discover is True


def test_p2p_discover_false_keeps_the_line_when_its_relay_goes_down(tmp_path):
    """taker - relay - maker, taker and maker with ``[p2p] discover = false``: the relay's
    answer to the taker's peers request names the maker, yet with the relay down neither end
    dials the other to make up its degree (the line is the topology: a taker linked to its
    maker gets a direct quote, 1 hop, no relay share). Before, the learned address was
    dialled as soon as the bootstrap link dropped: the crash module's pairs case saw a trade
    go direct after ``relay2`` restarted and the maker linked the taker."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kofo.exchange.node import ExchangeConfig, ExchangeNode
    from kofo.node.daemon import Node
    from tests.exchange.helpers import stop_all, wait_until

    home = tmp_path / "h"
    init_home(home, PASS, name="n")

    async def main() -> None:
        relay = ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0))
        await relay.start()
        nodes = [relay]
        try:
            at = ("127.0.0.1", relay.port)
            raw = _config(p2p={"bootstrap": [f"{at[0]}:{at[1]}"], "discover": False})
            node = Node(parse_config(home, raw), NodeWallet.open(home / "wallet.json", PASS),
                        passphrase=PASS)  # fmt: skip
            node._fresh_addresses = dict  # no chains in this test
            cfg = node._exchange_config()
            cfg.port, cfg.maintain_s, cfg.backoff_max_s = 0, 0.05, 0.5
            maker = ExchangeNode(Ed25519PrivateKey.generate(), dataclasses.replace(cfg))
            await maker.start()
            nodes.append(maker)
            await wait_until(lambda: maker.node_id in relay.links, 10)
            taker = ExchangeNode(Ed25519PrivateKey.generate(), dataclasses.replace(cfg))
            await taker.start()
            nodes.append(taker)
            # linked, and the relay's peers answer (naming the maker) handled
            await wait_until(lambda: relay.node_id in taker.links, 10)
            link = taker.links[relay.node_id]
            await wait_until(lambda: link not in taker._asked, 10)
            assert relay.links[maker.node_id].peer_port  # the relay could name the maker
            await relay.stop()
            # each end retries its relay several times (or, the bug, links the other end)
            await wait_until(
                lambda: all(
                    n._backoff.get(at, (0, 0.0))[0] >= 3 or n.links for n in (taker, maker)
                ),
                30,
            )
            assert not taker.links and not maker.links, (taker.links, maker.links)
        finally:
            await stop_all(nodes)

    asyncio.run(main())


def test_offers_are_checked_against_the_configured_chains(tmp_path):
    raw = _config(chains=DEVNET_CHAINS)
    offer = {"buy": "btc", "sell": "eth", "price_num": 3, "price_den": 1}
    raw["offers"] = [{**offer, "min_in": 10, "max_in": 100}]
    assert parse_config(tmp_path, raw).offers[0].max_in == 100
    raw["offers"] = [{**offer, "sell": "DUSD", "min_in": 10, "max_in": 100, "fee": -1}]
    with pytest.raises(ConfigError, match=r"\[offers\[0\]\] fee must be >= 0"):
        parse_config(tmp_path, raw)
    raw["offers"] = [{**offer, "sell": "ltc", "min_in": 10, "max_in": 100}]
    with pytest.raises(ConfigError, match=r"\[offers\[0\]\] sell is 'ltc', not an asset"):
        parse_config(tmp_path, raw)
    raw["offers"] = [{**offer, "min_in": 100, "max_in": 10}]
    with pytest.raises(ConfigError, match=r"min_in \(100\) must not exceed max_in \(10\)"):
        parse_config(tmp_path, raw)


def test_a_missing_or_broken_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="kofo init"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_text("[ledger\nurl=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)


def test_a_second_holder_of_the_home_lock_is_refused_with_the_holders_pid(tmp_path):
    with HomeLock(tmp_path):
        with pytest.raises(NodeAlreadyRunning, match=rf"PID {os.getpid()}\b"):
            HomeLock(tmp_path).acquire()
    with HomeLock(tmp_path):  # released: the next node takes it
        pass
