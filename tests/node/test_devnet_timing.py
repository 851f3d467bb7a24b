"""The network's time constants in one place (``[timing]``, ``kofo devnet --fast-timing``):
production defaults when absent; the devnet's short values (``DEVNET_TIMING``) written into the
ledger's genesis and into every node config it describes; and with them every relation the
engine, the exchange and the ledger check still holds (the maker's guard, the protocol's
bounds, the real ledger app's commit, the evidence window)."""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import replace
from itertools import permutations
from pathlib import Path

import pytest

from kofo.clearance.params import LedgerParams
from kofo.errors import ConfigError, InvalidInput
from kofo.exchange.route import (
    LEG_EXPIRY_STEP_S,
    LOCK_WINDOW_S,
    RouteParty,
    build_settlement_order,
    order_times_problem,
)
from kofo.node.config import Timing, parse_config, render_config
from kofo.node.daemon import PROPOSE_RETRY_S, propose_retry_s
from kofo.node.devnet import DEVNET_TIMING, start_devnet
from kofo.node.trades import check_order_as_maker, plan_order_times
from kofo.settlement.terms import ACCEPT_WINDOW_SECONDS, ChainPolicy, devnet_policy
from kofo.wire.codec import decode
from kofo.wire.exchange import Claim
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from tests.clearance.helpers import T0, Ledger, commit_tx, ledger_params, leg_address
from tests.clearance.helpers import Party as LedgerParty

TIPS = {"btc": 800_000, "ltc": 2_700_000}
T = DEVNET_TIMING
POLICIES: dict[str, ChainPolicy] = {
    c: replace(
        devnet_policy(c, height_clock=c != "eth"),
        block_interval=T.block_interval_s,
        confirmations=T.confirmations,
    )
    for c in ("btc", "ltc", "eth")
}
PAIRS = list(permutations(("btc", "ltc", "eth"), 2))
WINDOWS = {
    "lock_window_s": T.lock_window_s,
    "accept_window_s": T.accept_window_s,
    "leg_expiry_step_s": T.leg_expiry_step_s,
}


def chain_now(now_s: int, ahead_s: int = 0) -> dict[str, Expiry]:
    out: dict[str, Expiry] = {}
    for c, p in POLICIES.items():
        ahead = p.to_units(ahead_s)
        out[c] = BlockHeight(TIPS[c] + ahead) if p.height_clock else UnixTime(now_s + ahead)
    return out


def fitted(have: str, want: str, now_s: int, taker: bytes, maker: bytes):
    def fit(chain: str, expiry_time: int, now: int) -> Expiry:
        p = POLICIES[chain]
        if not p.height_clock:
            return UnixTime(expiry_time)
        return BlockHeight(TIPS[chain] + p.to_units(expiry_time - now))

    return build_settlement_order(
        claim=Claim(have, want, 10**6, 1, 1, (now_s + 60) * 1000, 3, b"\x03" * 32),
        claim_id=os.urandom(32),
        fulfil_id=os.urandom(32),
        amount_in=10**6,
        delivered=30 * 10**6,
        initiator=RouteParty(taker, {c: leg_address(c, f"t-{c}") for c in POLICIES}),
        relays=[],
        provider=RouteParty(maker, {c: leg_address(c, f"m-{c}") for c in POLICIES}),
        provider_position=1,
        payment_hash=os.urandom(32),
        now_s=now_s,
        protocol_fee_bps=10,
        expiry_fit=fit,
        times=plan_order_times(POLICIES, have, want, now_s, **WINDOWS),
        lock_window_s=T.lock_window_s,
    )


def test_without_a_timing_table_a_node_keeps_the_production_constants(tmp_path: Path) -> None:
    assert Timing() == Timing(
        lock_window_s=LOCK_WINDOW_S,
        leg_expiry_step_s=LEG_EXPIRY_STEP_S,
        accept_window_s=ACCEPT_WINDOW_SECONDS,
    )
    text = render_config(name="n", ledger_url="http://127.0.0.1:1")
    assert "[timing]" not in text
    assert parse_config(tmp_path, tomllib.loads(text), tmp_path / "c.toml").timing == Timing()
    assert propose_retry_s(ACCEPT_WINDOW_SECONDS) == PROPOSE_RETRY_S
    assert 0 < propose_retry_s(T.accept_window_s) < T.accept_window_s


def test_a_timing_table_is_read_and_bad_values_are_named(tmp_path: Path) -> None:
    text = render_config(name="n", ledger_url="http://127.0.0.1:1", timing=T.node_table())
    got = parse_config(tmp_path, tomllib.loads(text), tmp_path / "c.toml").timing
    assert got == Timing(**T.node_table())
    for bad, key in (
        ("lock_window_s = 0", "lock_window_s"),
        ("accept_window_s = 999", "accept_window_s"),
        ("dev_confirmations = 1000", "dev_confirmations"),
        ("lock_window = 5", "lock_window"),
    ):
        name = bad.split(" = ")[0]
        lines = [ln for ln in text.splitlines() if not ln.startswith(name + " ")]
        broken = "\n".join(lines).replace("[timing]", f"[timing]\n{bad}")
        with pytest.raises(ConfigError, match=key):
            parse_config(tmp_path, tomllib.loads(broken), tmp_path / "c.toml")


