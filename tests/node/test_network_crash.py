"""Trades, crashes and outages between real processes: ``kofo devnet`` and eight ``kofo node``
daemons in a fixed topology (``[p2p] discover = false``: each node links only its bootstrap
peers and those dialling in, never an address learned from peers), driven through the SDK::

    taker, t_a, t_b -- relay -- maker (BTC->ETH, BTC->DUSD, LTC->ETH, DUSD->LTC),
                                maker2 (ETH->BTC, DUSD->ETH)
    t_relay -- relay2 -- maker

- Every pair the devnet supports, routed through the relay, six trades at once (each of BTC,
  LTC, ETH and DUSD sold and bought at least once; LTC is served by the taker, the relay and
  the maker only, the nodes no crash lane restarts): each ends redeemed on both sides, the
  order settled with one outcome per leg, and per sold asset the relay's and the makers' fee
  shares and the foundation's 10 % add up to the protocol fees.
- The ledger down (the devnet's solo ledger paused) while a trade is submitted, the taker
  SIGKILLed and restarted during the outage: nothing locks before the commit is seen; once the
  ledger is back the trade commits once and settles.
- The crash matrix, four lanes at once. A node's crash point (``KOFO_CRASH_AT``) moves on at
  each restart, so one trade passes several: ``t_a`` at trade_signed, trade_submitted,
  trade_committed; ``t_b`` at trade_swap_started, enter:locked (its BTC lock buried),
  after_broadcast:redeem (its ETH redeem sent); ``maker2`` at maker_signed (that trade fails,
  nothing committed), then on the next trade at after_broadcast:lock (its BTC lock sent),
  after_broadcast:redeem (``CHAIN_MAKER``: why not maker_committed); ``relay2`` at
  relay_signed (the route's only relay: ``t_relay`` and the maker have no other link, so the
  restart cannot be bypassed; the trade fails, nothing committed). Each trade ends atomically
  (both sides redeemed, or failed with nothing committed or locked), the ledger shows each
  order once with one outcome per leg, and per asset all wallets together lose at most the
  chain fees. (Every point after trade_signed runs the same code on a restart as on the first
  run: ``_commit_and_start``.)

What made a crash case cost minutes before (measured): the devnet's 0.2 s Bitcoin blocks, which
every node start indexes from genesis (``ChainIndex``: two RPCs and a full check per block),
and the homes' scrypt at 2^18 (wallet and Paillier key, unlocked at every start: ~14 s each at
load 28). Now 1 s blocks (the devnet policy's own pace) and the key store's floor, 2^17
(``procnet.TEST_SCRYPT_N``), and the cases share one network and run concurrently.

Measured on the 2-core machine shared with seven other jobs (no idle machine was available),
the whole module in one process: 642 s at load 23-56 and 993 s at load 23-44, green (a
restart 30-120 s); with two CPU burners beside it as well (load 19-49) a restart took up to
3.5 min and ``t_b``'s swap passed its redeem deadline: an atomic refund, which the lane counts
as a failure (docs/node.md, "Multi-process tests"); the final chains with burners (load
13-26): 708 s, green. Before the merge with main: 225 s at load 11-12. Every case stays in
the default run (``slow`` is only a label: ``make test`` runs it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kofo.sdk.errors import KofoApiError
from tests.node.procnet import Network, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PRICE = 10**10  # wei per satoshi
SATS = 1_000_000
MIN = SATS * PRICE * 98 // 100  # the route's fees come out of the maker's price
WEI = SATS * PRICE  # what an ETH->BTC trade sells
WEI_MIN = WEI // PRICE * 98 // 100
DUSD_PER_SAT = 500  # DUSD base units (6 decimals) per satoshi
WEI_PER_DUSD = 4 * 10**8  # wei per DUSD base unit
DUSD_IN = 100 * 10**6  # what a DUSD->ETH trade sells
OFFER_TTL = 60
"""Seconds an offer announcement lives (re-announced at half). Seen once: ``t_relay`` never got
the maker's offer through ``relay2``: the maker had linked a taker instead of ``relay2`` (fixed:
``discover = false`` learns no address). Kept as a test-side repair of a missed flood until
the exchange's own fix (h/gossip) is merged: the default ttl (3600 s) re-announces only every
30 minutes."""
MAKER_OFFERS = [
    {"buy": "btc", "sell": "eth", "price_num": PRICE, "price_den": 1,
     "min_in": 10_000, "max_in": 10**8, "ttl": OFFER_TTL},
    {"buy": "btc", "sell": "DUSD", "price_num": DUSD_PER_SAT, "price_den": 1,
     "min_in": 10_000, "max_in": 10**8, "ttl": OFFER_TTL},
    {"buy": "ltc", "sell": "eth", "price_num": PRICE, "price_den": 1,
     "min_in": 10_000, "max_in": 10**8, "ttl": OFFER_TTL},
    {"buy": "DUSD", "sell": "ltc", "price_num": 1, "price_den": DUSD_PER_SAT,
     "min_in": 10**6, "max_in": 10**10, "ttl": OFFER_TTL},
]  # fmt: skip
MAKER2_OFFERS = [
    {"buy": "eth", "sell": "btc", "price_num": 1, "price_den": PRICE,
     "min_in": 10**14, "max_in": 10**18, "ttl": OFFER_TTL},
    {"buy": "DUSD", "sell": "eth", "price_num": WEI_PER_DUSD, "price_den": 1,
     "min_in": 10**6, "max_in": 10**10, "ttl": OFFER_TTL},
]  # fmt: skip
# all the chain fees of one swap, both sides
FEE_CAP = {"btc": 200_000, "ltc": 200_000, "eth": 2 * 10**16}
CHAIN_A = ["trade_signed", "trade_submitted", "trade_committed"]
"""``t_a``'s crash points, one per start: signed and kept, not sent; ``submitted`` journaled,
not broadcast; committed, the swap not started."""
CHAIN_B = ["trade_swap_started", "enter:locked", "after_broadcast:redeem"]
"""``t_b``'s: the swap proposed and accepted; its BTC lock buried; its ETH redeem sent."""
CHAIN_MAKER = ["after_broadcast:lock", "after_broadcast:redeem"]
"""``maker2``'s on its second trade (the first kills it at maker_signed): its BTC lock
broadcast, the state not yet ``lock_sent``; its ETH redeem sent. Not ``enter:locked``: a
participant passes ``locked`` only if it sees its own lock buried before the taker's redeem
reveals the secret (seen skipped: ``lock_sent`` -> ``redeem_signed``). Not ``maker_committed``
either: the daemon hits it only when its watcher sees the commit before the taker's proposal
comes; when the proposal comes first the accept path reads the commit and the point is never
passed (seen in one run of five: the lane waited 400 s for a kill that could not come). The
recovery it was to test (the proposal re-sent until the restarted maker accepts) passed in
the four runs that reached it and is tested in process
(``test_a_maker_down_right_after_the_commit_gets_the_proposal_again_after_its_restart``)."""
BLOCK_INTERVAL = 1.0
"""Seconds between the devnet's Bitcoin blocks: the devnet policy's own ``block_interval``, so
heights expire at the pace the margins assume. Not faster: every node start indexes every
block from genesis (``ChainIndex``: two RPCs and a full check per block), so at 0.2 s a restart
late in the module read thousands of blocks while every node polled the one devnet."""
FAST_TIMING = False
"""Not ``kofo devnet --fast-timing``: its windows (a 20 s lock window, 15 s accept window, legs
10 s apart) are shorter than a SIGKILLed node's restart on a loaded 2-core machine (30-100 s at
load 20: two scrypt unlocks, the chain index, the ledger), so a crash case would test the
refund path instead of the resumption it is about (tried: at load 20 even the uncrashed pairs
refunded, a DUSD lock signed 17 s after the commit). It buys no speed here: with 1 s blocks and
the default one confirmation a trade that does not refund never waits for a window; the
module's minutes are node starts."""
T0 = time.monotonic()


