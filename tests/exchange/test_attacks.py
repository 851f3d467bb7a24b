"""Issue 18: a malicious node against real exchange nodes on loopback. Every test here fails
on the code before the fix (the attack succeeded) and checks the attacker's score rises."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.exchange import node as node_module
from kofo.exchange.node import ExchangeNode
from kofo.exchange.sealed import open_sealed, seal
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import sign
from kofo.wire.exchange import (
    MSG_ACCEPT,
    Accept,
    Frame,
    Join,
    join_message,
    open_accept,
    open_claim,
    open_fulfil,
    parse_fees,
    parse_path,
    sign_fee,
    sign_hop,
)
from kofo.wire.expiry import UnixTime
from kofo.wire.orders import FeeQuote, QuoteRole, SettlementOrder, with_derived_id

from .helpers import line, link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}
YEAR = 365 * 24 * 3600


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def _leg(order: SettlementOrder, i: int, **changes: Any) -> SettlementOrder:
    legs = list(order.legs)
    legs[i] = dataclasses.replace(legs[i], **changes)
    return dataclasses.replace(order, legs=tuple(legs))


SYBIL = Ed25519PrivateKey.generate()
SYBIL_ID = SYBIL.public_key().public_bytes_raw()


def _sybil_relay(order: SettlementOrder) -> SettlementOrder:
    q = FeeQuote(SYBIL_ID, QuoteRole.RELAY, os.urandom(16))
    return dataclasses.replace(order, relays=(*order.relays, SYBIL_ID), quotes=(q, *order.quotes))


def _far(order: SettlementOrder) -> SettlementOrder:
    t = int(time.time()) + 10 * YEAR
    order = _leg(order, 1, expiry=UnixTime(t), expiry_time=t)
    return _leg(order, 0, expiry=UnixTime(t + 3600), expiry_time=t + 3600)


TAMPERINGS = {
    "maker's receiving address": lambda o: _leg(o, 0, recipient_address="attacker-btc"),
    "maker's sending address": lambda o: _leg(o, 1, sender_address="attacker-eth"),
    "maker's expiry 10 years out": _far,
    "maker's lock_by 30 days out": lambda o: _leg(o, 1, lock_by=o.legs[1].lock_by + 30 * 86400),
    "a sybil relay": _sybil_relay,
    "a lowered amount": lambda o: _leg(o, 1, amount=o.legs[1].amount - 1),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_no_party_co_signs_an_order_that_differs_from_its_quote(what, monkeypatch, caplog):
    """Case 2: a malicious taker changed the order six ways; the relay and the maker signed all
    six. Each party now signs only the order the protocol derives from what it quoted."""
    real_build = node_module.build_settlement_order

    def tampered(**kw: Any) -> SettlementOrder:
        # The attacker re-derives the order id, so the content check itself must refuse.
        return with_derived_id(TAMPERINGS[what](real_build(**kw)))

    monkeypatch.setattr(node_module, "build_settlement_order", tampered)

    async def go() -> None:
        # A direct route (the maker checks) and a relayed one (the relay checks first).
        for n in (2, 3):
            nodes = await line(n, addresses=ADDR, settle_timeout_s=30)
            taker, maker = nodes[0], nodes[-1]
            try:
                maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
                await wait_until(lambda t=taker: len(t.book) == 1)
                cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
                settling = asyncio.ensure_future(taker.settle(cid, quotes[0], os.urandom(32)))
                # The first party after the taker refuses (and scores it); no timing involved.
                victim = nodes[1]
                await wait_until(
                    lambda v=victim, t=taker, s=settling: (
                        v._scores.get(t.node_id, 0) > 0 or s.done()
                    ),
                    20,
                )
                assert not settling.done(), "the route signed a tampered order"
                settling.cancel()
            finally:
                await stop_all(nodes)

    run(go())
    # The deadlines are the taker's plan (link protocol v4): co-signers check their order and
    # bounds (route.order_times_problem); the maker's guard, its own margins.
    refusal = {
        "maker's expiry 10 years out": "horizon",
        "maker's lock_by 30 days out": "deadlines out of order",
    }.get(what, "differs from what this party quoted or carried")
    assert caplog.text.count(refusal) == 2


class Inflater(ExchangeNode):
    """A relay that pads the path with a sybil hop of its own (a key it holds, answered for by
    a sybil node identity it also holds), to take two relay shares instead of one."""

    sybil = Ed25519PrivateKey.generate()
    att: dict[bytes, dict[str, Any]]

    def _h_claim(self, link: Any, body: dict[str, Any]) -> None:
        self.__dict__.setdefault("att", {})
        sc = open_claim(body["c"])
        if sc.claim_id in self.att:
            return
        path = parse_path(body["path"])
        me, syb = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        h1 = sign_hop(me, sc, path)
        h2 = sign_hop(syb, sc, [*path, h1])
        pos = len(path) + 1
        self.att[sc.claim_id] = {"up": link.peer_id, "pos": pos, "me": me, "syb": syb, "sc": sc}
        out = Frame("claim", {"c": body["c"], "path": [h.to_wire() for h in [*path, h1, h2]]})
        for p, lk in self.links.items():
            if p != link.peer_id:
                lk.send(out)

    def _h_fulfil(self, link: Any, body: dict[str, Any]) -> None:
        sf = open_fulfil(body["f"])
        a = self.att[sf.fulfil.claim_id]
        a["down"] = link.peer_id
        fees = parse_fees(body["fees"])
        fees.append(sign_fee(a["syb"], sf.fulfil_id, a["pos"] + 1, 0))
        fees.append(sign_fee(a["me"], sf.fulfil_id, a["pos"], 0))
        self.links[a["up"]].send(
            Frame("fulfil", {"f": body["f"], "fees": [x.to_wire() for x in fees]})
        )

    def _h_accept(self, link: Any, body: dict[str, Any]) -> None:
        raw = body["a"]
        acc = Accept.from_body(decode(raw)["env"]["body"])
        a = self.att[acc.claim_id]
        open_accept(raw, a["sc"].initiator_eph)
        for pos, eph, node in (
            (a["pos"], a["me"], self._key),
            (a["pos"] + 1, a["syb"], self.sybil),
        ):
            nid = node.public_key().public_bytes_raw()
            pub = eph.public_key().public_bytes_raw()
            data = join_message(acc.claim_id, acc.fulfil_id, pos, pub, nid, ADDR)
            j = Join(pos, nid, ADDR, eph.sign(data), node.sign(data))
            box = seal(a["sc"].claim.reply_key, encode(j.to_body()))
            link.send(Frame("join", {"claim_id": acc.claim_id, "box": box}))
        self.links[a["down"]].send(Frame("accept", {"a": raw}))

    def _h_join(self, link: Any, body: dict[str, Any]) -> None:
        self.links[self.att[body["claim_id"]]["up"]].send(Frame("join", body))

    def _h_order(self, link: Any, body: dict[str, Any]) -> None:
        a = self.att[body["claim_id"]]
        order = SettlementOrder.from_map(body["o"])
        for pos, key in ((a["pos"], self._key), (a["pos"] + 1, self.sybil)):
            sig = order.sign(key).signature
            link.send(Frame("osig", {"claim_id": body["claim_id"], "position": pos, "sig": sig}))
        self.links[a["down"]].send(Frame("order", body))

    def _h_osig(self, link: Any, body: dict[str, Any]) -> None:
        self.links[self.att[body["claim_id"]]["up"]].send(Frame("osig", body))

    _handlers: ClassVar[dict[str, Any]] = {
        **ExchangeNode._handlers,
        "claim": _h_claim,
        "fulfil": _h_fulfil,
        "accept": _h_accept,
        "join": _h_join,
        "order": _h_order,
        "osig": _h_osig,
    }


@pytest.mark.timeout(60)
def test_a_relay_padding_the_route_with_a_sybil_hop_gets_no_order_signed(caplog):
    """Case 3: hop inflation. Each party checks that its link neighbours are the nodes bound
    to the positions next to its own; the maker's upstream link is the inflater, not the
    sybil the order names before it, so the maker refuses and scores the inflater."""

    async def go() -> None:
        taker = ExchangeNode(
            Ed25519PrivateKey.generate(),
            node_module.ExchangeConfig(target_degree=0, addresses=ADDR, settle_timeout_s=30),
        )
        inflater = Inflater(
            Ed25519PrivateKey.generate(),
            node_module.ExchangeConfig(target_degree=0, addresses=ADDR),
        )
        (maker,) = await start_nodes(1, target_degree=0, addresses=ADDR)
        nodes = [taker, inflater, maker]
        for n in (taker, inflater):
            await n.start()
        try:
            await link(taker, inflater)
            await link(inflater, maker)
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            assert quotes, "the inflated quote reaches the taker"
            settling = asyncio.ensure_future(taker.settle(cid, quotes[0], os.urandom(32)))
            await wait_until(
                lambda: maker._scores.get(inflater.node_id, 0) > 0 or settling.done(), 20
            )
            assert not settling.done(), "the maker signed an inflated route"
            settling.cancel()
        finally:
            await stop_all(nodes)

    run(go())
    assert "the hop before this one is not the link the claim came from" in caplog.text


@pytest.mark.timeout(60)
def test_garbage_osigs_from_a_neighbour_off_the_route_do_not_stop_settlement():
    """Case 4: a neighbour not on the route sent garbage osig frames for a claim id it saw;
    later frames overwrote good ones. Now only the route's link may send them, each is
    checked, a bad one is scored and never replaces a good one."""

    async def go() -> None:
        nodes = await start_nodes(4, target_degree=0, addresses=ADDR)
        taker, hop, maker, outsider = nodes
        try:
            await link(taker, hop)
            await link(hop, maker)
            await link(taker, outsider)
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            quotes = [q for q in quotes if q.via == hop.node_id]
            settling = asyncio.ensure_future(taker.settle(cid, quotes[0], os.urandom(32)))
            lk = outsider.links[taker.node_id]
            for _ in range(400):  # bounded: until the settlement ends or the outsider is cut
                if settling.done() or lk.closed:
                    break
                for pos in range(1, 4):
                    lk.send(
                        Frame("osig", {"claim_id": cid, "position": pos, "sig": os.urandom(64)})
                    )
                await asyncio.sleep(0.005)
            commit = await settling
            commit.verify_party_signatures()
            assert taker._scores.get(outsider.node_id, 0) > 0 or outsider.node_id in taker._banned
        finally:
            await stop_all(nodes)

    run(go())


class Snoop(ExchangeNode):
    """A taker that accepts every quote and opens every join it gets."""

    learned: set[bytes]

    def _h_join(self, link: Any, body: dict[str, Any]) -> None:
        pending = self._pending[body["claim_id"]]
        j = Join.from_body(decode(open_sealed(pending.reply, body["box"])))
        self.__dict__.setdefault("learned", set()).add(j.node_id)

    _handlers: ClassVar[dict[str, Any]] = {**ExchangeNode._handlers, "join": _h_join}


@pytest.mark.timeout(60)
def test_one_accept_per_claim_a_taker_learns_one_route_not_every_maker():
    """Case 9: a taker that sent an accept for every quote learned every maker and relay on
    every route. Each node now answers one accept per claim and scores a second one."""

    async def go() -> None:
        snoop = Snoop(
            Ed25519PrivateKey.generate(),
            node_module.ExchangeConfig(target_degree=0, addresses=ADDR),
        )
        await snoop.start()
        others = await start_nodes(3, target_degree=0, addresses=ADDR)
        a, b, c = others
        nodes = [snoop, *others]
        try:
            await link(snoop, a)
            await link(a, b)
            await link(b, c)
            for n, price in zip(others, (30, 31, 32), strict=True):
                n.publish_offer("btc", "eth", (price, 1), max_in=10**8)
            await wait_until(lambda: len(snoop.book) == 3)
            cid, quotes = await snoop.request_quotes("btc", "eth", 10**6, window_s=5, enough=3)
            assert len(quotes) == 3
            eph = snoop._pending[cid].eph
            for q in quotes:  # best (c, three hops) first
                acc = sign(eph, MSG_ACCEPT, Accept(cid, q.fulfil_id).to_body())
                snoop.links[a.node_id].send(Frame("accept", {"a": acc.to_bytes()}))
            await wait_until(lambda: len(getattr(snoop, "learned", ())) >= 3)
            await asyncio.sleep(0.3)  # any further join would have arrived by now
            assert snoop.learned == {a.node_id, b.node_id, c.node_id}  # one route: a-b-c
            assert a._scores.get(snoop.node_id, 0) > 0
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(60)
def test_the_first_hop_cannot_tell_from_the_path_that_its_peer_is_the_taker():
    """Case 9: a claim with an empty path told the first hop its link peer is the taker.
    Takers now start with 0..2 dummy hops (and as much extra reach), so the path length and
    the hops left vary; settlement still binds those hops to the taker."""

    async def go() -> None:
        nodes = await line(2, addresses=ADDR)
        taker, hop = nodes
        taker._rng = random.Random(7)
        try:
            seen = []
            for _ in range(12):
                # enough=0: return at once; the claim itself lives 5 s (no race with load).
                cid, _ = await taker.request_quotes("btc", "eth", 100, window_s=5, enough=0)
                await wait_until(lambda c=cid: c in hop._relay)
                st = hop._relay[cid]
                seen.append((st.position - 1, st.sc.claim.max_hops - st.position + 1))
            assert {length for length, _ in seen} == {0, 1, 2}
            assert len({left for _, left in seen}) > 1
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.timeout(60)
def test_at_equal_price_the_shorter_route_ranks_first_whatever_arrived_first():
    """Case 3, the rank half: at an equal price a longer route never beats a shorter one
    (before, equal prices were ordered by arrival, which a padding relay can race)."""

    async def go() -> None:
        nodes = await start_nodes(4, target_degree=0, addresses=ADDR)
        taker, near, relay, far = nodes
        try:
            await link(taker, near)
            await link(taker, relay)
            await link(relay, far)
            for m in (near, far):
                m.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 2)
            cid, quotes = await taker.request_quotes("btc", "eth", 1000, window_s=5, enough=2)
            by_len = sorted(quotes, key=lambda q: q.fulfil.fulfil.position)
            short, long = by_len[0], by_len[-1]
            assert short.fulfil.fulfil.position < long.fulfil.fulfil.position
            assert short.rate == long.rate
            long = dataclasses.replace(long, received_ms=short.received_ms - 1_000)
            ranked = taker.rank(taker._pending[cid].sc.claim, [long, short])
            assert ranked[0] is short
        finally:
            await stop_all(nodes)

    run(go())
