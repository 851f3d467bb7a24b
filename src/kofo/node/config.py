"""The node home and its ``config.toml``: layout, typed config, validation.

A node home (Bitcoin Core's ``-datadir`` idea) holds everything of one node, nothing of it
lives elsewhere::

    HOME/            0700
      config.toml    0600  this file's schema (commented; `kofo init` writes it)
      wallet.json    0600  the encrypted seed (scrypt + AES-256-GCM, kofo.wallet)
      journal.sqlite 0600  the swap journal (settlement.journal), phases to come
      node.lock      0600  held (flock) by the running `kofo node`; holds its PID
      api.token      0600  the API's bearer token (full access; `kofo init` writes it)
      api.readonly.token 0600  the API's read-only bearer token (GET only)

Every key is checked when the file is read: an unknown key, a wrong type or a bad value is a
:class:`~kofo.errors.ConfigError` naming the file, the table and the key.
"""

from __future__ import annotations

import ipaddress
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kofo.errors import ConfigError

CONFIG_FILE = "config.toml"
WALLET_FILE = "wallet.json"
JOURNAL_FILE = "journal.sqlite"
LOCK_FILE = "node.lock"

BITCOIN_LIKE = ("btc", "ltc")
NETWORKS = ("mainnet", "testnet", "regtest")
DIALECTS = ("core", "btcd")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_P2P_PORT = 9730
DEFAULT_API_PORT = 9731
MAX_CONFIRMATIONS = 100
"""Above this a swap's timelocks (docs/swap.md) cannot cover the wait; a typo, not a policy."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    url: str
    """CometBFT RPC of a validator, or the solo ledger's (``kofo devnet``)."""
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class BitcoinChainConfig:
    chain: str
    """``btc`` or ``ltc``."""
    rpc_url: str
    rpc_user: str
    rpc_password: str = field(repr=False)
    network: str = "regtest"
    dialect: str = "core"
    cert_path: str | None = None
    confirmations: int = 1


@dataclass(frozen=True, slots=True)
class EthereumChainConfig:
    chain: str
    rpc_url: str
    htlc_contract: str
    """The deployed HTLC contract (``contracts/``) the node locks in."""
    confirmations: int = 1
    tokens: dict[str, str] = field(default_factory=dict)
    """ERC-20 symbol -> contract address, for offers in tokens."""
    chain_id: int | None = None
    """The chain id (EIP-155) the node must serve: the Ethereum adapter refuses a node on any
    other chain and signs for this one only (``EthereumAdapter(chain_id=...)``). Unset: the
    node's answer at start is taken (devnets)."""


ChainConfig = BitcoinChainConfig | EthereumChainConfig


