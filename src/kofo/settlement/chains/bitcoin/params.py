"""Parameters that differ between Bitcoin-like chains (the adapter code does not)."""

from __future__ import annotations

from dataclasses import dataclass

from kofo.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ChainParams:
    """One Bitcoin-like network.

    Fee numbers are integers in the chain's base unit per virtual byte (sat/vB).
    """

    chain: str
    network: str
    bech32_hrp: str
    bip44_coin_type: int
    min_relay_fee_rate: int
    dust_relay_fee_rate: int
    fallback_fee_rate: int
    coinbase_maturity: int = 100
    max_fee_rate: int = 10_000
    """The highest rate this node pays: Bitcoin and Litecoin Core's default ``-maxfeerate``
    (0.10 coin/kvB). A rate asked for above it is refused; a node estimate above it is lowered to
    it (a broken estimator must not hand the swap to miners, nor stop it)."""
    replacement_relayed: bool = True
    """Whether the chain's nodes relay BIP125 replacements by default. Where they do, a stuck
    claim or refund is re-signed at a higher fee (RBF); where they do not, a child spending its
    output pays for both (CPFP)."""


_PARAMS: dict[tuple[str, str], ChainParams] = {}


def _register(p: ChainParams) -> None:
    _PARAMS[(p.chain, p.network)] = p


# Bitcoin Core's defaults: minrelaytxfee 1000 sat/kvB (1 sat/vB) and dustrelayfee 3000 sat/kvB
# (3 sat/vB). The fallback (used when the node has no estimate yet, as on a fresh regtest) is 2
# sat/vB: above the relay minimum so a fee bump is never needed just to enter the mempool.
# BIP44 coin type 1 is every test network's (SLIP-44).
_register(ChainParams("btc", "mainnet", "bc", 0, 1, 3, 2))
_register(ChainParams("btc", "testnet", "tb", 1, 1, 3, 2))
_register(ChainParams("btc", "signet", "tb", 1, 1, 3, 2))
_register(ChainParams("btc", "regtest", "bcrt", 1, 1, 3, 2))
# btcd's simnet uses its own bech32 prefix and the same relay policy (1000 sat/kB).
_register(ChainParams("btc", "simnet", "sb", 1, 1, 3, 2))
# Litecoin Core: DEFAULT_MIN_RELAY_TX_FEE 10000 lit/kvB (10 lit/vB) and DUST_RELAY_TX_FEE
# 30000 lit/kvB (30 lit/vB); SLIP-44 coin type 2. Fallback 20 lit/vB: twice the relay minimum.
# Litecoin Core relays no replacement unless a node sets -mempoolreplacement=1 (default 0), so
# its fee bumps are children (CPFP), which its block assembler scores by ancestor fee rate.
_register(ChainParams("ltc", "mainnet", "ltc", 2, 10, 30, 20, replacement_relayed=False))
_register(ChainParams("ltc", "testnet", "tltc", 1, 10, 30, 20, replacement_relayed=False))
_register(ChainParams("ltc", "regtest", "rltc", 1, 10, 30, 20, replacement_relayed=False))


def chain_params(chain: str, network: str) -> ChainParams:
    try:
        return _PARAMS[(chain, network)]
    except KeyError:
        known = ", ".join(f"{c}/{n}" for c, n in sorted(_PARAMS))
        raise ConfigError(f"unknown chain/network {chain}/{network}; known: {known}") from None
