"""Registration (issue 14 item 4): once per node, across restarts and lost answers, against the
solo ledger over its RPC; the Paillier key is kept encrypted in the home."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.clearance.app import LedgerApp
from kofo.clearance.consensus.solo import SoloChain
from kofo.clearance.consensus.solo_rpc import SoloLedgerRpc
from kofo.clearance.store import MerkleStore
from kofo.errors import WalletError
from kofo.node.ledger_client import IncludedTx, LedgerClient, LedgerUnreachable, tx_hash
from kofo.node.registration import (
    PAILLIER_BLOB,
    PAILLIER_FILE,
    REGISTER_TX_FILE,
    ensure_registered,
    load_or_create_paillier,
    registered,
)
from kofo.wire.envelope import public_key_bytes
from tests.clearance.helpers import ledger_params

pytestmark = pytest.mark.timeout(120)
PASS = "registration passphrase"
N = 2**17  # the key store's floor: fast enough for a test


def test_registers_once_across_a_lost_answer_and_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    pub, priv = load_or_create_paillier(home, PASS, bits=1024, scrypt_n=N)
    for name in (PAILLIER_FILE, PAILLIER_BLOB):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
    assert str(priv.p) not in (home / PAILLIER_BLOB).read_bytes().decode("latin-1")
    again_pub, again_priv = load_or_create_paillier(home, PASS, bits=1024, scrypt_n=N)
    assert (again_pub.n, again_priv.p) == (pub.n, priv.p)
    with pytest.raises(WalletError):
        load_or_create_paillier(home, "not the passphrase", bits=1024, scrypt_n=N)

    app = LedgerApp(MerkleStore(), ledger_params())
    with SoloLedgerRpc(SoloChain(app), block_interval=0.05) as rpc:
        client = LedgerClient(rpc.url)
        for lose in (CrashBeforeSend, AnswerLost):
            key = Ed25519PrivateKey.generate()
            node_id = public_key_bytes(key)
            addresses = {"eth": "0x" + "11" * 20}
            args = {
                "home": home,
                "node_key": key,
                "paillier_pub": pub,
                "paillier_priv": priv,
                "addresses": addresses,
            }
            (home / REGISTER_TX_FILE).unlink(missing_ok=True)
            # the first run journals the signed intent, then dies before (or after) sending it
            with pytest.raises(LedgerUnreachable):
                ensure_registered(ledger=lose(rpc.url), **args)  # type: ignore[arg-type]
            intent = (home / REGISTER_TX_FILE).read_bytes()
            assert stat.S_IMODE((home / REGISTER_TX_FILE).stat().st_mode) == 0o600
            # the restart sends those same bytes (or nothing, if they got in): one intent,
            # one transaction
            ensure_registered(ledger=client, **args)  # type: ignore[arg-type]
            included = client.wait_for_tx(tx_hash(intent), timeout=30)
            rec = registered(client, node_id)
            assert rec is not None and rec["bond"] == 0 and rec["addresses"] == addresses
            # a later start: the ledger is asked first, nothing is sent
            before = client.status().height
            assert ensure_registered(ledger=client, **args) is None  # type: ignore[arg-type]
            assert client.status().height == before >= included.height


class CrashBeforeSend(LedgerClient):
    def commit(self, tx: bytes, *, timeout: float) -> IncludedTx:
        raise LedgerUnreachable("the process died before sending")


class AnswerLost(LedgerClient):
    def commit(self, tx: bytes, *, timeout: float) -> IncludedTx:
        self.broadcast_tx_sync(tx)
        raise LedgerUnreachable("the answer was lost")


def test_paillier_key_under_the_wallets_file_key_costs_no_scrypt(
    tmp_path: Path, monkeypatch
) -> None:
    """The node's Paillier key file is encrypted under a key derived from its wallet's seed:
    written and opened with no scrypt of its own (the wallet's passphrase scrypt already
    guards the seed), 0600, never readable under another wallet's key; a home written before
    (``paillier.json`` under the passphrase) still opens."""
    import os

    from kofo.node import registration
    from kofo.node.registration import RegistrationError
    from kofo.wallet import NodeWallet

    scrypts: list[int] = []
    real = registration.keystore._derive

    def counting(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        scrypts.append(n)
        return real(passphrase, salt, n, r, p)

    monkeypatch.setattr(registration.keystore, "_derive", counting)
    wallet = NodeWallet(os.urandom(32))
    key = wallet.file_key("paillier")
    assert key == NodeWallet(wallet._seed).file_key("paillier") != wallet.file_key("other")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    pub, priv = load_or_create_paillier(home, PASS, bits=1024, file_key=key)
    assert not (home / PAILLIER_FILE).exists()
    assert stat.S_IMODE((home / PAILLIER_BLOB).stat().st_mode) == 0o600
    blob = (home / PAILLIER_BLOB).read_bytes()
    again_pub, again_priv = load_or_create_paillier(home, PASS, bits=1024, file_key=key)
    assert (again_pub.n, again_priv.p) == (pub.n, priv.p)
    assert scrypts == []  # neither the write nor the open ran a KDF
    with pytest.raises(RegistrationError, match="does not decrypt"):
        load_or_create_paillier(
            home, PASS, bits=1024, file_key=NodeWallet(os.urandom(32)).file_key("paillier")
        )
    assert (home / PAILLIER_BLOB).read_bytes() == blob  # refused, never replaced

    old = tmp_path / "old"  # a home from before: paillier.json under the passphrase
    old.mkdir(mode=0o700)
    old_pub, _ = load_or_create_paillier(old, PASS, bits=1024, scrypt_n=N)
    got_pub, _ = load_or_create_paillier(old, PASS, bits=1024, scrypt_n=N, file_key=key)
    assert got_pub.n == old_pub.n and scrypts == [N, N]  # written (one KDF), opened (one)