def _stamp(what: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {what}", flush=True)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(
        tmp_path_factory.mktemp("crash"), block_interval=BLOCK_INTERVAL, fast_timing=FAST_TIMING
    )
    network.add("relay", discover=False, ltc=True)
    network.add("relay2", discover=False, crash_at="relay_signed")
    network.add(
        "maker", bootstrap=["relay", "relay2"], offers=MAKER_OFFERS, discover=False, ltc=True
    )
    network.add("maker2", bootstrap=["relay"], offers=MAKER2_OFFERS, discover=False)
    network.add("taker", bootstrap=["relay"], discover=False, ltc=True)
    network.add("t_a", bootstrap=["relay"], discover=False, crash_at=CHAIN_A[0])
    network.add("t_b", bootstrap=["relay"], discover=False, crash_at=CHAIN_B[0])
    network.add("t_relay", bootstrap=["relay2"], discover=False)
    _stamp("homes written")
    with network:
        _stamp("network up")
        yield network


def _conserved(before: dict[str, int], after: dict[str, int], swaps: int = 1) -> None:
    """Per asset, the wallets together lost no more than the chain fees of ``swaps`` swaps
    and gained nothing: no value created, none lost beyond fees (a token pays no fee)."""
    assert set(before) == set(after), (before, after)
    for asset in before:
        cap = FEE_CAP.get(asset, 0) * swaps
        lost = before[asset] - after[asset]
        assert 0 <= lost <= cap, (asset, before[asset], after[asset])


