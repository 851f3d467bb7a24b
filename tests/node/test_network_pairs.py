"""Every pair the devnet settles, routed through a relay, between real processes: one
``kofo devnet`` and three ``kofo node`` daemons (taker - relay - maker, a fixed line), driven
through the SDK. After each trade both sides are ``redeemed``, the order is ``settled`` on the
ledger with both outcomes, the protocol fee is split as the ledger's rule says (foundation
10 %, the relay's and the maker's shares, decrypted by each node) and the taker's wallet moved
by its legs and no more than the chain fees. The devnet has no LTC chain: LTC pairs need the
real-node test (not built yet).

One network for the module, four trades: 7-8 minutes on this 2-core machine at load ~20
(setup ~4 min)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kofo.clearance.fees import split_fee
from tests.node.procnet import Network

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BTC_ETH = 10**10  # wei per satoshi (1 BTC = 100 ETH... 10^6 sat = 0.01 ETH)
BTC_DUSD = 500  # DUSD units (6 decimals) per satoshi: 1 BTC = 50,000 DUSD
DUSD_ETH = 5 * 10**8  # wei per DUSD unit: 1 DUSD = 0.0005 ETH

OFFERS = [
    {"buy": "btc", "sell": "eth", "price_num": BTC_ETH, "price_den": 1,
     "min_in": 10_000, "max_in": 10**7},
    {"buy": "eth", "sell": "btc", "price_num": 1, "price_den": BTC_ETH,
     "min_in": 10**14, "max_in": 10**17},
    {"buy": "btc", "sell": "DUSD", "price_num": BTC_DUSD, "price_den": 1,
     "min_in": 10_000, "max_in": 10**7},
    {"buy": "DUSD", "sell": "eth", "price_num": DUSD_ETH, "price_den": 1,
     "min_in": 10**6, "max_in": 10**9},
]  # fmt: skip

BTC_FEE_CAP = 100_000  # sat: more than the taker's funding and redeem fees
ETH_FEE_CAP = 10**16  # wei: more than the gas of a lock and a redeem


_TRADED: list[str] = []


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("pairs"))
    network.add("relay")
    network.add("maker", bootstrap=["relay"], offers=OFFERS)
    network.add("taker", bootstrap=["relay"])
    with network:
        yield network


def _fees(net: Network, name: str) -> dict[str, int]:
    return {f.asset: f.amount for f in net.nodes[name].sdk.fee_shares()}


def _balances(net: Network, name: str) -> dict[str, int]:
    return {b.asset: b.available + b.reserved for b in net.nodes[name].sdk.balances()}


@pytest.mark.parametrize(
    ("sell", "amount", "buy", "receive"),
    [
        ("btc", 10**6, "eth", 10**6 * BTC_ETH),
        ("eth", 10**16, "btc", 10**16 // BTC_ETH),
        ("btc", 10**6, "DUSD", 10**6 * BTC_DUSD),
        ("DUSD", 10**8, "eth", 10**8 * DUSD_ETH),
    ],
    ids=["btc-eth", "eth-btc", "btc-erc20", "erc20-eth"],
)
def test_routed_pair_settles_with_fee_shares(
    net: Network, sell: str, amount: int, buy: str, receive: int
) -> None:
    taker = net.nodes["taker"].sdk
    offer = next(o for o in OFFERS if o["buy"] == sell and o["sell"] == buy)
    net.wait_offer("taker", offer["buy"], offer["sell"])
    sell_id, buy_id = net.asset(sell), net.asset(buy)
    fees_before = {n: _fees(net, n) for n in ("relay", "maker")}
    foundation_before = net.foundation(sell_id)
    wallet_before = _balances(net, "taker")
    relay_wallet_before = _balances(net, "relay")

    # the route's fees come out of what the maker's price gives: ask for 98 % of it
    view = taker.create_trade(sell=sell, amount=amount, buy=buy, min_receive=receive * 98 // 100)
    done = net.trade_end("taker", view.trade_id)
    phases = [p.phase for p in done.phases]
    assert done.state == "redeemed", (done.error, phases)
    # the first trade of the fresh line goes through the relay; later ones may go direct:
    # the swap messages of an earlier trade left a direct taker-maker link (the exchange's
    # direct messages), which then carries claims too
    assert done.order_id and done.receive is not None and done.hops is not None
    assert done.hops == 2 if not _TRADED else done.hops in (1, 2), done.hops
    _TRADED.append(done.order_id)
    relays = [bytes.fromhex(net.nodes["relay"].node_id)] if done.hops == 2 else []
    assert receive * 98 // 100 <= done.receive <= receive, (done.receive, receive)
    receive = done.receive  # the chosen quote: the order's second leg
    for want in ("claim_sent", "quotes", "ordering", "submitted", "committed", "redeemed"):
        assert want in phases, phases
    made = net.maker_trade("maker", done.order_id)
    made = net.trade_end("maker", made.trade_id)
    assert made.state == "redeemed", made.error

    # the ledger: settled once, both legs redeemed, the fee split by the rule
    order = net.settled("taker", done.order_id)
    assert order.outcomes == {"0": "redeemed", "1": "redeemed"}
    leg0 = order.legs[0]
    token = leg0.get("token")
    assert sell_id == (leg0["chain"] if token is None else f"{leg0['chain']}:{token}")
    assert order.height == done.height
    assert [o.order_id for o in taker.ledger_orders(limit=200)].count(done.order_id) == 1
    params = net.params()
    notional = amount  # the first leg's amount: what the taker sells
    # a routed order pays the protocol fee; a direct two-party one pays none
    fee = notional * params["protocol_fee_bps"] // 10_000 if relays else 0
    split = split_fee(
        fee,
        relays,
        [bytes.fromhex(net.nodes["maker"].node_id)],
        foundation_bps=params["foundation_bps"],
        relay_pool_bps=params["relay_pool_bps"],
    )
    assert split.foundation == fee // 10 and (fee > 0 or not relays)  # the foundation's 10 %
    assert net.foundation(sell_id) - foundation_before == split.foundation
    relay_share = split.shares[0][1] if relays else 0
    maker_share = split.shares[-1][1]
    for name, share in (("relay", relay_share), ("maker", maker_share)):
        got = _fees(net, name).get(sell_id, 0) - fees_before[name].get(sell_id, 0)
        assert got == share, (name, got, share)

    # the taker's wallet: the sold leg left (plus at most the chain fees), the bought one
    # arrived (less at most the gas when it is ether); the relay's wallet did not move
    after = _balances(net, "taker")
    spent = wallet_before[sell_id] - after[sell_id]
    got = after[buy_id] - wallet_before[buy_id]
    cap = {"btc": BTC_FEE_CAP, "eth": ETH_FEE_CAP}
    assert amount <= spent <= amount + cap.get(sell_id, 0), (spent, amount)
    assert receive - cap.get(buy_id, 0) <= got <= receive, (got, receive)
    assert _balances(net, "relay") == relay_wallet_before
