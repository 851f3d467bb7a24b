"""The journal's record of fee bumps: replacement versions, children paying for a spend (CPFP),
which of them are (re-)sent, and journals written before bumps existed."""

from __future__ import annotations

import sqlite3

import pytest

from kofo.settlement.chain import SignedTx, TxKind
from kofo.settlement.journal import Journal, JournalError

SWAP = b"\x01" * 32


def _tx(kind: TxKind, n: int) -> SignedTx:
    return SignedTx("ltc", kind, f"{n:064x}", bytes([n]) * 10)


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


def test_children_are_sent_after_the_newest_version_and_a_replacement_supersedes_them(journal):
    redeem, child, grandchild = _tx(TxKind.REDEEM, 1), _tx(TxKind.CHILD, 2), _tx(TxKind.CHILD, 3)
    journal.store_txs(SWAP, TxKind.REDEEM, [redeem])
    journal.mark_broadcast(SWAP, redeem.txid, 100)
    journal.store_bump(SWAP, TxKind.REDEEM, child)
    journal.mark_broadcast(SWAP, child.txid, 103)
    journal.store_bump(SWAP, TxKind.REDEEM, grandchild)
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [redeem, child, grandchild]
    assert journal.versions(SWAP, TxKind.REDEEM) == [
        (redeem, 100),
        (child, 103),
        (grandchild, None),
    ]

    replacement = _tx(TxKind.REDEEM, 4)
    journal.store_bump(SWAP, TxKind.REDEEM, replacement)
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [replacement]
    kinds = [k for k, *_ in journal.all_txs(SWAP)]
    assert kinds == [TxKind.REDEEM, TxKind.CHILD, TxKind.CHILD, TxKind.REDEEM]


def test_a_new_child_drops_a_child_never_sent_but_keeps_its_row(journal):
    refund, refused, child = _tx(TxKind.REFUND, 1), _tx(TxKind.CHILD, 2), _tx(TxKind.CHILD, 3)
    journal.store_txs(SWAP, TxKind.REFUND, [refund])
    journal.mark_broadcast(SWAP, refund.txid, 100)
    journal.store_bump(SWAP, TxKind.REFUND, refused)  # a node refused it: never marked sent
    journal.store_bump(SWAP, TxKind.REFUND, child)
    assert journal.current_txs(SWAP, TxKind.REFUND) == [refund, child]
    assert [tx for tx, _ in journal.versions(SWAP, TxKind.REFUND)] == [refund, child]
    assert journal.txs(SWAP, TxKind.REFUND) == [refund, refused, child]  # the record stays


def test_a_bump_rebuilt_the_same_is_stored_once(journal):
    """Signing is deterministic: a child rebuilt after a crash from the same package, at the
    same rate, is the same transaction; it stays one live row, not a dropped and a new one."""
    redeem, child = _tx(TxKind.REDEEM, 1), _tx(TxKind.CHILD, 2)
    journal.store_txs(SWAP, TxKind.REDEEM, [redeem])
    journal.mark_broadcast(SWAP, redeem.txid, 100)
    journal.store_bump(SWAP, TxKind.REDEEM, child)
    journal.store_bump(SWAP, TxKind.REDEEM, child)
    assert journal.txs(SWAP, TxKind.REDEEM) == [redeem, child]
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [redeem, child]
    other = _tx(TxKind.CHILD, 3)  # child never sent: a second child drops it...
    journal.store_bump(SWAP, TxKind.REDEEM, other)
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [redeem, other]
    journal.store_bump(SWAP, TxKind.REDEEM, child)  # ...and it comes back when rebuilt
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [redeem, child]
    replacement = _tx(TxKind.REDEEM, 4)
    journal.store_bump(SWAP, TxKind.REDEEM, replacement)
    journal.store_bump(SWAP, TxKind.REDEEM, replacement)
    assert journal.txs(SWAP, TxKind.REDEEM) == [redeem, child, other, replacement]


def test_a_sent_child_is_never_dropped(journal):
    redeem, child, grandchild = _tx(TxKind.REDEEM, 1), _tx(TxKind.CHILD, 2), _tx(TxKind.CHILD, 3)
    journal.store_txs(SWAP, TxKind.REDEEM, [redeem])
    journal.store_bump(SWAP, TxKind.REDEEM, child)
    journal.mark_broadcast(SWAP, child.txid)  # sent on a chain that records no height
    journal.store_bump(SWAP, TxKind.REDEEM, grandchild)
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [redeem, child, grandchild]


