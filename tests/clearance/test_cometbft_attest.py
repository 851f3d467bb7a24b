"""Leg outcomes by vote extension on a real 4-validator CometBFT v0.38 network: each validator's
app reads what it "sees" on the chains from its own file (FileObserver); three honest validators
see a leg locked, the fourth lies that it was refunded, and the network records it locked; the
same three see btc's tip near 799,000, the liar claims 10^12, and every validator keeps an
attested btc clock within the honest reports (chain clocks, issue 17); two of them cannot read
eth and say so in their extensions ("blind"), which every validator accepts."""

import json
import os
import time

import pytest

from kofo.clearance.consensus.testnet import LocalTestnet, free_base_port
from kofo.wire.codec import decode, encode
from tests.conftest import require_binary

from .helpers import Party, commit_tx, ledger_params, make_order

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(240)]


def _wait(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _see(net, index, legs, tips=(), blind=()):
    path = net.observed_path(index)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"legs": legs, "tips": list(tips), "blind": list(blind)}))
    os.replace(tmp, path)


def test_four_cometbft_validators_attest_a_lock_and_outvote_a_liar(tmp_path):
    require_binary("cometbft")
    net = LocalTestnet(
        tmp_path / "net",
        4,
        base_port=free_base_port(4),
        params=ledger_params().as_map(),
        vote_extensions_height=1,
        observe=True,
    )
    net.create()
    with net:
        net.start_all(wait_height=2)  # past the first height that carries attestations
        parties = [Party.make(i) for i in range(3)]
        for i, p in enumerate(parties):
            assert net.broadcast(i, p.register_tx(ts=int(time.time())))["code"] == 0
        # Every validator admits only registered senders: wait until each has committed them.
        _wait(
            lambda: all(
                net.query(v, "/node", encode(p.id))[0] == 0 for v in range(4) for p in parties
            ),
            what="registrations on every validator",
        )
        order = make_order(parties, t0=int(time.time()))
        assert net.broadcast(1, commit_tx(order, parties, parties[0]))["code"] == 0

        def record(v):
            code, value = net.query(v, "/order", encode(order.order_id))
            return decode(value) if code == 0 else None

        _wait(lambda: record(0) is not None, what="the order committed")
        oid = order.order_id.hex()
        # validators 0 and 3 cannot read eth (their extensions name it in "blind"): every
        # validator must accept those extensions, or fewer than 2/3 precommit and nothing moves
        for v in range(3):
            blind = ["eth"] if v == 0 else []
            _see(net, v, [[oid, 0, "locked", "aa" * 32, 100]], [["btc", 799_000 + v]], blind)
        _see(
            net,
            3,
            [[oid, 0, "refunded", "bb" * 32, 100], [oid, 1, "redeemed", "cc" * 32, 9]],
            [["btc", 10**12]],
            ["eth"],
        )
        _wait(
            lambda: all((record(v) or {}).get("legs", [{}])[0].get("outcome") for v in range(4)),
            what="the attested lock on every validator",
        )
        for v in range(4):
            rec = record(v)
            assert rec["status"] == "committed"
            assert [(x["outcome"], x["txid"]) for x in rec["legs"]][:2] == [
                ("locked", "aa" * 32),
                (None, None),
            ]

        def clock(v):
            code, value = net.query(v, "/clock", encode("btc"))
            return decode(value)["height"] if code == 0 else None

        _wait(lambda: all(clock(v) for v in range(4)), what="the btc clock on every validator")
        # the highest height > 2/3 of the power report at least: an honest one, never the lie
        assert all(799_000 <= clock(v) <= 799_002 for v in range(4))
        height = min(net.height(v) for v in range(4)) - 1  # its app hash is in height + 1
        assert len({net.app_hash_at(v, height) for v in range(4)}) == 1
