"""The engine swaps a Bitcoin-like leg for ETH between two nodes on real nodes: btcd × geth and
litecoind × geth. Same engine, same adapters as on the embedded chains; only the backends change.

Coins come from a separate miner wallet by an ordinary payment, so blocks mined during the swap
(to confirm it) never change the parties' balances: the balances must move exactly as agreed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound

from kofo.settlement.chain import BlockHeight, TxKind, UnixTime
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import ChainBackend, RpcBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.engine import CrashHook
from kofo.settlement.swap import State
from kofo.settlement.terms import ChainPolicy, Leg, devnet_policy
from tests.bitcoin.helpers import pay
from tests.nodes import LITECOIN_REGTEST_BURN_ADDRESS as LITECOIN_BURN
from tests.swap.btc_helpers import confirmed_tx, expected_after, fees_paid, holdings
from tests.swap.helpers import ETHER, Evm, Node, drive, link, make_node, start_swap

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

CLTV_HEIGHT = 1351
"""btcd's and litecoind's regtest enforce CLTV only from this height (see
tests/bitcoin/test_real_nodes_btc.py); the swaps are mined past it so refunds would be real."""


class RealBtc:
    """A Bitcoin-like real node with the surface ``helpers.make_node`` expects."""

    def __init__(self, name: str, backend: ChainBackend, mine: Callable[[int], Any]) -> None:
        self.name = name
        self.params = chain_params(name, "regtest")
        self.backend = backend
        self.mine = mine
        self.start_height = backend.block_count()

    def adapter(self, wallet: HdWallet) -> BitcoinAdapter:
        # Only blocks from the funding on matter to the parties: skip indexing the long
        # activation history (thousands of blocks over RPC).
        return BitcoinAdapter(self.backend, wallet, start_height=self.start_height)

    def policy(self) -> ChainPolicy:
        return devnet_policy(self.name, height_clock=True)


def _swap_btc_like_for_eth(
    chain: RealBtc,
    miner: BitcoinAdapter,
    geth_w3: Web3,
    tmp_path,
    before_block: Callable[[], None] = lambda: None,
    prepare: Callable[[Node, Node], None] = lambda alice, bob: None,
    output: str | None = None,
) -> tuple[Node, Node, bytes]:
    """One swap of 0.05 coin (its HTLC of form ``output``) for 1 ETH, driven to the end with a
    block between rounds (``before_block`` runs first; ``prepare(alice, bob)`` before the swap
    is proposed); checks both end redeemed with exact balances."""
    evm = Evm("eth", geth_w3)
    alice_btc = HdWallet(os.urandom(32), chain.params)
    pay(miner, alice_btc.identity.script_pubkey, [20_000_000])
    chain.mine(1)
    chains = {chain.name: chain, "eth": evm}
    accounts = {
        "alice": {chain.name: alice_btc, "eth": evm.account(wei=ETHER // 10)},
        "bob": {chain.name: HdWallet(os.urandom(32), chain.params), "eth": evm.account()},
    }
    alice = make_node("alice", tmp_path, chains, accounts=accounts["alice"])  # type: ignore[arg-type]
    bob = make_node("bob", tmp_path, chains, accounts=accounts["bob"])  # type: ignore[arg-type]
    link(alice, bob)
    prepare(alice, bob)
    a_ad, b_ad = alice.engine.adapters, bob.engine.adapters
    give = Leg(
        chain.name,
        5_000_000,
        a_ad[chain.name].address(),
        b_ad[chain.name].address(),
        BlockHeight(0),
        output=output,
    )
    get = Leg("eth", ETHER, b_ad["eth"].address(), a_ad["eth"].address(), UnixTime(0))
    assets = {(chain.name, None), ("eth", None)}
    before = {n.name: holdings(n, assets) for n in (alice, bob)}
    assert before["alice"][(chain.name, None)] == 20_000_000

    sid = start_swap(alice, bob, give, get)

    def next_block(_round: int) -> None:
        before_block()
        chain.mine(1)

    states = drive([alice, bob], sid, rounds=40, between=next_block)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    assert bob.engine.journal.preimage(sid) == alice.engine.journal.preimage(sid)
    assert holdings(alice, assets) == expected_after(
        before["alice"], gives=give, gets=get, fees=fees_paid(alice, sid)
    )
    assert holdings(bob, assets) == expected_after(
        before["bob"], gives=get, gets=give, fees=fees_paid(bob, sid)
    )
    return alice, bob, sid


def _geth_w3(geth) -> Web3:
    return Web3(Web3.HTTPProvider(geth.rpc_url, request_kwargs={"timeout": 30}))


def test_btcd_btc_for_geth_eth_pays_both_sides(btcd_factory, geth, tmp_path):
    params = chain_params("btc", "regtest")
    miner_wallet = HdWallet(os.urandom(32), params)
    node = btcd_factory(miner_wallet.address())
    while node.block_count() < CLTV_HEIGHT + 10:  # also past segwit's BIP9 activation
        node.generate(200)
    client = RpcClient(
        node.rpc_url,
        node.rpc_user,
        node.rpc_password,
        dialect="btcd",
        cert_path=str(node.cert_path),
    )
    backend = RpcBackend(client)
    # The miner indexes only its last ~150 coinbases (100 of them immature): enough coins.
    miner = BitcoinAdapter(backend, miner_wallet, start_height=backend.block_count() - 150)
    chain = RealBtc("btc", backend, node.generate)
    _swap_btc_like_for_eth(chain, miner, _geth_w3(geth), tmp_path)


MINER_NEEDS = 30_000_000
"""What a litecoind test's miner pays out: 0.2 LTC to alice, plus fees and room for change."""