@pytest.mark.parametrize(("have", "want"), PAIRS)
def test_the_devnet_timing_keeps_every_relation_the_engine_exchange_and_ledger_check(
    have: str, want: str
) -> None:
    taker, maker = LedgerParty.make(0), LedgerParty.make(1)
    times = plan_order_times(POLICIES, have, want, T0, **WINDOWS)
    out_lock, back_lock, t_b, t_a = times
    # the protocol's bounds, with the network's window (another window: refused by all alike)
    assert order_times_problem(times, T0, T.lock_window_s) is None
    assert "lock_by" in (order_times_problem(times, T0) or "")
    # T_A - T_B within the ledger's min_expiry_gap; the maker's lock after the taker's buried
    params = T.ledger_params(LedgerParams())
    assert t_a - t_b >= params.min_expiry_gap == T.leg_expiry_step_s
    p1 = POLICIES[have]
    assert back_lock - out_lock >= p1.settle_seconds() + p1.notice_seconds
    # the taker's lock, made at its engine's deadline (accept window after a proposal at the
    # order's time at the latest), is buried and attested before lock_by + attest_grace
    assert T.accept_window_s + p1.settle_seconds() <= T.lock_window_s + params.attest_grace
    order = fitted(have, want, T0, taker.id, maker.id)
    # the maker's guard (its engine's own participant check), now and at the lock deadline
    for ahead in (0, T.lock_window_s):
        check_order_as_maker(
            order,
            POLICIES,
            chain_now(T0, ahead),
            maker_node=maker.id,
            accept_window_s=T.accept_window_s,
        )
    # the real ledger app with the devnet's genesis params commits it
    ledger = Ledger(params=T.ledger_params(ledger_params()))
    ledger.chains.tips.update(TIPS)  # the devnet's clocks (1 confirmation) where the plan is
    ledger.ok(taker.register_tx(), maker.register_tx())
    ledger.bonded(taker, maker)
    ledger.ok(commit_tx(order, [taker, maker], taker), time=T0 + 2)
    assert ledger.app.order(order.order_id)["status"] == "committed"


def test_the_devnet_writes_its_timing_into_the_ledger_and_the_node_configs(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInput, match="block interval"):
        start_devnet(block_interval=0.5, timing=T)
    net = start_devnet(block_interval=0, timing=T)
    try:
        desc = net.describe()
        assert desc["timing"] == T.node_table()
        from kofo.node.ledger_client import LedgerClient

        params = decode(LedgerClient(desc["ledger"]["url"]).abci_query("/params", b""))
        assert (params["attest_grace"], params["min_expiry_gap"]) == (
            T.attest_grace_s,
            T.leg_expiry_step_s,
        )
        text = render_config(
            name="n",
            ledger_url=desc["ledger"]["url"],
            chains=desc["chains"],
            bond=desc["bond"],
            timing=desc.get("timing"),
        )
        cfg = parse_config(tmp_path, tomllib.loads(text), tmp_path / "c.toml")
        assert cfg.timing.lock_window_s == T.lock_window_s
        assert cfg.timing.dev_block_interval_s == T.block_interval_s
    finally:
        net.stop()
    plain = start_devnet(block_interval=0)
    try:
        assert "timing" not in plain.describe()
    finally:
        plain.stop()


@pytest.mark.timeout(120)
def test_with_the_devnet_timing_the_evm_clock_follows_the_wall_clock() -> None:
    # A node reads an EVM chain's "now" from its latest block: with margins of seconds an EVM
    # that mines only on transactions would look minutes behind, and the maker's guard refuses
    # every order (T_B looks far off while T_A, in blocks, does not).
    from web3 import Web3

    net = start_devnet(block_interval=1, timing=T)
    try:
        w3 = Web3(Web3.HTTPProvider(net.eth_server.url))
        first = int(w3.eth.get_block("latest")["number"])
        start = int(time.time())
        for _ in range(600):  # bounded: about a minute
            block = w3.eth.get_block("latest")
            if int(block["number"]) >= first + 2 and int(block["timestamp"]) >= start + 1:
                break
            time.sleep(0.1)
        else:
            pytest.fail("no EVM block stamped after the start within a minute")
    finally:
        net.stop()


def test_evidence_is_filed_by_the_ledgers_clock_not_in_the_boundary_second() -> None:
    # The ledger refuses leg_not_locked in a block whose time is lock_by + attest_grace itself
    # (seen in the demo under load: filed by the node's wall clock in that second, refused,
    # and never filed again). The node now files once the ledger's latest block is past it.
    from kofo.node.daemon import evidence_due

    lock_by, grace = 1_000, T.attest_grace_s
    assert not evidence_due(lock_by, grace, lock_by + grace - 5)
    assert not evidence_due(lock_by, grace, lock_by + grace)
    assert evidence_due(lock_by, grace, lock_by + grace + 1)
