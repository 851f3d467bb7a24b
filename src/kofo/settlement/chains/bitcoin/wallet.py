"""Keys from one BIP32 seed along BIP84 paths (python-bitcointx does the derivation).

``m/84'/<coin>'/<account>'/<branch>/<index>``; coin type from :class:`ChainParams` (1 on every
test network). The seed is the only secret; it is never shown in a repr or an error.

Every use gets its own key, so a node's swaps are not linkable on chain through its keys:

=========  =======================================================================  ==========
branch     used for                                                                 standard
=========  =======================================================================  ==========
0          receiving: index 0 is the funding address (:attr:`HdWallet.identity`),     BIP84
           every claim and refund pays a new one (:meth:`HdWallet.next_key`)
1          change of every lock                                                     BIP84
2          HTLC keys: each leg's claim or refund key is a new one (``address()``)     KOFO
=========  =======================================================================  ==========

Branch 2 is KOFO's own so that HTLC keys, which never receive a P2WPKH output, do not open
gaps in branch 0 that another BIP84 wallet restoring the seed would stop scanning at.

Recovery. Each branch's next index is written (fsynced) to a :class:`KeyIndexFile` *before* a
key is handed out, and keys are derived :data:`LOOKAHEAD` past it at start, so a restarted node
holds every key it ever gave. From the seed alone (the index file lost):

* wallet outputs are found by the gap limit: the adapter's scan derives :data:`LOOKAHEAD` keys
  past the highest index it sees paid (:meth:`HdWallet.extend_past`), as BIP44 wallets do;
* an HTLC key is named in the swap's terms (in the journal): :meth:`HdWallet.key_for_pubkey`
  searches branch 2 (and 0, 1) up to :data:`SEARCH_LIMIT` past what is derived before giving up.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bitcointx.core.key import CKey
from bitcointx.segwit_addr import encode as segwit_encode
from bitcointx.wallet import CBitcoinExtKey

from kofo.errors import InvalidInput, KofoError, WalletError
from kofo.private_files import read_private_file, write_private_file
from kofo.settlement import keystore
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.params import ChainParams
from kofo.settlement.chains.bitcoin.tx import p2wpkh_script_pubkey

RECEIVE, CHANGE, HTLC = 0, 1, 2
BRANCHES = (RECEIVE, CHANGE, HTLC)

LOOKAHEAD = 20
"""BIP44's address gap limit: keys derived ahead per branch, so outputs paid to any of them are
found when scanning the chain."""

SEARCH_LIMIT = 10_000
"""How far past the derived keys a key named by a journaled swap is searched when the index
file is lost (~1 s of derivation, once). Only for keys from our own journal: a proposal naming
an unknown key is refused without a search (:meth:`HdWallet.owns_pubkey`), so a peer cannot
make the node derive."""

_MAX_INDEX = 2**31 - 1  # non-hardened BIP32 indexes
MAX_STORED_INDEX = 1_000_000
"""An index file naming more is refused: a node derives every key up to it at start (a few per
swap), and a file claiming 2^31 would make that take days."""


@dataclass(frozen=True, slots=True)
class WalletKey:
    path: str
    key: CKey = field(repr=False)
    branch: int = 0
    index: int = 0

    @property
    def pubkey(self) -> bytes:
        return bytes(self.key.pub)

    @property
    def script_pubkey(self) -> bytes:
        return p2wpkh_script_pubkey(self.pubkey)


class KeyIndexFile:
    """Each branch's next unused index, in a private file (0600) replaced whole on every
    change (:func:`kofo.private_files.write_private_file`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"KeyIndexFile({self.path})"

    def load(self) -> dict[int, int]:
        try:
            raw = read_private_file(self.path, max_size=4096)
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            found = {int(b): int(n) for b, n in doc["next"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise WalletError(f"key index file {self.path} is corrupted") from None
        if any(b not in BRANCHES or not 0 <= n <= MAX_STORED_INDEX for b, n in found.items()):
            raise WalletError(f"key index file {self.path} names an unknown branch or index")
        return found

    def save(self, next_index: dict[int, int]) -> None:
        doc = {"version": 1, "next": {str(b): n for b, n in sorted(next_index.items())}}
        write_private_file(self.path, json.dumps(doc).encode())


class HdWallet:
    """Deterministic keys for one chain from a seed (see module docstring). Thread-safe."""

    def __init__(
        self,
        seed: bytes,
        params: ChainParams,
        *,
        account: int = 0,
        index_file: KeyIndexFile | None = None,
    ) -> None:
        """``index_file`` keeps the next index of each branch across restarts; without one
        (tests, one-off tools) indexes start again at each start, and keys given before are
        still found (derived ahead, searched) but may be given again."""
        if not isinstance(seed, bytes) or not 16 <= len(seed) <= 64:
            raise InvalidInput("seed must be 16..64 bytes (BIP32)")
        self.params = params
        ensure_thread_params()  # python-bitcointx's dispatch is per thread; a wallet opens in any
        self._base = f"m/84'/{params.bip44_coin_type}'/{account}'"
        root = CBitcoinExtKey.from_seed(seed)
        self._branch = {b: root.derive_path(f"{self._base}/{b}") for b in BRANCHES}
        self._index_file = index_file
        self._lock = threading.RLock()
        self._keys: dict[bytes, WalletKey] = {}
        self._by_pubkey: dict[bytes, WalletKey] = {}
        self._derived = dict.fromkeys(BRANCHES, 0)
        # Receiving index 0 is the funding address; claims and refunds start after it.
        self._next = {RECEIVE: 1, CHANGE: 0, HTLC: 0}
        if index_file is not None:
            for b, n in index_file.load().items():
                self._next[b] = max(self._next[b], n)
        for b in BRANCHES:
            self._derive_to(b, self._next[b] + LOOKAHEAD)
        self._search_end = {b: self._derived[b] + SEARCH_LIMIT for b in BRANCHES}
        """Searches never derive past this: a key that is not ours costs one search, not one
        per call."""

    def __repr__(self) -> str:
        return f"HdWallet({self.params.chain}/{self.params.network}, {self._base})"

    @classmethod
    def generate(cls, params: ChainParams) -> HdWallet:
        return cls(os.urandom(32), params)

    @classmethod
    def open(
        cls,
        path: str | Path,
        passphrase: str,
        params: ChainParams,
        *,
        index_file: KeyIndexFile | None = None,
    ) -> HdWallet:
        return cls(keystore.load_secret(path, passphrase), params, index_file=index_file)

    # ---- derivation --------------------------------------------------------------------------

    def _derive_to(self, branch: int, count: int) -> None:
        """Derive (and index) the first ``count`` keys of ``branch``."""
        with self._lock:
            for index in range(self._derived[branch], min(count, _MAX_INDEX + 1)):
                self._register(branch, index)
            self._derived[branch] = max(self._derived[branch], count)

    def _register(self, branch: int, index: int) -> WalletKey:
        ensure_thread_params()  # derivation runs in whichever thread needs a key
        ext = self._branch[branch].derive(index)
        wk = WalletKey(f"{self._base}/{branch}/{index}", CKey(ext.priv.secret_bytes), branch, index)
        self._keys[wk.script_pubkey] = wk
        self._by_pubkey[wk.pubkey] = wk
        return wk

    def key(self, branch: int, index: int) -> WalletKey:
        if branch not in BRANCHES or not 0 <= index <= _MAX_INDEX:
            raise InvalidInput(f"no key at branch {branch}, index {index}")
        with self._lock:
            return self._register(branch, index)

    def next_key(self, branch: int) -> WalletKey:
        """A key never handed out before (on this branch, as far as the index file knows). Its
        index is written to the index file before it is returned: a restart never gives it
        again, and derives it."""
        with self._lock:
            index = self._next[branch]
            if index >= MAX_STORED_INDEX:
                raise WalletError(f"branch {branch} of {self!r} has no unused key left")
            following = dict(self._next)
            following[branch] = index + 1
            if self._index_file is not None:
                try:
                    self._index_file.save(following)
                except KofoError as exc:
                    raise WalletError(
                        f"cannot record the next key index in {self._index_file.path}: "
                        f"{exc.args[0]}; no new key is handed out"
                    ) from None
            self._next = following
            self._derive_to(branch, index + 1 + LOOKAHEAD)
            return self.key(branch, index)

    def extend_past(self, script_pubkey: bytes) -> bool:
        """The gap limit: once ``script_pubkey`` (a wallet output seen on chain) is within
        :data:`LOOKAHEAD` of the last derived key of its branch, derive further. True when new
        keys were derived (a scan should look again)."""
        with self._lock:
            wk = self._keys.get(script_pubkey)
            if wk is None or wk.index + LOOKAHEAD < self._derived[wk.branch]:
                return False
            self._next[wk.branch] = max(self._next[wk.branch], wk.index + 1)
            self._derive_to(wk.branch, wk.index + 1 + LOOKAHEAD)
            return True

    # ---- lookups -----------------------------------------------------------------------------

    @property
    def identity(self) -> WalletKey:
        """The funding address's key (receiving index 0): coins sent to the node land here.
        No HTLC, change or claim uses it."""
        return self.key(RECEIVE, 0)

    def scripts(self) -> set[bytes]:
        with self._lock:
            return set(self._keys)

    def key_for_script(self, script_pubkey: bytes) -> CKey:
        try:
            return self._keys[script_pubkey].key
        except KeyError:
            raise WalletError(
                f"wallet has no key for output script {script_pubkey.hex()}"
            ) from None

    def owns_pubkey(self, pubkey: bytes) -> bool:
        """Whether ``pubkey`` is one of the keys derived so far (no search: cheap enough to ask
        for every proposal a peer sends)."""
        return pubkey in self._by_pubkey

    def key_for_pubkey(self, pubkey: bytes) -> CKey:
        """The private key of ``pubkey``, searched up to :data:`SEARCH_LIMIT` past the derived
        keys when not derived yet (a swap journaled before the index file was lost)."""
        found = self._by_pubkey.get(pubkey)
        if found is None:
            found = self._search(pubkey)
        if found is None:
            raise WalletError(f"wallet has no key for public key {pubkey.hex()}")
        return found.key

    def _search(self, pubkey: bytes) -> WalletKey | None:
        with self._lock:
            for branch in (HTLC, RECEIVE, CHANGE):
                end = min(self._search_end[branch], _MAX_INDEX + 1)
                for index in range(self._derived[branch], end):
                    self._derived[branch] = index + 1
                    if self._register(branch, index).pubkey == pubkey:
                        self._next[branch] = max(self._next[branch], index + 1)
                        self._derive_to(branch, index + 1 + LOOKAHEAD)
                        self._search_end[branch] = max(end, index + 1 + SEARCH_LIMIT)
                        return self._by_pubkey[pubkey]
        return None

    def address(self, script_pubkey: bytes | None = None) -> str:
        """Bech32 address of ``script_pubkey`` (default: the funding address)."""
        spk = script_pubkey or self.identity.script_pubkey
        encoded = segwit_encode(self.params.bech32_hrp, spk[0], spk[2:])
        if encoded is None:
            raise InvalidInput(f"script {spk.hex()} has no bech32 address")
        return str(encoded)
