"""The node's wallet: one seed, encrypted at rest, from which every chain's keys derive.

Ethereum keys follow BIP44 (``m/44'/60'/0'/0/i``), Bitcoin-like chains BIP84
(``m/84'/<coin>'/0'/...``), so the same seed restores the same addresses in other wallets. The
seed file is the versioned scrypt + AES-256-GCM format of :mod:`kofo.settlement.keystore`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount

from kofo.errors import WalletError
from kofo.settlement import keystore
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.keys import account_from_seed

SEED_BYTES = 32
"""256 bits: the strength of the keys derived from it (secp256k1 gives ~128-bit security, so
more seed adds nothing, less would be the weakest link)."""

PASSPHRASE_ENV = "KOFO_PASSPHRASE"


@dataclass(frozen=True)
class NodeWallet:
    _seed: bytes

    def __repr__(self) -> str:  # the seed must never reach a log or a traceback
        return "NodeWallet(<seed hidden>)"

    @classmethod
    def create(cls, path: Path, passphrase: str, *, overwrite: bool = False) -> NodeWallet:
        if path.exists() and not overwrite:
            raise WalletError(f"a wallet already exists at {path}; refusing to overwrite it")
        if len(passphrase) < 8:
            raise WalletError("the passphrase must have at least 8 characters")
        seed = os.urandom(SEED_BYTES)
        path.parent.mkdir(parents=True, exist_ok=True)
        keystore.save_secret(path, seed, passphrase)
        return cls(seed)

    @classmethod
    def open(cls, path: Path, passphrase: str) -> NodeWallet:
        if not path.exists():
            raise WalletError(f"no wallet at {path}; create one with `kofo wallet init`")
        return cls(keystore.load_secret(path, passphrase))

    def eth_account(self, index: int = 0) -> LocalAccount:
        return account_from_seed(self._seed, index)

    def bitcoin(self, chain: str = "btc", network: str = "regtest") -> HdWallet:
        return HdWallet(self._seed, chain_params(chain, network))
