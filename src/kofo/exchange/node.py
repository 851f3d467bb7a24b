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
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kofo.errors import InvalidInput, KofoError, NotDelivered
from kofo.exchange.book import MAX_OFFER_LIFETIME_MS, MAX_SEQ_AHEAD_MS, OrderBook
from kofo.exchange.frames import encode_frame
from kofo.exchange.route import (
    LOCK_WINDOW_S,
    ExpiryCheck,
    ExpiryFit,
    OrderPolicy,
    PlanTimes,
    RouteParty,
    RouteView,
    build_settlement_order,
    check_order,
    net_of_protocol_fee,
    split_asset,
)
from kofo.exchange.sealed import open_sealed, seal
from kofo.exchange.transport import (
    HANDSHAKE_TIMEOUT_S,
    WRITE_BUFFER_LIMIT,
    Link,
    LinkError,
    LinkLimits,
    TokenBucket,
    handshake,
    node_id_of,
    tls_identity,
)
from kofo.wire.codec import MAX_MESSAGE_BYTES, EncodingError, decode, encode
from kofo.wire.envelope import BadMessage, BadSignature, sign, verify_ed25519
from kofo.wire.exchange import (
    ANONYMOUS_OFFER_PROOF,
    MAX_CLAIM_HORIZON_MS,
    MAX_FRAME_BYTES,
    MAX_HOPS,
    MAX_PEERS_IN_LIST,
    MSG_ACCEPT,
    NO_OFFER_ID,
    Accept,
    Claim,
    Frame,
    Fulfil,
    Join,
    Offer,
    PathHop,
    Quote,
    SignedClaim,
    SignedFulfil,
    SignedOffer,
    check_fulfil,
    check_offer,
    check_offer_proof,
    digest,
    join_message,
    make_claim,
    make_fulfil,
    make_offer,
    make_offer_proof,
    offer_frame_bytes,
    open_accept,
    open_claim,
    parse_contact,
    parse_fees,
    parse_path,
    read_fulfil,
    read_offer,
    sign_fee,
    sign_hop,
    verify_fulfil,
    verify_fulfil_after,
    verify_path,
)
from kofo.wire.expiry import BlockHeight, Expiry
from kofo.wire.legkeys import LegRole, verify_leg_key
from kofo.wire.orders import (
    MAX_LEGS,
    CommitOrder,
    OrderSignature,
    SettlementOrder,
    leg_roles_of,
)

log = logging.getLogger("kofo.exchange.node")

Importance = Callable[[bytes], float]
"""Node id -> importance score (from the clearance ledger, supplied by the composer)."""

Liquidity = Callable[[Claim], tuple[int, int] | None]
"""Extra liquidity beyond published offers: a claim -> ``(amount_in, amount_out)`` or None."""

ProveLegs = Callable[[SettlementOrder], dict[tuple[int, LegRole], bytes]]
"""The composer's proofs of control of this node's leg keys in an order (every (leg, role)
whose node is this one; ``kofo.wire.legkeys``): made with its settlement wallet's keys."""
"""Extra liquidity beyond published offers: a claim -> ``(amount_in, amount_out)`` or None."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


TRANSIT_GRACE_MS = 2_000
"""A claim or fulfil that expired at most this long ago may have expired on its way (latency,
clock drift between honest nodes): dropped without scoring the neighbour that relayed it."""


PEERS_ANSWER_S = 0.5
"""A node answers at most one ``peers_req`` per link this often (it asks at most once a second)."""

FIXED_BACKOFF_MAX_S = 10.0
"""Longest wait between dials of a bootstrap peer of a fixed topology (``discover = False``)."""

MISSED_MAX = 512
"""Gossiped offers kept per link that missed them at a full write buffer, to send again once
it drains; beyond, the link gets the whole book again (withdrawals among them are lost)."""

INBOUND_SOURCE = b"inbound:"
"""The source recorded for an inbound peer's claimed address, followed by the host it linked
from (never a node id: those are 32 bytes)."""


MAX_DM_BYTES = min(MAX_MESSAGE_BYTES, MAX_FRAME_BYTES - 1024)
"""A direct message's payload (and its reply) must fit one link frame with its envelope: the
swap messages it carries are a few KiB; the frame limit (256 KiB) is kept, not raised to the
swap layer's 1 MiB cap, so one peer still makes us buffer at most one such frame per link."""

SWAP_LINK_FRAMES = frozenset({"dm", "dm_reply", "ping"})
"""Frames a swap link carries (``ExchangeNode.swap_links``); anything else over one is dropped."""
DM_REPLY_GRACE_S = 5.0
"""After a ``direct()`` timeout the request still counts as outstanding on the link for the
handler budget (``dm_handler_s``, the peer's being the protocol's default) and this grace: the
peer replies within it and counts the request until then."""

DM_SEND_SHARE = 0.8
"""A sender keeps to this share of the receiver's direct-message rate and burst (the protocol's
defaults, ``dm_rate``/``dm_burst``): arrivals bunch on the way, and a dm over the receiver's
rate costs the sender 2."""

MAX_DIRECT_PEER_S = 7 * 24 * 3600.0
"""Longest an order's initiator keeps a direct slot (an order's legs expire within hours)."""

MAX_CONTACTS = 1024
"""Contacts learned from route joins, newest kept (one per provider the node traded with)."""


class RouteFailed(KofoError):
    code = "route_failed"


class PeerNotReached(NotDelivered):
    """No link to the node could be used or made for a direct message (no contact known, the
    dial failed or reached another node id, or the link closed before the reply)."""

    code = "peer_not_reached"


class DirectTimeout(NotDelivered):
    """A direct message got no reply in time (it may or may not have been handled)."""

    code = "direct_timeout"


class DirectBusy(KofoError):
    """Too many direct messages outstanding on one link (``ExchangeConfig.dm_outstanding``),
    or a peer sending beyond its direct-message rate (``dm_rate``)."""

    code = "direct_busy"


class UnknownRequest(KofoError):
    """A ``dm_reply`` for no direct message outstanding on that link (late, or never sent)."""

    code = "unknown_request"


class SealedJoinBad(KofoError):
    """A join that does not open or parse at the initiator (its relays could not check it)."""

    code = "join_invalid"


class UnknownClaim(KofoError):
    """A fulfil for a claim this node holds no state for (never saw it, or it expired)."""

    code = "unknown_claim"


class ClaimBudget(KofoError):
    """A peer sent claims beyond its budget (see ``ExchangeConfig.claims_per_peer``)."""

    code = "claim_budget"


@dataclass(slots=True)
class ExchangeConfig:
    host: str = "127.0.0.1"
    port: int = 0
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    target_degree: int = 4
    max_degree: int = 16
    max_handshakes: int = 64  # inbound handshakes in progress at once (the oldest goes)
    claim_fanout: int = 8
    quote_valid_ms: int = 10_000
    limits: LinkLimits = field(default_factory=LinkLimits)
    ban_score: int = 100
    ban_s: float = 30.0
    maintain_s: float = 0.25
    # Liveness of every link (mesh and swap): a ``ping`` goes on a link this node has sent
    # nothing on for ``keepalive_s``; a link nothing at all was read from for
    # ``idle_timeout_s`` is dropped (a peer gone without closing: host down, NAT state lost,
    # process frozen), so its slot frees and a fixed node dials its bootstrap peer again.
    # ``idle_timeout_s`` must be at least twice ``keepalive_s + maintain_s`` (a ping missed
    # or late once is no loss of the link).
    keepalive_s: float = 15.0
    idle_timeout_s: float = 45.0
    backoff_base_s: float = 0.2
    backoff_max_s: float = 300.0
    # Feelers: at or above ``target_degree`` a node still dials, every ``feeler_s`` (jittered),
    # the known address it has no link to and tried least recently, so a network split into
    # parts that each have their degree (or a node whose known peers all died) joins up again.
    # A feeler link is kept up to twice the target degree, beyond that only while the peer has
    # fewer than ``target_degree`` other links. 0 turns feelers off (so does target_degree 0).
    feeler_s: float = 2.0
    # False: a fixed topology (the daemon's ``[p2p] discover = false``): dial only the
    # bootstrap addresses, each one until it is linked whatever the degree, never an address
    # learned from peers, no feelers.
    discover: bool = True
    settle_timeout_s: float = 5.0
    # Claim budgets (per upstream peer): live relay states its claims may hold, and a token
    # bucket of new claims per second; over budget a claim is dropped unforwarded and costs
    # the peer score. The node holds at most ``max_relay_states`` in all.
    claims_per_peer: int = 256
    claim_rate: float = 100.0
    claim_burst: float = 200.0
    max_relay_states: int = 10_000
    # Fulfils: a relay keeps at most this many per claim (per downstream link), an initiator
    # takes at most this many quotes per claim through one neighbour and ``max_quotes`` in all.
    max_fulfils_per_claim: int = 32
    max_quotes: int = 256
    # An initiator starts its claim with 0..dummy_hops hops of its own (uniformly), so the
    # first hop cannot tell from the path that its link peer is the taker (docs/exchange.md).
    dummy_hops: int = 2
    # Address table: at most ``max_known`` addresses, at most ``max_known_per_source`` learned
    # from one peer; an address learned from peers is forgotten after ``max_dial_failures``
    # failed dials in a row (bootstrap addresses are kept, with the backoff at its cap).
    max_known: int = 1024
    max_known_per_source: int = 64
    max_dial_failures: int = 6
    # Order book: live offers in all and per maker (see kofo.exchange.book).
    max_offers: int = 50_000
    offers_per_maker: int = 64
    # Book dumps to new links, node-wide: a token bucket (see ExchangeNode._send_book).
    book_dump_rate: float = 2.0
    book_dump_burst: float = 16.0
    addresses: dict[str, str] = field(default_factory=dict)  # chain -> own address
    # The ledger's rate (the composer sets it from the ledger's parameters): initiators put it
    # in orders, providers net it out of their quotes and refuse orders charging more.
    protocol_fee_bps: int = 0
    max_protocol_fee_bps: int = 100  # a relay refuses to co-sign an order charging more
    # ---- hooks for the composer (the node daemon); None: off (docs/exchange.md, "Composer
    # hooks"). Per-chain expiries: the initiator fits each leg's expiry to its chain's unit
    # (``(chain, expiry_time, now_s) -> Expiry``); the provider judges each block-height leg
    # with its own chain view (``(chain, expiry, expiry_time, now_s)``, raises to refuse).
    expiry_fit: ExpiryFit | None = None
    expiry_check: ExpiryCheck | None = None
    # The initiator's plan of an order's four deadlines per chain pair from its own engine's
    # margins (``(have_chain, want_chain, now_s) -> (out lock_by, back lock_by, back expiry,
    # out expiry)``, link protocol v4; the daemon passes ``kofo.node.trades.plan_order_times``
    # of its policies). None: ``route.derived_times`` (embedded chains, tests).
    plan_times: PlanTimes | None = None
    # Proofs of control of this node's leg keys in an order it signs (link protocol v5: the
    # provider's ``osig`` carries them, the initiator adds its own). None: no proofs (the
    # ledger then refuses the order: only for tests of the exchange alone).
    prove_legs: ProveLegs | None = None
    # The network's lock window (link protocol v4: ``legs[0].lock_by`` is the order's time
    # plus it): ``route.LOCK_WINDOW_S`` on the production network; every node of a network
    # must use the same value (a devnet writes its own into the configs it funds).
    lock_window_s: int = LOCK_WINDOW_S
    # chain -> "height" | "unix": the HTLC clock of chains this node knows (a chain missing
    # here is judged by what ``expiry_fit`` gives for it, else not at all).
    chain_clocks: dict[str, str] = field(default_factory=dict)
    # Called by the provider ("provider") and each relay ("relay") just before it co-signs an
    # order, once per signed order; raising a KofoError refuses (logged, not scored).
    order_guard: Callable[[SettlementOrder, str], None] | None = None
    # asset -> base units this node can pay out now: a fill never offers more out.
    liquidity: Callable[[str], int] | None = None
    # (asset, amount_out, valid_until_ms) of each fill this node issues as provider.
    on_fill: Callable[[str, int, int], None] | None = None
    # "host:port" where this node accepts links, signed in its joins as provider ("": none).
    contact: str = ""
    # Direct messages: the handler of inbound ``dm`` frames ``(sender node id, payload) ->
    # reply`` (None: every dm gets a null reply); per link at most ``dm_outstanding``
    # requests each way and ``dm_rate``/s (burst ``dm_burst``) inbound; a handler gets
    # ``dm_handler_s`` to answer.
    on_direct: Callable[[bytes, bytes], Awaitable[bytes | None]] | None = None
    dm_outstanding: int = 16
    dm_rate: float = 50.0
    dm_burst: float = 100.0
    dm_handler_s: float = 30.0
    # Inbound direct messages in the handler at once over all peers (each holds its payload):
    # beyond it a dm gets a null reply, unscored (the peer kept within its own budget).
    dm_inflight_max: int = 128
    # Swap links (outside the mesh and its ``max_degree``) this node accepts at once from the
    # initiators of orders it co-signed as provider, until the order's last expiry:
    # strangers filling the inbound slots must not keep a taker from delivering its swap
    # messages. A swap link carries direct messages only (see ``ExchangeNode.direct``).
    direct_slots: int = 32


