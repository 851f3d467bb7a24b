"""Keys from one BIP32 seed along BIP84 paths (python-bitcointx does the derivation).

``m/84'/<coin>'/<account>'/<change>/<index>``; coin type from :class:`ChainParams` (1 on every
test network). The seed is the only secret; it is never shown in a repr or an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bitcointx.core.key import CKey
from bitcointx.segwit_addr import encode as segwit_encode
from bitcointx.wallet import CBitcoinExtKey

from kofo.errors import InvalidInput, WalletError
from kofo.settlement import keystore
from kofo.settlement.chains.bitcoin.params import ChainParams
from kofo.settlement.chains.bitcoin.tx import p2wpkh_script_pubkey

LOOKAHEAD = 20
"""BIP44's address gap limit: keys derived ahead per branch, so outputs paid to any of them are
found when scanning the chain."""


@dataclass(frozen=True, slots=True)
class WalletKey:
    path: str
    key: CKey = field(repr=False)

    @property
    def pubkey(self) -> bytes:
        return bytes(self.key.pub)

    @property
    def script_pubkey(self) -> bytes:
        return p2wpkh_script_pubkey(self.pubkey)


class HdWallet:
    """Deterministic keys for one chain from a seed."""

    def __init__(self, seed: bytes, params: ChainParams, *, account: int = 0) -> None:
        if not isinstance(seed, bytes) or not 16 <= len(seed) <= 64:
            raise InvalidInput("seed must be 16..64 bytes (BIP32)")
        self.params = params
        self._root = CBitcoinExtKey.from_seed(seed)
        self._base = f"m/84'/{params.bip44_coin_type}'/{account}'"
        self._keys: dict[bytes, WalletKey] = {}
        self._by_pubkey: dict[bytes, WalletKey] = {}
        for branch in (0, 1):
            for index in range(LOOKAHEAD):
                self.key(branch, index)

    def __repr__(self) -> str:
        return f"HdWallet({self.params.chain}/{self.params.network}, {self._base})"

    @classmethod
    def generate(cls, params: ChainParams) -> HdWallet:
        return cls(os.urandom(32), params)

    @classmethod
    def open(cls, path: str | Path, passphrase: str, params: ChainParams) -> HdWallet:
        return cls(keystore.load_secret(path, passphrase), params)

    def key(self, branch: int, index: int) -> WalletKey:
        path = f"{self._base}/{branch}/{index}"
        ext = self._root.derive_path(path)
        wk = WalletKey(path, CKey(ext.priv.secret_bytes))
        self._keys[wk.script_pubkey] = wk
        self._by_pubkey[wk.pubkey] = wk
        return wk

    @property
    def identity(self) -> WalletKey:
        """The key HTLCs pay to and refund to; its P2WPKH also receives change and claims."""
        return self.key(0, 0)

    def scripts(self) -> set[bytes]:
        return set(self._keys)

    def key_for_script(self, script_pubkey: bytes) -> CKey:
        try:
            return self._keys[script_pubkey].key
        except KeyError:
            raise WalletError(
                f"wallet has no key for output script {script_pubkey.hex()}"
            ) from None

    def key_for_pubkey(self, pubkey: bytes) -> CKey:
        try:
            return self._by_pubkey[pubkey].key
        except KeyError:
            raise WalletError(f"wallet has no key for public key {pubkey.hex()}") from None

    def address(self, script_pubkey: bytes | None = None) -> str:
        """Bech32 address of ``script_pubkey`` (default: the identity key's P2WPKH)."""
        spk = script_pubkey or self.identity.script_pubkey
        encoded = segwit_encode(self.params.bech32_hrp, spk[0], spk[2:])
        if encoded is None:
            raise InvalidInput(f"script {spk.hex()} has no bech32 address")
        return str(encoded)