def _both_redeemed_once(net: Network, taker: str, maker: str, done: Any) -> None:
    """The taker's ended trade: redeemed on both sides, the order once on the ledger with both
    legs redeemed, one trade row per side."""
    assert done.state == "redeemed", (taker, done.state, done.error)
    assert done.order_id is not None
    made = net.trade_end(maker, net.maker_trade(maker, done.order_id).trade_id, timeout=400)
    assert made.state == "redeemed", (taker, made.state, made.error)
    sdk = net.nodes[taker].sdk
    assert [o.order_id for o in sdk.ledger_orders(limit=500)].count(done.order_id) == 1
    order = net.settled(taker, done.order_id, timeout=300)
    assert order.outcomes == {"0": "redeemed", "1": "redeemed"}, (taker, order.outcomes)
    assert [t.order_id for t in sdk.trades(limit=500)].count(done.order_id) == 1, taker
    rows = net.nodes[maker].sdk.trades(limit=500)
    assert [t.order_id for t in rows].count(done.order_id) == 1, taker


def _nothing_committed(net: Network, taker: str, done: Any) -> None:
    """The route never completed its signatures: the trade failed, no order committed, no
    swap of the taker's holds anything."""
    assert done.state == "failed", (taker, done.state, done.error)
    assert done.order_id is None and done.height is None, done
    assert all(
        s.state in ("aborted", "redeemed", "refunded")
        for s in net.nodes[taker].sdk.swaps(limit=500)
    )


def _crash_chain(net: Network, name: str, points: list[str], then: str | None = None) -> None:
    """``name`` runs with ``points[0]`` as its crash point; each time it SIGKILLs itself there
    (``wait_killed`` checks the signal), start it again (same home) with the next point, and
    after the last with ``then``."""
    for point, after in zip(points, [*points[1:], then], strict=True):
        net.wait_killed(name, point, timeout=400)
        hit = net.crashes(name)
        assert hit and hit[-1] == point, (name, point, hit[-5:])
        _stamp(f"{name} died at {point}")
        net.start_node(name, after)


def _fee_shares(net: Network, asset: str) -> dict[str, int]:
    out = {}
    for name in ("relay", "maker", "maker2"):
        out[name] = sum(s.amount for s in net.nodes[name].sdk.fee_shares() if s.asset == asset)
    out["foundation"] = net.foundation(asset)
    return out


# -- every pair, routed -----------------------------------------------------------------------

