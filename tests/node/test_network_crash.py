"""Crashes and outages between real processes (``kofo devnet`` + three ``kofo node``
daemons, taker - relay - maker, driven through the SDK):

- SIGKILL of the taker, the maker or the relay at each phase boundary (the daemon's crash
  points ``KOFO_CRASH_AT``: signed, submitted, committed, swap started, the maker's signed and
  committed, the relay's co-signature, and the engine's locked / redeem points), then a
  restart on the same home: the trade ends atomically (both sides redeemed, both refunded, or
  nothing committed and nothing locked), each asset's total over the three wallets changes by
  at most the chain fees, and the ledger shows the order once with one outcome per leg.
- The ledger down (the devnet's solo ledger paused: its RPC refuses connections, no blocks)
  while a trade is submitted, the taker SIGKILLed and restarted during the outage: nothing
  locks before the commit is seen, and once the ledger is back the trade commits once and
  settles.

Each crash case is one trade plus two restarts. Measured on this 2-core machine at load ~20:
setup ~4 min, the outage test and two crash cases 13 min together (~3 min each); the whole
module would take ~40 min there, much less on an idle runner. Marked slow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kofo.sdk.errors import KofoApiError
from tests.node.procnet import Network, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PRICE = 10**10  # wei per satoshi
SATS = 1_000_000
MIN = SATS * PRICE * 98 // 100  # the route's fees come out of the maker's price
OFFER = {"buy": "btc", "sell": "eth", "price_num": PRICE, "price_den": 1,
         "min_in": 10_000, "max_in": 10**7}  # fmt: skip
FEE_CAP = {"btc": 200_000, "eth": 2 * 10**16}  # all the chain fees of one swap, both sides


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("crash"))
    network.add("relay")
    network.add("maker", bootstrap=["relay"], offers=[OFFER])
    network.add("taker", bootstrap=["relay"])
    with network:
        yield network


def _conserved(before: dict[str, int], after: dict[str, int]) -> None:
    """Per asset, the three wallets together lost no more than the chain fees and gained
    nothing: no value created, none lost beyond fees."""
    for asset, cap in FEE_CAP.items():
        lost = before[asset] - after[asset]
        assert 0 <= lost <= cap, (asset, before[asset], after[asset])


def _on_ledger_once(net: Network, order_id: str) -> list[str]:
    """The order is on the ledger once; its legs' outcomes (one each, the same for both)."""
    taker = net.nodes["taker"].sdk
    assert [o.order_id for o in taker.ledger_orders(limit=500)].count(order_id) == 1
    order = net.settled("taker", order_id, timeout=300)
    assert set(order.outcomes) == {"0", "1"}, order.outcomes
    return sorted(set(order.outcomes.values()))


# (victim, crash point); the trade is always taker -> relay -> maker, BTC -> ETH
# Not here yet: the relay's crash (``relay_signed``). Restarting the relay drops the line's
# links, the taker redials any peer it has learned (the maker among them), so the claim no
# longer needs the relay and the point is never reached (seen: "timed out waiting for relay to
# die"); the case needs a topology the restart cannot shortcut.
CASES = [
    ("taker", "trade_committed"),  # committed, swap not started
    ("maker", "enter:locked"),  # the maker's ETH lock buried
]
"""The cases run to green so far. Written on branch h/nodetests, not yet run to green on a quiet
machine (so not in CI): taker at trade_submitted, trade_signed, trade_swap_started,
enter:locked, after_broadcast:redeem; maker at maker_committed, maker_signed,
after_broadcast:redeem."""


