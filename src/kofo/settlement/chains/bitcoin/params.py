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
    pow_limit_bits: int = 0x207FFFFF
    """The consensus ``powLimit`` as compact bits: no block's target may be above it (the
    regtest value, about every other hash, unless a network says otherwise)."""
    pow_hash: str = "sha256d"
    """The header hash proof of work is judged by: ``sha256d`` (Bitcoin), ``scrypt`` (Litecoin:
    scrypt N=1024, r=1, p=1 over the header, salted with itself; its block hash stays
    sha256d)."""
    retarget_interval: int | None = None
    """Blocks between difficulty adjustments where a block's ``bits`` must follow its parent's
    (the same bits inside a period, at most a factor of 4 at its boundary); ``None`` on networks
    whose rules allow minimum-difficulty blocks at any height (testnet, regtest)."""
    min_block_work: int = 0
    """The least work (Core's block proof, ``2**256 / (target + 1)``) every block the adapter
    follows must carry: with it a node that lies about a confirmation must spend at least that
    much hashing per fake block. 0 where work is trivial (regtest); a node operator sets it to a
    recent difficulty for mainnet (``BitcoinAdapter(..., min_block_work=...)``). A node starts
    following a chain at a birthday height, so it cannot sum work from genesis as Core's
    ``nMinimumChainWork`` does; a per-block floor is the equivalent it can check."""
    genesis_hash: str | None = None
    """The network's block 0 (hex, as RPC shows it). The adapter refuses a node whose block 0
    is another (``wrong_chain``): configured for mainnet, it must never audit locks on a chain
    where coins are free. ``None`` on local networks (regtest, simnet), whose genesis a node or
    an embedded chain may choose."""


_PARAMS: dict[tuple[str, str], ChainParams] = {}


def _register(p: ChainParams) -> None:
    _PARAMS[(p.chain, p.network)] = p


# Bitcoin Core's defaults: minrelaytxfee 1000 sat/kvB (1 sat/vB) and dustrelayfee 3000 sat/kvB
# (3 sat/vB). The fallback (used when the node has no estimate yet, as on a fresh regtest) is 2
# sat/vB: above the relay minimum so a fee bump is never needed just to enter the mempool.
# BIP44 coin type 1 is every test network's (SLIP-44).
# Proof-of-work limits and retargeting: Core's chainparams.cpp (powLimit 0x1d00ffff on mainnet
# and testnet3, 0x1e0377ae on the default signet; 2016-block periods; testnet allows
# minimum-difficulty blocks after 20 minutes, so its bits are not followed from block to block).
# Genesis hashes: Core's chainparams.cpp (mainnet, testnet3, the default signet).
_register(
    ChainParams(
        "btc",
        "mainnet",
        "bc",
        0,
        1,
        3,
        2,
        pow_limit_bits=0x1D00FFFF,
        retarget_interval=2016,
        genesis_hash="000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    )
)
_register(
    ChainParams(
        "btc",
        "testnet",
        "tb",
        1,
        1,
        3,
        2,
        pow_limit_bits=0x1D00FFFF,
        genesis_hash="000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
    )
)
_register(
    ChainParams(
        "btc",
        "signet",
        "tb",
        1,
        1,
        3,
        2,
        pow_limit_bits=0x1E0377AE,
        retarget_interval=2016,
        genesis_hash="00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
    )
)
_register(ChainParams("btc", "regtest", "bcrt", 1, 1, 3, 2))
# btcd's simnet uses its own bech32 prefix and the same relay policy (1000 sat/kB).
_register(ChainParams("btc", "simnet", "sb", 1, 1, 3, 2))
# Litecoin Core: DEFAULT_MIN_RELAY_TX_FEE 10000 lit/kvB (10 lit/vB) and DUST_RELAY_TX_FEE
# 30000 lit/kvB (30 lit/vB); SLIP-44 coin type 2. Fallback 20 lit/vB: twice the relay minimum.
# Litecoin Core relays no replacement unless a node sets -mempoolreplacement=1 (default 0), so
# its fee bumps are children (CPFP), which its block assembler scores by ancestor fee rate.
# Litecoin Core's chainparams.cpp: scrypt proof of work, powLimit 0x1e0fffff on mainnet and
# testnet, 2016-block periods (3.5 days of 2.5-minute blocks); testnet allows min-difficulty.
# Genesis: Litecoin Core's chainparams.cpp (mainnet, testnet4).
for _network, _hrp, _coin_type, _limit, _interval, _genesis in (
    (
        "mainnet",
        "ltc",
        2,
        0x1E0FFFFF,
        2016,
        "12a765e31ffd4059bada1e25190f6e98c99d9714d334efa41a195a7e7e04bfe2",
    ),
    (
        "testnet",
        "tltc",
        1,
        0x1E0FFFFF,
        None,
        "4966625a4b2851d9fdee139e56211a0d88575f59ed816ff5e6a63deb4e3e29a0",
    ),
    ("regtest", "rltc", 1, 0x207FFFFF, None, None),
):
    _register(
        ChainParams(
            "ltc",
            _network,
            _hrp,
            _coin_type,
            10,
            30,
            20,
            replacement_relayed=False,
            pow_limit_bits=_limit,
            pow_hash="scrypt",
            retarget_interval=_interval,
            genesis_hash=_genesis,
        )
    )


def chain_params(chain: str, network: str) -> ChainParams:
    try:
        return _PARAMS[(chain, network)]
    except KeyError:
        known = ", ".join(f"{c}/{n}" for c, n in sorted(_PARAMS))
        raise ConfigError(f"unknown chain/network {chain}/{network}; known: {known}") from None
