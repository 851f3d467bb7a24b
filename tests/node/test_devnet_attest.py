"""`kofo devnet`'s solo ledger attests leg outcomes from its own view of the devnet's chains
(read over their RPC, as a node reads them): a real HTLC lock matching a committed order's leg
becomes that leg's outcome on the ledger, with nobody reporting it."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from web3 import Web3

from kofo.node.devnet import start_devnet
from kofo.node.ledger_client import LedgerClient
from kofo.settlement.chain import HtlcTerms
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.wire.codec import decode, encode
from kofo.wire.expiry import UnixTime
from kofo.wire.orders import Leg, OrderKind, SettlementOrder, with_derived_id
from tests.clearance.helpers import Party, commit_tx, hold_keys, ledger_params

pytestmark = pytest.mark.timeout(180)


def _leg(
    sender: Party,
    recipient: Party,
    s: EthereumAdapter,
    r: EthereumAdapter,
    amount: int,
    expiry: int,
    lock_by: int,
) -> Leg:
    return Leg(
        chain="eth",
        token=None,
        sender=sender.id,
        recipient=recipient.id,
        sender_address=s.address(),
        recipient_address=r.address(),
        amount=amount,
        expiry=UnixTime(expiry),
        expiry_time=expiry,
        lock_by=lock_by,
    )


def test_devnet_ledger_attests_a_real_lock_without_any_report() -> None:
    keys = [account_from_seed(os.urandom(32)) for _ in range(2)]
    hold_keys(*keys)  # alice and bob prove their accounts' control in the commit
    net = start_devnet(
        fund=[k.address for k in keys], block_interval=0, ledger_params=ledger_params()
    )
    try:
        w3 = Web3(Web3.HTTPProvider(net.eth_server.url, request_kwargs={"timeout": 30}))
        a, b = (EthereumAdapter(w3, k, net.htlc) for k in keys)
        alice, bob = Party.make(0), Party.make(1)
        client = LedgerClient(net.ledger.url)
        now = int(time.time())
        payment_hash = hashlib.sha256(os.urandom(32)).digest()
        order = with_derived_id(
            SettlementOrder(
                order_id=bytes(16),
                kind=OrderKind.DIRECT,
                payment_hash=payment_hash,
                legs=(
                    _leg(alice, bob, a, b, 10**17, now + 7_200, now + 600),
                    _leg(bob, alice, b, a, 2 * 10**17, now + 3_600, now + 660),
                ),
            )
        )
        for tx in (alice.register_tx(ts=now), bob.register_tx(ts=now)):
            client.commit(tx, timeout=30)
        client.commit(commit_tx(order, [alice, bob], alice, ts=now), timeout=30)

        leg = order.legs[0]
        ref = a.lock(
            HtlcTerms(
                "eth",
                payment_hash,
                leg.amount,
                leg.sender_address,
                leg.recipient_address,
                leg.expiry,
            )
        )
        outcome = None
        for _ in range(300):  # bounded: blocks come every 0.1 s while a leg is pending
            rec = decode(client.abci_query("/order", encode(order.order_id)))
            outcome = rec["legs"][0]["outcome"]
            if outcome == "locked":
                break
            time.sleep(0.1)
        assert outcome == "locked"
        assert rec["legs"][0]["txid"] == ref.lock_txid
        assert rec["legs"][1]["outcome"] is None  # bob locked nothing: nothing attested
    finally:
        net.stop()
