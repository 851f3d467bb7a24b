"""One exception hierarchy for the whole project.

Every error carries a stable ``code`` that the API and the CLI show. Messages name the field and
the bad value, never a secret (a preimage before reveal, a private key, a seed).
"""

from __future__ import annotations


class KofoError(Exception):
    """Root of every error KOFO raises on purpose."""

    code: str = "kofo_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {super().__str__()}"


class NotDelivered(KofoError):
    """A message certainly did not reach its peer (the connection failed before the whole
    request was sent): nothing of it was processed there. Other transport failures may have
    delivered it."""

    code = "not_delivered"


class InvalidInput(KofoError):
    """A caller passed a value that cannot be used; the message names the field."""

    code = "invalid_input"


class ConfigError(KofoError):
    """The node is configured in a way that cannot work (missing binary, bad URL, ...)."""

    code = "config_error"


class ChainError(KofoError):
    """A chain (node or embedded) refused or failed an operation."""

    code = "chain_error"


class TxRejected(ChainError):
    """A transaction was refused by the chain's rules (script/contract check, fee, lock time)."""

    code = "tx_rejected"


class FeeTooLow(TxRejected):
    """A node refused a transaction for its fee alone (under the relay or mempool minimum, or
    too little to replace another): the same spend at a higher fee may be taken."""

    code = "fee_too_low"


class InsufficientFunds(ChainError):
    """The wallet does not hold enough to pay the amount plus fees."""

    code = "insufficient_funds"


class HtlcNotFound(ChainError):
    """No HTLC with the given reference exists (or it is already spent)."""

    code = "htlc_not_found"


class AuditFailed(KofoError):
    """A counterparty's HTLC does not match the agreed terms; the message says which field."""

    code = "audit_failed"


class WalletError(KofoError):
    """The key store cannot be opened (wrong passphrase, corrupted file)."""

    code = "wallet_error"
