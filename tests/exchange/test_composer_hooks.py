"""The hooks the node daemon composes an exchange node with (issue 14 items 5 and 7): per-chain
expiries in the order, the order guard, the liquidity cap and fill reports. Real nodes on
loopback, as in test_network.py."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace

import pytest

from kofo.exchange.node import ExchangeConfig, ExchangeNode, RouteFailed
from kofo.exchange.route import OrderPolicy
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.orders import SettlementOrder, with_derived_id

from .helpers import line, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}
BTC_TIP = 800_000
BLOCK_S = 600


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def fit(chain: str, expiry_time: int, now_s: int) -> Expiry:
    """A composer's view: btc counts blocks from its tip (10 minutes each), eth is unix."""
    if chain == "btc":
        return BlockHeight(BTC_TIP + (expiry_time - now_s) // BLOCK_S)
    if chain == "eth":
        return UnixTime(expiry_time)
    raise KeyError(chain)


def check_within(blocks: int, tip: int = BTC_TIP):
    """The provider's check: the height must be within ``blocks`` of its own fit."""

    def check(chain: str, expiry: Expiry, expiry_time: int, now_s: int) -> None:
        mine = tip + (expiry_time - now_s) // BLOCK_S
        if not isinstance(expiry, BlockHeight) or abs(expiry.value - mine) > blocks:
            raise OrderPolicy(f"{chain} expiry {expiry} is not within {blocks} blocks of {mine}")

    return check


async def quoted(nodes: list[ExchangeNode], amount: int = 10**6):
    nodes[-1].publish_offer("btc", "eth", (30, 1), max_in=10**8)
    await wait_until(lambda: len(nodes[0].book) == 1)
    cid, quotes = await nodes[0].request_quotes("btc", "eth", amount, window_s=5, enough=1)
    assert quotes
    return cid, quotes[0]


def test_routed_order_with_block_heights_on_btc_is_cosigned_by_all():
    # Fails on old code: every leg had a unix expiry (no expiry_fit), and a height leg differed
    # from what each co-signer derived.
    seen: list[tuple[str, Expiry, int]] = []

    def provider_check(chain: str, expiry: Expiry, expiry_time: int, now_s: int) -> None:
        seen.append((chain, expiry, expiry_time))
        check_within(3)(chain, expiry, expiry_time, now_s)

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=5.0)
        taker, _relay, maker = nodes
        taker.config.expiry_fit = fit
        # The relay has no view of any chain: it accepts any height (it holds no leg).
        maker.config.expiry_fit = fit
        maker.config.expiry_check = provider_check
        try:
            cid, quote = await quoted(nodes)
            commit = await taker.settle(cid, quote, os.urandom(32))
            commit.verify_party_signatures()
            order = commit.order
            assert set(order.parties()) == {n.node_id for n in nodes}
            out, back = order.legs
            assert out.chain == "btc" and isinstance(out.expiry, BlockHeight)
            assert back.chain == "eth" and back.expiry == UnixTime(back.expiry_time)
            # expiry_time stays the unix estimate the ledger orders by.
            assert back.expiry_time < out.expiry_time
            assert out.expiry.value == BTC_TIP + (out.expiry_time - (out.lock_by - 600)) // 600
            assert seen == [("btc", out.expiry, out.expiry_time)]
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.parametrize("tip", [BTC_TIP - 10, BTC_TIP + 10], ids=["too-late", "too-early"])
def test_provider_refuses_a_height_its_own_view_does_not_accept(caplog, tip):
    # The maker's chain view differs from the taker's by 10 blocks: the height is too late
    # (maker's tip behind) or too early for it. It does not sign; the taker gets RouteFailed;
    # the relay before it is not scored (the refusal is the maker's own policy).
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5)
        taker, relay, maker = nodes
        taker.config.expiry_fit = fit
        maker.config.expiry_check = check_within(3, tip=tip)
        try:
            cid, quote = await quoted(nodes)
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quote, os.urandom(32))
            assert "is not within 3 blocks" in caplog.text
            assert maker._scores.get(relay.node_id, 0) == 0
        finally:
            await stop_all(nodes)

    run(go())