def test_bumps_that_make_no_sense_are_refused(journal):
    with pytest.raises(JournalError, match=r"no redeem of swap \w+ is stored to bump"):
        journal.store_bump(SWAP, TxKind.REDEEM, _tx(TxKind.CHILD, 1))
    with pytest.raises(
        JournalError, match="only a lock, redeem or refund is bumped, not a transfer"
    ):
        journal.store_bump(SWAP, TxKind.TRANSFER, _tx(TxKind.CHILD, 1))
    journal.store_txs(SWAP, TxKind.LOCK, [_tx(TxKind.LOCK, 1)])
    with pytest.raises(JournalError, match="a bump of a lock is a child, not a lock"):
        journal.store_bump(SWAP, TxKind.LOCK, _tx(TxKind.LOCK, 2))
    journal.store_txs(SWAP, TxKind.REDEEM, [_tx(TxKind.REDEEM, 3)])
    with pytest.raises(
        JournalError, match="a bump of a redeem is a redeem or a child, not a refund"
    ):
        journal.store_bump(SWAP, TxKind.REDEEM, _tx(TxKind.REFUND, 4))


def test_a_lock_step_keeps_approve_then_lock_then_its_children(journal):
    approve, lock, child = _tx(TxKind.APPROVE, 1), _tx(TxKind.LOCK, 2), _tx(TxKind.CHILD, 3)
    journal.store_txs(SWAP, TxKind.LOCK, [approve, lock])
    journal.mark_broadcast(SWAP, approve.txid, 50)
    journal.mark_broadcast(SWAP, lock.txid, 50)
    journal.store_bump(SWAP, TxKind.LOCK, child)
    assert journal.current_txs(SWAP, TxKind.LOCK) == [approve, lock, child]
    assert journal.txs(SWAP, TxKind.LOCK) == [approve, lock, child]
    kinds = [k for k, *_ in journal.all_txs(SWAP)]
    assert kinds == [TxKind.APPROVE, TxKind.LOCK, TxKind.CHILD]


def test_a_journal_written_before_fee_bumps_is_read_and_bumped(tmp_path):
    """The txs table of the first releases had neither ``sent_height`` nor ``role``."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE txs (swap_id BLOB NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL, "
        "chain TEXT NOT NULL, txid TEXT NOT NULL, raw BLOB NOT NULL, broadcast_at REAL, "
        "PRIMARY KEY (swap_id, kind, seq))"
    )
    redeem = _tx(TxKind.REDEEM, 1)
    db.execute(
        "INSERT INTO txs VALUES (?,?,?,?,?,?,?)",
        (SWAP, "redeem", 0, redeem.chain, redeem.txid, redeem.raw, 1.0),
    )
    db.commit()
    db.close()
    path.chmod(0o600)  # a journal others can read is refused at start (its secrets may leak)
    journal = Journal(path)
    try:
        assert journal.versions(SWAP, TxKind.REDEEM) == [(redeem, None)]
        child = _tx(TxKind.CHILD, 2)
        journal.store_bump(SWAP, TxKind.REDEEM, child)
        assert journal.current_txs(SWAP, TxKind.REDEEM) == [redeem, child]
    finally:
        journal.close()


def test_a_spend_refused_for_its_fee_is_dated_but_stays_unsent(journal):
    """``mark_refused`` starts the bump wait of a redeem no node took (its first date wins,
    as a send's does) without marking it sent: it is re-sent until its bump is stored."""
    redeem = _tx(TxKind.REDEEM, 1)
    journal.store_txs(SWAP, TxKind.REDEEM, [redeem])
    journal.mark_refused(SWAP, redeem.txid, 100)
    journal.mark_refused(SWAP, redeem.txid, 104)
    assert journal.versions(SWAP, TxKind.REDEEM) == [(redeem, 100)]
    assert [at for *_, at in journal.all_txs(SWAP)] == [None]  # never broadcast
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [redeem]
    bump = _tx(TxKind.REDEEM, 2)
    journal.store_bump(SWAP, TxKind.REDEEM, bump)
    assert journal.current_txs(SWAP, TxKind.REDEEM) == [bump]
