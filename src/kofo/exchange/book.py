"""Each node's view of who offers what, per asset pair, bounded per maker.

Since exchange protocol v2 an offer's ``seq`` is its maker's signing time in milliseconds,
strictly increasing over *all* the maker's offers (not per offer id), and an offer lives at most
:data:`MAX_OFFER_LIFETIME_MS` past its ``seq``. That lets the book remember withdrawals in
bounded memory without letting old offers come back:

* per maker, at most ``per_maker`` live offers and ``per_maker`` *tombstones* (the last seq of a
  withdrawn, superseded-away or expired offer id); when a maker's tombstones overflow, the
  oldest is folded into the maker's *floor*: every offer of that maker with ``seq <= floor`` is
  refused, whatever its id. A copy of an offer older than a tombstone or the floor can never
  return, however much junk arrives, because junk from other keys never touches this maker's
  entry and the maker's own junk only raises its floor;
* a tombstone or floor older than a day is dropped: any copy it guards against has expired;
* the book holds at most ``max_offers`` live offers and ``max_makers`` maker entries. When
  full, an offer from a maker with a better *standing* (it answered a trade we saw, then its
  ledger importance) evicts the oldest offer of the worst-standing maker holding the most
  offers; otherwise it is refused. Idle maker entries (no live offer) are dropped oldest first,
  their floor kept only while the table has room (see docs/exchange.md for what that leaves).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

from kofo.wire.exchange import SignedOffer

MAX_OFFER_LIFETIME_MS = 24 * 3600 * 1000
"""Offers are re-announced by live makers; one day bounds how long a departed maker's prices
linger, and with it the memory an offer flood can pin. An offer may expire at most this long
after its ``seq`` (its signing time)."""

MAX_SEQ_AHEAD_MS = 60_000
"""An offer's ``seq`` (its maker's signing time) may lie at most a minute ahead of our clock."""

Standing = Callable[[bytes], float]
"""Maker node id -> how much we trust it to answer (e.g. its ledger importance)."""


@dataclass(frozen=True, slots=True)
class BookVerdict:
    accepted: bool
    reason: str


@dataclass(slots=True)
class _Maker:
    live: dict[bytes, SignedOffer] = field(default_factory=dict)
    tombs: dict[bytes, int] = field(default_factory=dict)  # offer id -> last seq, not live
    floor: int = -1  # every offer with seq <= floor is refused
    answered: bool = False

    def seq_of(self, offer_id: bytes) -> int | None:
        so = self.live.get(offer_id)
        return so.offer.seq if so is not None else self.tombs.get(offer_id)


class OrderBook:
    """Latest offer per ``(maker, offer_id)``; superseded, withdrawn and expired ones vanish
    and are remembered (bounded per maker) so an old copy cannot bring them back."""

    def __init__(
        self,
        max_offers: int = 50_000,
        *,
        per_maker: int = 64,
        max_makers: int | None = None,
        max_floors: int | None = None,
        standing: Standing | None = None,
    ) -> None:
        self._max = max_offers
        self._per_maker = per_maker
        self._max_makers = max_makers if max_makers is not None else max_offers
        self._max_floors = max_floors if max_floors is not None else 4 * self._max_makers
        # Floors of maker entries dropped for room (one int each): still refuse old copies.
        self._floors: OrderedDict[bytes, int] = OrderedDict()
        self._standing = standing
        self._makers: dict[bytes, _Maker] = {}
        self._idle: OrderedDict[bytes, None] = OrderedDict()  # makers with no live offer
        self._live = 0
        # When an offer was last refused or evicted for room (``max_offers``, ``max_makers``):
        # the book may miss a live offer until then plus an offer's lifetime (:meth:`complete`).
        self._refused_room_ms: int | None = None

    # ------------------------------------------------------------------ standing

    def mark_answered(self, maker: bytes) -> None:
        """``maker`` served a route this node saw settle or co-signed: its offers outrank
        those of makers never seen answering when the book is full."""
        m = self._makers.get(maker)
        if m is None:
            m = self._new_maker(maker)
        m.answered = True

    def _rank(self, maker: bytes) -> tuple[bool, float]:
        m = self._makers.get(maker)
        imp = self._standing(maker) if self._standing is not None else 0.0
        return (m is not None and m.answered, imp)

    # ------------------------------------------------------------------ checks

    def precheck(self, so: SignedOffer, now_ms: int) -> BookVerdict | None:
        """The rejection :meth:`add` would give for reasons that need no signature (expired,
        too far ahead, not newer than what we hold, the maker's cap), or None. Lets a receiver
        skip verifying the signature of an offer it would drop anyway."""
        o = so.offer
        if o.expiry_ms <= now_ms:
            return BookVerdict(False, f"offer expired at {o.expiry_ms}")
        if o.expiry_ms > now_ms + MAX_OFFER_LIFETIME_MS:
            return BookVerdict(False, f"offer expiry {o.expiry_ms} is more than a day ahead")
        if o.seq > now_ms + MAX_SEQ_AHEAD_MS:
            return BookVerdict(False, f"offer seq {o.seq} is ahead of our clock")
        if o.expiry_ms > o.seq + MAX_OFFER_LIFETIME_MS:
            return BookVerdict(False, f"offer expiry {o.expiry_ms} is more than a day past seq")
        m = self._makers.get(so.maker)
        if m is None or (m.seq_of(o.offer_id) is None and not o.withdrawn):
            if self._live >= self._max and self._rank(so.maker) <= (False, 0.0):
                self._refused_room_ms = now_ms
                return BookVerdict(False, "order book is full")
        if m is None:
            floor = self._floors.get(so.maker)
            if floor is not None and o.seq <= floor:
                return BookVerdict(False, f"offer seq {o.seq} is not newer than {floor}")
            return None
        if o.seq <= m.floor:
            return BookVerdict(False, f"offer seq {o.seq} is not newer than {m.floor}")
        seq = m.seq_of(o.offer_id)
        if seq is not None and o.seq <= seq:
            return BookVerdict(False, f"offer seq {o.seq} is not newer than {seq}")
        if o.offer_id not in m.live and not o.withdrawn and len(m.live) >= self._per_maker:
            return BookVerdict(False, f"maker holds {len(m.live)} offers, the cap")
        return None

    def add(self, so: SignedOffer, now_ms: int) -> BookVerdict:
        """Take a *verified* offer into the book, or say why not."""
        rejected = self.precheck(so, now_ms)
        if rejected is not None:
            return rejected
        o = so.offer
        m = self._makers.get(so.maker)
        if m is None:
            if len(self._makers) >= self._max_makers and not self._drop_idle_maker(now_ms):
                self._refused_room_ms = now_ms
                return BookVerdict(False, "maker table is full")
            m = self._new_maker(so.maker)
        oid = o.offer_id
        if o.withdrawn or oid in m.live:
            # A withdrawal, or a newer version of a live offer: no new room needed.
            self._retire(so.maker, m, oid)
            if o.withdrawn:
                self._tomb(m, oid, o.seq)
                return BookVerdict(True, "withdrawn")
        elif self._live >= self._max:
            self.sweep(now_ms)
            if self._live >= self._max:
                # An offer leaves for room (evicted) or is refused: either way the book no
                # longer holds every live offer that reached it.
                self._refused_room_ms = now_ms
                if not self._evict_for(so.maker):
                    return BookVerdict(False, "order book is full")
        m.tombs.pop(oid, None)
        m.live[oid] = so
        self._live += 1
        self._idle.pop(so.maker, None)
        return BookVerdict(True, "new")

    # ------------------------------------------------------------------ bookkeeping

    def _new_maker(self, maker: bytes) -> _Maker:
        m = _Maker(floor=self._floors.pop(maker, -1))
        self._makers[maker] = m
        self._idle[maker] = None
        return m

    def _retire(self, maker: bytes, m: _Maker, oid: bytes) -> None:
        """Take a live offer out, leaving a tombstone with its seq."""
        so = m.live.pop(oid, None)
        if so is None:
            return
        self._live -= 1
        self._tomb(m, oid, so.offer.seq)
        if not m.live:
            self._idle[maker] = None
            self._idle.move_to_end(maker)

    def _tomb(self, m: _Maker, oid: bytes, seq: int) -> None:
        m.tombs[oid] = max(seq, m.tombs.get(oid, -1))
        while len(m.tombs) > self._per_maker:
            old = min(m.tombs, key=m.tombs.__getitem__)
            m.floor = max(m.floor, m.tombs.pop(old))

    def _evict_for(self, newcomer: bytes) -> bool:
        """Make room for ``newcomer``'s offer by retiring the oldest offer of the maker with
        the worst standing (the most offers among equals), if that standing is below the
        newcomer's. A tie keeps what we hold: first come, first kept."""
        mine = self._rank(newcomer)
        if mine <= (False, 0.0):
            return False  # nobody ranks below a maker with no standing at all
        worst: tuple[tuple[bool, float], int] | None = None
        victim: bytes | None = None
        for maker, m in self._makers.items():
            if not m.live or maker == newcomer:
                continue
            key = (self._rank(maker), -len(m.live))
            if worst is None or key < worst:
                worst, victim = key, maker
        if victim is None or worst is None or not worst[0] < mine:
            return False
        vm = self._makers[victim]
        oldest = min(vm.live, key=lambda k: vm.live[k].offer.seq)
        self._retire(victim, vm, oldest)
        return True

    def _drop_idle_maker(self, now_ms: int) -> bool:
        """Fold the maker entry idle longest (no live offer) into one floor (its newest
        tombstone), kept in a table ``max_floors`` long, oldest dropped first: a copy it guards
        against would have to outlast that many dropped makers within a day."""
        if not self._idle:
            return False
        # The longest idle maker that never answered; one that did only when none is left.
        maker = next((k for k in self._idle if not self._makers[k].answered), None)
        if maker is None:
            maker = next(iter(self._idle))
        del self._idle[maker]
        m = self._makers.pop(maker)
        floor = max([m.floor, *m.tombs.values()])
        if floor >= 0:
            self._floors[maker] = floor
            self._floors.move_to_end(maker)
            while len(self._floors) > self._max_floors:
                self._floors.popitem(last=False)
        return True

    def sweep(self, now_ms: int) -> int:
        """Expire offers (they become tombstones) and forget tombstones and floors older than
        any copy that could still be live."""
        stale = 0
        horizon = now_ms - MAX_OFFER_LIFETIME_MS - MAX_SEQ_AHEAD_MS
        for maker, m in list(self._makers.items()):
            for oid in [k for k, so in m.live.items() if so.offer.expiry_ms <= now_ms]:
                self._retire(maker, m, oid)
                stale += 1
            for oid in [k for k, s in m.tombs.items() if s < horizon]:
                del m.tombs[oid]
            if m.floor < horizon:
                m.floor = -1
            if not m.live and not m.tombs and m.floor < 0 and not m.answered:
                del self._makers[maker]
                self._idle.pop(maker, None)
        for maker in [k for k, f in self._floors.items() if f < horizon]:
            del self._floors[maker]
        return stale

    # ------------------------------------------------------------------ reads

    def complete(self, now_ms: int) -> bool:
        """Whether the book refused or evicted no offer for room (``max_offers``,
        ``max_makers``) within the last offer lifetime: only then may it be taken to hold every
        live offer that reached it (a refused one could still be live, its maker unknown)."""
        t = self._refused_room_ms
        return t is None or now_ms - t > MAX_OFFER_LIFETIME_MS + MAX_SEQ_AHEAD_MS

    def pair(self, buy: str, sell: str, now_ms: int) -> list[SignedOffer]:
        """Live offers that take ``buy`` and pay ``sell``, best price (most ``sell`` per unit of
        ``buy``) first."""
        live = [
            so
            for so in self.all(now_ms)
            if so.offer.buy == buy and so.offer.sell == sell and so.offer.expiry_ms > now_ms
        ]
        live.sort(key=lambda so: Fraction(so.offer.price_num, so.offer.price_den), reverse=True)
        return live

    def makers_filling(
        self, buy: str, sell: str, amount: int, now_ms: int, limit: int
    ) -> frozenset[bytes] | None:
        """The makers with a live offer taking ``buy``, paying ``sell`` and filling ``amount``
        (:meth:`~kofo.wire.exchange.Offer.fill`), or None once more than ``limit`` do. One
        pass, no sort (:meth:`pair` sorts by exact price: seconds for a flooded book, too
        slow for every claim a taker sends); a maker is skipped once found."""
        found: set[bytes] = set()
        for maker, m in self._makers.items():
            for so in m.live.values():
                o = so.offer
                if o.buy == buy and o.sell == sell and o.expiry_ms > now_ms:
                    if o.fill(amount) is not None:
                        found.add(maker)
                        if len(found) > limit:
                            return None
                        break
        return frozenset(found)

    def all(self, now_ms: int) -> list[SignedOffer]:
        return [
            so
            for m in self._makers.values()
            for so in m.live.values()
            if so.offer.expiry_ms > now_ms
        ]

    def maker_count(self, maker: bytes) -> int:
        m = self._makers.get(maker)
        return len(m.live) if m is not None else 0

    def __contains__(self, key: object) -> bool:
        """Whether ``(maker, offer_id)`` is live here."""
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        m = self._makers.get(key[0])
        return m is not None and key[1] in m.live

    def __len__(self) -> int:
        return self._live