def test_a_relay_that_changes_the_height_is_caught_by_the_provider(caplog):
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5)
        taker, relay, maker = nodes
        taker.config.expiry_fit = fit
        maker.config.expiry_fit = fit
        maker.config.expiry_check = check_within(1000)  # lenient: only the signature stops it
        signed: list[str] = []
        maker.config.order_guard = lambda order, role: signed.append(role)
        try:
            cid, quote = await quoted(nodes)
            link = relay.links[maker.node_id]
            send = link.send

            def tamper(frame):
                if frame.type == "order":
                    order = SettlementOrder.from_map(frame.body["o"])
                    out = order.legs[0]
                    later = replace(out, expiry=BlockHeight(out.expiry.value + 500))
                    forged = with_derived_id(replace(order, legs=(later, order.legs[1])))
                    frame.body["o"] = forged.as_map()
                return send(frame)

            link.send = tamper
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quote, os.urandom(32))
            # The initiator's signature does not cover the forged height: refused and scored.
            assert "order: initiator signature does not verify (penalty 25)" in caplog.text
            assert signed == []
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.parametrize(
    "taker_fit, clocks, why",
    [
        # A height on an Ethereum leg (unix-clocked), from a taker fitting every chain to heights.
        (lambda c, t, n: BlockHeight(BTC_TIP), {"eth": "unix"}, "chain 'eth' expires by unix"),
        # A unix time on a Bitcoin leg, which the maker knows is height-clocked.
        (None, {"btc": "height"}, "chain 'btc' expires by block height"),
    ],
    ids=["height-on-eth", "unix-on-btc"],
)
def test_an_expiry_in_the_wrong_unit_is_refused(caplog, taker_fit, clocks, why):
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5)
        taker, _relay, maker = nodes
        taker.config.expiry_fit = taker_fit
        maker.config.chain_clocks = clocks
        maker.config.expiry_check = lambda *a: None
        try:
            cid, quote = await quoted(nodes)
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quote, os.urandom(32))
            assert why in caplog.text
        finally:
            await stop_all(nodes)

    run(go())


def test_a_unix_leg_on_a_height_chain_is_refused_by_what_the_fit_gives():
    # Without chain_clocks, the provider's own expiry_fit tells it btc is height-clocked.
    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5)
        taker, _relay, maker = nodes
        maker.config.expiry_fit = fit
        maker.config.expiry_check = lambda *a: None
        try:
            cid, quote = await quoted(nodes)
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quote, os.urandom(32))
        finally:
            await stop_all(nodes)

    run(go())


def test_order_guard_runs_once_per_signed_order_before_its_signature_and_can_refuse(caplog):
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(4, addresses=ADDR, settle_timeout_s=1.5, dummy_hops=0)
        taker, r1, r2, maker = nodes
        calls: list[tuple[bytes, str, bytes]] = []

        def guard_of(node: ExchangeNode):
            def guard(order: SettlementOrder, role: str) -> None:
                calls.append((node.node_id, role, order.order_id))

            return guard

        for n in (r1, r2, maker):
            n.config.order_guard = guard_of(n)
        try:
            cid, quote = await quoted(nodes)
            commit = await taker.settle(cid, quote, os.urandom(32))
            oid = commit.order.order_id
            assert sorted(calls) == sorted(
                [
                    (r1.node_id, "relay", oid),
                    (r2.node_id, "relay", oid),
                    (maker.node_id, "provider", oid),
                ]
            )

            # A refusing guard (say, the maker's liquidity is reserved elsewhere): no signature,
            # the taker's route fails, the relay that forwarded the order is not scored.
            def refuse(order: SettlementOrder, role: str) -> None:
                from kofo.errors import KofoError

                raise KofoError("liquidity is reserved", code="no_liquidity")

            maker.config.order_guard = refuse
            cid, quote = await quoted(nodes)
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quote, os.urandom(32))
            assert "refused by this node: [no_liquidity] liquidity is reserved" in caplog.text
            assert maker._scores.get(r2.node_id, 0) == 0
        finally:
            await stop_all(nodes)

    run(go())


def test_a_fill_never_offers_more_out_than_the_liquidity_and_is_reported():
    # Fails on old code: the fill was the offer's (30,000,000 out), whatever the wallet held.
    async def go():
        nodes = await line(2, addresses=ADDR, dummy_hops=0)
        taker, maker = nodes
        fills: list[tuple[str, int, int]] = []
        held = {"eth": 3_000_000}
        maker.config.liquidity = lambda asset: held.get(asset, 0)
        maker.config.on_fill = lambda asset, out, until: fills.append((asset, out, until))
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            _, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            assert [(q.amount_in, q.delivered) for q in quotes] == [(100_000, 3_000_000)]
            assert fills == [("eth", 3_000_000, quotes[0].fulfil.fulfil.valid_until_ms)]
            held["eth"] = 0  # nothing to pay out: no quote at all
            _, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=0.5)
            assert quotes == [] and len(fills) == 1
        finally:
            await stop_all(nodes)

    run(go())


