"""Money is integers: satoshis, wei, token base units. Never floats."""

from __future__ import annotations

from dataclasses import dataclass

from kofo.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Asset:
    """An asset on a chain.

    ``chain`` names the chain ("btc", "ltc", "eth"); ``token`` is the contract address for a
    token (ERC-20) and ``None`` for the chain's native coin. ``decimals`` is only for display.
    """

    chain: str
    symbol: str
    decimals: int
    token: str | None = None

    def __str__(self) -> str:
        return self.symbol


@dataclass(frozen=True, slots=True)
class Amount:
    """A quantity of an asset in its base units (an ``int``, never a float)."""

    asset: Asset
    base_units: int

    def __post_init__(self) -> None:
        if isinstance(self.base_units, bool) or not isinstance(self.base_units, int):
            raise InvalidInput(
                f"amount must be an integer number of base units, got {self.base_units!r}"
            )
        if self.base_units < 0:
            raise InvalidInput(f"amount must not be negative, got {self.base_units}")

    def number(self) -> str:
        """The exact decimal value without the symbol, e.g. ``0.0015`` (no float involved)."""
        d = self.asset.decimals
        whole, frac = divmod(self.base_units, 10**d)
        digits = f"{frac:0{d}d}".rstrip("0") if d else ""
        return f"{whole}.{digits}" if digits else str(whole)

    def display(self) -> str:
        """Human form, e.g. ``0.0015 BTC``; exact."""
        return f"{self.number()} {self.asset.symbol}"


def parse_decimal(text: str, decimals: int) -> int:
    """Parse ``"1.5"`` into base units with ``decimals`` places, exactly (no float)."""
    s = text.strip()
    if not s or s.count(".") > 1 or not s.replace(".", "", 1).isdigit():
        raise InvalidInput(f"not a decimal amount: {text!r}")
    whole, _, frac = s.partition(".")
    if len(frac) > decimals:
        raise InvalidInput(f"{text!r} has more than {decimals} decimal places")
    units: int = int(whole or "0") * 10**decimals + int((frac or "0").ljust(decimals, "0"))
    return units
