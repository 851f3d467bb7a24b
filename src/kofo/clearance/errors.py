"""Why the ledger refuses a transaction. Each has a stable string ``code`` (shown by the API and
CLI) and a stable ABCI result code (what CometBFT records for the tx)."""

from __future__ import annotations

from kofo.errors import KofoError


class LedgerRejected(KofoError):
    """A well-formed, correctly signed transaction that the ledger's rules refuse."""

    code = "ledger_rejected"


class UnknownNode(LedgerRejected):
    code = "unknown_node"


class AlreadyExists(LedgerRejected):
    """A duplicate: node already registered, order id already committed, evidence filed."""

    code = "already_exists"


class NotFound(LedgerRejected):
    code = "not_found"


class OrderInvalid(LedgerRejected):
    """The route, amounts or expiries of a settlement order break a ledger rule."""

    code = "order_invalid"


class FeeRuleViolated(LedgerRejected):
    code = "fee_rule_violated"


class NotAuthorised(LedgerRejected):
    """The sender may not submit this transaction (not a party, not a monitor)."""

    code = "not_authorised"


class OutcomeInvalid(LedgerRejected):
    code = "outcome_invalid"


class EvidenceInvalid(LedgerRejected):
    code = "evidence_invalid"


class WithdrawalInvalid(LedgerRejected):
    code = "withdrawal_invalid"


class InternalError(LedgerRejected):
    """An input hit a bug in the app: the tx (or query) is refused, the validator keeps going."""

    code = "internal_error"


class RateLimited(LedgerRejected):
    """The sender sent more txs than its share (per block, or this node's mempool budget)."""

    code = "rate_limited"


ABCI_CODES: dict[str, int] = {
    "bad_encoding": 2,
    "bad_message": 3,
    "bad_signature": 4,
    "unknown_node": 5,
    "already_exists": 6,
    "not_found": 7,
    "order_invalid": 8,
    "fee_rule_violated": 9,
    "not_authorised": 10,
    "outcome_invalid": 11,
    "evidence_invalid": 12,
    "withdrawal_invalid": 13,
    "bad_ciphertext": 14,
    "invalid_input": 15,
    "internal_error": 16,
    "rate_limited": 17,
    "leg_key_unproven": 18,
    "ledger_rejected": 1,
}
"""ABCI result code per error code; 0 is success. Never renumber: results are in the chain."""


def abci_code(err: KofoError) -> int:
    return ABCI_CODES.get(err.code, 1)
