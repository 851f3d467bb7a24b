"""Each node's view of who offers what, per asset pair."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from kofo.wire.exchange import SignedOffer

MAX_OFFER_LIFETIME_MS = 24 * 3600 * 1000
"""Offers are re-announced by live makers; one day bounds how long a departed maker's prices
linger, and with it the memory an offer flood can pin."""


@dataclass(frozen=True, slots=True)
class BookVerdict:
    accepted: bool
    reason: str


class OrderBook:
    """Latest offer per ``(maker, offer_id)``; superseded, withdrawn and expired ones vanish."""

    def __init__(self, max_offers: int = 50_000) -> None:
        self._max = max_offers
        self._offers: dict[tuple[bytes, bytes], SignedOffer] = {}
        # Highest seq seen per offer, kept after withdrawal/expiry so an old copy still
        # circulating in the gossip cannot bring the offer back.
        self._latest_seq: dict[tuple[bytes, bytes], int] = {}

    def precheck(self, so: SignedOffer, now_ms: int) -> BookVerdict | None:
        """The rejection :meth:`add` would give for reasons that need no signature (expired,
        too far ahead, not newer than what we hold), or None. Lets a receiver skip verifying
        the signature of an offer it would drop anyway."""
        o = so.offer
        if o.expiry_ms <= now_ms:
            return BookVerdict(False, f"offer expired at {o.expiry_ms}")
        if o.expiry_ms > now_ms + MAX_OFFER_LIFETIME_MS:
            return BookVerdict(False, f"offer expiry {o.expiry_ms} is more than a day ahead")
        seq = self._latest_seq.get(so.key)
        if seq is not None and o.seq <= seq:
            return BookVerdict(False, f"offer seq {o.seq} is not newer than {seq}")
        return None

    def add(self, so: SignedOffer, now_ms: int) -> BookVerdict:
        """Take a *verified* offer into the book, or say why not."""
        rejected = self.precheck(so, now_ms)
        if rejected is not None:
            return rejected
        o = so.offer
        seq = self._latest_seq.get(so.key)
        if seq is None and len(self._latest_seq) >= self._max:
            self.sweep(now_ms)
            if len(self._latest_seq) >= self._max:
                return BookVerdict(False, "order book is full")
        self._latest_seq[so.key] = o.seq
        if o.withdrawn:
            self._offers.pop(so.key, None)
        else:
            self._offers[so.key] = so
        return BookVerdict(True, "withdrawn" if o.withdrawn else "new")

    def sweep(self, now_ms: int) -> int:
        stale = [k for k, so in self._offers.items() if so.offer.expiry_ms <= now_ms]
        for k in stale:
            del self._offers[k]
        if len(self._latest_seq) > len(self._offers) + self._max // 2:
            self._latest_seq = {k: s for k, s in self._latest_seq.items() if k in self._offers}
        return len(stale)

    def pair(self, buy: str, sell: str, now_ms: int) -> list[SignedOffer]:
        """Live offers that take ``buy`` and pay ``sell``, best price (most ``sell`` per unit of
        ``buy``) first."""
        live = [
            so
            for so in self._offers.values()
            if so.offer.buy == buy and so.offer.sell == sell and so.offer.expiry_ms > now_ms
        ]
        live.sort(key=lambda so: Fraction(so.offer.price_num, so.offer.price_den), reverse=True)
        return live

    def all(self, now_ms: int) -> list[SignedOffer]:
        return [so for so in self._offers.values() if so.offer.expiry_ms > now_ms]

    def __len__(self) -> int:
        return len(self._offers)