@pytest.mark.parametrize(("victim", "point"), CASES, ids=[f"{v}-{p}" for v, p in CASES])
def test_sigkill_at_a_phase_boundary_then_restart_is_atomic(
    net: Network, victim: str, point: str
) -> None:
    taker = net.nodes["taker"].sdk
    net.restart(victim, crash_at=point)
    net.wait_offer("taker", "btc", "eth")
    before = net.holdings()
    view = taker.create_trade(sell="btc", amount=SATS, buy="eth", min_receive=MIN)
    net.wait_killed(victim, point)
    net.restart(victim)  # same home, no crash point

    done = net.trade_end("taker", view.trade_id, timeout=400)
    if point in ("relay_signed", "maker_signed"):
        # the route never completed its signatures: nothing was committed, nothing locked
        assert done.state == "failed", (done.state, done.error)
        assert done.order_id is None and done.height is None, done
        assert all(
            s.state in ("aborted", "redeemed", "refunded")
            for s in net.nodes["taker"].sdk.swaps(limit=500)
        )
        if point == "maker_signed":
            row = max(net.nodes["maker"].sdk.trades(limit=500), key=lambda t: t.created_at)
            assert row.order_id is not None
            with pytest.raises(KofoApiError):
                taker.ledger_order(row.order_id)  # never committed
            # the maker's engine has no swap for it: nothing of the maker's is locked
            assert row.order_id not in {s.swap_id for s in net.nodes["maker"].sdk.swaps()}
        _conserved(before, net.holdings())
        return

    assert done.state in ("redeemed", "refunded"), (done.state, done.error)
    assert done.order_id is not None
    made = net.maker_trade("maker", done.order_id)
    made = net.trade_end("maker", made.trade_id, timeout=400)
    # atomic: both redeemed (each got the other's leg) or both refunded (each got its own back)
    assert made.state == done.state, (done.state, made.state, made.error)
    assert _on_ledger_once(net, done.order_id) == [done.state]
    # one trade row per side for the order, never a second commit
    assert [t.order_id for t in taker.trades(limit=500)].count(done.order_id) == 1
    maker_rows = net.nodes["maker"].sdk.trades(limit=500)
    assert [t.order_id for t in maker_rows].count(done.order_id) == 1
    _conserved(before, until(net.holdings, "balances"))


def test_ledger_down_delays_a_trade_it_never_loses_or_doubles_one(net: Network) -> None:
    taker, maker = net.nodes["taker"].sdk, net.nodes["maker"].sdk
    net.wait_offer("taker", "btc", "eth")
    before = net.holdings()
    maker_swaps = {s.swap_id for s in maker.swaps(limit=500)}
    net.pause_ledger()
    try:
        view = taker.create_trade(sell="btc", amount=SATS, buy="eth", min_receive=MIN)
        # the route co-signs (no ledger needed), the taker cannot submit: it waits it out
        sub = until(
            lambda: (t := taker.trade(view.trade_id)).state == "submitted" and t,
            "the trade submitted while the ledger is down",
        )
        log = net.nodes["taker"]
        until(
            lambda: log.log().count(f"trade {view.trade_id}: ledger not reached") >= 2,
            "the taker retrying the submit",
        )
        # nothing locks before a commit is seen: no swap on either side
        assert {s.swap_id for s in maker.swaps(limit=500)} == maker_swaps
        assert sub.order_id not in {s.swap_id for s in taker.swaps(limit=500)}
        # the taker dies during the outage and comes back while the ledger is still down
        net.kill("taker")
        net.restart("taker", ledger=False)
        assert taker.trade(view.trade_id).state == "submitted"
    finally:
        net.resume_ledger()
    done = net.trade_end("taker", view.trade_id, timeout=400)
    assert done.state == "redeemed", (done.state, done.error)
    assert done.order_id == sub.order_id
    made = net.trade_end("maker", net.maker_trade("maker", done.order_id).trade_id, timeout=400)
    assert made.state == "redeemed", made.error
    assert _on_ledger_once(net, done.order_id) == ["redeemed"]
    assert [t.trade_id for t in taker.trades(limit=500)].count(view.trade_id) == 1
    _conserved(before, until(net.holdings, "balances"))
