"""A validator's failed chain read is not a look that saw no lock (issue 17, session 7).

Validators attest the legs of their order window; a leg is "not locked in time" only once
validators with > 2/3 of the power looked at it after its ``lock_by + attest_grace`` and saw no
lock (``missed_at``). A validator whose read of a chain fails (its node down, a timeout, a
shared RPC provider out, a DoS on the backends) used to report nothing, which counted as such a
look: honest in-time locks were marked missed and their senders slashed. Its extension now
names the chains it could not read (``"blind"``), and a look counts only for the legs on chains
that validators with > 2/3 of the power read."""

from __future__ import annotations

import pytest

from kofo.clearance.app import COMPLETE_EXTENSION_OBS
from kofo.wire.attest import (
    MAX_BLIND,
    ChainUnreadable,
    decode_extension_with_blind,
    encode_extension,
)
from kofo.wire.codec import encode
from kofo.wire.envelope import BadMessage
from kofo.wire.orders import EvidenceKind, FileEvidence, LegOutcome, OrderKind, sign_tx

from .helpers import T0, Party, commit_tx, ledger_params, make_order
from .test_vote_extensions import Validators

pytestmark = pytest.mark.timeout(120)


def _order(vals: Validators, parties: list[Party]):  # type: ignore[no-untyped-def]
    vals.step(*(p.register_tx() for p in parties))
    order = make_order(parties, t0=vals.time)
    result = vals.step(commit_tx(order, parties, parties[0]))
    assert [r.code for r in result.tx_results] == [0, 0]
    return order


def _evidence(vals: Validators, filer: Party, order, leg: int, ts: int):  # type: ignore[no-untyped-def]
    tx = sign_tx(filer.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, leg), ts=ts)
    return vals.step(tx).tx_results[1]


@pytest.mark.parametrize("blind", [(0, 1), (0, 1, 2, 3)])
def test_failed_eth_reads_after_a_deadline_do_not_mark_an_honest_leg_missed(blind):
    """Bob locks his eth leg in time; the validators in ``blind`` (half the power, or all of
    it: one shared provider down) cannot read eth for every height after the leg's deadline.
    Before, their empty reads counted as complete looks that saw no lock: the leg got
    ``missed_at``, the lock they saw later was "late" and ``leg_not_locked`` slashed bob.
    Now nothing is marked while eth is unread; the lock seen once reads succeed counts in time;
    and a real defaulter (y never locks its eth leg of another order) is marked once they do.
    (Fails on the old code: bob's leg 1 is marked missed while eth is unread.)"""
    parties = [Party.make(i) for i in range(3)]
    alice, bob, _carol = parties
    x, y = Party.make(7), Party.make(8)
    vals = Validators(params=ledger_params(attest_grace=60))
    order = _order(vals, parties)
    other = make_order([x, y], kind=OrderKind.DIRECT, t0=vals.time)
    vals.step(*(p.register_tx() for p in (x, y)))
    assert vals.step(commit_tx(other, [x, y], x)).tx_results[1].code == 0
    for c in vals.chains:  # everyone locks at once but y
        for leg in range(3):
            c.see(order, leg, LegOutcome.LOCKED, txid=f"{leg:02d}" * 32)
        c.see(other, 0, LegOutcome.LOCKED, txid="ee" * 32)
    for i in blind:
        vals.chains[i].blind.add("eth")  # ...but these validators cannot read eth
    deadline = max(leg.lock_by for leg in (*order.legs, *other.legs)) + 60
    while vals.time <= deadline + 120:  # heights well past every leg's deadline
        vals.step(time=vals.time + 30)
    for i in range(4):
        legs = vals.order(order.order_id, i)["legs"]
        assert legs[0]["outcome"] == "locked"
        assert "missed_at" not in legs[1], "an unread chain was taken for a look"
        assert "missed_at" not in vals.order(other.order_id, i)["legs"][1]
    result = _evidence(vals, alice, order, 1, T0 + 1)
    assert result.code != 0 and "not yet observed" in result.log, result.log
    assert vals.apps[0].app.node(bob.id)["penalty_points"] == 0
    for c in vals.chains:  # eth reads again
        c.blind.clear()
    vals.step(time=vals.time + 30)
    vals.step(time=vals.time + 30)
    legs = vals.order(order.order_id)["legs"]
    assert legs[1]["outcome"] == "locked" and "missed_at" not in legs[1]  # in time
    missed = vals.order(other.order_id)["legs"][1]
    assert missed["outcome"] is None and missed["missed_at"] > deadline
    result = _evidence(vals, alice, order, 1, T0 + 2)
    assert result.code != 0 and "attested locked" in result.log, result.log
    assert vals.apps[0].app.node(bob.id)["penalty_points"] == 0
    result = _evidence(vals, alice, other, 1, T0 + 3)
    assert result.code == 0, result.log
    assert vals.apps[0].app.node(y.id)["penalty_points"] == 100


