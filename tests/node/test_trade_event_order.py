"""An event is never visible before the state it announces.

A client follows a trade by its events: on each one it re-reads the trade and stops at a
terminal state (the SDK's documented pattern, ``kofo trade``, the dashboard). The daemon used
to publish the event that ends a trade and store the trade's new state only after it; a client
whose re-read fell between the two saw the trade still running and waited for an event that
never came (tests/api/test_sdk_daemon.py hung 600 s under load). These tests read the trade,
as a client would, at the very moment each trade event is published: deterministically, with
no race to win."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kofo.node.config import load_config
from kofo.node.daemon import Node
from kofo.node.home import init_home
from kofo.node.trade_store import TradeStore
from kofo.settlement.engine import SwapEngine, SwapUpdate
from kofo.settlement.journal import Journal
from kofo.settlement.swap import Role, State
from kofo.wallet import NodeWallet
from tests.node.event_order import watch_trade_events

PASS = "trade event order passphrase"

pytestmark = [pytest.mark.timeout(120)]


def _node(tmp_path: Path) -> Node:
    home = tmp_path / "node"
    init_home(home, PASS, name="t")
    cfg = load_config(home)
    return Node(cfg, NodeWallet.open(home / "wallet.json", PASS), passphrase=PASS)


def test_a_cancel_and_a_failure_are_stored_before_their_events(tmp_path: Path) -> None:
    node = _node(tmp_path)
    seen = watch_trade_events(node)
    try:
        node.store.create("t1", "taker", "btc", 1_000, "eth", min_receive=1)
        node.store.create("t2", "taker", "btc", 1_000, "eth", min_receive=1)
        ended = asyncio.run(node.cancel_trade("t1"))
        node._fail("t2", "invalid_input: no quote")
        assert ended.state == "cancelled"
        assert node.store.get("t2").state == "failed"
        assert [s[:2] for s in seen] == [("cancelled", "cancelled"), ("failed", "failed")]
        assert [s[2] for s in seen] == [None, None], seen
    finally:
        node.event_log.close()
        node.store.close()
        node.phases.close()


def test_the_store_records_a_phase_and_its_state_at_once_and_an_end_is_final(
    tmp_path: Path,
) -> None:
    store = TradeStore(tmp_path / "trades.sqlite")
    try:
        store.create("t", "taker", "btc", 5, "eth")
        store.record("t", "committed", {"height": 7}, state="committed", height=7)
        view = store.get("t")
        assert (view.state, view.height, view.phases[-1].phase) == ("committed", 7, "committed")
        store.record("t", "redeemed", {"received": 9}, state="redeemed")
        # a late writer that read the trade before it ended never moves it back
        store.record("t", "swap", {"state": "locked"}, state="settling")
        store.update("t", state="failed")
        assert store.get("t").state == "redeemed"
        assert [p.phase for p in store.get("t").phases] == ["committed", "redeemed", "swap"]
        with pytest.raises(ValueError, match="unknown trade fields"):
            store.record("t", "x", {}, secret="no")
        assert [p.phase for p in store.get("t").phases][-1] == "swap"  # rolled back, whole
    finally:
        store.close()


@pytest.mark.parametrize(
    ("swap_state", "trade_state"),
    [
        (State.REDEEMED, "redeemed"),
        (State.REFUNDED, "refunded"),
        (State.ABORTED, "failed"),
        (State.LOST, "failed"),
    ],
)
def test_a_swap_end_is_stored_before_the_trade_event_that_announces_it(
    tmp_path: Path, swap_state: State, trade_state: str
) -> None:
    """The case that hung the SDK test: the swap engine reports the swap's end; the trade's
    ``redeemed`` event used to be published while the trade still read ``settling``. A swap
    that ends ``lost`` used to leave its trade ``settling`` for ever."""
    node = _node(tmp_path)
    node.engine = SwapEngine(
        Journal(node.config.journal_path), {}, {}, node.key, publish=node._on_swap_update
    )
    seen = watch_trade_events(node)
    try:
        swap_id = bytes(range(32))
        node.store.create("t", "taker", "btc", 1_000, "eth", min_receive=1)
        node.store.update("t", state="committed", order_id=swap_id.hex(), height=3)
        update = SwapUpdate(swap_id, Role.INITIATOR, State.LOCKED, "own lock buried")
        node._on_swap_update(update)
        node._on_swap_update(SwapUpdate(swap_id, Role.INITIATOR, swap_state, "the end"))
        node._on_swap_update(update)  # late: an ended trade stays ended
        assert [s[:2] for s in seen] == [("swap", "settling"), (trade_state, trade_state)]
        assert [s[2] for s in seen] == [None, None], seen
        assert node.store.get("t").state == trade_state
        kinds = [(e.kind, e.data.get("phase")) for e in node.event_log.after(0)]
        assert kinds[-1] == ("swap", None) and ("trade", trade_state) in kinds
    finally:
        node.engine.journal.close()
        node.event_log.close()
        node.store.close()
        node.phases.close()
