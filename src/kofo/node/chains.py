"""The node's chains: one adapter and one :class:`ChainPolicy` per ``[chains.*]`` table.

- Bitcoin-like chains (``btc``, ``ltc``) over Bitcoin Core's JSON-RPC or btcd's
  (:class:`~kofo.settlement.chains.bitcoin.backend.RpcBackend`); the keys are the wallet's,
  with ``home=`` so the per-swap key indexes persist across restarts (a key is never handed
  out twice).
- Ethereum over any JSON-RPC (web3.py's HTTP provider), locking in the configured HTLC
  contract, nonces journaled in the home; ERC-20 tokens by the symbols of
  ``[chains.eth.tokens]`` (assets ``eth:0x<token>``).

At start each chain is asked who it is and the node refuses to run on the wrong one, naming
both: a Bitcoin node's ``getblockchaininfo`` network against ``network``, an Ethereum node's
``eth_chainId`` against ``chain_id`` (when configured).

Policies: on regtest and on an Ethereum chain that is not a public network the devnet
policy (blocks on demand, margins of seconds), else the production defaults
(:data:`~kofo.settlement.terms.DEFAULT_POLICIES`); the configured ``confirmations`` replace
the policy's when larger (a node may wait deeper, never shallower than its policy on a public
chain).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from web3 import Web3

from kofo.errors import ConfigError
from kofo.node.config import BitcoinChainConfig, EthereumChainConfig, NodeConfig, Timing
from kofo.node.redact import public_url
from kofo.settlement.chain import ChainAdapter
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.terms import DEFAULT_POLICIES, ChainPolicy, devnet_policy
from kofo.wallet import NodeWallet

log = logging.getLogger("kofo.node.chains")

BITCOIN_NETWORK_NAMES = {
    # Core's getblockchaininfo "chain", then btcd's
    "main": "mainnet",
    "test": "testnet",
    "testnet4": "testnet",
    "regtest": "regtest",
    "mainnet": "mainnet",
    "testnet3": "testnet",
    "simnet": "regtest",
}
PUBLIC_ETH_CHAIN_IDS = {1: "mainnet", 11155111: "sepolia", 17000: "holesky", 560048: "hoodi"}
"""Ethereum chain ids that get the production policy (deep confirmations, minute margins)."""


class ChainMismatch(ConfigError):
    """A configured chain's RPC serves another network than the config names."""

    code = "chain_mismatch"


@dataclass(frozen=True, slots=True)
class Asset:
    """One tradable asset: ``btc``, ``eth``, ``eth:0x<token>``."""

    asset: str
    chain: str
    token: str | None
    symbol: str
    decimals: int


@dataclass
class Chains:
    adapters: dict[str, ChainAdapter]
    policies: dict[str, ChainPolicy]
    assets: dict[str, Asset]
    """By asset string (``eth:0x...`` for a token)."""
    symbols: dict[str, str]
    """Config names of assets (chain names and token symbols) -> asset strings."""

    def asset(self, name: str) -> Asset:
        """An asset by its asset string or its config name (``DUSD``)."""
        key = self.symbols.get(name, name)
        if key not in self.assets:
            raise ConfigError(f"asset {name!r} is not served by this node: {sorted(self.assets)}")
        return self.assets[key]


def _bitcoin(cfg: BitcoinChainConfig, wallet: NodeWallet, home: Path) -> BitcoinAdapter:
    client = RpcClient(
        cfg.rpc_url,
        cfg.rpc_user,
        cfg.rpc_password,
        dialect="btcd" if cfg.dialect == "btcd" else "core",
        cert_path=cfg.cert_path,
    )
    info = client.call("getblockchaininfo")
    served = BITCOIN_NETWORK_NAMES.get(str(info.get("chain", "")) if isinstance(info, dict) else "")
    if served != cfg.network:
        raise ChainMismatch(
            f"[chains.{cfg.chain}] network is {cfg.network!r} but {public_url(cfg.rpc_url)} serves "
            f"{info.get('chain') if isinstance(info, dict) else info!r}"
        )
    hd = wallet.bitcoin(cfg.chain, cfg.network, home=home)
    return BitcoinAdapter(RpcBackend(client), hd)


