"""An exchange node: peers, offer gossip, claim routing, quotes and route-order co-signing.

Everything runs on one asyncio loop. Frame handlers are synchronous (a frame is decoded,
checked and answered without awaiting), so one slow peer never holds up another; sends never
block (see :meth:`Link.send_raw`). Every bad frame is logged with its reason and costs the
sending peer score; a peer past the ban score is cut off and refused for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kofo.errors import KofoError
from kofo.exchange.book import OrderBook
from kofo.exchange.frames import encode_frame
from kofo.exchange.route import (
    RouteParty,
    build_settlement_order,
    check_order,
    net_of_protocol_fee,
)
from kofo.exchange.sealed import open_sealed, seal
from kofo.exchange.transport import (
    HANDSHAKE_TIMEOUT_S,
    Link,
    LinkError,
    LinkLimits,
    handshake,
    node_id_of,
    tls_identity,
)
from kofo.wire.codec import EncodingError, decode, encode
from kofo.wire.envelope import BadMessage, BadSignature, sign, verify_ed25519
from kofo.wire.exchange import (
    MAX_CLAIM_HORIZON_MS,
    MAX_HOPS,
    MAX_PEERS_IN_LIST,
    MSG_ACCEPT,
    Accept,
    Claim,
    Frame,
    Fulfil,
    Join,
    Offer,
    PathHop,
    Quote,
    SignedClaim,
    SignedOffer,
    check_offer,
    digest,
    join_message,
    make_claim,
    make_fulfil,
    make_offer,
    open_accept,
    open_claim,
    open_fulfil,
    parse_fees,
    parse_path,
    read_offer,
    sign_fee,
    sign_hop,
    verify_fulfil,
    verify_path,
)
from kofo.wire.orders import CommitOrder, OrderSignature, SettlementOrder

log = logging.getLogger("kofo.exchange.node")

Importance = Callable[[bytes], float]
"""Node id -> importance score (from the clearance ledger, supplied by the composer)."""

Liquidity = Callable[[Claim], tuple[int, int] | None]
"""Extra liquidity beyond published offers: a claim -> ``(amount_in, amount_out)`` or None."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RouteFailed(KofoError):
    code = "route_failed"


@dataclass(slots=True)
class ExchangeConfig:
    host: str = "127.0.0.1"
    port: int = 0
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    target_degree: int = 4
    max_degree: int = 16
    claim_fanout: int = 8
    quote_valid_ms: int = 10_000
    limits: LinkLimits = field(default_factory=LinkLimits)
    ban_score: int = 100
    ban_s: float = 30.0
    maintain_s: float = 0.25
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    # Feelers: at or above ``target_degree`` a node still dials, every ``feeler_s`` (jittered),
    # the known address it has no link to and tried least recently, so a network split into
    # parts that each have their degree (or a node whose known peers all died) joins up again.
    # A feeler link is kept up to twice the target degree, beyond that only while the peer has
    # fewer than ``target_degree`` other links. 0 turns feelers off (so does target_degree 0).
    feeler_s: float = 2.0
    settle_timeout_s: float = 5.0
    addresses: dict[str, str] = field(default_factory=dict)  # chain -> own address
    # The ledger's rate (the composer sets it from the ledger's parameters): initiators put it
    # in orders, providers net it out of their quotes and refuse orders charging more.
    protocol_fee_bps: int = 0
    max_protocol_fee_bps: int = 100  # a relay refuses to co-sign an order charging more


@dataclass(slots=True)
class _Downstream:
    peer: bytes
    amount_in: int
    amount_out_here: int  # the ``want`` amount the provider delivers through us


@dataclass(slots=True)
class _RelayState:
    """What a hop (or filler) remembers about a claim it saw, until the claim expires."""

    sc: SignedClaim
    upstream: bytes
    position: int
    eph: Ed25519PrivateKey
    path: list[PathHop]
    expires_ms: int
    downstream: dict[bytes, _Downstream] = field(default_factory=dict)
    filled: tuple[bytes, int, int] | None = None  # (fulfil_id, amount_in, amount_out)


@dataclass(slots=True)
class _Pending:
    """What an initiator remembers about its own claim."""

    sc: SignedClaim
    eph: Ed25519PrivateKey
    reply: X25519PrivateKey
    sent_ms: int
    quotes: list[Quote] = field(default_factory=list)
    joins: dict[int, Join] = field(default_factory=dict)
    osigs: dict[int, bytes] = field(default_factory=dict)
    chosen: Quote | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class NodeStats:
    frames_in: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    claims_seen: int = 0
    claims_dup: int = 0


