"""Crash at every step: a node process is SIGKILLed at each injection point, restarted, and the
swap still ends with both redeemed (or both refunded), value conserved up to fees.

The injection points are not listed by hand: a clean run of each path records every point each
role passes through (``KOFO_CRASH_LOG``), and the test then kills each role at each recorded
point. Two pairs: ETH for an ERC-20 token (both legs on the devnet EVM) and BTC for ETH (the
initiator's leg on the embedded Bitcoin regtest chain, reached over its Core-dialect JSON-RPC:
UTXO selection, stored raw transactions and mempool re-sends all cross the crash). Two paths:

* **redeem**: both nodes stay up; the swap ends with both legs redeemed.
* **refund**: the initiator disappears once the participant's lock is buried (it never reveals
  the secret) and comes back only after the participant refunded at ``T_B``; it then refunds
  at ``T_A``. Its points are the refund-path points the redeem path never reaches.
* **bump** (BTC pair): as redeem, but fees rise (the embedded chain's block minimum fee rate,
  and its estimate, go to ``BUMP_FEE_RATE``) the moment the participant's BTC redeem reaches
  the mempool, so the redeem waits until the participant's node replaces it at a higher fee.
* **lock_bump** (BTC pair): as redeem, but fees rise the moment the initiator's BTC lock
  reaches the mempool, so the lock waits until the initiator's node adds a child paying for it.

Every node reaches the shared chains over JSON-RPC; time moves only by the test's
``evm_increaseTime`` calls (and one second per mined block) and by the Bitcoin blocks it mines
(one whenever a transaction waits in the mempool, or up to an expiry height), never by sleeping.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from web3 import Web3
from web3.exceptions import TransactionNotFound

from kofo.settlement.chain import BlockHeight, UnixTime
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import EmbeddedBackend
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer
from kofo.settlement.chains.bitcoin.tx import build_funding_tx
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.devnet import DevnetServer
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.engine import CRASH_POINTS
from kofo.settlement.journal import Journal
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg, SwapTerms
from kofo.wire.swap import Propose
from tests.swap.btc_helpers import Btc, btc_fee
from tests.swap.crash_node import build_engine, run_node
from tests.swap.helpers import ETHER, Evm

TOKENS = 10**8
SATS = 2_000_000
FUNDER_COINBASES = 20
"""50-coin coinbases the module's funder starts with: 1000 coins, room for 10,000 parties at
0.1 coin each (the crash runs make about a hundred)."""
BTC_RPC_USER, BTC_RPC_PASSWORD = "kofo-crash", "crash-test-pw"
RUN_TIMEOUT = 300
"""Seconds one swap may take across all its kills and restarts before it counts as hung. A
bound, not a timing goal: a clean swap takes a few seconds, but on a shared 2-core CI machine
one BTC refund swap (hundreds of blocks mined and read) took 30 s of wall time."""

DISAPPEAR_AT = "enter:counter_audited"
"""Where the initiator vanishes on the refund path: the participant's lock is buried and the
initiator is about to reveal the secret, so both legs are locked and neither is redeemed."""

BUMP_FEE_RATE = 50
"""sat/vB the next blocks need once fees rise on the bump path (the fallback rate is 2)."""

pytestmark = pytest.mark.timeout(600)
"""Per test: a few swaps, each bounded by ``RUN_TIMEOUT``; the kill-at-every-point tests (marked
``slow``: tens of swaps) get more below. Hang bounds, generous for a loaded machine."""
SLOW_TIMEOUT = pytest.mark.timeout(3600)

_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["tests.swap.crash_node"])


@dataclass
class Chains:
    """The shared chains of one test module: the devnet EVM (over JSON-RPC) and an embedded
    Bitcoin regtest chain behind its Core-dialect RPC server (mined in-process by the test)."""

    server: DevnetServer
    evm: Evm
    btc: Btc
    btc_url: str
    btc_funder: BitcoinAdapter

    def fund_btc(self, script_pubkey: bytes, amount: int) -> None:
        """Pay ``amount`` to ``script_pubkey`` from the funder and confirm it in one block (so
        a party costs one block, not a coinbase and 100 blocks of maturity: the regtest
        subsidy halves every 150 blocks and the crash runs mine thousands)."""
        ensure_thread_params()
        funder = self.btc_funder
        tx = build_funding_tx(
            funder.spendable(),
            funder.wallet.key_for_script,
            [(script_pubkey, amount)],
            funder.wallet.identity.script_pubkey,
            None,
            funder.params,
        )
        funder.backend.send_raw(tx.serialize())
        self.btc.mine(1)


@pytest.fixture(scope="module")
def devnet() -> Iterator[Chains]:
    btc = Btc("btc")
    ensure_thread_params()
    funder = btc.adapter(btc.account(coins=FUNDER_COINBASES))
    rpc = RegtestRpcServer(btc.chain, BTC_RPC_USER, BTC_RPC_PASSWORD)
    with DevnetServer() as server, rpc as bs:
        # The test reaches the EVM over JSON-RPC like the nodes do, never through the server's
        # in-process EVM: eth-tester is not thread-safe, and only the server's lock keeps the
        # test's transactions and time jumps from racing the nodes' requests. The Bitcoin
        # chain locks itself, so the test mines it directly.
        evm = Evm("eth", Web3(Web3.HTTPProvider(server.url)))
        yield Chains(server, evm, btc, bs.url, funder)
    btc.close()


def _key_hex(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


@dataclass(eq=False)
class Party:
    config: dict[str, Any]
    address: str  # on the EVM
    btc_address: str = ""  # the Bitcoin identity (compressed public key, hex), "btc" pair only
    btc_view: BitcoinAdapter | None = None  # see _btc_view


PAIRS = ("erc20", "btc")
"""``erc20``: alice gives ETH for bob's ERC-20 tokens. ``btc``: alice gives BTC for bob's ETH."""


def _party(chains: Chains, tmp: Path, name: str, pair: str, tokens: int = 0) -> Party:
    seed = os.urandom(32)
    acct = account_from_seed(seed)
    chains.evm.fund(acct.address, 5 * ETHER)
    if tokens:
        chains.evm.mint(acct.address, tokens)
    config: dict[str, Any] = {
        "rpc_url": chains.server.url,
        "eth_key": bytes(acct.key).hex(),
        "htlc": chains.evm.htlc,
        "journal": str(tmp / f"{name}.sqlite"),
        "node_key": _key_hex(Ed25519PrivateKey.generate()),
        "log_file": str(tmp / f"{name}.log"),
    }
    if pair != "btc":
        return Party(config, acct.address)
    ensure_thread_params()
    btc_seed = os.urandom(32)
    start = chains.btc.height()
    wallet = HdWallet(btc_seed, chains.btc.params)
    chains.fund_btc(wallet.identity.script_pubkey, 5 * SATS)
    config.update(
        btc_rpc_url=chains.btc_url,
        btc_rpc_user=BTC_RPC_USER,
        btc_rpc_password=BTC_RPC_PASSWORD,
        btc_seed=btc_seed.hex(),
        btc_start_height=start,
    )
    return Party(config, acct.address, wallet.identity.pubkey.hex())


def _setup_swap(chains: Chains, tmp: Path, pair: str) -> tuple[Party, Party, SwapTerms]:
    alice = _party(chains, tmp, "alice", pair)
    bob = _party(chains, tmp, "bob", pair, TOKENS if pair == "erc20" else 0)
    ea, eb = build_engine(alice.config), build_engine(bob.config)
    if pair == "btc":
        gives = Leg("btc", SATS, alice.btc_address, bob.btc_address, BlockHeight(0))
        gets = Leg("eth", ETHER, bob.address, alice.address, UnixTime(0))
    else:
        gives = Leg("eth", ETHER, alice.address, bob.address, UnixTime(0))
        gets = Leg("eth", TOKENS, bob.address, alice.address, UnixTime(0), chains.evm.token)
    terms = ea.propose(gives, gets, participant_node=eb.node_id)
    reply = eb.handle(Propose(terms), ea.node_id)
    assert reply is not None and ea.handle(reply, eb.node_id) is None
    ea.journal.close()
    eb.journal.close()
    return alice, bob, terms


@dataclass
class Plan:
    """How one swap is run: the crash point of each successive life of each node."""

    path: str  # "redeem", "refund", "bump" or "lock_bump"
    pair: str = "erc20"  # see PAIRS
    crashes: dict[str, list[str]] = field(default_factory=dict)
    log: dict[str, str] = field(default_factory=dict)  # role -> file recording points reached

    @classmethod
    def make(cls, path: str, pair: str, role: str | None = None, point: str | None = None) -> Plan:
        crashes: dict[str, list[str]] = {"alice": [], "bob": []}
        if path == "refund":
            crashes["alice"].append(DISAPPEAR_AT)
        if role is not None and point is not None:
            crashes[role].append(point)
        return cls(path, pair, crashes)


class Supervisor:
    """Runs both node processes to the end, restarting each one its crash point killed. On the
    refund path the initiator's first death is its disappearance: it stays down, chain time
    jumps to ``T_B`` so the participant refunds, and only then does it come back (at ``T_A``)."""

    def __init__(
        self, chains: Chains, configs: dict[str, dict[str, Any]], terms: SwapTerms, plan: Plan
    ):
        self.chains, self.configs, self.terms, self.plan = chains, configs, terms, plan
        self.rpc = chains.evm.w3
        self.lives = dict.fromkeys(configs, 0)
        self.kills = 0
        self.procs: dict[str, Any] = {}
        self.held = False
        self.btc_seen: set[str] = set()  # BTC transactions seen waiting (bump path)

    def _start(self, name: str) -> None:
        plan = self.plan.crashes.get(name, [])
        life = self.lives[name]
        crash_at = plan[life] if life < len(plan) else None
        self.lives[name] += 1
        args = (self.configs[name], crash_at, self.plan.log.get(name))
        self.procs[name] = _ctx.Process(target=run_node, args=args)
        self.procs[name].start()

    def _chain_time(self) -> int:
        return int(self.rpc.eth.get_block("latest")["timestamp"])

    def _advance_to(self, leg: Leg) -> None:
        """Move ``leg``'s chain to the leg's expiry (a Bitcoin height refund is valid once the
        tip reaches it; an EVM time refund once a block is stamped at or after it)."""
        if leg.chain == "btc":
            ensure_thread_params()
            self.chains.btc.mine_to(leg.expiry.value)
            return
        gap = leg.expiry.value - self._chain_time()
        if gap > 0:
            reply = self.rpc.provider.make_request("evm_increaseTime", [gap])  # type: ignore[arg-type]
            assert "error" not in reply, reply

    def _mine_waiting(self) -> None:
        """A Bitcoin block whenever a transaction waits in the mempool (the EVM mines its own).
        On the bump path fees rise when a second transaction (the redeem, after the lock)
        shows up, on the lock_bump path when the first one (the lock) does, each time before
        the block that would have taken it."""
        waiting = self.chains.btc.chain.mempool_txids() if self.plan.pair == "btc" else []
        if not waiting:
            return
        rise_at = {"bump": 2, "lock_bump": 1}.get(self.plan.path)
        if rise_at is not None:
            self.btc_seen.update(waiting)
            if len(self.btc_seen) >= rise_at:
                self.chains.btc.chain.set_block_min_fee_rate(BUMP_FEE_RATE)
        ensure_thread_params()
        self.chains.btc.mine(1)

    def run(self) -> int:
        for name in self.configs:
            self._start(name)
        try:
            self._supervise()
        finally:
            self.chains.btc.chain.set_block_min_fee_rate(0)
            for p in self.procs.values():
                if p.exitcode is None:
                    p.kill()
                    p.join(5)
        return self.kills

    def _supervise(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while any(p.exitcode != 0 for p in self.procs.values()) or self.held:
            codes = {n: p.exitcode for n, p in self.procs.items()}
            assert time.monotonic() < deadline, f"nodes did not finish: {codes}"
            for name, p in list(self.procs.items()):
                if p.exitcode is None or p.exitcode == 0:
                    continue
                assert p.exitcode == -9, f"{name} exited with {p.exitcode}"
                self.kills += 1
                if self.plan.path == "refund" and name == "alice" and self.lives[name] == 1:
                    # Disappeared before revealing: let the participant reach T_B and refund.
                    self.held = True
                    self._advance_to(self.terms.participant_leg)
                    self.procs[name] = _Gone()
                else:
                    self._start(name)
            if self.held and self.procs["bob"].exitcode == 0:
                self.held = False
                self._advance_to(self.terms.initiator_leg)
                self._start("alice")
            self._mine_waiting()
            time.sleep(0.05)


class _Gone:
    """A node that is down and not yet restarted (counts as neither running nor finished)."""

    exitcode = 0

    def kill(self) -> None:  # pragma: no cover - nothing to kill
        pass


Asset = tuple[str, str | None]  # (chain, token)


def _btc_view(chains: Chains, party: Party) -> BitcoinAdapter:
    """A read-only view of the party's Bitcoin wallet, straight on the embedded chain. One per
    party, kept: its index follows the chain from where it last synced, so the balance reads
    before and after the swap and the fee reads check each block once, not once per read."""
    ensure_thread_params()
    if party.btc_view is None:
        wallet = HdWallet(bytes.fromhex(party.config["btc_seed"]), chains.btc.params)
        start = int(party.config["btc_start_height"])
        party.btc_view = BitcoinAdapter(
            EmbeddedBackend(chains.btc.chain), wallet, start_height=start
        )
    return party.btc_view


def _fees(chains: Chains, party: Party) -> dict[str, int]:
    """Native-coin fees each chain charged the party for its journaled transactions."""
    journal = Journal(party.config["journal"])
    btc = _btc_view(chains, party) if "btc_seed" in party.config else None
    paid: dict[str, int] = {}
    for sw in journal.swaps():
        for _kind, chain, txid, _at in journal.all_txs(sw.swap_id):
            if chain == "btc":
                assert btc is not None
                btc.index.sync()
                if txid not in btc.index.txs:
                    continue  # signed, never mined: never paid for
                fee = btc_fee(btc, txid)
            else:
                try:
                    r = chains.evm.w3.eth.get_transaction_receipt(txid)
                except TransactionNotFound:
                    continue  # signed, superseded before broadcast: never paid for
                fee = r["gasUsed"] * r["effectiveGasPrice"]
            paid[chain] = paid.get(chain, 0) + fee
    journal.close()
    return paid


_BALANCE_OF_ABI = [
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "o", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


def _holdings(chains: Chains, party: Party, assets: list[Asset]) -> dict[Asset, int]:
    out: dict[Asset, int] = {}
    for chain, token in assets:
        if chain == "btc":
            out[(chain, token)] = _btc_view(chains, party).balance()
        elif token is None:
            out[(chain, token)] = chains.evm.w3.eth.get_balance(party.address)  # type: ignore[arg-type]
        else:
            tok = chains.evm.w3.eth.contract(address=token, abi=_BALANCE_OF_ABI)  # type: ignore[arg-type]
            out[(chain, token)] = tok.functions.balanceOf(party.address).call()
    return out


def _final_states(alice: Party, bob: Party, sid: bytes) -> tuple[State, State]:
    ja, jb = Journal(alice.config["journal"]), Journal(bob.config["journal"])
    states = ja.get(sid).state, jb.get(sid).state
    ja.close()
    jb.close()
    return states


def _swap(chains: Chains, tmp: Path, plan: Plan) -> int:
    """Run one swap under ``plan``; check its outcome and that value is conserved up to fees.
    Returns how many times a node was killed."""
    alice, bob, terms = _setup_swap(chains, tmp, plan.pair)
    gives, gets = terms.initiator_leg, terms.participant_leg  # alice's and bob's
    assets = list(dict.fromkeys([(gives.chain, gives.token), (gets.chain, gets.token)]))
    assets += [(c, None) for c in {gives.chain, gets.chain} if (c, None) not in assets]
    before = {p: _holdings(chains, p, assets) for p in (alice, bob)}
    configs = {"alice": alice.config, "bob": bob.config}
    kills = Supervisor(chains, configs, terms, plan).run()
    states = _final_states(alice, bob, terms.swap_id)
    after = {p: _holdings(chains, p, assets) for p in (alice, bob)}
    fees = {p: _fees(chains, p) for p in (alice, bob)}
    redeemed = plan.path in ("redeem", "bump", "lock_bump")
    assert states == ((State.REDEEMED,) * 2 if redeemed else (State.REFUNDED,) * 2), states
    for party, out, into in ((alice, gives, gets), (bob, gets, gives)):
        want = dict(before[party])
        if redeemed:
            want[(out.chain, out.token)] -= out.amount
            want[(into.chain, into.token)] += into.amount
        for chain, fee in fees[party].items():
            want[(chain, None)] -= fee
        assert after[party] == want, (party.config["journal"], after[party], want)
    for asset in assets:  # nothing created or lost between the two, beyond fees
        paid = sum(fees[p].get(asset[0], 0) for p in (alice, bob)) if asset[1] is None else 0
        assert sum(after[p][asset] for p in (alice, bob)) + paid == sum(
            before[p][asset] for p in (alice, bob)
        )
    return kills


_discovered: dict[tuple[str, str], dict[str, list[str]]] = {}
"""``_discover``'s answers in this process, by (path, pair): the refund and bump tests need the
redeem path's points too, and found them again with two more clean swaps each."""