@dataclass(slots=True)
class _Downstream:
    peer: bytes
    amount_in: int
    amount_out_here: int  # the ``want`` amount the provider delivers through us
    keys: list[bytes]  # the fulfil's path keys by position, the filler's key last


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
    accepted: bytes | None = None  # the one fulfil id accepted for this claim
    # The addresses this node put in its join: the order must pay exactly these (the node's
    # current addresses may have rotated since, for another claim's order).
    join_addresses: dict[str, str] = field(default_factory=dict)
    joins_up: int = 0  # joins relayed towards the initiator
    # Once this node co-signed: the order's signed bytes and the node id at each position,
    # to check the signatures of the parties after it before relaying them.
    order_data: bytes | None = None
    owners: list[bytes] = field(default_factory=list)
    osigs_up: set[int] = field(default_factory=set)
    order_refused: bool = False  # its order failed our checks: a repeat is refused at once


@dataclass(slots=True)
class _Pending:
    """What an initiator remembers about its own claim."""

    sc: SignedClaim
    eph: Ed25519PrivateKey
    reply: X25519PrivateKey
    sent_ms: int
    dummies: list[Ed25519PrivateKey] = field(default_factory=list)
    dummy_path: list[PathHop] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    per_via: dict[bytes, int] = field(default_factory=dict)
    joins: dict[int, Join] = field(default_factory=dict)
    osigs: dict[int, bytes] = field(default_factory=dict)
    lproofs: dict[tuple[int, LegRole], bytes] = field(default_factory=dict)
    chosen: Quote | None = None
    # v6 early end: the makers of our book that can fill this claim (when it was sent), and
    # those of them whose offer proof arrived in a verified fulfil; the window ends once the
    # first set is non-empty and within the second ("all_quoted").
    expected: frozenset[bytes] = frozenset()
    answered: set[bytes] = field(default_factory=set)
    # Set when request_quotes returns: the collection is what it returned (a fulfil arriving
    # later, even one the event loop had queued before the window's end, is dropped).
    closed: bool = False
    order_data: bytes | None = None
    order: SettlementOrder | None = None
    owners: list[bytes] = field(default_factory=list)  # node id per position, once ordered
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class QuoteWindow:
    """How an own claim's quote collection ended (``ExchangeNode.quote_window``): ``ended`` is
    ``"all_quoted"`` (every expected maker's offer proof arrived), ``"enough"`` (the caller's
    count reached) or ``"window"`` (``window_s`` ran out)."""

    ended: str
    expected: int  # makers of our book able to fill the claim when it was sent
    answered: int  # of them, those whose offer proof arrived in the window
    quotes: int  # quotes collected
    elapsed_ms: int


MAX_AWAITED_MAKERS = 64
"""A taker awaits (v6 early end) at most this many makers of its book for one claim; when more
fill it, it awaits none (the window runs to its end): a relay forwards at most
``max_fulfils_per_claim`` (32) fulfils per claim, so beyond a few neighbours' worth every maker
answering is unlikely, and finding them must stay one short pass per claim sent."""

QUOTE_WINDOWS_KEPT = 256
"""``ExchangeNode.quote_window`` remembers this many own claims' collections, newest kept."""


@dataclass(slots=True)
class NodeStats:
    frames_in: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    claims_seen: int = 0
    claims_dup: int = 0
    claims_refused: int = 0
    claims_late: int = 0  # expired on their way or just beyond the horizon: unscored
    book_dumps: int = 0
    book_dumps_skipped: int = 0
    book_redumps: int = 0  # links given the book again: over MISSED_MAX offers missed (full buffer)
    gossip_resent: int = 0  # offers sent again to a link that missed them at a full buffer
    offers_late: int = 0  # expired on their way (or just outside the clock window): unscored
    quotes_late: int = 0  # fulfils for our own claim after its quote window closed: unscored
    # How our quote windows ended ("all_quoted", "enough", "window"), and offer proofs in
    # fulfils that did not open or verify (the filler's fault: the quote is kept, unscored).
    windows_ended: dict[str, int] = field(default_factory=dict)
    offer_proofs_bad: int = 0
    # Where a claim's flood or its answers can be lost without any error (counted so a
    # multi-process run can say which; see docs/exchange.md "Where a quote can be lost"):
    # a copy of a held claim that arrived later with more hops left than the copy we took
    # and forwarded or filled on, so kept (first-copy dedupe: the nodes beyond our reach on
    # that copy never see it from us);
    claims_shadowed: int = 0
    # a claim first taken with no hops left (a dead end: nothing forwarded, no fill), taken
    # again from a later copy with hops left, and forwarded
    claims_readopted: int = 0
    claims_unsent: int = 0  # a claim not written to a link chosen for it (closing, full buffer)
    # a fill of ours or a fulfil we relay that could not go upstream (its link closed or its
    # buffer was full): that quote never reaches the taker.
    fulfils_lost: int = 0