def test_a_look_counts_for_the_chains_read_by_more_than_two_thirds():
    """One validator of four blind on btc (a quarter of the power): the other three still read
    it, so a btc leg nobody locked is marked; an eth leg read by all is marked either way."""
    parties = [Party.make(i) for i in range(3)]
    vals = Validators(params=ledger_params(attest_grace=60))
    order = _order(vals, parties)
    vals.chains[3].blind.add("btc")
    deadline = order.legs[0].lock_by + 60
    while vals.time <= deadline + 60:
        vals.step(time=vals.time + 30)
    legs = vals.order(order.order_id)["legs"]
    assert "missed_at" in legs[0]


def test_the_blind_list_is_encoded_bounded_and_checked():
    ext = encode_extension([], blind=["eth", "btc", "btc"])
    # documented vector (docs/protocol.md): blind btc and eth, nothing else
    assert ext.hex() == "a3617601636f62738065626c696e64826362746363657468"
    assert decode_extension_with_blind(ext)[4] == ["btc", "eth"]
    many = [f"c{i:02d}" for i in range(40)]
    assert len(decode_extension_with_blind(encode_extension([], blind=many))[4]) == MAX_BLIND
    for bad in (
        {"v": 1, "obs": [], "blind": []},
        {"v": 1, "obs": [], "blind": ["eth", "btc"]},
        {"v": 1, "obs": [], "blind": ["btc", "btc"]},
        {"v": 1, "obs": [], "blind": [""]},
        {"v": 1, "obs": [], "blind": ["x" * 17]},
        {"v": 1, "obs": [], "blind": [7]},
        {"v": 1, "obs": [], "blind": [f"c{i:02d}" for i in range(MAX_BLIND + 1)]},
    ):
        with pytest.raises(BadMessage):
            decode_extension_with_blind(encode(bad))
    assert COMPLETE_EXTENSION_OBS < 64


def test_an_extension_blind_to_every_chain_counts_as_no_look(monkeypatch):
    """A validator blind to more chains than an extension can name says so with a full list:
    its look counts for no chain (here: every validator's, so nothing is marked)."""
    parties = [Party.make(i) for i in range(3)]
    vals = Validators(params=ledger_params(attest_grace=60))
    order = _order(vals, parties)
    full = encode_extension([], blind=[f"z{i:02d}" for i in range(MAX_BLIND)])
    vals.lies = dict.fromkeys(range(4), full)
    deadline = max(leg.lock_by for leg in order.legs) + 60
    while vals.time <= deadline + 60:
        vals.step(time=vals.time + 30)
    assert all("missed_at" not in leg for leg in vals.order(order.order_id)["legs"])
    assert ChainUnreadable("btc").code == "chain_unreadable"


def test_the_file_observer_reports_its_blind_chains_as_unreadable(tmp_path):
    """The testnets' FileObserver (tests/clearance/test_cometbft_attest.py) makes a validator
    blind to the chains its file lists: their legs raise ChainUnreadable, the others read."""
    import json

    from kofo.clearance.attest import FileObserver
    from kofo.wire.attest import LegRef

    order = make_order([Party.make(i) for i in range(3)])
    path = tmp_path / "seen.json"
    path.write_text(json.dumps({"legs": [], "blind": ["eth"]}))
    obs = FileObserver(str(path))
    ref = [LegRef(order.order_id, i, leg, order.payment_hash) for i, leg in enumerate(order.legs)]
    assert [leg.chain for leg in order.legs] == ["btc", "eth", "btc"]
    assert obs.observe(ref[0]) is None
    with pytest.raises(ChainUnreadable):
        obs.observe(ref[1])


def test_blind_chains_never_crowd_out_the_leg_facts_a_complete_extension_needs():
    """An extension counts as a whole look only below COMPLETE_EXTENSION_OBS leg facts, on
    the grounds that encoding drops none that few: still true with the largest leg facts, 16
    tips and 16 blind chains of the longest names."""
    from kofo.wire.attest import ChainTip, Observation, decode_extension

    obs = [
        Observation(bytes([i]) * 16, 255, LegOutcome.REFUNDED, "f" * 128, 2**63 - 1)
        for i in range(COMPLETE_EXTENSION_OBS + 1)
    ]
    tips = [ChainTip(f"c{i:02d}" + "x" * 13, 2**63 - 1) for i in range(16)]
    blind = [f"b{i:02d}" + "y" * 13 for i in range(MAX_BLIND)]
    ext = encode_extension(obs, tips=tips, blind=blind)
    assert decode_extension(ext) == obs
    assert decode_extension_with_blind(ext)[4] == blind
