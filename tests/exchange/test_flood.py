"""Issue 18 (cases 5, 6, 8, 10) and issue 19.6: what a flooding peer can make a node hold,
on real nodes over loopback. Every loop is bounded; every test fails on the code before."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.exchange.book import OrderBook
from kofo.exchange.node import ExchangeConfig, ExchangeNode
from kofo.wire.exchange import (
    Claim,
    Frame,
    Fulfil,
    Offer,
    make_claim,
    make_fulfil,
    make_offer,
    open_claim,
    parse_path,
    sign_fee,
    sign_hop,
)
from tests.nodes import free_port

from .helpers import link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _offer(key: Ed25519PrivateKey, *, max_in: int = 10**6, oid: bytes | None = None, seq: int = 0):
    t = now_ms()
    o = Offer(oid or os.urandom(16), "btc", "eth", 2, 1, 1, max_in, True, 0, t + 60_000, seq or t)
    return make_offer(key, o)


@pytest.mark.timeout(60)
def test_a_claim_flood_is_bounded_per_peer_not_fanned_out_and_gets_the_flooder_banned():
    """Case 5: 2,000 valid claims (a fresh key each) made 2,000 states on the victim, each
    fanned out. Now a peer's claims hold a bounded number of states and arrive at a bounded
    rate; past that they are dropped unforwarded and cost the peer score."""

    async def go() -> None:
        nodes = await start_nodes(3, target_degree=0)
        flooder, victim, beyond = nodes
        try:
            await link(flooder, victim)
            await link(victim, beyond)
            lk = flooder.links[victim.node_id]
            for i in range(2_000):
                c = Claim("btc", "eth", 10 + i, 0, 1, now_ms() + 20_000, 4, os.urandom(32))
                if not lk.send(
                    Frame(
                        "claim", {"c": make_claim(Ed25519PrivateKey.generate(), c).raw, "path": []}
                    )
                ):
                    break
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await wait_until(
                lambda: victim.stats.claims_seen >= 2_000 or flooder.node_id not in victim.links,
                20,
            )
            held = sum(st.upstream == flooder.node_id for st in victim._relay.values())
            assert held <= 256  # ExchangeConfig.claims_per_peer
            assert beyond.stats.claims_seen <= 256
            assert flooder.node_id in victim._banned or victim._scores.get(flooder.node_id, 0) > 0
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(60)
def test_an_offer_flood_is_capped_per_maker_and_a_maker_that_answered_still_gets_in():
    """Case 6: offers from a key that never answers filled the book and locked honest makers
    out. Now a maker holds at most ``offers_per_maker``; when sybil makers fill the book, a
    maker that answered a trade of ours evicts one of theirs."""

    async def go() -> None:
        nodes = await start_nodes(4, target_degree=0, addresses=ADDR)
        victim, flooder, maker, sybil_host = nodes
        victim.book = OrderBook(200)
        try:
            await link(maker, victim)
            await link(flooder, victim)
            await link(sybil_host, victim)
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(victim.book) == 1)
            cid, quotes = await victim.request_quotes("btc", "eth", 1000, window_s=5, enough=1)
            await victim.settle(cid, quotes[0], os.urandom(32))  # the maker answered
            lk = flooder.links[victim.node_id]
            base = victim.links[flooder.node_id].frames_in
            for _ in range(1_000):  # its own key, a thousand offers (past its own node's cap)
                if not lk.send(Frame("offer", {"m": _offer(flooder._key).raw})):
                    break
            await wait_until(
                lambda: (
                    flooder.node_id not in victim.links
                    or victim.links[flooder.node_id].frames_in >= base + 1_000
                ),
                20,
            )
            ids = [so.maker for so in victim.book.all(now_ms())]
            assert ids.count(flooder.node_id) <= 64  # ExchangeConfig.offers_per_maker
            assert victim._scores.get(flooder.node_id, 0) > 0 or flooder.node_id in victim._banned
            sk = sybil_host.links[victim.node_id]
            base = victim.links[sybil_host.node_id].frames_in
            for key in [Ed25519PrivateKey.generate() for _ in range(20)]:
                for _ in range(10):
                    sk.send(Frame("offer", {"m": _offer(key).raw}))
            await wait_until(lambda: victim.links[sybil_host.node_id].frames_in >= base + 200, 20)
            assert len(victim.book) == 200  # full of the flood
            fresh = maker.publish_offer("btc", "eth", (31, 1), max_in=10**8)
            await wait_until(lambda: fresh.key in {so.key for so in victim.book.all(now_ms())})
            assert len(victim.book) == 200
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(60)
def test_a_withdrawn_offer_never_comes_back_after_junk_fills_the_book():
    """Case 8: enough junk pushed a withdrawal out of memory and a replayed copy of the offer
    came back. Tombstones are now kept per maker (junk from other keys cannot touch them) and
    a dropped maker entry leaves its floor."""

    async def go() -> None:
        nodes = await start_nodes(3, target_degree=0)
        victim, attacker, maker = nodes
        victim.book = OrderBook(200)
        try:
            await link(maker, victim)
            await link(attacker, victim)
            so = maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(victim.book) == 1)
            maker.withdraw_offer(so.offer.offer_id)
            await wait_until(lambda: len(victim.book) == 0)
            lk = attacker.links[victim.node_id]
            base = victim.links[attacker.node_id].frames_in
            for _ in range(600):  # junk makers: an offer and its withdrawal each
                key, oid = Ed25519PrivateKey.generate(), os.urandom(16)
                first = _offer(key, oid=oid)
                lk.send(Frame("offer", {"m": first.raw}))
                gone = _offer(key, oid=oid, max_in=0, seq=first.offer.seq + 1)
                lk.send(Frame("offer", {"m": gone.raw}))
            await wait_until(lambda: victim.links[attacker.node_id].frames_in >= base + 1_200, 20)
            lk.send(Frame("offer", {"m": so.raw}))  # the withdrawn offer, replayed
            await wait_until(lambda: victim.links[attacker.node_id].frames_in >= base + 1_201)
            await asyncio.sleep(0.05)
            assert so.key not in {o.key for o in victim.book.all(now_ms())}
        finally:
            await stop_all(nodes)

    run(go())


class FulfilFlooder(ExchangeNode):
    """Answers every claim with ``n`` valid fulfils, each under a fresh filler key."""

    n = 500

    def _h_claim(self, link: Any, body: dict[str, Any]) -> None:
        sc = open_claim(body["c"])
        path = parse_path(body["path"])
        for i in range(self.n):
            f = Fulfil(
                sc.claim_id, len(path) + 1, sc.claim.amount, 1000 + i, now_ms() + 10_000, path
            )
            sf = make_fulfil(Ed25519PrivateKey.generate(), f)
            link.send(Frame("fulfil", {"f": sf.raw, "fees": []}))

    _handlers: ClassVar[dict[str, Any]] = {**ExchangeNode._handlers, "claim": _h_claim}


@pytest.mark.timeout(120)
def test_fulfils_to_a_taker_and_a_relays_state_are_capped():
    """Case 10: a neighbour answering a claim with 500 valid fulfils made the taker hold 500
    quotes and every relay 500 entries. Now both keep a bounded number per claim per link
    and score the sender beyond it."""

    async def go() -> None:
        taker, relay = await start_nodes(2, target_degree=0, addresses=ADDR)
        direct = FulfilFlooder(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0))
        behind = FulfilFlooder(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0))
        nodes = [taker, relay, direct, behind]
        for n in (direct, behind):
            await n.start()
        try:
            await link(taker, relay)
            await link(relay, behind)
            await link(taker, direct)
            cap = 32  # ExchangeConfig.max_fulfils_per_claim
            # Until a quote came through each link, not for a fixed window: two floods of 500
            # fresh keys and signatures took more than the 3 s window this used on a loaded
            # machine (no quote from the direct flooder yet: seen under pytest-xdist).
            cid, quotes = await taker.request_quotes("btc", "eth", 1000, window_s=25, enough=2)
            assert {q.via for q in quotes} == {direct.node_id, relay.node_id}

            def scored() -> bool:  # a fulfil beyond what is kept reached each and was scored
                return (
                    taker._scores.get(direct.node_id, 0) > 0 or direct.node_id in taker._banned
                ) and (relay._scores.get(behind.node_id, 0) > 0 or behind.node_id in relay._banned)

            await wait_until(scored, timeout=30)
            # What the taker holds for the claim once the floods were refused: bounded per link.
            by_via = [q.via for q in taker._pending[cid].quotes]
            assert 0 < by_via.count(direct.node_id) <= cap
            assert 0 < by_via.count(relay.node_id) <= cap
            assert len(relay._relay[cid].downstream) <= cap
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(60)
def test_an_announced_dead_address_is_dialled_with_backoff_and_then_forgotten():
    """Issue 19.6: an address a peer announced was re-dialled forever (136 dials to one dead
    port in 11 minutes). Dials now back off exponentially up to a cap, and an announced
    address that never answers is forgotten after ``max_dial_failures`` tries."""

    async def go() -> None:
        nodes = await start_nodes(
            2, target_degree=4, maintain_s=0.02, backoff_base_s=0.01, feeler_s=0
        )
        victim, peer = nodes
        try:
            await link(peer, victim)
            dead = ("127.0.0.1", free_port())
            tries = []
            real_dial = victim._dial

            async def counting(addr, **kw):  # type: ignore[no-untyped-def]
                if addr == dead:
                    tries.append(time.monotonic())
                await real_dial(addr, **kw)

            victim._dial = counting  # type: ignore[method-assign]
            fake = os.urandom(32)
            inbound = victim.links[peer.node_id]  # the victim asked; this is the answer
            victim._asked[inbound] = victim._asked.get(inbound, 0) + 1
            peer.links[victim.node_id].send(Frame("peers", {"peers": [[fake, dead[1]]]}))
            await wait_until(lambda: dead in victim._known)
            await wait_until(lambda: dead not in victim._known, 20)
            await asyncio.sleep(0.5)  # no dial after it is forgotten
            assert len(tries) == 6  # ExchangeConfig.max_dial_failures
        finally:
            await stop_all(nodes)

    run(go())


class AddressPoisoner(ExchangeNode):
    """Answers every peers_req with the next list of made-up addresses it was given."""

    lists: list[list[list[Any]]]

    def _h_peers_req(self, link: Any, body: dict[str, Any]) -> None:
        lists = self.__dict__.setdefault("lists", [])
        link.send(Frame("peers", {"peers": lists.pop(0) if lists else []}))

    _handlers: ClassVar[dict[str, Any]] = {**ExchangeNode._handlers, "peers_req": _h_peers_req}


@pytest.mark.timeout(60)
def test_address_table_poisoning_is_bounded_and_a_dial_reaching_another_id_drops_the_address():
    """Case 7: made-up addresses filled the table, never pruned, and a dial never checked the
    node id announced for the address. Now each peer can place a bounded number of addresses,
    a dial expects the announced id, and an address answering with another id is dropped and
    costs its announcer score. (Peer lists are answers to the victim's requests: it asks.)"""

    async def go() -> None:
        cfg = ExchangeConfig(target_degree=0, maintain_s=0.02, feeler_s=0)
        victim, other = await start_nodes(2, target_degree=0, maintain_s=0.02, feeler_s=0)
        attacker = AddressPoisoner(Ed25519PrivateKey.generate(), cfg)
        await attacker.start()
        nodes = [victim, other, attacker]
        try:
            await link(attacker, victim)
            attacker.lists = [
                [[os.urandom(32), 1 + (i * 64 + j) % 65000] for j in range(64)] for i in range(100)
            ]  # 6,400 made-up addresses
            inbound = victim.links[attacker.node_id]
            await wait_until(lambda: not victim._asked.get(inbound))
            for _ in range(100):
                victim._ask_peers(inbound)
            await wait_until(lambda: not attacker.lists and not victim._asked.get(inbound))
            assert len(victim._known) <= 64 + 2  # ExchangeConfig.max_known_per_source
            # The other node's real address, announced under a made-up id.
            for addr in [a for a in victim._known if a[1] != attacker.port]:
                victim._known.pop(addr)
            victim._source.clear()
            wrong = os.urandom(32)
            attacker.lists = [[[wrong, other.port]]]
            victim._ask_peers(inbound)
            target = ("127.0.0.1", other.port)
            await wait_until(lambda: victim._known.get(target) == wrong)
            victim.config.target_degree = 2
            await wait_until(lambda: victim._known.get(target) != wrong, 10)
            await asyncio.sleep(0.2)
            assert other.node_id not in victim.links
            assert target not in victim._known
            assert victim._scores.get(attacker.node_id, 0) > 0
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(60)
def test_a_relay_never_exceeds_its_neighbours_claim_budget_so_a_flood_cannot_get_it_banned():
    """Attacker's pass over case 5: three flooders, each spending its own budget at an honest
    relay, made the relay forward more than its neighbour's budget for it, and the neighbour
    scored (and could ban) the honest relay. A node now sends each peer claims
    only within the budget that peer gives it."""

    async def go() -> None:
        nodes = await start_nodes(5, target_degree=0)
        *flooders, relay, victim = nodes
        try:
            for f in flooders:
                await link(f, relay)
            await link(relay, victim)
            for f in flooders:
                lk = f.links.get(relay.node_id)
                for i in range(500 if lk is not None else 0):
                    c = Claim("btc", "eth", 10 + i, 0, 1, now_ms() + 20_000, 4, os.urandom(32))
                    raw = make_claim(Ed25519PrivateKey.generate(), c).raw
                    if not lk.send(Frame("claim", {"c": raw, "path": []})):
                        break
                    if i % 100 == 0:
                        await asyncio.sleep(0)
            await wait_until(
                lambda: (
                    all(f.node_id not in relay.links for f in flooders)
                    or relay.stats.claims_seen >= 1_500
                ),
                20,
            )
            await asyncio.sleep(0.3)
            # Nobody that got the relay's claims (the victim, and the flooders' own nodes,
            # which run the honest code) refused or scored any of them.
            for n in (victim, *flooders):
                assert n.stats.claims_refused == 0
                assert n._scores.get(relay.node_id, 0) == 0
                assert relay.node_id not in n._banned
            assert relay.node_id in victim.links
            assert 0 < victim.stats.claims_seen <= 256
        finally:
            await stop_all(nodes)

    run(go())


class DeepFulfilFlooder(ExchangeNode):
    """Answers every claim with ``n`` fulfils as if relayed from fillers behind it (its own
    hop in the path, a fresh filler key each): indistinguishable from honest relaying."""

    n = 40

    def _h_claim(self, link: Any, body: dict[str, Any]) -> None:
        sc = open_claim(body["c"])
        path = parse_path(body["path"])
        eph = Ed25519PrivateKey.generate()
        hop = sign_hop(eph, sc, path)
        pos = len(path) + 1
        for i in range(self.n):
            f = Fulfil(
                sc.claim_id, pos + 1, sc.claim.amount, 1000 + i, now_ms() + 10_000, [*path, hop]
            )
            sf = make_fulfil(Ed25519PrivateKey.generate(), f)
            fee = sign_fee(eph, sf.fulfil_id, pos, 0)
            link.send(Frame("fulfil", {"f": sf.raw, "fees": [fee.to_wire()]}))

    _handlers: ClassVar[dict[str, Any]] = {**ExchangeNode._handlers, "claim": _h_claim}


@pytest.mark.timeout(60)
def test_a_relay_never_forwards_more_fulfils_than_its_upstream_takes_so_it_is_never_blamed():
    """Attacker's pass over case 10: three neighbours of an honest relay each sent it many
    relayed-looking fulfils; the relay forwarded up to its per-link cap from each, more than
    the taker takes from one neighbour, and the taker scored the honest relay. A relay now
    forwards a bounded share per link and a total its upstream takes."""

    async def go() -> None:
        taker, relay = await start_nodes(2, target_degree=0, addresses=ADDR)
        flooders = [
            DeepFulfilFlooder(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0))
            for _ in range(3)
        ]
        nodes = [taker, relay, *flooders]
        for n in flooders:
            await n.start()
        try:
            await link(taker, relay)
            for n in flooders:
                await link(relay, n)
            # The end of the flood is when the relay handled every flooder's fulfil and the
            # taker every one the relay sent, not a window (3 s could end mid-flood under load,
            # checking the scores before the fulfils that would cost them had come).
            handled = [0]
            real = ExchangeNode._handlers["fulfil"]

            def counting(node: ExchangeNode, lk: Any, body: dict[str, Any]) -> None:
                handled[0] += 1
                real(node, lk, body)

            relay._handlers = {**ExchangeNode._handlers, "fulfil": counting}  # type: ignore[misc]
            cid, quotes = await taker.request_quotes("btc", "eth", 1000, window_s=25, enough=1)
            await wait_until(lambda: handled[0] == DeepFulfilFlooder.n * len(flooders), 40)
            st, pending = relay._relay[cid], taker._pending[cid]
            sent = len(st.downstream)
            assert 0 < sent <= 32  # ExchangeConfig.max_fulfils_per_claim
            # Each one the taker handled (collected, or after its window: counted, dropped).
            await wait_until(lambda: pending.per_via.get(relay.node_id) == sent, 40)
            assert len(quotes) >= 1
            assert taker._scores.get(relay.node_id, 0) == 0
            assert relay.node_id in taker.links
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(30)
def test_a_claim_that_expired_in_transit_costs_the_relaying_neighbour_nothing():
    """Attacker's pass: an honest relay forwarding a claim that expired on the way (the bench
    showed it on a loaded machine) was scored 5 per claim and could be banned. A claim or
    fulfil expired by at most TRANSIT_GRACE_MS is dropped unscored; older ones still cost."""

    async def go() -> None:
        nodes = await start_nodes(2, target_degree=0)
        a, b = nodes
        try:
            await link(a, b)
            lk = a.links[b.node_id]
            for i in range(5):
                c = Claim("btc", "eth", 1 + i, 0, 1, now_ms() - 300, 4, os.urandom(32))
                lk.send(
                    Frame(
                        "claim", {"c": make_claim(Ed25519PrivateKey.generate(), c).raw, "path": []}
                    )
                )
            await wait_until(lambda: b.stats.claims_seen >= 5)
            assert b._scores.get(a.node_id, 0) == 0
            c = Claim("btc", "eth", 9, 0, 1, now_ms() - 10_000, 4, os.urandom(32))
            lk.send(
                Frame("claim", {"c": make_claim(Ed25519PrivateKey.generate(), c).raw, "path": []})
            )
            await wait_until(lambda: b._scores.get(a.node_id, 0) > 0)
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(30)
def test_fulfils_for_claims_the_node_never_saw_cost_the_sender_and_no_signature_check(
    monkeypatch,
):
    """Attacker's pass over case 10: validly signed fulfils for made-up claim ids cost one
    signature check each and were dropped unscored. Now the claim is looked up first (no
    verify) and the sender pays."""
    from kofo.exchange import node as node_module

    checked = []
    real = getattr(node_module, "check_fulfil", None)
    monkeypatch.setattr(
        node_module,
        "check_fulfil",
        lambda sf: (checked.append(1), real and real(sf)),
        raising=False,
    )

    async def go() -> None:
        nodes = await start_nodes(2, target_degree=0)
        attacker, victim = nodes
        try:
            await link(attacker, victim)
            lk = attacker.links[victim.node_id]
            for _ in range(300):
                f = Fulfil(os.urandom(32), 1, 100, 100, now_ms() + 10_000, [])
                sf = make_fulfil(Ed25519PrivateKey.generate(), f)
                if not lk.send(Frame("fulfil", {"f": sf.raw, "fees": []})):
                    break
            await wait_until(lambda: attacker.node_id in victim._banned, 20)
            assert checked == []
        finally:
            await stop_all(nodes)

    run(go())