def _ethereum(cfg: EthereumChainConfig, wallet: NodeWallet, home: Path) -> EthereumAdapter:
    w3 = Web3(Web3.HTTPProvider(cfg.rpc_url, request_kwargs={"timeout": 30}))
    chain_id = int(w3.eth.chain_id)
    if cfg.chain_id is not None and chain_id != cfg.chain_id:
        raise ChainMismatch(
            f"[chains.{cfg.chain}] chain_id is {cfg.chain_id} but {public_url(cfg.rpc_url)} serves "
            f"chain id {chain_id}"
        )
    return EthereumAdapter(
        w3,
        wallet.eth_account(),
        cfg.htlc_contract,
        chain=cfg.chain,
        nonce_db=home / f"nonces-{cfg.chain}.sqlite",
        chain_id=cfg.chain_id,  # it signs for this chain only and re-checks on new heads
    )


def policy_for(
    cfg: BitcoinChainConfig | EthereumChainConfig, *, dev: bool, timing: Timing | None = None
) -> ChainPolicy:
    """The chain's policy: a development chain's from ``timing`` (``[timing]``
    ``dev_block_interval_s`` and ``dev_confirmations``), a public chain's production one."""
    height = isinstance(cfg, BitcoinChainConfig)
    timing = timing or Timing()
    base = (
        replace(
            devnet_policy(cfg.chain, height_clock=height),
            block_interval=timing.dev_block_interval_s,
            confirmations=timing.dev_confirmations,
        )
        if dev
        else DEFAULT_POLICIES[cfg.chain]
    )
    if cfg.confirmations > base.confirmations:
        base = replace(base, confirmations=cfg.confirmations)
    return base


def build_chains(config: NodeConfig, wallet: NodeWallet) -> Chains:
    """Connect to every configured chain (checking each serves the configured network) and
    build its adapter and policy. Raises :class:`ChainMismatch` or the RPC's error."""
    adapters: dict[str, ChainAdapter] = {}
    policies: dict[str, ChainPolicy] = {}
    assets: dict[str, Asset] = {}
    symbols: dict[str, str] = {}
    for name, cfg in config.chains.items():
        if isinstance(cfg, BitcoinChainConfig):
            adapters[name] = _bitcoin(cfg, wallet, config.home)
            policies[name] = policy_for(cfg, dev=cfg.network == "regtest", timing=config.timing)
            assets[name] = Asset(name, name, None, name.upper(), 8)
        else:
            eth = _ethereum(cfg, wallet, config.home)
            adapters[name] = eth
            chain_id = int(eth.w3.eth.chain_id)
            dev = chain_id not in PUBLIC_ETH_CHAIN_IDS
            policies[name] = policy_for(cfg, dev=dev, timing=config.timing)
            assets[name] = Asset(name, name, None, name.upper(), 18)
            for symbol, address in cfg.tokens.items():
                token = Web3.to_checksum_address(address)
                key = f"{name}:{token}"
                assets[key] = Asset(key, name, token, symbol, _decimals(eth.w3, token))
                symbols[symbol] = key
        symbols[name] = name
        log.info(
            "chain %s: %s, policy %s",
            name,
            type(adapters[name]).__name__,
            _policy_line(policies[name]),
        )
    return Chains(adapters, policies, assets, symbols)


_DECIMALS_ABI = [
    {
        "name": "decimals",
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint8"}],
    }
]


def _decimals(w3: Web3, token: str) -> int:
    try:
        return int(w3.eth.contract(address=token, abi=_DECIMALS_ABI).functions.decimals().call())  # type: ignore[call-overload]
    except Exception as exc:  # a token without decimals(): shown in base units
        log.warning("token %s: decimals() unreadable (%s); showing base units", token, exc)
        return 0


def _policy_line(p: ChainPolicy) -> str:
    unit = "blocks" if p.height_clock else "seconds"
    return f"{p.confirmations} confirmation(s), clock in {unit}, block interval {p.block_interval}s"
