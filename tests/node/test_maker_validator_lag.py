"""A maker whose validator applies the commit's block after the taker's does (several
CometBFT validators; seen on the real 4-validator ledger, tests/node/test_real_node_trades.py):
the taker's proposal comes in saying the order is committed while the maker's ledger reads
``not_found``. Refusing then was final (the taker gives up the committed trade); the maker now
re-reads for :data:`~kofo.node.trades.VALIDATOR_LAG_S` and accepts once its view shows the
commit. An order it never co-signed is still refused at once.

On the embedded chains and the solo ledger over its RPC (tests/node/test_trades.py's
fixtures); the lag is made real by committing the order only after the maker's first read
found nothing."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from kofo.node.ledger_client import LedgerClient
from kofo.node.trades import TradePipeline, engine_legs
from kofo.settlement.swap import State
from kofo.wire.swap import Accept, Propose
from tests.node.test_trades import (  # noqa: F401  (net: the fixture)
    Net,
    _commit_tx,
    _order,
    _party,
    _probe_terms,
    net,
)


class LaggingView(LedgerClient):
    """The maker's ledger client; ``first_miss`` is set once an ``/order`` read found nothing
    (the moment the taker's validator may be ahead of this one)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.first_miss = threading.Event()
        self.order_reads = 0

    def abci_query(self, path: str, data: bytes = b"") -> bytes:
        self.order_reads += path == "/order"
        try:
            return super().abci_query(path, data)
        except Exception:
            if path == "/order":
                self.first_miss.set()
            raise


def test_a_proposal_that_beats_the_makers_view_of_the_commit_is_accepted_once_it_shows(
    net: Net,  # noqa: F811  (the fixture)
    tmp_path: Path,
) -> None:
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    view = LaggingView(net.client.url)
    maker.pipe = TradePipeline(
        ledger=view, engine=maker.node.engine, node_key=maker.node.key, phases=maker.phases
    )
    maker.node.engine.accept_policy = maker.pipe.accept_policy

    # an order the maker never co-signed: refused after one read, no re-reading (a stranger's
    # proposals make it wait for nothing)
    stranger = _order(taker, maker, net, payment_hash=hashlib.sha256(os.urandom(32)).digest())
    with net.lock:
        a, b = engine_legs(stranger, taker.node.engine.policies)
        terms = _probe_terms(taker, maker, stranger.order_id, stranger, a, b)
    reply = maker.node.engine.handle(Propose(terms), taker.node.node_id)
    assert getattr(reply, "code", "") == "terms_not_offered"
    assert view.order_reads == 1
    assert maker.node.engine.unfinished() == []
    view.first_miss.clear()

    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    oid = order.order_id
    maker.pipe.expect(order)  # the maker co-signed it
    with net.lock:
        a, b = engine_legs(order, taker.node.engine.policies)
        terms = _probe_terms(taker, maker, oid, order, a, b)

    # the commit lands only after the maker's first read missed it: its view lags the taker's
    def commit_late() -> None:
        assert view.first_miss.wait(30)
        taker.pipe.submit(_commit_tx(order, taker, maker), preimage=preimage)

    committer = threading.Thread(target=commit_late)
    committer.start()
    try:
        reply = maker.node.engine.handle(Propose(terms), taker.node.node_id)
    finally:
        committer.join(60)
    assert isinstance(reply, Accept), reply
    assert maker.node.engine.journal.get(oid).state is State.ACCEPTED
    assert maker.phases.phase(oid, "committed") is not None
