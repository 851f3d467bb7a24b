"""Real exchange nodes in one process on loopback: gossip, routing, co-signing, bad input."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.clearance.fees import protocol_fee, split_fee
from kofo.clearance.params import LedgerParams
from kofo.exchange.frames import encode_frame
from kofo.exchange.node import ExchangeConfig, ExchangeNode, RouteFailed
from kofo.exchange.transport import LinkError, LinkLimits, handshake, tls_identity
from kofo.wire.exchange import Claim, Frame, make_claim

from .helpers import degrees, line, link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_claim_over_five_hops_yields_quote_net_of_protocol_fee_and_order_every_party_signs():
    async def go():
        nodes = await line(6, protocol_fee_bps=10, addresses=ADDR)
        try:
            nodes[-1].publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(nodes[0].book) == 1)
            cid, quotes = await nodes[0].request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            assert len(quotes) == 1
            # The maker keeps 10**6 less the 0.1 % protocol fee and prices that; relays take
            # nothing from the delivered amount.
            assert quotes[0].delivered == 30 * (10**6 - 1_000)
            commit = await nodes[0].settle(cid, quotes[0], os.urandom(32))
            commit.verify_party_signatures()
            order = commit.order
            assert order.parties() == [n.node_id for n in (nodes[0], nodes[5], *nodes[1:5])]
            assert order.legs[1].amount == quotes[0].delivered
            assert order.legs[1].expiry_time < order.legs[0].expiry_time
            # The ledger's rule pays the four relays out of the protocol fee the order records.
            assert order.protocol_fee == protocol_fee(order.notional, 10) == 1_000
            split = split_fee(
                order.protocol_fee,
                order.relays,
                order.intermediaries(),
                foundation_bps=LedgerParams().foundation_bps,
                relay_pool_bps=LedgerParams().relay_pool_bps,
            )
            relay_shares = dict(split.shares[: len(order.relays)])
            assert set(relay_shares) == {n.node_id for n in nodes[1:5]}
            assert all(share > 0 for share in relay_shares.values())
            assert split.total() == order.protocol_fee
        finally:
            await stop_all(nodes)

    run(go())


def test_provider_refuses_an_order_charging_more_protocol_fee_than_it_quoted(caplog):
    # Logged, not scored: the relay before the maker allows up to 100 bps (test_review.py).
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, protocol_fee_bps=10, settle_timeout_s=1.0, addresses=ADDR)
        try:
            nodes[-1].publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(nodes[0].book) == 1)
            cid, quotes = await nodes[0].request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            nodes[0].config.protocol_fee_bps = 20
            with pytest.raises(RouteFailed, match="signatures"):
                await nodes[0].settle(cid, quotes[0], os.urandom(32))
            assert "order: protocol_fee_bps 20 is above the limit" in caplog.text
        finally:
            await stop_all(nodes)

    run(go())


def test_initiator_picks_the_best_of_several_makers():
    async def go():
        nodes = await start_nodes(5, target_degree=0, addresses=ADDR)
        try:
            hub = nodes[0]
            for n in nodes[1:]:
                await link(hub, n)
            for n, price in zip(nodes[1:], (20, 25, 22, 24), strict=True):
                n.publish_offer("btc", "eth", (price, 1), max_in=10**8)
            await wait_until(lambda: len(hub.book) == 4)
            cid, quotes = await hub.request_quotes("btc", "eth", 1000, window_s=5, enough=4)
            assert [q.delivered for q in quotes] == [25_000, 24_000, 22_000, 20_000]
            commit = await hub.settle(cid, quotes[0], os.urandom(32))
            assert commit.order.legs[0].recipient == nodes[2].node_id
        finally:
            await stop_all(nodes)

    run(go())


def test_superseded_withdrawn_and_expired_offers_leave_every_book():
    async def go():
        nodes = await line(3)
        try:
            a, _, c = nodes
            so = a.publish_offer("btc", "eth", (10, 1), max_in=100)
            await wait_until(lambda: len(c.book) == 1)
            a.publish_offer("btc", "eth", (11, 1), max_in=100, offer_id=so.offer.offer_id)
            await wait_until(lambda: c.book.pair("btc", "eth", 0)[0].offer.price_num == 11)
            a.withdraw_offer(so.offer.offer_id)
            await wait_until(lambda: len(c.book) == 0)
            a.publish_offer("btc", "eth", (12, 1), max_in=100, ttl_ms=300)
            await wait_until(lambda: len(c.book) == 1)
            await wait_until(lambda: len(c.book) == 0, timeout=3)
        finally:
            await stop_all(nodes)

    run(go())


def test_claim_beyond_its_ttl_is_not_forwarded():
    async def go():
        nodes = await line(5, addresses=ADDR, dummy_hops=0)
        try:
            nodes[-1].publish_offer("btc", "eth", (3, 1), max_in=10**8)
            await wait_until(lambda: len(nodes[0].book) == 1)
            _, quotes = await nodes[0].request_quotes("btc", "eth", 100, window_s=0.3, max_hops=3)
            assert quotes == []
            assert nodes[4].stats.claims_seen == 0
        finally:
            await stop_all(nodes)

    run(go())


def test_bad_frames_are_rejected_scored_and_never_stop_the_node():
    async def go():
        nodes = await line(3, addresses=ADDR, ban_score=100)
        try:
            a, b, c = nodes
            c.publish_offer("btc", "eth", (2, 1), max_in=10**8)
            await wait_until(lambda: len(a.book) == 1)
            bad = a.links[b.node_id]
            # malformed CBOR, unknown type, bad claim signature, expired claim, TTL abuse
            bad.send_raw(encode_frame(b"\xff\x00garbage"))
            bad.send(Frame("nonsense", {}))
            sc = make_claim(
                Ed25519PrivateKey.generate(),
                Claim("btc", "eth", 5, 0, 1, int(time.time() * 1000) - 5_000, 4, os.urandom(32)),
            )
            bad.send(Frame("claim", {"c": sc.raw, "path": []}))
            forged = bytearray(sc.raw)
            forged[-1] ^= 1
            bad.send(Frame("claim", {"c": bytes(forged), "path": []}))
            await wait_until(lambda: sum(b.stats.rejected.values()) >= 4)
            reasons = " ".join(b.stats.rejected)
            assert "not valid CBOR" in reasons or "frame" in reasons
            assert "claim expired" in reasons
            # b still serves honest traffic from the same peer
            _, quotes = await a.request_quotes("btc", "eth", 10, window_s=5, enough=1)
            assert quotes and quotes[0].delivered == 20
        finally:
            await stop_all(nodes)

    run(go())


def test_a_flooding_peer_is_banned_and_others_are_unaffected():
    async def go():
        nodes = await start_nodes(
            3,
            target_degree=0,
            ban_score=50,
            limits=LinkLimits(frames_per_s=100, burst=100),
        )
        try:
            victim, flooder, honest = nodes
            await link(flooder, victim)
            await link(honest, victim)
            lk = flooder.links[victim.node_id]
            for _ in range(2_000):
                lk.send(Frame("ping", {}))
            await wait_until(lambda: flooder.node_id not in victim.links)
            assert honest.node_id in victim.links
            # A banned peer that dials again is cut off right after the handshake.
            try:
                await flooder.connect("127.0.0.1", victim.port)
            except Exception:
                pass
            await asyncio.sleep(0.3)
            assert flooder.node_id not in victim.links
        finally:
            await stop_all(nodes)

    run(go())


def test_bootstrap_and_peer_exchange_reach_the_target_degree_and_heal():
    async def go():
        seed = ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=3))
        await seed.start()
        boot = [("127.0.0.1", seed.port)]
        others = await start_nodes(5, bootstrap=boot, target_degree=3, maintain_s=0.05)
        nodes = [seed, *others]
        try:
            await wait_until(
                lambda: all(len(n.links) >= 3 for n in others), 10, lambda: degrees(nodes)
            )
            # Two peers leave; the rest re-dial known addresses back up to the target degree.
            await stop_all(others[:2])
            rest = others[2:]
            await wait_until(
                lambda: all(
                    len(n.links) >= 2
                    and not any(p in n.links for p in (others[0].node_id, others[1].node_id))
                    for n in rest
                ),
                10,
                lambda: "left: " + degrees(others[:2]) + "; stayed: " + degrees([seed, *rest]),
            )
        finally:
            await stop_all(nodes)

    run(go())


def test_a_stopped_node_attaches_no_link_from_a_handshake_in_flight_and_cannot_dial():
    async def go():
        node = ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0))
        await node.start()
        key = Ed25519PrivateKey.generate()
        # TLS is up, the node's side of the KOFO handshake is waiting for our hello ...
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", node.port, ssl=tls_identity(key).client
        )
        await asyncio.sleep(0.05)
        await node.stop()
        # ... and the stop ends it: no link to a stopped node, and the dialer learns at once.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError, LinkError)):
            await asyncio.wait_for(handshake(reader, writer, key, 1, outbound=True), 2)
        writer.close()
        assert node.links == {}
        with pytest.raises(LinkError, match="this node is stopped"):
            await node.connect("127.0.0.1", 1)

    run(go())


def test_feelers_join_a_split_network_whose_parts_each_have_their_target_degree():
    async def go():
        nodes = await start_nodes(7, target_degree=2, maintain_s=0.05, feeler_s=0)
        left, right, bridge = nodes[:3], nodes[3:6], nodes[6]
        try:
            for side in (left, right):
                await link(side[0], side[1])
                await link(side[1], side[2])
                await link(side[2], side[0])
            await link(bridge, right[0])
            await link(bridge, left[0])  # left[0] learns right[0] from the bridge's peer list
            await stop_all([bridge])
            await wait_until(lambda: all(bridge.node_id not in n.links for n in left + right))
            # Every node still has its target degree, so none dials: the split stays.
            right_ids = {n.node_id for n in right}
            await asyncio.sleep(0.5)
            assert not any(right_ids & set(n.links) for n in left)
            for n in left + right:
                n.config.feeler_s = 0.1
            await wait_until(lambda: any(right_ids & set(n.links) for n in left))
        finally:
            await stop_all(nodes)

    run(go())


def test_a_feeler_finds_a_node_cut_off_and_drops_a_link_beyond_twice_the_target_degree(caplog):
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await start_nodes(6, target_degree=1, maintain_s=0.05, feeler_s=0)
        lone, hub, k, p1, p2, q = nodes
        try:
            await link(lone, hub)  # lone knows nobody else
            await link(q, p1)
            await link(k, hub)  # k learns lone from hub's peer list
            await link(k, p1)  # ... and q from p1's
            await link(k, p2)
            await stop_all([hub])
            await wait_until(lambda: not lone.links and hub.node_id not in k.links)
            await asyncio.sleep(0.3)
            assert not lone.links  # it only knows hub: alone for good without feelers
            k.config.feeler_s = 0.05  # k has twice its target degree (p1, p2)
            # Both ends: lone (the server) finishes the handshake before k reads its last frame.
            # lone's first two frames are its peers_req and its peer list, on which k decides.
            await wait_until(
                lambda: (
                    k.node_id in lone.links
                    and lone.node_id in k.links
                    and k.links[lone.node_id].frames_in >= 2
                )
            )
            # q has a link of its own, so k's feeler to it closes again; lone has none: it stays.
            closing = f"closing feeler to {q.node_id.hex()[:12]}"
            await wait_until(lambda: any(closing in r.getMessage() for r in caplog.records))
            await wait_until(lambda: q.node_id not in k.links)
            assert lone.node_id in k.links and k.node_id in lone.links
        finally:
            await stop_all(nodes)

    run(go())
