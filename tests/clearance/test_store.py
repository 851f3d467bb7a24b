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


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.binary(min_size=1, max_size=4), st.binary(max_size=8)),
        st.tuples(st.just("delete"), st.binary(min_size=1, max_size=4), st.just(b"")),
        st.tuples(st.just("root"), st.just(b""), st.just(b"")),
        st.tuples(st.just("commit"), st.just(b""), st.just(b"")),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops)
def test_hashing_deferred_to_root_matches_a_store_built_from_the_final_contents(
    ops, tmp_path_factory
):
    path = tmp_path_factory.mktemp("ops") / "state.db"
    s = MerkleStore(path)
    height = 0
    for op, key, value in ops:
        if op == "set":
            s.set(key, value)
        elif op == "delete":
            s.delete(key)
        elif op == "root":
            s.root()
        else:
            height += 1
            s.commit(height)
    fresh = MerkleStore()
    for key, value in s.scan(b""):
        fresh.set(key, value)
    assert s.root() == fresh.root()
    height += 1
    committed = s.commit(height)
    s.close()
    reopened = MerkleStore(path)
    assert reopened.app_hash == committed  # reopening re-derives the same tree
    reopened.close()


def test_rollback_restores_the_committed_contents_and_root():
    s = MerkleStore()
    s.set(b"a", b"1")
    s.set(b"b", b"2")
    committed = s.commit(1)
    s.set(b"a", b"changed")
    s.delete(b"b")
    s.set(b"c", b"new")
    assert s.get_committed(b"a") == b"1" and s.get_committed(b"c") is None
    assert s.root() != committed
    s.rollback()
    assert (s.get(b"a"), s.get(b"b"), s.get(b"c")) == (b"1", b"2", None)
    assert s.root() == committed
