import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kofo.clearance.store import MerkleStore, StoreCorrupted

kv = st.dictionaries(st.binary(min_size=1, max_size=12), st.binary(max_size=12), max_size=40)


@settings(max_examples=50, deadline=None)
@given(items=kv)
def test_app_hash_depends_only_on_contents_not_on_write_order(items):
    a, b = MerkleStore(), MerkleStore()
    for k, v in items.items():
        a.set(k, v)
    for k, v in reversed(list(items.items())):
        b.set(k, b"junk")
        b.set(k, v)
    b.set(b"\xff-temp", b"x")
    b.delete(b"\xff-temp")
    assert a.root() == b.root()


def test_any_changed_value_changes_the_app_hash():
    s = MerkleStore()
    s.set(b"a", b"1")
    before = s.root()
    s.set(b"a", b"2")
    assert s.root() != before
    s.set(b"a", b"1")
    assert s.root() == before


def test_committed_state_survives_reopen_with_the_same_hash(tmp_path):
    path = tmp_path / "state.db"
    s = MerkleStore(path)
    for i in range(300):
        s.set(f"k{i}".encode(), f"v{i}".encode())
    h = s.commit(1)
    s.set(b"uncommitted", b"lost")
    s.close()
    again = MerkleStore(path)
    assert again.height == 1
    assert again.app_hash == h
    assert again.get(b"uncommitted") is None
    assert again.get(b"k7") == b"v7"


def test_tampered_rows_are_detected_on_reopen(tmp_path):
    path = tmp_path / "state.db"
    s = MerkleStore(path)
    s.set(b"balance", b"100")
    s.commit(1)
    s.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE kv SET value=? WHERE key=?", (b"999", b"balance"))
    db.commit()
    db.close()
    with pytest.raises(StoreCorrupted):
        MerkleStore(path)
