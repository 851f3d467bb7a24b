"""Attacker-briefed review of the clearance ledger before issue 17 is closed (session 7).

Each test is an attack that worked on the code before its fix (see docs/clearance.md, Threat
model); the attacks that failed are listed there too."""

from __future__ import annotations

import pytest

from kofo.clearance import admission
from kofo.clearance.admission import SenderRateLimit
from kofo.clearance.app import LedgerApp
from kofo.clearance.store import MerkleStore
from kofo.wire.orders import sign_tx

from .helpers import T0, Party, ledger_params, make_order, signed_commit

pytestmark = pytest.mark.timeout(120)


def _heavy_commit(n: int = 0):  # type: ignore[no-untyped-def]
    """The heaviest order the schema allows: 8 legs, 16 relays, 24 party signatures and 16
    leg-key proofs (40 signature checks, ~9 KB)."""
    route = [Party.make(100 + i) for i in range(8)]
    relays = [Party.make(200 + i) for i in range(16)]
    return signed_commit(make_order(route, relays=relays), route + relays)


def test_checktx_charges_a_heavy_tx_by_the_checks_it_buys() -> None:
    """A registered sender (one registration's work, once) resent one 24-party order in fresh
    envelopes: one Ed25519 signature (~50 us) each made every validator re-verify its 40
    signatures (~7-14 ms), and the per-sender bucket charged it one token like a 2-leg order:
    50 a second per sybil, about half of each validator's core. Now it costs 7 tokens."""
    now = [0.0]
    app = LedgerApp(
        MerkleStore(), ledger_params(), rate_limit=SenderRateLimit(1.0, 14, clock=lambda: now[0])
    )
    app.init_chain()
    sender = Party.make(1)
    heavy = _heavy_commit()
    txs = [sign_tx(sender.key, heavy, ts=T0 + i) for i in range(3)]
    assert [app.check_tx(tx).error for tx in txs] == ["", "", "rate_limited"]
    assert admission.verifications(heavy) == 40
    assert admission.check_cost(heavy, len(txs[0])) == 7
    # an ordinary 2-leg order still costs one token (honest senders keep their rate)
    other = Party.make(2)
    a, b = Party.make(3), Party.make(4)
    light = signed_commit(make_order([a, b]), [a, b])
    assert admission.check_cost(light, len(sign_tx(other.key, light))) == 1
    results = [app.check_tx(sign_tx(other.key, light, ts=T0 + i)).error for i in range(15)]
    assert results == [""] * 14 + ["rate_limited"]
    # and the bucket refills at its rate, in tokens
    now[0] = 7.0
    assert app.check_tx(sign_tx(sender.key, heavy, ts=T0 + 99)).ok