PAIRS = [  # sell, amount, buy, the maker's gross price for it, the maker
    ("btc", SATS, "eth", SATS * PRICE, "maker"),
    ("eth", WEI, "btc", WEI // PRICE, "maker2"),
    ("btc", SATS, "DUSD", SATS * DUSD_PER_SAT, "maker"),
    ("DUSD", DUSD_IN, "eth", DUSD_IN * WEI_PER_DUSD, "maker2"),
    # LTC both ways (the devnet's embedded Litecoin regtest chain), the fewest trades that do
    ("ltc", SATS, "eth", SATS * PRICE, "maker"),
    ("DUSD", DUSD_IN, "ltc", DUSD_IN // DUSD_PER_SAT, "maker"),
]


def test_every_pair_routed_through_a_relay_settles_with_its_fees(net: Network) -> None:
    """The six pairs at once from one taker (claims all out before any swap opens a direct
    link to a maker): each routed taker -> relay -> maker, then the ledger checked per order
    and the fee shares per sold asset.

    Found failing here, fixed since: the taker's two BTC locks, signed at once, spent the same
    outpoint (coins are now held from their choice: docs/swap.md, attack 16); a trade went
    direct, 1 hop, the maker having linked the taker when its dial to ``relay2`` failed
    (``[p2p] discover = false`` now learns no address: docs/node.md)."""
    taker = net.nodes["taker"].sdk
    params = net.params()
    bps, foundation_bps = int(params["protocol_fee_bps"]), int(params["foundation_bps"])
    assert bps > 0 and foundation_bps == 1_000
    for sell, _, buy, _, _ in PAIRS:
        net.wait_offer("taker", sell, buy)  # the offer's buy is what the taker sells
    sold = sorted({net.asset(sell) for sell, *_ in PAIRS})
    before = net.holdings()
    shares = {a: _fee_shares(net, a) for a in sold}
    views = [
        taker.create_trade(sell=sell, amount=amount, buy=buy, min_receive=gross * 98 // 100)
        for sell, amount, buy, gross, _ in PAIRS
    ]
    fees: dict[str, list[int]] = {a: [] for a in sold}
    for (sell, amount, buy, gross, maker), view in zip(PAIRS, views, strict=True):
        done = net.trade_end("taker", view.trade_id)
        _stamp(f"pair {sell}->{buy}: {done.state}")
        assert done.hops == 2, (sell, buy, done)  # taker -> relay -> maker
        assert done.receive is not None and gross * 98 // 100 <= done.receive <= gross
        _both_redeemed_once(net, "taker", maker, done)
        fees[net.asset(sell)].append(amount * bps // 10_000)
    for asset in sold:
        # the protocol fees in the sold asset: the relay's and the makers' shares and the
        # foundation's 10 % of each order, exactly
        want = sum(f * foundation_bps // 10_000 for f in fees[asset])
        now = until(
            lambda a=asset, w=want: (
                (s := _fee_shares(net, a))["foundation"] - shares[a]["foundation"] >= w and s
            ),
            f"the fees in {asset} credited",
        )
        gained = {k: now[k] - shares[asset][k] for k in now}
        assert gained["foundation"] == want, (asset, gained, fees[asset])
        assert gained["relay"] > 0, (asset, gained)
        assert gained["maker"] + gained["maker2"] > 0, (asset, gained)
        assert sum(gained.values()) == sum(fees[asset]), (asset, gained, fees[asset])
    _conserved(before, until(net.holdings, "balances"), swaps=len(PAIRS))


# -- the ledger down --------------------------------------------------------------------------


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
    _stamp(f"outage trade: {done.state}")
    assert done.order_id == sub.order_id
    _both_redeemed_once(net, "taker", "maker", done)
    assert [t.trade_id for t in taker.trades(limit=500)].count(view.trade_id) == 1
    _conserved(before, until(net.holdings, "balances"))


# -- SIGKILL at each phase boundary -----------------------------------------------------------


def _taker_lane(net: Network, name: str, points: list[str]) -> None:
    sdk = net.nodes[name].sdk
    view = sdk.create_trade(sell="btc", amount=SATS, buy="eth", min_receive=MIN)
    _crash_chain(net, name, points)
    done = net.trade_end(name, view.trade_id, timeout=400)
    _stamp(f"{name}: {done.state}")
    _both_redeemed_once(net, name, "maker", done)


def _relay_lane(net: Network) -> None:
    view = net.nodes["t_relay"].sdk.create_trade(
        sell="btc", amount=SATS, buy="eth", min_receive=MIN
    )
    _crash_chain(net, "relay2", ["relay_signed"])
    done = net.trade_end("t_relay", view.trade_id, timeout=400)
    _stamp(f"t_relay: {done.state}")
    # relay2 died holding its co-signature: the order never completed, nothing committed
    _nothing_committed(net, "t_relay", done)


def _maker_lane(net: Network) -> None:
    taker, maker = net.nodes["taker"].sdk, net.nodes["maker2"]
    net.restart("maker2", crash_at="maker_signed")
    net.wait_offer("taker", "eth", "btc")
    view = taker.create_trade(sell="eth", amount=WEI, buy="btc", min_receive=WEI_MIN)
    _crash_chain(net, "maker2", ["maker_signed"], then=CHAIN_MAKER[0])
    done = net.trade_end("taker", view.trade_id, timeout=400)
    _stamp(f"maker_signed trade: {done.state}")
    _nothing_committed(net, "taker", done)
    # the maker journaled the order before its signature (never sent): never committed, and
    # its engine has no swap for it
    row = until(
        lambda: max(maker.sdk.trades(limit=500), key=lambda t: t.created_at),
        "maker2's trade rows",
    )
    assert row.order_id is not None and row.role == "maker", row
    with pytest.raises(KofoApiError):
        taker.ledger_order(row.order_id)
    assert row.order_id not in {s.swap_id for s in maker.sdk.swaps(limit=500)}

    net.wait_offer("taker", "eth", "btc")
    view = taker.create_trade(sell="eth", amount=WEI, buy="btc", min_receive=WEI_MIN)
    _crash_chain(net, "maker2", CHAIN_MAKER)
    done = net.trade_end("taker", view.trade_id, timeout=400)
    _stamp(f"maker2 chain trade: {done.state}")
    _both_redeemed_once(net, "taker", "maker2", done)


def test_every_party_killed_at_each_phase_boundary_then_restarted(net: Network) -> None:
    """Four lanes at once (module docstring): two takers, the maker and the relay, each
    SIGKILLed at its phase boundaries in turn and restarted; every trade atomic, value
    conserved over all the wallets, each order once on the ledger."""
    for name, sell in [("t_a", "btc"), ("t_b", "btc"), ("t_relay", "btc"), ("taker", "eth")]:
        net.wait_offer(name, sell, "btc" if sell == "eth" else "eth")
    before = net.holdings()
    lanes: list[Callable[[], None]] = [
        lambda: _taker_lane(net, "t_a", CHAIN_A),
        lambda: _taker_lane(net, "t_b", CHAIN_B),
        lambda: _relay_lane(net),
        lambda: _maker_lane(net),
    ]
    with ThreadPoolExecutor(len(lanes)) as pool:
        for future in [pool.submit(lane) for lane in lanes]:
            future.result()
    for name in ("t_a", "t_b", "relay2", "maker2"):
        net.wait_ready(name)
    hit = {n: net.crashes(n) for n in ("t_a", "t_b", "relay2", "maker2")}
    assert all(p in hit["t_a"] for p in CHAIN_A), hit["t_a"]
    assert all(p in hit["t_b"] for p in CHAIN_B), hit["t_b"]
    assert "relay_signed" in hit["relay2"]
    assert all(p in hit["maker2"] for p in ["maker_signed", *CHAIN_MAKER]), hit["maker2"]
    # three swaps ran (t_a's, t_b's and maker2's second trade); the failed trades locked nothing
    _conserved(before, until(net.holdings, "balances"), swaps=3)