def _discover(chains: Chains, tmp: Path, path: str, pair: str) -> dict[str, list[str]]:
    """The injection points each role passes through on ``path``, in order, from one clean
    (uninjected) run per role, once per process for each path and pair."""
    if (path, pair) not in _discovered:
        _discovered[path, pair] = _discover_now(chains, tmp, path, pair)
    return {role: list(points) for role, points in _discovered[path, pair].items()}


def _discover_now(chains: Chains, tmp: Path, path: str, pair: str) -> dict[str, list[str]]:
    points = {}
    for role in ("alice", "bob"):
        sub = tmp / f"discover-{path}-{role}"
        sub.mkdir()
        log = sub / "points.log"
        plan = Plan.make(path, pair)
        plan.log = {role: str(log)}
        _swap(chains, sub, plan)
        seen = list(dict.fromkeys(log.read_text().split()))
        assert set(seen) <= set(CRASH_POINTS), set(seen) - set(CRASH_POINTS)
        points[role] = seen
    return points


def _kill_at_every_point(
    chains: Chains, tmp: Path, path: str, pair: str, points: dict[str, list[str]]
) -> int:
    base_kills = 1 if path == "refund" else 0  # the initiator's disappearance
    covered = 0
    for role, names in points.items():
        for point in names:
            sub = tmp / f"{path}-{role}-{point.replace(':', '_')}"
            sub.mkdir()
            kills = _swap(chains, sub, Plan.make(path, pair, role, point))
            assert kills == base_kills + 1, f"{role} was not killed at {point} ({path} path)"
            covered += 1
    return covered