def _litecoind_chain(litecoind) -> tuple[RealBtc, BitcoinAdapter]:
    params = chain_params("ltc", "regtest")
    miner_wallet = HdWallet(os.urandom(32), params)
    client = RpcClient(litecoind.rpc_url, litecoind.rpc_user, litecoind.rpc_password)
    backend = RpcBackend(client)
    litecoind.activate_soft_forks()  # CLTV on, so the HTLC's refund branch is consensus
    first = backend.block_count() + 1
    miner = BitcoinAdapter(backend, miner_wallet, start_height=first)
    # Coins from the session's faucet: mined late, Litecoin regtest's halved subsidy is too small.
    litecoind.fund(miner_wallet.address(), MINER_NEEDS)
    assert miner.balance() >= MINER_NEEDS, f"the miner holds {miner.balance()}"
    chain = RealBtc("ltc", backend, lambda n: litecoind.generate_to_address(n, LITECOIN_BURN))
    return chain, miner


def test_litecoind_ltc_for_geth_eth_pays_both_sides(litecoind, geth, tmp_path):
    chain, miner = _litecoind_chain(litecoind)
    _swap_btc_like_for_eth(chain, miner, _geth_w3(geth), tmp_path)


def test_litecoind_taproot_ltc_for_geth_eth_is_claimed_by_one_joint_signature(
    litecoind, geth, tmp_path
):
    """The LTC leg is a Taproot HTLC; bob claims it by the key path, co-signed by alice over
    the swap channel: litecoind mines a 99 vB claim that shows no secret."""
    chain, miner = _litecoind_chain(litecoind)
    _alice, bob, sid = _swap_btc_like_for_eth(chain, miner, _geth_w3(geth), tmp_path, output="p2tr")
    claim = confirmed_tx(bob, "ltc", sid, TxKind.REDEEM)
    assert [len(item) for item in claim.wit.vtxinwit[0].scriptWitness.stack] == [64]
    assert claim.get_virtual_size() == 99