class _Inbound(asyncio.Protocol):
    """A fresh inbound TCP connection, reading paused until the node starts TLS on it (so no
    byte of the peer's ClientHello is read before the TLS layer is in place)."""

    def __init__(self, node: ExchangeNode) -> None:
        self._node = node

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._node._inbound(transport)


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
        try:
            parse_contact(self.config.contact)
        except BadMessage as exc:
            raise InvalidInput(f"ExchangeConfig.contact: {exc}") from None
        cfg = self.config
        if not cfg.keepalive_s > 0 or not cfg.idle_timeout_s >= 2 * (
            cfg.keepalive_s + cfg.maintain_s
        ):
            raise InvalidInput(
                f"ExchangeConfig.idle_timeout_s ({cfg.idle_timeout_s}) must be at least twice "
                f"keepalive_s + maintain_s ({cfg.keepalive_s} + {cfg.maintain_s}), and "
                "keepalive_s above 0: a peer's ping late once must not drop the link"
            )
        bad = {c: u for c, u in self.config.chain_clocks.items() if u not in ("height", "unix")}
        if bad:
            raise InvalidInput(f"ExchangeConfig.chain_clocks: units must be height or unix: {bad}")
        self._importance = None if importance is None else _guarded_importance(importance)
        self._liquidity = liquidity
        self._tls = tls_identity(key)
        self.links: dict[bytes, Link] = {}
        # Swap links: opened by ``direct()`` (or accepted from an order's initiator) for the
        # two traders' direct messages only; kept out of ``links``, so no book, gossip, claim
        # or route ever crosses one (a later trade between the two still goes through the
        # mesh and pays its relays).
        self.swap_links: dict[bytes, Link] = {}
        self._known: dict[tuple[str, int], bytes | None] = {}
        self._backoff: dict[tuple[str, int], tuple[int, float]] = {}
        self._dialing: set[tuple[str, int]] = set()
        self._tried: dict[tuple[str, int], float] = {}  # address -> last dial (monotonic)
        # Who announced each address (None: bootstrap or dialled; INBOUND_SOURCE + host: an
        # inbound peer's claimed port), and the addresses where a handshake reached the node
        # id announced for them.
        self._source: dict[tuple[str, int], bytes | None] = {}
        self._verified: set[tuple[str, int]] = set()
        self._next_feeler = 0.0
        self._last_liveness = 0.0  # monotonic time of the last liveness check (0: none yet)
        self._feelers: set[Link] = set()  # feeler links whose peer list is still to come
        self._handshaking: dict[asyncio.Task[Any], None] = {}  # inbound, oldest first
        # Per link: our peers_req still unanswered (a peers frame is taken only as an answer),
        # and when we last answered theirs.
        self._asked: dict[Link, int] = {}
        self._answered: dict[Link, float] = {}
        self._scores: dict[bytes, float] = {}
        self._banned: dict[bytes, float] = {}
        self.book = OrderBook(
            self.config.max_offers,
            per_maker=self.config.offers_per_maker,
            standing=self._importance,
        )
        self._last_seq = 0
        self._own_offers: dict[bytes, SignedOffer] = {}
        self._relay: dict[bytes, _RelayState] = {}
        self._claims_by_peer: dict[bytes, int] = {}  # live relay states per upstream peer
        self._claim_buckets: dict[bytes, TokenBucket] = {}
        # Claims we sent each peer: expiry times still live there, and a token bucket.
        self._fwd: dict[bytes, tuple[list[int], TokenBucket]] = {}
        self._pending: dict[bytes, _Pending] = {}
        # Own claims settled (their state dropped), until the initiator's horizon: a quote
        # for one still arriving is late, not unknown (it used to cost its honest relay 1 and
        # was counted nowhere, so a taker could not tell a late maker from a lost one).
        self._settled: dict[bytes, int] = {}
        self._windows: OrderedDict[bytes, QuoteWindow] = OrderedDict()
        self.stats = NodeStats()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self.port = 0
        self._rng = random.Random()
        self.on_offer: Callable[[SignedOffer], None] | None = None
        self._dump_bucket = self._new_dump_bucket()
        # Mesh links whose book dump waits for the dump budget, oldest first (at most one
        # entry per mesh link: bounded by ``max_degree``).
        self._dump_wait: dict[Link, None] = {}
        # Book dumps larger than a link's write buffer: the offers and the next one to send.
        self._dump_rest: dict[Link, tuple[list[SignedOffer], int]] = {}
        # Mesh links that missed gossiped offers (their write buffer was full: a slow reader,
        # or a book dump filling it): the frames missed (expiry, frame), sent again once the
        # buffer has drained (``_redump_missed``); None: more than ``MISSED_MAX`` were missed,
        # the link gets the book again instead.
        self._missed: dict[Link, list[tuple[int, bytes]] | None] = {}
        # Swap links from peers we expect no direct messages from (dialled for them by a
        # stranger): each holds the inbound mesh slot it came in by.
        self._stranger_swaps: set[Link] = set()
        # Contacts of providers learned from the joins of routes this node settled.
        self.contacts: dict[bytes, str] = {}
        # Direct messages, per link: our requests awaiting a reply, the peer's requests
        # being handled, and the peer's rate.
        self._dm_seq = 0
        self._dm_out: dict[Link, dict[int, asyncio.Future[bytes | None]]] = {}
        # Per peer node id (not per link: a peer that relinks must not get a fresh budget
        # while its earlier requests are still being handled), and over all peers.
        self._dm_in: dict[bytes, int] = {}
        self._dm_in_total = 0
        self._dm_buckets: dict[Link, TokenBucket] = {}
        # Our requests we stopped waiting for, with when the peer must have answered them
        # (its handler budget): they still count as outstanding until then, since the peer
        # still counts them (else an honest sender retrying a slow peer is refused, scored).
        # Per peer node id, so a lost link does not forget them either.
        self._dm_gave_up: dict[bytes, dict[int, float]] = {}
        # Our own sending rate per peer node id (below the rate the peer scores beyond).
        self._dm_send_buckets: dict[bytes, TokenBucket] = {}
        # Initiators of orders this node co-signed as provider -> until when (monotonic) they
        # may link in beyond the inbound slots (``direct_slots``), newest kept.
        self._direct_peers: dict[bytes, float] = {}

    def _new_dump_bucket(self) -> TokenBucket:
        return TokenBucket(self.config.book_dump_rate, self.config.book_dump_burst)

    def __repr__(self) -> str:
        return f"ExchangeNode({self.node_id.hex()[:12]}, port={self.port})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Plain TCP first, TLS in _accept: so a bounded number of connections is ever held
        # before their handshake completes (the server's own TLS held each for 60 s, unbounded).
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Inbound(self), self.config.host, self.config.port
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
        for link in [*self.links.values(), *self.swap_links.values()]:
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

    def _inbound(self, transport: asyncio.Transport) -> None:
        """A new inbound TCP connection (reading paused): at most ``max_handshakes`` are in
        progress at once, a new one displaces the oldest (an honest handshake takes
        milliseconds; connections that never complete one must not hold sockets unbounded)."""
        if self._stopped:
            transport.close()
            return
        if len(self._handshaking) >= self.config.max_handshakes:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            oldest.cancel()
        task = self._spawn(self._accept(transport))
        self._handshaking[task] = None
        task.add_done_callback(lambda t: self._handshaking.pop(t, None))

    async def _accept(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        made: list[asyncio.StreamWriter] = []

        async def tls_then_hello() -> tuple[bytes, int]:
            tls = await loop.start_tls(transport, protocol, self._tls.server, server_side=True)
            if tls is None:
                raise LinkError("TLS did not start")
            protocol.connection_made(tls)
            writer = asyncio.StreamWriter(tls, protocol, reader, loop)
            made.append(writer)
            return await handshake(reader, writer, self._key, self.port, outbound=False)

        def close() -> None:
            (made[0] if made else transport).close()

        try:
            peer, port = await asyncio.wait_for(tls_then_hello(), HANDSHAKE_TIMEOUT_S)
        except (LinkError, KofoError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("inbound handshake failed: %s", exc)
            close()
            return
        except asyncio.CancelledError:
            close()
            if self._stopped:
                raise
            return  # displaced by a newer handshake
        writer = made[0]
        host = (writer.get_extra_info("peername") or (self.config.host,))[0]
        # The initiator of an order we co-signed links in for its swap messages: a swap link,
        # outside the mesh (unless it is our mesh neighbour already: that link carries them).
        if peer not in self.links and self._direct_peer(peer):
            if not self._swap_slot_for(peer):
                writer.close()
                return
            link = Link(reader, writer, peer, port, False, self.config.limits)
            self._attach(link, host, swap_only=True)
            return
        # ``target_degree`` slots stay for links we dial: peers linking in (fresh keys cost
        # nothing) must not take every slot and leave us no link of our own choosing.
        if not self._mesh_slot_free(again=peer):
            log.info("refusing %s: no inbound slot (%d links)", peer.hex()[:12], len(self.links))
            writer.close()
            return
        self._attach(Link(reader, writer, peer, port, False, self.config.limits), host)

    async def connect(
        self, host: str, port: int, expect: bytes | None = None, *, swap_only: bool = False
    ) -> bytes:
        """Dial a peer and keep the link; return its node id. ``swap_only``: a swap link for
        direct messages (``direct()``), kept out of the mesh."""
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
        link = Link(reader, writer, peer, peer_port, True, self.config.limits)
        self._attach(link, host, port, swap_only=swap_only)
        return peer

    def _attach(
        self, link: Link, host: str, dialled: int | None = None, *, swap_only: bool = False
    ) -> None:
        peer = link.peer_id
        if self._stopped:
            log.info("dropping link to %s: this node is stopped", peer.hex()[:12])
            link.close()
            return
        if self._banned.get(peer, 0.0) > time.monotonic():
            log.info("refusing banned peer %s", peer.hex()[:12])
            link.close()
            return
        if swap_only:
            # Direct messages only: not a neighbour (no book, no peers asked, no gossip, no
            # claims), its address not learned for the mesh.
            link.swap_only = True
            old_swap = self.swap_links.get(peer)
            if old_swap is not None and not old_swap.closed:
                if link.outbound:
                    # two of our own dials raced: keep the live one (messages may be on it)
                    link.close()
                    return
                # the peer dialled again: its old link is dead on its side (a restart)
                old_swap.close()
            self.swap_links[peer] = link
            self._spawn(self._run_link(link))
            return
        if self._enter_mesh(link, host, dialled):
            self._spawn(self._run_link(link))
            self._ask_peers(link)
            self._send_book(link)

    def _enter_mesh(self, link: Link, host: str, dialled: int | None) -> bool:
        """Make ``link`` the mesh link to its peer (False: a live one is kept instead and
        ``link`` is closed)."""
        peer = link.peer_id
        if link.outbound and dialled:
            # We dialled this address and the handshake proved the id: this binding is
            # verified (the port the peer claims is not: it could name another node's). Kept
            # even if an older link to the peer stays instead (below): the address is linked.
            addr = (host, dialled)
            self._known[addr] = peer
            self._source.setdefault(addr, None)
            self._verified.add(addr)
            self._backoff.pop(addr, None)
        old = self.links.get(peer)
        if old is not None and not old.closed:
            if not old.outbound and not link.outbound:
                # The peer dialled us again: its end of the old link is gone (it restarted,
                # or crashed and left the old one half open here, unread). Keeping the old
                # one refused every new link, so the restarted node got no book nor gossip.
                log.info("%s linked in again: its new link replaces the old", peer.hex()[:12])
                old.close()
            else:
                # Both ends apply the same rule to a simultaneous dial: keep the link dialled
                # by the smaller node id, so they never each close a different one (two of
                # our own dials: the older stays).
                def dialer(lk: Link) -> bytes:
                    return self.node_id if lk.outbound else lk.peer_id

                if dialer(old) <= dialer(link):
                    link.close()
                    return False
                old.close()
        self.links[peer] = link
        if not link.outbound and link.peer_port and (host, link.peer_port) not in self._known:
            # An inbound peer's claimed port is only a hint: it never overwrites a binding,
            # and a dial that reaches another id drops it. Hints count as announced by their
            # host (peers with fresh keys could otherwise fill the table for good): capped
            # per host and evictable like any unverified address.
            addr = (host, link.peer_port)
            src = INBOUND_SOURCE + host.encode()
            mine = sum(1 for s in self._source.values() if s == src)
            if mine < self.config.max_known_per_source and (
                len(self._known) < self.config.max_known or self._evict_address(src)
            ):
                self._known[addr] = peer
                self._source[addr] = src
        return True

    def _swap_slots_used(self, peer: bytes) -> list[Link]:
        """Live swap links of expected initiators (``direct_slots``), ``peer``'s own aside."""
        return [
            lk
            for p, lk in self.swap_links.items()
            if p != peer and not lk.closed and lk not in self._stranger_swaps
        ]

    def _swap_slot_for(self, peer: bytes) -> bool:
        """Whether ``peer`` (an initiator of an order we co-signed) may take a swap link
        slot (``direct_slots`` live links of expected initiators, ``peer``'s own aside).
        Swap links stay open when their swaps end: a full set gives up the slot of an inbound
        one whose peer is no longer an order's initiator (otherwise past initiators keeping
        their links open would hold every slot)."""
        swap = self._swap_slots_used(peer)
        if len(swap) < self.config.direct_slots:
            return True
        stale = next(
            (lk for lk in swap if not lk.outbound and not self._direct_peer(lk.peer_id)), None
        )
        if stale is None:
            log.info("refusing %s: no swap link slot (%d)", peer.hex()[:12], len(swap))
            return False
        log.info("closing the ended swap link of %s for a new one", stale.peer_id.hex()[:12])
        stale.close()
        return True

    def _mesh_slot_free(self, again: bytes | None = None) -> bool:
        """Whether an inbound mesh link may be taken: ``target_degree`` slots stay for links
        we dial (peers linking in with fresh keys must not take every slot). ``again``: the
        peer linking in, whose own inbound link (it replaces it: ``_enter_mesh``) holds no
        slot."""
        old = self.links.get(again) if again is not None else None
        freed = 1 if old is not None and not old.outbound and not old.closed else 0
        inbound = sum(1 for lk in self.links.values() if not lk.outbound) - freed
        inbound += sum(1 for lk in self._stranger_swaps if not lk.closed)
        kept = self.config.target_degree
        if not self.config.discover:
            # A fixed node dials every bootstrap peer whatever its target degree: a slot
            # each (peers linking in took the slots above the target, and a bootstrap peer
            # up after them was never dialled).
            kept = max(kept, len(self.config.bootstrap))
        return len(self.links) - freed < self.config.max_degree and inbound < (
            self.config.max_degree - kept
        )

    def _settle_role(self, link: Link, frame: Frame) -> bool:
        """Agree on an inbound link's role with its dialer by its first frame (False: the
        frame is not to be handled). The dialer of a mesh link sends ``peers_req`` first
        (``_attach``), a swap link's dialer a ``dm``. We took the link as a swap link (its
        peer is the initiator of an order we co-signed) but the peer asks for our peers: it
        dialled us as a neighbour (a restart, its bootstrap) and takes the link for one; left
        a swap link, it would never get our book or gossip, nor dial us again (it is linked).
        It becomes a mesh link if the mesh has an inbound slot, else it is closed (refused,
        as ``_accept`` refuses a neighbour: the peer dials again later, and its direct
        messages over a swap link of its own). The converse: a link taken for the mesh whose
        first frame is a ``dm`` was dialled for direct messages: it becomes a swap link (our
        book and peers request over it are dropped by the peer, unscored), if a swap slot is
        free, else it is closed."""
        peer = link.peer_id
        host = (link.writer.get_extra_info("peername") or (self.config.host,))[0]
        if link.swap_only and frame.type == "peers_req":
            if self.swap_links.get(peer) is link:
                del self.swap_links[peer]
            link.swap_only = False
            if not self._mesh_slot_free(again=peer):
                log.info("refusing %s as a neighbour: no inbound slot", peer.hex()[:12])
                link.close()
                return False
            if not self._enter_mesh(link, host, None):
                return False
            log.info("link from %s is a neighbour's (it asked for peers)", peer.hex()[:12])
            self._ask_peers(link)
            self._send_book(link)
            return True
        if not link.swap_only and frame.type == "dm" and self.links.get(peer) is link:
            del self.links[peer]
            self._claim_buckets.pop(peer, None)
            self._fwd.pop(peer, None)
            self._asked.pop(link, None)
            self._feelers.discard(link)
            self._dump_wait.pop(link, None)
            self._dump_rest.pop(link, None)
            self._missed.pop(link, None)
            link.swap_only = True
            if not self._direct_peer(peer):
                # A stranger's swap link keeps the inbound mesh slot it was accepted in (it
                # is counted there, never against ``direct_slots``: fresh keys must not take
                # the slots kept for the initiators of orders we co-signed).
                self._stranger_swaps.add(link)
            elif not self._swap_slot_for(peer):
                link.close()
                return False
            old_swap = self.swap_links.get(peer)
            if old_swap is not None and old_swap is not link:
                old_swap.close()
            self.swap_links[peer] = link
            log.info("link from %s is a swap link (its first frame is a dm)", peer.hex()[:12])
        return True

    def _send_book(self, link: Link) -> None:
        """Send a new link our book: built by concatenation, at most the link's write buffer,
        and at most ``book_dump_burst`` dumps node-wide refilled at ``book_dump_rate``/s (a
        peer linking in with fresh keys must not make us encode 50,000 offers each time).
        A link beyond the budget waits for its dump, in arrival order (``_send_waiting_books``):
        skipped, it would learn an offer only when its maker re-announced it (at half its
        ttl), so a node (re)joining while others link in missed the live offers."""
        if link in self._dump_wait:
            return
        if not self.book.all(now_ms()):
            return
        if self._dump_wait or not self._dump_bucket.take():
            self.stats.book_dumps_skipped += 1
            self._dump_wait[link] = None
            log.info("book dump for %s waits: dump budget spent", link.peer_id.hex()[:12])
            return
        self._dump_book(link)

    def _send_waiting_books(self) -> None:
        """Dump the book to the links waiting for it, oldest first, as the budget allows
        (links closed or no longer in the mesh meanwhile are dropped from the queue)."""
        while self._dump_wait:
            link = next(iter(self._dump_wait))
            if link.closed or self.links.get(link.peer_id) is not link:
                del self._dump_wait[link]
                continue
            if not self._dump_bucket.take():
                return
            del self._dump_wait[link]
            self._dump_book(link)

    def _redump_missed(self) -> None:
        """Links that missed gossip at a full write buffer get the frames they missed (at
        most ``MISSED_MAX``, else the book again: the dump budget and queue apply) once the
        buffer is half drained and a dump under way has ended (its offers were taken before
        the missed ones). Before, every miss cost the whole book again: the dump itself
        fills the buffer, so on a busy network a large book went out again and again to a
        newcomer, and a withdrawal missed was never sent (the book holds no withdrawals)."""
        now = now_ms()
        for link in list(self._missed):
            if link.closed or self.links.get(link.peer_id) is not link:
                del self._missed[link]
                continue
            if link in self._dump_rest:
                continue
            room = WRITE_BUFFER_LIMIT - link.writer.transport.get_write_buffer_size()
            if room < WRITE_BUFFER_LIMIT // 2:
                continue
            frames = self._missed.pop(link)
            if frames is None:
                if link not in self._dump_wait:  # a dump queued, not started, carries them
                    self.stats.book_redumps += 1
                    self._send_book(link)
                continue
            parts: list[bytes] = []
            size = 0
            while frames:
                expiry, framed = frames[0]
                if expiry > now:
                    if parts and size + len(framed) > room:
                        break
                    parts.append(framed)
                    size += len(framed)
                frames.pop(0)
            if parts:
                self.stats.gossip_resent += len(parts)
                link.send_raw(b"".join(parts))
            if frames:
                self._missed[link] = frames

    def _dump_book(self, link: Link) -> None:
        offers = self.book.all(now_ms())
        if not offers:
            return
        self.stats.book_dumps += 1
        self._dump_rest[link] = (offers, 0)
        self._dump_more(link)

    def _dump_more(self, link: Link) -> None:
        """Send the next part of ``link``'s book dump, as much as its write buffer has room
        for (a book beyond one buffer goes out over several maintenance ticks, as the peer
        reads: before, the rest was dropped and a newcomer missed those offers). Offers that
        left the book meanwhile are skipped."""
        offers, pos = self._dump_rest.pop(link)
        if link.closed or self.links.get(link.peer_id) is not link:
            return
        room = WRITE_BUFFER_LIMIT - link.writer.transport.get_write_buffer_size()
        if room < WRITE_BUFFER_LIMIT // 2:
            self._dump_rest[link] = (offers, pos)
            return
        now = now_ms()
        parts: list[bytes] = []
        size = 0
        while pos < len(offers):
            so = offers[pos]
            if so.offer.expiry_ms <= now or (so.maker, so.offer.offer_id) not in self.book:
                pos += 1
                continue
            framed = encode_frame(offer_frame_bytes(so.raw))
            if parts and size + len(framed) > room:
                break
            parts.append(framed)
            size += len(framed)
            pos += 1
        if parts:
            link.send_raw(b"".join(parts))
        if pos < len(offers):
            self._dump_rest[link] = (offers, pos)

    async def _run_link(self, link: Link) -> None:
        try:
            await link.run(self._on_frame, self._abuse)
        finally:
            self._feelers.discard(link)
            self._dump_wait.pop(link, None)
            self._dump_rest.pop(link, None)
            self._missed.pop(link, None)
            self._stranger_swaps.discard(link)
            self._asked.pop(link, None)
            self._answered.pop(link, None)
            self._dm_buckets.pop(link, None)
            lost = self._dm_out.pop(link, {})
            if lost:
                # The peer may still be handling them: they count until it must have answered.
                until = time.monotonic() + self.config.dm_handler_s + DM_REPLY_GRACE_S
                gave_up = self._dm_gave_up.setdefault(link.peer_id, {})
                gave_up.update(dict.fromkeys(lost, until))
            for fut in lost.values():
                if not fut.done():
                    fut.set_exception(
                        PeerNotReached(f"link to {link.peer_id.hex()[:16]} closed before a reply")
                    )
            if self.swap_links.get(link.peer_id) is link:
                del self.swap_links[link.peer_id]
            if self.links.get(link.peer_id) is link:
                del self.links[link.peer_id]
                self._claim_buckets.pop(link.peer_id, None)
                self._fwd.pop(link.peer_id, None)

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

    def _forget(self, addr: tuple[str, int]) -> None:
        self._known.pop(addr, None)
        self._source.pop(addr, None)
        self._verified.discard(addr)
        self._backoff.pop(addr, None)
        self._tried.pop(addr, None)

    async def _dial(self, addr: tuple[str, int], *, feeler: bool = False) -> None:
        self._tried[addr] = time.monotonic()
        expect = self._known.get(addr)
        try:
            peer = await self.connect(*addr, expect=expect)
            link = self.links.get(peer)
            if feeler and link is not None and link.outbound and not link.closed:
                # Marked before the link's first frame is read (no await since it was
                # attached): the peer's answer to our peers_req decides whether it stays.
                self._feelers.add(link)
        except Exception as exc:  # any dial failure only means: try again later
            if feeler:
                self._next_feeler = 0.0  # a dead address costs no feeler period: try the next
            bootstrap = addr in self.config.bootstrap
            if isinstance(exc, LinkError) and "expected peer" in str(exc) and not bootstrap:
                # The address answers with another node id than announced for it: forget it,
                # and the peer that announced it pays (a table poisoned with addresses of
                # other nodes would steer our dials).
                source = self._source.get(addr)
                self._forget(addr)
                log.info("dial %s:%d reached another node id; address dropped", *addr)
                if source is not None and source in self.links:
                    self._abuse(self.links[source], "peers: announced a wrong node id", 5)
                return
            if isinstance(exc, LinkError) and "expected peer" in str(exc):
                # A bootstrap address (configured without an id) now answers with another
                # key: the next dial takes whoever answers there (the binding expected the old
                # key forever, so a bootstrap peer that changed its key was never linked again).
                self._known[addr] = None
                self._verified.discard(addr)
            attempts, _ = self._backoff.get(addr, (0, 0.0))
            if attempts + 1 >= self.config.max_dial_failures and not bootstrap:
                source = self._source.get(addr)
                self._forget(addr)
                log.info("dial %s:%d failed %d times; address forgotten", *addr, attempts + 1)
                if source is not None and source in self.links:
                    self._abuse(self.links[source], "peers: announced an address that is dead", 2)
                return
            cap = self.config.backoff_max_s
            if bootstrap and not self.config.discover:
                # A fixed topology's bootstrap peers are its only neighbours: one that
                # restarted (a minute or two under load) is dialled again within seconds of
                # its return, not after up to 450 s (a refused dial costs next to nothing).
                cap = min(cap, FIXED_BACKOFF_MAX_S)
            delay = min(cap, self.config.backoff_base_s * 2**attempts)
            # jitter keeps a healing network from dialling in step; never beyond the cap
            delay = min(cap, delay * (0.5 + self._rng.random()))
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
        self._liveness(mono)
        self.book.sweep(now)
        for link in list(self._dump_rest):
            self._dump_more(link)
        self._redump_missed()
        self._send_waiting_books()
        self._sweep_relay(now)
        # An initiator's state outlives its claim by the time settling may take.
        horizon = MAX_CLAIM_HORIZON_MS + int(self.config.settle_timeout_s * 1000) * 2
        for cid in [c for c, pd in self._pending.items() if pd.sent_ms + horizon <= now]:
            del self._pending[cid]
        for cid in [c for c, until in self._settled.items() if until <= now]:
            del self._settled[cid]
        for peer in [p for p, until in self._banned.items() if until <= mono]:
            del self._banned[peer]
        for peer in list(self._scores):
            # Scores decay so an occasional bad frame from an honest peer is forgiven.
            self._scores[peer] *= 0.9
            if self._scores[peer] < 1:
                del self._scores[peer]
        linked = set(self.links)
        if not self.config.discover:
            self._dial_fixed(mono, linked)
            return
        want = self.config.target_degree - len(self.links) - len(self._dialing)
        # However many peers linked in, keep half the target degree of links we dialled
        # ourselves (from our own table): inbound links alone cannot eclipse us.
        outbound = sum(1 for lk in self.links.values() if lk.outbound)
        want = max(want, (self.config.target_degree + 1) // 2 - outbound - len(self._dialing))
        if want > 0:
            candidates = self._dial_candidates(mono, linked)
            self._rng.shuffle(candidates)
            for addr in candidates[:want]:
                self._dialing.add(addr)
                self._spawn(self._dial(addr))
            if self.links and tick % 4 == 0:
                self._ask_peers(self._rng.choice(list(self.links.values())))
        elif (
            self.config.feeler_s > 0
            and self.config.target_degree > 0
            and mono >= self._next_feeler
            and len(self.links) + len(self._dialing) < self.config.max_degree
        ):
            self._next_feeler = mono + self.config.feeler_s * (0.5 + self._rng.random())
            self._feel(mono, linked)

    def _evict_address(self, newcomer: bytes | None = None) -> bool:
        """Make room in a full address table: drop an address never verified, announced by
        the source with the most such addresses (bootstrap and verified ones stay). Never one
        of ``newcomer``'s own: a source replacing its own addresses is churn, not room."""
        counts: dict[bytes, int] = {}
        for addr, src in self._source.items():
            if src is not None and addr not in self._verified and addr not in self._dialing:
                counts[src] = counts.get(src, 0) + 1
        if not counts:
            return False
        worst = max(counts, key=counts.__getitem__)
        if worst == newcomer:
            return False
        for addr, src in self._source.items():
            if src == worst and addr not in self._verified and addr not in self._dialing:
                self._forget(addr)
                return True
        return False

    def _sweep_relay(self, now: int) -> None:
        for cid in [c for c, st in self._relay.items() if st.expires_ms <= now]:
            st = self._relay.pop(cid)
            self._release_claim_slot(st.upstream)

    def _release_claim_slot(self, upstream: bytes) -> None:
        left = self._claims_by_peer.get(upstream, 1) - 1
        if left > 0:
            self._claims_by_peer[upstream] = left
        else:
            self._claims_by_peer.pop(upstream, None)

    def _dial_fixed(self, mono: float, linked: set[bytes]) -> None:
        """A fixed topology (``discover = False``): dial each bootstrap address whose node
        is not linked (backoff applies), whatever the degree, and nothing else. Before, the
        node kept only a degree: a bootstrap peer not up yet was replaced by any address a
        peer had announced, and at its degree the node never dialled that peer again (the
        crash matrix's maker linked a taker instead of ``relay2``: the node behind ``relay2``
        never got its offers, and the taker routed to it directly, no relay paid)."""
        room = self.config.max_degree - len(self.links) - len(self._dialing)
        dialing = {self._known.get(a) for a in self._dialing}
        for addr in self.config.bootstrap:
            if room <= 0:
                return
            nid = self._known.get(addr)
            if (
                addr in self._dialing
                or (nid is not None and (nid in linked or nid in dialing or nid == self.node_id))
                or (nid is not None and self._banned.get(nid, 0.0) > mono)
                or self._backoff.get(addr, (0, 0.0))[1] > mono
            ):
                continue
            self._dialing.add(addr)
            dialing.add(nid)
            self._spawn(self._dial(addr))
            room -= 1

    def _dial_candidates(self, mono: float, linked: set[bytes]) -> list[tuple[str, int]]:
        """Known addresses to dial: one per node id, and none of a node being dialled (two
        links dialled to one peer at once would each be kept by a different end: a peer
        dialling in again replaces its old link, while the dialer keeps its older one)."""
        busy = {self._known.get(a) for a in self._dialing}
        # An address a handshake verified goes first, the rest in random order: addresses
        # announced under a peer's id (tarpits never finishing a handshake) listed ahead of
        # its verified one kept us from dialling that peer, one after another (``busy``).
        addrs = list(self._known)
        self._rng.shuffle(addrs)
        addrs.sort(key=lambda a: a not in self._verified)
        out: list[tuple[str, int]] = []
        for addr in addrs:
            nid = self._known[addr]
            if (
                addr not in self._dialing
                and nid not in linked
                and nid != self.node_id
                and (nid is None or (nid not in busy and self._banned.get(nid, 0.0) <= mono))
                and self._backoff.get(addr, (0, 0.0))[1] <= mono
            ):
                out.append(addr)
                if nid is not None:
                    busy.add(nid)
        return out

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
        if link.frames_in == 1 and not link.outbound and not self._settle_role(link, frame):
            return
        if link.swap_only and frame.type not in SWAP_LINK_FRAMES:
            # A swap link is no mesh link: an offer, claim or route part sent over it is
            # dropped (unscored: a peer that took it for a neighbour is not hostile).
            self.stats.rejected["swap_link"] = self.stats.rejected.get("swap_link", 0) + 1
            return
        handler = self._handlers.get(frame.type)
        if handler is None:
            self._abuse(link, f"unknown frame type {frame.type!r:.40}", 5)
            return
        try:
            handler(self, link, frame.body)
        except BadSignature as exc:
            self._abuse(link, str(exc), 25)
        except (ClaimBudget, SealedJoinBad, DirectBusy) as exc:
            self._abuse(link, str(exc), 2)
        except (UnknownClaim, UnknownRequest) as exc:
            self._abuse(link, str(exc), 1)
        except (BadMessage, EncodingError) as exc:
            self._abuse(link, str(exc), 10)
        except KofoError as exc:
            self._abuse(link, str(exc), 5)
        except Exception:  # a bug must not take the node down; the peer is not to blame
            log.exception("handler for %s failed", frame.type)

    def _h_ping(self, link: Link, body: dict[str, Any]) -> None:
        # Nothing to do: reading it (any byte read) is the peer's sign of life. Unscored and
        # under the link rate like every frame, so a peer pinging gains nothing: staying
        # linked was always free to it.
        return None

    def _liveness(self, mono: float) -> None:
        """Ping each link (mesh and swap) this node sent nothing on for ``keepalive_s``, and
        drop each one nothing was read from for ``idle_timeout_s``: a peer gone without
        closing (host down, NAT state lost, process frozen) otherwise held its link, and the
        slot, until TCP gave up hours later, and a fixed node never dialled it again."""
        cfg = self.config
        stalled = self._last_liveness and mono - self._last_liveness > cfg.keepalive_s
        self._last_liveness = mono
        for link in [*self.links.values(), *self.swap_links.values()]:
            if link.closed:
                continue
            # After a stall of our own loop (a long GC, a suspended host) the peers' bytes may
            # sit unread in our socket: the check waits a tick for the read loops to run.
            if not stalled and mono - link.last_read > cfg.idle_timeout_s:
                log.info(
                    "dropping link to %s: nothing read for %.0f s",
                    link.peer_id.hex()[:12],
                    mono - link.last_read,
                )
                link.abort()
            elif mono - link.last_sent >= cfg.keepalive_s:
                link.send(Frame("ping", {}))

    def _ask_peers(self, link: Link) -> None:
        self._asked[link] = self._asked.get(link, 0) + 1
        link.send(Frame("peers_req", {}))

    def _h_peers_req(self, link: Link, body: dict[str, Any]) -> None:
        # At most one answer per link every PEERS_ANSWER_S (an honest node asks a link at
        # most once a second); more requests are ignored.
        mono = time.monotonic()
        if mono - self._answered.get(link, -PEERS_ANSWER_S) < PEERS_ANSWER_S:
            return
        self._answered[link] = mono
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
        # Only an answer to our own request (a table scan per entry makes an unasked list
        # costly: at the link's frame rate they would stall the node).
        asked = self._asked.get(link, 0)
        if asked <= 0:
            raise BadMessage("peers: not an answer to a peers_req")
        if asked == 1:
            del self._asked[link]
        else:
            self._asked[link] = asked - 1
        host = (link.writer.get_extra_info("peername") or (self.config.host,))[0]
        src = link.peer_id
        mine = sum(1 for s in self._source.values() if s == src)
        for item in peers:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], bytes)
                and len(item[0]) == 32
                and type(item[1]) is int
                and 0 < item[1] < 65536
                and item[0] != self.node_id
            ):
                raise BadMessage("peers: each entry must be [32-byte node id, port]")
            # Only loopback/LAN peers are learned via the host the list came from: a peer
            # cannot steer our dials to arbitrary hosts.
            addr = (host, item[1])
            if mine >= self.config.max_known_per_source:
                break
            if addr in self._known:
                continue  # a binding is never overwritten by an announcement
            if len(self._known) >= self.config.max_known and not self._evict_address(src):
                break
            self._known[addr] = item[0]
            self._source[addr] = src
            mine += 1
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
        """Sign and gossip an offer (a new ``seq`` supersedes an earlier one with the same id).
        A maker holds at most ``offers_per_maker`` live offers (peers refuse more)."""
        oid = offer_id or os.urandom(16)
        now = now_ms()
        live = [
            k
            for k, so in self._own_offers.items()
            if not so.offer.withdrawn and so.offer.expiry_ms > now
        ]
        if max_in and oid not in live and len(live) >= self.config.offers_per_maker:
            raise KofoError(
                f"a maker holds at most {self.config.offers_per_maker} live offers; "
                "withdraw one or supersede it (same offer_id)",
                code="invalid_input",
            )
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
            # Protocol v2: seq is the signing time in ms, increasing over all our offers.
            seq=max(self._last_seq + 1, now_ms()),
        )
        Offer.from_body(offer.to_body())  # the same checks a receiver applies
        so = make_offer(self._key, offer)
        self._last_seq = offer.seq
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
            if not link.send_raw(framed) and not link.closed:
                # Dropped at a full write buffer (a peer reading slowly, e.g. through a large
                # book dump): it would learn the offer only at its maker's re-announcement.
                # Kept to send again (``_redump_missed``), at most ``MISSED_MAX`` per link.
                missed = self._missed.get(link, [])
                if missed is not None and len(missed) < MISSED_MAX:
                    missed.append((so.offer.expiry_ms, framed))
                    self._missed[link] = missed
                else:
                    self._missed[link] = None

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
            # offer is (a small) one, unless it expired on its way (or its clock window was
            # missed by as little as clocks drift): an honest relay took it while it was live,
            # and a maker's short-lived offers would get that relay banned by its neighbours.
            clock = "expired" in verdict.reason or "ahead" in verdict.reason
            o = so.offer
            missed_by = max(
                now - o.expiry_ms,
                o.seq - now - MAX_SEQ_AHEAD_MS,
                o.expiry_ms - now - MAX_OFFER_LIFETIME_MS,
            )
            if clock and missed_by <= TRANSIT_GRACE_MS:
                self.stats.offers_late += 1
                return
            if clock or ("maker holds" in verdict.reason and so.maker == link.peer_id):
                # A maker past its own cap is at fault; a relay gossiping it is not (it only
                # forwards offers its own book took).
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
        dead_end: _RelayState | None = None
        if cid in self._relay or cid in self._pending:
            held_st = self._relay.get(cid)
            raw_path = body.get("path")
            if (
                held_st is None
                or not isinstance(raw_path, list)
                or len(raw_path) + 1 >= held_st.position
            ):
                self.stats.claims_dup += 1  # a loop or a second path: drop quietly
                return
            # A copy with more hops left than the one we took (first-copy dedupe: under load
            # the long way can arrive first).
            if held_st.position < held_st.sc.claim.max_hops or held_st.filled is not None:
                # We forwarded (or filled) on the first copy: routes already run through its
                # path, so it stays, and the nodes beyond its reach miss this claim from us.
                self.stats.claims_dup += 1
                self.stats.claims_shadowed += 1
                return
            # The first copy made us a dead end (no hops left: nothing forwarded, no fill), so
            # nothing depends on it: take this copy instead, once it passes every check below
            # (at most once per claim: the copy taken then has hops left to forward).
            dead_end = held_st
        peer = link.peer_id
        # Budgets before any signature: a peer's claims hold at most ``claims_per_peer`` live
        # states here and arrive at most at ``claim_rate``; the node holds a bounded total.
        bucket = self._claim_buckets.get(peer)
        if bucket is None:
            bucket = TokenBucket(self.config.claim_rate, self.config.claim_burst)
            self._claim_buckets[peer] = bucket
        held = self._claims_by_peer.get(peer, 0)
        if held >= self.config.claims_per_peer or not bucket.take():
            self.stats.claims_refused += 1
            raise ClaimBudget(f"claim budget exceeded: {held} live claims from this peer")
        if len(self._relay) >= self.config.max_relay_states:
            self._sweep_relay(now_ms())
            if len(self._relay) >= self.config.max_relay_states:
                self.stats.claims_refused += 1
                log.info("claim %s dropped: relay state is full", cid.hex()[:12])
                return
        sc = open_claim(raw)
        claim = sc.claim
        now = now_ms()
        if claim.deadline_ms <= now:
            if now - claim.deadline_ms <= TRANSIT_GRACE_MS:
                # Expired in transit (latency, clocks): an honest relay's, not scored.
                self.stats.claims_late += 1
                log.info("claim %s expired in transit dropped", cid.hex()[:12])
                return
            raise KofoError(
                f"claim expired: deadline_ms {claim.deadline_ms} < {now}", code="claim_expired"
            )
        if claim.deadline_ms > now + MAX_CLAIM_HORIZON_MS:
            if claim.deadline_ms - now - MAX_CLAIM_HORIZON_MS <= TRANSIT_GRACE_MS:
                # Within the horizon of a relay whose clock runs ahead of ours: not its fault.
                self.stats.claims_late += 1
                log.info("claim %s just beyond the horizon dropped", cid.hex()[:12])
                return
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
        if dead_end is not None:
            self._release_claim_slot(dead_end.upstream)
            self.stats.claims_readopted += 1
        self._relay[cid] = st
        self._claims_by_peer[peer] = self._claims_by_peer.get(peer, 0) + 1
        fill = self._best_fill(claim)
        valid_until = now + self.config.quote_valid_ms
        if fill is not None and self.config.on_fill is not None:
            # Before the fulfil exists: the composer reserves the amount until the quote
            # lapses or its order is signed; if it cannot, there is no fill.
            try:
                self.config.on_fill(claim.want, fill[1], valid_until)
            except Exception as exc:  # the composer's, never the peer's fault
                log.warning("no fill for claim %s: on_fill failed: %s", cid.hex()[:12], exc)
                fill = None
        if fill is not None:
            # v6: the offer proof, sealed to the claim's reply key (relays see a box): the
            # taker learns we answered, and stops waiting once every maker it knows has. Only
            # if a public offer of ours fills the claim (the taker may await us, and knows our
            # price from it); otherwise the anonymous proof, of the same length: a fill from
            # unpublished liquidity names nobody, as before v6.
            if self._offer_fills(claim, now):
                eph_pub = eph.public_key().public_bytes_raw()
                proof = make_offer_proof(self._key, cid, eph_pub, fill[2])
            else:
                proof = ANONYMOUS_OFFER_PROOF
            op = seal(claim.reply_key, proof)
            f = Fulfil(cid, st.position, fill[0], fill[1], valid_until, path, op)
            sf = make_fulfil(eph, f)
            st.filled = (sf.fulfil_id, fill[0], fill[1])
            if not link.send(Frame("fulfil", {"f": sf.raw, "fees": []})):
                self.stats.fulfils_lost += 1
                log.info("own fill for claim %s lost: its link is closing", cid.hex()[:12])
        if st.position < claim.max_hops:
            hop = sign_hop(eph, sc, path)
            out = Frame("claim", {"c": raw, "path": [h.to_wire() for h in [*path, hop]]})
            self._fan_out(out, exclude=link.peer_id, expires_ms=st.expires_ms)

    def _fan_out(self, frame: Frame, exclude: bytes | None, expires_ms: int) -> None:
        """Send a claim to up to ``claim_fanout`` peers, each only within the budget it gives
        us (three quarters of ours, the same defaults): an honest relay never exceeds a
        neighbour's claim budget, however hard its own upstream floods it, so a flood costs
        only its origin score."""
        now = now_ms()
        peers = [p for p in self.links if p != exclude and self._fwd_room(p, now)]
        self._rng.shuffle(peers)
        if self._importance is not None:
            imp = self._importance
            peers.sort(key=lambda p: imp(p), reverse=True)
        framed = encode_frame(frame.to_bytes())
        for p in peers[: self.config.claim_fanout]:
            if self.links[p].send_raw(framed):
                live, bucket = self._fwd[p]
                bucket.take()
                live.append(expires_ms)
            else:
                self.stats.claims_unsent += 1

    def _fwd_room(self, peer: bytes, now: int) -> bool:
        entry = self._fwd.get(peer)
        if entry is None:
            c = self.config
            entry = ([], TokenBucket(c.claim_rate * 0.75, c.claim_burst * 0.75))
            self._fwd[peer] = entry
        live, bucket = entry
        if live and live[0] <= now:
            live[:] = [t for t in live if t > now]
        return len(live) < self.config.claims_per_peer * 3 // 4 and bucket.peek() >= 1

    def _offer_fills(self, claim: Claim, now: int) -> bool:
        """Whether a live public offer of ours fills ``claim`` as a taker's book sees it (the
        rule of :meth:`_makers_for`): only then does our fill name us (its offer proof)."""
        return any(
            so.offer.buy == claim.have
            and so.offer.sell == claim.want
            and not so.offer.withdrawn
            and so.offer.expiry_ms > now
            and so.offer.fill(claim.amount) is not None
            for so in self._own_offers.values()
        )

    def _best_fill(self, claim: Claim) -> tuple[int, int, bytes] | None:
        """``(amount_in, amount_out, offer_id)`` this node quotes for ``claim``, the output net
        of the protocol fee the provider owes on the input (see :mod:`kofo.exchange.route`);
        ``offer_id`` names the own offer it comes from (:data:`NO_OFFER_ID`: extra liquidity)."""
        best: tuple[int, int, bytes] | None = None
        now = now_ms()
        cap = None
        if self.config.liquidity is not None:
            try:
                cap = self.config.liquidity(claim.want)
            except Exception as exc:  # the composer's fault: quote nothing
                log.warning("no fill: liquidity(%r) failed: %s", claim.want, exc)
                return None
            if cap <= 0:
                return None
        candidates: list[tuple[tuple[int, int] | None, bytes]] = [
            (_capped_offer_fill(so.offer, claim.amount, cap), so.offer.offer_id)
            for so in self._own_offers.values()
            if so.offer.buy == claim.have
            and so.offer.sell == claim.want
            and so.offer.expiry_ms > now
        ]
        if self._liquidity is not None:
            extra = self._liquidity(claim)
            if extra is not None and cap is not None and extra[1] > cap:
                # Scaled down at the same price (floored: never more out than the cap).
                scaled_in = extra[0] * cap // extra[1]
                extra = (scaled_in, extra[1] * scaled_in // extra[0]) if scaled_in > 0 else None
            candidates.append((extra, NO_OFFER_ID))
        for c, oid in candidates:
            # Fuller fills first, then more output.
            if c is not None and (best is None or (c[0], c[1]) > best[:2]):
                best = (c[0], c[1], oid)
        if best is None:
            return None
        out = net_of_protocol_fee(best[0], best[1], self.config.protocol_fee_bps)
        return (best[0], out, best[2]) if out > 0 else None

    def _h_fulfil(self, link: Link, body: dict[str, Any]) -> None:
        raw = body.get("f")
        if not isinstance(raw, bytes):
            raise BadMessage("fulfil frame: field 'f' must be bytes")
        # Everything that needs no signature first: a fulfil for a claim we do not hold, or
        # over a cap, costs no verify (and the sender a little).
        sf = read_fulfil(raw)
        fees = parse_fees(body.get("fees"))
        f = sf.fulfil
        cid = f.claim_id
        if f.valid_until_ms <= now_ms():
            if now_ms() - f.valid_until_ms <= TRANSIT_GRACE_MS:
                return  # expired in transit: not the sender's fault
            raise KofoError("fulfil expired", code="fulfil_expired")
        pending = self._pending.get(cid)
        if pending is not None:
            self._collect(pending, link, sf, fees)
            return
        if cid in self._settled:
            # Our own claim, settled: a quote after the window, unscored like any late one.
            self.stats.quotes_late += 1
            log.info("quote after the claim was settled dropped")
            return
        st = self._relay.get(cid)
        if st is None:
            raise UnknownClaim(f"fulfil for a claim this node does not hold: {cid.hex()[:12]}")
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
        if sf.fulfil_id in st.downstream:
            return
        upstream = self.links.get(st.upstream)
        if upstream is None:
            self.stats.fulfils_lost += 1
            log.info("fulfil for claim %s lost: its upstream link is gone", cid.hex()[:12])
            return
        from_peer = [d for d in st.downstream.values() if d.peer == link.peer_id]
        if f.position == me + 1 and any(len(d.keys) == me + 1 for d in from_peer):
            # An honest node fills a claim once; more fills from one neighbour are a flood.
            raise BadMessage("fulfil: a neighbour fills a claim at most once")
        cap = self.config.max_fulfils_per_claim
        sent = len(st.downstream) + (st.filled is not None)  # our own fill went up too
        if len(from_peer) >= max(1, cap // 4) or sent >= cap:
            # Fulfils it relays from further away: a fair share per link, a total we never
            # exceed towards our upstream (whose cap per neighbour is the same).
            log.info("fulfil for claim %s dropped: relay share is full", cid.hex()[:12])
            return
        check_fulfil(sf)
        # The hops, filler and fees after us, as the initiator will check them: we never
        # forward a bad one (the initiator would blame us for it), its sender pays here.
        verify_fulfil_after(st.sc, sf, fees, me)
        keys = [h.pub for h in f.path] + [sf.filler_eph]
        st.downstream[sf.fulfil_id] = _Downstream(link.peer_id, f.amount_in, f.amount_out, keys)
        # The entry is this hop's signed acknowledgement that it carried the fulfil (the
        # relay's FeeQuote in the order names it); the ledger pays the relay, not the route.
        fees.append(sign_fee(st.eph, sf.fulfil_id, me, 0))
        if not upstream.send(Frame("fulfil", {"f": raw, "fees": [x.to_wire() for x in fees]})):
            self.stats.fulfils_lost += 1
            log.info("fulfil for claim %s lost: its upstream link is closing", cid.hex()[:12])

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
        early_end: bool = True,
    ) -> tuple[bytes, list[Quote]]:
        """Send a claim and collect quotes for at most ``window_s``: until ``enough`` arrived,
        or (``early_end``, protocol v6) once every maker of our book able to fill the claim has
        answered with a verified offer proof, whichever comes first.

        Returns the claim id and the quotes received within the window, best first (see
        :meth:`rank`). The window is the claim's own ``deadline_ms`` (sent + ``window_s``):
        a quote received after it, or after this returns (``enough``, every maker answered),
        is not collected: the list is exactly what :meth:`settle` accepts for this claim.
        :meth:`quote_window` says how the collection ended.
        """
        if not 0 < window_s * 1000 <= MAX_CLAIM_HORIZON_MS:
            raise KofoError(f"window_s {window_s} is out of range", code="invalid_input")
        if not 0 < max_hops <= MAX_HOPS:
            raise KofoError(f"max_hops {max_hops} is out of range", code="invalid_input")
        eph = Ed25519PrivateKey.generate()
        reply = X25519PrivateKey.generate()
        sent = now_ms()
        # Dummy hops of our own (and as much extra reach) blunt what the first hop learns
        # from the path: an empty path would tell it that its link peer is the taker.
        # The hops left (max_hops - path length) vary too, else "remaining == the default"
        # would give the taker's neighbour away.
        d = self._rng.randint(0, min(self.config.dummy_hops, MAX_HOPS - max_hops))
        extra = self._rng.randint(0, min(self.config.dummy_hops, MAX_HOPS - max_hops - d))
        claim = Claim(
            have=have,
            want=want,
            amount=amount,
            limit_num=limit[0],
            limit_den=limit[1],
            deadline_ms=sent + int(window_s * 1000),
            max_hops=max_hops + d + extra,
            reply_key=reply.public_key().public_bytes_raw(),
        )
        Claim.from_body(claim.to_body())
        sc = make_claim(eph, claim)
        pending = _Pending(sc, eph, reply, sent)
        if early_end:
            pending.expected = self._makers_for(claim, sent)
        for _ in range(d):
            key = Ed25519PrivateKey.generate()
            pending.dummies.append(key)
            pending.dummy_path.append(sign_hop(key, sc, pending.dummy_path))
        self._pending[sc.claim_id] = pending
        path = [h.to_wire() for h in pending.dummy_path]
        expires = claim.deadline_ms + self.config.quote_valid_ms
        self._fan_out(Frame("claim", {"c": sc.raw, "path": path}), exclude=None, expires_ms=expires)
        deadline = time.monotonic() + window_s
        ended = "window"
        while True:
            if enough is not None and len(pending.quotes) >= enough:
                ended = "enough"
                break
            if pending.expected and pending.expected <= pending.answered:
                ended = "all_quoted"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            pending.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.changed.wait(), left)
        # Close the collection: under load the loop may resume well after the window, with
        # fulfils read meanwhile; _collect dropped those past deadline_ms, nothing more joins.
        pending.closed = True
        pending.quotes = [q for q in pending.quotes if q.received_ms <= claim.deadline_ms]
        self.stats.windows_ended[ended] = self.stats.windows_ended.get(ended, 0) + 1
        self._windows[sc.claim_id] = QuoteWindow(
            ended,
            len(pending.expected),
            len(pending.expected & pending.answered),
            len(pending.quotes),
            max(0, now_ms() - sent),
        )
        while len(self._windows) > QUOTE_WINDOWS_KEPT:
            self._windows.popitem(last=False)
        return sc.claim_id, self.rank(pending.sc.claim, pending.quotes)

    def quote_window(self, claim_id: bytes) -> QuoteWindow | None:
        """How the collection of an own recent claim ended (None: unknown or forgotten)."""
        return self._windows.get(claim_id)

    def _makers_for(self, claim: Claim, now: int) -> frozenset[bytes]:
        """The makers whose live offers in our book would fill ``claim`` (they take ``have``,
        pay ``want`` and accept ``amount``, whole or, if partial, in part): the quotes the
        window waits for. Not ourselves: a node never fills its own claim. None at all while
        the book is not :meth:`~kofo.exchange.book.OrderBook.complete` (it refused an offer
        for room: a flood of offers would otherwise keep a better maker out of the set, and
        the window would end on the rival's answer alone), nor when more than
        :data:`MAX_AWAITED_MAKERS` would (a flooded pair: awaiting them all is hopeless, and
        one pass over the book, no sort, stops there)."""
        if not self.book.complete(now):
            return frozenset()
        found = self.book.makers_filling(
            claim.have, claim.want, claim.amount, now, MAX_AWAITED_MAKERS + 1
        )
        if found is None:
            return frozenset()
        found -= {self.node_id}
        return found if len(found) <= MAX_AWAITED_MAKERS else frozenset()

    def rank(self, claim: Claim, quotes: list[Quote]) -> list[Quote]:
        """Best first, a total order (the same quotes rank the same whatever their arrival
        order): a full fill, then the higher net rate (exact, a fraction), then the more
        important maker (its ledger importance; a quote whose maker no verified offer proof
        names counts 0), then fewer hops, then the more important neighbour it came through,
        then the earlier received, then the lower ``fulfil_id``.

        The maker is the one the fulfil's offer proof names (``Quote.maker``): the proof is
        signed by the maker's node key over the claim id and the filler's key, sealed to our
        reply key, so no relay or other filler can claim an important maker's name (a forged,
        moved or replayed proof names nobody, see :meth:`_offer_proof`), and :meth:`settle`
        refuses a route whose provider is not that maker. The neighbour's importance stays a
        later tie-break: between routes to the same maker at the same length it prefers the
        better-standing first hop (the one the taker's order and fee depend on)."""
        imp = self._importance or (lambda _p: 0.0)

        def maker_importance(q: Quote) -> float:
            return 0.0 if q.maker is None else imp(q.maker)

        # At equal price and maker the shorter route wins: a relay that pads a route with hops
        # of its own loses the trade to any equally priced shorter route to the same maker.
        return sorted(
            quotes,
            key=lambda q: (
                q.amount_in != claim.amount,
                -q.rate,
                -maker_importance(q),
                q.fulfil.fulfil.position,
                -imp(q.via),
                q.received_ms,
                q.fulfil_id,
            ),
        )

    def _collect(self, pending: _Pending, link: Link, sf: Any, fees: list[Any]) -> None:
        via = link.peer_id
        first = len(pending.dummies) + 1
        if sf.fulfil.position == first and any(
            q.via == via and q.fulfil.fulfil.position == first for q in pending.quotes
        ):
            raise BadMessage("fulfil: a neighbour fills a claim at most once")
        if pending.per_via.get(via, 0) >= self.config.max_fulfils_per_claim:
            # An honest relay never sends more (it forwards at most this many per claim).
            raise BadMessage(f"fulfil: more than {self.config.max_fulfils_per_claim} for one claim")
        if pending.closed or now_ms() > pending.sc.claim.deadline_ms:
            # After our quote window: an honest relay's latency, not scored, not collected
            # (one over its cap still costs it, as above: it counts towards the cap).
            pending.per_via[via] = pending.per_via.get(via, 0) + 1
            self.stats.quotes_late += 1
            log.info("quote after the window dropped")
            return
        if len(pending.quotes) >= self.config.max_quotes:
            log.info("quote dropped: %d quotes held for this claim", len(pending.quotes))
            return
        if any(q.fulfil_id == sf.fulfil_id for q in pending.quotes):
            return
        check_fulfil(sf)
        verify_fulfil(pending.sc, sf, fees, pending.dummy_path)
        pending.per_via[via] = pending.per_via.get(via, 0) + 1
        maker = self._offer_proof(pending, sf)
        q = Quote(pending.sc.claim_id, sf, fees, via, now_ms(), maker)
        claim = pending.sc.claim
        if maker is not None and maker in pending.expected:
            # This maker has answered (a node fills a claim once): nothing better from it can
            # come, even when this quote misses the limit below.
            pending.answered.add(maker)
            pending.changed.set()
        if q.amount_in > claim.amount or not claim.accepts(q.amount_in, q.delivered):
            log.info("quote below the limit price dropped")
            return
        pending.quotes.append(q)
        pending.changed.set()

    def _offer_proof(self, pending: _Pending, sf: SignedFulfil) -> bytes | None:
        """The maker a verified fulfil's sealed offer proof names, or None (no proof, or a bad
        one: the filler's own fault, since the fulfil's signature covers the box; counted, not
        scored against the link, the quote kept). The proof's signature covers the claim id
        and the filler's key, so no relay can forge one, move one to another fulfil or replay
        one from another claim."""
        op = sf.fulfil.op
        if not op:
            return None
        try:
            plain = open_sealed(pending.reply, op)
            if plain == ANONYMOUS_OFFER_PROOF:
                return None  # a fill from unpublished liquidity: it names no maker
            proof = check_offer_proof(plain, pending.sc.claim_id, sf.filler_eph)
        except (BadMessage, BadSignature) as exc:
            self.stats.offer_proofs_bad += 1
            log.info("offer proof in a fulfil ignored: %s", exc)
            return None
        return proof.maker

    # ------------------------------------------------------------------ settlement order

    async def settle(self, claim_id: bytes, quote: Quote, payment_hash: bytes) -> CommitOrder:
        """Ask the chosen route's parties to reveal themselves and co-sign its settlement
        order; return it with every party's signature (ready for the clearance ledger).
        One quote per claim: a claim is settled (or tried) once."""
        pending = self._pending.get(claim_id)
        if pending is None:
            raise RouteFailed(f"claim {claim_id.hex()[:16]} is not ours or has been closed")
        if pending.chosen is not None:
            raise RouteFailed(f"claim {claim_id.hex()[:16]} already has an accepted quote")
        if all(q.fulfil_id != quote.fulfil_id for q in pending.quotes):
            raise RouteFailed("the quote is not one this claim received")
        link = self.links.get(quote.via)
        if link is None:
            raise RouteFailed("the neighbour the quote came through is gone")
        f = quote.fulfil.fulfil
        p = f.position
        d = len(pending.dummies)
        pending.chosen = quote
        accept = sign(pending.eph, MSG_ACCEPT, Accept(claim_id, quote.fulfil_id).to_body())
        link.send(Frame("accept", {"a": accept.to_bytes()}))
        deadline = time.monotonic() + self.config.settle_timeout_s
        await self._wait(pending, lambda: len(pending.joins) >= p - d, deadline, "joins")
        # Our own dummy hops are bound to our node id like any hop, so every party can check
        # the whole path; they take no fee and hold no leg.
        own_addresses = dict(self.config.addresses)
        for i, key in enumerate(pending.dummies, start=1):
            data = join_message(
                claim_id, quote.fulfil_id, i, pending.dummy_path[i - 1].pub, self.node_id, {}, ""
            )
            pending.joins[i] = Join(i, self.node_id, {}, key.sign(data), self._key.sign(data))
        joins = [pending.joins[i] for i in range(1, p + 1)]
        self.book.mark_answered(joins[-1].node_id)
        route = [self.node_id] + [j.node_id for j in joins[d:]]
        if len(set(route)) != len(route):
            raise RouteFailed("a node appears twice on the route")
        if quote.maker is not None and joins[-1].node_id != quote.maker:
            # The offer proof named another maker than the provider that joined: rank gave
            # this quote that maker's importance. Only the named maker can have signed the
            # proof (for this filler key), so it lent its name: refused, nobody scored (the
            # neighbour may be an honest relay).
            raise RouteFailed("the route's provider is not the maker its offer proof names")
        if joins[d].node_id != quote.via:
            self._abuse(link, "route: the first hop is not the neighbour the quote came by", 25)
            raise RouteFailed("the first hop of the route is not the neighbour it came through")
        try:
            now_s = int(time.time())
            plan = self.config.plan_times
            times = (
                None
                if plan is None
                else plan(
                    split_asset(pending.sc.claim.have)[0],
                    split_asset(pending.sc.claim.want)[0],
                    now_s,
                )
            )
            order = build_settlement_order(
                claim=pending.sc.claim,
                claim_id=claim_id,
                fulfil_id=quote.fulfil_id,
                amount_in=quote.amount_in,
                delivered=quote.delivered,
                initiator=RouteParty(self.node_id, own_addresses),
                relays=[(i, joins[i - 1].node_id) for i in range(d + 1, p)],
                provider=RouteParty(joins[-1].node_id, joins[-1].addresses),
                provider_position=p,
                payment_hash=payment_hash,
                now_s=now_s,
                protocol_fee_bps=self.config.protocol_fee_bps,
                expiry_fit=self.config.expiry_fit,
                times=times,
                lock_window_s=self.config.lock_window_s,
            )
        except Exception as exc:  # the composer's plan or fit (or a chain it cannot fit)
            raise RouteFailed(f"the order could not be built: {exc}") from None
        if joins[-1].contact:
            self._learn_contact(joins[-1].node_id, joins[-1].contact)
        my_sig = order.sign(self._key)
        pending.order_data = order.signing_bytes()
        pending.order = order
        pending.owners = [j.node_id for j in joins]
        link.send(
            Frame(
                "order",
                {
                    "claim_id": claim_id,
                    "fulfil_id": quote.fulfil_id,
                    "o": order.as_map(),
                    "sig": my_sig.signature,
                    "joins": [j.to_body() for j in joins],
                },
            )
        )
        await self._wait(pending, lambda: len(pending.osigs) >= p - d, deadline, "signatures")
        sigs = [my_sig] + [
            OrderSignature(pending.owners[pos - 1], pending.osigs[pos])
            for pos in range(d + 1, p + 1)
        ]
        by_signer = {s.signer: s for s in sigs}
        commit = CommitOrder(order, tuple(by_signer[nid] for nid in order.parties()))
        prove = self.config.prove_legs
        if prove is not None:
            try:
                own = prove(order)
            except Exception as exc:  # the wallet lacks a key it handed out: a composer bug
                raise RouteFailed(f"this node cannot prove its leg keys: {exc}") from None
            commit = commit.with_leg_proofs({**pending.lproofs, **own})
            try:
                commit.verify_signatures()
            except BadSignature as exc:  # a party sent no proof of a key (or ours is bad)
                raise RouteFailed(f"the order's leg keys are not all proven: {exc}") from None
        else:
            commit.verify_party_signatures()
        del self._pending[claim_id]
        horizon = MAX_CLAIM_HORIZON_MS + int(self.config.settle_timeout_s * 1000) * 2
        self._settled[claim_id] = pending.sent_ms + horizon
        return commit

    def _learn_contact(self, node_id: bytes, contact: str) -> None:
        self.contacts.pop(node_id, None)
        self.contacts[node_id] = contact
        while len(self.contacts) > MAX_CONTACTS:
            del self.contacts[next(iter(self.contacts))]

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
        # One accept per claim: a taker that accepted every quote would learn every maker's
        # and relay's identity (each node reveals itself for one route of a claim at most).
        # Refused before the signature is checked: a repeat costs no verify.
        if st.accepted is not None:
            raise BadMessage("accept: this claim already has an accepted quote")
        acc = open_accept(raw, st.sc.initiator_eph)
        st.accepted = acc.fulfil_id
        down = st.downstream.get(acc.fulfil_id)
        pos = st.position
        eph_pub = st.eph.public_key().public_bytes_raw()
        addrs = dict(self.config.addresses)
        st.join_addresses = addrs
        # Only the provider gives its contact: the taker messages it directly (relays hold no
        # leg and stay unreachable beyond their links).
        contact = self.config.contact if down is None else ""
        data = join_message(acc.claim_id, acc.fulfil_id, pos, eph_pub, self.node_id, addrs, contact)
        join = Join(pos, self.node_id, addrs, st.eph.sign(data), self._key.sign(data), contact)
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
            st = self._up_state(cid, link, "join")
            if st is None:
                return
            assert st.accepted is not None  # _up_state found the accepted fulfil's link
            down = st.downstream[st.accepted]
            if st.joins_up >= len(down.keys) - st.position:
                raise BadMessage("join: more joins than parties after this hop")
            st.joins_up += 1
            self._send_up(st, Frame("join", body))
            return
        quote = pending.chosen
        if quote is None or link.peer_id != quote.via:
            raise BadMessage("join: not from the neighbour of the chosen route")
        try:
            join = self._open_join(pending, quote, cid, box)
        except (BadMessage, BadSignature, EncodingError) as exc:
            # Sealed to us: the neighbour relaying it could not check it, so it pays little
            # (a route party that sends a bad join only fails its own route).
            raise SealedJoinBad(f"join: {exc}") from None
        pending.joins[join.position] = join
        pending.changed.set()

    def _open_join(self, pending: _Pending, quote: Quote, cid: bytes, box: bytes) -> Join:
        join = Join.from_body(decode(open_sealed(pending.reply, box)))
        f = quote.fulfil.fulfil
        d = len(pending.dummies)
        if not d < join.position <= f.position:
            raise BadMessage(f"position {join.position} is not on the route")
        if join.position in pending.joins:
            raise BadMessage(f"position {join.position} already joined")
        eph = (
            quote.fulfil.filler_eph
            if join.position == f.position
            else f.path[join.position - 1].pub
        )
        data = join_message(
            cid, quote.fulfil_id, join.position, eph, join.node_id, join.addresses, join.contact
        )
        if not verify_ed25519(eph, join.eph_sig, data):
            raise BadSignature(f"path key at position {join.position} did not sign")
        if not verify_ed25519(join.node_id, join.node_sig, data):
            raise BadSignature(f"node key at position {join.position} did not sign")
        return join

    def _up_state(self, cid: bytes, link: Link, what: str) -> _RelayState | None:
        """The state of a claim for a frame travelling towards the initiator: it must come
        from the link of the accepted fulfil (nobody else is on the route)."""
        st = self._relay.get(cid)
        if st is None:
            log.info("%s for unknown claim %s dropped", what, cid.hex()[:12])
            return None
        down = st.downstream.get(st.accepted) if st.accepted is not None else None
        if down is None or link.peer_id != down.peer:
            raise BadMessage(f"{what}: not from the next hop of the accepted route")
        return st

    def _send_up(self, st: _RelayState, frame: Frame) -> None:
        up = self.links.get(st.upstream)
        if up is not None:
            up.send(frame)

    def _h_order(self, link: Link, body: dict[str, Any]) -> None:
        cid, fid, isig = body.get("claim_id"), body.get("fulfil_id"), body.get("sig")
        if not isinstance(cid, bytes) or not isinstance(fid, bytes) or not isinstance(isig, bytes):
            raise BadMessage("order frame: needs claim_id, fulfil_id and sig")
        raw_joins = body.get("joins")
        if not isinstance(raw_joins, list) or not 0 < len(raw_joins) <= MAX_HOPS:
            raise BadMessage(f"order frame: joins must be a list of 1..{MAX_HOPS}")
        st = self._route_state(cid, fid)
        if link.peer_id != st.upstream:
            raise BadMessage("order did not come from the claim's upstream")
        if st.accepted != fid:
            raise BadMessage("order: not for the fulfil this claim accepted")
        if st.order_data is not None or st.order_refused:
            # An honest upstream forwards one order per claim (the one it signed).
            raise BadMessage("order: this claim already had its order")
        order = SettlementOrder.from_map(body.get("o"))
        data = order.signing_bytes()
        if not verify_ed25519(order.initiator, isig, data):
            raise BadSignature("order: initiator signature does not verify")
        joins = [Join.from_body(j) for j in raw_joins]
        down = st.downstream.get(fid)
        me = st.position
        own = st.eph.public_key().public_bytes_raw()
        if down is None:
            assert st.filled is not None
            amount_in, amount_out = st.filled[1], st.filled[2]
            keys = [h.pub for h in st.path] + [own]
        else:
            amount_in, amount_out, keys = down.amount_in, down.amount_out_here, down.keys
        view = RouteView(
            claim=st.sc.claim,
            claim_id=cid,
            fulfil_id=fid,
            amount_in=amount_in,
            amount_out=amount_out,
            keys=keys,
            position=me,
            me=self.node_id,
            upstream=st.upstream,
            downstream=None if down is None else down.peer,
        )
        try:
            check_order(
                order,
                joins,
                view,
                provider_addresses=dict(st.join_addresses) if down is None else None,
                now_s=int(time.time()),
                max_protocol_fee_bps=(
                    self.config.protocol_fee_bps
                    if down is None
                    else self.config.max_protocol_fee_bps
                ),
                chain_clock=self._chain_clock,
                # Only the provider holds a leg of the route: it judges the heights, and
                # without a view of its own it signs none (it would sign any).
                expiry_check=(self.config.expiry_check or _no_height_view)
                if down is None
                else None,
                lock_window_s=self.config.lock_window_s,
            )
        except OrderPolicy as exc:
            # Our own limit or clock: an honest relay before us may allow what we refuse (a
            # taker could get it banned by us with such orders), so only the initiator pays.
            st.order_refused = True  # a repeat costs no signature checks, and is scored
            if st.upstream == order.initiator:
                raise
            log.info("order for claim %s refused: %s", cid.hex()[:12], exc)
            return
        except KofoError:
            st.order_refused = True
            raise
        guard = self.config.order_guard
        if guard is not None:
            # The composer's last word (journal what we co-sign, reserve liquidity), once per
            # order this node signs. Its refusal is this node's own policy: never scored.
            try:
                guard(order, "provider" if down is None else "relay")
            except Exception as exc:  # a composer bug refuses too: never sign unguarded
                st.order_refused = True
                log.info("order for claim %s refused by this node: %s", cid.hex()[:12], exc)
                return
        st.order_data = data
        st.owners = [j.node_id for j in joins]
        if down is None:
            self._expect_direct(order.initiator, max(leg.expiry_time for leg in order.legs))
        lp: list[list[Any]] = []
        if down is None and self.config.prove_legs is not None:
            try:
                proofs = self.config.prove_legs(order)
            except Exception as exc:  # our wallet cannot sign for the addresses we joined with
                st.order_refused = True
                log.warning(
                    "order for claim %s: no proofs of our leg keys: %s", cid.hex()[:12], exc
                )
                return
            lp = [[i, int(role), proof] for (i, role), proof in sorted(proofs.items())]
        sig = self._key.sign(data)
        link.send(Frame("osig", {"claim_id": cid, "position": me, "sig": sig, "lp": lp}))
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
            st = self._up_state(cid, link, "osig")
            if st is None:
                return
            # Only the signatures of the parties after this hop, each checked against the
            # order this node signed, each relayed once.
            if st.order_data is None or not st.position < pos <= len(st.owners):
                raise BadMessage(f"osig: position {pos} is not after this hop on the route")
            if pos in st.osigs_up:
                raise BadMessage(f"osig: position {pos} was already relayed")
            if not verify_ed25519(st.owners[pos - 1], sig, st.order_data):
                raise BadSignature(f"osig: position {pos} did not sign the order")
            st.osigs_up.add(pos)
            self._send_up(st, Frame("osig", body))
            return
        quote = pending.chosen
        if quote is None or link.peer_id != quote.via:
            raise BadMessage("osig: not from the neighbour of the chosen route")
        if pending.order_data is None or not len(pending.dummies) < pos <= len(pending.owners):
            raise BadMessage(f"osig: position {pos} is not a party of the order")
        if pos in pending.osigs:
            raise BadMessage(f"osig: position {pos} already signed")
        if not verify_ed25519(pending.owners[pos - 1], sig, pending.order_data):
            raise BadSignature(f"osig: position {pos} did not sign the order")
        if pending.order is not None:
            # Bad proofs fail only this route (settle() finds them missing): the relays that
            # carried the frame cannot tell, so nobody on the link is scored for them.
            try:
                pending.lproofs.update(
                    _leg_proofs_of(body.get("lp", []), pending.order, pending.owners[pos - 1], pos)
                )
            except (BadMessage, BadSignature) as exc:
                log.info(
                    "claim %s: position %d's leg-key proofs refused: %s", cid.hex()[:12], pos, exc
                )
        pending.osigs[pos] = sig
        pending.changed.set()

    def _expect_direct(self, node_id: bytes, until_unix: int) -> None:
        """The initiator of an order we co-signed as provider will message us directly (its
        swap engine's proposal, notices) until the order's last expiry."""
        left = min(max(until_unix - time.time(), 0.0), MAX_DIRECT_PEER_S)
        self._direct_peers.pop(node_id, None)
        self._direct_peers[node_id] = time.monotonic() + left
        while len(self._direct_peers) > MAX_CONTACTS:
            del self._direct_peers[next(iter(self._direct_peers))]

    def _direct_peer(self, peer: bytes) -> bool:
        """Whether ``peer`` is the initiator of an order we co-signed as provider (still
        running): it links in for its swap messages, over a swap link."""
        until = self._direct_peers.get(peer)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._direct_peers[peer]
            return False
        return True

    def _chain_clock(self, chain: str, expiry_time: int, now_s: int) -> bool | None:
        """Whether ``chain``'s HTLCs expire by block height (None: unknown here)."""
        unit = self.config.chain_clocks.get(chain)
        if unit is not None:
            return unit == "height"
        fit = self.config.expiry_fit
        if fit is None:
            return None
        try:
            return isinstance(fit(chain, expiry_time, now_s), BlockHeight)
        except Exception:  # the composer serves no such chain: unknown here
            return None

    # ------------------------------------------------------------------ direct messages

    async def direct(
        self,
        node_id: bytes,
        payload: bytes,
        *,
        contact: str | None = None,
        timeout: float = 10.0,
    ) -> bytes | None:
        """Send ``payload`` to the node ``node_id`` over a link to it and return its reply
        (None: it had none). An existing link is used; else ``contact`` (or the contact its
        join gave when this node settled a route with it) is dialled, expecting that node id.
        Raises :class:`PeerNotReached` when no link can be made or it closes before the
        reply, :class:`DirectTimeout` after ``timeout`` seconds."""
        if not isinstance(payload, bytes) or len(payload) > MAX_DM_BYTES:
            raise InvalidInput(f"direct message: payload must be bytes of at most {MAX_DM_BYTES}")
        if node_id == self.node_id:
            raise InvalidInput("direct message: to this node itself")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        link = self.links.get(node_id)
        if link is None or link.closed:
            link = self.swap_links.get(node_id)
        if link is None or link.closed:
            # The dial counts against ``timeout`` too: a contact that accepts and then stalls
            # the handshake must not hold the caller past its deadline.
            try:
                link = await asyncio.wait_for(self._dial_direct(node_id, contact), timeout)
            except TimeoutError:
                raise DirectTimeout(
                    f"node {node_id.hex()[:16]} not reached within {timeout}s"
                ) from None
        bucket = self._dm_send_buckets.get(node_id)
        if bucket is None:
            share = DM_SEND_SHARE
            bucket = TokenBucket(
                self.config.dm_rate * share, max(1.0, self.config.dm_burst * share)
            )
            self._dm_send_buckets[node_id] = bucket
            while len(self._dm_send_buckets) > MAX_CONTACTS:
                del self._dm_send_buckets[next(iter(self._dm_send_buckets))]
        while not bucket.take():
            wait = (1.0 - bucket.peek()) / (self.config.dm_rate * DM_SEND_SHARE)
            if loop.time() + wait > deadline:
                raise DirectTimeout(
                    f"direct message: over the rate to {node_id.hex()[:16]} until the timeout"
                )
            await asyncio.sleep(wait)
        out = self._dm_out.setdefault(link, {})
        now = time.monotonic()
        for peer in list(self._dm_gave_up):
            left = {r: u for r, u in self._dm_gave_up[peer].items() if u > now}
            if left:
                self._dm_gave_up[peer] = left
            else:
                del self._dm_gave_up[peer]
        gave_up = self._dm_gave_up.setdefault(node_id, {})
        if len(out) + len(gave_up) >= self.config.dm_outstanding:
            raise DirectBusy(
                f"direct message: {len(out) + len(gave_up)} already outstanding to "
                f"{node_id.hex()[:16]}"
            )
        self._dm_seq += 1
        rid = self._dm_seq
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        out[rid] = fut
        try:
            if not link.send(Frame("dm", {"id": rid, "payload": payload})):
                raise PeerNotReached(f"link to {node_id.hex()[:16]} did not take the message")
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            # The peer may still be handling it (up to its handler budget): keep counting it.
            gave_up[rid] = time.monotonic() + self.config.dm_handler_s + DM_REPLY_GRACE_S
            raise DirectTimeout(f"no reply from {node_id.hex()[:16]} within {timeout}s") from None
        finally:
            out.pop(rid, None)

    async def _dial_direct(self, node_id: bytes, contact: str | None) -> Link:
        where = self.contacts.get(node_id, "") if contact is None else contact
        try:
            addr = parse_contact(where)
        except BadMessage as exc:
            raise PeerNotReached(f"node {node_id.hex()[:16]}: {exc}") from None
        if addr is None:
            raise PeerNotReached(f"no link to node {node_id.hex()[:16]} and no contact for it")
        try:
            await self.connect(*addr, expect=node_id, swap_only=True)
        except Exception as exc:
            raise PeerNotReached(
                f"node {node_id.hex()[:16]} not reached at {where}: {type(exc).__name__}: {exc}"
            ) from None
        link = self.swap_links.get(node_id) or self.links.get(node_id)
        if link is None or link.closed:
            raise PeerNotReached(f"node {node_id.hex()[:16]} at {where} did not keep the link")
        return link

    def _h_dm(self, link: Link, body: dict[str, Any]) -> None:
        rid, payload = body.get("id"), body.get("payload")
        if type(rid) is not int or not 0 <= rid < 1 << 63 or not isinstance(payload, bytes):
            raise BadMessage("dm frame: needs id (integer) and payload (bytes)")
        if len(payload) > MAX_DM_BYTES:
            raise BadMessage(f"dm: payload of {len(payload)} bytes, more than {MAX_DM_BYTES}")
        bucket = self._dm_buckets.get(link)
        if bucket is None:
            bucket = TokenBucket(self.config.dm_rate, self.config.dm_burst)
            self._dm_buckets[link] = bucket
        busy = self._dm_in.get(link.peer_id, 0)
        if busy >= self.config.dm_outstanding or not bucket.take():
            link.send(Frame("dm_reply", {"id": rid, "payload": None}))
            raise DirectBusy(f"dm: over the direct-message budget ({busy} being handled)")
        handler = self.config.on_direct
        if handler is None:
            link.send(Frame("dm_reply", {"id": rid, "payload": None}))
            return
        if self._dm_in_total >= self.config.dm_inflight_max:
            # Every peer within its own budget, together too many: not this peer's fault.
            log.info(
                "dm from %s refused: %d being handled in all",
                link.peer_id.hex()[:12],
                self._dm_in_total,
            )
            link.send(Frame("dm_reply", {"id": rid, "payload": None}))
            return
        self._dm_in[link.peer_id] = busy + 1
        self._dm_in_total += 1
        self._spawn(self._serve_dm(link, rid, payload, handler))

    async def _serve_dm(
        self,
        link: Link,
        rid: int,
        payload: bytes,
        handler: Callable[[bytes, bytes], Awaitable[bytes | None]],
    ) -> None:
        reply: bytes | None = None
        try:
            reply = await asyncio.wait_for(handler(link.peer_id, payload), self.config.dm_handler_s)
            if reply is not None and (not isinstance(reply, bytes) or len(reply) > MAX_DM_BYTES):
                log.warning(
                    "direct message from %s: the handler's reply is not bytes of at most %d",
                    link.peer_id.hex()[:12],
                    MAX_DM_BYTES,
                )
                reply = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the handler's fault, never the link's
            log.warning(
                "direct message from %s: handler failed: %s: %s",
                link.peer_id.hex()[:12],
                type(exc).__name__,
                exc,
            )
            reply = None
        finally:
            left = self._dm_in.get(link.peer_id, 1) - 1
            if left > 0:
                self._dm_in[link.peer_id] = left
            else:
                self._dm_in.pop(link.peer_id, None)
            self._dm_in_total -= 1
        # On the peer's current link if it relinked meanwhile: it still counts the request.
        current = self.links.get(link.peer_id)
        (link if current is None or current.closed else current).send(
            Frame("dm_reply", {"id": rid, "payload": reply})
        )

    def _h_dm_reply(self, link: Link, body: dict[str, Any]) -> None:
        rid, payload = body.get("id"), body.get("payload")
        if type(rid) is not int or not (payload is None or isinstance(payload, bytes)):
            raise BadMessage("dm_reply frame: needs id (integer) and payload (bytes or null)")
        if payload is not None and len(payload) > MAX_DM_BYTES:
            raise BadMessage(f"dm_reply: payload of {len(payload)} bytes, more than {MAX_DM_BYTES}")
        fut = self._dm_out.get(link, {}).get(rid)
        if fut is None and self._dm_gave_up.get(link.peer_id, {}).pop(rid, None) is not None:
            return  # the late reply of a request we gave up on: the peer was honest
        if fut is None:
            # Late (we gave up waiting) or never asked: costs little, as a late one is honest.
            raise UnknownRequest(f"dm_reply: no direct message {rid} outstanding on this link")
        if not fut.done():
            fut.set_result(payload)

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
        "dm": _h_dm,
        "dm_reply": _h_dm_reply,
    }