class ExchangeNode:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        config: ExchangeConfig | None = None,
        *,
        importance: Importance | None = None,
        liquidity: Liquidity | None = None,
    ) -> None:
        self._key = key
        self.node_id = node_id_of(key)
        self.config = config or ExchangeConfig()
        self._importance = importance
        self._liquidity = liquidity
        self._tls = tls_identity(key)
        self.links: dict[bytes, Link] = {}
        self._known: dict[tuple[str, int], bytes | None] = {}
        self._backoff: dict[tuple[str, int], tuple[int, float]] = {}
        self._dialing: set[tuple[str, int]] = set()
        self._tried: dict[tuple[str, int], float] = {}  # address -> last dial (monotonic)
        self._next_feeler = 0.0
        self._feelers: set[Link] = set()  # feeler links whose peer list is still to come
        self._scores: dict[bytes, float] = {}
        self._banned: dict[bytes, float] = {}
        self.book = OrderBook()
        self._own_offers: dict[bytes, SignedOffer] = {}
        self._relay: dict[bytes, _RelayState] = {}
        self._pending: dict[bytes, _Pending] = {}
        self.stats = NodeStats()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self.port = 0
        self._rng = random.Random()
        self.on_offer: Callable[[SignedOffer], None] | None = None

    def __repr__(self) -> str:
        return f"ExchangeNode({self.node_id.hex()[:12]}, port={self.port})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, ssl=self._tls.server, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        for addr in self.config.bootstrap:
            self._known.setdefault(addr, None)
        self._spawn(self._maintain())

    async def stop(self) -> None:
        # Set first: an inbound handshake still running (the server's close does not end it)
        # or a dial completing during the stop must not attach a link to a stopped node.
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for link in list(self.links.values()):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ peers

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._stopped or task is None:
            writer.close()
            return
        # Tracked so that stop() cancels a handshake still in progress.
        self._tasks.add(task)
        try:
            peer, port = await asyncio.wait_for(
                handshake(reader, writer, self._key, self.port, outbound=False),
                HANDSHAKE_TIMEOUT_S,
            )
        except (LinkError, KofoError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("inbound handshake failed: %s", exc)
            writer.close()
            return
        except asyncio.CancelledError:
            writer.close()
            raise
        finally:
            self._tasks.discard(task)
        host = (writer.get_extra_info("peername") or (self.config.host,))[0]
        if len(self.links) >= self.config.max_degree:
            log.info("refusing %s: at max degree %d", peer.hex()[:12], self.config.max_degree)
            writer.close()
            return
        self._attach(Link(reader, writer, peer, port, False, self.config.limits), host)

    async def connect(self, host: str, port: int, expect: bytes | None = None) -> bytes:
        """Dial a peer and keep the link; return its node id."""
        if self._stopped:
            raise LinkError(f"cannot dial {host}:{port}: this node is stopped")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self._tls.client, limit=1 << 20),
            HANDSHAKE_TIMEOUT_S,
        )
        try:
            peer, peer_port = await asyncio.wait_for(
                handshake(reader, writer, self._key, self.port, outbound=True, expect=expect),
                HANDSHAKE_TIMEOUT_S,
            )
        except BaseException:
            writer.close()
            raise
        self._attach(Link(reader, writer, peer, peer_port, True, self.config.limits), host)
        return peer

    def _attach(self, link: Link, host: str) -> None:
        peer = link.peer_id
        if self._stopped:
            log.info("dropping link to %s: this node is stopped", peer.hex()[:12])
            link.close()
            return
        if self._banned.get(peer, 0.0) > time.monotonic():
            log.info("refusing banned peer %s", peer.hex()[:12])
            link.close()
            return
        old = self.links.get(peer)
        if old is not None and not old.closed:
            # Both ends apply the same rule to a simultaneous dial: keep the link dialled by the
            # smaller node id, so they never each close a different one.
            def dialer(lk: Link) -> bytes:
                return self.node_id if lk.outbound else lk.peer_id

            if dialer(old) <= dialer(link):
                link.close()
                return
            old.close()
        self.links[peer] = link
        if link.peer_port:
            self._known[(host, link.peer_port)] = peer
            self._backoff.pop((host, link.peer_port), None)
        self._spawn(self._run_link(link))
        link.send(Frame("peers_req", {}))
        now = now_ms()
        for so in self.book.all(now):
            link.send(Frame("offer", {"m": so.raw}))

    async def _run_link(self, link: Link) -> None:
        try:
            await link.run(self._on_frame, self._abuse)
        finally:
            self._feelers.discard(link)
            if self.links.get(link.peer_id) is link:
                del self.links[link.peer_id]

    def _abuse(self, link: Link, reason: str, penalty: int) -> None:
        kind = reason.split(":")[0]
        self.stats.rejected[kind] = self.stats.rejected.get(kind, 0) + 1
        log.warning("peer %s: %s (penalty %d)", link.peer_id.hex()[:12], reason, penalty)
        score = self._scores.get(link.peer_id, 0.0) + penalty
        self._scores[link.peer_id] = score
        if score >= self.config.ban_score:
            log.warning("banning peer %s for %.0fs", link.peer_id.hex()[:12], self.config.ban_s)
            self._banned[link.peer_id] = time.monotonic() + self.config.ban_s
            link.close()

    async def _dial(self, addr: tuple[str, int], *, feeler: bool = False) -> None:
        self._tried[addr] = time.monotonic()
        try:
            peer = await self.connect(*addr, expect=None)
            link = self.links.get(peer)
            if feeler and link is not None and link.outbound and not link.closed:
                # Marked before the link's first frame is read (no await since it was
                # attached): the peer's answer to our peers_req decides whether it stays.
                self._feelers.add(link)
        except Exception as exc:  # any dial failure only means: try again later
            if feeler:
                self._next_feeler = 0.0  # a dead address costs no feeler period: try the next
            attempts, _ = self._backoff.get(addr, (0, 0.0))
            delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempts)
            delay *= (
                0.5 + self._rng.random()
            )  # jitter keeps a healing network from dialling in step
            self._backoff[addr] = (attempts + 1, time.monotonic() + delay)
            log.info("dial %s:%d failed (%s); retry in %.2fs", *addr, type(exc).__name__, delay)
        finally:
            self._dialing.discard(addr)

    async def _maintain(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(self.config.maintain_s)
            tick += 1
            with contextlib.suppress(Exception):
                self._maintain_once(tick)

    def _maintain_once(self, tick: int) -> None:
        mono = time.monotonic()
        now = now_ms()
        self.book.sweep(now)
        for cid in [c for c, st in self._relay.items() if st.expires_ms <= now]:
            del self._relay[cid]
        # An initiator's state outlives its claim by the time settling may take.
        horizon = MAX_CLAIM_HORIZON_MS + int(self.config.settle_timeout_s * 1000) * 2
        for cid in [c for c, pd in self._pending.items() if pd.sent_ms + horizon <= now]:
            del self._pending[cid]
        for peer in [p for p, until in self._banned.items() if until <= mono]:
            del self._banned[peer]
        for peer in list(self._scores):
            # Scores decay so an occasional bad frame from an honest peer is forgiven.
            self._scores[peer] *= 0.9
            if self._scores[peer] < 1:
                del self._scores[peer]
        linked = set(self.links)
        want = self.config.target_degree - len(self.links) - len(self._dialing)
        if want > 0:
            candidates = self._dial_candidates(mono, linked)
            self._rng.shuffle(candidates)
            for addr in candidates[:want]:
                self._dialing.add(addr)
                self._spawn(self._dial(addr))
            if self.links and tick % 4 == 0:
                self._rng.choice(list(self.links.values())).send(Frame("peers_req", {}))
        elif (
            self.config.feeler_s > 0
            and self.config.target_degree > 0
            and mono >= self._next_feeler
            and len(self.links) + len(self._dialing) < self.config.max_degree
        ):
            self._next_feeler = mono + self.config.feeler_s * (0.5 + self._rng.random())
            self._feel(mono, linked)

    def _dial_candidates(self, mono: float, linked: set[bytes]) -> list[tuple[str, int]]:
        return [
            addr
            for addr, nid in self._known.items()
            if addr not in self._dialing
            and nid not in linked
            and nid != self.node_id
            and (nid is None or self._banned.get(nid, 0.0) <= mono)
            and self._backoff.get(addr, (0, 0.0))[1] <= mono
        ]

    def _feel(self, mono: float, linked: set[bytes]) -> None:
        """Dial one feeler: the known, unlinked address tried least recently (never tried
        first), so every known address gets its turn. A split heals once a node on one side
        links an address on the other: one it knew, or one it learned from the peer list of a
        feeler from across (a feeler beyond twice the target degree may close again, but only
        after both ends have exchanged peer lists)."""
        candidates = self._dial_candidates(mono, linked)
        if not candidates:
            return
        never = float("-inf")
        addr = min(candidates, key=lambda a: (self._tried.get(a, never), self._rng.random()))
        self._dialing.add(addr)
        self._spawn(self._dial(addr, feeler=True))

    # ------------------------------------------------------------------ dispatch

    def _on_frame(self, link: Link, frame: Frame) -> None:
        self.stats.frames_in += 1
        handler = self._handlers.get(frame.type)
        if handler is None:
            self._abuse(link, f"unknown frame type {frame.type!r:.40}", 5)
            return
        try:
            handler(self, link, frame.body)
        except BadSignature as exc:
            self._abuse(link, str(exc), 25)
        except (BadMessage, EncodingError) as exc:
            self._abuse(link, str(exc), 10)
        except KofoError as exc:
            self._abuse(link, str(exc), 5)
        except Exception:  # a bug must not take the node down; the peer is not to blame
            log.exception("handler for %s failed", frame.type)

    def _h_ping(self, link: Link, body: dict[str, Any]) -> None:
        return None

    def _h_peers_req(self, link: Link, body: dict[str, Any]) -> None:
        peers = [
            [lk.peer_id, lk.peer_port]
            for lk in self.links.values()
            if lk is not link and lk.peer_port
        ]
        self._rng.shuffle(peers)
        link.send(Frame("peers", {"peers": peers[:MAX_PEERS_IN_LIST]}))

    def _h_peers(self, link: Link, body: dict[str, Any]) -> None:
        peers = body.get("peers")
        if not isinstance(peers, list) or len(peers) > MAX_PEERS_IN_LIST:
            raise BadMessage(f"peers: must be a list of at most {MAX_PEERS_IN_LIST}")
        host = (link.writer.get_extra_info("peername") or (self.config.host,))[0]
        for item in peers:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], bytes)
                and len(item[0]) == 32
                and type(item[1]) is int
                and 0 < item[1] < 65536
                and item[0] != self.node_id
                and len(self._known) < 4096
            ):
                # Only loopback/LAN peers are learned via the host the list came from: a peer
                # cannot steer our dials to arbitrary hosts.
                self._known.setdefault((host, item[1]), item[0])
        if link in self._feelers:
            self._feelers.discard(link)
            # A feeler link beyond twice the target degree stays only where it is needed.
            if (
                len(self.links) > 2 * self.config.target_degree
                and len(peers) >= self.config.target_degree
            ):
                log.info("closing feeler to %s: it has enough links", link.peer_id.hex()[:12])
                link.close()

    # ------------------------------------------------------------------ offers

    def publish_offer(
        self,
        buy: str,
        sell: str,
        price: tuple[int, int],
        *,
        min_in: int = 1,
        max_in: int,
        partial: bool = True,
        fee: int = 0,
        ttl_ms: int = 600_000,
        offer_id: bytes | None = None,
    ) -> SignedOffer:
        """Sign and gossip an offer (a new ``seq`` supersedes an earlier one with the same id)."""
        oid = offer_id or os.urandom(16)
        prev = self._own_offers.get(oid)
        offer = Offer(
            offer_id=oid,
            buy=buy,
            sell=sell,
            price_num=price[0],
            price_den=price[1],
            min_in=min_in,
            max_in=max_in,
            partial=partial,
            fee=fee,
            expiry_ms=now_ms() + ttl_ms,
            seq=prev.offer.seq + 1 if prev else 1,
        )
        Offer.from_body(offer.to_body())  # the same checks a receiver applies
        so = make_offer(self._key, offer)
        self._own_offers[oid] = so
        self.book.add(so, now_ms())
        self._gossip_offer(so, exclude=None)
        return so

    def withdraw_offer(self, offer_id: bytes) -> None:
        prev = self._own_offers.get(offer_id)
        if prev is None:
            raise KofoError(f"no own offer with offer_id {offer_id.hex()}", code="unknown_offer")
        o = prev.offer
        self.publish_offer(
            o.buy, o.sell, (o.price_num, o.price_den), max_in=0, min_in=0, offer_id=offer_id
        )

    def _gossip_offer(self, so: SignedOffer, exclude: bytes | None) -> None:
        targets = [link for peer, link in self.links.items() if peer != exclude]
        if not targets:
            return
        framed = encode_frame(Frame("offer", {"m": so.raw}).to_bytes())
        for link in targets:
            link.send_raw(framed)

    def _h_offer(self, link: Link, body: dict[str, Any]) -> None:
        raw = body.get("m")
        if not isinstance(raw, bytes):
            raise BadMessage("offer frame: field 'm' must be bytes")
        # Schema and book checks come before the signature (the costly part): most gossip a
        # node receives is copies of offers it already has, and those are dropped either way.
        so = read_offer(raw)
        now = now_ms()
        verdict = self.book.precheck(so, now)
        if verdict is None:
            check_offer(so)
            verdict = self.book.add(so, now)
        if not verdict.accepted:
            # Duplicates are the normal cost of gossip and not the sender's fault; an expired
            # offer is (a small) one.
            if "expired" in verdict.reason or "ahead" in verdict.reason:
                self._abuse(link, f"offer rejected: {verdict.reason}", 2)
            return
        if self.on_offer is not None:
            self.on_offer(so)
        self._gossip_offer(so, exclude=link.peer_id)

    # ------------------------------------------------------------------ claims (relay side)

    def _h_claim(self, link: Link, body: dict[str, Any]) -> None:
        raw = body.get("c")
        if not isinstance(raw, bytes):
            raise BadMessage("claim frame: field 'c' must be bytes")
        self.stats.claims_seen += 1
        # The claim id is the hash of its bytes, so copies are recognised before any
        # signature is checked.
        cid = digest(raw)
        if cid in self._relay or cid in self._pending:
            self.stats.claims_dup += 1  # a loop or a second path: drop quietly
            return
        sc = open_claim(raw)
        claim = sc.claim
        now = now_ms()
        if claim.deadline_ms <= now:
            raise KofoError(
                f"claim expired: deadline_ms {claim.deadline_ms} < {now}", code="claim_expired"
            )
        if claim.deadline_ms > now + MAX_CLAIM_HORIZON_MS:
            raise BadMessage(f"claim: deadline_ms {claim.deadline_ms} is beyond the horizon")
        path = parse_path(body.get("path"))
        if len(path) >= claim.max_hops:
            raise BadMessage(f"claim: path of {len(path)} hops reached max_hops {claim.max_hops}")
        verify_path(sc, path)
        eph = Ed25519PrivateKey.generate()
        st = _RelayState(
            sc=sc,
            upstream=link.peer_id,
            position=len(path) + 1,
            eph=eph,
            path=path,
            expires_ms=claim.deadline_ms + self.config.quote_valid_ms,
        )
        self._relay[cid] = st
        fill = self._best_fill(claim)
        if fill is not None:
            f = Fulfil(cid, st.position, fill[0], fill[1], now + self.config.quote_valid_ms, path)
            sf = make_fulfil(eph, f)
            st.filled = (sf.fulfil_id, fill[0], fill[1])
            link.send(Frame("fulfil", {"f": sf.raw, "fees": []}))
        if st.position < claim.max_hops:
            hop = sign_hop(eph, sc, path)
            out = Frame("claim", {"c": raw, "path": [h.to_wire() for h in [*path, hop]]})
            self._fan_out(out, exclude=link.peer_id)

    def _fan_out(self, frame: Frame, exclude: bytes | None) -> None:
        peers = [p for p in self.links if p != exclude]
        self._rng.shuffle(peers)
        if self._importance is not None:
            imp = self._importance
            peers.sort(key=lambda p: imp(p), reverse=True)
        framed = encode_frame(frame.to_bytes())
        for p in peers[: self.config.claim_fanout]:
            self.links[p].send_raw(framed)

    def _best_fill(self, claim: Claim) -> tuple[int, int] | None:
        """``(amount_in, amount_out)`` this node quotes for ``claim``, the output net of the
        protocol fee the provider owes on the input (see :mod:`kofo.exchange.route`)."""
        best: tuple[int, int] | None = None
        now = now_ms()
        candidates = [
            so.offer.fill(claim.amount)
            for so in self._own_offers.values()
            if so.offer.buy == claim.have
            and so.offer.sell == claim.want
            and so.offer.expiry_ms > now
        ]
        if self._liquidity is not None:
            candidates.append(self._liquidity(claim))
        for c in candidates:
            # Fuller fills first, then more output.
            if c is not None and (best is None or (c[0], c[1]) > best):
                best = c
        if best is None:
            return None
        out = net_of_protocol_fee(best[0], best[1], self.config.protocol_fee_bps)
        return (best[0], out) if out > 0 else None

    def _h_fulfil(self, link: Link, body: dict[str, Any]) -> None:
        raw = body.get("f")
        if not isinstance(raw, bytes):
            raise BadMessage("fulfil frame: field 'f' must be bytes")
        sf = open_fulfil(raw)
        fees = parse_fees(body.get("fees"))
        f = sf.fulfil
        cid = f.claim_id
        if f.valid_until_ms <= now_ms():
            raise KofoError("fulfil expired", code="fulfil_expired")
        pending = self._pending.get(cid)
        if pending is not None:
            self._collect(pending, link, sf, fees)
            return
        st = self._relay.get(cid)
        if st is None:
            log.info("fulfil for unknown or expired claim %s dropped", cid.hex()[:12])
            return
        me = st.position
        if (
            f.position <= me
            or f.path[: me - 1] != st.path
            or f.path[me - 1].pub != st.eph.public_key().public_bytes_raw()
        ):
            raise BadMessage("fulfil: path does not run through this hop")
        if sorted(fee.position for fee in fees) != list(range(me + 1, f.position)):
            raise BadMessage("fulfil: fee positions do not match the hops after this one")
        if any(fee.fee for fee in fees):
            raise BadMessage("fulfil: hop fees must be 0 (relays are paid from the protocol fee)")
        upstream = self.links.get(st.upstream)
        if upstream is None:
            return
        st.downstream[sf.fulfil_id] = _Downstream(link.peer_id, f.amount_in, f.amount_out)
        # The entry is this hop's signed acknowledgement that it carried the fulfil (the
        # relay's FeeQuote in the order names it); the ledger pays the relay, not the route.
        fees.append(sign_fee(st.eph, sf.fulfil_id, me, 0))
        upstream.send(Frame("fulfil", {"f": raw, "fees": [x.to_wire() for x in fees]}))

    # ------------------------------------------------------------------ claims (initiator)

    async def request_quotes(
        self,
        have: str,
        want: str,
        amount: int,
        *,
        limit: tuple[int, int] = (0, 1),
        window_s: float = 0.5,
        max_hops: int = 6,
        enough: int | None = None,
    ) -> tuple[bytes, list[Quote]]:
        """Send a claim and collect quotes for ``window_s`` (or until ``enough`` arrived).

        Returns the claim id and the quotes, best first: full fills before partial ones, then
        the best delivered-per-input rate net of every fee, then the importance of the
        neighbour the quote came through.
        """
        if not 0 < window_s * 1000 <= MAX_CLAIM_HORIZON_MS:
            raise KofoError(f"window_s {window_s} is out of range", code="invalid_input")
        eph = Ed25519PrivateKey.generate()
        reply = X25519PrivateKey.generate()
        sent = now_ms()
        claim = Claim(
            have=have,
            want=want,
            amount=amount,
            limit_num=limit[0],
            limit_den=limit[1],
            deadline_ms=sent + int(window_s * 1000),
            max_hops=max_hops,
            reply_key=reply.public_key().public_bytes_raw(),
        )
        Claim.from_body(claim.to_body())
        sc = make_claim(eph, claim)
        pending = _Pending(sc, eph, reply, sent)
        self._pending[sc.claim_id] = pending
        self._fan_out(Frame("claim", {"c": sc.raw, "path": []}), exclude=None)
        deadline = time.monotonic() + window_s
        while enough is None or len(pending.quotes) < enough:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            pending.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.changed.wait(), left)
        return sc.claim_id, self.rank(pending.sc.claim, pending.quotes)

    def rank(self, claim: Claim, quotes: list[Quote]) -> list[Quote]:
        imp = self._importance or (lambda _p: 0.0)
        return sorted(
            quotes,
            key=lambda q: (q.amount_in == claim.amount, q.rate, imp(q.via), -q.received_ms),
            reverse=True,
        )

    def _collect(self, pending: _Pending, link: Link, sf: Any, fees: list[Any]) -> None:
        verify_fulfil(pending.sc, sf, fees)
        q = Quote(pending.sc.claim_id, sf, fees, link.peer_id, now_ms())
        claim = pending.sc.claim
        if q.amount_in > claim.amount or not claim.accepts(q.amount_in, q.delivered):
            log.info("quote below the limit price dropped")
            return
        pending.quotes.append(q)
        pending.changed.set()

    # ------------------------------------------------------------------ settlement order

    async def settle(self, claim_id: bytes, quote: Quote, payment_hash: bytes) -> CommitOrder:
        """Ask the chosen route's parties to reveal themselves and co-sign its settlement
        order; return it with every party's signature (ready for the clearance ledger)."""
        pending = self._pending.get(claim_id)
        if pending is None:
            raise RouteFailed(f"claim {claim_id.hex()[:16]} is not ours or has been closed")
        link = self.links.get(quote.via)
        if link is None:
            raise RouteFailed("the neighbour the quote came through is gone")
        p = quote.fulfil.fulfil.position
        pending.chosen = quote
        pending.joins.clear()
        pending.osigs.clear()
        accept = sign(pending.eph, MSG_ACCEPT, Accept(claim_id, quote.fulfil_id).to_body())
        link.send(Frame("accept", {"a": accept.to_bytes()}))
        deadline = time.monotonic() + self.config.settle_timeout_s
        await self._wait(pending, lambda: len(pending.joins) >= p, deadline, "joins")
        joins = [pending.joins[i] for i in range(1, p + 1)]
        ids = [self.node_id] + [j.node_id for j in joins]
        if len(set(ids)) != len(ids):
            raise RouteFailed("a node appears twice on the route")
        order = build_settlement_order(
            claim=pending.sc.claim,
            quote=quote,
            initiator=RouteParty(self.node_id, self.config.addresses),
            relays=[j.node_id for j in joins[:-1]],
            provider=RouteParty(joins[-1].node_id, joins[-1].addresses),
            payment_hash=payment_hash,
            now_s=int(time.time()),
            protocol_fee_bps=self.config.protocol_fee_bps,
        )
        my_sig = order.sign(self._key)
        link.send(
            Frame(
                "order",
                {
                    "claim_id": claim_id,
                    "fulfil_id": quote.fulfil_id,
                    "o": order.as_map(),
                    "sig": my_sig.signature,
                },
            )
        )
        await self._wait(pending, lambda: len(pending.osigs) >= p, deadline, "signatures")
        data = order.signing_bytes()
        sigs = [my_sig]
        for pos in range(1, p + 1):
            signer = ids[pos]
            if not verify_ed25519(signer, pending.osigs[pos], data):
                raise RouteFailed(f"party at position {pos} signed something else")
            sigs.append(OrderSignature(signer, pending.osigs[pos]))
        by_signer = {s.signer: s for s in sigs}
        commit = CommitOrder(order, tuple(by_signer[nid] for nid in order.parties()))
        commit.verify_signatures()
        del self._pending[claim_id]
        return commit

    async def _wait(
        self, pending: _Pending, done: Callable[[], bool], deadline: float, what: str
    ) -> None:
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RouteFailed(f"timed out waiting for the route's {what}")
            pending.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.changed.wait(), left)

    def _route_state(self, cid: bytes, fid: bytes) -> _RelayState:
        st = self._relay.get(cid)
        if st is None:
            raise KofoError(f"no state for claim {cid.hex()[:16]}", code="unknown_claim")
        if fid not in st.downstream and (st.filled is None or st.filled[0] != fid):
            raise BadMessage("fulfil is not one this node carried or made")
        return st

    def _h_accept(self, link: Link, body: dict[str, Any]) -> None:
        raw = body.get("a")
        if not isinstance(raw, bytes):
            raise BadMessage("accept frame: field 'a' must be bytes")
        msg = decode(raw)
        env = msg.get("env") if isinstance(msg, dict) else None
        acc0 = Accept.from_body(env.get("body") if isinstance(env, dict) else None)
        st = self._route_state(acc0.claim_id, acc0.fulfil_id)
        if link.peer_id != st.upstream:
            raise BadMessage("accept did not come from the claim's upstream")
        acc = open_accept(raw, st.sc.initiator_eph)
        down = st.downstream.get(acc.fulfil_id)
        pos = st.position
        eph_pub = st.eph.public_key().public_bytes_raw()
        addrs = dict(self.config.addresses)
        data = join_message(acc.claim_id, acc.fulfil_id, pos, eph_pub, self.node_id, addrs)
        join = Join(pos, self.node_id, addrs, st.eph.sign(data), self._key.sign(data))
        box = seal(st.sc.claim.reply_key, encode(join.to_body()))
        link.send(Frame("join", {"claim_id": acc.claim_id, "box": box}))
        if down is not None and down.peer in self.links:
            self.links[down.peer].send(Frame("accept", {"a": raw}))

    def _h_join(self, link: Link, body: dict[str, Any]) -> None:
        cid, box = body.get("claim_id"), body.get("box")
        if not isinstance(cid, bytes) or not isinstance(box, bytes) or len(box) > 2048:
            raise BadMessage("join frame: needs claim_id and a box of at most 2048 bytes")
        pending = self._pending.get(cid)
        if pending is None:
            self._relay_up(cid, link, Frame("join", body))
            return
        join = Join.from_body(decode(open_sealed(pending.reply, box)))
        quote = pending.chosen
        if quote is None:
            return
        f = quote.fulfil.fulfil
        if join.position > f.position:
            raise BadMessage(f"join: position {join.position} beyond the route")
        eph = (
            quote.fulfil.filler_eph
            if join.position == f.position
            else f.path[join.position - 1].pub
        )
        data = join_message(cid, quote.fulfil_id, join.position, eph, join.node_id, join.addresses)
        if not verify_ed25519(eph, join.eph_sig, data):
            raise BadSignature(f"join: path key at position {join.position} did not sign")
        if not verify_ed25519(join.node_id, join.node_sig, data):
            raise BadSignature(f"join: node key at position {join.position} did not sign")
        pending.joins[join.position] = join
        pending.changed.set()

    def _relay_up(self, cid: bytes, link: Link, frame: Frame) -> None:
        st = self._relay.get(cid)
        if st is None:
            log.info("%s for unknown claim %s dropped", frame.type, cid.hex()[:12])
            return
        if link.peer_id == st.upstream:
            raise BadMessage(f"{frame.type} must travel towards the initiator")
        up = self.links.get(st.upstream)
        if up is not None:
            up.send(frame)

    def _h_order(self, link: Link, body: dict[str, Any]) -> None:
        cid, fid, isig = body.get("claim_id"), body.get("fulfil_id"), body.get("sig")
        if not isinstance(cid, bytes) or not isinstance(fid, bytes) or not isinstance(isig, bytes):
            raise BadMessage("order frame: needs claim_id, fulfil_id and sig")
        order = SettlementOrder.from_map(body.get("o"))
        data = order.signing_bytes()
        if not verify_ed25519(order.initiator, isig, data):
            raise BadSignature("order: initiator signature does not verify")
        st = self._route_state(cid, fid)
        if link.peer_id != st.upstream:
            raise BadMessage("order did not come from the claim's upstream")
        down = st.downstream.get(fid)
        is_provider = down is None
        if is_provider:
            assert st.filled is not None
            amount_in, payout = st.filled[1], st.filled[2]
        else:
            assert down is not None
            amount_in, payout = down.amount_in, down.amount_out_here
        check_order(
            order,
            me=self.node_id,
            fulfil_id=fid,
            have=st.sc.claim.have,
            want=st.sc.claim.want,
            amount_in=amount_in,
            max_payout=payout,
            provider=is_provider,
            now_s=int(time.time()),
            max_protocol_fee_bps=(
                self.config.protocol_fee_bps if is_provider else self.config.max_protocol_fee_bps
            ),
        )
        sig = self._key.sign(data)
        link.send(Frame("osig", {"claim_id": cid, "position": st.position, "sig": sig}))
        if down is not None and down.peer in self.links:
            self.links[down.peer].send(Frame("order", body))

    def _h_osig(self, link: Link, body: dict[str, Any]) -> None:
        cid, pos, sig = body.get("claim_id"), body.get("position"), body.get("sig")
        if (
            not isinstance(cid, bytes)
            or type(pos) is not int
            or not 0 < pos <= MAX_HOPS
            or not isinstance(sig, bytes)
            or len(sig) != 64
        ):
            raise BadMessage("osig frame: needs claim_id, position and a 64-byte sig")
        pending = self._pending.get(cid)
        if pending is None:
            self._relay_up(cid, link, Frame("osig", body))
            return
        pending.osigs[pos] = sig
        pending.changed.set()

    _handlers: ClassVar[dict[str, Callable[[ExchangeNode, Link, dict[str, Any]], None]]] = {
        "ping": _h_ping,
        "peers_req": _h_peers_req,
        "peers": _h_peers,
        "offer": _h_offer,
        "claim": _h_claim,
        "fulfil": _h_fulfil,
        "accept": _h_accept,
        "join": _h_join,
        "order": _h_order,
        "osig": _h_osig,
    }