@pytest.mark.parametrize("pair", PAIRS)
def test_a_clean_multi_process_swap_redeems_both_legs(devnet, tmp_path, pair):
    assert _swap(devnet, tmp_path, Plan.make("redeem", pair)) == 0


@pytest.mark.parametrize("pair", PAIRS)
def test_an_initiator_that_vanishes_before_revealing_ends_with_both_refunded(
    devnet, tmp_path, pair
):
    assert _swap(devnet, tmp_path, Plan.make("refund", pair)) == 1


@pytest.mark.slow
@SLOW_TIMEOUT
@pytest.mark.parametrize("pair", PAIRS)
def test_killing_either_node_at_every_redeem_path_point_still_ends_in_both_redeemed(
    devnet, tmp_path, pair
):
    points = _discover(devnet, tmp_path, "redeem", pair)
    discovered = sum(len(p) for p in points.values())
    covered = _kill_at_every_point(devnet, tmp_path, "redeem", pair, points)
    print(
        f"{pair} redeem path: crash injection points covered: {covered} "
        f"(alice {len(points['alice'])}, bob {len(points['bob'])})"
    )
    # Every point the clean run passed through, for both roles; a clean redeem passes at
    # least the lock, redeem and both terminal steps of each role.
    assert covered == discovered >= 24