def _capped_offer_fill(offer: Offer, amount_in: int, cap: int | None) -> tuple[int, int] | None:
    """The offer's fill for a claim of ``amount_in``, scaled down (a partial fill, within the
    offer's limits) so that it pays out at most ``cap`` (None: no cap)."""
    fill = offer.fill(amount_in)
    if fill is None or cap is None or fill[1] <= cap:
        return fill
    # The largest input whose output is at most the cap: in * num // den - fee <= cap.
    most_in = ((cap + offer.fee + 1) * offer.price_den - 1) // offer.price_num
    if most_in < offer.min_in or (most_in < amount_in and not offer.partial):
        return None
    return offer.fill(most_in)


def _no_height_view(chain: str, expiry: Expiry, expiry_time: int, now_s: int) -> None:
    """The provider's check when the composer gave none: a block height it cannot judge is
    refused (a taker could write one that expires at once, before the provider can redeem)."""
    raise OrderPolicy(
        f"order: {chain} expiry {expiry} is a block height and this node has no expiry_check "
        "to judge it"
    )


def _guarded_importance(importance: Importance) -> Importance:
    """The composer's importance lookup, read at each use (so it follows the ledger); a lookup
    that fails counts as no importance rather than failing the frame (which would score the
    peer that sent it)."""

    def imp(node_id: bytes) -> float:
        try:
            return float(importance(node_id))
        except Exception as exc:
            log.debug("importance of %s unavailable: %s", node_id.hex()[:12], exc)
            return 0.0

    return imp


