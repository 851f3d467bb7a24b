"""What the exchange builds, committed to the real clearance ledger app (in-process)."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from kofo.clearance import privacy
from kofo.clearance.fees import split_fee
from kofo.clearance.params import LedgerParams
from kofo.exchange.node import ExchangeNode, RouteFailed
from kofo.wire.legkeys import sign_leg_key
from kofo.wire.orders import LegOutcome, RegisterNode, leg_roles_of, sign_tx

from ..clearance.helpers import (
    LEG_KEYS,
    Ledger,
    _paillier,
    ledger_params,
    leg_address,
    modulus_proof,
    registration_work,
)
from .helpers import line, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}
BPS = LedgerParams().protocol_fee_bps


def _register(node: ExchangeNode, i: int, ts: int) -> bytes:
    pub, priv = _paillier(i % 6)
    seed, proof = privacy.zero_seed(pub, privacy.register_context(node.node_id))
    n = privacy.public_modulus(pub)
    body = RegisterNode(
        addresses=dict(node.config.addresses),
        paillier_n=n,
        balance_seed=seed,
        bond=1_000_000,
        seed_proof=proof,
        modulus_proof=modulus_proof(priv, node.node_id),
        pow_nonce=registration_work(node.node_id, n),
    )
    return sign_tx(node._key, body, ts=ts)


def _prover(node_id: bytes):
    def prove(order):
        return {
            (i, role): sign_leg_key(LEG_KEYS[address], address, order.order_id, i, role)
            for i, role, address in leg_roles_of(order, node_id)
        }

    return prove


@pytest.mark.timeout(120)
# (relays, the seed of the taker's dummy-hop draw, the dummy hops it gives)
@pytest.mark.parametrize(("relays", "seed", "dummies"), [(0, 1, 0), (1, 0, 1), (3, 5, 2)])
def test_exchange_built_orders_commit_to_the_ledger_and_settle_paying_every_relay(
    relays, seed, dummies
):
    """Case 1 of issue 18: every relay's FeeQuote had the same quote_id, so the ledger refused
    every relayed order (``quote ids repeat``). Each party's quote id is now its own."""

    async def go():
        nodes = await line(relays + 2, protocol_fee_bps=BPS, addresses=ADDR)
        for i, n in enumerate(nodes):  # each node's own leg keys, and its proofs of them
            n.config.addresses = {c: leg_address(c, f"x{i}-{c}") for c in ("btc", "eth")}
            n.config.prove_legs = _prover(n.node_id)
        # Seeded: the claim starts with 0, 1 or 2 of the taker's dummy hops (not relays).
        nodes[0]._rng = random.Random(seed)
        try:
            nodes[-1].publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(nodes[0].book) == 1)
            cid, quotes = await nodes[0].request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            assert quotes[0].fulfil.fulfil.position == dummies + relays + 1
            commit = await nodes[0].settle(cid, quotes[0], os.urandom(32))
            return nodes, commit
        finally:
            await stop_all(nodes)

    nodes, commit = asyncio.run(asyncio.wait_for(go(), 60))
    order = commit.order
    assert list(order.relays) == [n.node_id for n in nodes[1:-1]]
    # The exchange alone plans every leg's expiry in unix time (the node's composer gives a
    # Bitcoin leg a height): this ledger takes both chains' expiries in unix time.
    ledger = Ledger(params=ledger_params(expiry_unit={"btc": "unix", "eth": "unix"}))
    now = int(time.time())
    ledger.ok(*(_register(n, i, now) for i, n in enumerate(nodes)), time=now)
    submit = sign_tx(nodes[0]._key, commit, ts=now)
    ledger.ok(submit, time=now + 1)
    # Outcomes count only as the validators' own observation of the chains (attested).
    for leg in (0, 1):
        ledger.chains.see(order, leg, LegOutcome.LOCKED)
    ledger.attested(time=now + 2)
    for leg in (1, 0):
        ledger.chains.see(order, leg, LegOutcome.REDEEMED)
    ledger.attested(time=now + 3)
    assert ledger.app.order(order.order_id)["status"] == "settled"
    split = split_fee(
        order.protocol_fee,
        list(order.relays),
        order.intermediaries(),
        foundation_bps=LedgerParams().foundation_bps,
        relay_pool_bps=LedgerParams().relay_pool_bps,
    )
    shares = dict(split.shares)
    for i, n in enumerate(nodes[1:], start=1):
        _, priv = _paillier(i % 6)
        ct = ledger.app.balance_ciphertext(n.node_id, order.fee_asset)
        assert ct is not None and privacy.decrypt(priv, ct) == shares[n.node_id] > 0


@pytest.mark.timeout(120)
def test_a_provider_whose_leg_proofs_are_bad_fails_only_its_own_route():
    """Issue 17: the ledger commits an order only with proofs of control of every leg key.
    A provider that sends proofs by keys other than those it joined with (or none) gets no
    order committed: the initiator refuses to build the commit, and the relay that carried
    the frame is not blamed (it could not tell)."""

    async def go():
        nodes = await line(3, protocol_fee_bps=BPS, addresses=ADDR)
        for i, n in enumerate(nodes):
            n.config.addresses = {c: leg_address(c, f"y{i}-{c}") for c in ("btc", "eth")}
            n.config.prove_legs = _prover(n.node_id)
        honest = _prover(nodes[-1].node_id)

        def wrong_keys(order):  # valid proofs, by another key than the one the leg names
            other = leg_address("eth", "not-the-providers")
            return {
                k: sign_leg_key(LEG_KEYS[other], other, order.order_id, k[0], k[1])
                for k in honest(order)
            }

        nodes[-1].config.prove_legs = wrong_keys
        try:
            nodes[-1].publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(nodes[0].book) == 1)
            cid, quotes = await nodes[0].request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            with pytest.raises(RouteFailed, match=r"leg keys are not all proven.*legs\[\d\]"):
                await nodes[0].settle(cid, quotes[0], os.urandom(32))
            assert nodes[0]._scores.get(nodes[1].node_id, 0.0) == 0.0  # the relay: not blamed
        finally:
            await stop_all(nodes)

    asyncio.run(asyncio.wait_for(go(), 60))