@dataclass(frozen=True, slots=True)
class ApiTlsConfig:
    """The API's TLS certificate and key (PEM files). Required to bind the API beyond
    loopback: its bearer token must never cross a network in clear."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class OfferConfig:
    """A standing offer (the exchange's ``Offer``): for ``n`` base units of ``buy`` the maker
    pays ``n * price_num // price_den - fee`` base units of ``sell``."""

    buy: str
    sell: str
    price_num: int
    price_den: int
    min_in: int
    max_in: int
    fee: int = 0
    partial: bool = True
    ttl: int = 3_600
    """Seconds an announcement stays valid; the node re-announces before it lapses."""


@dataclass(frozen=True, slots=True)
class BondConfig:
    """The maker's bond (``[bond]``): ``amount`` wei locked in the bond vault
    (``contracts/BondVault.vy`` at ``vault`` on chain ``chain``) under the node id; 0: none."""

    chain: str = "eth"
    vault: str = ""
    amount: int = 0


@dataclass(frozen=True, slots=True)
class Timing:
    """The network's time constants (``[timing]``). Without the table a node keeps the
    production values (the exchange's :data:`~kofo.exchange.route.LOCK_WINDOW_S` and
    :data:`~kofo.exchange.route.LEG_EXPIRY_STEP_S`, the engine's
    :data:`~kofo.settlement.terms.ACCEPT_WINDOW_SECONDS`); ``kofo devnet --fast-timing``
    writes its own (``kofo.node.devnet.DEVNET_TIMING``) into the configs it funds, with the
    ledger's ``attest_grace`` and ``min_expiry_gap`` at genesis from the same place.
    ``lock_window_s`` is a protocol value every co-signer checks orders against (link protocol
    v4): all nodes of one network must agree on it. docs/node.md ("Timing") gives the
    arithmetic that keeps each safety relation with the devnet values."""

    lock_window_s: int = 600
    """The taker locks within this of the order's time; the maker's ``lock_by`` follows."""
    leg_expiry_step_s: int = 3_600
    """The taker's leg expires at least this after the maker's (``T_A - T_B``); the ledger's
    ``min_expiry_gap`` must not exceed it."""
    accept_window_s: int = 300
    """The engine's proposal window: the maker answers and the taker locks within it."""
    dev_block_interval_s: int = 1
    """Seconds a block of a development chain (regtest, a non-public EVM) takes in this node's
    policy (``kofo.settlement.terms.devnet_policy``); public chains keep their own."""
    dev_confirmations: int = 1
    """Confirmations on a development chain (a ``[chains.*] confirmations`` may ask more)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    home: Path
    name: str
    log_level: str
    ledger: LedgerConfig
    p2p_listen: Endpoint
    bootstrap: tuple[Endpoint, ...]
    api: Endpoint
    chains: dict[str, ChainConfig]
    offers: tuple[OfferConfig, ...]
    bond: BondConfig = field(default_factory=BondConfig)
    timing: Timing = field(default_factory=Timing)
    api_tls: ApiTlsConfig | None = None
    discover: bool = True
    """``[p2p] discover``: learn peers from peers and keep a target degree (the default);
    false links only the ``bootstrap`` peers and those that dial in (a fixed topology): no
    address is learned, so a dropped bootstrap link is redialled, never replaced."""
    target_degree: int = 4
    """``[p2p] target_degree``: links the exchange node dials and keeps (1..16)."""
    feeler_s: float = 2.0
    """``[p2p] feeler_s``: seconds between feeler dials to peers it has no link to, once at
    ``target_degree`` (0: none; with ``target_degree = 1`` a node keeps its one bootstrap link:
    a fixed topology, e.g. a node reached only through relays)."""

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_FILE

    @property
    def wallet_path(self) -> Path:
        return self.home / WALLET_FILE

    @property
    def journal_path(self) -> Path:
        return self.home / JOURNAL_FILE

    @property
    def lock_path(self) -> Path:
        return self.home / LOCK_FILE


# -- reading ---------------------------------------------------------------------------------


class _Table:
    """One TOML table, read key by key; :meth:`done` refuses keys nobody read."""

    def __init__(self, path: Path, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [{name}] must be a table, got {type(data).__name__}")
        self.path, self.name, self.data = path, name, data
        self._read: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.path}: [{self.name}] {key}"

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._where(key)} {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self._read.add(key)
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "is required")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"must be {_kind_name(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {_kind_name(kinds)}, got {value!r}")
        return value

    def sub(self, key: str) -> _Table:
        self._read.add(key)
        return _Table(self.path, f"{self.name}.{key}" if self.name else key, self.data.get(key, {}))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            where = f"[{self.name}]" if self.name else "top level"
            raise ConfigError(f"{self.path}: unknown key(s) {', '.join(unknown)} in {where}")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names.update({list: "a list", dict: "a table"})
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _url(t: _Table, key: str) -> str:
    value: str = t.get(key, str)
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise t.fail(key, f"must be an http(s)://host:port URL, got {value!r}")
    try:
        parsed.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise t.fail(key, f"has a bad port: {value!r}") from None
    return value


def _positive_int(t: _Table, key: str, default: Any = ..., *, zero: bool = False) -> int:
    value: int = t.get(key, int, default)
    if value < 0 or (value == 0 and not zero):
        raise t.fail(key, f"must be {'>= 0' if zero else '> 0'}, got {value}")
    return value


def parse_endpoint(text: str, what: str) -> Endpoint:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be host:port with a port 1-65535, got {text!r}")
    return Endpoint(host.strip("[]"), int(port))


def _endpoint(t: _Table, key: str, default: str, *, loopback: bool) -> Endpoint:
    text: str = t.get(key, str, default)
    try:
        ep = parse_endpoint(text, "")
    except ConfigError:
        raise t.fail(key, f"must be host:port with a port 1-65535, got {text!r}") from None
    if loopback and not _is_loopback(ep.host):
        raise t.fail(
            key,
            f"must be a loopback address (127.0.0.1, ::1, localhost), got {text!r}"
            + (" (or set tls_cert and tls_key to serve TLS)" if key == "bind" else ""),
        )
    return ep


def _home_path(home: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else home / path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _chain(t: _Table, name: str) -> ChainConfig:
    confirmations = _positive_int(t, "confirmations", 1)
    if confirmations > MAX_CONFIRMATIONS:
        raise t.fail("confirmations", f"must be at most {MAX_CONFIRMATIONS}, got {confirmations}")
    if name in BITCOIN_LIKE:
        network = t.get("network", str, "regtest")
        if network not in NETWORKS:
            raise t.fail("network", f"must be one of {', '.join(NETWORKS)}, got {network!r}")
        dialect = t.get("dialect", str, "core")
        if dialect not in DIALECTS:
            raise t.fail("dialect", f"must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        return BitcoinChainConfig(
            chain=name,
            rpc_url=_url(t, "rpc_url"),
            rpc_user=t.get("rpc_user", str),
            rpc_password=t.get("rpc_password", str),
            network=network,
            dialect=dialect,
            cert_path=t.get("cert_path", str, None),
            confirmations=confirmations,
        )
    if name == "eth":
        contract = t.get("htlc_contract", str)
        if not _is_address(contract):
            raise t.fail(
                "htlc_contract", f"must be a 0x-prefixed 20-byte address, got {contract!r}"
            )
        tokens_t = t.sub("tokens")
        tokens: dict[str, str] = {}
        for symbol in list(tokens_t.data):
            address = tokens_t.get(symbol, str)
            if not _is_address(address):
                raise tokens_t.fail(symbol, f"must be a 0x-prefixed 20-byte address: {address!r}")
            tokens[symbol] = address
        tokens_t.done()
        chain_id = t.get("chain_id", int, None)
        if chain_id is not None and not 0 < chain_id < 2**64:
            raise t.fail("chain_id", f"must be a positive chain id (EIP-155), got {chain_id}")
        return EthereumChainConfig(
            name, _url(t, "rpc_url"), contract, confirmations, tokens, chain_id
        )
    raise ConfigError(f"{t.path}: [chains.{name}] is not a chain KOFO settles (btc, ltc, eth)")


def _is_address(text: str) -> bool:
    if not (text.startswith("0x") and len(text) == 42):
        return False
    try:
        bytes.fromhex(text[2:])
    except ValueError:
        return False
    return True


def _offer(t: _Table, assets: set[str]) -> OfferConfig:
    buy, sell = t.get("buy", str), t.get("sell", str)
    for key, asset in (("buy", buy), ("sell", sell)):
        if asset not in assets:
            raise t.fail(key, f"is {asset!r}, not an asset of a configured chain: {sorted(assets)}")
    if buy == sell:
        raise t.fail("sell", f"must differ from buy ({buy!r})")
    min_in, max_in = _positive_int(t, "min_in"), _positive_int(t, "max_in")
    if min_in > max_in:
        raise t.fail("min_in", f"({min_in}) must not exceed max_in ({max_in})")
    offer = OfferConfig(
        buy=buy,
        sell=sell,
        price_num=_positive_int(t, "price_num"),
        price_den=_positive_int(t, "price_den"),
        min_in=min_in,
        max_in=max_in,
        fee=_positive_int(t, "fee", 0, zero=True),
        partial=t.get("partial", bool, True),
        ttl=_positive_int(t, "ttl", 3_600),
    )
    t.done()
    return offer


def load_config(home: Path) -> NodeConfig:
    """Read and validate ``HOME/config.toml``."""
    path = home / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {CONFIG_FILE} in {home}; create the home with `kofo init`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(home, raw, path)


def parse_config(home: Path, raw: dict[str, Any], path: Path | None = None) -> NodeConfig:
    path = path or home / CONFIG_FILE
    top = _Table(path, "", raw)

    node = top.sub("node")
    name = node.get("name", str, "kofo")
    log_level = node.get("log_level", str, "info")
    if log_level not in LOG_LEVELS:
        raise node.fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    node.done()

    ledger_t = top.sub("ledger")
    timeout = ledger_t.get("timeout", (int, float), 10.0)
    if not 0 < timeout <= 600:
        raise ledger_t.fail("timeout", f"must be in (0, 600] seconds, got {timeout}")
    ledger = LedgerConfig(_url(ledger_t, "url"), float(timeout))
    ledger_t.done()

    p2p = top.sub("p2p")
    listen = _endpoint(p2p, "listen", f"127.0.0.1:{DEFAULT_P2P_PORT}", loopback=False)
    peers: list[Any] = p2p.get("bootstrap", list, [])
    bootstrap = []
    for i, peer in enumerate(peers):
        if not isinstance(peer, str):
            raise p2p.fail(f"bootstrap[{i}]", f"must be a string host:port, got {peer!r}")
        try:
            bootstrap.append(parse_endpoint(peer, ""))
        except ConfigError:
            raise p2p.fail(f"bootstrap[{i}]", f"must be host:port, got {peer!r}") from None
    discover: bool = p2p.get("discover", bool, True)
    target_degree = p2p.get("target_degree", int, 4)
    if not 1 <= target_degree <= 16:
        raise p2p.fail("target_degree", f"must be in 1..16, got {target_degree}")
    feeler_s = p2p.get("feeler_s", (int, float), 2.0)
    if not 0 <= feeler_s <= 3_600:
        raise p2p.fail("feeler_s", f"must be in 0..3600 seconds, got {feeler_s}")
    p2p.done()

    api_t = top.sub("api")
    tls_cert, tls_key = api_t.get("tls_cert", str, ""), api_t.get("tls_key", str, "")
    if bool(tls_cert) != bool(tls_key):
        raise api_t.fail("tls_cert" if not tls_cert else "tls_key", "is required with the other")
    api_tls = None
    if tls_cert:
        api_tls = ApiTlsConfig(_home_path(home, tls_cert), _home_path(home, tls_key))
    api = _endpoint(api_t, "bind", f"127.0.0.1:{DEFAULT_API_PORT}", loopback=api_tls is None)
    api_t.done()

    chains_t = top.sub("chains")
    chains: dict[str, ChainConfig] = {}
    for chain_name in list(chains_t.data):
        sub = chains_t.sub(chain_name)
        chains[chain_name] = _chain(sub, chain_name)
        sub.done()
    chains_t.done()

    bond_t = top.sub("bond")
    bond = BondConfig(
        chain=bond_t.get("chain", str, "eth"),
        vault=bond_t.get("vault", str, ""),
        amount=_positive_int(bond_t, "amount", 0, zero=True),
    )
    if bond.vault and not _is_address(bond.vault):
        raise bond_t.fail("vault", f"must be a 0x-prefixed 20-byte address, got {bond.vault!r}")
    if bond.amount and not bond.vault:
        raise bond_t.fail("amount", "needs the bond vault's address in bond.vault")
    if bond.amount and not isinstance(chains.get(bond.chain), EthereumChainConfig):
        raise bond_t.fail("chain", f"must name a configured Ethereum chain, got {bond.chain!r}")
    if bond.amount >= 2**256:
        raise bond_t.fail("amount", "must be below 2^256 wei")
    bond_t.done()

    timing_t = top.sub("timing")
    default = Timing()
    timing = Timing(
        lock_window_s=_positive_int(timing_t, "lock_window_s", default.lock_window_s),
        leg_expiry_step_s=_positive_int(timing_t, "leg_expiry_step_s", default.leg_expiry_step_s),
        accept_window_s=_positive_int(timing_t, "accept_window_s", default.accept_window_s),
        dev_block_interval_s=_positive_int(
            timing_t, "dev_block_interval_s", default.dev_block_interval_s
        ),
        dev_confirmations=_positive_int(timing_t, "dev_confirmations", default.dev_confirmations),
    )
    if timing.dev_confirmations > MAX_CONFIRMATIONS:
        raise timing_t.fail(
            "dev_confirmations",
            f"must be at most {MAX_CONFIRMATIONS}, got {timing.dev_confirmations}",
        )
    if timing.accept_window_s > timing.lock_window_s:
        raise timing_t.fail(
            "accept_window_s",
            f"must not exceed lock_window_s {timing.lock_window_s} (the taker proposes after "
            f"the commit and must lock within the lock window), got {timing.accept_window_s}",
        )
    timing_t.done()

    assets = set(chains)
    for c in chains.values():
        if isinstance(c, EthereumChainConfig):
            assets |= set(c.tokens)
    top._read.add("offers")
    offers_raw = raw.get("offers", [])
    if not isinstance(offers_raw, list):
        raise ConfigError(f"{path}: offers must be an array of tables ([[offers]])")
    offers = tuple(
        _offer(_Table(path, f"offers[{i}]", o), assets) for i, o in enumerate(offers_raw)
    )
    top.done()
    return NodeConfig(
        home=home,
        name=name,
        log_level=log_level,
        ledger=ledger,
        p2p_listen=listen,
        bootstrap=tuple(bootstrap),
        discover=discover,
        api=api,
        chains=chains,
        offers=offers,
        api_tls=api_tls,
        bond=bond,
        timing=timing,
        target_degree=target_degree,
        feeler_s=float(feeler_s),
    )


# -- writing ---------------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(
    *,
    name: str,
    ledger_url: str,
    chains: dict[str, dict[str, Any]] | None = None,
    bond: dict[str, Any] | None = None,
    timing: dict[str, int] | None = None,
    p2p_listen: str = f"127.0.0.1:{DEFAULT_P2P_PORT}",
    api_bind: str = f"127.0.0.1:{DEFAULT_API_PORT}",
) -> str:
    """The commented ``config.toml`` ``kofo init`` writes. ``chains`` maps a chain name to its
    keys (as ``kofo devnet --json`` prints them); without it the chain tables are examples in
    comments."""
    lines = [
        "# KOFO node configuration, written by `kofo init`. Read by `kofo node --home DIR`.",
        "# Every key is checked at start: an unknown key or a bad value stops the node with",
        "# an error naming it. Paths of the wallet, journal and lock file are fixed inside the",
        "# home (see docs/node.md).",
        "",
        "[node]",
        f"name = {_toml_str(name)}        # shown in logs; never sent to peers",
        'log_level = "info"   # debug | info | warning | error',
        "",
        "[ledger]",
        "# The clearance ledger: a CometBFT validator's RPC, or the solo ledger of `kofo devnet`.",
        f"url = {_toml_str(ledger_url)}",
        "timeout = 10.0       # seconds per ledger RPC call",
        "",
        "[p2p]",
        "# Where this node accepts peers, and the peers it dials first (host:port).",
        f"listen = {_toml_str(p2p_listen)}",
        "bootstrap = []",
        "discover = true     # false: link only the bootstrap peers (a fixed topology)",
        "target_degree = 4    # links this node dials and keeps (1..16)",
        "feeler_s = 2.0       # seconds between dials to new peers once at target (0: none)",
        "",
        "[api]",
        "# The node's REST + WebSocket API (docs/api.md). Clients authenticate with the",
        "# bearer tokens in this home (api.token; api.readonly.token may only read).",
        "# A non-loopback bind needs TLS: set tls_cert and tls_key (PEM files).",
        f"bind = {_toml_str(api_bind)}",
        '# tls_cert = "api-cert.pem"',
        '# tls_key = "api-key.pem"',
        "",
        "# One table per chain this node settles on: btc, ltc (Bitcoin Core or btcd RPC), eth.",
    ]
    if chains:
        for chain, keys in chains.items():
            lines += ["", f"[chains.{chain}]"]
            for key, value in keys.items():
                if isinstance(value, dict):
                    continue
                if isinstance(value, bool):
                    lines.append(f"{key} = {'true' if value else 'false'}")
                elif isinstance(value, int):
                    lines.append(f"{key} = {value}")
                else:
                    lines.append(f"{key} = {_toml_str(str(value))}")
            for key, value in keys.items():
                if isinstance(value, dict):
                    lines += ["", f"[chains.{chain}.{key}]"]
                    lines += [f"{k} = {_toml_str(str(v))}" for k, v in value.items()]
    else:
        lines += [
            "#",
            "# [chains.btc]",
            '# rpc_url = "http://127.0.0.1:18443"',
            '# rpc_user = "kofo"',
            '# rpc_password = "..."',
            '# network = "regtest"   # mainnet | testnet | regtest',
            '# dialect = "core"      # core | btcd (btcd also wants cert_path)',
            "# confirmations = 1",
            "#",
            "# [chains.eth]",
            '# rpc_url = "http://127.0.0.1:8545"',
            '# htlc_contract = "0x..."   # the deployed contracts/HTLC',
            "# chain_id = 1              # EIP-155; a node on another chain is refused",
            "# confirmations = 1",
            "# [chains.eth.tokens]",
            '# DUSD = "0x..."            # ERC-20 symbol = contract address',
        ]
    bond = bond or {}
    lines += [
        "",
        "[bond]",
        "# A maker's bond: wei locked in the bond vault under this node's id at start (once;",
        "# the ledger counts it when its validators see it in the vault). 0: no bond.",
        f"chain = {_toml_str(str(bond.get('chain', 'eth')))}",
        f"vault = {_toml_str(str(bond.get('vault', '')))}",
        f"amount = {int(bond.get('amount', 0))}",
    ]
    if timing:
        lines += [
            "",
            "[timing]",
            "# The network's time constants, written by `kofo devnet --fast-timing` (seconds).",
            "# Every node of one network uses the same values; without this table a node",
            "# keeps the production ones (lock window 600, leg expiry step 3600, accept 300).",
        ]
        lines += [f"{k} = {int(v)}" for k, v in timing.items()]
    lines += [
        "",
        "# Standing offers (maker). For n base units of `buy` the node pays",
        "# n * price_num // price_den - fee base units of `sell`; amounts are base units.",
        "#",
        "# [[offers]]",
        '# buy = "btc"',
        '# sell = "eth"',
        "# price_num = 200_000_000_000  # wei per satoshi",
        "# price_den = 1",
        "# min_in = 100_000",
        "# max_in = 10_000_000",
        "# fee = 0",
        "# partial = true",
        "# ttl = 3600                 # seconds an announcement stays valid",
        "",
    ]
    return "\n".join(lines)