def _leg_proofs_of(
    raw: Any, order: SettlementOrder, node: bytes, pos: int
) -> dict[tuple[int, LegRole], bytes]:
    """A route party's ``lp`` (its leg-key proofs, link protocol v5): exactly its own roles
    in ``order``, each verified, else :class:`BadMessage` / :class:`BadSignature` (a party that
    cannot prove its keys fails its own route)."""
    if not isinstance(raw, list) or len(raw) > 2 * MAX_LEGS:
        raise BadMessage(f"osig: lp of position {pos} must be a list of at most {2 * MAX_LEGS}")
    want = {(i, role): address for i, role, address in leg_roles_of(order, node)}
    got: dict[tuple[int, LegRole], bytes] = {}
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or type(item[0]) is not int
            or item[1] not in (0, 1)
            or not isinstance(item[2], bytes)
        ):
            raise BadMessage(f"osig: lp of position {pos}: items are [leg, role, proof]")
        key = (item[0], LegRole(item[1]))
        if key not in want or key in got:
            raise BadMessage(f"osig: lp of position {pos} names a role that is not its own")
        if not verify_leg_key(want[key], item[2], order.order_id, key[0], key[1]):
            raise BadSignature(
                f"osig: position {pos}: legs[{key[0]}] {key[1].name.lower()} proof does not verify"
            )
        got[key] = item[2]
    return got