@pytest.mark.slow
@SLOW_TIMEOUT
@pytest.mark.parametrize("pair", PAIRS)
def test_killing_either_node_at_every_refund_path_point_still_ends_in_both_refunded(
    devnet, tmp_path, pair
):
    redeem = _discover(devnet, tmp_path, "redeem", pair)
    refund = _discover(devnet, tmp_path, "refund", pair)
    # Points the redeem path already kills at are not repeated; the rest are the refund path.
    points = {r: [p for p in refund[r] if p not in redeem[r]] for r in refund}
    discovered = sum(len(p) for p in points.values())
    covered = _kill_at_every_point(devnet, tmp_path, "refund", pair, points)
    print(
        f"{pair} refund path: crash injection points covered: {covered} "
        f"(alice {len(points['alice'])}: {points['alice']}, "
        f"bob {len(points['bob'])}: {points['bob']})"
    )
    assert covered == discovered
    # Both roles sign, send and bury a refund: at least those points, each.
    for role in ("alice", "bob"):
        assert {"stored:refund", "before_broadcast:refund", "enter:refunded"} <= set(points[role])


def test_a_redeem_stuck_by_a_fee_rise_is_bumped_across_the_process_boundary(devnet, tmp_path):
    plan = Plan.make("bump", "btc")
    plan.log = {"bob": str(tmp_path / "bob-points.log")}
    assert _swap(devnet, tmp_path, plan) == 0
    assert "stored:bump_redeem" in (tmp_path / "bob-points.log").read_text().split()


