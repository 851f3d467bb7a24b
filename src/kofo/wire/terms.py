"""The plain data of a swap's terms, shared by every layer: HTLC terms, legs, swap terms.

They live in ``wire`` because the protocol messages carry them (``swap.propose`` carries the
terms, ``swap.locked`` an HTLC's terms) and the layers speak only through ``wire`` types. The
safety margins that decide whether terms are acceptable stay in ``kofo.settlement.terms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kofo.errors import InvalidInput
from kofo.wire.expiry import Expiry

__all__ = ["HtlcTerms", "Leg", "SwapTerms", "check_output", "check_payment_hash"]


def check_payment_hash(payment_hash: bytes) -> bytes:
    if not isinstance(payment_hash, bytes) or len(payment_hash) != 32:
        raise InvalidInput("payment_hash must be 32 bytes (sha256 of the preimage)")
    return payment_hash


def check_output(output: str | None) -> str | None:
    """``None`` (the chain's default HTLC form) or a non-empty name such as ``"p2tr"``; which
    names a chain knows is its adapter's business (``ChainAdapter.outputs``)."""
    if output is not None and (not isinstance(output, str) or not output):
        raise InvalidInput(f"output must be null or a non-empty name, got {output!r}")
    return output


@dataclass(frozen=True, slots=True)
class HtlcTerms:
    """Everything that defines one HTLC leg on one chain.

    Addresses are in the chain's own form: an Ethereum checksum address; on Bitcoin-like chains
    the hex of a 33-byte compressed public key (the HTLC script pays to keys, not addresses).
    ``token`` is ``None`` for the chain's native coin, else the token contract address.
    ``output`` is the form of the HTLC output when it is not the chain's default: ``"p2tr"``
    (Taproot) on Bitcoin-like chains, whose default is P2WSH.
    """

    chain: str
    payment_hash: bytes
    amount: int
    sender: str
    recipient: str
    expiry: Expiry
    token: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        check_payment_hash(self.payment_hash)
        check_output(self.output)
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise InvalidInput(f"amount must be an integer of base units, got {self.amount!r}")
        if self.amount <= 0:
            raise InvalidInput(f"amount must be positive, got {self.amount}")
        if not self.sender:
            raise InvalidInput("sender must not be empty")
        if not self.recipient:
            raise InvalidInput("recipient must not be empty")


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of a swap: ``sender`` locks ``amount`` of ``token`` on ``chain`` for ``recipient``,
    refundable at ``expiry`` (in the chain's own unit)."""

    chain: str
    amount: int
    sender: str
    recipient: str
    expiry: Expiry
    token: str | None = None
    confirmations: int = 1
    """Blocks the lock and the spend of this leg must have before either side relies on them."""
    output: str | None = None
    """The HTLC output's form when not the chain's default (see :class:`HtlcTerms`)."""

    def __post_init__(self) -> None:
        check_output(self.output)

    def htlc(self, payment_hash: bytes) -> HtlcTerms:
        return HtlcTerms(
            chain=self.chain,
            payment_hash=payment_hash,
            amount=self.amount,
            sender=self.sender,
            recipient=self.recipient,
            expiry=self.expiry,
            token=self.token,
            output=self.output,
        )


@dataclass(frozen=True, slots=True)
class SwapTerms:
    """Everything both parties sign up to. Deadlines are absolute, each on its own chain:
    ``initiator_lock_by`` on the initiator leg's chain, the other two on the participant leg's."""

    swap_id: bytes
    payment_hash: bytes
    initiator_leg: Leg
    participant_leg: Leg
    initiator_lock_by: Expiry
    participant_lock_by: Expiry
    initiator_redeem_by: Expiry
    initiator_node: bytes = field(default=b"")
    participant_node: bytes = field(default=b"")

    def __post_init__(self) -> None:
        check_payment_hash(self.payment_hash)
        if len(self.swap_id) != 16:
            raise InvalidInput(
                f"swap_id must be 16 bytes, got {len(self.swap_id)}", code="bad_terms"
            )

    def chains(self) -> tuple[str, str]:
        return self.initiator_leg.chain, self.participant_leg.chain