def test_a_liquidity_cap_below_an_offers_min_in_or_a_whole_only_offer_gives_no_fill():
    from kofo.exchange.node import _capped_offer_fill
    from kofo.wire.exchange import Offer

    def offer(**kw: object) -> Offer:
        base = dict(
            offer_id=bytes(16),
            buy="btc",
            sell="eth",
            price_num=30,
            price_den=1,
            min_in=1,
            max_in=10**8,
            partial=True,
            fee=7,
            expiry_ms=1,
            seq=1,
        )
        return Offer(**{**base, **kw})  # type: ignore[arg-type]

    # Scaled to the largest input whose output (less the offer's fee) fits the cap.
    assert _capped_offer_fill(offer(), 10**6, 3_000_000) == (100_000, 2_999_993)
    assert _capped_offer_fill(offer(), 10**6, 2_999_999) == (100_000, 2_999_993)
    assert _capped_offer_fill(offer(), 10**6, 2_999_992) == (99_999, 2_999_963)
    assert _capped_offer_fill(offer(min_in=200_000), 10**6, 3_000_000) is None
    assert _capped_offer_fill(offer(partial=False), 10**6, 3_000_000) is None
    assert _capped_offer_fill(offer(), 10**6, None) == (10**6, 30 * 10**6 - 7)


def test_config_refuses_a_bad_contact_or_clock_unit():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kofo.errors import InvalidInput

    with pytest.raises(InvalidInput, match="contact"):
        ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(contact="no-port"))
    with pytest.raises(InvalidInput, match="chain_clocks"):
        ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(chain_clocks={"btc": "blocks"}))


def test_importance_is_read_at_each_use_and_a_failing_lookup_counts_as_none():
    # Equal quotes through two neighbours rank by the neighbour's ledger importance as the
    # composer's callable gives it now. A lookup that raises (ledger unreachable) counts as 0;
    # on old code it raised out of request_quotes (and, at a relay, scored the sender).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .helpers import link

    async def go():
        scores: dict[bytes, float] = {}
        down: set[bytes] = set()

        def importance(node_id: bytes) -> float:
            if node_id in down:
                raise ConnectionError("ledger unreachable")
            return scores.get(node_id, 0.0)

        hub = ExchangeNode(
            Ed25519PrivateKey.generate(),
            ExchangeConfig(target_degree=0, addresses=ADDR, dummy_hops=0),
            importance=importance,
        )
        await hub.start()
        makers = await line(1, addresses=ADDR) + await line(1, addresses=ADDR)
        nodes = [hub, *makers]
        try:
            for m in makers:
                await link(hub, m)
                m.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(hub.book) == 2)
            for top in makers:
                scores.clear()
                scores[top.node_id] = 5.0
                _, quotes = await hub.request_quotes("btc", "eth", 1000, window_s=5, enough=2)
                assert quotes[0].via == top.node_id
            down.add(makers[0].node_id)
            scores[makers[1].node_id] = 1.0
            _, quotes = await hub.request_quotes("btc", "eth", 1000, window_s=5, enough=2)
            assert [q.via for q in quotes] == [makers[1].node_id, makers[0].node_id]
        finally:
            await stop_all(nodes)

    run(go())


def test_composer_callbacks_that_fail_refuse_quietly_and_never_score_a_peer(caplog):
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5, dummy_hops=0)
        taker, relay, maker = nodes
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)

            def broken(*_a: object) -> int:
                raise RuntimeError("wallet offline")

            for hook in ("liquidity", "on_fill"):
                setattr(maker.config, hook, broken)
                _, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=0.5)
                assert quotes == []
                setattr(maker.config, hook, None)
            assert "liquidity('eth') failed: wallet offline" in caplog.text
            assert "on_fill failed: wallet offline" in caplog.text
            maker.config.order_guard = broken
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quotes[0], os.urandom(32))
            assert "refused by this node: wallet offline" in caplog.text
            taker.config.expiry_fit = broken
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            with pytest.raises(RouteFailed, match="could not be built: wallet offline"):
                await taker.settle(cid, quotes[0], os.urandom(32))
            assert not maker._scores and not relay._scores and not taker._scores
        finally:
            await stop_all(nodes)

    run(go())


def test_a_provider_whose_addresses_rotate_after_its_join_still_signs_the_order(monkeypatch):
    """A maker's composer rotates its addresses for every order (a fresh HTLC key per swap),
    so with trades running at once they change between this claim's join and its order. The
    provider checks the order against the addresses it put in its join. Old code compared them
    with its current addresses: ``legs[0].recipient_address differs`` and the route failed
    (found by bench.trade at 20 concurrent trades)."""

    async def go():
        nodes = await line(3, addresses=dict(ADDR), settle_timeout_s=5.0)
        taker, _relay, maker = nodes
        original = ExchangeNode._handlers["accept"]

        def accept_then_rotate(node, link, body):
            original(node, link, body)
            if node is maker:  # another claim's order took these addresses meanwhile
                node.config.addresses = {"btc": "btc-addr-next", "eth": "eth-addr"}

        monkeypatch.setitem(ExchangeNode._handlers, "accept", accept_then_rotate)
        try:
            cid, quote = await quoted(nodes)
            commit = await taker.settle(cid, quote, os.urandom(32))
            commit.verify_party_signatures()
            assert commit.order.legs[0].recipient_address == "btc-addr"
            assert maker.config.addresses["btc"] == "btc-addr-next"
        finally:
            await stop_all(nodes)

    run(go())
