"""A Bitcoin HD wallet opens and derives in any thread, not only the one that imported
python-bitcointx (its class dispatch is per thread): a node started from a worker thread, as the
dashboard's browser test starts the daemons, failed at ``CBitcoinExtKey.from_seed``."""

from __future__ import annotations

import threading

from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.wallet import RECEIVE, HdWallet


def _in_a_new_thread(seed: bytes) -> tuple[str, str]:
    out: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w = HdWallet(seed, chain_params("btc", "regtest"))
            out.append((w.address(), w.next_key(RECEIVE).path))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not errors, errors
    return out[0]


def test_a_wallet_opened_in_a_fresh_thread_derives_the_same_keys() -> None:
    seed = bytes(range(32))
    here = HdWallet(seed, chain_params("btc", "regtest"))
    assert _in_a_new_thread(seed) == (here.address(), here.next_key(RECEIVE).path)