def test_a_lock_stuck_by_a_fee_rise_gets_a_child_across_the_process_boundary(devnet, tmp_path):
    plan = Plan.make("lock_bump", "btc")
    plan.log = {"alice": str(tmp_path / "alice-points.log")}
    assert _swap(devnet, tmp_path, plan) == 0
    assert "stored:bump_lock" in (tmp_path / "alice-points.log").read_text().split()


@pytest.mark.slow
@SLOW_TIMEOUT
@pytest.mark.parametrize(
    ("path", "role", "point"),
    [
        ("bump", "bob", "stored:bump_redeem"),  # the participant's BTC redeem was replaced
        ("lock_bump", "alice", "stored:bump_lock"),  # the initiator's BTC lock got a child
    ],
)
def test_killing_either_node_at_every_bump_path_point_still_ends_in_both_redeemed(
    devnet, tmp_path, path, role, point
):
    redeem = _discover(devnet, tmp_path, "redeem", "btc")
    bump = _discover(devnet, tmp_path, path, "btc")
    points = {r: [p for p in bump[r] if p not in redeem[r]] for r in bump}
    print(f"btc {path} path: crash injection points covered: {points}")
    assert point in points[role]
    assert _kill_at_every_point(devnet, tmp_path, path, "btc", points) == sum(
        len(p) for p in points.values()
    )


@pytest.mark.parametrize(
    ("pair", "path", "role", "point"),
    [
        ("erc20", "redeem", "alice", "after_broadcast:redeem"),
        ("erc20", "redeem", "bob", "stored:lock"),
        ("erc20", "redeem", "bob", "enter:redeem_signed"),
        ("erc20", "refund", "alice", "stored:refund"),
        ("erc20", "refund", "bob", "before_broadcast:refund"),
        ("btc", "redeem", "alice", "before_broadcast:lock"),
        ("btc", "refund", "alice", "after_broadcast:refund"),
    ],
)
def test_a_node_killed_mid_swap_finishes_after_restart(devnet, tmp_path, pair, path, role, point):
    plan = Plan.make(path, pair, role, point)
    assert _swap(devnet, tmp_path, plan) == (2 if path == "refund" else 1)