def test_litecoind_swap_completes_through_children_when_no_parent_pays_enough(
    litecoind, geth, tmp_path
):
    """A fee rise on litecoind, as its own miner sees it: every transaction that enters the
    mempool without an unconfirmed parent is made worth nothing to the node's block assembler
    (``prioritisetransaction`` takes its whole fee off), so it stays out of every block. Only
    a child paying for it gets it mined. Litecoin Core relays no replacement by default, so
    the engine must pay with children: for Alice's LTC lock (a child of its change) and for
    Bob's LTC redeem (a child of its output). The swap completes and the balances are exact,
    children's fees included."""
    chain, miner = _litecoind_chain(litecoind)
    rpc = RpcClient(litecoind.rpc_url, litecoind.rpc_user, litecoind.rpc_password)
    demoted: set[str] = set()

    def fees_rise() -> None:
        for txid in rpc.call("getrawmempool"):
            if txid in demoted:
                continue
            demoted.add(txid)
            entry = rpc.call("getmempoolentry", txid)
            if entry["ancestorcount"] > 1:
                continue  # a child: it pays for its parent
            fee = int(entry["fees"]["base"] * 10**8)  # exact: the client parses Decimals
            assert rpc.call("prioritisetransaction", txid, 0, -fee) is True

    alice, bob, sid = _swap_btc_like_for_eth(
        chain, miner, _geth_w3(geth), tmp_path, before_block=fees_rise
    )
    for node, kind in ((alice, TxKind.LOCK), (bob, TxKind.REDEEM)):
        step = [tx.kind for tx, _ in node.engine.journal.versions(sid, kind)]
        assert step[0] is kind and TxKind.CHILD in step[1:], (node.name, step)


def test_an_eth_redeem_refused_for_its_tip_is_replaced_and_the_swap_completes(
    litecoind, geth, tmp_path
):
    """Between Alice's signature of her ETH redeem and its send, geth's miner raises its
    minimum tip (``miner_setGasPrice``) above the redeem's: geth refuses it for its fee. Her
    engine dates the refusal as a send; ``bump_after_blocks`` geth blocks later it re-signs the
    redeem with the same nonce and fees a quarter higher, geth takes and mines it, Bob learns
    the secret from it, and the swap completes with exact balances."""
    chain, miner = _litecoind_chain(litecoind)
    w3 = _geth_w3(geth)
    dev = w3.eth.accounts[0]
    floor = 1_200_000_000  # wei: over the adapter's 1 gwei tip, under a bump's 1.25 gwei

    class MinerTipRises(CrashHook):
        def hit(self, point: str) -> None:
            if point == "before_broadcast:redeem":
                reply = w3.provider.make_request("miner_setGasPrice", [hex(floor)])  # type: ignore[arg-type]
                assert reply.get("result") is True, reply

    def prepare(alice: Node, _bob: Node) -> None:
        alice.engine.crash = MinerTipRises()
        alice.engine.policies["eth"] = replace(alice.engine.policies["eth"], bump_after_blocks=2)

    def next_eth_block() -> None:  # geth mines a block for any transaction it takes
        tx = w3.eth.send_transaction(
            {"from": dev, "to": dev, "value": 1, "maxPriorityFeePerGas": 2 * floor,
             "maxFeePerGas": 100 * floor}
        )  # fmt: skip
        w3.eth.wait_for_transaction_receipt(tx, timeout=30)

    try:
        alice, _bob, sid = _swap_btc_like_for_eth(
            chain, miner, w3, tmp_path, before_block=next_eth_block, prepare=prepare
        )
    finally:  # geth is shared by the session: back to --dev's 1 wei
        w3.provider.make_request("miner_setGasPrice", [hex(1)])  # type: ignore[arg-type]
    versions = [tx for tx, _ in alice.engine.journal.versions(sid, TxKind.REDEEM)]
    assert [v.kind for v in versions] == [TxKind.REDEEM, TxKind.REDEEM]
    first, bump = (TypedTransaction.from_bytes(HexBytes(v.raw)).as_dict() for v in versions)
    assert first["nonce"] == bump["nonce"]
    assert first["maxPriorityFeePerGas"] < floor <= bump["maxPriorityFeePerGas"]
    assert not _mined(w3, versions[0].txid) and _mined(w3, versions[1].txid)


def _mined(w3: Web3, txid: str) -> bool:
    try:
        return w3.eth.get_transaction_receipt(txid)["status"] == 1  # type: ignore[arg-type]
    except TransactionNotFound:
        return False
